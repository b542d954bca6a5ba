//! mongowatch's kernel programs.
//!
//! Data path: the BTF tracepoints `sock/sock_send_length` and `sock/sock_recv_length` fire for
//! every send and receive on every socket, after the bytes moved. Only watched processes go
//! past the first map lookup. The user buffer is found in the calling task's syscall
//! registers (`bpf_task_pt_regs`), which covers read/write, recv(from)/send(to), readv/writev
//! and recvmsg/sendmsg; bytes moved without a user buffer (sendfile, splice, io_uring,
//! mmsg calls, MSG_TRUNC) become explicit gap events, never garbage.
//!
//! Connection state: a socket's first bytes classify it. MongoDB connections live in `CONNS`,
//! every other socket (not classified yet, or known not to be MongoDB) in the small LRU
//! `CANDIDATES`, so that a process with thousands of other sockets cannot push its MongoDB
//! connections out. A connection whose state was lost anyway gets a new `ConnOpen` with the
//! same cookie and offsets from 0; userspace continues its stream from where it was.
//!
//! Where the kernel has the socket tracepoints, no syscall tracepoint is attached: one on
//! `sys_enter_write` alone slows every write of every process on the machine (measured: an
//! unwatched `dd` went from 0.58 s to 0.95 s), while the socket tracepoints cost only socket
//! I/O. Kernels without them use another rung of the capture ladder (`sockfn.rs`,
//! `syscalls.rs`), which feeds the same data path, `on_socket_data`.
#![no_std]
#![no_main]

mod select;
mod sockfn;
mod syscalls;
mod tls;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task_btf, bpf_get_smp_processor_id,
            bpf_get_socket_cookie, bpf_loop, bpf_probe_read_kernel as probe_read_kernel_raw,
            bpf_probe_read_user as probe_read_user_raw, bpf_task_pt_regs,
        },
    },
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use mongowatch_common::{
    plausible_header, Config, ConnState, Counters, EventHeader, EventKind, SocketInfo, AF_INET,
    AF_INET6, AF_UNIX, CHUNK_SIZE, CLASSIFY_STRIKES, CLASS_MONGO, CLASS_OTHER, CLASS_UNKNOWN,
    DIR_EGRESS, DIR_INGRESS, EVENT_HEADER_SIZE, MAX_CANDIDATES, MAX_CONNS, RING_SIZE,
    SCRATCH_SLOTS, UIO_MAXIOV, WATCHED_WORDS,
};

/// Set by the loader from the running kernel's BTF (see `KernelOffsets`).
#[no_mangle]
static CONFIG: Config = Config::zeroed();

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_SIZE, 0);

/// One bit per watched tgid. Every socket call of every process on the machine asks it, so it
/// is an array: the verifier inlines an array lookup into plain pointer arithmetic, where a
/// hash map would hash the key and walk a bucket.
#[map]
static WATCHED: Array<u64> = Array::with_max_entries(WATCHED_WORDS, 0);

/// MongoDB connections only (see the module doc). An LRU so that it never refuses one: past
/// `MAX_CONNS` MongoDB connections the oldest is forgotten, and picked up again when it speaks.
#[map]
static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(MAX_CONNS, 0);

/// Sockets not (yet) known to be MongoDB. Losing an entry to the LRU costs a new
/// classification of that socket, never a MongoDB connection.
#[map]
static CANDIDATES: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(MAX_CANDIDATES, 0);

#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

/// Where an event is assembled before `bpf_ringbuf_output` copies it into the ring: a record
/// takes only the room its payload needs.
///
/// Consecutive iovecs are gathered here into one chunk of up to `CHUNK_SIZE` bytes. The payload
/// has room for two chunks because the verifier bounds a copy's destination offset (below
/// `CHUNK_SIZE`) and its length (at most `CHUNK_SIZE`) separately, not their sum.
#[repr(C)]
pub struct Scratch {
    header: EventHeader,
    payload: [u8; 2 * CHUNK_SIZE],
}

/// `SCRATCH_SLOTS` `Scratch` per CPU, indexed by the running CPU and the slot. Not a per-CPU
/// array: a per-CPU value is limited to 32 KiB, and a `Scratch` is larger. The loader sizes it
/// to the possible CPUs.
#[map]
static SCRATCH: Array<Scratch> = Array::with_max_entries(SCRATCH_SLOTS, 0);

