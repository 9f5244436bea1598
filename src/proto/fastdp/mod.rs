//! FastDP 1.2.0 (fastdp.md): pure codecs and state machines, no I/O. Ferry's server speaks 1.2.0
//! push, 1.2.0 pull (ferry's extension) and 1.1.0 as `cli.py` sends it; ferry's clients speak
//! 1.2.0.
//!
//! - [`http`]: the HTTP/1.1 Upgrade handshake (request head parser, exact responses, client
//!   request and 101 parser).
//! - [`frame`]: JMSG (`u32 L` + JSON) and the chunk stream (`u32 number, u32 length`, FIN,
//!   control frames), with the chunk [`frame::Geometry`].
//! - [`messages`]: the JSON messages: header, reply, pull, Ack, Reconnect, Complete, Error and
//!   its codes, Have ranges, the 1.1.0 header.
//! - [`crc`]: CRC-32C of uncompressed chunks. [`zstd_chunk`]: one zstd frame per chunk, inflated
//!   into at most len(i) bytes. [`v110`]: the 1.1.0 reply lines and whole-file decoders.
//! - [`server`], [`client`]: the connection machines; [`connection`]: their shared events and
//!   the data receiver and data sender halves; [`plan`]: the data sender's transfer-wide queue;
//!   [`schedule`]: limits, idle/stall clock, Ack schedule, retry backoff.
//!
//! Out of scope: sockets, files, threads and clocks (time comes in as `Instant` arguments), the
//! transfer registry (`.part`, `.state`, durability), hashing the whole file, the catalog. The
//! driver does those and tells the machines the facts through method calls, because several
//! connections share one transfer.
//!
//! Byte layouts (integers unsigned big-endian):
//!
//! ```text
//! handshake  GET <path> HTTP/1.1\r\n Host Upgrade: fastdp Connection: Upgrade
//!            Sec-FastDP-Key: <key>\r\n Sec-FastDP-Version: 1.2.0\r\n\r\n          ≤ 8,192 bytes
//!            HTTP/1.1 101 Switching Protocols\r\n ... the key echoed ... \r\n\r\n
//! JMSG       | L u32 (1..=65,536) | L bytes of compact JSON |   header, reply, Ack, Complete, Error
//! chunk      | i u32 (< FullChunk) | n u32 | n payload bytes |  None: n = len(i); Zstd: 1..=bound(len(i))
//! FIN        | ff ff ff ff | 00 00 00 00 |
//! control    | ff ff ff fe | n u32 (1..=65,536) | Error JSON |   from the data sender, then close
//! ```
//!
//! A driver runs any of the machines the same way: write what `poll_transmit` gives; feed what it
//! reads to `handle_input` until all is consumed, writing each payload slice it hands back and
//! acting on each `poll_event` (the [`connection::Event`] docs name the method that answers
//! each); for a data sender, take chunks with `poll_send` and write `begin_chunk`'s header and
//! the payload straight from the file; call `handle_timeout` at `poll_timeout`; close once
//! `is_finished` and nothing is left to send.
//!
//! The push of `a.txt` = `AAAA` of fastdp.md 2.13, with exact bytes:
//!
//! ```
//! use std::time::Instant;
//! use ferry::proto::fastdp::client::{ClientConfig, PushClient};
//! use ferry::proto::fastdp::connection::Event;
//! use ferry::proto::fastdp::crc::crc32c;
//! use ferry::proto::fastdp::frame::{Compress, FIN};
//! use ferry::proto::fastdp::messages::{Checksum, Have, Header, TransferId};
//! use ferry::proto::fastdp::plan::{AckOutcome, SendPlan};
//! use ferry::proto::fastdp::schedule::Limits;
//! use ferry::proto::fastdp::server::{ServerConfig, ServerConnection};
//!
//! let now = Instant::now();
//! let sum = "sha256:63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201";
//! let checksum = Checksum::parse(sum).unwrap();
//! let tid = TransferId::parse("3d0f6c1a-5b7e-4e21-9a51-7f2c0e9b4d10").unwrap();
//! let header = Header::new(4096, 4, Compress::None, "a.txt", tid, checksum).unwrap();
//! let cfg = ClientConfig {
//!     host: "127.0.0.1:5423".into(),
//!     path: "/fastdp-endpoint".into(),
//!     key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
//!     limits: Limits::default(),
//! };
//! let mut client = PushClient::new(now, &cfg, header.clone());
//! let mut server = ServerConnection::new(now, ServerConfig::default());
//!
//! // C: the Upgrade request. S: the 101.
//! let req = client.poll_transmit().unwrap();
//! assert_eq!(req, &b"GET /fastdp-endpoint HTTP/1.1\r\nHost: 127.0.0.1:5423\r\nUpgrade: fastdp\r\n\
//!     Connection: Upgrade\r\nSec-FastDP-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
//!     Sec-FastDP-Version: 1.2.0\r\n\r\n"[..]);
//! assert_eq!(server.handle_input(now, &req).consumed, req.len());
//! let resp = server.poll_transmit().unwrap();
//! assert_eq!(resp, &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\n\
//!     Sec-FastDP-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-FastDP-Version: 1.2.0\r\n\r\n"[..]);
//! assert_eq!(client.poll_transmit(), None, "nothing before the 101 is read");
//! assert_eq!(client.handle_input(now, &resp), resp.len());
//!
//! // C: the header, 00 00 00 f2 and 242 bytes of JSON.
//! let hdr = client.poll_transmit().unwrap();
//! assert_eq!(&hdr[..4], &[0, 0, 0, 0xf2]);
//! assert_eq!(&hdr[4..], &br#"{"OneChunk":4096,"FullChunk":1,"FullSize":4,"DPVersion":"1.2.0","CompressType":"None","FileName":"a.txt","TransferId":"3d0f6c1a-5b7e-4e21-9a51-7f2c0e9b4d10","Checksum":"sha256:63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201"}"#[..]);
//! let mut pos = 0;
//! while pos < hdr.len() {
//!     pos += server.handle_input(now, &hdr[pos..]).consumed;
//! }
//! assert_eq!(server.poll_event(), Some(Event::PushHeader(header.clone())));
//!
//! // The driver finds a new transfer; S: the reply, 00 00 01 1f.
//! server.accept_push(now, Have::new(), 8);
//! let reply = server.poll_transmit().unwrap();
//! assert_eq!(&reply[..4], &[0, 0, 1, 0x1f]);
//! assert!(reply.ends_with(br#""Have":[],"MaxConnections":8}"#));
//! client.handle_input(now, &reply);
//! assert_eq!(client.poll_event(), Some(Event::PushAccepted { have: Have::new(), max_connections: 8 }));
//!
//! // C: chunk 0. The machine says which; the driver writes the 8 header bytes and the payload.
//! let mut plan = SendPlan::new(1, &Have::new());
//! let c = client.poll_send(now, &mut plan).unwrap();
//! assert_eq!((c.chunk, c.offset, c.len), (0, 0, 4));
//! let head = client.begin_chunk(0, 4);
//! plan.sent(0, crc32c(b"AAAA"));
//! let wire = [&head[..], b"AAAA"].concat();
//! assert_eq!(wire, [0, 0, 0, 0, 0, 0, 0, 4, 0x41, 0x41, 0x41, 0x41]);
//!
//! // S: the header is judged on its own 8 bytes, the payload comes back as a slice of the input.
//! assert_eq!(server.handle_input(now, &wire).consumed, 8);
//! assert_eq!(server.poll_event(), Some(Event::ChunkStart { chunk: 0, len: 4 }));
//! let r = server.handle_input(now, &wire[8..]);
//! assert_eq!(r.payload.unwrap().bytes, b"AAAA");
//! assert_eq!(r.payload.unwrap().bytes.as_ptr(), wire[8..].as_ptr());
//! assert_eq!(server.handle_input(now, &wire[12..]).consumed, 0);
//! assert_eq!(server.poll_event(), Some(Event::ChunkEnd { chunk: 0 }));
//! server.chunk_stored(now, 0, true); // every chunk held: acknowledged at once
//! assert_eq!(server.poll_event(), Some(Event::AckDue(vec![0])));
//! server.ack(&[(0, 50_687_219)]); // durable after the driver's sync
//! let ack = server.poll_transmit().unwrap();
//! assert_eq!(ack, &b"\0\0\0\x26{\"Type\":\"Ack\",\"Chunks\":[[0,50687219]]}"[..]);
//! client.handle_input(now, &ack);
//! assert_eq!(client.poll_event(), Some(Event::Acked(vec![(0, 50_687_219)])));
//! assert_eq!(plan.ack(0, 50_687_219), AckOutcome::Matched);
//!
//! // C: FIN. S: an empty Ack, the whole-file check, then Complete.
//! assert_eq!(client.poll_send(now, &mut plan), None);
//! assert_eq!(client.poll_transmit().unwrap(), FIN);
//! server.handle_input(now, &FIN);
//! assert_eq!(server.poll_event(), Some(Event::FinReceived(vec![])));
//! server.answer_fin(now, &[], true);
//! assert_eq!(server.poll_event(), Some(Event::Verify));
//! server.complete("a.txt", checksum);
//! let tail = server.poll_transmit().unwrap();
//! assert_eq!(&tail[..30], &b"\0\0\0\x1a{\"Type\":\"Ack\",\"Chunks\":[]}"[..]);
//! assert_eq!(&tail[30..34], &[0, 0, 0, 0x7b]);
//! assert_eq!(tail.len(), 30 + 4 + 0x7b);
//! assert!(server.is_finished());
//! let mut pos = 0;
//! while pos < tail.len() {
//!     pos += client.handle_input(now, &tail[pos..]);
//! }
//! assert_eq!(client.poll_event(), Some(Event::Acked(vec![])));
//! let done = Event::Complete { file_name: "a.txt".into(), checksum };
//! assert_eq!(client.poll_event(), Some(done));
//! assert!(client.is_finished());
//! ```

pub mod client;
pub mod connection;
pub mod crc;
pub mod frame;
pub mod http;
mod json;
pub mod messages;
pub mod plan;
pub mod schedule;
pub mod server;
pub mod v110;
pub mod zstd_chunk;

/// FastDP's default TCP port (cli.py's).
pub const DEFAULT_PORT: u16 = 5423;

#[cfg(test)]
mod pair_tests;
