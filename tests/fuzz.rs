//! Property-based fuzzing of the inputs strangers control: the create body (through the real HTTP
//! router) and policy files. Nothing may panic or answer 5xx, whatever the bytes.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;
use vane::api::{self, AppState, Auth};
use vane::fixtures::{self, FakeRouters, ScriptedAnalyzer};
use vane::rollout::controller::Controller;

fn valid() -> Value {
    json!({
        "service": "cart", "namespace": "shop", "version": "v2", "stableVersion": "v1", "policy": "p",
        "router": { "kind": "istio", "virtualService": "cart", "stableSubset": "v1", "canarySubset": "v2" },
        "overrides": { "steps": [10, 100], "interval": "30s" }
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|n| json!(n)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("../../etc/passwd")),
        Just(json!(101)),
        Just(json!(-1)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid body with some fields removed or replaced (at the top level or inside router/overrides).
fn mutated() -> impl Strategy<Value = Value> {
    let paths = prop_oneof![
        Just(vec!["service"]),
        Just(vec!["namespace"]),
        Just(vec!["version"]),
        Just(vec!["stableVersion"]),
        Just(vec!["policy"]),
        Just(vec!["router"]),
        Just(vec!["router", "kind"]),
        Just(vec!["router", "virtualService"]),
        Just(vec!["overrides", "steps"]),
        Just(vec!["overrides", "interval"]),
        Just(vec!["overrides", "threshold"]),
        Just(vec!["extra"]),
    ];
    proptest::collection::vec((paths, proptest::option::of(json_value())), 1..4).prop_map(|edits| {
        let mut b = valid();
        for (path, v) in edits {
            let (last, parents) = path.split_last().expect("non-empty path");
            let mut cur = &mut b;
            for p in parents {
                if !cur[*p].is_object() {
                    cur[*p] = json!({});
                }
                cur = &mut cur[*p];
            }
            match (cur.as_object_mut(), v) {
                (Some(o), None) => {
                    o.remove(*last);
                }
                (Some(o), Some(v)) => {
                    o.insert(last.to_string(), v);
                }
                (None, _) => {}
            }
        }
        b
    })
}

fn app() -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let env = fixtures::env(dir.path(), Arc::new(FakeRouters::default()), Arc::new(ScriptedAnalyzer::default()));
    let metrics = env.metrics.clone();
    let policy = fixtures::policy("p", &[5, 100], Duration::from_secs(3600), 3);
    let state = AppState {
        controller: Controller::new(env, vec![policy]),
        auth: Auth::from_config(&[], |_| None).unwrap(),
        metrics,
        ready: Arc::new(AtomicBool::new(true)),
        slack: None,
        admission: Default::default(),
    };
    (api::router(state), dir)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn create_body_never_panics_or_500s(body in prop_oneof![mutated().prop_map(|v| v.to_string().into_bytes()), proptest::collection::vec(any::<u8>(), 0..200)]) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (app, _dir) = app();
            let req = Request::post("/api/v1/rollouts").header("content-type", "application/json").body(Body::from(body.clone())).unwrap();
            let res = app.clone().oneshot(req).await.unwrap();
            let status = res.status().as_u16();
            prop_assert!(status == 201 || (400..500).contains(&status), "{} for {}", status, String::from_utf8_lossy(&body));
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            if status != 201 {
                prop_assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string(), "error shape: {}", v);
            }
            Ok(())
        })?;
    }

    #[test]
    fn policy_parser_never_panics(src in prop_oneof![
        ".{0,300}",
        proptest::collection::vec(prop_oneof![
            Just("name: x\n"), Just("strategy: canary\n"), Just("strategy: blue-green\n"), Just("steps: [5, 100]\n"),
            Just("steps: [100, 5]\n"), Just("interval: 1m\n"), Just("interval: -1\n"), Just("threshold: 0\n"),
            Just("metrics:\n  - name: a\n    template: success-rate\n    min: 99\n"), Just("gates:\n  - at: 5\n"),
            Just("  max: 1e400\n"), Just("preflight: {url: x}\n"), Just(": :\n"), Just("- - -\n"), Just("\t\n"),
        ], 0..10).prop_map(|v| v.concat()),
    ]) {
        match vane::policy::parse(std::path::Path::new("p.yaml"), &src) {
            Ok(p) => prop_assert!(p.validate().is_ok()),
            Err(e) => prop_assert!(e.line >= 1 && !e.message.is_empty(), "{e}"),
        }
    }
}
