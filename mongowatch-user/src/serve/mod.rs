//! The `--listen ADDR` HTTP listener: `/healthz`, `/readyz` and `/metrics` for a kubelet's
//! probes and a Prometheus scraper.
//!
//! It runs on a thread of its own with its own small runtime, so a pipeline loop that is stuck
//! is still reported (`/healthz` says 503) instead of leaving the probe to time out, and a slow
//! scraper never costs the capture a turn of its loop. The pipeline only stores into
//! [`Health`] and [`metrics::Metrics`] (atomics and one short lock per tick).
//!
//! The server is a minimal HTTP/1.1 responder on tokio, not hyper: three GET routes with small
//! bodies, one request per connection (`Connection: close`), need no more, and it adds no
//! crate to the build.

pub mod metrics;

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, info, warn};

pub use self::metrics::Metrics;

/// The loop ticks every 200 ms; this long without a tick means it is stuck.
pub const STALE_AFTER: Duration = Duration::from_secs(10);
/// Loading and attaching the probes can take seconds: `/healthz` is 200 this long after the
/// start even before the first tick.
pub const STARTUP_GRACE: Duration = Duration::from_secs(60);
/// A request head larger than this is refused (the three routes need a few hundred bytes).
const MAX_REQUEST_HEAD: usize = 8 << 10;
/// A client that sends nothing this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the listener: {0}")]
    Start(std::io::Error),
}

/// What `/healthz` and `/readyz` answer from. Cheap to update from the pipeline loop.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the last tick, plus one (0: never ticked).
    last_tick: AtomicU64,
    attached: AtomicBool,
    gates: Mutex<Vec<ReadyGate>>,
}

/// A condition `/readyz` waits for beside the probes (e.g. "pod metadata synced"). Whoever owns
/// the condition keeps the gate and calls [`ReadyGate::set`].
#[derive(Clone, Debug)]
pub struct ReadyGate {
    name: Arc<str>,
    ready: Arc<AtomicBool>,
}

impl ReadyGate {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            last_tick: AtomicU64::new(0),
            attached: AtomicBool::new(false),
            gates: Mutex::new(Vec::new()),
        }
    }

    /// The pipeline loop went round (it drains the ring on every tick).
    pub fn ticked(&self) {
        let ms = self.started.elapsed().as_millis() as u64 + 1;
        self.last_tick.store(ms, Ordering::Relaxed);
    }

    /// The probes are loaded and attached (or detached again, at the end).
    pub fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::Relaxed);
    }

    /// A new readiness condition, not ready until its owner says so.
    pub fn gate(&self, name: &str) -> ReadyGate {
        let gate = ReadyGate {
            name: name.into(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        self.gates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(gate.clone());
        gate
    }

    /// `Ok(text)` when the loop ticked within [`STALE_AFTER`] (or the daemon is still in its
    /// startup grace), else `Err(why)`.
    pub fn live(&self) -> Result<String, String> {
        self.live_at(self.started.elapsed())
    }

    fn live_at(&self, now: Duration) -> Result<String, String> {
        match self.last_tick.load(Ordering::Relaxed) {
            0 if now < STARTUP_GRACE => Ok("starting\n".into()),
            0 => Err(format!(
                "the pipeline loop has not started after {}s\n",
                now.as_secs()
            )),
            t => {
                let age = now.saturating_sub(Duration::from_millis(t - 1));
                if age < STALE_AFTER {
                    Ok("ok\n".into())
                } else {
                    Err(format!(
                        "the pipeline loop last ticked {:.1}s ago\n",
                        age.as_secs_f64()
                    ))
                }
            }
        }
    }

    /// `Ok` when the probes are attached and every gate is set, else `Err` naming what is not.
    pub fn ready(&self) -> Result<String, String> {
        let mut missing = String::new();
        if !self.attached.load(Ordering::Relaxed) {
            missing.push_str("probes not attached\n");
        }
        for gate in self.gates.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if !gate.is_ready() {
                let _ = writeln!(missing, "{} not ready", gate.name);
            }
        }
        if missing.is_empty() {
            Ok("ok\n".into())
        } else {
            Err(missing)
        }
    }
}

/// The pipeline's hooks that keep `health` and `metrics` up to date.
pub fn pipeline_hooks(health: Arc<Health>, metrics: Arc<Metrics>) -> crate::pipeline::Hooks {
    let (h1, h2, m1, m2) = (health.clone(), health, metrics.clone(), metrics);
    crate::pipeline::Hooks {
        attached: Some(Box::new(move |on| h1.set_attached(on))),
        tick: Some(Box::new(move |stats| {
            h2.ticked();
            m1.publish(stats);
        })),
        record: Some(Box::new(move |r| m2.observe(r))),
    }
}

/// The running listener. Dropping it leaves the thread serving until the process exits
/// (the daemon stops with it).
pub struct Listener {
    addr: SocketAddr,
}

