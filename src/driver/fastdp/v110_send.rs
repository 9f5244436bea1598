//! `ferry fastdp send --v1`: FastDP 1.1.0 as `cli.py` writes it (fastdp.md 1.2), so ferry can
//! upload to the existing Python servers.
//!
//! ```text
//!  compressed form: None = the file itself; Zstd, Zip, TarGz written once into an unnamed
//!  temporary (never whole in memory), SHA-256 taken as it is written
//!  ─► GET ... Sec-FastDP-Key: some-random-key, Sec-FastDP-Version: 1.1.0 ─► the whole 101 read
//!  ─► one JMSG header (Python's json.dumps spacing) ─► chunks 0, 1, 2, ... (no FIN)
//!  ─► the reply read to its end: `File received successfully.` or `ERROR: ...`
//! ```
//!
//! Unlike cli.py, ferry reads the reply (cli.py closes without reading it) and fails at once
//! on EOF or another status instead of spinning. The forms: `Zstd` one frame with its content
//! size (level 3, no checksum, as python-zstandard's defaults); `Zip` one deflated member named
//! after the file (ZIP64 records past 4 GiB); `TarGz` a gzip stream of a tar holding one
//! regular file (ustar, or a pax record for a long or non-ASCII name or a size past 8 GiB),
//! padded to tar's 10,240-byte records as Python's tarfile does.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::client::{ClientError, ClientOptions};
use crate::proto::fastdp::frame::{chunk_header, put_jmsg};
use crate::proto::fastdp::http::{put_request, ResponseParser, Status, Version, DEFAULT_PATH};
use crate::proto::fastdp::messages::{is_valid_file_name, V110Compress, V110Header};
use crate::proto::fastdp::v110::SUCCESS;
use crate::transport::connect_tcp;

/// The key cli.py sends.
pub const V110_KEY: &str = "some-random-key";
/// Longest reply read.
const MAX_REPLY: usize = 4096;
const PIECE: usize = 1 << 20;

/// What a 1.1.0 upload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct V110Report {
    pub file: String,
    pub compress: &'static str,
    pub size: u64,
    /// Bytes of the compressed form sent in chunks.
    pub wire_bytes: u64,
    pub reply: String,
    pub seconds: f64,
}

