//! The `istio` and `nginx-ingress` routers against a real Kubernetes API server (etcd + the CRD-only
//! apiserver built from tests/k8s-server), with the deployment standard's own objects: VirtualService
//! `agent-service` (a `canary: "true"` header route above the weighted v1-0-0 / v1-1-0 route), its
//! DestinationRule, and Ingress `agent-service-ingress` flipping agent-service-blue → green.

#[path = "support/k8s.rs"]
mod k8s;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vane::fixtures;
use vane::policy::Policy;
use vane::rollout::{RouterSpec, machine};
use vane::traffic::k8s::{destination_rule, ingress, virtual_service};
use vane::traffic::{Router, RouterFactory, Routers};

fn standard_vs() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": { "name": "agent-service", "labels": { "app": "agent-service", "vane.dev/managed": "true" } },
        "spec": {
            "hosts": ["agent-service"],
            "http": [
                { "match": [{ "headers": { "canary": { "exact": "true" } } }],
                  "route": [{ "destination": { "host": "agent-service", "subset": "v1-1-0" } }] },
                { "route": [
                    { "destination": { "host": "agent-service", "subset": "v1-0-0" }, "weight": 100 },
                    { "destination": { "host": "agent-service", "subset": "v1-1-0" }, "weight": 0 } ],
                  "timeout": "30s", "retries": { "attempts": 3, "perTryTimeout": "10s" } }
            ]
        }
    })
}

fn standard_dr(subsets: &[&str]) -> Value {
    let subsets: Vec<Value> =
        subsets.iter().map(|s| json!({ "name": s, "labels": { "version": s.replace('-', ".") } })).collect();
    json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
        "metadata": { "name": "agent-service" },
        "spec": { "host": "agent-service",
                  "trafficPolicy": { "loadBalancer": { "simple": "LEAST_REQUEST" },
                                     "outlierDetection": { "consecutiveErrors": 5, "interval": "30s" } },
                  "subsets": subsets }
    })
}

fn standard_ingress() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": "agent-service-ingress", "labels": { "vane.dev/managed": "true" },
            "annotations": { "nginx.ingress.kubernetes.io/upstream-vhost": "agent-service-blue.ai-workflow-prod.svc.cluster.local" } },
        "spec": { "ingressClassName": "nginx", "rules": [{ "host": "api.aiworkflow.com", "http": { "paths": [
            { "path": "/api/agents", "pathType": "Prefix",
              "backend": { "service": { "name": "agent-service-blue", "port": { "number": 8080 } } } } ] } }] }
    })
}

async fn create(client: &kube::Client, ns: &str, ar: &kube::api::ApiResource, obj: Value) -> DynamicObject {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &obj).await.expect("test object created")
}

async fn read(client: &kube::Client, ns: &str, ar: &kube::api::ApiResource, name: &str) -> DynamicObject {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar).get(name).await.expect("object readable")
}

/// The canary weight the VirtualService holds, checking the pair sums to 100.
async fn vs_weights(client: &kube::Client, ns: &str) -> (i64, i64) {
    let vs = read(client, ns, &virtual_service(), "agent-service").await;
    let w = |i: usize| vs.data.pointer(&format!("/spec/http/1/route/{i}/weight")).and_then(Value::as_i64).unwrap();
    (w(0), w(1))
}

/// The standard VirtualService's spec with the weighted route at stable/canary.
fn expected_spec(stable: i64, canary: i64) -> Value {
    let mut spec = standard_vs()["spec"].clone();
    spec["http"][1]["route"][0]["weight"] = json!(stable);
    spec["http"][1]["route"][1]["weight"] = json!(canary);
    spec
}

fn istio_spec() -> RouterSpec {
    RouterSpec::Istio {
        virtual_service: "agent-service".into(),
        route: None,
        stable_subset: "v1-0-0".into(),
        canary_subset: "v1-1-0".into(),
    }
}

fn build(client: kube::Client, ns: &str, spec: RouterSpec, policy: Policy) -> Arc<dyn Router> {
    let mut req = fixtures::request("agent-service", &policy.name);
    req.namespace = ns.into();
    req.router = spec;
    let (rollout, _) = machine::create("r".into(), &req, policy, "test", 0);
    Routers::with_kube_client(client).build(&rollout).expect("router builds")
}