impl Listener {
    /// Binds `addr` now (so a busy port is a startup error) and serves on a thread of its own.
    pub fn start(
        addr: SocketAddr,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServeError> {
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|source| ServeError::Bind { addr, source })?;
        std_listener
            .set_nonblocking(true)
            .map_err(ServeError::Start)?;
        let bound = std_listener.local_addr().map_err(ServeError::Start)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ServeError::Start)?;
        std::thread::Builder::new()
            .name("mongowatch-listen".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            warn!("the --listen listener could not start: {e}");
                            return;
                        }
                    };
                    serve(listener, health, metrics).await
                })
            })
            .map_err(ServeError::Start)?;
        info!(addr = %bound, "serving /healthz, /readyz and /metrics");
        Ok(Self { addr: bound })
    }

    /// The bound address (the port the kernel chose for `:0`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Arc<Metrics>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning.
                warn!("--listen: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &health, &metrics).await {
                debug!(%peer, "--listen: {e}");
            }
        });
    }
}

/// A response: status code and reason, content type, body.
#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn text(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }
}

/// Answers one request head (everything up to the blank line).
pub fn respond(head: &[u8], health: &Health, metrics: &Metrics) -> Response {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    if !matches!(version, Some(v) if v.starts_with("HTTP/1.")) {
        return Response::text(400, "bad request\n".into());
    }
    if !matches!(method, Some("GET" | "HEAD")) {
        return Response::text(405, "only GET and HEAD\n".into());
    }
    // Query strings are ignored (a probe may add one).
    let path = target.unwrap_or("").split('?').next().unwrap_or("");
    let status = |r: Result<String, String>| match r {
        Ok(body) => Response::text(200, body),
        Err(body) => Response::text(503, body),
    };
    match path {
        "/healthz" | "/livez" => status(health.live()),
        "/readyz" => status(health.ready()),
        "/metrics" => match metrics.render() {
            Ok(body) => Response {
                status: 200,
                content_type: metrics::CONTENT_TYPE,
                body,
            },
            Err(e) => Response::text(500, format!("encoding metrics: {e}\n")),
        },
        _ => Response::text(404, "not found (try /healthz, /readyz, /metrics)\n".into()),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

async fn handle(mut stream: TcpStream, health: &Health, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_REQUEST_HEAD {
            break false;
        }
        let n = match tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    };
    let is_head = head.starts_with(b"HEAD ");
    let response = if complete {
        respond(&head, health, metrics)
    } else {
        Response::text(431, "request head too large\n".into())
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if !is_head {
        out.extend_from_slice(response.body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, h: &Health, m: &Metrics) -> Response {
        respond(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            h,
            m,
        )
    }

    #[test]
    fn healthz_follows_the_loop_ticks() {
        let h = Health::new();
        assert!(h.live_at(Duration::from_secs(1)).is_ok(), "startup grace");
        assert!(h.live_at(STARTUP_GRACE).is_err(), "never started");
        h.last_tick.store(1_000 + 1, Ordering::Relaxed);
        assert_eq!(h.live_at(Duration::from_secs(5)), Ok("ok\n".into()));
        let err = h.live_at(Duration::from_secs(12)).unwrap_err();
        assert!(err.contains("11.0s ago"), "{err}");
    }

    #[test]
    fn readyz_waits_for_probes_and_gates() {
        let h = Health::new();
        let m = Metrics::new();
        let r = get("/readyz", &h, &m);
        assert_eq!((r.status, r.body.as_str()), (503, "probes not attached\n"));
        let pods = h.gate("pod metadata");
        h.set_attached(true);
        let r = get("/readyz", &h, &m);
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "pod metadata not ready\n")
        );
        pods.set(true);
        assert_eq!(get("/readyz?verbose", &h, &m).status, 200);
    }

    #[test]
    fn routes_and_bad_requests() {
        let (h, m) = (Health::new(), Metrics::new());
        h.ticked();
        assert_eq!(get("/healthz", &h, &m).status, 200);
        let r = get("/metrics", &h, &m);
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, metrics::CONTENT_TYPE);
        assert_eq!(get("/nope", &h, &m).status, 404);
        assert_eq!(
            respond(b"POST /metrics HTTP/1.1\r\n\r\n", &h, &m).status,
            405
        );
        assert_eq!(respond(b"\x16\x03\x01garbage\r\n\r\n", &h, &m).status, 400);
        assert_eq!(respond(b"", &h, &m).status, 400);
    }

    /// The real server on a real socket: one request, one response, connection closed.
    #[test]
    fn serves_over_tcp() {
        use std::io::{Read, Write};
        let health = Arc::new(Health::new());
        health.ticked();
        let l = Listener::start(
            "127.0.0.1:0".parse().unwrap(),
            health,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let mut s = std::net::TcpStream::connect(l.addr()).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nok\n"), "{out}");
        assert!(out.contains("Content-Length: 3\r\n"), "{out}");
    }
}
