//! Load smoke test (issue 7; the full run with figures is `scripts/load-test.sh`): the real binary
//! drives 100 concurrent rollouts through `exec` routers while 4000 reads (64 at a time: one rollout,
//! its events, the list, filtered lists) hit the API. Every request must succeed and every rollout
//! must succeed, with its weights in order; latencies are printed, not asserted (no timing assertions
//! in tests — the figures come from the release-mode script).

mod support {
    pub mod daemon;
}

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::daemon::{Daemon, free_port};
use tokio::sync::Semaphore;

const ROLLOUTS: usize = 100;
const READS: usize = 4000;
const CONCURRENCY: usize = 64;
const OPERATOR: &str = "load-operator-token-0123456789";
const VIEWER: &str = "load-viewer-token-0123456789";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_rollouts_under_concurrent_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("policies")).expect("policies dir");
    std::fs::write(
        root.join("policies/load.yaml"),
        "name: load\nstrategy: canary\nsteps: [10, 25, 50, 75, 100]\ninterval: 300ms\nthreshold: 3\nprogressDeadline: 5m\n",
    )
    .expect("policy");
    let tokens = r#"[{ name = "ci", token = "load-operator-token-0123456789", role = "operator" },
                     { name = "grafana", token = "load-viewer-token-0123456789", role = "viewer" }]"#;
    let daemon = Daemon::start(root, free_port(), &[("VANE_SERVER_TOKENS", tokens), ("RUST_LOG", "warn")]);
    vane::install_crypto_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("client");
    let base = daemon.url.clone();

    // The creates, all at once.
    let creates = (0..ROLLOUTS).map(|i| {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            let body = json!({ "service": format!("svc-{i}"), "namespace": "load", "version": "v2",
                               "stableVersion": "v1", "policy": "load", "router": { "kind": "exec", "profile": "noop" } });
            let res = http.post(format!("{base}/api/v1/rollouts")).bearer_auth(OPERATOR).json(&body).send().await;
            let res = res.expect("create answered");
            let status = res.status();
            let v: Value = res.json().await.expect("create JSON");
            assert_eq!(status, 201, "{v}");
            v["id"].as_str().expect("id").to_string()
        })
    });
    let mut ids = Vec::new();
    for c in creates {
        ids.push(c.await.expect("create task"));
    }

    // The reads, while the rollouts progress.
    let ids = Arc::new(ids);
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let reads = (0..READS).map(|i| {
        let (http, base, ids, slots) = (http.clone(), base.clone(), ids.clone(), slots.clone());
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.expect("semaphore");
            let id = &ids[i * 7 % ids.len()];
            let path = match i % 10 {
                0 => "/api/v1/rollouts?limit=100".to_string(),
                1 => format!("/api/v1/rollouts?service=svc-{}&namespace=load", i % ROLLOUTS),
                2 => "/api/v1/rollouts?phase=Progressing".to_string(),
                3 | 4 => format!("/api/v1/rollouts/{id}/events"),
                _ => format!("/api/v1/rollouts/{id}"),
            };
            let started = Instant::now();
            let res = http.get(format!("{base}{path}")).bearer_auth(VIEWER).send().await.expect("read answered");
            let status = res.status();
            let body = res.bytes().await.expect("read body");
            let took = started.elapsed();
            assert_eq!(status, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
            serde_json::from_slice::<Value>(&body).expect("JSON body");
            took
        })
    });
    let started = Instant::now();
    let mut latencies = Vec::new();
    for r in reads {
        latencies.push(r.await.expect("read task"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    eprintln!(
        "{READS} reads in {elapsed:?} ({:.0}/s) during {ROLLOUTS} rollouts: p50 {:?}, p99 {:?}, max {:?} (debug build)",
        READS as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );

    // Every rollout succeeds, its weights in order.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list: Value = http
            .get(format!("{base}/api/v1/rollouts?limit=1000&namespace=load"))
            .bearer_auth(VIEWER)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("list JSON");
        let items = list["items"].as_array().cloned().unwrap_or_default();
        assert_eq!(items.len(), ROLLOUTS);
        let bad: Vec<&Value> = items
            .iter()
            .filter(|r| ["RolledBack", "Aborted", "Failed"].contains(&r["phase"].as_str().unwrap_or("")))
            .collect();
        assert!(bad.is_empty(), "rollouts that did not succeed: {bad:#?}");
        if items.iter().all(|r| r["phase"] == "Succeeded") {
            break;
        }
        assert!(Instant::now() < deadline, "rollouts still running after 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in ids.iter().step_by(10) {
        let events: Value = http
            .get(format!("{base}/api/v1/rollouts/{id}/events"))
            .bearer_auth(VIEWER)
            .send()
            .await
            .expect("events")
            .json()
            .await
            .expect("events JSON");
        let weights: Vec<i64> = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "weight-set")
            .filter_map(|e| e["details"]["canary"].as_i64())
            .collect();
        assert_eq!(weights, vec![10, 25, 50, 75, 100], "rollout {id}");
    }
    let log = std::fs::read_to_string(root.join("daemon.log")).unwrap_or_default();
    assert!(!log.contains("ERROR"), "the daemon logged errors:\n{log}");
}
