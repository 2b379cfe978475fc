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

pub use crate::hooks::AlwaysOk;
pub use crate::rollout::ports::{HookOutcome, HookRunner, Notifier};
use crate::rollout::{Event, Rollout};
pub use crate::sign;

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
    let hooks = Arc::new(crate::hooks::HttpHooks::new(var(&cfg.notifications.hook_secret_env), metrics.clone())?);
    let mut sinks = webhook::sinks(&cfg.notifications.webhooks, &env)?;
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
    Ok(Wiring { hooks, notifier, slack })
}
