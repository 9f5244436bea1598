//! libIPC framing (spec 2.1, 2.3): the current frame `u32 BE LEN | UTYPE | JSON` on top of
//! [`FrameAccumulator`], and the legacy C frame `T | u32 BE LEN | UTYPE | JSON`, chosen per
//! connection by its first byte when legacy framing is allowed.
//!
//! ```text
//! current: | LEN u32 BE = 1 + json | UTYPE u8 | JSON (LEN - 1 bytes) |     3 <= LEN <= 99,992
//! legacy:  | T u8 | LEN u32 BE = json | UTYPE u8 | JSON (LEN bytes) |     2 <= LEN <= 99,991
//!            T: 2 data (1 accepted too), 0 the peer is closing, anything else refused
//! ```
//!
//! A length out of bounds is refused as soon as its four bytes are there, before any body byte
//! is kept; the framing is then lost and the connection ends after the nil-id reply of
//! [`nil_reply`]. Partial input is "need more bytes", never an error.
//!
//! First byte (legacy allowed): `00` current, `01`/`02` legacy, anything else current (where it
//! is a LEN of at least 2^24, hence `too-large`). With legacy off, `02` is such a LEN too.

use super::json::{encode_error, utype, MessageId};
use super::reason::{Code, Reason};
use crate::wire::{Cursor, FrameAccumulator, FrameError as WireFrameError};
use std::fmt;

/// Largest LEN of a current frame: libIPC's 99,996-byte buffer minus the length itself.
pub const MAX_LEN: u32 = 99_992;
/// Smallest LEN of a current frame: UTYPE and a two-byte JSON object.
pub const MIN_LEN: u32 = 3;
/// Largest JSON of a legacy frame.
pub const LEGACY_MAX_JSON: u32 = MAX_LEN - 1;
/// Smallest JSON of a legacy frame.
pub const LEGACY_MIN_JSON: u32 = MIN_LEN - 1;
/// Bytes before the JSON: 5 current (LEN, UTYPE), 6 legacy (T, LEN, UTYPE).
const HEAD_CURRENT: usize = 5;
const HEAD_LEGACY: usize = 6;

/// The framing of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Current,
    Legacy,
}

/// A framing error: the stream can no longer be followed; reply with [`nil_reply`], close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// LEN over the maximum (current: LEN, legacy: JSON length): `too-large`.
    TooLarge { len: u32, max: u32 },
    /// LEN under the minimum: `malformed`.
    TooShort { len: u32, min: u32 },
    /// A legacy T other than 0, 1 or 2: `malformed`.
    LegacyType { t: u8 },
}

impl FrameError {
    /// The reply's code.
    pub fn code(&self) -> Code {
        match self {
            FrameError::TooLarge { .. } => Code::TooLarge,
            FrameError::TooShort { .. } | FrameError::LegacyType { .. } => Code::Malformed,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "libipc frame: length {len} is over the maximum {max}")
            }
            FrameError::TooShort { len, min } => {
                write!(f, "libipc frame: length {len} is under the minimum {min}")
            }
            FrameError::LegacyType { t } => write!(f, "libipc frame: legacy type {t}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<WireFrameError> for FrameError {
    fn from(e: WireFrameError) -> FrameError {
        match e {
            WireFrameError::TooLarge { len, max } => FrameError::TooLarge { len, max },
            WireFrameError::TooShort { len, min } => FrameError::TooShort { len, min },
        }
    }
}

/// One frame's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub utype: u8,
    pub json: &'a [u8],
}

/// What the decoder found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Frame(Frame<'a>),
    /// A legacy frame with T = 0: the peer is closing; nothing more is read.
    PeerClosing,
}

/// Incremental decoder of one connection's frames; input may be split anywhere.
#[derive(Debug)]
pub struct FrameDecoder {
    legacy_allowed: bool,
    framing: Option<Framing>,
    current: FrameAccumulator,
    legacy: LegacyAccumulator,
}

impl FrameDecoder {
    /// A decoder of current frames, and of legacy ones too when `legacy_allowed`.
    pub fn new(legacy_allowed: bool) -> FrameDecoder {
        FrameDecoder {
            legacy_allowed,
            framing: (!legacy_allowed).then_some(Framing::Current),
            current: FrameAccumulator::new(MAX_LEN).with_min(MIN_LEN),
            legacy: LegacyAccumulator::default(),
        }
    }

