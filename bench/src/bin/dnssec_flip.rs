//! Health change → re-signed answer served (issue 6, point 11), end to end
//! with the real binaries on a large signed zone.
//!
//! Starts one controlplane and one dataplane (both from this profile's
//! target directory, rebuilt first) serving `bench.test` signed (ECDSA
//! P-256, NSEC) with NAMES weighted names over 4 always-healthy servers
//! (default 100,000) plus `flip.bench.test`, round-robin over two TCP-checked
//! backends on loopback (127.0.0.2, toggled; 127.0.0.3, always up; interval
//! 100 ms, timeout 50 ms, thresholds 1). Then FLIPS times closes or reopens
//! the toggled backend's listener and polls the dataplane with DO=1 queries
//! until the answer is the new address set **and** its RRSIG verifies
//! (against the zone's DNSKEY, inside its validity window). Reports p50/p90
//! of:
//!
//! - decision → signed answer served: from the controlplane's health
//!   decision (the new generation, microseconds since the epoch taken as
//!   the recompile starts, read from `opengslb_snapshot_generation`) to the
//!   first verified new answer (a flip for which the dataplane applied
//!   more than one generation is left out and counted: its generation is
//!   ambiguous);
//! - listener change → signed answer served (adds the health check's
//!   detection, up to one interval).
//!
//! Usage: `cargo run --release -p opengslb-bench --bin dnssec_flip -- [NAMES] [FLIPS]`
//! (defaults 100000 and 20). Everything runs on 127.0.0.0/8 and stops by
//! itself; the logs (the controlplane's `snapshot recompiled`, the
//! dataplane's `snapshot applied` lines with their durations) are kept on
//! failure or with `OPENGSLB_BENCH_KEEP=1`.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Result};
use opengslb_bench::{
    binaries, dataplane_config, finish, free_addr, metric, skip_name, snapshot_generation,
    start_controlplane, start_dataplane, wait_generation, wire_name as wire, work_dir,
    write_private, Backend, Children,
};
use opengslb_controlplane::dnssec::sign::canonical_rrs;

const NAME: &str = "flip.bench.test";
const ZONE: &str = "bench.test";
const T_A: u16 = 1;
const T_RRSIG: u16 = 46;
const T_DNSKEY: u16 = 48;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let names: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let flips: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let bins = binaries()?;
    let dir = work_dir("dnssec-flip")?;
    let result = run(&bins, &dir, names, flips);
    finish(&dir, result.is_ok());
    result
}

