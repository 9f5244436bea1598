//! The TEJ server machine without sockets: byte-literal transcripts (tej.md vectors), every
//! status and error code, input split anywhere, timeouts at explicit instants.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::*;
use crate::proto::tej::frame::vectors::bytes;
use crate::proto::tej::frame::{frame, put_frame_header, put_frame_header_with_version};

const SHA_AAAA: &str = "63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201";

fn sha(d: &[u8]) -> String {
    hex(&Sha256::digest(d))
}

/// A catalog of `(path, nfc name, bytes)`; the handle is the index.
#[derive(Default)]
struct FakeCatalog {
    files: Vec<(String, String, Vec<u8>)>,
    resolved: usize,
}

impl FakeCatalog {
    fn with(files: &[(&str, &[u8])]) -> FakeCatalog {
        FakeCatalog {
            files: files
                .iter()
                .map(|(n, d)| (n.to_string(), n.to_string(), d.to_vec()))
                .collect(),
            resolved: 0,
        }
    }
}

impl Lookup for FakeCatalog {
    type File = usize;

    fn resolve(&mut self, item: &str) -> Resolved<usize> {
        self.resolved += 1;
        let found = |i: usize, f: &(String, String, Vec<u8>)| Resolved::Found {
            file: i,
            name: f.0.clone(),
            size: f.2.len() as u64,
            sha256: sha(&f.2),
        };
        if let Some((i, f)) = self
            .files
            .iter()
            .enumerate()
            .find(|(_, f)| f.0 == item || sha(&f.2) == item)
        {
            return found(i, f);
        }
        let same: Vec<usize> = (0..self.files.len())
            .filter(|&i| self.files[i].1 == item)
            .collect();
        match same.as_slice() {
            [] => Resolved::Missing,
            [i] => found(*i, &self.files[*i]),
            _ => Resolved::Ambiguous,
        }
    }

    fn page(&mut self, after: &str, limit: usize) -> Vec<ManifestEntry> {
        let mut all: Vec<&(String, String, Vec<u8>)> = self.files.iter().collect();
        all.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        all.into_iter()
            .filter(|f| f.0.as_bytes() > after.as_bytes())
            .take(limit)
            .map(|f| ManifestEntry {
                name: f.0.clone(),
                size: f.2.len() as u64,
                sha256: sha(&f.2),
            })
            .collect()
    }
}

/// What the driver would do with storage: a file open at a time, committed under its name.
#[derive(Default)]
struct FakeStore {
    open: Option<(String, Vec<u8>)>,
    committed: Vec<(String, Vec<u8>)>,
    /// Files dropped without a commit (their temporaries removed).
    dropped: usize,
    fail_open: Option<StoreError>,
    fail_write: Option<StoreError>,
    fail_commit: Option<StoreError>,
}

/// The machine run as a driver would run it, recording everything it says.
struct Harness {
    conn: Connection<usize>,
    cat: FakeCatalog,
    store: FakeStore,
    /// Every byte sent, catalog files included.
    out: Vec<u8>,
    events: Vec<Event>,
    /// Steps in order, data merged, for comparing split inputs.
    steps: Vec<String>,
}

impl Harness {
    fn new(cfg: Config, now: Instant) -> Harness {
        Harness {
            conn: Connection::new(cfg, now),
            cat: FakeCatalog::default(),
            store: FakeStore::default(),
            out: Vec::new(),
            events: Vec::new(),
            steps: Vec::new(),
        }
    }

    fn feed(&mut self, now: Instant, input: &[u8]) {
        let mut pos = 0;
        loop {
            let (n, step) = self.conn.handle_input(now, &input[pos..], &mut self.cat);
            assert!(n <= input.len() - pos);
            pos += n;
            match step {
                None => break,
                Some(Step::Open { name, size }) => {
                    self.steps.push(format!("open {name} {size}"));
                    assert!(self.store.open.is_none(), "two files open");
                    let r = match self.store.fail_open.take() {
                        Some(e) => Err(e),
                        None => {
                            self.store.open = Some((name.to_owned(), Vec::new()));
                            Ok(())
                        }
                    };
                    self.conn.file_opened(r);
                }
                Some(Step::Write(d)) => {
                    assert!(!d.is_empty());
                    // Borrowed from the input, never copied.
                    let off = d.as_ptr() as usize - input.as_ptr() as usize;
                    assert_eq!(&input[off..off + d.len()], d);
                    match self.steps.last_mut() {
                        Some(s) if s.starts_with("write ") => {
                            let k: usize = s[6..].parse().unwrap();
                            *s = format!("write {}", k + d.len());
                        }
                        _ => self.steps.push(format!("write {}", d.len())),
                    }
                    if let Some(e) = self.store.fail_write.take() {
                        self.conn.file_failed(e);
                    } else {
                        self.store.open.as_mut().expect("a file open").1.extend(d);
                    }
                }
                Some(Step::Commit) => {
                    self.steps.push("commit".into());
                    let (name, data) = self.store.open.take().expect("a file open");
                    let r = match self.store.fail_commit.take() {
                        Some(e) => {
                            self.store.dropped += 1;
                            Err(e)
                        }
                        None => {
                            let s = Stored {
                                stored_as: name.clone(),
                                sha256: sha(&data),
                            };
                            self.store.committed.push((name, data));
                            Ok(s)
                        }
                    };
                    self.conn.file_committed(r);
                }
            }
            self.drain();
        }
        assert!(
            pos == input.len() || self.conn.is_finished(),
            "input left over on a live connection"
        );
        self.drain();
    }

