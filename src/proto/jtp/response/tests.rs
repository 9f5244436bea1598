use super::*;
use crate::proto::jtp::wire::image_id;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const ALPHA: u64 = 0x84fe30f5845a521f;
const BETA: u64 = 0x6532b96544f38db1;

#[test]
fn j6_list_example_encodes_byte_for_byte() {
    let mut out = Vec::new();
    put_list_header(8, &mut out);
    put_entry(ALPHA, 0, "alpha.png", 9332, &mut out);
    put_entry(BETA, 0, "beta.png", 90243, &mut out);
    assert_eq!(
        out,
        hex("4a54504c 08
             84fe30f5845a521f 00 0009 616c7068612e706e67 f448
             6532b96544f38db1 00 0008 626574612e706e67 83c105")
    );
    let mut empty = Vec::new();
    put_list_header(0, &mut empty);
    assert_eq!(empty, hex("4a54504c 00"));
}

#[test]
fn j12_packet_examples_encode_byte_for_byte() {
    let mut out = Vec::new();
    put_packet_header(0x00, 9332, ALPHA, &mut out);
    assert_eq!(out, hex("00 f448 84fe30f5845a521f"));
    out.clear();
    put_packet_header(0x0b, 3385, 0x13e6ede93d09b0c3, &mut out);
    assert_eq!(out, hex("0b b91a 13e6ede93d09b0c3"));
    out.clear();
    put_packets_header(MAGIC_GET, 0, &mut out);
    put_packets_header(MAGIC_BATCH, 0, &mut out);
    put_packets_header(MAGIC_LIST_AND_GET, 300, &mut out);
    put_cancel(&mut out);
    assert_eq!(out, hex("4a545044 00 4a545042 00 4a545047 ac02 4a545043"));
}

#[test]
fn j27_watch_example_encodes_byte_for_byte() {
    let mut out = Vec::new();
    put_watch_event(image_id(b""), 4, "caf\u{e9}.gif", 0, &mut out);
    assert_eq!(
        out,
        hex("4a545057 ef46db3751d8e999 04 0009 636166c3a92e676966 00")
    );
}

#[test]
fn error_examples_encode_byte_for_byte() {
    assert_eq!(
        error_frame(2, "reserved flags set"),
        hex("4a545045 02 0012 726573657276656420666c61677320736574")
    );
    assert_eq!(
        error_frame(4, "unknown request type"),
        hex("4a545045 04 0014 756e6b6e6f776e20726571756573742074797065")
    );
    assert_eq!(
        error_frame(5, "too many requests"),
        hex("4a545045 05 0011 746f6f206d616e79207265717565737473")
    );
}

#[test]
fn long_error_message_is_cut_at_a_char_boundary() {
    let msg = "é".repeat(40_000); // 80,000 bytes
    let f = error_frame(3, &msg);
    assert_eq!(&f[5..7], &65_534u16.to_be_bytes());
    assert_eq!(f.len(), 7 + 65_534);
    assert!(std::str::from_utf8(&f[7..]).is_ok());
}

/// Owned events, with consecutive `Data` merged, for comparing transcripts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    ListStart(u32),
    Entry(u64, u8, Vec<u8>, u32),
    PacketsStart([u8; 4], u32),
    PacketHeader(u8, u32, u64),
    Data(Vec<u8>),
    PacketEnd,
    ResponseEnd,
    Cancelled,
    Watch(u64, u8, Vec<u8>, u32),
    ServerError(u8, String),
}

