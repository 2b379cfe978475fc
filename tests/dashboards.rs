//! The shipped dashboards and alert rules against a real Prometheus scraping a real daemon (issue 6),
//! and the daemon's own metrics.
//!
//! `every_dashboard_and_alert_expression_against_real_prometheus`: Prometheus (1 s scrapes) scrapes
//! three `vane demo-app`s of `shop/web` (v1, v2 healthy; v3 with 30 % errors) and the `vane` binary.
//! The daemon runs two rollouts of `web` whose analysis (a percent, a latency, a request-count and a
//! custom-query metric: one of each unit family) queries that Prometheus: v1→v2 succeeds,
//! v2→v3 rolls back (its router takes 3 s to restore traffic, so Prometheus sees `RollingBack`).
//! Then every expression `scripts/promql-exprs.py` extracts (Grafana variables substituted with
//! shop/web/v2/v3) is sent to Prometheus as a range query over the rollouts' time span:
//!
//! - every expression parses (status `success`);
//! - every **dashboard** expression returns at least one finite sample, except those over metrics this
//!   setup cannot produce (`istio_*`, the Istio dashboard's mesh metrics): the rollout panels (phase,
//!   weight, failed checks, analysis values / thresholds / checks, rollouts, durations, rollbacks), the
//!   controller panels (queries, router calls, webhook deliveries, info, up) and the generic-dialect
//!   service panels (`http_*`, which the demo apps export) all have data;
//! - the **alert rules** fire only when they should: the rollback rule matches while the rollback is
//!   in progress; the rules for a failed rollout, router errors, query errors and a down controller
//!   never match. (`VaneRolloutStuck` is not asserted: without its `for: 30m` it briefly matches any
//!   rollout's first scrape, which is what `for` is for.)
//!
//! It also checks `/metrics` itself: every metric of docs/reference/metrics.md with exactly its labels, and values
//! the driver set (the final phase, weight 0 after the rollback, the rollouts counted by result).
//!
//! `finished_rollouts_series_are_dropped_after_the_retention`: with a 3 s retention (a margin for a
//! slow first scrape) the per-service series of a finished rollout leave `/metrics`, the counters stay.
//!
//! `no_dashboard_or_alert_reads_a_deprecated_metric_name`: no file of `dashboards/`, `deploy/` or
//! `charts/` names a metric of the "Deprecated names" table of docs/reference/metrics.md (the daemon
//! still exports them for one release; what we ship must not depend on them).

mod support {
    pub mod daemon;
    pub mod prom;
}

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use support::daemon::{Daemon, exec_profiles, free_port};
use support::prom::{DemoApp, Load, Prometheus, wait_for};

