#!/usr/bin/env bash
# Redis Cluster benchmarks (issue 15), each measuring ferry and its comparison in the same run:
#
#  snapshot [KEYS=300000] [VALUE_BYTES=1500]: a 3-master source cluster filled with KEYS strings
#    over all 16384 slots (cluster_fill.py) plus big keys on every shard, copied
#    (a) by native per-shard replication: one plain redis-server per source primary, the three
#    REPLICAOF sent together, timed until every replica has finished its full sync (diskless,
#    no delay); a non-cluster replica loads a cluster primary's RDB, db 0 only;
#    (b) by `ferry snapshot --source <a source node> --target <a target node>` toward a second
#    3-master cluster, timed to exit.
#    Checks that the keys summed over the primaries (replicas) are the same on all three sides.
#    ORDER=native-first (default) or ferry-first.
#    RESULT keys native ferry ratio peak_rss and CPU seconds per side (sums over the processes).
#
#  replay [N=1000000]: ferry's replay throughput toward a 3-master cluster against toward one
#    standalone primary, the same write load: common.sh replay_backlog (replay.sh's step 1) on
#    each, a fresh standalone source each. TESTS defaults to set,incr here: redis-benchmark's
#    LPUSH and HSET write one key each (mylist, myhash), one slot, which would load one of the
#    three primaries only. ferry opens one connection per cluster primary; the standalone
#    target gets SHARDS connections (default 3, as many). ORDER=cluster-first (default) or
#    single-first.
#    RESULT writes cluster single ratio (cluster / single) and CPU seconds.
#
# Environment: FERRY=target/release/ferry (built when missing); BIG (list elements, over the
# three shards' lists, as in snapshot.sh's one list; default 500000; the other big keys in
# proportion); the replay settings of
# common.sh's replay_settings (TESTS, VALUE_BYTES, STALL_SECS, STOP_SECS).
# Exit code: 0 when the run completed and its checks passed; 1 when a check failed; 2 when the
# benchmark itself could not run. Every process it starts is stopped by PID at exit.
# shellcheck disable=SC2154 # PORT_x, PID_x (start_server) and x_PORTS, x_PIDS (start_cluster) are set by printf -v
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/common.sh

MODE=${1:-}
shift || true

# start_cluster NAME: three cluster-enabled masters NAME1..NAME3 (start_server, a cluster bus on
# a free port of its own rather than port + 10000), the slots split evenly by
# `redis-cli --cluster create`; waits for cluster_state:ok on every node. Sets NAME_PORTS and
# NAME_PIDS ("p1 p2 p3").
start_cluster() {
  local name=$1 i var ports=() pids=() addrs=() port
  for i in 1 2 3; do
    start_server "$name$i" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 5000 --cluster-port "$(free_port)"
    var=PORT_$name$i; ports+=("${!var}"); addrs+=("127.0.0.1:${!var}")
    var=PID_$name$i; pids+=("${!var}")
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
    >"$BENCH_DIR/$name-create.log" 2>&1 ||
    die "redis-cli --cluster create failed: $(tail -3 "$BENCH_DIR/$name-create.log"); node logs: $(tail -qn 2 "$BENCH_DIR/$name"?/log)"
  cluster_ok() {
    for port in "${ports[@]}"; do
      redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' || return 1
    done
  }
  wait_until 30 "cluster $name to reach cluster_state:ok" cluster_ok
  printf -v "${name}_PORTS" '%s' "${ports[*]}"
  printf -v "${name}_PIDS" '%s' "${pids[*]}"
}

# owner_port KEY PORT...: the port of the primary serving KEY's slot (from each node's own
# `myself` line of CLUSTER NODES), so that redis-benchmark, which does not follow MOVED for
# custom commands, can write a big key on its owner.
owner_port() {
  local key=$1 port slot; shift
  slot=$(redis-cli -p "$1" cluster keyslot "$key")
  for port in "$@"; do
    if redis-cli -p "$port" cluster nodes | grep myself | cut -d' ' -f9- | tr ' ' '\n' |
      awk -F- -v s="$slot" '{ hi = ($2 == "" ? $1 : $2) } $1 <= s && s <= hi { found = 1 } END { exit !found }'; then
      echo "$port"; return
    fi
  done
  die "no primary serves slot $slot of $key"
}

# tag_on PORT PORT...: a hash tag (a, b, c, ...) whose slot the primary at PORT serves.
tag_on() {
  local want=$1 tag; shift
  for tag in {a..z}; do
    [ "$(owner_port "{$tag}" "$@")" = "$want" ] && { echo "$tag"; return; }
  done
  die "no hash tag a-z lands on the primary at port $want"
}

