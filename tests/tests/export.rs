//! Issue 11's export acceptance, end to end and as root: the `--listen` listener scraped by a
//! real Prometheus, and OTLP logs received by a real OTLP receiver, both during the pymongo
//! audit workload (`tests/workloads/audit_pymongo.py`), whose `CommandListener` oracle says
//! which operations happened ([`oracle_ops::group_operations`]).
//!
//! The OTLP receiver is `tests/workloads/otlp_receiver.py`: PyPI's `opentelemetry-proto`
//! `LogsServiceServicer` on grpcio for gRPC, and an `http.server` decoding
//! `ExportLogsServiceRequest` with the same messages for http/protobuf. Each LogRecord it gets
//! must carry the whole record as its body (equal to the JSON line on stdout, and matching the
//! oracle one to one), and the semantic-convention attributes, checked against the oracle.
//!
//! mongowatch also watches an idle `sleep`, so it keeps serving after the workload exits and
//! the last scrape (or export) can be waited for.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use mongowatch_tests::{
    oracle_ops::{self, match_records, ExpectedOp, ProcessOracle},
    paths,
    server::free_port,
    skip_unless, ChildGuard, Driver, Mongowatch, Need, Server, ServerKind,
};
use serde_json::Value;

const DB: &str = "mongowatch_export";

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP head in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    // Prometheus answers its API in chunks; the listener never does.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The pymongo audit workload (gated on a start file), an idle process beside it, and
/// mongowatch watching both with `extra` arguments (and `env`).
struct Run {
    server: Server,
    _dir: tempfile::TempDir,
    workload: ChildGuard,
    _keeper: ChildGuard,
    oracle: PathBuf,
    start: PathBuf,
    stderr: PathBuf,
    mw: Mongowatch,
    /// When the workload was let go (its first operation follows at once).
    released: Option<Instant>,
}

impl Run {
    fn start(extra: &[&str], env: &[(&str, &str)]) -> Result<Run> {
        let server = Server::start(ServerKind::SecantusPy)?;
        let dir = tempfile::Builder::new()
            .prefix("mongowatch-export-")
            .tempdir()?;
        let oracle = dir.path().join("oracle.jsonl");
        let start = dir.path().join("start");
        let stderr = dir.path().join("workload.stderr");
        let mut cmd = Driver::Pymongo.command(&paths::workloads_dir().join("audit_pymongo.py"));
        cmd.current_dir(dir.path())
            .args(["--uri", &server.uri(), "--db", DB, "--hold", "0.2"])
            .arg("--out")
            .arg(&oracle)
            .arg("--start-file")
            .arg(&start)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr)?);
        let workload = ChildGuard::spawn("pymongo audit workload", &mut cmd)?;
        let keeper = ChildGuard::spawn(
            "idle keeper",
            Command::new("sleep").arg("600").stdin(Stdio::null()),
        )?;
        let mut args = vec![
            "--pid".to_string(),
            workload.pid().to_string(),
            "--pid".to_string(),
            keeper.pid().to_string(),
            "--stats".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mw = Mongowatch::spawn_with_env(args, env)?;
        Ok(Run {
            server,
            _dir: dir,
            workload,
            _keeper: keeper,
            oracle,
            start,
            stderr,
            mw,
            released: None,
        })
    }

    /// Releases the workload and waits for it; returns the oracle's operations, once
    /// mongowatch has written a record for each.
    fn run_workload(&mut self) -> Result<(Vec<ExpectedOp>, Vec<Value>)> {
        self.mw
            .wait_for_stderr("watching", Duration::from_secs(60))?;
        fs::write(&self.start, b"")?;
        self.released = Some(Instant::now());
        let status = self.workload.wait_exit(Duration::from_secs(240))?;
        ensure!(
            status.success(),
            "the workload failed: {}",
            fs::read_to_string(&self.stderr).unwrap_or_default()
        );
        let ops = oracle_ops::group_operations(&oracle_ops::read_events(&self.oracle)?)?;
        ensure!(
            ops.len() > 20,
            "a workload of only {} operations",
            ops.len()
        );
        let records = self
            .mw
            .wait_for_records(ops.len(), Duration::from_secs(30))?;
        ensure!(
            records.len() == ops.len(),
            "{} records for {} operations",
            records.len(),
            ops.len()
        );
        Ok((ops, records))
    }
}

