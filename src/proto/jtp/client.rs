//! The JTP client connection as a pure state machine: which request goes out next, what the
//! answer means, and when the connection may carry another request.
//!
//! One [`Connection`] per socket. The driver queues work with [`Connection::push`] (LIST, a
//! GET_BY_ID chunk, BATCH, LIST_AND_GET, WATCH), writes whatever [`Connection::poll_transmit`]
//! hands out, feeds what it reads to [`Connection::handle_input`] and acts on the [`Event`]s.
//! Packet data never passes through the machine as a copy: [`Event::Data`] names a range of the
//! input the driver just offered, and the driver moves those bytes (borrowed) into its ingest
//! sink or inflater. Time comes in as arguments; the machine reads no clock, touches no socket
//! and no file. Framing checks (magics, counts against [`ResponseLimits`], packet flag bits,
//! `JTPD` ids a subsequence of the request) are the [`ResponseDecoder`]'s; this machine adds the
//! request sequencing, the per-request bookkeeping (which ids did not come), the local name and
//! size checks of each packet (jtp.md 5.2) and the reuse rules below.
//!
//! ```text
//!              poll_transmit: a request with bit 0 set (-k, or another queued behind it)
//!     ┌─────────── Open ◄──────────────────────────────────────────────┐
//!     │             │  │  its answer ends (Pipelined: up to `depth` in  │
//!     │             │  └─ flight; Sequential: one, and none before the ─┘
//!     │             │     quiet period after a GET_BY_ID answer ends)
//!     │             │ poll_transmit: the last request, bit 0 clear
//!     │             ▼
//!     │           Last ──its answer ends──► Closed (the server closes)
//!     │ poll_transmit: WATCH
//!     ▼
//!   Watching ──JTPW──► Watching ──cancel(): 03 00 out ... JTPC──► Open
//!
//!   JTPE at any frame boundary, a framing error, EOF inside a frame: Failed
//! ```
//!
//! ## Pipelining and the reference server's habit
//!
//! The reference server (jtp.md section 7, bug 3) checks for CANCEL after every packet of a
//! GET_BY_ID answer, the last one included: it reads one byte if one has arrived (within about
//! a millisecond) and silently drops it unless it is `03`. A request that is already on its way
//! then loses its first byte and the connection is desynchronised. So a connection runs under a
//! [`Policy`]:
//!
//! - [`Policy::Pipelined`]: the peer is *known* to follow jtp.md 3.3 and 3.5 (it never eats
//!   pipelined input). The driver knows this only when the TLS handshake selected ALPN `jtp/1`:
//!   ferry's server selects it, the reference configures no ALPN. Up to `depth` requests are in
//!   flight, so the server prepares the next answer while this side writes files.
//! - [`Policy::Sequential`] (every other peer, plain TCP included): one request at a time, and
//!   after a GET_BY_ID answer with packets the next request on the connection waits for a quiet
//!   period that outlasts the server's last check. The machine judges it from the answer
//!   itself: a server that waits `w` after each packet took at least `(M - 1) w` between the
//!   request and the end of an `M`-packet answer. An answer paced at [`WAITING_PACE`] or slower
//!   per packet while moving less than [`WAITING_RATE`] bytes per second comes from such a
//!   waiting server; after it, and after any one-packet answer (no pace to judge), the next
//!   request waits [`QUIET_AFTER_WAITING_SERVER`], which also covers a busy machine that runs
//!   the server's check late. Any other answer gets [`QUIET_PACE_FACTOR`] times its per-packet pace
//!   (at most [`MAX_QUIET`]): against ferry's own server that is tens of microseconds per
//!   image, so the pause costs little. LIST, BATCH and LIST_AND_GET answers need none (the
//!   reference checks only during GET_BY_ID).
//!
//! Out of scope: sockets, timeouts on reads and writes, files, hashing and decompression (the
//! driver and [`crate::ingest`]), and how a transfer is split over connections (the driver).
//!
//! A LIST on a keep-alive connection, with exact bytes:
//!
//! ```
//! use std::time::Instant;
//! use ferry::proto::jtp::client::{Connection, Event, Job, Policy};
//! use ferry::proto::jtp::response::{put_entry, put_list_header};
//!
//! let now = Instant::now();
//! let mut c = Connection::new(Policy::Sequential, true);
//! c.push(Job::List);
//! assert_eq!(c.poll_transmit(now), Some(&[0x01, 0x01][..]));
//! assert_eq!(c.poll_transmit(now), None);
//!
//! let mut reply = Vec::new();
//! put_list_header(1, &mut reply);
//! put_entry(0x84fe30f5845a521f, 0, "alpha.png", 9332, &mut reply);
//! let step = c.handle_input(&reply, now).unwrap();
//! assert_eq!(step.consumed, reply.len());
//! let Some(Event::Listing(listing)) = step.event else { panic!() };
//! assert_eq!(listing.entries()[0].name, "alpha.png");
//! assert!(c.is_reusable());
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::request::Request;
use super::response::{Event as Decoded, Expect, ResponseDecoder, ResponseError, ResponseLimits};
use super::wire::{FileType, FLAGS_TYPE, FLAG_ZSTD};
use crate::names;
use crate::wire::hex;

