//! The controller: creates rollouts, routes commands to their drivers, resumes them after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, oneshot};

use super::driver::{self, DriverError, Env, Request};
use super::machine::{self, Command, CommandError};
use super::ports::{Created, ListFilter, StoreError};
use super::{CreateRequest, Event, Rollout};
use crate::policy::{FieldError, Policy};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("rollout {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DriverError> for ControllerError {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::Command(c) => ControllerError::Command(c),
            DriverError::Store(s) => ControllerError::Store(s),
        }
    }
}

type Drivers = Arc<Mutex<HashMap<String, mpsc::Sender<Request>>>>;

#[derive(Clone)]
pub struct Controller {
    env: Arc<Env>,
    policies: Arc<RwLock<Arc<Vec<Policy>>>>,
    drivers: Drivers,
}

impl Controller {
    pub fn new(env: Arc<Env>, policies: Vec<Policy>) -> Controller {
        Controller { env, policies: Arc::new(RwLock::new(Arc::new(policies))), drivers: Arc::default() }
    }

    pub fn env(&self) -> &Arc<Env> {
        &self.env
    }

    pub fn policies(&self) -> Arc<Vec<Policy>> {
        self.policies.read().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn set_policies(&self, policies: Vec<Policy>) {
        if let Ok(mut p) = self.policies.write() {
            *p = Arc::new(policies);
        }
    }

    /// Number of rollouts with a running driver.
    pub fn running(&self) -> usize {
        self.drivers.lock().map(|d| d.len()).unwrap_or(0)
    }

    /// Resume every non-terminal rollout in the store (daemon start).
    pub fn resume_all(&self) -> Result<usize, StoreError> {
        let active = self.env.store.active()?;
        let n = active.len();
        for r in active {
            self.spawn(r, true);
        }
        Ok(n)
    }

    /// Create a rollout. `idempotency`: (key, canonical body) — a replay returns the first rollout and
    /// `false`.
    pub async fn create(
        &self,
        req: CreateRequest,
        actor: &str,
        idempotency: Option<(String, String)>,
    ) -> Result<(Rollout, bool), ControllerError> {
        let policy = req.resolve(&self.policies())?;
        self.env.routers.admit(&req)?;
        let now = self.env.clock.now();
        let id = ulid::Ulid::new().to_string();
        let (mut r, out) = machine::create(id, &req, policy, actor, now);
        let idem = idempotency.as_ref().map(|(k, b)| (k.as_str(), b.as_str()));
        match self.env.store.create(&mut r, out.events, idem).await? {
            Created::Existing(r) => Ok((*r, false)),
            Created::New(events) => {
                for e in &events {
                    tracing::info!(rollout = %r.id, service = %r.service, seq = e.seq, kind = %e.kind, actor = %e.actor, "{}", e.message);
                    self.env.notifier.notify(&r, e);
                }
                self.env.metrics.observe(&r, false, now);
                self.spawn(r.clone(), false);
                Ok((r, true))
            }
        }
    }

    fn spawn(&self, r: Rollout, recover: bool) {
        let (tx, rx) = mpsc::channel(16);
        let id = r.id.clone();
        if let Ok(mut d) = self.drivers.lock() {
            d.insert(id.clone(), tx);
        }
        let drivers = self.drivers.clone();
        let env = self.env.clone();
        tokio::spawn(async move {
            driver::run(env, r, rx, recover).await;
            if let Ok(mut d) = drivers.lock() {
                d.remove(&id);
            }
        });
    }

    pub async fn command(&self, id: &str, command: Command, actor: &str) -> Result<Rollout, ControllerError> {
        let tx = self.drivers.lock().ok().and_then(|d| d.get(id).cloned());
        if let Some(tx) = tx {
            let (reply, rx) = oneshot::channel();
            let req = Request { command: command.clone(), actor: actor.to_string(), reply };
            if tx.send(req).await.is_ok()
                && let Ok(res) = rx.await
            {
                return Ok(res?);
            }
        }
        // No running driver: the rollout finished (or never existed).
        let mut r = self.get(id)?;
        machine::step(&mut r, machine::Input::Command { command, actor: actor.into() }, self.env.clock.now())?;
        Err(ControllerError::NotFound(id.to_string()))
    }

    pub fn get(&self, id: &str) -> Result<Rollout, ControllerError> {
        self.env.store.get(id)?.ok_or_else(|| ControllerError::NotFound(id.to_string()))
    }

    pub fn list(&self, f: &ListFilter) -> Result<Vec<Rollout>, ControllerError> {
        Ok(self.env.store.list(f)?)
    }

    pub fn events(&self, id: &str) -> Result<Vec<Event>, ControllerError> {
        self.get(id)?;
        Ok(self.env.store.events(id, 0)?)
    }
}