/// Prometheus 2.x from Debian, scraping `target` every second.
struct Prometheus {
    _guard: ChildGuard,
    _dir: tempfile::TempDir,
    addr: String,
}

impl Prometheus {
    fn start(target: &str) -> Result<Prometheus> {
        let dir = tempfile::Builder::new()
            .prefix("mongowatch-prom-")
            .tempdir()?;
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: mongowatch\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("prometheus.log"))?);
        let guard = ChildGuard::spawn("prometheus", &mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(http_get(&addr, "/-/ready"), Ok((200, _))) {
            if Instant::now() > deadline {
                bail!(
                    "prometheus not ready: {}",
                    fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(Prometheus {
            _guard: guard,
            _dir: dir,
            addr,
        })
    }

    /// An instant query's vector: labels -> value.
    fn query(&self, q: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let (status, body) = http_get(
            &self.addr,
            &format!("/api/v1/query?query={}", url_encode(q)),
        )?;
        ensure!(status == 200, "query {q}: {status} {body}");
        let v: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        let mut out = Vec::new();
        for s in v["data"]["result"].as_array().context("no result")? {
            let labels = s["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let value: f64 = s["value"][1].as_str().unwrap_or("nan").parse()?;
            out.push((labels, value));
        }
        Ok(out)
    }
}

fn ops_by_name(ops: &[ExpectedOp]) -> BTreeMap<String, f64> {
    let mut by = BTreeMap::new();
    for op in ops {
        *by.entry(op.operation.clone()).or_insert(0.0) += 1.0;
    }
    by
}

/// Prometheus scrapes `/metrics` during the workload: the duration histogram counts every
/// operation once, by name as the oracle has them; its buckets are the conventions';
/// `promtool check metrics` finds nothing to say; /healthz and /readyz answer 200.
#[test]
fn prometheus_scrapes_one_observation_per_operation() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo,
        Need::Program("prometheus"), Need::Program("promtool"));
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut run = Run::start(&["--listen", &listen], &[])?;
    let prom = Prometheus::start(&listen)?;
    run.mw
        .wait_for_stderr("watching", Duration::from_secs(60))?;
    let (status, body) = http_get(&listen, "/readyz")?;
    ensure!(status == 200, "/readyz once watching: {status} {body}");
    let (status, body) = http_get(&listen, "/healthz")?;
    ensure!(status == 200, "/healthz: {status} {body}");
    // Prometheus scrapes once a second from its own start: the workload (a few seconds on an
    // idle machine) is released only once a scrape has seen both watched processes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let watched = prom.query("mongowatch_watched_processes")?;
        if watched.len() == 1 && watched[0].1 == 2.0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no scrape saw the two watched processes: {watched:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ops, _records) = run.run_workload()?;
    let want = ops_by_name(&ops);
    // Scraped every second: wait for a scrape that saw every operation.
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got: BTreeMap<String, f64> = prom
            .query("sum by (db_operation_name) (db_client_operation_duration_seconds_count{job=\"mongowatch\"})")?
            .into_iter()
            .map(|(l, v)| (l.get("db_operation_name").cloned().unwrap_or_default(), v))
            .collect();
        if got == want || Instant::now() > deadline {
            break got;
        }
        thread::sleep(Duration::from_millis(250));
    };
    ensure!(
        got == want,
        "operations by name: Prometheus {got:?}, oracle {want:?}"
    );
    let total = prom.query("sum(db_client_operation_duration_seconds_count)")?;
    ensure!(
        total.len() == 1 && total[0].1 == ops.len() as f64,
        "histogram count {total:?}, oracle {} operations",
        ops.len()
    );
    // The semantic conventions' buckets, and the labels of every series.
    let les: Vec<String> = prom
        .query("count by (le) (db_client_operation_duration_seconds_bucket)")?
        .into_iter()
        .filter_map(|(l, _)| l.get("le").cloned())
        .collect();
    let mut les: Vec<f64> = les.iter().filter_map(|l| l.parse().ok()).collect();
    les.sort_by(f64::total_cmp);
    ensure!(
        les == [
            0.001,
            0.005,
            0.01,
            0.05,
            0.1,
            0.5,
            1.0,
            5.0,
            10.0,
            f64::INFINITY
        ],
        "buckets {les:?}"
    );
    for (labels, _) in prom.query("db_client_operation_duration_seconds_count")? {
        ensure!(
            labels.get("db_system_name").map(String::as_str) == Some("mongodb")
                && labels.get("server_address").map(String::as_str) == Some("127.0.0.1")
                && labels.contains_key("db_namespace"),
            "a series without its labels: {labels:?}"
        );
    }
    // The duplicate key and the unknown command carry error_type.
    let errors: Vec<String> = prom
        .query(
            "sum by (error_type) (db_client_operation_duration_seconds_count{error_type!=\"\"})",
        )?
        .into_iter()
        .filter_map(|(l, _)| l.get("error_type").cloned())
        .collect();
    let want_errors = ops.iter().filter(|o| o.error.is_some()).count();
    ensure!(
        want_errors > 0 && !errors.is_empty(),
        "error types {errors:?}"
    );
    // mongowatch's own health, from the same scrapes. Two were watched while the workload
    // ran; it has exited by now, and the last scrapes say so: one is left.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let watched = prom.query("mongowatch_watched_processes")?;
        if watched.len() == 1 && watched[0].1 == 1.0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the exited workload is still counted as watched: {watched:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lost = prom.query("mongowatch_kernel_events_lost_total")?;
    ensure!(lost.len() == 1 && lost[0].1 == 0.0, "events lost {lost:?}");
    let fill = prom.query("max_over_time(mongowatch_ring_fill_ratio[1m])")?;
    ensure!(
        fill.len() == 1 && (0.0..1.0).contains(&fill[0].1),
        "ring fill {fill:?}"
    );
    // Published once a second, so it may trail the histogram by a scrape or two.
    let deadline = Instant::now() + Duration::from_secs(10);
    let written = loop {
        let w = prom.query("mongowatch_records_written_total{output=\"stdout\"}")?;
        if (w.len() == 1 && w[0].1 == ops.len() as f64) || Instant::now() > deadline {
            break w;
        }
        thread::sleep(Duration::from_millis(250));
    };
    ensure!(
        written.len() == 1 && written[0].1 == ops.len() as f64,
        "records written {written:?}"
    );
    // promtool's own lint of the exposition.
    let (status, metrics) = http_get(&listen, "/metrics")?;
    ensure!(status == 200, "/metrics {status}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    promtool
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(metrics.as_bytes())?;
    let out = promtool.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}: {said}\n{metrics}",
        out.status
    );
    run.mw.stop()?;
    eprintln!(
        "prometheus: {} operations scraped, by name {got:?}; {} bytes of /metrics",
        ops.len(),
        metrics.len()
    );
    Ok(())
}

