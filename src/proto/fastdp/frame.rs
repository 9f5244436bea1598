//! FastDP's two framings (fastdp.md 2.1, 2.5): JMSG (`u32 L`, L bytes of JSON, 1 ≤ L ≤ 65,536)
//! and the chunk stream (`u32 number, u32 length, payload`, with FIN and control frames).
//!
//! ```text
//! JMSG        | L u32 BE (1..=65536) | L bytes of UTF-8 JSON |
//! chunk       | i u32 BE (< FullChunk) | n u32 BE | n payload bytes |
//! FIN         | ff ff ff ff | 00 00 00 00 |
//! control     | ff ff ff fe | n u32 BE (1..=65536) | n bytes: an Error JSON object |
//! ```
//!
//! [`JmsgReader`] sits on [`crate::wire::FrameAccumulator`] and never takes a byte past the
//! message it collects. [`ChunkDecoder`] checks the number and the length against the transfer's
//! [`Geometry`] on the eight header bytes alone, before any payload byte (F10); then it hands the
//! payload out as slices of the caller's own input: nothing of a chunk is buffered or copied
//! here, so the driver moves it straight to the file. Only a control frame's body (at most 64 KiB,
//! rare) is collected. Out of scope: what the JSON means ([`super::messages`]), decompression
//! ([`super::zstd_chunk`]).

use std::fmt;

use crate::wire::{put_frame, FrameAccumulator, FrameError};

/// Smallest JMSG body.
pub const MIN_JMSG: u32 = 1;
/// Largest JMSG body (and control frame body).
pub const MAX_JMSG: u32 = 65_536;
/// The chunk number of a FIN.
pub const FIN_NUMBER: u32 = 0xFFFF_FFFF;
/// The chunk number of a control frame.
pub const CONTROL_NUMBER: u32 = 0xFFFF_FFFE;
/// A FIN frame: nothing more on this connection.
pub const FIN: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
/// Bytes of a chunk frame header.
pub const CHUNK_HEADER: usize = 8;
/// Smallest `OneChunk` of 1.2.0.
pub const MIN_ONE_CHUNK: u32 = 4096;
/// Largest `OneChunk` (both versions).
pub const MAX_ONE_CHUNK: u32 = 67_108_864;
/// Largest `FullChunk` (the two top numbers are FIN and control).
pub const MAX_FULL_CHUNK: u32 = 4_294_967_294;

/// Appends one JMSG holding `json` (at most [`MAX_JMSG`] bytes, which ferry's encoders keep).
pub fn put_jmsg(json: &[u8], out: &mut Vec<u8>) {
    debug_assert!((1..=MAX_JMSG as usize).contains(&json.len()));
    put_frame(json, out);
}

/// Reads JMSGs one at a time, taking from the input only the bytes of the message it collects.
#[derive(Debug)]
pub struct JmsgReader {
    acc: FrameAccumulator,
}

impl Default for JmsgReader {
    fn default() -> Self {
        JmsgReader::new()
    }
}

impl JmsgReader {
    pub fn new() -> JmsgReader {
        JmsgReader {
            acc: FrameAccumulator::new(MAX_JMSG).with_min(MIN_JMSG),
        }
    }

    /// Takes bytes towards the current message; returns how many (0 once it is complete, until
    /// [`next_message`](Self::next_message) hands it out, and after a length error).
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let mut taken = 0;
        // The header first, then (once its length is known and allowed) the body.
        loop {
            let n = self.acc.wanted().min(input.len() - taken);
            if n == 0 {
                return taken;
            }
            self.acc.extend(&input[taken..taken + n]);
            taken += n;
        }
    }

    /// The message once complete. A length of 0 or over 65,536 is an error as soon as its four
    /// bytes are in: the body is never read (F5). The slice is released by the next call.
    pub fn next_message(&mut self) -> Result<Option<&[u8]>, FrameError> {
        self.acc.next_frame()
    }

    /// True when no message has been started.
    pub fn is_between_frames(&self) -> bool {
        self.acc.is_between_frames()
    }

    /// Bytes still needed to complete the current message.
    pub fn wanted(&self) -> usize {
        self.acc.wanted()
    }
}

/// Worst-case Zstd payload for `n` original bytes: n + n/256 + (n < 128 KiB ? (128 KiB - n)/2048 : 0).
pub fn bound(n: u32) -> u32 {
    let small = if n < 131_072 { (131_072 - n) >> 11 } else { 0 };
    n + (n >> 8) + small
}

