//! Slack: Block Kit messages through the incoming webhook, and the interactions endpoint through the
//! real HTTP API (signature, replay window, approvers, statuses, and the user in the events).

#[path = "support/notify_env.rs"]
mod notify_env;
#[path = "support/receiver.rs"]
mod receiver;
#[path = "support/slack.rs"]
mod slack;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use notify_env::*;
use receiver::Receiver;
use serde_json::{Value, json};
use slack::{now, sign};
use vane::analysis::{TimeOnly, Verdict};
use vane::api::slack::SlackInteractions;
use vane::api::{AppState, Auth};
use vane::notify::AlwaysOk;
use vane::notify::outbox::{Delivery, Outbox, Sink};
use vane::rollout::controller::Controller;
use vane::rollout::machine::Command;
use vane::rollout::{Phase, Rollout};

const WAIT: Duration = Duration::from_secs(10);
const SIGNING_SECRET: &str = "slack-signing-secret-for-tests";

fn gated() -> String {
    "name: gated\nstrategy: canary\nsteps: [20, 50, 100]\ninterval: 100ms\nthreshold: 2\nprogressDeadline: 10s\n\
     gates:\n  - at: 50\n    approval: manual\n    timeout: 1h\n    approvers: [U123, U456]\n"
        .to_string()
}

fn fast() -> Delivery {
    Delivery { first_retry: Duration::from_millis(50), max_retry: Duration::from_millis(200), ..Delivery::default() }
}

fn slack_outbox(w: &World, rx: &Receiver) -> Outbox {
    let ob = Outbox::open(&w.store, vec![Sink::slack(rx.url("/slack"))], w.metrics.clone(), fast()).unwrap();
    ob.start();
    ob
}

fn texts(reqs: &[receiver::Request]) -> Vec<String> {
    reqs.iter().map(|q| q.json()["text"].as_str().unwrap_or_default().to_string()).collect()
}

/// All mrkdwn/plain text of a message's blocks, for "does it say X" checks.
fn all_text(msg: &Value) -> String {
    let mut out = String::new();
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&msg["blocks"], &mut out);
    out
}

