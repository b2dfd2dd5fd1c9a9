//! `WithOverrides::lookup` and `overridden` (asked for every domain and
//! server in every compile) allocate nothing, with overrides in force, hit
//! or miss. A global allocator counts this thread's allocations.

#![allow(clippy::unwrap_used, clippy::expect_used, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::sync::Arc;

use opengslb_controlplane::compile::{AllHealthy, HealthView, ServerHealth};
use opengslb_controlplane::config::{DnsName, ServerRef};
use opengslb_controlplane::overrides::{OverrideKey, OverrideMap, WithOverrides};
use opengslb_controlplane::store::OverrideRow;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counter is a const-initialized thread-local `Cell` without a destructor,
// which allocates nothing itself.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

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
fn lookups_allocate_nothing() {
    let mut map = OverrideMap::new();
    for r in [
        row("www.test", "192.0.2.1", false),
        row("www.test", "192.0.2.2:8080", false),
        row("www.test", "192.0.2.2", true),
        row("v6.test", "[2001:db8::1]:443", false),
        row("v6.test", "2001:db8::2", false),
    ] {
        map.insert(OverrideKey::parse(&r.service, &r.address).unwrap(), r);
    }
    let view = WithOverrides::new(AllHealthy, Arc::new(map));
    let www = DnsName::parse("www.test").unwrap();
    let v6 = DnsName::parse("v6.test").unwrap();
    let none = DnsName::parse("none.test").unwrap();
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let server = |a: IpAddr, port| ServerRef {
        region_index: 0,
        region: "r",
        server_index: 0,
        address: a,
        port,
    };
    // (service, address, port, expected)
    let cases = [
        (&www, ip("192.0.2.1"), 80, Some(ServerHealth::DOWN)),
        (&www, ip("192.0.2.2"), 8080, Some(ServerHealth::DOWN)),
        (&www, ip("192.0.2.2"), 80, Some(ServerHealth::UP)),
        (&www, ip("192.0.2.3"), 80, None),
        (&v6, ip("2001:db8::1"), 443, Some(ServerHealth::DOWN)),
        (&v6, ip("2001:db8::1"), 80, None),
        (&v6, ip("2001:db8::2"), 53, Some(ServerHealth::DOWN)),
        (&none, ip("192.0.2.1"), 80, None),
    ];
    // Warm-up: anything lazily set up on first use happens here.
    for (d, a, p, want) in cases {
        assert_eq!(view.overridden(d, &server(a, p)), want, "{d} {a}:{p}");
    }
    let before = allocations();
    let mut hits = 0;
    for _ in 0..10_000 {
        for (d, a, p, want) in cases {
            let got = view.overridden(d, &server(a, p));
            hits += usize::from(got.is_some());
            assert!(got == want);
            let row = view.lookup(d.as_str(), a, p);
            assert!(row.is_some() == want.is_some());
        }
    }
    let after = allocations();
    assert_eq!(hits, 50_000);
    assert_eq!(
        after - before,
        0,
        "lookups allocated {} times",
        after - before
    );

    // The counter counts: building a view allocates.
    let start = allocations();
    let again = WithOverrides::new(AllHealthy, view.overrides.clone());
    assert!(allocations() > start);
    assert_eq!(
        again.overridden(&www, &server(ip("192.0.2.1"), 80)),
        Some(ServerHealth::DOWN)
    );
}
