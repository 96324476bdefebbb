//! Burns CPU forever: an infinite loop around `std::hint::black_box`, with no
//! host call in it, so only a host that interrupts running wasm (epoch
//! interruption or fuel) can stop it. Never returns; the input is ignored.
//!
//! A correct host stops it at the run's deadline with a timeout error, frees
//! its worker, and keeps serving other runs meanwhile.

use std::hint::black_box;

use test_programs::{Guest, PipelineError, Report};

struct Spin;

impl Guest for Spin {
    fn process(input: String, output_dir: String) -> Result<Report, PipelineError> {
        black_box((&input, &output_dir));
        let mut counter = 0u64;
        loop {
            counter = black_box(counter.wrapping_add(1));
        }
    }
}

test_programs::export!(Spin with_types_in test_programs::bindings);
