//! The embedding API: many tenants at once, concurrency bounds, spooling,
//! destinations, progress and the compiled-code cache.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orders_host::{Destination, Input, Invocation, Limits, Outcome, Progress, RunError};

use crate::util::{TestHost, files, gen_orders, seven_rows};

/// A distinct small export per `index`: its own ids, regions, amounts and
/// faults, so a mix-up between invocations shows in the outputs.
fn distinct_input(index: usize) -> Vec<u8> {
    const REGIONS: [&str; 5] = ["north", "south", "east", "west", "islands"];
    let mut csv = String::from("order_id,region,amount,status,note\n");
    for row in 0..(10 + index % 40) {
        let region = REGIONS[(index + row) % REGIONS.len()];
        let status = if row % 4 == 0 { "cancelled" } else { "completed" };
        let amount = if row % 9 == 8 { "n/a".to_owned() } else { format!("{}.{:02}", index * 7 + row, row % 100) };
        csv.push_str(&format!("{index}-{row},{region},{amount},{status},\"invocation {index}, row {row}\"\n"));
    }
    csv.into_bytes()
}

/// What the pipeline built natively makes of `input`: the reference each
/// sandboxed run is checked against.
fn native_outputs(input: &[u8]) -> BTreeMap<String, String> {
    let mut sink = orders_pipeline::MemorySink::default();
    orders_pipeline::process(input, &mut sink).expect("native run");
    sink.into_files().into_iter().map(|(name, bytes)| (name, String::from_utf8(bytes).expect("UTF-8"))).collect()
}

