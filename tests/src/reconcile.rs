//! Reconciling what crossed the wire (the [`RecordingProxy`](crate::RecordingProxy)) with what
//! the driver says it sent (its command monitoring oracle).
//!
//! Drivers send messages that their command monitoring never reports: each connection's
//! handshake (`hello`, or the legacy OP_QUERY `isMaster` of the Node driver and mongosh) and the
//! server monitors' heartbeats (`hello` on connections of their own, possibly streamed with
//! `moreToCome`). Everything else is one reported command: the wire requestID of its message is
//! the event's `request_id`. So: requests = oracle's started events + handshakes/heartbeats,
//! matched one to one by requestID, and each reported command has exactly one reply (none if
//! its request is flagged moreToCome).

use std::collections::HashMap;

use anyhow::{bail, ensure, Result};

use crate::{
    proxy::{ConnectionRecord, Direction},
    wire::WireMessage,
    workload::{OracleEvent, OracleEventKind},
};

/// The counts that came out of a successful [`reconcile`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WireAccount {
    /// Request messages the proxy saw, all connections.
    pub requests: usize,
    /// Reply messages the proxy saw, all connections.
    pub replies: usize,
    /// Requests the oracle reported (= its started events).
    pub reported_requests: usize,
    /// Handshakes and heartbeats (requests the oracle does not report).
    pub handshakes: usize,
    /// Connections that carried reported commands.
    pub app_connections: usize,
    /// Connections that carried only handshakes/heartbeats.
    pub monitor_connections: usize,
    /// Bytes of the largest reply to a reported command (uncompressed).
    pub largest_reply: usize,
    /// Bytes of the largest request (uncompressed).
    pub largest_request: usize,
    /// OP_COMPRESSED messages, both directions.
    pub compressed: usize,
}

/// Checks that `connections` and `oracle` tell the same story (see the module doc) and returns
/// the counts. Every connection must be closed and end on a message boundary.
pub fn reconcile(connections: &[ConnectionRecord], oracle: &[OracleEvent]) -> Result<WireAccount> {
    let mut account = WireAccount::default();
    // requestID -> (connection, request)
    let mut requests: HashMap<i32, Vec<(usize, WireMessage)>> = HashMap::new();
    // (connection, responseTo) -> replies
    let mut replies: HashMap<(usize, i32), Vec<WireMessage>> = HashMap::new();
    for conn in connections {
        for dir in [Direction::ClientToServer, Direction::ServerToClient] {
            let tail = conn.trailing_bytes(dir);
            ensure!(
                tail.is_empty(),
                "connection {} {dir:?} ends with {} bytes of an incomplete message",
                conn.id,
                tail.len()
            );
        }
        for msg in conn.requests() {
            account.requests += 1;
            account.largest_request = account.largest_request.max(msg.uncompressed_len());
            account.compressed += usize::from(msg.op_code() == crate::wire::OP_COMPRESSED);
            requests
                .entry(msg.request_id())
                .or_default()
                .push((conn.id, msg));
        }
        for msg in conn.replies() {
            account.replies += 1;
            account.compressed += usize::from(msg.op_code() == crate::wire::OP_COMPRESSED);
            replies
                .entry((conn.id, msg.response_to()))
                .or_default()
                .push(msg);
        }
    }

    let started: Vec<&OracleEvent> = oracle
        .iter()
        .filter(|e| e.event == OracleEventKind::Started)
        .collect();
    let finished = oracle
        .iter()
        .filter(|e| e.event != OracleEventKind::Started)
        .count();
    ensure!(
        started.len() == finished,
        "the oracle has {} started events and {finished} succeeded/failed ones",
        started.len()
    );
    account.reported_requests = started.len();

    let mut app_connections = std::collections::BTreeSet::new();
    let mut matched: HashMap<i32, usize> = HashMap::new();
    for ev in &started {
        let id = ev.request_id as i32;
        let candidates = requests.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        let used = matched.entry(id).or_default();
        let Some((conn, msg)) = candidates.get(*used) else {
            bail!(
                "the oracle's {} (request_id {id}) is not among the {} requests the proxy saw",
                ev.command_name,
                account.requests
            );
        };
        *used += 1;
        if let Some(name) = msg.command_name() {
            ensure!(
                name == ev.command_name,
                "request {id} on connection {conn} is {name} on the wire and {} in the oracle",
                ev.command_name
            );
        }
        // A request flagged moreToCome (the Node driver's endSessions at close, unacknowledged
        // writes) gets no reply; every other command gets exactly one.
        let expected = if msg.more_to_come() { 0 } else { 1 };
        let answers = replies.get(&(*conn, id)).map(Vec::as_slice).unwrap_or(&[]);
        ensure!(
            answers.len() == expected,
            "{} (request {id}, connection {conn}) has {} replies on the wire, expected {expected}",
            ev.command_name,
            answers.len()
        );
        if let Some(reply) = answers.first() {
            account.largest_reply = account.largest_reply.max(reply.uncompressed_len());
        }
        app_connections.insert(*conn);
    }

    for (id, msgs) in &requests {
        let reported = matched.get(id).copied().unwrap_or(0);
        for (conn, msg) in &msgs[reported..] {
            ensure!(
                msg.is_handshake(),
                "request {id} on connection {conn} ({:?}, opcode {}) is neither reported by the \
                 oracle nor a handshake/heartbeat",
                msg.command_name(),
                msg.op_code()
            );
            account.handshakes += 1;
        }
    }
    account.app_connections = app_connections.len();
    account.monitor_connections = connections.len() - app_connections.len();
    ensure!(
        account.requests == account.reported_requests + account.handshakes,
        "requests {} != reported {} + handshakes {}",
        account.requests,
        account.reported_requests,
        account.handshakes
    );
    Ok(account)
}
