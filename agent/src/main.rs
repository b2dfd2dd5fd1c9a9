//! `opengslb-agent`: runs beside application servers and reports the health
//! of their backends to the controlplanes. Not built yet: this binary only
//! says so, with exit code 2, until the agent lands.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

/// OpenGSLB agent (not built yet).
#[derive(Debug, Parser)]
#[command(name = "opengslb-agent", version, about)]
struct Args {
    /// Agent config file (YAML, `agent:` section).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!(
        "opengslb-agent {}: the agent is not built yet; backends are checked by the controlplane",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
