//! What a user of the command line sees, across protocols (issue 12): `--help` and the README
//! agree on every flag of every command; errors say their cause and get the documented exit
//! code; `serve --json` reports in JSON; `-v` logs JTP connections; one shape of
//! `--watch-interval`; empty listings say so; reruns clean what killed runs left.
//!
//! Protocol-specific client behaviour (hostile servers, Ctrl-C mid-transfer) is tested in
//! `jtp_client.rs` and `tej.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::{ferry, Server, TempDir};

const T: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// `--help` and the README's flag tables.

/// The text of `ferry ARGS... --help`.
fn help(args: &[&str]) -> String {
    let mut a = args.to_vec();
    a.push("--help");
    let o = ferry(&a, T);
    assert!(o.status.success(), "ferry {a:?}: {}", err(&o));
    out(&o)
}

/// The lines of the `title:` section of a help text (up to the next blank line).
fn help_section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

/// Every command that takes flags (`["jtp", "get"]`, `["serve"]`, ...), found by walking the
/// `Commands:` sections of `--help` from `ferry --help` down: commands added later are covered
/// without touching this test.
fn leaf_commands() -> Vec<Vec<String>> {
    let mut leaves = Vec::new();
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        let subs: Vec<String> = help_section(&text, "Commands:")
            .iter()
            // A command line is indented by two spaces; its description's continuation more.
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        if subs.is_empty() {
            leaves.push(path);
        } else {
            for sub in subs {
                let mut p = path.clone();
                p.push(sub);
                todo.push(p);
            }
        }
    }
    leaves.sort();
    leaves
}

/// The flags `--help` lists for a command (`--help` itself left out), short and long forms.
fn help_flags(cmd: &[String]) -> BTreeSet<String> {
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let text = help(&args);
    let mut flags = BTreeSet::new();
    for line in help_section(&text, "Options:") {
        if !line.starts_with("  -") {
            continue;
        }
        // `  -v, --verbose     log ...`, `  --max-connections most ...`
        for tok in line.split_whitespace() {
            let tok = tok.trim_end_matches(',');
            if !tok.starts_with('-') {
                break;
            }
            if tok != "--help" {
                flags.insert(tok.to_owned());
            }
        }
    }
    flags
}

/// The flags of the README's flag tables (tables whose first header cell starts with "flag"),
/// per command of the `###` section they sit in. A heading names its commands in code spans
/// (`` `ferry jtp get --addr ...` ``); a table applies to every command its heading names.
fn readme_flags(readme: &str, known: &[Vec<String>]) -> BTreeMap<Vec<String>, BTreeSet<String>> {
    let mut tables: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    let mut current: Vec<Vec<String>> = Vec::new();
    let mut in_flag_table = false;
    for line in readme.lines() {
        if line.starts_with('#') {
            current = if line.starts_with("### ") {
                heading_commands(line, known)
            } else {
                Vec::new()
            };
            in_flag_table = false;
            continue;
        }
        if !line.starts_with('|') {
            in_flag_table = false;
            continue;
        }
        let first = line.trim_start_matches('|').split('|').next().unwrap_or("");
        if !in_flag_table {
            // A table's header row decides what it is.
            in_flag_table = first.trim().to_lowercase().starts_with("flag");
            continue;
        }
        if first.trim_start().starts_with("---") {
            continue;
        }
        for span in first.split('`').skip(1).step_by(2) {
            for tok in span.split_whitespace() {
                let tok = tok.trim_end_matches([',', ')']);
                if tok.starts_with('-') && tok.len() > 1 {
                    for cmd in &current {
                        tables
                            .entry(cmd.clone())
                            .or_default()
                            .insert(tok.to_owned());
                    }
                }
            }
        }
    }
    tables
}

/// The commands a `###` heading names: in each code span starting `ferry `, the longest run of
/// words that is a known command.
fn heading_commands(line: &str, known: &[Vec<String>]) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    for span in line.split('`').skip(1).step_by(2) {
        let Some(rest) = span.strip_prefix("ferry ") else {
            continue;
        };
        let words: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
        for n in (1..=words.len()).rev() {
            if known.iter().any(|k| k[..] == words[..n]) {
                cmds.push(words[..n].to_vec());
                break;
            }
        }
    }
    cmds
}

