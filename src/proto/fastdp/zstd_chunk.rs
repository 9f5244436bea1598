//! Zstandard per chunk (fastdp.md 2.6, F11): every `"Zstd"` chunk is one standard frame with
//! `Frame_Content_Size` equal to len(i), no dictionary, a window of at most 8 MiB, and nothing
//! before or after it.
//!
//! [`ChunkCompressor`] writes such frames. [`ChunkInflater`] decodes one payload as it arrives in
//! slices, into output buffers the caller owns, never producing more than len(i) bytes: it reads
//! the frame header itself first (refusing skippable frames, a missing or different content size,
//! a dictionary, a window over 8 MiB) and only then lets zstd see the frame, with zstd's own
//! window limit set to 8 MiB as well. A second frame or trailing bytes are refused. No I/O: the
//! caller writes the output where it belongs.
//!
//! ```text
//! frame  28 b5 2f fd | FHD | [Window_Descriptor] | [Dictionary_ID] | [Frame_Content_Size] | blocks | [checksum]
//! FHD    bits 7-6 FCS size flag, 5 single segment, 4 unused, 3 reserved (0), 2 checksum, 1-0 dict id size
//! ```

use std::fmt;

use zstd::zstd_safe::{self, CParameter, DParameter, InBuffer, OutBuffer};

/// Window log never exceeded: 2^23 = 8 MiB.
pub const MAX_WINDOW_LOG: u32 = 23;
/// The largest window accepted.
pub const MAX_WINDOW: u64 = 1 << MAX_WINDOW_LOG;
/// Longest frame header: magic, descriptor, window, 4-byte dictionary id, 8-byte content size.
const MAX_FRAME_HEADER: usize = 18;
const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Why a chunk's zstd payload is refused (`bad-chunk`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZstdChunkError {
    /// Not a zstd frame (a skippable frame included).
    NotAFrame,
    /// The reserved descriptor bit is set.
    Reserved,
    /// No `Frame_Content_Size`.
    NoContentSize,
    /// The declared content size is not len(i).
    ContentSize { declared: u64, expected: u32 },
    /// A dictionary id other than 0.
    Dictionary(u32),
    /// A window over 8 MiB.
    Window(u64),
    /// The frame would decode past len(i); nothing beyond it was produced.
    TooLarge { expected: u32 },
    /// The frame ended short of len(i), or the payload ended inside the frame.
    Incomplete { produced: u32, expected: u32 },
    /// Bytes after the end of the frame (a second frame or garbage).
    Trailing,
    /// zstd refused the data (its error name).
    Corrupt(&'static str),
    /// The compressor failed (its error name).
    Compress(&'static str),
}

impl fmt::Display for ZstdChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZstdChunkError::NotAFrame => f.write_str("zstd: not a zstd frame"),
            ZstdChunkError::Reserved => f.write_str("zstd: reserved frame header bit set"),
            ZstdChunkError::NoContentSize => f.write_str("zstd: frame without a content size"),
            ZstdChunkError::ContentSize { declared, expected } => write!(
                f,
                "zstd: frame content size {declared}, expected {expected}"
            ),
            ZstdChunkError::Dictionary(id) => write!(f, "zstd: frame needs dictionary {id}"),
            ZstdChunkError::Window(w) => write!(f, "zstd: window {w} over 8 MiB"),
            ZstdChunkError::TooLarge { expected } => {
                write!(f, "zstd: frame decodes past {expected} bytes")
            }
            ZstdChunkError::Incomplete { produced, expected } => write!(
                f,
                "zstd: frame incomplete after {produced} of {expected} bytes"
            ),
            ZstdChunkError::Trailing => f.write_str("zstd: bytes after the frame"),
            ZstdChunkError::Corrupt(why) => write!(f, "zstd: corrupt frame: {why}"),
            ZstdChunkError::Compress(why) => write!(f, "zstd: compression failed: {why}"),
        }
    }
}

impl std::error::Error for ZstdChunkError {}

