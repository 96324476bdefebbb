//! Every way a run can end other than success, with its outcome name (as in
//! `--json`) and its exit code (as documented in the README and `--help`).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits::ByteSize;
use crate::text::shown;

/// Why a run did not deliver its outputs. The `Display` text is one line that
/// says what was wrong and what to do.
///
/// Text a guest chose (messages, names) is kept cut to
/// [`GUEST_TEXT_LIMIT`](crate::text::GUEST_TEXT_LIMIT) bytes, and `Display`
/// shows every text field through [`shown`](crate::text::shown): a guest
/// cannot write escape sequences or line breaks to the operator's terminal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("cannot read the input {}: {source}; check the path and its permissions", path.display())]
    InputUnreadable { path: PathBuf, source: io::Error },

    #[error("cannot read the component {}: {source}; check the path and its permissions", path.display())]
    ComponentUnreadable { path: PathBuf, source: io::Error },

    #[error("{} is not a usable orders:pipeline@0.1.0 component: {}", shown(.name), shown(.reason))]
    ComponentInvalid { name: String, reason: String },

    #[error("the pipeline refused the input: {}; fix the input file and run again", shown(.0))]
    InvalidInput(String),

    #[error("the pipeline failed: {}", shown(.0))]
    PipelineFailed(String),

    #[error("the guest crashed: {}{}", shown(.message), stderr_tail(.stderr))]
    Trap { message: String, stderr: String },

    #[error("the guest ran out of time: it was stopped after {limit:?}; raise --timeout if the input needs longer")]
    Timeout { limit: Duration },

    #[error(
        "the guest hit the memory limit of {limit} (it asked for {requested} bytes); raise --memory if the input needs more"
    )]
    MemoryLimit { limit: ByteSize, requested: u64 },

    #[error("the guest used up its fuel ({fuel} units); raise --fuel if the input needs more")]
    FuelExhausted { fuel: u64 },

    #[error("the guest hit the disk quota of {limit}{}; raise --disk-quota if the outputs need more room", guest_said(.guest))]
    DiskQuota { limit: ByteSize, guest: Option<String> },

    #[error("the guest hit the limit of {limit} files and folders{}; raise --max-files if the outputs need more", guest_said(.guest))]
    FileLimit { limit: u64, guest: Option<String> },

    #[error("the guest hit the limit of {limit} folders{}; raise --max-folders if the outputs need more", guest_said(.guest))]
    FolderLimit { limit: u64, guest: Option<String> },

    #[error("the outputs are {size} bytes, more than the limit of {limit}; raise --max-output to accept them")]
    OutputTooLarge { limit: ByteSize, size: u64 },

    #[error(
        "the guest left more than {limit} outputs, the most one run delivers; nothing was delivered; have the pipeline write fewer, larger files"
    )]
    TooManyOutputs { limit: u64 },

    #[error("the guest broke the pipeline contract: {}; nothing was delivered", shown(.0))]
    ContractViolation(String),

    #[error("cannot deliver the outputs to {}: {}", path.display(), shown(.reason))]
    Delivery { path: PathBuf, reason: String },

    #[error("the sandbox could not be set up: {0}")]
    Sandbox(io::Error),

    #[error("the sandbox {} could not be removed: {source}; run `host sweep` once no host is running", path.display())]
    Cleanup { path: PathBuf, source: io::Error },

    #[error("interrupted: the run was stopped and its sandbox removed")]
    Interrupted,

    #[error("busy: {} is at its concurrency bound; try again later or wait for a slot", .tenant.as_deref().map_or_else(|| "the runner".to_owned(), |t| format!("tenant {t}")))]
    Busy { tenant: Option<String> },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("the runner was shut down; invocations need a new runner")]
    ShutDown,

    #[error("host error: {}", shown(.0))]
    Host(String),
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

