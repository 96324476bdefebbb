//! Exhausts inodes and the host's directory handling: creates 1,000,000 empty
//! files `<output-dir>/f0` .. `<output-dir>/f999999`, stopping at the first
//! error with `Err(io("created N files, then f<N>: <io error> (<kind>)"))`.
//! If all are created it returns `Ok` with `outputs` = `[]`, every count zero
//! (the files are not listed: a million names would only test the report's
//! size). The input is ignored.
//!
//! A correct host caps the number of files (or the run's time) per run, and
//! removes whatever was created without stalling other runs.

use std::fs::File;
use std::path::Path;

use test_programs::{Guest, PipelineError, Report, io_error, report};

const FILES: u32 = 1_000_000;

struct MillionFiles;

impl Guest for MillionFiles {
    fn process(_input: String, output_dir: String) -> Result<Report, PipelineError> {
        let output = Path::new(&output_dir);
        for n in 0..FILES {
            File::create(output.join(format!("f{n}")))
                .map_err(|err| io_error(&format!("created {n} files, then f{n}"), &err))?;
        }
        Ok(report(&[]))
    }
}

test_programs::export!(MillionFiles with_types_in test_programs::bindings);
