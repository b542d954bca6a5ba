//! One direction of one connection: a byte stream (chunks at offsets, with gaps) cut into
//! whole messages.
//!
//! States (Pixie's parse-state pattern, per byte position): **in sync** (the buffer starts at
//! a message start: frame it when complete, wait when not), **hunting** (the start is unknown:
//! capture began mid-stream, or a gap or damage lost it; test each position with the strict
//! header check), **skipping** (the rest of a message of known length is unwanted: it was
//! damaged by a gap, or is larger than the buffer limit; sync is kept without buffering).
//!
//! A gap inside a message whose length is known costs only that message: the next one is
//! framed without hunting. Memory is the partial message at most (bounded by
//! [`StreamConfig::max_message`]); whole messages leave as zero-copy [`Bytes`] split off the
//! buffer.

use bytes::{Buf, Bytes, BytesMut};

use crate::wire::{
    frame::{check_in_sync, check_strict, le_i32, parse_header, Plausible, MAX_MESSAGE_SIZE},
    DropReason, Header, StreamStats,
};

/// One message as it crossed the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// The whole message, header included, byte for byte.
    pub bytes: Bytes,
    /// Timestamps (ns) of the chunks that carried its first and its last byte.
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    /// Position of its first byte in the direction's stream.
    pub offset: u64,
}

/// What a [`DirectionStream`] reports, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    Frame(RawFrame),
    /// Bytes `[offset, offset + len)` were lost (an explicit gap or an offset jump).
    Gap {
        offset: u64,
        len: u64,
    },
    /// A message (or the part of it seen) was thrown away before decoding. `len`: bytes of it
    /// seen; `header`: when its 16 bytes were seen (a lost reply still names its request).
    Dropped {
        offset: u64,
        len: u64,
        reason: DropReason,
        header: Option<Header>,
    },
}

#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Messages longer than this are skipped (counted as oversize), never buffered.
    pub max_message: usize,
    /// Small messages are framed into shared blocks of this size (one allocation for many).
    pub block_size: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_message: MAX_MESSAGE_SIZE,
            block_size: 16 * 1024,
        }
    }
}

/// Where the buffer stands against message boundaries.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Framing {
    /// The buffer starts at a message start (or is empty and the next byte is one).
    InSync,
    /// Looking for a plausible header.
    Hunting,
    /// Discarding this many more bytes of an unwanted message, then in sync.
    Skip(u64),
}

pub struct DirectionStream {
    cfg: StreamConfig,
    /// Stream position of the next byte expected (None before the first push).
    expected: Option<u64>,
    buf: BytesMut,
    /// Stream position of `buf[0]`.
    buf_offset: u64,
    /// Timestamp of the chunk that carried `buf[0]`.
    buf_first_ts: u64,
    /// During a push: how many bytes of `buf` came from earlier chunks.
    old_len: usize,
    mode: Framing,
    /// Hunting since the stream began (finding the first header there is not a resync).
    at_start: bool,
    last_ts: u64,
    stats: StreamStats,
}

impl DirectionStream {
    pub fn new(cfg: StreamConfig) -> Self {
        Self {
            cfg,
            expected: None,
            buf: BytesMut::new(),
            buf_offset: 0,
            buf_first_ts: 0,
            old_len: 0,
            mode: Framing::Hunting,
            at_start: true,
            last_ts: 0,
            stats: StreamStats::default(),
        }
    }

    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Timestamp of the last chunk pushed (0 before any).
    pub fn last_ts_ns(&self) -> u64 {
        self.last_ts
    }

    /// Bytes held for a message not yet complete.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Position of the next byte expected, once known.
    pub fn expected_offset(&self) -> Option<u64> {
        self.expected
    }

