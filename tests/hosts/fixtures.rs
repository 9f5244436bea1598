//! Test data and checks: deterministic files, folder trees compared by SHA-256.

#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Deterministic pseudo-random bytes (xorshift).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes `len` pseudo-random bytes to `path` in 1 MiB pieces.
pub fn write_file(path: &Path, seed: u64, len: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut left = len;
    let mut piece = 0u64;
    while left > 0 {
        let n = left.min(1 << 20);
        f.write_all(&pseudo_random(seed ^ piece.rotate_left(17), n as usize))
            .unwrap();
        left -= n;
        piece += 1;
    }
    f.flush().unwrap();
}

/// [`write_file`] to a hidden temporary, then renamed into place, as a careful writer does (a
/// folder scanned by polling never sees it half-written).
pub fn write_file_atomic(path: &Path, seed: u64, len: u64) {
    let name = path.file_name().unwrap().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write_file(&tmp, seed, len);
    std::fs::rename(&tmp, path).unwrap();
}

pub fn sha256_file(p: &Path) -> [u8; 32] {
    try_sha256_file(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// SHA-256 of a file that may vanish meanwhile (a folder being synced).
pub fn try_sha256_file(p: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every regular, non-dot file of `dir` with its SHA-256, sorted by name. A file that vanishes
/// while it is read (the folder is being synced) is left out: callers compare and poll.
pub fn tree(dir: &Path) -> Vec<(String, [u8; 32])> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .filter_map(|n| {
            let h = try_sha256_file(&dir.join(&n)).ok()?;
            Some((n, h))
        })
        .collect();
    v.sort();
    v
}

/// Polls `check` every 50 ms until it holds or `timeout` passes; returns the time it took.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
