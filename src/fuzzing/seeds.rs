//! The seed corpus: the specs' byte examples and the hostile inputs of the unit tests, in each
//! target's input format. `cargo test --lib fuzzing::seeds -- --ignored` (`make fuzz-seeds`)
//! writes them to `fuzz/corpus/<target>/seed-<name>`; the fuzzer grows the corpus from there.

use std::path::Path;

use crate::proto::cjp2p::wire::{parse_id, DatagramBuilder, Message};
use crate::proto::fastdp::frame::{chunk_header, put_control, put_jmsg, Compress, FIN};
use crate::proto::fastdp::messages::{
    Checksum, ErrorCode, ErrorMsg, Have, Header, Message as DpMessage, PullReply, PullRequest,
    PullTarget, ReplyHeader, TransferId, V110Compress, V110Header,
};
use crate::proto::filestorage::frame::{put_frame, Framing};
use crate::proto::jtp::request::Request;
use crate::proto::jtp::response::{
    put_cancel, put_entry, put_error, put_get_header, put_list_header, put_packet_header,
    put_packets_header, put_watch_event,
};
use crate::proto::tej::frame::vectors::{unhex, VECTORS};

const TOKEN_A: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJsb2dpbiI6ImthcmNobnUiLCJ1aWQiOjEwMDJ9.GnkyHuzPedHnropirz_AgZxD7DCUjou1uaiRujhBpCo";
const AUTH_4_5: &str = concat!(
    r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","#,
    r#""token":"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJsb2dpbiI6ImthcmNobnUiLCJ1aWQiOjEwMDJ9"#,
    r#".GnkyHuzPedHnropirz_AgZxD7DCUjou1uaiRujhBpCo","#,
    r#""files":[{"name":"notes.txt","size":2500,"#,
    r#""sha256":"ed40853ee78d1ad8c3df77e385ac07c7e258ce34fdbb8c9b5b05a6326e79ec29"}],"#,
    r#""fid":"0b6e3c1e-2f4d-4a7b-8c9d-112233445566","tags":["work","2024"]}"#,
);
const OK_4_5: &str = concat!(
    r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","#,
    r#""missing":[[0,0,3]],"chunk-size":1000,"window":32}"#,
);
const REQ_120: &[u8] = b"GET /fastdp-endpoint HTTP/1.1\r\nHost: 127.0.0.1:5423\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-FastDP-Version: 1.2.0\r\n\r\n";
const RESP_120: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-FastDP-Version: 1.2.0\r\n\r\n";
const ID: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn jtp_requests() -> Vec<(&'static str, Vec<u8>)> {
    let mut all = Vec::new();
    for r in [
        Request::List { keep_alive: true },
        Request::GetById {
            keep_alive: true,
            ids: vec![0x84fe30f5845a521f, 7],
        },
        Request::Batch {
            keep_alive: false,
            have: vec![1, 2, 3],
        },
        Request::Cancel,
        Request::Watch,
        Request::ListAndGet { keep_alive: true },
    ] {
        r.encode(&mut all);
    }
    vec![
        ("transcript", cat(&[&[0, 0], &all])),
        ("transcript-bytewise", cat(&[&[1, 0], &all])),
        ("reserved-flags", vec![0, 0, 0x01, 0x02]),
        ("unknown-type", vec![0, 0, 0xfe, 0x00]),
        (
            "overlong-varint",
            vec![3, 0, 0x02, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ),
        (
            "have-count-over-limit",
            vec![0, 1, 0x02, 0x00, 0xc1, 0x84, 0x3d, 0xaa],
        ),
        (
            "million-ids-announced",
            vec![0, 0, 0x02, 0x01, 0xc0, 0x84, 0x3d, 1, 2, 3],
        ),
    ]
}

fn jtp_responses() -> Vec<(&'static str, Vec<u8>)> {
    let mut list = Vec::new();
    put_list_header(2, &mut list);
    put_entry(0x84fe30f5845a521f, 0, "alpha.png", 9332, &mut list);
    put_entry(7, 0x09, "b.jpg", 0, &mut list);
    let mut get = Vec::new();
    put_get_header(2, &mut get);
    put_packet_header(0, 3, 1, &mut get);
    get.extend_from_slice(b"abc");
    put_packet_header(0x08, 0, 2, &mut get);
    let mut batch = Vec::new();
    put_packets_header(*b"JTPB", 1, &mut batch);
    put_packet_header(1, 2, 9, &mut batch);
    batch.extend_from_slice(b"xy");
    put_cancel(&mut batch);
    let mut watch = Vec::new();
    put_watch_event(5, 2, "new.webp", 10, &mut watch);
    put_cancel(&mut watch);
    let mut err = Vec::new();
    put_error(5, "too many requests", &mut err);
    let get_expect: &[u8] = &[1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];
    vec![
        ("list", cat(&[&[0, 0, 1, 0], &list])),
        ("list-bytewise", cat(&[&[1, 0, 1, 0], &list])),
        ("get", cat(&[&[0, 0, 1, 1], &[2], get_expect, &get])),
        ("batch-cancelled", cat(&[&[2, 0, 1, 2], &batch])),
        ("watch", cat(&[&[0, 0, 1, 4], &watch])),
        ("error-between-responses", cat(&[&[0, 0, 0], &err])),
        ("list-count-over-limit", cat(&[&[0, 1, 1, 0], &list])),
        ("unknown-magic", cat(&[&[0, 0, 1, 0], b"JTPX\x00"])),
    ]
}

/// Server machine ops: 0 feed a chunk, 1 response done, 2 poll CANCEL, 3 poll WATCH, 4 EOF.
fn jtp_server_scripts() -> Vec<(&'static str, Vec<u8>)> {
    let feed = |b: &[u8]| cat(&[&[0, b.len() as u8], b]);
    vec![
        (
            "list-keep-alive",
            cat(&[&[4, 1], &feed(&[1, 1]), &[1], &feed(&[3, 0]), &[2, 1]]),
        ),
        (
            "watch-cancel",
            cat(&[&[4, 1], &feed(&[1, 1, 4, 0]), &[1], &feed(&[3, 0]), &[3]]),
        ),
        ("cancel-first", cat(&[&[4, 0], &feed(&[3, 0])])),
        (
            "get-then-eof",
            cat(&[&[1, 0], &feed(&[0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 9]), &[4, 1]]),
        ),
    ]
}

fn tej_frames() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = VECTORS
        .iter()
        .map(|v| {
            (
                format!("vector-{}", v.name),
                cat(&[&[0, 0, 0], &unhex(v.hex)]),
            )
        })
        .collect();
    let file_only = unhex(VECTORS[3].hex);
    out.push(("file-only-bytewise".into(), cat(&[&[1, 0, 0], &file_only])));
    out.push((
        "file-only-small-limits".into(),
        cat(&[&[3, 0x29, 2], &file_only]),
    ));
    out.push(("no-top-bit".into(), vec![0, 0, 0, 0x01, 0x01, 0, 0]));
    out.push((
        "huge-file".into(),
        cat(&[
            &[0, 0, 0],
            &unhex("8001000000000000000100016100ffffffffffffff"),
        ]),
    ));
    out
}

