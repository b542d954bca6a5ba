//! Where messages start and end in a byte stream: the header, the size limits, and the
//! plausibility test used to find a message start after a gap or at the start of a capture.

use super::types::{msg_flags, Compressor, Header, OpCode};

/// The largest message a server accepts (`maxMessageSizeBytes`, decimal): the one limit the
/// kernel's classifier uses too.
pub const MAX_MESSAGE_SIZE: usize = mongowatch_common::MAX_MESSAGE_SIZE as usize;

/// Reads a little-endian i32 at `at`, if the slice holds it.
#[inline]
pub(crate) fn le_i32(b: &[u8], at: usize) -> Option<i32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

#[inline]
pub(crate) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    le_i32(b, at).map(|v| v as u32)
}

#[inline]
pub(crate) fn le_i64(b: &[u8], at: usize) -> Option<i64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(i64::from_le_bytes(a))
}

/// The 16-byte header at the start of `b`, if `b` holds 16 bytes.
pub fn parse_header(b: &[u8]) -> Option<Header> {
    Some(Header {
        length: le_i32(b, 0)?,
        request_id: le_i32(b, 4)?,
        response_to: le_i32(b, 8)?,
        op_code: le_i32(b, 12)?,
    })
}

/// The smallest body (bytes after the header) a well-formed message of `op` can have.
pub fn min_body(op: OpCode) -> usize {
    match op {
        // flagBits + kind byte + empty document
        OpCode::Msg => 4 + 1 + 5,
        // responseFlags + cursorID + startingFrom + numberReturned (no documents)
        OpCode::Reply => 4 + 8 + 4 + 4,
        // flags + "" + numberToSkip + numberToReturn + query
        OpCode::Query => 4 + 1 + 4 + 4 + 5,
        // ZERO + "" + numberToReturn + cursorID
        OpCode::GetMore => 4 + 1 + 4 + 8,
        // ZERO + numberOfCursorIDs
        OpCode::KillCursors => 4 + 4,
        // flags + "" (documents may follow)
        OpCode::Insert => 4 + 1,
        // ZERO + "" + flags + selector + update
        OpCode::Update => 4 + 1 + 4 + 5 + 5,
        // ZERO + "" + flags + selector
        OpCode::Delete => 4 + 1 + 4 + 5,
        // originalOpcode + uncompressedSize + compressorId
        OpCode::Compressed => 4 + 4 + 1,
    }
}

/// The answer of a frame test on the bytes seen so far.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Plausible {
    /// A message of this many bytes starts here.
    Yes(usize),
    /// Not a message start.
    No,
    /// Too few bytes to tell; ask again with more.
    NeedMore,
}

/// The test used in sync (right after a whole message): only the length is checked, against
/// the opcode's minimum when the opcode is known. An unknown opcode with a sane length is
/// framed and left to the decoder to report.
pub fn check_in_sync(b: &[u8]) -> Plausible {
    let Some(h) = parse_header(b) else {
        return Plausible::NeedMore;
    };
    let min = match OpCode::from_i32(h.op_code) {
        Some(op) => Header::LENGTH + min_body(op),
        None => Header::LENGTH,
    };
    match usize::try_from(h.length) {
        Ok(len) if (min..=MAX_MESSAGE_SIZE).contains(&len) => Plausible::Yes(len),
        _ => Plausible::No,
    }
}

