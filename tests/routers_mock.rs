//! The Kubernetes routers against kube's tower-test mock: the exact requests they send (methods,
//! paths, JSON-patch bodies with the resourceVersion `test` op, content types), how they react to
//! conflicts, missing objects and server errors. Fast: no server, no sleeps beyond the conflict backoff.

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use vane::fixtures;
use vane::policy::Policy;
use vane::rollout::{Rollout, RouterSpec, machine};
use vane::traffic::k8s::CONFLICT_ATTEMPTS;
use vane::traffic::{Router, RouterError, RouterFactory, Routers};

const VS_PATH: &str = "/apis/networking.istio.io/v1beta1/namespaces/prod/virtualservices/agent-service";
const DR_LIST: &str = "/apis/networking.istio.io/v1beta1/namespaces/prod/destinationrules";
const ING: &str = "/apis/networking.k8s.io/v1/namespaces/prod/ingresses";
const JSON_PATCH: &str = "application/json-patch+json";

/// One expected request and the answer to give.
struct Exchange {
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Option<Value>,
    status: u16,
    reply: Value,
}

fn get(path: &str, status: u16, reply: Value) -> Exchange {
    Exchange { method: "GET", path: path.into(), content_type: None, body: None, status, reply }
}

fn patch(path: &str, body: Value, status: u16, reply: Value) -> Exchange {
    Exchange {
        method: "PATCH",
        path: format!("{path}?"),
        content_type: Some(JSON_PATCH),
        body: Some(body),
        status,
        reply,
    }
}

fn status(code: u16, reason: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": format!("{reason} (from the mock)") })
}

/// A client whose requests must match `script` in order; the task fails on any other request.
fn mock(script: Vec<Exchange>) -> (kube::Client, JoinHandle<()>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        for (i, ex) in script.into_iter().enumerate() {
            let (req, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("request #{i} ({} {}) never came", ex.method, ex.path));
            assert_eq!(req.method().as_str(), ex.method, "request #{i}");
            let uri = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            assert_eq!(uri, ex.path, "request #{i} path");
            let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).map(String::from);
            if let Some(want) = ex.content_type {
                assert_eq!(ct.as_deref(), Some(want), "request #{i} content type");
            }
            let bytes = req.into_body().collect_bytes().await.expect("request body");
            if let Some(want) = ex.body {
                let got: Value = serde_json::from_slice(&bytes).expect("request body is JSON");
                assert_eq!(got, want, "request #{i} body");
            }
            let resp =
                Response::builder().status(ex.status).body(Body::from(serde_json::to_vec(&ex.reply).unwrap())).unwrap();
            send.send_response(resp);
        }
        assert!(handle.next_request().await.is_none(), "an unexpected extra request was sent");
    });
    (kube::Client::new(svc, "default"), task)
}

/// Run `f` with a router built from `spec`, then check the mock saw exactly its script.
async fn with_router<T>(
    spec: RouterSpec,
    policy: Policy,
    script: Vec<Exchange>,
    f: impl AsyncFnOnce(&dyn Router) -> T,
) -> T {
    let (client, task) = mock(script);
    let mut req = fixtures::request("agent-service", &policy.name);
    req.router = spec;
    let (rollout, _): (Rollout, _) = machine::create("r1".into(), &req, policy, "test", 0);
    // The scripts pin the router's own requests; the Events it also records are tested against a
    // real API server in tests/k8s_events.rs.
    let router = Routers::with_kube_client(client).without_events().build(&rollout).expect("router builds");
    let out = f(router.as_ref()).await;
    drop(router);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("mock finished").expect("mock assertions");
    out
}

fn canary_policy() -> Policy {
    fixtures::policy("canary", &[5, 25, 50, 100], Duration::from_secs(1), 2)
}

fn istio() -> RouterSpec {
    RouterSpec::Istio {
        virtual_service: "agent-service".into(),
        route: None,
        stable_subset: "v1-0-0".into(),
        canary_subset: "v1-1-0".into(),
    }
}

