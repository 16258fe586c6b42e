#!/usr/bin/env bash
# Shared helpers for the end-to-end benchmarks: throwaway redis-server processes on free loopback
# ports, stopped by PID when the script exits.
set -euo pipefail

BENCH_DIR=$(mktemp -d /tmp/ferry-bench.XXXXXX)
PIDS=()
# ferry processes (start_ferry) and load generators, stopped before the servers.
FERRY_PIDS=()
BG_PIDS=()

# ferry is not in PIDS: a stuck ferry ignores SIGTERM for a long time (its final fence waits for
# replay), so it is stopped first, by PID, with SIGKILL after a grace period. LOG_DIR (when set)
# receives ferry's logs and the lag samples.
cleanup() {
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
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; done
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

need() {
  command -v "$1" >/dev/null || { echo "missing $1: run 'make deps' (apt-get install $2)" >&2; exit 2; }
}
need redis-server redis-server
need redis-cli redis-tools
need redis-benchmark redis-tools
[ -x /usr/bin/time ] || { echo "missing /usr/bin/time: apt-get install time" >&2; exit 2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_server NAME [extra redis-server args...]; sets PORT_<NAME> and PID_<NAME>. BIN=PATH before
# the call runs another server binary (an engine of `make servers`).
start_server() {
  local name=$1; shift
  local port; port=$(free_port)
  mkdir -p "$BENCH_DIR/$name"
  "${BIN:-redis-server}" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$BENCH_DIR/$name" --logfile "$BENCH_DIR/$name/log" \
    --repl-diskless-sync yes --repl-diskless-sync-delay 0 "$@" &
  PIDS+=($!)
  printf -v "PID_${name}" '%s' "$!"
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  printf -v "PORT_${name}" '%s' "$port"
}

now() { date +%s.%N; }
# CPU seconds (user + system) a process has used so far, with its reaped children's (a
# redis-server's fork that serialises an RDB for a full sync or BGSAVE counts once reaped).
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15 + $16 + $17) / hz }' "/proc/$1/stat"; }
elapsed() { echo "$2 - $1" | bc; }

# cpu_sum PID...: cpu_s summed over several processes (a cluster's nodes).
cpu_sum() {
  local pid t=0
  for pid in "$@"; do t=$(echo "$t + $(cpu_s "$pid")" | bc); done
  echo "$t"
}
# dbsize_sum PORT...: keys of db 0 summed over several servers (a cluster's primaries).
dbsize_sum() {
  local port n=0
  for port in "$@"; do n=$(( n + $(redis-cli -p "$port" dbsize) )); done
  echo "$n"
}

die() { echo "$(basename "$0"): $*" >&2; exit 2; }
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

proc_kb() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
csv_rps() { awk -F'"' 'NR == 2 { printf "%.0f", $4 }'; }
kv() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else print "n/a" }'; }

###############################################################################################
# Replay throughput (scripts/bench/replay.sh step 1, scripts/bench/cluster.sh replay).