/// One copy state per slot (see `SLOT_SOCKET`, `SLOT_TLS`).
#[map]
static COPY: PerCpuArray<CopyState> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// The slot of the socket tracepoints: they run with preemption disabled, so never two at
/// once on one CPU.
const SLOT_SOCKET: u32 = 0;
/// The slot of the TLS uprobes, which can be preempted (see `tls.rs`).
const SLOT_TLS: u32 = 1;

const MSG_PEEK: i32 = 2;
const MSG_TRUNC: i32 = 0x20;
const TCP_CLOSE: i32 = 7;

/// x86_64 syscall numbers of the calls whose buffers we can follow.
mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
}

/// The head of x86_64 `struct pt_regs` (arch/x86/include/asm/ptrace.h), up to `orig_ax`.
/// This layout is the kernel's user ABI for ptrace and does not move.
#[repr(C)]
#[derive(Copy, Clone)]
struct Regs {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    bp: u64,
    bx: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    ax: u64,
    cx: u64,
    dx: u64,
    si: u64,
    di: u64,
    orig_ax: u64,
}

/// Userspace `struct iovec`.
#[repr(C)]
#[derive(Copy, Clone)]
struct IoVec {
    base: u64,
    len: u64,
}

/// State of one copy, walked by `bpf_loop` (a loop that can run as many times as a 5 MB read
/// or a 1,024-iovec write needs). It lives in a per-CPU map, not on the stack: the verifier tracks exact
/// stack values through every callback iteration and never converges, while values loaded from
/// a map are unknown scalars, the same at every iteration. (Tracepoints run with preemption
/// disabled and a program does not recurse, so the per-CPU slot is ours for the run.)
#[repr(C)]
pub struct CopyState {
    conn_id: u64,
    /// Stream offset of the first byte gathered in the scratch payload (of the next byte to
    /// copy when `fill` is 0).
    offset: u64,
    ts: u64,
    /// Bytes of the syscall not yet emitted.
    remaining: u64,
    /// Current user buffer and what is left of it.
    cur_base: u64,
    cur_len: u64,
    /// iovec array (0 for a single buffer).
    iov: u64,
    iov_idx: u32,
    iov_cnt: u32,
    /// Bytes gathered in the scratch payload, not yet emitted (below `CHUNK_SIZE`).
    fill: u32,
    tgid: u32,
    tid: u32,
    fd: i32,
    orig_len: u32,
    syscall: i32,
    direction: u8,
    /// `EVENT_FLAG_*` of the events.
    flags: u8,
    /// The `SCRATCH`/`COPY` slot this copy runs in.
    slot: u8,
}

#[inline(always)]
fn is_watched(tgid: u32) -> bool {
    WATCHED
        .get(tgid >> 6)
        .is_some_and(|word| word & (1u64 << (tgid & 63)) != 0)
}

/// Watched by pid, or chosen by the kernel's own node-wide selection (`select.rs`): the check
/// every capture rung makes first.
#[inline(always)]
pub(crate) fn is_selected(tgid: u32) -> bool {
    is_watched(tgid) || select::selected(tgid)
}

#[inline(always)]
fn config() -> Config {
    // SAFETY: a plain read of a global the loader rewrote; volatile so the compiler does not
    // fold the zero initialiser.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

#[inline(always)]
fn counters() -> Option<&'static mut Counters> {
    // SAFETY: per-CPU value; eBPF programs do not migrate while running.
    COUNTERS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// This CPU's scratch space of `slot`.
#[inline(always)]
fn scratch(slot: u32) -> Option<&'static mut Scratch> {
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // SAFETY: a tracepoint program runs with preemption disabled and does not recurse, so this
    // CPU's socket slot is ours for the run; the TLS slot is guarded by `tls.rs`.
    SCRATCH
        .get_ptr_mut(cpu * SCRATCH_SLOTS + (slot & 1))
        .map(|p| unsafe { &mut *p })
}

/// This CPU's copy state of `slot`.
#[inline(always)]
fn copy_state(slot: u32) -> Option<&'static mut CopyState> {
    // SAFETY: per-CPU value; see `scratch` for who owns which slot.
    COPY.get_ptr_mut(slot & 1).map(|p| unsafe { &mut *p })
}

#[inline(always)]
unsafe fn read_kernel<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
    bpf_probe_read_kernel(base.add(offset as usize) as *const T).ok()
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk, int ret, int flags) -- include/trace/events/sock.h
    on_data(&ctx, DIR_EGRESS);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk, int ret, int flags) -- include/trace/events/sock.h
    on_data(&ctx, DIR_INGRESS);
    0
}

