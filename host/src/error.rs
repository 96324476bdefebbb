//! Every way an invocation can end other than success: a [`RunError`],
//! whose [`Outcome`] names its class (as `--json` and the service do), and
//! whose [`Remedy`] says what to do, typed, so that each front end words it
//! for its own users (the CLI names its flags; `Display` says it plainly).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::ledger::Usage;
use crate::limits::ByteSize;
use crate::text::shown;

/// Why an invocation did not deliver its outputs. `Display` is one line:
/// [`RunError::summary`] (what was wrong), then the [`Remedy`] in plain words.
///
/// Text a guest chose (messages, names) is kept cut to
/// [`GUEST_TEXT_LIMIT`](crate::text::GUEST_TEXT_LIMIT) bytes, and every text
/// field is shown through [`shown`](crate::text::shown): a guest cannot write
/// escape sequences or line breaks to an operator's terminal.
///
/// [`std::error::Error::source`] is `None` for every variant: the message
/// already says what the system said (the `source` fields' text), and an
/// error chain printed whole (`{:#}` of an `anyhow` or `wasmtime` error)
/// would say it twice. Match the variant to get at the [`io::Error`].
#[derive(Debug)]
#[non_exhaustive]
pub enum RunError {
    /// The input file cannot be opened or read, or is not a regular file.
    InputUnreadable {
        /// The path as given.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The component file cannot be read.
    ComponentUnreadable {
        /// The path as given.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The bytes are not a component of the world, or it needs what the
    /// sandbox does not offer.
    ComponentInvalid {
        /// The name it was loaded under.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The bytes are not a WASI program (a `wasi:cli/command` component or a
    /// preview1 core module), or it needs what the sandbox does not offer.
    ProgramInvalid {
        /// The name it was loaded under.
        name: String,
        /// What the bytes are, and what is accepted.
        reason: String,
    },
    /// The pipeline refused the input (its message).
    InvalidInput(String),
    /// The pipeline failed while reading or writing (its message).
    PipelineFailed(String),
    /// A total does not fit in the report (the pipeline's message).
    TotalOverflow(String),
    /// The guest trapped: a crash, a panic, `exit`.
    Trap {
        /// What the trap said (the guest's text, cut).
        message: String,
        /// The guest's stderr, as kept.
        stderr: String,
    },
    /// The guest ran past its timeout.
    Timeout {
        /// The limit that was hit.
        limit: Duration,
    },
    /// The invocation ran past the deadline its caller gave it.
    DeadlineExceeded {
        /// The limit that was hit.
        limit: Duration,
    },
    /// The guest hit its memory limit.
    MemoryLimit {
        /// The limit that was hit.
        limit: ByteSize,
        /// What the refused growth asked for, in bytes.
        requested: u64,
    },
    /// The guest used up its fuel.
    FuelExhausted {
        /// The fuel the guest had.
        fuel: u64,
    },
    /// The guest hit its disk quota.
    DiskQuota {
        /// The limit that was hit.
        limit: ByteSize,
        /// What the guest reported when it failed (its text, cut).
        guest: Option<String>,
        /// The most the host's ledger charged the sandbox at once.
        peak: Usage,
    },
    /// The guest hit its limit of files, folders and links.
    FileLimit {
        /// The limit that was hit.
        limit: u64,
        /// What the guest reported when it failed (its text, cut).
        guest: Option<String>,
        /// The most the host's ledger charged the sandbox at once.
        peak: Usage,
    },
    /// The guest hit its limit of folders.
    FolderLimit {
        /// The limit that was hit.
        limit: u64,
        /// What the guest reported when it failed (its text, cut).
        guest: Option<String>,
        /// The most the host's ledger charged the sandbox at once.
        peak: Usage,
    },
    /// The guest held as many host descriptors (descriptors, file streams,
    /// listings) as one guest may ([`crate::MAX_OPEN_HANDLES`]) and asked for more.
    HandleLimit {
        /// The cap that was hit.
        limit: u64,
        /// What the guest reported when it failed (its text, cut).
        guest: Option<String>,
        /// The most the host's ledger charged the sandbox at once.
        peak: Usage,
    },
    /// The guest held as many directory listings open as one guest may
    /// ([`crate::MAX_OPEN_LISTINGS`]) and asked for more.
    ListingLimit {
        /// The bound that was hit.
        limit: u64,
        /// What the guest reported when it failed (its text, cut).
        guest: Option<String>,
        /// The most the host's ledger charged the sandbox at once.
        peak: Usage,
    },
    /// The process may not open enough files (`RLIMIT_NOFILE`, even raised
    /// to its hard limit) for one invocation at the most every guest may
    /// hold; a runner built then could fail any tenant's run with EMFILE.
    OpenFileLimit {
        /// The process's limit, raised as far as it goes.
        limit: u64,
        /// What one invocation at a time needs, with the process's reserve.
        needed: u64,
    },
    /// The outputs are larger than the output limit.
    OutputTooLarge {
        /// The limit that was hit.
        limit: ByteSize,
        /// The outputs' total size, in bytes.
        size: u64,
    },
    /// The guest left more outputs than one run delivers.
    TooManyOutputs {
        /// The limit that was hit.
        limit: u64,
    },
    /// The guest's report or output folder broke the contract.
    ContractViolation(String),
    /// The outputs could not be delivered to `path`.
    Delivery {
        /// The path as given.
        path: PathBuf,
        /// Why.
        reason: DeliveryError,
    },
    /// The sandbox could not be made.
    Sandbox(io::Error),
    /// The sandbox could not be removed.
    Cleanup {
        /// The path as given.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The caller stopped the invocation (e.g. on Ctrl-C).
    Interrupted,
    /// No slot was free and the caller asked to fail fast, or waited past
    /// its queue timeout.
    Busy {
        /// The tenant whose bound it is, or `None` for the runner's.
        tenant: Option<String>,
    },
    /// The caller's mistake: a bad tenant id, fuel without metering, ...
    InvalidArgument(String),
    /// The runner was shut down.
    ShutDown,
    /// The host itself failed.
    Host(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())?;
        match self.remedy() {
            Some(remedy) => write!(f, "; {remedy}"),
            None => Ok(()),
        }
    }
}

// Not derived with thiserror: it takes a field named `source` for the error's
// source, which the message already shows (see the type's docs).
impl std::error::Error for RunError {}

/// Why outputs could not be delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The destination's last component is not a plain UTF-8 name.
    #[error("the destination needs a plain UTF-8 name as its last component")]
    BadName,
    /// The destination's parent folder cannot be opened.
    #[error("cannot open its parent folder {}: {source}", parent.display())]
    Parent {
        /// The parent folder.
        parent: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A folder destination exists and is not a folder.
    #[error("it exists and is not a folder")]
    NotAFolder,
    /// A tar destination exists and is not a regular file.
    #[error("it exists and is not a regular file")]
    NotAFile,
    /// A folder destination exists and is not empty, and replacing it was not asked for.
    #[error("the folder exists and is not empty")]
    FolderNotEmpty,
    /// A tar destination exists, and replacing it was not asked for.
    #[error("the file exists")]
    FileExists,
    /// Writing, flushing or renaming failed.
    #[error("{0}")]
    Io(io::Error),
}

impl From<io::Error> for DeliveryError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

/// A limit of the profile that can be raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitName {
    /// [`crate::Limits::timeout`].
    Timeout,
    /// [`crate::Invocation::deadline`].
    Deadline,
    /// [`crate::Limits::memory`].
    Memory,
    /// [`crate::Limits::fuel`].
    Fuel,
    /// [`crate::Limits::disk_quota`].
    DiskQuota,
    /// [`crate::Limits::max_files`].
    MaxFiles,
    /// [`crate::Limits::max_folders`].
    MaxFolders,
    /// [`crate::Limits::max_output`].
    MaxOutput,
}

/// What to do about a [`RunError`], for each front end to word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Remedy {
    /// Check the path and its permissions.
    CheckPath,
    /// Give a regular file.
    GiveRegularFile,
    /// Fix the input and run again.
    FixInput,
    /// Check the input and the limits, then run again.
    CheckInputAndLimits,
    /// Split the input into smaller exports.
    SplitInput,
    /// Raise this limit, if the input needs more.
    Raise(LimitName),
    /// Have the pipeline write fewer, larger files.
    FewerOutputs,
    /// Ask for the destination to be replaced, or choose another.
    ReplaceOrChooseAnother,
    /// Choose another destination.
    ChooseAnother,
    /// Sweep the root once no host runs on it.
    Sweep,
    /// Try again later.
    TryLater,
    /// Build a new runner.
    NewRunner,
    /// Have the pipeline close what it no longer reads (the cap is fixed).
    CloseHandles,
    /// Raise the process's open-file limit to at least this many.
    RaiseOpenFileLimit(u64),
}

impl std::fmt::Display for Remedy {
    /// The remedy in plain words, naming no front end's flags.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::CheckPath => "check the path and its permissions",
            Self::GiveRegularFile => "give a regular file",
            Self::FixInput => "fix the input file and run again",
            Self::CheckInputAndLimits => "check the input and the limits, then run again",
            Self::SplitInput => "split the input into smaller exports",
            Self::Raise(LimitName::Timeout) => "raise the timeout if the input needs longer",
            Self::Raise(LimitName::Deadline) => "give the invocation a later deadline",
            Self::Raise(LimitName::Memory) => "raise the memory limit if the input needs more",
            Self::Raise(LimitName::Fuel) => "raise the fuel if the input needs more",
            Self::Raise(LimitName::DiskQuota) => "raise the disk quota if the outputs need more room",
            Self::Raise(LimitName::MaxFiles) => "raise the file limit if the outputs need more",
            Self::Raise(LimitName::MaxFolders) => "raise the folder limit if the outputs need more",
            Self::Raise(LimitName::MaxOutput) => "raise the output limit to accept them",
            Self::FewerOutputs => "have the pipeline write fewer, larger files",
            Self::ReplaceOrChooseAnother => "ask for it to be replaced, or choose another destination",
            Self::ChooseAnother => "choose another destination",
            Self::Sweep => "sweep the sandbox root once no host runs on it",
            Self::TryLater => "try again later or wait for a slot",
            Self::NewRunner => "invocations need a new runner",
            Self::CloseHandles => "have the pipeline close the files and listings it no longer needs",
            Self::RaiseOpenFileLimit(needed) => {
                return write!(f, "raise the open-file limit (`ulimit -n`, RLIMIT_NOFILE) to at least {needed}");
            }
        })
    }
}

