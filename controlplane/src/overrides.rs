//! Manual health overrides: the one override system of the controlplane.
//!
//! An override forces the health of one server as a member of one service
//! (a load-balanced domain name): `(service, address)` where the address is
//! an IP (every port of that server) or `IP:port`. It outranks every other
//! signal — controlplane validation, agent claims, `health_check.type: none`
//! — because the snapshot compiler asks [`WithOverrides::overridden`] first
//! (DESIGN.md, "Health authority").
//!
//! Invariants: the store is written first and the in-memory map only after
//! the write succeeded, so what is served never runs ahead of what survives
//! a restart; writers are serialized, so the two never disagree in order.
//! The compiler reads one frozen `Arc<OverrideMap>` per compile.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use tokio::sync::Mutex;

use crate::{
    compile::{HealthView, ServerHealth},
    config::{DnsName, ServerRef},
    error::Result,
    server::State,
    store::{OverrideRow, Store},
};

/// Every override in force, by key.
pub type OverrideMap = BTreeMap<OverrideKey, OverrideRow>;

/// What identifies an override: a normalized service and address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OverrideKey {
    /// Domain name, lower-case, no final dot.
    pub service: String,
    /// Canonical `IP` or `IP:port` (`[v6]:port`).
    pub address: String,
}

/// Why an override key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOverride {
    /// The service is not a valid domain name.
    #[error("invalid service {0:?}: expected a domain name such as www.example.com")]
    Service(String),
    /// The address is neither an IP nor `IP:port`.
    #[error("invalid address {0:?}: expected an IP address or IP:port")]
    Address(String),
}

/// The overrides in force, backed by the store.
#[derive(Debug)]
pub struct Overrides {
    current: RwLock<Arc<OverrideMap>>,
    /// Serializes writers (store write + map swap).
    writer: Mutex<()>,
}

/// A health view with the overrides laid over it.
#[derive(Debug)]
pub struct WithOverrides<V> {
    /// The view of every other signal.
    pub inner: V,
    /// The overrides, frozen for this compile.
    pub overrides: Arc<OverrideMap>,
    /// `overrides` by service, with each target parsed: built once per
    /// view, so [`WithOverrides::lookup`] (asked per domain and server in
    /// every compile) neither formats nor allocates.
    index: HashMap<String, Vec<Target>>,
}

/// One override of a service, its address parsed.
#[derive(Debug)]
struct Target {
    ip: IpAddr,
    /// `None`: every port of `ip`.
    port: Option<u16>,
    row: OverrideRow,
}

// === impl OverrideKey ===

impl OverrideKey {
    /// Validates and normalizes `service` and `address`.
    pub fn parse(service: &str, address: &str) -> Result<Self, InvalidOverride> {
        let name = DnsName::parse(service.trim())
            .map_err(|_| InvalidOverride::Service(truncate(service)))?;
        let address = address.trim();
        let address = if let Ok(ip) = address.parse::<IpAddr>() {
            ip.to_string()
        } else if let Ok(sa) = address.parse::<SocketAddr>() {
            sa.to_string()
        } else {
            return Err(InvalidOverride::Address(truncate(address)));
        };
        Ok(Self {
            service: name.as_str().to_owned(),
            address,
        })
    }

    /// The IP and port (when the key names one).
    pub fn target(&self) -> Option<(IpAddr, Option<u16>)> {
        if let Ok(ip) = self.address.parse::<IpAddr>() {
            return Some((ip, None));
        }
        let sa = self.address.parse::<SocketAddr>().ok()?;
        Some((sa.ip(), Some(sa.port())))
    }
}

/// At most 64 characters of hostile input in an error.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

// === impl Overrides ===

impl Overrides {
    /// No overrides (tests, and before the store is read).
    pub fn empty() -> Self {
        Self {
            current: RwLock::new(Arc::new(OverrideMap::new())),
            writer: Mutex::new(()),
        }
    }

    /// The overrides kept in `store`.
    pub async fn load(store: &Store) -> Result<Self> {
        let this = Self::empty();
        this.replace(collect(store.overrides().await?));
        Ok(this)
    }

    /// The overrides now, frozen.
    pub fn current(&self) -> Arc<OverrideMap> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Number of overrides in force.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// Whether none is in force.
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// The override of `key`.
    pub fn get(&self, key: &OverrideKey) -> Option<OverrideRow> {
        self.current().get(key).cloned()
    }

    /// Sets (or replaces) an override: the store first, then memory. The
    /// caller publishes a new snapshot.
    pub async fn set(&self, store: &Store, row: OverrideRow) -> Result<()> {
        let _w = self.writer.lock().await;
        store.put_override(&row).await?;
        let key = OverrideKey {
            service: row.service.clone(),
            address: row.address.clone(),
        };
        let mut next = (*self.current()).clone();
        next.insert(key, row);
        self.replace(next);
        Ok(())
    }

    /// Deletes an override; whether one existed. The caller publishes.
    pub async fn delete(&self, store: &Store, key: &OverrideKey) -> Result<bool> {
        let _w = self.writer.lock().await;
        let existed = store.delete_override(&key.service, &key.address).await?;
        let mut next = (*self.current()).clone();
        let in_memory = next.remove(key).is_some();
        self.replace(next);
        Ok(existed || in_memory)
    }

    /// Re-reads the store (another controlplane sharing it may have changed
    /// it); whether anything changed.
    pub async fn refresh(&self, store: &Store) -> Result<bool> {
        let _w = self.writer.lock().await;
        let next = collect(store.overrides().await?);
        if *self.current() == next {
            return Ok(false);
        }
        self.replace(next);
        Ok(true)
    }

    fn replace(&self, next: OverrideMap) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
    }
}

