//! The policy's `canaryMatch` on the three Kubernetes routers, through whole rollouts (controller,
//! driver, machine) against the real API server (with the real Gateway API CRDs): at 5 % the requests
//! carrying `canary: "true"` are routed to the canary only, and after Succeeded, RolledBack (a gate
//! timeout) and Aborted the objects are exactly as before the rollout except the weights.

#[path = "support/k8s.rs"]
mod k8s;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject};
use serde_json::{Value, json};
use vane::fixtures;
use vane::policy::{Approval, CanaryMatch, Gate, Policy};
use vane::rollout::machine::Command;
use vane::rollout::{Phase, RouterSpec};
use vane::traffic::canary_match::{RESTORE, ROUTE_NAME};
use vane::traffic::k8s::{destination_rule, http_route, ingress, service, virtual_service};
use vane::traffic::nginx_ingress::{CANARY_BY_HEADER, CANARY_BY_HEADER_VALUE, CANARY_WEIGHT};

/// How a rollout ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    /// Promoted past the gate: 25, 50, 100, Succeeded.
    Succeeded,
    /// The gate times out: the controller rolls back.
    RolledBack,
    /// Someone aborts at the gate.
    Aborted,
}

const ENDS: [End; 3] = [End::Succeeded, End::RolledBack, End::Aborted];

fn policy(end: End) -> Policy {
    let timeout = if end == End::RolledBack { Duration::from_millis(600) } else { Duration::from_secs(3600) };
    Policy {
        gates: vec![Gate { at: 5, approval: Approval::Manual, timeout, approvers: vec![] }],
        canary_match: vec![CanaryMatch { headers: BTreeMap::from([("canary".into(), "true".into())]) }],
        ..fixtures::policy("header", &[5, 25, 50, 100], Duration::from_millis(200), 2)
    }
}

async fn read(client: &kube::Client, ns: &str, ar: &ApiResource, name: &str) -> DynamicObject {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar).get(name).await.expect("object readable")
}

/// Run one rollout of `router` to `end`; `at_gate` checks the objects at 5 %, `after` at the end.
async fn rollout<A, B>(client: &kube::Client, ns: &str, router: RouterSpec, end: End, at_gate: A, after: B)
where
    A: AsyncFnOnce(),
    B: AsyncFnOnce(Phase),
{
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = k8s::controller(client.clone(), dir.path(), vec![policy(end)]);
    let mut req = fixtures::request("agent-service", "header");
    req.namespace = ns.into();
    req.router = router;
    let id = c.create(req, "ci", None).await.expect("created").0.id;
    k8s::until(&c, &id, "the gate at 5%", |r| r.phase == Phase::AwaitingApproval && r.applied_weight == Some(5)).await;
    at_gate().await;
    match end {
        End::Succeeded => {
            c.command(&id, Command::Promote { full: false }, "qa").await.expect("promote");
        }
        End::Aborted => {
            c.command(&id, Command::Abort { reason: Some("test".into()) }, "qa").await.expect("abort");
        }
        End::RolledBack => {}
    }
    let r = k8s::until(&c, &id, "the end", |r| r.is_terminal()).await;
    let want = match end {
        End::Succeeded => Phase::Succeeded,
        End::RolledBack => Phase::RolledBack,
        End::Aborted => Phase::Aborted,
    };
    assert_eq!(r.phase, want, "{}", r.message);
    after(r.phase).await;
}

/// The object's JSON without what the server changes on every write.
fn comparable(o: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(o).unwrap();
    let meta = v["metadata"].as_object_mut().unwrap();
    for k in ["resourceVersion", "generation", "managedFields"] {
        meta.remove(k);
    }
    v
}

/// `before` with the weighted pair at (stable, canary).
fn with_weights(before: &DynamicObject, pair: &str, stable: i64, canary: i64) -> Value {
    let mut v = comparable(before);
    *v.pointer_mut(&format!("{pair}/0/weight")).unwrap() = json!(stable);
    *v.pointer_mut(&format!("{pair}/1/weight")).unwrap() = json!(canary);
    v
}

fn final_weights(phase: Phase) -> (i64, i64) {
    if phase == Phase::Succeeded { (0, 100) } else { (100, 0) }
}

// ---- istio ------------------------------------------------------------------------------------

