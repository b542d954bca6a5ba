//! Tests of the end-to-end harness itself: the servers start and answer ping, the recording
//! proxy returns exact messages, and the driver workloads' oracles agree one to one with what
//! crossed the wire. No root needed; they need `cargo xtask setup`'s installs and skip (with a
//! printed reason) without them unless MONGOWATCH_REQUIRE_E2E is set.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use bson::doc;
use mongowatch_tests::{
    reconcile, skip_unless,
    wire::{self, op_msg},
    Direction, Driver, Need, RecordingProxy, Server, ServerKind, WorkloadSpec,
};

/// Operations per workload here: enough for every kind of operation in the plan (including the
/// insert_many of 2,000 documents, the getMores and the >= 5 MB reply), small enough for CI.
const HARNESS_OPS: u32 = 1200;

fn pid_alive(pid: u32) -> bool {
    // Zombies count as gone: /proc/PID/stat's state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn server_answers_ping_and_stops(kind: ServerKind) -> Result<()> {
    let server = Server::start(kind)?;
    wire::ping(server.addr(), Duration::from_secs(5))?;
    let pid = server.pid();
    ensure!(
        pid_alive(pid),
        "server pid {pid} is not alive while running"
    );
    assert!(server.addr().ip().is_loopback());
    drop(server);
    ensure!(!pid_alive(pid), "server pid {pid} still alive after drop");
    Ok(())
}

#[test]
fn secantusd_py_starts_answers_ping_and_stops() -> Result<()> {
    skip_unless!(Ok(()); Need::SecantusPy);
    server_answers_ping_and_stops(ServerKind::SecantusPy)
}

#[test]
fn secantusd_rs_starts_answers_ping_and_stops() -> Result<()> {
    skip_unless!(Ok(()); Need::SecantusRs);
    server_answers_ping_and_stops(ServerKind::SecantusRs)
}

/// Needs no install: a fake upstream that answers each request with a fixed reply, and a client
/// that writes its messages a few bytes at a time.
#[test]
fn proxy_splits_messages_written_in_pieces() -> Result<()> {
    let upstream = TcpListener::bind("127.0.0.1:0")?;
    let upstream_addr = upstream.local_addr()?;
    let server = thread::spawn(move || -> Result<usize> {
        let (mut conn, _) = upstream.accept()?;
        let mut answered = 0;
        loop {
            let req = match wire::read_message(&mut conn) {
                Ok(m) => m,
                Err(_) => return Ok(answered),
            };
            let mut reply = op_msg(
                1000 + req.request_id(),
                &doc! { "ok": 1.0, "n": answered as i32 },
            );
            reply[8..12].copy_from_slice(&req.request_id().to_le_bytes());
            conn.write_all(&reply)?;
            answered += 1;
        }
    });
    let proxy = RecordingProxy::start(upstream_addr)?;
    let mut client = TcpStream::connect(proxy.addr())?;
    client.set_nodelay(true)?;
    let sent: Vec<Vec<u8>> = (1..=5)
        .map(|i| op_msg(i, &doc! { "insert": "c", "documents": [{ "i": i, "pad": "p".repeat(i as usize * 1000) }], "$db": "t" }))
        .collect();
    for msg in &sent {
        for piece in msg.chunks(7) {
            client.write_all(piece)?;
        }
        let reply = wire::read_message(&mut client)?;
        ensure!(reply.response_to() == i32::from_le_bytes(msg[4..8].try_into()?));
    }
    client.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    client.read_to_end(&mut rest)?;
    ensure!(rest.is_empty());
    ensure!(server.join().unwrap()? == 5);
    proxy.wait_all_closed(Duration::from_secs(5))?;
    let conns = proxy.connections();
    ensure!(conns.len() == 1, "{} connections", conns.len());
    let requests = conns[0].messages(Direction::ClientToServer);
    ensure!(requests.iter().map(|m| m.bytes.clone()).collect::<Vec<_>>() == sent);
    ensure!(
        conns[0].chunks(Direction::ClientToServer).len() > sent.len(),
        "expected many chunks"
    );
    for m in &requests {
        ensure!(m.first_byte_ns <= m.last_byte_ns);
        ensure!(m.command_name().as_deref() == Some("insert"));
    }
    let replies = conns[0].replies();
    ensure!(replies.len() == 5);
    for (req, rep) in requests.iter().zip(&replies) {
        ensure!(rep.response_to() == req.request_id());
        ensure!(rep.first_byte_ns >= req.last_byte_ns);
    }
    Ok(())
}

