//! Length-prefixed frames: `u32` big-endian body length, then the body.
//!
//! ```text
//! 0        4
//! | LEN u32 BE | BODY (LEN bytes) | next frame ...
//! ```
//!
//! [`FrameAccumulator`] collects such frames from a byte stream split anywhere. Its bounds are
//! checked on the four length bytes alone: a frame over the maximum (or under the minimum) is
//! refused before any of its body is buffered, and the accumulator stays failed, because the
//! stream can no longer be trusted to be in step.

use super::Cursor;

/// Bytes of the length prefix.
pub const FRAME_HEADER: usize = 4;
/// An idle accumulator whose buffer grew past this gives the memory back.
const SHRINK_ABOVE: usize = 64 * 1024;

/// A length prefix outside the bounds the protocol allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The announced body is longer than the maximum; its bytes are never read.
    TooLarge { len: u32, max: u32 },
    /// The announced body is shorter than the minimum (FastDP's empty JMSG, say).
    TooShort { len: u32, min: u32 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame: length {len} is over the maximum {max}")
            }
            FrameError::TooShort { len, min } => {
                write!(f, "frame: length {len} is under the minimum {min}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// The body length announced at the start of `buf`, checked against `min..=max`; `Ok(None)`
/// while fewer than four bytes are there.
pub fn frame_len(buf: &[u8], min: u32, max: u32) -> Result<Option<u32>, FrameError> {
    let Some(len) = Cursor::new(buf).u32_be() else {
        return Ok(None);
    };
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len < min {
        return Err(FrameError::TooShort { len, min });
    }
    Ok(Some(len))
}

/// Appends one frame holding `body`. Bodies come from ferry's own encoders, which bound them far
/// below 4 GiB.
pub fn put_frame(body: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(body.len()).expect("frame bodies are bounded far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
}

/// Incremental reader of length-prefixed frames (see the module doc).
#[derive(Debug)]
pub struct FrameAccumulator {
    min: u32,
    max: u32,
    buf: Vec<u8>,
    /// Start of the bytes not yet handed out.
    start: usize,
    /// Length of the frame last returned by `next_frame`, consumed on the next call.
    returned: usize,
    failed: Option<FrameError>,
}

impl FrameAccumulator {
    /// Frames of at most `max` body bytes, empty bodies allowed.
    pub fn new(max: u32) -> FrameAccumulator {
        FrameAccumulator {
            min: 0,
            max,
            buf: Vec::new(),
            start: 0,
            returned: 0,
            failed: None,
        }
    }

    /// Also refuse bodies shorter than `min`.
    pub fn with_min(mut self, min: u32) -> FrameAccumulator {
        self.min = min;
        self
    }

    /// The largest body accepted.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Adds bytes from the stream. When the frame being collected has already shown a length
    /// out of bounds, the input is dropped unread (the next [`next_frame`](Self::next_frame)
    /// reports the error).
    pub fn extend(&mut self, input: &[u8]) {
        if self.failed.is_some() || self.check_head().is_err() {
            return;
        }
        self.buf.extend_from_slice(input);
    }

    /// The next whole frame's body, `Ok(None)` when more bytes are needed. The body borrowed
    /// here is released by the next call.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        self.start += std::mem::take(&mut self.returned);
        if self.start >= self.buf.len() - self.start {
            // At least half the buffer is spent: move the rest to the front now rather than
            // only when no whole frame is left, or a reader that takes one frame per read
            // (never seeing "need more") would keep every frame it ever read. Each byte is
            // moved at most about twice over its life.
            self.compact();
        }
        let Some(body) = self.check_head()? else {
            self.compact();
            return Ok(None);
        };
        let total = FRAME_HEADER + body as usize;
        if self.buf.len() - self.start < total {
            self.compact();
            return Ok(None);
        }
        self.returned = total;
        Ok(Some(
            &self.buf[self.start + FRAME_HEADER..self.start + total],
        ))
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start - self.returned
    }

    /// True when no frame has been started: an end of stream here is a clean close.
    pub fn is_between_frames(&self) -> bool {
        self.failed.is_none() && self.buffered() == 0
    }

    /// How many more bytes complete the frame being collected (its header first): a driver that
    /// must not read past a frame (filestorage's exact reads) reads at most this many.
    pub fn wanted(&self) -> usize {
        let have = self.buffered();
        let at = self.start + self.returned;
        match frame_len(&self.buf[at..], self.min, self.max) {
            Ok(Some(len)) => (FRAME_HEADER + len as usize).saturating_sub(have),
            Ok(None) => FRAME_HEADER - have,
            Err(_) => 0,
        }
    }

    /// Hands back the bytes not yet returned as frames (for a protocol that switches framing
    /// mid-stream) and leaves the accumulator empty.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let at = self.start + self.returned;
        let rest = self.buf.split_off(at);
        self.buf.clear();
        self.start = 0;
        self.returned = 0;
        rest
    }

    /// Checks the length of the frame at `start`, remembering a failure.
    fn check_head(&mut self) -> Result<Option<u32>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let at = self.start + self.returned;
        frame_len(&self.buf[at..], self.min, self.max).inspect_err(|e| self.failed = Some(*e))
    }

    /// Moves the bytes not yet handed out to the front of the buffer (when no whole frame is
    /// left, or when they are no more than the bytes spent, so a read holding many frames is
    /// not moved once per frame).
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
            self.buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript() -> Vec<u8> {
        let mut t = Vec::new();
        put_frame(b"", &mut t);
        put_frame(b"hello", &mut t);
        put_frame(&[7u8; 300], &mut t);
        put_frame(b"x", &mut t);
        t
    }

    fn collect(acc: &mut FrameAccumulator, out: &mut Vec<Vec<u8>>) {
        while let Some(f) = acc.next_frame().unwrap() {
            out.push(f.to_vec());
        }
    }

    fn acc_with(bytes: &[u8]) -> FrameAccumulator {
        let mut acc = FrameAccumulator::new(1 << 20);
        acc.extend(bytes);
        acc
    }

    /// Feeds `t` cut at `cuts` and returns every frame seen.
    fn feed(t: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, FrameAccumulator) {
        let mut acc = FrameAccumulator::new(1000);
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&t.len())) {
            acc.extend(&t[prev..c]);
            collect(&mut acc, &mut out);
            prev = c;
        }
        (out, acc)
    }

    #[test]
    fn split_anywhere_gives_the_same_frames() {
        let t = transcript();
        let (whole, acc) = feed(&t, &[]);
        assert_eq!(whole.len(), 4);
        assert_eq!(whole[1], b"hello");
        assert!(acc.is_between_frames());
        let bytewise: Vec<usize> = (1..t.len()).collect();
        assert_eq!(feed(&t, &bytewise).0, whole);
        for a in 0..=t.len() {
            assert_eq!(feed(&t, &[a]).0, whole, "split at {a}");
        }
        for a in (0..t.len()).step_by(7) {
            for b in (a..t.len()).step_by(11) {
                assert_eq!(feed(&t, &[a, b]).0, whole, "split at {a} and {b}");
            }
        }
    }

    #[test]
    fn keeps_bytes_past_a_frame() {
        let mut acc = FrameAccumulator::new(10);
        acc.extend(b"\0\0\0\x01a\0\0");
        assert_eq!(acc.next_frame(), Ok(Some(&b"a"[..])));
        // While the frame is still lent out, it is not counted nor handed back again (full run
        // of wire: `- returned` as `+`, and `start + returned` as `-` or `*` in take_buffered).
        assert_eq!(acc.buffered(), 2);
        let mut again = acc_with(b"\0\0\0\x01a\0\0");
        assert_eq!(again.next_frame(), Ok(Some(&b"a"[..])));
        assert_eq!(again.take_buffered(), b"\0\0");
        assert_eq!(acc.next_frame(), Ok(None));
        assert_eq!(acc.buffered(), 2);
        assert!(!acc.is_between_frames());
        assert_eq!(acc.wanted(), 2, "the rest of the header");
        acc.extend(b"\0\x03b");
        assert_eq!(acc.wanted(), 2, "the rest of the body");
        assert_eq!(acc.next_frame(), Ok(None));
        assert_eq!(acc.take_buffered(), b"\0\0\0\x03b");
        assert!(acc.is_between_frames());
    }

    #[test]
    fn oversized_length_is_refused_before_its_body_is_buffered() {
        let mut acc = FrameAccumulator::new(8);
        acc.extend(&[0, 0, 0, 9]);
        assert_eq!(
            acc.next_frame(),
            Err(FrameError::TooLarge { len: 9, max: 8 })
        );
        acc.extend(&[1u8; 9]);
        assert_eq!(acc.buffered(), 4, "no body byte was kept");
        assert!(acc.next_frame().is_err(), "the failure sticks");
        assert!(!acc.is_between_frames());
        // Without a `next_frame` between two reads: the second is dropped all the same (full
        // run of wire: `||` as `&&` looked at the header only once a failure was recorded).
        let mut acc = FrameAccumulator::new(8);
        acc.extend(&[0, 0, 0, 9]);
        acc.extend(&[1u8; 9]);
        assert_eq!(acc.buffered(), 4, "no body byte was kept");
        // Refused as soon as the header is whole, even inside one larger read.
        let mut acc = FrameAccumulator::new(8);
        acc.extend(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        let e = acc.next_frame().unwrap_err();
        assert_eq!(
            e.to_string(),
            "frame: length 4294967295 is over the maximum 8"
        );
    }

    #[test]
    fn minimum_is_checked() {
        let mut acc = FrameAccumulator::new(65536).with_min(1);
        assert_eq!(acc.max(), 65536, "the minimum leaves the maximum alone");
        acc.extend(&[0, 0, 0, 0]);
        assert_eq!(
            acc.next_frame(),
            Err(FrameError::TooShort { len: 0, min: 1 })
        );
        assert_eq!(frame_len(&[0, 0, 1], 1, 9), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0, 5, 9], 1, 9), Ok(Some(5)));
        // Both bounds are inclusive (sample F: `len > max` as `>=` refused a frame of exactly
        // the maximum).
        assert_eq!(frame_len(&[0, 0, 0, 9], 1, 9), Ok(Some(9)));
        assert_eq!(frame_len(&[0, 0, 0, 1], 1, 9), Ok(Some(1)));
        assert_eq!(
            frame_len(&[0, 0, 0, 10], 1, 9),
            Err(FrameError::TooLarge { len: 10, max: 9 })
        );
    }

    /// Found by fuzzing (wire_frame): a reader that takes exactly one frame per read, as
    /// filestorage's exact reads and FastDP's JMSG reader do, never sees "need more", and the
    /// accumulator kept every frame it had handed out.
    #[test]
    fn frames_read_one_at_a_time_do_not_pile_up() {
        let mut acc = FrameAccumulator::new(24);
        for i in 0..10_000u32 {
            acc.extend(&[0, 0, 0, 1]);
            acc.extend(&[i as u8]);
            assert_eq!(acc.next_frame(), Ok(Some(&[i as u8][..])));
            assert!(
                acc.buf.capacity() <= 32,
                "{} bytes kept",
                acc.buf.capacity()
            );
        }
        assert!(!acc.is_between_frames() || acc.buffered() == 0);
        let (frames, _) = feed(&transcript(), &[]);
        assert_eq!(frames.len(), 4);
    }

    /// `wanted` counts from the frame after the one last returned, while earlier frames are
    /// still in the buffer (mutation sample H: `start + returned` as `-` read a length out of
    /// an earlier frame's body).
    #[test]
    fn wanted_counts_from_the_frame_after_those_returned() {
        let mut t = Vec::new();
        put_frame(&[0u8; 30], &mut t);
        put_frame(&[1u8; 10], &mut t);
        put_frame(&[2u8; 100], &mut t);
        t.truncate(t.len() - 95);
        let mut acc = FrameAccumulator::new(1000);
        acc.extend(&t);
        assert_eq!(acc.next_frame().unwrap().map(<[u8]>::len), Some(30));
        assert_eq!(acc.next_frame().unwrap().map(<[u8]>::len), Some(10));
        // The third frame's header and 5 of its 100 bytes are here.
        assert_eq!(acc.wanted(), 95);
        assert_eq!(acc.buffered(), 9);
        // Small frames first, so the spent bytes stay in front (no compaction yet): `buffered`
        // counts neither them nor the frame lent out (full run of wire: `len - start` as `+`).
        let mut t = Vec::new();
        put_frame(b"a", &mut t);
        put_frame(b"b", &mut t);
        put_frame(&[2u8; 100], &mut t);
        let mut acc = acc_with(&t);
        assert_eq!(acc.next_frame(), Ok(Some(&b"a"[..])));
        assert_eq!(acc.next_frame(), Ok(Some(&b"b"[..])));
        assert_eq!((acc.start, acc.buffered()), (5, 104));
    }

    /// A large frame that arrives in pieces is kept whole between them: only an empty buffer is
    /// given back (full run of wire: `is_empty() &&` as `||` dropped a partial frame's bytes
    /// once the buffer passed 64 KiB).
    #[test]
    fn a_large_frame_in_pieces_is_not_given_back_half_way() {
        let mut t = Vec::new();
        let body: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        put_frame(&body, &mut t);
        let mut acc = FrameAccumulator::new(1 << 20);
        for piece in t.chunks(100_000) {
            acc.extend(piece);
            if let Some(f) = acc.next_frame().unwrap() {
                assert_eq!(f, &body[..]);
                return;
            }
        }
        panic!("the frame never came whole");
    }

    /// A buffer grown by one large frame is given back once it is empty, so an idle connection
    /// holds no more than 64 KiB (mutation sample H: `>` as `==` never gave it back).
    #[test]
    fn a_buffer_grown_by_a_large_frame_is_given_back_when_empty() {
        let mut acc = FrameAccumulator::new(1 << 20);
        let mut t = Vec::new();
        put_frame(&vec![9u8; 1 << 20], &mut t);
        acc.extend(&t);
        assert!(acc.buf.capacity() > SHRINK_ABOVE);
        assert_eq!(acc.next_frame().unwrap().map(<[u8]>::len), Some(1 << 20));
        assert_eq!(acc.next_frame(), Ok(None));
        assert!(acc.buf.capacity() <= SHRINK_ABOVE, "{}", acc.buf.capacity());
    }

    #[test]
    fn never_panics_on_random_input() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for round in 0..2000 {
            let mut acc = FrameAccumulator::new(64);
            let mut frames = 0;
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = (x % 40) as usize;
                let bytes: Vec<u8> = (0..len)
                    .map(|i| (x >> (i % 8 * 8)) as u8 & if round % 2 == 0 { 0x03 } else { 0xff })
                    .collect();
                acc.extend(&bytes);
                let _ = acc.wanted();
                while let Ok(Some(f)) = acc.next_frame() {
                    assert!(f.len() <= 64);
                    frames += 1;
                }
                assert!(acc.buffered() <= 4 + 64 + 40);
            }
            let _ = (frames, acc.take_buffered());
        }
    }
}
