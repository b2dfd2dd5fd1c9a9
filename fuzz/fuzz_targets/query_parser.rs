//! Wire parsing of untrusted queries: header, question, EDNS (with COOKIE):
//! never panics, and what it accepts is self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opengslb_dataplane::wire::{parse_edns, Header, Question};

fuzz_target!(|data: &[u8]| {
    let Some(header) = Header::parse(data) else {
        return;
    };
    if let Ok(q) = Question::parse(data, &header) {
        assert!(q.end <= data.len());
        let _ = parse_edns(data, &header, q.end);
    }
});
