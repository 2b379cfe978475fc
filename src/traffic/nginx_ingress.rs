//! `nginx-ingress` router (SPEC §4), for ingress-nginx.
//!
//! Canary: a second Ingress (`canaryIngress`, owned by vane, created by cloning the main one with its
//! backends pointed at the canary service) carries `nginx.ingress.kubernetes.io/canary: "true"` and
//! `canary-weight: "N"`. At 100 % the main Ingress itself is promoted: its backend is rewritten to the
//! canary service and the canary weight goes back to "0" — the end state Argo Rollouts and Flagger
//! users know (the main path serves the new version, the canary Ingress idles at 0). Rolling back sets
//! the weight to "0" (and un-promotes the main Ingress if it had been promoted).
//!
//! Blue/green: the flip rewrites the main Ingress' backend service from `stableService` to
//! `canaryService` (0 → 100) and back (→ 0), with an `upstream-vhost` annotation that names the old
//! service rewritten along.
//!
//! vane never takes over a canary Ingress it did not create: an existing `canaryIngress` must carry
//! vane's `app.kubernetes.io/managed-by: vane` (set on every clone) or its owners' opt-in label
//! `vane.dev/managed: "true"`; otherwise the rollout fails before traffic moves.
//!
//! Every write is a JSON patch guarded by the resourceVersion read just before; each intermediate
//! state of a multi-object change keeps at least the previous canary share, so a crash between two
//! writes never sends traffic back to the old version by surprise.

use std::sync::Arc;

use kube::api::{DynamicObject, PostParams};
use serde_json::{Map, Value, json};

use super::k8s::{self, Attempt, KubeAccess, Obj, pointer_segment};
use super::nginx_ingress_workload as workload;
use super::{Router, RouterError};
use crate::BoxFut;
use crate::policy::CanaryMatch;
use crate::rollout::ports::RouteShape;

pub const CANARY: &str = "nginx.ingress.kubernetes.io/canary";
pub const CANARY_WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
pub const UPSTREAM_VHOST: &str = "nginx.ingress.kubernetes.io/upstream-vhost";
/// `canaryMatch` (one header, exact value): requests carrying it always reach the canary Ingress.
pub const CANARY_BY_HEADER: &str = "nginx.ingress.kubernetes.io/canary-by-header";
pub const CANARY_BY_HEADER_VALUE: &str = "nginx.ingress.kubernetes.io/canary-by-header-value";
/// On the canary Ingress: the service the main Ingress pointed at before vane promoted it.
pub const STABLE_SERVICE: &str = "vane.dev/stable-service";

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Canary { canary_ingress: String },
    BlueGreen,
}

pub struct NginxIngressRouter {
    kube: Arc<KubeAccess>,
    namespace: String,
    ingress: String,
    mode: Mode,
    canary_service: Option<String>,
    stable_service: Option<String>,
    /// `canaryMatch` as ingress-nginx can express it: one header name and its exact value.
    header: Result<Option<(String, String)>, String>,
    /// Workload releases: (stableVersion, version), the `version` the Services select.
    versions: Option<(String, String)>,
}

/// ingress-nginx routes by one header only: `canaryMatch` must be one entry with one header.
pub fn header_of(cm: &[CanaryMatch]) -> Result<Option<(String, String)>, String> {
    match cm {
        [] => Ok(None),
        [one] if one.headers.len() == 1 => Ok(one.headers.iter().next().map(|(k, v)| (k.clone(), v.clone()))),
        _ => Err("ingress-nginx routes by one header only: canaryMatch must be one entry with one header".into()),
    }
}

/// Ops putting the header annotations on the canary Ingress while `active`, and removing them otherwise.
pub fn header_ops(k: &DynamicObject, header: Option<&(String, String)>, active: bool) -> Vec<Value> {
    match header {
        Some((name, value)) if active => {
            annotation_ops(k, &[(CANARY_BY_HEADER, name.clone()), (CANARY_BY_HEADER_VALUE, value.clone())])
        }
        _ => [CANARY_BY_HEADER, CANARY_BY_HEADER_VALUE]
            .into_iter()
            .filter(|key| annotation(k, key).is_some())
            .map(|key| json!({ "op": "remove", "path": format!("/metadata/annotations/{}", pointer_segment(key)) }))
            .collect(),
    }
}