fn cjp2p_datagrams() -> Vec<(&'static str, Vec<u8>)> {
    let id = parse_id(ID).expect("an id");
    let mut b = DatagramBuilder::new(4096);
    for m in [
        Message::AlwaysReturned(r#"{"cookie":"3d7f40e6"}"#.into()),
        Message::PleaseAlwaysReturnThisMessage(r#"{"cookie":"0badf00d"}"#.into()),
        Message::PleaseSendContent {
            id,
            offset: 0,
            length: 4096,
        },
        Message::FerryHello {
            version: 1,
            max_length: 40960,
        },
        Message::PleaseSendPeers,
        Message::Peers(vec![
            "127.0.0.1:24254".parse().expect("addr"),
            "[::1]:9".parse().expect("addr"),
        ]),
        Message::PleaseReturnThisMessage(r#"{"t":1}"#.into()),
        Message::MaybeTheyHaveSome {
            id,
            peers: vec!["10.0.0.1:1".parse().expect("addr")],
        },
        Message::PleaseListContent,
        Message::ContentList(vec![(id, 2)]),
    ] {
        assert!(b.try_push(&m));
    }
    let content = format!(r#"[{{"Content":{{"id":"{ID}","offset":0,"base64":"aGk=","eof":2}}}}]"#);
    vec![
        ("every-message", cat(&[&[0x10, 0], &b.finish()])),
        ("content", cat(&[&[0x05, 0xc0], content.as_bytes()])),
        ("bad-elements", cat(&[&[0, 0], br#"[{"A":1,"B":2},{},3,{"PleaseSendContent":{"id":"x","length":-1,"offset":0.5}}]"#])),
        ("deep", cat(&[&[0, 0], &[b'['; 200]])),
    ]
}

fn dp_header() -> Header {
    let sum =
        Checksum::parse("sha256:63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201")
            .expect("sum");
    let tid = TransferId::parse("3d0f6c1a-5b7e-4e21-9a51-7f2c0e9b4d10").expect("tid");
    Header::new(4096, 4, Compress::None, "a.txt", tid, sum).expect("header")
}

fn jmsg(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_jmsg(json, &mut out);
    out
}

fn fastdp_jmsgs() -> Vec<(&'static str, Vec<u8>)> {
    let h = dp_header();
    let reply = ReplyHeader {
        header: h.clone(),
        have: Have::from_chunks([0]),
        max_connections: 8,
    };
    let pull = PullRequest {
        transfer_id: h.transfer_id,
        target: PullTarget::Name("a.txt".into()),
        accept_zstd: true,
        have: Have::new(),
        one_chunk: None,
        checksum: None,
    };
    let pull_reply = PullReply {
        one_chunk: 4096,
        full_chunk: 1,
        full_size: 4,
        compress: Compress::None,
        file_name: "a.txt".into(),
        transfer_id: h.transfer_id,
        checksum: h.checksum,
        have: Have::new(),
        max_connections: 8,
        reconnect_bytes: 1 << 20,
    };
    let v110 = V110Header::new(4, V110Compress::None, "a.txt", h.checksum.0);
    let error =
        DpMessage::Error(ErrorMsg::new(ErrorCode::BadChunk, "chunk 3: bad").with_chunk(Some(3)));
    let all = [
        h.encode(),
        reply.encode(),
        pull.encode(),
        pull_reply.encode(),
        v110.encode_python(),
        DpMessage::Ack(vec![(0, 50_687_219)]).encode(),
        DpMessage::Reconnect.encode(),
        DpMessage::Complete {
            file_name: "a.txt".into(),
            checksum: h.checksum,
        }
        .encode(),
        error.encode(),
    ];
    let stream: Vec<u8> = all.iter().flat_map(|j| jmsg(j)).collect();
    vec![
        ("every-message", cat(&[&[0], &stream])),
        ("every-message-bytewise", cat(&[&[1], &stream])),
        ("empty-jmsg", vec![0, 0, 0, 0, 0]),
        ("jmsg-over-64k", vec![0, 0, 1, 0, 1, b'{']),
    ]
}

fn fastdp_chunks() -> Vec<(&'static str, Vec<u8>)> {
    // Geometry: OneChunk 4, FullSize 10: chunks of 4, 4, 2.
    let g = [3u8, 0, 10];
    let mut stream = Vec::new();
    for (i, len) in [(1u32, 4u32), (0, 4), (2, 2)] {
        stream.extend_from_slice(&chunk_header(i, len));
        stream.extend(std::iter::repeat_n(b'a' + i as u8, len as usize));
    }
    let mut tail = FIN.to_vec();
    put_control(
        &DpMessage::Error(ErrorMsg::new(ErrorCode::Internal, "x")).encode(),
        &mut tail,
    );
    let mut v110 = Vec::new();
    for (i, len) in [(0u32, 4u32), (1, 4), (2, 2)] {
        v110.extend_from_slice(&chunk_header(i, len));
        v110.extend(std::iter::repeat_n(b'z', len as usize));
    }
    vec![
        ("push", cat(&[&[0, 0], &g, &stream, &tail])),
        ("push-bytewise", cat(&[&[1, 0], &g, &stream, &FIN])),
        (
            "zstd-lengths",
            cat(&[&[0, 1], &g, &chunk_header(0, 1), b"x", &chunk_header(0, 0)]),
        ),
        ("v110", cat(&[&[0, 2], &g, &v110])),
        ("bad-number", cat(&[&[0, 0], &g, &chunk_header(3, 4)])),
    ]
}

fn fastdp_zstd() -> Vec<(&'static str, Vec<u8>)> {
    let data = b"AAAA this chunk repeats, repeats, repeats, repeats itself AAAA";
    let frame = zstd::bulk::compress(data, 3).expect("zstd");
    let n = data.len() as u16;
    vec![
        ("round-trip", cat(&[&[0, 1, 3], data])),
        ("inflate", cat(&[&[0, 0], &n.to_be_bytes(), &[0], &frame])),
        (
            "inflate-bytewise-small-buffer",
            cat(&[&[1, 0], &n.to_be_bytes(), &[0], &frame]),
        ),
        (
            "skippable-frame",
            vec![0, 0, 0, 4, 0, 0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0],
        ),
        ("content-size-lies", cat(&[&[0, 0, 0, 1, 0], &frame])),
    ]
}

fn fastdp_v110() -> Vec<(&'static str, Vec<u8>)> {
    let data = b"the whole file, compressed by cli.py before it is cut into chunks";
    let z = zstd::bulk::compress(data, 3).expect("zstd");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, data).expect("gzip");
    let gz = gz.finish().expect("gzip");
    vec![
        ("zstd", cat(&[&[0, 1, 0, 1, 0], &z])),
        ("zstd-round-trip", cat(&[&[2, 5, 0, 0, 0], data])),
        ("none-over-cap", cat(&[&[0, 0, 0, 0, 4], data])),
        ("zstd-over-cap", cat(&[&[0, 1, 0, 0, 8], &z])),
        ("gzip-without-tar", cat(&[&[0, 3, 0, 1, 0], &gz])),
        (
            "zip-truncated",
            vec![0, 2, 0, 1, 0, b'P', b'K', 3, 4, 20, 0],
        ),
    ]
}

/// Server ops: 0 raw, 1 head, 2 push header, 3 pull request, 4 1.1.0 header, 5 chunk, 6 FIN,
/// 7 Ack, 8 control, 9 clock, 10 EOF, 11 Reconnect, 12 send (pull).
fn fastdp_server_scripts() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        // Head 1.2.0; header of 8,192 bytes (2 chunks); accept with no have; chunks 0 and 1
        // (their decisions: store); FIN; verify: complete.
        (
            "push",
            vec![
                1, 0, 2, 0, 0x20, 0, 1, 0, 0, 0, 5, 0, 1, 1, 5, 1, 1, 1, 9, 1, 0, 6, 1,
            ],
        ),
        (
            "push-zstd",
            vec![1, 0, 2, 1, 0x10, 0, 1, 1, 0, 0, 5, 0, 1, 1, 6, 1],
        ),
        (
            "pull",
            vec![
                1, 0, 3, 1, 0x20, 0, 1, 0, 0, 12, 3, 7, 2, 0, 0, 1, 0, 6, 9, 0, 100,
            ],
        ),
        ("v110", vec![1, 1, 4, 0x10, 0, 1, 5, 1, 1, 1, 1]),
        (
            "raw-head",
            cat(&[&[0, REQ_120.len() as u8], REQ_120, &[10]]),
        ),
        ("timeouts", vec![1, 0, 9, 0x40, 0, 9, 0xff, 0xff]),
    ]
}

/// Push client ops: 0 raw, 1 the 101, 2 a refusal, 3 reply, 4 Ack, 5 Reconnect, 6 Complete,
/// 7 Error, 8 clock, 9 EOF, 10 send.
fn fastdp_push_scripts() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        // Header (None, 8,192 bytes), the 101, the reply, send 2, Ack both (right CRCs), send
        // (FIN), Complete with the right checksum.
        (
            "push",
            vec![
                0, 0x20, 0, 1, 1, 3, 1, 0, 0, 7, 10, 2, 4, 2, 0, 1, 1, 1, 10, 1, 6, 1,
            ],
        ),
        ("refused", vec![0, 0x10, 0, 1, 2]),
        ("eof-before-101", vec![0, 0x10, 0, 1, 9]),
        (
            "raw-101",
            cat(&[
                &[0, 0x10, 0, 1, 0, RESP_120.len() as u8],
                RESP_120,
                &[3, 1, 0, 0, 7],
            ]),
        ),
    ]
}

/// Pull client ops: 0 raw, 1 the 101, 2 reply, 3 chunk, 4 FIN, 5 control, 6 clock, 7 EOF.
fn fastdp_pull_scripts() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "pull",
            vec![
                1, 1, 2, 0x20, 0, 0, 1, 3, 0, 1, 1, 3, 1, 1, 1, 6, 1, 0, 4, 1,
            ],
        ),
        (
            "pull-control",
            vec![0, 1, 2, 0x10, 0, 0, 1, 5, 3, 2, b'x', b'y'],
        ),
        ("eof", vec![0, 1, 7]),
    ]
}

