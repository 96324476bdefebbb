//! Floods the standard streams: writes 256 MiB to stderr, then 256 MiB to
//! stdout, in 64 KiB chunks of text (`flood` lines). A stream that fails (a
//! host may close it or refuse more) is abandoned at its first error, which
//! is not fatal. Then writes `<output-dir>/done.txt`, two lines
//! `stderr\t<bytes accepted>\t<ok|err: error>` and the same for `stdout`, and
//! returns `Ok` with `outputs` = `["done.txt"]`, every count zero. `Err(io)`
//! only if `done.txt` cannot be written. The input is ignored.
//!
//! A correct host caps what it keeps of a guest's stdout/stderr (bounded
//! buffers, truncated logs, or discarding), so its memory and disk stay flat,
//! and still completes the run normally. Writing 512 MiB through
//! `wasi:io/streams` takes seconds (wasi-libc writes at most 4 KiB per
//! `check-write`/`blocking-flush` round trip; about 4 s on wasmtime 48 with
//! discarded stdio): a run deadline shorter than that ends it as a timeout.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use test_programs::{Guest, PipelineError, Report, io_error, report};

const CHUNK: usize = 64 << 10;
const TOTAL: usize = 256 << 20;

struct Flood;

/// Writes `TOTAL` bytes of `chunk` to `stream` and says how it went.
fn flood(name: &str, mut stream: impl Write, chunk: &[u8]) -> String {
    let mut written = 0usize;
    while written < TOTAL {
        if let Err(err) = stream.write_all(chunk) {
            return format!("{name}\t{written}\terr: {err}");
        }
        written += chunk.len();
    }
    match stream.flush() {
        Ok(()) => format!("{name}\t{written}\tok"),
        Err(err) => format!("{name}\t{written}\terr: {err}"),
    }
}

impl Guest for Flood {
    fn process(_input: String, output_dir: String) -> Result<Report, PipelineError> {
        let chunk: Vec<u8> = b"flood\n".iter().copied().cycle().take(CHUNK).collect();
        let stderr = flood("stderr", io::stderr().lock(), &chunk);
        let stdout = flood("stdout", io::stdout().lock(), &chunk);
        let path = Path::new(&output_dir).join("done.txt");
        fs::write(&path, format!("{stderr}\n{stdout}\n"))
            .map_err(|err| io_error(&format!("write {}", path.display()), &err))?;
        Ok(report(&["done.txt"]))
    }
}

test_programs::export!(Flood with_types_in test_programs::bindings);
