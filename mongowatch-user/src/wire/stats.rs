//! Counters for everything the stream and wire layers see, good and bad. One [`WireStats`] per
//! connection; the owner sums them with [`WireStats::add`] for a process-wide view.

use serde::Serialize;

use super::error::DecodeErrorKind;

/// Why framed (or partly framed) bytes were thrown away.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// A gap (lost capture events) fell inside the message.
    Gap,
    /// In sync, the next header was impossible (length out of range): the stream is hunted.
    BadHeader,
    /// Longer than the configured per-connection buffer: skipped without buffering.
    Oversize,
    /// The connection went idle (or closed) with a message half received.
    Incomplete,
    /// Its buffer was given back to keep the daemon within its memory budget.
    MemoryBudget,
}

/// Messages dropped before decoding, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropCounts {
    pub gap: u64,
    pub bad_header: u64,
    pub oversize: u64,
    pub incomplete: u64,
    pub memory_budget: u64,
}

impl DropCounts {
    pub fn bump(&mut self, reason: DropReason) {
        match reason {
            DropReason::Gap => self.gap += 1,
            DropReason::BadHeader => self.bad_header += 1,
            DropReason::Oversize => self.oversize += 1,
            DropReason::Incomplete => self.incomplete += 1,
            DropReason::MemoryBudget => self.memory_budget += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.gap + self.bad_header + self.oversize + self.incomplete + self.memory_budget
    }

    fn add(&mut self, o: &Self) {
        self.gap += o.gap;
        self.bad_header += o.bad_header;
        self.oversize += o.oversize;
        self.incomplete += o.incomplete;
        self.memory_budget += o.memory_budget;
    }
}

/// Frames that failed to decode, by [`DecodeErrorKind`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DecodeErrorCounts {
    pub bad_length: u64,
    pub unknown_opcode: u64,
    pub truncated: u64,
    pub trailing_bytes: u64,
    pub unknown_required_flags: u64,
    pub checksum_mismatch: u64,
    pub missing_body: u64,
    pub duplicate_body: u64,
    pub unknown_section_kind: u64,
    pub bad_sequence: u64,
    pub bad_cstring: u64,
    pub bad_bson: u64,
    pub count_mismatch: u64,
    pub unknown_compressor: u64,
    pub bad_original_opcode: u64,
    pub bad_uncompressed_size: u64,
    pub size_mismatch: u64,
    pub decompress: u64,
}

macro_rules! each_decode_counter {
    ($m:ident) => {
        $m!(
            BadLength bad_length,
            UnknownOpCode unknown_opcode,
            Truncated truncated,
            TrailingBytes trailing_bytes,
            UnknownRequiredFlags unknown_required_flags,
            ChecksumMismatch checksum_mismatch,
            MissingBody missing_body,
            DuplicateBody duplicate_body,
            UnknownSectionKind unknown_section_kind,
            BadSequence bad_sequence,
            BadCString bad_cstring,
            BadBson bad_bson,
            CountMismatch count_mismatch,
            UnknownCompressor unknown_compressor,
            BadOriginalOpCode bad_original_opcode,
            BadUncompressedSize bad_uncompressed_size,
            SizeMismatch size_mismatch,
            Decompress decompress
        )
    };
}

impl DecodeErrorCounts {
    pub fn bump(&mut self, kind: DecodeErrorKind) {
        macro_rules! bump {
            ($($k:ident $f:ident),*) => {
                match kind { $(DecodeErrorKind::$k => self.$f += 1,)* }
            };
        }
        each_decode_counter!(bump);
    }

    pub fn get(&self, kind: DecodeErrorKind) -> u64 {
        macro_rules! get {
            ($($k:ident $f:ident),*) => {
                match kind { $(DecodeErrorKind::$k => self.$f,)* }
            };
        }
        each_decode_counter!(get)
    }

    pub fn total(&self) -> u64 {
        macro_rules! total {
            ($($k:ident $f:ident),*) => { 0 $(+ self.$f)* };
        }
        each_decode_counter!(total)
    }

    fn add(&mut self, o: &Self) {
        macro_rules! add {
            ($($k:ident $f:ident),*) => { $(self.$f += o.$f;)* };
        }
        each_decode_counter!(add);
    }
}

