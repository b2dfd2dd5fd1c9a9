//! `opengslb dnssec ds|status|rollover`: the zone's DS records (ready for
//! the registrar), the signing state and key rollovers, from gRPC
//! `AdminService.GetDs`, `GetDnssecStatus` and `DnssecRollover`.

use anyhow::Result;
use clap::Subcommand;
use opengslb_proto::{
    admin_service_client::AdminServiceClient, DnssecRollover, DnssecRolloverRequest,
    GetDnssecStatusRequest, GetDsRequest,
};
use serde_json::json;
use tonic::transport::Channel;

use crate::output::{print_table, Output};

/// `opengslb dnssec …`.
#[derive(Debug, Subcommand)]
pub(crate) enum DnssecCmd {
    /// DS records of ZONE to publish at the parent, one full line each.
    Ds {
        /// Zone apex (or `--zone ZONE`).
        #[arg(required_unless_present = "zone_flag", conflicts_with = "zone_flag")]
        zone: Option<String>,
        /// Zone apex.
        #[arg(long = "zone", value_name = "ZONE")]
        zone_flag: Option<String>,
    },
    /// Keys, tags, ages, signatures, next expiry, key sync and rollover state.
    Status,
    /// Starts a key rollover of ZONE (ZSK pre-publish with split keys, CSK
    /// double-signature otherwise), or shows (--status), confirms the new
    /// DS of (--ds-published) or cancels (--cancel) the one in progress.
    /// Every step prints the DS the parent should hold, and which DS to
    /// publish and withdraw.
    Rollover {
        /// Zone apex.
        #[arg(long, value_name = "ZONE")]
        zone: String,
        /// Key to roll: csk, ksk or zsk (default: the ZSK with split keys,
        /// else the CSK).
        #[arg(long, value_name = "ROLE", conflicts_with_all = ["status", "ds_published", "cancel"])]
        key: Option<String>,
        /// Show the rollover in progress (or the last one) and stop.
        #[arg(long, conflicts_with_all = ["ds_published", "cancel"])]
        status: bool,
        /// Confirm that the new DS is published at the parent (the old one
        /// withdrawn); the old key goes after the parent's DS TTL.
        #[arg(long, conflicts_with = "cancel")]
        ds_published: bool,
        /// Cancel the rollover in progress (only before the new key signs
        /// alone or the DS changed); the new key is removed.
        #[arg(long)]
        cancel: bool,
    },
}

