//! The audit options: clap flags, the TOML file, the command line winning, validation.

mod ops_support;

use std::path::Path;

use clap::Parser;
use mongowatch::{
    config::{AuditArgs, AuditConfig, ByteSize},
    sink::Format,
};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    audit: AuditArgs,
}

fn parse(args: &[&str]) -> AuditArgs {
    Cli::try_parse_from(std::iter::once("mongowatch").chain(args.iter().copied()))
        .unwrap()
        .audit
}

#[test]
fn every_flag_parses() {
    let a = parse(&[
        "--format",
        "csv",
        "--fields",
        "StartTime,DB,Operation",
        "-o",
        "audit.csv",
        "--rotate-size",
        "100M",
        "--rotate-keep",
        "3",
        "--filter",
        "Duration > 0.5",
        "--mask",
        "--ops",
        "find,aggregate",
        "--db",
        "shop",
        "--rate",
        "30",
        "--timeout",
        "20",
        "--delay",
        "1.5",
        "--include-heartbeats",
        "--memory-budget",
        "64M",
        "--ring-size",
        "256M",
        "--priority-boost",
        "0",
    ]);
    let c = a.resolve().unwrap();
    assert_eq!(c.format, Format::Csv);
    assert_eq!(
        c.fields.as_deref().unwrap(),
        ["StartTime", "DB", "Operation"]
    );
    assert_eq!(c.output.path.as_deref(), Some(Path::new("audit.csv")));
    assert_eq!(c.output.rotate_size, Some(100 << 20));
    assert_eq!(c.output.rotate_keep, 3);
    assert_eq!(c.filter.as_deref(), Some("Duration > 0.5"));
    assert!(c.mask);
    assert_eq!(c.ops.as_deref().unwrap(), ["find", "aggregate"]);
    assert_eq!(c.db.as_deref().unwrap(), ["shop"]);
    assert_eq!(c.rate, Some(30.0));
    assert_eq!(c.timeout_secs, 20.0);
    assert_eq!(c.delay_secs, 1.5);
    assert!(c.include_heartbeats);
    assert_eq!(c.memory_budget, 64 << 20);
    assert_eq!(c.ring_size, 256 << 20);
    assert_eq!(c.priority_boost, 0);
}

#[test]
fn defaults() {
    let c = parse(&[]).resolve().unwrap();
    assert_eq!(c, AuditConfig::default());
    assert_eq!(c.format, Format::Json);
    assert_eq!(c.timeout_secs, 10.0);
    assert_eq!(c.delay_secs, 0.0);
    assert_eq!(c.priority_boost, 4);
    assert!(!c.mask && !c.include_heartbeats);
    assert!(c.output.path.is_none());
}

#[test]
fn template_implies_its_format() {
    let c = parse(&["--template", "{DB} {Operation}"])
        .resolve()
        .unwrap();
    assert_eq!(c.format, Format::Template);
    assert!(parse(&["--format", "json", "--template", "{DB}"])
        .resolve()
        .is_err());
    assert!(parse(&["--format", "template"]).resolve().is_err());
}

#[test]
fn invalid_values_are_startup_errors() {
    assert!(
        parse(&["--rotate-size", "10M"]).resolve().is_err(),
        "needs -o"
    );
    assert!(parse(&["-o", "f", "--rotate-size", "0"]).resolve().is_err());
    assert!(parse(&["-o", "f", "--rotate-keep", "0"]).resolve().is_err());
    assert!(parse(&["--timeout", "0"]).resolve().is_err());
    assert!(parse(&["--delay=-1"]).resolve().is_err());
    assert!(parse(&["--rate", "nan"]).resolve().is_err());
    assert!(parse(&["--fields", "DB,Nope"]).resolve().is_err());
    assert!(parse(&["--filter", "Nope > 1"]).resolve().is_err());
    assert!(parse(&["--memory-budget", "512K"]).resolve().is_err());
    assert!(parse(&["--memory-budget", "512K"]).memory_budget().is_err());
    // The kernel takes only a power of two, and the ring is locked memory: 1M to 1G.
    for bad in ["96M", "512K", "2G", "0"] {
        let e = parse(&["--ring-size", bad]).resolve().unwrap_err();
        assert!(e.to_string().contains("--ring-size"), "{bad}: {e}");
    }
    assert_eq!(parse(&["--ring-size", "1M"]).ring_size().unwrap(), 1 << 20);
    assert_eq!(parse(&["--ring-size", "1G"]).ring_size().unwrap(), 1 << 30);
    let e = parse(&["--priority-boost", "21"]).resolve().unwrap_err();
    assert!(e.to_string().contains("--priority-boost"), "{e}");
    assert!(Cli::try_parse_from(["m", "--priority-boost=-1"]).is_err());
    assert!(Cli::try_parse_from(["m", "--rotate-size", "12Q"]).is_err());
    assert!(Cli::try_parse_from(["m", "--format", "xml"]).is_err());
}

