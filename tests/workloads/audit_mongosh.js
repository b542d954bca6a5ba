// The mongosh workload of the audit acceptance tests (tests/tests/audit.rs), with its oracle.
//
// Run as `mongosh "<uri>&monitorCommands=true" --quiet --file audit_mongosh.js`, with
// AUDIT_OUT (the oracle file) and AUDIT_DB in the environment. `monitorCommands=true` in the URI
// makes the shell's own MongoClient publish command monitoring events; this script subscribes
// to them first thing and writes one JSON line per event, the command and the reply as relaxed
// Extended JSON and cursor ids as decimal strings, in the format of audit_node.js. Commands the
// shell sends before the script runs (its startup probes, on admin) are not in the oracle; the
// test filters mongowatch's records to AUDIT_DB for that reason.

const fs = require('fs');

const out = process.env.AUDIT_OUT;
const dbName = process.env.AUDIT_DB || 'mongowatch_audit';
if (!out) throw new Error('AUDIT_OUT is not set');
const fd = fs.openSync(out, 'w');
const write = (rec) => fs.writeSync(fd, JSON.stringify(rec) + '\n');
const ejson = (doc) => JSON.parse(EJSON.stringify(doc, { relaxed: true }));
const idString = (v) => (v == null ? null : (typeof v === 'object' ? v.toString() : String(v)));

const client = db.getMongo()._serviceProvider.mongoClient;
if (!client.monitorCommands) throw new Error('monitorCommands=true is missing from the URI');
let started = 0;
const common = (ev, kind) => ({
  event: kind,
  t_ns: Number(process.hrtime.bigint()),
  request_id: ev.requestId,
  command_name: ev.commandName,
  database: ev.databaseName,
  connection: ev.address,
  connection_id: ev.connectionId,
});
const addReply = (rec, reply) => {
  rec.reply = ejson(reply);
  const c = reply && reply.cursor;
  if (c && typeof c === 'object') {
    rec.cursor_id = idString(c.id);
    const batch = c.firstBatch || c.nextBatch;
    rec.batch_len = Array.isArray(batch) ? batch.length : null;
  }
};
client.on('commandStarted', (ev) => {
  started++;
  const rec = common(ev, 'started');
  rec.command = ejson(ev.command);
  if (ev.commandName === 'getMore') rec.target_cursor_ids = [idString(ev.command.getMore)];
  if (ev.commandName === 'killCursors') rec.target_cursor_ids = (ev.command.cursors || []).map(idString);
  write(rec);
});
client.on('commandSucceeded', (ev) => {
  const rec = common(ev, 'succeeded');
  addReply(rec, ev.reply);
  write(rec);
});
client.on('commandFailed', (ev) => {
  const rec = common(ev, 'failed');
  const f = ev.failure || {};
  addReply(rec, f.errorResponse || { ok: 0, code: f.code, codeName: f.codeName, errmsg: f.errmsg || f.message });
  write(rec);
});

const d = db.getSiblingDB(dbName);
const coll = d.getCollection(`shell_${process.pid}`);
const docs = [];
for (let i = 0; i < 120; i++) docs.push({ k: i, grp: i % 6 });
coll.insertMany(docs);
coll.insertOne({ k: 1000, grp: 0 });
const n = coll.find({ grp: 2 }).sort({ k: 1 }).batchSize(7).toArray().length;
if (n !== 20) throw new Error(`find returned ${n}`);
coll.aggregate([{ $match: { k: { $lt: 60 } } }, { $group: { _id: '$grp', n: { $sum: 1 } } }]).toArray();
if (coll.countDocuments({ grp: 1 }) !== 20) throw new Error('countDocuments');
coll.distinct('grp', { k: { $gte: 100 } });
coll.updateOne({ k: 1 }, { $set: { u: 1 } });
coll.updateMany({ k: 500000 }, { $set: { grp: 9 } }, { upsert: true });
coll.deleteMany({ grp: 5 });
coll.findOneAndUpdate({ k: 2 }, { $set: { f: 1 } });
let failed = false;
try {
  d.runCommand({ mongowatchNoSuchCommand: 1 });
  // runCommand in mongosh returns the error document rather than throwing, in some versions.
} catch (e) {
  failed = true;
}
coll.drop();
fs.closeSync(fd);
print(JSON.stringify({ driver: 'mongosh', pid: process.pid, commands_started: started, unknown_command_threw: failed }));
