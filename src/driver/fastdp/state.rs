//! What a FastDP server keeps on disk beside each push transfer (fastdp.md 4.1, 2.10): the
//! `<TransferId>.state` file of a partial transfer and the `<TransferId>.done` record of a
//! completed one, their reload at start and their retention.
//!
//! The `.part` and its block bitmap belong to the shared transfer registry
//! ([`crate::ingest::TransferRegistry`]); a chunk is held exactly when the registry says its
//! block is durable. The `.state` adds what FastDP needs beside it:
//!
//! ```text
//! 0        8         12         16            16+L      bits_at              crcs_at
//! | magic  | L u32 LE | 0 u32    | header JSON | pad to 8 | FullChunk bits   | pad | FullChunk x u32 LE
//!  "FDPSTAT1"                     (2.3, compact)           (LSB first)             CRC-32C of chunk i
//! ```
//!
//! Bit `i` says the CRC-32C of chunk `i` is recorded. A chunk's CRC is written into its slot
//! before its block is finished (while it is still claimed), so the slot always holds the CRC of
//! the latest complete copy; its bit is set, and the file fdatasynced, after the registry made
//! the block durable and before any Ack lists it. Acknowledgements read the CRC from the slot,
//! so every connection acknowledges what is held, whichever connection wrote it. A bit is
//! cleared on disk before a replacement copy is written. The file's mtime is the transfer's
//! last activity, for retention.
//!
//! `<TransferId>.done` is one JSON object: the header, the final name and the time of
//! completion; a header for that TransferId within retention is answered with every chunk held
//! and its FIN with `Complete`.
//!
//! Every file here is reached through the work folder's descriptor (a [`Dir`] opened once and
//! checked private by ingest), never by a path that a local user could redirect by swapping
//! `.ferry/` for a link: new files are created `O_CREAT | O_EXCL | O_NOFOLLOW`, a `.state` is
//! reopened `O_NOFOLLOW` and must be a regular file of ours with one link, a `.done` is read
//! `O_NOFOLLOW | O_NONBLOCK` and must be a regular file (issue 15 item 3).
//!
//! Out of scope: the transfers themselves (registry), the protocol (machines).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::dir::Dir;
use crate::proto::fastdp::frame::MAX_JMSG;
use crate::proto::fastdp::messages::{parse_request, Header, Request, TransferId};

const MAGIC: &[u8; 8] = b"FDPSTAT1";
const HEAD: usize = 16;
/// Largest `.done` record read.
const MAX_DONE: u64 = 128 * 1024;

fn align8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// Where a `.state` file keeps its parts.
#[derive(Debug, Clone, Copy)]
struct Layout {
    bits_at: u64,
    crcs_at: u64,
    len: u64,
}

impl Layout {
    fn new(json_len: usize, full_chunk: u32) -> Layout {
        let bits_at = align8(HEAD as u64 + json_len as u64);
        let crcs_at = align8(bits_at + u64::from(full_chunk).div_ceil(8));
        Layout {
            bits_at,
            crcs_at,
            len: crcs_at + 4 * u64::from(full_chunk),
        }
    }
}

/// An open `.state` file.
#[derive(Debug)]
pub struct StateFile {
    file: File,
    layout: Layout,
    /// Orders bit updates (read-modify-write of bitmap bytes).
    bits: Mutex<()>,
}

/// The name of `id`'s `.state` in the work folder.
pub fn state_name(id: &TransferId) -> OsString {
    OsString::from(format!("{id}.state"))
}

/// The name of `id`'s `.done` in the work folder.
pub fn done_name(id: &TransferId) -> OsString {
    OsString::from(format!("{id}.done"))
}

/// Removes `id`'s `.state` (a missing one is fine).
pub fn remove_state(work: &Dir, id: &TransferId) {
    let _ = work.remove_file(&state_name(id));
}

impl StateFile {
    /// Creates the `.state` of a new transfer (no bit set) and syncs it.
    pub fn create(work: &Dir, header: &Header) -> io::Result<StateFile> {
        let name = state_name(&header.transfer_id);
        let _ = work.remove_file(&name);
        let json = header.encode();
        let layout = Layout::new(json.len(), header.full_chunk);
        let file = work.create_new(&name, 0o600)?;
        let mut head = Vec::with_capacity(HEAD + json.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&(json.len() as u32).to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&json);
        let made = file
            .set_len(layout.len)
            .and_then(|()| file.write_all_at(&head, 0))
            .and_then(|()| file.sync_all());
        if let Err(e) = made {
            let _ = work.remove_file(&name);
            return Err(e);
        }
        Ok(StateFile {
            file,
            layout,
            bits: Mutex::new(()),
        })
    }

