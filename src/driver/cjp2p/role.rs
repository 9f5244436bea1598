//! What a CJP2P node does with a folder ([`Role`]): serve a catalog (`cjp2p node`, `ferry
//! serve`), or be a client (`cjp2p get`, `list`, `peers`) that opens no catalog, serves nothing
//! and binds only the address that reaches its peers ([`client_bind`]).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;

use crate::catalog::CatalogHandle;
use crate::proto::cjp2p::node::ContentStore;

/// What a node does with a folder.
#[derive(Clone)]
pub enum Role {
    /// Serve the catalog's files under their SHA-256; downloads are published into it.
    Serve(Arc<CatalogHandle>),
    /// A client: serves nothing, opens no catalog. Downloads are published into `out`, partial
    /// data in `out/.ferry/ingest/cjp2p`; without `out` it only asks for peers and lists.
    Client { out: Option<PathBuf> },
}

/// A content store with nothing in it: what a client serves.
pub(super) struct NothingServed;

impl ContentStore for NothingServed {
    fn size_of(&self, _: &[u8; 32]) -> Option<u64> {
        None
    }
    fn read_at(&self, _: &[u8; 32], _: u64, _: &mut [u8]) -> Option<usize> {
        None
    }
    fn list(&self, _: usize, _: usize) -> Vec<([u8; 32], u64)> {
        Vec::new()
    }
    fn count(&self) -> usize {
        0
    }
}

/// The address a client binds when not told: an ephemeral port on the one local address that
/// routes to every peer (127.0.0.1 for loopback peers), else on the wildcard of their family;
/// `[::]` (dual stack) only when the peers are of both families. A client needs no fixed port
/// and no interface its peers do not use.
pub fn client_bind(peers: &[SocketAddr]) -> SocketAddr {
    let any_v4 = SocketAddr::from(([0, 0, 0, 0], 0));
    let any_v6 = SocketAddr::from(([0u16; 8], 0));
    let (v4, v6) = (
        peers.iter().any(|p| p.is_ipv4()),
        peers.iter().any(|p| p.is_ipv6()),
    );
    let wildcard = match (v4, v6) {
        (true, true) => return any_v6,
        (false, true) => any_v6,
        _ => any_v4,
    };
    // The kernel's choice of source address for each peer (connect on UDP sends nothing).
    let route = |p: &SocketAddr| -> Option<std::net::IpAddr> {
        let s = UdpSocket::bind(wildcard).ok()?;
        s.connect(p).ok()?;
        Some(s.local_addr().ok()?.ip())
    };
    let mut ips = peers.iter().map(route);
    match ips.next().flatten() {
        Some(first) if ips.all(|ip| ip == Some(first)) => SocketAddr::new(first, 0),
        _ => wildcard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_binds_the_address_that_routes_to_its_peers() {
        let lo: SocketAddr = "127.0.0.1:24254".parse().unwrap();
        assert_eq!(client_bind(&[lo]).to_string(), "127.0.0.1:0");
        assert_eq!(
            client_bind(&[lo, "127.0.0.1:9".parse().unwrap()]).to_string(),
            "127.0.0.1:0"
        );
        let v6: SocketAddr = "[::1]:24254".parse().unwrap();
        let b = client_bind(&[v6]);
        assert!(b.is_ipv6() && b.port() == 0, "{b}");
        assert_eq!(
            client_bind(&[lo, v6]).to_string(),
            "[::]:0",
            "both families"
        );
        assert_eq!(client_bind(&[]).to_string(), "0.0.0.0:0");
    }
}
