//! Messages back to bytes, as a driver or server would write them. Used by tests, benches,
//! fuzz seeds and fixtures; the decoder never needs it.
//!
//! `header.length` is computed (the given one is ignored); OP_MSG gets its CRC-32C computed
//! when its flags say checksumPresent (`checksum` is ignored).

use std::io::Write;

use super::types::*;

/// The message as sent uncompressed.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut body = Vec::new();
    encode_body(&msg.body, &mut body);
    let mut out = Vec::with_capacity(Header::LENGTH + body.len() + 4);
    put_header(
        &mut out,
        &msg.header,
        msg.header.op_code,
        Header::LENGTH + body.len(),
    );
    out.extend_from_slice(&body);
    if let Body::Msg(m) = &msg.body {
        if m.flags & msg_flags::CHECKSUM_PRESENT != 0 {
            let len = out.len() + 4;
            out[0..4].copy_from_slice(&(len as i32).to_le_bytes());
            let crc = crc32c::crc32c(&out);
            out.extend_from_slice(&crc.to_le_bytes());
        }
    }
    out
}

/// The message wrapped in OP_COMPRESSED with `compressor`.
pub fn encode_compressed(msg: &Message, compressor: Compressor) -> Vec<u8> {
    let plain = encode(msg);
    let inner = &plain[Header::LENGTH..];
    let packed: Vec<u8> = match compressor {
        Compressor::Noop => inner.to_vec(),
        Compressor::Snappy => snap::raw::Encoder::new()
            .compress_vec(inner)
            .unwrap_or_default(),
        Compressor::Zlib => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
            let _ = e.write_all(inner);
            e.finish().unwrap_or_default()
        }
        Compressor::Zstd => zstd::bulk::compress(inner, 3).unwrap_or_default(),
    };
    let mut out = Vec::with_capacity(25 + packed.len());
    put_header(
        &mut out,
        &msg.header,
        OpCode::Compressed as i32,
        25 + packed.len(),
    );
    out.extend_from_slice(&msg.header.op_code.to_le_bytes());
    out.extend_from_slice(&(inner.len() as i32).to_le_bytes());
    out.push(compressor as u8);
    out.extend_from_slice(&packed);
    out
}

fn put_header(out: &mut Vec<u8>, h: &Header, op_code: i32, len: usize) {
    out.extend_from_slice(&(len as i32).to_le_bytes());
    out.extend_from_slice(&h.request_id.to_le_bytes());
    out.extend_from_slice(&h.response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn i32le(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn encode_body(body: &Body, out: &mut Vec<u8>) {
    match body {
        Body::Msg(m) => {
            i32le(out, m.flags as i32);
            out.push(0);
            out.extend_from_slice(m.body.bytes());
            for s in &m.sequences {
                out.push(1);
                let size =
                    4 + s.identifier.len() + 1 + s.documents.iter().map(Doc::len).sum::<usize>();
                i32le(out, size as i32);
                cstr(out, &s.identifier);
                for d in &s.documents {
                    out.extend_from_slice(d.bytes());
                }
            }
        }
        Body::Reply(r) => {
            i32le(out, r.flags);
            out.extend_from_slice(&r.cursor_id.to_le_bytes());
            i32le(out, r.starting_from);
            i32le(out, r.number_returned);
            for d in &r.documents {
                out.extend_from_slice(d.bytes());
            }
        }
        Body::Query(q) => {
            i32le(out, q.flags);
            cstr(out, &q.full_collection_name);
            i32le(out, q.number_to_skip);
            i32le(out, q.number_to_return);
            out.extend_from_slice(q.query.bytes());
            if let Some(f) = &q.return_fields_selector {
                out.extend_from_slice(f.bytes());
            }
        }
        Body::GetMore(g) => {
            i32le(out, 0);
            cstr(out, &g.full_collection_name);
            i32le(out, g.number_to_return);
            out.extend_from_slice(&g.cursor_id.to_le_bytes());
        }
        Body::KillCursors(k) => {
            i32le(out, 0);
            i32le(out, k.cursor_ids.len() as i32);
            for c in &k.cursor_ids {
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        Body::Insert(i) => {
            i32le(out, i.flags);
            cstr(out, &i.full_collection_name);
            for d in &i.documents {
                out.extend_from_slice(d.bytes());
            }
        }
        Body::Update(u) => {
            i32le(out, 0);
            cstr(out, &u.full_collection_name);
            i32le(out, u.flags);
            out.extend_from_slice(u.selector.bytes());
            out.extend_from_slice(u.update.bytes());
        }
        Body::Delete(d) => {
            i32le(out, 0);
            cstr(out, &d.full_collection_name);
            i32le(out, d.flags);
            out.extend_from_slice(d.selector.bytes());
        }
    }
}
