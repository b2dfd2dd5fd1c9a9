//! The controlplane's YAML configuration: strict serde types for every
//! section of the schema (see `docs/configuration.md`), the loader that
//! merges `includes:` and the semantic validation.
//!
//! Invariants: unknown keys are errors; every error names `file:line: key`;
//! a `Config` returned by [`load`] or [`parse`] has passed every semantic
//! check, so the snapshot compiler never meets an invalid value; relative
//! paths in it are already resolved against the config file's directory.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

mod duration;
mod error;
mod include;
mod lines;
mod name;
mod record;
mod validate;

#[cfg(test)]
mod tests;

pub use duration::{Duration, InvalidDuration};
pub use error::{ConfigError, ConfigIssue};
pub use name::{DnsName, InvalidName};
pub use record::{RecordData, RecordType};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Globs (relative to the file) of files whose `regions`, `domains` and
    /// `dns.zones` are appended to this file's. Already merged after loading.
    pub includes: Vec<String>,
    /// Log level and format.
    pub logging: LoggingConfig,
    /// The controlplane's Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Where dataplanes answer, default TTL, zones.
    pub dns: DnsConfig,
    /// Settings streamed to or read by dataplanes.
    pub dataplane: DataplaneConfig,
    /// Regions: groups of servers sharing one health check.
    pub regions: Vec<RegionConfig>,
    /// Load-balanced names.
    pub domains: Vec<DomainConfig>,
    /// REST API.
    pub api: ApiConfig,
    /// The controlplane itself.
    pub overwatch: OverwatchConfig,
    /// Read by `opengslb-agent` only.
    pub agent: Option<AgentConfig>,
    /// OpenGSLB v0.6's gossip section: accepted by the parser only so that
    /// validation can refuse it with a pointer to the migration guide.
    gossip: Option<IgnoredAny>,
}

/// `logging:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// Minimum level.
    pub level: LogLevel,
    /// Output format.
    pub format: LogFormat,
}

/// `logging.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Debug and above.
    Debug,
    /// Info and above (default).
    #[default]
    Info,
    /// Warnings and errors.
    Warn,
    /// Errors only.
    Error,
}

/// `logging.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (default).
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// `metrics:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Listen address (default `127.0.0.1:9090`).
    pub address: SocketAddr,
}

/// `dns:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Where every dataplane answers, UDP and TCP (default `0.0.0.0:53`).
    pub listen_address: SocketAddr,
    /// TTL of answers whose domain or record sets none (default 60).
    pub default_ttl: u32,
    /// Authoritative zones.
    pub zones: Vec<ZoneConfig>,
}

/// One item of `dns.zones`: a plain name or a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The apex.
    pub name: DnsName,
    /// SOA fields; unset ones take defaults (see [`ZoneConfig::soa`]).
    pub soa: SoaConfig,
    /// Apex NS names; empty means `[ns1.<zone>]`.
    pub ns: Vec<DnsName>,
    /// Static records served as they are.
    pub records: Vec<RecordConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneMap {
    name: DnsName,
    #[serde(default)]
    soa: SoaConfig,
    #[serde(default)]
    ns: Vec<DnsName>,
    #[serde(default)]
    records: Vec<RecordConfig>,
}

/// `dns.zones[].soa`: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoaConfig {
    /// Primary name server (default `ns1.<zone>`).
    pub mname: Option<DnsName>,
    /// Responsible mailbox as a name (default `hostmaster.<zone>`).
    pub rname: Option<DnsName>,
    /// Default 3600.
    pub refresh: Option<u32>,
    /// Default 600.
    pub retry: Option<u32>,
    /// Default 604800.
    pub expire: Option<u32>,
    /// Default `dns.default_ttl`.
    pub minimum: Option<u32>,
    /// TTL of the SOA and NS RRsets (default 3600).
    pub ttl: Option<u32>,
}

