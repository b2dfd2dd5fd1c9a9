//! Response rate limiting (RRL), as BIND and Knot do it, per UDP worker.
//!
//! Each worker owns one [`Rrl`]: a fixed power-of-two table of token
//! buckets keyed by a hash of (client network, response kind). Nothing is
//! shared between workers and nothing grows: a flood from random spoofed
//! sources only overwrites buckets, so memory is [`TABLE`] × 32 octets per
//! worker whatever arrives. A colliding key takes a slot over with a fresh
//! bucket only if the owner is not limited (its balance, refilled to now, is
//! not negative); a limited owner keeps its slot and the newcomer is charged
//! to it until the debt is paid back, so a flood of random sources cannot
//! evict an offender into freedom (a legitimate client that collides with an
//! offender, one chance in [`TABLE`], is limited with it and gets the
//! `slip`-ped TC=1 replies, so it retries over TCP). The kernel spreads a client over workers by its 4-tuple, so the
//! effective limit per network is at most `responses_per_second` × workers
//! for a client that varies its source port; a spoofed flood from one port
//! lands on one worker.
//!
//! One response: the reply's header gives its kind ([`Kind`]); the client's
//! network (address masked to `ipv4_prefix`/`ipv6_prefix`) and the kind pick
//! a bucket; the bucket earns `responses_per_second` per second (in
//! milli-responses, so the clock can tick in milliseconds), capped at one
//! second's worth, and pays one response. While its balance is negative the
//! response is limited; the balance may sink to `window` seconds of debt, so
//! a network that flooded stays limited until it has been quiet for a while
//! (the `window` of BIND). A limited response is dropped, except every
//! `slip`-th one, which goes out as header + question with TC=1 and AA so a
//! real resolver behind a spoofed network retries over TCP.
//!
//! Exempt networks (loopback by default) never reach the table.
//!
//! Logging is bounded: a bucket that starts limiting records a [`LimitLog`]
//! at most once per `log_interval` (per network and kind), and a worker
//! emits at most [`LOG_LINES_PER_INTERVAL`] such lines per interval, counting
//! the ones it suppressed, so a flood from random networks cannot turn into
//! a log flood. Nothing is logged per query.

use std::net::IpAddr;

use crate::settings::RrlSettings;

// === constants ===

/// Buckets per worker (a power of two).
pub const TABLE: usize = 1 << 13;

/// Milli-responses per response.
const UNIT: i64 = 1000;

/// Most "network limited" log lines one worker writes per `log_interval`.
pub const LOG_LINES_PER_INTERVAL: u32 = 16;

// === types ===

/// What RRL decided for one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the reply as it is.
    Send,
    /// Send a truncated reply instead (header + question, TC=1, AA).
    Slip,
    /// Send nothing.
    Drop,
}

/// Response kinds counted apart (RRL counts answers, NXDOMAIN and errors in
/// separate accounts, so an NXDOMAIN flood does not starve answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// NOERROR (answers and NODATA).
    Answer = 1,
    /// NXDOMAIN.
    NxDomain = 2,
    /// Any other RCODE.
    Error = 3,
}

/// One network in CIDR form (`exempt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: u128,
    prefix: u8,
    v6: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Hash of the key; 0 = empty.
    tag: u64,
    /// Milli-responses; negative while limited.
    balance: i64,
    /// Time of the last update, in ms since the worker's epoch (truncated).
    last_ms: u32,
    /// Limited responses since the last slip.
    limited: u32,
    /// When this bucket was last logged (ms, truncated); 0 = never.
    logged_ms: u32,
}

/// One "network limited" event to log (see [`Rrl::take_log`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitLog {
    /// The client network (address masked to the prefix).
    pub network: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// The response kind being limited.
    pub kind: Kind,
    /// Log lines this worker suppressed since its last one (budget spent).
    pub suppressed: u64,
}

