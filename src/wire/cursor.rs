//! [`Cursor`]: bounds-checked reads over one byte slice (after rustls' `codec::Reader`).

/// Bytes left over where a message or record should have ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailing {
    /// How many bytes were left.
    pub extra: usize,
}

impl std::fmt::Display for Trailing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} unexpected bytes after the end", self.extra)
    }
}

/// A reader over a borrowed slice. Every read returns `None` when the slice holds too few bytes
/// and then leaves the position where it was, so a caller can retry with more input; nothing
/// here allocates, copies or panics.
#[derive(Clone, Copy, Debug)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

macro_rules! int_reads {
    ($($be:ident $le:ident $t:ty;)*) => {$(
        #[inline]
        #[doc = concat!("A big-endian `", stringify!($t), "`.")]
        pub fn $be(&mut self) -> Option<$t> {
            self.array().map(<$t>::from_be_bytes)
        }
        #[inline]
        #[doc = concat!("A little-endian `", stringify!($t), "`.")]
        pub fn $le(&mut self) -> Option<$t> {
            self.array().map(<$t>::from_le_bytes)
        }
    )*};
}

impl<'a> Cursor<'a> {
    #[inline]
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when every byte has been consumed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The bytes not yet consumed (the cursor does not move).
    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// The next `n` bytes, consumed.
    #[inline]
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.peek(n)?;
        self.pos += n;
        Some(s)
    }

    /// The next `n` bytes, not consumed.
    #[inline]
    pub fn peek(&self, n: usize) -> Option<&'a [u8]> {
        self.buf.get(self.pos..self.pos.checked_add(n)?)
    }

    /// Skips `n` bytes.
    #[inline]
    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    /// The next `N` bytes as an array.
    #[inline]
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.peek(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        self.pos += N;
        Some(a)
    }

    /// One byte.
    #[inline]
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }

    int_reads! {
        u16_be u16_le u16;
        u32_be u32_le u32;
        u64_be u64_le u64;
        i128_be i128_le i128;
    }

    /// A cursor over the next `n` bytes, which this one skips: for a length-delimited part that
    /// must be read to its end (check it with [`expect_empty`](Self::expect_empty)).
    #[inline]
    pub fn sub(&mut self, n: usize) -> Option<Cursor<'a>> {
        self.take(n).map(Cursor::new)
    }

    /// `Ok` when every byte has been consumed, else how many are left.
    #[inline]
    pub fn expect_empty(&self) -> Result<(), Trailing> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(Trailing { extra }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_both_byte_orders_and_stops_at_the_end() {
        let bytes = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.u8(), Some(1));
        assert_eq!(c.u16_be(), Some(0x0203));
        assert_eq!(c.u16_le(), Some(0x0504));
        assert_eq!(c.u32_be(), Some(0x0607_0809));
        assert_eq!(c.position(), 9);
        // Two bytes left: a u32 is "need more", and the position does not move.
        assert_eq!(c.u32_le(), None);
        assert_eq!(c.remaining(), 2);
        assert!(
            !c.is_empty(),
            "two bytes left (full run of wire: `true` stayed green)"
        );
        assert_eq!(c.expect_empty(), Err(Trailing { extra: 2 }));
        assert_eq!(
            Trailing { extra: 2 }.to_string(),
            "2 unexpected bytes after the end"
        );
        assert_eq!(c.peek(2), Some(&[10u8, 11][..]));
        assert_eq!(c.take(2), Some(&[10u8, 11][..]));
        assert!(c.is_empty() && c.expect_empty().is_ok());
        assert_eq!(c.u8(), None);
        assert_eq!(c.take(0), Some(&[][..]));
    }

    #[test]
    fn sub_reader_is_bounded_and_skipped() {
        let bytes = [0u8, 3, b'a', b'b', b'c', 9];
        let mut c = Cursor::new(&bytes);
        let len = c.u16_be().unwrap() as usize;
        let mut s = c.sub(len).unwrap();
        assert_eq!(s.take(4), None, "a sub-reader never reads past its part");
        assert_eq!(s.rest(), b"abc");
        s.skip(3).unwrap();
        assert!(s.expect_empty().is_ok());
        assert_eq!(c.u8(), Some(9));
        assert!(c.sub(1).is_none());
    }

    #[test]
    fn wide_integers() {
        let v = -5i128;
        let mut c = Cursor::new(&[0u8; 0]);
        assert_eq!(c.i128_le(), None);
        let le = v.to_le_bytes();
        assert_eq!(Cursor::new(&le).i128_le(), Some(v));
        let be = 0x0102_0304_0506_0708u64.to_be_bytes();
        assert_eq!(Cursor::new(&be).u64_be(), Some(0x0102_0304_0506_0708));
    }

    #[test]
    fn never_panics_on_huge_lengths() {
        let mut c = Cursor::new(b"xy");
        c.skip(1).unwrap();
        assert_eq!(c.take(usize::MAX), None);
        assert_eq!(c.peek(usize::MAX), None);
        assert!(c.sub(usize::MAX).is_none());
        assert_eq!(c.u8(), Some(b'y'));
    }
}