/// Every backend service name of an Ingress: (JSON pointer of the name, name).
pub fn backends(o: &DynamicObject) -> Vec<(String, String)> {
    let mut out = vec![];
    if let Some(n) = o.data.pointer("/spec/defaultBackend/service/name").and_then(Value::as_str) {
        out.push(("/spec/defaultBackend/service/name".to_string(), n.to_string()));
    }
    let rules = o.data.pointer("/spec/rules").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let paths = rule.pointer("/http/paths").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for (j, p) in paths.iter().enumerate() {
            if let Some(n) = p.pointer("/backend/service/name").and_then(Value::as_str) {
                out.push((format!("/spec/rules/{i}/http/paths/{j}/backend/service/name"), n.to_string()));
            }
        }
    }
    out
}

/// Distinct backend service names, in order of appearance.
pub fn services(o: &DynamicObject) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for (_, n) in backends(o) {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

fn has_service(o: &DynamicObject, name: &str) -> bool {
    backends(o).iter().any(|(_, n)| n == name)
}

fn annotation<'a>(o: &'a DynamicObject, key: &str) -> Option<&'a str> {
    o.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

/// `agent-service-blue.ns.svc.cluster.local` with from = agent-service-blue → the same with `to`.
pub fn rewrite_vhost(vhost: &str, from: &str, to: &str) -> Option<String> {
    if vhost == from {
        return Some(to.to_string());
    }
    vhost.strip_prefix(from).filter(|rest| rest.starts_with('.')).map(|rest| format!("{to}{rest}"))
}

/// Ops pointing every backend named `from` at `to` (and the upstream-vhost annotation with them).
pub fn rewrite_ops(o: &DynamicObject, from: &str, to: &str) -> Vec<Value> {
    let mut ops: Vec<Value> = backends(o)
        .into_iter()
        .filter(|(_, n)| n == from)
        .map(|(path, _)| json!({ "op": "replace", "path": path, "value": to }))
        .collect();
    if !ops.is_empty()
        && let Some(v) = annotation(o, UPSTREAM_VHOST).and_then(|v| rewrite_vhost(v, from, to))
    {
        let path = format!("/metadata/annotations/{}", pointer_segment(UPSTREAM_VHOST));
        ops.push(json!({ "op": "replace", "path": path, "value": v }));
    }
    ops
}

/// Ops setting `wanted` annotations (only those that differ).
pub fn annotation_ops(o: &DynamicObject, wanted: &[(&str, String)]) -> Vec<Value> {
    let differs: Vec<&(&str, String)> = wanted.iter().filter(|(k, v)| annotation(o, k) != Some(v.as_str())).collect();
    if differs.is_empty() {
        return vec![];
    }
    if o.metadata.annotations.is_none() {
        let map: Map<String, Value> = wanted.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        return vec![json!({ "op": "add", "path": "/metadata/annotations", "value": map })];
    }
    differs
        .into_iter()
        .map(|(k, v)| json!({ "op": "add", "path": format!("/metadata/annotations/{}", pointer_segment(k)), "value": v }))
        .collect()
}

/// The canary Ingress, cloned from the main one: same hosts, paths, class and annotations (minus
/// kubectl's last-applied and any canary ones), backends `stable` → `canary`.
pub fn canary_clone(
    main: &DynamicObject,
    name: &str,
    stable: &str,
    canary: &str,
    weight: u8,
) -> Result<DynamicObject, String> {
    let mut spec = main.data.get("spec").cloned().unwrap_or_else(|| json!({}));
    for (path, n) in backends(main) {
        if n == stable
            && let Some(v) = spec.pointer_mut(path.trim_start_matches("/spec"))
        {
            *v = json!(canary);
        }
    }
    let mut annotations: Map<String, Value> = main
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration" && !k.starts_with(CANARY))
        .map(|(k, v)| {
            (k.clone(), json!(rewrite_vhost(v, stable, canary).filter(|_| k == UPSTREAM_VHOST).unwrap_or(v.clone())))
        })
        .collect();
    annotations.insert(CANARY.into(), json!("true"));
    annotations.insert(CANARY_WEIGHT.into(), json!(weight.to_string()));
    annotations.insert(STABLE_SERVICE.into(), json!(stable));
    let mut labels: Map<String, Value> =
        main.metadata.labels.iter().flatten().map(|(k, v)| (k.clone(), json!(v))).collect();
    labels.insert(k8s::MANAGED_BY.0.into(), json!(k8s::MANAGED_BY.1));
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": { "name": name, "namespace": main.metadata.namespace, "labels": labels, "annotations": annotations },
        "spec": spec,
    }))
    .map_err(|e| format!("cannot build the canary Ingress: {e}"))
}

