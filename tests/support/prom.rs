//! Real parts for the analysis tests: the Debian `prometheus` binary (scraping every second, on
//! 127.0.0.1 with a temp dir), `promtool` backfills, `vane demo-app` processes, a load generator,
//! and a scripted fake Prometheus for the client tests. Every process is killed on drop.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install -y --no-install-recommends prometheus";

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.0.id().to_string()]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {} failed", self.0.id());
    }
}

/// A binary from /usr/bin (or PATH); a missing one fails the test with how to install it.
pub fn tool(name: &str) -> PathBuf {
    let candidates = [PathBuf::from("/usr/bin").join(name), PathBuf::from("/usr/local/bin").join(name)];
    if let Some(p) = candidates.iter().find(|p| p.exists()) {
        return p.clone();
    }
    let which = Command::new("which").arg(name).output().ok().filter(|o| o.status.success());
    match which {
        Some(o) => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        None => {
            panic!("`{name}` is not installed; these tests need the real Prometheus: {INSTALL}")
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Poll `f` every 100 ms until it returns `Some`, or panic after `timeout` saying what was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `vane demo-app` in its own process.
pub struct DemoApp {
    pub addr: SocketAddr,
    pub version: String,
    _proc: Proc,
}

impl DemoApp {
    pub async fn start(dir: &Path, service: &str, version: &str, error_rate: f64, latency: &str) -> DemoApp {
        let port_file = dir.join(format!("{service}-{version}.addr"));
        let child = Command::new(env!("CARGO_BIN_EXE_vane"))
            .args(["demo-app", "--namespace", "shop", "--service", service, "--version", version])
            .args(["--error-rate", &error_rate.to_string(), "--latency", latency, "--listen", "127.0.0.1:0"])
            .arg("--port-file")
            .arg(&port_file)
            .stdout(Stdio::null())
            .spawn()
            .expect("vane demo-app starts");
        let proc = Proc(child);
        let addr = wait_for("the demo app's port file", Duration::from_secs(10), || {
            let f = port_file.clone();
            async move { std::fs::read_to_string(&f).ok().and_then(|s| s.trim().parse().ok()) }
        })
        .await;
        DemoApp { addr, version: version.into(), _proc: proc }
    }
}

/// Sends `rps` requests per second to `addr` until dropped (requests overlap, so a slow app keeps
/// receiving its rate).
pub struct Load(tokio::task::JoinHandle<()>);

impl Load {
    pub fn start(addr: SocketAddr, rps: u32) -> Load {
        vane::install_crypto_provider();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client");
        let url = format!("http://{addr}/api/work");
        Load(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rps.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let (h, u) = (http.clone(), url.clone());
                tokio::spawn(async move {
                    let _ = h.get(u).send().await;
                });
            }
        }))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A real Prometheus on 127.0.0.1 with its data in a temp dir.
pub struct Prometheus {
    pub url: String,
    proc: Option<Proc>,
    pub dir: PathBuf,
}

impl Prometheus {
    /// Start scraping `targets` every second (`data` may hold backfilled blocks already).
    pub fn start(dir: &Path, targets: &[SocketAddr]) -> Prometheus {
        Prometheus::start_jobs(dir, &[("demo", targets)])
    }

    /// Start scraping every second, one scrape job per `(job name, targets)`.
    pub fn start_jobs(dir: &Path, jobs: &[(&str, &[SocketAddr])]) -> Prometheus {
        vane::install_crypto_provider();
        let bin = tool("prometheus");
        let port = free_port();
        let mut config = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n".to_string();
        for (job, targets) in jobs {
            let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
            config += &format!("  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n", list.join(", "));
        }
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config).expect("write prometheus.yml");
        std::fs::create_dir_all(dir.join("data")).expect("data dir");
        Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            proc: Some(spawn(&bin, dir, port)),
            dir: dir.to_path_buf(),
        }
    }

    /// Start again after [`Prometheus::stop`]: same port, same configuration, same data directory.
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "stop prometheus before restarting it");
        let port = self.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("the port of the url");
        self.proc = Some(spawn(&tool("prometheus"), &self.dir, port));
    }

    pub async fn ready(&self) {
        let url = format!("{}/-/ready", self.url);
        let log = self.dir.join("prometheus.log");
        wait_for("prometheus to be ready", Duration::from_secs(20), || {
            let (u, log) = (url.clone(), log.clone());
            async move {
                let ok = reqwest::get(&u).await.is_ok_and(|r| r.status().is_success());
                if !ok && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("level=error")) {
                    panic!("prometheus failed: {}", std::fs::read_to_string(&log).unwrap_or_default());
                }
                ok.then_some(())
            }
        })
        .await
    }

    /// Evaluate an instant query now; the first value, if any.
    pub async fn value(&self, q: &str) -> Option<f64> {
        let res = reqwest::Client::new()
            .post(format!("{}/api/v1/query", self.url))
            .form(&[("query", q)])
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = res.json().await.ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Freeze the process (it accepts connections but never answers).
    pub fn pause(&self) {
        if let Some(p) = &self.proc {
            p.signal("-STOP");
        }
    }

    pub fn resume(&self) {
        if let Some(p) = &self.proc {
            p.signal("-CONT");
        }
    }

    pub fn stop(&mut self) {
        self.proc = None;
    }
}

