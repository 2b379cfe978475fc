//! Who may reach which traffic (issue 10, part B), against the real binary and a real Kubernetes API
//! server (`support::k8s`): every attack fails AND nothing happened (no weight moved, no object
//! written, no rollout created or changed).
//!
//! - token scopes: a token scoped to other namespaces cannot see (404, also absent from lists) or
//!   drive (404) a rollout, nor create one there (403); Idempotency-Keys are per token;
//! - `[kubernetes] namespaces`: a rollout elsewhere is refused at create (422), nothing touched;
//! - `require_opt_in`: a VirtualService without `vane.dev/managed: "true"` fails the rollout before
//!   traffic moves; a canary Ingress vane did not create is never taken over;
//! - one rollout per router target: a second rollout on the same VirtualService route is 409;
//! - Slack: a click for a past gate is 409 and changes nothing, a replayed signed request is 401, and
//!   two clicks on one gate's Promote approve it once (the next step still gets its analysis).

mod support {
    pub mod daemon;
    pub mod k8s;
    pub mod slack;
}

use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use support::daemon::{Daemon, free_port};
use support::k8s;
use support::slack::{self, now};
use vane::traffic::k8s::{destination_rule, ingress, virtual_service};

const WAIT: Duration = Duration::from_secs(20);
const SLACK_SECRET: &str = "slack-signing-secret-for-security-access";
const ADMIN: &str = "admin-token-0123456789abcdef";
const TEAM_A: &str = "team-a-token-0123456789abcdef";
const TEAM_B: &str = "team-b-token-0123456789abcdef";
const VIEW_A: &str = "view-a-token-0123456789abcdef";
const TOKENS: &str = r#"[{ name = "admin", token_env = "T_ADMIN", role = "operator" },
    { name = "team-a", token_env = "T_TEAM_A", role = "operator", namespaces = ["team-a-*"] },
    { name = "team-b", token_env = "T_TEAM_B", role = "operator", namespaces = ["team-b-*"] },
    { name = "view-a", token_env = "T_VIEW_A", role = "viewer", namespaces = ["team-a-*"] }]"#;

/// Policies: `slow` stays at 10 % for an hour; `gate10` waits for approval at 10 % then runs on time;
/// `gates` waits at 10 % and again at 50 %.
const POLICIES: &[(&str, &str)] = &[
    ("slow", "steps: [10, 50, 100]\ninterval: 1h\nprogressDeadline: 10h\n"),
    ("gate10", "steps: [10, 50, 100]\ninterval: 300ms\ngates: [{at: 10, approval: manual, timeout: 10m}]\n"),
    (
        "gates",
        "steps: [10, 50, 100]\ninterval: 300ms\n\
         gates: [{at: 10, approval: manual, timeout: 10m}, {at: 50, approval: manual, timeout: 10m}]\n",
    ),
];

struct World {
    daemon: Daemon,
    http: reqwest::Client,
    kube: kube::Client,
    _dir: tempfile::TempDir,
}

