//! The ports: what the rollout core asks of the outside world, in the core's own words.
//!
//! The machine and its driver depend on these traits and types only; every adapter (`traffic`,
//! `analysis`, `hooks`, `notify`, `store`, `telemetry`) implements one of them and depends on this
//! module, never the reverse. A new router, analyzer or store backend is a new implementation here,
//! with no change to the machine.

use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{CreateRequest, Event, Millis, Phase, Rollout, rfc3339};
use crate::BoxFut;
use crate::policy::{FieldError, HookKind, HookSpec, Preflight};

// ---- traffic ----

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

/// Sets "canary gets N %, stable 100 − N" on some load balancer. Every call is idempotent.
pub trait Router: Send + Sync + 'static {
    /// `istio`, `nginx-ingress`, `gateway-api`, `nginx`, `exec` (the `router` label of
    /// vane_router_requests_total).
    fn kind(&self) -> &'static str;
    /// Check everything needed before the first shift (objects exist, subsets defined, ...).
    fn validate(&self) -> BoxFut<'_, Result<(), RouterError>>;
    /// Set the canary weight (stable = 100 − canary), idempotently.
    fn set_weight(&self, canary: u8) -> BoxFut<'_, Result<(), RouterError>>;
    /// The live canary weight, if the router can read it back (None: it cannot tell).
    fn observe(&self) -> BoxFut<'_, Result<Option<u8>, RouterError>>;
    /// Workload releases: bring the routing objects into `shape`, idempotently. A router that
    /// cannot (it only moves weights) says so, and the rollout fails before any traffic moves.
    fn shape(&self, shape: RouteShape) -> BoxFut<'_, Result<(), RouterError>> {
        let kind = self.kind();
        Box::pin(async move {
            Err(RouterError::Permanent(format!(
                "the {kind} router cannot prepare routing for a workload release ({shape:?})"
            )))
        })
    }
    /// Shadow `percent` % of the requests to the canary (its answers are discarded), weights
    /// untouched, until the next `set_weight`, which removes the mirror. Idempotent.
    fn set_mirror(&self, percent: u8) -> BoxFut<'_, Result<(), RouterError>> {
        let kind = self.kind();
        Box::pin(async move {
            Err(RouterError::Permanent(format!("router {kind} cannot mirror traffic ({percent}% asked)")))
        })
    }
}

/// What a workload release needs from the routing besides weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteShape {
    /// The canary is routable at 0 %: its subset defined, a 0 % destination in the weighted route,
    /// header-match routes sending their traffic to it.
    Prepared,
    /// Rolled back: header-match routes that sent traffic to the canary send it to stable again.
    Restored,
    /// Promoted: only the new version is routed (100 %), the old version's subset is gone.
    Final,
    /// The canary was retired: routing objects that exist only for it (gateway-api's canary
    /// Service) are removed.
    Retired,
}

/// Builds the router for a rollout from its spec.
pub trait RouterFactory: Send + Sync + 'static {
    fn build(&self, rollout: &Rollout) -> Result<Arc<dyn Router>, RouterError>;

    /// Whether a create request may use the router it names (e.g. a configured profile that serves
    /// its namespace); checked before anything is stored. A 422 naming the field otherwise.
    fn admit(&self, _request: &CreateRequest) -> Result<(), FieldError> {
        Ok(())
    }
}

// ---- workload ----

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkloadError {
    /// Worth retrying (network, conflicts, the API server answered 5xx).
    #[error("{0}")]
    Transient(String),
    /// Needs a person: the Deployment is missing, not vane's to change, or access is denied.
    #[error("{0}")]
    Permanent(String),
}

impl From<RouterError> for WorkloadError {
    fn from(e: RouterError) -> Self {
        match e {
            RouterError::Transient(m) => WorkloadError::Transient(m),
            RouterError::Permanent(m) => WorkloadError::Permanent(m),
        }
    }
}

