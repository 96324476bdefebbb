//! The `host` command: a thin shell over the `host` library.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use host::text::shown;
use host::{
    ByteSize, Destination, Input, Invocation, Limits, Outcome, Progress, RunError, RunOutcome, Runner, RunnerConfig,
    format_cents,
};

/// The exit codes, for `--help` (kept in step with `Outcome::exit_code`).
fn exit_code_table() -> String {
    let mut table = String::from("Exit codes:\n");
    for outcome in Outcome::ALL {
        table.push_str(&format!("  {:<4} {} — {}\n", outcome.exit_code(), outcome.name(), outcome.meaning()));
    }
    table
}

#[derive(Parser, Debug)]
#[command(name = "host", version, about = "Runs order-pipeline components in a private, throw-away sandbox.")]
#[command(after_help = exit_code_table())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a pipeline on one input file and delivers its outputs.
    ///
    /// `host run orders.csv` uses the bundled pipeline; `host run plugin.wasm
    /// orders.csv` runs any component of the orders:pipeline@0.1.0 world.
    #[command(after_help = exit_code_table())]
    Run(RunArgs),
    /// Removes sandboxes left behind by host processes that were killed.
    ///
    /// Sandboxes whose owner is still running are never touched.
    Sweep {
        #[command(flatten)]
        root: RootArgs,
    },
}

#[derive(Args, Debug)]
struct RootArgs {
    /// Folder that holds the sandboxes [default: orders-host-<uid> in the temp folder].
    #[arg(long, value_name = "DIR")]
    sandbox_root: Option<PathBuf>,

    /// Memory-backed folder for the sandboxes of small inputs [default: /dev/shm/orders-host-<uid>].
    #[arg(long, value_name = "DIR")]
    memory_root: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// `[COMPONENT.wasm] INPUT.csv`: the component is optional.
    #[arg(value_name = "FILES", num_args = 1..=2, required = true)]
    files: Vec<PathBuf>,

    /// Output folder [default: <input stem>.out beside the input]; a name
    /// ending in `.tar` gets one tar archive instead.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Replace an existing non-empty output folder (atomically).
    #[arg(long)]
    force: bool,

    /// Print the report (or the failure) as JSON on stdout.
    #[arg(long)]
    json: bool,

    /// Inputs up to this size never touch the disk: their sandbox lives in
    /// the memory root. 0 turns this off.
    #[arg(long, value_name = "SIZE", default_value = "1MiB")]
    spool_threshold: ByteSize,

    /// Folder of the compiled-code cache [default: ~/.cache/orders-host].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile the component in memory only.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,

    #[command(flatten)]
    root: RootArgs,

    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Args, Debug)]
struct LimitArgs {
    /// Guest memory limit.
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    memory: ByteSize,

    /// Wall-clock limit, including time blocked in host calls.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = host::limits::parse_duration)]
    timeout: Duration,

    /// Deterministic instruction budget [default: off].
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,

    /// Bytes the guest may write into its sandbox (the input is not counted).
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    disk_quota: ByteSize,

    /// Files, folders and links the guest may have at once.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_files: u64,

    /// Folders the guest may have at once (removal time grows with them).
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_folders: u64,

    /// Largest total size of the outputs accepted [default: the disk quota].
    #[arg(long, value_name = "SIZE")]
    max_output: Option<ByteSize>,

    /// Guest stderr kept for error messages; the rest is dropped.
    #[arg(long, value_name = "SIZE", default_value = "64KiB")]
    stderr_limit: ByteSize,
}

impl From<&LimitArgs> for Limits {
    fn from(args: &LimitArgs) -> Self {
        Self {
            memory: args.memory,
            timeout: args.timeout,
            fuel: args.fuel,
            disk_quota: args.disk_quota,
            max_files: args.max_files,
            max_folders: args.max_folders,
            max_output: args.max_output,
            stderr_limit: args.stderr_limit,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Run(args) => run_command(&args),
        Command::Sweep { root } => match sweep_command(&root) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("host: {err:#}");
                ExitCode::from(Outcome::HostError.exit_code())
            }
        },
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn run_command(args: &RunArgs) -> ExitCode {
    let result = run(args);
    match &result {
        Ok(outcome) if args.json => print_json_success(outcome),
        Ok(outcome) => print_summary(outcome),
        Err(err) => {
            eprintln!("host: {err}");
            if args.json {
                print_json_failure(err);
            }
        }
    }
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => ExitCode::from(err.outcome().exit_code()),
    }
}

