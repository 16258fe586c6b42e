#!/usr/bin/env bash
# Replay benchmark, in one run:
#  1. ferry replay throughput (common.sh replay_backlog): `ferry migrate --capture primary`
#     between an empty source and a target; the target is stalled with CLIENT PAUSE WRITE while
#     N writes (redis-benchmark -P 64) land in ferry's journal; ferry's RSS and the journal size
#     are taken once everything is journaled; then the target is unpaused and the time until it
#     has processed the N writes is measured (INFO stats total_commands_processed, polled every
#     10 ms).
#  2. a seed-style replayer (one command per round trip): redis-benchmark -c 1 -P 1 SET.
#  3. redis-benchmark -P 64 SET on the target (1 client, and 50 clients).
#  4. the ratios of 1 to 2 and 3.
#  5. replication lag p50/p99 at a steady write load: a fresh source, target and ferry; a fixed
#     rate SET load on the source plus a probe `SET lagprobe:<i> <t_send_us>` every 10 ms, found
#     on the target by polling EXISTS every 1 ms (scripts/bench/lag.py).
#  6. each ferry is stopped with SIGTERM and must exit 0 after its final fence.
#
# Usage: scripts/bench/replay.sh [N=1000000] [LAG_SECS=20]
# Environment (defaults): N=1000000 writes for step 1, TESTS=set,incr,lpush,hset (redis-benchmark
#   -t list; N is split evenly), VALUE_BYTES=3 (redis-benchmark -d), LAG_SECS=20, LOAD_RATE=5000
#   (writes/s during step 5), SEED_N=100000, P64_N=1000000, STALL_SECS=15 (replay with no progress
#   for this long counts as stalled), STOP_SECS=30 (longest wait for ferry to exit after SIGTERM),
#   FERRY=target/release/ferry, PLAN (run this plan with `ferry run` instead of `ferry migrate`;
#   it must take SOURCE_URL/TARGET_URL/FERRY_STATE_DIR from ferry.env), ONLY_REPLAY=1 (step 1
#   only), LIKE=1 (step 1 and, on the same target, its like-for-like baseline: redis-benchmark
#   with as many connections as ferry's replay shards (SHARDS, default 4), ferry's pipeline
#   depth (DEPTH, default 16384, its window per connection) and the same commands, counts, keys
#   and values; ORDER=ferry-first (default) or baseline-first), LOG_DIR (when set, ferry's logs and the lag samples are copied
#   there at exit).
# Exit code: 0 when every step completed; 1 when ferry stalled or did not exit 0 (the figures
# that could be measured are still printed); 2 when the benchmark itself could not run.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/common.sh

N=${1:-${N:-1000000}}
LAG_SECS=${2:-${LAG_SECS:-20}}
replay_settings # common.sh: TESTS, VALUE_BYTES, STALL_SECS, STOP_SECS, FERRY, SHARDS, per_test
LOAD_RATE=${LOAD_RATE:-5000}
SEED_N=${SEED_N:-100000}
P64_N=${P64_N:-1000000}
DEPTH=${DEPTH:-16384}
ORDER=${ORDER:-ferry-first}
[ -x "$FERRY" ] || cargo build --release --quiet

echo "ferry replay benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   $(redis-server --version)"
echo "   $("$FERRY" --version) ($FERRY built $(date -u -r "$FERRY" +%Y-%m-%dT%H:%M:%SZ); HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ', src/ modified'))"
if [ -n "$(find src -newer "$FERRY" -name '*.rs' 2>/dev/null | head -1)" ]; then
  echo "   note: src/ has files newer than $FERRY; run 'cargo build --release' to measure them"
fi
echo "   N=$N TESTS=$TESTS VALUE_BYTES=$VALUE_BYTES LAG_SECS=$LAG_SECS LOAD_RATE=$LOAD_RATE SEED_N=$SEED_N P64_N=$P64_N"

# baseline_like PORT: redis-benchmark on an emptied PORT with what step 1 replays there: the same
# tests, requests per test, keys (-r) and values (-d), over SHARDS connections DEPTH deep. Sets
# BASE_RATE to writes per second over all tests (requests / the sum of each test's time) and
# checks that the server processed them all.
baseline_like() {
  local port=$1 before after
  redis-cli -p "$port" flushall >/dev/null
  before=$(redis-cli -p "$port" info stats | tr -d '\r' | sed -n 's/^total_commands_processed://p')
  # redis-benchmark now and then aborts with "All clients disconnected" on this loaded
  # machine: once more on a flushed server, then give up (the run then fails its check).
  local try c0
  c0=$(cpu_s "$PID_tgt1")
  for try in 1 2; do
    redis-benchmark -p "$port" -c "$SHARDS" -P "$DEPTH" -r 100000 -d "$VALUE_BYTES" -t "$TESTS" \
      -n "$per_test" --csv >"$BENCH_DIR/base.csv" && break
    echo "   baseline attempt $try failed: $(tail -1 "$BENCH_DIR/base.csv")"
    redis-cli -p "$port" flushall >/dev/null
    before=$(redis-cli -p "$port" info stats | tr -d '\r' | sed -n 's/^total_commands_processed://p')
  done
  after=$(redis-cli -p "$port" info stats | tr -d '\r' | sed -n 's/^total_commands_processed://p')
  BASE_WRITES=$(( after - before - 1 ))
  BASE_TARGET_CPU=$(echo "$(cpu_s "$PID_tgt1") - $c0" | bc)
  BASE_RATE=$(awk -F'"' -v n="$per_test" 'NR > 1 && $4 > 0 { t += n / $4; k += n } END { if (t > 0) printf "%.0f", k / t }' "$BENCH_DIR/base.csv")
  [ "$BASE_WRITES" -ge $(( per_test * ntests )) ] ||
    FAILURES+=("baseline: the target processed $BASE_WRITES commands, fewer than $(( per_test * ntests ))")
  redis-cli -p "$port" flushall >/dev/null
  echo "   baseline redis-benchmark -c $SHARDS -P $DEPTH -t $TESTS -n $per_test: $BASE_RATE writes/s"
}

