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
//! ```

mod cursor;
mod frame;
pub mod hex;

pub use cursor::{Cursor, Trailing};
pub use frame::{frame_len, put_frame, FrameAccumulator, FrameError, FRAME_HEADER};
