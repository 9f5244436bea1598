//! Identifiers of filestorage (spec 2.2, 4.3, 4.4, 7.3): the strict 36-character UUID text form,
//! RFC 9562 version 5 UUIDs (SHA-1 of a namespace and a name), and the ids derived with them:
//! chunk ids `UUIDv5(fid, "<file>:<n>")`, store ids `UUIDv5(fid, "<file>")`, catalog entry ids
//! `UUIDv5(CATNS, "<sha256 hex>")`, the client's stable `fid`, and message ids.
//!
//! Out of scope: randomness. [`MessageIds`] turns 16 bytes the driver drew from the operating
//! system into a stream of distinct version 4 ids, so the machines stay pure and tests can ask
//! for the spec's sequential ids instead.

use sha1::{Digest, Sha1};
use sha2::Sha256;
use std::fmt;

/// A UUID as its 16 bytes. Ordering is byte order, which is also the order of the lowercase text
/// form (QUERY sorts results "by id text", spec 6).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

/// Characters of the hyphenated text form.
pub const UUID_TEXT_LEN: usize = 36;
/// Where the text form has its hyphens.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

impl Uuid {
    /// The nil UUID, `00000000-0000-0000-0000-000000000000`.
    pub const NIL: Uuid = Uuid([0; 16]);

    pub const fn from_bytes(bytes: [u8; 16]) -> Uuid {
        Uuid(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parses exactly the 36-character hyphenated form, hex digits in either case (spec 2.2).
    /// The simple, braced and `urn:uuid:` forms, and anything else, are `None`.
    pub fn parse(text: &[u8]) -> Option<Uuid> {
        if text.len() != UUID_TEXT_LEN {
            return None;
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in text.iter().enumerate() {
            if HYPHENS.contains(&i) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return None,
            };
            out[nibbles / 2] |= if nibbles % 2 == 0 { v << 4 } else { v };
            nibbles += 1;
        }
        Some(Uuid(out))
    }

    /// The lowercase hyphenated text form.
    pub fn to_text(&self) -> [u8; UUID_TEXT_LEN] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; UUID_TEXT_LEN];
        let mut at = 0;
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                at += 1;
            }
            out[at] = DIGITS[(b >> 4) as usize];
            out[at + 1] = DIGITS[(b & 15) as usize];
            at += 2;
        }
        out
    }

    /// RFC 9562 version 5: SHA-1 of the namespace's 16 bytes and `name`, the first 16 bytes of
    /// the digest with the version (5) and variant (`10`) bits set.
    pub fn v5(namespace: &Uuid, name: &[u8]) -> Uuid {
        let digest = Sha1::new()
            .chain_update(namespace.0)
            .chain_update(name)
            .finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        b[6] = (b[6] & 0x0f) | 0x50;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }

    /// A version 4 UUID from 16 random bytes (version and variant bits overwritten).
    pub fn v4_from_bytes(mut b: [u8; 16]) -> Uuid {
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_text();
        // The text is ASCII by construction.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

impl std::str::FromStr for Uuid {
    type Err = BadUuid;
    fn from_str(s: &str) -> Result<Uuid, BadUuid> {
        Uuid::parse(s.as_bytes()).ok_or(BadUuid)
    }
}

/// Text that is not the 36-character hyphenated form of a UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadUuid;

impl fmt::Display for BadUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("uuid: not the 36-character hyphenated form")
    }
}

impl std::error::Error for BadUuid {}

/// RFC 9562's URL namespace, `6ba7b811-9dad-11d1-80b4-00c04fd430c8`.
pub const URL_NAMESPACE: Uuid = Uuid([
    0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8,
]);

/// `CATNS = UUIDv5(URL namespace, "ferry:filestorage:catalog")` =
/// `553c4a93-5177-5926-9c2e-f924a4c658f1`, the namespace of catalog entry ids (spec 7.3).
pub const CATNS: Uuid = Uuid([
    0x55, 0x3c, 0x4a, 0x93, 0x51, 0x77, 0x59, 0x26, 0x9c, 0x2e, 0xf9, 0x24, 0xa4, 0xc6, 0x58, 0xf1,
]);

