//! TLS plaintext from the TLS library (OpenSSL's `SSL_read*` / `SSL_write*`).
//!
//! Userspace attaches these programs to every copy of OpenSSL a watched process maps (the
//! system `libssl`, Node's built-in copy, Python cryptography's); they fire for every process
//! using that file and return at once for those not selected. `sys_exit_mmap` tells userspace
//! when a selected process maps a new library, so that it is hooked before it is called.
//!
//! The socket of an `SSL*` is learnt without any OpenSSL struct offset (they move between
//! versions): while an `SSL_*` call is active on a thread, the socket tracepoint that fires on
//! that thread (`on_socket_bytes`) is its socket. Reads and writes have a map each, since Node
//! calls `SSL_write` from inside `SSL_read`. What is learnt goes in `SSL_SOCKS`, because a read
//! served from OpenSSL's own buffer makes no syscall at all; `SOCK_SSLS` is the reverse map.
//! Memory-BIO users (Node) make no syscall inside the call either: a call on an `SSL*` not
//! known yet is left pending on its thread, and the thread's next send from a socket not known
//! yet is its socket (Node sends the ClientHello right after the `SSL_read` that made it, and
//! a write's ciphertext right after the `SSL_write`); a read with data and no pending call takes
//! the last socket the thread received on (the ciphertext came first), unless that socket
//! belongs to another `SSL*`.
//!
//! Once a socket is known to carry TLS its bytes never leave the kernel: its offsets restart at
//! 0 for the plaintext, and userspace drops whatever ciphertext it saw before.
//!
//! Uprobe programs, unlike tracepoints, can be preempted: the copy runs in its own slot
//! (`SLOT_TLS`), guarded by a per-CPU busy flag; a second probe on that CPU meanwhile is counted
//! as lost (`tls_busy`), never mixed into the first one's bytes.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use mongowatch_common::{
    ConnState, EventKind, CLASS_OTHER, CLASS_UNKNOWN, DIR_EGRESS, DIR_INGRESS, EVENT_FLAG_TLS,
};

use crate::{
    copy_call, counters, emit_lifecycle, is_selected, start_copy,
    syscalls::{syscall_regs, EXIT_RET},
    CANDIDATES, CONNS, SLOT_SOCKET, SLOT_TLS,
};

const PROT_EXEC: u64 = 0x4;
const MAP_ANONYMOUS: u64 = 0x20;
/// The largest errno a syscall returns as `-errno`.
const MAX_ERRNO: i64 = 4095;

/// One `SSL_*` call in progress on a thread.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct SslCall {
    ssl: u64,
    buf: u64,
    /// `size_t *readbytes` / `*written` of the `_ex` functions (their return is 1 or 0); 0 for
    /// `SSL_read`/`SSL_write`, which return the length.
    len_ptr: u64,
    /// The socket a nested socket call showed, and its cookie (0 if none yet).
    sk: u64,
    cookie: u64,
}

/// A socket as the TLS maps remember it: the cookie tells a reused `struct sock` address.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct SockRef {
    sk: u64,
    cookie: u64,
}

/// A call on an `SSL*` whose socket is not known yet, waiting for the thread's next send:
/// with the plaintext of a write (`len` 0 for a handshake step or a read without data).
#[repr(C)]
#[derive(Copy, Clone)]
pub struct Pending {
    ssl: u64,
    buf: u64,
    len: u64,
}

/// A socket's `SSL*` (the reverse of `SSL_SOCKS`), with the socket's cookie.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct SslRef {
    ssl: u64,
    cookie: u64,
}

#[repr(C)]
#[derive(Copy, Clone)]
pub struct SslKey {
    tgid: u32,
    _pad: u32,
    ssl: u64,
}

