//! The pure rollout machine: scenario tests and property tests (no I/O, no clock).

use std::time::Duration;

use proptest::prelude::*;
use vane::analysis::{AnalysisReport, Verdict};
use vane::fixtures;
use vane::policy::{Approval, Gate, Mirror, OnNoData, Policy};
use vane::rollout::machine::{self, Command, Effect, Input, StageFailure};
use vane::rollout::{Phase, Rollout};
use vane::traffic::RouterError;

const T0: u64 = 1_800_000_000_000;

fn new(policy: Policy) -> Rollout {
    let req = fixtures::request("svc", &policy.name);
    machine::create("01TEST".into(), &req, policy, "ci", T0).0
}

/// A tiny world that answers every effect at once: router ok, analysis from `verdict`.
struct World {
    r: Rollout,
    now: u64,
    verdict: Verdict,
    router_ok: bool,
    weights: Vec<u8>,
    events: Vec<String>,
    /// The router mirrors to the canary (turned on by SetMirror, ended by any weight write).
    mirror_live: bool,
}

impl World {
    fn new(p: Policy) -> World {
        World {
            r: new(p),
            now: T0,
            verdict: Verdict::Pass,
            router_ok: true,
            weights: vec![],
            events: vec![],
            mirror_live: false,
        }
    }

    fn feed(&mut self, input: Input) -> Result<(), machine::CommandError> {
        let out = machine::step(&mut self.r, input, self.now)?;
        self.events.extend(out.events.iter().map(|e| e.kind.clone()));
        for eff in out.effects {
            let next = match eff {
                Effect::SetWeight { op, canary } => {
                    let result = if self.router_ok {
                        self.weights.push(canary);
                        self.mirror_live = false;
                        Ok(())
                    } else {
                        Err(RouterError::Transient("down".into()))
                    };
                    Input::RouterDone { op, result }
                }
                Effect::Validate { op } | Effect::Preflight { op } => Input::StageDone { op, result: Ok(()) },
                Effect::CallHooks { op: Some(op), .. } => Input::StageDone { op, result: Ok(()) },
                Effect::SetMirror { op, .. } => {
                    let result = if self.router_ok {
                        self.mirror_live = true;
                        Ok(())
                    } else {
                        Err(RouterError::Transient("down".into()))
                    };
                    Input::RouterDone { op, result }
                }
                Effect::CallHooks { op: None, .. } | Effect::Observe => continue,
                Effect::Workload { op, .. } => {
                    Input::WorkloadDone { op, result: Ok(vane::rollout::ports::WorkloadStatus::Ready("ok".into())) }
                }
                Effect::Analyse { op } => Input::Analysis {
                    op,
                    report: AnalysisReport {
                        at: self.now,
                        verdict: self.verdict,
                        metrics: vec![],
                        summary: String::new(),
                    },
                },
            };
            self.feed(next)?;
        }
        Ok(())
    }

    /// Advance time to the machine's next wake-up and tick.
    fn tick(&mut self) {
        if let Some(t) = self.r.wake_at() {
            self.now = self.now.max(t);
        }
        self.feed(Input::Tick).expect("ticks never fail");
    }

    fn run_until(&mut self, done: impl Fn(&Rollout) -> bool, max_ticks: usize) {
        for _ in 0..max_ticks {
            if done(&self.r) {
                return;
            }
            self.tick();
        }
        assert!(done(&self.r), "not reached after {max_ticks} ticks: {:?} {}", self.r.phase, self.r.message);
    }

    fn cmd(&mut self, c: Command) -> Result<(), machine::CommandError> {
        self.feed(Input::Command { command: c, actor: "alice".into() })
    }
}

fn canary(steps: &[u8]) -> Policy {
    fixtures::policy("p", steps, Duration::from_secs(60), 3)
}

