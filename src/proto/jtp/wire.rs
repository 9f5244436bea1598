//! JTP's wire primitives: magics, LEB128 varints, image ids and the flags byte (jtp.md 2.1-2.3).
//!
//! Everything here is a pure function over bytes, read through [`crate::wire::Cursor`]; framing
//! of whole requests and responses lives in [`super::request`] and [`super::response`]. Readers
//! report "need more bytes" as `Ok(None)`, never as an error, and never panic. The text form of
//! an id (16 lowercase hex digits) is [`crate::wire::hex::encode_u64`] and
//! [`crate::wire::hex::parse_u64`].

use std::fmt;

use crate::wire::Cursor;

/// `JTPL`: reply to LIST.
pub const MAGIC_LIST: [u8; 4] = *b"JTPL";
/// `JTPD`: reply to GET_BY_ID.
pub const MAGIC_GET: [u8; 4] = *b"JTPD";
/// `JTPB`: reply to BATCH.
pub const MAGIC_BATCH: [u8; 4] = *b"JTPB";
/// `JTPG`: reply to LIST_AND_GET.
pub const MAGIC_LIST_AND_GET: [u8; 4] = *b"JTPG";
/// `JTPC`: CANCEL acknowledgement, exactly these 4 bytes.
pub const MAGIC_CANCEL: [u8; 4] = *b"JTPC";
/// `JTPW`: one WATCH event.
pub const MAGIC_WATCH: [u8; 4] = *b"JTPW";
/// `JTPE`: error frame; the server closes after it.
pub const MAGIC_ERROR: [u8; 4] = *b"JTPE";

/// Flags bit 3: the packet's data is one Zstandard frame.
pub const FLAG_ZSTD: u8 = 0x08;
/// Flags bits 4-7: "encrypted" (bit 4) and reserved; MUST be 0 on the wire.
pub const FLAGS_RESERVED: u8 = 0xf0;
/// Flags bits 0-2: the file type.
pub const FLAGS_TYPE: u8 = 0x07;

/// Longest varint that carries a u32.
pub const MAX_VARINT_LEN: usize = 5;

