//! The pure machine's rules for workload releases (no I/O): the canary is ready before each shift,
//! promotion comes after 100 % and retirement after `retireAfter`, traffic goes back before the
//! canary is scaled to 0, promotion cannot be aborted, a restart re-issues the current step.

use std::time::Duration;

use vane::analysis::{AnalysisReport, Verdict};
use vane::fixtures;
use vane::rollout::machine::{self, Command, Effect, Input};
use vane::rollout::ports::{RouteShape, WorkloadAction, WorkloadStatus};
use vane::rollout::spec::{CanaryScale, Retire, WorkloadSpec};
use vane::rollout::{Phase, Rollout, RouterSpec};

const T0: u64 = 1_800_000_000_000;
const RETIRE_AFTER: u64 = 60_000;

/// What the world was asked to do, in order.
#[derive(Debug, Clone, PartialEq)]
enum Did {
    Weight(u8),
    Workload(WorkloadAction),
    Validate,
}

struct World {
    r: Rollout,
    now: u64,
    log: Vec<Did>,
    /// Answer for a workload action (default: ready).
    answer: Box<dyn Fn(WorkloadAction) -> WorkloadStatus>,
    verdict: Verdict,
}

impl World {
    fn new(scale: CanaryScale, answer: impl Fn(WorkloadAction) -> WorkloadStatus + 'static) -> World {
        let mut req = fixtures::request("agent-service", "p");
        req.router = RouterSpec::Istio {
            virtual_service: "agent-service".into(),
            route: None,
            stable_subset: "v1-0-0".into(),
            canary_subset: "v1-1-0".into(),
        };
        req.workload = Some(WorkloadSpec {
            deployment: "agent-service".into(),
            image: "registry/agent-service:v1.1.0".into(),
            container: None,
            canary_scale: scale,
            ready_timeout: Duration::from_secs(60),
            retire: Retire::ScaleToZero,
            retire_after: Duration::from_millis(RETIRE_AFTER),
        });
        let policy = fixtures::policy("p", &[5, 25, 50, 100], Duration::from_secs(10), 1);
        let r = machine::create("01TEST".into(), &req, policy, "ci", T0).0;
        let mut w = World { r, now: T0, log: vec![], answer: Box::new(answer), verdict: Verdict::Pass };
        // The driver's first input for a new rollout.
        w.feed(Input::Tick).unwrap();
        w
    }

