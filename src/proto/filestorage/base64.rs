//! Strict canonical base64 (spec 4.3, 5): RFC 4648 section 4 (`+/`, `=` padding) for TRANSFER
//! and FETCH `data`, and the unpadded URL alphabet (`-_`, section 5) for JWT segments.
//!
//! Canonical means exactly one text per byte string: the right alphabet only (no whitespace,
//! line breaks or the other alphabet), padding exactly as the length needs (standard) or none
//! (URL), and the unused low bits of the last character zero (`QQ==` is `A`, `QR==` is refused).
//! Both directions go through `base64-simd`: its strict (non-"forgiving") decoder already refuses
//! non-zero trailing bits, misplaced `=` and a length of 4k+1, which the tests below pin down,
//! so no second pass over the text is needed; these functions add the length arithmetic that
//! lets a caller compare the decoded length with what it expects before decoding anything.

/// Why a text is not canonical base64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base64Error {
    /// A length that no canonical text has (not a multiple of 4 with padding; 4k+1 without).
    BadLength { len: usize },
    /// A character outside the alphabet, misplaced padding or non-zero trailing bits.
    NotCanonical,
}

impl std::fmt::Display for Base64Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Base64Error::BadLength { len } => write!(f, "base64: {len} characters"),
            Base64Error::NotCanonical => f.write_str("base64: not canonical"),
        }
    }
}

impl std::error::Error for Base64Error {}

/// Characters of the padded standard encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Characters of the unpadded URL encoding of `n` bytes.
pub const fn encoded_len_unpadded(n: usize) -> usize {
    n / 3 * 4 + [0, 2, 3][n % 3]
}

/// The byte length a padded standard text decodes to, judged on its length and padding alone
/// (the characters are checked by [`decode_append`]).
pub fn decoded_len(text: &[u8]) -> Result<usize, Base64Error> {
    let len = text.len();
    if len % 4 != 0 {
        return Err(Base64Error::BadLength { len });
    }
    let pad = text
        .iter()
        .rev()
        .take(2)
        .take_while(|&&c| c == b'=')
        .count();
    Ok(len / 4 * 3 - pad)
}

/// Decodes padded standard base64, appending the bytes to `out`. On error `out` is left as it
/// was.
pub fn decode_append(text: &[u8], out: &mut Vec<u8>) -> Result<(), Base64Error> {
    decoded_len(text)?;
    let before = out.len();
    base64_simd::STANDARD.decode_append(text, out).map_err(|_| {
        out.truncate(before);
        Base64Error::NotCanonical
    })
}

/// Appends the padded standard encoding of `bytes` to `out`.
pub fn encode_append(bytes: &[u8], out: &mut Vec<u8>) {
    base64_simd::STANDARD.encode_append(bytes, out);
}

/// Decodes unpadded URL-alphabet base64 (a JWT segment), appending to `out`; on error `out` is
/// left as it was.
pub fn decode_url_append(text: &[u8], out: &mut Vec<u8>) -> Result<(), Base64Error> {
    if text.len() % 4 == 1 {
        return Err(Base64Error::BadLength { len: text.len() });
    }
    let before = out.len();
    base64_simd::URL_SAFE_NO_PAD
        .decode_append(text, out)
        .map_err(|_| {
            out.truncate(before);
            Base64Error::NotCanonical
        })
}

