//! The replay load generator's parts (`bench-replay`, `cargo xtask bench replay`): recorded
//! driver sessions (the `.mwrec` fixtures of mongowatch-user/tests/fixtures) and synthetic ones,
//! a server that answers each request with its recorded reply, and a client that replays a
//! session's requests.
//!
//! A [`Session`] is its connections' messages, each connection's in order, and one global
//! order of steps (open, send, receive, close) taken from the recording. The client replays
//! the steps on real sockets; the server, one thread per accepted connection, follows that
//! connection's messages: it reads each client message and writes the server's, with request
//! ids rewritten (fresh ids, `responseTo` pointing at the live request) and nothing else
//! changed. Which recorded connection a socket plays is said by the listener it connects to:
//! one listener per (worker slot, session, connection). Cursor ids are fresh too: the server
//! gives each cursor a reply opens an id of its own and answers a getMore with the live id it
//! was sent, and the client sends the live ids it was given (see [`Msg::cursor_at`]), so no
//! two replays share a cursor id, as with a real server (mongowatch keys a cursor by (pid,
//! server, cursor id), and the server is unknown where a connection's open event was lost).
//!
//! The operations a session must become are counted here, independently of mongowatch, by the
//! record contract's rules ([`Session::expected`], see [`crate::oracle_ops`]).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::Path,
    sync::atomic::{AtomicI32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use bson::{doc, Binary, Bson, Document};

use crate::{
    oracle_ops::NOT_RECORDED,
    wire::{le_i32, le_i64, op_msg, set_i32, set_i64, WireMessage, CHECKSUM_PRESENT},
};

/// The largest message the protocol allows.
const MAX_MESSAGE: usize = 48 * 1024 * 1024;

/// One wire message of a session.
#[derive(Debug, Clone)]
pub struct Msg {
    pub bytes: Vec<u8>,
    pub from_client: bool,
    /// Where the message holds a cursor id (a reply's `cursor.id`, a getMore's or
    /// killCursors' cursors; not zero): (offset, recorded id). Rewritten on the wire to the
    /// live id; empty for compressed messages, whose ids are replayed as recorded.
    pub cursor_at: Vec<(usize, i64)>,
}

/// One replay step, in the recording's order. Connections and messages are indexes into
/// [`Session::conns`] and that connection's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Open(usize),
    Send(usize, usize),
    Recv(usize, usize),
    Close(usize),
}

#[derive(Debug, Clone)]
pub struct Session {
    pub name: String,
    /// Per connection, its messages in order (both directions).
    pub conns: Vec<Vec<Msg>>,
    pub steps: Vec<Step>,
    /// The operations one replay must become, by command name.
    pub expected: BTreeMap<String, u64>,
    /// Messages and bytes of one replay, both directions.
    pub messages: u64,
    pub bytes: u64,
    /// Requests sent back to back go in one write, and the client reads whatever has come
    /// ([`MsgReader`]); otherwise it writes each message and reads a header, then its body,
    /// as drivers do.
    pub pipelined: bool,
}

/// Cursor ids the servers of this process hand out: random-looking, positive, never repeated.
static CURSORS_GIVEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn fresh_cursor_id() -> i64 {
    // splitmix64 of a counter: a bijection, so distinct counters give distinct ids.
    let mut z = CURSORS_GIVEN
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // Positive and not zero (zero says "no cursor"); the top bit dropped keeps it a bijection
    // on the counters this process can reach.
    ((z >> 1) | 1) as i64
}

/// The cursor ids in `body` (a reply's `cursor.id`, a getMore's, killCursors' `cursors`,
/// and a killCursors reply's lists), not zero.
fn cursor_ids(body: &Document, from_client: bool) -> Vec<i64> {
    let id_of = |v: &Bson| match v {
        Bson::Int64(i) => Some(*i),
        _ => None,
    };
    let mut ids = Vec::new();
    if from_client {
        ids.extend(body.get("getMore").and_then(id_of));
        if body.contains_key("killCursors") {
            if let Ok(a) = body.get_array("cursors") {
                ids.extend(a.iter().filter_map(id_of));
            }
        }
    } else {
        if let Ok(cur) = body.get_document("cursor") {
            ids.extend(cur.get("id").and_then(id_of));
        }
        for list in [
            "cursorsKilled",
            "cursorsNotFound",
            "cursorsAlive",
            "cursorsUnknown",
        ] {
            if let Ok(a) = body.get_array(list) {
                ids.extend(a.iter().filter_map(id_of));
            }
        }
    }
    ids.retain(|id| *id != 0);
    ids
}

