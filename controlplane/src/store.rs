//! The controlplane's persistent store (`sqlx`, SQLite under the data dir by
//! default). Migrations are the SQL files in `controlplane/migrations/`,
//! embedded at build time and applied in order on open; each applied version
//! is recorded in `schema_migrations`.

use std::{path::Path, str::FromStr};

use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
    Row, SqlitePool,
};

use crate::error::{Error, Result};

/// Embedded migrations: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/0001_init.sql"))];

/// Handle to the store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

// === impl Store ===

impl Store {
    /// Opens (creating if needed) the SQLite database at `url`
    /// (`sqlite://PATH` or a plain path) and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Err(Error::Store(
                "PostgreSQL stores are not supported by this build yet; use sqlite".into(),
            ));
        }
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
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| Error::Store(format!("{path}: {e}")))?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at_unix_ms INTEGER NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(store_err)?;
        for (version, sql) in MIGRATIONS {
            let done = sqlx::query("SELECT 1 FROM schema_migrations WHERE version = ?")
                .bind(version)
                .fetch_optional(&self.pool)
                .await
                .map_err(store_err)?;
            if done.is_some() {
                continue;
            }
            let mut tx = self.pool.begin().await.map_err(store_err)?;
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(store_err)?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, applied_at_unix_ms) VALUES (?, ?)",
            )
            .bind(version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(store_err)?;
            tx.commit().await.map_err(store_err)?;
            tracing::info!(version, "applied store migration");
        }
        Ok(())
    }

    /// Reads a `meta` value.
    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_err)?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    /// Writes a `meta` value.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(store_err)?;
        Ok(())
    }

    /// Appends an audit record.
    pub async fn audit(&self, actor: &str, source: &str, action: &str, detail: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at_unix_ms, actor, source, action, detail) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(now_ms())
        .bind(actor)
        .bind(source)
        .bind(action)
        .bind(detail)
        .execute(&self.pool)
        .await
        .map_err(store_err)?;
        Ok(())
    }

    /// Number of audit records (for status and tests).
    pub async fn audit_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM audit_log")
            .fetch_one(&self.pool)
            .await
            .map_err(store_err)?;
        Ok(row.get::<i64, _>(0))
    }
}

fn store_err(e: sqlx::Error) -> Error {
    Error::Store(e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn meta_and_audit_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db/opengslb.db").display());
        {
            let store = Store::open(&url).await.unwrap();
            assert_eq!(store.meta("soa_serial").await.unwrap(), None);
            store.set_meta("soa_serial", "7").await.unwrap();
            store.set_meta("soa_serial", "8").await.unwrap();
            store
                .audit("test", "127.0.0.1", "reload", "{}")
                .await
                .unwrap();
        }
        let store = Store::open(&url).await.unwrap();
        assert_eq!(
            store.meta("soa_serial").await.unwrap().as_deref(),
            Some("8")
        );
        assert_eq!(store.audit_count().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn postgres_is_a_clear_error() {
        let err = Store::open("postgres://x/y").await.unwrap_err().to_string();
        assert!(err.contains("PostgreSQL"), "{err}");
    }
}