###############################################################################################
snapshot_bench() {
  local keys=${1:-300000} value=${2:-1500}
  local big=${BIG:-500000}
  FERRY=${FERRY:-target/release/ferry}
  [ -x "$FERRY" ] || cargo build --release --quiet
  start_cluster src
  start_cluster tgt
  local -a sp tp spid tpid np=() npid=()
  read -ra sp <<<"$src_PORTS"; read -ra spid <<<"$src_PIDS"
  read -ra tp <<<"$tgt_PORTS"; read -ra tpid <<<"$tgt_PIDS"
  local i var
  for i in 1 2 3; do
    start_server "native$i"
    var=PORT_native$i; np+=("${!var}")
    var=PID_native$i; npid+=("${!var}")
  done
  echo "   $(redis-server --version | cut -d' ' -f1-3); source cluster ${sp[*]}, target cluster ${tp[*]}, native replicas ${np[*]}"

  log "generating $keys keys of $value bytes over all slots of the source cluster, plus big keys on every shard"
  local filled
  filled=$(python3 scripts/bench/cluster_fill.py --port "${sp[0]}" --keys "$keys" --value-bytes "$value")
  echo "   keys per primary (port:keys): $filled"
  # snapshot.sh's big keys, in the same total sizes: a list and a hash on every shard (under a
  # hash tag that shard owns), a set, a zset and a stream; each written by redis-benchmark on
  # the primary that owns its slot (it does not follow MOVED for custom commands).
  local tag port
  for port in "${sp[@]}"; do
    tag=$(tag_on "$port" "${sp[@]}")
    redis-benchmark -p "$port" -n $(( big / 3 )) -r 1000000000 -P 64 -q rpush "big:list:{$tag}" "element-__rand_int__" >/dev/null
    redis-benchmark -p "$port" -n $(( big * 2 / 15 )) -r 1000000000 -P 64 -q hset "big:hash:{$tag}" "f-__rand_int__" "value-__rand_int__" >/dev/null
  done
  port=$(owner_port big:set "${sp[@]}")
  redis-benchmark -p "$port" -n $(( big / 5 )) -r 1000000000 -P 64 -q sadd big:set "m-__rand_int__" >/dev/null
  port=$(owner_port big:zset "${sp[@]}")
  redis-benchmark -p "$port" -n $(( big / 5 )) -r 1000000000 -P 64 -q zadd big:zset "__rand_int__" "m-__rand_int__" >/dev/null
  port=$(owner_port big:stream "${sp[@]}")
  redis-benchmark -p "$port" -n $(( big / 10 )) -r 1000000000 -P 64 -q xadd big:stream "*" f "__rand_int__" >/dev/null
  local per_shard=""
  for port in "${sp[@]}"; do per_shard+="$(redis-cli -p "$port" dbsize) "; done
  echo "   source: $(dbsize_sum "${sp[@]}") keys (per primary: ${per_shard% })"

  native() {
    log "native per-shard replication (3 replicas, REPLICAOF together, diskless full syncs)"
    local s0 r0 t0 t1 j
    s0=$(cpu_sum "${spid[@]}"); r0=$(cpu_sum "${npid[@]}")
    t0=$(now)
    for j in 0 1 2; do redis-cli -p "${np[$j]}" replicaof 127.0.0.1 "${sp[$j]}" >/dev/null; done
    synced() {
      local p
      for p in "${np[@]}"; do
        redis-cli -p "$p" info replication | tr -d '\r' | grep -q '^master_link_status:up' || return 1
        redis-cli -p "$p" info replication | tr -d '\r' | grep -q '^master_sync_in_progress:0' || return 1
      done
    }
    until synced; do sleep 0.01; done
    t1=$(now)
    NATIVE=$(elapsed "$t0" "$t1")
    NATIVE_SRC_CPU=$(echo "$(cpu_sum "${spid[@]}") - $s0" | bc)
    NATIVE_DST_CPU=$(echo "$(cpu_sum "${npid[@]}") - $r0" | bc)
    echo "   native: ${NATIVE}s (CPU: source primaries ${NATIVE_SRC_CPU}s, replicas ${NATIVE_DST_CPU}s)"
    for j in 0 1 2; do redis-cli -p "${np[$j]}" replicaof no one >/dev/null; done
  }

  ferry() {
    log "ferry snapshot, cluster to cluster"
    local s0 d0 t0 t1 rss_kb user sys
    s0=$(cpu_sum "${spid[@]}"); d0=$(cpu_sum "${tpid[@]}")
    t0=$(now)
    /usr/bin/time -f '%M %U %S' -o "$BENCH_DIR/rss" "$FERRY" snapshot --quiet \
      --source "redis://127.0.0.1:${sp[0]}" --target "redis://127.0.0.1:${tp[0]}" 2>"$BENCH_DIR/ferry.err" ||
      { tail -5 "$BENCH_DIR/ferry.err" >&2; echo "ferry snapshot failed" >&2; exit 1; }
    t1=$(now)
    FERRY_S=$(elapsed "$t0" "$t1")
    tail -1 "$BENCH_DIR/ferry.err" | sed 's/^/   /'
    FERRY_SRC_CPU=$(echo "$(cpu_sum "${spid[@]}") - $s0" | bc)
    FERRY_DST_CPU=$(echo "$(cpu_sum "${tpid[@]}") - $d0" | bc)
    read -r rss_kb user sys <"$BENCH_DIR/rss"
    RSS_MB=$(echo "scale=1; $rss_kb / 1024" | bc)
    FERRY_CPU=$(echo "$user + $sys" | bc)
    echo "   ferry: ${FERRY_S}s (CPU: source primaries ${FERRY_SRC_CPU}s, target primaries ${FERRY_DST_CPU}s, ferry ${FERRY_CPU}s)"
  }

  # ORDER=ferry-first runs ferry before native replication (alternate.py alternates it, so
  # that neither always runs on a cooler machine).
  if [ "${ORDER:-native-first}" = ferry-first ]; then ferry; native; else native; ferry; fi

  local a b c
  a=$(dbsize_sum "${sp[@]}"); b=$(dbsize_sum "${tp[@]}"); c=$(dbsize_sum "${np[@]}")
  [ "$a" = "$b" ] || { echo "the source cluster has $a keys, the target cluster $b" >&2; exit 1; }
  [ "$a" = "$c" ] || { echo "the source cluster has $a keys, the native replicas $c" >&2; exit 1; }

  echo
  echo "RESULT keys=$a native=${NATIVE}s ferry=${FERRY_S}s ratio=$(echo "scale=2; $FERRY_S / $NATIVE" | bc)x" \
    "peak_rss=${RSS_MB}MB native_source_cpu=${NATIVE_SRC_CPU}s native_replica_cpu=${NATIVE_DST_CPU}s" \
    "ferry_source_cpu=${FERRY_SRC_CPU}s ferry_target_cpu=${FERRY_DST_CPU}s ferry_cpu=${FERRY_CPU}s" \
    "order=${ORDER:-native-first}"
}

