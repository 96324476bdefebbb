//! Throughput and latency of the host, on this machine, in one run:
//!
//! 1. **Big export**: a 1,000,000-row dirty export (made at bench time by
//!    `shared/tools/gen_orders.py --rows 1000000 --seed 7`) run by the `host`
//!    binary as a process, against the same pipeline built natively
//!    (`orders_pipeline::process_paths`, in a re-executed copy of this bench so
//!    it has a process of its own): wall time, rows/s and peak RSS, best of 3.
//! 2. **Tiny invocations through the library**: the seven-row example through
//!    `Runner::run` with `Destination::Memory`, sequentially and from two
//!    concurrent tasks sharing the runner, best of 3: p50/p99 latency,
//!    invocations/s, and where the time goes (`RunOutcome::timings`); once
//!    with sandboxes made and removed inside `run`, once with sandboxes made
//!    ahead and removed in the background.
//! 3. **Tiny invocation as a process**: `host run examples/orders.csv`, 20
//!    times after a warm-up: p50 and mean wall time, start-up included.
//! 4. **A small WASI program as a process**: `host exec` of the test probe
//!    (`tests/programs/exec`, as a preview1 module and as a command
//!    component) with a warm cache, beside the same program under wasmtime's
//!    CLI when one is on `PATH` or named by `WASMTIME` (skipped, saying so,
//!    otherwise): p50 wall times and their ratio.
//! 5. **The service**: `host serve` as a process (`max_concurrent = 2`, two
//!    tenants, data folder, sandbox root and code cache in the scratch folder,
//!    memory root on `/dev/shm`), over loopback HTTP from this bench's tokio
//!    runtime: (1) the seven-row example posted with `?wait=30` from 16
//!    connections after a warm-up, best of 3 rounds: jobs/s, p50/p99
//!    request latency, and the ratio to the library's 2-worker rate measured
//!    as in section 2 (sandboxes made inside `run`, as the service's runner
//!    makes them), best of 3 rounds each run just before a service round,
//!    so that both rates come from the same stretch of the VM's time;
//!    (2) fairness: tenant b's
//!    tiny jobs one at a time, p50/p99 alone and while tenant a floods from
//!    14 connections; (3) a ~100 MB export (`gen_orders.py --rows 2300000
//!    --seed 7`) posted once, streamed from its file, and the server's
//!    `VmHWM` before and after.
//!
//! Run it with `cargo bench -p orders-host --bench throughput`. Environment:
//! `BENCH_ROWS` (rows of the big export, default 1000000), `BENCH_TINY`
//! (library invocations per mode, default 5000), `BENCH_SERVICE_JOBS` (timed
//! tiny jobs through the service, default 2000), `BENCH_FAIRNESS_JOBS`
//! (tenant b's jobs, alone and under the flood, default 300),
//! `BENCH_BODY_ROWS` (rows of the ~100 MB body, default 2300000),
//! `BENCH_SECTIONS` (the sections to run, comma-separated numbers such as
//! `5` or `2,5`, default all),
//! `ORDERS_SHARED_DIR` (the folder holding `tools/gen_orders.py`, default
//! `../shared` beside the checkout).
//!
//! Peak RSS is read from `VmHWM` in `/proc/<pid>/status`, polled every 5 ms
//! while the child runs: rustix (the workspace's safe syscall layer) has no
//! `getrusage`/`wait4`, and the workspace denies unsafe code. The kernel keeps
//! the high-water mark itself, so polling only misses growth in the last
//! few milliseconds before exit.

#![forbid(unsafe_code)]

use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, Read as _};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orders_host::{Destination, Input, Invocation, Limits, RunError, Runner, RunnerConfig, Timings};

type BenchResult<T> = Result<T, Box<dyn Error>>;

/// Set (to `native`) when this bench re-executes itself to run the native pipeline.
const CHILD_ENV: &str = "THROUGHPUT_CHILD";
const RUNS: usize = 3;
const TINY_WARM_UP: usize = 500;
const PROCESS_RUNS: usize = 20;
const RSS_POLL: Duration = Duration::from_millis(5);
/// `RunnerConfig::ready_sandboxes` in the background mode of section 2.
const READY_SANDBOXES: usize = 32;

// Targets.
const MAX_WASM_NATIVE_RATIO: f64 = 1.2;
const MAX_HOST_RSS_BYTES: u64 = 120_000_000;
const MAX_TINY_P50: Duration = Duration::from_micros(200);
const MIN_TINY_RATE_2_WORKERS: f64 = 8_000.0;
const MAX_EXEC_WASMTIME_RATIO: f64 = 1.2;

