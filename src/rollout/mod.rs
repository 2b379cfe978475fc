//! Rollouts: the record, its phases and events (this file), the pure state machine (`machine`), the
//! per-rollout task that executes its effects (`driver`), and the registry of running drivers
//! (`controller`).

pub mod clock;
pub mod controller;
pub mod driver;
pub mod machine;
pub mod naming;
pub mod ports;
pub mod spec;
pub mod workload;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::policy::{Policy, Strategy};
pub use ports::AnalysisReport;
pub use spec::{CreateRequest, RouterSpec, WorkloadSpec};
pub use workload::WorkloadRun;

/// Milliseconds since the Unix epoch. Wall-clock, so deadlines survive restarts.
pub type Millis = u64;

/// Rollout ids are ULIDs: 26 ASCII alphanumerics. Anything else names no rollout.
pub fn is_rollout_id(id: &str) -> bool {
    id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum Phase {
    Pending,
    Progressing,
    Paused,
    AwaitingApproval,
    Promoting,
    Succeeded,
    RollingBack,
    RolledBack,
    Aborted,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::Pending,
        Phase::Progressing,
        Phase::Paused,
        Phase::AwaitingApproval,
        Phase::Promoting,
        Phase::Succeeded,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Aborted,
        Phase::Failed,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::RolledBack | Phase::Aborted | Phase::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::Promoting => "Promoting",
            Phase::Succeeded => "Succeeded",
            Phase::RollingBack => "RollingBack",
            Phase::RolledBack => "RolledBack",
            Phase::Aborted => "Aborted",
            Phase::Failed => "Failed",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}

/// Where a Pending rollout is before traffic first moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// Workload releases: the canary Deployment rolled out at its first size, routing prepared.
    Deploy,
    /// Check the router's objects (e.g. the DestinationRule subsets) before any shift.
    Validate,
    ConfirmRollout,
    PreRollout,
    /// Blue/green: consecutive health checks of the new version.
    Preflight,
    /// The policy's `mirror`: shadow traffic to the canary, analysed, before any user request reaches it.
    Mirror,
    Ready,
}

/// An in-flight effect whose result the machine waits for. Results carry the op id; a result for an op
/// that is no longer current (e.g. analysis finishing after an abort) is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Busy {
    Router { op: u64, weight: u8 },
    Analysis { op: u64 },
    Step { op: u64 },
    // A router call that turns mirroring on (serialised with weight changes like one).
    Mirror { op: u64 },
    Workload { op: u64, action: ports::WorkloadAction },
}

/// Why a rollout rolls back; decides RolledBack (controller) vs Aborted (a person).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RollbackKind {
    Controller,
    Aborted,
}

/// The persisted rollout: identity, decided state, and the timers that drive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub id: String,
    pub service: String,
    pub namespace: String,
    pub version: String,
    pub stable_version: String,
    pub policy: Policy,
    #[serde(deserialize_with = "spec::stored_router")]
    pub router: RouterSpec,
    pub created_by: String,
    pub created_at: Millis,
    pub updated_at: Millis,

    pub phase: Phase,
    /// Phase to return to on resume.
    pub paused_from: Option<Phase>,
    pub stage: Stage,
    pub step_index: usize,
    /// The decided canary weight (what the router is being driven to).
    pub canary_weight: u8,
    /// The weight the router last confirmed; None before the first confirmation.
    pub applied_weight: Option<u8>,
    pub failed_checks: u32,
    pub message: String,
    pub last_analysis: Option<AnalysisReport>,
    pub rollback_kind: Option<RollbackKind>,
    /// Why it rolls back (kept for the final message; `message` also shows router retries).
    #[serde(default)]
    pub rollback_reason: Option<String>,
    pub rollback_started_at: Option<Millis>,
    /// Gates already passed (by their `at` weight).
    pub gates_passed: Vec<u8>,
    /// When the current gate times out.
    pub gate_deadline: Option<Millis>,
    pub step_started_at: Millis,
    pub last_progress_at: Millis,
    pub next_analysis_at: Option<Millis>,
    /// Blue/green: when the flip was confirmed by the router.
    pub flipped_at: Option<Millis>,
    pub router_failures: u32,
    /// Consecutive failed read-backs (drift checks).
    #[serde(default)]
    pub observe_failures: u32,
    pub router_retry_at: Option<Millis>,
    /// When the mirror stage ends. Set once the router confirmed the mirror, cleared by the next
    /// confirmed weight write (which removes it): while set, vane's mirror may be live.
    #[serde(default)]
    pub mirror_until: Option<Millis>,
    pub busy: Vec<Busy>,
    pub next_op: u64,
    /// Last event sequence number written for this rollout.
    pub last_seq: u64,
    /// vane runs the Deployments too (SPEC §4 "workload").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRun>,
}