/// The deployment standard's VirtualService at `rv` with the weighted route at stable/canary.
fn vs(rv: &str, stable: i64, canary: i64) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": { "name": "agent-service", "namespace": "prod", "resourceVersion": rv },
        "spec": { "hosts": ["agent-service"], "http": [
            { "match": [{ "headers": { "canary": { "exact": "true" } } }],
              "route": [{ "destination": { "host": "agent-service", "subset": "v1-1-0" } }] },
            { "route": [
                { "destination": { "host": "agent-service", "subset": "v1-0-0" }, "weight": stable },
                { "destination": { "host": "agent-service", "subset": "v1-1-0" }, "weight": canary } ] } ] }
    })
}

fn weight_patch(rv: &str, stable: i64, canary: i64) -> Value {
    json!([
        { "op": "test", "path": "/metadata/resourceVersion", "value": rv },
        { "op": "add", "path": "/spec/http/1/route/0/weight", "value": stable },
        { "op": "add", "path": "/spec/http/1/route/1/weight", "value": canary },
    ])
}

#[tokio::test]
async fn istio_sets_both_weights_in_one_guarded_json_patch() {
    let script =
        vec![get(VS_PATH, 200, vs("100", 95, 5)), patch(VS_PATH, weight_patch("100", 75, 25), 200, vs("101", 75, 25))];
    let r = with_router(istio(), canary_policy(), script, async |r| r.set_weight(25).await).await;
    assert_eq!(r, Ok(()));
}

#[tokio::test]
async fn istio_rereads_after_a_409_and_guards_the_new_version() {
    let script = vec![
        get(VS_PATH, 200, vs("100", 95, 5)),
        patch(VS_PATH, weight_patch("100", 50, 50), 409, status(409, "Conflict")),
        get(VS_PATH, 200, vs("107", 95, 5)),
        patch(VS_PATH, weight_patch("107", 50, 50), 200, vs("108", 50, 50)),
    ];
    assert_eq!(with_router(istio(), canary_policy(), script, async |r| r.set_weight(50).await).await, Ok(()));
}

#[tokio::test]
async fn istio_treats_a_failed_test_op_422_as_a_conflict() {
    let script = vec![
        get(VS_PATH, 200, vs("100", 95, 5)),
        patch(VS_PATH, weight_patch("100", 0, 100), 422, status(422, "Invalid")),
        get(VS_PATH, 200, vs("102", 95, 5)),
        patch(VS_PATH, weight_patch("102", 0, 100), 200, vs("103", 0, 100)),
    ];
    assert_eq!(with_router(istio(), canary_policy(), script, async |r| r.set_weight(100).await).await, Ok(()));
}

/// (On a paused clock: the conflict backoff takes no real time.)
#[tokio::test(start_paused = true)]
async fn istio_gives_up_on_endless_conflicts_with_a_transient_error() {
    let mut script = vec![];
    for n in 0..CONFLICT_ATTEMPTS {
        let rv = format!("{}", 200 + n);
        script.push(get(VS_PATH, 200, vs(&rv, 95, 5)));
        script.push(patch(VS_PATH, weight_patch(&rv, 75, 25), 409, status(409, "Conflict")));
    }
    let e = with_router(istio(), canary_policy(), script, async |r| r.set_weight(25).await).await.unwrap_err();
    assert!(!e.is_permanent() && e.to_string().contains("still conflicting"), "{e}");
}

#[tokio::test]
async fn istio_writes_nothing_when_the_weights_are_already_set() {
    let script = vec![get(VS_PATH, 200, vs("100", 75, 25))];
    assert_eq!(with_router(istio(), canary_policy(), script, async |r| r.set_weight(25).await).await, Ok(()));
}

#[tokio::test]
async fn istio_missing_virtual_service_is_permanent_and_named() {
    let script = vec![get(VS_PATH, 404, status(404, "NotFound"))];
    let e = with_router(istio(), canary_policy(), script, async |r| r.set_weight(5).await).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(e.to_string().contains("VirtualService prod/agent-service not found"), "{e}");
}

