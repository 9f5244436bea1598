//! The sources `ferry sync` can read: a URL's scheme picks the protocol, and each protocol
//! offers the two things a sync needs, a complete listing with content ids and a verified fetch
//! of given ids into a folder.
//!
//! | scheme | listing | ids | fetch | resume |
//! |---|---|---|---|---|
//! | `tej://host[:8000]` | status-5 pages (every catalog file) | SHA-256 | status-4 requests, batches | no: TEJ has no ranges; an interrupted file starts over |
//! | `jtp://host[:8443]` | one LIST (the images only) | xxHash64 | GET_BY_ID in chunks of 255 | no: JTP GETs whole images |
//!
//! `cjp2p://` is refused with the reason: a CJP2P `ContentList` gives a few ids per request with
//! no names and no end, so no complete listing exists to mirror (CJP2P can resume, but only
//! `ferry cjp2p get` of a known id uses that). FastDP has no listing; filestorage lists one
//! user's uploads, not a folder, and sync does not mirror those.
//!
//! Out of scope: the protocols themselves. This module only calls the clients' public API.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::plan::{ContentId, Fetch, RemoteFile};
use super::SyncError;
use crate::driver::jtp::client as jtp;
use crate::driver::tej::client as tej;
use crate::wire::hex;

/// Where a sync reads from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A ferry TEJ server, `host:port`.
    Tej { addr: String },
    /// A JTP server, `host:port`.
    Jtp { addr: String },
}

/// TEJ's default port (tej.md 1.1).
const TEJ_PORT: u16 = 8000;
/// JTP's default port.
const JTP_PORT: u16 = crate::proto::jtp::DEFAULT_PORT;

impl Source {
    /// `tej://host[:port]` or `jtp://host[:port]`; IPv6 hosts in brackets.
    pub fn parse(url: &str) -> Result<Source, SyncError> {
        let usage = |why: &str| SyncError::Usage(format!("source {url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| usage("give a URL such as tej://host:8000 or jtp://host:8443"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(usage("expected scheme://host[:port] and nothing more"));
        }
        match scheme.to_ascii_lowercase().as_str() {
            "tej" => Ok(Source::Tej {
                addr: with_port(rest, TEJ_PORT),
            }),
            "jtp" => Ok(Source::Jtp {
                addr: with_port(rest, JTP_PORT),
            }),
            "cjp2p" => Err(usage(
                "CJP2P cannot list a whole catalog (a ContentList holds a few ids, no names and \
                 no end marker), so there is nothing complete to mirror; sync from the same \
                 server's tej:// port, or fetch one id with `ferry cjp2p get` (which resumes)",
            )),
            "fastdp" => Err(usage(
                "FastDP cannot list (it has push and pull of one file, no listing request); \
                 pull a file by name or SHA-256 with `ferry fastdp get` (which resumes), or sync \
                 from the same server's tej:// port",
            )),
            "filestorage" => Err(usage(
                "filestorage does not list a folder, only one user's uploads (`ferry filestorage \
                 query`), and sync does not mirror those; fetch one by id with `ferry \
                 filestorage fetch`, or sync from the same server's tej:// port",
            )),
            other => Err(usage(&format!(
                "unknown scheme {other:?} (sync reads tej:// and jtp://; cjp2p://, fastdp:// \
                 and filestorage:// are refused with the reason)"
            ))),
        }
    }

    /// The URL scheme.
    pub fn scheme(&self) -> &'static str {
        match self {
            Source::Tej { .. } => "tej",
            Source::Jtp { .. } => "jtp",
        }
    }

    pub fn addr(&self) -> &str {
        match self {
            Source::Tej { addr } | Source::Jtp { addr } => addr,
        }
    }

    /// Whether an interrupted file can continue where it stopped.
    pub fn can_resume(&self) -> bool {
        match self {
            Source::Tej { .. } | Source::Jtp { .. } => false,
        }
    }
}

/// `host:port` with `default` added when the port is missing; brackets kept for IPv6.
fn with_port(hostport: &str, default: u16) -> String {
    if let Some(rest) = hostport.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').filter(|p| !p.is_empty());
            return format!(
                "[{host}]:{}",
                port.map_or(default.to_string(), str::to_string)
            );
        }
    }
    match hostport.matches(':').count() {
        0 => format!("{hostport}:{default}"),
        1 => hostport.to_string(),
        // A bare IPv6 address.
        _ => format!("[{hostport}]:{default}"),
    }
}