    /// The connection's framing, once its first byte has been seen (always known when legacy
    /// framing is not allowed).
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// The framing replies use: the connection's, current until it is known.
    pub fn reply_framing(&self) -> Framing {
        self.framing.unwrap_or(Framing::Current)
    }

    /// Adds bytes read from the peer.
    pub fn extend(&mut self, input: &[u8]) {
        let Some(&first) = input.first() else {
            return;
        };
        let framing = *self.framing.get_or_insert(match first {
            1 | 2 if self.legacy_allowed => Framing::Legacy,
            _ => Framing::Current,
        });
        match framing {
            Framing::Current => self.current.extend(input),
            Framing::Legacy => self.legacy.extend(input),
        }
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed. An error sticks.
    pub fn next_frame(&mut self) -> Result<Option<Decoded<'_>>, FrameError> {
        match self.framing {
            None => Ok(None),
            Some(Framing::Current) => Ok(self.current.next_frame()?.map(|body| {
                Decoded::Frame(Frame {
                    utype: body[0],
                    json: &body[1..],
                })
            })),
            Some(Framing::Legacy) => self.legacy.next_frame(),
        }
    }

    /// Bytes buffered and not yet returned in a frame.
    pub fn buffered(&self) -> usize {
        match self.framing {
            None => 0,
            Some(Framing::Current) => self.current.buffered(),
            Some(Framing::Legacy) => self.legacy.buffered(),
        }
    }

    /// True when no frame has been started: an end of stream here is a clean close.
    pub fn is_between_frames(&self) -> bool {
        match self.framing {
            None => true,
            Some(Framing::Current) => self.current.is_between_frames(),
            Some(Framing::Legacy) => self.legacy.is_between_frames(),
        }
    }

    /// How many more bytes complete the frame being collected (header first), for a driver
    /// that reads exactly one frame at a time; 0 after an error or a legacy close.
    pub fn wanted(&self) -> usize {
        match self.framing {
            None => 1,
            Some(Framing::Current) => self.current.wanted(),
            Some(Framing::Legacy) => self.legacy.wanted(),
        }
    }
}

/// The legacy frame's accumulator (its T byte before the length keeps it from being a plain
/// [`FrameAccumulator`]).
#[derive(Debug, Default)]
struct LegacyAccumulator {
    buf: Vec<u8>,
    start: usize,
    returned: usize,
    failed: Option<FrameError>,
    closing: bool,
}

enum LegacyHead {
    Partial,
    Closing,
    Json(u32),
}

impl LegacyAccumulator {
    fn extend(&mut self, input: &[u8]) {
        if self.failed.is_some() || self.closing {
            return;
        }
        // Stop keeping bytes once the head in hand is refused.
        if matches!(self.head(), Err(_) | Ok(LegacyHead::Closing)) {
            return;
        }
        self.buf.extend_from_slice(input);
    }

    fn at(&self) -> usize {
        self.start + self.returned
    }

