//! One connection: its two directions, decoding, and pairing. This is what the capture path
//! feeds, one call per kernel event, in capture order.

use super::direction::{DirectionStream, RawFrame, StreamConfig, StreamEvent};
use crate::{
    capture::events::Direction,
    wire::{
        decode, frame::parse_header, DecodeError, DecodeErrorCounts, DropReason, Exchange, Header,
        PairConfig, Pairer, Timed, WireStats,
    },
};

#[derive(Clone, Debug)]
pub struct ConnConfig {
    pub stream: StreamConfig,
    pub pair: PairConfig,
    /// A connection with no event for this long is closed by [`Connection::expire`].
    pub idle_timeout_ns: u64,
    /// The bytes the stream buffers of all connections may hold together: the connection
    /// table's [`MemoryBudget`](super::MemoryBudget).
    pub memory_budget: usize,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            stream: StreamConfig::default(),
            pair: PairConfig::default(),
            idle_timeout_ns: 10 * 60 * 1_000_000_000,
            memory_budget: super::DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// What a [`Connection`] reports. Borrowed parts live for the callback only: clone what you
/// keep (a `RawFrame` or `Timed` clone shares the bytes).
#[derive(Debug)]
pub enum ConnEvent<'a> {
    /// Every framed message, before any [`ConnEvent::Exchange`] it takes part in.
    Frame {
        dir: Direction,
        frame: &'a RawFrame,
        message: Result<&'a Timed, &'a DecodeError>,
    },
    /// Bytes lost in capture.
    Gap {
        dir: Direction,
        offset: u64,
        len: u64,
    },
    /// A message thrown away before decoding (see [`StreamEvent::Dropped`]).
    Dropped {
        dir: Direction,
        offset: u64,
        len: u64,
        reason: DropReason,
        header: Option<Header>,
    },
    /// Pairing output.
    Exchange(Exchange),
}

/// Decode and pairing state shared by both directions.
struct Core {
    pairer: Pairer,
    decoded: u64,
    decoded_compressed: u64,
    decode_errors: DecodeErrorCounts,
}

impl Core {
    fn on_stream<F: FnMut(ConnEvent<'_>)>(&mut self, dir: Direction, ev: StreamEvent, out: &mut F) {
        match ev {
            StreamEvent::Frame(frame) => match decode(&frame.bytes) {
                Ok(msg) => {
                    self.decoded += 1;
                    if msg.compressor.is_some() {
                        self.decoded_compressed += 1;
                    }
                    let t = Timed {
                        ts_ns: frame.last_ts_ns,
                        first_ts_ns: frame.first_ts_ns,
                        msg,
                    };
                    out(ConnEvent::Frame {
                        dir,
                        frame: &frame,
                        message: Ok(&t),
                    });
                    self.pairer.message(t, &mut |x| out(ConnEvent::Exchange(x)));
                }
                Err(e) => {
                    self.decode_errors.bump(e.kind());
                    out(ConnEvent::Frame {
                        dir,
                        frame: &frame,
                        message: Err(&e),
                    });
                    self.lost(parse_header(&frame.bytes), out);
                }
            },
            StreamEvent::Gap { offset, len } => out(ConnEvent::Gap { dir, offset, len }),
            StreamEvent::Dropped {
                offset,
                len,
                reason,
                header,
            } => {
                out(ConnEvent::Dropped {
                    dir,
                    offset,
                    len,
                    reason,
                    header,
                });
                self.lost(header, out);
            }
        }
    }

    /// A message was lost: if it was a reply, its request will get no other.
    fn lost<F: FnMut(ConnEvent<'_>)>(&mut self, header: Option<Header>, out: &mut F) {
        if let Some(h) = header.filter(|h| h.response_to != 0) {
            self.pairer
                .reply_lost(h.response_to, &mut |x| out(ConnEvent::Exchange(x)));
        }
    }
}

/// Both directions of one connection, decoded and paired.
pub struct Connection {
    cfg: ConnConfig,
    egress: DirectionStream,
    ingress: DirectionStream,
    core: Core,
    last_ts: u64,
    closed: bool,
}

impl Connection {
    pub fn new(cfg: ConnConfig) -> Self {
        Self {
            egress: DirectionStream::new(cfg.stream.clone()),
            ingress: DirectionStream::new(cfg.stream.clone()),
            core: Core {
                pairer: Pairer::new(cfg.pair.clone()),
                decoded: 0,
                decoded_compressed: 0,
                decode_errors: DecodeErrorCounts::default(),
            },
            cfg,
            last_ts: 0,
            closed: false,
        }
    }

