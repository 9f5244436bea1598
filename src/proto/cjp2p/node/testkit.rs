//! Test helpers shared by the node's unit tests: an in-memory catalog, datagram inspection,
//! a pump that delivers datagrams between nodes (the reference-like peer is `testpeer`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{ContentStore, Node, NodeConfig, NodeEvent};
use crate::proto::cjp2p::wire::{cookie_of, id_hex, parse_datagram, Id, Message};

pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn file(len: usize, seed: u8) -> (Id, Vec<u8>) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    (Sha256::digest(&data).into(), data)
}

/// An in-memory catalog.
#[derive(Default)]
pub(super) struct Store(pub(super) Vec<(Id, Vec<u8>)>);

impl ContentStore for Store {
    fn size_of(&self, id: &Id) -> Option<u64> {
        self.0
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, d)| d.len() as u64)
    }
    fn read_at(&self, id: &Id, offset: u64, buf: &mut [u8]) -> Option<usize> {
        let (_, d) = self.0.iter().find(|(i, _)| i == id)?;
        let start = usize::try_from(offset).ok()?.min(d.len());
        let n = buf.len().min(d.len() - start);
        buf[..n].copy_from_slice(&d[start..start + n]);
        Some(n)
    }
    fn list(&self, start: usize, max: usize) -> Vec<(Id, u64)> {
        self.0
            .iter()
            .skip(start)
            .take(max)
            .map(|(i, d)| (*i, d.len() as u64))
            .collect()
    }
    fn count(&self) -> usize {
        self.0.len()
    }
}

pub(super) fn msgs(d: &[u8]) -> Vec<Message> {
    parse_datagram(d).unwrap().messages
}

pub(super) fn text(d: &[u8]) -> &str {
    std::str::from_utf8(d).unwrap()
}

/// Invariants of every datagram ferry sends (C7, C9, C10).
pub(super) fn check(d: &[u8], cfg: &NodeConfig, to: SocketAddr) {
    let m = msgs(d);
    let has_content = m.iter().any(|m| matches!(m, Message::Content { .. }));
    let ctrl = if to.is_ipv4() {
        cfg.control_max
    } else {
        cfg.control_max_v6
    };
    let limit = if has_content { cfg.content_max } else { ctrl };
    assert!(d.len() <= limit, "{} > {limit}", d.len());
    let echoes = m
        .iter()
        .filter(|m| matches!(m, Message::AlwaysReturned(_)))
        .count();
    assert!(echoes <= 1, "{}", text(d));
    for m in &m {
        if let Message::PleaseAlwaysReturnThisMessage(o) = m {
            let c = cookie_of(o).unwrap();
            assert_eq!(o, &format!("{{\"cookie\":\"{c}\"}}"));
            assert!(
                c.len() == 8
                    && c.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
        if let Message::Content { eof, .. } = m {
            assert!(eof.is_some(), "C24: every Content has eof");
        }
    }
}

pub(super) fn node(now: Instant, seed: u8) -> Node {
    Node::new(NodeConfig::default(), [seed; 32], now)
}

pub(super) fn drain(n: &mut Node) -> Vec<(SocketAddr, Vec<u8>)> {
    let cfg = n.cfg.clone();
    let mut v = Vec::new();
    while let Some((to, d)) = n.poll_transmit() {
        check(&d, &cfg, to);
        v.push((to, d));
    }
    v
}

pub(super) fn events(n: &mut Node) -> Vec<NodeEvent> {
    std::iter::from_fn(|| n.poll_event()).collect()
}

pub(super) struct Side {
    pub(super) addr: SocketAddr,
    pub(super) node: Node,
    pub(super) store: Store,
}

/// Deliver datagrams between sides until quiet; returns (from, to, bytes) in order.
pub(super) fn pump(now: Instant, sides: &mut [Side]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    let mut log = Vec::new();
    for _round in 0..50 {
        let mut any = false;
        for i in 0..sides.len() {
            let from = sides[i].addr;
            for (to, d) in drain(&mut sides[i].node) {
                any = true;
                if let Some(j) = sides.iter().position(|s| s.addr == to) {
                    let s = &mut sides[j];
                    s.node.handle_datagram(now, from, &d, &s.store);
                }
                log.push((from, to, d));
            }
        }
        if !any {
            return log;
        }
    }
    panic!("datagrams never stopped");
}

/// `addr` answers a list request of `n` (verified and solicited): it is a node that serves,
/// which `n` may advertise.
pub(super) fn prove_serving(n: &mut Node, now: Instant, addr: SocketAddr) {
    n.request_list(now, addr);
    drain(n);
    let d = cookie_dg(
        n,
        &addr.ip().to_string(),
        r#"{"ContentList":{"results":[]}}"#,
    );
    n.handle_datagram(now, addr, d.as_bytes(), &Store::default());
    events(n);
}

pub(super) fn cookie_dg(n: &Node, ip: &str, rest: &str) -> String {
    let c = n.cookie_for(ip.parse().unwrap());
    if rest.is_empty() {
        format!("[{{\"AlwaysReturned\":{{\"cookie\":\"{c}\"}}}}]")
    } else {
        format!("[{rest},{{\"AlwaysReturned\":{{\"cookie\":\"{c}\"}}}}]")
    }
}

pub(super) fn send_content_el(id: &Id, offset: u64, length: u64) -> String {
    format!(
        r#"{{"PleaseSendContent":{{"id":"{}","length":{length},"offset":{offset}}}}}"#,
        id_hex(id)
    )
}

pub(super) fn contents(d: &[u8]) -> Vec<(u64, Vec<u8>, Option<u64>)> {
    msgs(d)
        .into_iter()
        .filter_map(|m| match m {
            Message::Content {
                offset, data, eof, ..
            } => Some((offset, data, eof)),
            _ => None,
        })
        .collect()
}

pub(super) const A: &str = "192.0.2.1:24254";

/// A node with many peers and files, so every list answer could be large.
pub(super) fn rich_node(now: Instant) -> (Node, Store) {
    let mut n = node(now, 1);
    for i in 1..=60u8 {
        let a = sa(&format!("198.51.100.{i}:24254"));
        let d = cookie_dg(&n, &format!("198.51.100.{i}"), r#"{"PleaseSendPeers":{}}"#);
        n.handle_datagram(now, a, d.as_bytes(), &Store::default());
    }
    drain(&mut n);
    let store = Store((0..100).map(|i| file(100 + i, i as u8)).collect());
    (n, store)
}
