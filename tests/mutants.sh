#!/usr/bin/env bash
# `make mutants`: mutation testing (cargo-mutants) over the code whose tests must catch a wrong
# byte: the decoders and machines (src/proto, src/wire), names, ingest and catalog. Not part of
# `make test`: it rebuilds the library once per mutant; two runs side by side (MUTANTS_SLOT)
# did about 9 mutants a minute here, so the ~7,000 mutants of these modules would take about
# 13 hours (estimated): run them in parts (MUTANTS_FILES); a sample (MUTANTS_SHARD) fits in
# minutes per module.
#
#   bash tests/mutants.sh [MODULE...]     (default: every module below; `make mutants
#                                          MUTANTS="wire names"` picks some)
#   MUTANTS_SHARD=0/8 bash tests/mutants.sh ...   a round-robin sample: every 8th mutant
#   MUTANTS_FILES="src/ingest/part.rs" bash tests/mutants.sh ingest
#                                                 only these files of the module (a part of a
#                                                 long run that can be done and kept alone:
#                                                 results in target/mutants/MODULE.parts/FILE;
#                                                 the table sums a module's parts)
#   MUTANTS_SLOT=2 bash tests/mutants.sh ...      a second run beside the first (its own copy
#                                                 and build folder; two fit two cores)
#   MUTANTS_MIN_TIMEOUT=20 ...                    the least test timeout, seconds (default 40)
#   MUTANTS_TIMEOUT=25 ...                        a fixed test timeout, seconds (default: scaled
#                                                 from the unmutated run, at least the above)
#   MUTANTS_RETEST=1 bash tests/mutants.sh ...    only the mutants the last run missed (after a
#                                                 test was added; found again by file, operator
#                                                 and function if the code moved), results in
#                                                 MODULE/retest
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
# No pathname expansion: the file globs in the table are cargo-mutants' to match (with `**`
# reaching into subfolders), not the shell's.
set -f
cd "$(dirname "$0")/.."

if ! command -v cargo-mutants >/dev/null 2>&1; then
    echo "mutants: cargo-mutants is missing: cargo install cargo-mutants" >&2
    exit 2
fi