/// Appends `v` as a minimal unsigned LEB128 varint (1 to 5 bytes).
pub fn put_varint(mut v: u32, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Number of bytes [`put_varint`] writes for `v`.
pub fn varint_len(v: u32) -> usize {
    match v {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        0x20_0000..=0xfff_ffff => 4,
        _ => 5,
    }
}

/// Reads a varint at the cursor (jtp.md 2.1) and moves past it.
///
/// `Ok(None)` is "need more": every byte left carries the continuation bit and there are fewer
/// than five of them; the cursor does not move. Rejected as malformed: a 5th byte with `0x80` set
/// (over-long), a 5th byte above `0x0f` (value above `u32::MAX`) and a final `00` after at least
/// one other byte (non-minimal, e.g. `80 00`).
#[inline]
pub fn get_varint(c: &mut Cursor<'_>) -> Result<Option<u32>, WireError> {
    // One byte (any value below 128) is by far the most common: counts and small sizes.
    if let Some(&b) = c.rest().first() {
        if b < 0x80 {
            c.skip(1);
            return Ok(Some(u32::from(b)));
        }
    }
    let mut v: u32 = 0;
    for (i, &b) in c.rest().iter().take(MAX_VARINT_LEN).enumerate() {
        if i == MAX_VARINT_LEN - 1 && b > 0x0f {
            // Covers both the over-long form (0x80 set) and bits above 32.
            return Err(WireError::MalformedVarint);
        }
        v |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(WireError::MalformedVarint);
            }
            c.skip(i + 1);
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// The length of the varint at the start of `prefix` or, while `prefix` holds only
/// continuation bytes, the fewest bytes it can have: the `need` of a [`Stash`](crate::wire::Stash)
/// gathering a varint split across reads.
pub fn varint_need(prefix: &[u8]) -> Result<usize, WireError> {
    let mut c = Cursor::new(prefix);
    Ok(match get_varint(&mut c)? {
        Some(_) => c.position(),
        // All of the prefix (at most 4 bytes) belongs to the varint.
        None => prefix.len() + 1,
    })
}

/// The ImageID of a file's bytes: xxHash64 with seed 0 (jtp.md 2.2).
pub fn image_id(data: &[u8]) -> u64 {
    twox_hash::XxHash64::oneshot(0, data)
}

/// File type carried in flags bits 0-2 (jtp.md 2.3).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    Png = 0,
    Jpeg = 1,
    Webp = 2,
    Bmp = 3,
    Gif = 4,
    /// Type 7 (and the reserved 5 and 6 when read from the wire).
    Other = 7,
}

impl FileType {
    /// Type from the last extension, ASCII case-insensitive; `None` when the name is not one of
    /// JTP's image types (the server never serves such files, so it never produces `Other`).
    pub fn from_name(name: &str) -> Option<FileType> {
        let (_, ext) = name.rsplit_once('.')?;
        let t = if ext.eq_ignore_ascii_case("png") {
            FileType::Png
        } else if ext.eq_ignore_ascii_case("jpg") || ext.eq_ignore_ascii_case("jpeg") {
            FileType::Jpeg
        } else if ext.eq_ignore_ascii_case("webp") {
            FileType::Webp
        } else if ext.eq_ignore_ascii_case("bmp") {
            FileType::Bmp
        } else if ext.eq_ignore_ascii_case("gif") {
            FileType::Gif
        } else {
            return None;
        };
        Some(t)
    }

    /// Type from a flags byte (only bits 0-2 are looked at; 5, 6 and 7 read as `Other`).
    pub fn from_bits(b: u8) -> FileType {
        match b & FLAGS_TYPE {
            0 => FileType::Png,
            1 => FileType::Jpeg,
            2 => FileType::Webp,
            3 => FileType::Bmp,
            4 => FileType::Gif,
            _ => FileType::Other,
        }
    }

    /// The type's bits for a flags byte.
    pub fn bits(self) -> u8 {
        self as u8
    }

    /// Extension for fallback names (jtp.md 5.2): png jpg webp bmp gif, `bin` for other.
    pub fn ext(self) -> &'static str {
        match self {
            FileType::Png => "png",
            FileType::Jpeg => "jpg",
            FileType::Webp => "webp",
            FileType::Bmp => "bmp",
            FileType::Gif => "gif",
            FileType::Other => "bin",
        }
    }
}

