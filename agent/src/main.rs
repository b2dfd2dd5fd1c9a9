//! `opengslb-agent`: runs beside application servers, checks their backends
//! with the same health checks as the controlplane and reports them to every
//! configured controlplane over authenticated gRPC (see `docs/agent.md`).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use clap::Parser;
use opengslb_controlplane::{
    config::{self, Config, LogFormat, LogLevel},
    overwatch::tls::{self, Identity, PinStore, Trust},
};
use tokio::sync::watch;

mod agent;
mod error_endpoint;
mod metrics;
mod predictive;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// OpenGSLB agent.
#[derive(Debug, Parser)]
#[command(name = "opengslb-agent", version, about)]
struct Args {
    /// Agent config file (YAML with an `agent:` section).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Validate the config file and exit.
    #[arg(long)]
    validate: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(agent) = &cfg.agent else {
        eprintln!(
            "{}: no `agent:` section; see docs/agent.md",
            args.config.display()
        );
        return ExitCode::from(2);
    };
    let mut problems = Vec::new();
    if agent.controlplanes.is_empty() {
        problems.push("agent.controlplanes: at least one `host:port` is required".to_owned());
    }
    for (i, cp) in agent.controlplanes.iter().enumerate() {
        if !valid_endpoint(cp) {
            problems.push(format!(
                "agent.controlplanes[{i}]: {cp:?} is not `host:port`"
            ));
        }
    }
    if agent.backends.is_empty() {
        problems.push("agent.backends: at least one backend is required".to_owned());
    }
    if !problems.is_empty() {
        for p in problems {
            eprintln!("{}: {p}", args.config.display());
        }
        return ExitCode::from(2);
    }
    if args.validate {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    init_logging(cfg.logging.level, cfg.logging.format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opengslb-agent: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args.config, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            eprintln!("opengslb-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn valid_endpoint(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// The default identity file `name` next to the config file.
fn beside(config_path: &Path, name: &str) -> PathBuf {
    config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from(name), |d| d.join(name))
}

async fn run(config_path: &Path, cfg: Config) -> Result<(), String> {
    let Some(acfg) = cfg.agent.clone() else {
        return Err("no agent section".into());
    };
    let cert_path = acfg
        .identity
        .cert_path
        .clone()
        .unwrap_or_else(|| beside(config_path, "agent.crt"));
    let key_path = acfg
        .identity
        .key_path
        .clone()
        .unwrap_or_else(|| beside(config_path, "agent.key"));
    let (identity, created) = Identity::load_or_create(&cert_path, &key_path, "opengslb-agent")
        .map_err(|e| format!("agent identity: {e}"))?;
    let agent_id = agent_id(&key_path)?;
    if created {
        tracing::info!(agent_id, cert = %cert_path.display(), fingerprint = %identity.fingerprint(), "agent identity created");
    }
    let previous = Identity::load(&agent::previous_path(&cert_path), &key_path).ok();
    let identities = Arc::new(Mutex::new(agent::Identities {
        current: identity,
        previous,
    }));
    let trust = match &acfg.identity.controlplane_ca {
        Some(ca) => Trust::Roots(Arc::new(tls::roots_from(ca).map_err(|e| e.to_string())?)),
        None => {
            let pins = cert_path.with_file_name("controlplanes.pins");
            Trust::Pin(Arc::new(
                PinStore::open(Some(pins)).map_err(|e| format!("controlplane pins: {e}"))?,
            ))
        }
    };

    let metrics = metrics::AgentMetrics::new().map_err(|e| e.to_string())?;
    if cfg.metrics.enabled {
        let l = metrics::bind(cfg.metrics.address)
            .await
            .map_err(|e| format!("metrics listener {}: {e}", cfg.metrics.address))?;
        tracing::info!(addr = %cfg.metrics.address, "metrics listening");
        tokio::spawn(metrics::serve(l, metrics.clone()));
    }
    let shared = agent::Shared::new(&acfg, metrics);
    let _prober = agent::start_checks(&shared).map_err(|e| e.to_string())?;
    if acfg.predictive.enabled {
        tokio::spawn(agent::predictive_loop(
            shared.clone(),
            acfg.predictive.clone(),
        ));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut links = Vec::new();
    for endpoint in &acfg.controlplanes {
        let settings = agent::LinkSettings {
            endpoint: endpoint.clone(),
            trust: trust.clone(),
            agent_id: agent_id.clone(),
            region: acfg.identity.region.clone().unwrap_or_default(),
            token: acfg.identity.service_token.clone(),
            interval: acfg.heartbeat.interval.get(),
            missed_threshold: acfg.heartbeat.missed_threshold,
            cert_path: cert_path.clone(),
            key_path: key_path.clone(),
        };
        links.push(tokio::spawn(agent::link(
            settings,
            shared.clone(),
            identities.clone(),
            stop_rx.clone(),
        )));
    }
    tracing::info!(
        agent_id,
        backends = shared.backends.len(),
        controlplanes = links.len(),
        "agent running"
    );
    wait_for_stop().await;
    tracing::info!("stopping: deregistering from every controlplane");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), futures::future::join_all(links)).await;
    tracing::info!("agent stopped");
    Ok(())
}

/// `agent-` and 16 hex digits of the SHA-256 of the public key: stable
/// across certificate rotations (they keep the key).
fn agent_id(key_path: &Path) -> Result<String, String> {
    let pem =
        std::fs::read_to_string(key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let d = ring::digest::digest(&ring::digest::SHA256, key.public_key_pem().as_bytes());
    Ok(format!(
        "agent-{}",
        d.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_logging(level: LogLevel, format: LogFormat) {
    let name = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPENGSLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(name));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
