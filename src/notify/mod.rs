//! Outbound: lifecycle notifications (webhooks, Slack), the core's [`Notifier`] port.
//!
//! The driver hands every persisted event to a [`Notifier`] (fire and forget: delivery, retries and
//! the durable queue are the notifier's business).
//!
//! - [`outbox`]: the durable delivery queue (in the store), shared by [`webhook`] (SPEC §5 JSON,
//!   signed) and [`slack`] (Block Kit messages); the [`Notifier`] the daemon uses.
//! - [`wire`]: the daemon's notification adapters (and its hooks) from the configuration.
//!
//! The Slack buttons' endpoint is the API's (`api::slack`); the policy's hooks are [`crate::hooks`];
//! the HMAC signatures of both directions are [`crate::sign`] (also re-exported here).

pub mod outbox;
pub mod slack;
pub mod webhook;

use crate::config::WebhookConfig;
pub use crate::hooks::AlwaysOk;
pub use crate::rollout::ports::{HookOutcome, HookRunner, Notifier};
use crate::rollout::{Event, Rollout};
pub use crate::sign;
use outbox::Sink;

/// Does nothing: no webhooks or Slack configured.
pub struct Silent;

impl Notifier for Silent {
    fn notify(&self, _: &Rollout, _: &Event) {}
}

/// The daemon's notification adapters, built from its configuration.
pub struct Wiring {
    pub hooks: std::sync::Arc<dyn HookRunner>,
    /// The outbox over every configured sink (webhooks, Slack), or [`Silent`] when there is none.
    pub notifier: std::sync::Arc<dyn Notifier>,
    /// The Slack signing secret, when set: the API's interactions endpoint verifies requests with it.
    pub slack: Option<String>,
    /// Every configured secret, for the other adapters whose text may carry one (command output).
    pub redactor: std::sync::Arc<crate::redact::Redactor>,
}

/// Build hooks and outbox (started, with its catch-up done), and read the Slack signing secret. Call it inside the
/// tokio runtime and before rollouts resume, so events the last run committed but never queued go
/// out first. `env` reads environment variables (secrets and the Slack webhook URL).
pub fn wire(
    cfg: &crate::config::Config,
    store: &crate::rollout::ports::SharedStore,
    metrics: &std::sync::Arc<crate::telemetry::Metrics>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Wiring> {
    use std::sync::Arc;
    let var = |name: &str| Some(name).filter(|n| !n.is_empty()).and_then(&env).filter(|v| !v.trim().is_empty());
    let redactor = Arc::new(crate::redact::Redactor::from_config(cfg, &env));
    let hooks = Arc::new(
        crate::hooks::HttpHooks::new(var(&cfg.notifications.hook_secret_env), metrics.clone())?
            .with_redactor(redactor.clone()),
    );
    let mut sinks = sinks(&cfg.notifications.webhooks, &env)?;
    if let Some(url) = var(&cfg.slack.webhook_url_env) {
        sinks.push(outbox::Sink::slack(url.trim()));
    }
    let notifier: Arc<dyn Notifier> = if sinks.is_empty() {
        Arc::new(Silent)
    } else {
        let names: Vec<&str> = sinks.iter().map(|s| s.kind()).collect();
        tracing::info!(sinks = ?names, "notifications enabled");
        let o = outbox::Outbox::open(store, sinks, metrics.clone(), outbox::Delivery::default())?;
        o.start();
        Arc::new(o)
    };
    let slack = var(&cfg.slack.signing_secret_env);
    Ok(Wiring { hooks, notifier, slack, redactor })
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
