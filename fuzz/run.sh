#!/usr/bin/env bash
# Runs every fuzz target (or those named) for FUZZ_SECONDS each (default 60), at most FUZZ_RUNS
# executions each when set, then prints one table: target, executions, coverage (libFuzzer's
# final `cov:` and `ft:`), crashes. Crash inputs land in fuzz/artifacts/<target>/ (git-ignored):
# minimise one with `cargo +nightly fuzz tmin <target> <file>` and keep it under
# fuzz/regressions/<target>/, where `make test` replays it.
#
# New corpus entries go to fuzz/target/corpus/<target>/ (git-ignored), seeded from the committed
# fuzz/corpus/<target>/, so a run never bloats the repository. FUZZ_MERGE=1 (`make fuzz-merge`)
# instead adds to fuzz/corpus/<target>/ only the inputs of a past run that reach new coverage,
# leaving out those over FUZZ_MERGE_MAX_BYTES (default 1024) so that the repository stays small.
#
# FUZZ_BIN=<dir> runs the binaries already built in <dir> (a copy of
# target/x86_64-unknown-linux-gnu/release) without building: a long run then goes on unaffected
# while the tree is edited and rebuilt.
set -uo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-60}
runs=${FUZZ_RUNS:--1}
nice=${FUZZ_NICE:-0}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz and the nightly toolchain are needed:" >&2
    echo "      rustup toolchain install nightly && cargo install cargo-fuzz" >&2
    exit 2
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# Release build with debug assertions and overflow checks (cargo-fuzz's default), AddressSanitizer.
mkdir -p target/logs
bin=${FUZZ_BIN:-}
if [ -z "$bin" ]; then
    nice -n "$nice" cargo +nightly fuzz build >target/logs/build.log 2>&1 \
        || { cat target/logs/build.log >&2; exit 1; }
fi
# Sets `cmd` to the fuzzer of target $1 over the corpus directories $2 and $3, with the
# libFuzzer arguments that follow.
fuzz_cmd() {
    local t=$1 a=$2 b=$3
    shift 3
    if [ -n "$bin" ]; then
        cmd=("$bin/$t" "$@" "$a" "$b")
    else
        cmd=(cargo +nightly fuzz run "$t" "$a" "$b" -- "$@")
    fi
}

if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    for t in "${targets[@]}"; do
        mkdir -p "target/corpus/$t"
        # The greedy set cover keeps few inputs for the same coverage: the corpus stays small.
        fuzz_cmd "$t" "corpus/$t" "target/corpus/$t" -set_cover_merge=1
        "${cmd[@]}" >"target/logs/$t.merge.log" 2>&1 || { tail "target/logs/$t.merge.log" >&2; exit 1; }
        # libFuzzer names the inputs it adds by their SHA-1; seeds and named inputs stay.
        find "corpus/$t" -type f -size +"${FUZZ_MERGE_MAX_BYTES:-1024}"c \
            -regextype posix-extended -regex '.*/[0-9a-f]{40}' -delete
        echo "$t: $(ls "corpus/$t" | wc -l) files, $(du -sh "corpus/$t" | cut -f1)"
    done
    exit 0
fi

rows=()
failed=0
for t in "${targets[@]}"; do
    work=target/corpus/$t
    mkdir -p "$work" "artifacts/$t"
    log=target/logs/$t.log
    # -rss_limit_mb: a decoder that allocates what the peer announces fails here too.
    fuzz_cmd "$t" "$work" "corpus/$t" -max_total_time="$seconds" -runs="$runs" \
        -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/"
    nice -n "$nice" "${cmd[@]}" >"$log" 2>&1
    status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s += $2} END {print s + 0}')
    last=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    crashes=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then failed=1; fi
    rows+=("$(printf '%-30s %12s %8s %8s %8s' "$t" "$execs" "${cov:-?}" "${ft:-?}" "$crashes")")
done

printf '%-30s %12s %8s %8s %8s\n' target executions cov ft crashes
printf '%s\n' "${rows[@]}"
echo "(${seconds} s per target; logs in fuzz/target/logs/, crash inputs in fuzz/artifacts/)"
exit $failed
