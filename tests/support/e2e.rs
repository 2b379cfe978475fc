//! End-to-end helpers: a "site" (two `vane demo-app` versions behind a real NGINX whose split file
//! vane owns), the real `vane` daemon with its policies, a REST client that waits for conditions, and
//! the measured traffic split (real requests, counted by the version that answered).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vane::demo::load::{self, Tally};
use vane::traffic::nginx::{parse_weight, split_file};

use super::daemon::Daemon;
use super::nginx::Nginx;
use super::prom::DemoApp;

pub const VARIABLE: &str = "vane_upstream";
pub const STABLE: &str = "stable_pool";
pub const CANARY: &str = "canary_pool";

/// v1 (stable, healthy) and v2 (canary, `canary_error_rate`) of `service` behind one NGINX.
pub struct Site {
    pub service: String,
    pub v1: DemoApp,
    pub v2: DemoApp,
    pub nginx: Nginx,
}

impl Site {
    pub async fn start(dir: &Path, service: &str, canary_error_rate: f64) -> Site {
        let (v1, v2) = tokio::join!(
            DemoApp::start(dir, service, "v1", 0.0, "5ms"),
            DemoApp::start(dir, service, "v2", canary_error_rate, "5ms"),
        );
        let nginx =
            Nginx::start(VARIABLE, v1.addr.port(), v2.addr.port(), &split_file(VARIABLE, STABLE, CANARY, 0)).await;
        Site { service: service.into(), v1, v2, nginx }
    }

    /// The `nginx` router of a rollout on this site: the daemon's profile `site` (see [`Site::profile`]).
    pub fn router(&self) -> Value {
        json!({ "kind": "nginx", "profile": "site", "stableUpstream": STABLE, "canaryUpstream": CANARY })
    }

    /// The daemon's `[routers.nginx.site]` profile for this NGINX, as an environment variable.
    pub fn profile(&self, test: Option<Vec<String>>, reload: Vec<String>) -> (&'static str, String) {
        use super::daemon::{toml_argv, toml_str};
        let test = test.map(|t| format!(", test = {}", toml_argv(&t))).unwrap_or_default();
        let file = self.nginx.split_file().display().to_string();
        let site = format!(
            "config_file = {}, variable = {}, reload = {}{test}",
            toml_str(&file),
            toml_str(VARIABLE),
            toml_argv(&reload)
        );
        ("VANE_ROUTERS_NGINX", format!("{{ site = {{ {site} }} }}"))
    }

    /// The profile with `nginx -t -q` and `nginx -s reload` for this NGINX.
    pub fn plain_profile(&self) -> (&'static str, String) {
        self.profile(Some(self.nginx.command(&["-t", "-q"])), self.nginx.command(&["-s", "reload"]))
    }

    /// A reload command that fails while `flag` exists (the router is unreachable) and logs
    /// `begin W` before and `done W` after reloading NGINX with the split file's weight W, pausing
    /// `pause` seconds after each (so a test can kill the daemon inside either window).
    pub fn reload_script(&self, dir: &Path, flag: &Path, log: &Path, pause: &str) -> Vec<String> {
        let script = dir.join("reload.sh");
        let reload: Vec<String> = self.nginx.command(&["-s", "reload"]).iter().map(|a| format!("'{a}'")).collect();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh
if [ -e '{flag}' ]; then echo 'connection refused: the load balancer is unreachable' >&2; exit 1; fi
                 w=$(sed -n 's/^# Written by vane: \\([0-9]*\\)% .*/\\1/p' '{split}')
                 echo \"begin $w\" >> '{log}'
sleep {pause}
{reload} || exit $?
echo \"done $w\" >> '{log}'
sleep {pause}
",
                flag = flag.display(),
                split = self.nginx.split_file().display(),
                log = log.display(),
                reload = reload.join(" "),
            ),
        )
        .expect("write the reload script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        vec![script.display().to_string()]
    }

    /// The canary weight in the split file NGINX was last (re)loaded from, as vane wrote it.
    pub fn file_weight(&self) -> Option<u8> {
        parse_weight(&std::fs::read_to_string(self.nginx.split_file()).ok()?, STABLE, CANARY)
    }

    /// `n` real requests through NGINX, counted by the version that answered.
    pub async fn measure(&self, n: u32) -> Tally {
        load::burst(&load::client(), &self.nginx.url(), n, 8).await
    }

    /// `n` requests once NGINX runs only the configuration vane last reloaded. `nginx -s reload` returns
    /// when the master got the signal; new workers take over and the old ones stop accepting a few
    /// milliseconds later (longer on a busy machine). Wait for that — requests all go to `version` and
    /// only the one worker of the new generation is left (at most 5 s) — then measure.
    pub async fn settled(&self, version: &str, n: u32) -> Tally {
        let start = Instant::now();
        loop {
            let probe = self.measure(20).await;
            if probe.share(version) == 100.0 && self.nginx.workers().len() == 1 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "NGINX never sent everything to {version}: {probe:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.measure(n).await
    }

    /// The create body of a v1 → v2 rollout of this site.
    pub fn body(&self, policy: &str, router: Value, overrides: Value) -> Value {
        json!({
            "service": self.service, "namespace": "shop", "version": "v2", "stableVersion": "v1",
            "policy": policy, "router": router, "overrides": overrides,
        })
    }
}

