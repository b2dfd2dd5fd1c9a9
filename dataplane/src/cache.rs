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
    opengslb_proto::Snapshot::decode(payload).map_err(|_| "snapshot cache does not decode")
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
}
