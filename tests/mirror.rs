//! The policy's `mirror` on the `istio` and `gateway-api` routers against the real API server (with
//! the real Gateway API CRDs): the mirror is written next to the weights without moving them, any
//! weight write removes it, and a bad canary under mirroring is rolled back through the whole
//! controller with the weighted route never having moved and the objects as they were.

#[path = "support/k8s.rs"]
mod k8s;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject};
use serde_json::{Value, json};
use vane::analysis::Verdict;
use vane::fixtures::{self, ScriptedAnalyzer};
use vane::policy::{Mirror, Policy};
use vane::rollout::{Phase, RouterSpec, machine};
use vane::traffic::k8s::{destination_rule, http_route, service, virtual_service};
use vane::traffic::{Router, RouterFactory, Routers};

fn vs() -> Value {
    json!({ "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
            "metadata": { "name": "agent-service", "labels": { "vane.dev/managed": "true" } },
            "spec": { "hosts": ["agent-service"], "http": [
                { "name": "primary", "timeout": "30s", "route": [
                    { "destination": { "host": "agent-service", "subset": "v1-0-0" }, "weight": 100 },
                    { "destination": { "host": "agent-service", "subset": "v1-1-0" }, "weight": 0 } ] } ] } })
}

fn dr() -> Value {
    json!({ "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": { "name": "agent-service", "labels": { "vane.dev/managed": "true" } },
            "spec": { "host": "agent-service", "subsets": [
                { "name": "v1-0-0", "labels": { "version": "v1.0.0" } },
                { "name": "v1-1-0", "labels": { "version": "v1.1.0" } } ] } })
}

/// Without filters on the weighted rule: the mirror filter is the only one, and must go entirely.
fn route() -> Value {
    json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "agent-service", "labels": { "vane.dev/managed": "true" } },
            "spec": { "parentRefs": [{ "name": "edge" }], "rules": [
                { "matches": [{ "path": { "type": "PathPrefix", "value": "/api" } }],
                  "backendRefs": [{ "name": "agent-service-blue", "port": 8080, "weight": 100 },
                                  { "name": "agent-service-green", "port": 8080, "weight": 0 }] } ] } })
}

struct Case {
    client: kube::Client,
    ns: String,
    ar: ApiResource,
    spec: RouterSpec,
    /// JSON pointer of the weighted pair.
    pair: &'static str,
    /// JSON pointer of the weighted route/rule.
    weighted: &'static str,
    before: DynamicObject,
}

async fn istio(test: &str) -> Case {
    let client = k8s::shared_client().await;
    let ns = k8s::namespace(test);
    k8s::create(&client, &ns, &destination_rule(), dr()).await;
    let before = k8s::create(&client, &ns, &virtual_service(), vs()).await;
    let spec = RouterSpec::Istio {
        virtual_service: "agent-service".into(),
        route: None,
        stable_subset: "v1-0-0".into(),
        canary_subset: "v1-1-0".into(),
    };
    Case { client, ns, ar: virtual_service(), spec, pair: "/spec/http/0/route", weighted: "/spec/http/0", before }
}

async fn gateway(test: &str) -> Case {
    let client = k8s::gateway_api_client().await;
    let ns = k8s::namespace(test);
    for name in ["agent-service-blue", "agent-service-green"] {
        let svc = json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name },
                          "spec": { "ports": [{ "port": 8080 }] } });
        k8s::create(&client, &ns, &service(), svc).await;
    }
    let before = k8s::create(&client, &ns, &http_route(), route()).await;
    let spec = k8s::gateway_api_router(false);
    Case { client, ns, ar: http_route(), spec, pair: "/spec/rules/0/backendRefs", weighted: "/spec/rules/0", before }
}

impl Case {
    async fn read(&self) -> DynamicObject {
        Api::<DynamicObject>::namespaced_with(self.client.clone(), &self.ns, &self.ar)
            .get("agent-service")
            .await
            .expect("object readable")
    }

