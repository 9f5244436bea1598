//! Large files published as a block list (cjp2p.md 7.1): the file cut into 262144-byte blocks,
//! each ordinary content under its own SHA-256, and a text file listing those ids in order.
//!
//! [`parse`] is pure. [`fetch`] drives a running [`NodeHandle`]: it downloads the list, then each
//! block as its own verified download (several at once, from every source), kept apart in
//! `OUT/.ferry/blocks/` so a rerun skips finished blocks and a corrupt block costs one block; then
//! it assembles the file through ingest (running SHA-256, checked against the file id when given)
//! and publishes it under its name in OUT.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::node::{hex, parse_id, NodeHandle, Outcome};
use crate::ingest::{Expect, IngestDir};

/// Most ids a list may hold.
pub const MAX_BLOCKS: usize = 1_048_576;
/// Longest list text read: `MAX_BLOCKS` ids of 64 characters plus a separator each.
const MAX_LIST_BYTES: u64 = MAX_BLOCKS as u64 * 65;
/// Block downloads in flight at once.
const PARALLEL: usize = 8;

/// The ids of a block list: 64-lowercase-hex ids separated by any ASCII whitespace.
pub fn parse(text: &[u8]) -> Result<Vec<[u8; 32]>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "block list is not text".to_string())?;
    let mut ids = Vec::new();
    for (n, word) in text.split_ascii_whitespace().enumerate() {
        if n >= MAX_BLOCKS {
            return Err(format!("block list names more than {MAX_BLOCKS} blocks"));
        }
        ids.push(
            parse_id(word)
                .ok_or_else(|| format!("block list entry {} is not an id: {word:?}", n + 1))?,
        );
    }
    if ids.is_empty() {
        return Err("block list is empty".into());
    }
    Ok(ids)
}

/// Why [`fetch`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The list or a block could not be fetched or verified, or the list is not a block list.
    Failed(String),
    /// A local error: the output folder could not be written or read.
    Local(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Failed(why) | FetchError::Local(why) => f.write_str(why),
        }
    }
}

impl From<String> for FetchError {
    fn from(why: String) -> FetchError {
        FetchError::Failed(why)
    }
}

fn local(why: impl std::fmt::Display) -> FetchError {
    FetchError::Local(why.to_string())
}

/// What [`fetch`] produced.
#[derive(Debug)]
pub struct Fetched {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: [u8; 32],
    pub blocks: usize,
}