fn own(e: Event<'_>, out: &mut Vec<Ev>) {
    let ev = match e {
        Event::ListStart { count } => Ev::ListStart(count),
        Event::Entry {
            id,
            flags,
            name,
            size,
        } => Ev::Entry(id, flags, name.to_vec(), size),
        Event::PacketsStart { magic, count } => Ev::PacketsStart(magic, count),
        Event::PacketHeader { flags, len, id } => Ev::PacketHeader(flags, len, id),
        Event::Data(d) => {
            if let Some(Ev::Data(prev)) = out.last_mut() {
                prev.extend_from_slice(d);
                return;
            }
            Ev::Data(d.to_vec())
        }
        Event::PacketEnd => Ev::PacketEnd,
        Event::ResponseEnd => Ev::ResponseEnd,
        Event::Cancelled => Ev::Cancelled,
        Event::Watch {
            id,
            flags,
            name,
            size,
        } => Ev::Watch(id, flags, name.to_vec(), size),
        Event::ServerError { code, message } => Ev::ServerError(code, message),
    };
    out.push(ev);
}

/// Feeds `chunks` to `d`, returning the events and the first error.
fn run(d: &mut ResponseDecoder, chunks: &[&[u8]]) -> (Vec<Ev>, Option<ResponseError>) {
    let mut evs = Vec::new();
    for chunk in chunks {
        let mut off = 0;
        loop {
            let (n, r) = d.decode(&chunk[off..]);
            assert!(n <= chunk.len() - off);
            if let Ok(Some(Event::Data(data))) = &r {
                // Zero-copy: packet data is the caller's input, never a copy.
                assert_eq!(data.as_ptr(), chunk[off..].as_ptr());
                assert_eq!(data.len(), n);
            }
            off += n;
            let r = r.map(|e| e.map(|e| own(e, &mut evs)));
            assert_bounded(d);
            match r {
                Err(e) => return (evs, Some(e)),
                Ok(Some(())) => {}
                Ok(None) => {
                    assert_eq!(off, chunk.len(), "Ok(None) takes every byte");
                    break;
                }
            }
        }
    }
    (evs, None)
}

/// A split frame is held within [`MAX_HEADER_FRAME`], and the stash allocates no more.
fn assert_bounded(d: &ResponseDecoder) {
    assert!(d.stash.held().len() <= MAX_HEADER_FRAME);
    assert!(d.stash.capacity() <= MAX_HEADER_FRAME);
}

fn transcript() -> Vec<u8> {
    let mut t = Vec::new();
    put_list_header(2, &mut t);
    put_entry(ALPHA, 0, "alpha.png", 5, &mut t);
    put_entry(BETA, 3, "beta.bmp", 0, &mut t);
    put_get_header(2, &mut t);
    put_packet_header(0, 5, ALPHA, &mut t);
    t.extend_from_slice(b"JTPE!"); // data that looks like a frame
    put_packet_header(3, 0, BETA, &mut t);
    put_cancel(&mut t);
    put_error(99, "caf\u{e9} closed", &mut t);
    t
}

fn transcript_decoder() -> ResponseDecoder {
    let mut d = ResponseDecoder::new(ResponseLimits::default());
    d.expect(Expect::Idle);
    d.expect(Expect::List);
    d.expect(Expect::Get {
        requested: vec![7, ALPHA, 9, BETA],
    });
    d
}

fn transcript_events() -> Vec<Ev> {
    vec![
        Ev::ListStart(2),
        Ev::Entry(ALPHA, 0, b"alpha.png".to_vec(), 5),
        Ev::Entry(BETA, 3, b"beta.bmp".to_vec(), 0),
        Ev::ResponseEnd,
        Ev::PacketsStart(*b"JTPD", 2),
        Ev::PacketHeader(0, 5, ALPHA),
        Ev::Data(b"JTPE!".to_vec()),
        Ev::PacketEnd,
        Ev::PacketHeader(3, 0, BETA),
        Ev::PacketEnd,
        Ev::ResponseEnd,
        Ev::Cancelled,
        Ev::ServerError(99, "caf\u{e9} closed".to_string()),
    ]
}

