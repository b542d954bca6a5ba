//! Just enough of the MongoDB wire protocol for the harness: build an OP_MSG, split a byte
//! stream into messages by the header's length, and read a message's command name. This is the
//! harness's own independent reading, deliberately not mongowatch's `wire` module.

use std::{
    borrow::Cow,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use bson::{doc, Document};

pub const OP_REPLY: i32 = 1;
pub const OP_QUERY: i32 = 2004;
pub const OP_COMPRESSED: i32 = 2012;
pub const OP_MSG: i32 = 2013;
/// OP_MSG flag: the sender will send another message without waiting for a request.
pub const MORE_TO_COME: u32 = 1 << 1;
pub const CHECKSUM_PRESENT: u32 = 1;

/// Commands that drivers send on their own, not as a user's operation: the connection
/// handshake and the server monitors' heartbeats (`hello`, legacy `isMaster`/`ismaster`).
pub const HANDSHAKE_COMMANDS: &[&str] = &["hello", "isMaster", "ismaster"];

/// One complete message, bytes exact, with when its first and last byte arrived
/// (CLOCK_MONOTONIC ns, see [`crate::monotonic_ns`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    pub bytes: Vec<u8>,
    pub first_byte_ns: u64,
    pub last_byte_ns: u64,
}

/// Little-endian integers at a byte offset of a message (the caller has checked the length).
pub(crate) fn le_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn set_i32(b: &mut [u8], at: usize, v: i32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn le_i64(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub(crate) fn set_i64(b: &mut [u8], at: usize, v: i64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

impl WireMessage {
    /// The header's messageLength (equal to `bytes.len()` for a message from [`split_messages`]).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn request_id(&self) -> i32 {
        le_i32(&self.bytes, 4)
    }

    pub fn response_to(&self) -> i32 {
        le_i32(&self.bytes, 8)
    }

    pub fn op_code(&self) -> i32 {
        le_i32(&self.bytes, 12)
    }

    /// For OP_COMPRESSED, the opcode of the wrapped message; otherwise the opcode.
    pub fn original_op_code(&self) -> i32 {
        if self.op_code() == OP_COMPRESSED && self.bytes.len() >= 20 {
            le_i32(&self.bytes, 16)
        } else {
            self.op_code()
        }
    }

    /// OP_COMPRESSED's compressorId (0 noop, 1 snappy, 2 zlib, 3 zstd).
    pub fn compressor_id(&self) -> Option<u8> {
        (self.op_code() == OP_COMPRESSED)
            .then(|| self.bytes.get(24).copied())
            .flatten()
    }

    /// The length of the message once decompressed (= `len()` if not compressed).
    pub fn uncompressed_len(&self) -> usize {
        if self.op_code() == OP_COMPRESSED && self.bytes.len() >= 25 {
            16 + le_i32(&self.bytes, 20) as usize
        } else {
            self.len()
        }
    }

    /// The message with OP_COMPRESSED undone (same header IDs, the original opcode); the
    /// message itself if it is not compressed. `None` if decompression fails.
    pub fn decompressed(&self) -> Option<Cow<'_, WireMessage>> {
        if self.op_code() != OP_COMPRESSED {
            return Some(Cow::Borrowed(self));
        }
        let b = &self.bytes;
        let size = usize::try_from(le_i32(b.get(..25)?, 20)).ok()?;
        let data = &b[25..];
        let plain = match b[24] {
            0 => data.to_vec(),
            1 => snap::raw::Decoder::new().decompress_vec(data).ok()?,
            2 => {
                let mut out = Vec::with_capacity(size);
                flate2::read::ZlibDecoder::new(data)
                    .read_to_end(&mut out)
                    .ok()?;
                out
            }
            3 => zstd::stream::decode_all(data).ok()?,
            _ => return None,
        };
        if plain.len() != size {
            return None;
        }
        let mut bytes = Vec::with_capacity(16 + size);
        bytes.extend_from_slice(&((16 + size) as i32).to_le_bytes());
        bytes.extend_from_slice(&b[4..12]);
        bytes.extend_from_slice(&b[16..20]);
        bytes.extend_from_slice(&plain);
        Some(Cow::Owned(WireMessage {
            bytes,
            first_byte_ns: self.first_byte_ns,
            last_byte_ns: self.last_byte_ns,
        }))
    }

    /// OP_MSG flagBits (0 for other opcodes), looking inside OP_COMPRESSED.
    pub fn flag_bits(&self) -> u32 {
        let Some(plain) = self.decompressed() else {
            return 0;
        };
        if plain.op_code() == OP_MSG && plain.bytes.len() >= 20 {
            le_i32(&plain.bytes, 16) as u32
        } else {
            0
        }
    }

    pub fn more_to_come(&self) -> bool {
        self.flag_bits() & MORE_TO_COME != 0
    }

    /// The command document: an OP_MSG's kind-0 section, an OP_QUERY's query (unwrapped from
    /// `$query`), an OP_REPLY's first document; OP_COMPRESSED is decompressed first. `None`
    /// for malformed bytes.
    pub fn body(&self) -> Option<Document> {
        let plain = self.decompressed()?;
        let b = &plain.bytes;
        match plain.op_code() {
            OP_MSG => {
                let flags = plain.flag_bits();
                let end = if flags & CHECKSUM_PRESENT != 0 {
                    b.len().checked_sub(4)?
                } else {
                    b.len()
                };
                let mut at = 20;
                while at < end {
                    let kind = b[at];
                    at += 1;
                    let size = le_i32(b.get(..at + 4)?, at) as usize;
                    if kind == 0 {
                        return Document::from_reader(b.get(at..at + size)?).ok();
                    }
                    at += size;
                }
                None
            }
            OP_QUERY => {
                // flags, fullCollectionName (cstring), numberToSkip, numberToReturn, query
                let name_end = 20 + b.get(20..)?.iter().position(|&c| c == 0)?;
                let at = name_end + 1 + 8;
                let size = le_i32(b.get(..at + 4)?, at) as usize;
                let query = Document::from_reader(b.get(at..at + size)?).ok()?;
                match query.get_document("$query") {
                    Ok(inner) => Some(inner.clone()),
                    Err(_) => Some(query),
                }
            }
            OP_REPLY => {
                // responseFlags, cursorID, startingFrom, numberReturned, documents
                let at = 36;
                let size = le_i32(b.get(..at + 4)?, at) as usize;
                Document::from_reader(b.get(at..at + size)?).ok()
            }
            _ => None,
        }
    }

    /// The command's name: the first key of the command document (see [`WireMessage::body`]).
    pub fn command_name(&self) -> Option<String> {
        self.body().and_then(|d| d.keys().next().cloned())
    }

    /// A driver's own handshake or heartbeat (see [`HANDSHAKE_COMMANDS`]).
    pub fn is_handshake(&self) -> bool {
        self.command_name()
            .is_some_and(|n| HANDSHAKE_COMMANDS.contains(&n.as_str()))
    }
}

/// Splits a byte stream into messages by the header's messageLength. Returns the complete
/// messages and the bytes of an incomplete last message (empty if the stream ended cleanly).
/// `times` gives, for each byte offset where a chunk started, when it arrived: message times
/// come from the chunks that hold their first and last byte.
pub fn split_messages(stream: &[u8], chunk_starts: &[(usize, u64)]) -> (Vec<WireMessage>, Vec<u8>) {
    let time_of = |offset: usize| -> u64 {
        match chunk_starts.binary_search_by(|(start, _)| start.cmp(&offset)) {
            Ok(i) => chunk_starts[i].1,
            Err(0) => 0,
            Err(i) => chunk_starts[i - 1].1,
        }
    };
    let mut out = Vec::new();
    let mut at = 0;
    while stream.len() - at >= 16 {
        let len = le_i32(stream, at);
        if len < 16 || (len as usize) > stream.len() - at {
            break;
        }
        let len = len as usize;
        out.push(WireMessage {
            bytes: stream[at..at + len].to_vec(),
            first_byte_ns: time_of(at),
            last_byte_ns: time_of(at + len - 1),
        });
        at += len;
    }
    (out, stream[at..].to_vec())
}

/// An OP_MSG with one kind-0 section holding `command`.
pub fn op_msg(request_id: i32, command: &Document) -> Vec<u8> {
    let mut body = Vec::new();
    command
        .to_writer(&mut body)
        .expect("a command document serializes");
    let len = 16 + 4 + 1 + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as i32).to_le_bytes());
    msg.extend_from_slice(&request_id.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&OP_MSG.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.push(0);
    msg.extend_from_slice(&body);
    msg
}

