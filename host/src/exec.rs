//! The second kind of invocation: any WASI program (a `wasi:cli/command`
//! component, or a preview1 core module turned into one at load time, see
//! [`crate::program`]) in the same private, throw-away sandbox as a pipeline,
//! under the same limits, through the same wrapped `wasi:filesystem`.
//!
//! The program sees one folder, `/`: the sandbox's own, holding a copy of the
//! seed folder when one is given. Its arguments are its name and the
//! caller's, its environment only the caller's pairs, its stdin empty, its
//! stdout and stderr capped (kept, or forwarded as they come). When it exits
//! 0 and a destination is given, what it left in `/` is delivered as a
//! pipeline's outputs are (regular files and folders only); the sandbox is
//! removed however it ended.

use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cap_fs_ext::{DirExt as _, FollowSymlinks, OpenOptionsFollowExt as _};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt as _};
use wasmtime::Trap;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::cancel::Cancel;
use crate::collect::{OutputFile, collect_tree};
use crate::deliver::{self, Delivered, Destination};
use crate::error::RunError;
use crate::fs::{PRIVATE_FILE, private_dir_builder};
use crate::guest::{CappedOutput, GuestRun, StoreSetup, finish, new_store};
use crate::invocation::{Admit, admit_builders};
use crate::invoke::{Admitted, Stages, removal_budget};
use crate::ledger::{Kind, Observed};
use crate::limits::Limits;
use crate::outcome::GuestAccount;
use crate::program::{Program, ProgramKind};
use crate::quota::stat_handle;
use crate::runner::Runner;
use crate::sandbox::Sandbox;
use crate::store::{GuestState, Preopen};
use crate::text;

/// The folder a program sees its sandbox as: its only preopen.
pub const PROGRAM_ROOT: &str = "/";

/// A WASI program, compiled and linked as a `wasi:cli/command`, ready to run
/// many times. Cheap to clone: clones share the compiled code.
#[derive(Clone)]
pub struct Command {
    pre: CommandPre<GuestState>,
    name: Arc<str>,
    kind: ProgramKind,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command").field("name", &self.name).field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl Command {
    /// The name it was loaded under.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the file was: a command component or a preview1 module.
    #[must_use]
    pub fn kind(&self) -> ProgramKind {
        self.kind
    }
}

/// Where a program's stdout or stderr goes, up to its limit
/// ([`Limits::stdout_limit`], [`Limits::stderr_limit`]); past it, what the
/// program writes is dropped, and its writes still succeed.
pub enum OutputSink {
    /// Kept in memory and returned in the [`ExecOutcome`].
    Keep,
    /// Written to this writer as it comes (e.g. the host's own stdout), never
    /// buffered; a writer that fails is dropped.
    Forward(Box<dyn io::Write + Send>),
}

impl std::fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Keep => "Keep",
            Self::Forward(_) => "Forward(..)",
        })
    }
}

impl OutputSink {
    fn capped(self, limit: crate::limits::ByteSize) -> CappedOutput {
        match self {
            Self::Keep => CappedOutput::kept(limit.bytes()),
            Self::Forward(writer) => CappedOutput::forwarded(limit.bytes(), writer),
        }
    }
}

/// One run of a [`Command`]: its arguments and environment, the folder it
/// starts with, for whom, under which limits, and where what it leaves goes.
/// Owns all of it (`Send + 'static`). Run with [`Runner::exec`].
#[derive(Debug)]
pub struct Exec {
    command: Command,
    args: Vec<String>,
    env: Vec<(String, String)>,
    seed: Option<PathBuf>,
    admit: Admit,
    destination: Option<Destination>,
    stdout: OutputSink,
    stderr: OutputSink,
}

impl Exec {
    admit_builders!();

    /// A run of `command` with no arguments, no environment, an empty
    /// folder, stdout and stderr kept, and nothing delivered.
    #[must_use]
    pub fn new(command: Command) -> Self {
        Self {
            command,
            args: Vec::new(),
            env: Vec::new(),
            seed: None,
            admit: Admit::default(),
            destination: None,
            stdout: OutputSink::Keep,
            stderr: OutputSink::Keep,
        }
    }

