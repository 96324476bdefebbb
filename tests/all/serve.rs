//! `host serve` over real HTTP on loopback: the server is a process (its
//! signals and crashes matter), with its data folder and sandbox roots in
//! the test's scratch folder, killed when the test ends.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use test_programs_artifacts as programs;

use crate::util::{Scratch, seven_rows};

pub(crate) const ACME: &str = "acme-token-0123456789";
pub(crate) const BETA: &str = "beta-token-9876543210";

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `[tenants.NAME]` with its token's hash and `extra` lines.
pub(crate) fn tenant(name: &str, token: &str, extra: &str) -> String {
    format!("[tenants.{name}]\ntoken_sha256 = \"{}\"\n{extra}\n", sha256_hex(token.as_bytes()))
}

/// A `host serve` process and its address.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    config: PathBuf,
    pub(crate) client: reqwest::Client,
}

impl Server {
    /// Writes `config` (the data folder is the scratch's `data`) and starts the server on a free port.
    fn start(scratch: &Scratch, config: &str) -> Self {
        let path = scratch.write("service.toml", format!("data_dir = {:?}\n{config}", scratch.join("data")));
        Self::start_with(scratch, &path, &[])
    }

    pub(crate) fn start_with(scratch: &Scratch, config: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_host"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .args(scratch.root_args())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("host serve starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("the server prints its address");
        let base =
            line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected: {line:?}")).to_owned();
        Self { child, base, config: config.to_owned(), client: reqwest::Client::new() }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn post(&self, token: &str, query: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/jobs{query}")))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .expect("POST answered")
    }

    pub(crate) async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).bearer_auth(token).send().await.expect("GET answered")
    }

    pub(crate) async fn delete(&self, token: &str, id: &str) -> reqwest::Response {
        self.client.delete(self.url(&format!("/v1/jobs/{id}"))).bearer_auth(token).send().await.expect("answered")
    }

    /// The job once it has ended (each wait is bounded by the server).
    pub(crate) async fn finished(&self, token: &str, id: &str) -> Value {
        for _ in 0..20 {
            let job: Value = self.get(token, &format!("/v1/jobs/{id}?wait=30")).await.json().await.expect("a job");
            if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or_default()) {
                return job;
            }
        }
        panic!("job {id} never ended");
    }

    /// Waits until the job is running.
    pub(crate) async fn running(&self, token: &str, id: &str) {
        for _ in 0..6000 {
            let job: Value = self.get(token, &format!("/v1/jobs/{id}")).await.json().await.expect("a job");
            if job["state"] == "running" {
                return;
            }
            assert_eq!(job["state"], "queued", "{job}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} never started");
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success());
    }

    pub(crate) fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("the server exits")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn json(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

pub(crate) fn id_of(job: &Value) -> String {
    job["id"].as_str().expect("an id").to_owned()
}

/// Every file and folder under the data folder's `jobs/` (large inputs)
/// and `results/` (large results).
fn job_files(scratch: &Scratch) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![scratch.join("data/jobs"), scratch.join("data/results")];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            found.push(path.display().to_string());
        }
    }
    found.sort();
    found
}

/// Sandboxes left in the roots (tenant folders may stay, empty).
pub(crate) fn sandboxes(scratch: &Scratch) -> Vec<String> {
    scratch.leftovers().into_iter().filter(|path| path.contains("sbx-")).collect()
}

