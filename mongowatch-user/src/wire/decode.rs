//! From one whole frame (`Bytes`, header included) to a [`Message`]. Documents stay in the
//! frame's buffer: each [`Doc`] is a slice of it, checked for its length prefix and NUL.
//!
//! Every read is bounds-checked and every length is checked arithmetic: a malformed frame is a
//! [`DecodeError`], never a panic.

use bytes::Bytes;

use super::{
    compress::decompress,
    error::DecodeError,
    frame::{le_i32, le_i64, le_u32, min_body, parse_header, MAX_MESSAGE_SIZE},
    types::*,
};

/// Decodes one whole message as framed on the wire.
pub fn decode(frame: &Bytes) -> Result<Message, DecodeError> {
    let header = parse_header(frame).ok_or(DecodeError::Truncated("header"))?;
    let op = OpCode::from_i32(header.op_code).ok_or(DecodeError::UnknownOpCode(header.op_code))?;
    check_length(header.length, frame.len(), op)?;
    if op != OpCode::Compressed {
        let body = decode_body(op, frame.slice(Header::LENGTH..), frame)?;
        return Ok(Message {
            header,
            wire_len: frame.len() as u32,
            compressor: None,
            body,
        });
    }
    // OP_COMPRESSED: originalOpcode, uncompressedSize, compressorId, compressed body.
    let orig = le_i32(frame, 16).ok_or(DecodeError::Truncated("originalOpcode"))?;
    let size = le_i32(frame, 20).ok_or(DecodeError::Truncated("uncompressedSize"))?;
    let id = *frame
        .get(24)
        .ok_or(DecodeError::Truncated("compressorId"))?;
    let orig_op = match OpCode::from_i32(orig) {
        Some(OpCode::Compressed) | None => return Err(DecodeError::BadOriginalOpCode(orig)),
        Some(op) => op,
    };
    let compressor = Compressor::from_u8(id).ok_or(DecodeError::UnknownCompressor(id))?;
    let declared = match usize::try_from(size) {
        Ok(s) if (min_body(orig_op)..=MAX_MESSAGE_SIZE - Header::LENGTH).contains(&s) => s,
        _ => return Err(DecodeError::BadUncompressedSize(size.into())),
    };
    let input = frame
        .get(25..)
        .ok_or(DecodeError::Truncated("compressed body"))?;
    let inner = match compressor {
        // Nothing to inflate: stay zero-copy.
        Compressor::Noop if input.len() == declared => frame.slice(25..),
        _ => Bytes::from(decompress(compressor, input, declared)?),
    };
    // The header the message would have had uncompressed; body offsets in errors and in the
    // OP_MSG checksum are relative to it.
    let header = Header {
        length: (Header::LENGTH + declared) as i32,
        op_code: orig,
        ..header
    };
    let body = if orig_op == OpCode::Msg {
        decode_msg_compressed(&header, inner)?
    } else {
        decode_body(orig_op, inner, &Bytes::new())?
    };
    Ok(Message {
        header,
        wire_len: frame.len() as u32,
        compressor: Some(compressor),
        body,
    })
}

fn check_length(length: i32, frame_len: usize, op: OpCode) -> Result<(), DecodeError> {
    let ok = usize::try_from(length).is_ok_and(|l| {
        l == frame_len && l >= Header::LENGTH + min_body(op) && l <= MAX_MESSAGE_SIZE
    });
    if ok {
        Ok(())
    } else {
        Err(DecodeError::BadLength {
            length: length.into(),
            frame_len,
        })
    }
}

/// A compressed OP_MSG with checksumPresent: the checksum covers the uncompressed message,
/// so rebuild its header in front for the check (rare; costs one copy).
fn decode_msg_compressed(header: &Header, inner: Bytes) -> Result<Body, DecodeError> {
    let flags = le_u32(&inner, 0).ok_or(DecodeError::Truncated("flagBits"))?;
    if flags & msg_flags::CHECKSUM_PRESENT == 0 {
        return decode_body(OpCode::Msg, inner, &Bytes::new());
    }
    let mut whole = Vec::with_capacity(Header::LENGTH + inner.len());
    for v in [
        header.length,
        header.request_id,
        header.response_to,
        header.op_code,
    ] {
        whole.extend_from_slice(&v.to_le_bytes());
    }
    whole.extend_from_slice(&inner);
    let whole = Bytes::from(whole);
    decode_body(OpCode::Msg, whole.slice(Header::LENGTH..), &whole)
}

