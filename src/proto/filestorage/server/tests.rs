//! Server machine tests, with [`MemStore`]: an in-memory driver built from the pure store parts,
//! also used by the client pair tests.

use super::*;
use crate::proto::filestorage::frame::put_frame;
use crate::proto::filestorage::ids::store_id;
use crate::proto::filestorage::json::{parse_response, FileSpec, ResponseBody};
use crate::proto::filestorage::store::auth::{plan_authentication, AuthPlan, FileFate};
use crate::proto::filestorage::store::index::{fetch_range, Entry, Index, QuerySpec};
use crate::proto::filestorage::store::quota::{QuotaConfig, UidLedger};
use crate::proto::filestorage::store::records::{PartialState, Record};
use crate::proto::filestorage::testdata::{self, frame, FID, NOW, TOKEN_A};
use crate::proto::filestorage::token::tests::key;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::Duration;

/// An in-memory store answering a connection's events the way the real driver will.
pub(crate) struct MemStore {
    pub states: HashMap<Uuid, PartialState>,
    pub parts: HashMap<(Uuid, u32), Vec<u8>>,
    pub records: HashMap<Uuid, Record>,
    pub objects: HashMap<[u8; 32], Vec<u8>>,
    pub index: Index,
    pub ledgers: HashMap<u32, UidLedger>,
    pub quotas: QuotaConfig,
    pub free: u64,
    /// Writes performed (not replays).
    pub writes: usize,
    empty: MissingSet,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore {
            states: HashMap::new(),
            parts: HashMap::new(),
            records: HashMap::new(),
            objects: HashMap::new(),
            index: Index::new(),
            ledgers: HashMap::new(),
            quotas: QuotaConfig::default(),
            free: 1 << 40,
            writes: 0,
            empty: MissingSet::none(0),
        }
    }

    fn complete(
        &mut self,
        call_uid: u32,
        fid: Uuid,
        file: u32,
        spec: &FileSpec,
        tags: &[String],
        data: Vec<u8>,
    ) -> Result<Uuid, Reason> {
        let sha: [u8; 32] = Sha256::digest(&data).into();
        if spec.sha256.is_some_and(|h| h != sha) {
            return Err(Reason::with_detail(Code::DigestMismatch, file));
        }
        let id = store_id(&fid, u64::from(file));
        self.objects.insert(sha, data);
        self.records.insert(
            id,
            Record {
                id,
                owner: call_uid,
                name: spec.name.clone(),
                size: spec.size,
                sha256: sha,
                tags: tags.to_vec(),
                fid,
                file,
                created: 0,
                published: None,
            },
        );
        self.index.insert(Entry {
            id,
            owner: Some(call_uid),
            name: spec.name.clone(),
            size: spec.size,
            sha256: sha,
            tags: tags.to_vec(),
        });
        self.ledgers
            .entry(call_uid)
            .or_default()
            .complete_file(spec.size);
        Ok(id)
    }

    fn authenticate(&mut self, call: &AuthCall) -> Result<Option<Uuid>, Reason> {
        let plan = plan_authentication(
            call,
            self.states.get(&call.fid),
            |id| self.records.get(id).cloned(),
            32,
        )?;
        let AuthPlan::New(batch) = plan else {
            return Ok(Some(call.fid));
        };
        let limits = *self.quotas.limits_for(call.uid);
        self.ledgers.entry(call.uid).or_default().try_reserve(
            &limits,
            &batch.reserve_sizes(call),
            batch.has_transfer(),
            self.free,
        )?;
        for (i, fate) in batch.fates.iter().enumerate() {
            if *fate == FileFate::StoreEmpty {
                self.complete(
                    call.uid,
                    call.fid,
                    i as u32,
                    &call.files[i],
                    &batch.tags,
                    Vec::new(),
                )?;
            }
        }
        if !batch.has_transfer() {
            return Ok(None);
        }
        for (i, f) in call.files.iter().enumerate() {
            self.parts
                .insert((call.fid, i as u32), vec![0; f.size as usize]);
        }
        self.states.insert(
            call.fid,
            PartialState {
                uid: call.uid,
                files: call.files.clone(),
                tags: batch.tags,
                chunk_size: call.chunk_size,
                missing: batch.missing,
                touched: 0,
            },
        );
        Ok(Some(call.fid))
    }

    fn write(&mut self, w: &ChunkWrite<'_>) -> WriteOutcome {
        let Some(state) = self.states.get_mut(&w.fid) else {
            // Completed meanwhile through another connection: held, Ok.
            if self
                .records
                .contains_key(&store_id(&w.fid, u64::from(w.file)))
            {
                return WriteOutcome::Stored;
            }
            return WriteOutcome::Failed(Code::StorageError.into());
        };
        if !state.missing.contains(w.file as usize, w.n) {
            return WriteOutcome::Stored;
        }
        self.writes += 1;
        let part = self.parts.get_mut(&(w.fid, w.file)).unwrap();
        part[w.offset as usize..w.offset as usize + w.data.len()].copy_from_slice(w.data);
        state.missing.remove(w.file as usize, w.n);
        if !state.missing.is_file_complete(w.file as usize) {
            return WriteOutcome::Stored;
        }
        let (uid, spec, tags) = (
            state.uid,
            state.files[w.file as usize].clone(),
            state.tags.clone(),
        );
        let data = part.clone();
        match self.complete(uid, w.fid, w.file, &spec, &tags, data) {
            Ok(id) => {
                let state = &self.states[&w.fid];
                if state.missing.is_empty() {
                    self.states.remove(&w.fid);
                    self.ledgers.entry(uid).or_default().finish_transfer();
                }
                WriteOutcome::Completed { id }
            }
            Err(r) => {
                let state = self.states.get_mut(&w.fid).unwrap();
                let nb = state.chunk_counts()[w.file as usize];
                state.missing.reset_file(w.file as usize, nb);
                WriteOutcome::Failed(r)
            }
        }
    }

    /// Answers one event at once.
    pub fn answer(&mut self, conn: &mut Connection) -> bool {
        let Some(ev) = conn.poll_event() else {
            return false;
        };
        match ev {
            Event::Authenticate { ticket, call } => {
                let r = self.authenticate(&call);
                let missing = r.map(|fid| {
                    fid.and_then(|f| self.states.get(&f))
                        .map_or(&self.empty, |s| &s.missing)
                });
                conn.handle_answer(ticket, Answer::Auth(missing)).unwrap();
            }
            Event::Write { ticket, write } => {
                let outcome = self.write(&write);
                conn.handle_answer(ticket, Answer::Write(outcome)).unwrap();
            }
            Event::Query { ticket, call } => {
                let spec = QuerySpec {
                    tags: &call.tags,
                    name: call.name.as_deref(),
                    after: call.after,
                };
                let page = self.index.query(call.uid, &spec, call.limit);
                conn.handle_answer(ticket, Answer::Query(Ok(page))).unwrap();
            }
            Event::Fetch { ticket, call } => {
                let data = match self.index.visible(&call.id, call.uid) {
                    None => Err(Reason::new(Code::NotFound)),
                    Some(e) => fetch_range(e.size, call.offset, call.length, call.max_fetch).map(
                        |(r, eof)| {
                            let obj = &self.objects[&e.sha256];
                            FetchData {
                                bytes: &obj[r.start as usize..r.end as usize],
                                eof,
                            }
                        },
                    ),
                };
                conn.handle_answer(ticket, Answer::Fetch(data)).unwrap();
            }
        }
        true
    }

    /// Feeds `input` and answers everything; returns the bytes the server sent.
    pub fn run(&mut self, conn: &mut Connection, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            while self.answer(conn) {}
            conn.poll_transmit(&mut out);
            let room = conn.input_room().min(input.len() - at);
            if room == 0 {
                break;
            }
            conn.handle_input(&input[at..at + room], t0(), NOW);
            at += room;
        }
        out
    }
}

