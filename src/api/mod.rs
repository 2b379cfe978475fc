//! The REST API (SPEC §4): axum routes over the controller. No rollout logic here.

pub mod auth;
pub mod error;
pub mod forward;
pub mod openapi;
pub mod routes;
pub mod slack;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::rollout::controller::Controller;
use crate::rollout::ports::RolloutMetrics;
pub use auth::Auth;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub controller: Controller,
    pub auth: Auth,
    pub metrics: Arc<dyn RolloutMetrics>,
    /// Set once the store is open, policies loaded and rollouts resumed.
    pub ready: Arc<AtomicBool>,
    /// The Slack buttons' endpoint; None: Slack's signing secret is not configured.
    pub slack: Option<Arc<slack::SlackInteractions>>,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.controller.env().store.ping()
    }
}

pub fn router(state: AppState) -> Router {
    use routes::*;
    Router::new()
        .route("/api/v1/rollouts", post(create_rollout).get(list_rollouts))
        .route("/api/v1/rollouts/{id}", get(get_rollout))
        .route("/api/v1/rollouts/{id}/events", get(rollout_events))
        .route("/api/v1/rollouts/{id}/promote", post(promote))
        .route("/api/v1/rollouts/{id}/pause", post(pause))
        .route("/api/v1/rollouts/{id}/resume", post(resume))
        .route("/api/v1/rollouts/{id}/abort", post(abort))
        .route("/api/v1/policies", get(list_policies))
        .route("/api/v1/replicas", get(list_replicas))
        .route("/api/v1/slack/interactions", post(slack::interactions))
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/api/v1/policy.schema.json", get(openapi::serve_policy_schema))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(state.metrics.clone(), count_request))
        .with_state(state)
}

/// `vane_http_requests_total` and `vane_http_request_duration_seconds`, labelled with the route
/// template (`/api/v1/rollouts/{id}`), never the raw path, so label values stay bounded.
async fn count_request(
    axum::extract::State(metrics): axum::extract::State<Arc<dyn RolloutMetrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let res = next.run(req).await;
    metrics.http_request(&method, &route, res.status().as_u16(), started.elapsed());
    res
}