/// An existing canary Ingress is vane's to drive only if vane created it or its owners opted it in.
pub fn check_canary_owned(k: &DynamicObject, what: &str) -> Result<(), String> {
    if k8s::created_by_vane(&k.metadata) || k8s::managed(&k.metadata) {
        return Ok(());
    }
    Err(format!(
        "{what} exists and was not created by vane (no label {}: {} nor {}: \"true\"); vane does not take \
         over another canary Ingress: name another router.canaryIngress, delete it, or label it",
        k8s::MANAGED_BY.0,
        k8s::MANAGED_BY.1,
        k8s::MANAGED_LABEL
    ))
}

/// The services of a canary rollout: (stable, canary).
pub fn resolve(
    main: &DynamicObject,
    canary: Option<&DynamicObject>,
    stable_service: Option<&str>,
    canary_service: Option<&str>,
    main_name: &str,
    canary_name: &str,
) -> Result<(String, String), String> {
    let c = match (canary_service, canary) {
        (Some(c), _) => c.to_string(),
        (None, Some(k)) => match services(k).as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(format!("canary Ingress {canary_name} has no backend service; set router.canaryService"));
            }
            many => {
                return Err(format!(
                    "canary Ingress {canary_name} has several backend services ({}); set router.canaryService",
                    many.join(", ")
                ));
            }
        },
        (None, None) => {
            return Err(format!(
                "canary Ingress {canary_name} does not exist and router.canaryService is not set, so vane cannot create it"
            ));
        }
    };
    let s = match stable_service {
        Some(s) => s.to_string(),
        None => {
            let others: Vec<String> = services(main).into_iter().filter(|n| *n != c).collect();
            match (others.as_slice(), canary.and_then(|k| annotation(k, STABLE_SERVICE))) {
                ([one], _) => one.clone(),
                ([], Some(recorded)) => recorded.to_string(),
                ([], None) => {
                    return Err(format!(
                        "Ingress {main_name} has no backend service other than {c}; set router.stableService"
                    ));
                }
                (many, _) => {
                    return Err(format!(
                        "Ingress {main_name} has several backend services ({}); set router.stableService",
                        many.join(", ")
                    ));
                }
            }
        }
    };
    if s == c {
        return Err(format!("the stable and canary services are both {s}"));
    }
    Ok((s, c))
}

/// What the canary state needs next to reach `weight`.
enum Next {
    Create(Box<DynamicObject>),
    PatchCanary(Vec<Value>),
    PatchMain(Vec<Value>),
    Done,
}

fn next_canary_step(
    main: &DynamicObject,
    k: Option<&DynamicObject>,
    s: &str,
    c: &str,
    name: &str,
    weight: u8,
) -> Result<Next, String> {
    let promoted = has_service(main, c) && !has_service(main, s);
    // At 100 the canary Ingress first takes all traffic, then the main Ingress is promoted, then the
    // canary weight returns to 0: every intermediate state keeps 100 % on the new version.
    let k_weight = if weight == 100 && promoted { 0 } else { weight };
    let Some(k) = k else {
        return Ok(Next::Create(Box::new(canary_clone(main, name, s, c, k_weight)?)));
    };
    let mut ops = annotation_ops(
        k,
        &[(CANARY, "true".into()), (CANARY_WEIGHT, k_weight.to_string()), (STABLE_SERVICE, s.to_string())],
    );
    for (path, n) in backends(k) {
        if n != c {
            ops.push(json!({ "op": "replace", "path": path, "value": c }));
        }
    }
    if !ops.is_empty() {
        return Ok(Next::PatchCanary(ops));
    }
    let ops = match (weight == 100, promoted) {
        (true, false) => rewrite_ops(main, s, c),
        (false, true) => rewrite_ops(main, c, s),
        _ => vec![],
    };
    Ok(if ops.is_empty() { Next::Done } else { Next::PatchMain(ops) })
}

