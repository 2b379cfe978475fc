//! Logs (tracing) and the daemon's own metrics (prometheus-client), listed in docs/reference/metrics.md.
//!
//! Deprecated names are still exposed for one release, as duplicates of their successors:
//! `vane_info` (now `vane_build_info`) and `vane_analysis_value` / `vane_analysis_threshold` (which mix
//! percent, milliseconds and counts; now one family per unit).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::rollout::ports::{AnalysisReport, MetricVerdict, RolloutMetrics};
use crate::rollout::{Millis, Phase, Rollout};

/// Human-readable logs by default, JSON lines for machines. `RUST_LOG` filters (default `info`).
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub namespace: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub service: String,
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabels {
    pub namespace: String,
    pub service: String,
    pub metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BoundLabels {
    pub namespace: String,
    pub service: String,
    pub metric: String,
    pub bound: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub namespace: String,
    pub service: String,
    pub metric: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub strategy: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouterLabels {
    pub router: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// The unit of an analysis metric, from its template; each unit has its own families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// success-rate, error-rate.
    Percent,
    /// latency-* templates report milliseconds; exposed in seconds, the base unit.
    Seconds,
    /// request-count.
    Requests,
    /// A policy's own `query:`: whatever unit the query returns.
    Custom,
}

impl Unit {
    const ALL: [Unit; 4] = [Unit::Percent, Unit::Seconds, Unit::Requests, Unit::Custom];

    pub fn of(template: Option<&str>) -> Unit {
        match template {
            Some("success-rate" | "error-rate") => Unit::Percent,
            Some(t) if t.starts_with("latency-") => Unit::Seconds,
            Some("request-count") => Unit::Requests,
            _ => Unit::Custom,
        }
    }

    /// (value family, threshold family) names, without the `vane_` prefix.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Unit::Percent => ("analysis_value_percent", "analysis_threshold_percent"),
            Unit::Seconds => ("analysis_value_seconds", "analysis_threshold_seconds"),
            Unit::Requests => ("analysis_value_requests", "analysis_threshold_requests"),
            Unit::Custom => ("analysis_custom_value", "analysis_custom_threshold"),
        }
    }

    /// From the unit the analysis reports in to the exposed one.
    fn scale(self, v: f64) -> f64 {
        if self == Unit::Seconds { v / 1000.0 } else { v }
    }
}

/// The value and threshold families of one unit.
#[derive(Default)]
struct UnitFamilies {
    value: Family<MetricLabels, FGauge>,
    threshold: Family<BoundLabels, FGauge>,
}

/// Reads the notification outbox at scrape time: (entries waiting, age of the oldest in seconds).
pub type OutboxProbe = Box<dyn Fn() -> (i64, f64) + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    pub weight: Family<ServiceLabels, Gauge>,
    pub phase: Family<PhaseLabels, Gauge>,
    pub failed_checks: Family<ServiceLabels, Gauge>,
    pub analysis_value: Family<MetricLabels, FGauge>,
    pub analysis_threshold: Family<BoundLabels, FGauge>,
    pub analysis_checks: Family<CheckLabels, Counter>,
    pub rollouts: Family<ResultLabels, Counter>,
    pub rollout_duration: Family<ResultLabels, Histogram>,
    pub rollback_seconds: Histogram,
    pub router_requests: Family<RouterLabels, Counter>,
    pub prometheus_query_seconds: Histogram,
    pub prometheus_query_errors: Counter,
    pub webhook_deliveries: Family<WebhookLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_request_seconds: Family<RouteLabels, Histogram>,
    pub store_commit_seconds: Histogram,
    outbox_depth: Gauge,
    outbox_oldest_age: FGauge,
    outbox_probe: Mutex<Option<OutboxProbe>>,
    units: [UnitFamilies; 4],
    retention: Duration,
    series: Mutex<Series>,
}

/// What is needed to drop a service's series once its rollout has finished.
#[derive(Default)]
struct Series {
    /// Analysis metric names each service has reported (so every series can be removed, even those of
    /// an earlier rollout of the same service whose policy had other metrics).
    metrics: HashMap<ServiceLabels, BTreeSet<String>>,
    /// Services whose rollout finished, and when.
    finished: HashMap<ServiceLabels, Instant>,
}

