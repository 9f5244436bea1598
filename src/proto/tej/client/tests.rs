use super::*;
use crate::proto::tej::frame::frame;
use crate::proto::tej::frame::vectors::bytes;
use crate::proto::tej::messages::error_frame;
use sha2::{Digest, Sha256};

/// SHA-256 of "AAAA" (the vectors' `a.txt`).
const SHA_A: &str = "63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201";

fn sha_hex(d: &[u8]) -> String {
    hex::encode(&Sha256::digest(d))
}

/// The whole frame a sender produces, with `data` standing in for the file bytes.
fn sent_frame(s: &mut Sender, data: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(t) = s.poll_transmit() {
        match t {
            Transmit::Bytes(b) => out.extend_from_slice(b),
            Transmit::File { index, len } => {
                assert_eq!(len, data[index].len() as u64);
                out.extend_from_slice(data[index]);
                let sha = sha_hex(data[index]);
                s.file_sent(index, &sha);
            }
        }
    }
    out
}

/// Feeds a sender in pieces of `piece` bytes (0: whole); returns the events.
fn feed_sender(s: &mut Sender, input: &[u8], piece: usize) -> Vec<SendEvent> {
    let mut out = Vec::new();
    let piece = if piece == 0 {
        input.len().max(1)
    } else {
        piece
    };
    for chunk in input.chunks(piece) {
        let mut at = 0;
        loop {
            let step = s.handle_input(&chunk[at..]).expect("no error");
            at += step.consumed;
            match step.event {
                Some(e) => out.push(e),
                None => break,
            }
        }
        assert_eq!(at, chunk.len());
    }
    out
}

fn ack_for(files: &[(&str, &[u8])]) -> Vec<u8> {
    let entries: Vec<String> = files
        .iter()
        .map(|(n, d)| {
            format!(
                r#"{{"name":"{n}","size":{},"sha256":"{}","stored_as":"{n}"}}"#,
                d.len(),
                sha_hex(d)
            )
        })
        .collect();
    let msg = format!(r#"{{"files":[{}],"message_bytes":0}}"#, entries.join(","));
    frame(1, &[], msg.as_bytes())
}

#[test]
fn t3_sender_writes_exactly_the_vectors_with_file_bytes_streamed_apart() {
    let mut s = Sender::new(0, vec![("a.txt".into(), 4)], b"", Duration::from_secs(60));
    assert_eq!(sent_frame(&mut s, &[b"AAAA"]), bytes("file_only"));
    let mut s = Sender::new(
        5,
        vec![("small.txt".into(), 10), ("empty.bin".into(), 0)],
        b"msg",
        Duration::from_secs(60),
    );
    assert_eq!(
        sent_frame(&mut s, &[b"hello tej\n", b""]),
        bytes("two_files_and_message")
    );
    let sent: Vec<_> = s.sent().collect();
    assert_eq!(sent[1], ("empty.bin", 0, sha_hex(b"").as_str()));
    let mut s = Sender::new(0, vec![], b"hello", Duration::from_secs(60));
    assert_eq!(sent_frame(&mut s, &[]), bytes("message_hello"));
}

#[test]
fn t11_ack_vector_confirms_after_pings_and_greetings_split_anywhere() {
    let mut stream = bytes("ping");
    stream.extend(frame(1, &[], b"Test 123"));
    stream.extend(frame(7, &[("x.bin", b"xyz")], b"{\"files\":[]}"));
    stream.extend(bytes("ferry_ack_file_only"));
    for piece in [0, 1, 5, 64] {
        let now = Instant::now();
        let mut s = Sender::new(0, vec![("a.txt".into(), 4)], b"", Duration::from_secs(60));
        sent_frame(&mut s, &[b"AAAA"]);
        assert_eq!(s.poll_timeout(), None, "not written yet");
        s.handle_written(now);
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(60)));
        let evs = feed_sender(&mut s, &stream, piece);
        assert_eq!(
            evs,
            vec![
                SendEvent::Ignored {
                    status: 1,
                    message: b"Test 123".to_vec()
                },
                SendEvent::Ignored {
                    status: 7,
                    message: b"{\"files\":[]}".to_vec()
                },
                SendEvent::Finished
            ],
            "piece {piece}"
        );
        let o = s.outcome().unwrap();
        assert_eq!(o.word(), "confirmed");
        assert!(o.reply().unwrap().starts_with(b"{\"files\""));
        assert!(s.is_finished());
    }
}

