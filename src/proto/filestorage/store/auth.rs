//! What an AUTHENTICATION does to the store (spec 4.2 steps 2-3), decided purely from what the
//! driver looked up: the `fid`'s partial state if it has one, and, for a new `fid`, the records
//! of its files. The quota step (7.4) follows with [`UidLedger::try_reserve`] under the uid's
//! lock, then the driver makes the state durable (step 4).
//!
//! ```text
//!   AuthCall ──known fid?──yes──► same uid, files, tag set, chunk-size? ──no──► fid-conflict
//!      │                                       └─yes─► Resume (stored missing set; no quota)
//!      no
//!      ▼
//!   names (bad-name) ─► tags (bad-tag) ─► records of UUIDv5(fid, "<i>"):
//!      matching owner/name/size/sha256 ─► AlreadyStored; other ─► fid-conflict
//!   ─► empty files with a declared sha256 other than the empty hash: digest-mismatch
//!   ─► New(batch): reserve batch.reserve_sizes() (file-too-big, quota-exceeded), store
//!      the empty files, create the partial state with batch.missing
//! ```
//!
//! [`UidLedger::try_reserve`]: super::quota::UidLedger::try_reserve

use super::missing::{chunk_count, MissingSet};
use super::names::{check_names, checked_tag_set, tag_set};
use super::records::{PartialState, Record};
use crate::proto::filestorage::ids::{store_id, Uuid};
use crate::proto::filestorage::json::FileSpec;
use crate::proto::filestorage::reason::{Code, Reason};

/// SHA-256 of no bytes.
pub const EMPTY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// An AUTHENTICATION that passed its shape and token checks (spec 4.2 step 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthCall {
    /// From the token.
    pub uid: u32,
    /// From the token, for logs.
    pub login: String,
    pub fid: Uuid,
    pub files: Vec<FileSpec>,
    /// As sent (order and duplicates kept, for `bad-tag`'s index).
    pub tags: Vec<String>,
    /// The effective chunk size (the request's, else 1000).
    pub chunk_size: u32,
}

impl AuthCall {
    /// Chunk counts of the files.
    pub fn chunk_counts(&self) -> Vec<u64> {
        self.files
            .iter()
            .map(|f| chunk_count(f.size, self.chunk_size))
            .collect()
    }
}

/// What becomes of one file of a new batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFate {
    /// Chunks will be received.
    Receive,
    /// An empty file: stored at once (record, markers, publication).
    StoreEmpty,
    /// Its record exists and matches: complete already, not reserved or stored again.
    AlreadyStored,
}

/// A new `fid` that passed names, tags and records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBatch {
    /// The tag set to store.
    pub tags: Vec<String>,
    pub fates: Vec<FileFate>,
    /// Every chunk of every `Receive` file.
    pub missing: MissingSet,
}

impl NewBatch {
    /// The sizes to reserve: files not already stored, empty ones included (they count as
    /// files and complete at once).
    pub fn reserve_sizes(&self, call: &AuthCall) -> Vec<u64> {
        call.files
            .iter()
            .zip(&self.fates)
            .filter(|(_, f)| **f != FileFate::AlreadyStored)
            .map(|(spec, _)| spec.size)
            .collect()
    }

    /// Whether a partial state is left with an incomplete file (counts as a transfer).
    pub fn has_transfer(&self) -> bool {
        !self.missing.is_empty()
    }
}

/// The decision for an AUTHENTICATION.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthPlan {
    /// A resume: reply with the stored state's missing set; quotas are not checked again.
    Resume,
    New(NewBatch),
}