/// Commands sent by hand through the proxy to a real server come back bytes exact.
#[test]
fn proxy_records_a_real_servers_replies() -> Result<()> {
    skip_unless!(Ok(()); Need::SecantusPy);
    let server = Server::start(ServerKind::SecantusPy)?;
    let proxy = RecordingProxy::start(server.addr())?;
    let mut conn = TcpStream::connect(proxy.addr())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let commands = [
        doc! { "ping": 1, "$db": "admin" },
        doc! { "insert": "c", "documents": [{ "_id": 1, "x": "y" }], "$db": "harness" },
        doc! { "find": "c", "filter": {}, "$db": "harness" },
    ];
    let mut replies = Vec::new();
    for (i, cmd) in commands.iter().enumerate() {
        let reply = wire::run_command(&mut conn, i as i32 + 1, cmd)?;
        ensure!(wire::reply_ok(&reply), "{cmd} -> {reply}");
        replies.push(reply);
    }
    drop(conn);
    proxy.wait_all_closed(Duration::from_secs(10))?;
    let conns = proxy.connections();
    let requests = conns[0].requests();
    ensure!(requests.len() == 3);
    for (i, (msg, cmd)) in requests.iter().zip(&commands).enumerate() {
        ensure!(msg.bytes == op_msg(i as i32 + 1, cmd));
    }
    let wire_replies = conns[0].replies();
    ensure!(wire_replies.len() == 3);
    for (msg, reply) in wire_replies.iter().zip(&replies) {
        ensure!(&msg.body().context("reply body")? == reply);
    }
    let docs = replies[2].get_document("cursor")?.get_array("firstBatch")?;
    ensure!(docs.len() == 1);
    Ok(())
}

fn workload_through_proxy(
    driver: Driver,
    kind: ServerKind,
    uri_options: &str,
) -> Result<mongowatch_tests::WireAccount> {
    let server = Server::start(kind)?;
    let proxy = RecordingProxy::start(server.addr())?;
    let uri = format!("{}{uri_options}", proxy.uri());
    let mut workload = WorkloadSpec::new(driver, uri, HARNESS_OPS)
        .gated()
        .spawn()?;
    // Gated: nothing may reach the server before the release.
    thread::sleep(Duration::from_millis(300));
    ensure!(
        workload.is_running(),
        "workload exited early: {}",
        workload.stderr()
    );
    ensure!(
        proxy.connections().is_empty(),
        "the workload connected before its release"
    );
    workload.release()?;
    let outcome = workload.wait(Duration::from_secs(600))?;
    proxy.wait_all_closed(Duration::from_secs(30))?;
    let summary = &outcome.summary;
    ensure!(summary.ops == HARNESS_OPS as u64);
    ensure!(summary.op_counts.get("insert_many").copied().unwrap_or(0) >= 1);
    ensure!(summary.op_counts.get("find_getmore").copied().unwrap_or(0) >= 1);
    ensure!(
        summary.commands_failed == 1,
        "one command is meant to fail: {summary:?}"
    );
    let conns = proxy.connections();
    let account = reconcile(&conns, &outcome.oracle)?;
    eprintln!(
        "{}: {} ops at {:.0} ops/s; wire: {account:?}",
        driver.name(),
        summary.ops,
        summary.ops_per_sec.unwrap_or(0.0)
    );
    ensure!(account.reported_requests as u64 == summary.commands_started);
    ensure!(
        account.largest_reply >= 5 * 1024 * 1024,
        "no reply of 5 MB: {account:?}"
    );
    ensure!(account.handshakes >= 1, "no handshake seen: {account:?}");
    let names: std::collections::BTreeSet<&str> =
        outcome.started().map(|e| e.command_name.as_str()).collect();
    for expected in [
        "insert",
        "find",
        "getMore",
        "killCursors",
        "aggregate",
        "update",
        "delete",
    ] {
        ensure!(
            names.contains(expected),
            "no {expected} in the oracle: {names:?}"
        );
    }
    Ok(account)
}