###############################################################################################
replay_bench() {
  N=${1:-${N:-1000000}}
  TESTS=${TESTS:-set,incr}
  SHARDS=${SHARDS:-3}
  replay_settings
  ORDER=${ORDER:-cluster-first}
  [ -x "$FERRY" ] || cargo build --release --quiet
  echo "   $(redis-server --version | cut -d' ' -f1-3); $("$FERRY" --version); N=$N TESTS=$TESTS VALUE_BYTES=$VALUE_BYTES"

  # keep SIDE: replay_backlog's figures for SIDE (cluster, single), before the other side's.
  local -A fig
  keep() {
    fig[$1.w]=$W; fig[$1.rate]=$REPLAY_RATE; fig[$1.fig]=$REPLAY_FIG; fig[$1.exit]=$P1_EXIT
    fig[$1.ferry_cpu]=$REPLAY_FERRY_CPU; fig[$1.target_cpu]=$REPLAY_TARGET_CPU
    fig[$1.hwm]=$(mb "$AFTER_HWM_KB")
  }
  cluster_side() {
    log "ferry replay toward a 3-master cluster (targets paused while $N writes are journaled)"
    start_server csrc
    start_cluster ctgt
    replay_backlog cluster "$PORT_csrc" "$ctgt_PORTS" "$ctgt_PIDS"
    keep cluster
  }
  single_side() {
    log "ferry replay toward one standalone primary, $SHARDS connections (target paused while $N writes are journaled)"
    start_server ssrc
    start_server stgt
    replay_backlog single "$PORT_ssrc" "$PORT_stgt" "$PID_stgt"
    keep single
  }
  if [ "$ORDER" = single-first ]; then single_side; cluster_side; else cluster_side; single_side; fi

  [ "${fig[cluster.w]}" = "${fig[single.w]}" ] ||
    FAILURES+=("the two loads differ: ${fig[cluster.w]} writes toward the cluster, ${fig[single.w]} toward the single primary")
  echo
  echo "RESULT writes=${fig[cluster.w]} cluster=${fig[cluster.fig]}writes/s single=${fig[single.fig]}writes/s" \
    "ratio=$(ratio "${fig[cluster.rate]}" "${fig[single.rate]}") single_connections=$SHARDS" \
    "cluster_ferry_cpu=${fig[cluster.ferry_cpu]}s single_ferry_cpu=${fig[single.ferry_cpu]}s" \
    "cluster_target_cpu=${fig[cluster.target_cpu]}s single_target_cpu=${fig[single.target_cpu]}s" \
    "cluster_peak_rss=${fig[cluster.hwm]}MB single_peak_rss=${fig[single.hwm]}MB" \
    "exit=${fig[cluster.exit]},${fig[single.exit]} order=$ORDER"
  if [ "${#FAILURES[@]}" -gt 0 ]; then
    for f in "${FAILURES[@]}"; do echo "FAIL: $f" >&2; done
    exit 1
  fi
}

case "$MODE" in
  snapshot) snapshot_bench "$@" ;;
  replay) replay_bench "$@" ;;
  *) echo "usage: scripts/bench/cluster.sh snapshot [KEYS=300000] [VALUE_BYTES=1500] | replay [N=1000000]" >&2; exit 2 ;;
esac