/// What is wrong with bytes at the primitive level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Over-long, above `u32::MAX` or non-minimal varint.
    MalformedVarint,
    /// RequestFlags bits 1-7 set.
    ReservedFlags,
    /// ReqType `06`-`ff`.
    UnknownRequestType(u8),
    /// BATCH HaveCount above the configured limit.
    HaveCountTooLarge(u32),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::MalformedVarint => f.write_str("jtp wire: malformed varint"),
            WireError::ReservedFlags => f.write_str("jtp wire: reserved flags set"),
            WireError::UnknownRequestType(t) => {
                write!(f, "jtp wire: unknown request type {t:#04x}")
            }
            WireError::HaveCountTooLarge(n) => write!(f, "jtp wire: have_count {n} too large"),
        }
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value and the cursor's position after it, or `None` (need more: the cursor stayed).
    fn read(b: &[u8]) -> Result<Option<(u32, usize)>, WireError> {
        let mut c = Cursor::new(b);
        let r = get_varint(&mut c)?;
        if r.is_none() {
            assert_eq!(c.position(), 0);
        }
        Ok(r.map(|v| (v, c.position())))
    }

    fn enc(v: u32) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(v, &mut out);
        out
    }

    #[test]
    fn j1_varint_table() {
        let table: &[(u32, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (4660, &[0xb4, 0x24]),
            (9332, &[0xf4, 0x48]),
            (90243, &[0x83, 0xc1, 0x05]),
            (1_000_000, &[0xc0, 0x84, 0x3d]),
            (4294967295, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(v, bytes) in table {
            assert_eq!(enc(v), bytes, "encode {v}");
            assert_eq!(varint_len(v), bytes.len());
            assert_eq!(read(bytes), Ok(Some((v, bytes.len()))));
            assert_eq!(varint_need(bytes), Ok(bytes.len()));
        }
    }

    #[test]
    fn j1_varint_round_trips() {
        for v in [
            0,
            127,
            128,
            16383,
            16384,
            u32::MAX,
            0x1f_ffff,
            0x20_0000,
            0xfff_ffff,
        ] {
            let mut b = enc(v);
            assert_eq!(varint_len(v), b.len());
            b.push(0xaa); // a following byte is not read
            assert_eq!(read(&b), Ok(Some((v, b.len() - 1))));
            assert_eq!(varint_need(&b), Ok(b.len() - 1));
            for cut in 0..b.len() - 1 {
                assert_eq!(read(&b[..cut]), Ok(None));
                assert_eq!(varint_need(&b[..cut]), Ok(cut + 1));
            }
        }
    }

    #[test]
    fn j2_varint_rejects() {
        for bad in [
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..],
            &[0x80, 0x80, 0x80, 0x80, 0x10],
            &[0x80, 0x00],
            &[0xff, 0x80, 0x00],
            &[0xff, 0xff, 0xff, 0xff, 0x80],
        ] {
            assert_eq!(read(bad), Err(WireError::MalformedVarint), "{bad:02x?}");
            assert_eq!(varint_need(bad), Err(WireError::MalformedVarint));
        }
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(read(&[0x80, 0x80, 0x80, 0x80]), Ok(None));
        assert_eq!(varint_need(&[0x80, 0x80, 0x80, 0x80]), Ok(5));
    }

    #[test]
    fn j3_image_id() {
        use crate::wire::hex::{encode_u64, parse_u64};
        assert_eq!(image_id(b""), 0xef46db3751d8e999);
        assert_eq!(encode_u64(image_id(b"")), "ef46db3751d8e999");
        assert_eq!(encode_u64(1), "0000000000000001");
        assert_eq!(parse_u64("ef46db3751d8e999"), Some(0xef46db3751d8e999));
        assert_eq!(parse_u64("EF46DB3751D8E999"), Some(0xef46db3751d8e999));
        assert_eq!(parse_u64("+f46db3751d8e99"), None);
        assert_eq!(parse_u64("+f46db3751d8e999"), None);
        assert_eq!(parse_u64("ef46db3751d8e99"), None);
        assert_eq!(parse_u64("ef46db3751d8e9999"), None);
        assert_eq!(parse_u64("ef46db3751d8e99g"), None);
        assert_eq!(parse_u64("ééééééé9"), None);
        assert_eq!(parse_u64("éééééééé"), None);
    }

    #[test]
    fn file_types() {
        assert_eq!(FileType::from_name("a.PNG"), Some(FileType::Png));
        assert_eq!(FileType::from_name("a.tar.jpeg"), Some(FileType::Jpeg));
        assert_eq!(FileType::from_name("b.Jpg"), Some(FileType::Jpeg));
        assert_eq!(FileType::from_name("c.webp"), Some(FileType::Webp));
        assert_eq!(FileType::from_name("d.bmp"), Some(FileType::Bmp));
        assert_eq!(FileType::from_name("e.gif"), Some(FileType::Gif));
        assert_eq!(FileType::from_name("png"), None);
        assert_eq!(FileType::from_name("x.png.txt"), None);
        assert_eq!(FileType::from_name("x."), None);
        for (b, t) in [(0, "png"), (1, "jpg"), (2, "webp"), (3, "bmp"), (4, "gif")] {
            assert_eq!(FileType::from_bits(b | FLAG_ZSTD).ext(), t);
            assert_eq!(FileType::from_bits(b).bits(), b);
        }
        for b in 5..8 {
            assert_eq!(FileType::from_bits(b), FileType::Other);
        }
        assert_eq!(FileType::Other.ext(), "bin");
    }

    #[test]
    fn display_is_lowercase() {
        assert_eq!(
            WireError::MalformedVarint.to_string(),
            "jtp wire: malformed varint"
        );
        assert_eq!(
            WireError::UnknownRequestType(0xfe).to_string(),
            "jtp wire: unknown request type 0xfe"
        );
    }
}