#[inline(always)]
fn on_data(ctx: &BtfTracePointContext, direction: u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_selected(tgid) {
        return;
    }
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if ret <= 0 || sk.is_null() {
        return;
    }
    // SAFETY: `sk` is the tracepoint's trusted socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    on_socket_data::<true>(pid_tgid, sk, cookie, ret, flags, direction);
}

/// The data path shared by every capture rung (see `syscalls.rs`, `sockfn.rs`): `ret` bytes
/// moved on socket `sk` (named `cookie`) by the current syscall. `LOOP` says whether the
/// kernel has `bpf_loop`; without it a bounded loop copies what it can and counts the rest as
/// a gap.
#[inline(always)]
pub(crate) fn on_socket_data<const LOOP: bool>(
    pid_tgid: u64,
    sk: *const u8,
    cookie: u64,
    ret: i32,
    flags: i32,
    direction: u8,
) {
    let tgid = (pid_tgid >> 32) as u32;
    if ret <= 0 || sk.is_null() {
        return;
    }
    if direction == DIR_INGRESS && flags & MSG_PEEK != 0 {
        // The bytes stay in the socket and will be read again.
        return;
    }
    let cfg = config();
    if cfg.offsets.valid == 0 {
        return;
    }
    let Some(state) = conn_state(sk, cookie, tgid, &cfg) else {
        return;
    };
    // SAFETY: pointer into an LRU map value; it stays valid for this program run.
    let state = unsafe { &mut *state };
    if tls::on_socket_bytes(sk as u64, state, direction, pid_tgid) {
        // Ciphertext: the plaintext comes from the TLS library's probes.
        return;
    }
    if state.class == CLASS_OTHER {
        return;
    }

    // Reserve this call's range of the stream before copying. Not atomic (the BPF target has
    // no atomic read-modify-write in Rust's core): two threads of one process racing on the
    // same socket and direction could be given overlapping ranges, which userspace sees as an
    // overlap, not as silently merged bytes.
    let slot = &mut state.offsets[direction as usize & 1];
    let offset = *slot;
    *slot = offset + ret as u64;

    let Some(copy) = start_copy(SLOT_SOCKET, state.cookie, offset, pid_tgid, ret as u32) else {
        return;
    };
    copy.direction = direction;

    if direction == DIR_INGRESS && flags & MSG_TRUNC != 0 {
        // TCP discards the bytes instead of copying them out.
        emit_gap(copy);
        return;
    }
    if !locate_user_buffer(copy) {
        emit_gap(copy);
        return;
    }
    copy_call::<LOOP>(sk as u64, state, SLOT_SOCKET);
}

/// The copy state of `slot`, set up for a call of `len` bytes at stream `offset` of
/// connection `conn_id`, with no buffer located yet.
#[inline(always)]
fn start_copy(
    slot: u32,
    conn_id: u64,
    offset: u64,
    pid_tgid: u64,
    len: u32,
) -> Option<&'static mut CopyState> {
    let copy = copy_state(slot)?;
    copy.conn_id = conn_id;
    copy.offset = offset;
    // SAFETY: helper without arguments.
    copy.ts = unsafe { bpf_ktime_get_boot_ns() };
    copy.remaining = len as u64;
    copy.cur_base = 0;
    copy.cur_len = 0;
    copy.iov = 0;
    copy.iov_idx = 0;
    copy.iov_cnt = 0;
    copy.fill = 0;
    copy.tgid = (pid_tgid >> 32) as u32;
    copy.tid = pid_tgid as u32;
    copy.fd = -1;
    copy.orig_len = len;
    copy.syscall = -1;
    copy.direction = 0;
    copy.flags = 0;
    copy.slot = slot as u8;
    Some(copy)
}

