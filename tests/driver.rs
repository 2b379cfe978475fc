//! The driver and controller on in-memory fakes with a paused tokio clock: minutes of rollout run
//! in milliseconds, through the real sled store.

#[path = "support/wait.rs"]
mod wait;

use std::sync::Arc;
use std::time::Duration;

use vane::analysis::Verdict;
use vane::fixtures::{self, FakeRouters, ScriptedAnalyzer};
use vane::policy::{Approval, Gate, OnNoData, Policy};
use vane::rollout::controller::{Controller, ControllerError};
use vane::rollout::machine::Command;
use vane::rollout::{Phase, Rollout};

const MIN: Duration = Duration::from_secs(60);

struct Harness {
    c: Controller,
    routers: Arc<FakeRouters>,
    analyzer: Arc<ScriptedAnalyzer>,
    _dir: tempfile::TempDir,
}

fn harness(policies: Vec<Policy>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let routers = Arc::new(FakeRouters::default());
    let analyzer = Arc::new(ScriptedAnalyzer::default());
    let env = fixtures::env(dir.path(), routers.clone(), analyzer.clone());
    Harness { c: Controller::new(env, policies), routers, analyzer, _dir: dir }
}

impl Harness {
    async fn start(&self, service: &str, policy: &str) -> String {
        let (r, created) = self.c.create(fixtures::request(service, policy), "ci", None).await.unwrap();
        assert!(created);
        r.id
    }

    /// Wait (in virtual time, 6 h at most) until `f` holds.
    async fn until(&self, id: &str, what: &str, f: impl Fn(&Rollout) -> bool) -> Rollout {
        wait::until_rollout(&self.c, id, what, Duration::from_secs(6 * 3600), Duration::from_millis(50), f).await
    }

    async fn done(&self, id: &str) -> Rollout {
        self.until(id, "a terminal phase", |r| r.is_terminal()).await
    }

    fn kinds(&self, id: &str) -> Vec<String> {
        self.c.events(id).unwrap().into_iter().map(|e| e.kind).collect()
    }
}

fn canary(name: &str) -> Policy {
    fixtures::policy(name, &[5, 25, 50, 100], MIN, 3)
}

#[tokio::test(start_paused = true)]
async fn healthy_rollout_succeeds_with_every_step_applied() {
    let h = harness(vec![canary("c")]);
    let t0 = tokio::time::Instant::now();
    let id = h.start("cart", "c").await;
    let r = h.done(&id).await;
    assert_eq!(r.phase, Phase::Succeeded);
    assert_eq!(h.routers.get("cart").weights(), vec![5, 25, 50, 100]);
    let took = t0.elapsed();
    assert!(took >= 3 * MIN && took < 4 * MIN, "3 analysis intervals, took {took:?}");
    let events = h.c.events(&id).unwrap();
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1), "gap-free seqs");
    assert_eq!(events.last().unwrap().kind, "succeeded");
}

#[tokio::test(start_paused = true)]
async fn breach_rolls_back_after_threshold_failed_checks() {
    let h = harness(vec![canary("c")]);
    h.analyzer.push("cart", &[Verdict::Pass, Verdict::Fail, Verdict::Pass, Verdict::Fail, Verdict::Fail]);
    let id = h.start("cart", "c").await;
    let r = h.done(&id).await;
    assert_eq!(r.phase, Phase::RolledBack);
    assert_eq!(r.failed_checks, 3);
    assert_eq!(r.canary_weight, 0);
    let w = h.routers.get("cart").weights();
    assert_eq!(w.last(), Some(&0));
    assert!(w.iter().all(|x| [0, 5, 25, 50, 100].contains(x)));
    assert!(r.message.contains("3 failed checks"), "{}", r.message);
    assert!(h.kinds(&id).contains(&"rolling-back".to_string()));
}

#[tokio::test(start_paused = true)]
async fn no_data_follows_on_no_data() {
    let mut hold = canary("hold");
    hold.progress_deadline = 5 * MIN;
    let mut fail = canary("fail");
    fail.on_no_data = OnNoData::Fail;
    let h = harness(vec![hold, fail]);
    h.analyzer.set_default(Verdict::NoData);
    let a = h.start("a", "hold").await;
    let b = h.start("b", "fail").await;
    let (ra, rb) = (h.done(&a).await, h.done(&b).await);
    assert_eq!((ra.phase, ra.failed_checks), (Phase::RolledBack, 0), "hold: never a failed check, deadline rolls back");
    assert!(ra.message.contains("progressDeadline"), "{}", ra.message);
    assert_eq!(h.routers.get("a").weights(), vec![5, 0], "hold never promotes");
    assert_eq!((rb.phase, rb.failed_checks), (Phase::RolledBack, 3));
}

