//! The REST API over HTTP: every status code path, both roles, idempotency, filters, OpenAPI.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use vane::api::{self, AppState, Auth};
use vane::config::{Role, TokenConfig};
use vane::fixtures::{self, FakeRouters, ScriptedAnalyzer};
use vane::rollout::controller::Controller;

const OP: &str = "operator-token-0123456789";
const VIEW: &str = "viewer-token-0123456789";

struct Api {
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn serve() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let env = fixtures::env(dir.path(), Arc::new(FakeRouters::default()), Arc::new(ScriptedAnalyzer::default()));
    let metrics = env.metrics.clone();
    // Long interval: rollouts stay Progressing for the duration of the test.
    let mut gated = fixtures::policy("canary-default", &[5, 25, 50, 100], Duration::from_secs(3600), 5);
    gated.progress_deadline = Duration::from_secs(36_000);
    let controller = Controller::new(env, vec![gated]);
    let tokens = vec![
        TokenConfig {
            name: "ci".into(),
            token: Some(OP.into()),
            token_env: None,
            role: Role::Operator,
            namespaces: Default::default(),
        },
        TokenConfig {
            name: "grafana".into(),
            token: Some(VIEW.into()),
            token_env: None,
            role: Role::Viewer,
            namespaces: Default::default(),
        },
    ];
    let auth = Auth::from_config(&tokens, |_| None).unwrap();
    let state = AppState {
        controller,
        auth,
        metrics,
        ready: Arc::new(AtomicBool::new(true)),
        slack: None,
        admission: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, api::router(state)).await });
    Api { base, http: reqwest::Client::new(), _dir: dir }
}

fn body(service: &str) -> Value {
    json!({
        "service": service, "namespace": "ai-workflow-prod", "version": "v1.1.0", "stableVersion": "v1.0.0",
        "policy": "canary-default", "router": { "kind": "exec", "profile": "lb" }
    })
}