fn guest_said(message: &Option<String>) -> String {
    message.as_ref().map(|m| format!(" (the guest reported: {})", shown(m))).unwrap_or_default()
}

/// The last meaningful line of the guest's stderr: for a Rust panic, its
/// message (the `note: run with RUST_BACKTRACE` hint that follows is skipped).
fn stderr_tail(stderr: &str) -> String {
    let last = stderr.lines().rev().find(|line| !line.trim().is_empty() && !line.starts_with("note: "));
    last.map(|line| format!(" (guest stderr: {})", shown(line.trim()))).unwrap_or_default()
}

/// How an invocation ended: one name per class, stable for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
#[allow(missing_docs, reason = "each name is documented by `Outcome::name` and the README's table")]
pub enum Outcome {
    Success,
    InputUnreadable,
    ComponentInvalid,
    InvalidInput,
    PipelineError,
    Trap,
    Timeout,
    MemoryLimit,
    FuelExhausted,
    DiskQuota,
    FileLimit,
    OutputTooLarge,
    ContractViolation,
    DeliveryFailed,
    CleanupFailed,
    Interrupted,
    Busy,
    InvalidArgument,
    HostError,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Self; 19] = [
        Self::Success,
        Self::HostError,
        Self::InvalidArgument,
        Self::InputUnreadable,
        Self::InvalidInput,
        Self::PipelineError,
        Self::ComponentInvalid,
        Self::Trap,
        Self::ContractViolation,
        Self::DeliveryFailed,
        Self::Timeout,
        Self::MemoryLimit,
        Self::FuelExhausted,
        Self::DiskQuota,
        Self::FileLimit,
        Self::OutputTooLarge,
        Self::CleanupFailed,
        Self::Busy,
        Self::Interrupted,
    ];

    /// The name used in `--json`, the service's jobs and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::InputUnreadable => "input-unreadable",
            Self::ComponentInvalid => "component-invalid",
            Self::InvalidInput => "invalid-input",
            Self::PipelineError => "pipeline-error",
            Self::Trap => "trap",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory-limit",
            Self::FuelExhausted => "fuel-exhausted",
            Self::DiskQuota => "disk-quota",
            Self::FileLimit => "file-limit",
            Self::OutputTooLarge => "output-too-large",
            Self::ContractViolation => "contract-violation",
            Self::DeliveryFailed => "delivery-failed",
            Self::CleanupFailed => "cleanup-failed",
            Self::Interrupted => "interrupted",
            Self::Busy => "busy",
            Self::InvalidArgument => "invalid-argument",
            Self::HostError => "host-error",
        }
    }
}

