#!/usr/bin/env bash
# Replay benchmark, in one run:
#  1. ferry replay throughput: `ferry migrate --capture primary` between an empty source and a
#     target; the target is stalled with CLIENT PAUSE WRITE while N writes (redis-benchmark -P 64)
#     land in ferry's journal; ferry's RSS and the journal size are taken once everything is
#     journaled; then the target is unpaused and the time until it has processed the N writes is
#     measured (INFO stats total_commands_processed, polled every 10 ms).
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
TESTS=${TESTS:-set,incr,lpush,hset}
VALUE_BYTES=${VALUE_BYTES:-3}
LOAD_RATE=${LOAD_RATE:-5000}
SEED_N=${SEED_N:-100000}
P64_N=${P64_N:-1000000}
STALL_SECS=${STALL_SECS:-15}
STOP_SECS=${STOP_SECS:-30}
FERRY=${FERRY:-target/release/ferry}
SHARDS=${SHARDS:-4}
DEPTH=${DEPTH:-16384}
ORDER=${ORDER:-ferry-first}
LAG_PY=scripts/bench/lag.py
[ -x "$FERRY" ] || cargo build --release --quiet

FERRY_PIDS=()
BG_PIDS=()
FAILURES=()

# ferry is not in common.sh's PIDS: a stuck ferry ignores SIGTERM for a long time (its final
# fence waits for replay), so it is killed here first, by PID, with SIGKILL after a grace period.
replay_cleanup() {
  local pid
  for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${FERRY_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${FERRY_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ -n "${LOG_DIR:-}" ]; then
    mkdir -p "$LOG_DIR" && cp "$BENCH_DIR"/*.log "$BENCH_DIR"/*.txt "$LOG_DIR"/ 2>/dev/null || true
  fi
  cleanup
}
trap replay_cleanup EXIT

die() { echo "replay.sh: $*" >&2; exit 2; }
log() { echo "== $*"; }

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 50 ms, fails clearly on timeout.
wait_until() {
  local secs=$1 what=$2; shift 2
  local deadline; deadline=$(( $(date +%s) + secs ))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.05
  done
}

# status_field LOG FIELD: FIELD of ferry's last status line.
status_field() {
  { grep 'Status\.' "$1" || true; } | tail -1 | sed -n "s/.* $2=\"\{0,1\}\([^ \"]*\)\"\{0,1\}.*/\1/p"
}

journaled() { # LOG: entries journaled (pending + applied) per the last status line
  local p a; p=$(status_field "$1" pending); a=$(status_field "$1" applied)
  echo $(( ${p:-0} + ${a:-0} ))
}

# start_ferry NAME SOURCE_PORT TARGET_PORT: sets FERRY_PID, FERRY_LOG, FERRY_STATE.
start_ferry() {
  FERRY_STATE="$BENCH_DIR/$1-state"
  FERRY_LOG="$BENCH_DIR/$1-ferry.log"
  if [ -n "${PLAN:-}" ]; then
    # A plan without a cutover phase replays until SIGTERM, like `ferry migrate`.
    "$FERRY" run "$PLAN" --set SOURCE_URL="redis://127.0.0.1:$2" \
      --set TARGET_URL="redis://127.0.0.1:$3" --set FERRY_STATE_DIR="$FERRY_STATE" 2>"$FERRY_LOG" &
  else
    "$FERRY" migrate --source "redis://127.0.0.1:$2" --target "redis://127.0.0.1:$3" \
      --state-dir "$FERRY_STATE" --capture primary --replay-shards "$SHARDS" 2>"$FERRY_LOG" &
  fi
  FERRY_PID=$!
  FERRY_PIDS+=("$FERRY_PID")
  ferry_ready() {
    kill -0 "$FERRY_PID" 2>/dev/null || { tail -5 "$FERRY_LOG" >&2; die "ferry exited early"; }
    grep -q 'Snapshot reads done' "$FERRY_LOG" && [ "$(status_field "$FERRY_LOG" phase)" = replay ]
  }
  # The snapshot of an empty source is instant; the first status line in phase "replay" shows
  # that its done-marker went through replay, so later writes are plain replay.
  wait_until 30 "ferry's snapshot to finish (log: $FERRY_LOG)" ferry_ready
}

# stop_ferry PID: SIGTERM, then waits up to STOP_SECS; sets STOP_RC to the exit code or "hung"
# (then SIGKILL). Not for $(...): only this shell can wait for its children.
stop_ferry() {
  local pid=$1
  STOP_RC=0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $(( STOP_SECS * 10 ))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    STOP_RC=hung
    return
  fi
  wait "$pid" || STOP_RC=$?
}

proc_kb() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
csv_rps() { awk -F'"' 'NR == 2 { printf "%.0f", $4 }'; }
kv() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else print "n/a" }'; }

# Write commands that the redis-benchmark tests issue (the sum of their calls on the source is
# the exact number of writes: redis-benchmark rounds -n up to a multiple of -P per test).
WRITE_CMDS='set|incr|lpush|rpush|lpop|rpop|sadd|spop|hset|zadd|zpopmin|mset|xadd'
source_writes() {
  redis-cli -p "$1" info commandstats | tr -d '\r' |
    awk -F'[_:,=]' -v re="^($WRITE_CMDS)\$" '$1 == "cmdstat" && $2 ~ re { n += $4 } END { print n + 0 }'
}

echo "ferry replay benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   $(redis-server --version)"
echo "   $("$FERRY" --version) ($FERRY built $(date -u -r "$FERRY" +%Y-%m-%dT%H:%M:%SZ); HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ', src/ modified'))"
if [ -n "$(find src -newer "$FERRY" -name '*.rs' 2>/dev/null | head -1)" ]; then
  echo "   note: src/ has files newer than $FERRY; run 'cargo build --release' to measure them"
