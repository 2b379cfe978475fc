//! What the workload-release tests share: the deployment standard's Deployment, a controller (what
//! a daemon runs) with an analyzer that fails at one chosen weight, and the seed's `workload`.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use vane::BoxFut;
use vane::fixtures;
use vane::notify::{AlwaysOk, Silent};
use vane::rollout::controller::Controller;
use vane::rollout::driver::{Env, SystemClock};
use vane::rollout::ports::{AnalysisContext, AnalysisReport, Analyzer, Verdict};
use vane::rollout::spec::{CanaryScale, Retire, WorkloadSpec};
use vane::store::Store;
use vane::telemetry::Metrics;
use vane::traffic::Routers;
use vane::workload::K8sWorkloads;

pub const INTERVAL: Duration = Duration::from_millis(200);
pub const IMAGE: &str = "aiworkflow.azurecr.io/agent-service";

/// A release test's namespace, the controller under test and the test deployment controller that
/// plays the cluster's part (dropped with it).
pub struct World {
    pub client: kube::Client,
    pub ns: String,
    pub c: Controller,
    pub _controller: crate::deploy_controller::DeploymentController,
    pub _store: tempfile::TempDir,
}

/// Passes every analysis except at one weight.
pub struct FailAt(pub Option<u8>);

impl Analyzer for FailAt {
    fn analyse(&self, ctx: AnalysisContext) -> BoxFut<'_, AnalysisReport> {
        let fail = self.0 == Some(ctx.rollout.canary_weight);
        let verdict = if fail { Verdict::Fail } else { Verdict::Pass };
        let summary = if fail { "request-success-rate 90 < 99".into() } else { String::new() };
        Box::pin(async move { AnalysisReport { at: ctx.now, verdict, metrics: vec![], summary } })
    }
}

/// agent-service v1.0.0 × 5, opted in (`vane.dev/managed`): vane may promote it in place.
pub fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "agent-service", "labels": { "app": "agent-service", "vane.dev/managed": "true" } },
        "spec": {
            "replicas": 5,
            "selector": { "matchLabels": { "app": "agent-service" } },
            "template": {
                "metadata": { "labels": { "app": "agent-service", "version": "v1.0.0" } },
                "spec": { "containers": [{
                    "name": "agent-service", "image": format!("{IMAGE}:v1.0.0"),
                    "resources": { "requests": { "cpu": "500m", "memory": "1Gi" } } }] } } }
    })
}

/// An HPA on agent-service (min 3, max 20).
pub fn hpa() -> Value {
    json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": { "name": "agent-service-hpa" },
        "spec": { "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": "agent-service" },
                  "minReplicas": 3, "maxReplicas": 20,
                  "metrics": [{ "type": "Resource", "resource": { "name": "cpu",
                                "target": { "type": "Utilization", "averageUtilization": 70 } } }] }
    })
}

/// Create `objects` in namespace `ns`.
pub async fn create_all(client: &kube::Client, ns: &str, objects: Vec<(kube::api::ApiResource, Value)>) {
    use kube::api::{Api, DynamicObject, PostParams};
    for (ar, obj) in objects {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        api.create(&PostParams::default(), &serde_json::from_value(obj).unwrap()).await.expect("create");
    }
}

/// A controller (what a daemon runs) over the store in `store`.
pub fn controller_for(client: kube::Client, store: &std::path::Path, fail_at: Option<u8>) -> Controller {
    let routers = Routers::with_kube_client(client);
    let env = Env {
        store: Store::open(store).expect("store"),
        workloads: Arc::new(K8sWorkloads::new(routers.kube())),
        routers: Arc::new(routers),
        analyzer: Arc::new(FailAt(fail_at)),
        hooks: Arc::new(AlwaysOk),
        notifier: Arc::new(Silent),
        metrics: Arc::new(Metrics::new(Duration::from_secs(3600))),
        clock: Arc::new(SystemClock),
    };
    let policies = vec![
        fixtures::policy("canary", &[5, 25, 50, 100], INTERVAL, 1),
        fixtures::blue_green("blue-green", INTERVAL, Duration::from_millis(600)),
    ];
    Controller::new(Arc::new(env), policies)
}

pub fn workload(image_tag: &str) -> WorkloadSpec {
    WorkloadSpec {
        deployment: "agent-service".into(),
        image: format!("{IMAGE}:{image_tag}"),
        container: None,
        canary_scale: CanaryScale::Proportional,
        ready_timeout: Duration::from_secs(3),
        retire: Retire::ScaleToZero,
        retire_after: Duration::from_millis(300),
    }
}

/// `xs` without consecutive repeats: what a sampled value went through.
pub fn dedup<T: PartialEq + Clone>(xs: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = vec![];
    for x in xs {
        if out.last() != Some(&x) {
            out.push(x);
        }
    }
    out
}