/// Framing counters of one direction (summed over both in a connection's [`WireStats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StreamStats {
    /// Bytes handed to `push` (after trimming overlaps).
    pub bytes_in: u64,
    /// Messages framed (whole, as on the wire).
    pub messages: u64,
    /// Bytes in framed messages.
    pub bytes: u64,
    /// Gaps, explicit or implied by an offset jump, and the bytes they cover.
    pub gaps: u64,
    pub gap_bytes: u64,
    /// Bytes pushed again (offset below the expected one), trimmed.
    pub overlap_bytes: u64,
    /// Times a plausible header was found after hunting (stream start, gap, damage).
    pub resyncs: u64,
    /// Bytes skipped while hunting for a header.
    pub resync_skipped_bytes: u64,
    /// Messages thrown away before decoding, and their bytes (as far as they were seen).
    pub dropped: DropCounts,
    pub dropped_bytes: u64,
}

impl StreamStats {
    /// Sums another stream's counters; saturating, as a corrupt record can claim a gap of
    /// nearly 2^64 bytes.
    pub fn add(&mut self, o: &Self) {
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.messages = self.messages.saturating_add(o.messages);
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.gaps = self.gaps.saturating_add(o.gaps);
        self.gap_bytes = self.gap_bytes.saturating_add(o.gap_bytes);
        self.overlap_bytes = self.overlap_bytes.saturating_add(o.overlap_bytes);
        self.resyncs = self.resyncs.saturating_add(o.resyncs);
        self.resync_skipped_bytes = self
            .resync_skipped_bytes
            .saturating_add(o.resync_skipped_bytes);
        self.dropped.add(&o.dropped);
        self.dropped_bytes = self.dropped_bytes.saturating_add(o.dropped_bytes);
    }
}

/// Pairing counters (see `wire::pair`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PairStats {
    pub requests: u64,
    pub replies: u64,
    pub round_trips: u64,
    /// Replies after the first of an exhaust stream (each also counted in `round_trips`).
    pub exhaust_replies: u64,
    pub one_way: u64,
    /// Replies whose request was not seen.
    pub orphan_replies: u64,
    /// Requests given up: the sum of the four reasons below.
    pub unanswered: u64,
    /// ... because the connection closed or expired.
    pub unanswered_closed: u64,
    /// ... because a later request on the connection was answered (its reply was lost).
    pub unanswered_superseded: u64,
    /// ... because a gap or damage dropped a reply answering it.
    pub unanswered_reply_lost: u64,
    /// ... because the outstanding map was full (the oldest goes).
    pub unanswered_evicted: u64,
    /// A requestID reused while still outstanding (the older request is given up as evicted).
    pub duplicate_request_ids: u64,
    /// Exhaust replies answering the stream's original requestID rather than the previous
    /// reply's (a server deviating from the spec; paired anyway).
    pub exhaust_original_response_to: u64,
    /// Exhaust streams cut short (closed, superseded, reply lost): answered at least once, so
    /// not `unanswered`.
    pub exhaust_open_at_close: u64,
}

impl PairStats {
    pub fn add(&mut self, o: &Self) {
        self.requests += o.requests;
        self.replies += o.replies;
        self.round_trips += o.round_trips;
        self.exhaust_replies += o.exhaust_replies;
        self.one_way += o.one_way;
        self.orphan_replies += o.orphan_replies;
        self.unanswered += o.unanswered;
        self.unanswered_closed += o.unanswered_closed;
        self.unanswered_superseded += o.unanswered_superseded;
        self.unanswered_reply_lost += o.unanswered_reply_lost;
        self.unanswered_evicted += o.unanswered_evicted;
        self.duplicate_request_ids += o.duplicate_request_ids;
        self.exhaust_original_response_to += o.exhaust_original_response_to;
        self.exhaust_open_at_close += o.exhaust_open_at_close;
    }
}

/// Everything counted for one connection (or, summed, for many).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WireStats {
    /// Framing, both directions together.
    pub stream: StreamStats,
    /// Messages decoded, and by compressor when they travelled compressed.
    pub decoded: u64,
    pub decoded_compressed: u64,
    pub decode_errors: DecodeErrorCounts,
    pub pairing: PairStats,
}

impl WireStats {
    pub fn add(&mut self, o: &Self) {
        self.stream.add(&o.stream);
        self.decoded += o.decoded;
        self.decoded_compressed += o.decoded_compressed;
        self.decode_errors.add(&o.decode_errors);
        self.pairing.add(&o.pairing);
    }
}