#[tokio::test(start_paused = true)]
async fn a_low_traffic_step_extends_while_it_collects_its_min_requests() {
    let mut slow = canary("slow");
    slow.progress_deadline = 5 * MIN;
    let h = harness(vec![slow]);
    // Step 1 needs 12 intervals to collect its minRequests (more than twice the deadline).
    let mut script = vec![Verdict::Collecting; 12];
    script.extend([Verdict::Pass, Verdict::Pass, Verdict::Pass]);
    h.analyzer.push("cart", &script);
    let t0 = tokio::time::Instant::now();
    let id = h.start("cart", "slow").await;
    let r = h.done(&id).await;
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
    assert_eq!(h.routers.get("cart").weights(), vec![5, 25, 50, 100]);
    let took = t0.elapsed();
    assert!(took >= 15 * MIN && took < 16 * MIN, "12 collecting + 3 passing intervals, took {took:?}");
    let collecting = h.c.events(&id).unwrap().iter().filter(|e| e.message.starts_with("analysis: collecting")).count();
    assert_eq!(collecting, 12);
}

#[tokio::test(start_paused = true)]
async fn pause_holds_and_resume_continues() {
    let h = harness(vec![canary("c")]);
    let id = h.start("cart", "c").await;
    h.until(&id, "25%", |r| r.canary_weight == 25).await;
    let r = h.c.command(&id, Command::Pause, "alice").await.unwrap();
    assert_eq!(r.phase, Phase::Paused);
    tokio::time::sleep(60 * MIN).await;
    let r = h.c.get(&id).unwrap();
    assert_eq!((r.phase, r.canary_weight), (Phase::Paused, 25), "an hour paused: nothing moved");
    assert!(matches!(h.c.command(&id, Command::Pause, "alice").await, Err(ControllerError::Command(_))));
    h.c.command(&id, Command::Resume, "alice").await.unwrap();
    assert_eq!(h.done(&id).await.phase, Phase::Succeeded);
    let ev = h.c.events(&id).unwrap();
    assert!(ev.iter().any(|e| e.kind == "paused" && e.actor == "alice"));
}

#[tokio::test(start_paused = true)]
async fn promote_skips_a_step_and_full_goes_to_100() {
    let h = harness(vec![canary("c")]);
    h.analyzer.set_default(Verdict::Inconclusive);
    let id = h.start("cart", "c").await;
    h.until(&id, "5% applied", |r| r.applied_weight == Some(5)).await;
    let r = h.c.command(&id, Command::Promote { full: false }, "bob").await.unwrap();
    assert_eq!(r.canary_weight, 25);
    h.until(&id, "25% applied", |r| r.applied_weight == Some(25)).await;
    h.c.command(&id, Command::Promote { full: true }, "bob").await.unwrap();
    let r = h.done(&id).await;
    assert_eq!(r.phase, Phase::Succeeded);
    assert_eq!(h.routers.get("cart").weights(), vec![5, 25, 100]);
}

#[tokio::test(start_paused = true)]
async fn abort_mid_step_restores_stable() {
    let h = harness(vec![canary("c")]);
    let id = h.start("cart", "c").await;
    h.until(&id, "50%", |r| r.applied_weight == Some(50)).await;
    h.c.command(&id, Command::Abort { reason: Some("pager".into()) }, "carol").await.unwrap();
    let r = h.done(&id).await;
    assert_eq!(r.phase, Phase::Aborted);
    assert_eq!(h.routers.get("cart").last(), Some(0));
    let e = h.c.events(&id).unwrap();
    assert!(e.iter().any(|e| e.kind == "aborted" && e.actor == "carol" && e.message.contains("pager")));
    // A finished rollout refuses commands with a typed (409) error.
    assert!(matches!(h.c.command(&id, Command::Resume, "carol").await, Err(ControllerError::Command(_))));
}

