//! The whole answer path, bytes in → bytes out, on a fixed snapshot (the compiled example configuration), with
//! cookies on: never panics, never writes past the buffer, and a reply is a
//! response with the query's ID; over UDP it never exceeds the requester's
//! limit (RFC 1035 / RFC 6891): 512 octets without EDNS, else
//! max(512, min(the requester's EDNS UDP size, the configured cap)). The
//! limit is worked out here from the query bytes, apart from the dataplane.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use opengslb_dataplane::{
    answer::{answer, Transport, WorkerState},
    cookie::{CookieConfig, CookieState},
    snapshot::Snapshot,
};

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        // The example configuration, compiled as the controlplane would.
        let text = include_str!("../../examples/gslb.yaml");
        let cfg = opengslb_controlplane::config::parse(text, std::path::Path::new("gslb.yaml"))
            .expect("examples/gslb.yaml parses");
        let compiled = opengslb_controlplane::compile::Compiler::new().compile(
            &cfg,
            1,
            1,
            &opengslb_controlplane::compile::AllHealthy,
            std::time::SystemTime::UNIX_EPOCH,
        );
        Snapshot::try_from(&compiled.snapshot).expect("the compiled example is valid")
    })
}

/// `dataplane.edns_udp_size` of the example configuration (the default).
const CAP: usize = 1232;

/// Skips a (possibly compressed) name at `pos`; the offset after it.
fn skip_name(m: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *m.get(pos)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => pos += 1 + usize::from(len),
            0xc0 => return m.get(pos + 1).map(|_| pos + 2),
            _ => return None,
        }
    }
}

fn u16_at(m: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*m.get(pos)?, *m.get(pos + 1)?]))
}

/// The requester's EDNS UDP size: the CLASS of the one OPT record (owner
/// the root) in the additional section of a message that walks cleanly;
/// `None` without EDNS, or when the message is malformed.
fn requester_edns_size(m: &[u8]) -> Option<u16> {
    let count = |i: usize| u16_at(m, 4 + 2 * i).map(usize::from);
    let (qd, an, ns, ar) = (count(0)?, count(1)?, count(2)?, count(3)?);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(m, pos)? + 4;
    }
    let mut opt = None;
    for i in 0..an + ns + ar {
        let owner = pos;
        pos = skip_name(m, pos)?;
        let rtype = u16_at(m, pos)?;
        let class = u16_at(m, pos + 2)?;
        let rdlen = usize::from(u16_at(m, pos + 8)?);
        pos += 10 + rdlen;
        if pos > m.len() {
            return None;
        }
        if i >= an + ns && rtype == 41 {
            if opt.is_some() || m[owner] != 0 {
                return None;
            }
            opt = Some(class);
        }
    }
    opt
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(usize::from(snapshot().edns_udp_size()), CAP);
    let udp_limit = match requester_edns_size(data) {
        None => 512,
        Some(size) => usize::from(size).min(CAP).max(512),
    };
    let mut state = WorkerState::with_seed(1);
    state.cookies = CookieState::new(CookieConfig {
        master: [7; 16],
        rotate_secs: 86_400,
    });
    state
        .cookies
        .set(Some([192, 0, 2, 1].into()), 1_700_000_000);
    let mut out = vec![0u8; 65_535];
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Some(n) = answer(snapshot(), data, transport, &mut state, &mut out) {
            assert!(n >= 12 && n <= out.len());
            assert_eq!(out[..2], data[..2], "ID echoed");
            assert!(out[2] & 0x80 != 0, "QR set");
            if transport == Transport::Udp {
                assert!(n <= udp_limit, "UDP reply of {n} octets, limit {udp_limit}");
            }
        }
    }
});