/// Reads one whole message from `stream`.
pub fn read_message(stream: &mut impl Read) -> Result<WireMessage> {
    let mut header = [0u8; 16];
    stream
        .read_exact(&mut header)
        .context("reading a message header")?;
    let len = le_i32(&header, 0);
    ensure!(
        (16..=48 * 1024 * 1024).contains(&len),
        "bad messageLength {len}"
    );
    let mut bytes = header.to_vec();
    bytes.resize(len as usize, 0);
    stream
        .read_exact(&mut bytes[16..])
        .context("reading a message body")?;
    let now = crate::monotonic_ns();
    Ok(WireMessage {
        bytes,
        first_byte_ns: now,
        last_byte_ns: now,
    })
}

/// Sends `command` as an OP_MSG on `stream` and returns the reply document.
pub fn run_command(
    stream: &mut TcpStream,
    request_id: i32,
    command: &Document,
) -> Result<Document> {
    stream
        .write_all(&op_msg(request_id, command))
        .context("sending a command")?;
    let reply = read_message(stream)?;
    ensure!(
        reply.op_code() == OP_MSG,
        "reply opcode {} is not OP_MSG",
        reply.op_code()
    );
    ensure!(
        reply.response_to() == request_id,
        "reply answers request {} not {request_id}",
        reply.response_to()
    );
    reply.body().context("reply without a body section")
}

