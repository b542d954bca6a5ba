//! Loading and attaching the kernel programs (the only module that touches the kernel).

use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
    Btf, Ebpf, EbpfLoader,
};
use mongowatch_common::{Config, Counters, MAP_COUNTERS, MAP_EVENTS, MAP_PORTS, MAP_WATCHED};

use super::btf::{kernel_offsets, VMLINUX_BTF};

/// The object built from `mongowatch-ebpf` (empty when built without the eBPF toolchain).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mongowatch-ebpf.o"));

/// The programs and the tracepoints they attach to. All are BTF tracepoints: they cost a
/// direct call, not a trip through the perf buffer of a classic tracepoint.
const PROGRAMS: &[(&str, &str)] = &[
    ("sock_send_length", "sock_send_length"),
    ("sock_recv_length", "sock_recv_length"),
    ("inet_sock_set_state", "inet_sock_set_state"),
    ("sched_process_fork", "sched_process_fork"),
    ("sched_process_exit", "sched_process_exit"),
];

/// Totals of the per-CPU counters.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct KernelCounters {
    pub ring_full_events: u64,
    pub ring_full_bytes: u64,
    pub gap_bytes: u64,
    pub read_failures: u64,
    pub classified_other: u64,
    pub data_events: u64,
}

/// Loaded and attached programs. Dropping it detaches them.
pub struct Probes {
    // Held for its links: dropping the Ebpf detaches every program.
    _ebpf: Ebpf,
    /// The kernel's bitmap of watched tgids.
    watched: Array<MapData, u64>,
    counters: PerCpuArray<MapData, Counters>,
}

/// Checks what mongowatch needs before trying to load anything, so a user gets one clear
/// sentence instead of a verifier dump.
pub fn preflight() -> Result<()> {
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this mongowatch binary was built without its eBPF programs (no eBPF toolchain at \
             build time); run `cargo xtask setup` and build again"
        );
    }
    if !has_bpf_privileges() {
        bail!(
            "mongowatch needs root, or the capabilities CAP_BPF and CAP_PERFMON (run it with sudo)"
        );
    }
    if !Path::new(VMLINUX_BTF).exists() {
        bail!(
            "this kernel exposes no BTF ({VMLINUX_BTF} is missing): mongowatch needs a kernel \
             built with CONFIG_DEBUG_INFO_BTF=y (5.8 or newer)"
        );
    }
    Ok(())
}

fn has_bpf_privileges() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    // CapEff from /proc/self/status: CAP_SYS_ADMIN (21), or CAP_BPF (39) + CAP_PERFMON (38).
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(caps) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return false;
    };
    caps & (1 << 21) != 0 || (caps & (1 << 39) != 0 && caps & (1 << 38) != 0)
}

impl Probes {
    /// Loads the programs with the running kernel's struct offsets and attaches them.
    /// Returns the probes and the ring buffer to read events from.
    pub fn load(server_ports: &[u16]) -> Result<(Self, RingBuf<MapData>)> {
        preflight()?;
        raise_memlock();
        let config = Config {
            offsets: kernel_offsets(Path::new(VMLINUX_BTF))?,
            _pad: 0,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                let hint = if e.to_string().contains("ring") {
                    " (ring buffers need Linux 5.8 or newer)"
                } else {
                    ""
                };
                anyhow::anyhow!("loading the eBPF programs failed{hint}: {e}")
            })?;
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        for (name, tracepoint) in PROGRAMS {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a BTF tracepoint"))?;
            program
                .load(tracepoint, &btf)
                .with_context(|| format!("the kernel refused program {name}"))?;
            program
                .attach()
                .with_context(|| format!("attaching {name} to tracepoint {tracepoint}"))?;
        }
        let mut ports: HashMap<_, u16, u8> =
            HashMap::try_from(ebpf.map_mut(MAP_PORTS).context("map PORTS missing")?)?;
        for port in server_ports {
            ports.insert(port, 1, 0)?;
        }
        let watched = Array::try_from(ebpf.take_map(MAP_WATCHED).context("map WATCHED missing")?)?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map(MAP_COUNTERS)
                .context("map COUNTERS missing")?,
        )?;
        let ring = RingBuf::try_from(ebpf.take_map(MAP_EVENTS).context("map EVENTS missing")?)?;
        Ok((
            Self {
                _ebpf: ebpf,
                watched,
                counters,
            },
            ring,
        ))
    }

    /// Starts copying the bytes of process `pid` (and, from now on, of its children). Also
    /// called for each child the kernel reports, which repairs a bit a simultaneous fork in the
    /// same word may have lost.
    pub fn watch(&mut self, pid: u32) -> Result<()> {
        self.set_bit(pid, true)
            .with_context(|| format!("adding pid {pid} to the watched set"))
    }

    pub fn unwatch(&mut self, pid: u32) {
        if let Err(e) = self.set_bit(pid, false) {
            tracing::warn!("removing pid {pid} from the watched set: {e}");
        }
    }

    fn set_bit(&mut self, pid: u32, on: bool) -> Result<()> {
        let (index, bit) = (pid >> 6, 1u64 << (pid & 63));
        let word = self.watched.get(&index, 0)?;
        let word = if on { word | bit } else { word & !bit };
        self.watched.set(index, word, 0)?;
        Ok(())
    }

    pub fn counters(&self) -> KernelCounters {
        let mut total = KernelCounters::default();
        if let Ok(per_cpu) = self.counters.get(&0, 0) {
            for c in per_cpu.iter() {
                total.ring_full_events += c.ring_full_events;
                total.ring_full_bytes += c.ring_full_bytes;
                total.gap_bytes += c.gap_bytes;
                total.read_failures += c.read_failures;
                total.classified_other += c.classified_other;
                total.data_events += c.data_events;
            }
        }
        total
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so a 64 MiB ring fits.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels with memcg accounting");
    }
}