#[test]
fn healthy_canary_walks_the_steps_and_succeeds() {
    let mut w = World::new(canary(&[5, 25, 50, 100]));
    w.run_until(|r| r.is_terminal(), 20);
    assert_eq!(w.r.phase, Phase::Succeeded);
    assert_eq!(w.weights, vec![5, 25, 50, 100]);
    assert_eq!(w.r.applied_weight, Some(100));
    // One analysis per step below 100, one interval apart.
    assert_eq!(w.events.iter().filter(|e| *e == "analysis").count(), 3);
    assert_eq!(w.now - T0, 3 * 60_000);
}

#[test]
fn failing_analysis_rolls_back_after_threshold_checks() {
    let mut w = World::new(canary(&[5, 25, 50, 100]));
    w.run_until(|r| r.canary_weight == 25 && r.applied_weight == Some(25), 10);
    w.verdict = Verdict::Fail;
    w.run_until(|r| r.is_terminal(), 10);
    assert_eq!(w.r.phase, Phase::RolledBack);
    assert_eq!(w.r.failed_checks, 3);
    assert_eq!(w.weights, vec![5, 25, 0]);
    assert!(w.r.message.contains("3 failed checks"), "{}", w.r.message);
}

#[test]
fn no_data_holds_fails_or_ignores_per_policy() {
    // hold: no failed check, no promotion, until the progress deadline rolls back.
    let mut p = canary(&[50, 100]);
    p.progress_deadline = Duration::from_secs(300);
    let mut w = World::new(p.clone());
    w.verdict = Verdict::NoData;
    w.run_until(|r| r.is_terminal(), 20);
    assert_eq!((w.r.phase, w.r.failed_checks), (Phase::RolledBack, 0));
    assert!(w.r.message.contains("progressDeadline"), "{}", w.r.message);
    assert_eq!(w.weights, vec![50, 0]);

    // fail: each no-data is a failed check.
    p.on_no_data = OnNoData::Fail;
    let mut w = World::new(p);
    w.verdict = Verdict::NoData;
    w.run_until(|r| r.is_terminal(), 20);
    assert_eq!((w.r.phase, w.r.failed_checks), (Phase::RolledBack, 3));
}

#[test]
fn a_step_still_collecting_its_min_requests_extends_past_the_progress_deadline() {
    // A low-traffic canary: 8 analyses collecting (well past the 5-minute deadline), then a pass.
    let mut p = canary(&[50, 100]);
    p.progress_deadline = Duration::from_secs(300);
    let mut w = World::new(p);
    w.verdict = Verdict::Collecting;
    w.run_until(|r| r.applied_weight == Some(50), 5);
    for _ in 0..8 {
        w.tick();
    }
    assert_eq!((w.r.phase, w.r.canary_weight, w.r.failed_checks), (Phase::Progressing, 50, 0), "{}", w.r.message);
    assert!(w.now - T0 >= 8 * 60_000, "past the deadline");
    assert!(w.r.message.contains("collecting"), "{}", w.r.message);
    w.verdict = Verdict::Pass;
    w.run_until(|r| r.is_terminal(), 5);
    assert_eq!(w.r.phase, Phase::Succeeded);

    // Collecting stops (no new requests: no data): the deadline counts from the last collecting one.
    let mut p = canary(&[50, 100]);
    p.progress_deadline = Duration::from_secs(300);
    let mut w = World::new(p);
    w.verdict = Verdict::Collecting;
    w.run_until(|r| r.applied_weight == Some(50), 5);
    for _ in 0..3 {
        w.tick();
    }
    let last_progress = w.now;
    w.verdict = Verdict::NoData;
    w.run_until(|r| r.is_terminal(), 20);
    assert_eq!(w.r.phase, Phase::RolledBack);
    assert!(w.r.message.contains("progressDeadline"), "{}", w.r.message);
    assert!(w.now >= last_progress + 300_000, "rolled back at {} < {}", w.now, last_progress + 300_000);
}

