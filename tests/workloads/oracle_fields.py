"""The fields every oracle line of a pymongo workload starts with, from a command event."""

import time


def event_fields(event, kind):
    """kind: "started", "succeeded" or "failed"."""
    conn = event.connection_id
    return {
        "event": kind,
        # CLOCK_MONOTONIC: comparable with the kernel's timestamps.
        "t_ns": time.monotonic_ns(),
        "request_id": event.request_id,
        "operation_id": event.operation_id,
        "command_name": event.command_name,
        "database": event.database_name,
        "connection": "%s:%s" % conn if isinstance(conn, tuple) else str(conn),
        # The server's id of the connection (hello's connectionId): which pooled connection
        # carried the command.
        "server_connection_id": getattr(event, "server_connection_id", None),
    }