fn run(args: &RunArgs) -> Result<RunOutcome, RunError> {
    let (component_path, input_path) = match args.files.as_slice() {
        [component, input] => (Some(component.clone()), input.clone()),
        [input, ..] => (None, input.clone()),
        [] => return Err(RunError::Host("no input file was given".into())),
    };
    let out = args.out.clone().unwrap_or_else(|| host::default_output_folder(&input_path));
    let destination = if out.extension().is_some_and(|ext| ext == "tar") {
        Destination::Tar { path: out, force: args.force }
    } else {
        Destination::Folder { path: out, force: args.force }
    };
    let limits = Limits::from(&args.limits);
    // Fail fast on what can be checked before compiling anything.
    let input_size = std::fs::metadata(&input_path)
        .map_err(|source| RunError::InputUnreadable { path: input_path.clone(), source })?
        .len();
    host::check_destination(&destination)?;

    let config = RunnerConfig {
        sandbox_root: args.root.sandbox_root.clone(),
        memory_root: args.root.memory_root.clone(),
        spool_threshold: args.spool_threshold.bytes(),
        fuel_metering: limits.fuel.is_some(),
        max_concurrent: 1,
        cache_dir: if args.no_cache { None } else { args.cache_dir.clone().or_else(host::CodeCache::default_path) },
        ..RunnerConfig::default()
    };
    let runner = Runner::new(&config)?;
    sweep_quietly(&runner);
    let component = match &component_path {
        Some(path) => runner.load_file(path)?,
        None => runner.bundled()?,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| RunError::Host(format!("cannot start the async runtime: {err}")))?;
    let progress = Arc::new(Progress::default());
    let mut invocation = Invocation::new(&component, Input::Path(input_path)).limits(limits).destination(destination);
    // Counting what the guest reads costs a pass over the input: only for a bar.
    let show_progress = std::io::stderr().is_terminal() && input_size >= PROGRESS_MIN_INPUT;
    if show_progress {
        invocation = invocation.progress(Arc::clone(&progress));
    }
    runtime.block_on(async {
        let bar = show_progress.then(|| tokio::spawn(draw_progress(progress)));
        let result = tokio::select! {
            result = runner.invoke(invocation) => result,
            // Dropping the run future drops its sandbox, which removes it.
            () = shutdown_signal() => Err(RunError::Interrupted),
        };
        if let Some(bar) = bar {
            bar.abort();
            eprint!("\r\x1b[K");
        }
        result
    })
}

/// Inputs smaller than this finish before a progress bar would help.
const PROGRESS_MIN_INPUT: u64 = 16 << 20;

/// Redraws one line on stderr: bytes read, rows/s and ETA, from what the guest
/// has read of its input so far.
async fn draw_progress(progress: Arc<Progress>) {
    let started = std::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        ticker.tick().await;
        let (read, total, lines) = (progress.bytes_read(), progress.total_bytes(), progress.lines_read());
        let seconds = started.elapsed().as_secs_f64().max(0.001);
        let percent = if total == 0 { 0.0 } else { read as f64 * 100.0 / total as f64 };
        let rate = read as f64 / seconds;
        let eta = if rate > 0.0 { total.saturating_sub(read) as f64 / rate } else { 0.0 };
        eprint!(
            "\r\x1b[K{percent:5.1}%  {:.1} / {:.1} MiB  {:.0} rows/s  ETA {eta:.0}s",
            read as f64 / 1048576.0,
            total as f64 / 1048576.0,
            lines as f64 / seconds,
        );
    }
}

/// Resolves on Ctrl-C or SIGTERM; never, if the handlers cannot be installed.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Every start cleans up after hosts that were killed; failures only warn,
/// since this run does not depend on them.
fn sweep_quietly(runner: &Runner) {
    match runner.sweep() {
        Ok(sweep) => {
            for (name, err) in sweep.failed {
                tracing::warn!(sandbox = name, "cannot remove a sandbox left by a killed host: {err}");
            }
        }
        Err(err) => tracing::warn!("cannot sweep the sandbox root: {err}"),
    }
}

fn sweep_command(args: &RootArgs) -> anyhow::Result<()> {
    // Named roots, else every default location (fallbacks included).
    let sweep = host::sandbox::sweep_roots(args.sandbox_root.as_deref(), args.memory_root.as_deref())?;
    println!("removed {} sandbox(es) of killed hosts, left {} of running hosts", sweep.removed.len(), sweep.live);
    if let Some((name, err)) = sweep.failed.first() {
        anyhow::bail!("{} sandbox(es) could not be removed, first {name}: {err}", sweep.failed.len());
    }
    Ok(())
}

/// Region names are padded to the longest up to this many characters; a
/// longer one (a guest's choice) only pushes its own line out.
const MAX_REGION_COLUMN: usize = 32;

