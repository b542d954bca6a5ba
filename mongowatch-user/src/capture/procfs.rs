//! What /proc tells about watched processes and their sockets: the fallback for what the
//! kernel events did not carry (a connection whose open event was lost, a process's name).

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

/// The process exists and one of its threads still runs. A main thread that exited before the
/// others is a zombie while they go on: the process is alive until the last one exits.
pub fn alive(pid: u32) -> bool {
    alive_since(pid).is_some()
}

/// When the process started, in clock ticks since boot (`/proc/PID/stat` field 22): with the
/// pid, what tells a process apart from a later one that was given the same pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_start_time(&stat)
}

/// A live process (see [`alive`]) and its [`start_time`], from one read of its stat file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alive {
    pub start: Option<u64>,
}

/// `None` when the process is gone; else when it started (`None` inside if /proc could not
/// tell). What a tick asks of every watched process, so it costs one read, not two.
pub fn alive_since(pid: u32) -> Option<Alive> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let alive = Alive {
        start: stat_start_time(&stat),
    };
    if stat_is_running(&stat) {
        return Some(alive);
    }
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .flatten()
        .any(|task| fs::read_to_string(task.path().join("stat")).is_ok_and(|s| stat_is_running(&s)))
        .then_some(alive)
}

/// A start time the kernel gave in ns since boot (`task->start_boottime`), in the clock ticks
/// of [`start_time`]; `None` for 0 (not known).
pub fn boot_ns_to_ticks(ns: u64) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ns_per_tick = 1_000_000_000 / u64::try_from(hz).ok().filter(|h| *h > 0)?;
    (ns > 0).then(|| ns / ns_per_tick)
}

/// Field `n` (1-based, as proc(5) numbers them, from 3 on) of a `/proc/PID/stat` line: the
/// fields after the command name, which is in parentheses and may hold spaces and
/// parentheses itself, start at the state, field 3.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

fn stat_start_time(stat: &str) -> Option<u64> {
    stat_field(stat, 22)?.parse().ok()
}

/// Every process below the `roots` in the process tree, at the time of the walk, each once and
/// none of the roots: a `--pid` of a parent whose workers already run (gunicorn, a
/// `multiprocessing` pool, Node cluster) must watch them, and the kernel only follows forks
/// that happen after a process is watched. Read from the parent pid of every process in /proc
/// (present on every kernel, unlike `/proc/PID/task/TID/children`), once for all the roots: a
/// node-wide selection has every process for a root, and a read per root was quadratic. A
/// process that exits during the walk is simply not there.
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pairs = dir.filter_map(|entry| {
        let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        Some((child, parent_in_stat(&stat)?))
    });
    descendants_in(roots, pairs)
}

/// The parent pid in the text of /proc/PID/stat: the second field after the command name,
/// which is in parentheses and may hold spaces and parentheses itself.
fn parent_in_stat(stat: &str) -> Option<u32> {
    stat_field(stat, 4)?.parse().ok()
}

