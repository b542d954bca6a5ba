//! Offsets of the kernel struct fields the probes read, from the running kernel's BTF.
//!
//! The eBPF toolchain that builds here emits no CO-RE relocations, so the loader does the
//! relocation by hand: it looks each field up in `/sys/kernel/btf/vmlinux` and hands the byte
//! offsets to the programs as a load-time global. A kernel whose layout differs gets the right
//! offsets; a kernel without the field gets a clear error instead of wrong reads.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, Type};
use mongowatch_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Reads the offsets from the kernel's BTF file.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets> {
    let btf = Btf::from_file(path).with_context(|| {
        format!(
            "cannot read the kernel's BTF at {} (mongowatch needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y)",
            path.display()
        )
    })?;
    let sk = |field: &str| field_offset(&btf, "sock", &["__sk_common", field]);
    Ok(KernelOffsets {
        skc_family: sk("skc_family")?,
        skc_daddr: sk("skc_daddr")?,
        skc_rcv_saddr: sk("skc_rcv_saddr")?,
        skc_dport: sk("skc_dport")?,
        skc_num: sk("skc_num")?,
        skc_v6_daddr: sk("skc_v6_daddr")?,
        skc_v6_rcv_saddr: sk("skc_v6_rcv_saddr")?,
        unix_addr: field_offset(&btf, "unix_sock", &["addr"])?,
        unix_peer: field_offset(&btf, "unix_sock", &["peer"])?,
        unix_address_len: field_offset(&btf, "unix_address", &["len"])?,
        unix_address_name: field_offset(&btf, "unix_address", &["name"])?,
        task_tgid: field_offset(&btf, "task_struct", &["tgid"])?,
        task_pid: field_offset(&btf, "task_struct", &["pid"])?,
        valid: 1,
    })
}

/// Byte offset of `path` (member names, outermost first) inside `struct name`. Anonymous
/// struct and union members are searched through, as C does.
pub fn field_offset(btf: &Btf, name: &str, path: &[&str]) -> Result<u32> {
    let root = btf
        .resolve_types_by_name(name)
        .with_context(|| format!("struct {name} is not in the kernel's BTF"))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| anyhow!("{name} is not a struct in the kernel's BTF"))?;
    let mut current = root;
    let mut total_bits = 0u32;
    for (depth, member_name) in path.iter().enumerate() {
        let (bits, ty) = find_member(btf, &current, member_name, 0)?.ok_or_else(|| {
            anyhow!(
                "the kernel's struct {name} has no field {}",
                path[..=depth].join(".")
            )
        })?;
        total_bits += bits;
        current = ty;
    }
    if !total_bits.is_multiple_of(8) {
        bail!("{name}.{} is a bitfield", path.join("."));
    }
    Ok(total_bits / 8)
}

/// Finds `wanted` among the members of a struct or union (recursing into anonymous ones);
/// returns its bit offset and its type, with typedefs and qualifiers stripped.
fn find_member(btf: &Btf, ty: &Type, wanted: &str, depth: u32) -> Result<Option<(u32, Type)>> {
    if depth > 8 {
        return Ok(None);
    }
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for member in members {
        let name = btf.resolve_name(member).unwrap_or_default();
        let member_ty = strip(btf, btf.resolve_chained_type(member)?)?;
        if name == wanted {
            return Ok(Some((member.bit_offset(), member_ty)));
        }
        if name.is_empty() {
            if let Some((bits, found)) = find_member(btf, &member_ty, wanted, depth + 1)? {
                return Ok(Some((member.bit_offset() + bits, found)));
            }
        }
    }
    Ok(None)
}

/// Follows typedefs and qualifiers down to the type they name.
fn strip(btf: &Btf, mut ty: Type) -> Result<Type> {
    for _ in 0..16 {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Const(t) => btf.resolve_chained_type(t)?,
            Type::Volatile(t) => btf.resolve_chained_type(t)?,
            Type::Restrict(t) => btf.resolve_chained_type(t)?,
            Type::TypeTag(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
    Ok(ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads this machine's BTF when it has one; the offsets of fields that have not moved in
    /// years are checked against their well-known values.
    #[test]
    fn offsets_from_this_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: no {VMLINUX_BTF} on this machine");
            return;
        }
        let off = kernel_offsets(path).expect("offsets");
        // struct sock_common begins struct sock; its address pair comes first.
        assert_eq!(off.skc_daddr, 0);
        assert_eq!(off.skc_rcv_saddr, 4);
        assert_eq!(off.skc_dport, 12);
        assert_eq!(off.skc_num, 14);
        assert_eq!(off.skc_family, 16);
        assert!(
            off.unix_addr > off.skc_v6_rcv_saddr,
            "unix_sock extends sock"
        );
        assert_ne!(off.task_pid, off.task_tgid);
        assert_eq!(off.valid, 1);
    }

    #[test]
    fn missing_field_is_a_clear_error() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: no {VMLINUX_BTF} on this machine");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let err = field_offset(&btf, "sock", &["no_such_field"]).unwrap_err();
        assert!(err.to_string().contains("no field no_such_field"), "{err}");
    }
}