/// Connects to `addr` and runs `{ping: 1, $db: "admin"}`; Ok if the server answers `ok: 1`.
pub fn ping(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let reply = run_command(&mut stream, 1, &doc! { "ping": 1, "$db": "admin" })?;
    if reply_ok(&reply) {
        Ok(())
    } else {
        bail!("ping answered {reply}")
    }
}

/// Whether a reply document says `ok: 1` (as a double, int32 or int64).
pub fn reply_ok(reply: &Document) -> bool {
    match reply.get("ok") {
        Some(bson::Bson::Double(v)) => *v == 1.0,
        Some(bson::Bson::Int32(v)) => *v == 1,
        Some(bson::Bson::Int64(v)) => *v == 1,
        Some(bson::Bson::Boolean(v)) => *v,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_round_trips_and_keeps_the_tail() {
        let a = op_msg(7, &doc! { "ping": 1, "$db": "admin" });
        let b = op_msg(8, &doc! { "find": "c", "$db": "test", "batchSize": 3 });
        let mut stream = a.clone();
        stream.extend_from_slice(&b);
        stream.extend_from_slice(&b[..10]);
        let (msgs, tail) = split_messages(&stream, &[(0, 100), (a.len() + 3, 200)]);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].bytes, a);
        assert_eq!(msgs[1].bytes, b);
        assert_eq!((msgs[0].first_byte_ns, msgs[0].last_byte_ns), (100, 100));
        assert_eq!((msgs[1].first_byte_ns, msgs[1].last_byte_ns), (100, 200));
        assert_eq!(tail, &b[..10]);
        assert_eq!(msgs[0].request_id(), 7);
        assert_eq!(msgs[1].command_name().as_deref(), Some("find"));
        assert_eq!(msgs[0].body().unwrap(), doc! { "ping": 1, "$db": "admin" });
        assert!(!msgs[1].is_handshake());
    }

    #[test]
    fn decompresses_op_compressed() {
        use std::io::Write as _;
        let plain = op_msg(9, &doc! { "hello": 1, "$db": "admin" });
        for id in [1u8, 2, 3] {
            let data = match id {
                1 => snap::raw::Encoder::new()
                    .compress_vec(&plain[16..])
                    .unwrap(),
                2 => {
                    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Default::default());
                    z.write_all(&plain[16..]).unwrap();
                    z.finish().unwrap()
                }
                _ => zstd::stream::encode_all(&plain[16..], 3).unwrap(),
            };
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&((16 + 9 + data.len()) as i32).to_le_bytes());
            bytes.extend_from_slice(&plain[4..12]);
            bytes.extend_from_slice(&OP_COMPRESSED.to_le_bytes());
            bytes.extend_from_slice(&OP_MSG.to_le_bytes());
            bytes.extend_from_slice(&((plain.len() - 16) as i32).to_le_bytes());
            bytes.push(id);
            bytes.extend_from_slice(&data);
            let msg = WireMessage {
                bytes,
                first_byte_ns: 0,
                last_byte_ns: 0,
            };
            assert_eq!(msg.compressor_id(), Some(id));
            assert_eq!(msg.uncompressed_len(), plain.len());
            assert_eq!(msg.decompressed().unwrap().bytes, plain);
            assert_eq!(msg.command_name().as_deref(), Some("hello"));
            assert!(msg.is_handshake());
            assert_eq!(msg.request_id(), 9);
        }
    }
}
