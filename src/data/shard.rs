//! Token shards: one flat stream of token ids per (split, domain), little-endian, no header.
//!
//! The format is deliberately the simplest one numpy can read in one line
//! (`np.memmap("train/web.bin", dtype="<u2", mode="r")`, `"<u4"` for `u32`): the dtype lives in
//! `manifest.json`, documents are `BOS + tokens + EOS` back to back, and a shard's length in tokens is its byte
//! length divided by the dtype's width. See `docs/data.md`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::DataError;

/// Width of one stored token id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    U16,
    U32,
}

impl TokenDtype {
    /// `u16` when every id of a `vocab_size` vocabulary fits (ids `0..vocab_size`, so up to 65,536 tokens), else
    /// `u32`; an error above 2^32 tokens.
    pub fn for_vocab(vocab_size: u64) -> Result<Self, DataError> {
        if vocab_size <= 1 << 16 {
            Ok(TokenDtype::U16)
        } else if vocab_size <= 1 << 32 {
            Ok(TokenDtype::U32)
        } else {
            Err(DataError::VocabTooLarge { vocab_size })
        }
    }
    pub fn bytes_per_token(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }
    /// The numpy dtype string (`"<u2"` / `"<u4"`).
    pub fn numpy(self) -> &'static str {
        match self {
            TokenDtype::U16 => "<u2",
            TokenDtype::U32 => "<u4",
        }
    }
}

/// Appends token ids to a shard file through a buffer.
pub struct ShardWriter {
    path: PathBuf,
    dtype: TokenDtype,
    out: BufWriter<File>,
    tokens_written: u64,
}

impl ShardWriter {
    pub fn create(path: &Path, dtype: TokenDtype) -> Result<Self, DataError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| DataError::io(parent, error))?;
        }
        let file = File::create(path).map_err(|error| DataError::io(path, error))?;
        Ok(ShardWriter {
            path: path.to_path_buf(),
            dtype,
            out: BufWriter::with_capacity(1 << 20, file),
            tokens_written: 0,
        })
    }

    /// Appends `tokens`; an id that does not fit the dtype is an error (never silently truncated).
    pub fn write(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        let mut bytes = Vec::with_capacity(tokens.len() * self.dtype.bytes_per_token());
        match self.dtype {
            TokenDtype::U16 => {
                for &token in tokens {
                    let narrow = u16::try_from(token).map_err(|_| DataError::Shard {
                        path: self.path.clone(),
                        message: format!(
                            "token id {token} does not fit u16; the vocabulary needs u32 shards"
                        ),
                    })?;
                    bytes.extend_from_slice(&narrow.to_le_bytes());
                }
            }
            TokenDtype::U32 => {
                for &token in tokens {
                    bytes.extend_from_slice(&token.to_le_bytes());
                }
            }
        }
        self.out
            .write_all(&bytes)
            .map_err(|error| DataError::io(&self.path, error))?;
        self.tokens_written += tokens.len() as u64;
        Ok(())
    }

    pub fn tokens_written(&self) -> u64 {
        self.tokens_written
    }

    /// Flushes and fsyncs; returns the number of tokens in the shard.
    pub fn finish(self) -> Result<u64, DataError> {
        let file = self
            .out
            .into_inner()
            .map_err(|error| DataError::io(&self.path, error.into_error()))?;
        file.sync_all()
            .map_err(|error| DataError::io(&self.path, error))?;
        Ok(self.tokens_written)
    }
}

/// Moves the last `tokens` tokens of the shard at `from` to the end of the shard at `to` (both
/// `dtype`), both fsynced: a domain whose documents all fell on one side of the train/eval split
/// gives its eval split the tail of its train stream, so the two stay disjoint.
pub fn move_tail(from: &Path, to: &Path, tokens: u64, dtype: TokenDtype) -> Result<(), DataError> {
    use std::io::{Read, Seek, SeekFrom};
    let bytes = tokens * dtype.bytes_per_token() as u64;
    let mut source = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(from)
        .map_err(|error| DataError::io(from, error))?;
    let length = source
        .metadata()
        .map_err(|error| DataError::io(from, error))?
        .len();
    if bytes > length {
        return Err(DataError::Shard {
            path: from.to_path_buf(),
            message: format!("cannot move {tokens} tokens: the shard has {length} bytes"),
        });
    }
    let mut tail = Vec::with_capacity(bytes as usize);
    source
        .seek(SeekFrom::Start(length - bytes))
        .and_then(|_| source.read_to_end(&mut tail))
        .map_err(|error| DataError::io(from, error))?;
    let mut target = std::fs::OpenOptions::new()
        .append(true)
        .open(to)
        .map_err(|error| DataError::io(to, error))?;
    target
        .write_all(&tail)
        .and_then(|_| target.sync_all())
        .map_err(|error| DataError::io(to, error))?;
    source
        .set_len(length - bytes)
        .and_then(|_| source.sync_all())
        .map_err(|error| DataError::io(from, error))
}

