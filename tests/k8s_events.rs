//! Kubernetes Events on the objects vane changes, against a real Kubernetes API server (etcd + the
//! CRD apiserver of the k8s test kit): `kubectl describe` on a VirtualService shows each traffic
//! shift with the rollout id, once per change.

#[path = "support/k8s.rs"]
mod k8s;

use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};
use vane::rollout::{RouterSpec, machine};
use vane::traffic::k8s::{destination_rule, event, http_route, virtual_service};
use vane::traffic::{RouterFactory, Routers};

const ID: &str = "01JEVENTSTEST0000000000000";

/// The Events on `object`, oldest first, are `want`, each a `TrafficShifted` naming that very object.
async fn assert_events(client: &kube::Client, ns: &str, object: &DynamicObject, kind: &str, want: &[String]) {
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let events = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &event())
        .list(&ListParams::default())
        .await
        .expect("events listed");
    let mut mine: Vec<&DynamicObject> =
        events.items.iter().filter(|e| e.data["involvedObject"]["name"] == name).collect();
    mine.sort_by_key(|e| e.metadata.name.clone());
    let messages: Vec<&str> = mine.iter().map(|e| e.data["message"].as_str().unwrap_or("")).collect();
    assert_eq!(messages, want, "one event per change, in order");
    for e in &mine {
        assert_eq!(e.data["reason"], "TrafficShifted");
        assert_eq!(e.data["type"], "Normal");
        assert_eq!(e.data["involvedObject"]["kind"], kind);
        assert_eq!(e.data["involvedObject"]["uid"].as_str(), object.metadata.uid.as_deref(), "on that very object");
        assert_eq!(e.data["source"]["component"], "vane");
        assert_eq!(e.metadata.labels.as_ref().and_then(|l| l.get("vane/rollout")).map(String::as_str), Some(ID));
    }
}

async fn create(client: &kube::Client, ns: &str, ar: &kube::api::ApiResource, obj: Value) -> DynamicObject {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    api.create(&PostParams::default(), &serde_json::from_value(obj).unwrap()).await.expect("test object created")
}

#[tokio::test]
async fn istio_weight_changes_are_events_on_the_virtual_service() {
    let client = k8s::shared_client().await;
    let ns = k8s::namespace("events");
    let vs = create(
        &client,
        &ns,
        &virtual_service(),
        json!({
            "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
            "metadata": { "name": "checkout" },
            "spec": { "hosts": ["checkout"], "http": [{ "route": [
                { "destination": { "host": "checkout", "subset": "stable" }, "weight": 100 },
                { "destination": { "host": "checkout", "subset": "canary" }, "weight": 0 } ] }] }
        }),
    )
    .await;
    create(
        &client,
        &ns,
        &destination_rule(),
        json!({
            "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": { "name": "checkout" },
            "spec": { "host": "checkout", "subsets": [{ "name": "stable" }, { "name": "canary" }] }
        }),
    )
    .await;
    let policy = vane::fixtures::policy("canary", &[5, 50, 100], Duration::from_millis(200), 2);
    let mut req = vane::fixtures::request("checkout", "canary");
    req.namespace = ns.clone();
    req.router = RouterSpec::Istio {
        virtual_service: "checkout".into(),
        route: None,
        stable_subset: "stable".into(),
        canary_subset: "canary".into(),
    };
    let (rollout, _) = machine::create(ID.into(), &req, policy, "test", 0);
    let router = Routers::with_kube_client(client.clone()).build(&rollout).expect("router builds");
    router.validate().await.expect("subsets exist");
    // 5, 50, 50 again (a retry or drift correction is not news), then back to 0.
    for w in [5u8, 50, 50, 0] {
        router.set_weight(w).await.unwrap_or_else(|e| panic!("set {w}: {e}"));
    }
    let want: Vec<String> = [(5, 95), (50, 50), (0, 100)]
        .iter()
        .map(|(c, st)| format!("rollout {ID}: {c}% to v1.1.0, {st}% to v1.0.0"))
        .collect();
    assert_events(&client, &ns, &vs, "VirtualService", &want).await;
}

#[tokio::test]
async fn gateway_api_weight_changes_are_events_on_the_http_route() {
    let client = k8s::gateway_api_client().await;
    let ns = k8s::namespace("events-gw");
    for svc in ["web-stable", "web-canary"] {
        let service = json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": svc },
                              "spec": { "selector": { "app": svc }, "ports": [{ "port": 8080 }] } });
        Api::<DynamicObject>::namespaced_with(
            client.clone(),
            &ns,
            &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
        )
        .create(&PostParams::default(), &serde_json::from_value(service).unwrap())
        .await
        .expect("service created");
    }
    let route = create(
        &client,
        &ns,
        &http_route(),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "web" },
            "spec": { "parentRefs": [{ "name": "edge" }], "rules": [{ "backendRefs": [
                { "name": "web-stable", "port": 8080, "weight": 100 },
                { "name": "web-canary", "port": 8080, "weight": 0 } ] }] }
        }),
    )
    .await;
    let policy = vane::fixtures::policy("canary", &[10, 100], Duration::from_millis(200), 2);
    let mut req = vane::fixtures::request("web", "canary");
    req.namespace = ns.clone();
    req.router = RouterSpec::GatewayApi {
        http_route: Some("web".into()),
        grpc_route: None,
        rule: None,
        stable_backend: "web-stable".into(),
        canary_backend: "web-canary".into(),
    };
    let (rollout, _) = machine::create(ID.into(), &req, policy, "test", 0);
    let router = Routers::with_kube_client(client.clone()).build(&rollout).expect("router builds");
    router.validate().await.expect("route and services exist");
    for w in [10u8, 10, 100] {
        router.set_weight(w).await.unwrap_or_else(|e| panic!("set {w}: {e}"));
    }
    let want = vec![
        format!("rollout {ID}: 10% to v1.1.0, 90% to v1.0.0"),
        format!("rollout {ID}: 100% to v1.1.0, 0% to v1.0.0"),
    ];
    assert_events(&client, &ns, &route, "HTTPRoute", &want).await;
}
