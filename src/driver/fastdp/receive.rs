//! The data receiver's half of a connection, shared by the server in push and the client in
//! pull: chunk payload slices decompressed (Zstd) and written at their offsets in the shared
//! transfer's `.part`, the CRC-32C of each uncompressed chunk, and acknowledgements of durable
//! chunks only (fastdp.md 2.5, 2.8, 4.1).
//!
//! ```text
//!  ChunkStart ──claim (Replace)──► writing ──payload slices──► ChunkEnd ──CRC recorded,
//!       │ held elsewhere / busy: the copy is read and dropped                block finished──► stored
//!       └─ ChunkAborted (cut off): the claim is released, the chunk stays missing (F15)
//!  AckDue / FinReceived ──► transfer.sync() (one fdatasync for every waiting connection)
//!       ──► CRC bits set and synced ──► Ack of the durable chunks with the CRCs held
//! ```
//!
//! Out of scope: the socket loop (the drivers), the machines' schedules (when to Ack).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ingest::{
    BlockWriter, Claim, Collision, IngestError, Publication, Rewrite, Transfer, TransferError,
    TransferState,
};
use crate::proto::fastdp::client::PullClient;
use crate::proto::fastdp::connection::Payload;
use crate::proto::fastdp::crc::Crc32c;
use crate::proto::fastdp::frame::{Compress, Geometry};
use crate::proto::fastdp::messages::ErrorMsg;
use crate::proto::fastdp::server::ServerConnection;
use crate::proto::fastdp::zstd_chunk::{ChunkInflater, FeedError};

/// Output buffer of the zstd inflater.
const INFLATE_BUF: usize = 64 * 1024;

/// Where the CRC-32C of stored chunks is kept: the server's `.state`, the client's memory.
pub trait CrcBook: Sync {
    /// Records the CRC of chunk `i`'s latest complete copy (called while it is still claimed).
    fn put(&self, i: u32, crc: u32) -> io::Result<()>;
    /// The CRC held for chunk `i`.
    fn get(&self, i: u32) -> io::Result<u32>;
    /// A replacement of chunk `i` begins: its CRC no longer counts.
    fn clear(&self, i: u32) -> io::Result<()>;
    /// These chunks were made durable: record that before they are acknowledged.
    fn durable(&self, chunks: &[u32]) -> io::Result<()>;
}

/// The CRC book of a download: in memory (a pull keeps no per-chunk state on disk but the
/// registry's bitmap; `Have` carries no CRCs).
#[derive(Debug, Default)]
pub struct MemoryCrcs {
    map: std::sync::Mutex<std::collections::HashMap<u32, u32>>,
}

impl CrcBook for MemoryCrcs {
    fn put(&self, i: u32, crc: u32) -> io::Result<()> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(i, crc);
        Ok(())
    }
    fn get(&self, i: u32) -> io::Result<u32> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&i)
            .copied()
            .ok_or_else(|| io::Error::other("fastdp: no CRC recorded for an acknowledged chunk"))
    }
    fn clear(&self, _i: u32) -> io::Result<()> {
        Ok(())
    }
    fn durable(&self, _chunks: &[u32]) -> io::Result<()> {
        Ok(())
    }
}

impl CrcBook for super::state::StateFile {
    fn put(&self, i: u32, crc: u32) -> io::Result<()> {
        self.put_crc(i, crc)
    }
    fn get(&self, i: u32) -> io::Result<u32> {
        self.crc(i)
    }
    fn clear(&self, i: u32) -> io::Result<()> {
        if self.has_bit(i)? {
            self.set_bits(&[i], false, false)?;
        }
        Ok(())
    }
    fn durable(&self, chunks: &[u32]) -> io::Result<()> {
        self.set_bits(chunks, true, true)
    }
}

/// The calls of a data receiver machine the sink answers (server push, client pull).
pub trait ReceiverMachine {
    fn chunk_stored(&mut self, now: Instant, chunk: u32, all_held: bool);
    fn chunk_failed(&mut self, chunk: u32, why: &str);
    fn ack(&mut self, durable: &[(u32, u32)]);
    fn answer_fin(&mut self, now: Instant, durable: &[(u32, u32)], all_held: bool);
    fn fail(&mut self, e: ErrorMsg);
}

impl ReceiverMachine for ServerConnection {
    fn chunk_stored(&mut self, now: Instant, chunk: u32, all_held: bool) {
        ServerConnection::chunk_stored(self, now, chunk, all_held)
    }
    fn chunk_failed(&mut self, chunk: u32, why: &str) {
        ServerConnection::chunk_failed(self, chunk, why)
    }
    fn ack(&mut self, durable: &[(u32, u32)]) {
        ServerConnection::ack(self, durable)
    }
    fn answer_fin(&mut self, now: Instant, durable: &[(u32, u32)], all_held: bool) {
        ServerConnection::answer_fin(self, now, durable, all_held)
    }
    fn fail(&mut self, e: ErrorMsg) {
        ServerConnection::fail(self, e)
    }
}