    /// Takes the bytes at stream position `offset`. A jump forward is a gap; bytes already
    /// seen (offset below the expected one) are trimmed.
    pub fn push(
        &mut self,
        offset: u64,
        data: &[u8],
        ts_ns: u64,
        out: &mut impl FnMut(StreamEvent),
    ) {
        self.last_ts = self.last_ts.max(ts_ns);
        let expected = *self.expected.get_or_insert(offset);
        let mut data = data;
        let mut offset = offset;
        // Positions are u64: bytes past the last one come from a corrupt record (no stream
        // carries 2^64 bytes). They are counted as lost, never placed.
        let room = u64::MAX - offset;
        if data.len() as u64 > room {
            self.stats.gaps += 1;
            self.stats.gap_bytes = self
                .stats
                .gap_bytes
                .saturating_add(data.len() as u64 - room);
            data = &data[..room as usize];
        }
        if offset > expected {
            self.lose(expected, offset - expected, out);
        } else if offset < expected {
            let dup = expected - offset;
            if dup >= data.len() as u64 {
                self.stats.overlap_bytes += data.len() as u64;
                return;
            }
            self.stats.overlap_bytes += dup;
            data = &data[dup as usize..];
            offset = expected;
        }
        self.expected = Some(offset.saturating_add(data.len() as u64));
        self.stats.bytes_in += data.len() as u64;

        if let Framing::Skip(remaining) = self.mode {
            let n = remaining.min(data.len() as u64);
            data = &data[n as usize..];
            offset += n;
            if remaining == n {
                self.mode = Framing::InSync;
            } else {
                self.mode = Framing::Skip(remaining - n);
            }
        }
        if data.is_empty() {
            return;
        }
        if self.buf.is_empty() {
            self.buf_offset = offset;
            self.buf_first_ts = ts_ns;
            self.old_len = 0;
            if self.buf.capacity() < data.len() {
                self.buf = BytesMut::with_capacity(self.cfg.block_size.max(data.len()));
            }
        } else {
            self.old_len = self.buf.len();
        }
        self.buf.extend_from_slice(data);
        self.process(ts_ns, out);
    }

    /// Bytes `[offset, offset + len)` were lost (the capture path says so).
    pub fn gap(&mut self, offset: u64, len: u64, out: &mut impl FnMut(StreamEvent)) {
        let expected = *self.expected.get_or_insert(offset);
        let end = offset.saturating_add(len);
        if end <= expected {
            return;
        }
        // An offset beyond the expected one adds the bytes between: one gap from `expected`.
        self.lose(expected, end - expected, out);
    }

    /// Drops a half-received message (the connection closed or went idle) and frees the
    /// buffer.
    pub fn flush(&mut self, out: &mut impl FnMut(StreamEvent)) {
        // In sync, or hunting with a candidate header waiting for more bytes: either way the
        // buffer starts with what looks like a message.
        if !self.buf.is_empty() {
            self.drop_partial(DropReason::Incomplete, out);
        }
        self.buf = BytesMut::new();
    }

    /// Memory the buffer holds (its capacity: what was asked of the allocator), the figure a
    /// memory budget charges.
    pub fn held(&self) -> usize {
        self.buf.capacity()
    }

    /// Gives the buffer back to keep within a memory budget: a half-received message is
    /// dropped ([`DropReason::MemoryBudget`]) and, its length being known, the rest of it is
    /// skipped so the stream stays in sync; bytes held while hunting are let go. Returns the
    /// memory freed.
    pub fn shed(&mut self, out: &mut impl FnMut(StreamEvent)) -> usize {
        let held = self.held();
        if !self.buf.is_empty() {
            match self.mode {
                Framing::InSync => {
                    let have = self.buf.len() as u64;
                    let msg_len = le_i32(&self.buf, 0)
                        .and_then(|l| u64::try_from(l).ok())
                        .filter(|&l| {
                            (Header::LENGTH as u64..=MAX_MESSAGE_SIZE as u64).contains(&l)
                        });
                    self.drop_partial(DropReason::MemoryBudget, out);
                    self.mode = match msg_len {
                        Some(l) if l > have => Framing::Skip(l - have),
                        _ => self.hunt(),
                    };
                }
                Framing::Hunting => {
                    self.stats.resync_skipped_bytes += self.buf.len() as u64;
                    self.buf.clear();
                }
                // Skipping holds nothing.
                Framing::Skip(_) => self.buf.clear(),
            }
        }
        self.buf = BytesMut::new();
        held
    }

