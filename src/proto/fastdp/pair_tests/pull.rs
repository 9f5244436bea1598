//! Pull transfers: the server machine as data sender, the pull client as receiver (F29, F37, F38).

use super::*;

/// A pull client and a server connection through the handshake and the request: the client
/// waiting for the reply, the server holding the request it reported.
fn open_pull(t0: Instant, request: &PullRequest) -> (PullClient, ServerConnection, PullRequest) {
    let mut c = PullClient::new(t0, &client_cfg(), request.clone());
    let mut s = ServerConnection::new(t0, ServerConfig::default());
    s.handle_input(t0, &c.poll_transmit().unwrap());
    c.handle_input(t0, &s.poll_transmit().unwrap());
    let q = c.poll_transmit().unwrap();
    let mut pos = 0;
    while pos < q.len() {
        pos += s.handle_input(t0, &q[pos..]).consumed;
    }
    let Some(Event::PullRequest(p)) = s.poll_event() else {
        panic!()
    };
    (c, s, p)
}

/// The server's reply to `p` for `src` as "a.txt" in 4,096-byte chunks, uncompressed, with
/// the request's Have echoed.
fn reply_of(src: &[u8], p: &PullRequest) -> PullReply {
    PullReply {
        one_chunk: 4096,
        full_chunk: src.len().div_ceil(4096) as u32,
        full_size: src.len() as u64,
        compress: Compress::None,
        file_name: "a.txt".into(),
        transfer_id: p.transfer_id,
        checksum: sha(src),
        have: p.have.clone(),
        max_connections: 8,
        reconnect_bytes: DEFAULT_RECONNECT_BYTES,
    }
}

/// F29 for the pull client: a slow 101 is timed from its last byte, a silent server times the
/// handshake out, EOF inside the 101 fails, and a server silent after its reply gets timeout.
#[test]
fn f29_pull_client_eof_and_timeouts() {
    let t0 = Instant::now();
    let idle = Limits::default().idle;
    let request = PullRequest {
        transfer_id: TransferId::parse("9b2e4f60-1c3d-4a5b-8e7f-0a1b2c3d4e5f").unwrap(),
        target: PullTarget::Name("a.txt".into()),
        accept_zstd: false,
        have: Have::new(),
        one_chunk: None,
        checksum: None,
    };
    let fresh = || {
        let mut c = PullClient::new(t0, &client_cfg(), request.clone());
        c.poll_transmit().unwrap();
        c
    };
    let timed_out = |c: &mut PullClient| matches!(c.poll_event(), Some(Event::Failed(e)) if e.code == ErrorCode::Timeout);
    let mut c = fresh();
    let t1 = t0 + idle - Duration::from_secs(1);
    c.handle_input(t1, b"HTTP/1.1 101 ");
    assert_eq!(c.poll_timeout(), Some(t1 + idle));
    c.handle_timeout(t0 + idle);
    assert!(!c.is_finished());
    c.handle_timeout(t1 + idle);
    assert!(timed_out(&mut c));
    assert!(c.is_finished());
    let mut c = fresh();
    c.handle_input(t0, b"HTTP/1.1 101 Swi");
    c.handle_eof(t0);
    assert!(matches!(c.poll_event(), Some(Event::Failed(_))));
    assert!(c.handshake_failure().is_some());
    assert!(c.is_finished());
    // Accepted, then nothing for 60 s.
    let (mut c, mut s, p) = open_pull(t0, &request);
    let src = data(3 * 4096, 9);
    s.accept_pull(t0, &reply_of(&src, &p));
    let reply = s.poll_transmit().unwrap();
    assert_eq!(c.handle_input(t0, &reply).consumed, reply.len());
    assert!(matches!(c.poll_event(), Some(Event::PullAccepted(_))));
    c.handle_timeout(t0 + idle - Duration::from_secs(1));
    assert!(!c.is_finished());
    c.handle_timeout(t0 + idle);
    assert!(timed_out(&mut c));
    assert!(c.is_finished());
}

