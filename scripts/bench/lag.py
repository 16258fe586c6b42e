#!/usr/bin/env python3
"""Timing helpers for scripts/bench/replay.sh (stdlib only, raw RESP over loopback sockets).

Subcommands:
  replay-wait  UNPAUSE the (paused) target and time until it has processed EXPECT more commands
               (INFO stats total_commands_processed, polled every --poll-ms, own commands
               subtracted); several --port values (a cluster's primaries) are summed. Prints one `key=value ...` line; exit 0 done, 3 stalled/timed out.
  load         Steady write load: SET load:<rand> <value> at --rate commands/s for --duration s.
  probe        Every --interval-ms write `SET lagprobe:<i> <t_send_us>` on the source; poll the
               target with EXISTS on the oldest unseen probe every --poll-ms; print lag p50/p99.
"""

import argparse
import os
import random
import socket
import sys
import time


class Resp:
    """A minimal RESP2 client: enough for INFO, EXISTS, SET, CLIENT."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0

    @staticmethod
    def encode(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("server closed the connection")
        if self.pos > (1 << 16):
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += chunk

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos : i])
                self.pos = i + 2
                return line
            self._fill()

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError("server error: " + rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) - self.pos < n + 2:
                self._fill()
            data = bytes(self.buf[self.pos : self.pos + n])
            self.pos += n + 2
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError("bad reply line %r" % line)

    def call(self, *args):
        self.send(self.encode(*args))
        return self.reply()


def info_field(con, section, field):
    text = con.call("INFO", section).decode()
    for line in text.split("\r\n"):
        if line.startswith(field + ":"):
            return int(line.split(":", 1)[1])
    raise RuntimeError("INFO %s has no %s" % (section, field))


def replay_wait(a):
    # Several ports: a cluster target's primaries, unpaused together and summed.
    cons = [Resp(p) for p in a.port]
    own = 0  # commands these connections made the targets process after the baseline

    def total():
        return sum(info_field(c, "stats", "total_commands_processed") for c in cons)

    base = total()
    t0 = time.monotonic()
    for c in cons:
        c.call("CLIENT", "UNPAUSE")
    own += len(cons)
    last_delta, last_change = -1, t0
    polls, status = 0, "done"
    first_move = None
    while True:
        time.sleep(a.poll_ms / 1000.0)
        now_total = total()
        now = time.monotonic()
        polls += 1
        delta = now_total - base - own  # `own` excludes these INFOs, whether or not they count themselves
        own += len(cons)
        if delta > 0 and first_move is None:
            first_move = now - t0
        if delta >= a.expect:
            break
        if delta != last_delta:
            last_delta, last_change = delta, now
        elif now - last_change > a.stall:
            status = "stalled"
            break
        if now - t0 > a.timeout:
            status = "timeout"
            break
    elapsed = now - t0
    if status != "done":
        # The time of the last progress, not of giving up.
        elapsed = last_change - t0
    rate = delta / elapsed if elapsed > 0 else 0.0
    print(
        "status=%s applied=%d expect=%d elapsed=%.3f rate=%.0f polls=%d first_reply_s=%.3f"
        % (status, max(delta, 0), a.expect, elapsed, rate, polls, first_move or -1)
    )
    return 0 if status == "done" else 3


def load(a):
    con = Resp(a.port)
    rnd = random.Random(7)
    value = b"v" * a.value_bytes
    t0 = time.monotonic()
    sent = 0
    while True:
        now = time.monotonic()
        if now - t0 >= a.duration:
            break
        due = int((now - t0) * a.rate) - sent
        if due > 0:
            due = min(due, 1000)
            con.send(b"".join(
                Resp.encode(b"SET", b"load:%d" % rnd.randrange(100000), value) for _ in range(due)
            ))
            for _ in range(due):
                con.reply()
            sent += due
        time.sleep(max(0.0, 0.001 - (time.monotonic() - now)))
    print("load_sent=%d load_secs=%.1f load_rate=%.0f" % (sent, a.duration, sent / a.duration))
    return 0


def percentile(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def probe(a):
    src = Resp(a.source)
    tgt = Resp(a.target)
    interval = a.interval_ms / 1000.0
    poll = a.poll_ms / 1000.0
    sent = {}  # i -> t_send_us
    lags = []  # ms, in probe order
    nxt_send_i, nxt_seen_i = 0, 0
    t0 = time.monotonic()
    next_send = t0
    end_send = t0 + a.duration
    hard_end = end_send + a.drain
    polls = 0
    while True:
        now = time.monotonic()
        if now >= next_send and now < end_send:
            t_us = time.time_ns() // 1000
            src.call("SET", "lagprobe:%d" % nxt_send_i, t_us)
            sent[nxt_send_i] = t_us
            nxt_send_i += 1
            next_send += interval
            if next_send < now:  # fell behind (scheduler): skip, keep the 10 ms grid
                next_send = now + interval
        # Poll the oldest unseen probe; probes arrive in order, so a hit lets us try the next.
        while nxt_seen_i < nxt_send_i:
            polls += 1
            if tgt.call("EXISTS", "lagprobe:%d" % nxt_seen_i) != 1:
                break
            seen_us = time.time_ns() // 1000
            lags.append((seen_us - sent.pop(nxt_seen_i)) / 1000.0)
            nxt_seen_i += 1
        now = time.monotonic()
        if now >= end_send and nxt_seen_i >= nxt_send_i:
            break
        if now >= hard_end:
            break
        wake = min(now + poll, next_send if now < end_send else now + poll)
        time.sleep(max(0.0, wake - time.monotonic()))
    missing = nxt_send_i - nxt_seen_i
    s = sorted(lags)
    if a.samples:
        with open(a.samples, "w") as f:
            f.write("\n".join("%.3f" % x for x in lags) + "\n")
    print(
        "probes=%d seen=%d missing=%d lag_p50_ms=%.2f lag_p90_ms=%.2f lag_p99_ms=%.2f "
        "lag_max_ms=%.2f lag_mean_ms=%.2f target_polls=%d"
        % (
            nxt_send_i,
            len(lags),
            missing,
            percentile(s, 50),
            percentile(s, 90),
            percentile(s, 99),
            s[-1] if s else float("nan"),
            sum(s) / len(s) if s else float("nan"),
            polls,
        )
    )
    return 0 if missing == 0 and lags else 3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("replay-wait")
    r.add_argument("--port", type=int, nargs="+", required=True, help="the target's primaries")
    r.add_argument("--expect", type=int, required=True)
    r.add_argument("--poll-ms", type=float, default=10.0)
    r.add_argument("--stall", type=float, default=15.0, help="seconds without progress")
    r.add_argument("--timeout", type=float, default=300.0)

    l = sub.add_parser("load")
    l.add_argument("--port", type=int, required=True)
    l.add_argument("--rate", type=float, default=5000.0)
    l.add_argument("--duration", type=float, required=True)
    l.add_argument("--value-bytes", type=int, default=32)

    q = sub.add_parser("probe")
    q.add_argument("--source", type=int, required=True)
    q.add_argument("--target", type=int, required=True)
    q.add_argument("--duration", type=float, default=20.0)
    q.add_argument("--interval-ms", type=float, default=10.0)
    q.add_argument("--poll-ms", type=float, default=1.0)
    q.add_argument("--drain", type=float, default=15.0, help="seconds to wait for the last probes")
    q.add_argument("--samples", help="write every lag (ms, probe order) to this file")

    a = p.parse_args()
    try:
        return {"replay-wait": replay_wait, "load": load, "probe": probe}[a.cmd](a)
    except (OSError, RuntimeError, ConnectionError) as e:
        print("lag.py %s: %s" % (a.cmd, e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
