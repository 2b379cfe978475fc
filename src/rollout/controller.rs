//! The controller: creates rollouts, routes commands to their drivers, resumes them after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, oneshot};

use super::driver::{self, DriverError, Env, Request};
use super::machine::{self, Command, CommandError};
use super::ports::{Created, ListFilter, StoreError};
use super::{CreateRequest, Event, Rollout};
use crate::policy::{FieldError, Policy};
use crate::scope::Namespaces;

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
    /// HA: another replica owns the rollout; commands for it go there (`url`, its advertised URL).
    #[error("rollout {id} is owned by replica {replica}")]
    Elsewhere { id: String, replica: String, url: String },
}

impl From<DriverError> for ControllerError {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::Command(c) => ControllerError::Command(c),
            DriverError::Store(s) => ControllerError::Store(s),
        }
    }
}

/// A running driver: its command channel, and the handle that stops it (HA: ownership lost).
struct Running {
    tx: mpsc::Sender<Request>,
    task: tokio::task::AbortHandle,
}

type Drivers = Arc<Mutex<HashMap<String, Running>>>;

#[derive(Clone)]
pub struct Controller {
    env: Arc<Env>,
    policies: Arc<RwLock<Arc<Vec<Policy>>>>,
    drivers: Drivers,
    /// `[kubernetes] namespaces`: where Kubernetes routers may be used at all.
    kube_namespaces: Namespaces,
}

impl Controller {
    pub fn new(env: Arc<Env>, policies: Vec<Policy>) -> Controller {
        Controller {
            env,
            policies: Arc::new(RwLock::new(Arc::new(policies))),
            drivers: Arc::default(),
            kube_namespaces: Namespaces::all(),
        }
    }

    /// Refuse (422) rollouts with a Kubernetes router outside these namespaces.
    pub fn with_kubernetes_namespaces(mut self, namespaces: Namespaces) -> Self {
        self.kube_namespaces = namespaces;
        self
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
        let req = req.with_derived_names();
        let policy = req.resolve(&self.policies())?;
        if req.router.is_kubernetes() && !self.kube_namespaces.allows(&req.namespace) {
            return Err(FieldError::new(
                "namespace",
                format!(
                    "vane may not touch Kubernetes objects in namespace {:?} ([kubernetes] namespaces: {})",
                    req.namespace,
                    self.kube_namespaces.describe()
                ),
            )
            .into());
        }
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
        let Ok(mut d) = self.drivers.lock() else { return };
        if d.contains_key(&id) {
            return; // already running here
        }
        let drivers = self.drivers.clone();
        let env = self.env.clone();
        let key = id.clone();
        let task = tokio::spawn(async move {
            driver::run(env, r, rx, recover).await;
            if let Ok(mut d) = drivers.lock() {
                d.remove(&key);
            }
        });
        d.insert(id, Running { tx, task: task.abort_handle() });
    }

    /// HA: run a rollout this replica just took over, resuming it as after a restart (observe the
    /// router, re-apply the committed weight). Nothing happens if it already runs here.
    pub fn adopt(&self, r: Rollout) {
        self.spawn(r, true);
    }

    /// HA: stop the driver of a rollout this replica no longer owns. Its in-flight effects are
    /// abandoned; nothing it decided is lost (every decision was committed before its effect ran).
    pub fn release(&self, id: &str) -> bool {
        let running = self.drivers.lock().ok().and_then(|mut d| d.remove(id));
        if let Some(r) = &running {
            r.task.abort();
        }
        running.is_some()
    }

    /// The ids of the rollouts whose driver runs here.
    pub fn local_ids(&self) -> Vec<String> {
        self.drivers.lock().map(|d| d.keys().cloned().collect()).unwrap_or_default()
    }

    pub async fn command(&self, id: &str, command: Command, actor: &str) -> Result<Rollout, ControllerError> {
        let tx = self.drivers.lock().ok().and_then(|d| d.get(id).map(|r| r.tx.clone()));
        if let Some(tx) = tx {
            let (reply, rx) = oneshot::channel();
            let req = Request { command: command.clone(), actor: actor.to_string(), reply };
            if tx.send(req).await.is_ok()
                && let Ok(res) = rx.await
            {
                return Ok(res?);
            }
        }
        // No running driver here: another replica owns it (HA), or it finished (or never existed).
        if let Some(o) = self.env.store.owner(id)?
            && !o.local
        {
            return Err(ControllerError::Elsewhere { id: id.to_string(), replica: o.replica, url: o.url });
        }
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
