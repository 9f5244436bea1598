//! TEJ target: the frame decoder over back-to-back frames, and ferry's JSON messages carried in
//! each frame's message.

use super::alloc::Meter;
use super::{check_prefix, check_split, cuts, prefixes, Log, Script, Spin};
use crate::proto::tej::frame::{
    put_file_header, put_frame_header_with_version, put_message, Decoder, Event, Limits,
    MAX_ENTRY_HEADER,
};
use crate::proto::tej::messages::{
    check_ack, Ack, AckVerdict, ErrorMsg, GetRequest, ListRequest, Listing, Manifest,
};

/// `seed | limits (2 bytes, 0 0 for the defaults) | frames`.
pub fn tej_frame(data: &[u8]) {
    let mut s = Script::new(data);
    let seed = s.u8();
    let limits = match (s.u8(), s.u8()) {
        (0, 0) => Limits::default(),
        (a, b) => Limits {
            max_files: u64::from(a % 8),
            max_name: usize::from(a / 8),
            max_file_size: u64::from(b) * 16,
            max_message: u64::from(b) * 4,
            strict_version: a & 1 == 1,
        },
    };
    let input = s.rest();
    let (whole, frames, consumed) = decode(limits, input, &[input.len()], true);
    check_split(
        "tej frame",
        &whole,
        &decode(limits, input, &cuts(seed, input.len()), false).0,
    );
    for at in prefixes(seed, input.len()) {
        check_prefix(
            "tej frame",
            at,
            &decode(limits, &input[..at], &[at], false).0,
            &whole,
        );
    }
    if let Some(bytes) = encode(&frames) {
        assert!(
            input[..consumed].starts_with(&bytes),
            "events re-encode to other bytes"
        );
        let mut log = whole;
        if log.has_error() {
            log.items.pop();
        }
        assert_eq!(
            decode(limits, &bytes, &[bytes.len()], false).0,
            log,
            "events re-encoded"
        );
    }
}

/// An event, owned.
enum Tej {
    Start(u8, u8, u64),
    File(Vec<u8>, u64),
    Data(Vec<u8>),
    Message(Vec<u8>),
}

/// The log, the events and the bytes consumed.
/// Decodes `input` fed up to each of `ends`; `parse`: each message through every parser.
fn decode(limits: Limits, input: &[u8], ends: &[usize], parse: bool) -> (Log, Vec<Tej>, usize) {
    let mut d = Decoder::new(limits);
    let (mut log, mut out, mut meter, mut spin) =
        (Log::default(), vec![], Meter::default(), Spin::default());
    let (mut pos, mut file_left, mut files_left) = (0, 0u64, 0u64);
    // (position, fewest bytes to the frame's end) after each call inside the current frame.
    let mut promises: Vec<(usize, u64)> = Vec::new();
    'feed: for &end in ends {
        loop {
            meter.enter();
            let (n, r) = d.decode(&input[pos..end]);
            meter.leave();
            assert!(n <= end - pos, "consumed past the input");
            let at = pos;
            pos += n;
            let ev = match r {
                Ok(None) => {
                    assert_eq!(pos, end, "need more, with bytes left");
                    break;
                }
                Ok(Some(ev)) => {
                    // Only events count: "need more" ends the loop.
                    spin.step("tej frame", n);
                    ev
                }
                Err(e) => {
                    assert_eq!(n, 0, "an error consumed bytes");
                    log.error(e);
                    break 'feed;
                }
            };
            match ev {
                Event::FrameStart {
                    status,
                    version,
                    files,
                } => {
                    assert!(
                        status <= 127 && files <= limits.max_files,
                        "header over the limits"
                    );
                    assert!(!limits.strict_version || version == 1, "version");
                    files_left = files;
                    out.push(Tej::Start(status, version, files));
                }
                Event::FileStart {
                    index: _,
                    name,
                    name_ok,
                    size,
                } => {
                    assert!(files_left > 0 && file_left == 0, "a file outside the count");
                    assert!(size <= limits.max_file_size, "file over the limit");
                    if name_ok {
                        assert!(is_safe_name(name, limits.max_name), "unsafe name accepted");
                    }
                    files_left -= 1;
                    file_left = size;
                    out.push(Tej::File(name.to_vec(), size));
                }
                Event::FileData(b) => {
                    assert!(
                        b.as_ptr() == input[at..].as_ptr() && b.len() == n,
                        "data not the input's"
                    );
                    assert!(
                        !b.is_empty() && b.len() as u64 <= file_left,
                        "data past the file"
                    );
                    file_left -= b.len() as u64;
                    log.data(b);
                    match out.last_mut() {
                        Some(Tej::Data(v)) => v.extend_from_slice(b),
                        _ => out.push(Tej::Data(b.to_vec())),
                    }
                    continue;
                }
                Event::FileEnd => assert_eq!(file_left, 0, "file ended early"),
                Event::Message(m) => {
                    assert!(
                        files_left == 0 && m.len() as u64 <= limits.max_message,
                        "message"
                    );
                    if parse {
                        messages(m);
                    }
                    out.push(Tej::Message(m.to_vec()));
                }
                Event::FrameEnd => {
                    for &(p, min) in &promises {
                        assert!(
                            min <= (pos - p) as u64,
                            "min_bytes_to_frame_end over the truth"
                        );
                    }
                    promises.clear();
                }
            }
            log.event(ev);
            if let Some(min) = d.min_bytes_to_frame_end() {
                promises.push((pos, min));
            }
        }
        if let Some(min) = d.min_bytes_to_frame_end() {
            promises.push((pos, min));
        }
    }
    let max_field = MAX_ENTRY_HEADER.max(limits.max_message as usize + 8);
    meter.check("tej frame decoder", 2 * max_field + 4096);
    (log, out, pos)
}

