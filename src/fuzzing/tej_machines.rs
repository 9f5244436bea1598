//! TEJ machine targets: the server connection fed arbitrary client bytes and clock steps with a
//! fake catalog and a fake store, and the three client machines (send, get, list) fed arbitrary
//! server bytes.
//!
//! Server invariants: a write never goes past the length its file declared, and a commit comes
//! exactly at that length; `Open`, `Write` and `Commit` come in order, one file at a time; what
//! the machine sends parses as TEJ frames (acknowledgement, answer, listing or error) and stays
//! within a bound of what the peer sent; a passed deadline ends the connection; nothing is sent
//! after the end; the server-wide message budget is whole again once the connection is gone.
//!
//! Client invariants: file data ranges lie within the input just offered and add up to the size
//! announced; a get is verified only when every file received matches the manifest by name,
//! size and the SHA-256 of the bytes actually delivered; a send is confirmed only by an
//! acknowledgement that matches what was sent; listing requests move forward.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::Script;
use crate::proto::budget::MemoryBudget;
use crate::proto::tej::client::{
    Error as ClientError, GetEvent, Getter, Lister, SendOutcome, Sender, Transmit as ClientTx,
};
use crate::proto::tej::frame::{
    put_file_header, put_frame_header, put_message, status, Decoder, Event, Limits,
};
use crate::proto::tej::messages::{
    check_ack, Ack, AckEntry, AckVerdict, ErrorMsg, GetRequest, ListRequest, Listing, Manifest,
    ManifestEntry,
};
use crate::proto::tej::server::{
    Config, Connection, Event as ServerEvent, Lookup, Resolved, Step, StoreError, Stored, Transmit,
};
use crate::wire::hex;

/// Names the scripts pick from: safe, dot, path, control, long, the catalog's.
const NAMES: &[&str] = &[
    "a.txt",
    "b.bin",
    "c.txt",
    "dir/c.txt",
    ".hidden",
    "../x",
    "a\u{1}b",
    "",
    "n\u{e9}.txt",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
];

/// The fake catalog: (path, size). `c.txt` is two files (ambiguous by base name).
const CATALOG: &[(&str, u64)] = &[
    ("a.txt", 5),
    ("b.bin", 0),
    ("dir/c.txt", 300),
    ("other/c.txt", 7),
];

/// The fake catalog's id of an entry: any 64 hex digits that differ per entry.
fn catalog_sha(i: usize) -> String {
    hex::encode(&Sha256::digest([i as u8]))
}

struct FakeCatalog;

impl Lookup for FakeCatalog {
    type File = usize;

    fn resolve(&mut self, item: &str) -> Resolved<usize> {
        let found = |i: usize| Resolved::Found {
            file: i,
            name: CATALOG[i].0.rsplit('/').next().unwrap_or("").to_owned(),
            size: CATALOG[i].1,
            sha256: catalog_sha(i),
        };
        if let Some(i) = (0..CATALOG.len()).find(|&i| catalog_sha(i) == item) {
            return found(i);
        }
        if let Some(i) = CATALOG.iter().position(|(p, _)| *p == item) {
            return found(i);
        }
        let by_base: Vec<usize> = (0..CATALOG.len())
            .filter(|&i| CATALOG[i].0.rsplit('/').next() == Some(item))
            .collect();
        match by_base.as_slice() {
            [] => Resolved::Missing,
            [i] => found(*i),
            _ => Resolved::Ambiguous,
        }
    }

    fn page(&mut self, after: &str, limit: usize) -> Vec<ManifestEntry> {
        let mut all: Vec<(usize, &str)> = CATALOG.iter().map(|(p, _)| *p).enumerate().collect();
        all.sort_by(|a, b| a.1.as_bytes().cmp(b.1.as_bytes()));
        all.into_iter()
            .filter(|(_, p)| p.as_bytes() > after.as_bytes())
            .take(limit)
            .map(|(i, p)| ManifestEntry {
                name: p.to_owned(),
                size: CATALOG[i].1,
                sha256: catalog_sha(i),
            })
            .collect()
    }
}

