//! Server machine tests of what it reads, how long it waits and what answers it takes: the room
//! it offers, bytes after the end, the timeout once a whole frame is read, the pending limit,
//! tickets never reused, a FETCH answer too long, and its answer errors' text.

use super::tests::{
    auth_json, conn, mid, notes_conn, reasons, replies, t0, transfer_json, MemStore, NOTES_FILES,
};
use super::*;
use crate::proto::filestorage::frame::LEGACY_MAX_JSON;
use crate::proto::filestorage::testdata::{frame, FID, NOTES_ID, NOW, TOKEN_A};
use crate::proto::filestorage::token::tests::key;
use std::time::Duration;

fn query(n: u32) -> Vec<u8> {
    frame(
        4,
        &format!(
            r#"{{"message-id":"{}","token":"{TOKEN_A}","tags":[]}}"#,
            mid(n)
        ),
    )
}

#[test]
fn input_room_is_one_largest_frame_beyond_what_is_buffered() {
    let mut c = conn();
    // The largest legacy frame: a 4-byte length, a type byte and its JSON, plus one.
    let whole = 6 + LEGACY_MAX_JSON as usize;
    assert_eq!(c.input_room(), whole);
    c.handle_input(&[0, 0, 1], t0(), NOW);
    assert!(c.poll_event().is_none());
    assert_eq!(c.input_room(), whole - 3, "what is buffered counts");
}

#[test]
fn bytes_after_the_peer_closed_or_the_connection_ended_are_ignored() {
    // After EOF: a whole request arriving later is not served.
    let mut c = conn();
    c.handle_eof();
    c.handle_input(&query(1), t0(), NOW);
    assert!(c.poll_event().is_none(), "nothing is read after EOF");
    let mut out = Vec::new();
    assert_eq!(c.poll_transmit(&mut out), 0);
    assert!(c.is_finished());
    // After the connection ended: nothing is buffered.
    let mut c = conn();
    c.close();
    c.handle_input(&query(1)[..7], t0(), NOW);
    assert!(c.is_idle(), "no partial frame is held");
    assert!(c.poll_event().is_none());
}

#[test]
fn a_whole_frame_read_is_not_timed_as_one_still_arriving() {
    let limits = Limits::default();
    assert_ne!(limits.io_timeout, limits.idle_timeout);
    let mut c = conn();
    let later = t0() + Duration::from_secs(100);
    c.handle_input(&query(1), later, NOW);
    let Some(Event::Query { ticket, .. }) = c.poll_event() else {
        panic!("a query")
    };
    assert_eq!(c.poll_timeout(), None, "a reply is owed");
    c.handle_answer(ticket, no_results()).unwrap();
    // The frame is whole: no io timeout runs from its first byte, only the idle one.
    assert_eq!(c.poll_timeout(), Some(t0() + limits.idle_timeout));
}

#[test]
fn answer_errors_name_the_request() {
    assert_eq!(
        AnswerError::UnknownTicket(7).to_string(),
        "filestorage: no request 7 waits"
    );
    assert_eq!(
        AnswerError::WrongKind(8).to_string(),
        "filestorage: wrong answer for request 8"
    );
}

/// A QUERY's answer with nothing found.
fn no_results() -> Answer<'static> {
    Answer::Query(Ok(QueryPage {
        results: vec![],
        more: false,
    }))
}

fn stored() -> Answer<'static> {
    Answer::Write(WriteOutcome::Stored)
}

#[test]
fn tickets_are_never_reused_and_an_answered_one_is_refused() {
    let mut store = MemStore::new();
    let mut c = notes_conn(&mut store);
    let input: Vec<u8> = (0..2u64)
        .flat_map(|n| frame(3, &transfer_json(n as u32 + 2, FID, 0, n, &[1u8; 1000])))
        .collect();
    c.handle_input(&input, t0(), NOW);
    let Some(Event::Write { ticket: a, .. }) = c.poll_event() else {
        panic!("a write")
    };
    let Some(Event::Write { ticket: b, .. }) = c.poll_event() else {
        panic!("a write")
    };
    assert!(b > a);
    // Out of order: the second waits ready behind the first, then both go out.
    c.handle_answer(b, stored()).unwrap();
    c.handle_answer(a, stored()).unwrap();
    assert_eq!(
        c.handle_answer(a, stored()),
        Err(AnswerError::UnknownTicket(a))
    );
    assert_eq!(
        c.handle_answer(b, stored()),
        Err(AnswerError::UnknownTicket(b))
    );
    // The next request gets a ticket of its own, and so does the one after it (answered in
    // order this time).
    c.handle_input(&query(4), t0(), NOW);
    let Some(Event::Query { ticket: q, .. }) = c.poll_event() else {
        panic!("a query")
    };
    assert!(q > b, "ticket {q} after {b}");
    assert_eq!(
        c.handle_answer(q + 1, stored()),
        Err(AnswerError::UnknownTicket(q + 1)),
        "a ticket not yet given"
    );
    c.handle_answer(q, no_results()).unwrap();
    c.handle_input(&query(5), t0(), NOW);
    let Some(Event::Query { ticket: r, .. }) = c.poll_event() else {
        panic!("a query")
    };
    assert!(r > q, "ticket {r} after {q}");
    c.handle_answer(r, no_results()).unwrap();
    let mut out = Vec::new();
    c.poll_transmit(&mut out);
    assert_eq!(reasons(&out), ["Ok", "Ok", "Ok", "Ok"]);
}

