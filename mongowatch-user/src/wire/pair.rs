//! Pairing: replies to requests by responseTo, role-agnostic (a request is any message with
//! responseTo == 0, whichever way it travels; OP_REPLY is always a reply).
//!
//! - A request with `moreToCome` (and the legacy writes OP_INSERT, OP_UPDATE, OP_DELETE,
//!   OP_KILL_CURSORS) gets no reply: [`Exchange::OneWay`] at once.
//! - Exhaust: a reply with `moreToCome` promises another reply, which answers *its* requestID;
//!   the original request is handed on with the next reply, `exhaust_index` counting from 0.
//!   Some servers (secantusd-rs 0.5) answer every reply of the stream to the original
//!   requestID instead: accepted too, and counted (`exhaust_original_response_to`).
//! - A connection carries one request at a time (moreToCome and exhaust aside), so when a
//!   reply answers a request, older requests still waiting lost their replies to a gap: they
//!   are given up as [`Exchange::Unanswered`] then rather than at close.
//! - The outstanding map is bounded; the oldest request goes when it is full.

use std::{collections::HashMap, sync::Arc};

use super::{
    stats::PairStats,
    types::{Body, Exchange, Timed},
};

#[derive(Clone, Debug)]
pub struct PairConfig {
    /// Requests awaiting a reply, at most (the oldest is given up beyond).
    pub max_outstanding: usize,
}

impl Default for PairConfig {
    fn default() -> Self {
        Self {
            max_outstanding: 64,
        }
    }
}

struct Pending {
    request: Arc<Timed>,
    exhaust_index: u32,
    seq: u64,
}

/// The pairing state of one connection.
pub struct Pairer {
    cfg: PairConfig,
    /// Keyed by the requestID the next reply will answer.
    outstanding: HashMap<i32, Pending>,
    /// Open exhaust streams: original requestID -> the key its next reply is expected under.
    exhaust_alias: HashMap<i32, i32>,
    seq: u64,
    stats: PairStats,
}

/// Does this request expect a reply?
fn expects_reply(t: &Timed) -> bool {
    match &t.msg.body {
        Body::Msg(m) => !m.more_to_come(),
        Body::Query(_) | Body::GetMore(_) => true,
        Body::Insert(_)
        | Body::Update(_)
        | Body::Delete(_)
        | Body::KillCursors(_)
        | Body::Reply(_) => false,
    }
}

fn unwrap_arc(a: Arc<Timed>) -> Timed {
    Arc::try_unwrap(a).unwrap_or_else(|a| (*a).clone())
}

impl Pairer {
    pub fn new(cfg: PairConfig) -> Self {
        Self {
            cfg,
            outstanding: HashMap::new(),
            exhaust_alias: HashMap::new(),
            seq: 0,
            stats: PairStats::default(),
        }
    }

    pub fn stats(&self) -> &PairStats {
        &self.stats
    }

    /// Requests waiting for a reply (exhaust streams included).
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Takes one decoded message (either direction, in capture order).
    pub fn message(&mut self, t: Timed, out: &mut impl FnMut(Exchange)) {
        if t.msg.is_reply() {
            self.reply(t, out);
        } else {
            self.request(t, out);
        }
    }

    fn request(&mut self, t: Timed, out: &mut impl FnMut(Exchange)) {
        self.stats.requests += 1;
        if !expects_reply(&t) {
            self.stats.one_way += 1;
            out(Exchange::OneWay { request: t });
            return;
        }
        if self.outstanding.len() >= self.cfg.max_outstanding.max(1) {
            if let Some((&id, _)) = self.outstanding.iter().min_by_key(|(_, p)| p.seq) {
                if let Some(p) = self.outstanding.remove(&id) {
                    self.give_up(p, Why::Evicted, out);
                }
            }
        }
        let id = t.msg.header.request_id;
        self.seq += 1;
        let pending = Pending {
            request: Arc::new(t),
            exhaust_index: 0,
            seq: self.seq,
        };
        if let Some(old) = self.outstanding.insert(id, pending) {
            self.stats.duplicate_request_ids += 1;
            self.give_up(old, Why::Evicted, out);
        }
    }

