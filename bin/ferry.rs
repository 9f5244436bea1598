//! The `ferry` command line: argument structs (argh), their translation into library
//! configuration, and the one place outcomes become exit codes.
//!
//! Exit codes (also in the README):
//! - 0: done;
//! - 1: nothing to do, or partial (something asked for is missing or failed verification);
//! - 2: usage or local error (bad flags, unreadable folder or certificate, cannot bind);
//! - 3: network error (connect, TLS handshake, connection lost);
//! - 4: the peer refused or broke the protocol (an error frame, bad framing);
//! - 130: interrupted by Ctrl-C (or SIGTERM) before the work was done; a client's
//!   temporaries are removed first (a second Ctrl-C exits at once; the next run cleans up).
//! - 141: the reader of stdout went away (as death by SIGPIPE reports it).

#[macro_use]
mod cli;

use std::process::ExitCode;

use argh::FromArgs;

use cli::cjp2p::Cjp2pArgs;
use cli::fastdp::FastdpArgs;
use cli::filestorage::FilestorageArgs;
use cli::folder::{CertsArgs, IndexArgs};
use cli::jtp::JtpArgs;
use cli::serve::ServeArgs;
use cli::sync::SyncArgs;
use cli::tej::TejArgs;
use cli::{EXIT_LOCAL, EXIT_OK};

#[derive(FromArgs)]
/// ferry: fast, safe file transfer (JTP, TEJ, CJP2P, FastDP, filestorage) over one shared
/// catalog. `ferry --version` prints the version.
struct Cli {
    #[argh(subcommand)]
    cmd: Cmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Serve(ServeArgs),
    Jtp(JtpArgs),
    Tej(TejArgs),
    Cjp2p(Cjp2pArgs),
    Fastdp(FastdpArgs),
    Filestorage(FilestorageArgs),
    Sync(SyncArgs),
    Index(IndexArgs),
    Certs(CertsArgs),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    // argh has no version flag: `ferry --version` (or `-V`) alone, for bug reports and scripts.
    if matches!(strs.get(1..), Some(["--version"] | ["-V"])) {
        out!("ferry {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::from(EXIT_OK);
    }
    let cli = match Cli::from_args(&strs[..1], &strs[1..]) {
        Ok(c) => c,
        Err(early) => {
            return if early.status.is_ok() {
                out!("{}", early.output);
                ExitCode::from(EXIT_OK)
            } else {
                eprintln!("{}", early.output);
                eprintln!("Run ferry --help for usage.");
                ExitCode::from(EXIT_LOCAL)
            };
        }
    };
    let r = match cli.cmd {
        Cmd::Serve(a) => cli::serve::run(a),
        Cmd::Jtp(a) => cli::jtp::run(a),
        Cmd::Tej(a) => cli::tej::run(a),
        Cmd::Cjp2p(a) => cli::cjp2p::run(a),
        Cmd::Fastdp(a) => cli::fastdp::run(a),
        Cmd::Filestorage(a) => cli::filestorage::run(a),
        Cmd::Sync(a) => cli::sync::run(a),
        Cmd::Index(a) => cli::folder::index(a),
        Cmd::Certs(a) => cli::folder::certs(a),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            // A message may quote a peer (an error frame's text): never let it drive the
            // terminal or forge a line.
            let message = if f.message.chars().any(char::is_control) {
                ferry::names::printable(&f.message)
            } else {
                f.message.as_str().into()
            };
            eprintln!("ferry: {message}");
            ExitCode::from(f.code)
        }
    }
}