/// A state the release's workload is driven to (one at a time, in the machine's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "camelCase")]
pub enum WorkloadAction {
    /// `<deployment>-canary` runs the new template, sized for `weight` (and its HPA cloned), rolled out.
    Canary { weight: u8 },
    /// The routing objects in this shape (done by the router).
    Route { shape: RouteShape },
    /// `<deployment>` itself runs the new template, rolled out.
    Stable,
    /// `<deployment>-canary` retired as the request says (scale-to-zero, delete or keep).
    Retire,
    /// `<deployment>-canary` at 0 replicas and kept, its HPA removed.
    Zero,
}

/// Where a workload stands after a reconcile.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkloadStatus {
    /// There, e.g. rolled out as `kubectl rollout status` judges; the text says what (replicas).
    Ready(String),
    /// On its way (pods starting); ask again later.
    Waiting(String),
    /// It will not get there by itself: a `Progressing=False` condition (reason: message).
    Failed(String),
}

/// Drives one rollout's workload. Every call is a "make it so and tell me where it stands" (never
/// "create blindly"), so the driver may repeat it after a crash or a timeout.
pub trait Workload: Send + Sync + 'static {
    fn reconcile(&self, action: WorkloadAction) -> BoxFut<'_, Result<WorkloadStatus, WorkloadError>>;
}

/// Builds the workload adapter of a rollout that has a `workload`.
pub trait WorkloadFactory: Send + Sync + 'static {
    fn build(&self, rollout: &Rollout) -> Result<Arc<dyn Workload>, WorkloadError>;
}

/// Canary replicas for a weight: `proportional` is ceil(stable × weight / 100), at least 1;
/// `full` is the stable's count. Also how an HPA's min and max are scaled.
pub fn canary_replicas(stable: u32, weight: u8, scale: super::spec::CanaryScale) -> u32 {
    match scale {
        super::spec::CanaryScale::Full => stable.max(1),
        super::spec::CanaryScale::Proportional => (stable * weight as u32).div_ceil(100).max(1),
    }
}

// ---- analysis ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every metric within bounds (or, sequential: canary shown not worse): the step may advance.
    Pass,
    /// One failed check.
    Fail,
    /// Not enough data to judge; the policy's `onNoData` decides.
    NoData,
    /// Sequential judge: data, but no conclusion yet. Neither a pass nor a failed check.
    Inconclusive,
    /// A `rollback` hook asked to roll back now.
    Rollback,
    /// Fewer than `minRequests` canary requests this step so far, but more than at the last
    /// analysis: the step extends (it is progressing, so the progress deadline starts over).
    Collecting,
    /// Every metric's query failed (rejected PromQL, ambiguous series): never a pass, whatever
    /// `onNoData` says; the rollout holds and the progress deadline applies.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MetricVerdict {
    Pass,
    Fail,
    NoData,
    Inconclusive,
    Error,
}

impl MetricVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricVerdict::Pass => "pass",
            MetricVerdict::Fail => "fail",
            MetricVerdict::NoData => "nodata",
            MetricVerdict::Inconclusive => "inconclusive",
            MetricVerdict::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    pub name: String,
    pub value: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub result: MetricVerdict,
    /// Why: the error, the no-data reason, or the judge's statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    #[schema(value_type = Object)]
    pub stats: serde_json::Value,
}

/// What one analysis of a rollout reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisReport {
    #[schema(value_type = String)]
    #[serde(with = "rfc3339")]
    pub at: Millis,
    pub verdict: Verdict,
    pub metrics: Vec<MetricResult>,
    /// One line for the rollout's message, e.g. which metric failed and why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

/// What an analysis needs to know about the rollout, as of `now`.
#[derive(Debug, Clone)]
pub struct AnalysisContext {
    pub rollout: Rollout,
    pub now: Millis,
}

/// Runs one analysis (queries + judge + `rollout`/`rollback` hooks). Never fails: problems are
/// reported as `NoData`/`Error` metric results so they are visible in the rollout.
pub trait Analyzer: Send + Sync + 'static {
    fn analyse(&self, ctx: AnalysisContext) -> BoxFut<'_, AnalysisReport>;
}

// ---- hooks ----

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

// ---- notifications and metrics ----

/// Receives every event after it is durably stored (fire and forget: delivery, retries and any
/// durable queue are the notifier's business).
pub trait Notifier: Send + Sync + 'static {
    fn notify(&self, rollout: &Rollout, event: &Event);
}