pub(crate) fn t0() -> Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T0.get_or_init(Instant::now)
}

pub(crate) fn config(legacy: bool) -> Arc<ServerConfig> {
    Arc::new(ServerConfig {
        key: key(),
        legacy_ipc: legacy,
        limits: Limits::default(),
    })
}

pub(super) fn conn() -> Connection {
    Connection::new(config(false), t0(), NOW)
}

/// Splits server output into (message-id text, body) pairs.
pub(super) fn replies(bytes: &[u8]) -> Vec<(String, String)> {
    let mut dec = FrameDecoder::new(false);
    dec.extend(bytes);
    let mut v = Vec::new();
    while let Ok(Some(Decoded::Frame(f))) = dec.next_frame() {
        assert_eq!(f.utype, 2);
        let r = parse_response(f.json)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(f.json)));
        let body = match r.body {
            ResponseBody::Ok(_) => "Ok".to_string(),
            ResponseBody::Error(reason) => reason,
        };
        v.push((r.message_id.to_string(), body));
    }
    assert_eq!(dec.buffered(), 0, "whole frames only");
    v
}

pub(super) fn reasons(bytes: &[u8]) -> Vec<String> {
    replies(bytes).into_iter().map(|(_, r)| r).collect()
}

pub(super) fn mid(n: u32) -> String {
    format!("1a2b3c4d-0000-4000-8000-{n:012}")
}

pub(super) fn auth_json(n: u32, files: &str, tags: &str, extra: &str) -> String {
    format!(
        r#"{{"message-id":"{}","token":"{TOKEN_A}","files":{files},"fid":"{FID}","tags":{tags}{extra}}}"#,
        mid(n)
    )
}

pub(super) fn transfer_json(n: u32, fid: &str, file: u64, chunk: u64, data: &[u8]) -> String {
    let fid: Uuid = fid.parse().unwrap();
    let mut b64 = Vec::new();
    base64::encode_append(data, &mut b64);
    format!(
        r#"{{"message-id":"{}","chunk":"{}","data":"{}","file":{file},"n":{chunk}}}"#,
        mid(n),
        chunk_id(&fid, file, chunk),
        String::from_utf8(b64).unwrap()
    )
}

pub(super) const NOTES_FILES: &str = r#"[{"name":"notes.txt","size":2500}]"#;

#[test]
fn s1_s6_transcripts_of_4_5_and_6_byte_for_byte() {
    let mut store = MemStore::new();
    let mut c = conn();
    let input = testdata::client_frames_4_5().concat();
    let out = store.run(&mut c, &input);
    assert_eq!(out, testdata::server_frames_4_5().concat());
    let out = store.run(&mut c, &testdata::client_frames_6().concat());
    assert_eq!(out, testdata::server_frames_6().concat());
    assert_eq!(store.records.len(), 1);
    assert!(store.states.is_empty(), "the batch is complete");
    assert_eq!(
        store.ledgers[&1002],
        UidLedger {
            used_bytes: 2500,
            used_files: 1,
            ..UidLedger::default()
        }
    );
    assert!(!c.is_finished());
    c.handle_eof();
    assert!(c.poll_event().is_none());
    assert!(c.is_finished(), "EOF between frames is a clean close");
}

#[test]
fn s2_split_anywhere_gives_the_same_replies() {
    let input = testdata::client_frames_4_5().concat();
    let expected = testdata::server_frames_4_5().concat();
    let run_split = |cuts: &[usize]| {
        let mut store = MemStore::new();
        let mut c = conn();
        let mut out = Vec::new();
        let mut prev = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            out.extend(store.run(&mut c, &input[prev..cut]));
            prev = cut;
        }
        out
    };
    assert_eq!(run_split(&[]), expected);
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run_split(&bytewise), expected);
    for cut in 0..=input.len() {
        assert_eq!(run_split(&[cut]), expected, "split at {cut}");
    }
}