#[test]
fn byte_sizes() {
    assert_eq!("1048576".parse::<ByteSize>().unwrap(), ByteSize(1 << 20));
    assert_eq!("512K".parse::<ByteSize>().unwrap(), ByteSize(512 << 10));
    assert_eq!("1g".parse::<ByteSize>().unwrap(), ByteSize(1 << 30));
    assert!("99999999999999999999G".parse::<ByteSize>().is_err());
}

#[test]
fn file_values_and_command_line_wins() {
    let dir = std::env::temp_dir().join(format!("mongowatch-ops-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m.toml");
    std::fs::write(
        &file,
        r#"
format = "text"
fields = ["DB", "Operation"]
timeout = 30.0
delay = 2
mask = true
rotate-size = 1048576
output = "from-file.log"
"#,
    )
    .unwrap();
    let cfg_arg = file.to_str().unwrap();
    let c = parse(&["--config", cfg_arg, "--timeout", "5", "--mask=false"])
        .resolve()
        .unwrap();
    assert_eq!(c.format, Format::Text);
    assert_eq!(c.fields.as_deref().unwrap(), ["DB", "Operation"]);
    assert_eq!(c.timeout_secs, 5.0, "command line wins");
    assert!(!c.mask, "command line wins, even to turn a flag off");
    assert_eq!(c.delay_secs, 2.0, "an integer is fine for seconds");
    assert_eq!(c.output.rotate_size, Some(1 << 20));

    std::fs::write(&file, "format = \"yaml\"\n").unwrap();
    let e = parse(&["--config", cfg_arg]).resolve().unwrap_err();
    assert!(e.to_string().contains("m.toml"), "{e}");
    assert!(parse(&["--config", "/nonexistent/m.toml"])
        .resolve()
        .is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A typo must not leave the default silently in force: an unknown key is an error that names
/// the key and the file.
#[test]
fn an_unknown_key_is_an_error_naming_it_and_the_file() {
    let dir = std::env::temp_dir().join(format!("mongowatch-ops-typo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("typo.toml");
    for (text, key) in [
        ("format = \"json\"\ntimout = 5\n", "timout"),
        ("pid = 1234\n", "pid"),
        ("config = \"other.toml\"\n", "config"),
        ("rotate_size = \"1M\"\n", "rotate_size"),
    ] {
        std::fs::write(&file, text).unwrap();
        let e = parse(&["--config", file.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&format!("`{key}`")), "{key}: {msg}");
        assert!(msg.contains("typo.toml"), "{key}: {msg}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `FILE_KEYS` is exactly the set of options: every flag but `--config`, each accepted in the
/// file under its flag name.
#[test]
fn file_keys_are_the_flags() {
    use clap::CommandFactory;
    let mut flags: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|l| l != "config")
        .collect();
    flags.sort();
    let mut keys: Vec<String> = mongowatch::config::FILE_KEYS
        .iter()
        .map(|k| k.to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, flags);
    for key in mongowatch::config::FILE_KEYS {
        // A value of the wrong type: the error is about the value, never an unknown key.
        let e = AuditArgs::from_toml(&format!("{key} = {{}}\n"), Path::new("k.toml"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("unknown field"), "{key}: {e}");
    }
}

/// The cause of a config file that cannot be read is said once: it is the error's source, and
/// `{:#}` (how the CLI prints errors) shows the chain.
#[test]
fn a_missing_file_says_its_cause_once() {
    let e = parse(&["--config", "/nonexistent/m.toml"])
        .resolve()
        .unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(e));
    assert_eq!(
        chain,
        "cannot read config file /nonexistent/m.toml: No such file or directory (os error 2)"
    );
}

#[test]
fn the_example_file_documents_every_option_and_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mongowatch.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    for key in mongowatch::config::FILE_KEYS {
        assert!(text.contains(&format!("{key} =")), "example lacks `{key}`");
    }
    // Uncomment every option: the full example must be valid too.
    let full: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if mongowatch::config::FILE_KEYS
                    .iter()
                    .any(|k| rest.starts_with(&format!("{k} ="))) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let args = AuditArgs::from_toml(&full, &path).unwrap();
    // The values the example file shows, read as what they say.
    assert_eq!(
        args.template.as_deref(),
        Some("{StartTime} {DB}.{Collection} {Operation} {Filter} matched {MatchedCount} in {Duration}s")
    );
    assert_eq!(
        args.output.as_deref(),
        Some(Path::new("/var/log/mongowatch/audit.jsonl"))
    );
    assert_eq!(args.rate, Some(60.0));
    let mut args = args;
    args.format = Some(Format::Template);
    args.resolve().unwrap();
    let plain = AuditArgs::from_toml(&text, &path)
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(plain, AuditConfig::default());
}

#[test]
fn help_text_comes_from_doc_comments() {
    use clap::CommandFactory;
    let help = Cli::command().render_long_help().to_string();
    for flag in [
        "--format",
        "--fields",
        "--template",
        "--output",
        "--rotate-size",
        "--rotate-keep",
        "--filter",
        "--mask",
        "--ops",
        "--db",
        "--rate",
        "--timeout",
        "--delay",
        "--include-heartbeats",
        "--memory-budget",
        "--ring-size",
        "--priority-boost",
        "--config",
    ] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
    assert!(help.contains("Mask Filter values"));
    // A bare boolean flag does not swallow the next argument.
    let args = Cli::try_parse_from(["m", "--mask", "--delay", "1"])
        .unwrap()
        .audit;
    assert_eq!((args.mask, args.delay), (Some(true), Some(1.0)));
}

#[test]
fn auditor_from_the_command_line_writes_its_file() {
    use bson::rawdoc;
    use ops_support::*;
    let dir = std::env::temp_dir().join(format!("mongowatch-ops-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("audit.csv");
    let cfg = parse(&[
        "--format",
        "csv",
        "--fields",
        "DB,Collection,Operation,MatchedCount,State",
        "-o",
        out.to_str().unwrap(),
    ])
    .resolve()
    .unwrap();
    let mut a = mongowatch::pipeline::audit::Auditor::new(&cfg).unwrap();
    let c = conn(1, 1);
    a.handle(round_trip(
        &c,
        msg(rawdoc! { "count": "news", "$db": "site" }),
        T0,
        reply(rawdoc! { "n": 7, "ok": 1.0 }),
        MS,
    ))
    .unwrap();
    a.shutdown(T0 + SEC).unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "DB,Collection,Operation,MatchedCount,State\nsite,news,count,7,final\n"
    );
    assert_eq!(a.stats().records_written, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[[select]]` and `[[exclude]]` tables: read with their keys, an unknown key refused, and
/// the example file's commented tables valid once uncommented.
#[test]
fn select_and_exclude_tables() {
    let args = AuditArgs::from_toml(
        "[[select]]\ncomm = [\"gunicorn\"]\nexe = [\"/srv/*\"]\n\n[[select]]\nall = true\n\n\
         [[exclude]]\ncontainer-id = [\"abc\"]\n",
        Path::new("s.toml"),
    )
    .unwrap();
    assert_eq!(args.select.len(), 2);
    assert_eq!(args.select[0].comm, vec!["gunicorn"]);
    assert_eq!(args.select[0].exe, vec!["/srv/*"]);
    assert!(args.select[1].all);
    assert_eq!(args.exclude[0].container_id, vec!["abc"]);
    let e = AuditArgs::from_toml("[[select]]\ncomand = [\"x\"]\n", Path::new("s.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `comand`"), "{e}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mongowatch.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let tables: String = text
        .lines()
        .skip_while(|l| !l.starts_with("# [[select]]"))
        // The selection's example ends at the first blank line.
        .take_while(|l| !l.is_empty())
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let parsed = AuditArgs::from_toml(&tables, &path).unwrap();
    assert_eq!(parsed.select.len(), 2);
    assert_eq!(parsed.exclude[0].comm, vec!["mongosh"]);
    for t in mongowatch::config::FILE_TABLES {
        assert!(text.contains(&format!("[[{t}]]")), "example lacks [[{t}]]");
    }
}