fn vs(header_subset: Option<&str>) -> Value {
    let mut http = vec![json!({ "name": "health", "match": [{ "uri": { "exact": "/healthz" } }],
                                "route": [{ "destination": { "host": "agent-service", "subset": "v1-0-0" } }] })];
    if let Some(s) = header_subset {
        http.push(json!({ "match": [{ "headers": { "canary": { "exact": "true" } } }],
                          "route": [{ "destination": { "host": "agent-service", "subset": s } }] }));
    }
    http.push(json!({ "name": "primary", "match": [{ "uri": { "prefix": "/api" } }], "timeout": "30s",
                      "route": [{ "destination": { "host": "agent-service", "subset": "v1-0-0" }, "weight": 100 },
                                { "destination": { "host": "agent-service", "subset": "v1-1-0" }, "weight": 0 }] }));
    json!({ "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
            "metadata": { "name": "agent-service", "labels": { "vane.dev/managed": "true" } }, "spec": { "hosts": ["agent-service"], "http": http } })
}

fn istio_router() -> RouterSpec {
    RouterSpec::Istio {
        virtual_service: "agent-service".into(),
        route: Some("primary".into()),
        stable_subset: "v1-0-0".into(),
        canary_subset: "v1-1-0".into(),
    }
}

async fn istio_case(test: &str, header_subset: Option<&str>) {
    let client = k8s::shared_client().await;
    for end in ENDS {
        let ns = k8s::namespace(&format!("{test}-{end:?}"));
        let dr = json!({ "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
                         "metadata": { "name": "agent-service", "labels": { "vane.dev/managed": "true" } },
                         "spec": { "host": "agent-service", "subsets": [
                             { "name": "v1-0-0", "labels": { "version": "v1.0.0" } },
                             { "name": "v1-0-9", "labels": { "version": "v1.0.9" } },
                             { "name": "v1-1-0", "labels": { "version": "v1.1.0" } } ] } });
        k8s::create(&client, &ns, &destination_rule(), dr).await;
        let before = k8s::create(&client, &ns, &virtual_service(), vs(header_subset)).await;
        let vsr = virtual_service();
        let weighted = if header_subset.is_some() { 2 } else { 1 };
        let at_gate = async || {
            let now = read(&client, &ns, &vsr, "agent-service").await;
            let http = now.data["spec"]["http"].as_array().unwrap();
            assert_eq!(http.len(), 3, "{end:?}: one header route above the weighted one: {http:?}");
            let header = &http[1];
            let m = &header["match"][0];
            assert_eq!(m["headers"]["canary"], json!({ "exact": "true" }), "{end:?}: {header}");
            assert_eq!(
                header["route"],
                json!([{ "destination": { "host": "agent-service", "subset": "v1-1-0" } }]),
                "{end:?}: the header route sends to the canary only"
            );
            if header_subset.is_none() {
                assert_eq!(header["name"], json!(ROUTE_NAME));
                assert_eq!(m["uri"], json!({ "prefix": "/api" }), "scoped to the weighted route's own match");
                assert_eq!(header["timeout"], json!("30s"), "behaves like the weighted route");
            } else {
                assert!(now.metadata.annotations.unwrap_or_default().contains_key(RESTORE));
            }
            assert_eq!(http[2]["route"][1]["weight"], json!(5));
        };
        let after = async |phase: Phase| {
            let now = read(&client, &ns, &vsr, "agent-service").await;
            let (s, c) = final_weights(phase);
            let pair = format!("/spec/http/{weighted}/route");
            assert_eq!(comparable(&now), with_weights(&before, &pair, s, c), "{end:?}: as before, except the weights");
        };
        rollout(&client, &ns, istio_router(), end, at_gate, after).await;
    }
}

#[tokio::test]
async fn istio_inserts_a_header_route_and_removes_it_at_every_end() {
    istio_case("istio-insert", None).await;
}

#[tokio::test]
async fn istio_repoints_the_existing_header_route_and_restores_it_at_every_end() {
    istio_case("istio-repoint", Some("v1-0-9")).await;
}

// ---- gateway-api ------------------------------------------------------------------------------

fn route() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": "agent-service", "labels": { "vane.dev/managed": "true" } },
        "spec": { "parentRefs": [{ "name": "edge" }], "rules": [
            { "matches": [{ "path": { "type": "PathPrefix", "value": "/api" } }],
              "filters": [{ "type": "RequestHeaderModifier",
                            "requestHeaderModifier": { "set": [{ "name": "x-route", "value": "agents" }] } }],
              "backendRefs": [{ "name": "agent-service-blue", "port": 8080, "weight": 100 },
                              { "name": "agent-service-green", "port": 8080, "weight": 0 }] },
            { "matches": [{ "path": { "type": "PathPrefix", "value": "/admin" } }],
              "backendRefs": [{ "name": "admin", "port": 8080 }] } ] }
    })
}

