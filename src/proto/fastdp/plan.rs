//! The data sender's transfer-wide state (fastdp.md 2.7-2.10): which chunks are still to send,
//! which are in flight with which CRC, which are acknowledged. One [`SendPlan`] serves every
//! connection of a transfer (the driver keeps it behind a lock); each connection machine takes
//! chunks from it with `poll_send` and reports Acks back to it.
//!
//! Memory stays fixed as FullSize grows: one bit per chunk, plus the chunks in flight.
//!
//! ```text
//!             next()                ack(crc matches)
//!   Missing ─────────► InFlight ─────────────────────► Done
//!      ▲                  │ ack(crc differs) / release (connection ended, never acknowledged)
//!      └──────────────────┘
//! ```

use std::collections::{HashMap, VecDeque};

use super::messages::Have;

/// What an acknowledgement meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// The CRC matches what was sent: the chunk is done.
    Matched,
    /// The CRC differs: the chunk is queued again, to be re-sent on any connection (F14).
    Mismatch { sent: u32, acked: u32 },
    /// Already done (a duplicate Ack): ignored, a good chunk is never replaced.
    AlreadyDone,
    /// Not in flight and not done (no CRC to compare with): ignored.
    NotSent,
    /// A chunk number past the end: the peer is broken.
    OutOfRange,
}

/// See the module doc.
#[derive(Debug)]
pub struct SendPlan {
    full_chunk: u32,
    done: Vec<u64>,
    done_count: u32,
    /// Chunks handed out and not yet acknowledged, with the CRC sent (once known).
    in_flight: HashMap<u32, Option<u32>>,
    /// Chunks below `cursor` are done, in flight, or queued in `retry`.
    cursor: u32,
    retry: VecDeque<u32>,
}

impl SendPlan {
    /// A plan for `full_chunk` chunks of which `have` are already held by the receiver.
    pub fn new(full_chunk: u32, have: &Have) -> SendPlan {
        let mut p = SendPlan {
            full_chunk,
            done: vec![0; (full_chunk as usize).div_ceil(64)],
            done_count: 0,
            in_flight: HashMap::new(),
            cursor: 0,
            retry: VecDeque::new(),
        };
        p.merge_have(have);
        p
    }

    pub fn is_done(&self, chunk: u32) -> bool {
        chunk < self.full_chunk && self.done[chunk as usize / 64] & (1 << (chunk % 64)) != 0
    }

    fn set_done(&mut self, chunk: u32) {
        if !self.is_done(chunk) {
            self.done[chunk as usize / 64] |= 1 << (chunk % 64);
            self.done_count += 1;
        }
    }

    /// Marks chunks a later reply header reports held (a connection joining later, a resume).
    /// Chunks in flight keep waiting for their Ack, whose CRC is then still compared.
    pub fn merge_have(&mut self, have: &Have) {
        for &(a, b) in have.ranges() {
            for c in a..b.min(self.full_chunk) {
                if !self.in_flight.contains_key(&c) {
                    self.set_done(c);
                }
            }
        }
    }

    /// Marks chunks done that the receiver says it holds durably, in flight or not: a pull
    /// client's `Have` on a later connection (section 3). Unlike [`merge_have`](Self::merge_have)
    /// there is no CRC to wait for: the receiver's word is final for what it holds.
    pub fn mark_held(&mut self, have: &Have) {
        for &(a, b) in have.ranges() {
            for c in a..b.min(self.full_chunk) {
                self.in_flight.remove(&c);
                self.set_done(c);
            }
        }
    }

    /// Every chunk acknowledged with a matching CRC (or held before): time for the final FIN.
    pub fn is_complete(&self) -> bool {
        self.done_count == self.full_chunk
    }

    /// Chunks done.
    pub fn done_count(&self) -> u32 {
        self.done_count
    }

