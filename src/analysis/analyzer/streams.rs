//! The adaptive judge's analysis: canary against stable on two kinds of bad-event streams over the
//! current step — 5xx errors (`success-rate`/`error-rate` metrics) and requests slower than a latency
//! metric's `max` (`latency-p95`/`latency-p99`, counted from the histogram's buckets) — each judged
//! by [`adaptive::evaluate`] with the evidence of earlier steps carried in `lastAnalysis`. Every other
//! metric, and each latency metric's own bound, is a threshold guard over the interval.

use std::time::Duration;

use serde_json::{Value, json};

use super::{MetricResults, Problem, PromAnalyzer, count, fmt, metric, step_stats, under_min};
use crate::analysis::adaptive::{self, AdaptiveConfig, AdaptiveDecision, Block, Evidence};
use crate::analysis::judge::Counts;
use crate::analysis::prometheus::QueryError;
use crate::analysis::templates::{self, Scope, Target};
use crate::analysis::{MetricResult, MetricVerdict};
use crate::policy::MetricSpec;
use crate::rollout::{Millis, Rollout};

/// What the adaptive judge compares for one metric.
#[derive(Clone, Copy, PartialEq)]
enum Stream {
    Errors,
    /// Requests slower than this many milliseconds.
    Slow(f64),
}

fn stream_of(m: &MetricSpec) -> Option<Stream> {
    match m.template.as_deref() {
        Some(t) if templates::is_error_template(t) => Some(Stream::Errors),
        Some("latency-p95" | "latency-p99") => m.max.map(|b| Stream::Slow(b.value())),
        _ => None,
    }
}

fn key(m: &MetricSpec, s: Stream) -> String {
    match s {
        Stream::Errors => "errors".into(),
        Stream::Slow(_) => format!("slow:{}", m.name),
    }
}

/// A stream's evidence from the last analysis: completed steps, this step's last counts, and since
/// when the step has been held.
#[derive(Default)]
struct Carry {
    earlier: Vec<Block>,
    current: Block,
    held_since: Option<Millis>,
}

fn carry(r: &Rollout, key: &str) -> Carry {
    let Some(st) = r
        .last_analysis
        .iter()
        .flat_map(|a| &a.metrics)
        .map(|m| &m.stats)
        .find(|s| s["judge"] == "adaptive" && s["stream"] == key)
    else {
        return Carry::default();
    };
    let earlier: Vec<Block> = serde_json::from_value(st["earlier"].clone()).unwrap_or_default();
    let counts = |k: &str| serde_json::from_value::<Counts>(st[k].clone()).unwrap_or_default();
    let current = Block { canary: counts("canary"), stable: counts("stable") };
    if st["stepStartedAt"].as_u64() == Some(r.step_started_at) {
        Carry { earlier, current, held_since: st["heldSince"].as_u64() }
    } else {
        let mut earlier = earlier;
        if current.canary.requests > 0.0 {
            earlier.push(current);
        }
        Carry { earlier, current: Block::default(), held_since: None }
    }
}

/// What a result without a judgement keeps, so the next analysis still finds the evidence.
fn carry_stats(r: &Rollout, key: &str) -> Value {
    let c = carry(r, key);
    json!({
        "judge": "adaptive", "stream": key, "stepStartedAt": r.step_started_at, "earlier": c.earlier,
        "canary": c.current.canary, "stable": c.current.stable,
    })
}

