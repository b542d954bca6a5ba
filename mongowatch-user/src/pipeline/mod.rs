//! The daemon. It owns the loop and drives the layers in the order the data flows:
//! capture (ring buffer events, the watched set) -> stream (the connection table, which frames,
//! decodes and pairs each connection's bytes through the wire layer) -> ops -> queue -> sink
//! ([`audit::Auditor`]), or, with `--messages`, one line per wire message. Each layer returns
//! what it made to this module; none calls the next.

pub mod audit;
mod origin;
pub mod outputs;
mod pods;
mod select;
mod stats;

use std::{
    collections::HashSet,
    io::{self, BufWriter, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
pub use stats::{CaptureStats, MessageStats, Stats};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracing::{info, warn};

use self::audit::Auditor;
use crate::{
    capture::{
        clock::Clock,
        events::{self, Event},
        ladder::CapturePath,
        probes::{KernelCounters, Probes},
        processes::Processes,
        procfs,
        ring_fill::RingFill,
        select::Selection,
        tls::{Reach, TlsHooks},
    },
    config::AuditConfig,
    ops::Input,
    sink::{messages, open_output, OutputSpec},
    stream::{ConnConfig, Connections, TableEvent},
};

/// What the daemon writes.
pub enum Mode {
    /// Audit records (the default). Boxed: the configuration is large.
    Audit(Box<AuditConfig>),
    /// `--messages`: one line per wire message.
    Messages {
        output: OutputSpec,
        with_bytes: bool,
    },
}

pub struct Options {
    pub pids: Vec<u32>,
    /// Server ports that mark a TCP connection as MongoDB at once.
    pub ports: Vec<u16>,
    pub mode: Mode,
    /// Write [`Stats`] as one JSON line to stderr this often.
    pub stats_interval: Option<Duration>,
    /// Bytes the connections' stream buffers may hold together.
    pub memory_budget: usize,
    /// Bytes of the kernel's ring buffer (a power of two).
    pub ring_size: u32,
    /// Who else hears how the daemon is doing (the `--listen` listener).
    pub hooks: Hooks,
    /// Processes watched besides `pids` (`--all`, `--comm`, `--cgroup`, ...).
    pub selection: Selection,
    /// Use this capture path rather than the best one the kernel offers.
    pub capture_path: Option<CapturePath>,
}

/// Callbacks for those who report on the daemon (health, metrics); the pipeline knows
/// nothing of them.
#[derive(Default)]
pub struct Hooks {
    /// `true` once the probes are attached, `false` when they are detached at the end.
    pub attached: Option<Box<dyn Fn(bool) + Send>>,
    /// Every layer's counters, at most once a second, from the loop's tick: a call that stops
    /// coming means the loop is stuck.
    pub tick: Option<StatsTap>,
    /// Every audit record, before any filter (audit mode).
    pub record: Option<audit::RecordTap>,
}

/// Called with every layer's counters.
pub type StatsTap = Box<dyn FnMut(&Stats) + Send>;

/// How often [`Hooks::tick`] is called.
const HOOK_TICK: Duration = Duration::from_secs(1);

/// Why the loop ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Every watched process exited.
    ProcessesExited,
    /// SIGINT or SIGTERM.
    Signal(&'static str),
    /// The output could not be written any more (closed pipe, full disk, ...).
    OutputFailed(String),
}

pub struct Report {
    pub stop: Stop,
    pub stats: Stats,
}

/// Ring buffer records, and payload bytes, handled in one turn of the loop before timers and
/// signals get theirs: under a flood the drain never ends by itself.
const DRAIN_RECORDS: usize = 4096;
const DRAIN_BYTES: usize = 4 << 20;
/// How long the last drain after a stop may take: a flood must not hold SIGTERM up.
const FINAL_DRAIN: Duration = Duration::from_secs(1);

/// Lowers the calling thread's nice value by `boost` (at most to -20); threads it starts later
/// inherit it. A daemon that cannot (no CAP_SYS_NICE) says so and runs as it is.
pub fn raise_priority(boost: u8) {
    if boost == 0 {
        return;
    }
    // SAFETY: getpriority/setpriority on the calling thread (who = 0); errno is cleared first
    // because -1 is also a valid nice value.
    let (now, errno) = unsafe {
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, 0);
        (now, *libc::__errno_location())
    };
    let target = if errno == 0 {
        now - i32::from(boost)
    } else {
        -i32::from(boost)
    }
    .max(-20);
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) } != 0 {
        warn!(
            "cannot lower the nice value to {target} (--priority-boost; CAP_SYS_NICE is \
             needed): {}; under full load the ring may fill sooner",
            std::io::Error::last_os_error()
        );
    } else {
        tracing::debug!(nice = target, "priority raised");
    }
}

