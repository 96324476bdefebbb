//! How a guest's run ended, and what that means for the invocation: a report
//! to check and deliver, or the error class it falls in.
//!
//! A guest that fails or traps after a limit refused it failed because of
//! the limit (the first limit that refused it); a guest that hit a limit but
//! coped with it and returned a valid report has succeeded.

use std::time::Duration;

use wasmtime::Trap;
use wasmtime_wasi::I32Exit;

use crate::bindings::orders::pipeline::types::PipelineError;
use crate::error::RunError;
use crate::ledger::{Refused, Usage};
use crate::limits::Limits;
use crate::quota::MAX_OPEN_LISTINGS;
use crate::report::Report;
use crate::store::MAX_OPEN_HANDLES;
use crate::text;

/// How the guest's call ended.
#[derive(Debug)]
pub(crate) enum GuestEnd {
    /// It returned a report.
    Returned(Report),
    /// It returned an error of the pipeline world.
    Failed(PipelineError),
    /// It trapped (a crash, `exit`, fuel), or could not be instantiated.
    Trapped(wasmtime::Error),
    /// It was still running at its timeout (or the invocation's deadline).
    TimedOut(Duration),
}

/// What the store saw while the guest ran, as far as classifying goes.
#[derive(Debug, Default)]
pub(crate) struct GuestAccount {
    /// Every bound of the sandbox that refused a call, in order.
    pub refused: Vec<Refused>,
    /// The total a refused memory or table growth asked for.
    pub refused_memory: Option<usize>,
    /// The most of each figure the ledger charged the sandbox at once.
    pub peak: Usage,
    /// The guest's stderr, as kept.
    pub stderr: String,
}

/// The report to check and deliver, or the error the run ends with.
pub(crate) fn classify(end: GuestEnd, account: GuestAccount, limits: &Limits) -> Result<Report, RunError> {
    let guest = match &end {
        GuestEnd::Failed(
            PipelineError::Io(message) | PipelineError::Overflow(message) | PipelineError::InvalidInput(message),
        ) => Some(text::bounded(message)),
        _ => None,
    };
    let limit = || limit_refusal(guest.clone(), &account, limits);
    match end {
        GuestEnd::TimedOut(limit) => Err(RunError::Timeout { limit }),
        GuestEnd::Trapped(_) | GuestEnd::Failed(_) if let Some(err) = limit() => Err(err),
        GuestEnd::Trapped(err) => Err(trap(&err, limits, account.stderr)),
        GuestEnd::Failed(PipelineError::InvalidInput(message)) => Err(RunError::InvalidInput(text::bound(message))),
        GuestEnd::Failed(PipelineError::Io(message)) => Err(RunError::PipelineFailed(text::bound(message))),
        GuestEnd::Failed(PipelineError::Overflow(message)) => Err(RunError::TotalOverflow(text::bound(message))),
        GuestEnd::Returned(report) => {
            let report = report.bounded();
            report.check_consistency().map_err(RunError::ContractViolation)?;
            Ok(report)
        }
    }
}

/// The limit that refused the guest first, as the error it failed with
/// (`guest`: what it said when it failed). The descriptor cap and the bound
/// on listings are not limits of the profile, but they are limits all the
/// same: a guest stopped by them (a trap from `get-directories` included)
/// ends in the class of the file limit.
pub(crate) fn limit_refusal(guest: Option<String>, account: &GuestAccount, limits: &Limits) -> Option<RunError> {
    let peak = account.peak;
    match account.refused.first() {
        Some(Refused::Bytes) => Some(RunError::DiskQuota { limit: limits.disk_quota, guest, peak }),
        Some(Refused::Files) => Some(RunError::FileLimit { limit: limits.max_files, guest, peak }),
        Some(Refused::Folders) => Some(RunError::FolderLimit { limit: limits.max_folders, guest, peak }),
        Some(Refused::Handles) => Some(RunError::HandleLimit { limit: MAX_OPEN_HANDLES, guest, peak }),
        Some(Refused::Listings) => Some(RunError::ListingLimit { limit: MAX_OPEN_LISTINGS as u64, guest, peak }),
        None => account
            .refused_memory
            .map(|requested| RunError::MemoryLimit { limit: limits.memory, requested: requested as u64 }),
    }
}