/// Threads inside `SSL_read`/`SSL_read_ex`, by pid_tgid. LRU: a thread that dies inside a call
/// must not fill the map for good.
#[map]
static TLS_READS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16384, 0);
#[map]
static TLS_WRITES: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16384, 0);
/// Threads inside `SSL_do_handshake`: the handshake's own I/O teaches the socket before the
/// first message, and is ciphertext.
#[map]
static TLS_HANDSHAKES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);
/// (tgid, `SSL*`) -> its socket.
#[map]
static SSL_SOCKS: LruHashMap<SslKey, SockRef> = LruHashMap::with_max_entries(65536, 0);
/// Socket -> its `SSL*`.
#[map]
static SOCK_SSLS: LruHashMap<u64, SslRef> = LruHashMap::with_max_entries(65536, 0);
/// The last socket each thread of a watched process received on (memory-BIO reads).
#[map]
static LAST_RECV: LruHashMap<u64, SockRef> = LruHashMap::with_max_entries(16384, 0);
/// A memory-BIO call waiting for the thread's next send.
#[map]
static TLS_PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16384, 0);
/// Per-CPU: non-zero while a probe copies in `SLOT_TLS`.
#[map]
static TLS_BUSY: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// A selected process mapped a file executable: a library it may call `SSL_*` from soon
/// (Python maps libssl when it imports `ssl`, then connects). Userspace is told at once, so
/// that it hooks the library before the first TLS call rather than at its next rescan.
#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_selected(tgid) {
        return 0;
    }
    // SAFETY: the field's offset in this tracepoint's fixed record.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(EXIT_RET) }) else {
        return 0;
    };
    if (-MAX_ERRNO..0).contains(&ret) {
        return 0;
    }
    // mmap(addr, len, prot, flags, fd, offset): still in the syscall registers at exit.
    let Some(regs) = syscall_regs() else {
        return 0;
    };
    if regs.dx & PROT_EXEC == 0 || regs.r10 & MAP_ANONYMOUS != 0 || (regs.r8 as i32) < 0 {
        return 0;
    }
    emit_lifecycle(EventKind::ProcMapped, tgid, |_| {});
    0
}

// int SSL_read(SSL *ssl, void *buf, int num) -- ssl/ssl_lib.c
#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, &TLS_READS, None);
    0
}

// int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)
#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, &TLS_READS, Some(3));
    0
}

// int SSL_write(SSL *ssl, const void *buf, int num)
#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, &TLS_WRITES, None);
    0
}

// int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)
#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, &TLS_WRITES, Some(3));
    0
}

// int SSL_write_ex2(SSL *s, const void *buf, size_t num, uint64_t flags, size_t *written)
// (OpenSSL 3.3+; SSL_write_ex may tail-call it, so both entries fire and the second wins).
#[uprobe]
pub fn ssl_write_ex2(ctx: ProbeContext) -> u32 {
    enter(&ctx, &TLS_WRITES, Some(4));
    0
}

#[uretprobe]
pub fn ssl_read_ret(ctx: RetProbeContext) -> u32 {
    exit(&ctx, &TLS_READS, DIR_INGRESS);
    0
}

#[uretprobe]
pub fn ssl_write_ret(ctx: RetProbeContext) -> u32 {
    exit(&ctx, &TLS_WRITES, DIR_EGRESS);
    0
}

// int SSL_do_handshake(SSL *s) (SSL_connect and SSL_accept call it)
#[uprobe]
pub fn ssl_do_handshake(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_selected((pid_tgid >> 32) as u32) {
        return 0;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let _ = TLS_HANDSHAKES.insert(&pid_tgid, &ssl, 0);
    0
}

#[uretprobe]
pub fn ssl_do_handshake_ret(_ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_selected(tgid) {
        return 0;
    }
    // SAFETY: map lookup by value.
    if let Some(ssl) = unsafe { TLS_HANDSHAKES.get(&pid_tgid) }.copied() {
        let _ = TLS_HANDSHAKES.remove(&pid_tgid);
        let key = SslKey { tgid, _pad: 0, ssl };
        // SAFETY: map lookup by value.
        if unsafe { SSL_SOCKS.get(&key) }.is_none() {
            // A memory BIO: the handshake's bytes go out next.
            pend(pid_tgid, ssl, 0, 0);
        }
    }
    0
}

// void SSL_free(SSL *ssl): a later SSL* at the same address is another connection.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_selected(tgid) {
        return 0;
    }
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: ctx.arg(0).unwrap_or(0),
    };
    // SAFETY: map lookup by value.
    if let Some(sock) = unsafe { SSL_SOCKS.get(&key) }.copied() {
        let _ = SOCK_SSLS.remove(&sock.sk);
    }
    let _ = SSL_SOCKS.remove(&key);
    0
}