    /// Opens an existing `.state` and returns it with its header; `Ok(None)` if it is missing
    /// or not a valid state file.
    pub fn open(work: &Dir, id: &TransferId) -> io::Result<Option<(StateFile, Header)>> {
        // Not a regular file of ours with one link (a link, a FIFO, someone else's): not valid.
        let file = match work.open_state_file(&state_name(id), 0o600, false) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some((header, layout)) = read_header(&file)? else {
            return Ok(None);
        };
        if header.transfer_id != *id {
            return Ok(None);
        }
        Ok(Some((
            StateFile {
                file,
                layout,
                bits: Mutex::new(()),
            },
            header,
        )))
    }

    /// Records the CRC-32C of chunk `i`'s latest complete copy (before its block is finished).
    pub fn put_crc(&self, i: u32, crc: u32) -> io::Result<()> {
        self.file
            .write_all_at(&crc.to_le_bytes(), self.layout.crcs_at + 4 * u64::from(i))
    }

    /// The recorded CRC-32C of chunk `i`.
    pub fn crc(&self, i: u32) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.file
            .read_exact_at(&mut b, self.layout.crcs_at + 4 * u64::from(i))?;
        Ok(u32::from_le_bytes(b))
    }

    /// Sets (`on`) or clears the bits of `chunks`; with `sync`, fdatasyncs the file after.
    pub fn set_bits(&self, chunks: &[u32], on: bool, sync: bool) -> io::Result<()> {
        if !chunks.is_empty() {
            let _g = self.bits.lock().unwrap_or_else(|e| e.into_inner());
            let lo = chunks.iter().min().copied().unwrap_or(0) / 8;
            let hi = chunks.iter().max().copied().unwrap_or(0) / 8 + 1;
            let mut bytes = vec![0u8; (hi - lo) as usize];
            let at = self.layout.bits_at + u64::from(lo);
            self.file.read_exact_at(&mut bytes, at)?;
            for &c in chunks {
                let (k, bit) = ((c / 8 - lo) as usize, 1u8 << (c % 8));
                if on {
                    bytes[k] |= bit;
                } else {
                    bytes[k] &= !bit;
                }
            }
            self.file.write_all_at(&bytes, at)?;
        }
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Whether chunk `i`'s CRC is recorded.
    pub fn has_bit(&self, i: u32) -> io::Result<bool> {
        let mut b = [0u8; 1];
        self.file
            .read_exact_at(&mut b, self.layout.bits_at + u64::from(i / 8))?;
        Ok(b[0] & (1 << (i % 8)) != 0)
    }
}

/// Parses a `.state` file's head and checks its length.
fn read_header(file: &File) -> io::Result<Option<(Header, Layout)>> {
    let len = file.metadata()?.len();
    let mut head = [0u8; HEAD];
    if len < HEAD as u64 || file.read_exact_at(&mut head, 0).is_err() || &head[..8] != MAGIC {
        return Ok(None);
    }
    let json_len = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default());
    if json_len == 0 || json_len > MAX_JMSG || u64::from(json_len) + HEAD as u64 > len {
        return Ok(None);
    }
    let mut json = vec![0u8; json_len as usize];
    file.read_exact_at(&mut json, HEAD as u64)?;
    let Ok(Request::Push(header)) = parse_request(&json) else {
        return Ok(None);
    };
    let layout = Layout::new(json.len(), header.full_chunk);
    if layout.len != len {
        return Ok(None);
    }
    Ok(Some((header, layout)))
}

/// A completed transfer remembered for retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub header: Header,
    /// The name the file was committed under.
    pub file_name: String,
}

/// Records a completion (written to a temporary name, synced, renamed into place).
pub fn write_done(work: &Dir, done: &Done) -> io::Result<()> {
    // Every connection of a transfer reports the same completion: the first one writes it.
    static WRITING: Mutex<()> = Mutex::new(());
    let _g = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let id = done.header.transfer_id;
    if read_done(work, &id).as_ref() == Some(done) {
        return Ok(());
    }
    let header: serde_json::Value =
        serde_json::from_slice(&done.header.encode()).map_err(io::Error::other)?;
    let body = serde_json::json!({
        "Header": header,
        "FileName": done.file_name,
    });
    let tmp = OsString::from(format!("{id}.done.new"));
    let _ = work.remove_file(&tmp);
    let f = work.create_new(&tmp, 0o600)?;
    let bytes = serde_json::to_vec(&body).map_err(io::Error::other)?;
    let r = f
        .write_all_at(&bytes, 0)
        .and_then(|()| f.sync_all())
        .and_then(|()| work.rename(&tmp, work, &done_name(&id)));
    if r.is_err() {
        let _ = work.remove_file(&tmp);
    }
    r
}