/// One worker's limiter.
#[derive(Debug)]
pub struct Rrl {
    enabled: bool,
    rate: i64,
    floor: i64,
    v4_mask: u128,
    v6_mask: u128,
    slip: u32,
    exempt: Box<[Net]>,
    seed: u64,
    table: Box<[Bucket]>,
    v4_prefix: u8,
    v6_prefix: u8,
    /// Log at most once per this many ms per bucket; 0 = never log.
    log_interval_ms: u64,
    /// Start of the current worker-wide log budget interval.
    budget_start_ms: u64,
    /// Lines left in the current interval.
    budget: u32,
    /// Lines suppressed since the last one written.
    suppressed: u64,
    /// The event for the caller to log, if the last check produced one.
    pending_log: Option<LimitLog>,
}

// === impl Net ===

impl Net {
    /// Parses `addr/prefix` (or a bare address, a host route).
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let (bits, v6, max) = key_bits(addr);
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        Some(Self {
            addr: bits & mask(prefix, max),
            prefix,
            v6,
        })
    }

    fn contains(&self, bits: u128, v6: bool) -> bool {
        let max = if self.v6 { 128 } else { 32 };
        self.v6 == v6 && bits & mask(self.prefix, max) == self.addr
    }
}

// === impl Kind ===

impl Kind {
    /// The kind of an encoded reply, from its header.
    #[inline]
    pub fn of(reply: &[u8]) -> Self {
        match reply.get(3).map(|b| b & 0x0f) {
            Some(0) => Self::Answer,
            Some(3) => Self::NxDomain,
            _ => Self::Error,
        }
    }
}

// === impl Rrl ===

impl Rrl {
    /// A limiter for one worker; `seed` keys the bucket hash (so an attacker
    /// cannot aim collisions at a victim's bucket).
    pub fn new(settings: &RrlSettings, seed: u64) -> Self {
        let rate = i64::from(settings.responses_per_second);
        let exempt = settings
            .exempt
            .iter()
            .filter_map(|s| Net::parse(s))
            .collect();
        Self {
            enabled: settings.enabled && rate > 0,
            rate,
            floor: -(rate * UNIT * i64::try_from(settings.window_secs.max(1)).unwrap_or(15)),
            v4_mask: mask(settings.ipv4_prefix.min(32), 32),
            v6_mask: mask(settings.ipv6_prefix.min(128), 128),
            slip: settings.slip,
            exempt,
            seed: seed | 1,
            table: if settings.enabled {
                vec![Bucket::default(); TABLE].into_boxed_slice()
            } else {
                Box::default()
            },
            v4_prefix: settings.ipv4_prefix.min(32),
            v6_prefix: settings.ipv6_prefix.min(128),
            log_interval_ms: settings.log_interval_secs.saturating_mul(1000),
            budget_start_ms: 0,
            budget: LOG_LINES_PER_INTERVAL,
            suppressed: 0,
            pending_log: None,
        }
    }

    /// The "network limited" event of the last [`Rrl::check`], if it should
    /// be logged (at most once per `log_interval` per network and kind, and
    /// at most [`LOG_LINES_PER_INTERVAL`] per worker per interval).
    #[inline]
    pub fn take_log(&mut self) -> Option<LimitLog> {
        self.pending_log.take()
    }

    /// Decides whether the bucket at `slot` (just limited) logs now.
    #[cold]
    fn note_limited(&mut self, slot: usize, net: u128, v6: bool, kind: Kind, now_ms: u64) {
        if self.log_interval_ms == 0 {
            return;
        }
        let interval = self.log_interval_ms;
        let now = (now_ms as u32).max(1);
        let Some(b) = self.table.get_mut(slot) else {
            return;
        };
        if b.logged_ms != 0 && u64::from(now.wrapping_sub(b.logged_ms)) < interval {
            return;
        }
        b.logged_ms = now;
        if now_ms.saturating_sub(self.budget_start_ms) >= interval {
            self.budget_start_ms = now_ms;
            self.budget = LOG_LINES_PER_INTERVAL;
        }
        if self.budget == 0 {
            self.suppressed += 1;
            return;
        }
        self.budget -= 1;
        let (network, prefix) = if v6 {
            (IpAddr::from(net.to_be_bytes()), self.v6_prefix)
        } else {
            (IpAddr::from((net as u32).to_be_bytes()), self.v4_prefix)
        };
        self.pending_log = Some(LimitLog {
            network,
            prefix,
            kind,
            suppressed: std::mem::take(&mut self.suppressed),
        });
    }

