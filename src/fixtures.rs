//! In-memory fakes and builders for tests and benchmarks (not used by the daemon).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::BoxFut;
use crate::notify::{AlwaysOk, Silent};
use crate::policy::{OnNoData, Policy, Strategy};
use crate::rollout::clock::TokioClock;
use crate::rollout::driver::Env;
use crate::rollout::ports::{
    AnalysisContext, AnalysisReport, Analyzer, Clock, MetricResult, MetricVerdict, Router, RouterError, RouterFactory,
    SharedStore, Verdict, Workload, WorkloadError, WorkloadFactory,
};
use crate::rollout::{CreateRequest, Rollout, RouterSpec};
use crate::telemetry::Metrics;

/// A canary policy without metrics.
pub fn policy(name: &str, steps: &[u8], interval: Duration, threshold: u32) -> Policy {
    Policy {
        name: name.into(),
        strategy: Strategy::Canary,
        steps: steps.to_vec(),
        interval,
        threshold,
        progress_deadline: interval * 20,
        on_no_data: OnNoData::Hold,
        min_requests: 0,
        metrics_dialect: None,
        metrics: vec![],
        judge: Default::default(),
        sequential: None,
        adaptive: None,
        gates: vec![],
        webhooks: Default::default(),
        preflight: None,
        post_flip: None,
        on_drift: Default::default(),
        canary_match: vec![],
        mirror: None,
    }
}

pub fn blue_green(name: &str, interval: Duration, post_flip: Duration) -> Policy {
    Policy {
        strategy: Strategy::BlueGreen,
        steps: vec![],
        post_flip: Some(post_flip),
        ..policy(name, &[100], interval, 2)
    }
}

pub fn request(service: &str, policy: &str) -> CreateRequest {
    CreateRequest {
        service: service.into(),
        namespace: "prod".into(),
        version: "v1.1.0".into(),
        stable_version: "v1.0.0".into(),
        policy: policy.into(),
        router: RouterSpec::Exec { profile: "test".into() },
        overrides: Default::default(),
        workload: None,
    }
}

/// A workload factory for rollouts without a workload (a rollout with one fails before traffic).
pub struct NoWorkloads;

impl WorkloadFactory for NoWorkloads {
    fn build(&self, _: &Rollout) -> Result<Arc<dyn Workload>, WorkloadError> {
        Err(WorkloadError::Permanent("no workload adapter in this test".into()))
    }
}

/// A router that records every weight it is asked to set and can be told to fail.
#[derive(Default)]
pub struct FakeRouter {
    pub calls: Mutex<Vec<u8>>,
    pub live: Mutex<Option<u8>>,
    /// While true every call fails with a transient error (the router is unreachable).
    pub down: AtomicBool,
    /// The next N calls fail transiently.
    pub fail_next: AtomicU32,
    /// `validate` fails permanently with this message.
    pub invalid: Mutex<Option<String>>,
    /// The last weight set and when (benchmarks time decision → router).
    pub last_set: Mutex<Option<(u8, std::time::Instant)>>,
}

impl FakeRouter {
    pub fn weights(&self) -> Vec<u8> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
    pub fn last(&self) -> Option<u8> {
        self.weights().last().copied()
    }
}

impl Router for FakeRouter {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn validate(&self) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(async move {
            match self.invalid.lock().ok().and_then(|i| i.clone()) {
                Some(m) => Err(RouterError::Permanent(m)),
                None => Ok(()),
            }
        })
    }
    fn set_weight(&self, canary: u8) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(RouterError::Transient("connection refused".into()));
            }
            if self.fail_next.load(Ordering::SeqCst) > 0 {
                self.fail_next.fetch_sub(1, Ordering::SeqCst);
                return Err(RouterError::Transient("conflict".into()));
            }
            if let Ok(mut c) = self.calls.lock() {
                c.push(canary);
            }
            if let Ok(mut l) = self.live.lock() {
                *l = Some(canary);
            }
            if let Ok(mut l) = self.last_set.lock() {
                *l = Some((canary, std::time::Instant::now()));
            }
            Ok(())
        })
    }
    fn observe(&self) -> BoxFut<'_, Result<Option<u8>, RouterError>> {
        Box::pin(async move { Ok(self.live.lock().ok().and_then(|l| *l)) })
    }
}

