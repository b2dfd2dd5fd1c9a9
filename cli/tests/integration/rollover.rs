//! DNSSEC key rollover (issue 6, point 7), the whole system: the real
//! controlplane and dataplane, `opengslb dnssec rollover` driving it, and
//! BIND's `delv` validating — at every phase — the DNSKEY RRset, a positive
//! answer and an NXDOMAIN against the DS the operator would have at the
//! parent at that moment (during the DS swap, the old DS, the new DS and
//! both). TTLs of 2 s and a propagation delay of 3 s make each timed phase
//! last about 5 s. A CSK double-signature rollover (with a controlplane
//! restart in the middle) and a ZSK pre-publish rollover are walked end to
//! end.
//!
//! Needs `delv` (Debian `dnsutils`); `OPENGSLB_REQUIRE_DELV=1` turns its
//! absence into a failure.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use serde_json::Value;

use crate::delv_support::*;
use crate::harness::*;

/// Short TTLs everywhere, the rollover delays of the test, and `extra`
/// DNSSEC settings.
fn config(extra: &str) -> impl FnOnce(String) -> String {
    let extra = extra.to_owned();
    move |c: String| {
        c.replace("default_ttl: 60", "default_ttl: 2")
            .replace("minimum: 30, ttl: 3600}", "minimum: 2, ttl: 2}")
            .replace("ttl: 300}", "ttl: 2}")
            .replace("ttl: 30}", "ttl: 2}")
            .replace("ttl: 45}", "ttl: 2}")
            .replace(
                "  data_dir: cp-data\n",
                &format!(
                    "  data_dir: cp-data\n  dnssec: {{rollover: {{propagation_delay: 3s, parent_ds_ttl: 2s}}{extra}}}\n"
                ),
            )
    }
}

/// `opengslb dnssec rollover --zone gslb.test ARGS` with the token.
fn rollover_cmd(g: &Gslb, args: &[&str]) -> Output {
    opengslb()
        .arg("--api")
        .arg(g.grpc.to_string())
        .arg("--token-file")
        .arg(g.dir.path().join("api.token"))
        .args(["dnssec", "rollover", "--zone", "gslb.test"])
        .args(args)
        .output()
        .unwrap()
}