/// The weights a reload script logged as `what` ("begin" or "done"), in order.
pub fn logged_weights(log: &Path, what: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter_map(|l| l.strip_prefix(what)?.trim().parse().ok()).collect()
}

/// The real daemon in `dir` with these policies (`name`, YAML) and environment.
pub async fn daemon(dir: &Path, policies: &[(&str, &str)], env: &[(&str, String)]) -> Daemon {
    std::fs::create_dir_all(dir.join("policies")).expect("policies dir");
    for (name, yaml) in policies {
        std::fs::write(dir.join("policies").join(format!("{name}.yaml")), yaml).expect("write policy");
    }
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Daemon::start(&dir, super::daemon::free_port(), &env)
    })
    .await
    .expect("daemon start")
}

/// SIGKILL the daemon and start it again on the same port and store.
pub fn crash_and_restart(d: &mut Daemon) {
    tokio::task::block_in_place(|| d.restart());
}

pub fn daemon_log(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The daemon's REST API.
pub struct Api {
    pub url: String,
    pub dir: PathBuf,
    http: reqwest::Client,
}

pub fn api(d: &Daemon) -> Api {
    vane::install_crypto_provider();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client");
    Api { url: d.url.clone(), dir: d.dir.clone(), http }
}

impl Api {
    pub async fn create(&self, body: &Value) -> String {
        let res = self.http.post(format!("{}/api/v1/rollouts", self.url)).json(body).send().await.expect("create");
        let status = res.status();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "create: {v}");
        v["id"].as_str().expect("an id").to_string()
    }

    /// GET a path; None while the daemon is down (e.g. restarting).
    pub async fn try_get(&self, path: &str) -> Option<Value> {
        let res = self.http.get(format!("{}{path}", self.url)).send().await.ok()?;
        res.status().is_success().then_some(())?;
        res.json().await.ok()
    }

    pub async fn rollout(&self, id: &str) -> Value {
        self.try_get(&format!("/api/v1/rollouts/{id}")).await.unwrap_or_else(|| panic!("GET rollout {id}"))
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let v = self.try_get(&format!("/api/v1/rollouts/{id}/events")).await;
        v.and_then(|v| v["items"].as_array().cloned()).unwrap_or_else(|| panic!("GET events of {id}"))
    }

    pub async fn action(&self, id: &str, action: &str, body: Value) -> Value {
        let url = format!("{}/api/v1/rollouts/{id}/{action}", self.url);
        let res = self.http.post(url).json(&body).send().await.expect(action);
        let status = res.status();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{action}: {status} {v}");
        v
    }

    /// The value of one exposition line of `/metrics` starting with `series` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.http.get(format!("{}/metrics", self.url)).send().await.expect("metrics");
        let text = text.text().await.unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }

    /// Poll (every 50 ms) until `pred(rollout, events)` holds; panics with the history after `timeout`.
    pub async fn wait(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value, &[Value]) -> bool,
    ) -> (Value, Vec<Value>) {
        let start = Instant::now();
        loop {
            let r = self.try_get(&format!("/api/v1/rollouts/{id}")).await;
            let ev = self.try_get(&format!("/api/v1/rollouts/{id}/events")).await;
            if let (Some(r), Some(ev)) = (r, ev) {
                let events = ev["items"].as_array().cloned().unwrap_or_default();
                if pred(&r, &events) {
                    return (r, events);
                }
                if start.elapsed() > timeout {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}: {} at {}% — {}\n{}\n--- daemon log ---\n{}",
                        r["phase"],
                        r["canaryWeight"],
                        r["message"],
                        history(&events),
                        daemon_log(&self.dir)
                    );
                }
            } else if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; the daemon does not answer\n{}",
                    daemon_log(&self.dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_phase(&self, id: &str, phase: &str, timeout: Duration) -> (Value, Vec<Value>) {
        self.wait(id, phase, timeout, |r, _| r["phase"] == phase).await
    }
}

/// One line per event, for failure messages.
pub fn history(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            format!("{:>3} {} {:<12} {:>3}% {}", e["seq"], e["at"], s(&e["type"]), e["canaryWeight"], s(&e["message"]))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Events of one type.
pub fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// Milliseconds since the epoch of an event's `at`.
pub fn at(e: &Value) -> u64 {
    let t = humantime::parse_rfc3339(e["at"].as_str().unwrap_or_default()).expect("an RFC 3339 time");
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A canary policy with the deployment standard's SLOs (success rate ≥ 99 %, p95 ≤ 500 ms).
pub fn slo_policy(name: &str, steps: &str, interval: &str, threshold: u32, min_requests: u32) -> String {
    format!(
        "name: {name}\nstrategy: canary\nsteps: {steps}\ninterval: {interval}\nthreshold: {threshold}\n\
         progressDeadline: 90s\nonNoData: hold\nminRequests: {min_requests}\nmetrics:\n\
         \x20 - name: success-rate\n    template: success-rate\n    min: 99\n\
         \x20 - name: latency-p95\n    template: latency-p95\n    max: 500ms\n"
    )
}

/// Assert that a measured split sends `want` percent (± `tolerance` points) to v2 and nothing failed.
pub fn assert_split(what: &str, t: &Tally, want: f64, tolerance: f64) {
    let got = t.share("v2");
    assert!((got - want).abs() <= tolerance, "{what}: v2 got {got:.1}% of the traffic, want {want}% ({t:?})");
    assert_eq!(t.failed(), 0, "{what}: failed requests ({t:?})");
}
