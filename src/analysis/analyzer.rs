//! [`PromAnalyzer`]: one analysis of a rollout — the policy's metrics queried in Prometheus at the
//! evaluation time, judged (threshold or sequential), plus the policy's `rollout`/`rollback` hooks.
//!
//! Stateless on purpose: every number comes from Prometheus at `now` (the threshold judge over one
//! window, the sequential judge over the whole current step), and the only evidence kept between
//! steps (the sequential judge's e-value) rides in the rollout's persisted `lastAnalysis`, so a
//! restart loses nothing.

mod streams;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::judge::{self, Counts, SequentialConfig, SequentialDecision, SequentialInput};
use super::prometheus::{ConfigError, PromClient, QueryError, Scalar};
use super::templates::{self, Scope, Target};
use super::{AnalysisContext, AnalysisReport, Analyzer, MetricResult, MetricVerdict, Verdict};
use crate::BoxFut;
use crate::config;
use crate::human::number as fmt;
use crate::policy::{HookKind, JudgeKind, MetricSpec};
use crate::rollout::ports::HookRunner;
use crate::rollout::{Millis, Rollout};
use crate::telemetry::Metrics;

pub struct PromAnalyzer {
    prom: PromClient,
    hooks: Arc<dyn HookRunner>,
    min_window: Duration,
}

impl PromAnalyzer {
    pub fn new(prom: PromClient, hooks: Arc<dyn HookRunner>, min_window: Duration) -> PromAnalyzer {
        PromAnalyzer { prom, hooks, min_window }
    }

    /// From the daemon's `[prometheus]` section; secrets come from the process environment.
    pub fn from_config(
        cfg: &config::Prometheus,
        hooks: Arc<dyn HookRunner>,
        metrics: Arc<Metrics>,
    ) -> Result<PromAnalyzer, ConfigError> {
        let prom = PromClient::from_config(cfg, |k| std::env::var(k).ok(), Some(metrics))?;
        Ok(PromAnalyzer::new(prom, hooks, cfg.min_window))
    }

    async fn run(&self, ctx: AnalysisContext) -> AnalysisReport {
        let r = &ctx.rollout;
        let (hooks, metrics) = tokio::join!(self.hooks(r), self.metrics(r, ctx.now));
        let mut results = metrics.results;
        results.extend(hooks.results);
        let verdicts: Vec<MetricVerdict> = results.iter().map(|m| m.result).collect();
        let verdict = if hooks.rollback || metrics.regression {
            Verdict::Rollback
        } else {
            match judge::combine(&verdicts, r.policy.on_no_data) {
                Verdict::NoData if metrics.collecting => Verdict::Collecting,
                v => v,
            }
        };
        let summary = summary(verdict, &results);
        AnalysisReport { at: ctx.now, verdict, metrics: results, summary }
    }

    /// `rollout` hooks: a non-2xx is one failed check. `rollback` hooks: a 2xx rolls back now.
    async fn hooks(&self, r: &Rollout) -> HookResults {
        let mut out = HookResults::default();
        let hooks = &r.policy.webhooks;
        if !hooks.rollout.is_empty() {
            let o = self.hooks.call(HookKind::Rollout, hooks.rollout.clone(), r).await;
            let result = if o.ok { MetricVerdict::Pass } else { MetricVerdict::Fail };
            out.results.push(result_of("hook:rollout", None, result, o.message, Value::Null));
        }
        if !hooks.rollback.is_empty() {
            let o = self.hooks.call(HookKind::Rollback, hooks.rollback.clone(), r).await;
            out.rollback = o.ok;
            let (result, msg) = if o.ok {
                (MetricVerdict::Fail, format!("rollback hook asked to roll back: {}", o.message))
            } else {
                (MetricVerdict::Pass, "rollback hooks did not ask to roll back".to_string())
            };
            out.results.push(result_of("hook:rollback", None, result, msg, Value::Null));
        }
        out
    }

