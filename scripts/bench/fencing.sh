#!/usr/bin/env bash
# Cost of the shard-lease fence on the target (docs/leases.md): the same batches of replay
# writes sent three ways over one pipelined connection (redis-cli --pipe), and the target's time
# to apply them measured:
#  - plain:  the commands alone, as replay sent them before leases (no fence at all);
#  - multi:  what `ferry replay` sends per batch: WATCH token dirty; EVAL <check>; MULTI;
#            the commands; HSET progress; EXEC;
#  - eval:   the alternative: one EVAL per batch that checks the token, runs the commands with
#            redis.call and writes the progress.
# The modes run alternately, RUNS times each, on a flushed target; medians and the spread
# (min–max) are printed as a Markdown table. Each run checks itself: redis-cli --pipe must
# report 0 errors and the expected reply count, and the target must hold the expected counter
# and list sizes afterwards; a last run with a stale token must apply nothing.
#
# Usage: scripts/bench/fencing.sh [COMMANDS=300000] [BATCH=500] [RUNS=3]
# Exit code: 0 with a table; 1 when a self-check failed; 2 when the benchmark could not run.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/common.sh

COMMANDS=${1:-${COMMANDS:-300000}}
BATCH=${2:-${BATCH:-500}}
RUNS=${3:-${RUNS:-3}}
need python3 python3

start_server target
P=$PORT_target

# One file per mode, generated once (not timed). Keys: 1000 counters, 100 lists, 100 hashes,
# 1000 strings; the mix of scripts/bench/replay.sh (set, incr, lpush, hset).
python3 - "$BENCH_DIR" "$COMMANDS" "$BATCH" <<'EOF'
import sys
out, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
TOKEN = b"1:bench-owner"
CHECK = (b"if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end "
         b"redis.call('SET', KEYS[2], '1') redis.call('DEL', KEYS[2]) return 0")
APPLY = (b"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
         b"local i = 4 while i <= #ARGV do local n = tonumber(ARGV[i]) "
         b"redis.call(unpack(ARGV, i + 1, i + n)) i = i + n + 1 end "
         b"redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) return 1")
def resp(args):
    b = b"*%d\r\n" % len(args)
    for a in args:
        b += b"$%d\r\n%s\r\n" % (len(a), a)
    return b
def cmd(i):
    k = i % 4
    if k == 0: return [b"SET", b"s:%d" % (i % 1000), b"v%d" % i]
    if k == 1: return [b"INCR", b"c:%d" % (i % 1000)]
    if k == 2: return [b"LPUSH", b"l:%d" % (i % 100), b"%d" % i]
    return [b"HSET", b"h:%d" % (i % 100), b"f%d" % (i % 50), b"%d" % i]
cmds = [cmd(i) for i in range(n)]
batches = [cmds[i:i + batch] for i in range(0, n, batch)]
tok, dirty, prog = b"ferry:lease:0:token", b"ferry:lease:dirty:bench-owner", b"ferry:lease:0:progress"
with open(f"{out}/plain.resp", "wb") as f:
    for c in cmds: f.write(resp(c))
def multi(path, token):
    with open(path, "wb") as f:
        end = 0
        for b in batches:
            end += len(b)
            f.write(resp([b"WATCH", tok, dirty]))
            f.write(resp([b"EVAL", CHECK, b"2", tok, dirty, token]))
            f.write(resp([b"MULTI"]))
            for c in b: f.write(resp(c))
            f.write(resp([b"HSET", prog, b"256", b"%d" % end]))
            f.write(resp([b"EXEC"]))
multi(f"{out}/multi.resp", TOKEN)
multi(f"{out}/stale.resp", b"0:stale-owner")
with open(f"{out}/eval.resp", "wb") as f:
    end = 0
    for b in batches:
        end += len(b)
        args = [b"EVAL", APPLY, b"2", tok, prog, TOKEN, b"256", b"%d" % end]
        for c in b: args += [b"%d" % len(c)] + c
        f.write(resp(args))
# Replies redis-cli --pipe must count, per mode.
nb = len(batches)
with open(f"{out}/replies", "w") as f:
    f.write(f"plain {n}\nmulti {nb * (4 + n // nb + 1) if n % batch == 0 else -1}\neval {nb}\nstale {nb * (4 + n // nb + 1) if n % batch == 0 else -1}\n")
EOF

expected_replies() { awk -v m="$1" '$1 == m { print $2 }' "$BENCH_DIR/replies"; }

# The state every mode must leave: counter c:1 was incremented once per 1000 commands from 1.
expect_incr=$(python3 -c "n=$COMMANDS; print(sum(1 for i in range(n) if i % 4 == 1 and i % 1000 == 1))")
expect_llen=$(python3 -c "n=$COMMANDS; print(sum(1 for i in range(n) if i % 4 == 2 and i % 100 == 2))")

FAILED=0
run() { # mode -> seconds
  local mode=$1 file=$1
  redis-cli -p "$P" flushall >/dev/null
  redis-cli -p "$P" set ferry:lease:0:token "1:bench-owner" >/dev/null
  local t0 t1 out
  t0=$(now)
  out=$(redis-cli -p "$P" --pipe < "$BENCH_DIR/$file.resp" 2>&1)
  t1=$(now)
  local errors replies
  errors=$(sed -n 's/.*errors: \([0-9]*\), replies: \([0-9]*\).*/\1/p' <<<"$out")
  replies=$(sed -n 's/.*errors: \([0-9]*\), replies: \([0-9]*\).*/\2/p' <<<"$out")
  if [ "$errors" != 0 ] || [ "$replies" != "$(expected_replies "$mode")" ]; then
    echo "self-check failed: $mode: $out" >&2; FAILED=1
  fi
  local incr llen
  incr=$(redis-cli -p "$P" get c:1); llen=$(redis-cli -p "$P" llen l:2)
  if [ "$mode" = stale ]; then
    [ -z "$incr" ] && [ "$llen" = 0 ] || { echo "self-check failed: a stale token applied writes" >&2; FAILED=1; }
  elif [ "$incr" != "$expect_incr" ] || [ "$llen" != "$expect_llen" ]; then
    echo "self-check failed: $mode left c:1=$incr l:2=$llen (want $expect_incr, $expect_llen)" >&2; FAILED=1
  fi
  elapsed "$t0" "$t1"
}

declare -A T
for i in $(seq "$RUNS"); do
  for mode in plain multi eval; do
    T[$mode]+="$(run "$mode") "
  done
done
run stale >/dev/null

commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo "+dirty")
echo "Commit $commit; redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'); $COMMANDS commands in batches of $BATCH; $RUNS alternating runs per mode; $(nproc) cores."
echo
echo "| mode | median s | spread s | commands/s (median) | vs plain |"
echo "|---|---|---|---|---|"
plain_med=
for mode in plain multi eval; do
  read -r med lo hi <<<"$(python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(statistics.median(v), min(v), max(v))" ${T[$mode]})"
  [ -z "$plain_med" ] && plain_med=$med
  python3 -c "m=$med; p=$plain_med; print(f'| $mode | {m:.3f} | {$lo:.3f}–{$hi:.3f} | {$COMMANDS/m:,.0f} | {m/p:.2f}× |')"
done
exit $FAILED
