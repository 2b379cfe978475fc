//! Generic outbound webhooks (SPEC §5): every lifecycle event as JSON, HMAC-signed, delivered at least
//! once through the [`Outbox`](super::outbox::Outbox). Their configuration is read by [`super::sinks`].

use serde_json::json;

use crate::rollout::{Event, Rollout, rfc3339};

/// The `X-Vane-Event-Id` of an event: stable across retries and restarts, receivers dedupe on it.
pub fn event_id(r: &Rollout, e: &Event) -> String {
    format!("{}-{}", r.id, e.seq)
}

/// The body POSTed for one event: SPEC §5's fields, plus `seq`, `actor`, `eventId` and `stableVersion`.
/// Phase and weight are the event's (as of that moment), not the rollout's latest.
pub fn body(r: &Rollout, e: &Event) -> serde_json::Value {
    json!({
        "id": r.id,
        "service": r.service,
        "namespace": r.namespace,
        "version": r.version,
        "stableVersion": r.stable_version,
        "phase": e.phase.as_str(),
        "canaryWeight": e.canary_weight,
        "event": e.kind,
        "message": e.message,
        "at": rfc3339::format(e.at),
        "seq": e.seq,
        "actor": e.actor,
        "eventId": event_id(r, e),
    })
}
