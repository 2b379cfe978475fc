//! Kubernetes Deployments for workload releases (SPEC §4 "workload").
//!
//! `<deployment>-canary` is built from the stable Deployment: the same spec with the new image, pod
//! label `version: <version>`, a selector narrowed by `vane.dev/role: canary` (so the two
//! Deployments never claim each other's pods), vane's labels and an owner annotation. Writes carry
//! a hash of what vane wants (`vane.dev/spec-hash`), so a reconcile that finds it in place writes
//! nothing, and a replace is guarded by the resourceVersion that was read. "Rolled out" is judged as
//! `kubectl rollout status` does.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::BoxFut;
use crate::rollout::Rollout;
use crate::rollout::ports::{
    Workload, WorkloadAction, WorkloadError, WorkloadFactory, WorkloadStatus, canary_replicas,
};
use crate::rollout::spec::{Retire, WorkloadSpec};
use crate::traffic::k8s::{self as kube_util, KubeAccess};

pub const LABEL_ROLLOUT: &str = "vane.dev/rollout";
pub const LABEL_MANAGED: &str = "vane.dev/managed";
/// Pod and selector label that sets the canary's pods apart from the stable's.
pub const LABEL_ROLE: &str = "vane.dev/role";
pub const ANNOTATION_OWNER: &str = "vane.dev/owner";
pub const ANNOTATION_HASH: &str = "vane.dev/spec-hash";
/// The pod label that names the version (the Istio subsets select on it).
pub const VERSION_LABEL: &str = "version";

/// The daemon's `WorkloadFactory`.
pub struct K8sWorkloads {
    kube: Arc<KubeAccess>,
}

impl K8sWorkloads {
    pub fn new(kube: Arc<KubeAccess>) -> Self {
        K8sWorkloads { kube }
    }
}

impl WorkloadFactory for K8sWorkloads {
    fn build(&self, r: &Rollout) -> Result<Arc<dyn Workload>, WorkloadError> {
        let spec = r
            .workload
            .as_ref()
            .map(|w| w.spec.clone())
            .ok_or_else(|| WorkloadError::Permanent("this rollout has no workload".into()))?;
        Ok(Arc::new(K8sWorkload {
            kube: self.kube.clone(),
            namespace: r.namespace.clone(),
            rollout: r.id.clone(),
            version: r.version.clone(),
            stable_version: r.stable_version.clone(),
            spec,
        }))
    }
}

pub struct K8sWorkload {
    kube: Arc<KubeAccess>,
    namespace: String,
    rollout: String,
    version: String,
    stable_version: String,
    spec: WorkloadSpec,
}

type Res<T> = Result<T, WorkloadError>;

fn err(what: &str, e: kube::Error) -> WorkloadError {
    match &e {
        kube::Error::Api(s) if s.code == 409 || s.code == 422 => {
            WorkloadError::Transient(format!("{what} changed while being written ({} {})", s.code, s.reason))
        }
        _ => kube_util::classify(what, e).into(),
    }
}

/// `kubectl rollout status`'s verdict on a Deployment; a `Progressing=False` condition of the
/// current generation fails it with the condition's reason and message.
pub fn rollout_status(d: &Deployment) -> WorkloadStatus {
    let name = d.metadata.name.as_deref().unwrap_or("?");
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(st) = d.status.as_ref().filter(|s| s.observed_generation.unwrap_or(0) >= generation) else {
        return WorkloadStatus::Waiting(format!("{name}: waiting for the spec update to be observed"));
    };
    let progressing = st.conditions.iter().flatten().find(|c| c.type_.as_deref() == Some("Progressing"));
    if let Some(c) = progressing.filter(|c| c.status.as_deref() == Some("False")) {
        return WorkloadStatus::Failed(format!(
            "{name}: Progressing=False, {}: {}",
            c.reason.as_deref().unwrap_or("no reason"),
            c.message.as_deref().unwrap_or("no message")
        ));
    }
    let want = d.spec.replicas.unwrap_or(1);
    let updated = st.updated_replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    if updated < want {
        return WorkloadStatus::Waiting(format!("{name}: {updated} of {want} new replicas updated"));
    }
    if total > updated {
        return WorkloadStatus::Waiting(format!("{name}: {} old replicas pending termination", total - updated));
    }
    if available < updated {
        return WorkloadStatus::Waiting(format!("{name}: {available} of {updated} updated replicas available"));
    }
    WorkloadStatus::Ready(format!("{name} rolled out, {available}/{want} replicas available"))
}

