//! What one sync run must do, decided from the source's listing and the local catalog alone:
//! no I/O, so every rule below is a unit test.
//!
//! For each name the source lists:
//! - the local file of that name has the same content id and size: **unchanged**;
//! - otherwise the content is wanted there. A wanted content that some local file already
//!   holds (under any name) is **reused**: that file is renamed if its own name is released
//!   (the source gives that name other content, or no longer lists it and `--delete` is on),
//!   else hard-linked, so a rename on the source costs no transfer. Only content no local file
//!   holds is **fetched**, once however many names want it.
//!
//! Spares (files an earlier run deleted, kept for one run: see `attic`) are donors too, after
//! released local files and before links, so a rename the source was caught in the middle of
//! still costs no transfer.
//!
//! With `delete`, local names the source no longer lists and that were not renamed away are
//! **deleted**. Names the source lists but that are not safe here (a `/`, a control character,
//! a leading dot, `.ferry`, more than 255 bytes) are **rejected**: never fetched, counted as
//! failed.
//!
//! Out of scope: doing any of it (the driver stages, places and deletes in an order that never
//! loses a donor, see [`super`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::names;

/// How the source names content: TEJ and CJP2P by SHA-256, JTP by xxHash64 (its image id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContentId {
    Sha256([u8; 32]),
    Xxh64(u64),
}

impl std::fmt::Display for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContentId::Sha256(h) => f.write_str(&crate::wire::hex::encode(h)),
            ContentId::Xxh64(x) => write!(f, "{x:016x}"),
        }
    }
}

/// One file the source lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: String,
    pub size: u64,
    pub id: ContentId,
}

/// One file of the local catalog (hashes from the persistent index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFile {
    /// The exact on-disk name.
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    pub xxh64: u64,
}

impl LocalFile {
    /// This file's id in the source's kind of id.
    pub fn id_like(&self, other: &ContentId) -> ContentId {
        match other {
            ContentId::Sha256(_) => ContentId::Sha256(self.sha256),
            ContentId::Xxh64(_) => ContentId::Xxh64(self.xxh64),
        }
    }
}

/// Content to download once and place under `names`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub id: ContentId,
    pub size: u64,
    /// Names it goes to, in byte order (at least one).
    pub names: Vec<String>,
}

/// Content a local file already holds, placed under `names` without a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reuse {
    pub id: ContentId,
    pub size: u64,
    /// The local file that holds it (a name in DIR, or a spare's key).
    pub from: String,
    /// `from` is a spare (a file an earlier run deleted), not a name in DIR.
    pub spare: bool,
    /// `from`'s own name is released: move it rather than link it (always, for a spare).
    pub take: bool,
    /// Names it goes to, in byte order (at least one; never `from` itself).
    pub names: Vec<String>,
}

/// Everything one run does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Names already holding the source's content.
    pub unchanged: usize,
    pub fetch: Vec<Fetch>,
    pub reuse: Vec<Reuse>,
    /// Local names to remove (only with `delete`).
    pub delete: Vec<String>,
    /// Source names refused as unsafe here, with why.
    pub rejected: Vec<(String, &'static str)>,
}

impl Plan {
    /// Nothing to fetch, place, delete or refuse: the folder matches the source.
    pub fn is_noop(&self) -> bool {
        self.fetch.is_empty()
            && self.reuse.is_empty()
            && self.delete.is_empty()
            && self.rejected.is_empty()
    }

    /// Bytes the fetches move.
    pub fn fetch_bytes(&self) -> u64 {
        self.fetch.iter().map(|f| f.size).sum()
    }
}

/// Why a source name cannot be used here, or None when it can.
pub fn refuse_name(name: &str) -> Option<&'static str> {
    if names::accept_exact(name.as_bytes(), names::MAX_NAME_BYTES).is_none() {
        Some("unsafe name")
    } else if name.starts_with('.') {
        // Dot-files are ferry's temporaries and state; the catalog never serves them.
        Some("hidden name")
    } else {
        None
    }
}