    fn feed(&mut self, input: Input) -> Result<(), machine::CommandError> {
        let out = machine::step(&mut self.r, input, self.now)?;
        for eff in out.effects {
            let next = match eff {
                Effect::SetWeight { op, canary } => {
                    self.log.push(Did::Weight(canary));
                    Input::RouterDone { op, result: Ok(()) }
                }
                Effect::Validate { op } => {
                    self.log.push(Did::Validate);
                    Input::StageDone { op, result: Ok(()) }
                }
                Effect::Workload { op, action } => {
                    self.log.push(Did::Workload(action));
                    Input::WorkloadDone { op, result: Ok((self.answer)(action)) }
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
                _ => continue,
            };
            self.feed(next)?;
        }
        Ok(())
    }

    fn run_until(&mut self, done: impl Fn(&Rollout) -> bool) {
        for _ in 0..200 {
            if done(&self.r) {
                return;
            }
            if let Some(t) = self.r.wake_at() {
                self.now = self.now.max(t);
            }
            self.feed(Input::Tick).unwrap();
        }
        panic!("not reached: {:?} {}", self.r.phase, self.r.message);
    }
}

fn ready(_: WorkloadAction) -> WorkloadStatus {
    WorkloadStatus::Ready("ok".into())
}

use Did::*;
use WorkloadAction::*;

#[test]
fn the_canary_is_ready_before_each_shift_then_promoted_and_retired_after_retire_after() {
    let mut w = World::new(CanaryScale::Proportional, ready);
    w.run_until(|r| r.workload.as_ref().and_then(|w| w.goal()) == Some(Retire));
    let promoted_at = w.now;
    w.run_until(|r| r.is_terminal());
    assert_eq!(w.r.phase, Phase::Succeeded, "{}", w.r.message);
    assert!(w.now >= promoted_at + RETIRE_AFTER, "retired only after retireAfter");
    assert_eq!(
        w.log,
        vec![
            Workload(Canary { weight: 5 }),
            Workload(Route { shape: RouteShape::Prepared }),
            Validate,
            Weight(5),
            Workload(Canary { weight: 25 }),
            Weight(25),
            Workload(Canary { weight: 50 }),
            Weight(50),
            Workload(Canary { weight: 100 }),
            Weight(100),
            Workload(Stable),
            Workload(Route { shape: RouteShape::Final }),
            Workload(Retire),
            Workload(Route { shape: RouteShape::Retired }),
        ]
    );
}

#[test]
fn full_scale_sizes_the_canary_once() {
    let mut w = World::new(CanaryScale::Full, ready);
    w.run_until(|r| r.is_terminal());
    let sizes: Vec<&Did> = w.log.iter().filter(|d| matches!(d, Workload(Canary { .. }))).collect();
    assert_eq!(sizes, vec![&Workload(Canary { weight: 5 })], "full: one size, the stable's");
}

#[test]
fn a_canary_that_fails_while_scaling_rolls_traffic_back_before_it_is_scaled_to_zero() {
    let mut w = World::new(CanaryScale::Proportional, |a| match a {
        Canary { weight: 50 } => WorkloadStatus::Failed("Progressing=False, ProgressDeadlineExceeded: x".into()),
        _ => WorkloadStatus::Ready("ok".into()),
    });
    w.run_until(|r| r.is_terminal());
    assert_eq!(w.r.phase, Phase::RolledBack, "{}", w.r.message);
    assert!(w.r.message.contains("ProgressDeadlineExceeded"), "{}", w.r.message);
    let tail = &w.log[w.log.iter().position(|d| *d == Workload(Canary { weight: 50 })).unwrap() + 1..];
    assert_eq!(tail, [Weight(0), Workload(Route { shape: RouteShape::Restored }), Workload(Zero)]);
}

#[test]
fn a_canary_that_never_rolls_out_fails_before_traffic_and_is_scaled_to_zero() {
    let mut w = World::new(CanaryScale::Proportional, |a| match a {
        Canary { .. } => WorkloadStatus::Waiting("0 of 1 new replicas updated".into()),
        _ => WorkloadStatus::Ready("ok".into()),
    });
    w.run_until(|r| r.is_terminal());
    assert_eq!(w.r.phase, Phase::Failed, "{}", w.r.message);
    assert!(w.r.message.contains("readyTimeout 1m") && w.r.message.contains("no traffic was moved"), "{}", w.r.message);
    assert!(!w.log.iter().any(|d| matches!(d, Weight(_) | Workload(Route { .. }))), "{:?}", w.log);
    assert_eq!(w.log.last(), Some(&Workload(Zero)));
}

#[test]
fn promotion_cannot_be_aborted_and_a_restart_reissues_the_current_step() {
    let mut w = World::new(CanaryScale::Proportional, |a| match a {
        Stable => WorkloadStatus::Waiting("2 of 5 new replicas updated".into()),
        _ => WorkloadStatus::Ready("ok".into()),
    });
    w.run_until(|r| r.phase == Phase::Promoting && r.workload.as_ref().and_then(|w| w.goal()) == Some(Stable));
    let abort = w.feed(Input::Command { command: Command::Abort { reason: None }, actor: "sre".into() });
    assert!(abort.unwrap_err().to_string().contains("being promoted"));
    let n = w.log.len();
    w.feed(Input::Recover { observed: Some(100) }).unwrap();
    assert_eq!(w.log[n..], [Workload(Stable)], "the step in progress is reconciled again at once");
    assert_eq!(w.r.phase, Phase::Promoting, "not finished by the read-back of 100 %");
}