impl PromAnalyzer {
    pub(super) async fn adaptive(&self, r: &Rollout, now: Millis) -> MetricResults {
        let scope = Scope::of(r);
        let elapsed = Duration::from_millis(now.saturating_sub(r.step_started_at));
        let step_window = self.window(elapsed);
        let streams: Vec<Option<Stream>> = r.policy.metrics.iter().map(stream_of).collect();
        let keep = |canary_requests: Option<f64>| {
            move |m: &MetricSpec| -> Value {
                let stats = stream_of(m).map_or(Value::Null, |s| carry_stats(r, &key(m, s)));
                match canary_requests {
                    Some(n) => step_stats(r, n, stats),
                    None => stats,
                }
            }
        };
        let (canary, stable) = match self.step_counts(&scope, &step_window, now).await {
            Ok(c) => c,
            Err(p) => return for_each(r, &p, keep(None)),
        };
        if let Some(short) = under_min(r, canary.requests, &step_window) {
            return for_each(r, &short, keep(Some(canary.requests)));
        }
        let spec = r.policy.adaptive();
        let mut keys: Vec<String> =
            r.policy.metrics.iter().zip(&streams).filter_map(|(m, s)| s.map(|s| key(m, s))).collect();
        keys.sort();
        keys.dedup();
        // Only the last step before 100 % holds, for what is left of maxHold, measured in this
        // step's traffic so far (see `AdaptiveConfig::hold_left`).
        let last_step = r.steps().get(r.step_index + 1) == Some(&100);
        let max_hold = spec.max_hold.unwrap_or(r.policy.interval * 5).as_millis() as u64;
        let ran = now.saturating_sub(r.step_started_at).max(1) as f64;
        let cfg = |key: &str| {
            let held_since = carry(r, key).held_since;
            let held = held_since.map_or(0, |t| now.saturating_sub(t));
            AdaptiveConfig {
                held: held_since.is_some(),
                alpha: spec.alpha / keys.len().max(1) as f64,
                hold_above: spec.hold_above,
                hold_left: if last_step { max_hold.saturating_sub(held) as f64 / ran } else { 0.0 },
                prior_sd: adaptive::PRIOR_SD,
            }
        };
        // Guards: every metric that is not an error stream keeps its bounds over the interval.
        let guarded: Vec<&MetricSpec> = r
            .policy
            .metrics
            .iter()
            .zip(&streams)
            .filter(|(_, s)| **s != Some(Stream::Errors))
            .map(|(m, _)| m)
            .collect();
        let guards = self.bounded(&guarded, &scope, &self.window(r.policy.interval), now).await;
        let errors = (stable.requests > 0.0).then(|| {
            let c = carry(r, "errors");
            adaptive::evaluate(&cfg("errors"), &c.earlier, Block { canary, stable })
        });
        let mut out = MetricResults::default();
        for (m, s) in r.policy.metrics.iter().zip(&streams) {
            let guard = guards.iter().find(|g| g.name == m.name).cloned();
            let res = match (s, guard) {
                (Some(Stream::Errors), _) => match &errors {
                    Some(ev) => {
                        let value = if m.template.as_deref() == Some("success-rate") {
                            100.0 - ev.canary_rate
                        } else {
                            ev.canary_rate
                        };
                        stream_result(m, r, now, "errors", "errors", Some(value), ev, canary.requests, &step_window)
                    }
                    None => metric(
                        m,
                        None,
                        MetricVerdict::NoData,
                        "no stable traffic to compare the canary with".into(),
                        step_stats(r, canary.requests, carry_stats(r, "errors")),
                    ),
                },
                (Some(Stream::Slow(bound)), Some(guard)) => {
                    let k = key(m, Stream::Slow(*bound));
                    match self.slow_block(&scope, *bound, &step_window, now).await {
                        Ok((block, le_ms)) if block.stable.requests > 0.0 && block.canary.requests > 0.0 => {
                            let ev = adaptive::evaluate(&cfg(&k), &carry(r, &k).earlier, block);
                            let what = format!("requests slower than {} ms", fmt(le_ms));
                            let mut res =
                                stream_result(m, r, now, &k, &what, guard.value, &ev, canary.requests, &step_window);
                            with_guard(&mut res, guard);
                            res
                        }
                        Ok(_) => with_carry(guard, carry_stats(r, &k)),
                        Err(p) => {
                            let (verdict, msg) = match p {
                                Problem::Error(e) => (MetricVerdict::Error, e),
                                Problem::NoData(e) | Problem::Collecting(e) => (MetricVerdict::NoData, e),
                            };
                            // The guard's own failure still counts; otherwise the stream's problem shows.
                            if guard.result == MetricVerdict::Fail {
                                with_carry(guard, carry_stats(r, &k))
                            } else {
                                metric(m, guard.value, verdict, format!("latency buckets: {msg}"), carry_stats(r, &k))
                            }
                        }
                    }
                }
                (_, Some(guard)) => guard,
                (_, None) => metric(m, None, MetricVerdict::Error, "not judged".into(), Value::Null),
            };
            out.regression |= res.stats["decision"] == "regression";
            out.results.push(res);
        }
        out
    }

    /// Requests of both versions over `window` from the latency histogram, and how many were slower
    /// than the largest bucket boundary ≤ `bound_ms` (returned in ms).
    async fn slow_block(
        &self,
        scope: &Scope,
        bound_ms: f64,
        window: &str,
        now: Millis,
    ) -> Result<(Block, f64), Problem> {
        let (qc, unit) = templates::latency_buckets(scope, Target::Canary, window);
        let (qs, _) = templates::latency_buckets(scope, Target::Stable, window);
        let (c, s) = tokio::join!(self.prom.by_label(&qc, "le", now), self.prom.by_label(&qs, "le", now));
        let (c, le_c) = slow_counts(c, bound_ms, unit, &qc)?;
        let (s, le_s) = slow_counts(s, bound_ms, unit, &qs)?;
        Ok((Block { canary: c, stable: s }, le_c.max(le_s)))
    }
}

