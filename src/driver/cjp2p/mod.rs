//! CJP2P drivers: the UDP event loop that runs the node and downloader machines
//! ([`node::NodeHandle`]), what a node does with a folder ([`role`]: serve a catalog, or a
//! client that serves nothing), and block-list downloads on top of it ([`blocklist`]).

pub mod blocklist;
pub mod node;
pub mod role;
