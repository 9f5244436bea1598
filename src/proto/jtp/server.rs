//! The JTP server connection as a pure state machine: bytes in, requests and decisions out.
//!
//! ```text
//!            (first header)            (response sent)
//!  AwaitFirst ───────────► Responding ────────────────┬─ keep-alive bit clear / JTPE ─► Closed
//!      │                     ▲    │ 03 00 mid-stream: │
//!      │                     │    └── JTPC, stop ─────┤
//!      │     (next header)   │                        └─ keep-alive bit set ─► AwaitNext
//!      └──── CANCEL first: JTPE 2 ─► Closed              AwaitNext ──(header)──► Responding
//!                                                         AwaitNext ──04 00──► Watching
//!                                      Watching ──03 00──► JTPC ─► AwaitNext
//!                                      Watching ──other byte──► JTPE 2 ─► Closed
//! ```
//!
//! The machine owns the connection's unread input (bounded by `max_buffered_input`: past it the
//! driver stops reading and TCP pushes back) and decides what every request means under the
//! CANCEL and WATCH rules of jtp.md 3.5 and 3.6. What to stream and from where is the driver's
//! job; the machine never touches a socket, a file or a clock. Which timeout applies is told by
//! [`Connection::phase`].
//!
//! A BATCH's have-set is held whole until its response starts (up to `max_have` ids, 8 MB at
//! 1,000,000). With a [`MemoryBudget`] ([`Connection::with_have_budget`]) the machine charges
//! it to the server before the first id reaches the decoder: a BATCH whose ids the budget
//! cannot cover gets JTPE 3 `server busy` and a close, so a thousand connections cannot hold a
//! thousand have-sets. The driver gives the bytes back ([`Connection::have_released`]) as soon
//! as it has picked the missing images.

use super::request::{
    Decoded, Request, RequestDecoder, RequestLimits, FLAG_KEEP_ALIVE, TYPE_BATCH,
};
use super::wire::get_varint;
use crate::proto::budget::{Grant, MemoryBudget};
use crate::wire::Cursor;

/// Reply texts ferry adds to the reference's (jtp.md 2.9).
pub const MSG_CANCEL_FIRST: &str = "CANCEL requires an active keep-alive connection";
pub const MSG_WATCH_DISABLED: &str = "WATCH not enabled; start server with --watch";
pub const MSG_ONLY_CANCEL: &str = "only CANCEL is allowed during WATCH";
pub const MSG_TIMED_OUT: &str = "request timed out";
pub const MSG_BUSY: &str = "server busy";
pub const MSG_RATE_LIMITED: &str = "too many requests";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitFirst,
    AwaitNext,
    Responding,
    Watching,
    Closed,
}

/// Which deadline the driver applies while it waits for input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing received yet: the first-request timeout.
    First,
    /// Between requests on a keep-alive connection: the keep-alive timeout.
    Idle,
    /// Part of a request received: per-read I/O timeout and the body deadline.
    Body,
    /// A response is being sent; input is only peeked at for CANCEL.
    Responding,
    /// Subscribed to WATCH: silence is normal.
    Watching,
    Closed,
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Answer this request, then call [`Connection::response_done`].
    Request(Request),
    /// Write `JTPC`; the connection stays open.
    Cancelled,
    /// Start sending `JTPW` events for ids entering the catalog from now on.
    StartWatch,
    /// Write this error frame, then close.
    Fail { code: u8, message: &'static str },
}

/// What arrived while subscribed to WATCH.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchInput {
    /// Nothing decisive yet (no input, or a lone `03`).
    None,
    /// `03 00`: write `JTPC` and return to serving requests.
    Cancel,
    /// Anything else: JTPE 2 `only CANCEL is allowed during WATCH`, close.
    Violation,
}

pub struct Connection {
    state: State,
    input: Vec<u8>,
    max_input: usize,
    decoder: RequestDecoder,
    limits: RequestLimits,
    requests: u64,
    watch_enabled: bool,
    peer_eof: bool,
    /// The server's budget for have-sets, and this connection's share of it.
    have_budget: Option<MemoryBudget>,
    have_grant: Option<Grant>,
}

