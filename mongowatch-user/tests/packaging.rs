//! The files the Debian package installs beside the binary: the default config is valid for
//! this mongowatch, and the systemd unit runs the binary with it.

use std::{fs, path::Path};

use mongowatch::config::{AuditArgs, OutputTarget};

fn packaging(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_default_config_resolves() {
    let args =
        AuditArgs::from_toml(&packaging("mongowatch.toml"), Path::new("mongowatch.toml")).unwrap();
    let cfg = args.resolve().unwrap();
    assert_eq!(cfg.outputs.len(), 1);
    let OutputTarget::Lines { spec, .. } = &cfg.outputs[0].target else {
        panic!("the packaged output writes lines")
    };
    assert_eq!(
        spec.path.as_deref(),
        Some(Path::new("/var/log/mongowatch/audit.jsonl")),
        "the unit's LogsDirectory"
    );
}

#[test]
fn the_unit_runs_the_binary_with_the_packaged_config() {
    let unit = packaging("mongowatch.service");
    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("an ExecStart line");
    assert!(
        exec.contains("/usr/bin/mongowatch --config /etc/mongowatch/mongowatch.toml --pid"),
        "{exec}"
    );
    assert!(unit.contains("LogsDirectory=mongowatch\n"));
    assert!(unit.contains("EnvironmentFile=-/etc/default/mongowatch\n"));
}
