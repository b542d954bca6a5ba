//! `cargo xtask kernels`: the kernel matrix. Boots Debian's kernels under qemu (software
//! emulation: no KVM needed) and runs the capture test of `guest/` in each, on mongowatch's own
//! choice of capture path and on every path the guest kernel offers, forced.
//!
//! The kernels are Debian 12's own packages, fetched by name with `apt-get download`: the
//! newest 6.1 (`linux-image-amd64`, `linux-image-cloud-amd64`) and 6.12
//! (`linux-image-6.12-amd64`, `linux-image-6.12-cloud-amd64`). Nothing else comes from the
//! guest's distribution: the initramfs holds busybox, mongowatch (with the libraries `ldd`
//! names), the static test binary and an init script; the kernels need no modules for it
//! (loopback, unix sockets, BTF, tracefs and BPF are built in).
//!
//! Prints one line per kernel and capture path, `PASS <release> <path> <messages>` or
//! `FAIL <release> <reason>`, and fails if any line is a FAIL. Downloads and extracted kernels
//! are kept in `<project cache>/kernels`.
//!
//! The large `writev` is 6 MiB, both ends watched: a copy long enough to be interrupted on
//! the way. (Earlier builds sometimes cut the receiving end's stream in two at that size; none
//! has since, on any kernel or path.)

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    setup::Paths,
    util::{self, run},
};

/// The metapackages naming the kernels to boot (each depends on one `linux-image-<release>`).
const KERNELS: &[&str] = &[
    "linux-image-amd64",
    "linux-image-cloud-amd64",
    "linux-image-6.12-amd64",
    "linux-image-6.12-cloud-amd64",
];

/// A guest that has not powered off by then has hung.
const GUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(clap::Args)]
pub struct KernelsArgs {
    /// Boot only the kernels whose package name contains this (repeatable).
    #[arg(long = "only", value_name = "TEXT")]
    only: Vec<String>,
}

pub fn run_kernels(ws: &Path, args: &KernelsArgs) -> Result<()> {
    let paths = Paths::new(ws)?;
    let dir = paths.cache.join("kernels");
    fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let mongowatch = build_mongowatch(ws)?;
    let guest = build_guest(ws)?;
    let initramfs = build_initramfs(&dir, &mongowatch, &guest)?;
    let mut lines = Vec::new();
    for meta in KERNELS
        .iter()
        .filter(|k| args.only.is_empty() || args.only.iter().any(|o| k.contains(o.as_str())))
    {
        let boot_started = Instant::now();
        let found = kernel(&dir, meta).and_then(|(package, vmlinuz)| {
            eprintln!("kernels: booting {package}");
            boot(&dir, &package, &vmlinuz, &initramfs)
        });
        match found {
            Ok(got) => lines.extend(got),
            Err(e) => lines.push(format!("FAIL {meta} {e:#}")),
        }
        eprintln!(
            "kernels: {meta} took {}",
            util::secs(boot_started.elapsed())
        );
    }
    for line in &lines {
        println!("{line}");
    }
    eprintln!("kernels: the matrix took {}", util::secs(started.elapsed()));
    let failed = lines.iter().filter(|l| !l.starts_with("PASS ")).count();
    ensure!(!lines.is_empty(), "no kernel was booted");
    if failed > 0 {
        bail!("{failed} of {} kernel runs failed", lines.len());
    }
    Ok(())
}

/// mongowatch, optimised (the guest runs under emulation), with its eBPF programs.
fn build_mongowatch(ws: &Path) -> Result<PathBuf> {
    run(util::cargo()
        .current_dir(ws)
        .args([
            "build",
            "--release",
            "-p",
            "mongowatch-user",
            "--bin",
            "mongowatch",
        ])
        .env("MONGOWATCH_REQUIRE_EBPF", "1"))?;
    Ok(target_dir(ws).join("release/mongowatch"))
}

