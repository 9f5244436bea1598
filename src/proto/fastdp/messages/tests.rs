use super::*;
use crate::proto::fastdp::json::FieldError;

const AAAA_SHA: &str = "63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201";
const TID: &str = "3d0f6c1a-5b7e-4e21-9a51-7f2c0e9b4d10";

fn sha(hex: &str) -> [u8; 32] {
    crate::wire::hex::parse_sha256(hex).unwrap()
}

fn aaaa_header() -> Header {
    Header::new(
        4096,
        4,
        Compress::None,
        "a.txt",
        TransferId::parse(TID).unwrap(),
        Checksum(sha(AAAA_SHA)),
    )
    .unwrap()
}

const HEADER_213: &str = r#"{"OneChunk":4096,"FullChunk":1,"FullSize":4,"DPVersion":"1.2.0","CompressType":"None","FileName":"a.txt","TransferId":"3d0f6c1a-5b7e-4e21-9a51-7f2c0e9b4d10","Checksum":"sha256:63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201"}"#;

#[test]
fn example_2_3_header_is_256_bytes() {
    let h = Header::new(
        262_144,
        3_000_000,
        Compress::Zstd,
        "rand3m.bin",
        TransferId::parse(TID).unwrap(),
        Checksum([0; 32]),
    )
    .unwrap();
    assert_eq!(h.full_chunk, 12);
    let json = h.encode();
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        r#"{"OneChunk":262144,"FullChunk":12,"FullSize":3000000,"DPVersion":"1.2.0","CompressType":"Zstd","FileName":"rand3m.bin","TransferId":"3d0f6c1a-5b7e-4e21-9a51-7f2c0e9b4d10","Checksum":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}"#
    );
    assert_eq!(json.len(), 256);
    let mut jmsg = Vec::new();
    crate::proto::fastdp::frame::put_jmsg(&json, &mut jmsg);
    assert_eq!(&jmsg[..4], &[0, 0, 1, 0]);
    assert_eq!(parse_request(&json), Ok(Request::Push(h)));
}