    fn reply(&mut self, t: Timed, out: &mut impl FnMut(Exchange)) {
        self.stats.replies += 1;
        let response_to = t.msg.header.response_to;
        let p = match self.outstanding.remove(&response_to) {
            Some(p) => p,
            None => match self
                .exhaust_alias
                .get(&response_to)
                .and_then(|key| self.outstanding.remove(key))
            {
                Some(p) => {
                    self.stats.exhaust_original_response_to += 1;
                    p
                }
                None => {
                    self.stats.orphan_replies += 1;
                    out(Exchange::OrphanReply { reply: t });
                    return;
                }
            },
        };
        let original_id = p.request.msg.header.request_id;
        self.exhaust_alias.remove(&original_id);
        self.supersede(p.seq, out);
        let more = matches!(&t.msg.body, Body::Msg(m) if m.more_to_come());
        let next_id = t.msg.header.request_id;
        self.stats.round_trips += 1;
        if p.exhaust_index > 0 {
            self.stats.exhaust_replies += 1;
        }
        if more {
            self.exhaust_alias.insert(original_id, next_id);
            self.seq += 1;
            self.outstanding.insert(
                next_id,
                Pending {
                    request: Arc::clone(&p.request),
                    exhaust_index: p.exhaust_index.saturating_add(1),
                    seq: self.seq,
                },
            );
        }
        out(Exchange::RoundTrip {
            request: p.request,
            reply: t,
            exhaust_index: p.exhaust_index,
        });
    }

    /// A reply answering `response_to` was seen but lost (gap, damage): its request will get
    /// no other.
    pub fn reply_lost(&mut self, response_to: i32, out: &mut impl FnMut(Exchange)) {
        if let Some(p) = self.outstanding.remove(&response_to) {
            self.give_up(p, Why::ReplyLost, out);
        }
    }

    /// The connection is gone: every request still waiting is unanswered.
    pub fn close(&mut self, out: &mut impl FnMut(Exchange)) {
        self.exhaust_alias.clear();
        let mut left: Vec<Pending> = self.outstanding.drain().map(|(_, p)| p).collect();
        left.sort_by_key(|p| p.seq);
        for p in left {
            self.give_up(p, Why::Closed, out);
        }
    }

    /// Gives up requests older than the one just answered.
    fn supersede(&mut self, seq: u64, out: &mut impl FnMut(Exchange)) {
        if self.outstanding.is_empty() {
            return;
        }
        let mut older: Vec<i32> = self
            .outstanding
            .iter()
            .filter(|(_, p)| p.seq < seq)
            .map(|(&id, _)| id)
            .collect();
        older.sort_by_key(|id| self.outstanding.get(id).map(|p| p.seq));
        for id in older {
            if let Some(p) = self.outstanding.remove(&id) {
                self.give_up(p, Why::Superseded, out);
            }
        }
    }

    fn give_up(&mut self, p: Pending, why: Why, out: &mut impl FnMut(Exchange)) {
        if p.exhaust_index > 0 {
            self.exhaust_alias.remove(&p.request.msg.header.request_id);
            // Answered at least once: an exhaust stream cut short, not an unanswered request.
            self.stats.exhaust_open_at_close += 1;
            return;
        }
        self.stats.unanswered += 1;
        match why {
            Why::Closed => self.stats.unanswered_closed += 1,
            Why::Superseded => self.stats.unanswered_superseded += 1,
            Why::ReplyLost => self.stats.unanswered_reply_lost += 1,
            Why::Evicted => self.stats.unanswered_evicted += 1,
        }
        out(Exchange::Unanswered {
            request: unwrap_arc(p.request),
        });
    }
}

#[derive(Copy, Clone)]
enum Why {
    Closed,
    Superseded,
    ReplyLost,
    Evicted,
}
