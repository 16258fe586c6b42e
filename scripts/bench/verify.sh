#!/usr/bin/env bash
# Verification benchmark: on one dataset, in the same run, the snapshot's copy rate beside
# `ferry verify --full` (standalone, both directions) and a full fenced verification inside a
# live run (`ferry run` with a verify phase), in keys/s.
#
# Usage: scripts/bench/verify.sh [KEYS=200000] [VALUE_BYTES=1500]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/common.sh

KEYS=${1:-200000}
VALUE=${2:-1500}
FERRY=${FERRY:-target/release/ferry}
[ -x "$FERRY" ] || cargo build --release --quiet

start_server source
start_server target
start_server target2
S=$PORT_source; T=$PORT_target; T2=$PORT_target2

echo "== generating $KEYS keys of $VALUE bytes plus big keys on 127.0.0.1:$S"
redis-benchmark -p "$S" -t set -n "$KEYS" -r 1000000000 -d "$VALUE" -P 64 -q >/dev/null
redis-benchmark -p "$S" -n 200000 -r 1000000000 -P 64 -q hset big:hash "f-__rand_int__" "value-__rand_int__" >/dev/null
redis-benchmark -p "$S" -n 100000 -r 1000000000 -P 64 -q sadd big:set "m-__rand_int__" >/dev/null
redis-benchmark -p "$S" -n 20000 -r 1000000 -P 64 -q sadd "set:__rand_int__" "m-__rand_int__" >/dev/null
N_KEYS=$(redis-cli -p "$S" dbsize)
echo "   source: $N_KEYS keys"

echo "== ferry snapshot"
t0=$(now)
"$FERRY" snapshot --quiet --source "redis://127.0.0.1:$S" --target "redis://127.0.0.1:$T" 2>"$BENCH_DIR/snap.err"
t1=$(now)
SNAP=$(elapsed "$t0" "$t1")
SNAP_RATE=$(echo "$N_KEYS / $SNAP" | bc)
echo "   ${SNAP}s (${SNAP_RATE} keys/s)"

echo "== ferry verify --full (standalone)"
t0=$(now)
"$FERRY" verify --full --source "redis://127.0.0.1:$S" --target "redis://127.0.0.1:$T" \
  --json "$BENCH_DIR/verify.json" 2>"$BENCH_DIR/verify.err"
t1=$(now)
VER=$(elapsed "$t0" "$t1")
VER_KEYS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["keys_checked"])' "$BENCH_DIR/verify.json")
VER_RATE=$(echo "$VER_KEYS / $VER" | bc)
tail -1 "$BENCH_DIR/verify.err" | sed 's/^/   /'

echo "== fenced verify inside a live run (ferry run: snapshot, catch_up, verify, cutover)"
SOURCE_URL="redis://127.0.0.1:$S" TARGET_URL="redis://127.0.0.1:$T2" FERRY_STATE_DIR="$BENCH_DIR/state" \
  "$FERRY" run scripts/bench/plans/verify.lua --json "$BENCH_DIR/run.json" 2>"$BENCH_DIR/run.err" \
  || { tail -20 "$BENCH_DIR/run.err" >&2; exit 1; }
read -r FEN_KEYS FEN_S FEN_DIFFS < <(python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["verify"]; print(v["keys_checked"], v["elapsed_secs"], len(v["differences"]))' "$BENCH_DIR/run.json")
FEN_RATE=$(echo "$FEN_KEYS / $FEN_S" | bc)
echo "   $FEN_KEYS keys in ${FEN_S}s, $FEN_DIFFS differences"
# A run that found differences (or checked nothing) reports no figure.
[ "$FEN_DIFFS" = 0 ] || { echo "the fenced verify found $FEN_DIFFS differences" >&2; exit 1; }
[ "$FEN_KEYS" -gt 0 ] && [ "$VER_KEYS" -gt 0 ] || { echo "a verify checked no key" >&2; exit 1; }

echo
echo "RESULT keys=$N_KEYS snapshot=${SNAP_RATE}keys/s verify_full=${VER_RATE}keys/s" \
  "verify_full_vs_snapshot=$(echo "scale=2; $VER_RATE / $SNAP_RATE" | bc)x" \
  "fenced_verify=${FEN_RATE}keys/s fenced_vs_snapshot=$(echo "scale=2; $FEN_RATE / $SNAP_RATE" | bc)x"
