//! Kubernetes Events on the objects vane changes, so that `kubectl describe virtualservice checkout`
//! and `kubectl get events` show what vane did to traffic and for which rollout. Best effort: an Event
//! that cannot be written is logged and never fails the traffic change it describes.

use std::sync::{Arc, Mutex};

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::json;

use super::k8s::{self, KubeAccess};
use super::{Router, RouterError};
use crate::BoxFut;
use crate::policy::Strategy;
use crate::rollout::ports::RouteShape;
use crate::rollout::{Rollout, RouterSpec};

/// The object whose weights a router writes.
pub struct Target {
    pub resource: ApiResource,
    pub namespace: String,
    pub name: String,
}

/// The object whose weights the rollout's router writes (VirtualService, Ingress, HTTPRoute or
/// GRPCRoute), for a Kubernetes router.
pub fn target(r: &Rollout) -> Option<Target> {
    let (resource, name) = match &r.router {
        RouterSpec::Istio { virtual_service, .. } => (k8s::virtual_service(), virtual_service.clone()),
        RouterSpec::NginxIngress { ingress, canary_ingress, .. } => match (r.policy.strategy, canary_ingress) {
            (Strategy::Canary, Some(k)) => (k8s::ingress(), k.clone()),
            _ => (k8s::ingress(), ingress.clone()),
        },
        RouterSpec::GatewayApi { http_route: Some(name), .. } => (k8s::http_route(), name.clone()),
        RouterSpec::GatewayApi { grpc_route: Some(name), .. } => (k8s::grpc_route(), name.clone()),
        _ => return None,
    };
    Some(Target { resource, namespace: r.namespace.clone(), name })
}

/// A Kubernetes router that also records an Event (reason `TrafficShifted`) on its object each time
/// the weight it sets changes.
pub struct Evented {
    inner: Arc<dyn Router>,
    kube: Arc<KubeAccess>,
    target: Target,
    rollout: String,
    version: String,
    stable_version: String,
    /// The weight of the last Event: a re-applied weight (retry, drift correction) is not news.
    last: Mutex<Option<u8>>,
}

impl Evented {
    pub fn new(inner: Arc<dyn Router>, kube: Arc<KubeAccess>, target: Target, r: &Rollout) -> Evented {
        Evented {
            inner,
            kube,
            target,
            rollout: r.id.clone(),
            version: r.version.clone(),
            stable_version: r.stable_version.clone(),
            last: Mutex::new(None),
        }
    }

    async fn record(&self, canary: u8) -> Result<(), String> {
        let t = &self.target;
        let client = self.kube.client().await.map_err(|e| e.to_string())?;
        let obj = Api::<DynamicObject>::namespaced_with(client.clone(), &t.namespace, &t.resource)
            .get(&t.name)
            .await
            .map_err(|e| e.to_string())?;
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let message = format!(
            "rollout {}: {canary}% to {}, {}% to {}",
            self.rollout,
            self.version,
            100 - canary,
            self.stable_version
        );
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{}.{nanos:x}", t.name),
                "namespace": t.namespace,
                "labels": { "app.kubernetes.io/managed-by": "vane", "vane/rollout": self.rollout },
            },
            "involvedObject": {
                "apiVersion": t.resource.api_version,
                "kind": t.resource.kind,
                "name": t.name,
                "namespace": t.namespace,
                "uid": obj.metadata.uid,
                "resourceVersion": obj.metadata.resource_version,
            },
            "reason": "TrafficShifted",
            "message": message,
            "type": "Normal",
            "source": { "component": "vane" },
            "reportingComponent": "vane",
            "reportingInstance": "vane",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let event: DynamicObject = serde_json::from_value(event).map_err(|e| e.to_string())?;
        Api::<DynamicObject>::namespaced_with(client, &t.namespace, &k8s::event())
            .create(&PostParams::default(), &event)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl Router for Evented {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn validate(&self) -> BoxFut<'_, Result<(), RouterError>> {
        self.inner.validate()
    }

    fn set_weight(&self, canary: u8) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(async move {
            self.inner.set_weight(canary).await?;
            let news = match self.last.lock() {
                Ok(mut last) => last.replace(canary) != Some(canary),
                Err(_) => false,
            };
            if news && let Err(e) = self.record(canary).await {
                tracing::warn!(rollout = %self.rollout, object = %self.target.name, "cannot record a Kubernetes Event: {e}");
            }
            Ok(())
        })
    }

    fn observe(&self) -> BoxFut<'_, Result<Option<u8>, RouterError>> {
        self.inner.observe()
    }

    fn shape(&self, shape: RouteShape) -> BoxFut<'_, Result<(), RouterError>> {
        self.inner.shape(shape)
    }

    fn set_mirror(&self, percent: u8) -> BoxFut<'_, Result<(), RouterError>> {
        self.inner.set_mirror(percent)
    }
}