fn main() -> Result<(), Box<dyn Error>> {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        return child_main(&mode);
    }
    let rows: u64 = env_number("BENCH_ROWS", 1_000_000)?;
    let tiny: usize = env_number("BENCH_TINY", 5_000)?;
    let sizes = ServiceSizes {
        jobs: env_number("BENCH_SERVICE_JOBS", 2_000)?,
        fairness_jobs: env_number("BENCH_FAIRNESS_JOBS", 300)?,
        body_rows: env_number("BENCH_BODY_ROWS", 2_300_000)?,
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = std::env::var_os("ORDERS_SHARED_DIR").map_or_else(|| repo.join("../shared"), PathBuf::from);
    let shared = fs::canonicalize(&shared).map_err(|err| format!("shared folder {}: {err}", shared.display()))?;
    let example = fs::canonicalize(repo.join("examples/orders.csv"))?;

    let scratch = Scratch::new()?;
    // A persistent compiled-code cache, if this `host` has one: each section
    // gets its own, inside the scratch folder, so `~/.cache` is never touched.
    let help = Command::new(env!("CARGO_BIN_EXE_host")).args(["run", "--help"]).output()?;
    let has_cache = String::from_utf8_lossy(&help.stdout).contains("--cache-dir");
    let sections = Sections::from_env()?;
    println!("throughput bench: host {}, scratch {}", env!("CARGO_BIN_EXE_host"), scratch.path().display());
    if sections.has(1) {
        big_export(&scratch, &shared, &example, rows, has_cache)?;
    }
    if sections.has(2) {
        tiny_library(&scratch, &example, tiny, false)?;
        tiny_library(&scratch, &example, tiny, true)?;
    }
    if sections.has(3) {
        tiny_process(&scratch, &example, has_cache)?;
    }
    if sections.has(4) {
        small_program(&scratch)?;
    }
    if sections.has(5) {
        service(&scratch, &shared, &example, sizes, tiny)?;
    }
    println!(
        "\nreproduce: cargo bench -p orders-host --bench throughput   (env BENCH_ROWS={rows} BENCH_TINY={tiny} \
         BENCH_SERVICE_JOBS={} BENCH_FAIRNESS_JOBS={} BENCH_BODY_ROWS={} ORDERS_SHARED_DIR={}{})",
        sizes.jobs,
        sizes.fairness_jobs,
        sizes.body_rows,
        shared.display(),
        sections.env()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. Big export

fn big_export(scratch: &Scratch, shared: &Path, example: &Path, rows: u64, has_cache: bool) -> BenchResult<()> {
    println!("\n== 1. Big export: {rows} rows, `host run` (wasm) vs orders_pipeline (native), best of {RUNS} ==");
    let input = scratch.path().join("orders-big.csv");
    generate_export(shared, rows, &input)?;

    let cache = has_cache.then(|| scratch.path().join("cache-big"));
    let host_run = |input: &Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_host"));
        command.arg("run").arg(input).arg("--out").arg(scratch.path().join("out")).arg("--force");
        command.arg("--sandbox-root").arg(scratch.path().join("sandboxes")).arg("--json");
        if let Some(dir) = &cache {
            command.arg("--cache-dir").arg(dir);
        }
        command
    };
    match &cache {
        Some(dir) => {
            measure_child(&mut host_run(example))?;
            println!("cache: --cache-dir {} (warmed by one seven-row run)", dir.display());
        }
        None => println!("cache: no cache (`host run --help` has no --cache-dir): every run compiles the component"),
    }

    let mut table = Table::new(["run", "wall", "rows/s", "peak RSS", "notes"]);
    let mut wasm = Vec::new();
    for run in 1..=RUNS {
        let measured = measure_child(&mut host_run(&input))?;
        let json: serde_json::Value = serde_json::from_str(&measured.stdout)
            .map_err(|err| format!("host run --json printed something else ({err}): {}", measured.stdout))?;
        let timing = |name: &str| json["timings_us"][name].as_u64().map_or(Duration::ZERO, Duration::from_micros);
        let guest = timing("guest");
        let notes = format!(
            "in-host total {}, of which guest {}, input copy {}, deliver {}",
            secs(timing("total")),
            secs(guest),
            secs(timing("input_copy")),
            secs(timing("deliver"))
        );
        table.row([
            format!("wasm #{run}"),
            secs(measured.wall),
            rate(rows, measured.wall),
            rss(measured.peak_rss),
            notes,
        ]);
        wasm.push((measured, guest));
    }

    let mut native = Vec::new();
    for run in 1..=RUNS {
        let out = scratch.path().join(format!("native-out-{run}"));
        fs::create_dir(&out).map_err(|err| format!("cannot create {}: {err}", out.display()))?;
        let mut command = Command::new(std::env::current_exe()?);
        command.env(CHILD_ENV, "native").arg(&input).arg(&out);
        let measured = measure_child(&mut command)?;
        fs::remove_dir_all(&out).map_err(|err| format!("cannot remove {}: {err}", out.display()))?;
        let child = NativeChild::parse(&measured.stdout)?;
        if child.rows != rows {
            return Err(format!("the native pipeline saw {} rows, not {rows}", child.rows).into());
        }
        // The child's own reading at exit is exact; the poll may miss the last few ms.
        let peak = measured.peak_rss.max(child.peak_rss);
        let notes = format!("in-process process_paths {}", secs(child.elapsed));
        table.row([format!("native #{run}"), secs(measured.wall), rate(rows, measured.wall), rss(peak), notes]);
        native.push((measured.wall, child.elapsed, peak));
    }
    table.print();

    let best_wasm = wasm.iter().map(|(m, _)| m.wall).min().unwrap_or_default();
    let best_guest = wasm.iter().map(|(_, guest)| *guest).min().unwrap_or_default();
    let wasm_rss = wasm.iter().map(|(m, _)| m.peak_rss).max().unwrap_or_default();
    let best_native = native.iter().map(|(wall, _, _)| *wall).min().unwrap_or_default();
    let best_native_inner = native.iter().map(|(_, inner, _)| *inner).min().unwrap_or_default();
    let native_rss = native.iter().map(|(_, _, peak)| *peak).max().unwrap_or_default();
    let ratio = best_wasm.as_secs_f64() / best_native.as_secs_f64();
    let guest_ratio = best_guest.as_secs_f64() / best_native_inner.as_secs_f64();

    println!();
    let mut summary = Table::new(["figure", "value", "target", "verdict"]);
    summary.row(["wasm (host run) wall, best".into(), secs(best_wasm), String::new(), String::new()]);
    summary.row(["wasm rows/s".into(), rate(rows, best_wasm), String::new(), String::new()]);
    summary.row(["native (process) wall, best".into(), secs(best_native), String::new(), String::new()]);
    summary.row(["native rows/s".into(), rate(rows, best_native), String::new(), String::new()]);
    summary.row([
        "time ratio wasm/native (process walls)".into(),
        format!("{ratio:.2}x"),
        format!("<= {MAX_WASM_NATIVE_RATIO:.1}x"),
        verdict(ratio <= MAX_WASM_NATIVE_RATIO).into(),
    ]);
    summary.row([
        "  guest only / process_paths only".into(),
        format!("{guest_ratio:.2}x"),
        "(info)".into(),
        String::new(),
    ]);
    summary.row([
        "host peak RSS (max of runs)".into(),
        rss(wasm_rss),
        format!("< {:.0} MB", mb(MAX_HOST_RSS_BYTES)),
        verdict(wasm_rss < MAX_HOST_RSS_BYTES).into(),
    ]);
    summary.row(["native peak RSS (max of runs)".into(), rss(native_rss), "(info)".into(), String::new()]);
    summary.print();
    println!("(RSS: VmHWM polled every {} ms; 1 MB = 10^6 bytes)", RSS_POLL.as_millis());
    Ok(())
}

/// Writes a dirty export of `rows` rows (`gen_orders.py --rows ROWS --seed 7`)
/// to `out`, says so, and returns its size in bytes.
fn generate_export(shared: &Path, rows: u64, out: &Path) -> BenchResult<u64> {
    let generator = shared.join("tools/gen_orders.py");
    let started = Instant::now();
    let file = fs::File::create(out).map_err(|err| format!("cannot create {}: {err}", out.display()))?;
    let status = Command::new("python3")
        .arg(&generator)
        .args(["--rows", &rows.to_string(), "--seed", "7"])
        .stdout(file)
        .status()
        .map_err(|err| format!("cannot start python3 {}: {err}", generator.display()))?;
    if !status.success() {
        return Err(format!("{} failed: {status}", generator.display()).into());
    }
    let bytes = fs::metadata(out).map_err(|err| format!("cannot read {}: {err}", out.display()))?.len();
    println!(
        "input: {} ({:.1} MB, {rows} rows), generated in {:.1} s",
        out.display(),
        mb(bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(bytes)
}

/// What the native child prints on stdout, one `key=value` per field.
#[derive(Debug)]
struct NativeChild {
    rows: u64,
    elapsed: Duration,
    peak_rss: u64,
}

impl NativeChild {
    fn parse(stdout: &str) -> BenchResult<Self> {
        let field = |key: &str| -> BenchResult<u64> {
            let value = stdout
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .ok_or_else(|| format!("the native child printed no {key}: {stdout:?}"))?;
            Ok(value.parse()?)
        };
        Ok(Self {
            rows: field("rows")?,
            elapsed: Duration::from_nanos(field("elapsed_ns")?),
            peak_rss: field("vmhwm_kib")? * 1024,
        })
    }
}

/// The re-executed bench: runs the native pipeline once and reports.
fn child_main(mode: &str) -> Result<(), Box<dyn Error>> {
    if mode != "native" {
        return Err(format!("{CHILD_ENV}={mode}: unknown mode (expected `native`)").into());
    }
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [input, out] = args.as_slice() else {
        return Err(format!("{CHILD_ENV}=native expects INPUT OUT_DIR, got {args:?}").into());
    };
    let started = Instant::now();
    let report = orders_pipeline::process_paths(input, out)?;
    let elapsed = started.elapsed();
    let peak_kib = read_vmhwm_kib(std::process::id()).ok_or("cannot read VmHWM from /proc/<pid>/status")?;
    println!("rows={} elapsed_ns={} vmhwm_kib={peak_kib}", report.rows, elapsed.as_nanos());
    Ok(())
}

/// A finished child: wall time from spawn to exit, peak RSS, stdout.
#[derive(Debug)]
struct Measured {
    wall: Duration,
    peak_rss: u64,
    stdout: String,
}

/// Runs `command` to completion while a thread polls its `VmHWM`.
fn measure_child(command: &mut Command) -> BenchResult<Measured> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let child: Child = command.spawn().map_err(|err| format!("cannot start {command:?}: {err}"))?;
    let pid = child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak_kib = 0;
            while !stop.load(Ordering::Relaxed) {
                // A zombie has no VmHWM line: the last reading before exit stands.
                peak_kib = peak_kib.max(read_vmhwm_kib(pid).unwrap_or(0));
                std::thread::sleep(RSS_POLL);
            }
            peak_kib
        })
    };
    let output = child.wait_with_output();
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak_kib = poller.join().map_err(|_| "the RSS poller panicked")?;
    let output = output.map_err(|err| format!("cannot wait for {command:?}: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(Measured { wall, peak_rss: peak_kib * 1024, stdout: String::from_utf8(output.stdout)? })
}

/// `VmHWM` (peak resident set) of a process, in KiB; `None` once it has exited.
/// CPU time (user + system) process `pid` has used so far, from
/// `/proc/PID/stat` (clock ticks of 10 ms, Linux's `USER_HZ` of 100).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn read_vmhwm_kib(pid: u32) -> Option<u64> {
    let mut status = String::new();
    fs::File::open(format!("/proc/{pid}/status")).ok()?.read_to_string(&mut status).ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

// ---------------------------------------------------------------------------
// 2. Tiny invocations through the library

/// Runs section 2 with sandboxes made and removed inside `run`, or (with
/// `background`) made ahead of time and removed after `run` returns, on the
/// runner's housekeeping thread.
fn tiny_library(scratch: &Scratch, example: &Path, n: usize, background: bool) -> BenchResult<()> {
    let removal = if background {
        format!("{READY_SANDBOXES} sandboxes made ahead, background removal")
    } else {
        "sandboxes made and removed inside run".to_owned()
    };
    println!("\n== 2. Tiny invocations through the library: seven rows, Destination::Memory, {removal} ==");
    let bytes = fs::read(example).map_err(|err| format!("cannot read {}: {err}", example.display()))?;
    let config = RunnerConfig {
        sandbox_root: Some(scratch.path().join("tiny-sandboxes")),
        background_removal: background,
        ready_sandboxes: if background { READY_SANDBOXES } else { 0 },
        ..RunnerConfig::default()
    };
    println!("config: {config:?}; limits: Limits::default(); tokio multi-thread runtime, 2 workers");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let runner = Runner::new(&config)?;
    let component = runner.bundled()?;
    let memory_root = runner.memory_root().map_or_else(|| "none".into(), |root| root.path().display().to_string());
    println!("sandboxes: disk root {}, memory root {memory_root}", runner.sandbox_root().path().display());
    let input: Arc<[u8]> = bytes.into();

    let joined = |err: tokio::task::JoinError| RunError::Host(format!("a benchmark task failed: {err}"));
    let cpu_before = cpu_time(std::process::id());
    let (sequential, concurrent, wall_1, wall_2, wrong_rows) = runtime.block_on(async {
        // Every batch runs as a task, on the runtime's workers.
        let batch = |count| tokio::spawn(invocations(runner.clone(), component.clone(), input.clone(), count));
        batch(TINY_WARM_UP).await.map_err(joined)??;

        // Best of RUNS for each worker count: this VM's neighbours take CPU
        // time in bursts, and a burst says nothing about the host.
        let mut best_1: Option<(Batch, Duration)> = None;
        let mut best_2: Option<(Batch, Duration)> = None;
        let mut wrong_rows = 0;
        for _ in 0..RUNS {
            let started = Instant::now();
            let sequential = batch(n).await.map_err(joined)??;
            let wall = started.elapsed();
            wrong_rows += sequential.wrong_rows;
            if best_1.as_ref().is_none_or(|(_, best)| wall < *best) {
                best_1 = Some((sequential, wall));
            }

            let (concurrent, wall) = two_workers(&runner, &component, &input, n).await?;
            wrong_rows += concurrent.wrong_rows;
            if best_2.as_ref().is_none_or(|(_, best)| wall < *best) {
                best_2 = Some((concurrent, wall));
            }
        }
        let ((sequential, wall_1), (concurrent, wall_2)) =
            best_1.zip(best_2).ok_or_else(|| RunError::Host("no benchmark run".into()))?;
        Ok::<_, RunError>((sequential, concurrent, wall_1, wall_2, wrong_rows))
    })?;
    let cpu_used = cpu_time(std::process::id()).zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    drop(runtime);
    // Waits for sandboxes queued for background removal (when the config asks for it).
    runner.shutdown()?;
    if wrong_rows > 0 {
        return Err("the seven-row example did not always report 7 rows".into());
    }
    println!(
        "warm-up: {TINY_WARM_UP} invocations; then N = {n} per mode, best of {RUNS}; spooled to the memory root: {} of \
         {n} (1 worker), {} of {n} (2 workers)",
        sequential.spooled, concurrent.spooled
    );

    let mut table = Table::new(["workers", "p50", "p99", "invocations/s", "p50 target", "rate target"]);
    let timings = sequential.timings.clone();
    for (workers, mut latencies, wall) in [(1, sequential.latencies, wall_1), (2, concurrent.latencies, wall_2)] {
        latencies.sort_unstable();
        let p50 = percentile(&latencies, 50.0);
        let per_second = latencies.len() as f64 / wall.as_secs_f64();
        let rate_target = if workers == 2 {
            format!(">= {MIN_TINY_RATE_2_WORKERS:.0}/s {}", verdict(per_second >= MIN_TINY_RATE_2_WORKERS))
        } else {
            "(info)".into()
        };
        table.row([
            workers.to_string(),
            micros(p50),
            micros(percentile(&latencies, 99.0)),
            format!("{per_second:.0}/s"),
            format!("<= {} {}", micros(MAX_TINY_P50), verdict(p50 <= MAX_TINY_P50)),
            rate_target,
        ]);
    }
    table.print();
    if let Some(cpu) = cpu_used {
        let invocations = u32::try_from((TINY_WARM_UP + 2 * RUNS * n).max(1)).unwrap_or(u32::MAX);
        println!("CPU per invocation (user + system, this process, every run above): {}", micros(cpu / invocations));
    }

    println!("\nwhere the time goes, 1 worker (mean of RunOutcome::timings over {n} invocations):");
    let mean = |d: Duration| micros(d / u32::try_from(n.max(1)).unwrap_or(u32::MAX));
    let mut steps = Table::new(["step", "mean", "share of total"]);
    let share = |d: Duration| format!("{:.0}%", 100.0 * d.as_secs_f64() / timings.total.as_secs_f64().max(1e-12));
    for (name, value) in [
        ("sandbox_create", timings.sandbox_create),
        ("input_copy", timings.input_copy),
        ("  instantiate", timings.instantiate),
        ("guest (incl. instantiate)", timings.guest),
        ("collect", timings.collect),
        ("deliver", timings.deliver),
        ("sandbox_remove", timings.sandbox_remove),
        ("total", timings.total),
    ] {
        steps.row([name.into(), mean(value), share(value)]);
    }
    steps.print();
    Ok(())
}

/// What a run of sequential invocations measured.
#[derive(Debug, Default)]
struct Batch {
    /// Each invocation's latency, around `Runner::run`.
    latencies: Vec<Duration>,
    /// The sum of their `RunOutcome::timings`.
    timings: Timings,
    /// Invocations whose sandbox was on the memory root (spooled).
    spooled: usize,
    /// Invocations whose report did not say 7 rows.
    wrong_rows: usize,
}

/// `n` invocations of the seven-row example from two concurrent tasks
/// sharing `runner`, on the current runtime's workers, and their wall time.
async fn two_workers(
    runner: &Runner,
    component: &orders_host::Component,
    input: &Arc<[u8]>,
    n: usize,
) -> Result<(Batch, Duration), RunError> {
    let started = Instant::now();
    let tasks = [n / 2, n - n / 2]
        .map(|count| tokio::spawn(invocations(runner.clone(), component.clone(), input.clone(), count)));
    let mut concurrent = Batch::default();
    for task in tasks {
        let batch = task.await.map_err(|err| RunError::Host(format!("a benchmark task failed: {err}")))??;
        concurrent.latencies.extend(batch.latencies);
        concurrent.spooled += batch.spooled;
        concurrent.wrong_rows += batch.wrong_rows;
    }
    Ok((concurrent, started.elapsed()))
}

/// Runs `count` invocations of the seven-row example one after another.
async fn invocations(
    runner: Runner,
    component: orders_host::Component,
    input: Arc<[u8]>,
    count: usize,
) -> Result<Batch, RunError> {
    let limits = Limits::default();
    let mut batch = Batch { latencies: Vec::with_capacity(count), ..Batch::default() };
    for _ in 0..count {
        // An invocation owns its input; the copy of a few hundred bytes is made outside the timing.
        let bytes = Input::Bytes(input.to_vec());
        let started = Instant::now();
        let outcome = runner
            .invoke(Invocation::new(component.clone(), bytes).limits(limits).destination(Destination::Memory))
            .await?;
        batch.latencies.push(started.elapsed());
        let (sum, t) = (&mut batch.timings, &outcome.timings);
        sum.sandbox_create += t.sandbox_create;
        sum.input_copy += t.input_copy;
        sum.guest += t.guest;
        sum.instantiate += t.instantiate;
        sum.collect += t.collect;
        sum.deliver += t.deliver;
        sum.sandbox_remove += t.sandbox_remove;
        sum.total += t.total;
        batch.spooled += usize::from(outcome.spooled);
        batch.wrong_rows += usize::from(outcome.report.rows != 7);
    }
    Ok(batch)
}

// ---------------------------------------------------------------------------
// 3. Tiny invocation as a process

fn tiny_process(scratch: &Scratch, example: &Path, has_cache: bool) -> BenchResult<()> {
    println!("\n== 3. Tiny invocation as a process: `host run examples/orders.csv`, {PROCESS_RUNS} runs ==");
    let cache = has_cache.then(|| scratch.path().join("cache"));
    match &cache {
        Some(dir) => println!("cache: --cache-dir {} (warmed by the first run)", dir.display()),
        None => println!("cache: no cache (`host run --help` has no --cache-dir)"),
    }
    let command = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_host"));
        command.arg("run").arg(example).arg("--out").arg(scratch.path().join("tiny-out")).arg("--force");
        command.arg("--sandbox-root").arg(scratch.path().join("sandboxes"));
        if let Some(dir) = &cache {
            command.arg("--cache-dir").arg(dir);
        }
        command
    };
    let warm_up = measure_child(&mut command())?;
    let mut walls = Vec::with_capacity(PROCESS_RUNS);
    for _ in 0..PROCESS_RUNS {
        walls.push(measure_child(&mut command())?.wall);
    }
    walls.sort_unstable();
    let mean = walls.iter().sum::<Duration>() / u32::try_from(walls.len()).unwrap_or(u32::MAX);
    let mut table = Table::new(["figure", "value"]);
    table.row(["warm-up run wall".into(), millis(warm_up.wall)]);
    table.row(["p50 wall".into(), millis(percentile(&walls, 50.0))]);
    table.row(["mean wall".into(), millis(mean)]);
    table.row(["min / max wall".into(), format!("{} / {}", millis(walls[0]), millis(walls[walls.len() - 1]))]);
    table.row(["peak RSS (warm-up run)".into(), rss(warm_up.peak_rss)]);
    table.print();
    Ok(())
}