fn local(e: impl std::fmt::Display) -> ClientError {
    ClientError::Local(e.to_string())
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An unnamed temporary file in the system's temporary folder.
fn temp_file() -> io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::env::temp_dir();
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: open(2) with a NUL-terminated path and constant flags; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd >= 0 {
        use std::os::fd::FromRawFd;
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        return Ok(unsafe { File::from_raw_fd(fd) });
    }
    let p = dir.join(format!(".ferry-v110-{}-{}", std::process::id(), now_ns()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)?;
    std::fs::remove_file(&p)?;
    Ok(f)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Copies `src` into `w` in 1 MiB pieces; returns the CRC-32 (zip's) of what was copied.
fn copy_from(src: &File, size: u64, w: &mut dyn Write) -> io::Result<u32> {
    let mut crc = flate2::Crc::new();
    let mut buf = vec![0u8; PIECE];
    let mut at = 0u64;
    while at < size {
        let n = ((size - at) as usize).min(PIECE);
        src.read_exact_at(&mut buf[..n], at)?;
        crc.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        at += n as u64;
    }
    Ok(crc.sum())
}

/// The compressed form of `src` in a temporary file, with its SHA-256 and length.
fn compress_into_temp(
    src: &File,
    size: u64,
    name: &str,
    kind: V110Compress,
) -> io::Result<(File, [u8; 32], u64)> {
    let tmp = temp_file()?;
    let mut out = Hashing {
        inner: io::BufWriter::with_capacity(PIECE, tmp.try_clone()?),
        sha: Sha256::new(),
        len: 0,
    };
    match kind {
        V110Compress::None => {
            copy_from(src, size, &mut out)?;
        }
        V110Compress::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(&mut out, 3)?;
            z.set_pledged_src_size(Some(size))?;
            z.include_contentsize(true)?;
            z.include_checksum(false)?;
            copy_from(src, size, &mut z)?;
            z.finish()?;
        }
        V110Compress::TarGz => {
            let mut gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::new(9));
            let header = tar_header(name, size);
            gz.write_all(&header)?;
            copy_from(src, size, &mut gz)?;
            let data_pad = (512 - (size % 512) as usize) % 512;
            let written = header.len() as u64 + size + data_pad as u64 + 1024;
            let record_pad = (10240 - (written % 10240) as usize) % 10240;
            gz.write_all(&vec![0u8; data_pad + 1024 + record_pad])?;
            gz.finish()?;
        }
        V110Compress::Zip => {
            // The local header is written with room for the ZIP64 sizes when they may be
            // needed, then patched once the CRC and the compressed size are known.
            let zip64 = size >= 0xF000_0000;
            let name_b = name.as_bytes();
            let mut local = Vec::with_capacity(30 + name_b.len() + 20);
            local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
            local.extend_from_slice(&(if zip64 { 45u16 } else { 20u16 }).to_le_bytes());
            local
                .extend_from_slice(&(if name.is_ascii() { 0u16 } else { 0x0800u16 }).to_le_bytes());
            local.extend_from_slice(&8u16.to_le_bytes()); // deflated
            let (time, date) = dos_time();
            local.extend_from_slice(&time.to_le_bytes());
            local.extend_from_slice(&date.to_le_bytes());
            local.extend_from_slice(&[0u8; 12]); // crc, sizes: patched below
            local.extend_from_slice(&(name_b.len() as u16).to_le_bytes());
            local.extend_from_slice(&(if zip64 { 20u16 } else { 0u16 }).to_le_bytes());
            local.extend_from_slice(name_b);
            if zip64 {
                local.extend_from_slice(&1u16.to_le_bytes());
                local.extend_from_slice(&16u16.to_le_bytes());
                local.extend_from_slice(&[0u8; 16]);
            }
            out.write_all(&local)?;
            let before = out.len;
            let mut d = flate2::write::DeflateEncoder::new(&mut out, flate2::Compression::new(6));
            let crc = copy_from(src, size, &mut d)?;
            d.finish()?;
            let csize = out.len - before;
            out.inner.flush()?;
            // Patch the local header in the file, then hash the finished archive below.
            let f = out.inner.get_ref();
            f.write_all_at(&crc.to_le_bytes(), 14)?;
            if zip64 {
                f.write_all_at(&[0xff; 8], 18)?;
                let at = 30 + name_b.len() as u64 + 4;
                f.write_all_at(&size.to_le_bytes(), at)?;
                f.write_all_at(&csize.to_le_bytes(), at + 8)?;
            } else {
                f.write_all_at(&(csize as u32).to_le_bytes(), 18)?;
                f.write_all_at(&(size as u32).to_le_bytes(), 22)?;
            }
            let cd_at = out.len;
            let mut cd = Vec::new();
            cd.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            cd.extend_from_slice(&(if zip64 { 45u16 } else { 20u16 }).to_le_bytes());
            cd.extend_from_slice(&(if zip64 { 45u16 } else { 20u16 }).to_le_bytes());
            cd.extend_from_slice(&local[6..14]); // flags, method, time, date
            cd.extend_from_slice(&crc.to_le_bytes());
            if zip64 {
                cd.extend_from_slice(&[0xff; 8]);
            } else {
                cd.extend_from_slice(&(csize as u32).to_le_bytes());
                cd.extend_from_slice(&(size as u32).to_le_bytes());
            }
            cd.extend_from_slice(&(name_b.len() as u16).to_le_bytes());
            cd.extend_from_slice(&(if zip64 { 28u16 } else { 0u16 }).to_le_bytes());
            cd.extend_from_slice(&[0u8; 6]); // comment len, disk, internal attrs
            cd.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
            cd.extend_from_slice(&0u32.to_le_bytes()); // local header offset
            cd.extend_from_slice(name_b);
            if zip64 {
                cd.extend_from_slice(&1u16.to_le_bytes());
                cd.extend_from_slice(&24u16.to_le_bytes());
                cd.extend_from_slice(&size.to_le_bytes());
                cd.extend_from_slice(&csize.to_le_bytes());
                cd.extend_from_slice(&0u64.to_le_bytes());
            }
            let cd_len = cd.len() as u64;
            if zip64 {
                let e64_at = cd_at + cd_len;
                cd.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
                cd.extend_from_slice(&44u64.to_le_bytes());
                cd.extend_from_slice(&45u16.to_le_bytes());
                cd.extend_from_slice(&45u16.to_le_bytes());
                cd.extend_from_slice(&[0u8; 8]); // disk numbers
                cd.extend_from_slice(&1u64.to_le_bytes());
                cd.extend_from_slice(&1u64.to_le_bytes());
                cd.extend_from_slice(&cd_len.to_le_bytes());
                cd.extend_from_slice(&cd_at.to_le_bytes());
                cd.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
                cd.extend_from_slice(&0u32.to_le_bytes());
                cd.extend_from_slice(&e64_at.to_le_bytes());
                cd.extend_from_slice(&1u32.to_le_bytes());
            }
            cd.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
            cd.extend_from_slice(&[0u8; 4]);
            cd.extend_from_slice(&1u16.to_le_bytes());
            cd.extend_from_slice(&1u16.to_le_bytes());
            cd.extend_from_slice(&(cd_len.min(0xffff_ffff) as u32).to_le_bytes());
            cd.extend_from_slice(&(if zip64 { 0xffff_ffff } else { cd_at as u32 }).to_le_bytes());
            cd.extend_from_slice(&0u16.to_le_bytes());
            out.write_all(&cd)?;
            out.inner.flush()?;
            let len = out.len;
            // The header was patched after it was hashed: hash the file as it now stands.
            let sha = hash_range(&tmp, len)?;
            return Ok((tmp, sha, len));
        }
    }
    out.inner.flush()?;
    let (sha, len) = (out.sha.finalize().into(), out.len);
    Ok((tmp, sha, len))
}

fn hash_range(f: &File, len: u64) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let mut at = 0u64;
    while at < len {
        let n = ((len - at) as usize).min(PIECE);
        f.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize().into())
}