/// How to reach the source.
#[derive(Clone, Debug)]
pub struct Connect {
    /// TLS on or off; None: the scheme's default (TEJ plain, JTP TLS).
    pub tls: Option<bool>,
    /// Trust anchors (PEM); without it, the Mozilla roots.
    pub cert: Option<PathBuf>,
    /// Name verified and sent as SNI; default: the host of the address.
    pub server_name: Option<String>,
    pub io_timeout: Duration,
    /// Connections used at once.
    pub parallel: usize,
    pub verbose: bool,
}

impl Default for Connect {
    fn default() -> Self {
        Connect {
            tls: None,
            cert: None,
            server_name: None,
            io_timeout: Duration::from_secs(30),
            parallel: 2,
            verbose: false,
        }
    }
}

/// A file fetched and verified into the incoming folder, with the hashes known for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    pub path: PathBuf,
    pub sha256: Option<[u8; 32]>,
    pub xxh64: Option<u64>,
}

/// What one fetch attempt did.
#[derive(Debug, Default)]
pub struct Attempt {
    pub staged: Vec<(ContentId, Staged)>,
    /// Ids the source says it no longer has (changed or removed since the listing).
    pub gone: Vec<ContentId>,
    /// Why the rest did not arrive, if something did not.
    pub error: Option<SyncError>,
}

/// Most files in one TEJ request.
const TEJ_BATCH_FILES: usize = 1000;
/// Most bytes in one TEJ request (a larger file goes alone): a broken connection costs a
/// batch, since TEJ cannot resume.
const TEJ_BATCH_BYTES: u64 = 64 << 20;
/// Most ids in one JTP fetch call (the client splits them into GETs of 255).
const JTP_BATCH_IDS: usize = 10_000;

/// A connected-on-demand client of one source.
pub enum Remote {
    Tej(tej::Client),
    Jtp(jtp::Client),
}

impl Remote {
    pub fn new(source: &Source, c: &Connect) -> Result<Remote, SyncError> {
        match source {
            Source::Tej { addr } => {
                let opts = tej::ClientOptions {
                    addr: addr.clone(),
                    tls: c.tls.unwrap_or(false),
                    cert: c.cert.clone(),
                    server_name: c.server_name.clone(),
                    io_timeout: c.io_timeout,
                    verbose: c.verbose,
                    ..tej::ClientOptions::default()
                };
                tej::Client::new(opts).map(Remote::Tej).map_err(tej_error)
            }
            Source::Jtp { addr } => {
                let opts = jtp::ClientOptions {
                    addr: addr.clone(),
                    tls: c.tls.unwrap_or(true),
                    cert: c.cert.clone(),
                    server_name: c.server_name.clone(),
                    io_timeout: c.io_timeout,
                    keep_alive: true,
                    parallel: c.parallel.clamp(1, 32),
                    verbose: c.verbose,
                    ..jtp::ClientOptions::default()
                };
                jtp::Client::new(opts).map(Remote::Jtp).map_err(jtp_error)
            }
        }
    }

    /// The client's transfer counters.
    pub fn progress(&self) -> std::sync::Arc<crate::driver::progress::Progress> {
        match self {
            Remote::Tej(c) => c.progress(),
            Remote::Jtp(c) => c.progress(),
        }
    }

    /// Fetch workers that run at once: TEJ uses one connection per worker; the JTP client
    /// spreads one call over its own connections.
    pub fn workers(&self, c: &Connect) -> usize {
        match self {
            Remote::Tej(_) => c.parallel.clamp(1, 16),
            Remote::Jtp(_) => 1,
        }
    }

    /// The whole listing.
    pub fn list(&self) -> Result<Vec<RemoteFile>, SyncError> {
        match self {
            Remote::Tej(c) => {
                let entries = c.list().map_err(tej_error)?;
                entries
                    .into_iter()
                    .map(|e| {
                        let sha = hex::parse_sha256(&e.sha256).ok_or_else(|| {
                            SyncError::Protocol(format!(
                                "tej: listing gives {:?} a bad sha256 {:?}",
                                e.name, e.sha256
                            ))
                        })?;
                        Ok(RemoteFile {
                            name: e.name,
                            size: e.size,
                            id: ContentId::Sha256(sha),
                        })
                    })
                    .collect()
            }
            Remote::Jtp(c) => Ok(c
                .list()
                .map_err(jtp_error)?
                .into_iter()
                .map(|l| RemoteFile {
                    name: l.name,
                    size: u64::from(l.size),
                    id: ContentId::Xxh64(l.id),
                })
                .collect()),
        }
    }

