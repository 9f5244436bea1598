//! Loopback TCP ceiling: the fastest a single TCP connection on this machine moves bytes.
//!
//! One thread writes `BYTES` (default 1 GiB) from a 1 MiB buffer into a loopback socket, the
//! other reads them into a 1 MiB buffer and throws them away. The time runs from just before
//! the connect to the moment the reader has seen every byte, so it is the number a file
//! transfer over one connection can at best approach (no disk, no framing, no crypto).
//!
//! `make bench` runs it through `benches/bench.py`; by hand:
//! `cargo bench --bench tcp_ceiling -- [BYTES]`. It prints one JSON object on stdout:
//! `{"bytes":N,"seconds":S,"gbps":G}` where `gbps` is 10^9 bytes per second.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

const BUF: usize = 1 << 20;
const DEFAULT_BYTES: u64 = 1 << 30;

fn main() {
    // Cargo passes `--bench` (and a filter, if any) to harness-less benches: take the first
    // argument that parses as a number, ignore the rest.
    let total = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(DEFAULT_BYTES);
    match run(total) {
        Ok(seconds) => println!(
            "{{\"bytes\":{total},\"seconds\":{seconds:.6},\"gbps\":{:.3}}}",
            total as f64 / seconds / 1e9
        ),
        Err(e) => {
            eprintln!("tcp_ceiling: {e}");
            std::process::exit(1);
        }
    }
}

/// Moves `total` bytes through one loopback connection; returns the wall seconds.
fn run(total: u64) -> std::io::Result<f64> {
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
            n => got += n as u64,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
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