    async fn metrics(&self, r: &Rollout, now: Millis) -> MetricResults {
        if r.policy.metrics.is_empty() {
            return MetricResults::default();
        }
        match r.policy.judge {
            JudgeKind::Threshold => self.threshold(r, now).await,
            JudgeKind::Sequential => self.sequential(r, now).await,
            JudgeKind::Adaptive => self.adaptive(r, now).await,
        }
    }

    fn window(&self, d: Duration) -> String {
        templates::promql_duration(d.max(self.min_window))
    }

    /// Every metric against its bounds over the last interval — or over the whole step while the
    /// interval alone has fewer than `minRequests` canary requests (`minRequests` counts the step).
    async fn threshold(&self, r: &Rollout, now: Millis) -> MetricResults {
        let scope = Scope::of(r);
        let mut window = self.window(r.policy.interval);
        let min = r.policy.min_requests as f64;
        if min > 0.0 {
            let step_window = self.window(Duration::from_millis(now.saturating_sub(r.step_started_at)));
            let mut n = match self.canary_requests(&scope, &window, now).await {
                Ok(n) => n,
                Err(p) => return p.for_all(r, Value::Null),
            };
            if n < min && step_window != window {
                window = step_window;
                n = match self.canary_requests(&scope, &window, now).await {
                    Ok(n) => n,
                    Err(p) => return p.for_all(r, Value::Null),
                };
            }
            if let Some(short) = under_min(r, n, &window) {
                return short.for_all(r, step_stats(r, n, json!({ "judge": "threshold" })));
            }
        }
        let specs: Vec<&MetricSpec> = r.policy.metrics.iter().collect();
        MetricResults { results: self.bounded(&specs, &scope, &window, now).await, ..Default::default() }
    }

    /// The canary's requests in `window` (no series: 0).
    async fn canary_requests(&self, scope: &Scope, window: &str, now: Millis) -> Result<f64, Problem> {
        let q = templates::builtin("request-count", scope, Target::Canary, window)
            .map_err(|e| Problem::Error(format!("template: {e}")))?;
        count(self.prom.scalar(&q, now).await, &q)
    }

    /// Query each metric for the canary and compare it with its bounds (no bound: reported only).
    async fn bounded(&self, specs: &[&MetricSpec], scope: &Scope, window: &str, now: Millis) -> Vec<MetricResult> {
        let mut set = JoinSet::new();
        for (i, m) in specs.iter().enumerate() {
            let query = match (&m.template, &m.query) {
                (Some(t), _) => templates::builtin(t, scope, Target::Canary, window),
                (None, Some(q)) => templates::custom(q, scope, Target::Canary, window),
                (None, None) => Err(templates::TemplateError::UnknownTemplate(String::new())),
            };
            let prom = self.prom.clone();
            set.spawn(async move {
                let answer = match &query {
                    Ok(q) => Some(prom.scalar(q, now).await),
                    Err(_) => None,
                };
                (i, query, answer)
            });
        }
        let mut out: Vec<Option<MetricResult>> = vec![None; specs.len()];
        while let Some(joined) = set.join_next().await {
            let Ok((i, query, answer)) = joined else { continue };
            let m = specs[i];
            let (min, max) = (m.min.map(|b| b.value()), m.max.map(|b| b.value()));
            let result = match (query, answer) {
                (Err(e), _) => metric(m, None, MetricVerdict::Error, format!("template: {e}"), Value::Null),
                (Ok(q), Some(a)) => judge_answer(m, &q, a, min, max),
                (Ok(q), None) => metric(m, None, MetricVerdict::Error, "not queried".into(), json!({ "query": q })),
            };
            out[i] = Some(result);
        }
        // A task that panicked is reported rather than silently dropped.
        out.into_iter()
            .zip(specs)
            .map(|(r, m)| {
                r.unwrap_or_else(|| metric(m, None, MetricVerdict::Error, "query task failed".into(), Value::Null))
            })
            .collect()
    }