/// How a run ended: one name per failure class, stable for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
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
    /// Every outcome, in exit-code order (for docs and tests).
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

    /// The process exit code of `host run` for this outcome. Usage errors
    /// exit with 2, as clap does.
    #[must_use]
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::HostError => 1,
            Self::InvalidArgument => 2,
            Self::InputUnreadable => 3,
            Self::InvalidInput => 4,
            Self::PipelineError => 5,
            Self::ComponentInvalid => 6,
            Self::Trap => 7,
            Self::ContractViolation => 8,
            Self::DeliveryFailed => 9,
            Self::Timeout => 10,
            Self::MemoryLimit => 11,
            Self::FuelExhausted => 12,
            Self::DiskQuota => 13,
            Self::FileLimit => 14,
            Self::OutputTooLarge => 15,
            Self::CleanupFailed => 16,
            Self::Busy => 17,
            Self::Interrupted => 130,
        }
    }

    /// The name used in `--json` and logs.
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
            Self::HostError => "host-error",
            Self::InvalidArgument => "invalid-argument",
        }
    }

    /// One line for the exit-code table of `--help` and the README.
    #[must_use]
    pub fn meaning(self) -> &'static str {
        match self {
            Self::Success => "the outputs were delivered",
            Self::HostError => "the host itself failed (a bug, or the machine is out of resources)",
            Self::InvalidArgument => "usage error: bad arguments, or an argument that is not valid",
            Self::InputUnreadable => "the input or component file cannot be read",
            Self::InvalidInput => "the pipeline refused the input (no header, missing or repeated column)",
            Self::PipelineError => "the pipeline failed while reading or writing, or a total overflowed",
            Self::ComponentInvalid => "the file is not a component of the orders:pipeline world",
            Self::Trap => "the guest crashed: trap, panic or exit",
            Self::ContractViolation => "the guest's report or output folder broke the contract",
            Self::DeliveryFailed => "the outputs could not be delivered (e.g. the output folder exists)",
            Self::Timeout => "the guest ran past --timeout",
            Self::MemoryLimit => "the guest hit --memory",
            Self::FuelExhausted => "the guest used up --fuel",
            Self::DiskQuota => "the guest hit --disk-quota",
            Self::FileLimit => "the guest hit --max-files or --max-folders",
            Self::OutputTooLarge => "the outputs are larger than --max-output, or more than 10000 files",
            Self::CleanupFailed => "the sandbox could not be removed (run `host sweep`)",
            Self::Interrupted => "Ctrl-C or SIGTERM stopped the run; its sandbox was removed",
            Self::Busy => "library only: the concurrency bound was reached and the caller asked to fail fast",
        }
    }
}

impl RunError {
    /// The failure class of this error.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::InputUnreadable { .. } | Self::ComponentUnreadable { .. } => Outcome::InputUnreadable,
            Self::ComponentInvalid { .. } => Outcome::ComponentInvalid,
            Self::InvalidInput(_) => Outcome::InvalidInput,
            Self::PipelineFailed(_) => Outcome::PipelineError,
            Self::Trap { .. } => Outcome::Trap,
            Self::Timeout { .. } => Outcome::Timeout,
            Self::MemoryLimit { .. } => Outcome::MemoryLimit,
            Self::FuelExhausted { .. } => Outcome::FuelExhausted,
            Self::DiskQuota { .. } => Outcome::DiskQuota,
            Self::FileLimit { .. } | Self::FolderLimit { .. } => Outcome::FileLimit,
            Self::OutputTooLarge { .. } | Self::TooManyOutputs { .. } => Outcome::OutputTooLarge,
            Self::ContractViolation(_) => Outcome::ContractViolation,
            Self::Delivery { .. } => Outcome::DeliveryFailed,
            Self::Cleanup { .. } => Outcome::CleanupFailed,
            Self::Interrupted => Outcome::Interrupted,
            Self::Busy { .. } => Outcome::Busy,
            Self::InvalidArgument(_) | Self::ShutDown => Outcome::InvalidArgument,
            Self::Sandbox(_) | Self::Host(_) => Outcome::HostError,
        }
    }

    /// The figure that was hit, for `--json` (`"limit": ...`).
    #[must_use]
    pub fn limit_hit(&self) -> Option<serde_json::Value> {
        match self {
            Self::Timeout { limit } => Some(serde_json::json!({ "timeout_ms": limit.as_millis() })),
            Self::MemoryLimit { limit, requested } => {
                Some(serde_json::json!({ "memory_bytes": limit.bytes(), "requested_bytes": requested }))
            }
            Self::FuelExhausted { fuel } => Some(serde_json::json!({ "fuel": fuel })),
            Self::DiskQuota { limit, .. } => Some(serde_json::json!({ "disk_quota_bytes": limit.bytes() })),
            Self::FileLimit { limit, .. } => Some(serde_json::json!({ "max_files": limit })),
            Self::FolderLimit { limit, .. } => Some(serde_json::json!({ "max_folders": limit })),
            Self::OutputTooLarge { limit, size } => {
                Some(serde_json::json!({ "max_output_bytes": limit.bytes(), "output_bytes": size }))
            }
            Self::TooManyOutputs { limit } => Some(serde_json::json!({ "max_outputs": limit })),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_exit_code_and_name() {
        let mut codes: Vec<u8> = Outcome::ALL.iter().map(|o| o.exit_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Outcome::ALL.len());
        assert_eq!(Outcome::InvalidArgument.exit_code(), 2, "2 is for usage errors, as clap's");
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
        let err = RunError::DiskQuota { limit: ByteSize(1), guest: Some("x".repeat(1 << 20)) };
        assert!(err.to_string().len() < 2 * crate::text::GUEST_TEXT_LIMIT, "a long message is cut when shown");
    }

    #[test]
    fn too_many_outputs_is_output_too_large_with_its_bound() {
        let err = RunError::TooManyOutputs { limit: 10_000 };
        assert_eq!(err.outcome(), Outcome::OutputTooLarge);
        assert_eq!(err.limit_hit(), Some(serde_json::json!({ "max_outputs": 10_000 })));
        assert_eq!(crate::outputs::MAX_OUTPUTS, 10_000, "the bound is written out in `Outcome::meaning`");
        assert!(Outcome::OutputTooLarge.meaning().contains("10000"));
    }
}
