//! The controlplane's persistent store (`sqlx`): SQLite under the data dir by
//! default, PostgreSQL when `overwatch.store.url` is a `postgres://` URL (so
//! several controlplanes can share overrides, DNSSEC keys and runtime geo
//! mappings). Both sit behind this one [`Store`]; every query is written once
//! with `$N` placeholders, which both engines accept, and runs on whichever
//! pool is open ([`with_db!`]).
//!
//! Migrations are the SQL files in `controlplane/migrations/` (SQLite) and
//! `controlplane/migrations/postgres/` (their PostgreSQL twins, same
//! versions), embedded at build time and applied in order on open; each
//! applied version is recorded in `schema_migrations`. Add a migration to
//! both lists.

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
    Row, SqlitePool,
};

use crate::error::{Error, Result};

/// Runs `$body` with `$pool` bound to whichever pool the store has open; the
/// body is compiled once per engine.
macro_rules! with_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

/// Embedded SQLite migrations: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_dnssec_keys.sql")),
    (3, include_str!("../migrations/0003_overrides_geo.sql")),
    (4, include_str!("../migrations/0004_agent_pins.sql")),
    (5, include_str!("../migrations/0005_dnssec_rollovers.sql")),
];

/// Embedded PostgreSQL migrations, the same versions as [`MIGRATIONS`].
const PG_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_dnssec_keys.sql"),
    ),
    (
        3,
        include_str!("../migrations/postgres/0003_overrides_geo.sql"),
    ),
    (
        4,
        include_str!("../migrations/postgres/0004_agent_pins.sql"),
    ),
    (
        5,
        include_str!("../migrations/postgres/0005_dnssec_rollovers.sql"),
    ),
];

/// How long opening the store may wait for a connection (an unreachable or
/// locked database is a clear start-up error, not a hang).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The migration loop of [`Store::migrate`], once for both engines (a macro
/// because the two pools are different types).
macro_rules! migrate_pool {
    ($pool:expr, $migrations:expr, $lock:expr, $engine:literal) => {{
        const CREATE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at_unix_ms BIGINT NOT NULL)";
        const DONE: &str = "SELECT 1 FROM schema_migrations WHERE version = $1";
        const RECORD: &str =
            "INSERT INTO schema_migrations (version, applied_at_unix_ms) VALUES ($1, $2)";
        let lock: Option<&str> = $lock;
        for (version, sql) in $migrations {
            let mut tx = $pool.begin().await.map_err(store_err)?;
            if let Some(lock) = lock {
                sqlx::query(lock)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_err)?;
            }
            sqlx::query(CREATE)
                .execute(&mut *tx)
                .await
                .map_err(store_err)?;
            let done = sqlx::query(DONE)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_err)?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(store_err)?;
            sqlx::query(RECORD)
                .bind(version)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(store_err)?;
            tx.commit().await.map_err(store_err)?;
            tracing::info!(version, engine = $engine, "applied store migration");
        }
    }};
}

/// Handle to the store.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

/// The open pool.
#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// One manual override row (table `overrides`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideRow {
    /// Domain name, lower-case, no final dot.
    pub service: String,
    /// IP, or `IP:port`, canonical form.
    pub address: String,
    /// Forced health.
    pub healthy: bool,
    /// Why.
    pub reason: String,
    /// The system that set it.
    pub source: String,
    /// Who set it and from where.
    pub authority: String,
    /// When, ms since the epoch.
    pub created_at_unix_ms: i64,
}

/// One runtime geo mapping row (table `geo_mappings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoMappingRow {
    /// Canonical network form (`10.0.0.0/8`).
    pub cidr: String,
    /// Region name.
    pub region: String,
    /// Free text.
    pub comment: String,
    /// When, ms since the epoch.
    pub created_at_unix_ms: i64,
}