#[test]
fn split_anywhere_gives_the_same_events() {
    let t = transcript();
    let want = transcript_events();
    let mut d = transcript_decoder();
    assert!(!d.is_idle());
    assert_eq!(run(&mut d, &[&t]), (want.clone(), None));
    assert!(d.is_idle());
    let singles: Vec<&[u8]> = t.chunks(1).collect();
    assert_eq!(
        run(&mut transcript_decoder(), &singles),
        (want.clone(), None)
    );
    for cut in 0..=t.len() {
        let (a, b) = t.split_at(cut);
        assert_eq!(
            run(&mut transcript_decoder(), &[a, b]),
            (want.clone(), None),
            "{cut}"
        );
    }
    for cut1 in 0..t.len() {
        let cut2 = (cut1 * 7 + 3) % t.len();
        let (lo, hi) = (cut1.min(cut2), cut1.max(cut2));
        let pieces = [&t[..lo], &t[lo..hi], &t[hi..]];
        assert_eq!(
            run(&mut transcript_decoder(), &pieces),
            (want.clone(), None)
        );
    }
}

/// JTPB, JTPG and WATCH with multi-byte varints: the frames `transcript` lacks.
fn transcript2() -> Vec<u8> {
    let mut t = Vec::new();
    put_packets_header(MAGIC_BATCH, 2, &mut t);
    put_packet_header(0x0b, 130, ALPHA, &mut t);
    t.extend((0..130u8).map(|i| i.wrapping_mul(7)));
    put_packet_header(2, 0, BETA, &mut t);
    put_packets_header(MAGIC_LIST_AND_GET, 0, &mut t);
    put_watch_event(image_id(b""), 4, "caf\u{e9}.gif", 90243, &mut t);
    put_cancel(&mut t);
    t
}

fn transcript2_decoder() -> ResponseDecoder {
    let mut d = ResponseDecoder::new(ResponseLimits::default());
    d.expect(Expect::Batch);
    d.expect(Expect::ListAndGet);
    d.expect(Expect::Watch);
    d
}

fn transcript2_events() -> Vec<Ev> {
    vec![
        Ev::PacketsStart(*b"JTPB", 2),
        Ev::PacketHeader(0x0b, 130, ALPHA),
        Ev::Data((0..130u8).map(|i| i.wrapping_mul(7)).collect()),
        Ev::PacketEnd,
        Ev::PacketHeader(2, 0, BETA),
        Ev::PacketEnd,
        Ev::ResponseEnd,
        Ev::PacketsStart(*b"JTPG", 0),
        Ev::ResponseEnd,
        Ev::Watch(
            0xef46db3751d8e999,
            4,
            "caf\u{e9}.gif".as_bytes().to_vec(),
            90243,
        ),
        Ev::Cancelled,
    ]
}

#[test]
fn j44_split_at_every_pair_of_offsets_gives_the_same_events() {
    type Case = (Vec<u8>, fn() -> ResponseDecoder, Vec<Ev>);
    let cases: [Case; 2] = [
        (transcript(), transcript_decoder, transcript_events()),
        (transcript2(), transcript2_decoder, transcript2_events()),
    ];
    for (t, decoder, want) in cases {
        assert_eq!(run(&mut decoder(), &[&t]), (want.clone(), None));
        let singles: Vec<&[u8]> = t.chunks(1).collect();
        assert_eq!(run(&mut decoder(), &singles), (want.clone(), None));
        for a in 0..=t.len() {
            for b in a..=t.len() {
                let pieces = [&t[..a], &t[a..b], &t[b..]];
                let mut d = decoder();
                assert_eq!(run(&mut d, &pieces), (want.clone(), None), "{a} {b}");
                assert!(d.is_idle());
            }
        }
    }
}

