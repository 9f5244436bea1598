//! Client machines against the server machine and the in-memory store: the spec's transcripts
//! byte for byte, a window of 32 TRANSFERs of 65,536 bytes, resumption after a cut, `more`.

use super::*;
use crate::proto::filestorage::ids::client_fid;
use crate::proto::filestorage::server::tests::{config, t0, MemStore};
use crate::proto::filestorage::server::Connection;
use crate::proto::filestorage::testdata::{self, FID, NOTES_ID, NOTES_SHA, NOW, TOKEN_A};
use crate::proto::filestorage::token::{mint, tests::key};
use sha2::{Digest, Sha256};

/// Both ends of one connection and the bytes that crossed it.
struct Link {
    server: Connection,
    to_server: Vec<u8>,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
}

impl Link {
    fn new() -> Link {
        Link {
            server: Connection::new(config(false), t0(), NOW),
            to_server: Vec::new(),
            c2s: Vec::new(),
            s2c: Vec::new(),
        }
    }

    /// Serves everything the client sent.
    fn serve_all(&mut self, store: &mut MemStore) -> Vec<u8> {
        self.serve(store, &mut usize::MAX.clone())
    }

    /// Feeds at most `budget` client bytes to the server, answers everything, and returns the
    /// server's reply bytes.
    fn serve(&mut self, store: &mut MemStore, budget: &mut usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            while store.answer(&mut self.server) {}
            self.server.poll_transmit(&mut out);
            let room = self
                .server
                .input_room()
                .min(self.to_server.len())
                .min(*budget);
            if room == 0 {
                break;
            }
            let chunk: Vec<u8> = self.to_server.drain(..room).collect();
            *budget -= room;
            self.server.handle_input(&chunk, t0(), NOW);
        }
        self.s2c.extend_from_slice(&out);
        out
    }
}

/// Runs `put` over `link` until it finishes or `budget` client bytes have reached the server.
fn run_put(
    put: &mut Put,
    link: &mut Link,
    store: &mut MemStore,
    sources: &[Vec<u8>],
    mut budget: usize,
) -> Vec<PutEvent> {
    let mut events = Vec::new();
    loop {
        while let Some(ev) = put.poll_event() {
            match ev {
                PutEvent::ReadChunk(c) => {
                    let src = &sources[c.file as usize];
                    put.send_chunk(c, &src[c.offset as usize..(c.offset + c.len) as usize]);
                }
                other => events.push(other),
            }
        }
        let mut bytes = Vec::new();
        put.poll_transmit(&mut bytes);
        link.c2s.extend_from_slice(&bytes);
        link.to_server.extend_from_slice(&bytes);
        let replies = link.serve(store, &mut budget);
        if put.is_finished() || (replies.is_empty() && bytes.is_empty()) {
            return events;
        }
        put.handle_input(&replies);
    }
}

fn notes_put(ids: MessageIds) -> Put {
    Put::new(
        PutConfig {
            token: TOKEN_A.into(),
            files: vec![FileSpec {
                name: "notes.txt".into(),
                size: 2500,
                sha256: crate::wire::hex::parse_sha256(NOTES_SHA),
            }],
            tags: vec!["work".into(), "2024".into()],
            fid: FID.parse().unwrap(),
            chunk_size: None,
            window: 32,
        },
        ids,
    )
}

fn first_id() -> MessageIds {
    MessageIds::sequential("1a2b3c4d-0000-4000-8000-000000000001".parse().unwrap())
}

