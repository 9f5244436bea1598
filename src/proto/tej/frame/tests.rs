use super::vectors::{bytes, unhex, VECTORS};
use super::*;
use sha2::{Digest, Sha256};

/// An owned event; consecutive `FileData` are merged, `FrameEnd` records the input offset.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Start {
        status: u8,
        version: u8,
        files: u64,
    },
    File {
        index: u64,
        name: Vec<u8>,
        name_ok: bool,
        size: u64,
    },
    Data(Vec<u8>),
    FileEnd,
    Message(Vec<u8>),
    End {
        at: usize,
    },
    Err(FrameError),
}

/// Feeds `chunks` in order; stops at the first error. Checks the decode contract on the way:
/// never more consumed than offered, `Ok(None)` only once everything offered was taken.
fn feed<'c>(dec: &mut Decoder, chunks: impl IntoIterator<Item = &'c [u8]>) -> Vec<Ev> {
    let mut out = Vec::new();
    let mut total = 0;
    for chunk in chunks {
        let mut pos = 0;
        loop {
            assert_bounded(dec);
            let (n, r) = dec.decode(&chunk[pos..]);
            assert!(n <= chunk.len() - pos, "consumed more than offered");
            pos += n;
            total += n;
            let ev = match r {
                Ok(None) => {
                    assert_eq!(pos, chunk.len(), "need more bytes with input left");
                    break;
                }
                Err(e) => {
                    assert_eq!(n, 0);
                    out.push(Ev::Err(e));
                    return out;
                }
                Ok(Some(ev)) => ev,
            };
            match ev {
                Event::FrameStart {
                    status,
                    version,
                    files,
                } => out.push(Ev::Start {
                    status,
                    version,
                    files,
                }),
                Event::FileStart {
                    index,
                    name,
                    name_ok,
                    size,
                } => out.push(Ev::File {
                    index,
                    name: name.to_vec(),
                    name_ok,
                    size,
                }),
                Event::FileData(d) => {
                    assert!(!d.is_empty());
                    assert_eq!(d.as_ptr(), chunk[pos - n..].as_ptr(), "data is the input");
                    assert_eq!(d.len(), n);
                    if let Some(Ev::Data(prev)) = out.last_mut() {
                        prev.extend_from_slice(d);
                    } else {
                        out.push(Ev::Data(d.to_vec()));
                    }
                }
                Event::FileEnd => out.push(Ev::FileEnd),
                Event::Message(m) => out.push(Ev::Message(m.to_vec())),
                Event::FrameEnd => out.push(Ev::End { at: total }),
            }
        }
    }
    assert_bounded(dec);
    out
}

/// A split field is held within the decoder's limit (the longest entry header, or M and
/// the longest message), and its stash allocates no more.
fn assert_bounded(dec: &Decoder) {
    let max_message = usize::try_from(dec.limits.max_message).unwrap_or(usize::MAX);
    let limit = if dec.stream_messages {
        MAX_ENTRY_HEADER
    } else {
        MAX_ENTRY_HEADER.max(max_message.saturating_add(MESSAGE_LEN_LEN))
    };
    assert_eq!(dec.stash.max(), limit);
    assert!(dec.stash.held().len() <= limit && dec.stash.capacity() <= limit);
}

fn whole(input: &[u8], limits: Limits) -> Vec<Ev> {
    feed(&mut Decoder::new(limits), [input])
}

/// Whole, byte by byte and split at every offset must agree; returns the common result.
fn all_splits(input: &[u8], limits: Limits) -> Vec<Ev> {
    let reference = whole(input, limits);
    let bytewise = feed(&mut Decoder::new(limits), input.chunks(1));
    assert_eq!(bytewise, reference, "byte by byte");
    for k in 0..=input.len() {
        let (a, b) = input.split_at(k);
        let split = feed(&mut Decoder::new(limits), [a, b]);
        assert_eq!(split, reference, "split at {k}");
    }
    reference
}

