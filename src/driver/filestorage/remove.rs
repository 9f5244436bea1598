//! `ferry filestorage rm ID`: the operator's delete (filestorage.md 7.3), done on the store's
//! files while no server uses the store (it takes the store's lock): the record first (the file
//! is then gone for QUERY, FETCH and quotas), then its markers, its published name when that
//! name still holds the object and no other record shares it, and the object once no record
//! uses it.
//!
//! Out of scope: a running server's memory (`rm` refuses while a server holds the lock).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::disk;
use super::recover::take_store_lock;
use super::store::{io_err, StoreError};
use crate::dir::Dir;
use crate::proto::filestorage::ids::Uuid;
use crate::proto::filestorage::store::records::Record;
use crate::wire::hex;

/// What `rm` removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub record: Record,
    /// The published name removed from the served folder, if any.
    pub unpublished: Option<String>,
    /// Whether the object went too (no other record used it).
    pub object_removed: bool,
}

/// Removes the stored file `id` from the store of the served folder `root` (state folder
/// `state_dir`).
///
/// The store and the served folder are opened once and reached through their descriptors
/// ([`super::anchored_path`]): `.ferry` and `.ferry/filestorage` must be private, so a user
/// who can write into the served folder cannot redirect what `rm` removes.
pub fn remove(root: &Path, state_dir: &Path, id: Uuid) -> Result<Removed, StoreError> {
    let open = |what: &Path| io_err(format!("open {}", what.display()));
    let root_dir = Dir::open(root).map_err(open(root))?;
    let store = match root_dir.private_subdir(".ferry", false) {
        Ok(state) => state.private_subdir("filestorage", false),
        Err(e) => Err(e),
    };
    let store = match store {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound(id)),
        Err(e) => return Err(open(&super::store_dir(state_dir))(e)),
    };
    let dir = super::anchored_path(&store).map_err(open(store.path()))?;
    let root = super::anchored_path(&root_dir).map_err(open(root))?;
    let root = root.as_path();
    let _lock = take_store_lock(&dir)?;
    let records_dir = dir.join("records");
    let path = records_dir.join(format!("{id}.json"));
    let record = match fs::read(&path) {
        Ok(b) => Record::decode(&b).map_err(|e| StoreError::Io {
            what: format!("read {}", path.display()),
            source: std::io::Error::other(e.to_string()),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound(id)),
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    // The other records: who else uses the object and the published name.
    let mut others: Vec<Record> = Vec::new();
    let entries =
        fs::read_dir(&records_dir).map_err(io_err(format!("read {}", records_dir.display())))?;
    for e in entries.flatten() {
        if e.path() == path {
            continue;
        }
        if let Some(r) = fs::read(e.path())
            .ok()
            .and_then(|b| Record::decode(&b).ok())
        {
            others.push(r);
        }
    }
    fs::remove_file(&path).map_err(io_err(format!("remove {}", path.display())))?;
    disk::sync_dir(&records_dir).map_err(io_err(format!("sync {}", records_dir.display())))?;
    let id_text = id.to_string();
    let _ = disk::remove_file(
        &dir.join("by-owner")
            .join(record.owner.to_string())
            .join(&id_text),
    );
    for t in &record.tags {
        let _ = disk::remove_file(&dir.join("by-tag").join(t).join(&id_text));
    }
    let object = dir.join("objects").join(hex::encode(&record.sha256));
    let mut unpublished = None;
    if let Some(name) = &record.published {
        let shared = others.iter().any(|o| o.published.as_ref() == Some(name));
        let published = root.join(name);
        let ours = match (fs::symlink_metadata(&published), fs::metadata(&object)) {
            (Ok(p), Ok(o)) => p.is_file() && (p.dev(), p.ino()) == (o.dev(), o.ino()),
            (Ok(p), Err(_)) => {
                p.is_file()
                    && p.len() == record.size
                    && disk::hash_path(&published).is_ok_and(|(s, _, _)| s == record.sha256)
            }
            _ => false,
        };
        if !shared && ours {
            fs::remove_file(&published)
                .map_err(io_err(format!("remove {}", published.display())))?;
            unpublished = Some(name.clone());
        }
    }
    let object_used = others.iter().any(|o| o.sha256 == record.sha256);
    let object_removed = !object_used && disk::remove_file(&object).is_ok();
    Ok(Removed {
        record,
        unpublished,
        object_removed,
    })
}