    /// Whether the limiter does anything.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Accounts one response of `kind` to `client` at `now_ms` (a worker
    /// clock in milliseconds) and says what to send.
    #[inline]
    pub fn check(&mut self, client: IpAddr, kind: Kind, now_ms: u64) -> Verdict {
        if !self.enabled || self.table.is_empty() {
            return Verdict::Send;
        }
        let (bits, v6, _) = key_bits(client);
        if self.exempt.iter().any(|n| n.contains(bits, v6)) {
            return Verdict::Send;
        }
        let net = bits & if v6 { self.v6_mask } else { self.v4_mask };
        let tag = self.hash(net, v6, kind) | 1;
        let now = now_ms as u32;
        let slot = (tag >> 32) as usize & (self.table.len() - 1);
        let Some(b) = self.table.get_mut(slot) else {
            return Verdict::Send;
        };
        let elapsed = i64::from(now.wrapping_sub(b.last_ms));
        let refilled = b
            .balance
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.rate * UNIT);
        // A colliding key takes the slot over only while its owner is not
        // limited; a bucket in debt keeps its owner (and charges the
        // newcomer to it) until the debt is paid back, so a flood from
        // random sources cannot evict an offender into a fresh bucket.
        if b.tag != tag && (b.tag == 0 || refilled >= 0) {
            *b = Bucket {
                tag,
                balance: self.rate * UNIT,
                last_ms: now,
                limited: 0,
                logged_ms: 0,
            };
        } else {
            b.last_ms = now;
            b.balance = refilled;
        }
        // False only for a newcomer charged to a limited owner's bucket.
        let owner = b.tag == tag;
        let was = b.balance;
        b.balance = (b.balance - UNIT).max(self.floor);
        if b.balance >= 0 {
            return Verdict::Send;
        }
        b.limited = b.limited.wrapping_add(1);
        let verdict = if self.slip != 0 && b.limited >= self.slip {
            b.limited = 0;
            Verdict::Slip
        } else {
            Verdict::Drop
        };
        // A network that just crossed into the limit, or one still limited
        // whose last line is an interval old.
        let logged = b.logged_ms;
        // Only the owner's network is logged: a newcomer sharing an
        // offender's bucket is not the offender.
        if owner && (was >= 0 || u64::from(now.wrapping_sub(logged)) >= self.log_interval_ms) {
            self.note_limited(slot, net, v6, kind, now_ms);
        }
        verdict
    }

    fn hash(&self, net: u128, v6: bool, kind: Kind) -> u64 {
        let mut h = self.seed ^ (u64::from(v6) << 8 | kind as u64);
        for word in [net as u64, (net >> 64) as u64] {
            h = (h ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 29;
        }
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^ (h >> 32)
    }
}

// === functions ===

/// Cuts `reply` (a reply whose question starts at offset 12, uncompressed)
/// down to header + question with TC=1, AA=1 and empty sections, as a
/// truncated reply looks. Returns the new length, or `None` if the reply has
/// no well-formed question (then the reply is dropped instead).
pub fn slip(reply: &mut [u8]) -> Option<usize> {
    if reply.get(4..6)? != [0, 1] {
        return None;
    }
    let mut at = 12;
    loop {
        let len = usize::from(*reply.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        at += 1 + len;
    }
    let end = at + 4;
    if end > reply.len() {
        return None;
    }
    let flags = reply.get_mut(2..4)?;
    flags[0] |= 0x04 | 0x02; // AA, TC
    reply.get_mut(6..12)?.fill(0);
    Some(end)
}

/// An address as 128 bits, whether it is IPv6, and its width.
fn key_bits(addr: IpAddr) -> (u128, bool, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false, 32),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(a) => (u128::from(u32::from(a)), false, 32),
            None => (u128::from(a), true, 128),
        },
    }
}