fi
echo "   N=$N TESTS=$TESTS VALUE_BYTES=$VALUE_BYTES LAG_SECS=$LAG_SECS LOAD_RATE=$LOAD_RATE SEED_N=$SEED_N P64_N=$P64_N"

ntests=$(tr ',' '\n' <<<"$TESTS" | grep -c .)
per_test=$(( (N + ntests - 1) / ntests ))

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
start_ferry replay "$S" "$T"
P1_PID=$FERRY_PID; P1_LOG=$FERRY_LOG; P1_STATE=$FERRY_STATE
base_seq=$(journaled "$P1_LOG")
redis-cli -p "$T" client pause 600000 write >/dev/null

t0=$(now)
redis-benchmark -p "$S" -c 50 -P 64 -r 100000 -d "$VALUE_BYTES" -t "$TESTS" -n "$per_test" --csv \
  >"$BENCH_DIR/gen.csv"
redis-cli -p "$S" set replay:sentinel 1 >/dev/null
t1=$(now)
W=$(source_writes "$S")
GEN_S=$(awk -v s="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.2f", s }')
GEN_RATE=$(awk -v n="$W" -v s="$GEN_S" 'BEGIN { printf "%.0f", n / s }')
echo "   source: $W writes (incl. the sentinel) in ${GEN_S}s = $GEN_RATE/s with ferry's MONITOR attached"

all_journaled() {
  kill -0 "$P1_PID" 2>/dev/null || die "ferry exited while journaling (log: $P1_LOG)"
  [ "$(journaled "$P1_LOG")" -ge $(( base_seq + W )) ]
}
wait_until 180 "ferry to journal $W writes (log: $P1_LOG)" all_journaled
JOURNAL_WAIT_S=$(awk -v s="$(elapsed "$t1" "$(now)")" 'BEGIN { printf "%.1f", s }')
STALL_RSS_KB=$(proc_kb "$P1_PID" VmRSS)
STALL_HWM_KB=$(proc_kb "$P1_PID" VmHWM)
JOURNAL_BYTES=$(du -sb "$P1_STATE/journal" | cut -f1)
JOURNAL_MB=$(awk -v b="$JOURNAL_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')
TARGET_QBUF=$(redis-cli -p "$T" client list | grep -v 'cmd=client' | sed -n 's/.* qbuf=\([0-9]*\) .*/\1/p' | sort -n | tail -1)
echo "   journaled (status lines, 1 s apart; ${JOURNAL_WAIT_S}s after the load ended): journal ${JOURNAL_MB} MB on disk"
echo "   ferry while the target is stalled: VmRSS $(mb "$STALL_RSS_KB") MB, VmHWM $(mb "$STALL_HWM_KB") MB; target query buffer ${TARGET_QBUF:-0} bytes"

# Where the time goes: CPU seconds of ferry and of the target while the backlog is applied.
c_ferry0=$(cpu_s "$P1_PID"); c_tgt0=$(cpu_s "$PID_tgt1")
REPLAY_OUT=$(python3 "$LAG_PY" replay-wait --port "$T" --expect "$W" --poll-ms 10 \
  --stall "$STALL_SECS" --timeout 600) || true
REPLAY_FERRY_CPU=$(echo "$(cpu_s "$P1_PID") - $c_ferry0" | bc)
REPLAY_TARGET_CPU=$(echo "$(cpu_s "$PID_tgt1") - $c_tgt0" | bc)
echo "   $REPLAY_OUT"
REPLAY_STATUS=$(kv status <<<"$REPLAY_OUT")
[ -n "$REPLAY_STATUS" ] || die "lag.py replay-wait failed"
REPLAY_APPLIED=$(kv applied <<<"$REPLAY_OUT")
REPLAY_S=$(kv elapsed <<<"$REPLAY_OUT")
AFTER_HWM_KB=$(proc_kb "$P1_PID" VmHWM)
if [ "$REPLAY_STATUS" = done ]; then
  REPLAY_RATE=$(kv rate <<<"$REPLAY_OUT")
  REPLAY_FIG="$REPLAY_RATE"
  wait_until 10 "the sentinel on the target" \
    sh -c "[ \"\$(redis-cli -p $T exists replay:sentinel)\" = 1 ]"
  a=$(redis-cli -p "$S" dbsize); b=$(redis-cli -p "$T" dbsize)
  [ "$a" = "$b" ] || FAILURES+=("after replay the source has $a keys, the target $b")
else
  REPLAY_RATE=0
  REPLAY_FIG="STALLED(${REPLAY_APPLIED}/${W})"
  FAILURES+=("ferry replay $REPLAY_STATUS: the target processed $REPLAY_APPLIED of $W writes after UNPAUSE, then nothing for ${STALL_SECS}s; last status: $(grep 'Status\.' "$P1_LOG" | tail -1 | sed 's/.*Status\. //')")
fi
echo "   ferry VmHWM after replay: $(mb "$AFTER_HWM_KB") MB"
log "   stopping ferry (SIGTERM)"
stop_ferry "$P1_PID"; P1_EXIT=$STOP_RC
echo "   exit: $P1_EXIT; $(grep -o 'Migration stopped at the final fence.*' "$P1_LOG" || echo 'no final-fence line')"
[ "$P1_EXIT" = 0 ] || FAILURES+=("ferry (replay run) after SIGTERM: exit $P1_EXIT (waited ${STOP_SECS}s)")

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