/// The daemon, with `extra` environment, talking to the shared test apiserver through a kubeconfig.
async fn world(extra: &[(&str, &str)]) -> World {
    let url = k8s::shared_url().await;
    let kube = k8s::shared_client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("policies")).expect("policies dir");
    for (name, body) in POLICIES {
        let text = format!("name: {name}\nstrategy: canary\nthreshold: 2\n{body}");
        std::fs::write(dir.path().join(format!("policies/{name}.yaml")), text).expect("policy");
    }
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\n\
             clusters: [{{name: t, cluster: {{server: \"{url}\", insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: t, user: {{}}}}]\ncontexts: [{{name: t, context: {{cluster: t, user: t}}}}]\n"
        ),
    )
    .expect("kubeconfig");
    let kc = kubeconfig.display().to_string();
    let mut env: Vec<(&str, &str)> = vec![
        ("VANE_SERVER_TOKENS", TOKENS),
        ("T_ADMIN", ADMIN),
        ("T_TEAM_A", TEAM_A),
        ("T_TEAM_B", TEAM_B),
        ("T_VIEW_A", VIEW_A),
        ("VANE_SLACK_SIGNING_SECRET", SLACK_SECRET),
        ("VANE_KUBERNETES_KUBECONFIG", &kc),
    ];
    env.extend_from_slice(extra);
    let daemon = tokio::task::block_in_place(|| Daemon::start(dir.path(), free_port(), &env));
    World { daemon, http: reqwest::Client::new(), kube, _dir: dir }
}

fn vs_object(opted_in: bool) -> Value {
    let labels = if opted_in { json!({ "vane.dev/managed": "true" }) } else { json!({ "app": "agent-service" }) };
    json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": { "name": "agent-service", "labels": labels },
        "spec": { "hosts": ["agent-service"], "http": [
            { "name": "primary", "route": [
                { "destination": { "host": "agent-service", "subset": "v1-0-0" }, "weight": 100 },
                { "destination": { "host": "agent-service", "subset": "v1-1-0" }, "weight": 0 } ] } ] }
    })
}

fn dr_object() -> Value {
    json!({ "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": { "name": "agent-service" },
            "spec": { "host": "agent-service", "subsets": [
                { "name": "v1-0-0", "labels": { "version": "v1.0.0" } },
                { "name": "v1-1-0", "labels": { "version": "v1.1.0" } } ] } })
}

fn istio_request(service: &str, ns: &str, policy: &str, route: Option<&str>) -> Value {
    let mut router = json!({ "kind": "istio", "virtualService": "agent-service",
                             "stableSubset": "v1-0-0", "canarySubset": "v1-1-0" });
    if let Some(r) = route {
        router["route"] = json!(r);
    }
    json!({ "service": service, "namespace": ns, "version": "v1.1.0", "stableVersion": "v1.0.0",
            "policy": policy, "router": router })
}

impl World {
    async fn put(&self, ns: &str, ar: &ApiResource, obj: Value) -> DynamicObject {
        let api: Api<DynamicObject> = Api::namespaced_with(self.kube.clone(), ns, ar);
        api.create(&PostParams::default(), &serde_json::from_value(obj).unwrap()).await.expect("object created")
    }

    async fn read(&self, ns: &str, ar: &ApiResource, name: &str) -> DynamicObject {
        let api: Api<DynamicObject> = Api::namespaced_with(self.kube.clone(), ns, ar);
        api.get(name).await.expect("object readable")
    }

    /// An opted-in (or not) VirtualService with its DestinationRule in `ns`.
    async fn istio_objects(&self, ns: &str, opted_in: bool) {
        self.put(ns, &virtual_service(), vs_object(opted_in)).await;
        self.put(ns, &destination_rule(), dr_object()).await;
    }