/// A well-formed frame built from the script: status, files from [`NAMES`] with data, and a
/// message that is a request, a list request, an acknowledgement or raw bytes.
fn scripted_frame(s: &mut Script<'_>) -> Vec<u8> {
    let st = match s.u8() % 10 {
        n @ 0..=6 => n,
        7 => 2,
        n => 100 + n,
    };
    let files = usize::from(s.u8() % 4);
    let mut out = Vec::new();
    put_frame_header(st, files as u64, &mut out);
    for _ in 0..files {
        let name = NAMES[usize::from(s.u8()) % NAMES.len()];
        let data = s.chunk();
        put_file_header(name, data.len() as u64, &mut out);
        out.extend_from_slice(data);
    }
    let message = match s.u8() % 5 {
        0 => GetRequest {
            get: (0..s.u8() % 4)
                .map(|_| {
                    let i = usize::from(s.u8());
                    match i % 3 {
                        0 => catalog_sha(i % CATALOG.len()),
                        _ => NAMES[i % NAMES.len()].to_owned(),
                    }
                })
                .collect(),
        }
        .to_json(),
        1 => ListRequest {
            after: s
                .bool()
                .then(|| NAMES[usize::from(s.u8()) % NAMES.len()].into()),
            limit: s.bool().then(|| u64::from(s.u8())),
        }
        .to_json(),
        2 => Vec::new(),
        _ => s.chunk().to_vec(),
    };
    put_message(&message, &mut out);
    out
}

/// Reply frames as a client reads them: every byte the server sends must parse.
struct ReplyReader {
    decoder: Decoder,
    frames: usize,
}

impl ReplyReader {
    fn feed(&mut self, bytes: &[u8]) {
        let mut pos = 0;
        loop {
            let (n, r) = self.decoder.decode(&bytes[pos..]);
            pos += n;
            match r {
                Ok(None) => break,
                Ok(Some(Event::FrameStart { status: st, .. })) => {
                    assert!(
                        matches!(
                            st,
                            status::DELIVER | status::ACK | status::ERROR | status::LISTING
                        ),
                        "the server sent a frame of status {st}"
                    );
                }
                Ok(Some(Event::FrameEnd)) => self.frames += 1,
                Ok(Some(_)) => {}
                Err(e) => panic!("the server sent a bad frame: {e:?}"),
            }
        }
        assert_eq!(pos, bytes.len(), "reply bytes left unread");
    }
}

/// The file the fake store has open: declared size, bytes written.
struct OpenFile {
    size: u64,
    written: u64,
    hash: Sha256,
}

