#!/usr/bin/env python3
"""A pymongo workload for mongowatch's end-to-end tests, with its own oracle.

Runs OPS driver operations against --uri, mixing small inserts, insert_many of 2,000 documents,
finds with a small batch_size (getMores), a partially read cursor (killCursors), one reply of at
least 5 MB, aggregates, counts, updates, deletes and one command that fails. Every command the
driver sends is recorded by a pymongo ``monitoring.CommandListener`` (started / succeeded /
failed, with request_id, command name and duration) as JSON lines in --out: the oracle that
mongowatch's audit records are compared with.

The client is created only after the start gate (--start-file and/or --start-delay), so a
tracer can attach to this process's PID before the first byte is sent. At the end one JSON line
``WORKLOAD_SUMMARY {...}`` on stdout (and --summary FILE) gives counts and throughput.

The operation plan is the same in node_workload.js (see plan()).
"""

import argparse
import json
import os
import sys
import time

from oracle_fields import event_fields
from pymongo import MongoClient, monitoring
from pymongo.errors import OperationFailure

BATCH = 2000  # documents per insert_many
# The one document that makes a request and a reply of >= 5 MB; random, so it stays that big
# on the wire when compression is negotiated.
BIG_BYTES = 5 * 1024 * 1024 + 512 * 1024


def plan(i, n):
    """The operation at index i of n: the same schedule in both workloads."""
    if n >= 4 and i == n // 2:
        return "big_insert"
    if n >= 4 and i == n // 2 + 1:
        return "big_find"
    if i == 3:
        return "failing_command"
    if i % 500 == 1:
        return "insert_many"
    if i % 50 == 2:
        return "find_getmore"
    if i % 250 == 3:
        return "find_partial"
    if i % 100 == 4:
        return "aggregate"
    if i % 100 == 5:
        return "count"
    if i % 10 == 6:
        return "update_one"
    if i % 100 == 7:
        return "update_many"
    if i % 20 == 8:
        return "delete_one"
    if i % 200 == 9:
        return "delete_many"
    if i % 10 == 0:
        return "find_one"
    return "insert_one"


class Oracle(monitoring.CommandListener):
    """Writes one JSON line per command event."""

    def __init__(self, path):
        self.out = open(path, "w", buffering=1 << 20) if path else None
        self.n_started = 0
        self.n_succeeded = 0
        self.n_failed = 0

    def _write(self, rec):
        if self.out is not None:
            self.out.write(json.dumps(rec, separators=(",", ":"), default=str))
            self.out.write("\n")

    def started(self, event):
        self.n_started += 1
        rec = event_fields(event, "started")
        target = event.command.get(event.command_name)
        if isinstance(target, str):
            rec["collection"] = target
        docs = event.command.get("documents")
        if docs is not None:
            rec["documents"] = len(docs)
        self._write(rec)

    def succeeded(self, event):
        self.n_succeeded += 1
        rec = event_fields(event, "succeeded")
        rec["duration_us"] = event.duration_micros
        rec["ok"] = event.reply.get("ok")
        self._write(rec)

    def failed(self, event):
        self.n_failed += 1
        rec = event_fields(event, "failed")
        rec["duration_us"] = event.duration_micros
        failure = event.failure if isinstance(event.failure, dict) else {}
        rec["code"] = failure.get("code")
        rec["errmsg"] = failure.get("errmsg")
        self._write(rec)

    def close(self):
        if self.out is not None:
            self.out.close()


def wait_for_start(args):
    if args.start_file:
        deadline = time.monotonic() + args.start_timeout
        while not os.path.exists(args.start_file):
            if time.monotonic() > deadline:
                sys.exit("start file %s did not appear within %ss" % (args.start_file, args.start_timeout))
            time.sleep(0.01)
    if args.start_delay > 0:
        time.sleep(args.start_delay)


def run(args):
    oracle = Oracle(args.out)
    client = MongoClient(
        args.uri,
        event_listeners=[oracle],
        appname="mongowatch-pymongo-workload",
        serverSelectionTimeoutMS=30000,
    )
    db = client[args.db]
    tag = "%d_%d" % (os.getpid(), time.time_ns() % 1_000_000_000)
    items = db["items_" + tag]
    big = db["big_" + tag]
    client.admin.command("ping")
    items.create_index("k")
    items.create_index("grp")

    counts = {}
    t0 = time.perf_counter()
    for i in range(args.ops):
        op = plan(i, args.ops)
        counts[op] = counts.get(op, 0) + 1
        grp = i % 10
        if op == "insert_one":
            items.insert_one({"k": i, "grp": grp, "s": "x" * 20})
        elif op == "insert_many":
            items.insert_many([{"k": i * 10000 + j, "grp": j % 10, "s": "y" * 20} for j in range(BATCH)])
        elif op == "find_getmore":
            docs = list(items.find({"grp": grp}, batch_size=args.batch_size).limit(6 * args.batch_size))
            assert len(docs) <= 6 * args.batch_size
        elif op == "find_partial":
            cursor = items.find({}, batch_size=args.batch_size)
            for _ in range(min(3, args.batch_size)):
                if next(cursor, None) is None:
                    break
            cursor.close()
        elif op == "aggregate":
            list(items.aggregate([{"$match": {"k": {"$gte": i - 100, "$lt": i}}}, {"$group": {"_id": "$grp", "n": {"$sum": 1}}}]))
        elif op == "count":
            items.count_documents({"k": {"$gte": i - 100, "$lt": i}})
        elif op == "update_one":
            items.update_one({"k": i - 1}, {"$inc": {"u": 1}})
        elif op == "update_many":
            items.update_many({"k": {"$gte": i - 20, "$lt": i}}, {"$set": {"m": i}})
        elif op == "delete_one":
            items.delete_one({"k": i - 5})
        elif op == "delete_many":
            items.delete_many({"k": {"$gte": i * 10000, "$lt": i * 10000 + 100}})
        elif op == "find_one":
            items.find_one({"k": i - 1})
        elif op == "big_insert":
            big.insert_one({"_id": 1, "blob": os.urandom(BIG_BYTES)})
        elif op == "big_find":
            doc = big.find_one({"_id": 1})
            assert doc is not None and len(doc["blob"]) == BIG_BYTES
        elif op == "failing_command":
            try:
                db.command("mongowatchNoSuchCommand")
                raise AssertionError("an unknown command succeeded")
            except OperationFailure:
                pass
        else:
            raise AssertionError(op)
    elapsed = time.perf_counter() - t0
    client.close()
    oracle.close()
    return {
        "driver": "pymongo",
        "pid": os.getpid(),
        "ops": args.ops,
        "elapsed_s": elapsed,
        "ops_per_sec": args.ops / elapsed if elapsed > 0 else None,
        "commands_started": oracle.n_started,
        "commands_succeeded": oracle.n_succeeded,
        "commands_failed": oracle.n_failed,
        "op_counts": counts,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--ops", type=int, default=10000)
    p.add_argument("--out", help="oracle: command events as JSON lines")
    p.add_argument("--summary", help="write the summary JSON here too")
    p.add_argument("--db", default="mongowatch_e2e")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--start-file", help="wait until this file exists before connecting")
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--start-delay", type=float, default=0.0, help="seconds to sleep before connecting")
    args = p.parse_args()
    wait_for_start(args)
    summary = run(args)
    line = json.dumps(summary, separators=(",", ":"))
    if args.summary:
        with open(args.summary, "w") as f:
            f.write(line + "\n")
    print("WORKLOAD_SUMMARY " + line, flush=True)


if __name__ == "__main__":
    main()
