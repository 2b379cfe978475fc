//! Manual approval gates through the driver: the rollout waits in AwaitingApproval at the gate's
//! weight while analysis keeps running; a promote (controller or REST API) passes it, a breach or the
//! timeout rolls back.

#[path = "support/notify_env.rs"]
mod notify_env;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use notify_env::*;
use vane::analysis::Verdict;
use vane::api::{AppState, Auth};
use vane::notify::{AlwaysOk, Silent};
use vane::rollout::Phase;
use vane::rollout::machine::Command;

const WAIT: Duration = Duration::from_secs(10);

fn gated(at: u8, timeout: &str) -> String {
    format!(
        "name: gated\nstrategy: canary\nsteps: [20, 50, 100]\ninterval: 100ms\nthreshold: 2\nprogressDeadline: 10s\n\
         gates:\n  - at: {at}\n    approval: manual\n    timeout: {timeout}\n    approvers: [U123]\n"
    )
}

#[tokio::test]
async fn a_gate_holds_with_analysis_running_until_promoted() {
    let w = World::new();
    let c = w.plain(vec![policy(&gated(50, "1h"))]);
    let r = start(&c, w.request("cart", "gated")).await;
    let at_gate = wait_phase(&c, &r.id, Phase::AwaitingApproval, WAIT).await;
    assert_eq!(at_gate.canary_weight, 50);
    let gate_seq = events(&c, &r.id).iter().find(|e| e.kind == "gate").unwrap().seq;
    // Analysis keeps running at the gate, and passing analyses do not move it on.
    wait_until(&c, &r.id, WAIT, "3 analyses at the gate", |_| {
        events(&c, &r.id).iter().filter(|e| e.seq > gate_seq && e.kind == "analysis").count() >= 3
    })
    .await;
    let still = c.get(&r.id).unwrap();
    assert_eq!((still.phase, still.canary_weight), (Phase::AwaitingApproval, 50));
    assert_eq!(w.weights("cart"), [20, 50]);
    let view = vane::rollout::RolloutView::from(&still);
    let gate = view.gate.expect("the API shows the gate");
    assert_eq!((gate.at, gate.approvers), (50, vec!["U123".to_string()]));

    c.command(&r.id, Command::Promote { full: false }, "ci").await.unwrap();
    wait_phase(&c, &r.id, Phase::Succeeded, WAIT).await;
    assert_eq!(w.weights("cart"), [20, 50, 100]);
    let promoted = events(&c, &r.id).into_iter().find(|e| e.kind == "promoted").unwrap();
    assert_eq!(promoted.actor, "ci");
    assert!(promoted.message.contains("gate at 50% approved by ci"), "{}", promoted.message);
}

#[tokio::test]
async fn the_gate_timeout_rolls_back() {
    let w = World::new();
    let c = w.plain(vec![policy(&gated(50, "400ms"))]);
    let r = start(&c, w.request("cart", "gated")).await;
    wait_phase(&c, &r.id, Phase::AwaitingApproval, WAIT).await;
    wait_phase(&c, &r.id, Phase::RolledBack, WAIT).await;
    assert_eq!(w.weights("cart"), [20, 50, 0]);
    let why = events(&c, &r.id).into_iter().find(|e| e.kind == "rolling-back").unwrap();
    assert!(why.message.contains("approval gate at 50% timed out"), "{}", why.message);
}

#[tokio::test]
async fn a_breach_while_waiting_still_rolls_back() {
    let w = World::new();
    let analyzer = Scripted::new(Verdict::Pass);
    let c = w.controller(vec![policy(&gated(50, "1h"))], analyzer.clone(), Arc::new(AlwaysOk), Arc::new(Silent));
    let r = start(&c, w.request("cart", "gated")).await;
    wait_phase(&c, &r.id, Phase::AwaitingApproval, WAIT).await;
    analyzer.set(Verdict::Fail);
    let done = wait_phase(&c, &r.id, Phase::RolledBack, WAIT).await;
    assert_eq!(done.failed_checks, 2);
    assert_eq!(w.weights("cart"), [20, 50, 0]);
    let why = events(&c, &r.id).into_iter().find(|e| e.kind == "rolling-back").unwrap();
    assert!(why.message.contains("2 failed checks"), "{}", why.message);
    assert_eq!(why.phase, Phase::RollingBack);
}

#[tokio::test]
async fn a_gate_at_0_holds_before_any_traffic_moves() {
    let w = World::new();
    let c = w.plain(vec![policy(&gated(0, "1h"))]);
    let r = start(&c, w.request("cart", "gated")).await;
    wait_phase(&c, &r.id, Phase::AwaitingApproval, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        w.weights("cart").iter().all(|w| *w == 0),
        "no canary traffic before the approval: {:?}",
        w.weights("cart")
    );
    c.command(&r.id, Command::Promote { full: false }, "ci").await.unwrap();
    wait_phase(&c, &r.id, Phase::Succeeded, WAIT).await;
    let moved: Vec<u8> = w.weights("cart").into_iter().filter(|w| *w > 0).collect();
    assert_eq!(moved, [20, 50, 100]);
}

#[tokio::test]
async fn the_rest_api_promote_passes_the_gate() {
    vane::install_crypto_provider();
    let w = World::new();
    let c = w.plain(vec![policy(&gated(50, "1h"))]);
    let state = AppState {
        controller: c.clone(),
        auth: Auth::from_config(&[], |_| None).unwrap(),
        metrics: w.metrics.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        slack: None,
        admission: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, vane::api::router(state)).await });
    let r = start(&c, w.request("cart", "gated")).await;
    wait_phase(&c, &r.id, Phase::AwaitingApproval, WAIT).await;
    let http = reqwest::Client::new();
    let res = http.post(format!("http://{addr}/api/v1/rollouts/{}/promote", r.id)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    wait_phase(&c, &r.id, Phase::Succeeded, WAIT).await;
    assert_eq!(w.weights("cart"), [20, 50, 100]);
}
