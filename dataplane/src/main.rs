//! `opengslb-dataplane`: the authoritative DNS server process.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use opengslb_dataplane::settings::DataplaneSettings;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// OpenGSLB dataplane: answers DNS from the controlplane's snapshot stream.
#[derive(Debug, Parser)]
#[command(name = "opengslb-dataplane", version, about)]
struct Args {
    /// JSON bootstrap file (render it with `opengslb-controlplane --config gslb.yaml dataplane-config`).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address for UDP and TCP (repeatable; replaces the file's list).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Controlplane snapshot endpoint, host:port (repeatable; replaces the file's list).
    #[arg(long, value_name = "HOST:PORT")]
    controlplane: Vec<String>,
    /// Directory for the last good snapshot.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// UDP workers per listen address (0 = one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Prometheus endpoint address.
    #[arg(long, value_name = "ADDR")]
    metrics_address: Option<SocketAddr>,
    /// Node id reported to controlplanes.
    #[arg(long)]
    node_id: Option<String>,
    /// Log level: debug, info, warn, error.
    #[arg(long)]
    log_level: Option<String>,
    /// Log format: json or text.
    #[arg(long)]
    log_format: Option<String>,
}

fn main() -> ExitCode {
    opengslb_dataplane::memory::configure();
    let args = Args::parse();
    let mut settings = match &args.config {
        Some(path) => match DataplaneSettings::load(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("opengslb-dataplane: {e}");
                return ExitCode::from(2);
            }
        },
        None => DataplaneSettings::default(),
    };
    if !args.listen.is_empty() {
        settings.listen_addresses = args.listen;
    }
    if !args.controlplane.is_empty() {
        settings.controlplanes = args.controlplane;
    }
    if let Some(d) = args.cache_dir {
        settings.cache_dir = d;
    }
    if let Some(w) = args.workers {
        settings.workers = w;
    }
    if let Some(m) = args.metrics_address {
        settings.metrics_address = Some(m);
    }
    if let Some(n) = args.node_id {
        settings.node_id = n;
    }
    if let Some(l) = args.log_level {
        settings.logging.level = l;
    }
    if let Some(f) = args.log_format {
        settings.logging.format = f;
    }
    let source = args.config.unwrap_or_else(|| PathBuf::from("<flags>"));
    if let Err(e) = settings.validate(&source) {
        eprintln!("opengslb-dataplane: {e}");
        return ExitCode::from(2);
    }
    init_logging(&settings.logging.level, &settings.logging.format);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dp-control")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opengslb-dataplane: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(opengslb_dataplane::server::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dataplane failed");
            eprintln!("opengslb-dataplane: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPENGSLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