#[tokio::test]
async fn gateway_api_adds_a_header_rule_and_removes_it_at_every_end() {
    let client = k8s::gateway_api_client().await;
    let router = k8s::gateway_api_router(false);
    for end in ENDS {
        let ns = k8s::namespace(&format!("gateway-{end:?}"));
        for name in ["agent-service-blue", "agent-service-green"] {
            let svc = json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name },
                              "spec": { "ports": [{ "port": 8080 }] } });
            k8s::create(&client, &ns, &service(), svc).await;
        }
        let before = k8s::create(&client, &ns, &http_route(), route()).await;
        let ar = http_route();
        let at_gate = async || {
            let now = read(&client, &ns, &ar, "agent-service").await;
            let rules = now.data["spec"]["rules"].as_array().unwrap();
            assert_eq!(rules.len(), 3, "{end:?}: {rules:?}");
            let header = &rules[0];
            assert_eq!(header["name"], json!(ROUTE_NAME));
            assert_eq!(
                header["matches"],
                json!([{ "path": { "type": "PathPrefix", "value": "/api" },
                         "headers": [{ "type": "Exact", "name": "canary", "value": "true" }] }])
            );
            let refs = header["backendRefs"].as_array().unwrap();
            assert_eq!(refs.len(), 1, "only the canary");
            assert_eq!(refs[0]["name"], json!("agent-service-green"));
            assert_eq!(header["filters"], before.data["spec"]["rules"][0]["filters"], "the rule's own filters");
            assert_eq!(rules[1]["backendRefs"][1]["weight"], json!(5));
        };
        let after = async |phase: Phase| {
            let now = read(&client, &ns, &ar, "agent-service").await;
            let (s, c) = final_weights(phase);
            assert_eq!(comparable(&now), with_weights(&before, "/spec/rules/0/backendRefs", s, c), "{end:?}");
        };
        rollout(&client, &ns, router.clone(), end, at_gate, after).await;
    }
}

// ---- nginx-ingress ----------------------------------------------------------------------------

fn main_ingress() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": "agent-service-ingress", "labels": { "vane.dev/managed": "true" } },
        "spec": { "ingressClassName": "nginx", "rules": [{ "host": "api.aiworkflow.com", "http": { "paths": [
            { "path": "/api/agents", "pathType": "Prefix",
              "backend": { "service": { "name": "agent-service-blue", "port": { "number": 8080 } } } } ] } }] }
    })
}

fn ann(o: &DynamicObject, k: &str) -> Option<String> {
    o.metadata.annotations.as_ref().and_then(|a| a.get(k).cloned())
}

#[tokio::test]
async fn nginx_ingress_sets_canary_by_header_and_removes_it_at_every_end() {
    let client = k8s::shared_client().await;
    let router = RouterSpec::NginxIngress {
        ingress: "agent-service-ingress".into(),
        canary_ingress: Some("agent-service-canary".into()),
        canary_service: Some("agent-service-green".into()),
        stable_service: None,
    };
    for end in ENDS {
        let ns = k8s::namespace(&format!("ingress-{end:?}"));
        let before = k8s::create(&client, &ns, &ingress(), main_ingress()).await;
        let ar = ingress();
        let at_gate = async || {
            let k = read(&client, &ns, &ar, "agent-service-canary").await;
            assert_eq!(ann(&k, CANARY_BY_HEADER).as_deref(), Some("canary"), "{end:?}");
            assert_eq!(ann(&k, CANARY_BY_HEADER_VALUE).as_deref(), Some("true"));
            assert_eq!(ann(&k, CANARY_WEIGHT).as_deref(), Some("5"));
        };
        let after = async |phase: Phase| {
            let k = read(&client, &ns, &ar, "agent-service-canary").await;
            assert_eq!(ann(&k, CANARY_BY_HEADER), None, "{end:?}: header routing removed");
            assert_eq!(ann(&k, CANARY_BY_HEADER_VALUE), None);
            assert_eq!(ann(&k, CANARY_WEIGHT).as_deref(), Some("0"), "the canary Ingress idles at 0");
            let main = read(&client, &ns, &ar, "agent-service-ingress").await;
            if phase == Phase::Succeeded {
                let backend = main.data.pointer("/spec/rules/0/http/paths/0/backend/service/name");
                assert_eq!(backend, Some(&json!("agent-service-green")), "promoted");
            } else {
                assert_eq!(comparable(&main), comparable(&before), "{end:?}: the main Ingress is as before");
            }
        };
        rollout(&client, &ns, router.clone(), end, at_gate, after).await;
    }
}