/// SOA values with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soa {
    /// Primary name server.
    pub mname: DnsName,
    /// Responsible mailbox.
    pub rname: DnsName,
    /// Refresh interval, seconds.
    pub refresh: u32,
    /// Retry interval, seconds.
    pub retry: u32,
    /// Expire, seconds.
    pub expire: u32,
    /// Negative-caching TTL bound.
    pub minimum: u32,
    /// TTL of the SOA and NS RRsets.
    pub ttl: u32,
}

/// `dns.zones[].records[]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// Owner name, inside the zone.
    pub name: DnsName,
    /// Record type.
    #[serde(rename = "type")]
    pub rtype: RecordType,
    /// Value in presentation form (see [`RecordType::parse_value`]).
    pub value: String,
    /// TTL (default `dns.default_ttl`).
    #[serde(default)]
    pub ttl: Option<u32>,
}

/// `dataplane:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataplaneConfig {
    /// UDP worker threads; 0 = one per CPU.
    pub workers: usize,
    /// Snapshot stream endpoints (`host:port`).
    pub controlplanes: Vec<String>,
    /// Where the last good snapshot is cached.
    pub cache_dir: PathBuf,
    /// Dataplane `/metrics` (null = off).
    pub metrics_address: Option<SocketAddr>,
    /// Largest UDP payload sent to EDNS clients.
    pub edns_udp_size: u16,
    /// TCP limits.
    pub tcp: TcpConfig,
    /// Response rate limiting.
    pub rrl: RrlConfig,
    /// DNS cookies (RFC 7873).
    pub cookies: CookiesConfig,
}

/// `dataplane.tcp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpConfig {
    /// Close a connection idle this long.
    pub idle_timeout: Duration,
    /// Give up on one message (first octet to last) or one write after this long.
    pub io_timeout: Duration,
    /// Concurrent connections per dataplane.
    pub max_connections: usize,
    /// Concurrent connections per TCP worker; 0 = `max_connections`.
    pub max_connections_per_worker: usize,
    /// Replies queued per connection before they must be written.
    pub max_output_bytes: usize,
    /// Past this share of a cap (percent), a new connection gets one query.
    pub one_shot_percent: u8,
}

/// `dataplane.rrl`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RrlConfig {
    /// On by default.
    pub enabled: bool,
    /// Per client network.
    pub responses_per_second: u32,
    /// IPv4 client network prefix.
    pub ipv4_prefix: u8,
    /// IPv6 client network prefix.
    pub ipv6_prefix: u8,
    /// Every n-th limited response goes out truncated (0 = none).
    pub slip: u32,
    /// Accounting window.
    pub window: Duration,
    /// Networks never limited.
    pub exempt: Vec<IpNet>,
    /// Log a limited network at most once per this long (0 = never).
    pub log_interval: Duration,
}

/// `dataplane.cookies`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CookiesConfig {
    /// On by default.
    pub enabled: bool,
    /// Server secret file.
    pub secret_file: PathBuf,
    /// Secret rotation period.
    pub rotate: Duration,
}

/// `regions[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Unique name.
    pub name: String,
    /// ISO-3166 alpha-2 country codes served by this region (geolocation).
    #[serde(default)]
    pub countries: Vec<String>,
    /// Continent codes (AF AN AS EU NA OC SA).
    #[serde(default)]
    pub continents: Vec<String>,
    /// Geolocation: regions tried in order when this one has no healthy server.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Backends.
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
    /// One check for every server of the region.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
}

/// `regions[].servers[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// IP address answered and probed.
    pub address: IpAddr,
    /// Port probed (default 80).
    #[serde(default = "default_port")]
    pub port: u16,
    /// 0–1000 (default 100).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// When set, the server serves only the domain of this name.
    #[serde(default)]
    pub service: Option<String>,
    /// Host header / SNI for its checks.
    #[serde(default)]
    pub host: Option<String>,
}

