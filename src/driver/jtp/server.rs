//! The JTP server driver: the only JTP code that knows both the [`Connection`] machine and a
//! socket. It applies the timeouts the machine's phase calls for, resolves catalog entries,
//! and moves image bytes from the mapped files to the socket through [`bulk`].
//!
//! Consistency (jtp.md 3.11): every counted image is opened and checked against its snapshot
//! stamp before the count goes out; while a packet streams, [`bulk::send_file`] checks the file
//! again before its final bytes. A file that changed ends the connection, so a peer never
//! receives the final byte of a packet whose bytes may differ from its id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::catalog::{CatalogHandle, MappedFile};
use crate::config::{JtpConfig, Limits};
use crate::driver::bulk::{self, OUT_FLUSH};
use crate::proto::jtp::request::{Request, RequestLimits};
use crate::proto::jtp::response;
use crate::proto::jtp::server::{self, Connection, Event, Phase, WatchInput};
use crate::proto::jtp::view::{Item, View};
use crate::proto::jtp::wire::{self, FileType, FLAG_ZSTD, MAGIC_BATCH, MAGIC_LIST_AND_GET};
use crate::proto::jtp::zstd_frame;
use crate::server::{Admission, ConnCtx, Peer, Service};
use crate::transport::{Stream, TryRead};

/// Largest file compressed on demand (larger BMPs go raw; their compression would hold the
/// request for too long and its cache too much memory).
const MAX_COMPRESS: u64 = 8 * 1024 * 1024;
/// Upper bound on the memory held by cached compressed forms.
const MAX_COMPRESS_CACHE: usize = 256 * 1024 * 1024;
/// Most source addresses the rate limiter remembers.
const MAX_RATE_IPS: usize = 100_000;
/// How often a WATCH subscriber looks at the catalog and its socket.
const WATCH_POLL: Duration = Duration::from_millis(100);

/// Why a connection ended early. Only logged: the peer already got whatever reply applies.
#[derive(Debug)]
pub enum ConnError {
    /// Reading or writing the socket failed or timed out.
    Io(io::Error),
    /// A file changed or vanished after it was counted; the response cannot be finished.
    FileChanged(String),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "i/o: {e}"),
            ConnError::FileChanged(n) => write!(f, "file changed while served: {n}"),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

/// The JTP service: one per listener, shared by its workers.
pub struct JtpService {
    catalog: Arc<CatalogHandle>,
    cfg: JtpConfig,
    limits: Limits,
    view: Mutex<Option<Arc<View>>>,
    /// Names already reported as too large or odd for JTP (each is logged once).
    excluded_logged: Mutex<HashSet<String>>,
    compressed: Mutex<CompressCache>,
    rate: Option<RateLimiter>,
}

#[derive(Default)]
struct CompressCache {
    /// `Some(frame)` when the compressed form is worth sending, `None` when it is not.
    forms: HashMap<u64, Option<Arc<Vec<u8>>>>,
    bytes: usize,
}

impl JtpService {
    pub fn new(catalog: Arc<CatalogHandle>, cfg: JtpConfig, limits: Limits) -> JtpService {
        let rate = cfg
            .rate_limit
            .map(|n| RateLimiter::new(n, cfg.rate_limit_window));
        let svc = JtpService {
            catalog,
            cfg,
            limits,
            view: Mutex::new(None),
            excluded_logged: Mutex::new(HashSet::new()),
            compressed: Mutex::new(CompressCache::default()),
            rate,
        };
        // Build the view now, so files JTP cannot serve are reported at startup.
        svc.view();
        svc
    }

    /// The JTP view of the current catalog snapshot, rebuilt only when the snapshot changed.
    pub fn view(&self) -> Arc<View> {
        let snap = self.catalog.snapshot();
        let mut cached = self.view.lock().unwrap();
        if let Some(v) = cached.as_ref() {
            if v.generation == snap.generation() {
                return v.clone();
            }
        }
        let v = Arc::new(View::build(&snap, self.cfg.only.as_deref()));
        *cached = Some(v.clone());
        let mut logged = self.excluded_logged.lock().unwrap();
        for (name, why) in View::excluded(&snap) {
            if logged.insert(name.clone()) {
                eprintln!("jtp: not serving {name}: {why}");
            }
        }
        v
    }

