//! The fast path of [`parse_datagram`](super::parse_datagram) for the datagrams of a bulk
//! transfer: `Content` elements in the compact shape both ferry and the reference send,
//!
//! ```text
//! {"Content":{"id":"<64 lowercase hex>","offset":N,"base64":"<standard, padded>","eof":N}}
//! ```
//!
//! (`eof` optional), next to any other elements. The general path runs `serde_json` over every
//! element three times (the array of raw values, the one-key object, the payload), and a
//! `Content` element is almost all base64: profiling `cjp2p get` showed those scans as a fifth
//! of its CPU. Here the base64 text is found with one `memchr2` and decoded once.
//!
//! The fast path accepts a datagram only if the general path would parse it to the very same
//! [`Datagram`]: no whitespace, the fields in exactly that order, ids and numbers in their
//! canonical form, no escape in the base64 text. Other elements are cut out by bracket depth
//! (strings skipped) and then parsed by the general element parser, after `serde_json` checked
//! each is valid JSON. Anything else (whitespace, other field orders, more than
//! [`MAX_ELEMENTS`] elements, a number or id not in canonical form, a bad base64 text) returns
//! `None`, and the general path decides.

use serde_json::value::RawValue;

use super::{parse_element, parse_id, Datagram, Message, B64, MAX_DEPTH, MAX_ELEMENTS};

/// The datagram, if it has the fast shape (see the module doc); `None` otherwise.
pub(super) fn parse(data: &[u8]) -> Option<Datagram> {
    let mut rest = data.strip_prefix(b"[")?;
    let mut out = Datagram::default();
    if rest == b"]" {
        return Some(out);
    }
    loop {
        if out.messages.len() + out.bad_elements >= MAX_ELEMENTS {
            return None;
        }
        let (msg, after) = match content(rest) {
            Some(x) => x,
            None => {
                let end = element_end(rest)?;
                let text = std::str::from_utf8(&rest[..end]).ok()?;
                let raw: &RawValue = serde_json::from_str(text).ok()?;
                match parse_element(raw) {
                    Some(m) => out.messages.push(m),
                    None => out.bad_elements += 1,
                }
                (None, &rest[end..])
            }
        };
        if let Some(m) = msg {
            out.messages.push(m);
        }
        match after.split_first()? {
            (b',', more) => rest = more,
            (b']', []) => return Some(out),
            _ => return None,
        }
    }
}

