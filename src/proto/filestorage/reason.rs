//! The `reason` of an Error RESPONSE (spec 4.1, 8): a code clients match on, optionally `": "`
//! and an ASCII detail of at most 200 bytes that never echoes client text.

use std::fmt;

/// The error codes of spec section 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    Malformed,
    TooLarge,
    UnknownType,
    NotAuthenticated,
    InvalidToken,
    TokenExpired,
    FidConflict,
    BadName,
    BadTag,
    FileTooBig,
    QuotaExceeded,
    BadChunk,
    BadData,
    DigestMismatch,
    NotFound,
    BadRange,
    StorageError,
    Internal,
}

impl Code {
    /// Every code, in the order of section 8.
    pub const ALL: [Code; 18] = [
        Code::Malformed,
        Code::TooLarge,
        Code::UnknownType,
        Code::NotAuthenticated,
        Code::InvalidToken,
        Code::TokenExpired,
        Code::FidConflict,
        Code::BadName,
        Code::BadTag,
        Code::FileTooBig,
        Code::QuotaExceeded,
        Code::BadChunk,
        Code::BadData,
        Code::DigestMismatch,
        Code::NotFound,
        Code::BadRange,
        Code::StorageError,
        Code::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Malformed => "malformed",
            Code::TooLarge => "too-large",
            Code::UnknownType => "unknown-type",
            Code::NotAuthenticated => "not-authenticated",
            Code::InvalidToken => "invalid-token",
            Code::TokenExpired => "token-expired",
            Code::FidConflict => "fid-conflict",
            Code::BadName => "bad-name",
            Code::BadTag => "bad-tag",
            Code::FileTooBig => "file-too-big",
            Code::QuotaExceeded => "quota-exceeded",
            Code::BadChunk => "bad-chunk",
            Code::BadData => "bad-data",
            Code::DigestMismatch => "digest-mismatch",
            Code::NotFound => "not-found",
            Code::BadRange => "bad-range",
            Code::StorageError => "storage-error",
            Code::Internal => "internal",
        }
    }

    /// The code of a reason text (`code` or `code: detail`); `None` for a code this spec does
    /// not define.
    pub fn of_reason(text: &str) -> Option<Code> {
        let code = text.split_once(": ").map_or(text, |(c, _)| c);
        Code::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// Whether the server closes the connection after sending this code (section 8): only
    /// `too-large` and `internal`; `malformed` closes only for a LEN error, which the framing
    /// layer decides.
    pub fn closes(self) -> bool {
        matches!(self, Code::TooLarge | Code::Internal)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes a detail may have.
pub const MAX_DETAIL: usize = 200;

/// An Error RESPONSE's reason: a code and an optional detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    pub code: Code,
    detail: Option<String>,
}

impl Reason {
    pub fn new(code: Code) -> Reason {
        Reason { code, detail: None }
    }

    /// A reason with a detail made of ferry's own words and numbers (never client text):
    /// characters outside printable ASCII, `"` and `\` become `?`, and it is cut to 200 bytes,
    /// so the reason needs no JSON escaping and the reply's size stays bounded.
    pub fn with_detail(code: Code, detail: impl fmt::Display) -> Reason {
        let mut d: String = detail
            .to_string()
            .chars()
            .map(|c| match c {
                ' '..='~' if c != '"' && c != '\\' => c,
                _ => '?',
            })
            .collect();
        d.truncate(MAX_DETAIL);
        Reason {
            code,
            detail: (!d.is_empty()).then_some(d),
        }
    }

    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
}

impl From<Code> for Reason {
    fn from(code: Code) -> Reason {
        Reason::new(code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            None => f.write_str(self.code.as_str()),
            Some(d) => write!(f, "{}: {d}", self.code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_details_are_sanitised() {
        for c in Code::ALL {
            assert_eq!(Code::of_reason(c.as_str()), Some(c));
            assert_eq!(Code::of_reason(&format!("{c}: x")), Some(c));
        }
        assert_eq!(Code::of_reason("nope"), None);
        assert_eq!(Code::of_reason("malformed:x"), None);
        let r = Reason::with_detail(Code::QuotaExceeded, "bytes");
        assert_eq!(r.to_string(), "quota-exceeded: bytes");
        let r = Reason::with_detail(Code::BadName, "a\"b\\c\u{e9}\n");
        assert_eq!(r.detail(), Some("a?b?c??"));
        let r = Reason::with_detail(Code::BadData, "x".repeat(300));
        assert_eq!(r.detail().unwrap().len(), MAX_DETAIL);
        assert_eq!(
            Reason::with_detail(Code::Internal, "").to_string(),
            "internal"
        );
        assert_eq!(Reason::from(Code::NotFound).to_string(), "not-found");
        assert!(Code::TooLarge.closes() && Code::Internal.closes());
        assert!(!Code::Malformed.closes() && !Code::BadData.closes());
    }
}
