//! The `gateway-api` router against a real Kubernetes API server with the real Gateway API v1.6.1
//! CRDs (their schemas, defaults and CEL rules): an HTTPRoute and a GRPCRoute with a second rule,
//! filters and a third backendRef that must stay exactly as they were at every step, blue/green,
//! a concurrent writer, and whole rollouts through the controller (success, drift, abort, a refused
//! route).

#[path = "support/k8s.rs"]
mod k8s;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vane::fixtures;
use vane::policy::{Approval, Gate, Policy};
use vane::rollout::controller::Controller;
use vane::rollout::machine::{self, Command};
use vane::rollout::{Phase, Rollout, RouterSpec};
use vane::telemetry::Metrics;
use vane::traffic::k8s::{grpc_route, http_route, service};
use vane::traffic::{Router, RouterFactory, Routers};

const STABLE: &str = "agent-service-blue";
const CANARY: &str = "agent-service-green";
const ROUTE: &str = "agent-service";

/// The rule index of the weighted rule in both routes below.
const WEIGHTED: usize = 1;

/// An HTTPRoute a platform team would write: an `/admin` rule with a URL rewrite and its own two
/// backends (never vane's), then the weighted `/api/agents` rule with a header filter and a timeout.
fn http_object() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": ROUTE, "labels": { "app": "agent-service", "vane.dev/managed": "true" },
                      "annotations": { "team": "agents" } },
        "spec": {
            "parentRefs": [{ "name": "edge", "namespace": "gateways", "sectionName": "https" }],
            "hostnames": ["api.aiworkflow.com"],
            "rules": [
                { "name": "admin",
                  "matches": [{ "path": { "type": "PathPrefix", "value": "/admin" } }],
                  "filters": [{ "type": "URLRewrite",
                                "urlRewrite": { "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/" } } }],
                  "backendRefs": [{ "name": "admin-service", "port": 8080, "weight": 9 },
                                  { "name": "admin-service-next", "port": 8080, "weight": 1 }] },
                { "matches": [{ "path": { "type": "PathPrefix", "value": "/api/agents" },
                                "headers": [{ "name": "x-tenant", "value": "acme" }] },
                              { "path": { "type": "PathPrefix", "value": "/api/agents" } }],
                  "filters": [{ "type": "RequestHeaderModifier",
                                "requestHeaderModifier": { "set": [{ "name": "x-route", "value": "agents" }] } }],
                  "backendRefs": [{ "name": STABLE, "port": 8080, "weight": 100 },
                                  { "name": CANARY, "port": 8080, "weight": 0 }],
                  "timeouts": { "request": "30s" } }
            ]
        }
    })
}

/// A GRPCRoute: a health rule on its own backend, then the weighted `agents` rule (named).
fn grpc_object() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": { "name": ROUTE, "labels": { "app": "agent-service", "vane.dev/managed": "true" } },
        "spec": {
            "parentRefs": [{ "name": "edge", "namespace": "gateways" }],
            "hostnames": ["grpc.aiworkflow.com"],
            "rules": [
                { "name": "health",
                  "matches": [{ "method": { "service": "grpc.health.v1.Health" } }],
                  "backendRefs": [{ "name": "health-service", "port": 9090 }] },
                { "name": "agents",
                  "matches": [{ "method": { "service": "agents.v1.Agents", "method": "Run" } },
                              { "headers": [{ "name": "x-tenant", "value": "acme" }] }],
                  "filters": [{ "type": "RequestHeaderModifier",
                                "requestHeaderModifier": { "add": [{ "name": "x-via", "value": "gateway" }] } }],
                  "backendRefs": [{ "name": STABLE, "port": 9090, "weight": 100 },
                                  { "name": CANARY, "port": 9090, "weight": 0 }] }
            ]
        }
    })
}

fn service_object(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name },
            "spec": { "selector": { "app": name }, "ports": [{ "port": 8080 }] } })
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Http,
    Grpc,
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Kind::Http => http_route(),
            Kind::Grpc => grpc_route(),
        }
    }
    fn object(self) -> Value {
        match self {
            Kind::Http => http_object(),
            Kind::Grpc => grpc_object(),
        }
    }
    /// HTTP finds the rule by its two backends, gRPC names it.
    fn spec(self) -> RouterSpec {
        let (http, grpc, rule) = match self {
            Kind::Http => (Some(ROUTE.into()), None, None),
            Kind::Grpc => (None, Some(ROUTE.into()), Some("agents".into())),
        };
        RouterSpec::GatewayApi {
            http_route: http,
            grpc_route: grpc,
            rule,
            stable_backend: STABLE.into(),
            canary_backend: CANARY.into(),
        }
    }
}

struct Setup {
    client: kube::Client,
    ns: String,
    kind: Kind,
    /// The route as the API server stored it (with its defaults) before any write.
    before: DynamicObject,
}