#[tokio::test]
async fn istio_server_errors_are_transient() {
    let script = vec![get(VS_PATH, 500, status(500, "InternalError"))];
    let e = with_router(istio(), canary_policy(), script, async |r| r.set_weight(5).await).await.unwrap_err();
    assert!(matches!(&e, RouterError::Transient(m) if m.contains("500")), "{e}");
}

#[tokio::test]
async fn istio_forbidden_is_permanent_and_points_at_rbac() {
    let script = vec![get(VS_PATH, 403, status(403, "Forbidden"))];
    let e = with_router(istio(), canary_policy(), script, async |r| r.observe().await).await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("RBAC"), "{e}");
}

#[tokio::test]
async fn istio_observe_reads_the_live_canary_weight() {
    let script = vec![get(VS_PATH, 200, vs("100", 70, 30))];
    assert_eq!(with_router(istio(), canary_policy(), script, async |r| r.observe().await).await, Ok(Some(30)));
}

fn dr_list(subsets: &[&str]) -> Value {
    let subsets: Vec<Value> = subsets.iter().map(|s| json!({ "name": s, "labels": { "version": s } })).collect();
    json!({ "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRuleList", "metadata": { "resourceVersion": "5" },
            "items": [{ "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
                        "metadata": { "name": "agent-service", "namespace": "prod", "resourceVersion": "4" },
                        "spec": { "host": "agent-service", "subsets": subsets } }] })
}

#[tokio::test]
async fn istio_validate_lists_destination_rules_and_accepts_both_subsets() {
    let script =
        vec![get(VS_PATH, 200, vs("1", 100, 0)), get(&format!("{DR_LIST}?"), 200, dr_list(&["v1-0-0", "v1-1-0"]))];
    assert_eq!(with_router(istio(), canary_policy(), script, async |r| r.validate().await).await, Ok(()));
}

#[tokio::test]
async fn istio_validate_refuses_a_missing_subset() {
    let script = vec![get(VS_PATH, 200, vs("1", 100, 0)), get(&format!("{DR_LIST}?"), 200, dr_list(&["v1-0-0"]))];
    let e = with_router(istio(), canary_policy(), script, async |r| r.validate().await).await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("no subset \"v1-1-0\""), "{e}");
}

fn ingress(name: &str, rv: &str, service: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": name, "namespace": "prod", "resourceVersion": rv, "annotations": annotations },
        "spec": { "rules": [{ "host": "api.aiworkflow.com", "http": { "paths": [{ "path": "/api/agents", "pathType": "Prefix",
            "backend": { "service": { "name": service, "port": { "number": 8080 } } } }] } }] }
    })
}

const BACKEND: &str = "/spec/rules/0/http/paths/0/backend/service/name";

#[tokio::test]
async fn nginx_ingress_blue_green_flip_is_one_guarded_patch() {
    let spec = RouterSpec::NginxIngress {
        ingress: "agent-service-ingress".into(),
        canary_ingress: None,
        canary_service: Some("agent-service-green".into()),
        stable_service: Some("agent-service-blue".into()),
    };
    let path = format!("{ING}/agent-service-ingress");
    let vhost = json!({ "nginx.ingress.kubernetes.io/upstream-vhost": "agent-service-blue.ai-workflow-prod.svc.cluster.local" });
    let body = json!([
        { "op": "test", "path": "/metadata/resourceVersion", "value": "9" },
        { "op": "replace", "path": BACKEND, "value": "agent-service-green" },
        { "op": "replace", "path": "/metadata/annotations/nginx.ingress.kubernetes.io~1upstream-vhost",
          "value": "agent-service-green.ai-workflow-prod.svc.cluster.local" },
    ]);
    let script = vec![
        get(&path, 200, ingress("agent-service-ingress", "9", "agent-service-blue", vhost)),
        patch(&path, body, 200, ingress("agent-service-ingress", "10", "agent-service-green", json!({}))),
    ];
    let policy = fixtures::blue_green("bg", Duration::from_secs(1), Duration::from_secs(1));
    assert_eq!(with_router(spec, policy, script, async |r| r.set_weight(100).await).await, Ok(()));
}

