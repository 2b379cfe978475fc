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

use std::time::Duration;

use serde_json::json;

use super::{Busy, Event, Millis, Phase, RollbackKind, Rollout, RouterSpec, Stage};
use crate::analysis::{AnalysisReport, Verdict};
use crate::policy::{HookKind, OnDrift, OnNoData, Policy, Strategy};
use crate::traffic::RouterError;

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
pub fn create(id: String, req: &super::CreateRequest, policy: Policy, actor: &str, now: Millis) -> (Rollout, Output) {
    let mut r = Rollout {
        id,
        service: req.service.clone(),
        namespace: req.namespace.clone(),
        version: req.version.clone(),
        stable_version: req.stable_version.clone(),
        policy,
        router: req.router.clone(),
        created_by: actor.to_string(),
        created_at: now,
        updated_at: now,
        phase: Phase::Pending,
        paused_from: None,
        stage: Stage::Validate,
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
        busy: vec![],
        next_op: 1,
        last_seq: 0,
    };
    let mut out = Output::default();
    let msg = format!(
        "{} {} → {} ({}, policy {}, router {})",
        r.service,
        r.stable_version,
        r.version,
        strategy_name(r.policy.strategy),
        r.policy.name,
        r.router.kind()
    );
    let details = json!({ "policy": &r.policy, "router": &r.router });
    event(&mut r, &mut out, now, "created", actor, msg, details);
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
            r.applied_weight = observed;
            if r.phase == Phase::Pending {
                r.next_analysis_at = Some(now);
            }
            let live = observed.map_or("unknown".to_string(), |w| format!("{w}%"));
            let msg = format!("daemon restarted: resuming at {}% canary (live weight {live})", r.canary_weight);
            event(r, &mut out, now, "recovered", CONTROLLER, msg, json!({ "observed": observed }));
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
        Input::Command { command, actor } => on_command(r, command, &actor, now, &mut out)?,
    }
    check_timers(r, now, &mut out);
    schedule(r, now, &mut out);
    r.updated_at = now;
    Ok(out)
}

fn on_observed(r: &mut Rollout, weight: Result<Option<u8>, RouterError>, now: Millis, out: &mut Output) {
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
    event(r, out, now, "drift", CONTROLLER, msg, json!({ "observed": live, "decided": r.canary_weight }));
    if r.policy.on_drift == OnDrift::Pause && matches!(r.phase, Phase::Progressing | Phase::AwaitingApproval) {
        r.paused_from = Some(r.phase);
        r.phase = Phase::Paused;
        r.message =
            format!("paused: the router was edited by hand ({live}% canary seen); re-applied {}%", r.canary_weight);
        let m = r.message.clone();
        event(r, out, now, "paused", CONTROLLER, m, serde_json::Value::Null);
    }
}

