//! Sessions recorded from real drivers (`tests/fixtures/*.mwrec`, see tests/fixtures/README.md):
//! the reader, and the replay of a recording's chunks into per-connection streams.
#![allow(dead_code)]

use std::{collections::BTreeMap, path::Path};

use mongowatch::{
    capture::events::Direction,
    stream::{ConnConfig, ConnEvent, Connection},
};

/// One recorded chunk: bytes one side wrote, or a connection's close.
pub struct Chunk {
    pub closed: bool,
    pub client_to_server: bool,
    pub conn: u16,
    pub ts_ns: u64,
    pub data: Vec<u8>,
}

/// Reads `tests/fixtures/<name>`: `MWREC1\n`, then per chunk kind (0 data, 1 close), direction
/// (0 client to server), connection (u16), timestamp (u64 ns), length (u32), all little-endian,
/// and the bytes. A cut-short file is an error, not a shorter session.
pub fn read_mwrec(name: &str) -> Vec<Chunk> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let b = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..7], b"MWREC1\n", "{}", path.display());
    let mut out = vec![];
    let mut p = 7;
    while p < b.len() {
        assert!(
            p + 16 <= b.len(),
            "{}: a chunk header cut short",
            path.display()
        );
        let len = u32::from_le_bytes(b[p + 12..p + 16].try_into().unwrap()) as usize;
        assert!(
            p + 16 + len <= b.len(),
            "{}: a chunk cut short",
            path.display()
        );
        out.push(Chunk {
            closed: b[p] == 1,
            client_to_server: b[p + 1] == 0,
            conn: u16::from_le_bytes([b[p + 2], b[p + 3]]),
            ts_ns: u64::from_le_bytes(b[p + 4..p + 12].try_into().unwrap()),
            data: b[p + 16..p + 16 + len].to_vec(),
        });
        p += 16 + len;
    }
    out
}

/// The recording's connections as the watched side sees them: one stream each, with the byte
/// offset of each direction.
#[derive(Default)]
pub struct Streams {
    /// Per connection: its stream, then the offsets client-to-server and server-to-client.
    pub conns: BTreeMap<u16, (Connection, u64, u64)>,
}

impl Streams {
    /// Hands `ch` to its connection's stream (made on first sight): a close closes it; data
    /// goes in the direction the watched side sees (the client's, or the server's with
    /// `server_role`), cut into pieces of `rechunk` bytes (0: as recorded).
    pub fn feed(
        &mut self,
        ch: &Chunk,
        server_role: bool,
        rechunk: usize,
        on: &mut impl FnMut(ConnEvent<'_>),
    ) {
        let (stream, c2s, s2c) = self
            .conns
            .entry(ch.conn)
            .or_insert_with(|| (Connection::new(ConnConfig::default()), 0, 0));
        if ch.closed {
            stream.close(ch.ts_ns, on);
            return;
        }
        let dir = if ch.client_to_server != server_role {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let off = if ch.client_to_server { c2s } else { s2c };
        let step = if rechunk == 0 { ch.data.len() } else { rechunk };
        for piece in ch.data.chunks(step.max(1)) {
            stream.push(dir, *off, piece, ch.ts_ns, on);
            *off += piece.len() as u64;
        }
    }
}
