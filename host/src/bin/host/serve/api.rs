//! The HTTP API: routes, bearer authentication, error bodies, and the
//! layers every request goes through (request id, tracing span, body read
//! timeout, status counting). Handlers only translate HTTP to the service.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa::{IntoParams, ToSchema};

use super::backend::Backend;
use super::jobs::{Job, JobList, MAX_WAIT};
use super::metrics::CodeLabels;
use super::openapi::{self, BadRequest, InternalError, NotFound, ServerBusy, TooLarge, TooManyQueued, Unauthorized};

/// A client that sends nothing of its body for this long is cut (the
/// config's `body_read_timeout` when it has none).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = 1000;

/// An error answer: `{"error": {"kind", "message"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), retry_after: None }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "there is no such job")
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    pub fn too_large(max_input: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "input-too-large",
            format!("the body is larger than this tenant's max_input of {max_input} bytes; split the export"),
        )
    }

    pub fn storage_full(stored: u64, max_stored: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "storage-full",
            format!(
                "this tenant keeps {stored} bytes of inputs and results, its max_stored is {max_stored}; DELETE \
                 finished jobs or wait for their results to expire"
            ),
        )
    }

    pub fn draining() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "draining", "the server is stopping; send the job to it again later")
            .retry_after(5)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer TOKEN` with a token of this server's config",
        )
    }
}

/// The server's own failures are logged in full and answered plainly.
impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        tracing::error!("{err:#}");
        Self::internal("the server failed; its log says why")
    }
}

impl From<std::io::Error> for ApiError {
    fn from(err: std::io::Error) -> Self {
        Self::from(anyhow::Error::from(err))
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for programs: `bad-request`, `unauthorized`,
    /// `not-found`, `idempotency-conflict`, `not-finished`,
    /// `input-too-large`, `too-many-queued`, `storage-full`, `server-busy`,
    /// `draining`, `unavailable` (with `--nats`: NATS cannot be reached) or
    /// `internal`.
    #[schema(example = "not-found")]
    pub kind: &'static str,
    /// What went wrong and what to do about it, for people.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { kind: self.kind, message: self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

type Shared = State<Arc<Backend>>;

pub fn router(service: Arc<Backend>) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/v1/jobs", get(list_jobs).post(create_job))
        .route("/v1/jobs/{id}", get(show_job).delete(delete_job))
        .route("/v1/jobs/{id}/outputs.tar", get(output_tar))
        .route("/v1/jobs/{id}/outputs/{name}", get(output_file))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such route; see /openapi.json") })
        .layer(RequestBodyTimeoutLayer::new(service.config().body_read_timeout))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&service), count_status))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        request_id = %id,
                        tenant = tracing::field::Empty,
                        job = tracing::field::Empty,
                    )
                })
                // A 503 while draining or a 500 is the server's to say, not an
                // error of its log: those are logged where they happen.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(service)
}

async fn count_status(State(service): Shared, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    service.metrics().requests.get_or_create(&CodeLabels { code: response.status().as_u16() }).inc();
    response
}

/// The tenant of the request's bearer token.
fn tenant(service: &Backend, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    let tenant = service.config().authenticate(token).ok_or_else(ApiError::unauthorized)?;
    tracing::Span::current().record("tenant", tenant.as_str());
    Ok(tenant)
}

fn record_job(id: &str) {
    tracing::Span::current().record("job", id);
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct CreateQuery {
    /// The component to run: one of the server's config, else its bundled pipeline.
    component: Option<String>,
    /// Seconds to wait for the job to end before answering (at most 300):
    /// 200 with the ended job, else 202 as without it.
    #[param(minimum = 0, maximum = 300)]
    wait: Option<f64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct WaitQuery {
    /// Seconds to wait for the job to end before answering (at most 300).
    #[param(minimum = 0, maximum = 300)]
    wait: Option<f64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// How many jobs, newest first (1 to 1000, 100 if not given).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

fn wait_of(seconds: Option<f64>) -> Result<Option<Duration>, ApiError> {
    seconds
        .map(|seconds| {
            Duration::try_from_secs_f64(seconds)
                .map(|wait| wait.min(MAX_WAIT))
                .map_err(|_| ApiError::bad_request("`wait` is a number of seconds, 0 or more"))
        })
        .transpose()
}

/// The query string through axum's own parser, so a bad one gets our error body.
fn query<T: serde::de::DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    let raw = raw.unwrap_or_default();
    let uri: axum::http::Uri =
        format!("/?{raw}").parse().map_err(|err| ApiError::bad_request(format!("bad query `{raw}`: {err}")))?;
    Query::<T>::try_from_uri(&uri)
        .map(|Query(value)| value)
        .map_err(|err| ApiError::bad_request(format!("bad query `{raw}`: {}", err.body_text())))
}

fn job_response(status: StatusCode, job: super::store::JobRecord) -> Result<Response, ApiError> {
    let location = format!("/v1/jobs/{}", job.id);
    let mut response = (status, Json(Job::of(job)?)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Sends a CSV export to be run as a job.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    params(
        CreateQuery,
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255,
            description = "1 to 255 visible ASCII characters: a retry with the same key, body and component \
                           names the same job instead of a new one"),
    ),
    request_body(content = String, content_type = "text/csv",
        description = "The orders export, at most the tenant's `max_input` bytes"),
    responses(
        (status = 200, description = "The job, ended within `wait`", body = Job,
            headers(("Location" = String, description = "The job's URL"))),
        (status = 202, description = "The job, accepted and not yet ended", body = Job,
            headers(("Location" = String, description = "The job's URL"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, description = "The `Idempotency-Key` was used for another body or component", body = ErrorBody),
        (status = 413, response = TooLarge),
        (status = 429, response = TooManyQueued),
        (status = 500, response = InternalError),
        (status = 503, response = ServerBusy),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn create_job(State(service): Shared, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let tenant = tenant(&service, &parts.headers)?;
    let params: CreateQuery = query(parts.uri.query())?;
    let wait = wait_of(params.wait)?;
    let key = match parts.headers.get("idempotency-key") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|key| (1..=255).contains(&key.len()))
                .ok_or_else(|| ApiError::bad_request("Idempotency-Key is 1 to 255 visible ASCII characters"))?
                .to_owned(),
        ),
        None => None,
    };
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let job = service.accept(&tenant, params.component, key, length, body, wait).await?;
    record_job(&job.id);
    let status = if wait.is_some() && job.state.ended() { StatusCode::OK } else { StatusCode::ACCEPTED };
    job_response(status, job)
}

/// One job of the tenant.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), WaitQuery),
    responses(
        (status = 200, description = "The job (once ended, or when `wait` is over)", body = Job,
            headers(("Location" = String, description = "The job's URL"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn show_job(
    State(service): Shared,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let tenant = tenant(&service, request.headers())?;
    record_job(&id);
    let params: WaitQuery = query(request.uri().query())?;
    let job = match wait_of(params.wait)? {
        Some(wait) => service.wait_for(&tenant, &id, wait).await?,
        None => service.job(&tenant, &id).await?,
    };
    job_response(StatusCode::OK, job)
}

/// The tenant's jobs, newest first.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "The tenant's jobs, newest first", body = JobList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 500, response = InternalError),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn list_jobs(State(service): Shared, request: Request) -> Result<Response, ApiError> {
    let tenant = tenant(&service, request.headers())?;
    let params: ListQuery = query(request.uri().query())?;
    let limit = params.limit.unwrap_or(DEFAULT_LIST_LIMIT).clamp(1, MAX_LIST_LIMIT);
    let jobs = service.list(&tenant, limit).await?;
    let jobs = jobs.into_iter().map(Job::of).collect::<anyhow::Result<_>>()?;
    Ok(Json(JobList { jobs }).into_response())
}

/// Cancels a queued or running job, or forgets an ended one; its files go at once.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 204, description = "Cancelled or forgotten"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn delete_job(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = tenant(&service, &headers)?;
    record_job(&id);
    service.delete(&tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One output file of a succeeded job.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/outputs/{name}",
    tag = "outputs",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("name" = String, Path, description = "The output's name, as the job's `outputs` list it"),
    ),
    responses(
        (status = 200, description = "The file's bytes", body = String, content_type = "text/csv"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn output_file(
    State(service): Shared,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = tenant(&service, &headers)?;
    record_job(&id);
    let (body, length) = service.output(&tenant, &id, &name).await?;
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}

/// Every output of a succeeded job, as one tar.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/outputs.tar",
    tag = "outputs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "A tar of the outputs, streamed as it is built",
            content_type = "application/x-tar"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, description = "The job has not succeeded: only a succeeded job has outputs", body = ErrorBody),
        (status = 500, response = InternalError),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn output_tar(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = tenant(&service, &headers)?;
    record_job(&id);
    let mut response = service.outputs_tar(&tenant, &id).await?.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    Ok(response)
}

/// Whether the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    responses((status = 200, description = "Up", body = String, content_type = "text/plain")),
)]
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Whether the server takes jobs: not while it drains to stop.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "Draining: the server is stopping; or, with `--nats`, NATS cannot be reached", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again"))),
    ),
)]
pub(super) async fn readyz(State(service): Shared) -> Response {
    match service.ready() {
        Ok(()) => "ready\n".into_response(),
        Err(err) => err.into_response(),
    }
}

/// The server's metrics (jobs by outcome, durations, queue, requests by status).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses(
        (status = 200, description = "Prometheus text (the OpenMetrics format)", body = String,
            content_type = "application/openmetrics-text"),
        (status = 500, response = InternalError),
    ),
)]
pub(super) async fn metrics(State(service): Shared) -> Result<Response, ApiError> {
    let text =
        service.metrics().encode().map_err(|err| ApiError::internal(format!("cannot encode the metrics: {err}")))?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}
