//! The whole answer path, bytes in → bytes out, on a fixed snapshot (the compiled example configuration), with
//! cookies on: never panics, never writes past the buffer, and a reply is a
//! response with the query's ID that never exceeds the UDP size rules.
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

fuzz_target!(|data: &[u8]| {
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
                assert!(n <= 4096, "UDP reply of {n} octets");
            }
        }
    }
});
