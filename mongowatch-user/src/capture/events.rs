//! Ring buffer records, parsed. Pure code: the kernel's bytes in, typed events out.

use mongowatch_common::{
    EventHeader, EventKind, SocketInfo, AF_INET, AF_INET6, AF_UNIX, DIR_EGRESS, EVENT_HEADER_SIZE,
};

/// Which way bytes travel, relative to the watched process.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Sent by the watched process.
    Egress,
    /// Received by the watched process.
    Ingress,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    Data {
        header: EventHeader,
        direction: Direction,
        payload: &'a [u8],
    },
    Gap {
        header: EventHeader,
        direction: Direction,
        len: u64,
    },
    ConnOpen {
        header: EventHeader,
        ends: Ends,
        comm: String,
        /// The cgroup (v2 id) of the process that opened it, 0 where the kernel has none.
        cgroup_id: u64,
    },
    ConnClose {
        header: EventHeader,
    },
    ProcFork {
        header: EventHeader,
        parent: u32,
        child: u32,
        /// The child's start time: ns since boot (CLOCK_BOOTTIME), the kernel's
        /// `task->start_boottime`. `/proc/PID/stat` field 22 is the same instant in clock ticks
        /// (`child_start_ns / (1e9 / sysconf(_SC_CLK_TCK))`). With `child`, it names the
        /// process even once the pid is reused.
        child_start_ns: u64,
    },
    /// The whole thread group of `pid` is dead (its last thread exited).
    ProcExit {
        header: EventHeader,
        pid: u32,
        /// The process's start time, as `child_start_ns` of its fork.
        start_ns: u64,
    },
    /// Process `pid` called exec (reported only when the selection needs it).
    ProcExec {
        header: EventHeader,
        pid: u32,
    },
    /// Selected process `pid` mapped a new executable file (a library, or its image at exec).
    ProcMapped {
        header: EventHeader,
        pid: u32,
    },
}

impl Event<'_> {
    pub fn header(&self) -> &EventHeader {
        match self {
            Event::Data { header, .. }
            | Event::Gap { header, .. }
            | Event::ConnOpen { header, .. }
            | Event::ConnClose { header }
            | Event::ProcFork { header, .. }
            | Event::ProcExit { header, .. }
            | Event::ProcExec { header, .. }
            | Event::ProcMapped { header, .. } => header,
        }
    }

    pub fn header_mut(&mut self) -> &mut EventHeader {
        match self {
            Event::Data { header, .. }
            | Event::Gap { header, .. }
            | Event::ConnOpen { header, .. }
            | Event::ConnClose { header }
            | Event::ProcFork { header, .. }
            | Event::ProcExit { header, .. }
            | Event::ProcExec { header, .. }
            | Event::ProcMapped { header, .. } => header,
        }
    }
}

/// The two ends of a connection as the kernel saw them from the watched side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ends {
    Inet {
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
    },
    Unix {
        /// The socket path (`@name` for an abstract one), empty when unnamed.
        path: String,
        /// The path is this end's own: the watched process is the listening side.
        path_is_local: bool,
    },
    Unknown {
        family: u16,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("record of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("record says {said} payload bytes but carries {has}")]
    BadLength { said: u32, has: usize },
}

pub fn parse(record: &[u8]) -> Result<Event<'_>, EventError> {
    if record.len() < EVENT_HEADER_SIZE {
        return Err(EventError::Short(record.len()));
    }
    // SAFETY: EventHeader is plain old data and the record has at least that many bytes.
    let header: EventHeader =
        unsafe { std::ptr::read_unaligned(record.as_ptr() as *const EventHeader) };
    let rest = &record[EVENT_HEADER_SIZE..];
    let kind = EventKind::from_u8(header.kind).ok_or(EventError::UnknownKind(header.kind))?;
    let direction = if header.direction == DIR_EGRESS {
        Direction::Egress
    } else {
        Direction::Ingress
    };
    let payload = |len: u32| {
        rest.get(..len as usize).ok_or(EventError::BadLength {
            said: len,
            has: rest.len(),
        })
    };
    Ok(match kind {
        EventKind::Data => Event::Data {
            payload: payload(header.captured_len)?,
            header,
            direction,
        },
        EventKind::Gap => Event::Gap {
            len: u64::from(header.orig_len),
            header,
            direction,
        },
        EventKind::ConnOpen => {
            let bytes = payload(std::mem::size_of::<SocketInfo>() as u32)?;
            // SAFETY: SocketInfo is plain old data and `bytes` has exactly its size.
            let info: SocketInfo =
                unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const SocketInfo) };
            Event::ConnOpen {
                ends: ends(&info),
                comm: c_string(&info.comm),
                cgroup_id: info.cgroup_id,
                header,
            }
        }
        EventKind::ConnClose => Event::ConnClose { header },
        EventKind::ProcFork => Event::ProcFork {
            parent: header.tgid,
            child: header.fd as u32,
            child_start_ns: header.offset,
            header,
        },
        EventKind::ProcExit => Event::ProcExit {
            pid: header.tgid,
            start_ns: header.offset,
            header,
        },
        EventKind::ProcExec => Event::ProcExec {
            pid: header.tgid,
            header,
        },
        EventKind::ProcMapped => Event::ProcMapped {
            pid: header.tgid,
            header,
        },
    })
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub fn ends(info: &SocketInfo) -> Ends {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
    match info.family {
        AF_INET => Ends::Inet {
            local: SocketAddr::new(v4(&info.local_addr), info.local_port),
            remote: SocketAddr::new(v4(&info.remote_addr), info.remote_port),
        },
        AF_INET6 => {
            let ip = |a: [u8; 16]| {
                let ip = Ipv6Addr::from(a);
                // Show v4-mapped addresses the way people type them.
                ip.to_ipv4_mapped()
                    .map(IpAddr::V4)
                    .unwrap_or(IpAddr::V6(ip))
            };
            Ends::Inet {
                local: SocketAddr::new(ip(info.local_addr), info.local_port),
                remote: SocketAddr::new(ip(info.remote_addr), info.remote_port),
            }
        }
        AF_UNIX => {
            let len = (info.unix_path_len as usize).min(info.unix_path.len());
            let raw = &info.unix_path[..len];
            let path = match raw.first() {
                Some(0) => format!("@{}", c_string(&raw[1..])),
                _ => c_string(raw),
            };
            Ends::Unix {
                path,
                path_is_local: info.unix_path_is_local != 0,
            }
        }
        family => Ends::Unknown { family },
    }
}

