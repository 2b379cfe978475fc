//! Every lifecycle hook end to end through the driver (pass, fail, timeout), with Flagger's meaning:
//! confirmRollout / confirmPromotion non-2xx = keep waiting; preRollout / rollout non-2xx or timeout =
//! a failed check; postRollout informational; rollback 2xx = roll back now. Plus blue/green preflight.

#[path = "support/notify_env.rs"]
mod notify_env;
#[path = "support/receiver.rs"]
mod receiver;

use std::sync::Arc;
use std::time::Duration;

use notify_env::*;
use receiver::Receiver;
use vane::analysis::{Analyzer, TimeOnly};
use vane::hooks::HttpHooks;
use vane::notify::sign::verify_vane_signature;
use vane::notify::{HookRunner, Silent};
use vane::rollout::Phase;
use vane::rollout::controller::Controller;
use vane::rollout::machine::Command;

const SECRET: &str = "hook-secret-for-tests";
const WAIT: Duration = Duration::from_secs(10);

/// A canary 20 → 50 → 100 every 100 ms with one kind of hook at `path` (300 ms timeout).
fn hooked_policy(rx: &Receiver, kind: &str, path: &str, deadline: &str) -> String {
    format!(
        "name: hooked\nstrategy: canary\nsteps: [20, 50, 100]\ninterval: 100ms\nthreshold: 2\nprogressDeadline: {deadline}\n\
         webhooks:\n  {kind}:\n    - name: check\n      url: {}\n      timeout: 300ms\n      metadata:\n        ticket: CHG-7\n",
        rx.url(path)
    )
}

struct Setup {
    w: World,
    c: Controller,
    hooks: Arc<dyn HookRunner>,
}

fn setup(policy_yaml: &str, hooked_analysis: bool) -> Setup {
    let w = World::new();
    let hooks: Arc<dyn HookRunner> = Arc::new(HttpHooks::new(Some(SECRET.into()), w.metrics.clone()).unwrap());
    let analyzer: Arc<dyn Analyzer> =
        if hooked_analysis { Arc::new(Hooked { hooks: hooks.clone() }) } else { Arc::new(TimeOnly) };
    let c = w.controller(vec![policy(policy_yaml)], analyzer, hooks.clone(), Arc::new(Silent));
    Setup { w, c, hooks }
}

/// The message of the event that decided the rollback (the final one only says traffic is back).
fn rollback_reason(c: &Controller, id: &str) -> String {
    events(c, id).into_iter().rev().find(|e| e.kind == "rolling-back").map(|e| e.message).unwrap_or_default()
}

fn assert_signed(reqs: &[receiver::Request], kind: &str) {
    assert!(!reqs.is_empty());
    for q in reqs {
        let sig = q.header("x-vane-signature").unwrap_or_else(|| panic!("{kind} hook request is not signed"));
        assert!(verify_vane_signature(SECRET.as_bytes(), &q.body, sig), "{kind}: bad signature");
        let b = q.json();
        assert_eq!(b["type"], kind);
        assert_eq!(b["name"], "cart");
        assert_eq!(b["namespace"], "shop");
        assert_eq!(b["version"], "v2");
        assert_eq!(b["metadata"]["ticket"], "CHG-7");
        assert!(b["phase"].is_string() && b["id"].is_string());
    }
}

// ---- confirmRollout: non-2xx or timeout = keep waiting (no traffic, no failed check) ----

#[tokio::test]
async fn confirm_rollout_pass_starts_the_rollout() {
    let rx = Receiver::start().await;
    let s = setup(&hooked_policy(&rx, "confirmRollout", "/confirm", "10s"), false);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    wait_phase(&s.c, &r.id, Phase::Succeeded, WAIT).await;
    let reqs = rx.requests("/confirm");
    assert_eq!(reqs.len(), 1);
    assert_signed(&reqs, "confirm-rollout");
    assert_eq!(reqs[0].json()["phase"], "Pending");
    assert_eq!(s.w.weights("cart"), [20, 50, 100]);
}

