//! The mirror stage (policy `mirror`), before the first step: the router turns the mirror on (weights
//! untouched, users see only the stable version), the canary's own metrics are analysed every
//! interval for `duration`, and a breach rolls back before any user request reached the canary. Every
//! way out changes the weights (the first step, a promotion, or the rollback's 0 %), and a weight
//! change ends the mirror, so the mirror never outlives the stage.

use std::time::Duration;

use serde_json::json;

use super::router::{backoff, router_error_event};
use super::stages::{next_stage, stage_name};
use super::*;
use crate::rollout::ports::Verdict;

pub(super) fn schedule_mirror(r: &mut Rollout, now: Millis, out: &mut Output, due_and_idle: bool) {
    let Some(m) = r.policy.mirror.clone() else {
        r.stage = Stage::Ready;
        return schedule(r, now, out);
    };
    let Some(until) = r.mirror_until else {
        // Not on yet (or, after a restart, unknown): turning it on is idempotent.
        if due_and_idle && router_busy(r).is_none() && r.router_retry_at.is_none_or(|t| t <= now) {
            let op = next_op(r);
            r.busy.push(Busy::Mirror { op });
            out.effects.push(Effect::SetMirror { op, percent: m.percent });
        }
        return;
    };
    let started = until.saturating_sub(m.duration.as_millis() as u64);
    // The last window judged must reach the end of the stage.
    let passed = r.last_analysis.as_ref().is_some_and(|a| a.verdict == Verdict::Pass && a.at >= until);
    if now >= until && passed && due_and_idle {
        let msg = format!("mirroring passed: {} answered the shadow traffic within its SLOs", r.version);
        event(r, out, now, EventKind::Stage, CONTROLLER, msg, json!({ "stage": stage_name(Stage::Mirror) }));
        r.stage = next_stage(r, Stage::Mirror);
        r.next_analysis_at = Some(now);
        r.last_progress_at = now;
        return schedule(r, now, out);
    }
    if due_and_idle {
        let op = next_op(r);
        r.busy.push(Busy::Analysis { op });
        out.effects.push(Effect::Analyse { op });
    }
    let left = humantime::format_duration(Duration::from_secs(until.saturating_sub(now) / 1000));
    let last =
        r.last_analysis.as_ref().filter(|a| a.at >= started).map_or("none yet".to_string(), |a| a.summary.clone());
    r.message = format!(
        "mirroring {}% of requests to {} (users get {}), {} left; last analysis: {last}; {}/{} failed checks",
        m.percent, r.version, r.stable_version, left, r.failed_checks, r.policy.threshold
    );
}

pub(super) fn on_mirror(r: &mut Rollout, result: Result<(), RouterError>, now: Millis, out: &mut Output) {
    if r.phase != Phase::Pending || r.stage != Stage::Mirror {
        return; // rolled back, paused or promoted meanwhile: the next weight write ends the mirror
    }
    let Some(m) = r.policy.mirror.clone() else { return };
    match result {
        Ok(()) => {
            r.router_failures = 0;
            r.router_retry_at = None;
            r.mirror_until = Some(now + m.duration.as_millis() as u64);
            // The analysis windows (the sequential judge's "this step") start with the mirror.
            r.step_started_at = now;
            r.last_progress_at = now;
            r.next_analysis_at = Some(now + interval(r));
            let msg = format!(
                "mirroring {}% of requests to {} for {}; users get {}'s answers",
                m.percent,
                r.version,
                humantime::format_duration(m.duration),
                r.stable_version
            );
            event(r, out, now, EventKind::Mirror, CONTROLLER, msg, json!({ "percent": m.percent }));
        }
        Err(e) if e.is_permanent() => fail(r, now, out, format!("router {}: cannot mirror: {e}", r.router.kind())),
        Err(e) => {
            r.router_failures += 1;
            let n = r.router_failures;
            r.router_retry_at = Some(now + backoff(n));
            r.next_analysis_at = r.router_retry_at;
            r.message = format!("router error turning the mirror on (attempt {n}): {e}");
            router_error_event(r, out, now, n, json!({ "attempt": n, "error": e.to_string(), "mirror": m.percent }));
        }
    }
}