/// One [`FakeRouter`] per rollout service name.
#[derive(Default)]
pub struct FakeRouters {
    pub routers: Mutex<HashMap<String, Arc<FakeRouter>>>,
}

impl FakeRouters {
    pub fn get(&self, service: &str) -> Arc<FakeRouter> {
        let mut m = self.routers.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(service.to_string()).or_default().clone()
    }
}

impl RouterFactory for FakeRouters {
    fn build(&self, r: &Rollout) -> Result<Arc<dyn Router>, RouterError> {
        Ok(self.get(&r.service))
    }
}

/// An analyzer that answers from a script (then a default verdict), per service.
pub struct ScriptedAnalyzer {
    pub script: Mutex<HashMap<String, VecDeque<Verdict>>>,
    pub default: Mutex<Verdict>,
    pub calls: AtomicU32,
}

impl Default for ScriptedAnalyzer {
    fn default() -> Self {
        ScriptedAnalyzer { script: Mutex::default(), default: Mutex::new(Verdict::Pass), calls: AtomicU32::new(0) }
    }
}

impl ScriptedAnalyzer {
    pub fn set_default(&self, v: Verdict) {
        if let Ok(mut d) = self.default.lock() {
            *d = v;
        }
    }
    pub fn push(&self, service: &str, verdicts: &[Verdict]) {
        if let Ok(mut s) = self.script.lock() {
            s.entry(service.into()).or_default().extend(verdicts.iter().copied());
        }
    }
}

/// A `request-success-rate` result (≥ 99 %) with `value` and `result`, as the scripted analyzers report it.
pub fn success_rate(value: Option<f64>, result: MetricVerdict) -> MetricResult {
    MetricResult {
        name: "request-success-rate".into(),
        value,
        min: Some(99.0),
        max: None,
        result,
        message: None,
        stats: serde_json::Value::Null,
    }
}

impl Analyzer for ScriptedAnalyzer {
    fn analyse(&self, ctx: AnalysisContext) -> BoxFut<'_, AnalysisReport> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let scripted =
                self.script.lock().ok().and_then(|mut s| s.get_mut(&ctx.rollout.service).and_then(|q| q.pop_front()));
            let verdict = scripted.unwrap_or_else(|| self.default.lock().map(|d| *d).unwrap_or(Verdict::Pass));
            let (value, result) = match verdict {
                Verdict::Pass => (Some(99.9), MetricVerdict::Pass),
                Verdict::Fail => (Some(90.0), MetricVerdict::Fail),
                Verdict::NoData | Verdict::Collecting => (None, MetricVerdict::NoData),
                Verdict::Error => (None, MetricVerdict::Error),
                _ => (Some(99.0), MetricVerdict::Inconclusive),
            };
            let metric = success_rate(value, result);
            AnalysisReport { at: ctx.now, verdict, metrics: vec![metric], summary: format!("scripted {verdict:?}") }
        })
    }
}

/// An [`Env`] over fakes, a store in `dir`, and a tokio-driven clock (use a paused runtime to run
/// minutes of rollout in milliseconds).
pub fn env(dir: &std::path::Path, routers: Arc<FakeRouters>, analyzer: Arc<ScriptedAnalyzer>) -> Arc<Env> {
    env_on(SharedStore::open(dir).expect("temp store opens"), routers, analyzer)
}

/// [`env`] over a given store (benchmarks keep a handle on it to read its counters).
pub fn env_on(store: SharedStore, routers: Arc<FakeRouters>, analyzer: Arc<ScriptedAnalyzer>) -> Arc<Env> {
    crate::install_crypto_provider();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(1_800_000_000_000));
    Arc::new(Env {
        store,
        routers,
        workloads: Arc::new(NoWorkloads),
        analyzer,
        hooks: Arc::new(AlwaysOk),
        notifier: Arc::new(Silent),
        metrics: Arc::new(Metrics::new(Duration::from_secs(3600))),
        clock,
    })
}