    fn head(&mut self) -> Result<LegacyHead, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut c = Cursor::new(&self.buf[self.at()..]);
        let Some(t) = c.u8() else {
            return Ok(LegacyHead::Partial);
        };
        let checked = match t {
            0 => {
                self.closing = true;
                return Ok(LegacyHead::Closing);
            }
            1 | 2 => match c.u32_be() {
                None => Ok(LegacyHead::Partial),
                Some(len) if len > LEGACY_MAX_JSON => Err(FrameError::TooLarge {
                    len,
                    max: LEGACY_MAX_JSON,
                }),
                Some(len) if len < LEGACY_MIN_JSON => Err(FrameError::TooShort {
                    len,
                    min: LEGACY_MIN_JSON,
                }),
                Some(len) => Ok(LegacyHead::Json(len)),
            },
            t => Err(FrameError::LegacyType { t }),
        };
        checked.inspect_err(|e| self.failed = Some(*e))
    }

    fn next_frame(&mut self) -> Result<Option<Decoded<'_>>, FrameError> {
        self.start += std::mem::take(&mut self.returned);
        if self.start >= self.buf.len() - self.start {
            // As `FrameAccumulator`: a reader taking one frame per read never sees "need more",
            // so spent frames are dropped here too, not only when no whole frame is left.
            self.compact();
        }
        let len = match self.head()? {
            LegacyHead::Closing => return Ok(Some(Decoded::PeerClosing)),
            LegacyHead::Partial => {
                self.compact();
                return Ok(None);
            }
            LegacyHead::Json(len) => len as usize,
        };
        let total = HEAD_LEGACY + len;
        if self.buf.len() - self.start < total {
            self.compact();
            return Ok(None);
        }
        self.returned = total;
        let f = &self.buf[self.start..self.start + total];
        Ok(Some(Decoded::Frame(Frame {
            utype: f[HEAD_LEGACY - 1],
            json: &f[HEAD_LEGACY..],
        })))
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
    }

    fn buffered(&self) -> usize {
        self.buf.len() - self.at()
    }

    fn is_between_frames(&self) -> bool {
        self.failed.is_none() && !self.closing && self.buffered() == 0
    }

    fn wanted(&self) -> usize {
        if self.failed.is_some() || self.closing {
            return 0;
        }
        let have = self.buffered();
        let mut c = Cursor::new(&self.buf[self.at()..]);
        match (c.u8(), c.u32_be()) {
            (Some(0), _) => 0,
            (Some(_), Some(len)) if len <= LEGACY_MAX_JSON => {
                (HEAD_LEGACY + len as usize).saturating_sub(have)
            }
            (Some(_), Some(_)) => 0,
            _ => HEAD_LEGACY - have,
        }
    }
}

/// Starts a frame of type `utype` at the end of `out`; append its JSON, then call
/// [`finish_frame`] with the returned position. The JSON is written in place, never copied.
pub fn start_frame(out: &mut Vec<u8>, framing: Framing, utype: u8) -> usize {
    let at = out.len();
    match framing {
        Framing::Current => out.extend_from_slice(&[0, 0, 0, 0, utype]),
        Framing::Legacy => out.extend_from_slice(&[2, 0, 0, 0, 0, utype]),
    }
    at
}