#[test]
fn j27_longest_watch_event_fills_the_stash_exactly_split_anywhere() {
    let name = "n".repeat(usize::from(u16::MAX));
    let mut t = Vec::new();
    put_watch_event(7, 1, &name, u32::MAX, &mut t);
    assert_eq!(t.len(), MAX_HEADER_FRAME);
    put_cancel(&mut t);
    let want = vec![Ev::Watch(7, 1, name.into_bytes(), u32::MAX), Ev::Cancelled];
    let decoder = || {
        let mut d = ResponseDecoder::new(ResponseLimits::default());
        d.expect(Expect::Watch);
        d
    };
    assert_eq!(run(&mut decoder(), &[&t]), (want.clone(), None));
    for size in [1, 2, 7, 4096, 65_536] {
        let pieces: Vec<&[u8]> = t.chunks(size).collect();
        assert_eq!(run(&mut decoder(), &pieces), (want.clone(), None), "{size}");
    }
    for cut in [
        1, 4, 5, 12, 13, 15, 16, 65_549, 65_550, 65_554, 65_555, 65_556,
    ] {
        let (a, b) = t.split_at(cut);
        assert_eq!(run(&mut decoder(), &[a, b]), (want.clone(), None), "{cut}");
    }
}

#[test]
fn is_idle_only_between_responses() {
    let t = transcript();
    let mut d = transcript_decoder();
    // Mid-frame (inside the JTPL header's first entry) is not idle.
    let (evs, err) = run(&mut d, &[&t[..7]]);
    assert_eq!((evs, err), (vec![Ev::ListStart(2)], None));
    assert!(!d.is_idle());
    let mut d = ResponseDecoder::new(ResponseLimits::default());
    d.expect(Expect::List);
    let (_, err) = run(&mut d, &[&hex("4a54504c 00")]);
    assert_eq!(err, None);
    assert!(d.is_idle());
    // A split JTPC is not idle until complete.
    assert_eq!(run(&mut d, &[b"JTP"]), (vec![], None));
    assert!(!d.is_idle());
    assert_eq!(run(&mut d, &[b"C"]), (vec![Ev::Cancelled], None));
    assert!(d.is_idle());
}

#[test]
fn j23_cancel_between_packets_ends_the_response() {
    let mut t = Vec::new();
    put_packets_header(MAGIC_BATCH, 3, &mut t);
    put_packet_header(1, 2, 5, &mut t);
    t.extend_from_slice(b"ab");
    put_cancel(&mut t);
    put_list_header(0, &mut t);
    let mut d = ResponseDecoder::new(ResponseLimits::default());
    d.expect(Expect::Batch);
    d.expect(Expect::List);
    let (evs, err) = run(&mut d, &[&t]);
    assert_eq!(err, None);
    assert_eq!(
        evs,
        vec![
            Ev::PacketsStart(*b"JTPB", 3),
            Ev::PacketHeader(1, 2, 5),
            Ev::Data(b"ab".to_vec()),
            Ev::PacketEnd,
            Ev::Cancelled,
            Ev::ListStart(0),
            Ev::ResponseEnd,
        ]
    );
    assert!(d.is_idle());
}

#[test]
fn j20_cancel_after_a_response_and_when_idle() {
    let mut d = ResponseDecoder::new(ResponseLimits::default());
    d.expect(Expect::ListAndGet);
    let t = hex("4a545043 4a545047 00 4a545043");
    let (evs, err) = run(&mut d, &[&t]);
    assert_eq!(err, None);
    assert_eq!(
        evs,
        vec![
            Ev::Cancelled,
            Ev::PacketsStart(*b"JTPG", 0),
            Ev::ResponseEnd,
            Ev::Cancelled
        ]
    );
}

#[test]
fn j27_watch_events_until_cancel() {
    let mut t = Vec::new();
    put_watch_event(image_id(b""), 4, "caf\u{e9}.gif", 0, &mut t);
    put_watch_event(1, 0, "a.png", 300, &mut t);
    put_cancel(&mut t);
    let mut d = ResponseDecoder::new(ResponseLimits::default());
    d.expect(Expect::Watch);
    assert!(!d.is_idle());
    let (evs, err) = run(&mut d, &[&t]);
    assert_eq!(err, None);
    assert_eq!(
        evs,
        vec![
            Ev::Watch(
                0xef46db3751d8e999,
                4,
                "caf\u{e9}.gif".as_bytes().to_vec(),
                0
            ),
            Ev::Watch(1, 0, b"a.png".to_vec(), 300),
            Ev::Cancelled,
        ]
    );
    assert!(d.is_idle());
}

