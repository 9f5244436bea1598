//! Loopback TCP ceiling: the fastest a single TCP connection on this machine moves bytes.
//!
//! One thread writes `BYTES` (default 1 GiB) from a 1 MiB buffer into a loopback socket, the
//! other reads them into a 1 MiB buffer and throws them away. The time runs from just before
//! the connect to the moment the reader has seen every byte, so it is the number a file
//! transfer over one connection can at best approach (no disk, no framing, no crypto).
//!
//! With `--into DIR` the reader writes what it reads into a new file in DIR (positional writes,
//! as a download's part file is filled; removed afterwards): the kernel's share of a transfer
//! into that folder, with nothing hashed. `cpu_s` is the process's user+system time (both
//! threads), so `cpu_s` per GB is what the kernel and the copies cost whoever does the rest.
//!
//! `make bench` runs it through `benches/bench.py`; by hand:
//! `cargo bench --bench tcp_ceiling -- [BYTES] [--into DIR]`. It prints one JSON object on
//! stdout: `{"bytes":N,"seconds":S,"gbps":G,"cpu_s":C}` where `gbps` is 10^9 bytes per second.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

const BUF: usize = 1 << 20;
const DEFAULT_BYTES: u64 = 1 << 30;

fn main() {
    // Cargo passes `--bench` (and a filter, if any) to harness-less benches: take the first
    // argument that parses as a number, ignore the rest.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let total = args
        .iter()
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(DEFAULT_BYTES);
    let into = args
        .iter()
        .position(|a| a == "--into")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let cpu0 = cpu_seconds();
    match run(total, into.as_deref()) {
        Ok(seconds) => println!(
            "{{\"bytes\":{total},\"seconds\":{seconds:.6},\"gbps\":{:.3},\"cpu_s\":{:.3}}}",
            total as f64 / seconds / 1e9,
            cpu_seconds() - cpu0
        ),
        Err(e) => {
            eprintln!("tcp_ceiling: {e}");
            std::process::exit(1);
        }
    }
}

/// User + system CPU seconds of this process so far (every thread).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass; RUSAGE_SELF needs nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Moves `total` bytes through one loopback connection (into a new file in `into`, if given);
/// returns the wall seconds.
fn run(total: u64, into: Option<&Path>) -> std::io::Result<f64> {
    let sink = match into {
        Some(dir) => {
            let path = dir.join(format!("tcp-ceiling-{}.part", std::process::id()));
            let f = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            f.set_len(total)?;
            Some((path, f))
        }
        None => None,
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        // Non-zero bytes, so nothing on the way could special-case a page of zeros.
        let buf: Vec<u8> = (0..BUF).map(|i| (i % 251) as u8).collect();
        let mut left = total;
        while left > 0 {
            let n = left.min(BUF as u64) as usize;
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let (mut s, _) = listener.accept()?;
    let mut buf = vec![0u8; BUF];
    let mut got = 0u64;
    while got < total {
        match s.read(&mut buf)? {
            0 => break,
            n => {
                if let Some((_, f)) = &sink {
                    f.write_all_at(&buf[..n], got)?;
                }
                got += n as u64;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some((path, _)) = &sink {
        let _ = std::fs::remove_file(path);
    }
    writer
        .join()
        .map_err(|_| std::io::Error::other("writer thread panicked"))??;
    if got != total {
        return Err(std::io::Error::other(format!(
            "short read: {got} of {total} bytes"
        )));
    }
    Ok(seconds)
}
