#!/usr/bin/env bash
# Plan benchmark: replay throughput with no rewrite, with a declarative rename, and with a
# per-command Lua hook (scripts/bench/plans/*.lua), each measured by scripts/bench/replay.sh
# step 1 (target paused while N writes are journaled, then timed until all are applied).
#
# Usage: scripts/bench/plans.sh [N=500000]
# Environment: ORDER=plain-first (default: plain, rename, hook) or hook-first (the reverse), so
# that scripts/bench/alternate.py can alternate which plan runs on a cooler machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-${N:-500000}}
[ -x target/release/ferry ] || cargo build --release --quiet
declare -A RATE
PLANS="plain rename hook"
[ "${ORDER:-plain-first}" = hook-first ] && PLANS="hook rename plain"
for p in $PLANS; do
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
ratio_of() { awk -v a="${RATE[$1]}" -v b="${RATE[plain]}" 'BEGIN { printf "%.2f", a / b }'; }
echo "RESULT plain=${RATE[plain]}cmd/s rename=${RATE[rename]}cmd/s hook=${RATE[hook]}cmd/s" \
  "rename_vs_plain=$(ratio_of rename)x hook_vs_plain=$(ratio_of hook)x order=${ORDER:-plain-first}"
