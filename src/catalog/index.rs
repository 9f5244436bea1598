//! The persistent hash index in `<root>/.ferry/index` and its append-only journal
//! `<root>/.ferry/journal`: what lets a warm start skip hashing, at a cost per published file
//! of one appended record.
//!
//! One record per served file, keyed by its on-disk name as raw bytes (so any name
//! round-trips). A file whose stamp still matches its record keeps the recorded hashes. The
//! index is only a cache: a missing, corrupt or unknown-version file is reported as an
//! [`IndexError`] and the caller re-hashes everything; nothing here can panic on bad bytes.
//!
//! Index layout (all integers little-endian), version 1:
//!
//! ```text
//! "FERRYIDX"  u32 version=1  u64 count
//! count x record
//! u64 xxh64 (seed 0) of every byte before it
//!
//! record: u16 name_len, name bytes, u64 dev, u64 ino, u64 size,
//!         i128 mtime_ns, i128 ctime_ns, u64 xxh64, [u8; 32] sha256
//! ```
//!
//! Saving writes a temporary file in the same folder and renames it over the index, so a
//! reader sees the old or the new index, never half of one. Every file here is reached through
//! the state folder's descriptor, opened once ([`Dir`]): new files with `O_CREAT | O_EXCL |
//! O_NOFOLLOW`, the journal with `O_NOFOLLOW` and a check of what was opened.
//!
//! The trailing xxh64s detect torn and corrupted files, not forged ones: they are unkeyed, so
//! whoever can write `.ferry/` can make the catalog list any file under any hashes. That is
//! why `.ferry/` must belong to the user running ferry and be writable by nobody else
//! ([`crate::dir::check_private`]): whoever can write it is trusted.
//!
//! Journal layout (little-endian), version 1: what changed since the index was written.
//!
//! ```text
//! "FERRYJNL"  u32 version=1
//! then any number of: u32 body_len, body, u64 xxh64 (seed 0) of body_len's 4 bytes and body
//! body: u8 op=1 (put) record          -- the record as in the index
//!     | u8 op=2 (remove) u16 name_len, name bytes
//! ```
//!
//! Records are applied in order on top of the index. A crash can leave a torn last record:
//! reading stops at the first record that is incomplete, fails its checksum or does not parse,
//! keeps what came before, and [`Journal::open`] cuts the file there so later appends are
//! reachable. Compaction (writing the whole index, then emptying the journal) happens at a
//! clean start and when the journal outgrows half the index; a crash between the two steps
//! replays records whose effect the new index already holds, which changes nothing (the last
//! record per name decides, in both).
//!
//! Both decoders read through [`wire::Cursor`](crate::wire::Cursor).

use super::mapped::FileStamp;
use crate::dir::Dir;
use crate::wire::Cursor;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// File name of the index inside the state folder.
pub const INDEX_FILE: &str = "index";
/// File name of the journal inside the state folder.
pub const JOURNAL_FILE: &str = "journal";
/// Magic bytes at the start of every index file.
const MAGIC: &[u8; 8] = b"FERRYIDX";
/// Magic bytes at the start of every journal.
const JOURNAL_MAGIC: &[u8; 8] = b"FERRYJNL";
/// The only version this build reads and writes (index and journal).
const VERSION: u32 = 1;
/// Header: magic, version, count.
const HEADER_LEN: usize = 8 + 4 + 8;
/// Journal header: magic, version.
const JOURNAL_HEADER_LEN: usize = 8 + 4;
/// A record without its name: name_len, dev, ino, size, mtime, ctime, xxh64, sha256.
const FIXED_RECORD_LEN: usize = 2 + 8 + 8 + 8 + 16 + 16 + 8 + 32;
/// Largest journal record body: op, a record with the longest name a u16 can give.
const MAX_JOURNAL_BODY: usize = 1 + FIXED_RECORD_LEN + u16::MAX as usize;
/// Trailing checksum.
const TRAILER_LEN: usize = 8;
/// Largest index or journal file we are willing to read (about 3.5 million records of
/// 255-byte names).
const MAX_INDEX_BYTES: u64 = 1 << 30;
/// Journal op bytes.
const OP_PUT: u8 = 1;
const OP_REMOVE: u8 = 2;

