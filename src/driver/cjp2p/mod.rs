//! CJP2P drivers: the UDP event loop that runs the node and downloader machines
//! ([`node::NodeHandle`]), and block-list downloads on top of it ([`blocklist`]).

pub mod blocklist;
pub mod node;
