//! `opengslb dnssec ds|status`: the zone's DS records (ready for the
//! registrar) and the signing state, from gRPC `AdminService.GetDs` and
//! `GetDnssecStatus`.

use anyhow::Result;
use clap::Subcommand;
use opengslb_proto::{
    admin_service_client::AdminServiceClient, GetDnssecStatusRequest, GetDsRequest,
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
    /// Keys, tags, ages, signatures, next expiry and key sync state.
    Status,
}

/// Runs `cmd`.
pub(crate) async fn run(
    client: &mut AdminServiceClient<Channel>,
    cmd: DnssecCmd,
    out: Output,
) -> Result<()> {
    match cmd {
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
                }
            }
        }
    }
    Ok(())
}