    fn drain(&mut self) {
        if self.conn.is_finished() && self.store.open.take().is_some() {
            self.store.dropped += 1;
        }
        while let Some(t) = self.conn.poll_transmit() {
            match t {
                Transmit::Bytes(b) => self.out.extend_from_slice(&b),
                Transmit::File { file, offset, len } => {
                    let d = &self.cat.files[file].2;
                    self.out
                        .extend_from_slice(&d[offset as usize..(offset + len) as usize]);
                }
            }
        }
        self.events
            .extend(std::iter::from_fn(|| self.conn.poll_event()));
    }

    fn eof(&mut self) {
        self.conn.handle_eof();
        self.drain();
    }

    fn timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        self.drain();
    }

    /// The frames sent so far, decoded: (status byte, message).
    fn replies(&self) -> Vec<(u8, Vec<u8>)> {
        decode_all(&self.out)
    }

    fn closed(&self) -> Option<Option<&'static str>> {
        self.events.iter().find_map(|e| match e {
            Event::Closed { code, .. } => Some(*code),
            _ => None,
        })
    }
}

/// Every frame of `out` as (status byte, message); files are skipped.
fn decode_all(out: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut d = Decoder::new(Limits {
        max_message: 64 << 20,
        ..Limits::default()
    });
    let mut pos = 0;
    let mut frames = Vec::new();
    let mut status = 0;
    loop {
        let (n, r) = d.decode(&out[pos..]);
        pos += n;
        match r.expect("the machine sends valid frames") {
            None => break,
            Some(Decoded::FrameStart {
                status: s, version, ..
            }) => {
                assert_eq!(version, 1, "T3: ferry writes version 1");
                status = s | 0x80;
            }
            Some(Decoded::Message(m)) => frames.push((status, m.to_vec())),
            Some(_) => {}
        }
    }
    assert_eq!(pos, out.len(), "a partial frame was sent");
    frames
}

fn json(m: &[u8]) -> serde_json::Value {
    serde_json::from_slice(m).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(m)))
}

/// Asserts `f` is an error frame with `code` (T30) and returns its JSON.
#[track_caller]
fn assert_error(f: &(u8, Vec<u8>), code: &str) -> serde_json::Value {
    assert_eq!(f.0, 0x83, "{}", String::from_utf8_lossy(&f.1));
    let j = json(&f.1);
    assert_eq!(j["error"], code, "{j}");
    assert!(code::ALL.contains(&code));
    assert!(j["detail"].is_string());
    j
}

fn t0() -> Instant {
    Instant::now()
}

/// Runs `input` whole, byte by byte and split at every offset (with fresh state each time)
/// and checks all three give the same bytes out, steps and stored files; returns the whole run.
fn all_splits(input: &[u8], setup: impl Fn(&mut Harness)) -> Harness {
    let now = t0();
    let run = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let mut h = Harness::new(Config::default(), now);
        setup(&mut h);
        for c in chunks {
            h.feed(now, c);
        }
        h
    };
    let whole = run(&mut std::iter::once(input));
    let check = |h: Harness, how: &str| {
        assert_eq!(h.out, whole.out, "{how}: bytes out");
        assert_eq!(h.steps, whole.steps, "{how}: steps");
        assert_eq!(h.store.committed, whole.store.committed, "{how}: stored");
        assert_eq!(h.conn.is_finished(), whole.conn.is_finished(), "{how}");
    };
    check(run(&mut input.chunks(1)), "byte by byte");
    for k in 0..=input.len() {
        let (a, b) = input.split_at(k);
        check(run(&mut [a, b].into_iter()), &format!("split at {k}"));
    }
    whole
}

// ---------------------------------------------------------------------------------------------
// Deliver and acknowledgement (T8), pings (T7), concatenated frames (T6), split anywhere (T2)

#[test]
fn t8_file_only_is_stored_and_acknowledged_with_exactly_the_ack_vector() {
    let h = all_splits(&bytes("file_only"), |_| {});
    assert_eq!(h.steps, ["open a.txt 4", "write 4", "commit"]);
    assert_eq!(h.store.committed, [("a.txt".to_string(), b"AAAA".to_vec())]);
    assert_eq!(h.out, bytes("ferry_ack_file_only"));
    assert!(!h.conn.is_finished() && h.conn.is_between_frames());
    // An empty message is no message event (whole run, proto-tej server part: `> 0` as `>=`).
    assert!(!h.events.iter().any(|e| matches!(e, Event::Message { .. })));
}

#[test]
fn t6_t7_concat_file_ping_message_gives_two_acks_and_the_ping_none() {
    let h = all_splits(&bytes("concat_file_ping_message"), |_| {});
    let replies = h.replies();
    assert_eq!(replies.len(), 2);
    assert_eq!(
        String::from_utf8(replies[0].1.clone()).unwrap(),
        format!(
            "{{\"files\":[{{\"name\":\"a.txt\",\"size\":4,\"sha256\":\"{SHA_AAAA}\",\"stored_as\":\"a.txt\"}}],\"message_bytes\":0}}"
        )
    );
    assert_eq!(
        replies[1],
        (0x81, b"{\"files\":[],\"message_bytes\":5}".to_vec())
    );
    // The ping was not reported as a frame; the hello message was, with its bytes.
    let frames = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::Frame { .. }))
        .count();
    assert_eq!(frames, 2);
    assert!(h.events.contains(&Event::Message {
        len: 5,
        head: b"hello".to_vec()
    }));
}

