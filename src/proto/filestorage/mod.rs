//! filestorage (filestorage.md): pure codecs and machines, no I/O.

pub mod base64;
pub mod frame;
pub mod ids;
pub mod json;
pub mod reason;
pub mod store;
#[cfg(test)]
mod testdata;
pub mod token;