/// One pinned agent (table `agent_pins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPinRow {
    /// The id the agent registered with.
    pub agent_id: String,
    /// Lower-case hex SHA-256 of its DER certificate.
    pub fingerprint: String,
    /// Its region.
    pub region: String,
    /// Comma-separated services its token covered at pinning.
    pub services: String,
    /// Cut off: every connection is refused.
    pub revoked: bool,
    /// When first pinned, ms since the epoch.
    pub pinned_at_unix_ms: i64,
    /// Last change (rotation, revocation), ms since the epoch.
    pub updated_at_unix_ms: i64,
}

/// One audit record (table `audit_log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Row id (increasing).
    pub id: i64,
    /// When, ms since the epoch.
    pub at_unix_ms: i64,
    /// Who: the token identity, `api`, or `signal:SIGHUP`.
    pub actor: String,
    /// From where: the client address, or `local`.
    pub source: String,
    /// What: `override.set`, `geo.mapping.add`, `config.reload`, …
    pub action: String,
    /// Details, JSON.
    pub detail: String,
}

// === impl Store ===

impl Store {
    /// Opens the store at `url` and applies pending migrations: `sqlite://PATH`
    /// or a plain path (created if needed), or `postgres://…` /
    /// `postgresql://…` (the database must exist).
    pub async fn open(url: &str) -> Result<Self> {
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Db::Postgres(open_postgres(url).await?)
        } else {
            Db::Sqlite(open_sqlite(url).await?)
        };
        let store = Self { db };
        store.migrate().await?;
        Ok(store)
    }

    /// Closes the pool: every later call fails with a store error (what an
    /// unreachable database looks like; used by tests).
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn engine(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Applies the pending migrations of this engine, each in its own
    /// transaction with its `schema_migrations` row. On PostgreSQL the
    /// transaction first takes an advisory lock, so controlplanes sharing
    /// the database migrate one at a time.
    async fn migrate(&self) -> Result<()> {
        match &self.db {
            Db::Sqlite(pool) => migrate_pool!(pool, MIGRATIONS, None, "sqlite"),
            Db::Postgres(pool) => migrate_pool!(
                pool,
                PG_MIGRATIONS,
                Some("SELECT pg_advisory_xact_lock(7266426)"),
                "postgres"
            ),
        }
        Ok(())
    }

    /// Reads a `meta` value.
    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        let row = with_db!(&self.db, pool => sqlx::query("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await
            .map_err(store_err)?
            .map(|r| r.get::<String, _>(0)));
        Ok(row)
    }

    /// Writes a `meta` value.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        const SQL: &str = "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT(key) DO UPDATE SET value = excluded.value";
        with_db!(&self.db, pool => sqlx::query(SQL)
            .bind(key)
            .bind(value)
            .execute(pool)
            .await
            .map(|_| ())
            .map(|_| ())
        .map_err(store_err))?;
        Ok(())
    }

    /// Appends an audit record.
    pub async fn audit(&self, actor: &str, source: &str, action: &str, detail: &str) -> Result<()> {
        const SQL: &str = "INSERT INTO audit_log (at_unix_ms, actor, source, action, detail) VALUES ($1, $2, $3, $4, $5)";
        with_db!(&self.db, pool => sqlx::query(SQL)
            .bind(now_ms())
            .bind(actor)
            .bind(source)
            .bind(action)
            .bind(detail)
            .execute(pool)
            .await
            .map(|_| ())
            .map(|_| ())
        .map_err(store_err))?;
        Ok(())
    }

    /// Number of audit records (for status and tests).
    pub async fn audit_count(&self) -> Result<i64> {
        let n = with_db!(&self.db, pool => sqlx::query("SELECT COUNT(*) FROM audit_log")
            .fetch_one(pool)
            .await
            .map_err(store_err)?
            .get::<i64, _>(0));
        Ok(n)
    }

    /// The newest `limit` audit records, newest first.
    pub async fn audit_entries(&self, limit: i64) -> Result<Vec<AuditRow>> {
        const SQL: &str = "SELECT id, at_unix_ms, actor, source, action, detail FROM audit_log ORDER BY id DESC LIMIT $1";
        with_db!(&self.db, pool => Ok(sqlx::query(SQL)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|r| AuditRow {
                id: r.get(0),
                at_unix_ms: r.get(1),
                actor: r.get(2),
                source: r.get(3),
                action: r.get(4),
                detail: r.get(5),
            })
            .collect()))
    }

    /// Every override, by service then address.
    pub async fn overrides(&self) -> Result<Vec<OverrideRow>> {
        const SQL: &str = "SELECT service, address, healthy, reason, source, authority, created_at_unix_ms FROM overrides ORDER BY service, address";
        with_db!(&self.db, pool => Ok(sqlx::query(SQL)
            .fetch_all(pool)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|r| OverrideRow {
                service: r.get(0),
                address: r.get(1),
                healthy: r.get(2),
                reason: r.get(3),
                source: r.get(4),
                authority: r.get(5),
                created_at_unix_ms: r.get(6),
            })
            .collect()))
    }

    /// Sets (inserts or replaces) an override.
    pub async fn put_override(&self, o: &OverrideRow) -> Result<()> {
        const SQL: &str = "INSERT INTO overrides (service, address, healthy, reason, source, authority, created_at_unix_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT(service, address) DO UPDATE SET healthy = excluded.healthy, reason = excluded.reason, \
             source = excluded.source, authority = excluded.authority, created_at_unix_ms = excluded.created_at_unix_ms";
        with_db!(&self.db, pool => sqlx::query(SQL)
            .bind(&o.service)
            .bind(&o.address)
            .bind(o.healthy)
            .bind(&o.reason)
            .bind(&o.source)
            .bind(&o.authority)
            .bind(o.created_at_unix_ms)
            .execute(pool)
            .await
            .map(|_| ())
            .map(|_| ())
        .map_err(store_err))?;
        Ok(())
    }

    /// Deletes an override; whether one existed.
    pub async fn delete_override(&self, service: &str, address: &str) -> Result<bool> {
        const SQL: &str = "DELETE FROM overrides WHERE service = $1 AND address = $2";
        let n = with_db!(&self.db, pool => sqlx::query(SQL)
            .bind(service)
            .bind(address)
            .execute(pool)
            .await
            .map_err(store_err)?
            .rows_affected());
        Ok(n > 0)
    }

    /// Every runtime geo mapping, by CIDR.
    pub async fn geo_mappings(&self) -> Result<Vec<GeoMappingRow>> {
        const SQL: &str =
            "SELECT cidr, region, comment, created_at_unix_ms FROM geo_mappings ORDER BY cidr";
        with_db!(&self.db, pool => Ok(sqlx::query(SQL)
            .fetch_all(pool)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|r| GeoMappingRow {
                cidr: r.get(0),
                region: r.get(1),
                comment: r.get(2),
                created_at_unix_ms: r.get(3),
            })
            .collect()))
    }

    /// Adds a runtime geo mapping; `false` when the CIDR is already mapped.
    pub async fn add_geo_mapping(&self, m: &GeoMappingRow) -> Result<bool> {
        const SQL: &str = "INSERT INTO geo_mappings (cidr, region, comment, created_at_unix_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT(cidr) DO NOTHING";
        let n = with_db!(&self.db, pool => sqlx::query(SQL)
            .bind(&m.cidr)
            .bind(&m.region)
            .bind(&m.comment)
            .bind(m.created_at_unix_ms)
            .execute(pool)
            .await
            .map_err(store_err)?
            .rows_affected());
        Ok(n > 0)
    }

    /// Deletes a runtime geo mapping; whether one existed.
    pub async fn delete_geo_mapping(&self, cidr: &str) -> Result<bool> {
        let n = with_db!(&self.db, pool => sqlx::query("DELETE FROM geo_mappings WHERE cidr = $1")
            .bind(cidr)
            .execute(pool)
            .await
            .map_err(store_err)?
            .rows_affected());
        Ok(n > 0)
    }
}