    /// Lets go of buffer memory that holds nothing: all of it when nothing is buffered (idle
    /// connections), and the unused part of a block that holds a few bytes (a socket that sent
    /// one byte keeps no 16 KiB block: thousands of such sockets are common).
    pub fn shrink(&mut self) {
        let len = self.buf.len();
        if len == 0 {
            self.buf = BytesMut::new();
        } else if len < self.cfg.block_size / 4 && self.buf.capacity() > 2 * len {
            self.buf = BytesMut::from(&self.buf[..]);
        }
    }

    /// Loss of `[start, start + len)`, `start` being the expected position.
    fn lose(&mut self, start: u64, len: u64, out: &mut impl FnMut(StreamEvent)) {
        self.stats.gaps += 1;
        // With the bytes cut off past the last position, the sum can pass 2^64.
        self.stats.gap_bytes = self.stats.gap_bytes.saturating_add(len);
        out(StreamEvent::Gap { offset: start, len });
        self.expected = Some(start.saturating_add(len));
        match self.mode {
            Framing::Skip(remaining) => {
                self.mode = match len.cmp(&remaining) {
                    std::cmp::Ordering::Less => Framing::Skip(remaining - len),
                    std::cmp::Ordering::Equal => Framing::InSync,
                    std::cmp::Ordering::Greater => self.hunt(),
                }
            }
            Framing::InSync if self.buf.is_empty() => self.mode = self.hunt(),
            Framing::InSync => {
                // A message started and the gap fell inside it: drop it, and if its length is
                // known, skip to its end and stay in sync.
                let have = self.buf.len() as u64;
                let msg_len = le_i32(&self.buf, 0)
                    .and_then(|l| u64::try_from(l).ok())
                    .filter(|&l| (Header::LENGTH as u64..=MAX_MESSAGE_SIZE as u64).contains(&l));
                self.drop_partial(DropReason::Gap, out);
                self.mode = match msg_len {
                    Some(l) if l > have => {
                        let rest = l - have;
                        match len.cmp(&rest) {
                            std::cmp::Ordering::Less => Framing::Skip(rest - len),
                            std::cmp::Ordering::Equal => Framing::InSync,
                            std::cmp::Ordering::Greater => self.hunt(),
                        }
                    }
                    _ => self.hunt(),
                };
            }
            Framing::Hunting => {
                self.stats.resync_skipped_bytes += self.buf.len() as u64;
                self.buf.clear();
            }
        }
    }

    fn hunt(&mut self) -> Framing {
        self.at_start = false;
        Framing::Hunting
    }

    /// Drops the partial message in the buffer (in sync), reporting it.
    fn drop_partial(&mut self, reason: DropReason, out: &mut impl FnMut(StreamEvent)) {
        let have = self.buf.len();
        self.stats.dropped.bump(reason);
        self.stats.dropped_bytes += have as u64;
        out(StreamEvent::Dropped {
            offset: self.buf_offset,
            len: have as u64,
            reason,
            header: parse_header(&self.buf),
        });
        self.buf.clear();
    }

    /// `n` bytes left the front of the buffer.
    fn consumed(&mut self, n: usize, ts_ns: u64) {
        self.buf_offset += n as u64;
        if n >= self.old_len {
            self.old_len = 0;
            self.buf_first_ts = ts_ns;
        } else {
            self.old_len -= n;
        }
    }

