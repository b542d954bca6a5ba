#!/usr/bin/env node
// The Node `mongodb` driver workload of the audit acceptance tests (tests/tests/audit.rs), with
// its oracle. The same operations as audit_pymongo.py, through the Node API: find with
// filter/sort/limit/batchSize, aggregate with $group, countDocuments, distinct, insertOne (also
// unacknowledged, w:0), insertMany, updateOne/updateMany with upsert, replaceOne,
// deleteOne/deleteMany, findOneAndUpdate/findOneAndDelete, bulkWrite, a duplicate-key error, an
// unknown command, a cursor closed half-read (killCursors) and a cursor left open for --hold
// seconds then read on.
//
// --role victim opens a cursor, reads from it, writes --ready-file and sleeps: the test
// SIGKILLs it mid-cursor.
//
// The oracle (--out) is the client's command monitoring (`monitorCommands: true`): one JSON line
// per command event with the command and the reply as relaxed Extended JSON (EJSON.stringify,
// relaxed), and cursor ids as decimal strings (relaxed EJSON turns a Long into a JS number,
// which loses the low bits of a 64-bit cursor id). Each line is written at once (writeSync),
// so a killed process leaves a complete oracle of what it sent.
'use strict';

const fs = require('fs');
const { eventFields } = require('./oracle_fields');
const { MongoClient, BSON } = require('mongodb');

const { EJSON } = BSON;

