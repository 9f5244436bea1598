//! Encoding: each [`Message`] as the compact JSON the reference sends (keys in its order),
//! `Content` written straight into the datagram (base64 without an intermediate string), the
//! three list messages cut to the entries that fit ([`ListParts`]), and [`DatagramBuilder`],
//! which appends elements within a byte limit so a reply can be split over datagrams.

use std::net::SocketAddr;

use super::{addr_text, id_hex, Id, Message, B64};

pub(super) fn push_str_field(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// The three list messages, encoded as prefix, entries and suffix so that a list can be cut to
/// the entries that fit ([`DatagramBuilder::push_list`]).
pub struct ListParts {
    pub prefix: Vec<u8>,
    pub entries: Vec<Vec<u8>>,
    pub suffix: &'static [u8],
}

impl ListParts {
    pub fn peers(peers: &[SocketAddr]) -> ListParts {
        ListParts {
            prefix: b"{\"Peers\":{\"peers\":[".to_vec(),
            entries: peers.iter().map(addr_entry).collect(),
            suffix: b"]}}",
        }
    }

    pub fn maybe(id: &Id, peers: &[SocketAddr]) -> ListParts {
        let mut prefix = b"{\"MaybeTheyHaveSome\":{\"id\":".to_vec();
        push_str_field(&mut prefix, &id_hex(id));
        prefix.extend_from_slice(b",\"peers\":[");
        ListParts {
            prefix,
            entries: peers.iter().map(addr_entry).collect(),
            suffix: b"]}}",
        }
    }

    pub fn content_list(results: &[(Id, u64)]) -> ListParts {
        let entries = results
            .iter()
            .map(|(id, size)| {
                let mut e = b"[".to_vec();
                push_str_field(&mut e, &id_hex(id));
                e.extend_from_slice(format!(",{size}]").as_bytes());
                e
            })
            .collect();
        ListParts {
            prefix: b"{\"ContentList\":{\"results\":[".to_vec(),
            entries,
            suffix: b"]}}",
        }
    }

    /// Encoded length with the first `n` entries.
    pub fn len_with(&self, n: usize) -> usize {
        let entries: usize = self.entries[..n].iter().map(Vec::len).sum();
        self.prefix.len() + entries + n.saturating_sub(1) + self.suffix.len()
    }

    /// Encoding with the first `n` entries.
    pub fn encode_with(&self, n: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        for (i, e) in self.entries[..n].iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(e);
        }
        out.extend_from_slice(self.suffix);
    }
}

pub(super) fn addr_entry(a: &SocketAddr) -> Vec<u8> {
    let mut e = Vec::new();
    push_str_field(&mut e, &addr_text(a));
    e
}

