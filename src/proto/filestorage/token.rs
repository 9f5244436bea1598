//! The HS256 token check of spec 5, exactly, and minting for `ferry filestorage token`.
//!
//! Order of the check, each failure `invalid-token` unless said otherwise:
//! 1. at most `max_len` (8,192) bytes; exactly three segments joined by `.`; each segment
//!    canonical unpadded base64url; the signature 32 bytes. All of this is decided on the text,
//!    before any HMAC is computed.
//! 2. header: a JSON object without duplicate keys, `alg` exactly `"HS256"`, `typ` absent or
//!    `"JWT"` in any ASCII case, no `crit`. The algorithm is fixed here, never read from the
//!    token to choose a check, so `none`, `HS384` and `RS256` fail at this step, still without
//!    an HMAC.
//! 3. HMAC-SHA256 over `<header segment>.<payload segment>`, compared in constant time by
//!    `hmac`'s `verify_slice`.
//! 4. payload: a JSON object without duplicate keys; `uid` an integer 0..2^31-1; `login` a
//!    non-empty string; `exp` and `nbf`, if present, integers (0..2^53-1, spec 2.2). Claims are
//!    only looked at once the MAC has passed, so a forged token is never `token-expired`.
//! 5. with leeway L and `now`: `now > exp + L` or `now < nbf - L` is `token-expired`.
//!
//! The key is the key file's bytes minus ONE trailing `\n` ([`JwtKey::from_file_bytes`]), as
//! Baguette's authd reads it, so its tokens verify unchanged; an empty key is refused.
//!
//! Out of scope: reading the key file and the clock (the caller passes bytes and `now`).

use super::base64;
use super::json::{self, Value};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// Largest token accepted (spec 1.1 `max_token`).
pub const MAX_TOKEN: usize = 8192;
/// Leeway for `exp` and `nbf` in seconds (spec 1.1 `jwt_leeway`).
pub const LEEWAY_SECS: u64 = 60;
/// Largest `uid`: 2^31 - 1.
pub const MAX_UID: u64 = (1 << 31) - 1;
/// Bytes of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;
/// `{"alg":"HS256","typ":"JWT"}` as a base64url segment: the header ferry mints.
const MINT_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

type HmacSha256 = Hmac<Sha256>;

/// The shared HS256 key.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtKey(Vec<u8>);

/// A key that cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The key file is empty or holds only `\n`: startup stops (spec 5).
    Empty,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("jwt key: empty")
    }
}

impl std::error::Error for KeyError {}

impl JwtKey {
    /// The key in a key file: its bytes with exactly one trailing `\n` removed.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<JwtKey, KeyError> {
        JwtKey::new(bytes.strip_suffix(b"\n").unwrap_or(bytes))
    }

    /// A key given as raw bytes (nothing stripped).
    pub fn new(raw: &[u8]) -> Result<JwtKey, KeyError> {
        if raw.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(JwtKey(raw.to_vec()))
    }

    /// The contents of a key file ferry generates from 32 random bytes: 64 lowercase hex
    /// digits and `\n` (spec 5).
    pub fn generated_file_contents(random: &[u8; 32]) -> Vec<u8> {
        let mut s = crate::wire::hex::encode(random).into_bytes();
        s.push(b'\n');
        s
    }

    fn mac(&self) -> HmacSha256 {
        #[cfg(test)]
        tests::MACS.with(|m| m.set(m.get() + 1));
        // HMAC takes keys of any length; the key is never empty.
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwtKey({} bytes)", self.0.len())
    }
}

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The owner of what this token stores.
    pub uid: u32,
    /// For logs only.
    pub login: String,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
}

/// Why a token is refused. `Invalid` carries the rule broken, for logs and tests only: the
/// wire says `invalid-token` without detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    Invalid(&'static str),
    Expired,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Invalid(what) => write!(f, "invalid-token: {what}"),
            TokenError::Expired => f.write_str("token-expired"),
        }
    }
}

