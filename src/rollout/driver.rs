//! The driver: one tokio task per active rollout, executing the machine's effects.
//!
//! Loop: wait for a command, an effect's result or the next wake-up → feed it to the machine → commit
//! the new state and its events (one sled transaction, flushed) → only then start the effects it
//! decided and hand the events to the notifier. A store failure executes nothing; the next tick decides
//! again from the last durable state. A fenced commit (HA: another replica owns the rollout now) ends
//! the driver without running anything more.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::machine::{self, Command, CommandError, Effect, Input, StageFailure};
use super::ports::{
    AnalysisContext, Analyzer, HookRunner, Notifier, RolloutMetrics, Router, RouterError, RouterFactory, SharedStore,
    StoreError, Workload, WorkloadAction, WorkloadError, WorkloadFactory, WorkloadStatus,
};
use super::{EventKind, Rollout};
use crate::BoxFut;

pub use super::clock::{SystemClock, TokioClock};
pub use super::ports::Clock;

/// Everything a driver needs from the outside world.
pub struct Env {
    pub store: SharedStore,
    pub routers: Arc<dyn RouterFactory>,
    /// Builds the workload adapter of rollouts that have a `workload`.
    pub workloads: Arc<dyn WorkloadFactory>,
    pub analyzer: Arc<dyn Analyzer>,
    pub hooks: Arc<dyn HookRunner>,
    pub notifier: Arc<dyn Notifier>,
    pub metrics: Arc<dyn RolloutMetrics>,
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A command for a running rollout, answered with the rollout after it was applied. Sent boxed: a
/// channel allocates a block of 32 slots up front, per rollout.
pub struct Request {
    pub command: Command,
    pub actor: String,
    pub reply: oneshot::Sender<Result<Rollout, DriverError>>,
}

/// A router whose construction failed: every call reports why, so the rollout fails before any shift.
struct Unavailable(RouterError);

impl Router for Unavailable {
    fn kind(&self) -> &'static str {
        "unavailable"
    }
    fn validate(&self) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(async { Err(self.0.clone()) })
    }
    fn set_weight(&self, _: u8) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(async { Err(self.0.clone()) })
    }
    fn observe(&self) -> BoxFut<'_, Result<Option<u8>, RouterError>> {
        Box::pin(async { Ok(None) })
    }
}

/// A workload adapter that could not be built: every reconcile reports why.
struct NoWorkload(WorkloadError);

impl Workload for NoWorkload {
    fn reconcile(&self, _: WorkloadAction) -> BoxFut<'_, Result<WorkloadStatus, WorkloadError>> {
        Box::pin(async { Err(self.0.clone()) })
    }
}

struct Driver {
    env: Arc<Env>,
    r: Rollout,
    router: Arc<dyn Router>,
    workload: Arc<dyn Workload>,
    tasks: JoinSet<Input>,
    /// A commit failed: in-flight work is abandoned and the machine recovers from the durable state.
    stalled: bool,
    /// HA: another replica owns the rollout now. The driver stops; its in-flight effects are dropped.
    fenced: bool,
}

