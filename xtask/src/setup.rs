//! `cargo xtask setup`: everything a fresh machine (Debian 12, root, no stdin) needs to build
//! the eBPF programs and run the end-to-end tests, installed into the project cache
//! (`$MONGOWATCH_CACHE`, else `<repo>/.cache`). Idempotent: each step first checks whether its
//! result is already there, so a second run costs about a second.
//!
//! | part        | what                                                        | where            |
//! |-------------|-------------------------------------------------------------|------------------|
//! | (always)    | checks /sys/kernel/btf/vmlinux, mounts tracefs if missing   |                  |
//! | apt         | the Debian packages of the other parts being set up         | the system       |
//! | bpf-linker  | bpf-linker 0.13.0 built against Debian's LLVM 22 (~40 s)    | <cache>/tools    |
//! | venv        | SecantusDB (secantusd-py) + pymongo, tests/requirements.txt | <cache>/venv     |
//! | test-python | the tests' tools, tests/requirements-checks.txt             | <cache>/venv     |
//! |             | PyOpenSSL, tests/requirements-pyopenssl.txt (kept apart)    | <cache>/pyopenssl|
//! |             | OpenSSL 1.1.1, tests/requirements-openssl11.txt (apart)     | <cache>/openssl11|
//! | node        | mongodb 7 + mongosh 2, `npm ci` of tests/node's lock        | <cache>/node     |
//! | secantusd-rs| secantus-mdb from crates.io (about 5 min, 1 GB peak)        | <cache>/tools    |
//! | test-tools  | iproute2, openssl, prometheus (Debian packages), e2e tests  | the system       |
//! | image       | podman and runc (Debian packages): `cargo xtask image` and  | the system       |
//! |             | its test, which runs the image (tests/tests/image.rs)       |                  |
//!
//! `setup`, `test` and `bench` set up every part; `demo` only the parts it uses
//! ([`Part::DEMO`]), so a first demo does not wait for the test servers and drivers.

use std::{
    env,
    fs::{self, File},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    ebpf,
    util::{self, Report},
};

/// Debian's eBPF toolchain route of docs/toolchain.md (the bpf-linker part).
const EBPF_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const SECANTUS_CRATE: &str = "secantus-mdb";
pub const SECANTUS_VERSION: &str = "0.5.3-beta.196";
/// The Node driver 7.x needs this (its `engines`).
const MIN_NODE: (u32, u32) = (20, 19);
/// How long to wait for another install into the same root, or another setup, to finish.
const FOREIGN_WAIT: Duration = Duration::from_secs(40 * 60);

/// Parts of the setup: all of them for `setup`, `test` and `bench`, [`Part::DEMO`] for the
/// demo; `setup --skip PART` leaves one out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Installs the Debian packages of the other parts being set up (root).
    Apt,
    BpfLinker,
    /// The server and the driver (tests/requirements.txt): what the demo runs.
    Venv,
    /// What only the tests use: schema checks, the OTLP receiver, the PyOpenSSL overlays.
    TestPython,
    Node,
    SecantusdRs,
    /// qemu and a static busybox, for `cargo xtask kernels` only (not part of the full setup).
    Qemu,
    /// iproute2 (tests across network namespaces) and openssl (the TLS tests' certificates);
    /// they come with this machine kind's image, listed so another Debian gets them too.
    /// prometheus (and its promtool) scrapes `/metrics` for real in the export tests.
    TestTools,
    /// podman, to build the DaemonSet's image (`cargo xtask image`) and to run it in its test.
    Image,
}

impl Part {
    pub const ALL: &[Part] = &[
        Part::Apt,
        Part::BpfLinker,
        Part::Venv,
        Part::TestPython,
        Part::Node,
        Part::SecantusdRs,
        Part::TestTools,
        Part::Image,
    ];
    /// What `cargo xtask demo` uses: the eBPF toolchain to build mongowatch, and the venv with
    /// secantusd-py and pymongo for the server and the sample application.
    pub const DEMO: &[Part] = &[Part::Apt, Part::BpfLinker, Part::Venv];
    /// What `cargo xtask kernels` uses: the eBPF toolchain, qemu and busybox.
    pub const KERNELS: &[Part] = &[Part::Apt, Part::BpfLinker, Part::Qemu];