/// The bytes of `events` through the encoders; `None` when a name is not UTF-8.
fn encode(events: &[Tej]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for e in events {
        match e {
            Tej::Start(status, version, files) => {
                put_frame_header_with_version(*status, *version, *files, &mut out)
            }
            Tej::File(name, size) => {
                put_file_header(std::str::from_utf8(name).ok()?, *size, &mut out)
            }
            Tej::Data(d) => out.extend_from_slice(d),
            Tej::Message(m) => put_message(m, &mut out),
        }
    }
    Some(out)
}

/// Every message parser on one message; each value parsed re-encodes to itself.
fn messages(m: &[u8]) {
    if let Some(ack) = Ack::from_json(m) {
        assert_eq!(
            Ack::from_json(&ack.to_json()).as_ref(),
            Some(&ack),
            "ack round trip"
        );
        let sent: Vec<(u64, &str)> = ack
            .files
            .iter()
            .map(|f| (f.size, f.sha256.as_str()))
            .collect();
        match check_ack(m, &sent) {
            // A missing `stored_as` reads as None too, and is no refusal.
            AckVerdict::Confirmed => {}
            AckVerdict::Rejected(why) => assert!(why.contains("not stored"), "{why}"),
            AckVerdict::NotAnAck => panic!("an Ack that check_ack does not see"),
        }
    }
    if let Some(e) = ErrorMsg::from_json(m) {
        assert_eq!(
            ErrorMsg::from_json(&e.to_json()),
            Some(e),
            "error round trip"
        );
    }
    if let Ok(g) = GetRequest::from_json(m) {
        assert_eq!(
            GetRequest::from_json(&g.to_json()),
            Ok(g),
            "request round trip"
        );
    }
    if let Ok(l) = ListRequest::from_json(m) {
        assert_eq!(
            ListRequest::from_json(&l.to_json()),
            Ok(l),
            "list request round trip"
        );
    }
    if let Some(x) = Manifest::from_json(m) {
        assert_eq!(
            Manifest::from_json(&x.to_json()),
            Some(x),
            "manifest round trip"
        );
    }
    if let Some(x) = Listing::from_json(m) {
        assert_eq!(
            Listing::from_json(&x.to_json()),
            Some(x),
            "listing round trip"
        );
    }
}

/// tej.md section 5, restated: UTF-8, 1 to `max` bytes, no path separator or control
/// character, not `.` or `..`.
fn is_safe_name(name: &[u8], max: usize) -> bool {
    let Ok(s) = std::str::from_utf8(name) else {
        return false;
    };
    (1..=max).contains(&name.len())
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}