fn fs_frame(utype: u8, json: &str, framing: Framing) -> Vec<u8> {
    let mut f = Vec::new();
    put_frame(&mut f, framing, utype, json.as_bytes());
    f
}

fn filestorage_frames() -> Vec<(&'static str, Vec<u8>)> {
    let cur = cat(&[
        &fs_frame(1, AUTH_4_5, Framing::Current),
        &fs_frame(2, OK_4_5, Framing::Current),
    ]);
    let leg = cat(&[&fs_frame(1, AUTH_4_5, Framing::Legacy), &[0]]);
    vec![
        ("current", cat(&[&[0, 0], &cur])),
        ("current-bytewise", cat(&[&[1, 1], &cur])),
        ("legacy", cat(&[&[0, 1], &leg])),
        ("too-large", vec![0, 0, 0, 1, 0x86, 0xa0, 1]),
        ("legacy-type", vec![0, 1, 1, 0, 0, 0, 2, 1, b'{', b'}', 7]),
    ]
}

fn filestorage_jsons() -> Vec<(&'static str, Vec<u8>)> {
    let transfer = r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000002","chunk":"d85e0a50-7da3-591d-88ef-fd94e7421ed5","data":"AAECAw==","file":0,"n":0}"#;
    let query = format!(
        r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000005","token":"{TOKEN_A}","tags":["work"],"name":"notes.txt"}}"#
    );
    let fetch = format!(
        r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000006","token":"{TOKEN_A}","id":"e96bc64c-adca-5bcc-a054-20301277daef","offset":0,"length":1000}}"#
    );
    let results = r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000005","response":"Ok","results":[{"id":"e96bc64c-adca-5bcc-a054-20301277daef","name":"notes.txt","size":2500,"sha256":"ed40853ee78d1ad8c3df77e385ac07c7e258ce34fdbb8c9b5b05a6326e79ec29","tags":["2024","work"]}],"more":false}"#;
    vec![
        ("authentication", cat(&[&[1, 3], AUTH_4_5.as_bytes()])),
        ("transfer", cat(&[&[3, 0], transfer.as_bytes()])),
        ("query", cat(&[&[4, 0], query.as_bytes()])),
        ("fetch", cat(&[&[5, 0], fetch.as_bytes()])),
        ("ok-auth", cat(&[&[2, 0], OK_4_5.as_bytes()])),
        ("ok-results", cat(&[&[2, 0], results.as_bytes()])),
        (
            "duplicate-key",
            cat(&[
                &[1, 0],
                br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","message-id":"x"}"#,
            ]),
        ),
        ("deep", cat(&[&[4, 0], &[b'['; 40]])),
    ]
}

