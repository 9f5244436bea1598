//! filestorage codec targets: the libIPC frame (current and legacy), the message JSON with its
//! encoders, and the JWT check.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::alloc::Meter;
use super::{check_prefix, check_split, cuts, prefixes, Log, Script};
use crate::proto::filestorage::base64;
use crate::proto::filestorage::frame::{
    nil_reply, put_frame, Decoded, FrameDecoder, Framing, LEGACY_MAX_JSON, MAX_LEN,
};
use crate::proto::filestorage::json::{
    encode_authentication, encode_fetch, encode_ok, encode_ok_auth, encode_ok_complete,
    encode_ok_fetch, encode_ok_query, encode_query, encode_transfer, parse_request, parse_response,
    read_message_id, utype, OkFields, Request, ResponseBody,
};
use crate::proto::filestorage::reason::Code;
use crate::proto::filestorage::token::{
    mint, verify, Claims, JwtKey, TokenError, TokenLimits, MAX_UID,
};

/// The largest frame on the wire, header included (legacy: T, LEN, UTYPE, JSON).
const MAX_WIRE_FRAME: usize = 6 + LEGACY_MAX_JSON as usize;

/// `seed | legacy allowed | stream`: whole, in pieces, read exactly as wanted; each frame
/// re-encoded in the connection's framing decodes to itself.
pub fn filestorage_frame(data: &[u8]) {
    let mut s = Script::new(data);
    let seed = s.u8();
    let legacy = s.bool();
    let input = s.rest();
    let (whole, framing) = frames(legacy, input, &[input.len()]);
    check_split(
        "libipc frame",
        &whole,
        &frames(legacy, input, &cuts(seed, input.len())).0,
    );
    check_split("libipc frame read as wanted", &whole, &exact(legacy, input));
    for at in prefixes(seed, input.len()) {
        check_prefix(
            "libipc frame",
            at,
            &frames(legacy, &input[..at], &[at]).0,
            &whole,
        );
    }
    let framing = framing.unwrap_or(Framing::Current);
    let mut out = Vec::new();
    nil_reply(&mut out, framing, Code::Malformed);
    let mut d = FrameDecoder::new(framing == Framing::Legacy);
    d.extend(&out);
    match d.next_frame() {
        Ok(Some(Decoded::Frame(f))) => {
            assert!(
                f.utype == utype::RESPONSE && parse_response(f.json).is_ok(),
                "nil reply"
            )
        }
        other => panic!("the nil reply decodes as {other:?}"),
    }
}

fn frames(legacy: bool, input: &[u8], ends: &[usize]) -> (Log, Option<Framing>) {
    let mut d = FrameDecoder::new(legacy);
    let (mut log, mut prev) = (Log::default(), 0);
    'feed: for &end in ends {
        d.extend(&input[prev..end]);
        prev = end;
        let framing = d.framing();
        loop {
            match d.next_frame() {
                Ok(Some(Decoded::Frame(f))) => {
                    let framing = framing.expect("a frame without a framing");
                    assert!((2..MAX_LEN as usize).contains(&f.json.len()), "json length");
                    let mut again = Vec::new();
                    put_frame(&mut again, framing, f.utype, f.json);
                    let mut d2 = FrameDecoder::new(framing == Framing::Legacy);
                    d2.extend(&again);
                    assert_eq!(d2.next_frame(), Ok(Some(Decoded::Frame(f))), "round trip");
                    log.event(f);
                }
                Ok(Some(Decoded::PeerClosing)) => {
                    log.event("closing");
                    break 'feed;
                }
                Ok(None) => break,
                Err(e) => {
                    log.error(e);
                    break 'feed;
                }
            }
        }
    }
    (log, d.framing())
}

/// Reads only what the decoder wants, as the server's exact reads do.
fn exact(legacy: bool, input: &[u8]) -> Log {
    let mut d = FrameDecoder::new(legacy);
    let (mut log, mut pos, mut meter) = (Log::default(), 0, Meter::default());
    loop {
        let want = d.wanted();
        assert!(
            want <= MAX_WIRE_FRAME && d.buffered() + want <= MAX_WIRE_FRAME,
            "wants too much"
        );
        let n = want.min(input.len() - pos);
        meter.enter();
        d.extend(&input[pos..pos + n]);
        meter.leave();
        pos += n;
        match d.next_frame() {
            Ok(Some(Decoded::Frame(f))) => log.event(f),
            Ok(Some(Decoded::PeerClosing)) => {
                log.event("closing");
                break;
            }
            Ok(None) if n == 0 => break,
            Ok(None) => {}
            Err(e) => {
                log.error(e);
                break;
            }
        }
    }
    meter.check("libipc frame decoder", 4 * MAX_WIRE_FRAME + 64);
    log
}