/// The index of the container whose image changes.
pub fn container_index(d: &Deployment, want: Option<&str>, deployment: &str) -> Result<usize, String> {
    let containers = d.spec.template.spec.as_ref().map(|p| p.containers.as_slice());
    let containers = containers.unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let pick = |n: &str| names.iter().position(|c| *c == n);
    match want {
        Some(n) => pick(n).ok_or_else(|| format!("has no container {n:?} (containers: {})", names.join(", "))),
        None => match (pick(deployment), names.len()) {
            (Some(i), _) => Ok(i),
            (None, 1) => Ok(0),
            _ => Err(format!("has containers {}: name one with workload.container", names.join(", "))),
        },
    }
}

fn hash(v: &impl serde::Serialize) -> String {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

impl K8sWorkload {
    fn canary_name(&self) -> String {
        self.spec.canary_name()
    }

    fn vane_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_ROLLOUT.to_string(), self.rollout.clone()),
            (LABEL_MANAGED.to_string(), "true".to_string()),
        ])
    }

    fn owner(&self) -> String {
        format!("vane rollout {} ({} {} → {})", self.rollout, self.spec.deployment, self.stable_version, self.version)
    }

    async fn deployments(&self) -> Res<Api<Deployment>> {
        Ok(Api::namespaced(self.kube.client_in(&self.namespace).await?, &self.namespace))
    }

    async fn hpas(&self) -> Res<Api<HorizontalPodAutoscaler>> {
        Ok(Api::namespaced(self.kube.client_in(&self.namespace).await?, &self.namespace))
    }

    fn describe(&self, name: &str) -> String {
        format!("Deployment {}/{name}", self.namespace)
    }

    /// The stable Deployment, checked: its owners opted in (`[kubernetes] require_opt_in`: it is
    /// promoted in place, and its HPA cloned) and its selector does not pin `version` (its
    /// template's `version` changes). Read before any write of a release, so a refusal writes nothing.
    async fn stable(&self, api: &Api<Deployment>) -> Res<Deployment> {
        let d = self.spec.deployment.as_str();
        let stable = api.get(d).await.map_err(|e| err(&self.describe(d), e))?;
        self.kube.check_opt_in(&stable.metadata, &self.describe(d))?;
        let pinned = stable.spec.selector.match_labels.as_ref();
        if pinned.is_some_and(|m| m.contains_key(VERSION_LABEL)) {
            return Err(WorkloadError::Permanent(format!(
                "{}: its selector includes `{VERSION_LABEL}`, so it cannot be promoted in place; select on `app` only",
                self.describe(d)
            )));
        }
        Ok(stable)
    }

    /// What `<deployment>-canary` should be: the stable's spec with the new image and version.
    pub fn desired_canary(&self, stable: &Deployment, replicas: u32) -> Res<Deployment> {
        let d = &self.spec.deployment;
        let idx = container_index(stable, self.spec.container.as_deref(), d)
            .map_err(|e| WorkloadError::Permanent(format!("{} {e}", self.describe(d))))?;
        let mut spec = stable.spec.clone();
        spec.replicas = Some(replicas as i32);
        spec.paused = None;
        let sel = spec.selector.match_labels.get_or_insert_with(BTreeMap::new);
        sel.insert(LABEL_ROLE.into(), "canary".into());
        let meta = spec.template.metadata.get_or_insert_with(Default::default);
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(LABEL_ROLE.into(), "canary".into());
        labels.insert(VERSION_LABEL.into(), self.version.clone());
        labels.insert(LABEL_ROLLOUT.into(), self.rollout.clone());
        if let Some(p) = spec.template.spec.as_mut() {
            p.containers[idx].image = Some(self.spec.image.clone());
        }
        let mut labels = stable.metadata.labels.clone().unwrap_or_default();
        labels.extend(self.vane_labels());
        labels.insert(VERSION_LABEL.into(), self.version.clone());
        let annotations =
            BTreeMap::from([(ANNOTATION_OWNER.to_string(), self.owner()), (ANNOTATION_HASH.to_string(), hash(&spec))]);
        Ok(Deployment {
            metadata: kube::api::ObjectMeta {
                name: Some(self.canary_name()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec,
            status: None,
        })
    }

    /// Refuse to touch an object of that name that vane did not create.
    fn check_managed(&self, kind: &str, meta: &kube::api::ObjectMeta) -> Res<()> {
        let managed = meta.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED)).is_some_and(|v| v == "true");
        if managed {
            return Ok(());
        }
        Err(WorkloadError::Permanent(format!(
            "{kind} {}/{} exists and is not vane's (no label {LABEL_MANAGED}: \"true\"); rename or delete it",
            self.namespace,
            meta.name.as_deref().unwrap_or("?")
        )))
    }

    async fn canary(&self, weight: u8) -> Res<WorkloadStatus> {
        let api = self.deployments().await?;
        let stable = self.stable(&api).await?;
        let label = stable
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .and_then(|l| l.get(VERSION_LABEL).cloned())
            .unwrap_or_default();
        if label != self.stable_version {
            return Err(WorkloadError::Permanent(format!(
                "{}: its pod template has `{VERSION_LABEL}: {label}`, not the stableVersion {}",
                self.describe(&self.spec.deployment),
                self.stable_version
            )));
        }
        let stable_n = stable.spec.replicas.unwrap_or(1).max(0) as u32;
        let n = canary_replicas(stable_n, weight, self.spec.canary_scale);
        let desired = self.desired_canary(&stable, n)?;
        let name = self.canary_name();
        let what = self.describe(&name);
        let live = match api.get_opt(&name).await.map_err(|e| err(&what, e))? {
            None => api.create(&PostParams::default(), &desired).await.map_err(|e| err(&what, e))?,
            Some(cur) => {
                self.check_managed("Deployment", &cur.metadata)?;
                let want_hash = desired.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_HASH));
                let has_hash = cur.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_HASH));
                let same_owner = cur.metadata.labels.as_ref().and_then(|l| l.get(LABEL_ROLLOUT)) == Some(&self.rollout);
                if want_hash == has_hash && same_owner {
                    cur
                } else {
                    // An earlier release's canary (kept at 0) or a changed stable: take it over.
                    let mut next = desired.clone();
                    next.metadata.resource_version = cur.metadata.resource_version.clone();
                    api.replace(&name, &PostParams::default(), &next).await.map_err(|e| err(&what, e))?
                }
            }
        };
        self.ensure_hpa(weight).await?;
        Ok(rollout_status(&live))
    }

    /// Clone the stable's HorizontalPodAutoscaler for the canary, min and max scaled like replicas.
    async fn ensure_hpa(&self, weight: u8) -> Res<()> {
        let api = self.hpas().await?;
        let what = format!("HorizontalPodAutoscalers in {}", self.namespace);
        let all = api.list(&ListParams::default()).await.map_err(|e| err(&what, e))?;
        let stable = all.items.iter().find(|h| {
            let t = &h.spec.scale_target_ref;
            t.kind == "Deployment" && t.name == self.spec.deployment
        });
        let Some(stable) = stable else { return Ok(()) };
        let mut spec = stable.spec.clone();
        let scale = |n: i32| canary_replicas(n.max(1) as u32, weight, self.spec.canary_scale) as i32;
        spec.scale_target_ref.name = self.canary_name();
        let min = scale(spec.min_replicas.unwrap_or(1));
        spec.min_replicas = Some(min);
        spec.max_replicas = scale(spec.max_replicas).max(min);
        let name = self.canary_name();
        let annotations =
            BTreeMap::from([(ANNOTATION_OWNER.to_string(), self.owner()), (ANNOTATION_HASH.to_string(), hash(&spec))]);
        let desired = HorizontalPodAutoscaler {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(self.vane_labels()),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec,
            status: None,
        };
        let what = format!("HorizontalPodAutoscaler {}/{name}", self.namespace);
        match api.get_opt(&name).await.map_err(|e| err(&what, e))? {
            None => {
                api.create(&PostParams::default(), &desired).await.map_err(|e| err(&what, e))?;
            }
            Some(cur) => {
                self.check_managed("HorizontalPodAutoscaler", &cur.metadata)?;
                if cur.metadata.annotations != desired.metadata.annotations
                    || cur.metadata.labels != desired.metadata.labels
                {
                    let mut next = desired;
                    next.metadata.resource_version = cur.metadata.resource_version.clone();
                    api.replace(&name, &PostParams::default(), &next).await.map_err(|e| err(&what, e))?;
                }
            }
        }
        Ok(())
    }

    async fn delete_hpa(&self) -> Res<()> {
        let api = self.hpas().await?;
        let name = self.canary_name();
        let what = format!("HorizontalPodAutoscaler {}/{name}", self.namespace);
        let Some(cur) = api.get_opt(&name).await.map_err(|e| err(&what, e))? else { return Ok(()) };
        self.check_managed("HorizontalPodAutoscaler", &cur.metadata)?;
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(err(&what, e)),
        }
    }

    /// `<deployment>` runs the new image with `version: <version>`, rolled out.
    async fn promote(&self) -> Res<WorkloadStatus> {
        let api = self.deployments().await?;
        let d = self.spec.deployment.as_str();
        let what = self.describe(d);
        let stable = self.stable(&api).await?;
        let idx = container_index(&stable, self.spec.container.as_deref(), d)
            .map_err(|e| WorkloadError::Permanent(format!("{what} {e}")))?;
        let tpl = Some(&stable.spec.template);
        let label =
            tpl.and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.as_ref()).and_then(|l| l.get(VERSION_LABEL));
        let image =
            tpl.and_then(|t| t.spec.as_ref()).and_then(|p| p.containers.get(idx)).and_then(|c| c.image.as_ref());
        let live = if label == Some(&self.version) && image == Some(&self.spec.image) {
            stable
        } else {
            let rv = stable.metadata.resource_version.clone().unwrap_or_default();
            let ops = json!([
                { "op": "test", "path": "/metadata/resourceVersion", "value": rv },
                { "op": "add", "path": format!("/spec/template/metadata/labels/{VERSION_LABEL}"), "value": self.version },
                { "op": "replace", "path": format!("/spec/template/spec/containers/{idx}/image"), "value": self.spec.image },
            ]);
            let patch: Patch<()> = Patch::Json(
                serde_json::from_value(ops)
                    .map_err(|e| WorkloadError::Permanent(format!("internal error building a JSON patch: {e}")))?,
            );
            api.patch(d, &PatchParams::default(), &patch).await.map_err(|e| err(&what, e))?
        };
        Ok(rollout_status(&live))
    }

    /// `<deployment>-canary` at 0 replicas (kept for inspection), its HPA removed first so it
    /// cannot scale it back up.
    async fn zero(&self) -> Res<WorkloadStatus> {
        self.delete_hpa().await?;
        let api = self.deployments().await?;
        let name = self.canary_name();
        let what = self.describe(&name);
        let Some(cur) = api.get_opt(&name).await.map_err(|e| err(&what, e))? else {
            return Ok(WorkloadStatus::Ready(format!("{name} does not exist")));
        };
        self.check_managed("Deployment", &cur.metadata)?;
        if cur.spec.replicas != Some(0) {
            let patch: Patch<Value> = Patch::Merge(json!({ "spec": { "replicas": 0 } }));
            api.patch(&name, &PatchParams::default(), &patch).await.map_err(|e| err(&what, e))?;
        }
        Ok(WorkloadStatus::Ready(format!("{name} at 0 replicas, kept")))
    }

    async fn retire(&self) -> Res<WorkloadStatus> {
        match self.spec.retire {
            Retire::ScaleToZero => self.zero().await,
            Retire::Keep => Ok(WorkloadStatus::Ready(format!("{} kept running (retire: keep)", self.canary_name()))),
            Retire::Delete => {
                self.delete_hpa().await?;
                let api = self.deployments().await?;
                let name = self.canary_name();
                let what = self.describe(&name);
                if let Some(cur) = api.get_opt(&name).await.map_err(|e| err(&what, e))? {
                    self.check_managed("Deployment", &cur.metadata)?;
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(err(&what, e)),
                    }
                }
                Ok(WorkloadStatus::Ready(format!("{name} deleted")))
            }
        }
    }
}