#[test]
fn an_analysis_where_every_query_errored_never_passes() {
    // Whatever onNoData says: never a promotion, never a failed check, the deadline rolls back.
    for on_no_data in [OnNoData::Hold, OnNoData::Ignore, OnNoData::Fail] {
        let mut p = canary(&[50, 100]);
        p.progress_deadline = Duration::from_secs(300);
        p.on_no_data = on_no_data;
        let mut w = World::new(p);
        w.verdict = Verdict::Error;
        w.run_until(|r| r.is_terminal(), 20);
        assert_eq!((w.r.phase, w.r.failed_checks), (Phase::RolledBack, 0), "{on_no_data:?}");
        assert_eq!(w.weights, vec![50, 0], "never promoted");
        assert!(w.events.iter().filter(|e| *e == "analysis").count() >= 4);
    }
}

#[test]
fn pause_resume_promote_and_full_promote() {
    let mut w = World::new(canary(&[5, 25, 50, 100]));
    w.run_until(|r| r.applied_weight == Some(5), 5);
    w.cmd(Command::Pause).unwrap();
    assert_eq!(w.r.phase, Phase::Paused);
    assert!(w.cmd(Command::Pause).is_err(), "double pause is a typed error");
    // Time passes while paused: nothing moves and no deadline fires.
    w.now += 3_600_000;
    w.feed(Input::Tick).unwrap();
    assert_eq!((w.r.phase, w.r.canary_weight), (Phase::Paused, 5));
    w.cmd(Command::Resume).unwrap();
    assert_eq!(w.r.phase, Phase::Progressing);
    w.cmd(Command::Promote { full: false }).unwrap();
    assert_eq!(w.r.canary_weight, 25);
    w.cmd(Command::Promote { full: true }).unwrap();
    assert_eq!(w.r.phase, Phase::Succeeded);
    assert_eq!(w.weights, vec![5, 25, 100]);
}

#[test]
fn abort_mid_step_ends_aborted_at_zero() {
    let mut w = World::new(canary(&[5, 25, 50, 100]));
    w.run_until(|r| r.applied_weight == Some(25), 10);
    w.cmd(Command::Abort { reason: Some("bad build".into()) }).unwrap();
    assert_eq!(w.r.phase, Phase::Aborted);
    assert_eq!(w.weights.last(), Some(&0));
    assert!(w.cmd(Command::Abort { reason: None }).is_err());
    assert!(w.cmd(Command::Resume).is_err());
}

#[test]
fn gate_waits_then_times_out_into_rollback() {
    let mut p = canary(&[5, 50, 100]);
    p.gates = vec![Gate { at: 50, approval: Approval::Manual, timeout: Duration::from_secs(600), approvers: vec![] }];
    let mut w = World::new(p);
    w.run_until(|r| r.phase == Phase::AwaitingApproval, 10);
    assert_eq!(w.r.canary_weight, 50);
    w.run_until(|r| r.is_terminal(), 30);
    assert_eq!(w.r.phase, Phase::RolledBack);
    assert!(w.r.message.contains("timed out"), "{}", w.r.message);
}

#[test]
fn rollback_waits_for_the_router_to_confirm_zero() {
    let mut w = World::new(canary(&[50, 100]));
    w.run_until(|r| r.applied_weight == Some(50), 5);
    w.router_ok = false;
    w.cmd(Command::Abort { reason: None }).unwrap();
    for _ in 0..20 {
        w.tick();
    }
    assert_eq!(w.r.phase, Phase::RollingBack, "never done before the router confirms");
    assert!(w.r.message.contains("rollback NOT complete"), "{}", w.r.message);
    w.router_ok = true;
    w.tick();
    assert_eq!(w.r.phase, Phase::Aborted);
}

#[test]
fn missing_subset_fails_before_any_traffic_moves() {
    let mut r = new(canary(&[5, 100]));
    let out = machine::step(&mut r, Input::Tick, T0).unwrap();
    let Effect::Validate { op } = out.effects[0] else { panic!("validate first: {:?}", out.effects) };
    let failure = StageFailure { message: "subset v1-1-0 not in DestinationRule".into(), permanent: true };
    let out = machine::step(&mut r, Input::StageDone { op, result: Err(failure) }, T0).unwrap();
    assert_eq!(r.phase, Phase::Failed);
    assert!(out.effects.iter().all(|e| !matches!(e, Effect::SetWeight { .. })));
    assert!(r.message.contains("subset"), "{}", r.message);
}

