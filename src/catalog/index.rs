//! The persistent hash index in `<root>/.ferry/index`: what lets a warm start skip hashing.
//!
//! One record per served file, keyed by its on-disk name as raw bytes (so any name
//! round-trips). A file whose stamp still matches its record keeps the recorded hashes. The
//! index is only a cache: a missing, corrupt or unknown-version file is reported as an
//! [`IndexError`] and the caller re-hashes everything; nothing here can panic on bad bytes.
//!
//! Layout (all integers little-endian), version 1:
//!
//! ```text
//! "FERRYIDX"  u32 version=1  u64 count
//! count x { u16 name_len, name bytes, u64 dev, u64 ino, u64 size,
//!           i128 mtime_ns, i128 ctime_ns, u64 xxh64, [u8; 32] sha256 }
//! u64 xxh64 (seed 0) of every byte before it
//! ```
//!
//! Saving writes a temporary file in the same folder and renames it over the index, so a
//! reader sees the old or the new index, never half of one.

use super::mapped::FileStamp;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// File name of the index inside the state folder.
pub const INDEX_FILE: &str = "index";
/// Magic bytes at the start of every index file.
const MAGIC: &[u8; 8] = b"FERRYIDX";
/// The only version this build reads and writes.
const VERSION: u32 = 1;
/// Header: magic, version, count.
const HEADER_LEN: usize = 8 + 4 + 8;
/// A record without its name: name_len, dev, ino, size, mtime, ctime, xxh64, sha256.
const FIXED_RECORD_LEN: usize = 2 + 8 + 8 + 8 + 16 + 16 + 8 + 32;
/// Trailing checksum.
const TRAILER_LEN: usize = 8;
/// Largest index file we are willing to read (about 3.5 million records of 255-byte names).
const MAX_INDEX_BYTES: u64 = 1 << 30;

/// What the index remembers about one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    pub stamp: FileStamp,
    pub xxh64: u64,
    pub sha256: [u8; 32],
}

/// Index contents: on-disk name to record.
pub type Index = HashMap<OsString, IndexRecord>;

/// Why an index file was not used.
#[derive(Debug)]
pub enum IndexError {
    /// Reading the file failed (including "not found" on a first start).
    Io(io::Error),
    /// The file is larger than [`MAX_INDEX_BYTES`].
    TooLarge { len: u64 },
    /// Shorter than a header plus trailer.
    TooShort { len: usize },
    /// The first eight bytes are not `FERRYIDX`.
    BadMagic,
    /// Written by another version of ferry.
    UnknownVersion { version: u32 },
    /// The trailing checksum does not match the contents.
    BadChecksum,
    /// The records end before `count` of them were read.
    Truncated { read: u64, count: u64 },
    /// Bytes left over between the last record and the checksum.
    TrailingBytes { extra: usize },
}

impl std::fmt::Display for IndexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexError::Io(e) => write!(f, "index: {e}"),
            IndexError::TooLarge { len } => write!(f, "index: file of {len} bytes is too large"),
            IndexError::TooShort { len } => write!(f, "index: file of {len} bytes is too short"),
            IndexError::BadMagic => write!(f, "index: bad magic"),
            IndexError::UnknownVersion { version } => {
                write!(f, "index: unknown version {version}")
            }
            IndexError::BadChecksum => write!(f, "index: checksum mismatch"),
            IndexError::Truncated { read, count } => {
                write!(f, "index: truncated after {read} of {count} records")
            }
            IndexError::TrailingBytes { extra } => {
                write!(f, "index: {extra} unexpected bytes after the records")
            }
        }
    }
}

impl std::error::Error for IndexError {}

