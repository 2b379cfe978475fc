//! The Prometheus client and the analyzer against a scripted fake Prometheus: what is sent (time,
//! timeout, auth, headers), the concurrency bound, timeouts, rejected PromQL, and how answers and
//! hooks become verdicts. Fast and deterministic; the real Prometheus is in analysis_prometheus.rs.

#[path = "support/prom.rs"]
mod prom;

use std::sync::Arc;
use std::time::Duration;

use prom::{FakeProm, buckets, empty, vector};
use vane::BoxFut;
use vane::analysis::prometheus::{PromClient, QueryError, Scalar};
use vane::analysis::{AnalysisContext, AnalysisReport, Analyzer, MetricVerdict, PromAnalyzer, Verdict};
use vane::config;
use vane::fixtures;
use vane::notify::{HookOutcome, HookRunner};
use vane::policy::{Bound, HookKind, HookSpec, JudgeKind, MetricSpec, OnNoData, Policy, Preflight};
use vane::rollout::{Rollout, machine};
use vane::telemetry::Metrics;

const NOW: u64 = 1_700_000_000_123;

fn prom_cfg(url: &str) -> config::Prometheus {
    config::Prometheus { url: url.into(), timeout: Duration::from_secs(2), ..Default::default() }
}

#[tokio::test]
async fn queries_carry_time_timeout_bearer_token_and_headers() {
    let fake = FakeProm::default();
    fake.rule("up", 200, vector(1.0));
    let url = fake.serve().await;
    let mut cfg = prom_cfg(&url);
    cfg.bearer_token_env = "PROM_TOKEN".into();
    cfg.headers.insert("X-Scope-OrgID".into(), "tenant-a".into());
    let client = PromClient::from_config(&cfg, |k| (k == "PROM_TOKEN").then(|| "s3cret".to_string()), None).unwrap();
    assert_eq!(client.scalar("up", NOW).await, Ok(Scalar::Value(1.0)));
    let seen = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.form.get("time").map(String::as_str), Some("1700000000.123"), "evaluated at the analysis time");
    assert_eq!(seen.form.get("timeout").map(String::as_str), Some("2000ms"));
    assert_eq!(seen.headers.get("authorization").map(String::as_str), Some("Bearer s3cret"));
    assert_eq!(seen.headers.get("x-scope-orgid").map(String::as_str), Some("tenant-a"));
}

#[tokio::test]
async fn basic_auth_from_user_and_password_env() {
    let fake = FakeProm::default();
    let url = fake.serve().await;
    let mut cfg = prom_cfg(&url);
    cfg.basic_auth_user = "vane".into();
    cfg.basic_auth_password_env = "PROM_PASSWORD".into();
    let client = PromClient::from_config(&cfg, |_| Some("pa:ss".to_string()), None).unwrap();
    assert_eq!(client.scalar("up", NOW).await, Ok(Scalar::Empty));
    let seen = fake.seen.lock().unwrap()[0].clone();
    // base64("vane:pa:ss")
    assert_eq!(seen.headers.get("authorization").map(String::as_str), Some("Basic dmFuZTpwYTpzcw=="));
}

#[tokio::test]
async fn queries_in_flight_are_bounded() {
    let fake = FakeProm::default();
    *fake.delay.lock().unwrap() = Duration::from_millis(100);
    let url = fake.serve().await;
    let mut cfg = prom_cfg(&url);
    cfg.max_concurrent_queries = 3;
    let client = PromClient::from_config(&cfg, |_| None, None).unwrap();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let c = client.clone();
        set.spawn(async move { c.scalar("up", NOW).await });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap(), Ok(Scalar::Empty));
    }
    assert_eq!(fake.in_flight.lock().unwrap().1, 3, "at most max_concurrent_queries reach Prometheus at once");
}

