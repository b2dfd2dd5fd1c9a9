//! The wire contract of OpenGSLB, and nothing else: the generated prost
//! messages and tonic services for the snapshot stream (controlplane →
//! dataplane), the agent service (agent → controlplane) and the admin service
//! (operators → controlplane).
//!
//! This crate must never grow logic: conversions and validation live in the
//! crates that consume these messages.

#![allow(unreachable_pub, clippy::all, unused_qualifications)]

/// `opengslb.v1`: every message and service of the contract.
pub mod v1 {
    tonic::include_proto!("opengslb.v1");
}

pub use v1::*;

/// The encoded `FileDescriptorSet` of every `.proto` file of the contract,
/// for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/opengslb_descriptor.bin"));

/// DNS record type numbers used across the contract.
pub mod rtype {
    /// IPv4 address.
    pub const A: u32 = 1;
    /// Name server.
    pub const NS: u32 = 2;
    /// Canonical name.
    pub const CNAME: u32 = 5;
    /// Start of authority.
    pub const SOA: u32 = 6;
    /// Mail exchanger.
    pub const MX: u32 = 15;
    /// Text.
    pub const TXT: u32 = 16;
    /// IPv6 address.
    pub const AAAA: u32 = 28;
    /// Service locator.
    pub const SRV: u32 = 33;
    /// CAA.
    pub const CAA: u32 = 257;
}