/// Section 4: `host exec` of a small program against wasmtime's CLI.
fn small_program(scratch: &Scratch) -> BenchResult<()> {
    println!(
        "\n== 4. A small WASI program as a process: `host exec` (warm cache) vs `wasmtime run`, {PROCESS_RUNS} runs =="
    );
    let wasmtime = std::env::var_os("WASMTIME").map(PathBuf::from).or_else(|| {
        let found = Command::new("wasmtime").arg("--version").output().ok()?;
        found.status.success().then(|| PathBuf::from("wasmtime"))
    });
    if wasmtime.is_none() {
        println!(
            "wasmtime: skipped (no `wasmtime` on PATH and WASMTIME unset; `cargo install wasmtime-cli` gives one)"
        );
    }
    let p50 = |command: &mut dyn FnMut() -> Command| -> BenchResult<Duration> {
        measure_child(&mut command())?;
        let mut walls = Vec::with_capacity(PROCESS_RUNS);
        for _ in 0..PROCESS_RUNS {
            let mut child = command();
            let measured = measure_child(&mut child)?;
            walls.push(measured.wall);
        }
        walls.sort_unstable();
        Ok(percentile(&walls, 50.0))
    };
    let mut table = Table::new(["program", "host exec p50", "wasmtime p50", "ratio (target <= 1.2x)"]);
    let programs = [
        ("preview1 module", test_programs_artifacts::WASI_PROBE_MODULE),
        ("command component", test_programs_artifacts::WASI_PROBE_COMMAND),
    ];
    for (kind, program) in programs {
        let cache = scratch.path().join("exec-cache");
        let host = p50(&mut || {
            let mut command = Command::new(env!("CARGO_BIN_EXE_host"));
            command.args(["exec", program, "--cache-dir"]).arg(&cache);
            command.arg("--sandbox-root").arg(scratch.path().join("sandboxes"));
            command.args(["--", "args", "one", "two"]);
            command
        })?;
        let (wasmtime_p50, ratio) = match &wasmtime {
            Some(wasmtime) => {
                let p50 = p50(&mut || {
                    let mut command = Command::new(wasmtime);
                    command.args(["run", program, "args", "one", "two"]);
                    command
                })?;
                let ratio = host.as_secs_f64() / p50.as_secs_f64();
                (millis(p50), format!("{ratio:.2}x {}", verdict(ratio <= MAX_EXEC_WASMTIME_RATIO)))
            }
            None => ("skipped".into(), "-".into()),
        };
        table.row([kind.into(), millis(host), wasmtime_p50, ratio]);
    }
    table.print();
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. The service

/// Sizes of section 5, from the environment.
#[derive(Debug, Clone, Copy)]
struct ServiceSizes {
    /// Tiny jobs timed through 16 connections (`BENCH_SERVICE_JOBS`).
    jobs: usize,
    /// Tenant B's tiny jobs, alone and under the flood (`BENCH_FAIRNESS_JOBS`).
    fairness_jobs: usize,
    /// Rows of the ~100 MB export (`BENCH_BODY_ROWS`).
    body_rows: u64,
}

const SERVICE_CONNECTIONS: usize = 16;
const SERVICE_WARM_UP: usize = 200;
const SERVICE_MAX_CONCURRENT: usize = 2;
/// Tenant A's connections while it floods the service.
const FLOOD_CONNECTIONS: usize = 14;
/// Tenant B's untimed jobs before its idle measurement.
const FAIRNESS_WARM_UP: usize = 20;
/// Chunks of the 100 MB body, as read from the file and sent.
const BODY_CHUNK: usize = 256 << 10;
const TOKEN_A: &str = "bench-tenant-a-0123456789abcdef";
const TOKEN_B: &str = "bench-tenant-b-fedcba9876543210";

// Targets.
const MIN_SERVICE_LIBRARY_RATIO: f64 = 0.6;
const MAX_SERVICE_P99: Duration = Duration::from_millis(20);
const MAX_FAIRNESS_P99_RATIO: f64 = 3.0;
const MAX_BODY_RSS_GROWTH: u64 = 32_000_000;

/// Section 5: `host serve` as a process, driven over loopback HTTP by this
/// bench's own tokio runtime (2 workers), beside the library's rate measured
/// as in section 2 (`tiny` invocations from 2 workers, sandboxes made and
/// removed inside `run`: the runner settings of the service), each library
/// round just before a round of the service, so both are measured in the
/// same stretch of the VM's time.
fn service(scratch: &Scratch, shared: &Path, example: &Path, sizes: ServiceSizes, tiny: usize) -> BenchResult<()> {
    println!(
        "\n== 5. The service: `host serve`, max_concurrent = {SERVICE_MAX_CONCURRENT}, two tenants, over loopback HTTP =="
    );
    // The memory root on tmpfs, as the library's default one in section 2.
    let shm = Path::new("/dev/shm");
    let memory_scratch = if shm.is_dir() { Some(Scratch::new_in(shm)?) } else { None };
    let memory_root =
        memory_scratch.as_ref().map_or_else(|| scratch.path().join("service-memory"), |s| s.path().join("memory"));
    let config = scratch.path().join("service.toml");
    let text = format!(
        "max_concurrent = {SERVICE_MAX_CONCURRENT}\n{}{}",
        tenant_config("a", TOKEN_A, ""),
        tenant_config("b", TOKEN_B, "max_input = \"256MiB\"\ntimeout = \"600s\"\n")
    );
    fs::write(&config, text).map_err(|err| format!("cannot write {}: {err}", config.display()))?;
    let server = Server::start(scratch, &config, &memory_root)?;
    println!(
        "server: pid {}, {}; data dir, sandbox root and code cache in the scratch folder, memory root {}; log {}",
        server.child.id(),
        server.base,
        memory_root.display(),
        server.log.display()
    );
    let example_bytes =
        bytes::Bytes::from(fs::read(example).map_err(|err| format!("cannot read {}: {err}", example.display()))?);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let base: Arc<str> = server.base.as_str().into();

    // 5.1 Tiny jobs through 16 connections.
    let jobs = sizes.jobs;
    println!(
        "\n-- 5.1 Tiny jobs: {SERVICE_CONNECTIONS} connections (one client each) posting the seven-row example \
         with ?wait=30 as tenant a; {SERVICE_WARM_UP} warm-up jobs, then {RUNS} rounds of {jobs}, each after a \
         round of {tiny} library invocations from 2 workers (section 2's runner settings); the best of each --"
    );
    let library_config = RunnerConfig {
        sandbox_root: Some(scratch.path().join("service-library-sandboxes")),
        background_removal: false,
        ready_sandboxes: 0,
        ..RunnerConfig::default()
    };
    let runner = Runner::new(&library_config)?;
    let component = runner.bundled()?;
    let input: Arc<[u8]> = example_bytes.to_vec().into();
    let clients = (0..SERVICE_CONNECTIONS).map(|_| client()).collect::<Result<Vec<_>, _>>()?;
    runtime.block_on(two_workers(&runner, &component, &input, TINY_WARM_UP))?;
    runtime.block_on(load(&clients, &base, TOKEN_A, &example_bytes, SERVICE_WARM_UP))?;
    let cpu = |pid: u32| cpu_time(pid).ok_or_else(|| format!("cannot read the CPU time of process {pid}"));
    // The fastest round of each is reported, as section 2 reports its
    // fastest of RUNS: the VM's neighbours slow whole stretches of a run.
    let mut rounds = Vec::with_capacity(RUNS);
    let mut library_walls = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let (library, wall) = runtime.block_on(two_workers(&runner, &component, &input, tiny))?;
        if library.wrong_rows > 0 {
            return Err("the seven-row example did not always report 7 rows".into());
        }
        library_walls.push(wall);
        let (server_before, client_before) = (cpu(server.child.id())?, cpu(std::process::id())?);
        let (latencies, wall) = runtime.block_on(load(&clients, &base, TOKEN_A, &example_bytes, jobs))?;
        let server_cpu = cpu(server.child.id())?.saturating_sub(server_before);
        let client_cpu = cpu(std::process::id())?.saturating_sub(client_before);
        rounds.push((latencies, wall, server_cpu, client_cpu));
    }
    runner.shutdown()?;
    let rate = |count: usize, wall: &Duration| format!("{:.0}/s", count as f64 / wall.as_secs_f64());
    let rates: Vec<String> = rounds.iter().map(|(latencies, wall, ..)| rate(latencies.len(), wall)).collect();
    let library_rates: Vec<String> = library_walls.iter().map(|wall| rate(tiny, wall)).collect();
    println!("rounds: library {}; service {}", library_rates.join(", "), rates.join(", "));
    let library_wall = library_walls.into_iter().min().ok_or_else(|| "no library round was run".to_owned())?;
    let library_rate = tiny as f64 / library_wall.as_secs_f64();
    let (mut latencies, wall, server_cpu, client_cpu) = rounds
        .into_iter()
        .min_by_key(|(_, wall, ..)| *wall)
        .ok_or_else(|| "no round of tiny jobs was run".to_owned())?;
    latencies.sort_unstable();
    let service_rate = latencies.len() as f64 / wall.as_secs_f64();
    let ratio = service_rate / library_rate;
    let p99 = percentile(&latencies, 99.0);
    let mut table = Table::new(["figure", "value", "target", "verdict"]);
    table.row([
        format!("service jobs/s (16 connections, best of {RUNS})"),
        format!("{service_rate:.0}/s"),
        String::new(),
        String::new(),
    ]);
    table.row([
        format!("library invocations/s, 2 workers (best of {RUNS})"),
        format!("{library_rate:.0}/s"),
        "(info)".into(),
        String::new(),
    ]);
    table.row([
        "ratio service / library".into(),
        format!("{:.0}%", ratio * 100.0),
        format!(">= {:.0}%", MIN_SERVICE_LIBRARY_RATIO * 100.0),
        verdict(ratio >= MIN_SERVICE_LIBRARY_RATIO).into(),
    ]);
    table.row(["request latency p50".into(), millis(percentile(&latencies, 50.0)), String::new(), String::new()]);
    table.row([
        "request latency p99".into(),
        millis(p99),
        format!("< {}", millis(MAX_SERVICE_P99)),
        verdict(p99 < MAX_SERVICE_P99).into(),
    ]);
    table.row([
        "request latency max".into(),
        millis(latencies.last().copied().unwrap_or_default()),
        String::new(),
        String::new(),
    ]);
    let per_job = |cpu: Duration| micros(cpu / u32::try_from(jobs.max(1)).unwrap_or(u32::MAX));
    table.row(["server CPU per job (user + system)".into(), per_job(server_cpu), "(info)".into(), String::new()]);
    table.row(["this bench's CPU per job (the clients)".into(), per_job(client_cpu), "(info)".into(), String::new()]);
    table.print();

    // 5.2 Fairness: tenant B's jobs alone, then while tenant A floods.
    let n = sizes.fairness_jobs;
    println!(
        "\n-- 5.2 Fairness: tenant b posts {n} tiny jobs one at a time (own thread and runtime), alone, then while \
         tenant a floods with {FLOOD_CONNECTIONS} connections --"
    );
    let idle = one_at_a_time(&base, TOKEN_B, &example_bytes, FAIRNESS_WARM_UP, n)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flooded = Arc::new(AtomicUsize::new(0));
    let flood_started = Instant::now();
    let flood: Vec<_> = clients[..FLOOD_CONNECTIONS]
        .iter()
        .map(|client| {
            let (client, base, input) = (client.clone(), base.clone(), example_bytes.clone());
            let (stop, flooded) = (stop.clone(), flooded.clone());
            runtime.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    post_job(&client, &base, TOKEN_A, input.clone().into(), None).await?;
                    flooded.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    // Until the flood has both slots and a queue: a few jobs per connection done.
    while flooded.load(Ordering::Relaxed) < 2 * FLOOD_CONNECTIONS && flood_started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (flood_before, measured_from) = (flooded.load(Ordering::Relaxed), Instant::now());
    let busy = one_at_a_time(&base, TOKEN_B, &example_bytes, 0, n);
    let flood_rate = (flooded.load(Ordering::Relaxed) - flood_before) as f64 / measured_from.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        runtime.block_on(task).map_err(|err| format!("a flood task failed: {err}"))??;
    }
    let busy = busy?;
    let (idle_p99, busy_p99) = (percentile(&idle, 99.0), percentile(&busy, 99.0));
    let fairness = busy_p99.as_secs_f64() / idle_p99.as_secs_f64();
    let mut table = Table::new(["tenant b", "p50", "p99", "target", "verdict"]);
    table.row(["alone".into(), millis(percentile(&idle, 50.0)), millis(idle_p99), String::new(), String::new()]);
    table.row([
        format!("under a's flood ({FLOOD_CONNECTIONS} connections)"),
        millis(percentile(&busy, 50.0)),
        millis(busy_p99),
        String::new(),
        String::new(),
    ]);
    table.row([
        "ratio flood / alone".into(),
        format!("{:.2}x", percentile(&busy, 50.0).as_secs_f64() / percentile(&idle, 50.0).as_secs_f64()),
        format!("{fairness:.2}x"),
        format!("p99 < {MAX_FAIRNESS_P99_RATIO:.0}x"),
        verdict(fairness < MAX_FAIRNESS_P99_RATIO).into(),
    ]);
    table.print();
    println!("tenant a's flood meanwhile: {flood_rate:.0} jobs/s");

    // 5.3 A 100 MB body, streamed from its file.
    println!(
        "\n-- 5.3 A ~100 MB body: {} rows posted once as tenant b (max_input 256MiB), streamed from the file --",
        sizes.body_rows
    );
    let input = scratch.path().join("orders-body.csv");
    let length = generate_export(shared, sizes.body_rows, &input)?;
    let pid = server.child.id();
    let vmhwm = || read_vmhwm_kib(pid).map(|kib| kib * 1024).ok_or("cannot read the server's VmHWM (has it exited?)");
    let before = vmhwm()?;
    let started = Instant::now();
    let job = runtime.block_on(async {
        let file =
            tokio::fs::File::open(&input).await.map_err(|err| format!("cannot open {}: {err}", input.display()))?;
        let client = client()?;
        post_job(&client, &base, TOKEN_B, file_body(file), Some(length)).await
    })?;
    let wall = started.elapsed();
    let after = vmhwm()?;
    let growth = after.saturating_sub(before);
    let rows = job["report"]["rows"].as_u64().map_or_else(|| "?".into(), |rows| rows.to_string());
    let mut table = Table::new(["figure", "value", "target", "verdict"]);
    table.row(["body".into(), format!("{:.1} MB", mb(length)), String::new(), String::new()]);
    table.row([
        "POST to finished job (upload + run)".into(),
        secs(wall),
        format!("(report: {rows} rows)"),
        String::new(),
    ]);
    table.row(["server peak RSS (VmHWM) before".into(), rss(before), String::new(), String::new()]);
    table.row(["server peak RSS (VmHWM) after".into(), rss(after), String::new(), String::new()]);
    table.row([
        "growth".into(),
        rss(growth),
        format!("< {:.0} MB", mb(MAX_BODY_RSS_GROWTH)),
        verdict(growth < MAX_BODY_RSS_GROWTH).into(),
    ]);
    table.print();
    println!("(\"before\" is the high-water mark after 5.1 and 5.2; 1 MB = 10^6 bytes)");
    drop(runtime);
    drop(server);
    drop(memory_scratch);
    Ok(())
}

/// `[tenants.NAME]` with its token's SHA-256 and `extra` lines.
fn tenant_config(name: &str, token: &str, extra: &str) -> String {
    use sha2::Digest as _;
    let hash: String = sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!("[tenants.{name}]\ntoken_sha256 = \"{hash}\"\n{extra}")
}

/// A `host serve` process on a free loopback port, killed on drop.
#[derive(Debug)]
struct Server {
    child: Child,
    /// `http://ADDR`, as the server printed it.
    base: String,
    /// Its stderr.
    log: PathBuf,
}

impl Server {
    /// Starts the server with `config`, its data folder, sandbox root and
    /// code cache in `scratch`, and waits for its address.
    fn start(scratch: &Scratch, config: &Path, memory_root: &Path) -> BenchResult<Self> {
        let log = scratch.path().join("service.log");
        let stderr = fs::File::create(&log).map_err(|err| format!("cannot create {}: {err}", log.display()))?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_host"));
        command.args(["serve", "--config"]).arg(config).args(["--listen", "127.0.0.1:0", "--data-dir"]);
        command.arg(scratch.path().join("service-data"));
        command.arg("--sandbox-root").arg(scratch.path().join("service-sandboxes"));
        command.arg("--memory-root").arg(memory_root);
        // The code cache (`$XDG_CACHE_HOME/orders-host`), never `~/.cache`.
        command.env("XDG_CACHE_HOME", scratch.path().join("service-cache"));
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr);
        let child = command.spawn().map_err(|err| format!("cannot start {command:?}: {err}"))?;
        let mut server = Self { child, base: String::new(), log };
        let stdout = server.child.stdout.take().ok_or("the server's stdout is not piped")?;
        let mut stdout = std::io::BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|err| format!("cannot read the server's stdout: {err}"))?;
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            let log = fs::read_to_string(&server.log).unwrap_or_default();
            return Err(format!("`host serve` printed {line:?}, not its address; its stderr: {log}").into());
        };
        server.base = base.to_owned();
        // Nothing more is expected on stdout; whatever comes is read, so the server never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(err) = self.child.kill().and_then(|()| self.child.wait().map(drop)) {
            eprintln!("warning: cannot stop the server (pid {}): {err}", self.child.id());
        }
    }
}