fn filestorage_tokens() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("vector-a", cat(&[&[0, 0, 0], TOKEN_A.as_bytes()])),
        (
            "alg-none",
            cat(&[
                &[0, 0, 0],
                b"eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJsb2dpbiI6ImthcmNobnUiLCJ1aWQiOjEwMDJ9.",
            ]),
        ),
        (
            "signed",
            cat(&[
                &[0, 0, 1, 27],
                br#"{"alg":"HS256","typ":"JWT"}"#,
                br#"{"login":"k","uid":1,"exp":1750000100,"nbf":1}"#,
            ]),
        ),
        (
            "minted",
            cat(&[&[0, 0, 2, 0, 0, 3, 0xe9, 1, 0, 0, 0, 0, 0, 7], b"karchnu"]),
        ),
    ]
}

/// Server ops: 0 raw, 1 AUTHENTICATION, 2 TRANSFER, 3 QUERY, 4 FETCH, 5/6 answer, 7 clock,
/// 8 EOF, 9 legacy close.
fn filestorage_server_scripts() -> Vec<(&'static str, Vec<u8>)> {
    let raw = cat(&[&fs_frame(1, AUTH_4_5, Framing::Current)]);
    vec![
        // AUTHENTICATION (token uid 2, one file of 2,500 bytes, fid, default chunk size),
        // answered at once; three TRANSFERs; QUERY; FETCH.
        (
            "upload",
            vec![
                0, 3, 1, 2, 0, 0x09, 0xc4, 7, 0, 1, 1, 2, 0, 0, 1, 1, 2, 0, 1, 1, 1, 2, 0, 2, 1, 1,
                3, 2, 1, 4, 2, 7, 0, 0, 0, 0, 0, 0, 0x10, 0, 1,
            ],
        ),
        (
            "owed-answers",
            vec![
                0, 1, 1, 2, 0, 0x03, 0xe8, 7, 0, 0, 2, 0, 0, 1, 0, 5, 0, 1, 6, 1, 1,
            ],
        ),
        (
            "spec-4.5-raw",
            cat(&[&[0, 0, 0, 0], &raw[..255.min(raw.len())]]),
        ),
        ("legacy-close", vec![1, 0, 1, 9, 1, 2, 0, 0, 0x10, 0, 1]),
        ("idle-timeout", vec![0, 0, 7, 0x01, 0x2d]),
    ]
}

