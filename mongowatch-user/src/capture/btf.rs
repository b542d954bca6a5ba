//! Offsets of the kernel struct fields the probes read, from the running kernel's BTF.
//!
//! The eBPF toolchain that builds here emits no CO-RE relocations, so the loader does the
//! relocation by hand: it looks each field up in `/sys/kernel/btf/vmlinux` and hands the byte
//! offsets to the programs as a load-time global. A kernel whose layout differs gets the right
//! offsets; a kernel without the field gets a clear error instead of wrong reads.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, Type};
use mongowatch_common::{KernelOffsets, SocketPathOffsets};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Reads the offsets from the kernel's BTF file.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets> {
    let btf = read_btf(path)?;
    kernel_offsets_from(&btf)
}

/// The offsets from a BTF already read.
pub fn kernel_offsets_from(btf: &Btf) -> Result<KernelOffsets> {
    let sk = |field: &str| field_offset(btf, "sock", &["__sk_common", field]);
    Ok(KernelOffsets {
        skc_family: sk("skc_family")?,
        skc_daddr: sk("skc_daddr")?,
        skc_rcv_saddr: sk("skc_rcv_saddr")?,
        skc_dport: sk("skc_dport")?,
        skc_num: sk("skc_num")?,
        skc_v6_daddr: sk("skc_v6_daddr")?,
        skc_v6_rcv_saddr: sk("skc_v6_rcv_saddr")?,
        unix_addr: field_offset(btf, "unix_sock", &["addr"])?,
        unix_peer: field_offset(btf, "unix_sock", &["peer"])?,
        unix_address_len: field_offset(btf, "unix_address", &["len"])?,
        unix_address_name: field_offset(btf, "unix_address", &["name"])?,
        task_tgid: field_offset(btf, "task_struct", &["tgid"])?,
        task_pid: field_offset(btf, "task_struct", &["pid"])?,
        task_start_boottime: field_offset(btf, "task_struct", &["start_boottime"])?,
        task_group_leader: field_offset(btf, "task_struct", &["group_leader"])?,
        task_signal: field_offset(btf, "task_struct", &["signal"])?,
        signal_live: field_offset(btf, "signal_struct", &["live"])?,
        valid: 1,
    })
}

/// The offsets the rungs below the socket tracepoints need (see `SocketPathOffsets`).
pub fn socket_path_offsets_from(btf: &Btf) -> Result<SocketPathOffsets> {
    // `struct file`'s reference count was an atomic_long_t `f_count` (1 = one reference) until
    // Linux 6.13 made it a file_ref_t `f_ref` (0 = one reference).
    let (file_count, file_count_one) = match field_offset(btf, "file", &["f_count"]) {
        Ok(off) => (off, 1),
        Err(_) => (field_offset(btf, "file", &["f_ref", "refcnt"])?, 0),
    };
    Ok(SocketPathOffsets {
        task_files: field_offset(btf, "task_struct", &["files"])?,
        files_fdt: field_offset(btf, "files_struct", &["fdt"])?,
        fdtable_max_fds: field_offset(btf, "fdtable", &["max_fds"])?,
        fdtable_fd: field_offset(btf, "fdtable", &["fd"])?,
        file_inode: field_offset(btf, "file", &["f_inode"])?,
        file_private_data: field_offset(btf, "file", &["private_data"])?,
        file_count,
        file_count_one,
        inode_mode: field_offset(btf, "inode", &["i_mode"])?,
        inode_ino: field_offset(btf, "inode", &["i_ino"])?,
        socket_sk: field_offset(btf, "socket", &["sk"])?,
        socket_inode: field_offset(btf, "socket_alloc", &["vfs_inode"])?,
        valid: 1,
    })
}

/// Whether the kernel has a (not inlined) function `name`: BTF lists those only.
pub fn has_function(btf: &Btf, name: &str) -> bool {
    btf.resolve_types_by_name(name)
        .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
}

/// What the kernel programs need of the kernel, as its BTF tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFeatures {
    /// The `sock_send_length` and `sock_recv_length` tracepoints (Linux 6.3).
    pub sock_length_tracepoints: bool,
    /// The `bpf_loop` helper (Linux 5.17).
    pub bpf_loop: bool,
    /// BPF ring buffers (Linux 5.8).
    pub ring_buffer: bool,
    /// The `bpf_task_pt_regs` helper (Linux 5.15), with which every rung finds the buffers.
    pub task_pt_regs: bool,
}

impl KernelFeatures {
    /// Reads them from a kernel's BTF: the tracepoints by their BTF types
    /// (`btf_trace_<name>`), the helper and the map type by their names in the kernel's UAPI
    /// enums (`BPF_FUNC_loop`, `BPF_MAP_TYPE_RINGBUF`).
    pub fn read(btf: &Btf) -> Self {
        Self {
            sock_length_tracepoints: has_type(btf, "btf_trace_sock_send_length")
                && has_type(btf, "btf_trace_sock_recv_length"),
            bpf_loop: has_enum_value(btf, "bpf_func_id", "BPF_FUNC_loop"),
            ring_buffer: has_enum_value(btf, "bpf_map_type", "BPF_MAP_TYPE_RINGBUF"),
            task_pt_regs: has_enum_value(btf, "bpf_func_id", "BPF_FUNC_task_pt_regs"),
        }
    }
}