/// The mask keeping the top `prefix` bits of a `max`-bit address.
fn mask(prefix: u8, max: u8) -> u128 {
    let full: u128 = if max == 128 {
        u128::MAX
    } else {
        (1u128 << max) - 1
    };
    if prefix == 0 {
        0
    } else {
        full & !((1u128 << (max - prefix.min(max))) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: u32, slip: u32, exempt: &[&str]) -> RrlSettings {
        RrlSettings {
            enabled: true,
            responses_per_second: rate,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            slip,
            window_secs: 15,
            exempt: exempt.iter().map(|s| s.to_string()).collect(),
            log_interval_secs: 60,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Verdicts for `n` responses at time `t`.
    fn burst(r: &mut Rrl, client: &str, kind: Kind, n: usize, t: u64) -> (usize, usize, usize) {
        let (mut send, mut slip, mut drop) = (0, 0, 0);
        for _ in 0..n {
            match r.check(ip(client), kind, t) {
                Verdict::Send => send += 1,
                Verdict::Slip => slip += 1,
                Verdict::Drop => drop += 1,
            }
        }
        (send, slip, drop)
    }

    #[test]
    fn limits_per_second_and_slips_every_nth() {
        let mut r = Rrl::new(&settings(10, 2, &[]), 7);
        assert_eq!(burst(&mut r, "192.0.2.1", Kind::Answer, 20, 0), (10, 5, 5));
        // One second later: ten more, from the same /24.
        assert_eq!(burst(&mut r, "192.0.2.77", Kind::Answer, 10, 1000).0, 0);
    }

    #[test]
    fn recovers_after_quiet_and_window_caps_debt() {
        let mut r = Rrl::new(&settings(10, 0, &[]), 7);
        // A long flood: the debt stops at window (15 s) × rate.
        burst(&mut r, "192.0.2.1", Kind::Answer, 10_000, 0);
        assert_eq!(burst(&mut r, "192.0.2.1", Kind::Answer, 1, 14_000).0, 0);
        // Quiet pays the debt back at the rate, then refills the burst.
        assert_eq!(burst(&mut r, "192.0.2.1", Kind::Answer, 10, 17_000).0, 10);
        // Under the rate, nothing is limited.
        let mut t = 20_000;
        for _ in 0..100 {
            t += 100;
            assert_eq!(r.check(ip("192.0.2.1"), Kind::Answer, t), Verdict::Send);
        }
    }

    #[test]
    fn kinds_and_networks_are_separate_accounts() {
        let mut r = Rrl::new(&settings(5, 1, &[]), 7);
        assert_eq!(burst(&mut r, "192.0.2.1", Kind::NxDomain, 10, 0), (5, 5, 0));
        assert_eq!(burst(&mut r, "192.0.2.1", Kind::Answer, 5, 0).0, 5);
        assert_eq!(burst(&mut r, "192.0.3.1", Kind::NxDomain, 5, 0).0, 5);
        assert_eq!(burst(&mut r, "2001:db8:0:ff::1", Kind::Error, 6, 0).0, 5);
        // Same /56.
        assert_eq!(burst(&mut r, "2001:db8:0:aa::9", Kind::Error, 1, 0).0, 0);
    }

    #[test]
    fn exempt_and_disabled() {
        let mut r = Rrl::new(&settings(1, 2, &["127.0.0.0/8", "::1/128"]), 7);
        assert_eq!(burst(&mut r, "127.0.0.1", Kind::Answer, 100, 0).0, 100);
        assert_eq!(burst(&mut r, "::1", Kind::Answer, 100, 0).0, 100);
        assert_eq!(
            burst(&mut r, "::ffff:127.0.0.5", Kind::Answer, 100, 0).0,
            100
        );
        assert_eq!(burst(&mut r, "10.0.0.1", Kind::Answer, 3, 0).0, 1);
        let mut off = Rrl::new(
            &RrlSettings {
                enabled: false,
                ..settings(1, 2, &[])
            },
            7,
        );
        assert_eq!(burst(&mut off, "10.0.0.1", Kind::Answer, 100, 0).0, 100);
    }

    /// Runs an offender (already limited) at one response per ms for 2 s,
    /// with `flood` random spoofed sources per ms beside it; returns the
    /// offender's verdicts.
    fn offender_under_flood(r: &mut Rrl, flood: usize) -> Vec<Verdict> {
        let offender = ip("198.51.100.7");
        assert_eq!(burst(r, "198.51.100.7", Kind::Answer, 1_000, 0).0, 5);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut out = Vec::new();
        for t in 1..=2_000u64 {
            for i in 0..flood {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let kind = [Kind::Answer, Kind::NxDomain, Kind::Error][i % 3];
                let src = if x & 1 == 0 {
                    IpAddr::from(((x >> 16) as u32).to_be_bytes())
                } else {
                    IpAddr::from(u128::from(x).rotate_left(64).to_be_bytes())
                };
                r.check(src, kind, t);
            }
            out.push(r.check(offender, Kind::Answer, t));
        }
        out
    }

    #[test]
    fn random_source_flood_neither_grows_the_table_nor_frees_an_offender() {
        let mut quiet = Rrl::new(&settings(5, 2, &[]), 7);
        let expected = offender_under_flood(&mut quiet, 0);
        let mut r = Rrl::new(&settings(5, 2, &[]), 7);
        let (ptr, len) = (r.table.as_ptr(), r.table.len());
        // 200,000 random spoofed networks (v4 and v6, all kinds) in 2 s.
        let got = offender_under_flood(&mut r, 100);
        // Same storage: nothing was allocated or grown.
        assert_eq!((r.table.as_ptr(), r.table.len()), (ptr, TABLE));
        assert_eq!(len, TABLE);
        // The flood overwrote most of the table...
        let fresh = r.table.iter().filter(|b| b.tag != 0).count();
        assert!(fresh > TABLE * 9 / 10, "{fresh} of {TABLE} buckets used");
        // ...but the offender stays limited throughout, as without it: not
        // one response in full. (Sources that land on its bucket share it,
        // so only the slip phase may differ; roughly every 2nd still slips.)
        assert!(expected
            .iter()
            .all(|v| *v == Verdict::Slip || *v == Verdict::Drop));
        assert_eq!(
            expected.iter().filter(|v| **v == Verdict::Slip).count(),
            1_000
        );
        assert!(got.iter().all(|v| *v != Verdict::Send));
        let slips = got.iter().filter(|v| **v == Verdict::Slip).count();
        assert!((600..=1_400).contains(&slips), "{slips} slips");
    }

    #[test]
    fn newcomer_takes_over_only_a_bucket_that_is_not_in_debt() {
        let mut r = Rrl::new(&settings(5, 0, &[]), 7);
        let offender = ip("198.51.100.7");
        let net = 0xc633_6400u128; // 198.51.100.0
        let tag = r.hash(net, false, Kind::Answer) | 1;
        let slot = (tag >> 32) as usize & (TABLE - 1);
        // Find another /24 that lands in the same slot.
        let other = (1u32..)
            .map(|i| i << 8)
            .find(|n| {
                let t = r.hash(u128::from(*n), false, Kind::Answer) | 1;
                t != tag && (t >> 32) as usize & (TABLE - 1) == slot
            })
            .unwrap();
        let other = IpAddr::from(other.to_be_bytes());
        // Not limited: the newcomer takes the slot over with a full bucket.
        assert_eq!(r.check(offender, Kind::Answer, 0), Verdict::Send);
        assert_eq!(r.check(other, Kind::Answer, 0), Verdict::Send);
        assert_ne!(r.table[slot].tag, tag);
        // Limited: the offender keeps its slot and the newcomer shares it.
        let mut r = Rrl::new(&settings(5, 0, &[]), 7);
        for _ in 0..20 {
            r.check(offender, Kind::Answer, 0);
        }
        assert_eq!(r.check(other, Kind::Answer, 1), Verdict::Drop);
        assert_eq!(r.table[slot].tag, tag);
        assert_eq!(r.check(offender, Kind::Answer, 2), Verdict::Drop);
        // Once the debt is paid back (16 responses at 5/s), it can go.
        assert_eq!(r.check(other, Kind::Answer, 4_000), Verdict::Send);
        assert_ne!(r.table[slot].tag, tag);
    }

    #[test]
    fn logs_once_per_interval_per_network() {
        let mut r = Rrl::new(&settings(5, 2, &[]), 7);
        let mut logs = Vec::new();
        // A 10 s flood from one /24 at 1000 responses/s: one line.
        for t in 0..10_000u64 {
            r.check(ip("192.0.2.9"), Kind::Answer, 1 + t);
            logs.extend(r.take_log());
        }
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].network, ip("192.0.2.0"));
        assert_eq!(logs[0].prefix, 24);
        assert_eq!(logs[0].kind, Kind::Answer);
        // An interval (60 s) later, still flooding: one more line.
        for t in 0..2_000u64 {
            r.check(ip("192.0.2.9"), Kind::Answer, 61_000 + t);
            logs.extend(r.take_log());
        }
        assert_eq!(logs.len(), 2);
        // IPv6 networks are logged masked to the /56.
        let mut r = Rrl::new(&settings(1, 2, &[]), 7);
        let mut v6 = None;
        for _ in 0..5 {
            r.check(ip("2001:db8:0:ab12::1"), Kind::NxDomain, 1);
            v6 = v6.or(r.take_log());
        }
        let v6 = v6.expect("an IPv6 network was logged");
        assert_eq!((v6.network, v6.prefix), (ip("2001:db8:0:ab00::"), 56));
    }

    #[test]
    fn log_lines_per_worker_are_bounded() {
        let mut r = Rrl::new(&settings(1, 2, &[]), 7);
        let mut logs = Vec::new();
        // 5,000 networks each go over their limit within one interval.
        for i in 0..5_000u32 {
            let client = IpAddr::from((0x0a00_0000 | i << 8).to_be_bytes());
            for _ in 0..3 {
                r.check(client, Kind::Answer, 10);
                logs.extend(r.take_log());
            }
        }
        assert_eq!(logs.len(), LOG_LINES_PER_INTERVAL as usize);
        // The next interval's first line reports how many were suppressed.
        r.check(ip("192.0.2.1"), Kind::Answer, 60_010);
        r.check(ip("192.0.2.1"), Kind::Answer, 60_010);
        let next = r.take_log().expect("a new interval logs again");
        // Each limited network that owns its bucket counts; one that lands
        // on an offender's bucket shares it and is not logged as itself.
        let mut owned = std::collections::HashSet::new();
        for i in 0..5_000u32 {
            let tag = r.hash(u128::from(0x0a00_0000 | i << 8), false, Kind::Answer) | 1;
            owned.insert((tag >> 32) as usize & (TABLE - 1));
        }
        assert!(owned.len() > 3_000, "{}", owned.len());
        assert_eq!(
            next.suppressed,
            owned.len() as u64 - u64::from(LOG_LINES_PER_INTERVAL)
        );
        // log_interval 0: never.
        let mut quiet = Rrl::new(
            &RrlSettings {
                log_interval_secs: 0,
                ..settings(1, 2, &[])
            },
            7,
        );
        for _ in 0..10 {
            quiet.check(ip("192.0.2.1"), Kind::Answer, 10);
            assert_eq!(quiet.take_log(), None);
        }
    }

    #[test]
    fn net_parse() {
        assert!(Net::parse("10.0.0.0/8")
            .unwrap()
            .contains(0x0a01_0203, false));
        assert!(!Net::parse("10.0.0.0/8")
            .unwrap()
            .contains(0x0b01_0203, false));
        assert!(Net::parse("10.0.0.0/33").is_none());
        assert!(Net::parse("nonsense").is_none());
        assert!(Net::parse("0.0.0.0/0").unwrap().contains(5, false));
    }

    #[test]
    fn slip_keeps_header_and_question() {
        // ID, flags (QR), QD=1, AN=1, NS=0, AR=1, question www.x. A IN, junk.
        let mut m = vec![0, 7, 0x80, 0, 0, 1, 0, 1, 0, 0, 0, 1];
        m.extend_from_slice(&[3, b'w', b'w', b'w', 1, b'x', 0, 0, 1, 0, 1]);
        let q_end = m.len();
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
        assert_eq!(slip(&mut m), Some(q_end));
        assert_eq!(m[2], 0x80 | 0x04 | 0x02);
        assert_eq!(&m[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(slip(&mut [0u8; 12]), None);
    }
}
