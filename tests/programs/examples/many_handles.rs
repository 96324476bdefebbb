//! Exhausts the host's file descriptors: opens its input file 100,000 times
//! and keeps every handle, stopping at the first error with
//! `Err(io("opened N handles, then: <io error> (<kind>)"))`, or `Ok` with
//! `outputs` = `[]` if all opens succeed. Every handle the guest holds is a
//! descriptor of the host process, shared by every tenant.
//!
//! A correct host caps the handles one guest may hold, so that one guest
//! cannot make the host (and the other tenants' runs) fail to open files.

use std::fs::File;

use test_programs::{Guest, PipelineError, Report, io_error, report};

const HANDLES: u32 = 100_000;

struct ManyHandles;

impl Guest for ManyHandles {
    fn process(input: String, _output_dir: String) -> Result<Report, PipelineError> {
        let mut held = Vec::new();
        for n in 0..HANDLES {
            held.push(File::open(&input).map_err(|err| io_error(&format!("opened {n} handles, then"), &err))?);
        }
        Ok(report(&[]))
    }
}

test_programs::export!(ManyHandles with_types_in test_programs::bindings);
