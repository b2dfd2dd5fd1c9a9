//! The operator commands: a gRPC `AdminService` client (status, servers,
//! overrides, geo, config validation, reload, watch). Tables by default,
//! JSON with `--output json` (or `--json`); a failed call prints the
//! server's reason and exits non-zero.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use opengslb_proto::{
    admin_service_client::AdminServiceClient, AddGeoMappingRequest, DeleteOverrideRequest,
    GeoLookupRequest, GeoMapping, GetStatusRequest, ListGeoMappingsRequest, ListOverridesRequest,
    ListServersRequest, Override, ReloadConfigRequest, RemoveGeoMappingRequest, Server,
    SetOverrideRequest, ValidateConfigRequest, WatchHealthRequest,
};
use serde_json::{json, Value};
use tonic::{transport::Channel, Request};

use crate::output::{print_table, Output};

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub(crate) struct Connection {
    /// Admin gRPC address (host:port); default: the config's
    /// overwatch.grpc_address, else 127.0.0.1:9443.
    #[arg(long, global = true, env = "OPENGSLB_API", value_name = "ADDR")]
    pub(crate) api: Option<String>,
    /// File holding the bearer token for changes (`TOKEN` or `NAME:TOKEN`).
    #[arg(long, global = true, env = "OPENGSLB_TOKEN_FILE", value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub(crate) output: Output,
    /// Same as `--output json`.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// `opengslb overrides …`.
#[derive(Debug, Subcommand)]
pub(crate) enum OverridesCmd {
    /// List every override in force.
    List,
    /// Force the health of SERVICE's server ADDRESS (IP or IP:port).
    Set {
        /// Domain name.
        service: String,
        /// IP address, or IP:port.
        address: String,
        /// Force healthy (default: force unhealthy).
        #[arg(long, conflicts_with = "unhealthy")]
        healthy: bool,
        /// Force unhealthy (the default).
        #[arg(long)]
        unhealthy: bool,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        /// Who or what sets it.
        #[arg(long, default_value = "cli")]
        source: String,
    },
    /// Clear an override.
    #[command(alias = "clear")]
    Delete {
        /// Domain name.
        service: String,
        /// IP address, or IP:port, as set.
        address: String,
    },
}

/// `opengslb geo …`.
#[derive(Debug, Subcommand)]
pub(crate) enum GeoCmd {
    /// The region the controlplane picks for IP.
    Test {
        /// Client address.
        ip: String,
    },
    /// List runtime and config mappings.
    Mappings,
    /// Map CIDR to REGION (runtime, kept in the store).
    Add {
        /// Network.
        cidr: String,
        /// Region.
        region: String,
        /// Free text.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Remove a runtime mapping.
    Remove {
        /// Network.
        cidr: String,
    },
}

/// `opengslb config …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCmd {
    /// Validate FILE (default: locally, with the controlplane's own
    /// validation; `--remote`: by the running controlplane, no includes).
    Validate {
        /// Config file.
        file: PathBuf,
        /// Ask the running controlplane.
        #[arg(long)]
        remote: bool,
    },
}

/// An admin command, ready to run.
#[derive(Debug)]
pub(crate) enum Command {
    /// `status`.
    Status,
    /// `servers`.
    Servers {
        /// Domain name.
        service: Option<String>,
        /// Region.
        region: Option<String>,
        /// healthy | unhealthy.
        status: Option<String>,
    },
    /// `overrides …`.
    Overrides(OverridesCmd),
    /// `geo …`.
    Geo(GeoCmd),
    /// `config validate --remote`.
    ValidateRemote(PathBuf),
    /// `reload`.
    Reload,
    /// `watch`.
    Watch {
        /// Domain name.
        service: Option<String>,
    },
    /// `dnssec …`.
    Dnssec(crate::dnssec::DnssecCmd),
    /// `agents …`.
    Agents(crate::agents::AgentsCmd),
}

// === impl Connection ===

impl Connection {
    fn output(&self) -> Output {
        if self.json {
            Output::Json
        } else {
            self.output
        }
    }

    /// The address: `--api`/`OPENGSLB_API`, the config's
    /// `overwatch.grpc_address`, or 127.0.0.1:9443.
    fn address(&self, config: Option<&Path>) -> String {
        if let Some(a) = &self.api {
            return a.clone();
        }
        config
            .and_then(grpc_address_of)
            .unwrap_or_else(|| "127.0.0.1:9443".to_owned())
    }

    fn token(&self) -> Result<Option<String>> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .with_context(|| format!("{} holds no token", path.display()))?;
        let token = line.split_once(':').map_or(line, |(_, t)| t.trim());
        Ok(Some(token.to_owned()))
    }
}