/// `health_check`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Probe kind.
    #[serde(rename = "type")]
    pub kind: HealthCheckType,
    /// HTTP(S) path.
    pub path: String,
    /// Time between probes.
    pub interval: Duration,
    /// Probe timeout, < interval.
    pub timeout: Duration,
    /// Consecutive failures before unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes before healthy.
    pub success_threshold: u32,
    /// Host header and SNI.
    pub host: Option<String>,
    /// Accepted status codes; empty = any 2xx.
    pub expected_status: Vec<u16>,
    /// Body must contain this.
    pub body_contains: Option<String>,
    /// Verify the server certificate (https).
    pub tls_verify: bool,
}

/// `health_check.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckType {
    /// HTTP GET (default).
    #[default]
    Http,
    /// HTTPS GET.
    Https,
    /// TCP connect.
    Tcp,
    /// Never probed, always healthy.
    None,
}

/// `domains[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    /// The load-balanced name.
    pub name: DnsName,
    /// Policy (default round-robin).
    #[serde(default)]
    pub routing_algorithm: RoutingAlgorithm,
    /// Regions whose servers answer for it.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Answer TTL (default `dns.default_ttl`).
    #[serde(default)]
    pub ttl: Option<u32>,
    /// Records per answer (default all for round-robin, 1 otherwise).
    #[serde(default)]
    pub max_answers: Option<u32>,
    /// What to answer when no server is healthy.
    #[serde(default)]
    pub when_all_down: WhenAllDownConfig,
    /// Failover hold-down before returning to the primary.
    #[serde(default)]
    pub failback_delay: Duration,
    /// Longest ECS IPv4 prefix used.
    #[serde(default = "default_ecs_v4")]
    pub ecs_max_prefix_v4: u8,
    /// Longest ECS IPv6 prefix used.
    #[serde(default = "default_ecs_v6")]
    pub ecs_max_prefix_v6: u8,
    /// Latency policy tuning.
    #[serde(default)]
    pub latency_config: Option<LatencyConfig>,
    /// Geolocation: how a region's healthy servers are chosen.
    #[serde(default)]
    pub region_selection: RegionSelection,
}

/// `domains[].region_selection`: how the geolocation policy chooses among
/// the healthy servers of the client's region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegionSelection {
    /// Every healthy server of the region, rotated (the default).
    #[default]
    RoundRobin,
    /// A draw by server `weight` (weight 0: never answered).
    Weighted,
}

/// `domains[].routing_algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum RoutingAlgorithm {
    /// `round-robin` (`roundrobin`, `rr`); the default.
    #[default]
    RoundRobin,
    /// `weighted` (`weight`).
    Weighted,
    /// `failover` (`active-standby`).
    Failover,
    /// `geolocation` (`geo`).
    Geolocation,
    /// `latency`.
    Latency,
}

/// `domains[].when_all_down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenAllDownConfig {
    /// SERVFAIL (default, as OpenGSLB).
    #[default]
    Servfail,
    /// Fail open: answer with every server.
    All,
    /// Answer with the servers last known healthy.
    LastHealthy,
}

/// `domains[].latency_config`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyConfig {
    /// EWMA factor, 0 < α ≤ 1.
    pub smoothing_factor: f64,
    /// Servers slower than this are skipped.
    pub max_latency_ms: u32,
    /// Samples needed before a server is ranked.
    pub min_samples: u32,
    /// Servers within this of the fastest count as equal.
    pub tolerance_ms: u32,
}

/// `api:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the REST API.
    pub enabled: bool,
    /// Listen address (default `127.0.0.1:8080`).
    pub address: SocketAddr,
    /// Client networks allowed.
    pub allowed_networks: Vec<IpNet>,
    /// Take the client address from X-Forwarded-For.
    pub trust_proxy_headers: bool,
    /// Bearer token file required for changes.
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain: serve the REST API over TLS (with
    /// `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Most REST connections at once, TLS handshakes included (default
    /// 512); more are closed at once and counted.
    pub max_connections: usize,
}