/// The live canary weight of a canary rollout.
fn observe_canary(main: &DynamicObject, k: Option<&DynamicObject>, s: &str, c: &str) -> Option<u8> {
    if has_service(main, c) && !has_service(main, s) {
        return Some(100);
    }
    match k {
        Some(k) if annotation(k, CANARY) == Some("true") => {
            annotation(k, CANARY_WEIGHT).and_then(|w| w.trim().parse::<u8>().ok()).filter(|w| *w <= 100)
        }
        _ => Some(0),
    }
}

impl NginxIngressRouter {
    pub fn new(
        kube: Arc<KubeAccess>,
        namespace: &str,
        ingress: &str,
        mode: Mode,
        stable_service: Option<&str>,
        canary_service: Option<&str>,
        canary_match: &[CanaryMatch],
    ) -> Self {
        NginxIngressRouter {
            header: header_of(canary_match),
            kube,
            namespace: namespace.into(),
            ingress: ingress.into(),
            mode,
            stable_service: stable_service.filter(|s| !s.is_empty()).map(Into::into),
            canary_service: canary_service.filter(|s| !s.is_empty()).map(Into::into),
            versions: None,
        }
    }

    /// The versions a workload release moves between (needed to shape routing).
    pub fn with_versions(mut self, stable_version: &str, version: &str) -> Self {
        self.versions = Some((stable_version.into(), version.into()));
        self
    }

    /// (stable, canary) services, from the spec or the Ingresses.
    async fn service_names(&self) -> Result<(String, String), RouterError> {
        let (main, kobj) = self.objects().await?;
        match &kobj {
            Some(kobj) => {
                let m = main.get().await?;
                self.resolve(&m, kobj.get_opt().await?.as_ref(), kobj)
            }
            None => self.blue_green_services().map(|(s, c)| (s.to_string(), c.to_string())),
        }
    }

    /// Promoted by a workload release: the stable Service already selects the new version and the
    /// main Ingress points at it again.
    async fn promoted(&self) -> Result<bool, RouterError> {
        let Some((_, version)) = &self.versions else { return Ok(false) };
        let (s, _) = self.service_names().await?;
        let api: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(self.kube.client().await?, &self.namespace);
        let stable = api.get_opt(&s).await.map_err(|e| k8s::classify(&format!("Service {}/{s}", self.namespace), e))?;
        let main = self.objects().await?.0.get().await?;
        Ok(stable.as_ref().and_then(workload::selected_version) == Some(version.as_str()) && has_service(&main, &s))
    }

    async fn objects(&self) -> Result<(Obj, Option<Obj>), RouterError> {
        let client = self.kube.client_in(&self.namespace).await?;
        let main = Obj::new(client.clone(), &k8s::ingress(), &self.namespace, &self.ingress);
        let canary = match &self.mode {
            Mode::Canary { canary_ingress } => Some(Obj::new(client, &k8s::ingress(), &self.namespace, canary_ingress)),
            Mode::BlueGreen => None,
        };
        Ok((main, canary))
    }

    fn resolve(
        &self,
        main: &DynamicObject,
        k: Option<&DynamicObject>,
        kobj: &Obj,
    ) -> Result<(String, String), RouterError> {
        resolve(main, k, self.stable_service.as_deref(), self.canary_service.as_deref(), &self.ingress, &kobj.name)
            .map_err(RouterError::Permanent)
    }

    /// Blue/green: (stable, canary), both required by the spec's validation.
    fn blue_green_services(&self) -> Result<(&str, &str), RouterError> {
        match (self.stable_service.as_deref(), self.canary_service.as_deref()) {
            (Some(s), Some(c)) => Ok((s, c)),
            _ => Err(RouterError::Permanent("blue/green needs router.stableService and router.canaryService".into())),
        }
    }

