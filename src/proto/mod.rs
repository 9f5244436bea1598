//! The protocols ferry speaks, as pure codecs and state machines: bytes (and the current time)
//! in, bytes, events and timeouts out. Nothing under `proto` touches a socket, a file, a thread
//! or a clock; the matching drivers in [`crate::driver`] do that.

pub mod budget;
pub mod cjp2p;
pub mod fastdp;
pub mod filestorage;
pub mod jtp;
pub mod tej;