    /// Error-rate metrics: canary vs stable with the sequential test over the current step; the
    /// other metrics (latency, counts, custom queries) keep their bounds.
    async fn sequential(&self, r: &Rollout, now: Millis) -> MetricResults {
        let scope = Scope::of(r);
        let elapsed = Duration::from_millis(now.saturating_sub(r.step_started_at));
        let step_window = self.window(elapsed);
        let (canary, stable) = match self.step_counts(&scope, &step_window, now).await {
            Ok(c) => c,
            Err(p) => return p.for_all(r, sequential_carry_stats(r)),
        };
        if let Some(short) = under_min(r, canary.requests, &step_window) {
            return short.for_all(r, step_stats(r, canary.requests, sequential_carry_stats(r)));
        }
        let (seq_specs, other): (Vec<&MetricSpec>, Vec<&MetricSpec>) =
            r.policy.metrics.iter().partition(|m| m.template.as_deref().is_some_and(templates::is_error_template));
        let mut results = self.bounded(&other, &scope, &self.window(r.policy.interval), now).await;
        let mut regression = false;
        if !seq_specs.is_empty() {
            let spec = r.policy.sequential();
            let blocks = r.steps().iter().filter(|w| **w < 100).count().max(1) as u32;
            let cfg = SequentialConfig { alpha: spec.alpha, tolerance_pp: spec.tolerance, blocks };
            let max_step = spec.max_step_duration.unwrap_or(r.policy.interval * 5);
            let (carry, _) = carry_state(r);
            let input = SequentialInput { canary, stable, carry_log_e: carry, at_max_duration: elapsed >= max_step };
            let stats = (stable.requests > 0.0).then(|| judge::sequential(&cfg, &input));
            regression = stats.as_ref().is_some_and(|s| s.decision == SequentialDecision::Regression);
            for m in &seq_specs {
                results.push(sequential_result(m, r, canary, stats.as_ref(), &step_window));
            }
        }
        let position = |name: &str| r.policy.metrics.iter().position(|m| m.name == name);
        results.sort_by_key(|m| position(&m.name));
        MetricResults { results, regression, collecting: false }
    }

    /// Requests and errors of both versions since the step started.
    async fn step_counts(&self, scope: &Scope, window: &str, now: Millis) -> Result<(Counts, Counts), Problem> {
        let queries = [
            templates::builtin("request-count", scope, Target::Canary, window),
            Ok(templates::error_count(scope, Target::Canary, window)),
            templates::builtin("request-count", scope, Target::Stable, window),
            Ok(templates::error_count(scope, Target::Stable, window)),
        ];
        let mut set = JoinSet::new();
        for (i, q) in queries.into_iter().enumerate() {
            let q = q.map_err(|e| Problem::Error(format!("template: {e}")))?;
            let prom = self.prom.clone();
            set.spawn(async move { (i, prom.scalar(&q, now).await, q) });
        }
        let mut v = [0.0f64; 4];
        while let Some(joined) = set.join_next().await {
            let (i, answer, q) = joined.map_err(|e| Problem::Error(format!("query task failed: {e}")))?;
            v[i] = count(answer, &q)?;
        }
        let c = Counts { requests: v[0], errors: v[1].min(v[0]) };
        let s = Counts { requests: v[2], errors: v[3].min(v[2]) };
        Ok((c, s))
    }
}

impl Analyzer for PromAnalyzer {
    fn analyse(&self, ctx: AnalysisContext) -> BoxFut<'_, AnalysisReport> {
        Box::pin(self.run(ctx))
    }
}

#[derive(Default)]
struct HookResults {
    results: Vec<MetricResult>,
    rollback: bool,
}

#[derive(Default)]
struct MetricResults {
    results: Vec<MetricResult>,
    regression: bool,
    /// No data only because the step has not collected `minRequests` yet (and more arrived).
    collecting: bool,
}

