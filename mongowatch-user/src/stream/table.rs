//! The connection table: kernel events -> per-connection streams -> framed messages and paired
//! exchanges, handed to the caller (the pipeline) as [`TableEvent`]s. Pure code: the daemon
//! feeds it the ring buffer's events, the tests feed it synthetic ones.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
};

use serde::Serialize;

use mongowatch_common::{EventHeader, EVENT_FLAG_TLS};

use super::{BudgetStats, ConnConfig, ConnEvent, Connection, MemoryBudget, RawFrame};
use crate::{
    capture::{
        clock::Clock,
        events::{Direction, Ends, Event},
        procfs,
    },
    record::{Origin, Side},
    wire::{
        frame::{check_strict, Plausible},
        DecodeError, Exchange, Timed, WireStats,
    },
};

/// Who is talking: one connection of one watched process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Unique for the daemon's life (the kernel's socket cookie).
    pub id: u64,
    pub pid: u32,
    pub comm: Arc<str>,
    /// `ip:port` or unix socket path of the client end.
    pub client: Arc<str>,
    /// `ip:port` or unix socket path of the server end.
    pub server: Arc<str>,
    /// Bytes were read from a TLS library rather than the socket.
    pub tls: bool,
    /// The watched process is the connection's server.
    pub side: Side,
    /// Where the process runs (container, node, pod).
    pub origin: Arc<Origin>,
}

/// What the table hands back to its caller.
pub enum TableEvent<'a> {
    /// One framed wire message (for `--messages`), before any exchange it takes part in.
    Message {
        conn: &'a Arc<ConnInfo>,
        dir: Direction,
        frame: &'a RawFrame,
        message: Result<&'a Timed, &'a DecodeError>,
    },
    /// A request paired with its reply (or known to have none).
    Exchange {
        conn: &'a Arc<ConnInfo>,
        exchange: Exchange,
    },
    /// The connection ended (closed, its process exited, or idle past the timeout); nothing
    /// more comes from it.
    Closed { conn: Arc<ConnInfo>, ts_ns: u64 },
}

/// Counters of what the table saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TableStats {
    pub events: u64,
    pub data_bytes: u64,
    /// Connections seen, and those open now.
    pub connections: u64,
    pub open_connections: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
    pub messages: u64,
    pub decode_errors: u64,
    pub dropped_frames: u64,
    /// Data for a connection whose open event never arrived (ends learnt from /proc).
    pub late_connections: u64,
    /// Connections that began with a TLS handshake: encrypted, so not audited (each is warned
    /// about once), and the bytes seen on them.
    pub tls_connections: u64,
    pub tls_bytes: u64,
    /// TLS connections audited from the plaintext of their process's TLS library.
    pub tls_plaintext_connections: u64,
    /// The stream buffers' memory budget: its limit, peak and evictions.
    pub memory: BudgetStats,
    /// Connections the kernel forgot and met again (a second open event): their streams went
    /// on where they were.
    pub reopened_connections: u64,
    /// Connections closed to keep the table within its bound (the idlest first).
    pub evicted_connections: u64,
}

/// Which end of a connection the watched process is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Role {
    Unknown,
    Client,
    Server,
}

struct Conn {
    stream: Connection,
    info: Arc<ConnInfo>,
    ends: Ends,
    role: Role,
    /// The connection began with a TLS handshake: its bytes are ciphertext.
    tls: bool,
    /// Plaintext from the TLS library arrived: only such events feed the stream now.
    plaintext: bool,
    /// Per direction ([egress, ingress]): where the kernel's offsets start in this stream (they
    /// restart at 0 when the kernel forgets the connection and meets it again), and the end of
    /// the bytes seen so far.
    base: [u64; 2],
    end: [u64; 2],
    /// Gap events the kernel sent for this connection (warnings are rate-limited by it).
    kernel_gaps: u64,
}

/// What one connection costs the table beyond its buffers, as the memory budget counts it
/// (about 2 KiB measured, with room for long unix paths and pairing state): the budget over
/// this is how many connections the table holds. A process may open any number of sockets;
/// an idle one (a unix socket waits ten minutes for expiry) must not hold memory for ever.
pub const CONNECTION_COST: usize = 4 << 10;
/// The bound never goes below this, however small the budget.
const MIN_CONNECTIONS: usize = 256;

/// The connections of the watched processes, by the kernel's connection id.
pub struct Connections {
    clock: Clock,
    cfg: ConnConfig,
    server_ports: Vec<u16>,
    conns: HashMap<u64, Conn>,
    stats: TableStats,
    /// Wire counters of the connections already gone (the open ones are summed on demand).
    finished: WireStats,
    /// Charged with every connection's stream buffers.
    budget: MemoryBudget,
    /// Processes whose TLS library is hooked: their TLS connections send plaintext.
    tls_hooked: HashSet<u32>,
    /// Why the TLS of a process cannot be read, when known.
    tls_unreadable: HashMap<u32, String>,
    /// Connections the table holds at most (see [`CONNECTION_COST`]).
    max_connections: usize,
    /// Where each watched process runs, given by the caller; `default_origin` for the others.
    origins: HashMap<u32, Arc<Origin>>,
    default_origin: Arc<Origin>,
}

impl Connections {
    pub fn new(clock: Clock, cfg: ConnConfig, server_ports: Vec<u16>) -> Self {
        Self {
            clock,
            budget: MemoryBudget::new(cfg.memory_budget),
            max_connections: (cfg.memory_budget / CONNECTION_COST).max(MIN_CONNECTIONS),
            cfg,
            server_ports,
            tls_hooked: HashSet::new(),
            tls_unreadable: HashMap::new(),
            conns: HashMap::new(),
            stats: TableStats::default(),
            finished: WireStats::default(),
            origins: HashMap::new(),
            default_origin: Arc::default(),
        }
    }

    /// Says whether process `pid`'s TLS library is hooked (`None`) or why not: the warning
    /// about its encrypted connections gives the reason.
    pub fn set_tls_unreadable(&mut self, pid: u32, why: Option<String>) {
        match why {
            Some(why) => {
                self.tls_hooked.remove(&pid);
                self.tls_unreadable.insert(pid, why);
            }
            None => {
                self.tls_unreadable.remove(&pid);
                self.tls_hooked.insert(pid);
            }
        }
    }

