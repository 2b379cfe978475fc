//! Outbound: lifecycle notifications (webhooks, Slack) and the policy's HTTP hooks.
//!
//! The driver hands every persisted event to a [`Notifier`] (fire and forget: delivery, retries and
//! the durable queue are the notifier's business) and asks a [`HookRunner`] for hook outcomes.
//!
//! - [`outbox`]: the durable delivery queue in sled, shared by [`webhook`] (SPEC §5 JSON, signed) and
//!   [`slack`] (Block Kit messages); the [`Notifier`] the daemon uses.
//! - [`interactions`]: the Slack buttons' endpoint (signature, approvers, commands).
//! - [`hooks`]: the policy's lifecycle hooks over HTTP, the daemon's [`HookRunner`].
//! - [`sign`]: the HMAC signatures of both directions.

pub mod hooks;
pub mod interactions;
pub mod outbox;
pub mod sign;
pub mod slack;
pub mod webhook;

use crate::BoxFut;
use crate::policy::{HookKind, HookSpec, Preflight};
use crate::rollout::{Event, Rollout};

/// Receives every event after it is durably stored.
pub trait Notifier: Send + Sync + 'static {
    fn notify(&self, rollout: &Rollout, event: &Event);
}

/// Does nothing: no webhooks or Slack configured.
pub struct Silent;

impl Notifier for Silent {
    fn notify(&self, _: &Rollout, _: &Event) {}
}

/// Result of calling every hook of one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct HookOutcome {
    /// All hooks answered 2xx in time.
    pub ok: bool,
    /// One line for the rollout's message and event (which hook failed and how).
    pub message: String,
}

pub trait HookRunner: Send + Sync + 'static {
    /// Call every hook of `kind` (in order) for this rollout. `ok` is "every hook answered 2xx in
    /// time" — except for [`HookKind::Rollback`], where `ok` means "roll back now": at least one hook
    /// answered 2xx (Flagger's semantics; no hooks → false).
    fn call(&self, kind: HookKind, hooks: Vec<HookSpec>, rollout: &Rollout) -> BoxFut<'_, HookOutcome>;
    /// Blue/green preflight: `checks` consecutive 2xx from the new version, `every` apart.
    fn preflight(&self, spec: Preflight, rollout: &Rollout) -> BoxFut<'_, HookOutcome>;
}

/// For tests and for policies without hooks: every hook answers 2xx.
pub struct AlwaysOk;

impl HookRunner for AlwaysOk {
    fn call(&self, kind: HookKind, hooks: Vec<HookSpec>, _: &Rollout) -> BoxFut<'_, HookOutcome> {
        // A rollback hook answering 2xx asks for a rollback; without hooks nobody asks.
        let ok = kind != HookKind::Rollback || !hooks.is_empty();
        Box::pin(async move { HookOutcome { ok, message: format!("{kind:?} hooks passed") } })
    }
    fn preflight(&self, _: Preflight, _: &Rollout) -> BoxFut<'_, HookOutcome> {
        Box::pin(async { HookOutcome { ok: true, message: "preflight passed".into() } })
    }
}

/// reqwest's top-level error says "error sending request"; the innermost cause says why.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The daemon's notification adapters, built from its configuration.
pub struct Wiring {
    pub hooks: std::sync::Arc<dyn HookRunner>,
    /// The outbox over every configured sink (webhooks, Slack), or [`Silent`] when there is none.
    pub notifier: std::sync::Arc<dyn Notifier>,
    /// Set when the Slack signing secret is.
    pub slack: Option<std::sync::Arc<dyn crate::api::SlackHandler>>,
    /// Every configured secret, for the other adapters whose text may carry one (command output).
    pub redactor: std::sync::Arc<crate::redact::Redactor>,
}

/// Build hooks, outbox (started, with its catch-up done) and the Slack handler. Call it inside the
/// tokio runtime and before rollouts resume, so events the last run committed but never queued go
/// out first. `env` reads environment variables (secrets and the Slack webhook URL).
pub fn wire(
    cfg: &crate::config::Config,
    store: &crate::store::Store,
    metrics: &std::sync::Arc<crate::telemetry::Metrics>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Wiring> {
    use std::sync::Arc;
    let var = |name: &str| Some(name).filter(|n| !n.is_empty()).and_then(&env).filter(|v| !v.trim().is_empty());
    let redactor = Arc::new(crate::redact::Redactor::from_config(cfg, &env));
    let hooks = Arc::new(
        hooks::HttpHooks::new(var(&cfg.notifications.hook_secret_env), metrics.clone())?
            .with_redactor(redactor.clone()),
    );
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
    let slack = match var(&cfg.slack.signing_secret_env) {
        Some(secret) => {
            Some(Arc::new(interactions::SlackInteractions::new(secret)?) as Arc<dyn crate::api::SlackHandler>)
        }
        None => None,
    };
    Ok(Wiring { hooks, notifier, slack, redactor })
}