#[test]
fn t8_two_files_in_a_deliver_frame_are_acknowledged_in_order_and_an_empty_file_too() {
    let f = frame(
        0,
        &[("x.txt", b"1"), ("e.bin", b""), ("y.txt", b"22")],
        b"m",
    );
    let h = all_splits(&f, |_| {});
    assert_eq!(
        h.steps,
        [
            "open x.txt 1",
            "write 1",
            "commit",
            "open e.bin 0",
            "commit",
            "open y.txt 2",
            "write 2",
            "commit"
        ]
    );
    let j = json(&h.replies()[0].1);
    assert_eq!(j["message_bytes"], 1);
    let names: Vec<&str> = j["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stored_as"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["x.txt", "e.bin", "y.txt"]);
    assert_eq!(j["files"][1]["sha256"], sha(b""));
}

#[test]
fn a_deliver_message_is_never_held_and_the_log_sees_its_first_200_bytes() {
    let msg: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let f = frame(0, &[], &msg);
    let now = t0();
    let mut h = Harness::new(Config::default(), now);
    for piece in f.chunks(700) {
        h.feed(now, piece);
    }
    assert_eq!(
        h.replies(),
        [(0x81, b"{\"files\":[],\"message_bytes\":5000}".to_vec())]
    );
    assert!(h.events.contains(&Event::Message {
        len: 5000,
        head: msg[..LOG_MESSAGE_BYTES].to_vec()
    }));
}

// ---------------------------------------------------------------------------------------------
// Statuses that store nothing or answer nothing (T16, T17)

#[test]
fn t16_statuses_7_to_127_store_their_files_and_are_never_acknowledged() {
    let mut input = frame(7, &[("seven.txt", b"7777")], b"app");
    input.extend_from_slice(&bytes("status_127_version_0"));
    let h = all_splits(&input, |_| {});
    assert!(h.out.is_empty(), "an application frame was answered");
    assert_eq!(h.store.committed, [("seven.txt".into(), b"7777".to_vec())]);
    assert!(h.events.contains(&Event::Application {
        status: 7,
        stored: 1
    }));
    assert!(h.events.contains(&Event::Application {
        status: 127,
        stored: 0
    }));
    // The message reaches the application (the log) unchanged, version as sent.
    assert!(h.events.contains(&Event::Message {
        len: 1,
        head: b"x".to_vec()
    }));
    assert!(h.events.contains(&Event::Frame {
        status: 127,
        version: 0,
        files: 0
    }));
}

#[test]
fn t17_acks_pings_errors_and_listings_are_not_answered_and_their_files_not_stored() {
    let mut input = Vec::new();
    for s in [1u8, 2, 3, 6] {
        input.extend_from_slice(&frame(s, &[("s.txt", b"data")], b"{\"files\":[]}"));
    }
    input.extend_from_slice(&bytes("ferry_ack_file_only"));
    input.extend_from_slice(&bytes("ferry_listing"));
    input.extend_from_slice(&bytes("ping"));
    let h = all_splits(&input, |_| {});
    assert!(h.out.is_empty());
    assert!(h.steps.is_empty(), "{:?}", h.steps);
    assert!(h.store.committed.is_empty());
    assert_eq!(
        h.events
            .iter()
            .filter(|e| matches!(e, Event::Discarded { .. }))
            .count(),
        4
    );
    // Their messages are not an application's, nor are they application frames (whole run,
    // proto-tej server part: `stores() && message_len > 0` as `||`, and the application
    // guard `s > LISTING` as `true` or `>=`, reported them).
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, Event::Message { .. } | Event::Application { .. })),
        "{:?}",
        h.events
    );
}

#[test]
fn t17_a_list_request_carrying_files_stores_nothing_and_bad_json_is_bad_request() {
    // `two_files_and_message` is status 5 with files and the message `msg`.
    let h = all_splits(&bytes("two_files_and_message"), |_| {});
    assert!(h.steps.is_empty());
    let r = h.replies();
    assert_eq!(r.len(), 1);
    assert_error(&r[0], "bad-request");
    assert!(!h.conn.is_finished(), "bad-request keeps the connection");
}

// ---------------------------------------------------------------------------------------------
// Names (T22)

#[test]
fn t22_bad_and_dot_names_are_hashed_discarded_and_reported_and_the_frame_goes_on() {
    let mut input = bytes("empty_name");
    input.extend_from_slice(&frame(0, &[(".profile", b"dot"), ("ok.txt", b"fine")], b""));
    let h = all_splits(&input, |_| {});
    assert_eq!(h.steps, ["open ok.txt 4", "write 4", "commit"]);
    let r = h.replies();
    let a = json(&r[0].1);
    assert_eq!(a["files"][0]["name"], "");
    assert_eq!(a["files"][0]["stored_as"], serde_json::Value::Null);
    assert_eq!(a["files"][0]["error"], "bad-name");
    assert_eq!(a["files"][0]["sha256"], sha(b"data"));
    let b = json(&r[1].1);
    assert_eq!(b["files"][0]["error"], "bad-name");
    assert_eq!(b["files"][0]["sha256"], sha(b"dot"));
    assert_eq!(b["files"][1]["stored_as"], "ok.txt");
}

