//! `host exec`: any WASI program in a private, throw-away sandbox, as
//! wasmtime's CLI would run it, under the limits of `host run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use orders_host::{
    ByteSize, Destination, Exec, ExecError, ExecOutcome, Limits, OutputSink, RunError, Runner, RunnerConfig,
};

use crate::render;
use crate::run::{LimitArgs, shutdown_signal, sweep_quietly};
use crate::{CacheArgs, RootArgs};

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The program: a wasi:cli/command component (WASI 0.2) or a WASI
    /// preview1 core module.
    #[arg(value_name = "PROGRAM.wasm")]
    program: PathBuf,

    /// Arguments for the program (after `--`); its argv[0] is PROGRAM's file name.
    #[arg(value_name = "ARGS", last = true)]
    args: Vec<String>,

    /// Start the program's folder (its only preopen, `/`) as a copy of DIR.
    #[arg(long, value_name = "DIR")]
    seed: Option<PathBuf>,

    /// A variable of the program's environment, which holds nothing else.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Deliver what the program leaves in its folder to DIR when it exits 0
    /// (a name ending in `.tar` gets one tar archive).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Replace an existing non-empty --out folder (atomically).
    #[arg(long, requires = "out")]
    force: bool,

    /// Print the outcome, the program's exit code and the outputs as JSON on
    /// stdout, after what the program printed.
    #[arg(long)]
    json: bool,

    /// The program's stdout passed through; the rest is dropped.
    #[arg(long, value_name = "SIZE", default_value = "64MiB")]
    stdout_limit: ByteSize,

    #[command(flatten)]
    cache: CacheArgs,

    #[command(flatten)]
    root: RootArgs,

    #[command(flatten)]
    limits: LimitArgs,
}

fn parse_env(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{pair}` is not KEY=VALUE")),
    }
}

/// The exit code of `host exec` for a run that did not end with the
/// program's own exit: a trap is 134 as under wasmtime's CLI (128 + SIGABRT),
/// Ctrl-C 130, every other outcome 192 + its `host run` code.
pub fn exit_code(err: &RunError) -> u8 {
    match err.outcome() {
        orders_host::Outcome::Trap => TRAP_EXIT_CODE,
        orders_host::Outcome::Interrupted => render::exit_code(orders_host::Outcome::Interrupted),
        outcome => HOST_OUTCOME_BASE + render::exit_code(outcome),
    }
}

/// wasmtime's CLI exits with 128 + SIGABRT when the program traps.
pub const TRAP_EXIT_CODE: u8 = 134;
/// `host exec`'s own outcomes are 192 + their `host run` code.
pub const HOST_OUTCOME_BASE: u8 = 192;

/// Runs `host exec`: the program's stdout and stderr pass through as it
/// writes them, then a message on stderr if the host ended the run, JSON on
/// stdout with `--json`, and the program's exit code (or the host's).
pub fn command(args: &ExecArgs) -> ExitCode {
    let result = exec(args);
    match &result {
        Ok(outcome) => {
            if args.json {
                print_json_success(outcome);
            }
            ExitCode::from(outcome.exit_code)
        }
        Err(failure) => {
            eprintln!("host: {}", render::message(&failure.error));
            if args.json {
                print_json_failure(failure);
            }
            ExitCode::from(exit_code(&failure.error))
        }
    }
}

fn exec(args: &ExecArgs) -> Result<ExecOutcome, ExecError> {
    let limits = Limits { stdout_limit: args.stdout_limit, ..Limits::from(&args.limits) };
    let config = RunnerConfig {
        sandbox_root: args.root.sandbox_root.clone(),
        memory_root: args.root.memory_root.clone(),
        fuel_metering: limits.fuel.is_some(),
        max_concurrent: 1,
        cache_dir: args.cache.dir(),
        ..RunnerConfig::default()
    };
    // Reading the program (a few ms for a few MB, mostly the kernel mapping
    // fresh pages) does not need the runner: it runs beside the runner's
    // set-up (engine, linker, roots, sweep, about 2 ms), which it outlasts.
    let (runner, bytes) = std::thread::scope(|scope| {
        let read = scope.spawn(|| std::fs::read(&args.program));
        let runner = Runner::new(&config).inspect(sweep_quietly);
        (runner, read.join())
    });
    let runner = runner?;
    let bytes = bytes
        .map_err(|_| RunError::Host("the thread reading the program panicked".to_owned()))?
        .map_err(|source| RunError::ComponentUnreadable { path: args.program.clone(), source })?;
    let program = runner.load_command(&args.program.display().to_string(), bytes)?;
    let mut exec = Exec::new(program)
        .args(args.args.iter().cloned())
        .limits(limits)
        .stdout(OutputSink::Forward(Box::new(std::io::stdout())))
        .stderr(OutputSink::Forward(Box::new(std::io::stderr())));
    for (key, value) in &args.env {
        exec = exec.env(key.clone(), value.clone());
    }
    if let Some(seed) = &args.seed {
        exec = exec.seed(seed.clone());
    }
    if let Some(out) = &args.out {
        let destination = if out.extension().is_some_and(|ext| ext == "tar") {
            Destination::Tar { path: out.clone(), force: args.force }
        } else {
            Destination::Folder { path: out.clone(), force: args.force }
        };
        exec = exec.destination(destination);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| RunError::Host(format!("cannot start the async runtime: {err}")))?;
    runtime.block_on(async {
        tokio::select! {
            result = runner.exec(exec) => result,
            // Dropping the run future drops its sandbox, which removes it.
            () = shutdown_signal() => Err(RunError::Interrupted.into()),
        }
    })
}

fn print_json_success(outcome: &ExecOutcome) {
    render::print_json(&serde_json::json!({
        "outcome": orders_host::Outcome::Success,
        "exit_code": outcome.exit_code,
        "outputs": outcome.outputs,
        "destination": render::delivered_path(outcome.delivered.as_ref()),
        "stdout_dropped_bytes": outcome.stdout.1,
        "stderr_dropped_bytes": outcome.stderr.1,
        "peak_memory_bytes": outcome.peak_memory,
        "fuel_used": outcome.fuel_used,
        "bytes_written": outcome.bytes_written,
        "sandbox_peak": outcome.sandbox_peak,
    }));
}

fn print_json_failure(failure: &ExecError) {
    let outcome = failure.error.outcome();
    render::print_json(&serde_json::json!({
        "outcome": outcome,
        "exit_code": failure.exit_code,
        "host_exit_code": exit_code(&failure.error),
        "error": render::message(&failure.error),
        "limit": failure.error.limit_hit().map(render::limit_json),
        "sandbox_peak": failure.error.sandbox_peak(),
    }));
}
