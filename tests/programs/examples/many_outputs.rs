//! Floods delivery with outputs: reads the input file, a number N (`2000`),
//! and writes N small files `<output-dir>/out-00000.csv` .. (content
//! `output <n>\n`), closing each before the next, so the guest itself never
//! holds more than one descriptor. Returns `Ok` with every count zero and
//! `outputs` listing all N names, so the folder and the report agree: the
//! only thing wrong is how many there are. `Err(io)` on the first file that
//! cannot be written (the guest's `--max-files` must allow N). An input that
//! is not a number means 2000.
//!
//! A correct host delivers any number of outputs up to its documented bound
//! with a small, fixed number of its own descriptors open at once (a host
//! that opens every output before delivering runs out of descriptors under
//! `ulimit -n 1024`), and refuses more than its bound before delivering any.

use std::fs;
use std::path::Path;

use test_programs::{Guest, PipelineError, Report, io_error};

struct ManyOutputs;

impl Guest for ManyOutputs {
    fn process(input: String, output_dir: String) -> Result<Report, PipelineError> {
        let content = fs::read_to_string(&input).map_err(|err| io_error(&format!("read {input}"), &err))?;
        let count = content.trim().parse::<u32>().unwrap_or(2000);
        let out = Path::new(&output_dir);
        let mut outputs = Vec::new();
        for n in 0..count {
            let name = format!("out-{n:05}.csv");
            fs::write(out.join(&name), format!("output {n}\n"))
                .map_err(|err| io_error(&format!("wrote {n} outputs, then {name}"), &err))?;
            outputs.push(name);
        }
        Ok(Report {
            rows: 0,
            accepted: 0,
            cancelled: 0,
            rejected: 0,
            reasons: Vec::new(),
            regions: Vec::new(),
            outputs,
        })
    }
}

test_programs::export!(ManyOutputs with_types_in test_programs::bindings);