    fn router(&self, policy: Policy) -> Arc<dyn Router> {
        let mut req = fixtures::request("agent-service", &policy.name);
        req.namespace = self.ns.clone();
        req.router = self.spec.clone();
        let (rollout, _) = machine::create("r".into(), &req, policy, "test", 0);
        Routers::with_kube_client(self.client.clone()).build(&rollout).expect("router builds")
    }

    fn weights(&self, o: &DynamicObject) -> (i64, i64) {
        let w = |i: usize| o.data.pointer(&format!("{}/{i}/weight", self.pair)).and_then(Value::as_i64).unwrap_or(-1);
        (w(0), w(1))
    }

    /// The object as JSON, without what the server changes on every write, weights set to these.
    fn comparable(&self, o: &DynamicObject, weights: (i64, i64)) -> Value {
        let mut v = serde_json::to_value(o).unwrap();
        let meta = v["metadata"].as_object_mut().unwrap();
        for k in ["resourceVersion", "generation", "managedFields"] {
            meta.remove(k);
        }
        *v.pointer_mut(&format!("{}/0/weight", self.pair)).unwrap() = json!(weights.0);
        *v.pointer_mut(&format!("{}/1/weight", self.pair)).unwrap() = json!(weights.1);
        v
    }

    /// The mirror on the weighted route, as (target name or subset, percent).
    fn mirror(&self, o: &DynamicObject) -> Option<(String, i64)> {
        let w = o.data.pointer(self.weighted)?;
        if let Some(m) = w.get("mirror") {
            let pct = w.pointer("/mirrorPercentage/value").and_then(Value::as_i64).unwrap_or(-1);
            return Some((m["subset"].as_str()?.to_string(), pct));
        }
        let f = w.get("filters")?.as_array()?.iter().find(|f| f["type"] == "RequestMirror")?;
        Some((
            f.pointer("/requestMirror/backendRef/name")?.as_str()?.to_string(),
            f["requestMirror"]["percent"].as_i64()?,
        ))
    }
}

fn policy() -> Policy {
    Policy {
        mirror: Some(Mirror { percent: 50, duration: Duration::from_millis(1500) }),
        ..fixtures::policy("mirror", &[5, 25, 50, 100], Duration::from_millis(200), 2)
    }
}

async fn mirror_then_weights(c: Case, canary: &str) {
    let router = c.router(policy());
    router.validate().await.unwrap();
    router.set_mirror(50).await.expect("mirror on");
    let on = c.read().await;
    assert_eq!(c.mirror(&on), Some((canary.to_string(), 50)));
    assert_eq!(c.weights(&on), (100, 0), "mirroring moves no weight");
    let rv = on.metadata.resource_version.clone();
    router.set_mirror(50).await.unwrap();
    assert_eq!(c.read().await.metadata.resource_version, rv, "idempotent");
    // The first step ends the mirror in the same write.
    router.set_weight(5).await.unwrap();
    let step = c.read().await;
    assert_eq!(c.mirror(&step), None);
    assert_eq!(c.comparable(&step, (0, 0)), c.comparable(&c.before, (0, 0)), "as before except the weights");
    assert_eq!(c.weights(&step), (95, 5));
    // So does a rollback from the mirror stage.
    router.set_mirror(10).await.unwrap();
    assert_eq!(c.mirror(&c.read().await), Some((canary.to_string(), 10)));
    router.set_weight(0).await.unwrap();
    assert_eq!(c.comparable(&c.read().await, (100, 0)), c.comparable(&c.before, (100, 0)));
}

#[tokio::test]
async fn istio_mirror_is_set_beside_the_weights_and_removed_by_the_next_weight_write() {
    mirror_then_weights(istio("istio-mirror").await, "v1-1-0").await;
}

#[tokio::test]
async fn gateway_api_mirror_filter_is_set_and_removed_by_the_next_weight_write() {
    mirror_then_weights(gateway("gateway-mirror").await, "agent-service-green").await;
}