/// What the index remembers about one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    pub stamp: FileStamp,
    pub xxh64: u64,
    pub sha256: [u8; 32],
}

/// Index contents: on-disk name to record.
pub type Index = HashMap<OsString, IndexRecord>;

/// Why an index file (or a journal's header) was not used.
#[derive(Debug)]
pub enum IndexError {
    /// Reading the file failed (including "not found" on a first start).
    Io(io::Error),
    /// The file is larger than [`MAX_INDEX_BYTES`].
    TooLarge { len: u64 },
    /// Shorter than a header plus trailer.
    TooShort { len: usize },
    /// The first eight bytes are not `FERRYIDX` (`FERRYJNL` for a journal).
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

/// Appends one record (the index's layout); a name longer than a u16 can say is left out
/// (Linux names are at most 255 bytes) and `false` returned.
fn put_record(name: &[u8], rec: &IndexRecord, out: &mut Vec<u8>) -> bool {
    let Ok(name_len) = u16::try_from(name.len()) else {
        return false;
    };
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&rec.stamp.dev.to_le_bytes());
    out.extend_from_slice(&rec.stamp.ino.to_le_bytes());
    out.extend_from_slice(&rec.stamp.size.to_le_bytes());
    out.extend_from_slice(&rec.stamp.mtime_ns.to_le_bytes());
    out.extend_from_slice(&rec.stamp.ctime_ns.to_le_bytes());
    out.extend_from_slice(&rec.xxh64.to_le_bytes());
    out.extend_from_slice(&rec.sha256);
    true
}

/// One name: u16 length, bytes.
fn read_name(c: &mut Cursor<'_>) -> Option<OsString> {
    let len = c.u16_le()?;
    Some(OsString::from_vec(c.take(usize::from(len))?.to_vec()))
}

/// One record; `None` if the bytes end first (the cursor may then have moved).
fn read_record(c: &mut Cursor<'_>) -> Option<(OsString, IndexRecord)> {
    let name = read_name(c)?;
    let stamp = FileStamp {
        dev: c.u64_le()?,
        ino: c.u64_le()?,
        size: c.u64_le()?,
        mtime_ns: c.i128_le()?,
        ctime_ns: c.i128_le()?,
    };
    let xxh64 = c.u64_le()?;
    let sha256 = c.array()?;
    Some((
        name,
        IndexRecord {
            stamp,
            xxh64,
            sha256,
        },
    ))
}

