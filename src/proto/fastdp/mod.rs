//! FastDP 1.2.0 (fastdp.md): pure codecs and state machines, no I/O.

pub mod crc;
pub mod frame;
pub mod http;
mod json;
pub mod messages;
pub mod zstd_chunk;
