//! Forges its output's times: writes `<output-dir>/future.txt` (`from the
//! future\n`), then sets its access and modification times to
//! 2100-01-01T00:00:00Z (`File::set_times`, wasi `set-times`), reads them
//! back and returns `Ok` with every count zero and `outputs` =
//! `["future.txt"]`; `Err(io)` if setting the times fails or they do not
//! read back as set, so a test knows the forgery took inside the sandbox.
//! The input is ignored.
//!
//! A correct host stamps what it delivers with its own time: a guest must
//! not choose the times the user's tools (make, backups, retention jobs)
//! will see on the delivered files or archive entries.

use std::fs::{self, FileTimes};
use std::path::Path;
use std::time::{Duration, SystemTime};

use test_programs::{Guest, PipelineError, Report, io_error, report};

/// 2100-01-01T00:00:00Z.
const YEAR_2100: u64 = 4_102_444_800;

struct FutureMtime;

impl Guest for FutureMtime {
    fn process(_input: String, output_dir: String) -> Result<Report, PipelineError> {
        let path = Path::new(&output_dir).join("future.txt");
        fs::write(&path, "from the future\n").map_err(|err| io_error("write future.txt", &err))?;
        let file = fs::OpenOptions::new().write(true).open(&path).map_err(|err| io_error("open future.txt", &err))?;
        let future = SystemTime::UNIX_EPOCH + Duration::from_secs(YEAR_2100);
        file.set_times(FileTimes::new().set_accessed(future).set_modified(future))
            .map_err(|err| io_error("set the times of future.txt", &err))?;
        let modified = file
            .metadata()
            .and_then(|meta| meta.modified())
            .map_err(|err| io_error("read the times of future.txt back", &err))?;
        if modified != future {
            return Err(PipelineError::Io(format!("future.txt's mtime reads back as {modified:?}, not 2100")));
        }
        Ok(report(&["future.txt"]))
    }
}

test_programs::export!(FutureMtime with_types_in test_programs::bindings);