/// The eight header bytes of chunk `number` with `len` payload bytes.
pub fn chunk_header(number: u32, len: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&number.to_be_bytes());
    h[4..].copy_from_slice(&len.to_be_bytes());
    h
}

/// Appends a control frame carrying `json` (an Error object, 1 to 65,536 bytes).
pub fn put_control(json: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(json.len()).expect("control bodies are bounded by ferry's encoder");
    debug_assert!((1..=MAX_JMSG).contains(&len));
    out.extend_from_slice(&chunk_header(CONTROL_NUMBER, len));
    out.extend_from_slice(json);
}

/// How a file is cut into chunks (F9): chunk `i` is original bytes
/// `[i*OneChunk, min((i+1)*OneChunk, FullSize))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    one_chunk: u32,
    full_chunk: u32,
    full_size: u64,
}

impl Geometry {
    /// `None` when `one_chunk` is 0 or the file needs more than [`MAX_FULL_CHUNK`] chunks.
    pub fn new(one_chunk: u32, full_size: u64) -> Option<Geometry> {
        if one_chunk == 0 {
            return None;
        }
        let full_chunk = u32::try_from(full_size.div_ceil(u64::from(one_chunk))).ok()?;
        if full_chunk > MAX_FULL_CHUNK {
            return None;
        }
        Some(Geometry {
            one_chunk,
            full_chunk,
            full_size,
        })
    }

    pub fn one_chunk(&self) -> u32 {
        self.one_chunk
    }

    pub fn full_chunk(&self) -> u32 {
        self.full_chunk
    }

    pub fn full_size(&self) -> u64 {
        self.full_size
    }

    /// Byte offset of chunk `i` in the file.
    pub fn offset(&self, i: u32) -> u64 {
        u64::from(i) * u64::from(self.one_chunk)
    }

    /// len(i): the original size of chunk `i` (0 for a number past the end).
    pub fn len(&self, i: u32) -> u32 {
        let start = self.offset(i);
        let end = (start + u64::from(self.one_chunk)).min(self.full_size);
        // At most one_chunk, so it fits.
        end.saturating_sub(start) as u32
    }

    /// True for an empty file (no chunk at all).
    pub fn is_empty(&self) -> bool {
        self.full_chunk == 0
    }
}

/// Whether payloads are the original bytes or one zstd frame each (fastdp.md 2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compress {
    None,
    Zstd,
}

impl Compress {
    pub fn as_str(self) -> &'static str {
        match self {
            Compress::None => "None",
            Compress::Zstd => "Zstd",
        }
    }
}

/// What the chunk stream may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rules {
    /// 1.2.0: any chunk number below FullChunk in any order, lengths by [`Compress`], FIN and
    /// control frames.
    V120 {
        geometry: Geometry,
        compress: Compress,
    },
    /// 1.1.0 (`cli.py`): chunks 0, 1, 2, ... in order with exactly len(i) bytes (of the
    /// compressed stream), nothing else; the stream ends after the last one.
    V110 { geometry: Geometry },
}

/// A chunk stream violation, found on the header bytes alone (`bad-chunk`; 1.1.0:
/// `ERROR: Malformed chunk header.`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// A number at or past FullChunk that is neither FIN nor control.
    Number { number: u32, full_chunk: u32 },
    /// 1.1.0: a chunk out of order (or anything after the last one).
    OutOfOrder { number: u32, expected: u32 },
    /// A payload length that is not exactly len(i).
    Length { chunk: u32, len: u32, expected: u32 },
    /// A Zstd payload of 0 bytes or over bound(len(i)).
    ZstdLength { chunk: u32, len: u32, max: u32 },
    /// A FIN with a non-zero length.
    Fin { len: u32 },
    /// A control frame of length 0 or over 65,536.
    Control { len: u32 },
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::Number { number, full_chunk } => write!(
                f,
                "chunk {number}: number out of range (FullChunk {full_chunk})"
            ),
            ChunkError::OutOfOrder { number, expected } => {
                write!(f, "chunk {number}: expected chunk {expected}")
            }
            ChunkError::Length {
                chunk,
                len,
                expected,
            } => write!(
                f,
                "chunk {chunk}: payload length {len}, expected {expected}"
            ),
            ChunkError::ZstdLength { chunk, len, max } => write!(
                f,
                "chunk {chunk}: zstd payload length {len}, expected 1 to {max}"
            ),
            ChunkError::Fin { len } => write!(f, "FIN with length {len}"),
            ChunkError::Control { len } => {
                write!(f, "control frame length {len}, expected 1 to 65536")
            }
        }
    }
}