/// A route already at Gateway API's 16 rules has no room for the header rule: refused before any
/// traffic moves, and a write that the CRD's schema refuses is a clear permanent error, not a conflict
/// retried until it times out.
#[tokio::test]
async fn gateway_api_route_without_room_for_the_header_rule_is_refused_clearly() {
    let client = k8s::gateway_api_client().await;
    let ns = k8s::namespace("gateway-full");
    for name in ["agent-service-blue", "agent-service-green"] {
        let svc = json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name },
                          "spec": { "ports": [{ "port": 8080 }] } });
        k8s::create(&client, &ns, &service(), svc).await;
    }
    let mut obj = route();
    let rules = obj["spec"]["rules"].as_array_mut().unwrap();
    for i in 0..14 {
        rules.push(json!({ "matches": [{ "path": { "type": "PathPrefix", "value": format!("/r{i}") } }],
                           "backendRefs": [{ "name": "admin", "port": 8080 }] }));
    }
    let before = k8s::create(&client, &ns, &http_route(), obj).await;
    let spec = k8s::gateway_api_router(false);
    let mut req = fixtures::request("agent-service", "header");
    req.namespace = ns.clone();
    req.router = spec;
    let (rollout, _) = vane::rollout::machine::create("r".into(), &req, policy(End::Aborted), "test", 0);
    let router = vane::traffic::Routers::with_kube_client(client.clone());
    let router = vane::traffic::RouterFactory::build(&router, &rollout).unwrap();
    let e = router.validate().await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("has 16 rules"), "{e}");
    let e = router.set_weight(5).await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("refused the change"), "{e}");
    let now = read(&client, &ns, &http_route(), "agent-service").await;
    assert_eq!(now.metadata.resource_version, before.metadata.resource_version, "nothing written");
}

/// GRPCRoute spells header matches like HTTPRoute; its rules may have no matches at all (all calls).
#[tokio::test]
async fn grpc_route_gets_the_header_rule_and_loses_it_again() {
    let client = k8s::gateway_api_client().await;
    let ns = k8s::namespace("grpc-header");
    for name in ["agent-service-blue", "agent-service-green"] {
        let svc = json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name },
                          "spec": { "ports": [{ "port": 9090 }] } });
        k8s::create(&client, &ns, &service(), svc).await;
    }
    let obj = json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": { "name": "agent-service", "labels": { "vane.dev/managed": "true" } },
        "spec": { "parentRefs": [{ "name": "edge" }], "rules": [
            { "backendRefs": [{ "name": "agent-service-blue", "port": 9090, "weight": 100 },
                              { "name": "agent-service-green", "port": 9090, "weight": 0 }] } ] } });
    let ar = vane::traffic::k8s::grpc_route();
    let before = k8s::create(&client, &ns, &ar, obj).await;
    let mut req = fixtures::request("agent-service", "header");
    req.namespace = ns.clone();
    req.router = k8s::gateway_api_router(true);
    let (rollout, _) = vane::rollout::machine::create("r".into(), &req, policy(End::Aborted), "test", 0);
    let routers = vane::traffic::Routers::with_kube_client(client.clone());
    let router = vane::traffic::RouterFactory::build(&routers, &rollout).unwrap();
    router.validate().await.unwrap();
    router.set_weight(5).await.expect("the header rule passes the GRPCRoute schema and CEL rules");
    let now = read(&client, &ns, &ar, "agent-service").await;
    let header = &now.data["spec"]["rules"][0];
    assert_eq!(header["matches"], json!([{ "headers": [{ "type": "Exact", "name": "canary", "value": "true" }] }]));
    assert_eq!(header["backendRefs"].as_array().map(|b| b.len()), Some(1));
    assert_eq!(now.data["spec"]["rules"][1]["backendRefs"][1]["weight"], json!(5));
    router.set_weight(0).await.unwrap();
    let after = read(&client, &ns, &ar, "agent-service").await;
    assert_eq!(comparable(&after), with_weights(&before, "/spec/rules/0/backendRefs", 100, 0));
}
