//! A recording TCP proxy: the ground truth of what crossed the wire.
//!
//! It runs inside the test process (which mongowatch does not watch), forwards every byte
//! between a driver and a server, and records, per accepted connection and per direction, every
//! chunk it read with its arrival time. [`ConnectionRecord::messages`] then splits each direction
//! into complete MongoDB messages by the header's length, bytes exact.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    monotonic_ns,
    wire::{split_messages, WireMessage},
};

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Driver to server: requests.
    ClientToServer,
    /// Server to driver: replies.
    ServerToClient,
}

/// What one `read` returned, and when (CLOCK_MONOTONIC ns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub at_ns: u64,
    pub bytes: Vec<u8>,
}

/// Everything one accepted connection carried.
#[derive(Debug, Clone, Default)]
pub struct ConnectionRecord {
    /// 0, 1, 2, ... in accept order.
    pub id: usize,
    /// The driver's end (its local port identifies the socket in the driver's process).
    pub client_addr: Option<SocketAddr>,
    /// The proxy's end towards the server.
    pub upstream_local_addr: Option<SocketAddr>,
    pub accepted_ns: u64,
    pub client_to_server: Vec<Chunk>,
    pub server_to_client: Vec<Chunk>,
    /// The driver closed its side (EOF read from it).
    pub client_closed: bool,
    /// The server closed its side.
    pub server_closed: bool,
}

impl ConnectionRecord {
    pub fn chunks(&self, dir: Direction) -> &[Chunk] {
        match dir {
            Direction::ClientToServer => &self.client_to_server,
            Direction::ServerToClient => &self.server_to_client,
        }
    }

    /// Every byte that went `dir`, in order.
    pub fn stream(&self, dir: Direction) -> Vec<u8> {
        self.chunks(dir)
            .iter()
            .flat_map(|c| c.bytes.iter().copied())
            .collect()
    }

    pub fn byte_count(&self, dir: Direction) -> usize {
        self.chunks(dir).iter().map(|c| c.bytes.len()).sum()
    }

    fn split(&self, dir: Direction) -> (Vec<WireMessage>, Vec<u8>) {
        let mut starts = Vec::with_capacity(self.chunks(dir).len());
        let mut stream = Vec::with_capacity(self.byte_count(dir));
        for chunk in self.chunks(dir) {
            starts.push((stream.len(), chunk.at_ns));
            stream.extend_from_slice(&chunk.bytes);
        }
        split_messages(&stream, &starts)
    }

    /// The complete messages that went `dir`, bytes exact, with arrival times.
    pub fn messages(&self, dir: Direction) -> Vec<WireMessage> {
        self.split(dir).0
    }

    /// The bytes of an incomplete last message `dir` (empty when the stream ended cleanly).
    pub fn trailing_bytes(&self, dir: Direction) -> Vec<u8> {
        self.split(dir).1
    }

    /// Requests (driver to server).
    pub fn requests(&self) -> Vec<WireMessage> {
        self.messages(Direction::ClientToServer)
    }

    /// Replies (server to driver).
    pub fn replies(&self) -> Vec<WireMessage> {
        self.messages(Direction::ServerToClient)
    }

    /// Both sides closed.
    pub fn is_closed(&self) -> bool {
        self.client_closed && self.server_closed
    }

    /// Whether every request on this connection is a handshake or heartbeat (a server
    /// monitor's connection, as opposed to one that carried the application's commands).
    pub fn is_monitor_only(&self) -> bool {
        self.requests().iter().all(|m| m.is_handshake())
    }
}

struct Live {
    record: Mutex<ConnectionRecord>,
    client: TcpStream,
    upstream: TcpStream,
}

struct Shared {
    stopping: AtomicBool,
    connections: Mutex<Vec<Arc<Live>>>,
    accept_errors: Mutex<Vec<String>>,
}

