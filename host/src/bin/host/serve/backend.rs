//! What the HTTP API runs on: the embedded service (SQLite and local
//! files, guests run here) or an API replica over NATS JetStream. The
//! handlers of `api.rs` call these methods and do not know which.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};

use super::api::ApiError;
use super::cluster::replica::Replica;
use super::config::Config;
use super::jobs::{ChannelWriter, Service, StoredOutput, write_tar};
use super::metrics::Metrics;
use super::store::JobRecord;

#[derive(Debug, Clone)]
pub enum Backend {
    Local(Arc<Service>),
    Nats(Arc<Replica>),
}

impl Backend {
    pub fn config(&self) -> &Config {
        match self {
            Self::Local(service) => &service.config,
            Self::Nats(replica) => &replica.config,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        match self {
            Self::Local(service) => &service.metrics,
            Self::Nats(replica) => &replica.metrics,
        }
    }

    /// Whether `/readyz` says 200: not while draining, nor (on NATS) while
    /// the connection is down.
    pub fn ready(&self) -> Result<(), ApiError> {
        match self {
            Self::Local(service) if service.is_draining() => Err(ApiError::draining()),
            Self::Local(_) => Ok(()),
            Self::Nats(replica) => replica.check_connected(),
        }
    }

    pub async fn accept(
        &self,
        tenant: &str,
        component: Option<String>,
        key: Option<String>,
        declared_length: Option<u64>,
        body: Body,
        wait: Option<Duration>,
    ) -> Result<JobRecord, ApiError> {
        match self {
            Self::Local(service) => service.accept(tenant, component, key, declared_length, body, wait).await,
            Self::Nats(replica) => {
                let job = replica.accept(tenant, component, key, declared_length, body).await?;
                match wait {
                    Some(wait) => replica.wait_for(tenant, &job.id, wait).await,
                    None => Ok(job),
                }
            }
        }
    }

    pub async fn job(&self, tenant: &str, id: &str) -> Result<JobRecord, ApiError> {
        match self {
            Self::Local(service) => service.job(tenant, id).await,
            Self::Nats(replica) => replica.job(tenant, id).await,
        }
    }

    pub async fn wait_for(&self, tenant: &str, id: &str, wait: Duration) -> Result<JobRecord, ApiError> {
        match self {
            Self::Local(service) => service.wait_for(tenant, id, wait).await,
            Self::Nats(replica) => replica.wait_for(tenant, id, wait).await,
        }
    }

    pub async fn list(&self, tenant: &str, limit: u32) -> Result<Vec<JobRecord>, ApiError> {
        match self {
            Self::Local(service) => service.list(tenant, limit).await,
            Self::Nats(replica) => replica.list(tenant, limit).await,
        }
    }

    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), ApiError> {
        match self {
            Self::Local(service) => service.delete(tenant, id).await,
            Self::Nats(replica) => replica.delete(tenant, id).await,
        }
    }

    /// Output `name` of a succeeded job, streamed, and its length.
    pub async fn output(&self, tenant: &str, id: &str, name: &str) -> Result<(Body, u64), ApiError> {
        match self {
            Self::Local(service) => match service.output(tenant, id, name).await? {
                StoredOutput::Bytes(bytes) => {
                    let length = bytes.len() as u64;
                    Ok((Body::from(bytes), length))
                }
                StoredOutput::File(path) => {
                    // Removed by DELETE or expiry since the record was read: not found.
                    let file = tokio::fs::File::open(&path).await.map_err(|_| ApiError::not_found())?;
                    let length = file.metadata().await?.len();
                    Ok((Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 << 10)), length))
                }
            },
            Self::Nats(replica) => replica.output(tenant, id, name).await,
        }
    }

    /// Every output of a succeeded job as one tar, streamed as it is built.
    pub async fn outputs_tar(&self, tenant: &str, id: &str) -> Result<Body, ApiError> {
        match self {
            Self::Local(service) => {
                let (outputs, finished_at) = service.outputs(tenant, id).await?;
                // Look at them all first, so a job deleted meanwhile is a 404, not a cut tar.
                for (_, output) in &outputs {
                    if let StoredOutput::File(path) = output {
                        tokio::fs::metadata(path).await.map_err(|_| ApiError::not_found())?;
                    }
                }
                let (sender, mut receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
                tokio::task::spawn_blocking(move || {
                    let failure = sender.clone();
                    if let Err(err) = write_tar(&outputs, finished_at, ChannelWriter(sender)) {
                        // Ends the body with an error: the client sees a cut transfer, not a short tar.
                        let _ = failure.blocking_send(Err(err));
                    }
                });
                let stream = futures_util::stream::poll_fn(move |context| receiver.poll_recv(context));
                Ok(Body::from_stream(stream))
            }
            Self::Nats(replica) => replica.outputs_tar(tenant, id).await,
        }
    }
}