/// A pull: the server machine as data sender from a "catalog" buffer, the pull client as data
/// receiver with a fake `.part`.
#[test]
fn f37_pull_pair_completes_with_crc_repair() {
    let src = data(5 * 4096 + 9, 12);
    let tid = TransferId::parse("9b2e4f60-1c3d-4a5b-8e7f-0a1b2c3d4e5f").unwrap();
    let g = Geometry::new(4096, src.len() as u64).unwrap();
    let mut now = Instant::now();
    for compress in [Compress::None, Compress::Zstd] {
        let request = PullRequest {
            transfer_id: tid,
            target: PullTarget::Name("a.txt".into()),
            accept_zstd: compress == Compress::Zstd,
            have: Have::new(),
            one_chunk: None,
            checksum: None,
        };
        let mut client = PullClient::new(now, &client_cfg(), request);
        let mut server = ServerConnection::new(now, ServerConfig::default());
        let mut plan = SendPlan::new(g.full_chunk(), &Have::new());
        let mut part = vec![0u8; src.len()];
        let mut held: Vec<Option<u32>> = vec![None; g.full_chunk() as usize];
        let mut z = ChunkCompressor::new(3).unwrap();
        let mut inflater = ChunkInflater::new().unwrap();
        let mut crc = Crc32c::new();
        let mut written = 0usize;
        let mut corrupt_once = true;
        let mut complete = None;
        let mut server_complete = None;
        for _ in 0..500 {
            if let Some(b) = client.poll_transmit() {
                let mut pos = 0;
                loop {
                    let r = server.handle_input(now, &b[pos..]);
                    pos += r.consumed;
                    let mut any = false;
                    while let Some(ev) = server.poll_event() {
                        any = true;
                        match ev {
                            Event::PullRequest(p) => {
                                assert_eq!(p.target, PullTarget::Name("a.txt".into()));
                                let reply = PullReply {
                                    one_chunk: 4096,
                                    full_chunk: g.full_chunk(),
                                    full_size: g.full_size(),
                                    compress: if p.accept_zstd {
                                        Compress::Zstd
                                    } else {
                                        Compress::None
                                    },
                                    file_name: "a.txt".into(),
                                    transfer_id: p.transfer_id,
                                    checksum: sha(&src),
                                    have: p.have,
                                    max_connections: 8,
                                    reconnect_bytes: DEFAULT_RECONNECT_BYTES,
                                };
                                server.accept_pull(now, &reply);
                            }
                            Event::Acked(entries) => {
                                for (c, k) in entries {
                                    plan.ack(c, k);
                                }
                            }
                            Event::Complete {
                                file_name,
                                checksum,
                            } => server_complete = Some((file_name, checksum)),
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    if r.consumed == 0 && !any {
                        break;
                    }
                }
            }
            let mut wire = server.poll_transmit().unwrap_or_default();
            while let Some(c) = server.poll_send(now, &mut plan) {
                let bytes = &src[c.offset as usize..(c.offset + u64::from(c.len)) as usize];
                let mut payload = if compress == Compress::Zstd {
                    let mut o = Vec::new();
                    z.compress(bytes, &mut o).unwrap();
                    o
                } else {
                    bytes.to_vec()
                };
                if c.chunk == 3 && corrupt_once && compress == Compress::None {
                    corrupt_once = false;
                    payload[7] ^= 0xff;
                }
                wire.extend_from_slice(&server.begin_chunk(c.chunk, payload.len() as u32));
                wire.extend_from_slice(&payload);
                plan.sent(c.chunk, crc32c(bytes));
            }
            if let Some(b) = server.poll_transmit() {
                wire.extend_from_slice(&b);
            }
            let mut pos = 0;
            loop {
                let Input { consumed, payload } = client.handle_input(now, &wire[pos..]);
                pos += consumed;
                if let Some(p) = payload {
                    let base = g.offset(p.chunk) as usize;
                    if compress == Compress::None {
                        part[base + written..base + written + p.bytes.len()]
                            .copy_from_slice(p.bytes);
                        crc.update(p.bytes);
                        written += p.bytes.len();
                    } else {
                        let mut buf = [0u8; 512];
                        let mut input = p.bytes;
                        loop {
                            let (u, n) = inflater.decompress(input, &mut buf).unwrap();
                            part[base + written..base + written + n].copy_from_slice(&buf[..n]);
                            crc.update(&buf[..n]);
                            written += n;
                            input = &input[u..];
                            if u == 0 && n == 0 {
                                break;
                            }
                        }
                    }
                }
                let mut any = false;
                while let Some(ev) = client.poll_event() {
                    any = true;
                    match ev {
                        Event::PullAccepted(r) => assert_eq!(r.compress, compress),
                        Event::ChunkStart { chunk, .. } => {
                            held[chunk as usize] = None;
                            crc = Crc32c::new();
                            written = 0;
                            inflater.begin(g.len(chunk));
                        }
                        Event::ChunkEnd { chunk } => {
                            if compress == Compress::Zstd {
                                inflater.finish().unwrap();
                            }
                            held[chunk as usize] = Some(crc.value());
                            let all = held.iter().all(Option::is_some);
                            client.chunk_stored(now, chunk, all);
                        }
                        Event::AckDue(c) => {
                            let d: Vec<_> = c
                                .iter()
                                .filter_map(|&i| held[i as usize].map(|k| (i, k)))
                                .collect();
                            client.ack(&d);
                        }
                        Event::FinReceived(c) => {
                            let d: Vec<_> = c
                                .iter()
                                .filter_map(|&i| held[i as usize].map(|k| (i, k)))
                                .collect();
                            client.answer_fin(now, &d, held.iter().all(Option::is_some));
                        }
                        Event::Verify => {
                            assert_eq!(part, src);
                            client.complete("a.txt", sha(&part));
                            complete = Some(());
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                if consumed == 0 && payload.is_none() && !any {
                    break;
                }
            }
            now += Duration::from_millis(100);
            client.handle_timeout(now);
            while let Some(ev) = client.poll_event() {
                if let Event::AckDue(c) = ev {
                    let d: Vec<_> = c
                        .iter()
                        .filter_map(|&i| held[i as usize].map(|k| (i, k)))
                        .collect();
                    client.ack(&d);
                }
            }
            server.handle_timeout(now);
            if client.is_finished() && server.is_finished() {
                break;
            }
        }
        assert!(complete.is_some(), "{compress:?}");
        let (name, sum) = server_complete.expect("the server saw Complete");
        assert_eq!((name.as_str(), sum), ("a.txt", sha(&src)));
        assert_eq!(part, src);
        assert!(plan.is_complete());
    }
}

#[test]
fn f38_pull_resume_sends_only_missing_chunks_and_checks_the_reply() {
    let t0 = Instant::now();
    let tid = TransferId::parse("9b2e4f60-1c3d-4a5b-8e7f-0a1b2c3d4e5f").unwrap();
    let src = data(5 * 4096, 14);
    let request = PullRequest {
        transfer_id: tid,
        target: PullTarget::Sha256(Sha256::digest(&src).into()),
        accept_zstd: false,
        have: Have::normalised(vec![(0, 2), (3, 4)]),
        one_chunk: Some(4096),
        checksum: Some(sha(&src)),
    };
    let reply_for = |p: &PullRequest| reply_of(&src, p);
    let open = |request: &PullRequest| open_pull(t0, request);
    let (mut c, mut s, p) = open(&request);
    assert_eq!(p, request);
    s.accept_pull(t0, &reply_for(&p));
    let mut plan = SendPlan::new(5, &p.have);
    let reply = s.poll_transmit().unwrap();
    let mut sent = Vec::new();
    while let Some(k) = s.poll_send(t0, &mut plan) {
        sent.push(k.chunk);
    }
    assert_eq!(sent, [2, 4], "only the chunks missing from Have");
    assert_eq!(
        s.in_flight(),
        &[2, 4],
        "given back to the plan if the connection ends"
    );
    let r = c.handle_input(t0, &reply);
    assert_eq!(r.consumed, reply.len());
    assert!(matches!(c.poll_event(), Some(Event::PullAccepted(_))));
    // A bad chunk while receiving is told to the server (Error bad-chunk naming it), not only
    // reported here.
    c.chunk_failed(2, "crc mismatch");
    let told = c.poll_transmit().expect("an Error JMSG to the server");
    let text = String::from_utf8_lossy(&told);
    assert!(
        text.contains(r#""bad-chunk""#) && text.contains("chunk 2: crc mismatch"),
        "{text}"
    );
    assert!(matches!(c.poll_event(), Some(Event::Failed(e)) if e.chunk == Some(2)));
    // A reply for other parameters (the catalog file changed under the same name) is refused
    // by the client; the server's own refusal is parameter-mismatch, final.
    let (mut c, mut s, p) = open(&request);
    let mut other = reply_for(&p);
    other.checksum = Checksum([9; 32]);
    s.accept_pull(t0, &other);
    c.handle_input(t0, &s.poll_transmit().unwrap());
    assert!(matches!(c.poll_event(), Some(Event::Failed(_))));
    assert!(c.is_finished());
    // F23: the bytes sent count toward ReconnectBytes; past it the server sends a FIN that
    // is not final, with chunk 4 still to send (on the next connection).
    let (_, mut s, p) = open(&request);
    let mut small = reply_for(&p);
    small.reconnect_bytes = 4096;
    s.accept_pull(t0, &small);
    s.poll_transmit().unwrap();
    let mut plan = SendPlan::new(5, &p.have);
    let k = s.poll_send(t0, &mut plan).unwrap();
    assert_eq!(
        s.begin_chunk(k.chunk, k.len),
        crate::proto::fastdp::frame::chunk_header(2, 4096)
    );
    assert!(
        s.poll_send(t0, &mut plan).is_none(),
        "4,096 bytes sent: recycle"
    );
    assert_eq!(s.poll_transmit().unwrap(), crate::proto::fastdp::frame::FIN);
    assert!(plan.has_unsent());
    // The client closes after that FIN: the connection is recycled, not lost.
    s.handle_eof(t0);
    assert_eq!(s.poll_event(), Some(Event::Recycle));
    // ReconnectBytes 0: never recycled.
    let (_, mut s, p) = open(&request);
    let mut never = reply_for(&p);
    never.reconnect_bytes = 0;
    s.accept_pull(t0, &never);
    s.poll_transmit().unwrap();
    let mut plan = SendPlan::new(5, &p.have);
    let mut sent = Vec::new();
    while let Some(k) = s.poll_send(t0, &mut plan) {
        s.begin_chunk(k.chunk, k.len);
        sent.push(k.chunk);
    }
    assert_eq!(sent, [2, 4]);
    assert_eq!(s.poll_transmit(), None, "no FIN before the Acks");
    // F29: a pull client silent for 60 s (no Ack) gets timeout and the close.
    let (_, mut s, p) = open(&request);
    s.accept_pull(t0, &reply_for(&p));
    s.poll_transmit().unwrap();
    let mut plan = SendPlan::new(5, &p.have);
    while s.poll_send(t0, &mut plan).is_some() {}
    let due = s
        .poll_timeout()
        .expect("a pull waiting for Acks has a deadline");
    assert!(due > t0 + Duration::from_secs(59) && due <= t0 + Duration::from_secs(61));
    s.handle_timeout(t0 + Duration::from_secs(59));
    assert!(!s.is_finished());
    s.handle_timeout(t0 + Duration::from_secs(61));
    let out = s.poll_transmit().unwrap();
    assert!(String::from_utf8_lossy(&out).contains(r#""Code":"timeout""#));
    assert!(s.is_finished());
    // An Ack postpones that deadline (an empty read does not) and takes its chunk out of
    // those in flight; EOF then is an unclean close.
    let (_, mut s, p) = open(&request);
    s.accept_pull(t0, &reply_for(&p));
    s.poll_transmit().unwrap();
    let mut plan = SendPlan::new(5, &p.have);
    while s.poll_send(t0, &mut plan).is_some() {}
    let due = s.poll_timeout().unwrap();
    let t1 = t0 + Duration::from_secs(30);
    s.handle_input(t1, &[]);
    assert_eq!(s.poll_timeout(), Some(due), "no bytes, no postponing");
    let mut ack = Vec::new();
    crate::proto::fastdp::messages::put_acks(&[(2, 0)], &mut ack);
    let mut pos = 0;
    while pos < ack.len() {
        pos += s.handle_input(t1, &ack[pos..]).consumed;
    }
    assert_eq!(s.in_flight(), &[4]);
    assert_eq!(s.poll_timeout(), Some(due + Duration::from_secs(30)));
    while s.poll_event().is_some() {}
    s.handle_eof(t1);
    assert_eq!(s.poll_event(), Some(Event::PeerClosed { clean: false }));
    assert!(s.is_finished());
    // A server busy sending (chunks left to take) is not timed out by a quiet client.
    let (_, mut s, p) = open(&request);
    s.accept_pull(t0, &reply_for(&p));
    s.poll_transmit().unwrap();
    let mut plan = SendPlan::new(5, &p.have);
    assert!(s.poll_send(t0, &mut plan).is_some());
    s.handle_timeout(t0 + Duration::from_secs(61));
    assert!(!s.is_finished());
    let (mut c, mut s, _) = open(&request);
    s.refuse(ErrorMsg::new(ErrorCode::ParameterMismatch, "entry changed"));
    c.handle_input(t0, &s.poll_transmit().unwrap());
    let Some(Event::PeerError(e)) = c.poll_event() else {
        panic!()
    };
    assert!(e.is_final());
    // A control frame Error in the middle of the chunk stream ends the pull.
    let (mut c, mut s, p) = open(&request);
    s.accept_pull(t0, &reply_for(&p));
    c.handle_input(t0, &s.poll_transmit().unwrap());
    c.poll_event();
    s.fail(ErrorMsg::new(
        ErrorCode::ParameterMismatch,
        "source file changed",
    ));
    let ctl = s.poll_transmit().unwrap();
    assert_eq!(&ctl[..4], &[0xff, 0xff, 0xff, 0xfe]);
    assert!(s.is_finished());
    let r = c.handle_input(t0, &ctl);
    assert_eq!(r.consumed, 8);
    let r = c.handle_input(t0, &ctl[8..]);
    assert_eq!(r.consumed, ctl.len() - 8);
    let Some(Event::PeerError(e)) = c.poll_event() else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::ParameterMismatch);
    assert!(c.is_finished());
}