/// What a frame header declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of the header.
    pub len: usize,
    pub content_size: Option<u64>,
    pub window: u64,
    pub dictionary: u32,
}

/// Parses a zstd frame header at the start of `b`; `Ok(None)` when more bytes are needed.
pub fn parse_frame_header(b: &[u8]) -> Result<Option<FrameHeader>, ZstdChunkError> {
    let n = b.len().min(4);
    if b[..n] != MAGIC[..n] {
        return Err(ZstdChunkError::NotAFrame);
    }
    let Some(&fhd) = b.get(4) else {
        return Ok(None);
    };
    if fhd & 0x08 != 0 {
        return Err(ZstdChunkError::Reserved);
    }
    let single = fhd & 0x20 != 0;
    let fcs_len = match fhd >> 6 {
        0 if single => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let did_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    let wd_len = usize::from(!single);
    let len = 5 + wd_len + did_len + fcs_len;
    if b.len() < len {
        return Ok(None);
    }
    let mut pos = 5;
    let mut window = 0;
    if !single {
        let wd = b[pos];
        let exp = u32::from(wd >> 3);
        let base = 1u64 << (10 + exp);
        window = base + (base / 8) * u64::from(wd & 7);
        pos += 1;
    }
    let le = |s: &[u8]| s.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x));
    let dictionary = le(&b[pos..pos + did_len]) as u32;
    pos += did_len;
    let content_size = match fcs_len {
        0 => None,
        2 => Some(le(&b[pos..pos + 2]) + 256),
        n => Some(le(&b[pos..pos + n])),
    };
    if single {
        window = content_size.unwrap_or(0);
    }
    Ok(Some(FrameHeader {
        len,
        content_size,
        window,
        dictionary,
    }))
}

/// Checks a header against the rules of 2.6 for a chunk of `expected` bytes.
fn check_header(h: &FrameHeader, expected: u32) -> Result<(), ZstdChunkError> {
    let declared = h.content_size.ok_or(ZstdChunkError::NoContentSize)?;
    if declared != u64::from(expected) {
        return Err(ZstdChunkError::ContentSize { declared, expected });
    }
    if h.dictionary != 0 {
        return Err(ZstdChunkError::Dictionary(h.dictionary));
    }
    if h.window > MAX_WINDOW {
        return Err(ZstdChunkError::Window(h.window));
    }
    Ok(())
}

fn name(code: usize) -> &'static str {
    zstd_safe::get_error_name(code)
}

/// Compresses chunks into single frames with their content size, window ≤ 8 MiB, no checksum.
pub struct ChunkCompressor {
    cctx: zstd_safe::CCtx<'static>,
}

impl ChunkCompressor {
    /// A compressor at `level` (ferry's client uses 3, zstd's default).
    pub fn new(level: i32) -> Result<ChunkCompressor, ZstdChunkError> {
        let mut cctx =
            zstd_safe::CCtx::try_create().ok_or(ZstdChunkError::Compress("no context"))?;
        for p in [
            CParameter::CompressionLevel(level),
            CParameter::WindowLog(MAX_WINDOW_LOG),
            CParameter::ContentSizeFlag(true),
            CParameter::ChecksumFlag(false),
        ] {
            cctx.set_parameter(p)
                .map_err(|c| ZstdChunkError::Compress(name(c)))?;
        }
        Ok(ChunkCompressor { cctx })
    }