    /// The VirtualService's (stable, canary) weights.
    async fn vs_weights(&self, ns: &str) -> (i64, i64) {
        let vs = self.read(ns, &virtual_service(), "agent-service").await;
        let w = |i: usize| vs.data["spec"]["http"][0]["route"][i]["weight"].as_i64().unwrap_or(-1);
        (w(0), w(1))
    }

    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, token, body, None).await
    }

    async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.daemon.url)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        let res = req.send().await.expect("daemon answers");
        (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, "/api/v1/rollouts", token, Some(body)).await
    }

    async fn get(&self, id: &str) -> Value {
        let (s, r) = self.call(reqwest::Method::GET, &format!("/api/v1/rollouts/{id}"), ADMIN, None).await;
        assert_eq!(s, 200, "{r}");
        r
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        let (s, r) = self.call(reqwest::Method::GET, &format!("/api/v1/rollouts/{id}/events"), ADMIN, None).await;
        assert_eq!(s, 200, "{r}");
        r["items"].as_array().cloned().unwrap_or_default()
    }

    async fn all(&self) -> Vec<Value> {
        let (_, r) = self.call(reqwest::Method::GET, "/api/v1/rollouts", ADMIN, None).await;
        r["items"].as_array().cloned().unwrap_or_default()
    }

    /// Wait until the rollout satisfies `f` (polling the API).
    async fn until(&self, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.get(id).await;
            if f(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {} {}", r["phase"], r["message"]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What must not change when an attack is refused: phase, weight and the history (but for the
    /// periodic analyses a rollout waiting at a gate keeps running).
    async fn snapshot(&self, id: &str) -> (Value, Value, Vec<Value>) {
        let r = self.get(id).await;
        let history = self.events(id).await.into_iter().filter(|e| e["type"] != "analysis").collect();
        (r["phase"].clone(), r["canaryWeight"].clone(), history)
    }

    /// POST a Slack interaction with the given timestamp and signature.
    async fn slack(&self, body: &str, ts: i64, signature: &str) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}/api/v1/slack/interactions", self.daemon.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", signature)
            .body(body.to_string())
            .send()
            .await
            .expect("daemon answers");
        (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
    }

    /// A correctly signed click, timestamped now.
    async fn click(&self, action: &str, value: &str, nonce: u32) -> (u16, Value) {
        let body = click_body(action, value, nonce);
        let ts = now();
        self.slack(&body, ts, &sign(ts, &body)).await
    }
}

/// Slack's form body for a button click; `nonce` makes each click's body (and signature) distinct,
/// as Slack's `action_ts` does.
fn click_body(action: &str, value: &str, nonce: u32) -> String {
    slack::click(action, value, ("U123", "alice"), None, &format!("1.{nonce}"))
}

fn sign(ts: i64, body: &str) -> String {
    slack::sign(SLACK_SECRET, ts, body)
}

