//! Commands on a local folder: `ferry index` and `ferry certs`.

use std::path::PathBuf;

use argh::FromArgs;

use ferry::catalog::{CatalogHandle, CatalogOptions};
use ferry::transport::{self};

use super::*;

#[derive(FromArgs)]
/// Build or refresh a folder's catalog index (.ferry/index) and report what was hashed.
#[argh(subcommand, name = "index")]
pub(crate) struct IndexArgs {
    /// folder (default ./share)
    #[argh(positional)]
    dir: Option<PathBuf>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Write a test CA and a localhost/127.0.0.1/::1 certificate (for tests; `make certs`).
#[argh(subcommand, name = "certs")]
pub(crate) struct CertsArgs {
    /// output folder (default ./certs)
    #[argh(option, default = "PathBuf::from(\"certs\")")]
    out: PathBuf,
}

pub(crate) fn index(a: IndexArgs) -> Result<u8, Failure> {
    let dir = a.dir.unwrap_or_else(|| PathBuf::from("share"));
    // Indexing is of a folder that exists: a mistyped path in a cron job is an error, not a
    // new empty folder indexed as "0 files".
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(local(format!("{}: not a directory", dir.display()))),
        Err(e) => return Err(local(format!("{}: {e}", dir.display()))),
    }
    let cat = CatalogHandle::open(&dir, CatalogOptions::default()).map_err(local)?;
    let r = cat.last_report();
    if a.json {
        out!(
            "{}",
            serde_json::json!({
                "files": r.files, "hashed": r.hashed, "reused": r.reused,
                "skipped": r.skipped, "seconds": r.elapsed.as_secs_f64()
            })
        );
    } else {
        out!(
            "{} files: {} hashed, {} from the index, {} skipped, {:.3} s",
            r.files,
            r.hashed,
            r.reused,
            r.skipped,
            r.elapsed.as_secs_f64()
        );
    }
    Ok(EXIT_OK)
}

pub(crate) fn certs(a: CertsArgs) -> Result<u8, Failure> {
    transport::write_test_certs(&a.out)
        .map(|_| {
            eprintln!("wrote a test CA and certificate into {}", a.out.display());
            EXIT_OK
        })
        .map_err(local)
}
