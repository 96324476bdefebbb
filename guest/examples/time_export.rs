//! Times the native pipeline on one export, for before/after comparisons of
//! the guest's hot paths (no timed assertions anywhere: this only prints).
//!
//! ```text
//! python3 ../shared/tools/gen_orders.py --rows 1000000 --seed 7 > /tmp/orders-1m.csv
//! cargo run --release -p orders-pipeline --example time_export -- /tmp/orders-1m.csv 9
//! ```
//!
//! Each run is `process_paths` into a fresh temporary folder, then `process`
//! on the input already in memory into a sink that drops what it is given
//! (the pipeline alone, without file-system time). Printed: best and median
//! wall-clock time and, on Linux, the time the thread was actually on a CPU
//! (`/proc/thread-self/schedstat`), which a busy machine disturbs less.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Instant;

use orders_pipeline::OutputSink;

/// Accepts every file and drops its bytes.
struct Discard;

impl OutputSink for Discard {
    type Writer = io::Sink;

    fn create(&mut self, _name: &str) -> io::Result<io::Sink> {
        Ok(io::sink())
    }

    fn append(&mut self, _name: &str) -> io::Result<io::Sink> {
        Ok(io::sink())
    }
}

/// Nanoseconds this thread has run on a CPU, if the kernel says.
fn cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

#[derive(Default)]
struct Times {
    wall_ms: Vec<f64>,
    cpu_ms: Vec<f64>,
}

impl Times {
    fn time<T>(&mut self, run: impl FnOnce() -> T) -> T {
        let (cpu_start, start) = (cpu_ns(), Instant::now());
        let result = run();
        self.wall_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        if let (Some(before), Some(after)) = (cpu_start, cpu_ns()) {
            self.cpu_ms.push(after.saturating_sub(before) as f64 / 1e6);
        }
        result
    }

    fn print(&self, what: &str) {
        let summary = |times: &[f64]| {
            let mut sorted = times.to_vec();
            sorted.sort_by(f64::total_cmp);
            match sorted.first() {
                Some(best) => format!("best {best:.1} ms, median {:.1} ms", sorted[sorted.len() / 2]),
                None => "n/a".to_owned(),
            }
        };
        println!("{what}: wall {}; on cpu {}", summary(&self.wall_ms), summary(&self.cpu_ms));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let input = PathBuf::from(args.next().ok_or("usage: time_export INPUT.csv [RUNS]")?);
    let runs: usize = args.next().map(|runs| runs.parse()).transpose()?.unwrap_or(5).max(1);
    let bytes = std::fs::read(&input)?;
    let out = std::env::temp_dir().join(format!("orders-pipeline-time-{}", std::process::id()));
    let (mut paths, mut memory) = (Times::default(), Times::default());
    let mut reports = Vec::new();
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        reports.push(paths.time(|| orders_pipeline::process_paths(&input, &out))?);
        reports.push(memory.time(|| orders_pipeline::process(bytes.as_slice(), &mut Discard))?);
    }
    let _ = std::fs::remove_dir_all(&out);
    if let Some(report) = reports.first() {
        assert!(reports.iter().all(|other| other == report), "every run gives the same report");
        println!(
            "{}: {} bytes, rows {} accepted {} cancelled {} rejected {}",
            input.display(),
            bytes.len(),
            report.rows,
            report.accepted,
            report.cancelled,
            report.rejected
        );
    }
    paths.print(&format!("process_paths x{runs}"));
    memory.print(&format!("process (in memory, outputs dropped) x{runs}"));
    io::stdout().flush()?;
    Ok(())
}