    /// Appends arguments; the program's `argv[0]` is its file name.
    #[must_use]
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds `key=value` to the program's environment, which holds nothing else.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the program's folder as a copy of `folder`'s contents (regular
    /// files and folders; a link or special file in it is refused). The copy
    /// is the program's own: it counts against its disk quota and file limit.
    #[must_use]
    pub fn seed(mut self, folder: impl Into<PathBuf>) -> Self {
        self.seed = Some(folder.into());
        self
    }

    /// Delivers what the program leaves in its folder, when it exits 0.
    #[must_use]
    pub fn destination(mut self, destination: Destination) -> Self {
        self.destination = Some(destination);
        self
    }

    /// Where the program's stdout goes (default: kept).
    #[must_use]
    pub fn stdout(mut self, sink: OutputSink) -> Self {
        self.stdout = sink;
        self
    }

    /// Where the program's stderr goes (default: kept).
    #[must_use]
    pub fn stderr(mut self, sink: OutputSink) -> Self {
        self.stderr = sink;
        self
    }
}

/// A program that ran to its end: it exited, with `exit_code`, by itself.
#[derive(Debug)]
#[non_exhaustive]
pub struct ExecOutcome {
    /// Its exit code: 0 for success. A preview1 `proc_exit(n)` and WASI 0.2
    /// `exit-with-code(n)` give `n`; `exit(err)` gives 1.
    pub exit_code: u8,
    /// What it left in its folder, when it exited 0 and a destination was
    /// given (paths relative to its folder, `/`-separated; folders are not
    /// listed), with sizes and SHA-256.
    pub outputs: Vec<OutputFile>,
    /// Where they went, if anywhere.
    pub delivered: Option<Delivered>,
    /// Its stdout, as kept ([`OutputSink::Keep`]), and how many bytes past
    /// the limit were dropped.
    pub stdout: (String, u64),
    /// Its stderr, likewise.
    pub stderr: (String, u64),
    /// The most linear memory (and table) it held at once, in bytes.
    pub peak_memory: u64,
    /// Fuel consumed, when fuel metering is on.
    pub fuel_used: Option<u64>,
    /// Bytes its files held at the end, as charged to the disk quota (the
    /// seed's copy included).
    pub bytes_written: u64,
    /// The most of each figure the host's ledger charged the sandbox at
    /// once: bytes, files, folders, descriptors held.
    pub sandbox_peak: crate::ledger::Usage,
    /// Wall time from admission to removal.
    pub elapsed: Duration,
}

/// A run that did not end with the program exiting by itself: the error,
/// and the code the program exited with when it did exit (after a limit
/// refused it, say). Its message is the [`RunError`]'s, so it has no
/// [`std::error::Error::source`] (a chain printed whole would say it twice).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
#[non_exhaustive]
pub struct ExecError {
    /// Why the run failed.
    pub error: RunError,
    /// The program's exit code, if it exited.
    pub exit_code: Option<u8>,
}

impl From<RunError> for ExecError {
    fn from(error: RunError) -> Self {
        Self { error, exit_code: None }
    }
}

/// How a program's run ended.
#[derive(Debug)]
pub(crate) enum CommandEnd {
    /// It exited, with this code.
    Exited(u8),
    /// It trapped (a crash, fuel), or could not be instantiated.
    Trapped(wasmtime::Error),
    /// It was still running at its timeout.
    TimedOut(Duration),
}

impl CommandEnd {
    fn from_call(result: wasmtime::Result<Result<(), ()>>) -> Self {
        match result {
            Ok(Ok(())) => Self::Exited(0),
            Ok(Err(())) => Self::Exited(1),
            // `exit-with-code(n)` arrives as `I32Exit(n)`, n in 0..=255.
            Err(err) => match err.downcast_ref::<I32Exit>() {
                Some(&I32Exit(code)) => Self::Exited(u8::try_from(code).unwrap_or(1)),
                None => Self::Trapped(err),
            },
        }
    }
}