#[test]
fn blue_green_flips_watches_and_flips_back_on_breach() {
    let p = fixtures::blue_green("bg", Duration::from_secs(60), Duration::from_secs(300));
    let mut w = World::new(p.clone());
    w.run_until(|r| r.is_terminal(), 20);
    assert_eq!((w.r.phase, w.weights.clone()), (Phase::Succeeded, vec![100]));
    assert_eq!(w.now - T0, 300_000, "succeeds at the end of the post-flip window");

    let mut w = World::new(p);
    w.run_until(|r| r.applied_weight == Some(100), 5);
    w.verdict = Verdict::Fail;
    w.run_until(|r| r.is_terminal(), 20);
    assert_eq!((w.r.phase, w.weights.clone()), (Phase::RolledBack, vec![100, 0]));
}

#[test]
fn recovery_reapplies_the_decided_weight() {
    let mut w = World::new(canary(&[5, 25, 100]));
    w.run_until(|r| r.applied_weight == Some(25), 10);
    // Simulate a crash while the router call for 25 was in flight and the router still shows 5.
    w.feed(Input::Recover { observed: Some(5) }).unwrap();
    assert_eq!(w.weights.last(), Some(&25), "re-applied after recovery");
    assert!(w.events.contains(&"recovered".to_string()));
}

#[test]
fn a_crash_after_the_router_applied_the_decision_still_finishes() {
    // The daemon dies after the router set the weight but before the result was recorded; after the
    // restart the router reads back exactly that weight, so nothing is re-applied.
    for (abort, want) in [(true, Phase::Aborted), (false, Phase::Succeeded)] {
        let mut w = World::new(canary(&[5, 25, 100]));
        w.run_until(|r| r.applied_weight == Some(25), 10);
        let command = if abort { Command::Abort { reason: None } } else { Command::Promote { full: true } };
        let out = machine::step(&mut w.r, Input::Command { command, actor: "alice".into() }, w.now).unwrap();
        let Some(Effect::SetWeight { canary, .. }) = out.effects.first().cloned() else { panic!("{out:?}") };
        w.feed(Input::Recover { observed: Some(canary) }).unwrap();
        assert_eq!(w.r.phase, want, "{}", w.r.message);
        assert_eq!(w.weights, vec![5, 25], "nothing re-applied: the weight was live");
    }
    // Mid-canary: the step's analysis is scheduled again instead of waiting for the deadline.
    let mut w = World::new(canary(&[5, 25, 100]));
    w.run_until(|r| r.applied_weight == Some(5), 10);
    w.r.canary_weight = 25;
    w.r.step_index = 1;
    w.r.next_analysis_at = None;
    w.feed(Input::Recover { observed: Some(25) }).unwrap();
    assert_eq!(w.r.next_analysis_at, Some(w.now + 60_000));
    w.run_until(|r| r.is_terminal(), 10);
    assert_eq!(w.r.phase, Phase::Succeeded);
}

// ---- mirroring (policy `mirror`) ----

fn mirrored(steps: &[u8]) -> Policy {
    Policy { mirror: Some(Mirror { percent: 50, duration: Duration::from_secs(300) }), ..canary(steps) }
}