/// The catalog id of the empty file, `ed9dc26b-32a8-51f1-b95c-9dbacda0460c` (spec 7.3).
pub const EMPTY_FILE_CATALOG_ID: Uuid = Uuid([
    0xed, 0x9d, 0xc2, 0x6b, 0x32, 0xa8, 0x51, 0xf1, 0xb9, 0x5c, 0x9d, 0xba, 0xcd, 0xa0, 0x46, 0x0c,
]);

/// `UUIDv5(URL namespace, "ferry:filestorage:fid")` = `428b12d6-a9dc-5428-a97d-0418ed6a8a4d`:
/// ferry's own namespace for the client's derived `fid` (spec 4.4 leaves the digest to ferry).
pub const FID_NAMESPACE: Uuid = Uuid([
    0x42, 0x8b, 0x12, 0xd6, 0xa9, 0xdc, 0x54, 0x28, 0xa9, 0x7d, 0x04, 0x18, 0xed, 0x6a, 0x8a, 0x4d,
]);

/// Writes `v` in ASCII decimal into `buf` from `at`, returning the new end.
fn put_decimal(buf: &mut [u8; 48], at: usize, v: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut n = v;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[at + i] = digits[len - 1 - i];
    }
    at + len
}

/// The id of chunk `n` of file `file` of the batch `fid`: `UUIDv5(fid, "<file>:<n>")` (spec 4.3).
pub fn chunk_id(fid: &Uuid, file: u64, n: u64) -> Uuid {
    let mut name = [0u8; 48];
    let mut at = put_decimal(&mut name, 0, file);
    name[at] = b':';
    at = put_decimal(&mut name, at + 1, n);
    Uuid::v5(fid, &name[..at])
}

/// The store id of file `file` of the batch `fid`: `UUIDv5(fid, "<file>")` (spec 7.1), also
/// the name of its record.
pub fn store_id(fid: &Uuid, file: u64) -> Uuid {
    let mut name = [0u8; 48];
    let at = put_decimal(&mut name, 0, file);
    Uuid::v5(fid, &name[..at])
}

/// The id of a catalog file with this SHA-256: `UUIDv5(CATNS, "<sha256 hex>")` (spec 7.3).
pub fn catalog_id(sha256: &[u8; 32]) -> Uuid {
    Uuid::v5(&CATNS, crate::wire::hex::encode(sha256).as_bytes())
}

/// One file of a batch as the client describes it, for [`client_fid`].
#[derive(Clone, Copy, Debug)]
pub struct FidFile<'a> {
    pub name: &'a str,
    pub size: u64,
    pub sha256: Option<&'a [u8; 32]>,
}