impl std::error::Error for ChunkError {}

impl ChunkError {
    /// The chunk the error names, for the `Chunk` field of the Error message.
    pub fn chunk(&self) -> Option<u32> {
        match *self {
            ChunkError::Number { number, .. } | ChunkError::OutOfOrder { number, .. } => {
                Some(number)
            }
            ChunkError::Length { chunk, .. } | ChunkError::ZstdLength { chunk, .. } => Some(chunk),
            ChunkError::Fin { .. } | ChunkError::Control { .. } => None,
        }
    }
}

/// What the chunk stream said.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkEvent<'a> {
    /// Chunk `chunk` begins: `len` payload bytes follow (checked against the rules).
    Start { chunk: u32, len: u32 },
    /// The next payload bytes of `chunk`, starting at `offset` within the payload: a slice of
    /// the caller's input.
    Payload {
        chunk: u32,
        offset: u32,
        bytes: &'a [u8],
    },
    /// Every payload byte of `chunk` has been handed out.
    End { chunk: u32 },
    /// `ff ff ff ff 00 00 00 00`.
    Fin,
    /// A control frame's body (the data sender's Error object; it closes after it).
    Control(Vec<u8>),
}

#[derive(Debug)]
enum State {
    /// Collecting a frame header.
    Header { buf: [u8; 8], have: usize },
    /// Inside the payload of `chunk`: `done` of `len` bytes handed out.
    Payload { chunk: u32, len: u32, done: u32 },
    /// Collecting a control body.
    Control { len: u32, body: Vec<u8> },
    /// After the last 1.1.0 chunk, or after an error: nothing more is read.
    Stopped,
}

/// Incremental decoder of one connection's chunk stream (see the module doc).
#[derive(Debug)]
pub struct ChunkDecoder {
    rules: Rules,
    state: State,
    /// 1.1.0: the next chunk number expected.
    next: u32,
    failed: Option<ChunkError>,
}