    /// Bytes `data` at position `offset` of direction `dir`'s stream, captured at `ts_ns`
    /// (ns since the Unix epoch). Reports frames, gaps, drops and exchanges through `out`.
    pub fn push<F: FnMut(ConnEvent<'_>)>(
        &mut self,
        dir: Direction,
        offset: u64,
        data: &[u8],
        ts_ns: u64,
        out: &mut F,
    ) {
        let (stream, core) = self.direction(dir, ts_ns);
        stream.push(offset, data, ts_ns, &mut |ev| core.on_stream(dir, ev, out));
    }

    /// Bytes `[offset, offset + len)` of direction `dir` were lost (the capture path knows:
    /// a truncated event, a dropped ring entry).
    pub fn gap<F: FnMut(ConnEvent<'_>)>(
        &mut self,
        dir: Direction,
        offset: u64,
        len: u64,
        ts_ns: u64,
        out: &mut F,
    ) {
        let (stream, core) = self.direction(dir, ts_ns);
        stream.gap(offset, len, &mut |ev| core.on_stream(dir, ev, out));
    }

    /// Notes activity at `ts_ns` without bytes (the connection was opened): a connection is
    /// idle from its opening, not from the epoch.
    pub fn touch(&mut self, ts_ns: u64) {
        self.last_ts = self.last_ts.max(ts_ns);
    }

    /// Notes the time and splits the borrow: one direction's stream, and the shared decoder.
    fn direction(&mut self, dir: Direction, ts_ns: u64) -> (&mut DirectionStream, &mut Core) {
        self.last_ts = self.last_ts.max(ts_ns);
        let stream = match dir {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        };
        (stream, &mut self.core)
    }

    /// The connection ended: half-received messages are dropped (as incomplete) and every
    /// request still waiting becomes [`Exchange::Unanswered`]. Idempotent.
    pub fn close<F: FnMut(ConnEvent<'_>)>(&mut self, ts_ns: u64, out: &mut F) {
        self.last_ts = self.last_ts.max(ts_ns);
        if self.closed {
            return;
        }
        self.closed = true;
        let Self {
            egress,
            ingress,
            core,
            ..
        } = self;
        egress.flush(&mut |ev| core.on_stream(Direction::Egress, ev, out));
        ingress.flush(&mut |ev| core.on_stream(Direction::Ingress, ev, out));
        core.pairer.close(&mut |x| out(ConnEvent::Exchange(x)));
    }

    /// Call now and then with the current time: a connection idle for longer than
    /// `idle_timeout_ns` is closed (as by [`Connection::close`]) and `true` is returned, so
    /// the owner can drop it. An active one gives back buffer memory it does not use.
    pub fn expire<F: FnMut(ConnEvent<'_>)>(&mut self, now_ns: u64, out: &mut F) -> bool {
        if self.closed {
            return true;
        }
        if now_ns.saturating_sub(self.last_ts) >= self.cfg.idle_timeout_ns {
            self.close(now_ns, out);
            return true;
        }
        self.shrink();
        false
    }

    /// Gives back buffer memory neither direction uses (nothing is lost).
    pub fn shrink(&mut self) {
        self.egress.shrink();
        self.ingress.shrink();
    }

    /// Time (ns) of the last event seen.
    pub fn last_activity_ns(&self) -> u64 {
        self.last_ts
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Messages decoded so far (none: nothing on it has looked like MongoDB yet).
    pub fn decoded(&self) -> u64 {
        self.core.decoded
    }

    /// Requests waiting for a reply.
    pub fn outstanding(&self) -> usize {
        self.core.pairer.outstanding()
    }

    /// Bytes held for half-received messages, both directions.
    pub fn buffered(&self) -> usize {
        self.egress.buffered() + self.ingress.buffered()
    }

    /// Memory held by both directions' buffers (see [`DirectionStream::held`]).
    pub fn held(&self) -> usize {
        self.egress.held() + self.ingress.held()
    }

    /// Gives back both directions' buffers to keep within a memory budget: half-received
    /// messages are dropped as [`DropReason::MemoryBudget`] (a lost reply leaves its request
    /// unanswered, as any lost reply does); both streams stay in sync. Returns the memory
    /// freed.
    pub fn shed<F: FnMut(ConnEvent<'_>)>(&mut self, out: &mut F) -> usize {
        let Self {
            egress,
            ingress,
            core,
            ..
        } = self;
        egress.shed(&mut |ev| core.on_stream(Direction::Egress, ev, out))
            + ingress.shed(&mut |ev| core.on_stream(Direction::Ingress, ev, out))
    }

    /// Counters so far (both directions summed).
    pub fn stats(&self) -> WireStats {
        let mut stream = self.egress.stats().clone();
        stream.add(self.ingress.stats());
        WireStats {
            stream,
            decoded: self.core.decoded,
            decoded_compressed: self.core.decoded_compressed,
            decode_errors: self.core.decode_errors.clone(),
            pairing: self.core.pairer.stats().clone(),
        }
    }
}