fn canary_policy() -> Policy {
    fixtures::policy("canary", &[5, 25, 50, 100], Duration::from_millis(200), 2)
}

async fn istio_setup(test: &str) -> (kube::Client, String) {
    let client = k8s::shared_client().await;
    let ns = k8s::namespace(test);
    create(&client, &ns, &virtual_service(), standard_vs()).await;
    create(&client, &ns, &destination_rule(), standard_dr(&["v1-0-0", "v1-1-0"])).await;
    (client, ns)
}

#[tokio::test]
async fn istio_full_canary_moves_only_the_two_weights() {
    let (client, ns) = istio_setup("full-canary").await;
    let router = build(client.clone(), &ns, istio_spec(), canary_policy());
    router.validate().await.expect("both subsets exist");
    assert_eq!(router.observe().await, Ok(Some(0)));
    let before = read(&client, &ns, &virtual_service(), "agent-service").await;
    for w in [5u8, 25, 50, 100] {
        router.set_weight(w).await.unwrap_or_else(|e| panic!("set {w}: {e}"));
        let vs = read(&client, &ns, &virtual_service(), "agent-service").await;
        assert_eq!(
            vs.data["spec"],
            expected_spec(100 - w as i64, w as i64),
            "at {w}% everything but the two weights is untouched"
        );
        assert_eq!(vs.metadata.labels, before.metadata.labels);
        assert_eq!(router.observe().await, Ok(Some(w)));
    }
    // Idempotent: setting 100 again writes nothing (the resourceVersion does not move).
    let rv = read(&client, &ns, &virtual_service(), "agent-service").await.metadata.resource_version;
    router.set_weight(100).await.unwrap();
    assert_eq!(read(&client, &ns, &virtual_service(), "agent-service").await.metadata.resource_version, rv);
}

#[tokio::test]
async fn istio_rollback_from_50_restores_all_traffic_to_stable() {
    let (client, ns) = istio_setup("rollback-50").await;
    let router = build(client.clone(), &ns, istio_spec(), canary_policy());
    for w in [5u8, 25, 50] {
        router.set_weight(w).await.unwrap();
    }
    assert_eq!(vs_weights(&client, &ns).await, (50, 50));
    router.set_weight(0).await.unwrap();
    assert_eq!(read(&client, &ns, &virtual_service(), "agent-service").await.data["spec"], expected_spec(100, 0));
}

#[tokio::test]
async fn istio_missing_subset_is_refused_before_any_shift() {
    let client = k8s::shared_client().await;
    let ns = k8s::namespace("missing-subset");
    create(&client, &ns, &virtual_service(), standard_vs()).await;
    create(&client, &ns, &destination_rule(), standard_dr(&["v1-0-0"])).await;
    let router = build(client.clone(), &ns, istio_spec(), canary_policy());
    let e = router.validate().await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(e.to_string().contains("no subset \"v1-1-0\""), "{e}");
    assert_eq!(vs_weights(&client, &ns).await, (100, 0));
}

#[tokio::test]
async fn istio_without_a_destination_rule_is_refused() {
    let client = k8s::shared_client().await;
    let ns = k8s::namespace("no-dr");
    create(&client, &ns, &virtual_service(), standard_vs()).await;
    let e = build(client, &ns, istio_spec(), canary_policy()).validate().await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("no DestinationRule"), "{e}");
}

#[tokio::test]
async fn istio_virtual_service_deleted_mid_rollout_is_a_clear_error() {
    let (client, ns) = istio_setup("deleted").await;
    let router = build(client.clone(), &ns, istio_spec(), canary_policy());
    router.set_weight(5).await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &virtual_service());
    api.delete("agent-service", &DeleteParams::default()).await.unwrap();
    let e = router.set_weight(25).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert_eq!(
        e.to_string(),
        format!("VirtualService {ns}/agent-service not found (deleted, or wrong name/namespace?)")
    );
    assert!(router.observe().await.unwrap_err().to_string().contains("not found"));
}