const POLICY: &str = "name: slo
strategy: canary
steps: [50, 100]
interval: 1s
threshold: 2
progressDeadline: 1m
onNoData: hold
minRequests: 5
metrics:
  - name: success-rate
    template: success-rate
    min: 99
  - name: latency-p95
    template: latency-p95
    max: 500ms
  - name: requests
    template: request-count
    min: 1
  - name: canary-rps
    query: sum(rate(http_requests_total{namespace=\"{{namespace}}\", service=\"{{service}}\", version=\"{{version}}\"}[{{interval}}]))
    min: 1
";

/// Every metric of docs/reference/metrics.md (as exposed: counters with `_total`) and its labels
/// (histograms: besides `le`), the deprecated duplicates included.
const METRICS: &[(&str, &[&str])] = &[
    ("vane_build_info", &["version"]),
    ("vane_info", &["version"]),
    ("vane_analysis_value_percent", &["namespace", "service", "metric"]),
    ("vane_analysis_value_seconds", &["namespace", "service", "metric"]),
    ("vane_analysis_value_requests", &["namespace", "service", "metric"]),
    ("vane_analysis_custom_value", &["namespace", "service", "metric"]),
    ("vane_analysis_threshold_percent", &["namespace", "service", "metric", "bound"]),
    ("vane_analysis_threshold_seconds", &["namespace", "service", "metric", "bound"]),
    ("vane_analysis_threshold_requests", &["namespace", "service", "metric", "bound"]),
    ("vane_analysis_custom_threshold", &["namespace", "service", "metric", "bound"]),
    ("vane_http_requests_total", &["method", "route", "status"]),
    ("vane_http_request_duration_seconds", &["method", "route"]),
    ("vane_store_commit_seconds", &[]),
    ("vane_outbox_depth", &[]),
    ("vane_outbox_oldest_age_seconds", &[]),
    ("vane_rollout_weight", &["namespace", "service"]),
    ("vane_rollout_phase", &["namespace", "service", "phase"]),
    ("vane_rollout_failed_checks", &["namespace", "service"]),
    ("vane_analysis_value", &["namespace", "service", "metric"]),
    ("vane_analysis_threshold", &["namespace", "service", "metric", "bound"]),
    ("vane_analysis_checks_total", &["namespace", "service", "metric", "result"]),
    ("vane_rollouts_total", &["strategy", "result"]),
    ("vane_rollout_duration_seconds", &["strategy", "result"]),
    ("vane_rollback_seconds", &[]),
    ("vane_router_requests_total", &["router", "result"]),
    ("vane_prometheus_query_seconds", &[]),
    ("vane_webhook_deliveries_total", &["kind", "result"]),
];

/// One sample of the text exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parse the Prometheus/OpenMetrics text format (the subset vane writes: no escaped quotes in values).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad exposition line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        out.push((name.to_string(), labels, value));
    }
    out
}

/// The samples of `name` (a histogram's are its `_bucket`, `_sum` and `_count`).
fn family<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    let histo = [format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count")];
    samples.iter().filter(|(n, _, _)| n == name || histo.contains(n)).collect()
}

fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.2)
}

async fn scrape(http: &reqwest::Client, daemon: &str) -> Vec<Sample> {
    let res = http.get(format!("{daemon}/metrics")).send().await.expect("GET /metrics");
    assert_eq!(res.status(), 200);
    parse_exposition(&res.text().await.expect("metrics body"))
}

/// POST a rollout; its id.
async fn create(http: &reqwest::Client, daemon: &str, body: Value) -> String {
    let res = http.post(format!("{daemon}/api/v1/rollouts")).json(&body).send().await.expect("POST rollout");
    let status = res.status();
    let v: Value = res.json().await.expect("rollout JSON");
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().expect("id").to_string()
}

async fn wait_phase(http: &reqwest::Client, daemon: &str, id: &str, phase: &str) -> Value {
    let url = format!("{daemon}/api/v1/rollouts/{id}");
    wait_for(&format!("rollout {id} to reach {phase}"), Duration::from_secs(90), || {
        let req = http.get(&url);
        async move {
            let r: Value = req.send().await.ok()?.json().await.ok()?;
            let p = r["phase"].as_str().unwrap_or("");
            let terminal = ["Succeeded", "RolledBack", "Aborted", "Failed"].contains(&p);
            assert!(!terminal || p == phase, "rollout {id} ended {p}, expected {phase}: {r}");
            (p == phase).then_some(r)
        }
    })
    .await
}

/// Prometheus' answer to a range query: its status and the finite values of every returned series.
async fn query_range(http: &reqwest::Client, prom: &str, expr: &str, start: f64, end: f64) -> (Value, Vec<f64>) {
    let form =
        [("query", expr.to_string()), ("start", start.to_string()), ("end", end.to_string()), ("step", "1".into())];
    let v: Value = http
        .post(format!("{prom}/api/v1/query_range"))
        .form(&form)
        .send()
        .await
        .expect("prometheus answers")
        .json()
        .await
        .expect("prometheus JSON");
    let finite = v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["values"].as_array().into_iter().flatten())
        .filter_map(|p| p[1].as_str()?.parse::<f64>().ok())
        .filter(|x| x.is_finite())
        .collect();
    (v, finite)
}

