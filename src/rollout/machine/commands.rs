//! What people ask: promote (a step or straight to 100 %), approve one gate, pause, resume, abort.

use serde_json::json;

use super::*;
use crate::policy::Strategy;

pub(super) fn on_command(
    r: &mut Rollout,
    command: Command,
    actor: &str,
    now: Millis,
    out: &mut Output,
) -> Result<(), CommandError> {
    use Phase::*;
    let action = command.name();
    let deny = |hint: &'static str| Err(CommandError::NotAllowed { action, phase: r.phase, hint });
    let effective = r.effective_phase();
    match command {
        Command::ApproveGate { at } => {
            let waiting = effective == AwaitingApproval
                && r.canary_weight == at
                && !r.gates_passed.contains(&at)
                && r.policy.gate_at(at).is_some();
            if !waiting {
                return Err(CommandError::GateNotCurrent { at, phase: r.phase, weight: r.canary_weight });
            }
            return on_command(r, Command::Promote { full: false }, actor, now, out);
        }
        Command::Promote { full: true } => {
            if !matches!(r.phase, Pending | Progressing | Paused | AwaitingApproval) {
                return deny("");
            }
            if r.stage == Stage::Deploy && effective == Pending {
                return deny(" (the canary Deployment is not ready yet)");
            }
            event(
                r,
                out,
                now,
                EventKind::Promoted,
                actor,
                format!("promoted straight to 100% by {actor}"),
                json!({ "full": true }),
            );
            r.paused_from = None;
            r.gate_deadline = None;
            r.busy.retain(|b| is_router_op(b) || matches!(b, Busy::Workload { .. }));
            r.stage = Stage::Ready;
            r.step_index = r.steps().len() - 1;
            r.last_progress_at = now;
            r.next_analysis_at = None;
            super::workload::shift(r, now, out, actor, Promoting, 100);
        }
        Command::Promote { full: false } => {
            if r.phase == Pending || effective == Pending {
                return deny(" (it has not shifted traffic yet; use --full to skip the checks)");
            }
            if !matches!(effective, Progressing | AwaitingApproval) {
                return deny("");
            }
            if r.policy.strategy == Strategy::BlueGreen && r.flipped_at.is_some() {
                return on_command(r, Command::Promote { full: true }, actor, now, out);
            }
            let cur = r.canary_weight;
            let msg = if effective == AwaitingApproval {
                format!("gate at {cur}% approved by {actor}")
            } else {
                format!("promoted past {cur}% by {actor}")
            };
            event(r, out, now, EventKind::Promoted, actor, msg, json!({ "full": false, "at": cur }));
            r.phase = Progressing;
            r.paused_from = None;
            r.gate_deadline = None;
            if !r.gates_passed.contains(&cur) {
                r.gates_passed.push(cur);
            }
            r.busy.retain(|b| !matches!(b, Busy::Analysis { .. }));
            advance(r, now, out, actor, true);
        }
        Command::Pause => {
            if !matches!(r.phase, Pending | Progressing | AwaitingApproval) {
                return deny(if r.phase == Paused { " (already paused)" } else { "" });
            }
            r.paused_from = Some(r.phase);
            r.phase = Paused;
            r.busy.retain(|b| is_router_op(b) || matches!(b, Busy::Workload { .. }));
            super::workload::drop_shift(r);
            r.message = format!("paused by {actor} at {}% canary", r.canary_weight);
            let m = r.message.clone();
            event(r, out, now, EventKind::Paused, actor, m, serde_json::Value::Null);
        }
        Command::Resume => {
            if r.phase != Paused {
                return deny(" (it is not paused)");
            }
            r.phase = r.paused_from.take().unwrap_or(Progressing);
            r.last_progress_at = now;
            r.next_analysis_at = Some(if r.phase == Pending { now } else { now + interval(r) });
            r.message = progress_message(r, "resumed");
            event(r, out, now, EventKind::Resumed, actor, format!("resumed by {actor}"), serde_json::Value::Null);
        }
        Command::Abort { reason } => {
            if r.phase == RollingBack {
                return deny(" (already rolling back)");
            }
            if super::workload::finishing(r) {
                return deny(" (the new version is being promoted into the Deployment)");
            }
            let reason = reason.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "no reason given".into());
            let msg = format!("aborted by {actor}: {reason}");
            start_rollback(r, now, out, RollbackKind::Aborted, actor, msg);
        }
    }
    Ok(())
}
