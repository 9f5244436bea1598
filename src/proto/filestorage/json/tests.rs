use super::*;
use crate::proto::filestorage::reason::Code;
use crate::proto::filestorage::testdata::{notes, FID, NOTES_SHA, TOKEN_A};

fn mid(n: u8) -> MessageId {
    MessageId::parse(format!("1a2b3c4d-0000-4000-8000-00000000000{n}").as_bytes()).unwrap()
}

fn text(out: &[u8]) -> &str {
    std::str::from_utf8(out).unwrap()
}

fn parse(utype: u8, json: &str) -> Result<Request<'_>, Malformed> {
    parse_request(utype, json.as_bytes(), 1024).expect("a request type")
}

fn malformed(utype: u8, json: &str) -> Malformed {
    parse(utype, json).expect_err(json)
}

const AUTH_45: &str = r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","token":"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJsb2dpbiI6ImthcmNobnUiLCJ1aWQiOjEwMDJ9.GnkyHuzPedHnropirz_AgZxD7DCUjou1uaiRujhBpCo","files":[{"name":"notes.txt","size":2500,"sha256":"ed40853ee78d1ad8c3df77e385ac07c7e258ce34fdbb8c9b5b05a6326e79ec29"}],"fid":"0b6e3c1e-2f4d-4a7b-8c9d-112233445566","tags":["work","2024"]}"#;

fn notes_spec(with_sha: bool) -> FileSpec {
    FileSpec {
        name: "notes.txt".into(),
        size: 2500,
        sha256: with_sha.then(|| crate::wire::hex::parse_sha256(NOTES_SHA).unwrap()),
    }
}

