use std::io::Write;

use super::*;

fn data(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| ((i / 7).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 20) as u8 % 13)
        .collect()
}

/// Decodes `stream` fed in pieces of `piece` bytes with output capped at `cap`.
fn decode(
    kind: V110Compress,
    stream: &[u8],
    piece: usize,
    cap: u64,
) -> Result<Vec<u8>, DecodeError> {
    let mut d = Decoder::new(kind, cap)?;
    let mut out = Vec::new();
    for p in stream.chunks(piece.max(1)) {
        d.feed(p, &mut |b: &[u8]| {
            out.extend_from_slice(b);
            Ok(())
        })?;
        assert!(out.len() as u64 <= cap, "capped");
        assert_eq!(d.produced(), out.len() as u64);
    }
    let n = d.finish()?;
    assert_eq!(n, out.len() as u64);
    Ok(out)
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc::new();
    c.update(data);
    c.sum()
}

#[derive(Clone, Copy, Default)]
struct ZipOpts {
    stored: bool,
    zip64: bool,
    descriptor: bool,
    encrypted: bool,
    method: Option<u16>,
    members: usize,
    comment: bool,
    /// As Info-ZIP writes them: an extended-timestamp extra field (0x5455) before any ZIP64
    /// one, in the local and the central header, and a member comment.
    timestamp: bool,
    /// A data descriptor without its optional signature.
    unsigned_descriptor: bool,
}

/// A zip as Python's zipfile writes one (writestr into a seekable buffer), with variations.
fn zip(member: &[u8], o: ZipOpts) -> Vec<u8> {
    let name = b"a.txt";
    let (method, body) = if o.stored {
        (0u16, member.to_vec())
    } else {
        (8u16, deflate(member))
    };
    let method = o.method.unwrap_or(method);
    let crc = crc32(member);
    let mut flags = 0u16;
    if o.descriptor {
        flags |= 8;
    }
    if o.encrypted {
        flags |= 1;
    }
    let mut out = Vec::new();
    let mut offsets = Vec::new();
    for _ in 0..o.members {
        offsets.push(out.len() as u32);
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&(if o.zip64 { 45u16 } else { 20 }).to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&[0x21, 0x6b, 0x8e, 0x5a]);
        let (c, cs, us) = if o.descriptor {
            (0, 0, 0)
        } else if o.zip64 {
            (crc, u32::MAX, u32::MAX)
        } else {
            (crc, body.len() as u32, member.len() as u32)
        };
        out.extend_from_slice(&c.to_le_bytes());
        out.extend_from_slice(&cs.to_le_bytes());
        out.extend_from_slice(&us.to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        let mut extra: Vec<u8> = Vec::new();
        if o.timestamp {
            extra.extend_from_slice(&[0x55, 0x54, 5, 0, 1, 0x21, 0x6b, 0x8e, 0x5a]);
        }
        if o.zip64 {
            extra.extend_from_slice(&[1, 0, 16, 0]);
            extra.extend_from_slice(&(member.len() as u64).to_le_bytes());
            extra.extend_from_slice(&(body.len() as u64).to_le_bytes());
        }
        out.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&extra);
        out.extend_from_slice(&body);
        if o.descriptor {
            if !o.unsigned_descriptor {
                out.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
            }
            out.extend_from_slice(&crc.to_le_bytes());
            if o.zip64 {
                out.extend_from_slice(&(body.len() as u64).to_le_bytes());
                out.extend_from_slice(&(member.len() as u64).to_le_bytes());
            } else {
                out.extend_from_slice(&(body.len() as u32).to_le_bytes());
                out.extend_from_slice(&(member.len() as u32).to_le_bytes());
            }
        }
    }
    let cd_start = out.len();
    for off in &offsets {
        out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 3, 20, 0]);
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&[0x21, 0x6b, 0x8e, 0x5a]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&(member.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        let (extra, comment): (&[u8], &[u8]) = match o.timestamp {
            true => (&[0x55, 0x54, 5, 0, 1, 0x21, 0x6b, 0x8e, 0x5a], b"c"),
            false => (b"", b""),
        };
        out.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        out.extend_from_slice(&(comment.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x80, 1]);
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(extra);
        out.extend_from_slice(comment);
    }
    let cd_len = out.len() - cd_start;
    if o.zip64 {
        let z64 = out.len();
        out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 3, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&(o.members as u64).to_le_bytes());
        out.extend_from_slice(&(o.members as u64).to_le_bytes());
        out.extend_from_slice(&(cd_len as u64).to_le_bytes());
        out.extend_from_slice(&(cd_start as u64).to_le_bytes());
        out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&(z64 as u64).to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    let n = if o.zip64 { 0xFFFF } else { o.members as u16 };
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(cd_len as u32).to_le_bytes());
    out.extend_from_slice(&(cd_start as u32).to_le_bytes());
    let comment: &[u8] = if o.comment { b"made by a test" } else { b"" };
    out.extend_from_slice(&(comment.len() as u16).to_le_bytes());
    out.extend_from_slice(comment);
    out
}

