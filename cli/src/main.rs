//! `opengslb`: the operator's command-line tool.
//!
//! `opengslb up` runs a complete GSLB on this machine — a controlplane and a
//! dataplane as two child processes — and stops both when either dies or on
//! Ctrl-C. `opengslb validate` checks a config file. The operator commands
//! (`status`, `servers`, `overrides`, `geo`, `config`, `reload`, `watch`)
//! talk to a running controlplane's gRPC `AdminService` ([`admin`]).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod admin;
mod agents;
mod dnssec;
mod output;

/// OpenGSLB command-line tool.
#[derive(Debug, Parser)]
#[command(name = "opengslb", version, about)]
struct Args {
    /// Config file (YAML).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level for this tool: debug, info, warn, error.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(flatten)]
    conn: admin::Connection,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a controlplane and a dataplane on this machine (default config: examples/gslb.yaml).
    Up {
        /// Directory for the generated dataplane settings.
        #[arg(long, value_name = "DIR", default_value = ".opengslb")]
        state_dir: PathBuf,
    },
    /// Validate a config file; errors name file:line:key.
    Validate,
    /// The controlplane's identity, readiness and counters.
    Status,
    /// Every server of every service with its effective health.
    Servers {
        /// Only this service (domain name).
        #[arg(long)]
        service: Option<String>,
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
        /// Only `healthy`, `unhealthy` or `stale` servers.
        #[arg(long)]
        status: Option<String>,
    },
    /// Manual health overrides (they outrank every other signal).
    Overrides {
        #[command(subcommand)]
        command: admin::OverridesCmd,
    },
    /// Geolocation: test an address, list and change runtime mappings.
    Geo {
        #[command(subcommand)]
        command: admin::GeoCmd,
    },
    /// Config file tools.
    Config {
        #[command(subcommand)]
        command: admin::ConfigCmd,
    },
    /// Reload the controlplane's config file (validated first).
    Reload,
    /// DNSSEC: DS records for the registrar, signing and key status.
    Dnssec {
        #[command(subcommand)]
        command: dnssec::DnssecCmd,
    },
    /// Agents: list the pinned ones, revoke one.
    Agents {
        #[command(subcommand)]
        command: agents::AgentsCmd,
    },
    /// Stream health changes as they are published.
    Watch {
        /// Only this service (domain name).
        #[arg(long)]
        service: Option<String>,
    },
    /// Print the version.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_level))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let config = args.config.as_deref();
    let remote = |cmd| admin::run(cmd, &args.conn, config);
    let result = match args.command {
        Cmd::Up { state_dir } => up(&config_path(args.config.clone()), &state_dir),
        Cmd::Validate => validate(&config_path(args.config.clone())),
        Cmd::Config {
            command:
                admin::ConfigCmd::Validate {
                    file,
                    remote: false,
                },
        } => validate(&file),
        Cmd::Config {
            command: admin::ConfigCmd::Validate { file, remote: true },
        } => remote(admin::Command::ValidateRemote(file)),
        Cmd::Status => remote(admin::Command::Status),
        Cmd::Servers {
            service,
            region,
            status,
        } => remote(admin::Command::Servers {
            service,
            region,
            status,
        }),
        Cmd::Overrides { command } => remote(admin::Command::Overrides(command)),
        Cmd::Geo { command } => remote(admin::Command::Geo(command)),
        Cmd::Reload => remote(admin::Command::Reload),
        Cmd::Watch { service } => remote(admin::Command::Watch { service }),
        Cmd::Dnssec { command } => remote(admin::Command::Dnssec(command)),
        Cmd::Agents { command } => remote(admin::Command::Agents(command)),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            // Into a buffer first: the generator panics on a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Args::command(), "opengslb", &mut script);
            match std::io::stdout().write_all(&script) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
                Err(e) => Err(e).context("writing the completion script"),
            }
        }
        Cmd::Version => {
            println!("opengslb {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("opengslb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_path(config: Option<PathBuf>) -> PathBuf {
    config.unwrap_or_else(|| PathBuf::from("examples/gslb.yaml"))
}

/// Finds a sibling binary (same directory as this one), building the
/// workspace's binaries first when run through `cargo run` and missing.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the opengslb binary")?;
    let dir = exe.parent().context("binary has no directory")?;
    let path = dir.join(name);
    // Under `cargo run` (CARGO is set), bring the sibling binaries up to date
    // once per process, so a changed tree never runs stale ones.
    static BUILT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // The workspace this binary was built from (absent on other machines).
    let manifest = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"));
    if let (Ok(cargo), true) = (std::env::var("CARGO"), manifest.exists()) {
        let ok = *BUILT.get_or_init(|| {
            let mut cmd = Command::new(cargo);
            cmd.arg("build").arg("--manifest-path").arg(manifest);
            cmd.args([
                "-q",
                "-p",
                "opengslb-controlplane",
                "-p",
                "opengslb-dataplane",
            ]);
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            tracing::info!("building the controlplane and dataplane binaries");
            cmd.status().is_ok_and(|s| s.success())
        });
        if !ok {
            bail!("cargo build of the controlplane and dataplane failed");
        }
    }
    if !path.exists() {
        bail!(
            "{} not found next to opengslb; build the workspace first (cargo build --workspace)",
            path.display()
        );
    }
    Ok(path)
}

fn validate(config: &Path) -> Result<ExitCode> {
    let cp = sibling("opengslb-controlplane")?;
    let status = Command::new(cp)
        .arg("--config")
        .arg(config)
        .arg("validate")
        .status()
        .context("running opengslb-controlplane")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `opengslb up` is the quickstart: a config of ours that other users may
/// read (a fresh checkout's `examples/gslb.yaml` is 0644) loses the "other"
/// permission bits, since the controlplane refuses such a file. A file owned
/// by someone else is left alone (the controlplane then says why it stops).
fn restrict_config(config: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::metadata(config) else {
        return Ok(()); // the controlplane reports a missing file
    };
    let mode = meta.permissions().mode();
    if mode & 0o007 == 0 || meta.uid() != effective_uid() {
        return Ok(());
    }
    let restricted = mode & 0o7770;
    std::fs::set_permissions(config, std::fs::Permissions::from_mode(restricted))
        .with_context(|| format!("restricting the permissions of {}", config.display()))?;
    tracing::warn!(
        config = %config.display(),
        from = format!("{:04o}", mode & 0o7777),
        to = format!("{:04o}", restricted & 0o7777),
        "config file was readable by other users; removed their access (the controlplane refuses such a file)"
    );
    Ok(())
}

#[allow(unsafe_code)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn up(config: &Path, state_dir: &Path) -> Result<ExitCode> {
    restrict_config(config)?;
    let cp_bin = sibling("opengslb-controlplane")?;
    let dp_bin = sibling("opengslb-dataplane")?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;

    // The dataplane never reads YAML: the controlplane renders its settings.
    let dp_settings = state_dir.join("dataplane.json");
    let out = Command::new(&cp_bin)
        .arg("--config")
        .arg(config)
        .arg("dataplane-config")
        .output()
        .context("running opengslb-controlplane dataplane-config")?;
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        return Ok(ExitCode::from(2));
    }
    std::fs::write(&dp_settings, &out.stdout)
        .with_context(|| format!("writing {}", dp_settings.display()))?;

    let mut cp = Command::new(&cp_bin)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .spawn()
        .context("starting opengslb-controlplane")?;
    let mut dp = match Command::new(&dp_bin)
        .arg("--config")
        .arg(&dp_settings)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            stop(&mut cp);
            return Err(e).context("starting opengslb-dataplane");
        }
    };
    tracing::info!(
        controlplane = cp.id(),
        dataplane = dp.id(),
        config = %config.display(),
        "GSLB up; Ctrl-C stops both"
    );

    let signals = install_signal_flag();
    let code = loop {
        if signals.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!("stopping");
            break ExitCode::SUCCESS;
        }
        if let Ok(Some(status)) = cp.try_wait() {
            tracing::error!(%status, "controlplane exited; stopping the dataplane");
            break ExitCode::FAILURE;
        }
        if let Ok(Some(status)) = dp.try_wait() {
            tracing::error!(%status, "dataplane exited; stopping the controlplane");
            break ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop(&mut dp);
    stop(&mut cp);
    Ok(code)
}

/// SIGTERM, then SIGKILL after 5 s.
fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        send_signal(pid, libc::SIGTERM);
    }
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[allow(unsafe_code)]
fn send_signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) with a pid of our own child and a valid signal number
    // has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

fn install_signal_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(rt) = rt {
        std::thread::spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                f.store(true, std::sync::atomic::Ordering::Relaxed);
            });
        });
    }
    flag
}
