//! Types shared by the kernel programs (`mongowatch-ebpf`) and the daemon (`mongowatch-user`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it into maps and the ring
//! buffer, userspace reads it back. A change of layout is a change on both sides, which is why
//! the two sides build from this one definition.
#![cfg_attr(not(test), no_std)]

/// Ring buffer of capture events (`EventHeader` + payload).
pub const MAP_EVENTS: &str = "EVENTS";
/// Watched processes: a bitmap of tgids, one bit each (`WATCHED_WORDS` u64 words).
pub const MAP_WATCHED: &str = "WATCHED";
/// Words of the watched bitmap: 2^16 x 64 bits covers every tgid below 2^22, the kernel's
/// PID_MAX_LIMIT on 64-bit machines.
pub const WATCHED_WORDS: u32 = 1 << 16;
/// MongoDB connections of watched processes: `struct sock` address -> `ConnState`. Only
/// sockets classified as MongoDB enter it, so no other socket can push one out.
pub const MAP_CONNS: &str = "CONNS";
/// Other sockets of watched processes: those not classified yet (candidates) and those known
/// not to be MongoDB, same key and value. A small LRU: losing an entry only means the socket
/// is classified again.
pub const MAP_CANDIDATES: &str = "CANDIDATES";
/// Entries of `MAP_CONNS`.
pub const MAX_CONNS: u32 = 16384;
/// Entries of `MAP_CANDIDATES`.
pub const MAX_CANDIDATES: u32 = 8192;
/// Per-CPU counters (`Counters`), read by userspace for loss accounting.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Server ports that classify a TCP connection as MongoDB at once: port -> 1.
pub const MAP_PORTS: &str = "PORTS";
/// Selected cgroup v2 directories (node-wide selection): cgroup id (the directory's inode)
/// -> `SEL_INCLUDE` or `SEL_EXCLUDE`. A process is in one when its cgroup or an ancestor at a
/// level of `Config::cgroup_levels` is.
pub const MAP_CGROUPS: &str = "CGROUPS";
/// Selected process names: the kernel's 16-byte comm (NUL-padded) -> `SEL_INCLUDE` or
/// `SEL_EXCLUDE`.
pub const MAP_COMMS: &str = "COMMS";
/// Processes userspace found excluded although the kernel's own checks selected them (an
/// exclusion the kernel cannot decide, e.g. by executable): a bitmap like `MAP_WATCHED`.
pub const MAP_EXCLUDED: &str = "EXCLUDED";
/// Entries of `MAP_CGROUPS` and `MAP_COMMS`.
pub const MAX_SELECTORS: u32 = 4096;
/// Values of `MAP_CGROUPS` and `MAP_COMMS`.
pub const SEL_INCLUDE: u8 = 1;
pub const SEL_EXCLUDE: u8 = 2;
/// Bits of `Config::select`: which of the kernel's own selection checks are on. All clear (the
/// `--pid` mode) costs unwatched processes nothing beyond the bitmap lookup.
pub const SELECT_ALL: u32 = 1;
pub const SELECT_COMM: u32 = 1 << 1;
pub const SELECT_CGROUP: u32 = 1 << 2;
pub const EXCLUDE_COMM: u32 = 1 << 3;
pub const EXCLUDE_CGROUP: u32 = 1 << 4;
/// Report every exec (`ProcExec`), for selectors only userspace can decide (the executable).
pub const EXEC_EVENTS: u32 = 1 << 5;
/// Deepest cgroup level the kernel checks (the root is level 0).
pub const MAX_CGROUP_LEVEL: u32 = 15;
/// Scratch space where an event is assembled before it is written to the ring: one entry per
/// possible CPU (the loader sets the size), indexed by the running CPU.
pub const MAP_SCRATCH: &str = "SCRATCH";
/// Scratch entries per CPU: one for the socket tracepoints, one for the TLS library probes
/// (uprobes can be preempted, tracepoints cannot, so they must not share a slot).
pub const SCRATCH_SLOTS: u32 = 2;

/// Payload bytes carried by one data event at most. Larger reads and writes are split.
pub const CHUNK_SIZE: usize = 16384;
/// The ring buffer's default size in bytes (a power of two, a multiple of the page size);
/// `--ring-size` sets it at load time.
pub const RING_SIZE: u32 = 64 << 20;
/// The kernel's own limit of iovec entries per readv/writev/sendmsg/recvmsg call (UIO_MAXIOV):
/// a call with more fails, so the programs follow every entry of any call that moved bytes.
pub const UIO_MAXIOV: u32 = 1024;
/// Data events before a connection whose bytes never looked like MongoDB is dropped.
pub const CLASSIFY_STRIKES: u8 = 4;

