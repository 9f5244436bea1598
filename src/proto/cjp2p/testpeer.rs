//! A test peer that behaves like the reference node (kermit4/cjp2p-rust) as far as ferry can
//! meet it on the wire: its cookie rules and teasers (cjp2p.md 4.4) and the habits issue 13
//! observed in a real swarm:
//!
//! - it asks for and answers content in blocks of at most 4096 bytes, 4096-aligned;
//! - it records every address that requests content as a holder and passes those addresses on
//!   in `MaybeTheyHaveSome` (when asked for an id it lacks), long-dead ephemeral ports included;
//! - a restarted node has forgotten every cookie ([`RefPeer::restart`]): its replies to an old
//!   cookie fail ferry's check, and it answers ferry as unverified;
//! - it re-requests offset 0 of a 0-byte file at once after each answer, without end
//!   ([`RefPeer::leech`] of the empty id);
//! - it adds four hard-coded public bootstrap peers ([`BOOTSTRAP`]) to every peer list it sends.
//!
//! (It may also add a hard link to a file it shares, changing the file's ctime; that is the
//! catalog's business and is tested there.) Pure: datagrams in, datagrams out.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

use super::download::EMPTY_ID;
use super::wire::{cookie_of, cookie_payload, parse_datagram, DatagramBuilder, Id, Message};

/// The public peers the reference adds to every `Peers` list (documentation addresses here).
pub const BOOTSTRAP: [&str; 4] = [
    "198.51.100.10:24254",
    "198.51.100.11:24254",
    "203.0.113.12:24254",
    "[2001:db8::13]:24254",
];

/// The reference's largest block, asked and answered.
pub const REF_BLOCK: u64 = 4096;

/// A reference-like node.
#[derive(Debug)]
pub struct RefPeer {
    pub addr: SocketAddr,
    secret: u64,
    /// Offers stored from verified datagrams, by address: echoed in everything it sends there.
    offers: HashMap<SocketAddr, String>,
    /// Its own offer to ferry, for its downloader (ferry's cookie, once it learnt it).
    files: HashMap<Id, Vec<u8>>,
    /// Every address that asked for an id (the reference records requesters as holders).
    pub holders: HashMap<Id, Vec<SocketAddr>>,
    /// Peers it knows (beside the bootstrap ones).
    pub peers: Vec<SocketAddr>,
    /// While leeching: (id, source); re-requests offset 0 of an empty file at once.
    leeching: Option<(Id, SocketAddr)>,
    /// Requests it sent while leeching.
    pub requests_sent: u64,
    /// `Content` answers it received.
    pub contents_received: u64,
}

fn msgs(d: &[u8]) -> Vec<Message> {
    parse_datagram(d).map(|dg| dg.messages).unwrap_or_default()
}

impl RefPeer {
    pub fn new(addr: SocketAddr, secret: u64) -> RefPeer {
        RefPeer {
            addr,
            secret,
            offers: HashMap::new(),
            files: HashMap::new(),
            holders: HashMap::new(),
            peers: Vec::new(),
            leeching: None,
            requests_sent: 0,
            contents_received: 0,
        }
    }

    /// Serve `data` under `id`.
    pub fn share(&mut self, id: Id, data: Vec<u8>) {
        self.files.insert(id, data);
    }

    /// Its cookie for an IP: 8 lowercase hex, keyed by IP.
    pub fn cookie(&self, ip: IpAddr) -> String {
        crate::wire::hex::short(&Sha256::digest(format!("{}{ip}", self.secret)))
    }