impl Setup {
    async fn new(test: &str, kind: Kind, services: &[&str]) -> Setup {
        let client = k8s::gateway_api_client().await;
        let ns = k8s::namespace(test);
        for s in services {
            create(&client, &ns, &service(), service_object(s)).await;
        }
        let before = create(&client, &ns, &kind.resource(), kind.object()).await;
        Setup { client, ns, kind, before }
    }

    fn api(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, &self.kind.resource())
    }

    async fn read(&self) -> DynamicObject {
        self.api().get(ROUTE).await.expect("route readable")
    }

    /// (stable, canary) weights of the weighted rule.
    async fn weights(&self) -> (i64, i64) {
        weights_of(&self.read().await)
    }

    /// The route now must equal the route before, except the two weights, which must be these.
    async fn assert_only_weights(&self, stable: i64, canary: i64, at: &str) {
        let now = self.read().await;
        assert_eq!(weights_of(&now), (stable, canary), "{at}: the weights");
        assert_eq!(comparable(&now), comparable(&self.before), "{at}: everything but the two weights is untouched");
    }

    fn router(&self, policy: Policy) -> Arc<dyn Router> {
        let mut req = fixtures::request("agent-service", &policy.name);
        req.namespace = self.ns.clone();
        req.router = self.kind.spec();
        let (rollout, _) = machine::create("r".into(), &req, policy, "test", 0);
        Routers::with_kube_client(self.client.clone()).build(&rollout).expect("router builds")
    }
}

async fn create(client: &kube::Client, ns: &str, ar: &ApiResource, obj: Value) -> DynamicObject {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &obj).await.expect("test object created (valid for the real CRD)")
}

fn weights_of(o: &DynamicObject) -> (i64, i64) {
    let w = |i: usize| {
        o.data.pointer(&format!("/spec/rules/{WEIGHTED}/backendRefs/{i}/weight")).and_then(Value::as_i64).unwrap_or(-1)
    };
    (w(0), w(1))
}

/// The whole object as JSON with the two weights blanked and the fields the server changes on every
/// write (resourceVersion, generation, managedFields) removed.
fn comparable(o: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(o).unwrap();
    for i in 0..2 {
        v["spec"]["rules"][WEIGHTED]["backendRefs"][i]["weight"] = Value::Null;
    }
    let meta = v["metadata"].as_object_mut().unwrap();
    for k in ["resourceVersion", "generation", "managedFields"] {
        meta.remove(k);
    }
    v
}

fn canary_policy() -> Policy {
    fixtures::policy("canary", &[5, 25, 50, 100], Duration::from_millis(200), 2)
}

fn gated(name: &str, at: u8) -> Policy {
    Policy {
        gates: vec![Gate { at, approval: Approval::Manual, timeout: Duration::from_secs(3600), approvers: vec![] }],
        ..fixtures::policy(name, &[5, 25, 50, 100], Duration::from_millis(200), 2)
    }
}

async fn full_canary(kind: Kind) {
    let s = Setup::new(&format!("{kind:?}-canary"), kind, &[STABLE, CANARY]).await;
    // The API server filled in the CRD's defaults (group "", kind Service, weight 1): the route vane
    // sees is the real stored object, not the test's literal.
    assert_eq!(s.before.data.pointer("/spec/rules/0/backendRefs/0/kind"), Some(&json!("Service")));
    let router = s.router(canary_policy());
    router.validate().await.expect("route, rule, both backends and both Services exist");
    assert_eq!(router.observe().await, Ok(Some(0)));
    for w in [5u8, 25, 50, 100] {
        router.set_weight(w).await.unwrap_or_else(|e| panic!("set {w}: {e}"));
        s.assert_only_weights(100 - w as i64, w as i64, &format!("at {w}%")).await;
        assert_eq!(router.observe().await, Ok(Some(w)));
    }
    // Idempotent: setting 100 again writes nothing (the resourceVersion does not move).
    let rv = s.read().await.metadata.resource_version;
    router.set_weight(100).await.unwrap();
    assert_eq!(s.read().await.metadata.resource_version, rv);
    // Rollback from 100 puts the route back exactly as it was.
    router.set_weight(0).await.unwrap();
    s.assert_only_weights(100, 0, "rolled back").await;
    assert_eq!(s.read().await.data["spec"], s.before.data["spec"], "the spec is the original again");
}

#[tokio::test]
async fn http_route_full_canary_moves_only_the_two_weights() {
    full_canary(Kind::Http).await;
}

#[tokio::test]
async fn grpc_route_full_canary_moves_only_the_two_weights() {
    full_canary(Kind::Grpc).await;
}

