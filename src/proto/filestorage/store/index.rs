//! The in-memory index behind QUERY and FETCH (spec 6, 7.1, 7.3): every complete stored file
//! (from its record) and every catalog file the store did not publish (a public entry for all
//! uids). A uid sees its own files and every `public` one; anything else behaves exactly as if
//! it did not exist.
//!
//! QUERY intersects the per-tag id sets smallest first; with no tags it merges the uid's own
//! set with the `public` set. Ids are kept in byte order, which is the order of their text, so
//! results come out sorted by id and `after` is a range bound.

use super::names::PUBLIC;
use crate::proto::filestorage::ids::{catalog_id, Uuid};
use crate::proto::filestorage::json::QueryResult;
use crate::proto::filestorage::reason::{Code, Reason};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

/// One visible-or-not file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: Uuid,
    /// The uid that stored it; `None` for a catalog file.
    pub owner: Option<u32>,
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    /// Sorted, no duplicates.
    pub tags: Vec<String>,
}

impl Entry {
    /// Whether `uid` may see it: its owner, or tagged `public`.
    pub fn is_visible_to(&self, uid: u32) -> bool {
        self.owner == Some(uid) || self.tags.iter().any(|t| t == PUBLIC)
    }

    pub fn to_result(&self) -> QueryResult {
        QueryResult {
            id: self.id,
            name: self.name.clone(),
            size: self.size,
            sha256: self.sha256,
            tags: self.tags.clone(),
        }
    }
}

/// A QUERY's criteria, tags already checked and made a set.
#[derive(Clone, Copy, Debug)]
pub struct QuerySpec<'a> {
    pub tags: &'a [String],
    pub name: Option<&'a str>,
    pub after: Option<Uuid>,
}

/// One page of QUERY results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryPage {
    pub results: Vec<QueryResult>,
    /// More results exist past the last one.
    pub more: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Index {
    entries: BTreeMap<Uuid, Entry>,
    by_tag: HashMap<String, BTreeSet<Uuid>>,
    by_owner: HashMap<u32, BTreeSet<Uuid>>,
}

impl Index {
    pub fn new() -> Index {
        Index::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds an entry, replacing one with the same id.
    pub fn insert(&mut self, e: Entry) {
        self.remove(&e.id);
        for t in &e.tags {
            self.by_tag.entry(t.clone()).or_default().insert(e.id);
        }
        if let Some(o) = e.owner {
            self.by_owner.entry(o).or_default().insert(e.id);
        }
        self.entries.insert(e.id, e);
    }

    pub fn remove(&mut self, id: &Uuid) -> Option<Entry> {
        let e = self.entries.remove(id)?;
        for t in &e.tags {
            if let Some(set) = self.by_tag.get_mut(t) {
                set.remove(id);
                if set.is_empty() {
                    self.by_tag.remove(t);
                }
            }
        }
        if let Some(o) = e.owner {
            if let Some(set) = self.by_owner.get_mut(&o) {
                set.remove(id);
                if set.is_empty() {
                    self.by_owner.remove(&o);
                }
            }
        }
        Some(e)
    }

    /// Replaces every catalog entry with these files `(name, size, sha256)` (spec 7.3): id
    /// `UUIDv5(CATNS, sha256 hex)`, tags `["public"]`; one content under several names is one
    /// entry under the first name in byte order.
    pub fn set_catalog<'a>(&mut self, files: impl IntoIterator<Item = (&'a str, u64, [u8; 32])>) {
        let old: Vec<Uuid> = self
            .entries
            .values()
            .filter(|e| e.owner.is_none())
            .map(|e| e.id)
            .collect();
        for id in old {
            self.remove(&id);
        }
        let mut first: BTreeMap<Uuid, (&str, u64, [u8; 32])> = BTreeMap::new();
        for (name, size, sha) in files {
            let id = catalog_id(&sha);
            let slot = first.entry(id).or_insert((name, size, sha));
            if name < slot.0 {
                *slot = (name, size, sha);
            }
        }
        for (id, (name, size, sha256)) in first {
            if self.entries.contains_key(&id) {
                continue; // A stored file's id never collides with a catalog id in practice.
            }
            self.insert(Entry {
                id,
                owner: None,
                name: name.to_string(),
                size,
                sha256,
                tags: vec![PUBLIC.to_string()],
            });
        }
    }

    /// The entry `id` if `uid` may see it (FETCH's `not-found` otherwise).
    pub fn visible(&self, id: &Uuid, uid: u32) -> Option<&Entry> {
        self.entries.get(id).filter(|e| e.is_visible_to(uid))
    }

    /// At most `limit` results for `uid`, sorted by id, past `after`.
    pub fn query(&self, uid: u32, spec: &QuerySpec<'_>, limit: usize) -> QueryPage {
        let from = spec.after.map_or(Bound::Unbounded, Bound::Excluded);
        let range = (from, Bound::Unbounded);
        let matches = |id: &Uuid| -> Option<&Entry> {
            let e = self.entries.get(id)?;
            (e.is_visible_to(uid) && spec.name.is_none_or(|n| n == e.name)).then_some(e)
        };
        let mut results = Vec::new();
        let mut more = false;
        let mut take = |e: &Entry| {
            if results.len() == limit {
                more = true;
                return false;
            }
            results.push(e.to_result());
            true
        };
        if spec.tags.is_empty() {
            let own = self.by_owner.get(&uid).map(|s| s.range(range));
            let public = self.by_tag.get(PUBLIC).map(|s| s.range(range));
            let mut own = own.into_iter().flatten().peekable();
            let mut public = public.into_iter().flatten().peekable();
            loop {
                let id = match (own.peek(), public.peek()) {
                    (None, None) => break,
                    (Some(a), Some(b)) if a == b => {
                        public.next();
                        own.next()
                    }
                    (Some(a), Some(b)) if a < b => own.next(),
                    (Some(_), None) => own.next(),
                    _ => public.next(),
                };
                if let Some(e) = id.and_then(&matches) {
                    if !take(e) {
                        break;
                    }
                }
            }
        } else {
            let Some(mut sets) = spec
                .tags
                .iter()
                .map(|t| self.by_tag.get(t))
                .collect::<Option<Vec<_>>>()
            else {
                return QueryPage { results, more };
            };
            sets.sort_by_key(|s| s.len());
            let (smallest, others) = sets.split_first().expect("tags is not empty");
            for id in smallest.range(range) {
                if !others.iter().all(|s| s.contains(id)) {
                    continue;
                }
                if let Some(e) = matches(id) {
                    if !take(e) {
                        break;
                    }
                }
            }
        }
        QueryPage { results, more }
    }
}

