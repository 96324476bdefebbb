//! A polite tenant plugin: copies the input file to `<output-dir>/copy.csv`
//! and returns `Ok` with `rows` = the number of lines of the input,
//! (as `str::lines` counts them: the header too, no trailing empty line),
//! `accepted` = `rows`, all of them in one region `all` (so the report adds
//! up, as the host checks), every other count zero and `outputs` =
//! `["copy.csv"]`.
//!
//! Not an attack: the host's tests run it after every attack
//! (`TestHost::assert_recovers` in `tests/all/util.rs`) to check that the
//! host still works, and a correct host runs it to completion and publishes
//! `copy.csv` byte for byte equal to the input.

use std::fs;
use std::path::Path;

use test_programs::{Guest, PipelineError, RegionTotal, Report, io_error, report};

struct WellBehaved;

impl Guest for WellBehaved {
    fn process(input: String, output_dir: String) -> Result<Report, PipelineError> {
        let content = fs::read(&input).map_err(|err| io_error(&format!("read {input}"), &err))?;
        let copy = Path::new(&output_dir).join("copy.csv");
        fs::write(&copy, &content).map_err(|err| io_error(&format!("write {}", copy.display()), &err))?;
        let rows = String::from_utf8_lossy(&content).lines().count() as u64;
        let regions = vec![RegionTotal { region: "all".into(), orders: rows, total_cents: 0 }];
        Ok(Report { rows, accepted: rows, regions, ..report(&["copy.csv"]) })
    }
}

test_programs::export!(WellBehaved with_types_in test_programs::bindings);
