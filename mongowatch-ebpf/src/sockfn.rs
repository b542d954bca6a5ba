//! The fentry/fexit and kprobe rungs, for kernels without the socket tracepoints (before 6.3)
//! that allow these program types: hooks on the socket layer's send and receive operations.
//!
//! The hooked functions are the `proto_ops` entries of the stream sockets MongoDB uses:
//! `inet_sendmsg`/`inet_recvmsg` (TCP over IPv4), `inet6_sendmsg`/`inet6_recvmsg` (IPv6) and
//! `unix_stream_sendmsg`/`unix_stream_recvmsg`. Every read, write, send and receive call on
//! such a socket reaches one of them through `sock->ops`, so they are real (never inlined)
//! functions, and their prototypes are the `proto_ops` ones, which have not changed in years:
//! `(struct socket *, struct msghdr *, size_t)` and `(..., size_t, int flags)`. The bytes are
//! then found exactly as on the socket-tracepoint rung: in the calling task's syscall
//! registers, not in the `msghdr`'s iterator (whose layout does change between versions).
//!
//! The kprobe rung remembers the entry arguments per thread until the return probe.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, kprobe, kretprobe, map},
    maps::HashMap,
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use mongowatch_common::{DIR_EGRESS, DIR_INGRESS, INODE_CONN_ID};

use crate::{config, is_selected, on_socket_data, read_kernel};

/// The socket's `sk` and a connection id for it: its inode number (unique among live
/// sockets), tagged so it cannot collide with a socket cookie.
#[inline(always)]
pub(crate) fn socket_of(sock: *const u8) -> Option<(*const u8, u64)> {
    let off = config().socket_path;
    if off.valid == 0 || sock.is_null() {
        return None;
    }
    // SAFETY: kernel pointers read with probe_read.
    unsafe {
        let sk: u64 = read_kernel(sock, off.socket_sk)?;
        let ino: u64 = read_kernel(sock, off.socket_inode + off.inode_ino)?;
        (sk != 0).then_some((sk as *const u8, ino | INODE_CONN_ID))
    }
}

#[inline(always)]
fn on_call<const LOOP: bool>(sock: *const u8, ret: i32, flags: i32, direction: u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_selected((pid_tgid >> 32) as u32) || ret <= 0 {
        return;
    }
    if let Some((sk, cookie)) = socket_of(sock) {
        on_socket_data::<LOOP>(pid_tgid, sk, cookie, ret, flags, direction);
    }
}

// fexit: one program per function (a program is bound to its target's BTF id at load).
// `sendmsg(sock, msg, size)` returns in argument 3, `recvmsg(sock, msg, size, flags)` in 4.
macro_rules! fexit_programs {
    ($($name:ident, $bounded:ident, $function:literal, $dir:expr;)*) => {$(
        #[fexit(function = $function)]
        pub fn $name(ctx: FExitContext) -> i32 {
            on_fexit::<true>(&ctx, $dir);
            0
        }
        /// The same without `bpf_loop` (Linux before 5.17).
        #[fexit(function = $function)]
        pub fn $bounded(ctx: FExitContext) -> i32 {
            on_fexit::<false>(&ctx, $dir);
            0
        }
    )*};
}

fexit_programs! {
    fexit_inet_sendmsg, fexit_inet_sendmsg_bounded, "inet_sendmsg", DIR_EGRESS;
    fexit_inet6_sendmsg, fexit_inet6_sendmsg_bounded, "inet6_sendmsg", DIR_EGRESS;
    fexit_unix_stream_sendmsg, fexit_unix_stream_sendmsg_bounded, "unix_stream_sendmsg", DIR_EGRESS;
    fexit_inet_recvmsg, fexit_inet_recvmsg_bounded, "inet_recvmsg", DIR_INGRESS;
    fexit_inet6_recvmsg, fexit_inet6_recvmsg_bounded, "inet6_recvmsg", DIR_INGRESS;
    fexit_unix_stream_recvmsg, fexit_unix_stream_recvmsg_bounded, "unix_stream_recvmsg", DIR_INGRESS;
}

#[inline(always)]
fn on_fexit<const LOOP: bool>(ctx: &FExitContext, direction: u8) {
    let sock: *const u8 = ctx.arg(0);
    let (ret, flags): (i32, i32) = if direction == DIR_EGRESS {
        (ctx.arg(3), 0)
    } else {
        (ctx.arg(4), ctx.arg(3))
    };
    on_call::<LOOP>(sock, ret, flags, direction);
}

/// A kprobe'd call in flight: its socket and flags, until its return probe.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct PendingCall {
    sock: u64,
    flags: i32,
    _pad: u32,
}

/// Keyed by pid_tgid; only watched processes' calls are stored, and each is removed on return.
#[map]
static SOCKFN_CALLS: HashMap<u64, PendingCall> = HashMap::with_max_entries(4096, 0);

/// Entry of every hooked `sendmsg` (the same program is attached to each function).
#[kprobe]
pub fn kprobe_sendmsg(ctx: ProbeContext) -> u32 {
    remember(&ctx, false);
    0
}

/// Entry of every hooked `recvmsg`.
#[kprobe]
pub fn kprobe_recvmsg(ctx: ProbeContext) -> u32 {
    remember(&ctx, true);
    0
}

#[inline(always)]
fn remember(ctx: &ProbeContext, with_flags: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_selected((pid_tgid >> 32) as u32) {
        return;
    }
    let Some(sock) = ctx.arg::<u64>(0) else {
        return;
    };
    let flags = if with_flags {
        ctx.arg::<i32>(3).unwrap_or(0)
    } else {
        0
    };
    let call = PendingCall {
        sock,
        flags,
        _pad: 0,
    };
    let _ = SOCKFN_CALLS.insert(&pid_tgid, &call, 0);
}

macro_rules! kretprobe_programs {
    ($($name:ident, $bounded:ident => $dir:expr;)*) => {$(
        #[kretprobe]
        pub fn $name(ctx: RetProbeContext) -> u32 {
            on_return::<true>(&ctx, $dir);
            0
        }
        /// The same without `bpf_loop` (Linux before 5.17).
        #[kretprobe]
        pub fn $bounded(ctx: RetProbeContext) -> u32 {
            on_return::<false>(&ctx, $dir);
            0
        }
    )*};
}

kretprobe_programs! {
    kretprobe_sendmsg, kretprobe_sendmsg_bounded => DIR_EGRESS;
    kretprobe_recvmsg, kretprobe_recvmsg_bounded => DIR_INGRESS;
}

#[inline(always)]
fn on_return<const LOOP: bool>(ctx: &RetProbeContext, direction: u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_selected((pid_tgid >> 32) as u32) {
        return;
    }
    // SAFETY: map lookup by value, copied out before the entry is removed.
    let Some(call) = (unsafe { SOCKFN_CALLS.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = SOCKFN_CALLS.remove(&pid_tgid);
    let ret: i64 = ctx.ret();
    on_call::<LOOP>(call.sock as *const u8, ret as i32, call.flags, direction);
}
