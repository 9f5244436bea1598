//! `ferry sync SOURCE DIR`: the command line over [`ferry::driver::sync`]: flags, the progress
//! line (on a terminal only), the summary, and the exit code.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;

use ferry::driver::progress::Progress;
use ferry::driver::sync::{self, Action, Connect, Report, Source, SyncError, SyncOptions};

use super::*;

#[derive(FromArgs)]
/// Make DIR hold exactly the files SOURCE lists: fetch what is missing or changed (verified
/// before it appears), rename locally what was renamed, with --delete remove what is gone.
#[argh(subcommand, name = "sync")]
pub(crate) struct SyncArgs {
    /// tej://host[:port] (default port 8000) or jtp://host[:port] (images; default port 8443)
    #[argh(positional)]
    source: String,
    /// the local folder (created if missing)
    #[argh(positional)]
    dir: PathBuf,
    /// remove local files the source no longer lists (regular files directly in DIR only;
    /// never dot-files or .ferry/)
    #[argh(switch)]
    delete: bool,
    /// print what would change, change nothing
    #[argh(switch, short = 'n')]
    dry_run: bool,
    /// print one JSON summary on stdout
    #[argh(switch)]
    json: bool,
    /// further attempts of a batch after a failure, with a growing pause (default 3)
    #[argh(option, default = "3")]
    retries: u32,
    /// connections used at once (default 2)
    #[argh(option, default = "2")]
    parallel: usize,
    /// TLS (the default for jtp://)
    #[argh(switch)]
    tls: bool,
    /// plain TCP (the default for tej://)
    #[argh(switch)]
    no_tls: bool,
    /// trust anchors (PEM) for the source's certificate
    #[argh(option)]
    cert: Option<PathBuf>,
    /// TLS name to verify (default: the source's host)
    #[argh(option)]
    server_name: Option<String>,
    /// seconds without progress before a connection counts as broken (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// fsync every placed file and DIR before exiting
    #[argh(switch)]
    fsync: bool,
    /// more detail on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
}

pub(crate) fn run(a: SyncArgs) -> Result<u8, Failure> {
    let json = a.json;
    let r = sync_once(a);
    // A script reading --json gets one JSON document whatever happened, a run that could not
    // be done too (the message also goes to stderr, as for every command).
    if let (true, Err(f)) = (json, &r) {
        out!(
            "{}",
            serde_json::json!({"error": f.message, "exit": f.code})
        );
    }
    r
}

fn sync_once(a: SyncArgs) -> Result<u8, Failure> {
    let source = Source::parse(&a.source).map_err(failure)?;
    if a.tls && a.no_tls {
        return Err(local("--tls and --no-tls exclude each other"));
    }
    let opts = SyncOptions {
        source,
        dir: a.dir.clone(),
        connect: Connect {
            tls: if a.tls {
                Some(true)
            } else if a.no_tls {
                Some(false)
            } else {
                None
            },
            cert: a.cert,
            server_name: a.server_name,
            io_timeout: Duration::from_secs(a.io_timeout.max(1)),
            parallel: a.parallel.max(1),
            verbose: a.verbose,
        },
        delete: a.delete,
        dry_run: a.dry_run,
        retries: a.retries,
        fsync: a.fsync,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let s = stop.clone();
        // First Ctrl-C: finish the batches in flight and place what arrived; second: now.
        let _ = ctrlc::set_handler(move || {
            if s.swap(true, Ordering::SeqCst) {
                std::process::exit(EXIT_INTERRUPTED as i32);
            }
        });
    }
    let progress = Arc::new(Progress::new());
    let drawer = progress::Drawer::start(progress.clone(), progress::Unit::Files, a.json);
    let r = sync::run(&opts, &progress, &stop);
    drawer.finish();
    let report = r.map_err(failure)?;
    print_report(&report, &a.dir, a.json);
    Ok(if report.interrupted {
        EXIT_INTERRUPTED
    } else if report.is_complete() {
        EXIT_OK
    } else {
        EXIT_PARTIAL
    })
}

/// Exit codes of a run that could not be done (README, "Exit codes").
fn failure(e: SyncError) -> Failure {
    let code = match &e {
        SyncError::Usage(_) | SyncError::Local(_) => EXIT_LOCAL,
        // DIR is not known to match, and nothing was wrong with the command: partial.
        SyncError::Busy { .. } => EXIT_PARTIAL,
        SyncError::Network(_) => EXIT_NETWORK,
        SyncError::Protocol(_) => EXIT_PROTOCOL,
    };
    Failure {
        code,
        message: e.to_string(),
    }
}

fn print_report(r: &Report, dir: &std::path::Path, json: bool) {
    if json {
        out!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    if r.dry_run {
        for a in &r.actions {
            match a {
                Action::Fetch { name, size } => out!("fetch   {name}  ({size} bytes)"),
                Action::Move { from, name } => out!("move    {from} -> {name}"),
                Action::Link { from, name } => out!("link    {from} -> {name}"),
                Action::Delete { name } => out!("delete  {name}"),
            }
        }
    }
    for f in &r.failures {
        eprintln!("sync: {}: {}", f.name, f.error);
    }
    eprintln!(
        "sync: {}{}: {} fetched ({:.1} MB), {} moved, {} linked, {} deleted, {} unchanged, {} failed in {:.2} s{}",
        dir.display(),
        if r.dry_run { " (dry run)" } else { "" },
        r.fetched,
        r.bytes as f64 / 1e6,
        r.moved,
        r.linked,
        r.deleted,
        r.unchanged,
        r.failed,
        r.seconds,
        if r.interrupted {
            "; interrupted (the next run continues)"
        } else {
            ""
        }
    );
}
