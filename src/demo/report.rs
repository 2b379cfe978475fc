//! What the demo prints: one progress line per change, the summary (also as JSON for scripts and the
//! end-to-end test), and how to explore what is still running.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::load::Tally;
use crate::rollout::EventKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Expect {
    Succeeded,
    RolledBack,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The good rollout Succeeded and the bad one RolledBack (the exit status of `--exit`).
    pub ok: bool,
    pub api: String,
    pub nginx: String,
    pub prometheus: String,
    pub dir: String,
    pub rps: u32,
    pub interval_seconds: f64,
    pub threshold: u32,
    pub bad_error_rate: f64,
    pub rollouts: Vec<RolloutSummary>,
}

impl Summary {
    /// The good rollout Succeeded and the bad one RolledBack.
    pub fn ok_phases(&self) -> bool {
        self.rollouts.iter().all(|r| r.phase_ok)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSummary {
    pub name: String,
    pub id: String,
    pub from: String,
    pub to: String,
    pub expected: Expect,
    pub phase: String,
    pub phase_ok: bool,
    pub message: String,
    pub failed_checks: u64,
    /// Created → finished (from the rollout's events).
    pub duration_seconds: Option<f64>,
    /// The new version first got traffic → the rollout finished (for a rollback: traffic restored).
    pub traffic_seconds: Option<f64>,
    /// For the bad rollout: threshold × interval + 10 s.
    pub bound_seconds: Option<f64>,
    pub within_bound: Option<bool>,
    /// Canary weights the router confirmed, in order.
    pub weights: Vec<u64>,
    /// User requests answered while the rollout ran, by version.
    pub during: Tally,
    pub requests: u64,
    pub failed_requests: u64,
    /// The measured split once the rollout ended (percent per version).
    pub traffic_after: BTreeMap<String, f64>,
    pub traffic_after_requests: u64,
    pub traffic_after_failed: u64,
    /// Where all traffic must be afterwards: the new version on success, the stable one on rollback.
    pub expected_version_after: String,
    pub all_traffic_on_expected: bool,
}

pub fn millis(at: &Value) -> Option<u64> {
    let t = humantime::parse_rfc3339(at.as_str()?).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

fn seconds(from: Option<u64>, to: Option<u64>) -> Option<f64> {
    Some(to?.saturating_sub(from?) as f64 / 1000.0)
}

pub fn summarise(
    name: &str,
    last: &Value,
    events: Vec<Value>,
    expect: Expect,
    bound: Option<Duration>,
    during: Tally,
    after: Tally,
) -> RolloutSummary {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let (from, to, phase) = (s(&last["stableVersion"]), s(&last["version"]), s(&last["phase"]));
    let created = events.first().and_then(|e| millis(&e["at"]));
    let finished = events.last().and_then(|e| millis(&e["at"]));
    let weight_sets: Vec<&Value> = events.iter().filter(|e| e["type"] == EventKind::WeightSet.as_str()).collect();
    let first_traffic =
        weight_sets.iter().find(|e| e["details"]["canary"].as_u64().unwrap_or(0) > 0).and_then(|e| millis(&e["at"]));
    let traffic_seconds = seconds(first_traffic, finished);
    let bound_seconds = bound.map(|b| b.as_secs_f64());
    let expected_version_after = if expect == Expect::Succeeded { to.clone() } else { from.clone() };
    let expected_phase = match expect {
        Expect::Succeeded => "Succeeded",
        Expect::RolledBack => "RolledBack",
    };
    RolloutSummary {
        name: name.into(),
        id: s(&last["id"]),
        phase_ok: phase == expected_phase,
        from,
        to,
        expected: expect,
        phase,
        message: s(&last["message"]),
        failed_checks: last["failedChecks"].as_u64().unwrap_or(0),
        duration_seconds: seconds(created, finished),
        traffic_seconds,
        bound_seconds,
        within_bound: bound_seconds.and_then(|b| traffic_seconds.map(|t| t <= b)),
        weights: weight_sets.iter().filter_map(|e| e["details"]["canary"].as_u64()).collect(),
        requests: during.requests(),
        failed_requests: during.failed(),
        during,
        traffic_after: after.shares(),
        traffic_after_requests: after.requests(),
        traffic_after_failed: after.failed(),
        all_traffic_on_expected: after.requests() > 0 && after.share(&expected_version_after) == 100.0,
        expected_version_after,
    }
}

fn metric_value(m: &Value) -> String {
    let name = m["name"].as_str().unwrap_or_default();
    let bound = match (m["min"].as_f64(), m["max"].as_f64()) {
        (Some(min), _) => format!(" (min {min})"),
        (_, Some(max)) => format!(" (max {max})"),
        _ => String::new(),
    };
    match m["value"].as_f64() {
        None => format!("{name} no data"),
        Some(v) if name.contains("latency") => format!("{name} {v:.0} ms{bound}"),
        Some(v) => format!("{name} {v:.2}{bound}"),
    }
}

/// `   5.1s  Progressing   10%  analysis      pass: success-rate 100.00 (min 99) · latency-p95 45 ms (max 500)`
pub fn event_line(since_created: Duration, e: &Value) -> String {
    let kind = e["type"].as_str().unwrap_or_default();
    let text = match EventKind::parse(kind) {
        Some(EventKind::Analysis) => {
            let d = &e["details"];
            let metrics: Vec<String> = d["metrics"].as_array().into_iter().flatten().map(metric_value).collect();
            let verdict = d["verdict"].as_str().unwrap_or_default();
            if metrics.is_empty() {
                format!("{verdict}: {}", d["summary"].as_str().unwrap_or_default())
            } else {
                format!("{verdict}: {}", metrics.join(" · "))
            }
        }
        _ => e["message"].as_str().unwrap_or_default().to_string(),
    };
    format!(
        "{:>7.1}s  {:<12} {:>3}%  {kind:<13} {text}",
        since_created.as_secs_f64(),
        e["phase"].as_str().unwrap_or_default(),
        e["canaryWeight"].as_u64().unwrap_or(0)
    )
}

/// `   7.1s                      measured      last 2 s through NGINX: v2 53.1%, v1 46.9% (98 requests, 0 failed)`
pub fn traffic_line(elapsed: Duration, measured: &Tally) -> String {
    format!(
        "{:>7.1}s  {:<18} {:<13} last 2 s through NGINX: {}",
        elapsed.as_secs_f64(),
        "",
        "measured",
        measured.describe()
    )
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

pub fn print_summary(s: &Summary) {
    println!("\n══ summary ══");
    for r in &s.rollouts {
        let secs = |v: Option<f64>| v.map(|v| format!("{v:.1}s")).unwrap_or_else(|| "?".into());
        println!(
            "{} {:<4}  {} → {}  {} (expected {:?})  in {}",
            mark(r.phase_ok),
            r.name,
            r.from,
            r.to,
            r.phase,
            r.expected,
            secs(r.duration_seconds)
        );
        println!(
            "        user requests during the rollout: {} failed of {}  ({})",
            r.failed_requests,
            r.requests,
            r.during.describe()
        );
        if let (Some(b), Some(t)) = (r.bound_seconds, r.traffic_seconds) {
            println!(
                "      {} rolled back {t:.1}s after {} first got traffic (bound: {} failed checks × {}s + 10s = {b:.0}s)",
                mark(t <= b),
                r.to,
                s.threshold,
                s.interval_seconds
            );
        }
        let after: Vec<String> = r.traffic_after.iter().map(|(v, p)| format!("{v} {p:.1}%")).collect();
        println!(
            "      {} afterwards NGINX sent {} of {} requests to {} ({}; {} failed)",
            mark(r.all_traffic_on_expected),
            if r.all_traffic_on_expected { "all" } else { "NOT all" },
            r.traffic_after_requests,
            r.expected_version_after,
            after.join(", "),
            r.traffic_after_failed
        );
    }
}

pub struct Explore {
    pub exe: String,
    pub api: String,
    pub nginx: String,
    pub prometheus: String,
    pub dir: String,
    pub apps: Vec<(String, String, f64)>,
}

pub fn print_explore(e: &Explore) {
    println!(
        "\nEverything keeps running (the load too) until Ctrl-C. Explore:\n\
         \x20 export VANE_URL={api}\n\
         \x20 {exe} rollout list\n\
         \x20 {exe} rollout events <ID>          # every step, analysis and router call\n\
         \x20 curl -s {api}/api/v1/rollouts | head -c 600; echo\n\
         \x20 curl -s {api}/metrics | grep -E '^vane_(rollouts_total|rollback_seconds|router_requests)'\n\
         \x20 curl -si {nginx} | grep -i x-version   # which version NGINX sends you to\n\
         \x20 cat {dir}/nginx/split.conf             # the split file vane writes\n\
         \x20 Prometheus UI: {prom}/graph?g0.expr=sum%20by%20(version%2Ccode)%20(rate(http_requests_total%5B10s%5D))\n\
         Try the bad version again, and watch it:\n\
         \x20 id=$({exe} rollout start -f {dir}/rollout-v3.json) && {exe} rollout watch $id",
        api = e.api,
        exe = e.exe,
        nginx = e.nginx,
        dir = e.dir,
        prom = e.prometheus,
    );
    for (v, addr, err) in &e.apps {
        println!("  demo app {v}: http://{addr} ({:.0} % errors)", err * 100.0);
    }
}