/// Serialises `records` in the version-1 layout.
pub fn encode<'a>(records: impl ExactSizeIterator<Item = (&'a OsStr, &'a IndexRecord)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + records.len() * (FIXED_RECORD_LEN + 32));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    // Patched below: names too long for the u16 length are left out.
    out.extend_from_slice(&0u64.to_le_bytes());
    let mut count = 0u64;
    for (name, rec) in records {
        let name = name.as_bytes();
        // Linux names are at most 255 bytes; anything longer cannot be a directory entry.
        let Ok(name_len) = u16::try_from(name.len()) else {
            continue;
        };
        count += 1;
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&rec.stamp.dev.to_le_bytes());
        out.extend_from_slice(&rec.stamp.ino.to_le_bytes());
        out.extend_from_slice(&rec.stamp.size.to_le_bytes());
        out.extend_from_slice(&rec.stamp.mtime_ns.to_le_bytes());
        out.extend_from_slice(&rec.stamp.ctime_ns.to_le_bytes());
        out.extend_from_slice(&rec.xxh64.to_le_bytes());
        out.extend_from_slice(&rec.sha256);
    }
    out[12..HEADER_LEN].copy_from_slice(&count.to_le_bytes());
    let sum = twox_hash::XxHash64::oneshot(0, &out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// A bounds-checked reader over the record area.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i128(&mut self) -> Option<i128> {
        self.array().map(i128::from_le_bytes)
    }

    fn record(&mut self) -> Option<(OsString, IndexRecord)> {
        let name_len = u16::from_le_bytes(self.array()?);
        let name = OsString::from_vec(self.take(usize::from(name_len))?.to_vec());
        let stamp = FileStamp {
            dev: self.u64()?,
            ino: self.u64()?,
            size: self.u64()?,
            mtime_ns: self.i128()?,
            ctime_ns: self.i128()?,
        };
        let xxh64 = self.u64()?;
        let sha256 = self.array()?;
        Some((
            name,
            IndexRecord {
                stamp,
                xxh64,
                sha256,
            },
        ))
    }
}

/// Parses an index file; any defect is an error, never a panic.
pub fn decode(bytes: &[u8]) -> Result<Index, IndexError> {
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(IndexError::TooShort { len: bytes.len() });
    }
    if &bytes[..8] != MAGIC {
        return Err(IndexError::BadMagic);
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(IndexError::UnknownVersion { version });
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(trailer);
    if twox_hash::XxHash64::oneshot(0, body) != u64::from_le_bytes(sum) {
        return Err(IndexError::BadChecksum);
    }
    let mut count_bytes = [0u8; 8];
    count_bytes.copy_from_slice(&body[12..HEADER_LEN]);
    let count = u64::from_le_bytes(count_bytes);
    let mut cur = Cursor {
        bytes: &body[HEADER_LEN..],
    };
    // Never trust `count` for an allocation: bound it by what the bytes can hold.
    let fits = (cur.bytes.len() / FIXED_RECORD_LEN) as u64;
    let mut index = Index::with_capacity(count.min(fits) as usize);
    for read in 0..count {
        let (name, rec) = cur.record().ok_or(IndexError::Truncated { read, count })?;
        index.insert(name, rec);
    }
    if !cur.bytes.is_empty() {
        return Err(IndexError::TrailingBytes {
            extra: cur.bytes.len(),
        });
    }
    Ok(index)
}

/// Reads and parses `<state_dir>/index`.
pub fn load(state_dir: &Path) -> Result<Index, IndexError> {
    let path = state_dir.join(INDEX_FILE);
    let len = std::fs::metadata(&path).map_err(IndexError::Io)?.len();
    if len > MAX_INDEX_BYTES {
        return Err(IndexError::TooLarge { len });
    }
    let bytes = std::fs::read(&path).map_err(IndexError::Io)?;
    decode(&bytes)
}

