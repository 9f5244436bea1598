//! Lowercase hexadecimal: the text form of the ids ferry prints and sends (SHA-256 ids,
//! name bytes in acknowledgements). JTP's 16-digit xxHash64 ids have their own helpers in
//! `proto::jtp::wire` because they are integers on the wire.

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// A SHA-256 id: exactly 64 characters of `[0-9a-f]`; anything else (upper case, other
/// lengths, separators) is not an id.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut id = [0u8; 32];
    for (i, out) in id.iter_mut().enumerate() {
        *out = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strict_grammar() {
        let id: [u8; 32] = std::array::from_fn(|i| (i * 9) as u8);
        let text = encode(&id);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_sha256(&text), Some(id));
        assert_eq!(encode(&[0x0f, 0xa0]), "0fa0");
        assert_eq!(parse_sha256(&text.to_uppercase()), None);
        assert_eq!(parse_sha256(&text[..63]), None);
        assert_eq!(parse_sha256(&format!("{}/", &text[..63])), None);
    }
}