/// Loads the probes, watches `opts.pids` and runs until they exit, a signal, or a dead output.
pub fn run(mut opts: Options) -> Result<Report> {
    let mut outlet = Outlet::open(opts.mode)?;
    if let (OutletKind::Audit(auditor), Some(tap)) = (&mut outlet.kind, opts.hooks.record.take()) {
        auditor.set_observer(tap);
    }
    let (mut probes, ring) = Probes::load(
        &opts.ports,
        &opts.selection.kernel(),
        opts.capture_path,
        opts.ring_size,
    )?;
    // The daemon's own sockets (an API client, an OTLP exporter) are never audited.
    probes.exclude(std::process::id(), true);
    let ring_fill = RingFill::new(std::os::fd::AsFd::as_fd(&ring), probes.ring_size())
        .map_err(|e| warn!("the ring buffer's fill cannot be read (not reported): {e}"))
        .ok();
    let mut processes = Processes::new();
    let mut watch = |pid: u32, processes: &mut Processes| -> Result<bool> {
        let new = processes.add(pid);
        if new {
            probes.watch(pid)?;
        }
        Ok(new)
    };
    // The selection's processes that run already; those that start later are caught by the
    // kernel at their first socket call, or on their exec.
    let roots: Vec<u32> = opts
        .pids
        .iter()
        .copied()
        .chain(opts.selection.scan())
        .collect();
    for pid in &roots {
        watch(*pid, &mut processes)?;
    }
    // The kernel follows the forks of watched processes once their bits are set; the
    // descendants that already run are found in /proc. Walk again until nothing new turns up,
    // so a child forked by a descendant before its parent's bit was set is not missed
    // (bounded: a process that keeps forking has its new children followed by the kernel).
    for _ in 0..4 {
        let mut found = false;
        for pid in procfs::descendants(&roots) {
            found |= watch(pid, &mut processes)?;
        }
        if !found {
            break;
        }
    }
    // The TLS libraries they map are hooked before "watching" is said: connections opened
    // from then on are read from their handshake. Node-wide, from a process's first connection
    // on instead (see `Pipeline::tls_eager`).
    let mut tls = TlsHooks::default();
    let node_wide = opts.selection.is_node_wide();
    let reach: Vec<(u32, Reach)> = processes
        .pids()
        .filter(|_| !node_wide)
        .filter_map(|pid| Some((pid, tls.scan(probes.ebpf_mut(), pid)?)))
        .collect();
    // Ready before "watching" is said: whoever waits for the line may probe /readyz at once.
    if let Some(attached) = &opts.hooks.attached {
        attached(true);
    }
    info!(pids = ?opts.pids, processes = processes.len(), "watching");
    let probes_path = probes.capture_path().name();
    let ring_size = probes.ring_size();
    let node: Option<Arc<str>> = origin::node_name().map(Arc::from);
    let mut conns = Connections::new(
        Clock::now(),
        ConnConfig {
            memory_budget: opts.memory_budget,
            ..ConnConfig::default()
        },
        opts.ports,
    );
    // A connection whose open event was lost still names the node.
    conns.set_default_origin(Arc::new(crate::record::Origin {
        node: node.clone(),
        ..Default::default()
    }));
    let mut pipeline = Pipeline {
        probes,
        watched: processes.pids().collect(),
        watched_version: processes.version(),
        processes,
        conns,
        outlet,
        last_counters: KernelCounters::default(),
        capture: CaptureStats {
            ring_size_bytes: u64::from(ring_size),
            path: probes_path,
            ..CaptureStats::default()
        },
        hooks: opts.hooks,
        last_hook_tick: None,
        tls,
        tls_first_conn: HashSet::new(),
        tls_mapped: HashSet::new(),
        ticks: 0,
        node_wide,
        pods: start_pods(&opts.selection, node.as_deref())?,
        node,
        selection: opts.selection,
        excluded: Processes::new(),
        ring_fill,
    };
    for (pid, reach) in reach {
        pipeline.tell_tls(pid, reach);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    runtime.block_on(pipeline.run(ring, opts.stats_interval))
}

/// Starts the pod metadata client when running in a cluster; `--k8s-*` selectors need one.
fn start_pods(selection: &Selection, node: Option<&str>) -> Result<Option<pods::Pods>> {
    let config = node.and_then(crate::k8s::client::ApiConfig::in_cluster);
    let Some(config) = config else {
        if selection.uses_pods() {
            anyhow::bail!(
                "--k8s-namespace, --k8s-pod and --k8s-label need the Kubernetes API: run \
                 mongowatch in a pod (KUBERNETES_SERVICE_HOST is not set here)"
            );
        }
        return Ok(None);
    };
    let (tx, rx) = std::sync::mpsc::channel();
    crate::k8s::client::spawn(config, tx).context("starting the pod metadata client")?;
    Ok(Some(pods::Pods::new(rx)))
}

struct Pipeline {
    probes: Probes,
    processes: Processes,
    conns: Connections,
    outlet: Outlet,
    /// The pids in the kernel's watched bitmap, and the `processes` version they mirror.
    watched: HashSet<u32>,
    watched_version: u64,
    last_counters: KernelCounters,
    capture: CaptureStats,
    hooks: Hooks,
    last_hook_tick: Option<Instant>,
    /// The TLS libraries of the watched processes, hooked as they turn up.
    tls: TlsHooks,
    /// Processes whose first connection has been seen (and their TLS libraries looked for).
    tls_first_conn: HashSet<u32>,
    /// Selected processes that mapped a new executable file in this batch (`ProcMapped`).
    tls_mapped: HashSet<u32>,
    ticks: u64,
    selection: Selection,
    /// Runs until stopped, not until its processes exit: new ones may match.
    node_wide: bool,
    /// Processes the kernel's own selection caught that the full selection excludes.
    excluded: Processes,
    /// `Node` of every record.
    node: Option<Arc<str>>,
    /// The ring's fill level: now, and its high-water mark.
    ring_fill: Option<RingFill>,
    /// Pod metadata from the Kubernetes API (in a cluster, or for `--k8s-*`).
    pods: Option<pods::Pods>,
}

/// Ticks between two scans of every watched process for TLS libraries mapped late (Python
/// maps libssl when it imports `ssl`).
const TLS_RESCAN_TICKS: u64 = 5;

impl Pipeline {
    async fn run(
        mut self,
        ring: RingBuf<MapData>,
        stats_interval: Option<Duration>,
    ) -> Result<Report> {
        self.sync_watched();
        // The AsyncFd owns the ring buffer, and with it the fd it polls, for the whole loop.
        #[allow(deprecated)]
        let mut ring = AsyncFd::new(ring).context("polling the ring buffer")?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut stats_tick = tokio::time::interval(stats_interval.unwrap_or(Duration::MAX));
        stats_tick.tick().await;
        // The kernel wakes us only once 256 KiB are waiting (or for rare lifecycle events);
        // otherwise the ring is drained on a timer: every 10 ms while events flow, at once
        // while a backlog is left, and only on the 200 ms tick once they stop, so an idle
        // daemon does not keep waking the machine.
        let mut drain = Drain::Idle;
        let stop = loop {
            let poll = tokio::time::sleep(match drain {
                Drain::Backlog => Duration::ZERO,
                _ => Duration::from_millis(10),
            });
            // Biased: a signal or the tick is never starved by a ring that is always ready.
            tokio::select! {
                biased;
                _ = sigint.recv() => { info!("interrupted (SIGINT)"); break Stop::Signal("SIGINT"); }
                _ = sigterm.recv() => { info!("terminated (SIGTERM)"); break Stop::Signal("SIGTERM"); }
                _ = tick.tick() => {
                    let now = self.drain(ring.get_mut());
                    drain = drain.max(now);
                    self.tick(now != Drain::Backlog);
                    if self.processes.is_empty() && !self.node_wide {
                        info!("every watched process has exited");
                        break Stop::ProcessesExited;
                    }
                }
                _ = stats_tick.tick(), if stats_interval.is_some() => {
                    eprintln!("{}", self.stats().to_json_line());
                }
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("waiting for the ring buffer")?;
                    drain = drain.max(self.drain(guard.get_inner_mut()));
                    guard.clear_ready();
                    self.outlet.flush();
                }
                _ = poll, if drain != Drain::Idle => {
                    drain = self.drain(ring.get_mut());
                    self.outlet.flush();
                }
            }
            if drain == Drain::Backlog {
                // Lets the runtime poll its drivers, which is how signals and timers arrive:
                // a task that is always ready would otherwise keep them waiting.
                tokio::task::yield_now().await;
            }
            if let Some(failure) = self.outlet.failure() {
                break Stop::OutputFailed(failure.to_string());
            }
        };
        // What the kernel wrote before we stopped is still processed, within a bound.
        let deadline = Instant::now() + FINAL_DRAIN;
        while self.drain(ring.get_mut()) == Drain::Backlog {
            if Instant::now() >= deadline {
                // Never silent: what is left in the ring is counted as lost.
                let left = self.ring_fill.as_ref().map_or(0, RingFill::pending_bytes);
                self.capture.ring_bytes_left_at_exit = left;
                warn!(
                    bytes = left,
                    "events still arriving after {FINAL_DRAIN:?} of draining; stopping anyway \
                     (the events left in the ring are lost)"
                );
                break;
            }
        }
        let now = self.conns.clock().now_epoch_ns();
        let Self { conns, outlet, .. } = &mut self;
        conns.shutdown(now, &mut |ev| outlet.deliver(ev));
        outlet.shutdown(now);
        let kernel = self.probes.counters();
        self.report_loss(&kernel);
        let stats = self.stats();
        info!(
            messages = stats.stream.messages,
            connections = stats.stream.connections,
            gaps = stats.stream.gaps,
            events_lost = kernel.ring_full_events,
            "detaching"
        );
        if let Some(tick) = self.hooks.tick.as_mut() {
            tick(&stats);
        }
        if let Some(attached) = &self.hooks.attached {
            attached(false);
        }
        // Dropping the probes (with self) detaches the programs.
        Ok(Report { stop, stats })
    }

    /// Handles a batch of the ring's records (at most `DRAIN_RECORDS`, `DRAIN_BYTES`).
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Drain {
        if let Some(fill) = &self.ring_fill {
            let pending = fill.pending_bytes();
            self.capture.ring_high_water_bytes = self.capture.ring_high_water_bytes.max(pending);
        }
        let (mut records, mut bytes) = (0, 0);
        while records < DRAIN_RECORDS && bytes < DRAIN_BYTES {
            let Some(item) = ring.next() else { break };
            records += 1;
            bytes += item.len();
            match events::parse(&item) {
                Ok(event) => self.handle(event),
                Err(e) => {
                    self.capture.malformed_records += 1;
                    warn!("malformed ring buffer record dropped: {e}");
                }
            }
        }
        self.capture.ring_records += records as u64;
        self.sync_watched();
        for pid in std::mem::take(&mut self.tls_mapped) {
            if self.processes.contains(pid) {
                self.scan_tls(pid);
            } else {
                // Selected by the kernel, not known here until its first connection (which
                // scans it again, then keeping its verdict).
                self.tls.hook(self.probes.ebpf_mut(), pid);
            }
        }
        if records == 0 {
            Drain::Idle
        } else if records == DRAIN_RECORDS || bytes >= DRAIN_BYTES {
            Drain::Backlog
        } else {
            Drain::Flowing
        }
    }

    fn handle(&mut self, event: Event<'_>) {
        if self.node_wide && !self.selected(&event) {
            return;
        }
        if let Event::ProcMapped { pid, .. } = event {
            // Scanned once the batch is handled: a process maps its libraries in bursts.
            self.tls_mapped.insert(pid);
            return;
        }
        if let Event::ConnOpen {
            header, cgroup_id, ..
        } = &event
        {
            self.note_origin(header.tgid, *cgroup_id);
            // Its TLS library was hooked when it mapped it; its first connection is when
            // this process gets a verdict, and a last chance to hook it when the mapping was
            // not reported (a process the kernel selected before mongowatch started).
            if self.tls_first_conn.insert(header.tgid) {
                self.scan_tls(header.tgid);
            }
        }
        match event {
            Event::ProcFork {
                child,
                child_start_ns,
                ..
            } => {
                // The start time from the kernel: read later from /proc, the pid could already
                // belong to another process.
                let start =
                    procfs::boot_ns_to_ticks(child_start_ns).or_else(|| procfs::start_time(child));
                if self.processes.insert(child, procfs::comm(child), start) {
                    self.capture.processes_followed += 1;
                }
            }
            // The kernel reports the exit of a whole thread group, and has cleared its bit.
            Event::ProcExit { header, pid, .. } => {
                let ts = self.conns.clock().epoch_ns(header.ts_ns);
                self.process_exited(pid, ts);
            }
            Event::ConnOpen { header, .. } if !self.processes.contains(header.tgid) => {
                // Known already, unless the fork event that made it was lost.
                self.processes.add(header.tgid);
                let Self { conns, outlet, .. } = self;
                conns.handle(event, &mut |ev| outlet.deliver(ev));
            }
            event => {
                let Self { conns, outlet, .. } = self;
                conns.handle(event, &mut |ev| outlet.deliver(ev));
            }
        }
    }

    /// A watched process is gone: its connections are closed, and the ops layer is told.
    fn process_exited(&mut self, pid: u32, ts_ns: u64) {
        if !self.processes.remove(pid) {
            return;
        }
        self.capture.processes_exited += 1;
        let Self { conns, outlet, .. } = self;
        conns.close_process(pid, ts_ns, &mut |ev| outlet.deliver(ev));
        outlet.input(Input::ProcessExited { pid, ts_ns });
    }

    /// Periodic work: processes that are gone without an exit event (missed, or their pid
    /// reused), idle connections, and the clock for the ops layer's timeouts.
    ///
    /// A process is only taken for gone once the ring is drained (`ring_drained`): its last
    /// bytes (a multi-MB reply, decoded slowly) may still wait there behind its exit.
    fn tick(&mut self, ring_drained: bool) {
        let now = self.conns.clock().now_epoch_ns();
        if ring_drained {
            for pid in self.processes.gone() {
                self.process_exited(pid, now);
            }
        }
        self.forget_excluded();
        self.pod_updates();
        let Self { conns, outlet, .. } = self;
        conns.expire(now, &mut |ev| outlet.deliver(ev));
        outlet.input(Input::Tick { now_ns: now });
        self.sync_watched();
        self.ticks += 1;
        if self.ticks.is_multiple_of(TLS_RESCAN_TICKS) {
            let pids: Vec<u32> = (self.watched.iter().copied())
                .filter(|&pid| self.tls_eager(pid))
                .collect();
            for pid in pids {
                self.scan_tls(pid);
            }
            // Processes hooked before their first connection that never made one.
            for pid in self.tls.hooked_pids() {
                if !self.watched.contains(&pid) && !procfs::alive(pid) {
                    self.tls.forget(self.probes.ebpf_mut(), pid);
                }
            }
        }
        let counters = self.probes.counters();
        self.report_loss(&counters);
        self.outlet.flush();
        let due = self.last_hook_tick.is_none_or(|t| t.elapsed() >= HOOK_TICK);
        if self.hooks.tick.is_some() && due {
            self.last_hook_tick = Some(Instant::now());
            let stats = self.stats();
            if let Some(tick) = self.hooks.tick.as_mut() {
                tick(&stats);
            }
        }
    }

    /// The kernel's watched set follows `processes`: children the kernel reported are set
    /// again (repairing a bit a simultaneous fork may have lost), processes that are gone leave.
    fn sync_watched(&mut self) {
        if self.processes.version() == self.watched_version {
            return;
        }
        self.watched_version = self.processes.version();
        let alive: HashSet<u32> = self.processes.pids().collect();
        for pid in self.watched.difference(&alive) {
            self.probes.unwatch(*pid);
            self.tls.forget(self.probes.ebpf_mut(), *pid);
            self.tls_first_conn.remove(pid);
        }
        let new: Vec<u32> = alive.difference(&self.watched).copied().collect();
        for pid in &new {
            if let Err(e) = self.probes.watch(*pid) {
                warn!("{e:#}");
            }
        }
        self.watched = alive;
        let eager: Vec<u32> = new.into_iter().filter(|&pid| self.tls_eager(pid)).collect();
        for pid in eager {
            self.scan_tls(pid);
        }
    }

    /// Whether `pid`'s TLS libraries are looked for before it connects: when it is selected,
    /// and on every rescan. Node-wide, only once it has connected (its first connection is
    /// looked at anyway): the selection can be every process of the node, most of which never
    /// talk to MongoDB, and a look reads the process's maps and executables. Looking at every
    /// process made `--all` slow to start, and busy while idle.
    fn tls_eager(&self, pid: u32) -> bool {
        !self.node_wide || self.tls_first_conn.contains(&pid)
    }

    /// Hooks the TLS libraries `pid` maps that are not hooked yet, and tells the connection
    /// table whether its TLS connections can be read.
    fn scan_tls(&mut self, pid: u32) {
        if let Some(reach) = self.tls.scan(self.probes.ebpf_mut(), pid) {
            self.tell_tls(pid, reach);
        }
    }

    fn tell_tls(&mut self, pid: u32, reach: Reach) {
        self.conns.set_tls_unreadable(
            pid,
            match reach {
                Reach::Hooked => None,
                Reach::Not(why) => Some(why),
            },
        );
    }

    /// Loss is never silent: every new ring-full drop is logged with its size.
    fn report_loss(&mut self, now: &KernelCounters) {
        let lost = now.ring_full_events - self.last_counters.ring_full_events;
        if lost > 0 {
            warn!(
                events = lost,
                bytes = now.ring_full_bytes - self.last_counters.ring_full_bytes,
                "the ring buffer was full: events lost (the affected messages are reported as gaps)"
            );
        }
        let failed = now.read_failures - self.last_counters.read_failures;
        if failed > 0 {
            warn!(
                reads = failed,
                "copies from user memory failed (reported as gaps)"
            );
        }
        let lifecycle = now.lifecycle_lost - self.last_counters.lifecycle_lost;
        if lifecycle > 0 {
            warn!(
                events = lifecycle,
                "the ring buffer was full: connection closes, forks or exits lost (idle \
                 connections expire; processes are checked in /proc)"
            );
        }
        self.last_counters = *now;
    }

    /// Every layer's counters, now.
    fn stats(&self) -> Stats {
        let mut capture = self.capture.clone();
        capture.watched_processes = self.processes.len() as u64;
        if let Some(fill) = &self.ring_fill {
            capture.ring_pending_bytes = fill.pending_bytes();
        }
        Stats {
            kernel: self.probes.counters(),
            kernel_maps: self.probes.maps(),
            capture,
            stream: self.conns.stats(),
            tls: self.tls.stats(),
            wire: self.conns.wire_stats(),
            audit: match &self.outlet.kind {
                OutletKind::Audit(a) => Some(a.stats()),
                OutletKind::Messages { .. } => None,
            },
            messages: match &self.outlet.kind {
                OutletKind::Audit(_) => None,
                OutletKind::Messages { stats, .. } => Some(stats.clone()),
            },
            outputs: match &self.outlet.kind {
                OutletKind::Audit(a) => a.output_stats(),
                OutletKind::Messages { .. } => Default::default(),
            },
        }
    }
}