#[test]
fn s3_length_errors_get_nil_replies_and_close() {
    for head in [
        [0xffu8, 0xff, 0xff, 0xff],
        [0, 1, 0x86, 0x99],
        [2, 0, 0, 0x45],
    ] {
        let mut c = conn();
        let out = MemStore::new().run(&mut c, &head);
        assert_eq!(out[..5], [0, 0, 0, 0x5e, 2]);
        assert_eq!(reasons(&out), ["too-large"]);
        assert_eq!(replies(&out)[0].0, "00000000-0000-0000-0000-000000000000");
        assert!(c.is_finished());
        assert_eq!(c.input_room(), 0, "the body is never read");
    }
    for len in 0..3u32 {
        let mut c = conn();
        let out = MemStore::new().run(&mut c, &len.to_be_bytes());
        assert_eq!(reasons(&out), ["malformed"]);
        assert!(c.is_finished());
    }
    // LEN of exactly 99,992 is processed: a valid QUERY padded with whitespace.
    let q = format!(
        r#"{{"message-id":"{}","token":"{TOKEN_A}","tags":[]}}"#,
        mid(1)
    );
    let padded = format!("{q}{}", " ".repeat(99_991 - q.len()));
    let f = frame(4, &padded);
    assert_eq!(f[..4], 99_992u32.to_be_bytes());
    let mut c = conn();
    let out = MemStore::new().run(&mut c, &f);
    assert_eq!(reasons(&out), ["Ok"]);
    // Replies owed before a framing error still go out first.
    let mut input = frame(4, &q);
    input.extend([0xff, 0xff, 0xff, 0xff]);
    let mut c = conn();
    assert_eq!(
        reasons(&MemStore::new().run(&mut c, &input)),
        ["Ok", "too-large"]
    );
}

#[test]
fn s4_unknown_types_keep_the_connection() {
    let q = format!(
        r#"{{"message-id":"{}","token":"{TOKEN_A}","tags":[]}}"#,
        mid(1)
    );
    let mut input = Vec::new();
    for t in [0u8, 2, 6, 255] {
        input.extend(frame(t, &q));
    }
    input.extend(frame(6, "not json"));
    input.extend(frame(4, &q));
    let mut c = conn();
    let r = replies(&MemStore::new().run(&mut c, &input));
    let expect_unknown = (mid(1), "unknown-type".to_string());
    assert_eq!(r[..4], vec![expect_unknown; 4]);
    assert_eq!(
        r[4],
        (
            "00000000-0000-0000-0000-000000000000".into(),
            "unknown-type".into()
        )
    );
    assert_eq!(r[5], (mid(1), "Ok".into()));
    assert!(!c.is_finished());
}