/// `overwatch.grpc_address` of the config at `path`; a wildcard host is
/// reached on loopback.
fn grpc_address_of(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    let addr: SocketAddr = doc
        .get("overwatch")?
        .get("grpc_address")?
        .as_str()?
        .parse()
        .ok()?;
    let addr = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    Some(addr.to_string())
}

/// Runs `cmd` against the controlplane.
pub(crate) fn run(cmd: Command, conn: &Connection, config: Option<&Path>) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cmd, conn, config))
}

async fn run_async(cmd: Command, conn: &Connection, config: Option<&Path>) -> Result<ExitCode> {
    let addr = conn.address(config);
    let out = conn.output();
    let mut client = connect(&addr).await?;
    let token = conn.token()?;
    let token = token.as_deref();
    match cmd {
        Command::Dnssec(c) => crate::dnssec::run(&mut client, c, token, out).await?,
        Command::Agents(c) => crate::agents::run(&mut client, c, token, out).await?,
        Command::Status => {
            let s = client
                .get_status(GetStatusRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            let v = json!({
                "node_id": s.node_id, "version": s.version, "ready": s.ready,
                "generation": s.generation, "subscribers": s.subscribers,
                "uptime_seconds": s.uptime_seconds, "servers_total": s.servers_total,
                "servers_healthy": s.servers_healthy, "overrides_active": s.overrides_active,
                "config_path": s.config_path, "api": addr,
            });
            emit_pairs(out, &v);
        }
        Command::Servers {
            service,
            region,
            status,
        } => {
            let r = client
                .list_servers(ListServersRequest {
                    service: service.unwrap_or_default(),
                    region: region.unwrap_or_default(),
                    status: status.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            emit_servers(out, &r.servers);
        }
        Command::Overrides(OverridesCmd::List) => {
            let r = client
                .list_overrides(ListOverridesRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            emit_overrides(out, &r.overrides);
        }
        Command::Overrides(OverridesCmd::Set {
            service,
            address,
            healthy,
            unhealthy: _,
            reason,
            source,
        }) => {
            let o = client
                .set_override(authorized(
                    token,
                    SetOverrideRequest {
                        r#override: Some(Override {
                            service,
                            address,
                            healthy,
                            reason,
                            source,
                            created_unix: 0,
                        }),
                    },
                )?)
                .await
                .map_err(rpc)?
                .into_inner();
            emit_overrides(out, std::slice::from_ref(&o));
        }
        Command::Overrides(OverridesCmd::Delete { service, address }) => {
            client
                .delete_override(authorized(
                    token,
                    DeleteOverrideRequest {
                        service: service.clone(),
                        address: address.clone(),
                    },
                )?)
                .await
                .map_err(rpc)?;
            emit_pairs(
                out,
                &json!({"deleted": true, "service": service, "address": address}),
            );
        }
        Command::Geo(GeoCmd::Test { ip }) => {
            let r = client
                .geo_lookup(GeoLookupRequest { ip })
                .await
                .map_err(rpc)?
                .into_inner();
            emit_pairs(
                out,
                &json!({"ip": r.ip, "region": r.region, "source": r.source}),
            );
        }
        Command::Geo(GeoCmd::Mappings) => {
            let r = client
                .list_geo_mappings(ListGeoMappingsRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            emit_mappings(out, &r.mappings);
        }
        Command::Geo(GeoCmd::Add {
            cidr,
            region,
            comment,
        }) => {
            let m = client
                .add_geo_mapping(authorized(
                    token,
                    AddGeoMappingRequest {
                        mapping: Some(GeoMapping {
                            cidr,
                            region,
                            comment,
                            source: String::new(),
                            created_unix: 0,
                        }),
                    },
                )?)
                .await
                .map_err(rpc)?
                .into_inner();
            emit_mappings(out, std::slice::from_ref(&m));
        }
        Command::Geo(GeoCmd::Remove { cidr }) => {
            client
                .remove_geo_mapping(authorized(
                    token,
                    RemoveGeoMappingRequest { cidr: cidr.clone() },
                )?)
                .await
                .map_err(rpc)?;
            emit_pairs(out, &json!({"deleted": true, "cidr": cidr}));
        }
        Command::ValidateRemote(file) => {
            let yaml = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let r = client
                .validate_config(authorized(token, ValidateConfigRequest { yaml })?)
                .await
                .map_err(rpc)?
                .into_inner();
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"file": file.display().to_string(), "valid": r.valid, "errors": r.errors})
                ),
                Output::Table if r.valid => println!("{}: ok", file.display()),
                Output::Table => {
                    for e in &r.errors {
                        eprintln!("{e}");
                    }
                }
            }
            if !r.valid {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Reload => {
            let r = client
                .reload_config(authorized(token, ReloadConfigRequest {})?)
                .await
                .map_err(rpc)?
                .into_inner();
            emit_pairs(
                out,
                &json!({"reloaded": r.reloaded, "generation": r.generation, "message": r.message}),
            );
        }
        Command::Watch { service } => {
            let mut stream = client
                .watch_health(WatchHealthRequest {
                    service: service.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            while let Some(ev) = stream.message().await.map_err(rpc)? {
                let Some(s) = ev.server else { continue };
                match out {
                    Output::Json => println!(
                        "{}",
                        json!({"at_unix_ms": ev.at_unix_ms, "server": server_json(&s)})
                    ),
                    Output::Table => println!(
                        "{} {} {}:{} {} ({}{})",
                        ev.at_unix_ms,
                        s.service,
                        s.address,
                        s.port,
                        if s.healthy { "healthy" } else { "unhealthy" },
                        s.source,
                        if s.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", s.reason)
                        }
                    ),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect(addr: &str) -> Result<AdminServiceClient<Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("invalid --api address {addr:?}"))?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel = endpoint.connect().await.with_context(|| {
        format!("cannot reach the controlplane admin API at {addr} (set --api or OPENGSLB_API)")
    })?;
    Ok(AdminServiceClient::new(channel))
}

/// A request carrying the bearer token.
fn authorized<T>(token: Option<&str>, msg: T) -> Result<Request<T>> {
    let mut req = Request::new(msg);
    let Some(token) = token else {
        bail!("this change needs a token: pass --token-file FILE (or set OPENGSLB_TOKEN_FILE)");
    };
    let value = format!("Bearer {token}")
        .parse()
        .context("the token holds characters not allowed in a header")?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

pub(crate) fn rpc(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

fn server_json(s: &Server) -> Value {
    json!({
        "service": s.service, "address": s.address, "port": s.port, "region": s.region,
        "weight": s.weight, "healthy": s.healthy, "source": s.source, "reason": s.reason,
    })
}

fn emit_pairs(out: Output, v: &Value) {
    match out {
        Output::Json => println!("{v}"),
        Output::Table => {
            let rows: Vec<Vec<String>> = v
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            vec![
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print_table(&[], &rows);
        }
    }
}

fn emit_servers(out: Output, servers: &[Server]) {
    match out {
        Output::Json => println!(
            "{}",
            json!({"servers": servers.iter().map(server_json).collect::<Vec<_>>()})
        ),
        Output::Table => print_table(
            &[
                "SERVICE", "ADDRESS", "PORT", "REGION", "WEIGHT", "STATUS", "SOURCE", "REASON",
            ],
            &servers
                .iter()
                .map(|s| {
                    vec![
                        s.service.clone(),
                        s.address.clone(),
                        s.port.to_string(),
                        s.region.clone(),
                        s.weight.to_string(),
                        if s.healthy { "healthy" } else { "unhealthy" }.to_owned(),
                        s.source.clone(),
                        s.reason.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
}

fn emit_overrides(out: Output, overrides: &[Override]) {
    match out {
        Output::Json => println!(
            "{}",
            json!({"overrides": overrides.iter().map(|o| json!({
                "service": o.service, "address": o.address, "healthy": o.healthy,
                "reason": o.reason, "source": o.source, "created_unix": o.created_unix,
            })).collect::<Vec<_>>()})
        ),
        Output::Table => print_table(
            &["SERVICE", "ADDRESS", "HEALTHY", "SOURCE", "REASON"],
            &overrides
                .iter()
                .map(|o| {
                    vec![
                        o.service.clone(),
                        o.address.clone(),
                        o.healthy.to_string(),
                        o.source.clone(),
                        o.reason.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
}

fn emit_mappings(out: Output, mappings: &[GeoMapping]) {
    match out {
        Output::Json => println!(
            "{}",
            json!({"mappings": mappings.iter().map(|m| json!({
                "cidr": m.cidr, "region": m.region, "comment": m.comment, "source": m.source,
            })).collect::<Vec<_>>()})
        ),
        Output::Table => print_table(
            &["CIDR", "REGION", "SOURCE", "COMMENT"],
            &mappings
                .iter()
                .map(|m| {
                    vec![
                        m.cidr.clone(),
                        m.region.clone(),
                        m.source.clone(),
                        m.comment.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
}