/// Why an analysis could not judge: no data (Prometheus unreachable, NaN, too few requests) or an
/// error (PromQL rejected, several series where one is expected) — the latter never passes.
enum Problem {
    NoData(String),
    Error(String),
    Collecting(String),
}

impl Problem {
    /// Every metric of the policy with this problem (and `stats`, e.g. the carried evidence).
    fn for_all(&self, r: &Rollout, stats: Value) -> MetricResults {
        let (verdict, reason, collecting) = match self {
            Problem::NoData(m) => (MetricVerdict::NoData, m, false),
            Problem::Error(m) => (MetricVerdict::Error, m, false),
            Problem::Collecting(m) => (MetricVerdict::NoData, m, true),
        };
        let results =
            r.policy.metrics.iter().map(|m| metric(m, None, verdict, reason.clone(), stats.clone())).collect();
        MetricResults { results, regression: false, collecting }
    }
}

/// A count query's answer: no series is 0; NaN/±Inf is no data (never "0 errors"); several series
/// or rejected PromQL is an error.
fn count(answer: Result<Scalar, QueryError>, q: &str) -> Result<f64, Problem> {
    match answer {
        Ok(Scalar::Value(x)) if x.is_finite() => Ok(x.max(0.0)),
        Ok(Scalar::Value(x)) => Err(Problem::NoData(format!("no data: {q} returned {x}"))),
        Ok(Scalar::Empty) => Ok(0.0),
        Ok(Scalar::Ambiguous(s)) => Err(Problem::Error(format!("{} series where one is expected: {q}", s.len()))),
        Err(e @ QueryError::Unreachable(_)) => Err(Problem::NoData(e.to_string())),
        Err(e @ QueryError::Rejected(_)) => Err(Problem::Error(e.to_string())),
    }
}

/// Fewer than `minRequests` canary requests in `window` (the step so far): `None` when there are
/// enough. More than at the last analysis of this step is *collecting* — the step extends and the
/// progress deadline starts over; no new request is no data.
fn under_min(r: &Rollout, n: f64, window: &str) -> Option<Problem> {
    let min = r.policy.min_requests;
    if n >= (min as f64).max(f64::MIN_POSITIVE) {
        return None;
    }
    let short = format!("{} canary requests in {window} < minRequests {min}", fmt(n));
    Some(if n > previous_step_requests(r) {
        Problem::Collecting(format!("collecting: {short} (counted over the step; the step extends until it has them)"))
    } else if n > 0.0 {
        Problem::NoData(format!("{short}, none since the last analysis"))
    } else {
        Problem::NoData(short)
    })
}

/// `stats` with the step and its canary requests so far, for the next analysis' [`under_min`].
fn step_stats(r: &Rollout, canary_requests: f64, stats: Value) -> Value {
    let mut o = match stats {
        Value::Object(o) => o,
        _ => serde_json::Map::new(),
    };
    o.insert("stepStartedAt".into(), json!(r.step_started_at));
    o.insert("stepCanaryRequests".into(), json!(canary_requests));
    Value::Object(o)
}

/// The canary requests of this step at the last analysis (0 if it was another step).
fn previous_step_requests(r: &Rollout) -> f64 {
    r.last_analysis
        .iter()
        .flat_map(|a| &a.metrics)
        .filter(|m| m.stats["stepStartedAt"].as_u64() == Some(r.step_started_at))
        .filter_map(|m| m.stats["stepCanaryRequests"].as_f64())
        .fold(0.0, f64::max)
}

fn result_of(name: &str, value: Option<f64>, result: MetricVerdict, message: String, stats: Value) -> MetricResult {
    MetricResult { name: name.into(), value, min: None, max: None, result, message: Some(message), stats }
}

