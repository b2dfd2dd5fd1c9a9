//! Store tests: every one runs on SQLite, and on PostgreSQL too when
//! `OPENGSLB_TEST_POSTGRES_URL` names a server where the user may create
//! databases (each test gets a fresh database).

use super::*;

/// SQLite in a fresh directory (kept alive by the returned guard).
fn sqlite_url() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("db/opengslb.db").display());
    (dir, url)
}

/// A fresh PostgreSQL database, when the environment names a server.
async fn postgres_url(test: &str) -> Option<String> {
    let base = std::env::var("OPENGSLB_TEST_POSTGRES_URL").ok()?;
    let admin = PgPool::connect(&base).await.unwrap();
    let name = format!(
        "ogtest_{test}_{}_{}",
        std::process::id(),
        now_ms() % 1_000_000
    );
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    // Same server and credentials, another database.
    let (head, _) = base.split_once('?').unwrap_or((&base, ""));
    let (server, _) = head.rsplit_once('/').unwrap();
    Some(format!("{server}/{name}"))
}

/// Runs `check` against SQLite, then against PostgreSQL when configured;
/// `check` opens the store at the URL it is given (maybe twice, to test
/// persistence).
async fn on_every_engine<F, Fut>(test: &str, check: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (_dir, url) = sqlite_url();
    check(url).await;
    if let Some(url) = postgres_url(test).await {
        check(url).await;
    } else {
        eprintln!("{test}: OPENGSLB_TEST_POSTGRES_URL unset, PostgreSQL skipped");
    }
}

