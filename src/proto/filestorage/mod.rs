//! filestorage (filestorage.md): pure codecs and machines, no I/O.

pub mod base64;
pub mod client;
pub mod frame;
pub mod ids;
pub mod json;
pub mod reason;
pub mod server;
pub mod store;
#[cfg(test)]
mod testdata;
pub mod token;

use std::time::Duration;

/// What one filestorage server bounds (spec 1.1), each field with its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Files per AUTHENTICATION: 1024 (more is `malformed`).
    pub max_batch_files: usize,
    /// Distinct tags per list: 32 (more is `bad-tag`).
    pub max_tags: usize,
    /// Missing ranges per AUTHENTICATION reply: 2048 (then `"more":true`).
    pub max_ranges: usize,
    /// Results per QUERY reply: 256 (fewer when LEN would pass 99,992).
    pub max_results: usize,
    /// Bytes per FETCH: 65,536 (more is `bad-range`).
    pub max_fetch: u64,
    /// Token length (8,192) and `exp`/`nbf` leeway (60 s).
    pub token: token::TokenLimits,
    /// Chunk size when the client names none: 1000.
    pub default_chunk_size: u32,
    /// TRANSFERs a client may leave unanswered: 32 (1..64). The machine also stops reading
    /// once this many writes wait for the driver, so a client past it is slowed, not buffered.
    pub window: u32,
    /// Consecutive Error replies before the connection is closed: 64 (an Ok resets the count).
    pub max_errors: u32,
    /// Replies a connection may owe at once (requests decoded ahead of their answers): 128.
    /// Decoding pauses past it, so memory stays bounded whatever the client pipelines.
    pub max_pending: usize,
    /// Silence between frames: 300 s.
    pub idle_timeout: Duration,
    /// A frame started and not finished: 30 s.
    pub io_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_batch_files: 1024,
            max_tags: store::names::MAX_TAGS,
            max_ranges: 2048,
            max_results: 256,
            max_fetch: 65_536,
            token: token::TokenLimits::default(),
            default_chunk_size: json::MIN_CHUNK_SIZE,
            window: 32,
            max_errors: 64,
            max_pending: 128,
            idle_timeout: Duration::from_secs(300),
            io_timeout: Duration::from_secs(30),
        }
    }
}
