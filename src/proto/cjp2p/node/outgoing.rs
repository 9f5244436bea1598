//! Ferry's own datagrams (cjp2p.md 4.5, 6.1): requests for content, peers and lists, each
//! sent with the echo of the peer's offer first and, until the address is confirmed, ferry's offer
//! and `FerryHello` last. Requests toward ferry peers are batched up to `control_max`; toward
//! other peers each goes alone in its datagram, as the reference expects.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Node, MAX_CONTENT_LEN, MAX_IDS_REMEMBERED};
use crate::proto::cjp2p::wire::{cookie_payload, DatagramBuilder, Message};
use crate::transport::canonical_addr;

impl Node {
    /// Queue `PleaseSendContent` to `to` for `id`: one per datagram toward peers not known to be
    /// ferry, batched up to `control_max` toward ferry peers (flushed by `poll_transmit`).
    pub fn request_content(
        &mut self,
        now: Instant,
        to: SocketAddr,
        id: &[u8; 32],
        offset: u64,
        length: u32,
    ) {
        let to = canonical_addr(to);
        if self.is_forbidden(to) {
            return;
        }
        let a = self.asked_mut(now, to);
        match a.content.iter_mut().find(|(i, _)| i == id) {
            Some(e) => e.1 = now,
            None => {
                if a.content.len() >= MAX_IDS_REMEMBERED {
                    a.content.remove(0);
                }
                a.content.push((*id, now));
            }
        }
        let msg = Message::PleaseSendContent {
            id: *id,
            offset,
            length: u64::from(length),
        };
        if self.ferry_max_length(to).is_none() {
            self.send_own(to, &[msg]);
            return;
        }
        let limit = self.control_max(to);
        let len = msg.encoded_len() + 1;
        let pos = self.batches.iter().position(|(a, _, _)| *a == to);
        if let Some(i) = pos {
            let (overhead, _) = self.own_overhead(to);
            if overhead + self.batches[i].2 + len > limit {
                let (addr, msgs, _) = self.batches.remove(i);
                self.send_own(addr, &msgs);
                self.batches.push((to, vec![msg], len));
            } else {
                self.batches[i].1.push(msg);
                self.batches[i].2 += len;
            }
        } else {
            self.batches.push((to, vec![msg], len));
        }
    }

    /// Send `PleaseSendPeers` to `to`; its `Peers` answer is accepted for 10 s.
    pub fn request_peers(&mut self, now: Instant, to: SocketAddr) {
        let to = canonical_addr(to);
        if self.is_forbidden(to) {
            return;
        }
        self.asked_mut(now, to).peers = Some(now);
        self.send_own(to, &[Message::PleaseSendPeers]);
    }

    /// Send `PleaseListContent` to `to`; its `ContentList` answer is accepted for 10 s.
    pub fn request_list(&mut self, now: Instant, to: SocketAddr) {
        let to = canonical_addr(to);
        if self.is_forbidden(to) {
            return;
        }
        self.asked_mut(now, to).list = Some(now);
        self.send_own(to, &[Message::PleaseListContent]);
    }

    pub(super) fn offer_message(&self, to: SocketAddr) -> Message {
        Message::PleaseAlwaysReturnThisMessage(cookie_payload(&self.jar.cookie(to.ip())))
    }

    pub(super) fn hello_message() -> Message {
        Message::FerryHello {
            version: 1,
            max_length: MAX_CONTENT_LEN,
        }
    }

    /// Bytes the header elements of an own datagram to `to` take, and whether it has the offer.
    pub(super) fn own_overhead(&self, to: SocketAddr) -> (usize, bool) {
        let mut n = 2;
        if let Some(o) = self.stored_offer(to) {
            n += Message::AlwaysReturned(o.clone()).encoded_len() + 1;
        }
        let attach = !self.is_confirmed(to);
        if attach {
            n += self.offer_message(to).encoded_len() + 1;
            if self.cfg.serve {
                n += Self::hello_message().encoded_len() + 1;
            }
        }
        (n, attach)
    }

    /// One datagram of ferry's own: echo, offer (until confirmed), `msgs`, `FerryHello`.
    pub(super) fn send_own(&mut self, to: SocketAddr, msgs: &[Message]) {
        let mut b = DatagramBuilder::new(self.control_max(to));
        if let Some(o) = self.stored_offer(to) {
            b.try_push(&Message::AlwaysReturned(o.clone()));
        }
        let attach = !self.is_confirmed(to);
        if attach {
            b.try_push(&self.offer_message(to));
        }
        for m in msgs {
            if !b.try_push(m) {
                self.stats.answers_dropped += 1;
            }
        }
        if attach && self.cfg.serve {
            b.try_push(&Self::hello_message());
        }
        self.emit(to, b.finish());
    }

    pub(super) fn emit(&mut self, to: SocketAddr, d: Vec<u8>) {
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += d.len() as u64;
        self.out.push_back((to, d));
    }

    pub(super) fn flush_batches(&mut self) {
        for (to, msgs, _) in std::mem::take(&mut self.batches) {
            self.send_own(to, &msgs);
        }
    }
}
