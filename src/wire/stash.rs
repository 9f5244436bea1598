//! [`Stash`]: one field of a stream decoder, gathered across reads that may end anywhere.
//!
//! A stream decoder reads fields (a header, a catalog entry, an id, a message) out of whatever
//! input the socket gave it. Almost always the field is whole in that input and is best borrowed
//! from it; only when a read ends inside a field must its first bytes be kept until the rest
//! arrives. [`Stash::gather`] does both: it borrows a whole field from the input and otherwise
//! copies exactly the bytes the field still misses, never a byte past its end, so what follows
//! stays in the caller's buffer (bulk data after a header is never copied here).
//!
//! The field's length comes from a `need` function of the bytes seen so far:
//!
//! - it returns `n <= prefix.len()` when the field is exactly `prefix[..n]` (and then the same
//!   `n` for any longer prefix);
//! - it returns `n > prefix.len()` when the prefix is too short to tell: the field is at least
//!   `n` bytes long (a lower bound, never larger than the true length);
//! - it returns an error as soon as the prefix shows the field is malformed or longer than the
//!   protocol allows. "Need more" is never an error.
//!
//! Every length is compared with the stash's maximum before a byte is copied, whether the field
//! would be borrowed or copied, so a field is accepted or refused alike however the input is
//! split, and the stash never holds more than its maximum.

/// A field longer than the stash that gathers it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldTooLong {
    /// The length the field needs (at least).
    pub len: usize,
    /// The stash's maximum.
    pub max: usize,
}

impl std::fmt::Display for FieldTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stash: a field of {} bytes is over the maximum {}",
            self.len, self.max
        )
    }
}

impl std::error::Error for FieldTooLong {}

/// Outcome of [`Stash::gather`].
#[derive(Debug, PartialEq, Eq)]
pub enum Gathered<'a> {
    /// The whole field, borrowed from this call's input when it was whole there, else from the
    /// stash; `taken` is how many bytes of this call's input it took (the rest is untouched).
    Whole { taken: usize, field: &'a [u8] },
    /// Every byte of this call's input went into the stash, and the field still needs more.
    Partial,
}

/// An idle stash whose buffer grew past this gives the memory back.
const SHRINK_ABOVE: usize = 128 * 1024;

/// A bounded buffer for the one field being gathered (see the module doc).
#[derive(Debug)]
pub struct Stash {
    buf: Vec<u8>,
    max: usize,
    /// `buf` holds a field already handed out; it is dropped on the next call.
    spent: bool,
}

impl Stash {
    /// A stash for fields of at most `max` bytes. Nothing is allocated until a field is split.
    pub fn new(max: usize) -> Stash {
        Stash {
            buf: Vec::new(),
            max,
            spent: false,
        }
    }

    /// The longest field accepted.
    #[inline]
    pub fn max(&self) -> usize {
        self.max
    }

    /// The start of a field still being gathered (empty between fields).
    #[inline]
    pub fn held(&self) -> &[u8] {
        if self.spent {
            &[]
        } else {
            &self.buf
        }
    }

    /// Bytes allocated for the buffer (for memory checks in tests and stall accounting).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Forgets a field already handed out, and gives back a buffer a large field grew. `gather`
    /// does this itself; a decoder also calls it at the start of each call (once the previous
    /// event's borrow has ended) so that memory is not kept while the connection idles.
    #[inline]
    pub fn recycle(&mut self) {
        if self.spent {
            self.spent = false;
            self.buf.clear();
            if self.buf.capacity() > SHRINK_ABOVE {
                self.buf = Vec::new();
            }
        }
    }

    /// Drops whatever is held, partial field included (a decoder that starts over).
    pub fn clear(&mut self) {
        self.spent = true;
        self.recycle();
    }