/// The OTLP receiver (see the module doc), started on `port`.
struct Receiver {
    _guard: ChildGuard,
    out: PathBuf,
}

impl Receiver {
    fn start(protocol: &str, port: u16, dir: &std::path::Path) -> Result<Receiver> {
        let out = dir.join(format!("otlp-{protocol}.jsonl"));
        let ready = dir.join(format!("otlp-{protocol}.ready"));
        let _ = fs::remove_file(&ready);
        let mut cmd = Command::new(paths::venv_python());
        cmd.arg(paths::workloads_dir().join("otlp_receiver.py"))
            .args(["--protocol", protocol, "--port", &port.to_string()])
            .arg("--out")
            .arg(&out)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(
                dir.join(format!("otlp-{protocol}.stderr")),
            )?);
        let mut guard = ChildGuard::spawn(format!("OTLP {protocol} receiver"), &mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            ensure!(
                guard.is_running() && Instant::now() < deadline,
                "the OTLP receiver did not start: {}",
                fs::read_to_string(dir.join(format!("otlp-{protocol}.stderr"))).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
        Ok(Receiver { _guard: guard, out })
    }

    fn log_records(&self) -> Result<Vec<Value>> {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).with_context(|| l.to_string()))
            .collect()
    }

    fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.log_records()?;
            if got.len() >= n || Instant::now() > deadline {
                return Ok(got);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Nanoseconds since the epoch of an RFC 3339 UTC time with microseconds, as records have.
fn rfc3339_us_to_ns(t: &str) -> Option<u64> {
    let (date, time) = t.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.')?;
    let mut h = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let us: i64 = frac.parse().ok()?;
    u64::try_from(secs * 1_000_000_000 + us * 1000).ok()
}

/// The pymongo workload exported over `protocol` ("grpc" or "http"); with `down_for`, the
/// receiver only starts that long after the workload's first operation.
fn otlp_suite(protocol: &str, down_for: Option<Duration>) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("mongowatch-otlp-")
        .tempdir()?;
    let port = free_port()?;
    let mut receiver = match down_for {
        None => Some(Receiver::start(protocol, port, dir.path())?),
        Some(_) => None,
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let wire = if protocol == "grpc" {
        "grpc"
    } else {
        "http/protobuf"
    };
    let mut run = Run::start(
        &["--otlp-endpoint", &endpoint, "--otlp-protocol", wire],
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "k8s.node.name=node-1,deployment.environment.name=e2e",
        )],
    )?;
    let comm = fs::read_to_string(format!("/proc/{}/comm", run.workload.pid()))?
        .trim()
        .to_string();
    let pid = run.workload.pid();
    let (ops, records) = run.run_workload()?;
    if let Some(down) = down_for {
        // Down from before the first operation until `down` after it.
        let since = run.released.context("not released")?.elapsed();
        thread::sleep(down.saturating_sub(since));
        receiver = Some(Receiver::start(protocol, port, dir.path())?);
    }
    let receiver = receiver.context("no receiver")?;
    let logs = receiver.wait_for(ops.len(), Duration::from_secs(30))?;
    run.mw.stop()?;
    let stats = run.mw.stats()?;
    let otlp = &stats["audit"]["otlp"];
    ensure!(
        logs.len() == ops.len(),
        "{} LogRecords for {} operations; OTLP stats {otlp}",
        logs.len(),
        ops.len()
    );
    ensure!(
        otlp["exported"] == ops.len() as u64
            && otlp["dropped_queue_full"] == 0
            && otlp["rejected"] == 0
            && otlp["unsent_at_exit"] == 0,
        "OTLP stats {otlp}"
    );
    if down_for.is_some() {
        ensure!(
            otlp["retries"].as_u64() >= Some(1),
            "no retry while the receiver was down: {otlp}"
        );
    }
    // The body is the whole record: equal to the JSON line on stdout with its WatchID.
    let by_id: BTreeMap<&str, &Value> = records
        .iter()
        .map(|r| (r["WatchID"].as_str().unwrap_or(""), r))
        .collect();
    let bodies: Vec<Value> = logs.iter().map(|l| l["body"].clone()).collect();
    for b in &bodies {
        let id = b["WatchID"].as_str().unwrap_or("");
        ensure!(
            by_id.get(id) == Some(&b),
            "a LogRecord body differs from its record:\n{b}\n{:?}",
            by_id.get(id)
        );
    }
    // One to one with the driver's own monitoring.
    let matched = match_records(
        &[ProcessOracle {
            pid,
            ops: ops.clone(),
            killed: false,
        }],
        &bodies,
        Some(None),
    )?;
    ensure!(
        matched.len() == ops.len(),
        "{} matched of {}",
        matched.len(),
        ops.len()
    );
    let log_of: BTreeMap<&str, &Value> = logs
        .iter()
        .map(|l| {
            (
                l["attributes"]["mongowatch.watch_id"]
                    .as_str()
                    .unwrap_or(""),
                l,
            )
        })
        .collect();
    let host = fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string();
    let server_port = run.server.addr().port();
    for m in &matched {
        let l = log_of
            .get(m.chain.watch_id.as_str())
            .with_context(|| format!("no LogRecord for {}", m.chain.watch_id))?;
        let a = &l["attributes"];
        let op = &m.op;
        let mut want = serde_json::json!({
            "db.system.name": "mongodb",
            "db.namespace": op.db,
            "db.operation.name": op.operation,
            "server.address": "127.0.0.1",
            "server.port": server_port,
            "client.address": "127.0.0.1",
            "process.pid": pid,
            "process.executable.name": comm,
        });
        if let Some(c) = &op.collection {
            want["db.collection.name"] = c.as_str().into();
        }
        if let Some(n) = op.matched {
            want["db.response.returned_rows"] = n.into();
        }
        if let Some(e) = &op.error {
            if let Some(code) = e.code {
                want["db.response.status_code"] = code.to_string().into();
            }
            want["error.type"] = match (&e.code_name, e.code) {
                (Some(n), _) => n.clone(),
                (None, Some(c)) => c.to_string(),
                (None, None) => "_OTHER".into(),
            }
            .into();
        }
        for (k, v) in want.as_object().unwrap() {
            ensure!(
                &a[k] == v,
                "{}: {k} is {}, the oracle says {v}; {l}",
                op.summary(),
                a[k]
            );
        }
        for k in [
            "db.collection.name",
            "error.type",
            "db.response.status_code",
            "user.name",
        ] {
            ensure!(
                want.get(k).is_some() || a.get(k).is_none(),
                "{}: {k} should be absent: {l}",
                op.summary()
            );
        }
        ensure!(
            l["severity_text"] == if op.error.is_some() { "ERROR" } else { "INFO" },
            "severity of {}: {l}",
            op.summary()
        );
        let start =
            rfc3339_us_to_ns(l["body"]["StartTime"].as_str().unwrap_or("")).context("StartTime")?;
        let t = l["time_unix_nano"].as_u64().unwrap_or(0);
        ensure!(
            t / 1000 * 1000 == start,
            "time_unix_nano {t} is not StartTime {start}"
        );
        let r = &l["resource"];
        ensure!(
            r["service.name"] == "mongowatch"
                && r["host.name"] == host.as_str()
                && r["k8s.node.name"] == "node-1"
                && r["deployment.environment.name"] == "e2e"
                && l["scope"] == "mongowatch",
            "resource {r}"
        );
    }
    let errors = matched.iter().filter(|m| m.op.error.is_some()).count();
    ensure!(errors > 0, "the workload made no failing operation");
    eprintln!(
        "OTLP {protocol}{}: {} LogRecords for {} operations ({errors} failed); stats {otlp}",
        down_for
            .map(|d| format!(" (receiver down {d:?})"))
            .unwrap_or_default(),
        logs.len(),
        ops.len()
    );
    Ok(())
}

#[test]
fn otlp_grpc_one_log_record_per_operation() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo,
        Need::PyModule("grpc"), Need::PyModule("opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc"));
    otlp_suite("grpc", None)
}

#[test]
fn otlp_http_one_log_record_per_operation() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo,
        Need::PyModule("opentelemetry.proto.collector.logs.v1.logs_service_pb2"));
    otlp_suite("http", None)
}

/// The receiver is down from before the workload's first operation until 10 s after it, then
/// comes up: the exporter held the records and retried, and nothing is lost.
#[test]
fn otlp_receiver_down_for_10s_loses_nothing() -> Result<()> {
    skip_unless!(Ok(()); Need::Root, Need::MongowatchBin, Need::SecantusPy, Need::Pymongo,
        Need::PyModule("grpc"), Need::PyModule("opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc"));
    otlp_suite("grpc", Some(Duration::from_secs(10)))
}

#[test]
fn rfc3339_parsing() {
    assert_eq!(
        rfc3339_us_to_ns("2026-11-24T15:29:00.123456Z"),
        Some(1_795_534_140_123_456_000)
    );
}
