//! CRC-32C (Castagnoli) of uncompressed chunks, the per-chunk integrity check of fastdp.md 2.8.
//!
//! Reflected polynomial `0x82F63B78`, initial value and final XOR `0xFFFFFFFF`, the iSCSI CRC.
//! The `crc32c` crate uses the SSE 4.2 `crc32` instruction (or ARMv8's) when the processor has
//! it, about 20 GB/s here, and a table otherwise: a table loop alone (~1 GB/s) would be the
//! ceiling of a 1 GiB push, since every byte is summed once on each side.

/// CRC-32C of `data` in one call.
pub fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

/// CRC-32C over data that arrives in pieces (a chunk written slice by slice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Crc32c(u32);

impl Crc32c {
    pub fn new() -> Crc32c {
        Crc32c(0)
    }

    /// Adds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0 = ::crc32c::crc32c_append(self.0, data);
    }

    /// The CRC of everything added so far (the value stays usable).
    pub fn value(&self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f12_check_values_of_the_spec() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b"123456789"), 3_808_858_755);
        assert_eq!(crc32c(b"AAAA"), 0x0305_6CF3);
        assert_eq!(crc32c(b"AAAA"), 50_687_219);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn pieces_give_the_same_value_as_one_call() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = crc32c(&data);
        for cut in [0, 1, 7, 4096, 9_999, 10_000] {
            let mut c = Crc32c::new();
            c.update(&data[..cut]);
            c.update(&data[cut..]);
            assert_eq!(c.value(), whole, "cut at {cut}");
        }
        let mut bytewise = Crc32c::new();
        for b in &data {
            bytewise.update(std::slice::from_ref(b));
        }
        assert_eq!(bytewise.value(), whole);
    }
}