    /// Replaces `out` with one frame holding `chunk` (the buffer is reused; it grows to at most
    /// zstd's bound for the chunk, never from anything on the wire).
    pub fn compress(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ZstdChunkError> {
        out.clear();
        out.reserve(zstd_safe::compress_bound(chunk.len()));
        self.cctx
            .compress2(out, chunk)
            .map_err(|c| ZstdChunkError::Compress(name(c)))?;
        Ok(())
    }
}

/// Bounded streaming decoder of one chunk's payload at a time (reusable across chunks).
pub struct ChunkInflater {
    dctx: zstd_safe::DCtx<'static>,
    expected: u32,
    produced: u32,
    /// The frame header collected before zstd sees anything.
    head: [u8; MAX_FRAME_HEADER],
    head_len: usize,
    /// The header was checked and handed to zstd.
    started: bool,
    /// zstd reported the end of the frame.
    done: bool,
}

impl ChunkInflater {
    pub fn new() -> Result<ChunkInflater, ZstdChunkError> {
        let mut dctx =
            zstd_safe::DCtx::try_create().ok_or(ZstdChunkError::Corrupt("no context"))?;
        dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
            .map_err(|c| ZstdChunkError::Corrupt(name(c)))?;
        Ok(ChunkInflater {
            dctx,
            expected: 0,
            produced: 0,
            head: [0; MAX_FRAME_HEADER],
            head_len: 0,
            started: false,
            done: false,
        })
    }

    /// Starts a new payload whose chunk has `expected` = len(i) original bytes.
    pub fn begin(&mut self, expected: u32) {
        // Resetting the session of a valid context cannot fail.
        let _ = self.dctx.reset(zstd_safe::ResetDirective::SessionOnly);
        self.expected = expected;
        self.produced = 0;
        self.head_len = 0;
        self.started = false;
        self.done = false;
    }

    /// Bytes produced for the current payload.
    pub fn produced(&self) -> u32 {
        self.produced
    }

    /// Decodes from `input` into `out`; returns (input consumed, bytes written to `out`). Call
    /// again with the rest of the input while either is non-zero. Output is capped at len(i).
    pub fn decompress(
        &mut self,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, usize), ZstdChunkError> {
        let mut consumed = 0;
        if !self.started {
            let take = (MAX_FRAME_HEADER - self.head_len).min(input.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&input[..take]);
            let had = self.head_len;
            self.head_len += take;
            let Some(h) = parse_frame_header(&self.head[..self.head_len])? else {
                return Ok((take, 0));
            };
            check_header(&h, self.expected)?;
            // Hand zstd exactly the header bytes; the rest of `input` follows below.
            let mut inb = InBuffer::around(&self.head[..h.len]);
            let mut outb = OutBuffer::around(&mut out[..0]);
            self.dctx
                .decompress_stream(&mut outb, &mut inb)
                .map_err(|c| ZstdChunkError::Corrupt(name(c)))?;
            if inb.pos() != h.len {
                return Err(ZstdChunkError::Corrupt("frame header not taken"));
            }
            self.started = true;
            consumed = h.len - had;
        }
        let input = &input[consumed..];
        if self.done {
            return if input.is_empty() {
                Ok((consumed, 0))
            } else {
                Err(ZstdChunkError::Trailing)
            };
        }
        let room = (self.expected - self.produced) as usize;
        let cap = room.min(out.len());
        let mut inb = InBuffer::around(input);
        let mut outb = OutBuffer::around(&mut out[..cap]);
        let hint = self
            .dctx
            .decompress_stream(&mut outb, &mut inb)
            .map_err(|c| ZstdChunkError::Corrupt(name(c)))?;
        let (used, written) = (inb.pos(), outb.pos());
        self.produced += written as u32;
        if hint == 0 {
            self.done = true;
            if used < input.len() {
                return Err(ZstdChunkError::Trailing);
            }
        } else if used == 0 && written == 0 && !input.is_empty() {
            // zstd wants room for more output while the chunk is already full.
            if room == 0 {
                return Err(ZstdChunkError::TooLarge {
                    expected: self.expected,
                });
            }
            if out.is_empty() {
                return Ok((consumed, 0));
            }
            return Err(ZstdChunkError::Corrupt("no progress"));
        }
        Ok((consumed + used, written))
    }

