//! The report a pipeline returns, as the host sees it: plain Rust types that
//! serialize to the `--json` output, converted from the component's WIT types
//! and checked, because a hostile guest may return anything.

use serde::Serialize;

use crate::bindings::orders::pipeline::types as wit;
use crate::text::bound;

/// Accepted orders of one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionTotal {
    pub region: String,
    pub orders: u64,
    pub total_cents: u64,
}

/// Rejected rows of one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    pub reason: String,
    pub rows: u64,
}

/// What a pipeline component reports about one run. Its names are the
/// guest's text: each is cut to
/// [`GUEST_TEXT_LIMIT`](crate::text::GUEST_TEXT_LIMIT) bytes when the report is
/// taken from the guest, and holds whatever characters the guest chose, so
/// show them to a person through [`shown`](crate::text::shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub rows: u64,
    pub accepted: u64,
    pub cancelled: u64,
    pub rejected: u64,
    pub reasons: Vec<ReasonCount>,
    pub regions: Vec<RegionTotal>,
    /// Names of the files the guest says it wrote; checked against the folder.
    pub outputs: Vec<String>,
}

impl From<wit::Report> for Report {
    fn from(report: wit::Report) -> Self {
        Self {
            rows: report.rows,
            accepted: report.accepted,
            cancelled: report.cancelled,
            rejected: report.rejected,
            reasons: report
                .reasons
                .into_iter()
                .map(|r| ReasonCount { reason: bound(r.reason), rows: r.rows })
                .collect(),
            regions: report
                .regions
                .into_iter()
                .map(|r| RegionTotal { region: bound(r.region), orders: r.orders, total_cents: r.total_cents })
                .collect(),
            // Longer than any name an output may have: cut, it still matches no file.
            outputs: report.outputs.into_iter().map(bound).collect(),
        }
    }
}

impl Report {
    /// Checks the counting rules every pipeline's report obeys:
    /// `rows = accepted + cancelled + rejected`, the reasons add up to
    /// `rejected`, and the regions' orders add up to `accepted`.
    ///
    /// # Errors
    ///
    /// A sentence naming the first rule the report breaks.
    pub fn check_consistency(&self) -> Result<(), String> {
        let outcomes = self.accepted.checked_add(self.cancelled).and_then(|sum| sum.checked_add(self.rejected));
        if outcomes != Some(self.rows) {
            return Err(format!(
                "the report says rows = {} but accepted + cancelled + rejected = {} + {} + {}",
                self.rows, self.accepted, self.cancelled, self.rejected
            ));
        }
        let by_reason = self.reasons.iter().try_fold(0u64, |sum, r| sum.checked_add(r.rows));
        if by_reason != Some(self.rejected) {
            return Err(format!("the report's reasons do not add up to its {} rejected rows", self.rejected));
        }
        let by_region = self.regions.iter().try_fold(0u64, |sum, r| sum.checked_add(r.orders));
        if by_region != Some(self.accepted) {
            return Err(format!("the report's regions do not add up to its {} accepted rows", self.accepted));
        }
        Ok(())
    }
}

/// Formats whole cents as `1234.50`.
#[must_use]
pub fn format_cents(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            rows: 4,
            accepted: 2,
            cancelled: 1,
            rejected: 1,
            reasons: vec![ReasonCount { reason: "amount".into(), rows: 1 }],
            regions: vec![RegionTotal { region: "north".into(), orders: 2, total_cents: 100 }],
            outputs: vec![],
        }
    }

    #[test]
    fn a_consistent_report_passes() {
        assert_eq!(report().check_consistency(), Ok(()));
    }

    #[test]
    fn each_broken_rule_is_named() {
        let broken = Report { rows: 5, ..report() };
        assert!(broken.check_consistency().expect_err("rows").contains("rows = 5"));
        let broken = Report { reasons: vec![], ..report() };
        assert!(broken.check_consistency().expect_err("reasons").contains("reasons"));
        let broken = Report { regions: vec![], ..report() };
        assert!(broken.check_consistency().expect_err("regions").contains("regions"));
        let overflow = Report { rows: 0, accepted: u64::MAX, cancelled: 1, ..report() };
        assert!(overflow.check_consistency().is_err());
    }

    #[test]
    fn cents_print_with_two_decimals() {
        assert_eq!(format_cents(123_450), "1234.50");
        assert_eq!(format_cents(5), "0.05");
        assert_eq!(format_cents(0), "0.00");
    }
}
