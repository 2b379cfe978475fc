//! The workload part of a rollout's record: what vane is driving the Deployments to, in order, and
//! what happens once they are there. Persisted with the rollout, so a restarted daemon carries on
//! with the same step (every step is an idempotent "make it so").

use serde::{Deserialize, Serialize};

use super::spec::WorkloadSpec;
use super::{EventKind, Millis, Phase};
use crate::rollout::ports::{RouteShape, WorkloadAction};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRun {
    pub spec: WorkloadSpec,
    /// The states still to reach, in order; the first is being reconciled.
    pub todo: Vec<WorkloadAction>,
    /// What to do once `todo` is empty.
    pub then: Option<Then>,
    /// When the first of `todo` became the goal (its `readyTimeout` counts from here).
    pub since: Millis,
    /// When to reconcile again (a poll while pods start, a retry, or the retirement delay).
    pub check_at: Option<Millis>,
    /// Consecutive errors reconciling the current goal.
    pub failures: u32,
    /// The canary weight the canary Deployment was last confirmed ready for.
    pub ready_for: Option<u8>,
    /// Routing was (maybe) prepared: a way out must restore the header routes.
    pub routed: bool,
    /// The end of the rollout was decided and its workload steps planned.
    pub finishing: bool,
}

/// What the machine does when the workload reached every state of `todo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "camelCase")]
pub enum Then {
    /// The pre-traffic `deploy` stage passed.
    Deployed,
    /// Shift traffic: the canary is ready for this weight.
    Shift { phase: Phase, weight: u8 },
    /// End the rollout (the decision was taken earlier; the workload is now cleaned up).
    Finish { phase: Phase, kind: EventKind, message: String },
}

impl WorkloadRun {
    pub fn new(spec: WorkloadSpec, first_weight: u8, now: Millis) -> Self {
        WorkloadRun {
            spec,
            todo: vec![
                WorkloadAction::Canary { weight: first_weight },
                WorkloadAction::Route { shape: RouteShape::Prepared },
            ],
            then: Some(Then::Deployed),
            since: now,
            check_at: None,
            failures: 0,
            ready_for: None,
            routed: false,
            finishing: false,
        }
    }

    /// Make `todo` the new plan (dropping what was left of the old one).
    pub fn plan(&mut self, todo: Vec<WorkloadAction>, then: Then, now: Millis) {
        self.todo = todo;
        self.then = Some(then);
        self.since = now;
        self.check_at = None;
        self.failures = 0;
    }

    pub fn goal(&self) -> Option<WorkloadAction> {
        self.todo.first().copied()
    }

    /// Poll period while waiting for pods: a twentieth of `readyTimeout`, between 100 ms and 2 s.
    pub fn poll_ms(&self) -> u64 {
        (self.spec.ready_timeout.as_millis() as u64 / 20).clamp(100, 2_000)
    }
}