fn on_router(r: &mut Rollout, op: u64, result: Result<(), RouterError>, now: Millis, out: &mut Output) {
    let Some(Busy::Router { weight, .. }) = take_busy(r, |b| matches!(b, Busy::Router { op: o, .. } if *o == op))
    else {
        return;
    };
    match result {
        Ok(()) => {
            r.applied_weight = Some(weight);
            let recovered = r.router_failures > 0;
            r.router_failures = 0;
            r.router_retry_at = None;
            let msg = format!(
                "traffic: {weight}% canary, {}% stable{}",
                100 - weight,
                if recovered { " (router recovered)" } else { "" }
            );
            event(r, out, now, "weight-set", CONTROLLER, msg, json!({ "canary": weight, "stable": 100 - weight }));
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
fn router_error_event(r: &mut Rollout, out: &mut Output, now: Millis, attempt: u32, details: serde_json::Value) {
    if attempt.is_power_of_two() {
        let m = r.message.clone();
        event(r, out, now, "router-error", CONTROLLER, m, details);
    }
}

/// The router confirmed the decided weight: the phase may move on.
fn on_weight_applied(r: &mut Rollout, now: Millis, out: &mut Output) {
    let w = r.canary_weight;
    match r.phase {
        Phase::RollingBack if w == 0 => {
            let (phase, kind) = match r.rollback_kind {
                Some(RollbackKind::Aborted) => (Phase::Aborted, "aborted"),
                _ => (Phase::RolledBack, "rolled-back"),
            };
            let why = r.rollback_reason.clone().unwrap_or_default();
            let msg = format!("{kind}: all traffic back on {} — {why}", r.stable_version);
            finish(r, phase, now, out, "rolled-back", msg);
        }
        Phase::Promoting if w == 100 => {
            let msg = format!("succeeded: all traffic on {}", r.version);
            finish(r, Phase::Succeeded, now, out, "succeeded", msg);
        }
        Phase::Progressing if r.policy.strategy == Strategy::BlueGreen && w == 100 && r.flipped_at.is_none() => {
            r.flipped_at = Some(now);
            r.last_progress_at = now;
            r.next_analysis_at = Some(now + interval(r));
            r.message = format!(
                "flipped to {}; watching for {}",
                r.version,
                humantime::format_duration(Duration::from_millis(r.post_flip_ms()))
            );
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

fn on_stage(r: &mut Rollout, op: u64, result: Result<(), StageFailure>, now: Millis, out: &mut Output) {
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
                    "hook",
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
            event(r, out, now, "stage", CONTROLLER, format!("{label} passed"), json!({ "stage": label }));
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
            event(r, out, now, "hook", CONTROLLER, msg.clone(), json!({ "stage": stage_name(stage), "ok": false }));
            if r.failed_checks >= r.policy.threshold {
                start_rollback(r, now, out, RollbackKind::Controller, CONTROLLER, msg);
            } else {
                r.message = msg;
                r.next_analysis_at = Some(retry);
            }
        }
    }
}

fn on_analysis(r: &mut Rollout, op: u64, report: AnalysisReport, now: Millis, out: &mut Output) {
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
    };
    if verdict == Verdict::Fail {
        r.failed_checks += 1;
    }
    let msg = format!("analysis: {name}{}{}", if summary.is_empty() { "" } else { " — " }, summary);
    event(r, out, now, "analysis", CONTROLLER, msg.clone(), details);
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
        // The summary says why (no data, an ambiguous query, an open sequential test).
        _ => {
            r.message = progress_message(r, &format!("{name}{}{summary}", if summary.is_empty() { "" } else { " — " }))
        }
    }
}

fn on_command(
    r: &mut Rollout,
    command: Command,
    actor: &str,
    now: Millis,
    out: &mut Output,
) -> Result<(), CommandError> {
    use Phase::*;
    let action = command.name();
    let deny = |hint: &'static str| Err(CommandError::NotAllowed { action, phase: r.phase, hint });
    let effective = if r.phase == Paused { r.paused_from.unwrap_or(Progressing) } else { r.phase };
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
            event(
                r,
                out,
                now,
                "promoted",
                actor,
                format!("promoted straight to 100% by {actor}"),
                json!({ "full": true }),
            );
            r.paused_from = None;
            r.gate_deadline = None;
            r.busy.retain(|b| matches!(b, Busy::Router { .. }));
            r.stage = Stage::Ready;
            r.step_index = r.steps().len() - 1;
            r.last_progress_at = now;
            set_phase_weight(r, now, out, actor, Promoting, 100);
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
            event(r, out, now, "promoted", actor, msg, json!({ "full": false, "at": cur }));
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
            r.busy.retain(|b| matches!(b, Busy::Router { .. }));
            r.message = format!("paused by {actor} at {}% canary", r.canary_weight);
            let m = r.message.clone();
            event(r, out, now, "paused", actor, m, serde_json::Value::Null);
        }
        Command::Resume => {
            if r.phase != Paused {
                return deny(" (it is not paused)");
            }
            r.phase = r.paused_from.take().unwrap_or(Progressing);
            r.last_progress_at = now;
            r.next_analysis_at = Some(if r.phase == Pending { now } else { now + interval(r) });
            r.message = progress_message(r, "resumed");
            event(r, out, now, "resumed", actor, format!("resumed by {actor}"), serde_json::Value::Null);
        }
        Command::Abort { reason } => {
            if r.phase == RollingBack {
                return deny(" (already rolling back)");
            }
            let reason = reason.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "no reason given".into());
            let msg = format!("aborted by {actor}: {reason}");
            start_rollback(r, now, out, RollbackKind::Aborted, actor, msg);
        }
    }
    Ok(())
}