#[test]
fn mirroring_comes_before_the_first_step_then_the_steps_follow() {
    let mut w = World::new(mirrored(&[5, 25, 50, 100]));
    w.run_until(|r| r.mirror_until.is_some(), 10);
    assert!(w.mirror_live && w.weights.is_empty(), "mirror on, no weight written");
    assert_eq!(w.r.phase, Phase::Pending);
    assert!(w.r.message.starts_with("mirroring 50% of requests to v1.1.0"), "{}", w.r.message);
    let mirror_on = w.now;
    assert_eq!(w.r.step_started_at, mirror_on, "the analysis window starts with the mirror");
    w.run_until(|r| r.applied_weight == Some(5), 20);
    assert!(w.now - mirror_on >= 300_000, "the first step waits for the whole mirror duration");
    assert!(!w.mirror_live, "the first weight write ends the mirror");
    let first_step = w.events.iter().position(|e| e == "step").unwrap();
    let mirror = w.events.iter().position(|e| e == "mirror").unwrap();
    let analyses = w.events[mirror..first_step].iter().filter(|e| *e == "analysis").count();
    assert!(analyses >= 5, "the mirrored canary is analysed every interval ({analyses})");
    w.run_until(|r| r.is_terminal(), 20);
    assert_eq!((w.r.phase, w.weights.clone()), (Phase::Succeeded, vec![5, 25, 50, 100]));
}

#[test]
fn a_breach_under_mirroring_rolls_back_with_no_user_traffic() {
    let mut w = World::new(mirrored(&[5, 25, 50, 100]));
    w.run_until(|r| r.mirror_until.is_some(), 10);
    w.verdict = Verdict::Fail;
    w.run_until(|r| r.is_terminal(), 20);
    assert_eq!(w.r.phase, Phase::RolledBack, "{}", w.r.message);
    assert_eq!(w.weights, vec![0], "the only weight ever written is the rollback's 0 %, which ends the mirror");
    assert!(!w.mirror_live);
    assert!(!w.events.iter().any(|e| e == "step"), "no step was ever taken: {:?}", w.events);
    assert!(w.r.message.contains("3 failed checks"), "{}", w.r.message);
}

#[test]
fn an_abort_or_a_router_outage_while_mirroring_still_ends_the_mirror() {
    let mut w = World::new(mirrored(&[5, 100]));
    w.run_until(|r| r.mirror_until.is_some(), 10);
    w.router_ok = false;
    w.cmd(Command::Abort { reason: None }).unwrap();
    assert_eq!(w.r.phase, Phase::RollingBack, "not done before the router confirms");
    w.tick();
    assert_eq!(w.r.phase, Phase::RollingBack);
    w.router_ok = true;
    w.run_until(|r| r.is_terminal(), 10);
    assert_eq!((w.r.phase, w.weights.clone(), w.mirror_live), (Phase::Aborted, vec![0], false));

    // An abort before the mirror was ever on needs no router call at all.
    let mut w = World::new(mirrored(&[5, 100]));
    w.cmd(Command::Abort { reason: None }).unwrap();
    assert_eq!((w.r.phase, w.weights.clone()), (Phase::Aborted, vec![]));
}

#[test]
fn a_gate_at_0_after_mirroring_ends_the_mirror_and_its_timeout_rolls_back() {
    let mut p = mirrored(&[5, 100]);
    p.gates = vec![Gate { at: 0, approval: Approval::Manual, timeout: Duration::from_secs(900), approvers: vec![] }];
    let mut w = World::new(p);
    w.run_until(|r| r.phase == Phase::AwaitingApproval && r.applied_weight == Some(0), 20);
    assert_eq!((w.weights.clone(), w.mirror_live), (vec![0], false), "entering the gate writes 0 %, ending the mirror");
    w.run_until(|r| r.is_terminal(), 20);
    assert_eq!(w.r.phase, Phase::RolledBack, "{}", w.r.message);
    assert!(w.weights.iter().all(|x| *x == 0) && !w.mirror_live);
}

// ---- properties ----

#[derive(Debug, Clone)]
enum Act {
    Wait(u32),
    Promote(bool),
    Pause,
    Resume,
    Abort,
    RouterOk(bool),
    Verdict(u8),
    Drift(u8),
}

