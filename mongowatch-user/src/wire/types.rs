//! The message model: what one decoded MongoDB wire message is.
//!
//! This is the boundary between the wire layer (which builds these from bytes) and the ops
//! layer (which reads commands and replies out of them). BSON stays raw: a [`Doc`] is a
//! validated slice of shared bytes, so a large reply is never copied or turned into owned
//! documents just to count it.

use bson::RawDocument;
use bytes::Bytes;

/// Standard message header, as on the wire (all little-endian int32).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Total message length, header included.
    pub length: i32,
    pub request_id: i32,
    /// 0 for a request; the requestID answered for a reply.
    pub response_to: i32,
    pub op_code: i32,
}

impl Header {
    pub const LENGTH: usize = 16;
}

/// Opcodes this decoder knows.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum OpCode {
    Reply = 1,
    Update = 2001,
    Insert = 2002,
    Query = 2004,
    GetMore = 2005,
    Delete = 2006,
    KillCursors = 2007,
    Compressed = 2012,
    Msg = 2013,
}

impl OpCode {
    pub fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            1 => Self::Reply,
            2001 => Self::Update,
            2002 => Self::Insert,
            2004 => Self::Query,
            2005 => Self::GetMore,
            2006 => Self::Delete,
            2007 => Self::KillCursors,
            2012 => Self::Compressed,
            2013 => Self::Msg,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Reply => "OP_REPLY",
            Self::Update => "OP_UPDATE",
            Self::Insert => "OP_INSERT",
            Self::Query => "OP_QUERY",
            Self::GetMore => "OP_GET_MORE",
            Self::Delete => "OP_DELETE",
            Self::KillCursors => "OP_KILL_CURSORS",
            Self::Compressed => "OP_COMPRESSED",
            Self::Msg => "OP_MSG",
        }
    }
}

/// OP_COMPRESSED compressor ids.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Compressor {
    Noop = 0,
    Snappy = 1,
    Zlib = 2,
    Zstd = 3,
}

impl Compressor {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Noop,
            1 => Self::Snappy,
            2 => Self::Zlib,
            3 => Self::Zstd,
            _ => return None,
        })
    }

    /// The name used in the handshake's `compression` array and in audit records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Noop => "noop",
            Self::Snappy => "snappy",
            Self::Zlib => "zlib",
            Self::Zstd => "zstd",
        }
    }
}

/// A BSON document held as shared bytes: cheap to clone, never copied.
/// The constructor checks the length prefix and the terminating NUL; fields are read lazily.
#[derive(Clone, PartialEq, Eq)]
pub struct Doc(Bytes);

impl Doc {
    /// Takes `bytes` as one whole BSON document.
    pub fn new(bytes: Bytes) -> Result<Self, bson::error::Error> {
        RawDocument::from_bytes(&bytes)?;
        Ok(Self(bytes))
    }

    pub fn raw(&self) -> &RawDocument {
        // Checked in `new`; the bytes are immutable.
        RawDocument::from_bytes(&self.0).expect("validated in Doc::new")
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() <= 5
    }
}

impl From<bson::RawDocumentBuf> for Doc {
    fn from(d: bson::RawDocumentBuf) -> Self {
        Self(Bytes::from(d.into_bytes()))
    }
}

impl std::fmt::Debug for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Doc({:?})", self.raw())
    }
}

/// OP_MSG flag bits.
pub mod msg_flags {
    pub const CHECKSUM_PRESENT: u32 = 1 << 0;
    pub const MORE_TO_COME: u32 = 1 << 1;
    pub const EXHAUST_ALLOWED: u32 = 1 << 16;
    /// Bits a receiver must understand: an unknown one among these is an error.
    pub const REQUIRED_MASK: u32 = 0xffff;
    pub const KNOWN: u32 = CHECKSUM_PRESENT | MORE_TO_COME | EXHAUST_ALLOWED;
}

/// OP_REPLY responseFlags (bit flags, not an enum).
pub mod reply_flags {
    pub const CURSOR_NOT_FOUND: i32 = 1 << 0;
    pub const QUERY_FAILURE: i32 = 1 << 1;
    pub const SHARD_CONFIG_STALE: i32 = 1 << 2;
    pub const AWAIT_CAPABLE: i32 = 1 << 3;
}