impl RunError {
    /// The class of this error.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::InputUnreadable { .. } | Self::ComponentUnreadable { .. } => Outcome::InputUnreadable,
            Self::ComponentInvalid { .. } | Self::ProgramInvalid { .. } => Outcome::ComponentInvalid,
            Self::InvalidInput(_) => Outcome::InvalidInput,
            Self::PipelineFailed(_) | Self::TotalOverflow(_) => Outcome::PipelineError,
            Self::Trap { .. } => Outcome::Trap,
            Self::Timeout { .. } | Self::DeadlineExceeded { .. } => Outcome::Timeout,
            Self::MemoryLimit { .. } => Outcome::MemoryLimit,
            Self::FuelExhausted { .. } => Outcome::FuelExhausted,
            Self::DiskQuota { .. } => Outcome::DiskQuota,
            Self::FileLimit { .. }
            | Self::FolderLimit { .. }
            | Self::HandleLimit { .. }
            | Self::ListingLimit { .. } => Outcome::FileLimit,
            Self::OutputTooLarge { .. } | Self::TooManyOutputs { .. } => Outcome::OutputTooLarge,
            Self::ContractViolation(_) => Outcome::ContractViolation,
            Self::Delivery { .. } => Outcome::DeliveryFailed,
            Self::Cleanup { .. } => Outcome::CleanupFailed,
            Self::Interrupted => Outcome::Interrupted,
            Self::Busy { .. } => Outcome::Busy,
            Self::InvalidArgument(_) | Self::ShutDown => Outcome::InvalidArgument,
            Self::Sandbox(_) | Self::Host(_) | Self::OpenFileLimit { .. } => Outcome::HostError,
        }
    }

    /// What was wrong, in one line, without the remedy.
    #[must_use]
    pub fn summary(&self) -> String {
        match self {
            Self::InputUnreadable { path, source } => format!("cannot read the input {}: {source}", path.display()),
            Self::ComponentUnreadable { path, source } => {
                format!("cannot read the component {}: {source}", path.display())
            }
            Self::ComponentInvalid { name, reason } => {
                format!("{} is not a usable orders:pipeline@0.1.0 component: {}", shown(name), shown(reason))
            }
            Self::ProgramInvalid { name, reason } => {
                format!("{} is not a WASI program this host runs: {}", shown(name), shown(reason))
            }
            Self::InvalidInput(message) => format!("the pipeline refused the input: {}", shown(message)),
            Self::PipelineFailed(message) | Self::TotalOverflow(message) => {
                format!("the pipeline failed: {}", shown(message))
            }
            Self::Trap { message, stderr } => format!("the guest crashed: {}{}", shown(message), stderr_tail(stderr)),
            Self::Timeout { limit } => format!("the guest ran out of time: it was stopped after {limit:?}"),
            Self::DeadlineExceeded { limit } => {
                format!("the invocation ran past its deadline of {limit:?} and was stopped")
            }
            Self::MemoryLimit { limit, requested } => {
                format!("the guest hit the memory limit of {limit} (it asked for {requested} bytes)")
            }
            Self::FuelExhausted { fuel } => format!("the guest used up its fuel ({fuel} units)"),
            Self::DiskQuota { limit, guest, .. } => {
                format!("the guest hit the disk quota of {limit}{}", guest_said(guest))
            }
            Self::FileLimit { limit, guest, .. } => {
                format!("the guest hit the limit of {limit} files and folders{}", guest_said(guest))
            }
            Self::FolderLimit { limit, guest, .. } => {
                format!("the guest hit the limit of {limit} folders{}", guest_said(guest))
            }
            Self::HandleLimit { limit, guest, .. } => format!(
                "the guest held {limit} descriptors, file streams and listings at once, the most one guest may hold, \
                 and asked for more{}",
                guest_said(guest)
            ),
            Self::ListingLimit { limit, guest, .. } => format!(
                "the guest held {limit} directory listings open at once, the most one guest may hold, and asked for \
                 more{}",
                guest_said(guest)
            ),
            Self::OpenFileLimit { limit, needed } => format!(
                "the process may open {limit} files (RLIMIT_NOFILE), fewer than the {needed} one invocation \
                 and the process's own files may need"
            ),
            Self::OutputTooLarge { limit, size } => {
                format!("the outputs are {size} bytes, more than the limit of {limit}")
            }
            Self::TooManyOutputs { limit } => {
                format!("the guest left more than {limit} outputs, the most one run delivers; nothing was delivered")
            }
            Self::ContractViolation(message) => {
                format!("the guest broke the pipeline contract: {}; nothing was delivered", shown(message))
            }
            Self::Delivery { path, reason } => {
                format!("cannot deliver the outputs to {}: {}", path.display(), shown(&reason.to_string()))
            }
            Self::Sandbox(err) => format!("the sandbox could not be set up: {err}"),
            Self::Cleanup { path, source } => format!("the sandbox {} could not be removed: {source}", path.display()),
            Self::Interrupted => "interrupted: the run was stopped and its sandbox removed".to_owned(),
            Self::Busy { tenant } => format!(
                "busy: {} is at its concurrency bound",
                tenant.as_deref().map_or_else(|| "the runner".to_owned(), |t| format!("tenant {t}"))
            ),
            Self::InvalidArgument(message) => format!("invalid argument: {message}"),
            Self::ShutDown => "the runner was shut down".to_owned(),
            Self::Host(message) => format!("host error: {}", shown(message)),
        }
    }

    /// What to do about it, when something can be done.
    #[must_use]
    pub fn remedy(&self) -> Option<Remedy> {
        Some(match self {
            Self::InputUnreadable { source, .. } if source.kind() == io::ErrorKind::InvalidInput => {
                Remedy::GiveRegularFile
            }
            Self::InputUnreadable { .. } | Self::ComponentUnreadable { .. } => Remedy::CheckPath,
            Self::InvalidInput(_) => Remedy::FixInput,
            Self::PipelineFailed(_) => Remedy::CheckInputAndLimits,
            Self::TotalOverflow(_) => Remedy::SplitInput,
            Self::Timeout { .. } => Remedy::Raise(LimitName::Timeout),
            Self::DeadlineExceeded { .. } => Remedy::Raise(LimitName::Deadline),
            Self::MemoryLimit { .. } => Remedy::Raise(LimitName::Memory),
            Self::FuelExhausted { .. } => Remedy::Raise(LimitName::Fuel),
            Self::DiskQuota { .. } => Remedy::Raise(LimitName::DiskQuota),
            Self::FileLimit { .. } => Remedy::Raise(LimitName::MaxFiles),
            Self::FolderLimit { .. } => Remedy::Raise(LimitName::MaxFolders),
            Self::HandleLimit { .. } | Self::ListingLimit { .. } => Remedy::CloseHandles,
            Self::OpenFileLimit { needed, .. } => Remedy::RaiseOpenFileLimit(*needed),
            Self::OutputTooLarge { .. } => Remedy::Raise(LimitName::MaxOutput),
            Self::TooManyOutputs { .. } => Remedy::FewerOutputs,
            Self::Delivery { reason: DeliveryError::FolderNotEmpty | DeliveryError::FileExists, .. } => {
                Remedy::ReplaceOrChooseAnother
            }
            Self::Delivery {
                reason: DeliveryError::NotAFolder | DeliveryError::NotAFile | DeliveryError::BadName,
                ..
            } => Remedy::ChooseAnother,
            Self::Cleanup { .. } => Remedy::Sweep,
            Self::Busy { .. } => Remedy::TryLater,
            Self::ShutDown => Remedy::NewRunner,
            _ => return None,
        })
    }

    /// For a limit of the sandbox (disk quota, files, folders, descriptors,
    /// listings): the most of each figure the host's ledger charged the
    /// sandbox at once, whatever the guest says.
    #[must_use]
    pub fn sandbox_peak(&self) -> Option<Usage> {
        match self {
            Self::DiskQuota { peak, .. }
            | Self::FileLimit { peak, .. }
            | Self::FolderLimit { peak, .. }
            | Self::HandleLimit { peak, .. }
            | Self::ListingLimit { peak, .. } => Some(*peak),
            _ => None,
        }
    }

    /// The limit that was hit, with its figure (and what passed it, where
    /// that is known); `None` when the error is not a limit's.
    #[must_use]
    pub fn limit_hit(&self) -> Option<LimitHit> {
        Some(match *self {
            Self::Timeout { limit } => LimitHit::Timeout { limit },
            Self::DeadlineExceeded { limit } => LimitHit::Deadline { limit },
            Self::MemoryLimit { limit, requested } => LimitHit::Memory { limit, requested },
            Self::FuelExhausted { fuel } => LimitHit::Fuel { fuel },
            Self::DiskQuota { limit, .. } => LimitHit::DiskQuota { limit },
            Self::FileLimit { limit, .. } => LimitHit::MaxFiles { limit },
            Self::FolderLimit { limit, .. } => LimitHit::MaxFolders { limit },
            Self::HandleLimit { limit, .. } => LimitHit::MaxOpenHandles { limit },
            Self::ListingLimit { limit, .. } => LimitHit::MaxOpenListings { limit },
            Self::OpenFileLimit { limit, needed } => LimitHit::OpenFileLimit { limit, needed },
            Self::OutputTooLarge { limit, size } => LimitHit::MaxOutput { limit, size },
            Self::TooManyOutputs { limit } => LimitHit::MaxOutputs { limit },
            _ => return None,
        })
    }
}