fn spawn(bin: &Path, dir: &Path, port: u16) -> Proc {
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let child = Command::new(bin)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--storage.tsdb.retention.time=30d")
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("prometheus does not start ({e}); {INSTALL}"));
    Proc(child)
}

/// `promtool tsdb create-blocks-from openmetrics` of `openmetrics` into `<dir>/data`.
pub fn backfill(dir: &Path, openmetrics: &str) {
    let input = dir.join("history.om");
    std::fs::write(&input, openmetrics).expect("write openmetrics");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let out = Command::new(tool("promtool"))
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&data)
        .output()
        .unwrap_or_else(|e| panic!("promtool does not run ({e}); {INSTALL}"));
    assert!(
        out.status.success(),
        "promtool backfill failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the fake Prometheus saw of one query.
#[derive(Debug, Clone)]
pub struct Seen {
    pub query: String,
    pub form: HashMap<String, String>,
    pub headers: HashMap<String, String>,
}

/// A scripted stand-in for Prometheus' query API: the first rule whose needle occurs in the query
/// answers (a JSON body and a status), after `delay`.
#[derive(Clone, Default)]
pub struct FakeProm {
    pub rules: Arc<Mutex<Vec<(String, u16, String)>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub delay: Arc<Mutex<Duration>>,
    pub in_flight: Arc<Mutex<(u32, u32)>>,
}

pub fn vector(value: f64) -> String {
    format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1.0,"{value}"]}}]}}}}"#
    )
}

/// A `sum by (le)` answer: one series per bucket.
pub fn buckets(counts: &[(&str, f64)]) -> String {
    let series: Vec<String> =
        counts.iter().map(|(le, v)| format!(r#"{{"metric":{{"le":"{le}"}},"value":[1.0,"{v}"]}}"#)).collect();
    format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#, series.join(","))
}

pub fn empty() -> String {
    r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.into()
}

impl FakeProm {
    pub fn rule(&self, needle: &str, status: u16, body: String) -> &Self {
        self.rules.lock().unwrap().push((needle.into(), status, body));
        self
    }

    pub fn queries(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|s| s.query.clone()).collect()
    }

    pub async fn serve(&self) -> String {
        use axum::extract::{Form, State};
        use axum::http::HeaderMap;
        async fn query(
            State(f): State<FakeProm>,
            headers: HeaderMap,
            Form(form): Form<HashMap<String, String>>,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            {
                let mut n = f.in_flight.lock().unwrap();
                n.0 += 1;
                n.1 = n.1.max(n.0);
            }
            let delay = *f.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            f.in_flight.lock().unwrap().0 -= 1;
            let q = form.get("query").cloned().unwrap_or_default();
            let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
            f.seen.lock().unwrap().push(Seen { query: q.clone(), form: form.clone(), headers });
            let rule = f.rules.lock().unwrap().iter().find(|(n, _, _)| q.contains(n.as_str())).cloned();
            let (status, body) = rule.map(|(_, s, b)| (s, b)).unwrap_or((200, empty()));
            let status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK);
            (status, [("content-type", "application/json")], body).into_response()
        }
        let app = axum::Router::new().route("/api/v1/query", axum::routing::post(query)).with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake prometheus");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }
}
