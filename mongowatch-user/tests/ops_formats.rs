//! Formats (json, text, csv, template) and file outputs (append, mode 0600, rotation).

use std::{io::Write, os::unix::fs::PermissionsExt};

use mongowatch::{
    record::{ErrorInfo, Json, Place, Record, State},
    sink::{open_output, Format, Formatter, Output, OutputSpec, Sink, SinkError, SINK_BUFFER},
};

const CONTRACT_EXAMPLE: &str = r#"{"WatchID":"6763e2c10000000000000001","StartTime":"2026-11-24T15:29:00.123456Z","EndTime":"2026-11-24T15:29:00.140001Z","Duration":0.0042,"DB":"shop","Collection":"orders","Operation":"find","Filter":{"status":"open"},"MatchedCount":250,"InsertedCount":null,"UpsertedCount":null,"ModifiedCount":null,"DeletedCount":null,"Iteration":3,"State":"final","CursorId":7263059173825163001,"Error":null,"Pid":4242,"Comm":"python3","Client":"127.0.0.1:51432","Server":"127.0.0.1:27017","User":null,"AppName":null,"Driver":"PyMongo 4.20.1","Compression":null,"Tls":false,"RequestBytes":310,"ReplyBytes":41234,"ContainerId":null,"Node":"node-1","Side":"client","K8sNamespace":null,"K8sPod":null,"K8sPodUid":null,"K8sContainer":null}"#;