#[tokio::test]
async fn a_slow_prometheus_times_out_as_unreachable_and_is_counted() {
    let fake = FakeProm::default();
    *fake.delay.lock().unwrap() = Duration::from_secs(5);
    let url = fake.serve().await;
    let mut cfg = prom_cfg(&url);
    cfg.timeout = Duration::from_millis(300);
    let metrics = Arc::new(Metrics::new(Duration::from_secs(60)));
    let client = PromClient::from_config(&cfg, |_| None, Some(metrics.clone())).unwrap();
    let err = client.scalar("up", NOW).await.unwrap_err();
    assert!(matches!(err, QueryError::Unreachable(_)), "{err:?}");
    let text = metrics.encode();
    assert!(text.contains("vane_prometheus_query_errors_total 1"), "{text}");
    assert!(text.contains("vane_prometheus_query_seconds_count 1"), "{text}");
}

#[tokio::test]
async fn rejected_promql_carries_prometheus_message() {
    let fake = FakeProm::default();
    fake.rule(
        "sum(",
        400,
        r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unclosed left parenthesis"}"#.into(),
    );
    let url = fake.serve().await;
    let client = PromClient::from_config(&prom_cfg(&url), |_| None, None).unwrap();
    let err = client.scalar("sum(up", NOW).await.unwrap_err();
    assert_eq!(err, QueryError::Rejected("bad_data: 1:5: parse error: unclosed left parenthesis".into()));
}

/// Hooks with fixed answers per kind.
struct Hooks {
    rollout_ok: bool,
    rollback_ok: bool,
}

impl HookRunner for Hooks {
    fn call(&self, kind: HookKind, _: Vec<HookSpec>, _: &Rollout) -> BoxFut<'_, HookOutcome> {
        let ok = match kind {
            HookKind::Rollout => self.rollout_ok,
            HookKind::Rollback => self.rollback_ok,
            _ => true,
        };
        Box::pin(
            async move { HookOutcome { ok, message: format!("{kind:?} answered {}", if ok { 200 } else { 503 }) } },
        )
    }
    fn preflight(&self, _: Preflight, _: &Rollout) -> BoxFut<'_, HookOutcome> {
        Box::pin(async { HookOutcome { ok: true, message: String::new() } })
    }
}

fn spec(name: &str, template: &str, min: Option<f64>, max: Option<Bound>) -> MetricSpec {
    MetricSpec { name: name.into(), template: Some(template.into()), query: None, min: min.map(Bound::Number), max }
}

fn rollout(policy: Policy) -> Rollout {
    let req = fixtures::request("cart", &policy.name);
    machine::create("r1".into(), &req, policy, "ci", NOW - 60_000).0
}

async fn analyse(fake: &FakeProm, hooks: Hooks, r: Rollout) -> AnalysisReport {
    let url = fake.serve().await;
    let client = PromClient::from_config(&prom_cfg(&url), |_| None, None).unwrap();
    let a = PromAnalyzer::new(client, Arc::new(hooks), Duration::from_secs(5));
    a.analyse(AnalysisContext { rollout: r, now: NOW }).await
}

fn ok_hooks() -> Hooks {
    Hooks { rollout_ok: true, rollback_ok: false }
}

fn threshold_policy() -> Policy {
    let mut p = fixtures::policy("p", &[10, 100], Duration::from_secs(60), 3);
    p.min_requests = 50;
    p.metrics = vec![
        spec("success", "success-rate", Some(99.0), None),
        spec("p95", "latency-p95", None, Some(Bound::Duration(Duration::from_millis(500)))),
    ];
    p
}