#[tokio::test]
async fn messages_for_start_each_step_the_gate_and_success() {
    let rx = Receiver::start().await;
    let w = World::new();
    let ob = slack_outbox(&w, &rx);
    let c = w.controller(vec![policy(&gated())], Arc::new(TimeOnly), Arc::new(AlwaysOk), Arc::new(ob.clone()));
    let r = start(&c, w.request("cart", "gated")).await;
    wait_phase(&c, &r.id, Phase::AwaitingApproval, WAIT).await;
    let msgs = rx.wait_for("/slack", 4, WAIT).await;
    let gate = msgs[3].json();
    assert!(msgs.iter().all(|q| q.header("x-vane-event-id").is_none()), "Slack gets plain incoming-webhook posts");
    assert!(texts(&msgs)[0].starts_with("Rollout started: cart v1 → v2"), "{:?}", texts(&msgs));
    assert_eq!(texts(&msgs)[1..3], ["cart: 20% canary", "cart: 50% canary"]);
    assert!(texts(&msgs)[3].contains("waiting for approval at 50%"));
    let actions = gate["blocks"].as_array().unwrap().iter().find(|b| b["type"] == "actions").expect("buttons");
    let buttons: Vec<(String, String)> = actions["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["action_id"].as_str().unwrap().into(), b["value"].as_str().unwrap().into()))
        .collect();
    let value = format!("{}:50", r.id);
    assert_eq!(buttons, [("vane_promote".to_string(), value.clone()), ("vane_abort".to_string(), value)]);
    assert!(all_text(&gate).contains("<@U123>, <@U456>"), "approvers are mentioned");

    c.command(&r.id, Command::Promote { full: false }, "ci").await.unwrap();
    wait_phase(&c, &r.id, Phase::Succeeded, WAIT).await;
    let msgs = rx.wait_for("/slack", 6, WAIT).await;
    assert!(texts(&msgs)[4].contains("100% canary") && all_text(&msgs[4].json()).contains("promoting"));
    assert_eq!(texts(&msgs)[5], "cart v2 succeeded");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.requests("/slack").len(), 6, "one message per step, no analysis chatter");
    let m = w.metrics.encode();
    assert!(m.contains(r#"vane_webhook_deliveries_total{kind="slack",result="ok"} 6"#), "{m}");
}

#[tokio::test]
async fn a_rollback_message_names_the_failed_metric_its_value_and_bound() {
    let rx = Receiver::start().await;
    let w = World::new();
    let ob = slack_outbox(&w, &rx);
    let analyzer = Scripted::new(Verdict::Fail);
    let c = w.controller(vec![policy(&gated())], analyzer, Arc::new(AlwaysOk), Arc::new(ob.clone()));
    let r = start(&c, w.request("cart", "gated")).await;
    wait_phase(&c, &r.id, Phase::RolledBack, WAIT).await;
    let msgs = rx.wait_for("/slack", 3, WAIT).await;
    let last = msgs.last().unwrap().json();
    let text = all_text(&last);
    assert!(text.contains("Rolled back: cart v2"), "{text}");
    assert!(text.contains("2 failed checks (threshold 2)"), "the reason: {text}");
    assert!(text.contains("`request-success-rate` = *97.25* (min 99)"), "value and bound: {text}");
    assert!(text.contains("back on `v1`"), "{text}");
}

#[tokio::test]
async fn an_abort_message_names_who_aborted_and_why() {
    let rx = Receiver::start().await;
    let w = World::new();
    let ob = slack_outbox(&w, &rx);
    let c = w.controller(vec![policy(&gated())], Arc::new(TimeOnly), Arc::new(AlwaysOk), Arc::new(ob.clone()));
    let r = start(&c, w.request("cart", "gated")).await;
    wait_phase(&c, &r.id, Phase::AwaitingApproval, WAIT).await;
    c.command(&r.id, Command::Abort { reason: Some("checkout errors in EU".into()) }, "bob").await.unwrap();
    wait_phase(&c, &r.id, Phase::Aborted, WAIT).await;
    let msgs = rx.wait_for("/slack", 5, WAIT).await;
    let text = all_text(&msgs.last().unwrap().json());
    assert!(text.contains("Aborted: cart v2") && text.contains("aborted by bob: checkout errors in EU"), "{text}");
}

// ---- interactions ----

struct Api {
    base: String,
    c: Controller,
    w: World,
    rx: Receiver,
    http: reqwest::Client,
}

async fn api() -> Api {
    vane::install_crypto_provider();
    let rx = Receiver::start().await;
    let w = World::new();
    let c = w.plain(vec![policy(&gated())]);
    let handler = SlackInteractions::new(SIGNING_SECRET).unwrap().with_reply_prefix(rx.url("/"));
    let state = AppState {
        controller: c.clone(),
        auth: Auth::from_config(&[], |_| None).unwrap(),
        metrics: w.metrics.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        slack: Some(Arc::new(handler)),
        admission: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, vane::api::router(state)).await });
    Api { base, c, w, rx, http: reqwest::Client::new() }
}

/// The value of the buttons of the gate at 50 % (the "gated" policy's gate).
fn gate50(r: &Rollout) -> String {
    vane::notify::slack::button_value(&r.id, 50)
}

/// Slack's form body for a button click.
fn click(action: &str, rollout: &str, user: &str, name: &str, response_url: &str) -> String {
    slack::click(action, rollout, (user, name), Some(response_url), "1.3")
}

impl Api {
    async fn post(&self, body: &str, ts: i64, signature: &str) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}/api/v1/slack/interactions", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", signature)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn signed(&self, body: &str) -> (u16, Value) {
        let ts = now();
        self.post(body, ts, &sign(SIGNING_SECRET, ts, body)).await
    }

    async fn at_gate(&self, service: &str) -> Rollout {
        let r = start(&self.c, self.w.request(service, "gated")).await;
        wait_phase(&self.c, &r.id, Phase::AwaitingApproval, WAIT).await
    }

    /// Phase and the events written by Slack users: what a refused request must leave untouched.
    fn snapshot(&self, id: &str) -> (Phase, u8, usize) {
        let r = self.c.get(id).unwrap();
        let slack_events = events(&self.c, id).iter().filter(|e| e.actor.starts_with("slack:")).count();
        (r.phase, r.canary_weight, slack_events)
    }
}

