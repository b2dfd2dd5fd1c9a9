//! DNSSEC metrics (issue 6, point 10), read from the shared [`Dnssec`]
//! state when `/metrics` is scraped:
//!
//! - `opengslb_dnssec_enabled` — 1 when signing;
//! - `opengslb_dnssec_key_age_seconds{zone,key_tag}`;
//! - `opengslb_dnssec_signatures_total{zone}` — RRSIGs made (cache hits
//!   are not counted);
//! - `opengslb_dnssec_signing_latency_seconds` — duration of signing passes;
//! - `opengslb_dnssec_next_expiry_seconds{zone}` — seconds until the
//!   zone's earliest signature expires;
//! - `opengslb_dnssec_key_sync_success_total`,
//!   `opengslb_dnssec_key_sync_failures_total{peer}` — key sync polls;
//! - `opengslb_dnssec_rollover_phase{zone,phase}` — 1 per key rollover in
//!   progress, in its phase.
//!
//! Labels are bounded by the config: zones and their keys, configured peers.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use super::{presentation, unix_now, Dnssec};

/// The DNSSEC metrics as one Prometheus collector.
#[derive(Debug)]
pub struct DnssecCollector {
    dnssec: Dnssec,
    enabled: IntGauge,
    key_age: IntGaugeVec,
    signatures: IntCounterVec,
    latency: Histogram,
    next_expiry: IntGaugeVec,
    sync_success: IntCounter,
    sync_failures: IntCounterVec,
    rollover_phase: IntGaugeVec,
    descs: Vec<Desc>,
}

impl DnssecCollector {
    /// A collector over `dnssec`; signing passes are timed from now on.
    pub fn new(dnssec: Dnssec) -> Result<Self, prometheus::Error> {
        let enabled = IntGauge::new("opengslb_dnssec_enabled", "1 when DNSSEC signing is on.")?;
        let key_age = IntGaugeVec::new(
            Opts::new(
                "opengslb_dnssec_key_age_seconds",
                "Age of each DNSSEC key in force.",
            ),
            &["zone", "key_tag"],
        )?;
        let signatures = IntCounterVec::new(
            Opts::new(
                "opengslb_dnssec_signatures_total",
                "RRSIGs made (signatures reused from the cache are not counted).",
            ),
            &["zone"],
        )?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "opengslb_dnssec_signing_latency_seconds",
                "Duration of a signing pass over a compiled snapshot.",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
        )?;
        let next_expiry = IntGaugeVec::new(
            Opts::new(
                "opengslb_dnssec_next_expiry_seconds",
                "Seconds until the zone's earliest signature expires.",
            ),
            &["zone"],
        )?;
        let sync_success = IntCounter::new(
            "opengslb_dnssec_key_sync_success_total",
            "Successful key sync polls of peer controlplanes.",
        )?;
        let sync_failures = IntCounterVec::new(
            Opts::new(
                "opengslb_dnssec_key_sync_failures_total",
                "Failed key sync polls (unreachable, refused, malformed or older keys), by peer.",
            ),
            &["peer"],
        )?;
        let rollover_phase = IntGaugeVec::new(
            Opts::new(
                "opengslb_dnssec_rollover_phase",
                "1 for each zone with a key rollover in progress, labelled with its phase.",
            ),
            &["zone", "phase"],
        )?;
        let descs = [
            rollover_phase.desc(),
            enabled.desc(),
            key_age.desc(),
            signatures.desc(),
            latency.desc(),
            next_expiry.desc(),
            sync_success.desc(),
            sync_failures.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        dnssec.set_latency_histogram(latency.clone());
        Ok(Self {
            dnssec,
            enabled,
            key_age,
            signatures,
            latency,
            next_expiry,
            sync_success,
            sync_failures,
            rollover_phase,
            descs,
        })
    }
}

impl Collector for DnssecCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snap = self.dnssec.counters();
        let now = unix_now();
        self.enabled.set(i64::from(snap.enabled));
        self.key_age.reset();
        self.next_expiry.reset();
        for (apex, keys) in snap.keyring.zones() {
            let zone = presentation(apex);
            for k in keys {
                self.key_age
                    .with_label_values(&[zone.as_str(), &k.key_tag.to_string()])
                    .set(i64::try_from(now.saturating_sub(k.created_unix)).unwrap_or(i64::MAX));
            }
        }
        for (apex, expiry) in &snap.zone_next_expiry {
            if let Some(e) = expiry {
                self.next_expiry
                    .with_label_values(&[presentation(apex).as_str()])
                    .set(i64::try_from(*e).unwrap_or(i64::MAX) - i64::try_from(now).unwrap_or(0));
            }
        }
        for (zone, total) in &snap.signatures_total {
            let c = self.signatures.with_label_values(&[zone.as_str()]);
            c.inc_by(total.saturating_sub(c.get()));
        }
        self.sync_success
            .inc_by(snap.sync_success.saturating_sub(self.sync_success.get()));
        for (peer, total) in &snap.sync_failures {
            let c = self.sync_failures.with_label_values(&[peer.as_str()]);
            c.inc_by(total.saturating_sub(c.get()));
        }
        self.rollover_phase.reset();
        for (zone, phase) in self.dnssec.rollover_phases() {
            self.rollover_phase
                .with_label_values(&[zone.as_str(), phase.as_str()])
                .set(1);
        }
        let mut out = Vec::new();
        out.extend(self.rollover_phase.collect());
        out.extend(self.enabled.collect());
        out.extend(self.key_age.collect());
        out.extend(self.signatures.collect());
        out.extend(self.latency.collect());
        out.extend(self.next_expiry.collect());
        out.extend(self.sync_success.collect());
        out.extend(self.sync_failures.collect());
        out
    }
}