async fn open_sqlite(url: &str) -> Result<SqlitePool> {
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    if let Some(parent) = Path::new(path).parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::Store(format!("{}: {e}", parent.display())))?;
        }
    }
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
        .map_err(|e| Error::Store(format!("{path}: {e}")))?
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(5))
        .journal_mode(SqliteJournalMode::Wal);
    SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| Error::Store(format!("{path}: {e}")))
}

async fn open_postgres(url: &str) -> Result<PgPool> {
    // Never echo the URL: it may carry a password.
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| Error::Store(format!("invalid PostgreSQL URL: {e}")))?;
    let target = format!(
        "postgres://{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| Error::Store(format!("{target}: {e}")))
}

/// One stored DNSSEC key (table `dnssec_keys`).
#[derive(Debug, Clone)]
pub struct DnssecKeyRow {
    /// Zone apex, lower-case, no final dot.
    pub zone: String,
    /// `csk`, `ksk` or `zsk`.
    pub role: String,
    /// DNSSEC algorithm number.
    pub algorithm: u8,
    /// DNSKEY flags.
    pub flags: u16,
    /// Key tag.
    pub key_tag: u16,
    /// Public key, DNSKEY form.
    pub public_key: Vec<u8>,
    /// PKCS#8, or sealed (see the migration).
    pub private_key: Vec<u8>,
    /// Whether `private_key` is sealed.
    pub encrypted: bool,
    /// Creation time, seconds since the epoch.
    pub created_unix: i64,
}