/// The descendants of `roots` given (pid, parent pid) pairs, parents before children, each once
/// and none of the roots (a cycle, which /proc never shows, could not loop).
fn descendants_in(roots: &[u32], pairs: impl IntoIterator<Item = (u32, u32)>) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, ppid) in pairs {
        children.entry(ppid).or_default().push(pid);
    }
    let mut seen: HashSet<u32> = roots.iter().copied().collect();
    let mut out = Vec::new();
    let mut next = 0;
    let mut frontier = roots.to_vec();
    while let Some(parent) = frontier.get(next).copied() {
        next += 1;
        for &child in children.get(&parent).into_iter().flatten() {
            if seen.insert(child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// A `/proc/.../stat` line of a task that has not exited (state neither Z nor X).
fn stat_is_running(stat: &str) -> bool {
    stat_field(stat, 3).is_some_and(|state| state != "Z" && state != "X")
}

/// Every process in /proc now.
pub fn pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The inode of the socket behind `fd` of `pid`.
pub fn socket_inode(pid: u32, fd: i32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Local and remote address of a TCP socket, from /proc/<pid>/net/tcp{,6}.
pub fn tcp_ends(pid: u32, inode: u64) -> Option<(SocketAddr, SocketAddr)> {
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        if let Some(found) = fs::read_to_string(Path::new(&path))
            .ok()
            .and_then(|text| find_tcp(&text, inode))
        {
            return Some(found);
        }
    }
    None
}

/// Parses the table format of /proc/net/tcp{,6}: `sl local rem st ... uid timeout inode`.
fn find_tcp(table: &str, inode: u64) -> Option<(SocketAddr, SocketAddr)> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.get(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        Some((parse_addr(cols.get(1)?)?, parse_addr(cols.get(2)?)?))
    })
}

/// `0100007F:6989` (IPv4, host-order hex words) or 32 hex digits for IPv6.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, word) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                word.copy_from_slice(&w.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:C8E8 0100007F:6989 01 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 20 4 30 10 -1\n";
        let (local, remote) = find_tcp(table, 123456).unwrap();
        assert_eq!(local, "127.0.0.1:51432".parse().unwrap());
        assert_eq!(remote, "127.0.0.1:27017".parse().unwrap());
        assert_eq!(find_tcp(table, 1), None);
    }

    #[test]
    fn parses_v6_and_mapped_v4() {
        assert_eq!(
            parse_addr("0000000000000000FFFF00000100007F:6989"),
            Some("127.0.0.1:27017".parse().unwrap())
        );
        assert_eq!(
            parse_addr("00000000000000000000000001000000:6989"),
            Some("[::1]:27017".parse().unwrap())
        );
        assert_eq!(parse_addr("garbage"), None);
    }

    #[test]
    fn reads_the_start_time_past_a_name_with_parentheses() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 \
                    987654 12345678 300 18446744073709551615";
        assert_eq!(stat_start_time(stat), Some(987654));
        assert_eq!(stat_start_time("4242 (a) S 1"), None);
        let own = start_time(std::process::id()).unwrap();
        assert!(own > 0);
        assert_eq!(start_time(std::process::id()), Some(own));
    }

    #[test]
    fn stat_states() {
        assert!(stat_is_running("42 (python3) S 1 42 42 0 -1"));
        assert!(
            stat_is_running("42 (a) b) Z) R 1 42"),
            "the name may hold ) and spaces"
        );
        assert!(!stat_is_running("42 (python3) Z 1 42 42 0 -1"));
        assert!(!stat_is_running("42 (python3) X 1"));
        assert!(!stat_is_running("garbage"));
    }

    /// A process whose main thread exited while another thread runs is alive.
    #[test]
    fn a_process_without_its_main_thread_is_alive() {
        let script = "import ctypes, threading, time\n\
            threading.Thread(target=time.sleep, args=(1.5,)).start()\n\
            time.sleep(0.1)\n\
            ctypes.CDLL(None).pthread_exit(None)\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .spawn()
            .expect("this test runs python3 (pthread_exit of the main thread through ctypes)");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let main_gone =
            || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !stat_is_running(&s));
        while !main_gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(main_gone(), "the main thread should have exited");
        assert!(alive(pid), "its other thread still runs");
        child.wait().unwrap();
        assert!(!alive(pid));
    }

    #[test]
    fn this_process_is_alive() {
        assert!(alive(std::process::id()));
        // The kernel's comm is the executable's name, cut to 15 bytes.
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            comm(std::process::id()).as_deref(),
            Some(&name[..name.len().min(15)])
        );
        assert!(!alive(u32::MAX));
    }

    #[test]
    fn parent_pid_from_stat() {
        assert_eq!(
            parent_in_stat("1234 (python3) S 77 1234 1234 0 -1 4194560 0 0"),
            Some(77)
        );
        // A command name with spaces and a closing parenthesis of its own.
        assert_eq!(parent_in_stat("9 (a) b) (c) R 8 9 9 0"), Some(8));
        assert_eq!(parent_in_stat("9 (trunc"), None);
        assert_eq!(parent_in_stat("9 (x) S"), None);
    }

    #[test]
    fn descendants_walk_the_whole_tree_once() {
        // 10 -> 11, 12; 11 -> 13 -> 14; 20 is elsewhere; 30 <-> 31 is a cycle.
        let pairs = [
            (11, 10),
            (12, 10),
            (13, 11),
            (14, 13),
            (20, 1),
            (30, 31),
            (31, 30),
        ];
        let mut d = descendants_in(&[10], pairs);
        d.sort();
        assert_eq!(d, [11, 12, 13, 14]);
        assert_eq!(descendants_in(&[14], pairs), Vec::<u32>::new());
        let mut c = descendants_in(&[30], pairs);
        c.sort();
        assert_eq!(c, [31], "a cycle ends, without the root");
        // Several roots, one below another (a node-wide selection has them all): each
        // descendant once, no root among them.
        let mut m = descendants_in(&[13, 10, 20], pairs);
        m.sort();
        assert_eq!(m, [11, 12, 14]);
        assert_eq!(descendants_in(&[], pairs), Vec::<u32>::new());
    }

    /// A real tree: a shell that started a `sleep` (grandchild of this test).
    #[test]
    fn descendants_of_this_process() {
        use std::{
            io::Read,
            process::{Command, Stdio},
        };
        let mut sh = Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = sh.stdout.take().unwrap();
        let mut b = [0u8; 1];
        while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0] as char);
        }
        let sleep: u32 = line.trim().parse().unwrap();
        let found = descendants(&[std::process::id()]);
        let _ = Command::new("kill").arg(sleep.to_string()).status();
        let _ = sh.wait();
        assert!(
            found.contains(&sh.id()),
            "{found:?} lacks the shell {}",
            sh.id()
        );
        assert!(
            found.contains(&sleep),
            "{found:?} lacks the grandchild {sleep}"
        );
        assert!(!found.contains(&std::process::id()));
    }
}