fn sha_hex(d: &[u8]) -> String {
    Sha256::digest(d)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn header(status: u8, n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_frame_header(status, n, &mut out);
    out
}

#[test]
fn t2_every_vector_decodes_alike_split_anywhere_and_matches_the_manifest() {
    for v in VECTORS.iter().filter(|v| !v.frames.is_empty()) {
        let input = bytes(v.name);
        let evs = all_splits(&input, Limits::default());
        let mut it = evs.into_iter();
        let mut offset = 0;
        for (fi, f) in v.frames.iter().enumerate() {
            let ctx = format!("{} frame {fi}", v.name);
            assert_eq!(f.offset, offset, "{ctx}");
            assert_eq!(
                it.next(),
                Some(Ev::Start {
                    status: f.status,
                    version: f.version,
                    files: f.files.len() as u64
                }),
                "{ctx}"
            );
            for (i, file) in f.files.iter().enumerate() {
                let name_ok = !file.name.is_empty();
                let start = Ev::File {
                    index: i as u64,
                    name: file.name.to_vec(),
                    name_ok,
                    size: file.size,
                };
                assert_eq!(it.next(), Some(start), "{ctx}");
                let mut data = Vec::new();
                let mut next = it.next();
                if let Some(Ev::Data(d)) = next {
                    data = d;
                    next = it.next();
                }
                assert_eq!(next, Some(Ev::FileEnd), "{ctx}");
                assert_eq!(data.len() as u64, file.size, "{ctx}");
                assert_eq!(sha_hex(&data), file.sha256, "{ctx}");
            }
            assert_eq!(it.next(), Some(Ev::Message(f.message.to_vec())), "{ctx}");
            offset += f.length;
            assert_eq!(it.next(), Some(Ev::End { at: offset }), "{ctx}");
        }
        assert_eq!(it.next(), None, "{}", v.name);
        assert_eq!(offset, input.len(), "{}", v.name);
    }
}

#[test]
fn t3_frames_ferry_writes_have_top_bit_version_1_and_byte_lengths() {
    for s in 0..=MAX_STATUS {
        let f = frame(s, &[], b"");
        assert_eq!(f[0], 0x80 | s);
        assert_eq!(f[1], VERSION);
        assert_eq!(f.len(), 18);
    }
    // A non-ASCII name goes out with its UTF-8 byte length (tej-protoc counts code points).
    let f = frame(0, &[("é.txt", b"XY")], b"m");
    assert_eq!(
        f,
        b"\x80\x01\0\0\0\0\0\0\0\x01\0\x06\xc3\xa9.txt\0\0\0\0\0\0\0\x02XY\0\0\0\0\0\0\0\x01m"
    );
    let evs = all_splits(&f, Limits::default());
    assert_eq!(
        evs[1],
        Ev::File {
            index: 0,
            name: "é.txt".as_bytes().to_vec(),
            name_ok: true,
            size: 2
        }
    );
    // The streaming pieces give the same bytes as `frame`.
    let mut out = Vec::new();
    put_frame_header(0, 1, &mut out);
    put_file_header("é.txt", 2, &mut out);
    out.extend_from_slice(b"XY");
    put_message(b"m", &mut out);
    assert_eq!(out, f);
}

#[test]
#[should_panic(expected = "over 127")]
fn t3_status_over_127_is_a_caller_bug() {
    header(128, 0);
}

#[test]
#[should_panic(expected = "65,535")]
fn t3_name_over_65535_bytes_is_a_caller_bug() {
    put_file_header(&"a".repeat(65_536), 0, &mut Vec::new());
}

#[test]
fn t4_status_byte_without_top_bit_is_bad_frame_before_anything_else() {
    let mut bad = bytes("empty");
    bad[0] = 0x00;
    assert_eq!(
        whole(&bad, Limits::default()),
        [Ev::Err(FrameError::BadFrame(0x00))]
    );
    // Reported on the very first byte, even with N and the rest missing.
    let mut dec = Decoder::new(Limits::default());
    assert_eq!(dec.decode(&[0x7f]), (0, Err(FrameError::BadFrame(0x7f))));
    // And every later call repeats it.
    assert_eq!(
        dec.decode(&bytes("empty")),
        (0, Err(FrameError::BadFrame(0x7f)))
    );
    assert!(!dec.in_frame());
    assert_eq!(FrameError::BadFrame(0).code(), "bad-frame");
    // After a good frame, on the next frame's first byte.
    let mut input = bytes("file_only");
    input.extend_from_slice(&[0x05, 0x01]);
    let evs = all_splits(&input, Limits::default());
    assert_eq!(evs.last(), Some(&Ev::Err(FrameError::BadFrame(0x05))));
    assert_eq!(evs[evs.len() - 2], Ev::End { at: 37 });
}

#[test]
fn t5_any_version_is_accepted_and_reported_unless_strict() {
    let v0 = bytes("status_127_version_0");
    assert_eq!(
        all_splits(&v0, Limits::default()),
        [
            Ev::Start {
                status: 127,
                version: 0,
                files: 0
            },
            Ev::Message(b"x".to_vec()),
            Ev::End { at: 19 },
        ]
    );
    let mut v2 = Vec::new();
    put_frame_header_with_version(3, 2, 0, &mut v2);
    put_message(b"", &mut v2);
    assert_eq!(
        whole(&v2, Limits::default())[0],
        Ev::Start {
            status: 3,
            version: 2,
            files: 0
        }
    );
    let strict = Limits {
        strict_version: true,
        ..Limits::default()
    };
    assert_eq!(
        all_splits(&v0, strict),
        [Ev::Err(FrameError::BadVersion(0))]
    );
    assert_eq!(
        all_splits(&v2, strict),
        [Ev::Err(FrameError::BadVersion(2))]
    );
    assert_eq!(FrameError::BadVersion(2).code(), "bad-frame");
    assert_eq!(all_splits(&bytes("empty"), strict).len(), 3);
}

#[test]
fn t6_concat_file_ping_message_is_exactly_three_frames() {
    let input = bytes("concat_file_ping_message");
    let evs = all_splits(&input, Limits::default());
    let ends: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Ev::End { at } => Some(*at),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [37, 55, 78]);
    let starts: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Ev::Start { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [status::DELIVER, status::PING, status::DELIVER]);
    assert_eq!(evs[evs.len() - 2], Ev::Message(b"hello".to_vec()));
}

