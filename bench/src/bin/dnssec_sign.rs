//! DNSSEC signing benchmark (issue 6, point 11): time and peak memory to
//! compile and sign a snapshot of N names (default 100,000), each a
//! weighted name over 4 servers (4 single-record candidate A RRsets, plus
//! the NSEC or NSEC3 chain), with ECDSA P-256; then the time from one
//! name's health change to its re-signed snapshot (only the changed RRsets
//! and the SOA are signed again: the signature cache keeps the rest), by a
//! full compile and by the incremental one the controlplane uses
//! (`Compiler::compile_update`: only the changed domain is re-planned, and
//! a delta is what gets published).
//!
//! ```text
//! cargo run --release -p opengslb-bench --bin dnssec_sign -- [NAMES] [nsec|nsec3]
//! ```
//!
//! Prints one line per measurement. Peak RSS is the process's VmHWM
//! (Linux), measured after the full signing pass.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use opengslb_controlplane::compile::incremental::Published;
use opengslb_controlplane::compile::{AllHealthy, Compiler, HealthView, ServerHealth};
use opengslb_controlplane::config::{self, ServerRef};
use opengslb_controlplane::dnssec::Dnssec;
use opengslb_controlplane::store::Store;

fn vm(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l[field.len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "n/a".to_owned())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()
        .context("NAMES must be a number")?
        .unwrap_or(100_000);
    let denial = args.next().unwrap_or_else(|| "nsec".to_owned());
    let mut text = format!(
        "dns:\n  zones: [example.com]\noverwatch:\n  dnssec: {{denial: {denial}}}\nregions:\n  - name: p\n    health_check: {{type: none}}\n    servers:\n"
    );
    for i in 1..=4 {
        writeln!(text, "      - {{address: 192.0.2.{i}, weight: {i}}}")?;
    }
    // One name with servers of its own (probed, so the health view below
    // decides them): its health change touches only it.
    text.push_str("  - name: solo\n    servers:\n      - {address: 198.51.100.1}\n      - {address: 198.51.100.2}\n      - {address: 198.51.100.3}\n      - {address: 198.51.100.4}\ndomains:\n  - {name: solo.example.com, routing_algorithm: weighted, regions: [solo]}\n");
    for i in 0..n {
        writeln!(
            text,
            "  - {{name: n{i}.example.com, routing_algorithm: weighted, regions: [p]}}"
        )?;
    }
    let cfg = config::parse(&text, Path::new("bench.yaml")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = tempfile_dir()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dnssec = rt.block_on(async {
        let store = Store::open(&format!("sqlite://{}", dir.join("db").display())).await?;
        Dnssec::open(&store, &cfg).await
    })?;
    println!("rss before compiling: VmRSS {}", vm("VmRSS:"));
    let mut c = Compiler::with_dnssec(dnssec.clone());
    let t = Instant::now();
    let first = c.compile(&cfg, 1, 1, &AllHealthy, SystemTime::now());
    let full = t.elapsed();
    let s = dnssec.stats();
    println!(
        "{n} names x 4 candidates ({denial}): compile+sign {:.2} s, {} RRSIGs made, {} nodes; peak RSS (VmHWM) {}",
        full.as_secs_f64(),
        s.signed_last,
        first.snapshot.nodes.len(),
        vm("VmHWM:")
    );
    drop(first);
    // One name's health change: solo loses a server.
    let down = |s: &ServerRef<'_>| {
        if s.address == std::net::IpAddr::from([198, 51, 100, 1]) {
            ServerHealth::DOWN
        } else {
            ServerHealth::UP
        }
    };
    let view: &dyn HealthView = &down;
    let t = Instant::now();
    let _second = c.compile(&cfg, 2, 2, view, SystemTime::now());
    let change = t.elapsed();
    println!(
        "one name's health change -> re-signed snapshot: {:.1} ms ({} RRSIGs made)",
        change.as_secs_f64() * 1000.0,
        dnssec.stats().signed_last
    );
    // The same change through the incremental path the controlplane takes
    // on a health change (`Compiler::compile_update`): a full compile to
    // start from (signatures from the cache), then only the changed domain.
    let cfg = std::sync::Arc::new(cfg);
    let _ = c.compile_update(&cfg, 3, 3, &AllHealthy, SystemTime::now());
    let t = Instant::now();
    let update = c.compile_update(&cfg, 4, 4, view, SystemTime::now());
    let incremental = t.elapsed();
    let sent = match &update.published {
        Published::Delta(d) => format!(
            "a delta of {} nodes, {} octets",
            d.upsert_nodes.len(),
            prost::Message::encoded_len(d)
        ),
        Published::Full(s) => format!(
            "a FULL snapshot of {} octets",
            prost::Message::encoded_len(s)
        ),
    };
    println!(
        "same change, incremental compile: {:.2} ms ({} domains re-planned, {} RRSIGs made), {sent}",
        incremental.as_secs_f64() * 1000.0,
        update.replanned,
        dnssec.stats().signed_last
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("opengslb-dnssec-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
