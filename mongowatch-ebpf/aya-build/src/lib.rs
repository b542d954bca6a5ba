//! The one function of aya-build that the kernel programs' dependencies call.
//!
//! aya-ebpf, aya-ebpf-bindings and aya-ebpf-cty run aya-build in their build scripts only to
//! emit the `bpf_target_arch` cfg. The real crate also builds user-space eBPF crates, and for
//! that it depends on cargo_metadata, and so on serde, serde_json, thiserror and syn: about 60
//! of the 80 CPU-seconds a fresh build of `mongowatch-ebpf` took, the largest single part of a
//! first `cargo xtask demo`. `mongowatch-ebpf/Cargo.toml` patches it with this crate, which
//! emits the same cfg with the standard library alone.

use std::{env, error::Error};

/// What the build scripts return.
pub type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// The architectures the `bpf_target_arch` cfg may name (for `check-cfg`).
const ARCHES: &[&str] = &[
    "aarch64",
    "arm",
    "loongarch64",
    "mips",
    "mips64",
    "powerpc64",
    "riscv64",
    "s390x",
    "x86_64",
];

/// Emits `bpf_target_arch`: the architecture whose kernel the programs read structs of.
///
/// Left alone when RUSTFLAGS already passes `--cfg bpf_target_arch=...`; else taken from
/// `AYA_BPF_TARGET_ARCH`, else from the target, and for the BPF targets from the host (a program
/// is loaded on the machine that builds it unless said otherwise).
pub fn emit_bpf_target_arch_cfg() -> Result<()> {
    println!("cargo::rerun-if-env-changed=AYA_BPF_TARGET_ARCH");
    if env::var_os("CARGO_CFG_BPF_TARGET_ARCH").is_none() {
        let arch = match env::var("AYA_BPF_TARGET_ARCH") {
            Ok(arch) => arch,
            Err(env::VarError::NotUnicode(v)) => {
                return Err(format!("AYA_BPF_TARGET_ARCH={v:?}").into())
            }
            Err(env::VarError::NotPresent) => {
                let target = env::var("CARGO_CFG_TARGET_ARCH")?;
                if target == "bpf" {
                    let host = env::var("HOST")?;
                    host.split_once('-')
                        .map_or(host.as_str(), |(a, _)| a)
                        .to_owned()
                } else {
                    target
                }
            }
        };
        let arch = if arch.starts_with("riscv64") {
            "riscv64"
        } else {
            arch.as_str()
        };
        println!("cargo::rustc-cfg=bpf_target_arch=\"{arch}\"");
    }
    let values: Vec<String> = ARCHES.iter().map(|a| format!("\"{a}\"")).collect();
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values({}))",
        values.join(",")
    );
    Ok(())
}