#[test]
fn s1_s2_pair_runs_the_4_5_and_6_transcripts_byte_for_byte() {
    let mut store = MemStore::new();
    let mut link = Link::new();
    let mut put = notes_put(first_id());
    let events = run_put(
        &mut put,
        &mut link,
        &mut store,
        &[testdata::notes()],
        usize::MAX,
    );
    let id: Uuid = NOTES_ID.parse().unwrap();
    assert_eq!(
        events,
        [PutEvent::FileComplete { file: 0, id }, PutEvent::Done]
    );
    assert_eq!(link.c2s, testdata::client_frames_4_5().concat());
    assert_eq!(link.s2c, testdata::server_frames_4_5().concat());
    assert_eq!(
        put.peak_in_flight(),
        3,
        "all three TRANSFERs went before the first Ok"
    );
    assert_eq!(put.completed(), [Some(id)]);

    // Spec 6 on the same connection: QUERY, then FETCH of the last four bytes.
    let ids = MessageIds::sequential("1a2b3c4d-0000-4000-8000-000000000005".parse().unwrap());
    let mut q = QueryClient::new(
        QueryConfig {
            token: TOKEN_A.into(),
            tags: vec!["work".into()],
            name: None,
        },
        ids,
    );
    let mut bytes = Vec::new();
    q.poll_transmit(&mut bytes);
    assert_eq!(bytes, testdata::client_frames_6()[0]);
    link.to_server.extend_from_slice(&bytes);
    let reply = link.serve_all(&mut store);
    assert_eq!(reply, testdata::server_frames_6()[0]);
    q.handle_input(&reply);
    let Some(QueryEvent::Results(r)) = q.poll_event() else {
        panic!()
    };
    assert_eq!((r.len(), r[0].id, r[0].size), (1, id, 2500));
    assert_eq!(q.poll_event(), Some(QueryEvent::Done));
    assert!(q.is_finished());

    let ids = MessageIds::sequential("1a2b3c4d-0000-4000-8000-000000000006".parse().unwrap());
    let cfg = FetchConfig {
        token: TOKEN_A.into(),
        id,
        size: None,
        start: 2496,
        length: 1000,
        window: 8,
    };
    let mut f = FetchClient::new(cfg, ids);
    let mut bytes = Vec::new();
    f.poll_transmit(&mut bytes);
    assert_eq!(bytes, testdata::client_frames_6()[1]);
    link.to_server.extend_from_slice(&bytes);
    let reply = link.serve_all(&mut store);
    assert_eq!(reply, testdata::server_frames_6()[1]);
    f.handle_input(&reply);
    assert_eq!(
        f.poll_event(),
        Some(FetchEvent::Data {
            offset: 2496,
            bytes: &[0xc0, 0xc1, 0xc2, 0xc3]
        })
    );
    assert_eq!(f.poll_event(), Some(FetchEvent::Done));
    assert_eq!(f.poll_event(), None);
    assert!(f.is_finished());
}

fn big_sources() -> Vec<Vec<u8>> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    [5 * 1024 * 1024 + 17, 1, 300_000, 0]
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

fn big_put(sources: &[Vec<u8>], ids: MessageIds) -> Put {
    let files: Vec<FileSpec> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| FileSpec {
            name: format!("f{i}"),
            size: s.len() as u64,
            sha256: Some(Sha256::digest(s).into()),
        })
        .collect();
    let fid_files: Vec<_> = files
        .iter()
        .map(|f| crate::proto::filestorage::ids::FidFile {
            name: &f.name,
            size: f.size,
            sha256: f.sha256.as_ref(),
        })
        .collect();
    let fid = client_fid("karchnu", &fid_files, &["bench"], 65_536);
    Put::new(
        PutConfig {
            token: TOKEN_A.into(),
            files,
            tags: vec!["bench".into()],
            fid,
            chunk_size: Some(65_536),
            window: 32,
        },
        ids,
    )
}

fn assert_stored(store: &MemStore, sources: &[Vec<u8>]) {
    for s in sources {
        let sha: [u8; 32] = Sha256::digest(s).into();
        assert_eq!(store.objects.get(&sha).map(Vec::len), Some(s.len()));
        assert!(store.objects[&sha] == *s, "stored bytes differ");
    }
}