# replay_settings: the replay benchmarks' settings from the environment, with their defaults
# (replay.sh's usage lists them); N writes are split evenly over the TESTS (per_test).
replay_settings() {
  N=${N:-1000000}
  TESTS=${TESTS:-set,incr,lpush,hset}
  VALUE_BYTES=${VALUE_BYTES:-3}
  STALL_SECS=${STALL_SECS:-15}
  STOP_SECS=${STOP_SECS:-30}
  FERRY=${FERRY:-target/release/ferry}
  SHARDS=${SHARDS:-4}
  LAG_PY=scripts/bench/lag.py
  FAILURES=()
  ntests=$(tr ',' '\n' <<<"$TESTS" | grep -c .)
  per_test=$(( (N + ntests - 1) / ntests ))
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

# Write commands that the redis-benchmark tests issue (the sum of their calls on the source is
# the exact number of writes: redis-benchmark rounds -n up to a multiple of -P per test).
WRITE_CMDS='set|incr|lpush|rpush|lpop|rpop|sadd|spop|hset|zadd|zpopmin|mset|xadd'
source_writes() {
  redis-cli -p "$1" info commandstats | tr -d '\r' |
    awk -F'[_:,=]' -v re="^($WRITE_CMDS)\$" '$1 == "cmdstat" && $2 ~ re { n += $4 } END { print n + 0 }'
}

# replay_backlog NAME SOURCE_PORT "TARGET_PORTS" "TARGET_PIDS": ferry replay throughput.
# `ferry migrate --capture primary` (start_ferry) from an empty source to a target (one server,
# or a cluster's primaries: ferry is given the first, the writes are counted on all); every
# target primary is stalled with CLIENT PAUSE WRITE while N writes (redis-benchmark -c 50 -P 64,
# the TESTS, per_test each) land in ferry's journal; ferry's RSS and the journal size are taken
# once everything is journaled; then the targets are unpaused and the time until they have
# processed the writes is measured (lag.py replay-wait); then ferry is stopped with SIGTERM and
# must exit 0. Needs replay_settings. Sets W, GEN_RATE, REPLAY_STATUS, REPLAY_RATE, REPLAY_FIG,
# REPLAY_S, REPLAY_APPLIED, REPLAY_FERRY_CPU, REPLAY_TARGET_CPU, STALL_RSS_KB, STALL_HWM_KB,
# AFTER_HWM_KB, JOURNAL_MB, P1_EXIT; appends to FAILURES.
# shellcheck disable=SC2034 # the figures it sets are the calling script's to print
replay_backlog() {
  local name=$1 src=$2 tports tpids port t0 t1 base_seq qbuf
  read -ra tports <<<"$3"
  read -ra tpids <<<"$4"
  start_ferry "$name" "$src" "${tports[0]}"
  P1_PID=$FERRY_PID; P1_LOG=$FERRY_LOG; P1_STATE=$FERRY_STATE
  base_seq=$(journaled "$P1_LOG")
  for port in "${tports[@]}"; do redis-cli -p "$port" client pause 600000 write >/dev/null; done

  t0=$(now)
  redis-benchmark -p "$src" -c 50 -P 64 -r 100000 -d "$VALUE_BYTES" -t "$TESTS" -n "$per_test" --csv \
    >"$BENCH_DIR/$name-gen.csv"
  redis-cli -p "$src" set replay:sentinel 1 >/dev/null
  t1=$(now)
  W=$(source_writes "$src")
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
  qbuf=$(for port in "${tports[@]}"; do redis-cli -p "$port" client list; done |
    grep -v 'cmd=client' | sed -n 's/.* qbuf=\([0-9]*\) .*/\1/p' | sort -n | tail -1)
  echo "   journaled (status lines, 1 s apart; ${JOURNAL_WAIT_S}s after the load ended): journal ${JOURNAL_MB} MB on disk"
  echo "   ferry while the target is stalled: VmRSS $(mb "$STALL_RSS_KB") MB, VmHWM $(mb "$STALL_HWM_KB") MB; target query buffer ${qbuf:-0} bytes"

  # Where the time goes: CPU seconds of ferry and of the target while the backlog is applied.
  local c_ferry0 c_tgt0 out
  c_ferry0=$(cpu_s "$P1_PID"); c_tgt0=$(cpu_sum "${tpids[@]}")
  out=$(python3 "$LAG_PY" replay-wait --port "${tports[@]}" --expect "$W" --poll-ms 10 \
    --stall "$STALL_SECS" --timeout 600) || true
  REPLAY_FERRY_CPU=$(echo "$(cpu_s "$P1_PID") - $c_ferry0" | bc)
  REPLAY_TARGET_CPU=$(echo "$(cpu_sum "${tpids[@]}") - $c_tgt0" | bc)
  echo "   $out"
  REPLAY_STATUS=$(kv status <<<"$out")
  [ -n "$REPLAY_STATUS" ] || die "lag.py replay-wait failed"
  REPLAY_APPLIED=$(kv applied <<<"$out")
  REPLAY_S=$(kv elapsed <<<"$out")
  AFTER_HWM_KB=$(proc_kb "$P1_PID" VmHWM)
  if [ "$REPLAY_STATUS" = "done" ]; then
    REPLAY_RATE=$(kv rate <<<"$out")
    REPLAY_FIG="$REPLAY_RATE"
    # -c: on a cluster the sentinel's slot may live on another primary.
    wait_until 10 "the sentinel on the target" \
      sh -c "[ \"\$(redis-cli -c -p ${tports[0]} exists replay:sentinel)\" = 1 ]"
    local a b
    a=$(redis-cli -p "$src" dbsize); b=$(dbsize_sum "${tports[@]}")
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
  [ "$P1_EXIT" = 0 ] || FAILURES+=("ferry ($name run) after SIGTERM: exit $P1_EXIT (waited ${STOP_SECS}s)")
}