    /// Cuts the fetches into the units one attempt moves, largest first (so a long file starts
    /// early and the rest fill in around it).
    pub fn batches<'a>(&self, fetch: &'a [Fetch]) -> Vec<Vec<&'a Fetch>> {
        let mut items: Vec<&Fetch> = fetch.iter().collect();
        items.sort_by(|a, b| b.size.cmp(&a.size).then(a.id.cmp(&b.id)));
        let (max_files, max_bytes) = match self {
            Remote::Tej(_) => (TEJ_BATCH_FILES, TEJ_BATCH_BYTES),
            Remote::Jtp(_) => (JTP_BATCH_IDS, u64::MAX),
        };
        let mut out: Vec<Vec<&Fetch>> = Vec::new();
        let mut bytes = 0u64;
        for f in items {
            let full = out
                .last()
                .is_none_or(|b| b.len() >= max_files || bytes.saturating_add(f.size) > max_bytes);
            if full {
                out.push(Vec::new());
                bytes = 0;
            }
            bytes = bytes.saturating_add(f.size);
            out.last_mut().expect("pushed above").push(f);
        }
        out
    }

    /// One attempt at fetching `items` into `into` (verified there by the client).
    pub fn fetch(&self, items: &[&Fetch], into: &Path, stop: &AtomicBool) -> Attempt {
        match self {
            Remote::Tej(c) => {
                let want: Vec<String> = items.iter().map(|f| f.id.to_string()).collect();
                match c.get_hashed(into, &want) {
                    Ok(entries) => Attempt {
                        staged: entries
                            .into_iter()
                            .filter_map(|(e, xxh64)| {
                                let sha = hex::parse_sha256(&e.sha256)?;
                                // Both hashes were taken on the way in: nothing is read back.
                                Some((
                                    ContentId::Sha256(sha),
                                    Staged {
                                        path: into.join(&e.name),
                                        sha256: Some(sha),
                                        xxh64: Some(xxh64),
                                    },
                                ))
                            })
                            .collect(),
                        ..Attempt::default()
                    },
                    Err(tej::ClientError::Peer(msg)) => match not_found(&msg) {
                        Some(missing) if !missing.is_empty() => Attempt {
                            gone: missing
                                .iter()
                                .filter_map(|m| hex::parse_sha256(m).map(ContentId::Sha256))
                                .collect(),
                            ..Attempt::default()
                        },
                        _ => Attempt {
                            error: Some(SyncError::Protocol(format!("tej: refused: {msg}"))),
                            ..Attempt::default()
                        },
                    },
                    Err(e) => Attempt {
                        error: Some(tej_error(e)),
                        ..Attempt::default()
                    },
                }
            }
            Remote::Jtp(c) => {
                let ids: Vec<u64> = items
                    .iter()
                    .filter_map(|f| match f.id {
                        ContentId::Xxh64(x) => Some(x),
                        ContentId::Sha256(_) => None,
                    })
                    .collect();
                match c.get(into, Some(ids), jtp::Mode::Get, stop) {
                    Ok(s) => {
                        let error = if !s.corrupt.is_empty() || !s.failed.is_empty() {
                            Some(SyncError::Protocol(format!(
                                "jtp: {} images failed verification, {} failed: {}",
                                s.corrupt.len(),
                                s.failed.len(),
                                s.failed.first().map(String::as_str).unwrap_or("")
                            )))
                        } else {
                            None
                        };
                        Attempt {
                            staged: s
                                .saved
                                .into_iter()
                                .map(|v| {
                                    (
                                        ContentId::Xxh64(v.id),
                                        Staged {
                                            path: into.join(&v.name),
                                            sha256: None,
                                            xxh64: Some(v.id),
                                        },
                                    )
                                })
                                .collect(),
                            gone: s.missing.into_iter().map(ContentId::Xxh64).collect(),
                            error,
                        }
                    }
                    Err(e) => Attempt {
                        error: Some(jtp_error(e)),
                        ..Attempt::default()
                    },
                }
            }
        }
    }
}

