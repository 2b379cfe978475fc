//! Workload releases (SPEC §4 "workload"): the canary Deployment made ready before each shift, the
//! stable Deployment promoted in place, the canary retired or scaled to 0 on the way out.
//!
//! The rollout's [`WorkloadRun`](crate::rollout::WorkloadRun) holds a short plan (`todo`, then
//! `then`); `schedule` reconciles its first state whenever no workload call is in flight, and each
//! answer either confirms it (next state), asks for a later look (pods starting) or fails it.

use serde_json::json;

use super::stages::{next_stage, stage_name};
use super::*;
use crate::rollout::ports::{RouteShape, WorkloadAction, WorkloadError, WorkloadStatus};
use crate::rollout::spec::CanaryScale;
use crate::rollout::workload::Then;

/// Reconcile the plan's first state if nothing is in flight and it is due.
pub(super) fn schedule_workload(r: &mut Rollout, now: Millis, out: &mut Output) {
    let Some(goal) = r.workload.as_ref().and_then(|w| w.goal()) else { return };
    if r.busy.iter().any(|b| matches!(b, Busy::Workload { .. })) {
        return;
    }
    if r.workload.as_ref().and_then(|w| w.check_at).is_some_and(|t| t > now) {
        return;
    }
    let op = next_op(r);
    r.busy.push(Busy::Workload { op, action: goal });
    if let (Some(w), WorkloadAction::Route { shape: RouteShape::Prepared }) = (r.workload.as_mut(), goal) {
        w.routed = true;
    }
    out.effects.push(Effect::Workload { op, action: goal });
}

/// Shift to `weight` once the canary is sized for it (workload releases), else at once.
pub(super) fn shift(r: &mut Rollout, now: Millis, out: &mut Output, actor: &str, phase: Phase, weight: u8) {
    if let Some(w) = r.workload.as_mut() {
        let ready = match w.spec.canary_scale {
            CanaryScale::Full => w.ready_for.is_some(),
            CanaryScale::Proportional => w.ready_for.is_some_and(|x| x >= weight),
        };
        if !ready {
            w.plan(vec![WorkloadAction::Canary { weight }], Then::Shift { phase, weight }, now);
            r.message = format!("scaling {} for {weight}% before shifting", w.spec.canary_name());
            return;
        }
    }
    set_phase_weight(r, now, out, actor, phase, weight);
}

/// The end of a workload release was decided: plan its workload steps first (promote and retire,
/// or restore routing and scale the canary to 0). Returns false when there is nothing (more) to do.
pub(super) fn plan_finish(
    r: &mut Rollout,
    phase: Phase,
    now: Millis,
    out: &mut Output,
    kind: EventKind,
    message: &str,
) -> bool {
    let Some(w) = r.workload.as_mut() else { return false };
    if w.finishing {
        return false;
    }
    w.finishing = true;
    let canary = w.spec.canary_name();
    let (todo, phase_now, msg) = if phase == Phase::Succeeded {
        let todo = vec![
            WorkloadAction::Stable,
            WorkloadAction::Route { shape: RouteShape::Final },
            WorkloadAction::Retire,
            WorkloadAction::Route { shape: RouteShape::Retired },
        ];
        let msg = format!("promoting: {} to {}; then only {} is routed", w.spec.deployment, w.spec.image, r.version);
        (todo, Phase::Promoting, msg)
    } else {
        let mut todo = vec![];
        if w.routed {
            todo.push(WorkloadAction::Route { shape: RouteShape::Restored });
        }
        todo.push(WorkloadAction::Zero);
        (todo, Phase::RollingBack, format!("{message}; scaling {canary} to 0"))
    };
    w.plan(todo, Then::Finish { phase, kind, message: message.to_string() }, now);
    r.phase = phase_now;
    r.paused_from = None;
    r.next_analysis_at = None;
    r.gate_deadline = None;
    r.busy.retain(|b| matches!(b, Busy::Router { .. } | Busy::Workload { .. }));
    r.message = msg.clone();
    event(r, out, now, EventKind::Workload, CONTROLLER, msg, json!({ "finishing": phase }));
    true
}

/// Drop a plan that only led to a shift (pause, rollback): nothing scales up any more.
pub(super) fn drop_shift(r: &mut Rollout) {
    if let Some(w) = r.workload.as_mut()
        && !w.finishing
        && !matches!(w.then, Some(Then::Deployed))
    {
        w.todo.clear();
        w.then = None;
    }
}

/// Whether the release is being finished (promotion, clean-up): no command may change course.
pub(super) fn finishing(r: &Rollout) -> bool {
    r.workload.as_ref().is_some_and(|w| w.finishing)
}

