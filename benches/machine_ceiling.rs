//! Machine ceilings the transfer benchmarks are judged against, measured with the same crates
//! and system calls ferry uses:
//!
//! - `sha256`: SHA-256 (`sha2`, SHA-NI where the CPU has it) over an in-memory buffer, one core;
//!   TEJ and CJP2P hash every byte with it, TEJ on both sides;
//! - `xxh64`: xxHash64 (`twox-hash`), one core; JTP's ids;
//! - `write:<DIR>`: writing `BYTES` into a new file in each DIR given, from a 1 MiB buffer with
//!   write(2) (no fsync), the last step of every download; the file is removed afterwards.
//!
//! `make bench` runs it through `benches/bench.py`; by hand:
//! `cargo bench --bench machine_ceiling -- [BYTES] [DIR...]`. It prints one JSON object on
//! stdout: `{"bytes":N,"sha256_gbps":G,"xxh64_gbps":G,"write_gbps":{"DIR":G,...}}`, where GB/s
//! is 10^9 bytes per second.

use std::hash::Hasher;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use sha2::{Digest, Sha256};

const BUF: usize = 1 << 20;
/// The hashes run over this much memory, again and again (larger than the caches).
const HASH_BUF: usize = 64 << 20;
const DEFAULT_BYTES: u64 = 1 << 30;

fn main() {
    // Cargo passes `--bench` to harness-less benches: numbers are the size, other arguments
    // that are not flags are folders to write into.
    let mut total = DEFAULT_BYTES;
    let mut dirs = Vec::new();
    for a in std::env::args().skip(1) {
        if let Ok(n) = a.parse::<u64>() {
            total = n;
        } else if !a.starts_with('-') {
            dirs.push(PathBuf::from(a));
        }
    }
    let data: Vec<u8> = (0..HASH_BUF)
        .map(|i| {
            (i as u64)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(17) as u8
        })
        .collect();
    let sha = rate(total, || {
        let mut h = Sha256::new();
        feed(total, &data, |c| h.update(c));
        std::hint::black_box(h.finalize());
    });
    let xxh = rate(total, || {
        let mut h = twox_hash::XxHash64::with_seed(0);
        feed(total, &data, |c| h.write(c));
        std::hint::black_box(h.finish());
    });
    let mut writes = Vec::new();
    for d in &dirs {
        let path = d.join(format!(".machine-ceiling-{}", std::process::id()));
        let g = match write_rate(&path, total, &data[..BUF]) {
            Ok(g) => format!("{g:.3}"),
            Err(e) => {
                eprintln!("machine_ceiling: {}: {e}", path.display());
                "null".to_owned()
            }
        };
        let _ = std::fs::remove_file(&path);
        writes.push(format!("{}:{g}", json_str(&d.display().to_string())));
    }
    println!(
        "{{\"bytes\":{total},\"sha256_gbps\":{sha:.3},\"xxh64_gbps\":{xxh:.3},\"write_gbps\":{{{}}}}}",
        writes.join(",")
    );
}

/// Calls `f` with `total` bytes of `data`, in pieces of at most 1 MiB.
fn feed(total: u64, data: &[u8], mut f: impl FnMut(&[u8])) {
    let mut left = total;
    let mut at = 0;
    while left > 0 {
        let n = (left.min(BUF as u64) as usize).min(data.len() - at);
        f(&data[at..at + n]);
        left -= n as u64;
        at = (at + n) % data.len();
    }
}

/// GB/s of `f` processing `total` bytes: the best of three runs.
fn rate(total: u64, mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            total as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn write_rate(path: &PathBuf, total: u64, chunk: &[u8]) -> std::io::Result<f64> {
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let _ = std::fs::remove_file(path);
        let t = Instant::now();
        let mut f = std::fs::File::create(path)?;
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        drop(f);
        best = best.max(total as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    Ok(best)
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}
