//! Pinned agent certificates (table `agent_pins`), see `crate::overwatch`.

use sqlx::Row;

use super::{store_err, AgentPinRow, Db, Store};
use crate::error::Result;

const COLUMNS: &str =
    "agent_id, fingerprint, region, services, revoked, pinned_at_unix_ms, updated_at_unix_ms";

/// An `agent_pins` row, columns in [`COLUMNS`] order (a macro: the row type
/// differs per engine).
macro_rules! pin_row {
    ($r:expr) => {
        AgentPinRow {
            agent_id: $r.get(0),
            fingerprint: $r.get(1),
            region: $r.get(2),
            services: $r.get(3),
            revoked: $r.get(4),
            pinned_at_unix_ms: $r.get(5),
            updated_at_unix_ms: $r.get(6),
        }
    };
}

impl Store {
    /// Every pinned agent, by id.
    pub async fn agent_pins(&self) -> Result<Vec<AgentPinRow>> {
        let sql = format!("SELECT {COLUMNS} FROM agent_pins ORDER BY agent_id");
        with_db!(&self.db, pool => Ok(sqlx::query(&sql)
            .fetch_all(pool)
            .await
            .map_err(store_err)?
            .iter()
            .map(|r| pin_row!(r))
            .collect()))
    }

    /// The pin of `agent_id`.
    pub async fn agent_pin(&self, agent_id: &str) -> Result<Option<AgentPinRow>> {
        let sql = format!("SELECT {COLUMNS} FROM agent_pins WHERE agent_id = $1");
        with_db!(&self.db, pool => Ok(sqlx::query(&sql)
            .bind(agent_id)
            .fetch_optional(pool)
            .await
            .map_err(store_err)?
            .as_ref()
            .map(|r| pin_row!(r))))
    }

    /// Pins `p.agent_id` to `p.fingerprint` unless it is pinned already;
    /// returns the row in force afterwards (the existing one when another
    /// controlplane sharing the store, or a racing connection, pinned first).
    pub async fn pin_agent(&self, p: &AgentPinRow) -> Result<AgentPinRow> {
        const SQL: &str = "INSERT INTO agent_pins (agent_id, fingerprint, region, services, revoked, pinned_at_unix_ms, updated_at_unix_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT(agent_id) DO NOTHING";
        with_db!(&self.db, pool => sqlx::query(SQL)
            .bind(&p.agent_id)
            .bind(&p.fingerprint)
            .bind(&p.region)
            .bind(&p.services)
            .bind(p.revoked)
            .bind(p.pinned_at_unix_ms)
            .bind(p.updated_at_unix_ms)
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(store_err))?;
        Ok(self
            .agent_pin(&p.agent_id)
            .await?
            .unwrap_or_else(|| p.clone()))
    }

    /// Replaces the pinned fingerprint of a non-revoked agent whose pin is
    /// `old` (certificate rotation); whether it was replaced.
    pub async fn rotate_agent_pin(
        &self,
        agent_id: &str,
        old: &str,
        new: &str,
        at_unix_ms: i64,
    ) -> Result<bool> {
        const SQL: &str = "UPDATE agent_pins SET fingerprint = $3, updated_at_unix_ms = $4 \
             WHERE agent_id = $1 AND fingerprint = $2 AND revoked = $5";
        let n = with_db!(&self.db, pool => sqlx::query(SQL)
            .bind(agent_id)
            .bind(old)
            .bind(new)
            .bind(at_unix_ms)
            .bind(false)
            .execute(pool)
            .await
            .map_err(store_err)?
            .rows_affected());
        Ok(n > 0)
    }

    /// Marks `agent_id` revoked; whether it was pinned.
    pub async fn revoke_agent(&self, agent_id: &str, at_unix_ms: i64) -> Result<bool> {
        const SQL: &str =
            "UPDATE agent_pins SET revoked = $2, updated_at_unix_ms = $3 WHERE agent_id = $1";
        let n = with_db!(&self.db, pool => sqlx::query(SQL)
            .bind(agent_id)
            .bind(true)
            .bind(at_unix_ms)
            .execute(pool)
            .await
            .map_err(store_err)?
            .rows_affected());
        Ok(n > 0)
    }
}