/// The largest message MongoDB allows (decimal, not MiB).
pub const MAX_MESSAGE_SIZE: i32 = 48_000_000;
/// The smallest well-formed message: a header and an OP_MSG with flags and an empty document.
pub const MIN_MESSAGE_SIZE: i32 = 16 + 4 + 1 + 5;

/// Does this look like the start of a MongoDB message? The kernel uses it to classify a
/// connection from its first bytes; userspace uses it to resynchronise after a gap.
#[inline(always)]
pub fn plausible_header(h: &[u8; 16]) -> bool {
    let length = i32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let op_code = i32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&length) {
        return false;
    }
    matches!(
        op_code,
        1 | 2001 | 2002 | 2004 | 2005 | 2006 | 2007 | 2012 | 2013
    )
}

/// What a ring buffer record is.
#[repr(u8)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `captured_len` payload bytes follow the header.
    Data = 1,
    /// `orig_len` bytes moved through the socket but were not copied (no user buffer to read:
    /// sendfile, splice, io_uring, mmsg calls, MSG_TRUNC). No payload.
    Gap = 2,
    /// First sight of a connection: a `SocketInfo` follows the header.
    ConnOpen = 3,
    /// A TCP connection reached TCP_CLOSE. No payload.
    ConnClose = 4,
    /// A watched process forked: `fd` holds the child tgid, `offset` the child's start time
    /// (`task->start_boottime`, ns since boot: `/proc/PID/stat` field 22 is this value in clock
    /// ticks), so that the pair names the process even after its pid is reused. No payload.
    ProcFork = 5,
    /// The last thread of a watched process exited (the whole thread group is dead; a main
    /// thread that exits before the others is not reported). `offset` holds the process's start
    /// time, as for `ProcFork`. No payload.
    ProcExit = 6,
    /// A process called exec (sent only with `EXEC_EVENTS`): userspace checks its new
    /// executable and name against the selection. No payload.
    ProcExec = 7,
    /// A selected process mapped a file executable (`mmap` with `PROT_EXEC`: a shared
    /// library) or exec'd a new image: userspace looks for a TLS library to hook in it, before
    /// the process's first TLS call if it can. No payload.
    ProcMapped = 8,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::Gap,
            3 => Self::ConnOpen,
            4 => Self::ConnClose,
            5 => Self::ProcFork,
            6 => Self::ProcExit,
            7 => Self::ProcExec,
            8 => Self::ProcMapped,
            _ => return None,
        })
    }
}

/// Bytes sent by the watched process.
pub const DIR_EGRESS: u8 = 0;
/// Bytes received by the watched process.
pub const DIR_INGRESS: u8 = 1;

/// The fixed header of every ring buffer record.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_boot_ns()` when the probe ran (after the bytes moved).
    pub ts_ns: u64,
    /// Socket cookie: unique for the life of the kernel, never reused.
    pub conn_id: u64,
    /// Offset of this event's first byte in its direction's stream (counted from the first
    /// byte mongowatch saw on the connection, not from the connection's start).
    pub offset: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    /// Bytes the syscall moved in all (`ret`), of which this event covers a part.
    pub orig_len: u32,
    /// Payload bytes that follow this header.
    pub captured_len: u32,
    /// Syscall number that moved the bytes (x86_64 numbering), or -1 when not known.
    pub syscall: i32,
    pub kind: u8,
    pub direction: u8,
    /// `EVENT_FLAG_*` bits.
    pub flags: u8,
    pub _pad: [u8; 5],
}

/// The payload is plaintext read from a TLS library's `SSL_read`/`SSL_write`, not the bytes
/// on the socket.
pub const EVENT_FLAG_TLS: u8 = 1;

pub const EVENT_HEADER_SIZE: usize = core::mem::size_of::<EventHeader>();

/// Address family values as in the kernel.
pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Where a connection goes, read from the socket on first sight. Follows a `ConnOpen` header.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct SocketInfo {
    pub family: u16,
    /// Local and remote ports (host order); 0 for unix sockets.
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Unix socket path (`sun_path`) of the peer, or of this end when the peer has none.
    /// NUL-terminated unless 108 bytes long; a leading NUL is an abstract name.
    pub unix_path: [u8; 108],
    pub unix_path_len: u32,
    /// Set when the unix path is this end's own (a server-side socket).
    pub unix_path_is_local: u32,
    /// The `comm` of the task that first used the connection.
    pub comm: [u8; 16],
    pub _pad2: u32,
    /// Its cgroup (v2 id, the cgroup directory's inode): where it runs, known even when the
    /// process is gone by the time the daemon reads this event.
    pub cgroup_id: u64,
}