/// Fetches the file listed by `list_id` into `out` (see the module doc). `file_id`, when given,
/// must be the SHA-256 of the assembled file; the file is named `name`, or its SHA-256.
pub fn fetch(
    node: &NodeHandle,
    list_id: [u8; 32],
    file_id: Option<[u8; 32]>,
    peers: &[SocketAddr],
    out: &Path,
    name: Option<String>,
    stop: &AtomicBool,
) -> Result<Fetched, FetchError> {
    let list_path = wait(node.download(list_id, peers.to_vec(), hex(&list_id)), stop)?;
    let mut text = Vec::new();
    std::fs::File::open(&list_path)
        .map_err(|e| local(format!("{}: {e}", list_path.display())))?
        .take(MAX_LIST_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| local(format!("{}: {e}", list_path.display())))?;
    if text.len() as u64 > MAX_LIST_BYTES {
        return Err(FetchError::Failed("block list is too long".into()));
    }
    let ids = parse(&text)?;
    let blocks_dir = out.join(".ferry").join("blocks");
    std::fs::create_dir_all(&blocks_dir)
        .map_err(|e| local(format!("{}: {e}", blocks_dir.display())))?;

    // Blocks already fetched by an earlier run are there under their ids (they appear only
    // after verification), so a rerun skips them.
    let mut seen = std::collections::HashSet::new();
    let mut pending: Vec<[u8; 32]> = ids
        .iter()
        .filter(|id| seen.insert(**id) && !blocks_dir.join(hex(*id)).exists())
        .copied()
        .collect();
    pending.reverse();
    let mut running: Vec<([u8; 32], mpsc::Receiver<Outcome>)> = Vec::new();
    while !pending.is_empty() || !running.is_empty() {
        if stop.load(Ordering::SeqCst) {
            return Err(FetchError::Failed("interrupted".into()));
        }
        while running.len() < PARALLEL {
            let Some(id) = pending.pop() else { break };
            let rx = node.download_into(id, peers.to_vec(), hex(&id), Some(blocks_dir.clone()));
            running.push((id, rx));
        }
        let mut failed = None;
        running.retain(|(id, rx)| match rx.try_recv() {
            Ok(Outcome::Done { .. }) => false,
            Ok(Outcome::Failed(why)) => {
                failed = Some(FetchError::Failed(format!("block {}: {why}", hex(id))));
                false
            }
            Ok(Outcome::LocalError(why)) => {
                failed = Some(local(format!("block {}: {why}", hex(id))));
                false
            }
            Err(mpsc::TryRecvError::Empty) => true,
            Err(mpsc::TryRecvError::Disconnected) => {
                failed = Some(FetchError::Failed("node stopped".into()));
                false
            }
        });
        if let Some(f) = failed {
            return Err(f);
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    // Every block but the last has the first block's size.
    let sizes: Vec<u64> = ids
        .iter()
        .map(|id| std::fs::metadata(blocks_dir.join(hex(id))).map(|m| m.len()))
        .collect::<Result<_, _>>()
        .map_err(|e| local(format!("block: {e}")))?;
    let block = sizes[0];
    if sizes[..sizes.len() - 1].iter().any(|&s| s != block) || sizes[sizes.len() - 1] > block {
        return Err(FetchError::Failed(
            "blocks are not of one size (but a shorter last one)".into(),
        ));
    }
    let total: u64 = sizes.iter().sum();
    let work = out.join(".ferry").join("ingest").join("cjp2p");
    let ingest = IngestDir::new(out, &work).map_err(local)?;
    let mut sink = ingest.begin_stream(Some(total)).map_err(local)?;
    let mut buf = vec![0u8; 1 << 20];
    for id in &ids {
        let p = blocks_dir.join(hex(id));
        let mut f = std::fs::File::open(&p).map_err(|e| local(format!("{}: {e}", p.display())))?;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| local(format!("{}: {e}", p.display())))?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n]).map_err(local)?;
        }
    }
    let sha = sink
        .sha256()
        .ok_or_else(|| FetchError::Failed("no hash".into()))?;
    if let Some(want) = file_id {
        if want != sha {
            return Err(FetchError::Failed(format!(
                "assembled file is {}, not {}",
                hex(&sha),
                hex(&want)
            )));
        }
    }
    let name = name.unwrap_or_else(|| hex(&sha));
    let c = sink.commit(&name, Expect::Sha256(sha)).map_err(local)?;
    for id in &ids {
        let _ = std::fs::remove_file(blocks_dir.join(hex(id)));
    }
    Ok(Fetched {
        path: c.path,
        size: c.size,
        sha256: sha,
        blocks: ids.len(),
    })
}

fn wait(rx: mpsc::Receiver<Outcome>, stop: &AtomicBool) -> Result<PathBuf, FetchError> {
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Outcome::Done { path, .. }) => return Ok(path),
            Ok(Outcome::Failed(why)) => return Err(FetchError::Failed(why)),
            Ok(Outcome::LocalError(why)) => return Err(FetchError::Local(why)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::SeqCst) {
                    return Err(FetchError::Failed("interrupted".into()));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(FetchError::Failed("node stopped".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c37_parses_ids_separated_by_any_whitespace() {
        let a = "a".repeat(64);
        let b = "0".repeat(64);
        let ids = parse(format!("{a}\n{b}\r\n\t{a} ").as_bytes()).unwrap();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0], [0xaa; 32]);
        assert_eq!(ids[1], [0; 32]);
    }

    #[test]
    fn c37_refuses_bad_entries_and_empty_lists() {
        assert!(parse(b"").is_err());
        assert!(parse(b" \n ").is_err());
        assert!(parse("A".repeat(64).as_bytes()).is_err(), "upper case");
        assert!(parse(b"../etc/passwd").is_err());
        assert!(parse(&[0xff, 0xfe]).is_err());
    }
}