#[tokio::test]
async fn confirm_rollout_fail_keeps_waiting_until_it_answers_2xx() {
    let rx = Receiver::start().await;
    rx.respond("/confirm", 503);
    let s = setup(&hooked_policy(&rx, "confirmRollout", "/confirm", "10s"), false);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    rx.wait_for("/confirm", 3, WAIT).await; // asked again every interval
    let now = s.c.get(&r.id).unwrap();
    assert_eq!(now.phase, Phase::Pending);
    assert_eq!(now.failed_checks, 0, "a closed confirm gate is not a failed check");
    assert!(now.message.contains("HTTP 503"), "{}", now.message);
    assert!(s.w.weights("cart").is_empty(), "no traffic moved while waiting");
    rx.respond("/confirm", 200);
    wait_phase(&s.c, &r.id, Phase::Succeeded, WAIT).await;
    assert_eq!(s.w.weights("cart"), [20, 50, 100]);
}

#[tokio::test]
async fn confirm_rollout_timeout_waits_then_the_deadline_rolls_back() {
    let rx = Receiver::start().await;
    rx.delay("/confirm", Duration::from_secs(2));
    let s = setup(&hooked_policy(&rx, "confirmRollout", "/confirm", "1s"), false);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    wait_until(&s.c, &r.id, WAIT, "a timeout message", |r| r.message.contains("no answer within 300ms")).await;
    assert_eq!(s.c.get(&r.id).unwrap().phase, Phase::Pending);
    let done = wait_phase(&s.c, &r.id, Phase::RolledBack, WAIT).await;
    assert!(done.message.contains("progressDeadline"), "{}", done.message);
    assert!(s.w.weights("cart").is_empty(), "no traffic ever moved");
}

// ---- preRollout: non-2xx or timeout = one failed check; threshold → rollback before any traffic ----

#[tokio::test]
async fn pre_rollout_pass_starts_the_rollout() {
    let rx = Receiver::start().await;
    let s = setup(&hooked_policy(&rx, "preRollout", "/pre", "10s"), false);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    wait_phase(&s.c, &r.id, Phase::Succeeded, WAIT).await;
    assert_signed(&rx.requests("/pre"), "pre-rollout");
    assert_eq!(s.w.weights("cart"), [20, 50, 100]);
}

#[tokio::test]
async fn pre_rollout_fail_counts_failed_checks_and_rolls_back() {
    let rx = Receiver::start().await;
    rx.respond("/pre", 500);
    let s = setup(&hooked_policy(&rx, "preRollout", "/pre", "10s"), false);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    let done = wait_phase(&s.c, &r.id, Phase::RolledBack, WAIT).await;
    assert_eq!(done.failed_checks, 2);
    assert_eq!(rx.requests("/pre").len(), 2, "threshold 2: two failed checks, then rollback");
    assert!(done.message.contains("HTTP 500"), "{}", done.message);
    let hook_events: Vec<_> = events(&s.c, &r.id).into_iter().filter(|e| e.kind == "hook").collect();
    assert_eq!(hook_events.len(), 2);
    assert!(s.w.weights("cart").is_empty(), "the canary never received traffic");
}

#[tokio::test]
async fn pre_rollout_timeout_is_a_failed_check() {
    let rx = Receiver::start().await;
    rx.delay("/pre", Duration::from_secs(2));
    let s = setup(&hooked_policy(&rx, "preRollout", "/pre", "10s"), false);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    let done = wait_phase(&s.c, &r.id, Phase::RolledBack, WAIT).await;
    assert_eq!(done.failed_checks, 2);
    assert!(done.message.contains("no answer within 300ms"), "{}", done.message);
    assert!(s.w.weights("cart").is_empty());
}

// ---- rollout: called each analysis; non-2xx or timeout = failed check ----