/// Issue 12: the README and `--help` disagreed (`jtp list` had no `--secure`, `jtp get --output`
/// was undocumented). Every flag `--help` prints for a command is in the README's flag table
/// for it, and every flag there is one `--help` prints; aliases are flags like any other.
#[test]
fn help_and_readme_list_the_same_flags_for_every_command() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let commands = leaf_commands();
    for must in [
        &["jtp", "get"][..],
        &["tej", "send"],
        &["serve"],
        &["certs"],
    ] {
        assert!(
            commands.iter().any(|c| c[..] == *must),
            "{must:?} not found in {commands:?}"
        );
    }
    let tables = readme_flags(&readme, &commands);
    let mut problems = Vec::new();
    for cmd in &commands {
        let name = format!("ferry {}", cmd.join(" "));
        let help = help_flags(cmd);
        let Some(doc) = tables.get(cmd) else {
            problems.push(format!(
                "{name}: no README flag table (a `### \\`{name} ...\\`` section with a \
                 `| flag ... |` table); --help lists {help:?}"
            ));
            continue;
        };
        let undocumented: Vec<_> = help.difference(doc).collect();
        let unknown: Vec<_> = doc.difference(&help).collect();
        if !undocumented.is_empty() {
            problems.push(format!(
                "{name}: in --help, not in the README: {undocumented:?}"
            ));
        }
        if !unknown.is_empty() {
            problems.push(format!("{name}: in the README, not in --help: {unknown:?}"));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_flag_parsers_read_argh_help_and_readme_tables() {
    let known = vec![
        vec!["jtp".to_string(), "get".to_string()],
        vec!["tej".to_string(), "get".to_string()],
        vec!["tej".to_string(), "list".to_string()],
    ];
    let readme = "\
### `ferry jtp get --addr HOST:PORT [ID...]`

| flag (aliases) | default | meaning |
|---|---|---|
| `--tls` (`--secure`), `--no-tls` (`--plain`) | TLS | with `--cert` |
| `-p N`, `--parallel N` | 1 | |

| code | meaning |
|---|---|
| `--not-a-flag-table` | |

### `ferry tej get ...` and `ferry tej list ...`

| flag | default |
|---|---|
| `--cert PEM --key PEM` | |
";
    let t = readme_flags(readme, &known);
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        t[&known[0]],
        set(&[
            "--tls",
            "--secure",
            "--no-tls",
            "--plain",
            "-p",
            "--parallel"
        ])
    );
    assert_eq!(t[&known[1]], set(&["--cert", "--key"]));
    assert_eq!(t[&known[2]], set(&["--cert", "--key"]));
}

// ---------------------------------------------------------------------------------------------
// Errors that hide their cause.

/// A served folder with one small file.
/// `ferry tej serve ARGS...`, ready (its listening line read).
fn serve_tej(args: &[&str]) -> Server {
    let mut all = vec!["tej", "serve"];
    all.extend_from_slice(args);
    Server::start(&all, 1)
}

/// `ferry jtp serve ARGS...`, ready.
fn serve_jtp(args: &[&str]) -> Server {
    let mut all = vec!["jtp", "serve"];
    all.extend_from_slice(args);
    Server::start(&all, 1)
}

fn share_with_a_file() -> TempDir {
    let d = TempDir::new("cli-share");
    std::fs::write(d.join("hello.png"), b"\x89PNG not really").unwrap();
    d
}

/// Issue 12: an unreadable or garbage `--cert` file exited 3 (network) though nothing touched
/// the network. It is a local error: exit 2, naming the file.
#[test]
fn a_certificate_file_that_cannot_be_used_is_a_local_error_exit_2() {
    let d = TempDir::new("cli-badcert");
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let missing = d.join("missing.pem");
    let outdir = d.join("out");
    for cert in [&garbage, &missing] {
        let runs: Vec<Vec<&str>> = vec![
            vec!["jtp", "list", "--addr", "127.0.0.1:9", "--cert", s(cert)],
            vec!["jtp", "get", "--addr", "127.0.0.1:9", "--cert", s(cert)],
            vec![
                "tej",
                "list",
                "--addr",
                "127.0.0.1:9",
                "--tls",
                "--cert",
                s(cert),
            ],
            vec![
                "tej",
                "get",
                "--addr",
                "127.0.0.1:9",
                "--tls",
                "--cert",
                s(cert),
                "x",
            ],
            vec![
                "tej",
                "send",
                "--addr",
                "127.0.0.1:9",
                "--tls",
                "--cert",
                s(cert),
            ],
        ];
        for mut args in runs {
            if args[1] == "get" {
                args.extend(["--out", s(&outdir)]);
            }
            let o = ferry(&args, T);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
            assert!(err(&o).contains(s(cert)), "{args:?}: {}", err(&o));
        }
    }
}

/// A folder flag naming a file said "File exists (os error 17)", which reads as if all were
/// well: every server's root and every client's output folder now say "not a directory", exit 2.
#[test]
fn a_folder_flag_naming_a_file_says_not_a_directory_exit_2() {
    let d = TempDir::new("cli-notdir");
    let file = d.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let f = s(&file);
    let runs: Vec<Vec<&str>> = vec![
        vec!["tej", "serve", "--bind", "127.0.0.1:0", "--root", f],
        vec!["fastdp", "serve", "--bind", "127.0.0.1:0", "--root", f],
        vec!["fastdp", "get", "--addr", "127.0.0.1:9", "--out", f, "x"],
        vec!["tej", "get", "--addr", "127.0.0.1:9", "--out", f, "x"],
        vec!["jtp", "get", "--addr", "127.0.0.1:9", "--out", f],
    ];
    for args in runs {
        let o = ferry(&args, T);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
        assert!(err(&o).contains("not a directory"), "{args:?}: {}", err(&o));
        assert!(err(&o).contains(f), "{args:?}: {}", err(&o));
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"x",
        "the file is left alone"
    );
}

/// A FIFO named as the file to send hung `tej send` and `fastdp send` (with or without
/// `--v1`) in open(2) until a writer came: every sender now refuses anything but a regular
/// file at once, exit 2, before touching the network.
#[test]
fn a_fifo_to_send_is_refused_at_once_not_waited_on() {
    let d = TempDir::new("cli-fifo");
    let fifo = d.join("pipe");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let f = s(&fifo);
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJsb2dpbiI6InUifQ.c2ln";
    let runs: Vec<Vec<&str>> = vec![
        vec!["tej", "send", "--addr", "127.0.0.1:9", f],
        vec!["fastdp", "send", "--addr", "127.0.0.1:9", f],
        vec!["fastdp", "send", "--v1", "--addr", "127.0.0.1:9", f],
        vec![
            "filestorage",
            "put",
            "--addr",
            "127.0.0.1:9",
            "--token",
            token,
            f,
        ],
    ];
    for args in runs {
        let started = Instant::now();
        let o = ferry(&args, T);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
        assert!(
            err(&o).contains("not a regular file"),
            "{args:?}: {}",
            err(&o)
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} waited"
        );
    }
}