/// The program's exit code, or the error its run ends with: a program that
/// fails (exits nonzero or traps) after a limit refused it failed because of
/// the limit; one that coped and exited 0 has succeeded.
pub(crate) fn classify_command(end: CommandEnd, account: &GuestAccount, limits: &Limits) -> Result<u8, RunError> {
    let limit = || crate::outcome::limit_refusal(None, account, limits);
    match end {
        CommandEnd::TimedOut(limit) => Err(RunError::Timeout { limit }),
        CommandEnd::Exited(0) => Ok(0),
        CommandEnd::Exited(_) | CommandEnd::Trapped(_) if let Some(err) = limit() => Err(err),
        CommandEnd::Exited(code) => Ok(code),
        CommandEnd::Trapped(err) => {
            if let (Some(Trap::OutOfFuel), Some(fuel)) = (err.downcast_ref::<Trap>(), limits.fuel) {
                return Err(RunError::FuelExhausted { fuel });
            }
            let message = err.root_cause().to_string();
            let message = text::bounded(message.lines().next().unwrap_or("unknown trap"));
            Err(RunError::Trap { message, stderr: account.stderr.clone() })
        }
    }
}

impl Runner {
    /// Reads a WASI program (a `wasi:cli/command` component or a preview1
    /// core module), compiles it (or loads its compiled code from the cache)
    /// and links it.
    ///
    /// # Errors
    ///
    /// [`RunError::ComponentUnreadable`] when the file cannot be read,
    /// [`RunError::ProgramInvalid`] when it is not such a program or needs
    /// what the sandbox does not offer.
    pub fn load_command_file(&self, path: &Path) -> Result<Command, RunError> {
        let bytes =
            std::fs::read(path).map_err(|source| RunError::ComponentUnreadable { path: path.to_owned(), source })?;
        self.load_command(&path.display().to_string(), bytes)
    }

    /// As [`Runner::load_command_file`], from the program's bytes.
    ///
    /// # Errors
    ///
    /// [`RunError::ProgramInvalid`], saying what the bytes are.
    pub fn load_command(&self, name: &str, bytes: Vec<u8>) -> Result<Command, RunError> {
        let invalid = |reason: String| RunError::ProgramInvalid { name: name.to_owned(), reason };
        let program = Program::load(bytes).map_err(|err| invalid(err.to_string()))?;
        let kind = program.kind();
        let engine = self.engine();
        let (component, _) = engine.compile_program(name, &program).map_err(|err| invalid(err.to_string()))?;
        let instance_pre = engine
            .linker
            .instantiate_pre(&component)
            .map_err(|err| invalid(format!("it needs something the sandbox does not offer: {err:#}")))?;
        let pre = CommandPre::new(instance_pre).map_err(|err| invalid(format!("{err:#}")))?;
        Ok(Command { pre, name: name.into(), kind })
    }
}