/// The daemon's own metrics about rollouts (SPEC §6): what the driver reports, and the exposition
/// the API serves.
pub trait RolloutMetrics: Send + Sync + 'static {
    /// The rollout's state after a transition; `finished_now`: it just reached a terminal phase.
    fn observe(&self, rollout: &Rollout, finished_now: bool, now: Millis);
    /// An analysis the machine recorded.
    fn observe_analysis(&self, rollout: &Rollout, report: &AnalysisReport);
    /// One call to a router of this kind.
    fn router_call(&self, router: &str, ok: bool);
    /// Every metric in the OpenMetrics text format (`GET /metrics`).
    fn encode(&self) -> String;
    /// A transition and its events committed and flushed, in `seconds`.
    fn store_commit(&self, seconds: f64);
    /// One REST API request; `route` is the matched route template.
    fn http_request(&self, method: &str, route: &str, status: u16, elapsed: std::time::Duration);
}

// ---- time ----

/// Wall-clock milliseconds. Tests use a tokio-driven clock so a paused runtime drives rollouts.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

// ---- store ----

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, the database refused); the message says how.
    #[error("storage: {0}")]
    Backend(String),
    #[error("an active rollout for {namespace}/{service} already exists: {id}")]
    Conflict { namespace: String, service: String, id: String },
    /// Another active rollout drives this router object (see [`super::RouterSpec::targets`]).
    #[error("an active rollout already drives {target}{}: {id}", if part == "*" { String::new() } else { format!(" (route {part:?})") })]
    TargetConflict { target: String, part: String, id: String },
    #[error("Idempotency-Key was used before with a different request body")]
    IdempotencyMismatch,
    #[error("corrupt record {key}: {error}")]
    Corrupt { key: String, error: String },
    /// HA: this replica no longer owns the rollout (its lease expired and another replica took it
    /// over). Nothing was written; the driver drops the rollout without running any further effect.
    #[error("this replica no longer owns rollout {0}")]
    Fenced(String),
}

/// The outcome of a create.
pub enum Created {
    New(Vec<Event>),
    /// The Idempotency-Key was seen before with the same body: the rollout it created.
    Existing(Box<Rollout>),
}

#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub service: Option<String>,
    pub namespace: Option<String>,
    pub phase: Option<Phase>,
    pub limit: usize,
    /// Only these namespaces (a scoped token's view); None: all.
    pub scope: Option<crate::scope::Namespaces>,
}

impl ListFilter {
    /// Whether a rollout with these fields passes the filter.
    pub fn matches(&self, service: &str, namespace: &str, phase: Phase) -> bool {
        self.service.as_ref().is_none_or(|s| s == service)
            && self.namespace.as_ref().is_none_or(|n| n == namespace)
            && self.phase.is_none_or(|p| p == phase)
            && self.scope.as_ref().is_none_or(|s| s.allows(namespace))
    }
}

/// One entry of the outbound delivery queue, as the store keeps it: opaque bytes in a sink's FIFO.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// The sink's queue (its key).
    pub sink: String,
    /// The event it renders; entries at or below the rollout's queue cursor are skipped.
    pub seq: u64,
    pub entry: Vec<u8>,
}

/// Where a queued entry sits, to remove it once delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKey(pub Vec<u8>);

/// HA: which replica owns an active rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub replica: String,
    /// Its advertised URL (commands for the rollout are forwarded there).
    pub url: String,
    /// The owner is this process.
    pub local: bool,
}

/// HA: a live replica (SPEC §4 `GET /api/v1/replicas`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replica {
    pub id: String,
    pub url: String,
    /// When its lease runs out unless renewed.
    #[schema(value_type = String)]
    #[serde(with = "rfc3339")]
    pub lease_expiry: Millis,
    /// How many active rollouts it owns.
    pub rollouts: usize,
}

