//! The pre-traffic stages (router check, confirm-rollout and pre-rollout hooks, preflight) and the
//! confirm-promotion hooks before the last step.

use serde_json::json;

use super::*;
use crate::policy::Strategy;

pub(super) fn on_stage(r: &mut Rollout, op: u64, result: Result<(), StageFailure>, now: Millis, out: &mut Output) {
    if take_busy(r, |b| matches!(b, Busy::Step { op: o } if *o == op)).is_none() {
        return;
    }
    let retry = now + interval(r);
    // Confirm-promotion runs while Progressing (canary) or from Pending's Ready stage (blue/green's flip,
    // a single-step canary); the others before any traffic moves.
    if r.phase != Phase::Pending || r.stage == Stage::Ready {
        match result {
            Ok(()) => {
                event(
                    r,
                    out,
                    now,
                    EventKind::Hook,
                    CONTROLLER,
                    "confirm-promotion hooks passed".into(),
                    json!({ "kind": "confirmPromotion" }),
                );
                advance(r, now, out, CONTROLLER, true);
            }
            Err(f) => {
                r.message = format!("waiting for confirm-promotion: {}", f.message);
                r.next_analysis_at = Some(retry);
            }
        }
        return;
    }
    let stage = r.stage;
    match (stage, result) {
        (_, Ok(())) => {
            let label = stage_name(stage);
            event(r, out, now, EventKind::Stage, CONTROLLER, format!("{label} passed"), json!({ "stage": label }));
            r.stage = next_stage(r, stage);
            r.next_analysis_at = Some(now);
            r.last_progress_at = now;
        }
        (Stage::Validate, Err(f)) if f.permanent => fail(r, now, out, format!("router check failed: {}", f.message)),
        (Stage::ConfirmRollout, Err(f)) | (Stage::Validate, Err(f)) => {
            r.message = format!("waiting: {} — {}", stage_name(stage), f.message);
            r.next_analysis_at = Some(retry);
        }
        (Stage::Preflight, Err(f)) => {
            let msg = format!("preflight failed, {} never received traffic: {}", r.version, f.message);
            start_rollback(r, now, out, RollbackKind::Controller, CONTROLLER, msg);
        }
        (_, Err(f)) => {
            r.failed_checks += 1;
            let msg =
                format!("{} failed ({}/{}): {}", stage_name(stage), r.failed_checks, r.policy.threshold, f.message);
            event(
                r,
                out,
                now,
                EventKind::Hook,
                CONTROLLER,
                msg.clone(),
                json!({ "stage": stage_name(stage), "ok": false }),
            );
            if r.failed_checks >= r.policy.threshold {
                start_rollback(r, now, out, RollbackKind::Controller, CONTROLLER, msg);
            } else {
                r.message = msg;
                r.next_analysis_at = Some(retry);
            }
        }
    }
}

pub(super) fn next_stage(r: &Rollout, s: Stage) -> Stage {
    let hooks = &r.policy.webhooks;
    let order = [
        Stage::Deploy,
        Stage::Validate,
        Stage::ConfirmRollout,
        Stage::PreRollout,
        Stage::Preflight,
        Stage::Mirror,
        Stage::Ready,
    ];
    let pos = order.iter().position(|x| *x == s).unwrap_or(order.len() - 1);
    order[pos + 1..]
        .iter()
        .copied()
        .find(|st| match st {
            Stage::ConfirmRollout => !hooks.confirm_rollout.is_empty(),
            Stage::PreRollout => !hooks.pre_rollout.is_empty(),
            Stage::Preflight => r.policy.preflight.is_some() && r.policy.strategy == Strategy::BlueGreen,
            Stage::Mirror => r.policy.mirror.is_some() && r.policy.strategy == Strategy::Canary,
            _ => true,
        })
        .unwrap_or(Stage::Ready)
}

pub(super) fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Deploy => "deploy",
        Stage::Validate => "router check",
        Stage::ConfirmRollout => "confirm-rollout hooks",
        Stage::PreRollout => "pre-rollout hooks",
        Stage::Preflight => "preflight",
        Stage::Mirror => "mirroring",
        Stage::Ready => "start",
    }
}
