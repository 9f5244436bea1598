//! The 1.1.0 exchange as cli.py speaks it (F32, F33): bytes, refusals, timeouts.

use super::*;

#[test]
fn f32_f33_v110_sender_bytes_as_cli_py_writes_them() {
    use crate::proto::fastdp::messages::{V110Compress, V110Header};
    use crate::proto::fastdp::v110::{V110Error, SUCCESS};
    let t0 = Instant::now();
    let req = b"GET /fastdp-endpoint HTTP/1.1\r\nHost: 127.0.0.1:5423\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: some-random-key\r\nSec-FastDP-Version: 1.1.0\r\n\r\n";
    let payload = data(600_000, 13);
    let h = V110Header::new(
        payload.len() as u64,
        V110Compress::None,
        "a.txt",
        Sha256::digest(&payload).into(),
    );
    assert_eq!((h.one_chunk, h.full_chunk), (262_144, 3));
    let mut wire = req.to_vec();
    crate::proto::fastdp::frame::put_jmsg(&h.encode_python(), &mut wire);
    for (i, c) in payload.chunks(262_144).enumerate() {
        wire.extend_from_slice(&crate::proto::fastdp::frame::chunk_header(
            i as u32,
            c.len() as u32,
        ));
        wire.extend_from_slice(c);
    }
    for cut in [wire.len(), 1000, 97] {
        let mut m = ServerConnection::new(t0, ServerConfig::default());
        let mut got = Vec::new();
        let mut events = Vec::new();
        for piece in wire.chunks(cut) {
            let mut pos = 0;
            loop {
                let r = m.handle_input(t0, &piece[pos..]);
                pos += r.consumed;
                if let Some(p) = r.payload {
                    got.extend_from_slice(p.bytes);
                }
                let mut any = false;
                while let Some(ev) = m.poll_event() {
                    any = true;
                    if let Event::V110Header(_) = ev {
                        m.accept_v110(t0);
                    }
                    events.push(ev);
                }
                if r.consumed == 0 && r.payload.is_none() && !any {
                    break;
                }
            }
        }
        let out = m.poll_transmit().unwrap();
        assert!(
            out.ends_with(b"Sec-FastDP-Version: 1.1.0\r\n\r\n"),
            "only the 101, no FastDP header (F32)"
        );
        assert_eq!(got, payload);
        assert_eq!(events.last(), Some(&Event::V110Received));
        m.v110_done(Ok(()));
        assert_eq!(m.poll_transmit().unwrap(), SUCCESS);
        assert!(m.is_finished());
    }
    // Out of order, a wrong length, and EOF before the last chunk.
    let start = req.len() + 4 + h.encode_python().len();
    for (bad, want) in [
        (
            crate::proto::fastdp::frame::chunk_header(1, 262_144).to_vec(),
            V110Error::MalformedChunkHeader,
        ),
        (
            crate::proto::fastdp::frame::chunk_header(0, 5).to_vec(),
            V110Error::MalformedChunkHeader,
        ),
        (
            wire[start..start + 100].to_vec(),
            V110Error::IncompleteChunkData,
        ),
    ] {
        let mut m = ServerConnection::new(t0, ServerConfig::default());
        let mut pos = 0;
        let mut input = wire[..start].to_vec();
        input.extend_from_slice(&bad);
        loop {
            let r = m.handle_input(t0, &input[pos..]);
            pos += r.consumed;
            let mut any = false;
            while let Some(ev) = m.poll_event() {
                any = true;
                if let Event::V110Header(_) = ev {
                    m.accept_v110(t0);
                }
            }
            if r.consumed == 0 && !any {
                break;
            }
        }
        m.handle_eof(t0);
        let out = m.poll_transmit().unwrap();
        assert!(
            out.ends_with(want.line()),
            "{want:?}: {}",
            String::from_utf8_lossy(&out)
        );
        assert!(m.is_finished());
    }
    // A bad file name and a bad header.
    for (json, want) in [
        (
            h.encode_python().replace_ascii("a.txt", "../a"),
            V110Error::BadFileName,
        ),
        (
            h.encode_python()
                .replace_ascii("\"FullChunk\": 3", "\"FullChunk\": 4"),
            V110Error::BadHeader,
        ),
    ] {
        let mut m = ServerConnection::new(t0, ServerConfig::default());
        let mut input = req.to_vec();
        crate::proto::fastdp::frame::put_jmsg(&json, &mut input);
        let mut pos = 0;
        while pos < input.len() {
            let n = m.handle_input(t0, &input[pos..]).consumed;
            if n == 0 {
                break;
            }
            pos += n;
        }
        assert!(m.poll_transmit().unwrap().ends_with(want.line()));
        assert!(m.is_finished());
    }
    // A header the machine takes and the driver refuses (over its size cap): its line.
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    let mut input = req.to_vec();
    crate::proto::fastdp::frame::put_jmsg(&h.encode_python(), &mut input);
    let mut pos = 0;
    while pos < input.len() {
        pos += m.handle_input(t0, &input[pos..]).consumed;
    }
    assert!(matches!(m.poll_event(), Some(Event::V110Header(_))));
    m.refuse_v110(V110Error::FileTooLarge);
    assert!(m
        .poll_transmit()
        .unwrap()
        .ends_with(b"ERROR: File too large."));
    assert_eq!(
        m.poll_event(),
        Some(Event::V110Failed(V110Error::FileTooLarge))
    );
    assert!(m.is_finished());
}

