//! Lies in its report. Writes one real file, `<output-dir>/real.csv`
//! (`order_id,region\n1,EU\n`), and returns `Ok` with a report that does
//! not add up: `rows` 10 but `accepted` 7 + `cancelled` 1 + `rejected` 1 = 9;
//! `reasons` = `[amount: 5]` (not the 1 rejected); `regions` =
//! `[EU: 3 orders, u64::MAX cents]` (not the 7 accepted); `outputs` =
//! `["real.csv", "ghost.csv"]`, where `ghost.csv` was never written.
//! `Err(io)` only if `real.csv` cannot be written. The input is ignored.
//!
//! A correct host validates a tenant's report before trusting it: it
//! rejects the run (or flags the report) instead of publishing made-up
//! numbers, and never claims to publish a `ghost.csv` that does not exist.

use std::fs;
use std::path::Path;

use test_programs::{Guest, PipelineError, ReasonCount, RegionTotal, Report, io_error};

struct Liar;

impl Guest for Liar {
    fn process(_input: String, output_dir: String) -> Result<Report, PipelineError> {
        let path = Path::new(&output_dir).join("real.csv");
        fs::write(&path, "order_id,region\n1,EU\n")
            .map_err(|err| io_error(&format!("write {}", path.display()), &err))?;
        Ok(Report {
            rows: 10,
            accepted: 7,
            cancelled: 1,
            rejected: 1,
            reasons: vec![ReasonCount { reason: "amount".to_owned(), rows: 5 }],
            regions: vec![RegionTotal { region: "EU".to_owned(), orders: 3, total_cents: u64::MAX }],
            outputs: vec!["real.csv".to_owned(), "ghost.csv".to_owned()],
        })
    }
}

test_programs::export!(Liar with_types_in test_programs::bindings);
