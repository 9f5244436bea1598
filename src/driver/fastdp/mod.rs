//! FastDP drivers (fastdp.md): the server service ([`server`]) and ferry's clients
//! ([`client`]: 1.2.0 push and pull, and the 1.1.0 sender of [`v110_send`]). They run the pure
//! machines of [`crate::proto::fastdp`] over sockets and files.
//!
//! - [`link`]: a connection's input buffer, deadline-bounded reads, and the [`link::Wake`] an
//!   idle connection of a transfer waits on beside its socket.
//! - [`receive`]: the data receiver's chunk sink (server push, client pull): decompress, write
//!   at chunk offsets in the shared transfer, CRC-32C, durable Acks.
//! - [`state`]: the server's `.state` and `.done` files, reload and retention.
//!
//! Out of scope: the protocol's byte rules and timers (the machines), listening (the server
//! core), the `.part` file (the ingest transfer registry).

pub mod client;
pub mod link;
pub mod receive;
pub mod server;
pub mod state;
pub mod v110_send;