###############################################################################################
log "1. ferry replay throughput (target paused while $N writes are journaled)"
start_server src1
start_server tgt1
S=$PORT_src1; T=$PORT_tgt1
if [ -n "${LIKE:-}" ] && [ "$ORDER" = baseline-first ]; then baseline_like "$T"; fi
replay_backlog replay "$S" "$T" "$PID_tgt1"

if [ -n "${LIKE:-}" ]; then
  [ "$ORDER" = baseline-first ] || baseline_like "$T"
  echo
  echo "RESULT writes=$W connections=$SHARDS depth=$DEPTH ferry=$REPLAY_FIG baseline=$BASE_RATE" \
    "ratio=$(ratio "$REPLAY_RATE" "$BASE_RATE") peak_rss=$(mb "$AFTER_HWM_KB")MB" \
    "ferry_cpu=${REPLAY_FERRY_CPU}s ferry_target_cpu=${REPLAY_TARGET_CPU}s baseline_target_cpu=${BASE_TARGET_CPU}s" \
    "exit=$P1_EXIT order=$ORDER"
  [ "${#FAILURES[@]}" -eq 0 ] || { for f in "${FAILURES[@]}"; do echo "FAIL: $f" >&2; done; exit 1; }
  exit 0
fi

if [ -n "${ONLY_REPLAY:-}" ]; then
  echo
  echo "RESULT writes=$W ferry_replay=$REPLAY_FIG plan=${PLAN:-none} peak_rss=$(mb "$AFTER_HWM_KB")MB exit=$P1_EXIT"
  [ "${#FAILURES[@]}" -eq 0 ] || { for f in "${FAILURES[@]}"; do echo "FAIL: $f" >&2; done; exit 1; }
  exit 0
fi

###############################################################################################
log "2. seed-style replayer: one SET per round trip (redis-benchmark -c 1 -P 1, $SEED_N)"
redis-cli -p "$T" flushall >/dev/null
SEED_RATE=$(redis-benchmark -p "$T" -c 1 -P 1 -t set -n "$SEED_N" -r 100000 --csv | csv_rps)
echo "   $SEED_RATE/s"

log "3. redis-benchmark -P 64 SET on the target ($P64_N)"
redis-cli -p "$T" flushall >/dev/null
P64_RATE=$(redis-benchmark -p "$T" -c 1 -P 64 -t set -n "$P64_N" -r 100000 --csv | csv_rps)
echo "   1 client:   $P64_RATE/s"
redis-cli -p "$T" flushall >/dev/null
P64C50_RATE=$(redis-benchmark -p "$T" -c 50 -P 64 -t set -n "$P64_N" -r 100000 --csv | csv_rps)
echo "   50 clients: $P64C50_RATE/s"

R_SEED=$(ratio "$REPLAY_RATE" "$SEED_RATE")
R_P64=$(ratio "$REPLAY_RATE" "$P64_RATE")
R_P64C50=$(ratio "$REPLAY_RATE" "$P64C50_RATE")

###############################################################################################
log "5. lag at a steady load: $LOAD_RATE SET/s plus a probe every 10 ms for ${LAG_SECS}s"
start_server src2
start_server tgt2
S2=$PORT_src2; T2=$PORT_tgt2
start_ferry lag "$S2" "$T2"
P5_PID=$FERRY_PID; P5_LOG=$FERRY_LOG
python3 "$LAG_PY" load --port "$S2" --rate "$LOAD_RATE" --duration $(( LAG_SECS + 4 )) \
  >"$BENCH_DIR/load.out" 2>&1 &
LOAD_PID=$!
BG_PIDS+=("$LOAD_PID")
sleep 2 # warm-up
c0=$(cpu_s "$P5_PID"); w0=$(now)
PROBE_OUT=$(python3 "$LAG_PY" probe --source "$S2" --target "$T2" --duration "$LAG_SECS" \
  --interval-ms 10 --poll-ms 1 --samples "$BENCH_DIR/lag-samples.txt") || true
