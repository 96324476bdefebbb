//! `GET /openapi.json`: the OpenAPI 3.1 description of the API, generated
//! from the handlers' `#[utoipa::path]` attributes and from the types the
//! handlers send, so it cannot drift from what the server answers.

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToResponse};

use super::api::{self, ErrorBody, ErrorDetail};
use super::jobs::{Job, JobError, JobList, JobOutput, JobState};

/// The bearer scheme's name. The handlers' `#[utoipa::path]` attributes
/// spell it out (`security(("bearer" = []))`): they take no constants.
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = env!("CARGO_PKG_NAME"),
        version = env!("CARGO_PKG_VERSION"),
        description = "`host serve`: runs orders:pipeline components on CSV exports as jobs, each in a \
                       private, throw-away sandbox, under its tenant's limits. A tenant is named by the \
                       bearer token it sends.",
    ),
    paths(
        api::create_job,
        api::list_jobs,
        api::show_job,
        api::delete_job,
        api::output_file,
        api::output_tar,
        api::healthz,
        api::readyz,
        api::metrics,
        openapi_json,
    ),
    components(
        schemas(Job, JobState, JobOutput, JobError, JobList, ErrorBody, ErrorDetail),
        responses(BadRequest, Unauthorized, NotFound, TooLarge, TooManyQueued, ServerBusy, InternalError),
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Sending CSV exports to run, and following their jobs"),
        (name = "outputs", description = "The files a succeeded job delivered"),
        (name = "service", description = "Probes, metrics and this description; no token needed"),
    ),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("A token of a tenant of the server's config (`host token` makes one)"))
            .build();
        components.add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

// The error answers that several operations share. `ApiError` builds the
// real ones; these types only carry their descriptions.

/// The query, the `Idempotency-Key` or the body could not be read.
#[derive(ToResponse)]
#[expect(dead_code, reason = "a description only: ApiError builds the answer")]
pub struct BadRequest(ErrorBody);

/// No `Authorization: Bearer TOKEN`, or a token of no tenant.
#[derive(ToResponse)]
#[response(headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
#[expect(dead_code, reason = "a description only: ApiError builds the answer")]
pub struct Unauthorized(ErrorBody);

/// No such job of this tenant (another tenant's job is answered the same),
/// or no such output of the job.
#[derive(ToResponse)]
#[expect(dead_code, reason = "a description only: ApiError builds the answer")]
pub struct NotFound(ErrorBody);

/// The body is larger than the tenant's `max_input`; it is answered as
/// soon as the limit is crossed, and nothing of it is kept.
#[derive(ToResponse)]
#[expect(dead_code, reason = "a description only: ApiError builds the answer")]
pub struct TooLarge(ErrorBody);

/// The tenant has `max_queued` jobs waiting (`too-many-queued`), or keeps
/// `max_stored` bytes (`storage-full`: delete finished jobs).
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds to wait before sending again (`too-many-queued`)")))]
#[expect(dead_code, reason = "a description only: ApiError builds the answer")]
pub struct TooManyQueued(ErrorBody);

/// The server has `max_queued` jobs waiting over all tenants
/// (`server-busy`), or is stopping (`draining`).
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds to wait before sending again")))]
#[expect(dead_code, reason = "a description only: ApiError builds the answer")]
pub struct ServerBusy(ErrorBody);

/// The server failed; its log says why.
#[derive(ToResponse)]
#[expect(dead_code, reason = "a description only: ApiError builds the answer")]
pub struct InternalError(ErrorBody);

/// Built once: the description does not change while the server runs.
static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

/// This description of the API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 description", body = Object, content_type = "application/json")),
)]
pub(super) async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(&DOCUMENT)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn document() -> Value {
        serde_json::to_value(&*DOCUMENT).expect("the description serializes")
    }

    /// Every `$ref` in `value`.
    fn refs<'v>(value: &'v Value, found: &mut Vec<&'v str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    found.push(target);
                }
                map.values().for_each(|value| refs(value, found));
            }
            Value::Array(values) => values.iter().for_each(|value| refs(value, found)),
            _ => {}
        }
    }

    #[test]
    fn the_description_is_openapi_3_1_of_this_crate_with_every_route() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], env!("CARGO_PKG_NAME"));
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let mut operations: Vec<String> = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                operations.push(format!("{method} {path}"));
            }
        }
        operations.sort();
        assert_eq!(
            operations,
            [
                "delete /v1/jobs/{id}",
                "get /healthz",
                "get /metrics",
                "get /openapi.json",
                "get /readyz",
                "get /v1/jobs",
                "get /v1/jobs/{id}",
                "get /v1/jobs/{id}/outputs.tar",
                "get /v1/jobs/{id}/outputs/{name}",
                "post /v1/jobs",
            ]
        );
    }

    #[test]
    fn every_reference_resolves_and_every_operation_with_a_token_documents_401() {
        let doc = document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("an outside reference: {target}"));
            assert!(doc.pointer(pointer).is_some(), "{target} resolves");
        }
        assert!(
            doc["components"]["securitySchemes"][BEARER]["scheme"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
        );
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                let secured = operation["security"].as_array().is_some_and(|s| !s.is_empty());
                assert_eq!(secured, path.starts_with("/v1/"), "{method} {path}: a token for the job routes only");
                if secured {
                    assert!(operation["responses"]["401"].is_object(), "{method} {path} documents 401");
                }
            }
        }
    }
}