#[test]
fn t11_an_ack_that_differs_or_an_error_frame_fails_the_send() {
    let now = Instant::now();
    let send = || {
        let mut s = Sender::new(0, vec![("a.txt".into(), 4)], b"", Duration::from_secs(9));
        sent_frame(&mut s, &[b"AAAA"]);
        s.handle_written(now);
        s
    };
    let mut s = send();
    feed_sender(&mut s, &ack_for(&[("a.txt", b"AAAB")]), 0);
    let Some(SendOutcome::Mismatch { why, .. }) = s.outcome() else {
        panic!("{:?}", s.outcome())
    };
    assert!(why.starts_with("file 1: sha256"), "{why}");
    let mut s = send();
    let not_stored = frame(
        1,
        &[],
        format!(
            r#"{{"files":[{{"size":4,"sha256":"{SHA_A}","stored_as":null,"error":"bad-name"}}]}}"#
        )
        .as_bytes(),
    );
    feed_sender(&mut s, &not_stored, 0);
    assert_eq!(s.outcome().unwrap().word(), "mismatch");
    let mut s = send();
    feed_sender(&mut s, &bytes("ferry_error_too_large"), 3);
    assert_eq!(s.outcome().unwrap().word(), "refused");
    assert!(s
        .outcome()
        .unwrap()
        .reply()
        .unwrap()
        .starts_with(b"{\"error\":\"too-large\""));
}

#[test]
fn t11_no_reply_in_time_or_a_close_is_unconfirmed_and_statuses_1_to_127_expect_none() {
    let now = Instant::now();
    let mut s = Sender::new(0, vec![], b"", Duration::from_secs(2));
    sent_frame(&mut s, &[]);
    s.handle_written(now);
    s.handle_timeout(now + Duration::from_secs(1));
    assert!(!s.is_finished());
    s.handle_timeout(now + Duration::from_secs(2));
    assert_eq!(s.outcome(), Some(&SendOutcome::Unconfirmed));

    let mut s = Sender::new(0, vec![], b"", Duration::from_secs(2));
    sent_frame(&mut s, &[]);
    s.handle_written(now);
    assert_eq!(s.handle_eof(), Ok(()));
    assert_eq!(s.outcome(), Some(&SendOutcome::Unconfirmed));

    // EOF inside a frame is an error, not a missing acknowledgement.
    let mut s = Sender::new(0, vec![], b"", Duration::from_secs(2));
    sent_frame(&mut s, &[]);
    s.handle_written(now);
    let ack = bytes("ferry_ack_file_only");
    feed_sender(&mut s, &ack[..20], 0);
    assert_eq!(s.handle_eof(), Err(Error::Closed));

    let mut s = Sender::new(9, vec![], b"", Duration::from_secs(2));
    sent_frame(&mut s, &[]);
    assert!(s.is_sending());
    s.handle_written(now);
    // Whole run, proto-tej client part: `is_sending` as `true` stayed green.
    assert!(!s.is_sending());
    assert_eq!(s.outcome(), Some(&SendOutcome::Unconfirmed));
    assert_eq!(s.poll_timeout(), None);
}

/// A requested item is a SHA-256 id only if it is 64 lowercase hex digits; anything else is a
/// name, whose file comes under its base name (whole run, proto-tej client part: `&&` as `||`
/// took a short hex name such as `cafe` for an id).
#[test]
fn t31_an_item_is_an_id_only_as_64_lowercase_hex_digits() {
    assert_eq!(Wanted::of(SHA_A), Wanted::Sha256(SHA_A.into()));
    assert_eq!(Wanted::of("cafe"), Wanted::Name("cafe".into()));
    assert_eq!(
        Wanted::of("photos/cafe.png"),
        Wanted::Name("cafe.png".into())
    );
    let upper = SHA_A.to_ascii_uppercase();
    assert_eq!(Wanted::of(&upper), Wanted::Name(upper.clone()));
    let not_hex = "g".repeat(64);
    assert_eq!(Wanted::of(&not_hex), Wanted::Name(not_hex.clone()));
}

