//! MongoDB-compatible servers (SecantusDB) for the tests: started on a free port of 127.0.0.1
//! with a temporary storage directory, ready once they answer `ping`, stopped by their own PID
//! when dropped.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{paths, process::ChildGuard, wire};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `secantusd-py` (PyPI SecantusDB): fast to install and start; no wire compression.
    SecantusPy,
    /// `secantusd-rs` (crates.io secantus-mdb): negotiates zlib, zstd and snappy compression.
    SecantusRs,
}

impl ServerKind {
    pub fn binary(self) -> PathBuf {
        match self {
            ServerKind::SecantusPy => paths::secantusd_py(),
            ServerKind::SecantusRs => paths::secantusd_rs(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ServerKind::SecantusPy => "secantusd-py",
            ServerKind::SecantusRs => "secantusd-rs",
        }
    }

    /// Whether `cargo xtask setup` has installed it.
    pub fn is_installed(self) -> bool {
        self.binary().is_file()
    }
}

/// How long a server gets to answer its first `ping`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server. Dropping it stops the process (SIGTERM, then SIGKILL) and removes its
/// storage directory.
pub struct Server {
    kind: ServerKind,
    addr: SocketAddr,
    /// With TLS: the self-signed certificate (also the CA drivers must trust).
    tls_cert: Option<PathBuf>,
    // Field order matters: the process stops before its directory is removed.
    process: ChildGuard,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `kind` with default options.
    pub fn start(kind: ServerKind) -> Result<Server> {
        Server::start_with_args(kind, &[])
    }

    /// Starts `kind` with extra command-line arguments (e.g. `--auth`, `--standalone`).
    pub fn start_with_args(kind: ServerKind, extra_args: &[&str]) -> Result<Server> {
        Server::start_inner(kind, false, extra_args)
    }

    /// Starts `kind` with TLS only, on a fresh self-signed certificate for 127.0.0.1 and
    /// localhost (made with the `openssl` command). [`Server::uri`] then carries `tls=true` and
    /// `tlsCAFile`. Readiness is checked with pymongo over TLS, so this needs the venv too.
    pub fn start_tls(kind: ServerKind) -> Result<Server> {
        Server::start_inner(kind, true, &[])
    }

    fn start_inner(kind: ServerKind, tls: bool, extra_args: &[&str]) -> Result<Server> {
        let binary = kind.binary();
        if !binary.is_file() {
            bail!(
                "{} is not installed at {} (run `cargo xtask setup`)",
                kind.name(),
                binary.display()
            );
        }
        // A free port can be taken between our probe and the server's bind: try a few.
        let mut last_err = None;
        for _ in 0..3 {
            match Server::try_start(kind, &binary, tls, extra_args) {
                Ok(server) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap())
    }

    fn try_start(
        kind: ServerKind,
        binary: &Path,
        tls: bool,
        extra_args: &[&str],
    ) -> Result<Server> {
        let dir = paths::temp_dir(&format!("mongowatch-{}-", kind.name()))
            .context("creating the server's temp dir")?;
        let port = free_port()?;
        let tls_files = if tls {
            Some(self_signed_cert(dir.path())?)
        } else {
            None
        };
        let process = launch(
            kind,
            binary,
            dir.path(),
            port,
            tls_files.as_ref(),
            extra_args,
        )?;
        let mut server = Server {
            kind,
            addr: ([127, 0, 0, 1], port).into(),
            tls_cert: tls_files.map(|(cert, _)| cert),
            process,
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Stops the server and starts it again on the same port and storage with other extra
    /// arguments (e.g. users made without `--auth`, then a restart with it). A TLS server
    /// cannot be restarted this way.
    pub fn restart_with_args(&mut self, extra_args: &[&str]) -> Result<()> {
        ensure!(self.tls_cert.is_none(), "restarting a TLS server");
        self.process.stop()?;
        // The log is appended to, not truncated: it tells both runs.
        self.process = launch(
            self.kind,
            &self.kind.binary(),
            self.dir.path(),
            self.port(),
            None,
            extra_args,
        )?;
        self.wait_ready()
    }

    /// Waits until the server answers `ping` (or exits, or READY_TIMEOUT passes).
    fn wait_ready(&mut self) -> Result<()> {
        let (kind, addr) = (self.kind, self.addr);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "{} exited with {status} before answering ping on {addr}; its log:\n{}",
                    kind.name(),
                    self.log_tail()
                );
            }
            match self.ping() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    let log = self.log_tail();
                    let name = kind.name();
                    return Err(e).with_context(|| {
                        format!("{name} did not answer ping on {addr} in {READY_TIMEOUT:?}; log:\n{log}")
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Runs `{ping: 1}` (a raw OP_MSG; with TLS, through pymongo).
    pub fn ping(&self) -> Result<()> {
        match &self.tls_cert {
            None => wire::ping(self.addr, Duration::from_secs(2)),
            Some(_) => {
                let script = "import sys, pymongo\n\
                    c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=2000)\n\
                    c.admin.command('ping')\n";
                let out = Command::new(paths::venv_python())
                    .args(["-c", script])
                    .arg(self.uri())
                    .stdin(Stdio::null())
                    .output()
                    .context("running pymongo to ping over TLS")?;
                if out.status.success() {
                    Ok(())
                } else {
                    bail!(
                        "TLS ping failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                }
            }
        }
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `mongodb://127.0.0.1:PORT/?directConnection=true`. SecantusDB advertises itself as a
    /// single-node replica set; `directConnection` keeps drivers on this address (which matters
    /// when they go through a proxy).
    pub fn uri(&self) -> String {
        self.uri_via(self.addr)
    }

    /// The URI of this server reached at `addr` (a [`crate::RecordingProxy`] in front of it),
    /// with this server's TLS options.
    pub fn uri_via(&self, addr: SocketAddr) -> String {
        match &self.tls_cert {
            None => format!("mongodb://{addr}/?directConnection=true"),
            Some(cert) => format!(
                "mongodb://{addr}/?directConnection=true&tls=true&tlsCAFile={}",
                cert.display()
            ),
        }
    }

    /// With TLS, the certificate drivers must trust (`tlsCAFile`).
    pub fn tls_ca_file(&self) -> Option<&Path> {
        self.tls_cert.as_deref()
    }

    /// The server process's PID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The server's temporary directory (storage and `server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("server.log"))
    }

    /// Stops the server now (dropping does the same).
    pub fn stop(mut self) -> Result<()> {
        self.process.stop().map(|_| ())
    }
}

/// Spawns `binary` on 127.0.0.1:`port` with its storage and log (`server.log`, appended) in
/// `dir`, TLS-only with `tls` = (certificate, key).
fn launch(
    kind: ServerKind,
    binary: &Path,
    dir: &Path,
    port: u16,
    tls: Option<&(PathBuf, PathBuf)>,
    extra_args: &[&str],
) -> Result<ChildGuard> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .context("opening the server log")?;
    let mut cmd = Command::new(binary);
    cmd.current_dir(dir)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--storage-path")
        .arg(dir.join("data"));
    if kind == ServerKind::SecantusRs {
        cmd.args(["--cache-size", "256M", "--log-file-max", "16MB"]);
    }
    if let Some((cert, key)) = tls {
        cmd.arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key);
    }
    cmd.args(extra_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    ChildGuard::spawn(kind.name(), &mut cmd)
}

/// Writes a self-signed certificate and key for 127.0.0.1/localhost into `dir`.
pub fn self_signed_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .context("running openssl to make a test certificate")?;
    if !out.status.success() {
        bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((cert, key))
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("probing for a free port")?;
    Ok(listener.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