fn id(r: &Value) -> String {
    r["id"].as_str().unwrap_or_else(|| panic!("no id in {r}")).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_token_cannot_see_drive_or_create_in_another_namespace() {
    let w = world(&[]).await;
    let ns_b = k8s::namespace("team-b");
    let ns_a = k8s::namespace("team-a");
    w.istio_objects(&ns_b, true).await;
    w.istio_objects(&ns_a, true).await;
    let (s, r) = w.create(TEAM_B, istio_request("agent-service", &ns_b, "slow", None)).await;
    assert_eq!(s, 201, "{r}");
    let b = id(&r);
    w.until(&b, "10% applied", |r| {
        r["phase"] == "Progressing" && r["message"].as_str().unwrap_or("").contains("applied")
    })
    .await;
    let before = w.snapshot(&b).await;
    let weights = w.vs_weights(&ns_b).await;
    assert_eq!(weights, (90, 10));

    // Reads: exactly what an unknown id gets.
    let (s, unknown) = w.call(reqwest::Method::GET, "/api/v1/rollouts/01ARZ3NDEKTSV4RRFFQ69G5FAV", TEAM_A, None).await;
    assert_eq!(s, 404);
    for token in [TEAM_A, VIEW_A] {
        for path in [format!("/api/v1/rollouts/{b}"), format!("/api/v1/rollouts/{b}/events")] {
            let (s, r) = w.call(reqwest::Method::GET, &path, token, None).await;
            assert_eq!(s, 404, "{path}: {r}");
            assert_eq!(r["error"]["code"], unknown["error"]["code"]);
            assert!(!r.to_string().contains(&ns_b), "does not even say where it is: {r}");
        }
        for q in ["", "?namespace=", "?service=agent-service", "?phase=Progressing"] {
            let q = if q == "?namespace=" { format!("?namespace={ns_b}") } else { q.to_string() };
            let (s, r) = w.call(reqwest::Method::GET, &format!("/api/v1/rollouts{q}"), token, None).await;
            assert_eq!(s, 200, "{r}");
            assert!(!r.to_string().contains(&b), "list {q:?} shows another namespace's rollout: {r}");
        }
    }
    // Commands: 404 as well.
    for action in ["promote", "pause", "resume", "abort"] {
        let (s, r) = w.call(reqwest::Method::POST, &format!("/api/v1/rollouts/{b}/{action}"), TEAM_A, None).await;
        assert_eq!(s, 404, "{action}: {r}");
    }
    // Create there: 403 naming the namespace, nothing created.
    let (s, r) = w.create(TEAM_A, istio_request("other-service", &ns_b, "slow", Some("primary"))).await;
    assert_eq!((s, r["error"]["field"].as_str()), (403, Some("namespace")), "{r}");
    assert_eq!(w.all().await.len(), 1);

    assert_eq!(w.snapshot(&b).await, before, "the refused calls changed nothing");
    assert_eq!(w.vs_weights(&ns_b).await, weights, "no weight moved");
    // The owner still sees and drives it; team-a works in its own namespace.
    let (s, r) = w.call(reqwest::Method::GET, "/api/v1/rollouts", TEAM_B, None).await;
    assert_eq!((s, r["items"].as_array().map(Vec::len)), (200, Some(1)));
    let (s, r) = w.call(reqwest::Method::POST, &format!("/api/v1/rollouts/{b}/pause"), TEAM_B, None).await;
    assert_eq!((s, r["phase"].as_str()), (200, Some("Paused")), "{r}");
    let (s, r) = w.create(TEAM_A, istio_request("agent-service", &ns_a, "slow", None)).await;
    assert_eq!(s, 201, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_are_per_token() {
    let w = world(&[]).await;
    let ns = k8s::namespace("team-a");
    w.istio_objects(&ns, true).await;
    let post = |token: &'static str, body: Value| {
        let w = &w;
        async move { w.call_with(reqwest::Method::POST, "/api/v1/rollouts", token, Some(body), Some("deploy-1")).await }
    };
    let mine = istio_request("agent-service", &ns, "slow", Some("primary"));
    let (s, first) = post(TEAM_A, mine.clone()).await;
    assert_eq!(s, 201, "{first}");
    let (s, again) = post(TEAM_A, mine.clone()).await;
    assert_eq!((s, id(&again)), (200, id(&first)), "the same token's retry is a replay");
    // Another token, same key, same body: not a replay of team-a's request (it would return team-a's
    // rollout): its own create, refused because that service already has an active rollout.
    let (s, r) = post(ADMIN, mine).await;
    assert_eq!(s, 409, "{r}");
    assert_eq!(r["error"]["code"], "conflict");
    // Another token, same key, another body: an independent rollout.
    let (s, theirs) = post(
        ADMIN,
        json!({ "service": "billing", "namespace": ns, "version": "v2", "stableVersion": "v1",
        "policy": "slow", "router": { "kind": "nginx-ingress", "ingress": "billing", "canaryIngress": "billing-canary",
        "canaryService": "billing-v2" } }),
    )
    .await;
    assert_eq!(s, 201, "{theirs}");
    assert_ne!(id(&theirs), id(&first));
    let (s, again) = post(TEAM_A, istio_request("agent-service", &ns, "slow", Some("primary"))).await;
    assert_eq!((s, id(&again)), (200, id(&first)), "team-a's key still names team-a's rollout");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_outside_the_kubernetes_allow_list_is_refused_before_anything_is_touched() {
    let w = world(&[("VANE_KUBERNETES_NAMESPACES", r#"["allowed-*"]"#)]).await;
    let ns = k8s::namespace("forbidden");
    w.istio_objects(&ns, true).await;
    let rv = w.read(&ns, &virtual_service(), "agent-service").await.metadata.resource_version;
    let (s, r) = w.create(ADMIN, istio_request("agent-service", &ns, "slow", None)).await;
    assert_eq!((s, r["error"]["field"].as_str()), (422, Some("namespace")), "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("allowed-*"), "{r}");
    assert!(w.all().await.is_empty(), "no rollout was created");
    assert_eq!(w.read(&ns, &virtual_service(), "agent-service").await.metadata.resource_version, rv, "not written");
    let ok = k8s::namespace("allowed");
    w.istio_objects(&ok, true).await;
    assert_eq!(w.create(ADMIN, istio_request("agent-service", &ok, "slow", None)).await.0, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_on_an_unlabelled_virtual_service_fails_with_no_weight_moved() {
    let w = world(&[]).await;
    let ns = k8s::namespace("unlabelled");
    w.istio_objects(&ns, false).await;
    let rv = w.read(&ns, &virtual_service(), "agent-service").await.metadata.resource_version;
    let (s, r) = w.create(ADMIN, istio_request("agent-service", &ns, "slow", None)).await;
    assert_eq!(s, 201, "{r}");
    let r = w.until(&id(&r), "a terminal phase", |r| r["phase"] == "Failed" || r["phase"] == "Succeeded").await;
    assert_eq!(r["phase"], "Failed", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(msg.contains("vane.dev/managed") && msg.contains("no traffic was moved"), "{msg}");
    assert_eq!(r["canaryWeight"], 0);
    let events = w.events(&id(&r)).await;
    assert!(!events.iter().any(|e| e["type"] == "weight-set"), "no weight was set: {events:?}");
    assert_eq!(w.read(&ns, &virtual_service(), "agent-service").await.metadata.resource_version, rv, "never written");
    assert_eq!(w.vs_weights(&ns).await, (100, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_canary_ingress_is_not_taken_over() {
    let w = world(&[]).await;
    let ns = k8s::namespace("foreign-canary");
    let backend = |svc: &str| {
        json!({ "rules": [{ "host": "api.example", "http": { "paths": [{ "path": "/", "pathType": "Prefix",
        "backend": { "service": { "name": svc, "port": { "number": 8080 } } } }] } }] })
    };
    w.put(
        &ns,
        &ingress(),
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": "shop", "labels": { "vane.dev/managed": "true" } }, "spec": backend("shop-v1") }),
    )
    .await;
    // Another team's (or another tool's) canary Ingress, at 0 %.
    w.put(&ns, &ingress(), json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": "shop-canary", "labels": { "app.kubernetes.io/managed-by": "flagger" },
            "annotations": { "nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-weight": "0" } },
        "spec": backend("shop-experiment") }))
        .await;
    let before_main = w.read(&ns, &ingress(), "shop").await.metadata.resource_version;
    let before_canary = w.read(&ns, &ingress(), "shop-canary").await.metadata.resource_version;
    let (s, r) = w
        .create(ADMIN, json!({ "service": "shop", "namespace": ns, "version": "v2", "stableVersion": "v1", "policy": "slow",
            "router": { "kind": "nginx-ingress", "ingress": "shop", "canaryIngress": "shop-canary", "canaryService": "shop-v2" } }))
        .await;
    assert_eq!(s, 201, "{r}");
    let r = w.until(&id(&r), "a terminal phase", |r| r["phase"] == "Failed" || r["phase"] == "Progressing").await;
    assert_eq!(r["phase"], "Failed", "{r}");
    assert!(r["message"].as_str().unwrap().contains("not created by vane"), "{r}");
    let canary = w.read(&ns, &ingress(), "shop-canary").await;
    assert_eq!(canary.metadata.resource_version, before_canary, "the foreign canary Ingress was not written");
    assert_eq!(canary.data["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"], "shop-experiment");
    assert_eq!(w.read(&ns, &ingress(), "shop").await.metadata.resource_version, before_main);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_rollout_on_the_same_virtual_service_route_is_409() {
    let w = world(&[]).await;
    let ns = k8s::namespace("same-route");
    w.istio_objects(&ns, true).await;
    let (s, r) = w.create(ADMIN, istio_request("agent-service", &ns, "slow", Some("primary"))).await;
    assert_eq!(s, 201, "{r}");
    let first = id(&r);
    w.until(&first, "10% applied", |r| r["message"].as_str().unwrap_or("").contains("applied")).await;
    let before = w.snapshot(&first).await;
    // Another service name, the same VirtualService: by route name, and by "whichever route has
    // these subsets" (which is the same route).
    for route in [Some("primary"), None] {
        let (s, r) = w.create(ADMIN, istio_request("agent-service-shadow", &ns, "slow", route)).await;
        assert_eq!((s, r["error"]["code"].as_str()), (409, Some("conflict")), "{route:?}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().contains("VirtualService/agent-service"), "{r}");
    }
    assert_eq!(w.all().await.len(), 1, "nothing created");
    assert_eq!(w.snapshot(&first).await, before);
    assert_eq!(w.vs_weights(&ns).await, (90, 10));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slack_click_for_a_past_gate_is_409_and_changes_nothing() {
    let w = world(&[]).await;
    let ns = k8s::namespace("slack-past");
    w.istio_objects(&ns, true).await;
    let (s, r) = w.create(ADMIN, istio_request("agent-service", &ns, "gates", None)).await;
    assert_eq!(s, 201, "{r}");
    let rid = id(&r);
    w.until(&rid, "the gate at 10%", |r| r["phase"] == "AwaitingApproval" && r["canaryWeight"] == 10).await;
    let (s, j) = w.click("vane_promote", &format!("{rid}:10"), 1).await;
    assert_eq!(s, 200, "{j}");
    w.until(&rid, "the gate at 50%", |r| r["phase"] == "AwaitingApproval" && r["canaryWeight"] == 50).await;
    let before = w.snapshot(&rid).await;
    // The gate-10 message's buttons, clicked again now that the rollout waits at 50 %: a fresh,
    // correctly signed request, refused because the gate it names is not current.
    let (s, j) = w.click("vane_promote", &format!("{rid}:10"), 2).await;
    assert_eq!(s, 409, "{j}");
    assert!(j["text"].as_str().unwrap().contains("gate at 10%"), "{j}");
    let (s, j) = w.click("vane_abort", &format!("{rid}:10"), 3).await;
    assert_eq!(s, 409, "an old message's Abort is refused too: {j}");
    // A bare rollout id cannot say which gate it approves.
    let (s, j) = w.click("vane_promote", &rid, 4).await;
    assert_eq!(s, 409, "{j}");
    tokio::time::sleep(Duration::from_millis(700)).await; // two analysis intervals
    assert_eq!(w.snapshot(&rid).await, before, "nothing changed");
    assert_eq!(w.vs_weights(&ns).await, (50, 50));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_slack_request_is_401() {
    let w = world(&[]).await;
    let ns = k8s::namespace("slack-replay");
    w.istio_objects(&ns, true).await;
    let (s, r) = w.create(ADMIN, istio_request("agent-service", &ns, "gates", None)).await;
    assert_eq!(s, 201, "{r}");
    let rid = id(&r);
    w.until(&rid, "the gate at 10%", |r| r["phase"] == "AwaitingApproval" && r["canaryWeight"] == 10).await;
    let body = click_body("vane_promote", &format!("{rid}:10"), 1);
    let ts = now();
    let sig = sign(ts, &body);
    assert_eq!(w.slack(&body, ts, &sig).await.0, 200);
    w.until(&rid, "the gate at 50%", |r| r["phase"] == "AwaitingApproval" && r["canaryWeight"] == 50).await;
    let before = w.snapshot(&rid).await;
    // The captured request, byte for byte, well inside the 5-minute window.
    let (s, j) = w.slack(&body, ts, &sig).await;
    assert_eq!(s, 401, "{j}");
    assert!(j["text"].as_str().unwrap().contains("replay"), "{j}");
    // The same for a request that would succeed now (the gate-50 button), replayed after a refusal
    // elsewhere: its first delivery counts, the copy does not.
    let abort = click_body("vane_abort", &format!("{rid}:50"), 2);
    let ts2 = now();
    let sig2 = sign(ts2, &abort);
    let bad = w.slack(&abort, ts2, &sign(ts2, "another body")).await;
    assert_eq!(bad.0, 401, "a wrong signature is not remembered: {}", bad.1);
    assert_eq!(w.snapshot(&rid).await, before, "nothing changed");
    assert_eq!(w.slack(&abort, ts2, &sig2).await.0, 200, "first delivery applies");
    w.until(&rid, "aborted", |r| r["phase"] == "Aborted").await;
    let after = w.snapshot(&rid).await;
    assert_eq!(w.slack(&abort, ts2, &sig2).await.0, 401);
    assert_eq!(w.snapshot(&rid).await, after);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_double_promote_click_at_a_gate_approves_once_and_the_next_step_is_analysed() {
    let w = world(&[]).await;
    let ns = k8s::namespace("slack-double");
    w.istio_objects(&ns, true).await;
    let (s, r) = w.create(ADMIN, istio_request("agent-service", &ns, "gate10", None)).await;
    assert_eq!(s, 201, "{r}");
    let rid = id(&r);
    w.until(&rid, "the gate at 10%", |r| r["phase"] == "AwaitingApproval").await;
    // Two clicks (two distinct Slack requests) on the same Promote button, at the same moment.
    let value = format!("{rid}:10");
    let (a, b) = tokio::join!(w.click("vane_promote", &value, 1), w.click("vane_promote", &value, 2));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{a:?} / {b:?}");
    // A retried API approval of the same gate is refused the same way.
    let (s, r) = w
        .call(reqwest::Method::POST, &format!("/api/v1/rollouts/{rid}/promote"), ADMIN, Some(json!({ "gate": 10 })))
        .await;
    assert_eq!(s, 409, "{r}");
    let code = r["error"]["code"].as_str().unwrap_or_default();
    assert!(["gate_not_current", "invalid_phase"].contains(&code), "past the gate (or already finished): {r}");
    let r = w.until(&rid, "the end", |r| r["phase"] == "Succeeded" || r["phase"] == "RolledBack").await;
    assert_eq!(r["phase"], "Succeeded", "{r}");
    let events = w.events(&rid).await;
    let seq = |f: &dyn Fn(&Value) -> bool| {
        events.iter().filter(|e| f(e)).map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(seq(&|e| e["type"] == "promoted").len(), 1, "approved once");
    let set: Vec<u64> =
        events.iter().filter(|e| e["type"] == "weight-set").map(|e| e["canaryWeight"].as_u64().unwrap()).collect();
    assert_eq!(set, [10, 50, 100]);
    let at_50 = seq(&|e| e["type"] == "weight-set" && e["canaryWeight"] == 50)[0];
    let at_100 = seq(&|e| e["type"] == "step" && e["canaryWeight"] == 100)[0];
    let analysed_50 = seq(&|e| e["type"] == "analysis" && e["canaryWeight"] == 50);
    assert!(analysed_50.iter().any(|s| *s > at_50 && *s < at_100), "50% analysed before 100%: {events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_metrics_port_the_api_port_serves_no_metrics() {
    let ops = free_port();
    let addr = format!("127.0.0.1:{ops}");
    let w = world(&[("VANE_SERVER_METRICS_LISTEN", &addr)]).await;
    let get = |url: String| async move { reqwest::get(url).await.expect("answers").status().as_u16() };
    assert_eq!(get(format!("{}/metrics", w.daemon.url)).await, 404, "rollout names are not shown on the API port");
    assert_eq!(get(format!("http://{addr}/metrics")).await, 200);
    for probe in ["/health/live", "/health/ready"] {
        assert_eq!(get(format!("{}{probe}", w.daemon.url)).await, 200);
        assert_eq!(get(format!("http://{addr}{probe}")).await, 200);
    }
    assert_eq!(get(format!("http://{addr}/api/v1/rollouts")).await, 404, "the metrics port serves no API");
}
