//! The missing chunks of a batch (spec 4.2 `missing`, 7.1 `state.json`): per file, sorted,
//! disjoint, merged half-open ranges of chunk numbers.

use std::collections::BTreeMap;

use crate::proto::filestorage::json::ChunkRange;

/// `nb(i) = ceil(size / chunk_size)`: how many chunks a file of `size` bytes has.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size.max(1)))
}

/// The byte length of chunk `n` of a file (`size - n*cs` for the last), or `None` when the
/// file has no chunk `n`.
pub fn chunk_len(size: u64, chunk_size: u32, n: u64) -> Option<u64> {
    let cs = u64::from(chunk_size.max(1));
    let start = n.checked_mul(cs).filter(|&s| s < size)?;
    Some((size - start).min(cs))
}

/// Which chunks of every file of a batch are still missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingSet {
    /// Per file: disjoint, non-touching `[first, end)` ranges, `first -> end`. A map, not a
    /// sorted list: a peer that sends every other chunk in descending order splits a range
    /// at each one, which costs a list a shift of every later range (quadratic in the file's
    /// chunks), the map a logarithmic insert.
    files: Vec<BTreeMap<u64, u64>>,
    missing: u64,
}

/// Ranges that do not describe a batch: unsorted, overlapping, empty, or past a file's chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadRanges;

impl std::fmt::Display for BadRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("missing ranges: out of order or out of bounds")
    }
}

impl std::error::Error for BadRanges {}

impl MissingSet {
    /// Every chunk of files with these chunk counts missing.
    pub fn all(chunk_counts: &[u64]) -> MissingSet {
        let files: Vec<BTreeMap<u64, u64>> = chunk_counts
            .iter()
            .map(|&nb| {
                if nb == 0 {
                    BTreeMap::new()
                } else {
                    BTreeMap::from([(0, nb)])
                }
            })
            .collect();
        MissingSet {
            missing: chunk_counts.iter().sum(),
            files,
        }
    }

    /// Nothing missing in `files` files.
    pub fn none(files: usize) -> MissingSet {
        MissingSet {
            files: vec![BTreeMap::new(); files],
            missing: 0,
        }
    }

    /// Rebuilds a set from its ranges (as `state.json` keeps them): sorted by file then chunk,
    /// non-empty, non-overlapping, within `chunk_counts`. Touching ranges are merged.
    pub fn from_ranges(
        chunk_counts: &[u64],
        ranges: &[ChunkRange],
    ) -> Result<MissingSet, BadRanges> {
        let mut set = MissingSet::none(chunk_counts.len());
        let mut prev: Option<ChunkRange> = None;
        for &r in ranges {
            let nb = *chunk_counts.get(r.file as usize).ok_or(BadRanges)?;
            if r.first >= r.end || r.end > nb {
                return Err(BadRanges);
            }
            if let Some(p) = prev {
                if (p.file, p.end) > (r.file, r.first) {
                    return Err(BadRanges);
                }
            }
            prev = Some(r);
            let list = &mut set.files[r.file as usize];
            match list.last_entry() {
                Some(mut last) if *last.get() == r.first => {
                    last.insert(r.end);
                }
                _ => {
                    list.insert(r.first, r.end);
                }
            }
            set.missing += r.end - r.first;
        }
        Ok(set)
    }

    /// Chunks missing in all.
    pub fn missing_chunks(&self) -> u64 {
        self.missing
    }

    /// True when every chunk of every file is held.
    pub fn is_empty(&self) -> bool {
        self.missing == 0
    }

    /// Chunks of file `file` missing (0 for a file not in the batch).
    pub fn missing_in_file(&self, file: usize) -> u64 {
        self.files
            .get(file)
            .map_or(0, |l| l.iter().map(|(a, b)| b - a).sum())
    }

    /// True when file `file` has every chunk (or does not exist).
    pub fn is_file_complete(&self, file: usize) -> bool {
        self.files.get(file).is_none_or(|l| l.is_empty())
    }