pub fn read_btf(path: &Path) -> Result<Btf> {
    Btf::from_file(path).with_context(|| {
        format!(
            "cannot read the kernel's BTF at {} (mongowatch needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y)",
            path.display()
        )
    })
}

fn has_type(btf: &Btf, name: &str) -> bool {
    btf.resolve_types_by_name(name)
        .is_ok_and(|types| !types.is_empty())
}

fn has_enum_value(btf: &Btf, enum_name: &str, value: &str) -> bool {
    let Ok(types) = btf.resolve_types_by_name(enum_name) else {
        return false;
    };
    types.iter().any(|t| match t {
        Type::Enum(e) => e
            .members
            .iter()
            .any(|m| btf.resolve_name(m).is_ok_and(|n| n == value)),
        _ => false,
    })
}

/// Arguments of BTF tracepoint `name` as its programs see them (the prototype of
/// `btf_trace_<name>` without its leading `void *` context), or None when the kernel has no
/// such tracepoint.
pub fn tracepoint_args(btf: &Btf, name: &str) -> Option<usize> {
    let types = btf
        .resolve_types_by_name(&format!("btf_trace_{name}"))
        .ok()?;
    let Type::Typedef(def) = types.into_iter().find(|t| matches!(t, Type::Typedef(_)))? else {
        return None;
    };
    let Type::Ptr(ptr) = btf.resolve_chained_type(&def).ok()? else {
        return None;
    };
    match btf.resolve_chained_type(&ptr).ok()? {
        Type::FuncProto(proto) => Some(proto.parameters.len().saturating_sub(1)),
        _ => None,
    }
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
    use std::io::Write;

    use super::*;

    /// This machine's BTF. Where there is none the test cannot run: under `cargo xtask test`
    /// (which sets MONGOWATCH_REQUIRE_EBPF) that fails it; elsewhere a SKIP line goes to stderr
    /// past the test harness's capture, so the skip is seen, not passed silently.
    fn this_kernel_btf() -> Option<&'static Path> {
        let path = Path::new(VMLINUX_BTF);
        if path.exists() {
            return Some(path);
        }
        let required = std::env::var_os("MONGOWATCH_REQUIRE_EBPF").is_some_and(|v| v != "0");
        assert!(
            !required,
            "no {VMLINUX_BTF} on this machine, and the BTF tests are required"
        );
        let _ = writeln!(std::io::stderr(), "SKIP: no {VMLINUX_BTF} on this machine");
        None
    }

    /// Reads this machine's BTF when it has one; the offsets of fields that have not moved in
    /// years are checked against their well-known values.
    #[test]
    fn offsets_from_this_kernel() {
        let Some(path) = this_kernel_btf() else {
            return;
        };
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
        assert!(off.task_start_boottime > 0 && off.task_signal > 0 && off.task_group_leader > 0);
        assert_eq!(off.valid, 1);
    }

    /// This machine's kernel (6.18 where the project is built) has everything; the tracepoint
    /// prototypes are those of include/trace/events/{sock,sched}.h.
    #[test]
    fn features_and_prototypes_of_this_kernel() {
        let Some(path) = this_kernel_btf() else {
            return;
        };
        let btf = read_btf(path).unwrap();
        assert_eq!(
            KernelFeatures::read(&btf),
            KernelFeatures {
                sock_length_tracepoints: true,
                bpf_loop: true,
                ring_buffer: true,
                task_pt_regs: true,
            }
        );
        // The socket-layer functions the fentry and kprobe rungs hook.
        for function in crate::capture::ladder::SOCKET_FUNCTIONS {
            assert!(has_function(&btf, function.name), "{}", function.name);
        }
        assert!(
            !has_function(&btf, "sock_send_length"),
            "a tracepoint, not a function"
        );
        // sk, ret, flags
        assert_eq!(tracepoint_args(&btf, "sock_send_length"), Some(3));
        // parent, child
        assert_eq!(tracepoint_args(&btf, "sched_process_fork"), Some(2));
        // p, and group_dead on kernels that pass it
        assert!(matches!(
            tracepoint_args(&btf, "sched_process_exit"),
            Some(1 | 2)
        ));
        assert_eq!(tracepoint_args(&btf, "no_such_tracepoint"), None);
        assert!(!has_enum_value(
            &btf,
            "bpf_func_id",
            "BPF_FUNC_no_such_helper"
        ));
    }

    /// The syscall rung's walk from a descriptor to its socket: offsets that cannot be zero,
    /// and 6.13's `f_ref` (this kernel is newer) counting from 0.
    #[test]
    fn socket_path_offsets_of_this_kernel() {
        let Some(path) = this_kernel_btf() else {
            return;
        };
        let off = socket_path_offsets_from(&read_btf(path).unwrap()).expect("offsets");
        assert!(off.task_files > 0 && off.fdtable_fd > 0 && off.file_private_data > 0);
        assert!(off.inode_ino > off.inode_mode);
        // struct socket_alloc { struct socket socket; struct inode vfs_inode; }
        assert!(off.socket_inode > off.socket_sk);
        assert_eq!(off.file_count_one, 0);
        assert_eq!(off.valid, 1);
    }

    #[test]
    fn missing_field_is_a_clear_error() {
        let Some(path) = this_kernel_btf() else {
            return;
        };
        let btf = Btf::from_file(path).unwrap();
        let err = field_offset(&btf, "sock", &["no_such_field"]).unwrap_err();
        assert!(err.to_string().contains("no field no_such_field"), "{err}");
    }
}
