//! `gateway-api` router: the `weight` of the two backendRefs of one rule of an HTTPRoute or a
//! GRPCRoute (SPEC §4).
//!
//! The rule is the one named `rule`, else the first whose backendRefs are exactly the stable and canary
//! Services. Nothing else changes: no other rule, match, filter, backendRef or field is ever sent — the
//! write is a JSON patch of the two `weight` members only, guarded by the resourceVersion that was
//! read (unlike generators that rewrite the whole route and lose the users' filters and rules).
//!
//! Gateway API weights are proportions, not percentages (`weight / sum of the rule's weights`, an
//! absent weight is 1): vane always writes a pair summing to 100 and reads any pair back as the
//! canary's rounded share.

use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject};
use serde_json::{Value, json};

use super::canary_match::{self, Layout};
use super::gateway_api_workload as workload;
use super::k8s::{self, Attempt, KubeAccess, Obj};
use super::nginx_ingress_workload as services;
use super::{Router, RouterError};
use crate::BoxFut;
use crate::policy::CanaryMatch;
use crate::rollout::ports::RouteShape;

/// Which route kind the rollout drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    pub fn resource(self) -> ApiResource {
        match self {
            RouteKind::Http => k8s::http_route(),
            RouteKind::Grpc => k8s::grpc_route(),
        }
    }
}

pub struct GatewayApiRouter {
    kube: Arc<KubeAccess>,
    namespace: String,
    kind: RouteKind,
    route: String,
    rule: Option<String>,
    stable: String,
    canary: String,
    canary_match: Vec<CanaryMatch>,
    /// A workload release's (stable, new) versions: vane then owns the canary Service and backendRef.
    versions: Option<(String, String)>,
}

/// Gateway API's limit of rules per route (the CRDs' `maxItems`).
pub const MAX_RULES: usize = 16;

/// How HTTPRoute and GRPCRoute spell rules and header matches (`headers: [{type: Exact, name, value}]`).
pub const LAYOUT: Layout = Layout {
    list: "/spec/rules",
    matches: "matches",
    targets: "backendRefs",
    headers_of: exact_headers,
    with_headers: add_exact_headers,
    strip: strip_mirror,
};

/// A `RequestMirror` filter of vane's: it mirrors to the canary Service.
fn is_vane_mirror(filter: &Value, canary_target: &Value) -> bool {
    let b = filter.pointer("/requestMirror/backendRef");
    filter.get("type").and_then(Value::as_str) == Some("RequestMirror")
        && b.and_then(|b| b.get("name")).is_some_and(|n| Some(n) == canary_target.get("name"))
        && b.and_then(|b| b.get("kind")).and_then(Value::as_str).is_none_or(|k| k == "Service")
}

