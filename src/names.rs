//! Safe names: turning a file name that came off the wire into a basename that can be joined to a
//! local folder without escaping it, hiding itself, or confusing a terminal.
//!
//! Two policies exist because the protocols disagree on purpose:
//! - [`sanitize_basename`] is JTP's client rule (jtp.md 5.2 rule 2): normalise to NFC, trim
//!   whitespace, keep only the last path component, then reject what is still unsafe.
//! - [`accept_exact`] is TEJ's rule (tej.md section 5): names are stored byte-exact, so nothing is
//!   repaired; a name is either acceptable as sent or rejected.
//!
//! [`with_tag`] and [`with_number`] build the alternative names used when a final name is already
//! taken by different content (the no-clobber rule). [`printable`] is for the other direction:
//! showing a peer's name (or message) to a person without letting it forge lines or drive the
//! terminal. Everything here is pure: no I/O.
//! Choosing *which* alternative is free is the job of [`crate::ingest`].

use unicode_normalization::UnicodeNormalization;

/// Longest file name (in bytes) Linux file systems accept (`NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// NFC-normalise, trim surrounding whitespace, keep what follows the last '/' or '\\'. Reject (None)
/// an empty result, ".", "..", a leading '.', any control char (incl. NUL, U+007F, C1), or more than
/// `max_bytes` bytes.
///
/// Whitespace is trimmed both before and after the path component is cut, so `"a/ b.png"` gives
/// `"b.png"` rather than a name that starts with a space.
pub fn sanitize_basename(raw: &str, max_bytes: usize) -> Option<String> {
    let normalized: String = raw.nfc().collect();
    let trimmed = normalized.trim();
    let base = match trimmed.rfind(['/', '\\']) {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    };
    let base = base.trim();
    if base.is_empty()
        || base.starts_with('.')
        || base.len() > max_bytes
        || base.chars().any(char::is_control)
    {
        // "." and ".." are covered by the leading-dot rule.
        return None;
    }
    Some(base.to_owned())
}

/// Lossy variant for raw bytes (invalid UTF-8 -> None).
pub fn sanitize_basename_bytes(raw: &[u8], max_bytes: usize) -> Option<String> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| sanitize_basename(s, max_bytes))
}

/// TEJ's byte-exact rule: valid UTF-8, 1 to `max_bytes` bytes, no control character (C0, U+007F,
/// C1), no '/' or '\\', not "." or "..", and not ".ferry" in any ASCII case (the catalog's working
/// folder). Returns the name unchanged, or None.
pub fn accept_exact(raw: &[u8], max_bytes: usize) -> Option<&str> {
    let name = std::str::from_utf8(raw).ok()?;
    if name.is_empty()
        || name.len() > max_bytes
        || name == "."
        || name == ".."
        || name.eq_ignore_ascii_case(".ferry")
        || name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
    {
        return None;
    }
    Some(name)
}

/// `text` as it may be shown on a terminal: every control character (C0 with newline, tab and
/// ESC, DEL, C1), every bidirectional override or isolate (which reorder what is shown) and the
/// backslash itself are written as escapes (`\n`, `\t`, `\r`, `\\`, `\x1b`, `\u{202e}`), so
/// text from a peer can neither forge a row of output nor send the terminal an escape sequence.
/// Text that needs nothing is returned as is. For human output only: JSON output has its own
/// escaping.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    fn is_risky(c: char) -> bool {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(is_risky) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x80 && is_risky(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if is_risky(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `"<stem>.<tag>.<ext>"` (or `"<name>.<tag>"` without an extension) for the no-clobber rule.
///
/// The extension is the text after the last '.', unless that dot is the first character. The stem
/// is cut at a UTF-8 boundary so the result stays within [`MAX_NAME_BYTES`] when it can.
pub fn with_tag(name: &str, tag: &str) -> String {
    let (stem, ext) = split_ext(name);
    join_fitting(stem, &format!(".{tag}"), ext)
}

/// `"<stem>-<n>.<ext>"` (or `"<name>-<n>"` without an extension): TEJ's collision candidates.
/// Same extension and length rules as [`with_tag`].
pub fn with_number(name: &str, n: u32) -> String {
    let (stem, ext) = split_ext(name);
    join_fitting(stem, &format!("-{n}"), ext)
}

/// Splits "stem.ext" into ("stem", Some("ext")); a name whose only dot is its first character has
/// no extension.
fn split_ext(name: &str) -> (&str, Option<&str>) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    }
}

