//! A small client of the Kubernetes API on the in-cluster service account: it lists the pods
//! of this node, then watches them (`watch=1`, resumed from the last resourceVersion, listed
//! again when that is too old), and hands every change to the daemon over a channel. One
//! thread; HTTP/1.1 GETs over rustls, the token read anew for every request (bound tokens
//! rotate).

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    path::PathBuf,
    sync::{mpsc::Sender, Arc},
    time::Duration,
};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, ServerName},
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
};
use tracing::{debug, warn};

use super::{parse_event, parse_list, ApiError, PodUpdate, WatchEvent};

/// Where the service account's token and CA are mounted in every pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Overrides [`SERVICE_ACCOUNT_DIR`] (tests, or a token mounted elsewhere).
pub const SERVICE_ACCOUNT_DIR_VAR: &str = "MONGOWATCH_K8S_SA_DIR";
/// A watch is closed by the server after this long, and opened again from where it was.
const WATCH_SECONDS: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("reading the service account's {what} ({path}): {source}")]
    ServiceAccount {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the service account's CA file has no usable certificate")]
    NoCa,
    #[error("bad API server host `{0}`")]
    Host(String),
    #[error("the API server answered {status}: {body}")]
    Http { status: u16, body: String },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
}

/// How to reach the API server.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub host: String,
    pub port: u16,
    pub sa_dir: PathBuf,
    /// Only the pods of this node are listed (`spec.nodeName`).
    pub node: String,
}

impl ApiConfig {
    /// Inside a pod: `KUBERNETES_SERVICE_HOST`/`_PORT` (set in every container) and the mounted
    /// service account. `None` outside a cluster.
    pub fn in_cluster(node: &str) -> Option<ApiConfig> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        let sa_dir = std::env::var_os(SERVICE_ACCOUNT_DIR_VAR)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR));
        Some(ApiConfig {
            host,
            port,
            sa_dir,
            node: node.to_string(),
        })
    }

    fn read(&self, what: &'static str, file: &str) -> Result<Vec<u8>, ClientError> {
        let path = self.sa_dir.join(file);
        std::fs::read(&path).map_err(|source| ClientError::ServiceAccount { what, path, source })
    }

    fn tls(&self) -> Result<Arc<ClientConfig>, ClientError> {
        let pem = self.read("CA", "ca.crt")?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(ClientError::NoCa);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    fn pods_path(&self, watch_from: Option<&str>) -> String {
        let mut path = format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            url_escape(&self.node)
        );
        if let Some(rv) = watch_from {
            path += &format!(
                "&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={}",
                url_escape(rv)
            );
        }
        path
    }

    /// `GET path`: the status was 200; the body follows.
    fn get(&self, tls: &Arc<ClientConfig>, path: &str) -> Result<Body, ClientError> {
        let token = String::from_utf8_lossy(&self.read("token", "token")?)
            .trim()
            .to_string();
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| ClientError::Host(self.host.clone()))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        tcp.set_read_timeout(Some(Duration::from_secs(WATCH_SECONDS + 30)))?;
        let name = ServerName::try_from(self.host.trim_matches(['[', ']']).to_string())
            .map_err(|_| ClientError::Host(self.host.clone()))?;
        let conn = ClientConnection::new(tls.clone(), name)?;
        let mut stream = StreamOwned::new(conn, tcp);
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nAuthorization: Bearer {token}\r\n\
             Accept: application/json\r\nUser-Agent: mongowatch\r\nConnection: close\r\n\r\n",
            self.host, self.port
        )?;
        stream.flush()?;
        let mut reader = BufReader::new(stream);
        let (status, chunked, length) = read_head(&mut reader)?;
        let body = Body::new(reader, chunked, length);
        if status != 200 {
            let mut text = String::new();
            let _ = body.take(4096).read_to_string(&mut text);
            return Err(ClientError::Http { status, body: text });
        }
        Ok(body)
    }

    /// Lists the pods of the node: them, and the resourceVersion to watch from.
    fn list(&self, tls: &Arc<ClientConfig>) -> Result<(Vec<super::Pod>, String), ClientError> {
        let mut body = Vec::new();
        self.get(tls, &self.pods_path(None))?
            .take(256 << 20)
            .read_to_end(&mut body)?;
        Ok(parse_list(&body)?)
    }

    /// Watches from `rv`, sending each change; returns the resourceVersion to go on from, or
    /// `None` when it is too old (list again).
    fn watch(
        &self,
        tls: &Arc<ClientConfig>,
        mut rv: String,
        tx: &Sender<PodUpdate>,
    ) -> Result<Option<String>, ClientError> {
        let mut body = BufReader::new(self.get(tls, &self.pods_path(Some(&rv)))?);
        let mut line = Vec::new();
        loop {
            line.clear();
            if body.read_until(b'\n', &mut line)? == 0 {
                return Ok(Some(rv));
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let update = match parse_event(&line)? {
                WatchEvent::Upsert(pod, v) => {
                    rv = v;
                    PodUpdate::Upsert(pod)
                }
                WatchEvent::Deleted(pod, v) => {
                    rv = v;
                    PodUpdate::Deleted(pod)
                }
                WatchEvent::Bookmark(v) => {
                    rv = v;
                    continue;
                }
                WatchEvent::Expired => return Ok(None),
            };
            if tx.send(update).is_err() {
                // The daemon is stopping.
                return Ok(Some(rv));
            }
        }
    }
}