/// `overwatch:`, the controlplane.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverwatchConfig {
    /// Who this controlplane is.
    pub identity: IdentityConfig,
    /// Snapshot stream and admin gRPC (default `127.0.0.1:9443`).
    pub grpc_address: SocketAddr,
    /// Agent listener (default `0.0.0.0:7946`).
    pub agent_listen: SocketAddr,
    /// State directory (default `/var/lib/opengslb`).
    pub data_dir: PathBuf,
    /// Store location.
    pub store: StoreConfig,
    /// Pre-shared agent tokens, per service.
    pub agent_tokens: BTreeMap<String, String>,
    /// External validation of backends.
    pub validation: ValidationConfig,
    /// Agents that stop sending heartbeats.
    pub stale: StaleConfig,
    /// Most connections open at once on `agent_listen`, TLS handshakes
    /// included (default 8192); more are closed at once and counted.
    pub max_agent_connections: usize,
    /// GeoIP.
    pub geolocation: GeolocationConfig,
    /// DNSSEC signing.
    pub dnssec: DnssecConfig,
}

/// `overwatch.identity`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Node id, carried as `Snapshot.origin` (default `overwatch`).
    pub node_id: String,
    /// Region this controlplane runs in.
    pub region: Option<String>,
}

/// `overwatch.store`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://…` or `postgres://…`; unset = SQLite under `data_dir`.
    pub url: Option<String>,
}

/// `overwatch.validation`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Probe backends from the controlplane.
    pub enabled: bool,
    /// Time between probes.
    pub check_interval: Duration,
    /// Probe timeout, < interval.
    pub check_timeout: Duration,
}

/// `overwatch.stale`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaleConfig {
    /// A backend without heartbeat this long is stale.
    pub threshold: Duration,
    /// A stale backend is forgotten after this long.
    pub remove_after: Duration,
}

/// `overwatch.geolocation`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeolocationConfig {
    /// GeoIP2/GeoLite2 country database.
    pub database_path: Option<PathBuf>,
    /// Region for clients no range matches.
    pub default_region: Option<String>,
    /// Use EDNS Client Subnet.
    pub ecs_enabled: bool,
    /// CIDR → region overrides.
    pub custom_mappings: Vec<CustomMappingConfig>,
    /// How often the database file is checked for a change.
    pub database_poll_interval: Duration,
}

/// `overwatch.geolocation.custom_mappings[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomMappingConfig {
    /// Client network.
    pub cidr: IpNet,
    /// Region it maps to.
    pub region: String,
    /// Free text.
    #[serde(default)]
    pub comment: Option<String>,
}

/// `overwatch.dnssec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnssecConfig {
    /// On unless acknowledged off.
    pub enabled: bool,
    /// Required, non-empty, to turn DNSSEC off (OpenGSLB's key).
    pub security_acknowledgment: Option<String>,
    /// Signing algorithm.
    pub algorithm: DnssecAlgorithm,
    /// RRSIG lifetime.
    pub signature_validity: Duration,
    /// Re-sign this long before expiry, < signature_validity.
    pub refresh_before: Duration,
    /// Key sync between controlplanes.
    pub key_sync: Option<KeySyncConfig>,
    /// Separate KSK (flags 257) and ZSK (256) instead of one combined
    /// signing key (CSK, flags 257).
    pub split_keys: bool,
    /// File holding a 256-bit key (64 hex digits or base64) that encrypts
    /// private keys at rest (AES-256-GCM); unset = stored plainly, with a
    /// start-up warning.
    pub key_encryption_key_file: Option<PathBuf>,
    /// Authenticated denial: NSEC (default) or NSEC3 (RFC 9276 parameters).
    pub denial: DnssecDenial,
    /// Key rollover timings (`opengslb dnssec rollover`).
    pub rollover: RolloverConfig,
}