#[test]
fn pymongo_workload_matches_the_wire() -> Result<()> {
    skip_unless!(Ok(()); Need::SecantusPy, Need::Pymongo);
    let account = workload_through_proxy(Driver::Pymongo, ServerKind::SecantusPy, "")?;
    ensure!(account.compressed == 0);
    Ok(())
}

/// Against secantusd-rs with zstd negotiated: compressed requests still match the oracle one to
/// one by requestID (handshakes are never compressed).
#[test]
fn pymongo_compressed_workload_matches_the_wire() -> Result<()> {
    skip_unless!(Ok(()); Need::SecantusRs, Need::Pymongo);
    let account =
        workload_through_proxy(Driver::Pymongo, ServerKind::SecantusRs, "&compressors=zstd")?;
    ensure!(
        account.compressed > 1000,
        "zstd was not negotiated: {account:?}"
    );
    Ok(())
}

#[test]
fn node_workload_matches_the_wire() -> Result<()> {
    skip_unless!(Ok(()); Need::SecantusPy, Need::NodeDriver);
    workload_through_proxy(Driver::Node, ServerKind::SecantusPy, "")?;
    Ok(())
}

#[test]
fn node_compressed_workload_matches_the_wire() -> Result<()> {
    skip_unless!(Ok(()); Need::SecantusRs, Need::NodeDriver);
    let account =
        workload_through_proxy(Driver::Node, ServerKind::SecantusRs, "&compressors=zlib")?;
    ensure!(
        account.compressed > 1000,
        "zlib was not negotiated: {account:?}"
    );
    Ok(())
}

/// TLS servers start and answer; through the proxy, the driver's bytes are TLS records (what
/// a wire-level observer cannot read, and what mongowatch must capture above TLS instead).
#[test]
fn tls_server_works_and_the_wire_is_ciphertext() -> Result<()> {
    skip_unless!(Ok(()); Need::SecantusPy, Need::Pymongo);
    let server = Server::start_tls(ServerKind::SecantusPy)?;
    ensure!(server.uri().contains("tls=true"));
    let proxy = RecordingProxy::start(server.addr())?;
    let mut workload =
        WorkloadSpec::new(Driver::Pymongo, server.uri_via(proxy.addr()), 40).spawn()?;
    let outcome = workload.wait(Duration::from_secs(300))?;
    proxy.wait_all_closed(Duration::from_secs(30))?;
    ensure!(outcome.summary.commands_started >= 40);
    let conns = proxy.connections();
    ensure!(!conns.is_empty());
    for conn in &conns {
        let stream = conn.stream(Direction::ClientToServer);
        // A TLS handshake record: content type 22, version 3.x.
        ensure!(
            stream.len() > 5 && stream[0] == 0x16 && stream[1] == 0x03,
            "connection {} does not start with a TLS handshake",
            conn.id
        );
    }
    Ok(())
}

/// mongosh runs against a server through the proxy; its first request is the legacy OP_QUERY
/// handshake and its insert is an OP_MSG.
#[test]
fn mongosh_runs_through_the_proxy() -> Result<()> {
    skip_unless!(Ok(()); Need::SecantusPy, Need::Mongosh, Need::NodeDriver);
    let server = Server::start(ServerKind::SecantusPy)?;
    let proxy = RecordingProxy::start(server.addr())?;
    let out = mongowatch_tests::mongosh_command(
        &server.uri_via(proxy.addr()),
        "db.shell.insertOne({a: 1}); print(db.shell.countDocuments({}))",
    )
    .output()?;
    ensure!(
        out.status.success(),
        "mongosh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "1",
        "{:?}",
        out
    );
    proxy.wait_all_closed(Duration::from_secs(30))?;
    let requests: Vec<_> = proxy
        .connections()
        .iter()
        .flat_map(|c| c.requests())
        .collect();
    ensure!(requests
        .iter()
        .any(|m| m.op_code() == wire::OP_QUERY && m.is_handshake()));
    ensure!(requests
        .iter()
        .any(|m| m.op_code() == wire::OP_MSG && m.command_name().as_deref() == Some("insert")));
    Ok(())
}