/// Classifies a connection still unknown from the call's first bytes, then copies every byte
/// of the call located in the copy state of `slot` into the ring (socket bytes, or TLS
/// plaintext).
///
/// The copy state is fetched here, not passed as a `&mut`: the compiler would take a `&mut`
/// argument as unchanged by the opaque `bpf_loop` call, whose callback does change it.
#[inline(always)]
fn copy_call<const LOOP: bool>(sk: u64, state: &mut ConnState, slot: u32) {
    let Some(copy) = copy_state(slot) else {
        return;
    };
    let ret = copy.remaining;
    if state.class == CLASS_UNKNOWN {
        match first_bytes_look_like_mongo(copy) {
            Some(true) => promote(sk, state),
            Some(false) => {
                state.strikes = state.strikes.saturating_add(1);
                if state.strikes >= CLASSIFY_STRIKES {
                    state.class = CLASS_OTHER;
                    if let Some(c) = counters() {
                        c.classified_other += 1;
                    }
                    return;
                }
            }
            None => {}
        }
    }

    // Each step either finishes an iovec or fills a chunk, so this covers every byte of any
    // call: at most UIO_MAXIOV iovecs (the kernel refuses more) plus one step per chunk (a
    // 5 MB read: 320), far below bpf_loop's limit of 2^23.
    let iovecs = if copy.iov == 0 {
        0
    } else if copy.iov_cnt < UIO_MAXIOV {
        copy.iov_cnt
    } else {
        UIO_MAXIOV
    };
    let mut slot_arg = slot;
    if LOOP {
        // SAFETY: bpf_loop with a static callback; the state is in the COPY map, the slot on
        // this stack for the loop's run.
        unsafe {
            bpf_loop(
                iovecs + (ret as u32 / CHUNK_SIZE as u32) + 2,
                copy_chunk as *mut c_void,
                &mut slot_arg as *mut u32 as *mut c_void,
                0,
            );
        }
    } else {
        bounded_copy(&mut slot_arg);
    }
    // Had the loop stopped early, what is gathered still goes out and the rest is a counted
    // gap, never a silent loss.
    if let Some(copy) = copy_state(slot) {
        emit_gap(copy);
    }
}

/// Copy steps where `bpf_loop` is missing (before Linux 5.17): the verifier walks each one, so
/// the bound stays small. Each step fills a chunk or finishes an iovec, so a call of up to
/// about this many chunks is copied whole; what is left past the bound becomes a counted gap.
const BOUNDED_STEPS: u64 = 24;

#[inline(always)]
fn bounded_copy(slot: &mut u32) {
    for i in 0..BOUNDED_STEPS {
        if copy_chunk(i, slot as *mut u32 as *mut c_void) != 0 {
            break;
        }
    }
}

/// A candidate whose bytes look like MongoDB moves to `CONNS`, where other sockets cannot
/// push it out. `state` must not be used afterwards.
#[inline(always)]
fn promote(key: u64, state: &mut ConnState) {
    let mut moved = *state;
    moved.class = CLASS_MONGO;
    if CONNS.insert(&key, &moved, 0).is_ok() {
        let _ = CANDIDATES.remove(&key);
    } else {
        // Classified all the same; it stays a candidate until CONNS has room.
        state.class = CLASS_MONGO;
    }
}

/// Reads the syscall registers of the current task and points `copy` at the user buffer.
/// False when the bytes have no user buffer we can read.
#[inline(always)]
fn locate_user_buffer(copy: &mut CopyState) -> bool {
    // SAFETY: helpers valid in tracing programs; the regs pointer is read with probe_read.
    let regs = unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const Regs;
        match bpf_probe_read_kernel(regs) {
            Ok(r) => r,
            Err(_) => return false,
        }
    };
    copy.syscall = regs.orig_ax as i32;
    copy.fd = regs.di as i32;
    match regs.orig_ax {
        nr::READ | nr::WRITE | nr::SENDTO | nr::RECVFROM => {
            copy.cur_base = regs.si;
            copy.cur_len = copy.remaining;
            true
        }
        nr::READV | nr::WRITEV => {
            copy.iov = regs.si;
            copy.iov_cnt = regs.dx as u32;
            true
        }
        nr::SENDMSG | nr::RECVMSG => {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24 (x86_64).
            let msg = regs.si as *const u64;
            // SAFETY: user pointers read with probe_read_user.
            unsafe {
                let (Ok(iov), Ok(cnt)) = (
                    bpf_probe_read_user(msg.add(2)),
                    bpf_probe_read_user(msg.add(3)),
                ) else {
                    return false;
                };
                copy.iov = iov;
                copy.iov_cnt = cnt as u32;
            }
            true
        }
        _ => false,
    }
}

/// Some(true/false) when the first 16 bytes of the call can be read, None when the first buffer
/// is shorter than a header.
#[inline(always)]
fn first_bytes_look_like_mongo(copy: &CopyState) -> Option<bool> {
    let (base, len) = if copy.iov == 0 {
        (copy.cur_base, copy.cur_len)
    } else {
        // SAFETY: user pointer read with probe_read_user.
        let first: IoVec = unsafe { bpf_probe_read_user(copy.iov as *const IoVec) }.ok()?;
        (first.base, first.len)
    };
    if len < 16 || copy.remaining < 16 {
        return None;
    }
    // SAFETY: user pointer read with probe_read_user.
    let head: [u8; 16] = unsafe { bpf_probe_read_user(base as *const [u8; 16]) }.ok()?;
    Some(plausible_header(&head))
}

