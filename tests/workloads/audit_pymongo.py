#!/usr/bin/env python3
"""The pymongo workload of the audit acceptance tests (tests/tests/audit.rs), with its oracle.

One pass over every kind of operation the audit record contract describes: find with
filter/sort/limit/batch_size (getMores), a cursor continued on another pooled connection, an
exhaust cursor, aggregate with $group, count_documents, distinct, insert_one (also
unacknowledged, w:0), insert_many, update_one/update_many with upsert, replace_one,
delete_one/delete_many, find_one_and_update / find_one_and_delete, bulk_write, a duplicate-key error, an unknown
command, a cursor closed half-read (killCursors) and a cursor left open for --hold seconds
(longer than mongowatch's --timeout) and read further afterwards.

--role victim instead opens a cursor, reads part of its first batch, touches --ready-file and
sleeps: the test SIGKILLs it mid-cursor.

The oracle (--out) is pymongo's own ``monitoring.CommandListener``: one JSON line per command
event, with the command document and the reply as Relaxed Extended JSON (bson.json_util,
RELAXED_JSON_OPTIONS), and the cursor ids as decimal strings (exact, whatever the reader).
Each line is flushed at once, so a killed process leaves a complete oracle of what it sent.
"""

import argparse
import json
import os
import sys
import time

from bson import json_util
from oracle_fields import event_fields
from pymongo import (CursorType, DeleteOne, InsertOne, MongoClient, ReplaceOne, ReturnDocument, UpdateMany,
                     UpdateOne, monitoring)
from pymongo.errors import DuplicateKeyError, OperationFailure
from pymongo.write_concern import WriteConcern


def _ids(value):
    """Cursor ids as decimal strings."""
    if isinstance(value, list):
        return [str(int(v)) for v in value]
    return [str(int(value))]


class Oracle(monitoring.CommandListener):
    def __init__(self, path):
        self.out = open(path, "w", buffering=1)
        self.n = 0

    def _write(self, rec):
        self.out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.out.flush()

    @staticmethod
    def _ejson(doc):
        return json.loads(json_util.dumps(doc, json_options=json_util.RELAXED_JSON_OPTIONS))

    def started(self, event):
        self.n += 1
        rec = event_fields(event, "started")
        cmd = event.command
        rec["command"] = self._ejson(cmd)
        if event.command_name == "getMore":
            rec["target_cursor_ids"] = _ids(cmd["getMore"])
        elif event.command_name == "killCursors":
            rec["target_cursor_ids"] = _ids(list(cmd.get("cursors", [])))
        self._write(rec)

    def _reply(self, rec, reply):
        rec["reply"] = self._ejson(reply)
        cursor = reply.get("cursor") if isinstance(reply, dict) else None
        if isinstance(cursor, dict):
            rec["cursor_id"] = str(int(cursor.get("id", 0)))
            batch = cursor.get("firstBatch", cursor.get("nextBatch"))
            rec["batch_len"] = len(batch) if isinstance(batch, list) else None

    def succeeded(self, event):
        rec = event_fields(event, "succeeded")
        self._reply(rec, event.reply)
        self._write(rec)

    def failed(self, event):
        rec = event_fields(event, "failed")
        failure = event.failure if isinstance(event.failure, dict) else {"ok": 0, "errmsg": str(event.failure)}
        self._reply(rec, failure)
        self._write(rec)