/// A client of its own: one connection, reused.
fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder().no_proxy().build().map_err(|err| format!("cannot build an HTTP client: {err}"))
}

/// `count` tiny jobs of `token`, spread over `clients` (one task each, one
/// job in flight per task): each job's latency, and the wall time of all.
async fn load(
    clients: &[reqwest::Client],
    base: &Arc<str>,
    token: &'static str,
    input: &bytes::Bytes,
    count: usize,
) -> Result<(Vec<Duration>, Duration), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .map(|client| {
            let (client, base, input, next) = (client.clone(), base.clone(), input.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(count / 8);
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let started = Instant::now();
                    post_job(&client, &base, token, input.clone().into(), None).await?;
                    latencies.push(started.elapsed());
                }
                Ok::<_, String>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for task in tasks {
        latencies.extend(task.await.map_err(|err| format!("a client task failed: {err}"))??);
    }
    Ok((latencies, started.elapsed()))
}

/// `count` tiny jobs of `token`, one after another after `warm_up` untimed
/// ones, from a thread and a runtime of their own, so that other tasks of
/// the bench never delay the timing: their latencies, sorted.
fn one_at_a_time(
    base: &Arc<str>,
    token: &'static str,
    input: &bytes::Bytes,
    warm_up: usize,
    count: usize,
) -> BenchResult<Vec<Duration>> {
    let (base, input) = (base.clone(), input.clone());
    let thread = std::thread::spawn(move || -> Result<Vec<Duration>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| format!("cannot start a runtime: {err}"))?;
        runtime.block_on(async {
            let client = client()?;
            for _ in 0..warm_up {
                post_job(&client, &base, token, input.clone().into(), None).await?;
            }
            let mut latencies = Vec::with_capacity(count);
            for _ in 0..count {
                let started = Instant::now();
                post_job(&client, &base, token, input.clone().into(), None).await?;
                latencies.push(started.elapsed());
            }
            latencies.sort_unstable();
            Ok(latencies)
        })
    });
    Ok(thread.join().map_err(|_| "the one-at-a-time thread panicked")??)
}

