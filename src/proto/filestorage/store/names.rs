//! File names and tags (spec 4.2): what a batch may declare, checked before anything is created.

use crate::proto::filestorage::json::FileSpec;
use crate::proto::filestorage::reason::{Code, Reason};

/// Longest file name in bytes.
pub const MAX_NAME: usize = 255;
/// Longest tag in bytes.
pub const MAX_TAG: usize = 64;
/// Most distinct tags per list (spec 1.1 `max_tags`).
pub const MAX_TAGS: usize = 32;
/// The tag that makes a file visible to every uid and published into the catalog (spec 7.3).
pub const PUBLIC: &str = "public";

/// 1..255 bytes of UTF-8 (a `&str` already is), no `/`, no control character (U+0000..U+001F,
/// U+007F), no leading `.` (so never `.`, `..` or `.ferry`).
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && !name.starts_with('.')
        && !name.bytes().any(|b| b == b'/' || b < 0x20 || b == 0x7f)
}

/// 1..64 bytes of `[A-Za-z0-9._-]`, no leading `.`.
pub fn is_valid_tag(tag: &str) -> bool {
    (1..=MAX_TAG).contains(&tag.len())
        && !tag.starts_with('.')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `bad-name: <index>` for the first file whose name is refused.
pub fn check_names(files: &[FileSpec]) -> Result<(), Reason> {
    match files.iter().position(|f| !is_valid_name(&f.name)) {
        None => Ok(()),
        Some(i) => Err(Reason::with_detail(Code::BadName, i)),
    }
}

/// The tag set of a list: sorted, duplicates dropped.
pub fn tag_set<S: AsRef<str>>(tags: &[S]) -> Vec<String> {
    let mut set: Vec<String> = tags.iter().map(|t| t.as_ref().to_string()).collect();
    set.sort_unstable();
    set.dedup();
    set
}

/// The tag set of a list after checking it: `bad-tag: <index>` for the first tag refused,
/// `bad-tag: more than 32` when more than `max_tags` distinct tags remain (duplicates are
/// dropped before counting, since they are dropped anyway).
pub fn checked_tag_set<S: AsRef<str>>(tags: &[S], max_tags: usize) -> Result<Vec<String>, Reason> {
    if let Some(i) = tags.iter().position(|t| !is_valid_tag(t.as_ref())) {
        return Err(Reason::with_detail(Code::BadTag, i));
    }
    let set = tag_set(tags);
    if set.len() > max_tags {
        return Err(Reason::with_detail(
            Code::BadTag,
            format_args!("more than {max_tags}"),
        ));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> FileSpec {
        FileSpec {
            name: name.into(),
            size: 1,
            sha256: None,
        }
    }

    #[test]
    fn s29_hostile_names_are_refused() {
        for bad in [
            "../x", "a/b", ".", "..", ".ferry", "", "a\u{0}b", "a\nb", "a\u{7f}", "\u{1f}", "/",
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        assert!(!is_valid_name(&"x".repeat(256)));
        assert!(is_valid_name(&"x".repeat(255)));
        assert!(!is_valid_name(&"\u{e9}".repeat(128)), "256 bytes of UTF-8");
        for good in [
            "notes.txt",
            "a..b",
            "x.",
            "caf\u{e9}",
            "a b",
            "a\\b",
            "-",
            "\u{80}",
        ] {
            assert!(is_valid_name(good), "{good:?}");
        }
        let files = [file("ok"), file("a/b"), file("..")];
        assert_eq!(check_names(&files).unwrap_err().to_string(), "bad-name: 1");
        assert!(check_names(&files[..1]).is_ok());
    }

    #[test]
    fn s29_hostile_tags_are_refused() {
        for bad in ["../x", "a/b", ".x", "", "a b", "\u{e9}", "a:b", "a\0"] {
            assert!(!is_valid_tag(bad), "{bad:?}");
        }
        assert!(!is_valid_tag(&"t".repeat(65)));
        assert!(is_valid_tag(&"t".repeat(64)));
        for good in ["public", "work", "2024", "a.b", "x-y_z", "x."] {
            assert!(is_valid_tag(good), "{good:?}");
        }
        let r = checked_tag_set(&["ok", ".x"], MAX_TAGS).unwrap_err();
        assert_eq!(r.to_string(), "bad-tag: 1");
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        assert_eq!(
            checked_tag_set(&many, MAX_TAGS).unwrap_err().to_string(),
            "bad-tag: more than 32"
        );
        assert_eq!(checked_tag_set(&many[..32], MAX_TAGS).unwrap().len(), 32);
        let dup = vec!["a"; 40];
        assert_eq!(checked_tag_set(&dup, MAX_TAGS).unwrap(), ["a"]);
        assert_eq!(tag_set(&["work", "2024", "work"]), ["2024", "work"]);
    }
}