#[test]
fn a_failed_write_still_reads_the_error_frame_that_explains_it() {
    let now = Instant::now();
    let mut s = Sender::new(
        0,
        vec![("big.bin".into(), 1 << 30)],
        b"",
        Duration::from_secs(60),
    );
    assert!(matches!(s.poll_transmit(), Some(Transmit::Bytes(_))));
    assert!(matches!(s.poll_transmit(), Some(Transmit::File { .. })));
    // The peer refused the file and closed while its bytes were still going out.
    s.handle_write_failed(now, Duration::from_secs(2));
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(2)));
    assert_eq!(s.poll_transmit(), None);
    feed_sender(&mut s, &bytes("ferry_error_too_large"), 0);
    assert_eq!(s.outcome().unwrap().word(), "refused");
    assert_eq!(s.sent().count(), 0, "the file never went out whole");
    // Nothing came: the write error stands (the driver reports it).
    let mut s = Sender::new(0, vec![("big.bin".into(), 9)], b"", Duration::from_secs(60));
    s.poll_transmit();
    s.handle_write_failed(now, Duration::from_secs(2));
    s.handle_timeout(now + Duration::from_secs(2));
    assert_eq!(s.outcome(), Some(&SendOutcome::Unconfirmed));
}

#[test]
fn t4_a_frame_without_the_top_bit_is_a_frame_error() {
    let mut s = Sender::new(0, vec![], b"", Duration::from_secs(2));
    sent_frame(&mut s, &[]);
    s.handle_written(Instant::now());
    let e = s.handle_input(&[0x00, 0x01]).unwrap_err();
    assert_eq!(e, Error::Frame(FrameError::BadFrame(0)));
    assert_eq!(
        e.to_string(),
        "frame: bad-frame: status byte 0x00 lacks the top bit"
    );
}

/// What a driver sees from a getter, data gathered per file.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Start(usize, u64),
    Data(Vec<u8>),
    End,
    Verified(Vec<ManifestEntry>),
}

fn feed_getter(g: &mut Getter, input: &[u8], piece: usize) -> Result<Vec<Got>, Error> {
    let mut out = Vec::new();
    let mut sha = Sha256::new();
    let piece = if piece == 0 {
        input.len().max(1)
    } else {
        piece
    };
    for chunk in input.chunks(piece) {
        let mut at = 0;
        loop {
            let step = g.handle_input(&chunk[at..])?;
            let here = &chunk[at..];
            at += step.consumed;
            match step.event {
                None => break,
                Some(GetEvent::FileStart { index, size }) => {
                    sha = Sha256::new();
                    out.push(Got::Start(index, size));
                }
                Some(GetEvent::FileData(r)) => {
                    sha.update(&here[r.clone()]);
                    match out.last_mut() {
                        Some(Got::Data(d)) => d.extend_from_slice(&here[r]),
                        _ => out.push(Got::Data(here[r].to_vec())),
                    }
                }
                Some(GetEvent::FileEnd) => {
                    g.file_received(sha.clone().finalize().into());
                    out.push(Got::End);
                }
                Some(GetEvent::Verified(v)) => out.push(Got::Verified(v)),
            }
        }
    }
    Ok(out)
}

fn getter() -> Getter {
    let mut g = Getter::new(&["a.txt".to_string()]);
    assert_eq!(
        g.poll_transmit(),
        Some(Transmit::Bytes(&bytes("ferry_request_get")[..]))
    );
    assert_eq!(g.poll_transmit(), None, "one request");
    g
}

