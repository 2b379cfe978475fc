//! Routing preparation and clean-up of the `nginx-ingress` router for workload releases (SPEC §4
//! "workload"). The stable Service selects the stable pods by `version`; vane creates the canary
//! Service (a copy selecting `version: <version>`, labelled `vane.dev/managed`) before the first
//! shift, and once promoted points the stable Service at the new version and the main Ingress back
//! at it, so only the new version is routed and the next release starts from the same shape.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::RouterError;
use super::k8s::{self, KubeAccess};

pub const VERSION_LABEL: &str = "version";
pub const MANAGED: &str = k8s::MANAGED_LABEL;
/// The canary Deployment's pod label (`workload::k8s::LABEL_ROLE`): the canary Service selects it,
/// so it reaches only the canary's pods, never the promoted Deployment's.
pub const ROLE: (&str, &str) = (crate::workload::k8s::LABEL_ROLE, "canary");

/// The version the Service selects, if it selects on one.
pub fn selected_version(s: &Service) -> Option<&str> {
    s.spec.as_ref()?.selector.as_ref()?.get(VERSION_LABEL).map(String::as_str)
}

/// The canary Service: the stable one's ports and selector with `version: <version>` and the canary
/// pods' role label.
pub fn canary_service(stable: &Service, name: &str, version: &str) -> Result<Service, String> {
    let sname = stable.metadata.name.as_deref().unwrap_or("?");
    if selected_version(stable).is_none() {
        return Err(format!(
            "Service {sname} does not select on `{VERSION_LABEL}`, so it would send stable traffic to the canary's \
             pods too; add `{VERSION_LABEL}: <stableVersion>` to its selector"
        ));
    }
    let mut spec = stable.spec.clone().unwrap_or_default();
    spec.cluster_ip = None;
    spec.cluster_ips = None;
    if let Some(sel) = spec.selector.as_mut() {
        sel.insert(VERSION_LABEL.into(), version.into());
        sel.insert(ROLE.0.into(), ROLE.1.into());
    }
    let mut labels = stable.metadata.labels.clone().unwrap_or_default();
    labels.insert(MANAGED.into(), "true".into());
    labels.insert(k8s::MANAGED_BY.0.into(), k8s::MANAGED_BY.1.into());
    labels.insert(VERSION_LABEL.into(), version.into());
    Ok(Service {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: stable.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([("vane.dev/owner".to_string(), format!("vane, copy of {sname}"))])),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}

fn what(ns: &str, name: &str) -> String {
    format!("Service {ns}/{name}")
}

/// The Service `name`, which vane may change only if its owners opted in (`[kubernetes] require_opt_in`).
async fn get_opted_in(kube: &KubeAccess, api: &Api<Service>, ns: &str, name: &str) -> Result<Service, RouterError> {
    let s = api.get(name).await.map_err(|e| k8s::classify(&what(ns, name), e))?;
    kube.check_opt_in(&s.metadata, &what(ns, name))?;
    Ok(s)
}

/// Ensure the canary Service `c` (copied from `s`) selects `version`. The stable Service must be
/// opted in (`[kubernetes] require_opt_in`): promotion moves its selector.
pub async fn ensure_canary_service(
    kube: &KubeAccess,
    api: &Api<Service>,
    ns: &str,
    s: &str,
    c: &str,
    stable_version: &str,
    version: &str,
) -> Result<(), RouterError> {
    let stable = get_opted_in(kube, api, ns, s).await?;
    if selected_version(&stable) != Some(stable_version) && selected_version(&stable) != Some(version) {
        return Err(RouterError::Permanent(format!(
            "{} selects `{VERSION_LABEL}: {}`, not the stableVersion {stable_version}",
            what(ns, s),
            selected_version(&stable).unwrap_or("(none)")
        )));
    }
    let desired = canary_service(&stable, c, version).map_err(RouterError::Permanent)?;
    match api.get_opt(c).await.map_err(|e| k8s::classify(&what(ns, c), e))? {
        None => match api.create(&PostParams::default(), &desired).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(st)) if st.code == 409 => {
                Err(RouterError::Transient(format!("{} was just created", what(ns, c))))
            }
            Err(e) => Err(k8s::classify(&what(ns, c), e)),
        },
        Some(cur) if selected_version(&cur) == Some(version) => Ok(()),
        Some(cur) => {
            if !k8s::managed(&cur.metadata) {
                return Err(RouterError::Permanent(format!(
                    "{} exists, is not vane's and does not select `{VERSION_LABEL}: {version}`",
                    what(ns, c)
                )));
            }
            select(api, ns, c, version).await
        }
    }
}

/// Point the stable Service `name` at `version`, if its owners opted in.
pub async fn select_checked(
    kube: &KubeAccess,
    api: &Api<Service>,
    ns: &str,
    name: &str,
    version: &str,
) -> Result<(), RouterError> {
    let cur = get_opted_in(kube, api, ns, name).await?;
    if selected_version(&cur) == Some(version) {
        return Ok(());
    }
    select(api, ns, name, version).await
}

/// Delete the canary Service `c` vane created (one it did not create is left alone).
pub async fn delete_canary_service(api: &Api<Service>, ns: &str, c: &str) -> Result<(), RouterError> {
    let Some(cur) = api.get_opt(c).await.map_err(|e| k8s::classify(&what(ns, c), e))? else { return Ok(()) };
    if !k8s::managed(&cur.metadata) {
        return Ok(());
    }
    match api.delete(c, &kube::api::DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(st)) if st.code == 404 => Ok(()),
        Err(e) => Err(k8s::classify(&what(ns, c), e)),
    }
}

/// Point a Service's selector at `version` (merge patch of that one key).
pub async fn select(api: &Api<Service>, ns: &str, name: &str, version: &str) -> Result<(), RouterError> {
    let patch: Patch<serde_json::Value> = Patch::Merge(json!({ "spec": { "selector": { VERSION_LABEL: version } } }));
    api.patch(name, &PatchParams::default(), &patch).await.map(|_| ()).map_err(|e| k8s::classify(&what(ns, name), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stable(selector: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": { "name": "agent-service", "labels": { "app": "agent-service" } },
            "spec": { "clusterIP": "10.0.0.7", "selector": selector, "ports": [{ "port": 8080, "targetPort": 8080 }] }
        }))
        .unwrap()
    }

    #[test]
    fn the_canary_service_selects_the_new_version_with_the_same_ports() {
        let s = stable(json!({ "app": "agent-service", "version": "v1.0.0" }));
        let c = canary_service(&s, "agent-service-canary", "v1.1.0").unwrap();
        let spec = c.spec.unwrap();
        assert_eq!(spec.selector.unwrap()["version"], "v1.1.0");
        assert_eq!(spec.cluster_ip, None, "assigned by the cluster, never copied");
        assert_eq!(spec.ports.unwrap()[0].port, 8080);
        assert_eq!(c.metadata.labels.unwrap()[MANAGED], "true");
    }

    #[test]
    fn a_stable_service_that_does_not_select_a_version_is_refused() {
        let e = canary_service(&stable(json!({ "app": "agent-service" })), "c", "v1.1.0").unwrap_err();
        assert!(e.contains("does not select on `version`"), "{e}");
    }
}