fn one() -> ZipOpts {
    ZipOpts {
        members: 1,
        ..ZipOpts::default()
    }
}

/// A ustar header block.
fn tar_header(name: &str, size: u64, kind: u8) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

fn tar_entry(out: &mut Vec<u8>, name: &str, body: &[u8], kind: u8) {
    out.extend_from_slice(&tar_header(name, body.len() as u64, kind));
    out.extend_from_slice(body);
    out.resize(out.len() + (512 - body.len() % 512) % 512, 0);
}

/// Ends an archive as Python's tarfile does: two zero blocks, padded to 10,240 bytes.
fn tar_end(mut t: Vec<u8>) -> Vec<u8> {
    t.resize(t.len() + 1024, 0);
    t.resize(t.len().div_ceil(10_240) * 10_240, 0);
    t
}

/// A pax record, `"<len> key=value\n"`, its length counting itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new()
        .filename("a.tar")
        .comment("c")
        .extra(vec![1, 2, 3])
        .write(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn error_lines_are_exact() {
    assert_eq!(SUCCESS, b"File received successfully.");
    assert_eq!(SUCCESS.len(), 27);
    let all = [
        (
            V110Error::MalformedChunkHeader,
            "ERROR: Malformed chunk header.",
        ),
        (
            V110Error::IncompleteChunkData,
            "ERROR: Incomplete chunk data.",
        ),
        (V110Error::ChecksumMismatch, "ERROR: Checksum mismatch."),
        (V110Error::BadHeader, "ERROR: Bad header."),
        (V110Error::BadFileName, "ERROR: Bad file name."),
        (V110Error::FileTooLarge, "ERROR: File too large."),
        (
            V110Error::NotEnoughDiskSpace,
            "ERROR: Not enough disk space.",
        ),
        (
            V110Error::DecompressionFailed,
            "ERROR: Decompression failed.",
        ),
        (V110Error::Timeout, "ERROR: Timeout."),
    ];
    for (e, line) in all {
        assert_eq!(e.line(), line.as_bytes());
        assert!(e.to_string().ends_with(line));
    }
    // The decoders' own reasons, as the server logs them.
    let reasons = [
        (
            DecodeError::TooLarge { cap: 9 },
            "1.1.0 decode: output over 9 bytes",
        ),
        (DecodeError::Truncated, "1.1.0 decode: stream truncated"),
        (
            DecodeError::Trailing,
            "1.1.0 decode: bytes after the stream",
        ),
        (DecodeError::Zstd("w"), "1.1.0 decode: zstd: w"),
        (DecodeError::Zip("w"), "1.1.0 decode: zip: w"),
        (DecodeError::Gzip("w"), "1.1.0 decode: gzip: w"),
        (DecodeError::Tar("w"), "1.1.0 decode: tar: w"),
        (DecodeError::Deflate("w".into()), "1.1.0 decode: deflate: w"),
        (
            DecodeError::Sink(std::io::Error::other("w")),
            "1.1.0 decode: writing output: w",
        ),
    ];
    for (e, text) in reasons {
        assert_eq!(e.to_string(), text);
    }
}

#[test]
fn f34_none_and_zstd_decode_split_anywhere() {
    let src = data(300_000, 1);
    assert_eq!(
        decode(V110Compress::None, &src, 1000, 300_000).unwrap(),
        src
    );
    assert!(matches!(
        decode(V110Compress::None, &src, 1000, 299_999),
        Err(DecodeError::TooLarge { .. })
    ));
    let z = zstd::bulk::compress(&src, 3).unwrap();
    for piece in [1, 7, 4096, z.len()] {
        assert_eq!(
            decode(V110Compress::Zstd, &z, piece, 1 << 30).unwrap(),
            src,
            "piece {piece}"
        );
    }
    // Without a content size (a streaming compressor), as python-zstandard's stream writer does.
    let mut cctx = zstd_safe::CCtx::create();
    cctx.set_parameter(zstd_safe::CParameter::ContentSizeFlag(false))
        .unwrap();
    let mut nofcs = Vec::with_capacity(400_000);
    cctx.compress2(&mut nofcs, &src).unwrap();
    assert_eq!(
        decode(V110Compress::Zstd, &nofcs, 999, 1 << 30).unwrap(),
        src
    );
    let empty = zstd::bulk::compress(b"", 3).unwrap();
    assert_eq!(decode(V110Compress::Zstd, &empty, 3, 0).unwrap(), b"");
}

#[test]
fn f34_zstd_refuses_two_frames_trailing_bytes_truncation_and_bombs() {
    let src = data(10_000, 2);
    let z = zstd::bulk::compress(&src, 3).unwrap();
    let two = [&z[..], &z[..]].concat();
    assert!(matches!(
        decode(V110Compress::Zstd, &two, 100, 1 << 30),
        Err(DecodeError::Trailing)
    ));
    let junk = [&z[..], b"\0"].concat();
    assert!(matches!(
        decode(V110Compress::Zstd, &junk, 100_000, 1 << 30),
        Err(DecodeError::Trailing)
    ));
    assert!(matches!(
        decode(V110Compress::Zstd, &z[..z.len() - 1], 100, 1 << 30),
        Err(DecodeError::Truncated)
    ));
    assert!(matches!(
        decode(V110Compress::Zstd, b"", 100, 1 << 30),
        Err(DecodeError::Truncated)
    ));
    let bomb = zstd::bulk::compress(&vec![0u8; 50 << 20], 3).unwrap();
    assert!(bomb.len() < 10_000);
    assert!(
        matches!(decode(V110Compress::Zstd, &bomb, 4096, 1 << 20), Err(DecodeError::TooLarge { cap }) if cap == 1 << 20)
    );
    assert!(matches!(
        decode(V110Compress::Zstd, b"PK\x03\x04", 100, 100),
        Err(DecodeError::Zstd(_))
    ));
}

#[test]
fn f34_zip_stored_deflated_zip64_and_descriptor_decode_split_anywhere() {
    let src = data(200_000, 3);
    let variants = [
        one(),
        ZipOpts {
            stored: true,
            ..one()
        },
        ZipOpts {
            zip64: true,
            ..one()
        },
        ZipOpts {
            descriptor: true,
            ..one()
        },
        ZipOpts {
            descriptor: true,
            zip64: true,
            ..one()
        },
        ZipOpts {
            comment: true,
            ..one()
        },
        ZipOpts {
            timestamp: true,
            zip64: true,
            ..one()
        },
        ZipOpts {
            descriptor: true,
            unsigned_descriptor: true,
            ..one()
        },
        ZipOpts {
            descriptor: true,
            unsigned_descriptor: true,
            zip64: true,
            ..one()
        },
    ];
    for (i, o) in variants.into_iter().enumerate() {
        let z = zip(&src, o);
        for piece in [1, 13, 5000, z.len()] {
            let got = decode(V110Compress::Zip, &z, piece, 1 << 30);
            assert_eq!(got.unwrap(), src, "variant {i} piece {piece}");
        }
    }
    let empty = zip(b"", one());
    assert_eq!(decode(V110Compress::Zip, &empty, 10, 0).unwrap(), b"");
    // Input that inflates to many output buffers at once: the inflater keeps emptying its
    // buffer after the input is used up, until the stream ends.
    let zeros = vec![0u8; 1 << 20];
    let z = zip(&zeros, one());
    assert!(z.len() < 4096);
    assert_eq!(
        decode(V110Compress::Zip, &z, z.len(), 1 << 30).unwrap(),
        zeros
    );
}

#[test]
fn f34_zip_with_zero_or_two_members_encryption_or_another_method_is_refused() {
    let src = data(5000, 4);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            zip(
                &src,
                ZipOpts {
                    members: 0,
                    ..one()
                },
            ),
            "no member",
        ),
        (
            zip(
                &src,
                ZipOpts {
                    members: 2,
                    ..one()
                },
            ),
            "more than one member",
        ),
        (
            zip(
                &src,
                ZipOpts {
                    encrypted: true,
                    ..one()
                },
            ),
            "encrypted member",
        ),
        (
            zip(
                &src,
                ZipOpts {
                    method: Some(12),
                    ..one()
                },
            ),
            "method neither stored nor deflated",
        ),
        (
            zip(
                &src,
                ZipOpts {
                    stored: true,
                    descriptor: true,
                    ..one()
                },
            ),
            "stored member of unknown size",
        ),
        (b"not a zip at all, really not".to_vec(), "not a zip file"),
    ];
    for (z, why) in cases {
        match decode(V110Compress::Zip, &z, 64, 1 << 30) {
            Err(DecodeError::Zip(w)) => assert_eq!(w, why),
            other => panic!("{why}: {other:?}"),
        }
    }
    // One member listed twice in the central directory.
    let z = zip(&src, one());
    let central = z.len() - 22 - 51;
    let twice = [&z[..central + 51], &z[central..]].concat();
    assert!(matches!(
        decode(V110Compress::Zip, &twice, 64, 1 << 30),
        Err(DecodeError::Zip("more than one member"))
    ));
    // A flipped data byte breaks the CRC; the cap holds; truncation and trailing bytes fail.
    let mut bad = zip(
        &src,
        ZipOpts {
            stored: true,
            ..one()
        },
    );
    bad[40] ^= 1;
    assert!(matches!(
        decode(V110Compress::Zip, &bad, 64, 1 << 30),
        Err(DecodeError::Zip("CRC-32 mismatch"))
    ));
    let z = zip(&src, one());
    assert!(matches!(
        decode(V110Compress::Zip, &z, 64, 4999),
        Err(DecodeError::TooLarge { .. })
    ));
    // Deflate data running past the compressed size its local header gives (a header
    // patched to 100 bytes less): refused as it happens.
    let mut short = z.clone();
    let csize = u32::from_le_bytes(short[18..22].try_into().unwrap());
    short[18..22].copy_from_slice(&(csize - 100).to_le_bytes());
    assert!(matches!(
        decode(V110Compress::Zip, &short, 64, 1 << 30),
        Err(DecodeError::Zip("deflate data past its compressed size"))
    ));
    // A central header that disagrees on the method alone (the CRC agrees).
    let mut stored = zip(
        &src,
        ZipOpts {
            stored: true,
            ..one()
        },
    );
    let central = stored.len() - 22 - 51;
    assert_eq!(&stored[central..central + 4], b"PK\x01\x02");
    stored[central + 10] = 8;
    assert!(matches!(
        decode(V110Compress::Zip, &stored, 64, 1 << 30),
        Err(DecodeError::Zip(
            "central directory disagrees with the member"
        ))
    ));
    // The size its local header announces is judged at once, before any data.
    assert!(matches!(
        decode(V110Compress::Zip, &z[..40], 64, 4999),
        Err(DecodeError::TooLarge { cap: 4999 })
    ));
    assert!(matches!(
        decode(V110Compress::Zip, &z[..z.len() - 3], 64, 1 << 30),
        Err(DecodeError::Truncated)
    ));
    let trailing = [&z[..], b"x"].concat();
    assert!(matches!(
        decode(V110Compress::Zip, &trailing, 64, 1 << 30),
        Err(DecodeError::Trailing)
    ));
    assert!(matches!(
        decode(V110Compress::Zip, b"", 64, 1 << 30),
        Err(DecodeError::Zip("empty archive"))
    ));
    // Cut inside the first local header: truncated, not empty.
    assert!(matches!(
        decode(V110Compress::Zip, &z[..10], 64, 1 << 30),
        Err(DecodeError::Truncated)
    ));
    // A deflate bomb: 64 MiB of zeros in a small member, capped at 1 MiB.
    let big = vec![0u8; 64 << 20];
    let bomb = zip(&big, one());
    assert!(bomb.len() < 200_000);
    assert!(matches!(
        decode(V110Compress::Zip, &bomb, 8192, 1 << 20),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn f34_targz_with_one_file_pax_and_gnu_long_names_decodes_split_anywhere() {
    let src = data(70_000, 5);
    let mut plain = Vec::new();
    tar_entry(&mut plain, "a.txt", &src, b'0');
    let plain = tar_end(plain);
    let mut pax = Vec::new();
    let recs = format!(
        "{}{}",
        pax_record("size", &src.len().to_string()),
        pax_record("path", "ééééééééééééééé.txt")
    );
    tar_entry(&mut pax, "PaxHeaders/a", recs.as_bytes(), b'x');
    // The ustar size field says 0: the pax size wins.
    pax.extend_from_slice(&tar_header("a.txt", 0, b'0'));
    pax.extend_from_slice(&src);
    pax.resize(pax.len() + (512 - src.len() % 512) % 512, 0);
    let pax = tar_end(pax);
    let mut gnu = Vec::new();
    tar_entry(&mut gnu, "././@LongLink", &[b'n'; 300], b'L');
    tar_entry(&mut gnu, "nnnn", &src, 0);
    let gnu = tar_end(gnu);
    for (name, t) in [("plain", plain), ("pax", pax), ("gnu", gnu)] {
        let gz = gzip(&t);
        for piece in [1, 333, gz.len()] {
            let got = decode(V110Compress::TarGz, &gz, piece, 1 << 30);
            assert_eq!(got.unwrap(), src, "{name} piece {piece}");
        }
    }
    // Without its end blocks a whole file loses nothing; cut inside the next header it is
    // truncated.
    let mut endless = Vec::new();
    tar_entry(&mut endless, "a.txt", &src, b'0');
    let gz = gzip(&endless);
    assert_eq!(decode(V110Compress::TarGz, &gz, 333, 1 << 30).unwrap(), src);
    endless.extend_from_slice(&[0; 100]);
    assert!(matches!(
        decode(V110Compress::TarGz, &gzip(&endless), 333, 1 << 30),
        Err(DecodeError::Truncated)
    ));
    let mut empty = Vec::new();
    tar_entry(&mut empty, "e", b"", b'0');
    assert_eq!(
        decode(V110Compress::TarGz, &gzip(&tar_end(empty)), 7, 0).unwrap(),
        b""
    );
}

/// A pax header of exactly 1 MiB (MAX_META) is read; one byte more is refused.
#[test]
fn f34_targz_pax_header_up_to_1_mib() {
    let src = b"hello";
    for (extra, ok) in [(0, true), (1, false)] {
        let size = pax_record("size", "5");
        let want = MAX_META + extra - size.len();
        let filler = "c".repeat(want - want.to_string().len() - 10);
        let recs = format!("{size}{want} comment={filler}\n");
        assert_eq!(recs.len(), MAX_META + extra);
        let mut t = Vec::new();
        tar_entry(&mut t, "PaxHeaders/a", recs.as_bytes(), b'x');
        tar_entry(&mut t, "a.txt", src, b'0');
        let gz = gzip(&tar_end(t));
        let got = decode(V110Compress::TarGz, &gz, gz.len(), 1 << 30);
        match ok {
            true => assert_eq!(got.unwrap(), src),
            false => assert!(matches!(got, Err(DecodeError::Tar("pax header too large")))),
        }
    }
}

/// Tar sizes: octal with spaces and NULs around it, or GNU base-256 (high bit of the first
/// byte set, the rest of it and the other bytes big-endian).
#[test]
fn tar_numbers_octal_and_base_256() {
    assert_eq!(tar_number(b"00000000644\0").unwrap(), 0o644);
    assert_eq!(tar_number(b"  17 \0\0\0\0\0\0\0").unwrap(), 0o17);
    assert_eq!(tar_number(b"\0\0\0\0").unwrap(), 0);
    let mut big = [0u8; 12];
    big[0] = 0x80;
    big[11] = 1;
    assert_eq!(tar_number(&big).unwrap(), 1);
    big[7] = 2;
    assert_eq!(tar_number(&big).unwrap(), (2 << 32) | 1);
    // The first byte's low bits are the value's top: here 2^88, past 64 bits.
    big[0] = 0x81;
    assert!(matches!(
        tar_number(&big),
        Err(DecodeError::Tar("size too large"))
    ));
    assert!(matches!(
        tar_number(b"0009\0"),
        Err(DecodeError::Tar("bad octal number"))
    ));
}

/// Pax records: `<len> <key>=<value>\n`, the length counting the whole record; a length that
/// leaves no room for a key or runs past the block is refused.
#[test]
fn pax_sizes_and_bad_record_lengths() {
    assert_eq!(pax_size(b"12 size=100\n").unwrap(), Some(100));
    assert_eq!(pax_size(b"9 a=bcde\n12 size=100\n").unwrap(), Some(100));
    assert_eq!(pax_size(b"").unwrap(), None);
    for bad in [&b"2 "[..], b"1 x", b"99 size=1\n", b"0 ", b"x size=1\n"] {
        assert!(
            matches!(
                pax_size(bad),
                Err(DecodeError::Tar("bad pax record length"))
            ),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn f34_targz_refusals() {
    let src = data(3000, 6);
    let mut two = Vec::new();
    tar_entry(&mut two, "a", &src, b'0');
    tar_entry(&mut two, "b", &src, b'0');
    let mut dir = Vec::new();
    tar_entry(&mut dir, "d/", b"", b'5');
    let mut badsum = Vec::new();
    tar_entry(&mut badsum, "a", &src, b'0');
    badsum[0] = b'b';
    let mut after = Vec::new();
    tar_entry(&mut after, "a", &src, b'0');
    after.resize(after.len() + 1024, 0);
    after.extend_from_slice(b"garbage");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (tar_end(two), "more than one member"),
        (tar_end(dir), "member is not a regular file"),
        (tar_end(badsum), "header checksum mismatch"),
        (after, "data after the end of the archive"),
        (tar_end(Vec::new()), "no regular file"),
    ];
    for (t, why) in cases {
        match decode(V110Compress::TarGz, &gzip(&t), 100, 1 << 30) {
            Err(DecodeError::Tar(w)) => assert_eq!(w, why),
            other => panic!("{why}: {other:?}"),
        }
    }
    let mut ok = Vec::new();
    tar_entry(&mut ok, "a", &src, b'0');
    let gz = gzip(&tar_end(ok));
    assert!(matches!(
        decode(V110Compress::TarGz, &gz, 100, 2999),
        Err(DecodeError::TooLarge { .. })
    ));
    assert!(matches!(
        decode(V110Compress::TarGz, &gz[..gz.len() - 1], 100, 1 << 30),
        Err(DecodeError::Truncated)
    ));
    let two_members = [&gz[..], &gz[..]].concat();
    assert!(matches!(
        decode(V110Compress::TarGz, &two_members, 100, 1 << 30),
        Err(DecodeError::Trailing)
    ));
    let mut crc_off = gz.clone();
    let n = crc_off.len();
    crc_off[n - 8] ^= 1;
    assert!(matches!(
        decode(V110Compress::TarGz, &crc_off, 100, 1 << 30),
        Err(DecodeError::Gzip("CRC-32 mismatch"))
    ));
    assert!(matches!(
        decode(V110Compress::TarGz, b"\x1f\x8b\x07\0\0\0\0\0\0\0", 100, 1),
        Err(DecodeError::Gzip(_))
    ));
    // A bomb: 64 MiB of zeros in the tar, capped at 1 MiB.
    let mut big = Vec::new();
    tar_entry(&mut big, "z", &vec![0u8; 64 << 20], b'0');
    let gz = gzip(&tar_end(big));
    assert!(matches!(
        decode(V110Compress::TarGz, &gz, 65_536, 1 << 20),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn never_panics_on_truncations_and_mutations() {
    let src = data(20_000, 7);
    let mut t = Vec::new();
    tar_entry(&mut t, "a", &src, b'0');
    let fixtures = [
        (V110Compress::Zstd, zstd::bulk::compress(&src, 3).unwrap()),
        (V110Compress::Zip, zip(&src, one())),
        (
            V110Compress::Zip,
            zip(
                &src,
                ZipOpts {
                    zip64: true,
                    descriptor: true,
                    ..one()
                },
            ),
        ),
        (V110Compress::TarGz, gzip(&tar_end(t))),
    ];
    for (kind, f) in &fixtures {
        for cut in (0..f.len()).step_by(37) {
            assert!(decode(*kind, &f[..cut], 50, 1 << 30).is_err());
        }
    }
    let mut x = 0x5555_aaaa_1234_9876u64;
    for round in 0..400 {
        let (kind, f) = &fixtures[round % fixtures.len()];
        let mut b = f.clone();
        for _ in 0..1 + round % 3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % b.len() as u64) as usize;
            b[i] = (x >> 24) as u8;
        }
        let _ = decode(*kind, &b, 1 + (x % 700) as usize, 1 << 20);
    }
}
