//! Generic outbound webhooks (SPEC §5): every lifecycle event as JSON, HMAC-signed, delivered at least
//! once through the [`Outbox`](super::outbox::Outbox).

use serde_json::json;

use super::outbox::{Sink, event_id};
use crate::config::WebhookConfig;
use crate::rollout::{Event, Rollout, rfc3339};

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

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WebhookConfigError {
    #[error("notifications.webhooks[{index}].url: {message}")]
    Url { index: usize, message: String },
    #[error("notifications.webhooks[{index}].secret_env: environment variable {var} is not set")]
    MissingSecret { index: usize, var: String },
}

/// Sinks for `[notifications] webhooks`. A named but unset secret variable is an error (a receiver
/// that verifies signatures would reject everything); no `secret_env` sends unsigned requests.
pub fn sinks(cfg: &[WebhookConfig], env: impl Fn(&str) -> Option<String>) -> Result<Vec<Sink>, WebhookConfigError> {
    let mut out = Vec::new();
    for (index, w) in cfg.iter().enumerate() {
        let url = w.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(WebhookConfigError::Url { index, message: format!("{url:?} is not an http(s) URL") });
        }
        let secret = match w.secret_env.trim() {
            "" => {
                tracing::warn!(url, "webhook without secret_env: deliveries are not signed");
                None
            }
            var => {
                let v = env(var).filter(|v| !v.is_empty());
                Some(v.ok_or_else(|| WebhookConfigError::MissingSecret { index, var: var.to_string() })?.into_bytes())
            }
        };
        out.push(Sink::webhook(url, secret));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_entry() {
        let cfg = vec![
            WebhookConfig { url: "https://a.example/h".into(), secret_env: "S".into() },
            WebhookConfig { url: "ftp://b".into(), secret_env: String::new() },
        ];
        let e = sinks(&cfg, |_| Some("k".into())).unwrap_err();
        assert_eq!(e, WebhookConfigError::Url { index: 1, message: "\"ftp://b\" is not an http(s) URL".into() });
        let e = sinks(&cfg[..1], |_| None).unwrap_err();
        assert_eq!(e, WebhookConfigError::MissingSecret { index: 0, var: "S".into() });
        let ok = sinks(&cfg[..1], |v| (v == "S").then(|| "k".into())).unwrap();
        assert_eq!(ok[0].secret.as_deref(), Some(&b"k"[..]));
        assert_eq!(ok[0].url, "https://a.example/h");
    }
}
