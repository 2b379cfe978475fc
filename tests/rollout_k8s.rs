//! Whole rollouts through the real controller, driver and machine over the `istio` router and a real
//! Kubernetes API server: success, abort from 50 %, drift, a missing subset, the VirtualService
//! deleted mid-rollout, and a daemon restart that reads the live weights back first.

#[path = "support/k8s.rs"]
mod k8s;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vane::analysis::TimeOnly;
use vane::fixtures;
use vane::notify::{AlwaysOk, Silent};
use vane::policy::{Approval, Gate, OnDrift, Policy};
use vane::rollout::controller::Controller;
use vane::rollout::driver::{Env, SystemClock};
use vane::rollout::machine::Command;
use vane::rollout::{Phase, Rollout, RouterSpec};
use vane::store::Store;
use vane::telemetry::Metrics;
use vane::traffic::Routers;
use vane::traffic::k8s::{destination_rule, virtual_service};

const INTERVAL: Duration = Duration::from_millis(200);

fn vs_object() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": { "name": "agent-service", "labels": { "vane.dev/managed": "true" } },
        "spec": { "hosts": ["agent-service"], "http": [
            { "match": [{ "headers": { "canary": { "exact": "true" } } }],
              "route": [{ "destination": { "host": "agent-service", "subset": "v1-1-0" } }] },
            { "route": [
                { "destination": { "host": "agent-service", "subset": "v1-0-0" }, "weight": 100 },
                { "destination": { "host": "agent-service", "subset": "v1-1-0" }, "weight": 0 } ] } ] }
    })
}

fn dr_object(subsets: &[&str]) -> Value {
    let subsets: Vec<Value> = subsets.iter().map(|s| json!({ "name": s, "labels": { "version": s } })).collect();
    json!({ "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": { "name": "agent-service" }, "spec": { "host": "agent-service", "subsets": subsets } })
}

struct World {
    client: kube::Client,
    ns: String,
    c: Controller,
    metrics: Arc<Metrics>,
    _store: tempfile::TempDir,
}

fn env(client: kube::Client, store: &std::path::Path) -> (Arc<Env>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new(Duration::from_secs(3600)));
    let env = Env {
        store: Store::open(store).expect("store"),
        routers: Arc::new(Routers::with_kube_client(client)),
        workloads: Arc::new(vane::fixtures::NoWorkloads),
        analyzer: Arc::new(TimeOnly),
        hooks: Arc::new(AlwaysOk),
        notifier: Arc::new(Silent),
        metrics: metrics.clone(),
        clock: Arc::new(SystemClock),
    };
    (Arc::new(env), metrics)
}

async fn world(test: &str, subsets: &[&str], policies: Vec<Policy>) -> World {
    let client = k8s::shared_client().await;
    let ns = k8s::namespace(test);
    for (ar, obj) in [(virtual_service(), vs_object()), (destination_rule(), dr_object(subsets))] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        api.create(&PostParams::default(), &serde_json::from_value(obj).unwrap()).await.expect("create");
    }
    let dir = tempfile::tempdir().unwrap();
    let (env, metrics) = env(client.clone(), dir.path());
    World { client, ns, c: Controller::new(env, policies), metrics, _store: dir }
}

fn canary(name: &str) -> Policy {
    fixtures::policy(name, &[5, 25, 50, 100], INTERVAL, 2)
}

fn gated(name: &str, at: u8) -> Policy {
    Policy {
        gates: vec![Gate { at, approval: Approval::Manual, timeout: Duration::from_secs(3600), approvers: vec![] }],
        ..canary(name)
    }
}

impl World {
    fn vs_api(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, &virtual_service())
    }

    async fn weights(&self) -> (i64, i64) {
        weights(&self.vs_api()).await
    }

    async fn start(&self, policy: &str) -> String {
        let mut req = fixtures::request("agent-service", policy);
        req.namespace = self.ns.clone();
        req.router = RouterSpec::Istio {
            virtual_service: "agent-service".into(),
            route: None,
            stable_subset: "v1-0-0".into(),
            canary_subset: "v1-1-0".into(),
        };
        self.c.create(req, "ci", None).await.expect("created").0.id
    }

    async fn until(&self, id: &str, what: &str, f: impl Fn(&Rollout) -> bool) -> Rollout {
        k8s::until(&self.c, id, what, f).await
    }

    fn events(&self, id: &str) -> Vec<(String, Value)> {
        self.c.events(id).unwrap().into_iter().map(|e| (e.kind, e.details)).collect()
    }

    /// Edit the weights by hand, as someone with kubectl would.
    async fn edit_by_hand(&self, stable: i64, canary: i64) {
        let p = json!([
            { "op": "replace", "path": "/spec/http/1/route/0/weight", "value": stable },
            { "op": "replace", "path": "/spec/http/1/route/1/weight", "value": canary } ]);
        let p: Patch<()> = Patch::Json(serde_json::from_value(p).unwrap());
        self.vs_api().patch("agent-service", &PatchParams::default(), &p).await.expect("hand edit");
    }
}