pub(super) fn on_workload(
    r: &mut Rollout,
    op: u64,
    result: Result<WorkloadStatus, WorkloadError>,
    now: Millis,
    out: &mut Output,
) {
    let Some(Busy::Workload { action, .. }) = take_busy(r, |b| matches!(b, Busy::Workload { op: o, .. } if *o == op))
    else {
        return;
    };
    let Some(w) = r.workload.as_mut() else { return };
    if w.goal() != Some(action) {
        // The plan changed while this call was in flight; `schedule` reconciles the new goal.
        return;
    }
    let what = describe(action, &w.spec.deployment);
    match result {
        Ok(WorkloadStatus::Ready(status)) => {
            w.todo.remove(0);
            w.failures = 0;
            w.since = now;
            w.check_at = None;
            if let WorkloadAction::Canary { weight } = action {
                w.ready_for = Some(weight);
            }
            if w.goal() == Some(WorkloadAction::Retire) {
                w.check_at = Some(now + w.spec.retire_after.as_millis() as u64);
            }
            let msg = format!("{what}: {status}");
            let done = w.todo.is_empty();
            let then = if done { w.then.take() } else { None };
            r.last_progress_at = now;
            event(r, out, now, EventKind::Workload, CONTROLLER, msg.clone(), json!({ "reached": action }));
            r.message = msg;
            match then {
                Some(Then::Deployed) => {
                    let label = stage_name(Stage::Deploy);
                    let m = format!("{label} passed");
                    event(r, out, now, EventKind::Stage, CONTROLLER, m, json!({ "stage": label }));
                    r.stage = next_stage(r, Stage::Deploy);
                    r.next_analysis_at = Some(now);
                }
                Some(Then::Shift { phase, weight }) => set_phase_weight(r, now, out, CONTROLLER, phase, weight),
                Some(Then::Finish { phase, kind, message }) => finish(r, phase, now, out, kind, message),
                None => {}
            }
        }
        Ok(WorkloadStatus::Waiting(status)) => {
            let timeout = w.spec.ready_timeout;
            let waits = matches!(action, WorkloadAction::Canary { .. } | WorkloadAction::Stable);
            if waits && !w.finishing && now >= w.since + timeout.as_millis() as u64 {
                let m = format!(
                    "{what}: not rolled out within readyTimeout {}: {status}",
                    humantime::format_duration(timeout)
                );
                return failed(r, now, out, m);
            }
            w.check_at = Some(now + w.poll_ms());
            r.message = format!("waiting for {what}: {status}");
        }
        Ok(WorkloadStatus::Failed(why)) => failed(r, now, out, format!("{what}: {why}")),
        Err(WorkloadError::Permanent(e)) => failed(r, now, out, format!("{what}: {e}")),
        Err(WorkloadError::Transient(e)) => retry(r, now, out, format!("{what}: {e}")),
    }
}

/// The goal cannot be reached: before traffic the rollout fails, with traffic it rolls back; while
/// finishing there is no other way out, so it keeps trying (and says so).
fn failed(r: &mut Rollout, now: Millis, out: &mut Output, message: String) {
    if finishing(r) {
        return retry(r, now, out, message);
    }
    if r.phase == Phase::Pending || r.effective_phase() == Phase::Pending {
        return fail(r, now, out, message);
    }
    drop_shift(r);
    start_rollback(r, now, out, RollbackKind::Controller, CONTROLLER, message);
}

fn retry(r: &mut Rollout, now: Millis, out: &mut Output, message: String) {
    let Some(w) = r.workload.as_mut() else { return };
    w.failures += 1;
    let n = w.failures;
    w.check_at = Some(now + super::router::backoff(n));
    r.message = format!("{message} (attempt {n}; retrying)");
    if n.is_power_of_two() {
        let m = r.message.clone();
        event(r, out, now, EventKind::Workload, CONTROLLER, m, json!({ "error": message, "attempt": n }));
    }
}

fn describe(action: WorkloadAction, deployment: &str) -> String {
    match action {
        WorkloadAction::Canary { weight } => format!("{deployment}-canary for {weight}%"),
        WorkloadAction::Route { shape: RouteShape::Prepared } => "routing prepared for the canary".into(),
        WorkloadAction::Route { shape: RouteShape::Restored } => "header routes restored to stable".into(),
        WorkloadAction::Route { shape: RouteShape::Final } => "routing: only the new version".into(),
        WorkloadAction::Route { shape: RouteShape::Retired } => "routing: the canary's own objects removed".into(),
        WorkloadAction::Stable => format!("{deployment} promoted"),
        WorkloadAction::Retire => format!("{deployment}-canary retired"),
        WorkloadAction::Zero => format!("{deployment}-canary scaled to 0"),
    }
}