c1=$(cpu_s "$P5_PID"); w1=$(now)
echo "   $PROBE_OUT"
LOAD_RC=0; wait "$LOAD_PID" || LOAD_RC=$?
[ "$LOAD_RC" = 0 ] || die "the load generator failed: $(cat "$BENCH_DIR/load.out")"
echo "   $(cat "$BENCH_DIR/load.out")"
LAG_P50=$(kv lag_p50_ms <<<"$PROBE_OUT"); LAG_P99=$(kv lag_p99_ms <<<"$PROBE_OUT")
LAG_MAX=$(kv lag_max_ms <<<"$PROBE_OUT"); PROBES_MISSING=$(kv missing <<<"$PROBE_OUT")
[ -n "$LAG_P50" ] || die "lag.py probe failed"
[ "$PROBES_MISSING" = 0 ] || FAILURES+=("$PROBES_MISSING lag probes never reached the target")
FERRY_CPU=$(awk -v a="$c0" -v b="$c1" -v s="$(elapsed "$w0" "$w1")" \
  'BEGIN { printf "%.0f", 100 * (b - a) / s }')
LAG_HWM_KB=$(proc_kb "$P5_PID" VmHWM)
echo "   ferry CPU during the probe: ${FERRY_CPU}% of one core; VmHWM $(mb "$LAG_HWM_KB") MB"
echo "   ferry's own lag_ms in status lines: max $(grep 'Status\.' "$P5_LOG" | sed -n 's/.* lag_ms=\([0-9]*\).*/\1/p' | sort -n | tail -1) ms"
log "   stopping ferry (SIGTERM)"
stop_ferry "$P5_PID"; P5_EXIT=$STOP_RC
echo "   exit: $P5_EXIT; $(grep -o 'Migration stopped at the final fence.*' "$P5_LOG" || echo 'no final-fence line')"
[ "$P5_EXIT" = 0 ] || FAILURES+=("ferry (lag run) after SIGTERM: exit $P5_EXIT (waited ${STOP_SECS}s)")

###############################################################################################
echo
printf '%-62s %s\n' "figure" "value"
printf '%-62s %s\n' "ferry replay, target unpaused with $W writes journaled" \
  "$([ "$REPLAY_STATUS" = done ] && echo "$REPLAY_RATE cmd/s (${REPLAY_S}s)" || echo "stalled after $REPLAY_APPLIED of $W")"
printf '%-62s %s\n' "seed-style replayer (redis-benchmark -c 1 -P 1 SET)" "$SEED_RATE cmd/s"
printf '%-62s %s\n' "redis-benchmark -c 1 -P 64 SET" "$P64_RATE cmd/s"
printf '%-62s %s\n' "redis-benchmark -c 50 -P 64 SET" "$P64C50_RATE cmd/s"
printf '%-62s %s\n' "ratio ferry / seed-style" "$R_SEED"
printf '%-62s %s\n' "ratio ferry / redis-benchmark -c 1 -P 64" "$R_P64"
printf '%-62s %s\n' "ratio ferry / redis-benchmark -c 50 -P 64" "$R_P64C50"
printf '%-62s %s\n' "ferry RSS, target stalled, all journaled (VmRSS / VmHWM)" \
  "$(mb "$STALL_RSS_KB") / $(mb "$STALL_HWM_KB") MB"
printf '%-62s %s\n' "ferry peak RSS including the replay (VmHWM)" "$(mb "$AFTER_HWM_KB") MB"
printf '%-62s %s\n' "journal on disk for $W writes" "$JOURNAL_MB MB"
printf '%-62s %s\n' "source write rate with MONITOR attached (-c 50 -P 64)" "$GEN_RATE cmd/s"
printf '%-62s %s\n' "lag p50 / p99 / max at $LOAD_RATE writes/s (probe every 10 ms)" \
  "$LAG_P50 / $LAG_P99 / $LAG_MAX ms"
printf '%-62s %s\n' "ferry CPU at $LOAD_RATE writes/s" "${FERRY_CPU}% of a core"
printf '%-62s %s\n' "ferry exit after SIGTERM (replay run, lag run)" "$P1_EXIT, $P5_EXIT"
echo
echo "RESULT writes=$W ferry_replay=$REPLAY_FIG seed=$SEED_RATE p64=$P64_RATE p64_c50=$P64C50_RATE" \
  "ratio_seed=$R_SEED ratio_p64=$R_P64 stall_rss=$(mb "$STALL_RSS_KB")MB stall_hwm=$(mb "$STALL_HWM_KB")MB" \
  "peak_rss=$(mb "$AFTER_HWM_KB")MB journal=${JOURNAL_MB}MB lag_p50=${LAG_P50}ms lag_p99=${LAG_P99}ms" \
  "exit=$P1_EXIT,$P5_EXIT"
if [ "${#FAILURES[@]}" -gt 0 ]; then
  for f in "${FAILURES[@]}"; do echo "FAIL: $f" >&2; done
  exit 1
fi