async fn weights(api: &Api<DynamicObject>) -> (i64, i64) {
    let vs = api.get("agent-service").await.expect("VirtualService readable");
    let w = |i: usize| vs.data.pointer(&format!("/spec/http/1/route/{i}/weight")).and_then(Value::as_i64).unwrap_or(-1);
    (w(0), w(1))
}

#[tokio::test]
async fn canary_5_25_50_100_succeeds_and_leaves_all_traffic_on_the_new_version() {
    let w = world("e2e-success", &["v1-0-0", "v1-1-0"], vec![canary("canary")]).await;
    // Sample the live object while the rollout runs: every step stays for at least one interval.
    let api = w.vs_api();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = k8s::sample(done.clone(), move || {
        let api = api.clone();
        async move { weights(&api).await }
    });
    let id = w.start("canary").await;
    let r = w.until(&id, "Succeeded", |r| r.is_terminal()).await;
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(sampler.await.unwrap(), vec![(100, 0), (95, 5), (75, 25), (50, 50), (0, 100)], "live weights, in order");
    assert_eq!(w.weights().await, (0, 100));
    let set: Vec<i64> =
        w.events(&id).iter().filter(|(k, _)| k == "weight-set").filter_map(|(_, d)| d["canary"].as_i64()).collect();
    assert_eq!(set, vec![5, 25, 50, 100]);
    let vs = w.vs_api().get("agent-service").await.unwrap();
    assert_eq!(vs.data["spec"]["http"][0], vs_object()["spec"]["http"][0], "the header route is untouched");
    assert!(
        w.metrics.encode().contains(r#"vane_router_requests_total{router="istio",result="ok"} 5"#),
        "validate + 4 shifts"
    );
}

#[tokio::test]
async fn abort_at_50_rolls_all_traffic_back() {
    let w = world("e2e-abort", &["v1-0-0", "v1-1-0"], vec![gated("gate50", 50)]).await;
    let id = w.start("gate50").await;
    w.until(&id, "the gate at 50%", |r| r.phase == Phase::AwaitingApproval && r.applied_weight == Some(50)).await;
    assert_eq!(w.weights().await, (50, 50));
    w.c.command(&id, Command::Abort { reason: Some("bad canary".into()) }, "sre").await.unwrap();
    let r = w.until(&id, "Aborted", |r| r.is_terminal()).await;
    assert_eq!(r.phase, Phase::Aborted, "{}", r.message);
    assert_eq!(w.weights().await, (100, 0));
}

#[tokio::test]
async fn drift_is_corrected_and_recorded() {
    let w = world("e2e-drift", &["v1-0-0", "v1-1-0"], vec![gated("gate25", 25)]).await;
    let id = w.start("gate25").await;
    w.until(&id, "the gate at 25%", |r| r.phase == Phase::AwaitingApproval).await;
    w.edit_by_hand(90, 10).await;
    w.until(&id, "a drift event", |_| w.events(&id).iter().any(|(k, _)| k == "drift")).await;
    let drift = w.events(&id).into_iter().find(|(k, _)| k == "drift").unwrap().1;
    assert_eq!((drift["observed"].as_i64(), drift["decided"].as_i64()), (Some(10), Some(25)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while w.weights().await != (75, 25) {
        assert!(tokio::time::Instant::now() < deadline, "drift not corrected: {:?}", w.weights().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(w.c.get(&id).unwrap().phase, Phase::AwaitingApproval, "onDrift: correct keeps going");
    w.c.command(&id, Command::Abort { reason: None }, "sre").await.unwrap();
    w.until(&id, "Aborted", |r| r.is_terminal()).await;
}

#[tokio::test]
async fn drift_pauses_when_the_policy_says_so() {
    let policy = Policy { on_drift: OnDrift::Pause, ..gated("gate25-pause", 25) };
    let w = world("e2e-drift-pause", &["v1-0-0", "v1-1-0"], vec![policy]).await;
    let id = w.start("gate25-pause").await;
    w.until(&id, "the gate at 25%", |r| r.phase == Phase::AwaitingApproval).await;
    w.edit_by_hand(50, 50).await;
    let r = w.until(&id, "Paused", |r| r.phase == Phase::Paused).await;
    assert!(r.message.contains("edited by hand"), "{}", r.message);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while w.weights().await != (75, 25) {
        assert!(tokio::time::Instant::now() < deadline, "decided weights not re-applied: {:?}", w.weights().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.c.command(&id, Command::Abort { reason: None }, "sre").await.unwrap();
    w.until(&id, "Aborted", |r| r.is_terminal()).await;
}

#[tokio::test]
async fn a_missing_subset_fails_the_rollout_before_any_traffic_moves() {
    let w = world("e2e-subset", &["v1-0-0"], vec![canary("canary")]).await;
    let before = w.vs_api().get("agent-service").await.unwrap().metadata.resource_version;
    let id = w.start("canary").await;
    let r = w.until(&id, "Failed", |r| r.is_terminal()).await;
    assert_eq!(r.phase, Phase::Failed);
    assert!(r.message.contains("no subset \"v1-1-0\"") && r.message.contains("no traffic was moved"), "{}", r.message);
    assert_eq!(w.vs_api().get("agent-service").await.unwrap().metadata.resource_version, before, "never written");
}

#[tokio::test]
async fn a_deleted_virtual_service_keeps_the_rollback_retrying_until_it_is_back() {
    let w = world("e2e-deleted", &["v1-0-0", "v1-1-0"], vec![gated("gate25", 25)]).await;
    let id = w.start("gate25").await;
    w.until(&id, "the gate at 25%", |r| r.phase == Phase::AwaitingApproval).await;
    w.vs_api().delete("agent-service", &DeleteParams::default()).await.unwrap();
    w.c.command(&id, Command::Abort { reason: None }, "sre").await.unwrap();
    let r = w.until(&id, "a router error", |r| r.message.contains("not found")).await;
    assert_eq!(r.phase, Phase::RollingBack, "{}", r.message);
    assert!(r.message.contains(&format!("VirtualService {}/agent-service not found", w.ns)), "{}", r.message);
    assert!(r.message.contains("rollback NOT complete"), "{}", r.message);
    let m = w.metrics.encode();
    assert!(
        m.contains(r#"vane_router_requests_total{router="istio",result="error"}"#)
            && !m.contains(r#"vane_router_requests_total{router="istio",result="error"} 0"#),
        "router errors are counted: {m}"
    );
    // Someone restores the object: the next retry completes the rollback.
    let obj: DynamicObject = serde_json::from_value(vs_object()).unwrap();
    let mut obj = obj;
    obj.data["spec"]["http"][1]["route"][0]["weight"] = json!(75);
    obj.data["spec"]["http"][1]["route"][1]["weight"] = json!(25);
    w.vs_api().create(&PostParams::default(), &obj).await.unwrap();
    let r = w.until(&id, "Aborted", |r| r.is_terminal()).await;
    assert_eq!(r.phase, Phase::Aborted, "{}", r.message);
    assert_eq!(w.weights().await, (100, 0));
}

/// A daemon restart: the first controller runs on its own runtime, which is then shut down (as the
/// process would be); someone edits the weights meanwhile; the second controller reads them back
/// before it re-applies anything.
#[test]
fn restart_reads_the_live_weights_back_before_reapplying() {
    let store = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, ns, id) = rt.block_on(async {
        let w = world("e2e-restart", &["v1-0-0", "v1-1-0"], vec![gated("gate25", 25)]).await;
        let (env, _) = env(w.client.clone(), store.path());
        let c = Controller::new(env, vec![gated("gate25", 25)]);
        let mut req = fixtures::request("agent-service", "gate25");
        req.namespace = w.ns.clone();
        req.router = RouterSpec::Istio {
            virtual_service: "agent-service".into(),
            route: None,
            stable_subset: "v1-0-0".into(),
            canary_subset: "v1-1-0".into(),
        };
        let id = c.create(req, "ci", None).await.unwrap().0.id;
        k8s::until(&c, &id, "the gate at 25%", |r| r.phase == Phase::AwaitingApproval).await;
        (k8s::shared_url().await, w.ns.clone(), id)
    });
    rt.shutdown_timeout(Duration::from_secs(5));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = k8s::client_for(&url);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &virtual_service());
        let p: Patch<()> = Patch::Json(
            serde_json::from_value(json!([
            { "op": "replace", "path": "/spec/http/1/route/0/weight", "value": 60 },
            { "op": "replace", "path": "/spec/http/1/route/1/weight", "value": 40 } ]))
            .unwrap(),
        );
        api.patch("agent-service", &PatchParams::default(), &p).await.unwrap();
        let (env, _) = env(client, store.path());
        let c = Controller::new(env, vec![gated("gate25", 25)]);
        assert_eq!(c.resume_all().unwrap(), 1);
        k8s::until(&c, &id, "the recovery", |_| c.events(&id).unwrap().iter().any(|e| e.kind == "recovered")).await;
        let rec = c.events(&id).unwrap().into_iter().find(|e| e.kind == "recovered").unwrap();
        assert_eq!(rec.details["observed"], json!(40), "the live weight was read back first");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while weights(&api).await != (75, 25) {
            assert!(tokio::time::Instant::now() < deadline, "decided weight not re-applied: {:?}", weights(&api).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.command(&id, Command::Abort { reason: None }, "sre").await.unwrap();
        k8s::until(&c, &id, "Aborted", |r| r.is_terminal()).await;
        assert_eq!(weights(&api).await, (100, 0));
    });
}