#[tokio::test]
async fn meta_and_audit_survive_reopen() {
    on_every_engine("meta_audit", |url| async move {
        {
            let store = Store::open(&url).await.unwrap();
            assert_eq!(store.meta("soa_serial").await.unwrap(), None);
            store.set_meta("soa_serial", "7").await.unwrap();
            store.set_meta("soa_serial", "8").await.unwrap();
            store
                .audit("test", "127.0.0.1", "reload", "{}")
                .await
                .unwrap();
            store
                .audit(
                    "ops'; DROP TABLE audit_log; --",
                    "::1",
                    "override.set",
                    "{\"x\":1}",
                )
                .await
                .unwrap();
        }
        let store = Store::open(&url).await.unwrap();
        assert_eq!(
            store.meta("soa_serial").await.unwrap().as_deref(),
            Some("8")
        );
        assert_eq!(store.audit_count().await.unwrap(), 2);
        let entries = store.audit_entries(10).await.unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].action, "override.set", "newest first");
        assert_eq!(entries[0].actor, "ops'; DROP TABLE audit_log; --");
        assert_eq!(entries[1].source, "127.0.0.1");
        assert_eq!(store.audit_entries(1).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn overrides_round_trip_and_persist() {
    on_every_engine("overrides", |url| async move {
        let row = OverrideRow {
            service: "www.example.com".into(),
            address: "192.0.2.1".into(),
            healthy: false,
            reason: "maintenance".into(),
            source: "ops".into(),
            authority: "alice@127.0.0.1".into(),
            created_at_unix_ms: 1_700_000_000_000,
        };
        {
            let store = Store::open(&url).await.unwrap();
            assert!(store.overrides().await.unwrap().is_empty());
            store.put_override(&row).await.unwrap();
            let mut again = row.clone();
            again.healthy = true;
            again.reason = "back".into();
            store.put_override(&again).await.unwrap();
            let mut other = row.clone();
            other.address = "192.0.2.2:8080".into();
            store.put_override(&other).await.unwrap();
        }
        let store = Store::open(&url).await.unwrap();
        let all = store.overrides().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].address, "192.0.2.1");
        assert!(all[0].healthy);
        assert_eq!(all[0].reason, "back");
        assert!(store
            .delete_override("www.example.com", "192.0.2.1")
            .await
            .unwrap());
        assert!(!store
            .delete_override("www.example.com", "192.0.2.1")
            .await
            .unwrap());
        assert_eq!(store.overrides().await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn geo_mappings_round_trip() {
    on_every_engine("geo", |url| async move {
        let store = Store::open(&url).await.unwrap();
        let m = GeoMappingRow {
            cidr: "10.0.0.0/8".into(),
            region: "eu".into(),
            comment: "office".into(),
            created_at_unix_ms: 1,
        };
        assert!(store.add_geo_mapping(&m).await.unwrap());
        assert!(!store.add_geo_mapping(&m).await.unwrap(), "duplicate");
        drop(store);
        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.geo_mappings().await.unwrap(), vec![m]);
        assert!(store.delete_geo_mapping("10.0.0.0/8").await.unwrap());
        assert!(!store.delete_geo_mapping("10.0.0.0/8").await.unwrap());
        assert!(store.geo_mappings().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn dnssec_keys_round_trip() {
    on_every_engine("dnssec", |url| async move {
        let store = Store::open(&url).await.unwrap();
        let k = DnssecKeyRow {
            zone: "example.com".into(),
            role: "csk".into(),
            algorithm: 13,
            flags: 257,
            key_tag: 4242,
            public_key: vec![1, 2, 3],
            private_key: vec![0, 255, 7],
            encrypted: true,
            created_unix: 5,
        };
        store.insert_dnssec_key(&k).await.unwrap();
        let got = store.dnssec_keys("example.com").await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key_tag, 4242);
        assert_eq!(got[0].private_key, vec![0, 255, 7]);
        assert!(got[0].encrypted);
    })
    .await;
}

#[tokio::test]
async fn unreachable_postgres_is_a_clear_error() {
    // Port 1 on loopback: nothing listens; the error names the target, not
    // the password.
    let err = Store::open("postgres://u:secret@127.0.0.1:1/db")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("postgres://127.0.0.1:1/db"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

#[tokio::test]
async fn locked_sqlite_is_a_clear_start_up_error() {
    use sqlx::{Connection, Executor};
    let (dir, url) = sqlite_url();
    let path = dir.path().join("db/opengslb.db");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Another process holds the database file exclusively (rollback
    // journal, so even readers wait).
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .unwrap()
        .create_if_missing(true);
    let mut holder = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    holder
        .execute("CREATE TABLE hold (x INTEGER)")
        .await
        .unwrap();
    holder.execute("BEGIN EXCLUSIVE").await.unwrap();
    holder.execute("INSERT INTO hold VALUES (1)").await.unwrap();

    let started = std::time::Instant::now();
    let err = match Store::open(&url).await {
        Ok(_) => panic!("a locked database must not open"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("opengslb.db"), "{err}");
    assert!(err.contains("locked"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "{err}");

    // Released, the same file opens and migrates.
    holder.execute("ROLLBACK").await.unwrap();
    holder.close().await.unwrap();
    Store::open(&url).await.unwrap();
}

#[tokio::test]
async fn agent_pins_migrate_pin_rotate_revoke_and_persist() {
    on_every_engine("agent_pins", |url| async move {
        let pin = |id: &str, fp: &str| AgentPinRow {
            agent_id: id.into(),
            fingerprint: fp.into(),
            region: "us-east".into(),
            services: "www.example.com,api.example.com".into(),
            revoked: false,
            pinned_at_unix_ms: 1_700_000_000_000,
            updated_at_unix_ms: 1_700_000_000_000,
        };
        {
            let store = Store::open(&url).await.unwrap();
            // The migration made an empty table.
            assert!(store.agent_pins().await.unwrap().is_empty());
            assert_eq!(store.agent_pin("agent-a").await.unwrap(), None);
            assert_eq!(
                store.pin_agent(&pin("agent-a", "fp-1")).await.unwrap(),
                pin("agent-a", "fp-1")
            );
            // First pin wins: a second pin for the id returns the first.
            assert_eq!(
                store.pin_agent(&pin("agent-a", "fp-other")).await.unwrap(),
                pin("agent-a", "fp-1")
            );
            store.pin_agent(&pin("agent-b", "fp-b")).await.unwrap();
            // Rotation only from the pinned fingerprint.
            assert!(!store
                .rotate_agent_pin("agent-a", "fp-wrong", "fp-2", 5)
                .await
                .unwrap());
            assert!(store
                .rotate_agent_pin("agent-a", "fp-1", "fp-2", 5)
                .await
                .unwrap());
            assert!(store.revoke_agent("agent-b", 6).await.unwrap());
            assert!(!store.revoke_agent("agent-none", 6).await.unwrap());
            // A revoked agent cannot rotate.
            assert!(!store
                .rotate_agent_pin("agent-b", "fp-b", "fp-b2", 7)
                .await
                .unwrap());
        }
        // Reopened (migrations run again, nothing lost).
        let store = Store::open(&url).await.unwrap();
        let all = store.agent_pins().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].agent_id, "agent-a");
        assert_eq!(all[0].fingerprint, "fp-2");
        assert_eq!(all[0].updated_at_unix_ms, 5);
        assert!(!all[0].revoked);
        assert_eq!(all[0].services, "www.example.com,api.example.com");
        assert_eq!(all[0].pinned_at_unix_ms, 1_700_000_000_000);
        assert_eq!(all[1].agent_id, "agent-b");
        assert!(all[1].revoked);
        assert_eq!(all[1].fingerprint, "fp-b");
        assert_eq!(all[1].updated_at_unix_ms, 6);
    })
    .await;
}