/// ferry's client `fid` (spec 4.4): `UUIDv5(FID_NAMESPACE, D)`, where D is an unambiguous
/// encoding of everything that describes the batch, so rerunning the same command resumes it
/// without local state: login, then each file's name, size and SHA-256 in order, then the tag
/// set (sorted, duplicates dropped, as the server stores it), then the chunk size. Strings are
/// u32 BE length-prefixed, integers u64 BE, an absent SHA-256 is one `00` byte and a present one
/// `01` and its 32 bytes.
pub fn client_fid(login: &str, files: &[FidFile<'_>], tags: &[&str], chunk_size: u32) -> Uuid {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut d = Vec::with_capacity(64 + files.len() * 64);
    put_str(&mut d, login);
    d.extend_from_slice(&(files.len() as u64).to_be_bytes());
    for f in files {
        put_str(&mut d, f.name);
        d.extend_from_slice(&f.size.to_be_bytes());
        match f.sha256 {
            None => d.push(0),
            Some(h) => {
                d.push(1);
                d.extend_from_slice(h);
            }
        }
    }
    let mut tags: Vec<&str> = tags.to_vec();
    tags.sort_unstable();
    tags.dedup();
    d.extend_from_slice(&(tags.len() as u64).to_be_bytes());
    for t in tags {
        put_str(&mut d, t);
    }
    d.extend_from_slice(&u64::from(chunk_size).to_be_bytes());
    Uuid::v5(&FID_NAMESPACE, &d)
}

/// A source of `message-id`s, new per message (spec 4.1).
#[derive(Clone, Debug)]
pub enum MessageIds {
    /// Version 4 ids: the first 16 bytes of SHA-256(seed, counter), so 16 random bytes drawn once
    /// per connection by the driver give distinct unpredictable ids.
    Random { seed: [u8; 16], counter: u64 },
    /// `next` then `next + 1`, ... (adding to the low 64 bits): the spec's transcripts use
    /// `1a2b3c4d-0000-4000-8000-000000000001`, `...0002`, and tests reproduce them.
    Sequential { next: Uuid },
}

impl MessageIds {
    pub fn random(seed: [u8; 16]) -> MessageIds {
        MessageIds::Random { seed, counter: 0 }
    }

    pub fn sequential(first: Uuid) -> MessageIds {
        MessageIds::Sequential { next: first }
    }

    /// The next id; never nil.
    pub fn next_id(&mut self) -> Uuid {
        match self {
            MessageIds::Random { seed, counter } => {
                let digest = Sha256::new()
                    .chain_update(*seed)
                    .chain_update(counter.to_be_bytes())
                    .finalize();
                *counter = counter.wrapping_add(1);
                let mut b = [0u8; 16];
                b.copy_from_slice(&digest[..16]);
                Uuid::v4_from_bytes(b)
            }
            MessageIds::Sequential { next } => {
                let id = *next;
                let mut low = [0u8; 8];
                low.copy_from_slice(&id.0[8..]);
                let low = u64::from_be_bytes(low).wrapping_add(1);
                next.0[8..].copy_from_slice(&low.to_be_bytes());
                if id.is_nil() {
                    return self.next_id();
                }
                id
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Uuid {
        s.parse().unwrap()
    }

    const FID: &str = "0b6e3c1e-2f4d-4a7b-8c9d-112233445566";

    #[test]
    fn s16_chunk_ids_of_spec_4_3() {
        let fid = u(FID);
        assert_eq!(
            chunk_id(&fid, 0, 0).to_string(),
            "d85e0a50-7da3-591d-88ef-fd94e7421ed5"
        );
        assert_eq!(
            chunk_id(&fid, 0, 1).to_string(),
            "ae972e88-9fac-5a70-85bf-4e8c43db00f7"
        );
        assert_eq!(
            chunk_id(&fid, 0, 2).to_string(),
            "d86b6cad-0fe2-52df-b666-7796d2299707"
        );
        assert_eq!(
            store_id(&fid, 0).to_string(),
            "e96bc64c-adca-5bcc-a054-20301277daef"
        );
        // The decimal names have no padding and reach u64::MAX without overflow.
        assert_eq!(
            chunk_id(&fid, 1023, 9_999_999_999_999),
            Uuid::v5(&fid, b"1023:9999999999999")
        );
        assert_eq!(
            chunk_id(&fid, u64::MAX, u64::MAX),
            Uuid::v5(&fid, format!("{}:{}", u64::MAX, u64::MAX).as_bytes())
        );
        assert_ne!(chunk_id(&fid, 1, 10), chunk_id(&fid, 11, 0));
    }

    #[test]
    fn s37_catalog_namespace_and_empty_file_id() {
        assert_eq!(
            Uuid::v5(&URL_NAMESPACE, b"ferry:filestorage:catalog"),
            CATNS
        );
        assert_eq!(CATNS.to_string(), "553c4a93-5177-5926-9c2e-f924a4c658f1");
        let empty: [u8; 32] = Sha256::digest(b"").into();
        assert_eq!(catalog_id(&empty), EMPTY_FILE_CATALOG_ID);
        assert_eq!(
            EMPTY_FILE_CATALOG_ID.to_string(),
            "ed9dc26b-32a8-51f1-b95c-9dbacda0460c"
        );
        assert_eq!(
            Uuid::v5(&URL_NAMESPACE, b"ferry:filestorage:fid"),
            FID_NAMESPACE
        );
    }

    #[test]
    fn text_form_is_strict_and_either_case() {
        // The bytes a UUID is made of are the bytes it gives back (whole run,
        // proto-filestorage ids part: `as_bytes` as zeros or ones stayed green).
        let b: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(Uuid::from_bytes(b).as_bytes(), &b);
        // And text that is not one says so (its Display as empty stayed green).
        let e = "not-a-uuid".parse::<Uuid>().unwrap_err();
        assert_eq!(e.to_string(), "uuid: not the 36-character hyphenated form");
        let lower = u(FID);
        assert_eq!(u("0B6E3C1E-2F4D-4A7B-8C9D-112233445566"), lower);
        assert_eq!(u("0b6E3c1E-2f4D-4a7B-8c9D-112233445566"), lower);
        for bad in [
            "0b6e3c1e2f4d4a7b8c9d112233445566",
            "{0b6e3c1e-2f4d-4a7b-8c9d-112233445566}",
            "urn:uuid:0b6e3c1e-2f4d-4a7b-8c9d-112233445566",
            "0b6e3c1e-2f4d-4a7b-8c9d-11223344556",
            "0b6e3c1e-2f4d-4a7b-8c9d-1122334455667",
            "0b6e3c1e-2f4d-4a7b-8c9d_112233445566",
            "0b6e3c1e-2f4d-4a7b-8c9d-11223344556g",
            "0b6e3c1e-2f4d-4a7b-8c9-d112233445566",
            " b6e3c1e-2f4d-4a7b-8c9d-112233445566",
            "+b6e3c1e-2f4d-4a7b-8c9d-112233445566",
            "",
        ] {
            assert_eq!(Uuid::parse(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(Uuid::parse(&[0xff; 36]), None);
        assert!(Uuid::NIL.is_nil());
        assert_eq!(
            Uuid::NIL.to_string(),
            "00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(format!("{lower:?}"), format!("Uuid({FID})"));
        assert_eq!(&lower.to_text(), FID.as_bytes());
        assert_eq!("x".parse::<Uuid>(), Err(BadUuid));
    }

    #[test]
    fn client_fid_is_stable_and_covers_every_field() {
        let h = [7u8; 32];
        let files = [
            FidFile {
                name: "a",
                size: 1,
                sha256: Some(&h),
            },
            FidFile {
                name: "b",
                size: 2,
                sha256: None,
            },
        ];
        let base = client_fid("karchnu", &files, &["x", "y"], 65536);
        assert_eq!(base, client_fid("karchnu", &files, &["y", "x", "x"], 65536));
        assert_eq!(base.0[6] >> 4, 5, "a version 5 id");
        assert_ne!(base, client_fid("karchnu2", &files, &["x", "y"], 65536));
        assert_ne!(base, client_fid("karchnu", &files, &["x"], 65536));
        assert_ne!(base, client_fid("karchnu", &files, &["x", "y"], 1000));
        assert_ne!(base, client_fid("karchnu", &files[..1], &["x", "y"], 65536));
        let mut other = files;
        other[1].size = 3;
        assert_ne!(base, client_fid("karchnu", &other, &["x", "y"], 65536));
        other = files;
        other[1].sha256 = Some(&h);
        assert_ne!(base, client_fid("karchnu", &other, &["x", "y"], 65536));
        // Length prefixes keep "ab" + "" apart from "a" + "b".
        let ab = [FidFile {
            name: "ab",
            size: 0,
            sha256: None,
        }];
        let a_b = [FidFile {
            name: "a",
            size: 0,
            sha256: None,
        }];
        assert_ne!(
            client_fid("", &ab, &[], 1000),
            client_fid("", &a_b, &["b"], 1000)
        );
    }

    #[test]
    fn message_ids_are_new_each_time() {
        let mut seq = MessageIds::sequential(u("1a2b3c4d-0000-4000-8000-000000000001"));
        assert_eq!(
            seq.next_id().to_string(),
            "1a2b3c4d-0000-4000-8000-000000000001"
        );
        assert_eq!(
            seq.next_id().to_string(),
            "1a2b3c4d-0000-4000-8000-000000000002"
        );
        let mut from_nil = MessageIds::sequential(Uuid::NIL);
        assert_eq!(
            from_nil.next_id().to_string(),
            "00000000-0000-0000-0000-000000000001"
        );
        let mut r = MessageIds::random([9; 16]);
        let a = r.next_id();
        let b = r.next_id();
        assert_ne!(a, b);
        assert_eq!(a.0[6] >> 4, 4);
        assert_eq!(a.0[8] >> 6, 2);
        assert_eq!(
            MessageIds::random([9; 16]).next_id(),
            a,
            "deterministic per seed"
        );
    }
}