#[tokio::test]
async fn rollout_hook_pass_lets_every_step_advance() {
    let rx = Receiver::start().await;
    let s = setup(&hooked_policy(&rx, "rollout", "/rollout", "10s"), true);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    wait_phase(&s.c, &r.id, Phase::Succeeded, WAIT).await;
    let reqs = rx.requests("/rollout");
    assert_signed(&reqs, "rollout");
    let weights: Vec<u64> = reqs.iter().map(|q| q.json()["canaryWeight"].as_u64().unwrap()).collect();
    assert_eq!(weights, [20, 50], "one call per analysis, at each step's weight");
    assert_eq!(s.w.weights("cart"), [20, 50, 100]);
}

#[tokio::test]
async fn rollout_hook_fail_rolls_back_at_the_threshold() {
    let rx = Receiver::start().await;
    rx.respond("/rollout", 500);
    let s = setup(&hooked_policy(&rx, "rollout", "/rollout", "10s"), true);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    let done = wait_phase(&s.c, &r.id, Phase::RolledBack, WAIT).await;
    assert_eq!(done.failed_checks, 2);
    assert_eq!(s.w.weights("cart"), [20, 0], "rolled back from the first step");
    let why = rollback_reason(&s.c, &r.id);
    assert!(why.contains("2 failed checks") && why.contains("HTTP 500"), "{why}");
}

#[tokio::test]
async fn rollout_hook_timeout_is_a_failed_check() {
    let rx = Receiver::start().await;
    rx.delay("/rollout", Duration::from_secs(2));
    let s = setup(&hooked_policy(&rx, "rollout", "/rollout", "10s"), true);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    let done = wait_phase(&s.c, &r.id, Phase::RolledBack, WAIT).await;
    assert_eq!(done.failed_checks, 2);
    let why = rollback_reason(&s.c, &r.id);
    assert!(why.contains("no answer within 300ms"), "{why}");
    assert_eq!(s.w.weights("cart"), [20, 0]);
}

// ---- confirmPromotion: before the step to 100 %; non-2xx = keep waiting (analysis keeps running) ----

#[tokio::test]
async fn confirm_promotion_pass_promotes() {
    let rx = Receiver::start().await;
    let s = setup(&hooked_policy(&rx, "confirmPromotion", "/promo", "10s"), false);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    wait_phase(&s.c, &r.id, Phase::Succeeded, WAIT).await;
    let reqs = rx.requests("/promo");
    assert_signed(&reqs, "confirm-promotion");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].json()["canaryWeight"], 50, "asked before leaving the last step below 100");
    assert_eq!(s.w.weights("cart"), [20, 50, 100]);
}

#[tokio::test]
async fn confirm_promotion_fail_holds_at_the_last_step_until_2xx() {
    let rx = Receiver::start().await;
    rx.respond("/promo", 409);
    let s = setup(&hooked_policy(&rx, "confirmPromotion", "/promo", "10s"), false);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    rx.wait_for("/promo", 3, WAIT).await;
    let now = s.c.get(&r.id).unwrap();
    assert_eq!((now.phase, now.canary_weight, now.failed_checks), (Phase::Progressing, 50, 0));
    assert!(
        now.message.contains("waiting for confirm-promotion") && now.message.contains("HTTP 409"),
        "{}",
        now.message
    );
    let analyses = events(&s.c, &r.id).iter().filter(|e| e.kind == "analysis" && e.canary_weight == 50).count();
    assert!(analyses >= 2, "analysis keeps running while waiting ({analyses})");
    assert_eq!(s.w.weights("cart"), [20, 50]);
    rx.respond("/promo", 200);
    wait_phase(&s.c, &r.id, Phase::Succeeded, WAIT).await;
    assert_eq!(s.w.weights("cart"), [20, 50, 100]);
}

