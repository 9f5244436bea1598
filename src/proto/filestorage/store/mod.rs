//! The store's logic without its I/O (spec 4.2, 6, 7): everything the driver decides about
//! names, tags, missing chunks, quotas, the journal, the JSON files of `.ferry/filestorage/`,
//! QUERY and FETCH, as pure functions and values it keeps behind its own locks.
//!
//! - [`names`]: file names and tags (4.2).
//! - [`missing`]: chunk arithmetic and the missing-range set of a batch (4.2, 7.1).
//! - [`auth`]: the AUTHENTICATION decision, known `fid` or new (4.2 steps 2-3).
//! - [`quota`]: the per-uid ledger and the quota file (7.4).
//! - [`journal`]: the 16-byte CRC-32C journal records and their replay (7.1, 7.2).
//! - [`records`]: `state.json` and `records/<id>.json` (7.1).
//! - [`index`]: the in-memory index, QUERY evaluation and FETCH's range rules (6, 7.3).
//!
//! Out of scope: files, directories, fsync, locks, hashing file contents, the clock: the
//! driver's (a later part of ferry), which calls these with what it read.

pub mod auth;
pub mod index;
pub mod journal;
pub mod missing;
pub mod names;
pub mod quota;
pub mod records;
