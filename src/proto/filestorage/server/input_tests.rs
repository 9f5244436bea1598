//! Server machine tests of what it reads and when it gives up waiting: the room it offers,
//! bytes after the end, the timeout once a whole frame is read, and its answer errors' text.

use super::tests::{conn, mid, t0};
use super::*;
use crate::proto::filestorage::frame::LEGACY_MAX_JSON;
use crate::proto::filestorage::testdata::{frame, NOW, TOKEN_A};
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
    c.handle_answer(
        ticket,
        Answer::Query(Ok(QueryPage {
            results: vec![],
            more: false,
        })),
    )
    .unwrap();
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
