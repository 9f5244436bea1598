//! ferry's integration tests: the real `ferry` binary on loopback, real files, SHA-256 compared
//! with the source. One test binary; every test gets a fresh temporary folder and kills its
//! children on drop.

mod catalog;
mod cjp2p;
mod cjp2p_swarm;
mod cli;
mod harness;
mod jtp_client;
mod jtp_peers;
mod jtp_server;
mod server_core;
mod sync;
mod tej;