/// The strict test used when hunting for a message start (capture start, after a gap or
/// damage): a known opcode, a length in range, and the first body fields consistent with it.
/// A false positive inside a payload needs about 8 bytes of coincidence; a real header passes
/// as soon as its first fields are in.
pub fn check_strict(b: &[u8]) -> Plausible {
    let Some(h) = parse_header(b) else {
        return Plausible::NeedMore;
    };
    let Some(op) = OpCode::from_i32(h.op_code) else {
        return Plausible::No;
    };
    let len = match usize::try_from(h.length) {
        Ok(len) if (Header::LENGTH + min_body(op)..=MAX_MESSAGE_SIZE).contains(&len) => len,
        _ => return Plausible::No,
    };
    // Only look inside this message's bytes.
    let m = &b[..b.len().min(len)];
    let body_ok = match op {
        OpCode::Msg => check_msg_start(m, len),
        OpCode::Compressed => check_compressed_start(m),
        OpCode::Reply => check_reply_start(m, &h, len),
        OpCode::Query => le_u32(m, 16).map(|f| f & !0xfe == 0).and_then(|ok| {
            // flags: bits 1-7 only; then the namespace.
            if ok {
                check_namespace(m, 20, len)
            } else {
                Some(false)
            }
        }),
        OpCode::Insert => le_u32(m, 16).and_then(|f| {
            if f & !1 == 0 {
                check_namespace(m, 20, len)
            } else {
                Some(false)
            }
        }),
        OpCode::GetMore | OpCode::Update | OpCode::Delete => le_i32(m, 16).and_then(|zero| {
            if zero == 0 {
                check_namespace(m, 20, len)
            } else {
                Some(false)
            }
        }),
        OpCode::KillCursors => match (le_i32(m, 16), le_i32(m, 20)) {
            (Some(0), Some(n)) => Some(
                n > 0 && usize::try_from(n).ok().and_then(|n| n.checked_mul(8)) == Some(len - 24),
            ),
            (Some(_), Some(_)) => Some(false),
            _ => None,
        },
    };
    match body_ok {
        Some(true) => Plausible::Yes(len),
        Some(false) => Plausible::No,
        None => Plausible::NeedMore,
    }
}

/// OP_MSG: flag bits, then the first section's kind and size, then (kind 0) the document's
/// first element type.
fn check_msg_start(m: &[u8], len: usize) -> Option<bool> {
    let flags = le_u32(m, 16)?;
    if flags & msg_flags::REQUIRED_MASK & !msg_flags::KNOWN != 0 {
        return Some(false);
    }
    let end = if flags & msg_flags::CHECKSUM_PRESENT != 0 {
        match len.checked_sub(4) {
            Some(e) if e >= 16 + 4 + 1 + 5 => e,
            _ => return Some(false),
        }
    } else {
        len
    };
    let kind = *m.get(20)?;
    let size = le_i32(m, 21)?;
    let room = end - 21;
    match kind {
        0 => {
            let Ok(size) = usize::try_from(size) else {
                return Some(false);
            };
            if !(5..=room).contains(&size) {
                return Some(false);
            }
            let first = *m.get(25)?;
            Some(if size == 5 {
                first == 0
            } else {
                is_bson_type(first)
            })
        }
        1 => Some(usize::try_from(size).is_ok_and(|s| (5..=room).contains(&s))),
        _ => Some(false),
    }
}

fn check_compressed_start(m: &[u8]) -> Option<bool> {
    let orig = le_i32(m, 16)?;
    let size = le_i32(m, 20)?;
    let id = *m.get(24)?;
    let Some(orig) = OpCode::from_i32(orig) else {
        return Some(false);
    };
    Some(
        orig != OpCode::Compressed
            && Compressor::from_u8(id).is_some()
            && usize::try_from(size)
                .is_ok_and(|s| (min_body(orig)..=MAX_MESSAGE_SIZE - 16).contains(&s)),
    )
}

fn check_reply_start(m: &[u8], h: &Header, len: usize) -> Option<bool> {
    let flags = le_i32(m, 16)?;
    let n = le_i32(m, 32)?;
    Some(
        h.response_to != 0
            && flags & !0xf == 0
            && usize::try_from(n).is_ok_and(|n| n.saturating_mul(5) <= len - 36),
    )
}

/// A namespace ("db.collection") C string starting at `at`: printable bytes up to a NUL.
fn check_namespace(m: &[u8], at: usize, len: usize) -> Option<bool> {
    let rest = m.get(at..)?;
    for (i, &c) in rest.iter().enumerate() {
        if c == 0 {
            return Some(i > 0);
        }
        if !(0x20..0x7f).contains(&c) && c < 0x80 {
            return Some(false);
        }
    }
    // No NUL yet: wait for more, unless the whole message is here.
    if m.len() >= len {
        Some(false)
    } else {
        None
    }
}

fn is_bson_type(t: u8) -> bool {
    matches!(t, 0x01..=0x13 | 0x7f | 0xff)
}