/// From `sum by (le)` bucket counts: all requests (`+Inf`) and those above the largest boundary
/// ≤ the bound. Requests between that boundary and the bound count as slow: put bounds on
/// boundaries. No buckets is zero requests; a NaN count is no data.
fn slow_counts(
    answer: Result<Vec<(String, f64)>, QueryError>,
    bound_ms: f64,
    ms_per_unit: f64,
    q: &str,
) -> Result<(Counts, f64), Problem> {
    let buckets = match answer {
        Ok(b) => b,
        Err(e) => return Err(count(Err(e), q).err().unwrap_or(Problem::NoData(String::new()))),
    };
    let mut total = None;
    let (mut le_used, mut fast) = (0.0f64, 0.0f64);
    for (le, v) in buckets {
        if !v.is_finite() {
            return Err(Problem::NoData(format!("no data: bucket le={le} of {q} is {v}")));
        }
        let le_ms = if le == "+Inf" { f64::INFINITY } else { le.parse::<f64>().unwrap_or(f64::NAN) * ms_per_unit };
        if le_ms.is_infinite() {
            total = Some(v);
        } else if le_ms <= bound_ms * (1.0 + 1e-9) && le_ms >= le_used {
            (le_used, fast) = (le_ms, v);
        }
    }
    let total = total.unwrap_or(0.0).max(0.0);
    Ok((Counts { requests: total, errors: (total - fast).clamp(0.0, total) }, le_used))
}

fn for_each(r: &Rollout, p: &Problem, stats: impl Fn(&MetricSpec) -> Value) -> MetricResults {
    let mut out = p.for_all(r, Value::Null);
    for (res, m) in out.results.iter_mut().zip(&r.policy.metrics) {
        res.stats = stats(m);
    }
    out
}

/// A guard's result that also keeps its stream's carried evidence (the stream could not be judged).
fn with_carry(mut res: MetricResult, mut stats: Value) -> MetricResult {
    if let Value::Object(o) = &mut stats {
        o.insert("guard".into(), json!({ "value": res.value, "max": res.max, "result": res.result }));
    }
    res.stats = stats;
    res
}

/// A latency stream's result merged with its threshold guard: an established regression wins, then
/// a breached (or unjudgeable) guard, then a hold.
fn with_guard(res: &mut MetricResult, guard: MetricResult) {
    let stream = res.result;
    if stream != MetricVerdict::Fail && guard.result != MetricVerdict::Pass {
        res.result = guard.result;
        res.message = Some(format!(
            "{} — guard: {}",
            guard.message.as_deref().unwrap_or(guard.result.as_str()),
            res.message.as_deref().unwrap_or_default()
        ));
    }
    res.min = guard.min;
    res.max = guard.max;
    if let Value::Object(o) = &mut res.stats {
        o.insert("guard".into(), json!({ "value": guard.value, "max": guard.max, "result": guard.result }));
    }
}