/// Where `m` holds the cursor ids of its body: every place its bytes hold one of them as an
/// element's value. OP_MSG only.
fn find_cursor_ids(m: &Msg) -> Vec<(usize, i64)> {
    const OP_MSG: i32 = 2013;
    if m.bytes.len() < 21 || le_i32(&m.bytes, 12) != OP_MSG {
        return Vec::new();
    }
    let w = WireMessage {
        bytes: m.bytes.clone(),
        first_byte_ns: 0,
        last_byte_ns: 0,
    };
    let Some(body) = w.body() else {
        return Vec::new();
    };
    let mut at = Vec::new();
    for id in cursor_ids(&body, m.from_client) {
        let want = id.to_le_bytes();
        let mut from = 21;
        while let Some(p) = m.bytes[from..]
            .windows(8)
            .position(|w| w == want)
            .map(|p| p + from)
        {
            // An element's value follows its key's NUL; ids are random-looking 8 bytes, so
            // finding one elsewhere by chance is not a concern.
            let key_ends = m.bytes[p - 1] == 0;
            if key_ends && !at.iter().any(|(q, _)| *q == p) {
                at.push((p, id));
            }
            from = p + 8;
        }
    }
    at
}

impl Session {
    /// Builds a session from its connections' messages in global order: `(conn, msg)` pairs,
    /// with closes as `None`. Checks every message and counts the operations.
    fn build(name: &str, order: Vec<(usize, Option<Msg>)>) -> Result<Session> {
        let mut conns: Vec<Vec<Msg>> = Vec::new();
        let mut open: Vec<bool> = Vec::new();
        let mut steps = Vec::new();
        let (mut messages, mut bytes) = (0, 0);
        for (c, m) in order {
            if c >= conns.len() {
                conns.resize_with(c + 1, Vec::new);
                open.resize(c + 1, false);
            }
            match m {
                None => {
                    if open[c] {
                        steps.push(Step::Close(c));
                        open[c] = false;
                    }
                }
                Some(m) => {
                    ensure!(
                        !steps.contains(&Step::Close(c)),
                        "{name}: connection {c} sends after its close"
                    );
                    let w = WireMessage {
                        bytes: m.bytes.clone(),
                        first_byte_ns: 0,
                        last_byte_ns: 0,
                    };
                    // Rewriting the header's ids would break an OP_MSG checksum.
                    ensure!(
                        w.flag_bits() & CHECKSUM_PRESENT == 0,
                        "{name}: a message with a checksum cannot be replayed with new ids"
                    );
                    if !open[c] {
                        steps.push(Step::Open(c));
                        open[c] = true;
                    }
                    messages += 1;
                    bytes += m.bytes.len() as u64;
                    let i = conns[c].len();
                    steps.push(if m.from_client {
                        Step::Send(c, i)
                    } else {
                        Step::Recv(c, i)
                    });
                    let mut m = m;
                    m.cursor_at = find_cursor_ids(&m);
                    conns[c].push(m);
                }
            }
        }
        for (c, is_open) in open.iter().enumerate() {
            if *is_open {
                steps.push(Step::Close(c));
            }
        }
        let mut s = Session {
            name: name.to_string(),
            conns,
            steps,
            expected: BTreeMap::new(),
            messages,
            bytes,
            pipelined: false,
        };
        s.expected = s.count_operations();
        Ok(s)
    }

