//! `cargo xtask bench tls`: what reading TLS plaintext costs, as ratios measured in one run
//! (root).
//!
//! 1. The pymongo workload over TLS (secantusd-py with a throwaway certificate): its
//!    throughput with `mongowatch --pid` reading its plaintext from libssl, divided by its
//!    throughput without; the events lost; and that every record says `Tls: true`.
//! 2. What a process that is NOT watched but uses the same libssl pays once mongowatch has
//!    hooked that library for a watched process (the uprobes are attached per file and return
//!    at once for other processes): round trips per second of a TLS ping-pong in Python (one
//!    byte each way over loopback: two `SSL_write` and two `SSL_read` per round trip), with
//!    and without, and the microseconds each `SSL_*` call gains.
//!
//! Runs alternate (ABBA) and the medians are compared, so a noisy machine shifts both sides
//! alike. Prints a table and one JSON line. `BENCH_OPS` sets the workload's size (default
//! 1000), `BENCH_TRIPS` the ping-pong's (default 20000).

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use mongowatch_tests::{
    bench::{abba, median},
    is_root, paths,
    server::self_signed_cert,
    ChildGuard, Driver, Mongowatch, Server, ServerKind, WorkloadSpec,
};
use serde_json::json;

const ROUNDS: usize = 4;

/// A TLS echo in one process: a server thread and the client, both on Python's `ssl` (the
/// system libssl), over a loopback TCP connection with Nagle off. Prints round trips/s.
const PING_PONG: &str = r#"
import socket, ssl, sys, threading, time
cert, key, trips = sys.argv[1], sys.argv[2], int(sys.argv[3])
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(cert, key)
client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_ctx.check_hostname = False
client_ctx.verify_mode = ssl.CERT_NONE
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
def serve():
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = server_ctx.wrap_socket(conn, server_side=True)
    for _ in range(trips):
        s.sendall(s.recv(1))
    s.close()
echo = threading.Thread(target=serve)
echo.start()
conn = socket.create_connection(listener.getsockname())
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s = client_ctx.wrap_socket(conn)
start = time.perf_counter()
for _ in range(trips):
    s.sendall(b"x")
    assert s.recv(1) == b"x"
elapsed = time.perf_counter() - start
echo.join()
print(trips / elapsed)
"#;

/// (ops/s, events lost, records, records without `Tls: true`) of one run of the pymongo
/// workload over TLS, on a server of its own (a server reused across runs slows down as its
/// data grows, which would favour whichever side runs first). The counts are 0 unwatched.
fn pymongo_run(ops: u32, watched: bool) -> Result<(f64, u64, usize, usize)> {
    let server = Server::start_tls(ServerKind::SecantusPy)?;
    let mut workload = WorkloadSpec::new(Driver::Pymongo, server.uri(), ops)
        .gated()
        .without_oracle()
        .spawn()?;
    let mut mw = None;
    if watched {
        let mut m = Mongowatch::watch_pid(workload.pid(), &["--stats"])?;
        m.wait_for_stderr("watching", Duration::from_secs(60))?;
        mw = Some(m);
    }
    workload.release()?;
    let outcome = workload.wait(Duration::from_secs(900))?;
    ensure!(outcome.status.success(), "the workload failed");
    let ops_per_sec = outcome.summary.ops_per_sec.context("no throughput")?;
    let Some(mut m) = mw else {
        return Ok((ops_per_sec, 0, 0, 0));
    };
    m.wait_exit(Duration::from_secs(60))?;
    let stats = m.stats()?;
    let lost = stats["kernel"]["ring_full_events"]
        .as_u64()
        .context("no ring_full_events in --stats")?;
    let records = m.records()?;
    let plain = records.iter().filter(|r| r["Tls"] != true).count();
    Ok((ops_per_sec, lost, records.len(), plain))
}

