//! `mongowatch aggregate` and `mongowatch digest`, the binary run on logs written by the
//! sink's own formatters: a find written at two timeouts and then final, an insert written at
//! a timeout and then closed, a count, and a second find of the first one's shape.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
};

use mongowatch::{
    record::{Json, Record, State},
    sink::{Format, Formatter},
};

const T0: u64 = 1_795_534_140_000_000_000;
const MS: u64 = 1_000_000;

fn rec(id: u32, op: &str, filter: Option<Json>, dur_ms: u64, iteration: u32) -> Record {
    Record {
        watch_id: format!("6763e2c1000000000000{id:04x}"),
        start_ns: T0 + u64::from(id) * MS,
        end_ns: T0 + u64::from(id) * MS + dur_ms * MS,
        duration_ns: dur_ms * MS,
        db: "shop".into(),
        collection: Some("orders".into()),
        operation: op.into(),
        filter,
        matched: (op != "insert").then_some(i64::from(iteration) * 100),
        inserted: (op == "insert").then_some(1),
        iteration,
        pid: 4242,
        comm: "python3".into(),
        client: "127.0.0.1:51432".into(),
        server: "127.0.0.1:27017".into(),
        // A line break inside a CSV value: quoted, kept.
        app_name: Some("shop\napi".into()),
        driver: Some("PyMongo 4.20.1".into()),
        request_bytes: 100,
        reply_bytes: 1000 * u64::from(iteration),
        ..Default::default()
    }
}

fn status(s: &str) -> Option<Json> {
    Some(Json::Object(vec![
        ("status".into(), Json::Str(s.into())),
        (
            "total".into(),
            Json::Object(vec![("$gt".into(), Json::Int(5))]),
        ),
    ]))
}

/// The log in writing order, and the indexes of the records `aggregate` keeps.
fn log() -> (Vec<Record>, Vec<usize>) {
    let with = |mut r: Record, state| {
        r.state = state;
        r
    };
    let recs = vec![
        with(rec(1, "find", status("open"), 10, 1), State::Timeout), // 0
        rec(2, "count", None, 3, 1),                                 // 1
        with(rec(3, "insert", None, 2, 1), State::Timeout),          // 2
        with(rec(1, "find", status("open"), 20, 2), State::Timeout), // 3
        rec(4, "find", status("done"), 5, 1),                        // 4
        rec(1, "find", status("open"), 30, 3),                       // 5
        with(rec(3, "insert", None, 4, 1), State::Closed),           // 6
    ];
    (recs, vec![1, 4, 5, 6])
}

fn write(dir: &Path, name: &str, format: Format, recs: &[Record]) -> String {
    let f = Formatter::new(format, None, None).unwrap();
    let mut text = f.header().unwrap_or_default();
    for r in recs {
        text.push_str(&f.format(r));
    }
    fs::write(dir.join(name), &text).unwrap();
    text
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mongowatch"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn aggregate_keeps_the_last_record_of_each_watch_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (recs, kept) = log();
    let (json, csv) = (
        Formatter::new(Format::Json, None, None).unwrap(),
        Formatter::new(Format::Csv, None, None).unwrap(),
    );
    let want_json: String = kept.iter().map(|&i| json.format(&recs[i])).collect();
    let want_csv = csv.header().unwrap()
        + &kept
            .iter()
            .map(|&i| csv.format(&recs[i]))
            .collect::<String>();

    // A rotated pair, oldest first, read as one log; a partial last line is left out, said.
    write(d, "audit.jsonl.1", Format::Json, &recs[..3]);
    let mut text = write(d, "audit.jsonl", Format::Json, &recs[3..]);
    text.push_str("{\"WatchID\":\"6763e2c1");
    fs::write(d.join("audit.jsonl"), &text).unwrap();
    let out = run(d, &["aggregate", "audit.jsonl.1", "audit.jsonl"]);
    assert_eq!(ok(&out), want_json);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit.jsonl:5: left out: a partial last line"),
        "{err}"
    );
    assert!(err.contains("7 records, 4 after"), "{err}");

    // CSV, to -o FILE (mode 0600).
    write(d, "audit.csv", Format::Csv, &recs);
    ok(&run(d, &["aggregate", "audit.csv", "-o", "last.csv"]));
    assert_eq!(fs::read_to_string(d.join("last.csv")).unwrap(), want_csv);
    let mode = fs::metadata(d.join("last.csv"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // In place, the file's mode kept.
    fs::set_permissions(d.join("audit.csv"), fs::Permissions::from_mode(0o640)).unwrap();
    ok(&run(d, &["aggregate", "-i", "audit.csv"]));
    assert_eq!(fs::read_to_string(d.join("audit.csv")).unwrap(), want_csv);
    let mode = fs::metadata(d.join("audit.csv"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
}

#[test]
fn digest_gives_the_expected_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (recs, _) = log();
    write(d, "audit.jsonl", Format::Json, &recs);
    write(d, "audit.csv", Format::Csv, &recs);
    // The find of id 1 counts once (its final record: 30 ms, 300 matched, 3100 bytes),
    // beside the find of id 4 (the same shape: "open" and "done" both mask to "xxxx").
    let want = "\
Rank  Count     Total       p50       p95       p99  Matched  Bytes  Operation  Namespace    Filter
   1      2  0.035000  0.005000  0.030000  0.030000      400   4200  find       shop.orders  {\"status\":\"xxxx\",\"total\":{\"$gt\":0}}
   2      1  0.004000  0.004000  0.004000  0.004000        -   1100  insert     shop.orders  -
   3      1  0.003000  0.003000  0.003000  0.003000      100   1100  count      shop.orders  -
";
    assert_eq!(ok(&run(d, &["digest", "audit.jsonl"])), want);
    assert_eq!(
        ok(&run(d, &["digest", "audit.csv"])),
        want,
        "CSV gives the same"
    );
    let lines = ok(&run(
        d,
        &["digest", "--format", "json", "--limit", "1", "audit.jsonl"],
    ));
    let v: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["Count"], 2);
    assert_eq!(v[0]["Filter"]["status"], "xxxx");
    assert_eq!(v[0]["P99Duration"], 0.03);
}

#[test]
fn the_tools_fail_clearly_and_leave_the_daemon_flags_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = run(d, &["aggregate", "missing.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read missing.jsonl"), "{err}");
    fs::write(d.join("x.csv"), "DB,Operation\nshop,find\n").unwrap();
    let err = String::from_utf8_lossy(&run(d, &["digest", "x.csv"]).stderr).into_owned();
    assert!(err.contains("without a WatchID column"), "{err}");
    // The daemon's flags and the tools do not mix; the daemon needs something to watch.
    let out = run(d, &["--pid", "1", "aggregate", "x.csv"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(d, &["--format", "csv"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("nothing to watch") && err.contains("Usage:"),
        "{err}"
    );
}