function parseArgs(argv) {
  const args = {
    uri: null, out: null, summary: null, db: 'mongowatch_audit', role: 'main', hold: 5,
    readyFile: null, startFile: null, startTimeout: 120,
  };
  const names = {
    '--uri': ['uri', String], '--out': ['out', String], '--summary': ['summary', String],
    '--db': ['db', String], '--role': ['role', String], '--hold': ['hold', Number],
    '--ready-file': ['readyFile', String], '--start-file': ['startFile', String],
    '--start-timeout': ['startTimeout', Number],
  };
  for (let i = 2; i < argv.length; i++) {
    const spec = names[argv[i]];
    if (!spec || i + 1 >= argv.length) {
      console.error(`audit_node.js: bad argument ${argv[i]}`);
      process.exit(2);
    }
    args[spec[0]] = spec[1](argv[++i]);
  }
  if (!args.uri || !args.out) {
    console.error('--uri and --out are required');
    process.exit(2);
  }
  return args;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const idString = (v) => (v == null ? null : (typeof v === 'object' ? v.toString() : String(v)));

class Oracle {
  constructor(path) {
    this.fd = fs.openSync(path, 'w');
    this.started = 0;
  }

  write(rec) {
    fs.writeSync(this.fd, JSON.stringify(rec) + '\n');
  }

  static ejson(doc) {
    return JSON.parse(EJSON.stringify(doc, { relaxed: true }));
  }

  reply(rec, reply) {
    rec.reply = Oracle.ejson(reply);
    const c = reply && reply.cursor;
    if (c && typeof c === 'object') {
      rec.cursor_id = idString(c.id);
      const batch = c.firstBatch || c.nextBatch;
      rec.batch_len = Array.isArray(batch) ? batch.length : null;
    }
  }

  attach(client) {
    client.on('commandStarted', (ev) => {
      this.started++;
      const rec = eventFields(ev, 'started');
      rec.command = Oracle.ejson(ev.command);
      if (ev.commandName === 'getMore') rec.target_cursor_ids = [idString(ev.command.getMore)];
      if (ev.commandName === 'killCursors') {
        rec.target_cursor_ids = (ev.command.cursors || []).map(idString);
      }
      this.write(rec);
    });
    client.on('commandSucceeded', (ev) => {
      const rec = eventFields(ev, 'succeeded');
      this.reply(rec, ev.reply);
      this.write(rec);
    });
    client.on('commandFailed', (ev) => {
      const rec = eventFields(ev, 'failed');
      const f = ev.failure || {};
      const reply = f.errorResponse || {
        ok: 0, code: f.code, codeName: f.codeName, errmsg: f.errmsg || f.message,
      };
      this.reply(rec, reply);
      this.write(rec);
    });
  }
}

async function mainRole(client, args, counts) {
  const db = client.db(args.db);
  const coll = db.collection(`audit_${process.pid}`);
  const op = (name) => { counts[name] = (counts[name] || 0) + 1; };

  const docs = [];
  for (let i = 0; i < 300; i++) docs.push({ k: i, grp: i % 10, s: `v${i}` });
  await coll.insertMany(docs); op('insert_many');
  await coll.createIndex({ k: 1 }, { unique: true }); op('create_index');
  let dup = false;
  try {
    await coll.insertOne({ k: 7, grp: 0 });
  } catch (e) {
    dup = e.code === 11000;
  }
  if (!dup) throw new Error('the duplicate key was accepted');
  op('insert_one_duplicate');
  await coll.insertOne({ k: 1000, grp: 0, s: 'one' }); op('insert_one');
  // Unacknowledged (w:0, moreToCome): no reply; the record is final at once.
  await coll.insertOne({ k: 1001, grp: 20 }, { writeConcern: { w: 0 } });
  op('insert_one_unacknowledged');

  const found = await coll.find({ grp: 3 }, { sort: { k: -1 }, limit: 25, batchSize: 10 }).toArray();
  if (found.length !== 25) throw new Error(`find returned ${found.length}`);
  op('find');
  {
    const cur = coll.find({ k: { $gte: 100 } }, { batchSize: 20 });
    for (let n = 0; n < 30; n++) await cur.next();
    await cur.close(); op('find_killed');
  }
  const one = await coll.findOne({ k: 5 }, { projection: { _id: 0 } });
  if (!one || one.k !== 5) throw new Error('findOne');
  op('find_one');

  await coll.aggregate([
    { $match: { grp: { $lt: 5 } } },
    { $group: { _id: '$grp', n: { $sum: 1 } } },
    { $sort: { _id: 1 } },
  ]).toArray(); op('aggregate');
  if ((await coll.countDocuments({ grp: 2 })) !== 30) throw new Error('countDocuments');
  op('count_documents');
  if ((await coll.distinct('grp', { k: { $lt: 50 } })).length !== 10) throw new Error('distinct');
  op('distinct');
  // An aggregate cursor read through getMores, the legacy count (with and without a query)
  // and listIndexes (another cursor-producing command).
  const groups = await coll.aggregate(
    [{ $match: { grp: { $lt: 10 } } }, { $group: { _id: '$grp', n: { $sum: 1 } } }],
    { batchSize: 3 },
  ).toArray();
  if (groups.length !== 10) throw new Error('aggregate with getMores');
  op('aggregate_getmore');
  await coll.estimatedDocumentCount(); op('count');
  await db.command({ count: coll.collectionName, query: { grp: 1 } }); op('count_query');
  if ((await coll.listIndexes().toArray()).length !== 2) throw new Error('listIndexes');
  op('list_indexes');

  await coll.updateOne({ k: 1 }, { $set: { u: 1 } }); op('update_one');
  await coll.updateOne({ k: 100000 }, { $set: { grp: 11 } }, { upsert: true }); op('update_one_upsert');
  await coll.updateMany({ grp: 4 }, { $inc: { m: 1 } }); op('update_many');
  await coll.updateMany({ k: 200000 }, { $set: { grp: 12 } }, { upsert: true }); op('update_many_upsert');
  await coll.replaceOne({ k: 2 }, { k: 2, grp: 2, s: 'replaced' }); op('replace_one');
  await coll.deleteOne({ k: 3 }); op('delete_one');
  await coll.deleteMany({ grp: 9 }); op('delete_many');

  await coll.findOneAndUpdate({ k: 4 }, { $set: { f: 1 } }, { returnDocument: 'after' });
  op('find_one_and_update');
  await coll.findOneAndUpdate({ k: 300000 }, { $set: { grp: 13 } }, { upsert: true });
  op('find_one_and_update_upsert');
  await coll.findOneAndUpdate({ k: 999999 }, { $set: { f: 2 } }); op('find_one_and_update_none');
  await coll.findOneAndDelete({ k: 6 }); op('find_one_and_delete');

  const r = await coll.bulkWrite([
    { insertOne: { document: { k: 400000, grp: 1 } } },
    { insertOne: { document: { k: 400001, grp: 1 } } },
    { updateOne: { filter: { k: 10 }, update: { $set: { b: 1 } } } },
    { updateMany: { filter: { grp: 5 }, update: { $set: { b: 2 } } } },
    { deleteOne: { filter: { k: 11 } } },
    { replaceOne: { filter: { k: 12 }, replacement: { k: 12, grp: 2, s: 'bulk' } } },
  ]);
  if (r.insertedCount !== 2 || r.deletedCount !== 1) throw new Error('bulkWrite');
  op('bulk_write');

  let failed = false;
  try {
    await db.command({ mongowatchNoSuchCommand: 1 });
  } catch (e) {
    failed = true;
  }
  if (!failed) throw new Error('an unknown command succeeded');
  op('unknown_command');

  {
    const cur = coll.find({ grp: { $in: [0, 1] } }, { batchSize: 5 });
    for (let n = 0; n < 5; n++) await cur.next();
    await sleep(args.hold * 1000);
    for (let n = 0; n < 5; n++) await cur.next(); // one getMore
    await cur.close(); op('find_held');
  }

  await coll.drop(); op('drop');
}

async function victimRole(client, args, counts) {
  const coll = client.db(args.db).collection(`victim_${process.pid}`);
  const docs = [];
  for (let i = 0; i < 40; i++) docs.push({ k: i });
  await coll.insertMany(docs);
  counts.insert_many = 1;
  const cur = coll.find({ k: { $gte: 0 } }, { batchSize: 8 });
  await cur.next();
  counts.find_open = 1;
  fs.writeFileSync(args.readyFile, `${process.pid}\n`);
  await sleep(args.hold * 1000); // the test kills us long before this ends
  console.error(`victim: not killed within ${args.hold}s`);
  process.exit(1);
}

async function main() {
  const args = parseArgs(process.argv);
  if (args.startFile) {
    const deadline = Date.now() + args.startTimeout * 1000;
    while (!fs.existsSync(args.startFile)) {
      if (Date.now() > deadline) {
        console.error(`start file ${args.startFile} did not appear`);
        process.exit(1);
      }
      await sleep(10);
    }
  }
  const oracle = new Oracle(args.out);
  const client = new MongoClient(args.uri, {
    monitorCommands: true,
    appName: 'mongowatch-audit-node',
    serverSelectionTimeoutMS: 30000,
  });
  oracle.attach(client);
  await client.connect();
  const counts = {};
  const t0 = process.hrtime.bigint();
  if (args.role === 'victim') await victimRole(client, args, counts);
  else await mainRole(client, args, counts);
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  await client.close();
  const summary = {
    driver: 'node', pid: process.pid, elapsed_s: elapsed, commands_started: oracle.started,
    op_counts: counts,
  };
  const line = JSON.stringify(summary);
  if (args.summary) fs.writeFileSync(args.summary, line + '\n');
  console.log('WORKLOAD_SUMMARY ' + line);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