/// Posts a job (`?wait=30`) and follows it until it has ended; an error
/// unless it succeeded.
async fn post_job(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    body: reqwest::Body,
    length: Option<u64>,
) -> Result<serde_json::Value, String> {
    let mut request = client.post(format!("{base}/v1/jobs?wait=30")).bearer_auth(token).body(body);
    if let Some(length) = length {
        request = request.header(reqwest::header::CONTENT_LENGTH, length);
    }
    let mut job = job_of(request.send().await, "POST /v1/jobs").await?;
    for _ in 0..40 {
        match job["state"].as_str() {
            Some("succeeded") => return Ok(job),
            Some("queued" | "running") => {}
            _ => return Err(format!("the job did not succeed: {job}")),
        }
        let id = job["id"].as_str().ok_or_else(|| format!("a job without an id: {job}"))?;
        let url = format!("{base}/v1/jobs/{id}?wait=30");
        job = job_of(client.get(&url).bearer_auth(token).send().await, &url).await?;
    }
    Err(format!("the job has not ended after 20 minutes: {job}"))
}

/// The job in a 200 or 202 answer.
async fn job_of(response: Result<reqwest::Response, reqwest::Error>, what: &str) -> Result<serde_json::Value, String> {
    let response = response.map_err(|err| format!("{what}: {err}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|err| format!("{what}: {status}, unreadable body: {err}"))?;
    if status != reqwest::StatusCode::OK && status != reqwest::StatusCode::ACCEPTED {
        return Err(format!("{what}: {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|err| format!("{what}: {status}, not a job ({err}): {text}"))
}

/// A request body read from `file` in [`BODY_CHUNK`]s as it is sent, never whole.
fn file_body(file: tokio::fs::File) -> reqwest::Body {
    use tokio::io::AsyncReadExt as _;
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut chunk = bytes::BytesMut::with_capacity(BODY_CHUNK);
        match file.read_buf(&mut chunk).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(hyper::body::Frame::data(chunk.freeze())), Some(file))),
            // The error ends the body (and the request).
            Err(err) => Some((Err(err), None)),
        }
    });
    reqwest::Body::wrap(http_body_util::StreamBody::new(chunks))
}