fn metric(m: &MetricSpec, value: Option<f64>, result: MetricVerdict, message: String, stats: Value) -> MetricResult {
    MetricResult {
        name: m.name.clone(),
        value: value.filter(|v| v.is_finite()),
        min: m.min.map(|b| b.value()),
        max: m.max.map(|b| b.value()),
        result,
        message: Some(message),
        stats,
    }
}

/// One query's answer judged against the metric's bounds.
fn judge_answer(
    m: &MetricSpec,
    q: &str,
    a: Result<Scalar, QueryError>,
    min: Option<f64>,
    max: Option<f64>,
) -> MetricResult {
    let stats = json!({ "judge": "threshold", "query": q });
    match a {
        Ok(Scalar::Value(v)) => {
            let verdict = if min.is_none() && max.is_none() && v.is_finite() {
                MetricVerdict::Pass
            } else {
                judge::threshold(Some(v), min, max)
            };
            let msg = match verdict {
                MetricVerdict::NoData => format!("no data: the query returned {v} (no requests in the window?)"),
                MetricVerdict::Fail if min.is_some_and(|b| v < b) => {
                    format!("{} < min {}", fmt(v), fmt(min.unwrap_or_default()))
                }
                MetricVerdict::Fail => format!("{} > max {}", fmt(v), fmt(max.unwrap_or_default())),
                _ => fmt(v),
            };
            metric(m, Some(v), verdict, msg, stats)
        }
        Ok(Scalar::Empty) => metric(m, None, MetricVerdict::NoData, "no data: no series in the window".into(), stats),
        Ok(Scalar::Ambiguous(series)) => {
            let shown: Vec<&str> = series.iter().take(3).map(String::as_str).collect();
            let msg = format!(
                "{} series where one is expected ({}{}); aggregate the query, e.g. sum(...)",
                series.len(),
                shown.join(", "),
                if series.len() > 3 { ", ..." } else { "" }
            );
            metric(m, None, MetricVerdict::Error, msg, stats)
        }
        Err(e @ QueryError::Unreachable(_)) => metric(m, None, MetricVerdict::NoData, e.to_string(), stats),
        Err(e @ QueryError::Rejected(_)) => metric(m, None, MetricVerdict::Error, e.to_string(), stats),
    }
}

/// The sequential test's result as one metric (value in the template's unit: percent).
fn sequential_result(
    m: &MetricSpec,
    r: &Rollout,
    canary: Counts,
    stats: Option<&judge::SequentialStats>,
    window: &str,
) -> MetricResult {
    let as_metric =
        |error_pct: f64| if m.template.as_deref() == Some("success-rate") { 100.0 - error_pct } else { error_pct };
    let rate = as_metric(canary.rate() * 100.0);
    let value = Some(rate);
    let Some(st) = stats else {
        // No concurrent stable traffic (e.g. blue/green after the flip): fall back to the bounds.
        let (min, max) = (m.min.map(|b| b.value()), m.max.map(|b| b.value()));
        let mut res = if min.is_none() && max.is_none() {
            metric(m, value, MetricVerdict::NoData, "no stable traffic to compare the canary with".into(), Value::Null)
        } else {
            judge_answer(m, "", Ok(Scalar::Value(rate)), min, max)
        };
        res.stats = sequential_carry_stats(r);
        return res;
    };
    let e = |l: f64| fmt(l.exp());
    let (result, msg) = match st.decision {
        SequentialDecision::Regression => (
            MetricVerdict::Fail,
            format!(
                "canary {}% vs stable {}% errors: regression beyond {} pp established (e-value {} ≥ {})",
                fmt(st.canary_error_rate),
                fmt(st.stable_error_rate),
                fmt(st.tolerance_pp),
                e(st.carry_out()),
                e(st.log_bound)
            ),
        ),
        SequentialDecision::NotWorse => (
            MetricVerdict::Pass,
            format!(
                "canary shown not worse than stable + {} pp (e-value {})",
                fmt(st.tolerance_pp),
                e(st.not_worse_log_e)
            ),
        ),
        SequentialDecision::NoHarm => (
            MetricVerdict::Pass,
            format!("step's maximum duration reached with no evidence of harm (e-value {})", e(st.carry_out())),
        ),
        SequentialDecision::Continue => (
            MetricVerdict::Inconclusive,
            format!(
                "canary {}% vs stable {}% errors: no conclusion yet (harm e-value {}, not-worse e-value {}, bound {})",
                fmt(st.canary_error_rate),
                fmt(st.stable_error_rate),
                e(st.carry_out()),
                e(st.not_worse_log_e),
                e(st.log_bound)
            ),
        ),
    };
    let mut stats = serde_json::to_value(st).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut stats {
        o.insert("stepStartedAt".into(), json!(r.step_started_at));
        o.insert("window".into(), json!(window));
    }
    MetricResult { name: m.name.clone(), value, min: None, max: None, result, message: Some(msg), stats }
}

