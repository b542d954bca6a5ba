//! The capture ladder: which kernel hooks deliver the socket bytes, chosen at load time from
//! what the running kernel offers, best first.
//!
//! 1. `sock-tracepoints`: the BTF tracepoints `sock/sock_send_length` and `sock_recv_length`
//!    (Linux 6.3). They fire on socket I/O only, so unwatched processes pay least.
//! 2. `fentry`: fexit programs on the stream sockets' `proto_ops` send and receive functions
//!    (`inet_sendmsg`, `inet6_sendmsg`, `unix_stream_sendmsg` and the `recvmsg` ones).
//! 3. `kprobes`: kprobe/kretprobe pairs on the same functions.
//! 4. `syscalls`: the `syscalls/sys_exit_*` tracepoints of read, readv, recvfrom, recvmsg,
//!    write, writev, sendto and sendmsg (and `sys_enter_close`). They fire for every such call
//!    of every process, sockets or not: the most costly to unwatched processes, but present on
//!    nearly every kernel.
//!
//! Every rung feeds the same data path in the kernel (the bytes are read from the calling
//! task's syscall registers), so the events, the byte stream and the gap accounting are the
//! same whichever runs. Where `bpf_loop` is missing (before 5.17) the `_bounded` variants of
//! the programs copy with a loop the verifier can walk, and count what is past its bound as a
//! gap. Together with `probes.rs`, this is the only module that touches the kernel.

use std::{fmt, path::Path, str::FromStr};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{BtfTracePoint, FExit, KProbe, ProgramType, TracePoint},
    sys::is_program_supported,
    Btf, Ebpf,
};
use btf_rs::Btf as KernelBtf;

use super::btf::{has_function, KernelFeatures};

/// A capture path ("rung").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CapturePath {
    SockTracepoints,
    Fentry,
    Kprobes,
    Syscalls,
}

impl CapturePath {
    /// Best first: cheapest for the processes not watched.
    pub const ALL: [CapturePath; 4] = [
        CapturePath::SockTracepoints,
        CapturePath::Fentry,
        CapturePath::Kprobes,
        CapturePath::Syscalls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CapturePath::SockTracepoints => "sock-tracepoints",
            CapturePath::Fentry => "fentry",
            CapturePath::Kprobes => "kprobes",
            CapturePath::Syscalls => "syscalls",
        }
    }
}

impl fmt::Display for CapturePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CapturePath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CapturePath::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = CapturePath::ALL.iter().map(|p| p.name()).collect();
                format!("unknown capture path `{s}` (one of: {})", names.join(", "))
            })
    }
}

/// A socket-layer function the fentry and kprobe rungs hook.
pub struct SocketFunction {
    pub name: &'static str,
    /// `recvmsg(sock, msg, size, flags)` rather than `sendmsg(sock, msg, size)`.
    pub receives: bool,
    /// The rung needs it; IPv6 may be missing (a kernel without it, or a module not loaded).
    pub required: bool,
    /// The fexit program for it.
    pub fexit: &'static str,
}

pub const SOCKET_FUNCTIONS: [SocketFunction; 6] = [
    SocketFunction {
        name: "inet_sendmsg",
        receives: false,
        required: true,
        fexit: "fexit_inet_sendmsg",
    },
    SocketFunction {
        name: "inet6_sendmsg",
        receives: false,
        required: false,
        fexit: "fexit_inet6_sendmsg",
    },
    SocketFunction {
        name: "unix_stream_sendmsg",
        receives: false,
        required: true,
        fexit: "fexit_unix_stream_sendmsg",
    },
    SocketFunction {
        name: "inet_recvmsg",
        receives: true,
        required: true,
        fexit: "fexit_inet_recvmsg",
    },
    SocketFunction {
        name: "inet6_recvmsg",
        receives: true,
        required: false,
        fexit: "fexit_inet6_recvmsg",
    },
    SocketFunction {
        name: "unix_stream_recvmsg",
        receives: true,
        required: true,
        fexit: "fexit_unix_stream_recvmsg",
    },
];

/// The syscalls whose exit the syscall rung hooks (`sys_exit_<name>`, program of that name).
pub const SYSCALLS: [&str; 8] = [
    "read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg",
];

/// What the running kernel offers, probed at load time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offer {
    pub sock_tracepoints: bool,
    pub fentry: bool,
    pub kprobes: bool,
    pub syscalls: bool,
    pub bpf_loop: bool,
    /// The optional socket functions (IPv6) are in the kernel's BTF.
    pub inet6: bool,
}

