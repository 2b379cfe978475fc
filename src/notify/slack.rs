//! Slack messages (Block Kit, through an incoming webhook): what people in the channel see.
//!
//! One message per moment that matters: started, each step, awaiting approval (with Promote / Abort
//! buttons), rolled back (with the metric values that failed and their bounds), aborted, succeeded,
//! failed, and a warning while a rollback cannot reach the router. Analysis ticks and router
//! confirmations are left to the event log and the webhooks.
//!
//! The buttons' callbacks are handled by the API (`api::slack`).

use serde_json::{Value, json};

use crate::human::number as num;
use crate::policy::Strategy;
use crate::rollout::ports::MetricVerdict;
use crate::rollout::{Event, EventKind, Phase, Rollout};

/// `action_id` of the gate's buttons; their `value` is the rollout id.
pub const PROMOTE_ACTION: &str = "vane_promote";
pub const ABORT_ACTION: &str = "vane_abort";

/// Escape text for mrkdwn (Slack interprets `&`, `<`, `>`).
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn section(text: String) -> Value {
    json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } })
}

fn header(text: &str) -> Value {
    let t: String = text.chars().take(150).collect();
    json!({ "type": "header", "text": { "type": "plain_text", "text": t, "emoji": true } })
}

fn context(text: String) -> Value {
    json!({ "type": "context", "elements": [ { "type": "mrkdwn", "text": text } ] })
}

fn footer(r: &Rollout, e: &Event) -> Value {
    context(format!("`{}/{}` · rollout `{}` · {}", esc(&r.namespace), esc(&r.service), r.id, esc(&e.actor)))
}

fn msg(text: String, blocks: Vec<Value>) -> Value {
    json!({ "text": text, "blocks": blocks })
}