# module | files (globs) | cargo test filters (unit tests of the library), and test-harness flags:
# the catalog's tests mostly wait (on the watcher, on deadlines), and under a mutant that breaks
# the scan ten of them wait out their 10 s deadline: with one test thread per core they took a
# minute (a timeout per mutant), with 16 they overlap.
table='
wire|src/wire/**|wire:: proto::jtp proto::tej
names|src/names.rs|names:: proto::tej ingest::
proto-jtp|src/proto/jtp/**|proto::jtp::
proto-tej|src/proto/tej/**|proto::tej::
proto-cjp2p|src/proto/cjp2p/**|proto::cjp2p::
proto-fastdp|src/proto/fastdp/**|proto::fastdp::
proto-filestorage|src/proto/filestorage/**|proto::filestorage::
ingest|src/ingest/**|ingest::
catalog|src/catalog/**|catalog:: --test-threads=16
'

all=$(echo "$table" | awk -F'|' 'NF == 3 {print $1}')
modules=${*:-$all}
slot=${MUTANTS_SLOT:-}
export CARGO_TARGET_DIR="$PWD/target/mutants-target$slot"
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
copy="$PWD/target/mutants-src$slot"
# Mirror the tree by content (Python 3 is on every machine `make test` runs on; rsync is not):
# a file whose bytes differ is rewritten and gets a new mtime, so cargo rebuilds it; an
# unchanged file keeps its mtime, so the incremental build carries over; files gone from the
# tree are removed from the copy. Symbolic links are copied as links.
python3 - "$copy" <<'PY'
import os, shutil, sys
dst = sys.argv[1]
skip = {"target", ".git", "fuzz/target"}
seen = set()
for root, dirs, files in os.walk(".", followlinks=False):
    rel = os.path.relpath(root, ".")
    dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel, d)) not in skip]
    os.makedirs(os.path.join(dst, rel), exist_ok=True)
    seen.add(os.path.normpath(rel))
    for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
        src, out = os.path.join(root, name), os.path.join(dst, rel, name)
        seen.add(os.path.normpath(os.path.join(rel, name)))
        if os.path.islink(src):
            if not os.path.islink(out) or os.readlink(out) != os.readlink(src):
                if os.path.lexists(out):
                    shutil.rmtree(out) if os.path.isdir(out) and not os.path.islink(out) else os.remove(out)
                os.symlink(os.readlink(src), out)
            continue
        with open(src, "rb") as f:
            data = f.read()
        try:
            with open(out, "rb") as f:
                same = f.read() == data
        except OSError:
            same = False
        if not same:
            if os.path.islink(out):
                os.remove(out)
            with open(out, "wb") as f:
                f.write(data)
            shutil.copymode(src, out)
for root, dirs, files in os.walk(dst, topdown=False):
    rel = os.path.normpath(os.path.relpath(root, dst))
    if rel.split(os.sep)[0] in ("target",) or rel.startswith(os.path.join("fuzz", "target")):
        continue
    for name in files + dirs:
        p = os.path.normpath(os.path.join(rel, name))
        if p in skip or p in seen:
            continue
        full = os.path.join(root, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.remove(full)
PY

for m in $modules; do
    row=$(echo "$table" | awk -F'|' -v m="$m" '$1 == m')
    if [ -z "$row" ]; then
        echo "mutants: unknown module $m (one of: $(echo $all))" >&2
        exit 2
    fi
    IFS='|' read -r _ files filters <<<"$row"
    out="target/mutants/$m"
    if [ -n "${MUTANTS_FILES:-}" ]; then
        # A part: these files only, each of which must be one of the module's (by its globs).
        for f in $MUTANTS_FILES; do
            ok=$(python3 -c 'import fnmatch,sys; f=sys.argv[1]; print(any(fnmatch.fnmatch(f, g.replace("**","*")) for g in sys.argv[2:]))' "$f" $files)
            if [ "$ok" != True ]; then
                echo "mutants: $f is not a file of module $m ($files)" >&2
                exit 2
            fi
        done
        files=$MUTANTS_FILES
        out="target/mutants/$m.parts/$(echo $files | tr ' /' '+_')"
        mkdir -p "$(dirname "$out")"
    fi
    # --in-place is one job by nature (no --jobs): one mutant at a time.
    # The test timeout scales with the baseline's test time (cargo-mutants' default), never
    # below 40 s: the machine is shared, and a mutant that loops costs the whole timeout.
    args=(mutants --dir "$copy" --in-place --no-shuffle
          --minimum-test-timeout "${MUTANTS_MIN_TIMEOUT:-40}"
          --build-timeout 900 --cargo-arg=--lib)
    # MUTANTS_TIMEOUT: a fixed test timeout instead of one scaled from the baseline (catalog
    # tests take 10 s and wait out deadlines under a mutant: 54 s per timeout otherwise).
    [ -z "${MUTANTS_TIMEOUT:-}" ] || args+=(--timeout "$MUTANTS_TIMEOUT")
    [ -n "${MUTANTS_RETEST:-}" ] || args+=($shard)
    for f in $files; do args+=(--file "$f"); done
    if [ -n "${MUTANTS_RETEST:-}" ]; then
        missed="$out/mutants.out/missed.txt"
        if [ ! -s "$missed" ]; then
            echo "== $m: nothing missed to test again"
            continue
        fi
        # Each missed mutant by its exact name (line:column, operator, function). A test added
        # since may have moved the code down or up: a name no longer in today's list is found
        # again by its file, column, operator and function when exactly one mutant matches (the
        # column too, or an excluded mutant would be taken for another of the same operator in
        # the same function); one that matches nothing (excluded since, or its code changed)
        # is said and left out.
        flags=()
        for f in $files; do flags+=(--file "$f"); done
        (cd "$copy" && cargo mutants --list "${flags[@]}" 2>/dev/null) >"$out.list"
        python3 - "$missed" "$out.list" >"$out.retest-names" <<'PY'
import re, sys
missed = [l.rstrip("\n") for l in open(sys.argv[1]) if l.strip()]
now = [l.rstrip("\n") for l in open(sys.argv[2]) if l.strip()]
key = lambda n: re.sub(r"^([^:]+):\d+:(\d+): ", r"\1:\2: ", n)
by_key = {}
for n in now:
    by_key.setdefault(key(n), []).append(n)
line = lambda n: int(n.split(":")[1])
path = lambda n: n.split(":")[0]
shifts = {}  # file -> [(old line, new line)] of the mutants found again without doubt
several = []
for m in missed:
    found = [m] if m in now else by_key.get(key(m), [])
    if len(found) == 1:
        print(found[0])
        shifts.setdefault(path(m), []).append((line(m), line(found[0])))
        if found[0] != m:
            print(f"   moved: {m} -> {found[0]}", file=sys.stderr)
    elif not found:
        print(f"   gone (excluded since, or its code changed): {m}", file=sys.stderr)
    else:
        several.append((m, found))
# Several of the same file, column, operator and function (the lines of one condition): the
# one whose line moved as much as the nearest mutant found without doubt.
for m, found in several:
    near = sorted(shifts.get(path(m), []), key=lambda s: abs(s[0] - line(m)))
    pick = [f for f in found if near and line(f) == line(m) + near[0][1] - near[0][0]]
    if len(pick) == 1:
        print(pick[0])
        print(f"   moved as its neighbour: {m} -> {pick[0]}", file=sys.stderr)
    else:
        print(f"   several after a move, not retested: {m}", file=sys.stderr)
PY
        if [ ! -s "$out.retest-names" ]; then
            echo "== $m: nothing missed is left to test again"
            continue
        fi
        while IFS= read -r name; do
            args+=(--re "^$(printf '%s' "$name" | sed 's/[][\\.*^$+?(){}|]/\\&/g')\$")
        done <"$out.retest-names"
        out="$out/retest"
    else
        rm -rf "$out/retest" "$out.retest-names"
        echo "${MUTANTS_SHARD:-full}" >"$out.shard"
    fi
    args+=(--output "$PWD/$out")
    args+=(--cargo-test-arg=--)
    for t in $filters; do args+=("--cargo-test-arg=$t"); done
    echo "== $m: $files; tests: $filters"
    start=$(date +%s)
    nice -n 19 cargo "${args[@]}" >"$out.log" 2>&1
    rc=$?
    # 0: all caught, 2: some missed, 3: some timed out; anything else means no result.
    case $rc in 0|2|3) ;; *) echo "   cargo mutants failed ($rc): see $out.log" >&2 ;; esac
    echo "   $(( ($(date +%s) - start) / 60 )) min; log $out.log"
done

# Counts of one run's folder (a module's, or a part's): caught missed unviable timeout.
counts() {
    local base=$1 d="$1/mutants.out" r="$1/retest/mutants.out" names
    n() { cat "$1/$2.txt" 2>/dev/null | grep -c .; }
    local c mi u t
    c=$(n "$d" caught) mi=$(n "$d" missed) u=$(n "$d" unviable) t=$(n "$d" timeout)
    if [ -d "$r" ]; then
        # A retest re-ran the missed ones: those now caught move over. (cargo-mutants 27.1
        # applies no name filter to struct-field mutants, so a retest may run others too:
        # only the names from missed.txt count.)
        names="$base.retest-names"
        [ -f "$names" ] || names="$d/missed.txt"
        again() { grep -Fxf "$names" "$r/$1.txt" 2>/dev/null | grep -c .; }
        c=$((c + $(again caught))) t=$((t + $(again timeout))) mi=$(again missed)
    fi
    echo "$c $mi $u $t"
}

set +f   # the parts' folders below are the shell's to list
echo
printf '%-18s %-11s %7s %7s %9s %8s %8s\n' module sample caught missed unviable timeout caught%
for m in $all; do
    runs=() sample=""
    if [ -d "target/mutants/$m/mutants.out" ]; then
        runs+=("target/mutants/$m")
        sample=$(cat "target/mutants/$m.shard" 2>/dev/null || echo "?")
    fi
    parts=0
    for p in "target/mutants/$m.parts"/*; do
        [ -d "$p/mutants.out" ] || continue
        runs+=("$p") parts=$((parts + 1))
    done
    [ ${#runs[@]} -gt 0 ] || { printf '%-18s %s\n' "$m" "not run"; continue; }
    [ $parts -eq 0 ] || sample="${sample:+$sample+}$parts parts"
    c=0 mi=0 u=0 t=0
    for run in "${runs[@]}"; do
        read -r a b e f <<<"$(counts "$run")"
        c=$((c + a)) mi=$((mi + b)) u=$((u + e)) t=$((t + f))
    done
    viable=$((c + mi + t))
    pct=$([ "$viable" -gt 0 ] && echo "$(( (100 * (c + t)) / viable ))" || echo -)
    printf '%-18s %-11s %7s %7s %9s %8s %8s\n' "$m" "$sample" "$c" "$mi" "$u" "$t" "$pct"
done
