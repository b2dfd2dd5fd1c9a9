//! Integration tests: the real `opengslb-controlplane`, `opengslb-dataplane`
//! and `opengslb` binaries on loopback, checked with an independent DNS
//! client (hickory-proto) over UDP and TCP.

mod harness;

mod authoritative;
mod lifecycle;