fn filters(rule: &Value) -> &[Value] {
    rule.get("filters").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn strip_mirror(rule: &mut Value, canary_target: &Value) {
    let kept: Vec<Value> = filters(rule).iter().filter(|f| !is_vane_mirror(f, canary_target)).cloned().collect();
    if let Some(o) = rule.as_object_mut()
        && o.contains_key("filters")
    {
        if kept.is_empty() {
            o.remove("filters");
        } else {
            o.insert("filters".into(), Value::Array(kept));
        }
    }
}

/// Ops turning vane's `RequestMirror` filter of the canary on the rule at `base` on (`Some(percent)`)
/// or off; other filters (the user's, mirrors to other backends included) are never touched.
pub fn mirror_ops(rule: &Value, base: &str, canary_target: &Value, percent: Option<u8>) -> Vec<Value> {
    let fs = filters(rule);
    let ours: Vec<usize> = (0..fs.len()).filter(|&j| is_vane_mirror(&fs[j], canary_target)).collect();
    match percent {
        None if !ours.is_empty() && ours.len() == fs.len() => {
            vec![json!({ "op": "remove", "path": format!("{base}/filters") })]
        }
        None => ours.iter().rev().map(|j| json!({ "op": "remove", "path": format!("{base}/filters/{j}") })).collect(),
        Some(p) => match ours.first() {
            Some(j) if fs[*j].pointer("/requestMirror/percent").and_then(Value::as_i64) == Some(p as i64) => vec![],
            Some(j) => {
                vec![json!({ "op": "add", "path": format!("{base}/filters/{j}/requestMirror/percent"), "value": p })]
            }
            None => {
                let mut backend = json!({ "name": canary_target.get("name") });
                if let Some(port) = canary_target.get("port") {
                    backend["port"] = port.clone();
                }
                let f = json!({ "type": "RequestMirror", "requestMirror": { "backendRef": backend, "percent": p } });
                if rule.get("filters").is_some() {
                    vec![json!({ "op": "add", "path": format!("{base}/filters/-"), "value": f })]
                } else {
                    vec![json!({ "op": "add", "path": format!("{base}/filters"), "value": [f] })]
                }
            }
        },
    }
}

fn exact_headers(block: &Value) -> Option<std::collections::BTreeMap<String, String>> {
    let h = block.get("headers")?.as_array()?;
    h.iter()
        .map(|m| {
            let exact = m.get("type").and_then(Value::as_str).is_none_or(|t| t == "Exact");
            let name = m.get("name")?.as_str()?.to_ascii_lowercase();
            exact.then_some((name, m.get("value")?.as_str()?.to_string()))
        })
        .collect()
}

fn add_exact_headers(block: &Value, headers: &std::collections::BTreeMap<String, String>) -> Value {
    let mut b = block.clone();
    let mut list: Vec<Value> = b.get("headers").and_then(Value::as_array).cloned().unwrap_or_default();
    for (k, v) in headers {
        list.retain(|m| !m.get("name").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case(k)));
        list.push(json!({ "type": "Exact", "name": k, "value": v }));
    }
    b["headers"] = Value::Array(list);
    b
}

/// Where the two weights live in `spec.rules`.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedRule {
    pub rule_index: usize,
    pub stable_index: usize,
    pub canary_index: usize,
    /// The weights as Gateway API reads them (an absent weight is 1).
    pub stable_weight: i64,
    pub canary_weight: i64,
}

impl WeightedRule {
    /// The canary's share in percent, rounded; None when both weights are 0 (the rule serves nothing).
    pub fn canary(&self) -> Option<u8> {
        let sum = self.stable_weight + self.canary_weight;
        if sum <= 0 || self.stable_weight < 0 || self.canary_weight < 0 {
            return None;
        }
        u8::try_from((self.canary_weight * 100 + sum / 2) / sum).ok()
    }

    /// Exactly `100 − canary` / `canary`, as vane writes it.
    pub fn holds(&self, canary: u8) -> bool {
        self.stable_weight == 100 - canary as i64 && self.canary_weight == canary as i64
    }
}

/// Is this backendRef the Service `name` of the route's namespace?
pub fn is_service(b: &Value, name: &str, namespace: &str) -> bool {
    let s = |k: &str| b.get(k).and_then(Value::as_str);
    s("name") == Some(name)
        && s("kind").is_none_or(|k| k == "Service")
        && s("group").is_none_or(str::is_empty)
        && s("namespace").is_none_or(|n| n == namespace)
}