impl Runner {
    /// Runs one program in a fresh sandbox: admission as for
    /// [`Runner::invoke`], the seed copied in, the program run under the
    /// limits, what it left delivered when it exits 0 and a destination was
    /// given, and the sandbox removed on every path.
    ///
    /// # Errors
    ///
    /// An [`ExecError`]: the [`RunError`] naming the failure class, and the
    /// program's exit code if it exited. A program that exits nonzero by
    /// itself is no error: see [`ExecOutcome::exit_code`].
    pub async fn exec(&self, exec: Exec) -> Result<ExecOutcome, ExecError> {
        let started = Instant::now();
        let Exec {
            command,
            args,
            env,
            seed,
            admit: Admit { tenant, limits, admission, queue_timeout, deadline },
            destination,
            stdout,
            stderr,
        } = exec;
        let Admitted { slots, limits } = self.admit(tenant.as_deref(), limits, admission, queue_timeout).await?;
        let stages = Stages::new(deadline, slots);
        let ends = stages.ends();

        // The tenant's folders, the sandbox and the seed (blocking: open,
        // mkdir, flock, the copy). A program without a seed starts empty:
        // its sandbox can live in memory.
        let (runner, seed_limits, check, cancel) = (self.clone(), limits, destination.clone(), stages.cancel.clone());
        let prepared = stages
            .blocking(move || {
                if let Some(destination) = &check {
                    deliver::check_destination(destination)?;
                }
                let folders = tenant.as_deref().map(|id| runner.tenant_folders(id)).transpose()?;
                let (root, _) = runner.sandbox_root_for(folders.as_deref(), seed.is_none());
                let sandbox = runner.housekeeper().take(root).map_err(RunError::Sandbox)?;
                let Some(seed) = seed else { return Ok((sandbox, Vec::new())) };
                let copied = sandbox
                    .output_dir()
                    .map_err(RunError::Sandbox)
                    .and_then(|out| copy_seed(&seed, out, &seed_limits, &cancel));
                match copied {
                    Ok(seeded) => Ok((sandbox, seeded)),
                    Err(err) => Err(runner.remove_after_failure(sandbox, err, ends)),
                }
            })
            .await
            .and_then(|prepared| prepared);
        let (sandbox, seeded) = prepared.map_err(|err| stages.stopped(err))?;

        // The program, on this executor: it yields every epoch tick.
        let argv0 = Path::new(command.name())
            .file_name()
            .map_or_else(|| command.name().to_owned(), |name| name.to_string_lossy().into_owned());
        let (stdout, stderr) = (stdout.capped(limits.stdout_limit), stderr.capped(limits.stderr_limit));
        let io = ProgramIo {
            args: std::iter::once(argv0).chain(args).collect(),
            env,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            seeded,
        };
        let timeout = stages.remaining().map_or(limits.timeout, |left| left.min(limits.timeout));
        let ran = match run_command(self, &command, &sandbox, &limits, timeout, io).await {
            Ok(ran) => ran,
            Err(err) => {
                self.remove_quietly(sandbox, &err, ends).await;
                return Err(err.into());
            }
        };
        let exited = match ran.end {
            CommandEnd::Exited(code) => Some(code),
            _ => None,
        };
        let deadline_passed = stages.remaining().is_some_and(|left| left.is_zero());
        let exit_code = match classify_command(ran.end, &ran.account, &limits) {
            Ok(code) => code,
            Err(err) => {
                let err = match err {
                    RunError::Timeout { .. } if deadline_passed => stages.exceeded(),
                    other => other,
                };
                self.remove_quietly(sandbox, &err, ends).await;
                return Err(ExecError { error: err, exit_code: exited });
            }
        };

        // What it left, when it succeeded and the caller wants it, then
        // removal (blocking: every output is a file). The stage removes its
        // sandbox itself on every path: past the deadline this invocation
        // may have returned before it stops.
        let (runner, cancel, max_output) = (self.clone(), stages.cancel.clone(), limits.effective_max_output());
        let finished = stages
            .blocking(move || {
                let delivered = match destination {
                    Some(destination) if exit_code == 0 => sandbox
                        .output_dir()
                        .map_err(|err| RunError::Host(format!("cannot open the program's folder: {err}")))
                        .and_then(|out| {
                            let files = collect_tree(out, max_output)?;
                            deliver::deliver(files, out, &destination, true, &cancel)
                        })
                        .map(|(delivered, outputs)| (Some(delivered), outputs)),
                    _ => Ok((None, Vec::new())),
                };
                let delivered = match delivered {
                    Ok(delivered) => delivered,
                    Err(err) => return Err(runner.remove_after_failure(sandbox, err, ends)),
                };
                let path = sandbox.path().to_owned();
                runner
                    .housekeeper()
                    .remove_within(sandbox, removal_budget(ends))
                    .map_err(|source| RunError::Cleanup { path, source })?;
                Ok(delivered)
            })
            .await
            .and_then(|finished| finished);
        let (delivered, outputs) =
            finished.map_err(|err| ExecError { error: stages.stopped(err), exit_code: exited })?;
        Ok(ExecOutcome {
            exit_code,
            outputs,
            delivered,
            stdout: stdout.contents(),
            stderr: stderr.contents(),
            peak_memory: ran.peak_memory,
            fuel_used: ran.fuel_used,
            bytes_written: ran.bytes_written,
            sandbox_peak: ran.sandbox_peak,
            elapsed: started.elapsed(),
        })
    }
}

