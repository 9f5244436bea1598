//! The one commit-and-publish step of every driver that lands a file in a folder: commit a
//! finished stream, resumable transfer or shared [`Transfer`](super::Transfer) under a name
//! with a collision policy, then register the result with the catalog using the hashes ingest
//! computed while the bytes arrived (the file is never read back).
//!
//! A client's output folder has no catalog: [`Publisher::without_catalog`] commits the same way
//! and registers nothing.
//!
//! Out of scope: logging (each driver says what it stored in its own words) and deciding the
//! name (the protocol machines and [`crate::names`] do that).

use std::sync::Arc;

use crate::catalog::{CatalogError, CatalogHandle, Entry};

use super::{Collision, Committed, Expect, IngestDir, IngestError, Resumable, StreamSink};

/// Commits into one folder and registers what lands there with its catalog. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    ingest: IngestDir,
    catalog: Option<Arc<CatalogHandle>>,
}

/// What the catalog made of a committed file.
#[derive(Debug)]
pub enum Listed {
    /// The file is served under this entry.
    Entry(Arc<Entry>),
    /// The file is stored but the catalog does not serve it (a dot-name, say): why.
    Refused(CatalogError),
    /// The publisher has no catalog (a client's output folder).
    NoCatalog,
}

/// A committed file and its catalog entry.
#[derive(Debug)]
pub struct Publication {
    pub committed: Committed,
    pub listed: Listed,
}

impl Publication {
    /// The catalog entry, if the file is served.
    pub fn entry(&self) -> Option<&Arc<Entry>> {
        match &self.listed {
            Listed::Entry(e) => Some(e),
            _ => None,
        }
    }
}

impl Publisher {
    /// Publishes into `ingest`'s destination, which must be `catalog`'s root (else every file
    /// is [`Listed::Refused`] as not in the root).
    pub fn new(ingest: IngestDir, catalog: Arc<CatalogHandle>) -> Publisher {
        Publisher {
            ingest,
            catalog: Some(catalog),
        }
    }

    /// Publishes into `ingest`'s destination and registers nothing.
    pub fn without_catalog(ingest: IngestDir) -> Publisher {
        Publisher {
            ingest,
            catalog: None,
        }
    }

    /// The folders files are received in and published to.
    pub fn ingest(&self) -> &IngestDir {
        &self.ingest
    }

    /// The catalog published files are registered with, if any.
    pub fn catalog(&self) -> Option<&Arc<CatalogHandle>> {
        self.catalog.as_ref()
    }

    /// Commits a stream (verify, fsync, publish without replacing; see
    /// [`StreamSink::commit_with`]), then registers it. The sink should come from this
    /// publisher's [`ingest`](Self::ingest) folder.
    pub fn publish_stream(
        &self,
        sink: StreamSink,
        name: &str,
        expect: Expect,
        policy: Collision,
    ) -> Result<Publication, IngestError> {
        let committed = sink.commit_with(name, expect, policy)?;
        Ok(self.list(committed))
    }

    /// Commits a resumable transfer with one owner ([`Resumable::commit_with`]), then registers
    /// it. On error the transfer comes back, as from `commit_with`.
    #[allow(clippy::result_large_err)] // as for Resumable::commit_with
    pub fn publish_resumable(
        &self,
        part: Resumable,
        name: &str,
        expect: Expect,
        policy: Collision,
    ) -> Result<Publication, (Resumable, IngestError)> {
        let committed = part.commit_with(name, expect, policy)?;
        Ok(self.list(committed))
    }

