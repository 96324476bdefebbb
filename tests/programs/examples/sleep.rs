//! Blocks in a host call: reads the input file and, if its trimmed content is
//! a `u64`, sleeps that many milliseconds, else one hour, with
//! `std::thread::sleep` (a blocking `wasi:clocks` poll, not a CPU loop).
//! `<output-dir>/slept.txt` holds `sleeping` meanwhile (so a test can look at
//! a guest-created file while the guest runs), then the milliseconds slept;
//! it returns `Ok`
//! with `outputs` = `["slept.txt"]`, every count zero.
//!
//! Input file: a number of milliseconds (`250`), or anything else for an hour.
//!
//! A correct host interrupts a run that sleeps past its deadline (a timeout
//! that reaches guests parked in a host call, not only running code) and,
//! when several run at once, does not let one sleeper delay the others; a
//! short sleep completes normally.

use std::fs;
use std::path::Path;
use std::time::Duration;

use test_programs::{Guest, PipelineError, Report, io_error, report};

const ONE_HOUR_MS: u64 = 60 * 60 * 1000;

struct Sleep;

impl Guest for Sleep {
    fn process(input: String, output_dir: String) -> Result<Report, PipelineError> {
        let content = fs::read_to_string(&input).map_err(|err| io_error(&format!("read {input}"), &err))?;
        let millis = content.trim().parse::<u64>().unwrap_or(ONE_HOUR_MS);
        let path = Path::new(&output_dir).join("slept.txt");
        // Written before the sleep too, so a test can inspect it on disk meanwhile.
        fs::write(&path, "sleeping\n").map_err(|err| io_error(&format!("write {}", path.display()), &err))?;
        std::thread::sleep(Duration::from_millis(millis));
        fs::write(&path, format!("{millis}\n")).map_err(|err| io_error(&format!("write {}", path.display()), &err))?;
        Ok(report(&["slept.txt"]))
    }
}

test_programs::export!(Sleep with_types_in test_programs::bindings);