    /// Chunks handed out and not yet acknowledged.
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }

    /// True when some chunk is waiting to be sent (not done, not in flight).
    pub fn has_unsent(&mut self) -> bool {
        self.skip_to_candidate().is_some()
    }

    /// The retry queue's head or the cursor, without taking it.
    fn skip_to_candidate(&mut self) -> Option<u32> {
        while let Some(&c) = self.retry.front() {
            if self.is_done(c) || self.in_flight.contains_key(&c) {
                self.retry.pop_front();
            } else {
                return Some(c);
            }
        }
        while self.cursor < self.full_chunk && self.is_done(self.cursor) {
            self.cursor += 1;
        }
        (self.cursor < self.full_chunk).then_some(self.cursor)
    }

    /// The next chunk to send, now in flight (re-sends first, then in ascending order).
    pub fn take_next(&mut self) -> Option<u32> {
        let c = self.skip_to_candidate()?;
        if self.retry.front() == Some(&c) {
            self.retry.pop_front();
        } else {
            self.cursor += 1;
        }
        self.in_flight.insert(c, None);
        Some(c)
    }

    /// Records the CRC-32C of the uncompressed chunk just sent.
    pub fn sent(&mut self, chunk: u32, crc: u32) {
        if let Some(slot) = self.in_flight.get_mut(&chunk) {
            *slot = Some(crc);
        }
    }

    /// Applies one Ack entry.
    pub fn ack(&mut self, chunk: u32, crc: u32) -> AckOutcome {
        if chunk >= self.full_chunk {
            return AckOutcome::OutOfRange;
        }
        if self.is_done(chunk) {
            return AckOutcome::AlreadyDone;
        }
        match self.in_flight.get(&chunk).copied() {
            Some(Some(sent)) if sent == crc => {
                self.in_flight.remove(&chunk);
                self.set_done(chunk);
                AckOutcome::Matched
            }
            Some(Some(sent)) => {
                self.in_flight.remove(&chunk);
                self.retry.push_back(chunk);
                AckOutcome::Mismatch { sent, acked: crc }
            }
            Some(None) | None => AckOutcome::NotSent,
        }
    }

    /// A connection ended: its chunks never acknowledged count as missing again (2.10).
    pub fn release(&mut self, chunks: &[u32]) {
        for &c in chunks {
            if self.in_flight.remove(&c).is_some() && !self.is_done(c) {
                self.retry.push_back(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_missing_chunks_in_order_and_completes_on_matching_acks() {
        let mut p = SendPlan::new(5, &Have::normalised(vec![(1, 2), (3, 4)]));
        assert_eq!(p.done_count(), 2);
        let mut got = Vec::new();
        while let Some(c) = p.take_next() {
            p.sent(c, c * 10);
            got.push(c);
        }
        assert_eq!(got, [0, 2, 4]);
        assert!(!p.has_unsent());
        assert_eq!(p.ack(0, 0), AckOutcome::Matched);
        assert_eq!(p.ack(0, 0), AckOutcome::AlreadyDone);
        assert_eq!(p.ack(2, 20), AckOutcome::Matched);
        assert!(!p.is_complete());
        assert_eq!(p.ack(4, 40), AckOutcome::Matched);
        assert!(p.is_complete());
        assert_eq!(p.ack(5, 0), AckOutcome::OutOfRange);
    }

    #[test]
    fn f14_a_wrong_crc_requeues_the_chunk_and_a_good_one_is_never_resent() {
        let mut p = SendPlan::new(3, &Have::new());
        for _ in 0..3 {
            let c = p.take_next().unwrap();
            p.sent(c, 100 + c);
        }
        assert_eq!(
            p.ack(1, 7),
            AckOutcome::Mismatch {
                sent: 101,
                acked: 7
            }
        );
        assert_eq!(p.ack(0, 100), AckOutcome::Matched);
        assert!(p.has_unsent());
        assert_eq!(p.take_next(), Some(1), "re-sent");
        p.sent(1, 101);
        assert_eq!(p.take_next(), None);
        assert_eq!(p.ack(1, 101), AckOutcome::Matched);
        assert_eq!(p.ack(2, 102), AckOutcome::Matched);
        assert!(p.is_complete());
        assert_eq!(
            p.ack(1, 9),
            AckOutcome::AlreadyDone,
            "a good chunk stays good"
        );
        // A chunk queued for a re-send that the receiver then reports held is not sent.
        let mut q = SendPlan::new(3, &Have::new());
        for _ in 0..3 {
            let c = q.take_next().unwrap();
            q.sent(c, 100 + c);
        }
        assert!(matches!(q.ack(1, 7), AckOutcome::Mismatch { .. }));
        q.merge_have(&Have::from_chunks([1]));
        assert!(!q.has_unsent());
        assert_eq!(q.take_next(), None);
    }

    #[test]
    fn released_chunks_are_sent_again_and_have_merges() {
        let mut p = SendPlan::new(4, &Have::new());
        let a = p.take_next().unwrap();
        let b = p.take_next().unwrap();
        p.sent(a, 1);
        p.sent(b, 2);
        assert_eq!(p.in_flight_count(), 2);
        assert_eq!(p.ack(a, 1), AckOutcome::Matched);
        assert_eq!(p.in_flight_count(), 1);
        p.release(&[a, b]);
        assert_eq!(p.in_flight_count(), 0);
        assert_eq!(p.take_next(), Some(b));
        assert_eq!(p.ack(3, 0), AckOutcome::NotSent);
        // A later reply says 2 and 3 are held; b is in flight and keeps waiting for its Ack.
        p.merge_have(&Have::all(4));
        assert!(!p.is_complete());
        assert_eq!(p.take_next(), None);
        p.sent(b, 2);
        assert_eq!(p.ack(b, 2), AckOutcome::Matched);
        assert!(p.is_complete());
        let empty = SendPlan::new(0, &Have::new());
        assert!(empty.is_complete());
        // Releasing chunks that were never sent queues nothing: each is sent once, in order.
        let mut fresh = SendPlan::new(4, &Have::new());
        fresh.release(&[3, 1]);
        let order: Vec<u32> = std::iter::from_fn(|| fresh.take_next()).collect();
        assert_eq!(order, [0, 1, 2, 3]);
    }

    #[test]
    fn a_pull_clients_have_marks_chunks_done_even_while_in_flight() {
        let mut p = SendPlan::new(4, &Have::new());
        let a = p.take_next().unwrap();
        p.sent(a, 1);
        p.mark_held(&Have::normalised(vec![(0, 2)]));
        assert_eq!(p.in_flight_count(), 0);
        assert_eq!(p.done_count(), 2);
        p.release(&[a]);
        assert_eq!(
            p.take_next(),
            Some(2),
            "a released chunk the client holds is not re-sent"
        );
        assert_eq!(p.ack(a, 1), AckOutcome::AlreadyDone);
    }

    #[test]
    fn memory_is_a_bitmap_for_many_chunks() {
        let mut p = SendPlan::new(4_000_000, &Have::all(3_999_999));
        assert_eq!(p.done.len(), 62_500);
        assert_eq!(p.take_next(), Some(3_999_999));
        assert_eq!(p.take_next(), None);
        // 64 chunks fill one word: chunk 64 is past it, and not done.
        let whole = SendPlan::new(64, &Have::all(64));
        assert!(whole.is_complete() && whole.is_done(63) && !whole.is_done(64));
        assert!(!whole.is_done(u32::MAX));
    }
}
