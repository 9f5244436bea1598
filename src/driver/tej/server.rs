//! The TEJ server driver: reads frames with the [`Decoder`], streams every stored file through
//! [`ingest`](crate::ingest) into the served folder, and answers with ferry's conventions
//! (tej.md 3): an acknowledgement per deliver frame, request answers streamed from the mapped
//! catalog, listing pages, and error frames.
//!
//! ```text
//!  between frames ──byte──► in frame ──FrameEnd──► reply (ack / answer / page / nothing)
//!   (idle timeout 120 s)     (stall rule: 64 KiB per 30 s)     │
//!        ▲                                                     │
//!        └─────────────────────────────────────────────────────┘
//!  any FrameError, timeout, EOF inside a frame: error frame (best effort), temporary removed, close
//! ```

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::catalog::{CatalogHandle, Entry};
use crate::config::TlsSource;
use crate::driver::bulk;
use crate::ingest::{Collision, Expect, IngestDir, StreamSink};
use crate::proto::tej::frame::{self, status, Decoder, Event, FrameError, Limits as FrameLimits};
use crate::proto::tej::messages::{
    self, code, Ack, AckEntry, GetRequest, ListRequest, Listing, Manifest, ManifestEntry,
};
use crate::server::{ConnCtx, Peer, Service};
use crate::transport::Stream;

/// Bytes of a deliver frame's message shown in the log.
const LOG_MESSAGE_BYTES: usize = 200;
/// Read buffer per connection.
const READ_BUF: usize = 256 * 1024;

/// TEJ server settings (tej.md 4.2).
#[derive(Clone, Debug)]
pub struct TejConfig {
    /// Listen address. Default `127.0.0.1:8000`.
    pub bind: String,
    pub tls: TlsSource,
    pub frame: FrameLimits,
    /// Space left free on the served folder's file system. Default 64 MiB.
    pub disk_reserve: u64,
    /// Stall rule: a frame must advance by `stall_bytes` (or end) within each `stall_window`.
    pub stall_window: Duration,
    pub stall_bytes: usize,
    /// Silence allowed between frames (pings count). Default 120 s.
    pub idle_timeout: Duration,
    pub verbose: bool,
}

impl Default for TejConfig {
    fn default() -> Self {
        TejConfig {
            bind: "127.0.0.1:8000".into(),
            tls: TlsSource::Off,
            frame: FrameLimits::default(),
            disk_reserve: 64 << 20,
            stall_window: Duration::from_secs(30),
            stall_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(120),
            verbose: false,
        }
    }
}

/// The TEJ service: one per listener, shared by its workers.
pub struct TejService {
    catalog: Arc<CatalogHandle>,
    ingest: IngestDir,
    cfg: TejConfig,
}

impl TejService {
    /// Stored files land in the catalog's folder; temporaries live in `.ferry/ingest/tej` and
    /// leftovers of a previous run are deleted (TEJ has no resume).
    pub fn new(catalog: Arc<CatalogHandle>, cfg: TejConfig) -> io::Result<TejService> {
        let work = catalog.state_dir().join("ingest").join("tej");
        let ingest = IngestDir::new(catalog.root(), &work)?;
        for e in std::fs::read_dir(&work)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(TejService {
            catalog,
            ingest,
            cfg,
        })
    }

    fn log(&self, peer: &str, msg: std::fmt::Arguments) {
        if self.cfg.verbose {
            eprintln!("tej: {peer}: {msg}");
        }
    }
}

impl Service for TejService {
    fn name(&self) -> &'static str {
        "tej"
    }

    /// Plain listeners: a `busy` error frame at once. TLS: the core closes before the handshake.
    fn busy_reply(&self) -> Option<Vec<u8>> {
        Some(messages::error_frame(
            code::BUSY,
            "server at its connection limit",
        ))
    }

    fn serve(&self, stream: Stream, peer: &Peer, ctx: &ConnCtx) {
        let peer = peer.to_string();
        let mut c = Conn {
            svc: self,
            ctx,
            stream,
            peer,
            out: Vec::new(),
            frame: None,
        };
        let mut dec = Decoder::new(self.cfg.frame);
        let mut rbuf = vec![0u8; READ_BUF];
        let result = c.run(&mut dec, &mut rbuf);
        let graceful = match result {
            Ok(()) => true,
            Err(Fatal::Reply { code, detail }) => {
                c.svc.log(&c.peer, format_args!("{code}: {detail}"));
                // Whatever half-received file there was is removed when its sink drops.
                c.frame = None;
                let mut f = messages::error_frame(code, &detail);
                c.out.append(&mut f);
                bulk::flush(&mut c.stream, &mut c.out).is_ok()
            }
            Err(Fatal::Silent(why)) => {
                c.svc.log(&c.peer, format_args!("{why}"));
                false
            }
        };
        c.frame = None;
        if graceful {
            c.stream.close_gracefully(Duration::from_secs(1));
        }
    }
}

