//! Fuzz targets, as ordinary library code: one `pub fn <target>(data: &[u8])` per decoder and
//! per state machine. Each runs the code under test on the bytes and asserts its invariants,
//! panicking on a violation, so the same functions serve two callers:
//!
//! - `fuzz/fuzz_targets/<target>.rs` (cargo-fuzz, libFuzzer, nightly): a few lines calling the
//!   function here (`make fuzz`);
//! - `tests/fuzz_replay.rs` (stable, `make test`): every file of `fuzz/corpus/<target>/` and
//!   `fuzz/regressions/<target>/` replayed through the same function.
//!
//! What every target checks, beyond "no panic":
//!
//! - **split anywhere**: the input fed whole and fed in pieces (sizes drawn from the first
//!   input byte) gives the same events;
//! - **need more**: a proper prefix of the input gives a prefix of those events, never another
//!   error (the truncation is "incomplete", not "malformed");
//! - **bounded**: what a decoder holds, measured by [`CountingAlloc`] when installed, stays
//!   within a bound set by its limits, not by what the peer announces; what it asks for
//!   (`wanted`, `input_room`) likewise;
//! - **round trip** where an encoder exists: decode(encode(x)) == x;
//! - **machines**, driven by a fake driver whose decisions and clock steps come from the input:
//!   no block accepted outside the file, no completion with unverified bytes, no reply larger
//!   than the protocol allows, nothing after the end.
//!
//! Input conventions: `Script` reads parameters off the front of the input (reads past the
//! end give zeros), so every byte string is a valid input and the fuzzer steers both the
//! parameters and the payload. Machine targets read the whole input as a script of operations.
//!
//! Out of scope: sockets, files and clocks (the machines under test have none either).

mod alloc;
mod catalog;
mod cjp2p;
mod cjp2p_machines;
mod fastdp;
mod fastdp_machines;
mod filestorage;
mod filestorage_machines;
mod jtp;
mod jtp_client;
#[cfg(test)]
mod seeds;
mod tej;
mod tej_machines;
mod wire;

pub use alloc::{is_counting, CountingAlloc};
pub use catalog::catalog_index;
pub use cjp2p::cjp2p_datagram;
pub use cjp2p_machines::{cjp2p_download_machine, cjp2p_node_machine};
pub use fastdp::{
    fastdp_chunk_stream, fastdp_http_head, fastdp_jmsg, fastdp_v110_decoders, fastdp_zstd_chunk,
};
pub use fastdp_machines::{
    fastdp_pull_client_machine, fastdp_push_client_machine, fastdp_server_machine,
};
pub use filestorage::{filestorage_frame, filestorage_json, filestorage_token};
pub use filestorage_machines::{filestorage_client_machines, filestorage_server_machine};
pub use jtp::{jtp_request, jtp_response, jtp_server_machine};
pub use jtp_client::jtp_client_machine;
pub use tej::tej_frame;
pub use tej_machines::{tej_client_machines, tej_server_machine};
pub use wire::wire_frame;

/// A fuzz target: panics when an invariant breaks on `data`.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("jtp_request", jtp_request),
    ("jtp_response", jtp_response),
    ("jtp_server_machine", jtp_server_machine),
    ("tej_frame", tej_frame),
    ("wire_frame", wire_frame),
    ("cjp2p_datagram", cjp2p_datagram),
    ("fastdp_http_head", fastdp_http_head),
    ("fastdp_jmsg", fastdp_jmsg),
    ("fastdp_chunk_stream", fastdp_chunk_stream),
    ("fastdp_zstd_chunk", fastdp_zstd_chunk),
    ("fastdp_v110_decoders", fastdp_v110_decoders),
    ("fastdp_server_machine", fastdp_server_machine),
    ("fastdp_push_client_machine", fastdp_push_client_machine),
    ("fastdp_pull_client_machine", fastdp_pull_client_machine),
    ("filestorage_frame", filestorage_frame),
    ("filestorage_json", filestorage_json),
    ("filestorage_token", filestorage_token),
    ("filestorage_server_machine", filestorage_server_machine),
    ("filestorage_client_machines", filestorage_client_machines),
    ("jtp_client_machine", jtp_client_machine),
    ("tej_server_machine", tej_server_machine),
    ("tej_client_machines", tej_client_machines),
    ("cjp2p_node_machine", cjp2p_node_machine),
    ("cjp2p_download_machine", cjp2p_download_machine),
    ("catalog_index", catalog_index),
];

/// Most events a decoder may return in a row without consuming a byte: more means it spins.
const MAX_IDLE_EVENTS: usize = 1024;

/// Reads parameters and payload off the front of a fuzz input; past the end every read gives
/// zeros or an empty slice, so any input is valid.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Script<'a> {
    data: &'a [u8],
}