#[test]
fn two_hundred_invocations_over_eight_threads_and_three_tenants_each_get_their_own_outputs() {
    let host = TestHost::configured("many", |config| {
        config.max_concurrent = 4;
        config.max_concurrent_per_tenant = 2;
    });
    let pipeline = host.bundled();
    let tenants = ["acme", "globex", "initech"];
    std::thread::scope(|scope| {
        for thread in 0..8 {
            let (runner, pipeline) = (host.runner.clone(), pipeline.clone());
            scope.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                for index in (thread..200).step_by(8) {
                    let input = distinct_input(index);
                    let tenant = tenants[index % tenants.len()];
                    let invocation = Invocation::new(pipeline.clone(), Input::Bytes(input.clone())).tenant(tenant);
                    let outcome = runtime.block_on(runner.invoke(invocation)).expect("invocation succeeds");
                    assert_eq!(outcome.tenant.as_deref(), Some(tenant));
                    assert_eq!(files(&outcome), native_outputs(&input), "invocation {index} got its own outputs");
                }
            });
        }
    });
    host.runner.shutdown().expect("shutdown");
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_never_runs_more_than_its_bound_and_fail_fast_is_refused() {
    let host = TestHost::configured("bound", |config| {
        config.max_concurrent = 8;
        config.max_concurrent_per_tenant = 2;
    });
    let sleep = host.component(test_programs_artifacts::SLEEP);
    let running = || host.scratch.leftovers().iter().filter(|path| path.contains("tenant-slow/sbx-")).count();
    let invoke = || host.runner.invoke(Invocation::new(sleep.clone(), Input::Bytes(b"400".to_vec())).tenant("slow"));
    let watch = async {
        let mut most = 0;
        let mut refused = None;
        for _ in 0..300 {
            let now = running();
            most = most.max(now);
            if now == 2 && refused.is_none() {
                let fail_fast = Invocation::new(sleep.clone(), Input::Bytes(b"1".to_vec())).tenant("slow").fail_fast();
                refused = Some(host.runner.invoke(fail_fast).await.expect_err("the tenant is at its bound"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (most, refused)
    };
    let (a, b, c, d, e, (most, refused)) = tokio::join!(invoke(), invoke(), invoke(), invoke(), invoke(), watch);
    for outcome in [a, b, c, d, e] {
        outcome.expect("every waiting invocation runs in turn");
    }
    assert_eq!(most, 2, "two at a time for one tenant");
    let refused = refused.expect("the bound was reached while watching");
    assert_eq!(refused.outcome(), Outcome::Busy, "{refused}");
    // Another tenant is not held up by the busy one.
    let pipeline = host.bundled();
    let other =
        host.runner.invoke(Invocation::new(pipeline.clone(), Input::Bytes(seven_rows())).tenant("quick").fail_fast());
    other.await.expect("another tenant has room");
    host.runner.shutdown().expect("shutdown");
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_and_on_disk_inputs_give_identical_outputs() {
    let host = TestHost::configured("spool", |config| config.spool_threshold = 64 << 10);
    let pipeline = host.bundled();
    let small = crate::util::gen_orders(&["--rows", "300", "--seed", "5", "--dirty", "0.3"]);
    let large = crate::util::gen_orders(&["--rows", "3000", "--seed", "5", "--dirty", "0.3"]);
    assert!(small.len() < 64 << 10 && large.len() > 64 << 10, "{} {}", small.len(), large.len());
    let spooled = host.run_bytes(&pipeline, &small).await.expect("small");
    let on_disk = host.run_bytes(&pipeline, &large).await.expect("large");
    assert!(spooled.spooled && !on_disk.spooled);

    // The same input both ways: a runner that never spools.
    let disk_only = TestHost::configured("no-spool", |config| config.spool_threshold = 0);
    let same = disk_only.run_bytes(&disk_only.bundled(), &small).await.expect("on disk");
    assert!(!same.spooled);
    assert_eq!(files(&spooled), files(&same));
    assert_eq!(spooled.outputs, same.outputs, "same names, sizes and hashes");
    host.assert_root_empty();
    disk_only.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_input_spools_when_small_and_streams_when_large() {
    let host = TestHost::configured("reader", |config| config.spool_threshold = 1024);
    let pipeline = host.bundled();
    let small = host
        .runner
        .invoke(Invocation::new(pipeline.clone(), Input::Reader(Box::new(std::io::Cursor::new(seven_rows())))))
        .await
        .expect("small reader");
    assert!(small.spooled);
    let input = crate::util::gen_orders(&["--rows", "500", "--seed", "2"]);
    let large = host
        .runner
        .invoke(Invocation::new(pipeline.clone(), Input::Reader(Box::new(std::io::Cursor::new(input.clone())))))
        .await
        .expect("large reader");
    assert!(!large.spooled);
    assert_eq!(files(&large), native_outputs(&input));
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_follows_what_the_guest_reads() {
    let host = TestHost::new("progress");
    let input = crate::util::gen_orders(&["--rows", "2000", "--seed", "9"]);
    let progress = Arc::new(Progress::default());
    let pipeline = host.bundled();
    let invocation = Invocation::new(pipeline.clone(), Input::Bytes(input.clone())).progress(Arc::clone(&progress));
    host.runner.invoke(invocation).await.expect("run");
    assert_eq!(progress.total_bytes(), input.len() as u64);
    assert_eq!(progress.bytes_read(), input.len() as u64, "the guest read its whole input");
    let lines = input.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(progress.lines_read(), lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_can_be_delivered_as_one_tar_archive() {
    let host = TestHost::new("tar");
    let archive = host.scratch.join("orders.tar");
    let pipeline = host.bundled();
    let invocation = Invocation::new(pipeline.clone(), Input::Bytes(seven_rows()))
        .destination(Destination::Tar { path: archive.clone(), force: false });
    let outcome = host.runner.invoke(invocation).await.expect("run");
    let listing = std::process::Command::new("tar").arg("-tvf").arg(&archive).output().expect("tar lists");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in &outcome.outputs {
        assert!(listing.contains(&file.name), "{listing}");
    }
    assert!(listing.lines().all(|line| line.starts_with("-rw-------")), "{listing}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&archive).expect("stat").permissions());
    assert_eq!(mode & 0o777, 0o600);
    // An existing archive is kept without force.
    let again = Invocation::new(pipeline.clone(), Input::Bytes(seven_rows()))
        .destination(Destination::Tar { path: archive.clone(), force: false });
    assert_eq!(host.runner.invoke(again).await.expect_err("exists").outcome(), Outcome::DeliveryFailed);
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_limit_profiles_apply_to_their_invocations() {
    let host = TestHost::new("profiles");
    let strict = Limits { timeout: Duration::from_millis(300), ..Limits::default() };
    host.runner.set_tenant_limits("strict", strict).expect("profile");
    let sleep = host.component(test_programs_artifacts::SLEEP);
    let err = host
        .runner
        .invoke(Invocation::new(sleep.clone(), Input::Bytes(b"2000".to_vec())).tenant("strict"))
        .await
        .expect_err("the tenant's timeout applies");
    assert_eq!(err.outcome(), Outcome::Timeout);
    host.runner
        .invoke(Invocation::new(sleep.clone(), Input::Bytes(b"500".to_vec())).tenant("relaxed"))
        .await
        .expect("another tenant keeps the defaults");
    let bad = host.runner.invoke(Invocation::new(sleep.clone(), Input::Bytes(b"1".to_vec())).tenant("../escape")).await;
    assert!(bad.expect_err("tenant ids are plain names").to_string().contains("tenant id"));
    host.runner.shutdown().expect("shutdown");
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_removal_finishes_by_shutdown() {
    let host = TestHost::configured("background", |config| config.background_removal = true);
    let pipeline = host.bundled();
    for _ in 0..20 {
        host.run_bytes(&pipeline, &seven_rows()).await.expect("run");
    }
    host.runner.shutdown().expect("shutdown waits for every removal");
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_would_refuse_the_outputs_fails_before_the_guest_runs() {
    let host = TestHost::new("refused-destination");
    let taken = host.scratch.join("taken");
    std::fs::create_dir(&taken).expect("mkdir");
    std::fs::write(taken.join("keep.txt"), "keep").expect("write");
    let sleep = host.component(test_programs_artifacts::SLEEP);
    let started = std::time::Instant::now();
    let invocation = Invocation::new(sleep.clone(), Input::Bytes(b"3600000".to_vec()))
        .destination(Destination::Folder { path: taken.clone(), force: false });
    let err = host.runner.invoke(invocation).await.expect_err("refused");
    assert_eq!(err.outcome(), Outcome::DeliveryFailed, "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "the hour-long guest never ran");
    assert_eq!(std::fs::read_to_string(taken.join("keep.txt")).expect("kept"), "keep");
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_made_ahead_are_fresh_for_every_invocation_and_gone_by_shutdown() {
    let host = TestHost::configured("ready", |config| {
        config.ready_sandboxes = 3;
        config.background_removal = true;
    });
    let probe = host.component(test_programs_artifacts::PROBE);
    let pipeline = host.bundled();
    for index in 0..12 {
        // Each probe lists its folders before writing: a reused sandbox would
        // show the previous invocation's files.
        let outcome = host.run_bytes(&probe, b"probe input").await.expect("probe runs");
        let listed: Vec<String> = files(&outcome)["probe.txt"]
            .lines()
            .filter_map(|line| line.strip_prefix("list\t"))
            .map(str::to_owned)
            .collect();
        assert_eq!(listed, ["input.csv"], "invocation {index} got a fresh sandbox");
        let input = distinct_input(index);
        let outcome = host.run_bytes(&pipeline, &input).await.expect("pipeline runs");
        assert_eq!(files(&outcome), native_outputs(&input), "invocation {index}");
    }
    assert!(
        host.scratch.leftovers().iter().any(|path| path.contains("sbx-")),
        "sandboxes are made ahead of time while the runner lives"
    );
    host.runner.shutdown().expect("shutdown removes queued and unused sandboxes");
    host.assert_root_empty();
    // After shutdown, the runner refuses invocations with a clear error.
    let err = host.run_bytes(&pipeline, &seven_rows()).await.expect_err("refused after shutdown");
    assert!(matches!(err, orders_host::RunError::ShutDown), "{err}");
    assert!(err.to_string().contains("shut down"), "{err}");
    host.assert_root_empty();
}

/// A folder delivery, checked file by file against the native pipeline, the
/// sha256 of the outcome and the owner-only modes.
fn assert_delivered(folder: &std::path::Path, outcome: &orders_host::RunOutcome, input: &[u8]) {
    use sha2::Digest as _;
    use std::os::unix::fs::PermissionsExt as _;
    let expected = native_outputs(input);
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .expect("delivered folder")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, expected.keys().cloned().collect::<Vec<_>>());
    for file in &outcome.outputs {
        let path = folder.join(&file.name);
        let contents = std::fs::read(&path).expect("delivered file");
        assert_eq!(String::from_utf8_lossy(&contents), expected[&file.name], "{}", file.name);
        assert_eq!(file.bytes, contents.len() as u64);
        let digest: String = sha2::Sha256::digest(&contents).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(file.sha256, digest, "{}", file.name);
        assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600, "{}", file.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_delivery_moves_copies_and_splits_large_outputs_alike() {
    // Sandboxes on the disk root, in the destination's filesystem: outputs are
    // moved out of the sandbox; above 1 MiB of outputs two threads share them.
    let host = TestHost::configured("deliver", |config| config.spool_threshold = 0);
    let pipeline = host.bundled();
    let large = crate::util::gen_orders(&["--rows", "60000", "--seed", "4", "--dirty", "0.2"]);
    let small = distinct_input(3);
    for (name, input) in [("large", &large), ("small", &small)] {
        let folder = host.scratch.join(name);
        let invocation = Invocation::new(pipeline.clone(), Input::Bytes(input.clone()))
            .destination(Destination::Folder { path: folder.clone(), force: false });
        let outcome = host.runner.invoke(invocation).await.expect("delivered");
        assert!(name == "small" || outcome.outputs.iter().map(|f| f.bytes).sum::<u64>() > 1 << 20, "{name}");
        assert_delivered(&folder, &outcome, input);
    }
    host.assert_root_empty();

    // A memory root on another filesystem than the destination: copied.
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir()
        || std::fs::metadata(shm).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok()
            == std::fs::metadata(&host.scratch.path).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok()
    {
        println!("skipped the copy case: no /dev/shm on another filesystem");
        return;
    }
    let memory_root = shm.join(format!("host-test-deliver-{}", std::process::id()));
    let copying = TestHost::configured("deliver-copy", |config| config.memory_root = Some(memory_root.clone()));
    let folder = copying.scratch.join("copied");
    let copying_pipeline = copying.bundled();
    let invocation = Invocation::new(copying_pipeline.clone(), Input::Bytes(small.clone()))
        .destination(Destination::Folder { path: folder.clone(), force: false });
    let outcome = copying.runner.invoke(invocation).await.expect("delivered");
    assert!(outcome.spooled, "the small input ran on the memory root");
    assert_delivered(&folder, &outcome, &small);
    copying.runner.shutdown().expect("shutdown");
    assert_eq!(std::fs::read_dir(&memory_root).expect("memory root").count(), 0, "the memory root is empty");
    std::fs::remove_dir_all(&memory_root).expect("remove the test's memory root");
}

/// The longest the executor may go without running the ticker while an
/// invocation collects and delivers: 25 ms. Collecting and delivering a 1M-row
/// export (19 MB, hashed, flushed with fsync) takes 15-40 ms on this project's
/// disk, so a delivery on the executor would show as one gap that long; the
/// ticker, woken every millisecond, otherwise waits only for the timer and
/// for the executor's other small work (a scheduling hiccup of a loaded
/// machine stays well under it).
const LONGEST_TICK_GAP: Duration = Duration::from_millis(25);

/// The executor of an embedder is never blocked by an invocation: on a
/// single-threaded runtime, a task that wakes every millisecond keeps
/// ticking while an invocation delivers a 1M-row export's outputs (moved,
/// hashed and flushed to disk). Only the window of collection and delivery
/// is looked at: the guest itself runs on the executor and yields every
/// epoch tick (10 ms). Before blocking stages ran on the blocking pool, the
/// ticker stopped for the whole delivery.
#[test]
fn a_ticking_task_keeps_ticking_while_an_invocation_delivers_with_fsync() {
    let host = TestHost::new("ticking");
    let input = host.scratch.write("orders.csv", gen_orders(&["--rows", "1000000", "--seed", "7"]));
    let out = host.scratch.join("orders.out");
    let pipeline = host.bundled();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (outcome, returned, ticks) = runtime.block_on(async {
        let running = Arc::new(AtomicBool::new(true));
        let ticker = tokio::spawn({
            let running = Arc::clone(&running);
            async move {
                let mut ticks = vec![Instant::now()];
                while running.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    ticks.push(Instant::now());
                }
                ticks
            }
        });
        let invocation = Invocation::new(pipeline, Input::Path(input))
            .destination(Destination::Folder { path: out.clone(), force: false });
        let outcome = host.runner.invoke(invocation).await.expect("the export is delivered");
        let returned = Instant::now();
        running.store(false, Ordering::Relaxed);
        let ticks = ticker.await.expect("ticker");
        (outcome, returned, ticks)
    });
    assert_eq!(outcome.report.rows, 1_000_000);
    // The window of collection and delivery, counted back from the return.
    let timings = &outcome.timings;
    let window_end = returned - timings.sandbox_remove;
    let window_start = window_end - timings.deliver - timings.collect;
    // Each gap between two ticks, the part of it inside the window.
    let longest = ticks
        .windows(2)
        .map(|pair| pair[1].min(window_end).saturating_duration_since(pair[0].max(window_start)))
        .max()
        .unwrap_or_default();
    let in_window = ticks.iter().filter(|&&tick| (window_start..window_end).contains(&tick)).count();
    println!(
        "ticker: {} ticks in {:?}; collecting {:?} and delivering {:?}: {in_window} ticks, longest gap {longest:?} \
         (bound {LONGEST_TICK_GAP:?}); the guest took {:?}",
        ticks.len(),
        timings.total,
        timings.collect,
        timings.deliver,
        timings.guest
    );
    assert!(
        longest < LONGEST_TICK_GAP,
        "the ticker waited {longest:?} at once while the outputs were collected and delivered \
         ({:?}): the executor was blocked",
        timings.collect + timings.deliver
    );
    host.assert_root_empty();
}

/// Tenants come and go; what the runner keeps of them is bounded: two
/// thousand tenants, one invocation each, leave the runner holding no more
/// folder descriptors than the idle tenants' it keeps (two each, see
/// `MAX_IDLE_TENANTS`). Only descriptors of this test's own folders are
/// counted: other tests of this binary open descriptors meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_tenants_leave_a_bounded_number_of_descriptors_open() {
    const TENANTS: usize = 2000;
    let host = TestHost::new("many-tenants");
    let pipeline = host.bundled();
    let ours = || {
        std::fs::read_dir("/proc/self/fd")
            .expect("list descriptors")
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.starts_with(&host.scratch.path))
            .count()
    };
    host.run_bytes(&pipeline, &seven_rows()).await.expect("warm-up run");
    let before = ours();
    let mut most = before;
    for tenant in 0..TENANTS {
        let invocation = Invocation::new(pipeline.clone(), Input::Bytes(seven_rows())).tenant(format!("t{tenant}"));
        host.runner.invoke(invocation).await.expect("tenant run");
        most = most.max(ours());
    }
    let after = ours();
    // Between invocations, none is in flight: only the kept tenants' folders.
    let in_flight = 0;
    let bound = 2 * (orders_host::MAX_IDLE_TENANTS + in_flight);
    println!(
        "{TENANTS} tenants: {before} descriptors of the test's folders before, {after} after, at most {most} between (bound: {before} + {bound})"
    );
    assert!(most <= before + bound, "{most} descriptors open between invocations, {before} before");
    assert!(after <= before + bound, "{after} descriptors open after {TENANTS} tenants, {before} before");
    host.runner.shutdown().expect("shutdown");
    assert_eq!(ours(), before, "the shutdown closed every tenant's folders");
    host.assert_root_empty();
}

/// Gives `burst` bytes, then one byte per call, each after `pause`, forever:
/// an input stream that never ends.
struct Trickle {
    burst: usize,
    pause: Duration,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.burst > 0 {
            let given = self.burst.min(buf.len());
            buf[..given].fill(b'x');
            self.burst -= given;
            return Ok(given);
        }
        std::thread::sleep(self.pause);
        buf[0] = b'x';
        Ok(1)
    }
}

/// An input stream fed by the test: it says when it is first read (the
/// invocation holds its slots then), and ends when the sender is dropped.
struct Fed {
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    first_read: Option<tokio::sync::oneshot::Sender<()>>,
    pending: Vec<u8>,
}

fn fed() -> (std::sync::mpsc::Sender<Vec<u8>>, tokio::sync::oneshot::Receiver<()>, Fed) {
    let (send, chunks) = std::sync::mpsc::channel();
    let (first_read, read) = tokio::sync::oneshot::channel();
    (send, read, Fed { chunks, first_read: Some(first_read), pending: Vec::new() })
}

impl Read for Fed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(first_read) = self.first_read.take() {
            let _ = first_read.send(());
        }
        while self.pending.is_empty() {
            match self.chunks.recv() {
                Ok(chunk) => self.pending = chunk,
                Err(_sender_dropped) => return Ok(0),
            }
        }
        let given = self.pending.len().min(buf.len());
        buf[..given].copy_from_slice(&self.pending[..given]);
        self.pending.drain(..given);
        Ok(given)
    }
}

/// A deadline reaches the input copy: an endless stream is read chunk by
/// chunk, and the deadline stops it at the next chunk, removes the sandbox
/// and frees the slot. Before, the copy went on after `invoke` returned,
/// holding a thread and a sandbox outside the concurrency bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_stops_an_endless_input_stream_removes_its_sandbox_and_frees_its_slot() {
    let host = TestHost::configured("endless-input", |config| {
        config.max_concurrent = 1;
        config.spool_threshold = 1024;
    });
    let pipeline = host.bundled();
    let endless = Trickle { burst: 64 << 10, pause: Duration::from_millis(5) };
    let invocation =
        Invocation::new(pipeline.clone(), Input::Reader(Box::new(endless))).deadline(Duration::from_millis(300));
    let err = host.runner.invoke(invocation).await.expect_err("an endless input never ends");
    assert!(matches!(err, RunError::DeadlineExceeded { .. }), "{err}");
    assert_eq!(err.outcome(), Outcome::Timeout);
    host.assert_root_empty();
    // The only slot is free again: failing fast does not fail.
    let next = Invocation::new(pipeline.clone(), Input::Bytes(seven_rows())).fail_fast();
    host.runner.invoke(next).await.expect("the stopped invocation released its slot");
    host.assert_recovers().await;
}

/// A deadline stops a guest parked in a host call (a sleep), with
/// `DeadlineExceeded` rather than the guest's own timeout; the sandbox is
/// removed and the folder destination never made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_stops_a_sleeping_guest_and_delivers_nothing() {
    let host = TestHost::new("deadline");
    let sleep = host.component(test_programs_artifacts::SLEEP);
    let out = host.scratch.join("never");
    let invocation = Invocation::new(sleep.clone(), Input::Bytes(b"3600000".to_vec()))
        .deadline(Duration::from_millis(500))
        .destination(Destination::Folder { path: out.clone(), force: false });
    let err = host.runner.invoke(invocation).await.expect_err("the hour-long sleep is stopped");
    match err {
        RunError::DeadlineExceeded { limit } => assert_eq!(limit, Duration::from_millis(500)),
        other => panic!("expected the deadline, got {other}"),
    }
    assert!(!out.exists(), "nothing was delivered: the destination was not made");
    host.assert_recovers().await;
}

/// The queue timeout bounds the wait for a slot: with the only slot held by
/// another invocation, a second one gives up with `Busy`; the first goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_timeout_gives_busy_while_the_only_slot_is_held() {
    let host = TestHost::configured("queue-timeout", |config| config.max_concurrent = 1);
    let pipeline = host.bundled();
    let (feed, first_read, input) = fed();
    let holding = tokio::spawn({
        let (runner, pipeline) = (host.runner.clone(), pipeline.clone());
        async move { runner.invoke(Invocation::new(pipeline, Input::Reader(Box::new(input)))).await }
    });
    first_read.await.expect("the first invocation reads its input, holding the slot");
    let waiting =
        Invocation::new(pipeline.clone(), Input::Bytes(seven_rows())).queue_timeout(Duration::from_millis(50));
    let err = host.runner.invoke(waiting).await.expect_err("no slot within the queue timeout");
    assert!(matches!(err, RunError::Busy { tenant: None }), "{err}");
    feed.send(seven_rows()).expect("feed");
    drop(feed);
    let held = holding.await.expect("task").expect("the holder runs to its end");
    assert_eq!((held.report.rows, held.report.accepted), (7, 5));
    host.assert_recovers().await;
}

/// After `shutdown()` a tenant's invocation is refused, also one that was
/// waiting for a slot; the folders of tenants that nothing holds are
/// removed, those of a held tenant kept (its running invocation made its
/// sandbox in it afterwards, and finishes), and removed by a later shutdown.
#[test]
fn a_shutdown_refuses_tenants_and_removes_only_the_folders_nothing_holds() {
    let host = TestHost::configured("tenant-shutdown", |config| config.max_concurrent = 1);
    let pipeline = host.bundled();
    let tenant_folders = |id: &str| {
        [host.scratch.sandbox_root(), host.scratch.memory_root()]
            .iter()
            .filter(|root| root.join(format!("tenant-{id}")).is_dir())
            .count()
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        for id in ["idle", "queued"] {
            let invocation = Invocation::new(pipeline.clone(), Input::Bytes(seven_rows())).tenant(id);
            host.runner.invoke(invocation).await.expect("a run before the shutdown");
            assert_eq!(tenant_folders(id), 2, "{id} has a folder in each root");
        }
        // "running" holds the only slot, reading its input: its folders are
        // open, still empty (its sandbox comes after the input is read).
        let (feed, first_read, input) = fed();
        let running = tokio::spawn({
            let (runner, pipeline) = (host.runner.clone(), pipeline.clone());
            async move { runner.invoke(Invocation::new(pipeline, Input::Reader(Box::new(input))).tenant("running")).await }
        });
        first_read.await.expect("the running invocation holds the slot");
        // "queued" waits for it (this runtime has one thread: once yielded
        // to, the task is parked on the slot).
        let queued = tokio::spawn({
            let (runner, pipeline) = (host.runner.clone(), pipeline.clone());
            async move { runner.invoke(Invocation::new(pipeline, Input::Bytes(seven_rows())).tenant("queued")).await }
        });
        tokio::task::yield_now().await;

        host.runner.shutdown().expect("shutdown");
        assert_eq!(tenant_folders("idle"), 0, "nothing holds the idle tenant: its folders are gone");
        assert_eq!(tenant_folders("running"), 2, "the running invocation holds its tenant's folders");
        assert_eq!(tenant_folders("queued"), 2, "the queued invocation holds its tenant");
        let refused = Invocation::new(pipeline.clone(), Input::Bytes(seven_rows())).tenant("idle");
        let err = host.runner.invoke(refused).await.expect_err("refused after the shutdown");
        assert!(matches!(err, RunError::ShutDown), "{err}");

        feed.send(seven_rows()).expect("feed");
        drop(feed);
        let ran = running.await.expect("task").expect("a running invocation finishes");
        assert_eq!(ran.report.rows, 7);
        let err = queued.await.expect("task").expect_err("a queued invocation does not start after the shutdown");
        assert!(matches!(err, RunError::ShutDown), "{err}");
    });
    host.runner.shutdown().expect("a second shutdown removes what is empty now");
    host.assert_root_empty();
}
