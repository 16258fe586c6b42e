# ferry: `make test` runs every test; it installs what the tests need first.
# The integration tests spawn their own redis-server processes on free loopback ports.

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo deps lint bench-parser bench fmt

## Installs redis-server and redis-cli through apt when they are missing.
deps:
	@if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then \
		echo "Installing redis-server and redis-tools through apt-get..."; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server redis-tools >/dev/null; \
	fi
	@redis-server --version

## Runs every test: unit, integration (real Redis servers), CLI, doc tests.
test: deps
	$(CARGO) test --locked

## A whole live migration between two local servers, checked by the oracle.
demo: deps
	bash scripts/demo.sh

## End-to-end benchmarks against native replication; results go in docs/performance.md.
bench: deps
	bash scripts/bench/snapshot.sh
	bash scripts/bench/replay.sh
	bash scripts/bench/verify.sh

## Formatting and clippy, as CI checks them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

## Parser throughput (criterion); results go in docs/performance.md.
bench-parser:
	$(CARGO) bench --bench parser

fmt:
	$(CARGO) fmt --all
