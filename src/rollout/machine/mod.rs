//! The rollout state machine: pure, like quinn-proto's connection state.
//!
//! `step(rollout, input, now)` mutates the rollout and returns the events to append and the effects to
//! execute. It reads no clock and does no I/O, so every rule below is testable in microseconds:
//!
//! - weights only take the policy's step values, 0 or 100;
//! - a terminal phase is never left;
//! - RolledBack / Aborted are only entered once the router confirmed 0 % canary, Succeeded at 100 %;
//! - a command not valid in the current phase is a typed error and changes nothing.
//!
//! Router calls are serialised: at most one is in flight, and a newer decision is applied after it
//! returns, so a slow "set 50 %" can never land after the "set 0 %" of an abort.
//!
//! One file per concern: [`router`] (the router's answers and read-backs), [`stages`] (the pre-traffic
//! stages), [`canary`] (analysis, steps and gates), [`blue_green`] (the flip and its post-flip window),
//! [`commands`] (promote / pause / resume / abort), [`timers`] (deadlines), [`rollback`] (the way out),
//! [`mirror`] (shadow traffic to the canary before the first step).

mod blue_green;
mod canary;
mod commands;
mod mirror;
mod rollback;
mod router;
mod stages;
mod timers;
mod workload;

use serde_json::json;

use super::ports::{AnalysisReport, RouterError, WorkloadAction, WorkloadError, WorkloadStatus};
use super::{Busy, Event, EventKind, Millis, Phase, RollbackKind, Rollout, Stage};
use crate::policy::{HookKind, Policy};
use canary::{advance, on_analysis, progress_message, set_phase_weight};
use commands::on_command;
use rollback::{fail, finish, start_rollback};
use router::{on_observed, on_router, on_weight_applied};
use stages::on_stage;
use timers::check_timers;
use workload::{on_workload, schedule_workload};

/// Someone asking the rollout to do something.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Promote {
        full: bool,
    },
    /// Approve the gate at `at` % — only while the rollout waits at exactly that gate. Unlike a plain
    /// `Promote`, a second delivery (a double click, a retried request, a replayed button of an older
    /// gate) is refused instead of passing whatever comes next, so a step is never left unanalysed.
    ApproveGate {
        at: u8,
    },
    Pause,
    Resume,
    Abort {
        reason: Option<String>,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Promote { full: true } => "promote --full",
            Command::Promote { full: false } => "promote",
            Command::ApproveGate { .. } => "approve the gate of",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort { .. } => "abort",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Time passed; deadlines and due work are checked.
    Tick,
    /// After a daemon restart: in-flight work was lost; `observed` is the router's live weight.
    Recover {
        observed: Option<u8>,
    },
    /// The router's live weight, read back during a tick (drift detection), or why it could not be read.
    Observed {
        weight: Result<Option<u8>, RouterError>,
    },
    RouterDone {
        op: u64,
        result: Result<(), RouterError>,
    },
    /// A pre-traffic stage (validate, confirm-rollout, pre-rollout, preflight, confirm-promotion) ended.
    StageDone {
        op: u64,
        result: Result<(), StageFailure>,
    },
    Analysis {
        op: u64,
        report: AnalysisReport,
    },
    /// A workload reconcile answered.
    WorkloadDone {
        op: u64,
        result: Result<WorkloadStatus, WorkloadError>,
    },
    Command {
        command: Command,
        actor: String,
    },
}

/// Why a stage did not pass.
#[derive(Debug, Clone, PartialEq)]
pub struct StageFailure {
    pub message: String,
    /// Retrying cannot help (e.g. a DestinationRule subset is missing).
    pub permanent: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    SetWeight {
        op: u64,
        canary: u8,
    },
    Validate {
        op: u64,
    },
    /// Call the policy's hooks of this kind. `op: None` = fire and forget (post-rollout).
    CallHooks {
        op: Option<u64>,
        kind: HookKind,
    },
    Preflight {
        op: u64,
    },
    Analyse {
        op: u64,
    },
    /// Read the live weight back (drift detection); answered with `Input::Observed`.
    Observe,
    /// Shadow `percent` % of the requests to the canary until the next weight change (which ends it);
    /// answered with `Input::RouterDone`.
    SetMirror {
        op: u64,
        percent: u8,
    },
    /// Drive the workload (or, for `Route`, the routing objects) to `action`; answered with
    /// `Input::WorkloadDone`.
    Workload {
        op: u64,
        action: WorkloadAction,
    },
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    /// Events to append, in order; `seq` is assigned by the store.
    pub events: Vec<Event>,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("cannot {action} a rollout that is {phase}{hint}", phase = phase.as_str())]
    NotAllowed { action: &'static str, phase: Phase, hint: &'static str },
    #[error("the gate at {at}% is not the current gate: the rollout is {phase} at {weight}% canary", phase = phase.as_str())]
    GateNotCurrent { at: u8, phase: Phase, weight: u8 },
}