/// The rollout's timers: what fires when the clock reaches it (see [`Rollout::timers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The next analysis, or the next try of a pre-traffic stage.
    Analysis,
    /// No progress for `progressDeadline`: roll back.
    ProgressDeadline,
    /// An approval gate timed out: roll back (only while awaiting approval).
    GateTimeout,
    /// Retry a failed router call.
    RouterRetry,
    /// Blue/green: the post-flip window ended healthy.
    PostFlip,
    /// Reconcile the workload again (pods starting, a retry, the retirement delay).
    Workload,
}

impl Rollout {
    pub fn strategy(&self) -> Strategy {
        self.policy.strategy
    }
    pub fn steps(&self) -> Vec<u8> {
        self.policy.weights()
    }
    pub fn is_terminal(&self) -> bool {
        self.phase.is_terminal()
    }
    /// The phase that decides what a command may do: a paused rollout's is the one it paused in.
    pub fn effective_phase(&self) -> Phase {
        match self.phase {
            Phase::Paused => self.paused_from.unwrap_or(Phase::Progressing),
            p => p,
        }
    }
    /// The timer table: when each timer fires (None: not armed in this phase). The driver sleeps
    /// until the earliest ([`Rollout::wake_at`]); the machine's timer checks read the same table.
    pub fn timers(&self) -> [(Timer, Option<Millis>); 6] {
        let analysis = match self.phase {
            // The deploy stage is driven by the workload's own timer.
            Phase::Pending if self.stage == Stage::Deploy => None,
            Phase::Progressing | Phase::AwaitingApproval | Phase::Pending => self.next_analysis_at,
            _ => None,
        };
        let deadline = match self.phase {
            Phase::Progressing | Phase::Pending if self.flipped_at.is_none() => {
                Some(self.last_progress_at + self.policy.progress_deadline.as_millis() as u64)
            }
            _ => None,
        };
        // The post-flip window only counts once the router confirmed the flip.
        let post_flip = match (self.phase, self.flipped_at, self.applied_weight) {
            (Phase::Progressing, Some(f), Some(100)) => Some(f + self.post_flip_ms()),
            _ => None,
        };
        // A gate's timeout is armed only while waiting at it: a paused rollout keeps its wall-clock
        // deadline for after the resume but must not wake (and spin) on it meanwhile.
        let gate = self.gate_deadline.filter(|_| self.phase == Phase::AwaitingApproval);
        [
            (Timer::Analysis, analysis),
            (Timer::ProgressDeadline, deadline),
            (Timer::GateTimeout, gate),
            (Timer::RouterRetry, self.router_retry_at),
            (Timer::PostFlip, post_flip),
            (Timer::Workload, self.workload.as_ref().filter(|w| !w.todo.is_empty()).and_then(|w| w.check_at)),
        ]
    }
    /// The earliest moment the machine wants a tick, if any.
    pub fn wake_at(&self) -> Option<Millis> {
        if self.is_terminal() {
            return None;
        }
        self.timers().into_iter().filter_map(|(_, at)| at).min()
    }
    pub fn post_flip_ms(&self) -> u64 {
        self.policy.post_flip.map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// What happened, as an event's `type` (kebab-case on the wire: `weight-set`, `rolling-back`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Created,
    /// A pre-traffic stage passed.
    Stage,
    /// A new weight was decided.
    Step,
    /// The router confirmed a weight.
    WeightSet,
    Analysis,
    Hook,
    Gate,
    Promoted,
    Paused,
    Resumed,
    /// The router showed a weight nobody decided.
    Drift,
    RouterError,
    Recovered,
    RollingBack,
    Aborted,
    RolledBack,
    Succeeded,
    Failed,
    /// The router mirrors a share of the requests to the canary (policy `mirror`).
    Mirror,
    /// A workload step: the canary ready at a size, the Deployment promoted, the canary retired.
    Workload,
}

impl EventKind {
    pub const ALL: [EventKind; 20] = [
        EventKind::Created,
        EventKind::Stage,
        EventKind::Step,
        EventKind::WeightSet,
        EventKind::Analysis,
        EventKind::Hook,
        EventKind::Gate,
        EventKind::Promoted,
        EventKind::Paused,
        EventKind::Resumed,
        EventKind::Drift,
        EventKind::RouterError,
        EventKind::Recovered,
        EventKind::RollingBack,
        EventKind::Aborted,
        EventKind::RolledBack,
        EventKind::Succeeded,
        EventKind::Failed,
        EventKind::Mirror,
        EventKind::Workload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Stage => "stage",
            EventKind::Step => "step",
            EventKind::WeightSet => "weight-set",
            EventKind::Analysis => "analysis",
            EventKind::Hook => "hook",
            EventKind::Gate => "gate",
            EventKind::Promoted => "promoted",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::Drift => "drift",
            EventKind::RouterError => "router-error",
            EventKind::Recovered => "recovered",
            EventKind::RollingBack => "rolling-back",
            EventKind::Aborted => "aborted",
            EventKind::RolledBack => "rolled-back",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
            EventKind::Mirror => "mirror",
            EventKind::Workload => "workload",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a rollout's append-only history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub seq: u64,
    #[schema(value_type = String)]
    #[serde(with = "rfc3339")]
    pub at: Millis,
    /// An [`EventKind`]'s wire name (kept as text so a record written by a newer vane still reads).
    #[serde(rename = "type")]
    pub kind: String,
    pub actor: String,
    pub message: String,
    pub phase: Phase,
    pub canary_weight: u8,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// Millis as RFC 3339 strings on the wire.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::{Duration, UNIX_EPOCH};

    pub fn format(ms: u64) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    }
    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*ms))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        let t = humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)?;
        Ok(t.duration_since(UNIX_EPOCH).map_err(serde::de::Error::custom)?.as_millis() as u64)
    }
}

