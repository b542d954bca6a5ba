#!/usr/bin/env python3
"""The load of mongowatch's audit benchmark (tests/src/bin/bench_audit.rs).

--clients threads share one pymongo client and run operations at full speed for --seconds,
each on its own collection: insert_one, find_one, update_one, a find read to its end through
getMores, count_documents, delete_one. Each of them is ONE audit record by the contract (a find
and its getMores are one), so the counts this script reports are the number of records
mongowatch must write. Nothing else is sent but the handshakes, heartbeats and endSessions,
which are not records. The summary (--summary, JSON) has the per-kind and total counts.
"""

import argparse
import json
import os
import sys
import threading
import time

from pymongo import MongoClient

KINDS = ["insert_one", "find_one", "update_one", "find_getmore", "count_documents", "delete_one"]


def worker(client, db, index, deadline, counts, errors):
    coll = client[db]["bench_%d_%d" % (os.getpid(), index)]
    mine = dict.fromkeys(KINDS, 0)
    i = 0
    try:
        while time.monotonic() < deadline:
            kind = KINDS[i % len(KINDS)]
            k = i // len(KINDS)
            if kind == "insert_one":
                coll.insert_one({"k": k, "grp": k % 10, "s": "x" * 32})
            elif kind == "find_one":
                coll.find_one({"k": k})
            elif kind == "update_one":
                coll.update_one({"k": k}, {"$inc": {"u": 1}})
            elif kind == "find_getmore":
                list(coll.find({"grp": k % 10}, batch_size=4).limit(12))
            elif kind == "count_documents":
                coll.count_documents({"grp": k % 10})
            elif kind == "delete_one":
                coll.delete_one({"k": k - 50})
            mine[kind] += 1
            i += 1
    except Exception as e:  # counted ops stay exact: the failing one is not counted
        errors.append("client %d: %r" % (index, e))
    counts[index] = mine


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--db", default="mongowatch_bench")
    p.add_argument("--summary", required=True)
    p.add_argument("--start-file")
    p.add_argument("--start-timeout", type=float, default=120.0)
    args = p.parse_args()
    if args.start_file:
        deadline = time.monotonic() + args.start_timeout
        while not os.path.exists(args.start_file):
            if time.monotonic() > deadline:
                sys.exit("start file did not appear")
            time.sleep(0.01)
    client = MongoClient(args.uri, maxPoolSize=max(args.clients, 1) + 2,
                         appname="mongowatch-bench-audit", serverSelectionTimeoutMS=30000)
    counts = [None] * args.clients
    errors = []
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    threads = [threading.Thread(target=worker, args=(client, args.db, i, deadline, counts, errors))
               for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    client.close()
    by_kind = dict.fromkeys(KINDS, 0)
    for c in counts:
        for k, v in (c or {}).items():
            by_kind[k] += v
    total = sum(by_kind.values())
    summary = {"pid": os.getpid(), "clients": args.clients, "elapsed_s": elapsed, "ops": total,
               "ops_per_sec": total / elapsed if elapsed > 0 else None, "by_kind": by_kind,
               "errors": errors}
    with open(args.summary, "w") as f:
        json.dump(summary, f)
    print("BENCH_SUMMARY " + json.dumps(summary), flush=True)
    if errors:
        sys.exit("errors: %s" % errors)


if __name__ == "__main__":
    main()