trait ReplaceAscii {
    fn replace_ascii(&self, from: &str, to: &str) -> Vec<u8>;
}

impl ReplaceAscii for Vec<u8> {
    fn replace_ascii(&self, from: &str, to: &str) -> Vec<u8> {
        String::from_utf8(self.clone())
            .unwrap()
            .replace(from, to)
            .into_bytes()
    }
}

#[test]
fn v110_timeouts_and_truncated_header_get_their_error_lines() {
    use crate::proto::fastdp::v110::V110Error;
    let t0 = Instant::now();
    let req = b"GET /fastdp-endpoint HTTP/1.1\r\nHost: h\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: some-random-key\r\nSec-FastDP-Version: 1.1.0\r\n\r\n";
    // Header not complete in 10 s.
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    m.handle_input(t0, req);
    m.poll_transmit();
    m.handle_input(t0, b"\0\0\0\x10{\"One");
    m.handle_timeout(t0 + Duration::from_secs(9));
    assert_eq!(m.poll_transmit(), None, "not before the 10 s");
    assert!(!m.is_finished());
    m.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(m.poll_transmit().unwrap(), V110Error::Timeout.line());
    assert!(m.is_finished());
    // EOF before any header byte: a clean close, no error line.
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    m.handle_input(t0, req);
    m.poll_transmit();
    m.handle_eof(t0);
    assert_eq!(m.poll_transmit(), None);
    assert_eq!(m.poll_event(), Some(Event::PeerClosed { clean: true }));
    assert!(m.is_finished());
    // EOF during the handshake: before any byte a clean close; inside the head a 400.
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    m.handle_eof(t0);
    assert_eq!(m.poll_transmit(), None);
    assert_eq!(m.poll_event(), Some(Event::PeerClosed { clean: true }));
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    m.handle_input(t0, &req[..20]);
    m.handle_eof(t0);
    let out = m.poll_transmit().unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // EOF inside the header.
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    m.handle_input(t0, req);
    m.poll_transmit();
    m.handle_input(t0, b"\0\0\0\x10{\"One");
    m.handle_eof(t0);
    assert_eq!(m.poll_transmit().unwrap(), V110Error::BadHeader.line());
    // A silent sender after the header: 60 s.
    let h = crate::proto::fastdp::messages::V110Header::new(
        10,
        crate::proto::fastdp::messages::V110Compress::None,
        "a",
        [0; 32],
    );
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    m.handle_input(t0, req);
    m.poll_transmit();
    let mut j = Vec::new();
    crate::proto::fastdp::frame::put_jmsg(&h.encode_python(), &mut j);
    let mut pos = 0;
    while pos < j.len() {
        pos += m.handle_input(t0, &j[pos..]).consumed;
    }
    assert!(matches!(m.poll_event(), Some(Event::V110Header(_))));
    m.accept_v110(t0);
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    // Not before the deadline (a mutant that fired at every tick was not caught before).
    m.handle_timeout(t0 + Duration::from_secs(59));
    assert_eq!(m.poll_transmit(), None);
    assert_eq!(m.poll_event(), None);
    assert!(!m.is_finished());
    m.handle_timeout(t0 + Duration::from_secs(60));
    assert_eq!(m.poll_transmit().unwrap(), V110Error::Timeout.line());
    assert_eq!(m.poll_event(), Some(Event::V110Failed(V110Error::Timeout)));
    // An empty file: received as soon as it is accepted.
    let e = crate::proto::fastdp::messages::V110Header::new(
        0,
        crate::proto::fastdp::messages::V110Compress::Zip,
        "e",
        [0; 32],
    );
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    m.handle_input(t0, req);
    m.poll_transmit();
    let mut j = Vec::new();
    crate::proto::fastdp::frame::put_jmsg(&e.encode_python(), &mut j);
    let mut pos = 0;
    while pos < j.len() {
        pos += m.handle_input(t0, &j[pos..]).consumed;
    }
    m.poll_event();
    m.accept_v110(t0);
    assert_eq!(m.poll_event(), Some(Event::V110Received));
    // Received: the driver is committing; no read deadline fires however long that takes.
    assert_eq!(m.poll_timeout(), None);
    m.handle_timeout(t0 + Duration::from_secs(600));
    assert_eq!(m.poll_transmit(), None);
    assert_eq!(m.poll_event(), None);
    m.v110_done(Err(V110Error::DecompressionFailed));
    assert_eq!(
        m.poll_transmit().unwrap(),
        V110Error::DecompressionFailed.line()
    );
    assert!(m.is_finished());
}
