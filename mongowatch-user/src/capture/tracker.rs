//! From kernel events to connections, messages and ops inputs. Pure code: the daemon feeds it
//! the ring buffer's events, the tests feed it synthetic ones.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use serde::Serialize;

use mongowatch_common::EventHeader;

use super::{
    events::{Direction, Ends, Event},
    procfs,
};
use crate::{
    ops::{ConnInfo, Input},
    stream::{ConnConfig, ConnEvent, Connection, Dir, RawFrame},
    wire::{
        frame::{check_strict, Plausible},
        DecodeError, Timed,
    },
};

/// Kernel time (CLOCK_BOOTTIME) to wall time.
#[derive(Copy, Clone, Debug)]
pub struct Clock {
    boot_to_epoch_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let epoch = clock_ns(libc::CLOCK_REALTIME);
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        Self {
            boot_to_epoch_ns: epoch - boot,
        }
    }

    /// A clock whose epoch equals boot time (tests).
    pub fn identity() -> Self {
        Self {
            boot_to_epoch_ns: 0,
        }
    }

    pub fn epoch_ns(&self, boot_ns: u64) -> u64 {
        (boot_ns as i128 + self.boot_to_epoch_ns).max(0) as u64
    }

    pub fn now_epoch_ns(&self) -> u64 {
        self.epoch_ns(clock_ns(libc::CLOCK_BOOTTIME) as u64)
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid clock id and timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// What the tracker hands on.
pub enum Output<'a> {
    /// One framed wire message (for `--messages`).
    Message {
        conn: &'a Arc<ConnInfo>,
        dir: Dir,
        frame: &'a RawFrame,
        message: Result<&'a Timed, &'a DecodeError>,
    },
    /// Input for the ops layer.
    Input(Input),
}

/// Counters of what the tracker saw, for the exit summary.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TrackerStats {
    pub events: u64,
    pub data_bytes: u64,
    pub connections: u64,
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
}

pub struct Tracker {
    clock: Clock,
    cfg: ConnConfig,
    server_ports: Vec<u16>,
    conns: HashMap<u64, Conn>,
    /// Watched processes still alive.
    procs: HashMap<u32, String>,
    /// Bumped whenever `procs` gains or loses a process.
    procs_version: u64,
    stats: TrackerStats,
}

impl Tracker {
    pub fn new(clock: Clock, cfg: ConnConfig, server_ports: Vec<u16>) -> Self {
        Self {
            clock,
            cfg,
            server_ports,
            conns: HashMap::new(),
            procs: HashMap::new(),
            procs_version: 0,
            stats: TrackerStats::default(),
        }
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn stats(&self) -> &TrackerStats {
        &self.stats
    }

    /// Starts tracking a process named on the command line.
    pub fn add_process(&mut self, pid: u32) {
        let comm = procfs::comm(pid).unwrap_or_default();
        self.insert_process(pid, comm);
    }

    fn insert_process(&mut self, pid: u32, comm: String) {
        if self.procs.insert(pid, comm).is_none() {
            self.procs_version += 1;
        }
    }

    pub fn processes(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs.keys().copied()
    }

    /// Changes whenever a process is added or removed, so an owner that mirrors the set
    /// elsewhere (the kernel's watched bitmap) only has to look when it moved.
    pub fn processes_version(&self) -> u64 {
        self.procs_version
    }

    pub fn has_processes(&self) -> bool {
        !self.procs.is_empty()
    }

    pub fn handle(&mut self, event: Event<'_>, out: &mut impl FnMut(Output<'_>)) {
        self.stats.events += 1;
        match event {
            Event::ConnOpen { header, ends, comm } => {
                if let Some(old) = self.conns.remove(&header.conn_id) {
                    // Cannot happen with cookies, which are never reused; be safe anyway.
                    self.finish(old, self.clock.epoch_ns(header.ts_ns), out);
                }
                // Known already, unless the fork event that made it was lost.
                if !self.procs.contains_key(&header.tgid) {
                    self.insert_process(header.tgid, comm.clone());
                }
                let conn = self.new_conn(header.conn_id, header.tgid, comm, ends);
                self.conns.insert(header.conn_id, conn);
            }
            Event::Data {
                header,
                direction,
                payload,
            } => {
                self.stats.data_bytes += payload.len() as u64;
                let ts = self.clock.epoch_ns(header.ts_ns);
                self.with_conn(&header, Some(payload), out, |stream, fwd| {
                    stream.push(dir(direction), header.offset, payload, ts, &mut &mut *fwd)
                });
            }
            Event::Gap {
                header,
                direction,
                len,
            } => {
                let ts = self.clock.epoch_ns(header.ts_ns);
                self.with_conn(&header, None, out, |stream, fwd| {
                    stream.gap(dir(direction), header.offset, len, ts, &mut &mut *fwd)
                });
            }
            Event::ConnClose { header } => {
                if let Some(conn) = self.conns.remove(&header.conn_id) {
                    self.finish(conn, self.clock.epoch_ns(header.ts_ns), out);
                }
            }
            Event::ProcFork { child, .. } => {
                let comm = procfs::comm(child).unwrap_or_default();
                self.insert_process(child, comm);
            }
            Event::ProcExit { header, pid } => {
                self.process_exited(pid, self.clock.epoch_ns(header.ts_ns), out);
            }
        }
    }

