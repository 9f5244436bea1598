//! The protocols ferry speaks. Each lives in its own module as codecs and state machines that take
//! bytes in and give bytes and events out; only the `driver` submodules touch sockets and files.

pub mod bulk;
pub mod cjp2p;
pub mod jtp;
pub mod tej;