impl std::error::Error for TokenError {}

/// How a check is configured (spec 1.1 `max_token`, `jwt_leeway`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLimits {
    pub max_len: usize,
    pub leeway_secs: u64,
}

impl Default for TokenLimits {
    fn default() -> TokenLimits {
        TokenLimits {
            max_len: MAX_TOKEN,
            leeway_secs: LEEWAY_SECS,
        }
    }
}

/// Checks `token` (see the module doc) at Unix time `now`.
pub fn verify(
    token: &[u8],
    key: &JwtKey,
    now: i64,
    limits: TokenLimits,
) -> Result<Claims, TokenError> {
    use TokenError::Invalid;
    if token.len() > limits.max_len {
        return Err(Invalid("length"));
    }
    let mut parts = token.split(|&c| c == b'.');
    let (Some(head), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Invalid("segments"));
    };
    let mut header = Vec::new();
    base64::decode_url_append(head, &mut header).map_err(|_| Invalid("header base64"))?;
    let mut payload = Vec::new();
    base64::decode_url_append(body, &mut payload).map_err(|_| Invalid("payload base64"))?;
    let mut tag = Vec::new();
    base64::decode_url_append(sig, &mut tag).map_err(|_| Invalid("signature base64"))?;
    if tag.len() != TAG_LEN {
        return Err(Invalid("signature length"));
    }
    check_header(&header)?;
    let signed = &token[..head.len() + 1 + body.len()];
    let mut mac = key.mac();
    mac.update(signed);
    mac.verify_slice(&tag).map_err(|_| Invalid("signature"))?;
    let claims = read_claims(&payload)?;
    let now = i128::from(now);
    let leeway = i128::from(limits.leeway_secs);
    if claims.exp.is_some_and(|exp| now > i128::from(exp) + leeway)
        || claims.nbf.is_some_and(|nbf| now < i128::from(nbf) - leeway)
    {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

fn check_header(header: &[u8]) -> Result<(), TokenError> {
    use TokenError::Invalid;
    let obj = json::parse_object(header).map_err(|_| Invalid("header json"))?;
    match obj.get("alg") {
        Some(Value::Str(alg)) if alg == "HS256" => {}
        _ => return Err(Invalid("alg")),
    }
    match obj.get("typ") {
        None => {}
        Some(Value::Str(t)) if t.eq_ignore_ascii_case("JWT") => {}
        Some(_) => return Err(Invalid("typ")),
    }
    if obj.get("crit").is_some() {
        return Err(Invalid("crit"));
    }
    Ok(())
}

fn read_claims(payload: &[u8]) -> Result<Claims, TokenError> {
    use TokenError::Invalid;
    let obj = json::parse_object(payload).map_err(|_| Invalid("payload json"))?;
    let uid = match obj.get("uid") {
        Some(&Value::Int(u)) if u <= MAX_UID => u as u32,
        _ => return Err(Invalid("uid")),
    };
    let login = match obj.get("login") {
        Some(Value::Str(l)) if !l.is_empty() => l.to_string(),
        _ => return Err(Invalid("login")),
    };
    let time = |key: &'static str| match obj.get(key) {
        None => Ok(None),
        Some(&Value::Int(t)) if t <= json::MAX_INT => Ok(Some(t)),
        Some(_) => Err(Invalid(key)),
    };
    Ok(Claims {
        uid,
        login,
        exp: time("exp")?,
        nbf: time("nbf")?,
    })
}

/// The `login` claim of a token, read WITHOUT checking its signature: for the client, which
/// has no key and needs the login only to derive its `fid` (spec 4.4). Never use it to decide
/// anything a server decides.
pub fn unverified_login(token: &str) -> Option<String> {
    let mut parts = token.as_bytes().split(|&c| c == b'.');
    let (_, body) = (parts.next()?, parts.next()?);
    if body.len() > MAX_TOKEN {
        return None;
    }
    let mut payload = Vec::new();
    base64::decode_url_append(body, &mut payload).ok()?;
    let obj = json::parse_object(&payload).ok()?;
    match obj.get("login") {
        Some(Value::Str(l)) if !l.is_empty() => Some(l.to_string()),
        _ => None,
    }
}