    /// Both objects may be written: the main one is opted in, the canary one (if any) is vane's.
    fn check_owned(
        &self,
        main: &Obj,
        m: &DynamicObject,
        kobj: &Obj,
        k: Option<&DynamicObject>,
    ) -> Result<(), RouterError> {
        self.kube.check_opt_in(&m.metadata, &main.describe())?;
        match k {
            Some(k) => check_canary_owned(k, &kobj.describe()).map_err(RouterError::Permanent),
            None => Ok(()),
        }
    }

    /// Read both objects and take canary steps until the state is reached (a conflict restarts).
    async fn try_canary(&self, main: &Obj, kobj: &Obj, weight: u8) -> Result<(), Attempt> {
        for _ in 0..6 {
            let m = main.get().await?;
            let k = kobj.get_opt().await?;
            self.check_owned(main, &m, kobj, k.as_ref())?;
            let (s, c) = self.resolve(&m, k.as_ref(), kobj)?;
            let next = next_canary_step(&m, k.as_ref(), &s, &c, &kobj.name, weight).map_err(RouterError::Permanent)?;
            let next = match (next, &k) {
                (Next::Done, Some(k)) => {
                    let header = self.header.as_ref().map_err(|e| RouterError::Permanent(e.clone()))?;
                    let ops = header_ops(k, header.as_ref(), weight > 0 && weight < 100);
                    if ops.is_empty() { Next::Done } else { Next::PatchCanary(ops) }
                }
                (next, _) => next,
            };
            match next {
                Next::Done => return Ok(()),
                Next::Create(obj) => match kobj.api.create(&PostParams::default(), &obj).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(st)) if st.code == 409 => {
                        return Err(Attempt::Conflict(format!("{} was just created", kobj.describe())));
                    }
                    Err(e) => return Err(k8s::classify(&kobj.describe(), e).into()),
                },
                Next::PatchCanary(ops) => match &k {
                    Some(k) => kobj.patch_guarded(&k8s::resource_version(k)?, ops).await?,
                    None => {
                        return Err(Attempt::Conflict(format!("{} disappeared", kobj.describe())));
                    }
                },
                Next::PatchMain(ops) => main.patch_guarded(&k8s::resource_version(&m)?, ops).await?,
            }
        }
        Err(Attempt::Conflict("the Ingresses did not settle".into()))
    }

    async fn try_flip(&self, main: &Obj, weight: u8) -> Result<(), Attempt> {
        let (s, c) = self.blue_green_services()?;
        let (from, to) = if weight == 100 { (s, c) } else { (c, s) };
        let m = main.get().await?;
        self.kube.check_opt_in(&m.metadata, &main.describe())?;
        let ops = rewrite_ops(&m, from, to);
        if ops.is_empty() {
            return Ok(());
        }
        main.patch_guarded(&k8s::resource_version(&m)?, ops).await
    }
}