    /// The range of `file` holding `n`, if any.
    fn find(list: &BTreeMap<u64, u64>, n: u64) -> Option<(u64, u64)> {
        // The last range starting at or before n; it holds n when it ends after it.
        list.range(..=n)
            .next_back()
            .filter(|&(_, &end)| end > n)
            .map(|(&first, &end)| (first, end))
    }

    /// Whether chunk `n` of `file` is missing.
    pub fn contains(&self, file: usize, n: u64) -> bool {
        self.files
            .get(file)
            .is_some_and(|l| Self::find(l, n).is_some())
    }

    /// Marks chunk `n` of `file` held; false when it was not missing (a replay).
    pub fn remove(&mut self, file: usize, n: u64) -> bool {
        let Some(list) = self.files.get_mut(file) else {
            return false;
        };
        let Some((first, end)) = Self::find(list, n) else {
            return false;
        };
        if first == n {
            list.remove(&first);
        } else {
            list.insert(first, n);
        }
        if end > n + 1 {
            list.insert(n + 1, end);
        }
        self.missing -= 1;
        true
    }

    /// Every chunk of `file` missing again (after `digest-mismatch`).
    pub fn reset_file(&mut self, file: usize, chunk_count: u64) {
        if let Some(list) = self.files.get_mut(file) {
            let had: u64 = list.iter().map(|(a, b)| b - a).sum();
            self.missing = self.missing - had + chunk_count;
            *list = if chunk_count == 0 {
                BTreeMap::new()
            } else {
                BTreeMap::from([(0, chunk_count)])
            };
        }
    }

