//! `istio` router: the two weights of one HTTP route of a VirtualService (SPEC §4).
//!
//! The route is the one named `route`, else the first whose destinations are exactly the stable and
//! canary subsets; every other route (e.g. the deployment standard's `canary: "true"` header route
//! above the weighted one) and every other field is left untouched: the write is a JSON patch of the
//! two `weight` members only, guarded by the resourceVersion that was read.

use std::sync::Arc;

use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::canary_match::{self, Layout};
use super::istio_shape::{destination_rule_ops, is_final, virtual_service_ops};
use super::k8s::{self, Attempt, KubeAccess, Obj};
use super::{Router, RouterError};
use crate::BoxFut;
use crate::policy::CanaryMatch;
use crate::rollout::ports::RouteShape;

pub struct IstioRouter {
    kube: Arc<KubeAccess>,
    namespace: String,
    virtual_service: String,
    route: Option<String>,
    stable_subset: String,
    canary_subset: String,
    /// The new version (the `version` label of a canary subset vane adds).
    version: String,
    canary_match: Vec<CanaryMatch>,
}

/// How a VirtualService spells routes and header matches (`headers: {name: {exact: value}}`).
pub const LAYOUT: Layout = Layout {
    list: "/spec/http",
    matches: "match",
    targets: "route",
    headers_of: exact_headers,
    with_headers: add_exact_headers,
    strip: strip_mirror,
};

/// The mirror vane sets: the canary destination (host and subset).
fn mirror_of(canary_target: &Value) -> Value {
    let d = canary_target.get("destination").unwrap_or(canary_target);
    json!({ "host": d.get("host").cloned().unwrap_or(Value::Null), "subset": d.get("subset").cloned().unwrap_or(Value::Null) })
}

fn is_vane_mirror(route: &Value, canary_target: &Value) -> bool {
    route.get("mirror").is_some_and(|m| {
        let want = mirror_of(canary_target);
        m.get("host") == want.get("host") && m.get("subset") == want.get("subset")
    })
}

fn strip_mirror(route: &mut Value, canary_target: &Value) {
    if is_vane_mirror(route, canary_target)
        && let Some(o) = route.as_object_mut()
    {
        o.remove("mirror");
        o.remove("mirrorPercentage");
    }
}

/// Ops turning vane's mirror of the canary on the route at `base` on (`Some(percent)`) or off.
/// A mirror to anything else is the user's: it is left alone, and vane will not replace it.
pub fn mirror_ops(route: &Value, base: &str, canary_target: &Value, percent: Option<u8>) -> Result<Vec<Value>, String> {
    let ours = is_vane_mirror(route, canary_target);
    let Some(p) = percent else {
        let mut ops = vec![];
        if ours {
            ops.push(json!({ "op": "remove", "path": format!("{base}/mirror") }));
            if route.get("mirrorPercentage").is_some() {
                ops.push(json!({ "op": "remove", "path": format!("{base}/mirrorPercentage") }));
            }
        }
        return Ok(ops);
    };
    if let Some(m) = route.get("mirror").filter(|_| !ours) {
        return Err(format!("already mirrors to {m}; vane does not replace a mirror it did not set"));
    }
    let mut ops = vec![];
    if !ours {
        ops.push(json!({ "op": "add", "path": format!("{base}/mirror"), "value": mirror_of(canary_target) }));
    }
    if route.pointer("/mirrorPercentage/value").and_then(Value::as_f64) != Some(p as f64) {
        ops.push(json!({ "op": "add", "path": format!("{base}/mirrorPercentage"), "value": { "value": p } }));
    }
    Ok(ops)
}

fn exact_headers(block: &Value) -> Option<std::collections::BTreeMap<String, String>> {
    let h = block.get("headers")?.as_object()?;
    h.iter().map(|(k, v)| Some((k.clone(), v.get("exact")?.as_str()?.to_string()))).collect()
}

