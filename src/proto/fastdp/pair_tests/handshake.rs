//! The HTTP handshake seen from both machines (F3, F4): timeouts, refusals, slow and cut responses.

use super::*;

#[test]
fn f3_handshake_timeout_gives_408_and_header_timeout_gives_timeout() {
    let t0 = Instant::now();
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    m.handle_input(t0, b"GET /fastdp-endpoint HTTP/1.1\r\n");
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    m.handle_timeout(t0 + Duration::from_secs(9));
    assert_eq!(m.poll_transmit(), None, "not before the 10 s");
    assert!(!m.is_finished());
    m.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(
        m.poll_transmit().unwrap(),
        Refusal::RequestTimeout.response()
    );
    assert_eq!(
        m.poll_event(),
        Some(Event::Refused(Refusal::RequestTimeout))
    );
    assert!(m.is_finished());
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    let c = &mut PushClient::new(t0, &client_cfg(), header_for(b"x", 4096, Compress::None));
    m.handle_input(t0, &c.poll_transmit().unwrap());
    m.poll_transmit().unwrap();
    let t1 = t0 + Duration::from_secs(3);
    m.handle_input(t1, b"\0\0");
    m.handle_timeout(t0 + Duration::from_secs(13));
    let out = m.poll_transmit().unwrap();
    assert!(String::from_utf8_lossy(&out).contains(r#""Code":"timeout""#));
    assert!(m.is_finished());
}

#[test]
fn f4_push_client_sends_nothing_before_the_whole_101_and_fails_on_426_or_eof() {
    let t0 = Instant::now();
    let h = header_for(b"x", 4096, Compress::None);
    let mut c = PushClient::new(t0, &client_cfg(), h.clone());
    let req = c.poll_transmit().unwrap();
    assert!(req.starts_with(b"GET /fastdp-endpoint HTTP/1.1\r\nHost: 127.0.0.1:5423\r\n"));
    let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-FastDP-Version: 1.2.0\r\n\r\n";
    for b in &resp[..resp.len() - 1] {
        assert_eq!(c.handle_input(t0, std::slice::from_ref(b)), 1);
        assert_eq!(
            c.poll_transmit(),
            None,
            "no FastDP byte before the 101 is whole"
        );
    }
    c.handle_input(t0, &resp[resp.len() - 1..]);
    let hdr = c.poll_transmit().unwrap();
    let mut want = Vec::new();
    crate::proto::fastdp::frame::put_jmsg(&h.encode(), &mut want);
    assert_eq!(hdr, want, "the header, right after the 101");
    // 426: fails at once, naming the status.
    let mut c = PushClient::new(t0, &client_cfg(), h.clone());
    c.poll_transmit();
    c.handle_input(t0, Refusal::UpgradeRequired.response());
    let Some(Event::Failed(e)) = c.poll_event() else {
        panic!()
    };
    assert!(e.message.contains("426"), "{e}");
    assert!(
        matches!(
            c.handshake_failure(),
            Some(crate::proto::fastdp::http::ResponseError::Status { code: 426, .. })
        ),
        "the driver's exit code is chosen from it"
    );
    assert!(c.is_finished());
    // A slow 101 is timed from its last byte, not from the request.
    let mut c = PushClient::new(t0, &client_cfg(), h.clone());
    c.poll_transmit();
    let idle = Limits::default().idle;
    let t1 = t0 + idle - Duration::from_secs(1);
    c.handle_input(t1, &resp[..10]);
    assert_eq!(c.poll_timeout(), Some(t1 + idle));
    c.handle_timeout(t0 + idle);
    assert!(!c.is_finished());
    c.handle_timeout(t1 + idle);
    assert!(matches!(c.poll_event(), Some(Event::Failed(e)) if e.code == ErrorCode::Timeout));
    assert!(c.is_finished());
    // Accepted and sending: a server silent for 60 s while the client waits for Acks times
    // it out; an abort sends a control-frame Error.
    let sending = || {
        let mut c = PushClient::new(t0, &client_cfg(), h.clone());
        let mut m = ServerConnection::new(t0, ServerConfig::default());
        m.handle_input(t0, &c.poll_transmit().unwrap());
        c.handle_input(t0, &m.poll_transmit().unwrap());
        let hdr = c.poll_transmit().unwrap();
        let mut pos = 0;
        while pos < hdr.len() {
            pos += m.handle_input(t0, &hdr[pos..]).consumed;
        }
        assert!(matches!(m.poll_event(), Some(Event::PushHeader(_))));
        m.accept_push(t0, Have::new(), 8);
        let reply = m.poll_transmit().unwrap();
        let mut pos = 0;
        while pos < reply.len() {
            pos += c.handle_input(t0, &reply[pos..]);
        }
        assert!(matches!(c.poll_event(), Some(Event::PushAccepted { .. })));
        c
    };
    let mut c = sending();
    let mut plan = SendPlan::new(1, &Have::new());
    while c.poll_send(t0, &mut plan).is_some() {}
    c.handle_timeout(t0 + idle - Duration::from_secs(1));
    assert!(!c.is_finished());
    c.handle_timeout(t0 + idle);
    assert!(matches!(c.poll_event(), Some(Event::Failed(e)) if e.code == ErrorCode::Timeout));
    let mut c = sending();
    c.abort(ErrorMsg::new(ErrorCode::Internal, "source file changed"));
    let out = c.poll_transmit().unwrap();
    assert_eq!(&out[..4], &[0xff, 0xff, 0xff, 0xfe], "a control frame");
    assert!(String::from_utf8_lossy(&out).contains("source file changed"));
    // A reply header that does not echo the header sent: failed, nothing sent.
    let mut c = PushClient::new(t0, &client_cfg(), h.clone());
    c.poll_transmit();
    c.handle_input(t0, resp);
    c.poll_transmit();
    let mut other = h.clone();
    other.file_name = "b.txt".into();
    let mut reply = Vec::new();
    crate::proto::fastdp::frame::put_jmsg(
        &crate::proto::fastdp::messages::ReplyHeader {
            header: other,
            have: Have::new(),
            max_connections: 8,
        }
        .encode(),
        &mut reply,
    );
    let mut pos = 0;
    while pos < reply.len() {
        pos += c.handle_input(t0, &reply[pos..]);
    }
    let Some(Event::Failed(e)) = c.poll_event() else {
        panic!("a reply for another header taken")
    };
    assert!(e.message.contains("does not echo"), "{e}");
    assert!(c.is_finished());
    // EOF mid-response.
    let mut c = PushClient::new(t0, &client_cfg(), h);
    c.handle_input(t0, b"HTTP/1.1 101 Swi");
    c.handle_eof(t0);
    assert!(matches!(c.poll_event(), Some(Event::Failed(_))));
    assert!(c.is_finished());
    assert_eq!(c.poll_timeout(), None);
}
