#!/usr/bin/env node
// A Node `mongodb` driver workload for mongowatch's end-to-end tests, with its own oracle.
//
// The same operation plan as pymongo_workload.py (see plan()). Every command the driver sends
// is recorded from the client's command monitoring (`monitorCommands: true`: commandStarted /
// commandSucceeded / commandFailed, with requestId, command name and duration) as JSON lines in
// --out: the oracle mongowatch's audit records are compared with.
//
// The client is created only after the start gate (--start-file and/or --start-delay), so a
// tracer can attach to this process's PID first. At the end one line `WORKLOAD_SUMMARY {...}`
// on stdout (and --summary FILE) gives counts and throughput.
//
// The driver is found through NODE_PATH (the project cache's node_modules; the harness and
// `cargo xtask` set it).
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const { eventFields } = require('./oracle_fields');
const { MongoClient } = require('mongodb');

const BATCH = 2000;
// The one document that makes a request and a reply of >= 5 MB; random, so it stays that big
// on the wire when compression is negotiated.
const BIG_BYTES = 5 * 1024 * 1024 + 512 * 1024;

function plan(i, n) {
  if (n >= 4 && i === Math.floor(n / 2)) return 'big_insert';
  if (n >= 4 && i === Math.floor(n / 2) + 1) return 'big_find';
  if (i === 3) return 'failing_command';
  if (i % 500 === 1) return 'insert_many';
  if (i % 50 === 2) return 'find_getmore';
  if (i % 250 === 3) return 'find_partial';
  if (i % 100 === 4) return 'aggregate';
  if (i % 100 === 5) return 'count';
  if (i % 10 === 6) return 'update_one';
  if (i % 100 === 7) return 'update_many';
  if (i % 20 === 8) return 'delete_one';
  if (i % 200 === 9) return 'delete_many';
  if (i % 10 === 0) return 'find_one';
  return 'insert_one';
}

