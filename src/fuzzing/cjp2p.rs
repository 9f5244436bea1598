//! CJP2P target: the datagram parser, and the round trip of what it parsed through
//! [`DatagramBuilder`] within a byte limit.

use super::Script;
use crate::proto::cjp2p::wire::{
    content_encoded_len, content_fit, parse_datagram, DatagramBuilder, Message, MAX_ELEMENTS,
};

/// `limit (2 bytes) | datagram`.
pub fn cjp2p_datagram(data: &[u8]) {
    let mut s = Script::new(data);
    let limit = 64 + usize::from(s.u16());
    let datagram = s.rest();
    let Ok(dg) = parse_datagram(datagram) else {
        return;
    };
    assert!(
        dg.messages.len() + dg.bad_elements <= MAX_ELEMENTS,
        "elements looked at"
    );
    let mut b = DatagramBuilder::new(limit);
    let mut pushed = Vec::new();
    for m in dg
        .messages
        .iter()
        .filter(|m| !matches!(m, Message::Unknown))
    {
        let mut enc = Vec::new();
        m.encode(&mut enc);
        assert_eq!(m.encoded_len(), enc.len(), "encoded_len of {m:?}");
        if let Message::Content {
            id,
            offset,
            data,
            eof,
        } = m
        {
            assert_eq!(
                content_encoded_len(id, *offset, data.len(), *eof),
                enc.len()
            );
            if let Some(fit) = content_fit(id, *offset, *eof, enc.len()) {
                assert!(fit >= data.len(), "content_fit leaves room unused");
                assert!(
                    content_encoded_len(id, *offset, fit, *eof) <= enc.len(),
                    "content_fit"
                );
            }
        }
        let room = b.room();
        if b.try_push(m) {
            pushed.push(m.clone());
        } else {
            assert!(enc.len() > room, "a message that fits was refused");
        }
        assert!(b.len() <= limit, "the datagram passed its limit");
    }
    let bytes = b.finish();
    assert!(bytes.len() <= limit);
    let again = parse_datagram(&bytes).expect("an encoded datagram parses");
    assert_eq!(again.bad_elements, 0, "an encoded element does not parse");
    assert_eq!(again.messages, pushed, "round trip");
}