#[test]
fn t14_answer_vector_is_verified_split_anywhere_after_skipped_frames() {
    let mut stream = bytes("ping");
    stream.extend(frame(9, &[("stray.sh", b"echo")], b"app"));
    stream.extend(bytes("ferry_request_answer"));
    let want = vec![
        Got::Start(0, 4),
        Got::Data(b"AAAA".to_vec()),
        Got::End,
        Got::Verified(vec![ManifestEntry {
            name: "a.txt".into(),
            size: 4,
            sha256: SHA_A.into(),
        }]),
    ];
    for piece in [0, 1, 2, 7, 100] {
        let mut g = getter();
        assert!(!g.is_finished(), "the answer is still to come");
        assert_eq!(
            feed_getter(&mut g, &stream, piece).unwrap(),
            want,
            "piece {piece}"
        );
        assert!(g.is_finished());
        assert_eq!(g.handle_eof(), Ok(()));
    }
}

#[test]
fn t31_an_answer_that_differs_from_its_manifest_is_a_mismatch() {
    let manifest = |name: &str, size: u64, sha: &str| {
        format!(r#"{{"files":[{{"name":"{name}","size":{size},"sha256":"{sha}"}}]}}"#)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a.txt: received bytes do not match the manifest",
            frame(
                0,
                &[("a.txt", b"AAAB")],
                manifest("a.txt", 4, SHA_A).as_bytes(),
            ),
        ),
        // The same bytes under another name, or with another size (whole run, proto-tej
        // client part: the first `||` as `&&` let each one alone through).
        (
            "a.txt: received bytes do not match the manifest",
            frame(
                0,
                &[("a.txt", b"AAAA")],
                manifest("b.txt", 4, SHA_A).as_bytes(),
            ),
        ),
        (
            "a.txt: received bytes do not match the manifest",
            frame(
                0,
                &[("a.txt", b"AAAA")],
                manifest("a.txt", 5, SHA_A).as_bytes(),
            ),
        ),
        (
            "1 files received, manifest lists 2",
            frame(
                0,
                &[("a.txt", b"AAAA")],
                br#"{"files":[{"name":"a.txt","size":4,"sha256":"x"},{"name":"b","size":0,"sha256":"y"}]}"#,
            ),
        ),
        (
            "the answer carries no manifest",
            frame(0, &[("a.txt", b"AAAA")], b"not json"),
        ),
    ];
    for (want, answer) in cases {
        let mut g = getter();
        assert_eq!(
            feed_getter(&mut g, &answer, 0),
            Err(Error::Mismatch(want.into()))
        );
    }
}

/// Issue 15 item 8: a hostile server answered `tej get photo.png` with `.bashrc` and
/// `unrequested.sh`, and both were written. Now the first file that is not what was asked
/// for fails the get at its header: no `FileStart`, so the driver writes nothing.
#[test]
fn files_not_asked_for_or_under_unsafe_names_are_refused_at_their_header() {
    let manifest = br#"{"files":[]}"#;
    let cases: Vec<(&str, Error)> = vec![
        (".bashrc", Error::UnsafeName(".bashrc".into())),
        ("../x", Error::UnsafeName("../x".into())),
        (".ferry", Error::UnsafeName(".ferry".into())),
        (
            "a\x1b]0;pwned\x07",
            Error::UnsafeName("a\x1b]0;pwned\x07".into()),
        ),
        (
            "unrequested.sh",
            Error::Unrequested("unrequested.sh".into()),
        ),
        ("A.TXT", Error::Unrequested("A.TXT".into())),
    ];
    for (name, want) in cases {
        for piece in [0, 1, 3] {
            let mut g = getter();
            let answer = frame(0, &[(name, b"#!/bin/sh")], manifest);
            assert_eq!(
                feed_getter(&mut g, &answer, piece),
                Err(want.clone()),
                "{name:?} piece {piece}"
            );
            assert!(g.is_finished());
        }
    }
    // The first file is fine, a second one was never asked for.
    let mut g = getter();
    let answer = frame(0, &[("a.txt", b"AAAA"), ("b.txt", b"B")], manifest);
    let got = feed_getter(&mut g, &answer, 0);
    assert_eq!(got, Err(Error::Unrequested("b.txt".into())));
    // The message says what happened, with the name escaped.
    let e = Error::UnsafeName("a\x1b]0;x\x07\n".into()).to_string();
    assert!(!e.chars().any(char::is_control), "{e}");
    assert!(
        e.starts_with("refused: the server sent a file named \"a\\u{1b}]0;x"),
        "{e}"
    );
}

