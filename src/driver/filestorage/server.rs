//! The filestorage service: runs one [`Connection`] machine per accepted stream (whatever the
//! endpoint: Unix socket, TCP after the tcpd preamble, TLS) and answers its events from the
//! [`Store`].
//!
//! ```text
//!   ┌─► drain events ──Write──► begin_write (claim, pwrite) ─► pending (leader / follower)
//!   │        │ Authenticate / Query / Fetch: pending writes made durable first, then answered
//!   │        ▼
//!   │   writes pending? ──yes──► more input already here (non-blocking read, within
//!   │        │                   input_room)? ──yes──► feed, drain again
//!   │        │                        │ no
//!   │        │                        ▼
//!   │        │               group commit: finish_writes (fdatasync, journal), answers in order
//!   │        ▼
//!   │   transmit what the machine has ─► finished? ─► close
//!   │        ▼
//!   └── read within input_room, timeout from poll_timeout (idle / mid-frame)
//! ```
//!
//! Chunk bytes go from the machine's one decode buffer straight into the part (`pwrite`); Oks
//! go out only after the data and the held state are durable (S20). A connection that ends
//! with writes pending still makes them durable (their Oks cannot be sent, but a resume will
//! not ask for them again).
//!
//! Out of scope: the wire (the machine), the store's files (`store`), accepting and set-up
//! (the server core).

use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::{Begun, FetchCache, Partial, PendingChunk, Store};
use super::unix_now;
use crate::proto::filestorage::frame::{nil_reply, Framing};
use crate::proto::filestorage::reason::Code;
use crate::proto::filestorage::server::{
    Answer, Connection, Event, FetchData, ServerConfig, Ticket,
};
use crate::server::{ConnCtx, Peer, Service};
use crate::transport::{Stream, TryRead};

/// Read buffer per connection: one whole frame (the machine never wants more at once).
const READ_BUF: usize = 100_000;
/// Replies held before they are written out in the middle of a burst of requests.
const MAX_OUT: usize = 256 * 1024;
/// How long a closing connection lingers for its peer's input.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// The service every filestorage endpoint shares.
pub struct FilestorageService {
    store: Arc<Store>,
    config: Arc<ServerConfig>,
    verbose: bool,
}

impl FilestorageService {
    pub fn new(store: Arc<Store>, config: ServerConfig, verbose: bool) -> FilestorageService {
        FilestorageService {
            store,
            config: Arc::new(config),
            verbose,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

impl Service for FilestorageService {
    fn name(&self) -> &'static str {
        "filestorage"
    }

    /// Above `max_connections` a connection is closed at once without a byte (spec 3.3).
    fn busy_reply(&self) -> Option<Vec<u8>> {
        None
    }

    fn serve(&self, stream: Stream, peer: &Peer, ctx: &ConnCtx) {
        let mut conn = Connection::new(self.config.clone(), Instant::now(), unix_now());
        let mut s = Session {
            store: &self.store,
            stream,
            ctx,
            peer: peer.to_string(),
            verbose: self.verbose,
            io_timeout: self.config.limits.io_timeout,
            half_window: (self.config.limits.window as usize / 2).max(1),
            rbuf: vec![0u8; READ_BUF],
            out: Vec::new(),
            leaders: Vec::new(),
            followers: Vec::new(),
            active: None,
            fetch_cache: FetchCache::default(),
            fetch_buf: Vec::new(),
            read_timeout: None,
        };
        let run = catch_unwind(AssertUnwindSafe(|| s.run(&mut conn)));
        let end = match run {
            Ok(end) => {
                // Whatever was written is made durable, answered or not.
                s.flush_writes(&mut conn);
                end
            }
            Err(panic) => {
                // A bug caught at the connection boundary (spec 8 `internal`): logged, the
                // nil-id reply, the connection closed. Claims it held are given back so that
                // other connections can write those chunks.
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|m| m.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                eprintln!("filestorage: {}: internal error: {what}", s.peer);
                for (_, c) in s.leaders.drain(..) {
                    s.store.abandon(&c);
                }
                s.followers.clear();
                let mut reply = Vec::new();
                nil_reply(
                    &mut reply,
                    conn.framing().unwrap_or(Framing::Current),
                    Code::Internal,
                );
                let _ = s.stream.write_all(&reply);
                End::Clean
            }
        };
        if let Some(p) = s.active.take() {
            s.store.release(&p);
        }
        s.log(format_args!("closed ({end:?})"));
        if end == End::Clean {
            s.stream.close_gracefully(CLOSE_LINGER);
        }
    }
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The machine finished (EOF, a closing error reply, server shutdown): close in order.
    Clean,
    /// A transport error or a timeout: drop the socket.
    Cut,
}

struct Session<'a> {
    store: &'a Store,
    stream: Stream,
    ctx: &'a ConnCtx,
    peer: String,
    verbose: bool,
    io_timeout: Duration,
    /// Writes gathered before a group commit at most.
    half_window: usize,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    /// Chunks this connection wrote, waiting for the group commit.
    leaders: Vec<(Ticket, PendingChunk)>,
    /// Chunks another connection is writing, waiting for that claim.
    followers: Vec<(Ticket, PendingChunk)>,
    /// The transfer the machine has active, held against retention.
    active: Option<Arc<Partial>>,
    fetch_cache: FetchCache,
    fetch_buf: Vec<u8>,
    /// The read timeout the socket has now (`None`: unknown).
    read_timeout: Option<Duration>,
}

impl Session<'_> {
    fn log(&self, msg: std::fmt::Arguments<'_>) {
        if self.verbose {
            eprintln!("filestorage: {}: {msg}", self.peer);
        }
    }