pub fn backend_refs(rule: &Value) -> &[Value] {
    rule.get("backendRefs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn label(rule: &Value, index: usize) -> String {
    rule.get("name").and_then(Value::as_str).map_or(format!("#{index}"), |n| format!("{n:?}"))
}

/// Find the weighted rule in a route's spec.
pub fn locate(
    spec: &Value,
    namespace: &str,
    rule: Option<&str>,
    stable: &str,
    canary: &str,
) -> Result<WeightedRule, String> {
    let rules = spec.get("rules").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let exactly_both = |r: &Value| {
        let refs = backend_refs(r);
        refs.len() == 2
            && refs.iter().any(|b| is_service(b, stable, namespace))
            && refs.iter().any(|b| is_service(b, canary, namespace))
    };
    let index = match rule {
        Some(name) => {
            rules.iter().position(|r| r.get("name").and_then(Value::as_str) == Some(name)).ok_or_else(|| {
                let names: Vec<&str> = rules.iter().filter_map(|r| r.get("name").and_then(Value::as_str)).collect();
                format!(
                    "has no rule named {name:?} (named rules: {})",
                    if names.is_empty() { "none".into() } else { names.join(", ") }
                )
            })?
        }
        None => rules.iter().position(exactly_both).ok_or_else(|| {
            format!(
                "has no rule whose two backendRefs are the Services {stable:?} and {canary:?}; add the canary \
                 Service to the rule with weight 0, or name the rule with router.rule"
            )
        })?,
    };
    let r = &rules[index];
    if !exactly_both(r) {
        return Err(format!(
            "rule {} must have exactly two backendRefs: the Services {stable:?} and {canary:?} (of namespace {namespace})",
            label(r, index)
        ));
    }
    let refs = backend_refs(r);
    let find = |name: &str| refs.iter().position(|b| is_service(b, name, namespace)).unwrap_or_default();
    let weight = |i: usize| refs[i].get("weight").and_then(Value::as_i64).unwrap_or(1);
    let (s, c) = (find(stable), find(canary));
    Ok(WeightedRule {
        rule_index: index,
        stable_index: s,
        canary_index: c,
        stable_weight: weight(s),
        canary_weight: weight(c),
    })
}

/// The JSON-patch ops that set the weights (`add` sets a member whether or not it exists).
pub fn weight_ops(r: &WeightedRule, canary: u8) -> Vec<Value> {
    let base = format!("/spec/rules/{}/backendRefs", r.rule_index);
    vec![
        json!({ "op": "add", "path": format!("{base}/{}/weight", r.stable_index), "value": 100 - canary as i64 }),
        json!({ "op": "add", "path": format!("{base}/{}/weight", r.canary_index), "value": canary as i64 }),
    ]
}

impl GatewayApiRouter {
    /// `route`: the route's kind and name; `backends`: the stable and canary Services.
    pub fn new(
        kube: Arc<KubeAccess>,
        namespace: &str,
        (kind, route): (RouteKind, &str),
        rule: Option<&str>,
        (stable, canary): (&str, &str),
        canary_match: &[CanaryMatch],
    ) -> Self {
        GatewayApiRouter {
            kube,
            namespace: namespace.into(),
            kind,
            route: route.into(),
            rule: rule.map(Into::into),
            stable: stable.into(),
            canary: canary.into(),
            canary_match: canary_match.to_vec(),
            versions: None,
        }
    }

    /// The versions a workload release moves between (needed to shape routing).
    pub fn with_versions(mut self, stable_version: &str, version: &str) -> Self {
        self.versions = Some((stable_version.into(), version.into()));
        self
    }

    fn backends(&self) -> workload::Backends<'_> {
        workload::Backends {
            namespace: &self.namespace,
            rule: self.rule.as_deref(),
            stable: &self.stable,
            canary: &self.canary,
        }
    }

    fn services(&self, client: kube::Client) -> kube::Api<k8s_openapi::api::core::v1::Service> {
        kube::Api::namespaced(client, &self.namespace)
    }

    /// Promoted by a workload release: the rule holds only the stable Service, which selects the
    /// new version (before the release it selects the stable one).
    async fn promoted(&self, o: &DynamicObject) -> Result<bool, RouterError> {
        let Some((_, version)) = &self.versions else { return Ok(false) };
        let spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
        if !self.backends().only_stable(&spec) {
            return Ok(false);
        }
        let api = self.services(self.kube.client_in(&self.namespace).await?);
        let what = format!("Service {}/{}", self.namespace, self.stable);
        let s = api.get_opt(&self.stable).await.map_err(|e| k8s::classify(&what, e))?;
        Ok(s.as_ref().and_then(services::selected_version) == Some(version.as_str()))
    }

    /// One read-decide-write round of the route for a workload `shape` (Prepared or Final).
    async fn try_shape(&self, route: &Obj, shape: RouteShape) -> Result<(), Attempt> {
        let o = route.get().await?;
        self.kube.check_opt_in(&o.metadata, &route.describe())?;
        let spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
        let ops = match shape {
            RouteShape::Prepared => self.backends().prepare_ops(&spec),
            _ => self.backends().final_ops(&spec),
        }
        .map_err(|e| RouterError::Permanent(format!("{} {e}", route.describe())))?;
        if ops.is_empty() {
            return Ok(());
        }
        route.patch_guarded(&k8s::resource_version(&o)?, ops).await
    }

    async fn route(&self) -> Result<Obj, RouterError> {
        Ok(Obj::new(self.kube.client_in(&self.namespace).await?, &self.kind.resource(), &self.namespace, &self.route))
    }

    fn locate(&self, route: &Obj, o: &DynamicObject) -> Result<WeightedRule, RouterError> {
        let spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
        locate(&spec, &self.namespace, self.rule.as_deref(), &self.stable, &self.canary)
            .map_err(|e| RouterError::Permanent(format!("{} {e}", route.describe())))
    }

    /// One read-decide-write round.
    async fn try_set(&self, route: &Obj, canary: u8) -> Result<(), Attempt> {
        let o = route.get().await?;
        self.kube.check_opt_in(&o.metadata, &route.describe())?;
        let r = self.locate(route, &o)?;
        let mut ops = if r.holds(canary) { vec![] } else { weight_ops(&r, canary) };
        let path = format!("/spec/rules/{}/backendRefs/{}", r.rule_index, r.canary_index);
        let mut target = o.data.pointer(&path).cloned().unwrap_or(Value::Null);
        if let Some(t) = target.as_object_mut() {
            t.remove("weight");
        }
        let active = canary > 0 && canary < 100;
        let base = format!("/spec/rules/{}", r.rule_index);
        let rule = o.data.pointer(&base).cloned().unwrap_or(Value::Null);
        ops.extend(mirror_ops(&rule, &base, &target, None));
        ops.extend(canary_match::ops(&LAYOUT, &o, r.rule_index, &target, &self.canary_match, active));
        if ops.is_empty() {
            return Ok(());
        }
        route.patch_guarded(&k8s::resource_version(&o)?, ops).await
    }
}

