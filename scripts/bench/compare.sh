#!/usr/bin/env bash
# Two ferry binaries compared on the snapshot and replay benchmarks in one sitting: the runs
# alternate (A, B, A, B, …), so that drift of the machine hits both alike; each benchmark runs
# RUNS times per binary. Prints every run's RESULT line, then per binary and figure the median,
# the min and max, and the spread ((max - min) / median).
#
# Usage: scripts/bench/compare.sh A_BINARY B_BINARY
# Environment (defaults): RUNS=3, KEYS=200000 and VALUE_BYTES=1500 (snapshot.sh), N=1000000
#   (replay.sh, step 1 only), BENCHES="snapshot replay".
# Exit code: 0 when every run completed; 1 when a run failed (its figures are left out).
set -euo pipefail
cd "$(dirname "$0")/../.."

A=${1:?usage: compare.sh A_BINARY B_BINARY}
B=${2:?usage: compare.sh A_BINARY B_BINARY}
RUNS=${RUNS:-3}
KEYS=${KEYS:-200000}
VALUE_BYTES=${VALUE_BYTES:-1500}
N=${N:-1000000}
BENCHES=${BENCHES:-snapshot replay}
for bin in "$A" "$B"; do
  [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
done

OUT=$(mktemp /tmp/ferry-compare.XXXXXX)
trap 'rm -f "$OUT"' EXIT
FAILED=0

echo "compare, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   A: $A ($("$A" --version))"
echo "   B: $B ($("$B" --version))"
echo "   RUNS=$RUNS KEYS=$KEYS VALUE_BYTES=$VALUE_BYTES N=$N"

# run LABEL BINARY BENCH: one run; appends "LABEL BENCH key=value…" to $OUT.
run() {
  local label=$1 bin=$2 bench=$3 line out
  out=$(mktemp /tmp/ferry-compare-run.XXXXXX)
  case $bench in
    snapshot) FERRY=$bin bash scripts/bench/snapshot.sh "$KEYS" "$VALUE_BYTES" >"$out" 2>&1 || true ;;
    replay) FERRY=$bin ONLY_REPLAY=1 N=$N bash scripts/bench/replay.sh >"$out" 2>&1 || true ;;
  esac
  line=$(grep '^RESULT' "$out" || true)
  if [ -z "$line" ]; then
    echo "   $label $bench: FAILED; its last lines:" >&2
    tail -15 "$out" | sed 's/^/      /' >&2
    rm -f "$out"
    FAILED=1
    return
  fi
  rm -f "$out"
  echo "   $label $bench: ${line#RESULT }"
  echo "$label $bench ${line#RESULT }" >>"$OUT"
}

for bench in $BENCHES; do
  echo "== $bench"
  for i in $(seq "$RUNS"); do
    # Alternate which binary goes first, so neither always runs on a cooler machine.
    if [ $((i % 2)) = 1 ]; then
      run A "$A" "$bench"; run B "$B" "$bench"
    else
      run B "$B" "$bench"; run A "$A" "$bench"
    fi
  done
done

# Medians: snapshot ferry seconds and ratio to native; replay writes per second.
echo
echo "== medians (min–max, spread)"
python3 - "$OUT" <<'EOF'
import re, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
figs = {"snapshot": ["ferry", "ratio", "native"], "replay": ["ferry_replay"]}
for bench, keys in figs.items():
    for key in keys:
        for label in ("A", "B"):
            vals = []
            for r in rows:
                if r[0] == label and r[1] == bench:
                    kv = dict(x.split("=", 1) for x in r[2:] if "=" in x)
                    m = re.match(r"[0-9.]+", kv.get(key, ""))
                    if m:
                        vals.append(float(m.group()))
            if not vals:
                continue
            med = statistics.median(vals)
            spread = (max(vals) - min(vals)) / med * 100 if med else 0
            print(f"   {bench} {key} {label}: median {med:g} (min {min(vals):g}, max {max(vals):g}, spread {spread:.0f}%, n={len(vals)})")
EOF
exit $FAILED
