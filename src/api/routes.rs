//! Handlers. Each validates its input into a typed request and calls the controller.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Operator, Viewer};
use super::error::{ApiError, ErrorBody};
use crate::policy::Policy;
use crate::rollout::controller::ControllerError;
use crate::rollout::machine::Command;
use crate::rollout::ports::{ListFilter, Replica};
use crate::rollout::{CreateRequest, Event, Phase, Rollout, RolloutView};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// Go straight to 100 % instead of passing only the current gate/step.
    #[serde(default)]
    pub full: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortBody {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub service: Option<String>,
    pub namespace: Option<String>,
    /// One of the phases, e.g. `Progressing` (case-insensitive).
    #[param(value_type = Option<Phase>)]
    pub phase: Option<String>,
    /// How many, newest first (default 100). Parsed here, so that a bad value is a 400 naming it.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

/// The request body, or 413 / 400 with the API's error body.
pub(super) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body is larger than {} bytes", super::BODY_LIMIT),
        ),
        _ => ApiError::bad_request(e.body_text()),
    })
}

/// Parse a JSON body; syntax errors are 400, well-formed JSON of the wrong shape is 422 with the field.
/// An `optional` body may be empty or `null`.
fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    optional: bool,
) -> Result<Option<T>, ApiError> {
    let body = body_bytes(body)?;
    if optional && (body.iter().all(|b| b.is_ascii_whitespace()) || body.trim_ascii() == b"null") {
        return Ok(None);
    }
    // Syntax first: a truncated or non-JSON body is 400 even when its first bytes already break the
    // schema (e.g. an unknown field before the cut).
    if let Err(e) = std::str::from_utf8(&body) {
        return Err(ApiError::bad_request(format!("malformed JSON: not UTF-8 ({e})")));
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return Err(ApiError::bad_request(format!("malformed JSON: {e}")));
    }
    let de = &mut serde_json::Deserializer::from_slice(&body);
    match serde_path_to_error::deserialize(de) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(ApiError::bad_request(format!("malformed JSON: {inner}")))
            } else {
                let field = if path == "." { missing_field(&inner.to_string()) } else { path };
                Err(ApiError::unprocessable(field, inner.to_string()))
            }
        }
    }
}

/// serde reports a missing field at the parent path; name the field itself.
fn missing_field(msg: &str) -> String {
    msg.strip_prefix("missing field `").and_then(|s| s.split('`').next()).unwrap_or("").to_string()
}

/// A rollout id from the path. Only ULIDs: anything else (path tricks, invalid percent-encoding or
/// UTF-8, absurd lengths) is simply not found, with the API's error body.
pub struct RolloutId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RolloutId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found("no such rollout (the id is not valid UTF-8)"))?;
        if crate::rollout::is_rollout_id(&id) {
            Ok(RolloutId(id))
        } else {
            let shown: String = id.chars().take(64).collect();
            Err(ApiError::not_found(format!("rollout {shown:?} not found")))
        }
    }
}

impl AppState {
    /// The API's view of a rollout, with its owner (HA) when the store knows one.
    fn view(&self, r: Rollout) -> RolloutView {
        let owner = match self.controller.env().store.owner(&r.id) {
            Ok(o) => o.map(|o| o.replica),
            Err(e) => {
                tracing::warn!(rollout = %r.id, error = %e, "cannot read the rollout's owner");
                None
            }
        };
        RolloutView { owner, ..RolloutView::from(&r) }
    }
}

/// Create a rollout.
#[utoipa::path(post, path = "/api/v1/rollouts", tag = "rollouts", request_body = CreateRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "same key and body → same rollout (200)")),
    responses(
        (status = 201, description = "created", body = RolloutView),
        (status = 200, description = "replay of an earlier request with the same Idempotency-Key", body = RolloutView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "an active rollout for this service exists", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_rollout(
    State(s): State<AppState>,
    Operator(caller): Operator,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CreateRequest = parse_json(body, false)?.unwrap_or_else(|| unreachable!("required body"));
    let idem = match headers.get("idempotency-key") {
        Some(v) => {
            let key = v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255).ok_or_else(|| {
                ApiError::bad_request("Idempotency-Key must be 1-255 visible ASCII characters").field("Idempotency-Key")
            })?;
            // Canonical body: the parsed request re-serialised, so formatting differences don't matter.
            let canonical = serde_json::to_string(&req).unwrap_or_default();
            Some((key.to_string(), canonical))
        }
        None => None,
    };
    let (r, created) = s.controller.create(req, &caller.name, idem).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(s.view(r))).into_response())
}

/// List rollouts, newest first.
#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts", params(ListQuery),
    responses((status = 200, body = Items<RolloutView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_rollouts(
    State(s): State<AppState>,
    _viewer: Viewer,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Items<RolloutView>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let phase = match q.phase.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => {
            Some(Phase::parse(p).ok_or_else(|| ApiError::bad_request(format!("unknown phase {p:?}")).field("phase"))?)
        }
        None => None,
    };
    let limit = match q.limit.as_deref() {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::bad_request("limit must be 1..1000").field("limit"))?,
        None => 100,
    };
    let f = ListFilter {
        service: q.service.filter(|s| !s.is_empty()),
        namespace: q.namespace.filter(|s| !s.is_empty()),
        phase,
        limit,
    };
    let owners = s.controller.env().store.owners()?;
    let items = s
        .controller
        .list(&f)?
        .iter()
        .map(|r| RolloutView { owner: owners.get(&r.id).cloned(), ..RolloutView::from(r) })
        .collect();
    Ok(Json(Items { items }))
}

