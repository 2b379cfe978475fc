//! Outbound: lifecycle notifications (webhooks, Slack) and the policy's HTTP hooks.
//!
//! The driver hands every persisted event to a [`Notifier`] (fire and forget: delivery, retries and
//! the durable queue are the notifier's business) and asks a [`HookRunner`] for hook outcomes.

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
    /// Call every hook of `kind` (in order) for this rollout.
    fn call(&self, kind: HookKind, hooks: Vec<HookSpec>, rollout: &Rollout) -> BoxFut<'_, HookOutcome>;
    /// Blue/green preflight: `checks` consecutive 2xx from the new version, `every` apart.
    fn preflight(&self, spec: Preflight, rollout: &Rollout) -> BoxFut<'_, HookOutcome>;
}

/// For tests and for policies without hooks: every hook answers 2xx.
pub struct AlwaysOk;

impl HookRunner for AlwaysOk {
    fn call(&self, kind: HookKind, _: Vec<HookSpec>, _: &Rollout) -> BoxFut<'_, HookOutcome> {
        Box::pin(async move { HookOutcome { ok: true, message: format!("{kind:?} hooks passed") } })
    }
    fn preflight(&self, _: Preflight, _: &Rollout) -> BoxFut<'_, HookOutcome> {
        Box::pin(async { HookOutcome { ok: true, message: "preflight passed".into() } })
    }
}