/// Round trips/s of one TLS ping-pong run.
fn ping_pong(cert: &str, key: &str, trips: u32) -> Result<f64> {
    let out = Command::new(paths::venv_python())
        .args(["-c", PING_PONG, cert, key, &trips.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running the TLS ping-pong")?;
    ensure!(
        out.status.success(),
        "the TLS ping-pong failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("the TLS ping-pong's rate")
}

/// mongowatch watching an idle Python process that maps the system libssl (it imported
/// `ssl`): the library is hooked, for every process that maps it.
fn hooked_libssl() -> Result<(ChildGuard, Mongowatch)> {
    let idle = ChildGuard::spawn(
        "idle ssl importer",
        Command::new(paths::venv_python())
            .args(["-c", "import ssl, time; time.sleep(3600)"])
            .stdin(Stdio::null()),
    )?;
    // Give the interpreter time to map libssl before mongowatch scans it.
    std::thread::sleep(Duration::from_millis(500));
    let mut mw = Mongowatch::watch_pid(idle.pid(), &[])?;
    mw.wait_for_stderr("watching", Duration::from_secs(60))?;
    ensure!(
        mw.stderr().contains("TLS library hooked"),
        "libssl was not hooked: {}",
        mw.stderr()
    );
    Ok((idle, mw))
}

fn main() -> Result<()> {
    ensure!(
        is_root(),
        "the TLS benchmark loads eBPF programs: run it as root"
    );
    let env = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let ops = env("BENCH_OPS", 1000);
    let trips = env("BENCH_TRIPS", 20_000);

    // 1. The pymongo workload over TLS, ABBA.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let (mut lost, mut records, mut plain) = (0, 0, 0);
    for round in 0..ROUNDS {
        for watched in abba(round) {
            let (rate, l, n, p) = pymongo_run(ops, watched)?;
            eprintln!(
                "round {round}: pymongo over TLS {rate:.1} ops/s {}",
                if watched {
                    "with mongowatch"
                } else {
                    "without"
                }
            );
            if watched {
                ensure!(n > 0, "mongowatch wrote no record of the TLS workload");
                (lost, records, plain) = (lost + l, records + n, plain + p);
                with.push(rate);
            } else {
                without.push(rate);
            }
        }
    }
    ensure!(plain == 0, "{plain} of {records} records without Tls: true");
    let py = (median(without), median(with));

    // 2. An unwatched process on the hooked libssl, ABBA.
    let dir = tempfile::tempdir()?;
    let (cert, key) = self_signed_cert(dir.path())?;
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let (mut plain_rt, mut hooked_rt) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for hooked in abba(round) {
            let rate = if hooked {
                let (_idle, mut mw) = hooked_libssl()?;
                let rate = ping_pong(&cert, &key, trips)?;
                mw.stop()?;
                hooked_rt.push(rate);
                rate
            } else {
                let rate = ping_pong(&cert, &key, trips)?;
                plain_rt.push(rate);
                rate
            };
            eprintln!(
                "round {round}: unwatched TLS ping-pong {rate:.0} rt/s {}",
                if hooked {
                    "with libssl hooked"
                } else {
                    "without mongowatch"
                }
            );
        }
    }
    let rt = (median(plain_rt), median(hooked_rt));
    // Four SSL_* calls per round trip.
    let us_per_call = (1e6 / rt.1 - 1e6 / rt.0) / 4.0;

    println!("TLS capture cost (medians of {ROUNDS} alternating rounds)");
    println!(
        "  pymongo workload over TLS ({ops} ops): {:.1} ops/s without, {:.1} with -> ratio {:.3}; \
         {records} records, all Tls: true; events lost {lost}",
        py.0,
        py.1,
        py.1 / py.0
    );
    println!(
        "  unwatched process on the hooked libssl: TLS ping-pong {:.0} rt/s without, {:.0} with \
         -> ratio {:.3}, {us_per_call:.1} us more per SSL_* call",
        rt.0,
        rt.1,
        rt.1 / rt.0
    );
    println!(
        "{}",
        json!({
            "pymongo_tls_ops_per_sec": {"without": py.0, "with": py.1, "ratio": py.1 / py.0},
            "records": records,
            "events_lost": lost,
            "unwatched_tls_ping_pong_rt_per_sec": {"without": rt.0, "with": rt.1, "ratio": rt.1 / rt.0},
            "unwatched_us_per_ssl_call": us_per_call,
        })
    );
    Ok(())
}
