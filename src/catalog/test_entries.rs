//! Catalogs of made-up entries, for tests of what serves them (sizes no test folder holds).

use std::sync::Arc;

use super::{Catalog, Entry};

impl Catalog {
    pub(crate) fn of_entries_for_test(entries: Vec<Arc<Entry>>) -> Catalog {
        Catalog::from_entries(0, entries)
    }
}

impl Entry {
    /// This entry under another name and size (and an id of its own), its file unchanged.
    pub(crate) fn renamed_for_test(&self, name: &str, size: u64) -> Arc<Entry> {
        Arc::new(Entry {
            name: name.to_owned(),
            path: self.path.with_file_name(name),
            size,
            stamp: self.stamp,
            xxh64: self.xxh64 ^ size,
            sha256: self.sha256,
            shared: self.shared.clone(),
        })
    }
}