    fn log(&self, peer: &str, msg: std::fmt::Arguments) {
        if self.cfg.verbose {
            eprintln!("jtp: {peer}: {msg}");
        }
    }

    /// The compressed form to send for `item`, if any (jtp.md 3.8): BMP only, at most
    /// [`MAX_COMPRESS`] bytes, computed once per id and kept only when it beats the threshold.
    fn compressed_form(&self, item: &Item, file: &MappedFile) -> Option<Arc<Vec<u8>>> {
        let threshold = self.cfg.compression_threshold;
        if threshold <= 0.0 || item.ftype != FileType::Bmp || file.len() > MAX_COMPRESS {
            return None;
        }
        if let Some(form) = self.compressed.lock().unwrap().forms.get(&item.id) {
            return form.clone();
        }
        let mut data = vec![0u8; file.len() as usize];
        file.read_exact_at(0, &mut data).ok()?;
        // Never cache a form of bytes that are not the ones the id names.
        if wire::image_id(&data) != item.id {
            return None;
        }
        let level = if data.len() < 100 * 1024 { 6 } else { 3 };
        let frame = zstd_frame::compress(&data, level).ok()?;
        let worth = (frame.len() as f64) < threshold * data.len() as f64;
        let form = worth.then(|| Arc::new(frame));
        let mut cache = self.compressed.lock().unwrap();
        let size = form.as_ref().map_or(0, |f| f.len());
        if cache.bytes + size <= MAX_COMPRESS_CACHE {
            cache.bytes += size;
            cache.forms.insert(item.id, form.clone());
        }
        form
    }
}

impl Service for JtpService {
    fn name(&self) -> &'static str {
        "jtp"
    }

    /// Plain listeners: JTPE 3 at once. TLS: the core closes before the handshake.
    fn busy_reply(&self) -> Option<Vec<u8>> {
        Some(response::error_frame(3, server::MSG_BUSY))
    }

    /// The rate limit (jtp.md 3.7) counts the connection before any TLS work; a refused peer
    /// gets JTPE 5 (inside TLS after the handshake on a TLS listener), then close.
    fn admit(&self, peer: &Peer) -> Admission {
        match (&self.rate, peer.ip()) {
            (Some(rate), Some(ip)) if !rate.admit(ip) => {
                self.log(&peer.to_string(), format_args!("rate limited"));
                Admission::Reply(response::error_frame(5, server::MSG_RATE_LIMITED))
            }
            _ => Admission::Admit,
        }
    }

    fn serve(&self, stream: Stream, peer: &Peer, ctx: &ConnCtx) {
        let (peer, peer_ip) = (peer.to_string(), peer.ip());
        let mut c = ConnDriver {
            svc: self,
            ctx,
            stream,
            peer,
            peer_ip,
            machine: Connection::new(
                RequestLimits {
                    max_have: self.limits.max_have,
                },
                self.limits.max_buffered_input,
                self.cfg.watch_interval.is_some(),
            ),
            out: Vec::with_capacity(OUT_FLUSH + 64 * 1024),
            rbuf: vec![0u8; 16 * 1024],
            started: Instant::now(),
            body_started: None,
            packets: 0,
            payload: 0,
        };
        self.log(&c.peer, format_args!("connected"));
        let result = c.run();
        let totals = format!(
            "{} requests, {} packets, {} bytes of image data",
            c.machine.requests(),
            c.packets,
            c.payload
        );
        match &result {
            Ok(()) => self.log(&c.peer, format_args!("closed after {totals}")),
            Err(e) => self.log(&c.peer, format_args!("failed after {totals}: {e}")),
        }
        // An error mid-response means the stream is out of step: cut it. Otherwise close in
        // order (flush, close_notify, FIN, drain) so the last response is not lost to an RST.
        match result {
            Ok(()) => c.stream.close_gracefully(self.limits.close_linger),
            Err(_) => drop(c.stream),
        }
    }
}

struct ConnDriver<'a> {
    svc: &'a JtpService,
    ctx: &'a ConnCtx,
    stream: Stream,
    peer: String,
    peer_ip: Option<IpAddr>,
    machine: Connection,
    out: Vec<u8>,
    rbuf: Vec<u8>,
    started: Instant,
    body_started: Option<Instant>,
    /// Packets and image bytes sent so far on this connection (for `-v`).
    packets: u64,
    payload: u64,
}

