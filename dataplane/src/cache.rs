//! The local snapshot cache: the last good snapshot, as the controlplane sent
//! it (a full `opengslb.v1.Snapshot`, deltas applied), so a restart while every
//! controlplane is down still serves the last known answers, byte-identical to
//! what the stream gave.
//!
//! File layout: `OGSLBSN1` magic, payload length (u64 BE), FNV-1a 64 of the
//! payload (u64 BE), payload (prost encoding). Written to a temporary file,
//! fsynced and renamed over the old one, so a crash never leaves half a file.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use prost::Message;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"OGSLBSN1";
const FILE_NAME: &str = "snapshot.bin";

/// Reads and writes the cached snapshot under one directory.
#[derive(Debug, Clone)]
pub struct SnapshotCacheFile {
    dir: PathBuf,
}

// === impl SnapshotCacheFile ===

impl SnapshotCacheFile {
    /// Cache under `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Path of the cache file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Loads the cached snapshot; `Ok(None)` when there is none.
    pub fn load(&self) -> Result<Option<opengslb_proto::Snapshot>> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cache_err(&path, e.to_string())),
        };
        decode(&bytes)
            .map(Some)
            .map_err(|m| cache_err(&path, m.to_string()))
    }

    /// Atomically replaces the cached snapshot.
    pub fn store(&self, snapshot: &opengslb_proto::Snapshot) -> Result<()> {
        self.store_encoded(&snapshot.encode_to_vec())
    }

    /// Atomically replaces the cached snapshot with `payload`, an already
    /// encoded `opengslb.v1.Snapshot` (the stream client encodes each full
    /// snapshot once, and keeps only those bytes as the base for deltas).
    pub fn store_encoded(&self, payload: &[u8]) -> Result<()> {
        let path = self.path();
        std::fs::create_dir_all(&self.dir).map_err(|e| cache_err(&self.dir, e.to_string()))?;
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&(payload.len() as u64).to_be_bytes())?;
            f.write_all(&fnv1a(payload).to_be_bytes())?;
            f.write_all(payload)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| cache_err(&path, e.to_string()))
    }
}

fn decode(bytes: &[u8]) -> Result<opengslb_proto::Snapshot, &'static str> {
    if bytes.len() < 24 || &bytes[..8] != MAGIC {
        return Err("not a snapshot cache file (bad magic)");
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&bytes[16..24]);
    let payload = &bytes[24..];
    if u64::from_be_bytes(len) != payload.len() as u64 {
        return Err("truncated snapshot cache file");
    }
    if u64::from_be_bytes(sum) != fnv1a(payload) {
        return Err("snapshot cache checksum mismatch");
    }
    decode_snapshot(payload).map_err(|_| "snapshot cache does not decode")
}

/// Field number of `Snapshot.nodes` (`opengslb/v1/snapshot.proto`).
const NODES_FIELD: u32 = 4;

/// Decodes an encoded `opengslb.v1.Snapshot` with its `nodes` vector
/// allocated once, at its final length. Plain `decode` grows it by
/// doubling: for 1,000,000 nodes that copies ~200 MB of node structs and
/// touches as much fresh memory again, about a tenth of the whole load.
/// Counting first is one pass over the top-level keys and lengths.
pub(crate) fn decode_snapshot(
    payload: &[u8],
) -> std::result::Result<opengslb_proto::Snapshot, prost::DecodeError> {
    let mut snap = opengslb_proto::Snapshot {
        nodes: Vec::with_capacity(count_field(payload, NODES_FIELD)),
        ..Default::default()
    };
    snap.merge(payload)?;
    Ok(snap)
}

/// How many length-delimited fields numbered `field` the top level of the
/// message `buf` holds (counting stops at anything malformed: the decode
/// that follows reports it). Each counted field is one the decode turns
/// into an element anyway, so the reservation is never more than the
/// decode itself would allocate.
fn count_field(mut buf: &[u8], field: u32) -> usize {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let mut n = 0;
    while !buf.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut buf) else {
            break;
        };
        let len = match wire_type {
            WireType::Varint => match decode_varint(&mut buf) {
                Ok(_) => continue,
                Err(_) => break,
            },
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => match decode_varint(&mut buf)
                .ok()
                .and_then(|l| usize::try_from(l).ok())
            {
                Some(l) => l,
                None => break,
            },
            WireType::StartGroup | WireType::EndGroup => break,
        };
        let Some(rest) = buf.get(len..) else {
            break;
        };
        if tag == field && wire_type == WireType::LengthDelimited {
            n += 1;
        }
        buf = rest;
    }
    n
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn cache_err(path: &Path, message: String) -> Error {
    Error::Cache {
        path: path.display().to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCacheFile::new(dir.path().join("sub"));
        assert!(cache.load().unwrap().is_none());
        let snap = opengslb_proto::Snapshot {
            generation: 42,
            origin: "cp-1".into(),
            ..Default::default()
        };
        cache.store(&snap).unwrap();
        assert_eq!(cache.load().unwrap().unwrap(), snap);

        let mut bytes = std::fs::read(cache.path()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(cache.path(), &bytes).unwrap();
        assert!(cache.load().unwrap_err().to_string().contains("checksum"));

        std::fs::write(cache.path(), b"garbage").unwrap();
        assert!(cache.load().is_err());
    }

    #[test]
    fn decode_reserves_exactly_the_nodes_and_equals_plain_decode() {
        let snap = opengslb_proto::Snapshot {
            generation: 7,
            origin: "cp".into(),
            zones: vec![opengslb_proto::Zone::default()],
            nodes: (0..1000u32)
                .map(|i| opengslb_proto::Node {
                    name: format!("n{i}").into_bytes(),
                    zone: i % 3,
                    ..Default::default()
                })
                .collect(),
            options: Some(Default::default()),
            ..Default::default()
        };
        let bytes = snap.encode_to_vec();
        assert_eq!(count_field(&bytes, NODES_FIELD), 1000);
        assert_eq!(count_field(&bytes, 3), 1);
        let got = decode_snapshot(&bytes).unwrap();
        assert_eq!(got.nodes.capacity(), 1000);
        assert_eq!(got, opengslb_proto::Snapshot::decode(&bytes[..]).unwrap());
        // Malformed input: the count stops, the decode reports the error.
        assert!(count_field(&bytes[..bytes.len() - 3], NODES_FIELD) < 1000);
        assert!(decode_snapshot(&bytes[..bytes.len() - 3]).is_err());
        assert_eq!(count_field(&[0xff; 16], NODES_FIELD), 0);
        assert!(decode_snapshot(&[0xff; 16]).is_err());
    }
}
