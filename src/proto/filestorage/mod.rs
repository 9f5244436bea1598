//! filestorage (filestorage.md): authenticated, resumable, tag-indexed uploads over libIPC
//! framing, as pure codecs, store logic and machines. No I/O: no sockets, files, threads or
//! clock reads; time comes in as arguments, so every decoder and machine here is a function of
//! bytes and time (and a fuzz target in a few lines).
//!
//! - [`frame`]: the current libIPC frame and the legacy C frame, nil-id replies.
//! - [`json`]: strict message JSON (no duplicate keys, depth 32, integers only where integers
//!   are due), the typed messages and byte-exact encoders.
//! - [`token`]: the HS256 check of spec 5 and minting.
//! - [`ids`]: strict UUID text, UUIDv5 chunk/store/catalog ids, the client's `fid`.
//! - [`base64`]: strict canonical base64 (standard for data, URL for JWT segments).
//! - [`reason`]: the error codes of section 8.
//! - [`store`]: names, tags, missing ranges, the AUTHENTICATION plan, quotas, the journal,
//!   `state.json` and records, the QUERY index and FETCH ranges, all without I/O.
//! - [`server`]: one server connection; [`client`]: `put`, `query` and `fetch`.
//!
//! Out of scope (the driver's): listeners, the tcpd preamble, TLS, the store's files and fsync,
//! locks, retention sweeps, publication into the catalog, the CLI.
//!
//! # Byte layout
//!
//! ```text
//! frame   := LEN BODY               LEN u32 big-endian = byte count of BODY, 3..=99,992
//! BODY    := UTYPE JSON             UTYPE u8: 1 AUTHENTICATION, 2 RESPONSE, 3 TRANSFER,
//!                                             4 QUERY, 5 FETCH
//! legacy  := T LEN UTYPE JSON       T u8 = 2 (or 1), LEN = JSON length 2..=99,991 (spec 2.3)
//!
//! 00 00 00 46 02 {"message-id":"1a2b3c4d-0000-4000-8000-000000000002","response":"Ok"}
//! └─ LEN 70 ─┘ └ RESPONSE, then 69 bytes of compact JSON, keys in the spec's order
//! ```
//!
//! Each client message gets exactly one RESPONSE, in order, echoing its `message-id`:
//! AUTHENTICATION names a batch (`fid`, files, tags) and gets the chunk ranges still `missing`;
//! each TRANSFER carries one chunk (`chunk = UUIDv5(fid, "<file>:<n>")`, base64 `data`) and is
//! answered Ok only once durable; the last one's Ok says `complete` and the store `id`.
//!
//! # The first exchange of spec 4.5, byte for byte
//!
//! ```
//! use ferry::proto::filestorage::{server, store::missing::MissingSet, token::JwtKey, Limits};
//! use std::{sync::Arc, time::Instant};
//!
//! let auth_json = concat!(
//!     r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","#,
//!     r#""token":"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJsb2dpbiI6ImthcmNobnUiLCJ1aWQiOjEwMDJ9"#,
//!     r#".GnkyHuzPedHnropirz_AgZxD7DCUjou1uaiRujhBpCo","#,
//!     r#""files":[{"name":"notes.txt","size":2500,"#,
//!     r#""sha256":"ed40853ee78d1ad8c3df77e385ac07c7e258ce34fdbb8c9b5b05a6326e79ec29"}],"#,
//!     r#""fid":"0b6e3c1e-2f4d-4a7b-8c9d-112233445566","tags":["work","2024"]}"#,
//! );
//! let mut request = vec![0x00, 0x00, 0x01, 0x75, 0x01];
//! request.extend_from_slice(auth_json.as_bytes());
//! assert_eq!(request.len(), 4 + 0x175);
//!
//! let key = JwtKey::from_file_bytes(b"secret-key\n").unwrap();
//! let config = Arc::new(server::ServerConfig { key, legacy_ipc: false, limits: Limits::default() });
//! let mut conn = server::Connection::new(config, Instant::now(), 1_750_000_000);
//! conn.handle_input(&request, Instant::now(), 1_750_000_000);
//!
//! // The machine checked shape and token; the store's part is the driver's answer.
//! let Some(server::Event::Authenticate { ticket, call }) = conn.poll_event() else { panic!() };
//! assert_eq!((call.uid, call.login.as_str(), call.chunk_size), (1002, "karchnu", 1000));
//! let missing = MissingSet::all(&call.chunk_counts());
//! conn.handle_answer(ticket, server::Answer::Auth(Ok(&missing))).unwrap();
//!
//! let mut reply = Vec::new();
//! conn.poll_transmit(&mut reply);
//! let mut expected = vec![0x00, 0x00, 0x00, 0x78, 0x02];
//! expected.extend_from_slice(concat!(
//!     r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","#,
//!     r#""missing":[[0,0,3]],"chunk-size":1000,"window":32}"#,
//! ).as_bytes());
//! assert_eq!(reply, expected);
//! assert_eq!(conn.active_fid().unwrap().to_string(), "0b6e3c1e-2f4d-4a7b-8c9d-112233445566");
//! ```

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