/// Most ids in one GET_BY_ID (its count is one byte).
pub const MAX_IDS_PER_GET: usize = 255;
/// Requests a [`Policy::Pipelined`] connection keeps in flight by default.
pub const PIPELINE_DEPTH: usize = 4;
/// The quiet period is this many times the per-packet pace of the last GET_BY_ID answer.
pub const QUIET_PACE_FACTOR: u32 = 4;
/// The quiet period after the answer of a server that waits between packets (and after a
/// one-packet answer, which shows no pace): long enough that the reference server's check,
/// about a millisecond after its last packet, has run even on a busy machine.
pub const QUIET_AFTER_WAITING_SERVER: Duration = Duration::from_millis(50);
/// The longest quiet period.
pub const MAX_QUIET: Duration = QUIET_AFTER_WAITING_SERVER;
/// An answer paced at least this slowly per packet...
pub const WAITING_PACE: Duration = Duration::from_micros(500);
/// ...while moving fewer bytes per second than this comes from a server that waits between
/// packets (the reference waits about 1 ms after each, whatever its size), not from one that is
/// busy sending large ones.
pub const WAITING_RATE: u64 = 100_000_000;
/// Entries preallocated at most for a LIST, whatever count the wire announces (jtp.md 5.2).
const MAX_PREALLOC_ENTRIES: usize = 4096;
/// Longest local name (bytes) before the fallback name is used.
const MAX_LOCAL_NAME: usize = 255;
/// The least an id missing from the LIST may make (its cap is otherwise the largest listed
/// size): room for an image added to a small catalog after the LIST, while a packet the LIST
/// gave no reason to expect can never put gigabytes on disk.
pub const MIN_UNLISTED_CAP: u32 = 16 << 20;

/// One catalog entry as listed by the server.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    #[serde(serialize_with = "ser_hex")]
    pub id: u64,
    /// The file type (flags bits 0-2).
    #[serde(rename = "type")]
    pub ftype: u8,
    /// As sent, decoded lossily (not yet a safe local name: see [`Listing::local_name`]).
    pub name: String,
    /// The original size.
    pub size: u32,
}

fn ser_hex<S: serde::Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode_u64(*id))
}

impl Listed {
    fn from_wire(id: u64, flags: u8, name: &[u8], size: u32) -> Listed {
        Listed {
            id,
            ftype: flags & FLAGS_TYPE,
            name: String::from_utf8_lossy(name).into_owned(),
            size,
        }
    }
}

/// A LIST answer: the entries in catalog order, and an index by id (the first entry wins when
/// a server lists an id twice).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    entries: Vec<Listed>,
    by_id: HashMap<u64, usize>,
    /// The largest size listed (0 for an empty listing).
    largest: u32,
}