fn join_fitting(stem: &str, insert: &str, ext: Option<&str>) -> String {
    let tail_len = insert.len() + ext.map_or(0, |e| e.len() + 1);
    let mut keep = stem.len().min(MAX_NAME_BYTES.saturating_sub(tail_len));
    while !stem.is_char_boundary(keep) {
        keep -= 1;
    }
    // Never cut the stem to nothing: an over-long extension is the caller's problem, and the
    // rename will report ENAMETOOLONG rather than us inventing a name.
    if keep == 0 {
        keep = stem.len();
    }
    let mut out = String::with_capacity(keep + tail_len);
    out.push_str(&stem[..keep]);
    out.push_str(insert);
    if let Some(e) = ext {
        out.push('.');
        out.push_str(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(raw: &str) -> Option<String> {
        sanitize_basename(raw, MAX_NAME_BYTES)
    }

    #[test]
    fn keeps_plain_names() {
        assert_eq!(s("beta.png").as_deref(), Some("beta.png"));
        assert_eq!(s("a b.png").as_deref(), Some("a b.png"));
        assert_eq!(s("café.gif").as_deref(), Some("café.gif"));
    }

    #[test]
    fn strips_directories() {
        assert_eq!(s("../x.png").as_deref(), Some("x.png"));
        assert_eq!(s("a/b.png").as_deref(), Some("b.png"));
        assert_eq!(s("a\\b.png").as_deref(), Some("b.png"));
        assert_eq!(s("/etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(s("C:\\Windows\\x.bmp").as_deref(), Some("x.bmp"));
        assert_eq!(s("a/ b.png").as_deref(), Some("b.png"));
    }

    #[test]
    fn rejects_dots() {
        assert_eq!(s(".."), None);
        assert_eq!(s("."), None);
        assert_eq!(s("a/.."), None);
        assert_eq!(s(".ferry"), None);
        assert_eq!(s(".hidden.png"), None);
        assert_eq!(s("x/.ferry"), None);
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(s(""), None);
        assert_eq!(s("   "), None);
        assert_eq!(s("a/"), None);
        assert_eq!(s("a\\"), None);
    }

    #[test]
    fn rejects_control_chars() {
        assert_eq!(s("a\0b"), None);
        assert_eq!(s("a\nb.png"), None);
        assert_eq!(s("a\x1bb.png"), None);
        assert_eq!(s("a\x7fb.png"), None);
        assert_eq!(s("a\u{85}b.png"), None);
        assert_eq!(s("a\u{9f}b.png"), None);
    }

    #[test]
    fn trims_whitespace() {
        assert_eq!(s("  x.png  ").as_deref(), Some("x.png"));
        assert_eq!(s("\tx.png\u{3000}").as_deref(), Some("x.png"));
    }

    #[test]
    fn normalizes_to_nfc() {
        // "cafe" + U+0301 COMBINING ACUTE ACCENT -> "café" with U+00E9 (9 bytes with ".gif").
        let nfd = "cafe\u{301}.gif";
        let out = s(nfd).unwrap();
        assert_eq!(out.as_bytes(), b"caf\xc3\xa9.gif");
    }

    #[test]
    fn length_limit_counts_bytes() {
        let ok = "a".repeat(251) + ".png";
        assert_eq!(ok.len(), 255);
        assert_eq!(s(&ok).as_deref(), Some(ok.as_str()));
        let long = "a".repeat(252) + ".png";
        assert_eq!(long.len(), 256);
        assert_eq!(s(&long), None);
        // 128 two-byte characters: 128 chars but 256 bytes.
        assert_eq!(s(&"é".repeat(128)), None);
        assert_eq!(sanitize_basename("abcd", 3), None);
    }

    #[test]
    fn bytes_variant() {
        assert_eq!(
            sanitize_basename_bytes(b"../x.png", 255).as_deref(),
            Some("x.png")
        );
        assert_eq!(sanitize_basename_bytes(b"a\xffb.png", 255), None);
        assert_eq!(sanitize_basename_bytes(b"a\x00b", 255), None);
        assert_eq!(
            sanitize_basename_bytes(b"cafe\xcc\x81.gif", 255).as_deref(),
            Some("caf\u{e9}.gif")
        );
    }

    #[test]
    fn exact_accepts_as_sent() {
        assert_eq!(accept_exact(b" a.txt ", 255), Some(" a.txt "));
        assert_eq!(accept_exact(b".profile", 255), Some(".profile"));
        assert_eq!(accept_exact(b"cafe\xcc\x81", 255), Some("cafe\u{301}"));
    }

    #[test]
    fn exact_rejects() {
        assert_eq!(accept_exact(b"", 255), None);
        assert_eq!(accept_exact(b".", 255), None);
        assert_eq!(accept_exact(b"..", 255), None);
        assert_eq!(accept_exact(b".ferry", 255), None);
        assert_eq!(accept_exact(b".FeRRy", 255), None);
        assert_eq!(accept_exact(b"a/b", 255), None);
        assert_eq!(accept_exact(b"a\\b", 255), None);
        assert_eq!(accept_exact(b"a\x00b", 255), None);
        assert_eq!(accept_exact(b"a\x7f", 255), None);
        assert_eq!(accept_exact(b"a\xc2\x85", 255), None);
        assert_eq!(accept_exact(b"a\xff", 255), None);
        assert_eq!(accept_exact(b"abcd", 3), None);
    }

    #[test]
    fn printable_escapes_what_could_forge_output_or_drive_a_terminal() {
        assert!(matches!(
            printable("café.png"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(printable("a\nFAKE  row"), "a\\nFAKE  row");
        assert_eq!(printable("\x1b]0;pwned\x07x"), "\\x1b]0;pwned\\x07x");
        assert_eq!(printable("\x1b[2J"), "\\x1b[2J");
        assert_eq!(printable("del\x7f c1\u{9b}31m"), "del\\x7f c1\\u{9b}31m");
        // The first C1 control, just past ASCII, takes the \u{..} form.
        assert_eq!(printable("\u{80}"), "\\u{80}");
        assert_eq!(printable("evil\u{202e}gnp.exe"), "evil\\u{202e}gnp.exe");
        assert_eq!(printable("a\\nb\tc\r"), "a\\\\nb\\tc\\r");
        for c in (0u32..0x20).chain(0x7f..0xa0) {
            let s = char::from_u32(c).unwrap().to_string();
            assert!(!printable(&s).chars().any(char::is_control), "{c:#x}");
        }
    }

    #[test]
    fn tags() {
        assert_eq!(with_tag("beta.png", "84fe30f5"), "beta.84fe30f5.png");
        assert_eq!(with_tag("a.tar.gz", "01234567"), "a.tar.01234567.gz");
        assert_eq!(with_tag("README", "01234567"), "README.01234567");
        assert_eq!(with_tag(".profile", "01234567"), ".profile.01234567");
        assert_eq!(with_tag("x.", "01234567"), "x.01234567.");
    }

    #[test]
    fn numbers() {
        assert_eq!(with_number("beta.png", 1), "beta-1.png");
        assert_eq!(with_number("README", 999), "README-999");
    }

    #[test]
    fn tagged_name_stays_within_limit() {
        let name = "é".repeat(125) + "x.png"; // 250 + 5 = 255 bytes
        let tagged = with_tag(&name, "01234567");
        assert!(tagged.len() <= MAX_NAME_BYTES, "{}", tagged.len());
        assert!(tagged.ends_with(".01234567.png"));
        assert!(tagged.starts_with("é"));
        // The cut falls inside an "é" (byte 242 of "a" + 130 x "é"): it moves back to 241.
        let name = "a".to_string() + &"é".repeat(130) + ".png";
        let tagged = with_tag(&name, "01234567");
        assert_eq!(tagged.len(), 241 + ".01234567.png".len());
        assert_eq!(tagged, "a".to_string() + &"é".repeat(120) + ".01234567.png");
    }

    /// Mutation testing found the extension's dot left out of the length: an ASCII stem (no
    /// UTF-8 boundary to round down to) then gave a 256-byte name.
    #[test]
    fn tagged_and_numbered_names_fill_exactly_the_limit() {
        let name = "a".repeat(300) + ".png";
        let tagged = with_tag(&name, "01234567");
        assert_eq!(tagged.len(), MAX_NAME_BYTES);
        assert_eq!(tagged, "a".repeat(242) + ".01234567.png");
        let numbered = with_number(&name, 12);
        assert_eq!(numbered, "a".repeat(248) + "-12.png");
        assert_eq!(with_number(&"b".repeat(300), 7), "b".repeat(253) + "-7");
    }
}