/// The names of the report are the guest's: shown escaped, as every guest text.
fn print_summary(outcome: &RunOutcome) {
    let report = &outcome.report;
    println!(
        "{} rows: {} accepted, {} cancelled, {} rejected",
        report.rows, report.accepted, report.cancelled, report.rejected
    );
    if !report.reasons.is_empty() {
        let reasons: Vec<String> = report.reasons.iter().map(|r| format!("{} {}", shown(&r.reason), r.rows)).collect();
        println!("rejected by reason: {}", reasons.join(", "));
    }
    let regions: Vec<String> = report.regions.iter().map(|r| shown(&r.region).to_string()).collect();
    let width = regions.iter().map(|name| name.chars().count()).filter(|&n| n <= MAX_REGION_COLUMN).max().unwrap_or(0);
    for (name, region) in regions.iter().zip(&report.regions) {
        let noun = if region.orders == 1 { "order " } else { "orders" };
        let padding = " ".repeat(width.saturating_sub(name.chars().count()));
        println!("  {name}{padding}  {:>8} {noun}  {:>16}", region.orders, format_cents(region.total_cents));
    }
    let names: Vec<String> = outcome.outputs.iter().map(|f| shown(&f.name).to_string()).collect();
    match &outcome.delivered {
        host::Delivered::Folder(path) => println!("outputs in {}: {}", path.display(), names.join(", ")),
        host::Delivered::Tar(path) => println!("outputs in the archive {}: {}", path.display(), names.join(", ")),
        host::Delivered::Memory(_) => {}
    }
}

fn print_json_success(outcome: &RunOutcome) {
    let destination = match &outcome.delivered {
        host::Delivered::Folder(path) | host::Delivered::Tar(path) => Some(path.display().to_string()),
        host::Delivered::Memory(_) => None,
    };
    let value = serde_json::json!({
        "outcome": Outcome::Success,
        "exit_code": 0,
        "report": outcome.report,
        "outputs": outcome.outputs,
        "destination": destination,
        "peak_memory_bytes": outcome.peak_memory,
        "fuel_used": outcome.fuel_used,
        "bytes_written": outcome.bytes_written,
        "spooled": outcome.spooled,
        "timings_us": timings_json(&outcome.timings),
    });
    print_json(&value);
}

fn timings_json(timings: &host::Timings) -> serde_json::Value {
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    serde_json::json!({
        "sandbox_create": us(timings.sandbox_create),
        "input_copy": us(timings.input_copy),
        "guest": us(timings.guest),
        "collect": us(timings.collect),
        "deliver": us(timings.deliver),
        "sandbox_remove": us(timings.sandbox_remove),
        "total": us(timings.total),
    })
}

fn print_json_failure(err: &RunError) {
    let outcome = err.outcome();
    let value = serde_json::json!({
        "outcome": outcome,
        "exit_code": outcome.exit_code(),
        "error": err.to_string(),
        "limit": err.limit_hit(),
    });
    print_json(&value);
}

/// Pretty JSON on stdout, as `{:#}` prints it, but with every character
/// that could act on a terminal escaped (`\u009b`): JSON escapes only C0
/// controls, and the report's names are the guest's text. The value read
/// back is the same.
fn print_json(value: &serde_json::Value) {
    let mut text = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut text, TerminalSafe::default());
    if let Err(err) = serde::Serialize::serialize(value, &mut serializer) {
        eprintln!("host: cannot write the JSON output: {err}");
        return;
    }
    text.push(b'\n');
    if let Err(err) = std::io::stdout().lock().write_all(&text) {
        eprintln!("host: cannot write the JSON output: {err}");
    }
}

/// serde_json's pretty layout, with [`host::text::acts_on_terminal`]
/// characters written as JSON escapes.
#[derive(Default)]
struct TerminalSafe(serde_json::ser::PrettyFormatter<'static>);

impl serde_json::ser::Formatter for TerminalSafe {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut plain = 0;
        for (at, c) in fragment.char_indices() {
            if host::text::acts_on_terminal(c) {
                writer.write_all(&fragment.as_bytes()[plain..at])?;
                // Every such character is in the Basic Multilingual Plane: one escape.
                write!(writer, "\\u{:04x}", u32::from(c))?;
                plain = at + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[plain..])
    }

    fn begin_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.0.begin_array(writer)
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.0.end_array(writer)
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        self.0.begin_array_value(writer, first)
    }

    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.0.end_array_value(writer)
    }

    fn begin_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.0.begin_object(writer)
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.0.end_object(writer)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        self.0.begin_object_key(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.0.begin_object_value(writer)
    }

    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.0.end_object_value(writer)
    }
}