impl Offer {
    pub fn has(&self, path: CapturePath) -> bool {
        match path {
            CapturePath::SockTracepoints => self.sock_tracepoints,
            CapturePath::Fentry => self.fentry,
            CapturePath::Kprobes => self.kprobes,
            CapturePath::Syscalls => self.syscalls,
        }
    }

    /// The rungs offered, best first.
    pub fn paths(&self) -> Vec<CapturePath> {
        CapturePath::ALL
            .into_iter()
            .filter(|p| self.has(*p))
            .collect()
    }

    /// The rungs to try in order: the forced one alone, or every one offered.
    pub fn candidates(&self, forced: Option<CapturePath>) -> Result<Vec<CapturePath>> {
        let offered = self.paths();
        let names = || {
            offered
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match forced {
            Some(path) if self.has(path) => Ok(vec![path]),
            Some(path) => bail!(
                "this kernel does not offer the capture path `{path}` (it offers: {})",
                if offered.is_empty() {
                    "none".to_string()
                } else {
                    names()
                }
            ),
            None if offered.is_empty() => bail!(
                "this kernel offers no capture path: no socket tracepoints (Linux 6.3), no \
                 fentry or kprobes on the socket functions, no syscall tracepoints \
                 (CONFIG_FTRACE_SYSCALLS)"
            ),
            None => Ok(offered),
        }
    }
}

/// Probes the running kernel: the hooks' BTF types, functions and tracepoints, and a tiny
/// program of each kind loaded (and for fentry attached) and discarded.
pub fn probe(btf: &KernelBtf, features: &KernelFeatures) -> Offer {
    let tracefs = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir());
    let loads = |kind: ProgramType| match is_program_supported(kind) {
        Ok(yes) => yes,
        Err(e) => {
            tracing::debug!("probing {kind:?} programs: {e}");
            false
        }
    };
    let functions = SOCKET_FUNCTIONS
        .iter()
        .filter(|f| f.required)
        .all(|f| has_function(btf, f.name));
    let syscalls = tracefs.is_some_and(|t| {
        SYSCALLS
            .iter()
            .map(|s| format!("sys_exit_{s}"))
            .chain(["sys_enter_close".to_string()])
            .all(|name| t.join("events/syscalls").join(name).is_dir())
    });
    // The perf PMU that attaches kprobes by function name (CONFIG_KPROBE_EVENTS).
    let kprobe_pmu = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    Offer {
        sock_tracepoints: features.sock_length_tracepoints,
        fentry: functions && loads(ProgramType::Tracing),
        kprobes: functions && kprobe_pmu && loads(ProgramType::KProbe),
        syscalls: syscalls && loads(ProgramType::TracePoint),
        // MONGOWATCH_BOUNDED_LOOP=1 loads the variants for kernels without bpf_loop on one
        // that has it, so that they are verified and run where the tests run.
        bpf_loop: features.bpf_loop
            && std::env::var_os("MONGOWATCH_BOUNDED_LOOP").is_none_or(|v| v != "1"),
        inet6: SOCKET_FUNCTIONS
            .iter()
            .filter(|f| !f.required)
            .all(|f| has_function(btf, f.name)),
    }
}

/// The program name of this kernel's variant: `_bounded` where `bpf_loop` is missing.
fn variant(name: &str, bpf_loop: bool) -> String {
    if bpf_loop {
        name.to_string()
    } else {
        format!("{name}_bounded")
    }
}

/// Loads and attaches the programs of `path`. On failure what was attached is detached again,
/// so another rung can be tried.
pub fn attach(ebpf: &mut Ebpf, path: CapturePath, btf: &Btf, offer: &Offer) -> Result<()> {
    let mut loaded = Vec::new();
    let result = attach_programs(ebpf, path, btf, offer, &mut loaded);
    if result.is_err() {
        for name in loaded {
            if let Some(program) = ebpf.program_mut(&name) {
                let _ = unload(program);
            }
        }
    }
    result
}