/// The harm evidence of earlier steps (to multiply into this step's) and this step's last value,
/// read back from the persisted `lastAnalysis`.
fn carry_state(r: &Rollout) -> (f64, f64) {
    let Some(last) = &r.last_analysis else { return (0.0, 0.0) };
    let Some(st) = last.metrics.iter().map(|m| &m.stats).find(|s| s["judge"] == "sequential") else {
        return (0.0, 0.0);
    };
    let num = |k: &str| st[k].as_f64().filter(|v| v.is_finite()).unwrap_or(0.0);
    let (carry, block) = (num("harmLogECarry"), num("harmLogE"));
    if st["stepStartedAt"].as_u64() == Some(r.step_started_at) { (carry, block) } else { (carry + block, 0.0) }
}

/// What a no-data sequential result keeps so the next analysis still finds the carried evidence.
fn sequential_carry_stats(r: &Rollout) -> Value {
    if r.policy.judge != JudgeKind::Sequential {
        return Value::Null;
    }
    let (carry, block) = carry_state(r);
    json!({ "judge": "sequential", "stepStartedAt": r.step_started_at, "harmLogECarry": carry, "harmLogE": block })
}

fn summary(verdict: Verdict, results: &[MetricResult]) -> String {
    let line = |want: &[MetricVerdict]| -> Vec<String> {
        results
            .iter()
            .filter(|m| want.contains(&m.result))
            .map(|m| format!("{}: {}", m.name, m.message.as_deref().unwrap_or(m.result.as_str())))
            .collect()
    };
    let parts = match verdict {
        Verdict::Rollback | Verdict::Fail => line(&[MetricVerdict::Fail]),
        Verdict::NoData => {
            let errors = line(&[MetricVerdict::Error]);
            if errors.is_empty() { line(&[MetricVerdict::NoData]).into_iter().take(1).collect() } else { errors }
        }
        Verdict::Inconclusive => line(&[MetricVerdict::Inconclusive]),
        Verdict::Collecting => line(&[MetricVerdict::NoData]).into_iter().take(1).collect(),
        Verdict::Error => line(&[MetricVerdict::Error]),
        Verdict::Pass if results.is_empty() => vec!["no metrics: time-based".into()],
        Verdict::Pass => {
            let passed = results.iter().filter(|m| m.result == MetricVerdict::Pass).count();
            let mut parts = vec![format!("{passed} of {} checks pass", results.len())];
            // The adaptive judge's evidence, once per stream: why the step may advance.
            let mut seen = vec![];
            for m in results.iter().filter(|m| m.stats["judge"] == "adaptive" && m.stats["decision"].is_string()) {
                if !seen.contains(&&m.stats["stream"]) {
                    seen.push(&m.stats["stream"]);
                    parts.push(format!("{}: {}", m.name, m.message.as_deref().unwrap_or("pass")));
                }
            }
            parts
        }
    };
    parts.join("; ")
}