/// Starts the thread that keeps the daemon's pod index current. It stops when the receiver
/// is dropped.
pub fn spawn(config: ApiConfig, tx: Sender<PodUpdate>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("k8s-pods".into())
        .spawn(move || run(config, tx))?;
    Ok(())
}

fn run(config: ApiConfig, tx: Sender<PodUpdate>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let result = (|| -> Result<(), ClientError> {
            let tls = config.tls()?;
            let (pods, mut rv) = config.list(&tls)?;
            debug!(pods = pods.len(), node = %config.node, "listed the node's pods");
            if tx.send(PodUpdate::Synced(pods)).is_err() {
                return Ok(());
            }
            backoff = Duration::from_millis(500);
            // A closed watch is opened again from where it was; one too old means a new list.
            while let Some(next) = config.watch(&tls, rv, &tx)? {
                rv = next;
            }
            Ok(())
        })();
        if let Err(e) = result {
            warn!("pod metadata from the Kubernetes API: {e}; retrying in {backoff:?}");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads the status line and headers: (status, chunked, content length).
fn read_head(r: &mut impl BufRead) -> Result<(u16, bool, Option<u64>), ClientError> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Malformed(format!("status line {line:?}")))?;
    let (mut chunked, mut length) = (false, None);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(ClientError::Malformed("headers cut short".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, chunked, length));
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse().ok();
            }
        }
    }
}

/// A response body: chunked, of a known length, or up to the close.
pub struct Body {
    inner: Box<dyn BufRead + Send>,
    chunked: bool,
    /// Bytes left of the current chunk, or of the whole body.
    left: Option<u64>,
    done: bool,
}

impl Body {
    fn new(inner: impl BufRead + Send + 'static, chunked: bool, length: Option<u64>) -> Self {
        Body {
            inner: Box::new(inner),
            chunked,
            left: if chunked { Some(0) } else { length },
            done: false,
        }
    }

    /// A body over any reader (tests).
    pub fn from_reader(inner: impl BufRead + Send + 'static, chunked: bool) -> Self {
        Body::new(inner, chunked, None)
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.chunked && self.left == Some(0) {
            let mut size = String::new();
            // The CRLF that ends the previous chunk, then the size line.
            while size.trim().is_empty() {
                size.clear();
                if self.inner.read_line(&mut size)? == 0 {
                    self.done = true;
                    return Ok(0);
                }
            }
            let hex = size.trim().split(';').next().unwrap_or("");
            let n = u64::from_str_radix(hex, 16).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {hex:?}"))
            })?;
            if n == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = Some(n);
        }
        let want = match self.left {
            Some(0) => {
                self.done = true;
                return Ok(0);
            }
            Some(n) => buf.len().min(usize::try_from(n).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let got = self.inner.read(&mut buf[..want])?;
        if got == 0 {
            self.done = true;
            if self.left.is_some_and(|n| n > 0) {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        if let Some(n) = &mut self.left {
            *n -= got as u64;
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n".to_vec();
        let mut out = String::new();
        Body::from_reader(io::Cursor::new(wire), true)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello, world");
        let bad = b"zz\r\nhello\r\n".to_vec();
        assert!(Body::from_reader(io::Cursor::new(bad), true)
            .read_to_string(&mut String::new())
            .is_err());
    }

    #[test]
    fn heads_and_paths() {
        let mut r = io::Cursor::new(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
        );
        assert_eq!(read_head(&mut r).unwrap(), (200, true, None));
        let mut r =
            io::Cursor::new(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n{}".to_vec());
        assert_eq!(read_head(&mut r).unwrap(), (403, false, Some(2)));
        let c = ApiConfig {
            host: "10.0.0.1".into(),
            port: 443,
            sa_dir: PathBuf::new(),
            node: "node 1".into(),
        };
        assert_eq!(
            c.pods_path(Some("12")),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode%201&watch=1&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion=12"
        );
    }
}
