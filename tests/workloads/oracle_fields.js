// The fields every oracle line of a Node driver workload starts with, from a command event
// (kind: 'started', 'succeeded' or 'failed').
'use strict';

function eventFields(ev, kind) {
  return {
    event: kind,
    // process.hrtime is CLOCK_MONOTONIC on Linux: comparable with the kernel's timestamps.
    t_ns: Number(process.hrtime.bigint()),
    request_id: ev.requestId,
    command_name: ev.commandName,
    database: ev.databaseName,
    connection: ev.address,
    connection_id: ev.connectionId,
    // The server's id of the connection (hello's connectionId): which pooled connection
    // carried the command.
    server_connection_id: ev.serverConnectionId == null ? null : Number(ev.serverConnectionId),
  };
}

module.exports = { eventFields };