/// Decodes the body of `op`. `whole` is the message with its header (for the OP_MSG checksum;
/// empty where no checksum can be present).
fn decode_body(op: OpCode, body: Bytes, whole: &Bytes) -> Result<Body, DecodeError> {
    let mut r = Reader { b: body, pos: 0 };
    Ok(match op {
        OpCode::Msg => Body::Msg(decode_msg(r, whole)?),
        OpCode::Reply => {
            let flags = r.i32("responseFlags")?;
            let cursor_id = r.i64("cursorID")?;
            let starting_from = r.i32("startingFrom")?;
            let number_returned = r.i32("numberReturned")?;
            let documents = r.docs_to_end("OP_REPLY documents")?;
            if usize::try_from(number_returned).ok() != Some(documents.len()) {
                return Err(DecodeError::CountMismatch {
                    what: "OP_REPLY numberReturned",
                    declared: number_returned.into(),
                    actual: documents.len(),
                });
            }
            Body::Reply(OpReply {
                flags,
                cursor_id,
                starting_from,
                number_returned,
                documents,
            })
        }
        OpCode::Query => {
            let flags = r.i32("flags")?;
            let full_collection_name = r.cstring("fullCollectionName")?;
            let number_to_skip = r.i32("numberToSkip")?;
            let number_to_return = r.i32("numberToReturn")?;
            let query = r.doc("query")?;
            let return_fields_selector = if r.remaining() > 0 {
                Some(r.doc("returnFieldsSelector")?)
            } else {
                None
            };
            r.finish()?;
            Body::Query(OpQuery {
                flags,
                full_collection_name,
                number_to_skip,
                number_to_return,
                query,
                return_fields_selector,
            })
        }
        OpCode::GetMore => {
            r.i32("ZERO")?;
            let full_collection_name = r.cstring("fullCollectionName")?;
            let number_to_return = r.i32("numberToReturn")?;
            let cursor_id = r.i64("cursorID")?;
            r.finish()?;
            Body::GetMore(OpGetMore {
                full_collection_name,
                number_to_return,
                cursor_id,
            })
        }
        OpCode::KillCursors => {
            r.i32("ZERO")?;
            let n = r.i32("numberOfCursorIDs")?;
            let fits = usize::try_from(n)
                .ok()
                .and_then(|n| n.checked_mul(8))
                .is_some_and(|bytes| bytes == r.remaining());
            if !fits {
                return Err(DecodeError::CountMismatch {
                    what: "OP_KILL_CURSORS numberOfCursorIDs",
                    declared: n.into(),
                    actual: r.remaining() / 8,
                });
            }
            let mut cursor_ids = Vec::with_capacity(r.remaining() / 8);
            while r.remaining() > 0 {
                cursor_ids.push(r.i64("cursorIDs")?);
            }
            Body::KillCursors(OpKillCursors { cursor_ids })
        }
        OpCode::Insert => {
            let flags = r.i32("flags")?;
            let full_collection_name = r.cstring("fullCollectionName")?;
            let documents = r.docs_to_end("OP_INSERT documents")?;
            Body::Insert(OpInsert {
                flags,
                full_collection_name,
                documents,
            })
        }
        OpCode::Update => {
            r.i32("ZERO")?;
            let full_collection_name = r.cstring("fullCollectionName")?;
            let flags = r.i32("flags")?;
            let selector = r.doc("selector")?;
            let update = r.doc("update")?;
            r.finish()?;
            Body::Update(OpUpdate {
                full_collection_name,
                flags,
                selector,
                update,
            })
        }
        OpCode::Delete => {
            r.i32("ZERO")?;
            let full_collection_name = r.cstring("fullCollectionName")?;
            let flags = r.i32("flags")?;
            let selector = r.doc("selector")?;
            r.finish()?;
            Body::Delete(OpDelete {
                full_collection_name,
                flags,
                selector,
            })
        }
        OpCode::Compressed => return Err(DecodeError::BadOriginalOpCode(op as i32)),
    })
}

