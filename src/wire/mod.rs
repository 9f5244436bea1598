//! Byte-level building blocks every codec shares, so a new wire format is a few lines on top of
//! them instead of another hand-written reader:
//!
//! - [`Cursor`]: a bounded reader over a byte slice (`take`, `peek`, integers in either byte
//!   order, `sub` for a length-delimited part, `expect_empty`). Running out of bytes is `None`,
//!   which a stream decoder reads as "need more" and a file decoder as "truncated": the cursor
//!   never decides which, and never panics or reads past its slice.
//! - [`FrameAccumulator`]: an incremental reader of `u32` big-endian length-prefixed frames (the
//!   shape of libIPC frames and FastDP's JMSG). The length is compared with the maximum as soon
//!   as its four bytes arrive, before any body byte is buffered or allocated; input may be split
//!   anywhere and bytes past a frame are kept for the next one.
//! - [`Stash`]: the one field a stream decoder is gathering across reads split anywhere (a JTP
//!   header frame, a TEJ file entry or message, a JTP request id). It borrows a field that is
//!   whole in the input, copies only the bytes a split field still misses (never the bulk data
//!   after it), and compares the field's length with its maximum before copying anything. Used
//!   by the JTP request and response decoders and the TEJ frame decoder.
//! - [`hex`]: lowercase hexadecimal for ids (SHA-256, xxHash64) and their short forms.
//!
//! Out of scope: anything protocol-specific (magics, varints, JSON), sockets and files.
//!
//! ```
//! use ferry::wire::{Cursor, FrameAccumulator};
//!
//! // Two frames and the first byte of a third arrive in one read.
//! let mut acc = FrameAccumulator::new(16);
//! acc.extend(b"\0\0\0\x02hi\0\0\0\x01!\0");
//! assert_eq!(acc.next_frame(), Ok(Some(&b"hi"[..])));
//! let mut c = Cursor::new(acc.next_frame().unwrap().unwrap());
//! assert_eq!(c.u8(), Some(b'!'));
//! assert!(c.expect_empty().is_ok());
//! assert_eq!(acc.next_frame(), Ok(None)); // need more
//! assert_eq!(acc.buffered(), 1);
//!
//! // A field of one length byte and that many bytes, split across two reads.
//! use ferry::wire::{FieldTooLong, Gathered, Stash};
//! let need = |p: &[u8]| Ok::<_, FieldTooLong>(p.first().map_or(1, |&n| 1 + n as usize));
//! let mut stash = Stash::new(16);
//! assert_eq!(stash.gather(b"\x03a", need), Ok(Gathered::Partial));
//! let Ok(Gathered::Whole { taken, field }) = stash.gather(b"bcREST", need) else { panic!() };
//! assert_eq!((taken, field), (2, &b"\x03abc"[..])); // "REST" stays with the caller
//! ```

mod cursor;
mod frame;
pub mod hex;
mod stash;

pub use cursor::{Cursor, Trailing};
pub use frame::{frame_len, put_frame, FrameAccumulator, FrameError, FRAME_HEADER};
pub use stash::{FieldTooLong, Gathered, Stash};