/// Reads the completion record of `id`, if there is a valid one.
pub fn read_done(work: &Dir, id: &TransferId) -> Option<Done> {
    let f: File = work.open_read(&done_name(id)).ok()?;
    let mut bytes = Vec::new();
    f.take(MAX_DONE).read_to_end(&mut bytes).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let header_json = serde_json::to_vec(v.get("Header")?).ok()?;
    let Ok(Request::Push(header)) = parse_request(&header_json) else {
        return None;
    };
    let file_name = v.get("FileName")?.as_str()?.to_owned();
    (header.transfer_id == *id).then_some(Done { header, file_name })
}

/// What a sweep found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Partial transfers kept (within retention).
    pub kept: usize,
    /// Partial transfers deleted (expired, or a `.part` without a valid `.state`).
    pub deleted: usize,
    /// Completion records deleted.
    pub forgotten: usize,
}

/// The ids of the files in `work` with `suffix`, with their names.
fn ids_with(work: &Dir, suffix: &str) -> Vec<(TransferId, OsString)> {
    let Ok(names) = work.names() else {
        return Vec::new();
    };
    names
        .into_iter()
        .filter_map(|name| {
            let id = TransferId::parse(name.to_str()?.strip_suffix(suffix)?)?;
            Some((id, name))
        })
        .collect()
}

fn is_expired(work: &Dir, name: &OsStr, retention: Duration, now: SystemTime) -> bool {
    let Ok(st) = work.stat_at(name) else {
        return true;
    };
    let mtime = std::time::UNIX_EPOCH
        + Duration::from_nanos(u64::try_from(st.mtime_ns()).unwrap_or_default());
    now.duration_since(mtime).unwrap_or_default() > retention
}