/// Serialises `records` in the version-1 layout.
pub fn encode<'a>(records: impl ExactSizeIterator<Item = (&'a OsStr, &'a IndexRecord)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + records.len() * (FIXED_RECORD_LEN + 32));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    // Patched below: names too long for the u16 length are left out.
    out.extend_from_slice(&0u64.to_le_bytes());
    let mut count = 0u64;
    for (name, rec) in records {
        if put_record(name.as_bytes(), rec, &mut out) {
            count += 1;
        }
    }
    out[12..HEADER_LEN].copy_from_slice(&count.to_le_bytes());
    let sum = twox_hash::XxHash64::oneshot(0, &out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Parses an index file; any defect is an error, never a panic.
pub fn decode(bytes: &[u8]) -> Result<Index, IndexError> {
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(IndexError::TooShort { len: bytes.len() });
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    let mut c = Cursor::new(body);
    if c.take(MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(IndexError::BadMagic);
    }
    let too_short = IndexError::TooShort { len: bytes.len() };
    let version = c.u32_le().ok_or(too_short)?;
    if version != VERSION {
        return Err(IndexError::UnknownVersion { version });
    }
    let sum = Cursor::new(trailer).u64_le();
    if Some(twox_hash::XxHash64::oneshot(0, body)) != sum {
        return Err(IndexError::BadChecksum);
    }
    let count = c
        .u64_le()
        .ok_or(IndexError::TooShort { len: bytes.len() })?;
    // Never trust `count` for an allocation: bound it by what the bytes can hold.
    let fits = (c.remaining() / FIXED_RECORD_LEN) as u64;
    let mut index = Index::with_capacity(count.min(fits) as usize);
    for read in 0..count {
        let (name, rec) = read_record(&mut c).ok_or(IndexError::Truncated { read, count })?;
        index.insert(name, rec);
    }
    c.expect_empty()
        .map_err(|t| IndexError::TrailingBytes { extra: t.extra })?;
    Ok(index)
}

/// Reads a whole state file of at most [`MAX_INDEX_BYTES`] from the state folder, without
/// following a symlink (and without blocking on a FIFO).
fn read_state_file(state: &Dir, name: &str) -> Result<Vec<u8>, IndexError> {
    read_bounded(state, name, MAX_INDEX_BYTES)
}

/// [`read_state_file`] of at most `max` bytes.
fn read_bounded(state: &Dir, name: &str, max: u64) -> Result<Vec<u8>, IndexError> {
    let mut f = state.open_read(OsStr::new(name)).map_err(IndexError::Io)?;
    let len = f.metadata().map_err(IndexError::Io)?.len();
    if len > max {
        return Err(IndexError::TooLarge { len });
    }
    let mut bytes = Vec::new();
    // `take` bounds the read should the file grow after the length was taken.
    (&mut f)
        .take(max)
        .read_to_end(&mut bytes)
        .map_err(IndexError::Io)?;
    Ok(bytes)
}

/// Reads and parses `<state>/index`.
pub fn load(state: &Dir) -> Result<Index, IndexError> {
    decode(&read_state_file(state, INDEX_FILE)?)
}

/// Temporary names tried per save: a name already taken (a stale leftover, or anything else
/// under that name) only costs the next one.
const SAVE_TRIES: u32 = 16;

/// Writes `index` to a new temporary name in the state folder (`O_CREAT | O_EXCL |
/// O_NOFOLLOW`, relative to the folder's descriptor: nothing under that name, link or file, is
/// ever opened), then renames it over the index.
pub fn save(state: &Dir, index: &Index) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    save_named(state, index, || {
        OsString::from(format!(
            ".{INDEX_FILE}.tmp.{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ))
    })
}

/// [`save`] through the temporary names `next_tmp` gives, one per try.
fn save_named(state: &Dir, index: &Index, next_tmp: impl FnMut() -> OsString) -> io::Result<()> {
    let bytes = encode(index.iter().map(|(k, v)| (k.as_os_str(), v)));
    let (tmp, mut f) = state.create_first_free(0o600, SAVE_TRIES, next_tmp)?;
    let result = f
        .write_all(&bytes)
        .and_then(|()| state.rename(&tmp, state, OsStr::new(INDEX_FILE)));
    drop(f);
    if result.is_err() {
        let _ = state.remove_file(&tmp);
    }
    result
}

/// One change recorded in the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalOp {
    /// The file of this name now has this record.
    Put(OsString, IndexRecord),
    /// The file of this name is no longer in the catalog.
    Remove(OsString),
}

impl JournalOp {
    /// Applies this change to `index`.
    pub fn apply(self, index: &mut Index) {
        match self {
            JournalOp::Put(name, rec) => {
                index.insert(name, rec);
            }
            JournalOp::Remove(name) => {
                index.remove(&name);
            }
        }
    }

    /// Appends this op as one framed, checksummed journal record; `false` (nothing written)
    /// for a name longer than a u16 can say.
    pub fn encode(&self, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let ok = match self {
            JournalOp::Put(name, rec) => {
                out.push(OP_PUT);
                put_record(name.as_bytes(), rec, out)
            }
            JournalOp::Remove(name) => match u16::try_from(name.len()) {
                Ok(len) => {
                    out.push(OP_REMOVE);
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(name.as_bytes());
                    true
                }
                Err(_) => false,
            },
        };
        if !ok {
            out.truncate(start);
            return false;
        }
        let body_len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
        let sum = twox_hash::XxHash64::oneshot(0, &out[start..]);
        out.extend_from_slice(&sum.to_le_bytes());
        true
    }
}

/// Why reading a journal stopped before the end of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalStop {
    /// The last record is incomplete (a write torn by a crash).
    Torn { at: usize },
    /// A record's checksum does not match its bytes.
    BadChecksum { at: usize },
    /// A record's length or contents make no sense.
    BadRecord { at: usize },
}