/// A `Content` element of the canonical shape at the start of `s`, and what follows it.
fn content(s: &[u8]) -> Option<(Option<Message>, &[u8])> {
    let s = s.strip_prefix(br#"{"Content":{"id":""#)?;
    let id = parse_id(std::str::from_utf8(s.get(..64)?).ok()?)?;
    let s = s[64..].strip_prefix(br#"","offset":"#)?;
    let (offset, s) = uint(s)?;
    let s = s.strip_prefix(br#","base64":""#)?;
    let end = memchr::memchr2(b'"', b'\\', s)?;
    if s[end] != b'"' {
        return None;
    }
    let data = B64.decode_to_vec(&s[..end]).ok()?;
    let s = &s[end + 1..];
    let (eof, s) = match s.strip_prefix(br#","eof":"#) {
        Some(s) => {
            let (e, s) = uint(s)?;
            (Some(e), s)
        }
        None => (None, s),
    };
    let s = s.strip_prefix(b"}}")?;
    Some((
        Some(Message::Content {
            id,
            offset,
            data,
            eof,
        }),
        s,
    ))
}

/// A JSON unsigned integer in canonical form (no sign, no leading zero, no fraction or
/// exponent) that fits a u64, and what follows it.
fn uint(s: &[u8]) -> Option<(u64, &[u8])> {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || (n > 1 && s[0] == b'0') {
        return None;
    }
    if matches!(s.get(n), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    let v = s[..n].iter().try_fold(0u64, |acc, &c| {
        acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })?;
    Some((v, &s[n..]))
}

/// Length of the element at the start of `s`: up to the `,` or `]` at depth 0, strings skipped,
/// nesting within [`MAX_DEPTH`] (the outer array counts). Validity is `serde_json`'s to judge.
fn element_end(s: &[u8]) -> Option<usize> {
    let mut depth = 1usize;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => {
                i += 1;
                loop {
                    let k = memchr::memchr2(b'"', b'\\', s.get(i..)?)?;
                    if s[i + k] == b'\\' {
                        i += k + 2;
                    } else {
                        i += k;
                        break;
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return None;
                }
            }
            b']' | b'}' if depth == 1 => return (i > 0).then_some(i),
            b']' | b'}' => depth -= 1,
            b',' if depth == 1 => return (i > 0).then_some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::parse;

    const ID: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn general(d: &[u8]) -> Result<Datagram, DatagramError> {
        general_parse(d)
    }

    fn content_el(offset: u64, data: &[u8], eof: Option<u64>) -> String {
        let mut v = Vec::new();
        encode_content(&parse_id(ID).unwrap(), offset, data, eof, &mut v);
        String::from_utf8(v).unwrap()
    }

    /// Every datagram the fast path accepts parses to the same value on the general path.
    fn same(d: &str) -> Option<Datagram> {
        let fast = parse(d.as_bytes());
        if let Some(f) = &fast {
            assert_eq!(Ok(f.clone()), general(d.as_bytes()), "{d}");
        }
        fast
    }

    #[test]
    fn content_datagrams_take_the_fast_path_and_agree_with_the_general_one() {
        let block: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let c = content_el(4096, &block, Some(1 << 30));
        let echo = r#"{"AlwaysReturned":{"cookie":"3d7f40e6"}}"#;
        let offer = r#"{"PleaseAlwaysReturnThisMessage":{"cookie":"01234567"}}"#;
        let hello = r#"{"FerryHello":{"version":1,"max_length":40960}}"#;
        for d in [
            format!("[{c}]"),
            format!("[{echo},{c}]"),
            format!("[{echo},{offer},{c},{c},{hello}]"),
            format!("[{c},{echo}]"),
            format!("[{}]", content_el(0, b"", Some(0))),
            format!("[{}]", content_el(7, b"hi", None)),
            "[]".to_string(),
            format!("[{echo}]"),
            format!(r#"[{{"Unknown":{{"x":[1,{{"y":"]}}"}}]}}}},{c}]"#),
            format!(r#"[1,{{}},{c}]"#),
        ] {
            let dg = same(&d).unwrap_or_else(|| panic!("not fast: {d}"));
            assert!(dg.messages.len() + dg.bad_elements >= 1 || d == "[]");
        }
        let dg = same(&format!("[{echo},{c}]")).unwrap();
        assert_eq!(
            dg.messages[1],
            Message::Content {
                id: parse_id(ID).unwrap(),
                offset: 4096,
                data: block,
                eof: Some(1 << 30)
            }
        );
    }

    #[test]
    fn anything_else_agrees_with_the_general_path_or_goes_to_it() {
        let c = content_el(0, b"abc", Some(3));
        for d in [
            format!("[ {c}]"),
            format!("[{c} ]"),
            format!("[{c}] "),
            format!("[{c},]"),
            format!("[,{c}]"),
            format!("[{c}"),
            c.clone(),
            format!("[{}]", c.replace(r#""offset":0"#, r#""offset":00"#)),
            format!("[{}]", c.replace(r#""offset":0"#, r#""offset":0.0"#)),
            format!("[{}]", c.replace(r#""offset":0"#, r#""offset":-0"#)),
            format!(
                "[{}]",
                c.replace(r#""offset":0"#, r#""offset":18446744073709551616"#)
            ),
            format!("[{}]", c.replace(r#""eof":3"#, r#""eof":1e3"#)),
            format!("[{}]", c.replace(r#""eof":3"#, r#""eof":null"#)),
            format!("[{}]", c.replace("YWJj", r"YWJ\u006a")),
            format!("[{}]", c.replace("YWJj", "YWJ")),
            format!("[{}]", c.replace(ID, &ID.to_uppercase())),
            format!(
                "[{}]",
                c.replace(r#"{"Content":{"id""#, r#"{"Content":{ "id""#)
            ),
            format!(
                "[{}]",
                c.replace(r#","base64":"YWJj","eof":3"#, r#","eof":3,"base64":"YWJj""#)
            ),
            format!("[{}]", c.replace("}}", r#","x":1}}"#)),
        ] {
            same(&d);
        }
        // Not JSON: the general path refuses the datagram, so the fast one must not take it.
        for d in [
            format!("[{c},]"),
            format!("[,{c}]"),
            format!("[{c}"),
            c.clone(),
        ] {
            assert!(same(&d).is_none(), "{d}");
            assert!(general(d.as_bytes()).is_err(), "{d}");
        }
        let many = format!("[{}]", vec![c.as_str(); 65].join(","));
        assert!(same(&many).is_none(), "over 64 elements");
        let deep = format!("[{}{c}{}]", "[".repeat(130), "]".repeat(130));
        assert!(same(&deep).is_none());
    }

    /// `uint` takes exactly JSON's canonical unsigned integers that fit a u64, 0 included (the
    /// first block's offset and the empty file's eof: refused here, every such `Content`
    /// would leave the fast decoder for `serde_json`, which the datagram tests cannot see).
    #[test]
    fn uint_takes_canonical_integers_zero_included() {
        use super::uint;
        let ok: [(&[u8], u64, &[u8]); 6] = [
            (b"0", 0, b""),
            (b"0,", 0, b","),
            (b"0}}", 0, b"}}"),
            (b"7,", 7, b","),
            (b"4096,", 4096, b","),
            (b"18446744073709551615}", u64::MAX, b"}"),
        ];
        for (text, v, rest) in ok {
            assert_eq!(uint(text), Some((v, rest)), "{text:?}");
        }
        for text in [
            &b""[..],
            b",",
            b"-0",
            b"00",
            b"01",
            b"0.0",
            b"0e1",
            b"1E3",
            b"18446744073709551616",
        ] {
            assert_eq!(uint(text), None, "{text:?}");
        }
    }

    #[test]
    fn never_panics_and_never_disagrees_on_truncations_and_mutations() {
        let c = content_el(4096, &[9; 100], Some(8192));
        let base =
            format!(r#"[{{"AlwaysReturned":{{"cookie":"3d7f40e6"}}}},{c},{{"X":["a\"]",2]}}]"#);
        let b = base.as_bytes();
        for i in 0..=b.len() {
            same(std::str::from_utf8(&b[..i]).unwrap());
        }
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut m = b.to_vec();
            let i = (x % m.len() as u64) as usize;
            let alphabet = b"[]{},:\"\\0aZ= 9";
            m[i] = alphabet[(x >> 32) as usize % alphabet.len()];
            if let Ok(s) = std::str::from_utf8(&m) {
                same(s);
            }
        }
    }
}
