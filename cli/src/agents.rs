//! `opengslb agents list|revoke`: agents pinned by the controlplane, and
//! cutting one off, from gRPC `AdminService.ListAgents` and `RevokeAgent`.

use anyhow::Result;
use clap::Subcommand;
use opengslb_proto::{
    admin_service_client::AdminServiceClient, ListAgentsRequest, RevokeAgentRequest,
};
use serde_json::json;
use tonic::{transport::Channel, Request};

use crate::output::{print_table, Output};

/// `opengslb agents …`.
#[derive(Debug, Subcommand)]
pub(crate) enum AgentsCmd {
    /// Every pinned agent: certificate, services, connection state.
    List,
    /// Cut AGENT_ID off at once: refused from now on, its backends leave the
    /// answers.
    Revoke {
        /// The agent id (see `agents list`).
        agent_id: String,
    },
}

/// Runs `cmd`; `token` authorizes a revocation.
pub(crate) async fn run(
    client: &mut AdminServiceClient<Channel>,
    cmd: AgentsCmd,
    token: Option<&str>,
    out: Output,
) -> Result<()> {
    match cmd {
        AgentsCmd::List => {
            let r = client
                .list_agents(ListAgentsRequest {})
                .await
                .map_err(super::admin::rpc)?
                .into_inner();
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"agents": r.agents.iter().map(|a| json!({
                        "agent_id": a.agent_id, "region": a.region, "fingerprint": a.fingerprint,
                        "services": a.services, "revoked": a.revoked, "connected": a.connected,
                        "stale": a.stale,
                        "heartbeat_age_seconds": (a.heartbeat_age_seconds >= 0.0).then_some(a.heartbeat_age_seconds),
                        "backends": a.backends, "pinned_at": a.pinned_at,
                    })).collect::<Vec<_>>()})
                ),
                Output::Table => print_table(
                    &[
                        "AGENT",
                        "REGION",
                        "STATE",
                        "BACKENDS",
                        "SERVICES",
                        "FINGERPRINT",
                    ],
                    &r.agents
                        .iter()
                        .map(|a| {
                            let state = if a.revoked {
                                "revoked"
                            } else if a.stale {
                                "stale"
                            } else if a.connected {
                                "connected"
                            } else {
                                "disconnected"
                            };
                            vec![
                                a.agent_id.clone(),
                                a.region.clone(),
                                state.to_owned(),
                                a.backends.to_string(),
                                a.services.join(","),
                                a.fingerprint.chars().take(16).collect(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        AgentsCmd::Revoke { agent_id } => {
            let Some(token) = token else {
                anyhow::bail!(
                    "this change needs a token: pass --token-file FILE (or set OPENGSLB_TOKEN_FILE)"
                );
            };
            let mut req = Request::new(RevokeAgentRequest {
                agent_id: agent_id.clone(),
            });
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot carry"))?;
            req.metadata_mut().insert("authorization", value);
            let r = client
                .revoke_agent(req)
                .await
                .map_err(super::admin::rpc)?
                .into_inner();
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"agent_id": agent_id, "revoked": r.revoked, "generation": r.generation})
                ),
                Output::Table => println!("agent {agent_id} revoked (generation {})", r.generation),
            }
        }
    }
    Ok(())
}