#[test]
fn t22_a_non_utf8_name_is_reported_with_its_hex() {
    let mut f = Vec::new();
    put_frame_header(0, 1, &mut f);
    f.extend_from_slice(&[0, 2, 0xff, 0xfe]);
    f.extend_from_slice(&1u64.to_be_bytes());
    f.push(b'z');
    f.extend_from_slice(&0u64.to_be_bytes());
    let h = all_splits(&f, |_| {});
    let j = json(&h.replies()[0].1);
    assert_eq!(j["files"][0]["name_hex"], "fffe");
    assert_eq!(j["files"][0]["error"], "bad-name");
}

// ---------------------------------------------------------------------------------------------
// Every error code (T4, T13, T19, T20, T30 and section 6)

/// Feeds `input` whole; returns the harness after.
fn run(input: &[u8], cfg: Config) -> Harness {
    let now = t0();
    let mut h = Harness::new(cfg, now);
    h.feed(now, input);
    h
}

#[track_caller]
fn assert_closed_with(h: &Harness, code: &str) -> serde_json::Value {
    assert!(h.conn.is_finished(), "not closed");
    assert_eq!(h.closed().flatten(), Some(code));
    let r = h.replies();
    let j = assert_error(r.last().expect("an error frame"), code);
    assert_eq!(h.conn.poll_timeout(), None);
    j
}

#[test]
fn t4_a_status_byte_without_the_top_bit_is_bad_frame() {
    let mut f = bytes("file_only");
    f[0] = 0x00;
    let mut h = run(&f, Config::default());
    assert_closed_with(&h, "bad-frame");
    assert!(h.steps.is_empty());
    // A finished connection takes nothing more, a valid frame neither, whether it closed on
    // a bad frame or at the peer's EOF between frames (whole run, proto-tej server part: the
    // guard's `||` as `&&` went on decoding after the close).
    let good = bytes("file_only");
    let mut closed = Harness::new(Config::default(), t0());
    closed.eof();
    assert!(closed.conn.is_finished());
    for h in [&mut h, &mut closed] {
        let (n, step) = h.conn.handle_input(t0(), &good, &mut h.cat);
        assert_eq!(n, 0);
        assert!(step.is_none());
    }
}

#[test]
fn t5_any_version_by_default_and_strict_mode_is_bad_frame() {
    let mut v2 = bytes("message_hello");
    v2[1] = 2;
    let h = run(&v2, Config::default());
    assert_eq!(h.replies()[0].0, 0x81);
    let cfg = Config {
        limits: Limits {
            strict_version: true,
            ..Limits::default()
        },
        ..Config::default()
    };
    assert_closed_with(&run(&v2, cfg), "bad-frame");
}

#[test]
fn t13_the_tej_protoc_nonascii_name_is_too_large_and_nothing_is_opened() {
    let h = run(&bytes("BUGGY_nonascii_name"), Config::default());
    let j = assert_closed_with(&h, "too-large");
    assert!(j["detail"].as_str().unwrap().contains("max_file_size"));
    assert!(h.steps.is_empty());
    // Nothing was stored before the error: no `files` list (whole run, proto-tej server part:
    // `DELIVER && !entries.is_empty()` as `||` sent an empty one).
    assert!(j.get("files").is_none(), "{j}");
    // The vector of the error frame, but for its free detail text.
    let want = decode_all(&bytes("ferry_error_too_large"));
    assert_eq!(json(&want[0].1)["error"], j["error"]);
}

#[test]
fn t20_too_many_files_is_refused_right_after_the_header() {
    let mut f = Vec::new();
    put_frame_header(0, 10_001, &mut f);
    let h = run(&f, Config::default());
    assert_closed_with(&h, "too-many-files");
    let mut f = Vec::new();
    put_frame_header(0, u64::MAX >> 1, &mut f);
    f[2] = 0xff;
    assert_closed_with(&run(&f, Config::default()), "too-many-files");
}

#[test]
fn t19_a_one_tib_claim_is_too_large_before_any_step_and_stored_files_are_listed() {
    let mut f = Vec::new();
    put_frame_header(0, 2, &mut f);
    frame::put_file_header("first.txt", 3, &mut f);
    f.extend_from_slice(b"1st");
    frame::put_file_header("huge.bin", 1 << 40, &mut f);
    f.extend_from_slice(&[0x5a; 100]);
    let h = run(&f, Config::default());
    let j = assert_closed_with(&h, "too-large");
    assert_eq!(h.steps, ["open first.txt 3", "write 3", "commit"]);
    assert_eq!(j["files"][0]["stored_as"], "first.txt");
}

#[test]
fn t20_a_message_over_max_message_is_too_large_before_it_is_read() {
    let mut f = Vec::new();
    put_frame_header(0, 0, &mut f);
    f.extend_from_slice(&((16u64 << 20) + 1).to_be_bytes());
    assert_closed_with(&run(&f, Config::default()), "too-large");
}