pub const CONTROLLER: &str = "controller";

/// A new rollout in Pending; the first tick starts its pre-traffic stages.
pub fn create(
    id: String,
    req: &super::CreateRequest,
    policy: impl Into<std::sync::Arc<Policy>>,
    actor: &str,
    now: Millis,
) -> (Rollout, Output) {
    let mut r = Rollout {
        id,
        service: req.service.clone(),
        namespace: req.namespace.clone(),
        version: req.version.clone(),
        stable_version: req.stable_version.clone(),
        policy: policy.into(),
        router: req.router.clone(),
        created_by: actor.to_string(),
        created_at: now,
        updated_at: now,
        phase: Phase::Pending,
        paused_from: None,
        stage: if req.workload.is_some() { Stage::Deploy } else { Stage::Validate },
        step_index: 0,
        canary_weight: 0,
        applied_weight: None,
        failed_checks: 0,
        message: "pending: checking the router".into(),
        last_analysis: None,
        rollback_kind: None,
        rollback_reason: None,
        rollback_started_at: None,
        gates_passed: vec![],
        gate_deadline: None,
        step_started_at: now,
        last_progress_at: now,
        next_analysis_at: Some(now),
        flipped_at: None,
        router_failures: 0,
        observe_failures: 0,
        router_retry_at: None,
        mirror_until: None,
        busy: vec![],
        next_op: 1,
        last_seq: 0,
        workload: None,
    };
    let first = r.steps().first().copied().unwrap_or(100);
    r.workload = req.workload.clone().map(|w| super::WorkloadRun::new(w, first, now));
    let mut out = Output::default();
    let msg = format!(
        "{} {} → {} ({}, policy {}, router {})",
        r.service,
        r.stable_version,
        r.version,
        r.policy.strategy.as_str(),
        r.policy.name,
        r.router.kind()
    );
    let details = json!({ "policy": &*r.policy, "router": &r.router });
    event(&mut r, &mut out, now, EventKind::Created, actor, msg, details);
    (r, out)
}

/// Feed one input. On `Err` the rollout is unchanged.
pub fn step(r: &mut Rollout, input: Input, now: Millis) -> Result<Output, CommandError> {
    let mut out = Output::default();
    if r.is_terminal() {
        if let Input::Command { command, .. } = &input {
            return Err(CommandError::NotAllowed { action: command.name(), phase: r.phase, hint: " (finished)" });
        }
        return Ok(out);
    }
    match input {
        Input::Tick => {}
        Input::Recover { observed } => {
            let confirmed = r.applied_weight == Some(r.canary_weight);
            r.busy.clear();
            r.router_retry_at = None;
            // Reconcile the workload's current step at once (a retirement keeps its delay).
            if let Some(w) = r.workload.as_mut()
                && w.goal() != Some(WorkloadAction::Retire)
            {
                w.check_at = None;
            }
            r.applied_weight = observed;
            if r.phase == Phase::Pending {
                r.next_analysis_at = Some(now);
            }
            let live = observed.map_or("unknown".to_string(), |w| format!("{w}%"));
            let msg = format!("daemon restarted: resuming at {}% canary (live weight {live})", r.canary_weight);
            event(r, &mut out, now, EventKind::Recovered, CONTROLLER, msg, json!({ "observed": observed }));
            // The router applied the decided weight but the daemon died before recording it: the
            // read-back confirms it now. Without this nothing would re-apply it (it is live), so a
            // rollback or promotion would never finish and a step would never be analysed.
            if !confirmed && observed == Some(r.canary_weight) && r.phase != Phase::Pending {
                on_weight_applied(r, now, &mut out);
            }
        }
        Input::Observed { weight } => on_observed(r, weight, now, &mut out),
        Input::RouterDone { op, result } => on_router(r, op, result, now, &mut out),
        Input::StageDone { op, result } => on_stage(r, op, result, now, &mut out),
        Input::Analysis { op, report } => on_analysis(r, op, report, now, &mut out),
        Input::WorkloadDone { op, result } => on_workload(r, op, result, now, &mut out),
        Input::Command { command, actor } => on_command(r, command, &actor, now, &mut out)?,
    }
    check_timers(r, now, &mut out);
    schedule(r, now, &mut out);
    r.updated_at = now;
    Ok(out)
}