fn unload(program: &mut aya::programs::Program) -> Result<(), aya::programs::ProgramError> {
    use aya::programs::Program;
    match program {
        Program::BtfTracePoint(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        _ => Ok(()),
    }
}

fn attach_programs(
    ebpf: &mut Ebpf,
    path: CapturePath,
    btf: &Btf,
    offer: &Offer,
    loaded: &mut Vec<String>,
) -> Result<()> {
    fn program<'a>(
        ebpf: &'a mut Ebpf,
        loaded: &mut Vec<String>,
        name: &str,
    ) -> Result<&'a mut aya::programs::Program> {
        loaded.push(name.to_string());
        ebpf.program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))
    }
    match path {
        CapturePath::SockTracepoints => {
            for name in ["sock_send_length", "sock_recv_length"] {
                let p: &mut BtfTracePoint = program(ebpf, loaded, name)?.try_into()?;
                p.load(name, btf)
                    .with_context(|| format!("the kernel refused program {name}"))?;
                p.attach()
                    .with_context(|| format!("attaching {name} to tracepoint {name}"))?;
            }
        }
        CapturePath::Fentry => {
            for f in &SOCKET_FUNCTIONS {
                if !f.required && !offer.inet6 {
                    continue;
                }
                let name = variant(f.fexit, offer.bpf_loop);
                let p: &mut FExit = program(ebpf, loaded, &name)?.try_into()?;
                p.load(f.name, btf)
                    .with_context(|| format!("the kernel refused program {name}"))?;
                p.attach()
                    .with_context(|| format!("attaching {name} to {}", f.name))?;
            }
        }
        CapturePath::Kprobes => {
            for (entry, exit, receives) in [
                ("kprobe_sendmsg", "kretprobe_sendmsg", false),
                ("kprobe_recvmsg", "kretprobe_recvmsg", true),
            ] {
                for name in [entry.to_string(), variant(exit, offer.bpf_loop)] {
                    let p: &mut KProbe = program(ebpf, loaded, &name)?.try_into()?;
                    p.load()
                        .with_context(|| format!("the kernel refused program {name}"))?;
                    for f in SOCKET_FUNCTIONS.iter().filter(|f| f.receives == receives) {
                        if !f.required && !offer.inet6 {
                            continue;
                        }
                        p.attach(f.name, 0)
                            .with_context(|| format!("attaching {name} to {}", f.name))?;
                    }
                }
            }
        }
        CapturePath::Syscalls => {
            for syscall in SYSCALLS {
                let tracepoint = format!("sys_exit_{syscall}");
                let name = variant(&tracepoint, offer.bpf_loop);
                let p: &mut TracePoint = program(ebpf, loaded, &name)?.try_into()?;
                p.load()
                    .with_context(|| format!("the kernel refused program {name}"))?;
                p.attach("syscalls", &tracepoint)
                    .with_context(|| format!("attaching {name} to syscalls/{tracepoint}"))?;
            }
            let p: &mut TracePoint = program(ebpf, loaded, "sys_enter_close")?.try_into()?;
            p.load()
                .context("the kernel refused program sys_enter_close")?;
            p.attach("syscalls", "sys_enter_close")
                .context("attaching sys_enter_close")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for path in CapturePath::ALL {
            assert_eq!(path.name().parse::<CapturePath>(), Ok(path));
        }
        let err = "ebpf".parse::<CapturePath>().unwrap_err();
        assert_eq!(
            err,
            "unknown capture path `ebpf` (one of: sock-tracepoints, fentry, kprobes, syscalls)"
        );
    }

    /// This machine's kind (6.18 without kprobes or fentry), Debian 12's 6.1 (everything but
    /// the socket tracepoints) and a kernel with nothing.
    #[test]
    fn the_best_offered_rung_comes_first_and_a_forced_one_must_be_offered() {
        let host = Offer {
            sock_tracepoints: true,
            syscalls: true,
            bpf_loop: true,
            ..Offer::default()
        };
        assert_eq!(
            host.candidates(None).unwrap(),
            vec![CapturePath::SockTracepoints, CapturePath::Syscalls]
        );
        assert_eq!(
            host.candidates(Some(CapturePath::Syscalls)).unwrap(),
            vec![CapturePath::Syscalls]
        );
        assert_eq!(
            host.candidates(Some(CapturePath::Kprobes))
                .unwrap_err()
                .to_string(),
            "this kernel does not offer the capture path `kprobes` (it offers: \
             sock-tracepoints, syscalls)"
        );
        let debian_6_1 = Offer {
            sock_tracepoints: false,
            fentry: true,
            kprobes: true,
            syscalls: true,
            bpf_loop: true,
            inet6: true,
        };
        assert_eq!(debian_6_1.candidates(None).unwrap()[0], CapturePath::Fentry);
        let nothing = Offer::default();
        assert!(nothing
            .candidates(None)
            .unwrap_err()
            .to_string()
            .contains("offers no capture path"));
    }

    #[test]
    fn bounded_variants_are_named_after_the_program() {
        assert_eq!(variant("sys_exit_read", true), "sys_exit_read");
        assert_eq!(variant("sys_exit_read", false), "sys_exit_read_bounded");
    }
}
