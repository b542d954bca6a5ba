//! The syscall-tracepoint rung, for kernels without the socket tracepoints (before 6.3) and
//! without fentry or kprobes: `syscalls/sys_exit_*` of the socket I/O calls.
//!
//! These tracepoints fire for every such call of every process, sockets or not, so the first
//! thing each program does is the watched-set lookup. The call's arguments are still in the
//! task's syscall registers at exit, so no `sys_enter_*` program is needed to remember them:
//! the data path (`on_socket_data`) reads the buffer from there as it does on the other rungs.
//! The socket is found from the file descriptor (task -> files -> fdtable -> file -> socket);
//! a file that is not a socket is left alone. `sys_enter_close` forgets a socket whose last
//! descriptor is closed (TCP closes are also seen by `inet_sock_set_state`).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, generated::bpf_get_current_task},
    macros::tracepoint,
    programs::TracePointContext,
};
use mongowatch_common::{DIR_EGRESS, DIR_INGRESS};

use crate::{
    config, forget_socket, is_selected, nr, read_kernel, sockfn::socket_of, Regs, MSG_PEEK,
};

/// `struct trace_event_raw_sys_exit`: `long ret` after the common fields and `__syscall_nr`.
pub(crate) const EXIT_RET: usize = 16;
/// `struct trace_event_raw_sys_enter`: the first argument.
const ENTER_ARG0: usize = 16;

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

macro_rules! exit_programs {
    ($($name:ident, $bounded:ident => $dir:expr;)*) => {$(
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_exit::<true>(&ctx, $dir);
            0
        }
        /// The same without `bpf_loop` (Linux before 5.17).
        #[tracepoint]
        pub fn $bounded(ctx: TracePointContext) -> u32 {
            on_exit::<false>(&ctx, $dir);
            0
        }
    )*};
}

exit_programs! {
    sys_exit_read, sys_exit_read_bounded => DIR_INGRESS;
    sys_exit_readv, sys_exit_readv_bounded => DIR_INGRESS;
    sys_exit_recvfrom, sys_exit_recvfrom_bounded => DIR_INGRESS;
    sys_exit_recvmsg, sys_exit_recvmsg_bounded => DIR_INGRESS;
    sys_exit_write, sys_exit_write_bounded => DIR_EGRESS;
    sys_exit_writev, sys_exit_writev_bounded => DIR_EGRESS;
    sys_exit_sendto, sys_exit_sendto_bounded => DIR_EGRESS;
    sys_exit_sendmsg, sys_exit_sendmsg_bounded => DIR_EGRESS;
}

#[inline(always)]
fn on_exit<const LOOP: bool>(ctx: &TracePointContext, direction: u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_selected((pid_tgid >> 32) as u32) {
        return;
    }
    // SAFETY: the field's offset in this tracepoint's fixed record.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(EXIT_RET) }) else {
        return;
    };
    if ret <= 0 {
        return;
    }
    let Some(regs) = syscall_regs() else {
        return;
    };
    // recvfrom(fd, buf, len, flags, ...) and recvmsg(fd, msg, flags): the flags that matter
    // (MSG_PEEK, MSG_TRUNC) are where the syscall ABI puts them.
    let flags = match regs.orig_ax {
        nr::RECVFROM => regs.r10 as i32,
        nr::RECVMSG => regs.dx as i32,
        _ => 0,
    };
    if direction == DIR_INGRESS && flags & MSG_PEEK != 0 {
        return;
    }
    let Some((sk, cookie)) = socket_of_fd(regs.di as i32) else {
        return;
    };
    // A single call moves less than 2 GiB (the kernel caps it at MAX_RW_COUNT).
    let ret = if ret > i32::MAX as i64 {
        i32::MAX
    } else {
        ret as i32
    };
    crate::on_socket_data::<LOOP>(pid_tgid, sk, cookie, ret, flags, direction);
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    if !is_selected((bpf_get_current_pid_tgid() >> 32) as u32) {
        return 0;
    }
    // SAFETY: the field's offset in this tracepoint's fixed record.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(ENTER_ARG0) }) else {
        return 0;
    };
    let Some(file) = file_of_fd(fd as i32) else {
        return 0;
    };
    let off = config().socket_path;
    // Only the last descriptor's close ends the socket (a forked child closing its copy does
    // not).
    // SAFETY: kernel pointer read with probe_read.
    let count = unsafe { read_kernel::<u64>(file, off.file_count) };
    if count != Some(off.file_count_one as u64) {
        return 0;
    }
    if let Some((sk, _)) = socket_of_file(file) {
        forget_socket(sk as u64);
    }
    0
}

/// The current task's syscall registers.
#[inline(always)]
pub(crate) fn syscall_regs() -> Option<Regs> {
    // SAFETY: helpers valid in tracing programs; the regs pointer is read with probe_read.
    unsafe {
        let task = aya_ebpf::helpers::generated::bpf_get_current_task_btf();
        let regs = aya_ebpf::helpers::generated::bpf_task_pt_regs(task) as *const Regs;
        bpf_probe_read_kernel(regs).ok()
    }
}

/// The `struct file` behind descriptor `fd` of the current task.
#[inline(always)]
fn file_of_fd(fd: i32) -> Option<*const u8> {
    let off = config().socket_path;
    if off.valid == 0 || fd < 0 {
        return None;
    }
    // SAFETY: helper without arguments; kernel pointers read with probe_read.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let files: u64 = read_kernel(task, off.task_files)?;
        let fdt: u64 = read_kernel(files as *const u8, off.files_fdt)?;
        let max: u32 = read_kernel(fdt as *const u8, off.fdtable_max_fds)?;
        if fd as u32 >= max {
            return None;
        }
        let fds: u64 = read_kernel(fdt as *const u8, off.fdtable_fd)?;
        let file: u64 = read_kernel(fds as *const u8, (fd as u32) * 8)?;
        (file != 0).then_some(file as *const u8)
    }
}

/// The socket behind a file, if it is one.
#[inline(always)]
fn socket_of_file(file: *const u8) -> Option<(*const u8, u64)> {
    let off = config().socket_path;
    // SAFETY: kernel pointers read with probe_read.
    unsafe {
        let inode: u64 = read_kernel(file, off.file_inode)?;
        let mode: u16 = read_kernel(inode as *const u8, off.inode_mode)?;
        if mode & S_IFMT != S_IFSOCK {
            return None;
        }
        let sock: u64 = read_kernel(file, off.file_private_data)?;
        socket_of(sock as *const u8)
    }
}

#[inline(always)]
fn socket_of_fd(fd: i32) -> Option<(*const u8, u64)> {
    socket_of_file(file_of_fd(fd)?)
}