/// Runs `command` in `sandbox`, whose output folder is the program's `/`.
pub(crate) async fn run_command(
    runner: &Runner,
    command: &Command,
    sandbox: &Sandbox,
    limits: &Limits,
    timeout: Duration,
    io: ProgramIo,
) -> Result<GuestRun<CommandEnd>, RunError> {
    let started = Instant::now();
    let ProgramIo { args, env, stdout, stderr, seeded } = io;
    let root = sandbox.output_dir().and_then(Dir::try_clone).map_err(RunError::Sandbox)?;
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&args).envs(&env).stdout(stdout).stderr(stderr.clone());
    let setup = StoreSetup { wasi, preopens: vec![Preopen::new(root, PROGRAM_ROOT, true)], progress: None };
    let mut store = new_store(&runner.engine().engine, runner.config().fuel_metering, sandbox, limits, setup)?;
    // The seed's copy is the program's own from the start.
    for entry in seeded {
        store.data().ledger.observe(entry);
    }
    tracing::debug!(program = command.name(), "program started");
    let mut instantiated = None;
    let call = async {
        let instance = command.pre.instantiate_async(&mut store).await?;
        instantiated = Some(started.elapsed());
        instance.wasi_cli_run().call_run(&mut store).await
    };
    let end = match tokio::time::timeout(timeout, call).await {
        Err(_elapsed) => CommandEnd::TimedOut(timeout),
        Ok(result) => CommandEnd::from_call(result),
    };
    Ok(finish(store, end, started, instantiated, limits, &stderr))
}

/// What a program is given and where its output goes.
pub(crate) struct ProgramIo {
    /// `argv`, its file name first.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdout: CappedOutput,
    pub stderr: CappedOutput,
    /// What the seed's copy holds, to charge to the program.
    pub seeded: Vec<Observed>,
}

/// Opening a seed file must not wait on a FIFO or take a terminal.
const NONBLOCK_NOCTTY: i32 = (rustix::fs::OFlags::NONBLOCK.bits() | rustix::fs::OFlags::NOCTTY.bits()) as i32;

/// The most a seed copy reads and writes at once.
const SEED_BUFFER: usize = 256 * 1024;

