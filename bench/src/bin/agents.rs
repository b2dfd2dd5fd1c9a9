//! Agents at scale: one real controlplane (and one dataplane) with N
//! simulated agents × B backends, each agent on its own TLS connection
//! (its own self-signed certificate, pinned on first contact) sending a
//! heartbeat every second.
//!
//! Reports the controlplane's CPU (utime + stime from `/proc/PID/stat` over
//! the measurement window) and RSS (`VmRSS`), and, TOGGLES times, the delay
//! from an agent sending a state change to the dataplane's first answer
//! that reflects it (agent 0 owns the only agent backend of
//! `probe.agents.bench.test`; its claim flips unhealthy/healthy).
//!
//! Usage: `cargo run --release -p opengslb-bench --bin agents -- [AGENTS] [BACKENDS] [SECONDS] [TOGGLES]`
//! (defaults 1000, 10, 30, 20). Everything runs on 127.0.0.0/8 and stops by
//! itself.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use opengslb_bench::{
    ask_a, binaries, clock_ticks, cpu_ticks, dataplane_config, finish, free_addr, log_text,
    quantile_ms, rss_kib, start_controlplane, start_dataplane, wait_tcp, work_dir, write_private,
    Children,
};
use opengslb_controlplane::overwatch::tls::{self, Identity, PinStore, Trust};
use opengslb_proto::{
    agent_service_client::AgentServiceClient, BackendHealth, BackendRef, HealthClaim,
    HeartbeatRequest, RegisterRequest,
};
use tokio::sync::mpsc;

const TOKEN: &str = "bench-agent-token-0000";
const SERVICES: usize = 100;
const PROBE: &str = "probe.agents.bench.test";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let agents: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let backends: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(30);
    let toggles: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    if agents == 0 || backends < 2 {
        bail!("need at least 1 agent and 2 backends per agent");
    }
    let bins = binaries()?;
    let dir = work_dir("agents")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(run(&bins, &dir, agents, backends, seconds, toggles));
    finish(&dir, result.is_ok());
    result
}

/// The address of backend `j` of agent `i`.
fn backend_addr(i: usize, j: usize, per: usize) -> SocketAddr {
    let n = (i * per + j + 1) as u32;
    SocketAddr::from((Ipv4Addr::from(0x0a00_0000 | n), 80))
}

fn service_of(i: usize, j: usize) -> String {
    if i == 0 && j == 0 {
        PROBE.to_owned()
    } else {
        format!("s{}.agents.bench.test", i % SERVICES)
    }
}

