//! `host serve --nats` and `host worker` as processes over a real
//! `nats-server` (Debian's package; `.ci/run` installs it) that each test
//! starts with JetStream on a free loopback port in its scratch folder, and
//! stops. Killed workers, a restarted NATS server, a second replica.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::Value;

use crate::serve::{
    ACME, BETA, Server, chunked_upload, id_of, large_result_input, sandboxes_after_removal, served_outputs, sha256_hex,
    sleep_config, tenant,
};
use crate::util::{Scratch, seven_rows};

const GAMMA: &str = "gamma-token-5555555555";

/// A `nats-server -js` on a free loopback port, its store in the scratch.
struct Nats {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
}

impl Nats {
    fn start(scratch: &Scratch) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let mut nats = Self { child: None, port, store: scratch.join("jetstream") };
        nats.restart();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same port and store) and waits for its port.
    fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (Debian: apt-get install nats-server; .ci/run installs it)");
        self.child = Some(child);
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("nats-server did not listen on {}", self.port);
    }

    /// Stops it as an operator's restart does (SIGTERM): nats-server 2.9
    /// acknowledges a message once it is in its write cache, so only a
    /// clean stop promises what was acknowledged is on disk.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    async fn client(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(async_nats::connect(self.url()).await.expect("the test connects to NATS"))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `host worker` process.
struct Worker {
    child: Child,
}