/// What the have-set budget says about the input waiting to be decoded.
enum HaveCheck {
    /// Decode on (not a BATCH, already charged, or malformed: the decoder refuses it).
    Go,
    /// A BATCH whose count is not complete yet.
    Wait,
    /// The budget cannot cover it.
    Refuse,
}

/// Bytes the decoder may hold for a BATCH of `n` ids: its id vector grows by doubling.
pub fn have_set_bytes(n: u32) -> u64 {
    match n {
        0 => 0,
        n => u64::from(n).next_power_of_two().saturating_mul(8),
    }
}

impl Connection {
    pub fn new(limits: RequestLimits, max_input: usize, watch_enabled: bool) -> Connection {
        Connection {
            state: State::AwaitFirst,
            input: Vec::new(),
            max_input,
            decoder: RequestDecoder::new(limits),
            limits,
            requests: 0,
            watch_enabled,
            peer_eof: false,
            have_budget: None,
            have_grant: None,
        }
    }

    /// Charges every BATCH have-set to `budget`, shared by the server's connections (module
    /// doc).
    pub fn with_have_budget(mut self, budget: MemoryBudget) -> Connection {
        self.have_budget = Some(budget);
        self
    }

    /// The driver no longer holds the have-set of the BATCH it is answering.
    pub fn have_released(&mut self) {
        self.have_grant = None;
    }

    /// Before the ids of a BATCH reach the decoder: its count (complete, valid, within
    /// `max_have`) is charged to the budget at once.
    fn check_have(&mut self) -> HaveCheck {
        let Some(budget) = &self.have_budget else {
            return HaveCheck::Go;
        };
        if self.have_grant.is_some() || self.decoder.is_mid_request() {
            return HaveCheck::Go;
        }
        match self.input.as_slice() {
            [TYPE_BATCH] => HaveCheck::Wait,
            [TYPE_BATCH, flags, count @ ..] if flags & !FLAG_KEEP_ALIVE == 0 => {
                match get_varint(&mut Cursor::new(count)) {
                    Ok(None) => HaveCheck::Wait,
                    Ok(Some(n)) if n <= self.limits.max_have => {
                        match budget.try_grant(have_set_bytes(n)) {
                            Some(g) => {
                                self.have_grant = Some(g);
                                HaveCheck::Go
                            }
                            None => HaveCheck::Refuse,
                        }
                    }
                    // Malformed or over max_have: the decoder refuses it in its own words.
                    _ => HaveCheck::Go,
                }
            }
            _ => HaveCheck::Go,
        }
    }

    /// Bytes the driver may read and feed now.
    pub fn input_room(&self) -> usize {
        self.max_input.saturating_sub(self.input.len())
    }

    /// Feeds bytes read from the peer (at most [`input_room`](Self::input_room) of them).
    pub fn handle_input(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
    }

    /// The peer closed its sending side. Buffered requests are still served.
    pub fn handle_eof(&mut self) {
        self.peer_eof = true;
    }

    pub fn has_peer_eof(&self) -> bool {
        self.peer_eof
    }

