//! One huge output: reads the input file, a number of MiB M (`300`), and
//! writes `<output-dir>/huge.bin`, M times the same 1 MiB block, where byte
//! `i` of the block is `(i * 31 + i / 4096) % 256` (so a test can compute
//! the expected SHA-256 without the file). Returns `Ok` with every count
//! zero and `outputs` = `["huge.bin"]`; `Err(io)` on the first failed
//! write. An input that is not a number means 300.
//!
//! A correct host streams a large output into its destination (a folder or
//! one tar archive) with memory that does not grow with the output's size,
//! and the delivered bytes are exactly the ones the guest wrote.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use test_programs::{Guest, PipelineError, Report, io_error, report};

const BLOCK: usize = 1 << 20;

struct HugeOutput;

impl Guest for HugeOutput {
    fn process(input: String, output_dir: String) -> Result<Report, PipelineError> {
        let content = std::fs::read_to_string(&input).map_err(|err| io_error(&format!("read {input}"), &err))?;
        let mib = content.trim().parse::<u32>().unwrap_or(300);
        let block: Vec<u8> = (0..BLOCK).map(|i| ((i * 31 + i / 4096) % 256) as u8).collect();
        let path = Path::new(&output_dir).join("huge.bin");
        let mut file = File::create(&path).map_err(|err| io_error("create huge.bin", &err))?;
        for written in 0..mib {
            file.write_all(&block).map_err(|err| io_error(&format!("write huge.bin after {written} MiB"), &err))?;
        }
        Ok(report(&["huge.bin"]))
    }
}

test_programs::export!(HugeOutput with_types_in test_programs::bindings);