impl Message {
    /// Append the compact JSON of this element.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let raw = |out: &mut Vec<u8>, name: &str, r: &str| {
            out.extend_from_slice(b"{\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(r.as_bytes());
            out.push(b'}');
        };
        match self {
            Message::PleaseAlwaysReturnThisMessage(r) => {
                raw(out, "PleaseAlwaysReturnThisMessage", r)
            }
            Message::AlwaysReturned(r) => raw(out, "AlwaysReturned", r),
            Message::PleaseSendPeers => out.extend_from_slice(b"{\"PleaseSendPeers\":{}}"),
            Message::Peers(p) => ListParts::peers(p).encode_with(p.len(), out),
            Message::PleaseReturnThisMessage(r) => raw(out, "PleaseReturnThisMessage", r),
            Message::ReturnedMessage(r) => raw(out, "ReturnedMessage", r),
            Message::PleaseSendContent { id, offset, length } => {
                out.extend_from_slice(b"{\"PleaseSendContent\":{\"id\":");
                push_str_field(out, &id_hex(id));
                out.extend_from_slice(
                    format!(",\"length\":{length},\"offset\":{offset}}}}}").as_bytes(),
                );
            }
            Message::Content {
                id,
                offset,
                data,
                eof,
            } => encode_content(id, *offset, data, *eof, out),
            Message::MaybeTheyHaveSome { id, peers } => {
                ListParts::maybe(id, peers).encode_with(peers.len(), out)
            }
            Message::PleaseListContent => out.extend_from_slice(b"{\"PleaseListContent\":{}}"),
            Message::ContentList(r) => ListParts::content_list(r).encode_with(r.len(), out),
            Message::FerryHello {
                version,
                max_length,
            } => out.extend_from_slice(
                format!("{{\"FerryHello\":{{\"version\":{version},\"max_length\":{max_length}}}}}")
                    .as_bytes(),
            ),
            Message::Unknown => {}
        }
    }

    /// Whether this message asks the receiver for an answer (content, a list, peers, an echo).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Message::PleaseSendContent { .. }
                | Message::PleaseListContent
                | Message::PleaseSendPeers
                | Message::PleaseReturnThisMessage(_)
        )
    }

    /// Length of [`Message::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        match self {
            // {"PleaseSendContent":{"id":"<64>","length":L,"offset":O}}: the request of every
            // block, measured without encoding it.
            Message::PleaseSendContent { offset, length, .. } => {
                115 + digits(*length) + digits(*offset)
            }
            Message::Content {
                id,
                offset,
                data,
                eof,
            } => content_encoded_len(id, *offset, data.len(), *eof),
            _ => {
                let mut v = Vec::new();
                self.encode(&mut v);
                v.len()
            }
        }
    }
}

/// Append a `Content` element carrying `data`.
pub fn encode_content(id: &Id, offset: u64, data: &[u8], eof: Option<u64>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"Content\":{\"id\":");
    push_str_field(out, &id_hex(id));
    out.extend_from_slice(b",\"offset\":");
    push_u64(out, offset);
    out.extend_from_slice(b",\"base64\":\"");
    let start = out.len();
    out.resize(start + base64_len(data.len()), 0);
    // The buffer has exactly the encoded length (`encode` panics if it were short).
    let written = B64
        .encode(data, base64_simd::Out::from_slice(&mut out[start..]))
        .len();
    debug_assert_eq!(start + written, out.len());
    out.push(b'"');
    if let Some(eof) = eof {
        out.extend_from_slice(b",\"eof\":");
        push_u64(out, eof);
    }
    out.extend_from_slice(b"}}");
}

/// Appends the decimal digits of `n` (no allocation: this runs for every block sent).
pub(super) fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

pub(super) fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

pub(super) fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Encoded length of a `Content` element with `data_len` bytes of data.
pub fn content_encoded_len(_id: &Id, offset: u64, data_len: usize, eof: Option<u64>) -> usize {
    // {"Content":{"id":"<64>","offset":N,"base64":"<b64>","eof":E}}
    18 + 64
        + 11
        + digits(offset)
        + 11
        + base64_len(data_len)
        + 1
        + eof.map_or(0, |e| 7 + digits(e))
        + 2
}

/// Most data bytes a `Content` element may carry and still be at most `room` bytes long.
pub fn content_fit(id: &Id, offset: u64, eof: Option<u64>, room: usize) -> Option<usize> {
    let base = content_encoded_len(id, offset, 0, eof);
    (room >= base).then(|| (room - base) / 4 * 3)
}

/// Builds one datagram element by element within a byte limit.
#[derive(Debug)]
pub struct DatagramBuilder {
    buf: Vec<u8>,
    limit: usize,
    elements: usize,
}