    /// The Debian packages this part needs.
    pub fn apt_packages(self) -> &'static [&'static str] {
        match self {
            Part::Apt | Part::Node | Part::TestPython => &[],
            Part::BpfLinker => EBPF_PACKAGES,
            Part::Venv => &["python3-venv"],
            // secantus-mdb builds WiredTiger with them.
            Part::SecantusdRs => &["cmake", "ninja-build"],
            Part::TestTools => &["iproute2", "openssl", "prometheus"],
            // runc named: podman depends on crun or runc and apt would pick crun, whose Debian
            // 12 version refuses hosts with hybrid cgroups ("cgroups in hybrid mode not
            // supported"); the image test runs `--runtime runc`. netavark named so that the
            // network stack does not depend on apt's choice among the providers.
            Part::Image => &["podman", "runc", "netavark"],
            // No cpio binary on Debian's base image; busybox's builds the initramfs.
            Part::Qemu => &["qemu-system-x86", "busybox-static"],
        }
    }
}

/// The Debian packages of `parts`.
pub fn apt_packages(parts: &[Part]) -> Vec<&'static str> {
    let mut all: Vec<&'static str> = Vec::new();
    for p in parts {
        for name in p.apt_packages() {
            if !all.contains(name) {
                all.push(name);
            }
        }
    }
    all
}

#[derive(Clone)]
pub struct Paths {
    pub workspace: PathBuf,
    pub cache: PathBuf,
    pub tools: PathBuf,
    pub venv: PathBuf,
    pub node: PathBuf,
}

impl Paths {
    pub fn new(workspace: &Path) -> Result<Paths> {
        let mut cache = ebpf::cache_dir(workspace);
        if cache.is_relative() {
            cache = env::current_dir()?.join(cache);
        }
        Ok(Paths {
            workspace: workspace.to_path_buf(),
            tools: cache.join("tools"),
            venv: cache.join("venv"),
            node: cache.join("node"),
            cache,
        })
    }
}

/// Sets up `parts` (in their fixed order, whatever the order given).
pub fn run_setup(workspace: &Path, parts: &[Part]) -> Result<()> {
    let p = Paths::new(workspace)?;
    fs::create_dir_all(&p.cache).with_context(|| format!("creating {}", p.cache.display()))?;
    eprintln!("setup: project cache {}", p.cache.display());
    let _lock = lock_cache(&p.cache)?;
    let mut report = Report::default();
    report.step("kernel", check_kernel)?;
    let todo = |part: Part| parts.contains(&part);
    if todo(Part::Apt) {
        let packages = apt_packages(parts);
        report.step("apt", || apt_install(&packages))?;
    }
    // The venv is mostly downloads and bpf-linker a CPU-bound build: neither waits for the
    // other. (Their output interleaves on stderr.)
    let (server, tests) = (todo(Part::Venv), todo(Part::TestPython));
    let venv = (server || tests).then(|| {
        let p = p.clone();
        thread::spawn(move || {
            let start = Instant::now();
            let result = (|| {
                let mut did = Vec::new();
                if server {
                    did.push(python_venv(&p)?);
                }
                if tests {
                    did.push(venv_requirements(&p, "tests/requirements-checks.txt")?);
                    did.push(pyopenssl_overlays(&p)?);
                }
                Ok(did.join("; "))
            })();
            (result, start.elapsed())
        })
    });
    if todo(Part::BpfLinker) {
        report.step("bpf-linker", || bpf_linker(&p))?;
        report.step("rust-src", nightly_rust_src)?;
    }
    if let Some(venv) = venv {
        // This step's time is what was left to wait for; its account says what it took.
        report.step("venv", || {
            let (result, took) = venv
                .join()
                .map_err(|_| anyhow::anyhow!("the venv step panicked"))?;
            result.map(|what| format!("{what} (took {} in parallel)", util::secs(took)))
        })?;
    }
    if todo(Part::Node) {
        report.step("node", || node_drivers(&p))?;
    }
    if todo(Part::SecantusdRs) {
        report.step("secantusd-rs", || secantusd_rs(&p))?;
    }
    report.print("setup done");
    Ok(())
}