impl std::fmt::Display for JournalStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalStop::Torn { at } => write!(f, "journal: torn record at byte {at}"),
            JournalStop::BadChecksum { at } => {
                write!(f, "journal: checksum mismatch in the record at byte {at}")
            }
            JournalStop::BadRecord { at } => write!(f, "journal: bad record at byte {at}"),
        }
    }
}

/// What [`decode_journal`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct JournalRead {
    /// The records before the first defect, in order.
    pub ops: Vec<JournalOp>,
    /// Bytes up to the end of the last good record (the header included).
    pub valid_len: usize,
    /// Why reading stopped early; `None` when every byte was a good record.
    pub stop: Option<JournalStop>,
}

/// Parses one record body (after its length).
fn read_journal_body(body: &[u8]) -> Option<JournalOp> {
    let mut c = Cursor::new(body);
    let op = match c.u8()? {
        OP_PUT => {
            let (name, rec) = read_record(&mut c)?;
            JournalOp::Put(name, rec)
        }
        OP_REMOVE => JournalOp::Remove(read_name(&mut c)?),
        _ => return None,
    };
    c.expect_empty().ok()?;
    Some(op)
}

/// Parses a journal: a bad header is an error; a bad record ends the records read, never a
/// panic.
pub fn decode_journal(bytes: &[u8]) -> Result<JournalRead, IndexError> {
    let mut c = Cursor::new(bytes);
    match c.take(JOURNAL_MAGIC.len()) {
        None => return Err(IndexError::TooShort { len: bytes.len() }),
        Some(m) if m != JOURNAL_MAGIC => return Err(IndexError::BadMagic),
        Some(_) => {}
    }
    let version = c
        .u32_le()
        .ok_or(IndexError::TooShort { len: bytes.len() })?;
    if version != VERSION {
        return Err(IndexError::UnknownVersion { version });
    }
    let mut ops = Vec::new();
    let stop = loop {
        let at = c.position();
        if c.is_empty() {
            break None;
        }
        let Some(len) = c.u32_le() else {
            break Some(JournalStop::Torn { at });
        };
        let len = len as usize;
        if len > MAX_JOURNAL_BODY {
            break Some(JournalStop::BadRecord { at });
        }
        let (Some(body), Some(sum)) = (c.take(len), c.u64_le()) else {
            break Some(JournalStop::Torn { at });
        };
        if twox_hash::XxHash64::oneshot(0, &bytes[at..at + 4 + len]) != sum {
            break Some(JournalStop::BadChecksum { at });
        }
        match read_journal_body(body) {
            Some(op) => ops.push(op),
            None => break Some(JournalStop::BadRecord { at }),
        }
    };
    let valid_len = match stop {
        None => bytes.len(),
        Some(JournalStop::Torn { at })
        | Some(JournalStop::BadChecksum { at })
        | Some(JournalStop::BadRecord { at }) => at,
    };
    Ok(JournalRead {
        ops,
        valid_len,
        stop,
    })
}

/// The open journal file, appended to at a tracked offset.
#[derive(Debug)]
pub struct Journal {
    file: File,
    /// Bytes of good records (and header) in the file: where the next record goes.
    len: u64,
    /// Records appended since the journal was last emptied.
    records: u64,
}

impl Journal {
    /// Opens (or creates) `<state>/journal` without following a symlink (a regular file of
    /// ours with one link, [`Dir::open_state_file`]) and reads its records. A torn or bad tail
    /// is cut off (and reported), so the next append is reachable; a journal with a bad header
    /// is emptied (and the error reported).
    pub fn open(state: &Dir) -> io::Result<(Journal, Vec<JournalOp>, Option<String>)> {
        Journal::open_bounded(state, MAX_INDEX_BYTES)
    }

