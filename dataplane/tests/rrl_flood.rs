//! A flood from random spoofed sources through the rate limiter allocates
//! nothing (so the limiter's memory cannot grow) and does not free an
//! offender it is already limiting.
//!
//! A counting `#[global_allocator]` (as in `alloc.rs`) counts this thread's
//! `alloc`/`alloc_zeroed`/`realloc`/`dealloc` calls. The limiter is driven
//! exactly as a UDP worker drives it: `Rrl::check` with the client address,
//! the reply's `Kind::of` and a millisecond clock, then `Rrl::take_log`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use opengslb_dataplane::{
    rrl::{Kind, Rrl, Verdict},
    settings::RrlSettings,
};

#[path = "common/counting.rs"]
mod counting;
use counting::calls;

/// Spoofed sources in the flood.
const FLOOD: usize = 200_000;

/// A reply header with this RCODE (only its flags are read).
fn reply(rcode: u8) -> [u8; 12] {
    [0, 1, 0x84, 0x80 | rcode, 0, 0, 0, 0, 0, 0, 0, 0]
}

fn settings() -> RrlSettings {
    RrlSettings {
        enabled: true,
        responses_per_second: 5,
        slip: 2,
        exempt: Vec::new(),
        ..RrlSettings::default()
    }
}

/// The offender's verdicts over 2 s at one response per ms (after a burst
/// that limits it), with `FLOOD` random sources spread over the same 2 s if
/// `flood`; also returns the allocator calls counted during the run.
fn run(flood: bool) -> (Vec<Verdict>, u64) {
    let mut r = Rrl::new(&settings(), 0x5eed);
    let offender: IpAddr = "198.51.100.7".parse().unwrap();
    let replies = [reply(0), reply(3), reply(2)];
    let mut out = Vec::with_capacity(2_000);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let before = calls();
    for _ in 0..1_000 {
        r.check(offender, Kind::of(&replies[0]), 0);
        let _ = r.take_log();
    }
    for t in 1..=2_000u64 {
        if flood {
            for i in 0..FLOOD / 2_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let src = if x & 1 == 0 {
                    IpAddr::from(((x >> 16) as u32).to_be_bytes())
                } else {
                    IpAddr::from((u128::from(x) << 64).to_be_bytes())
                };
                r.check(src, Kind::of(&replies[i % 3]), t);
                let _ = r.take_log();
            }
        }
        let v = r.check(offender, Kind::of(&replies[0]), t);
        let _ = r.take_log();
        out.push(v);
    }
    let allocs = calls() - before;
    (out, allocs)
}

#[test]
fn random_source_flood_allocates_nothing_and_keeps_the_offender_limited() {
    let (quiet, quiet_allocs) = run(false);
    let (flooded, flood_allocs) = run(true);
    assert_eq!(quiet_allocs, 0);
    // 200,000 spoofed networks: not one allocation, so no growth.
    assert_eq!(flood_allocs, 0, "the limiter allocated during the flood");
    // The offender stays limited throughout, as without the flood: not one
    // response in full (sources that land on its bucket share its debt, so
    // only the slip phase may move; roughly every 2nd still goes out TC=1).
    assert!(quiet.iter().all(|v| *v != Verdict::Send));
    assert_eq!(quiet.iter().filter(|v| **v == Verdict::Slip).count(), 1_000);
    assert!(flooded.iter().all(|v| *v != Verdict::Send));
    let slips = flooded.iter().filter(|v| **v == Verdict::Slip).count();
    assert!((600..=1_400).contains(&slips), "{slips} slips");
}