/// `overwatch.dnssec.rollover`: what a key rollover adds to the TTLs it
/// waits for (see `crate::dnssec::rollover`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloverConfig {
    /// Added to every wait: time for a new snapshot to reach every
    /// dataplane and for secondary servers/caches to catch up.
    pub propagation_delay: Duration,
    /// TTL of the DS RRset in the parent zone (the registrar's); the old
    /// key of a CSK/KSK rollover goes this long (+ delay) after the new DS
    /// was published.
    pub parent_ds_ttl: Duration,
}

/// `overwatch.dnssec.denial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnssecDenial {
    /// NSEC over the zone's owner names (RFC 4034).
    #[default]
    Nsec,
    /// NSEC3, SHA-1, 0 extra iterations, empty salt, no opt-out (RFC 5155,
    /// RFC 9276).
    Nsec3,
}

/// `overwatch.dnssec.algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum DnssecAlgorithm {
    /// ECDSA P-256 / SHA-256, algorithm 13 (default).
    #[default]
    #[serde(rename = "ECDSAP256SHA256")]
    EcdsaP256Sha256,
    /// Ed25519, algorithm 15.
    #[serde(rename = "ED25519")]
    Ed25519,
}

/// `overwatch.dnssec.key_sync`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySyncConfig {
    /// Other controlplanes' API URLs.
    pub peers: Vec<String>,
    /// Poll period.
    pub poll_interval: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// File holding the bearer token this controlplane presents to its
    /// peers' REST APIs (`TOKEN` or `NAME:TOKEN`, the peer's `api.token_file`
    /// format); required when `peers` is not empty. The token is never
    /// sent: it keys the sealed key-sync protocol.
    pub token_file: Option<PathBuf>,
    /// PEM CA file that verifies `https://` peers (default: the webpki
    /// roots).
    pub ca_file: Option<PathBuf>,
}

/// `agent:`, read by `opengslb-agent`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Credentials.
    pub identity: AgentIdentityConfig,
    /// Controlplane agent endpoints (`host:port`).
    pub controlplanes: Vec<String>,
    /// Local backends.
    pub backends: Vec<AgentBackendConfig>,
    /// Heartbeats.
    pub heartbeat: HeartbeatConfig,
    /// Predictive draining.
    pub predictive: PredictiveConfig,
}

/// `agent.identity`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentIdentityConfig {
    /// Pre-shared token (≥ 16 characters).
    pub service_token: String,
    /// Region of this agent.
    pub region: Option<String>,
    /// Agent certificate (created on first start).
    pub cert_path: Option<PathBuf>,
    /// Agent private key.
    pub key_path: Option<PathBuf>,
    /// PEM CA file that signs the controlplanes' agent-listener
    /// certificates; unset = pin each controlplane's certificate on first
    /// contact.
    pub controlplane_ca: Option<PathBuf>,
}

/// `agent.backends[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentBackendConfig {
    /// Domain (service) it serves.
    pub service: String,
    /// Backend address.
    pub address: IpAddr,
    /// Backend port.
    pub port: u16,
    /// 0–1000 (default 100).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Local check.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
}

/// `agent.heartbeat`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Period.
    pub interval: Duration,
    /// Missed heartbeats before the controlplane calls the agent stale.
    pub missed_threshold: u32,
}

/// `agent.predictive`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PredictiveConfig {
    /// Off unless enabled.
    pub enabled: bool,
    /// Sampling period.
    pub check_interval: Duration,
    /// CPU percent.
    pub cpu: ThresholdConfig,
    /// Memory percent.
    pub memory: ThresholdConfig,
    /// Error-rate percent.
    pub error_rate: ErrorRateConfig,
}

/// A percentage threshold and how long to bleed traffic once crossed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    /// Percent.
    pub threshold: f64,
    /// Drain period.
    #[serde(default = "default_bleed")]
    pub bleed_duration: Duration,
}

/// `agent.predictive.error_rate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorRateConfig {
    /// Percent.
    pub threshold: f64,
    /// Measurement window.
    pub window: Duration,
    /// Drain period.
    pub bleed_duration: Duration,
    /// A local `http://HOST:PORT/PATH` the agent polls every
    /// `check_interval` for `{"requests": N, "errors": M}` (cumulative
    /// counters); when set, the error rate is `Δerrors / Δrequests` over
    /// `window` instead of the backends' failed checks.
    pub endpoint: Option<String>,
}