    /// The record contract's operations in this session: every request that is not a
    /// handshake, heartbeat or session bookkeeping ([`NOT_RECORDED`]) is one, except a
    /// getMore or killCursors on a cursor a reply opened, which belongs to the operation that
    /// opened it. The harness's own reading of the bytes ([`WireMessage::body`]).
    fn count_operations(&self) -> BTreeMap<String, u64> {
        let mut cursors: HashSet<i64> = HashSet::new();
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        let id_of = |v: Option<&Bson>| match v {
            Some(Bson::Int64(i)) => Some(*i),
            Some(Bson::Int32(i)) => Some(i64::from(*i)),
            _ => None,
        };
        for step in &self.steps {
            let (Step::Send(c, i) | Step::Recv(c, i)) = *step else {
                continue;
            };
            let m = &self.conns[c][i];
            let w = WireMessage {
                bytes: m.bytes.clone(),
                first_byte_ns: 0,
                last_byte_ns: 0,
            };
            let Some(body) = w.body() else { continue };
            if !m.from_client {
                if let Ok(cur) = body.get_document("cursor") {
                    if let Some(id) = id_of(cur.get("id")).filter(|id| *id != 0) {
                        cursors.insert(id);
                    }
                }
                continue;
            }
            let Some(name) = body.keys().next().cloned() else {
                continue;
            };
            if NOT_RECORDED.contains(&name.as_str()) {
                continue;
            }
            let on_open_cursor = match name.as_str() {
                "getMore" => id_of(body.get("getMore")).is_some_and(|id| cursors.contains(&id)),
                "killCursors" => body.get_array("cursors").ok().is_some_and(|a| {
                    a.iter()
                        .any(|v| id_of(Some(v)).is_some_and(|id| cursors.contains(&id)))
                }),
                _ => false,
            };
            if !on_open_cursor {
                *out.entry(name).or_default() += 1;
            }
        }
        out
    }

    /// Reads a `.mwrec` recording (format: mongowatch-user/tests/fixtures/record_proxy.py).
    pub fn from_mwrec(path: &Path) -> Result<Session> {
        let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("mwrec")
            .to_string();
        ensure!(
            b.starts_with(b"MWREC1\n"),
            "{}: not a .mwrec",
            path.display()
        );
        let mut dense: HashMap<u16, usize> = HashMap::new();
        let mut pending: Vec<[Vec<u8>; 2]> = Vec::new();
        let mut order = Vec::new();
        let mut p = 7;
        while p < b.len() {
            ensure!(
                p + 16 <= b.len(),
                "{}: a chunk header cut short",
                path.display()
            );
            let closed = b[p] == 1;
            let from_client = b[p + 1] == 0;
            let conn = u16::from_le_bytes([b[p + 2], b[p + 3]]);
            let len = u32::from_le_bytes(b[p + 12..p + 16].try_into()?) as usize;
            ensure!(
                p + 16 + len <= b.len(),
                "{}: a chunk cut short",
                path.display()
            );
            let data = &b[p + 16..p + 16 + len];
            p += 16 + len;
            let next = dense.len();
            let c = *dense.entry(conn).or_insert(next);
            if c >= pending.len() {
                pending.resize_with(c + 1, Default::default);
            }
            if closed {
                order.push((c, None));
                continue;
            }
            let buf = &mut pending[c][usize::from(!from_client)];
            buf.extend_from_slice(data);
            while buf.len() >= 4 {
                let n = le_i32(buf, 0);
                ensure!(
                    (16..=MAX_MESSAGE as i32).contains(&n),
                    "{}: bad messageLength {n}",
                    path.display()
                );
                if buf.len() < n as usize {
                    break;
                }
                let bytes: Vec<u8> = buf.drain(..n as usize).collect();
                order.push((
                    c,
                    Some(Msg {
                        bytes,
                        from_client,
                        cursor_at: Vec::new(),
                    }),
                ));
            }
        }
        for (c, dirs) in pending.iter().enumerate() {
            ensure!(
                dirs.iter().all(Vec::is_empty),
                "{}: connection {c} ends inside a message",
                path.display()
            );
        }
        Session::build(&name, order)
    }

    /// `ops` small commands on one connection: inserts of one small document and finds of one
    /// document (one batch, no cursor left open), alternating. Every request is one operation.
    pub fn small(ops: usize) -> Result<Session> {
        Self::small_pipelined(ops, 1)
    }

