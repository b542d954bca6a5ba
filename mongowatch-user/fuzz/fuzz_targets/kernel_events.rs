//! Kernel event parsing and the connection tracker, on arbitrary ring buffer records.
//!
//! The whole input is first parsed as one ring buffer record. Then it is read as a sequence
//! of steps `[control, length (u16 LE, mod 4096), record bytes]`: control bits 6-7 both set
//! make the step a tick (time passes, dead processes and idle connections are reaped) instead
//! of a record; control bit 0 repairs the record's header (a known kind, a payload length that
//! fits) so that the tracker is reached more often. Each record goes to `capture::events::parse`;
//! what parses goes to the connection tracker (with pids moved out of the range of real
//! processes, and connection ids folded onto eight, so that events meet), and its ops inputs to
//! the ops tracker.
//!
//! Checks: no panic; every record is an event or a counted error; the tracker's counters agree
//! with what it was fed (events, data bytes, connections, messages and decode errors); the ops
//! layer stays bounded; after the last tick no process is left.
#![no_main]

use std::mem::offset_of;

use libfuzzer_sys::fuzz_target;
use mongowatch::{
    capture::{
        clock::Clock,
        events::{parse, Event, EventError},
        processes::Processes,
    },
    ops::{self, Input, TrackerConfig},
    record::WatchIds,
    stream::{ConnConfig, Connections, StreamConfig, TableEvent},
    wire::PairConfig,
};
use mongowatch_common::{EventHeader, EVENT_HEADER_SIZE};

/// Pids no real process can have (pid_max is at most 2^22): /proc lookups fail at once, the
/// same on every machine.
const FAKE_PID: u32 = 0x7000_0000;
const OPS_MAX_OPEN: usize = 16;

#[derive(Default, Debug)]
struct Fed {
    records: u64,
    parsed: u64,
    short: u64,
    unknown_kind: u64,
    bad_length: u64,
    events: u64,
    data_bytes: u64,
    conn_opens: u64,
    messages: u64,
    message_errors: u64,
    inputs: u64,
}

/// A header the parser accepts: a known kind and a payload length that fits.
fn repair(rec: &mut [u8]) {
    if rec.len() < EVENT_HEADER_SIZE {
        return;
    }
    let kind = offset_of!(EventHeader, kind);
    rec[kind] = rec[kind] % 6 + 1;
    let at = offset_of!(EventHeader, captured_len);
    let said = u32::from_le_bytes(rec[at..at + 4].try_into().unwrap());
    let has = (rec.len() - EVENT_HEADER_SIZE) as u32;
    let fits = if has == 0 { 0 } else { said % (has + 1) };
    rec[at..at + 4].copy_from_slice(&fits.to_le_bytes());
}

/// What the daemon's pipeline does with events, without the kernel: the watched processes,
/// the connection table, and the ops layer its events feed.
struct Sim {
    procs: Processes,
    conns: Connections,
    ops: ops::Tracker,
    emits: Vec<ops::Emit>,
}

impl Sim {
    /// Pids out of the real range, connection ids folded, then the event goes where the
    /// pipeline sends it.
    fn feed(&mut self, mut ev: Event<'_>, fed: &mut Fed) -> u64 {
        let h = ev.header_mut();
        h.tgid = FAKE_PID + h.tgid % 3;
        h.conn_id %= 8;
        // Boot time within 2^50 ns (13 days), so that the last tick comes after everything.
        h.ts_ns %= 1 << 50;
        let ts = h.ts_ns;
        match &mut ev {
            Event::ProcFork { child, .. } => {
                *child = FAKE_PID + *child % 3;
                self.procs.insert(*child, None, None);
                return ts;
            }
            Event::ProcExit { header, .. } => {
                let pid = header.tgid;
                self.exit(pid, ts, fed);
                return ts;
            }
            Event::Data { payload, .. } => fed.data_bytes += payload.len() as u64,
            Event::ConnOpen { header, .. } => {
                fed.conn_opens += 1;
                self.procs.insert(header.tgid, None, None);
            }
            _ => {}
        }
        fed.events += 1;
        let Self {
            conns, ops, emits, ..
        } = self;
        conns.handle(ev, &mut |o| deliver(o, ops, fed, emits));
        ts
    }

    fn exit(&mut self, pid: u32, ts: u64, fed: &mut Fed) {
        if !self.procs.remove(pid) {
            return;
        }
        let Self {
            conns, ops, emits, ..
        } = self;
        conns.close_process(pid, ts, &mut |o| deliver(o, ops, fed, emits));
        to_ops(Input::ProcessExited { pid, ts_ns: ts }, ops, fed, emits);
    }

