//! The router's answers: a weight applied or refused (with backoff), and read-backs (drift).

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::policy::{OnDrift, Strategy};

pub(super) fn on_observed(r: &mut Rollout, weight: Result<Option<u8>, RouterError>, now: Millis, out: &mut Output) {
    let weight = match weight {
        Ok(w) => {
            r.observe_failures = 0;
            w
        }
        Err(e) => {
            // Surface it now (e.g. the VirtualService was deleted while waiting at a gate) instead of
            // at the next weight change.
            r.observe_failures += 1;
            r.message = format!("cannot read the router back: {e}");
            let n = r.observe_failures;
            router_error_event(r, out, now, n, json!({ "error": e.to_string(), "attempt": n }));
            return;
        }
    };
    let Some(live) = weight else { return };
    let settled = r.applied_weight == Some(r.canary_weight) && router_busy(r).is_none();
    if !settled || live == r.canary_weight || r.phase == Phase::Pending {
        return;
    }
    r.applied_weight = Some(live);
    let msg = format!("drift: router shows {live}% canary, decided {}%; re-applying", r.canary_weight);
    event(r, out, now, EventKind::Drift, CONTROLLER, msg, json!({ "observed": live, "decided": r.canary_weight }));
    if r.policy.on_drift == OnDrift::Pause && matches!(r.phase, Phase::Progressing | Phase::AwaitingApproval) {
        r.paused_from = Some(r.phase);
        r.phase = Phase::Paused;
        r.message =
            format!("paused: the router was edited by hand ({live}% canary seen); re-applied {}%", r.canary_weight);
        let m = r.message.clone();
        event(r, out, now, EventKind::Paused, CONTROLLER, m, serde_json::Value::Null);
    }
}

pub(super) fn on_router(r: &mut Rollout, op: u64, result: Result<(), RouterError>, now: Millis, out: &mut Output) {
    if take_busy(r, |b| matches!(b, Busy::Mirror { op: o } if *o == op)).is_some() {
        return mirror::on_mirror(r, result, now, out);
    }
    let Some(Busy::Router { weight, .. }) = take_busy(r, |b| matches!(b, Busy::Router { op: o, .. } if *o == op))
    else {
        return;
    };
    match result {
        Ok(()) => {
            r.applied_weight = Some(weight);
            r.mirror_until = None; // a weight write removes vane's mirror
            let recovered = r.router_failures > 0;
            r.router_failures = 0;
            r.router_retry_at = None;
            let msg = format!(
                "traffic: {weight}% canary, {}% stable{}",
                100 - weight,
                if recovered { " (router recovered)" } else { "" }
            );
            event(
                r,
                out,
                now,
                EventKind::WeightSet,
                CONTROLLER,
                msg,
                json!({ "canary": weight, "stable": 100 - weight }),
            );
            if weight == r.canary_weight {
                on_weight_applied(r, now, out);
            }
        }
        Err(e) => {
            r.router_failures += 1;
            let n = r.router_failures;
            let backoff = backoff(n);
            r.router_retry_at = Some(now + backoff);
            let nothing_moved = r.applied_weight.unwrap_or(0) == 0 && r.phase != Phase::RollingBack;
            if e.is_permanent() && nothing_moved {
                let m = format!("router {}: {e}", r.router.kind());
                return fail(r, now, out, m);
            }
            r.message = format!(
                "router error (attempt {n}): {e}; retrying in {}{}",
                humantime::format_duration(Duration::from_millis(backoff)),
                if r.phase == Phase::RollingBack {
                    " — rollback NOT complete, traffic may still reach the canary"
                } else {
                    ""
                }
            );
            router_error_event(r, out, now, n, json!({ "attempt": n, "error": e.to_string(), "wanted": weight }));
        }
    }
}

/// A router error as an event, on the 1st, 2nd, 4th, 8th... consecutive failure: visible without
/// flooding the history of a rollback that retries for hours. The message always shows the latest.
pub(super) fn router_error_event(
    r: &mut Rollout,
    out: &mut Output,
    now: Millis,
    attempt: u32,
    details: serde_json::Value,
) {
    if attempt.is_power_of_two() {
        let m = r.message.clone();
        event(r, out, now, EventKind::RouterError, CONTROLLER, m, details);
    }
}

/// The router confirmed the decided weight: the phase may move on.
pub(super) fn on_weight_applied(r: &mut Rollout, now: Millis, out: &mut Output) {
    if super::workload::finishing(r) {
        // The end was decided already; the workload's plan finishes it.
        return;
    }
    let w = r.canary_weight;
    match r.phase {
        Phase::RollingBack if w == 0 => {
            let (phase, kind) = match r.rollback_kind {
                Some(RollbackKind::Aborted) => (Phase::Aborted, "aborted"),
                _ => (Phase::RolledBack, "rolled-back"),
            };
            let why = r.rollback_reason.clone().unwrap_or_default();
            let msg = format!("{kind}: all traffic back on {} — {why}", r.stable_version);
            finish(r, phase, now, out, EventKind::RolledBack, msg);
        }
        Phase::Promoting if w == 100 => {
            let msg = format!("succeeded: all traffic on {}", r.version);
            finish(r, Phase::Succeeded, now, out, EventKind::Succeeded, msg);
        }
        Phase::Progressing if r.policy.strategy == Strategy::BlueGreen && w == 100 && r.flipped_at.is_none() => {
            blue_green::flipped(r, now)
        }
        Phase::Progressing | Phase::AwaitingApproval => {
            r.next_analysis_at = Some(now + interval(r));
            let next = humantime::format_duration(r.policy.interval);
            r.message = format!(
                "{}% canary applied; next analysis in {next}; {}/{} failed checks",
                r.canary_weight, r.failed_checks, r.policy.threshold
            );
        }
        _ => {}
    }
}

/// Router retry backoff: 1 s doubling to 60 s.
pub(super) fn backoff(attempt: u32) -> u64 {
    1000u64.saturating_mul(1 << attempt.saturating_sub(1).min(6)).min(60_000)
}
