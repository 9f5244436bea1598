//! JTP's view of a catalog snapshot: which files are images, under which id, in which order.
//!
//! Pure: built from a [`Catalog`] snapshot's metadata, it reads no file. Rules (jtp.md 3.10):
//! image extensions only (png, jpg/jpeg, webp, bmp, gif, ASCII case-insensitive), `--only`
//! as an ASCII case-insensitive substring of the NFC name, sizes up to `u32::MAX`, names up to
//! 65,535 bytes, one entry per id (the first in catalog order, i.e. by NFC name, wins).

use std::collections::HashMap;
use std::sync::Arc;

use super::wire::FileType;
use crate::catalog::{Catalog, Entry};

/// One image as JTP serves it.
#[derive(Clone)]
pub struct Item {
    pub entry: Arc<Entry>,
    pub id: u64,
    pub ftype: FileType,
    /// Original size (fits the wire's u32).
    pub size: u32,
}

impl Item {
    /// The catalog-entry flags byte: the file type only.
    pub fn flags(&self) -> u8 {
        self.ftype as u8
    }
}

/// The images of one snapshot, in catalog order.
pub struct View {
    pub generation: u64,
    pub items: Vec<Item>,
    by_id: HashMap<u64, usize>,
}

impl View {
    pub fn build(cat: &Catalog, only: Option<&str>) -> View {
        let only = only.map(|s| s.to_ascii_lowercase());
        let mut items = Vec::new();
        let mut by_id = HashMap::new();
        for e in cat.entries() {
            let Some(ftype) = FileType::from_name(&e.name) else {
                continue;
            };
            if let Some(o) = &only {
                if !e.name.to_ascii_lowercase().contains(o.as_str()) {
                    continue;
                }
            }
            let Ok(size) = u32::try_from(e.size) else {
                continue;
            };
            if e.name.len() > u16::MAX as usize || by_id.contains_key(&e.xxh64) {
                continue;
            }
            by_id.insert(e.xxh64, items.len());
            items.push(Item {
                entry: e.clone(),
                id: e.xxh64,
                ftype,
                size,
            });
        }
        View {
            generation: cat.generation(),
            items,
            by_id,
        }
    }

    pub fn get(&self, id: u64) -> Option<&Item> {
        self.by_id.get(&id).map(|&i| &self.items[i])
    }

    pub fn contains(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Image files JTP cannot serve (4 GiB or larger, names over 65,535 bytes), for the log.
    pub fn excluded(cat: &Catalog) -> Vec<(String, &'static str)> {
        cat.entries()
            .filter(|e| FileType::from_name(&e.name).is_some())
            .filter_map(|e| {
                if e.size > u32::MAX as u64 {
                    Some((e.name.clone(), "4 GiB or larger"))
                } else if e.name.len() > u16::MAX as usize {
                    Some((e.name.clone(), "name over 65,535 bytes"))
                } else {
                    None
                }
            })
            .collect()
    }
}