    /// Decodes all of `input`, handing output to `sink` in pieces of at most `buf.len()` bytes.
    pub fn feed<E>(
        &mut self,
        mut input: &[u8],
        buf: &mut [u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        loop {
            let (used, written) = self.decompress(input, buf).map_err(FeedError::Zstd)?;
            if written > 0 {
                sink(&buf[..written]).map_err(FeedError::Sink)?;
            }
            input = &input[used..];
            if used == 0 && written == 0 {
                return Ok(());
            }
        }
    }

    /// Ends the payload: the frame must be complete with exactly len(i) bytes produced.
    pub fn finish(&mut self) -> Result<(), ZstdChunkError> {
        if self.done && self.produced == self.expected {
            return Ok(());
        }
        Err(ZstdChunkError::Incomplete {
            produced: self.produced,
            expected: self.expected,
        })
    }
}

/// A failure of [`ChunkInflater::feed`]: the frame or the caller's sink.
#[derive(Debug)]
pub enum FeedError<E> {
    Zstd(ZstdChunkError),
    Sink(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `payload` split at `cuts`, with an output buffer of `out_len` bytes.
    fn inflate(
        payload: &[u8],
        expected: u32,
        cuts: &[usize],
        out_len: usize,
    ) -> Result<Vec<u8>, ZstdChunkError> {
        let mut z = ChunkInflater::new().unwrap();
        z.begin(expected);
        let mut out = Vec::new();
        let mut buf = vec![0u8; out_len];
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&payload.len())) {
            let r = z.feed::<()>(&payload[prev..c], &mut buf, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            });
            match r {
                Ok(()) => {}
                Err(FeedError::Zstd(e)) => return Err(e),
                Err(FeedError::Sink(())) => unreachable!(),
            }
            assert!(out.len() <= expected as usize, "never past len(i)");
            prev = c;
        }
        assert_eq!(z.produced() as usize, out.len());
        z.finish()?;
        Ok(out)
    }

    const AAAA: [u8; 13] = [
        0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x04, 0x21, 0x00, 0x00, 0x41, 0x41, 0x41, 0x41,
    ];
    const A4096: [u8; 19] = [
        0x28, 0xb5, 0x2f, 0xfd, 0x60, 0x00, 0x0f, 0x4d, 0, 0, 0x10, 0x41, 0x41, 0x01, 0x00, 0xfb,
        0xf7, 0x01, 0x16,
    ];

    #[test]
    fn f11_spec_example_frames_decode_split_anywhere() {
        assert_eq!(inflate(&AAAA, 4, &[], 64).unwrap(), b"AAAA");
        let want = vec![b'A'; 4096];
        for cut in 0..=A4096.len() {
            assert_eq!(
                inflate(&A4096, 4096, &[cut], 1000).unwrap(),
                want,
                "cut {cut}"
            );
        }
        let bytewise: Vec<usize> = (1..A4096.len()).collect();
        assert_eq!(inflate(&A4096, 4096, &bytewise, 7).unwrap(), want);
        assert_eq!(
            parse_frame_header(&A4096).unwrap().unwrap(),
            FrameHeader {
                len: 7,
                content_size: Some(4096),
                window: 4096,
                dictionary: 0
            }
        );
    }

    /// RFC 8878 3.1.1.1.2: Window_Size = 2^(10 + Exponent) + 2^(10 + Exponent) / 8 * Mantissa.
    #[test]
    fn window_descriptor_exponent_and_mantissa() {
        // Not single-segment, a 4-byte content size, then the descriptor byte.
        for (wd, window) in [
            (0x00u8, 1u64 << 10),
            (10 << 3, 1 << 20),
            ((10 << 3) | 3, (1 << 20) + 3 * (1 << 17)),
            ((13 << 3) | 7, (8 << 20) + 7 * (1 << 20)),
        ] {
            let b = [0x28, 0xb5, 0x2f, 0xfd, 0x80, wd, 0, 0x10, 0, 0];
            let h = parse_frame_header(&b).unwrap().unwrap();
            assert_eq!((h.len, h.window), (10, window), "descriptor {wd:#04x}");
            assert_eq!(h.content_size, Some(4096));
        }
    }