impl ChunkDecoder {
    pub fn new(rules: Rules) -> ChunkDecoder {
        let mut d = ChunkDecoder {
            rules,
            state: State::Header {
                buf: [0; 8],
                have: 0,
            },
            next: 0,
            failed: None,
        };
        d.stop_if_v110_done();
        d
    }

    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// True between frames (a clean place for the stream to end in 1.2.0).
    pub fn is_between_frames(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// 1.1.0: every chunk has been received.
    pub fn is_v110_done(&self) -> bool {
        matches!(self.rules, Rules::V110 { .. })
            && matches!(self.state, State::Stopped)
            && self.failed.is_none()
    }

    /// Bytes left in the frame being read, as far as known (the header's rest while it is
    /// incomplete): the stall rule's "or the rest of the frame". `None` between frames.
    pub fn frame_remaining(&self) -> Option<u64> {
        match &self.state {
            State::Header { have: 0, .. } | State::Stopped => None,
            State::Header { have, .. } => Some((CHUNK_HEADER - have) as u64),
            State::Payload { len, done, .. } => Some(u64::from(len - done)),
            State::Control { len, body } => Some(u64::from(*len) - body.len() as u64),
        }
    }

    /// The chunk whose payload is being read, if any (a copy cut off here stays missing).
    pub fn current_chunk(&self) -> Option<u32> {
        match self.state {
            State::Payload { chunk, .. } => Some(chunk),
            _ => None,
        }
    }

    fn stop_if_v110_done(&mut self) {
        if let Rules::V110 { geometry } = self.rules {
            if self.next >= geometry.full_chunk() {
                self.state = State::Stopped;
            }
        }
    }

    /// Checks a frame header and returns the next state (or the event it is by itself).
    fn judge(&mut self, number: u32, len: u32) -> Result<Judged, ChunkError> {
        match self.rules {
            Rules::V110 { geometry } => {
                if number != self.next {
                    return Err(ChunkError::OutOfOrder {
                        number,
                        expected: self.next,
                    });
                }
                let expected = geometry.len(number);
                if len != expected {
                    return Err(ChunkError::Length {
                        chunk: number,
                        len,
                        expected,
                    });
                }
                self.next += 1;
                Ok(Judged::Chunk)
            }
            Rules::V120 { geometry, compress } => {
                if number == FIN_NUMBER {
                    return if len == 0 {
                        Ok(Judged::Fin)
                    } else {
                        Err(ChunkError::Fin { len })
                    };
                }
                if number == CONTROL_NUMBER {
                    return if (1..=MAX_JMSG).contains(&len) {
                        Ok(Judged::Control)
                    } else {
                        Err(ChunkError::Control { len })
                    };
                }
                if number >= geometry.full_chunk() {
                    return Err(ChunkError::Number {
                        number,
                        full_chunk: geometry.full_chunk(),
                    });
                }
                let expected = geometry.len(number);
                match compress {
                    Compress::None if len != expected => Err(ChunkError::Length {
                        chunk: number,
                        len,
                        expected,
                    }),
                    Compress::Zstd if len == 0 || len > bound(expected) => {
                        Err(ChunkError::ZstdLength {
                            chunk: number,
                            len,
                            max: bound(expected),
                        })
                    }
                    _ => Ok(Judged::Chunk),
                }
            }
        }
    }

    /// Decodes from `input`; returns how many bytes were consumed and at most one event.
    /// `Ok(None)` with everything consumed means "need more". An error is final: the stream is
    /// out of step and the decoder reads nothing more.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
    ) -> (usize, Result<Option<ChunkEvent<'a>>, ChunkError>) {
        if let Some(e) = self.failed {
            return (0, Err(e));
        }
        match &mut self.state {
            State::Stopped => (0, Ok(None)),
            State::Header { buf, have } => {
                let take = (CHUNK_HEADER - *have).min(input.len());
                buf[*have..*have + take].copy_from_slice(&input[..take]);
                *have += take;
                if *have < CHUNK_HEADER {
                    return (take, Ok(None));
                }
                let number = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                let header = State::Header {
                    buf: [0; 8],
                    have: 0,
                };
                match self.judge(number, len) {
                    Err(e) => {
                        self.failed = Some(e);
                        self.state = State::Stopped;
                        (take, Err(e))
                    }
                    Ok(Judged::Fin) => {
                        self.state = header;
                        (take, Ok(Some(ChunkEvent::Fin)))
                    }
                    Ok(Judged::Control) => {
                        self.state = State::Control {
                            len,
                            body: Vec::new(),
                        };
                        (take, Ok(None))
                    }
                    Ok(Judged::Chunk) => {
                        self.state = State::Payload {
                            chunk: number,
                            len,
                            done: 0,
                        };
                        (take, Ok(Some(ChunkEvent::Start { chunk: number, len })))
                    }
                }
            }
            State::Payload { chunk, len, done } => {
                let chunk = *chunk;
                if *done == *len {
                    self.state = State::Header {
                        buf: [0; 8],
                        have: 0,
                    };
                    self.stop_if_v110_done();
                    return (0, Ok(Some(ChunkEvent::End { chunk })));
                }
                if input.is_empty() {
                    return (0, Ok(None));
                }
                let take = input.len().min((*len - *done) as usize);
                let offset = *done;
                *done += take as u32;
                let bytes = &input[..take];
                (
                    take,
                    Ok(Some(ChunkEvent::Payload {
                        chunk,
                        offset,
                        bytes,
                    })),
                )
            }
            State::Control { len, body } => {
                let take = input.len().min(*len as usize - body.len());
                body.extend_from_slice(&input[..take]);
                if body.len() < *len as usize {
                    return (take, Ok(None));
                }
                let body = std::mem::take(body);
                self.state = State::Header {
                    buf: [0; 8],
                    have: 0,
                };
                (take, Ok(Some(ChunkEvent::Control(body))))
            }
        }
    }
}

enum Judged {
    Chunk,
    Fin,
    Control,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v120(one: u32, size: u64, compress: Compress) -> Rules {
        Rules::V120 {
            geometry: Geometry::new(one, size).unwrap(),
            compress,
        }
    }

    /// Owned copy of an event, for comparing runs.
    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Ev {
        Start(u32, u32),
        Data(u32, Vec<u8>),
        End(u32),
        Fin,
        Control(Vec<u8>),
        Err(ChunkError),
    }