    fn tick(&mut self, now: u64, fed: &mut Fed) {
        for pid in self.procs.gone() {
            self.exit(pid, now, fed);
        }
        let Self {
            conns, ops, emits, ..
        } = self;
        conns.expire(now, &mut |o| deliver(o, ops, fed, emits));
        to_ops(Input::Tick { now_ns: now }, ops, fed, emits);
    }
}

fn deliver(o: TableEvent<'_>, ops: &mut ops::Tracker, fed: &mut Fed, emits: &mut Vec<ops::Emit>) {
    match o {
        TableEvent::Message { message, .. } => {
            fed.messages += 1;
            if message.is_err() {
                fed.message_errors += 1;
            }
        }
        TableEvent::Exchange { conn, exchange } => to_ops(
            Input::Exchange {
                conn: conn.clone(),
                exchange,
            },
            ops,
            fed,
            emits,
        ),
        TableEvent::Closed { conn, ts_ns } => {
            to_ops(Input::ConnClosed { conn, ts_ns }, ops, fed, emits)
        }
    }
}

fn to_ops(input: Input, ops: &mut ops::Tracker, fed: &mut Fed, emits: &mut Vec<ops::Emit>) {
    fed.inputs += 1;
    emits.clear();
    ops.handle(&input, emits);
    assert!(ops.open_operations() <= OPS_MAX_OPEN);
}

struct Src<'a>(&'a [u8]);

impl<'a> Src<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

fuzz_target!(|data: &[u8]| {
    // The whole input as one record: an event or an error, never a panic.
    if let Ok(Event::Data {
        payload, header, ..
    }) = parse(data)
    {
        assert_eq!(payload.len(), header.captured_len as usize);
    }

    let mut sim = Sim {
        procs: Processes::new(),
        conns: Connections::new(
            Clock::identity(),
            ConnConfig {
                stream: StreamConfig {
                    max_message: 1 << 20,
                    block_size: 4096,
                },
                pair: PairConfig { max_outstanding: 8 },
                idle_timeout_ns: 1_000_000_000,
                ..ConnConfig::default()
            },
            vec![27017],
        ),
        ops: ops::Tracker::new(
            TrackerConfig {
                include_heartbeats: true,
                max_open: OPS_MAX_OPEN,
            },
            WatchIds::new([0; 5]),
        ),
        emits: Vec::new(),
    };
    let mut fed = Fed::default();
    let mut s = Src(data);
    let mut now = 0u64;
    while !s.0.is_empty() {
        let ctl = s.u8();
        if ctl & 0xc0 == 0xc0 {
            now = now.saturating_add(u64::from(ctl & 0x3f) << 28);
            sim.tick(now, &mut fed);
            continue;
        }
        let len = usize::from(u16::from_le_bytes([s.u8(), s.u8()]) % 4096);
        let mut rec = s.bytes(len).to_vec();
        if ctl & 1 == 1 {
            repair(&mut rec);
        }
        fed.records += 1;
        match parse(&rec) {
            Ok(ev) => {
                fed.parsed += 1;
                now = now.max(sim.feed(ev, &mut fed));
            }
            Err(EventError::Short(n)) => {
                assert!(n < EVENT_HEADER_SIZE);
                fed.short += 1
            }
            Err(EventError::UnknownKind(_)) => fed.unknown_kind += 1,
            Err(EventError::BadLength { said, has }) => {
                assert!(said as usize > has);
                fed.bad_length += 1
            }
        }
    }
    assert_eq!(
        fed.records,
        fed.parsed + fed.short + fed.unknown_kind + fed.bad_length,
        "every record is an event or a counted error"
    );

    let st = sim.conns.stats();
    assert_eq!(st.events, fed.events, "{fed:?} {st:?}");
    assert_eq!(st.data_bytes, fed.data_bytes, "bytes counted = bytes fed");
    assert!(st.tls_bytes <= st.data_bytes, "{st:?}");
    assert!(st.tls_connections <= st.connections, "{st:?}");
    assert_eq!(
        st.connections,
        fed.conn_opens - st.reopened_connections + st.late_connections,
        "every connection opened or learnt late: {fed:?} {st:?}"
    );
    assert_eq!(st.messages, fed.messages, "{st:?}");
    assert_eq!(st.decode_errors, fed.message_errors, "{st:?}");

    // The end: a tick after every timeout reaps the (never alive) processes.
    sim.tick(now.saturating_add(1 << 40), &mut fed);
    assert!(sim.procs.is_empty(), "a dead process is still watched");
    assert_eq!(
        sim.ops.open_operations(),
        0,
        "the processes' exits close every operation"
    );
    assert_eq!(sim.conns.stats().messages, fed.messages);
});
