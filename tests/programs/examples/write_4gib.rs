//! Fills the disk: writes 4 GiB of non-zero bytes (4096 chunks of 1 MiB) into
//! `<output-dir>/big.bin` with `std::fs`. On the first failing write it
//! returns `Err(io("write big.bin failed after N MiB: <io error> (<kind>)"))`
//! so a test can see the host's answer; if all 4 GiB are written (and
//! `sync_all` succeeds) it returns `Ok` with `outputs` = `["big.bin"]`, every
//! count zero. The input is ignored.
//!
//! Beware: std writes files through a `wasi:io` output stream, and wasi-libc
//! turns any failed stream write into `EIO`, so a full disk on wasmtime 48
//! reads `write big.bin failed after 7 MiB: I/O error (os error 29)
//! (Uncategorized)`, not "no space"; only the `N MiB` tells where it stopped.
//!
//! A correct host enforces a per-run disk quota (the write fails, or the run
//! is stopped) long before 4 GiB, removes the partial file, and keeps
//! serving other runs.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use test_programs::{Guest, PipelineError, Report, io_error, report};

const CHUNK: usize = 1 << 20;
const CHUNKS: usize = 4096;

struct Write4Gib;

impl Guest for Write4Gib {
    fn process(_input: String, output_dir: String) -> Result<Report, PipelineError> {
        let path = Path::new(&output_dir).join("big.bin");
        let mut file = File::create(&path).map_err(|err| io_error("create big.bin", &err))?;
        let chunk = vec![0xA5u8; CHUNK];
        for written in 0..CHUNKS {
            file.write_all(&chunk)
                .map_err(|err| io_error(&format!("write big.bin failed after {written} MiB"), &err))?;
        }
        file.sync_all().map_err(|err| io_error("sync big.bin after 4096 MiB", &err))?;
        Ok(report(&["big.bin"]))
    }
}

test_programs::export!(Write4Gib with_types_in test_programs::bindings);
