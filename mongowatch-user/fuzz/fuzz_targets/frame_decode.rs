//! Framing + decoding + pairing on arbitrary bytes, cut into arbitrary chunks with gaps.
//!
//! Input: byte 0 and 1 seed the chunking; the rest is the stream. The same bytes go out as
//! egress (chunked one way) and come back as ingress (chunked another way, with gaps), so
//! requests and replies meet in the pairer. The whole input is also decoded as one frame
//! with its length field fixed up, to reach the decoder past the length check.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mongowatch::{
    capture::events::Direction,
    stream::{ConnConfig, ConnEvent, Connection, StreamConfig},
    wire::{decode, PairConfig},
};

struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        // xorshift32
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let seed = u32::from(data[0]) << 8 | u32::from(data[1]) | 0x1_0000;
    let stream = &data[2..];

    // The decoder alone, on the whole input as one frame.
    if stream.len() >= 4 {
        let mut v = stream.to_vec();
        v[..4].copy_from_slice(&(stream.len() as i32).to_le_bytes());
        let _ = decode(&Bytes::from(v));
    }

    let mut conn = Connection::new(ConnConfig {
        stream: StreamConfig {
            max_message: 1 << 20,
            block_size: 4096,
        },
        pair: PairConfig { max_outstanding: 8 },
        idle_timeout_ns: 1_000,
        ..ConnConfig::default()
    });
    let mut framed = 0usize;
    let mut check = |ev: ConnEvent<'_>| {
        if let ConnEvent::Frame { frame, .. } = ev {
            let b = &frame.bytes;
            assert!(b.len() >= 16);
            assert_eq!(
                i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                b.len(),
                "a frame is exactly its length field"
            );
            framed += b.len();
        }
    };
    for (dir, gaps) in [(Direction::Egress, false), (Direction::Ingress, true)] {
        let mut rng = Rng(seed ^ if gaps { 0x9e37_79b9 } else { 0 });
        let mut off = 0usize;
        let mut ts = 1u64;
        while off < stream.len() {
            let r = rng.next();
            let n = ((r % 300) as usize + 1).min(stream.len() - off);
            ts += u64::from(r >> 28);
            match (gaps, r >> 24 & 0xf) {
                (true, 0) => {} // lost: an implicit gap at the next push
                (true, 1) => conn.gap(dir, off as u64, n as u64, ts, &mut check),
                (true, 2) if off >= n => {
                    // a repeat of bytes already seen
                    conn.push(
                        dir,
                        (off - n) as u64,
                        &stream[off - n..off + n.min(stream.len() - off)],
                        ts,
                        &mut check,
                    )
                }
                _ => conn.push(dir, off as u64, &stream[off..off + n], ts, &mut check),
            }
            off += n;
        }
    }
    assert!(framed <= 2 * stream.len());
    let s = conn.stats();
    assert_eq!(s.stream.messages, s.decoded + s.decode_errors.total());
    conn.expire(u64::MAX, &mut |_| {});
    assert!(conn.is_closed());
    assert_eq!(conn.outstanding(), 0);
    assert_eq!(conn.buffered(), 0);
});
