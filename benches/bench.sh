#!/usr/bin/env bash
# `make bench` entry point: make sure the peers exist, then run benches/bench.py (Python 3
# stdlib), which prints one table and writes target/bench/results.{md,json}.
# The Makefile has already run `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."

# nginx is the HTTP peer. Install it when missing and we are root (the machines are fresh).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "bench: installing nginx-light" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q nginx-light >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q nginx-light >/dev/null; } \
            || echo "bench: could not install nginx; its rows will be errors" >&2
    else
        echo "bench: nginx missing and not root; its rows will be errors" >&2
    fi
fi
if ! command -v curl >/dev/null 2>&1; then
    echo "bench: curl is required" >&2
    exit 2
fi

# The Python venv with tej-protoc (the TEJ peer pair): `make venv`, or the same two commands.
if [ ! -e target/venv/.done ]; then
    echo "bench: making the Python venv (target/venv) for the tej-protoc pair" >&2
    if command -v make >/dev/null 2>&1; then
        make -s venv >&2 || echo "bench: make venv failed; the tej-protoc row will be an error" >&2
    else
        { python3 -m venv target/venv \
            && target/venv/bin/pip install --quiet --disable-pip-version-check \
                -r tests/requirements.txt \
            && touch target/venv/.done; } >&2 \
            || echo "bench: venv failed; the tej-protoc row will be an error" >&2
    fi
fi

# exec, not a child: bench.py stops every server it started (atexit, signals, PR_SET_PDEATHSIG).
exec python3 benches/bench.py "$@"