impl Worker {
    fn start(scratch: &Scratch, config: &Path, nats: &Nats, name: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_host"))
            .args(["worker", "--config"])
            .arg(config)
            .args(["--nats", &nats.url(), "--concurrency", "2", "--data-dir"])
            .arg(scratch.join(name))
            .args(scratch.root_args())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("host worker starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("the worker says it is pulling");
        assert!(line.contains("pulling jobs"), "unexpected: {line:?}");
        Self { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The config file: three tenants, short ack wait, and `extra` lines.
fn write_config(scratch: &Scratch, server_extra: &str, nats: &str, tenant_extra: &str) -> PathBuf {
    let config = format!(
        "data_dir = {:?}\n{}\n[nats]\n{nats}\n{}{}{}",
        scratch.join("data"),
        sleep_config(server_extra, ""),
        tenant("acme", ACME, tenant_extra),
        tenant("beta", BETA, tenant_extra),
        tenant("gamma", GAMMA, tenant_extra),
    );
    scratch.write("service.toml", config)
}

fn replica(scratch: &Scratch, config: &Path, nats: &Nats) -> Server {
    Server::start_with(scratch, config, &["--nats", &nats.url()])
}

/// POSTs until the answer is not a 503 (NATS restarting), then expects `202`.
async fn post_retrying(server: &Server, token: &str, body: Vec<u8>) -> String {
    for _ in 0..300 {
        let response = server.post(token, "", body.clone()).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(response.headers().contains_key("retry-after"), "a 503 says when to retry");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        return id_of(&response.json::<Value>().await.expect("a job"));
    }
    panic!("the replica answered 503 for 30 s");
}

/// The job once ended, reading through 503s while NATS restarts.
async fn ended(server: &Server, token: &str, id: &str) -> Value {
    for _ in 0..600 {
        let response = server.get(token, &format!("/v1/jobs/{id}?wait=10")).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(response.status(), StatusCode::OK, "job {id}");
        let job: Value = response.json().await.expect("a job");
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or_default()) {
            return job;
        }
    }
    panic!("job {id} never ended");
}

fn outputs_of(job: &Value) -> Vec<(String, String)> {
    job["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| {
            (o["name"].as_str().unwrap_or_default().to_owned(), o["sha256"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// Every object in the data bucket, by name.
async fn objects(nats: &Nats) -> BTreeSet<String> {
    let store = nats.client().await.get_object_store("ORDERS_DATA").await.expect("the data bucket");
    let mut list = store.list().await.expect("the objects");
    let mut names = BTreeSet::new();
    while let Some(info) = list.next().await {
        names.insert(info.expect("an object").name);
    }
    names
}

/// The objects once none is an input any more (a job's input goes just
/// after its end is recorded), waiting up to 10 s.
async fn objects_without_inputs(nats: &Nats) -> BTreeSet<String> {
    for _ in 0..200 {
        let names = objects(nats).await;
        if !names.iter().any(|name| name.ends_with("/input")) {
            return names;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    objects(nats).await
}

/// `count` distinct exports (the header and a slice of one generated file each).
fn distinct_inputs(count: usize) -> Vec<Vec<u8>> {
    let all = crate::util::gen_orders(&["--rows", &(count * 12).to_string(), "--seed", "12"]);
    let text = String::from_utf8(all).expect("the generator writes UTF-8");
    let mut lines = text.lines();
    let header = lines.next().expect("a header");
    let rows: Vec<&str> = lines.collect();
    rows.chunks(rows.len().div_ceil(count))
        .map(|chunk| format!("{header}\n{}\n", chunk.join("\n")).into_bytes())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_survive_a_killed_worker_and_a_nats_restart_and_any_replica_serves_them() {
    let scratch = Scratch::new("nats-200");
    let mut nats = Nats::start(&scratch);
    let config = write_config(&scratch, "max_concurrent = 2", "ack_wait = \"2s\"", "");
    let api = Arc::new(replica(&scratch, &config, &nats));
    let mut first = Worker::start(&scratch, &config, &nats, "worker-1");
    let _second = Worker::start(&scratch, &config, &nats, "worker-2");

    let inputs = distinct_inputs(200);
    let host = crate::util::TestHost::new("nats-200-native");
    let pipeline = host.bundled();
    let mut expected = Vec::new();
    for input in &inputs {
        let native = host.run_bytes(&pipeline, input).await.expect("native run");
        expected.push(native.outputs.iter().map(|f| (f.name.clone(), f.sha256.clone())).collect::<Vec<_>>());
    }
    let tokens = [ACME, BETA, GAMMA];
    let mut ids = Vec::new();
    for (n, input) in inputs.iter().enumerate().take(100) {
        ids.push(post_retrying(&api, tokens[n % 3], input.clone()).await);
    }
    // One worker killed mid-job: its jobs come back after the ack wait.
    api.running(tokens[99 % 3], &ids[99]).await;
    first.kill();
    // NATS itself restarted while jobs run and are posted.
    nats.stop();
    let response = api.post(ACME, "", seven_rows()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "NATS down: 503");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        api.client.get(api.url("/readyz")).send().await.expect("answered").status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    nats.restart();
    let _first_again = Worker::start(&scratch, &config, &nats, "worker-1");
    for (n, input) in inputs.iter().enumerate().skip(100) {
        ids.push(post_retrying(&api, tokens[n % 3], input.clone()).await);
    }

    let mut jobs = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let job = ended(&api, tokens[n % 3], id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(outputs_of(&job), expected[n], "job {n} matches its own input's native result");
        jobs.push(job);
    }
    // One result each: every object is an output of the run its job lists, no input is left.
    let mut wanted = BTreeMap::new();
    for job in &jobs {
        for (name, _) in outputs_of(job) {
            wanted.insert(format!("{}/{name}", id_of(job)), ());
        }
    }
    let stored = objects_without_inputs(&nats).await;
    let mut runs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for object in &stored {
        let mut parts = object.splitn(3, '/');
        let (id, run, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
        let name = name.unwrap_or_else(|| panic!("only outputs stay in the bucket, found {object}"));
        assert!(wanted.contains_key(&format!("{id}/{name}")), "{object} is no job's output");
        runs.entry(id.to_owned()).or_default().insert(run.to_owned());
    }
    let with_outputs = jobs.iter().filter(|job| !outputs_of(job).is_empty()).count();
    assert_eq!(runs.len(), with_outputs, "every job has its outputs stored");
    assert_eq!(stored.len(), wanted.len(), "and every output of every job");
    assert!(runs.values().all(|runs| runs.len() == 1), "one run's outputs per job: {runs:?}");

    // A second replica serves what the first accepted.
    let other = replica(&scratch, &config, &nats);
    for (n, job) in jobs.iter().enumerate().step_by(17) {
        let token = tokens[n % 3];
        let id = id_of(job);
        let seen: Value = other.get(token, &format!("/v1/jobs/{id}")).await.json().await.expect("a job");
        assert_eq!(&seen, job);
        let (name, sha) = outputs_of(job).into_iter().next().expect("an output");
        let bytes = other.get(token, &format!("/v1/jobs/{id}/outputs/{name}")).await.bytes().await.expect("bytes");
        assert_eq!(sha256_hex(&bytes), sha);
        let tar = other.get(token, &format!("/v1/jobs/{id}/outputs.tar")).await.bytes().await.expect("a tar");
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|entry| entry.expect("an entry").path().expect("a path").display().to_string())
            .collect();
        assert_eq!(names, outputs_of(job).into_iter().map(|(name, _)| name).collect::<Vec<_>>());
    }
    for token in tokens {
        let list: Value = other.get(token, "/v1/jobs?limit=1000").await.json().await.expect("a list");
        let listed = list["jobs"].as_array().expect("jobs");
        let posted: BTreeSet<String> =
            ids.iter().enumerate().filter(|(n, _)| tokens[n % 3] == token).map(|(_, id)| id.clone()).collect();
        let seen: BTreeSet<String> = listed.iter().map(id_of).collect();
        let missing: Vec<_> = posted.difference(&seen).collect();
        let mut details = Vec::new();
        for id in &missing {
            details.push(other.get(token, &format!("/v1/jobs/{id}")).await.text().await.unwrap_or_default());
        }
        assert!(missing.is_empty(), "{} listed, {} posted, missing {missing:?}: {details:?}", seen.len(), posted.len());
        let created: Vec<&str> = listed.iter().map(|j| j["created_at"].as_str().unwrap_or_default()).collect();
        assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first");
    }
    let gone = id_of(&jobs[0]);
    assert_eq!(other.delete(ACME, &gone).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(api.get(ACME, &format!("/v1/jobs/{gone}")).await.status(), StatusCode::NOT_FOUND);
    assert!(!objects(&nats).await.iter().any(|name| name.starts_with(&gone)), "DELETE removed its objects");
    assert_eq!(sandboxes_after_removal(&scratch).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_is_killed_on_every_delivery_ends_gave_up_and_the_sandboxes_are_swept() {
    let scratch = Scratch::new("nats-gave-up");
    let nats = Nats::start(&scratch);
    let config = write_config(&scratch, "", "ack_wait = \"1s\"\nmax_deliveries = 2", "timeout = \"10m\"");
    let api = replica(&scratch, &config, &nats);
    // Sleeps an hour: only a kill ends its runs.
    let id = id_of(&api.post(ACME, "?component=sleep", "forever").await.json::<Value>().await.expect("a job"));
    let (mut kills, mut last_start, mut workers) = (0, Value::Null, Vec::new());
    let job = loop {
        workers.push(Worker::start(&scratch, &config, &nats, "worker"));
        // The next run (a new start), or the end.
        let job = loop {
            let job: Value = api.get(ACME, &format!("/v1/jobs/{id}?wait=1")).await.json().await.expect("a job");
            let ended = ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or_default());
            if ended || (job["state"] == "running" && job["started_at"] != last_start) {
                break job;
            }
        };
        if job["state"] != "running" {
            break job;
        }
        last_start = job["started_at"].clone();
        // Killed mid-run; the next worker sweeps the sandbox this one leaves.
        if let Some(worker) = workers.last_mut() {
            worker.kill();
        }
        kills += 1;
        assert!(kills <= 2, "killed {kills} times and still run again: {job}");
    };
    assert_eq!(kills, 2);
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["outcome"], "gave-up");
    assert_eq!(job["error"]["kind"], "gave-up");
    assert!(job["error"]["message"].as_str().unwrap_or_default().contains("2 time(s)"), "{job}");
    assert_eq!(sandboxes_after_removal(&scratch).await, Vec::<String>::new(), "the last worker swept them");
    let left = objects_without_inputs(&nats).await;
    assert!(left.is_empty(), "its input is gone: {left:?}");
}

/// A worker uploads a small result from memory and a large one (over
/// 128 KiB) from its run's folder; both are stored and served as the
/// native pipeline makes them, and the folder goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_large_results_are_uploaded_and_served_as_the_native_run_makes_them() {
    let scratch = Scratch::new("nats-results");
    let nats = Nats::start(&scratch);
    let config = write_config(&scratch, "", "", "");
    let api = replica(&scratch, &config, &nats);
    let _worker = Worker::start(&scratch, &config, &nats, "worker");
    let host = crate::util::TestHost::new("nats-results-native");
    let pipeline = host.bundled();
    for (input, large) in [(seven_rows(), false), (large_result_input(), true)] {
        let native = host.run_bytes(&pipeline, &input).await.expect("native run");
        let job: Value = api.post(ACME, "?wait=60", input).await.json().await.expect("a job");
        assert_eq!(job["state"], "succeeded", "{job}");
        let served = served_outputs(&api, &id_of(&job), &job).await;
        let total: usize = served.values().map(Vec::len).sum();
        assert_eq!(total > 128 << 10, large, "{total} bytes of outputs");
        let hashes: BTreeMap<String, String> =
            served.iter().map(|(name, bytes)| (name.clone(), sha256_hex(bytes))).collect();
        let expected: BTreeMap<String, String> =
            native.outputs.iter().map(|file| (file.name.clone(), file.sha256.clone())).collect();
        assert_eq!(hashes, expected);
    }
    let left: Vec<_> = std::fs::read_dir(scratch.join("worker/work")).expect("the worker's work folder").collect();
    assert!(left.is_empty(), "each run's folder goes: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_stops_a_running_job_on_its_worker_and_results_expire() {
    let scratch = Scratch::new("nats-delete");
    let nats = Nats::start(&scratch);
    let config = write_config(&scratch, "result_ttl = \"1s\"", "", "");
    let api = replica(&scratch, &config, &nats);
    let _worker = Worker::start(&scratch, &config, &nats, "worker");
    let sleeper = id_of(&api.post(ACME, "?component=sleep", "forever").await.json::<Value>().await.expect("a job"));
    api.running(ACME, &sleeper).await;
    assert_eq!(api.delete(BETA, &sleeper).await.status(), StatusCode::NOT_FOUND, "another tenant's job");
    assert_eq!(api.delete(ACME, &sleeper).await.status(), StatusCode::NO_CONTENT);
    let job: Value = api.get(ACME, &format!("/v1/jobs/{sleeper}")).await.json().await.expect("a job");
    assert_eq!(job["state"], "cancelled");
    assert_eq!(sandboxes_after_removal(&scratch).await, Vec::<String>::new(), "the worker stopped it");

    let done = id_of(&api.post(ACME, "?wait=30", seven_rows()).await.json::<Value>().await.expect("a job"));
    for _ in 0..200 {
        if api.get(ACME, &format!("/v1/jobs/{done}")).await.status() == StatusCode::NOT_FOUND
            && api.get(ACME, &format!("/v1/jobs/{sleeper}")).await.status() == StatusCode::NOT_FOUND
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.get(ACME, &format!("/v1/jobs/{done}")).await.status(), StatusCode::NOT_FOUND, "expired");
    let left = objects(&nats).await;
    assert!(left.is_empty(), "expiry removed the outputs: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_idempotency_and_metrics_are_those_of_host_serve() {
    let scratch = Scratch::new("nats-limits");
    let nats = Nats::start(&scratch);
    let config = write_config(&scratch, "", "ack_wait = \"1s\"", "timeout = \"1s\"\nmax_input = \"1MiB\"");
    let api = replica(&scratch, &config, &nats);
    let _worker = Worker::start(&scratch, &config, &nats, "worker");

    // Over max_input while streaming: 413, and nothing of it in JetStream.
    let (answer, sent) = chunked_upload(&api.base, ACME, 8 << 20);
    assert!(answer.contains("413"), "{answer}");
    assert!(sent < 8 << 20, "cut while streaming, after {sent} bytes");
    assert!(objects(&nats).await.is_empty(), "the cut upload's chunks are purged");

    // A guest past its limit is an ordinary failed job, not a redelivery.
    let job = api.post(ACME, "?component=sleep&wait=60", "forever").await.json::<Value>().await.expect("a job");
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["kind"], "timeout");
    assert_eq!(job["error"]["limit"]["timeout_ms"], 1000);

    // One Idempotency-Key, one job; another body under it is a conflict.
    let keyed = |body: Vec<u8>| {
        api.client.post(api.url("/v1/jobs?wait=30")).bearer_auth(BETA).header("Idempotency-Key", "k-1").body(body)
    };
    let first = keyed(seven_rows()).send().await.expect("answered").json::<Value>().await.expect("a job");
    let again = keyed(seven_rows()).send().await.expect("answered").json::<Value>().await.expect("a job");
    assert_eq!(id_of(&first), id_of(&again));
    let conflict = keyed(b"order_id\n".to_vec()).send().await.expect("answered");
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let list: Value = api.get(BETA, "/v1/jobs").await.json().await.expect("a list");
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1));

    let metrics = api.client.get(api.url("/metrics")).send().await.expect("answered").text().await.expect("text");
    for series in [
        "orders_host_jobs_total{tenant=\"beta\",outcome=\"success\"} 1",
        "orders_host_jobs_total{tenant=\"acme\",outcome=\"timeout\"} 1",
        "orders_host_http_requests_total{code=\"413\"}",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_starve_another_across_the_workers() {
    let scratch = Scratch::new("nats-fair");
    let nats = Nats::start(&scratch);
    let config = write_config(&scratch, "max_concurrent = 4", "", "");
    let api = replica(&scratch, &config, &nats);
    let _workers = [Worker::start(&scratch, &config, &nats, "w1"), Worker::start(&scratch, &config, &nats, "w2")];
    let mut flood = Vec::new();
    for _ in 0..60 {
        flood.push(id_of(&api.post(ACME, "?component=sleep", "200").await.json::<Value>().await.expect("a job")));
    }
    let job = api.post(BETA, "?wait=60", seven_rows()).await.json::<Value>().await.expect("a job");
    assert_eq!(job["state"], "succeeded", "{job}");
    let mut waiting = 0;
    for id in &flood {
        let job: Value = api.get(ACME, &format!("/v1/jobs/{id}")).await.json().await.expect("a job");
        if job["state"] == "queued" {
            waiting += 1;
        }
    }
    // 60 jobs of 200 ms over 4 slots take 3 s; beta's ran in its turn.
    assert!(waiting >= 30, "beta's job waited for most of acme's flood: {waiting} of 60 still queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_set_up_otherwise_is_reported_not_changed() {
    let scratch = Scratch::new("nats-mismatch");
    let nats = Nats::start(&scratch);
    let jetstream = nats.client().await;
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS_QUEUE".to_owned(),
            subjects: vec!["orders.queue.*".to_owned()],
            ..Default::default()
        })
        .await
        .expect("a stream with limits retention");
    let config = write_config(&scratch, "", "", "");
    let output = Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--nats", &nats.url()])
        .output()
        .expect("host serve runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ORDERS_QUEUE") && stderr.contains("retention"), "{stderr}");
    let mut stream = jetstream.get_stream("ORDERS_QUEUE").await.expect("still there");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.retention, async_nats::jetstream::stream::RetentionPolicy::Limits, "not changed");
}

#[test]
fn credentials_on_the_command_line_are_refused() {
    let scratch = Scratch::new("nats-creds");
    let config = write_config(&scratch, "", "", "");
    let output = Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["worker", "--config"])
        .arg(&config)
        .args(["--nats", "nats://user:secret@127.0.0.1:1", "--data-dir"])
        .arg(scratch.join("w"))
        .args(scratch.root_args())
        .output()
        .expect("host worker runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("[nats]") && stderr.contains("NATS_USER") && !stderr.contains("secret"), "{stderr}");
}
