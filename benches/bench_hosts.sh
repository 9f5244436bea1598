#!/usr/bin/env bash
# `make bench-hosts` entry point: the multi-host rows (issue 14) measured on network namespaces
# (needs root, as the hosts tests do). Installs rsync and HAProxy from Debian when missing,
# builds in release mode and runs the ignored `bench_hosts` test of the hosts target, which
# prints one table and writes target/bench/hosts.{md,json}.
#
# Smaller runs for a quick look: BENCH_HOSTS_FILES=1000 BENCH_HOSTS_BIG_MIB=128 make bench-hosts
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "bench-hosts: needs root (network namespaces)" >&2
    exit 2
fi
# The hosts' folders live in the run's scratch folder under $TMPDIR. By default that is
# /dev/shm when it has room (8 GiB): rsync and ferry then race on the same memory file system,
# not on a disk that other work on the machine may be flushing. BENCH_HOSTS_TMP overrides.
if [ -z "${BENCH_HOSTS_TMP:-}" ]; then
    free_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
    if [ -n "$free_kb" ] && [ "$free_kb" -gt $((8 * 1024 * 1024)) ]; then
        BENCH_HOSTS_TMP=/dev/shm
    else
        BENCH_HOSTS_TMP=/tmp
    fi
fi
export TMPDIR="$BENCH_HOSTS_TMP"
echo "bench-hosts: data under $TMPDIR" >&2
exec cargo test --release --quiet --test hosts -- --ignored --exact bench::bench_hosts \
    --nocapture --test-threads=1