    /// [`Session::small`] with `depth` requests in flight on the connection: the client sends
    /// `depth` of them in one write, the server answers them in one, and each side reads what
    /// has come in one read. Fewer system calls per message than a driver makes, so the
    /// generator can offer more than one request at a time per connection can.
    pub fn small_pipelined(ops: usize, depth: usize) -> Result<Session> {
        let mut order = Vec::new();
        let mut replies = Vec::new();
        let pad = "x".repeat(40);
        let depth = depth.max(1);
        for i in 0..ops as i32 {
            let (req, rep) = if i % 2 == 0 {
                (
                    doc! {"insert": "bench", "documents": [{"_id": i, "v": &pad}], "$db": "bench"},
                    doc! {"n": 1, "ok": 1.0},
                )
            } else {
                (
                    doc! {"find": "bench", "filter": {"_id": i - 1}, "limit": 1,
                    "singleBatch": true, "$db": "bench"},
                    doc! {"cursor": {"id": 0i64, "ns": "bench.bench",
                    "firstBatch": [{"_id": i - 1, "v": &pad}]}, "ok": 1.0},
                )
            };
            order.push((0, Some(request(i, &req))));
            replies.push((0, Some(reply(i, &rep))));
            if replies.len() == depth || i + 1 == ops as i32 {
                order.append(&mut replies);
            }
        }
        order.push((0, None));
        let name = if depth == 1 { "small" } else { "pipelined" };
        let mut s = Session::build(name, order)?;
        s.pipelined = depth > 1;
        Ok(s)
    }

    /// `cursors` finds on one connection, each answered by a first batch and `get_mores`
    /// further batches of about `batch_bytes` each (the last closes the cursor): one operation
    /// per cursor, and multi-MB replies.
    pub fn large(cursors: usize, get_mores: usize, batch_bytes: usize) -> Result<Session> {
        ensure!(
            batch_bytes + 4096 < MAX_MESSAGE,
            "batches are at most 48 MB"
        );
        const DOC: usize = 64 * 1024;
        let docs: Vec<Bson> = (0..batch_bytes.div_ceil(DOC).max(1))
            .map(|j| {
                Bson::Document(doc! {"_id": j as i64, "pad": Binary {
                    subtype: bson::spec::BinarySubtype::Generic,
                    bytes: vec![0x5a; DOC],
                }})
            })
            .collect();
        let mut order = Vec::new();
        let mut id = 1;
        for k in 0..cursors {
            // Random-looking cursor ids, as servers make them.
            let cursor = 0x3a5f_0000_0000_0001_i64 + (k as i64) * 7_919;
            for g in 0..=get_mores {
                let req = if g == 0 {
                    doc! {"find": "big", "filter": {}, "$db": "bench"}
                } else {
                    doc! {"getMore": cursor, "collection": "big", "$db": "bench"}
                };
                let next = if g == get_mores { 0 } else { cursor };
                let batch = if g == 0 { "firstBatch" } else { "nextBatch" };
                let rep = doc! {"cursor": {"id": next, "ns": "bench.big", batch: docs.clone()},
                "ok": 1.0};
                order.push((0, Some(request(id, &req))));
                order.push((0, Some(reply(id, &rep))));
                id += 1;
            }
        }
        order.push((0, None));
        Session::build("large", order)
    }
}

fn request(id: i32, d: &Document) -> Msg {
    Msg {
        bytes: op_msg(id, d),
        from_client: true,
        cursor_at: Vec::new(),
    }
}

fn reply(to: i32, d: &Document) -> Msg {
    let mut bytes = op_msg(1_000_000 + to, d);
    set_i32(&mut bytes, 8, to);
    Msg {
        bytes,
        from_client: false,
        cursor_at: Vec::new(),
    }
}