    /// A restart: a new secret, every stored offer forgotten; files and holders kept (they are
    /// on its disk).
    pub fn restart(&mut self) {
        self.secret = self
            .secret
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1);
        self.offers.clear();
    }

    /// Whether it holds ferry's offer for `to` (it verified ferry there).
    pub fn knows_offer_of(&self, to: SocketAddr) -> bool {
        self.offers.contains_key(&to)
    }

    /// The reply (if any) to one datagram from `from`.
    pub fn handle(&mut self, from: SocketAddr, d: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        let m = msgs(d);
        let verified = m
            .iter()
            .find_map(|m| match m {
                Message::AlwaysReturned(r) => {
                    Some(cookie_of(r).map(|c| c == self.cookie(from.ip())))
                }
                _ => None,
            })
            .flatten()
            == Some(true);
        let offer = m.iter().find_map(|m| match m {
            Message::PleaseAlwaysReturnThisMessage(r) if cookie_of(r).is_some() => Some(r.clone()),
            _ => None,
        });
        if let (true, Some(o)) = (verified, &offer) {
            self.offers.insert(from, o.clone());
        }
        let mut out = DatagramBuilder::new(65507);
        let mut again = None;
        let mut answered = false;
        for msg in &m {
            match msg {
                Message::PleaseSendContent { id, offset, length } => {
                    answered = true;
                    let holders = self.holders.entry(*id).or_default();
                    if !holders.contains(&from) {
                        holders.push(from);
                    }
                    match self.files.get(id) {
                        Some(data) => {
                            let eof = data.len() as u64;
                            let cap = if verified { REF_BLOCK } else { 32 };
                            let n = (*length).min(cap).min(eof.saturating_sub(*offset));
                            let start = (*offset).min(eof) as usize;
                            out.push_content(
                                id,
                                *offset,
                                &data[start..start + n as usize],
                                Some(eof),
                            );
                        }
                        None => {
                            let max = if verified { 48 } else { 3 };
                            let list: Vec<SocketAddr> = self.holders[id]
                                .iter()
                                .filter(|a| **a != from)
                                .take(max)
                                .copied()
                                .collect();
                            if !list.is_empty() {
                                out.try_push(&Message::MaybeTheyHaveSome {
                                    id: *id,
                                    peers: list,
                                });
                            }
                        }
                    }
                }
                Message::PleaseSendPeers => {
                    answered = true;
                    let mut list: Vec<SocketAddr> =
                        self.peers.iter().filter(|a| **a != from).copied().collect();
                    list.extend(
                        BOOTSTRAP
                            .iter()
                            .map(|a| a.parse::<SocketAddr>().expect("addr")),
                    );
                    if !verified {
                        list.truncate(1);
                    }
                    out.try_push(&Message::Peers(list));
                }
                Message::PleaseReturnThisMessage(raw) if cookie_of(raw).is_some() => {
                    answered = true;
                    out.try_push(&Message::ReturnedMessage(raw.clone()));
                }
                Message::Content {
                    id, offset, eof, ..
                } => {
                    self.contents_received += 1;
                    // Its downloader ignores eof = 0 and asks offset 0 again at once.
                    if self.leeching == Some((*id, from)) && *id == EMPTY_ID && *eof == Some(0) {
                        again = Some(*offset);
                    }
                }
                _ => {}
            }
        }
        let mut replies = Vec::new();
        if answered {
            if verified {
                if let Some(o) = self.offers.get(&from) {
                    out.try_push(&Message::AlwaysReturned(o.clone()));
                }
            } else {
                out.try_push(&Message::PleaseAlwaysReturnThisMessage(cookie_payload(
                    &self.cookie(from.ip()),
                )));
                if let Some(o) = offer {
                    out.try_push(&Message::AlwaysReturned(o));
                }
            }
            replies.push((from, out.finish()));
        }
        if let (Some(_), Some((id, to))) = (again, self.leeching) {
            replies.push((to, self.request(to, id, 0)));
        }
        replies
    }

    /// Start leeching `id` from `from` (offset 0 first, as the reference does).
    pub fn leech(&mut self, id: Id, from: SocketAddr) -> Vec<u8> {
        self.leeching = Some((id, from));
        self.request(from, id, 0)
    }

    /// A request of its downloader: one per datagram, 4096 bytes, its offer while it holds no
    /// cookie for `to`.
    pub fn request(&mut self, to: SocketAddr, id: Id, offset: u64) -> Vec<u8> {
        self.requests_sent += 1;
        let mut b = DatagramBuilder::new(1472);
        b.try_push(&Message::PleaseSendContent {
            id,
            offset,
            length: REF_BLOCK,
        });
        match self.offers.get(&to) {
            Some(o) => b.try_push(&Message::AlwaysReturned(o.clone())),
            None => b.try_push(&Message::PleaseAlwaysReturnThisMessage(cookie_payload(
                &self.cookie(to.ip()),
            ))),
        };
        b.finish()
    }

    /// It adds `to` as a peer and asks it for its peers (as the reference does with every peer
    /// it learns), its offer attached.
    pub fn greet(&mut self, to: SocketAddr) -> Vec<u8> {
        if !self.peers.contains(&to) {
            self.peers.push(to);
        }
        let mut b = DatagramBuilder::new(1472);
        b.try_push(&Message::PleaseSendPeers);
        match self.offers.get(&to) {
            Some(o) => b.try_push(&Message::AlwaysReturned(o.clone())),
            None => b.try_push(&Message::PleaseAlwaysReturnThisMessage(cookie_payload(
                &self.cookie(to.ip()),
            ))),
        };
        b.finish()
    }

    /// An unsolicited `Peers` list with the bootstrap peers, verified toward `to` once it knows
    /// its cookie.
    pub fn push_peers(&self, to: SocketAddr) -> Vec<u8> {
        let mut b = DatagramBuilder::new(1472);
        let list: Vec<SocketAddr> = BOOTSTRAP.iter().map(|a| a.parse().expect("addr")).collect();
        b.try_push(&Message::Peers(list));
        if let Some(o) = self.offers.get(&to) {
            b.try_push(&Message::AlwaysReturned(o.clone()));
        }
        b.finish()
    }
}