/// One `bpf_loop` step: moves to the next iovec when the current one is done, then gathers as
/// much of the current buffer as fits in the scratch chunk; a full chunk (or the call's last
/// byte) is emitted. Consecutive small iovecs thus share one record. Returns 1 to stop.
extern "C" fn copy_chunk(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the slot on `copy_call`'s stack.
    let slot = unsafe { *(ctx as *const u32) };
    let Some(copy) = copy_state(slot) else {
        return 1;
    };
    if copy.remaining == 0 {
        return 1;
    }
    if copy.cur_len == 0 {
        if copy.iov == 0 || copy.iov_idx >= copy.iov_cnt || copy.iov_idx >= UIO_MAXIOV {
            // Bytes the registers do not account for: say so rather than guess.
            emit_gap(copy);
            return 1;
        }
        // SAFETY: user pointer read with probe_read_user.
        let Ok(v) =
            (unsafe { bpf_probe_read_user((copy.iov as *const IoVec).add(copy.iov_idx as usize)) })
        else {
            emit_gap(copy);
            return 1;
        };
        copy.iov_idx += 1;
        copy.cur_base = v.base;
        copy.cur_len = if v.len < copy.remaining {
            v.len
        } else {
            copy.remaining
        };
        if copy.cur_len == 0 {
            return 0;
        }
    }
    let Some(scratch) = scratch(copy.slot as u32) else {
        return 1;
    };
    // `fill` is below CHUNK_SIZE here (a full chunk is emitted at once); the mask says so to
    // the verifier.
    let fill = copy.fill & (CHUNK_SIZE as u32 - 1);
    let room = CHUNK_SIZE as u64 - fill as u64;
    let want = if copy.cur_len < room {
        copy.cur_len
    } else {
        room
    };
    // 1..=CHUNK_SIZE in a form the verifier can bound.
    let n = ((want as u32).wrapping_sub(1) & (CHUNK_SIZE as u32 - 1)) + 1;
    // SAFETY: destination inside the scratch payload (fill + n <= 2 * CHUNK_SIZE), source a
    // user pointer.
    let rc = unsafe {
        probe_read_user_raw(
            scratch.payload.as_mut_ptr().add(fill as usize) as *mut c_void,
            n,
            copy.cur_base as *const c_void,
        )
    };
    copy.cur_base += n as u64;
    copy.cur_len -= n as u64;
    copy.remaining -= n as u64;
    if rc != 0 {
        // What was gathered goes out; the unreadable range becomes a gap of its own.
        flush(copy);
        if let Some(c) = counters() {
            c.read_failures += 1;
        }
        emit_gap_of(copy, n as u64);
    } else {
        copy.fill = fill + n;
        if copy.fill >= CHUNK_SIZE as u32 || copy.remaining == 0 {
            flush(copy);
        }
    }
    if copy.remaining == 0 {
        1
    } else {
        0
    }
}

#[inline(always)]
fn fill_header(h: &mut EventHeader, copy: &CopyState, kind: EventKind) {
    h.ts_ns = copy.ts;
    h.conn_id = copy.conn_id;
    h.offset = copy.offset;
    h.tgid = copy.tgid;
    h.tid = copy.tid;
    h.fd = copy.fd;
    h.orig_len = copy.orig_len;
    h.captured_len = 0;
    h.syscall = copy.syscall;
    h.kind = kind as u8;
    h.direction = copy.direction;
    h.flags = copy.flags;
}

/// Emits the bytes gathered in the scratch payload as one data event.
#[inline(always)]
fn flush(copy: &mut CopyState) {
    let n = copy.fill;
    if n == 0 {
        return;
    }
    copy.fill = 0;
    let Some(scratch) = scratch(copy.slot as u32) else {
        return;
    };
    fill_header(&mut scratch.header, copy, EventKind::Data);
    let n = n & (2 * CHUNK_SIZE as u32 - 1);
    if n as usize > CHUNK_SIZE {
        return;
    }
    scratch.header.captured_len = n;
    output(
        scratch as *const Scratch as *const u8,
        EVENT_HEADER_SIZE as u32 + n,
        n,
    );
    copy.offset += n as u64;
}

/// What is gathered goes out, then everything left of the call becomes one gap event.
#[inline(always)]
fn emit_gap(copy: &mut CopyState) {
    flush(copy);
    if copy.remaining == 0 {
        return;
    }
    let len = copy.remaining;
    copy.remaining = 0;
    copy.cur_len = 0;
    emit_gap_of(copy, len);
}

