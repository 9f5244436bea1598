//! FastDP 1.1.0 as `cli.py` sends it (fastdp.md 1.2): the receiver's reply lines and the
//! decoders of its whole-file compressions.

use std::fmt;

/// The success reply: unframed ASCII, 27 bytes, then a close.
pub const SUCCESS: &[u8] = b"File received successfully.";

/// Why a 1.1.0 transfer failed; each has one unframed `ERROR: ...` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V110Error {
    MalformedChunkHeader,
    IncompleteChunkData,
    ChecksumMismatch,
    BadHeader,
    BadFileName,
    FileTooLarge,
    NotEnoughDiskSpace,
    DecompressionFailed,
    Timeout,
}

impl V110Error {
    /// The exact reply line.
    pub fn line(self) -> &'static [u8] {
        match self {
            V110Error::MalformedChunkHeader => b"ERROR: Malformed chunk header.",
            V110Error::IncompleteChunkData => b"ERROR: Incomplete chunk data.",
            V110Error::ChecksumMismatch => b"ERROR: Checksum mismatch.",
            V110Error::BadHeader => b"ERROR: Bad header.",
            V110Error::BadFileName => b"ERROR: Bad file name.",
            V110Error::FileTooLarge => b"ERROR: File too large.",
            V110Error::NotEnoughDiskSpace => b"ERROR: Not enough disk space.",
            V110Error::DecompressionFailed => b"ERROR: Decompression failed.",
            V110Error::Timeout => b"ERROR: Timeout.",
        }
    }
}

impl fmt::Display for V110Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fastdp 1.1.0: {}", String::from_utf8_lossy(self.line()))
    }
}

impl std::error::Error for V110Error {}