/// Runs a setup command (pip, npm, cargo install, apt-get) with its output on stderr: setup
/// runs first in `cargo xtask demo`, whose stdout carries only audit records
/// (`cargo xtask demo > audit.jsonl`).
fn run(cmd: &mut Command) -> Result<()> {
    util::run(cmd.stdout(std::io::stderr()))
}

/// Holds `<cache>/.setup.lock` so two setups never install into the same cache at once.
fn lock_cache(cache: &Path) -> Result<File> {
    let path = cache.join(".setup.lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let deadline = Instant::now() + FOREIGN_WAIT;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) => {
                if !told {
                    eprintln!(
                        "setup: another `cargo xtask setup` holds {}; waiting",
                        path.display()
                    );
                    told = true;
                }
                if Instant::now() > deadline {
                    bail!("{} still locked after {FOREIGN_WAIT:?}", path.display());
                }
                thread::sleep(Duration::from_secs(2));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

fn check_kernel() -> Result<String> {
    let mut notes = Vec::new();
    if Path::new("/sys/kernel/btf/vmlinux").is_file() {
        notes.push("BTF at /sys/kernel/btf/vmlinux".to_string());
    } else {
        eprintln!(
            "WARNING: /sys/kernel/btf/vmlinux is missing: this kernel has no BTF \
             (CONFIG_DEBUG_INFO_BTF), and mongowatch's programs need it to load."
        );
        notes.push("WARNING: no kernel BTF".to_string());
    }
    // aya attaches tracepoints by the ids under tracefs; some machines boot without it mounted.
    let tracefs = Path::new("/sys/kernel/tracing");
    if tracefs.join("events").is_dir() || Path::new("/sys/kernel/debug/tracing/events").is_dir() {
        notes.push("tracefs mounted".to_string());
    } else if util::is_root() && tracefs.is_dir() {
        run(Command::new("mount")
            .args(["-t", "tracefs", "tracefs"])
            .arg(tracefs))
        .context("mounting tracefs")?;
        notes.push(format!("mounted tracefs on {}", tracefs.display()));
    } else {
        eprintln!(
            "WARNING: tracefs is not mounted and this is not root: \
             mount -t tracefs tracefs /sys/kernel/tracing"
        );
        notes.push("WARNING: tracefs not mounted".to_string());
    }
    Ok(notes.join("; "))
}

/// The packages of `names` that dpkg does not have installed. `None` if dpkg is missing.
fn missing_packages(names: &[&str]) -> Option<Vec<String>> {
    // dpkg-query exits 1 when some name is unknown, but still prints the known ones.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${db:Status-Abbrev}\n")
        .args(names)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    Some(
        names
            .iter()
            .filter(|n| !installed.contains(n))
            .map(|n| n.to_string())
            .collect(),
    )
}

/// The eBPF build prefers rustup's nightly with `rust-src` (`-Z build-std=core`, the usual aya
/// route) where one exists; try to add the component to an installed nightly. Where rustup
/// cannot download it (machines without its distribution server), the build uses Debian's
/// rustc with its precompiled BPF `core`, which the apt step installed.
fn nightly_rust_src() -> Result<String> {
    let has = || {
        util::output(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            "nightly",
            "--installed",
        ]))
        .is_some_and(|out| out.lines().any(|l| l.starts_with("rust-src")))
    };
    let nightly = util::output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|out| out.lines().any(|l| l.starts_with("nightly")));
    if !nightly {
        return Ok("no rustup nightly: the eBPF build uses Debian's rustc".into());
    }
    if has() {
        return Ok("nightly has rust-src: the eBPF build uses it".into());
    }
    let added = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    Ok(if added && has() {
        "added rust-src to nightly: the eBPF build uses it".into()
    } else {
        "rust-src cannot be had here: the eBPF build uses Debian's rustc".into()
    })
}

