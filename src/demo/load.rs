//! The demo's load generator: a steady request rate through NGINX, every answer counted by the version
//! that served it (the demo app's `x-version` header). The traffic split and the failed user requests
//! the demo reports are measured from real requests, not read from vane's own state.
//!
//! A request whose connection breaks before an answer (a keep-alive connection NGINX closes during a
//! graceful reload) is retried once, as browsers and proxies do for idempotent requests; a second
//! transport error, a timeout or any non-2xx answer is a failed user request.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Answers kept for windowed measurements.
const HISTORY: Duration = Duration::from_secs(120);
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
}

/// Requests by the version that answered them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    pub by_version: BTreeMap<String, Counts>,
    /// Failed without any version answering (NGINX errors, transport errors, timeouts).
    pub unanswered: u64,
    /// Retried once after a transport error (not failures unless the retry failed too).
    pub retried: u64,
}

impl Tally {
    pub fn requests(&self) -> u64 {
        self.by_version.values().map(|c| c.ok + c.failed).sum::<u64>() + self.unanswered
    }

    pub fn failed(&self) -> u64 {
        self.by_version.values().map(|c| c.failed).sum::<u64>() + self.unanswered
    }

    /// Percent of the requests a version answered that `version` answered (0 when none was answered).
    pub fn share(&self, version: &str) -> f64 {
        let answered: u64 = self.by_version.values().map(|c| c.ok + c.failed).sum();
        let mine = self.by_version.get(version).map_or(0, |c| c.ok + c.failed);
        if answered == 0 { 0.0 } else { 100.0 * mine as f64 / answered as f64 }
    }

    /// Every version's share, in percent.
    pub fn shares(&self) -> BTreeMap<String, f64> {
        self.by_version.keys().map(|v| (v.clone(), self.share(v))).collect()
    }

    /// What happened between `earlier` (a snapshot of the same totals) and `self`.
    pub fn minus(&self, earlier: &Tally) -> Tally {
        let by_version = self
            .by_version
            .iter()
            .map(|(v, c)| {
                let e = earlier.by_version.get(v).copied().unwrap_or_default();
                (v.clone(), Counts { ok: c.ok.saturating_sub(e.ok), failed: c.failed.saturating_sub(e.failed) })
            })
            .filter(|(_, c)| c.ok + c.failed > 0)
            .collect();
        Tally {
            by_version,
            unanswered: self.unanswered.saturating_sub(earlier.unanswered),
            retried: self.retried.saturating_sub(earlier.retried),
        }
    }

    fn record(&mut self, a: &Answer) {
        if a.retried {
            self.retried += 1;
        }
        match &a.version {
            Some(v) => {
                let c = self.by_version.entry(v.clone()).or_default();
                if a.ok {
                    c.ok += 1;
                } else {
                    c.failed += 1;
                }
            }
            None => self.unanswered += 1,
        }
    }

    /// `v2 48.0%, v1 52.0% (96 requests, 0 failed)`.
    pub fn describe(&self) -> String {
        let mut shares: Vec<(String, f64)> = self.shares().into_iter().collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let split: Vec<String> = shares.iter().map(|(v, s)| format!("{v} {s:.1}%")).collect();
        let split = if split.is_empty() { "no answers".to_string() } else { split.join(", ") };
        format!("{split} ({} requests, {} failed)", self.requests(), self.failed())
    }
}

/// The outcome of one user request.
#[derive(Debug, Clone)]
struct Answer {
    sent: Instant,
    version: Option<String>,
    ok: bool,
    retried: bool,
}

#[derive(Default)]
struct State {
    totals: Tally,
    recent: VecDeque<Answer>,
}