// ---------------------------------------------------------------------------
// Helpers

/// A private scratch folder (0700), removed with everything in it on drop.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> BenchResult<Self> {
        Self::new_in(&std::env::temp_dir())
    }

    /// A scratch folder inside `parent` (section 5 puts the service's memory root on `/dev/shm`).
    fn new_in(parent: &Path) -> BenchResult<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let path = parent.join(format!("host-throughput-{}-{nanos:08x}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|err| format!("cannot create the scratch folder {}: {err}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            eprintln!("warning: cannot remove the scratch folder {}: {err}", self.0.display());
        }
    }
}

/// A plain text table, columns padded to their widest cell.
#[derive(Debug)]
struct Table<const N: usize> {
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    fn new(header: [&str; N]) -> Self {
        Self { rows: vec![header.map(str::to_owned)] }
    }

    fn row(&mut self, row: [String; N]) {
        self.rows.push(row);
    }

    fn print(&self) {
        let mut widths = [0; N];
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for (index, row) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
                // Text left, figures right; the last column is never padded.
                let numeric = index > 0 && column > 0 && cell.starts_with(|c: char| c.is_ascii_digit());
                match (column + 1 == N, numeric) {
                    (true, _) => line.push_str(cell),
                    (false, true) => {
                        let _ = write!(line, "{cell:>width$}  ");
                    }
                    (false, false) => {
                        let _ = write!(line, "{cell:<width$}  ");
                    }
                }
            }
            println!("  {}", line.trim_end());
            if index == 0 {
                let total = widths.iter().sum::<usize>() + 2 * (N - 1);
                println!("  {}", "-".repeat(total));
            }
        }
    }
}

