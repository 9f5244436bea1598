# ferry: the two commands that matter are `make run` and `make test`.
CARGO ?= cargo
SHARE ?= share
VENV := target/venv
PY := $(VENV)/bin/python

.PHONY: build release run test unit fmt fmt-check lint doc certs bench bench-hosts venv mutants clean fuzz fuzz-long fuzz-merge fuzz-seeds

build:
	$(CARGO) build --release

release: build

# Serve ./share on every implemented protocol, on loopback (Ctrl-C stops it).
run: build
	./target/release/ferry serve $(SHARE)

# Everything CI checks: formatting, lints, docs without warnings, unit, doc and integration tests.
test: fmt-check lint doc certs venv
	$(CARGO) test -- --test-threads=4

fmt:
	$(CARGO) fmt

fmt-check:
	$(CARGO) fmt --check

lint:
	$(CARGO) clippy --all-targets -- -D warnings

# The API docs build without a warning (broken links included).
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

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

# Coverage-guided fuzzing of every decoder and machine (nightly + cargo-fuzz, libFuzzer), not part
# of `make test` (which replays fuzz/corpus and fuzz/regressions on stable). FUZZ_SECONDS per
# target (default 60); FUZZ_TARGETS to run some; prints executions, coverage and crashes.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh $(FUZZ_TARGETS)

# The long run of issue 11: 10 million executions or 30 minutes per target, whichever comes
# first, one target at a time at the lowest priority.
fuzz-long:
	FUZZ_SECONDS=1800 FUZZ_RUNS=10000000 FUZZ_NICE=19 bash fuzz/run.sh $(FUZZ_TARGETS)

# Adds to fuzz/corpus a greedy set cover of the last runs' inputs that reach new coverage
# (inputs over FUZZ_MERGE_MAX_BYTES, default 1024, left out).
fuzz-merge:
	FUZZ_MERGE=1 bash fuzz/run.sh $(FUZZ_TARGETS)

# Rewrites the seed files (fuzz/corpus/*/seed-*) from the specs' examples.
fuzz-seeds:
	$(CARGO) test --lib fuzzing::seeds -- --ignored

# Mutation testing over decoders, machines, names, ingest and catalog (not in `make test`:
# about 20 s a mutant, days for all ~6,800 on two cores). MUTANTS="wire names" runs some
# modules only, MUTANTS_SHARD=0/20 every 20th mutant, MUTANTS_RETEST=1 only those the last run
# missed; see tests/mutants.sh and the README's "Mutation testing".
MUTANTS ?=
MUTANTS_SHARD ?=
MUTANTS_RETEST ?=
mutants:
	MUTANTS_SHARD=$(MUTANTS_SHARD) MUTANTS_RETEST=$(MUTANTS_RETEST) bash tests/mutants.sh $(MUTANTS)

# Multi-host benchmarks (root): ferry sync against rsync, HAProxy, CJP2P sources, on network
# namespaces; one table, also in target/bench/hosts.md.
bench-hosts: certs
	bash benches/bench_hosts.sh

clean:
	$(CARGO) clean
	rm -rf certs/*.pem
