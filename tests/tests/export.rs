//! Issue 11's export acceptance, end to end and as root: the `--listen` listener scraped by a
//! real Prometheus, and OTLP logs received by a real OTLP receiver, both during the pymongo
//! audit workload (`tests/workloads/audit_pymongo.py`), whose `CommandListener` oracle says
//! which operations happened ([`oracle_ops::group_operations`]).
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
    oracle_ops::{self, ExpectedOp},
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
    _server: Server,
    _dir: tempfile::TempDir,
    workload: ChildGuard,
    _keeper: ChildGuard,
    oracle: PathBuf,
    start: PathBuf,
    stderr: PathBuf,
    mw: Mongowatch,
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
            _server: server,
            _dir: dir,
            workload,
            _keeper: keeper,
            oracle,
            start,
            stderr,
            mw,
        })
    }

    /// Releases the workload and waits for it; returns the oracle's operations, once
    /// mongowatch has written a record for each.
    fn run_workload(&mut self) -> Result<(Vec<ExpectedOp>, Vec<Value>)> {
        self.mw
            .wait_for_stderr("watching", Duration::from_secs(60))?;
        fs::write(&self.start, b"")?;
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
    // mongowatch's own health, from the same scrapes.
    let watched = prom.query("mongowatch_watched_processes")?;
    ensure!(
        watched.len() == 1 && watched[0].1 == 2.0,
        "watched processes {watched:?}"
    );
    let lost = prom.query("mongowatch_kernel_events_lost_total")?;
    ensure!(lost.len() == 1 && lost[0].1 == 0.0, "events lost {lost:?}");
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