#[tokio::test]
async fn confirm_promotion_timeout_waits_then_the_deadline_rolls_back() {
    let rx = Receiver::start().await;
    rx.delay("/promo", Duration::from_secs(2));
    let s = setup(&hooked_policy(&rx, "confirmPromotion", "/promo", "1500ms"), false);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    wait_until(&s.c, &r.id, WAIT, "a timeout message", |r| r.message.contains("no answer within 300ms")).await;
    wait_phase(&s.c, &r.id, Phase::RolledBack, WAIT).await;
    let why = rollback_reason(&s.c, &r.id);
    assert!(why.contains("progressDeadline") && why.contains("confirm-promotion"), "{why}");
    assert_eq!(s.w.weights("cart"), [20, 50, 0]);
}

#[tokio::test]
async fn a_manual_promote_counts_as_the_confirmation() {
    let rx = Receiver::start().await;
    rx.respond("/promo", 500);
    let s = setup(&hooked_policy(&rx, "confirmPromotion", "/promo", "10s"), false);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    rx.wait_for("/promo", 1, WAIT).await;
    wait_until(&s.c, &r.id, WAIT, "waiting for confirm-promotion", |r| {
        r.message.contains("waiting for confirm-promotion")
    })
    .await;
    s.c.command(&r.id, Command::Promote { full: false }, "alice").await.unwrap();
    wait_phase(&s.c, &r.id, Phase::Succeeded, WAIT).await;
    assert_eq!(s.w.weights("cart"), [20, 50, 100]);
    assert!(events(&s.c, &r.id).iter().any(|e| e.kind == "promoted" && e.actor == "alice"));
}

// ---- postRollout: informational, after the end ----

