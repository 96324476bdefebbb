//! Exits the process: `std::process::exit(3)` in the middle of `process`.
//! On wasm32-wasip2 that is wasi-libc's `exit`, which calls `wasi:cli/exit`
//! `exit(err)`: WASI 0.2's `exit` carries only ok/err, so a wasmtime host
//! sees `I32Exit(1)` ("Exited with i32 exit status 1"), not 3. The input is
//! ignored.
//!
//! A correct host turns the exit into a failed run (the `wasi:cli/exit`
//! error, not a successful report), never exits itself, and keeps serving
//! other runs.

use test_programs::{Guest, PipelineError, Report};

struct Exit3;

impl Guest for Exit3 {
    fn process(_input: String, _output_dir: String) -> Result<Report, PipelineError> {
        std::process::exit(3);
    }
}

test_programs::export!(Exit3 with_types_in test_programs::bindings);