    /// Requests received so far (CANCEL included).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            State::AwaitFirst if self.decoder.is_mid_request() => Phase::Body,
            State::AwaitNext if self.decoder.is_mid_request() => Phase::Body,
            State::AwaitFirst => Phase::First,
            State::AwaitNext => Phase::Idle,
            State::Responding => Phase::Responding,
            State::Watching => Phase::Watching,
            State::Closed => Phase::Closed,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.state == State::Closed
    }

    /// Closes the machine (timeouts, transport errors, shutdown).
    pub fn close(&mut self) {
        self.state = State::Closed;
    }

    /// Decodes the next request from buffered input, if one is complete.
    pub fn poll_event(&mut self) -> Option<Event> {
        if !matches!(self.state, State::AwaitFirst | State::AwaitNext) {
            return None;
        }
        match self.check_have() {
            HaveCheck::Go => {}
            HaveCheck::Wait => return None,
            HaveCheck::Refuse => {
                self.state = State::Closed;
                return Some(Event::Fail {
                    code: 3,
                    message: MSG_BUSY,
                });
            }
        }
        let (used, result) = self.decoder.decode(&self.input);
        self.input.drain(..used);
        let req = match result {
            Ok(Decoded::Partial) => return None,
            Ok(Decoded::Request(r)) => r,
            Err(e) => {
                self.state = State::Closed;
                return Some(Event::Fail {
                    code: e.code(),
                    message: e.message(),
                });
            }
        };
        let first = self.requests == 0;
        self.requests += 1;
        match req {
            Request::Cancel if first => {
                self.state = State::Closed;
                Some(Event::Fail {
                    code: 2,
                    message: MSG_CANCEL_FIRST,
                })
            }
            Request::Cancel => {
                self.state = State::AwaitNext;
                Some(Event::Cancelled)
            }
            Request::Watch if !self.watch_enabled => {
                self.state = State::Closed;
                Some(Event::Fail {
                    code: 4,
                    message: MSG_WATCH_DISABLED,
                })
            }
            Request::Watch => {
                self.state = State::Watching;
                Some(Event::StartWatch)
            }
            other => {
                self.state = State::Responding;
                Some(Event::Request(other))
            }
        }
    }

    /// Called before each packet of a streamed response: true when the unread input begins
    /// with CANCEL (`03 00` or `03 01`), whose two bytes are then consumed. Anything else stays
    /// for later, untouched.
    pub fn poll_cancel(&mut self) -> bool {
        if self.state == State::Responding && is_cancel(&self.input) {
            self.input.drain(..2);
            return true;
        }
        false
    }

    /// The response to the current request is complete (or was cancelled); `keep_alive` is the
    /// request's own bit 0.
    pub fn response_done(&mut self, keep_alive: bool) {
        self.have_grant = None;
        if self.state == State::Responding {
            self.state = if keep_alive {
                State::AwaitNext
            } else {
                State::Closed
            };
        }
    }

    /// Judges input received while subscribed to WATCH.
    pub fn poll_watch_input(&mut self) -> WatchInput {
        if self.state != State::Watching || self.input.is_empty() {
            return WatchInput::None;
        }
        if is_cancel(&self.input) {
            self.input.drain(..2);
            self.state = State::AwaitNext;
            return WatchInput::Cancel;
        }
        if self.input == [3] {
            return WatchInput::None;
        }
        self.state = State::Closed;
        WatchInput::Violation
    }
}