/// Identifies one configured server, for the health hook of the compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerRef<'a> {
    /// Index into `Config::regions`.
    pub region_index: usize,
    /// The region's name.
    pub region: &'a str,
    /// Index into the region's `servers`.
    pub server_index: usize,
    /// Address.
    pub address: IpAddr,
    /// Port.
    pub port: u16,
}

/// Loads, merges `includes:` and validates the config at `path`. The file
/// must not be readable by other users (it may hold secrets).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    include::check_main_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Like [`load`], with the main file's text given; `file` names it in errors
/// and anchors relative paths and `includes:` globs.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    include::load_all(text, file)
}

fn default_port() -> u16 {
    80
}

fn default_weight() -> u32 {
    100
}

fn default_ecs_v4() -> u8 {
    24
}

fn default_ecs_v6() -> u8 {
    56
}

fn default_bleed() -> Duration {
    Duration::from_secs(30)
}

fn addr(s: &str) -> SocketAddr {
    // Only called with literals below.
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn net(s: &str) -> Option<IpNet> {
    s.parse().ok()
}

// === impl Config ===

impl Config {
    /// The [`ServerRef`] of server `si` of region `ri` (both in range).
    pub fn server_ref(&self, ri: usize, si: usize) -> ServerRef<'_> {
        let region = &self.regions[ri];
        let server = &region.servers[si];
        ServerRef {
            region_index: ri,
            region: &region.name,
            server_index: si,
            address: server.address,
            port: server.port,
        }
    }

    /// Whether the file has OpenGSLB's `gossip:` section (refused).
    pub(crate) fn has_gossip(&self) -> bool {
        self.gossip.is_some()
    }

    /// Index of the zone `name` belongs to: the longest apex it lies in.
    pub fn zone_of(&self, name: &DnsName) -> Option<usize> {
        self.dns
            .zones
            .iter()
            .enumerate()
            .filter(|(_, z)| name.is_in(&z.name))
            .max_by_key(|(_, z)| z.name.label_count())
            .map(|(i, _)| i)
    }

    /// Index of the region called `name`.
    pub fn region_index(&self, name: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.name == name)
    }

    /// Resolves relative paths against `dir`.
    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.dataplane.cache_dir);
        fix(&mut self.dataplane.cookies.secret_file);
        fix(&mut self.overwatch.data_dir);
        if let Some(p) = &mut self.overwatch.geolocation.database_path {
            fix(p);
        }
        if let Some(p) = &mut self.api.token_file {
            fix(p);
        }
        for p in [&mut self.api.tls_cert_file, &mut self.api.tls_key_file]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        if let Some(ks) = &mut self.overwatch.dnssec.key_sync {
            for p in [&mut ks.token_file, &mut ks.ca_file].into_iter().flatten() {
                fix(p);
            }
        }
        if let Some(agent) = &mut self.agent {
            if let Some(p) = &mut agent.identity.cert_path {
                fix(p);
            }
            if let Some(p) = &mut agent.identity.key_path {
                fix(p);
            }
            if let Some(p) = &mut agent.identity.controlplane_ca {
                fix(p);
            }
        }
    }
}

// === impl ZoneConfig ===

impl ZoneConfig {
    /// A zone with every default.
    pub fn new(name: DnsName) -> Self {
        Self {
            name,
            soa: SoaConfig::default(),
            ns: Vec::new(),
            records: Vec::new(),
        }
    }