#[test]
fn t13_buggy_nonascii_name_is_too_large_at_the_garbage_length() {
    let input = bytes("BUGGY_nonascii_name");
    let err = FrameError::FileTooLarge {
        index: 0,
        size: 0x7400_0000_0000_0000,
        max: 64 << 30,
    };
    assert_eq!(
        all_splits(&input, Limits::default()),
        [
            Ev::Start {
                status: 0,
                version: 1,
                files: 1
            },
            Ev::Err(err)
        ]
    );
    // Reported as soon as the 26 bytes through F are in, without the 10 that follow.
    assert_eq!(whole(&input[..26], Limits::default())[1], Ev::Err(err));
    assert_eq!(err.code(), "too-large");
    // The wording of vectors/tej/ferry_error_too_large.
    assert_eq!(
        err.detail(),
        "file 1: length 8358680908399640576 exceeds max_file_size 68719476736"
    );
}

#[test]
fn t19_one_tib_claim_is_refused_right_after_the_size_field() {
    let mut input = header(0, 1);
    put_file_header("big.bin", 1 << 40, &mut input);
    let err = FrameError::FileTooLarge {
        index: 0,
        size: 1 << 40,
        max: 64 << 30,
    };
    let mut dec = Decoder::new(Limits::default());
    let evs = feed(&mut dec, input.chunks(1));
    assert_eq!(evs.last(), Some(&Ev::Err(err)));
    // Nothing proportional to the claim was allocated.
    assert!(dec.stash.capacity() < 1024, "{}", dec.stash.capacity());
    // The second file of a frame is refused the same way, with its index.
    let mut input = header(0, 2);
    put_file_header("a", 1, &mut input);
    input.push(b'x');
    put_file_header("b", u64::MAX, &mut input);
    let evs = all_splits(&input, Limits::default());
    assert_eq!(
        evs.last(),
        Some(&Ev::Err(FrameError::FileTooLarge {
            index: 1,
            size: u64::MAX,
            max: 64 << 30
        }))
    );
    // Exactly at the limit is fine.
    let mut ok = header(0, 1);
    put_file_header("a", 64 << 30, &mut ok);
    assert!(matches!(
        whole(&ok, Limits::default())[1],
        Ev::File { size, .. } if size == 64 << 30
    ));
}

#[test]
fn t20_too_many_files_right_after_the_header() {
    for n in [10_001, u64::MAX] {
        // Only the header is given: the check cannot wait for any entry.
        assert_eq!(
            all_splits(&header(0, n), Limits::default()),
            [Ev::Err(FrameError::TooManyFiles(n))]
        );
    }
    assert_eq!(
        whole(&header(0, 10_000), Limits::default()),
        [Ev::Start {
            status: 0,
            version: 1,
            files: 10_000
        }]
    );
    assert_eq!(FrameError::TooManyFiles(1).code(), "too-many-files");
}

#[test]
fn t20_message_over_max_before_any_message_byte() {
    let max = 16u64 << 20;
    for m in [max + 1, u64::MAX] {
        let mut input = header(0, 0);
        input.extend_from_slice(&m.to_be_bytes());
        let evs = all_splits(&input, Limits::default());
        assert_eq!(
            evs,
            [
                Ev::Start {
                    status: 0,
                    version: 1,
                    files: 0
                },
                Ev::Err(FrameError::MessageTooLarge { size: m, max })
            ]
        );
    }
    // At the limit it waits for the bytes.
    let mut input = header(0, 0);
    input.extend_from_slice(&max.to_be_bytes());
    let mut dec = Decoder::new(Limits::default());
    assert_eq!(feed(&mut dec, [&input[..]]).len(), 1);
    assert!(dec.in_frame());
    assert_eq!(dec.min_bytes_to_frame_end(), Some(max));
    assert_eq!(
        FrameError::MessageTooLarge { size: 1, max: 0 }.code(),
        "too-large"
    );
    // A message split across reads is reassembled whole.
    let msg = vec![7u8; 100_000];
    let f = frame(9, &[], &msg);
    let evs = feed(&mut Decoder::new(Limits::default()), f.chunks(4096));
    assert_eq!(evs[1], Ev::Message(msg));
}