impl<'a> Script<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Script<'a> {
        Script { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub(crate) fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A big-endian integer of `n` bytes (at most 8; missing bytes read as zero).
    pub(crate) fn uint(&mut self, n: usize) -> u64 {
        let b = self.bytes(n.min(8));
        (0..n.min(8)).fold(0, |v, i| v << 8 | u64::from(b.get(i).copied().unwrap_or(0)))
    }

    pub(crate) fn u16(&mut self) -> u16 {
        self.uint(2) as u16
    }

    pub(crate) fn u32(&mut self) -> u32 {
        self.uint(4) as u32
    }

    pub(crate) fn u64(&mut self) -> u64 {
        self.uint(8)
    }

    /// A length byte, then up to that many bytes.
    pub(crate) fn chunk(&mut self) -> &'a [u8] {
        let n = self.u8();
        self.bytes(usize::from(n))
    }

    /// A `chunk` as text (invalid UTF-8 replaced).
    pub(crate) fn text(&mut self) -> String {
        String::from_utf8_lossy(self.chunk()).into_owned()
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// A small deterministic generator (xorshift64) for cut points derived from input bytes.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// The ends of the pieces `len` bytes are fed in: all at once for `seed` 0, else pieces of 1 to
/// `seed` bytes (byte by byte for 1). The last end is always `len`.
pub(crate) fn cuts(seed: u8, len: usize) -> Vec<usize> {
    if seed == 0 {
        return vec![len];
    }
    let mut rng = Rng::new(u64::from(seed) ^ len as u64);
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        at = (at + 1 + rng.below(usize::from(seed))).min(len);
        out.push(at);
    }
    out.push(len);
    out
}

/// A few proper prefixes of `len` bytes to check "need more" on (all of them for short inputs).
pub(crate) fn prefixes(seed: u8, len: usize) -> Vec<usize> {
    if len <= 24 {
        return (0..len).collect();
    }
    let mut rng = Rng::new(u64::from(seed).wrapping_add(7));
    let mut out: Vec<usize> = (0..12).map(|_| rng.below(len)).collect();
    out.push(len - 1);
    out
}

/// What a decoder said, owned, with consecutive data slices joined (so that the same stream
/// split differently compares equal).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Log {
    pub(crate) items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Event(String),
    Data(Vec<u8>),
    Error(String),
}

impl Log {
    pub(crate) fn event(&mut self, e: impl std::fmt::Debug) {
        self.items.push(Item::Event(format!("{e:?}")));
    }

    pub(crate) fn data(&mut self, bytes: &[u8]) {
        if let Some(Item::Data(d)) = self.items.last_mut() {
            d.extend_from_slice(bytes);
        } else {
            self.items.push(Item::Data(bytes.to_vec()));
        }
    }

    pub(crate) fn error(&mut self, e: impl std::fmt::Debug) {
        self.items.push(Item::Error(format!("{e:?}")));
    }

    pub(crate) fn has_error(&self) -> bool {
        matches!(self.items.last(), Some(Item::Error(_)))
    }

    /// True when `self`, from a truncation of the input `full` came from, says nothing `full`
    /// does not: its items are `full`'s first ones (the last data item possibly shorter), and
    /// an error in it is `full`'s error at the same place.
    pub(crate) fn is_prefix_of(&self, full: &Log) -> bool {
        let n = self.items.len();
        if n > full.items.len() {
            return false;
        }
        self.items
            .iter()
            .zip(&full.items)
            .enumerate()
            .all(|(i, (a, b))| match (a, b) {
                (Item::Data(a), Item::Data(b)) if i + 1 == n => b.starts_with(a),
                _ => a == b,
            })
    }
}

/// Asserts that `pieces` (the log of the input fed in pieces) equals `whole`, and that each
/// prefix log is a prefix of `whole`.
pub(crate) fn check_split(what: &str, whole: &Log, pieces: &Log) {
    assert_eq!(whole, pieces, "{what}: fed in pieces, the events differ");
}

pub(crate) fn check_prefix(what: &str, at: usize, part: &Log, whole: &Log) {
    assert!(
        part.is_prefix_of(whole),
        "{what}: the first {at} bytes say something the whole input does not:\n{part:?}\nvs\n{whole:?}"
    );
}

/// Counts events returned without progress, panicking when a decoder spins.
#[derive(Default)]
pub(crate) struct Spin(usize);

impl Spin {
    pub(crate) fn step(&mut self, what: &str, consumed: usize) {
        if consumed > 0 {
            self.0 = 0;
        } else {
            self.0 += 1;
            assert!(
                self.0 <= MAX_IDLE_EVENTS,
                "{what}: {MAX_IDLE_EVENTS} events without consuming a byte"
            );
        }
    }
}
