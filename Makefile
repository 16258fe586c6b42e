# ferry: `make test` runs every test; it installs what the tests need first.
# The integration tests spawn their own redis-server and moto_server processes on free loopback ports.

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo deps lint bench-parser bench fmt install assets deb deb-test cargo-deb

# Where cargo builds (CARGO_TARGET_DIR when set). The generated man pages, completions and the
# package stay under ./target of the checkout, where [package.metadata.deb] looks for them.
TARGET_DIR = $(or $(CARGO_TARGET_DIR),target)
# The cargo profile `make deb` packages. `make deb-test` packages the dev build instead, which
# `make test` has already built (a release build costs CI many minutes);
# `make deb-test DEB_PROFILE=release` checks the release package.
DEB_PROFILE ?= release
FERRY_BIN = $(TARGET_DIR)/$(if $(filter dev,$(DEB_PROFILE)),debug,$(DEB_PROFILE))/ferry
ASSETS := target/assets
# More cargo-deb flags.
DEB_FLAGS ?=
DEB_DIR := target/debian

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
	@# Headless Chromium renders report.html in the run-report test (tests/it/observe.rs).
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
		echo "Installing chromium through apt-get..."; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; \
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

## Builds the engine matrix (Redis 4.0 to 7.4, Valkey 7.2 and 8.0) from ../shared/servers once,
## into ~/.cache/ferry/servers (FERRY_SERVERS_CACHE), reusing what is built there.
.PHONY: servers test-engines
servers:
	bash scripts/servers.sh

## The engine tests against every engine of the matrix (also Redis 7.4's hash-field TTLs and
## clusters of 6.2 and Valkey 8.0); they fail when a server is missing.
test-engines: deps servers
	FERRY_ENGINES=1 $(CARGO) test --locked --test it -- --include-ignored \
		engines:: fieldttl:: cluster::clusters_before_cluster_shards_are_read_with_cluster_slots

## A whole live migration between two local servers, checked by the oracle.
demo: deps
	bash scripts/demo.sh

## End-to-end benchmarks against their baselines, each run BENCH_RUNS times per order with ferry
## and the baseline alternating (scripts/bench/alternate.py); the tables go into
## docs/performance.md with the commit measured (commit first: it refuses uncommitted code).
BENCH_RUNS ?= 3
SERVERS = $(or $(FERRY_SERVERS_CACHE),$(HOME)/.cache/ferry/servers)
ALTERNATE = python3 scripts/bench/alternate.py --runs $(BENCH_RUNS) --doc docs/performance.md
bench: deps
	$(ALTERNATE) --name snapshot --orders native-first,ferry-first \
		--title "Snapshot: 200k keys of 1.5 kB plus big keys, against native replication" \
		-- bash scripts/bench/snapshot.sh 200000 1500
	$(ALTERNATE) --name snapshot-small --orders native-first,ferry-first --no-build \
		--title "Snapshot: 1M keys of 100 bytes plus big keys, against native replication" \
		-- bash scripts/bench/snapshot.sh 1000000 100
	$(MAKE) servers
	$(ALTERNATE) --name snapshot-6.2-to-7.4 --orders native-first,ferry-first --no-build \
		--set SOURCE_BIN=$(SERVERS)/redis-6.2.16/redis-server \
		--set TARGET_BIN=$(SERVERS)/redis-7.4.1/redis-server \
		--title "Snapshot from Redis 6.2 to Redis 7.4: 200k keys of 1.5 kB plus big keys, against native replication between the same versions" \
		-- bash scripts/bench/snapshot.sh 200000 1500
	$(ALTERNATE) --name replay-1 --orders ferry-first,baseline-first --no-build \
		--set LIKE=1 --set SHARDS=1 \
		--title "Replay over 1 connection against redis-benchmark -c 1 -P 16384, same commands" \
		-- bash scripts/bench/replay.sh
	$(ALTERNATE) --name replay-4 --orders ferry-first,baseline-first --no-build \
		--set LIKE=1 --set SHARDS=4 \
		--title "Replay over 4 connections against redis-benchmark -c 4 -P 16384, same commands" \
		-- bash scripts/bench/replay.sh
	$(ALTERNATE) --name cluster-snapshot --orders native-first,ferry-first --no-build \
		--title "Cluster to cluster snapshot: 300k keys of 1.5 kB plus big keys over 3 shards, against native per-shard replication (3 replicas syncing together)" \
		-- bash scripts/bench/cluster.sh snapshot 300000 1500
	$(ALTERNATE) --name cluster-replay --orders cluster-first,single-first --no-build \
		--title "Replay toward a 3-master cluster against toward 1 standalone primary (3 connections each), same 1M writes" \
		-- bash scripts/bench/cluster.sh replay
	$(ALTERNATE) --name verify --orders fixed,fixed --no-build \
		--title "Verification rates against the snapshot's, same run" \
		-- bash scripts/bench/verify.sh
	$(ALTERNATE) --name backup --orders native-first,ferry-first --no-build \
		--title "Backup against redis-cli --rdb" -- bash scripts/bench/backup.sh
	$(ALTERNATE) --name plans --orders plain-first,hook-first --no-build \
		--title "Replay through plans: no rewrite, a declarative rename, a Lua hook per command" \
		-- bash scripts/bench/plans.sh
	$(ALTERNATE) --name sqs --orders ferry-first,seed-first --no-build \
		--title "SQS end to end: ferry capture + 2 replay processes against the seed's way (moto)" \
		-- bash scripts/bench/sqs.sh
	bash scripts/bench/fencing.sh

