#!/usr/bin/env bash
# `make mutants`: mutation testing (cargo-mutants) over the code whose tests must catch a wrong
# byte: the decoders and machines (src/proto, src/wire), names, ingest and catalog. Not part of
# `make test`: it rebuilds the library once per mutant, hours for everything on two cores.
#
#   bash tests/mutants.sh [MODULE...]     (default: every module below; `make mutants
#                                          MUTANTS="wire names"` picks some)
#
# Each module is run alone, niced, one job, with the tests that can see its bugs (the filter
# column): unit tests, which see almost everything here and run in seconds. Results go to
# target/mutants/MODULE/mutants.out (missed.txt lists what no test caught); the last lines
# print caught / missed / unviable / timeout per module and the share caught of the viable
# ones. Mutants judged harmless are excluded in .cargo/mutants.toml, each with its reason.
#
# The tree is copied once per call to target/mutants-src (always the same path, so cargo's
# incremental build of the library carries over from one module and one mutant to the next),
# mutated there in place and restored after each mutant; target/mutants-target holds its build.
set -u
cd "$(dirname "$0")/.."

if ! command -v cargo-mutants >/dev/null 2>&1; then
    echo "mutants: cargo-mutants is missing: cargo install cargo-mutants" >&2
    exit 2
fi

# module | files (globs) | cargo test filters (unit tests of the library)
table='
wire|src/wire/**|wire:: proto::jtp proto::tej
names|src/names.rs|names:: proto::tej ingest::
proto-jtp|src/proto/jtp/**|proto::jtp::
proto-tej|src/proto/tej/**|proto::tej::
proto-cjp2p|src/proto/cjp2p/**|proto::cjp2p::
proto-fastdp|src/proto/fastdp/**|proto::fastdp::
proto-filestorage|src/proto/filestorage/**|proto::filestorage::
ingest|src/ingest/**|ingest::
catalog|src/catalog/**|catalog::
'

all=$(echo "$table" | awk -F'|' 'NF == 3 {print $1}')
modules=${*:-$all}
export CARGO_TARGET_DIR="$PWD/target/mutants-target"
# No debug info: every mutant relinks the test binary, and nothing here needs a debugger.
export CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0
# MUTANTS_SHARD=0/4 tests every fourth mutant of each module (a sample, when time is short).
shard=${MUTANTS_SHARD:+--shard=$MUTANTS_SHARD --sharding=round-robin}
mkdir -p target/mutants
# Tests read the specs from ../shared: the copy's ../shared leads to the real one.
shared="$(cd .. && pwd)/shared"
if [ ! -d "$shared/specs" ]; then
    echo "mutants: $shared/specs is missing (the tests read the specs there)" >&2
    exit 2
fi
ln -sfn "$shared" target/shared
copy="$PWD/target/mutants-src"
# Not -a: a file rsync changes must get a new mtime, or cargo keeps the build of the old one.
rsync -rl --checksum --delete --exclude /target --exclude /.git --exclude /fuzz/target ./ "$copy/"

for m in $modules; do
    row=$(echo "$table" | awk -F'|' -v m="$m" '$1 == m')
    if [ -z "$row" ]; then
        echo "mutants: unknown module $m (one of: $(echo $all))" >&2
        exit 2
    fi
    IFS='|' read -r _ files filters <<<"$row"
    # --in-place is one job by nature (no --jobs): one mutant at a time.
    args=(mutants --dir "$copy" --in-place --no-shuffle --timeout 120
          --build-timeout 900 $shard --cargo-arg=--lib --output "$PWD/target/mutants/$m")
    for f in $files; do args+=(--file "$f"); done
    args+=(--cargo-test-arg=--)
    for t in $filters; do args+=("--cargo-test-arg=$t"); done
    echo "== $m: $files; tests: $filters"
    echo "${MUTANTS_SHARD:-full}" >"target/mutants/$m.shard"
    start=$(date +%s)
    nice -n 19 cargo "${args[@]}" >"target/mutants/$m.log" 2>&1
    rc=$?
    # 0: all caught, 2: some missed, 3: some timed out; anything else means no result.
    case $rc in 0|2|3) ;; *) echo "   cargo mutants failed ($rc): see target/mutants/$m.log" >&2 ;; esac
    echo "   $(( ($(date +%s) - start) / 60 )) min; log target/mutants/$m.log"
done

echo
printf '%-18s %7s %7s %9s %8s %9s\n' module caught missed unviable timeout caught%
for m in $all; do
    d="target/mutants/$m/mutants.out"
    [ -d "$d" ] || { printf '%-18s %s\n' "$m" "not run"; continue; }
    n() { cat "$d/$1.txt" 2>/dev/null | grep -c .; }
    c=$(n caught) mi=$(n missed) u=$(n unviable) t=$(n timeout)
    viable=$((c + mi + t))
    pct=$([ "$viable" -gt 0 ] && echo "$(( (100 * (c + t)) / viable ))" || echo -)
    printf '%-18s %7s %7s %9s %8s %9s\n' "$m" "$c" "$mi" "$u" "$t" "$pct"
done
