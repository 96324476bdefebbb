//! Tries to make the host hold its folder listings in host memory: fills the
//! output folder with files of 200-character names (as many as the input
//! says, default 9,000, stopping quietly at the file limit), then opens as
//! many listings of it as the host allows, reading one entry from each and
//! keeping them all open. A host that reads a whole folder into memory per
//! listing holds names × listings bytes outside the guest's memory limit.
//!
//! It ends with `Err(io("N files, L listings open, then: <error>"))`, or
//! `Ok` with `outputs` = `[]` if 100,000 listings opened.

use test_programs::{Guest, PipelineError, Report};

struct ListingFlood;

impl Guest for ListingFlood {
    fn process(input: String, output_dir: String) -> Result<Report, PipelineError> {
        attack(&input, &output_dir)
    }
}

/// Raw listings exist only in WASI; natively this crate only builds.
#[cfg(not(target_os = "wasi"))]
fn attack(_input: &str, _output_dir: &str) -> Result<Report, PipelineError> {
    Err(PipelineError::Io("listing_flood runs on wasm32-wasip2 only".into()))
}

#[cfg(target_os = "wasi")]
fn attack(input: &str, output_dir: &str) -> Result<Report, PipelineError> {
    use std::fs::{self, File};
    use std::path::Path;

    use test_programs::wasi_fs::{open_dir, to_io};
    use test_programs::{io_error, report};

    const LISTINGS: usize = 100_000;
    let wanted = fs::read_to_string(input).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(9_000);
    let out = Path::new(output_dir);
    let mut files = 0;
    for n in 0..wanted {
        let name = format!("{n:0>200}");
        if File::create(out.join(name)).is_err() {
            break;
        }
        files += 1;
    }
    let folder = match open_dir(output_dir) {
        Some(Ok(folder)) => folder,
        Some(Err(err)) => return Err(io_error("open the output folder", &to_io(err))),
        None => return Err(PipelineError::Io(format!("no preopen holds {output_dir}"))),
    };
    let mut listings = Vec::new();
    for _ in 0..LISTINGS {
        match folder.read_directory() {
            Ok(listing) => {
                let _ = listing.read_directory_entry();
                listings.push(listing);
            }
            Err(err) => {
                let context = format!("{files} files, {} listings open, then", listings.len());
                return Err(io_error(&context, &to_io(err)));
            }
        }
    }
    Ok(report(&[]))
}

test_programs::export!(ListingFlood with_types_in test_programs::bindings);
