#!/usr/bin/env bash
# Plan benchmark: replay throughput with no rewrite, with a declarative rename, and with a
# per-command Lua hook (scripts/bench/plans/*.lua), each measured by scripts/bench/replay.sh
# step 1 (target paused while N writes are journaled, then timed until all are applied).
#
# Usage: scripts/bench/plans.sh [N=500000]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-${N:-500000}}
[ -x target/release/ferry ] || cargo build --release --quiet
declare -A RATE
for p in plain rename hook; do
  out=$(ONLY_REPLAY=1 N=$N PLAN="scripts/bench/plans/$p.lua" bash scripts/bench/replay.sh 2>&1) || {
    echo "$out" | tail -20 >&2; echo "the $p run failed" >&2; exit 1; }
  line=$(grep '^RESULT' <<<"$out")
  RATE[$p]=$(sed -n 's/.*ferry_replay=\([0-9]*\).*/\1/p' <<<"$line")
  echo "$p: $line"
done
echo
printf '%-34s %12s %8s\n' "plan" "replay cmd/s" "vs plain"
for p in plain rename hook; do
  printf '%-34s %12s %8s\n' "$p" "${RATE[$p]}" "$(awk -v a="${RATE[$p]}" -v b="${RATE[plain]}" 'BEGIN { printf "%.2f", a / b }')"
done
echo "RESULT plain=${RATE[plain]} rename=${RATE[rename]} hook=${RATE[hook]}"
