//! Makes the host spend time after it ended: creates folders until it is
//! stopped, ten flat ones per nested level (`d0/`, `d0/e0..e9`, `d0/d1/`,
//! ...), so removing the sandbox takes a walk over all of them.
//!
//! It ends with `Err(io("made N folders, then: <error>"))`, or `Ok` with
//! `outputs` = `[]` after 1,000,000 folders. A correct host bounds the
//! folders (and so the removal time) well below that.

use std::fs;
use std::path::PathBuf;

use test_programs::{Guest, PipelineError, Report, io_error, report};

const MOST: usize = 1_000_000;

struct FolderBomb;

impl Guest for FolderBomb {
    fn process(_input: String, output_dir: String) -> Result<Report, PipelineError> {
        let mut level = PathBuf::from(output_dir);
        let mut made = 0;
        while made < MOST {
            level.push(format!("d{made}"));
            fs::create_dir(&level).map_err(|err| io_error(&format!("made {made} folders, then"), &err))?;
            made += 1;
            for flat in 0..10 {
                fs::create_dir(level.join(format!("e{flat}")))
                    .map_err(|err| io_error(&format!("made {made} folders, then"), &err))?;
                made += 1;
            }
        }
        Ok(report(&[]))
    }
}

test_programs::export!(FolderBomb with_types_in test_programs::bindings);
