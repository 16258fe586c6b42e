#!/usr/bin/env bash
# Shared helpers for the end-to-end benchmarks: throwaway redis-server processes on free loopback
# ports, stopped by PID when the script exits.
set -euo pipefail

BENCH_DIR=$(mktemp -d /tmp/ferry-bench.XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; done
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

need() {
  command -v "$1" >/dev/null || { echo "missing $1: run 'make deps' (apt-get install $2)" >&2; exit 2; }
}
need redis-server redis-server
need redis-cli redis-tools
need redis-benchmark redis-tools
[ -x /usr/bin/time ] || { echo "missing /usr/bin/time: apt-get install time" >&2; exit 2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_server NAME [extra redis-server args...]; sets PORT_<NAME> and PID_<NAME>. BIN=PATH before
# the call runs another server binary (an engine of `make servers`).
start_server() {
  local name=$1; shift
  local port; port=$(free_port)
  mkdir -p "$BENCH_DIR/$name"
  "${BIN:-redis-server}" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$BENCH_DIR/$name" --logfile "$BENCH_DIR/$name/log" \
    --repl-diskless-sync yes --repl-diskless-sync-delay 0 "$@" &
  PIDS+=($!)
  printf -v "PID_${name}" '%s' "$!"
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  printf -v "PORT_${name}" '%s' "$port"
}

now() { date +%s.%N; }
# CPU seconds (user + system) a process has used so far, with its reaped children's (a
# redis-server's fork that serialises an RDB for a full sync or BGSAVE counts once reaped).
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15 + $16 + $17) / hz }' "/proc/$1/stat"; }
elapsed() { echo "$2 - $1" | bc; }
