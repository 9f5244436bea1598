# ferry: the two commands that matter are `make run` and `make test`.
CARGO ?= cargo
SHARE ?= share
VENV := target/venv
PY := $(VENV)/bin/python

.PHONY: build release run test unit fmt fmt-check lint certs bench bench-hosts venv clean

build:
	$(CARGO) build --release

release: build

# Serve ./share on every implemented protocol, on loopback (Ctrl-C stops it).
run: build
	./target/release/ferry serve $(SHARE)

# Everything CI checks: formatting, lints, unit, doc and integration tests.
test: fmt-check lint certs venv
	$(CARGO) test -- --test-threads=4

fmt:
	$(CARGO) fmt

fmt-check:
	$(CARGO) fmt --check

lint:
	$(CARGO) clippy --all-targets -- -D warnings

# A test CA and a localhost/127.0.0.1/::1 certificate for the tests, written by a ferry binary
# that is built anyway: the release one when `make run` made it, else the debug one, which
# `cargo test` reuses (no build of its own).
certs: certs/ca.pem

certs/ca.pem:
	@if [ -x target/release/ferry ]; then ./target/release/ferry certs --out certs; \
	else $(CARGO) build --quiet && ./target/debug/ferry certs --out certs; fi

# Python virtual environment for interop tests (pinned packages from PyPI).
venv: $(VENV)/.done

$(VENV)/.done: tests/requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

# Benchmarks: ferry against its peers on this machine, printed as one table.
bench: build
	bash benches/bench.sh

# Multi-host benchmarks (root): ferry sync against rsync, HAProxy, CJP2P sources, on network
# namespaces; one table, also in target/bench/hosts.md.
bench-hosts: certs
	bash benches/bench_hosts.sh

clean:
	$(CARGO) clean
	rm -rf certs/*.pem