/// How often a controlplane sharing a PostgreSQL store re-reads overrides
/// set through another controlplane.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// Follows overrides changed by other controlplanes sharing the store:
/// re-reads them every [`FOLLOW_EVERY`] and publishes when they changed. A
/// store error is logged; serving goes on with the overrides last read.
pub async fn follow(state: Arc<State>) {
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match state.overrides.refresh(&state.store).await {
            Ok(true) => {
                if let Err(e) = state.recompile("override").await {
                    tracing::error!(error = %e, "publishing shared overrides failed");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "re-reading shared overrides failed"),
        }
    }
}

fn collect(rows: Vec<OverrideRow>) -> OverrideMap {
    rows.into_iter()
        .map(|r| {
            (
                OverrideKey {
                    service: r.service.clone(),
                    address: r.address.clone(),
                },
                r,
            )
        })
        .collect()
}

// === impl WithOverrides ===

impl<V> WithOverrides<V> {
    /// `inner` with `overrides` laid over it.
    pub fn new(inner: V, overrides: Arc<OverrideMap>) -> Self {
        let mut index: HashMap<String, Vec<Target>> = HashMap::new();
        for (key, row) in overrides.iter() {
            // Keys are normalized when set; one that is not (a store edited
            // by hand) can match no server.
            let Some((ip, port)) = key.target() else {
                continue;
            };
            index.entry(key.service.clone()).or_default().push(Target {
                ip,
                port,
                row: row.clone(),
            });
        }
        Self {
            inner,
            overrides,
            index,
        }
    }

    /// The override of `address:port` for `service`: one naming the port
    /// wins over one naming only the IP. Allocation-free.
    pub fn lookup(&self, service: &str, address: IpAddr, port: u16) -> Option<&OverrideRow> {
        let targets = self.index.get(service)?;
        let mut any_port = None;
        for t in targets.iter().filter(|t| t.ip == address) {
            match t.port {
                Some(p) if p == port => return Some(&t.row),
                Some(_) => {}
                None => any_port = Some(&t.row),
            }
        }
        any_port
    }
}

impl<V: HealthView> HealthView for WithOverrides<V> {
    fn health(&self, server: &ServerRef<'_>) -> ServerHealth {
        self.inner.health(server)
    }

    fn unprobed(&self, server: &ServerRef<'_>) -> ServerHealth {
        self.inner.unprobed(server)
    }

    fn weight(&self, server: &ServerRef<'_>, configured: u32) -> u32 {
        self.inner.weight(server, configured)
    }

    fn registered(&self, domain: &DnsName) -> Vec<crate::compile::Registered> {
        self.inner.registered(domain)
    }

    fn latency(&self, server: &ServerRef<'_>) -> Option<crate::compile::LatencySample> {
        self.inner.latency(server)
    }

    fn overridden(&self, domain: &DnsName, server: &ServerRef<'_>) -> Option<ServerHealth> {
        self.lookup(domain.as_str(), server.address, server.port)
            .map(|o| {
                if o.healthy {
                    ServerHealth::UP
                } else {
                    ServerHealth::DOWN
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::AllHealthy;

    fn row(service: &str, address: &str, healthy: bool) -> OverrideRow {
        OverrideRow {
            service: service.into(),
            address: address.into(),
            healthy,
            reason: String::new(),
            source: "test".into(),
            authority: "test".into(),
            created_at_unix_ms: 0,
        }
    }

    #[test]
    fn keys_normalize_and_refuse_hostile_input() {
        let k = OverrideKey::parse("WWW.Example.COM.", " 192.0.2.1 ").unwrap();
        assert_eq!(k.service, "www.example.com");
        assert_eq!(k.address, "192.0.2.1");
        let k = OverrideKey::parse("a.test", "[2001:DB8::1]:8080").unwrap();
        assert_eq!(k.address, "[2001:db8::1]:8080");
        assert_eq!(
            k.target(),
            Some(("2001:db8::1".parse().unwrap(), Some(8080)))
        );
        for bad in [
            "../../etc/passwd",
            "a'; DROP TABLE overrides; --",
            "",
            "a..b",
        ] {
            assert!(matches!(
                OverrideKey::parse(bad, "192.0.2.1"),
                Err(InvalidOverride::Service(_))
            ));
        }
        for bad in ["192.0.2.300", "host:80", "", "1.2.3.4:99999"] {
            assert!(matches!(
                OverrideKey::parse("a.test", bad),
                Err(InvalidOverride::Address(_))
            ));
        }
    }

    #[test]
    fn override_outranks_and_port_specific_wins() {
        let mut map = OverrideMap::new();
        for r in [
            row("www.test", "192.0.2.1", false),
            row("www.test", "192.0.2.2:8080", false),
            row("www.test", "192.0.2.2", true),
        ] {
            map.insert(OverrideKey::parse(&r.service, &r.address).unwrap(), r);
        }
        let view = WithOverrides::new(AllHealthy, Arc::new(map));
        let www = DnsName::parse("www.test").unwrap();
        let other = DnsName::parse("api.test").unwrap();
        let server = |a: &str, port| ServerRef {
            region_index: 0,
            region: "r",
            server_index: 0,
            address: a.parse().unwrap(),
            port,
        };
        assert_eq!(
            view.overridden(&www, &server("192.0.2.1", 80)),
            Some(ServerHealth::DOWN)
        );
        assert_eq!(view.overridden(&other, &server("192.0.2.1", 80)), None);
        assert_eq!(
            view.overridden(&www, &server("192.0.2.2", 8080)),
            Some(ServerHealth::DOWN)
        );
        assert_eq!(
            view.overridden(&www, &server("192.0.2.2", 80)),
            Some(ServerHealth::UP)
        );
        assert_eq!(view.health(&server("192.0.2.1", 80)), ServerHealth::UP);
    }
}