#[tokio::test(start_paused = true)]
async fn gate_waits_for_approval_and_times_out() {
    let mut p = canary("gated");
    p.gates = vec![Gate { at: 50, approval: Approval::Manual, timeout: 30 * MIN, approvers: vec![] }];
    let h = harness(vec![p]);
    let approved = h.start("a", "gated").await;
    let ignored = h.start("b", "gated").await;
    h.until(&approved, "gate", |r| r.phase == Phase::AwaitingApproval).await;
    h.until(&ignored, "gate", |r| r.phase == Phase::AwaitingApproval).await;
    tokio::time::sleep(10 * MIN).await;
    assert_eq!(h.c.get(&approved).unwrap().canary_weight, 50, "no promotion without approval");
    h.c.command(&approved, Command::Promote { full: false }, "dave").await.unwrap();
    assert_eq!(h.done(&approved).await.phase, Phase::Succeeded);
    let r = h.done(&ignored).await;
    assert_eq!(r.phase, Phase::RolledBack);
    assert!(r.message.contains("timed out"), "{}", r.message);
}

#[tokio::test(start_paused = true)]
async fn router_outage_during_rollback_keeps_rolling_back_until_it_returns() {
    let h = harness(vec![canary("c")]);
    let id = h.start("cart", "c").await;
    h.until(&id, "25%", |r| r.applied_weight == Some(25)).await;
    let router = h.routers.get("cart");
    router.down.store(true, std::sync::atomic::Ordering::SeqCst);
    h.c.command(&id, Command::Abort { reason: None }, "ci").await.unwrap();
    tokio::time::sleep(30 * MIN).await;
    let r = h.c.get(&id).unwrap();
    assert_eq!(r.phase, Phase::RollingBack);
    assert!(r.message.contains("rollback NOT complete"), "{}", r.message);
    router.down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(h.done(&id).await.phase, Phase::Aborted);
    assert_eq!(router.last(), Some(0));
}

#[tokio::test(start_paused = true)]
async fn one_active_rollout_per_service() {
    let h = harness(vec![canary("c")]);
    h.start("cart", "c").await;
    let e = h.c.create(fixtures::request("cart", "c"), "ci", None).await.unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}