fn first_error(expect: Expect, bytes: &[u8]) -> (Vec<Ev>, Option<ResponseError>) {
    let mut d = ResponseDecoder::new(ResponseLimits::default());
    d.expect(expect);
    run(&mut d, &[bytes])
}

#[test]
fn j42_huge_list_count_is_refused_or_partial() {
    let (evs, err) = first_error(Expect::List, &hex("4a54504c ffffffff0f"));
    assert_eq!(
        (evs, err),
        (vec![], Some(ResponseError::TooManyEntries(u32::MAX)))
    );
    // Within the limit it just waits for entries, holding nothing.
    let mut d = ResponseDecoder::new(ResponseLimits::default());
    d.expect(Expect::List);
    let (evs, err) = run(&mut d, &[&hex("4a54504c 80ade204")]);
    assert_eq!((evs, err), (vec![Ev::ListStart(10_000_000)], None));
    assert!(!d.is_idle() && d.stash.capacity() == 0);
    let (evs, err) = first_error(Expect::Batch, &hex("4a545042 81ade204"));
    assert_eq!(
        (evs, err),
        (vec![], Some(ResponseError::TooManyPackets(10_000_001)))
    );
    // Exactly the limit is accepted, for JTPB as for JTPL.
    let (evs, err) = first_error(Expect::Batch, &hex("4a545042 80ade204"));
    assert_eq!(
        (evs, err),
        (vec![Ev::PacketsStart(MAGIC_BATCH, 10_000_000)], None)
    );
}

/// The stash gathers a split packet header by `frame_need`, the fewest bytes the frame can
/// have: flags, a varint cut after one byte (so at least one more), then the 8-byte id.
#[test]
fn frame_need_of_a_packet_header_cut_in_its_length_is_exact() {
    assert_eq!(frame_need(Ctx::Packet, &[0x00, 0x80]), Ok(1 + 2 + 8));
    assert_eq!(frame_need(Ctx::Packet, &[0x00, 0x80, 0x80]), Ok(1 + 3 + 8));
}

/// An entry cut inside its name needs the rest of the name and one byte of Size at least
/// (whole run, proto-jtp response part: `len + 1` as `len * 1` asked one byte too few, so the
/// stash gathered the name and then had to ask again).
#[test]
fn frame_need_of_an_entry_cut_in_its_name_is_exact() {
    // id (8), flags (1), NameLen 5, then 2 of the 5 name bytes.
    let cut = hex("0000000000000007 00 0005 6162");
    assert_eq!(frame_need(Ctx::Entry, &cut), Ok(8 + 1 + 2 + 5 + 1));
    // The whole name, Size missing: one byte of it at least.
    let named = hex("0000000000000007 00 0005 6162636465");
    assert_eq!(frame_need(Ctx::Entry, &named), Ok(8 + 1 + 2 + 5 + 1));
}

#[test]
fn j42_huge_packet_length_just_streams() {
    let mut d = ResponseDecoder::new(ResponseLimits::default());
    d.expect(Expect::Batch);
    let (evs, err) = run(
        &mut d,
        &[&hex("4a545042 01 00 ffffffff0f 0000000000000001 aabb")],
    );
    assert_eq!(err, None);
    assert_eq!(
        evs,
        vec![
            Ev::PacketsStart(*b"JTPB", 1),
            Ev::PacketHeader(0, u32::MAX, 1),
            Ev::Data(vec![0xaa, 0xbb]),
        ]
    );
    let chunk = vec![0x55; 1 << 16];
    for _ in 0..16 {
        let (n, r) = d.decode(&chunk);
        assert_eq!(n, chunk.len());
        assert!(matches!(r, Ok(Some(Event::Data(b))) if b.len() == chunk.len()));
    }
    assert!(!d.is_idle() && d.stash.capacity() == 0);
}

