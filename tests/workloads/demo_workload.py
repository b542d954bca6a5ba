#!/usr/bin/env python3
"""The sample application of `cargo xtask demo`: a handful of pymongo operations.

A few inserts, a find with a small batch_size (so the driver sends getMores), an aggregate, an
update, a delete and a count. It connects only after its start gate (--start-file, then
--start-delay seconds), so mongowatch can attach to its PID first. It narrates on stderr and
keeps stdout free for mongowatch's JSON lines.
"""

import argparse
import os
import sys
import time

from pymongo import MongoClient


def say(msg):
    print("demo app (pid %d): %s" % (os.getpid(), msg), file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--start-file")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--start-delay", type=float, default=1.0)
    args = p.parse_args()

    if args.start_file:
        deadline = time.monotonic() + args.start_timeout
        while not os.path.exists(args.start_file):
            if time.monotonic() > deadline:
                sys.exit("start file %s did not appear within %ss" % (args.start_file, args.start_timeout))
            time.sleep(0.01)
    time.sleep(args.start_delay)

    client = MongoClient(args.uri, appname="mongowatch-demo")
    shop = client["demo"]["orders"]
    shop.drop()
    say("inserting 25 orders")
    shop.insert_one({"_id": 0, "item": "teapot", "qty": 1, "status": "new"})
    shop.insert_many(
        [{"_id": i, "item": "cup-%d" % i, "qty": i % 5 + 1, "status": "new"} for i in range(1, 25)]
    )
    say("reading them back 10 at a time (find + getMores)")
    n = sum(1 for _ in shop.find({}, batch_size=10))
    say("read %d orders" % n)
    totals = list(shop.aggregate([{"$group": {"_id": "$status", "qty": {"$sum": "$qty"}}}]))
    say("aggregate: %s" % totals)
    shop.update_one({"_id": 0}, {"$set": {"status": "shipped"}})
    shop.delete_one({"_id": 24})
    say("count of new orders: %d" % shop.count_documents({"status": "new"}))
    client.close()
    say("done")


if __name__ == "__main__":
    main()