/// A restart in the middle: the second controller resumes from the store where the first stopped.
#[test]
fn restart_resumes_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let routers = Arc::new(FakeRouters::default());
    let analyzer = Arc::new(ScriptedAnalyzer::default());
    let policy = fixtures::policy("c", &[5, 25, 50, 100], Duration::from_millis(200), 3);
    let rt = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let id = rt().block_on(async {
        let c = Controller::new(fixtures::env(dir.path(), routers.clone(), analyzer.clone()), vec![policy.clone()]);
        let (r, _) = c.create(fixtures::request("cart", "c"), "ci", None).await.unwrap();
        loop {
            if c.get(&r.id).unwrap().applied_weight == Some(25) {
                break r.id;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }); // runtime dropped: every driver task dies mid-flight, like a crash
    let last_seq = rt().block_on(async {
        let c = Controller::new(fixtures::env(dir.path(), routers.clone(), analyzer.clone()), vec![policy]);
        let before = c.events(&id).unwrap().len() as u64;
        assert_eq!(c.resume_all().unwrap(), 1);
        loop {
            let r = c.get(&id).unwrap();
            if r.is_terminal() {
                assert_eq!(r.phase, Phase::Succeeded);
                break (before, c.events(&id).unwrap());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let (before, events) = last_seq;
    assert!(events.iter().skip(before as usize).any(|e| e.kind == "recovered"));
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let w = routers.get("cart").weights();
    assert_eq!(w.last(), Some(&100));
    assert!(!w.contains(&0), "no rollback on restart: {w:?}");
}

/// Two deliveries of one gate approval at the same moment (two Slack clicks, a retried request):
/// one approves, the other is refused, and the step after the gate still gets its analysis.
#[tokio::test(start_paused = true)]
async fn a_gate_approved_twice_at_once_passes_once_and_the_next_step_is_analysed() {
    let mut p = canary("gated");
    p.gates = vec![Gate { at: 25, approval: Approval::Manual, timeout: 30 * MIN, approvers: vec![] }];
    let h = harness(vec![p]);
    let id = h.start("cart", "gated").await;
    h.until(&id, "gate", |r| r.phase == Phase::AwaitingApproval).await;
    let approve = || h.c.command(&id, Command::ApproveGate { at: 25 }, "slack:U1");
    let (a, b) = tokio::join!(approve(), approve());
    let refused = [&a, &b].iter().filter(|r| r.is_err()).count();
    assert_eq!(refused, 1, "exactly one approval applies: {:?} / {:?}", a.as_ref().err(), b.as_ref().err());
    let e = a.err().or(b.err()).unwrap();
    assert!(e.to_string().contains("not the current gate"), "{e}");
    let approved_at = tokio::time::Instant::now();
    let r = h.done(&id).await;
    assert_eq!(r.phase, Phase::Succeeded);
    assert_eq!(h.routers.get("cart").weights(), vec![5, 25, 50, 100]);
    let events = h.c.events(&id).unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "promoted").count(), 1);
    assert!(
        events.iter().any(|e| e.kind == "analysis" && e.canary_weight == 50),
        "50% was analysed before 100%: {:?}",
        events.iter().map(|e| (&e.kind, e.canary_weight)).collect::<Vec<_>>()
    );
    assert!(approved_at.elapsed() >= MIN, "a full interval at 50% before promoting");
}

/// The router's object is part of the uniqueness key: another service cannot drive a VirtualService
/// (route) or Ingress an active rollout drives; a different named route can; a finished rollout
/// frees it.
#[tokio::test(start_paused = true)]
async fn two_active_rollouts_never_drive_the_same_router_target() {
    use vane::rollout::RouterSpec;
    let h = harness(vec![canary("c")]);
    let istio = |service: &str, route: Option<&str>| {
        let mut req = fixtures::request(service, "c");
        req.router = RouterSpec::Istio {
            virtual_service: "shared".into(),
            route: route.map(Into::into),
            stable_subset: "v1".into(),
            canary_subset: "v2".into(),
        };
        req
    };
    let (first, _) = h.c.create(istio("cart", Some("primary")), "ci", None).await.unwrap();
    for (req, why) in [(istio("shop", Some("primary")), "same route"), (istio("shop", None), "unnamed route")] {
        let e = h.c.create(req, "ci", None).await.unwrap_err();
        assert!(matches!(e, ControllerError::Store(vane::store::StoreError::TargetConflict { .. })), "{why}: {e}");
        assert!(e.to_string().contains("VirtualService/shared") && e.to_string().contains(&first.id), "{e}");
    }
    let (other, created) = h.c.create(istio("shop", Some("secondary")), "ci", None).await.unwrap();
    assert!(created, "another named route of the same VirtualService is another target");
    let ingress = |service: &str, main: &str, canary: &str| {
        let mut req = fixtures::request(service, "c");
        req.router = RouterSpec::NginxIngress {
            ingress: main.into(),
            canary_ingress: Some(canary.into()),
            canary_service: Some(format!("{service}-canary")),
            stable_service: None,
        };
        req
    };
    h.c.create(ingress("a", "main-a", "canary-a"), "ci", None).await.unwrap();
    let e = h.c.create(ingress("b", "main-b", "canary-a"), "ci", None).await.unwrap_err();
    assert!(e.to_string().contains("Ingress/canary-a"), "{e}");
    h.c.command(&first.id, Command::Abort { reason: None }, "ci").await.unwrap();
    h.done(&first.id).await;
    // `other` still holds route "secondary", which an unnamed route may turn out to be.
    let e = h.c.create(istio("shop2", None), "ci", None).await.unwrap_err();
    assert!(e.to_string().contains(&other.id), "{e}");
    h.c.command(&other.id, Command::Abort { reason: None }, "ci").await.unwrap();
    h.done(&other.id).await;
    let (_, created) = h.c.create(istio("shop2", None), "ci", None).await.unwrap();
    assert!(created, "finished rollouts free the VirtualService");
    // Gateway API: the rule of an HTTPRoute, likewise.
    let gateway = |service: &str, rule: Option<&str>| {
        let mut req = fixtures::request(service, "c");
        req.router = RouterSpec::GatewayApi {
            http_route: Some("edge".into()),
            grpc_route: None,
            rule: rule.map(Into::into),
            stable_backend: format!("{service}-blue"),
            canary_backend: format!("{service}-green"),
        };
        req
    };
    h.c.create(gateway("g1", Some("api")), "ci", None).await.unwrap();
    let e = h.c.create(gateway("g2", None), "ci", None).await.unwrap_err();
    assert!(e.to_string().contains("HTTPRoute/edge"), "{e}");
    assert!(h.c.create(gateway("g3", Some("web")), "ci", None).await.is_ok(), "another rule of the route");
}