impl Default for SocketInfo {
    fn default() -> Self {
        Self {
            family: 0,
            local_port: 0,
            remote_port: 0,
            _pad: 0,
            local_addr: [0; 16],
            remote_addr: [0; 16],
            unix_path: [0; 108],
            unix_path_len: 0,
            unix_path_is_local: 0,
            comm: [0; 16],
            _pad2: 0,
            cgroup_id: 0,
        }
    }
}

/// A connection's classification.
pub const CLASS_UNKNOWN: u8 = 0;
pub const CLASS_MONGO: u8 = 1;
pub const CLASS_OTHER: u8 = 2;

/// Kernel-side state of one connection (map value, keyed by the `struct sock` address; the
/// cookie tells a new socket at a reused address from the old one).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default)]
pub struct ConnState {
    /// Socket cookie: the connection id userspace sees.
    pub cookie: u64,
    /// Next stream offset per direction ([egress, ingress]).
    pub offsets: [u64; 2],
    pub tgid: u32,
    pub class: u8,
    /// Data events seen while `class` was unknown.
    pub strikes: u8,
    /// Non-zero once a TLS library call was seen on this socket: its socket bytes are
    /// ciphertext and never leave the kernel; the plaintext comes from the library's probes.
    pub tls: u8,
    pub _pad: u8,
}

/// Per-CPU counters. Userspace sums the CPUs.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default)]
pub struct Counters {
    /// Records the ring buffer had no room for.
    pub ring_full_events: u64,
    /// Payload bytes in those records.
    pub ring_full_bytes: u64,
    /// Bytes moved through watched sockets with no user buffer to copy from.
    pub gap_bytes: u64,
    /// Copies from user memory that failed (the range becomes a gap).
    pub read_failures: u64,
    /// Connections dropped as not MongoDB.
    pub classified_other: u64,
    /// Data events written.
    pub data_events: u64,
    /// Lifecycle events (close, fork, exit) the ring buffer had no room for.
    pub lifecycle_lost: u64,
    /// Gap events written (bytes that moved through a socket but could not be copied).
    pub gap_events: u64,
    /// TLS library calls whose plaintext was emitted (`SSL_read*` / `SSL_write*` of watched
    /// processes).
    pub tls_calls: u64,
    /// TLS library calls of watched processes whose socket could not be told (no nested socket
    /// call, no earlier mapping, no fallback): their plaintext is lost, counted here.
    pub tls_unmapped: u64,
    /// TLS plaintext copies skipped because this CPU's TLS copy slot was busy (a probe
    /// preempted by another on the same CPU).
    pub tls_busy: u64,
}

/// Offsets into kernel structures, read from the running kernel's BTF by userspace and set as
/// a global before load (CO-RE done by hand: the eBPF toolchain here has no CO-RE relocations).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default)]
pub struct KernelOffsets {
    /// `struct sock_common` fields inside `struct sock`.
    pub skc_family: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `struct unix_sock`: `addr` and `peer`.
    pub unix_addr: u32,
    pub unix_peer: u32,
    /// `struct unix_address`: `len` and `name`.
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// `struct task_struct`: `tgid`, `pid`, `start_boottime`, `group_leader`, `signal`.
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_start_boottime: u32,
    pub task_group_leader: u32,
    pub task_signal: u32,
    /// `struct signal_struct`: `live` (threads not yet exiting).
    pub signal_live: u32,
    /// Non-zero once filled in: the programs refuse to run on zeros.
    pub valid: u32,
}

impl KernelOffsets {
    pub const fn zeroed() -> Self {
        Self {
            skc_family: 0,
            skc_daddr: 0,
            skc_rcv_saddr: 0,
            skc_dport: 0,
            skc_num: 0,
            skc_v6_daddr: 0,
            skc_v6_rcv_saddr: 0,
            unix_addr: 0,
            unix_peer: 0,
            unix_address_len: 0,
            unix_address_name: 0,
            task_tgid: 0,
            task_pid: 0,
            task_start_boottime: 0,
            task_group_leader: 0,
            task_signal: 0,
            signal_live: 0,
            valid: 0,
        }
    }
}

