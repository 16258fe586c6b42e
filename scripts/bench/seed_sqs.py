#!/usr/bin/env python3
"""The seed's SQS migration, end to end, as the baseline of scripts/bench/sqs.sh: one process
reads the source's MONITOR and sends each write line as one FIFO message; another receives
them, parses each line and applies it to the target, one command per round trip, deleting
each message once applied. Timed like ferry's SQS path: from the first write of a burst of N
SETs of new keys until the target holds all of them. Prints `seed_e2e=<writes/s>`; exits 1
when the target never got every key (a broken run reports no figure).

Usage: seed_sqs.py --source PORT --target PORT --moto PORT [--n 1000] [--timeout 600]
"""

import argparse
import re
import socket
import subprocess
import sys
import threading
import time

import boto3  # comes with moto

ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


def unescape(s):
    # The benchmark's keys and values are printable: only \" and \\ can appear.
    return s.replace('\\"', '"').replace("\\\\", "\\")


def resp(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def dbsize(port):
    return int(subprocess.run(["redis-cli", "-p", str(port), "dbsize"], capture_output=True,
                              text=True).stdout.strip() or 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", type=int, required=True)
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--moto", type=int, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--timeout", type=int, default=600)
    a = ap.parse_args()
    sqs = boto3.client("sqs", endpoint_url=f"http://127.0.0.1:{a.moto}", region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    q = sqs.create_queue(QueueName=f"seed-{int(time.time() * 1000)}.fifo",
                         Attributes={"FifoQueue": "true"})["QueueUrl"]
    stop = threading.Event()

    # The seed's capture: MONITOR, one SendMessage per write line.
    mon = subprocess.Popen(["redis-cli", "-p", str(a.source), "monitor"], stdout=subprocess.PIPE,
                           text=True)

    def publish():
        seq = 0
        for line in mon.stdout:
            if '"SET"' not in line and '"set"' not in line:
                continue
            seq += 1
            sqs.send_message(QueueUrl=q, MessageBody=line.rstrip("\n"), MessageGroupId="g",
                             MessageDeduplicationId=str(seq))

    # The seed's replayer: receive, parse, apply one command per round trip, delete.
    def consume():
        conn = socket.create_connection(("127.0.0.1", a.target))
        f = conn.makefile("rb")
        while not stop.is_set():
            msgs = sqs.receive_message(QueueUrl=q, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=1).get("Messages", [])
            for m in msgs:
                args = [unescape(x) for x in ARG.findall(m["Body"].split("]", 1)[1])]
                conn.sendall(resp(args))
                f.readline()
                sqs.delete_message(QueueUrl=q, ReceiptHandle=m["ReceiptHandle"])

    threads = [threading.Thread(target=publish, daemon=True),
               threading.Thread(target=consume, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # MONITOR attached
    before = dbsize(a.target)
    src_before = dbsize(a.source)
    t0 = time.time()
    subprocess.run(["redis-benchmark", "-p", str(a.source), "-t", "set", "-n", str(a.n),
                    "-r", "1000000000", "-d", "16", "-P", "64", "-q"], capture_output=True,
                   check=True)
    want = before + dbsize(a.source) - src_before
    ok = False
    while time.time() - t0 < a.timeout:
        if dbsize(a.target) >= want:
            ok = True
            break
        time.sleep(0.05)
    secs = time.time() - t0
    stop.set()
    mon.kill()
    if not ok:
        print(f"seed_sqs.py: the target holds {dbsize(a.target)} of {want} keys after "
              f"{a.timeout}s (it held {before} before)", file=sys.stderr)
        return 1
    print(f"seed_e2e={int(a.n / secs)} secs={secs:.1f} n={a.n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
