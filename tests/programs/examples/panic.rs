//! Panics: `process` panics with the message
//! `test-programs panic: this guest always panics`, which on wasm32-wasip2
//! prints the message to stderr and then traps (`unreachable`). The input is
//! ignored.
//!
//! A correct host reports the run as failed with the trap (not a hang, not
//! the host's own crash), publishes no output, and keeps serving other runs
//! (the trapped instance is never reused).

use test_programs::{Guest, PipelineError, Report};

struct Panic;

impl Guest for Panic {
    fn process(_input: String, _output_dir: String) -> Result<Report, PipelineError> {
        panic!("test-programs panic: this guest always panics");
    }
}

test_programs::export!(Panic with_types_in test_programs::bindings);
