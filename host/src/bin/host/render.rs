//! How the command line words what the library says: the exit code of each
//! outcome, error messages whose remedies name this binary's flags, the
//! summary and the JSON of `--json`.

use std::io::Write as _;
use std::time::Duration;

use orders_host::text::shown;
use orders_host::{LimitHit, LimitName, Outcome, Remedy, RunError, RunOutcome};

/// The process exit code of each outcome. Usage errors exit with 2, as clap's.
pub fn exit_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Success => 0,
        Outcome::HostError => 1,
        Outcome::InvalidArgument => 2,
        Outcome::InputUnreadable => 3,
        Outcome::InvalidInput => 4,
        Outcome::PipelineError => 5,
        Outcome::ComponentInvalid => 6,
        Outcome::Trap => 7,
        Outcome::ContractViolation => 8,
        Outcome::DeliveryFailed => 9,
        Outcome::Timeout => 10,
        Outcome::MemoryLimit => 11,
        Outcome::FuelExhausted => 12,
        Outcome::DiskQuota => 13,
        Outcome::FileLimit => 14,
        Outcome::OutputTooLarge => 15,
        Outcome::CleanupFailed => 16,
        Outcome::Busy => 17,
        Outcome::Interrupted => 130,
        _ => 1,
    }
}

/// One line for the exit-code table of `--help` and the README.
fn meaning(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "the outputs were delivered",
        Outcome::HostError => "the host itself failed (a bug, or the machine is out of resources)",
        Outcome::InvalidArgument => "usage error: bad arguments, or an argument that is not valid",
        Outcome::InputUnreadable => "the input or component file cannot be read",
        Outcome::InvalidInput => "the pipeline refused the input (no header, missing or repeated column)",
        Outcome::PipelineError => "the pipeline failed while reading or writing, or a total overflowed",
        Outcome::ComponentInvalid => "the file is not a component of the orders:pipeline world",
        Outcome::Trap => "the guest crashed: trap, panic or exit",
        Outcome::ContractViolation => "the guest's report or output folder broke the contract",
        Outcome::DeliveryFailed => "the outputs could not be delivered (e.g. the output folder exists)",
        Outcome::Timeout => "the guest ran past --timeout",
        Outcome::MemoryLimit => "the guest hit --memory",
        Outcome::FuelExhausted => "the guest used up --fuel",
        Outcome::DiskQuota => "the guest hit --disk-quota",
        Outcome::FileLimit => {
            "the guest hit --max-files, --max-folders, or the fixed caps of 256 open descriptors or 64 listings"
        }
        Outcome::OutputTooLarge => "the outputs are larger than --max-output, or more than 10000 files",
        Outcome::CleanupFailed => "the sandbox could not be removed (run `host sweep`)",
        Outcome::Interrupted => "Ctrl-C or SIGTERM stopped the run; its sandbox was removed",
        Outcome::Busy => "library only: the concurrency bound was reached and the caller asked to fail fast",
        _ => "",
    }
}

/// The exit codes, for `--help`.
pub fn exit_code_table() -> String {
    let mut table = String::from("Exit codes:\n");
    for outcome in Outcome::ALL {
        table.push_str(&format!("  {:<4} {} — {}\n", exit_code(outcome), outcome.name(), meaning(outcome)));
    }
    table
}

/// Who reads a message, so its remedy names what they can change: the
/// command's flags, or the keys of a tenant in the service's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    CommandLine,
    Service,
}

/// The error as one line for stderr: what was wrong, and what to do with
/// this command's flags.
pub fn message(err: &RunError) -> String {
    message_for(err, Audience::CommandLine)
}

/// The error as one line, its remedy worded for `audience`.
pub fn message_for(err: &RunError, audience: Audience) -> String {
    match err.remedy() {
        Some(remedy) => format!("{}; {}", with_flags(&err.summary()), remedy_text(remedy, audience)),
        None => with_flags(&err.summary()),
    }
}

/// The library names the settings that choose the sandbox roots in its
/// messages and warnings (an unusable root says to choose another); this
/// command sets them with these flags.
const SETTING_FLAGS: [(&str, &str); 2] =
    [(orders_host::SANDBOX_ROOT_SETTING, "--sandbox-root"), (orders_host::MEMORY_ROOT_SETTING, "--memory-root")];

/// `text` with the library's setting names worded as this command's flags.
pub fn with_flags(text: &str) -> String {
    SETTING_FLAGS.iter().fold(text.to_owned(), |text, (setting, flag)| text.replace(setting, flag))
}