/// Copies the contents of the folder `seed` into `target` (the program's
/// `/`): regular files (0600) and folders (0700), nothing else, within the
/// program's disk quota, file and folder limits. Returns what it made, as
/// the kernel reports it, to be charged to the program. Stops at the next
/// entry or chunk once `cancel` is set.
///
/// # Errors
///
/// [`RunError::InvalidArgument`] naming the entry for a link, a special
/// file, or a seed over a limit; [`RunError::InputUnreadable`] when the seed
/// cannot be read; [`RunError::Sandbox`] when the copy cannot be written.
pub(crate) fn copy_seed(
    seed: &Path,
    target: &Dir,
    limits: &Limits,
    cancel: &Cancel,
) -> Result<Vec<Observed>, RunError> {
    let unreadable = |path: &Path, source: io::Error| RunError::InputUnreadable { path: path.to_owned(), source };
    // Ambient authority, once: the seed folder the caller named.
    let source = Dir::open_ambient_dir(seed, cap_std::ambient_authority()).map_err(|err| unreadable(seed, err))?;
    let mut made = Vec::new();
    let (mut bytes, mut entries, mut folders) = (0u64, 0u64, 0u64);
    let mut pending: Vec<(Dir, Dir, PathBuf)> =
        vec![(source, target.try_clone().map_err(RunError::Sandbox)?, PathBuf::new())];
    let mut buffer = vec![0u8; SEED_BUFFER];
    while let Some((from, to, relative)) = pending.pop() {
        let mut names: Vec<_> = from
            .entries()
            .and_then(|listing| listing.map(|entry| entry.map(|entry| entry.file_name())).collect::<io::Result<_>>())
            .map_err(|err| unreadable(&seed.join(&relative), err))?;
        names.sort();
        for name in names {
            let path = relative.join(&name);
            let shown_path = seed.join(&path);
            cancel.check().map_err(RunError::Sandbox)?;
            let meta = from.symlink_metadata(&name).map_err(|err| unreadable(&shown_path, err))?;
            entries += 1;
            if entries > limits.max_files {
                return Err(seed_over(seed, format!("more than {} entries (the file limit)", limits.max_files)));
            }
            let kind = meta.file_type();
            if kind.is_dir() {
                folders += 1;
                if folders > limits.max_folders {
                    return Err(seed_over(
                        seed,
                        format!("more than {} folders (the folder limit)", limits.max_folders),
                    ));
                }
                to.create_dir_with(&name, &private_dir_builder()).map_err(RunError::Sandbox)?;
                let child_to = to.open_dir_nofollow(&name).map_err(RunError::Sandbox)?;
                made.push(observed(&child_to, Kind::Folder)?);
                let child_from = from.open_dir_nofollow(&name).map_err(|err| unreadable(&shown_path, err))?;
                pending.push((child_from, child_to, path));
            } else if kind.is_file() {
                // No link followed, no blocking on a FIFO swapped in since the listing.
                let mut options = OpenOptions::new();
                options.read(true).follow(FollowSymlinks::No).custom_flags(NONBLOCK_NOCTTY);
                let mut file = from.open_with(&name, &options).map_err(|err| unreadable(&shown_path, err))?;
                if !file.metadata().map_err(|err| unreadable(&shown_path, err))?.is_file() {
                    return Err(RunError::InvalidArgument(format!(
                        "the seed folder's {} changed while it was copied; copy from a folder nothing else changes",
                        text::shown(&shown_path.display().to_string())
                    )));
                }
                let mut options = OpenOptions::new();
                options.write(true).create_new(true).mode(PRIVATE_FILE);
                let mut copy = to.open_with(&name, &options).map_err(RunError::Sandbox)?;
                loop {
                    cancel.check().map_err(RunError::Sandbox)?;
                    let read = file.read(&mut buffer).map_err(|err| unreadable(&shown_path, err))?;
                    if read == 0 {
                        break;
                    }
                    bytes += read as u64;
                    if bytes > limits.disk_quota.bytes() {
                        return Err(seed_over(seed, format!("more than {} (the disk quota)", limits.disk_quota)));
                    }
                    io::Write::write_all(&mut copy, &buffer[..read]).map_err(RunError::Sandbox)?;
                }
                made.push(observed(&copy, Kind::File)?);
            } else {
                let what = if kind.is_symlink() { "a symbolic link" } else { "a special file" };
                return Err(RunError::InvalidArgument(format!(
                    "the seed folder holds {}, which is {what}: only regular files and folders are copied in; \
                     remove it from the seed, or put a copy of what it points to in its place",
                    text::shown(&shown_path.display().to_string())
                )));
            }
        }
    }
    Ok(made)
}

fn seed_over(seed: &Path, what: String) -> RunError {
    RunError::InvalidArgument(format!(
        "the seed folder {} holds {what}: the program's folder starts with it and must fit its limits; \
         raise the limit or seed less",
        seed.display()
    ))
}

