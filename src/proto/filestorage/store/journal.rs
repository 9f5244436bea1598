//! The partial-state journal (spec 7.1, 7.2): one 16-byte record per chunk made durable.
//!
//! ```text
//! 0      4          12        16
//! | file u32 BE | n u64 BE | CRC-32C u32 BE of bytes 0..12 |
//! ```
//!
//! Replay stops at the first short or bad-CRC record (a torn append); the driver truncates the
//! file there. Replaying an old journal over a newer state changes nothing, since a record only
//! marks a chunk held.

/// Bytes per record.
pub const RECORD_LEN: usize = 16;

/// "Chunk `n` of file `file` is durable."
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    pub file: u32,
    pub n: u64,
}

impl JournalRecord {
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut r = [0u8; RECORD_LEN];
        r[..4].copy_from_slice(&self.file.to_be_bytes());
        r[4..12].copy_from_slice(&self.n.to_be_bytes());
        let crc = crc32c::crc32c(&r[..12]);
        r[12..].copy_from_slice(&crc.to_be_bytes());
        r
    }

    /// `None` when the CRC does not match.
    pub fn decode(r: &[u8; RECORD_LEN]) -> Option<JournalRecord> {
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&r[12..]);
        if crc32c::crc32c(&r[..12]) != u32::from_be_bytes(crc) {
            return None;
        }
        let mut file = [0u8; 4];
        file.copy_from_slice(&r[..4]);
        let mut n = [0u8; 8];
        n.copy_from_slice(&r[4..12]);
        Some(JournalRecord {
            file: u32::from_be_bytes(file),
            n: u64::from_be_bytes(n),
        })
    }
}

/// Replays a journal's bytes: calls `apply` for each good record in order and returns the
/// length of the good prefix (where the driver truncates the file).
pub fn replay(bytes: &[u8], mut apply: impl FnMut(JournalRecord)) -> usize {
    let mut good = 0;
    for chunk in bytes.chunks_exact(RECORD_LEN) {
        let Some(r) = chunk.try_into().ok().and_then(JournalRecord::decode) else {
            break;
        };
        apply(r);
        good += RECORD_LEN;
    }
    good
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bytes() {
        let r = JournalRecord {
            file: 1,
            n: 0x0102_0304_0506_0708,
        };
        let b = r.encode();
        assert_eq!(&b[..12], [0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[12..], crc32c::crc32c(&b[..12]).to_be_bytes());
        assert_eq!(JournalRecord::decode(&b), Some(r));
        // CRC-32C check value: "123456789" -> e3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        for i in 0..RECORD_LEN {
            let mut bad = b;
            bad[i] ^= 0x10;
            assert_eq!(JournalRecord::decode(&bad), None, "bit flip at {i}");
        }
    }

    #[test]
    fn replay_stops_at_the_first_short_or_bad_record() {
        let mut j = Vec::new();
        for n in 0..5 {
            j.extend_from_slice(&JournalRecord { file: 0, n }.encode());
        }
        let mut seen = Vec::new();
        assert_eq!(replay(&j, |r| seen.push(r.n)), 80);
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        // A torn append: the short tail is not replayed.
        let mut torn = j.clone();
        torn.extend_from_slice(&JournalRecord { file: 0, n: 5 }.encode()[..9]);
        seen.clear();
        assert_eq!(replay(&torn, |r| seen.push(r.n)), 80);
        assert_eq!(seen.len(), 5);
        // A bad record stops replay even if good ones follow.
        let mut bad = j.clone();
        bad[2 * RECORD_LEN + 5] ^= 1;
        seen.clear();
        assert_eq!(replay(&bad, |r| seen.push(r.n)), 32);
        assert_eq!(seen, [0, 1]);
        assert_eq!(replay(&[], |_| panic!()), 0);
        // Random bytes never panic and never replay past a bad record.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..(x % 50) as usize)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let good = replay(&junk, |_| {});
            assert_eq!(good % RECORD_LEN, 0);
            assert!(good <= junk.len());
        }
    }
}
