//! Abuses output names. Creates, in the output folder, files (content
//! `odd\n`) named `new\nline.csv` (a newline), `-rf`, `aaa…a.csv` (251 `a`s
//! and `.csv`: 255 bytes, the usual limit), `...` and `tab\tname.csv` (a
//! tab), ignoring any that fail. Returns `Ok`, every count zero, with
//! `outputs` = those five names, then `missing.csv` (never created), then
//! names that point outside the output folder: `../input`, `/etc/passwd`,
//! `..`, `a/../../b` and the empty name. The input is ignored.
//!
//! A correct host treats `outputs` as untrusted: it publishes only plain
//! names of regular files that exist in the output folder (or rejects the
//! whole report), never resolves a name outside it, and never passes a name
//! to a shell or a command line unquoted.

use std::fs;
use std::path::Path;

use test_programs::{Guest, PipelineError, Report, report};

struct OddNames;

impl Guest for OddNames {
    fn process(_input: String, output_dir: String) -> Result<Report, PipelineError> {
        let long = format!("{}.csv", "a".repeat(251));
        let created = ["new\nline.csv", "-rf", long.as_str(), "...", "tab\tname.csv"];
        let out = Path::new(&output_dir);
        for name in created {
            // Failures are part of the experiment: the test looks at the folder.
            let _ = fs::write(out.join(name), "odd\n");
        }
        let not_ours = ["missing.csv", "../input", "/etc/passwd", "..", "a/../../b", ""];
        let outputs: Vec<&str> = created.iter().chain(not_ours.iter()).copied().collect();
        Ok(report(&outputs))
    }
}

test_programs::export!(OddNames with_types_in test_programs::bindings);