#[tokio::test]
async fn a_signed_promote_from_an_approver_passes_the_gate_and_is_recorded() {
    let a = api().await;
    let r = a.at_gate("cart").await;
    let body = click("vane_promote", &gate50(&r), "U123", "alice", &a.rx.url("/response/1"));
    let (status, json) = a.signed(&body).await;
    assert_eq!(status, 200, "{json}");
    assert!(json["text"].as_str().unwrap().contains("approved by <@U123>"), "{json}");
    wait_phase(&a.c, &r.id, Phase::Succeeded, WAIT).await;
    assert_eq!(a.w.weights("cart"), [20, 50, 100]);
    let promoted = events(&a.c, &r.id).into_iter().find(|e| e.kind == "promoted").unwrap();
    assert_eq!(promoted.actor, "slack:U123 (alice)");
    assert!(promoted.message.contains("approved by slack:U123 (alice)"), "{}", promoted.message);
    // The gate message is replaced (buttons gone) through the response_url.
    let reply = a.rx.wait_for("/response/1", 1, WAIT).await[0].json();
    assert_eq!(reply["replace_original"], true);
    assert!(reply["text"].as_str().unwrap().contains("approved by <@U123>"));
}

#[tokio::test]
async fn refused_interactions_get_the_right_status_and_change_nothing() {
    let a = api().await;
    let r = a.at_gate("cart").await;
    let before = a.snapshot(&r.id);
    let body = click("vane_promote", &gate50(&r), "U123", "alice", &a.rx.url("/response/x"));
    let ts = now();

    // Wrong signing secret.
    let (s, j) = a.post(&body, ts, &sign("not-the-secret", ts, &body)).await;
    assert_eq!(s, 401, "{j}");
    assert!(j["text"].as_str().unwrap().contains("signature"), "{j}");
    // Correctly signed, but older than 5 minutes (a replay) — or from the future.
    let old = ts - 301;
    assert_eq!(a.post(&body, old, &sign(SIGNING_SECRET, old, &body)).await.0, 401);
    let future = ts + 301;
    assert_eq!(a.post(&body, future, &sign(SIGNING_SECRET, future, &body)).await.0, 401);
    // Tampered body: signed for one user, sent for another.
    let forged = click("vane_promote", &gate50(&r), "U456", "mallory", &a.rx.url("/response/x"));
    assert_eq!(a.post(&forged, ts, &sign(SIGNING_SECRET, ts, &body)).await.0, 401);
    // No signature at all.
    assert_eq!(a.post(&body, ts, "").await.0, 401);
    // Unknown rollout (well-formed id, and garbage).
    let (s, j) = a.signed(&click("vane_promote", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "U123", "alice", "")).await;
    assert_eq!(s, 404, "{j}");
    assert_eq!(a.signed(&click("vane_promote", "../../etc", "U123", "alice", "")).await.0, 404);
    // A user not on the gate's approver list.
    let (s, j) = a.signed(&click("vane_promote", &gate50(&r), "U999", "eve", &a.rx.url("/response/eve"))).await;
    assert_eq!(s, 403, "{j}");
    assert!(j["text"].as_str().unwrap().contains("<@U123>, <@U456>"), "says who may approve: {j}");
    assert_eq!(j["response_type"], "ephemeral");
    let told = a.rx.wait_for("/response/eve", 1, WAIT).await[0].json();
    assert_eq!((told["response_type"].as_str(), told["replace_original"].as_bool()), (Some("ephemeral"), Some(false)));
    // Malformed: not a form, unknown action, other interaction types.
    assert_eq!(a.signed("{\"type\":\"block_actions\"}").await.0, 400);
    assert_eq!(a.signed(&click("vane_delete", &gate50(&r), "U123", "alice", "")).await.0, 400);
    let view = serde_urlencoded::to_string([(
        "payload",
        json!({"type": "view_submission", "user": {"id": "U123"}}).to_string(),
    )])
    .unwrap();
    assert_eq!(a.signed(&view).await.0, 400);

    tokio::time::sleep(Duration::from_millis(300)).await; // several analysis intervals
    assert_eq!(a.snapshot(&r.id), before, "nothing changed");
    assert_eq!(a.w.weights("cart"), [20, 50]);
    assert!(a.rx.requests("/response/x").is_empty(), "refused (401) requests get no reply either");
}