#[test]
fn t22_bad_names_are_flagged_and_their_data_still_delivered() {
    let bad: &[&[u8]] = &[
        b"\xff\xfe",
        b"",
        b"../../x",
        b"/x",
        b"a/b",
        b"..\\x",
        b"a\0b",
        b".FERRY",
        b".ferry",
        b".",
        b"..",
        b"a\xc2\x85b",
        b"a\x1fb",
        b"a\x7fb",
        &[b'a'; 256],
        &[b'a'; 65_535],
    ];
    for name in bad {
        let mut input = header(0, 2);
        input.extend_from_slice(&(name.len() as u16).to_be_bytes());
        input.extend_from_slice(name);
        input.extend_from_slice(&3u64.to_be_bytes());
        input.extend_from_slice(b"bad");
        put_file_header("ok.txt", 2, &mut input);
        input.extend_from_slice(b"ok");
        put_message(b"", &mut input);
        let evs = if name.len() > 300 {
            // Split anywhere is quadratic; whole and byte by byte suffice for the long one.
            let evs = whole(&input, Limits::default());
            let bytewise = feed(&mut Decoder::new(Limits::default()), input.chunks(1));
            assert_eq!(evs, bytewise);
            evs
        } else {
            all_splits(&input, Limits::default())
        };
        let ctx = format!("{name:02x?}");
        assert_eq!(
            evs[1],
            Ev::File {
                index: 0,
                name: name.to_vec(),
                name_ok: false,
                size: 3
            },
            "{ctx}"
        );
        assert_eq!(evs[2], Ev::Data(b"bad".to_vec()), "{ctx}");
        assert_eq!(
            evs[4],
            Ev::File {
                index: 1,
                name: b"ok.txt".to_vec(),
                name_ok: true,
                size: 2
            },
            "{ctx}"
        );
        assert_eq!(evs[5], Ev::Data(b"ok".to_vec()), "{ctx}");
        assert!(matches!(evs.last(), Some(Ev::End { .. })), "{ctx}");
    }
    for good in [
        "a.txt",
        " a.txt ",
        ".profile",
        "é.txt",
        "x".repeat(255).as_str(),
    ] {
        let f = frame(0, &[(good, b"")], b"");
        assert!(
            matches!(
                whole(&f, Limits::default())[1],
                Ev::File { name_ok: true, .. }
            ),
            "{good}"
        );
    }
    // max_name is configurable.
    let f = frame(0, &[("abcd", b"")], b"");
    let short = Limits {
        max_name: 3,
        ..Limits::default()
    };
    assert!(matches!(
        whole(&f, short)[1],
        Ev::File { name_ok: false, .. }
    ));
}

#[test]
fn empty_files_and_frames_do_not_swallow_what_follows() {
    // The upstream Rust crate loses bytes after a zero-length field (tej.md 2.2).
    let mut input = frame(0, &[("", b""), ("e", b"")], b"");
    input.extend_from_slice(&bytes("ping"));
    input.extend_from_slice(&frame(7, &[("z", b"Z")], b""));
    let evs = all_splits(&input, Limits::default());
    let frames = evs.iter().filter(|e| matches!(e, Ev::End { .. })).count();
    assert_eq!(frames, 3);
    assert!(evs.contains(&Ev::Data(b"Z".to_vec())));
}

#[test]
fn between_frames_and_min_bytes_track_the_position() {
    for v in VECTORS.iter().filter(|v| !v.frames.is_empty()) {
        let input = bytes(v.name);
        let boundaries: Vec<usize> = v.frames.iter().map(|f| f.offset).collect();
        let frame_end = |pos: usize| {
            v.frames
                .iter()
                .map(|f| f.offset + f.length)
                .find(|&e| e >= pos)
                .unwrap()
        };
        let mut dec = Decoder::new(Limits::default());
        assert!(dec.is_between_frames());
        assert_eq!(dec.min_bytes_to_frame_end(), None);
        let mut pos = 0;
        while pos < input.len() {
            let (n, r) = dec.decode(&input[pos..pos + 1]);
            assert!(r.is_ok());
            pos += n;
            let at_boundary = boundaries.contains(&pos) || pos == input.len();
            if dec.is_between_frames() {
                assert!(at_boundary, "{} at {pos}", v.name);
                assert!(!dec.in_frame());
            } else {
                assert!(dec.in_frame());
                let min = dec.min_bytes_to_frame_end().unwrap();
                assert!(
                    min <= (frame_end(pos) - pos) as u64,
                    "{} at {pos}: {min}",
                    v.name
                );
            }
        }
        // Drain FileEnd/FrameEnd due at the very end.
        while let (0, Ok(Some(_))) = dec.decode(&[]) {}
        assert!(dec.is_between_frames(), "{}", v.name);
    }
}