/// A read-only, memory-mapped shard.
pub struct Shard {
    path: PathBuf,
    dtype: TokenDtype,
    /// `None` for an empty file (mapping zero bytes is an error on some platforms).
    map: Option<Mmap>,
    len: u64,
}

impl Shard {
    pub fn open(path: &Path, dtype: TokenDtype) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|error| DataError::io(path, error))?;
        let bytes = file
            .metadata()
            .map_err(|error| DataError::io(path, error))?
            .len();
        let width = dtype.bytes_per_token() as u64;
        if bytes % width != 0 {
            return Err(DataError::Shard {
                path: path.to_path_buf(),
                message: format!(
                    "{bytes} bytes is not a whole number of {width}-byte tokens; the file is truncated"
                ),
            });
        }
        // SAFETY: shards are immutable once committed to the store; nobody writes a mapped shard.
        let map = if bytes == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&file) }.map_err(|error| DataError::io(path, error))?)
        };
        Ok(Shard {
            path: path.to_path_buf(),
            dtype,
            map,
            len: bytes / width,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends tokens `start..start + count` to `out`; a range past the end is an error, never a panic.
    pub fn read_into(&self, start: u64, count: usize, out: &mut Vec<u32>) -> Result<(), DataError> {
        let end = start
            .checked_add(count as u64)
            .filter(|&end| end <= self.len)
            .ok_or_else(|| DataError::Shard {
                path: self.path.clone(),
                message: format!(
                    "tokens {start}..{} requested from a shard of {} tokens",
                    start + count as u64,
                    self.len
                ),
            })?;
        if count == 0 {
            return Ok(());
        }
        let Some(map) = &self.map else {
            unreachable!("a non-empty range was checked against a non-empty shard")
        };
        let width = self.dtype.bytes_per_token();
        let bytes = &map[start as usize * width..end as usize * width];
        out.reserve(count);
        match self.dtype {
            TokenDtype::U16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|pair| u16::from_le_bytes([pair[0], pair[1]]) as u32),
            ),
            TokenDtype::U32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|quad| u32::from_le_bytes([quad[0], quad[1], quad[2], quad[3]])),
            ),
        }
        Ok(())
    }

    /// Tokens `start..start + count` as a new vector.
    pub fn read(&self, start: u64, count: usize) -> Result<Vec<u32>, DataError> {
        let mut out = Vec::with_capacity(count);
        self.read_into(start, count, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_switches_at_65536_and_rejects_over_u32() {
        assert_eq!(TokenDtype::for_vocab(32000).unwrap(), TokenDtype::U16);
        assert_eq!(TokenDtype::for_vocab(65536).unwrap(), TokenDtype::U16);
        assert_eq!(TokenDtype::for_vocab(65537).unwrap(), TokenDtype::U32);
        assert_eq!(TokenDtype::for_vocab(1 << 32).unwrap(), TokenDtype::U32);
        assert!(matches!(
            TokenDtype::for_vocab((1 << 32) + 1),
            Err(DataError::VocabTooLarge { .. })
        ));
    }

    #[test]
    fn u16_and_u32_shards_round_trip_little_endian() {
        let dir = tempfile::tempdir().unwrap();
        for (dtype, tokens) in [
            (TokenDtype::U16, vec![0u32, 1, 65535, 300]),
            (TokenDtype::U32, vec![0, 65536, 4_000_000_000, 7]),
        ] {
            let path = dir.path().join(format!("{dtype:?}.bin"));
            let mut writer = ShardWriter::create(&path, dtype).unwrap();
            writer.write(&tokens[..2]).unwrap();
            writer.write(&tokens[2..]).unwrap();
            assert_eq!(writer.finish().unwrap(), 4);
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len(), 4 * dtype.bytes_per_token());
            let shard = Shard::open(&path, dtype).unwrap();
            assert_eq!(shard.len(), 4);
            assert_eq!(shard.read(0, 4).unwrap(), tokens);
            assert_eq!(shard.read(1, 2).unwrap(), tokens[1..3]);
            assert!(shard.read(3, 2).is_err());
        }
        // Little-endian layout, byte for byte (what numpy's "<u2" reads).
        assert_eq!(
            std::fs::read(dir.path().join("U16.bin")).unwrap()[..6],
            [0, 0, 1, 0, 255, 255]
        );
    }

    #[test]
    fn u16_writer_rejects_a_wide_id_and_reader_rejects_a_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let mut writer = ShardWriter::create(&path, TokenDtype::U16).unwrap();
        assert!(writer.write(&[70000]).is_err());
        std::fs::write(&path, [1u8, 2, 3]).unwrap();
        let error = Shard::open(&path, TokenDtype::U16).err().unwrap();
        assert!(error.to_string().contains("truncated"), "{error}");
    }
}