    /// A watched process is gone: its connections are closed, and the ops layer is told.
    pub fn process_exited(&mut self, pid: u32, ts_ns: u64, out: &mut impl FnMut(Output<'_>)) {
        if self.procs.remove(&pid).is_none() {
            return;
        }
        self.procs_version += 1;
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.info.pid == pid)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(conn) = self.conns.remove(&id) {
                self.finish(conn, ts_ns, out);
            }
        }
        out(Output::Input(Input::ProcessExited { pid, ts_ns }));
    }

    /// Periodic work: processes that exited without an exit event (missed), idle
    /// connections, and the clock for the ops layer's timeouts.
    pub fn tick(&mut self, now_ns: u64, out: &mut impl FnMut(Output<'_>)) {
        let dead: Vec<u32> = self
            .procs
            .keys()
            .copied()
            .filter(|pid| !procfs::alive(*pid))
            .collect();
        for pid in dead {
            self.process_exited(pid, now_ns, out);
        }
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
            if let Some(conn) = self.conns.remove(&id) {
                out(Output::Input(Input::ConnClosed {
                    conn: conn.info,
                    ts_ns: now_ns,
                }));
            }
        }
        out(Output::Input(Input::Tick { now_ns }));
    }

    /// mongowatch is stopping (SIGINT/SIGTERM) while the connections live on: requests still
    /// waiting for their reply are handed on as unanswered, so none is left unreported, but the
    /// connections are not reported closed (they are not: the ops layer writes what is still
    /// open as `timeout`).
    pub fn shutdown(&mut self, now_ns: u64, out: &mut impl FnMut(Output<'_>)) {
        let Self { conns, stats, .. } = self;
        for conn in conns.values_mut() {
            let Conn {
                stream,
                info,
                role,
                ends,
                ..
            } = conn;
            stream.close(now_ns, &mut |ev| forward(ev, info, role, ends, stats, out));
        }
        conns.clear();
    }

    fn finish(&mut self, mut conn: Conn, ts_ns: u64, out: &mut impl FnMut(Output<'_>)) {
        let Conn {
            stream,
            info,
            role,
            ends,
            ..
        } = &mut conn;
        let stats = &mut self.stats;
        stream.close(ts_ns, &mut |ev| forward(ev, info, role, ends, stats, out));
        out(Output::Input(Input::ConnClosed {
            conn: conn.info,
            ts_ns,
        }));
    }

    fn new_conn(&mut self, id: u64, pid: u32, comm: String, ends: Ends) -> Conn {
        self.stats.connections += 1;
        let role = guess_role(&ends, &self.server_ports);
        Conn {
            stream: Connection::new(self.cfg.clone()),
            info: Arc::new(conn_info(id, pid, comm, &ends, role)),
            ends,
            role,
            tls: false,
        }
    }

    /// Runs `act` on the stream of the event's connection (created if its open event was lost),
    /// with the function that hands the stream's events on; `data` is the event's payload, if
    /// it carries one.
    ///
    /// A connection whose first bytes (either way: the watched process may be the server) are
    /// a TLS handshake record rather than a MongoDB message is marked TLS, counted and warned
    /// about once: mongowatch cannot read it, and saying so beats a silent absence of records.
    /// Nothing of a TLS connection reaches its stream.
    fn with_conn(
        &mut self,
        header: &EventHeader,
        data: Option<&[u8]>,
        out: &mut impl FnMut(Output<'_>),
        act: impl FnOnce(&mut Connection, &mut dyn FnMut(ConnEvent<'_>)),
    ) {
        self.ensure_conn(header.conn_id, header.tgid, header.fd);
        let Self { conns, stats, .. } = self;
        let Some(conn) = conns.get_mut(&header.conn_id) else {
            return;
        };
        if !conn.tls && header.offset == 0 && data.is_some_and(looks_like_tls) {
            conn.tls = true;
            stats.tls_connections += 1;
            let info = &conn.info;
            tracing::warn!(
                conn = info.id,
                pid = info.pid,
                comm = %info.comm,
                client = %info.client,
                server = %info.server,
                "this connection is encrypted with TLS, which mongowatch cannot read yet: \
                 its operations are not audited"
            );
        }
        let Conn {
            stream,
            info,
            role,
            ends,
            tls,
        } = conn;
        if *tls {
            stats.tls_bytes += data.map_or(0, |d| d.len() as u64);
            return;
        }
        act(stream, &mut |ev| forward(ev, info, role, ends, stats, out));
    }

    /// Makes sure the connection has an entry; one whose open event was lost is created from
    /// /proc.
    fn ensure_conn(&mut self, id: u64, pid: u32, fd: i32) {
        if !self.conns.contains_key(&id) {
            self.stats.late_connections += 1;
            let ends = procfs::socket_inode(pid, fd)
                .and_then(|inode| procfs::tcp_ends(pid, inode))
                .map(|(local, remote)| Ends::Inet { local, remote })
                .unwrap_or(Ends::Unknown { family: 0 });
            let comm = self
                .procs
                .get(&pid)
                .cloned()
                .or_else(|| procfs::comm(pid))
                .unwrap_or_default();
            let conn = self.new_conn(id, pid, comm, ends);
            self.conns.insert(id, conn);
        }
    }
}

fn dir(d: Direction) -> Dir {
    match d {
        Direction::Egress => Dir::Egress,
        Direction::Ingress => Dir::Ingress,
    }
}

/// Hands a connection event on, learning the watched side's role from the first request.
fn forward(
    ev: ConnEvent<'_>,
    info: &mut Arc<ConnInfo>,
    role: &mut Role,
    ends: &Ends,
    stats: &mut TrackerStats,
    out: &mut impl FnMut(Output<'_>),
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
                        let seen = if dir == Dir::Egress {
                            Role::Client
                        } else {
                            Role::Server
                        };
                        if *role != seen {
                            *role = seen;
                            *info = Arc::new(conn_info(
                                info.id,
                                info.pid,
                                info.comm.clone(),
                                ends,
                                seen,
                            ));
                        }
                    }
                }
                Err(_) => stats.decode_errors += 1,
            }
            out(Output::Message {
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
        ConnEvent::Exchange(exchange) => out(Output::Input(Input::Exchange {
            conn: info.clone(),
            exchange,
        })),
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

fn conn_info(id: u64, pid: u32, comm: String, ends: &Ends, role: Role) -> ConnInfo {
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
        client,
        server,
        tls: false,
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
        let mut t = Tracker::new(Clock::identity(), ConnConfig::default(), vec![27017]);
        t.add_process(4242);
        let mut messages = Vec::new();
        let mut inputs = Vec::new();
        let mut sink = |o: Output<'_>| match o {
            Output::Message {
                conn, dir, frame, ..
            } => messages.push((
                conn.client.clone(),
                conn.server.clone(),
                dir,
                frame.bytes.len(),
            )),
            Output::Input(i) => inputs.push(i),
        };
        let ends = Ends::Inet {
            local: "127.0.0.1:50000".parse().unwrap(),
            remote: "127.0.0.1:27017".parse().unwrap(),
        };
        t.handle(
            Event::ConnOpen {
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
        assert_eq!(messages[0].0, "127.0.0.1:50000");
        assert_eq!(messages[0].1, "127.0.0.1:27017");
        assert_eq!(messages[1].3, rep.len());
        let exchanges: Vec<_> = inputs
            .iter()
            .filter(|i| matches!(i, Input::Exchange { .. }))
            .collect();
        assert_eq!(exchanges.len(), 1);
        assert_eq!(t.stats().messages, 2);
    }

    /// Hands `payloads` (direction, offset, bytes) of connection 9 to a fresh tracker; returns
    /// it and how many messages it framed.
    fn feed(payloads: &[(Direction, u64, &[u8])]) -> (Tracker, usize) {
        let mut t = Tracker::new(Clock::identity(), ConnConfig::default(), vec![27017]);
        t.add_process(4242);
        let mut messages = 0;
        let mut sink = |o: Output<'_>| {
            if let Output::Message { .. } = o {
                messages += 1;
            }
        };
        t.handle(
            Event::ConnOpen {
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

    /// Found by fuzzing (kernel_events): offset jumps of nearly 2^64 bytes on two connections
    /// overflowed the sum of gap bytes.
    #[test]
    fn gap_bytes_of_corrupt_offsets_saturate() {
        let mut t = Tracker::new(Clock::identity(), ConnConfig::default(), vec![27017]);
        t.add_process(4242);
        let mut sink = |_: Output<'_>| {};
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

    #[test]
    fn the_watched_server_side_is_recognised() {
        let mut t = Tracker::new(Clock::identity(), ConnConfig::default(), vec![]);
        let mut clients = Vec::new();
        let mut sink = |o: Output<'_>| {
            if let Output::Message { conn, .. } = o {
                clients.push((conn.client.clone(), conn.server.clone()));
            }
        };
        // No known port: the role comes from the first request's direction.
        t.handle(
            Event::ConnOpen {
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
            vec![("127.0.0.1:50000".to_string(), "127.0.0.1:4000".to_string())]
        );
    }

    #[test]
    fn exit_closes_the_process_connections() {
        let mut t = Tracker::new(Clock::identity(), ConnConfig::default(), vec![27017]);
        t.add_process(4242);
        let mut inputs = Vec::new();
        let mut sink = |o: Output<'_>| {
            if let Output::Input(i) = o {
                inputs.push(i)
            }
        };
        t.handle(
            Event::ConnOpen {
                header: header(EventKind::ConnOpen, 9, 0, 1),
                ends: Ends::Unknown { family: 0 },
                comm: "x".into(),
            },
            &mut sink,
        );
        let req = op_msg(1, 0, bson::rawdoc! { "find": "c", "$db": "d" });
        t.handle(
            Event::Data {
                header: header(EventKind::Data, 9, 0, 10),
                direction: Direction::Egress,
                payload: &req,
            },
            &mut sink,
        );
        let before = t.processes_version();
        t.handle(
            Event::ProcExit {
                header: header(EventKind::ProcExit, 0, 0, 50),
                pid: 4242,
            },
            &mut sink,
        );
        assert!(!t.has_processes());
        assert_ne!(t.processes_version(), before, "the watched set moved");
        assert!(inputs.iter().any(|i| matches!(
            i,
            Input::Exchange {
                exchange: crate::wire::Exchange::Unanswered { .. },
                ..
            }
        )));
        assert!(inputs
            .iter()
            .any(|i| matches!(i, Input::ConnClosed { ts_ns: 50, .. })));
        assert!(inputs
            .iter()
            .any(|i| matches!(i, Input::ProcessExited { pid: 4242, .. })));
    }
}