#[tokio::test]
async fn abort_from_slack_rolls_back_and_records_the_user() {
    let a = api().await;
    let r = a.at_gate("cart").await;
    // Abort is open to anyone who can click (it only ever moves traffic back to stable).
    let (s, j) = a.signed(&click("vane_abort", &gate50(&r), "U999", "eve", "")).await;
    assert_eq!(s, 200, "{j}");
    wait_phase(&a.c, &r.id, Phase::Aborted, WAIT).await;
    assert_eq!(a.w.weights("cart"), [20, 50, 0]);
    let ev = events(&a.c, &r.id);
    let aborted = ev.iter().find(|e| e.kind == "aborted").unwrap();
    assert_eq!(aborted.actor, "slack:U999 (eve)");
    // Buttons of a finished rollout: 409, nothing happens.
    let (s, j) = a.signed(&click("vane_abort", &gate50(&r), "U123", "alice", "")).await;
    assert_eq!(s, 409, "{j}");
    let (s, _) = a.signed(&click("vane_promote", &gate50(&r), "U123", "alice", "")).await;
    assert_eq!(s, 409);
    assert_eq!(events(&a.c, &r.id).len(), ev.len());
}

#[tokio::test]
async fn promote_from_a_stale_gate_message_does_not_skip_a_step() {
    let a = api().await;
    let r = a.at_gate("cart").await;
    a.c.command(&r.id, Command::Promote { full: false }, "ci").await.unwrap(); // passed via the API
    wait_phase(&a.c, &r.id, Phase::Succeeded, WAIT).await;
    let n = events(&a.c, &r.id).len();
    let (s, j) = a.signed(&click("vane_promote", &gate50(&r), "U123", "alice", "")).await;
    assert_eq!(s, 409, "{j}");
    assert_eq!(events(&a.c, &r.id).len(), n);
}

#[tokio::test]
async fn without_a_signing_secret_the_endpoint_is_off() {
    vane::install_crypto_provider();
    let w = World::new();
    let state = AppState {
        controller: w.plain(vec![]),
        auth: Auth::from_config(&[], |_| None).unwrap(),
        metrics: w.metrics.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        slack: None,
        admission: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, vane::api::router(state)).await });
    let res = reqwest::Client::new()
        .post(format!("{base}/api/v1/slack/interactions"))
        .body("payload=x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

/// Buttons posted by an older vane carry the bare rollout id: Promote cannot tell which gate it was
/// for (409, nothing changes); Abort can only move traffic back to stable, so it is still accepted.
#[tokio::test]
async fn a_bare_rollout_id_may_abort_but_not_promote() {
    let a = api().await;
    let r = a.at_gate("cart").await;
    let before = a.snapshot(&r.id);
    let (s, j) = a.signed(&click("vane_promote", &r.id, "U123", "alice", "")).await;
    assert_eq!(s, 409, "{j}");
    assert!(j["text"].as_str().unwrap().contains("--gate"), "says what to do instead: {j}");
    assert_eq!(a.snapshot(&r.id), before);
    let (s, j) = a.signed(&click("vane_abort", &r.id, "U123", "alice", "")).await;
    assert_eq!(s, 200, "{j}");
    wait_phase(&a.c, &r.id, Phase::Aborted, WAIT).await;
    // A value whose gate is not a weight is malformed.
    assert_eq!(a.signed(&click("vane_abort", &format!("{}:x", r.id), "U123", "alice", "")).await.0, 400);
}
