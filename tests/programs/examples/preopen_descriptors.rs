//! Tries to pass the host's descriptor cap through its preopens: opens its
//! input as often as the host allows, keeping every handle, then asks for its
//! folders (`get-directories`) again and again, dropping what it got (a host
//! that hands preopens out uncounted but counts their drops lowers its count
//! each time), and opens more; twenty rounds.
//!
//! It always ends with `Err(io("holding N descriptors, then: <error>"))`, N
//! being the files it holds open. A correct host keeps N within its cap.

use test_programs::{Guest, PipelineError, Report};

struct PreopenDescriptors;

impl Guest for PreopenDescriptors {
    fn process(input: String, _output_dir: String) -> Result<Report, PipelineError> {
        attack(&input)
    }
}

/// Raw `get-directories` exists only in WASI; natively this crate only builds.
#[cfg(not(target_os = "wasi"))]
fn attack(_input: &str) -> Result<Report, PipelineError> {
    Err(PipelineError::Io("preopen_descriptors runs on wasm32-wasip2 only".into()))
}

#[cfg(target_os = "wasi")]
fn attack(input: &str) -> Result<Report, PipelineError> {
    use std::fs::File;

    use test_programs::io_error;
    use wasip2::filesystem::preopens::get_directories;

    const ROUNDS: usize = 20;
    const DROPS_PER_ROUND: usize = 500;

    let mut files = Vec::new();
    let mut last_error = None;
    for _ in 0..ROUNDS {
        // As many as the host allows...
        loop {
            match File::open(input) {
                Ok(file) => files.push(file),
                Err(err) => {
                    last_error = Some(err);
                    break;
                }
            }
        }
        // ... then preopens taken and dropped: a host that counts the drops
        // but not the handing out lowers its count by two each time.
        for _ in 0..DROPS_PER_ROUND {
            drop(get_directories());
        }
    }
    let err = last_error.unwrap_or_else(|| std::io::Error::other("no open failed"));
    Err(io_error(&format!("holding {} descriptors, then", files.len()), &err))
}

test_programs::export!(PreopenDescriptors with_types_in test_programs::bindings);
