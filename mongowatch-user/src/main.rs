//! `mongowatch --pid <PID>`: audits the MongoDB operations of running processes from the
//! kernel, with no change to the application, its driver or the network. This file reads the
//! command line; `pipeline` does the work.

use std::{io, process::ExitCode, sync::Arc, time::Duration};

use anyhow::{bail, Result};
use clap::{CommandFactory, Parser};
use mongowatch::{
    capture::{
        ladder::CapturePath,
        procfs,
        select::{SelectArgs, Selection},
    },
    config::{AuditArgs, AuditConfig, RECORD_OPTIONS},
    logs::cli::Tool,
    pipeline::{self, Hooks, Mode, Options, Stop},
    serve::{self, Health, Listener, Metrics},
};

/// Audits the MongoDB operations of running processes, from the kernel (eBPF).
///
/// Writes one audit record per application-level operation (a find and all its getMores are
/// one record). Runs as root. Exits when every watched process has exited, or on
/// SIGINT/SIGTERM, after writing every pending record.
///
/// `mongowatch aggregate` and `mongowatch digest` read the logs it wrote.
#[derive(Parser, Debug)]
#[command(
    name = "mongowatch",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    tool: Option<Tool>,

    /// A process to watch (repeat for several), with all its descendants: those already running
    /// and those it starts later.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,

    #[command(flatten)]
    select: SelectArgs,

    /// Server ports that mark a TCP connection as MongoDB at once; connections to other ports
    /// (and unix sockets) are recognised from their first bytes.
    #[arg(long = "port", value_name = "PORT", default_values_t = [27017u16, 27018, 27019])]
    ports: Vec<u16>,

    /// Forensic mode: one JSON line per wire message instead of audit records. -o, the
    /// rotation options and --config apply; the options that shape records do not.
    #[arg(long, conflicts_with_all = RECORD_OPTIONS)]
    messages: bool,

    /// With --messages: add each message's wire bytes, base64, as "Bytes", for the messages
    /// decoded and shown to carry no credentials. The others (authentication steps,
    /// createUser/updateUser, messages that could not be decoded) get "Redacted" instead.
    #[arg(long, requires = "messages")]
    message_bytes: bool,

    /// Print every layer's counters as one JSON line to stderr at exit.
    #[arg(long)]
    stats: bool,

    /// Also print them every SECS seconds while running.
    #[arg(long, value_name = "SECS", value_parser = parse_interval)]
    stats_interval: Option<Duration>,

    /// Capture the bytes with this kernel hook instead of the best one the kernel offers:
    /// sock-tracepoints (Linux 6.3+), fentry, kprobes or syscalls (see the README's kernels).
    #[arg(long, value_name = "NAME")]
    capture_path: Option<CapturePath>,

    #[command(flatten)]
    audit: AuditArgs,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..1e9).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("`{s}` is not a number of seconds >= 0.1")),
    }
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

fn run(cli: Cli) -> Result<()> {
    if let Some(tool) = cli.tool {
        return tool.run(Cli::command);
    }
    for pid in &cli.pids {
        if !procfs::alive(*pid) {
            bail!("no running process has pid {pid}");
        }
    }
    // Reads --config too; the command line wins over the file.
    let args = cli.audit.clone().merged()?;
    if cli.messages {
        // The config file may set the output; options that shape records would be ignored
        // here, so they are refused instead (clap refuses them on the command line).
        if let Some(key) = args.record_options_set().first() {
            bail!("`{key}` shapes audit records, which --messages does not write");
        }
    }
    let tables = (args.select.clone(), args.exclude.clone());
    let config = AuditConfig::try_from(args)?;
    let (memory_budget, ring_size, listen) =
        (config.memory_budget, config.ring_size, config.listen);
    // Before any thread starts: they inherit it.
    pipeline::raise_priority(config.priority_boost);
    let mode = if cli.messages {
        Mode::Messages {
            output: config.output,
            with_bytes: cli.message_bytes,
        }
    } else {
        Mode::Audit(Box::new(config))
    };
    let hooks = match listen {
        Some(addr) => {
            let (health, metrics) = (Arc::new(Health::new()), Arc::new(Metrics::new()));
            Listener::start(addr, health.clone(), metrics.clone())?;
            serve::pipeline_hooks(health, metrics)
        }
        None => Hooks::default(),
    };
    let (mut select, mut exclude) = cli.select.tables();
    select.extend(tables.0);
    exclude.extend(tables.1);
    if cli.pids.is_empty() && select.is_empty() {
        // A usage error like clap's own (exit 2, with the usage line).
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "nothing to watch: give --pid, --all, --comm, --exe, --cgroup or \
                 --container-id (or [[select]] tables in --config)",
            )
            .exit();
    }
    let selection = Selection::new(&select, &exclude)?;
    let report = pipeline::run(Options {
        pids: cli.pids,
        ports: cli.ports,
        mode,
        stats_interval: cli.stats_interval,
        memory_budget,
        ring_size,
        hooks,
        selection,
        capture_path: cli.capture_path,
    })?;
    if cli.stats {
        eprintln!("{}", report.stats.to_json_line());
    }
    match report.stop {
        Stop::OutputFailed(why) => {
            let unwritten = report.stats.audit.map_or(0, |a| a.write_errors)
                + report.stats.messages.map_or(0, |m| m.unwritten);
            bail!("{why} ({unwritten} records could not be written)")
        }
        Stop::ProcessesExited | Stop::Signal(_) => Ok(()),
    }
}