fn run(bins: &Path, dir: &Path, names: usize, flips: usize) -> Result<()> {
    let mut toggled = Backend::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let steady = Backend::start(Ipv4Addr::new(127, 0, 0, 3))?;
    let grpc = free_addr()?;
    let cp_metrics = free_addr()?;
    let dns = free_addr()?;
    let dp_metrics = free_addr()?;
    let mut text = format!(
        r#"logging: {{level: debug, format: text}}
metrics: {{enabled: true, address: "{cp_metrics}"}}
api: {{enabled: false}}
dns:
  listen_address: "{dns}"
  default_ttl: 30
  zones:
    - name: {ZONE}
      soa: {{mname: ns1.{ZONE}, rname: hostmaster.{ZONE}}}
      ns: [ns1.{ZONE}]
dataplane:
  workers: 1
  controlplanes: ["{grpc}"]
  cache_dir: cache
  metrics_address: "{dp_metrics}"
overwatch:
  identity: {{node_id: dnssec-flip}}
  grpc_address: "{grpc}"
  data_dir: cp-data
regions:
  - name: flip
    servers:
      - {{address: 127.0.0.2, port: {}}}
      - {{address: 127.0.0.3, port: {}}}
    health_check: {{type: tcp, interval: 100ms, timeout: 50ms, failure_threshold: 1, success_threshold: 1}}
  - name: p
    health_check: {{type: none}}
    servers:
"#,
        toggled.addr.port(),
        steady.addr.port()
    );
    for i in 1..=4 {
        writeln!(text, "      - {{address: 192.0.2.{i}, weight: {i}}}")?;
    }
    text.push_str(
        "domains:\n  - {name: flip.bench.test, routing_algorithm: round-robin, regions: [flip]}\n",
    );
    for i in 0..names {
        writeln!(
            text,
            "  - {{name: n{i}.{ZONE}, routing_algorithm: weighted, regions: [p]}}"
        )?;
    }
    let cfg = dir.join("gslb.yaml");
    write_private(&cfg, &text)?;
    let dp_json = dir.join("dataplane.json");
    dataplane_config(bins, &cfg, &dp_json)?;
    let started = Instant::now();
    let mut children = Children::default();
    children.push(start_controlplane(bins, &cfg, dir)?);
    children.push(start_dataplane(bins, &dp_json, dir)?);
    let a = Ipv4Addr::new(127, 0, 0, 2);
    let b = Ipv4Addr::new(127, 0, 0, 3);
    // The zone's keys, then both backends served and signed.
    let deadline = Instant::now() + Duration::from_secs(600);
    let keys = loop {
        if let Some(k) = dnskeys(dns).filter(|k| !k.is_empty()) {
            break k;
        }
        if Instant::now() > deadline {
            bail!("no DNSKEY served after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    while signed_answer(dns, &keys).is_none_or(|ips| ips.len() != 2) {
        if Instant::now() > deadline {
            bail!("{NAME} not served signed with both backends");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "{names} names + {NAME}: first signed answer after {:.1} s (start, compile, sign, push)",
        started.elapsed().as_secs_f64()
    );
    let mut last_gen = snapshot_generation(cp_metrics).unwrap_or(0);
    let (mut decided, mut changed) = (Vec::new(), Vec::new());
    // Flips for which the dataplane applied more than one generation: the
    // generation read below may then be a later one than the change's, so
    // they are left out of the decision timing (not of the other).
    let mut ambiguous = 0usize;
    let applied = || metric(dp_metrics, "opengslb_snapshots_applied_total");
    for flip in 0..flips {
        let up = flip % 2 == 1;
        std::thread::sleep(Duration::from_millis(150 + (flip as u64 * 37) % 100));
        let applied_before = applied();
        let t0 = SystemTime::now();
        if up {
            toggled.up()?;
        } else {
            toggled.down();
        }
        let want: &[Ipv4Addr] = if up { &[a, b] } else { &[b] };
        let limit = Instant::now() + Duration::from_secs(30);
        let seen = loop {
            if let Some(mut ips) = signed_answer(dns, &keys) {
                ips.sort();
                if ips == want {
                    break SystemTime::now();
                }
            }
            if Instant::now() > limit {
                bail!("flip {flip}: no verified new answer within 30 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        let applied_after = applied();
        let generation = wait_generation(cp_metrics, last_gen)?;
        last_gen = generation;
        let decision = UNIX_EPOCH + Duration::from_micros(generation);
        match (applied_before, applied_after) {
            (Some(b), Some(a)) if a - b == 1.0 => decided
                .push(seen.duration_since(decision).map_err(|_| {
                    anyhow::anyhow!("flip {flip}: answer seen before the decision")
                })?),
            _ => ambiguous += 1,
        }
        changed.push(seen.duration_since(t0)?);
    }
    if ambiguous > 0 {
        println!(
            "{ambiguous} of {flips} flips applied more than one generation before the answer \
             (left out of the decision timing)"
        );
    }
    if !decided.is_empty() {
        report("decision -> verified signed answer", &mut decided);
    }
    report("listener change -> verified signed answer", &mut changed);
    Ok(())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let q = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    println!(
        "{what}: n={} p50 {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms",
        samples.len(),
        q(0.5),
        q(0.9),
        q(0.0),
        q(1.0)
    );
}

/// One record of an answer section.
struct Rr {
    rtype: u16,
    ttl: u32,
    rdata: Vec<u8>,
}

/// The answer section for `name`/`qtype`, asked with DO=1 (None on
/// timeout, truncation or an error rcode).
fn query(dns: SocketAddr, name: &str, qtype: u16) -> Option<Vec<Rr>> {
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    let mut q = vec![0x51, 0x7a, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    q.extend_from_slice(&wire(name));
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    // OPT: 4096 octets, DO.
    q.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0x80, 0, 0, 0]);
    s.send_to(&q, dns).ok()?;
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).ok()?;
    let r = &buf[..n];
    if n < 12 || r[0..2] != q[0..2] || r[2] & 0x02 != 0 || r[3] & 0x0f != 0 {
        return None;
    }
    let ancount = u16::from_be_bytes([r[6], r[7]]);
    let mut i = 12;
    i = skip_name(r, i)? + 4;
    let mut out = Vec::new();
    for _ in 0..ancount {
        i = skip_name(r, i)?;
        let h = r.get(i..i + 10)?;
        let rtype = u16::from_be_bytes([h[0], h[1]]);
        let ttl = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let len = usize::from(u16::from_be_bytes([h[8], h[9]]));
        let rdata = r.get(i + 10..i + 10 + len)?.to_vec();
        i += 10 + len;
        out.push(Rr { rtype, ttl, rdata });
    }
    Some(out)
}

/// The zone's DNSKEYs: (key tag, algorithm, public key).
fn dnskeys(dns: SocketAddr) -> Option<Vec<(u16, u8, Vec<u8>)>> {
    let rrs = query(dns, ZONE, T_DNSKEY)?;
    Some(
        rrs.iter()
            .filter(|r| r.rtype == T_DNSKEY && r.rdata.len() > 4)
            .map(|r| (key_tag(&r.rdata), r.rdata[3], r.rdata[4..].to_vec()))
            .collect(),
    )
}

/// RFC 4034 appendix B.
fn key_tag(rdata: &[u8]) -> u16 {
    let mut ac: u32 = 0;
    for (i, &b) in rdata.iter().enumerate() {
        ac += if i & 1 == 1 {
            u32::from(b)
        } else {
            u32::from(b) << 8
        };
    }
    ac += (ac >> 16) & 0xffff;
    (ac & 0xffff) as u16
}

/// The A records of `NAME`, when an RRSIG over exactly them verifies with
/// one of `keys` and is inside its validity window.
fn signed_answer(dns: SocketAddr, keys: &[(u16, u8, Vec<u8>)]) -> Option<Vec<Ipv4Addr>> {
    let rrs = query(dns, NAME, T_A)?;
    let a: Vec<&Rr> = rrs.iter().filter(|r| r.rtype == T_A).collect();
    if a.is_empty() {
        return None;
    }
    let rdata: Vec<Vec<u8>> = a.iter().map(|r| r.rdata.clone()).collect();
    let now = u32::try_from(SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    let owner = wire(NAME);
    let ok = rrs
        .iter()
        .filter(|r| r.rtype == T_RRSIG && r.rdata.len() > 18)
        .any(|sig| {
            let d = &sig.rdata;
            let covered = u16::from_be_bytes([d[0], d[1]]);
            let original_ttl = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
            let expiration = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
            let inception = u32::from_be_bytes([d[12], d[13], d[14], d[15]]);
            let tag = u16::from_be_bytes([d[16], d[17]]);
            let Some(signer_end) = skip_name(d, 18) else {
                return false;
            };
            if covered != T_A || now < inception || now > expiration || a[0].ttl > original_ttl {
                return false;
            }
            let Some((_, alg, key)) = keys.iter().find(|k| k.0 == tag) else {
                return false;
            };
            let mut data = d[..signer_end].to_vec();
            data.extend_from_slice(&canonical_rrs(&owner, T_A, original_ttl, &rdata));
            verify(*alg, key, &data, &d[signer_end..])
        });
    ok.then(|| {
        a.iter()
            .filter_map(|r| <[u8; 4]>::try_from(r.rdata.as_slice()).ok())
            .map(Ipv4Addr::from)
            .collect()
    })
}

fn verify(alg: u8, key: &[u8], data: &[u8], sig: &[u8]) -> bool {
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};
    match alg {
        13 => {
            let mut k = vec![4u8];
            k.extend_from_slice(key);
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k)
                .verify(data, sig)
                .is_ok()
        }
        15 => UnparsedPublicKey::new(&ED25519, key)
            .verify(data, sig)
            .is_ok(),
        _ => false,
    }
}