/// Decides an AUTHENTICATION (see the module doc). `known` is the `fid`'s partial state if it
/// exists; `record` looks up the record of a store id (asked only for a new `fid`, after names
/// and tags pass).
pub fn plan_authentication(
    call: &AuthCall,
    known: Option<&PartialState>,
    mut record: impl FnMut(&Uuid) -> Option<Record>,
    max_tags: usize,
) -> Result<AuthPlan, Reason> {
    if let Some(state) = known {
        let same = state.uid == call.uid
            && state.files == call.files
            && state.tags == tag_set(&call.tags)
            && state.chunk_size == call.chunk_size;
        return if same {
            Ok(AuthPlan::Resume)
        } else {
            Err(Reason::new(Code::FidConflict))
        };
    }
    check_names(&call.files)?;
    let tags = checked_tag_set(&call.tags, max_tags)?;
    let mut fates = Vec::with_capacity(call.files.len());
    for (i, f) in call.files.iter().enumerate() {
        let fate = match record(&store_id(&call.fid, i as u64)) {
            Some(r) => {
                let matches = r.owner == call.uid
                    && r.name == f.name
                    && r.size == f.size
                    && f.sha256.is_none_or(|h| h == r.sha256);
                if !matches {
                    return Err(Reason::new(Code::FidConflict));
                }
                FileFate::AlreadyStored
            }
            None if f.size == 0 => {
                if f.sha256.is_some_and(|h| h != EMPTY_SHA256) {
                    return Err(Reason::with_detail(Code::DigestMismatch, i));
                }
                FileFate::StoreEmpty
            }
            None => FileFate::Receive,
        };
        fates.push(fate);
    }
    let counts: Vec<u64> = call
        .chunk_counts()
        .into_iter()
        .zip(&fates)
        .map(|(nb, f)| if *f == FileFate::Receive { nb } else { 0 })
        .collect();
    Ok(AuthPlan::New(NewBatch {
        tags,
        fates,
        missing: MissingSet::all(&counts),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::filestorage::json::ChunkRange;
    use crate::proto::filestorage::store::names::MAX_TAGS;
    use sha2::{Digest, Sha256};

    fn spec(name: &str, size: u64) -> FileSpec {
        FileSpec {
            name: name.into(),
            size,
            sha256: None,
        }
    }

    fn call() -> AuthCall {
        AuthCall {
            uid: 1002,
            login: "karchnu".into(),
            fid: "0b6e3c1e-2f4d-4a7b-8c9d-112233445566".parse().unwrap(),
            files: vec![spec("a", 2500), spec("e", 0), spec("b", 1000)],
            tags: vec!["work".into(), "2024".into(), "work".into()],
            chunk_size: 1000,
        }
    }

    fn state(c: &AuthCall) -> PartialState {
        PartialState {
            uid: c.uid,
            files: c.files.clone(),
            tags: tag_set(&c.tags),
            chunk_size: c.chunk_size,
            missing: MissingSet::all(&c.chunk_counts()),
            touched: 0,
        }
    }

    fn record_of(c: &AuthCall, i: usize, sha256: [u8; 32]) -> Record {
        Record {
            id: store_id(&c.fid, i as u64),
            owner: c.uid,
            name: c.files[i].name.clone(),
            size: c.files[i].size,
            sha256,
            tags: tag_set(&c.tags),
            fid: c.fid,
            file: i as u32,
            created: 0,
            published: None,
        }
    }

    fn plan(c: &AuthCall, known: Option<&PartialState>) -> Result<AuthPlan, Reason> {
        plan_authentication(c, known, |_| None, MAX_TAGS)
    }

    #[test]
    fn s13_new_fid_lists_every_chunk_and_stores_empty_files_at_once() {
        let c = call();
        let AuthPlan::New(b) = plan(&c, None).unwrap() else {
            panic!()
        };
        assert_eq!(b.tags, ["2024", "work"]);
        assert_eq!(
            b.fates,
            [FileFate::Receive, FileFate::StoreEmpty, FileFate::Receive]
        );
        assert_eq!(
            b.missing.ranges().collect::<Vec<_>>(),
            [
                ChunkRange {
                    file: 0,
                    first: 0,
                    end: 3
                },
                ChunkRange {
                    file: 2,
                    first: 0,
                    end: 1
                }
            ]
        );
        assert_eq!(b.reserve_sizes(&c), [2500, 0, 1000]);
        assert!(b.has_transfer());
        let only_empty = AuthCall {
            files: vec![spec("e", 0)],
            ..call()
        };
        let AuthPlan::New(b) = plan(&only_empty, None).unwrap() else {
            panic!()
        };
        assert!(!b.has_transfer() && b.missing.is_empty());
        let bad_empty = AuthCall {
            files: vec![FileSpec {
                sha256: Some([1; 32]),
                ..spec("e", 0)
            }],
            ..call()
        };
        assert_eq!(
            plan(&bad_empty, None).unwrap_err().to_string(),
            "digest-mismatch: 0"
        );
        let good_empty = AuthCall {
            files: vec![FileSpec {
                sha256: Some(Sha256::digest(b"").into()),
                ..spec("e", 0)
            }],
            ..call()
        };
        assert!(plan(&good_empty, None).is_ok());
    }

    #[test]
    fn s14_resume_needs_the_same_owner_and_description() {
        let c = call();
        let s = state(&c);
        assert_eq!(plan(&c, Some(&s)), Ok(AuthPlan::Resume));
        // The tag list may differ in order and duplicates: it is compared as a set.
        let reordered = AuthCall {
            tags: vec!["2024".into(), "work".into()],
            ..call()
        };
        assert_eq!(plan(&reordered, Some(&s)), Ok(AuthPlan::Resume));
        let changes = [
            AuthCall { uid: 7, ..call() },
            AuthCall {
                files: vec![spec("a", 2500), spec("e", 0)],
                ..call()
            },
            AuthCall {
                files: vec![spec("a", 2501), spec("e", 0), spec("b", 1000)],
                ..call()
            },
            AuthCall {
                files: vec![spec("z", 2500), spec("e", 0), spec("b", 1000)],
                ..call()
            },
            AuthCall {
                tags: vec!["work".into()],
                ..call()
            },
            AuthCall {
                chunk_size: 2000,
                ..call()
            },
            // Even a bad name is fid-conflict on a known fid: step 2 comes first.
            AuthCall {
                files: vec![spec("../x", 2500), spec("e", 0), spec("b", 1000)],
                ..call()
            },
        ];
        for changed in changes {
            let e = plan(&changed, Some(&s)).unwrap_err();
            assert_eq!(e.to_string(), "fid-conflict", "{changed:?}");
        }
        let mut declared = call();
        declared.files[0].sha256 = Some([3; 32]);
        assert_eq!(
            plan(&declared, Some(&s)).unwrap_err().code,
            Code::FidConflict
        );
    }

    #[test]
    fn s29_names_then_tags_are_checked_on_a_new_fid() {
        let mut c = call();
        c.files[2].name = ".ferry".into();
        c.tags.push("a/b".into());
        assert_eq!(plan(&c, None).unwrap_err().to_string(), "bad-name: 2");
        c.files[2].name = "ok".into();
        assert_eq!(plan(&c, None).unwrap_err().to_string(), "bad-tag: 3");
        let mut asked = 0;
        let _ = plan_authentication(
            &c,
            None,
            |_| {
                asked += 1;
                None
            },
            MAX_TAGS,
        );
        assert_eq!(asked, 0, "no record is looked up for a refused batch");
    }

    #[test]
    fn existing_records_are_complete_or_conflicting() {
        let c = call();
        let sha = [9u8; 32];
        let r0 = record_of(&c, 0, sha);
        let lookup = |id: &Uuid| (*id == r0.id).then(|| r0.clone());
        let AuthPlan::New(b) = plan_authentication(&c, None, lookup, MAX_TAGS).unwrap() else {
            panic!()
        };
        assert_eq!(b.fates[0], FileFate::AlreadyStored);
        assert_eq!(
            b.reserve_sizes(&c),
            [0, 1000],
            "quotas count only the others"
        );
        assert_eq!(
            b.missing.ranges().collect::<Vec<_>>(),
            [ChunkRange {
                file: 2,
                first: 0,
                end: 1
            }]
        );
        // A declared sha256 must match; so must owner, name, size.
        let mut declared = call();
        declared.files[0].sha256 = Some(sha);
        assert!(plan_authentication(&declared, None, lookup, MAX_TAGS).is_ok());
        declared.files[0].sha256 = Some([8; 32]);
        assert_eq!(
            plan_authentication(&declared, None, lookup, MAX_TAGS)
                .unwrap_err()
                .code,
            Code::FidConflict
        );
        for change in [
            |r: &mut Record| r.owner = 1,
            |r: &mut Record| r.name = "other".into(),
            |r: &mut Record| r.size = 1,
        ] {
            let mut other = r0.clone();
            change(&mut other);
            let lookup = |id: &Uuid| (*id == other.id).then(|| other.clone());
            assert_eq!(
                plan_authentication(&c, None, lookup, MAX_TAGS)
                    .unwrap_err()
                    .code,
                Code::FidConflict
            );
        }
    }
}