#[tokio::test]
async fn istio_conflicting_writer_is_retried_and_both_writes_survive() {
    let (client, ns) = istio_setup("conflict").await;
    let (racy, patches) = k8s::interfering_client(client.clone(), ns.clone(), virtual_service(), "agent-service", 2);
    let router = build(racy, &ns, istio_spec(), canary_policy());
    router.set_weight(25).await.expect("conflicts are retried");
    // Two PATCHes met a changed object (422 from the failed `test` op), the third applied.
    assert_eq!(patches.load(Ordering::SeqCst), 3);
    let vs = read(&client, &ns, &virtual_service(), "agent-service").await;
    assert_eq!(vs.data["spec"], expected_spec(75, 25));
    let labels = vs.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("edited-by").map(String::as_str),
        Some("someone-else-1"),
        "the other writer's change is kept"
    );
    assert_eq!(labels.get("app").map(String::as_str), Some("agent-service"));
}

#[tokio::test]
async fn istio_free_running_concurrent_writer_never_loses_an_update() {
    let (client, ns) = istio_setup("race").await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &virtual_service());
    let writer = tokio::spawn(async move {
        for n in 0..60 {
            let bump = json!({ "metadata": { "annotations": { "bump": n.to_string() } } });
            api.patch("agent-service", &PatchParams::default(), &Patch::Merge(&bump)).await.expect("writer");
        }
    });
    let router = build(client.clone(), &ns, istio_spec(), canary_policy());
    for w in [5u8, 25, 50, 100, 0, 50] {
        router.set_weight(w).await.unwrap_or_else(|e| panic!("set {w}: {e}"));
        assert_eq!(vs_weights(&client, &ns).await, (100 - w as i64, w as i64));
    }
    writer.await.unwrap();
    let vs = read(&client, &ns, &virtual_service(), "agent-service").await;
    assert_eq!(vs.metadata.annotations.unwrap_or_default().get("bump").map(String::as_str), Some("59"));
    assert_eq!(vs.data["spec"], expected_spec(50, 50));
}

fn backend(o: &DynamicObject) -> String {
    o.data
        .pointer("/spec/rules/0/http/paths/0/backend/service/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn ann(o: &DynamicObject, k: &str) -> Option<String> {
    o.metadata.annotations.as_ref().and_then(|a| a.get(k).cloned())
}

#[tokio::test]
async fn nginx_ingress_blue_green_flips_and_flips_back() {
    let client = k8s::shared_client().await;
    let ns = k8s::namespace("blue-green");
    create(&client, &ns, &ingress(), standard_ingress()).await;
    let spec = RouterSpec::NginxIngress {
        ingress: "agent-service-ingress".into(),
        canary_ingress: None,
        canary_service: Some("agent-service-green".into()),
        stable_service: Some("agent-service-blue".into()),
    };
    let policy = fixtures::blue_green("bg", Duration::from_millis(200), Duration::from_millis(200));
    let router = build(client.clone(), &ns, spec, policy);
    router.validate().await.unwrap();
    assert_eq!(router.observe().await, Ok(Some(0)));
    router.set_weight(100).await.unwrap();
    let ing = read(&client, &ns, &ingress(), "agent-service-ingress").await;
    assert_eq!(backend(&ing), "agent-service-green");
    assert_eq!(
        ann(&ing, "nginx.ingress.kubernetes.io/upstream-vhost").as_deref(),
        Some("agent-service-green.ai-workflow-prod.svc.cluster.local")
    );
    assert_eq!(router.observe().await, Ok(Some(100)));
    router.set_weight(0).await.unwrap();
    let ing = read(&client, &ns, &ingress(), "agent-service-ingress").await;
    assert_eq!(ing.data["spec"], standard_ingress()["spec"], "flipped back exactly");
    assert_eq!(
        ann(&ing, "nginx.ingress.kubernetes.io/upstream-vhost").as_deref(),
        Some("agent-service-blue.ai-workflow-prod.svc.cluster.local")
    );
    assert!(router.set_weight(50).await.unwrap_err().is_permanent(), "a flip is 0 or 100");
}

#[tokio::test]
async fn nginx_ingress_canary_clones_steps_promotes_and_zeroes() {
    let client = k8s::shared_client().await;
    let ns = k8s::namespace("ingress-canary");
    create(&client, &ns, &ingress(), standard_ingress()).await;
    let spec = RouterSpec::NginxIngress {
        ingress: "agent-service-ingress".into(),
        canary_ingress: Some("agent-service-canary".into()),
        canary_service: Some("agent-service-green".into()),
        stable_service: None,
    };
    let router = build(client.clone(), &ns, spec, canary_policy());
    router.validate().await.unwrap();
    for w in [5u8, 25, 50] {
        router.set_weight(w).await.unwrap();
        let k = read(&client, &ns, &ingress(), "agent-service-canary").await;
        assert_eq!(backend(&k), "agent-service-green");
        assert_eq!(ann(&k, "nginx.ingress.kubernetes.io/canary").as_deref(), Some("true"));
        assert_eq!(ann(&k, "nginx.ingress.kubernetes.io/canary-weight"), Some(w.to_string()));
        assert_eq!(backend(&read(&client, &ns, &ingress(), "agent-service-ingress").await), "agent-service-blue");
        assert_eq!(router.observe().await, Ok(Some(w)));
    }
    // Success: the main Ingress serves the new version, the canary Ingress idles at 0.
    router.set_weight(100).await.unwrap();
    let main = read(&client, &ns, &ingress(), "agent-service-ingress").await;
    assert_eq!(backend(&main), "agent-service-green");
    let k = read(&client, &ns, &ingress(), "agent-service-canary").await;
    assert_eq!(ann(&k, "nginx.ingress.kubernetes.io/canary-weight").as_deref(), Some("0"));
    assert_eq!(router.observe().await, Ok(Some(100)));
    // An abort after the promotion (e.g. during Promoting) puts everything back.
    router.set_weight(0).await.unwrap();
    assert_eq!(read(&client, &ns, &ingress(), "agent-service-ingress").await.data["spec"], standard_ingress()["spec"]);
    assert_eq!(router.observe().await, Ok(Some(0)));
}

#[tokio::test]
async fn nginx_ingress_missing_main_ingress_is_refused() {
    let client = k8s::shared_client().await;
    let ns = k8s::namespace("no-ingress");
    let spec = RouterSpec::NginxIngress {
        ingress: "agent-service-ingress".into(),
        canary_ingress: Some("agent-service-canary".into()),
        canary_service: Some("agent-service-green".into()),
        stable_service: None,
    };
    let e = build(client, &ns, spec, canary_policy()).validate().await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("Ingress") && e.to_string().contains("not found"), "{e}");
}