/// `config | ops`: op 0 raw client bytes, 1 a well-formed frame (split by a byte), 2 a clock
/// step and timeout, 3 EOF, 4 the next store answers fail, 5 drain what is sent.
pub fn tej_server_machine(data: &[u8]) {
    let mut s = Script::new(data);
    let small = s.u8();
    let limits = if small & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_files: u64::from(small >> 1) % 8,
            max_name: usize::from(s.u8()),
            max_file_size: u64::from(s.u16()),
            max_message: u64::from(s.u16()),
            strict_version: small & 2 == 2,
        }
    };
    let budget = MemoryBudget::new(match s.u8() {
        0 => 64 << 20,
        n => u64::from(n) * 8,
    });
    let cfg = Config {
        limits,
        held_messages: budget.clone(),
        ..Config::default()
    };
    let start = Instant::now();
    let mut now = start;
    let mut c = Connection::<usize>::new(cfg, now);
    let mut reader = ReplyReader {
        decoder: Decoder::new(Limits::default()),
        frames: 0,
    };
    let (mut open, mut fail_next, mut fed, mut sent) = (None::<OpenFile>, 0u8, 0u64, 0u64);
    let (mut closed_events, mut drained_after_end) = (0, false);
    while !s.is_empty() {
        match s.u8() % 6 {
            op @ (0 | 1) => {
                let bytes = if op == 0 {
                    s.chunk().to_vec()
                } else {
                    scripted_frame(&mut s)
                };
                let cut = usize::from(s.u8()).min(bytes.len());
                for piece in [&bytes[..cut], &bytes[cut..]] {
                    if !c.is_finished() {
                        fed += piece.len() as u64;
                    }
                    feed(&mut c, now, piece, &mut open, &mut fail_next, limits);
                }
            }
            2 => {
                let step = match s.u8() % 3 {
                    0 => Duration::from_millis(u64::from(s.u16())),
                    1 => Duration::from_secs(u64::from(s.u8())),
                    _ => Duration::from_secs(u64::from(s.u16())),
                };
                now += step;
                let due = c.poll_timeout().is_some_and(|t| now >= t);
                c.handle_timeout(now);
                assert!(!due || c.is_finished(), "a passed deadline did not end it");
            }
            3 => c.handle_eof(),
            4 => fail_next = s.u8() % 4,
            _ => {}
        }
        if !c.is_finished() {
            assert_eq!(
                c.has_open_file(),
                open.is_some(),
                "has_open_file disagrees with the steps"
            );
        } else {
            open = None;
        }
        assert!(budget.in_use() <= budget.max(), "held messages over budget");
        // Drain what is to be sent.
        while let Some(t) = c.poll_transmit() {
            assert!(!drained_after_end, "a transmit after the end was drained");
            match t {
                Transmit::Bytes(b) => {
                    sent += b.len() as u64;
                    reader.feed(&b);
                }
                Transmit::File { file, offset, len } => {
                    assert_eq!(
                        (offset, len),
                        (0, CATALOG[file].1),
                        "a file sent other than whole"
                    );
                    reader.feed(&vec![0; len as usize]);
                }
            }
        }
        // Replies stay within a bound of what the peer sent (names echoed, escaped, hashed).
        assert!(
            sent <= 4096 + 32 * fed,
            "{sent} bytes of replies to {fed} bytes"
        );
        while let Some(ev) = c.poll_event() {
            if let ServerEvent::Closed { .. } = ev {
                closed_events += 1;
                assert!(c.is_finished(), "closed while not finished");
            }
        }
        assert!(closed_events <= 1, "closed twice");
        if c.is_finished() {
            drained_after_end = true;
            assert!(c.poll_timeout().is_none(), "a deadline after the end");
        }
    }
    drop(c);
    assert_eq!(budget.in_use(), 0, "held message bytes not given back");
}