/// A token ferry mints: header `{"alg":"HS256","typ":"JWT"}`, payload
/// `{"login":…,"uid":…}` and `"exp"` when given, the same bytes authd produces (vectors A, B).
pub fn mint(key: &JwtKey, uid: u32, login: &str, exp: Option<u64>) -> String {
    let mut payload = Vec::new();
    payload.extend_from_slice(b"{\"login\":");
    json::put_str(&mut payload, login);
    payload.extend_from_slice(format!(",\"uid\":{uid}").as_bytes());
    if let Some(e) = exp {
        payload.extend_from_slice(format!(",\"exp\":{e}").as_bytes());
    }
    payload.push(b'}');
    sign_segments(key, MINT_HEADER.as_bytes(), &payload)
}

/// `<header segment>.<base64url(payload)>.<base64url(HMAC)>`.
fn sign_segments(key: &JwtKey, header_segment: &[u8], payload: &[u8]) -> String {
    let mut out = header_segment.to_vec();
    out.push(b'.');
    base64::encode_url_append(payload, &mut out);
    let mut mac = key.mac();
    mac.update(&out);
    let tag = mac.finalize().into_bytes();
    out.push(b'.');
    base64::encode_url_append(&tag, &mut out);
    // Base64url and the fixed header are ASCII.
    String::from_utf8(out).expect("ASCII")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// HMAC computations on this thread, to show that refused shapes never reach one.
        pub static MACS: Cell<u32> = const { Cell::new(0) };
    }

    pub const A: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJsb2dpbiI6ImthcmNobnUiLCJ1aWQiOjEwMDJ9.GnkyHuzPedHnropirz_AgZxD7DCUjou1uaiRujhBpCo";
    const B: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJsb2dpbiI6ImthcmNobnUiLCJ1aWQiOjEwMDIsImV4cCI6MTcwMDAwMDAwMH0.zdgyBQFiZbr_4oW6z19AZVjYtb1CpEmiC8zwla3GBYw";
    const D: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJsb2dpbiI6ImthcmNobnUiLCJ1aWQiOjEwMDJ9.";
    const NOW: i64 = 1_750_000_000;

    pub fn key() -> JwtKey {
        JwtKey::from_file_bytes(b"secret-key\n").unwrap()
    }

    fn check(token: &str) -> Result<Claims, TokenError> {
        verify(token.as_bytes(), &key(), NOW, TokenLimits::default())
    }

    /// A token with any header and payload JSON, correctly signed with `key`.
    fn forge(key: &JwtKey, header: &str, payload: &str) -> String {
        let mut h = Vec::new();
        base64::encode_url_append(header.as_bytes(), &mut h);
        sign_segments(key, &h, payload.as_bytes())
    }

    fn with_payload(payload: &str) -> Result<Claims, TokenError> {
        check(&forge(&key(), r#"{"alg":"HS256","typ":"JWT"}"#, payload))
    }

    fn macs() -> u32 {
        MACS.with(|m| m.get())
    }

    #[test]
    fn s25_vector_a_is_uid_1002_karchnu() {
        let c = check(A).unwrap();
        assert_eq!(
            c,
            Claims {
                uid: 1002,
                login: "karchnu".into(),
                exp: None,
                nbf: None
            }
        );
        assert_eq!(A.len(), 121);
        assert_eq!(
            mint(&key(), 1002, "karchnu", None),
            A,
            "minting gives authd's bytes"
        );
    }

    #[test]
    fn s25_uid_and_login_rules() {
        assert_eq!(with_payload(r#"{"login":"k","uid":0}"#).unwrap().uid, 0);
        assert_eq!(
            with_payload(r#"{"login":"k","uid":2147483647}"#)
                .unwrap()
                .uid,
            i32::MAX as u32
        );
        assert_eq!(
            with_payload(r#"{"login":"k","uid":7,"role":["x"]}"#)
                .unwrap()
                .uid,
            7,
            "other claims ignored"
        );
        for (payload, what) in [
            (r#"{"login":"karchnu"}"#, "uid"),
            (r#"{"login":"karchnu","uid":-1}"#, "uid"),
            (r#"{"login":"karchnu","uid":2147483648}"#, "uid"),
            (r#"{"login":"karchnu","uid":1002.0}"#, "uid"),
            (r#"{"login":"karchnu","uid":1e3}"#, "uid"),
            (r#"{"login":"karchnu","uid":"1002"}"#, "uid"),
            (r#"{"login":"karchnu","uid":null}"#, "uid"),
            (r#"{"uid":1002}"#, "login"),
            (r#"{"login":"","uid":1002}"#, "login"),
            (r#"{"login":7,"uid":1002}"#, "login"),
            (r#"{"login":"karchnu","uid":1002,"exp":1.5}"#, "exp"),
            (r#"{"login":"karchnu","uid":1002,"exp":"1"}"#, "exp"),
            // One past the integers JSON numbers hold exactly (2^53), the limit of json::MAX_INT.
            (
                r#"{"login":"karchnu","uid":1002,"exp":9007199254740992}"#,
                "exp",
            ),
            (r#"{"login":"karchnu","uid":1002,"nbf":-5}"#, "nbf"),
            (
                r#"{"login":"karchnu","uid":1002,"uid":1003}"#,
                "payload json",
            ),
            (r#"["login"]"#, "payload json"),
            ("", "payload json"),
        ] {
            assert_eq!(
                with_payload(payload),
                Err(TokenError::Invalid(what)),
                "{payload}"
            );
        }
    }

    #[test]
    fn s26_vector_d_and_every_other_algorithm_are_refused_without_an_hmac() {
        let before = macs();
        assert_eq!(check(D), Err(TokenError::Invalid("signature length")));
        let k = key();
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS384","typ":"JWT"}"#,
            r#"{"alg":"hs256","typ":"JWT"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":["HS256"]}"#,
        ] {
            let t = forge(&k, header, r#"{"login":"karchnu","uid":1002}"#);
            let made = macs();
            assert_eq!(check(&t), Err(TokenError::Invalid("alg")), "{header}");
            assert_eq!(macs(), made, "{header}: no HMAC for a refused header");
        }
        // RS256 "signed" by using some public key as the HMAC key: refused on alg alone.
        let public =
            JwtKey::new(b"-----BEGIN PUBLIC KEY-----\nMFkwEwYH...\n-----END PUBLIC KEY-----\n")
                .unwrap();
        let t = forge(
            &public,
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"login":"karchnu","uid":1002}"#,
        );
        assert_eq!(
            verify(t.as_bytes(), &public, NOW, TokenLimits::default()),
            Err(TokenError::Invalid("alg"))
        );
        for (header, what) in [
            (r#"{"alg":"HS256","typ":"JWS"}"#, "typ"),
            (r#"{"alg":"HS256","typ":1}"#, "typ"),
            (r#"{"alg":"HS256","crit":["exp"]}"#, "crit"),
            (r#"{"alg":"HS256","alg":"HS256"}"#, "header json"),
            (r#"{"alg":"HS256","typ":"JWT","typ":"JWT"}"#, "header json"),
            (r#"["HS256"]"#, "header json"),
        ] {
            let t = forge(&k, header, r#"{"login":"karchnu","uid":1002}"#);
            assert_eq!(check(&t), Err(TokenError::Invalid(what)), "{header}");
        }
        let _ = before;
        // typ in any case, no typ at all, extra header keys: accepted.
        for header in [
            r#"{"alg":"HS256","typ":"jwt"}"#,
            r#"{"alg":"HS256","typ":"JwT"}"#,
            r#"{"alg":"HS256"}"#,
            r#"{"kid":"1","alg":"HS256"}"#,
        ] {
            let t = forge(&k, header, r#"{"login":"karchnu","uid":1002}"#);
            assert_eq!(check(&t).map(|c| c.uid), Ok(1002), "{header}");
        }
    }

    #[test]
    fn s26_malformed_segments_are_refused_before_any_hmac() {
        let before = macs();
        let huge = format!("{A}{}", "A".repeat(90_000));
        let (h, rest) = A.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let cases = [
            (huge, "length"),
            (format!("{h}.{p}"), "segments"),
            (format!("{h}.{p}.{s}.{s}"), "segments"),
            (format!("{A}."), "segments"),
            (String::new(), "segments"),
            (format!("{h}=.{p}.{s}"), "header base64"),
            (format!("{h}.{p}=.{s}"), "payload base64"),
            (format!("{h}.{p}.{s}="), "signature base64"),
            (
                format!("{h}.{p}.{}+", &s[..s.len() - 1]),
                "signature base64",
            ),
            (
                format!("{h}.{p}.{}D", &s[..s.len() - 1]),
                "signature base64",
            ), // trailing bits
            (format!("{h}.{p} .{s}"), "payload base64"),
            (format!("{h}.{p}.{}", &s[..40]), "signature length"),
            (format!("{h}.{p}.{s}AAAA"), "signature length"),
            (format!("{h}.{p}."), "signature length"),
        ];
        for (t, what) in &cases {
            assert_eq!(check(t), Err(TokenError::Invalid(what)), "{t}");
        }
        assert_eq!(macs(), before, "no HMAC was computed for any of them");
        // A token of exactly max_len bytes is not refused for its length.
        let limits = TokenLimits {
            max_len: A.len(),
            leeway_secs: 60,
        };
        assert!(verify(A.as_bytes(), &key(), NOW, limits).is_ok());
        let limits = TokenLimits {
            max_len: A.len() - 1,
            leeway_secs: 60,
        };
        assert_eq!(
            verify(A.as_bytes(), &key(), NOW, limits),
            Err(TokenError::Invalid("length"))
        );
    }

    #[test]
    fn s26_wrong_signature_is_invalid_never_expired() {
        let (signed, _) = B.rsplit_once('.').unwrap();
        let (_, a_sig) = A.rsplit_once('.').unwrap();
        let forged = format!("{signed}.{a_sig}");
        assert_eq!(check(&forged), Err(TokenError::Invalid("signature")));
        let mut flipped = A.as_bytes().to_vec();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            verify(&flipped, &key(), NOW, TokenLimits::default()),
            Err(TokenError::Invalid("signature"))
        );
    }

    #[test]
    fn s27_one_trailing_newline_is_stripped_vector_c() {
        let c = JwtKey::from_file_bytes(b"secret-key\n\n").unwrap();
        assert_eq!(c, JwtKey::new(b"secret-key\n").unwrap());
        assert_eq!(
            verify(A.as_bytes(), &c, NOW, TokenLimits::default()),
            Err(TokenError::Invalid("signature"))
        );
        let with_c = mint(&c, 1002, "karchnu", None);
        assert_eq!(
            with_c.rsplit_once('.').unwrap().1,
            "lAWr0ZGBEsEZ3oElgb-P_ltgXbJJzBq4Q0ZIPx5S2HI"
        );
        assert_eq!(
            JwtKey::from_file_bytes(b"secret-key").unwrap(),
            key(),
            "no newline: kept"
        );
        assert_eq!(JwtKey::from_file_bytes(b""), Err(KeyError::Empty));
        assert_eq!(JwtKey::from_file_bytes(b"\n"), Err(KeyError::Empty));
        assert_eq!(JwtKey::new(b""), Err(KeyError::Empty));
        assert!(
            JwtKey::from_file_bytes(b"\n\n").is_ok(),
            "the key \\n is not empty"
        );
        let generated = JwtKey::generated_file_contents(&[0xab; 32]);
        assert_eq!(generated.len(), 65);
        assert_eq!(JwtKey::from_file_bytes(&generated).unwrap().0.len(), 64);
        assert_eq!(format!("{:?}", key()), "JwtKey(10 bytes)");
    }

    #[test]
    fn s28_exp_and_nbf_with_60_s_leeway_vector_b() {
        const EXP: i64 = 1_700_000_000;
        let lim = TokenLimits::default();
        assert_eq!(
            verify(B.as_bytes(), &key(), NOW, lim),
            Err(TokenError::Expired)
        );
        assert_eq!(mint(&key(), 1002, "karchnu", Some(EXP as u64)), B);
        let at = |now| verify(B.as_bytes(), &key(), now, lim).map(|c| c.exp);
        assert_eq!(at(EXP + 59), Ok(Some(EXP as u64)));
        assert_eq!(at(EXP + 60), Ok(Some(EXP as u64)));
        assert_eq!(at(EXP + 61), Err(TokenError::Expired));
        assert_eq!(at(0), Ok(Some(EXP as u64)));
        let nbf = forge(
            &key(),
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"login":"k","uid":1,"nbf":1700000000}"#,
        );
        let at = |now| verify(nbf.as_bytes(), &key(), now, lim).map(|c| c.nbf);
        assert_eq!(at(EXP - 59), Ok(Some(EXP as u64)));
        assert_eq!(at(EXP - 60), Ok(Some(EXP as u64)));
        assert_eq!(at(EXP - 61), Err(TokenError::Expired));
        assert_eq!(at(i64::MIN), Err(TokenError::Expired));
        assert_eq!(at(i64::MAX), Ok(Some(EXP as u64)));
        assert_eq!(TokenError::Expired.to_string(), "token-expired");
        assert_eq!(TokenError::Invalid("alg").to_string(), "invalid-token: alg");
    }

    #[test]
    fn never_panics_on_truncations_and_random_tokens() {
        for t in [A, B, D] {
            for cut in 0..=t.len() {
                let _ = check(&t[..cut]);
            }
        }
        let mut x = 0x1234_5678_9abc_def1u64;
        let alphabet = b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.-_=+/ \0\xff";
        for round in 0..20_000 {
            let len = round % 160;
            let t: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            assert!(verify(&t, &key(), NOW, TokenLimits::default()).is_err());
        }
    }

    #[test]
    fn unverified_login_reads_the_payload_only() {
        assert_eq!(unverified_login(A).as_deref(), Some("karchnu"));
        assert_eq!(unverified_login("x").as_deref(), None);
        assert_eq!(unverified_login("a.!!.c").as_deref(), None);
        let token = |json: &str| {
            let mut body = Vec::new();
            base64::encode_url_append(json.as_bytes(), &mut body);
            (
                body.len(),
                format!("h.{}.s", String::from_utf8(body).unwrap()),
            )
        };
        assert_eq!(
            unverified_login(&token(r#"{"login":""}"#).1),
            None,
            "an empty login"
        );
        // A payload of exactly MAX_TOKEN base64 characters is read; one longer is not.
        let padded = |n: usize| format!(r#"{{"login":"x","p":"{}"}}"#, "a".repeat(n));
        let at_max = padded(MAX_TOKEN / 4 * 3 - 20);
        assert_eq!(token(&at_max).0, MAX_TOKEN);
        assert_eq!(unverified_login(&token(&at_max).1).as_deref(), Some("x"));
        let over = padded(MAX_TOKEN / 4 * 3 - 17);
        assert!(token(&over).0 > MAX_TOKEN);
        assert_eq!(unverified_login(&token(&over).1), None);
    }

    #[test]
    fn key_error_text() {
        assert_eq!(KeyError::Empty.to_string(), "jwt key: empty");
    }
}