async fn run(
    bins: &Path,
    dir: &Path,
    agents: usize,
    per: usize,
    seconds: u64,
    toggles: usize,
) -> Result<()> {
    let dns = free_addr()?;
    let grpc = free_addr()?;
    let listen = free_addr()?;
    let mut domains =
        format!("  - {{name: {PROBE}, routing_algorithm: round-robin, regions: [r]}}\n");
    let mut tokens = format!("{PROBE}: \"{TOKEN}\"");
    for s in 0..SERVICES {
        domains.push_str(&format!(
            "  - {{name: s{s}.agents.bench.test, routing_algorithm: weighted, regions: [r]}}\n"
        ));
        tokens.push_str(&format!(", s{s}.agents.bench.test: \"{TOKEN}\""));
    }
    let config = format!(
        r#"
logging: {{level: warn, format: text}}
metrics: {{enabled: true, address: "{cpm}"}}
api: {{enabled: false}}
dns:
  listen_address: "{dns}"
  zones:
    - name: agents.bench.test
      soa: {{mname: ns1.agents.bench.test, rname: hostmaster.agents.bench.test}}
      ns: [ns1.agents.bench.test]
dataplane:
  workers: 1
  controlplanes: ["{grpc}"]
  cache_dir: cache
  metrics_address: null
regions:
  - name: r
    servers:
      - {{address: 192.0.2.1, port: 80}}
    health_check: {{type: none}}
domains:
{domains}overwatch:
  identity: {{node_id: agents-bench}}
  grpc_address: "{grpc}"
  agent_listen: "{listen}"
  data_dir: cp-data
  agent_tokens: {{{tokens}}}
  validation: {{enabled: false}}
  stale: {{threshold: 30s, remove_after: 5m}}
  dnssec:
    enabled: false
    security_acknowledgment: "I understand that answers will be unsigned and that resolvers cannot detect forged answers"
"#,
        cpm = free_addr()?,
    );
    let cfg = dir.join("gslb.yaml");
    write_private(&cfg, &config)?;
    let dp_json = dir.join("dataplane.json");
    dataplane_config(bins, &cfg, &dp_json)?;
    let mut children = Children::default();
    let cp_pid = children.push(start_controlplane(bins, &cfg, dir)?);
    children.push(start_dataplane(bins, &dp_json, dir)?);
    wait_tcp(listen, Duration::from_secs(30)).with_context(|| {
        format!(
            "the agent port never opened; cp.log:\n{}",
            log_text(&dir.join("cp.log"))
        )
    })?;
    let rss_idle = rss_kib(cp_pid);

    // The agents.
    let pins = Trust::Pin(Arc::new(PinStore::open(None)?));
    let registered = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let (toggle_tx, mut toggle_rx) = mpsc::channel::<HealthClaim>(1);
    let mut toggle_tx = Some(toggle_tx);
    let started = Instant::now();
    for i in 0..agents {
        let (pins, registered, sent) = (pins.clone(), registered.clone(), sent.clone());
        let control = if i == 0 {
            Some(std::mem::replace(&mut toggle_rx, mpsc::channel(1).1))
        } else {
            None
        };
        tokio::spawn(async move {
            if let Err(e) = agent(i, per, listen, pins, registered, sent, control).await {
                eprintln!("agent {i}: {e}");
            }
        });
        // Ramp up: about 200 connections per second.
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while registered.load(Ordering::Relaxed) < agents {
        if Instant::now() > deadline {
            bail!(
                "only {} of {agents} agents registered",
                registered.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{agents} agents × {per} backends registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Steady state: CPU and RSS.
    let (t0, c0, s0) = (
        Instant::now(),
        cpu_ticks(cp_pid)?,
        sent.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (t1, c1, s1) = (
        Instant::now(),
        cpu_ticks(cp_pid)?,
        sent.load(Ordering::Relaxed),
    );
    let secs = (t1 - t0).as_secs_f64();
    let cpu = 100.0 * (c1 - c0) as f64 / clock_ticks() / secs;
    println!(
        "controlplane: {:.1}% of one core over {secs:.0} s ({:.0} heartbeats/s received), RSS {} MiB (before agents: {} MiB)",
        cpu,
        (s1 - s0) as f64 / secs,
        rss_kib(cp_pid) / 1024,
        rss_idle / 1024,
    );

    // Change → answer.
    let toggle = toggle_tx.take().context("toggle channel")?;
    let probe_ip = match backend_addr(0, 0, per).ip() {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(_) => bail!("v4 expected"),
    };
    let mut downs = Vec::new();
    let mut ups = Vec::new();
    for k in 0..toggles * 2 {
        let (claim, want) = if k % 2 == 0 {
            (HealthClaim::Unhealthy, false)
        } else {
            (HealthClaim::Healthy, true)
        };
        let t = Instant::now();
        toggle.send(claim).await?;
        let deadline = t + Duration::from_secs(5);
        loop {
            if let Some(ips) = ask_a(dns, PROBE) {
                if ips.contains(&probe_ip) == want {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("answer never changed (toggle {k})");
            }
            tokio::task::yield_now().await;
        }
        let d = t.elapsed();
        if want {
            ups.push(d)
        } else {
            downs.push(d)
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report("state change → new answer (down)", &mut downs);
    report("state change → new answer (up)", &mut ups);
    drop(children);
    Ok(())
}

fn report(what: &str, v: &mut [Duration]) {
    if v.is_empty() {
        return;
    }
    v.sort();
    let p = |q: f64| quantile_ms(v, q);
    println!(
        "{what}: n={} p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        v.len(),
        p(0.5),
        p(0.9),
        p(1.0)
    );
}

/// One simulated agent: register, then a heartbeat every second (the full
/// state first, then empty ones); agent 0 also sends the claims it is told.
async fn agent(
    i: usize,
    per: usize,
    listen: SocketAddr,
    trust: Trust,
    registered: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    mut control: Option<mpsc::Receiver<HealthClaim>>,
) -> Result<()> {
    let id = Identity::ephemeral("bench-agent")?;
    let endpoint = listen.to_string();
    let cfg = tls::client_config(&id, &endpoint, &trust)?;
    let ch = tls::connect(&endpoint, cfg, Duration::from_secs(10)).await?;
    let mut c = AgentServiceClient::new(ch);
    let backends: Vec<BackendRef> = (0..per)
        .map(|j| {
            let a = backend_addr(i, j, per);
            BackendRef {
                service: service_of(i, j),
                address: a.ip().to_string(),
                port: u32::from(a.port()),
                weight: 100,
                check: None,
            }
        })
        .collect();
    let reg = c
        .register(RegisterRequest {
            agent_id: format!("bench-{i}"),
            region: "r".into(),
            service_token: TOKEN.into(),
            backends,
            heartbeat_interval_ms: 1000,
            missed_threshold: 3,
        })
        .await?
        .into_inner();
    let (tx, rx) = mpsc::channel(4);
    let state = |j: usize, claim: HealthClaim| {
        let a = backend_addr(i, j, per);
        BackendHealth {
            service: service_of(i, j),
            address: a.ip().to_string(),
            port: u32::from(a.port()),
            claim: claim.into(),
            weight_permille: 1000,
            latency_us: 0,
            reason: String::new(),
        }
    };
    let mut seq = 1;
    tx.send(HeartbeatRequest {
        session: reg.session,
        sequence: seq,
        backends: (0..per).map(|j| state(j, HealthClaim::Healthy)).collect(),
        full: true,
    })
    .await?;
    let mut inbound = c
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    registered.fetch_add(1, Ordering::Relaxed);
    sent.fetch_add(1, Ordering::Relaxed);
    // Jittered phase so the agents do not beat together.
    let phase = Duration::from_millis((i as u64 * 7919) % 1000);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_secs(1));
    loop {
        let backends = match &mut control {
            Some(rx) => tokio::select! {
                _ = tick.tick() => Vec::new(),
                c = rx.recv() => match c {
                    Some(claim) => vec![state(0, claim)],
                    None => return Ok(()),
                },
            },
            None => {
                tick.tick().await;
                Vec::new()
            }
        };
        seq += 1;
        if tx
            .send(HeartbeatRequest {
                session: reg.session,
                sequence: seq,
                backends,
                full: false,
            })
            .await
            .is_err()
        {
            bail!("heartbeat stream closed");
        }
        sent.fetch_add(1, Ordering::Relaxed);
    }
}