    fn run(&mut self, conn: &mut Connection) -> End {
        let mut stalls = 0;
        loop {
            if let Err(e) = self.drain(conn) {
                self.log(format_args!("write: {e}"));
                conn.close();
                return End::Cut;
            }
            let pending = self.leaders.len() + self.followers.len();
            if pending > 0 {
                // Group commit: first take what has already arrived, up to half the window (so
                // the client keeps credit to send while this group is made durable).
                let room = conn.input_room().min(self.rbuf.len());
                if room > 0 && pending < self.half_window {
                    match self.stream.try_read(&mut self.rbuf[..room]) {
                        Ok(TryRead::Data(n)) => {
                            conn.handle_input(&self.rbuf[..n], Instant::now(), unix_now());
                            continue;
                        }
                        Ok(TryRead::Eof) => {
                            conn.handle_eof();
                            continue;
                        }
                        Ok(TryRead::Empty) => {}
                        Err(e) => {
                            self.log(format_args!("read: {e}"));
                            conn.close();
                            return End::Cut;
                        }
                    }
                }
                self.flush_writes(conn);
            }
            conn.poll_transmit(&mut self.out);
            if !self.out.is_empty() {
                if let Err(e) = self.stream.write_all(&self.out) {
                    self.log(format_args!("write: {e}"));
                    conn.close();
                    return End::Cut;
                }
                self.out.clear();
            }
            if conn.is_finished() {
                return End::Clean;
            }
            let room = conn.input_room().min(self.rbuf.len());
            if room == 0 {
                // Decoding is paused only while answers are owed, and they were all given:
                // the machine has more to hand out. Never spin on it.
                stalls += 1;
                if stalls > 8 {
                    self.log(format_args!("no progress; closing"));
                    conn.close();
                    return End::Cut;
                }
                continue;
            }
            stalls = 0;
            let idle = conn.is_idle();
            self.ctx.set_idle(idle);
            if idle && self.ctx.is_shutting_down() {
                return End::Clean;
            }
            let now = Instant::now();
            let wait = conn
                .poll_timeout()
                .map_or(self.io_timeout, |t| t.saturating_duration_since(now))
                .max(Duration::from_millis(1));
            if let Err(e) = self.arm_read_timeout(wait) {
                self.log(format_args!("timeout: {e}"));
                conn.close();
                return End::Cut;
            }
            let r = self.stream.read(&mut self.rbuf[..room]);
            self.ctx.set_idle(false);
            match r {
                Ok(0) => conn.handle_eof(),
                Ok(n) => conn.handle_input(&self.rbuf[..n], Instant::now(), unix_now()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    conn.handle_timeout(Instant::now());
                    if conn.is_finished() {
                        self.log(format_args!("timed out"));
                        return End::Cut;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.log(format_args!("read: {e}"));
                    conn.close();
                    return End::Cut;
                }
            }
        }
    }

    /// Acts on every event the machine has. Replies are written out whenever more than
    /// [`MAX_OUT`] of them are ready, so a client that pipelines FETCHes and does not read
    /// holds one socket buffer of replies, not all of them (its writes then stall and time out).
    fn drain(&mut self, conn: &mut Connection) -> io::Result<()> {
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Write { ticket, write } => {
                    match self.store.begin_write(self.active.as_ref(), &write) {
                        Begun::Done(outcome) => answer(conn, ticket, Answer::Write(outcome)),
                        Begun::Leader(c) => self.leaders.push((ticket, c)),
                        Begun::Follower(c) => self.followers.push((ticket, c)),
                    }
                }
                Event::Authenticate { ticket, call } => {
                    self.flush_writes(conn);
                    let now = unix_now().max(0) as u64;
                    match self.store.authenticate(&call, now) {
                        Ok(a) => {
                            self.log(format_args!(
                                "authenticated {} (uid {}) for {}: {} chunks missing",
                                call.login,
                                call.uid,
                                call.fid,
                                a.missing.missing_chunks()
                            ));
                            answer(conn, ticket, Answer::Auth(Ok(&a.missing)));
                            self.set_active(a.partial);
                        }
                        Err(reason) => {
                            self.log(format_args!("authentication of {}: {reason}", call.fid));
                            answer(conn, ticket, Answer::Auth(Err(reason)));
                            self.set_active(None);
                        }
                    }
                }
                Event::Query { ticket, call } => {
                    self.flush_writes(conn);
                    let page = self.store.query(&call);
                    answer(conn, ticket, Answer::Query(Ok(page)));
                }
                Event::Fetch { ticket, call } => {
                    self.flush_writes(conn);
                    let r = self
                        .store
                        .fetch(&call, &mut self.fetch_cache, &mut self.fetch_buf);
                    let data = r.map(|eof| FetchData {
                        bytes: &self.fetch_buf,
                        eof,
                    });
                    answer(conn, ticket, Answer::Fetch(data));
                }
            }
            conn.poll_transmit(&mut self.out);
            if self.out.len() >= MAX_OUT {
                self.stream.write_all(&self.out)?;
                self.out.clear();
            }
        }
        // The machine drops its active transfer on any AUTHENTICATION, even a malformed one.
        if let Some(p) = &self.active {
            if conn.active_fid() != Some(p.fid()) {
                let p = self.active.take().expect("checked");
                self.store.release(&p);
            }
        }
        Ok(())
    }

    /// Sets the socket's read timeout to `wait`, or keeps the one already set when it is at
    /// most `wait` and short of it by at most 1/64: a timeout that fires a little early only
    /// costs one more turn of the loop (the machine's deadlines decide), while a `setsockopt`
    /// per read was one system call in eight of a lockstep TRANSFER (strace of the seed's shape).
    fn arm_read_timeout(&mut self, wait: Duration) -> io::Result<()> {
        if self
            .read_timeout
            .is_some_and(|cur| cur <= wait && cur >= wait - wait / 64)
        {
            return Ok(());
        }
        self.read_timeout = None;
        self.stream.set_read_timeout(Some(wait))?;
        self.read_timeout = Some(wait);
        Ok(())
    }

    fn set_active(&mut self, p: Option<Arc<Partial>>) {
        if let Some(old) = std::mem::replace(&mut self.active, p) {
            self.store.release(&old);
        }
    }

    /// The group commit: makes every pending chunk durable and answers it.
    fn flush_writes(&mut self, conn: &mut Connection) {
        let now = unix_now().max(0) as u64;
        let leaders = std::mem::take(&mut self.leaders);
        let mut i = 0;
        while i < leaders.len() {
            let p = leaders[i].1.partial.clone();
            let run = leaders[i..]
                .iter()
                .take_while(|(_, c)| Arc::ptr_eq(&c.partial, &p))
                .count();
            let group = &leaders[i..i + run];
            let items: Vec<(u32, u64, u64)> =
                group.iter().map(|(_, c)| (c.file, c.n, c.len)).collect();
            let outcomes = self.store.finish_writes(&p, &items, now);
            for ((ticket, _), outcome) in group.iter().zip(outcomes) {
                answer(conn, *ticket, Answer::Write(outcome));
            }
            i += run;
        }
        for (ticket, c) in std::mem::take(&mut self.followers) {
            let outcome = self.store.wait_follower(&c, self.io_timeout);
            answer(conn, ticket, Answer::Write(outcome));
        }
    }
}

/// Hands an answer to the machine. An unknown ticket means the connection closed meanwhile
/// (its answers can no longer be sent); nothing else can fail here.
fn answer(conn: &mut Connection, ticket: Ticket, a: Answer<'_>) {
    let r = conn.handle_answer(ticket, a);
    debug_assert!(
        r.is_ok() || conn.is_finished(),
        "filestorage: answer refused: {r:?}"
    );
}
