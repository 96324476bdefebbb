//! Tries to undo the quota and the file limits by renaming entries onto
//! themselves (a host that gives back what a rename's target held, even when
//! source and target are the same file, forgets the entry each time).
//!
//! Input file: `bytes`, `files` or `folders`.
//! - `bytes`: creates `f0`, `f1`, ... in the output folder, fills each with
//!   64 KiB writes until a write fails, renames it onto itself, and goes on
//!   with the next, until a file cannot take a single byte.
//! - `files`: creates empty files `f0`, `f1`, ..., each renamed onto itself.
//! - `folders`: the same with folders `d0`, `d1`, ...
//!
//! It always ends with `Err(io("<mode>: made N entries holding B bytes, then:
//! <error>"))`, B being the bytes its files hold. A correct host stops it at
//! the quota, the file limit or the folder limit: N and B stay within them.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::Path;

use test_programs::{Guest, PipelineError, Report, io_error};

const CHUNK: usize = 64 << 10;
const MOST: usize = 1_000_000;

struct RenameOntoItself;

impl Guest for RenameOntoItself {
    fn process(input: String, output_dir: String) -> Result<Report, PipelineError> {
        let mode = fs::read_to_string(&input).map_err(|err| io_error("read the input", &err))?;
        let mode = mode.trim().to_owned();
        let out = Path::new(&output_dir);
        let mut held = 0u64;
        let chunk = vec![b'x'; CHUNK];
        let stopped = |made: usize, held: u64, err: &std::io::Error| {
            io_error(&format!("{mode}: made {made} entries holding {held} bytes, then"), err)
        };
        for made in 0..MOST {
            let path = match mode.as_str() {
                "folders" => out.join(format!("d{made}")),
                _ => out.join(format!("f{made}")),
            };
            match mode.as_str() {
                "folders" => fs::create_dir(&path).map_err(|err| stopped(made, held, &err))?,
                "files" => drop(File::create(&path).map_err(|err| stopped(made, held, &err))?),
                _ => {
                    let mut file = File::create(&path).map_err(|err| stopped(made, held, &err))?;
                    let mut written = 0;
                    let failure = loop {
                        match file.write_all(&chunk) {
                            Ok(()) => written += CHUNK as u64,
                            Err(err) => break err,
                        }
                    };
                    held += fs::metadata(&path).map(|meta| meta.len()).unwrap_or(written);
                    if written == 0 {
                        return Err(stopped(made + 1, held, &failure));
                    }
                }
            }
            fs::rename(&path, &path).map_err(|err| stopped(made + 1, held, &err))?;
        }
        Err(PipelineError::Io(format!("{mode}: made {MOST} entries holding {held} bytes, and nothing stopped it")))
    }
}

test_programs::export!(RenameOntoItself with_types_in test_programs::bindings);
