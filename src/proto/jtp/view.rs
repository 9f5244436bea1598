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

/// Whether a name of `len` bytes fits the wire's u16 name length (jtp.md 3.10).
fn name_fits(len: usize) -> bool {
    len <= usize::from(u16::MAX)
}

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
            if !name_fits(e.name.len()) || by_id.contains_key(&e.xxh64) {
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
                } else if !name_fits(e.name.len()) {
                    Some((e.name.clone(), "name over 65,535 bytes"))
                } else {
                    None
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CatalogHandle, CatalogOptions};
    use crate::ingest::test_dir::TempDir;

    /// Names up to 65,535 bytes are served, longer ones are not (a catalog path that long
    /// needs some 260 nested folders, so the bound is checked on its own).
    #[test]
    fn names_fit_up_to_65535_bytes() {
        assert!(name_fits(0));
        assert!(name_fits(65_534));
        assert!(name_fits(65_535));
        assert!(!name_fits(65_536));
        assert!(!name_fits(usize::MAX));
    }

    #[test]
    fn one_item_per_id_the_first_by_name_and_only_images_filtered_by_only() {
        let t = TempDir::new("jtp-view");
        for (name, bytes) in [
            ("b.png", &b"same"[..]),
            ("a.PNG", b"same"),
            ("c.jpg", b"other"),
            ("notes.txt", b"text"),
        ] {
            std::fs::write(t.0.join(name), bytes).unwrap();
        }
        let cat = CatalogHandle::open(&t.0, CatalogOptions::default())
            .unwrap()
            .snapshot();
        let view = View::build(&cat, None);
        let names: Vec<&str> = view.items.iter().map(|i| i.entry.name.as_str()).collect();
        assert_eq!(names, ["a.PNG", "c.jpg"], "b.png repeats a.PNG's id");
        let id = twox_hash::XxHash64::oneshot(0, b"same");
        assert_eq!(view.get(id).map(|i| i.entry.name.as_str()), Some("a.PNG"));
        assert!(view.contains(id) && !view.contains(id ^ 1));
        assert_eq!(
            view.items[1].flags(),
            FileType::from_name("c.jpg").unwrap() as u8
        );
        let only = View::build(&cat, Some("C."));
        assert_eq!(only.items.len(), 1);
        assert_eq!(only.items[0].entry.name, "c.jpg");
        assert!(View::excluded(&cat).is_empty());
        // Whole run, proto-jtp view part: `flags` as 1 stayed green (c.jpg's type is 1).
        assert_eq!(view.items[0].flags(), FileType::Png as u8);
    }

    /// Images of 4 GiB or more are left out of the view and named for the log; one byte less
    /// is served (whole run, proto-jtp view part: `excluded` as empty, `>` as `==` or `>=`
    /// stayed green: no test folder holds such a file, so the entries are made up).
    #[test]
    fn images_of_4_gib_or_more_are_excluded_and_named() {
        let t = TempDir::new("jtp-view-big");
        std::fs::write(t.0.join("c.jpg"), b"jpeg").unwrap();
        let cat = CatalogHandle::open(&t.0, CatalogOptions::default())
            .unwrap()
            .snapshot();
        let e = cat.entries().next().unwrap().clone();
        let max = u64::from(u32::MAX);
        let cat = Catalog::of_entries_for_test(vec![
            e.renamed_for_test("fits.png", max),
            e.renamed_for_test("over.png", max + 1),
            e.renamed_for_test("huge.gif", 1 << 40),
            e.renamed_for_test("huge.txt", 1 << 40),
        ]);
        let view = View::build(&cat, None);
        let served: Vec<(&str, u32)> = view
            .items
            .iter()
            .map(|i| (i.entry.name.as_str(), i.size))
            .collect();
        assert_eq!(served, [("fits.png", u32::MAX)]);
        let mut excluded = View::excluded(&cat);
        excluded.sort();
        assert_eq!(
            excluded,
            [
                ("huge.gif".to_owned(), "4 GiB or larger"),
                ("over.png".to_owned(), "4 GiB or larger")
            ]
        );
    }
}