    /// Registers a file this publisher's folder just received.
    pub(super) fn list(&self, committed: Committed) -> Publication {
        let listed = match &self.catalog {
            None => Listed::NoCatalog,
            Some(catalog) => {
                let added = match (committed.sha256, committed.inode) {
                    // Our own inode: its hashes are the ones computed on the way in (and a
                    // file someone renamed over the name meanwhile is not taken for it).
                    (Some(sha), Some(inode)) => {
                        catalog.add_published_file(&committed.path, inode, committed.xxh64, sha)
                    }
                    // The bytes were already there (usually listed already, then this costs
                    // nothing), or only xxHash64 was computed (the JTP client's streams, which
                    // never land in a served folder): the catalog looks for itself.
                    _ => catalog.add_file(&committed.path),
                };
                match added {
                    Ok(e) => Listed::Entry(e),
                    Err(e) => Listed::Refused(e),
                }
            }
        };
        Publication { committed, listed }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_dir::TempDir;
    use super::super::Outcome;
    use super::*;
    use crate::catalog::CatalogOptions;
    use sha2::{Digest, Sha256};

    fn setup(what: &str) -> (TempDir, Publisher) {
        let t = TempDir::new(what);
        let catalog = CatalogHandle::open(&t.0, CatalogOptions::default()).unwrap();
        let work = catalog.state_dir().join("ingest").join("test");
        let ingest = IngestDir::new(catalog.root(), &work).unwrap();
        (t, Publisher::new(ingest, catalog))
    }

    #[test]
    fn a_stream_is_committed_and_served_under_the_hashes_it_was_received_with() {
        let (t, p) = setup("pub-stream");
        let mut s = p.ingest().begin_stream(Some(5)).unwrap();
        s.write_all(b"hello").unwrap();
        let got = p
            .publish_stream(s, "a.txt", Expect::Nothing, Collision::Numbered)
            .unwrap();
        assert_eq!(got.committed.outcome, Outcome::Created);
        assert_eq!(got.committed.path, t.0.join("a.txt"));
        let e = got.entry().expect("served");
        let sha: [u8; 32] = Sha256::digest(b"hello").into();
        assert_eq!(e.sha256, sha);
        assert_eq!(e.xxh64, twox_hash::XxHash64::oneshot(0, b"hello"));
        let snap = p.catalog().unwrap().snapshot();
        assert_eq!(snap.by_sha256(&sha).unwrap().name, "a.txt");

        // Taken by other bytes: the numbered policy picks a-1.txt, also served.
        let mut s = p.ingest().begin_stream(None).unwrap();
        s.write_all(b"other").unwrap();
        let got = p
            .publish_stream(s, "a.txt", Expect::Nothing, Collision::Numbered)
            .unwrap();
        assert_eq!(got.committed.name, "a-1.txt");
        assert_eq!(got.entry().unwrap().name, "a-1.txt");
    }

    #[test]
    fn a_dot_name_is_stored_but_refused_by_the_catalog() {
        let (t, p) = setup("pub-dot");
        let mut s = p.ingest().begin_stream(None).unwrap();
        s.write_all(b"x").unwrap();
        let got = p
            .publish_stream(s, ".hidden", Expect::Nothing, Collision::Numbered)
            .unwrap();
        assert!(matches!(got.listed, Listed::Refused(_)), "{:?}", got.listed);
        assert!(got.entry().is_none());
        assert_eq!(std::fs::read(t.0.join(".hidden")).unwrap(), b"x");
    }

    #[test]
    fn a_resumable_is_published_and_comes_back_on_mismatch() {
        let (_t, p) = setup("pub-res");
        let data = vec![7u8; 10_000];
        let sha: [u8; 32] = Sha256::digest(&data).into();
        let mut r = p.ingest().begin_resumable("k", 10_000, 4096).unwrap();
        r.write_blocks(0, &data).unwrap();
        let (r, e) = p
            .publish_resumable(r, "r.bin", Expect::Sha256([1; 32]), Collision::Tagged)
            .unwrap_err();
        assert!(matches!(e, IngestError::Mismatch { .. }), "{e}");
        let got = p
            .publish_resumable(r, "r.bin", Expect::Sha256(sha), Collision::Tagged)
            .unwrap();
        assert_eq!(got.entry().unwrap().sha256, sha);
    }

    /// A file renamed over the published name between the commit and its registration is not
    /// taken for it: the hashes computed on the way in belong to ingest's own inode only (whole
    /// run, ingest publisher part: without the arm for that inode the catalog hashed and served
    /// whatever was at the name).
    #[test]
    fn a_file_renamed_over_the_name_before_listing_is_not_served() {
        let (t, p) = setup("pub-swapped");
        let mut s = p.ingest().begin_stream(Some(5)).unwrap();
        s.write_all(b"hello").unwrap();
        let committed = s
            .commit_with("a.bin", Expect::Nothing, Collision::Numbered)
            .unwrap();
        assert!(committed.inode.is_some() && committed.sha256.is_some());
        std::fs::write(t.0.join(".planted"), b"planted").unwrap();
        std::fs::rename(t.0.join(".planted"), t.0.join("a.bin")).unwrap();
        let got = p.list(committed);
        assert!(matches!(got.listed, Listed::Refused(_)), "{:?}", got.listed);
        assert!(p
            .catalog()
            .unwrap()
            .snapshot()
            .by_file_name("a.bin")
            .is_none());
    }

    #[test]
    fn without_a_catalog_nothing_is_registered() {
        let t = TempDir::new("pub-none");
        let p = Publisher::without_catalog(IngestDir::new(&t.0, &t.0.join(".w")).unwrap());
        let mut s = p.ingest().begin_stream(None).unwrap();
        s.write_all(b"abc").unwrap();
        let got = p
            .publish_stream(s, "c.bin", Expect::Nothing, Collision::Tagged)
            .unwrap();
        assert!(matches!(got.listed, Listed::NoCatalog));
        assert_eq!(std::fs::read(t.0.join("c.bin")).unwrap(), b"abc");
    }
}
