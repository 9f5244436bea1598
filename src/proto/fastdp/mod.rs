//! FastDP 1.2.0 (fastdp.md): pure codecs and state machines, no I/O.

pub mod client;
pub mod connection;
pub mod crc;
pub mod frame;
pub mod http;
mod json;
pub mod messages;
#[cfg(test)]
mod pair_tests;
pub mod plan;
pub mod schedule;
pub mod server;
pub mod v110;
pub mod zstd_chunk;