/// Sends `rps` requests per second to `url` until dropped.
pub struct LoadGen {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A keep-alive HTTP client for user requests.
pub fn client() -> reqwest::Client {
    crate::http::client_builder()
        .timeout(TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// One user request: GET `url`, retried once on a transport error.
async fn request(client: &reqwest::Client, url: &str) -> Answer {
    let sent = Instant::now();
    let mut retried = false;
    loop {
        match client.get(url).send().await {
            Ok(res) => {
                let version = res.headers().get("x-version").and_then(|v| v.to_str().ok()).map(str::to_string);
                let ok = res.status().is_success() && res.bytes().await.is_ok();
                return Answer { sent, version, ok, retried };
            }
            Err(e) if !retried && !e.is_timeout() => retried = true,
            Err(_) => {
                return Answer { sent, version: None, ok: false, retried };
            }
        }
    }
}

/// `n` requests over `conns` concurrent connections, as fast as they are answered.
pub async fn burst(client: &reqwest::Client, url: &str, n: u32, conns: u32) -> Tally {
    let conns = conns.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..conns {
        let (client, url) = (client.clone(), url.to_string());
        let share = n / conns + u32::from(i < n % conns);
        tasks.spawn(async move {
            let mut t = Tally::default();
            for _ in 0..share {
                t.record(&request(&client, &url).await);
            }
            t
        });
    }
    let mut total = Tally::default();
    while let Some(Ok(t)) = tasks.join_next().await {
        for (v, c) in t.by_version {
            let e = total.by_version.entry(v).or_default();
            e.ok += c.ok;
            e.failed += c.failed;
        }
        total.unanswered += t.unanswered;
        total.retried += t.retried;
    }
    total
}

impl LoadGen {
    pub fn start(url: String, rps: u32) -> LoadGen {
        let state = Arc::new(Mutex::new(State::default()));
        let client = client();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rps.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (client, url, state) = (client.clone(), url.clone(), shared.clone());
                // Requests overlap: a slow answer does not lower the rate.
                tokio::spawn(async move {
                    let a = request(&client, &url).await;
                    if let Ok(mut s) = state.lock() {
                        s.totals.record(&a);
                        let now = Instant::now();
                        while s.recent.front().is_some_and(|f| now.duration_since(f.sent) > HISTORY) {
                            s.recent.pop_front();
                        }
                        s.recent.push_back(a);
                    }
                });
            }
        });
        LoadGen { state, task }
    }

    /// Every answer so far.
    pub fn totals(&self) -> Tally {
        self.state.lock().map(|s| s.totals.clone()).unwrap_or_default()
    }

    /// Answers to the requests sent at or after `t` (within the last two minutes).
    pub fn since(&self, t: Instant) -> Tally {
        let mut out = Tally::default();
        if let Ok(s) = self.state.lock() {
            for a in s.recent.iter().filter(|a| a.sent >= t) {
                out.record(a);
            }
        }
        out
    }

    /// Answers to the requests sent in the last `d`.
    pub fn window(&self, d: Duration) -> Tally {
        self.since(Instant::now().checked_sub(d).unwrap_or_else(Instant::now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(version: Option<&str>, ok: bool) -> Answer {
        Answer { sent: Instant::now(), version: version.map(str::to_string), ok, retried: false }
    }

    #[test]
    fn shares_and_failures_are_counted_per_version() {
        let mut t = Tally::default();
        for _ in 0..3 {
            t.record(&answer(Some("v1"), true));
        }
        t.record(&answer(Some("v2"), false));
        t.record(&answer(None, false));
        assert_eq!(t.requests(), 5);
        assert_eq!(t.failed(), 2);
        assert_eq!(t.share("v1"), 75.0);
        assert_eq!(t.share("v2"), 25.0);
        assert_eq!(t.share("v3"), 0.0);
        let before = t.clone();
        t.record(&answer(Some("v2"), true));
        let d = t.minus(&before);
        assert_eq!((d.requests(), d.failed(), d.share("v2")), (1, 0, 100.0));
        assert_eq!(d.describe(), "v2 100.0% (1 requests, 0 failed)");
        assert_eq!(Tally::default().describe(), "no answers (0 requests, 0 failed)");
    }
}