/// Deletes expired state (start and hourly, fastdp.md 4.1): `.state` files idle longer than
/// `retention` with their `.part` (through `discard`, which refuses transfers in use),
/// `.part` files without a valid `.state`, and `.done` records older than `retention`.
/// `in_use` says whether a transfer is attached now (never touched).
pub fn sweep(
    work: &Dir,
    retention: Duration,
    in_use: &dyn Fn(&TransferId) -> bool,
    discard: &dyn Fn(&TransferId) -> io::Result<()>,
) -> Sweep {
    let now = SystemTime::now();
    let mut s = Sweep::default();
    for (id, name) in ids_with(work, ".state") {
        if in_use(&id) {
            s.kept += 1;
            continue;
        }
        let valid = StateFile::open(work, &id).ok().flatten().is_some();
        if valid && !is_expired(work, &name, retention, now) {
            s.kept += 1;
            continue;
        }
        if discard(&id).is_ok() {
            let _ = work.remove_file(&name);
            s.deleted += 1;
        }
    }
    for suffix in [".part", ".bitmap"] {
        for (id, _) in ids_with(work, suffix) {
            if !in_use(&id) && work.stat_at(&state_name(&id)).is_err() && discard(&id).is_ok() {
                s.deleted += 1;
            }
        }
    }
    for (id, name) in ids_with(work, ".done") {
        if is_expired(work, &name, retention, now) {
            let _ = work.remove_file(&name);
            s.forgotten += 1;
        } else if read_done(work, &id).is_none() {
            let _ = work.remove_file(&name);
        }
    }
    // Leftover temporaries of completion records.
    for (_, name) in ids_with(work, ".done.new") {
        let _ = work.remove_file(&name);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::fastdp::frame::Compress;
    use crate::proto::fastdp::messages::Checksum;
    use std::fs;
    use std::path::PathBuf;

    fn header(id: &str, size: u64) -> Header {
        Header::new(
            4096,
            size,
            Compress::None,
            "a.bin",
            TransferId::parse(id).unwrap(),
            Checksum([7; 32]),
        )
        .unwrap()
    }

    /// A fresh folder (its path, and its descriptor as the service holds it).
    fn temp(tag: &str) -> (PathBuf, Dir) {
        let p = std::env::temp_dir().join(format!("ferry-fdpstate-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        let d = Dir::open(&p).unwrap();
        (p, d)
    }

    const ID: &str = "3d0f6c1a-5b7e-4e21-9a51-7f2c0e9b4d10";

    #[test]
    fn state_file_keeps_every_header_field_bits_and_crcs_across_a_reopen() {
        let (p, w) = temp("reopen");
        let mut h = header(ID, 4096 * 20 + 5);
        h.reconnect_bytes = Some(1 << 20);
        let s = StateFile::create(&w, &h).unwrap();
        s.put_crc(3, 0xdead_beef).unwrap();
        s.put_crc(20, 7).unwrap();
        s.set_bits(&[3, 20], true, true).unwrap();
        drop(s);
        let (s, back) = StateFile::open(&w, &h.transfer_id).unwrap().unwrap();
        assert_eq!(back, h, "every header field, ReconnectBytes included");
        assert_eq!(s.crc(3).unwrap(), 0xdead_beef);
        assert_eq!(s.crc(20).unwrap(), 7);
        assert!(s.has_bit(3).unwrap() && s.has_bit(20).unwrap() && !s.has_bit(4).unwrap());
        s.set_bits(&[3], false, false).unwrap();
        assert!(!s.has_bit(3).unwrap());
        let _ = fs::remove_dir_all(&p);
    }

    #[test]
    fn a_damaged_state_file_is_not_valid() {
        let (dir, w) = temp("bad");
        let h = header(ID, 10_000);
        drop(StateFile::create(&w, &h).unwrap());
        let p = dir.join(state_name(&h.transfer_id));
        let mut bytes = fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 1);
        fs::write(&p, &bytes).unwrap();
        assert!(StateFile::open(&w, &h.transfer_id).unwrap().is_none());
        fs::write(&p, b"FDPSTAT1\xff\xff\xff\xff").unwrap();
        assert!(StateFile::open(&w, &h.transfer_id).unwrap().is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn f24_done_records_and_retention_sweep() {
        let (p, w) = temp("sweep");
        let h = header(ID, 10_000);
        let d = Done {
            header: h.clone(),
            file_name: "a-1.bin".into(),
        };
        write_done(&w, &d).unwrap();
        assert_eq!(read_done(&w, &h.transfer_id), Some(d));
        // A partial transfer within retention is kept; a .part without a .state goes.
        drop(StateFile::create(&w, &h).unwrap());
        let other = TransferId::parse("9b2e4f60-1c3d-4a5b-8e7f-0a1b2c3d4e5f").unwrap();
        fs::write(p.join(format!("{other}.part")), b"x").unwrap();
        let discarded = Mutex::new(Vec::new());
        let discard = |id: &TransferId| {
            discarded.lock().unwrap().push(*id);
            let _ = fs::remove_file(p.join(format!("{id}.part")));
            Ok(())
        };
        let s = sweep(&w, Duration::from_secs(3600), &|_| false, &discard);
        assert_eq!((s.kept, s.deleted, s.forgotten), (1, 1, 0));
        assert_eq!(*discarded.lock().unwrap(), vec![other]);
        // Retention 0: everything idle goes.
        std::thread::sleep(Duration::from_millis(20));
        let s = sweep(&w, Duration::ZERO, &|_| false, &discard);
        assert_eq!((s.kept, s.deleted, s.forgotten), (0, 1, 1));
        assert!(read_done(&w, &h.transfer_id).is_none());
        assert!(!p.join(state_name(&h.transfer_id)).exists());
        let _ = fs::remove_dir_all(&p);
    }

    #[test]
    fn planted_state_and_done_links_are_never_followed() {
        let (p, w) = temp("links");
        let victim = p.with_extension("victim");
        fs::write(&victim, b"keep me").unwrap();
        let h = header(ID, 10_000);
        let id = h.transfer_id;
        for name in [
            state_name(&id),
            done_name(&id),
            OsString::from(format!("{id}.done.new")),
        ] {
            std::os::unix::fs::symlink(&victim, p.join(name)).unwrap();
        }
        // A planted .state link is no valid state; a new one replaces the link, not its target.
        assert!(StateFile::open(&w, &id).unwrap().is_none());
        assert!(read_done(&w, &id).is_none());
        drop(StateFile::create(&w, &h).unwrap());
        let d = Done {
            header: h.clone(),
            file_name: "a.bin".into(),
        };
        write_done(&w, &d).unwrap();
        assert_eq!(read_done(&w, &id), Some(d));
        assert!(StateFile::open(&w, &id).unwrap().is_some());
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        let _ = fs::remove_dir_all(&p);
        let _ = fs::remove_file(&victim);
    }
}
