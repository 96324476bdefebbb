//! Shared fixtures: a private scratch folder per test, with its own sandbox
//! root, so that "the root is empty afterwards" is about that test alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use orders_host::{Component, Input, Invocation, Limits, RunError, RunOutcome, Runner, RunnerConfig};

/// How often, and how many times, a test looks for a running guest's
/// sandbox: a minute in all.
const SANDBOX_POLL: std::time::Duration = std::time::Duration::from_millis(5);
const SANDBOX_POLLS: u32 = 12_000;

/// A scratch folder removed when the test ends (also on panic).
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).expect("OS RNG");
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("host-test-{name}-{suffix}"));
        std::fs::create_dir_all(&path).expect("create scratch folder");
        Self { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    pub fn sandbox_root(&self) -> PathBuf {
        self.join("sandboxes")
    }

    /// Stands in for `/dev/shm` in tests, so every run's sandbox is in this
    /// scratch folder, whichever root it takes.
    pub fn memory_root(&self) -> PathBuf {
        self.join("memory")
    }

    /// Both roots, for `host` command lines.
    pub fn root_args(&self) -> [std::ffi::OsString; 4] {
        ["--sandbox-root".into(), self.sandbox_root().into(), "--memory-root".into(), self.memory_root().into()]
    }

    /// Every entry under both roots (tenant folders included), by path.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for root in [self.sandbox_root(), self.memory_root()] {
            let mut pending = vec![root];
            while let Some(dir) = pending.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                for entry in entries {
                    let path = entry.expect("entry").path();
                    if path.is_dir() && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sbx-")) {
                        pending.push(path.clone());
                    }
                    found.push(path.display().to_string());
                }
            }
        }
        found.sort();
        found
    }

    /// Waits, up to a minute, until `found` finds what it looks for in the
    /// sandbox folder of a running guest (here, a guest in another process),
    /// and returns it.
    pub fn wait_for_sandbox<T>(&self, found: impl Fn(&Path) -> Option<T>) -> T {
        for _ in 0..SANDBOX_POLLS {
            if let Some(value) = self.running_sandbox().and_then(|sandbox| found(&sandbox)) {
                return value;
            }
            std::thread::sleep(SANDBOX_POLL);
        }
        panic!("the sandbox of the running guest never showed what the test waited for");
    }

    /// [`Scratch::wait_for_sandbox`] for a guest run by this test's own
    /// runtime, which goes on running it meanwhile.
    pub async fn wait_for_sandbox_async<T>(&self, found: impl Fn(&Path) -> Option<T>) -> T {
        for _ in 0..SANDBOX_POLLS {
            if let Some(value) = self.running_sandbox().and_then(|sandbox| found(&sandbox)) {
                return value;
            }
            tokio::time::sleep(SANDBOX_POLL).await;
        }
        panic!("the sandbox of the running guest never showed what the test waited for");
    }

    /// The sandbox folder of a running guest, under either root.
    pub fn running_sandbox(&self) -> Option<PathBuf> {
        self.leftovers()
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.is_dir() && path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sbx-")))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A runner with its own sandbox root inside a scratch folder.
pub struct TestHost {
    pub scratch: Scratch,
    pub runner: Runner,
}

impl TestHost {
    pub fn new(name: &str) -> Self {
        Self::with_config(name, false)
    }

    pub fn with_config(name: &str, fuel_metering: bool) -> Self {
        Self::configured(name, |config| config.fuel_metering = fuel_metering)
    }

    /// A runner whose roots are in a fresh scratch folder, configured further by `adjust`.
    pub fn configured(name: &str, adjust: impl FnOnce(&mut RunnerConfig)) -> Self {
        let scratch = Scratch::new(name);
        let mut config = RunnerConfig {
            sandbox_root: Some(scratch.sandbox_root()),
            memory_root: Some(scratch.memory_root()),
            ..RunnerConfig::default()
        };
        adjust(&mut config);
        let runner = Runner::new(&config).expect("runner");
        Self { scratch, runner }
    }

    pub fn bundled(&self) -> Component {
        self.runner.bundled().expect("bundled pipeline compiles")
    }

    pub fn component(&self, path: &str) -> Component {
        self.runner.load_file(Path::new(path)).expect("test program compiles")
    }

    pub async fn run_bytes(&self, component: &Component, input: &[u8]) -> Result<RunOutcome, RunError> {
        self.run_with(component, input, &Limits::default()).await
    }

    pub async fn run_with(&self, component: &Component, input: &[u8], limits: &Limits) -> Result<RunOutcome, RunError> {
        self.runner.invoke(Invocation::new(component.clone(), Input::Bytes(input.to_vec())).limits(*limits)).await
    }

    /// After an attack: nothing is left, and the host still runs normal
    /// invocations correctly: the bundled pipeline, and `well_behaved`, a
    /// polite guest of the test programs whose output is its input. A
    /// sandbox the guest filled past what removal does within its budget is
    /// finished by the housekeeping thread after the invocation returned: the
    /// shutdown waits for it (and the runner goes on, removing inline).
    pub async fn assert_recovers(&self) {
        self.assert_root_empty();
        let input = seven_rows();
        let outcome = self.run_bytes(&self.bundled(), &input).await.expect("a normal run after the attack");
        assert_eq!((outcome.report.rows, outcome.report.accepted), (7, 5));
        let polite = self.component(test_programs_artifacts::WELL_BEHAVED);
        let outcome = self.run_bytes(&polite, &input).await.expect("a polite guest runs after the attack");
        let text = String::from_utf8(input).expect("the example is UTF-8");
        assert_eq!(outcome.report.rows, text.lines().count() as u64);
        assert_eq!(files(&outcome), [("copy.csv".to_owned(), text)].into(), "the copy is the input, byte for byte");
        self.assert_root_empty();
    }

    /// The roots are empty once the sandboxes handed to the housekeeping
    /// thread (removal past its budget) are gone: waits for that, up to a
    /// minute, then checks.
    pub fn assert_root_empty(&self) {
        let patience = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !self.scratch.leftovers().is_empty() && std::time::Instant::now() < patience {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(self.scratch.leftovers(), Vec::<String>::new(), "the sandbox roots must be empty");
    }
}

/// The files of an in-memory delivery, by name.
pub fn files(outcome: &RunOutcome) -> std::collections::BTreeMap<String, String> {
    match &outcome.delivered {
        orders_host::Delivered::Memory(files) => files
            .iter()
            .map(|(name, bytes)| (name.clone(), String::from_utf8(bytes.clone()).expect("outputs are UTF-8")))
            .collect(),
        other => panic!("expected an in-memory delivery, got {other:?}"),
    }
}

/// `../shared` beside the checkout (or `$ORDERS_SHARED_DIR`): the pipeline
/// contract, its example and the generator of dirty exports.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("ORDERS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

/// Runs `gen_orders.py` at test time: exports are never committed.
pub fn gen_orders(args: &[&str]) -> Vec<u8> {
    let script = shared_dir().join("tools/gen_orders.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run python3 {}: {err}", script.display()));
    assert!(output.status.success(), "gen_orders.py failed: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// The seven-row example of SPEC.md, as bundled in `examples/`.
pub fn seven_rows() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/orders.csv")).expect("bundled example")
}

/// Runs `command` to its end and returns its output with the peak resident
/// memory of the process, in KiB (the kernel's `ru_maxrss` of the child,
/// read by a Python parent that waits for nothing else).
pub fn peak_rss_kib(command: &mut Command) -> (std::process::Output, u64) {
    const MEASURE: &str = "import resource, subprocess, sys\n\
        done = subprocess.run(sys.argv[1:], capture_output=True)\n\
        sys.stdout.buffer.write(done.stdout)\n\
        sys.stderr.buffer.write(done.stderr)\n\
        sys.stderr.write('\\npeak_rss_kib=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
        sys.exit(done.returncode)";
    let mut measured = Command::new("python3");
    measured.arg("-c").arg(MEASURE).arg(command.get_program()).args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => measured.env(key, value),
            None => measured.env_remove(key),
        };
    }
    let mut output = measured.output().expect("python3 runs the command");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let (rest, peak) = stderr.rsplit_once("\npeak_rss_kib=").expect("python3 reports the peak");
    let peak = peak.trim().parse().expect("a number of KiB");
    output.stderr = rest.as_bytes().to_vec();
    (output, peak)
}

/// The number after `label` in the guest's message, e.g. `holding 1048576 bytes`.
pub fn figure(err: &RunError, label: &str) -> u64 {
    let text = err.to_string();
    text.split(label)
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("the guest says `{label} N`: {text}"))
}

/// Staging folders a delivery left in `folder` (there should be none).
pub fn staging_leftovers(folder: &Path) -> Vec<String> {
    std::fs::read_dir(folder)
        .expect("list")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("staging"))
        .collect()
}

/// The default limits with a 2 s timeout, for guests that should end soon.
pub fn limits() -> Limits {
    Limits { timeout: Duration::from_secs(2), ..Limits::default() }
}