/// How the last drain went; ordered by how soon the ring should be read again.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Drain {
    /// Nothing was waiting.
    Idle,
    /// Events came, fewer than a batch.
    Flowing,
    /// A whole batch came: more are probably waiting.
    Backlog,
}

/// Where the table's output goes, and whether that still works.
struct Outlet {
    kind: OutletKind,
    /// The first write failure, said once; the loop stops on it.
    failed: Option<String>,
}

enum OutletKind {
    Audit(Box<Auditor>),
    Messages {
        out: Box<dyn Write + Send>,
        with_bytes: bool,
        /// One line is formatted here, then written whole (a rotated file never splits it).
        line: Vec<u8>,
        stats: MessageStats,
    },
}

impl Outlet {
    fn open(mode: Mode) -> Result<Self> {
        let kind = match mode {
            Mode::Audit(config) => OutletKind::Audit(Box::new(Auditor::new(&config)?)),
            Mode::Messages { output, with_bytes } => {
                let opened = open_output(&output)?;
                // stdout gets a buffer (flushed after every drain); a file takes whole lines.
                let out: Box<dyn Write + Send> = if output.path.is_none() {
                    Box::new(BufWriter::with_capacity(1 << 16, io::stdout()))
                } else {
                    opened.writer
                };
                OutletKind::Messages {
                    out,
                    with_bytes,
                    line: Vec::with_capacity(1024),
                    stats: MessageStats::default(),
                }
            }
        };
        Ok(Self { kind, failed: None })
    }

    fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Notes a write failure; only the first is said (the loop then stops).
    fn fail(&mut self, what: String) {
        if self.failed.is_none() {
            tracing::error!("{what}; stopping");
            self.failed = Some(what);
        }
    }

    fn deliver(&mut self, ev: TableEvent<'_>) {
        match (ev, &mut self.kind) {
            (
                TableEvent::Message {
                    conn,
                    dir,
                    frame,
                    message,
                },
                OutletKind::Messages {
                    out,
                    with_bytes,
                    line,
                    stats,
                },
            ) => {
                if self.failed.is_some() {
                    stats.unwritten += 1;
                    return;
                }
                line.clear();
                messages::write_message(
                    line,
                    conn,
                    dir,
                    &frame.bytes,
                    frame.first_ts_ns,
                    message,
                    *with_bytes,
                )
                .expect("writing to a Vec cannot fail");
                match out.write_all(line) {
                    Ok(()) => stats.written += 1,
                    Err(e) => {
                        stats.unwritten += 1;
                        self.fail(format!("writing message lines: {e}"));
                    }
                }
            }
            (TableEvent::Exchange { conn, exchange }, OutletKind::Audit(_)) => {
                self.input(Input::Exchange {
                    conn: conn.clone(),
                    exchange,
                })
            }
            (TableEvent::Closed { conn, ts_ns }, OutletKind::Audit(_)) => {
                self.input(Input::ConnClosed { conn, ts_ns })
            }
            (TableEvent::Message { .. }, OutletKind::Audit(_))
            | (
                TableEvent::Exchange { .. } | TableEvent::Closed { .. },
                OutletKind::Messages { .. },
            ) => {}
        }
    }