/// One rollout.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", tag = "rollouts", params(("id" = String, Path)),
    responses((status = 200, body = RolloutView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_rollout(
    State(s): State<AppState>,
    _viewer: Viewer,
    RolloutId(id): RolloutId,
) -> Result<Json<RolloutView>, ApiError> {
    Ok(Json(s.view(s.controller.get(&id)?)))
}

/// A rollout's ordered, append-only history.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}/events", tag = "rollouts", params(("id" = String, Path)),
    responses((status = 200, body = Items<Event>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rollout_events(
    State(s): State<AppState>,
    _viewer: Viewer,
    RolloutId(id): RolloutId,
) -> Result<Json<Items<Event>>, ApiError> {
    Ok(Json(Items { items: s.controller.events(&id)? }))
}

/// Apply a command here, or (HA) forward the request to the replica that owns the rollout.
async fn command(s: &AppState, id: &str, c: Command, actor: &str, fwd: Forward) -> Result<Response, ApiError> {
    match s.controller.command(id, c, actor).await {
        Ok(r) => Ok(Json(s.view(r)).into_response()),
        Err(ControllerError::Elsewhere { replica, url, .. }) => {
            super::forward::forward(&url, &replica, &fwd.path, &fwd.headers, fwd.body).await
        }
        Err(e) => Err(e.into()),
    }
}

/// What forwarding a command to another replica needs: the path, the caller's headers and the body.
struct Forward {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Forward {
    fn new(uri: &Uri, headers: HeaderMap, body: Bytes) -> Forward {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or(uri.path()).to_string();
        Forward { path, headers, body }
    }
}

/// Pass the current gate/step, or with `full` go straight to 100 %.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/promote", tag = "control", params(("id" = String, Path)),
    request_body(content = Option<PromoteBody>, description = "optional (empty or null: pass the current gate/step)"),
    responses((status = 200, body = RolloutView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "not valid in the current phase", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn promote(
    State(s): State<AppState>,
    Operator(c): Operator,
    RolloutId(id): RolloutId,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let b: PromoteBody = parse_json(Ok(body.clone()), true)?.unwrap_or_default();
    command(&s, &id, Command::Promote { full: b.full }, &c.name, Forward::new(&uri, headers, body)).await
}

/// Hold the rollout where it is.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/pause", tag = "control", params(("id" = String, Path)),
    responses((status = 200, body = RolloutView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn pause(
    State(s): State<AppState>,
    Operator(c): Operator,
    RolloutId(id): RolloutId,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    command(&s, &id, Command::Pause, &c.name, Forward::new(&uri, headers, Bytes::new())).await
}

/// Continue a paused rollout.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", tag = "control", params(("id" = String, Path)),
    responses((status = 200, body = RolloutView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume(
    State(s): State<AppState>,
    Operator(c): Operator,
    RolloutId(id): RolloutId,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    command(&s, &id, Command::Resume, &c.name, Forward::new(&uri, headers, Bytes::new())).await
}

/// Roll back now.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/abort", tag = "control", params(("id" = String, Path)),
    request_body(content = Option<AbortBody>, description = "optional (empty or null: no reason)"),
    responses((status = 200, body = RolloutView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn abort(
    State(s): State<AppState>,
    Operator(c): Operator,
    RolloutId(id): RolloutId,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let b: AbortBody = parse_json(Ok(body.clone()), true)?.unwrap_or_default();
    if b.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(ApiError::unprocessable("reason", "at most 1000 characters"));
    }
    command(&s, &id, Command::Abort { reason: b.reason }, &c.name, Forward::new(&uri, headers, body)).await
}

/// HA (etcd store): every live replica, its advertised URL, lease expiry and the rollouts it owns.
/// Empty with the embedded store (one process, no replicas).
#[utoipa::path(get, path = "/api/v1/replicas", tag = "replicas",
    responses((status = 200, body = Items<Replica>), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_replicas(State(s): State<AppState>, _viewer: Viewer) -> Result<Json<Items<Replica>>, ApiError> {
    Ok(Json(Items { items: s.controller.env().store.replicas()? }))
}

/// The loaded policies.
#[utoipa::path(get, path = "/api/v1/policies", tag = "policies",
    responses((status = 200, body = Items<Policy>), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_policies(State(s): State<AppState>, _viewer: Viewer) -> Json<Items<Policy>> {
    Json(Items { items: s.controller.policies().as_ref().clone() })
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "alive", body = String, content_type = "text/plain")))]
pub async fn live() -> &'static str {
    "ok"
}

/// Readiness: store open, policies loaded, rollouts resumed.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, description = "ready", body = String, content_type = "text/plain"),
        (status = 503, description = "not ready", body = String, content_type = "text/plain")))]
pub async fn ready(State(s): State<AppState>) -> Response {
    if s.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// Prometheus exposition of the daemon's metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(s): State<AppState>) -> Response {
    let body = s.metrics.encode();
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}
