//! What the ops layer is fed: paired exchanges of one connection, plus lifecycle events.
//! The capture path (or a test) produces these in time order across all connections.

use std::sync::Arc;

use crate::{stream::ConnInfo, wire::Exchange};

#[derive(Clone, Debug)]
pub enum Input {
    Exchange {
        conn: Arc<ConnInfo>,
        exchange: Exchange,
    },
    /// The connection ended (TCP close seen, or its process exited). `ts_ns`: ns since epoch.
    ConnClosed { conn: Arc<ConnInfo>, ts_ns: u64 },
    /// A watched process exited: every connection of it is closed.
    ProcessExited { pid: u32, ts_ns: u64 },
    /// Time passes (drives idle timeouts and the delay queue). `now_ns`: ns since epoch.
    Tick { now_ns: u64 },
}
