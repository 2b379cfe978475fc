//! Progression: analysis results, the next step, approval gates.

use serde_json::json;

use super::*;
use crate::policy::{OnNoData, Strategy};
use crate::rollout::ports::Verdict;

pub(super) fn on_analysis(r: &mut Rollout, op: u64, report: AnalysisReport, now: Millis, out: &mut Output) {
    if take_busy(r, |b| matches!(b, Busy::Analysis { op: o } if *o == op)).is_none() {
        return;
    }
    r.next_analysis_at = Some(now + interval(r));
    let verdict = report.verdict;
    let summary = report.summary.clone();
    let details = serde_json::to_value(&report).unwrap_or_default();
    r.last_analysis = Some(report);
    let verdict = match (verdict, r.policy.on_no_data) {
        (Verdict::NoData, OnNoData::Fail) => Verdict::Fail,
        (v, _) => v,
    };
    let name = match verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::NoData => "no data",
        Verdict::Inconclusive => "inconclusive",
        Verdict::Rollback => "rollback requested",
        Verdict::Collecting => "collecting",
        Verdict::Error => "error",
    };
    if verdict == Verdict::Fail {
        r.failed_checks += 1;
    }
    let msg = format!("analysis: {name}{}{}", if summary.is_empty() { "" } else { " — " }, summary);
    event(r, out, now, EventKind::Analysis, CONTROLLER, msg.clone(), details);
    match verdict {
        Verdict::Rollback => start_rollback(r, now, out, RollbackKind::Controller, CONTROLLER, msg),
        Verdict::Fail if r.failed_checks >= r.policy.threshold => {
            let m = format!("{} failed checks (threshold {}): {summary}", r.failed_checks, r.policy.threshold);
            start_rollback(r, now, out, RollbackKind::Controller, CONTROLLER, m);
        }
        Verdict::Pass
            if r.phase == Phase::Progressing
                && r.policy.strategy == Strategy::Canary
                && r.applied_weight == Some(r.canary_weight) =>
        {
            advance(r, now, out, CONTROLLER, false)
        }
        // A step still collecting its minRequests extends: that is progress, not a stall.
        Verdict::Collecting => {
            r.last_progress_at = now;
            r.message = progress_message(r, &format!("{name}{}{summary}", if summary.is_empty() { "" } else { " — " }));
        }
        // The summary says why (no data, an ambiguous query, an open sequential test).
        _ => {
            r.message = progress_message(r, &format!("{name}{}{summary}", if summary.is_empty() { "" } else { " — " }))
        }
    }
}

/// Move past the current weight: a gate, confirm-promotion hooks, or the next step.
pub(super) fn advance(r: &mut Rollout, now: Millis, out: &mut Output, actor: &str, confirmed: bool) {
    let cur = r.canary_weight;
    if let Some(g) = r.policy.gate_at(cur)
        && !r.gates_passed.contains(&cur)
    {
        r.phase = Phase::AwaitingApproval;
        r.stage = Stage::Ready;
        r.gate_deadline = Some(now + g.timeout.as_millis() as u64);
        if r.next_analysis_at.is_none() {
            r.next_analysis_at = Some(now + interval(r));
        }
        r.message = format!(
            "awaiting approval at {cur}% canary (promote within {}, or it rolls back)",
            humantime::format_duration(g.timeout)
        );
        let m = r.message.clone();
        let details = json!({ "at": cur, "timeout": humantime::format_duration(g.timeout).to_string(), "approvers": g.approvers });
        return event(r, out, now, EventKind::Gate, CONTROLLER, m, details);
    }
    let weights = r.steps();
    let next = if cur == 0 { 0 } else { r.step_index + 1 };
    let Some(&w) = weights.get(next) else { return };
    let final_step = w == 100;
    let hooks = !r.policy.webhooks.confirm_promotion.is_empty();
    if final_step && hooks && !confirmed {
        let op = next_op(r);
        r.busy.push(Busy::Step { op });
        r.message = format!("checking confirm-promotion hooks before {w}%");
        out.effects.push(Effect::CallHooks { op: Some(op), kind: HookKind::ConfirmPromotion });
        return;
    }
    r.step_index = next;
    r.stage = Stage::Ready;
    r.step_started_at = now;
    r.last_progress_at = now;
    r.next_analysis_at = None;
    let phase = if final_step && r.policy.strategy == Strategy::Canary { Phase::Promoting } else { Phase::Progressing };
    super::workload::shift(r, now, out, actor, phase, w);
}

pub(super) fn set_phase_weight(r: &mut Rollout, now: Millis, out: &mut Output, actor: &str, phase: Phase, w: u8) {
    r.phase = phase;
    r.canary_weight = w;
    let n = r.steps().len();
    r.message = match (r.policy.strategy, phase) {
        (Strategy::BlueGreen, _) => format!("flipping traffic to {}", r.version),
        (_, Phase::Promoting) => format!("promoting: moving all traffic to {}", r.version),
        _ => format!("step {}/{n}: shifting to {w}% canary", r.step_index + 1),
    };
    let m = r.message.clone();
    event(r, out, now, EventKind::Step, actor, m, json!({ "stepIndex": r.step_index, "canary": w }));
}

pub(super) fn progress_message(r: &Rollout, last: &str) -> String {
    let n = r.steps().len();
    let checks = format!("{}/{} failed checks", r.failed_checks, r.policy.threshold);
    match (r.policy.strategy, r.phase) {
        (_, Phase::AwaitingApproval) => {
            format!("awaiting approval at {}% canary; last analysis {last}; {checks}", r.canary_weight)
        }
        (Strategy::BlueGreen, _) if r.flipped_at.is_some() => {
            format!("post-flip window: last analysis {last}; {checks}")
        }
        _ => format!("step {}/{n}: {}% canary; last analysis {last}; {checks}", r.step_index + 1, r.canary_weight),
    }
}
