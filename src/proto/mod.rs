//! The protocols ferry speaks, as pure codecs and state machines: bytes in; bytes, events and
//! decisions out. A machine with timers of its own (CJP2P's node and downloader, the JTP and
//! TEJ clients, FastDP's and filestorage's) takes the current time as an argument and reports
//! its next deadline; one without (the JTP server, which only says which deadline applies
//! through its `Phase`) leaves the clock to its driver. Nothing under `proto` touches a socket,
//! a file, a thread or a clock: a driver in [`crate::driver`] runs a machine over sockets and
//! files. A protocol that has no driver there yet is codecs and machines only, tested in memory.

pub mod budget;
pub mod cjp2p;
pub mod fastdp;
pub mod filestorage;
pub mod jtp;
pub mod tej;
