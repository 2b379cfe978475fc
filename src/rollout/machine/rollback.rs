//! The way out: roll back (controller or person), fail before any traffic moved, finish.

use serde_json::json;

use super::*;

pub(super) fn start_rollback(
    r: &mut Rollout,
    now: Millis,
    out: &mut Output,
    kind: RollbackKind,
    actor: &str,
    reason: String,
) {
    // Mirroring sent requests to the canary: the rollback's weight write (which ends the mirror) must
    // happen, though no user traffic moved.
    // (Also after the stage, e.g. waiting at a gate at 0 %, until a weight write removed it.)
    let mirrored = r.mirror_until.is_some() || (r.stage == Stage::Mirror && r.effective_phase() == Phase::Pending);
    r.rollback_kind = Some(kind);
    r.rollback_reason = Some(reason.clone());
    r.rollback_started_at = Some(now);
    r.paused_from = None;
    r.gate_deadline = None;
    r.next_analysis_at = None;
    r.busy.retain(|b| is_router_op(b) || matches!(b, Busy::Workload { .. }));
    super::workload::drop_shift(r);
    let label = if kind == RollbackKind::Aborted { EventKind::Aborted } else { EventKind::RollingBack };
    if mirrored {
        r.applied_weight = None;
    }
    let nothing_moved =
        !mirrored && r.applied_weight.unwrap_or(0) == 0 && r.canary_weight == 0 && router_busy(r).is_none();
    r.canary_weight = 0;
    r.message = reason.clone();
    if nothing_moved {
        // No traffic ever reached the new version: the rollback is already complete.
        r.phase = Phase::RollingBack;
        event(r, out, now, label, actor, reason, serde_json::Value::Null);
        let phase = if kind == RollbackKind::Aborted { Phase::Aborted } else { Phase::RolledBack };
        let m = format!("{} (no traffic had moved)", r.message);
        return finish(r, phase, now, out, EventKind::RolledBack, m);
    }
    r.phase = Phase::RollingBack;
    event(r, out, now, label, actor, reason, json!({ "from": r.applied_weight }));
}

pub(super) fn fail(r: &mut Rollout, now: Millis, out: &mut Output, message: String) {
    finish(
        r,
        Phase::Failed,
        now,
        out,
        EventKind::Failed,
        format!("{message} — no traffic was moved; fix it and start a new rollout"),
    );
}

pub(super) fn finish(r: &mut Rollout, phase: Phase, now: Millis, out: &mut Output, kind: EventKind, message: String) {
    // A workload release first promotes and retires, or scales the canary to 0; then it ends.
    if super::workload::plan_finish(r, phase, now, out, kind, &message) {
        return;
    }
    r.phase = phase;
    r.paused_from = None;
    r.busy.clear();
    r.next_analysis_at = None;
    r.gate_deadline = None;
    r.router_retry_at = None;
    r.message = message.clone();
    event(r, out, now, kind, CONTROLLER, message, serde_json::Value::Null);
    if !r.policy.webhooks.post_rollout.is_empty() {
        out.effects.push(Effect::CallHooks { op: None, kind: HookKind::PostRollout });
    }
}