/// A gap event of `len` bytes at the copy's offset (its length in `orig_len`), counted.
#[inline(always)]
fn emit_gap_of(copy: &mut CopyState, len: u64) {
    let Some(scratch) = scratch(copy.slot as u32) else {
        return;
    };
    fill_header(&mut scratch.header, copy, EventKind::Gap);
    scratch.header.orig_len = len as u32;
    if let Some(c) = counters() {
        c.gap_events += 1;
        c.gap_bytes += len;
    }
    output(
        scratch as *const Scratch as *const u8,
        EVENT_HEADER_SIZE as u32,
        0,
    );
    copy.offset += len;
}

/// Writes `len` bytes of the scratch buffer to the ring; a full ring is counted (userspace also
/// sees the hole in the stream offsets).
///
/// Wakeups are batched: a record only wakes the daemon once `WAKEUP_BYTES` are waiting, and the
/// daemon drains the ring on a short timer otherwise. Waking it for every record would, on a
/// busy machine, preempt the application (or its server) a few thousand times a second.
#[inline(always)]
fn output(data: *const u8, len: u32, payload: u32) {
    let len = len as usize;
    if len > core::mem::size_of::<Scratch>() {
        return;
    }
    // SAFETY: `data` points at a Scratch of at least `len` bytes.
    let bytes = unsafe { core::slice::from_raw_parts(data, len) };
    match EVENTS.output::<[u8]>(bytes, wakeup_flag()) {
        Ok(()) => {
            if let Some(c) = counters() {
                c.data_events += 1;
            }
        }
        Err(_) => {
            if let Some(c) = counters() {
                c.ring_full_events += 1;
                c.ring_full_bytes += payload as u64;
            }
        }
    }
}

/// Bytes waiting in the ring that make a record wake the daemon.
const WAKEUP_BYTES: u64 = 256 << 10;

#[inline(always)]
fn wakeup_flag() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// The connection's state, created on first sight (with a ConnOpen event carrying its ends):
/// in `CONNS` when a server port says it is MongoDB, else in `CANDIDATES`.
#[inline(always)]
fn conn_state(sk: *const u8, cookie: u64, tgid: u32, cfg: &Config) -> Option<*mut ConnState> {
    let key = sk as u64;
    if let Some(state) = CONNS.get_ptr_mut(&key) {
        // SAFETY: map value pointer.
        if unsafe { (*state).cookie } == cookie {
            return Some(state);
        }
        // The address was freed and reused: the old connection is over.
        // SAFETY: map value pointer.
        let (old_cookie, old_tgid) = unsafe { ((*state).cookie, (*state).tgid) };
        emit_lifecycle(EventKind::ConnClose, old_tgid, |h| h.conn_id = old_cookie);
        let _ = CONNS.remove(&key);
    } else if let Some(state) = CANDIDATES.get_ptr_mut(&key) {
        // SAFETY: map value pointer.
        let (old_cookie, old_tgid, old_class) =
            unsafe { ((*state).cookie, (*state).tgid, (*state).class) };
        if old_cookie == cookie {
            return Some(state);
        }
        if old_class != CLASS_OTHER {
            emit_lifecycle(EventKind::ConnClose, old_tgid, |h| h.conn_id = old_cookie);
        }
        // The new socket's entry replaces it below.
    }
    let off = &cfg.offsets;
    // SAFETY: kernel pointer reads with probe_read.
    let family: u16 = unsafe { read_kernel(sk, off.skc_family) }?;
    let mut state = ConnState {
        cookie,
        offsets: [0, 0],
        tgid,
        class: CLASS_UNKNOWN,
        strikes: 0,
        tls: 0,
        _pad: 0,
    };
    if family != AF_INET && family != AF_INET6 && family != AF_UNIX {
        // Netlink and friends: remember them as not MongoDB so they cost two lookups.
        state.class = CLASS_OTHER;
        let _ = CANDIDATES.insert(&key, &state, 0);
        return None;
    }
    let scratch = scratch(SLOT_SOCKET)?;
    // SAFETY: the payload has room for a SocketInfo (checked at compile time below).
    let info = unsafe { &mut *(scratch.payload.as_mut_ptr() as *mut SocketInfo) };
    *info = SocketInfo::default();
    info.family = family;
    if let Ok(comm) = bpf_get_current_comm() {
        info.comm = comm;
    }
    // SAFETY: helper without arguments.
    info.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: kernel pointer reads with probe_read.
    unsafe { read_ends(sk, family, off, info) };
    if family != AF_UNIX {
        // SAFETY: map lookups by value.
        let known = unsafe {
            PORTS.get(&info.remote_port).is_some() || PORTS.get(&info.local_port).is_some()
        };
        if known {
            state.class = CLASS_MONGO;
        }
    }
    // Two calls, not one on a chosen map: the verifier wants each call's map known.
    if state.class == CLASS_MONGO {
        CONNS.insert(&key, &state, 0).ok()?;
    } else {
        CANDIDATES.insert(&key, &state, 0).ok()?;
    }
    let h = &mut scratch.header;
    *h = EventHeader::default();
    // SAFETY: helper without arguments.
    h.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.conn_id = cookie;
    h.tgid = tgid;
    h.tid = bpf_get_current_pid_tgid() as u32;
    h.kind = EventKind::ConnOpen as u8;
    h.captured_len = core::mem::size_of::<SocketInfo>() as u32;
    h.syscall = -1;
    output(
        scratch as *const Scratch as *const u8,
        (EVENT_HEADER_SIZE + core::mem::size_of::<SocketInfo>()) as u32,
        0,
    );
    if state.class == CLASS_MONGO {
        CONNS.get_ptr_mut(&key)
    } else {
        CANDIDATES.get_ptr_mut(&key)
    }
}