impl Workload for K8sWorkload {
    fn reconcile(&self, action: WorkloadAction) -> BoxFut<'_, Result<WorkloadStatus, WorkloadError>> {
        Box::pin(async move {
            let fut = async {
                match action {
                    WorkloadAction::Canary { weight } => self.canary(weight).await,
                    WorkloadAction::Stable => self.promote().await,
                    WorkloadAction::Zero => self.zero().await,
                    WorkloadAction::Retire => self.retire().await,
                    WorkloadAction::Route { .. } => {
                        Err(WorkloadError::Permanent("routing is the router's job, not the workload's".into()))
                    }
                }
            };
            kube_util::bounded("workload", async { fut.await.map_err(into_router) }).await.map_err(WorkloadError::from)
        })
    }
}

fn into_router(e: WorkloadError) -> crate::rollout::ports::RouterError {
    use crate::rollout::ports::RouterError;
    match e {
        WorkloadError::Transient(m) => RouterError::Transient(m),
        WorkloadError::Permanent(m) => RouterError::Permanent(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, replicas: i32, status: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": { "name": "agent-service-canary", "generation": generation },
            "spec": { "replicas": replicas, "selector": {}, "template": { "spec": { "containers": [
                { "name": "sidecar", "image": "proxy:1" }, { "name": "agent-service", "image": "a:v1" } ] } } },
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn rolled_out_is_judged_as_kubectl_rollout_status_does() {
        let ready = json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3 });
        assert!(matches!(rollout_status(&deployment(2, 3, ready.clone())), WorkloadStatus::Ready(_)));
        // The controller has not seen the latest spec yet.
        assert!(
            matches!(rollout_status(&deployment(3, 3, ready)), WorkloadStatus::Waiting(m) if m.contains("observed"))
        );
        let partial = json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2 });
        assert!(
            matches!(rollout_status(&deployment(2, 3, partial)), WorkloadStatus::Waiting(m) if m.contains("2 of 3 new"))
        );
        let old = json!({ "observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3 });
        assert!(
            matches!(rollout_status(&deployment(2, 3, old)), WorkloadStatus::Waiting(m) if m.contains("pending termination"))
        );
        let unavailable =
            json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 1 });
        assert!(
            matches!(rollout_status(&deployment(2, 3, unavailable)), WorkloadStatus::Waiting(m) if m.contains("1 of 3"))
        );
    }

    #[test]
    fn progressing_false_fails_with_its_reason_and_message() {
        let stuck = json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0,
            "conditions": [{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                             "message": "ReplicaSet \"x\" has timed out progressing." }] });
        let s = rollout_status(&deployment(1, 1, stuck));
        assert!(
            matches!(&s, WorkloadStatus::Failed(m) if m.contains("ProgressDeadlineExceeded") && m.contains("timed out")),
            "{s:?}"
        );
    }

    #[test]
    fn the_container_is_the_named_one_the_deployments_namesake_or_the_only_one() {
        let d = deployment(1, 1, json!({}));
        assert_eq!(container_index(&d, None, "agent-service"), Ok(1));
        assert_eq!(container_index(&d, Some("sidecar"), "agent-service"), Ok(0));
        assert!(container_index(&d, Some("nope"), "agent-service").unwrap_err().contains("sidecar, agent-service"));
        assert!(container_index(&d, None, "other").unwrap_err().contains("workload.container"));
    }
}