    /// Gathers one field from the start of `input`, continuing the one held if any (see the
    /// module doc for `need`). On `Err` the bytes of this call are not counted as taken: the
    /// decoder is expected to stop.
    #[inline]
    pub fn gather<'a, E: From<FieldTooLong>>(
        &'a mut self,
        input: &'a [u8],
        mut need: impl FnMut(&[u8]) -> Result<usize, E>,
    ) -> Result<Gathered<'a>, E> {
        self.recycle();
        if self.buf.is_empty() {
            let n = self.check(need(input)?)?;
            if n <= input.len() {
                return Ok(Gathered::Whole {
                    taken: n,
                    field: &input[..n],
                });
            }
            // All of `input` lies inside the field (it is shorter than a lower bound of the
            // field's length), and `n` was checked against the maximum.
            self.copy(input, n);
            return Ok(Gathered::Partial);
        }
        let mut taken = 0;
        loop {
            let n = self.check(need(&self.buf)?)?;
            debug_assert!(self.buf.len() <= n, "need shrank below the bytes held");
            if self.buf.len() >= n {
                self.spent = true;
                return Ok(Gathered::Whole {
                    taken,
                    field: &self.buf[..n],
                });
            }
            if taken == input.len() {
                return Ok(Gathered::Partial);
            }
            let k = (n - self.buf.len()).min(input.len() - taken);
            self.copy(&input[taken..taken + k], n);
            taken += k;
        }
    }

    /// Appends `bytes` of a field at least `n` bytes long (`n` within the maximum). The buffer
    /// grows by doubling, as a `Vec` does, but never past `n`: a stash allocates no more than
    /// the bytes it was given call for, and never more than its maximum.
    fn copy(&mut self, bytes: &[u8], n: usize) {
        let want = self.buf.len() + bytes.len();
        if want > self.buf.capacity() {
            let cap = want.max(self.buf.capacity().saturating_mul(2)).min(n);
            self.buf.reserve_exact(cap - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    #[inline]
    fn check(&self, len: usize) -> Result<usize, FieldTooLong> {
        if len > self.max {
            return Err(FieldTooLong { len, max: self.max });
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum E {
        Bad(u8),
        TooLong(FieldTooLong),
    }

    impl From<FieldTooLong> for E {
        fn from(e: FieldTooLong) -> E {
            E::TooLong(e)
        }
    }

    /// A field of one length byte and that many bytes; 0xff is malformed.
    fn counted(p: &[u8]) -> Result<usize, E> {
        match p.first() {
            None => Ok(1),
            Some(0xff) => Err(E::Bad(0xff)),
            Some(&n) => Ok(1 + usize::from(n)),
        }
    }

    /// Gathers every field of `input` cut at `cuts`; every field is returned with whether it
    /// was borrowed from the input.
    fn fields(input: &[u8], cuts: &[usize], max: usize) -> Result<Vec<(Vec<u8>, bool)>, E> {
        let mut s = Stash::new(max);
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            let mut piece = &input[prev..c];
            prev = c;
            while !piece.is_empty() {
                match s.gather(piece, counted)? {
                    Gathered::Whole { taken, field } => {
                        let borrowed = field.as_ptr() == piece.as_ptr();
                        out.push((field.to_vec(), borrowed));
                        piece = &piece[taken..];
                    }
                    Gathered::Partial => break,
                }
                assert!(s.held().len() <= max && s.capacity() <= max);
            }
        }
        assert!(s.held().is_empty(), "the input ends on a field boundary");
        Ok(out)
    }

    #[test]
    fn borrows_whole_fields_and_copies_only_split_ones() {
        let input = b"\x02ab\x00\x03xyz";
        let whole = fields(input, &[], 8).unwrap();
        assert_eq!(
            whole,
            [
                (b"\x02ab".to_vec(), true),
                (b"\x00".to_vec(), true),
                (b"\x03xyz".to_vec(), true)
            ]
        );
        // Split inside the third field: only that one comes from the stash.
        let split = fields(input, &[6], 8).unwrap();
        assert_eq!(split[..2], whole[..2]);
        assert_eq!(split[2], (b"\x03xyz".to_vec(), false));
        // Split anywhere, and at every pair of offsets, the fields are the same.
        let strip = |v: Vec<(Vec<u8>, bool)>| v.into_iter().map(|f| f.0).collect::<Vec<_>>();
        let want = strip(whole);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                assert_eq!(strip(fields(input, &[a, b], 8).unwrap()), want, "{a} {b}");
            }
        }
    }

    #[test]
    fn copies_exactly_the_missing_bytes() {
        let mut s = Stash::new(8);
        assert_eq!(s.gather(b"\x03x", counted), Ok(Gathered::Partial));
        assert_eq!(s.held(), b"\x03x");
        // The field needs two more bytes; the third byte of the input is left to the caller.
        assert_eq!(
            s.gather(b"yzNEXT", counted),
            Ok(Gathered::Whole {
                taken: 2,
                field: b"\x03xyz"
            })
        );
        assert!(s.held().is_empty(), "a field handed out is not held");
        assert_eq!(s.gather(b"", counted), Ok(Gathered::Partial));
        assert!(s.held().is_empty());
    }

    #[test]
    fn the_bound_is_checked_before_copying_however_the_input_is_split() {
        let too_long = E::TooLong(FieldTooLong { len: 10, max: 8 });
        // Whole in the input: refused although nothing would be copied.
        let mut s = Stash::new(8);
        assert_eq!(s.gather(b"\x09abcdefghi", counted), Err(too_long));
        // Split after the length byte: refused before any byte is kept.
        let mut s = Stash::new(8);
        assert_eq!(s.gather(b"\x09", counted), Err(too_long));
        assert!(s.held().is_empty() && s.capacity() == 0);
        // Split earlier (a length known only once the stash holds it).
        let mut s = Stash::new(8);
        assert_eq!(s.gather(b"", counted), Ok(Gathered::Partial));
        assert_eq!(
            s.gather(b"\x09abc", counted),
            Err(E::TooLong(FieldTooLong { len: 10, max: 8 }))
        );
        assert!(s.held().len() <= 8);
        // Exactly the maximum is fine.
        assert_eq!(fields(b"\x07abcdefg", &[3], 8).unwrap().len(), 1);
        assert_eq!(
            FieldTooLong { len: 10, max: 8 }.to_string(),
            "stash: a field of 10 bytes is over the maximum 8"
        );
    }

    #[test]
    fn malformed_is_apart_from_need_more() {
        let mut s = Stash::new(8);
        assert_eq!(s.gather(b"\xff", counted), Err(E::Bad(0xff)));
        let mut s = Stash::new(8);
        assert_eq!(s.gather(b"", counted), Ok(Gathered::Partial));
        assert_eq!(s.gather(b"\xff", counted), Err(E::Bad(0xff)));
    }

    #[test]
    fn large_buffers_are_given_back_and_clear_drops_a_partial_field() {
        let mut s = Stash::new(1 << 20);
        let need = |p: &[u8]| -> Result<usize, E> { Ok(if p.is_empty() { 1 } else { 200_000 }) };
        let big = vec![1u8; 200_000];
        assert_eq!(s.gather(&big[..10], need), Ok(Gathered::Partial));
        assert!(matches!(
            s.gather(&big[10..], need),
            Ok(Gathered::Whole { taken: 199_990, field }) if field.len() == 200_000
        ));
        s.recycle();
        assert_eq!(s.capacity(), 0);
        assert_eq!(s.gather(&big[..10], need), Ok(Gathered::Partial));
        s.clear();
        assert!(s.held().is_empty());
        assert_eq!(s.max(), 1 << 20);
    }

    #[test]
    fn never_panics_on_random_input() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let len = (next() % 48) as usize;
            // Lengths 0..=15 against a maximum of 6, and now and then the malformed 0xff.
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    let high = if next() % 9 == 0 { 0xf0 } else { 0 };
                    (next() % 16) as u8 | high
                })
                .collect();
            let a = (next() as usize) % (len + 1);
            let b = a + (next() as usize) % (len - a + 1);
            let mut s = Stash::new(6);
            for piece in [&input[..a], &input[a..b], &input[b..]] {
                let mut piece = piece;
                while let Ok(Gathered::Whole { taken, .. }) = s.gather(piece, counted) {
                    piece = &piece[taken..];
                    if piece.is_empty() {
                        break;
                    }
                }
                assert!(s.held().len() <= s.max() && s.capacity() <= s.max());
            }
        }
    }

    #[test]
    fn a_large_field_grows_with_the_bytes_given_not_with_its_length() {
        // A 1 MiB field arriving in 4 KiB reads: the buffer doubles with what arrived (so few
        // reallocations) and never goes past the field's length.
        let need = |p: &[u8]| -> Result<usize, E> { Ok(if p.is_empty() { 1 } else { 1 << 20 }) };
        let input = vec![9u8; 1 << 20];
        let mut s = Stash::new(1 << 20);
        let mut grew = 0;
        let mut last = 0;
        for (i, piece) in input.chunks(4096).enumerate() {
            if let Ok(Gathered::Whole { field, .. }) = s.gather(piece, need) {
                assert_eq!(field.len(), 1 << 20);
            }
            assert!(s.capacity() <= (i + 1) * 4096 * 2 && s.capacity() <= 1 << 20);
            // It holds what it was given (full run of wire: `capacity` as 0 met every bound).
            assert!(
                s.capacity() >= s.held().len(),
                "{} < {}",
                s.capacity(),
                s.held().len()
            );
            if s.capacity() != last {
                grew += 1;
                last = s.capacity();
            }
        }
        assert!((2..=10).contains(&grew), "{grew} reallocations");
    }
}