/// Run a rollout until it reaches a terminal phase (or the command channel closes).
/// `recover`: the rollout was loaded from the store after a restart.
pub async fn run(env: Arc<Env>, r: Rollout, mut rx: mpsc::Receiver<Box<Request>>, recover: bool) {
    let router = env.routers.build(&r).unwrap_or_else(|e| Arc::new(Unavailable(e)));
    let workload: Arc<dyn Workload> = match &r.workload {
        Some(_) => env.workloads.build(&r).unwrap_or_else(|e| Arc::new(NoWorkload(e))),
        None => Arc::new(NoWorkload(WorkloadError::Permanent("this rollout has no workload".into()))),
    };
    let mut d = Driver { env, r, router, workload, tasks: JoinSet::new(), stalled: false, fenced: false };
    let first = if recover {
        let observed = d.router.observe().await.ok().flatten();
        Input::Recover { observed }
    } else {
        Input::Tick
    };
    let _ = d.apply(first).await;
    while !d.r.is_terminal() && !d.fenced {
        let now = d.env.clock.now();
        let wait = match d.stalled {
            true => Some(Duration::from_secs(1)),
            false => d.r.wake_at().map(|t| Duration::from_millis(t.saturating_sub(now))),
        };
        tokio::select! {
            req = rx.recv() => {
                let Some(req) = req else { break };
                let req = *req;
                let input = Input::Command { command: req.command, actor: req.actor };
                let res = d.apply(input).await.map(|()| d.r.clone());
                let _ = req.reply.send(res);
            }
            Some(res) = d.tasks.join_next(), if !d.tasks.is_empty() => {
                if let Ok(input) = res {
                    let _ = d.apply(input).await;
                }
            }
            _ = sleep(wait) => {
                if d.stalled {
                    d.tasks.abort_all();
                    d.stalled = false;
                    let _ = d.apply(Input::Recover { observed: None }).await;
                } else {
                    let _ = d.apply(Input::Tick).await;
                }
            }
        }
    }
    if d.fenced {
        // Nothing more runs here: dropping the JoinSet aborts what was in flight.
        d.tasks.abort_all();
        tracing::warn!(rollout = %d.r.id, "another replica owns this rollout now; dropped it here");
        rx.close();
        while let Some(req) = rx.recv().await {
            let req = *req;
            let _ = req.reply.send(Err(DriverError::Store(StoreError::Fenced(d.r.id.clone()))));
        }
        return;
    }
    // Answer commands that raced with the end (they get the terminal-phase error).
    rx.close();
    while let Some(req) = rx.recv().await {
        let req = *req;
        let res = machine::step(&mut d.r.clone(), Input::Command { command: req.command, actor: req.actor }, 0);
        let _ = req.reply.send(res.map(|_| d.r.clone()).map_err(DriverError::from));
    }
}

/// Effects that only read (their answer is an input, committed when it arrives).
fn is_read(e: &Effect) -> bool {
    matches!(e, Effect::Analyse { .. } | Effect::Observe)
}

/// Whether `next` differs from `prev` only in what tracks in-flight work (`busy`, `next_op`) and
/// `updated_at`. Compares in place: `next`'s fields are swapped out and back.
fn bookkeeping_only(prev: &Rollout, next: &mut Rollout) -> bool {
    let busy = std::mem::replace(&mut next.busy, prev.busy.clone());
    let kept = (next.next_op, next.updated_at);
    (next.next_op, next.updated_at) = (prev.next_op, prev.updated_at);
    let same = *next == *prev;
    next.busy = busy;
    (next.next_op, next.updated_at) = kept;
    same
}

