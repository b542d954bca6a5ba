#!/usr/bin/env python3
"""The load of `cargo xtask bench compare` (tests/src/bin/bench_compare.rs).

One thread runs --ops operations back to back against --uri (insert_one, find_one, update_one,
a find read through getMores, count_documents, delete_one, in turn), with one kind of
monitoring in the process (--mode):
  plain         none (also the mode mongowatch watches from outside)
  listener      pymongo's own command monitoring: a CommandListener that keeps each event's
                command name and duration, as an in-process auditor would
  pymongowatch  pymongowatch's patch_pymongo() with a logging handler that formats every record
                to /dev/null (pymongowatch needs pymongo <= 4.8)
The summary (--summary, JSON): ops, seconds, ops/s, the process's own user and system CPU over
the operations (os.times), and what the monitoring saw (events or records), so a monitor that
silently logs nothing is caught.
"""

import argparse
import json
import logging
import os
import sys
import time

import pymongo
from pymongo import MongoClient, monitoring


class Listener(monitoring.CommandListener):
    def __init__(self):
        self.events = []

    def started(self, event):
        self.events.append(("started", event.command_name, event.request_id))

    def succeeded(self, event):
        self.events.append(("succeeded", event.command_name, event.duration_micros))

    def failed(self, event):
        self.events.append(("failed", event.command_name, event.duration_micros))


class Counting(logging.Handler):
    def __init__(self, out):
        super().__init__()
        self.out = out
        self.count = 0

    def emit(self, record):
        self.out.write(self.format(record) + "\n")
        self.count += 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--mode", choices=["plain", "listener", "pymongowatch"], required=True)
    p.add_argument("--ops", type=int, default=3000)
    p.add_argument("--summary", required=True)
    p.add_argument("--start-file")
    args = p.parse_args()

    seen = None
    listeners = []
    if args.mode == "listener":
        seen = Listener()
        listeners = [seen]
    elif args.mode == "pymongowatch":
        from pymongo import watcher

        watcher.patch_pymongo()
        seen = Counting(open(os.devnull, "w"))
        watcher.add_logging_handlers(seen)

    client = MongoClient(args.uri, event_listeners=listeners, appname="mongowatch-bench-compare")
    coll = client["mongowatch_compare"]["c_%d" % os.getpid()]
    coll.insert_many([{"k": -i, "grp": i % 10, "s": "x" * 32} for i in range(1, 41)])
    if args.start_file:
        deadline = time.monotonic() + 120
        while not os.path.exists(args.start_file):
            if time.monotonic() > deadline:
                sys.exit("start file did not appear")
            time.sleep(0.005)

    t_cpu = os.times()
    t0 = time.monotonic()
    for i in range(args.ops):
        kind, k = i % 6, i // 6
        if kind == 0:
            coll.insert_one({"k": k, "grp": k % 10, "s": "x" * 32})
        elif kind == 1:
            coll.find_one({"k": k})
        elif kind == 2:
            coll.update_one({"k": k}, {"$inc": {"u": 1}})
        elif kind == 3:
            list(coll.find({"grp": k % 10}, batch_size=4).limit(12))
        elif kind == 4:
            coll.count_documents({"grp": k % 10})
        else:
            coll.delete_one({"k": k - 50})
    elapsed = time.monotonic() - t0
    cpu = os.times()
    client.close()
    # pymongowatch's queue listener writes in the background: give it a moment to catch up.
    if args.mode == "pymongowatch":
        time.sleep(1.0)
    seen_count = None
    if isinstance(seen, Listener):
        seen_count = len(seen.events)
    elif isinstance(seen, Counting):
        seen_count = seen.count
    with open(args.summary, "w") as f:
        json.dump(
            {
                "mode": args.mode,
                "pymongo": pymongo.version,
                "ops": args.ops,
                "seconds": elapsed,
                "ops_per_sec": args.ops / elapsed,
                "user_s": cpu.user - t_cpu.user,
                "sys_s": cpu.system - t_cpu.system,
                "seen": seen_count,
            },
            f,
        )


if __name__ == "__main__":
    main()
