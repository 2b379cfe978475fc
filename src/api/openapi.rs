//! The OpenAPI 3 document, generated from the handlers and types (utoipa).

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::routes::{self, AbortBody, Items, PromoteBody};
use super::slack::{self, SlackAnswer, SlackOrError};
use crate::analysis::{AnalysisReport, MetricResult, MetricVerdict, Verdict};
use crate::policy::*;
use crate::rollout::spec::{CanaryScale, Retire, WorkloadSpec};
use crate::rollout::{CreateRequest, Event, GateView, Phase, RolloutView, RouterSpec};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = api.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "vane", description = "Progressive delivery: canary and blue/green rollouts with SLO analysis."),
    paths(
        routes::create_rollout, routes::list_rollouts, routes::get_rollout, routes::rollout_events,
        routes::promote, routes::pause, routes::resume, routes::abort, routes::list_policies,
        slack::interactions, routes::live, routes::ready, routes::metrics
    ),
    components(schemas(
        CreateRequest, RouterSpec, WorkloadSpec, CanaryScale, Retire, Overrides, RolloutView, GateView, Phase, Strategy, Event, Items<RolloutView>,
        Items<Event>, Items<Policy>, AnalysisReport, MetricResult, Verdict, MetricVerdict, Policy, MetricSpec, Bound,
        Gate, Approval, Hooks, HookSpec, Preflight, SequentialSpec, AdaptiveSpec, OnNoData, JudgeKind, OnDrift, Dialect,
        CanaryMatch, Mirror,
        PromoteBody, AbortBody, ErrorBody, ErrorDetail, SlackAnswer, SlackOrError
    )),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request and policy shapes of the Gateway API router, canaryMatch and mirror are published.
    #[test]
    fn gateway_api_canary_match_and_mirror_are_in_the_document() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let variants = schemas["RouterSpec"]["oneOf"].as_array().expect("RouterSpec is a oneOf");
        let gateway =
            variants.iter().find(|v| v.to_string().contains("\"gateway-api\"")).expect("a gateway-api variant");
        for field in ["httpRoute", "grpcRoute", "rule", "stableBackend", "canaryBackend"] {
            assert!(gateway.to_string().contains(&format!("\"{field}\"")), "{field} in {gateway}");
        }
        let policy = schemas["Policy"]["properties"].as_object().unwrap();
        assert!(policy.contains_key("canaryMatch") && policy.contains_key("mirror"));
        assert!(schemas["Mirror"]["properties"]["percent"].is_object());
        assert!(schemas["CanaryMatch"]["properties"]["headers"].is_object());
    }
}