fn frame_lens(bytes: &[u8]) -> Vec<(u8, usize)> {
    let mut dec = crate::proto::filestorage::frame::FrameDecoder::new(false);
    dec.extend(bytes);
    let mut v = Vec::new();
    while let Ok(Some(Decoded::Frame(f))) = dec.next_frame() {
        v.push((f.utype, f.json.len() + 1));
    }
    assert_eq!(dec.buffered(), 0);
    v
}

#[test]
fn s24_window_32_with_65536_byte_chunks() {
    let sources = big_sources();
    let mut store = MemStore::new();
    let mut link = Link::new();
    let mut put = big_put(&sources, MessageIds::random([3; 16]));
    let events = run_put(&mut put, &mut link, &mut store, &sources, usize::MAX);
    assert_eq!(events.last(), Some(&PutEvent::Done));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, PutEvent::FileComplete { .. }))
            .count(),
        4
    );
    assert_eq!(put.peak_in_flight(), 32);
    assert!(!put.has_window_room(), "done: nothing more to send");
    assert_stored(&store, &sources);
    let lens = frame_lens(&link.c2s);
    let transfers: Vec<usize> = lens
        .iter()
        .filter(|(t, _)| *t == 3)
        .map(|(_, l)| *l)
        .collect();
    assert_eq!(transfers.len(), 81 + 1 + 5, "every chunk sent exactly once");
    assert!(
        transfers.iter().all(|&l| l <= 87_525),
        "{:?}",
        transfers.iter().max()
    );
    assert!(frame_lens(&link.s2c)
        .iter()
        .all(|&(t, l)| t == 2 && l <= 99_992));
    assert!(store.states.is_empty());
}

#[test]
fn s39_resume_after_a_cut_sends_only_what_is_missing() {
    let sources = big_sources();
    let mut store = MemStore::new();
    let mut put = big_put(&sources, MessageIds::random([4; 16]));
    // Cut the connection three times at arbitrary byte counts, each time mid-frame.
    let mut sent_transfers = 0;
    for budget in [1_000_000, 2_345_678, 777] {
        let mut link = Link::new();
        let events = run_put(&mut put, &mut link, &mut store, &sources, budget);
        assert!(!events
            .iter()
            .any(|e| matches!(e, PutEvent::Done | PutEvent::Failed(_))));
        sent_transfers += frame_lens(&link.c2s)
            .iter()
            .filter(|(t, _)| *t == 3)
            .count();
        put.handle_disconnect();
    }
    let held_before: u64 = store
        .states
        .values()
        .map(|s| s.missing.missing_chunks())
        .sum();
    let mut link = Link::new();
    let events = run_put(&mut put, &mut link, &mut store, &sources, usize::MAX);
    assert_eq!(events.last(), Some(&PutEvent::Done));
    let last_round = frame_lens(&link.c2s)
        .iter()
        .filter(|(t, _)| *t == 3)
        .count() as u64;
    assert_eq!(
        last_round, held_before,
        "the last round sent exactly the missing chunks"
    );
    assert!(
        sent_transfers as u64 + last_round < 87 + 4 * 32,
        "little was sent twice"
    );
    assert_stored(&store, &sources);
    assert_eq!(store.records.len(), 4);
    // Rerunning the finished command: one AUTHENTICATION, nothing missing, done.
    let mut again = big_put(&sources, MessageIds::random([5; 16]));
    let mut link = Link::new();
    let events = run_put(&mut again, &mut link, &mut store, &sources, usize::MAX);
    assert_eq!(events.last(), Some(&PutEvent::Done));
    assert_eq!(frame_lens(&link.c2s).len(), 1);
}

