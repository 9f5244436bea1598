//! CJP2P (cjp2p.md): a UDP protocol in which every datagram is one JSON array of single-key
//! messages. This module holds the pure parts: the datagram codec ([`wire`]), ferry's
//! anti-spoofing cookie ([`cookie`]) and the node state machine ([`node`]: peer table,
//! verification, serving, discovery). Sockets, files, threads and clocks are the driver's job;
//! time comes in as `Instant` arguments. The downloader lives in `download`.
//!
//! Datagram shape (section 2); ferry puts the echo first and its offer after it:
//!
//! ```text
//! [ {"AlwaysReturned":{"cookie":"<peer's cookie>"}},          echo of the peer's offer
//!   {"PleaseAlwaysReturnThisMessage":{"cookie":"<8 hex>"}},   ferry's offer (until confirmed)
//!   {"PleaseSendContent":{"id":"<64 hex>","length":4096,"offset":0}},  requests / answers
//!   {"FerryHello":{"version":1,"max_length":40960}} ]         with every offer
//! ```
//!
//! One exchange with exact bytes: a request and the two-byte file it asks for.
//!
//! ```
//! use ferry::proto::cjp2p::wire::{parse_datagram, parse_id, DatagramBuilder, Message};
//!
//! let id = parse_id("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").unwrap();
//! let mut b = DatagramBuilder::new(1472);
//! assert!(b.try_push(&Message::PleaseSendContent { id, offset: 0, length: 4096 }));
//! assert_eq!(
//!     b.finish(),
//!     br#"[{"PleaseSendContent":{"id":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","length":4096,"offset":0}}]"#
//! );
//! let reply = br#"[{"Content":{"id":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","offset":0,"base64":"aGk=","eof":2}}]"#;
//! let dg = parse_datagram(reply).unwrap();
//! assert_eq!(dg.messages, vec![Message::Content { id, offset: 0, data: b"hi".to_vec(), eof: Some(2) }]);
//! ```

/// Default UDP port (cjp2p.md 1.4).
pub const DEFAULT_PORT: u16 = 24254;

pub mod cookie;
pub mod download;
pub mod node;
#[cfg(test)]
mod swarm;
#[cfg(test)]
mod testpeer;
pub mod wire;