/// Feeds `input` as the driver does, answering each step; checks the file steps.
fn feed(
    c: &mut Connection<usize>,
    now: Instant,
    input: &[u8],
    open: &mut Option<OpenFile>,
    fail_next: &mut u8,
    limits: Limits,
) {
    let mut pos = 0;
    loop {
        let finished = c.is_finished();
        let (n, step) = c.handle_input(now, &input[pos..], &mut FakeCatalog);
        assert!(n <= input.len() - pos, "consumed past the input");
        let span = input[pos..pos + n].as_ptr_range();
        pos += n;
        let Some(step) = step else {
            assert!(
                c.is_finished() || pos == input.len(),
                "stopped with input left"
            );
            assert!(!finished || n == 0, "input taken after the end");
            return;
        };
        match step {
            Step::Open { name, size } => {
                assert!(open.is_none(), "a file opened while another is open");
                assert!(size <= limits.max_file_size, "a file over the limit opened");
                assert!(
                    crate::names::accept_exact(name.as_bytes(), usize::MAX).is_some()
                        && !name.starts_with('.')
                        && name.len() <= limits.max_name,
                    "{name:?} opened for storing"
                );
                let fail = std::mem::take(fail_next) == 1;
                if fail {
                    c.file_opened(Err(StoreError::NoSpace("full".into())));
                    assert!(c.is_finished(), "a failed open did not end it");
                } else {
                    *open = Some(OpenFile {
                        size,
                        written: 0,
                        hash: Sha256::new(),
                    });
                    c.file_opened(Ok(()));
                }
            }
            Step::Write(d) => {
                let f = open.as_mut().expect("a write with no file open");
                let r = d.as_ptr_range();
                assert!(
                    !d.is_empty() && span.start <= r.start && r.end <= span.end,
                    "a write not from the input just taken"
                );
                f.written += d.len() as u64;
                assert!(
                    f.written <= f.size,
                    "a write past the declared length {}",
                    f.size
                );
                f.hash.update(d);
                if std::mem::take(fail_next) == 2 {
                    *open = None;
                    c.file_failed(StoreError::Internal("disk".into()));
                    assert!(c.is_finished(), "a failed write did not end it");
                }
            }
            Step::Commit => {
                let f = open.take().expect("a commit with no file open");
                assert_eq!(f.written, f.size, "a commit short of the declared length");
                let r = if std::mem::take(fail_next) == 3 {
                    Err(StoreError::Internal("rename".into()))
                } else {
                    Ok(Stored {
                        stored_as: "stored".into(),
                        sha256: hex::encode(&f.hash.finalize()),
                    })
                };
                let failed = r.is_err();
                c.file_committed(r);
                assert!(!failed || c.is_finished(), "a failed commit did not end it");
            }
        }
    }
}

/// A reply frame for the clients from the script: an acknowledgement of what was sent, an
/// answer with files and a manifest, a listing page, an error, a ping, or raw bytes.
fn scripted_reply(s: &mut Script<'_>, sent: &[(u64, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    match s.u8() % 6 {
        0 => {
            let wrong = s.u8();
            let ack = Ack {
                files: sent
                    .iter()
                    .enumerate()
                    .map(|(i, (size, sha))| {
                        let bad = usize::from(wrong) == i + 1;
                        AckEntry::new(
                            b"f",
                            *size + u64::from(bad),
                            sha.clone(),
                            (wrong != 200).then(|| "f".into()),
                            None,
                        )
                    })
                    .collect(),
                message_bytes: 0,
            };
            out = ack.to_frame();
        }
        1 => {
            let files = usize::from(s.u8() % 4);
            put_frame_header(status::DELIVER, files as u64, &mut out);
            let mut manifest = Manifest::default();
            for _ in 0..files {
                let name = NAMES[usize::from(s.u8()) % NAMES.len()];
                let data = s.chunk();
                put_file_header(name, data.len() as u64, &mut out);
                out.extend_from_slice(data);
                let sha = if s.bool() {
                    hex::encode(&Sha256::digest(data))
                } else {
                    catalog_sha(0)
                };
                manifest.files.push(ManifestEntry {
                    name: if s.u8() == 7 { "x".into() } else { name.into() },
                    size: data.len() as u64,
                    sha256: sha,
                });
            }
            put_message(&manifest.to_json(), &mut out);
        }
        2 => {
            let n = usize::from(s.u8() % 4);
            let listing = Listing {
                files: (0..n)
                    .map(|_| ManifestEntry {
                        name: NAMES[usize::from(s.u8()) % NAMES.len()].into(),
                        size: 1,
                        sha256: catalog_sha(1),
                    })
                    .collect(),
                next: s
                    .bool()
                    .then(|| NAMES[usize::from(s.u8()) % NAMES.len()].into()),
            };
            out = listing.to_frame();
        }
        3 => out = ErrorMsg::new("not-found", "x").to_frame(),
        4 => put_frame_header(status::PING, 0, &mut out),
        _ => out.extend_from_slice(s.chunk()),
    }
    if out.len() >= 10 && s.u8() == 0 {
        // A ping's message.
        put_message(&[], &mut out);
    }
    out
}