#[test]
fn t2_every_vector_split_at_every_pair_of_offsets() {
    for v in VECTORS.iter() {
        let input = bytes(v.name);
        let reference = whole(&input, Limits::default());
        // Every pair for the short vectors; a stride keeps the long ones quick.
        let step = if input.len() <= 80 { 1 } else { 3 };
        for a in (0..=input.len()).step_by(step) {
            for b in (a..=input.len()).step_by(step) {
                let pieces = [&input[..a], &input[a..b], &input[b..]];
                let evs = feed(&mut Decoder::new(Limits::default()), pieces);
                assert_eq!(evs, reference, "{} cut at {a} and {b}", v.name);
            }
        }
    }
}

/// The folder of tej.md 1.6's byte vectors, beside this repository.
fn vectors_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/specs/vectors/tej")
}

fn read_text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the TEJ vectors of tej.md 1.6 must be in ../shared/specs/vectors/tej/)",
            path.display()
        )
    })
}

/// Checks one vector's events against its manifest entry and returns the bytes ferry's
/// encoders make from what was decoded.
fn check_and_reencode(name: &str, frames: &[serde_json::Value], evs: &[Ev]) -> Vec<u8> {
    let mut it = evs.iter();
    let mut out = Vec::new();
    for (fi, f) in frames.iter().enumerate() {
        let ctx = format!("{name} frame {fi}");
        let num = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{ctx}: no {k}"));
        let files = f["files"]
            .as_array()
            .unwrap_or_else(|| panic!("{ctx}: no files"));
        let (status, version) = (num("custom_status") as u8, num("protocol_version") as u8);
        let start = Ev::Start {
            status,
            version,
            files: files.len() as u64,
        };
        assert_eq!(it.next(), Some(&start), "{ctx}");
        put_frame_header_with_version(status, version, files.len() as u64, &mut out);
        for (i, file) in files.iter().enumerate() {
            // `name_hex` where the manifest gives it (names need not be UTF-8), else `name`.
            let text = file["name"].as_str().map(str::as_bytes);
            let raw = match file["name_hex"].as_str() {
                Some(h) => unhex(h),
                None => text
                    .unwrap_or_else(|| panic!("{ctx}: file {i} has no name"))
                    .to_vec(),
            };
            if let Some(t) = text {
                assert_eq!(t, raw, "{ctx}: name and name_hex agree");
            }
            let size = file["size"].as_u64().unwrap();
            match it.next() {
                Some(Ev::File {
                    index,
                    name,
                    size: got,
                    ..
                }) => assert_eq!((*index, name, *got), (i as u64, &raw, size), "{ctx}"),
                other => panic!("{ctx}: file {i}: {other:?}"),
            }
            let mut data: &[u8] = &[];
            let mut next = it.next();
            if let Some(Ev::Data(d)) = next {
                data = d;
                next = it.next();
            }
            assert_eq!(next, Some(&Ev::FileEnd), "{ctx}");
            assert_eq!(data.len() as u64, size, "{ctx}");
            assert_eq!(sha_hex(data), file["sha256"].as_str().unwrap(), "{ctx}");
            let name = std::str::from_utf8(&raw).expect("vector names other than BUGGY are UTF-8");
            put_file_header(name, size, &mut out);
            out.extend_from_slice(data);
        }
        let message = f["message"].as_str().unwrap().as_bytes();
        assert_eq!(message.len() as u64, num("message_len"), "{ctx}");
        assert_eq!(it.next(), Some(&Ev::Message(message.to_vec())), "{ctx}");
        put_message(message, &mut out);
        let end = (num("offset") + num("length")) as usize;
        assert_eq!(it.next(), Some(&Ev::End { at: end }), "{ctx}");
        assert_eq!(out.len(), end, "{ctx}");
    }
    assert_eq!(it.next(), None, "{name}");
    out
}

