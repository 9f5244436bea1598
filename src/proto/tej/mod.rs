//! TEJ protocol v1 (tej.md): pure codecs, no I/O.
//!
//! - [`client`]: the client machines (send and its acknowledgement, get and its manifest check,
//!   list paging).
//! - [`frame`]: the frame encoders, [`frame::Limits`] and the incremental [`frame::Decoder`]
//!   (read with [`crate::wire::Cursor`]; a field split across reads waits in a
//!   [`crate::wire::Stash`], file data is never copied).
//! - [`messages`]: ferry's JSON conventions carried in the message of statuses 1 and 3-6
//!   (acknowledgement, error, request, manifest, list request, listing) and the error codes.
//!
//! Out of scope here: sockets, files, hashing of received data, timeouts and the catalog (the
//! driver's job). TEJ has no handshake, checksum or error reporting of its own; everything in
//! [`messages`] is ferry's convention on top of the unchanged frame format.
//!
//! Frame layout (integers unsigned big-endian); frames follow each other back to back:
//!
//! ```text
//! offset  size  field
//! 0       1     status byte: bit 7 always 1, bits 6..0 custom status 0..127
//! 1       1     version (ferry writes 1; any value is accepted unless strict)
//! 2       8     N, number of files
//! per file:
//!         2     L, name length in UTF-8 bytes
//!         L     name
//!         8     F, file length
//!         F     data
//! after the files:
//!         8     M, message length (always present, 0 = no message)
//!         M     message (opaque bytes)
//! ```
//!
//! Statuses: 0 deliver, 1 acknowledgement, 2 ping, 3 error, 4 request, 5 list request,
//! 6 listing, 7..127 application ([`frame::status`]).
//!
//! `file_only` (tej.md 1.2) encoded and decoded with exact bytes:
//!
//! ```
//! use ferry::proto::tej::frame::{frame, Decoder, Event, Limits};
//!
//! let bytes = frame(0, &[("a.txt", b"AAAA")], b"");
//! assert_eq!(
//!     bytes,
//!     b"\x80\x01\0\0\0\0\0\0\0\x01\0\x05a.txt\0\0\0\0\0\0\0\x04AAAA\0\0\0\0\0\0\0\0"
//! );
//! assert_eq!(bytes.len(), 37);
//!
//! let mut dec = Decoder::new(Limits::default());
//! let mut pos = 0;
//! let (n, ev) = dec.decode(&bytes[pos..]);
//! assert_eq!(ev, Ok(Some(Event::FrameStart { status: 0, version: 1, files: 1 })));
//! pos += n;
//! let (n, ev) = dec.decode(&bytes[pos..]);
//! let start = Event::FileStart { index: 0, name: b"a.txt", name_ok: true, size: 4 };
//! assert_eq!(ev, Ok(Some(start)));
//! pos += n;
//! let (n, ev) = dec.decode(&bytes[pos..]);
//! assert_eq!(ev, Ok(Some(Event::FileData(b"AAAA"))));
//! pos += n;
//! assert_eq!(dec.decode(&bytes[pos..]), (0, Ok(Some(Event::FileEnd))));
//! let (n, ev) = dec.decode(&bytes[pos..]);
//! assert_eq!(ev, Ok(Some(Event::Message(b""))));
//! pos += n;
//! assert_eq!(dec.decode(&bytes[pos..]), (0, Ok(Some(Event::FrameEnd))));
//! assert_eq!(pos, 37);
//! assert!(dec.is_between_frames());
//! assert_eq!(dec.decode(&[]), (0, Ok(None)));
//! ```

/// ALPN id for ferry-to-ferry TEJ over TLS.
pub const ALPN: &[u8] = b"tej/1";

pub mod client;
pub mod frame;
pub mod messages;
