//! Exhausts the host's file descriptors: opens its input file 100,000 times
//! and keeps every handle, stopping at the first error with
//! `Err(io("opened N handles, then: <io error> (<kind>)"))`, or `Ok` with
//! `outputs` = `[]` if all opens succeed. Every handle the guest holds is a
//! descriptor of the host process, shared by every tenant.
//!
//! An input that is a number M holds every handle for M milliseconds after
//! the first error before returning, so that many such guests at once hold
//! their handles at the same time; anything else returns at once.
//!
//! A correct host caps the handles one guest may hold, so that one guest
//! cannot make the host (and the other tenants' runs) fail to open files.

use std::fs::{self, File};
use std::time::Duration;

use test_programs::{Guest, PipelineError, Report, io_error, report};

const HANDLES: u32 = 100_000;

struct ManyHandles;

impl Guest for ManyHandles {
    fn process(input: String, _output_dir: String) -> Result<Report, PipelineError> {
        let hold = fs::read_to_string(&input).ok().and_then(|text| text.trim().parse::<u64>().ok());
        let mut held = Vec::new();
        for n in 0..HANDLES {
            match File::open(&input) {
                Ok(file) => held.push(file),
                Err(err) => {
                    if let Some(ms) = hold {
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                    return Err(io_error(&format!("opened {n} handles, then"), &err));
                }
            }
        }
        Ok(report(&[]))
    }
}

test_programs::export!(ManyHandles with_types_in test_programs::bindings);
