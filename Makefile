# ferry: the two commands that matter are `make run` and `make test`.
CARGO ?= cargo
SHARE ?= share
VENV := target/venv
PY := $(VENV)/bin/python

.PHONY: build release run test unit fmt fmt-check lint doc certs bench venv mutants clean

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

# A test CA and a localhost/127.0.0.1/::1 certificate for the tests.
certs: certs/ca.pem

certs/ca.pem:
	$(CARGO) run --quiet -- certs --out certs

# Python virtual environment for interop tests (pinned packages from PyPI).
venv: $(VENV)/.done

$(VENV)/.done: tests/requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

# Benchmarks: ferry against its peers on this machine, printed as one table.
bench: build
	bash benches/bench.sh

# Mutation testing over decoders, machines, names, ingest and catalog (not in `make test`:
# hours on two cores). MUTANTS="wire names" runs some modules only; see tests/mutants.sh.
MUTANTS ?=
mutants:
	bash tests/mutants.sh $(MUTANTS)

clean:
	$(CARGO) clean
	rm -rf certs/*.pem