/// `which | setup | ops`: which 0 sender, 1 getter, 2 lister; op 0 raw server bytes, 1 a
/// well-formed reply, 2 a clock step, 3 EOF, 4 poll and act on transmits.
pub fn tej_client_machines(data: &[u8]) {
    let mut s = Script::new(data);
    match s.u8() % 3 {
        0 => sender(&mut s),
        1 => getter(&mut s),
        _ => lister(&mut s),
    }
}

fn sender(s: &mut Script<'_>) {
    let st = if s.bool() { 0 } else { s.u8() & 0x7f };
    let files: Vec<(String, u64)> = (0..s.u8() % 4)
        .map(|i| (format!("f{i}"), u64::from(s.u8())))
        .collect();
    let now = Instant::now();
    let mut snd = Sender::new(st, files.clone(), s.chunk(), Duration::from_secs(5));
    let mut sent: Vec<(u64, String)> = Vec::new();
    let mut t = now;
    while !s.is_empty() && !snd.is_finished() {
        let r = match s.u8() % 5 {
            0 => client_feed(s.chunk(), |b| {
                snd.handle_input(b).map(|st| (st.consumed, ()))
            }),
            1 => {
                let b = scripted_reply(s, &sent);
                client_feed(&b, |b| snd.handle_input(b).map(|st| (st.consumed, ())))
            }
            2 => {
                t += Duration::from_millis(u64::from(s.u16()) * 4);
                snd.handle_timeout(t);
                Ok(())
            }
            3 => snd.handle_eof(),
            _ => {
                while let Some(tx) = snd.poll_transmit() {
                    if let ClientTx::File { index, len } = tx {
                        assert_eq!(len, files[index].1, "file {index} of another length");
                        let sha = hex::encode(&Sha256::digest(vec![index as u8; len as usize]));
                        sent.push((len, sha.clone()));
                        snd.file_sent(index, &sha);
                    }
                }
                snd.handle_written(t);
                Ok(())
            }
        };
        if r.is_err() {
            break;
        }
    }
    if let Some(SendOutcome::Confirmed { reply }) = snd.outcome() {
        assert_eq!(st, 0, "a send confirmed without an acknowledgement due");
        assert_eq!(sent.len(), files.len(), "confirmed before every file went");
        let sent: Vec<(u64, &str)> = sent.iter().map(|(l, h)| (*l, h.as_str())).collect();
        assert_eq!(
            check_ack(reply, &sent),
            AckVerdict::Confirmed,
            "confirmed by a reply that does not match"
        );
    }
}

/// Feeds `input` to a client machine until every byte is taken or it fails.
fn client_feed(
    input: &[u8],
    mut f: impl FnMut(&[u8]) -> Result<(usize, ()), ClientError>,
) -> Result<(), ClientError> {
    let mut pos = 0;
    let mut idle = 0;
    while pos < input.len() {
        let (n, ()) = f(&input[pos..])?;
        assert!(n <= input.len() - pos, "consumed past the input");
        pos += n;
        idle = if n == 0 { idle + 1 } else { 0 };
        assert!(idle < 1024, "a client machine spins without taking input");
    }
    Ok(())
}