#[test]
fn s1_encoders_reproduce_every_json_of_4_5_and_6() {
    let fid: Uuid = FID.parse().unwrap();
    let tags = vec!["work".to_string(), "2024".to_string()];
    let mut out = Vec::new();
    encode_authentication(
        &mut out,
        &mid(1),
        TOKEN_A,
        &[notes_spec(true)],
        &fid,
        &tags,
        None,
    );
    assert_eq!(text(&out), AUTH_45);
    assert_eq!(out.len(), 372);
    out.clear();
    encode_authentication(
        &mut out,
        &mid(1),
        TOKEN_A,
        &[notes_spec(false)],
        &fid,
        &tags,
        None,
    );
    assert_eq!(out.len(), 296, "without sha256 (LEN 00 00 01 29)");

    out.clear();
    let all = [ChunkRange {
        file: 0,
        first: 0,
        end: 3,
    }];
    encode_ok_auth(&mut out, &mid(1), &all, false, 1000, 32);
    assert_eq!(
        text(&out),
        r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","missing":[[0,0,3]],"chunk-size":1000,"window":32}"#
    );
    assert_eq!(out.len(), 119);

    let data = notes();
    let ids = [
        "d85e0a50-7da3-591d-88ef-fd94e7421ed5",
        "ae972e88-9fac-5a70-85bf-4e8c43db00f7",
        "d86b6cad-0fe2-52df-b666-7796d2299707",
    ];
    let edges = [
        ("AAECAwQF", "5OXm5w=="),
        ("6Onq6+zt", "zM3Ozw=="),
        ("0NHS09TV", "v8DBwsM="),
    ];
    for n in 0..3u64 {
        out.clear();
        let chunk = &data[n as usize * 1000..(n as usize * 1000 + 1000).min(2500)];
        encode_transfer(
            &mut out,
            &mid(2 + n as u8),
            &ids[n as usize].parse().unwrap(),
            chunk,
            0,
            n,
        );
        assert_eq!(out.len(), [1461, 1461, 793][n as usize]);
        assert_eq!(out.len(), transfer_json_len(chunk.len(), 0, n));
        let t = text(&out);
        let head = format!(
            r#"{{"message-id":"1a2b3c4d-0000-4000-8000-00000000000{}","chunk":"{}","data":"{}"#,
            2 + n,
            ids[n as usize],
            edges[n as usize].0
        );
        assert!(t.starts_with(&head), "{t}");
        let tail = format!(r#"{}","file":0,"n":{n}}}"#, edges[n as usize].1);
        assert!(t.ends_with(&tail), "{t}");
    }
    out.clear();
    encode_ok(&mut out, &mid(2));
    assert_eq!(
        text(&out),
        r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000002","response":"Ok"}"#
    );
    assert_eq!(out.len(), 69);
    out.clear();
    encode_ok_complete(
        &mut out,
        &mid(4),
        0,
        &"e96bc64c-adca-5bcc-a054-20301277daef".parse().unwrap(),
    );
    assert_eq!(
        text(&out),
        r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000004","response":"Ok","complete":0,"id":"e96bc64c-adca-5bcc-a054-20301277daef"}"#
    );
    assert_eq!(out.len(), 126);
    out.clear();
    encode_error(
        &mut out,
        &mid(9),
        &Reason::with_detail(Code::QuotaExceeded, "bytes"),
    );
    assert_eq!(
        text(&out),
        r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000009","response":"Error","reason":"quota-exceeded: bytes"}"#
    );
    assert_eq!(out.len(), 0x6a - 1);
    out.clear();
    encode_error(&mut out, &MessageId::NIL, &Code::TooLarge.into());
    assert_eq!(
        text(&out),
        r#"{"message-id":"00000000-0000-0000-0000-000000000000","response":"Error","reason":"too-large"}"#
    );
    assert_eq!(out.len(), 93);

    // Section 6.
    out.clear();
    encode_query(&mut out, &mid(5), TOKEN_A, &["work".into()], None, None);
    assert_eq!(
        text(&out),
        format!(
            r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000005","token":"{TOKEN_A}","tags":["work"]}}"#
        )
    );
    assert_eq!(out.len(), 201);
    out.clear();
    let result = QueryResult {
        id: "e96bc64c-adca-5bcc-a054-20301277daef".parse().unwrap(),
        name: "notes.txt".into(),
        size: 2500,
        sha256: crate::wire::hex::parse_sha256(NOTES_SHA).unwrap(),
        tags: vec!["2024".into(), "work".into()],
    };
    assert_eq!(
        encode_ok_query(&mut out, &mid(5), &[result], false, 99_991),
        1
    );
    assert_eq!(
        text(&out),
        r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000005","response":"Ok","results":[{"id":"e96bc64c-adca-5bcc-a054-20301277daef","name":"notes.txt","size":2500,"sha256":"ed40853ee78d1ad8c3df77e385ac07c7e258ce34fdbb8c9b5b05a6326e79ec29","tags":["2024","work"]}],"more":false}"#
    );
    assert_eq!(out.len(), 270);
    out.clear();
    encode_fetch(
        &mut out,
        &mid(6),
        TOKEN_A,
        &"e96bc64c-adca-5bcc-a054-20301277daef".parse().unwrap(),
        2496,
        1000,
    );
    assert_eq!(
        text(&out),
        format!(
            r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000006","token":"{TOKEN_A}","id":"e96bc64c-adca-5bcc-a054-20301277daef","offset":2496,"length":1000}}"#
        )
    );
    assert_eq!(out.len(), 257);
    out.clear();
    encode_ok_fetch(&mut out, &mid(6), &[0xc0, 0xc1, 0xc2, 0xc3], true);
    assert_eq!(
        text(&out),
        r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000006","response":"Ok","data":"wMHCww==","eof":true}"#
    );
    assert_eq!(out.len(), 98);
}

#[test]
fn largest_messages_have_the_lengths_of_the_spec() {
    // TRANSFER of 65,536 bytes, file 1023, a 13-digit n: LEN 87,525 (spec 4.4).
    assert_eq!(
        transfer_json_len(65_536, 1023, 1_000_000_000_000) + 1,
        87_525
    );
    let mut out = Vec::new();
    encode_transfer(
        &mut out,
        &mid(1),
        &Uuid::NIL,
        &[7u8; 65_536],
        1023,
        1_000_000_000_000,
    );
    assert_eq!(out.len() + 1, 87_525);
    // FETCH reply of 65,536 bytes: LEN 87,476 (spec 6).
    out.clear();
    encode_ok_fetch(&mut out, &mid(1), &[0u8; 65_536], false);
    assert_eq!(out.len() + 1, 87_476);
}

#[test]
fn s5_requests_parse_and_unknown_keys_are_ignored() {
    let Request::Authentication(a) = parse(1, AUTH_45).unwrap() else {
        panic!()
    };
    assert_eq!(a.message_id, mid(1));
    assert_eq!(a.token, TOKEN_A);
    assert_eq!(a.files, vec![notes_spec(true)]);
    assert_eq!(a.fid.to_string(), FID);
    assert_eq!(a.tags, ["work", "2024"]);
    assert_eq!(a.chunk_size, None);
    // Any order, whitespace, unknown keys of any type, upper-case UUIDs.
    let j = r#" { "zz" : {"a":[1,2,{"b":null}]}, "tags":[], "fid":"0B6E3C1E-2F4D-4A7B-8C9D-112233445566",
        "chunk-size": 65536, "files":[{"size":0,"name":"e","x":1.5}], "token":"t",
        "message-id":"1A2B3C4D-0000-4000-8000-00000000000F" } "#;
    let Request::Authentication(a) = parse(1, j).unwrap() else {
        panic!()
    };
    assert_eq!(
        a.message_id.as_bytes(),
        b"1A2B3C4D-0000-4000-8000-00000000000F",
        "kept as sent"
    );
    assert_eq!(a.fid.to_string(), FID);
    assert_eq!(a.chunk_size, Some(65_536));
    assert_eq!(a.files[0].size, 0);

    let t = r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000002","chunk":"d85e0a50-7da3-591d-88ef-fd94e7421ed5","data":"QQ==","file":0,"n":9007199254740991}"#;
    let Request::Transfer(t) = parse(3, t).unwrap() else {
        panic!()
    };
    assert!(
        matches!(t.data, Cow::Borrowed("QQ==")),
        "data is not copied"
    );
    assert_eq!(t.n, MAX_INT);

    let q = r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000005","token":"t","tags":["a"],"name":"n\u00e9","after":"e96bc64c-adca-5bcc-a054-20301277daef"}"#;
    let Request::Query(q) = parse(4, q).unwrap() else {
        panic!()
    };
    assert_eq!(q.name.as_deref(), Some("n\u{e9}"));
    assert!(q.after.is_some());
    let f = r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000006","token":"t","id":"e96bc64c-adca-5bcc-a054-20301277daef","offset":0,"length":0}"#;
    let Request::Fetch(f) = parse(5, f).unwrap() else {
        panic!()
    };
    assert_eq!(
        (f.offset, f.length),
        (0, 0),
        "range rules are FETCH's, not the shape's"
    );
    assert!(parse_request(2, b"{}", 1024).is_none());
    assert!(parse_request(0, b"garbage", 1024).is_none());
}