/// OP_MSG: flagBits, sections (one kind 0, any number of kind 1, any order), optional CRC-32C.
fn decode_msg(mut r: Reader, whole: &Bytes) -> Result<OpMsg, DecodeError> {
    let flags = r.u32("flagBits")?;
    let unknown = flags & msg_flags::REQUIRED_MASK & !msg_flags::KNOWN;
    if unknown != 0 {
        return Err(DecodeError::UnknownRequiredFlags(unknown));
    }
    let mut checksum = None;
    if flags & msg_flags::CHECKSUM_PRESENT != 0 {
        let end =
            r.b.len()
                .checked_sub(4)
                .filter(|&e| e >= r.pos)
                .ok_or(DecodeError::Truncated("checksum"))?;
        let wire = le_u32(&r.b, end).ok_or(DecodeError::Truncated("checksum"))?;
        // The CRC covers the whole message (header included) up to the checksum.
        let covered_len = whole
            .len()
            .checked_sub(4)
            .ok_or(DecodeError::Truncated("checksum"))?;
        let computed = crc32c::crc32c(&whole[..covered_len]);
        if computed != wire {
            return Err(DecodeError::ChecksumMismatch { wire, computed });
        }
        checksum = Some(wire);
        r.b.truncate(end);
    }
    let mut body = None;
    let mut sequences = Vec::new();
    while r.remaining() > 0 {
        match r.u8("section kind")? {
            0 => {
                let doc = r.doc("OP_MSG body")?;
                if body.replace(doc).is_some() {
                    return Err(DecodeError::DuplicateBody);
                }
            }
            1 => {
                let size = r.i32("sequence size")?;
                // size counts itself; the identifier needs at least its NUL.
                let content = usize::try_from(size)
                    .ok()
                    .and_then(|s| s.checked_sub(4))
                    .filter(|&c| c >= 1)
                    .ok_or(DecodeError::BadSequence("size too small"))?;
                if content > r.remaining() {
                    return Err(DecodeError::BadSequence("size beyond the message"));
                }
                let mut s = Reader {
                    b: r.b.slice(r.pos..r.pos + content),
                    pos: 0,
                };
                r.pos += content;
                let identifier = s.cstring("sequence identifier")?;
                let documents = s.docs_to_end("document sequence")?;
                sequences.push(Sequence {
                    identifier,
                    documents,
                });
            }
            k => return Err(DecodeError::UnknownSectionKind(k)),
        }
    }
    Ok(OpMsg {
        flags,
        body: body.ok_or(DecodeError::MissingBody)?,
        sequences,
        checksum,
    })
}

/// A cursor over a body.
struct Reader {
    b: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.b.len().saturating_sub(self.pos)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let v = *self.b.get(self.pos).ok_or(DecodeError::Truncated(what))?;
        self.pos += 1;
        Ok(v)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        let v = le_i32(&self.b, self.pos).ok_or(DecodeError::Truncated(what))?;
        self.pos += 4;
        Ok(v)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.i32(what).map(|v| v as u32)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let v = le_i64(&self.b, self.pos).ok_or(DecodeError::Truncated(what))?;
        self.pos += 8;
        Ok(v)
    }

    fn cstring(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = self.b.get(self.pos..).ok_or(DecodeError::Truncated(what))?;
        let nul = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or(DecodeError::BadCString(what))?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::BadCString(what))?;
        let s = s.to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    /// One BSON document: a shared slice of the frame.
    fn doc(&mut self, what: &'static str) -> Result<Doc, DecodeError> {
        let len = le_i32(&self.b, self.pos).ok_or(DecodeError::Truncated(what))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l >= 5)
            .ok_or_else(|| bad_bson(what, format!("length {len}")))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| bad_bson(what, format!("length {len} beyond the message")))?;
        let doc =
            Doc::new(self.b.slice(self.pos..end)).map_err(|e| bad_bson(what, e.to_string()))?;
        self.pos = end;
        Ok(doc)
    }

    fn docs_to_end(&mut self, what: &'static str) -> Result<Vec<Doc>, DecodeError> {
        let mut docs = Vec::new();
        while self.remaining() > 0 {
            docs.push(self.doc(what)?);
        }
        Ok(docs)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

fn bad_bson(what: &'static str, detail: String) -> DecodeError {
    DecodeError::BadBson { what, detail }
}