impl Listing {
    pub fn new(entries: Vec<Listed>) -> Listing {
        let mut by_id = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            by_id.entry(e.id).or_insert(i);
        }
        let largest = entries.iter().map(|e| e.size).max().unwrap_or(0);
        Listing {
            entries,
            by_id,
            largest,
        }
    }

    /// Most bytes a packet for `id` may make: its listed size, or for an id this listing does
    /// not name (an image added after the LIST, or a hostile server's) the largest size it
    /// lists, but at least [`MIN_UNLISTED_CAP`].
    pub fn cap_for(&self, id: u64) -> u32 {
        self.get(id)
            .map_or(self.largest.max(MIN_UNLISTED_CAP), |l| l.size)
    }

    pub fn entries(&self) -> &[Listed] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<Listed> {
        self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: u64) -> Option<&Listed> {
        self.by_id.get(&id).map(|&i| &self.entries[i])
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// The ids in catalog order.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|e| e.id)
    }

    /// The safe local name for `id` received with packet flags `flags` (jtp.md 5.2 rule 2): the
    /// listed name reduced to a safe basename, with `.<ext>` appended when it has no dot; an id
    /// missing from the LIST, or a name that reduces to nothing, gets `output_<id>.<ext>`.
    pub fn local_name(&self, id: u64, flags: u8) -> String {
        let ext = FileType::from_bits(flags).ext();
        let fallback = || format!("output_{}.{ext}", hex::encode_u64(id));
        match self.get(id) {
            Some(l) => match names::sanitize_basename(&l.name, MAX_LOCAL_NAME) {
                Some(n) if n.contains('.') => n,
                Some(n) => format!("{n}.{ext}"),
                None => fallback(),
            },
            None => fallback(),
        }
    }
}

/// One request a connection is asked to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// LIST.
    List,
    /// GET_BY_ID of at most [`MAX_IDS_PER_GET`] ids (more is a caller bug: it panics).
    Get(Vec<u64>),
    /// BATCH with the ids the client already holds.
    Batch(Vec<u64>),
    /// LIST_AND_GET.
    ListAndGet,
    /// WATCH: events until [`Connection::cancel`].
    Watch,
}

/// How requests may share the connection (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The peer is known to follow jtp.md 3.3 and 3.5: up to `depth` requests in flight.
    Pipelined { depth: usize },
    /// Any other peer: one request at a time, a quiet period after each GET_BY_ID answer.
    Sequential,
}

/// A packet begins; `Data` events for its `len` bytes follow, then [`Event::PacketEnd`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketStart {
    pub id: u64,
    pub flags: u8,
    /// Bytes of data on the wire.
    pub len: u32,
    /// The original size as listed, when the id was in the LIST.
    pub listed_size: Option<u32>,
    /// Most bytes the packet may make ([`Listing::cap_for`]; without any LIST, the largest
    /// size the wire can list). Raw data longer than this, or a frame inflating past it, is
    /// corrupt: an id missing from the LIST never puts gigabytes on disk.
    pub cap: u32,
    /// Where to save it: a safe local name ([`Listing::local_name`]).
    pub name: String,
    /// Set when the packet is corrupt whatever its bytes: its data is to be read and dropped
    /// (the framing is intact, so the stream stays in step).
    pub defect: Option<Defect>,
}

impl PacketStart {
    /// The data is one zstd frame (flags bit 3).
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }

    /// Most bytes the data may stand for once decompressed ([`cap`](Self::cap)).
    pub fn max_size(&self) -> u64 {
        u64::from(self.cap)
    }

    /// The size of the file this packet makes, when known before its data arrives.
    pub fn expected_size(&self) -> Option<u64> {
        if self.is_compressed() {
            self.listed_size.map(u64::from)
        } else {
            Some(u64::from(self.len))
        }
    }
}

/// Why a packet is corrupt before any of its data is seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// A raw packet whose Length differs from the size the LIST gave for its id.
    LengthNotListedSize { len: u32, listed: u32 },
    /// A raw packet for an id the LIST did not name, longer than any image it listed.
    LargerThanListed { len: u32, largest: u32 },
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Defect::LengthNotListedSize { len, listed } => {
                write!(f, "length {len} differs from the listed size {listed}")
            }
            Defect::LargerThanListed { len, largest } => write!(
                f,
                "length {len} of an unlisted id is larger than any listed image ({largest})"
            ),
        }
    }
}