#[test]
fn no_space_when_the_driver_cannot_reserve_the_file() {
    let now = t0();
    let mut h = Harness::new(Config::default(), now);
    h.store.fail_open = Some(StoreError::NoSpace("10 bytes do not fit".into()));
    h.feed(now, &frame(0, &[("x.bin", &[7; 10])], b""));
    let j = assert_closed_with(&h, "no-space");
    assert_eq!(j["detail"], "10 bytes do not fit");
    assert_eq!(h.steps, ["open x.bin 10"]);
    assert!(h.store.open.is_none() && h.store.committed.is_empty());
}

#[test]
fn internal_when_a_write_or_the_commit_fails_and_the_open_file_is_dropped() {
    let now = t0();
    let mut h = Harness::new(Config::default(), now);
    h.store.fail_write = Some(StoreError::Internal("disk on fire".into()));
    h.feed(now, &frame(0, &[("x.bin", &[7; 10])], b""));
    assert_closed_with(&h, "internal");
    assert!(!h.conn.has_open_file());
    assert_eq!(h.store.dropped, 1, "the open file must be dropped");

    let mut h = Harness::new(Config::default(), now);
    h.store.fail_commit = Some(StoreError::Internal("fsync failed".into()));
    h.feed(now, &frame(0, &[("x.bin", &[7; 10])], b""));
    assert_closed_with(&h, "internal");
    assert!(h.store.committed.is_empty());
}

/// A file whose data is read and discarded (a name that is not stored) is not an open file:
/// the driver keeps its small read buffer and opens nothing (mutation sample H: `&&` as `||`
/// called every discarded file open).
#[test]
fn a_discarded_file_is_not_an_open_file() {
    let mut f = frame(0, &[(".hidden", &[5; 100])], b"");
    f.truncate(f.len() - 8 - 40);
    let now = t0();
    let mut h = Harness::new(Config::default(), now);
    h.feed(now, &f);
    assert!(!h.conn.has_open_file() && !h.conn.is_storing());
    assert!(h.steps.is_empty(), "{:?}", h.steps);
}

#[test]
fn truncated_on_eof_inside_a_frame_and_a_clean_end_between_frames() {
    let mut f = frame(0, &[("first.txt", b"1st"), ("second.bin", &[9; 100])], b"");
    f.truncate(f.len() - 8 - 40);
    let now = t0();
    let mut h = Harness::new(Config::default(), now);
    h.feed(now, &f);
    assert!(h.conn.has_open_file());
    // Whole run, proto-tej server part: `is_storing` as `false` stayed green.
    assert!(h.conn.is_storing());
    h.eof();
    let j = assert_closed_with(&h, "truncated");
    assert_eq!(j["files"][0]["stored_as"], "first.txt");
    assert_eq!(h.store.dropped, 1);
    assert_eq!(h.store.committed.len(), 1);

    let mut h = Harness::new(Config::default(), now);
    h.feed(now, &bytes("message_hello"));
    h.eof();
    assert!(h.conn.is_finished());
    assert_eq!(h.closed(), Some(None));
    assert_eq!(h.replies().len(), 1, "only the ack, no error frame");
}

#[test]
fn bad_request_not_found_and_ambiguous_keep_the_connection_open() {
    let now = t0();
    let mut h = Harness::new(Config::default(), now);
    h.cat = FakeCatalog::with(&[("a.txt", b"AAAA"), ("b.txt", b"BB")]);
    // Two spellings of one NFC name: a base-name lookup is ambiguous.
    h.cat
        .files
        .push(("cafe\u{301}".into(), "caf\u{e9}".into(), b"1".to_vec()));
    h.cat
        .files
        .push(("caf\u{e9}x".into(), "caf\u{e9}".into(), b"2".to_vec()));
    for (msg, code) in [
        (&b"{\"get\":\"a.txt\"}"[..], "bad-request"),
        (b"not json", "bad-request"),
        (b"{\"got\":[]}", "bad-request"),
        (b"{\"get\":[\"a.txt\"]} trailing", "bad-request"),
        (b"", "bad-request"),
        ("{\"get\":[\"caf\u{e9}\"]}".as_bytes(), "ambiguous"),
    ] {
        h.feed(now, &frame(4, &[], msg));
        let r = h.replies();
        assert_error(r.last().unwrap(), code);
        assert!(!h.conn.is_finished());
    }
    // What was wrong is said (whole run, proto-tej server part: the items' `expecting` as
    // empty stayed green).
    h.feed(now, &frame(4, &[], b"{\"get\":\"a.txt\"}"));
    let j = assert_error(h.replies().last().unwrap(), "bad-request");
    let detail = j["detail"].as_str().unwrap();
    assert!(detail.contains("expected an array of strings"), "{detail}");
    h.feed(
        now,
        &frame(4, &[], b"{\"get\":[\"nope\",\"a.txt\",\"also-nope\"]}"),
    );
    let j = assert_error(h.replies().last().unwrap(), "not-found");
    assert_eq!(j["missing"], serde_json::json!(["nope", "also-nope"]));
    // Counted over every item asked (the whole run's `+` as `*` said "2 of 2").
    assert_eq!(j["detail"], "2 of 3 items not found");
    // Ten ambiguous items are named, the rest counted (the whole run's `-` as `+` or `/`).
    for k in 0..12 {
        for (disk, bytes) in [(format!("dup{k}\u{301}"), b"1"), (format!("dup{k}x"), b"2")] {
            h.cat
                .files
                .push((disk, format!("dup{k}\u{e9}"), bytes.to_vec()));
        }
    }
    let items: Vec<String> = (0..12).map(|k| format!("dup{k}\u{e9}")).collect();
    let request = serde_json::json!({ "get": items }).to_string();
    h.feed(now, &frame(4, &[], request.as_bytes()));
    let j = assert_error(h.replies().last().unwrap(), "ambiguous");
    let detail = j["detail"].as_str().unwrap();
    assert!(detail.ends_with("dup9\u{e9} and 2 more"), "{detail}");
    // A list request that is not the JSON described.
    h.feed(now, &frame(5, &[], b"{\"after\":7}"));
    assert_error(h.replies().last().unwrap(), "bad-request");
    h.feed(now, &bytes("message_hello"));
    assert_eq!(h.replies().last().unwrap().0, 0x81);
}

