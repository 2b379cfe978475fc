//! A controller wired like the daemon, for notification tests: temp sled store, `exec` router that
//! logs every weight it is asked to set, real clock, short intervals.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vane::BoxFut;
use vane::analysis::{AnalysisContext, AnalysisReport, Analyzer, MetricVerdict, TimeOnly, Verdict};
use vane::config::{ExecProfile, RouterProfiles};
use vane::notify::{AlwaysOk, HookRunner, Notifier, Silent};
use vane::policy::{HookKind, Policy};
use vane::rollout::controller::Controller;
use vane::rollout::driver::{Env, SystemClock};
use vane::rollout::{CreateRequest, Event, Phase, Rollout, RouterSpec};
use vane::store::Store;
use vane::telemetry::Metrics;
use vane::traffic::Routers;

pub struct World {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub metrics: Arc<Metrics>,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        World { dir, store, metrics: Arc::new(Metrics::new(Duration::from_secs(3600))) }
    }

    pub fn controller(
        &self,
        policies: Vec<Policy>,
        analyzer: Arc<dyn Analyzer>,
        hooks: Arc<dyn HookRunner>,
        notifier: Arc<dyn Notifier>,
    ) -> Controller {
        let env = Env {
            store: self.store.clone(),
            routers: Arc::new(Routers::default().with_profiles(self.profiles(), Arc::default())),
            workloads: Arc::new(vane::fixtures::NoWorkloads),
            analyzer,
            hooks,
            notifier,
            metrics: self.metrics.clone(),
            clock: Arc::new(SystemClock),
        };
        Controller::new(Arc::new(env), policies)
    }

    /// Time-only analysis, hooks always OK, no notifications.
    pub fn plain(&self, policies: Vec<Policy>) -> Controller {
        self.controller(policies, Arc::new(TimeOnly), Arc::new(AlwaysOk), Arc::new(Silent))
    }

    /// `[routers.exec.log]`: appends each weight it is asked to set to the service's weights file.
    fn profiles(&self) -> RouterProfiles {
        let mut p = RouterProfiles::default();
        let command =
            format!("echo \"$VANE_CANARY_WEIGHT\" >> '{}'/\"$VANE_SERVICE\".weights", self.dir.path().display());
        p.exec.insert(
            "log".into(),
            ExecProfile { command: vec!["sh".into(), "-c".into(), command], env: vec![], namespaces: vec!["*".into()] },
        );
        p
    }

    /// Where the exec router of `service` logs the weights it set, one per line.
    pub fn weights_file(&self, service: &str) -> PathBuf {
        self.dir.path().join(format!("{service}.weights"))
    }

    /// The weights the router was asked to set, in order.
    pub fn weights(&self, service: &str) -> Vec<u8> {
        std::fs::read_to_string(self.weights_file(service))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn request(&self, service: &str, policy: &str) -> CreateRequest {
        CreateRequest {
            service: service.into(),
            namespace: "shop".into(),
            version: "v2".into(),
            stable_version: "v1".into(),
            policy: policy.into(),
            router: RouterSpec::Exec { profile: "log".into() },
            overrides: Default::default(),
            workload: None,
        }
    }
}

pub fn policy(yaml: &str) -> Policy {
    vane::policy::parse(Path::new("test.yaml"), yaml).unwrap_or_else(|e| panic!("test policy: {e}"))
}

pub async fn start(c: &Controller, req: CreateRequest) -> Rollout {
    c.create(req, "ci", None).await.unwrap_or_else(|e| panic!("create: {e}")).0
}

/// Poll the store until `pred` holds (panics with the rollout's events after `timeout`).
pub async fn wait_until(
    c: &Controller,
    id: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Rollout) -> bool,
) -> Rollout {
    let start = Instant::now();
    loop {
        let r = c.get(id).unwrap();
        if pred(&r) {
            return r;
        }
        if start.elapsed() > timeout {
            let ev: Vec<String> = c
                .events(id)
                .unwrap()
                .iter()
                .map(|e| format!("{} {} [{}] {}", e.seq, e.kind, e.actor, e.message))
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; phase {:?}, message {:?}\n{}",
                r.phase,
                r.message,
                ev.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn wait_phase(c: &Controller, id: &str, phase: Phase, timeout: Duration) -> Rollout {
    wait_until(c, id, timeout, phase.as_str(), |r| r.phase == phase).await
}

pub fn events(c: &Controller, id: &str) -> Vec<Event> {
    c.events(id).unwrap()
}

pub fn kinds(c: &Controller, id: &str) -> Vec<String> {
    events(c, id).into_iter().map(|e| e.kind).collect()
}

/// An analyzer whose verdict the test sets; a failing verdict reports one metric below its bound.
pub struct Scripted {
    pub verdict: Mutex<Verdict>,
}

impl Scripted {
    pub fn new(v: Verdict) -> Arc<Scripted> {
        Arc::new(Scripted { verdict: Mutex::new(v) })
    }
    pub fn set(&self, v: Verdict) {
        *self.verdict.lock().unwrap() = v;
    }
}

impl Analyzer for Scripted {
    fn analyse(&self, ctx: AnalysisContext) -> BoxFut<'_, AnalysisReport> {
        let verdict = *self.verdict.lock().unwrap();
        Box::pin(async move {
            let (value, result) = match verdict {
                Verdict::Fail => (97.25, MetricVerdict::Fail),
                _ => (99.9, MetricVerdict::Pass),
            };
            let m = vane::fixtures::success_rate(Some(value), result);
            let summary = format!("request-success-rate {value} (min 99)");
            AnalysisReport { at: ctx.now, verdict, metrics: vec![m], summary }
        })
    }
}

/// Runs the policy's `rollout` and `rollback` hooks each analysis with Flagger's meaning, the way the
/// Prometheus analyzer does: a `rollout` hook that does not answer 2xx is a failed check; a `rollback`
/// hook answering 2xx rolls back now.
pub struct Hooked {
    pub hooks: Arc<dyn HookRunner>,
}

impl Analyzer for Hooked {
    fn analyse(&self, ctx: AnalysisContext) -> BoxFut<'_, AnalysisReport> {
        Box::pin(async move {
            let r = &ctx.rollout;
            let rb = r.policy.webhooks.of(HookKind::Rollback).to_vec();
            if !rb.is_empty() {
                let o = self.hooks.call(HookKind::Rollback, rb, r).await;
                if o.ok {
                    return AnalysisReport {
                        at: ctx.now,
                        verdict: Verdict::Rollback,
                        metrics: vec![],
                        summary: o.message,
                    };
                }
            }
            let ro = r.policy.webhooks.of(HookKind::Rollout).to_vec();
            if !ro.is_empty() {
                let o = self.hooks.call(HookKind::Rollout, ro, r).await;
                if !o.ok {
                    return AnalysisReport { at: ctx.now, verdict: Verdict::Fail, metrics: vec![], summary: o.message };
                }
            }
            AnalysisReport { at: ctx.now, verdict: Verdict::Pass, metrics: vec![], summary: "hooks passed".into() }
        })
    }
}
