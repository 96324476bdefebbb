//! `host serve`: sandboxed multi-tenant execution as an HTTP service. One
//! shared [`Runner`], tenants from the config, jobs in an embedded store
//! under the data folder, a fair queue, and a graceful stop on SIGTERM.
//! With `--nats`, the same API as a stateless replica over NATS JetStream,
//! whose jobs `host worker`s run (`cluster/`).

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use orders_host::{Runner, RunnerConfig};
use tokio::sync::Semaphore;

use crate::RootArgs;

mod api;
mod backend;
mod charges;
pub mod cluster;
pub mod config;
mod ends;
mod jobs;
mod metrics;
mod openapi;
mod queue;
mod store;

use backend::Backend;
use config::{BUNDLED, Config};

/// A client that has not sent its request's headers in this time is cut
/// (the config's `header_read_timeout` when it has none).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;

/// How long, after the drain, requests still in flight may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The service's TOML config: listen address, data folder, bounds,
    /// components and tenants.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Address to listen on [default: the config's `listen`, else 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,

    /// Folder of the job records and results [default: the config's
    /// `data_dir`, else orders-host in the user's data folder].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// On SIGTERM or SIGINT, how long running jobs may take to finish
    /// before they are stopped and left queued for the next start.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = orders_host::parse_duration)]
    drain_timeout: Duration,

    /// Be an API replica over NATS JetStream at this URL (comma-separated
    /// for several servers): jobs are stored and queued there and run by
    /// `host worker`s; this process runs no guests and keeps nothing on disk.
    /// Credentials go in the config's [nats] table or the environment.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,

    #[command(flatten)]
    root: RootArgs,
}

/// Runs the server until SIGTERM or SIGINT; exits 0 after a clean stop.
pub fn command(args: &ServeArgs) -> ExitCode {
    run_async(Config::load(&args.config), |config| serve(args, config))
}

/// Runs `main` on a multi-threaded runtime with the loaded config: a config
/// error exits as an invalid argument, a failure as a host error.
pub(crate) fn run_async<F: std::future::Future<Output = anyhow::Result<()>>>(
    config: anyhow::Result<Config>,
    main: impl FnOnce(Config) -> F,
) -> ExitCode {
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("host: {err:#}");
            return ExitCode::from(crate::render::exit_code(orders_host::Outcome::InvalidArgument));
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("host: cannot start the async runtime: {err}");
            return ExitCode::from(crate::render::exit_code(orders_host::Outcome::HostError));
        }
    };
    match runtime.block_on(main(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("host: {err:#}");
            ExitCode::from(crate::render::exit_code(orders_host::Outcome::HostError))
        }
    }
}

async fn serve(args: &ServeArgs, mut config: Config) -> anyhow::Result<()> {
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(url) = &args.nats {
        return serve_replica(url, config).await;
    }
    if let Some(data_dir) = &args.data_dir {
        config.data_dir.clone_from(data_dir);
    }
    private_folder(&config.data_dir)?;
    let jobs_dir = config.data_dir.join("jobs");
    private_folder(&jobs_dir)?;
    let results_dir = config.data_dir.join("results");
    private_folder(&results_dir)?;
    let store = store::Store::open(&config.data_dir.join("jobs.db"))?;

    // Each tenant's own bound is the queue's; the runner's only caps it.
    let (runner, components) = start_runner(&args.root, &config, config.max_concurrent)?;

    let service = jobs::Service::new(config, runner.clone(), components, store, jobs_dir, results_dir);
    let recovered = service.recover().await?;
    if recovered > 0 {
        tracing::warn!("{recovered} job(s) accepted before the last stop will run");
    }
    let dispatcher = tokio::spawn(Arc::clone(&service).dispatch());
    let expiry = tokio::spawn(Arc::clone(&service).expire());
    let backend = Backend::Local(Arc::clone(&service));
    let timeout = args.drain_timeout;
    let drain = {
        let service = Arc::clone(&service);
        // Requests are still answered while it drains: readyz says 503.
        async move {
            tracing::info!("stopping: no new jobs, running ones get {timeout:?}");
            service.drain(timeout).await;
        }
    };
    let served = serve_http(service.config.listen, backend, drain).await;
    dispatcher.abort();
    expiry.abort();
    drop(service);
    runner.shutdown()?;
    served
}