impl ReceiverMachine for PullClient {
    fn chunk_stored(&mut self, now: Instant, chunk: u32, all_held: bool) {
        PullClient::chunk_stored(self, now, chunk, all_held)
    }
    fn chunk_failed(&mut self, chunk: u32, why: &str) {
        PullClient::chunk_failed(self, chunk, why)
    }
    fn ack(&mut self, durable: &[(u32, u32)]) {
        PullClient::ack(self, durable)
    }
    fn answer_fin(&mut self, now: Instant, durable: &[(u32, u32)], all_held: bool) {
        PullClient::answer_fin(self, now, durable, all_held)
    }
    fn fail(&mut self, e: ErrorMsg) {
        PullClient::fail(self, e)
    }
}

/// The chunk being received.
struct Current<'t> {
    chunk: u32,
    /// `None`: this copy is read and dropped (another connection writes the chunk, or the
    /// transfer holds it already).
    writer: Option<BlockWriter<'t>>,
    crc: Crc32c,
}

/// Why receiving failed locally (not the peer's fault): the connection ends with `internal`
/// (or `no-space`).
#[derive(Debug)]
pub struct LocalError(pub crate::ingest::TransferError);

impl std::fmt::Display for LocalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl LocalError {
    /// The Error to send: `no-space` for a full disk, else `internal`.
    pub fn to_error(&self) -> ErrorMsg {
        use crate::ingest::{IngestError, TransferError};
        use crate::proto::fastdp::messages::ErrorCode;
        let code = match &self.0 {
            TransferError::Ingest(IngestError::NoSpace) => ErrorCode::NoSpace,
            _ => ErrorCode::Internal,
        };
        ErrorMsg::new(code, self.0.to_string())
    }
}

fn io_err(e: io::Error) -> LocalError {
    LocalError(e.into())
}

/// Serialises the writes of one transfer's connections into its `.part`.
///
/// Every `pwrite` into one file takes that inode's lock; with several connections the waiting
/// ones spin in the kernel for it (`rwsem_down_write_slowpath`, about 9 % of a 4-connection
/// pull's client CPU), on the core the background hasher needs. Waiting on this lock instead
/// sleeps after a short spin.
#[derive(Debug, Default)]
pub struct WriteGate(std::sync::Mutex<()>);

impl WriteGate {
    fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Receives chunks of one transfer on one connection (module doc).
pub struct ChunkSink<'t> {
    transfer: &'t Transfer,
    crcs: &'t dyn CrcBook,
    gate: &'t WriteGate,
    geometry: Geometry,
    compress: Compress,
    current: Option<Current<'t>>,
    inflater: Option<ChunkInflater>,
    out: Vec<u8>,
    /// Payload bytes received (compressed size with Zstd).
    pub wire_bytes: u64,
    /// Chunks stored by this connection.
    pub stored: u64,
}