fn apt_install(packages: &[&str]) -> Result<String> {
    if packages.is_empty() {
        return Ok("no Debian packages needed".into());
    }
    let Some(missing) = missing_packages(packages) else {
        eprintln!(
            "WARNING: dpkg-query not found: not a Debian system. Install the equivalents of {} \
             yourself (README.md, Developing).",
            packages.join(" ")
        );
        return Ok("not Debian: skipped".into());
    };
    if missing.is_empty() {
        return Ok(format!("all {} packages already installed", packages.len()));
    }
    if !util::is_root() {
        bail!(
            "Debian packages missing: {}. Run setup as root, or: sudo apt-get install -y \
             --no-install-recommends {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    let apt = |args: &[&str]| -> Result<()> {
        // Waits for another apt-get (another setup, or the system's) instead of failing.
        run(Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("NEEDRESTART_MODE", "a"))
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing.iter().map(String::as_str));
    apt(&args)?;
    let still = missing_packages(packages).unwrap_or_default();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(format!("installed {}", missing.join(" ")))
}

/// Waits while another `cargo install <krate> ... --root <root>` runs (a person's, or another
/// setup's in a different checkout sharing the cache), so two never build into one root.
fn wait_for_foreign_install(krate: &str, root: &Path) -> Result<()> {
    let root_s = root.to_string_lossy();
    let deadline = Instant::now() + FOREIGN_WAIT;
    let mut last_note = None::<Instant>;
    loop {
        let others = util::processes_matching(&["cargo", "install", krate, &root_s]);
        let Some((pid, _)) = others.first() else {
            return Ok(());
        };
        if Instant::now() > deadline {
            bail!("another `cargo install {krate}` (pid {pid}) into {root_s} still runs after {FOREIGN_WAIT:?}");
        }
        if last_note.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            eprintln!("setup: another `cargo install {krate}` (pid {pid}) is installing into {root_s}; waiting for it");
            last_note = Some(Instant::now());
        }
        thread::sleep(Duration::from_secs(3));
    }
}

fn bpf_linker_version(bin: &Path) -> Option<String> {
    util::output(Command::new(bin).arg("--version")).map(|s| s.trim().to_string())
}

fn bpf_linker(p: &Paths) -> Result<String> {
    let bin = p.tools.join("bin/bpf-linker");
    let current = || bpf_linker_version(&bin).filter(|v| v.contains(BPF_LINKER_VERSION));
    if let Some(v) = current() {
        return Ok(format!("already there: {v}"));
    }
    wait_for_foreign_install("bpf-linker", &p.tools)?;
    if let Some(v) = current() {
        return Ok(format!("installed meanwhile by another process: {v}"));
    }
    let llvm_bin = Path::new(LLVM_PREFIX).join("bin");
    if !llvm_bin.join("llvm-config").is_file() {
        bail!(
            "{} is missing: install llvm-22-dev (the apt step does)",
            llvm_bin.join("llvm-config").display()
        );
    }
    let path = env::join_paths(
        std::iter::once(llvm_bin).chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    run(util::cargo()
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ])
        .args(["--no-default-features", "--features", "llvm-22", "--root"])
        .arg(&p.tools)
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("PATH", path)
        // A fresh `cargo xtask demo` waits for this build. Its release profile asks for full
        // debug info, which nobody reads here, and optimizes the linker's own Rust code, whose
        // time is nothing beside LLVM's: without either the build takes 65 CPU-seconds, not
        // 154, and it links the kernel programs into the same bytes in the same time.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0")
        .env_remove("CARGO_TARGET_DIR"))?;
    let v = bpf_linker_version(&bin)
        .with_context(|| format!("{} does not run after the install", bin.display()))?;
    Ok(format!("built {v}"))
}

