//! Replays every saved fuzz input through the same target functions libFuzzer runs
//! (`ferry::fuzzing`), on the stable toolchain: the corpus (`fuzz/corpus/<target>/`) and every
//! crash reproducer kept (`fuzz/regressions/<target>/`). One test per target; a failure names
//! the file. `make fuzz` finds new inputs; this keeps them passing.

use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: ferry::fuzzing::CountingAlloc = ferry::fuzzing::CountingAlloc;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted (none when it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn replay(target: &str) {
    assert!(
        ferry::fuzzing::is_counting(),
        "the counting allocator is not installed: memory bounds would not be checked"
    );
    let &(_, run) = ferry::fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("{target} is not in ferry::fuzzing::TARGETS"));
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is empty or missing: every target keeps a seed corpus"
    );
    let regressions = files(&fuzz_dir().join("regressions").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} saved inputs fail:\n{}",
        failed.len(),
        corpus.len() + regressions.len(),
        failed.join("\n")
    );
}

macro_rules! replay_tests {
    ($($t:ident)*) => {
        $(#[test]
        fn $t() {
            replay(stringify!($t));
        })*

        /// Every target has a test here, a `fuzz/fuzz_targets/<target>.rs` and nothing more.
        #[test]
        fn every_target_is_replayed_and_built() {
            let mut here = vec![$(stringify!($t)),*];
            here.sort_unstable();
            let mut listed: Vec<&str> = ferry::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
            listed.sort_unstable();
            assert_eq!(here, listed, "replay tests and ferry::fuzzing::TARGETS differ");
            let mut built: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
                .iter()
                .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
                .collect();
            built.sort_unstable();
            assert_eq!(built, listed, "fuzz/fuzz_targets and ferry::fuzzing::TARGETS differ");
        }
    };
}

replay_tests! {
    jtp_request
    jtp_response
    jtp_server_machine
    tej_frame
    wire_frame
    cjp2p_datagram
    fastdp_http_head
    fastdp_jmsg
    fastdp_chunk_stream
    fastdp_zstd_chunk
    fastdp_v110_decoders
    fastdp_server_machine
    fastdp_push_client_machine
    fastdp_pull_client_machine
    filestorage_frame
    filestorage_json
    filestorage_token
    filestorage_server_machine
    filestorage_client_machines
    jtp_client_machine
    tej_server_machine
    tej_client_machines
    cjp2p_node_machine
    cjp2p_download_machine
    catalog_index
}