/// Client ops: put 0 raw, 1 disconnect, 2/3 answer; query and fetch 0 raw, else answer.
fn filestorage_client_scripts() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        // Put: one file of 2,500 bytes, window 4, default chunk size; Ok with all missing;
        // each TRANSFER answered, the last with complete.
        (
            "put",
            vec![
                0, 0, 0x09, 0xc4, 3, 0, 7, 2, 1, 0, 0, 7, 1, 4, 2, 1, 0, 2, 1, 0, 2, 1, 0, 0, 3, 1,
                0, 0,
            ],
        ),
        (
            "put-more",
            vec![
                0, 1, 0x09, 0xc4, 0, 0x10, 0, 3, 0x11, 2, 1, 0, 1, 0, 2, 1, 2, 1,
            ],
        ),
        ("query", vec![1, 1, 1, 1, 5, 1, 1, 2, 7, 0]),
        (
            "fetch",
            vec![2, 1, 0x09, 0xc4, 0, 0, 0x03, 0xe7, 3, 1, 1, 1, 1, 1, 1],
        ),
        (
            "fetch-unknown-size",
            vec![2, 0, 0, 0, 0x00, 0x0f, 1, 1, 0, 0x10, 1],
        ),
    ]
}

/// JTP client ops: 0 push, 1 poll, 2 raw, 3 answer, 4 clock, 5 cancel, 6 EOF, 7 listing.
fn jtp_client_scripts() -> Vec<(&'static str, Vec<u8>)> {
    let mut list = Vec::new();
    put_list_header(1, &mut list);
    put_entry(0x84fe30f5845a521f, 0, "alpha.png", 9332, &mut list);
    vec![
        // LIST answered (two entries), then a GET of ids 2 and 3 answered with both packets.
        (
            "list-then-get",
            vec![
                0, 1, 0, 0, 0, 1, 0, 2, 1, 3, 0, 0, 10, 1, 3, 1, 20, 1, 4, 0, 100, 3, 1, 1, 0, 5,
                8, 3, 1,
            ],
        ),
        // Pipelined, no keep-alive: BATCH and LIST_AND_GET queued, sent, answered.
        (
            "pipelined",
            vec![1, 0, 0, 2, 1, 1, 0, 3, 1, 3, 1, 0, 0, 4, 3, 0],
        ),
        // WATCH, an event, cancel, JTPC.
        ("watch", vec![0, 1, 0, 4, 1, 3, 1, 2, 1, 7, 5, 1, 3, 0]),
        (
            "raw-list",
            cat(&[&[0, 1, 0, 0, 1, 2, list.len() as u8], &list]),
        ),
        ("error", vec![0, 1, 0, 0, 1, 3, 2, 1, 6]),
    ]
}