/// A kind 1 section: a named sequence of documents (`documents`, `updates`, `ops`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    pub identifier: String,
    pub documents: Vec<Doc>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpMsg {
    pub flags: u32,
    /// The kind 0 section: the command or the reply.
    pub body: Doc,
    /// Kind 1 sections, in wire order.
    pub sequences: Vec<Sequence>,
    /// The CRC-32C trailer, when checksumPresent (verified by the decoder).
    pub checksum: Option<u32>,
}

impl OpMsg {
    pub fn more_to_come(&self) -> bool {
        self.flags & msg_flags::MORE_TO_COME != 0
    }
    pub fn exhaust_allowed(&self) -> bool {
        self.flags & msg_flags::EXHAUST_ALLOWED != 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpReply {
    pub flags: i32,
    pub cursor_id: i64,
    pub starting_from: i32,
    pub number_returned: i32,
    pub documents: Vec<Doc>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpQuery {
    pub flags: i32,
    pub full_collection_name: String,
    pub number_to_skip: i32,
    pub number_to_return: i32,
    pub query: Doc,
    pub return_fields_selector: Option<Doc>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpGetMore {
    pub full_collection_name: String,
    pub number_to_return: i32,
    pub cursor_id: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpKillCursors {
    pub cursor_ids: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpInsert {
    pub flags: i32,
    pub full_collection_name: String,
    pub documents: Vec<Doc>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpUpdate {
    pub full_collection_name: String,
    pub flags: i32,
    pub selector: Doc,
    pub update: Doc,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpDelete {
    pub full_collection_name: String,
    pub flags: i32,
    pub selector: Doc,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Msg(OpMsg),
    Reply(OpReply),
    Query(OpQuery),
    GetMore(OpGetMore),
    KillCursors(OpKillCursors),
    Insert(OpInsert),
    Update(OpUpdate),
    Delete(OpDelete),
}

/// One decoded message. For OP_COMPRESSED, `header` is the header of the message as it would be
/// uncompressed (`op_code` = originalOpcode, `length` = 16 + uncompressedSize) and `compressor`
/// says how it travelled.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub header: Header,
    /// Bytes on the wire (the compressed frame's length when compressed).
    pub wire_len: u32,
    pub compressor: Option<Compressor>,
    pub body: Body,
}

impl Message {
    /// An uncompressed OP_MSG with no flags, no sequences and no checksum (tests, benches and
    /// fixtures build on it; `encode` turns it into wire bytes).
    pub fn op_msg(request_id: i32, response_to: i32, body: Doc) -> Self {
        Self {
            header: Header {
                length: 0,
                request_id,
                response_to,
                op_code: OpCode::Msg as i32,
            },
            wire_len: 0,
            compressor: None,
            body: Body::Msg(OpMsg {
                flags: 0,
                body,
                sequences: Vec::new(),
                checksum: None,
            }),
        }
    }

    /// A request has responseTo == 0; a reply answers a requestID. OP_REPLY is always a reply.
    pub fn is_reply(&self) -> bool {
        self.header.response_to != 0 || matches!(self.body, Body::Reply(_))
    }
}

/// A message with the time its last byte crossed the socket (ns since the Unix epoch).
#[derive(Clone, Debug)]
pub struct Timed {
    pub ts_ns: u64,
    /// Time its first byte crossed the socket.
    pub first_ts_ns: u64,
    pub msg: Message,
}

/// What pairing makes of one connection's messages (see `wire::pair`).
#[derive(Clone, Debug)]
pub enum Exchange {
    /// A request and one reply to it. With exhaust (`moreToCome` replies) the same request is
    /// handed on again with each further reply; `exhaust_index` counts them from 0.
    RoundTrip {
        request: std::sync::Arc<Timed>,
        reply: Timed,
        exhaust_index: u32,
    },
    /// A request sent with `moreToCome`: no reply will come.
    OneWay { request: Timed },
    /// A request whose reply never came (the connection closed, or a gap swallowed it).
    Unanswered { request: Timed },
    /// A reply whose request was not seen (capture started mid-flight, or a gap).
    OrphanReply { reply: Timed },
}