/// What ends a connection.
enum Fatal {
    /// Send this error frame (tej.md 3.3), then close.
    Reply { code: &'static str, detail: String },
    /// Close without a word (the peer is gone or not reading).
    Silent(String),
}

impl From<bulk::SendError> for Fatal {
    fn from(e: bulk::SendError) -> Self {
        Fatal::Silent(e.to_string())
    }
}

fn internal(e: impl std::fmt::Display) -> Fatal {
    Fatal::Reply {
        code: code::INTERNAL,
        detail: e.to_string(),
    }
}

/// The frame being received.
struct FrameState {
    status: u8,
    entries: Vec<AckEntry>,
    file: Option<FileState>,
    /// Kept only for statuses whose message ferry reads (4, 5).
    message: Vec<u8>,
    message_bytes: u64,
}

/// The file being received.
struct FileState {
    raw_name: Vec<u8>,
    /// The acceptable name, when the file is to be stored.
    store_as: Option<String>,
    name_ok: bool,
    size: u64,
    sink: Option<StreamSink>,
    /// Hash of data that is read and discarded (bad names, statuses 1 to 6).
    discard: Sha256,
}

struct Conn<'a> {
    svc: &'a TejService,
    ctx: &'a ConnCtx,
    stream: Stream,
    peer: String,
    out: Vec<u8>,
    frame: Option<FrameState>,
}