/// TEJ server ops: 0 raw, 1 frame, 2 clock, 3 EOF, 4 fail next, 5 drain.
fn tej_server_scripts() -> Vec<(&'static str, Vec<u8>)> {
    let file_only = unhex(VECTORS[3].hex);
    vec![
        // A deliver frame with one file "a.txt" of 4 bytes, empty message, fed whole.
        (
            "deliver",
            cat(&[&[0, 0, 1, 0, 1, 0, 4], b"AAAA", &[2, 0, 5]]),
        ),
        // A request for b.bin and a catalog id, split after 5 bytes.
        ("request", vec![0, 0, 1, 4, 0, 0, 2, 1, 3, 5, 5]),
        // A list request, no after, limit 2.
        ("list", vec![0, 0, 1, 5, 0, 1, 0, 1, 2, 0, 5]),
        (
            "vector-file-only",
            cat(&[&[0, 0, 0, file_only.len() as u8], &file_only, &[0, 5]]),
        ),
        // The store fails the open: no-space.
        (
            "open-fails",
            cat(&[&[0, 0, 4, 1, 1, 0, 1, 0, 2], b"hi", &[2, 0, 5]]),
        ),
        // Small limits, idle, then a ping and a timeout.
        (
            "small-limits-timeout",
            vec![3, 16, 0, 64, 0, 64, 4, 1, 7, 0, 2, 0, 2, 2, 0x01, 0x00, 5],
        ),
        ("eof-inside-frame", vec![0, 0, 0, 3, 0x80, 1, 0, 3, 5]),
    ]
}