/// Load-time configuration (a global the loader overrides).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default)]
pub struct Config {
    pub offsets: KernelOffsets,
    /// Non-zero when this kernel's `sched_process_exit` tracepoint passes `group_dead` (its
    /// second argument); otherwise the program reads `task->signal->live`.
    pub exit_has_group_dead: u32,
    /// `SELECT_*`, `EXCLUDE_*` and `EXEC_EVENTS` bits (node-wide selection).
    pub select: u32,
    /// Bit n set: the kernel looks up the current task's cgroup ancestor at level n in
    /// `MAP_CGROUPS` (the levels of the selected cgroups; n <= `MAX_CGROUP_LEVEL`).
    pub cgroup_levels: u32,
    /// What the rungs without a socket tracepoint need (see `SocketPathOffsets`).
    pub socket_path: SocketPathOffsets,
}

impl Config {
    pub const fn zeroed() -> Self {
        Self {
            offsets: KernelOffsets::zeroed(),
            exit_has_group_dead: 0,
            select: 0,
            cgroup_levels: 0,
            socket_path: SocketPathOffsets::zeroed(),
        }
    }
}

/// Field offsets the capture rungs below the socket tracepoints need: the syscall rung finds
/// the socket behind a file descriptor (task -> files -> fdtable -> file -> socket -> sock),
/// and the rungs without `bpf_get_socket_cookie` name a connection by its socket inode number.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default)]
pub struct SocketPathOffsets {
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.max_fds` and `fdtable.fd`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    /// `file.f_inode`, `file.private_data` (the `struct socket` of a socket file).
    pub file_inode: u32,
    pub file_private_data: u32,
    /// The file's reference count (`f_count`, or `f_ref` from Linux 6.13), and the value it
    /// holds when one reference is left (1 for `f_count`, 0 for `f_ref`).
    pub file_count: u32,
    pub file_count_one: u32,
    /// `inode.i_mode`, `inode.i_ino`.
    pub inode_mode: u32,
    pub inode_ino: u32,
    /// `socket.sk`, and the socket's inode (`socket_alloc.vfs_inode`, beside the socket).
    pub socket_sk: u32,
    pub socket_inode: u32,
    /// Non-zero once filled in.
    pub valid: u32,
}

impl SocketPathOffsets {
    pub const fn zeroed() -> Self {
        Self {
            task_files: 0,
            files_fdt: 0,
            fdtable_max_fds: 0,
            fdtable_fd: 0,
            file_inode: 0,
            file_private_data: 0,
            file_count: 0,
            file_count_one: 0,
            inode_mode: 0,
            inode_ino: 0,
            socket_sk: 0,
            socket_inode: 0,
            valid: 0,
        }
    }
}

/// Connection ids made from a socket inode number carry this bit, so they can never equal a
/// kernel socket cookie of the same run (the rungs without `bpf_get_socket_cookie` use them).
pub const INODE_CONN_ID: u64 = 1 << 63;

#[cfg(feature = "user")]
mod user {
    use super::*;
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for SocketInfo {}
    unsafe impl aya::Pod for ConnState {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for SocketPathOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_stable() {
        // The kernel writes this header byte for byte; a padding change would shift payloads.
        assert_eq!(EVENT_HEADER_SIZE, 56);
        assert_eq!(
            core::mem::size_of::<SocketInfo>(),
            8 + 32 + 108 + 8 + 16 + 4 + 8
        );
    }

    #[test]
    fn plausible_headers() {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&100i32.to_le_bytes());
        h[12..16].copy_from_slice(&2013i32.to_le_bytes());
        assert!(plausible_header(&h));
        h[12..16].copy_from_slice(&2000i32.to_le_bytes());
        assert!(!plausible_header(&h), "unknown opcode");
        h[12..16].copy_from_slice(&1i32.to_le_bytes());
        h[0..4].copy_from_slice(&48_000_001i32.to_le_bytes());
        assert!(!plausible_header(&h), "over the size limit");
        h[0..4].copy_from_slice(&15i32.to_le_bytes());
        assert!(!plausible_header(&h), "shorter than a header");
        assert!(!plausible_header(b"GET / HTTP/1.1\r\n"), "HTTP");
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in [
            EventKind::Data,
            EventKind::Gap,
            EventKind::ConnOpen,
            EventKind::ConnClose,
            EventKind::ProcFork,
            EventKind::ProcExit,
            EventKind::ProcExec,
            EventKind::ProcMapped,
        ] {
            assert_eq!(EventKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(EventKind::from_u8(0), None);
        assert_eq!(EventKind::from_u8(9), None);
    }
}