#[cfg(test)]
mod tests {
    use mongowatch_common::DIR_INGRESS;

    use super::*;

    fn record(header: &EventHeader, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; EVENT_HEADER_SIZE];
        // SAFETY: writing plain old data into a buffer of its size.
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr() as *mut EventHeader, *header) };
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn data_event_carries_its_payload() {
        let h = EventHeader {
            kind: EventKind::Data as u8,
            direction: DIR_INGRESS,
            captured_len: 3,
            offset: 42,
            ..Default::default()
        };
        let rec = record(&h, b"abcXX");
        match parse(&rec).unwrap() {
            Event::Data {
                header,
                direction,
                payload,
            } => {
                assert_eq!(payload, b"abc");
                assert_eq!(direction, Direction::Ingress);
                assert_eq!(header.offset, 42);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(parse(&[0u8; 10]), Err(EventError::Short(10)));
        let mut h = EventHeader {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(parse(&record(&h, b"")), Err(EventError::UnknownKind(99)));
        h.kind = EventKind::Data as u8;
        h.captured_len = 100;
        assert_eq!(
            parse(&record(&h, b"short")),
            Err(EventError::BadLength { said: 100, has: 5 })
        );
    }

    /// A fork record as the kernel writes it: parent in `tgid`, child in `fd`, the child's
    /// start time in `offset`.
    #[test]
    fn fork_and_exit_carry_start_times() {
        let fork = EventHeader {
            kind: EventKind::ProcFork as u8,
            tgid: 100,
            fd: 4242,
            offset: 123_456_789_000,
            ..Default::default()
        };
        match parse(&record(&fork, b"")).unwrap() {
            Event::ProcFork {
                parent,
                child,
                child_start_ns,
                ..
            } => assert_eq!(
                (parent, child, child_start_ns),
                (100, 4242, 123_456_789_000)
            ),
            other => panic!("{other:?}"),
        }
        let exit = EventHeader {
            kind: EventKind::ProcExit as u8,
            tgid: 4242,
            tid: 4243,
            offset: 123_456_789_000,
            ..Default::default()
        };
        match parse(&record(&exit, b"")).unwrap() {
            Event::ProcExit { pid, start_ns, .. } => {
                assert_eq!((pid, start_ns), (4242, 123_456_789_000))
            }
            other => panic!("{other:?}"),
        }
    }

    /// The cgroup a connection was opened from comes with its ends, so a process gone before
    /// the daemon reads the event is still placed in its container.
    #[test]
    fn conn_open_carries_comm_and_cgroup() {
        let mut info = SocketInfo {
            family: AF_INET,
            cgroup_id: 0x0123_4567_89ab_cdef,
            ..Default::default()
        };
        info.comm[..6].copy_from_slice(b"python");
        let h = EventHeader {
            kind: EventKind::ConnOpen as u8,
            captured_len: std::mem::size_of::<SocketInfo>() as u32,
            ..Default::default()
        };
        // SAFETY: SocketInfo is plain old data; its bytes as the kernel copies them.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                &info as *const SocketInfo as *const u8,
                std::mem::size_of::<SocketInfo>(),
            )
        };
        match parse(&record(&h, bytes)).unwrap() {
            Event::ConnOpen {
                comm, cgroup_id, ..
            } => assert_eq!(
                (comm.as_str(), cgroup_id),
                ("python", 0x0123_4567_89ab_cdef)
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ends_are_rendered() {
        let mut info = SocketInfo {
            family: AF_INET,
            local_port: 51432,
            remote_port: 27017,
            ..Default::default()
        };
        info.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        info.remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        assert_eq!(
            ends(&info),
            Ends::Inet {
                local: "127.0.0.1:51432".parse().unwrap(),
                remote: "127.0.0.2:27017".parse().unwrap(),
            }
        );
        let mut unix = SocketInfo {
            family: AF_UNIX,
            ..Default::default()
        };
        let p = b"/tmp/mongodb-27017.sock";
        unix.unix_path[..p.len()].copy_from_slice(p);
        unix.unix_path_len = p.len() as u32 + 1;
        assert_eq!(
            ends(&unix),
            Ends::Unix {
                path: "/tmp/mongodb-27017.sock".into(),
                path_is_local: false
            }
        );
        unix.unix_path = [0; 108];
        unix.unix_path[1..4].copy_from_slice(b"abs");
        unix.unix_path_len = 4;
        assert!(matches!(ends(&unix), Ends::Unix { path, .. } if path == "@abs"));
    }
}
