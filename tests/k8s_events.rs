//! Kubernetes Events on the objects vane changes, against a real Kubernetes API server (etcd + the
//! CRD apiserver of the k8s test kit): `kubectl describe` on a VirtualService shows each traffic
//! shift with the rollout id, once per change.

#[path = "support/k8s.rs"]
mod k8s;

use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};
use vane::rollout::{RouterSpec, machine};
use vane::traffic::k8s::{destination_rule, event, virtual_service};
use vane::traffic::{RouterFactory, Routers};

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
    let id = "01JEVENTSTEST0000000000000";
    let (rollout, _) = machine::create(id.into(), &req, policy, "test", 0);
    let router = Routers::with_kube_client(client.clone()).build(&rollout).expect("router builds");
    router.validate().await.expect("subsets exist");
    // 5, 50, 50 again (a retry or drift correction is not news), then back to 0.
    for w in [5u8, 50, 50, 0] {
        router.set_weight(w).await.unwrap_or_else(|e| panic!("set {w}: {e}"));
    }
    let events = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &event())
        .list(&ListParams::default())
        .await
        .expect("events listed");
    let mut mine: Vec<&DynamicObject> =
        events.items.iter().filter(|e| e.data["involvedObject"]["name"] == "checkout").collect();
    mine.sort_by_key(|e| e.metadata.name.clone());
    let messages: Vec<&str> = mine.iter().map(|e| e.data["message"].as_str().unwrap_or("")).collect();
    assert_eq!(
        messages,
        [
            format!("rollout {id}: 5% to v1.1.0, 95% to v1.0.0"),
            format!("rollout {id}: 50% to v1.1.0, 50% to v1.0.0"),
            format!("rollout {id}: 0% to v1.1.0, 100% to v1.0.0"),
        ],
        "one event per change, in order"
    );
    for e in &mine {
        assert_eq!(e.data["reason"], "TrafficShifted");
        assert_eq!(e.data["type"], "Normal");
        assert_eq!(e.data["involvedObject"]["kind"], "VirtualService");
        assert_eq!(e.data["involvedObject"]["uid"].as_str(), vs.metadata.uid.as_deref(), "on that very object");
        assert_eq!(e.data["source"]["component"], "vane");
        assert_eq!(e.metadata.labels.as_ref().and_then(|l| l.get("vane/rollout")).map(String::as_str), Some(id));
    }
}
