#!/usr/bin/env bash
# Snapshot benchmark: the same dataset copied by native replication (REPLICAOF full sync,
# diskless, no delay) and by `ferry snapshot`, in the same run; prints times, the ratio and
# ferry's peak RSS.
#
# Usage: scripts/bench/snapshot.sh [KEYS=200000] [VALUE_BYTES=1500]
# Environment: ORDER=native-first (default) or ferry-first; FERRY=target/release/ferry;
# SOURCE_BIN and TARGET_BIN: the source's and the targets' redis-server (an engine of
# `make servers`, e.g. ~/.cache/ferry/servers/redis-6.2.16/redis-server); native replication
# then runs between the same two versions as ferry.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/common.sh

KEYS=${1:-200000}
VALUE=${2:-1500}
FERRY=${FERRY:-target/release/ferry}
[ -x "$FERRY" ] || cargo build --release --quiet

BIN=${SOURCE_BIN:-redis-server} start_server source
BIN=${TARGET_BIN:-redis-server} start_server native
BIN=${TARGET_BIN:-redis-server} start_server target
echo "   source: $("${SOURCE_BIN:-redis-server}" --version | cut -d' ' -f1-3); targets: $("${TARGET_BIN:-redis-server}" --version | cut -d' ' -f1-3)"
S=$PORT_source

echo "== generating $KEYS keys of $VALUE bytes plus big keys on 127.0.0.1:$S"
redis-benchmark -p "$S" -t set -n "$KEYS" -r 1000000000 -d "$VALUE" -P 64 -q >/dev/null
redis-benchmark -p "$S" -n 500000 -r 1000000000 -P 64 -q rpush big:list "element-__rand_int__" >/dev/null
redis-benchmark -p "$S" -n 200000 -r 1000000000 -P 64 -q hset big:hash "f-__rand_int__" "value-__rand_int__" >/dev/null
redis-benchmark -p "$S" -n 100000 -r 1000000000 -P 64 -q sadd big:set "m-__rand_int__" >/dev/null
redis-benchmark -p "$S" -n 100000 -r 1000000000 -P 64 -q zadd big:zset "__rand_int__" "m-__rand_int__" >/dev/null
redis-benchmark -p "$S" -n 50000 -r 1000000000 -P 64 -q xadd big:stream "*" f "__rand_int__" >/dev/null
redis-cli -p "$S" -n 1 set in-db1 x >/dev/null
KEYSPACE=$(redis-cli -p "$S" info keyspace | grep ^db | tr -d '\r' | tr '\n' ' ')
USED=$(redis-cli -p "$S" info memory | grep '^used_memory_human' | cut -d: -f2 | tr -d '\r')
echo "   source: $KEYSPACE($USED)"

native() {
  echo "== native replication (REPLICAOF, diskless full sync)"
  N=$PORT_native
  local s0 r0; s0=$(cpu_s "$PID_source"); r0=$(cpu_s "$PID_native")
  t0=$(now)
  redis-cli -p "$N" replicaof 127.0.0.1 "$S" >/dev/null
  until redis-cli -p "$N" info replication | grep -q 'master_link_status:up'; do sleep 0.01; done
  while redis-cli -p "$N" info replication | grep -q 'master_sync_in_progress:1'; do sleep 0.01; done
  t1=$(now)
  NATIVE=$(elapsed "$t0" "$t1")
  NATIVE_SRC_CPU=$(echo "$(cpu_s "$PID_source") - $s0" | bc)
  NATIVE_DST_CPU=$(echo "$(cpu_s "$PID_native") - $r0" | bc)
  echo "   native: ${NATIVE}s (CPU: source ${NATIVE_SRC_CPU}s, replica ${NATIVE_DST_CPU}s)"
  redis-cli -p "$N" replicaof no one >/dev/null
}

ferry() {
  echo "== ferry snapshot"
  T=$PORT_target
  local s0 d0; s0=$(cpu_s "$PID_source"); d0=$(cpu_s "$PID_target")
  t0=$(now)
  /usr/bin/time -f '%M %U %S' -o "$BENCH_DIR/rss" "$FERRY" snapshot --quiet \
    --source "redis://127.0.0.1:$S" --target "redis://127.0.0.1:$T" 2>"$BENCH_DIR/ferry.err"
  t1=$(now)
  FERRY_S=$(elapsed "$t0" "$t1")
  tail -1 "$BENCH_DIR/ferry.err" | sed 's/^/   /'
  FERRY_SRC_CPU=$(echo "$(cpu_s "$PID_source") - $s0" | bc)
  FERRY_DST_CPU=$(echo "$(cpu_s "$PID_target") - $d0" | bc)
  read -r rss_kb user sys <"$BENCH_DIR/rss"
  RSS_MB=$(echo "scale=1; $rss_kb / 1024" | bc)
  FERRY_CPU=$(echo "$user + $sys" | bc)
  echo "   CPU: source ${FERRY_SRC_CPU}s, target ${FERRY_DST_CPU}s, ferry ${FERRY_CPU}s"
}

# ORDER=ferry-first runs ferry before native replication (scripts/bench/alternate.py alternates
# it, so that neither always runs on a cooler machine).
if [ "${ORDER:-native-first}" = ferry-first ]; then ferry; native; else native; ferry; fi

for db in 0 1; do
  a=$(redis-cli -p "$S" -n $db dbsize); b=$(redis-cli -p "$T" -n $db dbsize)
  c=$(redis-cli -p "$PORT_native" -n $db dbsize)
  [ "$a" = "$b" ] || { echo "db$db: source has $a keys, target $b" >&2; exit 1; }
  [ "$a" = "$c" ] || { echo "db$db: source has $a keys, native replica $c" >&2; exit 1; }
done

RATIO=$(echo "scale=2; $FERRY_S / $NATIVE" | bc)
echo
echo "RESULT keys=$(redis-cli -p "$S" dbsize) native=${NATIVE}s ferry=${FERRY_S}s ratio=${RATIO}x peak_rss=${RSS_MB}MB" \
  "native_source_cpu=${NATIVE_SRC_CPU}s native_replica_cpu=${NATIVE_DST_CPU}s" \
  "ferry_source_cpu=${FERRY_SRC_CPU}s ferry_target_cpu=${FERRY_DST_CPU}s ferry_cpu=${FERRY_CPU}s order=${ORDER:-native-first}"