/// `fastdp send`, `fastdp get` and `filestorage put`/`query`/`fetch` had no Ctrl-C handling:
/// SIGTERM killed them (status 143, nothing said) where the README promises exit 130 for
/// Ctrl-C or SIGTERM. Each, waiting on a server that accepted and says nothing, now exits 130
/// at once, saying so.
#[test]
fn fastdp_and_filestorage_clients_exit_130_on_sigterm() {
    use std::io::Read;
    use std::net::TcpListener;
    use std::process::{Command, Stdio};
    let d = TempDir::new("cli-sigterm");
    let file = d.join("x.bin");
    std::fs::write(&file, b"hello").unwrap();
    let out = d.join("out");
    // Accepts and holds every connection, answering nothing.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming() {
            let Ok(c) = c else { break };
            held.push(c);
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJsb2dpbiI6InUifQ.c2ln";
    let id = "01234567-89ab-4def-8123-456789abcdef";
    let runs: Vec<(&str, Vec<&str>)> = vec![
        (
            "fastdp send",
            vec!["fastdp", "send", "--addr", &addr, s(&file)],
        ),
        (
            "fastdp get",
            vec!["fastdp", "get", "--addr", &addr, "--out", s(&out), "x.bin"],
        ),
        (
            "filestorage put",
            vec![
                "filestorage",
                "put",
                "--addr",
                &addr,
                "--token",
                token,
                s(&file),
            ],
        ),
        (
            "filestorage query",
            vec!["filestorage", "query", "--addr", &addr, "--token", token],
        ),
        (
            "filestorage fetch",
            vec![
                "filestorage",
                "fetch",
                "--addr",
                &addr,
                "--token",
                token,
                "--out",
                s(&out),
                id,
            ],
        ),
    ];
    for (what, args) in runs {
        let mut child = Command::new(crate::harness::FERRY)
            .args(&args)
            .env("XDG_CACHE_HOME", d.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Connected: the command now waits for an answer that never comes.
        if rx.recv_timeout(T).is_err() {
            let _ = child.kill();
            panic!("{what}: never connected");
        }
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("{what}: still running 10 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        assert_eq!(st.code(), Some(130), "{what}: {err}");
        assert!(
            err.contains(&format!("{what}: interrupted")),
            "{what}: {err}"
        );
    }
}

/// `ferry --version` and `-V` print the crate's version, exit 0.
#[test]
fn version_flag_prints_the_version() {
    for flag in ["--version", "-V"] {
        let o = ferry(&[flag], T);
        assert!(o.status.success(), "{flag}: {}", err(&o));
        assert_eq!(
            out(&o),
            format!("ferry {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}

/// `ferry index` of a mistyped path created the folder and reported "0 files", exit 0: it is
/// now exit 2 naming the path, and nothing is created.
#[test]
fn index_of_a_missing_folder_is_an_error_and_creates_nothing() {
    let d = TempDir::new("cli-index-missing");
    let missing = d.join("no-such-folder");
    let o = ferry(&["index", s(&missing)], T);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains(s(&missing)), "{}", err(&o));
    assert!(!missing.exists(), "the folder was created");
}

/// `ferry ... --help | head -1` (or any output into a reader that went away) panicked with
/// "failed printing to stdout: Broken pipe" and a backtrace: output now ends quietly with the
/// status death by SIGPIPE gives (141), nothing on stderr. Listings too (`tej list` and `jtp
/// list` ignored the error and exited 0, as if the whole listing had been read).
#[test]
fn output_into_a_closed_pipe_ends_quietly_with_141() {
    use std::os::fd::FromRawFd;
    use std::process::{Command, Stdio};
    let d = TempDir::new("cli-epipe");
    std::fs::write(d.join("a.bin"), b"a").unwrap();
    let share = share_with_a_file();
    let tej = serve_tej(&["--root", s(share.path()), "--bind", "127.0.0.1:0"]);
    let jtp = serve_jtp(&[
        "--images",
        s(share.path()),
        "--bind",
        "127.0.0.1:0",
        "--no-tls",
    ]);
    let (tej_addr, jtp_addr) = (tej.addr("tej"), jtp.addr("jtp"));
    let cases: Vec<Vec<&str>> = vec![
        vec!["filestorage", "fetch", "--help"],
        vec!["index", s(d.path()), "--json"],
        vec!["tej", "list", "--addr", &tej_addr],
        vec!["tej", "list", "--addr", &tej_addr, "--json"],
        vec!["jtp", "list", "--no-tls", "--addr", &jtp_addr],
    ];
    for args in cases {
        let mut fds = [0i32; 2];
        // SAFETY: pipe(2) fills two descriptors we then own; the read end is closed at once,
        // so the first write to the other fails with EPIPE.
        let w = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            libc::close(fds[0]);
            std::fs::File::from_raw_fd(fds[1])
        };
        let o = Command::new(crate::harness::FERRY)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(141), "{args:?}: {}", err(&o));
        assert!(!err(&o).contains("panicked"), "{args:?}: {}", err(&o));
    }
}

/// Issue 12: a plain client against a TLS server said "unknown magic 15030300". It says the
/// server speaks TLS and which flag to change.
#[test]
fn a_plain_client_meeting_a_tls_server_is_told_so() {
    let share = share_with_a_file();
    let jtp = serve_jtp(&["--images", s(share.path()), "--bind", "127.0.0.1:0"]);
    let o = ferry(&["jtp", "list", "--no-tls", "--addr", &jtp.addr("jtp")], T);
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    assert!(
        err(&o).contains("the server speaks TLS: drop --no-tls"),
        "{}",
        err(&o)
    );
    assert!(!err(&o).contains("magic"), "{}", err(&o));

    let share = share_with_a_file();
    let tej = serve_tej(&["--root", s(share.path()), "--bind", "127.0.0.1:0", "--tls"]);
    let o = ferry(&["tej", "list", "--addr", &tej.addr("tej")], T);
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    assert!(
        err(&o).contains("the server speaks TLS: add --tls"),
        "{}",
        err(&o)
    );
}

/// Issue 12: a TLS client meeting `ferry serve`'s generated (self-signed) certificate got only
/// "invalid peer certificate: UnknownIssuer". It is told to pass `--cert`, and where ferry
/// keeps that certificate; with it, the same command works.
#[test]
fn an_unknown_issuer_is_told_to_pass_cert() {
    let share = share_with_a_file();
    let jtp = serve_jtp(&["--images", s(share.path()), "--bind", "127.0.0.1:0"]);
    let addr = jtp.addr("jtp");
    let o = ferry(&["jtp", "list", "--addr", &addr], T);
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert!(err(&o).contains("pass --cert"), "{}", err(&o));
    assert!(err(&o).contains("DIR/.ferry/tls/cert.pem"), "{}", err(&o));
    let cert = share.join(".ferry/tls/cert.pem");
    let o = ferry(
        &[
            "jtp",
            "list",
            "--addr",
            &addr,
            "--cert",
            s(&cert),
            "--server-name",
            "localhost",
        ],
        T,
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));

    let share = share_with_a_file();
    let tej = serve_tej(&["--root", s(share.path()), "--bind", "127.0.0.1:0", "--tls"]);
    let o = ferry(&["tej", "list", "--tls", "--addr", &tej.addr("tej")], T);
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert!(err(&o).contains("pass --cert"), "{}", err(&o));
}

/// Issue 12: `tej send` of a folder failed with "Is a directory" and exit 3, and `--status
/// 1..6` exited 0 with nothing stored. Both are usage errors (exit 2) before any connection.
#[test]
fn tej_send_of_a_folder_or_with_a_reserved_status_is_a_usage_error() {
    let d = TempDir::new("cli-senddir");
    let f = d.join("a.txt");
    std::fs::write(&f, b"a").unwrap();
    // Port 9 (discard) is never reached: the checks come first.
    let o = ferry(&["tej", "send", "--addr", "127.0.0.1:9", s(d.path())], T);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("not a regular file"), "{}", err(&o));
    for status in ["1", "2", "3", "4", "5", "6"] {
        let o = ferry(
            &[
                "tej",
                "send",
                "--addr",
                "127.0.0.1:9",
                "--status",
                status,
                s(&f),
            ],
            T,
        );
        assert_eq!(o.status.code(), Some(2), "--status {status}: {}", err(&o));
        assert!(err(&o).contains("7..127"), "{}", err(&o));
    }
}

// ---------------------------------------------------------------------------------------------
// Small lies.

/// Issue 12: `tej send` printed only "confirmed". It says where each file was stored.
#[test]
fn tej_send_says_where_each_file_was_stored() {
    let share = TempDir::new("cli-stored");
    std::fs::write(share.join("hello.txt"), b"already here").unwrap();
    let src = TempDir::new("cli-storedsrc");
    std::fs::write(src.join("hello.txt"), b"hello").unwrap();
    let tej = serve_tej(&["--root", s(share.path()), "--bind", "127.0.0.1:0"]);
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &tej.addr("tej"),
            s(&src.join("hello.txt")),
        ],
        T,
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        err(&o).contains("tej: hello.txt -> hello-1.txt"),
        "{}",
        err(&o)
    );
}