/// The guest's test binary, linked statically so that it needs nothing in the guest.
fn build_guest(ws: &Path) -> Result<PathBuf> {
    let triple = "x86_64-unknown-linux-gnu";
    run(util::cargo()
        .current_dir(ws)
        .args([
            "build",
            "--release",
            "-p",
            "mongowatch-guest",
            "--target",
            triple,
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    Ok(target_dir(ws).join(triple).join("release/mongowatch-guest"))
}

fn target_dir(ws: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"))
}

/// The concrete package behind metapackage `meta`, downloaded and extracted (once):
/// its name and its `vmlinuz`.
fn kernel(dir: &Path, meta: &str) -> Result<(String, PathBuf)> {
    let depends = util::output(Command::new("apt-cache").args(["depends", "--important", meta]))
        .with_context(|| format!("apt-cache depends {meta} (is `apt-get update` done?)"))?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && !p.ends_with("-dbg"))
        .map(str::to_string)
        .with_context(|| format!("{meta} depends on no linux-image package:\n{depends}"))?;
    let release = package.trim_start_matches("linux-image-").to_string();
    let root = dir.join(&package);
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if vmlinuz.exists() {
        return Ok((package, vmlinuz));
    }
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    let has_deb = |debs: &Path| -> Result<Option<PathBuf>> {
        Ok(fs::read_dir(debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            }))
    };
    let deb = match has_deb(&debs)? {
        Some(deb) => deb,
        None => {
            run(Command::new("apt-get")
                .current_dir(&debs)
                .args(["download", &package]))?;
            has_deb(&debs)?.with_context(|| format!("apt-get download {package} left no .deb"))?
        }
    };
    let staging = dir.join(format!("{package}.partial"));
    let _ = fs::remove_dir_all(&staging);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging))?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&staging, &root)?;
    ensure!(
        vmlinuz.exists(),
        "{} has no {}",
        deb.display(),
        vmlinuz.display()
    );
    Ok((package, vmlinuz))
}

const INIT: &str = r#"#!/bin/sh
# mongowatch's kernel matrix guest (xtask/src/kernels.rs): run the capture test, power off.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ip link set lo up
echo "GUEST-START $(uname -r)"
/bin/mongowatch-guest matrix /bin/mongowatch
echo "GUEST-EXIT $?"
poweroff -f
"#;

/// One initramfs for every kernel: busybox, mongowatch and its libraries, the test binary.
fn build_initramfs(dir: &Path, mongowatch: &Path, guest: &Path) -> Result<PathBuf> {
    let root = dir.join("initramfs");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(root.join(d))?;
    }
    let busybox = which("busybox").context("busybox is missing (cargo xtask setup installs it)")?;
    fs::copy(&busybox, root.join("bin/busybox"))?;
    for applet in ["sh", "mount", "ip", "poweroff", "echo", "uname", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    fs::copy(mongowatch, root.join("bin/mongowatch"))?;
    // Its debug info is most of its size, and the guest unpacks the initramfs into memory.
    let _ = util::output(Command::new("strip").arg(root.join("bin/mongowatch")));
    fs::copy(guest, root.join("bin/mongowatch-guest"))?;
    // The dynamic libraries (and loader) mongowatch needs, at their own paths.
    let ldd =
        util::output(Command::new("ldd").arg(mongowatch)).context("ldd on mongowatch failed")?;
    for lib in ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(Path::new)
    {
        let to = root.join(lib.strip_prefix("/")?);
        fs::create_dir_all(to.parent().context("a library path")?)?;
        fs::copy(lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    let init = root.join("init");
    fs::write(&init, INIT)?;
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    // No cpio binary here: busybox has one.
    let cpio = dir.join("initramfs.cpio");
    let script = format!(
        "cd '{}' && busybox find . | busybox cpio -o -H newc > '{}'",
        root.display(),
        cpio.display()
    );
    let status = Command::new("sh")
        .args(["-c", &script])
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success(), "building the initramfs failed");
    Ok(cpio)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Boots one kernel and returns the guest's PASS/FAIL lines.
fn boot(dir: &Path, package: &str, vmlinuz: &Path, initramfs: &Path) -> Result<Vec<String>> {
    let release = package.trim_start_matches("linux-image-");
    let log_path = dir.join(format!("{package}.log"));
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1536", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let stdout = qemu.stdout.take().context("qemu's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut log = String::new();
    let mut lines = Vec::new();
    let mut exited = false;
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                log.push_str(&line);
                log.push('\n');
                if line.starts_with("PASS ") || line.starts_with("FAIL ") {
                    eprintln!("kernels: {line}");
                    lines.push(line);
                } else if line.starts_with("GUEST-EXIT") {
                    exited = true;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if start.elapsed() > GUEST_TIMEOUT {
            let _ = qemu.kill();
            lines.push(format!(
                "FAIL {release} the guest did not finish in {}",
                util::secs(GUEST_TIMEOUT)
            ));
            break;
        }
    }
    let _ = qemu.wait();
    fs::write(&log_path, &log)?;
    if !exited && lines.is_empty() {
        lines.push(format!(
            "FAIL {release} the guest stopped before the test ran (console: {})",
            log_path.display()
        ));
    }
    Ok(lines)
}
