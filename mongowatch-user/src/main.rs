//! `mongowatch --pid <PID>`: audits the MongoDB operations of running processes from the
//! kernel, with no change to the application, its driver or the network.

use std::{
    collections::HashSet,
    io::{self, BufWriter, Write},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::maps::{MapData, RingBuf};
use clap::Parser;
use mongowatch::{
    capture::{
        events,
        probes::{KernelCounters, Probes},
        procfs,
        tracker::{Clock, Output, Tracker, TrackerStats},
    },
    config::AuditArgs,
    forensic,
    ops::Auditor,
    stream::ConnConfig,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracing::{info, warn};

/// Audits the MongoDB operations of running processes, from the kernel (eBPF).
///
/// Writes one audit record per application-level operation (a find and all its getMores are
/// one record). Runs as root. Exits when every watched process has exited, or on
/// SIGINT/SIGTERM, after writing every pending record.
#[derive(Parser, Debug)]
#[command(name = "mongowatch", version)]
struct Cli {
    /// A process to watch (repeat for several), with all its descendants: those already running
    /// and those it starts later.
    #[arg(long = "pid", value_name = "PID", required = true)]
    pids: Vec<u32>,

    /// Server ports that mark a TCP connection as MongoDB at once; connections to other ports
    /// (and unix sockets) are recognised from their first bytes.
    #[arg(long = "port", value_name = "PORT", default_values_t = [27017u16, 27018, 27019])]
    ports: Vec<u16>,

    /// Forensic mode: one JSON line per wire message instead of audit records.
    #[arg(long)]
    messages: bool,

    /// With --messages: add each message's wire bytes, base64, as "Bytes", for the messages
    /// decoded and shown to carry no credentials. The others (authentication steps,
    /// createUser/updateUser, messages that could not be decoded) get "Redacted" instead.
    #[arg(long, requires = "messages")]
    message_bytes: bool,

    /// Print capture statistics as JSON to stderr at exit.
    #[arg(long)]
    stats: bool,

    #[command(flatten)]
    audit: AuditArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MONGOWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mongowatch: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Where the tracker's output goes.
enum Mode {
    Audit(Box<Auditor>),
    Messages { with_bytes: bool },
}

/// Where the tracker's output is written, and whether that still works.
struct Outlet {
    mode: Mode,
    out: BufWriter<io::Stdout>,
    write_failed: bool,
}

struct Daemon {
    probes: Probes,
    tracker: Tracker,
    outlet: Outlet,
    /// The processes in the kernel's watched bitmap, and the tracker version they mirror.
    watched: HashSet<u32>,
    watched_version: u64,
    last_counters: KernelCounters,
}

fn run(cli: Cli) -> Result<()> {
    for pid in &cli.pids {
        if !procfs::alive(*pid) {
            bail!("no running process has pid {pid}");
        }
    }
    let (mode, memory_budget) = if cli.messages {
        let mode = Mode::Messages {
            with_bytes: cli.message_bytes,
        };
        (mode, cli.audit.memory_budget()?)
    } else {
        // Reads --config too; the command line wins over the file.
        let config = cli.audit.clone().resolve()?;
        (
            Mode::Audit(Box::new(Auditor::new(&config)?)),
            config.memory_budget,
        )
    };
    let (mut probes, ring) = Probes::load(&cli.ports)?;
    let conn_config = ConnConfig {
        memory_budget,
        ..ConnConfig::default()
    };
    let mut tracker = Tracker::new(Clock::now(), conn_config, cli.ports.clone());
    let mut watched = HashSet::new();
    for pid in &cli.pids {
        probes.watch(*pid)?;
        tracker.add_process(*pid);
        watched.insert(*pid);
    }
    // The kernel follows the forks of watched processes from now on; the descendants that
    // already run are found in /proc. Walk again until nothing new turns up, so a child forked
    // by a descendant between a walk and its bit being set is not missed (bounded: a process
    // that keeps forking has its new children followed by the kernel anyway).
    for _ in 0..4 {
        let found: Vec<u32> = cli
            .pids
            .iter()
            .flat_map(|pid| procfs::descendants(*pid))
            .filter(|pid| !watched.contains(pid))
            .collect();
        if found.is_empty() {
            break;
        }
        for pid in found {
            probes.watch(pid)?;
            tracker.add_process(pid);
            watched.insert(pid);
        }
    }
    info!(pids = ?cli.pids, processes = watched.len(), "watching");
    let daemon = Daemon {
        probes,
        watched_version: tracker.processes_version(),
        tracker,
        outlet: Outlet {
            mode,
            out: BufWriter::with_capacity(1 << 16, io::stdout()),
            write_failed: false,
        },
        watched,
        last_counters: KernelCounters::default(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let (tracker_stats, kernel) = runtime.block_on(daemon.run(ring))?;
    if cli.stats {
        let summary = serde_json::json!({ "capture": tracker_stats, "kernel": kernel });
        eprintln!("{summary}");
    }
    Ok(())
}

impl Daemon {
    async fn run(mut self, ring: RingBuf<MapData>) -> Result<(TrackerStats, KernelCounters)> {
        // The AsyncFd owns the ring buffer, and with it the fd it polls, for the whole loop.
        #[allow(deprecated)]
        let mut ring = AsyncFd::new(ring).context("polling the ring buffer")?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        // The kernel wakes us only once 256 KiB are waiting (or for rare lifecycle events);
        // otherwise the ring is drained on a timer: every 10 ms while events flow, and only on
        // the 200 ms tick once they stop, so an idle daemon does not keep waking the machine.
        let mut active = false;
        loop {
            let poll = tokio::time::sleep(Duration::from_millis(10));
            tokio::select! {
                _ = poll, if active => {
                    active = self.drain(ring.get_mut()) > 0;
                    self.flush();
                }
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("waiting for the ring buffer")?;
                    active |= self.drain(guard.get_inner_mut()) > 0;
                    guard.clear_ready();
                    self.flush();
                }
                _ = tick.tick() => {
                    active |= self.drain(ring.get_mut()) > 0;
                    self.tick();
                    if !self.tracker.has_processes() {
                        info!("every watched process has exited");
                        break;
                    }
                }
                _ = sigint.recv() => { info!("interrupted (SIGINT)"); break; }
                _ = sigterm.recv() => { info!("terminated (SIGTERM)"); break; }
            }
            if self.outlet.write_failed {
                warn!("the output cannot be written any more; stopping");
                break;
            }
        }
        // Whatever the kernel wrote before we stopped is still processed.
        self.drain(ring.get_mut());
        let now = self.tracker.clock().now_epoch_ns();
        self.tracker.shutdown(now, &mut |o| self.outlet.deliver(o));
        if let Mode::Audit(auditor) = &mut self.outlet.mode {
            if let Err(e) = auditor.shutdown(now) {
                warn!("writing the last records: {e}");
            }
        }
        self.flush();
        let kernel = self.probes.counters();
        self.report_loss(&kernel);
        let stats = self.tracker.stats().clone();
        info!(
            messages = stats.messages,
            connections = stats.connections,
            gaps = stats.gaps,
            events_lost = kernel.ring_full_events,
            "detaching"
        );
        // Dropping the probes detaches the programs.
        Ok((stats, kernel))
    }

    /// Handles every record in the ring; returns how many there were.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> usize {
        let mut records = 0;
        while let Some(item) = ring.next() {
            records += 1;
            match events::parse(&item) {
                Ok(event) => self.tracker.handle(event, &mut |o| self.outlet.deliver(o)),
                Err(e) => warn!("malformed ring buffer record dropped: {e}"),
            }
        }
        self.sync_watched();
        records
    }

    fn tick(&mut self) {
        let now = self.tracker.clock().now_epoch_ns();
        self.tracker.tick(now, &mut |o| self.outlet.deliver(o));
        self.sync_watched();
        let counters = self.probes.counters();
        self.report_loss(&counters);
        self.flush();
    }

    /// The kernel's watched set follows the tracker's: children the kernel reported are set
    /// again (repairing a bit a simultaneous fork may have lost), processes that are gone leave.
    fn sync_watched(&mut self) {
        if self.tracker.processes_version() == self.watched_version {
            return;
        }
        self.watched_version = self.tracker.processes_version();
        let alive: HashSet<u32> = self.tracker.processes().collect();
        for pid in self.watched.difference(&alive) {
            self.probes.unwatch(*pid);
        }
        for pid in alive.difference(&self.watched) {
            if let Err(e) = self.probes.watch(*pid) {
                warn!("{e:#}");
            }
        }
        self.watched = alive;
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
        self.last_counters = *now;
    }

    fn flush(&mut self) {
        if self.outlet.out.flush().is_err() {
            self.outlet.write_failed = true;
        }
    }
}

impl Outlet {
    fn deliver(&mut self, output: Output<'_>) {
        match (output, &mut self.mode) {
            (
                Output::Message {
                    conn,
                    dir,
                    frame,
                    message,
                },
                Mode::Messages { with_bytes },
            ) => {
                if forensic::write_message(
                    &mut self.out,
                    conn,
                    dir,
                    &frame.bytes,
                    frame.first_ts_ns,
                    message,
                    *with_bytes,
                )
                .is_err()
                {
                    self.write_failed = true;
                }
            }
            (Output::Input(input), Mode::Audit(auditor)) => {
                if let Err(e) = auditor.handle(input) {
                    warn!("writing audit records: {e}");
                }
            }
            (Output::Input(_), Mode::Messages { .. })
            | (Output::Message { .. }, Mode::Audit(_)) => {}
        }
    }
}