/// A packet response answered in full (or cut short by `JTPC`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    /// GET_BY_ID: the ids asked for that the server did not send, in request order.
    Get { missing: Vec<u64> },
    /// BATCH (the server alone knows what was missing).
    Batch,
    /// LIST_AND_GET: the listed ids that did not come (none without a listing).
    ListAndGet { missing: Vec<u64> },
}

/// What the driver must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A LIST was answered in full. The connection keeps it too, for the names and sizes of
    /// the packets that follow.
    Listing(Arc<Listing>),
    /// A packet response begins with this many packets (a bound for progress displays).
    Packets { count: u32 },
    /// A packet begins.
    Packet(PacketStart),
    /// This range of the input given to this call is data of the current packet.
    Data(Range<usize>),
    /// The current packet's last byte was delivered.
    PacketEnd,
    /// A packet response ended.
    Done(Done),
    /// `JTPC`: a CANCEL was acknowledged (a WATCH ends here).
    Cancelled,
    /// A `JTPW` event.
    Watch(Listed),
}

/// One call's outcome: how many input bytes were taken, and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input taken (whatever the event; data ranges lie within them).
    pub consumed: usize,
    /// `None`: every byte offered was taken and more input is needed.
    pub event: Option<Event>,
}

/// Why the connection cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The server broke the framing rules (jtp.md 5.2 rule 7).
    Protocol(ResponseError),
    /// The server answered with `JTPE` (and closes).
    Server { code: u8, message: String },
    /// The server closed while an answer was due (`inside_frame`: in the middle of one).
    Closed { inside_frame: bool },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(ResponseError::MaybeOlderServer) => {
                f.write_str("protocol: unexpected reply; the server may speak an older JTP")
            }
            Error::Protocol(e) => write!(f, "protocol: {e}"),
            Error::Server { code, message } => write!(f, "error {code}: {message}"),
            Error::Closed { inside_frame: true } => f.write_str("connection closed inside a frame"),
            Error::Closed {
                inside_frame: false,
            } => f.write_str("connection closed before the answer"),
        }
    }
}

impl std::error::Error for Error {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Requests may go out under the policy.
    Open,
    /// The last request sent had the keep-alive bit clear: nothing may follow it.
    Last,
    /// Subscribed to WATCH; `cancel_sent` once `03 00` went out.
    Watching { cancel_sent: bool },
    /// The server closes (its last answer is complete).
    Closed,
    /// `JTPE`, a framing error or EOF inside a frame.
    Failed,
}

/// A request sent whose answer is not complete.
#[derive(Debug)]
enum InFlight {
    List {
        entries: Vec<Listed>,
    },
    Get {
        ids: Vec<u64>,
        /// Index in `ids` after the last packet received (packets are a subsequence).
        next: usize,
        missing: Vec<u64>,
        packets: u32,
        /// Bytes of packet data announced.
        bytes: u64,
        sent_at: Instant,
    },
    Batch,
    ListAndGet {
        /// Listing indexes received (sized once a packet arrives with a listing known).
        seen: Vec<bool>,
    },
    Watch,
}

/// The client side of one JTP connection (see the module doc).
#[derive(Debug)]
pub struct Connection {
    decoder: ResponseDecoder,
    policy: Policy,
    keep_alive: bool,
    state: State,
    queue: VecDeque<Job>,
    in_flight: VecDeque<InFlight>,
    listing: Option<Arc<Listing>>,
    /// Inside a packet's data.
    in_packet: bool,
    /// Bytes of the answer at the front of `in_flight` have arrived.
    mid_answer: bool,
    /// No request before this instant (the quiet period after a GET_BY_ID answer).
    quiet_until: Option<Instant>,
    /// `03 00` is due (WATCH cancel).
    cancel_due: bool,
    transmit: Vec<u8>,
}

impl Connection {
    /// A fresh connection. `keep_alive`: every request sets bit 0 (`-k`); without it only a
    /// request with another one queued behind it does, so the last request closes.
    pub fn new(policy: Policy, keep_alive: bool) -> Connection {
        Connection::with_limits(policy, keep_alive, ResponseLimits::default())
    }