impl<'t> ChunkSink<'t> {
    /// `gate`: the transfer's, shared by all its connections.
    pub fn new(
        transfer: &'t Transfer,
        crcs: &'t dyn CrcBook,
        gate: &'t WriteGate,
        geometry: Geometry,
        compress: Compress,
    ) -> ChunkSink<'t> {
        ChunkSink {
            transfer,
            crcs,
            gate,
            geometry,
            compress,
            current: None,
            inflater: None,
            out: Vec::new(),
            wire_bytes: 0,
            stored: 0,
        }
    }

    /// `ChunkStart`: claims the chunk (the latest complete copy wins, 2.5).
    pub fn start(&mut self, chunk: u32) -> Result<(), LocalError> {
        self.current = None;
        let writer = match self
            .transfer
            .claim(u64::from(chunk), Rewrite::Replace)
            .map_err(LocalError)?
        {
            Claim::Write(w) => {
                self.crcs.clear(chunk).map_err(io_err)?;
                Some(w)
            }
            Claim::Held | Claim::Busy => None,
        };
        if writer.is_some() && self.compress == Compress::Zstd {
            if self.inflater.is_none() {
                self.inflater =
                    Some(ChunkInflater::new().map_err(|e| io_err(io::Error::other(e)))?);
                self.out = vec![0; INFLATE_BUF];
            }
            if let Some(z) = self.inflater.as_mut() {
                z.begin(self.geometry.len(chunk));
            }
        }
        self.current = Some(Current {
            chunk,
            writer,
            crc: Crc32c::new(),
        });
        Ok(())
    }

    /// A payload slice: written (inflated first with Zstd). `Ok(Some(why))`: the chunk's
    /// payload is bad (`bad-chunk`).
    pub fn payload(&mut self, p: Payload<'_>) -> Result<Option<String>, LocalError> {
        self.wire_bytes += p.bytes.len() as u64;
        let Some(cur) = self.current.as_mut().filter(|c| c.chunk == p.chunk) else {
            return Ok(None);
        };
        let Some(w) = cur.writer.as_mut() else {
            return Ok(None);
        };
        match (self.compress, self.inflater.as_mut()) {
            (Compress::Zstd, Some(z)) => {
                let crc = &mut cur.crc;
                let gate = self.gate;
                let r = z.feed(p.bytes, &mut self.out, &mut |d: &[u8]| {
                    crc.update(d);
                    let _held = gate.hold();
                    w.write(d)
                });
                match r {
                    Ok(()) => Ok(None),
                    Err(FeedError::Zstd(e)) => {
                        self.current = None;
                        Ok(Some(e.to_string()))
                    }
                    Err(FeedError::Sink(e)) => {
                        self.current = None;
                        Err(LocalError(e))
                    }
                }
            }
            _ => {
                cur.crc.update(p.bytes);
                let written = {
                    let _held = self.gate.hold();
                    w.write(p.bytes)
                };
                if let Err(e) = written {
                    self.current = None;
                    return Err(LocalError(e));
                }
                Ok(None)
            }
        }
    }

    /// `ChunkEnd`: the chunk is finished and reported stored, or failed as `bad-chunk`.
    pub fn end<M: ReceiverMachine>(
        &mut self,
        now: Instant,
        m: &mut M,
        chunk: u32,
    ) -> Result<(), LocalError> {
        let Some(cur) = self.current.take().filter(|c| c.chunk == chunk) else {
            return Ok(());
        };
        let Some(w) = cur.writer else {
            // A dropped copy: acknowledge what is held once it is durable, if it is.
            if self.transfer.is_written(u64::from(chunk)) {
                m.chunk_stored(now, chunk, self.transfer.is_complete());
            }
            return Ok(());
        };
        if self.compress == Compress::Zstd {
            if let Some(Err(e)) = self.inflater.as_mut().map(|z| z.finish()) {
                m.chunk_failed(chunk, &e.to_string());
                return Ok(());
            }
        }
        if w.written() != w.len() {
            m.chunk_failed(chunk, "payload shorter than the chunk");
            return Ok(());
        }
        // The CRC goes in while the block is still claimed: no later copy can be overtaken.
        self.crcs.put(chunk, cur.crc.value()).map_err(io_err)?;
        w.finish().map_err(LocalError)?;
        self.stored += 1;
        m.chunk_stored(now, chunk, self.transfer.is_complete());
        Ok(())
    }

    /// `ChunkAborted`: the copy was cut off; its claim is released.
    pub fn abort(&mut self) {
        self.current = None;
    }

    /// Makes the transfer durable and returns the chunks of `chunks` now durable with the CRC
    /// of what is held (for `ack` / `answer_fin`).
    pub fn durable(&mut self, chunks: &[u32]) -> Result<Vec<(u32, u32)>, LocalError> {
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        self.transfer.sync().map_err(LocalError)?;
        let durable: Vec<u32> = chunks
            .iter()
            .copied()
            .filter(|&c| self.transfer.is_durable(u64::from(c)))
            .collect();
        self.crcs.durable(&durable).map_err(io_err)?;
        let mut out = Vec::with_capacity(durable.len());
        for c in durable {
            out.push((c, self.crcs.get(c).map_err(io_err)?));
        }
        Ok(out)
    }

    pub fn transfer(&self) -> &'t Transfer {
        self.transfer
    }
}

/// Verifies and publishes the complete transfer `t` under `name` once for all its connections
/// (the first caller commits, on a helper thread; later ones wait for the same outcome),
/// calling `tick` at least every second meanwhile so the caller sends its keepalive Acks
/// (F30). The 4.3 name rules: `stem-1.ext`.. for a name taken by other bytes, nothing new
/// stored when the same bytes are there.
pub fn commit_once(
    t: &Transfer,
    name: &str,
    tick: &mut dyn FnMut(),
) -> Result<Arc<Publication>, TransferError> {
    std::thread::scope(|s| {
        let mut committer = matches!(t.state(), TransferState::Open)
            .then(|| s.spawn(move || t.commit(name, Collision::Numbered)));
        loop {
            match t.wait_outcome(Duration::from_secs(1)) {
                TransferState::Completed(p) => return Ok(p),
                TransferState::Failed(e) => return Err(TransferError::Failed(e)),
                TransferState::Open => {
                    if committer.as_ref().is_some_and(|c| c.is_finished()) {
                        // It returned before moving the state: its own error (or none, and
                        // the state says the rest at the next look).
                        let joined = committer.take().map(|c| {
                            c.join().unwrap_or_else(|_| {
                                Err(TransferError::Ingest(IngestError::Io(io::Error::other(
                                    "commit panicked",
                                ))))
                            })
                        });
                        if let Some(Err(e)) = joined {
                            return Err(e);
                        }
                        continue;
                    } else if committer.is_none() {
                        // Another connection has not begun its commit yet: begin it here.
                        committer = Some(s.spawn(move || t.commit(name, Collision::Numbered)));
                    }
                }
                TransferState::Verifying => {}
            }
            tick();
        }
    })
}