    #[test]
    fn f11_compressor_writes_one_frame_with_content_size() {
        let mut c = ChunkCompressor::new(3).unwrap();
        let mut out = Vec::new();
        c.compress(b"AAAA", &mut out).unwrap();
        assert_eq!(out, AAAA, "the spec's AAAA frame");
        c.compress(&[b'A'; 4096], &mut out).unwrap();
        assert_eq!(out, A4096, "the spec's 4,096 x A frame");
        assert!(out.len() as u32 <= crate::proto::fastdp::frame::bound(4096));
        // A 16 MiB chunk keeps its window at 8 MiB (not single-segment), and round-trips.
        let big: Vec<u8> = (0..16u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        c.compress(&big, &mut out).unwrap();
        let h = parse_frame_header(&out).unwrap().unwrap();
        assert_eq!(h.content_size, Some(16 << 20));
        assert!(h.window <= MAX_WINDOW);
        assert_eq!(
            inflate(&out, 16 << 20, &[5, 100_000], 128 * 1024).unwrap(),
            big
        );
        c.compress(b"", &mut out).unwrap();
        assert_eq!(inflate(&out, 0, &[], 16).unwrap(), b"");
    }

    #[test]
    fn f11_frames_breaking_2_6_are_refused() {
        use ZstdChunkError as E;
        assert_eq!(
            inflate(&AAAA, 5, &[], 64),
            Err(E::ContentSize {
                declared: 4,
                expected: 5
            })
        );
        // No content size: one-shot compression with the flag off.
        let mut cctx = zstd_safe::CCtx::create();
        cctx.set_parameter(CParameter::ContentSizeFlag(false))
            .unwrap();
        let mut nofcs = Vec::with_capacity(64);
        cctx.compress2(&mut nofcs, b"AAAA").unwrap();
        assert_eq!(inflate(&nofcs, 4, &[], 64), Err(E::NoContentSize));
        // A skippable frame, before or instead of the frame.
        let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(inflate(&skippable, 4, &[], 64), Err(E::NotAFrame));
        skippable.extend_from_slice(&AAAA);
        assert_eq!(inflate(&skippable, 4, &[2], 64), Err(E::NotAFrame));
        // Two frames, trailing garbage, a truncated frame.
        let two = [&AAAA[..], &AAAA[..]].concat();
        // In one call the frame's end and what follows it: refused at once.
        let mut z = ChunkInflater::new().unwrap();
        z.begin(4);
        let mut buf = [0u8; 64];
        assert_eq!(z.decompress(&two, &mut buf), Err(E::Trailing));
        // A full chunk asked for more output with no room: the output buffer was empty, not the
        // chunk too large.
        let mut z = ChunkInflater::new().unwrap();
        z.begin(4);
        let mut pos = 0;
        loop {
            let (used, written) = z.decompress(&AAAA[pos..], &mut []).unwrap();
            assert_eq!(written, 0);
            if used == 0 {
                break;
            }
            pos += used;
        }
        assert!(pos < AAAA.len(), "the data waits for room");
        assert_eq!(
            z.decompress(&AAAA[pos..], &mut buf),
            Ok((AAAA.len() - pos, 4))
        );
        // Every byte produced but the frame not ended (its checksum cut off): incomplete.
        let mut cctx = zstd_safe::CCtx::create();
        cctx.set_parameter(CParameter::ChecksumFlag(true)).unwrap();
        let mut summed = Vec::with_capacity(64);
        cctx.compress2(&mut summed, b"AAAA").unwrap();
        assert_eq!(inflate(&summed, 4, &[], 64).unwrap(), b"AAAA");
        assert_eq!(
            inflate(&summed[..summed.len() - 4], 4, &[], 64),
            Err(E::Incomplete {
                produced: 4,
                expected: 4
            })
        );
        // A corrupted block: zstd's own reason.
        let mut bad = A4096.to_vec();
        let last = bad.len() - 1;
        bad[7] ^= 0xff;
        bad[last] ^= 0x55;
        match inflate(&bad, 4096, &[], 8192) {
            Err(E::Corrupt(why)) => assert!(why.len() > 5 && why != "xyzzy", "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(inflate(&two, 4, &[], 64), Err(E::Trailing));
        assert_eq!(inflate(&two, 4, &[13], 64), Err(E::Trailing));
        assert_eq!(
            inflate(&[&AAAA[..], b"\0"].concat(), 4, &[], 64),
            Err(E::Trailing)
        );
        // A raw block streams out as it arrives: 3 of 4 bytes, then the payload ends.
        assert_eq!(
            inflate(&AAAA[..12], 4, &[], 64),
            Err(E::Incomplete {
                produced: 3,
                expected: 4
            })
        );
        assert_eq!(
            inflate(&AAAA[..3], 4, &[], 64),
            Err(E::Incomplete {
                produced: 0,
                expected: 4
            })
        );
        // A dictionary id and a reserved bit.
        let mut dict = AAAA.to_vec();
        dict[4] = 0x21;
        dict.insert(5, 7);
        assert_eq!(inflate(&dict, 4, &[], 64), Err(E::Dictionary(7)));
        let mut reserved = AAAA.to_vec();
        reserved[4] |= 0x08;
        assert_eq!(inflate(&reserved, 4, &[], 64), Err(E::Reserved));
        // A window of 16 MiB declared in a multi-segment header.
        let wide = [0x28, 0xb5, 0x2f, 0xfd, 0x80, 14 << 3, 0, 0, 0, 1];
        assert_eq!(inflate(&wide, 1 << 24, &[], 64), Err(E::Window(1 << 24)));
        for e in [
            E::NotAFrame,
            E::Trailing,
            E::TooLarge { expected: 1 },
            E::Corrupt("x"),
        ] {
            assert!(e.to_string().starts_with("zstd: "));
        }
    }

    #[test]
    fn f11_a_bomb_never_produces_past_len_i() {
        // 1 MiB of zeros compresses to a few dozen bytes; its header is forged to declare 4 KiB.
        let mut c = ChunkCompressor::new(3).unwrap();
        let mut bomb = Vec::new();
        c.compress(&vec![0u8; 1 << 20], &mut bomb).unwrap();
        assert!(bomb.len() < 200);
        let h = parse_frame_header(&bomb).unwrap().unwrap();
        assert_eq!(h.content_size, Some(1 << 20));
        assert_eq!(
            inflate(&bomb, 4096, &[], 1 << 16),
            Err(ZstdChunkError::ContentSize {
                declared: 1 << 20,
                expected: 4096
            })
        );
        // Forge the content size field (4 bytes, FCS flag 2) to 4,096.
        let mut forged = bomb.clone();
        assert_eq!(forged[4] >> 6, 2, "4-byte content size field");
        let at = h.len - 4;
        forged[at..h.len].copy_from_slice(&4096u32.to_le_bytes());
        // Refused one way or another, and `inflate` checks no byte past 4,096 was produced.
        assert!(inflate(&forged, 4096, &[], 1 << 16).is_err());
        assert!(inflate(&forged, 4096, &[9, 20], 100).is_err());
    }

    #[test]
    fn never_panics_on_truncations_and_random_bytes() {
        let mut c = ChunkCompressor::new(1).unwrap();
        let mut frame = Vec::new();
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i % 251) as u8 ^ (i / 700) as u8)
            .collect();
        c.compress(&data, &mut frame).unwrap();
        for cut in 0..frame.len() {
            assert!(inflate(&frame[..cut], 5000, &[], 256).is_err());
        }
        let mut x = 0xdead_beef_cafe_f00du64;
        for round in 0..2000 {
            let mut b = if round % 2 == 0 {
                frame.clone()
            } else {
                A4096.to_vec()
            };
            for _ in 0..1 + round % 4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % b.len() as u64) as usize;
                b[i] ^= (x >> 40) as u8 | 1;
            }
            let expected = if round % 2 == 0 { 5000 } else { 4096 };
            let cut = (x as usize % 30).min(b.len());
            let _ = inflate(&b, expected, &[cut], 1 + (x % 300) as usize);
            let _ = parse_frame_header(&b);
        }
    }
}