/// The sections to run: `BENCH_SECTIONS`, comma-separated section numbers
/// (`5`, `2,5`), else all of them.
struct Sections(Option<Vec<u32>>);

impl Sections {
    fn from_env() -> BenchResult<Self> {
        let Ok(text) = std::env::var("BENCH_SECTIONS") else { return Ok(Self(None)) };
        let numbers = text
            .split(',')
            .map(|part| match part.trim().parse::<u32>() {
                Ok(n @ 1..=5) => Ok(n),
                _ => Err(format!("BENCH_SECTIONS={text}: `{part}` is not a section number (1 to 5)")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(Some(numbers)))
    }

    fn has(&self, section: u32) -> bool {
        self.0.as_ref().is_none_or(|numbers| numbers.contains(&section))
    }

    /// ` BENCH_SECTIONS=...` for the reproduce line, or nothing for all.
    fn env(&self) -> String {
        self.0.as_ref().map_or_else(String::new, |numbers| {
            let list: Vec<String> = numbers.iter().map(u32::to_string).collect();
            format!(" BENCH_SECTIONS={}", list.join(","))
        })
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> BenchResult<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(text) => text.trim().parse().map_err(|err| format!("{name}={text}: {err}").into()),
        Err(_) => Ok(default),
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn rss(bytes: u64) -> String {
    format!("{:.1} MB", mb(bytes))
}

fn rate(rows: u64, wall: Duration) -> String {
    format!("{:.0} rows/s", rows as f64 / wall.as_secs_f64())
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}