/// MS-DOS time and date of now (UTC), as zip stores them.
fn dos_time() -> (u16, u16) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let year = (y.clamp(1980, 2107) - 1980) as u16;
    let time =
        ((rem / 3600) as u16) << 11 | (((rem % 3600) / 60) as u16) << 5 | ((rem % 60) / 2) as u16;
    (time, year << 9 | (m as u16) << 5 | d as u16)
}

/// One 512-byte tar header block: name, mode 0644, size, mtime 0, type regular, ustar.
fn ustar_block(name: &[u8], size: u64, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    let sz = format!("{:011o}\0", size.min(0o77_777_777_777));
    h[124..136].copy_from_slice(sz.as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[329..337].copy_from_slice(b"0000000\0");
    h[337..345].copy_from_slice(b"0000000\0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// The tar headers before the member's data: a pax record first when the name is long or not
/// ASCII or the size does not fit the octal field.
fn tar_header(name: &str, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let big = size > 0o77_777_777_777;
    if name.len() > 100 || !name.is_ascii() || big {
        let mut recs = String::new();
        let mut rec = |k: &str, v: &str| {
            // "<len> <key>=<value>\n" where len counts itself.
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            recs.push_str(&format!("{len}{body}"));
        };
        if name.len() > 100 || !name.is_ascii() {
            rec("path", name);
        }
        if big {
            rec("size", &size.to_string());
        }
        out.extend_from_slice(&ustar_block(b"././@PaxHeader", recs.len() as u64, b'x'));
        out.extend_from_slice(recs.as_bytes());
        out.resize(out.len() + (512 - recs.len() % 512) % 512, 0);
    }
    let short: Vec<u8> = if name.len() > 100 {
        name.as_bytes()[..100].to_vec()
    } else {
        name.as_bytes().to_vec()
    };
    out.extend_from_slice(&ustar_block(&short, size, b'0'));
    out
}

/// Uploads `path` as a 1.1.0 sender would.
pub fn send_v110(
    opts: &ClientOptions,
    path: &Path,
    kind: V110Compress,
) -> Result<V110Report, ClientError> {
    let started = Instant::now();
    let (src, meta) = crate::dir::open_file_to_send(path)
        .map_err(|e| local(format!("{}: {e}", path.display())))?;
    let size = meta.len();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_valid_file_name(n))
        .ok_or_else(|| local(format!("{}: not a valid file name", path.display())))?
        .to_owned();
    let (data, sha, len) = match kind {
        V110Compress::None => {
            let sha = hash_range(&src, size).map_err(local)?;
            (src, sha, size)
        }
        _ => compress_into_temp(&src, size, &name, kind).map_err(local)?,
    };
    let header = V110Header::new(len, kind, &name, sha);
    let tcp = connect_tcp(&opts.addr, opts.io_timeout)
        .map_err(|e| ClientError::Network(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut sock = tcp;
    let net = |e: io::Error| ClientError::Network(format!("connection: {e}"));
    let mut req = Vec::new();
    put_request(&opts.addr, DEFAULT_PATH, V110_KEY, Version::V110, &mut req);
    sock.write_all(&req).map_err(net)?;
    // The whole 101 before anything else (F4); EOF or another status fails at once.
    let mut parser = ResponseParser::new(V110_KEY, Version::V110);
    let mut buf = vec![0u8; 8192];
    let mut extra = Vec::new();
    loop {
        let n = sock.read(&mut buf).map_err(net)?;
        if n == 0 {
            return Err(ClientError::Refused(parser.eof().to_string()));
        }
        let (used, st) = parser.feed(&buf[..n]);
        match st {
            Status::Partial => continue,
            Status::Complete(Ok(())) => {
                extra.extend_from_slice(&buf[used..n]);
                break;
            }
            Status::Complete(Err(e)) => return Err(ClientError::Refused(e.to_string())),
        }
    }
    let mut out = Vec::new();
    put_jmsg(&header.encode_python(), &mut out);
    sock.write_all(&out).map_err(net)?;
    let g = header.geometry();
    let mut chunk = vec![0u8; (g.one_chunk() as usize).min(64 << 20)];
    for i in 0..g.full_chunk() {
        let n = g.len(i) as usize;
        sock.write_all(&chunk_header(i, n as u32)).map_err(net)?;
        let mut off = 0usize;
        while off < n {
            let m = (n - off).min(chunk.len());
            data.read_exact_at(&mut chunk[..m], g.offset(i) + off as u64)
                .map_err(local)?;
            sock.write_all(&chunk[..m]).map_err(net)?;
            off += m;
        }
    }
    // The reply: unframed text, then a close. The server may hash and decode a large file
    // before it answers; its silence is bounded by a generous deadline.
    let _ = sock.shutdown(std::net::Shutdown::Write);
    sock.set_read_timeout(Some(opts.io_timeout.max(Duration::from_secs(600))))
        .map_err(net)?;
    let mut reply = extra;
    let mut piece = [0u8; 1024];
    while reply.len() < MAX_REPLY {
        match sock.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&piece[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if reply.is_empty() => return Err(net(e)),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&reply).trim().to_owned();
    let report = V110Report {
        file: path.display().to_string(),
        compress: kind.as_str(),
        size,
        wire_bytes: len,
        reply: text.clone(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if reply.starts_with(SUCCESS) {
        Ok(report)
    } else if text.is_empty() {
        Err(ClientError::Network(
            "the server closed without a reply".into(),
        ))
    } else {
        Err(ClientError::Refused(format!("server: {text}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::fastdp::v110::Decoder;

    fn roundtrip(kind: V110Compress, data: &[u8], name: &str) {
        let src = temp_file().unwrap();
        src.write_all_at(data, 0).unwrap();
        let (f, sha, len) = compress_into_temp(&src, data.len() as u64, name, kind).unwrap();
        assert_eq!(sha, hash_range(&f, len).unwrap());
        let mut packed = vec![0u8; len as usize];
        f.read_exact_at(&mut packed, 0).unwrap();
        let mut dec = Decoder::new(kind, 1 << 30).unwrap();
        let mut got = Vec::new();
        for piece in packed.chunks(7_777) {
            dec.feed(piece, &mut |d: &[u8]| {
                got.extend_from_slice(d);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{kind:?} {name}: {e}"));
        }
        assert_eq!(dec.finish().unwrap(), data.len() as u64);
        assert_eq!(got, data, "{kind:?} {name}");
    }

    #[test]
    fn f34_every_form_written_here_decodes_with_the_receivers_decoders() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 9) as u8)
            .collect();
        for kind in [
            V110Compress::None,
            V110Compress::Zstd,
            V110Compress::Zip,
            V110Compress::TarGz,
        ] {
            roundtrip(kind, &data, "a.bin");
            roundtrip(kind, b"", "empty");
            roundtrip(kind, &data[..512], "exactly-one-block.bin");
        }
        let long = "ü".repeat(60);
        roundtrip(V110Compress::TarGz, &data[..1000], &long);
        roundtrip(V110Compress::Zip, &data[..1000], &long);
    }

    #[test]
    fn tar_header_checksum_and_pax_length_fields_are_right() {
        let h = ustar_block(b"a.txt", 4, b'0');
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut copy = h;
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|&b| u32::from(b)).sum::<u32>());
        let long = "x".repeat(150);
        let t = tar_header(&long, 9);
        assert_eq!(t.len(), 512 * 3);
        let recs = std::str::from_utf8(&t[512..512 + 200]).unwrap();
        let first = recs.split('\n').next().unwrap();
        let n: usize = first.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(n, first.len() + 1);
    }
}