/// Writes `index` to a unique temporary name in `state_dir`, then renames it over the index.
pub fn save(state_dir: &Path, index: &Index) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let bytes = encode(index.iter().map(|(k, v)| (k.as_os_str(), v)));
    let tmp = state_dir.join(format!(
        ".{INDEX_FILE}.tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        drop(f);
        std::fs::rename(&tmp, state_dir.join(INDEX_FILE))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seed: u8) -> IndexRecord {
        IndexRecord {
            stamp: FileStamp {
                dev: 1,
                ino: u64::from(seed),
                size: 3,
                mtime_ns: -5,
                ctime_ns: 1_700_000_000_123_456_789,
            },
            xxh64: 0x0102_0304_0506_0708,
            sha256: [seed; 32],
        }
    }

    fn sample() -> Vec<u8> {
        let mut idx = Index::new();
        idx.insert(OsString::from_vec(vec![b'a']), rec(7));
        encode(idx.iter().map(|(k, v)| (k.as_os_str(), v)))
    }

    #[test]
    fn exact_bytes_of_one_record() {
        let bytes = sample();
        assert_eq!(&bytes[..8], b"FERRYIDX");
        assert_eq!(&bytes[8..12], &[1, 0, 0, 0]);
        assert_eq!(&bytes[12..20], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[20..23], &[1, 0, b'a']);
        assert_eq!(&bytes[23..31], &[1, 0, 0, 0, 0, 0, 0, 0]); // dev
        assert_eq!(&bytes[31..39], &[7, 0, 0, 0, 0, 0, 0, 0]); // ino
        assert_eq!(&bytes[39..47], &[3, 0, 0, 0, 0, 0, 0, 0]); // size
        assert_eq!(&bytes[47..63], &(-5i128).to_le_bytes()); // mtime
        assert_eq!(
            &bytes[79..87],
            &[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]
        );
        assert_eq!(&bytes[87..119], &[7u8; 32]);
        assert_eq!(bytes.len(), 119 + 8);
    }

    #[test]
    fn round_trips_non_utf8_names() {
        let mut idx = Index::new();
        idx.insert(OsString::from_vec(vec![0xff, b'x', 0x80]), rec(1));
        idx.insert(OsString::from("plain.png"), rec(2));
        let bytes = encode(idx.iter().map(|(k, v)| (k.as_os_str(), v)));
        assert_eq!(decode(&bytes).unwrap(), idx);
    }

    #[test]
    fn empty_index_round_trips() {
        let idx = Index::new();
        let bytes = encode(idx.iter().map(|(k, v)| (k.as_os_str(), v)));
        assert_eq!(bytes.len(), HEADER_LEN + TRAILER_LEN);
        assert!(decode(&bytes).unwrap().is_empty());
    }

    /// Rewrites the checksum so a test reaches the structural checks behind it.
    fn reseal(mut body: Vec<u8>) -> Vec<u8> {
        let sum = twox_hash::XxHash64::oneshot(0, &body);
        body.extend_from_slice(&sum.to_le_bytes());
        body
    }

    #[test]
    fn too_short() {
        assert!(matches!(
            decode(b"FERRYIDX"),
            Err(IndexError::TooShort { len: 8 })
        ));
    }

    #[test]
    fn bad_magic() {
        let mut b = sample();
        b[0] = b'X';
        assert!(matches!(decode(&b), Err(IndexError::BadMagic)));
    }

    #[test]
    fn unknown_version() {
        let mut b = sample();
        b[8] = 2;
        assert!(matches!(
            decode(&b),
            Err(IndexError::UnknownVersion { version: 2 })
        ));
    }

    #[test]
    fn bad_checksum() {
        let mut b = sample();
        b[40] ^= 1;
        assert!(matches!(decode(&b), Err(IndexError::BadChecksum)));
    }

    #[test]
    fn truncated_when_count_lies() {
        let b = sample();
        let mut body = b[..b.len() - TRAILER_LEN].to_vec();
        body[12] = 0xff;
        body[19] = 0xff; // count near u64::MAX must not allocate
        let err = decode(&reseal(body)).unwrap_err();
        assert!(
            matches!(err, IndexError::Truncated { read: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn trailing_bytes() {
        let b = sample();
        let mut body = b[..b.len() - TRAILER_LEN].to_vec();
        body.push(0);
        assert!(matches!(
            decode(&reseal(body)),
            Err(IndexError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn io_error_when_missing() {
        let dir = std::env::temp_dir().join(format!("ferry-index-missing-{}", std::process::id()));
        assert!(matches!(load(&dir), Err(IndexError::Io(_))));
    }

    #[test]
    fn every_truncation_and_random_bytes_are_errors_not_panics() {
        let b = sample();
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err());
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&bytes);
            let _ = decode(&reseal([&b[..20], &bytes[..]].concat()));
        }
    }

    #[test]
    fn display_is_lowercase_topic_detail() {
        assert_eq!(
            IndexError::UnknownVersion { version: 9 }.to_string(),
            "index: unknown version 9"
        );
        assert_eq!(
            IndexError::TooLarge { len: 5 }.to_string(),
            "index: file of 5 bytes is too large"
        );
    }
}
