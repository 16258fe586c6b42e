#!/usr/bin/env bash
# Backup benchmark: the same dataset written to an RDB file by `redis-cli --rdb` (native: the
# server's own fork-and-save, streamed over a replication link) and by `ferry backup` (SCAN,
# DUMP, PEXPIRETIME); then ferry's file is loaded into a fresh redis-server and counted.
#
# Usage: [FERRY_ARGS="--workers 1"] scripts/bench/backup.sh [KEYS=200000] [VALUE_BYTES=1500]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/common.sh

KEYS=${1:-200000}
VALUE=${2:-1500}
FERRY=${FERRY:-target/release/ferry}
[ -x "$FERRY" ] || cargo build --release --quiet

start_server source
S=$PORT_source

echo "== generating $KEYS keys of $VALUE bytes plus big keys on 127.0.0.1:$S"
redis-benchmark -p "$S" -t set -n "$KEYS" -r 1000000000 -d "$VALUE" -P 64 -q >/dev/null
redis-benchmark -p "$S" -n 500000 -r 1000000000 -P 64 -q rpush big:list "element-__rand_int__" >/dev/null
redis-benchmark -p "$S" -n 200000 -r 1000000000 -P 64 -q hset big:hash "f-__rand_int__" "value-__rand_int__" >/dev/null
redis-cli -p "$S" -n 1 set in-db1 x >/dev/null
KEYSPACE=$(redis-cli -p "$S" info keyspace | grep ^db | tr -d '\r' | tr '\n' ' ')
USED=$(redis-cli -p "$S" info memory | grep '^used_memory_human' | cut -d: -f2 | tr -d '\r')
echo "   source: $KEYSPACE($USED)"
TOTAL=$(( $(redis-cli -p "$S" -n 0 dbsize) + $(redis-cli -p "$S" -n 1 dbsize) ))

native() {
  echo "== native: redis-cli --rdb"
  t0=$(now)
  redis-cli -p "$S" --rdb "$BENCH_DIR/native.rdb" >/dev/null 2>&1
  t1=$(now)
  NATIVE=$(elapsed "$t0" "$t1")
  NATIVE_MB=$(echo "scale=1; $(stat -c %s "$BENCH_DIR/native.rdb") / 1000000" | bc)
  echo "   native: ${NATIVE}s, ${NATIVE_MB} MB"
}

ferry() {
  echo "== ferry backup"
  t0=$(now)
  /usr/bin/time -f '%M' -o "$BENCH_DIR/rss" "$FERRY" backup \
    --source "redis://127.0.0.1:$S" --out "$BENCH_DIR/ferry.rdb" ${FERRY_ARGS:-} 2>"$BENCH_DIR/ferry.err"
  t1=$(now)
  FERRY_S=$(elapsed "$t0" "$t1")
  tail -1 "$BENCH_DIR/ferry.err" | sed 's/^/   /'
  FERRY_MB=$(echo "scale=1; $(stat -c %s "$BENCH_DIR/ferry.rdb") / 1000000" | bc)
  RSS_MB=$(echo "scale=1; $(cat "$BENCH_DIR/rss") / 1024" | bc)
}

# ORDER=ferry-first runs ferry first (scripts/bench/alternate.py alternates it).
if [ "${ORDER:-native-first}" = ferry-first ]; then ferry; native; else native; ferry; fi

echo "== loading ferry's file into a fresh redis-server"
start_server restored --dbfilename ferry.rdb --dir "$BENCH_DIR"
R=$PORT_restored
while redis-cli -p "$R" info persistence | grep -q 'loading:1'; do sleep 0.05; done
for db in 0 1; do
  a=$(redis-cli -p "$S" -n $db dbsize); b=$(redis-cli -p "$R" -n $db dbsize)
  [ "$a" = "$b" ] || { echo "db$db: source has $a keys, restored $b" >&2; exit 1; }
done

RATIO=$(echo "scale=2; $FERRY_S / $NATIVE" | bc)
KPS=$(echo "$TOTAL / $FERRY_S" | bc)
MBPS=$(echo "scale=1; $FERRY_MB / $FERRY_S" | bc)
echo
echo "RESULT keys=$TOTAL native=${NATIVE}s native_file=${NATIVE_MB}MB ferry=${FERRY_S}s ferry_file=${FERRY_MB}MB" \
  "ferry_rate=${KPS}keys/s ferry_throughput=${MBPS}MB/s ratio=${RATIO}x peak_rss=${RSS_MB}MB order=${ORDER:-native-first}"