#[tokio::test]
async fn post_rollout_is_told_the_outcome_and_cannot_change_it() {
    let rx = Receiver::start().await;
    rx.respond("/post", 500);
    let s = setup(&hooked_policy(&rx, "postRollout", "/post", "10s"), false);
    let ok = start(&s.c, s.w.request("cart", "hooked")).await;
    wait_phase(&s.c, &ok.id, Phase::Succeeded, WAIT).await;
    let reqs = rx.wait_for("/post", 1, WAIT).await;
    assert_signed(&reqs, "post-rollout");
    assert_eq!(reqs[0].json()["phase"], "Succeeded");
    assert_eq!(s.c.get(&ok.id).unwrap().phase, Phase::Succeeded, "a 500 from post-rollout changes nothing");

    rx.delay("/post", Duration::from_secs(2)); // a timeout changes nothing either
    let bad = start(&s.c, s.w.request("shelf", "hooked")).await;
    wait_phase(&s.c, &bad.id, Phase::Progressing, WAIT).await;
    s.c.command(&bad.id, Command::Abort { reason: Some("test".into()) }, "bob").await.unwrap();
    wait_phase(&s.c, &bad.id, Phase::Aborted, WAIT).await;
    let reqs = rx.wait_for("/post", 2, WAIT).await;
    assert_eq!(reqs[1].json()["phase"], "Aborted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.c.get(&bad.id).unwrap().phase, Phase::Aborted);
    assert_eq!(rx.requests("/post").len(), 2, "called exactly once per rollout");
}

// ---- rollback: 2xx = roll back now; non-2xx or timeout = carry on ----

#[tokio::test]
async fn rollback_hook_2xx_rolls_back_now() {
    let rx = Receiver::start().await;
    let s = setup(&hooked_policy(&rx, "rollback", "/rollback", "10s"), true);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    let done = wait_phase(&s.c, &r.id, Phase::RolledBack, WAIT).await;
    assert_eq!(rx.requests("/rollback").len(), 1, "the first analysis already rolled back");
    assert_signed(&rx.requests("/rollback"), "rollback");
    assert_eq!(s.w.weights("cart"), [20, 0]);
    let ev = events(&s.c, &r.id);
    assert!(ev.iter().any(|e| e.kind == "rolling-back" && e.message.contains("asked to roll back")), "{ev:#?}");
    assert_eq!(done.failed_checks, 0, "a rollback request is not a failed-check count");
}

#[tokio::test]
async fn rollback_hook_non_2xx_or_timeout_carries_on() {
    let rx = Receiver::start().await;
    rx.respond("/rollback", 404);
    let s = setup(&hooked_policy(&rx, "rollback", "/rollback", "10s"), true);
    let r = start(&s.c, s.w.request("cart", "hooked")).await;
    wait_phase(&s.c, &r.id, Phase::Succeeded, WAIT).await;
    assert_eq!(rx.requests("/rollback").len(), 2, "asked at every analysis");

    rx.delay("/rollback", Duration::from_secs(2));
    rx.respond("/rollback", 200); // would roll back, but answers too late
    let r = start(&s.c, s.w.request("shelf", "hooked")).await;
    wait_phase(&s.c, &r.id, Phase::Succeeded, WAIT).await;
    assert_eq!(s.w.weights("shelf"), [20, 50, 100]);
    let _ = &s.hooks;
}

// ---- blue/green preflight: N consecutive 2xx from the templated URL ----

fn bluegreen(rx: &Receiver, checks: u32, extra: &str) -> String {
    format!(
        "name: bg\nstrategy: blue-green\ninterval: 100ms\nthreshold: 2\nprogressDeadline: 10s\npostFlip: 300ms\n\
         preflight:\n  url: \"{}\"\n  checks: {checks}\n  every: 20ms\n{extra}",
        rx.url("/ready/{{service}}/{{namespace}}/{{version}}")
    )
}

#[tokio::test]
async fn preflight_needs_consecutive_successes_and_a_failure_resets_the_count() {
    let rx = Receiver::start().await;
    let path = "/ready/cart/shop/v2";
    rx.script(path, &[200, 500, 200, 200, 200]);
    let s = setup(&bluegreen(&rx, 3, ""), false);
    let r = start(&s.c, s.w.request("cart", "bg")).await;
    wait_phase(&s.c, &r.id, Phase::Succeeded, WAIT).await;
    assert_eq!(rx.requests(path).len(), 5, "1 ok, reset by a 500, then 3 in a row");
    assert_eq!(s.w.weights("cart"), [100]);
}

#[tokio::test]
async fn preflight_that_never_passes_rolls_back_before_the_flip() {
    let rx = Receiver::start().await;
    let path = "/ready/cart/shop/v2";
    rx.respond(path, 503);
    let s = setup(&bluegreen(&rx, 2, ""), false);
    let r = start(&s.c, s.w.request("cart", "bg")).await;
    let done = wait_phase(&s.c, &r.id, Phase::RolledBack, WAIT).await;
    assert_eq!(rx.requests(path).len(), 6, "gives up after checks × 3 attempts");
    assert!(done.message.contains("preflight") && done.message.contains("HTTP 503"), "{}", done.message);
    assert!(s.w.weights("cart").is_empty(), "never flipped");
}

#[tokio::test]
async fn blue_green_confirm_promotion_holds_the_flip_until_2xx() {
    let rx = Receiver::start().await;
    rx.respond("/promo", 500);
    let extra = format!("webhooks:\n  confirmPromotion:\n    - url: {}\n      timeout: 300ms\n", rx.url("/promo"));
    let s = setup(&bluegreen(&rx, 1, &extra), false);
    let r = start(&s.c, s.w.request("cart", "bg")).await;
    rx.wait_for("/promo", 3, WAIT).await;
    let now = s.c.get(&r.id).unwrap();
    assert_eq!((now.canary_weight, now.failed_checks), (0, 0), "{now:?}");
    assert!(now.message.contains("confirm-promotion"), "{}", now.message);
    assert!(s.w.weights("cart").is_empty(), "not flipped while the hook says no");
    rx.respond("/promo", 200);
    wait_phase(&s.c, &r.id, Phase::Succeeded, WAIT).await;
    assert_eq!(s.w.weights("cart"), [100]);
}
