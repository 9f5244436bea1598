//! FastDP 1.1.0 as `cli.py` sends it (fastdp.md 1.2): the receiver's reply lines and the
//! decoders of its whole-file compressions (F33-F35).
//!
//! A 1.1.0 sender compresses the whole file, then sends it in chunks 0, 1, 2... with no reply
//! until the end. Ferry writes the compressed stream to a temporary file (hashing it), then
//! decodes it into a second temporary with a [`Decoder`]: bytes in, in pieces of any size;
//! bytes out into the caller's sink through one fixed 64 KiB buffer; output capped (the file
//! size limit and the free space) so a bomb stops at the cap. Nothing here reads a file.
//!
//! - `Zstd`: exactly one frame (content size optional, window at most 8 MiB), nothing after it.
//! - `Zip`: exactly one member, stored or deflated, ZIP64 sizes and data descriptors
//!   understood, not encrypted; read front to back (local header, data, central directory of one
//!   entry, ZIP64 end records, end record), checking CRC-32 and sizes. Names are ignored.
//! - `TarGz`: one gzip member (CRC-32 and size checked) holding a tar of one regular file; pax
//!   extended headers (their `size` honoured), pax globals and GNU long-name entries skipped;
//!   only zero blocks may follow the file.
//!
//! ```text
//! zip    [local header 30 + name + extra][data][descriptor?] [central entry 46 + name + extra
//!        + comment] [ZIP64 end 56+, locator 20]? [end 22 + comment]
//! gzip   1f 8b 08 FLG MTIME(4) XFL OS [extra][name\0][comment\0][crc16] deflate CRC32 ISIZE
//! tar    512-byte headers (size octal at 124, checksum at 148, type at 156), data padded to 512
//! ```

use std::fmt;

/// The success reply: unframed ASCII, 27 bytes, then a close.
pub const SUCCESS: &[u8] = b"File received successfully.";

/// Why a 1.1.0 transfer failed; each has one unframed `ERROR: ...` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V110Error {
    MalformedChunkHeader,
    IncompleteChunkData,
    ChecksumMismatch,
    BadHeader,
    BadFileName,
    FileTooLarge,
    NotEnoughDiskSpace,
    DecompressionFailed,
    Timeout,
}

impl V110Error {
    /// The exact reply line.
    pub fn line(self) -> &'static [u8] {
        match self {
            V110Error::MalformedChunkHeader => b"ERROR: Malformed chunk header.",
            V110Error::IncompleteChunkData => b"ERROR: Incomplete chunk data.",
            V110Error::ChecksumMismatch => b"ERROR: Checksum mismatch.",
            V110Error::BadHeader => b"ERROR: Bad header.",
            V110Error::BadFileName => b"ERROR: Bad file name.",
            V110Error::FileTooLarge => b"ERROR: File too large.",
            V110Error::NotEnoughDiskSpace => b"ERROR: Not enough disk space.",
            V110Error::DecompressionFailed => b"ERROR: Decompression failed.",
            V110Error::Timeout => b"ERROR: Timeout.",
        }
    }
}

impl fmt::Display for V110Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fastdp 1.1.0: {}", String::from_utf8_lossy(self.line()))
    }
}

impl std::error::Error for V110Error {}

// ---------------------------------------------------------------------------------------------
// Decoders of the whole-file compressions, incremental and capped.
// ---------------------------------------------------------------------------------------------

use flate2::{Crc, Decompress, FlushDecompress, Status as InflateStatus};
use zstd::zstd_safe::{self, DParameter, InBuffer, OutBuffer};

use super::messages::V110Compress;

/// Size of the decoders' fixed output buffer.
const OUT_BUF: usize = 64 * 1024;
/// Largest zip name + extra field or pax header collected (they are skipped or scanned).
const MAX_META: usize = 1 << 20;
/// Window log a 1.1.0 zstd frame may use (cli.py's level 3 uses at most 2 MiB).
pub const MAX_WINDOW_LOG: u32 = 23;

