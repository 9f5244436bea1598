//! Lowercase hexadecimal: the text form of the ids ferry prints and sends (SHA-256 ids, JTP's
//! 16-digit xxHash64 ids, name bytes in acknowledgements) and their 8-digit short forms. The
//! only hex encoder and parser in ferry.

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

/// The first four bytes of `bytes` as 8 hex digits (fewer when `bytes` is shorter): the short
/// form used in tagged names and logs.
pub fn short(bytes: &[u8]) -> String {
    encode(&bytes[..bytes.len().min(4)])
}

/// A u64 as exactly 16 lowercase hex digits (JTP's xxHash64 ids).
pub fn encode_u64(v: u64) -> String {
    encode(&v.to_be_bytes())
}

/// Exactly 16 hex digits, either case, as a u64; anything else (a sign, other lengths) is not.
pub fn parse_u64(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 {
        return None;
    }
    b.iter().try_fold(0u64, |acc, &c| {
        Some(acc << 4 | u64::from(nibble_any_case(c)?))
    })
}

fn nibble_any_case(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
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
        assert_eq!(short(&id), &text[..8]);
        assert_eq!(short(&[0xab]), "ab");
    }

    #[test]
    fn u64_ids() {
        assert_eq!(encode_u64(0x84fe30f5845a521f), "84fe30f5845a521f");
        assert_eq!(encode_u64(1), "0000000000000001");
        assert_eq!(parse_u64("84FE30f5845a521f"), Some(0x84fe30f5845a521f));
        assert_eq!(parse_u64("+4fe30f5845a521f"), None);
        assert_eq!(parse_u64("84fe30f5845a521"), None);
        assert_eq!(parse_u64("84fe30f5845a521g"), None);
    }
}