impl World {
    fn act(&mut self, a: Act) -> Result<(), machine::CommandError> {
        match a {
            Act::Wait(ms) => {
                self.now += ms as u64;
                self.feed(Input::Tick)
            }
            Act::Promote(full) => self.cmd(Command::Promote { full }),
            Act::Pause => self.cmd(Command::Pause),
            Act::Resume => self.cmd(Command::Resume),
            Act::Abort => self.cmd(Command::Abort { reason: None }),
            Act::RouterOk(ok) => {
                self.router_ok = ok;
                Ok(())
            }
            Act::Verdict(v) => {
                self.verdict =
                    [Verdict::Pass, Verdict::Fail, Verdict::NoData, Verdict::Inconclusive, Verdict::Pass][v as usize];
                Ok(())
            }
            Act::Drift(x) => self.feed(Input::Observed { weight: Ok(Some(x)) }),
        }
    }
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => (1u32..200_000).prop_map(Act::Wait),
        1 => any::<bool>().prop_map(Act::Promote),
        1 => Just(Act::Pause),
        1 => Just(Act::Resume),
        1 => Just(Act::Abort),
        1 => any::<bool>().prop_map(Act::RouterOk),
        2 => (0u8..5).prop_map(Act::Verdict),
        1 => (0u8..=100).prop_map(Act::Drift),
    ]
}