#[tokio::test]
async fn threshold_judge_reports_values_bounds_and_verdict() {
    let fake = FakeProm::default();
    fake.rule("increase(http_requests_total", 200, vector(600.0)).rule(r#"code!~"5..""#, 200, vector(99.5)).rule(
        "histogram_quantile(0.95",
        200,
        vector(612.0),
    );
    let report = analyse(&fake, ok_hooks(), rollout(threshold_policy())).await;
    assert_eq!(report.verdict, Verdict::Fail, "{report:?}");
    let success = &report.metrics[0];
    assert_eq!((success.value, success.min, success.result), (Some(99.5), Some(99.0), MetricVerdict::Pass));
    let p95 = &report.metrics[1];
    assert_eq!((p95.value, p95.max, p95.result), (Some(612.0), Some(500.0), MetricVerdict::Fail));
    assert!(report.summary.contains("p95: 612 > max 500"), "{}", report.summary);
    // The window is the interval (60s, above the 5s floor), for the canary version.
    assert!(
        fake.queries().iter().any(|q| q.contains(r#"version="v1.1.0""#) && q.contains("[60s]")),
        "{:?}",
        fake.queries()
    );
}

#[tokio::test]
async fn too_few_canary_requests_is_no_data_for_every_metric() {
    let fake = FakeProm::default();
    fake.rule("increase(http_requests_total", 200, vector(12.0));
    let r = rollout(threshold_policy());
    let report = analyse(&fake, ok_hooks(), r.clone()).await;
    // minRequests counts the step: 12 new requests is a step still collecting, never a pass.
    assert_eq!(report.verdict, Verdict::Collecting);
    assert!(report.metrics.iter().all(|m| m.result == MetricVerdict::NoData));
    assert!(report.summary.contains("12 canary requests in 60s < minRequests 50"), "{}", report.summary);
    assert_eq!(fake.queries().len(), 1, "no metric queries without enough traffic");
    // Still 12 at the next analysis of the step: nothing is accumulating, that is no data.
    let mut r = r;
    r.last_analysis = Some(report);
    let again = analyse(&fake, ok_hooks(), r).await;
    assert_eq!(again.verdict, Verdict::NoData, "{again:?}");
    assert!(again.summary.contains("none since the last analysis"), "{}", again.summary);
}

#[tokio::test]
async fn min_requests_counts_the_whole_step_for_the_threshold_judge() {
    // 20 canary requests in the last minute, 60 over the 3-minute step: judged over the step.
    let fake = FakeProm::default();
    fake.rule(
        "increase(http_requests_total{namespace=\"prod\",service=\"cart\",version=\"v1.1.0\"}[60s]",
        200,
        vector(20.0),
    )
    .rule("increase(http_requests_total", 200, vector(60.0))
    .rule(r#"code!~"5..""#, 200, vector(100.0))
    .rule("histogram_quantile(0.95", 200, vector(120.0));
    let mut r = rollout(threshold_policy());
    r.step_started_at = NOW - 180_000;
    let report = analyse(&fake, ok_hooks(), r).await;
    assert_eq!(report.verdict, Verdict::Pass, "{report:?}");
    let q = fake.queries();
    assert!(q.iter().any(|q| q.contains(r#"code!~"5.."}[180s]"#)), "metrics over the step: {q:?}");
}

#[tokio::test]
async fn several_series_or_rejected_promql_are_errors_never_a_pass() {
    let fake = FakeProm::default();
    let two = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"code":"200"},"value":[1,"1"]},{"metric":{"code":"500"},"value":[1,"2"]}]}}"#;
    fake.rule("by (code)", 200, two.into())
        .rule("broken(", 400, r#"{"status":"error","errorType":"bad_data","error":"unknown function broken"}"#.into())
        .rule(r#"code!~"5..""#, 200, vector(100.0));
    let mut p = fixtures::policy("p", &[10, 100], Duration::from_secs(60), 3);
    p.on_no_data = OnNoData::Ignore;
    let custom = |name: &str, q: &str| MetricSpec {
        name: name.into(),
        template: None,
        query: Some(q.into()),
        min: None,
        max: Some(Bound::Number(10.0)),
    };
    p.metrics = vec![
        spec("success", "success-rate", Some(99.0), None),
        custom("by-code", r#"sum by (code) (rate(http_requests_total{version="{{target}}"}[{{interval}}]))"#),
        custom("typo", "broken(up)"),
    ];
    let report = analyse(&fake, ok_hooks(), rollout(p)).await;
    assert_eq!(report.verdict, Verdict::NoData, "errors are not ignorable: {report:?}");
    assert_eq!(report.metrics[0].result, MetricVerdict::Pass);
    assert_eq!(report.metrics[1].result, MetricVerdict::Error);
    assert!(report.metrics[1].message.as_deref().unwrap_or("").starts_with("2 series where one is expected"));
    assert_eq!(report.metrics[2].result, MetricVerdict::Error);
    assert!(report.summary.contains("unknown function broken"), "{}", report.summary);
    assert!(
        fake.queries()
            .iter()
            .any(|q| q.contains(r#"version="v1.1.0""#) && q.contains("[60s]") && q.contains("by (code)"))
    );
}

#[tokio::test]
async fn no_data_is_ignored_only_when_asked() {
    let fake = FakeProm::default();
    fake.rule(r#"code!~"5..""#, 200, vector(99.9)).rule("histogram_quantile", 200, empty());
    let mut p = threshold_policy();
    p.min_requests = 0;
    let report = analyse(&fake, ok_hooks(), rollout(p.clone())).await;
    assert_eq!(report.verdict, Verdict::NoData, "hold: {report:?}");
    p.on_no_data = OnNoData::Ignore;
    let report = analyse(&fake, ok_hooks(), rollout(p)).await;
    assert_eq!(report.verdict, Verdict::Pass, "ignore: {report:?}");
    assert_eq!(report.metrics[1].result, MetricVerdict::NoData);
}

#[tokio::test]
async fn rollout_hooks_fail_a_check_and_rollback_hooks_roll_back() {
    let hook = HookSpec {
        name: None,
        url: "http://hooks/x".into(),
        timeout: Duration::from_secs(1),
        metadata: Default::default(),
    };
    let mut p = fixtures::policy("p", &[10, 100], Duration::from_secs(60), 3);
    p.webhooks.rollout = vec![hook.clone()];
    p.webhooks.rollback = vec![hook];
    let fake = FakeProm::default();
    let report = analyse(&fake, Hooks { rollout_ok: true, rollback_ok: false }, rollout(p.clone())).await;
    assert_eq!(report.verdict, Verdict::Pass, "{report:?}");
    let report = analyse(&fake, Hooks { rollout_ok: false, rollback_ok: false }, rollout(p.clone())).await;
    assert_eq!(report.verdict, Verdict::Fail);
    assert!(report.metrics.iter().any(|m| m.name == "hook:rollout" && m.result == MetricVerdict::Fail));
    let report = analyse(&fake, Hooks { rollout_ok: true, rollback_ok: true }, rollout(p)).await;
    assert_eq!(report.verdict, Verdict::Rollback);
    assert!(report.summary.contains("rollback hook asked to roll back"), "{}", report.summary);
    assert!(fake.queries().is_empty(), "a policy without metrics queries nothing");
}

#[tokio::test]
async fn no_metrics_and_no_hooks_pass_on_time() {
    let fake = FakeProm::default();
    let report =
        analyse(&fake, ok_hooks(), rollout(fixtures::policy("p", &[10, 100], Duration::from_secs(60), 3))).await;
    assert_eq!(report.verdict, Verdict::Pass);
    assert!(report.metrics.is_empty());
}

fn sequential_policy() -> Policy {
    let mut p = fixtures::policy("p", &[5, 25, 50, 100], Duration::from_secs(60), 3);
    p.judge = JudgeKind::Sequential;
    p.min_requests = 50;
    p.metrics = vec![
        spec("errors", "error-rate", None, None),
        spec("p95", "latency-p95", None, Some(Bound::Duration(Duration::from_millis(500)))),
    ];
    p
}

/// Canary and stable counts over the step, as the sequential judge asks for them.
fn counts(fake: &FakeProm, canary: (f64, f64), stable: (f64, f64)) {
    let c = r#"version="v1.1.0""#;
    let s = r#"version="v1.0.0""#;
    fake.rule("histogram_quantile", 200, vector(120.0))
        .rule(&format!(r#"{c},code=~"5.."}}"#), 200, vector(canary.1))
        .rule(&format!(r#"{s},code=~"5.."}}"#), 200, vector(stable.1))
        .rule(&format!("{c}}}"), 200, vector(canary.0))
        .rule(&format!("{s}}}"), 200, vector(stable.0));
}

#[tokio::test]
async fn sequential_judge_rolls_back_an_established_regression() {
    let fake = FakeProm::default();
    counts(&fake, (600.0, 30.0), (11400.0, 57.0));
    let mut r = rollout(sequential_policy());
    r.step_started_at = NOW - 120_000;
    let report = analyse(&fake, ok_hooks(), r).await;
    assert_eq!(report.verdict, Verdict::Rollback, "{report:?}");
    let m = &report.metrics[0];
    assert_eq!((m.name.as_str(), m.result, m.value), ("errors", MetricVerdict::Fail, Some(5.0)));
    assert_eq!(m.stats["decision"], "regression");
    assert!(m.stats["harmLogE"].as_f64().unwrap() >= m.stats["logBound"].as_f64().unwrap());
    assert_eq!(report.metrics[1].result, MetricVerdict::Pass, "latency keeps its threshold");
    assert!(fake.queries().iter().any(|q| q.contains("[120s]")), "counts cover the whole step: {:?}", fake.queries());
}

#[tokio::test]
async fn sequential_judge_holds_then_passes_at_the_step_maximum_and_carries_evidence() {
    let fake = FakeProm::default();
    counts(&fake, (300.0, 2.0), (5700.0, 28.0));
    let mut r = rollout(sequential_policy());
    r.step_started_at = NOW - 60_000;
    let first = analyse(&fake, ok_hooks(), r.clone()).await;
    assert_eq!(first.verdict, Verdict::Inconclusive, "{first:?}");
    let block = first.metrics[0].stats["harmLogE"].as_f64().unwrap();

    // Five intervals into the step with no evidence of harm: the step passes.
    r.step_started_at = NOW - 300_000;
    let at_max = analyse(&fake, ok_hooks(), r.clone()).await;
    assert_eq!(at_max.verdict, Verdict::Pass, "{at_max:?}");
    assert_eq!(at_max.metrics[0].stats["decision"], "no-harm");

    // Next step: the previous step's evidence is carried, read back from lastAnalysis.
    r.last_analysis = Some(first);
    r.step_started_at = NOW - 1_000;
    let next = analyse(&fake, ok_hooks(), r).await;
    let carried = next.metrics[0].stats["harmLogECarry"].as_f64().unwrap();
    assert!((carried - block).abs() < 1e-9, "{carried} vs {block}");
}

fn adaptive_policy() -> Policy {
    let mut p = fixtures::policy("p", &[5, 25, 50, 100], Duration::from_secs(60), 5);
    p.judge = JudgeKind::Adaptive;
    p.min_requests = 50;
    p.metrics = vec![
        spec("success", "success-rate", Some(99.0), None),
        spec("p95", "latency-p95", None, Some(Bound::Duration(Duration::from_millis(500)))),
    ];
    p
}

/// Counts over the step for the adaptive judge: requests and errors, and latency buckets where
/// `slow` requests of each version took more than 500 ms.
fn adaptive_counts(fake: &FakeProm, canary: (f64, f64, f64), stable: (f64, f64, f64)) {
    let (c, s) = (r#"version="v1.1.0""#, r#"version="v1.0.0""#);
    let le = |(n, _, slow): (f64, f64, f64)| buckets(&[("0.25", n - 2.0 * slow), ("0.5", n - slow), ("+Inf", n)]);
    fake.rule("histogram_quantile", 200, vector(120.0))
        .rule(&format!("bucket{{namespace=\"prod\",service=\"cart\",{c}"), 200, le(canary))
        .rule(&format!("bucket{{namespace=\"prod\",service=\"cart\",{s}"), 200, le(stable));
    counts(fake, (canary.0, canary.1), (stable.0, stable.1));
}

#[tokio::test]
async fn adaptive_judge_passes_a_good_step_at_its_first_interval_with_its_evidence() {
    let fake = FakeProm::default();
    adaptive_counts(&fake, (300.0, 1.0, 3.0), (5700.0, 28.0, 57.0));
    let report = analyse(&fake, ok_hooks(), rollout(adaptive_policy())).await;
    assert_eq!(report.verdict, Verdict::Pass, "{report:?}");
    let errors = &report.metrics[0];
    assert_eq!(errors.stats["judge"], "adaptive");
    assert_eq!(errors.stats["decision"], "pass");
    assert_eq!(errors.stats["canary"]["requests"], 300.0);
    assert_eq!(errors.stats["stable"]["errors"], 28.0);
    assert!(errors.stats["likelihoodRatio"].as_f64().unwrap() < errors.stats["holdAbove"].as_f64().unwrap());
    assert_eq!(errors.stats["bound"], 200.0, "α 1 % split over two streams");
    let v = errors.value.unwrap();
    assert!((v - (100.0 - 100.0 / 300.0)).abs() < 1e-9, "success rate {v}");
    let p95 = &report.metrics[1];
    assert_eq!((p95.result, p95.value, p95.max), (MetricVerdict::Pass, Some(120.0), Some(500.0)));
    assert_eq!(p95.stats["stream"], "slow:p95");
    assert_eq!(p95.stats["canary"]["errors"], 3.0, "slow = all − the 0.5 s bucket");
    assert_eq!(p95.stats["guard"]["result"], "pass");
    assert!(report.summary.contains("no evidence of harm"), "{}", report.summary);
    assert!(report.summary.contains("canary 0.333% vs stable 0.491% errors"), "{}", report.summary);

    // Another error metric after the latency one: still one error stream, α still split in two.
    let mut p = adaptive_policy();
    p.metrics.push(spec("errors", "error-rate", None, Some(Bound::Number(1.0))));
    let report = analyse(&fake, ok_hooks(), rollout(p)).await;
    assert_eq!(report.metrics[2].stats["bound"], 200.0, "{report:?}");
    assert_eq!(report.metrics[2].stats["eValue"], report.metrics[0].stats["eValue"]);
    assert!((report.metrics[2].value.unwrap() - 100.0 / 300.0).abs() < 1e-9, "error rate in percent");
}

#[tokio::test]
async fn adaptive_judge_rolls_back_errors_or_slow_requests_and_holds_when_suspicious() {
    // 4× errors at 25 %.
    let fake = FakeProm::default();
    adaptive_counts(&fake, (1500.0, 30.0, 15.0), (4500.0, 22.0, 45.0));
    let report = analyse(&fake, ok_hooks(), rollout(adaptive_policy())).await;
    assert_eq!(report.verdict, Verdict::Rollback, "{report:?}");
    assert_eq!(report.metrics[0].stats["decision"], "regression");
    assert!(report.summary.contains("regression established"), "{}", report.summary);

    // 5× slow requests, errors equal: the latency stream rolls back (its guard alone would not).
    let fake = FakeProm::default();
    adaptive_counts(&fake, (1500.0, 7.0, 75.0), (4500.0, 22.0, 45.0));
    let report = analyse(&fake, ok_hooks(), rollout(adaptive_policy())).await;
    assert_eq!(report.verdict, Verdict::Rollback, "{report:?}");
    assert_eq!(report.metrics[1].stats["decision"], "regression");
    assert_eq!(report.metrics[1].stats["guard"]["result"], "pass");

    // Twice the stable error rate on little traffic: suspicious but not established. An early step
    // passes (its evidence carries into the next, busier step)...
    let fake = FakeProm::default();
    adaptive_counts(&fake, (1500.0, 15.0, 15.0), (4500.0, 22.0, 45.0));
    let mut r = rollout(adaptive_policy());
    let early = analyse(&fake, ok_hooks(), r.clone()).await;
    assert_eq!(early.verdict, Verdict::Pass, "{early:?}");
    let st = &early.metrics[0].stats;
    assert!(st["likelihoodRatio"].as_f64().unwrap() >= st["holdAbove"].as_f64().unwrap(), "{early:?}");
    assert!(early.summary.contains("leaning towards harm"), "{}", early.summary);
    // ...the last step before 100 % is held, with the reason.
    r.step_index = 2;
    let held = analyse(&fake, ok_hooks(), r.clone()).await;
    assert_eq!(held.verdict, Verdict::Inconclusive, "{held:?}");
    assert!(held.summary.contains("holding the step for more evidence"), "{}", held.summary);
    assert_eq!(held.metrics[0].stats["heldSince"], NOW);

    // The next step starts with this step's evidence: the same counts again establish it.
    r.last_analysis = Some(held.clone());
    r.step_started_at = NOW - 1_000;
    let next = analyse(&fake, ok_hooks(), r.clone()).await;
    assert_eq!(next.metrics[0].stats["earlier"][0]["canary"]["errors"], 15.0);
    assert!(next.metrics[0].stats["logE"].as_f64().unwrap() > held.metrics[0].stats["logE"].as_f64().unwrap());

    // Held for maxHold (5 intervals) without an established regression: the step passes.
    let mut r = rollout(adaptive_policy());
    r.step_index = 2;
    let mut last = held;
    last.metrics[0].stats["heldSince"] = serde_json::json!(NOW - 300_000);
    r.last_analysis = Some(last);
    let report = analyse(&fake, ok_hooks(), r).await;
    assert_eq!(report.verdict, Verdict::Pass, "{report:?}");
    assert!(report.summary.contains("held for maxHold"), "{}", report.summary);

    // 0.1 % errors at the last step: 4 canary vs 2 stable errors leans towards harm, but five more
    // such minutes of a canary twice as bad (as bad as it looks) could not establish it, so the
    // good-looking odds win.
    let fake = FakeProm::default();
    adaptive_counts(&fake, (3000.0, 4.0, 30.0), (3000.0, 2.0, 30.0));
    let mut r = rollout(adaptive_policy());
    r.step_index = 2;
    let report = analyse(&fake, ok_hooks(), r).await;
    assert_eq!(report.verdict, Verdict::Pass, "{report:?}");
    let st = &report.metrics[0].stats;
    assert_eq!(st["suspicious"], true, "{st}");
    assert!(st["holdEValue"].as_f64().unwrap() < st["bound"].as_f64().unwrap(), "{st}");
    assert_eq!(st["holdRatio"], 2.0, "{st}");
    assert!(report.summary.contains("too little traffic left for a hold"), "{}", report.summary);
    assert!(report.summary.contains("a canary 2× as bad"), "{}", report.summary);
}

#[tokio::test]
async fn nan_counts_are_no_data_never_a_pass() {
    // Requests are known but the error count is NaN: not "0 errors".
    let fake = FakeProm::default();
    fake.rule(r#"code=~"5..""#, 200, vector(f64::NAN)).rule("increase(http_requests_total", 200, vector(600.0));
    for p in [adaptive_policy(), sequential_policy()] {
        let report = analyse(&fake, ok_hooks(), rollout(p)).await;
        assert_eq!(report.verdict, Verdict::NoData, "{report:?}");
        assert!(report.summary.contains("NaN"), "{}", report.summary);
    }
    // A NaN metric value under the threshold judge is no data too, even with onNoData: ignore
    // leaving nothing else.
    let fake = FakeProm::default();
    fake.rule("increase(http_requests_total", 200, vector(600.0)).rule("", 200, vector(f64::NAN));
    let mut p = threshold_policy();
    let report = analyse(&fake, ok_hooks(), rollout(p.clone())).await;
    assert_eq!(report.verdict, Verdict::NoData, "{report:?}");
    p.on_no_data = OnNoData::Ignore;
    let report = analyse(&fake, ok_hooks(), rollout(p)).await;
    assert_eq!(report.verdict, Verdict::NoData, "ignore never turns nothing into a pass: {report:?}");
}

#[tokio::test]
async fn an_analysis_where_every_query_errored_is_an_error() {
    let rejected = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#.to_string();
    for p in [threshold_policy(), adaptive_policy(), sequential_policy()] {
        let fake = FakeProm::default();
        fake.rule("", 400, rejected.clone());
        let mut p = p;
        p.min_requests = 0;
        p.on_no_data = OnNoData::Ignore;
        let report = analyse(&fake, ok_hooks(), rollout(p)).await;
        assert_eq!(report.verdict, Verdict::Error, "{report:?}");
        assert!(report.metrics.iter().all(|m| m.result == MetricVerdict::Error), "{report:?}");
        assert!(report.summary.contains("parse error"), "{}", report.summary);
    }
}