    /// A watched process is gone: what was known of its TLS goes too.
    fn forget_tls(&mut self, pid: u32) {
        self.tls_hooked.remove(&pid);
        self.tls_unreadable.remove(&pid);
    }

    /// Where the connections `pid` opens from now on come from. Records keep their origin
    /// after the process and the table forget it.
    pub fn set_origin(&mut self, pid: u32, origin: Arc<Origin>) {
        self.origins.insert(pid, origin);
    }

    pub fn has_origin(&self, pid: u32) -> bool {
        self.origins.contains_key(&pid)
    }

    /// The origin of processes not given one (the node only, say).
    pub fn set_default_origin(&mut self, origin: Arc<Origin>) {
        self.default_origin = origin;
    }

    fn origin(&self, pid: u32) -> Arc<Origin> {
        self.origins
            .get(&pid)
            .unwrap_or(&self.default_origin)
            .clone()
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn stats(&self) -> TableStats {
        let mut s = self.stats.clone();
        s.open_connections = self.conns.len() as u64;
        s
    }

    /// The wire layer's counters (framing, resyncs, drops by reason, decode errors by kind,
    /// pairing) summed over every connection, gone or open.
    pub fn wire_stats(&self) -> WireStats {
        let mut total = self.finished.clone();
        for c in self.conns.values() {
            total.add(&c.stream.stats());
        }
        total
    }

    /// One kernel event of a connection. Process events (fork, exit) are the watched set's:
    /// the caller handles them and calls [`Connections::close_process`] on an exit.
    pub fn handle(&mut self, event: Event<'_>, out: &mut impl FnMut(TableEvent<'_>)) {
        self.stats.events += 1;
        match event {
            Event::ConnOpen {
                header, ends, comm, ..
            } => {
                if let Some(conn) = self.conns.get_mut(&header.conn_id) {
                    // Cookies are never reused: this is the same connection, whose kernel state
                    // was lost (an LRU map) and made again, offsets from 0. It goes on.
                    conn.base = conn.end;
                    self.stats.reopened_connections += 1;
                    return;
                }
                let mut conn = self.new_conn(header.conn_id, header.tgid, comm, ends);
                let ts = self.clock.epoch_ns(header.ts_ns);
                // A TLS connection's first message may come long after its opening (its
                // handshake is not copied): idle from now, not from the epoch.
                conn.stream.touch(ts);
                self.insert_conn(header.conn_id, conn, ts, out);
            }
            Event::Data {
                header,
                direction,
                payload,
            } => {
                self.stats.data_bytes += payload.len() as u64;
                let ts = self.clock.epoch_ns(header.ts_ns);
                let len = payload.len() as u64;
                self.with_conn(
                    &header,
                    direction,
                    len,
                    Some(payload),
                    out,
                    |stream, at, fwd| stream.push(direction, at, payload, ts, &mut &mut *fwd),
                );
            }
            Event::Gap {
                header,
                direction,
                len,
            } => {
                let ts = self.clock.epoch_ns(header.ts_ns);
                self.with_conn(&header, direction, len, None, out, |stream, at, fwd| {
                    stream.gap(direction, at, len, ts, &mut &mut *fwd)
                });
                self.warn_gap(&header, len);
            }
            Event::ConnClose { header } => {
                if let Some(conn) = self.take_conn(header.conn_id) {
                    self.finish(conn, self.clock.epoch_ns(header.ts_ns), out);
                }
            }
            Event::ProcFork { .. }
            | Event::ProcExit { .. }
            | Event::ProcExec { .. }
            | Event::ProcMapped { .. } => {}
        }
    }