    /// [`open`](Self::open) of a journal read only if at most `max` bytes long.
    fn open_bounded(
        state: &Dir,
        max: u64,
    ) -> io::Result<(Journal, Vec<JournalOp>, Option<String>)> {
        let mut file = state.open_state_file(OsStr::new(JOURNAL_FILE), 0o600, true)?;
        let meta = file.metadata()?;
        let (read, warning) = if meta.len() == 0 {
            (None, None)
        } else if meta.len() > max {
            let e = IndexError::TooLarge { len: meta.len() };
            (None, Some(e.to_string()))
        } else {
            let mut bytes = Vec::new();
            (&mut file).take(max).read_to_end(&mut bytes)?;
            match decode_journal(&bytes) {
                Ok(r) => {
                    let warning = r.stop.map(|s| s.to_string());
                    (Some(r), warning)
                }
                Err(e) => (None, Some(format!("{e} (in the journal)"))),
            }
        };
        let mut j = Journal {
            file,
            len: 0,
            records: 0,
        };
        let ops = match read {
            Some(r) => {
                j.len = r.valid_len as u64;
                j.records = r.ops.len() as u64;
                if r.stop.is_some() {
                    j.file.set_len(j.len)?;
                }
                r.ops
            }
            None => {
                j.reset()?;
                Vec::new()
            }
        };
        Ok((j, ops, warning))
    }