/// One stream's evidence as a metric result, with a one-line reason.
#[allow(clippy::too_many_arguments)]
fn stream_result(
    m: &MetricSpec,
    r: &Rollout,
    now: Millis,
    key: &str,
    what: &str,
    value: Option<f64>,
    ev: &Evidence,
    canary_requests: f64,
    window: &str,
) -> MetricResult {
    let rates = format!(
        "canary {}% vs stable {}% {what} ({} vs {} requests this step)",
        fmt(ev.canary_rate),
        fmt(ev.stable_rate),
        fmt(ev.canary.requests),
        fmt(ev.stable.requests)
    );
    let (e, bound, hold, lr) = (fmt(ev.e_value), fmt(ev.bound), fmt(ev.hold_from), fmt(ev.likelihood_ratio));
    let lr_text = format!("likelihood ratio of twice the stable rate vs equal {lr}");
    let held_since = carry(r, key).held_since;
    let leaning = ev.suspicious;
    let (result, msg) = match ev.decision {
        AdaptiveDecision::Regression => {
            (MetricVerdict::Fail, format!("{rates}: regression established, e-value {e} ≥ {bound}"))
        }
        AdaptiveDecision::Hold => (
            MetricVerdict::Inconclusive,
            format!(
                "{rates}: suspicious, holding the step for more evidence ({lr_text} ≥ {hold}; e-value {e}, rollback at {bound})"
            ),
        ),
        AdaptiveDecision::Pass if held_since.is_some() && leaning && ev.hold_e_value == 0.0 => (
            MetricVerdict::Pass,
            format!("{rates}: held for maxHold without an established regression (e-value {e} < {bound}), passing"),
        ),
        AdaptiveDecision::Pass if leaning && ev.hold_e_value > 0.0 => (
            MetricVerdict::Pass,
            format!(
                "{rates}: leaning towards harm ({lr_text}), but too little traffic left for a hold to establish it (a canary {}× as bad would reach e-value {} < {bound} by maxHold), passing",
                fmt(ev.hold_ratio),
                fmt(ev.hold_e_value)
            ),
        ),
        AdaptiveDecision::Pass if leaning => (
            MetricVerdict::Pass,
            format!(
                "{rates}: leaning towards harm, not established (e-value {e} < {bound}); the evidence carries into the next step"
            ),
        ),
        AdaptiveDecision::Pass => {
            (MetricVerdict::Pass, format!("{rates}: no evidence of harm ({lr_text}, hold from {hold}; e-value {e})"))
        }
    };
    let mut stats = serde_json::to_value(ev).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut stats {
        o.insert("judge".into(), json!("adaptive"));
        o.insert("stream".into(), json!(key));
        o.insert("window".into(), json!(window));
        let held = (ev.decision == AdaptiveDecision::Hold).then(|| held_since.unwrap_or(now));
        o.insert("heldSince".into(), json!(held));
    }
    let stats = step_stats(r, canary_requests, stats);
    MetricResult { name: m.name.clone(), value, min: None, max: None, result, message: Some(msg), stats }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_evidence_survives_results_that_could_not_judge_the_stream() {
        use crate::analysis::{AnalysisReport, Verdict};
        let policy = crate::fixtures::policy("p", &[5, 25, 50, 100], Duration::from_secs(60), 5);
        let req = crate::fixtures::request("cart", "p");
        let mut r = crate::rollout::machine::create("r".into(), &req, policy, "ci", 1_000).0;
        let block = |e: f64| Block {
            canary: Counts { requests: 300.0, errors: e },
            stable: Counts { requests: 5700.0, errors: 28.0 },
        };
        let stats = json!({ "judge": "adaptive", "stream": "slow:p95", "stepStartedAt": 1_000,
            "earlier": [block(1.0)], "canary": block(3.0).canary, "stable": block(3.0).stable });
        let guard = MetricResult {
            name: "p95".into(),
            value: Some(612.0),
            min: None,
            max: Some(500.0),
            result: MetricVerdict::Fail,
            message: None,
            stats: json!({ "judge": "threshold" }),
        };
        let res = with_carry(guard, stats);
        assert_eq!(res.stats["guard"]["result"], "fail");
        r.last_analysis =
            Some(AnalysisReport { at: 2_000, verdict: Verdict::Fail, metrics: vec![res], summary: String::new() });
        let same_step = carry(&r, "slow:p95");
        assert_eq!((same_step.earlier, same_step.current), (vec![block(1.0)], block(3.0)));
        r.step_started_at = 5_000;
        let next_step = carry(&r, "slow:p95");
        assert_eq!((next_step.earlier, next_step.current), (vec![block(1.0), block(3.0)], Block::default()));
    }

    #[test]
    fn slow_requests_are_counted_above_the_largest_boundary_within_the_bound() {
        let b = |v: &[(&str, f64)]| Ok(v.iter().map(|(l, x)| (l.to_string(), *x)).collect());
        let buckets = [("0.1", 900.0), ("0.25", 960.0), ("0.5", 990.0), ("1", 999.0), ("+Inf", 1000.0)];
        let (c, le) = slow_counts(b(&buckets), 500.0, 1000.0, "q").ok().unwrap();
        assert_eq!((c.requests, c.errors, le), (1000.0, 10.0, 500.0));
        // 400 ms is not a boundary: everything above 250 ms counts as slow.
        let (c, le) = slow_counts(b(&buckets), 400.0, 1000.0, "q").ok().unwrap();
        assert_eq!((c.errors, le), (40.0, 250.0));
        assert!(matches!(slow_counts(b(&[("+Inf", f64::NAN)]), 500.0, 1000.0, "q"), Err(Problem::NoData(_))));
        let (c, _) = slow_counts(b(&[]), 500.0, 1.0, "q").ok().unwrap();
        assert_eq!(c.requests, 0.0, "no series: no requests");
    }
}