#[tokio::test]
async fn nginx_ingress_canary_creates_the_canary_ingress_by_cloning_the_main_one() {
    let spec = RouterSpec::NginxIngress {
        ingress: "agent-service-ingress".into(),
        canary_ingress: Some("agent-service-canary".into()),
        canary_service: Some("agent-service-green".into()),
        stable_service: None,
    };
    let main = ingress("agent-service-ingress", "9", "agent-service-blue", json!({ "team": "agents" }));
    let wanted = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": "agent-service-canary", "namespace": "prod",
            "labels": { "app.kubernetes.io/managed-by": "vane" },
            "annotations": { "team": "agents", "nginx.ingress.kubernetes.io/canary": "true",
                             "nginx.ingress.kubernetes.io/canary-weight": "5", "vane.dev/stable-service": "agent-service-blue" } },
        "spec": { "rules": [{ "host": "api.aiworkflow.com", "http": { "paths": [{ "path": "/api/agents", "pathType": "Prefix",
            "backend": { "service": { "name": "agent-service-green", "port": { "number": 8080 } } } }] } }] }
    });
    let mut created = wanted.clone();
    created["metadata"]["resourceVersion"] = json!("10");
    let script = vec![
        get(&format!("{ING}/agent-service-ingress"), 200, main.clone()),
        get(&format!("{ING}/agent-service-canary"), 404, status(404, "NotFound")),
        Exchange {
            method: "POST",
            path: format!("{ING}?"),
            content_type: Some("application/json"),
            body: Some(wanted),
            status: 201,
            reply: created.clone(),
        },
        get(&format!("{ING}/agent-service-ingress"), 200, main),
        get(&format!("{ING}/agent-service-canary"), 200, created),
    ];
    let r = with_router(spec, canary_policy(), script, async |r| r.set_weight(5).await).await;
    assert_eq!(r, Ok(()));
}

#[tokio::test]
async fn nginx_ingress_canary_weight_is_an_annotation_patch() {
    let spec = RouterSpec::NginxIngress {
        ingress: "agent-service-ingress".into(),
        canary_ingress: Some("agent-service-canary".into()),
        canary_service: None,
        stable_service: None,
    };
    let canary = |rv: &str, w: &str| {
        ingress(
            "agent-service-canary",
            rv,
            "agent-service-green",
            json!({
            "nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-weight": w,
            "vane.dev/stable-service": "agent-service-blue" }),
        )
    };
    let main = ingress("agent-service-ingress", "9", "agent-service-blue", json!({}));
    let body = json!([
        { "op": "test", "path": "/metadata/resourceVersion", "value": "20" },
        { "op": "add", "path": "/metadata/annotations/nginx.ingress.kubernetes.io~1canary-weight", "value": "25" },
    ]);
    let script = vec![
        get(&format!("{ING}/agent-service-ingress"), 200, main.clone()),
        get(&format!("{ING}/agent-service-canary"), 200, canary("20", "5")),
        patch(&format!("{ING}/agent-service-canary"), body, 200, canary("21", "25")),
        get(&format!("{ING}/agent-service-ingress"), 200, main),
        get(&format!("{ING}/agent-service-canary"), 200, canary("21", "25")),
    ];
    assert_eq!(with_router(spec, canary_policy(), script, async |r| r.set_weight(25).await).await, Ok(()));
}

#[tokio::test]
async fn a_kubernetes_router_without_cluster_access_fails_permanently_not_with_a_panic() {
    let cfg = vane::config::Kubernetes { kubeconfig: "/nonexistent/kubeconfig".into(), context: String::new() };
    let mut req = fixtures::request("agent-service", "canary");
    req.router = istio();
    let (rollout, _) = machine::create("r1".into(), &req, canary_policy(), "test", 0);
    let router = Routers::new(&cfg).build(&rollout).expect("building needs no access yet");
    let e = router.validate().await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("no Kubernetes access"), "{e}");
}
