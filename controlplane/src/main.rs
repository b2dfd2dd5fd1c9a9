//! `opengslb-controlplane`: loads the config, compiles snapshots and streams
//! them to dataplanes.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use opengslb_controlplane::config::{self, Config, LogFormat, LogLevel};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// OpenGSLB controlplane.
#[derive(Debug, Parser)]
#[command(name = "opengslb-controlplane", version, about)]
struct Args {
    /// Config file (YAML).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        default_value = "/etc/opengslb/gslb.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the controlplane (the default).
    Run,
    /// Validate the config file and exit (errors name file:line:key).
    Validate,
    /// Print the dataplane's JSON bootstrap settings rendered from the
    /// config's `dns:`, `dataplane:` and `logging:` sections.
    DataplaneConfig,
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
    match args.command.unwrap_or(Cmd::Run) {
        Cmd::Validate => {
            println!("{}: ok", args.config.display());
            ExitCode::SUCCESS
        }
        Cmd::DataplaneConfig => {
            println!("{}", dataplane_settings(&cfg));
            ExitCode::SUCCESS
        }
        Cmd::Run => run(args.config, cfg),
    }
}

fn run(path: PathBuf, cfg: Config) -> ExitCode {
    init_logging(cfg.logging.level, cfg.logging.format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opengslb-controlplane: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(opengslb_controlplane::server::run(path, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "controlplane failed");
            eprintln!("opengslb-controlplane: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dataplane_settings(cfg: &Config) -> String {
    let dp = &cfg.dataplane;
    let level = level_name(cfg.logging.level);
    let format = match cfg.logging.format {
        LogFormat::Json => "json",
        LogFormat::Text => "text",
    };
    let settings = serde_json::json!({
        "listen_addresses": [cfg.dns.listen_address],
        "workers": dp.workers,
        "controlplanes": dp.controlplanes,
        "cache_dir": dp.cache_dir,
        "metrics_address": dp.metrics_address,
        "node_id": "",
        "tcp": {
            "idle_timeout_ms": dp.tcp.idle_timeout.get().as_millis() as u64,
            "io_timeout_ms": dp.tcp.io_timeout.get().as_millis() as u64,
            "max_connections": dp.tcp.max_connections,
            "max_connections_per_worker": dp.tcp.max_connections_per_worker,
            "max_output_bytes": dp.tcp.max_output_bytes,
            "one_shot_percent": dp.tcp.one_shot_percent,
        },
        "logging": {"level": level, "format": format},
        "rrl": {
            "enabled": dp.rrl.enabled,
            "responses_per_second": dp.rrl.responses_per_second,
            "ipv4_prefix": dp.rrl.ipv4_prefix,
            "ipv6_prefix": dp.rrl.ipv6_prefix,
            "slip": dp.rrl.slip,
            "window_secs": dp.rrl.window.get().as_secs(),
            "exempt": dp.rrl.exempt.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "log_interval_secs": dp.rrl.log_interval.get().as_secs(),
        },
        "cookies": {
            "enabled": dp.cookies.enabled,
            "secret_file": dp.cookies.secret_file,
            "rotate_secs": dp.cookies.rotate.get().as_secs().max(1),
        },
    });
    serde_json::to_string_pretty(&settings).unwrap_or_default()
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

fn init_logging(level: LogLevel, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPENGSLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level_name(level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
