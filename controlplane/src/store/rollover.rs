//! DNSSEC key rollovers (table `dnssec_rollovers`), see
//! `crate::dnssec::rollover`.

use sqlx::Row;

use super::{store_err, Db, Store};
use crate::error::Result;

const COLUMNS: &str = "id, zone, method, role, old_key_tag, new_key_tag, phase, started_unix, \
     phase_since_unix, next_unix, ds_published_unix";

/// One stored rollover. Also the `rollover` of a zone in the DNSSEC key-sync
/// export (`crate::dnssec::sync::ZoneExport`): there without its local
/// `id` and its `zone` (the export's zone says it), which are left out of
/// the JSON and read back as `0` and `""`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RolloverRow {
    /// Row id (0 before it is stored).
    #[serde(skip)]
    pub id: i64,
    /// Zone apex, lower-case, no final dot.
    #[serde(skip)]
    pub zone: String,
    /// `pre-publish` or `double-signature`.
    pub method: String,
    /// Role of the rolled key: `csk`, `ksk` or `zsk`.
    pub role: String,
    /// Tag of the key being replaced.
    pub old_key_tag: u16,
    /// Tag of the new key.
    pub new_key_tag: u16,
    /// Current phase.
    pub phase: String,
    /// When the rollover started, seconds since the epoch.
    pub started_unix: i64,
    /// When the current phase began.
    pub phase_since_unix: i64,
    /// When the current (timed) phase ends; 0 = it waits for the operator
    /// or the rollover is over.
    pub next_unix: i64,
    /// When the operator confirmed the new DS at the parent; 0 = not yet.
    pub ds_published_unix: i64,
}

/// A `dnssec_rollovers` row, columns in [`COLUMNS`] order.
macro_rules! rollover_row {
    ($r:expr) => {
        RolloverRow {
            id: $r.get(0),
            zone: $r.get(1),
            method: $r.get(2),
            role: $r.get(3),
            old_key_tag: u16::try_from($r.get::<i64, _>(4)).unwrap_or(0),
            new_key_tag: u16::try_from($r.get::<i64, _>(5)).unwrap_or(0),
            phase: $r.get(6),
            started_unix: $r.get(7),
            phase_since_unix: $r.get(8),
            next_unix: $r.get(9),
            ds_published_unix: $r.get(10),
        }
    };
}

impl Store {
    /// The latest rollover of `zone` (in progress or finished), if any.
    pub async fn dnssec_rollover(&self, zone: &str) -> Result<Option<RolloverRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM dnssec_rollovers WHERE zone = $1 ORDER BY id DESC LIMIT 1"
        );
        with_db!(&self.db, pool => {
            let row = sqlx::query(&sql)
                .bind(zone)
                .fetch_optional(pool)
                .await
                .map_err(store_err)?;
            Ok(row.map(|r| rollover_row!(r)))
        })
    }

    /// Stores a new rollover; returns its id.
    pub async fn insert_dnssec_rollover(&self, r: &RolloverRow) -> Result<i64> {
        const SQL: &str =
            "INSERT INTO dnssec_rollovers (zone, method, role, old_key_tag, new_key_tag, phase, \
             started_unix, phase_since_unix, next_unix, ds_published_unix) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id";
        with_db!(&self.db, pool => {
            let row = sqlx::query(SQL)
                .bind(&r.zone)
                .bind(&r.method)
                .bind(&r.role)
                .bind(i64::from(r.old_key_tag))
                .bind(i64::from(r.new_key_tag))
                .bind(&r.phase)
                .bind(r.started_unix)
                .bind(r.phase_since_unix)
                .bind(r.next_unix)
                .bind(r.ds_published_unix)
                .fetch_one(pool)
                .await
                .map_err(store_err)?;
            Ok(row.get::<i64, _>(0))
        })
    }

    /// Moves rollover `r.id` to `r`'s phase and timings, only if it is
    /// still in phase `from` (two controlplanes sharing a store advance it
    /// once). Returns whether it was updated.
    pub async fn update_dnssec_rollover(&self, r: &RolloverRow, from: &str) -> Result<bool> {
        const SQL: &str =
            "UPDATE dnssec_rollovers SET phase = $1, phase_since_unix = $2, next_unix = $3, \
             ds_published_unix = $4 WHERE id = $5 AND phase = $6";
        with_db!(&self.db, pool => sqlx::query(SQL)
            .bind(&r.phase)
            .bind(r.phase_since_unix)
            .bind(r.next_unix)
            .bind(r.ds_published_unix)
            .bind(r.id)
            .bind(from)
            .execute(pool)
            .await
            .map(|d| d.rows_affected() > 0)
            .map_err(store_err))
    }

    /// Retires the active key `key_tag` of `zone` (it leaves the DNSKEY
    /// RRset and signs no more). Returns whether a key was retired.
    pub async fn retire_dnssec_key(&self, zone: &str, key_tag: u16) -> Result<bool> {
        const SQL: &str = "UPDATE dnssec_keys SET state = 'retired' \
             WHERE zone = $1 AND key_tag = $2 AND state = 'active'";
        with_db!(&self.db, pool => sqlx::query(SQL)
            .bind(zone)
            .bind(i64::from(key_tag))
            .execute(pool)
            .await
            .map(|d| d.rows_affected() > 0)
            .map_err(store_err))
    }
}