const _: () = assert!(core::mem::size_of::<SocketInfo>() <= CHUNK_SIZE);

/// Reads the two ends of a socket into `info`.
#[inline(always)]
unsafe fn read_ends(
    sk: *const u8,
    family: u16,
    off: &mongowatch_common::KernelOffsets,
    info: &mut SocketInfo,
) {
    if family == AF_INET {
        let d: u32 = read_kernel(sk, off.skc_daddr).unwrap_or(0);
        let s: u32 = read_kernel(sk, off.skc_rcv_saddr).unwrap_or(0);
        info.remote_addr[..4].copy_from_slice(&d.to_ne_bytes());
        info.local_addr[..4].copy_from_slice(&s.to_ne_bytes());
    } else if family == AF_INET6 {
        info.remote_addr = read_kernel(sk, off.skc_v6_daddr).unwrap_or([0; 16]);
        info.local_addr = read_kernel(sk, off.skc_v6_rcv_saddr).unwrap_or([0; 16]);
    }
    if family != AF_UNIX {
        let dport: u16 = read_kernel(sk, off.skc_dport).unwrap_or(0);
        info.remote_port = u16::from_be(dport);
        info.local_port = read_kernel(sk, off.skc_num).unwrap_or(0);
        return;
    }
    // struct unix_sock starts with struct sock; its `addr` is this end's bound name (an
    // accepted socket shares its listener's), the peer's `addr` the other end's.
    let mut addr: u64 = read_kernel(sk, off.unix_addr).unwrap_or(0);
    info.unix_path_is_local = 1;
    if addr == 0 {
        info.unix_path_is_local = 0;
        let peer: u64 = read_kernel(sk, off.unix_peer).unwrap_or(0);
        if peer != 0 {
            addr = read_kernel(peer as *const u8, off.unix_addr).unwrap_or(0);
        }
    }
    if addr == 0 {
        return;
    }
    let len: i32 = read_kernel(addr as *const u8, off.unix_address_len).unwrap_or(0);
    // sockaddr_un: sun_family (2 bytes) then sun_path.
    let name = (addr as *const u8).add(off.unix_address_name as usize + 2);
    if probe_read_kernel_raw(
        info.unix_path.as_mut_ptr() as *mut c_void,
        info.unix_path.len() as u32,
        name as *const c_void,
    ) == 0
    {
        let path_len = len - 2;
        info.unix_path_len = if path_len < 0 {
            0
        } else if path_len > 108 {
            108
        } else {
            path_len as u32
        };
    }
}