#[test]
fn j42_jtpd_more_than_requested() {
    let (_, err) = first_error(Expect::Get { requested: vec![1] }, &hex("4a545044 02"));
    assert_eq!(err, Some(ResponseError::MoreThanRequested { m: 2, n: 1 }));
}

#[test]
fn jtpd_ids_must_be_a_subsequence() {
    let req = vec![1, 2, 2, 3];
    let mut t = hex("4a545044 03");
    for id in [2u64, 2, 3] {
        put_packet_header(0, 0, id, &mut t);
    }
    let (evs, err) = first_error(
        Expect::Get {
            requested: req.clone(),
        },
        &t,
    );
    assert_eq!(err, None);
    assert_eq!(evs.last(), Some(&Ev::ResponseEnd));
    let mut t = hex("4a545044 02");
    put_packet_header(0, 0, 3, &mut t);
    put_packet_header(0, 0, 1, &mut t);
    let (_, err) = first_error(Expect::Get { requested: req }, &t);
    assert_eq!(err, Some(ResponseError::NotASubsequence(1)));
    // An id asked once comes once at most (whole run, proto-jtp response part: the match
    // position `i + 1` as `i * 1` let the same packet come again).
    let mut t = hex("4a545044 02");
    put_packet_header(0, 0, 5, &mut t);
    put_packet_header(0, 0, 5, &mut t);
    let (_, err) = first_error(
        Expect::Get {
            requested: vec![5, 6],
        },
        &t,
    );
    assert_eq!(err, Some(ResponseError::NotASubsequence(5)));
}

#[test]
fn j44_server_error_anywhere_on_a_frame_boundary() {
    let e = hex("4a545045 05 0011 746f6f206d616e79207265717565737473");
    let want = Ev::ServerError(5, "too many requests".to_string());
    // Before any request.
    let mut d = ResponseDecoder::new(ResponseLimits::default());
    d.expect(Expect::Idle);
    assert_eq!(run(&mut d, &[&e]), (vec![want.clone()], None));
    assert!(d.is_idle());
    // Instead of the expected JTPD.
    let (evs, err) = first_error(Expect::Get { requested: vec![1] }, &e);
    assert_eq!((evs, err), (vec![want.clone()], None));
    // Between packets, with an unknown code and a non-UTF-8 message.
    let mut t = hex("4a545047 02 00 01 0000000000000001 ff");
    t.extend_from_slice(&hex("4a545045 63 0002 ff41"));
    let (evs, err) = first_error(Expect::ListAndGet, &t);
    assert_eq!(err, None);
    assert_eq!(
        evs.last(),
        Some(&Ev::ServerError(99, "\u{fffd}A".to_string()))
    );
    // During WATCH.
    let (evs, _) = first_error(Expect::Watch, &e);
    assert_eq!(evs, vec![want]);
}