/// Why decoding a 1.1.0 stream failed (`ERROR: Decompression failed.`, except a sink error,
/// which is the driver's own: disk full, say).
#[derive(Debug)]
pub enum DecodeError {
    /// The output would pass the cap (max_file_size, free space).
    TooLarge {
        cap: u64,
    },
    /// The input ended inside the compressed stream.
    Truncated,
    /// Bytes after the end of the stream (a second frame, member or garbage).
    Trailing,
    Zstd(&'static str),
    Zip(&'static str),
    Gzip(&'static str),
    Tar(&'static str),
    Deflate(String),
    Sink(std::io::Error),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { cap } => write!(f, "1.1.0 decode: output over {cap} bytes"),
            DecodeError::Truncated => f.write_str("1.1.0 decode: stream truncated"),
            DecodeError::Trailing => f.write_str("1.1.0 decode: bytes after the stream"),
            DecodeError::Zstd(w) => write!(f, "1.1.0 decode: zstd: {w}"),
            DecodeError::Zip(w) => write!(f, "1.1.0 decode: zip: {w}"),
            DecodeError::Gzip(w) => write!(f, "1.1.0 decode: gzip: {w}"),
            DecodeError::Tar(w) => write!(f, "1.1.0 decode: tar: {w}"),
            DecodeError::Deflate(w) => write!(f, "1.1.0 decode: deflate: {w}"),
            DecodeError::Sink(e) => write!(f, "1.1.0 decode: writing output: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    /// The reply line for this failure.
    pub fn reply(&self) -> V110Error {
        V110Error::DecompressionFailed
    }
}

/// Where decoded bytes go (the driver writes them to the decoded temporary).
pub type Sink<'a> = dyn FnMut(&[u8]) -> std::io::Result<()> + 'a;

/// Counts output against the cap, then hands it on.
struct Capped {
    cap: u64,
    produced: u64,
}

impl Capped {
    fn emit(&mut self, data: &[u8], sink: &mut Sink<'_>) -> Result<(), DecodeError> {
        if data.is_empty() {
            return Ok(());
        }
        let total = self.produced + data.len() as u64;
        if total > self.cap {
            return Err(DecodeError::TooLarge { cap: self.cap });
        }
        self.produced = total;
        sink(data).map_err(DecodeError::Sink)
    }
}

/// Collects a fixed number of bytes across feeds (headers of zip, gzip and tar).
#[derive(Default)]
struct Collect {
    buf: Vec<u8>,
}

impl Collect {
    /// Takes bytes until `want` are held; returns (consumed, complete).
    fn fill(&mut self, input: &[u8], want: usize) -> (usize, bool) {
        let take = want.saturating_sub(self.buf.len()).min(input.len());
        self.buf.extend_from_slice(&input[..take]);
        (take, self.buf.len() >= want)
    }
}

fn le16(b: &[u8]) -> u64 {
    u64::from(u16::from_le_bytes([b[0], b[1]]))
}

fn le32(b: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Raw deflate with CRC-32 of the output, into the caller's sink through a fixed buffer.
struct Inflate {
    z: Decompress,
    crc: Crc,
    buf: Vec<u8>,
    done: bool,
}

impl Inflate {
    fn new() -> Inflate {
        Inflate {
            z: Decompress::new(false),
            crc: Crc::new(),
            buf: vec![0; OUT_BUF],
            done: false,
        }
    }

    /// Inflates from `input` until it is used up or the deflate stream ends; returns bytes
    /// consumed. Output goes to `out`.
    fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut dyn FnMut(&[u8]) -> Result<(), DecodeError>,
    ) -> Result<usize, DecodeError> {
        let mut consumed = 0;
        while !self.done {
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let st = self
                .z
                .decompress(input, &mut self.buf, FlushDecompress::None)
                .map_err(|e| DecodeError::Deflate(e.to_string()))?;
            let used = (self.z.total_in() - in0) as usize;
            let made = (self.z.total_out() - out0) as usize;
            consumed += used;
            input = &input[used..];
            self.crc.update(&self.buf[..made]);
            out(&self.buf[..made])?;
            if st == InflateStatus::StreamEnd {
                self.done = true;
            } else if used == 0 && made == 0 {
                break;
            }
        }
        Ok(consumed)
    }
}

/// One zstd frame, content size optional.
struct ZstdStream {
    dctx: zstd_safe::DCtx<'static>,
    buf: Vec<u8>,
    done: bool,
}

impl ZstdStream {
    fn new() -> Result<ZstdStream, DecodeError> {
        let mut dctx = zstd_safe::DCtx::try_create().ok_or(DecodeError::Zstd("no context"))?;
        dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
            .map_err(|c| DecodeError::Zstd(zstd_safe::get_error_name(c)))?;
        Ok(ZstdStream {
            dctx,
            buf: vec![0; OUT_BUF],
            done: false,
        })
    }

    fn feed(
        &mut self,
        mut input: &[u8],
        cap: &mut Capped,
        sink: &mut Sink<'_>,
    ) -> Result<(), DecodeError> {
        loop {
            if self.done {
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err(DecodeError::Trailing)
                };
            }
            let mut inb = InBuffer::around(input);
            let mut outb = OutBuffer::around(&mut self.buf[..]);
            let hint = self
                .dctx
                .decompress_stream(&mut outb, &mut inb)
                .map_err(|c| DecodeError::Zstd(zstd_safe::get_error_name(c)))?;
            let (used, made) = (inb.pos(), outb.pos());
            cap.emit(&self.buf[..made], sink)?;
            input = &input[used..];
            if hint == 0 {
                self.done = true;
            } else if used == 0 && made == 0 {
                return Ok(());
            }
        }
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.done {
            Ok(())
        } else {
            Err(DecodeError::Truncated)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ZipState {
    LocalHeader,
    LocalMeta { name_extra: usize },
    Data,
    Descriptor,
    CentralHeader,
    CentralMeta { rest: usize },
    AfterCentral,
    Zip64End { rest: u64 },
    Locator,
    EndSig,
    End,
    EndComment { rest: usize },
    Done,
}

/// One zip member, stored or deflated, ZIP64 understood, read front to back.
struct ZipStream {
    state: ZipState,
    head: Collect,
    method: u16,
    flags: u16,
    zip64: bool,
    /// From the local header (when not deferred to a data descriptor).
    local_crc: u64,
    csize: u64,
    usize: u64,
    /// Stored data still to copy.
    stored_left: u64,
    compressed_in: u64,
    inflate: Option<Inflate>,
    stored_crc: Crc,
    central_seen: bool,
}

const SIG_LOCAL: u64 = 0x0403_4b50;
const SIG_CENTRAL: u64 = 0x0201_4b50;
const SIG_DESCRIPTOR: u64 = 0x0807_4b50;
const SIG_ZIP64_END: u64 = 0x0606_4b50;
const SIG_ZIP64_LOCATOR: u64 = 0x0706_4b50;
const SIG_END: u64 = 0x0605_4b50;

/// Reads the ZIP64 extended information field from an extra block, for the fields the fixed
/// header marked 0xFFFFFFFF (in the order uncompressed, compressed).
fn zip64_sizes(extra: &[u8], usize: &mut u64, csize: &mut u64) -> Result<bool, DecodeError> {
    let mut pos = 0;
    while pos + 4 <= extra.len() {
        let id = le16(&extra[pos..]);
        let len = le16(&extra[pos + 2..]) as usize;
        let body = extra
            .get(pos + 4..pos + 4 + len)
            .ok_or(DecodeError::Zip("extra field past its block"))?;
        if id == 1 {
            let mut at = 0;
            for field in [usize, csize] {
                if *field == 0xFFFF_FFFF {
                    let v = body
                        .get(at..at + 8)
                        .ok_or(DecodeError::Zip("short ZIP64 field"))?;
                    *field = le64(v);
                    at += 8;
                }
            }
            return Ok(true);
        }
        pos += 4 + len;
    }
    Ok(false)
}

impl ZipStream {
    fn new() -> ZipStream {
        ZipStream {
            state: ZipState::LocalHeader,
            head: Collect::default(),
            method: 0,
            flags: 0,
            zip64: false,
            local_crc: 0,
            csize: 0,
            usize: 0,
            stored_left: 0,
            compressed_in: 0,
            inflate: None,
            stored_crc: Crc::new(),
            central_seen: false,
        }
    }

    /// What follows the member's data.
    fn after_data(&mut self, cap: &Capped) -> Result<ZipState, DecodeError> {
        if self.flags & 0x08 != 0 {
            return Ok(ZipState::Descriptor);
        }
        self.check_member(cap)?;
        Ok(ZipState::CentralHeader)
    }

    /// The member's CRC-32 and sizes against what was produced.
    fn check_member(&self, cap: &Capped) -> Result<(), DecodeError> {
        if u64::from(self.output_crc()) != self.local_crc {
            return Err(DecodeError::Zip("CRC-32 mismatch"));
        }
        if cap.produced != self.usize {
            return Err(DecodeError::Zip("uncompressed size mismatch"));
        }
        if self.method == 8 && self.compressed_in != self.csize {
            return Err(DecodeError::Zip("compressed size mismatch"));
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.state {
            ZipState::Done => Ok(()),
            ZipState::LocalHeader if self.head.buf.is_empty() => {
                Err(DecodeError::Zip("empty archive"))
            }
            _ => Err(DecodeError::Truncated),
        }
    }

    fn output_crc(&self) -> u32 {
        match &self.inflate {
            Some(i) => i.crc.sum(),
            None => self.stored_crc.sum(),
        }
    }

    fn feed(
        &mut self,
        mut input: &[u8],
        cap: &mut Capped,
        sink: &mut Sink<'_>,
    ) -> Result<(), DecodeError> {
        use ZipState::*;
        while !input.is_empty() {
            let (used, next) = match self.state {
                LocalHeader => {
                    // The signature first: an archive of no member is shorter than a header.
                    let (n, sig) = self.head.fill(input, 4);
                    if sig {
                        match le32(&self.head.buf) {
                            SIG_LOCAL => {}
                            SIG_CENTRAL | SIG_END => return Err(DecodeError::Zip("no member")),
                            _ => return Err(DecodeError::Zip("not a zip file")),
                        }
                    }
                    let (m, full) = self.head.fill(&input[n..], 30);
                    let n = n + m;
                    if !full {
                        (n, None)
                    } else {
                        let h = std::mem::take(&mut self.head.buf);
                        self.flags = le16(&h[6..]) as u16;
                        self.method = le16(&h[8..]) as u16;
                        if self.flags & 0x41 != 0 {
                            return Err(DecodeError::Zip("encrypted member"));
                        }
                        if self.method != 0 && self.method != 8 {
                            return Err(DecodeError::Zip("method neither stored nor deflated"));
                        }
                        if self.method == 0 && self.flags & 0x08 != 0 {
                            return Err(DecodeError::Zip("stored member of unknown size"));
                        }
                        self.local_crc = le32(&h[14..]);
                        self.csize = le32(&h[18..]);
                        self.usize = le32(&h[22..]);
                        let name_extra = (le16(&h[26..]) + le16(&h[28..])) as usize;
                        self.head.buf = h[26..30].to_vec();
                        (n, Some(LocalMeta { name_extra }))
                    }
                }
                LocalMeta { name_extra } => {
                    // The first 4 bytes held are the two lengths.
                    let (n, full) = self.head.fill(input, 4 + name_extra);
                    if !full {
                        (n, None)
                    } else {
                        let meta = std::mem::take(&mut self.head.buf);
                        let name_len = le16(&meta) as usize;
                        let extra = &meta[4 + name_len..];
                        self.zip64 = zip64_sizes(extra, &mut self.usize, &mut self.csize)?;
                        if self.flags & 0x08 == 0 && self.usize > cap.cap {
                            return Err(DecodeError::TooLarge { cap: cap.cap });
                        }
                        if self.method == 8 {
                            self.inflate = Some(Inflate::new());
                        } else {
                            self.stored_left = self.csize;
                        }
                        (n, Some(Data))
                    }
                }
                Data => {
                    if self.method == 0 {
                        let take = (input.len() as u64).min(self.stored_left) as usize;
                        self.stored_crc.update(&input[..take]);
                        cap.emit(&input[..take], sink)?;
                        self.stored_left -= take as u64;
                        if self.stored_left == 0 {
                            (take, Some(self.after_data(cap)?))
                        } else {
                            (take, None)
                        }
                    } else {
                        let inflate = self.inflate.as_mut().expect("deflated member");
                        let n = inflate.feed(input, &mut |b| cap.emit(b, sink))?;
                        self.compressed_in += n as u64;
                        if self.flags & 0x08 == 0 && self.compressed_in > self.csize {
                            return Err(DecodeError::Zip("deflate data past its compressed size"));
                        }
                        let done = self.inflate.as_ref().is_some_and(|i| i.done);
                        if n == 0 && !done {
                            return Err(DecodeError::Deflate("no progress".into()));
                        }
                        if done {
                            (n, Some(self.after_data(cap)?))
                        } else {
                            (n, None)
                        }
                    }
                }
                Descriptor => {
                    // Optional signature, CRC, then two sizes (8 bytes each with ZIP64).
                    let sizes = if self.zip64 { 16 } else { 8 };
                    let (n, full) = self.head.fill(input, 4);
                    if !full {
                        (n, None)
                    } else {
                        let with_sig = le32(&self.head.buf) == SIG_DESCRIPTOR;
                        let want = if with_sig { 8 + sizes } else { 4 + sizes };
                        let (m, full) = self.head.fill(&input[n..], want);
                        if !full {
                            (n + m, None)
                        } else {
                            let d = std::mem::take(&mut self.head.buf);
                            let d = if with_sig { &d[4..] } else { &d[..] };
                            self.local_crc = le32(d);
                            self.csize = if self.zip64 {
                                le64(&d[4..])
                            } else {
                                le32(&d[4..])
                            };
                            self.usize = if self.zip64 {
                                le64(&d[12..])
                            } else {
                                le32(&d[8..])
                            };
                            self.check_member(cap)?;
                            (n + m, Some(CentralHeader))
                        }
                    }
                }
                CentralHeader => {
                    let (n, full) = self.head.fill(input, 46);
                    if !full {
                        (n, None)
                    } else {
                        let h = std::mem::take(&mut self.head.buf);
                        match le32(&h) {
                            SIG_CENTRAL => {}
                            SIG_LOCAL => return Err(DecodeError::Zip("more than one member")),
                            _ => return Err(DecodeError::Zip("central directory expected")),
                        }
                        if self.central_seen {
                            return Err(DecodeError::Zip("more than one member"));
                        }
                        self.central_seen = true;
                        if le16(&h[10..]) as u16 != self.method
                            || le32(&h[16..]) != u64::from(self.output_crc())
                        {
                            return Err(DecodeError::Zip(
                                "central directory disagrees with the member",
                            ));
                        }
                        let rest = (le16(&h[28..]) + le16(&h[30..]) + le16(&h[32..])) as usize;
                        (n, Some(CentralMeta { rest }))
                    }
                }
                CentralMeta { rest } => {
                    let take = rest.min(input.len());
                    let next = if take == rest {
                        AfterCentral
                    } else {
                        CentralMeta { rest: rest - take }
                    };
                    (take, Some(next))
                }
                AfterCentral => {
                    let (n, full) = self.head.fill(input, 4);
                    if !full {
                        (n, None)
                    } else {
                        let sig = le32(&self.head.buf);
                        match sig {
                            SIG_CENTRAL | SIG_LOCAL => {
                                return Err(DecodeError::Zip("more than one member"))
                            }
                            SIG_ZIP64_END => {
                                let (m, full) = self.head.fill(&input[n..], 12);
                                if !full {
                                    (n + m, None)
                                } else {
                                    let rest = le64(&self.head.buf[4..]);
                                    self.head.buf.clear();
                                    (n + m, Some(Zip64End { rest }))
                                }
                            }
                            SIG_END => (n, Some(End)),
                            _ => return Err(DecodeError::Zip("end of central directory expected")),
                        }
                    }
                }
                Zip64End { rest } => {
                    let take = (input.len() as u64).min(rest) as usize;
                    let left = rest - take as u64;
                    (
                        take,
                        Some(if left == 0 {
                            Locator
                        } else {
                            Zip64End { rest: left }
                        }),
                    )
                }
                Locator => {
                    let (n, full) = self.head.fill(input, 20);
                    if !full {
                        (n, None)
                    } else {
                        if le32(&self.head.buf) != SIG_ZIP64_LOCATOR {
                            return Err(DecodeError::Zip("ZIP64 locator expected"));
                        }
                        self.head.buf.clear();
                        (n, Some(EndSig))
                    }
                }
                EndSig => {
                    let (n, full) = self.head.fill(input, 4);
                    if !full {
                        (n, None)
                    } else if le32(&self.head.buf) != SIG_END {
                        return Err(DecodeError::Zip("end of central directory expected"));
                    } else {
                        (n, Some(End))
                    }
                }
                End => {
                    // The 4-byte signature is already held.
                    let (n, full) = self.head.fill(input, 22);
                    if !full {
                        (n, None)
                    } else {
                        let e = std::mem::take(&mut self.head.buf);
                        let entries = le16(&e[10..]);
                        if entries != 1 && entries != 0xFFFF {
                            return Err(DecodeError::Zip("not exactly one member"));
                        }
                        let rest = le16(&e[20..]) as usize;
                        (n, Some(if rest == 0 { Done } else { EndComment { rest } }))
                    }
                }
                EndComment { rest } => {
                    let take = rest.min(input.len());
                    (
                        take,
                        Some(if take == rest {
                            Done
                        } else {
                            EndComment { rest: rest - take }
                        }),
                    )
                }
                Done => return Err(DecodeError::Trailing),
            };
            input = &input[used..];
            if let Some(s) = next {
                self.state = s;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TarState {
    Header,
    /// Data of an entry that is skipped (pax global, GNU long names), then its padding.
    Skip {
        left: u64,
    },
    /// A pax extended header's records, collected to find `size`.
    Pax {
        left: usize,
        pad: u64,
    },
    File {
        left: u64,
        pad: u64,
    },
    /// After the end-of-archive block: only zero bytes may follow.
    Trailer,
}

/// A tar stream holding one regular file; pax and GNU long-name entries are skipped.
struct Tar {
    state: TarState,
    head: Collect,
    pax: Vec<u8>,
    pax_size: Option<u64>,
    file_seen: bool,
}

fn pad512(n: u64) -> u64 {
    (512 - n % 512) % 512
}

/// A numeric tar field: octal digits (spaces and NULs around them), or GNU base-256.
fn tar_number(f: &[u8]) -> Result<u64, DecodeError> {
    if f[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or(DecodeError::Tar("size too large"))?;
        }
        return Ok(v);
    }
    let digits: &[u8] = {
        let start = f.iter().position(|&b| b != b' ').unwrap_or(f.len());
        let end = f[start..]
            .iter()
            .position(|&b| b == 0 || b == b' ')
            .map_or(f.len(), |e| start + e);
        &f[start..end]
    };
    let mut v = 0u64;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return Err(DecodeError::Tar("bad octal number"));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(DecodeError::Tar("number too large"))?;
    }
    Ok(v)
}

/// `size` from pax records `"<len> <key>=<value>\n"`.
fn pax_size(records: &[u8]) -> Result<Option<u64>, DecodeError> {
    let mut rest = records;
    let mut size = None;
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or(DecodeError::Tar("bad pax record"))?;
        let len = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&l| l > sp + 1 && l <= rest.len())
            .ok_or(DecodeError::Tar("bad pax record length"))?;
        let rec = &rest[sp + 1..len];
        if let Some(v) = rec.strip_prefix(b"size=") {
            let v = v.strip_suffix(b"\n").unwrap_or(v);
            let v = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(DecodeError::Tar("bad pax size"))?;
            size = Some(v);
        }
        rest = &rest[len..];
    }
    Ok(size)
}

impl Tar {
    fn new() -> Tar {
        Tar {
            state: TarState::Header,
            head: Collect::default(),
            pax: Vec::new(),
            pax_size: None,
            file_seen: false,
        }
    }

    fn header(&mut self, h: &[u8], cap: &Capped) -> Result<TarState, DecodeError> {
        if h.iter().all(|&b| b == 0) {
            return Ok(TarState::Trailer);
        }
        let stored = tar_number(&h[148..156])?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| u64::from(if (148..156).contains(&i) { b' ' } else { b }))
            .sum();
        if sum != stored {
            return Err(DecodeError::Tar("header checksum mismatch"));
        }
        let size = tar_number(&h[124..136])?;
        match h[156] {
            b'x' => {
                if size > MAX_META as u64 {
                    return Err(DecodeError::Tar("pax header too large"));
                }
                self.pax.clear();
                Ok(TarState::Pax {
                    left: size as usize,
                    pad: pad512(size),
                })
            }
            b'g' | b'L' | b'K' => Ok(TarState::Skip {
                left: size + pad512(size),
            }),
            b'0' | 0 | b'7' => {
                if self.file_seen {
                    return Err(DecodeError::Tar("more than one member"));
                }
                self.file_seen = true;
                let size = self.pax_size.take().unwrap_or(size);
                if size > cap.cap {
                    return Err(DecodeError::TooLarge { cap: cap.cap });
                }
                Ok(TarState::File {
                    left: size,
                    pad: pad512(size),
                })
            }
            _ => Err(DecodeError::Tar("member is not a regular file")),
        }
    }

    fn feed(
        &mut self,
        mut input: &[u8],
        cap: &mut Capped,
        sink: &mut Sink<'_>,
    ) -> Result<(), DecodeError> {
        while !input.is_empty() {
            let used = match self.state {
                TarState::Header => {
                    let (n, full) = self.head.fill(input, 512);
                    if full {
                        let h = std::mem::take(&mut self.head.buf);
                        self.state = self.header(&h, cap)?;
                    }
                    n
                }
                TarState::Skip { left } => {
                    let take = (input.len() as u64).min(left);
                    self.state = if take == left {
                        TarState::Header
                    } else {
                        TarState::Skip { left: left - take }
                    };
                    take as usize
                }
                TarState::Pax { left, pad } => {
                    let take = input.len().min(left);
                    self.pax.extend_from_slice(&input[..take]);
                    if take == left {
                        self.pax_size = pax_size(&self.pax)?.or(self.pax_size);
                        self.state = TarState::Skip { left: pad };
                        if pad == 0 {
                            self.state = TarState::Header;
                        }
                    } else {
                        self.state = TarState::Pax {
                            left: left - take,
                            pad,
                        };
                    }
                    take
                }
                TarState::File { left, pad } => {
                    let take = (input.len() as u64).min(left) as usize;
                    cap.emit(&input[..take], sink)?;
                    let left = left - take as u64;
                    self.state = match (left, pad) {
                        (0, 0) => TarState::Header,
                        (0, pad) => TarState::Skip { left: pad },
                        (left, pad) => TarState::File { left, pad },
                    };
                    take
                }
                TarState::Trailer => {
                    if input.iter().any(|&b| b != 0) {
                        return Err(DecodeError::Tar("data after the end of the archive"));
                    }
                    input.len()
                }
            };
            input = &input[used..];
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if !self.file_seen {
            return Err(DecodeError::Tar("no regular file"));
        }
        match self.state {
            TarState::Trailer => Ok(()),
            // Python's tarfile always writes the end blocks, but a missing end after a whole
            // file loses nothing.
            TarState::Header if self.head.buf.is_empty() => Ok(()),
            _ => Err(DecodeError::Truncated),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GzState {
    Header,
    ExtraLen,
    Extra { left: usize },
    Name,
    Comment,
    HeaderCrc,
    Deflate,
    Trailer,
    Done,
}

/// One gzip member holding a tar.
struct TarGz {
    state: GzState,
    flags: u8,
    head: Collect,
    inflate: Inflate,
    tar: Tar,
}

impl TarGz {
    fn new() -> TarGz {
        TarGz {
            state: GzState::Header,
            flags: 0,
            head: Collect::default(),
            inflate: Inflate::new(),
            tar: Tar::new(),
        }
    }

    /// The state after the header field `done`, skipping absent optional fields.
    fn after(&self, done: GzState) -> GzState {
        let order = [
            (GzState::ExtraLen, 0x04),
            (GzState::Name, 0x08),
            (GzState::Comment, 0x10),
            (GzState::HeaderCrc, 0x02),
        ];
        let from = order
            .iter()
            .position(|(s, _)| *s == done)
            .map_or(0, |i| i + 1);
        order[from..]
            .iter()
            .find(|(_, bit)| self.flags & bit != 0)
            .map_or(GzState::Deflate, |(s, _)| *s)
    }

    fn feed(
        &mut self,
        mut input: &[u8],
        cap: &mut Capped,
        sink: &mut Sink<'_>,
    ) -> Result<(), DecodeError> {
        while !input.is_empty() {
            let used = match self.state {
                GzState::Header => {
                    let (n, full) = self.head.fill(input, 10);
                    if full {
                        let h = std::mem::take(&mut self.head.buf);
                        if h[..3] != [0x1f, 0x8b, 8] {
                            return Err(DecodeError::Gzip("not a gzip deflate stream"));
                        }
                        if h[3] & 0xe0 != 0 {
                            return Err(DecodeError::Gzip("reserved flag set"));
                        }
                        self.flags = h[3];
                        self.state = self.after(GzState::Header);
                    }
                    n
                }
                GzState::ExtraLen => {
                    let (n, full) = self.head.fill(input, 2);
                    if full {
                        let left = le16(&self.head.buf) as usize;
                        self.head.buf.clear();
                        self.state = GzState::Extra { left };
                    }
                    n
                }
                GzState::Extra { left } => {
                    let take = left.min(input.len());
                    self.state = if take == left {
                        self.after(GzState::ExtraLen)
                    } else {
                        GzState::Extra { left: left - take }
                    };
                    take
                }
                GzState::Name | GzState::Comment => match memchr::memchr(0, input) {
                    Some(i) => {
                        self.state = self.after(self.state);
                        i + 1
                    }
                    None => input.len(),
                },
                GzState::HeaderCrc => {
                    let (n, full) = self.head.fill(input, 2);
                    if full {
                        self.head.buf.clear();
                        self.state = GzState::Deflate;
                    }
                    n
                }
                GzState::Deflate => {
                    let tar = &mut self.tar;
                    let n = self.inflate.feed(input, &mut |b| tar.feed(b, cap, sink))?;
                    if self.inflate.done {
                        self.state = GzState::Trailer;
                    } else if n == 0 {
                        return Err(DecodeError::Deflate("no progress".into()));
                    }
                    n
                }
                GzState::Trailer => {
                    let (n, full) = self.head.fill(input, 8);
                    if full {
                        let t = std::mem::take(&mut self.head.buf);
                        if le32(&t) != u64::from(self.inflate.crc.sum()) {
                            return Err(DecodeError::Gzip("CRC-32 mismatch"));
                        }
                        if le32(&t[4..]) != u64::from(self.inflate.crc.amount()) {
                            return Err(DecodeError::Gzip("size mismatch"));
                        }
                        self.state = GzState::Done;
                    }
                    n
                }
                GzState::Done => return Err(DecodeError::Trailing),
            };
            input = &input[used..];
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.state != GzState::Done {
            return Err(DecodeError::Truncated);
        }
        self.tar.finish()
    }
}

enum Inner {
    None,
    Zstd(Box<ZstdStream>),
    Zip(Box<ZipStream>),
    TarGz(Box<TarGz>),
}

/// Decodes a 1.1.0 compressed stream incrementally (from the compressed temporary into the
/// decoded one), never producing more than `cap` bytes and never holding more than fixed
/// buffers: feed the stream in pieces of any size, then [`finish`](Self::finish).
pub struct Decoder {
    inner: Inner,
    out: Capped,
}

impl Decoder {
    /// A decoder for `kind` whose output may not pass `cap` bytes (max_file_size and free
    /// space).
    pub fn new(kind: V110Compress, cap: u64) -> Result<Decoder, DecodeError> {
        let inner = match kind {
            V110Compress::None => Inner::None,
            V110Compress::Zstd => Inner::Zstd(Box::new(ZstdStream::new()?)),
            V110Compress::Zip => Inner::Zip(Box::new(ZipStream::new())),
            V110Compress::TarGz => Inner::TarGz(Box::new(TarGz::new())),
        };
        Ok(Decoder {
            inner,
            out: Capped { cap, produced: 0 },
        })
    }

    /// Decodes the next piece of the compressed stream; output goes to `sink`.
    pub fn feed(&mut self, input: &[u8], sink: &mut Sink<'_>) -> Result<(), DecodeError> {
        match &mut self.inner {
            Inner::None => self.out.emit(input, sink),
            Inner::Zstd(z) => z.feed(input, &mut self.out, sink),
            Inner::Zip(z) => z.feed(input, &mut self.out, sink),
            Inner::TarGz(t) => t.feed(input, &mut self.out, sink),
        }
    }

    /// The stream ended: it must be complete. Returns the bytes produced.
    pub fn finish(&mut self) -> Result<u64, DecodeError> {
        match &self.inner {
            Inner::None => Ok(()),
            Inner::Zstd(z) => z.finish(),
            Inner::Zip(z) => z.finish(),
            Inner::TarGz(t) => t.finish(),
        }?;
        Ok(self.out.produced)
    }

    /// Bytes produced so far.
    pub fn produced(&self) -> u64 {
        self.out.produced
    }
}

#[cfg(test)]
mod tests;