#[tokio::test]
async fn blue_green_flips_the_two_backends_and_back() {
    for kind in [Kind::Http, Kind::Grpc] {
        let s = Setup::new(&format!("{kind:?}-bg"), kind, &[STABLE, CANARY]).await;
        let policy = fixtures::blue_green("bg", Duration::from_millis(200), Duration::from_millis(200));
        let router = s.router(policy);
        router.validate().await.unwrap();
        router.set_weight(100).await.unwrap();
        s.assert_only_weights(0, 100, "flipped").await;
        assert_eq!(router.observe().await, Ok(Some(100)));
        router.set_weight(0).await.unwrap();
        s.assert_only_weights(100, 0, "flipped back").await;
        assert_eq!(router.observe().await, Ok(Some(0)));
    }
}

#[tokio::test]
async fn a_concurrent_writer_is_retried_and_both_writes_survive() {
    let s = Setup::new("conflict", Kind::Http, &[STABLE, CANARY]).await;
    let (racy, patches) = k8s::interfering_client(s.client.clone(), s.ns.clone(), http_route(), ROUTE, 2);
    let mut req = fixtures::request("agent-service", "canary");
    req.namespace = s.ns.clone();
    req.router = Kind::Http.spec();
    let (rollout, _) = machine::create("r".into(), &req, canary_policy(), "test", 0);
    let router = Routers::with_kube_client(racy).build(&rollout).unwrap();
    router.set_weight(25).await.expect("conflicts are retried");
    // Two PATCHes met a changed object (422 from the failed `test` op), the third applied.
    assert_eq!(patches.load(Ordering::SeqCst), 3);
    let now = s.read().await;
    assert_eq!(weights_of(&now), (75, 25));
    let labels = now.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("edited-by").map(String::as_str), Some("someone-else-1"), "the other write is kept");
    assert_eq!(labels.get("app").map(String::as_str), Some("agent-service"));
    assert_eq!(now.data["spec"]["rules"][0], s.before.data["spec"]["rules"][0]);
}

#[tokio::test]
async fn a_route_without_the_canary_backend_or_service_is_refused_before_any_write() {
    // No canary backendRef in the rule.
    let client = k8s::gateway_api_client().await;
    let ns = k8s::namespace("no-canary-ref");
    let mut obj = http_object();
    obj["spec"]["rules"][WEIGHTED]["backendRefs"].as_array_mut().unwrap().pop();
    create(&client, &ns, &http_route(), obj).await;
    let s = Setup {
        before: Api::namespaced_with(client.clone(), &ns, &http_route()).get(ROUTE).await.unwrap(),
        client,
        ns,
        kind: Kind::Http,
    };
    let e = s.router(canary_policy()).validate().await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(e.to_string().contains("no rule whose two backendRefs are the Services"), "{e}");
    let e = s.router(canary_policy()).set_weight(5).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert_eq!(s.read().await.metadata.resource_version, s.before.metadata.resource_version, "never written");

    // The canary Service does not exist.
    let s = Setup::new("no-canary-service", Kind::Http, &[STABLE]).await;
    let e = s.router(canary_policy()).validate().await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(e.to_string().contains(&format!("Service {}/{CANARY}", s.ns)), "{e}");

    // The route does not exist.
    let client = k8s::gateway_api_client().await;
    let ns = k8s::namespace("no-route");
    let s = Setup { before: serde_json::from_value(http_object()).unwrap(), client, ns, kind: Kind::Grpc };
    let e = s.router(canary_policy()).validate().await.unwrap_err();
    assert_eq!(e.to_string(), format!("GRPCRoute {}/{ROUTE} not found (deleted, or wrong name/namespace?)", s.ns));
}

// ---- whole rollouts through the controller, driver and machine -------------------------------

struct World {
    s: Setup,
    c: Controller,
    metrics: Arc<Metrics>,
    _store: tempfile::TempDir,
}

async fn world(test: &str, kind: Kind, policies: Vec<Policy>) -> World {
    world_with(test, kind, &[STABLE, CANARY], policies).await
}

async fn world_with(test: &str, kind: Kind, services: &[&str], policies: Vec<Policy>) -> World {
    let s = Setup::new(test, kind, services).await;
    let dir = tempfile::tempdir().unwrap();
    let (c, metrics) = k8s::controller(s.client.clone(), dir.path(), policies);
    World { s, c, metrics, _store: dir }
}

impl World {
    async fn start(&self, policy: &str) -> String {
        let mut req = fixtures::request("agent-service", policy);
        req.namespace = self.s.ns.clone();
        req.router = self.s.kind.spec();
        self.c.create(req, "ci", None).await.expect("created").0.id
    }

    async fn until(&self, id: &str, what: &str, f: impl Fn(&Rollout) -> bool) -> Rollout {
        k8s::until(&self.c, id, what, f).await
    }