fn python_venv(p: &Paths) -> Result<String> {
    let python = p.venv.join("bin/python");
    let works = |py: &Path| util::output(Command::new(py).args(["-c", "import sys"])).is_some();
    let mut did = Vec::new();
    if !works(&python) {
        if p.venv.exists() {
            fs::remove_dir_all(&p.venv)
                .with_context(|| format!("removing a broken {}", p.venv.display()))?;
        }
        let base = ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|py| {
                util::output(Command::new(py).args(["-c", "import venv, ensurepip"])).is_some()
            })
            .context(
                "no python3 with the venv and ensurepip modules (Debian: apt-get install python3-venv)",
            )?;
        run(Command::new(base).args(["-m", "venv"]).arg(&p.venv))?;
        did.push(format!("created the venv with {base}"));
    }
    if !p.venv.join("bin/secantusd-py").is_file() {
        // Whatever the stamp says, the server is not there: install again.
        let _ = fs::remove_file(p.venv.join(".mongowatch-requirements.txt"));
    }
    did.push(venv_requirements(p, "tests/requirements.txt")?);
    if !p.venv.join("bin/secantusd-py").is_file() {
        bail!(
            "pip succeeded but {} is missing",
            p.venv.join("bin/secantusd-py").display()
        );
    }
    Ok(did.join("; "))
}

/// `pip install -r <requirements>` into the venv, unless a stamp beside it says it was done
/// with this very file.
fn venv_requirements(p: &Paths, requirements: &str) -> Result<String> {
    let path = p.workspace.join(requirements);
    let wanted =
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let name = Path::new(requirements)
        .file_name()
        .context("a requirements file")?
        .to_string_lossy();
    let stamp = p.venv.join(format!(".mongowatch-{name}"));
    if fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(format!("already matches {requirements}"));
    }
    let _ = fs::remove_file(&stamp);
    run(Command::new(p.venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--pre",
            "-r",
        ])
        .arg(&path)
        .env("PIP_NO_INPUT", "1"))?;
    fs::write(&stamp, &wanted)?;
    Ok(format!("installed {requirements}"))
}

/// PyOpenSSL beside the venv, not in it: pymongo prefers it when it can import it, and only
/// the tests of that path put it on PYTHONPATH (see tests/requirements-pyopenssl.txt and
/// tests/requirements-openssl11.txt).
fn pyopenssl_overlays(p: &Paths) -> Result<String> {
    Ok([
        overlay(p, "pyopenssl", "tests/requirements-pyopenssl.txt")?,
        overlay(p, "openssl11", "tests/requirements-openssl11.txt")?,
    ]
    .join("; "))
}

/// `pip install --target <cache>/<name> -r <requirements>`, unless already done.
fn overlay(p: &Paths, name: &str, requirements: &str) -> Result<String> {
    let wanted = fs::read_to_string(p.workspace.join(requirements))
        .with_context(|| format!("reading {requirements}"))?;
    let dir = p.cache.join(name);
    let stamp = dir.join(".mongowatch-requirements.txt");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str())
        && dir.join("OpenSSL").is_dir()
    {
        return Ok(format!("{name} already matches {requirements}"));
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    run(Command::new(p.venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--target",
        ])
        .arg(&dir)
        .arg("-r")
        .arg(p.workspace.join(requirements))
        .env("PIP_NO_INPUT", "1"))?;
    fs::write(&stamp, &wanted)?;
    Ok(format!("installed {requirements}"))
}