    /// Feeds the ops layer (audit mode; forensic mode has none).
    fn input(&mut self, input: Input) {
        if let OutletKind::Audit(auditor) = &mut self.kind {
            if let Err(e) = auditor.handle(input) {
                self.audit_failed(e);
            }
        }
    }

    /// Each output said its own failure when it happened: not again here.
    fn audit_failed(&mut self, e: audit::AuditError) {
        match e {
            audit::AuditError::OutputsFailed(_) if self.failed.is_none() => {
                tracing::error!("every output has failed; stopping");
                self.failed = Some(e.to_string());
            }
            audit::AuditError::OutputsFailed(_) => {}
            e => self.fail(e.to_string()),
        }
    }

    fn flush(&mut self) {
        if let OutletKind::Messages { out, .. } = &mut self.kind {
            if let Err(e) = out.flush() {
                self.fail(format!("writing message lines: {e}"));
            }
        }
    }

    /// Writes what is still pending (open operations as `timeout`) and flushes.
    fn shutdown(&mut self, now_ns: u64) {
        match &mut self.kind {
            OutletKind::Audit(auditor) => {
                if let Err(e) = auditor.shutdown(now_ns) {
                    self.audit_failed(e);
                }
            }
            OutletKind::Messages { .. } => self.flush(),
        }
    }
}