#[test]
fn s24_two_connections_uploading_one_fid_give_one_file() {
    let sources = big_sources();
    let mut store = MemStore::new();
    let mut a = big_put(&sources, MessageIds::random([6; 16]));
    let mut b = big_put(&sources, MessageIds::random([7; 16]));
    let (mut link_a, mut link_b) = (Link::new(), Link::new());
    let (mut done_a, mut done_b) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        if a.is_finished() && b.is_finished() {
            break;
        }
        done_a.extend(run_put(&mut a, &mut link_a, &mut store, &sources, 300_000));
        done_b.extend(run_put(&mut b, &mut link_b, &mut store, &sources, 200_000));
    }
    assert_eq!(done_a.last(), Some(&PutEvent::Done));
    assert_eq!(done_b.last(), Some(&PutEvent::Done));
    assert_eq!(store.records.len(), 4, "one record per file");
    assert_stored(&store, &sources);
    assert_eq!(store.ledgers[&1002].used_files, 4, "charged once");
    assert_eq!(store.ledgers[&1002].reserved_bytes, 0);
}

#[test]
fn s15_more_ranges_are_fetched_by_asking_again() {
    let sources = vec![vec![9u8; 40 * 1000]];
    let mut store = MemStore::new();
    let files = vec![FileSpec {
        name: "holes".into(),
        size: 40_000,
        sha256: None,
    }];
    let cfg = PutConfig {
        token: TOKEN_A.into(),
        files,
        tags: vec![],
        fid: FID.parse().unwrap(),
        chunk_size: None,
        window: 4,
    };
    // First run: send every other chunk only, by answering the even ones through a side door.
    let mut put = Put::new(cfg.clone(), MessageIds::random([1; 16]));
    let mut link = Link::new();
    run_put(&mut put, &mut link, &mut store, &sources, 400);
    let state = store
        .states
        .get_mut(&FID.parse().unwrap())
        .expect("authenticated");
    for n in (0..40).step_by(2) {
        state.missing.remove(0, n);
    }
    let mut server_config = (*config(false)).clone_for_test();
    server_config.limits.max_ranges = 3;
    let mut link = Link::new();
    link.server = Connection::new(std::sync::Arc::new(server_config), t0(), NOW);
    let mut put = Put::new(cfg, MessageIds::random([2; 16]));
    let events = run_put(&mut put, &mut link, &mut store, &sources, usize::MAX);
    assert_eq!(events.last(), Some(&PutEvent::Done));
    let lens = frame_lens(&link.c2s);
    let auths = lens.iter().filter(|(t, _)| *t == 1).count();
    assert_eq!(
        auths, 7,
        "20 holes at 3 ranges a reply; the last chunk's Ok says complete"
    );
    assert_eq!(lens.iter().filter(|(t, _)| *t == 3).count(), 20);
    assert_eq!(store.records.len(), 1);
}

/// A `complete` reply must name the file the chunk was of and its id; either one wrong is a
/// protocol error, the right pair completes the put (whole run, proto-filestorage client part:
/// the guard as `true`, or its `&&` as `||`, took a wrong id for the file's).
#[test]
fn a_complete_reply_must_name_the_file_and_its_id() {
    let wrong_id = "00000000-0000-5000-8000-000000000000";
    let wrong_file = format!(
        r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000004","response":"Ok","complete":1,"id":"{}"}}"#,
        testdata::NOTES_ID
    );
    let wrong = format!(
        r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000004","response":"Ok","complete":0,"id":"{wrong_id}"}}"#
    );
    for (last, fails) in [
        (None, false),
        (Some(testdata::frame(2, &wrong)), true),
        (Some(testdata::frame(2, &wrong_file)), true),
    ] {
        let mut frames = testdata::server_frames_4_5();
        if let Some(f) = last {
            *frames.last_mut().unwrap() = f;
        }
        let mut put = notes_put(first_id());
        let mut events = Vec::new();
        for f in &frames {
            let mut out = Vec::new();
            put.poll_transmit(&mut out);
            put.handle_input(f);
            while let Some(ev) = put.poll_event() {
                match ev {
                    PutEvent::ReadChunk(c) => {
                        let src = testdata::notes();
                        put.send_chunk(c, &src[c.offset as usize..(c.offset + c.len) as usize]);
                    }
                    other => events.push(other),
                }
            }
        }
        let failed = events.contains(&PutEvent::Failed(ClientError::Protocol("complete")));
        assert_eq!(failed, fails, "{events:?}");
        assert!(put.is_finished(), "{events:?}");
    }
}

