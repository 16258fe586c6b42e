#!/usr/bin/env python3
"""Runs one end-to-end benchmark several times, ferry and its baseline alternating, and reports
medians with the spread; optionally writes the table into docs/performance.md.

Every benchmark script it drives measures ferry and its baseline in the same run, takes
ORDER=<first>|<second> from the environment to decide which goes first, checks its own result
(key counts, writes processed, exit codes) and exits non-zero when that check fails, and ends
with one line `RESULT key=value …`. This harness alternates ORDER from run to run (so neither
side always runs on a cooler machine), refuses to report anything when a single run failed,
and prints, per numeric figure, the median, the min–max and the spread ((max − min) / median).

With --doc, the table replaces the block between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->` in that file (appended at the end when missing), headed by the commit
measured, the date, the machine and the command. It refuses to write figures for code that is
not committed (src/, Cargo.*, scripts/bench/ differing from HEAD) unless --allow-dirty, which
says so in the heading; and it builds the release binary first so the figures are that
commit's.

Usage:
  scripts/bench/alternate.py --name snapshot --orders native-first,ferry-first --runs 3 \
      [--doc docs/performance.md] [--set KEY=VALUE]... -- bash scripts/bench/snapshot.sh 200000
"""

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# `1.5s`, `.75x` (bc drops the leading zero), `978229`, `31.1MB`, `84487keys/s`.
NUMBER = re.compile(r"^(-?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+))([a-zA-Z/%]*)$")


def git(*args):
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()


def parse_result(line):
    """`RESULT a=1.5s b=x` → {a: "1.5s", b: "x"}."""
    out = {}
    for item in line.split()[1:]:
        if "=" in item:
            k, v = item.split("=", 1)
            out[k] = v
    return out


def run_once(cmd, env, log):
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(proc.stdout)
        f.write(proc.stderr)
    results = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        return None, f"exit {proc.returncode}, {len(results)} RESULT lines; last lines:\n{tail}"
    return parse_result(results[-1]), None


def summarise(runs):
    """Per numeric key: (unit, values)."""
    keys = []
    for r in runs:
        for k in r:
            if k not in keys:
                keys.append(k)
    table = []
    for k in keys:
        vals, unit = [], ""
        for r in runs:
            m = NUMBER.match(r.get(k, ""))
            if m:
                vals.append(float(m.group(1)))
                unit = m.group(2)
        if len(vals) == len(runs):
            table.append((k, unit, vals))
    return table


def fmt(v):
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def render(runs, table, heading):
    lines = [heading, ""]
    lines.append("| figure | median | min – max | spread | runs |")
    lines.append("|---|---|---|---|---|")
    for k, unit, vals in table:
        med = statistics.median(vals)
        spread = (max(vals) - min(vals)) / med * 100 if med else 0.0
        lines.append(
            f"| `{k}` | **{fmt(med)}{unit}** | {fmt(min(vals))} – {fmt(max(vals))}{unit} "
            f"| {spread:.0f} % | {len(vals)} |"
        )
    lines.append("")
    lines.append("Each run, in order:")
    lines.append("")
    for i, r in enumerate(runs, 1):
        lines.append(f"{i}. " + " ".join(f"{k}={v}" for k, v in r.items()))
    return "\n".join(lines)


def write_doc(path, name, block):
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = open(path).read() if os.path.exists(path) else ""
    new = f"{start}\n{block}\n{end}"
    if start in text and end in text:
        a = text.index(start)
        b = text.index(end) + len(end)
        text = text[:a] + new + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--orders", required=True, help="FIRST,SECOND: the two ORDER values")
    ap.add_argument("--runs", type=int, default=3, help="runs of each order (default 3)")
    ap.add_argument("--doc", help="write the table into this markdown file")
    ap.add_argument("--title", help="heading of the block in --doc")
    ap.add_argument("--allow-dirty", action="store_true")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no benchmark command after --")
    orders = a.orders.split(",")
    if len(orders) != 2 or a.runs < 1:
        ap.error("--orders takes two values; --runs at least 1")

    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock", "scripts/bench")
    if a.doc and dirty and not a.allow_dirty:
        print(
            f"alternate.py: refusing to write figures into {a.doc} for uncommitted code "
            f"({dirty.splitlines()[0].strip()} and {len(dirty.splitlines()) - 1} more); "
            "commit first, or pass --allow-dirty",
            file=sys.stderr,
        )
        return 2
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    version = subprocess.run(
        [os.path.join(ROOT, "target/release/ferry"), "--version"], capture_output=True, text=True
    ).stdout.strip()

    env = dict(os.environ)
    for kv in a.set:
        k, v = kv.split("=", 1)
        env[k] = v
    log = f"/tmp/ferry-bench-{a.name}.log"
    open(log, "w").close()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = open("/proc/loadavg").read().split()[:3]
    print(f"{a.name}: {a.runs * 2} runs alternating {orders[0]}/{orders[1]}; {version}; log {log}")
    runs = []
    for i in range(a.runs * 2):
        # A B, B A, A B, …: each order leads in turn.
        order = orders[(i + (i // 2)) % 2]
        env["ORDER"] = order
        result, err = run_once(cmd, env, log)
        if result is None:
            print(f"run {i + 1} ({order}) FAILED: {err}", file=sys.stderr)
            print("no figures reported: a failed run cannot report one", file=sys.stderr)
            return 1
        result.setdefault("order", order)
        print(f"  run {i + 1} ({order}): " + " ".join(f"{k}={v}" for k, v in result.items()))
        runs.append(result)
    load_after = open("/proc/loadavg").read().split()[:3]
    table = summarise(runs)
    what = " ".join(f"{k}={v}" for k, v in (kv.split("=", 1) for kv in a.set))
    heading = (
        f"### {a.title or a.name}\n\n"
        f"Measured {started} at commit `{commit}`"
        + (" **plus uncommitted changes**" if dirty else "")
        + f" ({version}), release build, {os.cpu_count()} cores, load average "
        f"{' '.join(load_before)} before and {' '.join(load_after)} after; "
        f"{len(runs)} runs, the order alternating ({orders[0]} / {orders[1]}), each run "
        f"checking its own result. Command: `{(what + ' ') if what else ''}"
        f"{' '.join(cmd)}` (through `scripts/bench/alternate.py`)."
    )
    block = render(runs, table, heading)
    print()
    print(block)
    if a.doc:
        write_doc(os.path.join(ROOT, a.doc) if not os.path.isabs(a.doc) else a.doc, a.name, block)
        print(f"\nwritten into {a.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