/// The Block Kit message for an event, or None for events Slack does not get. `history` is read only
/// for a finished rollback, to say why it happened.
pub fn message(r: &Rollout, e: &Event, history: impl FnOnce() -> Vec<Event>) -> Option<Value> {
    let svc = esc(&r.service);
    let ver = esc(&r.version);
    let stable = esc(&r.stable_version);
    let kind = e.event_kind()?;
    match kind {
        EventKind::Created => {
            let plan = match r.policy.strategy {
                Strategy::Canary => {
                    let s: Vec<String> = r.steps().iter().map(|w| format!("{w}%")).collect();
                    format!("canary {}", s.join(" → "))
                }
                Strategy::BlueGreen => "blue/green flip".to_string(),
            };
            let text = format!("Rollout started: {} {} → {}", r.service, r.stable_version, r.version);
            Some(msg(
                text,
                vec![
                    header(&format!("🚀 Rollout started: {} {}", r.service, r.version)),
                    json!({ "type": "section", "fields": [
                        { "type": "mrkdwn", "text": format!("*Service*\n`{}/{svc}`", esc(&r.namespace)) },
                        { "type": "mrkdwn", "text": format!("*Version*\n`{stable}` → `{ver}`") },
                        { "type": "mrkdwn", "text": format!("*Plan*\n{plan}") },
                        { "type": "mrkdwn", "text": format!("*Policy*\n{}", esc(&r.policy.name)) },
                    ] }),
                    footer(r, e),
                ],
            ))
        }
        EventKind::Step => {
            let w = e.canary_weight;
            let line = match (r.policy.strategy, e.phase) {
                (Strategy::BlueGreen, _) => format!("🔀 *{svc}*: flipping all traffic to `{ver}`"),
                (_, Phase::Promoting) => format!("⏩ *{svc}*: promoting — all traffic to `{ver}`"),
                _ => {
                    let n = r.steps().len();
                    let i = r.steps().iter().position(|s| *s == w).map_or(0, |i| i + 1);
                    format!("➡️ *{svc}* `{ver}`: step {i}/{n} — *{w}%* canary")
                }
            };
            Some(msg(format!("{}: {w}% canary", r.service), vec![section(line), footer(r, e)]))
        }
        EventKind::Gate => {
            let w = e.canary_weight;
            let gate = r.policy.gate_at(w);
            let timeout = gate.map(|g| humantime::format_duration(g.timeout).to_string()).unwrap_or_default();
            let mut text = format!("⏸️ *{svc}* `{ver}` is waiting for approval at *{w}%* canary.");
            if !timeout.is_empty() {
                text.push_str(&format!("\nPromote within {timeout}, or it rolls back to `{stable}`."));
            }
            let mut blocks = vec![section(text)];
            if let Some(g) = gate.filter(|g| !g.approvers.is_empty()) {
                let who: Vec<String> = g.approvers.iter().map(|u| format!("<@{}>", esc(u))).collect();
                blocks.push(context(format!("Approvers: {}", who.join(", "))));
            }
            blocks.push(json!({ "type": "actions", "block_id": "vane_gate", "elements": [
                { "type": "button", "action_id": PROMOTE_ACTION, "style": "primary", "value": r.id,
                  "text": { "type": "plain_text", "text": "Promote" } },
                { "type": "button", "action_id": ABORT_ACTION, "style": "danger", "value": r.id,
                  "text": { "type": "plain_text", "text": "Abort" },
                  "confirm": {
                      "title": { "type": "plain_text", "text": "Abort the rollout?" },
                      "text": { "type": "mrkdwn", "text": format!("All traffic goes back to `{stable}`.") },
                      "confirm": { "type": "plain_text", "text": "Abort" },
                      "deny": { "type": "plain_text", "text": "Cancel" },
                      "style": "danger" } },
            ] }));
            blocks.push(footer(r, e));
            Some(msg(format!("{} {} is waiting for approval at {w}%", r.service, r.version), blocks))
        }
        EventKind::RolledBack if e.phase == Phase::Aborted => {
            let why = history().into_iter().rev().find(|h| h.is(EventKind::Aborted));
            let line = why.map_or_else(|| esc(&e.message), |h| esc(&h.message));
            Some(msg(
                format!("{} {} aborted", r.service, r.version),
                vec![
                    header(&format!("🛑 Aborted: {} {}", r.service, r.version)),
                    section(format!("{line}\nAll traffic is back on `{stable}`.")),
                    footer(r, e),
                ],
            ))
        }
        EventKind::RolledBack => {
            let why = history().into_iter().rev().find(|h| h.is(EventKind::RollingBack));
            let reason = why.map_or_else(|| esc(&e.message), |h| esc(&h.message));
            let mut blocks = vec![
                header(&format!("↩️ Rolled back: {} {}", r.service, r.version)),
                section(format!("{reason}\nAll traffic is back on `{stable}`.")),
            ];
            let failed = failed_metrics(r);
            if !failed.is_empty() {
                blocks.push(section(format!("*Failed checks (last analysis)*\n{}", failed.join("\n"))));
            }
            blocks.push(footer(r, e));
            Some(msg(format!("{} {} rolled back: {}", r.service, r.version, e.message), blocks))
        }
        EventKind::Succeeded => Some(msg(
            format!("{} {} succeeded", r.service, r.version),
            vec![section(format!("✅ *{svc}* `{ver}` succeeded: all traffic on `{ver}`.")), footer(r, e)],
        )),
        EventKind::Failed => Some(msg(
            format!("{} {} failed: {}", r.service, r.version, e.message),
            vec![header(&format!("❌ Failed: {} {}", r.service, r.version)), section(esc(&e.message)), footer(r, e)],
        )),
        EventKind::RouterError if e.phase == Phase::RollingBack => Some(msg(
            format!("{}: rollback NOT complete", r.service),
            vec![section(format!("⚠️ *{svc}*: rollback is NOT complete — {}", esc(&e.message))), footer(r, e)],
        )),
        _ => None,
    }
}

/// `• name = value (min X, max Y)` for each metric that failed in the last analysis.
fn failed_metrics(r: &Rollout) -> Vec<String> {
    let Some(a) = &r.last_analysis else {
        return vec![];
    };
    a.metrics
        .iter()
        .filter(|m| m.result == MetricVerdict::Fail)
        .map(|m| {
            let value = m.value.map_or_else(|| "no value".to_string(), num);
            let bounds: Vec<String> = [("min", m.min), ("max", m.max)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k} {}", num(v))))
                .collect();
            let bounds = if bounds.is_empty() { String::new() } else { format!(" ({})", bounds.join(", ")) };
            format!("• `{}` = *{value}*{bounds}", esc(&m.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(esc("a<b>&c"), "a&lt;b&gt;&amp;c");
    }
}