impl Conn<'_> {
    fn run(&mut self, dec: &mut Decoder, rbuf: &mut [u8]) -> Result<(), Fatal> {
        let cfg = &self.svc.cfg;
        let mut window_start = Instant::now();
        let mut window_bytes = 0usize;
        loop {
            // Decide how long the next read may wait.
            let between = dec.is_between_frames();
            let wait = if between {
                cfg.idle_timeout
            } else {
                cfg.stall_window.saturating_sub(window_start.elapsed())
            };
            self.ctx.set_idle(between);
            if between && self.ctx.is_shutting_down() {
                return Ok(());
            }
            if wait.is_zero() {
                return Err(timeout(between));
            }
            self.stream
                .set_read_timeout(Some(wait))
                .map_err(|e| Fatal::Silent(e.to_string()))?;
            let n = match self.stream.read(rbuf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(timeout(between));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fatal::Silent(e.to_string())),
            };
            self.ctx.set_idle(false);
            if n == 0 {
                if dec.is_between_frames() {
                    return Ok(());
                }
                return Err(Fatal::Reply {
                    code: code::TRUNCATED,
                    detail: "end of stream inside a frame".into(),
                });
            }
            if between {
                window_start = Instant::now();
                window_bytes = 0;
            }
            window_bytes += n;
            if window_bytes >= cfg.stall_bytes {
                window_start = Instant::now();
                window_bytes = 0;
            }
            let mut start = 0;
            loop {
                let (used, r) = dec.decode(&rbuf[start..n]);
                start += used;
                match r {
                    Err(e) => return Err(frame_error(&e)),
                    Ok(None) => break,
                    Ok(Some(ev)) => {
                        let ended = matches!(ev, Event::FrameEnd);
                        self.handle(ev)?;
                        if ended {
                            // A frame that ended restarts the stall window.
                            window_start = Instant::now();
                            window_bytes = 0;
                        }
                    }
                }
            }
        }
    }

    fn handle(&mut self, ev: Event<'_>) -> Result<(), Fatal> {
        match ev {
            Event::FrameStart {
                status,
                version,
                files,
            } => {
                if status != status::PING {
                    self.svc.log(
                        &self.peer,
                        format_args!("frame status {status} version {version}, {files} files"),
                    );
                }
                self.frame = Some(FrameState {
                    status,
                    entries: Vec::new(),
                    file: None,
                    message: Vec::new(),
                    message_bytes: 0,
                });
            }
            Event::FileStart {
                name,
                name_ok,
                size,
                ..
            } => {
                let fr = self
                    .frame
                    .as_mut()
                    .ok_or_else(|| internal("file outside a frame"))?;
                let stores = fr.status == status::DELIVER || fr.status > status::LISTING;
                // Names starting with '.' pass tej.md 5 but the catalog never serves them (they
                // are ferry's own temporaries and state); storing one would acknowledge a file
                // nobody can fetch, so it is a bad name here.
                let name_ok = name_ok && name.first() != Some(&b'.');
                let store_as = if stores && name_ok {
                    std::str::from_utf8(name).ok().map(str::to_owned)
                } else {
                    None
                };
                let sink = match &store_as {
                    Some(_) => {
                        let free = self.svc.ingest.available_bytes().map_err(internal)?;
                        if free < size.saturating_add(self.svc.cfg.disk_reserve) {
                            return Err(Fatal::Reply {
                                code: code::NO_SPACE,
                                detail: format!(
                                    "file of {size} bytes does not fit: {free} bytes free, {} kept in reserve",
                                    self.svc.cfg.disk_reserve
                                ),
                            });
                        }
                        Some(self.svc.ingest.begin_stream(Some(size)).map_err(internal)?)
                    }
                    None => None,
                };
                fr.file = Some(FileState {
                    raw_name: name.to_vec(),
                    store_as,
                    name_ok,
                    size,
                    sink,
                    discard: Sha256::new(),
                });
            }
            Event::FileData(d) => {
                let f = self
                    .frame
                    .as_mut()
                    .and_then(|fr| fr.file.as_mut())
                    .ok_or_else(|| internal("data outside a file"))?;
                match f.sink.as_mut() {
                    Some(s) => s.write_all(d).map_err(internal)?,
                    None => f.discard.update(d),
                }
            }
            Event::FileEnd => self.finish_file()?,
            Event::Message(m) => {
                let fr = self
                    .frame
                    .as_mut()
                    .ok_or_else(|| internal("message outside a frame"))?;
                fr.message_bytes = m.len() as u64;
                if matches!(fr.status, status::REQUEST | status::LIST) {
                    fr.message = m.to_vec();
                } else if fr.status != status::PING && !m.is_empty() {
                    let shown = &m[..m.len().min(LOG_MESSAGE_BYTES)];
                    self.svc.log(
                        &self.peer,
                        format_args!(
                            "message ({} bytes): {}",
                            m.len(),
                            String::from_utf8_lossy(shown)
                        ),
                    );
                }
            }
            Event::FrameEnd => {
                let fr = self
                    .frame
                    .take()
                    .ok_or_else(|| internal("end outside a frame"))?;
                self.reply(fr)?;
            }
        }
        Ok(())
    }

    /// Commits (or discards) the file that just ended and records its acknowledgement entry.
    fn finish_file(&mut self) -> Result<(), Fatal> {
        let fr = self
            .frame
            .as_mut()
            .ok_or_else(|| internal("file end outside a frame"))?;
        let f = fr
            .file
            .take()
            .ok_or_else(|| internal("file end without a file"))?;
        let entry = match (f.sink, f.store_as) {
            (Some(sink), Some(store_as)) => {
                use crate::ingest::{Listed, Publisher};
                let published =
                    Publisher::new(self.svc.ingest.clone(), Arc::clone(&self.svc.catalog))
                        .publish_stream(sink, &store_as, Expect::Nothing, Collision::Numbered)
                        .map_err(internal)?;
                if let Listed::Refused(e) = &published.listed {
                    // Stored, but not a catalog file (a dotfile name, say): say so in the log.
                    self.svc.log(&self.peer, format_args!("{e}"));
                }
                let c = published.committed;
                self.svc.log(
                    &self.peer,
                    format_args!("stored {} ({} bytes)", c.name, c.size),
                );
                AckEntry::new(
                    &f.raw_name,
                    f.size,
                    c.sha256.map(|s| hex(&s)).unwrap_or_default(),
                    Some(c.name),
                    None,
                )
            }
            _ => AckEntry::new(
                &f.raw_name,
                f.size,
                hex(&f.discard.finalize()),
                None,
                (!f.name_ok).then_some(code::BAD_NAME),
            ),
        };
        fr.entries.push(entry);
        Ok(())
    }

    fn reply(&mut self, fr: FrameState) -> Result<(), Fatal> {
        match fr.status {
            status::DELIVER => {
                let ack = Ack {
                    files: fr.entries,
                    message_bytes: fr.message_bytes,
                };
                self.out
                    .extend_from_slice(&frame::frame(status::ACK, &[], &ack.to_json()));
                bulk::flush(&mut self.stream, &mut self.out)
                    .map_err(|e| Fatal::Silent(e.to_string()))
            }
            status::REQUEST => self.answer_request(&fr.message),
            status::LIST => self.answer_list(&fr.message),
            s if s > status::LISTING => {
                self.svc.log(
                    &self.peer,
                    format_args!(
                        "application status {s}: {} files stored, not acknowledged",
                        fr.entries.len()
                    ),
                );
                Ok(())
            }
            // Ping, acknowledgement, error, listing: never answered.
            _ => Ok(()),
        }
    }

    fn send_error(
        &mut self,
        code: &'static str,
        detail: String,
        missing: Option<Vec<String>>,
    ) -> Result<(), Fatal> {
        let mut msg = messages::ErrorMsg::new(code, &detail);
        msg.missing = missing;
        self.out
            .extend_from_slice(&frame::frame(status::ERROR, &[], &msg.to_json()));
        bulk::flush(&mut self.stream, &mut self.out).map_err(|e| Fatal::Silent(e.to_string()))
    }

    /// Status 4: one deliver frame with the files in request order, or `not-found`.
    fn answer_request(&mut self, message: &[u8]) -> Result<(), Fatal> {
        let req = match GetRequest::from_json(message) {
            Ok(r) => r,
            Err(e) => return self.send_error(code::BAD_REQUEST, e.to_string(), None),
        };
        if req.get.len() as u64 > self.svc.cfg.frame.max_files {
            return self.send_error(
                code::BAD_REQUEST,
                format!("more than {} items", self.svc.cfg.frame.max_files),
                None,
            );
        }
        let snap = self.svc.catalog.snapshot();
        let mut found: Vec<Arc<Entry>> = Vec::new();
        let mut missing = Vec::new();
        for item in &req.get {
            match resolve(&snap, item) {
                Some(e) => found.push(e.clone()),
                None => missing.push(item.clone()),
            }
        }
        let mut files = Vec::new();
        for e in &found {
            match e.open() {
                Ok(f) => files.push((e.clone(), f)),
                Err(_) => missing.push(e.file_name().to_string()),
            }
        }
        if !missing.is_empty() {
            return self.send_error(
                code::NOT_FOUND,
                format!("{} of {} items not found", missing.len(), req.get.len()),
                Some(missing),
            );
        }
        frame::put_frame_header(status::DELIVER, files.len() as u64, &mut self.out);
        for (e, f) in &files {
            frame::put_file_header(e.file_name(), f.len(), &mut self.out);
            bulk::send_file(&mut self.stream, &mut self.out, f)?;
        }
        let manifest = Manifest {
            files: files
                .iter()
                .map(|(e, f)| ManifestEntry {
                    name: e.file_name().to_string(),
                    size: f.len(),
                    sha256: e.sha256_hex(),
                })
                .collect(),
        };
        frame::put_message(&manifest.to_json(), &mut self.out);
        bulk::flush(&mut self.stream, &mut self.out).map_err(|e| Fatal::Silent(e.to_string()))
    }

    /// Status 5: one listing page in path order after `after`.
    fn answer_list(&mut self, message: &[u8]) -> Result<(), Fatal> {
        let req = match ListRequest::from_json(message) {
            Ok(r) => r,
            Err(e) => return self.send_error(code::BAD_REQUEST, e.to_string(), None),
        };
        let limit = req.page_limit() as usize;
        let snap = self.svc.catalog.snapshot();
        let after = req.after.unwrap_or_default();
        // Paths are the exact on-disk names, so paging by `after` visits each file once even
        // when two names have one NFC form.
        let page: Vec<ManifestEntry> = snap
            .files_after(&after)
            .take(limit)
            .map(|e| ManifestEntry {
                name: e.file_name().to_string(),
                size: e.size,
                sha256: e.sha256_hex(),
            })
            .collect();
        let next = (page.len() == limit).then(|| page[page.len() - 1].name.clone());
        let listing = Listing { files: page, next };
        self.out
            .extend_from_slice(&frame::frame(status::LISTING, &[], &listing.to_json()));
        bulk::flush(&mut self.stream, &mut self.out).map_err(|e| Fatal::Silent(e.to_string()))
    }
}

/// A request item: 64 lowercase hex digits (SHA-256) or a catalog name.
fn resolve<'c>(snap: &'c crate::catalog::Catalog, item: &str) -> Option<&'c Arc<Entry>> {
    if let Some(id) = crate::wire::hex::parse_sha256(item) {
        if let Some(e) = snap.by_sha256(&id) {
            return Some(e);
        }
    }
    // The exact path first, then the NFC spelling of a name.
    use unicode_normalization::UnicodeNormalization;
    snap.by_file_name(item)
        .or_else(|| snap.by_name(&item.nfc().collect::<String>()))
}

fn timeout(between: bool) -> Fatal {
    Fatal::Reply {
        code: code::TIMEOUT,
        detail: if between {
            "idle between frames".into()
        } else {
            "frame stalled".into()
        },
    }
}

fn frame_error(e: &FrameError) -> Fatal {
    Fatal::Reply {
        code: e.code(),
        detail: e.detail(),
    }
}

use crate::wire::hex::encode as hex;