fn steps() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::btree_set(1u8..100, 0..5).prop_map(|s| {
        let mut v: Vec<u8> = s.into_iter().collect();
        v.push(100);
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Random command/time/failure sequences: no panic, weights only from the steps (or 0/100),
    /// terminal phases never left, rollbacks end at 0 %, success at 100 %, rejected commands change nothing.
    #[test]
    fn invariants_hold_under_random_sequences(steps in steps(), bg in any::<bool>(), gate in any::<bool>(), acts in proptest::collection::vec(act(), 1..60)) {
        let mut p = fixtures::policy("p", &steps, Duration::from_secs(60), 2);
        if bg {
            p = fixtures::blue_green("p", Duration::from_secs(60), Duration::from_secs(180));
        }
        if gate && !bg && steps.len() > 1 {
            p.gates = vec![Gate { at: steps[0], approval: Approval::Manual, timeout: Duration::from_secs(900), approvers: vec![] }];
        }
        let allowed: Vec<u8> = p.weights().into_iter().chain([0, 100]).collect();
        let mut w = World::new(p);
        let mut terminal: Option<Phase> = None;
        for a in acts {
            let before = w.r.clone();
            let res = w.act(a);
            if res.is_err() {
                prop_assert_eq!(&w.r, &before, "a rejected command changed the rollout");
            }
            prop_assert!(allowed.contains(&w.r.canary_weight), "weight {} not in {:?}", w.r.canary_weight, allowed);
            prop_assert!(w.weights.iter().all(|x| allowed.contains(x)), "router saw {:?}", w.weights);
            if let Some(t) = terminal {
                prop_assert_eq!(w.r.phase, t, "left a terminal phase");
            }
            match w.r.phase {
                Phase::RolledBack | Phase::Aborted => {
                    prop_assert_eq!(w.r.canary_weight, 0);
                    prop_assert!(w.r.applied_weight.unwrap_or(0) == 0, "rolled back but router at {:?}", w.r.applied_weight);
                    prop_assert!(w.weights.last().is_none_or(|x| *x == 0));
                }
                Phase::Succeeded => prop_assert_eq!(w.r.applied_weight, Some(100)),
                Phase::Failed => prop_assert!(w.weights.iter().all(|x| *x == 0)),
                _ => {}
            }
            let routers = w.r.busy.iter().filter(|b| matches!(b, vane::rollout::Busy::Router { .. })).count();
            prop_assert!(routers <= 1, "more than one router call in flight");
            if w.r.is_terminal() {
                terminal = Some(w.r.phase);
            }
        }
    }

    /// With a mirror policy and any sequence of waits, verdicts, pauses, aborts and router outages (no
    /// manual promotion): no weight above 0 before the mirror stage passed, and a finished rollout
    /// never leaves the mirror on; a rollback from the mirror stage wrote only 0 %.
    #[test]
    fn mirroring_never_serves_users_and_never_outlives_the_rollout(gate0 in any::<bool>(), acts in proptest::collection::vec(act(), 1..80)) {
        let mut p = mirrored(&[5, 25, 100]);
        if gate0 {
            p.gates = vec![Gate { at: 0, approval: Approval::Manual, timeout: Duration::from_secs(900), approvers: vec![] }];
        }
        let mut w = World::new(p);
        for a in acts {
            if !matches!(a, Act::Promote(_)) {
                let _ = w.act(a);
            }
            let passed = w.events.iter().any(|e| e == "stage") && w.r.stage == vane::rollout::Stage::Ready;
            if !passed {
                prop_assert!(w.weights.iter().all(|x| *x == 0), "weights {:?} before the mirror stage passed", w.weights);
            }
            if w.r.is_terminal() {
                prop_assert!(!w.mirror_live, "{:?} with the mirror still on", w.r.phase);
                if !w.events.iter().any(|e| e == "step") {
                    prop_assert!(w.weights.iter().all(|x| *x == 0), "{:?}", w.weights);
                }
            }
        }
    }
}

#[test]
fn a_router_that_cannot_be_read_back_is_surfaced_at_once() {
    let mut w = World::new(canary(&[50, 100]));
    w.run_until(|r| r.applied_weight == Some(50), 5);
    let gone = RouterError::Permanent("VirtualService prod/svc not found".into());
    w.feed(Input::Observed { weight: Err(gone.clone()) }).unwrap();
    assert!(w.r.message.contains("not found"), "{}", w.r.message);
    assert_eq!(w.events.last().map(String::as_str), Some("router-error"));
    w.feed(Input::Observed { weight: Err(gone) }).unwrap();
    assert_eq!(w.events.iter().filter(|e| *e == "router-error").count(), 2, "1st and 2nd (powers of two) only");
}

// ---- gate approval (ApproveGate): double delivery approves once ----

fn gated(steps: &[u8], at: u8) -> Policy {
    let mut p = canary(steps);
    p.gates = vec![Gate { at, approval: Approval::Manual, timeout: Duration::from_secs(3600), approvers: vec![] }];
    p
}

/// The canary weight each analysis judged.
fn analysed_at(events: &[vane::rollout::Event]) -> Vec<u8> {
    events.iter().filter(|e| e.kind == "analysis").map(|e| e.canary_weight).collect()
}

#[test]
fn approving_a_gate_twice_approves_once_and_the_next_step_is_still_analysed() {
    let mut w = World::new(gated(&[5, 25, 50, 100], 25));
    w.run_until(|r| r.phase == Phase::AwaitingApproval, 10);
    assert_eq!(w.r.canary_weight, 25);
    w.cmd(Command::ApproveGate { at: 25 }).expect("the current gate is approved");
    assert_eq!((w.r.phase, w.r.canary_weight), (Phase::Progressing, 50));
    // The second click / retried request: refused, nothing changes.
    let before = w.r.clone();
    let e = w.cmd(Command::ApproveGate { at: 25 }).unwrap_err();
    assert!(matches!(e, machine::CommandError::GateNotCurrent { at: 25, weight: 50, .. }), "{e}");
    assert_eq!(w.r, before);
    w.run_until(|r| r.is_terminal(), 10);
    assert_eq!(w.r.phase, Phase::Succeeded);
    assert_eq!(w.weights, vec![5, 25, 50, 100]);
    // 50 % was analysed before 100 % (a plain Promote here would have skipped it).
    let kinds: Vec<&str> = w.events.iter().map(String::as_str).collect();
    let promoted = kinds.iter().position(|k| *k == "promoted").unwrap();
    assert!(kinds[promoted..].contains(&"analysis"), "no analysis after the gate: {kinds:?}");
}

#[test]
fn a_gate_approval_for_another_or_no_gate_is_refused_and_changes_nothing() {
    let mut w = World::new(gated(&[5, 25, 50, 100], 50));
    w.run_until(|r| r.applied_weight == Some(25), 10);
    // Not at a gate yet (25 % is a plain step), and 50 is not current either.
    for at in [25, 50, 5, 100] {
        let before = w.r.clone();
        assert!(matches!(w.cmd(Command::ApproveGate { at }), Err(machine::CommandError::GateNotCurrent { .. })));
        assert_eq!(w.r, before, "gate {at}");
    }
    w.run_until(|r| r.phase == Phase::AwaitingApproval, 10);
    assert!(w.cmd(Command::ApproveGate { at: 25 }).is_err(), "an earlier weight is not this gate");
    // Paused at the gate: approving it still works (as promote does).
    w.cmd(Command::Pause).unwrap();
    w.cmd(Command::ApproveGate { at: 50 }).unwrap();
    assert_eq!(w.r.canary_weight, 100);
    // Finished: refused like any command.
    w.run_until(|r| r.is_terminal(), 10);
    assert!(w.cmd(Command::ApproveGate { at: 50 }).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// With only time passing and gate approvals — any gate, delivered any number of times, in any
    /// order — every weight the router leaves below 100 % was analysed (and passed) while it was
    /// live: a duplicate approval can never skip a step's analysis. Refused approvals change nothing.
    #[test]
    fn duplicate_gate_approvals_never_skip_an_analysis(
        steps in steps(),
        gate_picks in proptest::collection::btree_set(0usize..5, 0..3),
        acts in proptest::collection::vec(prop_oneof![2 => Just(None), 3 => (0usize..6).prop_map(Some)], 1..60),
    ) {
        let mut p = canary(&steps);
        let below: Vec<u8> = steps.iter().copied().filter(|w| *w < 100).collect();
        p.gates = gate_picks
            .iter()
            .filter_map(|i| below.get(*i))
            .map(|at| Gate { at: *at, approval: Approval::Manual, timeout: Duration::from_secs(3600), approvers: vec![] })
            .collect();
        let mut r = new(p);
        let mut now = T0;
        let mut events: Vec<vane::rollout::Event> = vec![];
        let mut pending: Vec<Input> = vec![Input::Tick];
        for act in acts {
            let input = match act {
                None => {
                    now = r.wake_at().unwrap_or(now).max(now);
                    Input::Tick
                }
                Some(i) => Input::Command {
                    command: Command::ApproveGate { at: steps.get(i).copied().unwrap_or(0) },
                    actor: "slack:U1".into(),
                },
            };
            pending.push(input);
            while let Some(input) = pending.pop() {
                let before = r.clone();
                match machine::step(&mut r, input, now) {
                    Ok(out) => {
                        events.extend(out.events);
                        for eff in out.effects {
                            pending.push(match eff {
                                Effect::SetWeight { op, .. } | Effect::SetMirror { op, .. } => {
                                    Input::RouterDone { op, result: Ok(()) }
                                }
                                Effect::Validate { op } | Effect::Preflight { op } => Input::StageDone { op, result: Ok(()) },
                                Effect::CallHooks { op: Some(op), .. } => Input::StageDone { op, result: Ok(()) },
                                Effect::CallHooks { op: None, .. } | Effect::Observe | Effect::Workload { .. } => continue,
                                Effect::Analyse { op } => Input::Analysis {
                                    op,
                                    report: AnalysisReport { at: now, verdict: Verdict::Pass, metrics: vec![], summary: String::new() },
                                },
                            });
                        }
                    }
                    Err(_) => prop_assert_eq!(&r, &before, "a refused approval changed the rollout"),
                }
            }
        }
        // Walk the weights the router applied: leaving w (< 100) needs an analysis at w.
        let analysed = analysed_at(&events);
        let applied: Vec<u8> = events.iter().filter(|e| e.kind == "weight-set").map(|e| e.canary_weight).collect();
        for pair in applied.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            if from > 0 && from < 100 && to > from {
                prop_assert!(analysed.contains(&from), "left {from}% for {to}% without analysis; applied {applied:?}, analysed {analysed:?}");
            }
        }
    }
}