impl Router for NginxIngressRouter {
    fn kind(&self) -> &'static str {
        "nginx-ingress"
    }

    fn validate(&self) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(k8s::bounded("nginx-ingress validate", async move {
            if let Err(e) = &self.header {
                return Err(RouterError::Permanent(e.clone()));
            }
            let (main, kobj) = self.objects().await?;
            let m = main.get().await?;
            let (s, c) = match &kobj {
                Some(kobj) => {
                    let k = kobj.get_opt().await?;
                    self.check_owned(&main, &m, kobj, k.as_ref())?;
                    self.resolve(&m, k.as_ref(), kobj)?
                }
                None => {
                    self.kube.check_opt_in(&m.metadata, &main.describe())?;
                    self.blue_green_services().map(|(s, c)| (s.to_string(), c.to_string()))?
                }
            };
            if !has_service(&m, &s) && !has_service(&m, &c) {
                let found = services(&m);
                return Err(RouterError::Permanent(format!(
                    "{} has no backend service {s} (nor {c}); it has: {}",
                    main.describe(),
                    if found.is_empty() { "none".into() } else { found.join(", ") }
                )));
            }
            Ok(())
        }))
    }

    fn set_weight(&self, canary: u8) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(k8s::bounded("nginx-ingress set weight", async move {
            if canary > 100 {
                return Err(RouterError::Permanent(format!("canary weight {canary} is over 100")));
            }
            if canary == 100 && self.promoted().await? {
                return Ok(());
            }
            let (main, kobj) = self.objects().await?;
            match &kobj {
                Some(kobj) => k8s::retry_conflicts(&kobj.describe(), || self.try_canary(&main, kobj, canary)).await,
                None if canary == 0 || canary == 100 => {
                    k8s::retry_conflicts(&main.describe(), || self.try_flip(&main, canary)).await
                }
                None => Err(RouterError::Permanent(format!("a blue/green Ingress flips 0 or 100 %, not {canary}"))),
            }
        }))
    }

    fn shape(&self, shape: RouteShape) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(k8s::bounded("nginx-ingress shape", async move {
            let Some((stable_version, version)) = &self.versions else {
                return Err(RouterError::Permanent("nginx-ingress: no versions to shape routing for".into()));
            };
            let (s, c) = self.service_names().await?;
            let ns = &self.namespace;
            let api: kube::Api<k8s_openapi::api::core::v1::Service> =
                kube::Api::namespaced(self.kube.client().await?, ns);
            match shape {
                RouteShape::Prepared => {
                    workload::ensure_canary_service(&self.kube, &api, ns, &s, &c, stable_version, version).await
                }
                RouteShape::Restored | RouteShape::Retired => Ok(()),
                RouteShape::Final => {
                    // The stable Service takes the new version's pods (the promoted Deployment's), then
                    // the main Ingress points back at it: both select the new version throughout.
                    workload::select_checked(&self.kube, &api, ns, &s, version).await?;
                    let main = self.objects().await?.0;
                    k8s::retry_conflicts(&main.describe(), || async {
                        let m = main.get().await?;
                        let ops = rewrite_ops(&m, &c, &s);
                        if ops.is_empty() {
                            return Ok(());
                        }
                        main.patch_guarded(&k8s::resource_version(&m)?, ops).await
                    })
                    .await
                }
            }
        }))
    }

    fn observe(&self) -> BoxFut<'_, Result<Option<u8>, RouterError>> {
        Box::pin(k8s::bounded("nginx-ingress observe", async move {
            if self.promoted().await? {
                return Ok(Some(100));
            }
            let (main, kobj) = self.objects().await?;
            let m = main.get().await?;
            match &kobj {
                Some(kobj) => {
                    let k = kobj.get_opt().await?;
                    let (s, c) = self.resolve(&m, k.as_ref(), kobj)?;
                    Ok(observe_canary(&m, k.as_ref(), &s, &c))
                }
                None => {
                    let (s, c) = self.blue_green_services()?;
                    Ok(match (has_service(&m, s), has_service(&m, c)) {
                        (true, false) => Some(0),
                        (false, true) => Some(100),
                        _ => None,
                    })
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deployment standard's Ingress.
    fn main_ingress(service: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": { "name": "agent-service-ingress", "namespace": "prod", "resourceVersion": "7",
                "annotations": {
                    UPSTREAM_VHOST: format!("{service}.ai-workflow-prod.svc.cluster.local"),
                    "kubectl.kubernetes.io/last-applied-configuration": "{}" } },
            "spec": { "ingressClassName": "nginx", "rules": [{ "host": "api.aiworkflow.com", "http": { "paths": [
                { "path": "/api/agents", "pathType": "Prefix",
                  "backend": { "service": { "name": service, "port": { "number": 8080 } } } } ] } }] }
        }))
        .unwrap()
    }

    const NAME_PTR: &str = "/spec/rules/0/http/paths/0/backend/service/name";

    #[test]
    fn the_flip_rewrites_the_backend_and_the_vhost() {
        let m = main_ingress("agent-service-blue");
        assert_eq!(
            rewrite_ops(&m, "agent-service-blue", "agent-service-green"),
            vec![
                json!({ "op": "replace", "path": NAME_PTR, "value": "agent-service-green" }),
                json!({ "op": "replace", "path": "/metadata/annotations/nginx.ingress.kubernetes.io~1upstream-vhost",
                        "value": "agent-service-green.ai-workflow-prod.svc.cluster.local" }),
            ]
        );
        assert!(rewrite_ops(&m, "agent-service-green", "agent-service-blue").is_empty());
        assert_eq!(rewrite_vhost("agent-service-blue-x.ns", "agent-service-blue", "g"), None);
    }

    #[test]
    fn the_canary_clone_points_at_the_canary_service_with_canary_annotations() {
        let m = main_ingress("agent-service-blue");
        let k = canary_clone(&m, "agent-service-canary", "agent-service-blue", "agent-service-green", 5).unwrap();
        assert_eq!(k.metadata.name.as_deref(), Some("agent-service-canary"));
        assert_eq!(services(&k), vec!["agent-service-green"]);
        assert_eq!(annotation(&k, CANARY), Some("true"));
        assert_eq!(annotation(&k, CANARY_WEIGHT), Some("5"));
        assert_eq!(annotation(&k, STABLE_SERVICE), Some("agent-service-blue"));
        assert_eq!(annotation(&k, UPSTREAM_VHOST), Some("agent-service-green.ai-workflow-prod.svc.cluster.local"));
        assert_eq!(annotation(&k, "kubectl.kubernetes.io/last-applied-configuration"), None);
        assert_eq!(k.data.pointer("/spec/ingressClassName"), Some(&json!("nginx")));
        assert_eq!(k.metadata.resource_version, None);
    }

    #[test]
    fn services_resolve_from_the_objects_or_fail_clearly() {
        let m = main_ingress("blue");
        let k = canary_clone(&m, "k", "blue", "green", 0).unwrap();
        assert_eq!(resolve(&m, Some(&k), None, None, "main", "k"), Ok(("blue".into(), "green".into())));
        assert_eq!(resolve(&m, None, None, Some("green"), "main", "k"), Ok(("blue".into(), "green".into())));
        let e = resolve(&m, None, None, None, "main", "k").unwrap_err();
        assert!(e.contains("canaryService"), "{e}");
        assert!(resolve(&m, None, Some("blue"), Some("blue"), "main", "k").unwrap_err().contains("both blue"));
        // Promoted: the main Ingress points at green; the stable service is the one recorded.
        let promoted = main_ingress("green");
        assert_eq!(resolve(&promoted, Some(&k), None, None, "main", "k"), Ok(("blue".into(), "green".into())));
    }

    #[test]
    fn reaching_100_never_lowers_the_canary_share_on_the_way() {
        let m = main_ingress("blue");
        let mut k = canary_clone(&m, "k", "blue", "green", 50).unwrap();
        // 1. the canary Ingress takes everything
        let Ok(Next::PatchCanary(ops)) = next_canary_step(&m, Some(&k), "blue", "green", "k", 100) else { panic!() };
        assert_eq!(
            ops,
            vec![
                json!({ "op": "add", "path": "/metadata/annotations/nginx.ingress.kubernetes.io~1canary-weight", "value": "100" })
            ]
        );
        k.metadata.annotations.as_mut().unwrap().insert(CANARY_WEIGHT.into(), "100".into());
        // 2. the main Ingress is promoted
        assert!(matches!(next_canary_step(&m, Some(&k), "blue", "green", "k", 100), Ok(Next::PatchMain(_))));
        let promoted = main_ingress("green");
        assert_eq!(observe_canary(&promoted, Some(&k), "blue", "green"), Some(100));
        // 3. the canary weight returns to 0
        let Ok(Next::PatchCanary(ops)) = next_canary_step(&promoted, Some(&k), "blue", "green", "k", 100) else {
            panic!()
        };
        assert_eq!(ops[0]["value"], json!("0"));
        k.metadata.annotations.as_mut().unwrap().insert(CANARY_WEIGHT.into(), "0".into());
        assert!(matches!(next_canary_step(&promoted, Some(&k), "blue", "green", "k", 100), Ok(Next::Done)));
        assert_eq!(observe_canary(&promoted, Some(&k), "blue", "green"), Some(100));
    }

    #[test]
    fn observe_reads_the_canary_weight() {
        let m = main_ingress("blue");
        assert_eq!(observe_canary(&m, None, "blue", "green"), Some(0));
        let k = canary_clone(&m, "k", "blue", "green", 25).unwrap();
        assert_eq!(observe_canary(&m, Some(&k), "blue", "green"), Some(25));
    }
}