/// Remembers that `ssl` is `sock`'s, both ways.
#[inline(always)]
fn learn(tgid: u32, ssl: u64, sock: &SockRef) {
    let key = SslKey { tgid, _pad: 0, ssl };
    let _ = SSL_SOCKS.insert(&key, sock, 0);
    let back = SslRef {
        ssl,
        cookie: sock.cookie,
    };
    let _ = SOCK_SSLS.insert(&sock.sk, &back, 0);
}

/// The `SSL*` a socket is known to belong to (none for a socket reused since).
#[inline(always)]
fn ssl_of(sock: &SockRef) -> Option<u64> {
    // SAFETY: map lookup by value.
    let back = unsafe { SOCK_SSLS.get(&sock.sk) }.copied()?;
    (back.cookie == sock.cookie).then_some(back.ssl)
}

/// Leaves a call on an unknown `SSL*` pending on its thread. A pending write's plaintext is
/// not given up for a later call's: that one is counted as lost instead.
#[inline(always)]
fn pend(pid_tgid: u64, ssl: u64, buf: u64, len: u64) {
    // SAFETY: map lookup by value.
    if let Some(old) = unsafe { TLS_PENDING.get(&pid_tgid) }.copied() {
        if old.len != 0 && old.ssl != ssl {
            if len != 0 {
                unmapped();
            }
            return;
        }
    }
    let pending = Pending { ssl, buf, len };
    let _ = TLS_PENDING.insert(&pid_tgid, &pending, 0);
}

#[inline(always)]
fn enter(ctx: &ProbeContext, calls: &LruHashMap<u64, SslCall>, len_arg: Option<usize>) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_selected((pid_tgid >> 32) as u32) {
        return;
    }
    let call = SslCall {
        ssl: ctx.arg(0).unwrap_or(0),
        buf: ctx.arg(1).unwrap_or(0),
        len_ptr: len_arg.and_then(|n| ctx.arg(n)).unwrap_or(0),
        sk: 0,
        cookie: 0,
    };
    let _ = calls.insert(&pid_tgid, &call, 0);
}

#[inline(always)]
fn exit(ctx: &RetProbeContext, calls: &LruHashMap<u64, SslCall>, direction: u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_selected(tgid) {
        return;
    }
    // SAFETY: map lookup by value, copied out before the entry goes.
    let Some(call) = (unsafe { calls.get(&pid_tgid) }).copied() else {
        // A nested probe of the same call (SSL_write_ex's tail call) already took it.
        return;
    };
    let _ = calls.remove(&pid_tgid);
    let ret: i64 = ctx.ret();
    let ret = ret as i32;
    // Plaintext bytes the call moved (0 for none, or a failed call).
    let len = if call.len_ptr == 0 {
        if ret > 0 {
            ret as u64
        } else {
            0
        }
    } else if ret == 1 {
        // SAFETY: user pointer read with probe_read_user.
        unsafe { bpf_probe_read_user(call.len_ptr as *const u64) }.unwrap_or(0)
    } else {
        0
    };
    if len > u32::MAX as u64 {
        return;
    }
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    let sock = if call.sk != 0 {
        let sock = SockRef {
            sk: call.sk,
            cookie: call.cookie,
        };
        learn(tgid, call.ssl, &sock);
        sock
    } else if let Some(sock) = unsafe { SSL_SOCKS.get(&key) }.copied() {
        sock
    } else if direction == DIR_INGRESS && len != 0 {
        // Memory BIO: the ciphertext was received on this thread just before, unless that
        // socket is another SSL*'s.
        // SAFETY: map lookup by value.
        let Some(sock) = (unsafe { LAST_RECV.get(&pid_tgid) }).copied() else {
            unmapped();
            return;
        };
        if ssl_of(&sock).is_some_and(|ssl| ssl != call.ssl) {
            unmapped();
            return;
        }
        learn(tgid, call.ssl, &sock);
        sock
    } else {
        // Memory BIO: what this call made goes out on this thread's next send.
        let plaintext = if direction == DIR_EGRESS { len } else { 0 };
        pend(pid_tgid, call.ssl, call.buf, plaintext);
        return;
    };
    if len == 0 {
        return;
    }
    let Some(state) = conn_of(&sock) else {
        unmapped();
        return;
    };
    let Some(busy) = TLS_BUSY.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value. Not atomic: a preemption between the test and the set is a
    // window of two instructions.
    unsafe {
        if *busy != 0 {
            if let Some(c) = counters() {
                c.tls_busy += 1;
            }
            return;
        }
        *busy = 1;
    }
    emit(SLOT_TLS, sock.sk, state, direction, pid_tgid, call.buf, len);
    // SAFETY: as above.
    unsafe { *busy = 0 };
}

