//! Content digests: blake3 over file bytes, and over canonical file lists for folders.
//!
//! Every identity in the store is a [`Digest`]: object names, stage keys, output digests, the
//! digests of external inputs. A folder's digest hashes a canonical, sorted list of
//! `(relative path, file digest, size)` lines, so it depends on names and contents only — never on
//! timestamps, permissions or the order the filesystem lists entries in.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Files at least this large are hashed with memory mapping and all cores (`update_mmap_rayon`);
/// below it, thread start-up costs more than it saves.
pub const PARALLEL_HASH_MIN_BYTES: u64 = 4 << 20;

/// A blake3 digest (32 bytes). Displays and serialises as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// A string that is not 64 hex characters.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not a blake3 digest (expected 64 hex characters)")]
pub struct DigestParseError {
    pub text: String,
}

impl Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Digest of an in-memory byte string (stage-key preimages, canonical lists).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// Digest of a file's contents. Large files are memory-mapped and hashed on all cores.
    pub fn of_file(path: &Path) -> io::Result<Self> {
        let bytes = std::fs::metadata(path)?.len();
        let mut hasher = blake3::Hasher::new();
        if bytes >= PARALLEL_HASH_MIN_BYTES {
            hasher.update_mmap_rayon(path)?;
        } else {
            hasher.update_reader(File::open(path)?)?;
        }
        Ok(Digest(*hasher.finalize().as_bytes()))
    }

    /// Digest of everything `reader` yields, streaming (one thread). Used when the bytes are copied
    /// at the same time (see [`HashingReader`]).
    pub fn of_reader(reader: impl Read) -> io::Result<Self> {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(reader)?;
        Ok(Digest(*hasher.finalize().as_bytes()))
    }

    pub fn to_hex(&self) -> String {
        let mut text = String::with_capacity(64);
        for byte in self.0 {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        text
    }

    /// The first 12 hex characters, for humans (log lines, plan tables).
    pub fn short(&self) -> String {
        let mut hex = self.to_hex();
        hex.truncate(12);
        hex
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || DigestParseError {
            text: text.to_string(),
        };
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return Err(error());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (index, pair) in bytes.chunks_exact(2).enumerate() {
            let high = nibble(pair[0]).ok_or_else(error)?;
            let low = nibble(pair[1]).ok_or_else(error)?;
            out[index] = (high << 4) | low;
        }
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One file of a folder: its path relative to the folder (always `/`-separated), digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub digest: Digest,
    pub bytes: u64,
}

/// Digest of a folder given its files. The list is sorted by path here, so callers may pass any
/// order. Canonical form: a version line, then one `path\0digest-hex\0bytes\n` line per file.
pub fn folder_digest(files: &[FileEntry]) -> Digest {
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"sheared-folder-v1\n");
    for entry in sorted {
        hasher.update(entry.path.as_bytes());
        hasher.update(b"\0");
        hasher.update(entry.digest.to_hex().as_bytes());
        hasher.update(b"\0");
        hasher.update(entry.bytes.to_string().as_bytes());
        hasher.update(b"\n");
    }
    Digest(*hasher.finalize().as_bytes())
}

/// A reader that hashes what passes through it, so a copy can be checked against the digest the
/// file had when it was first hashed (it may have changed in between).
pub struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }
    pub fn digest(&self) -> Digest {
        Digest(*self.hasher.finalize().as_bytes())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..count]);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_serde() {
        let digest = Digest::of_bytes(b"hello");
        assert_eq!(digest.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(digest.to_hex().parse::<Digest>().unwrap(), digest);
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{}\"", digest.to_hex()));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        assert!("abc".parse::<Digest>().is_err());
        assert!("zz".repeat(32).parse::<Digest>().is_err());
        assert_eq!(digest.short().len(), 12);
    }

    #[test]
    fn file_digest_matches_bytes_for_small_and_parallel_sizes() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 1000, (PARALLEL_HASH_MIN_BYTES as usize) + 12345] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &data).unwrap();
            assert_eq!(
                Digest::of_file(&path).unwrap(),
                Digest::of_bytes(&data),
                "size {size}"
            );
            assert_eq!(
                Digest::of_reader(&data[..]).unwrap(),
                Digest::of_bytes(&data)
            );
        }
    }

    #[test]
    fn folder_digest_is_order_independent_and_content_sensitive() {
        let a = FileEntry {
            path: "a".into(),
            digest: Digest::of_bytes(b"1"),
            bytes: 1,
        };
        let b = FileEntry {
            path: "sub/b".into(),
            digest: Digest::of_bytes(b"2"),
            bytes: 1,
        };
        let forward = folder_digest(&[a.clone(), b.clone()]);
        assert_eq!(forward, folder_digest(&[b.clone(), a.clone()]));
        let renamed = FileEntry {
            path: "sub/c".into(),
            ..b.clone()
        };
        assert_ne!(forward, folder_digest(&[a.clone(), renamed]));
        let changed = FileEntry {
            digest: Digest::of_bytes(b"3"),
            ..b
        };
        assert_ne!(forward, folder_digest(&[a, changed]));
    }
}