/// Writes the length of the frame started at `at` (everything after it is its JSON).
pub fn finish_frame(out: &mut [u8], framing: Framing, at: usize) {
    let (len_at, len) = match framing {
        Framing::Current => (at, out.len() - at - HEAD_CURRENT + 1),
        Framing::Legacy => (at + 1, out.len() - at - HEAD_LEGACY),
    };
    // Every encoder bounds its JSON far below 4 GiB (QUERY replies stop at the frame limit).
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends one whole frame.
pub fn put_frame(out: &mut Vec<u8>, framing: Framing, utype: u8, json: &[u8]) {
    let at = start_frame(out, framing, utype);
    out.extend_from_slice(json);
    finish_frame(out, framing, at);
}

/// The Error RESPONSE with the nil `message-id` sent before closing when a request's id cannot
/// be read (spec 2.1): `too-large` or `malformed` for a framing error.
pub fn nil_reply(out: &mut Vec<u8>, framing: Framing, code: Code) {
    let at = start_frame(out, framing, utype::RESPONSE);
    encode_error(out, &MessageId::NIL, &Reason::new(code));
    finish_frame(out, framing, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::filestorage::testdata;

    fn transcript() -> Vec<u8> {
        let mut t: Vec<u8> = testdata::client_frames_4_5().concat();
        t.extend(testdata::client_frames_6().concat());
        t
    }

    /// Every frame (utype, json) seen feeding `t` cut at `cuts`.
    fn feed(t: &[u8], cuts: &[usize], legacy: bool) -> (Vec<(u8, Vec<u8>)>, FrameDecoder) {
        let mut dec = FrameDecoder::new(legacy);
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&t.len())) {
            dec.extend(&t[prev..c]);
            while let Some(Decoded::Frame(f)) = dec.next_frame().unwrap() {
                out.push((f.utype, f.json.to_vec()));
            }
            prev = c;
        }
        (out, dec)
    }

    fn to_legacy(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            put_frame(&mut out, Framing::Legacy, f[4], &f[5..]);
        }
        out
    }

    #[test]
    fn s2_transcript_whole_bytewise_and_split_anywhere() {
        let t = transcript();
        let (whole, dec) = feed(&t, &[], false);
        assert_eq!(whole.len(), 6);
        assert_eq!(
            whole.iter().map(|f| f.0).collect::<Vec<_>>(),
            [1, 3, 3, 3, 4, 5]
        );
        assert_eq!(whole[0].1.len(), 372);
        assert!(dec.is_between_frames());
        let bytewise: Vec<usize> = (1..t.len()).collect();
        assert_eq!(feed(&t, &bytewise, false).0, whole);
        for a in 0..=t.len() {
            assert_eq!(feed(&t, &[a], false).0, whole, "split at {a}");
        }
        for a in (0..t.len()).step_by(97) {
            for b in (a..t.len()).step_by(89) {
                assert_eq!(feed(&t, &[a, b], false).0, whole, "split at {a}, {b}");
            }
        }
        // The same in legacy framing, with legacy allowed; current framing with legacy allowed.
        let mut frames = testdata::client_frames_4_5();
        frames.extend(testdata::client_frames_6());
        let lt = to_legacy(&frames);
        assert_eq!(feed(&lt, &[], true).0, whole);
        for a in 0..=lt.len() {
            assert_eq!(feed(&lt, &[a], true).0, whole, "legacy split at {a}");
        }
        assert_eq!(feed(&t, &bytewise, true).0, whole);
    }

    /// Found by fuzzing (wire_frame, the same accumulator pattern as the current frame's):
    /// exact reads, one frame per read and one `next_frame` per read, never see "need more";
    /// spent legacy frames must not pile up.
    #[test]
    fn legacy_frames_read_one_at_a_time_do_not_pile_up() {
        let mut one = Vec::new();
        put_frame(&mut one, Framing::Legacy, 3, b"{}");
        let mut dec = FrameDecoder::new(true);
        for _ in 0..10_000 {
            dec.extend(&one);
            let got = dec.next_frame();
            assert_eq!(
                got,
                Ok(Some(Decoded::Frame(Frame {
                    utype: 3,
                    json: b"{}"
                })))
            );
            let kept = dec.legacy.buf.capacity();
            assert!(kept <= 4 * one.len(), "{kept} bytes kept");
        }
    }

    /// After a legacy frame: a closing byte or a refused type wants nothing more, and the
    /// connection is not between frames (whole run, proto-filestorage frame part: `wanted`'s
    /// `(Some(0), _)` arm deleted or its `failed || closing` as `&&` asked for 5 more bytes).
    #[test]
    fn s7_a_legacy_close_or_refused_type_wants_nothing_more() {
        let mut one = Vec::new();
        put_frame(&mut one, Framing::Legacy, 3, b"{}");
        for (tail, closes) in [(0u8, true), (7, false)] {
            let mut dec = FrameDecoder::new(true);
            dec.extend(&one);
            assert!(matches!(dec.next_frame(), Ok(Some(Decoded::Frame(_)))));
            dec.extend(&[tail]);
            if closes {
                assert_eq!(dec.wanted(), 0, "a close wants nothing");
                assert_eq!(dec.next_frame(), Ok(Some(Decoded::PeerClosing)));
            } else {
                assert_eq!(dec.next_frame(), Err(FrameError::LegacyType { t: 7 }));
            }
            assert_eq!(dec.wanted(), 0);
            assert!(!dec.is_between_frames());
        }
    }

    /// A legacy frame larger than 64 KiB arriving in pieces is kept whole, and its buffer is
    /// given back once it is read (whole run, proto-filestorage frame part: `compact`'s
    /// `is_empty() && capacity > 64 KiB` as `||` threw away the half received; as `<` or `==`
    /// the big buffer stayed).
    #[test]
    fn a_large_legacy_frame_in_pieces_is_kept_then_its_buffer_given_back() {
        let json = format!("{{\"pad\":\"{}\"}}", "x".repeat(90_000));
        let mut f = Vec::new();
        put_frame(&mut f, Framing::Legacy, 2, json.as_bytes());
        let mut dec = FrameDecoder::new(true);
        let (a, b) = f.split_at(70_000);
        dec.extend(a);
        assert_eq!(dec.next_frame(), Ok(None));
        dec.extend(b);
        assert_eq!(
            dec.next_frame(),
            Ok(Some(Decoded::Frame(Frame {
                utype: 2,
                json: json.as_bytes()
            })))
        );
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.legacy.buf.capacity(), 0, "the buffer is given back");
    }

    #[test]
    fn s3_length_bounds_and_nil_replies() {
        let mut dec = FrameDecoder::new(false);
        let mut f = 99_992u32.to_be_bytes().to_vec();
        f.push(1);
        f.extend(std::iter::repeat_n(b' ', 99_991));
        dec.extend(&f);
        let Some(Decoded::Frame(frame)) = dec.next_frame().unwrap() else {
            panic!("LEN 99,992 is a frame")
        };
        assert_eq!(frame.json.len(), 99_991);
        for head in [[0xffu8, 0xff, 0xff, 0xff], [0, 1, 0x86, 0x99], [2, 0, 0, 0]] {
            let mut dec = FrameDecoder::new(false);
            dec.extend(&head);
            let len = u32::from_be_bytes(head);
            assert_eq!(
                dec.next_frame(),
                Err(FrameError::TooLarge { len, max: 99_992 })
            );
            dec.extend(&[b'x'; 100]);
            assert_eq!(dec.buffered(), 4, "the body is never kept");
            assert_eq!(dec.wanted(), 0);
            assert!(!dec.is_between_frames());
        }
        for len in 0..3u32 {
            let mut dec = FrameDecoder::new(false);
            dec.extend(&len.to_be_bytes());
            let e = dec.next_frame().unwrap_err();
            assert_eq!(e, FrameError::TooShort { len, min: 3 });
            assert_eq!(e.code(), Code::Malformed);
        }
        let mut out = Vec::new();
        nil_reply(&mut out, Framing::Current, Code::TooLarge);
        let json = br#"{"message-id":"00000000-0000-0000-0000-000000000000","response":"Error","reason":"too-large"}"#;
        assert_eq!(&out[..5], [0, 0, 0, 0x5e, 2]);
        assert_eq!(&out[5..], json);
        assert_eq!(json.len(), 93);
        out.clear();
        nil_reply(&mut out, Framing::Current, Code::Malformed);
        assert_eq!(&out[..5], [0, 0, 0, 0x5e, 2]);
        assert!(out.ends_with(br#""reason":"malformed"}"#));
        assert_eq!(
            FrameError::TooLarge { len: 5, max: 4 }.to_string(),
            "libipc frame: length 5 is over the maximum 4"
        );
    }

    #[test]
    fn s7_legacy_framing_is_chosen_by_the_first_byte() {
        let ok = br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000002","response":"Ok"}"#;
        let mut out = Vec::new();
        put_frame(&mut out, Framing::Legacy, 2, ok);
        assert_eq!(&out[..8], [0x02, 0, 0, 0, 0x45, 0x02, 0x7b, 0x22]);
        out.clear();
        put_frame(&mut out, Framing::Current, 2, ok);
        assert_eq!(&out[..8], [0, 0, 0, 0x46, 0x02, 0x7b, 0x22, 0x6d]);

        // T = 1 is accepted like 2; the framing holds for the whole connection.
        let mut dec = FrameDecoder::new(true);
        assert_eq!(dec.framing(), None);
        assert_eq!(dec.reply_framing(), Framing::Current);
        assert_eq!(dec.wanted(), 1);
        dec.extend(&[1, 0, 0, 0, 2, 4, b'{', b'}', 2, 0]);
        assert_eq!(dec.framing(), Some(Framing::Legacy));
        assert_eq!(
            dec.next_frame(),
            Ok(Some(Decoded::Frame(Frame {
                utype: 4,
                json: b"{}"
            })))
        );
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.wanted(), 4);
        dec.extend(&[0, 0, 2, 1]);
        assert_eq!(dec.wanted(), 2);
        dec.extend(b"{}");
        assert!(matches!(dec.next_frame(), Ok(Some(Decoded::Frame(_)))));
        assert!(dec.is_between_frames());
        // T = 0: the peer is closing, whatever follows.
        dec.extend(&[0, 0, 0, 0, 0]);
        assert_eq!(dec.next_frame(), Ok(Some(Decoded::PeerClosing)));
        assert_eq!(dec.wanted(), 0);
        assert!(!dec.is_between_frames());
        // Any other T is malformed and sticks.
        let mut dec = FrameDecoder::new(true);
        dec.extend(&[2, 0, 0, 0, 2, 1, b'{', b'}', 3]);
        assert!(matches!(dec.next_frame(), Ok(Some(Decoded::Frame(_)))));
        assert_eq!(dec.next_frame(), Err(FrameError::LegacyType { t: 3 }));
        assert_eq!(dec.next_frame(), Err(FrameError::LegacyType { t: 3 }));
        // Legacy bounds: JSON 2..=99,991.
        for (len, err) in [
            (
                99_992u32,
                Some(FrameError::TooLarge {
                    len: 99_992,
                    max: 99_991,
                }),
            ),
            (1, Some(FrameError::TooShort { len: 1, min: 2 })),
            (99_991, None),
        ] {
            let mut dec = FrameDecoder::new(true);
            let mut f = vec![2];
            f.extend(len.to_be_bytes());
            dec.extend(&f);
            match err {
                Some(e) => assert_eq!(dec.next_frame(), Err(e)),
                None => {
                    assert_eq!(dec.next_frame(), Ok(None));
                    assert_eq!(dec.wanted(), 1 + 99_991);
                }
            }
        }
        // With legacy allowed, 00 is current framing and another first byte a huge LEN.
        let mut dec = FrameDecoder::new(true);
        dec.extend(&[0]);
        assert_eq!(dec.framing(), Some(Framing::Current));
        let mut dec = FrameDecoder::new(true);
        dec.extend(&[3, 0, 0, 0]);
        assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge { .. })));
        let mut out = Vec::new();
        nil_reply(&mut out, Framing::Legacy, Code::Malformed);
        assert_eq!(&out[..6], [2, 0, 0, 0, 0x5d, 2]);
    }

    /// A legacy head whose length is over the limit wants nothing more, as soon as the length
    /// is known (5 bytes) and with more bytes behind it: the next `next_frame` refuses it.
    #[test]
    fn legacy_head_with_an_oversized_length_wants_nothing_more() {
        let too_long = (LEGACY_MAX_JSON + 1).to_be_bytes();
        for extra in [&[][..], &[2u8][..], &[2u8, 0, 0, 0][..]] {
            let mut dec = FrameDecoder::new(true);
            dec.extend(&[1]);
            dec.extend(&too_long);
            dec.extend(extra);
            assert_eq!(dec.framing(), Some(Framing::Legacy));
            assert_eq!(dec.wanted(), 0, "{} bytes after the length", extra.len());
            assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge { .. })));
            assert_eq!(dec.wanted(), 0);
        }
    }

    #[test]
    fn s2_eof_inside_a_frame_is_visible() {
        let t = transcript();
        let mut dec = FrameDecoder::new(false);
        dec.extend(&t[..10]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert!(!dec.is_between_frames());
        assert_eq!(dec.wanted(), 4 + 0x175 - 10);
    }

    #[test]
    fn never_panics_on_truncations_and_random_bytes() {
        let t = transcript();
        for legacy in [false, true] {
            for cut in 0..t.len().min(2000) {
                let mut dec = FrameDecoder::new(legacy);
                dec.extend(&t[..cut]);
                while let Ok(Some(Decoded::Frame(_))) = dec.next_frame() {}
                let _ = (dec.wanted(), dec.buffered(), dec.is_between_frames());
            }
        }
        let mut x = 0x0123_4567_89ab_cdefu64;
        for round in 0..5_000 {
            let mut dec = FrameDecoder::new(round % 2 == 0);
            for _ in 0..6 {
                let len = (x % 24) as usize;
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        // Mostly small bytes, so lengths are often in bounds.
                        if x % 3 == 0 {
                            x as u8
                        } else {
                            (x as u8) & 0x07
                        }
                    })
                    .collect();
                dec.extend(&bytes);
                let _ = dec.wanted();
                while let Ok(Some(Decoded::Frame(f))) = dec.next_frame() {
                    assert!(f.json.len() < MAX_LEN as usize);
                }
                assert!(dec.buffered() <= 6 + MAX_LEN as usize + 24);
            }
        }
    }
}