fn exprs(only: &str) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/promql-exprs.py");
    let out = std::process::Command::new("python3")
        .args([script, "--only", only, "--namespace", "shop", "--service", "web", "--stable", "v2", "--canary", "v3"])
        .output()
        .expect("python3 runs scripts/promql-exprs.py (apt-get install -y python3 python3-yaml)");
    assert!(out.status.success(), "promql-exprs.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON string ({e}): {l}")))
        .collect();
    assert!(!list.is_empty(), "no {only} expressions found");
    list
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn write_policy(dir: &std::path::Path, yaml: &str) {
    std::fs::create_dir_all(dir.join("policies")).expect("policies dir");
    std::fs::write(dir.join("policies/slo.yaml"), yaml).expect("policy file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_expression_against_real_prometheus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_policy(d, POLICY);
    let (v1, v2, v3) = tokio::join!(
        DemoApp::start(d, "web", "v1", 0.0, "5ms"),
        DemoApp::start(d, "web", "v2", 0.0, "5ms"),
        DemoApp::start(d, "web", "v3", 0.3, "5ms"),
    );
    let port = free_port();
    let vane_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let apps = [v1.addr, v2.addr, v3.addr];
    let prom = Prometheus::start_jobs(d, &[("demo", &apps), ("vane", &[vane_addr])]);
    prom.ready().await;
    // Restoring traffic takes 3 s once the canary has had traffic (so RollingBack is scraped).
    let marker = d.join("shifted");
    let slow_rollback = format!(
        r#"if [ "$VANE_CANARY_WEIGHT" = 0 ]; then [ ! -e "{m}" ] || sleep 3; else touch "{m}"; fi"#,
        m = marker.display()
    );
    let profiles = exec_profiles(&[("noop", &["true"]), ("slow-rollback", &["sh", "-c", &slow_rollback])]);
    let daemon = Daemon::start(
        d,
        port,
        &[
            ("VANE_PROMETHEUS_URL", prom.url.as_str()),
            ("VANE_PROMETHEUS_MIN_WINDOW", "5s"),
            ("RUST_LOG", "warn"),
            ("VANE_ROUTERS_EXEC", &profiles),
        ],
    );
    let _load: Vec<Load> = apps.iter().map(|a| Load::start(*a, 30)).collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");

    // Prometheus has scraped vane, and 3 s of traffic from every version.
    wait_for("Prometheus to scrape vane and the demo apps", Duration::from_secs(40), || {
        let p = &prom;
        async move {
            let vane_up = p.value(r#"up{job="vane"}"#).await == Some(1.0);
            let traffic = p.value(r#"min(count_over_time(http_requests_total{code="200"}[5s]))"#).await;
            (vane_up && traffic.unwrap_or(0.0) >= 3.0).then_some(())
        }
    })
    .await;
    let start = unix_now();

    let rollout = |version: &str, stable: &str, profile: &str| {
        json!({ "service": "web", "namespace": "shop", "version": version, "stableVersion": stable,
                "policy": "slo", "router": { "kind": "exec", "profile": profile } })
    };
    let good = create(&http, &daemon.url, rollout("v2", "v1", "noop")).await;
    wait_phase(&http, &daemon.url, &good, "Succeeded").await;
    let bad = create(&http, &daemon.url, rollout("v3", "v2", "slow-rollback")).await;
    let rolled_back = wait_phase(&http, &daemon.url, &bad, "RolledBack").await;
    assert!(rolled_back["message"].as_str().unwrap_or("").contains("success-rate"), "{rolled_back}");

    // /metrics: every metric with exactly its labels, and the values the driver set.
    let samples = scrape(&http, &daemon.url).await;
    for (name, labels) in METRICS {
        let fam = family(&samples, name);
        assert!(!fam.is_empty(), "{name} is not in /metrics");
        let want: BTreeSet<&str> = labels.iter().copied().collect();
        for (n, l, _) in fam {
            let got: BTreeSet<&str> = l.keys().map(String::as_str).filter(|k| *k != "le").collect();
            assert_eq!(got, want, "labels of {n}");
        }
    }
    let web = [("namespace", "shop"), ("service", "web")];
    assert_eq!(value_of(&samples, "vane_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    assert_eq!(value_of(&samples, "vane_rollout_weight", &web), Some(0.0), "traffic is back on stable");
    for phase in ["RolledBack", "Succeeded", "Progressing"] {
        let l = [web[0], web[1], ("phase", phase)];
        let want = if phase == "RolledBack" { 1.0 } else { 0.0 };
        assert_eq!(value_of(&samples, "vane_rollout_phase", &l), Some(want), "phase {phase}");
    }
    for result in ["Succeeded", "RolledBack"] {
        let l = [("strategy", "canary"), ("result", result)];
        assert_eq!(value_of(&samples, "vane_rollouts_total", &l), Some(1.0), "{result}");
        assert_eq!(value_of(&samples, "vane_rollout_duration_seconds_count", &l), Some(1.0), "{result}");
    }
    assert_eq!(value_of(&samples, "vane_rollback_seconds_count", &[]), Some(1.0));
    assert!(value_of(&samples, "vane_rollback_seconds_sum", &[]).unwrap_or(0.0) >= 3.0, "rollback took ≥ 3 s");
    let fails = [web[0], web[1], ("metric", "success-rate"), ("result", "fail")];
    assert!(value_of(&samples, "vane_analysis_checks_total", &fails).unwrap_or(0.0) >= 2.0, "threshold 2");
    let bound = [web[0], web[1], ("metric", "success-rate"), ("bound", "min")];
    assert_eq!(value_of(&samples, "vane_analysis_threshold", &bound), Some(99.0));
    assert_eq!(value_of(&samples, "vane_analysis_threshold_percent", &bound), Some(99.0));
    let p95 = [web[0], web[1], ("metric", "latency-p95"), ("bound", "max")];
    assert_eq!(value_of(&samples, "vane_analysis_threshold_seconds", &p95), Some(0.5), "500ms in seconds");
    assert_eq!(value_of(&samples, "vane_analysis_threshold", &p95), Some(500.0), "deprecated: milliseconds");
    assert_eq!(value_of(&samples, "vane_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    let created = [("method", "POST"), ("route", "/api/v1/rollouts"), ("status", "201")];
    assert!(value_of(&samples, "vane_http_requests_total", &created) >= Some(2.0), "two rollouts created");
    assert!(value_of(&samples, "vane_store_commit_seconds_count", &[]).unwrap_or(0.0) > 0.0);
    assert_eq!(value_of(&samples, "vane_outbox_depth", &[]), Some(0.0), "no notification sink configured");
    assert!(value_of(&samples, "vane_router_requests_total", &[("router", "exec"), ("result", "ok")]) >= Some(4.0));
    assert!(value_of(&samples, "vane_prometheus_query_seconds_count", &[]).unwrap_or(0.0) > 0.0);

    // Prometheus has scraped the end state.
    wait_for("Prometheus to scrape the rolled-back rollout", Duration::from_secs(20), || {
        let p = &prom;
        async move {
            let q = r#"vane_rollout_phase{service="web",phase="RolledBack"} == 1 and on () vane_rollouts_total{result="RolledBack"} == 1"#;
            p.value(q).await.map(|_| ())
        }
    })
    .await;
    // The last step of the range is at or after that scrape (Prometheus answers a future end with the
    // data it has).
    let end = unix_now() + 1.0;

    let mut failures = Vec::new();
    for e in exprs("dashboards") {
        let (v, finite) = query_range(&http, &prom.url, &e, start, end).await;
        if v["status"] != "success" {
            failures.push(format!("does not evaluate: {e}\n  {v}"));
        } else if !e.contains("istio_") && finite.is_empty() {
            failures.push(format!("no data: {e}\n  {}", v["data"]));
        }
    }
    let rules = exprs("rules");
    for e in &rules {
        let (v, _) = query_range(&http, &prom.url, e, start, end).await;
        if v["status"] != "success" {
            failures.push(format!("rule does not evaluate: {e}\n  {v}"));
        }
    }
    // (what the rule is about, a fragment identifying its expression, whether it must match in the span)
    let alerts = [
        ("rollback in progress", r#"phase="RollingBack"}) == 1"#, true),
        ("rollout failed", r#"phase="Failed"}) == 1"#, false),
        ("router errors during a rollback", r#"vane_router_requests_total{result="error"}"#, false),
        ("controller down", "absent(vane_build_info)", false),
        ("Prometheus query errors", "vane_prometheus_query_errors_total", false),
    ];
    for (what, fragment, fires) in alerts {
        let matching: Vec<&String> = rules.iter().filter(|e| e.contains(fragment)).collect();
        assert!(!matching.is_empty(), "no alert rule about {what} (containing {fragment:?}) in {rules:#?}");
        for e in matching {
            let (_, finite) = query_range(&http, &prom.url, e, start, end).await;
            if finite.is_empty() == fires {
                let verb = if fires { "never matched" } else { "matched" };
                failures.push(format!("alert about {what} {verb} during the rollouts: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test]
async fn finished_rollouts_series_are_dropped_after_the_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_policy(d, "name: slo\nstrategy: canary\nsteps: [50, 100]\ninterval: 100ms\nthreshold: 2\n");
    let daemon = Daemon::start(d, free_port(), &[("VANE_SERVER_METRICS_RETENTION", "3s")]);
    vane::install_crypto_provider();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let body = json!({ "service": "cart", "namespace": "shop", "version": "v2", "stableVersion": "v1",
                       "policy": "slo", "router": { "kind": "exec", "profile": "noop" } });
    let id = create(&http, &daemon.url, body).await;
    wait_phase(&http, &daemon.url, &id, "Succeeded").await;

    let cart = [("namespace", "shop"), ("service", "cart")];
    let samples = scrape(&http, &daemon.url).await;
    assert_eq!(value_of(&samples, "vane_rollout_weight", &cart), Some(100.0), "present right after finishing");
    let succeeded = [("strategy", "canary"), ("result", "Succeeded")];
    let per_service = wait_for("the finished rollout's series to leave /metrics", Duration::from_secs(10), || {
        let h = &http;
        let url = &daemon.url;
        async move {
            let s = scrape(h, url).await;
            let left = s.iter().filter(|(_, l, _)| l.get("service").map(String::as_str) == Some("cart")).count();
            (left == 0).then_some(s)
        }
    })
    .await;
    assert_eq!(value_of(&per_service, "vane_rollouts_total", &succeeded), Some(1.0), "counters stay");
    assert_eq!(value_of(&per_service, "vane_rollout_duration_seconds_count", &succeeded), Some(1.0));
    assert_eq!(value_of(&per_service, "vane_build_info", &[]), Some(1.0));
}

/// The deprecated names of docs/reference/metrics.md ("Deprecated names": first column).
fn deprecated_metric_names() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference/metrics.md"))
        .expect("docs/reference/metrics.md");
    let section = doc.split("## Deprecated names").nth(1).expect("metrics.md has a \"Deprecated names\" section");
    section.lines().filter_map(|l| l.strip_prefix("| `")?.split_once('`').map(|(name, _)| name.to_string())).collect()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() { files_under(&path, out) } else { out.push(path) }
    }
}

/// Whether `text` uses the metric `name` itself (not a longer name it is a prefix of).
fn uses_metric(text: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| !text[..at].ends_with(ident) && !text[at + name.len()..].starts_with(ident))
}

#[test]
fn no_dashboard_or_alert_reads_a_deprecated_metric_name() {
    let deprecated = deprecated_metric_names();
    assert!(deprecated.len() >= 3 && deprecated.contains(&"vane_info".to_string()), "{deprecated:?}");
    assert!(uses_metric("absent(vane_info)", "vane_info") && !uses_metric("vane_info_x + avane_info", "vane_info"));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["dashboards", "deploy", "charts"] {
        files_under(&root.join(dir), &mut files);
    }
    assert!(files.iter().any(|f| f.ends_with("deploy/components/alerts/prometheusrule.yaml")), "{files:?}");
    let mut uses = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            for name in deprecated.iter().filter(|name| uses_metric(line, name)) {
                uses.push(format!("{}:{}: {name}", file.strip_prefix(root).unwrap_or(file).display(), n + 1));
            }
        }
    }
    assert!(uses.is_empty(), "deprecated metric names (see docs/reference/metrics.md):\n{}", uses.join("\n"));
}