/// Issue 12: an empty catalog made `jtp list` and `tej list` exit 1 without a word.
#[test]
fn an_empty_listing_says_no_files() {
    let empty = TempDir::new("cli-empty");
    let srv = Server::start(
        &[
            "serve",
            s(empty.path()),
            "--no-tls",
            "--jtp-bind",
            "127.0.0.1:0",
            "--tej-bind",
            "127.0.0.1:0",
            "--cjp2p-bind",
            "127.0.0.1:0",
        ],
        3,
    );
    let o = ferry(&["jtp", "list", "--no-tls", "--addr", &srv.addr("jtp")], T);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("no files"), "{}", err(&o));
    assert!(out(&o).is_empty());
    let o = ferry(&["tej", "list", "--addr", &srv.addr("tej")], T);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("no files"), "{}", err(&o));
}

/// Issue 12: `jtp list` printed the type as a number and had no `--secure`.
#[test]
fn jtp_list_prints_type_words_and_takes_secure() {
    let share = TempDir::new("cli-types");
    for (name, data) in [
        ("a.png", &b"png"[..]),
        ("b.jpg", b"jpeg"),
        ("c.webp", b"webp"),
        ("d.bmp", b"bmp"),
        ("e.gif", b"gif"),
    ] {
        std::fs::write(share.join(name), data).unwrap();
    }
    let jtp = serve_jtp(&["--images", s(share.path()), "--bind", "127.0.0.1:0"]);
    let cert = share.join(".ferry/tls/cert.pem");
    let o = ferry(
        &[
            "jtp",
            "list",
            "--secure",
            "--addr",
            &jtp.addr("jtp"),
            "--cert",
            s(&cert),
            "--server-name",
            "localhost",
        ],
        T,
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let mut types: Vec<(String, String)> = out(&o)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[3].to_owned(), f[1].to_owned())
        })
        .collect();
    types.sort();
    let want: Vec<(String, String)> = [
        ("a.png", "png"),
        ("b.jpg", "jpeg"),
        ("c.webp", "webp"),
        ("d.bmp", "bmp"),
        ("e.gif", "gif"),
    ]
    .iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();
    assert_eq!(types, want);
}