impl DatagramBuilder {
    pub fn new(limit: usize) -> DatagramBuilder {
        DatagramBuilder {
            buf: vec![b'['],
            limit,
            elements: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Raise or lower the limit (a datagram with `Content` may use `content_max`).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Length of the finished datagram as it stands.
    pub fn len(&self) -> usize {
        self.buf.len() + 1
    }

    pub fn is_empty(&self) -> bool {
        self.elements == 0
    }

    pub fn elements(&self) -> usize {
        self.elements
    }

    /// Longest element that still fits (separator and closing bracket accounted for).
    pub fn room(&self) -> usize {
        self.limit
            .saturating_sub(self.len() + usize::from(self.elements > 0))
    }

    /// Append an encoded element if it fits.
    pub fn try_push_encoded(&mut self, el: &[u8]) -> bool {
        if el.len() > self.room() {
            return false;
        }
        if self.elements > 0 {
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(el);
        self.elements += 1;
        true
    }

    /// Append a message if it fits. [`Message::Unknown`] has no encoding and is refused.
    pub fn try_push(&mut self, msg: &Message) -> bool {
        if matches!(msg, Message::Unknown) || msg.encoded_len() > self.room() {
            return false;
        }
        let mut el = Vec::new();
        msg.encode(&mut el);
        self.try_push_encoded(&el)
    }

    /// Append as many leading entries of a list as fit (all of them if the list is empty).
    /// Returns the number of entries written, or `None` if not even the empty list fits or a
    /// non-empty list fits with no entry.
    pub fn push_list(&mut self, list: &ListParts) -> Option<usize> {
        let room = self.room();
        let mut n = 0;
        while n < list.entries.len() && list.len_with(n + 1) <= room {
            n += 1;
        }
        if list.len_with(n) > room || (n == 0 && !list.entries.is_empty()) {
            return None;
        }
        let mut el = Vec::new();
        list.encode_with(n, &mut el);
        self.try_push_encoded(&el);
        Some(n)
    }

    /// Append a `Content` element if it fits.
    pub fn push_content(&mut self, id: &Id, offset: u64, data: &[u8], eof: Option<u64>) -> bool {
        if content_encoded_len(id, offset, data.len(), eof) > self.room() {
            return false;
        }
        if self.elements > 0 {
            self.buf.push(b',');
        }
        encode_content(id, offset, data, eof, &mut self.buf);
        self.elements += 1;
        true
    }

    /// The datagram bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(b']');
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::push_u64;

    const ID: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn one(data: &str) -> Vec<Message> {
        parse_datagram(data.as_bytes()).unwrap().messages
    }

    fn enc(m: &Message) -> String {
        let mut v = Vec::new();
        m.encode(&mut v);
        assert_eq!(v.len(), m.encoded_len());
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn content_roundtrip_and_strict_base64() {
        let id = parse_id(ID).unwrap();
        let m = Message::Content {
            id,
            offset: 0,
            data: b"hi".to_vec(),
            eof: Some(2),
        };
        let s = enc(&m);
        assert_eq!(
            s,
            format!(r#"{{"Content":{{"id":"{ID}","offset":0,"base64":"aGk=","eof":2}}}}"#)
        );
        assert_eq!(one(&format!("[{s}]")), vec![m]);
        for bad in ["aGk", "aGk==", "aGl=", "a-k=", "aG k="] {
            let d =
                format!(r#"[{{"Content":{{"id":"{ID}","offset":0,"base64":"{bad}","eof":2}}}}]"#);
            assert_eq!(
                parse_datagram(d.as_bytes()).unwrap().bad_elements,
                1,
                "{bad}"
            );
        }
        let empty = Message::Content {
            id,
            offset: 5,
            data: vec![],
            eof: Some(5),
        };
        assert!(enc(&empty).contains(r#""base64":"","eof":5"#));
        assert_eq!(content_fit(&id, 0, Some(2), s.len()), Some(3));
        // Every tail length and the block sizes in use, through the vectorised paths.
        for n in (0..130).chain([4096, 32767, 32768, 40960]) {
            let data: Vec<u8> = (0..n).map(|i| (i * 151 + i / 3) as u8).collect();
            let m = Message::Content {
                id,
                offset: 4096,
                data,
                eof: Some(1 << 40),
            };
            assert_eq!(one(&format!("[{}]", enc(&m))), vec![m], "{n}");
        }
    }

    #[test]
    fn encode_shapes() {
        let id = parse_id(ID).unwrap();
        let offer = cookie_payload("3d7f40e6");
        assert_eq!(
            enc(&Message::PleaseAlwaysReturnThisMessage(offer.clone())).len(),
            55
        );
        assert_eq!(
            enc(&Message::AlwaysReturned(offer)),
            r#"{"AlwaysReturned":{"cookie":"3d7f40e6"}}"#
        );
        assert_eq!(
            enc(&Message::FerryHello {
                version: 1,
                max_length: 40960
            })
            .len(),
            47
        );
        assert_eq!(
            enc(&Message::PleaseSendContent {
                id,
                offset: 0,
                length: 4096
            }),
            format!(r#"{{"PleaseSendContent":{{"id":"{ID}","length":4096,"offset":0}}}}"#)
        );
        let l = Message::ContentList(vec![(id, 8)]);
        assert_eq!(
            enc(&l),
            format!(r#"{{"ContentList":{{"results":[["{ID}",8]]}}}}"#)
        );
        assert_eq!(one(&format!("[{}]", enc(&l))), vec![l]);
        let mh = Message::MaybeTheyHaveSome {
            id,
            peers: vec!["1.2.3.4:5".parse().unwrap()],
        };
        assert_eq!(one(&format!("[{}]", enc(&mh))), vec![mh]);
        assert_eq!(enc(&Message::Peers(vec![])), r#"{"Peers":{"peers":[]}}"#);
    }

    #[test]
    fn request_length_is_computed_exactly() {
        let id = parse_id(ID).unwrap();
        for (offset, length) in [
            (0, 0),
            (0, 4096),
            (9, 10),
            (1 << 40, 40960),
            (u64::MAX, u64::MAX),
        ] {
            let m = Message::PleaseSendContent { id, offset, length };
            let mut v = Vec::new();
            m.encode(&mut v);
            assert_eq!(m.encoded_len(), v.len(), "{offset} {length}");
        }
        let mut v = Vec::new();
        for n in [0u64, 7, 10, 99, 100, 4096, u64::MAX] {
            v.clear();
            push_u64(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
        }
    }

    #[test]
    fn builder_limits_and_lists() {
        let mut b = DatagramBuilder::new(30);
        assert!(!b.try_push(&Message::Unknown));
        assert!(b.try_push(&Message::PleaseSendPeers));
        assert!(!b.try_push(&Message::PleaseSendPeers));
        assert_eq!(b.finish(), br#"[{"PleaseSendPeers":{}}]"#.to_vec());
        let peers: Vec<SocketAddr> = (1..=50)
            .map(|i| format!("10.0.0.{i}:1").parse().unwrap())
            .collect();
        let mut b = DatagramBuilder::new(200);
        let n = b.push_list(&ListParts::peers(&peers)).unwrap();
        assert!(n > 0 && n < 50);
        let out = b.finish();
        assert!(out.len() <= 200);
        let got = one(std::str::from_utf8(&out).unwrap());
        assert!(matches!(&got[0], Message::Peers(p) if p.len() == n));
        let mut b = DatagramBuilder::new(20);
        assert_eq!(b.push_list(&ListParts::peers(&peers)), None);
        // An empty list is written whole; a non-empty one of which no entry fits is not
        // written as an empty one (that would tell the peer "none"), even where the empty
        // list would fit.
        let mut b = DatagramBuilder::new(200);
        assert_eq!(b.push_list(&ListParts::peers(&[])), Some(0));
        let got = one(std::str::from_utf8(&b.finish()).unwrap());
        assert!(matches!(&got[0], Message::Peers(p) if p.is_empty()));
        let empty_len = ListParts::peers(&[]).len_with(0);
        let mut b = DatagramBuilder::new(empty_len + 3);
        assert!(b.room() >= empty_len);
        assert_eq!(b.push_list(&ListParts::peers(&peers)), None);
        assert!(b.is_empty());
    }
}
