//! Every RRSIG the signer makes is verified by an independent
//! implementation (hickory-proto's DNSSEC verifier over its own canonical
//! encoding of the records), and key tags and DS digests are checked against
//! hickory's.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hickory_proto::dnssec::rdata::{DNSSECRData, DNSKEY, NSEC, RRSIG};
use hickory_proto::dnssec::{DigestType, Verifier};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, Restrict};
use opengslb_proto::{RRset, Snapshot};

use super::keys::{self, KeyRole, ZoneKey};
use super::nsec::{canonical_cmp, type_bitmap};
use super::*;
use crate::compile::{AllHealthy, Compiler, HealthView, ServerHealth};
use crate::config::{self, ServerRef};

const CONFIG: &str = "\
dns:
  default_ttl: 60
  zones:
    - name: example.com
      soa: {mname: ns1.example.com, rname: hostmaster.example.com, minimum: 30, ttl: 3600}
      ns: [ns1.example.com, ns2.example.com]
      records:
        - {name: alias.example.com, type: CNAME, value: rr.example.com, ttl: 300}
        - {name: example.com, type: MX, value: \"10 mail.example.com\"}
        - {name: example.com, type: TXT, value: \"v=spf1 -all\"}
        - {name: Mixed.Case.example.com, type: TXT, value: \"Hello\"}
    - other.test
regions:
  - name: p
    servers:
      - {address: 192.0.2.1, weight: 10}
      - {address: 192.0.2.2, weight: 5}
      - {address: 192.0.2.3, weight: 1}
      - {address: \"2001:db8::1\"}
    health_check: {type: none}
domains:
  - {name: rr.example.com, routing_algorithm: round-robin, regions: [p], ttl: 30}
  - {name: w.deep.example.com, routing_algorithm: weighted, regions: [p]}
  - {name: fo.example.com, routing_algorithm: failover, regions: [p], max_answers: 2}
  - {name: www.other.test, routing_algorithm: round-robin, regions: [p]}
";

fn cfg() -> Config {
    config::parse(CONFIG, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn unix(t: SystemTime) -> u32 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as u32
}

/// Keys for every zone of `cfg`.
fn keys_for(cfg: &Config, alg: Algorithm, split: bool) -> Dnssec {
    let roles: &[KeyRole] = if split {
        &[KeyRole::Ksk, KeyRole::Zsk]
    } else {
        &[KeyRole::Csk]
    };
    let mut keys = Vec::new();
    for z in &cfg.dns.zones {
        for &role in roles {
            keys.push(ZoneKey::generate(&z.name, role, alg, 1).unwrap().0);
        }
    }
    Dnssec::with_keys(keys)
}

fn hname(wire: &[u8]) -> Name {
    Name::from_bytes(wire).unwrap()
}

fn rdata(t: u16, bytes: &[u8]) -> RData {
    let mut d = BinDecoder::new(bytes);
    RData::read(
        &mut d,
        RecordType::from(t),
        Restrict::new(bytes.len() as u16),
    )
    .unwrap()
}

fn rrsig(bytes: &[u8]) -> RRSIG {
    match rdata(rtype::RRSIG, bytes) {
        RData::DNSSEC(DNSSECRData::RRSIG(s)) => s,
        other => panic!("not an RRSIG: {other:?}"),
    }
}

fn dnskeys(snap: &Snapshot, zone: usize) -> Vec<DNSKEY> {
    snap.zones[zone]
        .dnskey
        .as_ref()
        .expect("DNSKEY RRset")
        .rdata
        .iter()
        .map(|r| match rdata(rtype::DNSKEY, r) {
            RData::DNSSEC(DNSSECRData::DNSKEY(k)) => k,
            other => panic!("not a DNSKEY: {other:?}"),
        })
        .collect()
}

/// Verifies every RRSIG of `set` (owned by `owner`) with hickory against
/// `keys`; checks the RRSIG fields; returns the tags of the signing keys.
fn verify(keys: &[DNSKEY], apex: &[u8], owner: &[u8], set: &RRset, now: u32) -> Vec<u16> {
    assert!(
        !set.rrsig.is_empty(),
        "unsigned RRset type {} at {owner:?}",
        set.rtype
    );
    let name = hname(owner);
    let t = set.rtype as u16;
    // Reversed: the order of records must not matter (canonical sort).
    let records: Vec<Record> = set
        .rdata
        .iter()
        .rev()
        .map(|r| Record::from_rdata(name.clone(), set.ttl, rdata(t, r)))
        .collect();
    let mut tags = Vec::new();
    for sig in &set.rrsig {
        let sig = rrsig(sig);
        let input = sig.input();
        assert_eq!(u16::from(input.type_covered), t);
        assert_eq!(input.original_ttl, set.ttl, "original TTL = RRset TTL");
        assert_eq!(input.num_labels as usize, name.num_labels() as usize);
        assert_eq!(input.signer_name, hname(apex));
        assert!(
            input.sig_inception.get() <= now - 3599,
            "inception backdated"
        );
        assert!(input.sig_expiration.get() > now, "not expired");
        let key = keys
            .iter()
            .find(|k| k.calculate_key_tag().unwrap() == input.key_tag)
            .expect("signed by a published key");
        key.verify_rrsig(&name, DNSClass::IN, &sig, records.iter())
            .unwrap_or_else(|e| panic!("RRSIG over type {t} at {name} does not verify: {e}"));
        tags.push(input.key_tag);
    }
    tags
}

/// Verifies every signature of every zone; returns how many.
fn verify_all(snap: &Snapshot, now: u32, split: bool) -> usize {
    let mut n = 0;
    for (zi, zone) in snap.zones.iter().enumerate() {
        let keys = dnskeys(snap, zi);
        let ksk: BTreeSet<u16> = keys
            .iter()
            .filter(|k| k.flags() == 257)
            .map(|k| k.calculate_key_tag().unwrap())
            .collect();
        let zsk: BTreeSet<u16> = keys
            .iter()
            .filter(|k| !split || k.flags() == 256)
            .map(|k| k.calculate_key_tag().unwrap())
            .collect();
        let apex = &zone.apex;
        let mut check = |owner: &[u8], set: &RRset, by: &BTreeSet<u16>| {
            let tags = verify(&keys, apex, owner, set, now);
            assert!(
                tags.iter().all(|t| by.contains(t)),
                "signed by the right key"
            );
            n += tags.len();
        };
        check(apex, zone.dnskey.as_ref().unwrap(), &ksk);
        check(apex, zone.soa.as_ref().unwrap(), &zsk);
        check(apex, zone.ns.as_ref().unwrap(), &zsk);
        for node in snap.nodes.iter().filter(|n| n.zone as usize == zi) {
            for set in &node.rrsets {
                check(&node.name, set, &zsk);
            }
            for plan in &node.plans {
                for c in &plan.candidates {
                    check(&node.name, c.rrset.as_ref().unwrap(), &zsk);
                }
            }
            assert_eq!(node.denial.len(), 1, "one NSEC per owner");
            check(&node.name, &node.denial[0], &zsk);
        }
    }
    n
}

fn signed(dnssec: &Dnssec, cfg: &Config, now: SystemTime) -> (Compiler, Snapshot) {
    let mut c = Compiler::with_dnssec(dnssec.clone());
    let snap = c.compile(cfg, 1, 1, &AllHealthy, now).snapshot;
    (c, snap)
}

#[test]
fn key_tag_dnskey_and_ds_match_hickory() {
    for alg in [Algorithm::EcdsaP256Sha256, Algorithm::Ed25519] {
        let zone = DnsName::parse("Example.COM").unwrap();
        let (key, pkcs8) = ZoneKey::generate(&zone, KeyRole::Csk, alg, 5).unwrap();
        let h = match rdata(rtype::DNSKEY, &key.dnskey_rdata()) {
            RData::DNSSEC(DNSSECRData::DNSKEY(k)) => k,
            _ => unreachable!(),
        };
        assert_eq!(h.calculate_key_tag().unwrap(), key.key_tag);
        assert!(h.zone_key() && h.secure_entry_point());
        let digest = h
            .to_digest(
                &Name::from_ascii("example.com.").unwrap(),
                DigestType::SHA256,
            )
            .unwrap();
        assert_eq!(digest.as_ref(), key.ds_digest().as_slice());
        let line = key.ds_line();
        assert_eq!(
            line,
            format!(
                "example.com. IN DS {} {} 2 {}",
                key.key_tag,
                alg.number(),
                keys::hex_upper(digest.as_ref())
            )
        );
        // Reloaded from PKCS#8: same key.
        let again = ZoneKey::from_pkcs8(&zone, KeyRole::Csk, alg, 257, &pkcs8, 5).unwrap();
        assert_eq!(again.key_tag, key.key_tag);
        assert_eq!(again.public_key, key.public_key);
        assert!(
            !format!("{key:?}").contains("pair"),
            "Debug hides the private half"
        );
    }
    // RFC 4034 App. B: a known DNSKEY and its tag (RFC 4034 §5.4's example key, tag 60485).
    let rfc = [
        0x01, 0x00, 0x03, 0x05, 0x01, 0x03, 0xd2, 0x2a, 0x6c, 0xa7, 0x7f, 0x35, 0xb8, 0x93, 0x20,
        0x6f, 0xd3, 0x5e, 0x4c, 0x50, 0x6d, 0x83, 0x78, 0x84, 0x37, 0x09, 0xb9, 0x7e, 0x04, 0x16,
        0x47, 0xe1, 0xbf, 0xf4, 0x3d, 0x8d, 0x64, 0xc6, 0x49, 0xaf, 0x1e, 0x37, 0x19, 0x73, 0xc9,
        0x52, 0x3e, 0xcd, 0x4f, 0x4f, 0x4f, 0x59, 0x3a, 0xd5, 0x14, 0x86, 0x67, 0x2c, 0x71, 0x4b,
        0xca, 0x2c, 0x6b, 0x6c, 0xc3, 0xb6, 0x7d, 0x96, 0xcf, 0xcb, 0x01, 0x88, 0x9a, 0x20, 0x62,
        0x10, 0x4e, 0xa2, 0x8a, 0xbc, 0x32, 0x0a, 0x27, 0xb0, 0x8b, 0x0d, 0x63, 0xa9, 0xdc, 0x65,
    ];
    assert_eq!(
        keys::key_tag(&rfc),
        DNSKEY::calculate_key_tag_internal(&rfc)
    );
}

#[test]
fn every_rrsig_verifies_csk_and_split_both_algorithms() {
    let cfg = cfg();
    let now = at(0);
    for alg in [Algorithm::EcdsaP256Sha256, Algorithm::Ed25519] {
        for split in [false, true] {
            let dnssec = keys_for(&cfg, alg, split);
            let (_, snap) = signed(&dnssec, &cfg, now);
            let n = verify_all(&snap, unix(now), split);
            assert!(n > 20, "{n} signatures");
            assert_eq!(dnssec.stats().signatures, n);
            let keys = dnskeys(&snap, 0);
            assert_eq!(keys.len(), if split { 2 } else { 1 });
        }
    }
}

#[test]
fn rrsig_ttl_window_and_refresh() {
    let mut cfg = cfg();
    cfg.overwatch.dnssec.signature_validity = config::Duration::from_secs(14 * 86_400);
    cfg.overwatch.dnssec.refresh_before = config::Duration::from_secs(7 * 86_400);
    let dnssec = keys_for(&cfg, Algorithm::EcdsaP256Sha256, false);
    let mut c = Compiler::with_dnssec(dnssec.clone());
    let first = c.compile(&cfg, 1, 1, &AllHealthy, at(0));
    let sig = rrsig(&first.snapshot.zones[0].soa.as_ref().unwrap().rrsig[0]);
    assert_eq!(sig.input().sig_inception.get(), unix(at(0)) - 3600);
    assert_eq!(sig.input().sig_expiration.get(), unix(at(0)) + 14 * 86_400);
    // The compiler asks to be run again when the refresh window opens.
    assert_eq!(first.recompile_at, Some(at(7 * 86_400)));
    let total = dnssec.stats().signatures;
    assert_eq!(
        dnssec.stats().signed_last,
        total,
        "first pass signs everything"
    );

    // A recompile soon after: only the SOA (its serial moved) is re-signed.
    let second = c.compile(&cfg, 2, 2, &AllHealthy, at(60));
    assert_eq!(dnssec.stats().signed_last, 2, "one SOA per zone");
    assert_eq!(second.recompile_at, Some(at(7 * 86_400)));
    verify_all(&second.snapshot, unix(at(60)), false);

    // In the refresh window everything is re-signed with a new expiry.
    let later = at(7 * 86_400 + 1);
    let third = c.compile(&cfg, 3, 3, &AllHealthy, later);
    assert_eq!(dnssec.stats().signed_last, total);
    assert_eq!(
        third.recompile_at,
        Some(later + Duration::from_secs(7 * 86_400))
    );
    verify_all(&third.snapshot, unix(later), false);
}

#[test]
fn health_change_resigns_only_what_changed() {
    // Probed servers (the health view decides).
    let text = CONFIG.replace("    health_check: {type: none}\n", "");
    let cfg = config::parse(&text, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let dnssec = keys_for(&cfg, Algorithm::EcdsaP256Sha256, false);
    let mut c = Compiler::with_dnssec(dnssec.clone());
    c.compile(&cfg, 1, 1, &AllHealthy, at(0));
    let down = |s: &ServerRef<'_>| {
        if s.address == std::net::IpAddr::from([192, 0, 2, 3]) {
            ServerHealth::DOWN
        } else {
            ServerHealth::UP
        }
    };
    let view: &dyn HealthView = &down;
    let snap = c.compile(&cfg, 2, 2, view, at(10)).snapshot;
    // SOA ×2 zones, and the round-robin A RRsets of rr.example.com and
    // www.other.test (one address fewer); weighted and failover candidates
    // that stay are reused from the cache.
    assert_eq!(dnssec.stats().signed_last, 4);
    verify_all(&snap, unix(at(10)), false);
}

#[test]
fn nsec_chain_covers_every_owner_in_canonical_order() {
    let cfg = cfg();
    let dnssec = keys_for(&cfg, Algorithm::Ed25519, false);
    let (_, snap) = signed(&dnssec, &cfg, at(0));
    for (zi, zone) in snap.zones.iter().enumerate() {
        let mut owners: Vec<&[u8]> = snap
            .nodes
            .iter()
            .filter(|n| n.zone as usize == zi)
            .map(|n| n.name.as_slice())
            .collect();
        owners.sort_by(|a, b| canonical_cmp(a, b));
        assert_eq!(owners[0], zone.apex.as_slice(), "the apex comes first");
        // hickory's Name ordering is canonical too.
        let mut h: Vec<Name> = owners.iter().map(|o| hname(o)).collect();
        h.sort();
        assert_eq!(h, owners.iter().map(|o| hname(o)).collect::<Vec<_>>());
        for (i, owner) in owners.iter().enumerate() {
            let node = snap.nodes.iter().find(|n| n.name == *owner).unwrap();
            let nsec = &node.denial[0];
            assert_eq!(nsec.ttl, zone.negative_ttl);
            let RData::DNSSEC(DNSSECRData::NSEC(nsec)) = rdata(47, &nsec.rdata[0]) else {
                panic!("not NSEC");
            };
            let next = owners.get(i + 1).copied().unwrap_or(&zone.apex);
            assert_eq!(nsec.next_domain_name(), &hname(next));
            let types: BTreeSet<RecordType> = nsec.type_bit_maps().collect();
            assert!(types.contains(&RecordType::RRSIG) && types.contains(&RecordType::NSEC));
            let mut want: BTreeSet<RecordType> = node
                .rrsets
                .iter()
                .map(|s| RecordType::from(s.rtype as u16))
                .chain(node.plans.iter().map(|p| RecordType::from(p.rtype as u16)))
                .collect();
            want.extend([RecordType::RRSIG, RecordType::NSEC]);
            if *owner == zone.apex.as_slice() {
                want.extend([RecordType::SOA, RecordType::NS, RecordType::DNSKEY]);
            }
            assert_eq!(types, want, "bitmap of {}", hname(owner));
        }
    }
    // Empty non-terminals have an NSEC of their own (RRSIG NSEC only).
    let deep = snap
        .nodes
        .iter()
        .find(|n| n.name == DnsName::parse("deep.example.com").unwrap().to_wire())
        .unwrap();
    let RData::DNSSEC(DNSSECRData::NSEC(nsec)) = rdata(47, &deep.denial[0].rdata[0]) else {
        panic!()
    };
    let _: &NSEC = &nsec;
    assert_eq!(nsec.type_bit_maps().count(), 2);
}

#[test]
fn type_bitmap_matches_rfc_4034_example() {
    // RFC 4034 §4.3: A MX RRSIG NSEC TYPE1234.
    let mut types = vec![1234, 47, 46, 15, 1];
    let mut want = vec![0x00, 0x06, 0x40, 0x01, 0x00, 0x00, 0x00, 0x03, 0x04, 0x1b];
    want.extend([0u8; 26]);
    want.push(0x20);
    assert_eq!(type_bitmap(&mut types), want);
}

#[test]
fn disabled_or_keyless_compiles_unsigned() {
    let mut cfg = cfg();
    let dnssec = keys_for(&cfg, Algorithm::EcdsaP256Sha256, false);
    cfg.overwatch.dnssec.enabled = false;
    let (_, snap) = signed(&dnssec, &cfg, at(0));
    assert!(snap.zones.iter().all(|z| z.dnskey.is_none()));
    assert!(snap.nodes.iter().all(|n| n.denial.is_empty()));
    let (_, plain) = signed(&Dnssec::disabled(), &self::cfg(), at(0));
    assert!(plain.zones[0].soa.as_ref().unwrap().rrsig.is_empty());
}

// === store ===

async fn open(dir: &Path, edit: impl FnOnce(&mut Config)) -> Result<Dnssec> {
    let mut cfg = cfg();
    edit(&mut cfg);
    let store = Store::open(&format!("sqlite://{}", dir.join("db").display()))
        .await
        .unwrap();
    Dnssec::open(&store, &cfg).await
}

#[tokio::test]
async fn keys_persist_in_the_store_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), |_| {}).await.unwrap();
    let ds = first.ds_records("example.com").unwrap();
    assert_eq!(ds.len(), 1);
    let status = first.status(false);
    assert_eq!(status.zones.len(), 2);
    assert_eq!(status.zones[0].keys[0].role, KeyRole::Csk);
    assert_eq!(status.algorithm, Some("ECDSAP256SHA256"));
    assert!(!status.keys_encrypted_at_rest);
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["zones"][0]["keys"][0]["role"], "csk");
    let again = open(dir.path(), |_| {}).await.unwrap();
    assert_eq!(
        again.ds_records("example.com.").unwrap(),
        ds,
        "same key after a restart"
    );
    assert!(again.ds_records("nope.example").is_err());
}

#[tokio::test]
async fn split_keys_give_one_ds_for_the_ksk() {
    let dir = tempfile::tempdir().unwrap();
    let d = open(dir.path(), |c| {
        c.overwatch.dnssec.split_keys = true;
        c.overwatch.dnssec.algorithm = config::DnssecAlgorithm::Ed25519;
    })
    .await
    .unwrap();
    assert_eq!(d.ds_records("example.com").unwrap().len(), 1);
    let status = d.status(false);
    let roles: Vec<KeyRole> = status.zones[0].keys.iter().map(|k| k.role).collect();
    assert_eq!(roles, [KeyRole::Ksk, KeyRole::Zsk]);
    assert!(d.ds_records("example.com").unwrap()[0].contains(" 15 2 "));
}

#[tokio::test]
async fn encrypted_keys_need_the_right_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let write_kek = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let good = write_kek("kek", &"ab".repeat(32));
    let wrong = write_kek("wrong", &"cd".repeat(32));
    let short = write_kek("short", "abcd");
    let first = open(dir.path(), |c| {
        c.overwatch.dnssec.key_encryption_key_file = Some(good.clone())
    })
    .await
    .unwrap();
    assert!(first.status(false).keys_encrypted_at_rest);
    let ds = first.ds_records("example.com").unwrap();
    let again = open(dir.path(), |c| {
        c.overwatch.dnssec.key_encryption_key_file = Some(good.clone())
    })
    .await
    .unwrap();
    assert_eq!(again.ds_records("example.com").unwrap(), ds);
    let err = open(dir.path(), |c| {
        c.overwatch.dnssec.key_encryption_key_file = Some(wrong.clone())
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not decrypt"), "{err}");
    let err = open(dir.path(), |_| {}).await.unwrap_err().to_string();
    assert!(err.contains("key_encryption_key_file"), "{err}");
    let err = open(dir.path(), |c| {
        c.overwatch.dnssec.key_encryption_key_file = Some(short.clone())
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("64 hex digits"), "{err}");
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = open(dir.path(), |c| {
        c.overwatch.dnssec.key_encryption_key_file = Some(good.clone())
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn seal_and_open_round_trip() {
    let kek = [7u8; 32];
    let sealed = keys::seal(&kek, b"aad", b"secret").unwrap();
    assert_eq!(keys::open(&kek, b"aad", &sealed).unwrap(), b"secret");
    assert!(keys::open(&kek, b"other", &sealed).is_none());
    assert!(keys::open(&[8u8; 32], b"aad", &sealed).is_none());
    assert_eq!(keys::base64(b"foob"), "Zm9vYg==");
    assert_eq!(keys::base64(b"fooba"), "Zm9vYmE=");
    assert_eq!(keys::base64(b"foobar"), "Zm9vYmFy");
}

#[test]
#[ignore = "timing: cargo test -p opengslb-controlplane --release --lib -- --ignored sign_100k --nocapture"]
fn sign_100k_names() {
    use std::fmt::Write as _;
    let mut text = String::from(
        "dns:\n  zones: [example.com]\nregions:\n  - name: p\n    health_check: {type: none}\n    servers:\n",
    );
    for i in 1..=4 {
        writeln!(text, "      - {{address: 192.0.2.{i}, weight: {i}}}").unwrap();
    }
    text.push_str("domains:\n");
    let n = std::env::var("SIGN_NAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    for i in 0..n {
        writeln!(
            text,
            "  - {{name: n{i}.example.com, routing_algorithm: weighted, regions: [p]}}"
        )
        .unwrap();
    }
    let cfg = config::parse(&text, Path::new("big.yaml")).unwrap();
    let dnssec = keys_for(&cfg, Algorithm::EcdsaP256Sha256, false);
    let mut c = Compiler::with_dnssec(dnssec.clone());
    let unsigned = Compiler::new()
        .compile(&cfg, 1, 1, &AllHealthy, at(0))
        .snapshot;
    let t = std::time::Instant::now();
    let snap = c.compile(&cfg, 1, 1, &AllHealthy, at(0)).snapshot;
    let full = t.elapsed();
    let t = std::time::Instant::now();
    c.compile(&cfg, 2, 2, &AllHealthy, at(10));
    let again = t.elapsed();
    use prost::Message as _;
    println!(
        "{n} names: {} signatures, full sign+compile {full:?}, recompile (cache) {again:?}, snapshot {} -> {} bytes",
        dnssec.stats().signatures,
        unsigned.encoded_len(),
        snap.encoded_len()
    );
}

#[test]
fn nsec3_chain_hashes_every_owner_and_verifies() {
    use hickory_proto::dnssec::rdata::NSEC3;
    use hickory_proto::dnssec::Nsec3HashAlgorithm;
    let mut cfg = cfg();
    cfg.overwatch.dnssec.denial = config::DnssecDenial::Nsec3;
    let dnssec = keys_for(&cfg, Algorithm::EcdsaP256Sha256, true);
    let (_, snap) = signed(&dnssec, &cfg, at(0));
    let now = unix(at(0));
    for (zi, zone) in snap.zones.iter().enumerate() {
        let keys = dnskeys(&snap, zi);
        let chain = zone.nsec3.as_ref().expect("NSEC3 chain");
        let param = chain.param.as_ref().unwrap();
        assert_eq!(param.rdata, [vec![1, 0, 0, 0, 0]]);
        verify(&keys, &zone.apex, &zone.apex, param, now);
        let owners: Vec<&[u8]> = snap
            .nodes
            .iter()
            .filter(|n| n.zone as usize == zi)
            .inspect(|n| assert!(n.denial.is_empty(), "no NSEC beside NSEC3"))
            .map(|n| n.name.as_slice())
            .chain(std::iter::once(zone.apex.as_slice()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // hickory's hash of every owner name, 0 iterations, no salt.
        let mut want: Vec<Vec<u8>> = owners
            .iter()
            .map(|o| {
                Nsec3HashAlgorithm::SHA1
                    .hash(&[], &hname(o), 0)
                    .unwrap()
                    .as_ref()
                    .to_vec()
            })
            .collect();
        want.sort();
        let got: Vec<Vec<u8>> = chain.records.iter().map(|r| r.hash.clone()).collect();
        assert_eq!(got, want, "one NSEC3 per owner name, sorted by hash");
        for (i, r) in chain.records.iter().enumerate() {
            let set = r.rrset.as_ref().unwrap();
            assert_eq!(set.ttl, zone.negative_ttl);
            let RData::DNSSEC(DNSSECRData::NSEC3(n)) = rdata(50, &set.rdata[0]) else {
                panic!("not NSEC3");
            };
            let n: &NSEC3 = &n;
            assert_eq!((n.iterations(), n.salt(), n.opt_out()), (0, &[][..], false));
            assert_eq!(
                n.next_hashed_owner_name(),
                chain.records[(i + 1) % chain.records.len()].hash.as_slice()
            );
            let owner = nsec3::owner(&r.hash.as_slice().try_into().unwrap(), &zone.apex);
            let tags = verify(&keys, &zone.apex, &owner, set, now);
            assert!(!tags.is_empty());
            // The apex's bitmap has NSEC3PARAM; an empty non-terminal's is empty.
            let types: BTreeSet<RecordType> = n.type_bit_maps().collect();
            if r.hash == nsec3::hash(&zone.apex).to_vec() {
                assert!(types.contains(&RecordType::NSEC3PARAM), "{types:?}");
                assert!(types.contains(&RecordType::DNSKEY));
            }
            let deep = DnsName::parse("deep.example.com").unwrap().to_wire();
            if r.hash == nsec3::hash(&deep).to_vec() {
                assert!(types.is_empty(), "ENT bitmap {types:?}");
            }
        }
    }
}

#[test]
fn metrics_name_keys_signatures_latency_and_expiry() {
    let cfg = cfg();
    let dnssec = keys_for(&cfg, Algorithm::EcdsaP256Sha256, false);
    let registry = prometheus::Registry::new();
    registry
        .register(Box::new(dnssec.collector().unwrap()))
        .unwrap();
    let now = SystemTime::now();
    let (mut c, _) = signed(&dnssec, &cfg, now);
    dnssec.record_sync("https://peer.example:8080", false);
    dnssec.record_sync("https://peer.example:8080", true);
    let text = |r: &prometheus::Registry| {
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    };
    let t = text(&registry);
    let first = dnssec.stats().signed_last;
    assert!(first > 10);
    assert!(t.contains("opengslb_dnssec_enabled 1"), "{t}");
    let tag = dnssec
        .keyring()
        .keys(&DnsName::parse("example.com").unwrap().to_wire())
        .unwrap()[0]
        .key_tag;
    assert!(
        t.contains(&format!(
            "opengslb_dnssec_key_age_seconds{{key_tag=\"{tag}\",zone=\"example.com\"}}"
        )),
        "{t}"
    );
    assert!(
        t.contains("opengslb_dnssec_signatures_total{zone=\"example.com\"}"),
        "{t}"
    );
    assert!(
        t.contains("opengslb_dnssec_signatures_total{zone=\"other.test\"}"),
        "{t}"
    );
    assert!(
        t.contains("opengslb_dnssec_signing_latency_seconds_count 1"),
        "{t}"
    );
    assert!(
        t.contains("opengslb_dnssec_key_sync_success_total 1"),
        "{t}"
    );
    assert!(
        t.contains("opengslb_dnssec_key_sync_failures_total{peer=\"https://peer.example:8080\"} 1")
    );
    // Next expiry: about 14 days ahead.
    let line = t
        .lines()
        .find(|l| l.starts_with("opengslb_dnssec_next_expiry_seconds{zone=\"example.com\"}"))
        .expect("next expiry");
    let secs: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        (14.0 * 86400.0 - 60.0..=14.0 * 86400.0).contains(&secs),
        "{line}"
    );
    // A recompile with nothing changed (same serial) makes no signature.
    let total = |t: &str| -> u64 {
        t.lines()
            .filter(|l| l.starts_with("opengslb_dnssec_signatures_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(total(&t), first as u64);
    let _ = c.compile(&cfg, 2, 1, &AllHealthy, now);
    let t2 = text(&registry);
    assert_eq!(total(&t2), total(&t), "{t2}");
    assert!(t2.contains("opengslb_dnssec_signing_latency_seconds_count 2"));
}

#[tokio::test]
async fn key_sync_adopts_newer_keys_with_private_part_ignores_older_and_malformed() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = |d: &Path| {
        let url = format!("sqlite://{}", d.join("db").display());
        async move { Store::open(&url).await.unwrap() }
    };
    let (sa, sb) = (store(da.path()).await, store(db.path()).await);
    let cfg = cfg();
    let a = Dnssec::open(&sa, &cfg).await.unwrap();
    // b's keys are made a second later: newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = Dnssec::open(&sb, &cfg).await.unwrap();
    let ds_b = b.ds_records("example.com").unwrap();
    assert_ne!(a.ds_records("example.com").unwrap(), ds_b);

    // b ignores a's older keys.
    let adopted = sync::adopt(&b, &sb, &cfg, &a.export()).await.unwrap();
    assert!(adopted.is_empty());
    assert_eq!(b.ds_records("example.com").unwrap(), ds_b);

    // a adopts b's, private part included: a's signatures verify with b's DNSKEY.
    let mut adopted = sync::adopt(&a, &sa, &cfg, &b.export()).await.unwrap();
    adopted.sort();
    assert_eq!(adopted, ["example.com", "other.test"]);
    assert_eq!(a.ds_records("example.com").unwrap(), ds_b);
    let (_, snap) = signed(&a, &cfg, SystemTime::now());
    assert!(verify_all(&snap, unix(SystemTime::now()), false) > 10);
    // Kept in a's store: a restart keeps the adopted key.
    let again = Dnssec::open(&sa, &cfg).await.unwrap();
    assert_eq!(again.ds_records("example.com").unwrap(), ds_b);

    // Malformed: a private key that is not b's advertised key, or garbage.
    let mut bad = b.export();
    bad.zones[0].keys[0].created_unix = unix_now() + 10;
    bad.zones[0].keys[0].key_tag ^= 1;
    let err = sync::adopt(&a, &sa, &cfg, &bad).await.unwrap_err();
    assert!(err.contains("key tag does not match"), "{err}");
    let mut bad = b.export();
    bad.zones[0].keys[0].created_unix = unix_now() + 10;
    bad.zones[0].keys[0].private_key_pkcs8_hex = "00FF".into();
    let err = sync::adopt(&a, &sa, &cfg, &bad).await.unwrap_err();
    assert!(err.contains("malformed key"), "{err}");
    // Nothing changed: a still signs with b's key.
    assert_eq!(a.ds_records("example.com").unwrap(), ds_b);
}