fn observed(handle: &impl rustix::fd::AsFd, kind: Kind) -> Result<Observed, RunError> {
    stat_handle(handle).map(|seen| Observed { kind, ..seen }).map_err(RunError::Sandbox)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Outcome;
    use crate::ledger::Refused;

    fn refused(bounds: &[Refused]) -> GuestAccount {
        GuestAccount { refused: bounds.to_vec(), ..GuestAccount::default() }
    }

    #[test]
    fn a_program_s_own_exit_is_its_code_unless_a_limit_made_it_fail() {
        let limits = Limits::default();
        let code = |end, account: &GuestAccount| classify_command(end, account, &limits);
        assert_eq!(code(CommandEnd::Exited(0), &refused(&[Refused::Bytes])).expect("coped"), 0);
        assert_eq!(code(CommandEnd::Exited(42), &GuestAccount::default()).expect("its own"), 42);
        let err = code(CommandEnd::Exited(1), &refused(&[Refused::Bytes])).expect_err("the quota");
        assert_eq!(err.outcome(), Outcome::DiskQuota);
        let trapped = CommandEnd::Trapped(wasmtime::Error::msg("unreachable"));
        let memory = GuestAccount { refused_memory: Some(1 << 30), ..GuestAccount::default() };
        assert_eq!(code(trapped, &memory).expect_err("memory").outcome(), Outcome::MemoryLimit);
        let trapped = CommandEnd::Trapped(wasmtime::Error::msg("unreachable"));
        assert_eq!(code(trapped, &GuestAccount::default()).expect_err("trap").outcome(), Outcome::Trap);
        let timed_out = CommandEnd::TimedOut(Duration::from_secs(1));
        assert_eq!(code(timed_out, &refused(&[Refused::Files])).expect_err("timeout").outcome(), Outcome::Timeout);
    }

    #[test]
    fn an_exec_error_says_its_message_once_in_a_chain() {
        let err = ExecError::from(RunError::ComponentUnreadable {
            path: "missing.wasm".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
        let plain = err.to_string();
        let chain = format!("{:#}", anyhow::Error::new(err));
        assert_eq!(chain, plain, "nothing repeated after the message");
        assert_eq!(plain.matches("not found").count(), 1, "{plain}");
    }

    #[test]
    fn exits_arrive_as_their_codes() {
        assert!(matches!(CommandEnd::from_call(Ok(Ok(()))), CommandEnd::Exited(0)));
        assert!(matches!(CommandEnd::from_call(Ok(Err(()))), CommandEnd::Exited(1)));
        assert!(matches!(CommandEnd::from_call(Err(wasmtime::Error::new(I32Exit(33)))), CommandEnd::Exited(33)));
        // Never a success by truncation.
        assert!(matches!(CommandEnd::from_call(Err(wasmtime::Error::new(I32Exit(256)))), CommandEnd::Exited(1)));
        assert!(matches!(CommandEnd::from_call(Err(wasmtime::Error::msg("trap"))), CommandEnd::Trapped(_)));
    }

    #[test]
    fn a_seed_is_copied_private_and_charged_and_its_links_are_refused() {
        let base = std::env::temp_dir().join(format!("exec-unit-{}", crate::fs::random_hex().expect("rng")));
        let (seed, target) = (base.join("seed"), base.join("target"));
        std::fs::create_dir_all(seed.join("a/b")).expect("seed folders");
        std::fs::create_dir_all(&target).expect("target");
        std::fs::write(seed.join("a/b/file.txt"), "12345").expect("seed file");
        let target_dir = Dir::open_ambient_dir(&target, cap_std::ambient_authority()).expect("open");
        let made = copy_seed(&seed, &target_dir, &Limits::default(), &Cancel::default()).expect("copied");
        let kinds: Vec<Kind> = made.iter().map(|seen| seen.kind).collect();
        assert_eq!(kinds, [Kind::Folder, Kind::Folder, Kind::File]);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
        assert_eq!((mode(&target.join("a/b")), mode(&target.join("a/b/file.txt"))), (0o700, 0o600));
        assert_eq!(std::fs::read_to_string(target.join("a/b/file.txt")).expect("copy"), "12345");

        let tight = Limits { max_files: 2, ..Limits::default() };
        std::fs::create_dir(base.join("target2")).expect("target2");
        let target2 = Dir::open_ambient_dir(base.join("target2"), cap_std::ambient_authority()).expect("open");
        let err = copy_seed(&seed, &target2, &tight, &Cancel::default()).expect_err("three entries");
        assert!(err.to_string().contains("file limit"), "{err}");

        std::os::unix::fs::symlink("/etc", seed.join("a/etc")).expect("link");
        std::fs::create_dir(base.join("target3")).expect("target3");
        let target3 = Dir::open_ambient_dir(base.join("target3"), cap_std::ambient_authority()).expect("open");
        let err = copy_seed(&seed, &target3, &Limits::default(), &Cancel::default()).expect_err("a link");
        assert!(err.to_string().contains("a/etc") && err.to_string().contains("symbolic link"), "{err}");
        assert!(!base.join("target3/a/etc").exists(), "never followed nor copied");
        std::fs::remove_dir_all(&base).expect("clean up");
    }
}
