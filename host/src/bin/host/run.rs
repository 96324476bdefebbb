//! `host run`: one input through one pipeline, delivered to a folder or an
//! archive, under the limits given as flags.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use orders_host::{
    ByteSize, Destination, Input, Invocation, Limits, Progress, RunError, RunOutcome, Runner, RunnerConfig,
};

use crate::render;
use crate::{CacheArgs, RootArgs};

#[derive(Args, Debug)]
pub struct RunArgs {
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

    #[command(flatten)]
    cache: CacheArgs,

    #[command(flatten)]
    root: RootArgs,

    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Args, Debug)]
pub struct LimitArgs {
    /// Guest memory limit.
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    memory: ByteSize,

    /// Wall-clock limit, including time blocked in host calls.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = orders_host::parse_duration)]
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
            ..Self::default()
        }
    }
}

/// Runs `host run` and says how it went: the summary or JSON on stdout, a
/// message on stderr, the exit code.
pub fn command(args: &RunArgs) -> ExitCode {
    let result = run(args);
    match &result {
        Ok(outcome) if args.json => render::print_json_success(outcome),
        Ok(outcome) => render::print_summary(outcome),
        Err(err) => {
            eprintln!("host: {}", render::message(err));
            if args.json {
                render::print_json_failure(err);
            }
        }
    }
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => ExitCode::from(render::exit_code(err.outcome())),
    }
}

fn run(args: &RunArgs) -> Result<RunOutcome, RunError> {
    let (component_path, input_path) = match args.files.as_slice() {
        [component, input] => (Some(component.clone()), input.clone()),
        [input, ..] => (None, input.clone()),
        [] => return Err(RunError::InvalidArgument("no input file was given".into())),
    };
    let out = args.out.clone().unwrap_or_else(|| default_output_folder(&input_path));
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

    let config = RunnerConfig {
        sandbox_root: args.root.sandbox_root.clone(),
        memory_root: args.root.memory_root.clone(),
        spool_threshold: args.spool_threshold.bytes(),
        fuel_metering: limits.fuel.is_some(),
        max_concurrent: 1,
        cache_dir: args.cache.dir(),
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
    let mut invocation = Invocation::new(component, Input::Path(input_path)).limits(limits).destination(destination);
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
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Every start cleans up after hosts that were killed; failures only warn,
/// since this run does not depend on them.
pub fn sweep_quietly(runner: &Runner) {
    match runner.sweep() {
        Ok(sweep) => {
            for (name, err) in sweep.failed {
                tracing::warn!(sandbox = name, "cannot remove a sandbox left by a killed host: {err}");
            }
        }
        Err(err) => tracing::warn!("cannot sweep the sandbox root: {err}"),
    }
}

/// The default output folder: `<input stem>.out` beside the input.
fn default_output_folder(input: &Path) -> PathBuf {
    let stem = input.file_stem().map_or_else(|| "output".into(), |s| s.to_string_lossy().into_owned());
    input.with_file_name(format!("{stem}.out"))
}