fn add_exact_headers(block: &Value, headers: &std::collections::BTreeMap<String, String>) -> Value {
    let mut b = block.clone();
    if !b.get("headers").is_some_and(Value::is_object) {
        b["headers"] = json!({});
    }
    for (k, v) in headers {
        b["headers"][k] = json!({ "exact": v });
    }
    b
}

/// Where the two weights live in `spec.http`.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedRoute {
    pub http_index: usize,
    pub stable_index: usize,
    pub canary_index: usize,
    pub stable_weight: Option<i64>,
    pub canary_weight: Option<i64>,
    /// `destination.host` of the stable and canary destinations.
    pub stable_host: String,
    pub canary_host: String,
}

impl WeightedRoute {
    /// The live canary weight, when the object says it unambiguously.
    pub fn canary(&self) -> Option<u8> {
        let w = match (self.canary_weight, self.stable_weight) {
            (Some(c), _) => c,
            (None, Some(s)) => 100 - s,
            (None, None) => return None,
        };
        u8::try_from(w).ok().filter(|w| *w <= 100)
    }
}

fn subset_of(dest: &Value) -> Option<&str> {
    dest.pointer("/destination/subset").and_then(Value::as_str)
}

/// Find the weighted route in a VirtualService spec.
pub fn locate(spec: &Value, route: Option<&str>, stable: &str, canary: &str) -> Result<WeightedRoute, String> {
    let http = spec.get("http").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let names: Vec<&str> = http.iter().filter_map(|r| r.get("name").and_then(Value::as_str)).collect();
    let index = match route {
        Some(name) => {
            http.iter().position(|r| r.get("name").and_then(Value::as_str) == Some(name)).ok_or_else(|| {
                format!(
                    "has no http route named {name:?} (named routes: {})",
                    if names.is_empty() { "none".into() } else { names.join(", ") }
                )
            })?
        }
        None => http
            .iter()
            .position(|r| {
                let dests = r.get("route").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                let mut subsets: Vec<_> = dests.iter().map(subset_of).collect();
                subsets.sort();
                let mut want = vec![Some(stable), Some(canary)];
                want.sort();
                subsets == want
            })
            .ok_or_else(|| {
                format!(
                    "has no http route whose two destinations are subsets {stable:?} and {canary:?}; \
                     add one or name the route with router.route"
                )
            })?,
    };
    let dests = http[index].get("route").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let find = |subset: &str| dests.iter().position(|d| subset_of(d) == Some(subset));
    let label = http[index].get("name").and_then(Value::as_str).map_or(format!("#{index}"), |n| format!("{n:?}"));
    let (Some(s), Some(c), 2) = (find(stable), find(canary), dests.len()) else {
        return Err(format!("route {label} must have exactly two destinations: subsets {stable:?} and {canary:?}"));
    };
    let weight = |i: usize| dests[i].get("weight").and_then(Value::as_i64);
    let host = |i: usize| dests[i].pointer("/destination/host").and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(WeightedRoute {
        http_index: index,
        stable_index: s,
        canary_index: c,
        stable_weight: weight(s),
        canary_weight: weight(c),
        stable_host: host(s),
        canary_host: host(c),
    })
}

/// The JSON-patch ops that set the weights (`add` sets a member whether or not it exists).
pub fn weight_ops(r: &WeightedRoute, canary: u8) -> Vec<Value> {
    let base = format!("/spec/http/{}/route", r.http_index);
    vec![
        json!({ "op": "add", "path": format!("{base}/{}/weight", r.stable_index), "value": 100 - canary as i64 }),
        json!({ "op": "add", "path": format!("{base}/{}/weight", r.canary_index), "value": canary as i64 }),
    ]
}

/// Istio's reading of a host name: short names are relative to the object's namespace.
pub fn fqdn(host: &str, namespace: &str) -> String {
    let h = host.trim_end_matches('.');
    match h.matches('.').count() {
        0 => format!("{h}.{namespace}.svc.cluster.local"),
        1 => format!("{h}.svc.cluster.local"),
        _ if h.ends_with(".svc") => format!("{h}.cluster.local"),
        _ => h.to_string(),
    }
}