    /// Every range, by file then chunk.
    pub fn ranges(&self) -> impl Iterator<Item = ChunkRange> + '_ {
        self.files.iter().enumerate().flat_map(|(file, list)| {
            list.iter().map(move |(&first, &end)| ChunkRange {
                file: file as u32,
                first,
                end,
            })
        })
    }

    /// The first `max` ranges, and whether more exist (the reply's `"more":true`).
    pub fn page(&self, max: usize) -> (Vec<ChunkRange>, bool) {
        let mut it = self.ranges();
        let page: Vec<ChunkRange> = it.by_ref().take(max).collect();
        (page, it.next().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(file: u32, first: u64, end: u64) -> ChunkRange {
        ChunkRange { file, first, end }
    }

    #[test]
    fn chunk_arithmetic() {
        assert_eq!(chunk_count(2500, 1000), 3);
        assert_eq!(chunk_count(0, 1000), 0);
        assert_eq!(chunk_count(1000, 1000), 1);
        assert_eq!(chunk_count((1 << 53) - 1, 1000), 9_007_199_254_741);
        assert_eq!(chunk_len(2500, 1000, 2), Some(500));
        assert_eq!(chunk_len(2500, 1000, 1), Some(1000));
        assert_eq!(chunk_len(2500, 1000, 3), None);
        assert_eq!(chunk_len(0, 1000, 0), None);
        assert_eq!(chunk_len(10, 1000, u64::MAX), None);
    }

    #[test]
    fn s15_ranges_are_half_open_sorted_and_merged() {
        let mut m = MissingSet::all(&[3, 0, 5]);
        assert_eq!(m.ranges().collect::<Vec<_>>(), [r(0, 0, 3), r(2, 0, 5)]);
        assert_eq!(m.missing_chunks(), 8);
        assert!(m.is_file_complete(1));
        assert!(m.remove(2, 2));
        assert!(!m.remove(2, 2), "a replay");
        assert!(!m.remove(2, 5) && !m.remove(9, 0));
        assert_eq!(
            m.ranges().collect::<Vec<_>>(),
            [r(0, 0, 3), r(2, 0, 2), r(2, 3, 5)]
        );
        assert!(m.remove(2, 0) && m.remove(2, 4));
        assert_eq!(
            m.ranges().collect::<Vec<_>>(),
            [r(0, 0, 3), r(2, 1, 2), r(2, 3, 4)]
        );
        assert!(m.contains(2, 1) && !m.contains(2, 2) && m.contains(2, 3) && !m.contains(2, 4));
        assert_eq!(
            [0, 1, 2, 9].map(|f| m.missing_in_file(f)),
            [3, 0, 2, 0],
            "per file, two ranges summed"
        );
        for n in 0..3 {
            assert!(m.remove(0, n));
        }
        assert!(m.is_file_complete(0));
        assert_eq!(m.missing_chunks(), 2);
        m.reset_file(2, 5);
        assert_eq!(m.ranges().collect::<Vec<_>>(), [r(2, 0, 5)]);
        assert_eq!(m.missing_chunks(), 5);
        for n in 0..5 {
            m.remove(2, n);
        }
        assert!(m.is_empty());
        assert_eq!(m.page(10), (vec![], false));
    }

    /// Every other chunk received in descending order splits the remaining range each time
    /// (review finding: each split shifted every later range of a sorted list, quadratic in
    /// the file's chunks, under the transfer's lock; the map inserts in logarithmic time).
    /// The ranges stay exact whatever the order.
    #[test]
    fn s15_holes_made_in_descending_order_stay_exact() {
        let n = 200_000u64;
        let mut m = MissingSet::all(&[n]);
        for c in (0..n).rev().step_by(2) {
            assert!(m.remove(0, c));
        }
        assert_eq!(m.missing_chunks(), n / 2);
        let ranges: Vec<ChunkRange> = m.ranges().collect();
        assert_eq!(ranges.len(), (n / 2) as usize);
        assert_eq!(ranges[0], r(0, 0, 1));
        assert_eq!(ranges[ranges.len() - 1], r(0, n - 2, n - 1));
        assert!(ranges
            .iter()
            .all(|x| x.end == x.first + 1 && x.first % 2 == 0));
        // Replays change nothing; filling the holes from the middle out empties it.
        assert!(!m.remove(0, n - 1));
        let mut order: Vec<u64> = (0..n).step_by(2).collect();
        order.sort_by_key(|c| c.abs_diff(n / 2));
        for c in order {
            assert!(m.remove(0, c), "{c}");
        }
        assert!(m.is_empty());
    }

    #[test]
    fn s15_a_hundred_thousand_holes_are_paged() {
        let mut m = MissingSet::all(&[200_000]);
        for n in (0..200_000).step_by(2) {
            assert!(m.remove(0, n));
        }
        assert_eq!(m.missing_chunks(), 100_000);
        let (page, more) = m.page(2048);
        assert_eq!(page.len(), 2048);
        assert!(more);
        assert_eq!(page[0], r(0, 1, 2));
        assert_eq!(page[2047], r(0, 4095, 4096));
        assert!(
            page.windows(2).all(|w| w[0].end < w[1].first),
            "sorted, disjoint, not touching"
        );
        let (all, more) = m.page(100_000);
        assert_eq!((all.len(), more), (100_000, false));
        let back = MissingSet::from_ranges(&[200_000], &all).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn from_ranges_checks_and_merges() {
        let counts = [3, 10];
        let m = MissingSet::from_ranges(&counts, &[r(0, 0, 1), r(0, 1, 3), r(1, 4, 6)]).unwrap();
        assert_eq!(m.ranges().collect::<Vec<_>>(), [r(0, 0, 3), r(1, 4, 6)]);
        assert_eq!(m.missing_chunks(), 5);
        for bad in [
            vec![r(2, 0, 1)],
            vec![r(0, 1, 1)],
            vec![r(0, 2, 1)],
            vec![r(0, 0, 4)],
            vec![r(1, 4, 6), r(0, 0, 1)],
            vec![r(1, 4, 6), r(1, 5, 7)],
        ] {
            assert_eq!(
                MissingSet::from_ranges(&counts, &bad),
                Err(BadRanges),
                "{bad:?}"
            );
        }
        assert_eq!(
            BadRanges.to_string(),
            "missing ranges: out of order or out of bounds"
        );
        assert_eq!(
            MissingSet::from_ranges(&counts, &[]).unwrap(),
            MissingSet::none(2)
        );
    }
}