/// A header-only lifecycle event (a close, a fork, an exit) of `tgid`, stamped now; `fill`
/// sets the fields of its kind. One the ring has no room for is counted: userspace reports
/// it, and falls back on /proc for what it missed.
#[inline(always)]
fn emit_lifecycle(kind: EventKind, tgid: u32, fill: impl FnOnce(&mut EventHeader)) {
    let mut h = EventHeader {
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        tgid,
        syscall: -1,
        kind: kind as u8,
        ..Default::default()
    };
    fill(&mut h);
    if EVENTS.output::<EventHeader>(&h, 0).is_err() {
        if let Some(c) = counters() {
            c.lifecycle_lost += 1;
        }
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    // -- include/trace/events/sock.h. Fires on TCP state changes only, not per packet.
    let newstate: i32 = ctx.arg(2);
    if newstate != TCP_CLOSE {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    forget_socket(sk as u64);
    0
}

/// The socket at `key` is gone: its connection (if any) is closed.
#[inline(always)]
fn forget_socket(key: u64) {
    // SAFETY: map lookup by value.
    if let Some(state) = unsafe { CONNS.get(&key) } {
        let (cookie, tgid) = (state.cookie, state.tgid);
        let _ = CONNS.remove(&key);
        emit_lifecycle(EventKind::ConnClose, tgid, |h| h.conn_id = cookie);
    }
    // A stale candidate entry may sit beside a CONNS one: both go.
    // SAFETY: map lookup by value.
    if let Some(state) = unsafe { CANDIDATES.get(&key) } {
        let (cookie, tgid, class) = (state.cookie, state.tgid, state.class);
        let _ = CANDIDATES.remove(&key);
        if class != CLASS_OTHER {
            emit_lifecycle(EventKind::ConnClose, tgid, |h| h.conn_id = cookie);
        }
    }
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child)
    // -- include/trace/events/sched.h. Runs in the parent.
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_watched(parent_tgid) {
        return 0;
    }
    let cfg = config();
    if cfg.offsets.valid == 0 {
        return 0;
    }
    let child: *const u8 = ctx.arg(1);
    // SAFETY: kernel pointer reads with probe_read.
    let (Some(pid), Some(tgid)) = (
        unsafe { read_kernel::<i32>(child, cfg.offsets.task_pid) },
        unsafe { read_kernel::<i32>(child, cfg.offsets.task_tgid) },
    ) else {
        return 0;
    };
    if pid != tgid {
        // A new thread of a watched process: already covered by its tgid.
        return 0;
    }
    // Not atomic (no atomic read-modify-write for this target in Rust's core): two watched
    // processes forking at the same instant, with children in the same 64-pid word, could lose
    // one bit. Userspace sets the bit again on the fork event, which repairs that.
    let child_tgid = tgid as u32;
    if let Some(word) = WATCHED.get_ptr_mut(child_tgid >> 6) {
        // SAFETY: pointer into an array map value.
        unsafe { *word |= 1u64 << (child_tgid & 63) };
    }
    // The child's start time, with its pid, names it for good (pids are reused).
    // SAFETY: kernel pointer read with probe_read.
    let start = unsafe { read_kernel::<u64>(child, cfg.offsets.task_start_boottime) }.unwrap_or(0);
    emit_lifecycle(EventKind::ProcFork, parent_tgid, |h| {
        h.fd = tgid;
        h.offset = start;
    });
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, bool group_dead) -- include/trace/events/sched.h; older
    // kernels pass `p` only. Runs in the exiting thread, whichever thread of the group it is.
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_watched(tgid) {
        return 0;
    }
    let cfg = config();
    if cfg.offsets.valid == 0 {
        return 0;
    }
    let task: *const u8 = ctx.arg(0);
    let off = &cfg.offsets;
    let group_dead = if cfg.exit_has_group_dead != 0 {
        let group_dead: u64 = ctx.arg(1);
        group_dead & 1 != 0
    } else {
        // do_exit() has already taken this thread out of `signal->live`.
        // SAFETY: kernel pointer reads with probe_read.
        let live = unsafe {
            read_kernel::<u64>(task, off.task_signal)
                .and_then(|signal| read_kernel::<i32>(signal as *const u8, off.signal_live))
        };
        live == Some(0)
    };
    if !group_dead {
        // A thread, even the main one, whose process goes on: nothing to report.
        return 0;
    }
    // SAFETY: kernel pointer reads with probe_read.
    let start = unsafe {
        read_kernel::<u64>(task, off.task_group_leader)
            .and_then(|leader| read_kernel::<u64>(leader as *const u8, off.task_start_boottime))
    }
    .unwrap_or(0);
    emit_lifecycle(EventKind::ProcExit, tgid, |h| {
        h.tid = pid_tgid as u32;
        h.offset = start;
    });
    // The pid may be given to an unrelated process next: it must not inherit the bit. Cleared
    // after the event is in the ring, so that userspace, which sets the bit of each child it
    // hears of, drains this exit no later than it could set the bit again. Not atomic: a fork in the same 64-pid word at this instant could lose its bit, which
    // userspace sets again on the fork event.
    if let Some(word) = WATCHED.get_ptr_mut(tgid >> 6) {
        // SAFETY: pointer into an array map value.
        unsafe { *word &= !(1u64 << (tgid & 63)) };
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