/// Log output: stderr, with the library's setting names worded as flags.
/// The formatter hands over each event whole, in one write.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().lock().write_all(with_flags(&String::from_utf8_lossy(buf)).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A job's `"error"`: the outcome's name as its kind, the message, the limit.
pub fn job_error_json(err: &RunError) -> serde_json::Value {
    serde_json::json!({
        "kind": err.outcome(),
        "message": message_for(err, Audience::Service),
        "limit": err.limit_hit().map(limit_json),
    })
}

/// The flag (`--max-files`) or config key (`max_files`) of a limit.
fn limit_key(limit: LimitName) -> Option<&'static str> {
    Some(match limit {
        LimitName::Timeout => "timeout",
        LimitName::Memory => "memory",
        LimitName::Fuel => "fuel",
        LimitName::DiskQuota => "disk_quota",
        LimitName::MaxFiles => "max_files",
        LimitName::MaxFolders => "max_folders",
        LimitName::MaxOutput => "max_output",
        _ => return None,
    })
}

fn remedy_text(remedy: Remedy, audience: Audience) -> String {
    let named = |key: &str| match audience {
        Audience::CommandLine => format!("--{}", key.replace('_', "-")),
        Audience::Service => format!("the tenant's `{key}` in the service's config"),
    };
    let raise = |limit: LimitName, why: &str| format!("raise {} {why}", named(limit_key(limit).unwrap_or_default()));
    match (remedy, audience) {
        (Remedy::Raise(limit @ LimitName::Timeout), _) => raise(limit, "if the input needs longer"),
        (Remedy::Raise(limit @ (LimitName::Memory | LimitName::Fuel)), _) => raise(limit, "if the input needs more"),
        (Remedy::Raise(limit @ LimitName::DiskQuota), _) => raise(limit, "if the outputs need more room"),
        (Remedy::Raise(limit @ (LimitName::MaxFiles | LimitName::MaxFolders)), _) => {
            raise(limit, "if the outputs need more")
        }
        (Remedy::Raise(limit @ LimitName::MaxOutput), _) => raise(limit, "to accept them"),
        (Remedy::ReplaceOrChooseAnother, Audience::CommandLine) => {
            "pass --force to replace it, or choose another --out".into()
        }
        (Remedy::ChooseAnother, Audience::CommandLine) => "choose another --out".into(),
        (Remedy::Sweep, Audience::CommandLine) => "run `host sweep` once no host is running".into(),
        (other, _) => other.to_string(),
    }
}

/// Region names are padded to the longest up to this many characters; a
/// longer one (a guest's choice) only pushes its own line out.
const MAX_REGION_COLUMN: usize = 32;

/// The names of the report are the guest's: shown escaped, as every guest text.
pub fn print_summary(outcome: &RunOutcome) {
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
        orders_host::Delivered::Folder(path) => println!("outputs in {}: {}", path.display(), names.join(", ")),
        orders_host::Delivered::Tar(path) => {
            println!("outputs in the archive {}: {}", path.display(), names.join(", "))
        }
        // In memory (this command never asks for it), or a destination of a later library.
        _ => {}
    }
}

pub fn print_json_success(outcome: &RunOutcome) {
    let destination = delivered_path(Some(&outcome.delivered));
    let value = serde_json::json!({
        "outcome": Outcome::Success,
        "exit_code": 0,
        "report": outcome.report,
        "outputs": outcome.outputs,
        "destination": destination,
        "peak_memory_bytes": outcome.peak_memory,
        "fuel_used": outcome.fuel_used,
        "bytes_written": outcome.bytes_written,
        "sandbox_peak": outcome.sandbox_peak,
        "spooled": outcome.spooled,
        "timings_us": timings_json(&outcome.timings),
    });
    print_json(&value);
}

