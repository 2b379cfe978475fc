//! Traffic routers: set "canary gets N %, stable 100 − N" on some load balancer.
//!
//! Every call is an idempotent "set the weights to W" (never "add 20 %"), so the driver may repeat it
//! after a crash or a timeout. Routers hold no rollout logic.

pub mod exec;

use std::sync::Arc;

use crate::BoxFut;
use crate::rollout::{Rollout, RouterSpec};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouterError {
    /// Worth retrying: network errors, conflicts, timeouts, a reload that failed.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help until someone changes something: the object or subset does not exist,
    /// the configuration is invalid. Before any traffic moved this fails the rollout.
    #[error("{0}")]
    Permanent(String),
}

impl RouterError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, RouterError::Permanent(_))
    }
}

pub trait Router: Send + Sync + 'static {
    /// `istio`, `nginx-ingress`, `nginx`, `exec` (the `router` label of vane_router_requests_total).
    fn kind(&self) -> &'static str;
    /// Check everything needed before the first shift (objects exist, subsets defined, ...).
    fn validate(&self) -> BoxFut<'_, Result<(), RouterError>>;
    /// Set the canary weight (stable = 100 − canary), idempotently.
    fn set_weight(&self, canary: u8) -> BoxFut<'_, Result<(), RouterError>>;
    /// The live canary weight, if the router can read it back (None: it cannot tell).
    fn observe(&self) -> BoxFut<'_, Result<Option<u8>, RouterError>>;
}

/// Builds the router for a rollout from its spec.
pub trait RouterFactory: Send + Sync + 'static {
    fn build(&self, rollout: &Rollout) -> Result<Arc<dyn Router>, RouterError>;
}

/// The factory the daemon uses: `exec` here; other kinds are added by their modules.
#[derive(Default)]
pub struct Routers {
    pub extra: Vec<Arc<dyn RouterFactory>>,
}

impl RouterFactory for Routers {
    fn build(&self, rollout: &Rollout) -> Result<Arc<dyn Router>, RouterError> {
        match &rollout.router {
            RouterSpec::Exec { command } => Ok(Arc::new(exec::ExecRouter::new(command.clone(), rollout))),
            other => {
                for f in &self.extra {
                    if let Ok(r) = f.build(rollout) {
                        return Ok(r);
                    }
                }
                Err(RouterError::Permanent(format!("router kind {:?} is not available in this build", other.kind())))
            }
        }
    }
}