/// The rollout as the API shows it (SPEC §4 "Rollout object").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    pub id: String,
    pub service: String,
    pub namespace: String,
    pub version: String,
    pub stable_version: String,
    pub strategy: Strategy,
    pub policy: String,
    pub phase: Phase,
    pub step_index: usize,
    pub steps: Vec<u8>,
    pub canary_weight: u8,
    pub failed_checks: u32,
    pub threshold: u32,
    pub message: String,
    pub last_analysis: Option<AnalysisReport>,
    pub router: RouterSpec,
    /// The workload vane runs (SPEC §4 "workload"), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateView>,
    #[schema(value_type = String)]
    #[serde(with = "rfc3339")]
    pub created_at: Millis,
    #[schema(value_type = String)]
    #[serde(with = "rfc3339")]
    pub updated_at: Millis,
    pub created_by: String,
    /// HA (etcd store): the replica running this active rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The gate a rollout waits at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateView {
    pub at: u8,
    pub deadline: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
}

impl Event {
    /// The kind, if this vane knows it.
    pub fn event_kind(&self) -> Option<EventKind> {
        EventKind::parse(&self.kind)
    }
    pub fn is(&self, kind: EventKind) -> bool {
        self.kind == kind.as_str()
    }
}

impl From<&Rollout> for RolloutView {
    fn from(r: &Rollout) -> Self {
        let gate = match r.effective_phase() {
            Phase::AwaitingApproval => r.policy.gate_at(r.canary_weight).map(|g| GateView {
                at: g.at,
                deadline: r.gate_deadline.map(rfc3339::format).unwrap_or_default(),
                approvers: g.approvers.clone(),
            }),
            _ => None,
        };
        RolloutView {
            id: r.id.clone(),
            service: r.service.clone(),
            namespace: r.namespace.clone(),
            version: r.version.clone(),
            stable_version: r.stable_version.clone(),
            strategy: r.strategy(),
            policy: r.policy.name.clone(),
            phase: r.phase,
            step_index: r.step_index,
            steps: r.steps(),
            canary_weight: r.canary_weight,
            failed_checks: r.failed_checks,
            threshold: r.policy.threshold,
            message: r.message.clone(),
            last_analysis: r.last_analysis.clone(),
            router: r.router.clone(),
            workload: r.workload.as_ref().map(|w| w.spec.clone()),
            gate,
            created_at: r.created_at,
            updated_at: r.updated_at,
            created_by: r.created_by.clone(),
            owner: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_keep_their_kebab_case_wire_names() {
        for k in EventKind::ALL {
            let wire = serde_json::to_value(k).unwrap();
            assert_eq!(wire, k.as_str(), "{k:?}");
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::WeightSet.as_str(), "weight-set");
        assert_eq!(EventKind::parse("no-such-kind"), None);
    }

    #[test]
    fn wake_at_is_the_earliest_armed_timer() {
        let req = crate::fixtures::request("s", "p");
        let policy = crate::fixtures::policy("p", &[50, 100], std::time::Duration::from_secs(60), 1);
        let (mut r, _) = machine::create("r".into(), &req, policy, "t", 1_000);
        r.next_analysis_at = Some(5_000);
        r.router_retry_at = Some(3_000);
        assert_eq!(r.wake_at(), Some(3_000));
        r.phase = Phase::Paused;
        // Paused: no analysis and no progress deadline; the router retry still wakes it.
        let armed: Vec<Timer> = r.timers().into_iter().filter(|(_, at)| at.is_some()).map(|(t, _)| t).collect();
        assert_eq!(armed, [Timer::RouterRetry]);
        r.phase = Phase::Succeeded;
        assert_eq!(r.wake_at(), None);
    }

    #[test]
    fn a_rollout_paused_at_a_gate_does_not_wake_on_the_gate_deadline() {
        let req = crate::fixtures::request("s", "p");
        let policy = crate::fixtures::policy("p", &[50, 100], std::time::Duration::from_secs(60), 1);
        let (mut r, _) = machine::create("r".into(), &req, policy, "t", 1_000);
        r.phase = Phase::AwaitingApproval;
        r.gate_deadline = Some(2_000);
        r.next_analysis_at = None;
        assert_eq!(r.wake_at(), Some(2_000));
        r.paused_from = Some(Phase::AwaitingApproval);
        r.phase = Phase::Paused;
        // Long past the deadline, a paused rollout has nothing to do until someone resumes it.
        assert_eq!(r.wake_at(), None);
    }
}
