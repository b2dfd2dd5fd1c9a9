//! Snapshot decoding: prost decode, then `Snapshot::try_from`: never panics
//! whatever the controlplane (or a corrupt cache file) sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opengslb_dataplane::snapshot::Snapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(proto) = <opengslb_proto::Snapshot as prost::Message>::decode(data) {
        let _ = Snapshot::try_from(&proto);
    }
});
