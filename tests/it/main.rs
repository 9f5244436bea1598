//! ferry's integration tests: the real `ferry` binary on loopback, real files, SHA-256 compared
//! with the source. One test binary; every test gets a fresh temporary folder and kills its
//! children on drop.

mod catalog;
mod checklists;
mod cjp2p;
mod cjp2p_swarm;
mod cli;
mod fastdp;
mod filestorage;
mod harness;
mod jtp_client;
mod jtp_peers;
mod jtp_server;
mod security;
mod server_core;
mod server_limits;
mod sync;
mod tej;
