//! The names a workload release derives when the request leaves them out (SPEC §4 "workload"), so CI
//! sends only the Deployment, the image and the version:
//!
//! - istio `router.canarySubset`: the stable subset's pattern applied to the new version. A subset
//!   that ends with the stable version, as written (`v1.0.0`) or in label form (`v1-0-0`: lowercase,
//!   `.` and `_` as `-`), keeps what comes before it and takes the new version in the same form
//!   (`v1-0-0` → `v1-1-0`, `agent-v1-0-0` → `agent-v1-1-0`, `v1.0.0` → `v1.1.0`); any other stable
//!   subset (`stable`, `primary`) gives the new version in label form (`v1-1-0`), which the next
//!   release then follows.
//! - nginx-ingress `router.canaryService` and gateway-api `router.canaryBackend`: the Service vane
//!   creates, `<deployment>-canary` (the canary Deployment's name).
//!
//! A name the request gives is kept (it must then be a valid name: `CreateRequest::resolve`).

use super::spec::{CreateRequest, RouterSpec};

/// A version in Kubernetes-name form: lowercase, `.` and `_` as `-`.
pub fn label_form(version: &str) -> String {
    version.chars().map(|c| if matches!(c, '.' | '_') { '-' } else { c.to_ascii_lowercase() }).collect()
}

/// The canary subset that follows `stable_subset`'s pattern for `version` (module doc).
pub fn canary_subset(stable_subset: &str, stable_version: &str, version: &str) -> String {
    if let Some(prefix) = stable_subset.strip_suffix(stable_version) {
        return format!("{prefix}{version}");
    }
    if let Some(prefix) = stable_subset.strip_suffix(&label_form(stable_version)) {
        return format!("{prefix}{}", label_form(version));
    }
    label_form(version)
}

impl CreateRequest {
    /// Fill the canary names a workload release may leave out (module doc); a no-op without
    /// `workload` or when they are given.
    pub fn with_derived_names(mut self) -> Self {
        let Some(w) = &self.workload else { return self };
        let canary = w.canary_name();
        match &mut self.router {
            RouterSpec::Istio { stable_subset, canary_subset: c, .. } if c.is_empty() => {
                *c = canary_subset(stable_subset, &self.stable_version, &self.version);
            }
            RouterSpec::NginxIngress { canary_service: c @ None, .. } => *c = Some(canary),
            RouterSpec::GatewayApi { canary_backend: c, .. } if c.is_empty() => *c = canary,
            _ => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_subset_follows_the_stable_subsets_pattern() {
        // The deployment standard: version v1.0.0 ↔ subset v1-0-0.
        assert_eq!(canary_subset("v1-0-0", "v1.0.0", "v1.1.0"), "v1-1-0");
        // A prefix is kept, in either form.
        assert_eq!(canary_subset("agent-v1-0-0", "v1.0.0", "v1.1.0"), "agent-v1-1-0");
        assert_eq!(canary_subset("agent-v1", "v1", "v2"), "agent-v2");
        // The subset is literally the version.
        assert_eq!(canary_subset("v1", "v1", "v2"), "v2");
        assert_eq!(canary_subset("v1.0.0", "v1.0.0", "v1.1.0"), "v1.1.0");
        // No pattern: the version in label form.
        assert_eq!(canary_subset("stable", "v1.0.0", "V1.1.0_rc1"), "v1-1-0-rc1");
        assert_eq!(label_form("2024.06_01"), "2024-06-01");
    }

    #[test]
    fn only_missing_names_of_a_workload_release_are_derived() {
        let mut req = crate::fixtures::request("agent-service", "p");
        req.version = "v1.1.0".into();
        req.stable_version = "v1.0.0".into();
        let istio = |canary: &str| RouterSpec::Istio {
            virtual_service: "vs".into(),
            route: None,
            stable_subset: "v1-0-0".into(),
            canary_subset: canary.into(),
        };
        req.router = istio("");
        assert_eq!(req.clone().with_derived_names().router, istio(""), "no workload: nothing derived");
        req.workload = Some(
            serde_json::from_value(serde_json::json!({ "deployment": "agent-service",
            "image": "a:v1.1.0" }))
            .unwrap(),
        );
        assert_eq!(req.clone().with_derived_names().router, istio("v1-1-0"));
        req.router = istio("mine");
        assert_eq!(req.clone().with_derived_names().router, istio("mine"), "a given name is kept");
        req.router = RouterSpec::GatewayApi {
            http_route: Some("r".into()),
            grpc_route: None,
            rule: None,
            stable_backend: "agent-service".into(),
            canary_backend: String::new(),
        };
        let RouterSpec::GatewayApi { canary_backend, .. } = req.clone().with_derived_names().router else { panic!() };
        assert_eq!(canary_backend, "agent-service-canary");
        req.router = RouterSpec::NginxIngress {
            ingress: "i".into(),
            canary_ingress: Some("k".into()),
            canary_service: None,
            stable_service: None,
        };
        let RouterSpec::NginxIngress { canary_service, .. } = req.with_derived_names().router else { panic!() };
        assert_eq!(canary_service.as_deref(), Some("agent-service-canary"));
    }
}