    /// Appends `ops` with one positional write. A failed write is cut off again, so a later
    /// append never lands behind a torn record.
    pub fn append(&mut self, ops: &[JournalOp]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(ops.len() * (FIXED_RECORD_LEN + 64));
        let mut written = 0;
        for op in ops {
            if op.encode(&mut buf) {
                written += 1;
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all_at(&buf, self.len) {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.records += written;
        Ok(())
    }

    /// Empties the journal (after the index was saved with everything it held).
    pub fn reset(&mut self) -> io::Result<()> {
        let mut header = Vec::with_capacity(JOURNAL_HEADER_LEN);
        header.extend_from_slice(JOURNAL_MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        self.file.set_len(0)?;
        self.file.write_all_at(&header, 0)?;
        self.len = header.len() as u64;
        self.records = 0;
        Ok(())
    }

    /// Records appended since the journal was last emptied.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes in the journal file.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }
}

/// The SHA-256 the index of the catalog folder holding `path` records for it, if the index
/// (with its journal) has a record of that name whose stamp still matches the file: a sender
/// pushing a file from a served folder need not hash it again. Read-only; any defect is `None`.
pub fn indexed_sha256(path: &std::path::Path) -> Option<[u8; 32]> {
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let state = Dir::open(&dir.join(".ferry")).ok()?;
    let mut index = load(&state).ok()?;
    if let Ok(bytes) = read_state_file(&state, JOURNAL_FILE) {
        if let Ok(j) = decode_journal(&bytes) {
            for op in j.ops {
                op.apply(&mut index);
            }
        }
    }
    let rec = index.get(name)?;
    let meta = std::fs::symlink_metadata(path).ok()?;
    (meta.is_file() && FileStamp::from_metadata(&meta) == rec.stamp).then_some(rec.sha256)
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
        // Shorter than a header and a trailer: too short, whatever the bytes say (not a
        // checksum taken over part of the header).
        let b = sample();
        for n in 8..HEADER_LEN + TRAILER_LEN {
            assert!(
                matches!(decode(&b[..n]), Err(IndexError::TooShort { len }) if len == n),
                "{n} bytes: {:?}",
                decode(&b[..n])
            );
        }
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

    fn scratch(what: &str) -> (std::path::PathBuf, Dir) {
        let p = std::env::temp_dir().join(format!("ferry-index-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        let d = Dir::open(&p).unwrap();
        (p, d)
    }

    /// A state file is read whole up to its bound; one byte past it is refused by its length,
    /// before any of it is read.
    #[test]
    fn a_state_file_is_read_up_to_its_bound_and_refused_past_it() {
        let (p, dir) = scratch("bound");
        std::fs::write(p.join("f"), [7u8; 10]).unwrap();
        assert_eq!(read_bounded(&dir, "f", 10).unwrap(), [7u8; 10]);
        assert!(matches!(
            read_bounded(&dir, "f", 9),
            Err(IndexError::TooLarge { len: 10 })
        ));
        std::fs::remove_dir_all(&p).unwrap();
    }

    /// A save whose temporary name is taken tries the next one, up to [`SAVE_TRIES`] names,
    /// then fails with `AlreadyExists`; any other error fails at once. The names taken are
    /// left alone.
    #[test]
    fn save_tries_the_next_name_when_one_is_taken_then_gives_up() {
        let (p, dir) = scratch("save");
        let mut idx = Index::new();
        idx.insert(OsString::from("a"), rec(1));
        let names = |prefix: &'static str, calls: &'static AtomicU64| {
            move || {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                assert!(n <= u64::from(SAVE_TRIES), "tried past SAVE_TRIES");
                OsString::from(format!("{prefix}{n}"))
            }
        };
        for n in 0..3 {
            std::fs::write(p.join(format!("t{n}")), b"taken").unwrap();
        }
        static A: AtomicU64 = AtomicU64::new(0);
        save_named(&dir, &idx, names("t", &A)).unwrap();
        assert_eq!(A.load(Ordering::Relaxed), 4);
        assert_eq!(load(&dir).unwrap(), idx);
        assert_eq!(std::fs::read(p.join("t2")).unwrap(), b"taken");
        assert!(!p.join("t3").exists());
        for n in 0..SAVE_TRIES {
            std::fs::write(p.join(format!("u{n}")), b"taken").unwrap();
        }
        static B: AtomicU64 = AtomicU64::new(0);
        let e = save_named(&dir, &Index::new(), names("u", &B)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(B.load(Ordering::Relaxed), u64::from(SAVE_TRIES));
        static C: AtomicU64 = AtomicU64::new(0);
        let e = save_named(&dir, &Index::new(), names("missing/", &C)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(C.load(Ordering::Relaxed), 1);
        // Nothing failed has touched the index.
        assert_eq!(load(&dir).unwrap(), idx);
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn io_error_when_missing() {
        let dir = Dir::open(&std::env::temp_dir()).unwrap();
        let name = format!("ferry-index-missing-{}", std::process::id());
        assert!(matches!(
            read_state_file(&dir, &name),
            Err(IndexError::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
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

    fn ops() -> Vec<JournalOp> {
        vec![
            JournalOp::Put(OsString::from("a.png"), rec(1)),
            JournalOp::Put(OsString::from_vec(vec![0xff, b'b']), rec(2)),
            JournalOp::Remove(OsString::from("a.png")),
            JournalOp::Put(OsString::from("c"), rec(3)),
        ]
    }

    fn journal_bytes(ops: &[JournalOp]) -> Vec<u8> {
        let mut b = b"FERRYJNL\x01\0\0\0".to_vec();
        for op in ops {
            assert!(op.encode(&mut b));
        }
        b
    }

    #[test]
    fn journal_exact_bytes_of_a_remove() {
        let mut b = Vec::new();
        assert!(JournalOp::Remove(OsString::from("ab")).encode(&mut b));
        // body_len 5: op 2, name_len 2, "ab"; then xxh64 of the 9 bytes before it.
        assert_eq!(&b[..9], &[5, 0, 0, 0, 2, 2, 0, b'a', b'b']);
        assert_eq!(
            &b[9..],
            &twox_hash::XxHash64::oneshot(0, &b[..9]).to_le_bytes()
        );
        let mut p = Vec::new();
        assert!(JournalOp::Put(OsString::from("a"), rec(7)).encode(&mut p));
        // A put's body is the op byte and the index's record for the same file.
        let idx = sample();
        assert_eq!(p[4], 1);
        assert_eq!(
            &p[5..p.len() - 8],
            &idx[HEADER_LEN..idx.len() - TRAILER_LEN]
        );
        assert_eq!(p.len(), 4 + 1 + 99 + 8);
    }

    #[test]
    fn journal_round_trips_and_applies_in_order() {
        let ops = ops();
        let b = journal_bytes(&ops);
        let r = decode_journal(&b).unwrap();
        assert_eq!(r.ops, ops);
        assert_eq!((r.valid_len, r.stop), (b.len(), None));
        let mut idx = Index::new();
        idx.insert(OsString::from("c"), rec(9));
        for op in r.ops {
            op.apply(&mut idx);
        }
        assert_eq!(idx.len(), 2);
        assert_eq!(idx[&OsString::from("c")], rec(3));
        assert!(!idx.contains_key(&OsString::from("a.png")));
    }

    #[test]
    fn journal_torn_at_every_offset_keeps_the_whole_records_before() {
        let ops = ops();
        let b = journal_bytes(&ops);
        let mut ends = vec![JOURNAL_HEADER_LEN];
        let mut acc = Vec::new();
        for op in &ops {
            op.encode(&mut acc);
            ends.push(JOURNAL_HEADER_LEN + acc.len());
        }
        for n in 0..=b.len() {
            let r = match decode_journal(&b[..n]) {
                Ok(r) => r,
                Err(_) => {
                    assert!(n < JOURNAL_HEADER_LEN, "header error at {n}");
                    continue;
                }
            };
            let whole = ends.iter().filter(|&&e| e <= n).count() - 1;
            assert_eq!(r.ops, ops[..whole], "cut at {n}");
            assert_eq!(r.valid_len, ends[whole]);
            if ends.contains(&n) {
                assert_eq!(r.stop, None);
            } else {
                assert_eq!(r.stop, Some(JournalStop::Torn { at: ends[whole] }));
            }
        }
    }

    #[test]
    fn journal_bad_checksum_or_op_stops_there() {
        let ops = ops();
        let b = journal_bytes(&ops);
        let second = JOURNAL_HEADER_LEN + {
            let mut one = Vec::new();
            ops[0].encode(&mut one);
            one.len()
        };
        let mut flipped = b.clone();
        flipped[second + 10] ^= 1;
        let r = decode_journal(&flipped).unwrap();
        assert_eq!(r.ops, ops[..1]);
        assert_eq!(r.stop, Some(JournalStop::BadChecksum { at: second }));
        // An unknown op with a good checksum.
        let mut body = vec![9u8, 0, 0];
        let mut rec_bytes = (body.len() as u32).to_le_bytes().to_vec();
        rec_bytes.append(&mut body);
        let sum = twox_hash::XxHash64::oneshot(0, &rec_bytes);
        rec_bytes.extend_from_slice(&sum.to_le_bytes());
        let bad = [&b[..second], &rec_bytes[..]].concat();
        let r = decode_journal(&bad).unwrap();
        assert_eq!(r.stop, Some(JournalStop::BadRecord { at: second }));
        // A length beyond any record.
        let huge = [&b[..second], &u32::MAX.to_le_bytes()[..], &[0u8; 64][..]].concat();
        let r = decode_journal(&huge).unwrap();
        assert_eq!(r.stop, Some(JournalStop::BadRecord { at: second }));
        assert!(matches!(
            decode_journal(b"FERRYJNL\x02\0\0\0"),
            Err(IndexError::UnknownVersion { version: 2 })
        ));
        assert!(matches!(
            decode_journal(b"FERRYIDX\x01\0\0\0"),
            Err(IndexError::BadMagic)
        ));
        assert_eq!(
            JournalStop::Torn { at: 12 }.to_string(),
            "journal: torn record at byte 12"
        );
    }

    /// The journal's length bound is exact: a record of the longest name a u16 gives (the
    /// largest record there can be) is read, and a length one byte longer is a bad record
    /// (corruption) even when its bytes are not there, not a torn tail (a write cut short).
    #[test]
    fn journal_length_bound_is_the_largest_record() {
        let longest = JournalOp::Put(OsString::from_vec(vec![b'n'; u16::MAX as usize]), rec(4));
        let b = journal_bytes(std::slice::from_ref(&longest));
        assert_eq!(b.len(), JOURNAL_HEADER_LEN + 4 + MAX_JOURNAL_BODY + 8);
        let r = decode_journal(&b).unwrap();
        assert_eq!((r.ops, r.stop), (vec![longest], None));
        let header = &b[..JOURNAL_HEADER_LEN];
        let at = JOURNAL_HEADER_LEN;
        for (len, stop) in [
            (1 + 98 + 65_535, JournalStop::Torn { at }),
            (1 + 98 + 65_536, JournalStop::BadRecord { at }),
        ] {
            let cut = [header, &u32::to_le_bytes(len)[..], &[0u8; 100][..]].concat();
            let r = decode_journal(&cut).unwrap();
            assert_eq!((r.ops.len(), r.valid_len), (0, at));
            assert_eq!(r.stop, Some(stop), "length {len}");
        }
    }

    #[test]
    fn journal_random_bytes_never_panic() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let b = journal_bytes(&ops());
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_journal(&bytes);
            if let Ok(r) = decode_journal(&[&b[..JOURNAL_HEADER_LEN], &bytes[..]].concat()) {
                assert!(r.valid_len <= JOURNAL_HEADER_LEN + bytes.len());
            }
            // Random bytes in place of one record's body, under a good frame and checksum.
            let mut framed = (bytes.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            let sum = twox_hash::XxHash64::oneshot(0, &framed);
            framed.extend_from_slice(&sum.to_le_bytes());
            let _ = decode_journal(&[&b[..], &framed[..]].concat());
        }
    }

    #[test]
    fn journal_file_cuts_a_torn_tail_and_appends_after_it() {
        let dir = std::env::temp_dir().join(format!(
            "ferry-journal-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (mut j, got, warn) = Journal::open(&Dir::open(&dir).unwrap()).unwrap();
        assert!(got.is_empty() && warn.is_none());
        assert_eq!(j.len(), JOURNAL_HEADER_LEN as u64);
        let ops = ops();
        j.append(&ops[..2]).unwrap();
        assert_eq!(j.records(), 2);
        drop(j);
        // A crash in the middle of the third record.
        let path = dir.join(JOURNAL_FILE);
        let mut third = Vec::new();
        ops[2].encode(&mut third);
        let mut bytes = std::fs::read(&path).unwrap();
        let good = bytes.len();
        bytes.extend_from_slice(&third[..third.len() - 3]);
        std::fs::write(&path, &bytes).unwrap();
        let (mut j, got, warn) = Journal::open(&Dir::open(&dir).unwrap()).unwrap();
        assert_eq!(got, ops[..2]);
        assert_eq!(
            warn.as_deref(),
            Some(format!("journal: torn record at byte {good}").as_str())
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good as u64);
        j.append(&ops[2..]).unwrap();
        drop(j);
        let (mut j, got, warn) = Journal::open(&Dir::open(&dir).unwrap()).unwrap();
        assert_eq!((got, warn), (ops.clone(), None));
        j.reset().unwrap();
        drop(j);
        let (_, got, _) = Journal::open(&Dir::open(&dir).unwrap()).unwrap();
        assert!(got.is_empty());
        // A journal over the size limit (sparse: no disk used) is not read, only emptied.
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_len(MAX_INDEX_BYTES + 1).unwrap();
        drop(f);
        let (_, got, warn) = Journal::open(&Dir::open(&dir).unwrap()).unwrap();
        assert!(got.is_empty());
        assert_eq!(
            warn.as_deref(),
            Some("index: file of 1073741825 bytes is too large")
        );
        let emptied = std::fs::metadata(&path).unwrap().len();
        assert_eq!(emptied, JOURNAL_HEADER_LEN as u64, "emptied to its header");
        // A foreign file under the name is emptied, not trusted.
        std::fs::write(&path, b"garbage that is not a journal").unwrap();
        let (_, got, warn) = Journal::open(&Dir::open(&dir).unwrap()).unwrap();
        assert!(got.is_empty());
        assert_eq!(warn.as_deref(), Some("index: bad magic (in the journal)"));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"FERRYJNL\x01\0\0\0".to_vec()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The journal's size bound is exact: a journal of exactly the bound is read, one byte
    /// shorter a bound and it is refused (and emptied).
    #[test]
    fn a_journal_of_exactly_the_bound_is_read() {
        let (p, dir) = scratch("journal-bound");
        let (mut j, _, _) = Journal::open(&dir).unwrap();
        j.append(&ops()).unwrap();
        drop(j);
        let len = std::fs::metadata(p.join(JOURNAL_FILE)).unwrap().len();
        let (_, got, warn) = Journal::open_bounded(&dir, len).unwrap();
        assert_eq!((got, warn), (ops(), None));
        let (_, got, warn) = Journal::open_bounded(&dir, len - 1).unwrap();
        assert!(got.is_empty());
        assert_eq!(
            warn,
            Some(format!("index: file of {len} bytes is too large"))
        );
        std::fs::remove_dir_all(&p).unwrap();
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