#[test]
fn busy_when_the_server_wide_message_budget_cannot_hold_a_request() {
    let cfg = Config {
        held_messages: MemoryBudget::new(100),
        ..Config::default()
    };
    let now = t0();
    // Another connection holds 60 bytes of a request still arriving.
    let mut other = Harness::new(cfg.clone(), now);
    let big = frame(4, &[], &[b' '; 60]);
    other.feed(now, &big[..30]);
    assert_eq!(cfg.held_messages.in_use(), 60, "granted M at once");
    let mut h = Harness::new(cfg.clone(), now);
    h.feed(now, &frame(4, &[], &[b' '; 50]));
    let j = assert_closed_with(&h, "busy");
    assert!(j["detail"].as_str().unwrap().contains("100"), "{j}");
    // Once the other's frame ends its bytes are given back.
    other.feed(now, &big[30..]);
    assert_eq!(cfg.held_messages.in_use(), 0);
    let mut h = Harness::new(cfg.clone(), now);
    h.feed(now, &frame(4, &[], &[b' '; 50]));
    assert_error(h.replies().last().unwrap(), "bad-request");
    // A connection that dies mid-message gives its bytes back too.
    let mut gone = Harness::new(cfg.clone(), now);
    gone.feed(now, &big[..30]);
    gone.eof();
    assert_eq!(cfg.held_messages.in_use(), 0);
}

// ---------------------------------------------------------------------------------------------
// Requests and listings (T14, T15)

#[test]
fn t14_the_request_vector_gets_exactly_the_answer_vector_with_the_data_as_a_file_send() {
    let h = all_splits(&bytes("ferry_request_get"), |h| {
        h.cat = FakeCatalog::with(&[("a.txt", b"AAAA")]);
    });
    assert_eq!(h.out, bytes("ferry_request_answer"));
    // The file's bytes are a File transmit, not a copy through the machine.
    let now = t0();
    let mut c = Connection::<usize>::new(Config::default(), now);
    let mut cat = FakeCatalog::with(&[("a.txt", b"AAAA")]);
    let input = bytes("ferry_request_get");
    assert_eq!(c.handle_input(now, &input, &mut cat), (35, None));
    assert!(matches!(c.poll_transmit(), Some(Transmit::Bytes(_))));
    assert_eq!(
        c.poll_transmit(),
        Some(Transmit::File {
            file: 0,
            offset: 0,
            len: 4
        })
    );
    assert!(matches!(c.poll_transmit(), Some(Transmit::Bytes(_))));
    assert_eq!(c.poll_transmit(), None);
}

#[test]
fn t14_requests_are_answered_in_request_order_by_name_and_sha256_with_repeats() {
    let now = t0();
    let mut h = Harness::new(Config::default(), now);
    h.cat = FakeCatalog::with(&[("a.bin", b"aaa"), ("b.bin", b"bbbbb")]);
    let req = format!("{{\"get\":[\"b.bin\",\"{}\",\"b.bin\"]}}", sha(b"aaa"));
    h.feed(now, &frame(4, &[], req.as_bytes()));
    let mut d = Decoder::new(Limits::default());
    let mut names = Vec::new();
    let mut data = Vec::new();
    let mut pos = 0;
    loop {
        let (n, r) = d.decode(&h.out[pos..]);
        pos += n;
        match r.unwrap() {
            None => break,
            Some(Decoded::FileStart { name, .. }) => names.push(name.to_vec()),
            Some(Decoded::FileData(x)) => data.extend_from_slice(x),
            Some(Decoded::Message(m)) => {
                let j = json(m);
                assert_eq!(j["files"][1]["sha256"], sha(b"aaa"));
                assert_eq!(j["files"].as_array().unwrap().len(), 3);
            }
            Some(_) => {}
        }
    }
    assert_eq!(names, [&b"b.bin"[..], b"a.bin", b"b.bin"]);
    assert_eq!(data, b"bbbbbaaabbbbb");
}