def wait_for(path, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit("%s did not appear within %ss" % (path, timeout))
        time.sleep(0.01)


def main_role(client, args, counts):
    db = client[args.db]
    coll = db["audit_%d" % os.getpid()]

    def op(name):
        counts[name] = counts.get(name, 0) + 1

    coll.insert_many([{"k": i, "grp": i % 10, "s": "v%d" % i} for i in range(300)]); op("insert_many")
    coll.create_index("k", unique=True); op("create_index")
    try:
        coll.insert_one({"k": 7, "grp": 0})
        raise AssertionError("the duplicate key was accepted")
    except DuplicateKeyError:
        pass
    op("insert_one_duplicate")
    coll.insert_one({"k": 1000, "grp": 0, "s": "one"}); op("insert_one")
    # Unacknowledged (w:0, moreToCome): no reply; the record is final at once.
    coll.with_options(write_concern=WriteConcern(w=0)).insert_one({"k": 1001, "grp": 20})
    op("insert_one_unacknowledged")

    # find with filter, sort, limit and batch_size: a find and two getMores.
    docs = list(coll.find({"grp": 3}, sort=[("k", -1)], limit=25, batch_size=10)); op("find")
    assert len(docs) == 25, len(docs)
    # A cursor closed half-read: find, one getMore, killCursors.
    cur = coll.find({"k": {"$gte": 100}}, batch_size=20)
    for _ in range(30):
        next(cur)
    cur.close(); op("find_killed")
    assert coll.find_one({"k": 5}, {"_id": 0})["k"] == 5; op("find_one")

    # A cursor whose getMore goes out on another pooled connection than its find. The pool
    # hands out its most recently used connection, so the exhaust cursor below takes (and
    # pins, until it is read to its end) the connection the first cursor's find used; the
    # first cursor's next getMore must then take another one. The exhaust cursor itself is
    # one getMore answered by a stream of replies (moreToCome).
    moved = coll.find({"grp": {"$in": [6, 7]}}, batch_size=4)
    for _ in range(4):
        next(moved)
    pinned = coll.find({"grp": 8}, batch_size=3, cursor_type=CursorType.EXHAUST)
    next(pinned)
    for _ in range(4):
        next(moved)  # one getMore, on another connection
    assert len(list(pinned)) == 29; op("find_exhaust")
    moved.close(); op("find_moved")

    list(coll.aggregate([{"$match": {"grp": {"$lt": 5}}},
                         {"$group": {"_id": "$grp", "n": {"$sum": 1}}},
                         {"$sort": {"_id": 1}}])); op("aggregate")
    assert coll.count_documents({"grp": 2}) == 30; op("count_documents")
    assert len(coll.distinct("grp", {"k": {"$lt": 50}})) == 10; op("distinct")
    # An aggregate cursor read through getMores, the legacy count (with and without a query)
    # and listIndexes (another cursor-producing command).
    groups = list(coll.aggregate([{"$match": {"grp": {"$lt": 10}}},
                                  {"$group": {"_id": "$grp", "n": {"$sum": 1}}}], batchSize=3))
    assert len(groups) == 10, groups; op("aggregate_getmore")
    coll.estimated_document_count(); op("count")
    db.command("count", coll.name, query={"grp": 1}); op("count_query")
    assert len(list(coll.list_indexes())) == 2; op("list_indexes")

    coll.update_one({"k": 1}, {"$set": {"u": 1}}); op("update_one")
    coll.update_one({"k": 100000}, {"$set": {"grp": 11}}, upsert=True); op("update_one_upsert")
    coll.update_many({"grp": 4}, {"$inc": {"m": 1}}); op("update_many")
    coll.update_many({"k": 200000}, {"$set": {"grp": 12}}, upsert=True); op("update_many_upsert")
    coll.replace_one({"k": 2}, {"k": 2, "grp": 2, "s": "replaced"}); op("replace_one")
    coll.delete_one({"k": 3}); op("delete_one")
    coll.delete_many({"grp": 9}); op("delete_many")

    coll.find_one_and_update({"k": 4}, {"$set": {"f": 1}}, return_document=ReturnDocument.AFTER)
    op("find_one_and_update")
    coll.find_one_and_update({"k": 300000}, {"$set": {"grp": 13}}, upsert=True); op("find_one_and_update_upsert")
    coll.find_one_and_update({"k": 999999}, {"$set": {"f": 2}}); op("find_one_and_update_none")
    coll.find_one_and_delete({"k": 6}); op("find_one_and_delete")

    # Ordered bulk: insert (2 documents), update (2 statements), delete, update (replace).
    r = coll.bulk_write([
        InsertOne({"k": 400000, "grp": 1}),
        InsertOne({"k": 400001, "grp": 1}),
        UpdateOne({"k": 10}, {"$set": {"b": 1}}),
        UpdateMany({"grp": 5}, {"$set": {"b": 2}}),
        DeleteOne({"k": 11}),
        ReplaceOne({"k": 12}, {"k": 12, "grp": 2, "s": "bulk"}),
    ])
    assert r.inserted_count == 2 and r.deleted_count == 1, r.bulk_api_result
    op("bulk_write")

    try:
        db.command("mongowatchNoSuchCommand")
        raise AssertionError("an unknown command succeeded")
    except OperationFailure:
        pass
    op("unknown_command")

    # A cursor left open past mongowatch's --timeout, then read further and closed.
    cur = coll.find({"grp": {"$in": [0, 1]}}, batch_size=5)
    for _ in range(5):
        next(cur)
    time.sleep(args.hold)
    for _ in range(5):
        next(cur)  # one getMore
    cur.close(); op("find_held")

    coll.drop(); op("drop")


def victim_role(client, args, counts):
    coll = client[args.db]["victim_%d" % os.getpid()]
    coll.insert_many([{"k": i} for i in range(40)])
    counts["insert_many"] = 1
    cur = coll.find({"k": {"$gte": 0}}, batch_size=8)
    next(cur)
    counts["find_open"] = 1
    with open(args.ready_file, "w") as f:
        f.write("%d\n" % os.getpid())
    time.sleep(args.hold)  # the test kills us long before this ends
    sys.exit("victim: not killed within %ss" % args.hold)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--out", required=True, help="oracle: command events as JSON lines")
    p.add_argument("--summary", help="write the summary JSON here")
    p.add_argument("--db", default="mongowatch_audit")
    p.add_argument("--role", choices=["main", "victim"], default="main")
    p.add_argument("--hold", type=float, default=5.0, help="seconds the held cursor stays idle")
    p.add_argument("--ready-file", help="victim: touched once its cursor is open")
    p.add_argument("--start-file", help="wait until this file exists before connecting")
    p.add_argument("--start-timeout", type=float, default=120.0)
    args = p.parse_args()
    if args.start_file:
        wait_for(args.start_file, args.start_timeout)
    oracle = Oracle(args.out)
    client = MongoClient(args.uri, event_listeners=[oracle], appname="mongowatch-audit-pymongo",
                         serverSelectionTimeoutMS=30000)
    counts = {}
    t0 = time.perf_counter()
    if args.role == "victim":
        victim_role(client, args, counts)
    else:
        main_role(client, args, counts)
    elapsed = time.perf_counter() - t0
    client.close()
    summary = {"driver": "pymongo", "pid": os.getpid(), "elapsed_s": elapsed,
               "commands_started": oracle.n, "op_counts": counts}
    line = json.dumps(summary, separators=(",", ":"))
    if args.summary:
        with open(args.summary, "w") as f:
            f.write(line + "\n")
    print("WORKLOAD_SUMMARY " + line, flush=True)


if __name__ == "__main__":
    main()