#[test]
fn t1_t2_t13_vectors_folder_decodes_and_reencodes_exactly() {
    let dir = vectors_dir();
    assert!(
        dir.is_dir(),
        "{}: missing; the TEJ vectors of tej.md 1.6 must be there",
        dir.display()
    );
    let mut seen = Vec::new();
    for manifest in ["manifest.json", "ferry_manifest.json"] {
        let text = read_text(&dir.join(manifest));
        let m: serde_json::Value = serde_json::from_str(&text).expect(manifest);
        for (name, v) in m.as_object().expect(manifest) {
            let hex = v["hex"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no hex"));
            let input = unhex(hex);
            assert_eq!(Some(input.len() as u64), v["len"].as_u64(), "{name}");
            // The .hex file holds the same bytes, spaced; the copy embedded for the other
            // tests has not drifted from the folder.
            let spaced = read_text(&dir.join(format!("{name}.hex")));
            assert_eq!(spaced.split_whitespace().collect::<String>(), hex, "{name}");
            assert_eq!(super::vectors::get(name).hex, hex, "{name}");
            let evs = all_splits(&input, Limits::default());
            match &v["parsed"] {
                serde_json::Value::Array(frames) => {
                    // T1: ferry's encoders give back every byte.
                    let again = check_and_reencode(name, frames, &evs);
                    assert_eq!(again, input, "{name} re-encoded");
                }
                serde_json::Value::String(why) => {
                    // T13: BUGGY_nonascii_name's length field is the garbage the reference
                    // reads; ferry refuses that length as too large, storing nothing.
                    let need: u64 = why
                        .split("need ")
                        .nth(1)
                        .and_then(|r| r.split(' ').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("{name}: {why}"));
                    let err = FrameError::FileTooLarge {
                        index: 0,
                        size: need,
                        max: Limits::default().max_file_size,
                    };
                    assert_eq!(evs.last(), Some(&Ev::Err(err)), "{name}");
                    assert!(!evs.iter().any(|e| matches!(e, Ev::Data(_))), "{name}");
                }
                other => panic!("{name}: parsed is {other}"),
            }
            seen.push(name.clone());
        }
    }
    let mut hex_files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".hex").map(str::to_owned)
        })
        .collect();
    hex_files.sort();
    seen.sort();
    assert_eq!(hex_files, seen, "every .hex file is in a manifest");
    let mut embedded: Vec<&str> = VECTORS.iter().map(|v| v.name).collect();
    embedded.sort_unstable();
    assert_eq!(embedded, seen, "the embedded copy holds every vector");
}

#[test]
fn t19_t20_every_truncation_of_every_fixture_stays_bounded() {
    let mut fixtures: Vec<(Vec<u8>, Limits)> = Vec::new();
    let small = Limits {
        max_files: 3,
        max_name: 4,
        max_file_size: 40,
        max_message: 30,
        strict_version: true,
    };
    // A 1 TiB claim, too many files, a message over the maximum, a status without the top
    // bit, a version other than 1 in strict mode, a bad name, and good frames under small
    // limits.
    let mut big = header(0, 1);
    put_file_header("big.bin", 1 << 40, &mut big);
    big.extend_from_slice(b"xyz");
    fixtures.push((big, Limits::default()));
    fixtures.push((header(0, 10_001), Limits::default()));
    let mut msg = header(0, 0);
    msg.extend_from_slice(&31u64.to_be_bytes());
    msg.extend_from_slice(&[b'm'; 31]);
    fixtures.push((msg, small));
    fixtures.push((b"\x05\x01\0\0".to_vec(), Limits::default()));
    fixtures.push((bytes("status_127_version_0"), small));
    let mut bad_name = header(0, 1);
    put_file_header("../x", 2, &mut bad_name);
    bad_name.extend_from_slice(b"ok");
    put_message(b"", &mut bad_name);
    fixtures.push((bad_name, small));
    let mut ok = frame(9, &[("a", b"0123456789"), ("bc", b"")], &[b'j'; 30]);
    ok.extend_from_slice(&frame(2, &[], b""));
    fixtures.push((ok, small));
    for (f, limits) in fixtures {
        let full = whole(&f, limits);
        for cut in 0..=f.len() {
            let part = &f[..cut];
            let evs = whole(part, limits);
            for size in [1, 3] {
                let pieces = feed(&mut Decoder::new(limits), part.chunks(size));
                assert_eq!(pieces, evs, "{f:02x?} cut at {cut} in pieces of {size}");
            }
            // Only ever "need more": the events so far (the last data perhaps shorter),
            // and an error exactly where the whole input has it.
            let n = evs.len().saturating_sub(1);
            assert_eq!(evs[..n], full[..n], "{f:02x?} cut at {cut}");
            if let Some(Ev::Err(_)) = evs.last() {
                assert_eq!(evs, full, "{f:02x?} cut at {cut}");
            }
        }
    }
}