/// The sessions a mix names (comma-separated): `fixtures` (every `.mwrec` in `fixtures_dir`),
/// `small`, `large`, or one fixture by file stem.
pub fn sessions(mix: &str, fixtures_dir: &Path, large_bytes: usize) -> Result<Vec<Session>> {
    let mut out = Vec::new();
    let mut fixtures: Vec<_> = std::fs::read_dir(fixtures_dir)
        .with_context(|| format!("reading {}", fixtures_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "mwrec"))
        .collect();
    fixtures.sort();
    for part in mix.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "small" => out.push(Session::small(200)?),
            "pipelined" => out.push(Session::small_pipelined(256, PIPELINE_DEPTH)?),
            "large" => out.push(Session::large(2, 2, large_bytes)?),
            "fixtures" => {
                for f in &fixtures {
                    out.push(Session::from_mwrec(f)?);
                }
            }
            name => match fixtures
                .iter()
                .find(|f| f.file_stem().is_some_and(|s| s == name))
            {
                Some(f) => out.push(Session::from_mwrec(f)?),
                None => bail!("no session named {name} (small, large, fixtures or a fixture)"),
            },
        }
    }
    ensure!(!out.is_empty(), "the mix {mix:?} names no session");
    Ok(out)
}

/// Requests in flight per connection in the `pipelined` mix.
pub const PIPELINE_DEPTH: usize = 16;

/// A connected socket of either kind.
pub trait Socket: Read + Write + Send {}
impl Socket for TcpStream {}
impl Socket for UnixStream {}

/// Connects to an address as the listeners file writes it: `tcp:HOST:PORT` or `unix:PATH`.
pub fn connect(addr: &str) -> Result<Box<dyn Socket>> {
    if let Some(a) = addr.strip_prefix("tcp:") {
        let s = TcpStream::connect(a).with_context(|| format!("connecting to {a}"))?;
        // As drivers do.
        s.set_nodelay(true)?;
        Ok(Box::new(s))
    } else if let Some(p) = addr.strip_prefix("unix:") {
        Ok(Box::new(
            UnixStream::connect(p).with_context(|| format!("connecting to {p}"))?,
        ))
    } else {
        bail!("bad address {addr}")
    }
}

/// Reads whole messages from a socket with as few reads as it can: each read takes what has
/// come (up to 64 KiB beyond the message wanted), and the messages it holds are handed out
/// one by one. (A driver reads a header, then its body: two reads per message.)
#[derive(Default)]
pub struct MsgReader {
    pending: Vec<u8>,
    at: usize,
}

impl MsgReader {
    /// The next whole message into `buf`; `Ok(false)` at a clean end of stream.
    pub fn next(&mut self, s: &mut dyn Read, buf: &mut Vec<u8>) -> Result<bool> {
        loop {
            let have = &self.pending[self.at..];
            if have.len() >= 4 {
                let len = le_i32(have, 0);
                ensure!(
                    (16..=MAX_MESSAGE as i32).contains(&len),
                    "bad messageLength {len}"
                );
                let len = len as usize;
                if have.len() >= len {
                    buf.clear();
                    buf.extend_from_slice(&have[..len]);
                    self.at += len;
                    return Ok(true);
                }
            }
            // Room for the rest of this message and whatever follows it.
            self.pending.drain(..self.at);
            self.at = 0;
            let want = if self.pending.len() >= 4 {
                le_i32(&self.pending, 0) as usize
            } else {
                16
            };
            let old = self.pending.len();
            let room = want.saturating_sub(old) + (64 << 10);
            self.pending.resize(old + room, 0);
            let n = s.read(&mut self.pending[old..])?;
            self.pending.truncate(old + n);
            if n == 0 {
                ensure!(old == 0, "the stream ended inside a message");
                return Ok(false);
            }
        }
    }
}

/// Reads one whole message into `buf`; `Ok(false)` at a clean end of stream.
pub fn read_msg(s: &mut dyn Read, buf: &mut Vec<u8>) -> Result<bool> {
    buf.resize(16, 0);
    let mut got = 0;
    while got < 4 {
        let n = s.read(&mut buf[got..16])?;
        if n == 0 {
            ensure!(got == 0, "the stream ended inside a header");
            return Ok(false);
        }
        got += n;
    }
    let len = le_i32(buf, 0);
    ensure!(
        (16..=MAX_MESSAGE as i32).contains(&len),
        "bad messageLength {len}"
    );
    buf.resize(len as usize, 0);
    s.read_exact(&mut buf[got..])
        .context("the stream ended inside a message")?;
    Ok(true)
}

