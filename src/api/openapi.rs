//! The OpenAPI 3 document, generated from the handlers and types (utoipa).

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::routes::{self, AbortBody, Items, PromoteBody};
use super::slack::{self, SlackAnswer, SlackOrError};
use crate::analysis::{AnalysisReport, MetricResult, MetricVerdict, Verdict};
use crate::policy::*;
use crate::rollout::ports::Replica;
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
        routes::promote, routes::pause, routes::resume, routes::abort, routes::list_policies, routes::list_replicas,
        slack::interactions, routes::live, routes::ready, routes::metrics, serve_policy_schema
    ),
    components(schemas(
        CreateRequest, RouterSpec, Overrides, RolloutView, GateView, Phase, Strategy, Event, Items<RolloutView>,
        Items<Event>, Items<Policy>, AnalysisReport, MetricResult, Verdict, MetricVerdict, Policy, MetricSpec, Bound,
        Gate, Approval, Hooks, HookSpec, Preflight, SequentialSpec, AdaptiveSpec, OnNoData, JudgeKind, OnDrift, Dialect,
        CanaryMatch, Mirror,
        PromoteBody, AbortBody, Replica, Items<Replica>, ErrorBody, ErrorDetail, SlackAnswer, SlackOrError
    )),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The JSON Schema (2020-12) of a policy file, from the same types and doc comments as the OpenAPI
/// document: `Policy` with every schema it refers to under `$defs`. Editors use it to complete and
/// check `policies/*.yaml` (see docs/reference/policy.md).
pub fn policy_schema() -> serde_json::Value {
    let api = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let schemas = &api["components"]["schemas"];
    let mut defs = serde_json::Map::new();
    let mut todo = vec!["Policy".to_string()];
    while let Some(name) = todo.pop() {
        if defs.contains_key(&name) {
            continue;
        }
        let mut s = schemas[&name].clone();
        rewrite_refs(&mut s, &mut todo);
        defs.insert(name, s);
    }
    let mut root = defs.remove("Policy").unwrap_or_default();
    if let Some(o) = root.as_object_mut() {
        o.insert("$schema".into(), "https://json-schema.org/draft/2020-12/schema".into());
        o.insert("title".into(), "vane policy".into());
        o.insert("$defs".into(), serde_json::Value::Object(defs));
    }
    root
}

/// `#/components/schemas/X` → `#/$defs/X`, collecting X.
fn rewrite_refs(v: &mut serde_json::Value, found: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            if let Some(serde_json::Value::String(r)) = o.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                found.push(name.to_string());
                *r = format!("#/$defs/{name}");
            }
            o.values_mut().for_each(|v| rewrite_refs(v, found));
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|v| rewrite_refs(v, found)),
        _ => {}
    }
}

/// The JSON Schema of a policy file (for editors and CI linters).
#[utoipa::path(get, path = "/api/v1/policy.schema.json", tag = "policies",
    responses((status = 200, description = "JSON Schema (2020-12) of a policy file", body = Object)))]
pub async fn serve_policy_schema() -> Json<serde_json::Value> {
    Json(policy_schema())
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