/// Chunks handed to the driver but not yet sent hold the round open: their replies may come
/// back first, and no new AUTHENTICATION goes out meanwhile; the window counts them; a chunk
/// sent twice is ignored (whole run, proto-filestorage client part: `reading > 0` as `<`
/// started the next round early; the window sums `in_flight + reading` as `-` underflowed;
/// `send_chunk`'s guard with `&&` took a chunk nobody asked for).
#[test]
fn chunks_being_read_hold_the_round_open() {
    let frames = testdata::server_frames_4_5();
    let src = testdata::notes();
    let bytes_of = |c: ChunkRef| src[c.offset as usize..(c.offset + c.len) as usize].to_vec();
    let mut put = notes_put(first_id());
    let mut out = Vec::new();
    put.poll_transmit(&mut out);
    put.handle_input(&frames[0]);
    let mut asked = Vec::new();
    while let Some(ev) = put.poll_event() {
        let PutEvent::ReadChunk(c) = ev else {
            panic!("{ev:?}")
        };
        asked.push(c);
    }
    assert_eq!(asked.len(), 3);
    assert!(put.has_window_room(), "3 of a window of 32");
    put.send_chunk(asked[0], &bytes_of(asked[0]));
    put.send_chunk(asked[1], &bytes_of(asked[1]));
    out.clear();
    put.poll_transmit(&mut out);
    assert_eq!(frame_lens(&out).len(), 2, "two TRANSFERs");
    put.handle_input(&frames[1]);
    put.handle_input(&frames[2]);
    assert_eq!(put.poll_event(), None);
    out.clear();
    put.poll_transmit(&mut out);
    assert!(out.is_empty(), "no new round while chunk 2 is being read");
    put.send_chunk(asked[2], &bytes_of(asked[2]));
    // The same chunk again, nobody asking: ignored.
    put.send_chunk(asked[2], &bytes_of(asked[2]));
    out.clear();
    put.poll_transmit(&mut out);
    assert_eq!(frame_lens(&out).len(), 1, "one TRANSFER");
    put.handle_input(&frames[3]);
    assert!(matches!(
        put.poll_event(),
        Some(PutEvent::FileComplete { file: 0, .. })
    ));
    assert_eq!(put.poll_event(), Some(PutEvent::Done));

    // Every chunk answered but the file's completion not seen (another connection finished
    // it): not done, AUTHENTICATION again to learn where it stands (the whole run's
    // `!more && all complete` as `||` said Done).
    let mut put = notes_put(first_id());
    put.poll_transmit(&mut out);
    put.handle_input(&frames[0]);
    while let Some(PutEvent::ReadChunk(c)) = put.poll_event() {
        put.send_chunk(c, &bytes_of(c));
    }
    put.handle_input(&frames[1]);
    put.handle_input(&frames[2]);
    put.handle_input(&testdata::frame(
        2,
        r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000004","response":"Ok"}"#,
    ));
    assert_eq!(put.poll_event(), None);
    assert!(!put.is_finished());
    out.clear();
    put.poll_transmit(&mut out);
    let sent = frame_lens(&out);
    assert_eq!(
        sent.last().map(|f| f.0),
        Some(1),
        "an AUTHENTICATION last: {sent:?}"
    );
}

