#!/usr/bin/env bash
# SQS journal benchmark, in one run on this machine: the same burst of writes replayed through
#  1. the embedded journal (`ferry migrate`), and
#  2. SQS (a local moto server): `ferry capture` publishing to a FIFO queue and two
#     `ferry replay` processes applying,
# reporting commands/s end to end (from the first write until the target holds every key), and
# for SQS the entries packed per message and the messages/s it took, beside moto's own message
# rate; and 3. the seed's SQS migration end to end (scripts/bench/seed_sqs.py: MONITOR, one
# message per write, a replayer applying one command per round trip), on SEED_N writes.
#
# Usage: scripts/bench/sqs.sh [N=300000]   Environment: SEED_N=1000, ORDER=ferry-first|seed-first
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/common.sh

N=${1:-300000}
# The seed's path manages tens of writes per second through moto: a smaller burst, same shape.
SEED_N=${SEED_N:-1000}
FERRY=${FERRY:-target/release/ferry}
[ -x "$FERRY" ] || cargo build --release --quiet
command -v moto_server >/dev/null || { echo "missing moto_server: run 'make deps'" >&2; exit 2; }

MOTO_PORT=$(free_port)
moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$BENCH_DIR/moto.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -s "http://127.0.0.1:$MOTO_PORT/" >/dev/null 2>&1 && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
  AWS_ENDPOINT_URL_SQS="http://127.0.0.1:$MOTO_PORT" AWS_EC2_METADATA_DISABLED=true

start_server source
start_server target
start_server target_sqs
start_server target_seed
S=$PORT_source

# Writes N SETs of new keys on the source; waits until `port` holds as many keys; prints secs.
burst_and_wait() {
  local port=$1
  local before; before=$(redis-cli -p "$S" dbsize)
  local t0; t0=$(now)
  redis-benchmark -p "$S" -t set -n "$N" -r 1000000000 -d 16 -P 64 -q >/dev/null
  local want; want=$(redis-cli -p "$S" dbsize)
  local deadline=$((SECONDS + 600))
  while [ "$(redis-cli -p "$port" dbsize)" -lt "$want" ]; do
    [ $SECONDS -lt $deadline ] || { echo "target stuck at $(redis-cli -p "$port" dbsize) of $want keys" >&2; exit 1; }
    sleep 0.02
  done
  elapsed "$t0" "$(now)"
}

stop() { kill -TERM "$1"; for _ in $(seq 600); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -KILL "$1"; }

embedded() {
  redis-cli -p "$S" flushall >/dev/null
  echo "== embedded journal: ferry migrate"
  "$FERRY" migrate --source "redis://127.0.0.1:$S" --target "redis://127.0.0.1:$PORT_target" \
    --capture primary --state-dir "$BENCH_DIR/state-embedded" 2>"$BENCH_DIR/embedded.log" &
  FP=$!
  until grep -q "Caught up" "$BENCH_DIR/embedded.log"; do sleep 0.1; done
  EMB_S=$(burst_and_wait "$PORT_target")
  stop $FP
  EMB_RATE=$(echo "$N / $EMB_S" | bc)
  echo "   $N writes in ${EMB_S}s: $EMB_RATE cmd/s"
}

sqs() {
  echo "== SQS FIFO (moto): ferry capture + 2 x ferry replay"
  redis-cli -p "$S" flushall >/dev/null
  Q="http://127.0.0.1:$MOTO_PORT/123456789012/ferry-bench.fifo"
  "$FERRY" capture --source "redis://127.0.0.1:$S" --target "redis://127.0.0.1:$PORT_target_sqs" \
    --queue "$Q" --create-queue --capture primary --state-dir "$BENCH_DIR/state-sqs" \
    2>"$BENCH_DIR/capture.log" &
  CP=$!
  until grep -q "Caught up" "$BENCH_DIR/capture.log"; do sleep 0.1; done
  RPIDS=()
  for w in a b; do
    "$FERRY" replay --source "redis://127.0.0.1:$S" --target "redis://127.0.0.1:$PORT_target_sqs" \
      --queue "$Q" --state-dir "$BENCH_DIR/replay-$w" 2>"$BENCH_DIR/replay-$w.log" &
    RPIDS+=($!)
  done
  sleep 1
  SQS_S=$(burst_and_wait "$PORT_target_sqs")
  stop $CP
  for p in "${RPIDS[@]}"; do stop "$p"; done
  SQS_RATE=$(echo "$N / $SQS_S" | bc)
  read -r ENTRIES MSGS < <(cat "$BENCH_DIR"/replay-*.log | sed -n 's/.*Replay stopped: \([0-9]*\) entries in \([0-9]*\) batches.*/\1 \2/p' \
    | awk '{e+=$1; m+=$2} END {print e, m}')
  PER_MSG=$(echo "$ENTRIES / $MSGS" | bc)
  MSG_RATE=$(echo "scale=1; $MSGS / $SQS_S" | bc)
  echo "   $N writes in ${SQS_S}s: $SQS_RATE cmd/s; $ENTRIES entries in $MSGS messages ($PER_MSG per message, $MSG_RATE msg/s)"
}

seed() {
  echo "== the seed's way, end to end: MONITOR → one SendMessage per write → receive, apply one per round trip, delete ($SEED_N writes)"
  redis-cli -p "$S" flushall >/dev/null
  SEED_OUT=$(python3 scripts/bench/seed_sqs.py --source "$S" --target "$PORT_target_seed" \
    --moto "$MOTO_PORT" --n "$SEED_N") || { echo "the seed baseline failed" >&2; exit 1; }
  SEED_RATE=$(sed -n 's/.*seed_e2e=\([0-9]*\).*/\1/p' <<<"$SEED_OUT")
  echo "   $SEED_OUT"
}

# ORDER=ferry-first (default: embedded, SQS, seed) or seed-first (the reverse); scripts/bench/
# alternate.py alternates it.
if [ "${ORDER:-ferry-first}" = seed-first ]; then seed; sqs; embedded; else embedded; sqs; seed; fi

echo
echo "RESULT n=$N embedded=${EMB_RATE}cmd/s sqs_fifo=${SQS_RATE}cmd/s" \
  "sqs_vs_embedded=$(echo "scale=2; $SQS_RATE / $EMB_RATE" | bc)x entries_per_message=$PER_MSG" \
  "sqs_msgs_per_s=$MSG_RATE seed_n=$SEED_N seed_e2e=${SEED_RATE}cmd/s" \
  "sqs_vs_seed=$(echo "scale=1; $SQS_RATE / $SEED_RATE" | bc)x order=${ORDER:-ferry-first}"