    /// A watched process is gone: its connections are closed.
    pub fn close_process(&mut self, pid: u32, ts_ns: u64, out: &mut impl FnMut(TableEvent<'_>)) {
        self.forget_tls(pid);
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.info.pid == pid)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(conn) = self.take_conn(id) {
                self.finish(conn, ts_ns, out);
            }
        }
        self.origins.remove(&pid);
    }

    /// Periodic work: connections idle past the timeout are closed; the others give back
    /// buffer memory they do not use.
    pub fn expire(&mut self, now_ns: u64, out: &mut impl FnMut(TableEvent<'_>)) {
        let mut expired = Vec::new();
        for (id, conn) in self.conns.iter_mut() {
            let Conn {
                stream,
                info,
                role,
                ends,
                ..
            } = conn;
            let stats = &mut self.stats;
            if stream.expire(now_ns, &mut |ev| forward(ev, info, role, ends, stats, out)) {
                expired.push(*id);
            }
        }
        for id in expired {
            if let Some(conn) = self.take_conn(id) {
                self.finished.add(&conn.stream.stats());
                out(TableEvent::Closed {
                    conn: conn.info,
                    ts_ns: now_ns,
                });
            }
        }
        // Idle connections gave back unused capacity above.
        self.budget
            .recount(self.conns.values().map(|c| c.stream.held()).sum());
        self.stats.memory = *self.budget.stats();
    }

    /// Removes a connection from the table, and its buffers from the memory budget.
    fn take_conn(&mut self, id: u64) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        self.budget.charge(conn.stream.held(), 0);
        Some(conn)
    }

    /// While the stream buffers hold more than the budget: first every connection gives back
    /// the capacity it does not use (a burst of new connections each keeps a block until the
    /// next tick), then the connection holding the most drops its half-received messages
    /// (counted as `memory_budget` drops; a lost reply leaves its request unanswered), and
    /// says so.
    fn enforce_budget(&mut self, out: &mut impl FnMut(TableEvent<'_>)) {
        let Self {
            conns,
            budget,
            stats,
            ..
        } = self;
        budget.recount(
            conns
                .values_mut()
                .map(|c| {
                    c.stream.shrink();
                    c.stream.held()
                })
                .sum(),
        );
        // Sockets that never carried a MongoDB message give up their bytes first.
        let victim = |conns: &HashMap<u64, Conn>, budget: &MemoryBudget| {
            let held = |(id, c): (&u64, &Conn)| (*id, c.stream.held());
            budget
                .victim(
                    conns
                        .iter()
                        .filter(|(_, c)| c.stream.decoded() == 0)
                        .map(held),
                )
                .or_else(|| budget.victim(conns.iter().map(held)))
        };
        while let Some(id) = victim(conns, budget) {
            let Some(conn) = conns.get_mut(&id) else {
                break;
            };
            let Conn {
                stream,
                info,
                role,
                ends,
                ..
            } = conn;
            let freed = stream.shed(&mut |ev| forward(ev, info, role, ends, stats, out));
            budget.shed(freed);
            // Said at the 1st, 2nd, 4th... eviction: thousands may come at once.
            let evictions = budget.stats().evictions;
            if !evictions.is_power_of_two() {
                continue;
            }
            tracing::warn!(
                evictions,
                conn = info.id,
                pid = info.pid,
                client = %info.client,
                server = %info.server,
                freed,
                limit = budget.limit(),
                "over the memory budget (--memory-budget): dropped this connection's \
                 half-received messages"
            );
        }
        stats.memory = *budget.stats();
    }

    /// mongowatch is stopping (SIGINT/SIGTERM) while the connections live on: requests still
    /// waiting for their reply are handed on as unanswered, so none is left unreported, but the
    /// connections are not reported closed (they are not: the ops layer writes what is still
    /// open as `timeout`).
    pub fn shutdown(&mut self, now_ns: u64, out: &mut impl FnMut(TableEvent<'_>)) {
        let Self {
            conns,
            stats,
            finished,
            ..
        } = self;
        for conn in conns.values_mut() {
            let Conn {
                stream,
                info,
                role,
                ends,
                ..
            } = conn;
            stream.close(now_ns, &mut |ev| forward(ev, info, role, ends, stats, out));
            finished.add(&stream.stats());
        }
        conns.clear();
    }

    fn finish(&mut self, mut conn: Conn, ts_ns: u64, out: &mut impl FnMut(TableEvent<'_>)) {
        let Conn {
            stream,
            info,
            role,
            ends,
            ..
        } = &mut conn;
        let stats = &mut self.stats;
        stream.close(ts_ns, &mut |ev| forward(ev, info, role, ends, stats, out));
        self.finished.add(&conn.stream.stats());
        out(TableEvent::Closed {
            conn: conn.info,
            ts_ns,
        });
    }

    fn new_conn(&mut self, id: u64, pid: u32, comm: String, ends: Ends) -> Conn {
        self.stats.connections += 1;
        let role = guess_role(&ends, &self.server_ports);
        Conn {
            stream: Connection::new(self.cfg.clone()),
            info: Arc::new(conn_info(
                id,
                pid,
                comm.into(),
                &ends,
                role,
                self.origin(pid),
            )),
            ends,
            role,
            tls: false,
            plaintext: false,
            base: [0; 2],
            end: [0; 2],
            kernel_gaps: 0,
        }
    }

    /// Runs `act` on the stream of the event's connection (created if its open event was lost),
    /// with the event's position in that stream (its `len` bytes are noted as seen) and the
    /// function that hands the stream's events on; `data` is the event's payload, if it carries
    /// one.
    ///
    /// A connection whose first bytes (either way: the watched process may be the server) are
    /// a TLS handshake record rather than a MongoDB message is marked TLS, counted and warned
    /// about once: mongowatch cannot read it, and saying so beats a silent absence of records.
    /// Nothing of a TLS connection reaches its stream.
    fn with_conn(
        &mut self,
        header: &EventHeader,
        direction: Direction,
        len: u64,
        data: Option<&[u8]>,
        out: &mut impl FnMut(TableEvent<'_>),
        act: impl FnOnce(&mut Connection, u64, &mut dyn FnMut(ConnEvent<'_>)),
    ) {
        self.ensure_conn(header, out);
        let Self {
            conns,
            stats,
            tls_hooked,
            tls_unreadable,
            budget,
            cfg,
            ..
        } = self;
        let Some(conn) = conns.get_mut(&header.conn_id) else {
            return;
        };
        if header.flags & EVENT_FLAG_TLS != 0 && !conn.plaintext {
            // The first plaintext of a TLS connection: the kernel restarted its offsets, and
            // whatever ciphertext came before is dropped.
            budget.charge(conn.stream.held(), 0);
            conn.stream = Connection::new(cfg.clone());
            conn.plaintext = true;
            conn.tls = false;
            conn.base = [0; 2];
            conn.end = [0; 2];
            conn.info = Arc::new(ConnInfo {
                tls: true,
                ..(*conn.info).clone()
            });
            stats.tls_plaintext_connections += 1;
        } else if conn.plaintext && header.flags & EVENT_FLAG_TLS == 0 {
            // Ciphertext the kernel sent before it knew the socket carried TLS.
            stats.tls_bytes += data.map_or(0, |d| d.len() as u64);
            return;
        }
        let d = match direction {
            Direction::Egress => 0,
            Direction::Ingress => 1,
        };
        let at = header.offset.saturating_add(conn.base[d]);
        conn.end[d] = conn.end[d].max(at.saturating_add(len));
        if !conn.tls && !conn.plaintext && at == 0 && data.is_some_and(looks_like_tls) {
            conn.tls = true;
            let info = &conn.info;
            // A process whose TLS library is hooked sends the plaintext next (Node's
            // handshake goes out before the kernel can tell the socket).
            if !tls_hooked.contains(&info.pid) {
                let why = tls_unreadable
                    .get(&info.pid)
                    .map_or("its TLS library is not hooked", String::as_str);
                stats.tls_connections += 1;
                tracing::warn!(
                    conn = info.id,
                    pid = info.pid,
                    comm = %info.comm,
                    client = %info.client,
                    server = %info.server,
                    "this connection is encrypted with TLS, which mongowatch cannot read here \
                     ({why}): its operations are not audited"
                );
            }
        }
        let Conn {
            stream,
            info,
            role,
            ends,
            tls,
            ..
        } = conn;
        if *tls {
            stats.tls_bytes += data.map_or(0, |d| d.len() as u64);
            return;
        }
        let before = stream.held();
        act(stream, at, &mut |ev| {
            forward(ev, info, role, ends, stats, out)
        });
        budget.charge(before, stream.held());
        if self.budget.over() {
            self.enforce_budget(out);
        }
    }

    /// Bytes of a connection the kernel could not copy lose the messages they carried: said
    /// when it happens, with the connection, at the 1st, 2nd, 4th, 8th... gap of each
    /// connection so that a connection full of them cannot flood the log.
    fn warn_gap(&mut self, header: &EventHeader, len: u64) {
        let Some(conn) = self.conns.get_mut(&header.conn_id) else {
            return;
        };
        conn.kernel_gaps += 1;
        if conn.tls || !conn.kernel_gaps.is_power_of_two() {
            return;
        }
        let info = &conn.info;
        tracing::warn!(
            conn = info.id,
            pid = info.pid,
            comm = %info.comm,
            client = %info.client,
            server = %info.server,
            bytes = len,
            syscall = header.syscall,
            gaps_on_connection = conn.kernel_gaps,
            "bytes moved on this connection that could not be copied (no user buffer: \
             sendfile, splice, io_uring, MSG_TRUNC; or unreadable memory): the messages they \
             carried are not audited"
        );
    }

    /// Makes sure the connection has an entry; one whose open event was lost is created from
    /// /proc.
    fn ensure_conn(&mut self, header: &EventHeader, out: &mut impl FnMut(TableEvent<'_>)) {
        let (id, pid, fd) = (header.conn_id, header.tgid, header.fd);
        if !self.conns.contains_key(&id) {
            self.stats.late_connections += 1;
            let ends = procfs::socket_inode(pid, fd)
                .and_then(|inode| procfs::tcp_ends(pid, inode))
                .map(|(local, remote)| Ends::Inet { local, remote })
                .unwrap_or(Ends::Unknown { family: 0 });
            let comm = procfs::comm(pid).unwrap_or_default();
            let conn = self.new_conn(id, pid, comm, ends);
            self.insert_conn(id, conn, self.clock.epoch_ns(header.ts_ns), out);
        }
    }

    /// Adds a connection. Past the table's bound one goes: the idlest of those that never
    /// carried a MongoDB message, else the idlest of all; it is closed (its waiting requests
    /// handed on as unanswered), counted, and warned about at the 1st, 2nd, 4th... eviction.
    fn insert_conn(
        &mut self,
        id: u64,
        conn: Conn,
        ts_ns: u64,
        out: &mut impl FnMut(TableEvent<'_>),
    ) {
        self.conns.insert(id, conn);
        if self.conns.len() <= self.max_connections {
            return;
        }
        let idlest = self
            .conns
            .iter()
            .filter(|(other, _)| **other != id)
            // Sockets that never carried a MongoDB message go before those that did.
            .min_by_key(|(_, c)| (c.stream.decoded() > 0, c.stream.last_activity_ns()))
            .map(|(other, _)| *other);
        let Some(victim) = idlest.and_then(|v| self.take_conn(v)) else {
            return;
        };
        self.stats.evicted_connections += 1;
        if self.stats.evicted_connections.is_power_of_two() {
            let info = &victim.info;
            tracing::warn!(
                conn = info.id,
                pid = info.pid,
                client = %info.client,
                server = %info.server,
                limit = self.max_connections,
                evicted = self.stats.evicted_connections,
                "more connections than the memory budget allows (--memory-budget): closed the \
                 one idle the longest"
            );
        }
        self.finish(victim, ts_ns, out);
    }
}

/// Hands a connection event on, learning the watched side's role from the first request.
fn forward(
    ev: ConnEvent<'_>,
    info: &mut Arc<ConnInfo>,
    role: &mut Role,
    ends: &Ends,
    stats: &mut TableStats,
    out: &mut impl FnMut(TableEvent<'_>),
) {
    match ev {
        ConnEvent::Frame {
            dir,
            frame,
            message,
        } => {
            stats.messages += 1;
            match message {
                Ok(t) => {
                    // A request travels from client to server: its direction settles who is
                    // who, whatever the ports suggested.
                    if !t.msg.is_reply() {
                        let seen = if dir == Direction::Egress {
                            Role::Client
                        } else {
                            Role::Server
                        };
                        if *role != seen {
                            *role = seen;
                            *info = Arc::new(ConnInfo {
                                tls: info.tls,
                                ..conn_info(
                                    info.id,
                                    info.pid,
                                    info.comm.clone(),
                                    ends,
                                    seen,
                                    info.origin.clone(),
                                )
                            });
                        }
                    }
                }
                Err(_) => stats.decode_errors += 1,
            }
            out(TableEvent::Message {
                conn: info,
                dir,
                frame,
                message,
            });
        }
        ConnEvent::Gap { len, .. } => {
            stats.gaps += 1;
            // A gap's length comes from the record's offsets: a corrupt one can claim up to
            // 2^64 bytes, and the sum over connections must not overflow.
            stats.gap_bytes = stats.gap_bytes.saturating_add(len);
        }
        ConnEvent::Dropped { .. } => stats.dropped_frames += 1,
        ConnEvent::Exchange(exchange) => out(TableEvent::Exchange {
            conn: info,
            exchange,
        }),
    }
}

fn guess_role(ends: &Ends, server_ports: &[u16]) -> Role {
    match ends {
        Ends::Inet { local, remote } => {
            if server_ports.contains(&remote.port()) {
                Role::Client
            } else if server_ports.contains(&local.port()) {
                Role::Server
            } else {
                Role::Unknown
            }
        }
        Ends::Unix { path_is_local, .. } => {
            if *path_is_local {
                Role::Server
            } else {
                Role::Client
            }
        }
        Ends::Unknown { .. } => Role::Unknown,
    }
}

fn conn_info(
    id: u64,
    pid: u32,
    comm: Arc<str>,
    ends: &Ends,
    role: Role,
    origin: Arc<Origin>,
) -> ConnInfo {
    let (local, remote) = match ends {
        Ends::Inet { local, remote } => (show(local), show(remote)),
        Ends::Unix { path, .. } => {
            let path = if path.is_empty() {
                "unix:?".to_string()
            } else {
                path.clone()
            };
            (path.clone(), path)
        }
        Ends::Unknown { .. } => ("?".to_string(), "?".to_string()),
    };
    let (client, server) = match role {
        Role::Server => (remote, local),
        Role::Client | Role::Unknown => (local, remote),
    };
    ConnInfo {
        id,
        pid,
        comm,
        client: client.into(),
        server: server.into(),
        tls: false,
        side: if role == Role::Server {
            Side::Server
        } else {
            Side::Client
        },
        origin,
    }
}

/// A TLS handshake record that is not also a plausible MongoDB message start: content type 22,
/// record version 3.0-3.4, a ClientHello or ServerHello that fits in the record, and its own
/// version 3.x. Some 40 bits must match by chance for the middle of a MongoDB message (where
/// capture of an already open connection may begin) to pass.
fn looks_like_tls(b: &[u8]) -> bool {
    if b.len() < 11 || b[0] != 0x16 || b[1] != 0x03 || b[2] > 0x04 || !matches!(b[5], 1 | 2) {
        return false;
    }
    let record_len = u32::from(u16::from_be_bytes([b[3], b[4]]));
    let hello_len = u32::from_be_bytes([0, b[6], b[7], b[8]]);
    hello_len + 4 <= record_len
        && b[9] == 0x03
        && b[10] <= 0x04
        && !matches!(check_strict(b), Plausible::Yes(_))
}

fn show(addr: &SocketAddr) -> String {
    addr.to_string()
}

#[cfg(test)]
mod tests {
    use mongowatch_common::{EventHeader, EventKind};

    use super::*;

    fn header(kind: EventKind, conn: u64, offset: u64, ts: u64) -> EventHeader {
        EventHeader {
            kind: kind as u8,
            conn_id: conn,
            offset,
            ts_ns: ts,
            tgid: 4242,
            tid: 4242,
            fd: 7,
            ..Default::default()
        }
    }

    fn op_msg(request_id: i32, response_to: i32, doc: bson::RawDocumentBuf) -> Vec<u8> {
        crate::wire::encode(&crate::wire::Message::op_msg(
            request_id,
            response_to,
            doc.into(),
        ))
    }

    #[test]
    fn a_request_and_its_reply_become_one_exchange() {
        let mut t = Connections::new(Clock::identity(), ConnConfig::default(), vec![27017]);
        let mut messages = Vec::new();
        let mut exchanges = Vec::new();
        let mut sink = |o: TableEvent<'_>| match o {
            TableEvent::Message {
                conn, dir, frame, ..
            } => messages.push((
                conn.client.clone(),
                conn.server.clone(),
                dir,
                frame.bytes.len(),
            )),
            TableEvent::Exchange { exchange, .. } => exchanges.push(exchange),
            TableEvent::Closed { .. } => {}
        };
        let ends = Ends::Inet {
            local: "127.0.0.1:50000".parse().unwrap(),
            remote: "127.0.0.1:27017".parse().unwrap(),
        };
        t.handle(
            Event::ConnOpen {
                cgroup_id: 0,
                header: header(EventKind::ConnOpen, 9, 0, 1),
                ends,
                comm: "python3".into(),
            },
            &mut sink,
        );
        let req = op_msg(1, 0, bson::rawdoc! { "ping": 1, "$db": "admin" });
        let rep = op_msg(2, 1, bson::rawdoc! { "ok": 1.0 });
        // The reply arrives the way pymongo reads it: the header, then the body.
        t.handle(
            Event::Data {
                header: header(EventKind::Data, 9, 0, 10),
                direction: Direction::Egress,
                payload: &req,
            },
            &mut sink,
        );
        t.handle(
            Event::Data {
                header: header(EventKind::Data, 9, 0, 20),
                direction: Direction::Ingress,
                payload: &rep[..16],
            },
            &mut sink,
        );
        t.handle(
            Event::Data {
                header: header(EventKind::Data, 9, 16, 21),
                direction: Direction::Ingress,
                payload: &rep[16..],
            },
            &mut sink,
        );
        assert_eq!(messages.len(), 2);
        assert_eq!(&*messages[0].0, "127.0.0.1:50000");
        assert_eq!(&*messages[0].1, "127.0.0.1:27017");
        assert_eq!(messages[1].3, rep.len());
        assert_eq!(exchanges.len(), 1);
        assert!(matches!(exchanges[0], Exchange::RoundTrip { .. }));
        assert_eq!(t.stats().messages, 2);
    }

    /// Hands `payloads` (direction, offset, bytes) of connection 9 to a fresh tracker; returns
    /// it and how many messages it framed.
    fn feed(payloads: &[(Direction, u64, &[u8])]) -> (Connections, usize) {
        let mut t = Connections::new(Clock::identity(), ConnConfig::default(), vec![27017]);
        let mut messages = 0;
        let mut sink = |o: TableEvent<'_>| {
            if let TableEvent::Message { .. } = o {
                messages += 1;
            }
        };
        t.handle(
            Event::ConnOpen {
                cgroup_id: 0,
                header: header(EventKind::ConnOpen, 9, 0, 1),
                ends: Ends::Inet {
                    local: "127.0.0.1:50000".parse().unwrap(),
                    remote: "127.0.0.1:27017".parse().unwrap(),
                },
                comm: "app".into(),
            },
            &mut sink,
        );
        for (i, (direction, offset, payload)) in payloads.iter().enumerate() {
            t.handle(
                Event::Data {
                    header: header(EventKind::Data, 9, *offset, 10 + i as u64),
                    direction: *direction,
                    payload,
                },
                &mut sink,
            );
        }
        (t, messages)
    }

    /// A connection that starts with a TLS handshake is counted (and warned about) once, and
    /// none of its bytes reach the stream layer, whatever they happen to contain later.
    #[test]
    fn a_tls_connection_is_counted_not_decoded() {
        // TLS 1.2 record header (handshake, version 3.1, length 512), then ClientHello (1).
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        hello.resize(517, 0xab);
        let server_hello = [
            0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76, 0x03, 0x03,
        ];
        let later = op_msg(1, 0, bson::rawdoc! { "ping": 1, "$db": "admin" });
        let (t, messages) = feed(&[
            (Direction::Egress, 0, &hello),
            (Direction::Ingress, 0, &server_hello),
            (Direction::Egress, hello.len() as u64, &later),
        ]);
        assert_eq!(messages, 0);
        let st = t.stats();
        assert_eq!(st.tls_connections, 1);
        assert_eq!(
            st.tls_bytes,
            (hello.len() + server_hello.len() + later.len()) as u64
        );
        assert_eq!(st.decode_errors, 0);
    }

    /// A TLS connection of a process whose TLS library is hooked: the ciphertext the kernel
    /// sent before it knew is dropped, the plaintext (offsets from 0 again) is decoded, and its
    /// records say TLS; no warning is counted.
    #[test]
    fn tls_plaintext_replaces_the_ciphertext() {
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        hello.resize(517, 0xab);
        let request = op_msg(7, 0, bson::rawdoc! { "ping": 1, "$db": "admin" });
        let reply = op_msg(8, 7, bson::rawdoc! { "ok": 1.0 });
        let mut t = Connections::new(Clock::identity(), ConnConfig::default(), vec![27017]);
        t.set_tls_unreadable(4242, None);
        let mut exchanges = Vec::new();
        let mut sink = |o: TableEvent<'_>| {
            if let TableEvent::Exchange { conn, .. } = o {
                exchanges.push(conn.tls);
            }
        };
        let data = |dir: Direction, offset: u64, flags: u8, payload: &[u8]| {
            let mut h = header(EventKind::Data, 1, offset, 10);
            h.flags = flags;
            (h, dir, payload.to_vec())
        };
        for (h, direction, payload) in [
            data(Direction::Egress, 0, 0, &hello),
            data(Direction::Egress, 0, EVENT_FLAG_TLS, &request),
            // Ciphertext that raced the kernel's verdict: ignored.
            data(Direction::Ingress, 0, 0, &hello[..100]),
            data(Direction::Ingress, 0, EVENT_FLAG_TLS, &reply),
        ] {
            t.handle(
                Event::Data {
                    header: h,
                    direction,
                    payload: &payload,
                },
                &mut sink,
            );
        }
        assert_eq!(exchanges, vec![true]);
        let st = t.stats();
        assert_eq!(st.tls_connections, 0, "no warning for a hooked process");
        assert_eq!(st.tls_plaintext_connections, 1);
        assert_eq!(st.decode_errors, 0);
    }

    #[test]
    fn tls_detection_needs_a_whole_hello_header() {
        let hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        assert!(looks_like_tls(&hello));
        assert!(!looks_like_tls(&hello[..10]), "too short to tell");
        let mut longer = hello;
        longer[7] = 0x02; // a hello longer than its record
        assert!(!looks_like_tls(&longer));
        let mut version = hello;
        version[9] = 0x01; // the hello's own version is not 3.x
        assert!(!looks_like_tls(&version));
        let mut alert = hello;
        alert[0] = 0x15; // an alert record, not a handshake
        assert!(!looks_like_tls(&alert));
    }

    /// A MongoDB message whose first bytes happen to read like a TLS record header (length
    /// 0x316 = 790, requestID 256) is still MongoDB.
    #[test]
    fn a_message_that_starts_like_tls_is_still_mongodb() {
        let mut msg = op_msg(
            256,
            0,
            bson::rawdoc! { "ping": 1, "pad": "", "$db": "admin" },
        );
        let pad = 790 - msg.len();
        msg = op_msg(
            256,
            0,
            bson::rawdoc! { "ping": 1, "pad": "x".repeat(pad), "$db": "admin" },
        );
        assert_eq!(msg.len(), 790);
        assert_eq!(&msg[..3], &[0x16, 0x03, 0x00]);
        assert_eq!(msg[5], 1);
        let (t, messages) = feed(&[(Direction::Egress, 0, &msg)]);
        assert_eq!((messages, t.stats().tls_connections), (1, 0));
    }

    /// The kernel forgot a connection and met it again: a second open event, offsets from 0.
    /// The stream goes on (no close, every message framed, both exchanges paired).
    #[test]
    fn a_connection_met_again_goes_on() {
        let mut t = Connections::new(Clock::identity(), ConnConfig::default(), vec![27017]);
        let (mut messages, mut exchanges, mut closed) = (0, 0, 0);
        let mut sink = |o: TableEvent<'_>| match o {
            TableEvent::Message { .. } => messages += 1,
            TableEvent::Exchange { .. } => exchanges += 1,
            TableEvent::Closed { .. } => closed += 1,
        };
        let open = |ts| Event::ConnOpen {
            cgroup_id: 0,
            header: header(EventKind::ConnOpen, 9, 0, ts),
            ends: Ends::Inet {
                local: "127.0.0.1:50000".parse().unwrap(),
                remote: "127.0.0.1:27017".parse().unwrap(),
            },
            comm: "app".into(),
        };
        let find = op_msg(1, 0, bson::rawdoc! { "find": "c", "$db": "d" });
        let batch = op_msg(2, 1, bson::rawdoc! { "ok": 1.0 });
        let get_more = op_msg(
            3,
            0,
            bson::rawdoc! { "getMore": 7i64, "collection": "c", "$db": "d" },
        );
        let last = op_msg(4, 3, bson::rawdoc! { "ok": 1.0 });
        t.handle(open(1), &mut sink);
        for (ts, direction, payload) in [
            (10, Direction::Egress, &find),
            (11, Direction::Ingress, &batch),
        ] {
            t.handle(
                Event::Data {
                    header: header(EventKind::Data, 9, 0, ts),
                    direction,
                    payload,
                },
                &mut sink,
            );
        }
        t.handle(open(20), &mut sink);
        for (ts, direction, payload) in [
            (30, Direction::Egress, &get_more),
            (31, Direction::Ingress, &last),
        ] {
            t.handle(
                Event::Data {
                    header: header(EventKind::Data, 9, 0, ts),
                    direction,
                    payload,
                },
                &mut sink,
            );
        }
        assert_eq!((messages, exchanges, closed), (4, 2, 0));
        let st = t.stats();
        assert_eq!(
            (st.connections, st.reopened_connections, st.gaps),
            (1, 1, 0)
        );
    }

    #[test]
    fn the_watched_server_side_is_recognised() {
        let mut t = Connections::new(Clock::identity(), ConnConfig::default(), vec![]);
        let mut clients = Vec::new();
        let mut sink = |o: TableEvent<'_>| {
            if let TableEvent::Message { conn, .. } = o {
                clients.push((conn.client.clone(), conn.server.clone()));
            }
        };
        // No known port: the role comes from the first request's direction.
        t.handle(
            Event::ConnOpen {
                cgroup_id: 0,
                header: header(EventKind::ConnOpen, 5, 0, 1),
                ends: Ends::Inet {
                    local: "127.0.0.1:4000".parse().unwrap(),
                    remote: "127.0.0.1:50000".parse().unwrap(),
                },
                comm: "server".into(),
            },
            &mut sink,
        );
        let req = op_msg(1, 0, bson::rawdoc! { "ping": 1, "$db": "admin" });
        t.handle(
            Event::Data {
                header: header(EventKind::Data, 5, 0, 10),
                direction: Direction::Ingress,
                payload: &req,
            },
            &mut sink,
        );
        assert_eq!(
            clients,
            vec![("127.0.0.1:50000".into(), "127.0.0.1:4000".into())]
        );
    }

    #[test]
    fn a_process_exit_closes_its_connections() {
        let mut t = Connections::new(Clock::identity(), ConnConfig::default(), vec![27017]);
        let mut unanswered = 0;
        let mut closed = Vec::new();
        let mut sink = |o: TableEvent<'_>| match o {
            TableEvent::Exchange {
                exchange: Exchange::Unanswered { .. },
                ..
            } => unanswered += 1,
            TableEvent::Closed { conn, ts_ns } => closed.push((conn.id, ts_ns)),
            _ => {}
        };
        for (conn, pid) in [(9, 4242), (10, 4343)] {
            let mut h = header(EventKind::ConnOpen, conn, 0, 1);
            h.tgid = pid;
            t.handle(
                Event::ConnOpen {
                    cgroup_id: 0,
                    header: h,
                    ends: Ends::Unknown { family: 0 },
                    comm: "x".into(),
                },
                &mut sink,
            );
        }
        let req = op_msg(1, 0, bson::rawdoc! { "find": "c", "$db": "d" });
        t.handle(
            Event::Data {
                header: header(EventKind::Data, 9, 0, 10),
                direction: Direction::Egress,
                payload: &req,
            },
            &mut sink,
        );
        t.close_process(4242, 50, &mut sink);
        assert_eq!(
            unanswered, 1,
            "the request waiting for its reply is handed on"
        );
        assert_eq!(
            closed,
            vec![(9, 50)],
            "only the exited process's connection"
        );
        assert_eq!(t.stats().open_connections, 1);
        assert_eq!(
            t.wire_stats().decoded,
            1,
            "a closed connection's counters are kept"
        );
    }

    /// Many connections each half-way through a large reply: the tracker keeps their buffers
    /// within the memory budget, counts each eviction, and a closed connection leaves the
    /// budget's account.
    #[test]
    fn half_received_replies_stay_within_the_memory_budget() {
        const LIMIT: usize = 4 << 20;
        let cfg = ConnConfig {
            memory_budget: LIMIT,
            ..ConnConfig::default()
        };
        let mut t = Connections::new(Clock::identity(), cfg, vec![27017]);
        let unanswered = std::cell::Cell::new(0u64);
        let mut sink = |o: TableEvent<'_>| {
            if let TableEvent::Exchange {
                exchange: Exchange::Unanswered { .. },
                ..
            } = o
            {
                unanswered.set(unanswered.get() + 1);
            }
        };
        let big = op_msg(
            2,
            1,
            bson::rawdoc! { "ok": 1.0, "pad": "x".repeat(2 << 20) },
        );
        for conn in 1..=20u64 {
            t.handle(
                Event::ConnOpen {
                    cgroup_id: 0,
                    header: header(EventKind::ConnOpen, conn, 0, conn),
                    ends: Ends::Inet {
                        local: format!("127.0.0.1:{}", 50000 + conn).parse().unwrap(),
                        remote: "127.0.0.1:27017".parse().unwrap(),
                    },
                    comm: "app".into(),
                },
                &mut sink,
            );
            let req = op_msg(1, 0, bson::rawdoc! { "find": "c", "$db": "d" });
            t.handle(
                Event::Data {
                    header: header(EventKind::Data, conn, 0, 100 + conn),
                    direction: Direction::Egress,
                    payload: &req,
                },
                &mut sink,
            );
            t.handle(
                Event::Data {
                    header: header(EventKind::Data, conn, 0, 200 + conn),
                    direction: Direction::Ingress,
                    payload: &big[..big.len() / 2],
                },
                &mut sink,
            );
            let held: usize = t.conns.values().map(|c| c.stream.held()).sum();
            assert!(held <= LIMIT, "{held} held over a {LIMIT} budget");
            assert_eq!(held, t.budget.used());
        }
        let memory = t.stats().memory;
        assert!(memory.evictions >= 10, "{memory:?}");
        assert!(memory.peak_bytes <= LIMIT as u64, "{memory:?}");
        assert_eq!(
            unanswered.get(),
            memory.evictions,
            "each shed reply resolves its request"
        );
        t.handle(
            Event::ConnClose {
                header: header(EventKind::ConnClose, 20, 0, 999),
            },
            &mut sink,
        );
        let held: usize = t.conns.values().map(|c| c.stream.held()).sum();
        assert_eq!(
            held,
            t.budget.used(),
            "a closed connection leaves the account"
        );
    }

    /// The open event of connection `conn` (ends unknown) of process 4242.
    fn open(conn: u64, ts: u64) -> Event<'static> {
        Event::ConnOpen {
            cgroup_id: 0,
            header: header(EventKind::ConnOpen, conn, 0, ts),
            ends: Ends::Unknown { family: 0 },
            comm: "app".into(),
        }
    }

    /// Bytes of connection `conn` at stream `offset`.
    fn data(conn: u64, direction: Direction, offset: u64, ts: u64, payload: &[u8]) -> Event<'_> {
        Event::Data {
            header: header(EventKind::Data, conn, offset, ts),
            direction,
            payload,
        }
    }

    /// A connection opened but silent (a TLS connection: its handshake is not copied) is idle
    /// from its opening: the next tick does not expire it, the idle timeout after it does.
    #[test]
    fn a_silent_new_connection_is_idle_from_its_opening() {
        let hour = 3_600_000_000_000u64;
        let mut t = Connections::new(Clock::identity(), ConnConfig::default(), vec![27017]);
        let mut closed = 0;
        let mut sink =
            |o: TableEvent<'_>| closed += usize::from(matches!(o, TableEvent::Closed { .. }));
        t.handle(open(1, hour), &mut sink);
        t.expire(hour + 200_000_000, &mut sink);
        assert_eq!(t.stats().open_connections, 1, "expired at the first tick");
        t.expire(hour + ConnConfig::default().idle_timeout_ns, &mut sink);
        assert_eq!(t.stats().open_connections, 0);
        assert_eq!(closed, 1);
    }

    /// More connections than the budget allows: the table keeps its bound by closing the
    /// connection idle the longest, each counted, its waiting request handed on.
    #[test]
    fn the_idlest_connections_go_past_the_bound() {
        let cfg = ConnConfig {
            memory_budget: 1 << 20,
            ..ConnConfig::default()
        };
        let bound = (1 << 20) / CONNECTION_COST;
        assert_eq!(bound, MIN_CONNECTIONS, "a small budget keeps the floor");
        let mut t = Connections::new(Clock::identity(), cfg, vec![27017]);
        let (mut closed, mut unanswered) = (Vec::new(), 0);
        let mut sink = |o: TableEvent<'_>| match o {
            TableEvent::Closed { conn, .. } => closed.push(conn.id),
            TableEvent::Exchange {
                exchange: Exchange::Unanswered { .. },
                ..
            } => unanswered += 1,
            _ => {}
        };
        let req = op_msg(1, 0, bson::rawdoc! { "find": "c", "$db": "d" });
        let extra = 10u64;
        for conn in 1..=bound as u64 + extra {
            t.handle(open(conn, 1000 + conn), &mut sink);
            // Each sends a request that waits for its reply; the first ones are the idlest.
            t.handle(
                data(conn, Direction::Egress, 0, 1000 + conn, &req),
                &mut sink,
            );
        }
        assert_eq!(closed, (1..=extra).collect::<Vec<_>>());
        assert_eq!(unanswered, extra as usize);
        let st = t.stats();
        assert_eq!(st.open_connections, bound as u64);
        assert_eq!(st.evicted_connections, extra);
    }

    /// A MongoDB connection outlives newer sockets that never carried a MongoDB message.
    #[test]
    fn sockets_that_are_not_mongodb_go_first() {
        let cfg = ConnConfig {
            memory_budget: 1 << 20,
            ..ConnConfig::default()
        };
        let mut t = Connections::new(Clock::identity(), cfg, vec![27017]);
        let mut closed = Vec::new();
        let mut sink = |o: TableEvent<'_>| {
            if let TableEvent::Closed { conn, .. } = o {
                closed.push(conn.id)
            }
        };
        // The MongoDB connection is the oldest and the idlest.
        t.handle(open(1, 1), &mut sink);
        let req = op_msg(1, 0, bson::rawdoc! { "find": "c", "$db": "d" });
        t.handle(data(1, Direction::Egress, 0, 1, &req), &mut sink);
        for conn in 2..=MIN_CONNECTIONS as u64 + 1 {
            t.handle(open(conn, conn), &mut sink);
            t.handle(
                data(conn, Direction::Egress, 0, conn, b"not mongodb at all"),
                &mut sink,
            );
        }
        assert_eq!(closed, vec![2], "the idlest socket that is not MongoDB");
    }

    /// Found by fuzzing (kernel_events): offset jumps of nearly 2^64 bytes on two connections
    /// overflowed the sum of gap bytes.
    #[test]
    fn gap_bytes_of_corrupt_offsets_saturate() {
        let mut t = Connections::new(Clock::identity(), ConnConfig::default(), vec![27017]);
        let mut sink = |_: TableEvent<'_>| {};
        for conn in [9, 10] {
            for (i, offset) in [0, u64::MAX - 1].into_iter().enumerate() {
                t.handle(
                    Event::Data {
                        header: header(EventKind::Data, conn, offset, 10 + i as u64),
                        direction: Direction::Egress,
                        payload: b"x",
                    },
                    &mut sink,
                );
            }
        }
        assert_eq!(t.stats().gaps, 2);
        assert_eq!(t.stats().gap_bytes, u64::MAX);
        // And the wire layer's sum over the connections (found by fuzzing too).
        assert_eq!(t.wire_stats().stream.gap_bytes, u64::MAX);
    }

    /// Hundreds of sockets that sent a byte each (not MongoDB) beside a MongoDB connection
    /// half-way through a reply: the bytes cost what they are, not a block each, and the
    /// MongoDB reply is not shed for them (it was, before: the budget's largest-first pick
    /// fell among equals).
    #[test]
    fn sockets_with_a_byte_each_do_not_cost_the_mongodb_reply() {
        let cfg = ConnConfig {
            memory_budget: 4 << 20,
            ..ConnConfig::default()
        };
        let mut t = Connections::new(Clock::identity(), cfg, vec![27017]);
        let mut round_trips = 0;
        let mut sink = |o: TableEvent<'_>| {
            if let TableEvent::Exchange {
                exchange: Exchange::RoundTrip { .. },
                ..
            } = o
            {
                round_trips += 1
            }
        };
        let req = op_msg(1, 0, bson::rawdoc! { "find": "c", "$db": "d" });
        let reply = op_msg(
            2,
            1,
            bson::rawdoc! { "ok": 1.0, "pad": "x".repeat(64 << 10) },
        );
        let half = reply.len() / 2;
        t.handle(open(1, 1), &mut sink);
        t.handle(data(1, Direction::Egress, 0, 1, &req), &mut sink);
        t.handle(data(1, Direction::Ingress, 0, 2, &reply[..half]), &mut sink);
        for conn in 2..600u64 {
            t.handle(open(conn, conn), &mut sink);
            t.handle(data(conn, Direction::Egress, 0, conn, b"x"), &mut sink);
        }
        t.handle(
            data(1, Direction::Ingress, half as u64, 700, &reply[half..]),
            &mut sink,
        );
        assert_eq!(round_trips, 1, "the reply was not dropped");
        assert_eq!(t.stats().memory.evictions, 0, "{:?}", t.stats().memory);
    }
}
