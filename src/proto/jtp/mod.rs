//! JTP, the image-catalog protocol (jtp.md): pure codecs, no I/O.
//!
//! - [`wire`]: magics, varints, image ids, the flags byte.
//! - [`client`]: the client connection machine (request sequencing, pipelining policy, packet
//!   bookkeeping) on top of the response decoder.
//! - [`request`]: requests, encoded by the client and decoded incrementally by the server.
//! - [`response`]: responses, encoded by the server and decoded incrementally by the client.
//! - [`zstd_frame`]: one-frame compression and the client's bounded inflater.
//!
//! The decoders read through [`crate::wire::Cursor`] ("need more" is never an error) and gather
//! a field split across reads in a [`crate::wire::Stash`]; ids print and parse as 16 hex digits
//! through [`crate::wire::hex::encode_u64`] and [`crate::wire::hex::parse_u64`].
//!
//! Out of scope here: sockets, files, timeouts and the catalog (the server and driver modules).
//!
//! Byte layouts (integers big-endian, `varint` = minimal LEB128 u32):
//!
//! ```text
//! request   ReqType u8 | Flags u8 (bit 0 keep-alive, 1-7 zero) | body
//!   00 GET_BY_ID     Count u8 | Count x id u64
//!   01 LIST, 03 CANCEL, 04 WATCH, 05 LIST_AND_GET    no body
//!   02 BATCH         HaveCount varint | HaveCount x id u64
//!
//! JTPL  4a54504c | Count varint | Count x entry
//! entry          id u64 | Flags u8 | NameLen u16 | Name | Size varint
//! JTPD  4a545044 | M u8         | M x packet
//! JTPB  4a545042 | Count varint | Count x packet      (JTPG 4a545047 likewise)
//! packet         Flags u8 | Length varint | id u64 | Length bytes of data
//! JTPC  4a545043                                      (4 bytes, nothing after)
//! JTPW  4a545057 | entry
//! JTPE  4a545045 | Code u8 | MessageLen u16 | Message
//!
//! Flags: bits 0-2 type (0 png 1 jpeg 2 webp 3 bmp 4 gif 7 other), bit 3 zstd, bits 4-7 zero.
//! ```
//!
//! One LIST exchange with exact bytes:
//!
//! ```
//! use ferry::proto::jtp::request::{Decoded, Request, RequestDecoder, RequestLimits};
//! use ferry::proto::jtp::response::{
//!     put_entry, put_list_header, Event, Expect, ResponseDecoder, ResponseLimits,
//! };
//!
//! // Client: LIST without keep-alive.
//! let mut req = Vec::new();
//! Request::List { keep_alive: false }.encode(&mut req);
//! assert_eq!(req, [0x01, 0x00]);
//!
//! // Server: decode it and answer with one entry.
//! let mut server = RequestDecoder::new(RequestLimits::default());
//! assert_eq!(server.decode(&req), (2, Ok(Decoded::Request(Request::List { keep_alive: false }))));
//! let mut reply = Vec::new();
//! put_list_header(1, &mut reply);
//! put_entry(0x84fe30f5845a521f, 0, "alpha.png", 9332, &mut reply);
//! assert_eq!(reply, b"JTPL\x01\x84\xfe\x30\xf5\x84\x5a\x52\x1f\x00\x00\x09alpha.png\xf4\x48");
//!
//! // Client: decode the reply.
//! let mut client = ResponseDecoder::new(ResponseLimits::default());
//! client.expect(Expect::List);
//! let (n, ev) = client.decode(&reply);
//! assert_eq!((n, ev), (5, Ok(Some(Event::ListStart { count: 1 }))));
//! let (m, ev) = client.decode(&reply[n..]);
//! let entry = Event::Entry { id: 0x84fe30f5845a521f, flags: 0, name: b"alpha.png", size: 9332 };
//! assert_eq!(ev, Ok(Some(entry)));
//! assert_eq!(n + m, reply.len());
//! assert_eq!(client.decode(&[]), (0, Ok(Some(Event::ResponseEnd))));
//! assert!(client.is_idle());
//! ```

/// ALPN protocol id JTP offers and asks for over TLS (jtp.md 3.9).
pub const ALPN: &[u8] = b"jtp/1";
/// JTP's default TCP port, used when an address names none.
pub const DEFAULT_PORT: u16 = 8443;

pub mod client;
pub mod request;
pub mod response;
pub mod server;
pub mod view;
pub mod wire;
pub mod zstd_frame;