impl GatewayApiRouter {
    async fn try_mirror(&self, route: &Obj, percent: u8) -> Result<(), Attempt> {
        let o = route.get().await?;
        self.kube.check_opt_in(&o.metadata, &route.describe())?;
        let r = self.locate(route, &o)?;
        let base = format!("/spec/rules/{}", r.rule_index);
        let rule = o.data.pointer(&base).cloned().unwrap_or(Value::Null);
        let target = backend_refs(&rule).get(r.canary_index).cloned().unwrap_or(Value::Null);
        let ops = mirror_ops(&rule, &base, &target, Some(percent));
        if ops.is_empty() {
            return Ok(());
        }
        route.patch_guarded(&k8s::resource_version(&o)?, ops).await
    }
}

impl Router for GatewayApiRouter {
    fn kind(&self) -> &'static str {
        "gateway-api"
    }

    /// The route exists, the rule is found with both backendRefs, and both Services exist (a
    /// backendRef to a missing Service makes the Gateway answer 500 for its share).
    fn validate(&self) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(k8s::bounded("gateway-api validate", async move {
            let route = self.route().await?;
            let o = route.get().await?;
            self.kube.check_opt_in(&o.metadata, &route.describe())?;
            let r = self.locate(&route, &o)?;
            let rules = o.data.pointer("/spec/rules").and_then(Value::as_array).map_or(0, Vec::len);
            let target = o.data.pointer(&format!("/spec/rules/{}/backendRefs/{}", r.rule_index, r.canary_index));
            let inserts =
                canary_match::ops(&LAYOUT, &o, r.rule_index, target.unwrap_or(&Value::Null), &self.canary_match, true)
                    .iter()
                    .any(|op| op["op"] == "add" && op["path"] == format!("/spec/rules/{}", r.rule_index));
            if inserts && rules >= MAX_RULES {
                return Err(RouterError::Permanent(format!(
                    "{} has {rules} rules, the most a route may have: no room for the canaryMatch rule \
                     (add a header rule pointing at {} yourself and vane re-points it, or drop canaryMatch)",
                    route.describe(),
                    self.canary
                )));
            }
            let client = self.kube.client_in(&self.namespace).await?;
            for name in [&self.stable, &self.canary] {
                let svc = Obj::new(client.clone(), &k8s::service(), &self.namespace, name);
                if svc.get_opt().await?.is_none() {
                    return Err(RouterError::Permanent(format!(
                        "{} sends traffic to {}, which does not exist; create it before rolling out",
                        route.describe(),
                        svc.describe()
                    )));
                }
            }
            Ok(())
        }))
    }

    fn set_weight(&self, canary: u8) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(k8s::bounded("gateway-api set weight", async move {
            let route = self.route().await?;
            if canary == 100 && self.promoted(&route.get().await?).await? {
                return Ok(());
            }
            k8s::retry_conflicts(&route.describe(), || self.try_set(&route, canary)).await
        }))
    }

    fn set_mirror(&self, percent: u8) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(k8s::bounded("gateway-api set mirror", async move {
            let route = self.route().await?;
            k8s::retry_conflicts(&route.describe(), || self.try_mirror(&route, percent)).await
        }))
    }

    fn observe(&self) -> BoxFut<'_, Result<Option<u8>, RouterError>> {
        Box::pin(k8s::bounded("gateway-api observe", async move {
            let route = self.route().await?;
            let o = route.get().await?;
            if self.promoted(&o).await? {
                return Ok(Some(100));
            }
            Ok(self.locate(&route, &o)?.canary())
        }))
    }

    /// Workload releases: the canary Service and its backendRef at 0 (Prepared); the stable Service
    /// on the new version and the rule on it alone at 100 (Final); the canary Service gone (Retired).
    /// Rollback needs nothing here: the weights and the canaryMatch rule go back with `set_weight(0)`.
    fn shape(&self, shape: RouteShape) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(k8s::bounded("gateway-api shape", async move {
            let Some((stable_version, version)) = &self.versions else {
                return Err(RouterError::Permanent("gateway-api: no versions to shape routing for".into()));
            };
            let route = self.route().await?;
            let api = self.services(self.kube.client_in(&self.namespace).await?);
            let (ns, s, c) = (&self.namespace, &self.stable, &self.canary);
            match shape {
                RouteShape::Prepared => {
                    services::ensure_canary_service(&self.kube, &api, ns, s, c, stable_version, version).await?;
                    k8s::retry_conflicts(&route.describe(), || self.try_shape(&route, shape)).await
                }
                RouteShape::Restored => Ok(()),
                RouteShape::Final => {
                    // The stable Service takes the new version's pods (the promoted Deployment's)
                    // while the rule still sends everything to the canary; then the rule drops it.
                    services::select_checked(&self.kube, &api, ns, s, version).await?;
                    k8s::retry_conflicts(&route.describe(), || self.try_shape(&route, shape)).await
                }
                RouteShape::Retired => services::delete_canary_service(&api, ns, c).await,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTPRoute as the API server returns it (defaults filled in): a weighted `/api` rule with a
    /// header filter, and an `/admin` rule vane must never touch.
    fn route() -> Value {
        json!({
            "parentRefs": [{ "name": "edge" }],
            "rules": [
                { "name": "admin", "matches": [{ "path": { "type": "PathPrefix", "value": "/admin" } }],
                  "backendRefs": [{ "group": "", "kind": "Service", "name": "admin", "port": 8080, "weight": 1 }] },
                { "matches": [{ "path": { "type": "PathPrefix", "value": "/api" } }],
                  "filters": [{ "type": "RequestHeaderModifier", "requestHeaderModifier": { "add": [{ "name": "x", "value": "y" }] } }],
                  "backendRefs": [
                    { "group": "", "kind": "Service", "name": "agent-blue", "port": 8080, "weight": 95 },
                    { "group": "", "kind": "Service", "name": "agent-green", "port": 8080, "weight": 5 } ] }
            ]
        })
    }

    #[test]
    fn finds_the_rule_with_exactly_the_two_services() {
        let r = locate(&route(), "prod", None, "agent-blue", "agent-green").unwrap();
        assert_eq!((r.rule_index, r.stable_index, r.canary_index, r.canary()), (1, 0, 1, Some(5)));
        let swapped = locate(&route(), "prod", None, "agent-green", "agent-blue").unwrap();
        assert_eq!((swapped.stable_index, swapped.canary_index, swapped.canary()), (1, 0, Some(95)));
    }

    #[test]
    fn a_named_rule_must_hold_both_services() {
        let mut spec = route();
        spec["rules"][1]["name"] = json!("api");
        assert_eq!(locate(&spec, "prod", Some("api"), "agent-blue", "agent-green").unwrap().rule_index, 1);
        let e = locate(&spec, "prod", Some("admin"), "agent-blue", "agent-green").unwrap_err();
        assert!(e.contains("rule \"admin\" must have exactly two backendRefs"), "{e}");
        let e = locate(&spec, "prod", Some("web"), "agent-blue", "agent-green").unwrap_err();
        assert!(e.contains("no rule named \"web\"") && e.contains("admin, api"), "{e}");
    }

    #[test]
    fn other_kinds_namespaces_and_a_third_backend_do_not_match() {
        let mut spec = route();
        spec["rules"][1]["backendRefs"][1]["namespace"] = json!("other");
        assert!(locate(&spec, "prod", None, "agent-blue", "agent-green").is_err());
        let mut spec = route();
        spec["rules"][1]["backendRefs"][1]["kind"] = json!("ServiceImport");
        spec["rules"][1]["backendRefs"][1]["group"] = json!("multicluster.x-k8s.io");
        assert!(locate(&spec, "prod", None, "agent-blue", "agent-green").is_err());
        let mut spec = route();
        spec["rules"][1]["backendRefs"].as_array_mut().unwrap().push(json!({ "name": "third", "port": 80 }));
        let e = locate(&spec, "prod", None, "agent-blue", "agent-green").unwrap_err();
        assert!(e.contains("add the canary Service"), "{e}");
        assert!(locate(&json!({}), "prod", None, "a", "b").is_err());
    }

    #[test]
    fn weights_are_proportions() {
        let mut spec = route();
        let r = |spec: &Value| locate(spec, "prod", None, "agent-blue", "agent-green").unwrap();
        spec["rules"][1]["backendRefs"][0]["weight"] = json!(3);
        spec["rules"][1]["backendRefs"][1]["weight"] = json!(1);
        assert_eq!(r(&spec).canary(), Some(25));
        // Absent weights are 1 each: an even split.
        spec["rules"][1]["backendRefs"][0].as_object_mut().unwrap().remove("weight");
        spec["rules"][1]["backendRefs"][1].as_object_mut().unwrap().remove("weight");
        assert_eq!(r(&spec).canary(), Some(50));
        assert!(!r(&spec).holds(50), "1/1 is 50 % but not what vane writes");
        spec["rules"][1]["backendRefs"][0]["weight"] = json!(0);
        spec["rules"][1]["backendRefs"][1]["weight"] = json!(0);
        assert_eq!(r(&spec).canary(), None);
        spec["rules"][1]["backendRefs"][0]["weight"] = json!(100);
        assert_eq!(r(&spec).canary(), Some(0));
        assert!(r(&spec).holds(0));
    }

    #[test]
    fn weight_ops_touch_only_the_two_weights() {
        let r = locate(&route(), "prod", None, "agent-blue", "agent-green").unwrap();
        assert_eq!(
            weight_ops(&r, 25),
            vec![
                json!({ "op": "add", "path": "/spec/rules/1/backendRefs/0/weight", "value": 75 }),
                json!({ "op": "add", "path": "/spec/rules/1/backendRefs/1/weight", "value": 25 }),
            ]
        );
    }
}