/// Sandboxes left in the roots once removals in flight have had 10 s to
/// finish: a cancelled job's sandbox goes with its dropped invocation, and
/// what removal does not finish at once the housekeeper does in the background.
pub(crate) async fn sandboxes_after_removal(scratch: &Scratch) -> Vec<String> {
    for _ in 0..1000 {
        if sandboxes(scratch).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sandboxes(scratch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_is_401_and_another_tenants_job_is_404_like_a_missing_one() {
    let scratch = Scratch::new("serve-auth");
    let server = Server::start(&scratch, &(tenant("acme", ACME, "") + &tenant("beta", BETA, "")));
    let anonymous = server.client.get(server.url("/v1/jobs")).send().await.expect("answered");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(json(anonymous).await["error"]["kind"], "unauthorized");
    let wrong = server.post("not-a-token", "", seven_rows()).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(job_files(&scratch).is_empty(), "nothing of an unauthenticated body is kept");

    let job = json(server.post(ACME, "?wait=30", seven_rows()).await).await;
    let id = id_of(&job);
    let missing = "0123456789abcdef0123456789abcdef";
    for path in
        [format!("/v1/jobs/{id}"), format!("/v1/jobs/{id}/outputs/summary.csv"), format!("/v1/jobs/{id}/outputs.tar")]
    {
        let theirs = server.get(BETA, &path).await;
        let absent = server.get(BETA, &path.replace(&id, missing)).await;
        assert_eq!((theirs.status(), absent.status()), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND), "{path}");
        assert_eq!(json(theirs).await, json(absent).await, "{path}: the same answer as a missing job");
    }
    assert_eq!(server.delete(BETA, &id).await.status(), StatusCode::NOT_FOUND);
    let listed = json(server.get(BETA, "/v1/jobs").await).await;
    assert_eq!(listed["jobs"], serde_json::json!([]));
    assert_eq!(server.get(ACME, &format!("/v1/jobs/{id}")).await.status(), StatusCode::OK, "still there for its owner");
    assert_eq!(id.len(), 32, "128 bits in hex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seven_row_example_runs_with_the_outputs_and_report_of_host_run() {
    let scratch = Scratch::new("serve-seven");
    let server = Server::start(&scratch, &tenant("acme", ACME, ""));
    let response = server.post(ACME, "?wait=30", seven_rows()).await;
    assert_eq!(response.status(), StatusCode::OK, "finished within the wait");
    let id_header = response.headers()["location"].to_str().expect("ascii").to_owned();
    let job = json(response).await;
    let id = id_of(&job);
    assert_eq!(id_header, format!("/v1/jobs/{id}"));
    assert_eq!((job["state"].as_str(), job["outcome"].as_str()), (Some("succeeded"), Some("success")));
    assert_eq!(job["tenant"], "acme");
    assert_eq!(job["error"], Value::Null);
    for stamp in ["created_at", "started_at", "finished_at"] {
        assert!(job[stamp].as_str().is_some_and(|s| s.ends_with('Z')), "{stamp}: {job}");
    }

    // The same report and outputs as `host run --json` on the same input.
    let input = scratch.write("orders.csv", seven_rows());
    let run = Command::new(env!("CARGO_BIN_EXE_host"))
        .arg("run")
        .arg(&input)
        .args(["--json", "--out"])
        .arg(scratch.join("cli.out"))
        .args(scratch.root_args())
        .output()
        .expect("host run");
    let cli: Value = serde_json::from_slice(&run.stdout).expect("host run --json");
    assert_eq!(job["report"], cli["report"]);
    assert_eq!(job["outputs"], cli["outputs"]);

    let outputs = job["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 5);
    let mut expected = std::collections::BTreeMap::new();
    for output in outputs {
        let name = output["name"].as_str().expect("name");
        let response = server.get(ACME, &format!("/v1/jobs/{id}/outputs/{name}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/csv"));
        let bytes = response.bytes().await.expect("body").to_vec();
        assert_eq!(sha256_hex(&bytes), output["sha256"].as_str().expect("sha"), "{name}");
        assert_eq!(bytes.len() as u64, output["bytes"].as_u64().expect("bytes"));
        expected.insert(name.to_owned(), bytes);
    }
    let missing = server.get(ACME, &format!("/v1/jobs/{id}/outputs/nope.csv")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let tar = server.get(ACME, &format!("/v1/jobs/{id}/outputs.tar")).await;
    assert_eq!(tar.status(), StatusCode::OK);
    let tar = tar.bytes().await.expect("tar").to_vec();
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut found = std::collections::BTreeMap::new();
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("entry");
        assert_eq!(entry.header().mode().expect("mode") & 0o777, 0o600);
        let name = entry.path().expect("path").display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read");
        found.insert(name, bytes);
    }
    assert_eq!(found, expected);

    // Kept owner-only beside the database.
    let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&scratch.join("data")), 0o700);
    assert_eq!(mode(&scratch.join("data/jobs.db")), 0o600);
    for file in job_files(&scratch) {
        let path = Path::new(&file);
        assert_eq!(mode(path), if path.is_dir() { 0o700 } else { 0o600 }, "{file}");
    }
    assert!(job_files(&scratch).is_empty(), "a small result is kept in the database: {:?}", job_files(&scratch));
    let listed = json(server.get(ACME, "/v1/jobs?limit=5").await).await;
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    assert_eq!(sandboxes_after_removal(&scratch).await, Vec::<String>::new());
}

/// A generated export whose outputs come to more than the service keeps
/// in its database (128 KiB), so they are files.
pub(crate) fn large_result_input() -> Vec<u8> {
    crate::util::gen_orders(&["--rows", "10000", "--seed", "3"])
}

/// Each output of a succeeded job as served, checked against its listing,
/// and the job's tar: both by name.
pub(crate) async fn served_outputs(
    server: &Server,
    id: &str,
    job: &Value,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut served = std::collections::BTreeMap::new();
    for output in job["outputs"].as_array().expect("outputs") {
        let name = output["name"].as_str().expect("name");
        let response = server.get(ACME, &format!("/v1/jobs/{id}/outputs/{name}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        let bytes = response.bytes().await.expect("body").to_vec();
        assert_eq!(sha256_hex(&bytes), output["sha256"].as_str().expect("sha"), "{name}");
        served.insert(name.to_owned(), bytes);
    }
    let tar = server.get(ACME, &format!("/v1/jobs/{id}/outputs.tar")).await;
    assert_eq!(tar.status(), StatusCode::OK);
    let tar = tar.bytes().await.expect("tar").to_vec();
    let mut tarred = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(tar.as_slice()).entries().expect("a tar") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read");
        tarred.insert(name, bytes);
    }
    assert_eq!(tarred, served, "the tar holds what is served");
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_is_files_served_like_a_small_one_and_kept_across_an_upgrade_of_the_layout() {
    let scratch = Scratch::new("serve-large-result");
    let config = tenant("acme", ACME, "");
    let path = scratch.write("service.toml", format!("data_dir = {:?}\n{config}", scratch.join("data")));
    let mut server = Server::start_with(&scratch, &path, &[]);
    let job = json(server.post(ACME, "?wait=60", large_result_input()).await).await;
    assert_eq!(job["outcome"], "success", "{job}");
    let id = id_of(&job);
    let total: u64 = job["outputs"].as_array().expect("outputs").iter().filter_map(|o| o["bytes"].as_u64()).sum();
    assert!(total > 128 << 10, "the input makes a large result: {total} bytes");
    let results = scratch.join("data/results").join(&id);
    let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&results), 0o700);
    for output in job["outputs"].as_array().expect("outputs") {
        assert_eq!(mode(&results.join(output["name"].as_str().expect("name"))), 0o600, "{output}");
    }
    assert!(!scratch.join("data/jobs").join(&id).exists(), "the input went once the result was recorded");
    let served = served_outputs(&server, &id, &job).await;

    // A data folder of the version before results folders kept them in
    // `jobs/ID/out/`: the next start moves them, and they are served alike.
    server.signal("-TERM");
    assert!(server.wait().success());
    drop(server);
    std::fs::create_dir(scratch.join("data/jobs").join(&id)).expect("a legacy job folder");
    std::fs::rename(&results, scratch.join("data/jobs").join(&id).join("out")).expect("the legacy layout");
    let server = Server::start_with(&scratch, &path, &[]);
    assert_eq!(served_outputs(&server, &id, &job).await, served);
    assert!(!scratch.join("data/jobs").join(&id).exists(), "moved to the results folder");

    assert_eq!(server.delete(ACME, &id).await.status(), StatusCode::NO_CONTENT);
    assert!(job_files(&scratch).is_empty(), "{:?}", job_files(&scratch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_column_fails_as_invalid_input() {
    let scratch = Scratch::new("serve-invalid");
    let server = Server::start(&scratch, &tenant("acme", ACME, ""));
    let job = json(server.post(ACME, "?wait=30", "order_id,region,amount\n1,north,5\n").await).await;
    assert_eq!((job["state"].as_str(), job["outcome"].as_str()), (Some("failed"), Some("invalid-input")), "{job}");
    assert_eq!(job["error"]["kind"], "invalid-input");
    assert_eq!(job["error"]["limit"], Value::Null);
    assert!(job["error"]["message"].as_str().is_some_and(|m| m.contains("status")), "{job}");
    assert_eq!((job["report"].clone(), job["outputs"].clone()), (Value::Null, serde_json::json!([])));
    assert!(job_files(&scratch).is_empty(), "a failed job keeps no files: {:?}", job_files(&scratch));
}

/// Sends a chunked body of `total` bytes over a raw connection, 64 KiB at
/// a time, until the server answers; returns its status line and how much was sent.
pub(crate) fn chunked_upload(base: &str, token: &str, total: usize) -> (String, usize) {
    let address = base.strip_prefix("http://").expect("http");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    write!(
        stream,
        "POST /v1/jobs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    )
    .expect("headers");
    let chunk = vec![b'x'; 64 << 10];
    let mut sent = 0;
    while sent < total {
        let written = write!(stream, "{:x}\r\n", chunk.len())
            .and_then(|()| stream.write_all(&chunk))
            .and_then(|()| stream.write_all(b"\r\n"));
        if written.is_err() {
            break; // The server answered and closed.
        }
        sent += chunk.len();
        // Let the answer arrive before all is sent, when it comes early.
        stream.set_nonblocking(true).expect("nonblocking");
        let mut peek = [0u8; 1];
        let answered = matches!(stream.peek(&mut peek), Ok(n) if n > 0);
        stream.set_nonblocking(false).expect("blocking");
        if answered {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut answer = String::new();
    let _ = BufReader::new(&stream).read_line(&mut answer);
    (answer, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_input_is_413_while_streaming_and_nothing_stays_on_disk() {
    let scratch = Scratch::new("serve-413");
    let server = Server::start(&scratch, &tenant("acme", ACME, "max_input = \"4MiB\""));
    let base = server.base.clone();
    let (answer, sent) =
        tokio::task::spawn_blocking(move || chunked_upload(&base, ACME, 64 << 20)).await.expect("task");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(sent < 16 << 20, "answered as the limit was crossed, after {sent} bytes");
    assert!(job_files(&scratch).is_empty(), "{:?}", job_files(&scratch));
    // A declared length over the limit is refused before any byte is read.
    let big = vec![b'x'; (4 << 20) + 1];
    let declared = server.client.post(server.url("/v1/jobs")).bearer_auth(ACME).body(big).send().await;
    if let Ok(response) = declared {
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json(response).await["error"]["kind"], "input-too-large");
    }
    assert!(job_files(&scratch).is_empty());
    // Under the limit but over the spool threshold: kept in the job's file, and run.
    let mut rows = b"order_id,region,amount,status\n".to_vec();
    for n in 0..60_000 {
        rows.extend_from_slice(format!("{n},north,1.00,completed\n").as_bytes());
    }
    let job = json(server.post(ACME, "?wait=60", rows).await).await;
    assert_eq!(job["outcome"], "success", "{job}");
    assert_eq!(job["report"]["accepted"], 60_000);
    assert!(job_files(&scratch).iter().all(|file| !file.ends_with("input.csv")), "the input goes once the job ends");
}

/// Connects to the server as a plain TCP client.
fn connect(base: &str) -> std::net::TcpStream {
    let address = base.strip_prefix("http://").expect("http");
    std::net::TcpStream::connect(address).expect("connect")
}

/// What the server sends until it closes the connection. A client the
/// server never cuts fails the test after a minute instead of hanging it.
fn until_cut(stream: &mut std::net::TcpStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(err) => panic!("the stalled client was not cut ({err}); it got {:?}", String::from_utf8_lossy(&answer)),
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Every file under the data folder that holds `marker`, and every file
/// but the database's own.
fn data_files_holding(scratch: &Scratch, marker: &[u8]) -> (Vec<String>, Vec<String>) {
    let (mut holding, mut others) = (Vec::new(), Vec::new());
    let mut pending = vec![scratch.join("data")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("the data folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let contents = std::fs::read(&path).expect("a file of the data folder");
            if contents.windows(marker.len()).any(|window| window == marker) {
                holding.push(path.display().to_string());
            }
            let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
            if !name.starts_with("jobs.db") {
                others.push(path.display().to_string());
            }
        }
    }
    (holding, others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_in_its_headers_is_cut_after_header_read_timeout() {
    let scratch = Scratch::new("serve-slow-headers");
    let server = Server::start(&scratch, &format!("header_read_timeout = \"300ms\"\n{}", tenant("acme", ACME, "")));
    let base = server.base.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = connect(&base);
        // Half the headers, then nothing.
        stream.write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: localhost\r\nAuthoriz").expect("half the headers");
        until_cut(&mut stream)
    })
    .await
    .expect("task");
    assert!(!answer.contains(" 200 "), "a request without its headers was answered: {answer}");
    // The server goes on taking requests.
    let job = json(server.post(ACME, "?wait=30", seven_rows()).await).await;
    assert_eq!(job["outcome"], "success", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_in_its_body_is_cut_and_nothing_of_the_body_stays() {
    let scratch = Scratch::new("serve-slow-body");
    let server = Server::start(&scratch, &format!("body_read_timeout = \"300ms\"\n{}", tenant("acme", ACME, "")));
    let base = server.base.clone();
    // Past the 1 MiB kept in memory, so the server has written part of it
    // into the job's file when the client stalls.
    let marker = b"stalled-body-0123456789";
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = connect(&base);
        write!(
            stream,
            "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ACME}\r\n\
             Content-Length: {}\r\n\r\n",
            4 << 20
        )
        .expect("headers");
        let line: Vec<u8> = marker.iter().chain(b"\n").copied().collect();
        let part: Vec<u8> = line.iter().copied().cycle().take(2 << 20).collect();
        stream.write_all(&part).expect("half the body");
        until_cut(&mut stream)
    })
    .await
    .expect("task");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    let listed = json(server.get(ACME, "/v1/jobs").await).await;
    assert_eq!(listed["jobs"], serde_json::json!([]), "no job was created");
    let (holding, others) = data_files_holding(&scratch, marker);
    assert!(holding.is_empty() && others.is_empty(), "the body stayed: {holding:?}, {others:?}");
    let job = json(server.post(ACME, "?wait=30", seven_rows()).await).await;
    assert_eq!(job["outcome"], "success", "the server goes on: {job}");
}

pub(crate) fn sleep_config(server_extra: &str, tenants: &str) -> String {
    format!("{server_extra}\n[components]\nsleep = {:?}\n{tenants}", programs::SLEEP)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_queued_a_tenant_gets_429_and_the_server_503_with_retry_after() {
    let scratch = Scratch::new("serve-429");
    let config = sleep_config(
        "max_concurrent = 1\nmax_queued = 2",
        &(tenant("acme", ACME, "max_concurrent = 1\nmax_queued = 1") + &tenant("beta", BETA, "max_queued = 5")),
    );
    let server = Server::start(&scratch, &config);
    let running = id_of(&json(server.post(ACME, "?component=sleep", "60000").await).await);
    server.running(ACME, &running).await;
    let queued = server.post(ACME, "?component=sleep", "60000").await;
    assert_eq!(queued.status(), StatusCode::ACCEPTED);
    let queued = id_of(&json(queued).await);
    let refused = server.post(ACME, "?component=sleep", "60000").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers()["retry-after"].to_str().expect("ascii").parse::<u64>().is_ok_and(|s| s >= 1));
    assert_eq!(json(refused).await["error"]["kind"], "too-many-queued");

    let other = server.post(BETA, "?component=sleep", "1").await;
    assert_eq!(other.status(), StatusCode::ACCEPTED, "beta has its own bound");
    let other = id_of(&json(other).await);
    let busy = server.post(BETA, "?component=sleep", "1").await;
    assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE, "the server's max_queued is reached");
    assert!(busy.headers().contains_key("retry-after"));
    assert_eq!(json(busy).await["error"]["kind"], "server-busy");

    for id in [&running, &queued] {
        assert_eq!(server.delete(ACME, id).await.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(server.finished(BETA, &other).await["outcome"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_stored_a_tenant_gets_429_storage_full() {
    let scratch = Scratch::new("serve-stored");
    let server = Server::start(&scratch, &tenant("acme", ACME, "max_stored = \"300B\""));
    let first = json(server.post(ACME, "?wait=30", seven_rows()).await).await;
    assert_eq!(first["outcome"], "success", "{first}");
    let full = server.post(ACME, "", seven_rows()).await;
    assert_eq!(full.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(full).await["error"]["kind"], "storage-full");
    assert_eq!(server.delete(ACME, &id_of(&first)).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(server.post(ACME, "", seven_rows()).await.status(), StatusCode::ACCEPTED, "room again after DELETE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_names_one_job() {
    let scratch = Scratch::new("serve-idem");
    let server = Server::start(&scratch, &(tenant("acme", ACME, "") + &tenant("beta", BETA, "")));
    let post = |token: &'static str, key: &'static str, body: Vec<u8>| {
        server.client.post(server.url("/v1/jobs")).bearer_auth(token).header("Idempotency-Key", key).body(body).send()
    };
    let first = post(ACME, "k1", seven_rows()).await.expect("answered");
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first = id_of(&json(first).await);
    let again = id_of(&json(post(ACME, "k1", seven_rows()).await.expect("answered")).await);
    assert_eq!(again, first, "a retry names the same job");
    let conflict = post(ACME, "k1", b"order_id,region,amount,status\n".to_vec()).await.expect("answered");
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    assert_eq!(json(conflict).await["error"]["kind"], "idempotency-conflict");
    let other = id_of(&json(post(ACME, "k2", seven_rows()).await.expect("answered")).await);
    assert_ne!(other, first);
    let theirs = id_of(&json(post(BETA, "k1", seven_rows()).await.expect("answered")).await);
    assert_ne!(theirs, first, "keys are per tenant");
    let listed = json(server.get(ACME, "/v1/jobs").await).await;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cancels_a_running_job_and_removes_every_file() {
    let scratch = Scratch::new("serve-delete");
    let config = sleep_config("max_concurrent = 1", &tenant("acme", ACME, "max_concurrent = 1"));
    let server = Server::start(&scratch, &config);
    let running = id_of(&json(server.post(ACME, "?component=sleep", "3600000").await).await);
    server.running(ACME, &running).await;
    let mut large = b"1".to_vec();
    large.resize(2 << 20, b' ');
    let queued = id_of(&json(server.post(ACME, "?component=sleep", large).await).await);
    assert!(job_files(&scratch).iter().any(|f| f.ends_with(&format!("{queued}/input.csv"))), "a large input is a file");

    assert_eq!(server.delete(ACME, &running).await.status(), StatusCode::NO_CONTENT);
    let cancelled = json(server.get(ACME, &format!("/v1/jobs/{running}")).await).await;
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(server.delete(ACME, &queued).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(json(server.get(ACME, &format!("/v1/jobs/{queued}")).await).await["state"], "cancelled");
    assert!(job_files(&scratch).is_empty(), "{:?}", job_files(&scratch));
    let left = sandboxes_after_removal(&scratch).await;
    assert!(left.is_empty(), "the running job's sandbox is gone: {left:?}");

    // Ended jobs, a small result (in the database) and a large one (files).
    for input in [seven_rows(), large_result_input()] {
        let done = json(server.post(ACME, "?wait=60", input).await).await;
        assert_eq!(done["outcome"], "success", "{done}");
        let (done, name) = (id_of(&done), done["outputs"][0]["name"].as_str().expect("an output").to_owned());
        assert_eq!(server.delete(ACME, &done).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(server.get(ACME, &format!("/v1/jobs/{done}")).await.status(), StatusCode::NOT_FOUND);
        let output = server.get(ACME, &format!("/v1/jobs/{done}/outputs/{name}")).await;
        assert_eq!(output.status(), StatusCode::NOT_FOUND);
        assert!(job_files(&scratch).is_empty(), "{:?}", job_files(&scratch));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_components_fail_with_their_limit_under_the_tenants_limits_and_the_server_stays_healthy() {
    let scratch = Scratch::new("serve-hostile");
    let config = format!(
        "[components]\nspin = {:?}\nmemory_bomb = {:?}\nwrite_4gib = {:?}\n{}",
        programs::SPIN,
        programs::MEMORY_BOMB,
        programs::WRITE_4GIB,
        tenant("acme", ACME, "timeout = \"2s\"\nmemory = \"64MiB\"\ndisk_quota = \"8MiB\"")
    );
    let server = Server::start(&scratch, &config);
    for (component, outcome, limit) in [
        ("spin", "timeout", serde_json::json!({ "timeout_ms": 2000 })),
        ("memory_bomb", "memory-limit", Value::Null),
        ("write_4gib", "disk-quota", serde_json::json!({ "disk_quota_bytes": 8 << 20 })),
    ] {
        let job = json(server.post(ACME, &format!("?component={component}&wait=60"), "").await).await;
        assert_eq!((job["state"].as_str(), job["outcome"].as_str()), (Some("failed"), Some(outcome)), "{job}");
        assert_eq!(job["error"]["kind"], outcome);
        if !limit.is_null() {
            assert_eq!(job["error"]["limit"], limit);
        }
    }
    assert_eq!(sandboxes_after_removal(&scratch).await, Vec::<String>::new());
    assert_eq!(server.client.get(server.url("/healthz")).send().await.expect("answered").status(), StatusCode::OK);
    let job = json(server.post(ACME, "?wait=30", seven_rows()).await).await;
    assert_eq!(job["outcome"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_generated_inputs_over_two_tenants_each_match_their_own_native_result() {
    let scratch = Scratch::new("serve-fifty");
    let server = std::sync::Arc::new(Server::start(
        &scratch,
        &format!("max_concurrent = 2\n{}{}", tenant("acme", ACME, ""), tenant("beta", BETA, "")),
    ));
    let host = crate::util::TestHost::new("serve-fifty-native");
    let pipeline = host.bundled();
    let mut tasks = Vec::new();
    for n in 0..50u32 {
        let input = crate::util::gen_orders(&["--rows", &(20 + n * 7).to_string(), "--seed", &n.to_string()]);
        let native = host.run_bytes(&pipeline, &input).await.expect("native run");
        let expected: Vec<(String, String)> =
            native.outputs.iter().map(|file| (file.name.clone(), file.sha256.clone())).collect();
        let server = std::sync::Arc::clone(&server);
        let token = if n % 2 == 0 { ACME } else { BETA };
        tasks.push(tokio::spawn(async move {
            let job = json(server.post(token, "?wait=120", input).await).await;
            let job = server.finished(token, &id_of(&job)).await;
            let got: Vec<(String, String)> = job["outputs"]
                .as_array()
                .expect("outputs")
                .iter()
                .map(|o| {
                    (
                        o["name"].as_str().unwrap_or_default().to_owned(),
                        o["sha256"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            assert_eq!(got, expected, "input {n}");
        }));
    }
    for task in tasks {
        task.await.expect("a job matched");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_every_accepted_job_ends_and_the_roots_are_swept() {
    let scratch = Scratch::new("serve-kill");
    let config = sleep_config("max_concurrent = 1", &tenant("acme", ACME, ""));
    let mut server = Server::start(&scratch, &config);
    let sleeper = id_of(&json(server.post(ACME, "?component=sleep", "1500").await).await);
    server.running(ACME, &sleeper).await;
    let mut large = b"order_id,region,amount,status\n".to_vec();
    while large.len() < 2 << 20 {
        large.extend_from_slice(b"1,north,1.00,completed\n");
    }
    let mut accepted = vec![sleeper];
    for body in [seven_rows(), large] {
        let response = server.post(ACME, "", body).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        accepted.push(id_of(&json(response).await));
    }
    server.signal("-KILL");
    server.wait();
    assert!(!sandboxes(&scratch).is_empty(), "the running job's sandbox was left by the kill");

    let config_path = server.config.clone();
    drop(server);
    let server = Server::start_with(&scratch, &config_path, &[]);
    for id in &accepted {
        let job = server.finished(ACME, id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    assert_eq!(sandboxes_after_removal(&scratch).await, Vec::<String>::new(), "swept, and the reruns' removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_running_jobs_and_leaves_the_rest_queued_for_the_next_start() {
    let scratch = Scratch::new("serve-term");
    let config = sleep_config("max_concurrent = 1", &tenant("acme", ACME, ""));
    let path = scratch.write("service.toml", format!("data_dir = {:?}\n{config}", scratch.join("data")));
    let mut server = Server::start_with(&scratch, &path, &["--drain-timeout", "60s"]);
    let short = id_of(&json(server.post(ACME, "?component=sleep", "1000").await).await);
    server.running(ACME, &short).await;
    let waiting = id_of(&json(server.post(ACME, "", seven_rows()).await).await);
    server.signal("-TERM");
    // The signal arrives on its own time: ask until the server says it is
    // draining (the running job keeps it up for a second).
    let mut draining = false;
    for _ in 0..500 {
        match server.client.get(server.url("/readyz")).send().await.map(|ready| ready.status()) {
            Ok(StatusCode::SERVICE_UNAVAILABLE) => {
                draining = true;
                break;
            }
            Ok(status) => assert_eq!(status, StatusCode::OK, "ready until the signal arrives"),
            Err(err) => panic!("the server answers while it drains: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(draining, "readyz says 503 while the server drains");
    assert!(server.wait().success(), "exits 0 after the drain");
    drop(server);

    // A job that outlives the drain timeout is stopped and run again later.
    let mut server = Server::start_with(&scratch, &path, &["--drain-timeout", "200ms"]);
    let finished = server.finished(ACME, &short).await;
    assert_eq!(finished["state"], "succeeded", "the running job finished within the drain: {finished}");
    assert_eq!(server.finished(ACME, &waiting).await["state"], "succeeded", "the queued job ran at the next start");
    let long = id_of(&json(server.post(ACME, "?component=sleep", "3600000").await).await);
    server.running(ACME, &long).await;
    server.signal("-TERM");
    assert!(server.wait().success());
    assert!(sandboxes(&scratch).is_empty(), "the stopped job's sandbox is gone: {:?}", sandboxes(&scratch));
    drop(server);
    let server = Server::start_with(&scratch, &path, &[]);
    let job = json(server.get(ACME, &format!("/v1/jobs/{long}")).await).await;
    assert!(["queued", "running"].contains(&job["state"].as_str().unwrap_or_default()), "{job}");
    assert_eq!(server.delete(ACME, &long).await.status(), StatusCode::NO_CONTENT);
}

/// A job sent with `?wait=` and a small body is written once, when it
/// ends, if it ends within the wait: the `200` comes after that write, and
/// a `202` after a write of it queued, so a kill after either loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waited_job_is_on_disk_before_its_200_or_its_202_when_the_wait_runs_out() {
    let scratch = Scratch::new("serve-waited");
    let config = sleep_config("max_concurrent = 1", &tenant("acme", ACME, ""));
    let mut server = Server::start(&scratch, &config);
    let ended = server.post(ACME, "?wait=30", seven_rows()).await;
    assert_eq!(ended.status(), StatusCode::OK);
    let ended = json(ended).await;
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let slow = server.post(ACME, "?component=sleep&wait=0.3", "1500").await;
    assert_eq!(slow.status(), StatusCode::ACCEPTED, "the wait ran out");
    let slow = json(slow).await;
    assert!(["queued", "running"].contains(&slow["state"].as_str().unwrap_or_default()), "{slow}");
    let queued = server.post(ACME, "?wait=0.2", seven_rows()).await;
    assert_eq!(queued.status(), StatusCode::ACCEPTED, "behind the slow one: still queued");
    let queued = json(queued).await;
    assert_eq!(queued["state"], "queued", "{queued}");
    server.signal("-KILL");
    server.wait();

    let config_path = server.config.clone();
    drop(server);
    let server = Server::start_with(&scratch, &config_path, &[]);
    let again = json(server.get(ACME, &format!("/v1/jobs/{}", id_of(&ended))).await).await;
    assert_eq!(again, ended, "the end answered is the end kept");
    let outputs = served_outputs(&server, &id_of(&ended), &ended).await;
    assert_eq!(outputs.len(), ended["outputs"].as_array().map_or(0, Vec::len));
    for job in [&slow, &queued] {
        assert_eq!(server.finished(ACME, &id_of(job)).await["state"], "succeeded", "accepted, so run after the kill");
    }
    let listed = json(server.get(ACME, "/v1/jobs").await).await;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(3), "{listed}");
}

/// Only a small body is held in memory while its client waits: a waited
/// job with a body over 64 KiB is written when accepted, so it is listed
/// while it runs; the small one is not, until its wait runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_waited_job_with_a_body_up_to_64_kib_is_held_until_it_ends() {
    let scratch = Scratch::new("serve-held");
    let server = Server::start(&scratch, &sleep_config("", &tenant("acme", ACME, "")));
    let mut large = b"3600000".to_vec();
    large.resize(64 << 10, b' ');
    let mut over = large.clone();
    over.push(b' ');
    let (small, at_limit, over, listed) = tokio::join!(
        server.post(ACME, "?component=sleep&wait=3", "3600000"),
        server.post(ACME, "?component=sleep&wait=3", large),
        server.post(ACME, "?component=sleep&wait=3", over),
        async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            json(server.get(ACME, "/v1/jobs").await).await
        }
    );
    let mut jobs = Vec::new();
    for response in [small, at_limit, over] {
        assert_eq!(response.status(), StatusCode::ACCEPTED, "its wait ran out");
        jobs.push(id_of(&json(response).await));
    }
    let listed: Vec<&str> =
        listed["jobs"].as_array().expect("a list").iter().filter_map(|job| job["id"].as_str()).collect();
    assert_eq!(listed, vec![jobs[2].as_str()], "only the body over 64 KiB was written while its client waited");
    let listed = json(server.get(ACME, "/v1/jobs").await).await;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(3), "all three once their waits ran out");
    for id in &jobs {
        assert_eq!(server.delete(ACME, id).await.status(), StatusCode::NO_CONTENT);
    }
}

/// A drain answers the waiters of jobs not yet written with `202` once
/// their jobs are on disk, queued for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_waited_jobs_queued_and_answers_their_waiters() {
    let scratch = Scratch::new("serve-term-waited");
    let config = sleep_config("max_concurrent = 1", &tenant("acme", ACME, ""));
    let path = scratch.write("service.toml", format!("data_dir = {:?}\n{config}", scratch.join("data")));
    let mut server = Server::start_with(&scratch, &path, &["--drain-timeout", "300ms"]);
    let server_ref = &server;
    let post = |body: &'static str| async move {
        let response = server_ref.post(ACME, "?component=sleep&wait=120", body).await;
        (response.status(), json(response).await)
    };
    let (running, queued) = tokio::join!(post("3600000"), async {
        // Sent once the first is running, so the second waits in the queue.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let signal = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            server_ref.signal("-TERM");
        };
        let (answer, ()) = tokio::join!(post("1"), signal);
        answer
    });
    assert_eq!(running.0, StatusCode::ACCEPTED, "{}", running.1);
    assert_eq!(queued.0, StatusCode::ACCEPTED, "{}", queued.1);
    assert!(server.wait().success(), "exits 0 after the drain");
    drop(server);

    let server = Server::start_with(&scratch, &path, &[]);
    let long = id_of(&running.1);
    let job = json(server.get(ACME, &format!("/v1/jobs/{long}")).await).await;
    assert!(["queued", "running"].contains(&job["state"].as_str().unwrap_or_default()), "{job}");
    assert_eq!(server.delete(ACME, &long).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(server.finished(ACME, &id_of(&queued.1)).await["state"], "succeeded", "kept queued, run now");
}

/// Jobs kept in memory while their client waits count against `max_stored`
/// as the ones written at once do: together they never pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waited_and_queued_jobs_sent_together_never_pass_max_stored() {
    let scratch = Scratch::new("serve-stored-waited");
    // 7-byte inputs and a bound of 30 bytes: four fit; none ends meanwhile.
    let config = sleep_config("max_concurrent = 1", &tenant("acme", ACME, "max_stored = \"30B\"\nmax_queued = 64"));
    let server = Server::start(&scratch, &config);
    let posts = (0..24).map(|n| {
        let query = if n % 2 == 0 { "?component=sleep&wait=1" } else { "?component=sleep" };
        server.post(ACME, query, "3600000")
    });
    let mut accepted = Vec::new();
    for response in futures_util::future::join_all(posts).await {
        match response.status() {
            StatusCode::ACCEPTED => accepted.push(id_of(&json(response).await)),
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(json(response).await["error"]["kind"], "storage-full"),
            other => panic!("unexpected {other}: {}", response.text().await.unwrap_or_default()),
        }
    }
    assert!((1..=4).contains(&accepted.len()), "{} accepted under 30 bytes of 7-byte inputs", accepted.len());
    for id in &accepted {
        assert_eq!(server.delete(ACME, id).await.status(), StatusCode::NO_CONTENT);
    }
    let room = server.post(ACME, "?component=sleep", "3600000").await;
    assert_eq!(room.status(), StatusCode::ACCEPTED, "every charge is given back");
    assert_eq!(server.delete(ACME, &id_of(&json(room).await)).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_past_result_ttl_are_deleted_by_the_server() {
    let scratch = Scratch::new("serve-ttl");
    let server = Server::start(&scratch, &format!("result_ttl = \"1s\"\n{}", tenant("acme", ACME, "")));
    let id = id_of(&json(server.post(ACME, "?wait=60", large_result_input()).await).await);
    assert!(!job_files(&scratch).is_empty(), "a large result is files");
    let mut gone = false;
    for _ in 0..600 {
        if server.get(ACME, &format!("/v1/jobs/{id}")).await.status() == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the job expired");
    assert!(job_files(&scratch).is_empty(), "{:?}", job_files(&scratch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_the_named_series_and_count() {
    let scratch = Scratch::new("serve-metrics");
    let server = Server::start(&scratch, &tenant("acme", ACME, ""));
    for _ in 0..2 {
        assert_eq!(json(server.post(ACME, "?wait=30", seven_rows()).await).await["outcome"], "success");
    }
    json(server.post(ACME, "?wait=30", "x\n").await).await;
    let _ = server.client.get(server.url("/v1/jobs")).send().await;
    let text = server.client.get(server.url("/metrics")).send().await.expect("answered").text().await.expect("text");
    for line in [
        "orders_host_jobs_total{tenant=\"acme\",outcome=\"success\"} 2",
        "orders_host_jobs_total{tenant=\"acme\",outcome=\"invalid-input\"} 1",
        "orders_host_job_duration_seconds_count 3",
        "orders_host_jobs_running 0",
        "orders_host_jobs_queued{tenant=\"acme\"} 0",
        "orders_host_http_requests_total{code=\"200\"} 3",
        "orders_host_http_requests_total{code=\"401\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    let ready = server.client.get(server.url("/readyz")).send().await.expect("answered");
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(ready.headers().contains_key("x-request-id"));
}

/// What a `$ref` of the description points to, or the value itself.
fn resolved<'d>(doc: &'d Value, value: &'d Value) -> &'d Value {
    match value["$ref"].as_str() {
        Some(target) => target
            .strip_prefix('#')
            .and_then(|pointer| doc.pointer(pointer))
            .unwrap_or_else(|| panic!("{target} does not resolve")),
        None => value,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_json_describes_every_route_and_the_running_server_answers_as_it_says() {
    let scratch = Scratch::new("serve-openapi");
    let server = Server::start(&scratch, &tenant("acme", ACME, ""));
    let response = server.client.get(server.url("/openapi.json")).send().await.expect("answered");
    assert_eq!(response.status(), StatusCode::OK, "no token needed");
    assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("application/json"));
    let doc = json(response).await;
    assert!(doc["openapi"].as_str().is_some_and(|version| version.starts_with("3.1.")), "{}", doc["openapi"]);

    // The API as the issue lists it: each route documented, and nothing else.
    let routes = [
        ("post", "/v1/jobs"),
        ("get", "/v1/jobs"),
        ("get", "/v1/jobs/{id}"),
        ("delete", "/v1/jobs/{id}"),
        ("get", "/v1/jobs/{id}/outputs/{name}"),
        ("get", "/v1/jobs/{id}/outputs.tar"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ];
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            operations.push((method.as_str(), path.as_str(), operation));
        }
    }
    for (method, path) in routes {
        assert!(operations.iter().any(|(m, p, _)| (*m, *p) == (method, path)), "{method} {path} is documented");
    }
    assert_eq!(operations.len(), routes.len(), "only the API's routes are documented");

    // Each documented operation is routed: without a token, the job routes
    // answer 401, which they document, and the others a status they document.
    let missing = "0123456789abcdef0123456789abcdef";
    for (method, path, operation) in &operations {
        let url = server.url(&path.replace("{id}", missing).replace("{name}", "summary.csv"));
        let verb = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
        let response = server.client.request(verb, url).send().await.expect("answered");
        let status = response.status();
        let needs_token = operation["security"].as_array().is_some_and(|requirements| !requirements.is_empty());
        if needs_token {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} without a token");
            assert_eq!(response.headers()["www-authenticate"], "Bearer", "{method} {path}");
            assert_eq!(json(response).await["error"]["kind"], "unauthorized", "{method} {path}");
        }
        let documented = &operation["responses"][status.as_str()];
        assert!(documented.is_object(), "{method} {path} answered {status}, documented: {}", operation["responses"]);
        if matches!(*path, "/healthz" | "/readyz") {
            assert_eq!(status, StatusCode::OK, "{path}");
        }
    }

    // The example's job has every property that the operation's documented
    // `Job` schema requires, and a state among the schema's.
    let response = server.post(ACME, "?wait=30", seven_rows()).await;
    let status = response.status();
    assert_eq!(status, StatusCode::OK, "finished within the wait");
    let documented = resolved(&doc, &doc["paths"]["/v1/jobs"]["post"]["responses"][status.as_str()]);
    let schema = resolved(&doc, &documented["content"]["application/json"]["schema"]);
    let job = json(response).await;
    let required = schema["required"].as_array().expect("the job schema's required properties");
    assert!(required.len() >= 10, "every property of a job is always sent: {required:?}");
    for property in required {
        let property = property.as_str().expect("a name");
        assert!(job.get(property).is_some(), "{property} is in {job}");
    }
    let properties = schema["properties"].as_object().expect("the job schema's properties");
    for property in job.as_object().expect("a job").keys() {
        assert!(properties.contains_key(property), "{property} is documented");
    }
    let states = resolved(&doc, &properties["state"])["enum"].as_array().expect("the states");
    assert!(states.contains(&job["state"]), "{} is one of {states:?}", job["state"]);
    assert_eq!(job["state"], "succeeded");
}

#[test]
fn host_token_prints_a_token_and_the_config_line_of_its_hash() {
    let output = Command::new(env!("CARGO_BIN_EXE_host")).arg("token").output().expect("host token");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[1], format!("token_sha256 = \"{}\"", sha256_hex(lines[0].as_bytes())));
    let again = Command::new(env!("CARGO_BIN_EXE_host")).arg("token").output().expect("host token");
    assert_ne!(again.stdout, text.as_bytes(), "a new token each time");
}

#[test]
fn an_unknown_config_key_stops_the_server_with_its_name_and_line() {
    let scratch = Scratch::new("serve-badconfig");
    let path =
        scratch.write("service.toml", format!("max_queued = 3\n{}\ntimout = \"1s\"\n", tenant("acme", ACME, "")));
    let output = Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["serve", "--config"])
        .arg(&path)
        .args(scratch.root_args())
        .output()
        .expect("host serve");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("timout") && stderr.contains("line 6"), "{stderr}");
}
