//! RDATA in DNS wire format, names uncompressed and lower-case (the form the
//! snapshot carries and DNSSEC signs).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config::{DnsName, RecordData, Soa};

/// Uncompressed wire form of `name`.
pub fn name(name: &DnsName) -> Vec<u8> {
    name.to_wire()
}

/// A RDATA.
pub fn a(addr: Ipv4Addr) -> Vec<u8> {
    addr.octets().to_vec()
}

/// AAAA RDATA.
pub fn aaaa(addr: Ipv6Addr) -> Vec<u8> {
    addr.octets().to_vec()
}

/// SOA RDATA with `serial`.
pub fn soa(soa: &Soa, serial: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    soa.mname.encode_into(&mut out);
    soa.rname.encode_into(&mut out);
    for v in [serial, soa.refresh, soa.retry, soa.expire, soa.minimum] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// MX RDATA.
pub fn mx(preference: u16, exchange: &DnsName) -> Vec<u8> {
    let mut out = preference.to_be_bytes().to_vec();
    exchange.encode_into(&mut out);
    out
}

/// TXT RDATA: `text` split into character-strings of at most 255 octets
/// (one empty string for empty text).
pub fn txt(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 255 + 1);
    if bytes.is_empty() {
        out.push(0);
    }
    for chunk in bytes.chunks(255) {
        // `chunks(255)` bounds the length.
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    out
}

/// SRV RDATA.
pub fn srv(priority: u16, weight: u16, port: u16, target: &DnsName) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    for v in [priority, weight, port] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    target.encode_into(&mut out);
    out
}

/// CAA RDATA (RFC 8659).
pub fn caa(flags: u8, tag: &str, value: &str) -> Vec<u8> {
    let mut out = vec![flags, tag.len().min(255) as u8];
    out.extend_from_slice(&tag.as_bytes()[..tag.len().min(255)]);
    out.extend_from_slice(value.as_bytes());
    out
}

/// RDATA of a parsed static record.
pub fn rdata(data: &RecordData) -> Vec<u8> {
    match data {
        RecordData::A(a4) => a(*a4),
        RecordData::Aaaa(a6) => aaaa(*a6),
        RecordData::Cname(n) | RecordData::Ns(n) => name(n),
        RecordData::Txt(t) => txt(t),
        RecordData::Mx {
            preference,
            exchange,
        } => mx(*preference, exchange),
        RecordData::Srv {
            priority,
            weight,
            port,
            target,
        } => srv(*priority, *weight, *port, target),
        RecordData::Caa { flags, tag, value } => caa(*flags, tag, value),
    }
}

/// RFC 4034 §6.1 canonical order of two uncompressed wire-form names
/// (lower-case, as the snapshot carries them): label by label from the
/// right, each label as an octet string. Allocation-free; a malformed name
/// (a label running past its end) compares by the labels it has.
pub fn canonical_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (sa, na) = label_starts(a);
    let (sb, nb) = label_starts(b);
    labels(a, &sa[..na]).cmp(labels(b, &sb[..nb]))
}

/// The labels of `w` at `starts`, rightmost first.
fn labels<'w>(w: &'w [u8], starts: &'w [u8]) -> impl Iterator<Item = &'w [u8]> {
    starts.iter().rev().map(move |&s| {
        let s = usize::from(s);
        let len = w.get(s).map_or(0, |&l| usize::from(l));
        w.get(s + 1..s + 1 + len).unwrap_or(&[])
    })
}

/// Offsets of the non-root labels of a wire name (at most 127 in 255
/// octets; a longer input is cut there).
fn label_starts(w: &[u8]) -> ([u8; 128], usize) {
    let mut starts = [0u8; 128];
    let mut n = 0;
    let mut at = 0usize;
    while let Some(&len) = w.get(at) {
        if len == 0 || n == starts.len() || at > usize::from(u8::MAX) {
            break;
        }
        starts[n] = at as u8;
        n += 1;
        at += 1 + usize::from(len);
    }
    (starts, n)
}