/// Emit the effects that are due: router reconciliation, pre-traffic stages, analysis.
fn schedule(r: &mut Rollout, now: Millis, out: &mut Output) {
    if r.is_terminal() {
        return;
    }
    // A workload release cleaning up after a way out had 0 % confirmed (or never moved traffic)
    // before it planned the clean-up: nothing to re-apply.
    let cleaning_up = workload::finishing(r) && r.canary_weight == 0;
    let started = r.effective_phase() != Phase::Pending && !cleaning_up;
    let due = r.next_analysis_at.is_some_and(|t| t <= now);
    if started
        && router_busy(r).is_none()
        && r.applied_weight != Some(r.canary_weight)
        && r.router_retry_at.is_none_or(|t| t <= now)
    {
        let op = next_op(r);
        let canary = r.canary_weight;
        r.busy.push(Busy::Router { op, weight: canary });
        out.effects.push(Effect::SetWeight { op, canary });
    }
    schedule_workload(r, now, out);
    let idle = !r.busy.iter().any(|b| matches!(b, Busy::Step { .. } | Busy::Analysis { .. }));
    if r.phase == Phase::Pending && r.stage == Stage::Mirror {
        return mirror::schedule_mirror(r, now, out, due && idle);
    }
    // The deploy stage is the workload's plan, reconciled above.
    if r.phase == Phase::Pending && due && idle && r.stage != Stage::Deploy {
        let op = next_op(r);
        r.busy.push(Busy::Step { op });
        out.effects.push(match r.stage {
            Stage::Validate => Effect::Validate { op },
            Stage::ConfirmRollout => Effect::CallHooks { op: Some(op), kind: HookKind::ConfirmRollout },
            Stage::PreRollout => Effect::CallHooks { op: Some(op), kind: HookKind::PreRollout },
            Stage::Preflight => Effect::Preflight { op },
            Stage::Deploy | Stage::Mirror | Stage::Ready => {
                r.busy.pop();
                advance(r, now, out, CONTROLLER, false);
                // Starting may have decided the first weight: reconcile now rather than next tick.
                return schedule(r, now, out);
            }
        });
        return;
    }
    let settled = r.applied_weight == Some(r.canary_weight);
    if matches!(r.phase, Phase::Progressing | Phase::AwaitingApproval) && settled && due && idle {
        let op = next_op(r);
        r.busy.push(Busy::Analysis { op });
        out.effects.push(Effect::Analyse { op });
        if router_busy(r).is_none() && r.router.supports_drift_check() {
            out.effects.push(Effect::Observe);
        }
    }
}

fn event(
    r: &mut Rollout,
    out: &mut Output,
    now: Millis,
    kind: EventKind,
    actor: &str,
    message: String,
    details: serde_json::Value,
) {
    out.events.push(Event {
        seq: 0,
        at: now,
        kind: kind.as_str().to_string(),
        actor: actor.to_string(),
        message,
        phase: r.phase,
        canary_weight: r.canary_weight,
        details,
    });
}

fn interval(r: &Rollout) -> u64 {
    r.policy.interval.as_millis() as u64
}

fn next_op(r: &mut Rollout) -> u64 {
    let op = r.next_op;
    r.next_op += 1;
    op
}

/// The router call in flight (a weight change or turning the mirror on): at most one at a time.
fn router_busy(r: &Rollout) -> Option<Busy> {
    r.busy.iter().copied().find(is_router_op)
}

fn is_router_op(b: &Busy) -> bool {
    matches!(b, Busy::Router { .. } | Busy::Mirror { .. })
}

fn take_busy(r: &mut Rollout, f: impl Fn(&Busy) -> bool) -> Option<Busy> {
    let i = r.busy.iter().position(f)?;
    Some(r.busy.remove(i))
}