/// Deadlines: progress deadline, gate timeout, blue/green post-flip window.
fn check_timers(r: &mut Rollout, now: Millis, out: &mut Output) {
    let deadline = r.policy.progress_deadline;
    let in_window = r.flipped_at.is_some();
    if matches!(r.phase, Phase::Progressing | Phase::Pending)
        && !in_window
        && now >= r.last_progress_at + deadline.as_millis() as u64
    {
        let msg = format!("no progress for {} (progressDeadline): {}", humantime::format_duration(deadline), r.message);
        return start_rollback(r, now, out, RollbackKind::Controller, CONTROLLER, msg);
    }
    if r.phase == Phase::AwaitingApproval && r.gate_deadline.is_some_and(|d| now >= d) {
        let msg = format!("approval gate at {}% timed out", r.canary_weight);
        return start_rollback(r, now, out, RollbackKind::Controller, CONTROLLER, msg);
    }
    if r.phase == Phase::Progressing
        && let Some(f) = r.flipped_at
        && now >= f + r.post_flip_ms()
        && r.applied_weight == Some(100)
    {
        let msg = format!("succeeded: {} healthy through the post-flip window", r.version);
        finish(r, Phase::Succeeded, now, out, "succeeded", msg);
    }
}

/// Emit the effects that are due: router reconciliation, pre-traffic stages, analysis.
fn schedule(r: &mut Rollout, now: Millis, out: &mut Output) {
    if r.is_terminal() {
        return;
    }
    let started = r.phase != Phase::Pending && !(r.phase == Phase::Paused && r.paused_from == Some(Phase::Pending));
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
    let idle = !r.busy.iter().any(|b| matches!(b, Busy::Step { .. } | Busy::Analysis { .. }));
    if r.phase == Phase::Pending && due && idle {
        let op = next_op(r);
        r.busy.push(Busy::Step { op });
        out.effects.push(match r.stage {
            Stage::Validate => Effect::Validate { op },
            Stage::ConfirmRollout => Effect::CallHooks { op: Some(op), kind: HookKind::ConfirmRollout },
            Stage::PreRollout => Effect::CallHooks { op: Some(op), kind: HookKind::PreRollout },
            Stage::Preflight => Effect::Preflight { op },
            Stage::Ready => {
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
        if router_busy(r).is_none() && !matches!(r.router, RouterSpec::Exec { .. } | RouterSpec::Nginx { .. }) {
            out.effects.push(Effect::Observe);
        }
    }
}

/// Move past the current weight: a gate, confirm-promotion hooks, or the next step.
fn advance(r: &mut Rollout, now: Millis, out: &mut Output, actor: &str, confirmed: bool) {
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
        return event(r, out, now, "gate", CONTROLLER, m, details);
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
    set_phase_weight(r, now, out, actor, phase, w);
}

fn set_phase_weight(r: &mut Rollout, now: Millis, out: &mut Output, actor: &str, phase: Phase, w: u8) {
    r.phase = phase;
    r.canary_weight = w;
    let n = r.steps().len();
    r.message = match (r.policy.strategy, phase) {
        (Strategy::BlueGreen, _) => format!("flipping traffic to {}", r.version),
        (_, Phase::Promoting) => format!("promoting: moving all traffic to {}", r.version),
        _ => format!("step {}/{n}: shifting to {w}% canary", r.step_index + 1),
    };
    let m = r.message.clone();
    event(r, out, now, "step", actor, m, json!({ "stepIndex": r.step_index, "canary": w }));
}

fn start_rollback(r: &mut Rollout, now: Millis, out: &mut Output, kind: RollbackKind, actor: &str, reason: String) {
    r.rollback_kind = Some(kind);
    r.rollback_reason = Some(reason.clone());
    r.rollback_started_at = Some(now);
    r.paused_from = None;
    r.gate_deadline = None;
    r.next_analysis_at = None;
    r.busy.retain(|b| matches!(b, Busy::Router { .. }));
    let label = if kind == RollbackKind::Aborted { "aborted" } else { "rolling-back" };
    let nothing_moved = r.applied_weight.unwrap_or(0) == 0 && r.canary_weight == 0 && router_busy(r).is_none();
    r.canary_weight = 0;
    r.message = reason.clone();
    if nothing_moved {
        // No traffic ever reached the new version: the rollback is already complete.
        r.phase = Phase::RollingBack;
        event(r, out, now, label, actor, reason, serde_json::Value::Null);
        let phase = if kind == RollbackKind::Aborted { Phase::Aborted } else { Phase::RolledBack };
        let m = format!("{} (no traffic had moved)", r.message);
        return finish(r, phase, now, out, "rolled-back", m);
    }
    r.phase = Phase::RollingBack;
    event(r, out, now, label, actor, reason, json!({ "from": r.applied_weight }));
}

fn fail(r: &mut Rollout, now: Millis, out: &mut Output, message: String) {
    finish(
        r,
        Phase::Failed,
        now,
        out,
        "failed",
        format!("{message} — no traffic was moved; fix it and start a new rollout"),
    );
}

fn finish(r: &mut Rollout, phase: Phase, now: Millis, out: &mut Output, kind: &str, message: String) {
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

fn next_stage(r: &Rollout, s: Stage) -> Stage {
    let hooks = &r.policy.webhooks;
    let order = [Stage::Validate, Stage::ConfirmRollout, Stage::PreRollout, Stage::Preflight, Stage::Ready];
    let pos = order.iter().position(|x| *x == s).unwrap_or(order.len() - 1);
    order[pos + 1..]
        .iter()
        .copied()
        .find(|st| match st {
            Stage::ConfirmRollout => !hooks.confirm_rollout.is_empty(),
            Stage::PreRollout => !hooks.pre_rollout.is_empty(),
            Stage::Preflight => r.policy.preflight.is_some() && r.policy.strategy == Strategy::BlueGreen,
            _ => true,
        })
        .unwrap_or(Stage::Ready)
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Validate => "router check",
        Stage::ConfirmRollout => "confirm-rollout hooks",
        Stage::PreRollout => "pre-rollout hooks",
        Stage::Preflight => "preflight",
        Stage::Ready => "start",
    }
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Canary => "canary",
        Strategy::BlueGreen => "blue-green",
    }
}

fn progress_message(r: &Rollout, last: &str) -> String {
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

fn event(
    r: &mut Rollout,
    out: &mut Output,
    now: Millis,
    kind: &str,
    actor: &str,
    message: String,
    details: serde_json::Value,
) {
    out.events.push(Event {
        seq: 0,
        at: now,
        kind: kind.to_string(),
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

/// Router retry backoff: 1 s doubling to 60 s.
fn backoff(attempt: u32) -> u64 {
    1000u64.saturating_mul(1 << attempt.saturating_sub(1).min(6)).min(60_000)
}

fn next_op(r: &mut Rollout) -> u64 {
    let op = r.next_op;
    r.next_op += 1;
    op
}

fn router_busy(r: &Rollout) -> Option<Busy> {
    r.busy.iter().copied().find(|b| matches!(b, Busy::Router { .. }))
}

fn take_busy(r: &mut Rollout, f: impl Fn(&Busy) -> bool) -> Option<Busy> {
    let i = r.busy.iter().position(f)?;
    Some(r.busy.remove(i))
}