    pub fn with_limits(policy: Policy, keep_alive: bool, limits: ResponseLimits) -> Connection {
        Connection {
            decoder: ResponseDecoder::new(limits),
            policy,
            keep_alive,
            state: State::Open,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            listing: None,
            in_packet: false,
            mid_answer: false,
            quiet_until: None,
            cancel_due: false,
            transmit: Vec::new(),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Names and sizes for the packets that follow (from a LIST, possibly on another
    /// connection).
    pub fn set_listing(&mut self, listing: Arc<Listing>) {
        self.listing = Some(listing);
    }

    /// Queues a request; it goes out through [`poll_transmit`](Self::poll_transmit).
    ///
    /// # Panics
    /// A GET of more than [`MAX_IDS_PER_GET`] ids.
    pub fn push(&mut self, job: Job) {
        if let Job::Get(ids) = &job {
            assert!(
                ids.len() <= MAX_IDS_PER_GET,
                "GET_BY_ID carries at most 255 ids"
            );
        }
        self.queue.push_back(job);
    }

    /// Asks to end a WATCH: `03 00` goes out next; the answer is [`Event::Cancelled`].
    pub fn cancel(&mut self) {
        if let State::Watching { cancel_sent: false } = self.state {
            self.cancel_due = true;
        }
    }

    /// The next request to write whole, if one may go out at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<&[u8]> {
        self.transmit.clear();
        match self.state {
            State::Watching { cancel_sent: false } if self.cancel_due => {
                self.cancel_due = false;
                self.state = State::Watching { cancel_sent: true };
                Request::Cancel.encode(&mut self.transmit);
                return Some(&self.transmit);
            }
            State::Open => {}
            State::Watching { .. } | State::Last | State::Closed | State::Failed => return None,
        }
        if self.queue.is_empty() {
            return None;
        }
        let may_send = match self.policy {
            Policy::Pipelined { depth } => self.in_flight.len() < depth.max(1),
            Policy::Sequential => {
                self.in_flight.is_empty() && self.quiet_until.is_none_or(|t| now >= t)
            }
        };
        if !may_send {
            return None;
        }
        self.quiet_until = None;
        let job = self.queue.pop_front()?;
        let keep_alive = self.keep_alive || !self.queue.is_empty();
        let (request, expect, in_flight) = match job {
            Job::List => (
                Request::List { keep_alive },
                Expect::List,
                InFlight::List {
                    entries: Vec::new(),
                },
            ),
            Job::Get(ids) => (
                Request::GetById {
                    keep_alive,
                    ids: ids.clone(),
                },
                Expect::Get {
                    requested: ids.clone(),
                },
                InFlight::Get {
                    ids,
                    next: 0,
                    missing: Vec::new(),
                    packets: 0,
                    bytes: 0,
                    sent_at: now,
                },
            ),
            Job::Batch(have) => (
                Request::Batch { keep_alive, have },
                Expect::Batch,
                InFlight::Batch,
            ),
            Job::ListAndGet => (
                Request::ListAndGet { keep_alive },
                Expect::ListAndGet,
                InFlight::ListAndGet { seen: Vec::new() },
            ),
            Job::Watch => (Request::Watch, Expect::Watch, InFlight::Watch),
        };
        request.encode(&mut self.transmit);
        self.decoder.expect(expect);
        self.state = match in_flight {
            InFlight::Watch => State::Watching { cancel_sent: false },
            _ if keep_alive => State::Open,
            _ => State::Last,
        };
        self.in_flight.push_back(in_flight);
        Some(&self.transmit)
    }

    /// When a queued request is held back by the quiet period: the instant it may go out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Open if !self.queue.is_empty() && self.in_flight.is_empty() => self.quiet_until,
            _ => None,
        }
    }

