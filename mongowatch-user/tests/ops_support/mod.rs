//! Shared helpers of the ops tests: messages built straight from BSON, and an Auditor whose
//! outputs are in-memory buffers.
#![allow(dead_code)]

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use bson::RawDocumentBuf;
use mongowatch::{
    config::AuditConfig,
    ops::Input,
    pipeline::audit::Auditor,
    record::WatchIds,
    sink::Output,
    stream::ConnInfo,
    wire::{
        encode, msg_flags, Body, Compressor, Doc, Exchange, Header, Message, OpCode, OpReply,
        Sequence, Timed,
    },
};

/// Base time of the tests: 2026-11-24T15:29:00Z, in ns.
pub const T0: u64 = 1_795_534_140_000_000_000;
pub const MS: u64 = 1_000_000;
pub const SEC: u64 = 1_000_000_000;

pub fn conn(id: u64, pid: u32) -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        id,
        pid,
        comm: "python3".into(),
        client: format!("127.0.0.1:{}", 51000 + id).into(),
        server: "127.0.0.1:27017".into(),
        tls: false,
        side: Default::default(),
        origin: Default::default(),
    })
}

/// An OP_MSG request with kind 1 sequences; its length is what the wire encoder makes of it.
pub fn msg_seq(body: RawDocumentBuf, seqs: Vec<(&str, Vec<RawDocumentBuf>)>) -> Message {
    let mut m = Message::op_msg(7, 0, Doc::from(body));
    if let Body::Msg(b) = &mut m.body {
        b.sequences = seqs
            .into_iter()
            .map(|(id, docs)| Sequence {
                identifier: id.into(),
                documents: docs.into_iter().map(Doc::from).collect(),
            })
            .collect();
    }
    let length = encode(&m).len();
    m.header.length = length as i32;
    m.wire_len = length as u32;
    m
}

/// An OP_MSG request.
pub fn msg(body: RawDocumentBuf) -> Message {
    msg_seq(body, Vec::new())
}

/// An OP_MSG request with moreToCome (no reply will come).
pub fn msg_one_way(body: RawDocumentBuf, seqs: Vec<(&str, Vec<RawDocumentBuf>)>) -> Message {
    let mut m = msg_seq(body, seqs);
    if let Body::Msg(ref mut b) = m.body {
        b.flags |= msg_flags::MORE_TO_COME;
    }
    m
}

/// An OP_MSG reply.
pub fn reply(body: RawDocumentBuf) -> Message {
    let mut m = msg(body);
    m.header.response_to = 7;
    m
}

pub fn compressed(mut m: Message, c: Compressor) -> Message {
    m.compressor = Some(c);
    m.wire_len /= 2;
    m
}

/// An OP_REPLY with documents.
pub fn op_reply(cursor_id: i64, flags: i32, docs: Vec<RawDocumentBuf>) -> Message {
    let len = 16 + 20 + docs.iter().map(|d| d.as_bytes().len()).sum::<usize>();
    Message {
        header: Header {
            length: len as i32,
            request_id: 9,
            response_to: 7,
            op_code: OpCode::Reply as i32,
        },
        wire_len: len as u32,
        compressor: None,
        body: Body::Reply(OpReply {
            flags,
            cursor_id,
            starting_from: 0,
            number_returned: docs.len() as i32,
            documents: docs.into_iter().map(Doc::from).collect(),
        }),
    }
}

pub fn legacy(body: Body, op: OpCode, length: i32) -> Message {
    Message {
        header: Header {
            length,
            request_id: 7,
            response_to: 0,
            op_code: op as i32,
        },
        wire_len: length as u32,
        compressor: None,
        body,
    }
}

pub fn len_of(m: &Message) -> u64 {
    m.header.length as u64
}

/// A request sent at `t` (first byte) and a reply received at `t + rtt`.
pub fn round_trip(c: &Arc<ConnInfo>, req: Message, t: u64, rep: Message, rtt: u64) -> Input {
    Input::Exchange {
        conn: c.clone(),
        exchange: Exchange::RoundTrip {
            request: Arc::new(Timed {
                ts_ns: t + 10_000,
                first_ts_ns: t,
                msg: req,
            }),
            reply: Timed {
                ts_ns: t + rtt,
                first_ts_ns: t + rtt - 5_000,
                msg: rep,
            },
            exhaust_index: 0,
        },
    }
}

pub fn one_way(c: &Arc<ConnInfo>, req: Message, t: u64) -> Input {
    Input::Exchange {
        conn: c.clone(),
        exchange: Exchange::OneWay {
            request: Timed {
                ts_ns: t + 10_000,
                first_ts_ns: t,
                msg: req,
            },
        },
    }
}

pub fn unanswered(c: &Arc<ConnInfo>, req: Message, t: u64) -> Input {
    Input::Exchange {
        conn: c.clone(),
        exchange: Exchange::Unanswered {
            request: Timed {
                ts_ns: t + 10_000,
                first_ts_ns: t,
                msg: req,
            },
        },
    }
}

#[derive(Clone, Default)]
pub struct Buf(pub Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
    /// Lines parsed as JSON.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// An Auditor writing into buffers.
pub struct Harness {
    pub auditor: Auditor,
    pub out: Buf,
    pub rate: Buf,
}

impl Harness {
    pub fn new(cfg: AuditConfig) -> Self {
        let out = Buf::default();
        let rate = Buf::default();
        let auditor = Auditor::with_output(
            &cfg,
            Output::new(Box::new(out.clone()), true),
            Box::new(rate.clone()),
            WatchIds::new([0; 5]),
        )
        .unwrap();
        Self { auditor, out, rate }
    }

    pub fn default_config() -> Self {
        Self::new(AuditConfig::default())
    }

    pub fn feed(&mut self, input: Input) {
        self.auditor.handle(input).unwrap();
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        self.out.records()
    }
}