/// Check that `subset` of `host` is defined by a DestinationRule among `rules` (all in `namespace`).
pub fn check_subset(rules: &[DynamicObject], namespace: &str, host: &str, subset: &str) -> Result<(), String> {
    let want = fqdn(host, namespace);
    let matching: Vec<&DynamicObject> = rules
        .iter()
        .filter(|dr| dr.data.pointer("/spec/host").and_then(Value::as_str).is_some_and(|h| fqdn(h, namespace) == want))
        .collect();
    if matching.is_empty() {
        return Err(format!(
            "no DestinationRule in namespace {namespace} for host {host:?}: subset {subset:?} is not defined, \
             so Istio would fail requests routed to it"
        ));
    }
    let mut defined = vec![];
    for dr in &matching {
        let subsets = dr.data.pointer("/spec/subsets").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        defined.extend(subsets.iter().filter_map(|s| s.get("name").and_then(Value::as_str)));
    }
    if defined.contains(&subset) {
        return Ok(());
    }
    let names: Vec<String> = matching.iter().map(|d| d.metadata.name.clone().unwrap_or_default()).collect();
    Err(format!(
        "DestinationRule {} (host {host:?}) has no subset {subset:?} (defined: {}); add it before rolling out",
        names.join(", "),
        if defined.is_empty() { "none".into() } else { defined.join(", ") }
    ))
}

impl IstioRouter {
    pub fn new(
        kube: Arc<KubeAccess>,
        namespace: &str,
        virtual_service: &str,
        route: Option<&str>,
        stable_subset: &str,
        canary_subset: &str,
        canary_match: &[CanaryMatch],
    ) -> Self {
        IstioRouter {
            kube,
            namespace: namespace.into(),
            virtual_service: virtual_service.into(),
            route: route.map(Into::into),
            stable_subset: stable_subset.into(),
            canary_subset: canary_subset.into(),
            version: String::new(),
            canary_match: canary_match.to_vec(),
        }
    }

    /// The version a workload release deploys (needed to shape routing).
    pub fn with_version(mut self, version: &str) -> Self {
        self.version = version.into();
        self
    }

    /// Promoted by a workload release: only the canary subset is routed (100 %).
    fn promoted(&self, o: &DynamicObject) -> bool {
        if self.version.is_empty() {
            return false;
        }
        let spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
        is_final(&spec, self.route.as_deref(), &self.stable_subset, &self.canary_subset)
    }

    /// One read-decide-write round of the VirtualService for `shape`.
    async fn try_shape_vs(&self, vs: &Obj, shape: RouteShape) -> Result<(), Attempt> {
        let o = vs.get().await?;
        let spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
        let ops = virtual_service_ops(
            &spec,
            &self.namespace,
            self.route.as_deref(),
            &self.stable_subset,
            &self.canary_subset,
            shape,
        )
        .map_err(|e| RouterError::Permanent(format!("{} {e}", vs.describe())))?;
        if ops.is_empty() {
            return Ok(());
        }
        vs.patch_guarded(&k8s::resource_version(&o)?, ops).await
    }

    /// The DestinationRule that defines the stable (or, once promoted, the canary) subset.
    async fn destination_rule(&self, host: &str) -> Result<Obj, RouterError> {
        let client = self.kube.client().await?;
        let drs: kube::Api<DynamicObject> =
            kube::Api::namespaced_with(client.clone(), &self.namespace, &k8s::destination_rule());
        let rules = drs
            .list(&Default::default())
            .await
            .map_err(|e| k8s::classify(&format!("DestinationRules in {}", self.namespace), e))?;
        let want = fqdn(host, &self.namespace);
        let has = |dr: &DynamicObject, s: &str| {
            let subsets = dr.data.pointer("/spec/subsets").and_then(Value::as_array).cloned().unwrap_or_default();
            subsets.iter().any(|x| x.get("name").and_then(Value::as_str) == Some(s))
        };
        let found = rules
            .items
            .iter()
            .filter(|dr| {
                dr.data.pointer("/spec/host").and_then(Value::as_str).is_some_and(|h| fqdn(h, &self.namespace) == want)
            })
            .find(|dr| has(dr, &self.stable_subset) || has(dr, &self.canary_subset))
            .and_then(|dr| dr.metadata.name.clone())
            .ok_or_else(|| {
                RouterError::Permanent(format!(
                    "no DestinationRule in namespace {} for host {host:?} defines subset {:?}",
                    self.namespace, self.stable_subset
                ))
            })?;
        Ok(Obj::new(client, &k8s::destination_rule(), &self.namespace, &found))
    }