fn timings_json(timings: &orders_host::Timings) -> serde_json::Value {
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

pub fn print_json_failure(err: &RunError) {
    let outcome = err.outcome();
    let value = serde_json::json!({
        "outcome": outcome,
        "exit_code": exit_code(outcome),
        "error": message(err),
        "limit": err.limit_hit().map(limit_json),
        "sandbox_peak": err.sandbox_peak(),
    });
    print_json(&value);
}

/// Where outputs went, for `--json` (`None` when they stayed in memory).
pub fn delivered_path(delivered: Option<&orders_host::Delivered>) -> Option<String> {
    match delivered? {
        orders_host::Delivered::Folder(path) | orders_host::Delivered::Tar(path) => Some(path.display().to_string()),
        _ => None,
    }
}

/// The limit hit, as `--json` names it: the figure with its unit in the key.
pub fn limit_json(hit: LimitHit) -> serde_json::Value {
    match hit {
        LimitHit::Timeout { limit } => serde_json::json!({ "timeout_ms": limit.as_millis() }),
        LimitHit::Deadline { limit } => serde_json::json!({ "deadline_ms": limit.as_millis() }),
        LimitHit::Memory { limit, requested } => {
            serde_json::json!({ "memory_bytes": limit.bytes(), "requested_bytes": requested })
        }
        LimitHit::Fuel { fuel } => serde_json::json!({ "fuel": fuel }),
        LimitHit::DiskQuota { limit } => serde_json::json!({ "disk_quota_bytes": limit.bytes() }),
        LimitHit::MaxFiles { limit } => serde_json::json!({ "max_files": limit }),
        LimitHit::MaxFolders { limit } => serde_json::json!({ "max_folders": limit }),
        LimitHit::MaxOutput { limit, size } => {
            serde_json::json!({ "max_output_bytes": limit.bytes(), "output_bytes": size })
        }
        LimitHit::MaxOpenHandles { limit } => serde_json::json!({ "max_open_handles": limit }),
        LimitHit::MaxOpenListings { limit } => serde_json::json!({ "max_open_listings": limit }),
        LimitHit::OpenFileLimit { limit, needed } => serde_json::json!({ "open_file_limit": limit, "needed": needed }),
        LimitHit::MaxOutputs { limit } => serde_json::json!({ "max_outputs": limit }),
        _ => serde_json::Value::Null,
    }
}

/// Pretty JSON on stdout, as `{:#}` prints it, but with every character
/// that could act on a terminal escaped (`\u009b`): JSON escapes only C0
/// controls, and the report's names are the guest's text. The value read
/// back is the same.
pub fn print_json(value: &serde_json::Value) {
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

/// serde_json's pretty layout, with [`orders_host::text::acts_on_terminal`]
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
            if orders_host::text::acts_on_terminal(c) {
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

/// Formats whole cents as `1234.50`.
fn format_cents(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_exit_code() {
        let mut codes: Vec<u8> = Outcome::ALL.iter().map(|o| exit_code(*o)).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Outcome::ALL.len());
        assert_eq!(exit_code(Outcome::InvalidArgument), 2, "2 is for usage errors, as clap's");
        assert!(Outcome::ALL.iter().all(|o| !meaning(*o).is_empty()));
    }

    #[test]
    fn cents_print_with_two_decimals() {
        assert_eq!(format_cents(123_450), "1234.50");
        assert_eq!(format_cents(5), "0.05");
        assert_eq!(format_cents(0), "0.00");
    }

    #[test]
    fn root_settings_are_worded_as_flags() {
        let err = RunError::Sandbox(std::io::Error::other(format!(
            "sandbox root /x is a symbolic link; choose another {}",
            orders_host::SANDBOX_ROOT_SETTING
        )));
        assert_eq!(
            message(&err),
            "the sandbox could not be set up: sandbox root /x is a symbolic link; choose another --sandbox-root"
        );
        let warning = format!("name a private folder on tmpfs with {} to spool", orders_host::MEMORY_ROOT_SETTING);
        assert_eq!(with_flags(&warning), "name a private folder on tmpfs with --memory-root to spool");
    }

    #[test]
    fn messages_name_the_flags_of_this_command() {
        let err = RunError::Timeout { limit: Duration::from_secs(2) };
        assert_eq!(
            message(&err),
            "the guest ran out of time: it was stopped after 2s; raise --timeout if the input needs longer"
        );
        let err = RunError::FileLimit { limit: 5, guest: None, peak: orders_host::SandboxUsage::default() };
        assert!(message(&err).ends_with("raise --max-files if the outputs need more"), "{}", message(&err));
        let err = RunError::MemoryLimit { limit: orders_host::ByteSize(1), requested: 2 };
        assert!(message(&err).ends_with("raise --memory if the input needs more"), "{}", message(&err));
    }

    #[test]
    fn a_jobs_error_names_the_tenants_config_key_and_the_limit() {
        let err = RunError::Timeout { limit: Duration::from_secs(2) };
        let json = job_error_json(&err);
        assert_eq!(json["kind"], "timeout");
        assert_eq!(json["limit"], serde_json::json!({ "timeout_ms": 2000 }));
        let message = json["message"].as_str().expect("a message");
        assert!(message.ends_with("raise the tenant's `timeout` in the service's config if the input needs longer"));
        assert!(!message.contains("--"), "{message}");
    }
}