    /// Feeds `t` cut at `cuts`; payload slices of one chunk are joined.
    fn run(rules: Rules, t: &[u8], cuts: &[usize]) -> Vec<Ev> {
        let mut d = ChunkDecoder::new(rules);
        let mut out: Vec<Ev> = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&t.len())) {
            let mut piece = &t[prev..c];
            prev = c;
            loop {
                let (n, r) = d.decode(piece);
                assert!(n <= piece.len());
                piece = &piece[n..];
                match r {
                    Ok(None) => {
                        if n == 0 || piece.is_empty() {
                            break;
                        }
                    }
                    Ok(Some(ev)) => match ev {
                        ChunkEvent::Start { chunk, len } => out.push(Ev::Start(chunk, len)),
                        ChunkEvent::Payload {
                            chunk,
                            offset,
                            bytes,
                        } => {
                            let seen: usize = match out.last_mut() {
                                Some(Ev::Data(c, v)) if *c == chunk => {
                                    v.extend_from_slice(bytes);
                                    v.len() - bytes.len()
                                }
                                _ => {
                                    out.push(Ev::Data(chunk, bytes.to_vec()));
                                    0
                                }
                            };
                            assert_eq!(offset as usize, seen);
                        }
                        ChunkEvent::End { chunk } => out.push(Ev::End(chunk)),
                        ChunkEvent::Fin => out.push(Ev::Fin),
                        ChunkEvent::Control(b) => out.push(Ev::Control(b)),
                    },
                    Err(e) => {
                        out.push(Ev::Err(e));
                        return out;
                    }
                }
            }
        }
        // A trailing End with no input left.
        if let (0, Ok(Some(ChunkEvent::End { chunk }))) = d.decode(&[]) {
            out.push(Ev::End(chunk));
        }
        out
    }

    fn transcript() -> Vec<u8> {
        // Chunks 1 and 0 of a 10,000-byte file in 4,096-byte chunks, a duplicate, FIN, control.
        let mut t = Vec::new();
        t.extend_from_slice(&chunk_header(1, 4096));
        t.extend((0..4096u32).map(|i| i as u8));
        t.extend_from_slice(&chunk_header(2, 1808));
        t.extend(std::iter::repeat_n(b'z', 1808));
        t.extend_from_slice(&chunk_header(1, 4096));
        t.extend(std::iter::repeat_n(b'y', 4096));
        t.extend_from_slice(&FIN);
        put_control(
            br#"{"Type":"Error","Code":"internal","Message":"source file changed"}"#,
            &mut t,
        );
        t
    }

    #[test]
    fn f9_geometry_cuts_the_file_from_chunk_zero() {
        let g = Geometry::new(4096, 10_000).unwrap();
        assert_eq!(g.full_chunk(), 3);
        assert_eq!(
            (g.len(0), g.len(1), g.len(2), g.len(3)),
            (4096, 4096, 1808, 0)
        );
        assert_eq!(g.offset(2), 8192);
        let exact = Geometry::new(1 << 20, 4 << 20).unwrap();
        assert_eq!(exact.one_chunk(), 1 << 20);
        assert_eq!(
            exact.full_chunk(),
            4,
            "an exact multiple has no empty last chunk"
        );
        assert_eq!(exact.len(3), 1 << 20);
        assert!(Geometry::new(4096, 0).unwrap().is_empty());
        assert!(!Geometry::new(4096, 1).unwrap().is_empty());
        assert!(Geometry::new(0, 1).is_none());
        assert!(Geometry::new(1, u64::from(MAX_FULL_CHUNK)).is_some());
        assert!(Geometry::new(1, u64::from(MAX_FULL_CHUNK) + 1).is_none());
        let big = Geometry::new(MAX_ONE_CHUNK, (1u64 << 53) - 1).unwrap();
        assert_eq!(big.len(big.full_chunk() - 1), MAX_ONE_CHUNK - 1);
    }

    #[test]
    fn bound_matches_the_formula() {
        assert_eq!(bound(4), 4 + ((131_072 - 4) >> 11));
        assert_eq!(bound(4096), 4096 + 16 + 62);
        assert_eq!(bound(131_072), 131_072 + 512);
        assert_eq!(bound(MAX_ONE_CHUNK), MAX_ONE_CHUNK + (MAX_ONE_CHUNK >> 8));
    }

    #[test]
    fn spec_examples_of_chunk_headers() {
        assert_eq!(chunk_header(0, 262_144), [0, 0, 0, 0, 0, 4, 0, 0]);
        assert_eq!(chunk_header(0, 4), [0, 0, 0, 0, 0, 0, 0, 4]);
        let mut c = Vec::new();
        put_control(
            br#"{"Type":"Error","Code":"internal","Message":"source file changed"}"#,
            &mut c,
        );
        assert_eq!(&c[..8], &[0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 0x42]);
        // The Zstd example of 2.5 passes the header check for chunk 0 of 4,096 bytes.
        let z = [
            0u8, 0, 0, 0, 0, 0, 0, 0x13, 0x28, 0xb5, 0x2f, 0xfd, 0x60, 0x00, 0x0f, 0x4d, 0, 0,
            0x10, 0x41, 0x41, 0x01, 0x00, 0xfb, 0xf7, 0x01, 0x16,
        ];
        let ev = run(v120(4096, 4096, Compress::Zstd), &z, &[]);
        assert_eq!(ev[0], Ev::Start(0, 0x13));
        assert_eq!(ev[1], Ev::Data(0, z[8..].to_vec()));
        assert_eq!(ev[2], Ev::End(0));
    }

    #[test]
    fn split_anywhere_gives_the_same_events() {
        let t = transcript();
        let rules = v120(4096, 10_000, Compress::None);
        let whole = run(rules, &t, &[]);
        assert_eq!(whole.len(), 11);
        assert_eq!(whole[0], Ev::Start(1, 4096));
        assert_eq!(whole[9], Ev::Fin);
        assert!(matches!(&whole[10], Ev::Control(b) if b.len() == 0x42));
        let bytewise: Vec<usize> = (1..t.len()).collect();
        assert_eq!(run(rules, &t, &bytewise), whole);
        for a in 0..=t.len() {
            assert_eq!(run(rules, &t, &[a]), whole, "split at {a}");
        }
        for a in (0..t.len()).step_by(97) {
            for b in (a..t.len()).step_by(89) {
                assert_eq!(run(rules, &t, &[a, b]), whole, "split at {a}, {b}");
            }
        }
    }

    #[test]
    fn payload_is_handed_out_as_slices_of_the_input() {
        let t = transcript();
        let mut d = ChunkDecoder::new(v120(4096, 10_000, Compress::None));
        let (n, r) = d.decode(&t);
        assert_eq!(
            (n, r),
            (
                8,
                Ok(Some(ChunkEvent::Start {
                    chunk: 1,
                    len: 4096
                }))
            )
        );
        assert_eq!(d.frame_remaining(), Some(4096));
        assert_eq!(d.current_chunk(), Some(1));
        // Part of the payload read: the rest of it is what remains.
        let mut part = ChunkDecoder::new(v120(4096, 10_000, Compress::None));
        assert_eq!(part.decode(&t[..8]).0, 8);
        assert_eq!(part.decode(&t[8..108]).0, 100);
        assert_eq!(part.frame_remaining(), Some(3996));
        let (m, r) = d.decode(&t[8..]);
        assert_eq!(m, 4096);
        let Ok(Some(ChunkEvent::Payload { bytes, .. })) = r else {
            panic!("payload expected")
        };
        assert_eq!(bytes.as_ptr(), t[8..].as_ptr(), "zero-copy");
        assert_eq!(
            d.decode(&t[8 + 4096..]),
            (0, Ok(Some(ChunkEvent::End { chunk: 1 })))
        );
        assert!(d.is_between_frames());
        assert_eq!(d.frame_remaining(), None);
        // A control frame counts down its body; half a header counts the header's rest.
        let mut c = Vec::new();
        put_control(br#"{"Error":"x"}"#, &mut c);
        assert_eq!(d.decode(&c[..3]), (3, Ok(None)));
        assert_eq!(d.frame_remaining(), Some(5));
        assert_eq!(d.decode(&c[3..8]), (5, Ok(None)));
        assert_eq!(d.frame_remaining(), Some(13));
        assert_eq!(d.decode(&c[8..12]), (4, Ok(None)));
        assert_eq!(d.frame_remaining(), Some(9));
        // The rest of its body with more bytes behind it: only the body is taken.
        let more = [&c[12..], &b"next"[..]].concat();
        assert_eq!(d.decode(&more).0, c.len() - 12);
    }

    #[test]
    fn f10_number_and_length_are_refused_before_any_payload_byte() {
        let rules = v120(4096, 10_000, Compress::None);
        let cases: [(u32, u32, ChunkError); 5] = [
            (
                3,
                1808,
                ChunkError::Number {
                    number: 3,
                    full_chunk: 3,
                },
            ),
            (
                0,
                5000,
                ChunkError::Length {
                    chunk: 0,
                    len: 5000,
                    expected: 4096,
                },
            ),
            (
                2,
                4096,
                ChunkError::Length {
                    chunk: 2,
                    len: 4096,
                    expected: 1808,
                },
            ),
            (FIN_NUMBER, 1, ChunkError::Fin { len: 1 }),
            (CONTROL_NUMBER, 65_537, ChunkError::Control { len: 65_537 }),
        ];
        for (number, len, want) in cases {
            let mut input = chunk_header(number, len).to_vec();
            input.extend_from_slice(&[0xAA; 64]);
            let mut d = ChunkDecoder::new(rules);
            assert_eq!(d.decode(&input), (8, Err(want)), "{number} {len}");
            assert_eq!(d.decode(&input[8..]), (0, Err(want)), "sticky");
            assert!(!want.to_string().is_empty());
        }
        let mut d = ChunkDecoder::new(rules);
        assert_eq!(
            d.decode(&[0, 0, 0, 0, 0, 0, 0x13, 0x88])
                .1
                .unwrap_err()
                .chunk(),
            Some(0)
        );
        // The README's duplicate header: its length prefix read as a chunk number, "{"On" as a
        // 2 GB length.
        let mut d = ChunkDecoder::new(rules);
        let (n, r) = d.decode(b"\0\0\0\xf2{\"OneChunk\":4096}");
        assert_eq!(n, 8);
        assert_eq!(
            r,
            Err(ChunkError::Number {
                number: 0xf2,
                full_chunk: 3
            })
        );
        let one = v120(4096, 300_000, Compress::None);
        let mut d = ChunkDecoder::new(one);
        let (_, r) = d.decode(b"\0\0\0\xf2{\"On");
        assert_eq!(
            r,
            Err(ChunkError::Number {
                number: 0xf2,
                full_chunk: 74
            })
        );
        let mut d = ChunkDecoder::new(one);
        let (_, r) = d.decode(b"\0\0\0\x01{\"On");
        assert_eq!(
            r,
            Err(ChunkError::Length {
                chunk: 1,
                len: 0x7B22_4F6E,
                expected: 4096
            })
        );
        // 1-based numbering: the last number equals FullChunk.
        let mut d = ChunkDecoder::new(rules);
        assert!(matches!(
            d.decode(&chunk_header(3, 1808)).1,
            Err(ChunkError::Number { .. })
        ));
    }

    #[test]
    fn f10_zstd_lengths_are_bounded() {
        let rules = v120(4096, 4100, Compress::Zstd);
        let mut d = ChunkDecoder::new(rules);
        assert_eq!(
            d.decode(&chunk_header(0, 0)).1,
            Err(ChunkError::ZstdLength {
                chunk: 0,
                len: 0,
                max: bound(4096)
            })
        );
        let mut d = ChunkDecoder::new(rules);
        assert!(d.decode(&chunk_header(1, bound(4) + 1)).1.is_err());
        let mut d = ChunkDecoder::new(rules);
        assert_eq!(
            d.decode(&chunk_header(1, bound(4))).1,
            Ok(Some(ChunkEvent::Start {
                chunk: 1,
                len: bound(4)
            }))
        );
    }

    #[test]
    fn v110_requires_chunks_in_order_with_exact_lengths_and_then_stops() {
        let rules = Rules::V110 {
            geometry: Geometry::new(3, 7).unwrap(),
        };
        let mut t = Vec::new();
        for (i, part) in [&b"abc"[..], b"def", b"g"].iter().enumerate() {
            t.extend_from_slice(&chunk_header(i as u32, part.len() as u32));
            t.extend_from_slice(part);
        }
        let whole = run(rules, &t, &[]);
        assert_eq!(whole.len(), 9);
        assert_eq!(whole[8], Ev::End(2));
        for a in 0..=t.len() {
            assert_eq!(run(rules, &t, &[a]), whole, "split at {a}");
        }
        let mut d = ChunkDecoder::new(rules);
        let mut pos = 0;
        while !d.is_v110_done() {
            let (n, r) = d.decode(&t[pos..]);
            r.unwrap();
            pos += n;
        }
        assert_eq!(pos, t.len());
        assert!(d.is_v110_done());
        assert_eq!(
            d.decode(b"more"),
            (0, Ok(None)),
            "nothing is read after the last chunk"
        );
        let mut d = ChunkDecoder::new(rules);
        assert_eq!(
            d.decode(&chunk_header(1, 3)).1,
            Err(ChunkError::OutOfOrder {
                number: 1,
                expected: 0
            })
        );
        let mut d = ChunkDecoder::new(rules);
        assert_eq!(
            d.decode(&chunk_header(0, 2)).1,
            Err(ChunkError::Length {
                chunk: 0,
                len: 2,
                expected: 3
            })
        );
        let mut d = ChunkDecoder::new(rules);
        assert!(d.decode(&FIN).1.is_err(), "1.1.0 has no FIN");
        let empty = ChunkDecoder::new(Rules::V110 {
            geometry: Geometry::new(262_144, 0).unwrap(),
        });
        assert!(empty.is_v110_done());
    }

    #[test]
    fn f5_jmsg_reader_takes_only_its_message_and_refuses_bad_lengths_unread() {
        let mut t = Vec::new();
        put_jmsg(br#"{"Type":"Ack","Chunks":[]}"#, &mut t);
        assert_eq!(&t[..4], &[0, 0, 0, 0x1a]);
        t.extend_from_slice(&FIN);
        for cut in 0..=t.len() {
            let mut r = JmsgReader::new();
            let mut pos = r.feed(&t[..cut]);
            assert!(pos <= cut);
            if (4..30).contains(&pos) {
                assert_eq!(r.wanted(), 30 - pos, "cut {cut}");
            }
            pos += r.feed(&t[pos..]);
            assert_eq!(pos, 30, "nothing past the message is taken (cut {cut})");
            assert_eq!(r.feed(&t[pos..]), 0);
            assert_eq!(
                r.next_message().unwrap(),
                Some(&br#"{"Type":"Ack","Chunks":[]}"#[..])
            );
            assert!(r.next_message().unwrap().is_none());
            assert!(r.is_between_frames());
        }
        let mut r = JmsgReader::new();
        assert_eq!(r.feed(&[0, 0, 0, 0, b'{']), 4);
        assert_eq!(
            r.next_message(),
            Err(FrameError::TooShort { len: 0, min: 1 })
        );
        assert_eq!(r.feed(b"{}"), 0);
        let mut r = JmsgReader::new();
        assert_eq!(r.feed(&[0, 1, 0, 1, b'{', b'}']), 4);
        assert_eq!(
            r.next_message(),
            Err(FrameError::TooLarge {
                len: 65_537,
                max: 65_536
            })
        );
        assert_eq!(r.wanted(), 0);
        // "RECONNECT" where a JMSG is expected: 0x5245434F is far over the limit.
        let mut r = JmsgReader::new();
        r.feed(b"RECONNECT");
        assert!(matches!(
            r.next_message(),
            Err(FrameError::TooLarge {
                len: 0x5245_434F,
                ..
            })
        ));
        let mut r = JmsgReader::new();
        let mut max = vec![0, 1, 0, 0];
        max.extend(std::iter::repeat_n(b' ', 65_536));
        assert_eq!(r.feed(&max), max.len());
        assert_eq!(r.next_message().unwrap().unwrap().len(), 65_536);
    }

    #[test]
    fn never_panics_on_truncations_and_random_bytes() {
        let t = transcript();
        for rules in [
            v120(4096, 10_000, Compress::None),
            v120(4096, 10_000, Compress::Zstd),
            Rules::V110 {
                geometry: Geometry::new(4096, 10_000).unwrap(),
            },
        ] {
            for cut in 0..t.len() {
                let _ = run(rules, &t[..cut], &[]);
            }
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for round in 0..4000 {
            let rules = match round % 3 {
                0 => v120(4096, 10_000, Compress::None),
                1 => v120(4096, 1 + (x % 100_000), Compress::Zstd),
                _ => Rules::V110 {
                    geometry: Geometry::new(1 + (x % 9) as u32, x % 40).unwrap(),
                },
            };
            let mut d = ChunkDecoder::new(rules);
            let mut j = JmsgReader::new();
            for _ in 0..6 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = (x % 48) as usize;
                let mask = if round % 2 == 0 { 0x03 } else { 0xff };
                let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8 & mask).collect();
                let mut pos = 0;
                for _ in 0..100 {
                    let (n, r) = d.decode(&bytes[pos..]);
                    pos += n;
                    if r.is_err() || pos == bytes.len() {
                        break;
                    }
                }
                let _ = d.frame_remaining();
                let mut p = 0;
                while p < bytes.len() {
                    let n = j.feed(&bytes[p..]);
                    p += n;
                    match j.next_message() {
                        Ok(Some(m)) => assert!(!m.is_empty() && m.len() <= 65_536),
                        Ok(None) if n == 0 => break,
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
            }
        }
    }
}