    /// True when nothing is queued and no answer is outstanding.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_empty() && !self.cancel_due
    }

    /// True when an answer is outstanding (the driver must read).
    pub fn is_awaiting(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// True when the connection may carry another request: open, idle, at a frame boundary.
    pub fn is_reusable(&self) -> bool {
        self.state == State::Open && self.is_idle() && self.decoder.is_idle()
    }

    /// True once the connection can do nothing more (closed by the server, or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Closed | State::Failed)
    }

    /// Decodes from `input` until an event or until every byte is taken (see [`Step`]).
    /// `now` dates packet and answer ends (for the quiet period). After an error every further
    /// call fails.
    pub fn handle_input(&mut self, input: &[u8], now: Instant) -> Result<Step, Error> {
        let mut consumed = 0;
        loop {
            let (used, r) = self.decoder.decode(&input[consumed..]);
            let at = consumed;
            consumed += used;
            if used > 0 && !self.in_flight.is_empty() {
                self.mid_answer = true;
            }
            let ev = match r {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    return Ok(Step {
                        consumed,
                        event: None,
                    })
                }
                Err(e) => {
                    self.state = State::Failed;
                    return Err(Error::Protocol(e));
                }
            };
            let event = match ev {
                Decoded::ListStart { count } => {
                    if let Some(InFlight::List { entries }) = self.in_flight.front_mut() {
                        entries.reserve((count as usize).min(MAX_PREALLOC_ENTRIES));
                    }
                    None
                }
                Decoded::Entry {
                    id,
                    flags,
                    name,
                    size,
                } => {
                    if let Some(InFlight::List { entries }) = self.in_flight.front_mut() {
                        entries.push(Listed::from_wire(id, flags, name, size));
                    }
                    None
                }
                Decoded::PacketsStart { count, .. } => Some(Event::Packets { count }),
                Decoded::PacketHeader { flags, len, id } => {
                    self.in_packet = true;
                    Some(Event::Packet(self.packet_start(flags, len, id)))
                }
                Decoded::Data(d) => Some(Event::Data(at..at + d.len())),
                Decoded::PacketEnd => {
                    self.in_packet = false;
                    Some(Event::PacketEnd)
                }
                Decoded::ResponseEnd => self.response_end(now),
                Decoded::Cancelled => Some(self.cancelled()),
                Decoded::Watch {
                    id,
                    flags,
                    name,
                    size,
                } => Some(Event::Watch(Listed::from_wire(id, flags, name, size))),
                Decoded::ServerError { code, message } => {
                    self.state = State::Failed;
                    self.queue.clear();
                    self.in_flight.clear();
                    return Err(Error::Server { code, message });
                }
            };
            if let Some(event) = event {
                return Ok(Step {
                    consumed,
                    event: Some(event),
                });
            }
        }
    }

    /// The server closed its side. Clean when nothing was due; an error otherwise.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        let clean = self.decoder.is_idle() && self.in_flight.is_empty();
        if clean {
            self.state = match self.state {
                State::Failed => State::Failed,
                _ => State::Closed,
            };
            return Ok(());
        }
        self.state = State::Failed;
        Err(Error::Closed {
            inside_frame: self.mid_answer,
        })
    }

    fn packet_start(&mut self, flags: u8, len: u32, id: u64) -> PacketStart {
        let listing = self.listing.as_deref();
        let listed_size = listing.and_then(|l| l.get(id)).map(|l| l.size);
        match self.in_flight.front_mut() {
            Some(InFlight::Get {
                ids,
                next,
                missing,
                packets,
                bytes,
                ..
            }) => {
                // The decoder has checked that `id` comes later in the request.
                let skip = ids[*next..].iter().position(|&r| r == id).unwrap_or(0);
                missing.extend_from_slice(&ids[*next..*next + skip]);
                *next = (*next + skip + 1).min(ids.len());
                *packets += 1;
                *bytes += u64::from(len);
            }
            Some(InFlight::ListAndGet { seen }) => {
                if let Some(l) = listing {
                    // The listing may have arrived after the request went out (pipelined).
                    seen.resize(l.len(), false);
                    if let Some(i) = l.index_of(id) {
                        seen[i] = true;
                    }
                }
            }
            _ => {}
        }
        let compressed = flags & FLAG_ZSTD != 0;
        let cap = listing.map_or(u32::MAX, |l| l.cap_for(id));
        let defect = match listed_size {
            Some(listed) if !compressed && listed != len => {
                Some(Defect::LengthNotListedSize { len, listed })
            }
            None if !compressed && len > cap => {
                Some(Defect::LargerThanListed { len, largest: cap })
            }
            _ => None,
        };
        let name = match listing {
            Some(l) => l.local_name(id, flags),
            None => Listing::default().local_name(id, flags),
        };
        PacketStart {
            id,
            flags,
            len,
            listed_size,
            cap,
            name,
            defect,
        }
    }

    fn response_end(&mut self, now: Instant) -> Option<Event> {
        self.mid_answer = false;
        let done = self.in_flight.pop_front()?;
        if self.in_flight.is_empty() && self.state == State::Last {
            self.state = State::Closed;
        }
        Some(match done {
            InFlight::List { entries } => {
                let listing = Arc::new(Listing::new(entries));
                self.listing = Some(listing.clone());
                Event::Listing(listing)
            }
            InFlight::Get {
                ids,
                next,
                mut missing,
                packets,
                bytes,
                sent_at,
            } => {
                missing.extend_from_slice(&ids[next.min(ids.len())..]);
                if self.policy == Policy::Sequential {
                    self.quiet_until =
                        quiet_period(packets, bytes, now.saturating_duration_since(sent_at))
                            .map(|q| now + q);
                }
                Event::Done(Done::Get { missing })
            }
            InFlight::Batch => Event::Done(Done::Batch),
            InFlight::ListAndGet { seen } => Event::Done(Done::ListAndGet {
                missing: self.unseen(&seen),
            }),
            // The decoder never ends a WATCH with ResponseEnd; keep it subscribed.
            InFlight::Watch => {
                self.in_flight.push_front(InFlight::Watch);
                return None;
            }
        })
    }

    fn unseen(&self, seen: &[bool]) -> Vec<u64> {
        match &self.listing {
            Some(l) => l
                .entries()
                .iter()
                .enumerate()
                .filter(|(i, _)| !seen.get(*i).copied().unwrap_or(false))
                .map(|(_, e)| e.id)
                .collect(),
            None => Vec::new(),
        }
    }

    /// `JTPC`: ends a WATCH, or cuts the answer in progress short (what did not come is not
    /// reported: the caller asked for the cut).
    fn cancelled(&mut self) -> Event {
        self.in_packet = false;
        self.mid_answer = false;
        if let State::Watching { .. } = self.state {
            self.state = State::Open;
            self.cancel_due = false;
        }
        match self.in_flight.front() {
            Some(InFlight::List { .. }) | None => {}
            Some(_) => {
                self.in_flight.pop_front();
                if self.in_flight.is_empty() && self.state == State::Last {
                    self.state = State::Closed;
                }
            }
        }
        Event::Cancelled
    }
}

/// The pause after an `M`-packet GET_BY_ID answer of `bytes` bytes that took `took` from the
/// request to its last byte, from a peer not known to be safe (module doc).
fn quiet_period(packets: u32, bytes: u64, took: Duration) -> Option<Duration> {
    match packets {
        0 => None,
        1 => Some(QUIET_AFTER_WAITING_SERVER),
        m => {
            let pace = took / (m - 1);
            let rate = (bytes as f64 / took.as_secs_f64().max(1e-9)) as u64;
            if pace >= WAITING_PACE && rate < WAITING_RATE {
                return Some(QUIET_AFTER_WAITING_SERVER);
            }
            Some(pace.saturating_mul(QUIET_PACE_FACTOR).min(MAX_QUIET))
        }
    }
}

/// Splits `ids` into at most `workers` contiguous ranges of near-equal length, in order.
pub fn split_ranges(ids: &[u64], workers: usize) -> Vec<&[u64]> {
    if ids.is_empty() {
        return Vec::new();
    }
    let workers = workers.clamp(1, ids.len());
    let per = ids.len().div_ceil(workers);
    ids.chunks(per).collect()
}

#[cfg(test)]
mod tests;