#[test]
fn example_2_13_header_reply_ack_complete_bytes() {
    let h = aaaa_header();
    let json = h.encode();
    assert_eq!(std::str::from_utf8(&json).unwrap(), HEADER_213);
    assert_eq!(json.len(), 0xf2);
    let reply = ReplyHeader {
        header: h.clone(),
        have: Have::new(),
        max_connections: 8,
    };
    let r = reply.encode();
    assert_eq!(r.len(), 0x11f);
    let text = std::str::from_utf8(&r).unwrap();
    assert_eq!(
        text,
        format!(
            "{{\"Type\":\"Header\",{},\"Have\":[],\"MaxConnections\":8}}",
            &HEADER_213[1..HEADER_213.len() - 1]
        )
    );
    assert_eq!(ReplyHeader::parse(&r), Ok(reply));
    let ack = Message::Ack(vec![(0, 50_687_219)]).encode();
    assert_eq!(ack, br#"{"Type":"Ack","Chunks":[[0,50687219]]}"#);
    assert_eq!(ack.len(), 0x26);
    let empty = Message::Ack(vec![]).encode();
    assert_eq!(empty, br#"{"Type":"Ack","Chunks":[]}"#);
    assert_eq!(empty.len(), 0x1a);
    let complete = Message::Complete {
        file_name: "a.txt".into(),
        checksum: Checksum(sha(AAAA_SHA)),
    };
    let c = complete.encode();
    assert_eq!(
        std::str::from_utf8(&c).unwrap(),
        format!(r#"{{"Type":"Complete","FileName":"a.txt","Checksum":"sha256:{AAAA_SHA}"}}"#)
    );
    assert_eq!(c.len(), 0x7b);
    for m in [
        Message::Ack(vec![(0, 50_687_219)]),
        Message::Ack(vec![]),
        complete,
        Message::Reconnect,
    ] {
        assert_eq!(parse_message(&m.encode()), Ok(m));
    }
    assert_eq!(Message::Reconnect.encode(), br#"{"Type":"Reconnect"}"#);
}

#[test]
fn example_2_8_error_and_2_5_control_frame_bytes() {
    let e = ErrorMsg::new(
        ErrorCode::BadChunk,
        "chunk 7: payload length 5000, expected 4096",
    )
    .with_chunk(Some(7));
    let json = Message::Error(e.clone()).encode();
    assert_eq!(
        json,
        br#"{"Type":"Error","Code":"bad-chunk","Message":"chunk 7: payload length 5000, expected 4096","Chunk":7}"#
    );
    assert_eq!(json.len(), 0x65);
    assert_eq!(parse_message(&json), Ok(Message::Error(e)));
    let c = Message::Error(ErrorMsg::new(ErrorCode::Internal, "source file changed")).encode();
    assert_eq!(
        c,
        br#"{"Type":"Error","Code":"internal","Message":"source file changed"}"#
    );
    assert_eq!(c.len(), 0x42);
    // An unknown code is kept as written and is not final.
    let Ok(Message::Error(u)) = parse_message(br#"{"Type":"Error","Code":"solar-flare"}"#) else {
        panic!()
    };
    assert_eq!(
        (u.code, u.code_text.as_str(), u.message.as_str()),
        (ErrorCode::Unknown, "solar-flare", "")
    );
    assert!(!u.is_final());
    assert_eq!(u.to_string(), "solar-flare: ");
    // A long message is cut at a character boundary.
    let long = ErrorMsg::new(ErrorCode::Internal, "é".repeat(2000));
    let Ok(Message::Error(back)) = parse_message(&Message::Error(long).encode()) else {
        panic!()
    };
    assert_eq!(back.message.len(), MAX_ERROR_MESSAGE);
    // Byte 1,024 inside a character: cut before it, never after.
    let odd = ErrorMsg::new(ErrorCode::Internal, format!("a{}", "é".repeat(2000)));
    let Ok(Message::Error(back)) = parse_message(&Message::Error(odd).encode()) else {
        panic!()
    };
    assert_eq!(back.message.len(), MAX_ERROR_MESSAGE - 1);
}

#[test]
fn f31_error_codes_and_their_finality() {
    let finals = [
        "bad-header",
        "version",
        "unsupported-compression",
        "bad-filename",
        "parameter-mismatch",
        "too-large",
        "not-found",
        "ambiguous",
        "checksum-mismatch",
    ];
    let others = [
        "no-space",
        "bad-chunk",
        "too-many-connections",
        "busy",
        "timeout",
        "internal",
    ];
    for c in finals {
        assert!(ErrorCode::parse(c).is_final(), "{c}");
        assert_eq!(ErrorCode::parse(c).as_str(), c);
    }
    for c in others {
        assert!(!ErrorCode::parse(c).is_final(), "{c}");
        assert_eq!(ErrorCode::parse(c).as_str(), c);
    }
    // Shown to users (in logs and errors) as its wire text.
    for c in finals.iter().chain(&others) {
        assert_eq!(ErrorCode::parse(c).to_string(), *c);
    }
    assert_eq!(ErrorCode::ALL.len(), finals.len() + others.len());
}

#[test]
fn section_3_pull_request_and_reply_bytes() {
    let tid = TransferId::parse("9b2e4f60-1c3d-4a5b-8e7f-0a1b2c3d4e5f").unwrap();
    let req = PullRequest {
        transfer_id: tid,
        target: PullTarget::Name("a.txt".into()),
        accept_zstd: true,
        have: Have::new(),
        one_chunk: None,
        checksum: None,
    };
    let json = req.encode();
    assert_eq!(
        json,
        br#"{"Mode":"Pull","DPVersion":"1.2.0","TransferId":"9b2e4f60-1c3d-4a5b-8e7f-0a1b2c3d4e5f","FileName":"a.txt","CompressType":"Zstd"}"#
    );
    assert_eq!(json.len(), 0x80);
    assert_eq!(parse_request(&json), Ok(Request::Pull(req)));
    let reply = PullReply {
        one_chunk: 262_144,
        full_chunk: 1,
        full_size: 4,
        compress: Compress::None,
        file_name: "a.txt".into(),
        transfer_id: tid,
        checksum: Checksum(sha(AAAA_SHA)),
        have: Have::new(),
        max_connections: 8,
        reconnect_bytes: DEFAULT_RECONNECT_BYTES,
    };
    let r = reply.encode();
    assert_eq!(
        std::str::from_utf8(&r).unwrap(),
        format!(
            r#"{{"Type":"Header","Mode":"Pull","OneChunk":262144,"FullChunk":1,"FullSize":4,"DPVersion":"1.2.0","CompressType":"None","FileName":"a.txt","TransferId":"9b2e4f60-1c3d-4a5b-8e7f-0a1b2c3d4e5f","Checksum":"sha256:{AAAA_SHA}","Have":[],"MaxConnections":8,"ReconnectBytes":524288000}}"#
        )
    );
    assert_eq!(r.len(), 0x14a);
    assert_eq!(PullReply::parse(&r), Ok(reply.clone()));
    // A push reply is not a pull reply and the other way round.
    assert_eq!(
        PullReply::parse(
            &ReplyHeader {
                header: aaaa_header(),
                have: Have::new(),
                max_connections: 1
            }
            .encode()
        ),
        Err(HeaderError::NotHeader)
    );
    assert!(ReplyHeader::parse(&r).is_err());
}

#[test]
fn pull_request_rules() {
    let base =
        r#""Mode":"Pull","DPVersion":"1.2.0","TransferId":"9b2e4f60-1c3d-4a5b-8e7f-0a1b2c3d4e5f""#;
    let p = |rest: &str| parse_request(format!("{{{base}{rest}}}").as_bytes());
    let sha_hex = "ab".repeat(32);
    let Ok(Request::Pull(r)) = p(&format!(r#","Sha256":"{sha_hex}""#)) else {
        panic!()
    };
    assert_eq!(r.target, PullTarget::Sha256([0xab; 32]));
    assert!(!r.accept_zstd);
    assert_eq!(p(""), Err(HeaderError::PullTarget));
    assert_eq!(
        p(&format!(r#","Sha256":"{sha_hex}","FileName":"a""#)),
        Err(HeaderError::PullTarget)
    );
    assert_eq!(p(r#","Sha256":"AB""#), Err(HeaderError::PullTarget));
    assert_eq!(p(r#","FileName":"""#), Err(HeaderError::PullTarget));
    assert_eq!(
        p(r#","FileName":"dir/a.txt","CompressType":"Zip""#)
            .unwrap_err()
            .code(),
        ErrorCode::UnsupportedCompression
    );
    // A resume (Have) needs both OneChunk and Checksum: either alone is refused.
    for partial in [
        r#","FileName":"a","Have":[[0,2]]"#.to_string(),
        r#","FileName":"a","Have":[[0,2]],"OneChunk":4096"#.to_string(),
        format!(r#","FileName":"a","Have":[[0,2]],"Checksum":"sha256:{AAAA_SHA}""#),
    ] {
        assert_eq!(p(&partial), Err(HeaderError::ResumeFields), "{partial}");
    }
    let resume = format!(
        r#","FileName":"a","Have":[[3,4],[0,2],[2,3]],"OneChunk":4096,"Checksum":"sha256:{AAAA_SHA}""#
    );
    let Ok(Request::Pull(r)) = p(&resume) else {
        panic!()
    };
    assert_eq!(r.have.ranges(), &[(0, 4)]);
    assert_eq!(r.one_chunk, Some(4096));
    let again = parse_request(&r.encode()).unwrap();
    assert_eq!(again, Request::Pull(r));
    assert_eq!(
        p(r#","FileName":"a","OneChunk":100"#),
        Err(HeaderError::OneChunk(100))
    );
    let other = r#"{"Mode":"Pull","DPVersion":"1.0.0","TransferId":"9b2e4f60-1c3d-4a5b-8e7f-0a1b2c3d4e5f","FileName":"a"}"#;
    assert_eq!(
        parse_request(other.as_bytes()).unwrap_err().code(),
        ErrorCode::Version
    );
    assert_eq!(
        parse_request(br#"{"Mode":"Sideways"}"#),
        Err(HeaderError::UnknownMode("Sideways".into()))
    );
}

/// The 2.13 header with one field's raw JSON replaced.
fn header_with(key: &str, raw: &str) -> Vec<u8> {
    let mut o: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(HEADER_213).unwrap();
    let mut out = String::from("{");
    let mut first = true;
    let mut seen = false;
    for (k, v) in o.iter_mut() {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&serde_json::to_string(k).unwrap());
        out.push(':');
        if k == key {
            seen = true;
            out.push_str(raw);
        } else {
            out.push_str(&v.to_string());
        }
    }
    if !seen && !raw.is_empty() {
        out.push_str(&format!(",{}:{raw}", serde_json::to_string(key).unwrap()));
    }
    out.push('}');
    out.into_bytes()
}

fn header_without(key: &str) -> Vec<u8> {
    let mut o: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(HEADER_213).unwrap();
    o.remove(key);
    serde_json::to_vec(&o).unwrap()
}

#[test]
fn f6_header_validation() {
    use HeaderError as E;
    assert_eq!(
        parse_request(HEADER_213.as_bytes()),
        Ok(Request::Push(aaaa_header()))
    );
    // Any key order, unknown keys ignored (F5), explicit Push kept for the echo.
    let reordered = header_with("Mode", r#""Push""#);
    let Ok(Request::Push(h)) = parse_request(&reordered) else {
        panic!()
    };
    assert_eq!(h.mode, Some(Mode::Push));
    assert!(h.same_parameters(&aaaa_header()));
    assert_eq!(
        h.encode(),
        [
            &HEADER_213.as_bytes()[..HEADER_213.len() - 1],
            br#","Mode":"Push"}"#
        ]
        .concat()
    );
    assert!(parse_request(&header_with("Extra", r#"{"nested":[1,2]}"#)).is_ok());
    let cases: Vec<(Vec<u8>, HeaderError)> = vec![
        (
            header_with("FullChunk", "2"),
            E::FullChunk {
                got: 2,
                expected: 1,
            },
        ),
        (
            header_with("FullChunk", "0"),
            E::FullChunk {
                got: 0,
                expected: 1,
            },
        ),
        (header_with("OneChunk", "4095"), E::OneChunk(4095)),
        (header_with("OneChunk", "67108865"), E::OneChunk(67_108_865)),
        (
            header_with("OneChunk", "\"4096\""),
            E::Field(FieldError::Mistyped("OneChunk")),
        ),
        (
            header_with("OneChunk", "4096.0"),
            E::Field(FieldError::Mistyped("OneChunk")),
        ),
        (
            header_with("FullSize", "-4"),
            E::Field(FieldError::Mistyped("FullSize")),
        ),
        (
            header_with("FullSize", "4e0"),
            E::Field(FieldError::Mistyped("FullSize")),
        ),
        (
            header_with("FullSize", "9007199254740992"),
            E::Field(FieldError::OutOfRange("FullSize")),
        ),
        (
            header_with("ReconnectBytes", "-1"),
            E::Field(FieldError::Mistyped("ReconnectBytes")),
        ),
        (
            header_without("Checksum"),
            E::Field(FieldError::Missing("Checksum")),
        ),
        (
            header_without("TransferId"),
            E::Field(FieldError::Missing("TransferId")),
        ),
        (
            header_with("TransferId", r#""3D0F6C1A-5B7E-4E21-9A51-7F2C0E9B4D10""#),
            E::TransferId,
        ),
        (
            header_with("Checksum", &format!(r#""{AAAA_SHA}""#)),
            E::Checksum,
        ),
        (
            header_with("DPVersion", r#""1.1.0""#),
            E::Version("1.1.0".into()),
        ),
        (
            header_with("CompressType", r#""Zip""#),
            E::UnsupportedCompression("Zip".into()),
        ),
        (
            header_with("CompressType", r#""TarGz""#),
            E::UnsupportedCompression("TarGz".into()),
        ),
        (
            header_with("CompressType", r#""zstd""#),
            E::UnsupportedCompression("zstd".into()),
        ),
        (
            header_with("Mode", r#""Both""#),
            E::UnknownMode("Both".into()),
        ),
        (b"[1,2]".to_vec(), E::Field(FieldError::NotObject)),
        (b"\xff\xfe".to_vec(), E::Field(FieldError::NotObject)),
        (
            b"{\"OneChunk\":4096".to_vec(),
            E::Field(FieldError::NotObject),
        ),
    ];
    for (json, want) in cases {
        let got = parse_request(&json).unwrap_err();
        assert_eq!(got, want, "{}", String::from_utf8_lossy(&json));
        assert!(got.to_string().starts_with("header: "));
    }
    let codes = [
        (
            header_with("CompressType", r#""Zip""#),
            ErrorCode::UnsupportedCompression,
        ),
        (header_with("DPVersion", r#""1.0.0""#), ErrorCode::Version),
        (header_with("FullChunk", "7"), ErrorCode::BadHeader),
    ];
    for (json, code) in codes {
        assert_eq!(parse_request(&json).unwrap_err().code(), code);
    }
    // FullChunk up to 4,294,967,294 (chunk ids stay below u32::MAX); one more is refused.
    let sized = |chunks: u64| {
        let mut o: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(HEADER_213).unwrap();
        o.insert("FullSize".into(), (chunks * 4096).into());
        o.insert("FullChunk".into(), chunks.into());
        serde_json::to_vec(&o).unwrap()
    };
    let most = u64::from(MAX_FULL_CHUNK);
    let Ok(Request::Push(h)) = parse_request(&sized(most)) else {
        panic!("{most} chunks refused")
    };
    assert_eq!(h.full_chunk, MAX_FULL_CHUNK);
    assert_eq!(
        parse_request(&sized(most + 1)),
        Err(E::FullChunk {
            got: most + 1,
            expected: most + 1
        })
    );
}

#[test]
fn f28_file_names_of_4_3_are_enforced() {
    for bad in [
        "../x", "/x", "a/b", "..\\x", "", ".", "..", "a\u{0}b", "a\u{1f}", "a\u{7f}", "a\u{85}",
        ".ferry", ".FERRY", "\\",
    ] {
        let raw = serde_json::to_string(bad).unwrap();
        let e = parse_request(&header_with("FileName", &raw)).unwrap_err();
        assert_eq!(e, HeaderError::FileName, "{bad:?}");
        assert_eq!(e.code(), ErrorCode::BadFilename);
    }
    let long = "x".repeat(256);
    assert_eq!(
        parse_request(&header_with("FileName", &format!("\"{long}\""))),
        Err(HeaderError::FileName)
    );
    for good in [
        "x".repeat(255),
        "é.txt".into(),
        ".hidden".into(),
        "a b".into(),
        "..a".into(),
    ] {
        let raw = serde_json::to_string(&good).unwrap();
        assert!(
            parse_request(&header_with("FileName", &raw)).is_ok(),
            "{good:?}"
        );
    }
}

#[test]
fn f7_reply_echoes_the_header_unchanged() {
    let mut h = aaaa_header();
    h.reconnect_bytes = Some(0);
    h.mode = Some(Mode::Push);
    let r = ReplyHeader {
        header: h.clone(),
        have: Have::all(1),
        max_connections: 3,
    };
    let json = r.encode();
    let text = std::str::from_utf8(&json).unwrap();
    assert!(text.starts_with(r#"{"Type":"Header","OneChunk":4096,"#));
    assert!(
        text.ends_with(r#""ReconnectBytes":0,"Mode":"Push","Have":[[0,1]],"MaxConnections":3}"#)
    );
    let back = ReplyHeader::parse(&json).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.header.reconnect_bytes(), 0);
    assert_eq!(aaaa_header().reconnect_bytes(), DEFAULT_RECONNECT_BYTES);
    // Have past FullChunk, MaxConnections 0, another Type.
    let bad_have = String::from_utf8(json.clone())
        .unwrap()
        .replace("[[0,1]]", "[[0,2]]");
    assert_eq!(
        ReplyHeader::parse(bad_have.as_bytes()),
        Err(HeaderError::Have)
    );
    let zero = String::from_utf8(json.clone())
        .unwrap()
        .replace("\"MaxConnections\":3", "\"MaxConnections\":0");
    assert_eq!(
        ReplyHeader::parse(zero.as_bytes()),
        Err(HeaderError::MaxConnections)
    );
    assert_eq!(
        ReplyHeader::parse(br#"{"Type":"Ack","Chunks":[]}"#),
        Err(HeaderError::NotHeader)
    );
}

#[test]
fn have_ranges_are_half_open_sorted_merged_and_capped() {
    let h = Have::normalised(vec![(5, 7), (0, 2), (2, 3), (6, 9), (4, 4)]);
    assert_eq!(h.ranges(), &[(0, 3), (5, 9)]);
    assert_eq!(h.count(), 7);
    assert!(h.contains(0) && h.contains(2) && !h.contains(3) && h.contains(8) && !h.contains(9));
    assert_eq!(h.missing(11).collect::<Vec<_>>(), vec![3, 4, 9, 10]);
    assert_eq!(Have::new().missing(3).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(Have::all(3).missing(3).count(), 0);
    assert!(Have::all(3).is_complete(3) && Have::all(0).is_complete(0));
    assert!(Have::all(0).is_empty());
    assert!(!h.is_complete(9));
    assert_eq!(
        Have::from_chunks([0, 1, 2, 4, 6, 7]).ranges(),
        &[(0, 3), (4, 5), (6, 8)]
    );
    // Every other chunk of 10,000: only the lowest 2,048 ranges are listed.
    let sparse = Have::from_chunks((0..10_000).step_by(2));
    assert_eq!(sparse.ranges().len(), MAX_HAVE_RANGES);
    assert_eq!(sparse.end(), 4095);
    let mut w = Vec::new();
    let mut ow = ObjectWriter::new(&mut w, Style::Compact);
    sparse.write(&mut ow);
    ow.end();
    assert!(w.len() < MAX_JMSG as usize);
    // From the wire: more than 2,048 ranges, empty or reversed ranges, non-u32 are refused.
    let o = Object::parse(br#"{"Have":[[2,1]]}"#).unwrap();
    assert!(parse_have(&o, 10).is_err());
    let o = Object::parse(br#"{"Have":[[0,4294967296]]}"#).unwrap();
    assert!(parse_have(&o, u32::MAX).is_err());
    // Exactly 2,048 ranges are taken; one more is refused.
    let ranges = |n: u64| {
        let many: Vec<String> = (0..n)
            .map(|i| format!("[{},{}]", 2 * i, 2 * i + 1))
            .collect();
        Object::parse(format!(r#"{{"Have":[{}]}}"#, many.join(",")).as_bytes()).unwrap()
    };
    let most = parse_have(&ranges(2048), 10_000).unwrap();
    assert_eq!(most.ranges().len(), MAX_HAVE_RANGES);
    assert!(parse_have(&ranges(2049), 10_000).is_err());
}

#[test]
fn ack_limits_and_splitting() {
    let entries: Vec<(u32, u32)> = (0..5000).map(|i| (i, u32::MAX - i)).collect();
    let mut out = Vec::new();
    put_acks(&entries, &mut out);
    let mut r = crate::proto::fastdp::frame::JmsgReader::new();
    let mut pos = 0;
    let mut seen = Vec::new();
    while pos < out.len() {
        pos += r.feed(&out[pos..]);
        if let Some(m) = r.next_message().unwrap() {
            let Ok(Message::Ack(e)) = parse_message(m) else {
                panic!()
            };
            assert!(e.len() <= MAX_ACK_ENTRIES);
            seen.extend(e);
        }
    }
    assert_eq!(seen, entries);
    let mut empty = Vec::new();
    put_acks(&[], &mut empty);
    assert_eq!(&empty[4..], br#"{"Type":"Ack","Chunks":[]}"#);
    let many: Vec<String> = (0..2049).map(|i| format!("[{i},1]")).collect();
    let json = format!(r#"{{"Type":"Ack","Chunks":[{}]}}"#, many.join(","));
    assert_eq!(
        parse_message(json.as_bytes()),
        Err(MessageError::TooManyEntries(2049))
    );
    assert!(parse_message(br#"{"Type":"Ack","Chunks":[[0,4294967296]]}"#).is_err());
    assert!(parse_message(br#"{"Type":"Ack"}"#).is_err());
    assert_eq!(
        parse_message(br#"{"Type":"Header"}"#),
        Err(MessageError::UnexpectedType("Header".into()))
    );
    assert_eq!(
        parse_message(br#"{"Type":"Complete","FileName":"a","Checksum":"md5:00"}"#),
        Err(MessageError::BadChecksum)
    );
    // What a peer is told (in its Error message) and what the log says.
    for (e, text) in [
        (
            MessageError::Field(FieldError::NotObject),
            "message: not a UTF-8 JSON object",
        ),
        (
            MessageError::Field(FieldError::Missing("Chunks")),
            "message: Chunks missing",
        ),
        (
            MessageError::Field(FieldError::Mistyped("Chunks")),
            "message: Chunks mistyped",
        ),
        (
            MessageError::Field(FieldError::OutOfRange("Chunks")),
            "message: Chunks out of range",
        ),
        (
            MessageError::UnexpectedType("Header".into()),
            "message: unexpected Type \"Header\"",
        ),
        (
            MessageError::TooManyEntries(2049),
            "message: Ack with 2049 entries, at most 2048",
        ),
        (
            MessageError::BadChecksum,
            "message: Complete with a malformed Checksum",
        ),
    ] {
        assert_eq!(e.to_string(), text);
    }
}

#[test]
fn transfer_ids_and_checksums() {
    let t = TransferId::from_random([0xff; 16]);
    assert_eq!(t.as_str(), "ffffffff-ffff-4fff-bfff-ffffffffffff");
    // Logs and errors show them as their wire text.
    assert_eq!(t.to_string(), t.as_str());
    assert_eq!(format!("{t:?}"), format!("TransferId({})", t.as_str()));
    let c = Checksum(EMPTY_SHA256);
    assert_eq!(format!("{c:?}"), c.to_text());
    assert_eq!(
        TransferId::from_random([0; 16]).as_str(),
        "00000000-0000-4000-8000-000000000000"
    );
    assert!(TransferId::parse(TID).is_some());
    for bad in [
        "",
        "3d0f6c1a5b7e4e219a517f2c0e9b4d10",
        "3d0f6c1a-5b7e-4e21-9a51-7f2c0e9b4d1g",
        "3d0f6c1a-5b7e-4e21-9a517-f2c0e9b4d10",
    ] {
        assert!(TransferId::parse(bad).is_none(), "{bad}");
    }
    assert_eq!(
        Checksum(EMPTY_SHA256).to_text(),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert!(Checksum::parse(
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
    )
    .is_none());
}

#[test]
fn one_chunk_policy_of_1_2() {
    assert_eq!(one_chunk_for(0), 262_144);
    assert_eq!(one_chunk_for(10 << 20), 262_144);
    assert_eq!(one_chunk_for((10 << 20) + 1), 1_048_576);
    assert_eq!(one_chunk_for(1 << 30), 1_048_576);
    assert_eq!(one_chunk_for((1 << 30) + 1), 4_194_304);
}

#[test]
fn example_1_2_v110_header_is_198_bytes_in_python_style() {
    let h = V110Header::new(4, V110Compress::None, "a.txt", sha(AAAA_SHA));
    let json = h.encode_python();
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        format!(
            r#"{{"OneChunk": 262144, "FullChunk": 1, "FullSize": 4, "DPVersion": "1.1.0", "CompressType": "None", "FileName": "a.txt", "Checksum": "{AAAA_SHA}"}}"#
        )
    );
    assert_eq!(json.len(), 0xc6);
    assert_eq!(V110Header::parse(&json), Ok(h));
    let empty = V110Header::new(0, V110Compress::TarGz, "e", EMPTY_SHA256);
    assert_eq!(empty.full_chunk, 0);
    assert_eq!(V110Header::parse(&empty.encode_python()), Ok(empty));
    let exact = V110Header::new(1 << 20, V110Compress::Zip, "m", [1; 32]);
    assert_eq!((exact.one_chunk, exact.full_chunk), (262_144, 4));
    let accents = V110Header::new(1, V110Compress::Zstd, "é", [1; 32]);
    assert!(std::str::from_utf8(&accents.encode_python())
        .unwrap()
        .contains(r#""FileName": "\u00e9""#));
    assert_eq!(
        V110Header::parse(&accents.encode_python())
            .unwrap()
            .file_name,
        "é"
    );
}

#[test]
fn f33_v110_header_rules() {
    use V110HeaderError::*;
    let good = V110Header::new(4, V110Compress::None, "a.txt", sha(AAAA_SHA)).encode_python();
    let text = String::from_utf8(good).unwrap();
    let with = |from: &str, to: &str| {
        assert!(text.contains(from), "{from}");
        V110Header::parse(text.replace(from, to).as_bytes())
    };
    assert!(matches!(
        with("\"FullChunk\": 1", "\"FullChunk\": 2"),
        Err(BadHeader(_))
    ));
    assert!(matches!(
        with("\"OneChunk\": 262144", "\"OneChunk\": 0"),
        Err(BadHeader(_))
    ));
    assert!(matches!(
        with("\"OneChunk\": 262144", "\"OneChunk\": 67108865"),
        Err(BadHeader(_))
    ));
    assert!(with(
        "\"OneChunk\": 262144, \"FullChunk\": 1",
        "\"OneChunk\": 1, \"FullChunk\": 4"
    )
    .is_ok());
    // FullChunk up to 4,294,967,294; one more is refused even when it is the right count.
    let chunks = |n: u64| {
        with(
            "\"OneChunk\": 262144, \"FullChunk\": 1, \"FullSize\": 4",
            &format!("\"OneChunk\": 1, \"FullChunk\": {n}, \"FullSize\": {n}"),
        )
    };
    let most = u64::from(MAX_FULL_CHUNK);
    assert_eq!(chunks(most).map(|h| h.full_chunk), Ok(MAX_FULL_CHUNK));
    assert_eq!(chunks(most + 1), Err(BadHeader("wrong FullChunk")));
    assert!(matches!(with("1.1.0", "1.2.0"), Err(BadHeader(_))));
    assert!(matches!(with("\"None\"", "\"Rar\""), Err(BadHeader(_))));
    assert!(matches!(
        with(&format!("\"{AAAA_SHA}\""), "\"abc\""),
        Err(BadHeader(_))
    ));
    assert!(with(AAAA_SHA, &AAAA_SHA.to_uppercase()).is_ok());
    // Each field's fault is named: missing, mistyped, out of range.
    assert_eq!(
        with(", \"Checksum\"", ", \"Sum\""),
        Err(BadHeader("field missing"))
    );
    assert_eq!(
        with("\"FullChunk\": 1", "\"FullChunk\": \"1\""),
        Err(BadHeader("field mistyped"))
    );
    assert_eq!(
        with("\"FullSize\": 4", "\"FullSize\": 9007199254740992"),
        Err(BadHeader("integer out of range"))
    );
    assert_eq!(with("a.txt", "../a.txt"), Err(BadFileName));
    assert_eq!(with("a.txt", ".ferry"), Err(BadFileName));
    assert!(matches!(V110Header::parse(b"null"), Err(BadHeader(_))));
    assert_eq!(BadFileName.to_string(), "1.1.0 header: bad FileName");
    assert_eq!(
        BadHeader("OneChunk out of range").to_string(),
        "1.1.0 header: OneChunk out of range"
    );
}

#[test]
fn never_panics_on_truncations_and_random_bytes() {
    let fixtures: Vec<Vec<u8>> = vec![
        HEADER_213.as_bytes().to_vec(),
        ReplyHeader {
            header: aaaa_header(),
            have: Have::all(1),
            max_connections: 8,
        }
        .encode(),
        Message::Ack(vec![(0, 1), (5, 6)]).encode(),
        Message::Error(ErrorMsg::new(ErrorCode::BadChunk, "x").with_chunk(Some(1))).encode(),
        V110Header::new(4, V110Compress::None, "a.txt", sha(AAAA_SHA)).encode_python(),
    ];
    let all = |b: &[u8]| {
        let _ = parse_request(b);
        let _ = ReplyHeader::parse(b);
        let _ = PullReply::parse(b);
        let _ = parse_message(b);
        let _ = V110Header::parse(b);
    };
    for f in &fixtures {
        for cut in 0..f.len() {
            all(&f[..cut]);
        }
    }
    let mut x = 0x1234_5678_9abc_def1u64;
    for round in 0..3000 {
        let f = &fixtures[round % fixtures.len()];
        let mut b = f.clone();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % b.len() as u64) as usize;
            b[i] = (x >> 32) as u8;
        }
        all(&b);
    }
}

#[test]
fn f8_zip_targz_and_unknown_compression_get_unsupported_compression() {
    for c in ["Zip", "TarGz", "Brotli", "none", ""] {
        let e = parse_request(&header_with("CompressType", &format!("\"{c}\""))).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnsupportedCompression, "{c:?}");
        assert!(e.code().is_final());
    }
    assert_eq!(
        parse_request(&header_with("CompressType", "1"))
            .unwrap_err()
            .code(),
        ErrorCode::BadHeader,
        "a mistyped field is a bad header"
    );
}
