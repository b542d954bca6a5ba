//! What /proc tells about watched processes and their sockets: the fallback for what the
//! kernel events did not carry (a connection whose open event was lost, a process's name).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

/// The process exists and one of its threads still runs. A main thread that exited before the
/// others is a zombie while they go on: the process is alive until the last one exits.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) if stat_is_running(&stat) => true,
        Ok(_) => fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
            tasks.flatten().any(|task| {
                fs::read_to_string(task.path().join("stat")).is_ok_and(|s| stat_is_running(&s))
            })
        }),
        Err(_) => false,
    }
}

/// A `/proc/.../stat` line of a task that has not exited (state neither Z nor X).
fn stat_is_running(stat: &str) -> bool {
    // The state follows the command name, which is in parentheses and may hold spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
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
        assert!(comm(std::process::id()).is_some());
        assert!(!alive(u32::MAX));
    }
}
