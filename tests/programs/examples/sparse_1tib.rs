//! Claims a huge file cheaply: creates `<output-dir>/sparse.bin` and sets its
//! length to 1 TiB (`File::set_len(1 << 40)`, `wasi:filesystem` `set-size`),
//! which writes no data on most file systems. Returns
//! `Err(io("set_len sparse.bin to 1 TiB: <io error> (<kind>)"))` (or `create
//! sparse.bin: ...`) on failure, else `Ok` with `outputs` = `["sparse.bin"]`,
//! every count zero. The input is ignored.
//!
//! A correct host counts a file's length, not only its blocks, against the
//! run's quota (or refuses the resize), never copies or publishes a 1 TiB
//! output, and cleans it up.

use std::fs::File;
use std::path::Path;

use test_programs::{Guest, PipelineError, Report, io_error, report};

const ONE_TIB: u64 = 1 << 40;

struct Sparse1Tib;

impl Guest for Sparse1Tib {
    fn process(_input: String, output_dir: String) -> Result<Report, PipelineError> {
        let path = Path::new(&output_dir).join("sparse.bin");
        let file = File::create(&path).map_err(|err| io_error("create sparse.bin", &err))?;
        file.set_len(ONE_TIB).map_err(|err| io_error("set_len sparse.bin to 1 TiB", &err))?;
        Ok(report(&["sparse.bin"]))
    }
}

test_programs::export!(Sparse1Tib with_types_in test_programs::bindings);