    /// Frames what the buffer holds.
    fn process(&mut self, ts_ns: u64, out: &mut impl FnMut(StreamEvent)) {
        loop {
            match self.mode {
                Framing::Skip(_) => return,
                Framing::InSync => match check_in_sync(&self.buf) {
                    Plausible::NeedMore => return,
                    Plausible::No => {
                        self.stats.dropped.bump(DropReason::BadHeader);
                        self.stats.dropped_bytes += 1;
                        out(StreamEvent::Dropped {
                            offset: self.buf_offset,
                            len: 1,
                            reason: DropReason::BadHeader,
                            header: parse_header(&self.buf),
                        });
                        self.buf.advance(1);
                        self.consumed(1, ts_ns);
                        self.mode = self.hunt();
                    }
                    Plausible::Yes(len) if len > self.cfg.max_message => {
                        let have = self.buf.len().min(len);
                        self.stats.dropped.bump(DropReason::Oversize);
                        self.stats.dropped_bytes += len as u64;
                        out(StreamEvent::Dropped {
                            offset: self.buf_offset,
                            len: len as u64,
                            reason: DropReason::Oversize,
                            header: parse_header(&self.buf),
                        });
                        self.buf.advance(have);
                        self.consumed(have, ts_ns);
                        if have < len {
                            self.mode = Framing::Skip((len - have) as u64);
                            return;
                        }
                    }
                    Plausible::Yes(len) => {
                        if self.buf.len() < len {
                            // Grow geometrically up to the message's end, not to its declared
                            // length at once: a header alone must not claim up to 48 MB.
                            let need = len - self.buf.len();
                            self.buf
                                .reserve(need.min(self.buf.len().max(self.cfg.block_size)));
                            return;
                        }
                        let bytes = self.buf.split_to(len).freeze();
                        self.stats.messages += 1;
                        self.stats.bytes += len as u64;
                        out(StreamEvent::Frame(RawFrame {
                            bytes,
                            first_ts_ns: self.buf_first_ts,
                            last_ts_ns: ts_ns,
                            offset: self.buf_offset,
                        }));
                        self.consumed(len, ts_ns);
                    }
                },
                Framing::Hunting => {
                    let mut i = 0;
                    let found = loop {
                        match self.buf.get(i..).map(check_strict) {
                            None => break false,
                            Some(Plausible::Yes(_)) => break true,
                            Some(Plausible::NeedMore) => break false,
                            Some(Plausible::No) => i += 1,
                        }
                    };
                    if i > 0 {
                        self.stats.resync_skipped_bytes += i as u64;
                        self.buf.advance(i);
                        self.consumed(i, ts_ns);
                    }
                    if !found {
                        return;
                    }
                    if !self.at_start || i > 0 {
                        self.stats.resyncs += 1;
                    }
                    self.at_start = false;
                    self.mode = Framing::InSync;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (kernel_events): a record whose offset is near the end of the u64
    /// range overflowed the buffer's position while hunting.
    #[test]
    fn bytes_past_the_last_stream_position_are_counted_lost() {
        let mut s = DirectionStream::new(StreamConfig::default());
        let mut events = Vec::new();
        s.push(u64::MAX - 4, &[0u8; 20], 1, &mut |e| events.push(e));
        assert_eq!(s.stats().bytes_in, 4);
        assert_eq!((s.stats().gaps, s.stats().gap_bytes), (1, 16));
        assert_eq!(s.expected_offset(), Some(u64::MAX));
        s.push(u64::MAX, &[0u8; 8], 2, &mut |e| events.push(e));
        assert_eq!((s.stats().gaps, s.stats().gap_bytes), (2, 24));
    }

    /// Found by fuzzing too: bytes cut off past the end, then the jump to them, counted more
    /// than 2^64 gap bytes.
    #[test]
    fn a_jump_to_the_end_of_the_positions_saturates_the_gap_bytes() {
        let mut s = DirectionStream::new(StreamConfig::default());
        let mut events = Vec::new();
        s.push(0, &[0u8; 10], 1, &mut |e| events.push(e));
        s.push(u64::MAX - 4, &[0u8; 20], 2, &mut |e| events.push(e));
        assert_eq!((s.stats().gaps, s.stats().gap_bytes), (2, u64::MAX));
        assert_eq!(s.stats().bytes_in, 14);
    }
}
