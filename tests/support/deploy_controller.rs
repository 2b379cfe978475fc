//! A test "deployment controller" for the test API server, which runs none: it watches the
//! Deployments of one namespace and writes their `status` as Kubernetes' controller would once the
//! pods are up, so `kubectl rollout status` (and vane) can judge them.
//!
//! The image tag decides how the pods fare: a tag containing `crashloop` never becomes available
//! and gets `Progressing=False, reason ProgressDeadlineExceeded`; a tag containing `slow` takes
//! [`SLOW`]; anything else is rolled out after [`ROLLOUT`].

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use kube::api::{Api, ListParams, Patch, PatchParams};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub const ROLLOUT: Duration = Duration::from_millis(150);
pub const SLOW: Duration = Duration::from_secs(120);

/// The running controller; dropping it stops it.
pub struct DeploymentController(JoinHandle<()>);

impl Drop for DeploymentController {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn start(client: kube::Client, namespace: &str) -> DeploymentController {
    let api: Api<Deployment> = Api::namespaced(client, namespace);
    DeploymentController(tokio::spawn(async move {
        // (name, generation, replicas) → when this spec was first seen.
        let mut seen: HashMap<(String, i64, i32), Instant> = HashMap::new();
        loop {
            if let Ok(list) = api.list(&ListParams::default()).await {
                for d in list.items {
                    reconcile(&api, &d, &mut seen).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }))
}

fn tag(d: &Deployment) -> String {
    let image = d.spec.template.spec.as_ref().and_then(|p| p.containers.first()).and_then(|c| c.image.clone());
    let image = image.unwrap_or_default();
    image.rsplit_once(':').map(|(_, t)| t.to_string()).unwrap_or_default()
}

fn condition(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    DeploymentCondition {
        type_: Some(type_.into()),
        status: Some(status.into()),
        reason: Some(reason.into()),
        message: Some(message),
        ..Default::default()
    }
}

async fn reconcile(api: &Api<Deployment>, d: &Deployment, seen: &mut HashMap<(String, i64, i32), Instant>) {
    let name = d.metadata.name.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    let replicas = d.spec.replicas.unwrap_or(1);
    let first = *seen.entry((name.clone(), generation, replicas)).or_insert_with(Instant::now);
    let tag = tag(d);
    let rs = format!("{name}-{generation:x}");
    let status = if tag.contains("crashloop") {
        DeploymentStatus {
            observed_generation: Some(generation),
            replicas: Some(replicas),
            updated_replicas: Some(replicas),
            ready_replicas: Some(0),
            available_replicas: Some(0),
            unavailable_replicas: Some(replicas),
            conditions: Some(vec![condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs}\" has timed out progressing."),
            )]),
            ..Default::default()
        }
    } else {
        let delay = if tag.contains("slow") { SLOW } else { ROLLOUT };
        if first.elapsed() < delay {
            return;
        }
        DeploymentStatus {
            observed_generation: Some(generation),
            replicas: Some(replicas),
            updated_replicas: Some(replicas),
            ready_replicas: Some(replicas),
            available_replicas: Some(replicas),
            conditions: Some(vec![
                condition(
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.".into(),
                ),
                condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{rs}\" has successfully progressed."),
                ),
            ]),
            ..Default::default()
        }
    };
    if d.status.as_ref() == Some(&status) {
        return;
    }
    let patch = Patch::Merge(serde_json::json!({ "status": status }));
    let _ = api.patch_status(&name, &PatchParams::default(), &patch).await;
}