/// Runs `cmd`; `token` authorizes a rollover change.
pub(crate) async fn run(
    client: &mut AdminServiceClient<Channel>,
    cmd: DnssecCmd,
    token: Option<&str>,
    out: Output,
) -> Result<()> {
    match cmd {
        DnssecCmd::Rollover {
            zone,
            key,
            status,
            ds_published,
            cancel,
        } => {
            let action = if status {
                "status"
            } else if ds_published {
                "ds-published"
            } else if cancel {
                "cancel"
            } else {
                "start"
            };
            let mut req = tonic::Request::new(DnssecRolloverRequest {
                zone: zone.clone(),
                action: action.to_owned(),
                key: key.unwrap_or_default(),
            });
            if action != "status" {
                let Some(token) = token else {
                    anyhow::bail!(
                        "this change needs a token: pass --token-file FILE (or set OPENGSLB_TOKEN_FILE)"
                    );
                };
                let value = format!("Bearer {token}").parse().map_err(|_| {
                    anyhow::anyhow!("the token holds characters a header cannot carry")
                })?;
                req.metadata_mut().insert("authorization", value);
            }
            let r = client
                .dnssec_rollover(req)
                .await
                .map_err(super::admin::rpc)?
                .into_inner();
            match (out, r.rollover) {
                (Output::Json, roll) => println!(
                    "{}",
                    json!({"zone": zone, "rollover": roll.as_ref().map(rollover_json)})
                ),
                (Output::Table, None) => println!("{zone}: no key rollover yet"),
                (Output::Table, Some(roll)) => print_rollover(&roll),
            }
        }
        DnssecCmd::Ds { zone, zone_flag } => {
            let zone = zone.or(zone_flag).unwrap_or_default();
            let r = client
                .get_ds(GetDsRequest { zone: zone.clone() })
                .await
                .map_err(super::admin::rpc)?
                .into_inner();
            match out {
                Output::Json => println!("{}", json!({"zone": zone, "ds": r.ds})),
                Output::Table => {
                    for line in &r.ds {
                        println!("{line}");
                    }
                }
            }
        }
        DnssecCmd::Status => {
            let s = client
                .get_dnssec_status(GetDnssecStatusRequest {})
                .await
                .map_err(super::admin::rpc)?
                .into_inner();
            let zones: Vec<serde_json::Value> = s
                .zones
                .iter()
                .map(|z| {
                    json!({
                        "zone": z.zone,
                        "rollover": z.rollover.as_ref().map(rollover_json),
                        "ds": z.ds,
                        "next_expiry_unix": z.next_expiry_unix,
                        "keys": z.keys.iter().map(|k| json!({
                            "key_tag": k.key_tag, "role": k.role, "algorithm": k.algorithm,
                            "flags": k.flags, "created_unix": k.created_unix,
                            "age_seconds": k.age_seconds,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            match out {
                Output::Json => println!(
                    "{}",
                    json!({
                        "enabled": s.enabled, "algorithm": s.algorithm,
                        "keys_encrypted_at_rest": s.keys_encrypted_at_rest,
                        "signatures": s.signatures, "signed_last_pass": s.signed_last_pass,
                        "last_signing_ms": s.last_signing_ms,
                        "next_expiry_unix": s.next_expiry_unix,
                        "key_sync": s.key_sync_state, "zones": zones,
                    })
                ),
                Output::Table => {
                    println!(
                        "enabled: {}  algorithm: {}  keys encrypted at rest: {}  signatures: {}  next expiry (unix): {}  key sync: {}",
                        s.enabled,
                        s.algorithm,
                        s.keys_encrypted_at_rest,
                        s.signatures,
                        s.next_expiry_unix,
                        s.key_sync_state
                    );
                    let rows: Vec<Vec<String>> = s
                        .zones
                        .iter()
                        .flat_map(|z| {
                            z.keys.iter().map(move |k| {
                                vec![
                                    z.zone.clone(),
                                    k.key_tag.to_string(),
                                    k.role.clone(),
                                    k.algorithm.to_string(),
                                    k.flags.to_string(),
                                    k.age_seconds.to_string(),
                                ]
                            })
                        })
                        .collect();
                    print_table(
                        &["ZONE", "KEY TAG", "ROLE", "ALG", "FLAGS", "AGE (s)"],
                        &rows,
                    );
                    for z in &s.zones {
                        for ds in &z.ds {
                            println!("{ds}");
                        }
                    }
                    for roll in s.zones.iter().filter_map(|z| z.rollover.as_ref()) {
                        if roll.in_progress {
                            print_rollover(roll);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn rollover_json(r: &DnssecRollover) -> serde_json::Value {
    json!({
        "zone": r.zone, "method": r.method, "role": r.role, "phase": r.phase,
        "in_progress": r.in_progress, "old_key_tag": r.old_key_tag,
        "new_key_tag": r.new_key_tag, "started_unix": r.started_unix,
        "phase_since_unix": r.phase_since_unix,
        "next_step_unix": (r.next_step_unix > 0).then_some(r.next_step_unix),
        "waiting_for_operator": r.waiting_for_operator, "next_step": r.next_step,
        "ds_at_parent": r.ds_at_parent, "ds_to_publish": r.ds_to_publish,
        "ds_to_withdraw": r.ds_to_withdraw,
        "new_ds": (!r.new_ds.is_empty()).then_some(&r.new_ds),
    })
}

fn print_rollover(r: &DnssecRollover) {
    println!(
        "rollover of {}: {} {} (key {} -> {}), phase {}{}",
        r.zone,
        r.role,
        r.method,
        r.old_key_tag,
        r.new_key_tag,
        r.phase,
        if r.next_step_unix > 0 {
            format!(", ends at {} (unix)", r.next_step_unix)
        } else if r.waiting_for_operator {
            ", waiting for the operator".to_owned()
        } else {
            String::new()
        }
    );
    println!("next: {}", r.next_step);
    for (label, lines) in [
        ("DS at the parent now", &r.ds_at_parent),
        ("DS to publish now", &r.ds_to_publish),
        ("DS to withdraw now", &r.ds_to_withdraw),
    ] {
        for line in lines {
            println!("{label}: {line}");
        }
    }
    if !r.new_ds.is_empty() && r.ds_to_publish.is_empty() && r.in_progress {
        println!("new DS (publish when told): {}", r.new_ds);
    }
}