fn trap(err: &wasmtime::Error, limits: &Limits, stderr: String) -> RunError {
    if let (Some(Trap::OutOfFuel), Some(fuel)) = (err.downcast_ref::<Trap>(), limits.fuel) {
        return RunError::FuelExhausted { fuel };
    }
    let message = match err.downcast_ref::<I32Exit>() {
        Some(exit) => format!("it called exit({}) instead of returning a result", exit.0),
        None => {
            // Guest text too: a trap's message can carry names from the guest's binary.
            let message = err.root_cause().to_string();
            text::bounded(message.lines().next().unwrap_or("unknown trap"))
        }
    };
    RunError::Trap { message, stderr }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LimitHit;
    use crate::error::Outcome;

    fn report(rows: u64) -> Report {
        Report { rows, accepted: 0, cancelled: 0, rejected: 0, reasons: vec![], regions: vec![], outputs: vec![] }
    }

    fn refused(bounds: &[Refused]) -> GuestAccount {
        GuestAccount { refused: bounds.to_vec(), ..GuestAccount::default() }
    }

    #[test]
    fn a_failure_after_a_refusal_is_that_limit() {
        let limits = Limits::default();
        let failed = || GuestEnd::Failed(PipelineError::Io("write failed".into()));
        let cases = [
            (vec![Refused::Bytes, Refused::Files], Outcome::DiskQuota),
            (vec![Refused::Handles, Refused::Bytes], Outcome::FileLimit),
            (vec![Refused::Folders], Outcome::FileLimit),
            (vec![Refused::Handles], Outcome::FileLimit),
            (vec![Refused::Listings], Outcome::FileLimit),
            (vec![], Outcome::PipelineError),
        ];
        for (bounds, outcome) in cases {
            let err = classify(failed(), refused(&bounds), &limits).expect_err("failed");
            assert_eq!(err.outcome(), outcome, "{bounds:?}: {err}");
        }
        // `get-directories` past the cap traps: the cap's class all the same.
        let trapped = GuestEnd::Trapped(wasmtime::Error::msg("the guest holds 256 descriptors"));
        let err = classify(trapped, refused(&[Refused::Handles]), &limits).expect_err("trap");
        assert_eq!(err.limit_hit(), Some(LimitHit::MaxOpenHandles { limit: MAX_OPEN_HANDLES }));
        let err = classify(failed(), refused(&[Refused::Listings]), &limits).expect_err("failed");
        assert_eq!(err.limit_hit(), Some(LimitHit::MaxOpenListings { limit: MAX_OPEN_LISTINGS as u64 }));
        let memory = GuestAccount { refused_memory: Some(1 << 30), ..GuestAccount::default() };
        let trapped = GuestEnd::Trapped(wasmtime::Error::msg("unreachable"));
        assert_eq!(classify(trapped, memory, &limits).expect_err("trap").outcome(), Outcome::MemoryLimit);
    }

    #[test]
    fn a_guest_that_coped_with_a_limit_succeeded() {
        let report = classify(GuestEnd::Returned(report(0)), refused(&[Refused::Bytes]), &Limits::default());
        assert_eq!(report.expect("a valid report wins").rows, 0);
    }

    #[test]
    fn a_lying_report_is_a_contract_violation_and_a_timeout_is_a_timeout() {
        let err =
            classify(GuestEnd::Returned(report(3)), GuestAccount::default(), &Limits::default()).expect_err("lie");
        assert_eq!(err.outcome(), Outcome::ContractViolation);
        let err = classify(GuestEnd::TimedOut(Duration::from_secs(1)), refused(&[Refused::Bytes]), &Limits::default())
            .expect_err("timeout");
        assert_eq!(err.outcome(), Outcome::Timeout, "a timeout is a timeout whatever was refused before");
    }

    #[test]
    fn exit_and_fuel_are_named() {
        let exit = GuestEnd::Trapped(wasmtime::Error::new(I32Exit(3)));
        let err = classify(exit, GuestAccount::default(), &Limits::default()).expect_err("exit");
        assert!(err.to_string().contains("exit(3)"), "{err}");
        let fuel = GuestEnd::Trapped(wasmtime::Error::new(Trap::OutOfFuel));
        let limits = Limits { fuel: Some(10), ..Limits::default() };
        assert_eq!(
            classify(fuel, GuestAccount::default(), &limits).expect_err("fuel").outcome(),
            Outcome::FuelExhausted
        );
    }
}