/// As [`rollover_cmd`], must succeed; returns stdout.
fn rollover_ok(g: &Gslb, args: &[&str]) -> String {
    let o = rollover_cmd(g, args);
    assert!(
        o.status.success(),
        "rollover {args:?}: {}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        g.logs()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The zone's rollover from `GET /api/v1/dnssec/rollover`.
fn rollover_state(g: &Gslb) -> Value {
    let body = http_get(g.api, "/api/v1/dnssec/rollover?zone=gslb.test").expect("REST answer");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["rollover"].clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Waits (bounded) until the rollover is in `phase`.
fn wait_phase(g: &Gslb, phase: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = rollover_state(g);
        if r["phase"] == phase {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "rollover never reached {phase}: {r}\n{}",
            g.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// DNSKEY, an A answer and an NXDOMAIN all fully validated from `a`.
fn validates(g: &Gslb, a: &Path, stage: &str) {
    assert_validated(g, a, stage, "gslb.test", "DNSKEY", "DNSKEY");
    assert_validated(g, a, stage, "www.gslb.test", "A", "192.0.2.");
    assert_validated_negative(g, a, stage, "nothere.gslb.test", "A", "nxdomain");
}

/// Served DNSKEY tags and the key tags of the RRSIGs over www's A RRset
/// (DO=1), each sorted.
fn served(g: &Gslb) -> (Vec<u16>, Vec<u16>) {
    let keys = dnskey_tags(&g.tcp(&query_do("gslb.test.", RecordType::DNSKEY)));
    let sigs = rrsig_key_tags(&g.tcp(&query_do("www.gslb.test.", RecordType::A)));
    (keys, sigs)
}

/// Waits (bounded) until the dataplane serves exactly these DNSKEY tags
/// and these signers of www's A RRset.
fn wait_served(g: &Gslb, keys: &[u16], signers: &[u16]) {
    let mut keys = keys.to_vec();
    let mut signers = signers.to_vec();
    keys.sort_unstable();
    signers.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = served(g);
        if got == (keys.clone(), signers.clone()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "served (DNSKEY tags, A signers) {got:?}, want {:?}\n{}",
            (keys, signers),
            g.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tag(v: &Value) -> u16 {
    u16::try_from(v.as_u64().unwrap_or_else(|| panic!("not a tag: {v}"))).unwrap()
}

#[test]
fn csk_double_signature_rollover_validates_at_every_step() {
    if !have_delv() {
        return;
    }
    let mut g = Gslb::start_with(config(""));
    let ds_old = zone_ds(&g);
    assert_eq!(ds_old.len(), 1, "one CSK");
    let a_old = write_anchors(&g, "old", &ds_old);
    validates(&g, &a_old, "before");
    let (keys, _) = served(&g);
    let old = keys[0];
    assert_eq!(
        rollover_state(&g),
        Value::Null,
        "no rollover before the first"
    );

    // Status needs no token; nothing to cancel or confirm yet.
    let o = opengslb()
        .arg("--api")
        .arg(g.grpc.to_string())
        .args(["dnssec", "rollover", "--zone", "gslb.test", "--status"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("no key rollover yet"));
    assert!(!rollover_cmd(&g, &["--cancel"]).status.success());

    // Start: the new CSK is published and signs alongside the old one.
    let out = rollover_ok(&g, &[]);
    assert!(out.contains("csk double-signature"), "{out}");
    assert!(
        out.contains(&format!("DS at the parent now: {}", ds_old[0])),
        "{out}"
    );
    let r = rollover_state(&g);
    assert_eq!(r["phase"], "publish");
    let new = tag(&r["new_key_tag"]);
    assert_eq!(tag(&r["old_key_tag"]), old);
    let ds_new = vec![r["new_ds"].as_str().unwrap().to_owned()];
    assert!(out.contains(&ds_new[0]), "the new DS is shown: {out}");
    assert_eq!(strings(&r["ds_at_parent"]), ds_old);
    assert!(strings(&r["ds_to_publish"]).is_empty());
    wait_served(&g, &[old, new], &[old, new]);
    validates(&g, &a_old, "publish, old DS");
    // Too early to swap the DS; a second start is refused.
    let early = rollover_cmd(&g, &["--ds-published"]);
    assert!(!early.status.success());
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("too early"),
        "{early:?}"
    );
    assert!(!rollover_cmd(&g, &[]).status.success());
    // Metrics show the phase.
    assert_eq!(
        g.cp_metric("opengslb_dnssec_rollover_phase{phase=\"publish\",zone=\"gslb.test\"}"),
        Some(1.0)
    );

    // DS step: waits for the operator; either DS validates.
    let r = wait_phase(&g, "ds");
    assert_eq!(r["waiting_for_operator"], true);
    assert_eq!(r["next_step_unix"], Value::Null);
    assert_eq!(strings(&r["ds_to_publish"]), ds_new);
    assert_eq!(strings(&r["ds_to_withdraw"]), ds_old);
    assert_eq!(strings(&r["ds_at_parent"]), ds_old);
    let a_new = write_anchors(&g, "new", &ds_new);
    let both: Vec<String> = ds_old.iter().chain(&ds_new).cloned().collect();
    let a_both = write_anchors(&g, "both", &both);
    validates(&g, &a_old, "ds, old DS");
    validates(&g, &a_new, "ds, new DS");
    validates(&g, &a_both, "ds, both DS");
    let shown = rollover_ok(&g, &["--status"]);
    assert!(
        shown.contains(&format!("DS to publish now: {}", ds_new[0]))
            && shown.contains(&format!("DS to withdraw now: {}", ds_old[0])),
        "{shown}"
    );

    // The state survives a controlplane restart (the dataplane serves on).
    g.kill_cp();
    validates(&g, &a_both, "ds, controlplane down");
    g.start_cp();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(g.api, "/api/v1/dnssec/rollover?zone=gslb.test")
        .is_none_or(|b| !b.contains("\"phase\""))
    {
        assert!(
            Instant::now() < deadline,
            "controlplane back:\n{}",
            g.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = rollover_state(&g);
    assert_eq!(
        (r["phase"].as_str(), tag(&r["new_key_tag"])),
        (Some("ds"), new)
    );
    // Still waiting for the operator well after the restart.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rollover_state(&g)["phase"], "ds");
    wait_served(&g, &[old, new], &[old, new]);
    validates(&g, &a_both, "ds, after the restart");

    // The operator swapped the DS: retire phase; old still signs.
    let out = rollover_ok(&g, &["--ds-published"]);
    assert!(out.contains("phase retire"), "{out}");
    let r = rollover_state(&g);
    assert_eq!(strings(&r["ds_at_parent"]), ds_new);
    assert!(r["next_step_unix"].as_u64().is_some());
    assert!(
        !rollover_cmd(&g, &["--cancel"]).status.success(),
        "too late"
    );
    wait_served(&g, &[old, new], &[old, new]);
    validates(&g, &a_new, "retire, new DS");
    validates(&g, &a_old, "retire, old DS still cached");

    // Done: only the new key, which the new DS validates; the old DS no
    // longer does.
    let r = wait_phase(&g, "done");
    assert_eq!(r["in_progress"], false);
    wait_served(&g, &[new], &[new]);
    validates(&g, &a_new, "done, new DS");
    let out = delv(&g, &a_old, "www.gslb.test", "A");
    assert!(
        !out.contains("; fully validated"),
        "the old DS must no longer validate:\n{out}"
    );
    let body = http_get(g.api, "/api/v1/dnssec/ds?zone=gslb.test").unwrap();
    assert!(
        body.contains(&ds_new[0]) && !body.contains(&ds_old[0]),
        "{body}"
    );
    let st = http_get(g.api, "/api/v1/dnssec/status").unwrap();
    assert!(st.contains("\"phase\":\"done\""), "{st}");
    assert_eq!(
        g.cp_metric("opengslb_dnssec_rollover_phase{phase=\"publish\",zone=\"gslb.test\"}"),
        None
    );
}

#[test]
fn zsk_pre_publish_rollover_validates_at_every_step() {
    if !have_delv() {
        return;
    }
    let g = Gslb::start_with(config(", split_keys: true"));
    let ds = zone_ds(&g);
    assert_eq!(ds.len(), 1, "one KSK");
    let a = write_anchors(&g, "ksk", &ds);
    validates(&g, &a, "before");
    let (keys, signers) = served(&g);
    assert_eq!((keys.len(), signers.len()), (2, 1));
    let zsk = signers[0];
    let ksk = *keys.iter().find(|k| **k != zsk).unwrap();

    let out = rollover_ok(&g, &[]);
    assert!(out.contains("zsk pre-publish"), "{out}");
    assert!(
        out.contains(&format!("DS at the parent now: {}", ds[0])),
        "{out}"
    );
    let r = rollover_state(&g);
    assert_eq!(
        (r["phase"].as_str(), tag(&r["old_key_tag"])),
        (Some("publish"), zsk)
    );
    let new = tag(&r["new_key_tag"]);
    assert_eq!(strings(&r["ds_at_parent"]), ds, "the DS never changes");
    // Publish: the new ZSK is in the DNSKEY RRset but does not sign.
    wait_served(&g, &[ksk, zsk, new], &[zsk]);
    validates(&g, &a, "publish");
    assert!(
        !rollover_cmd(&g, &["--ds-published"]).status.success(),
        "a ZSK rollover has no DS step"
    );

    // Sign: the new ZSK signs; the old one stays published.
    let r = wait_phase(&g, "sign");
    assert_eq!(strings(&r["ds_at_parent"]), ds);
    wait_served(&g, &[ksk, zsk, new], &[new]);
    validates(&g, &a, "sign");
    assert!(
        !rollover_cmd(&g, &["--cancel"]).status.success(),
        "too late"
    );

    // Done: the old ZSK is gone.
    wait_phase(&g, "done");
    wait_served(&g, &[ksk, new], &[new]);
    validates(&g, &a, "done");

    // Another rollover, cancelled while pre-published: back to two keys.
    rollover_ok(&g, &[]);
    let r = rollover_state(&g);
    let third = tag(&r["new_key_tag"]);
    assert_eq!(tag(&r["old_key_tag"]), new);
    wait_served(&g, &[ksk, new, third], &[new]);
    let out = rollover_ok(&g, &["--cancel"]);
    assert!(out.contains("phase cancelled"), "{out}");
    wait_served(&g, &[ksk, new], &[new]);
    validates(&g, &a, "cancelled");
}
