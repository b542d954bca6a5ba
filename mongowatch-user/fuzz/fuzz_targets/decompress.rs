//! OP_COMPRESSED inflation on arbitrary input: never more output than declared, never a
//! panic, and a success is exactly the declared size.
//!
//! Input: byte 0 = compressorId (mod 4), bytes 1-4 = uncompressedSize (LE, mod 2^24), the
//! rest = compressed bytes. The same is also wrapped as an OP_COMPRESSED OP_MSG and decoded.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mongowatch::wire::{decode, decompress, Compressor};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let Some(c) = Compressor::from_u8(data[0] % 4) else {
        return;
    };
    let declared = (u32::from_le_bytes([data[1], data[2], data[3], data[4]]) % (1 << 24)) as usize;
    let input = &data[5..];
    if let Ok(out) = decompress(c, input, declared) {
        assert_eq!(out.len(), declared);
    }

    let mut frame = Vec::with_capacity(25 + input.len());
    frame.extend_from_slice(&((25 + input.len()) as i32).to_le_bytes());
    frame.extend_from_slice(&7i32.to_le_bytes()); // requestID
    frame.extend_from_slice(&0i32.to_le_bytes()); // responseTo
    frame.extend_from_slice(&2012i32.to_le_bytes()); // OP_COMPRESSED
    frame.extend_from_slice(&2013i32.to_le_bytes()); // originalOpcode OP_MSG
    frame.extend_from_slice(&(declared as i32).to_le_bytes());
    frame.push(data[0] % 4);
    frame.extend_from_slice(input);
    if let Ok(m) = decode(&Bytes::from(frame)) {
        assert_eq!(m.header.length as usize, 16 + declared);
    }
});
