//! The create request (SPEC §4) and its validation into field errors (HTTP 422).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::policy::{FieldError, Overrides, Policy, Strategy, is_dns_label};

/// The longest string any field of a create body may hold.
pub const MAX_FIELD_LEN: usize = 256;

/// Router fields that name a command or a file: the daemon's configuration owns them (SPEC §4).
const DAEMON_ONLY_ROUTER_FIELDS: &[&str] = &["command", "configFile", "test", "reload", "variable", "env"];

/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`: safe in a URL path, a label, a file name.
pub fn is_version(v: &str) -> bool {
    let mut chars = v.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `^[A-Za-z0-9_.:-]{1,128}$`: one NGINX token, nothing that could end a directive or a block.
pub fn is_upstream(v: &str) -> bool {
    (1..=128).contains(&v.len()) && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// A stored rollout's router. Rollouts stored before router profiles named their command or file;
/// they load with an empty profile — their router then fails with a message saying so, and a human
/// finishes them — instead of making the whole store unreadable (the daemon could not start).
pub fn stored_router<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RouterSpec, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    RouterSpec::deserialize(&v).or_else(|e| {
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        match v["kind"].as_str() {
            Some("exec") => Ok(RouterSpec::Exec { profile: String::new() }),
            Some("nginx") => Ok(RouterSpec::Nginx {
                profile: String::new(),
                stable_upstream: text("stableUpstream"),
                canary_upstream: text("canaryUpstream"),
            }),
            _ => Err(serde::de::Error::custom(e)),
        }
    })
}

/// Checks of the raw create body that its typed form cannot express: a router naming a command or a
/// file (422 naming it, e.g. `router.command`), and any string longer than [`MAX_FIELD_LEN`].
pub fn check_raw_body(body: &serde_json::Value) -> Result<(), FieldError> {
    if let Some(router) = body.get("router").and_then(|r| r.as_object()) {
        let kind = router.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        for f in DAEMON_ONLY_ROUTER_FIELDS {
            if router.contains_key(*f) {
                return Err(FieldError::new(
                    format!("router.{f}"),
                    format!(
                        "commands and files belong to the daemon's configuration: name a profile \
                         ([routers.{kind}.NAME]) with router.profile"
                    ),
                ));
            }
        }
    }
    long_string(body, &mut String::new())
}

fn long_string(v: &serde_json::Value, path: &mut String) -> Result<(), FieldError> {
    use serde_json::Value;
    match v {
        Value::String(s) if s.chars().count() > MAX_FIELD_LEN => {
            Err(FieldError::new(path.clone(), format!("at most {MAX_FIELD_LEN} characters")))
        }
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let r = long_string(item, path);
            path.truncate(len);
            r
        }),
        Value::Object(map) => map.iter().try_for_each(|(k, item)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            let shown: String = k.chars().take(64).collect();
            path.push_str(&shown);
            if k.chars().count() > MAX_FIELD_LEN {
                return Err(FieldError::new(path.clone(), "field name too long"));
            }
            let r = long_string(item, path);
            path.truncate(len);
            r
        }),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRequest {
    pub service: String,
    pub namespace: String,
    pub version: String,
    pub stable_version: String,
    pub policy: String,
    pub router: RouterSpec,
    #[serde(default)]
    pub overrides: Overrides,
    /// vane runs the whole release on Kubernetes: the canary Deployment, its size, promotion, retirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSpec>,
}

/// SPEC §4 "workload": the stable Deployment and the image to release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    /// The stable Deployment (its pod template carries `version: <stableVersion>`).
    pub deployment: String,
    /// The new image, e.g. `registry/agent-service:v1.1.0`.
    pub image: String,
    /// The container whose image changes; default: the one named like the Deployment, else the only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default)]
    pub canary_scale: CanaryScale,
    /// How long the canary may take to roll out at each size.
    #[serde(with = "humantime_serde", default = "default_ready_timeout")]
    #[schema(value_type = String, example = "5m")]
    pub ready_timeout: Duration,
    #[serde(default)]
    pub retire: Retire,
    /// How long the canary keeps running after promotion before it is retired.
    #[serde(with = "humantime_serde", default)]
    #[schema(value_type = String, example = "5m")]
    pub retire_after: Duration,
}

fn default_ready_timeout() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CanaryScale {
    /// ceil(stable replicas × weight / 100), at least 1, rolled out before each shift.
    #[default]
    Proportional,
    /// The stable's replica count from the start.
    Full,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Retire {
    #[default]
    ScaleToZero,
    Delete,
    Keep,
}

/// Longest image reference accepted (registry host + path + tag + digest fit well within it).
pub const MAX_IMAGE_LEN: usize = 512;
/// Longest `readyTimeout` and `retireAfter`.
pub const MAX_WORKLOAD_WAIT: Duration = Duration::from_secs(24 * 3600);

impl WorkloadSpec {
    /// The canary Deployment's name.
    pub fn canary_name(&self) -> String {
        format!("{}-canary", self.deployment)
    }

    pub fn validate(&self, router: &RouterSpec) -> Result<(), FieldError> {
        // `<deployment>-canary` must itself be a DNS label.
        if !is_dns_label(&self.deployment) || self.deployment.len() > 63 - "-canary".len() {
            return Err(FieldError::new(
                "workload.deployment",
                "must be a lowercase DNS label (a-z, 0-9, '-') of at most 56 characters",
            ));
        }
        let img = &self.image;
        if img.is_empty()
            || img.len() > MAX_IMAGE_LEN
            || img.chars().any(|c| c.is_whitespace() || c.is_control())
            || img.starts_with(['-', '/', ':', '@'])
        {
            return Err(FieldError::new(
                "workload.image",
                format!("must be an image reference without spaces, at most {MAX_IMAGE_LEN} characters"),
            ));
        }
        if let Some(c) = &self.container
            && !is_dns_label(c)
        {
            return Err(FieldError::new("workload.container", "must be a container name (a lowercase DNS label)"));
        }
        if self.ready_timeout < Duration::from_secs(1) || self.ready_timeout > MAX_WORKLOAD_WAIT {
            return Err(FieldError::new("workload.readyTimeout", "must be between 1s and 24h"));
        }
        if self.retire_after > MAX_WORKLOAD_WAIT {
            return Err(FieldError::new("workload.retireAfter", "must be at most 24h"));
        }
        // The canary names vane writes itself: given (back compat) or derived (`rollout::naming`).
        let label = |v: &str, field: &str| {
            if is_dns_label(v) {
                Ok(())
            } else {
                Err(FieldError::new(
                    field,
                    format!(
                        "{v:?} (given, or derived from version when left out) is not a name vane can create: \
                         it must be a lowercase DNS label (a-z, 0-9, '-', at most 63)"
                    ),
                ))
            }
        };
        match router {
            RouterSpec::Istio { canary_subset, .. } => label(canary_subset, "router.canarySubset")?,
            RouterSpec::NginxIngress { canary_service: Some(c), .. } => label(c, "router.canaryService")?,
            RouterSpec::GatewayApi { canary_backend, .. } => label(canary_backend, "router.canaryBackend")?,
            RouterSpec::NginxIngress { .. } => {
                return Err(FieldError::new(
                    "router.canaryService",
                    "a workload release with nginx-ingress needs the canary Service's name (vane creates it)",
                ));
            }
            other => {
                return Err(FieldError::new(
                    "workload",
                    format!(
                        "workload releases need the istio, nginx-ingress or gateway-api router (not {})",
                        other.kind()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// How traffic is moved. See SPEC §4 "Router kinds".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RouterSpec {
    #[serde(rename_all = "camelCase")]
    Istio {
        virtual_service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        route: Option<String>,
        stable_subset: String,
        /// With `workload` it may be left out: derived from `version` (`rollout::naming`).
        #[serde(default)]
        canary_subset: String,
    },
    #[serde(rename_all = "camelCase")]
    NginxIngress {
        ingress: String,
        /// Canary: the canary Ingress carrying the canary annotations (created if missing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        canary_ingress: Option<String>,
        /// Canary: the backend service of the canary Ingress; blue/green: the service flipped to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        canary_service: Option<String>,
        /// Blue/green: the service flipped back to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stable_service: Option<String>,
    },
    /// Gateway API: the two backendRef weights of one rule of an HTTPRoute or a GRPCRoute.
    #[serde(rename_all = "camelCase")]
    GatewayApi {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_route: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grpc_route: Option<String>,
        /// The rule's `name`; without it, the first rule whose backendRefs are exactly the two Services.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        /// Service names (backendRefs of kind Service).
        stable_backend: String,
        /// With `workload` it may be left out: `<deployment>-canary`, created by vane.
        #[serde(default)]
        canary_backend: String,
    },
    /// Standalone NGINX through a `[routers.nginx.NAME]` profile of the daemon's configuration,
    /// which owns the file, the variable and the commands.
    #[serde(rename_all = "camelCase")]
    Nginx { profile: String, stable_upstream: String, canary_upstream: String },
    /// Any other load balancer through a `[routers.exec.NAME]` profile (the command is the profile's).
    Exec { profile: String },
}

impl RouterSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            RouterSpec::Istio { .. } => "istio",
            RouterSpec::NginxIngress { .. } => "nginx-ingress",
            RouterSpec::GatewayApi { .. } => "gateway-api",
            RouterSpec::Nginx { .. } => "nginx",
            RouterSpec::Exec { .. } => "exec",
        }
    }

    /// Does it drive Kubernetes objects (and so fall under `[kubernetes]`'s limits)?
    pub fn is_kubernetes(&self) -> bool {
        matches!(self, RouterSpec::Istio { .. } | RouterSpec::NginxIngress { .. } | RouterSpec::GatewayApi { .. })
    }

    /// The objects (and parts of them) this router writes, for the uniqueness rule "two active
    /// rollouts never drive the same target": (`namespace/Kind/name`, part), where part `*` is the
    /// whole object and conflicts with every part. An istio route left unnamed is whichever route
    /// has the two subsets, so it claims the whole VirtualService (name the route to share one); the
    /// same for a Gateway API rule.
    pub fn targets(&self, namespace: &str) -> Vec<(String, String)> {
        match self {
            RouterSpec::Istio { virtual_service, route, .. } => {
                vec![(format!("{namespace}/VirtualService/{virtual_service}"), route.clone().unwrap_or("*".into()))]
            }
            RouterSpec::NginxIngress { ingress, canary_ingress, .. } => std::iter::once(ingress)
                .chain(canary_ingress)
                .map(|i| (format!("{namespace}/Ingress/{i}"), "*".to_string()))
                .collect(),
            RouterSpec::GatewayApi { http_route, grpc_route, rule, .. } => {
                let (kind, name) = match (http_route, grpc_route) {
                    (Some(h), _) => ("HTTPRoute", h),
                    (None, Some(g)) => ("GRPCRoute", g),
                    (None, None) => return vec![],
                };
                vec![(format!("{namespace}/{kind}/{name}"), rule.clone().unwrap_or("*".into()))]
            }
            RouterSpec::Nginx { .. } | RouterSpec::Exec { .. } => vec![],
        }
    }

    /// Whether the router can read its live weight back, so hand edits can be detected (drift).
    pub fn supports_drift_check(&self) -> bool {
        match self {
            RouterSpec::Istio { .. } | RouterSpec::NginxIngress { .. } | RouterSpec::GatewayApi { .. } => true,
            RouterSpec::Nginx { .. } | RouterSpec::Exec { .. } => false,
        }
    }

    pub fn validate(&self, strategy: Strategy) -> Result<(), FieldError> {
        let need = |v: &str, f: &str| {
            if v.trim().is_empty() { Err(FieldError::new(format!("router.{f}"), "must not be empty")) } else { Ok(()) }
        };
        match self {
            RouterSpec::Istio { virtual_service, stable_subset, canary_subset, .. } => {
                need(virtual_service, "virtualService")?;
                need(stable_subset, "stableSubset")?;
                need(canary_subset, "canarySubset")?;
                if stable_subset == canary_subset {
                    return Err(FieldError::new("router.canarySubset", "must differ from stableSubset"));
                }
            }
            RouterSpec::NginxIngress { ingress, canary_ingress, canary_service, stable_service } => {
                need(ingress, "ingress")?;
                match strategy {
                    Strategy::Canary => {
                        let ci = canary_ingress.as_deref().unwrap_or_default();
                        need(ci, "canaryIngress")?;
                        if ci == ingress {
                            return Err(FieldError::new("router.canaryIngress", "must differ from ingress"));
                        }
                    }
                    Strategy::BlueGreen => {
                        need(stable_service.as_deref().unwrap_or_default(), "stableService")?;
                        need(canary_service.as_deref().unwrap_or_default(), "canaryService")?;
                    }
                }
            }
            RouterSpec::GatewayApi { http_route, grpc_route, rule, stable_backend, canary_backend } => {
                let route = match (http_route, grpc_route) {
                    (Some(r), None) => ("httpRoute", r),
                    (None, Some(r)) => ("grpcRoute", r),
                    _ => {
                        return Err(FieldError::new("router.httpRoute", "give exactly one of httpRoute and grpcRoute"));
                    }
                };
                if !is_dns_subdomain(route.1) {
                    return Err(FieldError::new(format!("router.{}", route.0), SUBDOMAIN));
                }
                if rule.as_deref().is_some_and(|r| !is_dns_subdomain(r)) {
                    return Err(FieldError::new("router.rule", SUBDOMAIN));
                }
                check_pair(
                    [(stable_backend, "stableBackend"), (canary_backend, "canaryBackend")],
                    is_dns_label,
                    "must be a Service name (a lowercase DNS label: a-z, 0-9, '-', at most 63)",
                )?;
            }
            RouterSpec::Nginx { profile, stable_upstream, canary_upstream } => {
                need(profile, "profile")?;
                check_pair(
                    [(stable_upstream, "stableUpstream"), (canary_upstream, "canaryUpstream")],
                    is_upstream,
                    "must be an NGINX upstream name (1-128 of A-Z a-z 0-9 _ . : -)",
                )?;
            }
            RouterSpec::Exec { profile } => need(profile, "profile")?,
        }
        Ok(())
    }
}

/// A stable/canary pair of names (`[(value, field); 2]`): both `valid`, and different.
fn check_pair(pair: [(&String, &str); 2], valid: fn(&str) -> bool, rule: &str) -> Result<(), FieldError> {
    for (v, f) in pair {
        if !valid(v) {
            return Err(FieldError::new(format!("router.{f}"), rule));
        }
    }
    let [(stable, stable_field), (canary, canary_field)] = pair;
    if stable == canary {
        return Err(FieldError::new(format!("router.{canary_field}"), format!("must differ from {stable_field}")));
    }
    Ok(())
}

const SUBDOMAIN: &str = "must be a Kubernetes name (lowercase a-z, 0-9, '-', '.', at most 253)";

/// A DNS-1123 subdomain: what Kubernetes accepts as an object name (and Gateway API as a rule name).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|part| part.len() <= 63 && is_dns_label(part))
}

impl CreateRequest {
    /// Check the request against the loaded policies and return the effective policy.
    /// The interval of the effective policy must not be below `min` (the server's `min_interval`).
    pub fn check_min_interval(&self, min: std::time::Duration) -> Result<(), FieldError> {
        match self.overrides.interval {
            Some(i) if i < min => Err(FieldError::new(
                "overrides.interval",
                format!("must be at least {} (server.min_interval)", humantime::format_duration(min)),
            )),
            _ => Ok(()),
        }
    }

    pub fn resolve(&self, policies: &[Policy]) -> Result<Policy, FieldError> {
        for (v, f) in [(&self.service, "service"), (&self.namespace, "namespace")] {
            if !is_dns_label(v) {
                return Err(FieldError::new(f, "must be a lowercase DNS label (a-z, 0-9, '-', at most 63)"));
            }
        }
        for (v, f) in [(&self.version, "version"), (&self.stable_version, "stableVersion")] {
            if !is_version(v) {
                return Err(FieldError::new(
                    f,
                    "must be a version label: a letter or digit, then up to 127 of A-Z a-z 0-9 . _ -",
                ));
            }
        }
        if self.version == self.stable_version {
            return Err(FieldError::new("version", "is the same as stableVersion"));
        }
        let base = policies.iter().find(|p| p.name == self.policy).ok_or_else(|| {
            let known: Vec<_> = policies.iter().map(|p| p.name.as_str()).collect();
            FieldError::new("policy", format!("unknown policy {:?}; loaded: {}", self.policy, known.join(", ")))
        })?;
        if self.overrides.steps.is_some() && base.strategy == Strategy::BlueGreen {
            return Err(FieldError::new("overrides.steps", "a blue-green policy has no steps"));
        }
        let effective = base.clone().with_overrides(&self.overrides);
        effective.validate().map_err(|e| FieldError::new(format!("overrides.{}", e.field), e.message))?;
        self.router.validate(effective.strategy)?;
        if effective.mirror.is_some()
            && !matches!(self.router, RouterSpec::Istio { .. } | RouterSpec::GatewayApi { .. })
        {
            return Err(FieldError::new(
                "policy",
                format!(
                    "policy {:?} mirrors traffic, which router {} cannot do (istio and gateway-api can)",
                    effective.name,
                    self.router.kind()
                ),
            ));
        }
        if !effective.canary_match.is_empty() {
            match &self.router {
                RouterSpec::Istio { .. } | RouterSpec::GatewayApi { .. } => {}
                RouterSpec::NginxIngress { .. } => {
                    if !matches!(effective.canary_match.as_slice(), [one] if one.headers.len() == 1) {
                        return Err(FieldError::new(
                            "policy",
                            format!(
                                "policy {:?}: ingress-nginx routes by one header only: canaryMatch must be one \
                                 entry with one header",
                                effective.name
                            ),
                        ));
                    }
                }
                other => {
                    return Err(FieldError::new(
                        "policy",
                        format!(
                            "policy {:?} has canaryMatch, which router {} cannot express (istio, gateway-api and \
                             nginx-ingress can)",
                            effective.name,
                            other.kind()
                        ),
                    ));
                }
            }
        }
        if let Some(w) = &self.workload {
            w.validate(&self.router)?;
            // A canary that never becomes ready must fail on readyTimeout (Failed, with the reason),
            // not on the policy's progress deadline first.
            if w.ready_timeout >= effective.progress_deadline {
                return Err(FieldError::new(
                    "workload.readyTimeout",
                    format!(
                        "must be shorter than the policy's progressDeadline ({})",
                        humantime::format_duration(effective.progress_deadline)
                    ),
                ));
            }
        }
        Ok(effective)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn gateway(json: serde_json::Value) -> Result<Policy, FieldError> {
        let mut req = fixtures::request("agent-service", "p");
        req.router = serde_json::from_value(json).map_err(|e| FieldError::new("router", e.to_string()))?;
        req.resolve(&[fixtures::policy("p", &[5, 100], Duration::from_secs(1), 1)])
    }

    #[test]
    fn gateway_api_requests_are_validated() {
        let ok = serde_json::json!({ "kind": "gateway-api", "httpRoute": "web", "rule": "api.v1",
                                      "stableBackend": "blue", "canaryBackend": "green" });
        assert!(gateway(ok.clone()).is_ok());
        let field = |patch: serde_json::Value| {
            let mut j = ok.clone();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    j.as_object_mut().unwrap().remove(k);
                } else {
                    j[k] = v.clone();
                }
            }
            gateway(j).unwrap_err().field
        };
        assert_eq!(field(serde_json::json!({ "grpcRoute": "rpc" })), "router.httpRoute", "both kinds");
        assert_eq!(field(serde_json::json!({ "httpRoute": null })), "router.httpRoute", "neither kind");
        assert_eq!(field(serde_json::json!({ "httpRoute": "Web_1" })), "router.httpRoute");
        assert_eq!(field(serde_json::json!({ "rule": "" })), "router.rule");
        assert_eq!(field(serde_json::json!({ "canaryBackend": "blue" })), "router.canaryBackend");
        assert_eq!(field(serde_json::json!({ "stableBackend": "a.b" })), "router.stableBackend");
        assert_eq!(field(serde_json::json!({ "command": ["sh"] })), "router", "unknown fields are refused");
    }

    #[test]
    fn canary_match_needs_a_router_that_can_express_it() {
        let mut policy = fixtures::policy("p", &[5, 100], Duration::from_secs(1), 1);
        policy.canary_match =
            vec![crate::policy::CanaryMatch { headers: BTreeMap::from([("canary".into(), "true".into())]) }];
        let exec = fixtures::request("agent-service", "p");
        let e = exec.resolve(std::slice::from_ref(&policy)).unwrap_err();
        assert!(e.field == "policy" && e.message.contains("router exec cannot express"), "{e}");
        policy.canary_match[0].headers.insert("x-tester".into(), "qa".into());
        let mut ingress = exec.clone();
        ingress.router = RouterSpec::NginxIngress {
            ingress: "main".into(),
            canary_ingress: Some("canary".into()),
            canary_service: None,
            stable_service: None,
        };
        let e = ingress.resolve(std::slice::from_ref(&policy)).unwrap_err();
        assert!(e.message.contains("one header only"), "{e}");
        policy.canary_match[0].headers.remove("x-tester");
        assert!(ingress.resolve(&[policy]).is_ok());
    }

    #[test]
    fn versions_and_upstreams_follow_the_spec_patterns() {
        for ok in ["v1", "1.2.3", "v1.1.0-rc_1", &"a".repeat(128)] {
            assert!(is_version(ok), "{ok}");
        }
        for bad in ["", "-v1", ".v1", "v2@127.0.0.1:18099/x?", "v 1", "v1/x", "v1%2F", &"a".repeat(129)] {
            assert!(!is_version(bad), "{bad}");
        }
        assert!(is_upstream("stable_up:8080") && is_upstream("a.b-c"));
        for bad in ["", "a;b", "a b", "a}", "a{", &"u".repeat(129)] {
            assert!(!is_upstream(bad), "{bad}");
        }
    }

    #[test]
    fn a_router_stored_before_profiles_still_loads() {
        #[derive(Deserialize)]
        struct Stored {
            #[serde(deserialize_with = "stored_router")]
            router: RouterSpec,
        }
        let old = json!({"router": {"kind": "exec", "command": ["/tmp/route.sh"]}});
        let r: Stored = serde_json::from_value(old).unwrap();
        assert_eq!(r.router, RouterSpec::Exec { profile: String::new() });
        let old = json!({"router": {"kind": "nginx", "configFile": "/x", "variable": "v", "stableUpstream": "s",
                                    "canaryUpstream": "c", "reload": ["true"]}});
        let r: Stored = serde_json::from_value(old).unwrap();
        assert_eq!(
            r.router,
            RouterSpec::Nginx { profile: String::new(), stable_upstream: "s".into(), canary_upstream: "c".into() }
        );
        assert!(serde_json::from_value::<Stored>(json!({"router": {"kind": "teleport"}})).is_err());
    }

    #[test]
    fn raw_body_checks_name_the_field() {
        let e = check_raw_body(&json!({"router": {"kind": "exec", "command": ["touch", "/tmp/x"]}})).unwrap_err();
        assert_eq!(e.field, "router.command");
        let e = check_raw_body(&json!({"router": {"kind": "nginx", "profile": "p", "configFile": "/x"}})).unwrap_err();
        assert_eq!(e.field, "router.configFile");
        let e = check_raw_body(&json!({"service": "a", "overrides": {"steps": [1], "interval": "x".repeat(300)}}))
            .unwrap_err();
        assert_eq!(e.field, "overrides.interval");
        let e = check_raw_body(&json!({"router": {"kind": "istio", "route": ["a", "b".repeat(257)]}})).unwrap_err();
        assert_eq!(e.field, "router.route[1]");
        assert!(
            check_raw_body(&json!({"router": {"kind": "exec", "profile": "lb"}, "version": "v".repeat(256)})).is_ok()
        );
    }
}
