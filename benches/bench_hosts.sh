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
exec cargo test --release --quiet --test hosts -- --ignored --exact bench::bench_hosts \
    --nocapture --test-threads=1