/// Appends the unpadded URL-alphabet encoding of `bytes` to `out`.
pub fn encode_url_append(bytes: &[u8], out: &mut Vec<u8>) {
    base64_simd::URL_SAFE_NO_PAD.encode_append(bytes, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<Vec<u8>, Base64Error> {
        let mut v = b"keep".to_vec();
        let r = decode_append(s.as_bytes(), &mut v);
        if r.is_err() {
            assert_eq!(v, b"keep", "nothing appended on error");
        }
        r.map(|()| v[4..].to_vec())
    }

    fn url(s: &str) -> Result<Vec<u8>, Base64Error> {
        let mut v = Vec::new();
        decode_url_append(s.as_bytes(), &mut v).map(|()| v)
    }

    /// The scalar definition of canonical padded base64, for differential tests.
    fn reference(text: &[u8]) -> Option<Vec<u8>> {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        if text.len() % 4 != 0 {
            return None;
        }
        let mut out = Vec::new();
        for (q, quad) in text.chunks(4).enumerate() {
            let last = q + 1 == text.len() / 4;
            let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 || (pad > 0 && !last) {
                return None;
            }
            let mut v = 0u32;
            for &c in &quad[..4 - pad] {
                v = v << 6 | A.iter().position(|&a| a == c)? as u32;
            }
            v <<= 6 * pad as u32;
            let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
            let keep = 3 - pad;
            if bytes[keep..].iter().any(|&b| b != 0) {
                return None;
            }
            out.extend_from_slice(&bytes[..keep]);
        }
        Some(out)
    }

    #[test]
    fn s18_trailing_bits_padding_and_alphabet() {
        assert_eq!(dec("QQ=="), Ok(b"A".to_vec()));
        assert_eq!(dec("QR=="), Err(Base64Error::NotCanonical));
        assert_eq!(dec("QUI="), Ok(b"AB".to_vec()));
        assert_eq!(dec("QUJ="), Err(Base64Error::NotCanonical));
        assert_eq!(dec("QUJD"), Ok(b"ABC".to_vec()));
        assert_eq!(dec(""), Ok(Vec::new()));
        for bad in [
            "QQ",       // missing padding
            "QQ=",      // short padding
            "QQ===",    // extra padding
            "QUJD====", // padding after a full quantum
            "Q===",     // three padding characters
            "====",
            "QQ=A", // padding inside
            "=QQA",
            "QUJD\n", // line break
            "QU\nJD",
            "QUJD ", // whitespace
            " QUJ",
            "QU JD",
            "QUJ\t",
            "-_-_", // URL alphabet
            "QUJ-",
            "QUJ*",
            "QUJD\0\0\0\0",
            "QUJDQ",
        ] {
            assert!(dec(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(decoded_len(b"QQ"), Err(Base64Error::BadLength { len: 2 }));
        assert_eq!(decoded_len(b"QQ=="), Ok(1));
        assert_eq!(decoded_len(b"QUI="), Ok(2));
        assert_eq!(decoded_len(b"QUJDQUJD"), Ok(6));
        assert_eq!(dec("\u{e9}AA"), Err(Base64Error::NotCanonical));
        assert_eq!(
            Base64Error::BadLength { len: 2 }.to_string(),
            "base64: 2 characters"
        );
    }

    #[test]
    fn round_trips_every_length_up_to_one_chunk() {
        let data: Vec<u8> = (0..65_536u32).map(|i| (i * 7 + i / 256) as u8).collect();
        for n in (0..300).chain([999, 1000, 1001, 65_535, 65_536]) {
            let mut text = Vec::new();
            encode_append(&data[..n], &mut text);
            assert_eq!(text.len(), encoded_len(n));
            assert_eq!(decoded_len(&text), Ok(n));
            let mut back = Vec::new();
            decode_append(&text, &mut back).unwrap();
            assert_eq!(back, &data[..n]);
            assert_eq!(reference(&text).as_deref(), Some(&data[..n]));
            let mut u = Vec::new();
            encode_url_append(&data[..n], &mut u);
            assert_eq!(u.len(), encoded_len_unpadded(n));
            let mut back = Vec::new();
            decode_url_append(&u, &mut back).unwrap();
            assert_eq!(back, &data[..n]);
        }
    }

    #[test]
    fn agrees_with_the_scalar_definition_on_random_text() {
        // Short texts over an alphabet rich in edge characters, plus long valid texts with one
        // character replaced, so both the SIMD body and the scalar tail are exercised.
        const CHARS: &[u8] = b"AQRgw+/=-_ \n*9zA=";
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 13) as usize;
            let text: Vec<u8> = (0..len)
                .map(|_| CHARS[(next() % CHARS.len() as u64) as usize])
                .collect();
            let mut got = Vec::new();
            let ok = decode_append(&text, &mut got).is_ok();
            assert_eq!(
                ok.then_some(got),
                reference(&text),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
        }
        let data: Vec<u8> = (0..3000).map(|i| (i * 31) as u8).collect();
        let mut text = Vec::new();
        encode_append(&data, &mut text);
        for _ in 0..2000 {
            let mut t = text.clone();
            let at = (next() % t.len() as u64) as usize;
            t[at] = CHARS[(next() % CHARS.len() as u64) as usize];
            let mut got = Vec::new();
            let ok = decode_append(&t, &mut got).is_ok();
            assert_eq!(ok.then_some(got), reference(&t), "changed at {at}");
        }
    }

    #[test]
    fn url_alphabet_unpadded_and_canonical() {
        assert_eq!(url("eyJ9"), Ok(b"{\"}".to_vec()));
        assert_eq!(url("-_8"), Ok(vec![0xfb, 0xff]));
        assert_eq!(url(""), Ok(Vec::new()));
        assert_eq!(url("QQ"), Ok(b"A".to_vec()));
        assert_eq!(url("QR"), Err(Base64Error::NotCanonical), "trailing bits");
        assert_eq!(url("QQ=="), Err(Base64Error::NotCanonical), "padding");
        assert_eq!(url("QUJ="), Err(Base64Error::NotCanonical));
        assert_eq!(
            url("+/8"),
            Err(Base64Error::NotCanonical),
            "standard alphabet"
        );
        assert_eq!(url("QUJDQ"), Err(Base64Error::BadLength { len: 5 }));
        assert_eq!(url("QU D"), Err(Base64Error::NotCanonical));
    }
}