/// Serves one accepted connection that plays `msgs` (one recorded connection): reads each
/// client message, writes each server message with a fresh request id and its `responseTo`
/// pointing at the live request, then waits for the client to close. A cursor id in a reply
/// is the live one the client sent for it, or else (a cursor the reply opens) a fresh one.
pub fn serve(s: &mut dyn Socket, msgs: &[Msg], ids: &AtomicI32) -> Result<()> {
    let mut live: HashMap<i32, i32> = HashMap::new();
    let mut cursors: HashMap<i64, i64> = HashMap::new();
    let mut out: Vec<u8> = Vec::new();
    let mut buf = Vec::new();
    // The server is not watched: how it reads costs only the generator.
    let mut reader = MsgReader::default();
    for m in msgs {
        if m.from_client {
            if !out.is_empty() {
                s.write_all(&out)?;
                out.clear();
            }
            ensure!(reader.next(s, &mut buf)?, "the client closed early");
            ensure!(
                buf.len() == m.bytes.len(),
                "the client sent {} bytes where the recording has {}",
                buf.len(),
                m.bytes.len()
            );
            live.insert(le_i32(&m.bytes, 4), le_i32(&buf, 4));
            for &(off, recorded) in &m.cursor_at {
                cursors.insert(recorded, le_i64(&buf, off));
            }
        } else {
            let at = out.len();
            out.extend_from_slice(&m.bytes);
            set_i32(&mut out, at + 4, ids.fetch_add(1, Ordering::Relaxed));
            let to = le_i32(&m.bytes, 8);
            set_i32(&mut out, at + 8, live.get(&to).copied().unwrap_or(to));
            for &(off, recorded) in &m.cursor_at {
                let id = *cursors.entry(recorded).or_insert_with(fresh_cursor_id);
                set_i64(&mut out, at + off, id);
            }
        }
    }
    if !out.is_empty() {
        s.write_all(&out)?;
    }
    // Until the client closes; it has nothing more to say.
    while reader.next(s, &mut buf)? {}
    Ok(())
}

/// Paces sends to a rate of messages per second (both directions count); `None` is flat out.
/// Late messages go at once: the achieved rate shows what the offered one did not get.
pub struct Pacer {
    start: Instant,
    per_msg: Option<Duration>,
    done: u64,
}

impl Pacer {
    pub fn new(rate: Option<f64>) -> Pacer {
        Pacer {
            start: Instant::now(),
            per_msg: rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            done: 0,
        }
    }