    /// The SOA with defaults applied; `default_ttl` is `dns.default_ttl`.
    pub fn soa(&self, default_ttl: u32) -> Soa {
        let under = |label: &str| {
            DnsName::parse(&format!("{label}.{}", self.name)).unwrap_or_else(|_| self.name.clone())
        };
        Soa {
            mname: self.soa.mname.clone().unwrap_or_else(|| under("ns1")),
            rname: self
                .soa
                .rname
                .clone()
                .unwrap_or_else(|| under("hostmaster")),
            refresh: self.soa.refresh.unwrap_or(3600),
            retry: self.soa.retry.unwrap_or(600),
            expire: self.soa.expire.unwrap_or(604_800),
            minimum: self.soa.minimum.unwrap_or(default_ttl),
            ttl: self.soa.ttl.unwrap_or(3600),
        }
    }

    /// The apex NS names, `[ns1.<zone>]` when none are configured.
    pub fn ns_names(&self) -> Vec<DnsName> {
        if !self.ns.is_empty() {
            return self.ns.clone();
        }
        DnsName::parse(&format!("ns1.{}", self.name))
            .map(|n| vec![n])
            .unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for ZoneConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ZoneVisitor;

        impl<'de> Visitor<'de> for ZoneVisitor {
            type Value = ZoneConfig;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a zone name or a map with name, soa, ns, records")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ZoneConfig, E> {
                DnsName::parse(v).map(ZoneConfig::new).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ZoneConfig, A::Error> {
                let m = ZoneMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ZoneConfig {
                    name: m.name,
                    soa: m.soa,
                    ns: m.ns,
                    records: m.records,
                })
            }
        }

        deserializer.deserialize_any(ZoneVisitor)
    }
}

// === impl ServerConfig ===

impl ServerConfig {
    /// Whether this server answers for `domain`: a server without `service`
    /// serves every domain of its regions; with one, only that domain.
    pub fn serves(&self, domain: &DnsName) -> bool {
        match self.service.as_deref().map(str::trim) {
            None | Some("") => true,
            Some(s) => DnsName::parse(s).is_ok_and(|s| &s == domain),
        }
    }
}

// === impl RoutingAlgorithm ===

impl TryFrom<String> for RoutingAlgorithm {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Ok(match s.as_str() {
            "round-robin" | "roundrobin" | "rr" => Self::RoundRobin,
            "weighted" | "weight" => Self::Weighted,
            "failover" | "active-standby" => Self::Failover,
            "geolocation" | "geo" => Self::Geolocation,
            "latency" => Self::Latency,
            _ => {
                return Err(format!(
                    "unknown routing algorithm {s:?} (expected round-robin, weighted, \
                     failover, geolocation, latency or an alias)"
                ))
            }
        })
    }
}

// === Defaults ===

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: addr("127.0.0.1:9090"),
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen_address: addr("0.0.0.0:53"),
            default_ttl: 60,
            zones: Vec::new(),
        }
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            controlplanes: vec!["127.0.0.1:9443".to_owned()],
            cache_dir: PathBuf::from("/var/lib/opengslb/dataplane"),
            metrics_address: Some(addr("127.0.0.1:9091")),
            edns_udp_size: 1232,
            tcp: TcpConfig::default(),
            rrl: RrlConfig::default(),
            cookies: CookiesConfig::default(),
        }
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_millis(500),
            max_connections: 1024,
            max_connections_per_worker: 0,
            max_output_bytes: 65_536,
            one_shot_percent: 90,
        }
    }
}

impl Default for RrlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            responses_per_second: 50,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            slip: 2,
            window: Duration::from_secs(15),
            exempt: ["127.0.0.0/8", "::1/128"]
                .into_iter()
                .filter_map(net)
                .collect(),
            log_interval: Duration::from_secs(60),
        }
    }
}

impl Default for CookiesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            secret_file: PathBuf::from("/var/lib/opengslb/cookie.secret"),
            rotate: Duration::from_secs(24 * 3600),
        }
    }
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            kind: HealthCheckType::Http,
            path: "/health".to_owned(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            failure_threshold: 3,
            success_threshold: 2,
            host: None,
            expected_status: Vec::new(),
            body_contains: None,
            tls_verify: true,
        }
    }
}