async fn sleep(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    /// Boxed: a transition's future (the commit, the notifications) is large and lives only while it
    /// runs; inline in [`run`], every waiting rollout's task would carry its space (≈ 3 KB each).
    fn apply(&mut self, input: Input) -> BoxFut<'_, Result<(), DriverError>> {
        Box::pin(self.transition(input))
    }

    async fn transition(&mut self, input: Input) -> Result<(), DriverError> {
        let now = self.env.clock.now();
        let analysis = match &input {
            Input::Analysis { report, .. } => Some(report.clone()),
            _ => None,
        };
        let mut next = self.r.clone();
        let out = machine::step(&mut next, input, now)?;
        // Nothing happened (a tick with nothing due), or only an in-flight read was started (an
        // analysis, a read-back): its answer comes back as an input that is committed, and a restart
        // forgets in-flight work anyway (`Input::Recover` clears `busy`). Nothing a restart needs, so
        // no commit: a rollout-tick costs the durable commits of its result, not one more.
        if out.events.is_empty() && out.effects.iter().all(is_read) && bookkeeping_only(&self.r, &mut next) {
            self.r = next;
            for eff in out.effects {
                self.start(eff);
            }
            return Ok(());
        }
        let was = (self.r.phase, self.r.canary_weight, self.r.failed_checks);
        let was_terminal = self.r.is_terminal();
        let started = std::time::Instant::now();
        let events = match self.env.store.commit(&mut next, out.events).await {
            Ok(ev) => {
                self.env.metrics.store_commit(started.elapsed().as_secs_f64());
                ev
            }
            Err(e @ StoreError::Fenced(_)) => {
                self.fenced = true;
                return Err(e.into());
            }
            Err(e) => {
                tracing::error!(rollout = %self.r.id, error = %e, "cannot persist a transition; recovering in 1s");
                self.stalled = true;
                return Err(e.into());
            }
        };
        self.r = next;
        let m = &self.env.metrics;
        let finished_now = self.r.is_terminal() && !was_terminal;
        // The gauges only move with these: 10,000 rollouts re-setting 12 unchanged series per
        // transition cost more than the transition.
        if finished_now || was != (self.r.phase, self.r.canary_weight, self.r.failed_checks) {
            m.observe(&self.r, finished_now, now);
        }
        if let Some(a) = analysis.filter(|_| events.iter().any(|e| e.is(EventKind::Analysis))) {
            m.observe_analysis(&self.r, &a);
        }
        for e in &events {
            tracing::info!(rollout = %self.r.id, service = %self.r.service, seq = e.seq, kind = %e.kind, actor = %e.actor, "{}", e.message);
            self.env.notifier.notify(&self.r, e);
        }
        for eff in out.effects {
            self.start(eff);
        }
        Ok(())
    }

    fn start(&mut self, effect: Effect) {
        let env = self.env.clone();
        let router = self.router.clone();
        // Router and workload calls only name the rollout in their logs; hooks and the analyzer get
        // all of it.
        let id = self.r.id.clone();
        match effect {
            Effect::SetWeight { op, canary } => {
                self.tasks.spawn(async move {
                    let result = router.set_weight(canary).await;
                    env.metrics.router_call(router.kind(), result.is_ok());
                    if let Err(e) = &result {
                        tracing::warn!(rollout = %id, canary, error = %e, "router call failed");
                    }
                    Input::RouterDone { op, result }
                });
            }
            Effect::Validate { op } => {
                self.tasks.spawn(async move {
                    let result = router.validate().await;
                    env.metrics.router_call(router.kind(), result.is_ok());
                    let result =
                        result.map_err(|e| StageFailure { permanent: e.is_permanent(), message: e.to_string() });
                    Input::StageDone { op, result }
                });
            }
            Effect::CallHooks { op, kind } => {
                let r = self.r.clone();
                let hooks = r.policy.webhooks.of(kind).to_vec();
                let fut = async move { env.hooks.call(kind, hooks, &r).await };
                match op {
                    Some(op) => {
                        self.tasks.spawn(async move {
                            let o = fut.await;
                            let result =
                                if o.ok { Ok(()) } else { Err(StageFailure { message: o.message, permanent: false }) };
                            Input::StageDone { op, result }
                        });
                    }
                    None => {
                        tokio::spawn(fut);
                    }
                }
            }
            Effect::Preflight { op } => {
                let r = self.r.clone();
                self.tasks.spawn(async move {
                    let spec = r.policy.preflight.clone();
                    let result = match spec {
                        Some(spec) => {
                            let o = env.hooks.preflight(spec, &r).await;
                            if o.ok { Ok(()) } else { Err(StageFailure { message: o.message, permanent: false }) }
                        }
                        None => Ok(()),
                    };
                    Input::StageDone { op, result }
                });
            }
            Effect::Analyse { op } => {
                let r = self.r.clone();
                self.tasks.spawn(async move {
                    let now = env.clock.now();
                    let report = env.analyzer.analyse(AnalysisContext { rollout: r, now }).await;
                    Input::Analysis { op, report }
                });
            }
            Effect::SetMirror { op, percent } => {
                self.tasks.spawn(async move {
                    let result = router.set_mirror(percent).await;
                    env.metrics.router_call(router.kind(), result.is_ok());
                    if let Err(e) = &result {
                        tracing::warn!(rollout = %id, percent, error = %e, "router could not turn the mirror on");
                    }
                    Input::RouterDone { op, result }
                });
            }
            Effect::Workload { op, action } => {
                let workload = self.workload.clone();
                self.tasks.spawn(async move {
                    let result = match action {
                        WorkloadAction::Route { shape } => {
                            let result = router.shape(shape).await;
                            env.metrics.router_call(router.kind(), result.is_ok());
                            result.map(|()| WorkloadStatus::Ready("done".into())).map_err(WorkloadError::from)
                        }
                        _ => workload.reconcile(action).await,
                    };
                    if let Err(e) = &result {
                        tracing::warn!(rollout = %id, ?action, error = %e, "workload call failed");
                    }
                    Input::WorkloadDone { op, result }
                });
            }
            Effect::Observe => {
                self.tasks.spawn(async move {
                    let weight = router.observe().await;
                    Input::Observed { weight }
                });
            }
        }
    }
}