/// Label values known in advance. Their series are created at zero on start: a counter that first
/// appears with value 1 is invisible to `rate()`/`increase()`, so without them the first rollout,
/// failure or delivery would never show on a dashboard or trigger an alert.
const STRATEGIES: [&str; 2] = ["canary", "blue-green"];
const RESULTS: [Phase; 4] = [Phase::Succeeded, Phase::RolledBack, Phase::Aborted, Phase::Failed];
const ROUTER_KINDS: [&str; 5] = ["istio", "nginx-ingress", "gateway-api", "nginx", "exec"];
const DELIVERY_KINDS: [&str; 3] = ["webhook", "slack", "hook"];
const CALL_RESULTS: [&str; 2] = ["ok", "error"];
const CHECK_RESULTS: [MetricVerdict; 5] = [
    MetricVerdict::Pass,
    MetricVerdict::Fail,
    MetricVerdict::NoData,
    MetricVerdict::Inconclusive,
    MetricVerdict::Error,
];

impl Metrics {
    pub fn new(retention: Duration) -> Metrics {
        let mut registry = Registry::with_prefix("vane");
        let m = Metrics {
            weight: Family::default(),
            phase: Family::default(),
            failed_checks: Family::default(),
            analysis_value: Family::default(),
            analysis_threshold: Family::default(),
            analysis_checks: Family::default(),
            rollouts: Family::default(),
            rollout_duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(30.0, 2.0, 10))),
            rollback_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            router_requests: Family::default(),
            prometheus_query_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            prometheus_query_errors: Counter::default(),
            webhook_deliveries: Family::default(),
            http_requests: Family::default(),
            http_request_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14))),
            store_commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            outbox_depth: Gauge::default(),
            outbox_oldest_age: FGauge::default(),
            outbox_probe: Mutex::default(),
            units: Default::default(),
            retention,
            series: Mutex::default(),
            registry: Registry::default(),
        };
        // Gauges, not an OpenMetrics Info (which would be exposed as `vane_build_info_info`).
        let info = Family::<Vec<(String, String)>, Gauge>::default();
        info.get_or_create(&vec![("version".to_string(), crate::VERSION.to_string())]).set(1);
        registry.register("build_info", "vane build information", info.clone());
        registry.register("info", "Deprecated: use vane_build_info", info);
        registry.register("rollout_weight", "Decided canary weight in percent", m.weight.clone());
        registry.register("rollout_phase", "1 for the rollout's current phase", m.phase.clone());
        registry.register(
            "rollout_failed_checks",
            "Failed analysis checks of the current rollout",
            m.failed_checks.clone(),
        );
        registry.register(
            "analysis_value",
            "Deprecated (mixes units): use vane_analysis_value_<unit> or vane_analysis_custom_value",
            m.analysis_value.clone(),
        );
        registry.register(
            "analysis_threshold",
            "Deprecated (mixes units): use vane_analysis_threshold_<unit> or vane_analysis_custom_threshold",
            m.analysis_threshold.clone(),
        );
        for (unit, f) in Unit::ALL.iter().zip(&m.units) {
            let (value, threshold) = unit.names();
            let what = match unit {
                Unit::Percent => "in percent",
                Unit::Seconds => "in seconds",
                Unit::Requests => "in requests",
                Unit::Custom => "of a policy's own query",
            };
            registry.register(value, format!("Last analysed value of a metric {what}"), f.value.clone());
            registry.register(threshold, format!("Bound a metric {what} is judged against"), f.threshold.clone());
        }
        registry.register("analysis_checks", "Analysis results per metric", m.analysis_checks.clone());
        registry.register("rollouts", "Finished rollouts by result", m.rollouts.clone());
        registry.register(
            "rollout_duration_seconds",
            "Rollout duration from create to finish",
            m.rollout_duration.clone(),
        );
        registry.register(
            "rollback_seconds",
            "From the rollback decision to traffic restored",
            m.rollback_seconds.clone(),
        );
        registry.register("router_requests", "Router calls by result", m.router_requests.clone());
        registry.register("prometheus_query_seconds", "Prometheus query latency", m.prometheus_query_seconds.clone());
        registry.register(
            "prometheus_query_errors",
            "Prometheus queries that failed",
            m.prometheus_query_errors.clone(),
        );
        registry.register("webhook_deliveries", "Outbound webhook and Slack deliveries", m.webhook_deliveries.clone());
        registry.register("http_requests", "REST API requests by route and status", m.http_requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "REST API request latency by route",
            m.http_request_seconds.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "A transition with its events written and flushed to disk",
            m.store_commit_seconds.clone(),
        );
        registry.register("outbox_depth", "Notifications waiting for delivery, all sinks", m.outbox_depth.clone());
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest notification waiting for delivery (0 when none waits)",
            m.outbox_oldest_age.clone(),
        );
        for strategy in STRATEGIES {
            for result in RESULTS {
                let l = ResultLabels { strategy: strategy.into(), result: result.as_str().into() };
                let _ = m.rollouts.get_or_create(&l);
                let _ = m.rollout_duration.get_or_create(&l);
            }
        }
        for result in CALL_RESULTS {
            for router in ROUTER_KINDS {
                let _ = m.router_requests.get_or_create(&RouterLabels { router: router.into(), result: result.into() });
            }
            for kind in DELIVERY_KINDS {
                let _ = m.webhook_deliveries.get_or_create(&WebhookLabels { kind: kind.into(), result: result.into() });
            }
        }
        Metrics { registry, ..m }
    }

    pub fn encode(&self) -> String {
        self.sweep();
        if let Ok(p) = self.outbox_probe.lock()
            && let Some(probe) = p.as_ref()
        {
            let (depth, age) = probe();
            self.outbox_depth.set(depth);
            self.outbox_oldest_age.set(age);
        }
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// Reflect a rollout's current state in the gauges; count it when it finishes.
    pub fn observe(&self, r: &Rollout, finished_now: bool, now_ms: u64) {
        let svc = ServiceLabels { namespace: r.namespace.clone(), service: r.service.clone() };
        self.weight.get_or_create(&svc).set(r.canary_weight as i64);
        self.failed_checks.get_or_create(&svc).set(r.failed_checks as i64);
        for p in Phase::ALL {
            let l = PhaseLabels { namespace: r.namespace.clone(), service: r.service.clone(), phase: p.as_str() };
            self.phase.get_or_create(&l).set((p == r.phase) as i64);
        }
        if finished_now {
            let res = ResultLabels { strategy: strategy_label(r), result: r.phase.as_str().into() };
            self.rollouts.get_or_create(&res).inc();
            let secs = now_ms.saturating_sub(r.created_at) as f64 / 1000.0;
            self.rollout_duration.get_or_create(&res).observe(secs);
            if let Some(start) = r.rollback_started_at
                && matches!(r.phase, Phase::RolledBack | Phase::Aborted)
            {
                self.rollback_seconds.observe(now_ms.saturating_sub(start) as f64 / 1000.0);
            }
            if let Ok(mut s) = self.series.lock() {
                s.finished.insert(svc, Instant::now());
            }
        } else if !r.is_terminal()
            && let Ok(mut s) = self.series.lock()
        {
            // The service has a live rollout again: its series stay.
            s.finished.remove(&svc);
        }
    }

    pub fn observe_analysis(&self, r: &Rollout, a: &AnalysisReport) {
        let svc = ServiceLabels { namespace: r.namespace.clone(), service: r.service.clone() };
        if let Ok(mut s) = self.series.lock() {
            s.metrics.entry(svc).or_default().extend(a.metrics.iter().map(|m| m.name.clone()));
        }
        for m in &a.metrics {
            let l = MetricLabels { namespace: r.namespace.clone(), service: r.service.clone(), metric: m.name.clone() };
            let spec = r.policy.metrics.iter().find(|s| s.name == m.name);
            let unit = Unit::of(spec.and_then(|s| s.template.as_deref()));
            let fam = &self.units[Unit::ALL.iter().position(|u| *u == unit).unwrap_or(3)];
            if let Some(v) = m.value.filter(|v| v.is_finite()) {
                self.analysis_value.get_or_create(&l).set(v);
                fam.value.get_or_create(&l).set(unit.scale(v));
            }
            for (bound, v) in [("min", m.min), ("max", m.max)] {
                if let Some(v) = v {
                    let b = BoundLabels {
                        namespace: l.namespace.clone(),
                        service: l.service.clone(),
                        metric: l.metric.clone(),
                        bound: bound.into(),
                    };
                    self.analysis_threshold.get_or_create(&b).set(v);
                    fam.threshold.get_or_create(&b).set(unit.scale(v));
                }
            }
            // Every result at zero first, so the first failure of a metric is an increase.
            for result in CHECK_RESULTS {
                let c = CheckLabels {
                    namespace: l.namespace.clone(),
                    service: l.service.clone(),
                    metric: l.metric.clone(),
                    result: result.as_str().into(),
                };
                let counter = self.analysis_checks.get_or_create(&c);
                if result == m.result {
                    counter.inc();
                }
            }
        }
    }

    /// Read the outbox at every scrape.
    pub fn set_outbox_probe(&self, probe: OutboxProbe) {
        if let Ok(mut p) = self.outbox_probe.lock() {
            *p = Some(probe);
        }
    }

    /// One REST API request; `route` is the matched route template (bounded label values).
    pub fn http_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let method = match method {
            "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" => method,
            _ => "other",
        };
        let l = HttpLabels { method: method.into(), route: route.into(), status: status.to_string() };
        self.http_requests.get_or_create(&l).inc();
        let r = RouteLabels { method: method.into(), route: route.into() };
        self.http_request_seconds.get_or_create(&r).observe(elapsed.as_secs_f64());
    }

    pub fn router_call(&self, router: &str, ok: bool) {
        let l = RouterLabels { router: router.into(), result: if ok { "ok" } else { "error" }.into() };
        self.router_requests.get_or_create(&l).inc();
    }

    pub fn webhook_delivery(&self, kind: &str, ok: bool) {
        let l = WebhookLabels { kind: kind.into(), result: if ok { "ok" } else { "error" }.into() };
        self.webhook_deliveries.get_or_create(&l).inc();
    }

    /// Drop the per-service series of rollouts that finished longer than the retention ago.
    pub fn sweep(&self) {
        let Ok(mut s) = self.series.lock() else {
            return;
        };
        let expired: Vec<_> =
            s.finished.iter().filter(|(_, t)| t.elapsed() >= self.retention).map(|(k, _)| k.clone()).collect();
        for svc in expired {
            s.finished.remove(&svc);
            self.weight.remove(&svc);
            self.failed_checks.remove(&svc);
            for p in Phase::ALL {
                self.phase.remove(&PhaseLabels {
                    namespace: svc.namespace.clone(),
                    service: svc.service.clone(),
                    phase: p.as_str(),
                });
            }
            for metric in s.metrics.remove(&svc).unwrap_or_default() {
                let l = MetricLabels { namespace: svc.namespace.clone(), service: svc.service.clone(), metric };
                self.analysis_value.remove(&l);
                for f in &self.units {
                    f.value.remove(&l);
                }
                for bound in ["min", "max"] {
                    let b = BoundLabels {
                        namespace: l.namespace.clone(),
                        service: l.service.clone(),
                        metric: l.metric.clone(),
                        bound: bound.into(),
                    };
                    self.analysis_threshold.remove(&b);
                    for f in &self.units {
                        f.threshold.remove(&b);
                    }
                }
                for result in CHECK_RESULTS {
                    self.analysis_checks.remove(&CheckLabels {
                        namespace: l.namespace.clone(),
                        service: l.service.clone(),
                        metric: l.metric.clone(),
                        result: result.as_str().into(),
                    });
                }
            }
        }
    }
}

fn strategy_label(r: &Rollout) -> String {
    r.strategy().as_str().into()
}

impl RolloutMetrics for Metrics {
    fn observe(&self, rollout: &Rollout, finished_now: bool, now: Millis) {
        Metrics::observe(self, rollout, finished_now, now)
    }
    fn observe_analysis(&self, rollout: &Rollout, report: &AnalysisReport) {
        Metrics::observe_analysis(self, rollout, report)
    }
    fn router_call(&self, router: &str, ok: bool) {
        Metrics::router_call(self, router, ok)
    }
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
    fn store_commit(&self, seconds: f64) {
        self.store_commit_seconds.observe(seconds)
    }
    fn http_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        Metrics::http_request(self, method, route, status, elapsed)
    }
}