#[test]
fn a_catalog_path_comes_under_its_base_name_and_a_sha256_under_any_safe_name() {
    let answer = |name: &str| {
        frame(
            0,
            &[(name, b"AAAA")],
            format!(r#"{{"files":[{{"name":"{name}","size":4,"sha256":"{SHA_A}"}}]}}"#).as_bytes(),
        )
    };
    let mut g = Getter::new(&["sub/dir/a.txt".to_string()]);
    g.poll_transmit();
    let got = feed_getter(&mut g, &answer("a.txt"), 0).unwrap();
    assert!(matches!(got.last(), Some(Got::Verified(_))), "{got:?}");
    let mut g = Getter::new(&[SHA_A.to_string()]);
    g.poll_transmit();
    let got = feed_getter(&mut g, &answer("whatever.bin"), 0).unwrap();
    assert!(matches!(got.last(), Some(Got::Verified(_))), "{got:?}");
    // Asked by id, the manifest must name that id.
    let other = "0".repeat(64);
    let mut g = Getter::new(&[other]);
    g.poll_transmit();
    assert_eq!(
        feed_getter(&mut g, &answer("whatever.bin"), 0),
        Err(Error::Unrequested("whatever.bin".into()))
    );
    // Still no dot-files, even asked by id.
    let mut g = Getter::new(&[SHA_A.to_string()]);
    g.poll_transmit();
    assert_eq!(
        feed_getter(&mut g, &answer(".profile"), 0),
        Err(Error::UnsafeName(".profile".into()))
    );
}

#[test]
fn t14_an_error_frame_or_a_close_before_the_answer_fails_the_get() {
    let mut g = getter();
    let e = feed_getter(&mut g, &error_frame("not-found", "a.txt"), 0).unwrap_err();
    assert_eq!(
        e,
        Error::Peer(r#"{"error":"not-found","detail":"a.txt"}"#.into())
    );
    let mut g = getter();
    let answer = bytes("ferry_request_answer");
    feed_getter(&mut g, &answer[..30], 0).unwrap();
    assert_eq!(g.handle_eof(), Err(Error::Closed));
}

fn listing(names: &[&str], next: Option<&str>) -> Vec<u8> {
    let files: Vec<ManifestEntry> = names
        .iter()
        .map(|n| ManifestEntry {
            name: n.to_string(),
            size: 1,
            sha256: SHA_A.into(),
        })
        .collect();
    Listing {
        files,
        next: next.map(str::to_owned),
    }
    .to_frame()
}

/// Runs a lister against pages; returns the requests it sent, or its error.
fn list(pages: &[Vec<u8>]) -> Result<(Vec<Vec<u8>>, Vec<String>), Error> {
    list_with(Lister::new(), pages)
}

fn list_with(mut l: Lister, pages: &[Vec<u8>]) -> Result<(Vec<Vec<u8>>, Vec<String>), Error> {
    let mut requests = Vec::new();
    for page in pages {
        assert!(!l.is_finished(), "a page is still to come");
        match l.poll_transmit() {
            Some(Transmit::Bytes(b)) => requests.push(b.to_vec()),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.poll_transmit(), None, "one request per page");
        let mut at = 0;
        while at < page.len() {
            let step = l.handle_input(&page[at..])?;
            at += step.consumed;
        }
    }
    assert!(l.is_finished());
    // A finished listing ends cleanly at EOF, and shows what it took (whole run, proto-tej
    // client part: the Done arm of `handle_eof` deleted, `entries` as empty or one default
    // entry stayed green).
    assert_eq!(l.handle_eof(), Ok(()));
    let shown: Vec<String> = l.entries().iter().map(|e| e.name.clone()).collect();
    let names: Vec<String> = l.into_entries().into_iter().map(|e| e.name).collect();
    assert_eq!(shown, names);
    Ok((requests, names))
}

/// Each page's `next` must move past the one before, over several pages, and the entries
/// are bounded in all, the bound itself allowed (whole run, proto-tej client part: `n > after`
/// as `<` and the bound's `>` as `==` or `>=` stayed green; the bound is 10,000,000 entries, so
/// a smaller one is set here).
#[test]
fn t15_every_next_moves_forward_and_the_entries_are_bounded() {
    let pages = [
        listing(&["a"], Some("a")),
        listing(&["b"], Some("b")),
        listing(&["c"], None),
    ];
    let (requests, names) = list(&pages).unwrap();
    assert_eq!(requests[2], frame(5, &[], br#"{"after":"b"}"#));
    assert_eq!(names, ["a", "b", "c"]);
    let bounded = |max| {
        let mut l = Lister::new();
        l.max_listed = max;
        list_with(l, &pages)
    };
    assert_eq!(bounded(3).unwrap().1, ["a", "b", "c"]);
    assert_eq!(
        bounded(2),
        Err(Error::Mismatch("listing goes past 2 entries".into()))
    );
}

#[test]
fn t15_pages_are_requested_after_each_next_until_null() {
    let (requests, names) = list(&[
        listing(&["a", "b"], Some("b")),
        [bytes("ping"), listing(&["c"], None)].concat(),
    ])
    .unwrap();
    assert_eq!(requests[0], bytes("ferry_list_request"));
    assert_eq!(requests[1], frame(5, &[], br#"{"after":"b"}"#));
    assert_eq!(names, ["a", "b", "c"]);
    let (_, names) = list(&[bytes("ferry_listing")]).unwrap();
    assert_eq!(names, ["a.txt"]);
}

#[test]
fn t15_a_next_that_does_not_move_forward_or_a_bad_page_ends_the_listing() {
    assert_eq!(
        list(&[listing(&["a", "b"], Some("b")), listing(&["b"], Some("b"))]),
        Err(Error::Mismatch(
            r#"listing page "b" does not move past Some("b")"#.into()
        ))
    );
    assert_eq!(
        list(&[frame(6, &[], b"[]")]),
        Err(Error::Mismatch("listing is not JSON".into()))
    );
    assert!(matches!(
        list(&[error_frame("busy", "x")]),
        Err(Error::Peer(_))
    ));
    let mut l = Lister::new();
    l.poll_transmit();
    assert_eq!(l.handle_eof(), Err(Error::Closed));
}

/// Truncations of real replies and seeded random bytes never panic any machine.
#[test]
fn never_panics_on_any_input() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for v in [
        "ferry_request_answer",
        "ferry_listing",
        "ferry_ack_file_only",
    ] {
        let b = bytes(v);
        inputs.extend((0..=b.len()).map(|n| b[..n].to_vec()));
    }
    for _ in 0..300 {
        let len = (rnd() % 80) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        if let Some(b) = v.first_mut() {
            *b |= 0x80;
        }
        inputs.push(v);
    }
    for input in &inputs {
        let mut s = Sender::new(0, vec![], b"", Duration::from_secs(1));
        sent_frame(&mut s, &[]);
        s.handle_written(Instant::now());
        let _ = feed_all(
            |i| {
                s.handle_input(i)
                    .map(|st| (st.consumed, st.event.is_some()))
            },
            input,
        );
        let _ = s.handle_eof();
        let mut g = getter();
        let _ = feed_all(
            |i| {
                g.handle_input(i)
                    .map(|st| (st.consumed, st.event.is_some()))
            },
            input,
        );
        let _ = g.handle_eof();
        let mut l = Lister::new();
        l.poll_transmit();
        let _ = feed_all(
            |i| {
                l.handle_input(i)
                    .map(|st| (st.consumed, st.event.is_some()))
            },
            input,
        );
        let _ = l.handle_eof();
    }
}

/// Feeds `input` through `f` until it is taken or an error comes.
fn feed_all(
    mut f: impl FnMut(&[u8]) -> Result<(usize, bool), Error>,
    input: &[u8],
) -> Result<(), Error> {
    let mut at = 0;
    loop {
        let (n, event) = f(&input[at..])?;
        at += n;
        if !event {
            return Ok(());
        }
    }
}