impl Default for LatencyConfig {
    fn default() -> Self {
        Self {
            smoothing_factor: 0.3,
            max_latency_ms: 500,
            min_samples: 3,
            tolerance_ms: 5,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: addr("127.0.0.1:8080"),
            allowed_networks: ["127.0.0.1/32", "::1/128"]
                .into_iter()
                .filter_map(net)
                .collect(),
            trust_proxy_headers: false,
            token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            max_connections: 512,
        }
    }
}

impl Default for OverwatchConfig {
    fn default() -> Self {
        Self {
            identity: IdentityConfig::default(),
            grpc_address: addr("127.0.0.1:9443"),
            agent_listen: addr("0.0.0.0:7946"),
            data_dir: PathBuf::from("/var/lib/opengslb"),
            store: StoreConfig::default(),
            agent_tokens: BTreeMap::new(),
            validation: ValidationConfig::default(),
            stale: StaleConfig::default(),
            max_agent_connections: 8192,
            geolocation: GeolocationConfig::default(),
            dnssec: DnssecConfig::default(),
        }
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            node_id: "overwatch".to_owned(),
            region: None,
        }
    }
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            check_interval: Duration::from_secs(30),
            check_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for StaleConfig {
    fn default() -> Self {
        Self {
            threshold: Duration::from_secs(30),
            remove_after: Duration::from_secs(300),
        }
    }
}

impl Default for GeolocationConfig {
    fn default() -> Self {
        Self {
            database_path: None,
            default_region: None,
            ecs_enabled: true,
            custom_mappings: Vec::new(),
            database_poll_interval: Duration::from_secs(5),
        }
    }
}

impl Default for DnssecConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            security_acknowledgment: None,
            algorithm: DnssecAlgorithm::default(),
            signature_validity: Duration::from_secs(14 * 86_400),
            refresh_before: Duration::from_secs(7 * 86_400),
            key_sync: None,
            split_keys: false,
            key_encryption_key_file: None,
            denial: DnssecDenial::Nsec,
            rollover: RolloverConfig::default(),
        }
    }
}

impl Default for RolloverConfig {
    fn default() -> Self {
        Self {
            propagation_delay: Duration::from_secs(3600),
            parent_ds_ttl: Duration::from_secs(86_400),
        }
    }
}

impl Default for KeySyncConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            poll_interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(30),
            token_file: None,
            ca_file: None,
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            missed_threshold: 3,
        }
    }
}

impl Default for PredictiveConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            check_interval: Duration::from_secs(10),
            cpu: ThresholdConfig {
                threshold: 90.0,
                bleed_duration: default_bleed(),
            },
            memory: ThresholdConfig {
                threshold: 85.0,
                bleed_duration: default_bleed(),
            },
            error_rate: ErrorRateConfig::default(),
        }
    }
}

/// Splits `http://HOST[:PORT][/PATH]` (the agent's error-rate endpoint)
/// into `HOST:PORT` (port 80 when absent) and the path (`/` when absent).
pub fn parse_local_http_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url:?}: expected http://HOST:PORT/PATH (plain HTTP to a local endpoint)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.chars().any(char::is_whitespace) {
        return Err(format!("{url:?}: expected http://HOST:PORT/PATH"));
    }
    let has_port = if authority.starts_with('[') {
        authority.contains("]:")
    } else {
        authority.contains(':')
    };
    let hostport = if has_port {
        let (host, port) = authority.rsplit_once(':').unwrap_or((authority, ""));
        if host.is_empty() || !port.parse::<u16>().is_ok_and(|p| p != 0) {
            return Err(format!("{url:?}: invalid port in {authority:?}"));
        }
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((hostport, path.to_owned()))
}

impl Default for ErrorRateConfig {
    fn default() -> Self {
        Self {
            threshold: 10.0,
            window: Duration::from_secs(60),
            bleed_duration: default_bleed(),
            endpoint: None,
        }
    }
}