// === impl Store (DNSSEC keys) ===

impl Store {
    /// Active DNSSEC keys of `zone`, oldest first.
    pub async fn dnssec_keys(&self, zone: &str) -> Result<Vec<DnssecKeyRow>> {
        const SQL: &str = "SELECT zone, role, algorithm, flags, key_tag, public_key, private_key, encrypted, created_unix \
             FROM dnssec_keys WHERE zone = $1 AND state = 'active' ORDER BY id";
        with_db!(&self.db, pool => {
            let rows = sqlx::query(SQL)
                .bind(zone)
                .fetch_all(pool)
                .await
                .map_err(store_err)?;
            Ok(rows
            .into_iter()
            .map(|r| DnssecKeyRow {
                zone: r.get(0),
                role: r.get(1),
                algorithm: u8::try_from(r.get::<i64, _>(2)).unwrap_or(0),
                flags: u16::try_from(r.get::<i64, _>(3)).unwrap_or(0),
                key_tag: u16::try_from(r.get::<i64, _>(4)).unwrap_or(0),
                public_key: r.get(5),
                private_key: r.get(6),
                encrypted: r.get::<i64, _>(7) != 0,
                created_unix: r.get(8),
            })
            .collect())
        })
    }

    /// Retires every active key of `zone` and stores `rows` as its active
    /// keys (DNSSEC key sync adopting a peer's newer keys).
    pub async fn replace_dnssec_keys(&self, zone: &str, rows: &[DnssecKeyRow]) -> Result<()> {
        const SQL: &str =
            "UPDATE dnssec_keys SET state = 'retired' WHERE zone = $1 AND state = 'active'";
        with_db!(&self.db, pool => sqlx::query(SQL)
            .bind(zone)
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(store_err))?;
        for r in rows {
            self.insert_dnssec_key(r).await?;
        }
        Ok(())
    }

    /// Stores a new active DNSSEC key.
    pub async fn insert_dnssec_key(&self, k: &DnssecKeyRow) -> Result<()> {
        const SQL: &str = "INSERT INTO dnssec_keys (zone, role, algorithm, flags, key_tag, public_key, private_key, encrypted, created_unix) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        with_db!(&self.db, pool => sqlx::query(SQL)
        .bind(&k.zone)
        .bind(&k.role)
        .bind(i64::from(k.algorithm))
        .bind(i64::from(k.flags))
        .bind(i64::from(k.key_tag))
        .bind(&k.public_key)
        .bind(&k.private_key)
        .bind(i64::from(k.encrypted))
        .bind(k.created_unix)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(store_err))?;
        Ok(())
    }
}

fn store_err(e: sqlx::Error) -> Error {
    Error::Store(e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;

mod agents;
mod rollover;
pub use rollover::RolloverRow;