/// `host serve --nats`: the API over JetStream; no guests, no local state.
async fn serve_replica(url: &str, config: Config) -> anyhow::Result<()> {
    let cluster = cluster::Cluster::connect(url, &config, "orders-host api").await?;
    let replica = cluster::replica::Replica::new(config, cluster);
    let tasks = [
        tokio::spawn(Arc::clone(&replica).watch()),
        tokio::spawn(Arc::clone(&replica).gauges()),
        tokio::spawn(Arc::clone(&replica).expire()),
    ];
    let drain = {
        let replica = Arc::clone(&replica);
        async move {
            tracing::info!("stopping: no new jobs; the workers go on with theirs");
            replica.drain();
        }
    };
    let served = serve_http(replica.config.listen, Backend::Nats(Arc::clone(&replica)), drain).await;
    for task in tasks {
        task.abort();
    }
    served
}

/// Serves the API on `listen` until SIGTERM or SIGINT, then runs `drain`
/// while requests are still answered, then closes.
async fn serve_http(
    listen: std::net::SocketAddr,
    backend: Backend,
    drain: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    // Scripts and tests read the bound address (`--listen 127.0.0.1:0`) here.
    println!("listening on http://{address}");

    let header_read_timeout = backend.config().header_read_timeout;
    let router = api::router(Arc::new(backend));
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let (drained_sender, mut drained) = tokio::sync::oneshot::channel::<()>();
    let mut drain = Some((drain, drained_sender));
    loop {
        tokio::select! {
            () = &mut stop, if drain.is_some() => {
                if let Some((drain, done)) = drain.take() {
                    tokio::spawn(async move {
                        drain.await;
                        let _ = done.send(());
                    });
                }
            }
            _ = &mut drained => break,
            accepted = accept(&listener, &connections) => {
                let Some((stream, permit)) = accepted else { continue };
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!("connection ended: {err}");
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(CLOSE_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still open after {CLOSE_TIMEOUT:?} were cut");
    }
    Ok(())
}

/// The next connection, once fewer than [`MAX_CONNECTIONS`] are open.
async fn accept(
    listener: &tokio::net::TcpListener,
    connections: &Arc<Semaphore>,
) -> Option<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let permit = Arc::clone(connections).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _)) => Some((stream, permit)),
        Err(err) => {
            // Out of descriptors, usually: wait rather than spin.
            tracing::warn!("cannot accept a connection: {err}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// The runner of a server or worker that runs guests: `max_concurrent` at
/// once, the sandbox roots swept of what a killed host left, each tenant's
/// limits set, and the config's components compiled.
pub(crate) fn start_runner(
    root: &RootArgs,
    config: &Config,
    max_concurrent: usize,
) -> anyhow::Result<(Runner, HashMap<String, orders_host::Component>)> {
    let runner = Runner::new(&RunnerConfig {
        sandbox_root: root.sandbox_root.clone(),
        memory_root: root.memory_root.clone(),
        spool_threshold: jobs::SPOOL_THRESHOLD as u64,
        fuel_metering: config.needs_fuel(),
        max_concurrent,
        max_concurrent_per_tenant: max_concurrent,
        cache_dir: orders_host::default_cache_dir(),
        ..RunnerConfig::default()
    })?;
    let sweep = runner.sweep().context("cannot sweep the sandbox roots")?;
    if !sweep.removed.is_empty() {
        tracing::warn!("removed {} sandbox(es) left by a killed host", sweep.removed.len());
    }
    for (tenant, settings) in &config.tenants {
        runner.set_tenant_limits(tenant, settings.limits)?;
    }
    let components = load_components(&runner, config)?;
    Ok((runner, components))
}

/// The bundled pipeline and the config's components, compiled once.
pub(crate) fn load_components(
    runner: &Runner,
    config: &Config,
) -> anyhow::Result<HashMap<String, orders_host::Component>> {
    let mut components = HashMap::new();
    components.insert(BUNDLED.to_owned(), runner.bundled()?);
    for (name, path) in &config.components {
        let component = runner.load_file(path).with_context(|| format!("[components] {name} = {}", path.display()))?;
        components.insert(name.clone(), component);
    }
    Ok(components)
}

/// Creates `path` owner-only (0700), or checks that an existing one is the
/// user's own folder, and makes it 0700.
pub(crate) fn private_folder(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => return Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err).with_context(|| format!("cannot create the data folder {}", path.display())),
    }
    let metadata = std::fs::symlink_metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !metadata.is_dir() || metadata.uid() != rustix::process::getuid().as_raw() {
        anyhow::bail!("{} is not a folder of this user; choose another --data-dir", path.display());
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} owner-only", path.display()))?;
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT; never, if the handlers cannot be installed.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