/// TEJ client machines: 0 sender, 1 getter, 2 lister, then each one's ops.
fn tej_client_scripts() -> Vec<(&'static str, Vec<u8>)> {
    let ack = crate::proto::tej::frame::vectors::bytes("ferry_ack_file_only");
    vec![
        // Send one file of 4 bytes; the acknowledgement matches.
        ("send-confirmed", vec![0, 1, 1, 4, 0, 4, 1, 0, 0, 1]),
        // The acknowledgement says another size for file 1.
        ("send-mismatch", vec![0, 1, 2, 4, 9, 0, 4, 1, 0, 1, 1]),
        (
            "send-raw-ack",
            cat(&[&[0, 1, 1, 4, 0, 4, 0, ack.len() as u8], &ack]),
        ),
        // Get b.bin: one file of 3 bytes under its name, the manifest right.
        ("get", cat(&[&[1, 1, 1, 1, 1, 1, 1, 3], b"xyz", &[1, 0, 1]])),
        ("get-error", vec![1, 1, 1, 1, 3, 1]),
        // Two listing pages: next "a.txt", then null.
        ("list", vec![2, 1, 2, 1, 0, 1, 0, 1, 1, 2, 0, 0, 1]),
    ]
}

/// CJP2P node ops: 0 raw, 1 scripted, 2 clock, 3 own request, 4 download, 5 peer.
fn cjp2p_node_scripts() -> Vec<(&'static str, Vec<u8>)> {
    let every = cjp2p_datagrams().remove(0).1;
    let every = &every[2..];
    vec![
        // A verified request for the 9,000-byte file, and for peers.
        ("verified-content", vec![0, 1, 0, 1, 2, 0, 3, 0, 0, 1]),
        // The same unverified: a teaser and the handshake, within 2x.
        (
            "unverified-content",
            vec![0, 1, 1, 0, 2, 0, 3, 0, 0, 10, 0, 0, 0, 1],
        ),
        (
            "raw-every-message",
            cat(&[&[0, 0, 0], &(every.len() as u16).to_be_bytes(), every]),
        ),
        // Download the 4,096-byte file: ask, get content back verified.
        (
            "download",
            vec![
                0, 4, 2, 1, 3, 0, 0, 2, 0, 0, 0x10, 0, 1, 0, 1, 1, 9, 2, 0, 0, 4, b'a', b'b', b'c',
                b'd', 1, 0x10, 0,
            ],
        ),
        ("clock", vec![2, 5, 0, 2, 2, 0x0e, 0x10, 2, 1, 40]),
        ("client-role", vec![1, 1, 2, 0, 2, 0, 1, 0, 0, 5]),
    ]
}

/// CJP2P download: setup, then 0 add, 1 poll, 2 answer, 3 hostile, 4 clock, 5 store, 6
/// refused, 7 other.
fn cjp2p_download_scripts() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        // 3 blocks, one source; poll, answer three times in full, store: complete.
        (
            "three-blocks",
            vec![
                2, 3, 7, 1, 3, 8, 0, 0, 0, 0, 0, 1, 2, 0, 0, 2, 1, 2, 0, 0, 2, 5, 1, 2, 0, 0, 2, 5,
            ],
        ),
        // Unknown eof: teaser, then a lying eof, timeouts.
        (
            "teaser-and-lies",
            vec![
                1, 0x30, 0x01, 3, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 2, 0, 2, 5, 2, 0, 0, 1, 9, 4, 0x03,
                0xe8, 1,
            ],
        ),
        (
            "empty-file",
            vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 0, 0, 2, 5],
        ),
        (
            "resume",
            vec![2, 9, 3, 1, 1, 4, 1, 1, 0, 0, 0, 1, 2, 0, 0, 2, 5, 7, 3],
        ),
        (
            "hostile",
            vec![
                3, 0, 1, 0, 0, 3, 1, 2, 1, 0, 0x10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5,
            ],
        ),
    ]
}