#[test]
fn put_fails_on_refusal_and_on_protocol_errors() {
    let mut store = MemStore::new();
    store.quotas.default.max_bytes = 10;
    let mut put = notes_put(first_id());
    let events = run_put(
        &mut put,
        &mut Link::new(),
        &mut store,
        &[testdata::notes()],
        usize::MAX,
    );
    assert_eq!(
        events,
        [PutEvent::Failed(ClientError::Refused {
            request: "authentication",
            reason: "quota-exceeded: bytes".into()
        })]
    );
    assert!(put.is_finished());
    // A reply to another message, a reply that is not a RESPONSE (also one carrying a valid
    // answer: the whole run's type guard as `false` took it), junk, an empty missing range
    // (`first < end` as `<=` let [0,2,2] through).
    let mut typed_3 = testdata::server_frames_4_5()[0].clone();
    typed_3[4] = 3;
    for reply in [
        typed_3,
        testdata::frame(
            2,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","missing":[[0,2,2]],"chunk-size":1000,"window":32}"#,
        ),
        testdata::frame(
            2,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000009","response":"Ok","missing":[],"chunk-size":1000,"window":1}"#,
        ),
        testdata::frame(3, "{}"),
        vec![0xff; 8],
        testdata::frame(
            2,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","missing":[[0,0,4]],"chunk-size":1000,"window":1}"#,
        ),
        testdata::frame(
            2,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","missing":[]}"#,
        ),
        testdata::frame(
            2,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","missing":[],"more":true,"chunk-size":1000,"window":1}"#,
        ),
        testdata::frame(
            2,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","missing":[],"chunk-size":999,"window":1}"#,
        ),
    ] {
        let mut put = notes_put(first_id());
        put.handle_input(&reply);
        assert!(
            matches!(
                put.poll_event(),
                Some(PutEvent::Failed(ClientError::Protocol(_)))
            ),
            "{reply:?}"
        );
        assert!(put.is_finished());
    }
    // What a failure says (the whole run's Display as empty stayed green).
    assert_eq!(
        ClientError::Refused {
            request: "authentication",
            reason: "quota-exceeded: bytes".into()
        }
        .to_string(),
        "filestorage: authentication refused: quota-exceeded: bytes"
    );
    assert_eq!(
        ClientError::Protocol("complete").to_string(),
        "filestorage: server broke the protocol: complete"
    );
    // The source changed size under the driver.
    let mut put = notes_put(first_id());
    put.handle_input(&testdata::server_frames_4_5()[0]);
    let Some(PutEvent::ReadChunk(c)) = put.poll_event() else {
        panic!()
    };
    put.send_chunk(c, &[0; 10]);
    assert_eq!(
        put.poll_event(),
        Some(PutEvent::Failed(ClientError::Protocol(
            "source file changed size"
        )))
    );
}