    async fn try_shape_dr(&self, dr: &Obj, shape: RouteShape) -> Result<(), Attempt> {
        let o = dr.get().await?;
        let spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
        let ops = destination_rule_ops(&spec, &self.stable_subset, &self.canary_subset, &self.version, shape)
            .map_err(|e| RouterError::Permanent(format!("{} {e}", dr.describe())))?;
        if ops.is_empty() {
            return Ok(());
        }
        dr.patch_guarded(&k8s::resource_version(&o)?, ops).await
    }

    /// The host of the service the VirtualService routes (the stable or canary destination's).
    async fn service_host(&self, vs: &Obj) -> Result<String, RouterError> {
        let o = vs.get().await?;
        let http = o.data.pointer("/spec/http").and_then(Value::as_array).cloned().unwrap_or_default();
        http.iter()
            .flat_map(|r| r.get("route").and_then(Value::as_array).cloned().unwrap_or_default())
            .find(|d| {
                let s = d.pointer("/destination/subset").and_then(Value::as_str);
                s == Some(&self.stable_subset) || s == Some(&self.canary_subset)
            })
            .and_then(|d| d.pointer("/destination/host").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| {
                RouterError::Permanent(format!(
                    "{} routes to neither subset {:?} nor {:?}",
                    vs.describe(),
                    self.stable_subset,
                    self.canary_subset
                ))
            })
    }

    async fn vs(&self) -> Result<Obj, RouterError> {
        Ok(Obj::new(
            self.kube.client_in(&self.namespace).await?,
            &k8s::virtual_service(),
            &self.namespace,
            &self.virtual_service,
        ))
    }

    fn locate(&self, vs: &Obj, o: &DynamicObject) -> Result<WeightedRoute, RouterError> {
        let spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
        locate(&spec, self.route.as_deref(), &self.stable_subset, &self.canary_subset)
            .map_err(|e| RouterError::Permanent(format!("{} {e}", vs.describe())))
    }

    /// One read-decide-write round.
    async fn try_set(&self, vs: &Obj, canary: u8) -> Result<(), Attempt> {
        let o = vs.get().await?;
        self.kube.check_opt_in(&o.metadata, &vs.describe())?;
        if canary == 100 && self.promoted(&o) {
            return Ok(());
        }
        let r = self.locate(vs, &o)?;
        let mut ops = vec![];
        if r.canary_weight != Some(canary as i64) || r.stable_weight != Some(100 - canary as i64) {
            ops = weight_ops(&r, canary);
        }
        let mut target = o.data.pointer(&format!("/spec/http/{}/route/{}", r.http_index, r.canary_index)).cloned();
        if let Some(t) = target.as_mut().and_then(Value::as_object_mut) {
            t.remove("weight");
        }
        let active = canary > 0 && canary < 100;
        let target = target.unwrap_or(Value::Null);
        let base = format!("/spec/http/{}", r.http_index);
        let route = o.data.pointer(&base).cloned().unwrap_or(Value::Null);
        ops.extend(mirror_ops(&route, &base, &target, None).map_err(RouterError::Permanent)?);
        ops.extend(canary_match::ops(&LAYOUT, &o, r.http_index, &target, &self.canary_match, active));
        if ops.is_empty() {
            return Ok(());
        }
        vs.patch_guarded(&k8s::resource_version(&o)?, ops).await
    }
}