impl Api {
    async fn req(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self.http.request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn raw(&self, path: &str, token: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let res = self.http.post(format!("{}{path}", self.base)).bearer_auth(token).body(body).send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn wait_phase(&self, id: &str, phase: &str) {
        for _ in 0..500 {
            let (_, r) = self.req("GET", &format!("/api/v1/rollouts/{id}"), Some(VIEW), None).await;
            if r["phase"] == phase {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{id} never reached {phase}");
    }

    async fn create(&self, service: &str) -> String {
        let (s, v) = self.req("POST", "/api/v1/rollouts", Some(OP), Some(body(service))).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_string()
    }
}

fn err_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("error shape: {v}"))
}

#[tokio::test]
async fn auth_roles_on_every_mutating_route() {
    let api = serve().await;
    let id = api.create("cart").await;
    api.wait_phase(&id, "Progressing").await;
    let mutating = [
        ("POST", "/api/v1/rollouts".to_string()),
        ("POST", format!("/api/v1/rollouts/{id}/promote")),
        ("POST", format!("/api/v1/rollouts/{id}/pause")),
        ("POST", format!("/api/v1/rollouts/{id}/resume")),
        ("POST", format!("/api/v1/rollouts/{id}/abort")),
    ];
    for (m, p) in &mutating {
        let (s, v) = api.req(m, p, None, Some(body("x"))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {p} without token: {v}");
        assert_eq!(err_code(&v), "unauthorized");
        let (s, _) = api.req(m, p, Some("wrong-token-0123456789"), Some(body("x"))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {p} with a bad token");
        let (s, v) = api.req(m, p, Some(VIEW), Some(body("x"))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {p} as viewer: {v}");
        assert_eq!(err_code(&v), "forbidden");
    }
    for p in [
        "/api/v1/rollouts".to_string(),
        format!("/api/v1/rollouts/{id}"),
        format!("/api/v1/rollouts/{id}/events"),
        "/api/v1/policies".into(),
    ] {
        assert_eq!(api.req("GET", &p, None, None).await.0, StatusCode::UNAUTHORIZED, "GET {p} anonymous");
        assert_eq!(api.req("GET", &p, Some(VIEW), None).await.0, StatusCode::OK, "GET {p} as viewer");
    }
    // Nothing the refused calls asked for happened.
    let (_, r) = api.req("GET", &format!("/api/v1/rollouts/{id}"), Some(VIEW), None).await;
    assert_eq!((r["phase"].as_str(), r["canaryWeight"].as_u64()), (Some("Progressing"), Some(5)), "{r}");
    let (_, l) = api.req("GET", "/api/v1/rollouts", Some(VIEW), None).await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_input_gets_4xx_with_the_field() {
    let api = serve().await;
    let (s, v) = api.raw("/api/v1/rollouts", OP, b"{\"service\": ".to_vec()).await;
    assert_eq!((s, err_code(&v)), (StatusCode::BAD_REQUEST, "bad_request"), "{v}");

    let mut b = body("cart");
    b.as_object_mut().unwrap().remove("version");
    let (s, v) = api.req("POST", "/api/v1/rollouts", Some(OP), Some(b)).await;
    assert_eq!((s, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("version")), "{v}");

    let cases = [
        (json!({"policy": "nope"}), "policy"),
        (json!({"overrides": {"steps": [10, 50]}}), "overrides.steps"),
        (json!({"overrides": {"interval": "soon"}}), "overrides.interval"),
        (json!({"service": "Bad_Name"}), "service"),
        (json!({"router": {"kind": "exec", "command": []}}), "router.command"),
        (json!({"router": {"kind": "exec", "profile": " "}}), "router.profile"),
        (
            json!({"router": {"kind": "nginx", "profile": "edge", "stableUpstream": "a;b", "canaryUpstream": "c"}}),
            "router.stableUpstream",
        ),
        (json!({"router": {"kind": "nginx", "profile": "edge", "configFile": "/etc/passwd"}}), "router.configFile"),
        (json!({"version": "v2@127.0.0.1:18099/x?"}), "version"),
        (json!({"namespace": "n".repeat(300)}), "namespace"),
        (json!({"overrides": {"interval": "10ms"}}), "overrides.interval"),
        (json!({"router": {"kind": "teleport"}}), "router"),
        (json!({"surprise": 1}), ""),
    ];
    for (patch, field) in cases {
        let mut b = body("cart");
        for (k, v) in patch.as_object().unwrap() {
            b[k] = v.clone();
        }
        let (s, v) = api.req("POST", "/api/v1/rollouts", Some(OP), Some(b)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{patch}: {v}");
        assert!(v["error"]["field"].as_str().unwrap_or("").starts_with(field), "{patch}: {v}");
    }

    let big = vec![b' '; vane::api::BODY_LIMIT + 10];
    let (s, v) = api.raw("/api/v1/rollouts", OP, big).await;
    assert_eq!((s, err_code(&v)), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));

    for p in [
        "/api/v1/rollouts/nope",
        "/api/v1/rollouts/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/rollouts/01JD0000000000000000000000",
        "/nowhere",
    ] {
        let (s, v) = api.req("GET", p, Some(VIEW), None).await;
        assert_eq!((s, err_code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{p}");
    }
    let (s, v) = api.req("GET", "/api/v1/rollouts?phase=Sideways", Some(VIEW), None).await;
    assert_eq!((s, v["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("phase")));
    let (s, _) = api.req("GET", "/api/v1/rollouts?limit=0", Some(VIEW), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api.req("DELETE", "/api/v1/rollouts", Some(OP), None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn conflicts_are_409() {
    let api = serve().await;
    let id = api.create("cart").await;
    let (s, v) = api.req("POST", "/api/v1/rollouts", Some(OP), Some(body("cart"))).await;
    assert_eq!((s, err_code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(&id));
    let (s, v) = api.req("POST", &format!("/api/v1/rollouts/{id}/resume"), Some(OP), None).await;
    assert_eq!((s, err_code(&v)), (StatusCode::CONFLICT, "invalid_phase"), "{v}");
    let (s, v) = api
        .req("POST", &format!("/api/v1/rollouts/{id}/abort"), Some(OP), Some(json!({"reason": "smoke failed"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Once finished: the service is free again, and control calls are 409.
    api.wait_phase(&id, "Aborted").await;
    let (s, _) =
        api.req("POST", &format!("/api/v1/rollouts/{id}/promote"), Some(OP), Some(json!({"full": true}))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    api.create("cart").await;
}

#[tokio::test]
async fn idempotency_key_replays_the_same_rollout() {
    let api = serve().await;
    let post = |key: &'static str, b: Value| {
        let r = api
            .http
            .post(format!("{}/api/v1/rollouts", api.base))
            .bearer_auth(OP)
            .header("Idempotency-Key", key)
            .json(&b);
        async move {
            let res = r.send().await.unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    let (s1, a) = post("deploy-42", body("cart")).await;
    let (s2, b) = post("deploy-42", body("cart")).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(a["id"], b["id"]);
    let mut other = body("cart");
    other["version"] = json!("v9");
    let (s3, v) = post("deploy-42", other).await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY, "same key, different body: {v}");
    let (_, l) = api.req("GET", "/api/v1/rollouts", Some(VIEW), None).await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn list_filters_events_and_control() {
    let api = serve().await;
    let a = api.create("cart").await;
    let b = api.create("search").await;
    let (_, l) = api.req("GET", "/api/v1/rollouts", Some(VIEW), None).await;
    let ids: Vec<_> = l["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec![b.clone(), a.clone()], "newest first");
    let (_, l) = api.req("GET", "/api/v1/rollouts?service=cart", Some(VIEW), None).await;
    assert_eq!(l["items"][0]["id"], a.as_str());
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    let (_, l) = api.req("GET", "/api/v1/rollouts?limit=1", Some(VIEW), None).await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1);

    let (s, r) = api.req("POST", &format!("/api/v1/rollouts/{a}/pause"), Some(OP), None).await;
    assert_eq!((s, r["phase"].as_str()), (StatusCode::OK, Some("Paused")));
    let (_, l) = api.req("GET", "/api/v1/rollouts?phase=paused", Some(VIEW), None).await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    api.req("POST", &format!("/api/v1/rollouts/{a}/resume"), Some(OP), None).await;
    let (s, r) = api.req("POST", &format!("/api/v1/rollouts/{a}/promote"), Some(OP), Some(json!({"full": true}))).await;
    assert_eq!((s, r["canaryWeight"].as_u64()), (StatusCode::OK, Some(100)), "{r}");

    let (_, e) = api.req("GET", &format!("/api/v1/rollouts/{a}/events"), Some(VIEW), None).await;
    let items = e["items"].as_array().unwrap();
    assert_eq!(items[0]["type"], "created");
    assert_eq!(items[0]["actor"], "ci");
    let seqs: Vec<u64> = items.iter().map(|i| i["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(items.iter().any(|i| i["type"] == "paused" && i["actor"] == "ci"));
}

#[tokio::test]
async fn health_metrics_and_openapi() {
    let api = serve().await;
    api.create("cart").await;
    assert_eq!(api.req("GET", "/health/live", None, None).await.0, StatusCode::OK);
    assert_eq!(api.req("GET", "/health/ready", None, None).await.0, StatusCode::OK);
    let (s, m) = api.req("GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let m = m.as_str().unwrap();
    assert!(m.contains("vane_info{version=\""), "{m}");
    assert!(
        m.contains("vane_rollout_phase{namespace=\"ai-workflow-prod\",service=\"cart\",phase=\"Pending\"}")
            || m.contains(
                "vane_rollout_phase{namespace=\"ai-workflow-prod\",service=\"cart\",phase=\"Progressing\"} 1"
            ),
        "{m}"
    );
    assert!(m.contains("vane_rollout_weight{namespace=\"ai-workflow-prod\",service=\"cart\"}"), "{m}");
    let (s, doc) = api.req("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/v1/rollouts",
        "/api/v1/rollouts/{id}",
        "/api/v1/rollouts/{id}/promote",
        "/api/v1/rollouts/{id}/abort",
        "/api/v1/policies",
        "/api/v1/slack/interactions",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing from OpenAPI");
    }
    assert!(doc["components"]["schemas"]["RolloutView"].is_object());
}

#[tokio::test]
async fn workload_fields_are_validated_with_the_field_named() {
    let api = serve().await;
    let with = |workload: Value, router: Value| {
        let mut b = body("agent-service");
        b["router"] = router;
        b["workload"] = workload;
        b
    };
    let istio = json!({ "kind": "istio", "virtualService": "agent-service", "stableSubset": "v1-0-0", "canarySubset": "v1-1-0" });
    let good = json!({ "deployment": "agent-service", "image": "registry/agent-service:v1.1.0", "container": "agent-service",
                       "canaryScale": "proportional", "readyTimeout": "5m", "retire": "scale-to-zero", "retireAfter": "5m" });
    let long_name = "a".repeat(57);
    let long_image = format!("registry/{}:v1", "x".repeat(vane::rollout::spec::MAX_IMAGE_LEN));
    let cases = [
        (json!({ "deployment": "Agent_Service" }), "workload.deployment"),
        (json!({ "deployment": long_name }), "workload.deployment"),
        (json!({ "image": "" }), "workload.image"),
        (json!({ "image": "registry/agent service:v1" }), "workload.image"),
        (json!({ "image": long_image }), "workload.image"),
        (json!({ "container": "Bad/Name" }), "workload.container"),
        (json!({ "canaryScale": "half" }), "workload.canaryScale"),
        (json!({ "readyTimeout": "0s" }), "workload.readyTimeout"),
        (json!({ "readyTimeout": "soon" }), "workload.readyTimeout"),
        (json!({ "readyTimeout": "24h" }), "workload.readyTimeout"),
        (json!({ "retire": "burn" }), "workload.retire"),
        (json!({ "retireAfter": "48h" }), "workload.retireAfter"),
        (json!({ "command": ["sh"] }), "workload"),
    ];
    for (patch, field) in cases {
        let mut w = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            w[k] = v.clone();
        }
        let (s, v) = api.req("POST", "/api/v1/rollouts", Some(OP), Some(with(w, istio.clone()))).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{patch}: {v}");
        assert!(v["error"]["field"].as_str().unwrap_or("").starts_with(field), "{patch}: {v}");
    }
    let exec = json!({ "kind": "exec", "profile": "lb" });
    let (s, v) = api.req("POST", "/api/v1/rollouts", Some(OP), Some(with(good.clone(), exec))).await;
    assert_eq!((s, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("workload")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("istio, nginx-ingress or gateway-api"), "{v}");
    // A canary name given with a workload is one vane creates: it must be a valid name.
    let named = |k: &str, f: &str, v: &str| {
        let mut r = match k {
            "istio" => istio.clone(),
            _ => json!({ "kind": "gateway-api", "httpRoute": "agent-service", "stableBackend": "agent-service" }),
        };
        r[f] = json!(v);
        r
    };
    for (router, field) in [
        (named("istio", "canarySubset", "v1.1.0"), "router.canarySubset"),
        (named("gateway-api", "canaryBackend", "Agent-Canary"), "router.canaryBackend"),
    ] {
        let (s, v) = api.req("POST", "/api/v1/rollouts", Some(OP), Some(with(good.clone(), router))).await;
        assert_eq!((s, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(field)), "{v}");
    }
    // Left out, it is derived from the version following the stable subset's pattern.
    let mut derived = istio.clone();
    derived.as_object_mut().unwrap().remove("canarySubset");
    let (s, v) = api.req("POST", "/api/v1/rollouts", Some(OP), Some(with(good, derived))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["router"]["canarySubset"], "v1-1-0", "{v}");
    // A version that makes no valid name (a label is at most 63) is refused, naming the derived field.
    let mut odd = body("agent-service");
    odd["version"] = json!(format!("v1.2.0-{}", "7".repeat(60)));
    odd["router"] = json!({ "kind": "istio", "virtualService": "agent-service", "stableSubset": "v1-0-0" });
    odd["workload"] = json!({ "deployment": "agent-service", "image": "registry/agent-service:v1.2.0" });
    let (s, v) = api.req("POST", "/api/v1/rollouts", Some(OP), Some(odd)).await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("router.canarySubset")),
        "{v}"
    );
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("derived from version"), "{v}");

    let (_, doc) = api.req("GET", "/api/v1/openapi.json", None, None).await;
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["CreateRequest"]["properties"]["workload"].is_object(), "{}", schemas["CreateRequest"]);
    let props = schemas["WorkloadSpec"]["properties"].as_object().expect("WorkloadSpec schema");
    for f in ["deployment", "image", "container", "canaryScale", "readyTimeout", "retire", "retireAfter"] {
        assert!(props.contains_key(f), "WorkloadSpec.{f} missing: {props:?}");
    }
}

/// The served JSON Schema accepts every shipped policy and rejects what `vane policy check` rejects
/// by shape (checked with python3-jsonschema, the validator family editors' YAML plugins use).
#[tokio::test]
async fn policy_schema_accepts_shipped_policies_and_rejects_bad_shapes() {
    let api = serve().await;
    let (s, schema) = api.req("GET", "/api/v1/policy.schema.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert!(schema["properties"]["steps"].is_object() && schema["$defs"]["MetricSpec"].is_object(), "{schema}");
    let dir = tempfile::tempdir().unwrap();
    let schema_file = dir.path().join("policy.schema.json");
    std::fs::write(&schema_file, schema.to_string()).unwrap();
    let bad = [
        ("typo.yaml", "name: x\nstrategy: canary\nintervall: 1m\n"),
        ("steps.yaml", "name: x\nstrategy: canary\nsteps: five\n"),
        ("enum.yaml", "name: x\nstrategy: canary\nonNoData: maybe\n"),
        ("metric.yaml", "name: x\nstrategy: canary\nmetrics: [{name: a, template: success-rate, min: [1]}]\n"),
    ];
    for (f, src) in bad {
        std::fs::write(dir.path().join(f), src).unwrap();
    }
    let script = r#"
import json, sys, pathlib, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
for f in sys.argv[2:]:
    errors = list(v.iter_errors(yaml.safe_load(open(f))))
    print(pathlib.Path(f).name, "invalid" if errors else "valid")
"#;
    let shipped: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&schema_file)
        .args(&shipped)
        .args(bad.iter().map(|(f, _)| dir.path().join(f)))
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{text}\n(needs Debian's python3-jsonschema and python3-yaml: apt-get install python3-jsonschema python3-yaml)"
    );
    for p in &shipped {
        let name = p.file_name().unwrap().to_string_lossy();
        assert!(text.contains(&format!("{name} valid")), "{name}: {text}");
    }
    for (f, _) in bad {
        assert!(text.contains(&format!("{f} invalid")), "{f}: {text}");
    }
}