#[test]
fn t14_the_item_cap_is_checked_while_parsing_before_the_rest_is_read() {
    let max = 3;
    assert_eq!(
        parse_request(b"{\"get\":[\"a\",\"b\",\"c\"]}", max).unwrap(),
        ["a", "b", "c"]
    );
    // Four items then garbage: the cap speaks first, so the rest was never parsed.
    let e = parse_request(b"{\"get\":[\"a\",\"b\",\"c\",\"d\", this is not json", max).unwrap_err();
    assert!(e.contains("more than 3 items"), "{e}");
    // Unknown keys before and after are skipped; a duplicate `get` is refused.
    assert_eq!(
        parse_request(b"{\"x\":{\"y\":[1,2]},\"get\":[],\"z\":null}", max).unwrap(),
        Vec::<String>::new()
    );
    assert!(parse_request(b"{\"get\":[],\"get\":[]}", max).is_err());
    assert!(parse_request(b"{\"get\":[1]}", max).is_err());
    // Not an object: the error says what a request is.
    let e = parse_request(b"[\"a\"]", max).unwrap_err();
    assert!(
        e.starts_with("request: ") && e.contains("an object with a \"get\" array of strings"),
        "{e}"
    );
    // Through the machine: max_files items is the cap.
    let cfg = Config {
        limits: Limits {
            max_files: 2,
            ..Limits::default()
        },
        ..Config::default()
    };
    let now = t0();
    let mut h = Harness::new(cfg, now);
    h.cat = FakeCatalog::with(&[("a", b"A")]);
    h.feed(now, &frame(4, &[], b"{\"get\":[\"a\",\"a\",\"a\"]}"));
    let j = assert_error(&h.replies()[0], "bad-request");
    assert!(j["detail"].as_str().unwrap().contains("more than 2 items"));
    assert_eq!(h.cat.resolved, 0, "nothing resolved past the cap");
}

#[test]
fn t15_the_list_vector_gets_exactly_the_listing_vector() {
    let h = all_splits(&bytes("ferry_list_request"), |h| {
        h.cat = FakeCatalog::with(&[("a.txt", b"AAAA")]);
    });
    assert_eq!(h.out, bytes("ferry_listing"));
}

#[test]
fn t15_pages_have_next_only_when_full_and_paging_visits_every_entry_once() {
    let now = t0();
    let mut h = Harness::new(Config::default(), now);
    let names: Vec<String> = (0..25).map(|i| format!("f{:02}", (i * 7) % 25)).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    h.cat = FakeCatalog::with(&files);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for page in 0.. {
        assert!(page < 4, "paging does not end");
        let req = ListRequest {
            after: after.clone(),
            limit: Some(10),
        };
        h.out.clear();
        h.feed(now, &req.to_frame());
        let r = h.replies();
        assert_eq!(r[0].0, 0x86);
        let l = Listing::from_json(&r[0].1).unwrap();
        seen.extend(l.files.iter().map(|e| e.name.clone()));
        match l.next {
            Some(n) => {
                assert_eq!(l.files.len(), 10);
                assert_eq!(&n, &l.files[9].name);
                after = Some(n);
            }
            None => {
                assert!(l.files.len() < 10);
                break;
            }
        }
    }
    let mut want = names.clone();
    want.sort();
    assert_eq!(seen, want);
}

// ---------------------------------------------------------------------------------------------
// Timeouts (T7, T25) and the idle life of pinging peers

#[test]
fn t7_t25_idle_timeout_between_frames_and_any_byte_restarts_it() {
    let cfg = Config {
        max_idle_life: Duration::from_secs(10_000),
        ..Config::default()
    };
    let at = t0();
    let s = Duration::from_secs;
    let mut h = Harness::new(cfg, at);
    assert_eq!(h.conn.poll_timeout(), Some(at + s(120)));
    h.timeout(at + s(119));
    assert!(!h.conn.is_finished());
    // A ping at 100 s: never answered, and the idle timer starts over.
    h.feed(at + s(100), &bytes("ping"));
    assert!(h.out.is_empty());
    assert_eq!(h.conn.poll_timeout(), Some(at + s(220)));
    h.timeout(at + s(219));
    assert!(!h.conn.is_finished());
    h.timeout(at + s(220));
    let j = assert_closed_with(&h, "timeout");
    assert!(j["detail"].as_str().unwrap().contains("idle"), "{j}");
}

#[test]
fn t25_the_stall_rule_wants_64_kib_or_the_frame_end_per_30_s() {
    let at = t0();
    let s = Duration::from_secs;
    let mut h = Harness::new(Config::default(), at);
    let mut f = Vec::new();
    put_frame_header(0, 1, &mut f);
    frame::put_file_header("slow.bin", 200_000, &mut f);
    h.feed(at, &f);
    assert_eq!(h.conn.poll_timeout(), Some(at + s(30)));
    // 64 KiB - 1 more bytes of the frame in the window: not enough to move it.
    let chunk = vec![1u8; 65_536 - f.len() - 1];
    h.feed(at + s(20), &chunk);
    assert_eq!(h.conn.poll_timeout(), Some(at + s(30)));
    // One more byte completes 64 KiB: a new window from now.
    h.feed(at + s(25), &[1]);
    assert_eq!(h.conn.poll_timeout(), Some(at + s(55)));
    h.timeout(at + s(54));
    assert!(!h.conn.is_finished());
    // A byte a second is not progress.
    for k in 0..5 {
        h.feed(at + s(50 + k), &[1]);
    }
    h.timeout(at + s(55));
    let j = assert_closed_with(&h, "timeout");
    assert!(j["detail"].as_str().unwrap().contains("stalled"), "{j}");
    assert_eq!(h.store.dropped, 1, "the half-received file is dropped");
}