#[test]
fn no_panic_on_any_truncation() {
    for v in VECTORS {
        let input = bytes(v.name);
        for cut in 0..=input.len() {
            let part = &input[..cut];
            let a = whole(part, Limits::default());
            let b = feed(&mut Decoder::new(Limits::default()), part.chunks(1));
            assert_eq!(a, b, "{} cut at {cut}", v.name);
            let mut dec = Decoder::new(Limits::default());
            feed(&mut dec, [part]);
            let clean = cut == 0 || v.frames.iter().any(|f| f.offset + f.length == cut);
            if !v.frames.is_empty() {
                assert_eq!(dec.is_between_frames(), clean, "{} cut at {cut}", v.name);
            }
        }
    }
}

#[test]
fn no_panic_on_seeded_random_input() {
    // xorshift64*: deterministic, no extra crate.
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let small = Limits {
        max_files: 3,
        max_name: 4,
        max_file_size: 40,
        max_message: 30,
        strict_version: false,
    };
    let (mut frames, mut files, mut errors) = (0, 0, 0);
    for i in 0..10_000 {
        // Back-to-back random frames, then some bytes overwritten with random values: valid
        // structure with damage, so every state and every error is reached.
        let mut input = Vec::new();
        for _ in 0..next() % 3 + 1 {
            let nfiles = (next() % 4) as usize;
            let names: Vec<String> = (0..nfiles)
                .map(|_| "n".repeat((next() % 6) as usize))
                .collect();
            let datas: Vec<Vec<u8>> = (0..nfiles)
                .map(|_| vec![next() as u8; (next() % 50) as usize])
                .collect();
            let files: Vec<(&str, &[u8])> = names
                .iter()
                .zip(&datas)
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .collect();
            let msg = vec![b'm'; (next() % 40) as usize];
            input.extend_from_slice(&frame((next() % 128) as u8, &files, &msg));
        }
        if i % 3 != 0 {
            for _ in 0..next() % 3 + 1 {
                let at = (next() as usize) % input.len();
                input[at] = next() as u8;
            }
        }
        if i % 5 == 0 {
            input.truncate((next() as usize) % (input.len() + 1));
        }
        if i % 10 == 0 {
            input = (0..next() % 64).map(|_| next() as u8).collect();
        }
        let limits = if i % 2 == 0 { small } else { Limits::default() };
        let reference = whole(&input, limits);
        for ev in &reference {
            match ev {
                Ev::End { .. } => frames += 1,
                Ev::Data(_) => files += 1,
                Ev::Err(_) => errors += 1,
                _ => {}
            }
        }
        let cut = if input.is_empty() {
            0
        } else {
            (next() as usize) % input.len()
        };
        let (a, b) = input.split_at(cut);
        assert_eq!(feed(&mut Decoder::new(limits), [a, b]), reference, "{i}");
        assert_eq!(
            feed(&mut Decoder::new(limits), input.chunks(1)),
            reference,
            "{i}"
        );
    }
    // The inputs reach every part of the decoder, not just the status check.
    assert!(
        frames > 500 && files > 500 && errors > 500,
        "{frames} {files} {errors}"
    );
}

#[test]
fn display_is_lowercase_with_topic() {
    assert_eq!(
        FrameError::BadFrame(0x05).to_string(),
        "tej frame: status byte 0x05 lacks the top bit"
    );
    assert_eq!(
        FrameError::TooManyFiles(10_001).to_string(),
        "tej frame: 10001 files exceed max_files"
    );
    assert_eq!(
        FrameError::MessageTooLarge { size: 9, max: 8 }.to_string(),
        "tej frame: message length 9 exceeds max_message 8"
    );
}

#[test]
fn t20_a_field_too_long_for_the_stash_is_a_message_too_large() {
    // Only M and the message can outgrow an entry header; the stash's refusal names the
    // message length and the room it had for one.
    let e = FrameError::from(FieldTooLong {
        len: 8 + 40,
        max: 8 + 30,
    });
    assert_eq!(e, FrameError::MessageTooLarge { size: 40, max: 30 });
    assert_eq!(e.code(), "too-large");
    // With the default limits the stash is sized for M and a 16 MiB message.
    assert_eq!(Decoder::new(Limits::default()).stash.max(), 8 + (16 << 20));
}

/// Streamed messages: consecutive `Message` pieces merged, so the events compare with those
/// of a decoder that holds the message whole.
fn merged(evs: Vec<Ev>) -> Vec<Ev> {
    let mut out: Vec<Ev> = Vec::new();
    for ev in evs {
        match (out.last_mut(), ev) {
            (Some(Ev::Message(prev)), Ev::Message(m)) => prev.extend_from_slice(&m),
            (_, ev) => out.push(ev),
        }
    }
    out
}