    async fn until_weights(&self, want: (i64, i64)) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.s.weights().await != want {
            assert!(tokio::time::Instant::now() < deadline, "weights {:?}, want {want:?}", self.s.weights().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn events(&self, id: &str) -> Vec<(String, Value)> {
        self.c.events(id).unwrap().into_iter().map(|e| (e.kind, e.details)).collect()
    }
}

#[tokio::test]
async fn rollout_5_25_50_100_succeeds_with_the_rest_of_the_route_untouched() {
    let w = world("e2e-success", Kind::Http, vec![canary_policy()]).await;
    // Sample the live route while the rollout runs: every step stays for at least one interval, and
    // every sample must equal the original route except the two weights.
    let api = w.s.api();
    let before = comparable(&w.s.before);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = k8s::sample(done.clone(), move || {
        let (api, before) = (api.clone(), before.clone());
        async move {
            let o = api.get(ROUTE).await.expect("route readable");
            assert_eq!(comparable(&o), before, "only the two weights ever change");
            weights_of(&o)
        }
    });
    let id = w.start("canary").await;
    let r = w.until(&id, "Succeeded", |r| r.is_terminal()).await;
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
    done.store(true, Ordering::Relaxed);
    assert_eq!(sampler.await.unwrap(), vec![(100, 0), (95, 5), (75, 25), (50, 50), (0, 100)], "live weights, in order");
    let set: Vec<i64> =
        w.events(&id).iter().filter(|(k, _)| k == "weight-set").filter_map(|(_, d)| d["canary"].as_i64()).collect();
    assert_eq!(set, vec![5, 25, 50, 100]);
    assert!(
        w.metrics.encode().contains(r#"vane_router_requests_total{router="gateway-api",result="ok"} 5"#),
        "validate + 4 shifts"
    );
}

#[tokio::test]
async fn drift_on_the_route_is_corrected_and_recorded() {
    let w = world("e2e-drift", Kind::Grpc, vec![gated("gate25", 25)]).await;
    let id = w.start("gate25").await;
    w.until(&id, "the gate at 25%", |r| r.phase == Phase::AwaitingApproval && r.applied_weight == Some(25)).await;
    // Someone edits the weights by hand: 9:1 is 10 % canary.
    let p = json!([
        { "op": "replace", "path": format!("/spec/rules/{WEIGHTED}/backendRefs/0/weight"), "value": 9 },
        { "op": "replace", "path": format!("/spec/rules/{WEIGHTED}/backendRefs/1/weight"), "value": 1 } ]);
    let p: Patch<()> = Patch::Json(serde_json::from_value(p).unwrap());
    w.s.api().patch(ROUTE, &PatchParams::default(), &p).await.expect("hand edit");
    w.until(&id, "a drift event", |_| w.events(&id).iter().any(|(k, _)| k == "drift")).await;
    let drift = w.events(&id).into_iter().find(|(k, _)| k == "drift").unwrap().1;
    assert_eq!((drift["observed"].as_i64(), drift["decided"].as_i64()), (Some(10), Some(25)));
    w.until_weights((75, 25)).await;
    w.s.assert_only_weights(75, 25, "after the correction").await;
    assert_eq!(w.c.get(&id).unwrap().phase, Phase::AwaitingApproval, "onDrift: correct keeps going");
    w.c.command(&id, Command::Abort { reason: None }, "sre").await.unwrap();
    w.until(&id, "Aborted", |r| r.is_terminal()).await;
}

#[tokio::test]
async fn abort_at_50_rolls_back_to_the_original_route() {
    let w = world("e2e-abort", Kind::Http, vec![gated("gate50", 50)]).await;
    let id = w.start("gate50").await;
    w.until(&id, "the gate at 50%", |r| r.phase == Phase::AwaitingApproval && r.applied_weight == Some(50)).await;
    w.s.assert_only_weights(50, 50, "at the gate").await;
    w.c.command(&id, Command::Abort { reason: Some("bad canary".into()) }, "sre").await.unwrap();
    let r = w.until(&id, "Aborted", |r| r.is_terminal()).await;
    assert_eq!(r.phase, Phase::Aborted, "{}", r.message);
    w.s.assert_only_weights(100, 0, "aborted").await;
    assert_eq!(w.s.read().await.data["spec"], w.s.before.data["spec"]);
}

#[tokio::test]
async fn a_missing_canary_service_fails_the_rollout_before_any_traffic_moves() {
    let w = world_with("e2e-no-service", Kind::Http, &[STABLE], vec![canary_policy()]).await;
    let id = w.start("canary").await;
    let r = w.until(&id, "Failed", |r| r.is_terminal()).await;
    assert_eq!(r.phase, Phase::Failed);
    assert!(r.message.contains(CANARY) && r.message.contains("no traffic was moved"), "{}", r.message);
    assert_eq!(w.s.read().await.metadata.resource_version, w.s.before.metadata.resource_version, "never written");
}
