//! The `host` command: a thin shell over the `orders_host` library. Each
//! subcommand is a module; `render` words the library's outcomes and errors
//! for the command line (messages that name flags, exit codes, JSON).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod exec;
mod render;
mod run;
mod serve;

#[derive(Parser, Debug)]
#[command(name = "host", version, about = "Runs order-pipeline components in a private, throw-away sandbox.")]
#[command(after_help = render::exit_code_table())]
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
    #[command(after_help = render::exit_code_table())]
    Run(run::RunArgs),
    /// Runs any WASI program (a wasi:cli/command component or a preview1
    /// module) in a private, throw-away sandbox.
    ///
    /// The program's only folder is `/`, its own sandbox (a copy of --seed
    /// DIR); argv is its file name and ARGS, its environment only the --env
    /// pairs, stdin empty. It exits with the program's exit code; a trap
    /// exits 134 (as wasmtime's CLI), the host's own outcomes 192 + their
    /// `host run` code (e.g. timeout 202), Ctrl-C 130.
    Exec(exec::ExecArgs),
    /// Removes sandboxes left behind by host processes that were killed.
    ///
    /// Sandboxes whose owner is still running are never touched.
    Sweep {
        #[command(flatten)]
        root: RootArgs,
    },
    /// Runs jobs for tenants over HTTP: `host serve --config service.toml`.
    ///
    /// Each tenant authenticates with its bearer token and runs under its
    /// own limits; jobs and results are kept in the data folder.
    Serve(serve::ServeArgs),
    /// Runs the jobs of `host serve --nats` replicas: pulls them from NATS
    /// JetStream, runs each in a local sandbox under its tenant's limits,
    /// and stores the results back.
    Worker(serve::cluster::worker::WorkerArgs),
    /// Prints a new random bearer token, then its `token_sha256 = "..."`
    /// line for a tenant of the service's config.
    Token,
}

/// Where compiled code is kept between processes.
#[derive(Args, Debug)]
struct CacheArgs {
    /// Folder of the compiled-code cache [default: ~/.cache/orders-host].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile in memory only.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
}

impl CacheArgs {
    /// The cache folder to use, if any.
    fn dir(&self) -> Option<PathBuf> {
        if self.no_cache { None } else { self.cache_dir.clone().or_else(orders_host::default_cache_dir) }
    }
}

#[derive(Args, Debug)]
struct RootArgs {
    /// Folder that holds the sandboxes [default: orders-host-<uid> in the temp
    /// folder, or ~/.cache/orders-host-sandboxes when that one is not yours].
    #[arg(long, value_name = "DIR")]
    sandbox_root: Option<PathBuf>,

    /// Memory-backed folder for the sandboxes of small inputs [default:
    /// /dev/shm/orders-host-<uid>, or $XDG_RUNTIME_DIR/orders-host].
    #[arg(long, value_name = "DIR")]
    memory_root: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server's requests and jobs are worth a line each; a run's are not.
    init_logging(if matches!(cli.command, Command::Serve(_) | Command::Worker(_)) { "info" } else { "warn" });
    match cli.command {
        Command::Run(args) => run::command(&args),
        Command::Exec(args) => exec::command(&args),
        Command::Serve(args) => serve::command(&args),
        Command::Worker(args) => serve::cluster::worker::command(&args),
        Command::Token => match serve::config::new_token() {
            Ok((token, line)) => {
                println!("{token}");
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("host: {err:#}");
                ExitCode::from(render::exit_code(orders_host::Outcome::HostError))
            }
        },
        Command::Sweep { root } => match sweep_command(&root) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("host: {}", render::with_flags(&format!("{err:#}")));
                ExitCode::from(render::exit_code(orders_host::Outcome::HostError))
            }
        },
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a person watching; a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(|| render::LogWriter).init();
}

fn sweep_command(args: &RootArgs) -> anyhow::Result<()> {
    // Named roots, else every default location (fallbacks included).
    let sweep = orders_host::sweep_roots(args.sandbox_root.as_deref(), args.memory_root.as_deref())?;
    println!("removed {} sandbox(es) of killed hosts, left {} of running hosts", sweep.removed.len(), sweep.live);
    if let Some((name, err)) = sweep.failed.first() {
        anyhow::bail!("{} sandbox(es) could not be removed, first {name}: {err}", sweep.failed.len());
    }
    Ok(())
}