#[test]
fn errors_per_variant() {
    let cases: &[(Expect, &str, ResponseError)] = &[
        (
            Expect::List,
            "4a545058 00",
            ResponseError::UnknownMagic(*b"JTPX"),
        ),
        (
            Expect::Batch,
            "4a545042 01 10 00 0000000000000001",
            ResponseError::ReservedPacketFlags(0x10),
        ),
        (
            Expect::Batch,
            "4a545042 01 80 00 0000000000000001",
            ResponseError::ReservedPacketFlags(0x80),
        ),
        (
            Expect::Batch,
            "4a545042 8000",
            ResponseError::MalformedVarint,
        ),
        (
            Expect::List,
            "4a545042 00",
            ResponseError::Unexpected("response of another request type"),
        ),
        (
            Expect::Idle,
            "4a54504c 00",
            ResponseError::Unexpected("response while nothing was requested"),
        ),
        (
            Expect::Batch,
            "4a545042 01 4a54504c 00",
            ResponseError::Unexpected("frame between packets"),
        ),
        (
            Expect::Get { requested: vec![1] },
            "00 01 0000000000000001",
            ResponseError::MaybeOlderServer,
        ),
        (
            Expect::Watch,
            "4a54504c 00",
            ResponseError::Unexpected("frame during watch"),
        ),
        // A watch event while no WATCH was sent (whole run, proto-jtp response part: without
        // its arm the error said only "frame").
        (
            Expect::Idle,
            "4a545057 0000000000000001 00 0001 61 05",
            ResponseError::Unexpected("frame between responses"),
        ),
    ];
    for (exp, bytes, want) in cases {
        let (_, err) = first_error(exp.clone(), &hex(bytes));
        assert_eq!(err, Some(*want), "{bytes}");
        assert!(want.to_string().starts_with("jtp response: "));
    }
    // No JTP frame outgrows the stash (the longest JTPW is exactly MAX_HEADER_FRAME); if
    // one did, it would be this error.
    let too_long = FieldTooLong {
        len: MAX_HEADER_FRAME + 1,
        max: MAX_HEADER_FRAME,
    };
    assert_eq!(
        ResponseError::from(too_long).to_string(),
        "jtp response: unexpected frame longer than any jtp frame"
    );
    // After an error the decoder stays failed, even without input.
    let mut d = ResponseDecoder::new(ResponseLimits::default());
    assert!(run(&mut d, &[&hex("00000000")]).1.is_some());
    assert!(!d.is_idle());
    assert!(d.decode(&[]).1.is_err());
    assert!(run(&mut d, &[&hex("4a545043")]).1.is_some());
    // After JTPE, bytes are an error but EOF is clean.
    let mut d = ResponseDecoder::new(ResponseLimits::default());
    let (evs, err) = run(&mut d, &[&error_frame(3, "server busy")]);
    assert_eq!(
        (evs, err),
        (vec![Ev::ServerError(3, "server busy".into())], None)
    );
    assert!(d.is_idle());
    assert_eq!(d.decode(&[]), (0, Ok(None)));
    assert!(d.decode(b"x").1.is_err());
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn all_expects() -> Vec<Expect> {
    vec![
        Expect::List,
        Expect::Get {
            requested: vec![ALPHA, BETA, 1],
        },
        Expect::Batch,
        Expect::ListAndGet,
        Expect::Watch,
        Expect::Idle,
    ]
}

/// Every response fixture of these tests with the expectations it is decoded under.
fn fixtures() -> Vec<(Vec<Expect>, Vec<u8>)> {
    let get = |ids: &[u64]| Expect::Get {
        requested: ids.to_vec(),
    };
    let mut all = vec![
        (vec![Expect::List, get(&[7, ALPHA, 9, BETA])], transcript()),
        (
            vec![Expect::Batch, Expect::ListAndGet, Expect::Watch],
            transcript2(),
        ),
    ];
    for (e, h) in [
        (Expect::List, "4a54504c ffffffff0f"),
        (Expect::List, "4a54504c 80ade204"),
        (Expect::Batch, "4a545042 81ade204"),
        (
            Expect::Batch,
            "4a545042 01 00 ffffffff0f 0000000000000001 aabb",
        ),
        (get(&[1]), "4a545044 02"),
        (
            get(&[1, 2, 2, 3]),
            "4a545044 02 00 00 0000000000000003 00 00 0000000000000001",
        ),
        (
            get(&[1]),
            "4a545045 05 0011 746f6f206d616e79207265717565737473",
        ),
        (
            Expect::ListAndGet,
            "4a545047 02 00 01 0000000000000001 ff 4a545045 63 0002 ff41",
        ),
        (Expect::List, "4a545058 00"),
        (Expect::Batch, "4a545042 01 10 00 0000000000000001"),
        (Expect::Batch, "4a545042 8000"),
        (Expect::List, "4a545042 00"),
        (Expect::Idle, "4a54504c 00"),
        (Expect::Batch, "4a545042 01 4a54504c 00"),
        (get(&[1]), "00 01 0000000000000001"),
        (Expect::Watch, "4a54504c 00"),
        (Expect::Idle, "4a545043 4a545043"),
    ] {
        all.push((vec![e], hex(h)));
    }
    all
}

#[test]
fn j42_every_truncation_of_every_fixture_is_a_prefix_within_bounds() {
    for (expects, f) in fixtures() {
        let decoder = || {
            let mut d = ResponseDecoder::new(ResponseLimits::default());
            for e in &expects {
                d.expect(e.clone());
            }
            d
        };
        let (full, full_err) = run(&mut decoder(), &[&f]);
        for cut in 0..=f.len() {
            let part = &f[..cut];
            let whole = run(&mut decoder(), &[part]);
            for size in [1, 3] {
                let pieces: Vec<&[u8]> = part.chunks(size).collect();
                assert_eq!(run(&mut decoder(), &pieces), whole, "{f:02x?} at {cut}");
            }
            // A truncation is "need more": the events so far (the last Data perhaps
            // shorter), and an error only where the whole input has it.
            let (evs, err) = whole;
            let n = evs.len();
            assert!(n <= full.len(), "{f:02x?} at {cut}");
            assert_eq!(evs[..n.saturating_sub(1)], full[..n.saturating_sub(1)]);
            if err.is_some() {
                assert_eq!((evs, err), (full.clone(), full_err), "{f:02x?} at {cut}");
            }
        }
    }
}

#[test]
fn never_panics_on_truncations_and_random_input() {
    let t = transcript();
    for cut in 0..=t.len() {
        for chunk in [1, 3, t.len().max(1)] {
            let pieces: Vec<&[u8]> = t[..cut].chunks(chunk).collect();
            let (_, err) = run(&mut transcript_decoder(), &pieces);
            assert_eq!(err, None);
        }
    }
    let mut rng = XorShift(0x2545f4914f6cdd1d);
    let magics = [
        MAGIC_LIST,
        MAGIC_GET,
        MAGIC_BATCH,
        MAGIC_LIST_AND_GET,
        MAGIC_CANCEL,
        MAGIC_WATCH,
        MAGIC_ERROR,
    ];
    let expects = all_expects();
    for i in 0..10_000 {
        let mut input = Vec::new();
        while input.len() < 48 {
            let r = rng.next();
            match r % 4 {
                0 => input.extend_from_slice(&magics[(r >> 8) as usize % magics.len()]),
                1 => input.push((r >> 8) as u8 & 0x0f),
                _ => input.push((r >> 8) as u8),
            }
        }
        let mut d = ResponseDecoder::new(ResponseLimits {
            max_list_entries: 50,
            max_packets: 50,
        });
        d.expect(expects[i % expects.len()].clone());
        d.expect(expects[(i / 6) % expects.len()].clone());
        let fresh = || {
            let mut f = ResponseDecoder::new(ResponseLimits {
                max_list_entries: 50,
                max_packets: 50,
            });
            f.expect(expects[i % expects.len()].clone());
            f.expect(expects[(i / 6) % expects.len()].clone());
            f
        };
        let whole = run(&mut fresh(), &[&input]);
        let chunk = 1 + (rng.next() % 17) as usize;
        let pieces: Vec<&[u8]> = input.chunks(chunk).collect();
        // Split anywhere, random input decodes alike, to the same error if any.
        assert_eq!(run(&mut d, &pieces), whole);
        let _ = d.is_idle();
    }
}