#[tokio::test]
async fn istio_does_not_replace_a_users_own_mirror() {
    let client = k8s::shared_client().await;
    let ns = k8s::namespace("istio-user-mirror");
    k8s::create(&client, &ns, &destination_rule(), dr()).await;
    let mut obj = vs();
    obj["spec"]["http"][0]["mirror"] = json!({ "host": "shadow-analytics" });
    let before = k8s::create(&client, &ns, &virtual_service(), obj).await;
    let spec = istio("unused").await.spec;
    let c =
        Case { client, ns, ar: virtual_service(), spec, pair: "/spec/http/0/route", weighted: "/spec/http/0", before };
    let e = c.router(policy()).set_mirror(50).await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("shadow-analytics"), "{e}");
    c.router(policy()).set_weight(5).await.unwrap();
    let now = c.read().await;
    assert_eq!(now.data["spec"]["http"][0]["mirror"], json!({ "host": "shadow-analytics" }), "the user's mirror stays");
}

/// A bad canary under mirroring, through the controller: RolledBack, the weighted route never moved
/// (sampled every 10 ms), the mirror seen while it ran and gone after.
async fn bad_canary_is_rolled_back_unseen(c: Case) {
    let analyzer = Arc::new(ScriptedAnalyzer::default());
    analyzer.set_default(Verdict::Fail);
    let dir = tempfile::tempdir().unwrap();
    let (ctl, _) = k8s::controller_with(c.client.clone(), dir.path(), vec![policy()], analyzer.clone());
    let api: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &c.ns, &c.ar);
    let done = Arc::new(AtomicBool::new(false));
    let (pair, weighted) = (c.pair, c.weighted);
    let sampler = k8s::sample(done.clone(), move || {
        let api = api.clone();
        async move {
            let o = api.get("agent-service").await.expect("readable");
            let w = |i: usize| o.data.pointer(&format!("{pair}/{i}/weight")).and_then(Value::as_i64);
            let rule = o.data.pointer(weighted).cloned().unwrap_or_default();
            let mirrored = rule.get("mirror").is_some()
                || rule["filters"].as_array().is_some_and(|f| f.iter().any(|f| f["type"] == "RequestMirror"));
            (w(0), w(1), mirrored)
        }
    });
    let mut req = fixtures::request("agent-service", "mirror");
    req.namespace = c.ns.clone();
    req.router = c.spec.clone();
    let id = ctl.create(req, "ci", None).await.expect("created").0.id;
    let r = k8s::until(&ctl, &id, "the end", |r| r.is_terminal()).await;
    done.store(true, Ordering::Relaxed);
    assert_eq!(r.phase, Phase::RolledBack, "{}", r.message);
    let seen = sampler.await.unwrap();
    assert!(seen.iter().all(|(s, c, _)| (*s, *c) == (Some(100), Some(0))), "the weights never moved: {seen:?}");
    assert!(seen.iter().any(|(_, _, m)| *m), "the mirror was on at some point: {seen:?}");
    assert_eq!(seen.last().map(|s| s.2), Some(false), "and is gone at the end");
    let kinds: Vec<String> = ctl.events(&id).unwrap().into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&"mirror".to_string()) && !kinds.contains(&"step".to_string()), "{kinds:?}");
    assert!(analyzer.calls.load(Ordering::SeqCst) >= 2, "the mirrored canary was analysed");
    assert_eq!(c.comparable(&c.read().await, (100, 0)), c.comparable(&c.before, (100, 0)), "the object is as before");
}

#[tokio::test]
async fn istio_bad_canary_under_mirroring_is_rolled_back_before_any_user_saw_it() {
    bad_canary_is_rolled_back_unseen(istio("istio-mirror-bad").await).await;
}

#[tokio::test]
async fn gateway_api_bad_canary_under_mirroring_is_rolled_back_before_any_user_saw_it() {
    bad_canary_is_rolled_back_unseen(gateway("gateway-mirror-bad").await).await;
}