#[test]
fn t25_silence_inside_a_header_is_the_stall_rule_not_the_idle_rule() {
    let at = t0();
    let cfg = Config {
        idle_timeout: Duration::from_secs(300),
        ..Config::default()
    };
    let mut h = Harness::new(cfg, at);
    h.feed(at, &[0x80, 0x01, 0x00]);
    assert!(!h.conn.is_between_frames());
    assert_eq!(h.conn.poll_timeout(), Some(at + Duration::from_secs(30)));
    h.timeout(at + Duration::from_secs(30));
    assert_closed_with(&h, "timeout");
}

#[test]
fn pings_never_extend_a_connection_past_its_idle_life() {
    let at = t0();
    let s = Duration::from_secs;
    let mut h = Harness::new(Config::default(), at);
    // A deliver frame at 50 s starts the idle life over.
    h.feed(at + s(50), &bytes("message_hello"));
    // Pings (and unanswered replies) every 100 s keep the idle timer happy...
    for k in 1..=5 {
        h.feed(at + s(50 + 100 * k), &bytes("ping"));
        h.feed(at + s(50 + 100 * k), &bytes("ferry_ack_file_only"));
        h.timeout(at + s(50 + 100 * k));
        assert!(!h.conn.is_finished(), "closed at {} s", 50 + 100 * k);
    }
    // ...but not past 600 s after the last frame that did something.
    assert_eq!(h.conn.poll_timeout(), Some(at + s(650)));
    h.timeout(at + s(650));
    let j = assert_closed_with(&h, "timeout");
    assert!(j["detail"].as_str().unwrap().contains("pings"), "{j}");
}

#[test]
fn a_ping_that_trickles_a_file_is_cut_at_the_idle_life_too() {
    let at = t0();
    let s = Duration::from_secs;
    let cfg = Config {
        max_idle_life: s(100),
        ..Config::default()
    };
    let mut h = Harness::new(cfg, at);
    let mut f = Vec::new();
    put_frame_header(2, 1, &mut f);
    frame::put_file_header("x", 1 << 30, &mut f);
    h.feed(at, &f);
    // 64 KiB every 20 s satisfies the stall rule, but a ping does nothing.
    for k in 1..5 {
        h.feed(at + s(20 * k), &[0; 65_536]);
        h.timeout(at + s(20 * k));
    }
    assert!(!h.conn.is_finished());
    assert_eq!(h.conn.poll_timeout(), Some(at + s(100)));
    h.timeout(at + s(100));
    assert_closed_with(&h, "timeout");
}

#[test]
fn a_long_deliver_frame_is_not_cut_by_the_idle_life() {
    let at = t0();
    let s = Duration::from_secs;
    let cfg = Config {
        max_idle_life: s(100),
        ..Config::default()
    };
    let mut h = Harness::new(cfg, at);
    let mut f = Vec::new();
    put_frame_header(0, 1, &mut f);
    frame::put_file_header("x", 1 << 30, &mut f);
    h.feed(at, &f);
    for k in 1..20 {
        h.feed(at + s(20 * k), &[0; 65_536]);
        h.timeout(at + s(20 * k));
    }
    assert!(!h.conn.is_finished());
}

// ---------------------------------------------------------------------------------------------
// Robustness

#[test]
fn seeded_random_input_never_panics_and_every_reply_is_a_valid_frame() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let vectors: Vec<Vec<u8>> = [
        "file_only",
        "concat_file_ping_message",
        "ferry_request_get",
        "two_files_and_message",
    ]
    .iter()
    .map(|v| bytes(v))
    .collect();
    for round in 0..300 {
        let mut input = vectors[round % vectors.len()].clone();
        // Flip some bytes, then cut anywhere.
        for _ in 0..(next() % 4) {
            let i = (next() as usize) % input.len();
            input[i] = next() as u8;
        }
        input.truncate((next() as usize) % (input.len() + 1));
        let now = t0();
        let mut h = Harness::new(Config::default(), now);
        h.cat = FakeCatalog::with(&[("a.txt", b"AAAA")]);
        for c in input.chunks(1 + (next() % 7) as usize) {
            h.feed(now, c);
        }
        h.eof();
        assert!(h.conn.is_finished());
        let _ = h.replies();
        assert!(h.store.open.is_none());
    }
}

#[test]
fn a_frame_with_a_changed_version_is_reported_as_sent() {
    let mut f = Vec::new();
    put_frame_header_with_version(9, 42, 0, &mut f);
    f.extend_from_slice(&0u64.to_be_bytes());
    let h = run(&f, Config::default());
    assert!(h.events.contains(&Event::Frame {
        status: 9,
        version: 42,
        files: 0
    }));
    assert!(h.out.is_empty());
}

#[test]
fn debug_shows_the_state_not_the_bytes() {
    let h = Harness::new(Config::default(), t0());
    assert_eq!(
        format!("{:?}", h.conn),
        "Connection { frame: None, awaiting: None, transmits: 0, finished: false, .. }"
    );
}
