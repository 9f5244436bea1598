//! Catalog target: the persistent index decoder and its journal decoder
//! (`catalog::index`), over raw bytes and over bytes whose checksums the target fixes up, so
//! that the fuzzer reaches the record parsers behind the xxh64 checks.
//!
//! Invariants: no panic; what the index holds is bounded by the bytes it came from, not by the
//! count they announce; a decoded index re-encodes to an index that decodes the same (and to
//! the same bytes when no name repeats); a journal's good records re-encode to exactly the
//! bytes they were read from, `valid_len` ends on a record boundary, and reading the journal cut
//! there gives the same records and no defect.

use super::alloc::Meter;
use super::Script;
use crate::catalog::index::{decode, decode_journal, encode};

/// Index header: magic, version, count.
const HEADER_LEN: usize = 20;

/// `mode | bytes`: mode bit 0 set: the bytes are an index whose trailer the target replaces by
/// the right checksum (its `count` field too when bit 1 is set); mode 2 or 3 (mod 4): a journal
/// header then records `len | body` whose length and checksum the target writes.
pub fn catalog_index(data: &[u8]) {
    let mut s = Script::new(data);
    let mode = s.u8();
    let rest = s.rest();
    match mode % 4 {
        0 => {
            index(rest);
            journal(rest);
        }
        1 => {
            let mut bytes = b"FERRYIDX\x01\x00\x00\x00".to_vec();
            if mode & 0x10 != 0 {
                let count = u64::from(mode >> 5);
                bytes.extend_from_slice(&count.to_le_bytes());
            }
            bytes.extend_from_slice(rest);
            let sum = twox_hash::XxHash64::oneshot(0, &bytes);
            bytes.extend_from_slice(&sum.to_le_bytes());
            index(&bytes);
        }
        _ => {
            let mut bytes = b"FERRYJNL\x01\x00\x00\x00".to_vec();
            let mut r = Script::new(rest);
            while !r.is_empty() {
                let kind = r.u8();
                let body = match kind % 3 {
                    // A remove: op, name length, name.
                    0 => {
                        let name = r.chunk();
                        let mut b = vec![2];
                        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
                        b.extend_from_slice(name);
                        b
                    }
                    // A put: op, name, then 96 bytes of record.
                    1 => {
                        let name = r.chunk();
                        let mut b = vec![1];
                        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
                        b.extend_from_slice(name);
                        let fixed = r.bytes(96);
                        b.extend_from_slice(fixed);
                        b.resize(b.len() + 96 - fixed.len(), 0);
                        b
                    }
                    _ => r.chunk().to_vec(),
                };
                let start = bytes.len();
                bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
                bytes.extend_from_slice(&body);
                let mut sum = twox_hash::XxHash64::oneshot(0, &bytes[start..]);
                if kind & 0x80 != 0 {
                    sum ^= 1;
                }
                bytes.extend_from_slice(&sum.to_le_bytes());
                if kind & 0x40 != 0 {
                    // A torn tail: cut into this record.
                    let cut = bytes.len() - 1 - usize::from(r.u8()) % (bytes.len() - start);
                    bytes.truncate(cut);
                    break;
                }
            }
            journal(&bytes);
        }
    }
}

fn index(bytes: &[u8]) {
    let mut meter = Meter::default();
    meter.enter();
    let r = decode(bytes);
    meter.leave();
    // Each record takes at least its fixed 98 bytes; a map entry costs at most a few hundred.
    meter.check("catalog index decoder", 16 * bytes.len() + 4096);
    let Ok(idx) = r else { return };
    assert!(
        bytes.len() >= HEADER_LEN,
        "an index shorter than its header"
    );
    let again = encode(idx.iter().map(|(k, v)| (k.as_os_str(), v)));
    assert_eq!(decode(&again).ok(), Some(idx.clone()), "index re-encoded");
    let count = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    if count == idx.len() as u64 {
        // No repeated name: the encoding is the same bytes, whatever the order.
        assert_eq!(
            again.len(),
            bytes.len(),
            "index re-encoded to another length"
        );
    }
}

fn journal(bytes: &[u8]) {
    let mut meter = Meter::default();
    meter.enter();
    let r = decode_journal(bytes);
    meter.leave();
    // A record takes at least 15 bytes (an empty remove); the ops vector may be twice what it
    // holds; names are copied once.
    let op = std::mem::size_of::<crate::catalog::index::JournalOp>();
    meter.check(
        "catalog journal decoder",
        2 * op * (bytes.len() / 15 + 1) + bytes.len() + 4096,
    );
    let Ok(read) = r else { return };
    assert!(
        read.valid_len >= 12 && read.valid_len <= bytes.len(),
        "valid_len {} of {}",
        read.valid_len,
        bytes.len()
    );
    assert_eq!(
        read.stop.is_none(),
        read.valid_len == bytes.len(),
        "a defect must stop short of the end"
    );
    let mut enc = bytes[..12].to_vec();
    for op in &read.ops {
        assert!(
            op.encode(&mut enc),
            "a record read back that cannot be written"
        );
    }
    assert_eq!(
        enc.as_slice(),
        &bytes[..read.valid_len],
        "good records re-encode to other bytes"
    );
    let cut = decode_journal(&bytes[..read.valid_len]).expect("the good part reads");
    assert_eq!(cut.ops, read.ops, "the good part reads otherwise");
    assert!(cut.stop.is_none(), "the good part has a defect");
}