/// Durable state (DESIGN "Durability rules"): rollouts, their events, and the notification queue.
///
/// A transition and its events are written atomically and are durable when `create`/`commit` return,
/// so an effect never runs before the decision that started it is stored. One implementation per
/// backend: `store::sled` today.
pub trait Store: Send + Sync + 'static {
    /// Insert a new rollout (one active per namespace/service) with its first events, or return the
    /// rollout an earlier request with the same Idempotency-Key (`idem`: key, canonical body) created.
    fn create<'a>(
        &'a self,
        r: &'a mut Rollout,
        events: Vec<Event>,
        idem: Option<(&'a str, &'a str)>,
    ) -> BoxFut<'a, Result<Created, StoreError>>;
    /// Write a transition and its events atomically and durably. Returns the events with their seqs.
    fn commit<'a>(&'a self, r: &'a mut Rollout, events: Vec<Event>) -> BoxFut<'a, Result<Vec<Event>, StoreError>>;
    fn get(&self, id: &str) -> Result<Option<Rollout>, StoreError>;
    /// Newest first, at most `f.limit`.
    fn list(&self, f: &ListFilter) -> Result<Vec<Rollout>, StoreError>;
    /// Every non-terminal rollout (what a restarted daemon resumes).
    fn active(&self) -> Result<Vec<Rollout>, StoreError>;
    /// A rollout's events with seq > `after`, oldest first.
    fn events(&self, id: &str, after: u64) -> Result<Vec<Event>, StoreError>;
    /// A cheap read that proves the store answers (readiness).
    fn ping(&self) -> bool;
    /// Retention (`[store] retention`): delete every finished rollout last updated before `cutoff`,
    /// with its events and the idempotency keys that point to it. Returns how many went.
    fn sweep(&self, cutoff: Millis) -> BoxFut<'_, Result<usize, StoreError>>;

    // The notification queue (at-least-once delivery that survives restarts).

    /// Atomically: append the entries of `rollout` whose seq is above its queue cursor, then move the
    /// cursor to `last` (or drop it when `done`: the rollout finished and is fully queued).
    fn queue_push(&self, rollout: &str, entries: &[Queued], last: u64, done: bool) -> Result<(), StoreError>;
    /// The oldest entry of a sink's queue.
    fn queue_head(&self, sink: &str) -> Result<Option<(QueueKey, Vec<u8>)>, StoreError>;
    fn queue_remove(&self, key: &QueueKey) -> Result<(), StoreError>;
    /// Drop the entries of every sink not in `sinks`; returns how many.
    fn queue_retain(&self, sinks: &[&str]) -> Result<usize, StoreError>;
    /// Entries waiting, all sinks together.
    fn queue_len(&self) -> usize;
    /// Every rollout's queue cursor (rollout id, last queued seq).
    fn queue_cursors(&self) -> Result<Vec<(String, u64)>, StoreError>;
    fn queue_cursor(&self, rollout: &str) -> Result<Option<u64>, StoreError>;
    fn queue_drop_cursor(&self, rollout: &str) -> Result<(), StoreError>;
    /// When notifications were first enabled on this store (set to `now` on the first call).
    fn queue_since(&self, now: Millis) -> Result<Millis, StoreError>;
    /// How often a sink's sender looks at its queue without being woken (entries other replicas
    /// queue wake nobody here). None: every entry is queued by this process, which wakes the sender.
    fn queue_poll(&self) -> Option<std::time::Duration> {
        None
    }

    // Ownership (HA backends; a single-process store owns everything and has no replicas).

    /// The replica owning an active rollout; None when this process is the only one.
    fn owner(&self, _id: &str) -> Result<Option<Owner>, StoreError> {
        Ok(None)
    }
    /// Rollout id → owning replica id, for every owned rollout.
    fn owners(&self) -> Result<std::collections::HashMap<String, String>, StoreError> {
        Ok(Default::default())
    }
    /// The live replicas; empty for a single-process store.
    fn replicas(&self) -> Result<Vec<Replica>, StoreError> {
        Ok(vec![])
    }
}

/// The store every part of the daemon shares: a cheap handle on one backend.
#[derive(Clone)]
pub struct SharedStore(Arc<dyn Store>);

impl SharedStore {
    pub fn new(store: impl Store) -> SharedStore {
        SharedStore(Arc::new(store))
    }
}

impl Deref for SharedStore {
    type Target = dyn Store;
    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.0
    }
}
