//! The machines fed their input cut anywhere, and random bytes and time steps.

use super::*;

#[test]
fn machines_never_panic_on_random_bytes_and_time_steps() {
    let h = header_for(&data(3 * 4096 + 1, 1), 4096, Compress::Zstd);
    let req = {
        let mut c = PushClient::new(Instant::now(), &client_cfg(), h.clone());
        c.poll_transmit().unwrap()
    };
    let mut x = 0x0123_4567_89ab_cdefu64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..600 {
        let mut now = Instant::now();
        let mut m = ServerConnection::new(now, ServerConfig::default());
        let mut pc = PushClient::new(now, &client_cfg(), h.clone());
        let mut pl = PullClient::new(
            now,
            &client_cfg(),
            PullRequest {
                transfer_id: h.transfer_id,
                target: PullTarget::Sha256([1; 32]),
                accept_zstd: true,
                have: Have::new(),
                one_chunk: None,
                checksum: None,
            },
        );
        let mut plan = SendPlan::new(h.full_chunk, &Have::new());
        // Half the rounds start with a valid head so the later states are reached.
        let mut stream = if round % 2 == 0 {
            req.clone()
        } else {
            Vec::new()
        };
        if round % 4 == 0 {
            crate::proto::fastdp::frame::put_jmsg(&h.encode(), &mut stream);
        }
        for _ in 0..40 {
            let len = (rnd() % 64) as usize;
            let mask = if round % 3 == 0 { 0x0f } else { 0xff };
            stream.extend((0..len).map(|_| rnd() as u8 & mask));
        }
        let mut pos = 0;
        while pos < stream.len() {
            let step = 1 + (rnd() % 200) as usize;
            let piece = &stream[pos..(pos + step).min(stream.len())];
            pos += piece.len();
            for target in 0..3 {
                let mut p = 0;
                for _ in 0..1000 {
                    let (n, any) = match target {
                        0 => {
                            let r = m.handle_input(now, &piece[p..]);
                            let mut any = false;
                            while let Some(ev) = m.poll_event() {
                                any = true;
                                match ev {
                                    Event::PushHeader(_) => m.accept_push(now, Have::new(), 8),
                                    Event::PullRequest(_) => {
                                        m.refuse(ErrorMsg::new(ErrorCode::NotFound, "no"))
                                    }
                                    Event::V110Header(_) => m.accept_v110(now),
                                    Event::ChunkEnd { chunk } => {
                                        m.chunk_stored(now, chunk, rnd() % 2 == 0)
                                    }
                                    Event::AckDue(c) => {
                                        m.ack(&c.iter().map(|&c| (c, 0)).collect::<Vec<_>>())
                                    }
                                    Event::FinReceived(_) => m.answer_fin(now, &[], rnd() % 2 == 0),
                                    Event::Verify => m.complete("x", h.checksum),
                                    Event::V110Received => m.v110_done(Ok(())),
                                    _ => {}
                                }
                            }
                            (r.consumed, any)
                        }
                        1 => {
                            let n = pc.handle_input(now, &piece[p..]);
                            let any = pc.poll_event().is_some();
                            let _ = pc.poll_send(now, &mut plan);
                            (n, any)
                        }
                        _ => {
                            let r = pl.handle_input(now, &piece[p..]);
                            let any = pl.poll_event().is_some();
                            (r.consumed, any)
                        }
                    };
                    p += n;
                    if p >= piece.len() || (n == 0 && !any) {
                        break;
                    }
                }
            }
            now += Duration::from_millis(rnd() % 20_000);
            m.handle_timeout(now);
            pc.handle_timeout(now);
            pl.handle_timeout(now);
            for out in [m.poll_transmit(), pc.poll_transmit(), pl.poll_transmit()]
                .into_iter()
                .flatten()
            {
                assert!(out.len() <= 2 * 65_540 + 8192, "bounded output");
            }
        }
        m.handle_eof(now);
        pc.handle_eof(now);
        pl.handle_eof(now);
        while m.poll_event().is_some() || pc.poll_event().is_some() || pl.poll_event().is_some() {}
    }
}

/// The 2.13 exchange's client bytes, and a driver that answers as a server with every chunk
/// durable at once.
fn transcript_213() -> (Header, Vec<u8>) {
    let h = Header::new(
        4096,
        4,
        Compress::None,
        "a.txt",
        TransferId::parse(TID).unwrap(),
        sha(b"AAAA"),
    )
    .unwrap();
    let mut c = PushClient::new(Instant::now(), &client_cfg(), h.clone());
    let mut t = c.poll_transmit().unwrap();
    crate::proto::fastdp::frame::put_jmsg(&h.encode(), &mut t);
    t.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 4]);
    t.extend_from_slice(b"AAAA");
    t.extend_from_slice(&crate::proto::fastdp::frame::FIN);
    (h, t)
}