/// The longest entry header (L, a 65,535-byte name, F) split byte by byte is gathered whole
/// even when messages are limited to a few bytes, so that the entry bound alone sizes the
/// stash (whole run, proto-tej frame part: MAX_ENTRY_HEADER's `+ 8` as `- 8` stayed green, the
/// 16 MiB message bound hiding it).
#[test]
fn the_longest_entry_header_fits_the_stash_whatever_the_message_limit() {
    let limits = Limits {
        max_message: 4,
        ..Limits::default()
    };
    let name = vec![b'n'; 65_535];
    let mut input = header(0, 1);
    input.extend_from_slice(&(name.len() as u16).to_be_bytes());
    input.extend_from_slice(&name);
    input.extend_from_slice(&2u64.to_be_bytes());
    input.extend_from_slice(b"ok");
    put_message(b"hi", &mut input);
    let evs = feed(&mut Decoder::new(limits), input.chunks(1));
    assert_eq!(evs, whole(&input, limits));
    assert_eq!(
        evs[1],
        Ev::File {
            index: 0,
            name,
            name_ok: false,
            size: 2
        }
    );
    // The decoder says which limits it checks, and whether it streams messages (the whole
    // run's `limits` as a default and `streams_messages` as `true` stayed green).
    let d = Decoder::new(limits);
    assert_eq!(d.limits().max_message, 4);
    assert!(!d.streams_messages());
}

#[test]
fn t2_streamed_messages_give_the_same_frames_split_anywhere_and_hold_nothing() {
    let limits = Limits::default();
    for v in VECTORS.iter().filter(|v| !v.frames.is_empty()) {
        let input = bytes(v.name);
        let reference = whole(&input, limits);
        let mut streamed = Decoder::with_streamed_messages(limits);
        assert!(streamed.streams_messages());
        assert_eq!(
            merged(feed(&mut streamed, [&input[..]])),
            reference,
            "{}",
            v.name
        );
        let bytewise = feed(
            &mut Decoder::with_streamed_messages(limits),
            input.chunks(1),
        );
        // Byte by byte, every message byte is its own piece, never an empty one.
        let pieces = bytewise
            .iter()
            .filter(|e| matches!(e, Ev::Message(m) if m.len() == 1))
            .count();
        let message_bytes: usize = v.frames.iter().map(|f| f.message.len()).sum();
        assert_eq!(pieces, message_bytes, "{}", v.name);
        assert_eq!(merged(bytewise), reference, "{} byte by byte", v.name);
        for k in 0..=input.len() {
            let (a, b) = input.split_at(k);
            let mut d = Decoder::with_streamed_messages(limits);
            assert_eq!(merged(feed(&mut d, [a, b])), reference, "{} at {k}", v.name);
            assert!(d.stash.capacity().max(d.stash.held().len()) <= MAX_ENTRY_HEADER);
        }
    }
}

#[test]
fn t20_streamed_message_length_is_still_checked_before_any_byte() {
    let limits = Limits {
        max_message: 4,
        ..Limits::default()
    };
    let mut f = header(0, 0);
    f.extend_from_slice(&5u64.to_be_bytes());
    f.extend_from_slice(b"abcde");
    let evs = feed(&mut Decoder::with_streamed_messages(limits), f.chunks(3));
    assert_eq!(
        evs.last(),
        Some(&Ev::Err(FrameError::MessageTooLarge { size: 5, max: 4 }))
    );
    // A message of exactly the limit, in pieces as the input came, and the stall-rule
    // bound counts the message bytes still to come.
    let mut ok = header(0, 0);
    put_message(b"abcd", &mut ok);
    let mut d = Decoder::with_streamed_messages(limits);
    let (n, r) = d.decode(&ok[..20]);
    assert_eq!(
        (n, r),
        (
            10,
            Ok(Some(Event::FrameStart {
                status: 0,
                version: 1,
                files: 0
            }))
        )
    );
    let (n, r) = d.decode(&ok[10..20]);
    assert_eq!((n, r), (10, Ok(Some(Event::Message(b"ab")))));
    assert_eq!(d.min_bytes_to_frame_end(), Some(2));
    let (n, r) = d.decode(&ok[20..]);
    assert_eq!((n, r), (2, Ok(Some(Event::Message(b"cd")))));
    assert_eq!(d.decode(&[]), (0, Ok(Some(Event::FrameEnd))));
    assert!(d.is_between_frames());
}