/// How a blocking read for the next request ended.
enum ReadOutcome {
    Data,
    Eof,
    TimedOut,
}

impl ConnDriver<'_> {
    fn run(&mut self) -> Result<(), ConnError> {
        loop {
            while let Some(ev) = self.machine.poll_event() {
                self.body_started = None;
                self.handle(ev)?;
                if self.machine.is_finished() {
                    return Ok(());
                }
            }
            if self.machine.is_finished() || self.machine.has_peer_eof() {
                return Ok(());
            }
            match self.read_request_bytes()? {
                ReadOutcome::Data => {}
                ReadOutcome::Eof => {
                    self.machine.handle_eof();
                }
                ReadOutcome::TimedOut => {
                    if self.machine.phase() == Phase::Body {
                        // Best effort: the peer may not be reading either.
                        self.send_error(2, server::MSG_TIMED_OUT)?;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Waits for request bytes under the deadline of the current phase (jtp.md 3.4).
    fn read_request_bytes(&mut self) -> Result<ReadOutcome, ConnError> {
        let limits = &self.svc.limits;
        let now = Instant::now();
        let phase = self.machine.phase();
        let wait = match phase {
            Phase::First => limits
                .first_request_timeout
                .saturating_sub(now - self.started),
            Phase::Idle => limits.keep_alive_timeout,
            Phase::Body => {
                let since = *self.body_started.get_or_insert(now);
                limits
                    .io_timeout
                    .min(limits.body_timeout.saturating_sub(now - since))
            }
            _ => limits.io_timeout,
        };
        if wait.is_zero() {
            return Ok(ReadOutcome::TimedOut);
        }
        let idle = matches!(phase, Phase::First | Phase::Idle);
        self.ctx.set_idle(idle);
        if idle && self.ctx.is_shutting_down() {
            self.ctx.set_idle(false);
            return Ok(ReadOutcome::Eof);
        }
        self.stream.set_read_timeout(Some(wait))?;
        let room = self.machine.input_room().min(self.rbuf.len());
        let r = self.stream.read(&mut self.rbuf[..room]);
        self.ctx.set_idle(false);
        match r {
            Ok(0) => Ok(ReadOutcome::Eof),
            Ok(n) => {
                self.machine.handle_input(&self.rbuf[..n]);
                if self.machine.phase() == Phase::Body && self.body_started.is_none() {
                    self.body_started = Some(Instant::now());
                }
                Ok(ReadOutcome::Data)
            }
            Err(e) if is_timeout(&e) => Ok(ReadOutcome::TimedOut),
            // A reset or a TLS alert: nothing more to say to this peer.
            Err(_) => Ok(ReadOutcome::Eof),
        }
    }

    fn handle(&mut self, ev: Event) -> Result<(), ConnError> {
        match ev {
            Event::Fail { code, message } => {
                self.svc
                    .log(&self.peer, format_args!("error {code}: {message}"));
                self.send_error(code, message)
            }
            Event::Cancelled => {
                response::put_cancel(&mut self.out);
                self.flush()
            }
            Event::StartWatch => {
                self.svc.log(&self.peer, format_args!("WATCH"));
                self.watch()
            }
            Event::Request(req) => {
                // Further requests on a keep-alive connection count against the rate limit
                // (the first was counted with the connection).
                if self.machine.requests() > 1 {
                    if let (Some(rate), Some(ip)) = (&self.svc.rate, self.peer_ip) {
                        if !rate.admit(ip) {
                            self.machine.close();
                            return self.send_error(5, server::MSG_RATE_LIMITED);
                        }
                    }
                }
                let keep_alive = req.keep_alive();
                // Described only for -v: the view is a lock and a snapshot away.
                let what = self
                    .svc
                    .cfg
                    .verbose
                    .then(|| describe(&req, &self.svc.view()));
                let is_list = matches!(req, Request::List { .. });
                let (packets, payload) = (self.packets, self.payload);
                self.respond(req)?;
                match what {
                    Some(what) if is_list => self.svc.log(&self.peer, format_args!("{what}")),
                    Some(what) => self.svc.log(
                        &self.peer,
                        format_args!(
                            "{what}: {} packets, {} bytes",
                            self.packets - packets,
                            self.payload - payload
                        ),
                    ),
                    None => {}
                }
                self.machine.response_done(keep_alive);
                Ok(())
            }
        }
    }

    fn send_error(&mut self, code: u8, message: &str) -> Result<(), ConnError> {
        response::put_error(code, message, &mut self.out);
        self.flush()
    }

    fn respond(&mut self, req: Request) -> Result<(), ConnError> {
        let view = self.svc.view();
        match req {
            Request::List { .. } => {
                response::put_list_header(view.items.len() as u32, &mut self.out);
                for it in &view.items {
                    response::put_entry(it.id, it.flags(), &it.entry.name, it.size, &mut self.out);
                    if self.out.len() >= OUT_FLUSH {
                        self.flush()?;
                    }
                }
                self.flush()
            }
            Request::GetById { ids, .. } => {
                let picked: Vec<&Item> = ids.iter().filter_map(|id| view.get(*id)).collect();
                let ready = resolve(&picked);
                response::put_get_header(ready.len() as u8, &mut self.out);
                self.stream_packets(&ready)
            }
            Request::Batch { have, .. } => {
                let have: HashSet<u64> = have.into_iter().collect();
                let picked: Vec<&Item> = view
                    .items
                    .iter()
                    .filter(|i| !have.contains(&i.id))
                    .collect();
                let ready = resolve(&picked);
                response::put_packets_header(MAGIC_BATCH, ready.len() as u32, &mut self.out);
                self.stream_packets(&ready)
            }
            Request::ListAndGet { .. } => {
                let picked: Vec<&Item> = view.items.iter().collect();
                let ready = resolve(&picked);
                response::put_packets_header(MAGIC_LIST_AND_GET, ready.len() as u32, &mut self.out);
                self.stream_packets(&ready)
            }
            // The machine turns these into their own events.
            Request::Cancel | Request::Watch => Ok(()),
        }
    }

    /// Sends counted packets, looking for a CANCEL in already-arrived input before each.
    fn stream_packets(&mut self, ready: &[(&Item, Arc<MappedFile>)]) -> Result<(), ConnError> {
        for (item, file) in ready {
            if self.cancel_arrived()? {
                response::put_cancel(&mut self.out);
                break;
            }
            self.send_packet(item, file)?;
        }
        self.flush()
    }

    /// Non-blocking look at input that has already arrived (jtp.md 3.5 rule 2).
    fn cancel_arrived(&mut self) -> Result<bool, ConnError> {
        let room = self.machine.input_room().min(self.rbuf.len());
        if room > 0 && !self.machine.has_peer_eof() {
            match self.stream.try_read(&mut self.rbuf[..room]) {
                Ok(TryRead::Data(n)) => self.machine.handle_input(&self.rbuf[..n]),
                Ok(TryRead::Eof) => self.machine.handle_eof(),
                Ok(TryRead::Empty) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.machine.poll_cancel())
    }

    fn send_packet(&mut self, item: &Item, file: &MappedFile) -> Result<(), ConnError> {
        self.packets += 1;
        if let Some(frame) = self.svc.compressed_form(item, file) {
            self.payload += frame.len() as u64;
            response::put_packet_header(
                item.flags() | FLAG_ZSTD,
                frame.len() as u32,
                item.id,
                &mut self.out,
            );
            self.out.extend_from_slice(&frame);
            return self.maybe_flush();
        }
        self.payload += file.len();
        response::put_packet_header(item.flags(), file.len() as u32, item.id, &mut self.out);
        bulk::send_file(&mut self.stream, &mut self.out, file).map_err(|e| match e {
            bulk::SendError::FileChanged => ConnError::FileChanged(item.entry.name.clone()),
            bulk::SendError::Io(e) => ConnError::Io(e),
        })
    }

    fn maybe_flush(&mut self) -> Result<(), ConnError> {
        if self.out.len() >= OUT_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnError> {
        Ok(bulk::flush(&mut self.stream, &mut self.out)?)
    }

    /// WATCH (jtp.md 3.6): one `JTPW` per id entering the JTP view after the subscription,
    /// in catalog order; `03 00` ends it with `JTPC`. The subscriber diffs whole snapshots, so a
    /// slow reader never loses an event: it just sees several rescans' additions at once.
    fn watch(&mut self) -> Result<(), ConnError> {
        let view = self.svc.view();
        let mut seen: HashSet<u64> = view.items.iter().map(|i| i.id).collect();
        let mut generation = view.generation;
        self.stream.set_read_timeout(Some(WATCH_POLL))?;
        loop {
            if self.ctx.is_shutting_down() {
                self.machine.close();
                return Ok(());
            }
            let room = self.machine.input_room().min(self.rbuf.len());
            match self.stream.read(&mut self.rbuf[..room]) {
                Ok(0) => {
                    self.machine.close();
                    return Ok(());
                }
                Ok(n) => {
                    self.machine.handle_input(&self.rbuf[..n]);
                    match self.machine.poll_watch_input() {
                        WatchInput::None => {}
                        WatchInput::Cancel => {
                            response::put_cancel(&mut self.out);
                            return self.flush();
                        }
                        WatchInput::Violation => {
                            return self.send_error(2, server::MSG_ONLY_CANCEL);
                        }
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(_) => {
                    self.machine.close();
                    return Ok(());
                }
            }
            let snap = self.svc.catalog.snapshot();
            if snap.generation() != generation {
                generation = snap.generation();
                let view = self.svc.view();
                for it in &view.items {
                    if seen.insert(it.id) {
                        response::put_watch_event(
                            it.id,
                            it.flags(),
                            &it.entry.name,
                            it.size,
                            &mut self.out,
                        );
                    }
                }
                // Retired ids may come back later (a file restored): announce them again then.
                seen.retain(|id| view.contains(*id));
                self.flush()?;
            }
        }
    }
}

/// A request as `-v` logs it: `LIST (12 entries)`, `GET_BY_ID of 3 ids`, `BATCH (have 10)`.
fn describe(req: &Request, view: &View) -> String {
    let ka = |k: bool| if k { ", keep-alive" } else { "" };
    match req {
        Request::List { keep_alive } => {
            format!("LIST ({} entries{})", view.items.len(), ka(*keep_alive))
        }
        Request::GetById { keep_alive, ids } => {
            format!("GET_BY_ID of {} ids{}", ids.len(), ka(*keep_alive))
        }
        Request::Batch { keep_alive, have } => {
            format!("BATCH (have {}{})", have.len(), ka(*keep_alive))
        }
        Request::ListAndGet { keep_alive } => format!("LIST_AND_GET{}", ka(*keep_alive)),
        Request::Cancel => "CANCEL".into(),
        Request::Watch => "WATCH".into(),
    }
}

/// Opens every image about to be counted; failures are left out like unknown ids (3.11).
fn resolve<'v>(items: &[&'v Item]) -> Vec<(&'v Item, Arc<MappedFile>)> {
    items
        .iter()
        .filter_map(|it| it.entry.open().ok().map(|f| (*it, f)))
        .filter(|(it, f)| f.len() == it.size as u64)
        .collect()
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Sliding-window rate limiter per source IP (jtp.md 3.7). Refusals are not recorded.
pub struct RateLimiter {
    max: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(max: u32, window: Duration) -> RateLimiter {
        RateLimiter {
            max,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records one connection or request from `ip`; false when it is over the limit.
    pub fn admit(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap();
        if !seen.contains_key(&ip) && seen.len() >= MAX_RATE_IPS {
            // Evict the address whose latest use is oldest.
            let oldest = seen
                .iter()
                .min_by_key(|(_, q)| q.back().copied())
                .map(|(ip, _)| *ip);
            if let Some(o) = oldest {
                seen.remove(&o);
            }
        }
        let q = seen.entry(ip).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() >= self.max as usize {
            return false;
        }
        q.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn j30_rate_limiter_counts_admissions_only() {
        let r = RateLimiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(r.admit(ip));
        assert!(r.admit(ip));
        assert!(!r.admit(ip));
        assert!(!r.admit(ip), "refusals are not recorded, and do not reset");
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(r.admit(other));
    }

    #[test]
    fn rate_window_slides() {
        let r = RateLimiter::new(1, Duration::from_millis(30));
        let ip: IpAddr = "::1".parse().unwrap();
        assert!(r.admit(ip));
        assert!(!r.admit(ip));
        std::thread::sleep(Duration::from_millis(40));
        assert!(r.admit(ip));
    }
}