/// Runs the server machine over `t` cut at `cuts`; returns its output and its events (payload
/// slices joined per chunk, as `ChunkStart` ... `ChunkEnd` with the bytes in between).
fn serve_split(t: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<String>) {
    let now = Instant::now();
    let mut m = ServerConnection::new(now, ServerConfig::default());
    let mut out = Vec::new();
    let mut log: Vec<String> = Vec::new();
    let mut held = false;
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&t.len())) {
        let piece = &t[prev..c];
        prev = c;
        let mut pos = 0;
        loop {
            let r = m.handle_input(now, &piece[pos..]);
            pos += r.consumed;
            if let Some(p) = r.payload {
                match log.last_mut() {
                    Some(s) if s.starts_with("data ") => {
                        s.push_str(&String::from_utf8_lossy(p.bytes))
                    }
                    _ => log.push(format!("data {}", String::from_utf8_lossy(p.bytes))),
                }
            }
            let mut any = false;
            while let Some(ev) = m.poll_event() {
                any = true;
                log.push(format!("{ev:?}"));
                match ev {
                    Event::PushHeader(_) => m.accept_push(now, Have::new(), 8),
                    Event::ChunkEnd { chunk } => {
                        held = true;
                        m.chunk_stored(now, chunk, true)
                    }
                    Event::AckDue(c) => {
                        m.ack(&c.iter().map(|&c| (c, crc32c(b"AAAA"))).collect::<Vec<_>>())
                    }
                    Event::FinReceived(c) => m.answer_fin(
                        now,
                        &c.iter().map(|&c| (c, crc32c(b"AAAA"))).collect::<Vec<_>>(),
                        held,
                    ),
                    Event::Verify => m.complete("a.txt", sha(b"AAAA")),
                    _ => {}
                }
            }
            if let Some(o) = m.poll_transmit() {
                out.extend_from_slice(&o);
            }
            if r.consumed == 0 && r.payload.is_none() && !any {
                break;
            }
        }
    }
    assert!(m.is_finished());
    (out, log)
}

#[test]
fn server_machine_split_anywhere_gives_the_same_bytes_and_events() {
    let (_, t) = transcript_213();
    let whole = serve_split(&t, &[]);
    assert!(whole.0.ends_with(
        &Message::Complete {
            file_name: "a.txt".into(),
            checksum: sha(b"AAAA")
        }
        .encode()
    ));
    assert!(whole.1.contains(&"data AAAA".to_string()));
    for a in 0..=t.len() {
        assert_eq!(serve_split(&t, &[a]), whole, "split at {a}");
    }
    let bytewise: Vec<usize> = (1..t.len()).collect();
    assert_eq!(serve_split(&t, &bytewise), whole);
    for a in (0..t.len()).step_by(13) {
        for b in (a..t.len()).step_by(17) {
            assert_eq!(serve_split(&t, &[a, b]), whole, "split at {a}, {b}");
        }
    }
}

#[test]
fn push_client_machine_split_anywhere_gives_the_same_events() {
    let (h, _) = transcript_213();
    let (server_bytes, _) = serve_split(&transcript_213().1, &[]);
    let run = |cuts: &[usize]| {
        let now = Instant::now();
        let mut c = PushClient::new(now, &client_cfg(), h.clone());
        let mut plan = SendPlan::new(1, &Have::new());
        let mut log = Vec::new();
        let mut sent = Vec::new();
        let mut prev = 0;
        for &cut in cuts.iter().chain(std::iter::once(&server_bytes.len())) {
            let piece = &server_bytes[prev..cut];
            prev = cut;
            let mut pos = 0;
            loop {
                if let Some(o) = c.poll_transmit() {
                    sent.extend_from_slice(&o);
                }
                if let Some(k) = c.poll_send(now, &mut plan) {
                    sent.extend_from_slice(&c.begin_chunk(k.chunk, k.len));
                    sent.extend_from_slice(b"AAAA");
                    plan.sent(k.chunk, crc32c(b"AAAA"));
                }
                let n = c.handle_input(now, &piece[pos..]);
                pos += n;
                let mut any = false;
                while let Some(ev) = c.poll_event() {
                    any = true;
                    if let Event::Acked(e) = &ev {
                        for &(k, crc) in e {
                            plan.ack(k, crc);
                        }
                    }
                    log.push(ev);
                }
                if n == 0 && !any {
                    break;
                }
            }
        }
        if let Some(o) = c.poll_transmit() {
            sent.extend_from_slice(&o);
        }
        assert!(c.is_finished());
        (log, sent)
    };
    let whole = run(&[]);
    assert_eq!(
        whole.1,
        transcript_213().1,
        "the client wrote exactly the 2.13 bytes"
    );
    assert!(matches!(whole.0.last(), Some(Event::Complete { .. })));
    for a in 0..=server_bytes.len() {
        assert_eq!(run(&[a]), whole, "split at {a}");
    }
    let bytewise: Vec<usize> = (1..server_bytes.len()).collect();
    assert_eq!(run(&bytewise), whole);
}
