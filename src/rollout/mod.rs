//! Rollouts: the record, its phases and events (this file), the pure state machine (`machine`), the
//! per-rollout task that executes its effects (`driver`), and the registry of running drivers
//! (`controller`).

pub mod controller;
pub mod driver;
pub mod machine;
pub mod spec;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::analysis::AnalysisReport;
use crate::policy::{Policy, Strategy};
pub use spec::{CreateRequest, RouterSpec};

/// Milliseconds since the Unix epoch. Wall-clock, so deadlines survive restarts.
pub type Millis = u64;

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
    /// Check the router's objects (e.g. the DestinationRule subsets) before any shift.
    Validate,
    ConfirmRollout,
    PreRollout,
    /// Blue/green: consecutive health checks of the new version.
    Preflight,
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
    pub busy: Vec<Busy>,
    pub next_op: u64,
    /// Last event sequence number written for this rollout.
    pub last_seq: u64,
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
    /// The earliest moment the machine wants a tick, if any.
    pub fn wake_at(&self) -> Option<Millis> {
        if self.is_terminal() {
            return None;
        }
        let analysis = match self.phase {
            Phase::Progressing | Phase::AwaitingApproval | Phase::Pending => self.next_analysis_at,
            _ => None,
        };
        let deadline = match self.phase {
            Phase::Progressing | Phase::Pending if self.flipped_at.is_none() => {
                Some(self.last_progress_at + self.policy.progress_deadline.as_millis() as u64)
            }
            _ => None,
        };
        let post_flip = match (self.phase, self.flipped_at) {
            (Phase::Progressing, Some(f)) => Some(f + self.post_flip_ms()),
            _ => None,
        };
        [analysis, deadline, self.gate_deadline, self.router_retry_at, post_flip].into_iter().flatten().min()
    }
    pub fn post_flip_ms(&self) -> u64 {
        self.policy.post_flip.map(|d| d.as_millis() as u64).unwrap_or(0)
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateView>,
    #[schema(value_type = String)]
    #[serde(with = "rfc3339")]
    pub created_at: Millis,
    #[schema(value_type = String)]
    #[serde(with = "rfc3339")]
    pub updated_at: Millis,
    pub created_by: String,
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

impl From<&Rollout> for RolloutView {
    fn from(r: &Rollout) -> Self {
        let gate = match (r.phase, r.paused_from) {
            (Phase::AwaitingApproval, _) | (Phase::Paused, Some(Phase::AwaitingApproval)) => {
                r.policy.gate_at(r.canary_weight).map(|g| GateView {
                    at: g.at,
                    deadline: r.gate_deadline.map(rfc3339::format).unwrap_or_default(),
                    approvers: g.approvers.clone(),
                })
            }
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
            gate,
            created_at: r.created_at,
            updated_at: r.updated_at,
            created_by: r.created_by.clone(),
        }
    }
}