fn example() -> Record {
    Record {
        watch_id: "6763e2c10000000000000001".into(),
        start_ns: 1_795_534_140_123_456_000,
        end_ns: 1_795_534_140_140_001_000,
        duration_ns: 4_200_000,
        db: "shop".into(),
        collection: Some("orders".into()),
        operation: "find".into(),
        filter: Some(Json::Object(vec![(
            "status".into(),
            Json::Str("open".into()),
        )])),
        matched: Some(250),
        inserted: None,
        upserted: None,
        modified: None,
        deleted: None,
        iteration: 3,
        state: State::Final,
        cursor_id: Some(7_263_059_173_825_163_001),
        error: None,
        pid: 4242,
        comm: "python3".into(),
        client: "127.0.0.1:51432".into(),
        server: "127.0.0.1:27017".into(),
        user: None,
        app_name: None,
        driver: Some("PyMongo 4.20.1".into()),
        compression: None,
        tls: false,
        request_bytes: 310,
        reply_bytes: 41234,
        place: Place {
            node: Some("node-1".into()),
            ..Default::default()
        },
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn json_is_the_contract_example_exactly() {
    let f = Formatter::new(Format::Json, None, None).unwrap();
    assert_eq!(f.format(&example()), format!("{CONTRACT_EXAMPLE}\n"));
    assert_eq!(f.header(), None);
}

#[test]
fn text_is_key_value_over_chosen_fields() {
    let f = Formatter::new(
        Format::Text,
        Some(&strs(&[
            "StartTime",
            "DB",
            "Collection",
            "Filter",
            "MatchedCount",
            "User",
            "Duration",
        ])),
        None,
    )
    .unwrap();
    assert_eq!(
        f.format(&example()),
        "StartTime='2026-11-24T15:29:00.123456Z' DB='shop' Collection='orders' \
         Filter={\"status\":\"open\"} MatchedCount=250 Duration=0.0042\n",
        "null fields are left out"
    );
    let mut r = example();
    r.comm = "it's \\ my\napp".into();
    r.error = Some(ErrorInfo {
        code: Some(2),
        code_name: Some("BadValue".into()),
        errmsg: Some("bad".into()),
        write_errors: None,
    });
    let f = Formatter::new(Format::Text, Some(&strs(&["Comm", "Error", "State"])), None).unwrap();
    assert_eq!(
        f.format(&r),
        "Comm='it\\'s \\\\ my\\napp' Error={\"code\":2,\"codeName\":\"BadValue\",\"errmsg\":\"bad\"} State='final'\n"
    );
    // The default field set.
    let line = Formatter::new(Format::Text, None, None)
        .unwrap()
        .format(&example());
    assert!(line.starts_with("StartTime='2026-11-24T15:29:00.123456Z' Duration=0.0042 DB='shop'"));
    assert!(line.ends_with("WatchID='6763e2c10000000000000001'\n"));
}

#[test]
fn csv_has_one_header_in_contract_order_and_quotes() {
    let f = Formatter::new(Format::Csv, None, None).unwrap();
    let header = f.header().unwrap();
    assert!(
        header.starts_with("WatchID,StartTime,EndTime,Duration,DB,Collection,Operation,Filter,")
    );
    assert!(header.ends_with(
        "Tls,RequestBytes,ReplyBytes,ContainerId,Node,Side,K8sNamespace,K8sPod,K8sPodUid,\
         K8sContainer\n"
    ));
    let mut r = example();
    r.filter = Some(Json::Object(vec![
        ("a".into(), Json::Str("x,y".into())),
        ("b".into(), Json::Int(1)),
    ]));
    r.comm = "say \"hi\"".into();
    let line = f.format(&r);
    assert!(line.starts_with(
        "6763e2c10000000000000001,2026-11-24T15:29:00.123456Z,2026-11-24T15:29:00.140001Z,0.0042,shop,orders,find,\"{\"\"a\"\":\"\"x,y\"\",\"\"b\"\":1}\",250,,,,,3,final,7263059173825163001,,4242,\"say \"\"hi\"\"\","
    ), "{line}");
    assert!(
        line.ends_with(",false,310,41234,,node-1,client,,,,\n"),
        "{line}"
    );

    // Header written once, only on a fresh output.
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    struct W(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for W {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let f = Formatter::new(Format::Csv, Some(&strs(&["DB", "Operation"])), None).unwrap();
    let mut sink = Sink::new(
        f,
        mongowatch::sink::Output::new(Box::new(W(buf.clone())), true),
    );
    sink.write(&example()).unwrap();
    sink.write(&example()).unwrap();
    sink.flush().unwrap();
    assert_eq!(
        String::from_utf8(buf.lock().unwrap().clone()).unwrap(),
        "DB,Operation\nshop,find\nshop,find\n"
    );
}

#[test]
fn template_placeholders() {
    let f = Formatter::new(
        Format::Template,
        None,
        Some("{StartTime} {DB}.{Collection} {{{Operation}}} {watch.MatchedCount} in {Duration}s user={User}"),
    )
    .unwrap();
    assert_eq!(
        f.format(&example()),
        "2026-11-24T15:29:00.123456Z shop.orders {find} 250 in 0.0042s user=null\n"
    );
    assert!(matches!(
        Formatter::new(Format::Template, None, Some("{Nope}")),
        Err(SinkError::UnknownField(f)) if f == "Nope"
    ));
    assert!(Formatter::new(Format::Template, None, Some("{DB")).is_err());
    assert!(Formatter::new(Format::Template, None, None).is_err());
    assert!(Formatter::new(Format::Text, Some(&strs(&["Bogus"])), None).is_err());
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mongowatch-ops-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn file_output_appends_with_mode_0600() {
    let d = tmpdir("append");
    let path = d.join("sub").join("audit.log");
    let spec = OutputSpec {
        path: Some(path.clone()),
        rotate_size: None,
        rotate_keep: 5,
    };
    for _ in 0..2 {
        let out = open_output(&spec).unwrap();
        let mut s = Sink::new(Formatter::new(Format::Json, None, None).unwrap(), out);
        s.write(&example()).unwrap();
        s.flush().unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2, "appended, not truncated");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn file_output_rotates_by_size() {
    let d = tmpdir("rotate");
    let path = d.join("audit.log");
    let spec = OutputSpec {
        path: Some(path.clone()),
        rotate_size: Some(1000),
        rotate_keep: 2,
    };
    let out = open_output(&spec).unwrap();
    let mut s = Sink::new(Formatter::new(Format::Json, None, None).unwrap(), out);
    for _ in 0..10 {
        s.write(&example()).unwrap();
    }
    s.flush().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["audit.log", "audit.log.1", "audit.log.2"]);
    for n in &names {
        let p = d.join(n);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.lines().all(|l| l == CONTRACT_EXAMPLE),
            "whole records only"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Counts the writes it is given and keeps their bytes.
#[derive(Clone, Default)]
struct CountingWriter(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Write for CountingWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().push(b.to_vec());
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lines leave in batches of whole lines (a write per record cost the daemon more than
/// decoding it), and a flush writes what is gathered.
#[test]
fn the_sink_writes_whole_lines_in_batches() {
    let w = CountingWriter::default();
    let mut s = Sink::new(
        Formatter::new(Format::Json, None, None).unwrap(),
        Output::new(Box::new(w.clone()), true),
    );
    let n = 1000;
    s.write(&example()).unwrap();
    assert!(
        w.0.lock().unwrap().is_empty(),
        "held until a flush or a full buffer"
    );
    for _ in 1..n {
        s.write(&example()).unwrap();
    }
    s.flush().unwrap();
    let writes = w.0.lock().unwrap().clone();
    let total: usize = writes.iter().map(Vec::len).sum();
    assert_eq!(total, n * (CONTRACT_EXAMPLE.len() + 1));
    assert!(
        writes.len() <= total / SINK_BUFFER + 1,
        "{} writes for {total} bytes",
        writes.len()
    );
    for b in &writes {
        let text = std::str::from_utf8(b).unwrap();
        assert!(text.ends_with('\n'), "a batch ends with a whole line");
        assert!(text.lines().all(|l| l == CONTRACT_EXAMPLE));
    }
    // Nothing held: a flush after a flush writes nothing.
    s.flush().unwrap();
    assert_eq!(w.0.lock().unwrap().len(), writes.len());
}

/// Takes `room` bytes, then fails as a full disk does.
struct FullAfter {
    room: usize,
    got: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Write for FullAfter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut got = self.got.lock().unwrap();
        let n = b.len().min(self.room - got.len());
        if n == 0 {
            return Err(std::io::Error::from_raw_os_error(28));
        }
        got.extend_from_slice(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A batch that fails part way: the records written whole are written, the others are
/// counted lost (what `written` and `failed` are made of), never held for a retry.
#[test]
fn a_failed_batch_says_which_records_it_lost() {
    let line = CONTRACT_EXAMPLE.len() + 1;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut s = Sink::new(
        Formatter::new(Format::Json, None, None).unwrap(),
        Output::new(
            Box::new(FullAfter {
                room: 2 * line + line / 2,
                got: got.clone(),
            }),
            true,
        ),
    );
    for _ in 0..5 {
        s.write(&example()).unwrap();
    }
    assert_eq!((s.held(), s.lost()), (5, 0));
    assert!(matches!(s.flush(), Err(SinkError::Write(_))));
    // Two whole lines and half of the third reached the file.
    assert_eq!(got.lock().unwrap().len(), 2 * line + line / 2);
    assert_eq!((s.held(), s.lost()), (0, 3));
}

#[test]
fn unwritable_output_is_an_error_not_a_panic() {
    let d = tmpdir("bad");
    let file = d.join("f");
    std::fs::write(&file, "x").unwrap();
    let spec = OutputSpec {
        path: Some(file.join("below-a-file.log")),
        rotate_size: Some(10),
        rotate_keep: 1,
    };
    assert!(matches!(open_output(&spec), Err(SinkError::Open { .. })));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn csv_header_in_every_rotated_file() {
    let d = tmpdir("rotate-csv");
    let path = d.join("audit.csv");
    let spec = OutputSpec {
        path: Some(path.clone()),
        rotate_size: Some(300),
        rotate_keep: 10,
    };
    let fields = strs(&["DB", "Operation", "Filter"]);
    let out = open_output(&spec).unwrap();
    let mut s = Sink::new(
        Formatter::new(Format::Csv, Some(&fields), None).unwrap(),
        out,
    );
    for _ in 0..20 {
        s.write(&example()).unwrap();
    }
    s.flush().unwrap();
    let mut files = 0;
    for e in std::fs::read_dir(&d).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("DB,Operation,Filter"), "{text}");
        assert!(lines.all(|l| l == "shop,find,\"{\"\"status\"\":\"\"open\"\"}\""));
        files += 1;
    }
    assert!(files >= 3, "{files} files");
    // Reopening a non-empty file appends without a second header.
    drop(s);
    let out = open_output(&spec).unwrap();
    assert!(!out.fresh);
    let _ = std::fs::remove_dir_all(&d);
}

/// The added fields that say where a record came from, in a cluster: every one set, in JSON
/// and by name (what text, csv, templates and filters read).
#[test]
fn place_fields_in_a_cluster() {
    use mongowatch::record::{field_value, FieldValue, K8sMeta, Origin, Side};
    let origin = Origin {
        container_id: Some("ab".repeat(32).into()),
        node: Some("node-1".into()),
        k8s: K8sMeta {
            namespace: "shop".into(),
            pod: "api-7d9f".into(),
            pod_uid: "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f".into(),
            container: Some("api".into()),
        }
        .into(),
    };
    let mut r = example();
    r.place = Place::new(&origin, Side::Server);
    let v: serde_json::Value = serde_json::from_str(&r.to_json_line()).unwrap();
    assert_eq!(v["ContainerId"], "ab".repeat(32));
    assert_eq!(v["Side"], "server");
    assert_eq!(v["K8sNamespace"], "shop");
    assert_eq!(v["K8sPod"], "api-7d9f");
    assert_eq!(v["K8sPodUid"], "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f");
    assert_eq!(v["K8sContainer"], "api");
    assert_eq!(field_value(&r, "Side"), Some(FieldValue::Str("server")));
    assert_eq!(field_value(&r, "K8sPod"), Some(FieldValue::Str("api-7d9f")));
    // Every contract field has a value by name.
    for f in mongowatch::record::FIELDS {
        assert!(field_value(&r, f).is_some(), "{f}");
    }
}