/// `[kubernetes]` limits inside the router itself (they also bind rollouts resumed after the
/// configuration was narrowed): an unlabelled object is refused unless opt-in is off, and a
/// namespace outside the allow-list is refused before any request is made.
#[tokio::test]
async fn routers_honour_opt_in_and_the_namespace_allow_list() {
    let client = k8s::shared_client().await;
    let ns = k8s::namespace("opt-in");
    let mut vs = standard_vs();
    vs["metadata"]["labels"] = json!({ "app": "agent-service" });
    create(&client, &ns, &virtual_service(), vs).await;
    create(&client, &ns, &destination_rule(), standard_dr(&["v1-0-0", "v1-1-0"])).await;
    let router = |settings: vane::config::Kubernetes| {
        let mut req = fixtures::request("agent-service", "canary");
        req.namespace = ns.clone();
        req.router = istio_spec();
        let (rollout, _) = machine::create("r".into(), &req, canary_policy(), "test", 0);
        Routers::with_kube_client_and(client.clone(), &settings).build(&rollout).expect("router builds")
    };
    let rv = read(&client, &ns, &virtual_service(), "agent-service").await.metadata.resource_version;
    let strict = router(Default::default());
    for e in [strict.validate().await.unwrap_err(), strict.set_weight(5).await.unwrap_err()] {
        assert!(e.is_permanent() && e.to_string().contains("vane.dev/managed"), "{e}");
    }
    assert_eq!(read(&client, &ns, &virtual_service(), "agent-service").await.metadata.resource_version, rv);
    let elsewhere = router(vane::config::Kubernetes {
        namespaces: vane::scope::Namespaces(vec!["payments-*".into()]),
        require_opt_in: false,
        ..Default::default()
    });
    let e = elsewhere.set_weight(5).await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("payments-*"), "{e}");
    let relaxed = router(vane::config::Kubernetes { require_opt_in: false, ..Default::default() });
    relaxed.validate().await.expect("opt-in off: any object in an allowed namespace");
    relaxed.set_weight(5).await.expect("written");
    assert_eq!(vs_weights(&client, &ns).await, (95, 5));
}