#[test]
fn s5_malformed_keeps_the_connection_and_echoes_a_readable_id() {
    let q = format!(
        r#"{{"message-id":"{}","token":"{TOKEN_A}","tags":[]}}"#,
        mid(1)
    );
    let cases = [
        (3u8, "{x".to_string(), None),
        (1, "[]".into(), None),
        (1, "\u{1}\u{1}".into(), None),
        (
            3,
            format!(
                r#"{{"message-id":"{}","chunk":"{FID}","data":[1],"file":0,"n":0}}"#,
                mid(2)
            ),
            Some(2),
        ),
        (1, auth_json(3, NOTES_FILES, "[]", r#","fid":"x""#), Some(3)),
        (1, auth_json(4, NOTES_FILES, "[]", "} x"), Some(4)),
        (
            5,
            format!(
                r#"{{"message-id":"{}","token":"t","id":"{FID}","offset":0}}"#,
                mid(5)
            ),
            Some(5),
        ),
    ];
    let mut input = Vec::new();
    for (t, j, _) in &cases {
        input.extend(frame(*t, j));
    }
    input.extend(frame(
        4,
        &q.replace(r#""tags":[]"#, r#""tags":[],"extra":{"x":[1,2]}"#),
    ));
    let mut c = conn();
    let r = replies(&MemStore::new().run(&mut c, &input));
    for (i, (_, _, id)) in cases.iter().enumerate() {
        let want = id.map_or("00000000-0000-0000-0000-000000000000".to_string(), mid);
        assert_eq!(r[i], (want, "malformed".into()), "case {i}");
    }
    assert_eq!(
        r.last().unwrap(),
        &(mid(1), "Ok".to_string()),
        "unknown keys ignored"
    );
    // Invalid UTF-8 in a string.
    let mut bad = frame(4, &q);
    let at = bad.len() - 5;
    bad[at] = 0xff;
    assert_eq!(
        reasons(&MemStore::new().run(&mut conn(), &bad)),
        ["malformed"]
    );
}

#[test]
fn s6_message_id_is_echoed_byte_for_byte() {
    let upper = "1A2B3C4D-0000-4000-8000-00000000000A";
    let q = format!(r#"{{"message-id":"{upper}","token":"{TOKEN_A}","tags":[]}}"#);
    let out = MemStore::new().run(&mut conn(), &frame(4, &q));
    assert!(out.windows(upper.len()).any(|w| w == upper.as_bytes()));
    assert!(
        !String::from_utf8_lossy(&out).contains("reason"),
        "Ok never has reason"
    );
}

#[test]
fn s7_legacy_framing_when_allowed() {
    let q = format!(
        r#"{{"message-id":"{}","token":"{TOKEN_A}","tags":["none"]}}"#,
        mid(2)
    );
    let mut input = Vec::new();
    put_frame(&mut input, Framing::Legacy, 4, q.as_bytes());
    let mut c = Connection::new(config(true), t0(), NOW);
    let out = MemStore::new().run(&mut c, &input);
    let ok = format!(
        r#"{{"message-id":"{}","response":"Ok","results":[],"more":false}}"#,
        mid(2)
    );
    let mut want = vec![2];
    want.extend((ok.len() as u32).to_be_bytes());
    want.push(2);
    want.extend(ok.as_bytes());
    assert_eq!(out, want);
    assert_eq!(c.framing(), Some(Framing::Legacy));
    // Legacy T = 0: the peer closes.
    let out = MemStore::new().run(&mut c, &[0, 0, 0, 0, 0]);
    assert!(out.is_empty() && c.is_finished());
    // Without --legacy-ipc the same bytes are a LEN over the limit.
    let mut c = conn();
    assert_eq!(reasons(&MemStore::new().run(&mut c, &input)), ["too-large"]);
    assert!(c.is_finished());
}

fn authed(
    store: &mut MemStore,
    files: &str,
    extra: &str,
) -> (Connection, Vec<(String, String)>, Vec<u8>) {
    let mut c = conn();
    let out = store.run(
        &mut c,
        &frame(1, &auth_json(1, files, r#"["work"]"#, extra)),
    );
    (c, replies(&out), out)
}

#[test]
fn s13_new_fid_gets_missing_chunk_size_and_window() {
    let mut store = MemStore::new();
    let files = r#"[{"name":"a","size":2500},{"name":"e","size":0},{"name":"b","size":65536}]"#;
    let (c, r, out) = authed(&mut store, files, "");
    assert_eq!(r[0].1, "Ok");
    assert!(String::from_utf8_lossy(&out)
        .ends_with(r#""missing":[[0,0,3],[2,0,66]],"chunk-size":1000,"window":32}"#));
    assert_eq!(c.active_fid(), Some(FID.parse().unwrap()));
    let e = store
        .records
        .get(&store_id(&FID.parse().unwrap(), 1))
        .expect("the empty file is stored at once");
    assert_eq!(
        e.sha256,
        crate::proto::filestorage::store::auth::EMPTY_SHA256
    );
    let mut store = MemStore::new();
    let (_, _, out) = authed(&mut store, files, r#","chunk-size":65536"#);
    assert!(String::from_utf8_lossy(&out)
        .ends_with(r#""missing":[[0,0,1],[2,0,1]],"chunk-size":65536,"window":32}"#));
    for cs in ["999", "65537", "1000.0"] {
        let (c, r, _) = authed(
            &mut MemStore::new(),
            files,
            &format!(r#","chunk-size":{cs}"#),
        );
        assert_eq!(r[0].1, "malformed", "{cs}");
        assert_eq!(c.active_fid(), None);
    }
    // Only empty files: nothing to receive, `missing` is empty.
    let (_, _, out) = authed(&mut MemStore::new(), r#"[{"name":"e","size":0}]"#, "");
    assert!(String::from_utf8_lossy(&out).contains(r#""missing":[],"chunk-size""#));
}

#[test]
fn s14_resume_lists_exactly_the_chunks_never_answered() {
    let mut store = MemStore::new();
    let data = testdata::notes();
    let (mut c, _, _) = authed(&mut store, NOTES_FILES, "");
    let out = store.run(
        &mut c,
        &frame(3, &transfer_json(2, FID, 0, 1, &data[1000..2000])),
    );
    assert_eq!(reasons(&out), ["Ok"]);
    drop(c);
    let (_, _, out) = authed(&mut store, NOTES_FILES, "");
    assert!(String::from_utf8_lossy(&out).contains(r#""missing":[[0,0,1],[0,2,3]]"#));
    let used = store.ledgers[&1002];
    // A changed description or another uid: fid-conflict, the transfer unchanged.
    for (files, tags) in [
        (r#"[{"name":"notes.txt","size":2501}]"#, r#"["work"]"#),
        (r#"[{"name":"other","size":2500}]"#, r#"["work"]"#),
        (NOTES_FILES, r#"["work","x"]"#),
    ] {
        let mut c = conn();
        let r = reasons(&store.run(&mut c, &frame(1, &auth_json(5, files, tags, ""))));
        assert_eq!(r, ["fid-conflict"]);
        assert_eq!(c.active_fid(), None);
    }
    let other = crate::proto::filestorage::token::mint(&key(), 7, "other", None);
    let j = auth_json(6, NOTES_FILES, r#"["work"]"#, "").replace(TOKEN_A, &other);
    assert_eq!(
        reasons(&store.run(&mut conn(), &frame(1, &j))),
        ["fid-conflict"]
    );
    assert_eq!(
        store.ledgers[&1002], used,
        "quotas not checked or changed by a resume"
    );
    assert!(store
        .ledgers
        .get(&7)
        .is_none_or(|l| *l == UidLedger::default()));
}

#[test]
fn s15_a_hundred_thousand_holes_page_at_2048_within_the_frame_limit() {
    let mut store = MemStore::new();
    let files = r#"[{"name":"big","size":200000000}]"#;
    store.quotas.default.max_file_size = 1 << 40;
    store.quotas.default.max_bytes = 1 << 40;
    let (_, r, _) = authed(&mut store, files, "");
    assert_eq!(r[0].1, "Ok");
    let state = store.states.get_mut(&FID.parse().unwrap()).unwrap();
    for n in (0..200_000).step_by(2) {
        state.missing.remove(0, n);
    }
    let (_, _, out) = authed(&mut store, files, "");
    let len = u32::from_be_bytes(out[..4].try_into().unwrap());
    assert!(len <= 99_992, "{len}");
    let Ok(r) = parse_response(&out[5..]) else {
        panic!()
    };
    let ResponseBody::Ok(f) = r.body else {
        panic!()
    };
    let missing = f.missing.unwrap();
    assert_eq!(missing.len(), 2048);
    assert_eq!(f.more, Some(true));
    assert!(missing.windows(2).all(|w| w[0].end < w[1].first));
}

pub(super) fn notes_conn(store: &mut MemStore) -> Connection {
    let (c, r, _) = authed(store, NOTES_FILES, "");
    assert_eq!(r[0].1, "Ok");
    c
}

#[test]
fn s16_chunk_must_be_the_id_of_file_n_under_the_active_fid() {
    let mut store = MemStore::new();
    let mut c = notes_conn(&mut store);
    let d = [7u8; 1000];
    let other = "0b6e3c1e-2f4d-4a7b-8c9d-112233445567";
    let wrong_n = transfer_json(3, FID, 0, 1, &d).replace(r#""n":1"#, r#""n":0"#);
    let inputs = [
        transfer_json(2, other, 0, 0, &d),
        wrong_n,
        transfer_json(4, FID, 0, 3, &d[..500]),
        transfer_json(5, FID, 1, 0, &d),
        transfer_json(6, FID, 9_007_199_254_740_991, 0, &d),
    ];
    let input: Vec<u8> = inputs.iter().flat_map(|j| frame(3, j)).collect();
    assert_eq!(reasons(&store.run(&mut c, &input)), vec!["bad-chunk"; 5]);
    assert_eq!(store.writes, 0);
}

#[test]
fn s17_transfer_without_active_transfer_is_not_authenticated() {
    let mut store = MemStore::new();
    let d = [0u8; 1000];
    let mut c = conn();
    let mut input = frame(3, &transfer_json(1, FID, 0, 0, &d));
    input.extend(frame(
        1,
        &auth_json(2, NOTES_FILES, r#"["work"]"#, "").replace(TOKEN_A, "x.y.z"),
    ));
    input.extend(frame(3, &transfer_json(3, FID, 0, 0, &d)));
    assert_eq!(
        reasons(&store.run(&mut c, &input)),
        ["not-authenticated", "invalid-token", "not-authenticated"]
    );
    // A good AUTHENTICATION then a failed one: the earlier active transfer is gone too.
    let mut c = notes_conn(&mut store);
    let mut input = frame(
        1,
        &auth_json(4, r#"[{"name":"../x","size":1}]"#, "[]", "")
            .replace(FID, "0b6e3c1e-2f4d-4a7b-8c9d-000000000000"),
    );
    input.extend(frame(3, &transfer_json(5, FID, 0, 0, &d)));
    assert_eq!(
        reasons(&store.run(&mut c, &input)),
        ["bad-name: 0", "not-authenticated"]
    );
    assert_eq!(store.writes, 0);
}

#[test]
fn s18_non_canonical_base64_and_wrong_lengths_are_bad_data() {
    let mut store = MemStore::new();
    let mut c = notes_conn(&mut store);
    let pattern: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let good = transfer_json(1, FID, 0, 0, &pattern);
    let b64_start = good.find(r#""data":""#).unwrap() + 8;
    let b64_end = good[b64_start..].find('"').unwrap() + b64_start;
    let with_data = |n: u32, data: &str| {
        let j = good.replace(&mid(1), &mid(n));
        format!("{}{}{}", &j[..b64_start], data, &j[b64_end..])
    };
    let b64 = &good[b64_start..b64_end];
    assert!(b64.contains('+') && b64.contains('/'));
    let enc = |d: &[u8]| {
        let mut v = Vec::new();
        base64::encode_append(d, &mut v);
        String::from_utf8(v).unwrap()
    };
    let cases = [
        format!("{}\\n{}", &b64[..76], &b64[76..]),
        format!("{} ", &b64[..b64.len() - 1]),
        b64.replace('+', "-").replace('/', "_"),
        format!("{}*", &b64[..b64.len() - 1]),
        b64.trim_end_matches('=').to_string(),
        enc(&[1u8; 999]),
        enc(&[1u8; 1001]),
        format!("{}R=", &b64[..b64.len() - 2]),
    ];
    let mut input = Vec::new();
    for (i, d) in cases.iter().enumerate() {
        input.extend(frame(3, &with_data(10 + i as u32, d)));
    }
    let r = reasons(&store.run(&mut c, &input));
    assert_eq!(r, vec!["bad-data: 1000"; cases.len()]);
    // The last chunk is 500 bytes; 1000 there is too long.
    let r = reasons(&store.run(
        &mut c,
        &frame(3, &transfer_json(30, FID, 0, 2, &[1u8; 1000])),
    ));
    assert_eq!(r, ["bad-data: 500"]);
    assert_eq!(store.writes, 0);
    assert!(
        store.states[&FID.parse().unwrap()].missing.contains(0, 0),
        "still missing"
    );
    // A declared size of 10 and 1000 bytes sent.
    let mut store = MemStore::new();
    let (mut c, _, _) = authed(&mut store, r#"[{"name":"s","size":10}]"#, "");
    let r = reasons(&store.run(
        &mut c,
        &frame(3, &transfer_json(2, FID, 0, 0, &[1u8; 1000])),
    ));
    assert_eq!(r, ["bad-data: 10"]);
}

#[test]
fn s19_replayed_chunk_is_ok_and_keeps_the_first_copy() {
    let mut store = MemStore::new();
    let mut c = notes_conn(&mut store);
    let mut input = frame(3, &transfer_json(2, FID, 0, 0, &[1u8; 1000]));
    input.extend(frame(3, &transfer_json(3, FID, 0, 0, &[2u8; 1000])));
    let ledger = store.ledgers[&1002];
    assert_eq!(reasons(&store.run(&mut c, &input)), ["Ok", "Ok"]);
    assert_eq!(store.writes, 1);
    assert_eq!(store.parts[&(FID.parse().unwrap(), 0)][..1000], [1u8; 1000]);
    assert_eq!(store.ledgers[&1002], ledger);
}

#[test]
fn s21_s22_completion_and_digest_mismatch() {
    let data = testdata::notes();
    let bad_sha = format!(
        r#"[{{"name":"notes.txt","size":2500,"sha256":"{}"}}]"#,
        "ab".repeat(32)
    );
    let mut store = MemStore::new();
    let (mut c, _, _) = authed(&mut store, &bad_sha, "");
    let input: Vec<u8> = (0..3u64)
        .flat_map(|n| {
            frame(
                3,
                &transfer_json(
                    2 + n as u32,
                    FID,
                    0,
                    n,
                    &data[n as usize * 1000..(n as usize * 1000 + 1000).min(2500)],
                ),
            )
        })
        .collect();
    assert_eq!(
        reasons(&store.run(&mut c, &input)),
        ["Ok", "Ok", "digest-mismatch: 0"]
    );
    assert!(store.records.is_empty(), "nothing visible");
    let state = &store.states[&FID.parse().unwrap()];
    assert_eq!(
        state.missing.missing_chunks(),
        3,
        "every chunk missing again"
    );
    assert_eq!(
        store.ledgers[&1002].reserved_bytes, 2500,
        "the reservation stays"
    );
}

#[test]
fn s25_s28_token_failures_keep_the_connection() {
    let b = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJsb2dpbiI6ImthcmNobnUiLCJ1aWQiOjEwMDIsImV4cCI6MTcwMDAwMDAwMH0.zdgyBQFiZbr_4oW6z19AZVjYtb1CpEmiC8zwla3GBYw";
    let d = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJsb2dpbiI6ImthcmNobnUiLCJ1aWQiOjEwMDJ9.";
    let huge = "A".repeat(90_000);
    let q = |n: u32, token: &str| {
        frame(
            4,
            &format!(
                r#"{{"message-id":"{}","token":"{token}","tags":[]}}"#,
                mid(n)
            ),
        )
    };
    let mut input = q(1, b);
    input.extend(q(2, d));
    input.extend(q(3, &huge));
    input.extend(frame(
        5,
        &format!(
            r#"{{"message-id":"{}","token":"{b}","id":"{FID}","offset":0,"length":1}}"#,
            mid(4)
        ),
    ));
    input.extend(frame(
        1,
        &auth_json(5, NOTES_FILES, "[]", "").replace(TOKEN_A, b),
    ));
    input.extend(q(6, TOKEN_A));
    let r = reasons(&MemStore::new().run(&mut conn(), &input));
    assert_eq!(
        r,
        [
            "token-expired",
            "invalid-token",
            "invalid-token",
            "token-expired",
            "token-expired",
            "Ok"
        ]
    );
}

#[test]
fn s29_hostile_names_and_tags_create_nothing() {
    let mut store = MemStore::new();
    let mut input = Vec::new();
    let names = ["../x", "a/b", ".", "..", ".ferry", "", "a\\u0000b", "a\\nb"];
    for (i, n) in names.iter().enumerate() {
        input.extend(frame(
            1,
            &auth_json(
                i as u32,
                &format!(r#"[{{"name":"{n}","size":1}}]"#),
                "[]",
                "",
            ),
        ));
    }
    input.extend(frame(
        1,
        &auth_json(
            20,
            &format!(r#"[{{"name":"{}","size":1}}]"#, "x".repeat(256)),
            "[]",
            "",
        ),
    ));
    let tags: Vec<String> = (0..33).map(|i| format!(r#""t{i}""#)).collect();
    for t in [
        r#"["../x"]"#.to_string(),
        r#"["a/b"]"#.into(),
        r#"[".x"]"#.into(),
        format!(r#"["{}"]"#, "t".repeat(65)),
        format!("[{}]", tags.join(",")),
    ] {
        input.extend(frame(1, &auth_json(30, NOTES_FILES, &t, "")));
    }
    let r = reasons(&store.run(&mut conn(), &input));
    assert_eq!(r[..9], vec!["bad-name: 0"; 9]);
    assert_eq!(r[9..13], vec!["bad-tag: 0"; 4]);
    assert_eq!(r[13], "bad-tag: more than 32");
    assert!(store.states.is_empty() && store.records.is_empty() && store.parts.is_empty());
    assert!(store.ledgers.values().all(|l| *l == UidLedger::default()));
}

#[test]
fn s30_quota_refusal_frame_of_4_5() {
    let mut store = MemStore::new();
    store.quotas.default.max_bytes = 2000;
    let j = auth_json(9, NOTES_FILES, r#"["work"]"#, "");
    let out = store.run(&mut conn(), &frame(1, &j));
    let want = r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000009","response":"Error","reason":"quota-exceeded: bytes"}"#;
    assert_eq!(out, frame(2, want));
    assert_eq!(out[..5], [0, 0, 0, 0x6a, 2]);
    store.quotas.default.max_file_size = 100;
    assert_eq!(
        reasons(&store.run(&mut conn(), &frame(1, &j))),
        ["file-too-big: 100"]
    );
    assert!(store.states.is_empty());
}

#[test]
fn s33_s34_s35_query_and_fetch_through_the_machine() {
    let mut store = MemStore::new();
    store.run(&mut conn(), &testdata::client_frames_4_5().concat());
    let other = crate::proto::filestorage::token::mint(&key(), 7, "other", None);
    let id = testdata::NOTES_ID;
    let fetch = |n: u32, token: &str, offset: u64, length: u64| {
        frame(
            5,
            &format!(
                r#"{{"message-id":"{}","token":"{token}","id":"{id}","offset":{offset},"length":{length}}}"#,
                mid(n)
            ),
        )
    };
    let query = |n: u32, token: &str, tags: &str| {
        frame(
            4,
            &format!(
                r#"{{"message-id":"{}","token":"{token}","tags":{tags}}}"#,
                mid(n)
            ),
        )
    };
    let mut input = fetch(1, &other, 0, 10);
    input.extend(fetch(2, TOKEN_A, 0, 0));
    input.extend(fetch(3, TOKEN_A, 0, 65_537));
    input.extend(fetch(4, TOKEN_A, 2501, 1));
    input.extend(fetch(5, TOKEN_A, 2500, 1));
    input.extend(query(6, &other, "[]"));
    input.extend(query(7, TOKEN_A, r#"["a/b"]"#));
    input.extend(fetch(8, TOKEN_A, 0, 65_536));
    let out = store.run(&mut conn(), &input);
    let r = reasons(&out);
    assert_eq!(
        r,
        [
            "not-found",
            "bad-range",
            "bad-range",
            "bad-range",
            "Ok",
            "Ok",
            "bad-tag: 0",
            "Ok"
        ]
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains(r#""data":"","eof":true"#));
    assert!(
        text.contains(r#""results":[],"more":false"#),
        "another uid's private file is absent"
    );
    let mut dec = FrameDecoder::new(false);
    dec.extend(&out);
    let mut last = None;
    while let Ok(Some(Decoded::Frame(f))) = dec.next_frame() {
        last = Some(f.json.to_vec());
    }
    let r = parse_response(last.as_ref().unwrap()).unwrap();
    let ResponseBody::Ok(f) = r.body else {
        panic!()
    };
    let mut bytes = Vec::new();
    base64::decode_append(f.data.unwrap().as_bytes(), &mut bytes).unwrap();
    assert_eq!(
        bytes,
        testdata::notes(),
        "the exact bytes, clipped at the end"
    );
    assert_eq!(f.eof, Some(true));
}

#[test]
fn s15_s33_query_matching_100000_files_pages_within_the_frame_limit() {
    let mut store = MemStore::new();
    for i in 0..100_000u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        store.index.insert(Entry {
            id: Uuid(id),
            owner: Some(1002),
            name: format!("{i:0>255}"),
            size: u64::from(i),
            sha256: [7; 32],
            tags: vec!["many".into(), "work".into()],
        });
    }
    let q = |n: u32, after: &str| {
        frame(
            4,
            &format!(
                r#"{{"message-id":"{}","token":"{TOKEN_A}","tags":["work","many"]{after}}}"#,
                mid(n)
            ),
        )
    };
    let out = store.run(&mut conn(), &q(1, ""));
    let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
    assert!(len <= 99_992 && len == out.len() - 4, "{len}");
    let ResponseBody::Ok(f) = parse_response(&out[5..]).unwrap().body else {
        panic!()
    };
    let results = f.results.unwrap();
    assert!(
        results.len() < 256 && results.len() > 200,
        "stopped early for size: {}",
        results.len()
    );
    assert_eq!(f.more, Some(true));
    let last = results.last().unwrap().id;
    let out = store.run(&mut conn(), &q(2, &format!(r#","after":"{last}""#)));
    let ResponseBody::Ok(f) = parse_response(&out[5..]).unwrap().body else {
        panic!()
    };
    let next = f.results.unwrap();
    assert_eq!(
        next[0].size,
        results.len() as u64,
        "continues right after the last id"
    );
}

#[test]
fn s38_64_consecutive_errors_close_and_an_ok_resets() {
    let bad = frame(3, &transfer_json(1, FID, 0, 0, &[0]));
    let q = frame(
        4,
        &format!(
            r#"{{"message-id":"{}","token":"{TOKEN_A}","tags":[]}}"#,
            mid(2)
        ),
    );
    let mut input: Vec<u8> = std::iter::repeat_n(bad.clone(), 63).flatten().collect();
    input.extend(&q);
    input.extend(std::iter::repeat_n(bad.clone(), 63).flatten());
    let mut c = conn();
    let r = reasons(&MemStore::new().run(&mut c, &input));
    assert_eq!(r.len(), 127);
    assert!(!c.is_finished(), "an Ok reset the count");
    let out = MemStore::new().run(&mut c, &[bad.clone(), bad].concat());
    assert_eq!(
        reasons(&out).len(),
        1,
        "the 64th consecutive Error is the last reply"
    );
    assert!(c.is_finished());
}

#[test]
fn s38_idle_and_io_timeouts_close_without_a_reply() {
    let mut c = conn();
    let limits = Limits::default();
    assert_eq!(c.poll_timeout(), Some(t0() + limits.idle_timeout));
    c.handle_timeout(t0() + limits.idle_timeout - Duration::from_secs(1));
    assert!(!c.is_finished());
    c.handle_timeout(t0() + limits.idle_timeout);
    assert!(c.is_finished());
    // Mid-frame: the io timeout, counted from the frame's first bytes.
    let mut c = conn();
    let later = t0() + Duration::from_secs(100);
    c.handle_input(&[0, 0, 1], later, NOW);
    assert!(c.poll_event().is_none());
    assert_eq!(c.poll_timeout(), Some(later + limits.io_timeout));
    c.handle_timeout(later + limits.io_timeout);
    assert!(c.is_finished());
    let mut out = Vec::new();
    assert_eq!(c.poll_transmit(&mut out), 0);
    // EOF inside a frame: closed without a reply.
    let mut c = conn();
    c.handle_input(&[0, 0, 1], t0(), NOW);
    assert!(c.poll_event().is_none());
    c.handle_eof();
    assert!(c.poll_event().is_none());
    assert!(c.is_finished());
}

#[test]
fn group_commit_answers_out_of_order_replies_in_order() {
    let mut store = MemStore::new();
    let mut c = notes_conn(&mut store);
    let data = testdata::notes();
    let input: Vec<u8> = (0..3u64)
        .flat_map(|n| {
            frame(
                3,
                &transfer_json(
                    2 + n as u32,
                    FID,
                    0,
                    n,
                    &data[n as usize * 1000..(n as usize * 1000 + 1000).min(2500)],
                ),
            )
        })
        .collect();
    c.handle_input(&input, t0(), NOW);
    let mut tickets = Vec::new();
    while let Some(Event::Write { ticket, write }) = c.poll_event() {
        assert_eq!(write.offset, write.n * 1000);
        tickets.push(ticket);
    }
    assert_eq!(c.writes_waiting(), 3);
    // No timeout while the server owes replies (mutation sample F: `||` as `&&` armed one).
    assert_eq!(c.poll_timeout(), None);
    let mut out = Vec::new();
    assert_eq!(
        c.poll_transmit(&mut out),
        0,
        "nothing is Ok before it is durable"
    );
    c.handle_answer(
        tickets[2],
        Answer::Write(WriteOutcome::Completed { id: Uuid::NIL }),
    )
    .unwrap();
    c.handle_answer(tickets[1], Answer::Write(WriteOutcome::Stored))
        .unwrap();
    assert_eq!(c.poll_transmit(&mut out), 0, "the first is still owed");
    c.handle_answer(tickets[0], Answer::Write(WriteOutcome::Stored))
        .unwrap();
    c.poll_transmit(&mut out);
    let r = replies(&out);
    assert_eq!(
        r.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>(),
        [mid(2), mid(3), mid(4)]
    );
    assert!(String::from_utf8_lossy(&out)
        .ends_with(r#""complete":0,"id":"00000000-0000-0000-0000-000000000000"}"#));
    assert_eq!(
        c.handle_answer(tickets[0], Answer::Write(WriteOutcome::Stored)),
        Err(AnswerError::UnknownTicket(tickets[0]))
    );
}

#[test]
fn window_of_waiting_writes_pauses_decoding() {
    let mut store = MemStore::new();
    let files = r#"[{"name":"big","size":100000000}]"#;
    store.quotas.default.max_file_size = 1 << 40;
    let (mut c, _, _) = authed(&mut store, files, "");
    let input: Vec<u8> = (0..40u64)
        .flat_map(|n| frame(3, &transfer_json(n as u32 + 2, FID, 0, n, &[5u8; 1000])))
        .collect();
    c.handle_input(&input, t0(), NOW);
    let mut tickets = Vec::new();
    while let Some(Event::Write { ticket, .. }) = c.poll_event() {
        tickets.push(ticket);
    }
    assert_eq!(tickets.len(), 32);
    assert_eq!(c.input_room(), 0);
    assert_eq!(
        c.handle_answer(
            tickets[0],
            Answer::Query(Ok(QueryPage {
                results: vec![],
                more: false
            }))
        ),
        Err(AnswerError::WrongKind(tickets[0]))
    );
    c.handle_answer(tickets[0], Answer::Write(WriteOutcome::Stored))
        .unwrap();
    assert!(
        matches!(c.poll_event(), Some(Event::Write { .. })),
        "one more once one is answered"
    );
    assert!(c.poll_event().is_none());
}

#[test]
fn internal_answer_is_sent_after_owed_replies_then_closes() {
    let mut store = MemStore::new();
    let mut c = notes_conn(&mut store);
    let mut input = frame(3, &transfer_json(2, FID, 0, 0, &[1u8; 1000]));
    input.extend(frame(
        4,
        &format!(
            r#"{{"message-id":"{}","token":"{TOKEN_A}","tags":[]}}"#,
            mid(3)
        ),
    ));
    c.handle_input(&input, t0(), NOW);
    let Some(Event::Write { ticket: w, .. }) = c.poll_event() else {
        panic!()
    };
    let Some(Event::Query { ticket: q, .. }) = c.poll_event() else {
        panic!()
    };
    c.handle_answer(q, Answer::Query(Err(Code::Internal.into())))
        .unwrap();
    let mut out = Vec::new();
    assert_eq!(c.poll_transmit(&mut out), 0);
    c.handle_answer(w, Answer::Write(WriteOutcome::Stored))
        .unwrap();
    c.poll_transmit(&mut out);
    assert_eq!(reasons(&out), ["Ok", "internal"]);
    assert!(c.is_finished());
}

#[test]
fn never_panics_on_truncations_and_random_frames() {
    let transcript = [
        testdata::client_frames_4_5().concat(),
        testdata::client_frames_6().concat(),
    ]
    .concat();
    for cut in (0..transcript.len()).step_by(7) {
        let mut store = MemStore::new();
        let mut c = conn();
        let _ = store.run(&mut c, &transcript[..cut]);
        c.handle_eof();
        while store.answer(&mut c) {}
    }
    // Random bodies under valid lengths, random utypes, mutations of the transcript.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let frames = [testdata::client_frames_4_5(), testdata::client_frames_6()].concat();
    for _ in 0..3000 {
        let mut store = MemStore::new();
        let mut c = Connection::new(config(next() % 2 == 0), t0(), NOW);
        let mut input = Vec::new();
        for _ in 0..(next() % 6) {
            let mut f = frames[(next() % frames.len() as u64) as usize].clone();
            for _ in 0..(next() % 4) {
                let at = (next() % f.len() as u64) as usize;
                f[at] = next() as u8;
            }
            input.extend(f);
        }
        let out = store.run(&mut c, &input);
        let mut dec = FrameDecoder::new(true);
        dec.extend(&out);
        while let Ok(Some(Decoded::Frame(f))) = dec.next_frame() {
            assert_eq!(f.utype, 2);
            assert!(parse_response(f.json).is_ok());
        }
    }
}
