#!/usr/bin/env bash
# `make demo`: a whole live migration between two local Redis servers.
#
# - The source is ElastiCache-like (SYNC, PSYNC, REPLICAOF, SLAVEOF, CONFIG, BGSAVE, SAVE, DEBUG
#   and MIGRATE renamed away), filled with a generated dataset in 3 dbs, with live writers.
# - ferry runs the plan examples/demo.lua (snapshot, catch-up, the default embedded journal) while
#   the writers run.
# - The writers stop, ferry is stopped with SIGINT: it pauses source writes briefly, drains to a
#   final fence and exits 0.
# - The oracle then compares every key, type, value and TTL of both servers.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench/common.sh

SECS=${DEMO_SECS:-20}
echo "== building ferry (release)"
cargo build --release --quiet --bin ferry --example oracle
FERRY=target/release/ferry
ORACLE=target/release/examples/oracle

ec=()
for c in SYNC PSYNC REPLICAOF SLAVEOF CONFIG BGSAVE SAVE DEBUG MIGRATE; do ec+=(--rename-command "$c" ""); done
start_server source "${ec[@]}"
start_server target
S=$PORT_source; T=$PORT_target
echo "== source (ElastiCache-like) 127.0.0.1:$S, target 127.0.0.1:$T"
redis-cli -p "$S" config get maxmemory 2>&1 | head -1 | sed 's/^/   CONFIG on the source: /'

echo "== generating the dataset"
for db in 0 1 2; do
  redis-benchmark -p "$S" --dbnum $db -t set -n 50000 -r 1000000 -d 200 -P 64 -q >/dev/null 2>&1
  redis-benchmark -p "$S" --dbnum $db -n 20000 -r 1000000 -P 64 -q set "ttl:__rand_int__" v EX 3600 >/dev/null 2>&1
done
redis-benchmark -p "$S" -n 200000 -r 100000000 -P 64 -q rpush big:list "element-__rand_int__" >/dev/null 2>&1
redis-benchmark -p "$S" -n 100000 -r 100000000 -P 64 -q hset big:hash "f-__rand_int__" "v-__rand_int__" >/dev/null 2>&1
redis-benchmark -p "$S" -n 50000 -r 100000000 -P 64 -q zadd big:zset "__rand_int__" "m-__rand_int__" >/dev/null 2>&1
redis-benchmark -p "$S" -n 20000 -r 100000000 -P 64 -q xadd events "*" kind click n "__rand_int__" >/dev/null 2>&1
# redis-cli unescapes quoted arguments only in the lines it reads, not on its command line.
printf 'SET "bin\\x00key" "\\xff\\xfe"\n' | redis-cli -p "$S" >/dev/null
echo "   $(redis-cli -p "$S" info keyspace | grep ^db | tr -d '\r' | tr '\n' ' ')"

echo "== starting live writers (counters, queues with blocking consumers, TTLs, MULTI, scripts, SPOP, XADD *, RENAME, binary keys)"
writer() { redis-benchmark -p "$S" -c 1 -P 1 -n 100000000 -r 1000 -q "$@" >/dev/null 2>&1 & PIDS+=($!); }
writer incr "counter:__rand_int__"
writer --dbnum 1 hincrby stats "field:__rand_int__" 1
writer lpush "queue:default" "job-__rand_int__"
writer rpop "queue:default"
writer set "session:__rand_int__" x EX 600
writer eval "redis.call('incr', KEYS[1]); redis.call('sadd', KEYS[2], ARGV[1]); return redis.call('spop', KEYS[2])" 2 "script:ctr" "script:set" "m-__rand_int__"
writer --dbnum 2 xadd "stream:__rand_int__" "*" f v
writer lpush "queue:jobs" "job-__rand_int__"
# Sidekiq-style consumers: BRPOP blocks while the queue is empty and is served by a later push.
writer brpop "queue:jobs" 1
writer brpop "queue:jobs" 1
# One connection sending transactions, renames and binary keys, as fast as the server answers
# (redis-cli reads them from a fifo; stopping the loop closes it and redis-cli exits).
txn_loop() {
  local i=0
  while :; do
    i=$(( (i + 1) % 1000 ))
    printf 'MULTI\nINCR tx:count\nLPUSH tx:log "entry %d"\nSET "bin:\\xff\\x00:%d" "\\x01\\x02" PX 60000\nEXEC\n' "$i" "$i"
    printf 'SET tmp:%d v\nRENAME tmp:%d done:%d\nPERSIST session:%012d\n' "$i" "$i" "$i" "$i"
  done
}
mkfifo "$BENCH_DIR/txn.fifo"
redis-cli -p "$S" < "$BENCH_DIR/txn.fifo" >/dev/null 2>&1 & PIDS+=($!)
txn_loop > "$BENCH_DIR/txn.fifo" & PIDS+=($!)
WRITER_PIDS=("${PIDS[@]: -12}")

echo "== ferry run examples/demo.lua (embedded journal in $BENCH_DIR/state); status every second"
FERRY_LOG=ferry=info "$FERRY" run examples/demo.lua \
  --set SOURCE_URL="redis://127.0.0.1:$S" --set TARGET_URL="redis://127.0.0.1:$T" \
  --set FERRY_STATE_DIR="$BENCH_DIR/state" &
FERRY_PID=$!
PIDS+=($FERRY_PID)
sleep "$SECS"

echo "== stopping the writers, then ferry (SIGINT: final fence)"
kill "${WRITER_PIDS[@]}" 2>/dev/null || true
wait "${WRITER_PIDS[@]}" 2>/dev/null || true
kill -INT "$FERRY_PID"
wait "$FERRY_PID"

echo "== the oracle's full comparison (every key, type, value, TTL within 1 s; both directions)"
"$ORACLE" "redis://127.0.0.1:$S" "redis://127.0.0.1:$T" 1000