/// Called by the socket tracepoints for every watched socket call, before anything is copied.
/// True when the bytes are TLS ciphertext and must not be copied.
#[inline(always)]
pub fn on_socket_bytes(sk: u64, state: &mut ConnState, direction: u8, pid_tgid: u64) -> bool {
    let calls = if direction == DIR_EGRESS {
        &TLS_WRITES
    } else {
        &TLS_READS
    };
    if let Some(call) = calls.get_ptr_mut(&pid_tgid) {
        // SAFETY: map value pointer, valid for this run.
        unsafe {
            (*call).sk = sk;
            (*call).cookie = state.cookie;
        }
        mark_tls(state);
        return true;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let sock = SockRef {
        sk,
        cookie: state.cookie,
    };
    // SAFETY: map lookup by value.
    if let Some(ssl) = unsafe { TLS_HANDSHAKES.get(&pid_tgid) }.copied() {
        learn(tgid, ssl, &sock);
        mark_tls(state);
        return true;
    }
    if direction == DIR_INGRESS {
        let _ = LAST_RECV.insert(&pid_tgid, &sock, 0);
    } else if let Some(pending) = unsafe { TLS_PENDING.get(&pid_tgid) }.copied() {
        // Only a socket no SSL* is known for can be the pending call's.
        if ssl_of(&sock).is_none() {
            let _ = TLS_PENDING.remove(&pid_tgid);
            learn(tgid, pending.ssl, &sock);
            mark_tls(state);
            if pending.len != 0 {
                // A tracepoint is not preempted: the socket slot is free (nothing copied yet).
                emit(
                    SLOT_SOCKET,
                    sk,
                    state,
                    DIR_EGRESS,
                    pid_tgid,
                    pending.buf,
                    pending.len,
                );
            }
            return true;
        }
    }
    state.tls != 0
}

/// A socket is found to carry TLS: what was counted so far was ciphertext, so its offsets
/// restart for the plaintext, and a verdict of "not MongoDB" drawn from ciphertext is undone.
#[inline(always)]
fn mark_tls(state: &mut ConnState) {
    if state.tls != 0 {
        return;
    }
    state.tls = 1;
    state.offsets = [0, 0];
    if state.class == CLASS_OTHER {
        state.class = CLASS_UNKNOWN;
        state.strikes = 0;
    }
}

/// The connection state of a remembered socket, if it is still that socket.
#[inline(always)]
fn conn_of(sock: &SockRef) -> Option<&'static mut ConnState> {
    let state = CONNS
        .get_ptr_mut(&sock.sk)
        .or_else(|| CANDIDATES.get_ptr_mut(&sock.sk))?;
    // SAFETY: map value pointer, valid for this run.
    let state = unsafe { &mut *state };
    (state.cookie == sock.cookie).then_some(state)
}

/// Copies `len` plaintext bytes at `buf` into the connection's stream, as TLS data events.
#[inline(always)]
fn emit(
    slot: u32,
    sk: u64,
    state: &mut ConnState,
    direction: u8,
    pid_tgid: u64,
    buf: u64,
    len: u64,
) {
    mark_tls(state);
    if state.class == CLASS_OTHER {
        return;
    }
    let d = direction as usize & 1;
    let offset = state.offsets[d];
    state.offsets[d] = offset + len;
    let Some(copy) = start_copy(slot, state.cookie, offset, pid_tgid, len as u32) else {
        return;
    };
    copy.direction = direction;
    copy.flags = EVENT_FLAG_TLS;
    copy.cur_base = buf;
    copy.cur_len = len;
    if let Some(c) = counters() {
        c.tls_calls += 1;
    }
    // TLS capture needs bpf_loop (5.17): the TLS probes are not loaded on older kernels.
    copy_call::<true>(sk, state, slot);
}

#[inline(always)]
fn unmapped() {
    if let Some(c) = counters() {
        c.tls_unmapped += 1;
    }
}