    fn before_send(&self) {
        if let Some(per) = self.per_msg {
            let due = self.start + per.mul_f64(self.done as f64);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
    }
}

/// Replays one session once on fresh connections to `addrs` (one per recorded connection).
/// Returns the messages and bytes moved. Every reply is checked: its length must be the
/// recording's and its `responseTo` the live request's. Requests carry the live cursor ids
/// the replies gave (for the recorded ones).
pub fn replay(
    s: &Session,
    addrs: &[String],
    ids: &AtomicI32,
    pacer: &mut Pacer,
    buf: &mut Vec<u8>,
) -> Result<(u64, u64)> {
    let mut socks: Vec<Option<Box<dyn Socket>>> = (0..s.conns.len()).map(|_| None).collect();
    // Per connection: recorded request id -> live one.
    let mut live: Vec<HashMap<i32, i32>> = vec![HashMap::new(); s.conns.len()];
    // Recorded cursor id -> live one, for the whole replay (a driver may use a cursor on
    // another connection than the one that opened it).
    let mut cursors: HashMap<i64, i64> = HashMap::new();
    let mut readers: Vec<MsgReader> = (0..s.conns.len()).map(|_| MsgReader::default()).collect();
    let mut out = Vec::new();
    let (mut msgs, mut bytes) = (0, 0);
    for (k, step) in s.steps.iter().enumerate() {
        match *step {
            Step::Open(c) => socks[c] = Some(connect(&addrs[c])?),
            Step::Close(c) => {
                socks[c] = None;
                readers[c] = MsgReader::default();
            }
            Step::Send(c, i) => {
                let msg = &s.conns[c][i];
                let m = &msg.bytes;
                let at = out.len();
                out.extend_from_slice(m);
                let id = ids.fetch_add(1, Ordering::Relaxed);
                live[c].insert(le_i32(m, 4), id);
                set_i32(&mut out, at + 4, id);
                for &(off, recorded) in &msg.cursor_at {
                    if let Some(id) = cursors.get(&recorded) {
                        set_i64(&mut out, at + off, *id);
                    }
                }
                pacer.before_send();
                pacer.done += 1;
                msgs += 1;
                bytes += m.len() as u64;
                let more = s.pipelined
                    && matches!(s.steps.get(k + 1), Some(Step::Send(next, _)) if *next == c);
                if !more {
                    socks[c]
                        .as_mut()
                        .context("send on a closed connection")?
                        .write_all(&out)?;
                    out.clear();
                }
            }
            Step::Recv(c, i) => {
                let msg = &s.conns[c][i];
                let m = &msg.bytes;
                let sock = socks[c]
                    .as_mut()
                    .context("receive on a closed connection")?;
                let got = if s.pipelined {
                    readers[c].next(sock.as_mut(), buf)?
                } else {
                    read_msg(sock.as_mut(), buf)?
                };
                ensure!(got, "the server closed early");
                ensure!(
                    buf.len() == m.len(),
                    "{}: a reply of {} bytes where the recording has {}",
                    s.name,
                    buf.len(),
                    m.len()
                );
                let to = le_i32(m, 8);
                if let Some(want) = live[c].get(&to) {
                    ensure!(
                        le_i32(buf, 8) == *want,
                        "{}: a reply answers request {} instead of {want}",
                        s.name,
                        le_i32(buf, 8)
                    );
                }
                for &(off, recorded) in &msg.cursor_at {
                    cursors.insert(recorded, le_i64(buf, off));
                }
                pacer.done += 1;
                msgs += 1;
                bytes += buf.len() as u64;
            }
        }
    }
    Ok((msgs, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> std::path::PathBuf {
        crate::paths::workspace_dir().join("mongowatch-user/tests/fixtures")
    }

    #[test]
    fn synthetic_sessions_count_their_operations() {
        let s = Session::small(10).unwrap();
        assert_eq!(s.expected.get("insert"), Some(&5));
        assert_eq!(s.expected.get("find"), Some(&5));
        assert_eq!(s.messages, 20);
        let l = Session::large(3, 2, 1 << 20).unwrap();
        // Each cursor's id is found where it is: in every reply but the last of each cursor
        // (which closes it, id 0), and in every getMore.
        let found: usize = l.conns[0].iter().map(|m| m.cursor_at.len()).sum();
        assert_eq!(found, 3 * (2 + 2));
        // One operation per cursor: its getMores belong to it.
        assert_eq!(l.expected, BTreeMap::from([("find".to_string(), 3)]));
        assert_eq!(l.messages, 18);
        assert!(l.bytes > 9 << 20);
    }

    #[test]
    fn a_fixture_replays_through_a_real_server_and_client() {
        let s = Session::from_mwrec(&fixtures().join("pymongo_plain.mwrec")).unwrap();
        // What tests/fixtures/README.md says the session holds.
        assert!(s.expected["insert"] >= 4, "{:?}", s.expected);
        assert_eq!(s.expected["find"], 2, "{:?}", s.expected);
        assert!(!s.expected.contains_key("getMore"), "{:?}", s.expected);
        assert!(!s.expected.contains_key("hello"), "{:?}", s.expected);
        // Serve it over unix socket pairs, one per recorded connection.
        let ids = AtomicI32::new(1);
        let dir = tempfile::tempdir().unwrap();
        let mut addrs = Vec::new();
        let mut servers = Vec::new();
        for (c, msgs) in s.conns.iter().enumerate() {
            if msgs.is_empty() {
                addrs.push(String::new());
                continue;
            }
            let path = dir.path().join(format!("{c}.sock"));
            let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
            addrs.push(format!("unix:{}", path.display()));
            let msgs = msgs.clone();
            servers.push(thread::spawn(move || {
                let ids = AtomicI32::new(1 << 20);
                let (mut sock, _) = l.accept().unwrap();
                serve(&mut sock, &msgs, &ids)
            }));
        }
        let (msgs, bytes) =
            replay(&s, &addrs, &ids, &mut Pacer::new(None), &mut Vec::new()).unwrap();
        assert_eq!((msgs, bytes), (s.messages, s.bytes));
        for t in servers {
            t.join().unwrap().unwrap();
        }
    }

    /// The pipelined mix is the small one with requests in flight: the same operations, and
    /// it replays through a real server and client.
    #[test]
    fn a_pipelined_session_replays() {
        let s = Session::small_pipelined(40, 16).unwrap();
        assert_eq!(s.expected, Session::small(40).unwrap().expected);
        assert!(s.pipelined);
        assert!(matches!(
            s.steps[..3],
            [Step::Open(0), Step::Send(0, 0), Step::Send(0, 1)]
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let msgs = s.conns[0].clone();
        let server = thread::spawn(move || {
            let ids = AtomicI32::new(1 << 20);
            let (mut sock, _) = l.accept().unwrap();
            serve(&mut sock, &msgs, &ids)
        });
        let addrs = vec![format!("unix:{}", path.display())];
        let ids = AtomicI32::new(1);
        let (msgs, bytes) =
            replay(&s, &addrs, &ids, &mut Pacer::new(None), &mut Vec::new()).unwrap();
        assert_eq!((msgs, bytes), (s.messages, s.bytes));
        server.join().unwrap().unwrap();
    }

    /// Two replays of a session with cursors use cursor ids of their own, and each replay's
    /// getMores carry the id its find's reply gave (what mongowatch ties them by).
    #[test]
    fn each_replay_gets_fresh_cursor_ids() {
        let s = Session::large(2, 2, 4096).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let addrs = vec![format!("unix:{}", path.display())];
        let msgs = s.conns[0].clone();
        let server = thread::spawn(move || {
            let ids = AtomicI32::new(1 << 20);
            // A recording server: what each replay's client sent and was sent.
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (sock, _) = l.accept().unwrap();
                let mut tap = Tap {
                    inner: sock,
                    read: Vec::new(),
                    written: Vec::new(),
                };
                serve(&mut tap, &msgs, &ids).unwrap();
                seen.push((tap.read, tap.written));
            }
            seen
        });
        let ids = AtomicI32::new(1);
        for _ in 0..2 {
            replay(&s, &addrs, &ids, &mut Pacer::new(None), &mut Vec::new()).unwrap();
        }
        let seen = server.join().unwrap();
        let ids_in = |bytes: &[u8], from_client: bool| -> Vec<i64> {
            let mut out = Vec::new();
            let mut p = 0;
            while p + 4 <= bytes.len() {
                let n = le_i32(bytes, p) as usize;
                let w = WireMessage {
                    bytes: bytes[p..p + n].to_vec(),
                    first_byte_ns: 0,
                    last_byte_ns: 0,
                };
                out.extend(cursor_ids(&w.body().unwrap(), from_client));
                p += n;
            }
            out
        };
        let mut all = HashSet::new();
        for (read, written) in &seen {
            let given = ids_in(written, false);
            let sent = ids_in(read, true);
            // Two cursors, each given in its find's and first getMore's reply.
            assert_eq!(given.len(), 4, "{given:?}");
            assert_eq!(given[0], given[1]);
            assert_eq!(given[2], given[3]);
            assert_ne!(given[0], given[2]);
            // The getMores send what they were given.
            assert_eq!(sent, vec![given[0], given[0], given[2], given[2]]);
            all.extend([given[0], given[2]]);
        }
        assert_eq!(all.len(), 4, "no cursor id shared between replays: {all:?}");
    }

    /// A socket that keeps what passes through it.
    struct Tap {
        inner: std::os::unix::net::UnixStream,
        read: Vec<u8>,
        written: Vec<u8>,
    }

    impl Read for Tap {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(b)?;
            self.read.extend_from_slice(&b[..n]);
            Ok(n)
        }
    }

    impl Socket for Tap {}

    impl Write for Tap {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(b)?;
            self.written.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
}
