"""A client that connects and talks before mongowatch attaches, then goes on.

It runs small operations until --resume-file exists (at least 20 of them, so its connections
are open and busy), then runs --ops more and exits. The capture test attaches mongowatch in
between and checks that everything after the attach is reported.
"""
import argparse
import os
import time

from pymongo import MongoClient


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--resume-file", required=True)
    p.add_argument("--ops", type=int, default=200)
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()
    client = MongoClient(args.uri, appname="mongowatch-preopened")
    coll = client.mongowatch_e2e.preopened
    deadline = time.monotonic() + args.timeout
    i = 0
    while i < 20 or not os.path.exists(args.resume_file):
        coll.insert_one({"phase": "before", "i": i})
        i += 1
        time.sleep(0.02)
        if time.monotonic() > deadline:
            raise SystemExit("resume file never appeared")
    for j in range(args.ops):
        if j % 2:
            coll.find_one({"i": j})
        else:
            coll.insert_one({"phase": "after", "i": j})
    client.close()


if __name__ == "__main__":
    main()