/// A TCP proxy on 127.0.0.1 that forwards to `upstream` and records everything.
pub struct RecordingProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl RecordingProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each accepted connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<RecordingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
            accept_errors: Mutex::new(Vec::new()),
        });
        let accept_shared = shared.clone();
        let accept_thread = thread::Builder::new()
            .name(format!("proxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, upstream, accept_shared))?;
        Ok(RecordingProxy {
            addr,
            upstream,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// Where drivers should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `mongodb://127.0.0.1:PORT/?directConnection=true`: a driver URI through the proxy.
    pub fn uri(&self) -> String {
        format!("mongodb://{}/?directConnection=true", self.addr)
    }

    /// A copy of every connection's record so far, in accept order.
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        let live = self.shared.connections.lock().unwrap();
        live.iter()
            .map(|c| c.record.lock().unwrap().clone())
            .collect()
    }

    /// Connections whose upstream connect failed, and other accept errors.
    pub fn errors(&self) -> Vec<String> {
        self.shared.accept_errors.lock().unwrap().clone()
    }

    /// Waits until every connection accepted so far is closed on both sides (the driver's
    /// process has exited or closed its client), so the records are final.
    pub fn wait_all_closed(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let open: Vec<usize> = {
                let live = self.shared.connections.lock().unwrap();
                live.iter()
                    .map(|c| c.record.lock().unwrap())
                    .filter(|r| !r.is_closed())
                    .map(|r| r.id)
                    .collect()
            };
            if open.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("proxy connections {open:?} still open after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        for conn in self.shared.connections.lock().unwrap().iter() {
            let _ = conn.client.shutdown(Shutdown::Both);
            let _ = conn.upstream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    for (id, incoming) in listener.incoming().enumerate() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let accepted_ns = monotonic_ns();
        let client = match incoming {
            Ok(s) => s,
            Err(e) => {
                shared
                    .accept_errors
                    .lock()
                    .unwrap()
                    .push(format!("accept: {e}"));
                continue;
            }
        };
        let upstream_conn = match TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => {
                shared
                    .accept_errors
                    .lock()
                    .unwrap()
                    .push(format!("connect {upstream}: {e}"));
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = upstream_conn.set_nodelay(true);
        let record = ConnectionRecord {
            id,
            client_addr: client.peer_addr().ok(),
            upstream_local_addr: upstream_conn.local_addr().ok(),
            accepted_ns,
            ..Default::default()
        };
        let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream_conn.try_clone()) else {
            shared
                .accept_errors
                .lock()
                .unwrap()
                .push("try_clone failed".into());
            continue;
        };
        let live = Arc::new(Live {
            record: Mutex::new(record),
            client,
            upstream: upstream_conn,
        });
        shared.connections.lock().unwrap().push(live.clone());
        let l1 = live.clone();
        let spawned = thread::Builder::new()
            .name(format!("proxy-c2s-{id}"))
            .spawn(move || pump(client2, &l1.upstream, &l1, Direction::ClientToServer))
            .and_then(|_| {
                let l2 = live.clone();
                thread::Builder::new()
                    .name(format!("proxy-s2c-{id}"))
                    .spawn(move || pump(upstream2, &l2.client, &l2, Direction::ServerToClient))
            });
        if let Err(e) = spawned {
            shared
                .accept_errors
                .lock()
                .unwrap()
                .push(format!("spawning proxy threads: {e}"));
        }
    }
}

/// Copies `from` to `to`, recording each chunk, until EOF or an error; then half-closes `to`.
fn pump(mut from: TcpStream, mut to: &TcpStream, live: &Live, dir: Direction) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let at_ns = monotonic_ns();
        {
            let mut rec = live.record.lock().unwrap();
            let chunk = Chunk {
                at_ns,
                bytes: buf[..n].to_vec(),
            };
            match dir {
                Direction::ClientToServer => rec.client_to_server.push(chunk),
                Direction::ServerToClient => rec.server_to_client.push(chunk),
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let mut rec = live.record.lock().unwrap();
    match dir {
        Direction::ClientToServer => rec.client_closed = true,
        Direction::ServerToClient => rec.server_closed = true,
    }
}