/// A limit an invocation hit, with its figure: what [`RunError::limit_hit`]
/// gives, for a front end to show (the `host` binary prints it in `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitHit {
    /// [`Limits::timeout`](crate::Limits::timeout).
    Timeout {
        /// The limit.
        limit: Duration,
    },
    /// The invocation's deadline ([`Invocation::deadline`](crate::Invocation::deadline)).
    Deadline {
        /// The limit.
        limit: Duration,
    },
    /// [`Limits::memory`](crate::Limits::memory).
    Memory {
        /// The limit.
        limit: ByteSize,
        /// What the refused growth asked for, in bytes.
        requested: u64,
    },
    /// [`Limits::fuel`](crate::Limits::fuel).
    Fuel {
        /// The fuel the guest had.
        fuel: u64,
    },
    /// [`Limits::disk_quota`](crate::Limits::disk_quota).
    DiskQuota {
        /// The limit.
        limit: ByteSize,
    },
    /// [`Limits::max_files`](crate::Limits::max_files).
    MaxFiles {
        /// The limit.
        limit: u64,
    },
    /// [`Limits::max_folders`](crate::Limits::max_folders).
    MaxFolders {
        /// The limit.
        limit: u64,
    },
    /// The descriptors one guest may hold at once
    /// ([`MAX_OPEN_HANDLES`](crate::MAX_OPEN_HANDLES)).
    MaxOpenHandles {
        /// The limit.
        limit: u64,
    },
    /// The directory listings one guest may have open at once.
    MaxOpenListings {
        /// The limit.
        limit: u64,
    },
    /// The process's open-file limit, too low for even one invocation.
    OpenFileLimit {
        /// The process's limit.
        limit: u64,
        /// What one invocation needs.
        needed: u64,
    },
    /// [`Limits::max_output`](crate::Limits::max_output).
    MaxOutput {
        /// The limit.
        limit: ByteSize,
        /// The outputs' total size, in bytes.
        size: u64,
    },
    /// [`MAX_OUTPUTS`](crate::MAX_OUTPUTS).
    MaxOutputs {
        /// The limit.
        limit: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_file_says_what_the_system_said_once_even_in_a_chain() {
        let missing = || io::Error::from(io::ErrorKind::NotFound);
        let os_text = missing().to_string();
        let errors = [
            RunError::ComponentUnreadable { path: "missing.wasm".into(), source: missing() },
            RunError::InputUnreadable { path: "missing.csv".into(), source: missing() },
            RunError::Cleanup { path: "sandbox".into(), source: missing() },
        ];
        for err in errors {
            let plain = err.to_string();
            assert_eq!(plain.matches(&os_text).count(), 1, "{plain}");
            // As `host serve` prints a component it cannot load, and as any
            // embedder's `anyhow` or `wasmtime` error prints a chain.
            let chain = format!("{:#}", anyhow::Error::new(err).context("[components] mine = missing.wasm"));
            assert_eq!(chain.matches(&os_text).count(), 1, "{chain}");
            assert!(chain.starts_with("[components] mine = missing.wasm: ") && chain.ends_with(&plain), "{chain}");
        }
    }

    #[test]
    fn every_outcome_has_its_own_name() {
        let mut names: Vec<&str> = Outcome::ALL.iter().map(|o| o.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Outcome::ALL.len());
    }

    #[test]
    fn names_match_their_json_form() {
        for outcome in Outcome::ALL {
            assert_eq!(serde_json::to_value(outcome).expect("json"), serde_json::json!(outcome.name()));
        }
    }

    #[test]
    fn a_trap_message_carries_the_last_stderr_line() {
        let err = RunError::Trap {
            message: "wasm trap: unreachable".into(),
            stderr: "boom\npanicked at x\nnote: run with `RUST_BACKTRACE=1`\n\n".into(),
        };
        assert!(err.to_string().ends_with("(guest stderr: panicked at x)"), "{err}");
    }

    #[test]
    fn guest_text_is_shown_escaped_on_one_line() {
        let err = RunError::InvalidInput("\u{1b}]0;title\u{7}bad\nheader".into());
        assert_eq!(
            err.to_string(),
            "the pipeline refused the input: \\u{1b}]0;title\\u{7}bad\\u{a}header; fix the input file and run again"
        );
        let err = RunError::Trap { message: "trap\r".into(), stderr: "panicked: \u{1b}[2J boom\n".into() };
        assert!(err.to_string().ends_with("trap\\u{d} (guest stderr: panicked: \\u{1b}[2J boom)"), "{err}");
        let err = RunError::DiskQuota { limit: ByteSize(1), guest: Some("x".repeat(1 << 20)), peak: Usage::default() };
        assert!(err.to_string().len() < 2 * crate::text::GUEST_TEXT_LIMIT, "a long message is cut when shown");
    }

    #[test]
    fn messages_name_no_flag_and_say_what_to_do() {
        let errors = [
            RunError::Timeout { limit: Duration::from_secs(2) },
            RunError::Delivery { path: "out".into(), reason: DeliveryError::FolderNotEmpty },
            RunError::TooManyOutputs { limit: 10_000 },
            RunError::Busy { tenant: Some("acme".into()) },
        ];
        for err in errors {
            let text = err.to_string();
            assert!(!text.contains("--"), "{text}");
            assert!(err.remedy().is_some() && text.contains("; "), "{text}");
        }
    }

    #[test]
    fn too_many_outputs_is_output_too_large_with_its_bound() {
        let err = RunError::TooManyOutputs { limit: 10_000 };
        assert_eq!(err.outcome(), Outcome::OutputTooLarge);
        assert_eq!(err.limit_hit(), Some(LimitHit::MaxOutputs { limit: 10_000 }));
    }
}