## The README's picture of a run report: docs/report-screenshot.png, taken by headless Chromium
## in the live run-report test.
.PHONY: report-screenshot
report-screenshot: deps
	FERRY_REPORT_SCREENSHOT=$(CURDIR)/docs/report-screenshot.png $(CARGO) test --locked --test it \
		observe::a_live_migration_serves_metrics_answers_status_and_reports_in_json_and_html

## Formatting and clippy, as CI checks them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

## Parser throughput (criterion); results go in docs/performance.md.
bench-parser:
	$(CARGO) bench --bench parser

fmt:
	$(CARGO) fmt --all

## Installs ferry into ~/.cargo/bin, as a user without the package would.
install:
	$(CARGO) install --locked --path .

## cargo-deb, when missing or another version: the version is pinned because `make deb-test`
## packages a dev build, which cargo-deb accepts with a warning today and may refuse later.
CARGO_DEB_VERSION := 3.8.0
cargo-deb:
	@if [ "$$($(CARGO) deb --version 2>/dev/null)" != "cargo-deb $(CARGO_DEB_VERSION)" ]; then \
		echo "Installing cargo-deb $(CARGO_DEB_VERSION) (cargo install cargo-deb --locked)..."; \
		$(CARGO) install cargo-deb --locked --version $(CARGO_DEB_VERSION); \
	fi

## Man pages and shell completions, generated by the built binary from its clap definitions.
assets:
	$(CARGO) build --locked --profile $(DEB_PROFILE)
	rm -rf $(ASSETS)
	mkdir -p $(ASSETS)/completions
	$(FERRY_BIN) man $(ASSETS)/man >/dev/null
	$(FERRY_BIN) completions bash > $(ASSETS)/completions/ferry.bash
	$(FERRY_BIN) completions zsh > $(ASSETS)/completions/_ferry
	$(FERRY_BIN) completions fish > $(ASSETS)/completions/ferry.fish

## The Debian package: binary, man pages, completions, example plans (target/debian/ferry_*.deb),
## and the binary's debug symbols (ferry-dbgsym_*.ddeb).
deb: cargo-deb assets
	rm -f $(DEB_DIR)/ferry_*.deb $(DEB_DIR)/ferry-dbgsym_*.ddeb
	$(CARGO) deb --no-build --locked --profile $(DEB_PROFILE) --output $(DEB_DIR)/ $(DEB_FLAGS)
	@ls -l $(DEB_DIR)/ferry_*.deb

## Builds the package, installs it with dpkg, and checks the installed ferry, man page and
## completions; removes the package afterwards. CI runs it after `make test`.
deb-test: DEB_PROFILE = dev
# No debug-symbols package, lighter compression: 8 s instead of 90 for what the test installs.
deb-test: DEB_FLAGS = --no-dbgsym --fast
deb-test: deb
	@if ! command -v man >/dev/null || ! command -v nroff >/dev/null; then \
		echo "Installing man-db and groff-base through apt-get..."; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq man-db groff-base >/dev/null; \
	fi
	SUDO="$(SUDO)" bash scripts/deb-test.sh $(DEB_DIR)/ferry_*.deb
