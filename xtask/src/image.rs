//! `cargo xtask image`: the OCI image of the DaemonSet (`deploy/`), built offline with podman or
//! buildah: `FROM scratch` holding the release binary (or the one `--binary` names: the image
//! test packages the debug build under test), its shared libraries (the C library and
//! libgcc_s, found with `ldd`) and nothing else. No shell, no package manager.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::util::{self, run};

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Image name and tag (default localhost/mongowatch:<version>).
    #[arg(long)]
    pub tag: Option<String>,
    /// Package this mongowatch binary instead of building the release one.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

/// The shared objects `ldd` lists for `bin`: resolved paths, and the dynamic loader.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = util::output(Command::new("ldd").arg(bin))
        .with_context(|| format!("ldd {} failed", bin.display()))?;
    let mut libs = Vec::new();
    for line in out.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Copies `src` to the same absolute path under `root`, following symlinks.
fn copy_into(root: &Path, src: &Path) -> Result<()> {
    let dest = root.join(src.strip_prefix("/").unwrap_or(src));
    fs::create_dir_all(dest.parent().context("a library at /")?)?;
    fs::copy(src, &dest).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

pub fn build_image(workspace: &Path, args: &ImageArgs) -> Result<()> {
    let builder = ["podman", "buildah"]
        .into_iter()
        .find(|b| util::output(Command::new(b).arg("--version")).is_some())
        .context(
            "neither podman nor buildah is installed (Debian: apt-get install podman, or \
             buildah)",
        )?;
    let bin = match &args.binary {
        Some(bin) => {
            if !bin.is_file() {
                bail!("--binary {}: no such file", bin.display());
            }
            bin.clone()
        }
        None => {
            run(util::cargo()
                .current_dir(workspace)
                .env("MONGOWATCH_REQUIRE_EBPF", "1")
                .args([
                    "build",
                    "--release",
                    "-p",
                    "mongowatch-user",
                    "--bin",
                    "mongowatch",
                ]))?;
            util::target_dir(workspace)?.join("release/mongowatch")
        }
    };
    let stage = std::env::temp_dir().join(format!("mongowatch-image-{}", std::process::id()));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let result = build_in(&stage, &bin, builder, args);
    // The staged copy of the binary and its libraries is in the image now, or useless.
    let _ = fs::remove_dir_all(&stage);
    result
}

/// Stages the root filesystem of the image in `stage` and builds it with `builder`.
fn build_in(stage: &Path, bin: &Path, builder: &str, args: &ImageArgs) -> Result<()> {
    let root = stage.join("rootfs");
    fs::create_dir_all(root.join("usr/bin"))?;
    // Debug sections out (the embedded kernel programs are data, and stay).
    let dest = root.join("usr/bin/mongowatch");
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(bin)
        .arg(&dest)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(bin, &dest)?;
    }
    for lib in shared_libraries(bin)? {
        copy_into(&root, &lib)?;
    }
    // Where the binary writes nothing but a rotated file may go (a hostPath mount).
    fs::create_dir_all(root.join("var/log/mongowatch"))?;
    fs::write(
        stage.join("Containerfile"),
        "FROM scratch\n\
         COPY rootfs/ /\n\
         LABEL org.opencontainers.image.title=mongowatch \\\n\
               org.opencontainers.image.description=\"Audits MongoDB operations from the kernel (eBPF)\" \\\n\
               org.opencontainers.image.licenses=Apache-2.0\n\
         ENTRYPOINT [\"/usr/bin/mongowatch\"]\n",
    )?;
    let tag = args
        .tag
        .clone()
        .unwrap_or_else(|| format!("localhost/mongowatch:{}", env!("CARGO_PKG_VERSION")));
    let mut cmd = Command::new(builder);
    if builder == "podman" {
        cmd.args(["build", "--network", "none"]);
    } else {
        cmd.args(["bud"]);
    }
    run(cmd
        .args(["-t", &tag, "-f"])
        .arg(stage.join("Containerfile"))
        .arg(stage))?;
    let size = util::output(Command::new(builder).args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &tag,
    ]));
    println!(
        "{tag} built with {builder}{}",
        size.map(|s| format!(" ({} bytes)", s.trim()))
            .unwrap_or_default()
    );
    Ok(())
}