const M: &str = r#""message-id":"1a2b3c4d-0000-4000-8000-000000000007""#;

#[test]
fn s5_every_shape_error_is_malformed_with_the_id_when_readable() {
    let auth = |rest: &str| format!("{{{M},{rest}}}");
    let files = r#""files":[{"name":"a","size":1}]"#;
    let ok_rest = format!(r#""token":"t",{files},"fid":"{FID}","tags":[]"#);
    assert!(parse(1, &auth(&ok_rest)).is_ok());
    let cases = [
        // Missing keys.
        format!(r#"{files},"fid":"{FID}","tags":[]"#),
        format!(r#""token":"t","fid":"{FID}","tags":[]"#),
        format!(r#""token":"t",{files},"tags":[]"#),
        format!(r#""token":"t",{files},"fid":"{FID}""#),
        format!(r#""token":"t","files":[{{"size":1}}],"fid":"{FID}","tags":[]"#),
        format!(r#""token":"t","files":[{{"name":"a"}}],"fid":"{FID}","tags":[]"#),
        // Wrong types.
        format!(r#""token":1,{files},"fid":"{FID}","tags":[]"#),
        format!(r#""token":"t","files":{{}},"fid":"{FID}","tags":[]"#),
        format!(r#""token":"t","files":["a"],"fid":"{FID}","tags":[]"#),
        format!(r#""token":"t",{files},"fid":"{FID}","tags":"a""#),
        format!(r#""token":"t",{files},"fid":"{FID}","tags":[1]"#),
        format!(r#""token":"t",{files},"fid":"{FID}","tags":[null]"#),
        format!(r#""token":"t","files":[{{"name":"a","size":"1"}}],"fid":"{FID}","tags":[]"#),
        format!(r#""token":"t","files":[{{"name":["a"],"size":1}}],"fid":"{FID}","tags":[]"#),
        // Numbers: fraction, exponent, negative, past 2^53-1, past u64.
        format!(r#""token":"t","files":[{{"name":"a","size":1.0}}],"fid":"{FID}","tags":[]"#),
        format!(r#""token":"t","files":[{{"name":"a","size":1e3}}],"fid":"{FID}","tags":[]"#),
        format!(r#""token":"t","files":[{{"name":"a","size":-1}}],"fid":"{FID}","tags":[]"#),
        format!(
            r#""token":"t","files":[{{"name":"a","size":9007199254740992}}],"fid":"{FID}","tags":[]"#
        ),
        format!(
            r#""token":"t","files":[{{"name":"a","size":18446744073709551616}}],"fid":"{FID}","tags":[]"#
        ),
        // Files count, sha256 text, chunk-size range, UUIDs.
        format!(r#""token":"t","files":[],"fid":"{FID}","tags":[]"#),
        format!(
            r#""token":"t","files":[{{"name":"a","size":1,"sha256":"{}"}}],"fid":"{FID}","tags":[]"#,
            NOTES_SHA.to_uppercase()
        ),
        format!(
            r#""token":"t","files":[{{"name":"a","size":1,"sha256":"{}"}}],"fid":"{FID}","tags":[]"#,
            &NOTES_SHA[1..]
        ),
        format!(
            r#""token":"t","files":[{{"name":"a","size":1,"sha256":null}}],"fid":"{FID}","tags":[]"#
        ),
        format!(r#"{ok_rest},"chunk-size":999"#),
        format!(r#"{ok_rest},"chunk-size":65537"#),
        format!(r#"{ok_rest},"chunk-size":"1000""#),
        format!(r#""token":"t",{files},"fid":"00000000-0000-0000-0000-000000000000","tags":[]"#),
        format!(r#""token":"t",{files},"fid":"0b6e3c1e2f4d4a7b8c9d112233445566","tags":[]"#),
        format!(
            r#""token":"t",{files},"fid":"0b6e3c1e-2f4d-4a7b-8c9d-11223344556\u0036","tags":[]"#
        ),
        // A duplicate key, known or not, at any level.
        format!(r#"{ok_rest},"token":"u""#),
        format!(r#"{ok_rest},"x":1,"x":1"#),
        format!(
            r#""token":"t","files":[{{"name":"a","size":1,"size":1}}],"fid":"{FID}","tags":[]"#
        ),
        format!(r#"{ok_rest},"x":{{"a":{{"b":1,"b":2}}}}"#),
        format!(r#"{ok_rest},"x":{{"a":1,"\u0061":2}}"#),
    ];
    for rest in &cases {
        let m = malformed(1, &auth(rest));
        assert_eq!(m.message_id, Some(mid(7)), "{rest}: {}", m.what);
    }
    let files_1025 = format!(
        r#""token":"t","files":[{}],"fid":"{FID}","tags":[]"#,
        vec![r#"{"name":"a","size":1}"#; 1025].join(",")
    );
    assert_eq!(malformed(1, &auth(&files_1025)).what, "files count");
    let files_1024 = files_1025.replacen(r#"{"name":"a","size":1},"#, "", 1);
    assert!(parse(1, &auth(&files_1024)).is_ok());

    // TRANSFER: data as an array (the seed read literally), missing n, out of range.
    let t = |rest: &str| format!(r#"{{{M},"chunk":"{FID}",{rest}}}"#);
    assert!(parse(3, &t(r#""data":"","file":0,"n":0"#)).is_ok());
    for rest in [
        r#""data":[1,2],"file":0,"n":0"#,
        r#""data":"","file":0"#,
        r#""data":"","file":-1,"n":0"#,
        r#""data":"","file":0,"n":0.5"#,
        r#""data":null,"file":0,"n":0"#,
    ] {
        assert_eq!(malformed(3, &t(rest)).message_id, Some(mid(7)), "{rest}");
    }
    // QUERY and FETCH.
    for (ut, j) in [
        (4, format!(r#"{{{M},"token":"t"}}"#)),
        (4, format!(r#"{{{M},"token":"t","tags":[],"name":1}}"#)),
        (4, format!(r#"{{{M},"token":"t","tags":[],"after":"x"}}"#)),
        (5, format!(r#"{{{M},"token":"t","id":"{FID}","offset":0}}"#)),
        (
            5,
            format!(r#"{{{M},"token":"t","id":"{FID}","offset":0,"length":1e2}}"#),
        ),
        (5, format!(r#"{{{M},"id":"{FID}","offset":0,"length":1}}"#)),
    ] {
        assert_eq!(malformed(ut, &j).message_id, Some(mid(7)), "{j}");
    }
}

#[test]
fn s5_unreadable_message_id_gives_none() {
    for j in [
        "",
        "{",
        "[]",
        "\"x\"",
        "{}",
        r#"{"message-id":"00000000-0000-0000-0000-000000000000"}"#,
        r#"{"message-id":"1a2b3c4d-0000-4000-8000-00000000000"}"#,
        r#"{"message-id":1}"#,
        r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000007","message-id":"1a2b3c4d-0000-4000-8000-000000000007"}"#,
        r#"{"message-id":"1a2b3c4d-0000-4000-8000-00000000000\u0037"}"#,
        "\u{feff}{}",
    ] {
        assert_eq!(malformed(1, j).message_id, None, "{j:?}");
        assert_eq!(read_message_id(j.as_bytes()), None);
    }
    let ok = format!("{{{M}}}");
    assert_eq!(read_message_id(ok.as_bytes()), Some(mid(7)));
    // Invalid UTF-8 inside a string, and trailing bytes.
    let mut bad = format!("{{{M},\"token\":\"").into_bytes();
    bad.extend_from_slice(&[0xff, b'"', b'}']);
    assert_eq!(parse_object(&bad), Err(JsonError::Syntax));
    // A TRANSFER's JSON under another request type is read as that type, never as a
    // TRANSFER (whole run, proto-filestorage json part: the fast path's `utype == TRANSFER`
    // as `!=` took it for one).
    let t = crate::proto::filestorage::testdata::transfer_json(0);
    assert!(matches!(
        parse_request(utype::TRANSFER, t.as_bytes(), 1024),
        Some(Ok(Request::Transfer(_)))
    ));
    for other in [utype::AUTHENTICATION, utype::QUERY, utype::FETCH] {
        let got = parse_request(other, t.as_bytes(), 1024);
        assert!(
            !matches!(got, Some(Ok(Request::Transfer(_)))),
            "{other}: {got:?}"
        );
    }
    // An object knows whether it is empty; a message id gives back its UUID and shows it;
    // a malformed request says what is wrong (whole run, proto-filestorage json part:
    // `is_empty` as false, `uuid` as the nil one, `Debug` and `Display` as empty).
    assert!(parse_object(b"{}").unwrap().is_empty());
    assert!(!parse_object(format!("{{{M}}}").as_bytes())
        .unwrap()
        .is_empty());
    let id = Uuid::from_bytes([0x5a; 16]);
    let m = MessageId::from_uuid(id);
    assert_eq!(m.uuid(), id);
    assert_eq!(
        format!("{m:?}"),
        "MessageId(5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a5a)"
    );
    let bad = Malformed {
        message_id: None,
        what: "chunk-size",
    };
    assert_eq!(bad.to_string(), "malformed: chunk-size");
    // Each error says what it is (whole run, proto-filestorage json part: Display as empty).
    let said: Vec<String> = [
        JsonError::Syntax,
        JsonError::DuplicateKey,
        JsonError::TooDeep,
        JsonError::NotObject,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(
        said,
        [
            "json: invalid",
            "json: duplicate key",
            "json: nesting deeper than 32",
            "json: not an object"
        ]
    );
    let trailing = format!("{{{M}}}x");
    assert_eq!(parse_object(trailing.as_bytes()), Err(JsonError::Syntax));
    assert_eq!(
        parse_object(format!("{{{M}}} \n").as_bytes()).map(|o| o.len()),
        Ok(1)
    );
    assert_eq!(
        parse_object(format!("{{{M}}}{{}}").as_bytes()),
        Err(JsonError::Syntax)
    );
    assert_eq!(parse_object(b"[1]"), Err(JsonError::NotObject));
    assert_eq!(parse_object(br#"{"a":"\ud800"}"#), Err(JsonError::Syntax));
}

#[test]
fn nesting_of_32_is_accepted_and_33_refused() {
    let nest = |depth: usize| {
        format!(
            "{{\"x\":{}1{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    };
    assert!(parse_object(nest(32).as_bytes()).is_ok());
    assert_eq!(parse_object(nest(33).as_bytes()), Err(JsonError::TooDeep));
    assert_eq!(parse_object(nest(200).as_bytes()), Err(JsonError::TooDeep));
    let objs = |depth: usize| {
        format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth)).replace(":}", ":1}")
    };
    assert!(parse_object(objs(32).as_bytes()).is_ok());
    assert_eq!(parse_object(objs(33).as_bytes()), Err(JsonError::TooDeep));
    let mut deep = nest(33).into_bytes();
    deep.splice(1..1, format!("{M},").into_bytes());
    let m = malformed(1, std::str::from_utf8(&deep).unwrap());
    assert_eq!((m.message_id, m.what), (Some(mid(7)), "nesting"));
}

#[test]
fn duplicates_in_large_objects_are_found_by_sorting() {
    let keys: Vec<String> = (0..20_000).map(|i| format!("\"k{i}\":0")).collect();
    let j = format!("{{{}}}", keys.join(","));
    assert_eq!(parse_object(j.as_bytes()).map(|o| o.len()), Ok(20_000));
    let j = format!("{{{},\"k19999\":1}}", keys.join(","));
    assert_eq!(parse_object(j.as_bytes()), Err(JsonError::DuplicateKey));
    let o = parse_object(br#"{"b":1,"a":true}"#).unwrap();
    assert_eq!(o.keys().collect::<Vec<_>>(), ["b", "a"]);
    assert_eq!(o.get("a"), Some(&Value::Bool(true)));
    assert!(!o.is_empty());
}

#[test]
fn responses_parse() {
    let r = parse_response(br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","missing":[[0,0,3],[2,5,9]],"more":true,"chunk-size":1000,"window":32}"#).unwrap();
    assert_eq!(r.message_id, mid(1));
    let ResponseBody::Ok(f) = r.body else {
        panic!()
    };
    assert_eq!(
        f.missing.unwrap(),
        [
            ChunkRange {
                file: 0,
                first: 0,
                end: 3
            },
            ChunkRange {
                file: 2,
                first: 5,
                end: 9
            }
        ]
    );
    assert_eq!(
        (f.more, f.chunk_size, f.window),
        (Some(true), Some(1000), Some(32))
    );
    let r = parse_response(br#"{"message-id":"00000000-0000-0000-0000-000000000000","response":"Error","reason":"too-large"}"#).unwrap();
    assert_eq!(r.message_id, MessageId::NIL);
    assert_eq!(r.body, ResponseBody::Error("too-large".into()));
    let mut out = Vec::new();
    let res = QueryResult {
        id: Uuid::NIL,
        name: "a\"b".into(),
        size: 1,
        sha256: [1; 32],
        tags: vec!["public".into()],
    };
    encode_ok_query(&mut out, &mid(3), &[res.clone(), res.clone()], true, 99_991);
    let r = parse_response(&out).unwrap();
    let ResponseBody::Ok(f) = r.body else {
        panic!()
    };
    assert_eq!(f.results.unwrap(), [res.clone(), res]);
    assert_eq!(f.more, Some(true));
    for bad in [
        &br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","reason":"x"}"#[..],
        br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"ok"}"#,
        br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Error"}"#,
        br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","missing":[[0,0]]}"#,
        br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","eof":1}"#,
        br#"{"response":"Ok"}"#,
    ] {
        assert!(parse_response(bad).is_err(), "{}", text(bad));
    }
}

#[test]
fn query_reply_stops_before_the_frame_limit() {
    let big = QueryResult {
        id: Uuid::NIL,
        name: "\"".repeat(255),
        size: MAX_INT,
        sha256: [0xab; 32],
        tags: (0..32).map(|i| format!("{i:0>64}")).collect(),
    };
    let results = vec![big; 256];
    let mut out = Vec::new();
    let sent = encode_ok_query(&mut out, &mid(1), &results, false, 99_991);
    assert!(sent > 10 && sent < 256, "{sent}");
    assert!(out.len() <= 99_991, "{}", out.len());
    assert!(out.ends_with(b"],\"more\":true}"));
    let ResponseBody::Ok(f) = parse_response(&out).unwrap().body else {
        panic!()
    };
    assert_eq!(f.results.unwrap().len(), sent);
    // Appended after bytes already in the buffer (replies queued before it), the limit
    // counts only this reply's JSON: the same results go in.
    let mut queued = vec![0u8; 50_000];
    let again = encode_ok_query(&mut queued, &mid(1), &results, false, 99_991);
    assert_eq!((again, &queued[50_000..]), (sent, &out[..]));
    out.clear();
    assert_eq!(encode_ok_query(&mut out, &mid(1), &[], false, 99_991), 0);
    assert!(out.ends_with(b"\"results\":[],\"more\":false}"));
}

/// A reply of exactly `max_json` bytes is sent whole; one byte less leaves the last result out.
#[test]
fn query_reply_of_exactly_the_limit_is_kept_whole() {
    let r = QueryResult {
        id: Uuid::NIL,
        name: "a.txt".into(),
        size: 5,
        sha256: [1; 32],
        tags: vec!["work".into()],
    };
    let results = vec![r; 3];
    let mut out = Vec::new();
    assert_eq!(
        encode_ok_query(&mut out, &mid(1), &results, false, usize::MAX),
        3
    );
    let whole = out.len();
    out.clear();
    assert_eq!(
        encode_ok_query(&mut out, &mid(1), &results, false, whole),
        3
    );
    assert_eq!(out.len(), whole);
    assert!(out.ends_with(b"],\"more\":false}"));
    out.clear();
    assert_eq!(
        encode_ok_query(&mut out, &mid(1), &results, false, whole - 1),
        2
    );
    assert!(out.len() < whole);
    assert!(out.ends_with(b"],\"more\":true}"));
}

#[test]
fn never_panics_on_truncations_and_random_bytes() {
    let fixtures: Vec<Vec<u8>> = vec![
        AUTH_45.as_bytes().to_vec(),
        br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000002","chunk":"d85e0a50-7da3-591d-88ef-fd94e7421ed5","data":"QQ==","file":0,"n":1}"#.to_vec(),
        br#"{"a":[1,-2,3.5,"\u00e9\n",true,false,null,{"b":{}}]}"#.to_vec(),
    ];
    for f in &fixtures {
        for cut in 0..=f.len() {
            for ut in 0..6 {
                let _ = parse_request(ut, &f[..cut], 1024);
            }
            let _ = parse_response(&f[..cut]);
        }
    }
    let mut x = 0xdead_beef_cafe_f00du64;
    let alphabet = b"{}[]\":,0123456789-.eE+truefalsn\\u ab\x00\xff";
    for round in 0..20_000 {
        let len = (round % 64) + 1;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % alphabet.len() as u64) as usize]
            })
            .collect();
        let _ = parse_request(1 + (round % 5) as u8, &bytes, 1024);
        let _ = parse_response(&bytes);
    }
}

#[test]
fn transfer_fast_path_agrees_with_the_strict_parser() {
    let mid = r#""message-id":"1a2b3c4d-0000-4000-8000-000000000002""#;
    let chunk = r#""chunk":"d85e0a50-7da3-591d-88ef-fd94e7421ed5""#;
    let cases = [
        format!(r#"{{{mid},{chunk},"data":"AAECAw==","file":0,"n":0}}"#),
        format!(r#"{{"data":"AAECAw==",{mid},{chunk},"file":0,"n":0}}"#),
        format!(r#"{{{mid},"x":{{"data":"QUJD"}},{chunk},"data":"AAECAw==","file":0,"n":0}}"#),
        format!(r#"{{{mid},"x":"\"data\":\"QUJD",{chunk},"data":"AAECAw==","file":0,"n":0}}"#),
        // A closing brace inside a string is not the object's end: the nested `data` after
        // it is not the top-level one.
        format!(
            r#"{{{mid},"z":"}}","x":{{"data":"QUJD"}},{chunk},"data":"AAECAw==","file":0,"n":0}}"#
        ),
        format!(r#"{{{mid},{chunk},"data":"AAECAw==","data":"AAECAw==","file":0,"n":0}}"#),
        format!(r#"{{{mid},{chunk},"data":"AA\nECAw==","file":0,"n":0}}"#),
        format!(r#"{{{mid},{chunk},"data" : "AAECAw==","file":0,"n":0}}"#),
        format!(r#"{{{mid},{chunk},"data":"QR==","file":0,"n":0}}"#),
        format!(r#"{{{mid},{chunk},"data":"AAECAw==","file":0,"n":0}} x"#),
        format!(r#"{{{mid},{chunk},"data":"AAECAw==","file":0,"n":0.5}}"#),
        format!(r#"{{{mid},{chunk},"data":"AAECAw==","file":0}}"#),
        format!(r#"{{{mid},{chunk},"data":"","file":0,"n":0}}"#),
        format!(r#"[{{{mid},{chunk},"data":"AAECAw==","file":0,"n":0}}]"#),
        format!(
            r#"{{{mid},{chunk},"data":"AAECAw==","file":0,"n":0,"y":{}{}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        ),
    ];
    let mut fast_taken = 0;
    for json in &cases {
        let full = parse_full(utype::TRANSFER, json.as_bytes(), 1024);
        let whole = parse_request(utype::TRANSFER, json.as_bytes(), 1024).unwrap();
        assert_eq!(whole, full, "{json}");
        if let Some(t) = transfer_fast(json.as_bytes()) {
            fast_taken += 1;
            assert_eq!(Ok(Request::Transfer(t)), full, "{json}");
        }
    }
    assert_eq!(
        fast_taken, 6,
        "the compact well-formed cases take the fast path"
    );
    // Truncations never panic and agree too.
    let json = cases[0].as_bytes();
    for cut in 0..json.len() {
        let j = &json[..cut];
        assert_eq!(
            parse_request(utype::TRANSFER, j, 1024).unwrap(),
            parse_full(utype::TRANSFER, j, 1024)
        );
    }
}

#[test]
fn fetch_reply_fast_path_agrees_with_the_strict_parser() {
    let mid = r#""message-id":"1a2b3c4d-0000-4000-8000-000000000006""#;
    let cases = [
        format!(r#"{{{mid},"response":"Ok","data":"wMHCww==","eof":true}}"#),
        format!(r#"{{"data":"wMHCww==",{mid},"response":"Ok","eof":false}}"#),
        format!(r#"{{{mid},"response":"Ok","data":"","eof":true}}"#),
        format!(r#"{{{mid},"response":"Error","reason":"not-found","data":"QUJD"}}"#),
        format!(r#"{{{mid},"response":"Ok","x":{{"data":"QUJD"}},"data":"wMHCww==","eof":true}}"#),
        format!(r#"{{{mid},"response":"Ok","x":"\"data\":\"QUJD","data":"wMHCww==","eof":true}}"#),
        format!(r#"{{{mid},"response":"Ok","data":"wMHCww==","data":"wMHCww==","eof":true}}"#),
        format!(r#"{{{mid},"response":"Ok","data":"wMHC\nww==","eof":true}}"#),
        format!(r#"{{{mid},"response":"Ok","data":"QR==","eof":true}}"#),
        format!(r#"{{{mid},"response":"Ok","data":"wMHCww==","eof":true}} x"#),
        format!(r#"{{{mid},"response":"Ok","data":"wMHCww==","eof":1}}"#),
        format!(r#"{{{mid},"response":"Ok","reason":"x","data":"wMHCww==","eof":true}}"#),
        r#"{"message-id":"00000000-0000-0000-0000-000000000000","response":"Ok","data":"QUJD"}"#
            .to_string(),
        format!(r#"[{{{mid},"response":"Ok","data":"wMHCww==","eof":true}}]"#),
    ];
    let mut fast_taken = 0;
    for json in &cases {
        let full = response_full(json.as_bytes());
        assert_eq!(parse_response(json.as_bytes()), full, "{json}");
        if let Some(r) = response_fast(json.as_bytes()) {
            fast_taken += 1;
            assert_eq!(Ok(r), full, "{json}");
        }
    }
    assert_eq!(
        fast_taken, 7,
        "the well-formed single-data cases take the fast path"
    );
    let ok = parse_response(cases[0].as_bytes()).unwrap();
    let ResponseBody::Ok(f) = ok.body else {
        panic!("not Ok");
    };
    assert_eq!(f.data.as_deref(), Some("wMHCww=="));
    assert!(
        matches!(f.data, Some(Cow::Borrowed(_))),
        "data borrowed, not copied"
    );
    // Truncations never panic and agree too.
    let json = cases[0].as_bytes();
    for cut in 0..json.len() {
        assert_eq!(parse_response(&json[..cut]), response_full(&json[..cut]));
    }
}