fn parse_node_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().trim_start_matches('v').split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn node_drivers(p: &Paths) -> Result<String> {
    let src = p.workspace.join("tests/node");
    let lock =
        fs::read(src.join("package-lock.json")).context("reading tests/node/package-lock.json")?;
    let stamp = p.node.join(".mongowatch-installed-lock.json");
    let installed = |rel: &str| p.node.join("node_modules").join(rel).is_file();
    if fs::read(&stamp).ok().as_deref() == Some(lock.as_slice())
        && installed("mongodb/package.json")
        && installed("mongosh/package.json")
    {
        return Ok("already matches tests/node/package-lock.json".into());
    }
    let node_v = util::output(Command::new("node").arg("--version"))
        .context("node not found on PATH (this machine kind ships Node 20; Debian's is too old)")?;
    match parse_node_version(&node_v) {
        Some(v) if v >= MIN_NODE => {}
        _ => bail!(
            "node {} is too old: the mongodb driver 7 needs {}.{} or newer",
            node_v.trim(),
            MIN_NODE.0,
            MIN_NODE.1
        ),
    }
    fs::create_dir_all(&p.node)?;
    let _ = fs::remove_file(&stamp);
    for f in ["package.json", "package-lock.json"] {
        fs::copy(src.join(f), p.node.join(f)).with_context(|| format!("copying tests/node/{f}"))?;
    }
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&p.node))?;
    fs::write(&stamp, &lock)?;
    Ok(format!("npm ci with node {}", node_v.trim()))
}

fn secantusd_installed(p: &Paths) -> bool {
    p.tools.join("bin/secantusd-rs").is_file()
        && fs::read_to_string(p.tools.join(".crates.toml"))
            .is_ok_and(|t| t.contains(&format!("\"{SECANTUS_CRATE} {SECANTUS_VERSION} ")))
}

fn secantusd_rs(p: &Paths) -> Result<String> {
    if secantusd_installed(p) {
        return Ok(format!(
            "already there: {SECANTUS_CRATE} {SECANTUS_VERSION}"
        ));
    }
    wait_for_foreign_install(SECANTUS_CRATE, &p.tools)?;
    if secantusd_installed(p) {
        return Ok(format!(
            "installed meanwhile by another process: {SECANTUS_CRATE} {SECANTUS_VERSION}"
        ));
    }
    for tool in ["cmake", "ninja"] {
        if util::output(Command::new(tool).arg("--version")).is_none() {
            bail!("{tool} not found: secantus-mdb builds WiredTiger with cmake and ninja (the apt step installs them)");
        }
    }
    eprintln!(
        "setup: building {SECANTUS_CRATE} {SECANTUS_VERSION} (about 5 min on 2 cores, 1 GB peak)"
    );
    run(util::cargo()
        .args([
            "install",
            SECANTUS_CRATE,
            "--version",
            SECANTUS_VERSION,
            "--ignore-rust-version",
            "--root",
        ])
        .arg(&p.tools)
        .env_remove("CARGO_TARGET_DIR"))?;
    if !secantusd_installed(p) {
        bail!(
            "cargo install succeeded but {} is missing",
            p.tools.join("bin/secantusd-rs").display()
        );
    }
    Ok(format!("built {SECANTUS_CRATE} {SECANTUS_VERSION}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_installs_only_the_ebpf_toolchain_and_the_venv() {
        assert_eq!(
            apt_packages(Part::DEMO),
            [
                "rustc-web",
                "cargo-web",
                "libstd-rust-web-dev-bpf",
                "llvm-22-dev",
                "python3-venv"
            ]
        );
        assert_eq!(apt_packages(Part::ALL).len(), 13);
    }

    #[test]
    fn node_versions() {
        assert_eq!(parse_node_version("v20.20.2\n"), Some((20, 20)));
        assert!(parse_node_version("v20.20.2").unwrap() >= MIN_NODE);
        assert!(parse_node_version("v18.19.0").unwrap() < MIN_NODE);
        assert_eq!(parse_node_version("garbage"), None);
    }
}
