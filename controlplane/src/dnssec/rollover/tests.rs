//! The rollover state machine: timings from TTLs, phase order, what the
//! operator may do when, which keys publish and sign at every phase (in
//! real signed snapshots), and that the state survives a restart.

use std::path::Path;
use std::time::{Duration, SystemTime};

use opengslb_proto::{RRset, Snapshot};

use super::*;
use crate::compile::{AllHealthy, Compiler};
use crate::config::{self, Duration as CfgDuration};

const CONFIG: &str = "\
dns:
  default_ttl: 60
  zones:
    - name: example.com
      soa: {mname: ns1.example.com, rname: hostmaster.example.com, minimum: 30, ttl: 600}
      ns: [ns1.example.com]
      records:
        - {name: txt.example.com, type: TXT, value: \"hi\", ttl: 900}
regions:
  - name: p
    servers:
      - {address: 192.0.2.1}
    health_check: {type: none}
domains:
  - {name: rr.example.com, routing_algorithm: round-robin, regions: [p], ttl: 30}
";

fn rollover_cfg(delay: u64, ds_ttl: u64) -> RolloverConfig {
    RolloverConfig {
        propagation_delay: CfgDuration::from_secs(delay),
        parent_ds_ttl: CfgDuration::from_secs(ds_ttl),
    }
}

#[test]
fn timings_follow_the_ttls_plus_the_delay() {
    let t = Timings::new(3600, 300, &rollover_cfg(60, 86_400));
    // The DNSKEY RRset is signed data too: max_ttl is at least its TTL.
    assert_eq!(t.max_ttl, 3600);
    let t = Timings::new(600, 900, &rollover_cfg(60, 86_400));
    assert_eq!(t.wait(Method::PrePublish, Phase::Publish), Some(660));
    assert_eq!(t.wait(Method::PrePublish, Phase::Sign), Some(960));
    assert_eq!(t.wait(Method::DoubleSignature, Phase::Publish), Some(960));
    assert_eq!(t.wait(Method::DoubleSignature, Phase::Ds), None);
    assert_eq!(t.wait(Method::DoubleSignature, Phase::Retire), Some(86_460));
    assert_eq!(t.wait(Method::DoubleSignature, Phase::Done), None);
    let d = RolloverConfig::default();
    assert_eq!(d.propagation_delay.get(), Duration::from_secs(3600));
    assert_eq!(d.parent_ds_ttl.get(), Duration::from_secs(86_400));
}

#[test]
fn zsk_pre_publish_walks_publish_sign_done_on_its_timers() {
    let t = Timings::new(600, 900, &rollover_cfg(60, 86_400));
    let mut r = begin("example.com", KeyRole::Zsk, 1, 2, 1000, t);
    assert_eq!(r.method, "pre-publish");
    assert_eq!((r.phase.as_str(), r.next_unix), ("publish", 1660));
    assert_eq!(passive_tags(Method::PrePublish, Phase::Publish, 1, 2), [2]);
    assert!(!advance(&mut r, 1659, t), "not before its time");
    assert!(advance(&mut r, 1660, t));
    assert_eq!(
        (r.phase.as_str(), r.phase_since_unix, r.next_unix),
        ("sign", 1660, 2620)
    );
    assert_eq!(passive_tags(Method::PrePublish, Phase::Sign, 1, 2), [1]);
    assert!(matches!(
        confirm_ds(&mut r, 2000, t),
        Err(RolloverError::BadRequest(_))
    ));
    assert!(
        matches!(cancel(&mut r, 2000), Err(RolloverError::Conflict(_))),
        "too late"
    );
    assert!(advance(&mut r, 3000, t));
    assert_eq!((r.phase.as_str(), r.next_unix), ("done", 0));
    assert!(passive_tags(Method::PrePublish, Phase::Done, 1, 2).is_empty());
    assert!(!advance(&mut r, 99_999, t), "done is final");
}

#[test]
fn double_signature_waits_for_the_operator_between_its_timers() {
    let t = Timings::new(600, 900, &rollover_cfg(60, 3600));
    let mut r = begin("example.com", KeyRole::Csk, 1, 2, 0, t);
    assert_eq!(r.method, "double-signature");
    assert_eq!((r.phase.as_str(), r.next_unix), ("publish", 960));
    assert!(passive_tags(Method::DoubleSignature, Phase::Publish, 1, 2).is_empty());
    assert!(
        matches!(confirm_ds(&mut r, 100, t), Err(RolloverError::Conflict(m)) if m.contains("too early"))
    );
    assert!(advance(&mut r, 960, t));
    assert_eq!((r.phase.as_str(), r.next_unix), ("ds", 0));
    assert!(
        !advance(&mut r, 1_000_000, t),
        "the DS step waits for the operator"
    );
    confirm_ds(&mut r, 5000, t).unwrap();
    assert_eq!(
        (r.phase.as_str(), r.ds_published_unix, r.next_unix),
        ("retire", 5000, 8660)
    );
    assert!(matches!(
        cancel(&mut r, 5001),
        Err(RolloverError::Conflict(_))
    ));
    assert!(matches!(
        confirm_ds(&mut r, 5001, t),
        Err(RolloverError::Conflict(_))
    ));
    assert!(!advance(&mut r, 8659, t));
    assert!(advance(&mut r, 8660, t));
    assert_eq!(r.phase, "done");
    // A KSK rolls the same way.
    assert_eq!(
        begin("z", KeyRole::Ksk, 1, 2, 0, t).method,
        "double-signature"
    );
}

#[test]
fn cancel_only_while_the_old_key_is_complete() {
    let t = Timings::new(1, 1, &rollover_cfg(0, 1));
    for role in [KeyRole::Zsk, KeyRole::Csk] {
        let mut r = begin("z", role, 1, 2, 0, t);
        cancel(&mut r, 1).unwrap();
        assert_eq!((r.phase.as_str(), r.next_unix), ("cancelled", 0));
        assert!(cancel(&mut r, 2).is_err(), "nothing left to cancel");
        assert!(!advance(&mut r, 100, t));
    }
    let mut r = begin("z", KeyRole::Csk, 1, 2, 0, t);
    assert!(advance(&mut r, 1, t));
    assert_eq!(r.phase, "ds");
    cancel(&mut r, 2).unwrap();
    let mut bad = begin("z", KeyRole::Csk, 1, 2, 0, t);
    bad.phase = "bogus".into();
    assert!(!advance(&mut bad, 100, t));
    assert!(cancel(&mut bad, 100).is_err());
}

#[test]
fn actions_parse_and_refuse_nonsense() {
    assert_eq!(Action::parse("", None).unwrap(), Action::Status);
    assert_eq!(Action::parse("start", None).unwrap(), Action::Start(None));
    assert_eq!(
        Action::parse("start", Some("ZSK")).unwrap(),
        Action::Start(Some(KeyRole::Zsk))
    );
    assert_eq!(
        Action::parse("ds-published", Some("")).unwrap(),
        Action::DsPublished
    );
    assert_eq!(Action::parse("cancel", None).unwrap(), Action::Cancel);
    assert!(Action::parse("start", Some("big")).is_err());
    assert!(Action::parse("cancel", Some("csk")).is_err());
    assert!(Action::parse("explode", None).is_err());
    assert!(!Action::Status.is_change());
    assert!(Action::Cancel.is_change());
}

// === with a store and real signing ===

fn cfg(edit: impl FnOnce(&mut Config)) -> Config {
    let mut c = config::parse(CONFIG, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    c.overwatch.dnssec.rollover = rollover_cfg(0, 0);
    edit(&mut c);
    c
}

async fn store(dir: &Path) -> Store {
    Store::open(&format!("sqlite://{}", dir.join("db").display()))
        .await
        .unwrap()
}

/// Key tag of an RRSIG RDATA.
fn sig_tag(rrsig: &[u8]) -> u16 {
    u16::from_be_bytes([rrsig[16], rrsig[17]])
}

fn tags(set: &RRset) -> Vec<u16> {
    let mut t: Vec<u16> = set.rrsig.iter().map(|s| sig_tag(s)).collect();
    t.sort_unstable();
    t
}

fn sorted(mut v: Vec<u16>) -> Vec<u16> {
    v.sort_unstable();
    v
}

/// (DNSKEY tags published, tags signing the DNSKEY RRset, tags signing
/// every other RRset — asserted to be the same for all of them).
fn signed_by(dnssec: &Dnssec, cfg: &Config) -> (Vec<u16>, Vec<u16>, Vec<u16>) {
    let mut c = Compiler::with_dnssec(dnssec.clone());
    let snap: Snapshot = c
        .compile(cfg, 1, 1, &AllHealthy, SystemTime::now())
        .snapshot;
    let zone = &snap.zones[0];
    let dnskey = zone.dnskey.as_ref().unwrap();
    let published = sorted(dnskey.rdata.iter().map(|r| keys::key_tag(r)).collect());
    let soa = tags(zone.soa.as_ref().unwrap());
    for node in snap.nodes.iter().filter(|n| n.zone == 0) {
        for set in node.rrsets.iter().chain(&node.denial) {
            assert_eq!(tags(set), soa, "every RRset signed by the same keys");
        }
        for p in &node.plans {
            for cand in &p.candidates {
                assert_eq!(tags(cand.rrset.as_ref().unwrap()), soa);
            }
        }
    }
    (published, tags(dnskey), soa)
}

#[tokio::test]
async fn csk_rollover_in_real_snapshots_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(|_| {});
    let st = store(dir.path()).await;
    let d = Dnssec::open(&st, &cfg).await.unwrap();
    let old = d.keyring().keys(&cfg.dns.zones[0].name.to_wire()).unwrap()[0].key_tag;
    assert!(d.rollover_status("example.com").unwrap().is_none());
    let (_, _, _) = signed_by(&d, &cfg); // records the zone's TTLs
    assert!(matches!(
        d.start_rollover(&st, &cfg, "example.com", Some(KeyRole::Zsk)).await,
        Err(RolloverError::BadRequest(m)) if m.contains("no zsk key")
    ));
    let s = d
        .start_rollover(&st, &cfg, "example.com", None)
        .await
        .unwrap();
    let new = s.new_key_tag;
    assert_eq!(
        (s.method, s.phase, s.old_key_tag),
        (Method::DoubleSignature, Phase::Publish, old)
    );
    // The wait is max(DNSKEY TTL 600, largest TTL 900) + delay 0.
    assert_eq!(s.next_step_unix.unwrap() - s.started_unix, 900);
    assert_eq!(s.ds_at_parent.len(), 1);
    assert!(s.ds_at_parent[0].contains(&format!(" DS {old} 13 2 ")));
    assert!(s
        .new_ds
        .as_deref()
        .unwrap()
        .contains(&format!(" DS {new} 13 2 ")));
    assert!(s.ds_to_publish.is_empty());
    let both = sorted(vec![old, new]);
    assert_eq!(
        signed_by(&d, &cfg),
        (both.clone(), both.clone(), both.clone())
    );
    assert!(matches!(
        d.start_rollover(&st, &cfg, "example.com", None).await,
        Err(RolloverError::Conflict(_))
    ));
    assert!(matches!(
        d.start_rollover(&st, &cfg, "nope.example", None).await,
        Err(RolloverError::NotFound(_))
    ));

    // Restart: the rollover and both keys come back from the store.
    drop(d);
    let d = Dnssec::open(&st, &cfg).await.unwrap();
    let s = d.rollover_status("example.com").unwrap().unwrap();
    assert_eq!((s.phase, s.new_key_tag), (Phase::Publish, new));
    assert_eq!(signed_by(&d, &cfg).2, both);
    assert!(
        !d.advance_rollovers(&st, &cfg).await.unwrap(),
        "900 s are not up"
    );

    // Time is up (the row's clock moved back instead of waiting).
    let mut row = st.dnssec_rollover("example.com").await.unwrap().unwrap();
    row.next_unix = 1;
    assert!(st.update_dnssec_rollover(&row, "publish").await.unwrap());
    assert!(d.advance_rollovers(&st, &cfg).await.unwrap());
    let s = d.rollover_status("example.com").unwrap().unwrap();
    assert_eq!(s.phase, Phase::Ds);
    assert!(s.waiting_for_operator);
    assert_eq!(s.ds_to_publish, [s.new_ds.clone().unwrap()]);
    assert!(s.ds_to_withdraw[0].contains(&format!(" DS {old} ")));
    assert_eq!(signed_by(&d, &cfg).2, both, "both still sign");
    assert!(!d.advance_rollovers(&st, &cfg).await.unwrap());

    let s = d
        .rollover_ds_published(&st, &cfg, "example.com")
        .await
        .unwrap();
    assert_eq!(s.phase, Phase::Retire);
    assert!(s.ds_at_parent[0].contains(&format!(" DS {new} ")));
    assert!(matches!(
        d.cancel_rollover(&st, &cfg, "example.com").await,
        Err(RolloverError::Conflict(_))
    ));
    // parent_ds_ttl 0 + delay 0: due at once.
    assert!(d.advance_rollovers(&st, &cfg).await.unwrap());
    let s = d.rollover_status("example.com").unwrap().unwrap();
    assert_eq!((s.phase, s.in_progress), (Phase::Done, false));
    assert_eq!(signed_by(&d, &cfg), (vec![new], vec![new], vec![new]));
    assert_eq!(d.ds_records("example.com").unwrap(), s.ds_at_parent);
    let again = Dnssec::open(&st, &cfg).await.unwrap();
    assert_eq!(
        again
            .keyring()
            .keys(&cfg.dns.zones[0].name.to_wire())
            .unwrap()
            .len(),
        1
    );
    // A finished rollover allows the next one.
    d.start_rollover(&st, &cfg, "example.com", None)
        .await
        .unwrap();
}

#[tokio::test]
async fn zsk_pre_publish_in_real_snapshots_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(|c| c.overwatch.dnssec.split_keys = true);
    let st = store(dir.path()).await;
    let d = Dnssec::open(&st, &cfg).await.unwrap();
    let apex = cfg.dns.zones[0].name.to_wire();
    let ring = d.keyring();
    let keys = ring.keys(&apex).unwrap();
    let (ksk, zsk) = (keys[0].key_tag, keys[1].key_tag);
    let ds = d.ds_records("example.com").unwrap();
    signed_by(&d, &cfg);
    let s = d
        .start_rollover(&st, &cfg, "example.com", None)
        .await
        .unwrap();
    let new = s.new_key_tag;
    assert_eq!(
        (s.method, s.role.as_str(), s.old_key_tag),
        (Method::PrePublish, "zsk", zsk)
    );
    assert_eq!(
        s.next_step_unix.unwrap() - s.started_unix,
        600,
        "DNSKEY TTL + 0"
    );
    assert_eq!(s.ds_at_parent, ds, "the DS does not change");
    assert!(s.new_ds.is_none());
    // Publish: the new ZSK is in the DNSKEY RRset, but signs nothing.
    let all = sorted(vec![ksk, zsk, new]);
    assert_eq!(signed_by(&d, &cfg), (all.clone(), vec![ksk], vec![zsk]));

    let mut row = st.dnssec_rollover("example.com").await.unwrap().unwrap();
    row.next_unix = 1;
    st.update_dnssec_rollover(&row, "publish").await.unwrap();
    assert!(d.advance_rollovers(&st, &cfg).await.unwrap());
    let s = d.rollover_status("example.com").unwrap().unwrap();
    assert_eq!(s.phase, Phase::Sign);
    assert_eq!(
        s.next_step_unix.unwrap() - s.phase_since_unix,
        900,
        "largest TTL + 0"
    );
    // Sign: the new ZSK signs, the old one is only published.
    assert_eq!(signed_by(&d, &cfg), (all, vec![ksk], vec![new]));
    assert!(d.cancel_rollover(&st, &cfg, "example.com").await.is_err());

    let mut row = st.dnssec_rollover("example.com").await.unwrap().unwrap();
    row.next_unix = 1;
    st.update_dnssec_rollover(&row, "sign").await.unwrap();
    assert!(d.advance_rollovers(&st, &cfg).await.unwrap());
    assert_eq!(
        d.rollover_status("example.com").unwrap().unwrap().phase,
        Phase::Done
    );
    assert_eq!(
        signed_by(&d, &cfg),
        (sorted(vec![ksk, new]), vec![ksk], vec![new])
    );
    assert_eq!(d.ds_records("example.com").unwrap(), ds);

    // A second ZSK rollover, cancelled while pre-published.
    let s = d
        .start_rollover(&st, &cfg, "example.com", None)
        .await
        .unwrap();
    assert_eq!(s.old_key_tag, new);
    let s = d.cancel_rollover(&st, &cfg, "example.com").await.unwrap();
    assert_eq!(s.phase, Phase::Cancelled);
    assert_eq!(
        signed_by(&d, &cfg),
        (sorted(vec![ksk, new]), vec![ksk], vec![new])
    );
    assert!(d
        .rollover_ds_published(&st, &cfg, "example.com")
        .await
        .is_err());
}
