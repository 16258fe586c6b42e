# ferry: `make test` runs every test; it installs what the tests need first.
# The integration tests spawn their own redis-server and moto_server processes on free loopback ports.

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo deps lint bench-parser bench fmt

## Installs redis-server and redis-cli through apt, and moto (local SQS) through pip, when missing.
deps:
	@if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then \
		echo "Installing redis-server and redis-tools through apt-get..."; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server redis-tools >/dev/null; \
	fi
	@redis-server --version
	@# openssl makes the certificate of the TLS test server.
	@if ! command -v openssl >/dev/null; then \
		echo "Installing openssl through apt-get..."; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq openssl >/dev/null; \
	fi
	@# The built-in command table (and its test) is Redis 7.0's; other majors differ in commands.
	@# The tests run FERRY_REDIS_SERVER when set, so that is the binary to check.
	@bin="$${FERRY_REDIS_SERVER:-redis-server}"; \
	major=$$("$$bin" --version 2>/dev/null | sed -n 's/.* v=\([0-9]*\)\..*/\1/p'); \
	if [ "$$major" != 7 ]; then \
		echo "WARNING: $$bin is Redis $${major:-?}.x, not 7.x: the built-in command table tests expect Redis 7.0 and will fail. Install Redis 7, or point FERRY_REDIS_SERVER at a 7.x redis-server." >&2; \
	fi
	@# moto is the local SQS of the SQS journal tests (feature `sqs`, on by default).
	@if ! command -v moto_server >/dev/null && [ ! -x "$$(python3 -m site --user-base 2>/dev/null)/bin/moto_server" ]; then \
		echo "Installing moto[server] through pip..."; \
		if ! python3 -m pip --version >/dev/null 2>&1; then \
			$(SUDO) apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-pip >/dev/null; \
		fi; \
		python3 -m pip install -q 'moto[server]' 2>/dev/null || \
		python3 -m pip install -q --user 'moto[server]' 2>/dev/null || \
		python3 -m pip install -q --user --break-system-packages 'moto[server]'; \
		command -v pyenv >/dev/null && pyenv rehash || true; \
	fi

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
	bash scripts/bench/plans.sh
	bash scripts/bench/verify.sh
	bash scripts/bench/backup.sh
	bash scripts/bench/sqs.sh

## Formatting and clippy, as CI checks them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

## Parser throughput (criterion); results go in docs/performance.md.
bench-parser:
	$(CARGO) bench --bench parser

fmt:
	$(CARGO) fmt --all
