#!/usr/bin/env python3
"""Fills a Redis Cluster with KEYS strings spread over all 16384 slots, for scripts/bench/cluster.sh.

redis-benchmark --cluster cannot do this: it gives each node one hash tag, so every key it
writes on a node lands in one slot, which would leave ferry's per-slot reads one giant slot per
shard. Here the keys are `key:<12 digits>` (no hash tag: about KEYS / 16384 keys per slot),
each SET pipelined to the primary serving its slot (read from CLUSTER SLOTS), and the values
are VALUE_BYTES of `x`, as redis-benchmark -d writes them (scripts/bench/snapshot.sh).

Usage: cluster_fill.py --port <any node> --keys 300000 --value-bytes 1500
Prints one line: keys written per primary. Exit 0 when every SET answered OK.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lag import Resp  # noqa: E402  (the stdlib-only RESP client of the replay benchmark)

BATCH = 1000


def _crc16_table():
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


CRC16_TABLE = _crc16_table()


def crc16(data):
    """CRC16-CCITT (XMODEM), the hash of Redis Cluster's key slots."""
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ CRC16_TABLE[(crc >> 8) ^ b]
    return crc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--keys", type=int, required=True)
    ap.add_argument("--value-bytes", type=int, default=1500)
    a = ap.parse_args()

    owner = [None] * 16384
    for start, end, primary, *_ in Resp(a.port).call("CLUSTER", "SLOTS"):
        for s in range(start, end + 1):
            owner[s] = primary[1]
    if None in owner:
        print("cluster_fill.py: slot %d has no primary" % owner.index(None), file=sys.stderr)
        return 2

    cons = {p: Resp(p) for p in set(owner)}
    batches = {p: [] for p in cons}
    counts = {p: 0 for p in cons}
    value = b"x" * a.value_bytes

    def flush(port):
        batch = batches[port]
        cons[port].send(b"".join(batch))
        for _ in batch:
            reply = cons[port].reply()
            if reply != b"OK":
                raise RuntimeError("SET on port %d answered %r" % (port, reply))
        counts[port] += len(batch)
        batch.clear()

    for i in range(a.keys):
        key = b"key:%012d" % i
        port = owner[crc16(key) % 16384]
        batches[port].append(Resp.encode(b"SET", key, value))
        if len(batches[port]) >= BATCH:
            flush(port)
    for port in cons:
        if batches[port]:
            flush(port)
    print(" ".join("%d:%d" % (p, counts[p]) for p in sorted(counts)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, RuntimeError, ConnectionError) as e:
        print("cluster_fill.py: %s" % e, file=sys.stderr)
        sys.exit(2)
