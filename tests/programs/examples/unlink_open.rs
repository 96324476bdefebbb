//! Tries to hold more than the quota in files it keeps open after their names
//! are gone (a host that gives back an unlinked file's bytes while the disk
//! keeps them, or gives them back again on a later `set-size(0)`).
//!
//! Input file: `unlink`, `rename-over` or `many`.
//! - `unlink`: creates `f0`, `f1`, ..., fills each with 64 KiB writes until a
//!   write fails, keeps it open, unlinks it, truncates it to 0 and fills it
//!   again (the second fill is what a double give-back would allow), and goes
//!   on with the next, until a file cannot take a single byte.
//! - `rename-over`: the same, but each full file is replaced by renaming an
//!   empty one over it while it is open.
//! - `many`: against the file limit rather than the quota: creates `f0`,
//!   `f1`, ..., writes a few bytes into each, unlinks it and keeps it open,
//!   until one cannot be made (a host that counts names, not files, never
//!   stops it: the folder stays empty).
//!
//! It always ends with `Err(io("<mode>: holding B bytes in N open files,
//! then: <error>"))`, B being the bytes the open files hold (their sizes as
//! the host reports them). A correct host keeps B within the quota.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::Path;

use test_programs::{Guest, PipelineError, Report, io_error};

const CHUNK: usize = 64 << 10;
const MOST: usize = 100_000;

fn fill(file: &mut File, chunk: &[u8]) -> (u64, std::io::Error) {
    let mut written = 0;
    loop {
        match file.write_all(chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(err) => return (written, err),
        }
    }
}

struct UnlinkOpen;

impl Guest for UnlinkOpen {
    fn process(input: String, output_dir: String) -> Result<Report, PipelineError> {
        let mode = fs::read_to_string(&input).map_err(|err| io_error("read the input", &err))?;
        let mode = mode.trim().to_owned();
        let out = Path::new(&output_dir);
        let chunk = vec![b'x'; CHUNK];
        let mut open: Vec<File> = Vec::new();
        let holding = |open: &[File]| open.iter().map(|file| file.metadata().map_or(0, |meta| meta.len())).sum::<u64>();
        for n in 0..MOST {
            let path = out.join(format!("f{n}"));
            let stopped = |open: &[File], err: &std::io::Error| {
                io_error(&format!("{mode}: holding {} bytes in {} open files, then", holding(open), open.len()), err)
            };
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|err| stopped(&open, &err))?;
            if mode == "many" {
                file.write_all(b"deleted but open\n").map_err(|err| stopped(&open, &err))?;
                fs::remove_file(&path).map_err(|err| stopped(&open, &err))?;
                open.push(file);
                continue;
            }
            let (written, failure) = fill(&mut file, &chunk);
            if written == 0 {
                open.push(file);
                return Err(stopped(&open, &failure));
            }
            if mode == "rename-over" {
                let empty = out.join("empty");
                drop(File::create(&empty).map_err(|err| stopped(&open, &err))?);
                fs::rename(&empty, &path).map_err(|err| stopped(&open, &err))?;
            } else {
                fs::remove_file(&path).map_err(|err| stopped(&open, &err))?;
                file.set_len(0).map_err(|err| stopped(&open, &err))?;
                file.seek(SeekFrom::Start(0)).map_err(|err| stopped(&open, &err))?;
                fill(&mut file, &chunk);
            }
            open.push(file);
        }
        Err(PipelineError::Io(format!("{mode}: holding {} bytes in {MOST} open files", holding(&open))))
    }
}

test_programs::export!(UnlinkOpen with_types_in test_programs::bindings);