function parseArgs(argv) {
  const args = {
    uri: null, ops: 10000, out: null, summary: null, db: 'mongowatch_e2e', batchSize: 50,
    startFile: null, startTimeout: 120, startDelay: 0,
  };
  const names = {
    '--uri': ['uri', String], '--ops': ['ops', Number], '--out': ['out', String],
    '--summary': ['summary', String], '--db': ['db', String], '--batch-size': ['batchSize', Number],
    '--start-file': ['startFile', String], '--start-timeout': ['startTimeout', Number],
    '--start-delay': ['startDelay', Number],
  };
  for (let i = 2; i < argv.length; i++) {
    const spec = names[argv[i]];
    if (!spec || i + 1 >= argv.length) {
      console.error(`usage: node_workload.js --uri URI [--ops N] [--out FILE] [--summary FILE] ` +
        `[--db NAME] [--batch-size N] [--start-file FILE] [--start-timeout S] [--start-delay S]` +
        ` (bad argument ${argv[i]})`);
      process.exit(2);
    }
    args[spec[0]] = spec[1](argv[++i]);
  }
  if (!args.uri) {
    console.error('--uri is required');
    process.exit(2);
  }
  return args;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitForStart(args) {
  if (args.startFile) {
    const deadline = Date.now() + args.startTimeout * 1000;
    while (!fs.existsSync(args.startFile)) {
      if (Date.now() > deadline) {
        console.error(`start file ${args.startFile} did not appear within ${args.startTimeout}s`);
        process.exit(1);
      }
      await sleep(10);
    }
  }
  if (args.startDelay > 0) await sleep(args.startDelay * 1000);
}

class Oracle {
  constructor(path) {
    this.lines = path ? [] : null;
    this.path = path;
    this.started = 0;
    this.succeeded = 0;
    this.failed = 0;
  }

  write(rec) {
    if (this.lines) this.lines.push(JSON.stringify(rec));
  }

  attach(client) {
    client.on('commandStarted', (ev) => {
      this.started++;
      const rec = eventFields(ev, 'started');
      const target = ev.command && ev.command[ev.commandName];
      if (typeof target === 'string') rec.collection = target;
      if (ev.command && Array.isArray(ev.command.documents)) rec.documents = ev.command.documents.length;
      this.write(rec);
    });
    client.on('commandSucceeded', (ev) => {
      this.succeeded++;
      const rec = eventFields(ev, 'succeeded');
      rec.duration_us = Math.round(ev.duration * 1000);
      rec.ok = ev.reply ? ev.reply.ok : null;
      this.write(rec);
    });
    client.on('commandFailed', (ev) => {
      this.failed++;
      const rec = eventFields(ev, 'failed');
      rec.duration_us = Math.round(ev.duration * 1000);
      rec.code = ev.failure && ev.failure.code != null ? ev.failure.code : null;
      rec.errmsg = ev.failure ? String(ev.failure.errmsg || ev.failure.message) : null;
      this.write(rec);
    });
  }

  close() {
    if (this.lines) fs.writeFileSync(this.path, this.lines.length ? this.lines.join('\n') + '\n' : '');
  }
}

async function run(args) {
  const oracle = new Oracle(args.out);
  const client = new MongoClient(args.uri, {
    monitorCommands: true,
    appName: 'mongowatch-node-workload',
    serverSelectionTimeoutMS: 30000,
  });
  oracle.attach(client);
  await client.connect();
  const db = client.db(args.db);
  const tag = `${process.pid}_${Date.now() % 1000000000}`;
  const items = db.collection(`items_${tag}`);
  const big = db.collection(`big_${tag}`);
  await client.db('admin').command({ ping: 1 });
  await items.createIndex({ k: 1 });
  await items.createIndex({ grp: 1 });

  const counts = {};
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < args.ops; i++) {
    const op = plan(i, args.ops);
    counts[op] = (counts[op] || 0) + 1;
    const grp = i % 10;
    switch (op) {
      case 'insert_one':
        await items.insertOne({ k: i, grp, s: 'x'.repeat(20) });
        break;
      case 'insert_many': {
        const docs = [];
        for (let j = 0; j < BATCH; j++) docs.push({ k: i * 10000 + j, grp: j % 10, s: 'y'.repeat(20) });
        await items.insertMany(docs);
        break;
      }
      case 'find_getmore':
        await items.find({ grp }, { batchSize: args.batchSize }).limit(6 * args.batchSize).toArray();
        break;
      case 'find_partial': {
        const cursor = items.find({}, { batchSize: args.batchSize });
        for (let n = 0; n < Math.min(3, args.batchSize); n++) {
          if ((await cursor.next()) === null) break;
        }
        await cursor.close();
        break;
      }
      case 'aggregate':
        await items.aggregate([
          { $match: { k: { $gte: i - 100, $lt: i } } },
          { $group: { _id: '$grp', n: { $sum: 1 } } },
        ]).toArray();
        break;
      case 'count':
        await items.countDocuments({ k: { $gte: i - 100, $lt: i } });
        break;
      case 'update_one':
        await items.updateOne({ k: i - 1 }, { $inc: { u: 1 } });
        break;
      case 'update_many':
        await items.updateMany({ k: { $gte: i - 20, $lt: i } }, { $set: { m: i } });
        break;
      case 'delete_one':
        await items.deleteOne({ k: i - 5 });
        break;
      case 'delete_many':
        await items.deleteMany({ k: { $gte: i * 10000, $lt: i * 10000 + 100 } });
        break;
      case 'find_one':
        await items.findOne({ k: i - 1 });
        break;
      case 'big_insert':
        await big.insertOne({ _id: 1, blob: crypto.randomBytes(BIG_BYTES) });
        break;
      case 'big_find': {
        const doc = await big.findOne({ _id: 1 });
        if (!doc || doc.blob.length() !== BIG_BYTES) throw new Error('big document came back wrong');
        break;
      }
      case 'failing_command': {
        let failed = false;
        try {
          await db.command({ mongowatchNoSuchCommand: 1 });
        } catch (e) {
          failed = true;
        }
        if (!failed) throw new Error('an unknown command succeeded');
        break;
      }
      default:
        throw new Error(op);
    }
  }
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  await client.close();
  oracle.close();
  return {
    driver: 'node',
    pid: process.pid,
    ops: args.ops,
    elapsed_s: elapsed,
    ops_per_sec: elapsed > 0 ? args.ops / elapsed : null,
    commands_started: oracle.started,
    commands_succeeded: oracle.succeeded,
    commands_failed: oracle.failed,
    op_counts: counts,
  };
}

async function main() {
  const args = parseArgs(process.argv);
  await waitForStart(args);
  const summary = await run(args);
  const line = JSON.stringify(summary);
  if (args.summary) fs.writeFileSync(args.summary, line + '\n');
  console.log('WORKLOAD_SUMMARY ' + line);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