/// Catalog index and journal: mode 0 raw (both decoders), 1 index with its checksum fixed,
/// 2/3 journal records framed and summed by the target.
fn catalog_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::catalog::index::{encode, IndexRecord, JournalOp};
    use crate::catalog::FileStamp;
    use std::ffi::OsString;
    let rec = IndexRecord {
        stamp: FileStamp {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: -5,
        },
        xxh64: 6,
        sha256: [7; 32],
    };
    let names = [OsString::from("a.png"), OsString::from("b")];
    let index = encode(names.iter().map(|n| (n.as_os_str(), &rec)));
    let mut journal = b"FERRYJNL\x01\x00\x00\x00".to_vec();
    JournalOp::Put(OsString::from("c.jpg"), rec).encode(&mut journal);
    JournalOp::Remove(OsString::from("a.png")).encode(&mut journal);
    let torn = journal[..journal.len() - 3].to_vec();
    vec![
        ("index", cat(&[&[0], &index])),
        ("journal", cat(&[&[0], &journal])),
        ("journal-torn", cat(&[&[0], &torn])),
        ("index-body", cat(&[&[1], &index[8..index.len() - 8]])),
        (
            "index-count-too-large",
            cat(&[&[0x31], &index[20..index.len() - 8]]),
        ),
        (
            "journal-records",
            vec![
                2, 0, 3, b'a', b'b', b'c', 1, 1, b'x', 2, 4, 0, 0, 0, 0, 0x81, 0,
            ],
        ),
        ("journal-torn-record", vec![3, 0x41, 2, b'z', b'z', 5]),
    ]
}

/// Every seed, by target.
pub(crate) fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, seeds: Vec<(&str, Vec<u8>)>| {
        for (name, bytes) in seeds {
            out.push((target, name.to_owned(), bytes));
        }
    };
    add("jtp_request", jtp_requests());
    add("jtp_response", jtp_responses());
    add("jtp_server_machine", jtp_server_scripts());
    add(
        "tej_frame",
        tej_frames()
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect(),
    );
    add(
        "wire_frame",
        vec![
            (
                "frames",
                cat(&[&[0, 4, 0], b"\0\0\0\x02hi\0\0\0\0\0\0\0\x03abc"]),
            ),
            (
                "frames-bytewise",
                cat(&[&[1, 4, 1], b"\0\0\0\x02hi\0\0\0\x01!\0"]),
            ),
            ("too-large", cat(&[&[0, 1, 0], b"\0\0\0\x05hello"])),
            ("too-short", cat(&[&[0, 4, 3], b"\0\0\0\x01x"])),
        ],
    );
    add("cjp2p_datagram", cjp2p_datagrams());
    add(
        "fastdp_http_head",
        vec![
            ("request", cat(&[&[0, 0, 0], REQ_120])),
            ("request-bytewise", cat(&[&[1, 0, 0], REQ_120])),
            ("response", cat(&[&[0, 1, 0], RESP_120])),
            (
                "426",
                cat(&[
                    &[0, 1, 0],
                    b"HTTP/1.1 426 Upgrade Required\r\nConnection: close\r\n\r\n",
                ]),
            ),
            (
                "built",
                cat(&[
                    &[0, 2, 1, 14],
                    b"127.0.0.1:5423",
                    &[16],
                    b"/fastdp-endpoint",
                    &[4],
                    b"key=",
                ]),
            ),
            (
                "folded",
                cat(&[&[0, 0, 0], b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n"]),
            ),
        ],
    );
    add("fastdp_jmsg", fastdp_jmsgs());
    add("fastdp_chunk_stream", fastdp_chunks());
    add("fastdp_zstd_chunk", fastdp_zstd());
    add("fastdp_v110_decoders", fastdp_v110());
    add("fastdp_server_machine", fastdp_server_scripts());
    add("fastdp_push_client_machine", fastdp_push_scripts());
    add("fastdp_pull_client_machine", fastdp_pull_scripts());
    add("filestorage_frame", filestorage_frames());
    add("filestorage_json", filestorage_jsons());
    add("filestorage_token", filestorage_tokens());
    add("filestorage_server_machine", filestorage_server_scripts());
    add("filestorage_client_machines", filestorage_client_scripts());
    add("jtp_client_machine", jtp_client_scripts());
    add("tej_server_machine", tej_server_scripts());
    add("tej_client_machines", tej_client_scripts());
    add("cjp2p_node_machine", cjp2p_node_scripts());
    add("cjp2p_download_machine", cjp2p_download_scripts());
    add("catalog_index", catalog_seeds());
    out
}

#[test]
fn every_seed_passes_its_target() {
    for (target, name, bytes) in all() {
        let (_, run) = super::TARGETS
            .iter()
            .find(|(t, _)| *t == target)
            .expect("a target");
        if std::panic::catch_unwind(|| run(&bytes)).is_err() {
            panic!("seed {target}/{name} fails");
        }
    }
}

#[test]
#[ignore = "writes fuzz/corpus: run by `make fuzz-seeds`"]
fn write_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus");
    for (target, name, bytes) in all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed file");
    }
}