/// The bytes a FETCH returns (spec 6): `length` must be 1..=`max_fetch` and `offset` at most the
/// size, else `bad-range`; the range is clipped at the end, and `eof` says it reaches it.
pub fn fetch_range(
    size: u64,
    offset: u64,
    length: u64,
    max_fetch: u64,
) -> Result<(std::ops::Range<u64>, bool), Reason> {
    if length == 0 || length > max_fetch || offset > size {
        return Err(Reason::new(Code::BadRange));
    }
    let end = offset.saturating_add(length).min(size);
    Ok((offset..end, end == size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::filestorage::ids::EMPTY_FILE_CATALOG_ID;
    use sha2::{Digest, Sha256};

    fn id(n: u8) -> Uuid {
        Uuid([n; 16])
    }

    fn entry(n: u8, owner: u32, name: &str, tags: &[&str]) -> Entry {
        Entry {
            id: id(n),
            owner: Some(owner),
            name: name.into(),
            size: u64::from(n),
            sha256: [n; 32],
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn ids(p: &QueryPage) -> Vec<u8> {
        p.results.iter().map(|r| r.id.0[0]).collect()
    }

    fn q<'a>(tags: &'a [String], name: Option<&'a str>, after: Option<Uuid>) -> QuerySpec<'a> {
        QuerySpec { tags, name, after }
    }

    fn index() -> Index {
        let mut ix = Index::new();
        ix.insert(entry(5, 1002, "a", &["2024", "work"]));
        ix.insert(entry(3, 1002, "b", &["work"]));
        ix.insert(entry(9, 7, "c", &["public", "work"]));
        ix.insert(entry(1, 7, "secret", &["work"]));
        ix.insert(entry(7, 7, "a", &["2024", "public"]));
        ix
    }

    #[test]
    fn s33_tags_intersect_visibility_name_order_and_paging() {
        let ix = index();
        let work = ["work".to_string()];
        let both = ["2024".to_string(), "work".to_string()];
        assert_eq!(ids(&ix.query(1002, &q(&work, None, None), 10)), [3, 5, 9]);
        assert_eq!(ids(&ix.query(1002, &q(&both, None, None), 10)), [5]);
        assert_eq!(ids(&ix.query(1002, &q(&[], None, None), 10)), [3, 5, 7, 9]);
        assert_eq!(ids(&ix.query(7, &q(&[], None, None), 10)), [1, 7, 9]);
        assert_eq!(ids(&ix.query(1002, &q(&[], Some("a"), None), 10)), [5, 7]);
        assert_eq!(ids(&ix.query(1002, &q(&both, Some("a"), None), 10)), [5]);
        assert_eq!(
            ids(&ix.query(1002, &q(&["nope".into()], None, None), 10)),
            Vec::<u8>::new()
        );
        // Paging: `limit` per page, `more` while results remain, `after` continues.
        let p = ix.query(1002, &q(&[], None, None), 2);
        assert_eq!((ids(&p), p.more), (vec![3, 5], true));
        let p = ix.query(1002, &q(&[], None, Some(id(5))), 2);
        assert_eq!((ids(&p), p.more), (vec![7, 9], false));
        let p = ix.query(1002, &q(&work, None, Some(id(3))), 1);
        assert_eq!((ids(&p), p.more), (vec![5], true));
        let p = ix.query(1002, &q(&work, None, Some(id(9))), 1);
        assert_eq!((ids(&p), p.more), (vec![], false));
        assert_eq!(p.results.len(), 0);
        let r = &ix.query(1002, &q(&both, None, None), 1).results[0];
        assert_eq!(r.tags, ["2024", "work"]);
    }

    /// S33: without tags a uid sees its own files and the public ones merged in id order, its
    /// own past the last public one included (mutation run: those were never reached).
    #[test]
    fn s33_own_and_public_files_merge_in_id_order() {
        let mut ix = Index::new();
        assert!(ix.is_empty());
        ix = index();
        ix.insert(entry(11, 1002, "d", &["work"]));
        ix.insert(entry(12, 1002, "e", &[]));
        assert!(!ix.is_empty());
        assert_eq!(
            ids(&ix.query(1002, &q(&[], None, None), 10)),
            [3, 5, 7, 9, 11, 12]
        );
        let p = ix.query(1002, &q(&[], None, Some(id(9))), 1);
        assert_eq!((ids(&p), p.more), (vec![11], true));
    }

    #[test]
    fn s35_another_uids_private_file_is_like_an_unknown_id() {
        let ix = index();
        assert!(ix.visible(&id(1), 1002).is_none());
        assert!(ix.visible(&id(42), 1002).is_none());
        assert!(ix.visible(&id(1), 7).is_some());
        assert!(ix.visible(&id(9), 1002).is_some(), "public");
        let all = ix.query(1002, &q(&["work".into()], Some("secret"), None), 10);
        assert!(all.results.is_empty());
    }

    #[test]
    fn s37_catalog_files_are_public_entries_one_per_content() {
        let mut ix = index();
        let empty: [u8; 32] = Sha256::digest(b"").into();
        let x: [u8; 32] = Sha256::digest(b"x").into();
        ix.set_catalog([("z.txt", 0, empty), ("b.txt", 0, empty), ("x", 1, x)]);
        let e = ix.visible(&EMPTY_FILE_CATALOG_ID, 12345).unwrap();
        assert_eq!(
            (e.name.as_str(), e.owner, e.tags.clone()),
            ("b.txt", None, vec!["public".to_string()])
        );
        assert_eq!(ix.len(), 7);
        assert_eq!(
            ix.query(12345, &q(&["public".into()], None, None), 10)
                .results
                .len(),
            4
        );
        // A rescan replaces the catalog entries; the old id is gone.
        ix.set_catalog([("x", 1, x)]);
        assert!(ix.visible(&EMPTY_FILE_CATALOG_ID, 1).is_none());
        assert_eq!(ix.len(), 6);
        assert!(ix.remove(&id(5)).is_some());
        assert!(ix.remove(&id(5)).is_none());
        assert_eq!(
            ids(&ix.query(1002, &q(&["2024".into()], None, None), 10)),
            [7]
        );
        assert!(!ix.is_empty());
    }

    #[test]
    fn s34_fetch_range_rules() {
        assert_eq!(
            fetch_range(2500, 2496, 1000, 65_536),
            Ok((2496..2500, true))
        );
        assert_eq!(fetch_range(2500, 0, 1000, 65_536), Ok((0..1000, false)));
        assert_eq!(
            fetch_range(2500, 1500, 1000, 65_536),
            Ok((1500..2500, true))
        );
        assert_eq!(fetch_range(2500, 2500, 1, 65_536), Ok((2500..2500, true)));
        assert_eq!(fetch_range(0, 0, 65_536, 65_536), Ok((0..0, true)));
        for (offset, length) in [(0, 0), (0, 65_537), (0, 10_000_000), (2501, 1)] {
            assert_eq!(
                fetch_range(2500, offset, length, 65_536).unwrap_err().code,
                Code::BadRange
            );
        }
        assert_eq!(
            fetch_range(u64::MAX, u64::MAX - 1, 65_536, 65_536),
            Ok((u64::MAX - 1..u64::MAX, true))
        );
    }
}