/// `utype | max_files | json`: every parser; each request or response parsed re-encodes to
/// itself, and the id a refusal names is the one `read_message_id` reads.
pub fn filestorage_json(data: &[u8]) {
    let mut s = Script::new(data);
    let ut = s.u8() % 6;
    let max_files = 1 + usize::from(s.u8() % 16);
    let json = s.rest();
    match parse_request(ut, json, max_files) {
        None => assert!(!matches!(ut, 1 | 3 | 4 | 5), "a request type refused"),
        Some(Err(m)) => assert_eq!(m.message_id, read_message_id(json), "refusal's id"),
        Some(Ok(req)) => {
            assert_eq!(read_message_id(json), Some(req.message_id()));
            let mut out = Vec::new();
            match &req {
                Request::Authentication(a) => {
                    assert!(!a.files.is_empty() && a.files.len() <= max_files);
                    encode_authentication(
                        &mut out,
                        &a.message_id,
                        &a.token,
                        &a.files,
                        &a.fid,
                        &a.tags,
                        a.chunk_size,
                    )
                }
                Request::Transfer(t) => {
                    let mut bytes = Vec::new();
                    if base64::decode_append(t.data.as_bytes(), &mut bytes).is_err() {
                        return;
                    }
                    encode_transfer(&mut out, &t.message_id, &t.chunk, &bytes, t.file, t.n)
                }
                Request::Query(q) => encode_query(
                    &mut out,
                    &q.message_id,
                    &q.token,
                    &q.tags,
                    q.name.as_deref(),
                    q.after.as_ref(),
                ),
                Request::Fetch(f) => {
                    encode_fetch(&mut out, &f.message_id, &f.token, &f.id, f.offset, f.length)
                }
            }
            assert_eq!(
                parse_request(ut, &out, max_files),
                Some(Ok(req)),
                "request round trip"
            );
        }
    }
    let Ok(r) = parse_response(json) else {
        return;
    };
    let ResponseBody::Ok(f) = &r.body else {
        return;
    };
    let mid = &r.message_id;
    let mut out = Vec::new();
    let none = OkFields::default();
    match f {
        f if *f == none => encode_ok(&mut out, mid),
        OkFields {
            missing: Some(m),
            chunk_size: Some(c),
            window: Some(w),
            more,
            ..
        } if *f
            == (OkFields {
                missing: Some(m.clone()),
                chunk_size: Some(*c),
                window: Some(*w),
                more: *more,
                ..none.clone()
            })
            && *more != Some(false) =>
        {
            encode_ok_auth(&mut out, mid, m, more.is_some(), *c, *w)
        }
        OkFields {
            complete: Some(c),
            id: Some(id),
            ..
        } if *f
            == (OkFields {
                complete: Some(*c),
                id: Some(*id),
                ..none.clone()
            }) =>
        {
            encode_ok_complete(&mut out, mid, *c, id)
        }
        OkFields {
            results: Some(rs),
            more: Some(more),
            ..
        } if *f
            == (OkFields {
                results: Some(rs.clone()),
                more: Some(*more),
                ..none.clone()
            }) =>
        {
            assert_eq!(
                encode_ok_query(&mut out, mid, rs, *more, usize::MAX),
                rs.len()
            );
        }
        OkFields {
            data: Some(d),
            eof: Some(eof),
            ..
        } if *f
            == (OkFields {
                data: Some(d.clone()),
                eof: Some(*eof),
                ..none.clone()
            }) =>
        {
            let mut bytes = Vec::new();
            if base64::decode_append(d.as_bytes(), &mut bytes).is_err() {
                return;
            }
            encode_ok_fetch(&mut out, mid, &bytes, *eof)
        }
        _ => return,
    }
    assert_eq!(parse_response(&out), Ok(r), "response round trip");
}

const KEY: &[u8] = b"secret-key";

/// `mode | ...`. Mode 0: any token. 1: `header chunk | payload`, signed with the key, checked,
/// and checked again with the signature or the key changed. 2: minted claims verify to
/// themselves.
pub fn filestorage_token(data: &[u8]) {
    let mut s = Script::new(data);
    let key = JwtKey::new(KEY).expect("a key");
    let other = JwtKey::new(b"secret-kez").expect("a key");
    let now = 1_750_000_000 + i64::from(s.u16());
    let limits = TokenLimits::default();
    match s.u8() % 3 {
        0 => {
            if let Ok(c) = verify(s.rest(), &key, now, limits) {
                assert!(u64::from(c.uid) <= MAX_UID && !c.login.is_empty());
            }
        }
        1 => {
            let header = s.chunk();
            let payload = s.rest();
            let mut token = Vec::new();
            base64::encode_url_append(header, &mut token);
            token.push(b'.');
            base64::encode_url_append(payload, &mut token);
            let mut mac = Hmac::<Sha256>::new_from_slice(KEY).expect("any key length");
            mac.update(&token);
            let tag = mac.finalize().into_bytes();
            token.push(b'.');
            base64::encode_url_append(&tag, &mut token);
            let r = verify(&token, &key, now, limits);
            if token.len() <= limits.max_len {
                assert_ne!(
                    r,
                    Err(TokenError::Invalid("signature")),
                    "our own signature refused"
                );
            }
            if let Ok(c) = &r {
                assert!(u64::from(c.uid) <= MAX_UID && !c.login.is_empty());
            }
            if r.is_ok() {
                // A forgery never passes, and never reaches the claims (never `Expired`).
                let forged = verify(&token, &other, now, limits);
                assert_eq!(forged, Err(TokenError::Invalid("signature")), "another key");
                let last = token.len() - 2;
                token[last] = if token[last] == b'A' { b'B' } else { b'A' };
                assert!(
                    verify(&token, &key, now, limits).is_err(),
                    "a changed signature passed"
                );
            }
        }
        _ => {
            let uid = s.u32() & MAX_UID as u32;
            let exp = s.bool().then(|| s.uint(5));
            let login = s.text();
            if login.is_empty() {
                return;
            }
            let token = mint(&key, uid, &login, exp);
            let expected = match exp {
                Some(e) if i128::from(now) > i128::from(e) + 60 => Err(TokenError::Expired),
                _ => Ok(Claims {
                    uid,
                    login,
                    exp,
                    nbf: None,
                }),
            };
            if token.len() <= limits.max_len {
                assert_eq!(
                    verify(token.as_bytes(), &key, now, limits),
                    expected,
                    "minted"
                );
                assert!(
                    verify(token.as_bytes(), &other, now, limits).is_err(),
                    "another key"
                );
            }
        }
    }
}