fn getter(s: &mut Script<'_>) {
    let items: Vec<String> = (0..s.u8() % 4)
        .map(|_| {
            let i = usize::from(s.u8());
            match i % 4 {
                0 => catalog_sha(0),
                _ => NAMES[i % NAMES.len()].to_owned(),
            }
        })
        .collect();
    let mut g = Getter::new(&items);
    assert!(matches!(g.poll_transmit(), Some(ClientTx::Bytes(_))));
    assert!(g.poll_transmit().is_none(), "the request went twice");
    // Files as received: name index, size, bytes delivered, hash.
    let mut files: Vec<(u64, u64, Sha256)> = Vec::new();
    let mut in_file = false;
    while !s.is_empty() && !g.is_finished() {
        let bytes = match s.u8() % 3 {
            0 => s.chunk().to_vec(),
            1 => scripted_reply(s, &[]),
            _ => {
                let _ = g.handle_eof();
                break;
            }
        };
        let mut pos = 0;
        let mut idle = 0;
        while pos < bytes.len() {
            let input = &bytes[pos..];
            let step = match g.handle_input(input) {
                Ok(step) => step,
                Err(_) => return,
            };
            assert!(step.consumed <= input.len(), "consumed past the input");
            match step.event {
                None => {}
                Some(GetEvent::FileStart { index, size }) => {
                    assert!(!in_file, "a file started inside another");
                    assert_eq!(index, files.len(), "files out of order");
                    assert!(index < items.len(), "more files than items accepted");
                    files.push((size, 0, Sha256::new()));
                    in_file = true;
                }
                Some(GetEvent::FileData(r)) => {
                    assert!(in_file, "data outside a file");
                    assert!(
                        r.start < r.end && r.end <= step.consumed,
                        "data range {r:?} outside the {} bytes taken",
                        step.consumed
                    );
                    let f = files.last_mut().expect("a file");
                    f.1 += r.len() as u64;
                    assert!(f.1 <= f.0, "more data than the file's size");
                    f.2.update(&input[r]);
                }
                Some(GetEvent::FileEnd) => {
                    assert!(in_file, "a file end outside a file");
                    in_file = false;
                    let f = files.last_mut().expect("a file");
                    assert_eq!(f.1, f.0, "a file ended short");
                    g.file_received(f.2.clone().finalize().into());
                }
                Some(GetEvent::Verified(entries)) => {
                    assert!(!in_file, "verified inside a file");
                    assert_eq!(entries.len(), files.len(), "verified other files");
                    for (e, f) in entries.iter().zip(&files) {
                        assert_eq!(e.size, f.0, "verified with another size");
                        assert_eq!(
                            e.sha256,
                            hex::encode(&f.2.clone().finalize()),
                            "verified bytes that do not hash to the manifest"
                        );
                        assert!(
                            !e.name.starts_with('.') && !e.name.contains('/'),
                            "verified an unsafe name {:?}",
                            e.name
                        );
                    }
                    assert!(g.is_finished(), "verified and not finished");
                    return;
                }
            }
            pos += step.consumed;
            idle = if step.consumed == 0 { idle + 1 } else { 0 };
            assert!(idle < 1024, "the getter spins");
        }
    }
}

fn lister(s: &mut Script<'_>) {
    let mut l = Lister::new();
    let mut last_after: Option<Option<String>> = None;
    while !s.is_empty() && !l.is_finished() {
        if let Some(ClientTx::Bytes(b)) = l.poll_transmit() {
            let mut d = Decoder::new(Limits::default());
            let (mut pos, mut message) = (0, Vec::new());
            while let (n, Ok(Some(ev))) = d.decode(&b[pos..]) {
                pos += n;
                if let Event::Message(m) = ev {
                    message.extend_from_slice(m);
                }
            }
            let req = ListRequest::from_json(&message).expect("a list request");
            if let Some(prev) = &last_after {
                assert!(
                    req.after.as_ref().map(String::as_bytes) > prev.as_ref().map(String::as_bytes),
                    "listing asked for {:?} after {prev:?}",
                    req.after
                );
            }
            last_after = Some(req.after);
        }
        let bytes = match s.u8() % 3 {
            0 => s.chunk().to_vec(),
            1 => scripted_reply(s, &[]),
            _ => {
                let _ = l.handle_eof();
                break;
            }
        };
        if client_feed(&bytes, |b| l.handle_input(b).map(|st| (st.consumed, ()))).is_err() {
            break;
        }
        assert!(l.entries().len() <= crate::proto::tej::client::MAX_LISTED);
    }
}