/// The `missing` items of a TEJ `not-found` error frame (tej.md 3.3), or None for another error.
fn not_found(msg: &str) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(msg).ok()?;
    if v.get("error")?.as_str()? != "not-found" {
        return None;
    }
    Some(
        v.get("missing")?
            .as_array()?
            .iter()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect(),
    )
}

fn tej_error(e: tej::ClientError) -> SyncError {
    use tej::ClientError as E;
    let msg = format!("tej: {e}");
    match e {
        E::Connect(_) | E::Io(_) | E::TimedOut(_) | E::Closed => SyncError::Network(msg),
        E::Frame(_)
        | E::Peer(_)
        | E::Mismatch(_)
        | E::UnsafeName(_)
        | E::Unrequested(_)
        | E::ServerSpeaksTls => SyncError::Protocol(msg),
        // The sync never sets the client's stop flag; should it ever be, the run is local.
        E::Local(_) | E::Interrupted => SyncError::Local(msg),
    }
}

fn jtp_error(e: jtp::ClientError) -> SyncError {
    use jtp::ClientError as E;
    let msg = format!("jtp: {e}");
    match e {
        E::Connect(_) | E::Io(_) | E::TimedOut(_) | E::Closed { .. } => SyncError::Network(msg),
        E::Protocol(_) | E::Server { .. } => SyncError::Protocol(msg),
        E::Local(_) => SyncError::Local(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_protocol_and_default_port() {
        let tej = |a: &str| Source::Tej { addr: a.into() };
        let jtp = |a: &str| Source::Jtp { addr: a.into() };
        assert_eq!(Source::parse("tej://h").unwrap(), tej("h:8000"));
        assert_eq!(Source::parse("tej://h:9/").unwrap(), tej("h:9"));
        assert_eq!(
            Source::parse("TEJ://10.0.0.1:1").unwrap(),
            tej("10.0.0.1:1")
        );
        assert_eq!(Source::parse("tej://[::1]").unwrap(), tej("[::1]:8000"));
        assert_eq!(Source::parse("tej://[::1]:5").unwrap(), tej("[::1]:5"));
        assert_eq!(Source::parse("tej://::1").unwrap(), tej("[::1]:8000"));
        assert_eq!(Source::parse("jtp://img").unwrap(), jtp("img:8443"));
    }

    #[test]
    fn bad_and_unlistable_sources_are_usage_errors_with_a_reason() {
        for bad in [
            "h:8000",
            "tej://",
            "tej://h/path",
            "tej://u@h",
            "http://h",
            "fastdp://h",
            "filestorage://h",
        ] {
            assert!(
                matches!(Source::parse(bad), Err(SyncError::Usage(_))),
                "{bad}"
            );
        }
        for (url, why) in [
            ("cjp2p://h:24254", "cannot list"),
            ("fastdp://h", "ferry fastdp get"),
            ("filestorage://h", "filestorage fetch"),
        ] {
            match Source::parse(url) {
                Err(SyncError::Usage(m)) => assert!(m.contains(why), "{url}: {m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_not_found_frame_gives_its_missing_items() {
        let m = r#"{"error":"not-found","detail":"x","missing":["ab","cd"]}"#;
        assert_eq!(not_found(m), Some(vec!["ab".into(), "cd".into()]));
        assert_eq!(not_found(r#"{"error":"busy","detail":""}"#), None);
        assert_eq!(not_found("not json"), None);
    }

    #[test]
    fn tej_batches_are_bounded_and_start_with_the_largest_file() {
        let remote = Remote::Tej(
            tej::Client::new(tej::ClientOptions::default()).expect("client without connecting"),
        );
        let mut fetch: Vec<Fetch> = (0..2500u32)
            .map(|i| Fetch {
                id: ContentId::Xxh64(u64::from(i)),
                size: 1000,
                names: vec![format!("f{i}")],
            })
            .collect();
        fetch.push(Fetch {
            id: ContentId::Xxh64(99_999),
            size: 1 << 30,
            names: vec!["big".into()],
        });
        let b = remote.batches(&fetch);
        assert_eq!(b[0].len(), 1);
        assert_eq!(b[0][0].size, 1 << 30);
        assert!(b[1..].iter().all(|x| x.len() <= TEJ_BATCH_FILES));
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 2501);
    }
}