#[test]
fn query_client_follows_more_until_every_result_is_in() {
    let mut store = MemStore::new();
    let other = mint(&key(), 7, "other", None);
    for i in 0..10u8 {
        let fid = Uuid([i + 1; 16]);
        let files = vec![FileSpec {
            name: format!("n{i}"),
            size: 3,
            sha256: None,
        }];
        let cfg = PutConfig {
            token: if i % 2 == 0 {
                TOKEN_A.into()
            } else {
                other.clone()
            },
            files,
            tags: vec!["t".into()],
            fid,
            chunk_size: None,
            window: 4,
        };
        let mut put = Put::new(cfg, MessageIds::random([i; 16]));
        let events = run_put(
            &mut put,
            &mut Link::new(),
            &mut store,
            &[vec![i; 3]],
            usize::MAX,
        );
        assert_eq!(events.last(), Some(&PutEvent::Done));
    }
    let mut server_config = (*config(false)).clone_for_test();
    server_config.limits.max_results = 2;
    let mut link = Link::new();
    link.server = Connection::new(std::sync::Arc::new(server_config), t0(), NOW);
    let mut q = QueryClient::new(
        QueryConfig {
            token: TOKEN_A.into(),
            tags: vec!["t".into()],
            name: None,
        },
        MessageIds::random([0; 16]),
    );
    let mut all = Vec::new();
    let mut sent = 0;
    while !q.is_finished() {
        let mut bytes = Vec::new();
        q.poll_transmit(&mut bytes);
        sent += frame_lens(&bytes).len();
        link.to_server.extend_from_slice(&bytes);
        let reply = link.serve_all(&mut store);
        q.handle_input(&reply);
        while let Some(ev) = q.poll_event() {
            match ev {
                QueryEvent::Results(r) => all.extend(r),
                QueryEvent::Done => {}
                QueryEvent::Failed(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(all.len(), 5, "only uid 1002's files");
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(sent, 3, "pages of 2, 2 and 1");
}

#[test]
fn fetch_client_pipelines_with_a_known_size() {
    let sources = vec![(0..200_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()];
    let mut store = MemStore::new();
    let files = vec![FileSpec {
        name: "f".into(),
        size: 200_000,
        sha256: None,
    }];
    let cfg = PutConfig {
        token: TOKEN_A.into(),
        files,
        tags: vec![],
        fid: FID.parse().unwrap(),
        chunk_size: Some(65_536),
        window: 8,
    };
    let mut put = Put::new(cfg, MessageIds::random([1; 16]));
    run_put(&mut put, &mut Link::new(), &mut store, &sources, usize::MAX);
    let id = put.completed()[0].unwrap();
    for size in [Some(200_000), None] {
        let cfg = FetchConfig {
            token: TOKEN_A.into(),
            id,
            size,
            start: 0,
            length: 65_536,
            window: 8,
        };
        let mut f = FetchClient::new(cfg, MessageIds::random([2; 16]));
        let mut link = Link::new();
        let mut got = Vec::new();
        let mut sent = 0;
        while !f.is_finished() {
            let mut bytes = Vec::new();
            f.poll_transmit(&mut bytes);
            sent += frame_lens(&bytes).len();
            link.to_server.extend_from_slice(&bytes);
            let reply = link.serve_all(&mut store);
            f.handle_input(&reply);
            while let Some(ev) = f.poll_event() {
                match ev {
                    FetchEvent::Data { offset, bytes } => {
                        assert_eq!(offset as usize, got.len());
                        got.extend_from_slice(bytes);
                    }
                    FetchEvent::Done => {}
                    FetchEvent::Failed(e) => panic!("{e}"),
                }
            }
        }
        assert!(got == sources[0], "{size:?}");
        assert_eq!(sent, 4, "{size:?}: four FETCHes of 65,536 bytes");
    }
    // Not visible: the refusal.
    let other = mint(&key(), 7, "other", None);
    let cfg = FetchConfig {
        token: other,
        id,
        size: None,
        start: 0,
        length: 10,
        window: 1,
    };
    let mut f = FetchClient::new(cfg, MessageIds::random([2; 16]));
    let mut link = Link::new();
    let mut bytes = Vec::new();
    f.poll_transmit(&mut bytes);
    link.to_server.extend_from_slice(&bytes);
    f.handle_input(&link.serve_all(&mut store));
    assert_eq!(
        f.poll_event(),
        Some(FetchEvent::Failed(ClientError::Refused {
            request: "fetch",
            reason: "not-found".into()
        }))
    );
}

#[test]
fn client_machines_never_panic_on_random_replies() {
    let mut x = 0x0bad_5eed_0bad_5eedu64;
    let frames = [testdata::server_frames_4_5(), testdata::server_frames_6()].concat();
    for _ in 0..3000 {
        let mut input = Vec::new();
        for _ in 0..(x % 5) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut f = frames[(x % frames.len() as u64) as usize].clone();
            let at = (x >> 8) as usize % f.len();
            f[at] = (x >> 16) as u8;
            input.extend(f);
        }
        let mut put = notes_put(first_id());
        put.handle_input(&input);
        while let Some(ev) = put.poll_event() {
            if let PutEvent::ReadChunk(c) = ev {
                put.send_chunk(c, &vec![0; c.len as usize]);
            }
        }
        let mut q = QueryClient::new(
            QueryConfig {
                token: "t".into(),
                tags: vec![],
                name: None,
            },
            first_id(),
        );
        q.handle_input(&input);
        while q.poll_event().is_some() {}
        let cfg = FetchConfig {
            token: "t".into(),
            id: Uuid::NIL,
            size: Some(2500),
            start: 0,
            length: 1000,
            window: 4,
        };
        let mut f = FetchClient::new(cfg, first_id());
        f.handle_input(&input);
        while f.poll_event().is_some() {}
    }
}

/// The driver reads replies early only while the window has room: none before the
/// AUTHENTICATION's Ok, room for two TRANSFERs with window 2, none once both are out, room again
/// after an Ok.
#[test]
fn has_window_room_only_while_sending_below_the_window() {
    let mut put = notes_put(first_id());
    put.config.window = 2;
    let mut out = Vec::new();
    put.poll_transmit(&mut out);
    assert!(!put.has_window_room(), "AUTHENTICATION unanswered");
    let replies = testdata::server_frames_4_5();
    put.handle_input(&replies[0]);
    assert!(put.has_window_room());
    let notes = testdata::notes();
    for _ in 0..2 {
        let Some(PutEvent::ReadChunk(c)) = put.poll_event() else {
            panic!("a chunk to read");
        };
        put.send_chunk(c, &notes[c.offset as usize..(c.offset + c.len) as usize]);
    }
    assert!(!put.has_window_room(), "two TRANSFERs unanswered, window 2");
    assert_eq!(put.poll_event(), None);
    put.handle_input(&replies[1]);
    assert!(put.has_window_room(), "one Ok back");
}

fn fetch_config(size: Option<u64>, length: u64, window: u32) -> FetchConfig {
    FetchConfig {
        token: TOKEN_A.into(),
        id: NOTES_ID.parse().unwrap(),
        size,
        start: 0,
        length,
        window,
    }
}

/// A server's Ok reply to the FETCH of message id `mid`: `data`, and whether it ends the file.
fn fetch_reply(mid: Uuid, data: &[u8], eof: bool) -> Vec<u8> {
    let mid = MessageId::from_uuid(mid);
    let mut reply = Vec::new();
    frame_with(&mut reply, utype::RESPONSE, |out| {
        crate::proto::filestorage::json::encode_ok_fetch(out, &mid, data, eof)
    });
    reply
}

/// S34: with the size known, FETCHes go `window` deep and none asks at or past the end.
#[test]
fn s34_fetches_fill_the_window_and_stop_at_the_end() {
    let mut f = FetchClient::new(fetch_config(Some(10_000), 1000, 3), first_id());
    let mut out = Vec::new();
    f.poll_transmit(&mut out);
    assert_eq!(frame_lens(&out).len(), 3, "window 3");
    let mut f = FetchClient::new(fetch_config(Some(2000), 1000, 8), first_id());
    let mut out = Vec::new();
    f.poll_transmit(&mut out);
    assert_eq!(
        frame_lens(&out).len(),
        2,
        "2,000 bytes are two FETCHes of 1,000"
    );
}

/// S34: with the size unknown, a reply short of `length` must say `eof`.
#[test]
fn s34_a_short_reply_without_eof_is_a_protocol_error() {
    let ids = || MessageIds::random([2; 16]);
    let mut f = FetchClient::new(fetch_config(None, 1000, 1), ids());
    let mut out = Vec::new();
    f.poll_transmit(&mut out);
    assert_eq!(frame_lens(&out).len(), 1);
    f.handle_input(&fetch_reply(ids().next_id(), &[7; 10], false));
    assert_eq!(
        f.poll_event(),
        Some(FetchEvent::Failed(ClientError::Protocol("fetch length")))
    );
}

/// S34: with the size known, a reply of the right length must also say `eof` exactly at the end.
#[test]
fn s34_a_reply_of_the_right_length_with_a_wrong_eof_is_a_protocol_error() {
    let ids = || MessageIds::random([3; 16]);
    let mut f = FetchClient::new(fetch_config(Some(2000), 1000, 1), ids());
    let mut out = Vec::new();
    f.poll_transmit(&mut out);
    f.handle_input(&fetch_reply(ids().next_id(), &[7; 1000], true));
    assert_eq!(
        f.poll_event(),
        Some(FetchEvent::Failed(ClientError::Protocol("fetch length")))
    );
}