/// Decides the run. `remote` may come in any order; a name listed twice keeps its first entry.
/// `spare` are files outside DIR that may be moved in (the attic).
pub fn plan(remote: &[RemoteFile], local: &[LocalFile], spare: &[LocalFile], delete: bool) -> Plan {
    let mut out = Plan::default();
    let mut wanted: BTreeMap<String, &RemoteFile> = BTreeMap::new();
    for r in remote {
        if let Some(why) = refuse_name(&r.name) {
            out.rejected.push((r.name.clone(), why));
            continue;
        }
        wanted.entry(r.name.clone()).or_insert(r);
    }
    let local_by_name: HashMap<&str, &LocalFile> =
        local.iter().map(|l| (l.name.as_str(), l)).collect();

    // Content wanted somewhere it is not yet, by id: (size, names).
    let mut needed: BTreeMap<ContentId, (u64, Vec<String>)> = BTreeMap::new();
    for (name, r) in &wanted {
        match local_by_name.get(name.as_str()) {
            Some(l) if l.id_like(&r.id) == r.id && l.size == r.size => out.unchanged += 1,
            _ => needed
                .entry(r.id)
                .or_insert_with(|| (r.size, Vec::new()))
                .1
                .push(name.clone()),
        }
    }

    // A local name is released when its current content is not wanted under it any more.
    let is_released = |l: &LocalFile| match wanted.get(&l.name) {
        Some(r) => l.id_like(&r.id) != r.id || l.size != r.size,
        None => delete,
    };
    let kind = wanted.values().next().map(|r| r.id);
    let mut holders: HashMap<ContentId, Vec<&LocalFile>> = HashMap::new();
    let mut spares: HashMap<ContentId, &LocalFile> = HashMap::new();
    if let Some(kind) = kind {
        for l in local {
            holders.entry(l.id_like(&kind)).or_default().push(l);
        }
        for l in spare {
            spares.entry(l.id_like(&kind)).or_insert(l);
        }
    }
    let mut taken: HashSet<&str> = HashSet::new();
    for (id, (size, names)) in needed {
        let donors = holders.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        let donors: Vec<&&LocalFile> = donors.iter().filter(|l| l.size == size).collect();
        // Prefer moving a file whose name is released, then a spare, then linking from any
        // holder. Ties go to the smallest name, so the plan does not depend on listing order.
        let released = donors
            .iter()
            .filter(|l| is_released(l))
            .min_by(|a, b| a.name.cmp(&b.name));
        let any = donors.iter().min_by(|a, b| a.name.cmp(&b.name));
        let spare = spares.get(&id).filter(|l| l.size == size);
        if let Some(d) = released {
            taken.insert(d.name.as_str());
            out.reuse.push(Reuse {
                id,
                size,
                from: d.name.clone(),
                spare: false,
                take: true,
                names,
            });
        } else if let Some(s) = spare {
            out.reuse.push(Reuse {
                id,
                size,
                from: s.name.clone(),
                spare: true,
                take: true,
                names,
            });
        } else if let Some(d) = any {
            out.reuse.push(Reuse {
                id,
                size,
                from: d.name.clone(),
                spare: false,
                take: false,
                names,
            });
        } else {
            out.fetch.push(Fetch { id, size, names });
        }
    }

    if delete {
        let mut gone: Vec<String> = local
            .iter()
            .filter(|l| !wanted.contains_key(&l.name) && !taken.contains(l.name.as_str()))
            .map(|l| l.name.clone())
            .collect();
        gone.sort();
        out.delete = gone;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: u8) -> ContentId {
        ContentId::Sha256([b; 32])
    }

    fn r(name: &str, b: u8) -> RemoteFile {
        RemoteFile {
            name: name.into(),
            size: u64::from(b) * 10,
            id: sha(b),
        }
    }

    fn l(name: &str, b: u8) -> LocalFile {
        LocalFile {
            name: name.into(),
            size: u64::from(b) * 10,
            sha256: [b; 32],
            xxh64: u64::from(b) * 1000,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_empty_folder_fetches_everything_once_per_content() {
        let p = plan(&[r("a", 1), r("b", 2), r("c", 1)], &[], &[], false);
        assert_eq!(p.unchanged, 0);
        assert_eq!(
            p.fetch,
            vec![
                Fetch {
                    id: sha(1),
                    size: 10,
                    names: names(&["a", "c"])
                },
                Fetch {
                    id: sha(2),
                    size: 20,
                    names: names(&["b"])
                },
            ]
        );
        assert!(p.reuse.is_empty() && p.delete.is_empty());
        assert_eq!(p.fetch_bytes(), 30);
    }

    #[test]
    fn a_matching_folder_is_a_noop() {
        let p = plan(&[r("a", 1), r("b", 2)], &[l("a", 1), l("b", 2)], &[], true);
        assert!(p.is_noop());
        assert_eq!(p.unchanged, 2);
    }

    #[test]
    fn a_changed_file_is_fetched_and_replaces_the_old_one() {
        let p = plan(&[r("a", 3)], &[l("a", 1)], &[], false);
        assert_eq!(p.fetch.len(), 1);
        assert_eq!(p.fetch[0].names, names(&["a"]));
        assert!(p.delete.is_empty());
    }

    #[test]
    fn a_rename_on_the_source_moves_the_local_file_with_delete() {
        let p = plan(&[r("new", 1)], &[l("old", 1)], &[], true);
        assert!(p.fetch.is_empty());
        assert_eq!(
            p.reuse,
            vec![Reuse {
                id: sha(1),
                size: 10,
                from: "old".into(),
                spare: false,
                take: true,
                names: names(&["new"])
            }]
        );
        // Moved away, so not deleted as well.
        assert!(p.delete.is_empty());
    }

    #[test]
    fn a_rename_without_delete_links_and_keeps_the_old_name() {
        let p = plan(&[r("new", 1)], &[l("old", 1)], &[], false);
        assert_eq!(p.reuse.len(), 1);
        assert!(!p.reuse[0].take);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn a_copy_on_the_source_links_from_a_file_that_stays() {
        let p = plan(&[r("a", 1), r("b", 1)], &[l("a", 1)], &[], true);
        assert_eq!(p.unchanged, 1);
        assert_eq!(p.reuse[0].from, "a");
        assert!(!p.reuse[0].take);
        assert_eq!(p.reuse[0].names, names(&["b"]));
    }

    #[test]
    fn a_swap_of_two_names_moves_both_without_a_transfer() {
        let p = plan(&[r("a", 2), r("b", 1)], &[l("a", 1), l("b", 2)], &[], false);
        assert!(p.fetch.is_empty());
        assert_eq!(p.reuse.len(), 2);
        assert!(p.reuse.iter().all(|u| u.take));
    }

    #[test]
    fn a_released_donor_is_preferred_over_one_that_stays() {
        // "keep" holds content 1 and stays; "gone" holds it too and is released.
        let p = plan(
            &[r("keep", 1), r("new", 1)],
            &[l("keep", 1), l("gone", 1)],
            &[],
            true,
        );
        assert_eq!(p.reuse[0].from, "gone");
        assert!(p.reuse[0].take);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn delete_removes_only_what_the_source_no_longer_lists() {
        let p = plan(&[r("a", 1)], &[l("a", 1), l("b", 2), l("c", 3)], &[], true);
        assert_eq!(p.delete, names(&["b", "c"]));
        let p = plan(&[r("a", 1)], &[l("a", 1), l("b", 2)], &[], false);
        assert!(p.delete.is_empty());
        assert!(p.is_noop());
    }

    #[test]
    fn a_same_hash_with_another_size_is_not_reused() {
        let mut other = l("x", 1);
        other.size = 11;
        let p = plan(&[r("a", 1)], &[other], &[], false);
        assert_eq!(p.fetch.len(), 1);
    }

    #[test]
    fn unsafe_and_hidden_names_are_rejected() {
        let bad = [
            "../x", "a/b", "", ".", "..", ".ferry", ".FERRY", ".hidden", "nul\0", "tab\t",
        ];
        let remote: Vec<RemoteFile> = bad.iter().map(|n| r(n, 1)).collect();
        let p = plan(&remote, &[], &[], true);
        assert_eq!(p.rejected.len(), bad.len());
        assert!(p.fetch.is_empty());
        assert!(!p.is_noop());
        let long = "x".repeat(256);
        assert_eq!(refuse_name(&long), Some("unsafe name"));
        assert_eq!(refuse_name(&"x".repeat(255)), None);
        assert_eq!(refuse_name("élan.txt"), None);
    }

    #[test]
    fn a_name_listed_twice_keeps_its_first_entry() {
        let p = plan(&[r("a", 1), r("a", 2)], &[], &[], false);
        assert_eq!(p.fetch.len(), 1);
        assert_eq!(p.fetch[0].id, sha(1));
    }

    #[test]
    fn xxh64_sources_compare_by_xxh64() {
        let remote = [RemoteFile {
            name: "img.png".into(),
            size: 10,
            id: ContentId::Xxh64(1000),
        }];
        let p = plan(&remote, &[l("img.png", 1)], &[], true);
        assert!(p.is_noop());
        let p = plan(&remote, &[l("other.png", 1)], &[], true);
        assert_eq!(p.reuse.len(), 1);
        assert!(p.reuse[0].take);
    }

    #[test]
    fn the_plan_does_not_depend_on_listing_order() {
        let remote = [r("a", 1), r("b", 2), r("c", 3), r("d", 1)];
        let local = [l("x", 1), l("y", 2), l("b", 9)];
        let p1 = plan(&remote, &local, &[], true);
        let mut rev = remote.to_vec();
        rev.reverse();
        let mut lrev = local.to_vec();
        lrev.reverse();
        assert_eq!(p1, plan(&rev, &lrev, &[], true));
    }

    #[test]
    fn a_spare_is_moved_in_before_a_link_and_after_a_released_file() {
        let spare = [l("attic-key", 1)];
        // Only the spare holds it.
        let p = plan(&[r("new", 1)], &[], &spare, true);
        assert!(p.fetch.is_empty());
        assert_eq!(p.reuse[0].from, "attic-key");
        assert!(p.reuse[0].spare && p.reuse[0].take);
        // A file that stays holds it too: the spare is still preferred (a link would keep
        // both, the spare is gone after this run anyway).
        let p = plan(&[r("keep", 1), r("new", 1)], &[l("keep", 1)], &spare, true);
        assert!(p.reuse[0].spare);
        // A released local file comes first.
        let p = plan(&[r("new", 1)], &[l("gone", 1)], &spare, true);
        assert_eq!(p.reuse[0].from, "gone");
        assert!(!p.reuse[0].spare);
        // A spare of another size is not the content.
        let mut odd = l("k", 1);
        odd.size = 3;
        let p = plan(&[r("new", 1)], &[], &[odd], true);
        assert_eq!(p.fetch.len(), 1);
    }
}