impl IstioRouter {
    async fn try_mirror(&self, vs: &Obj, percent: u8) -> Result<(), Attempt> {
        let o = vs.get().await?;
        self.kube.check_opt_in(&o.metadata, &vs.describe())?;
        let r = self.locate(vs, &o)?;
        let base = format!("/spec/http/{}", r.http_index);
        let route = o.data.pointer(&base).cloned().unwrap_or(Value::Null);
        let target = json!({ "destination": { "host": r.canary_host, "subset": self.canary_subset } });
        let ops = mirror_ops(&route, &base, &target, Some(percent))
            .map_err(|e| RouterError::Permanent(format!("{} route {}: {e}", vs.describe(), r.http_index)))?;
        if ops.is_empty() {
            return Ok(());
        }
        vs.patch_guarded(&k8s::resource_version(&o)?, ops).await
    }
}

impl Router for IstioRouter {
    fn kind(&self) -> &'static str {
        "istio"
    }

    fn validate(&self) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(k8s::bounded("istio validate", async move {
            let vs = self.vs().await?;
            let o = vs.get().await?;
            self.kube.check_opt_in(&o.metadata, &vs.describe())?;
            let r = self.locate(&vs, &o)?;
            let client = self.kube.client_in(&self.namespace).await?;
            let drs: kube::Api<DynamicObject> =
                kube::Api::namespaced_with(client, &self.namespace, &k8s::destination_rule());
            let rules = drs
                .list(&Default::default())
                .await
                .map_err(|e| k8s::classify(&format!("DestinationRules in {}", self.namespace), e))?;
            for (host, subset) in [(&r.stable_host, &self.stable_subset), (&r.canary_host, &self.canary_subset)] {
                check_subset(&rules.items, &self.namespace, host, subset).map_err(RouterError::Permanent)?;
            }
            Ok(())
        }))
    }

    fn set_weight(&self, canary: u8) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(k8s::bounded("istio set weight", async move {
            let vs = self.vs().await?;
            k8s::retry_conflicts(&vs.describe(), || self.try_set(&vs, canary)).await
        }))
    }

    fn set_mirror(&self, percent: u8) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(k8s::bounded("istio set mirror", async move {
            let vs = self.vs().await?;
            k8s::retry_conflicts(&vs.describe(), || self.try_mirror(&vs, percent)).await
        }))
    }

    fn observe(&self) -> BoxFut<'_, Result<Option<u8>, RouterError>> {
        Box::pin(k8s::bounded("istio observe", async move {
            let vs = self.vs().await?;
            let o = vs.get().await?;
            if self.promoted(&o) {
                return Ok(Some(100));
            }
            Ok(self.locate(&vs, &o)?.canary())
        }))
    }

    fn shape(&self, shape: RouteShape) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(k8s::bounded("istio shape", async move {
            if shape == RouteShape::Retired {
                return Ok(()); // the old subset went at Final; nothing of the canary's is left here
            }
            let vs = self.vs().await?;
            let host = self.service_host(&vs).await?;
            let dr = self.destination_rule(&host).await?;
            // Define a subset before a route names it; stop naming one before it goes.
            if shape == RouteShape::Prepared {
                k8s::retry_conflicts(&dr.describe(), || self.try_shape_dr(&dr, shape)).await?;
            }
            k8s::retry_conflicts(&vs.describe(), || self.try_shape_vs(&vs, shape)).await?;
            if shape == RouteShape::Final {
                k8s::retry_conflicts(&dr.describe(), || self.try_shape_dr(&dr, shape)).await?;
            }
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deployment standard's VirtualService: header route first, weighted route second.
    fn standard() -> Value {
        json!({
            "hosts": ["agent-service"],
            "http": [
                { "match": [{ "headers": { "canary": { "exact": "true" } } }],
                  "route": [{ "destination": { "host": "agent-service", "subset": "v1-1-0" } }] },
                { "route": [
                    { "destination": { "host": "agent-service", "subset": "v1-0-0" }, "weight": 95 },
                    { "destination": { "host": "agent-service", "subset": "v1-1-0" }, "weight": 5 } ] }
            ]
        })
    }

    #[test]
    fn finds_the_weighted_route_not_the_header_route() {
        let r = locate(&standard(), None, "v1-0-0", "v1-1-0").unwrap();
        assert_eq!((r.http_index, r.stable_index, r.canary_index), (1, 0, 1));
        assert_eq!(r.canary(), Some(5));
        assert_eq!(r.stable_host, "agent-service");
    }

    #[test]
    fn finds_a_named_route_and_reports_unknown_names() {
        let mut spec = standard();
        spec["http"][1]["name"] = json!("primary");
        assert_eq!(locate(&spec, Some("primary"), "v1-0-0", "v1-1-0").unwrap().http_index, 1);
        let e = locate(&spec, Some("main"), "v1-0-0", "v1-1-0").unwrap_err();
        assert!(e.contains("\"main\"") && e.contains("primary"), "{e}");
    }

    #[test]
    fn a_named_route_without_both_subsets_is_refused() {
        let mut spec = standard();
        spec["http"][0]["name"] = json!("canary-header");
        let e = locate(&spec, Some("canary-header"), "v1-0-0", "v1-1-0").unwrap_err();
        assert!(e.contains("\"v1-0-0\""), "{e}");
    }

    #[test]
    fn no_matching_route_is_an_error_naming_the_subsets() {
        let e = locate(&standard(), None, "v1-0-0", "v2-0-0").unwrap_err();
        assert!(e.contains("v2-0-0"), "{e}");
        assert!(locate(&json!({}), None, "a", "b").is_err());
    }

    #[test]
    fn weight_ops_touch_only_the_two_weights() {
        let r = locate(&standard(), None, "v1-0-0", "v1-1-0").unwrap();
        assert_eq!(
            weight_ops(&r, 25),
            vec![
                json!({ "op": "add", "path": "/spec/http/1/route/0/weight", "value": 75 }),
                json!({ "op": "add", "path": "/spec/http/1/route/1/weight", "value": 25 }),
            ]
        );
    }

    #[test]
    fn missing_weights_read_as_unknown_or_derived() {
        let mut spec = standard();
        spec["http"][1]["route"][1].as_object_mut().unwrap().remove("weight");
        assert_eq!(locate(&spec, None, "v1-0-0", "v1-1-0").unwrap().canary(), Some(5));
        spec["http"][1]["route"][0].as_object_mut().unwrap().remove("weight");
        assert_eq!(locate(&spec, None, "v1-0-0", "v1-1-0").unwrap().canary(), None);
    }

    #[test]
    fn hosts_compare_as_istio_reads_them() {
        assert_eq!(fqdn("agent-service", "prod"), "agent-service.prod.svc.cluster.local");
        assert_eq!(fqdn("agent-service.prod", "x"), "agent-service.prod.svc.cluster.local");
        assert_eq!(fqdn("agent-service.prod.svc", "x"), "agent-service.prod.svc.cluster.local");
        assert_eq!(fqdn("agent-service.prod.svc.cluster.local", "x"), "agent-service.prod.svc.cluster.local");
    }

    fn dr(name: &str, host: &str, subsets: &[&str]) -> DynamicObject {
        let subsets: Vec<Value> = subsets.iter().map(|s| json!({ "name": s, "labels": { "version": s } })).collect();
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": { "name": name }, "spec": { "host": host, "subsets": subsets }
        }))
        .unwrap()
    }

    #[test]
    fn subsets_are_checked_in_the_rule_of_the_same_host() {
        let rules = [
            dr("agent-service", "agent-service.prod.svc.cluster.local", &["v1-0-0"]),
            dr("other", "other", &["v1-1-0"]),
        ];
        assert!(check_subset(&rules, "prod", "agent-service", "v1-0-0").is_ok());
        let e = check_subset(&rules, "prod", "agent-service", "v1-1-0").unwrap_err();
        assert!(e.contains("has no subset \"v1-1-0\"") && e.contains("v1-0-0"), "{e}");
        let e = check_subset(&rules, "prod", "payments", "v1").unwrap_err();
        assert!(e.contains("no DestinationRule"), "{e}");
    }
}