fn is_cancel(input: &[u8]) -> bool {
    input.len() >= 2 && input[0] == 3 && input[1] <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(watch: bool) -> Connection {
        Connection::new(
            RequestLimits {
                max_have: 1_000_000,
            },
            64 * 1024,
            watch,
        )
    }

    #[test]
    fn j16_pipelined_lists_then_close() {
        let mut c = conn(false);
        c.handle_input(&[1, 1, 1, 0]);
        assert_eq!(
            c.poll_event(),
            Some(Event::Request(Request::List { keep_alive: true }))
        );
        assert_eq!(c.poll_event(), None, "nothing new while responding");
        c.response_done(true);
        assert_eq!(
            c.poll_event(),
            Some(Event::Request(Request::List { keep_alive: false }))
        );
        c.response_done(false);
        assert!(c.is_finished());
    }

    #[test]
    fn j21_cancel_first_is_refused() {
        let mut c = conn(false);
        c.handle_input(&[3, 0]);
        assert_eq!(
            c.poll_event(),
            Some(Event::Fail {
                code: 2,
                message: MSG_CANCEL_FIRST
            })
        );
        assert!(c.is_finished());
        // `03 01` first is refused too (reference bug 5).
        let mut c = conn(false);
        c.handle_input(&[3, 1]);
        assert!(matches!(c.poll_event(), Some(Event::Fail { code: 2, .. })));
    }

    #[test]
    fn j20_j25_cancel_after_keep_alive_request_gets_jtpc() {
        let mut c = conn(false);
        c.handle_input(&[1, 1]);
        assert!(matches!(c.poll_event(), Some(Event::Request(_))));
        c.response_done(true);
        c.handle_input(&[3, 0, 3, 1, 1, 0]);
        assert_eq!(c.poll_event(), Some(Event::Cancelled));
        assert_eq!(c.poll_event(), Some(Event::Cancelled));
        assert_eq!(
            c.poll_event(),
            Some(Event::Request(Request::List { keep_alive: false }))
        );
    }

    #[test]
    fn j23_j24_cancel_mid_stream_leaves_other_input() {
        let mut c = conn(false);
        c.handle_input(&[5, 1]);
        assert!(matches!(c.poll_event(), Some(Event::Request(_))));
        // A pipelined LIST is not a CANCEL and stays.
        c.handle_input(&[1, 1]);
        assert!(!c.poll_cancel());
        c.response_done(true);
        assert_eq!(
            c.poll_event(),
            Some(Event::Request(Request::List { keep_alive: true }))
        );
        // A lone 03 whose second byte is in flight is left untouched.
        c.handle_input(&[3]);
        assert!(!c.poll_cancel());
        c.handle_input(&[0, 1, 0]);
        assert!(c.poll_cancel());
        c.response_done(true);
        assert_eq!(
            c.poll_event(),
            Some(Event::Request(Request::List { keep_alive: false }))
        );
    }

    #[test]
    fn j26_watch_without_rescans() {
        let mut c = conn(false);
        c.handle_input(&[1, 1]);
        c.poll_event();
        c.response_done(true);
        c.handle_input(&[4, 0]);
        assert_eq!(
            c.poll_event(),
            Some(Event::Fail {
                code: 4,
                message: MSG_WATCH_DISABLED
            })
        );
    }

    #[test]
    fn j22_j29_watch_then_cancel_or_violation() {
        let mut c = conn(true);
        c.handle_input(&[4, 1]);
        assert_eq!(c.poll_event(), Some(Event::StartWatch));
        assert_eq!(c.phase(), Phase::Watching);
        c.handle_input(&[3]);
        assert_eq!(c.poll_watch_input(), WatchInput::None);
        c.handle_input(&[0]);
        assert_eq!(c.poll_watch_input(), WatchInput::Cancel);
        assert_eq!(c.phase(), Phase::Idle);
        c.handle_input(&[4, 0]);
        assert_eq!(c.poll_event(), Some(Event::StartWatch));
        c.handle_input(&[1, 0]);
        assert_eq!(c.poll_watch_input(), WatchInput::Violation);
        assert!(c.is_finished());
    }

    #[test]
    fn j4_j5_errors_close() {
        for input in [[1u8, 2], [0, 0xff], [0xff, 2]] {
            let mut c = conn(false);
            c.handle_input(&input);
            assert!(matches!(c.poll_event(), Some(Event::Fail { code: 2, .. })));
            assert!(c.is_finished());
        }
        let mut c = conn(false);
        c.handle_input(&[0xfe, 0]);
        assert!(matches!(c.poll_event(), Some(Event::Fail { code: 4, .. })));
    }

    /// First request, part of one, the response, between requests, and part of the next
    /// (mutation sample E: a partial second request reported as `Idle` stayed green, so it
    /// would have waited for the keep-alive timeout instead of the body deadline).
    #[test]
    fn phases_follow_the_request() {
        let mut c = conn(false);
        assert_eq!(c.phase(), Phase::First);
        // Not finished until it is (sample F: `is_finished` returning true stayed green).
        assert!(!c.is_finished());
        c.handle_input(&[1]);
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.phase(), Phase::Body);
        c.handle_input(&[1]);
        assert_eq!(
            c.poll_event(),
            Some(Event::Request(Request::List { keep_alive: true }))
        );
        assert_eq!(c.phase(), Phase::Responding);
        c.response_done(true);
        assert_eq!(c.phase(), Phase::Idle);
        c.handle_input(&[0, 0, 5]);
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.phase(), Phase::Body);
    }

    /// A BATCH of `n` ids with keep-alive, ids 0..n.
    fn batch(n: u32) -> Vec<u8> {
        let mut out = Vec::new();
        Request::Batch {
            keep_alive: true,
            have: (0..u64::from(n)).collect(),
        }
        .encode(&mut out);
        out
    }

    #[test]
    fn a_batch_have_set_is_charged_to_the_server_before_its_ids_are_read() {
        let budget = MemoryBudget::new(have_set_bytes(1000) + have_set_bytes(10));
        let mut a = conn(false).with_have_budget(budget.clone());
        // The count comes in pieces: nothing is charged (or decoded) until it is whole.
        let req = batch(1000);
        a.handle_input(&req[..1]);
        assert_eq!(a.poll_event(), None);
        a.handle_input(&req[1..3]);
        assert_eq!(a.poll_event(), None);
        assert_eq!(budget.in_use(), 0);
        a.handle_input(&req[3..4]);
        assert_eq!(a.poll_event(), None);
        assert_eq!(
            budget.in_use(),
            have_set_bytes(1000),
            "charged at the count"
        );
        a.handle_input(&req[4..]);
        assert!(matches!(
            a.poll_event(),
            Some(Event::Request(Request::Batch { .. }))
        ));
        // Another connection's BATCH that does not fit: JTPE 3 server busy, close, no id read.
        let mut b = conn(false).with_have_budget(budget.clone());
        b.handle_input(&batch(1000));
        assert_eq!(
            b.poll_event(),
            Some(Event::Fail {
                code: 3,
                message: MSG_BUSY
            })
        );
        assert!(b.is_finished());
        // A small one still fits beside it.
        let mut c = conn(false).with_have_budget(budget.clone());
        c.handle_input(&batch(10));
        assert!(matches!(c.poll_event(), Some(Event::Request(_))));
        c.response_done(true);
        assert_eq!(budget.in_use(), have_set_bytes(1000));
        // The driver gives the bytes back once it picked the missing images.
        a.have_released();
        assert_eq!(budget.in_use(), 0);
        drop(c);
    }

    #[test]
    fn malformed_or_oversized_batch_counts_are_the_decoders_to_refuse() {
        let budget = MemoryBudget::new(1);
        // Over max_have (`02 00 c1843d`): JTPE 2, not busy.
        let mut c = conn(false).with_have_budget(budget.clone());
        c.handle_input(&[0x02, 0x00, 0xc1, 0x84, 0x3d]);
        assert!(matches!(c.poll_event(), Some(Event::Fail { code: 2, .. })));
        // Non-minimal varint (`02 00 8000`) and reserved flags: the decoder's errors.
        let mut c = conn(false).with_have_budget(budget.clone());
        c.handle_input(&[0x02, 0x00, 0x80, 0x00]);
        assert!(matches!(c.poll_event(), Some(Event::Fail { code: 2, .. })));
        let mut c = conn(false).with_have_budget(budget.clone());
        c.handle_input(&[0x02, 0x02, 0x00]);
        assert!(matches!(c.poll_event(), Some(Event::Fail { code: 2, .. })));
        // Other requests never touch the budget.
        let mut c = conn(false).with_have_budget(budget.clone());
        c.handle_input(&[0x01, 0x00]);
        assert!(matches!(c.poll_event(), Some(Event::Request(_))));
        assert_eq!(budget.in_use(), 0);
        assert_eq!(have_set_bytes(1_000_000), 8 << 20);
        assert_eq!((have_set_bytes(0), have_set_bytes(1)), (0, 8));
    }

    /// Only a BATCH's count is charged: the rest of another request whose bytes happen to look
    /// like a BATCH header (a GET_BY_ID's id `02 00 05 ...`) is read on, not charged (whole
    /// run, proto-jtp server part: the mid-request check's `||` as `&&` refused it as busy).
    #[test]
    fn only_a_batch_count_is_charged_not_bytes_that_look_like_one() {
        let budget = MemoryBudget::new(8);
        let mut c = conn(false).with_have_budget(budget.clone());
        let mut req = Vec::new();
        Request::GetById {
            keep_alive: true,
            ids: vec![0x0200_0500_0000_0000],
        }
        .encode(&mut req);
        c.handle_input(&req[..3]);
        assert_eq!(c.poll_event(), None);
        c.handle_input(&req[3..]);
        assert!(matches!(
            c.poll_event(),
            Some(Event::Request(Request::GetById { .. }))
        ));
        assert_eq!(budget.in_use(), 0);
    }

    /// Reserved flags make a BATCH malformed whatever its count: JTPE 2, never "busy" for a
    /// count over the budget (whole run, proto-jtp server part: the flags guard as `true`
    /// charged the count first and answered code 3).
    #[test]
    fn a_batch_with_reserved_flags_is_malformed_not_busy() {
        let budget = MemoryBudget::new(8);
        let mut c = conn(false).with_have_budget(budget.clone());
        c.handle_input(&[0x02, 0x02, 0x05]);
        assert!(matches!(c.poll_event(), Some(Event::Fail { code: 2, .. })));
        assert_eq!(budget.in_use(), 0);
    }

    /// The driver reads what fits the input buffer; the peer's EOF is kept; requests are
    /// counted, CANCEL included (whole run, proto-jtp server part: `input_room`, `handle_eof`,
    /// `has_peer_eof` and `requests` replaced by constants stayed green).
    #[test]
    fn input_room_eof_and_the_request_count() {
        let mut c = conn(false);
        assert_eq!(c.input_room(), 64 * 1024);
        c.handle_input(&[1]);
        assert_eq!(c.input_room(), 64 * 1024 - 1);
        c.handle_input(&[1]);
        assert_eq!(c.input_room(), 64 * 1024 - 2);
        assert!(matches!(c.poll_event(), Some(Event::Request(_))));
        assert_eq!(c.requests(), 1);
        c.response_done(true);
        c.handle_input(&[3, 0]);
        assert_eq!(c.poll_event(), Some(Event::Cancelled));
        assert_eq!(c.requests(), 2);
        assert!(!c.has_peer_eof());
        c.handle_eof();
        assert!(c.has_peer_eof());
    }

    /// Watch input is judged only while watching, and no input is no violation (whole run,
    /// proto-jtp server part: the guard's `||` as `&&` closed a quiet watcher and judged a
    /// pipelined request as watch input); a closed machine decodes nothing more (`close` as
    /// a no-op stayed green).
    #[test]
    fn watch_input_is_judged_only_while_watching_and_close_stops_decoding() {
        let mut c = conn(true);
        c.handle_input(&[4, 1]);
        assert_eq!(c.poll_event(), Some(Event::StartWatch));
        assert_eq!(c.poll_watch_input(), WatchInput::None);
        assert!(!c.is_finished(), "a quiet watcher stays");
        let mut c = conn(true);
        c.handle_input(&[1, 1]);
        assert_eq!(c.poll_watch_input(), WatchInput::None);
        assert_eq!(
            c.poll_event(),
            Some(Event::Request(Request::List { keep_alive: true }))
        );
        let mut c = conn(false);
        c.handle_input(&[1, 1]);
        c.close();
        assert!(c.is_finished());
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn a_closed_connection_gives_its_have_set_back() {
        let budget = MemoryBudget::new(1 << 20);
        let mut c = conn(false).with_have_budget(budget.clone());
        let req = batch(100);
        c.handle_input(&req[..10]);
        assert_eq!(c.poll_event(), None);
        assert_eq!(budget.in_use(), have_set_bytes(100));
        drop(c);
        assert_eq!(budget.in_use(), 0);
    }
}