#[test]
fn no_ticket_is_answerable_before_it_is_given() {
    let mut c = conn();
    for t in 0..3 {
        assert_eq!(
            c.handle_answer(t, stored()),
            Err(AnswerError::UnknownTicket(t))
        );
    }
}

#[test]
fn decoding_pauses_at_max_pending_replies() {
    let config = Arc::new(ServerConfig {
        key: key(),
        legacy_ipc: false,
        limits: Limits {
            max_pending: 3,
            ..Limits::default()
        },
    });
    let mut store = MemStore::new();
    let mut c = Connection::new(config, t0(), NOW);
    let out = store.run(&mut c, &frame(1, &auth_json(1, NOTES_FILES, "[]", "")));
    assert_eq!(reasons(&out), ["Ok"]);
    // A write waits; the unknown-type errors behind it queue up to the limit of 3 replies.
    let mut input = frame(3, &transfer_json(2, FID, 0, 0, &[1u8; 1000]));
    for n in 3..8 {
        input.extend(frame(9, &format!(r#"{{"message-id":"{}"}}"#, mid(n))));
    }
    c.handle_input(&input, t0(), NOW);
    let Some(Event::Write { ticket, .. }) = c.poll_event() else {
        panic!("a write")
    };
    assert!(c.poll_event().is_none());
    assert_eq!(c.input_room(), 0, "paused with 3 replies owed");
    c.handle_answer(ticket, stored()).unwrap();
    let mut out = Vec::new();
    c.poll_transmit(&mut out);
    let r = replies(&out);
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(r[2].0, mid(4));
    // The rest is read once there is room again.
    assert!(c.poll_event().is_none());
    let mut out = Vec::new();
    c.poll_transmit(&mut out);
    assert_eq!(replies(&out).len(), 3);
}

#[test]
fn a_malformed_authentication_ends_the_active_transfer_and_no_other_malformed_request_does() {
    let mut store = MemStore::new();
    let mut c = notes_conn(&mut store);
    let fid: Uuid = FID.parse().unwrap();
    assert_eq!(c.active_fid(), Some(fid));
    let bad_query = frame(4, &format!(r#"{{"message-id":"{}","tags":5}}"#, mid(2)));
    let out = store.run(&mut c, &bad_query);
    assert_eq!(reasons(&out), ["malformed"]);
    assert_eq!(
        c.active_fid(),
        Some(fid),
        "a malformed QUERY leaves the transfer"
    );
    let bad_auth = frame(1, &format!(r#"{{"message-id":"{}"}}"#, mid(3)));
    let out = store.run(&mut c, &bad_auth);
    assert_eq!(reasons(&out), ["malformed"]);
    assert_eq!(c.active_fid(), None, "a malformed AUTHENTICATION ends it");
}

#[test]
fn a_fetch_answer_longer_than_max_fetch_is_an_internal_error() {
    let max = Limits::default().max_fetch as usize;
    let fetch = |n: u32| {
        frame(
            5,
            &format!(
                r#"{{"message-id":"{}","token":"{TOKEN_A}","id":"{NOTES_ID}","offset":0,"length":{max}}}"#,
                mid(n)
            ),
        )
    };
    let bytes = vec![b'x'; max + 1];
    let mut c = conn();
    c.handle_input(&fetch(1), t0(), NOW);
    let Some(Event::Fetch { ticket, .. }) = c.poll_event() else {
        panic!("a fetch")
    };
    let data = FetchData {
        bytes: &bytes[..max],
        eof: false,
    };
    c.handle_answer(ticket, Answer::Fetch(Ok(data))).unwrap();
    c.handle_input(&fetch(2), t0(), NOW);
    let Some(Event::Fetch { ticket, .. }) = c.poll_event() else {
        panic!("a fetch")
    };
    let data = FetchData {
        bytes: &bytes,
        eof: false,
    };
    c.handle_answer(ticket, Answer::Fetch(Ok(data))).unwrap();
    let mut out = Vec::new();
    c.poll_transmit(&mut out);
    assert_eq!(
        reasons(&out),
        ["Ok", "internal"],
        "max_fetch bytes pass, one more is a bug"
    );
    assert!(c.is_finished());
}

#[test]
fn idle_only_between_frames_with_nothing_owed_or_unsent() {
    let mut c = conn();
    assert!(c.is_idle(), "a new connection");
    let q = query(1);
    c.handle_input(&q[..5], t0(), NOW);
    assert!(c.poll_event().is_none());
    assert!(!c.is_idle(), "a frame half read");
    c.handle_input(&q[5..], t0(), NOW);
    let Some(Event::Query { ticket, .. }) = c.poll_event() else {
        panic!("a query")
    };
    assert!(!c.is_idle(), "a reply owed");
    c.handle_answer(ticket, no_results()).unwrap();
    assert!(!c.is_idle(), "a reply not yet sent");
    let mut out = Vec::new();
    c.poll_transmit(&mut out);
    assert!(c.is_idle());
}