/// Issue 12: `serve --json` kept the catalog report and the TLS fingerprint as text. They are
/// JSON objects on stderr; stdout carries only the listening objects.
#[test]
fn serve_json_prints_the_startup_report_as_json() {
    let share = share_with_a_file();
    let srv = Server::start(
        &[
            "jtp",
            "serve",
            "--images",
            s(share.path()),
            "--bind",
            "127.0.0.1:0",
            "--json",
        ],
        0,
    );
    // The harness waits for text listening lines; with --json stdout holds a JSON object
    // instead, and the report comes on stderr.
    let deadline = Instant::now() + T;
    let lines = loop {
        let text = srv.stderr_text();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let objs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let catalog = objs
        .iter()
        .find(|o| o["event"] == "catalog")
        .expect("catalog");
    assert_eq!(catalog["files"], 1);
    assert_eq!(catalog["follow"], "live");
    let tls = objs.iter().find(|o| o["event"] == "tls").expect("tls");
    assert_eq!(tls["generated"], true);
    assert_eq!(tls["sha256"].as_str().unwrap().len(), 95);
    assert!(tls["cert"]
        .as_str()
        .unwrap()
        .ends_with(".ferry/tls/cert.pem"));
}

/// Issue 12: `ferry serve --watch SECS` took a number while `ferry jtp serve --watch` is a
/// switch. `--watch-interval SECS` works on every folder server (`--watch SECS` stays an alias
/// where it was a number), and a rescan at that interval finds a file inotify never saw.
#[test]
fn watch_interval_is_one_shape_on_every_server() {
    let share = TempDir::new("cli-watch");
    let runs: Vec<(Vec<&str>, usize)> = vec![
        (
            vec![
                "serve",
                "--watch-interval",
                "1",
                "--no-tls",
                "--jtp-bind",
                "127.0.0.1:0",
                "--tej-bind",
                "127.0.0.1:0",
                "--cjp2p-bind",
                "127.0.0.1:0",
            ],
            3,
        ),
        (
            vec![
                "jtp",
                "serve",
                "--watch-interval",
                "1",
                "--bind",
                "127.0.0.1:0",
            ],
            1,
        ),
        (vec!["jtp", "serve", "--watch", "--bind", "127.0.0.1:0"], 1),
        (
            vec![
                "tej",
                "serve",
                "--watch-interval",
                "1",
                "--bind",
                "127.0.0.1:0",
            ],
            1,
        ),
        (
            vec!["tej", "serve", "--watch", "1", "--bind", "127.0.0.1:0"],
            1,
        ),
        (
            vec![
                "cjp2p",
                "node",
                "--watch-interval",
                "1",
                "--bind",
                "127.0.0.1:0",
            ],
            1,
        ),
    ];
    for (mut args, n) in runs {
        match args[0] {
            "serve" => args.insert(1, s(share.path())),
            "jtp" => args.extend(["--images", s(share.path())]),
            _ => args.extend(["--root", s(share.path())]),
        }
        let srv = Server::start(&args, n);
        assert_eq!(srv.listening.len(), n, "{args:?}");
    }
    // Not followed live: only the rescan every second can find the new file.
    let tej = serve_tej(&[
        "--root",
        s(share.path()),
        "--bind",
        "127.0.0.1:0",
        "--no-follow",
        "--watch-interval",
        "1",
    ]);
    std::fs::write(share.join("late.txt"), b"late").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = ferry(&["tej", "list", "--addr", &tej.addr("tej")], T);
        if out(&o).contains("late.txt") {
            break;
        }
        assert!(Instant::now() < deadline, "the rescan never found late.txt");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 12: `-v` on JTP logged no connections. It logs each connection, each request with
/// its packets and bytes, and how the connection ended.
#[test]
fn jtp_serve_v_logs_connections_requests_bytes_and_outcome() {
    let share = TempDir::new("cli-jtpv");
    std::fs::write(share.join("a.png"), vec![7u8; 1000]).unwrap();
    std::fs::write(share.join("b.gif"), vec![8u8; 500]).unwrap();
    let srv = serve_jtp(&[
        "--images",
        s(share.path()),
        "--bind",
        "127.0.0.1:0",
        "--no-tls",
        "-v",
    ]);
    let got = TempDir::new("cli-jtpvout");
    let o = ferry(
        &[
            "jtp",
            "get",
            "--no-tls",
            "-k",
            "--addr",
            &srv.addr("jtp"),
            "--out",
            s(got.path()),
        ],
        T,
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = srv.stderr_text();
        if log.contains("closed after") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("jtp: 127.0.0.1:"))
        .collect();
    let has = |what: &str| lines.iter().any(|l| l.contains(what));
    assert!(has(": connected"), "{log}");
    assert!(has(": LIST (2 entries, keep-alive)"), "{log}");
    assert!(
        has(": GET_BY_ID of 2 ids, keep-alive: 2 packets, 1500 bytes"),
        "{log}"
    );
    assert!(
        has(": closed after 2 requests, 2 packets, 1500 bytes of image data"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Interrupts that leave litter: the rerun cleans.

/// Issue 12: temporaries a killed client left were never removed (`IngestDir::clean_stale`
/// had no caller). `jtp get` and `tej get` remove those of processes that no longer run, and
/// leave those of live ones alone.
#[test]
fn a_rerun_removes_the_temporaries_of_dead_runs_only() {
    let share = share_with_a_file();
    let srv = Server::start(
        &[
            "serve",
            s(share.path()),
            "--no-tls",
            "--jtp-bind",
            "127.0.0.1:0",
            "--tej-bind",
            "127.0.0.1:0",
            "--cjp2p-bind",
            "127.0.0.1:0",
        ],
        3,
    );
    let runs: Vec<Vec<String>> = vec![
        vec![
            "jtp".into(),
            "get".into(),
            "--no-tls".into(),
            "--addr".into(),
            srv.addr("jtp"),
        ],
        vec![
            "tej".into(),
            "get".into(),
            "--addr".into(),
            srv.addr("tej"),
            "hello.png".into(),
        ],
    ];
    for run in runs {
        let got = TempDir::new("cli-stale");
        // pid 2147483647 cannot exist; pid 1 always runs.
        let dead = got.join(".ferry-0badc0de-2147483647-7.part");
        let live = got.join(".ferry-0badc0de-1-7.part");
        std::fs::write(&dead, vec![0u8; 4096]).unwrap();
        std::fs::write(&live, b"x").unwrap();
        let mut args: Vec<&str> = run.iter().map(String::as_str).collect();
        args.extend(["--out", s(got.path())]);
        let o = ferry(&args, T);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", err(&o));
        assert!(
            !dead.exists(),
            "{args:?}: the dead run's temporary is still there"
        );
        assert!(
            live.exists(),
            "{args:?}: a live process's temporary was removed"
        );
        assert!(err(&o).contains("removed 1 temporary file"), "{}", err(&o));
        assert!(got.join("hello.png").exists());
    }
}
