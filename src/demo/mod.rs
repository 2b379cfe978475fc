//! `vane demo`: the whole product on one machine, with real parts.
//!
//! It starts three `vane demo-app` versions (v1 and v2 healthy, v3 answering a share of requests with
//! HTTP 500), a real NGINX routing to them through the split file vane owns, a real Prometheus scraping
//! them every second, the daemon itself (in this process, with the standalone `nginx` router) and a load
//! generator sending user requests through NGINX. Then it runs two rollouts and prints their progress
//! live: v1 → v2, which succeeds, and v2 → v3, which breaks its SLO and is rolled back by vane on its
//! own. The traffic split and the failed user requests it reports are measured from real requests.
//!
//! NGINX has one upstream per version (`app_v1`, `app_v2`, `app_v3`); each rollout's router names its
//! stable and canary upstreams, so v2 is the canary of the first rollout and the stable of the second.

pub mod load;
mod procs;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use self::load::LoadGen;
use self::procs::{App, Nginx, Prometheus};
use self::report::{Expect, RolloutSummary, Summary};
use crate::config::Config;

const VARIABLE: &str = "demo_upstream";
const POLICY: &str = "demo-canary";
const THRESHOLD: u32 = 2;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Stop after the two rollouts with a summary; exit 0 only if the good rollout Succeeded and the
    /// bad one RolledBack. Without it everything keeps running for exploring until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Working directory (configs, logs, store); default: a temporary directory removed at the end.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Share of requests the bad version (v3) answers with HTTP 500.
    #[arg(long, default_value_t = 0.1, value_parser = crate::demo_app::parse_fraction)]
    pub bad_error_rate: f64,
    /// User requests per second sent through NGINX.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(5..=2000))]
    pub rps: u32,
    /// Analysis interval of the demo's canary policy.
    #[arg(long, default_value = "5s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Address of vane's API (loopback only); when taken, a free port is used.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The NGINX binary (default: `nginx` on PATH, or /usr/sbin/nginx).
    #[arg(long, env = "VANE_DEMO_NGINX")]
    pub nginx: Option<PathBuf>,
    /// The Prometheus binary (default: `prometheus` on PATH, or /usr/bin/prometheus).
    #[arg(long, env = "VANE_DEMO_PROMETHEUS")]
    pub prometheus: Option<PathBuf>,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&d) {
        return Err("choose an interval between 1s and 60s".into());
    }
    Ok(d)
}

/// Run the demo; returns the process exit code.
pub async fn run(args: DemoArgs) -> anyhow::Result<u8> {
    crate::install_crypto_provider();
    if !args.listen.ip().is_loopback() {
        bail!("--listen {}: the demo's API has no tokens, so it only listens on loopback", args.listen);
    }
    let (nginx_bin, prom_bin) = procs::require_tools(args.nginx.as_deref(), args.prometheus.as_deref())?;
    let work = WorkDir::new(args.dir.as_deref())?;
    init_logging(&work.path.join("vane.log"));
    println!("vane demo — working directory {} (daemon log: vane.log)", work.path.display());
    let outcome = tokio::select! {
        r = scenario(&args, &work.path, &nginx_bin, &prom_bin) => r?,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: stopping the load, the daemon, Prometheus, NGINX and the apps");
            return Ok(130);
        }
    };
    let (stack, summary) = outcome;
    if let Some(f) = &args.summary_json {
        std::fs::write(f, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", f.display()))?;
    }
    report::print_summary(&summary);
    if !args.exit {
        report::print_explore(&stack.explore(&work.path));
        let _ = tokio::signal::ctrl_c().await;
        println!("\nstopping the load, the daemon, Prometheus, NGINX and the apps");
    }
    stack.stop().await;
    Ok(if summary.ok_phases() { 0 } else { 1 })
}

/// The demo's directory: given (must be empty or a previous demo's), or a temporary one removed on drop.
struct WorkDir {
    path: PathBuf,
    temporary: bool,
}

const MARKER: &str = ".vane-demo";

impl WorkDir {
    fn new(given: Option<&Path>) -> anyhow::Result<WorkDir> {
        let (path, temporary) = match given {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                let mut entries = std::fs::read_dir(d)?.filter_map(|e| e.ok()).map(|e| e.file_name());
                let ours = d.join(MARKER).exists();
                if !ours && entries.next().is_some() {
                    bail!("--dir {}: not empty and not a previous demo's directory; give an empty one", d.display());
                }
                for sub in ["data", "prometheus", "nginx", "apps", "policies"] {
                    let _ = std::fs::remove_dir_all(d.join(sub));
                }
                (d.canonicalize()?, false)
            }
            None => {
                let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let d = std::env::temp_dir().join(format!("vane-demo-{}-{}", std::process::id(), stamp.as_millis()));
                std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
                (d, true)
            }
        };
        std::fs::write(path.join(MARKER), "a vane demo directory; `vane demo --dir` may reuse it\n")?;
        Ok(WorkDir { path, temporary })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The daemon's logs go to a file: the terminal shows the demo's own progress lines.
fn init_logging(file: &Path) {
    use tracing_subscriber::EnvFilter;
    let Ok(f) = std::fs::File::create(file) else {
        return;
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(f))
        .try_init();
}

/// Everything the demo started. Fields drop in order: the load stops first, the apps last.
struct Stack {
    load: LoadGen,
    daemon_stop: Option<tokio::sync::oneshot::Sender<()>>,
    daemon: DaemonTask,
    api: String,
    http: reqwest::Client,
    prom: Prometheus,
    nginx: Nginx,
    apps: Vec<App>,
    exe: PathBuf,
    rps: u32,
}

impl Stack {
    /// Stop the load and the daemon gracefully; the children stop when the stack drops.
    async fn stop(self) {
        let Stack { load, daemon_stop, daemon, .. } = self;
        drop(load);
        if let Some(tx) = daemon_stop {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), daemon).await;
    }

    fn explore(&self, dir: &Path) -> report::Explore {
        report::Explore {
            exe: self.exe.display().to_string(),
            api: self.api.clone(),
            nginx: self.nginx.url(),
            prometheus: self.prom.url.clone(),
            dir: dir.display().to_string(),
            apps: self.apps.iter().map(|a| (a.version.clone(), a.addr.to_string(), a.error_rate)).collect(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.api));
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.with_context(|| format!("calling vane at {}", self.api))?;
        let status = res.status();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status}: {v}");
        }
        Ok(v)
    }
}

/// Pick the API address: `wanted` when free, else a free loopback port.
fn api_addr(wanted: SocketAddr) -> anyhow::Result<SocketAddr> {
    if let Ok(l) = std::net::TcpListener::bind(wanted) {
        return Ok(l.local_addr()?);
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], procs::free_port()?));
    println!("  ({wanted} is taken; the API listens on {addr})");
    Ok(addr)
}

fn policy_yaml(interval: Duration, rps: u32) -> String {
    // At the first step (10 %) a window holds about rps × interval / 10 canary requests; ask for a
    // third of that so a healthy canary is judged at its first analysis.
    let min_requests = (rps as f64 * interval.as_secs_f64() / 30.0).clamp(3.0, 50.0) as u64;
    let deadline = (interval * 12).max(Duration::from_secs(60));
    format!(
        "# Written by vane demo: a short canary with the deployment standard's SLOs.\n\
         name: {POLICY}\nstrategy: canary\nsteps: [10, 50, 100]\ninterval: {}\nthreshold: {THRESHOLD}\n\
         progressDeadline: {}\nonNoData: hold\nminRequests: {min_requests}\nmetrics:\n\
         \x20 - name: success-rate\n    template: success-rate\n    min: 99\n\
         \x20 - name: latency-p95\n    template: latency-p95\n    max: 500ms\n",
        humantime::format_duration(interval),
        humantime::format_duration(deadline)
    )
}

async fn start_stack(args: &DemoArgs, dir: &Path, nginx_bin: &Path, prom_bin: &Path) -> anyhow::Result<Stack> {
    let exe = std::env::current_exe().context("locating the vane binary")?;
    let apps_dir = dir.join("apps");
    std::fs::create_dir_all(&apps_dir)?;
    let (v1, v2, v3) = tokio::try_join!(
        App::start(&exe, &apps_dir, "v1", 0.0),
        App::start(&exe, &apps_dir, "v2", 0.0),
        App::start(&exe, &apps_dir, "v3", args.bad_error_rate),
    )?;
    for a in [&v1, &v2, &v3] {
        let health =
            if a.error_rate > 0.0 { format!("{:.0} % errors", a.error_rate * 100.0) } else { "healthy".into() };
        println!("  demo app {}    http://{} ({health})", a.version, a.addr);
    }
    let initial = crate::traffic::nginx::split_file(VARIABLE, &v1.upstream(), &v2.upstream(), 0);
    let nginx = Nginx::start(nginx_bin, &dir.join("nginx"), &[&v1, &v2, &v3], VARIABLE, &initial).await?;
    println!("  NGINX          {} (vane owns {})", nginx.url(), nginx.split_file().display());
    let api = api_addr(args.listen)?;
    let prom = Prometheus::start(prom_bin, &dir.join("prometheus"), &[&v1, &v2, &v3], api).await?;
    println!("  Prometheus     {} (scrapes the apps and vane every second)", prom.url);

    std::fs::create_dir_all(dir.join("policies"))?;
    std::fs::write(dir.join("policies").join(format!("{POLICY}.yaml")), policy_yaml(args.interval, args.rps))?;
    let mut cfg = Config::default();
    cfg.server.listen = api.to_string();
    cfg.store.path = dir.join("data");
    cfg.policies.dir = dir.join("policies");
    cfg.prometheus.url = prom.url.clone();
    cfg.prometheus.timeout = Duration::from_secs(2);
    // Two scrapes at least; the analysis window is the policy's interval.
    cfg.prometheus.min_window = Duration::from_secs(2);
    // The NGINX router is a profile of the daemon's configuration: rollouts name it, never a file.
    cfg.routers.nginx.insert(
        PROFILE.into(),
        crate::config::NginxProfile {
            config_file: nginx.split_file(),
            variable: VARIABLE.into(),
            test: Some(nginx.command(&["-t", "-q"])),
            reload: nginx.command(&["-s", "reload"]),
            namespaces: vec!["demo".into()],
        },
    );
    let http = load::client();
    let api = format!("http://{api}");
    let (tx, daemon) = start_daemon(cfg, &http, &api).await?;
    println!(
        "  vane API       {api} (policy {POLICY}: 10 → 50 → 100 %, analysis every {}, rollback after {THRESHOLD} failed checks; SLOs success rate ≥ 99 %, p95 ≤ 500 ms)",
        humantime::format_duration(args.interval)
    );
    let load = LoadGen::start(nginx.url(), args.rps);
    println!("  load           {} requests/s through NGINX", args.rps);
    Ok(Stack {
        load,
        daemon_stop: Some(tx),
        daemon,
        api,
        http,
        prom,
        nginx,
        apps: vec![v1, v2, v3],
        exe,
        rps: args.rps,
    })
}

type DaemonTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// The daemon in this process (a task of the demo's runtime), stopped when the sender fires or drops.
async fn start_daemon(
    cfg: Config,
    http: &reqwest::Client,
    api: &str,
) -> anyhow::Result<(tokio::sync::oneshot::Sender<()>, DaemonTask)> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut daemon = tokio::spawn(crate::daemon::run(cfg, async move {
        let _ = rx.await;
    }));
    let ready = format!("{api}/health/ready");
    let up = procs::wait_for("vane's API to be ready", Duration::from_secs(20), || {
        let finished = daemon.is_finished();
        let req = http.get(&ready).send();
        async move {
            if finished {
                return Ok(Some(()));
            }
            Ok(req.await.ok().filter(|r| r.status().is_success()).map(|_| ()))
        }
    })
    .await;
    if daemon.is_finished() {
        let why = match (&mut daemon).await {
            Ok(Err(e)) => format!("{e:#}"),
            Ok(Ok(())) => "it stopped".into(),
            Err(e) => e.to_string(),
        };
        bail!("vane's daemon did not start: {why}");
    }
    up?;
    Ok((tx, daemon))
}

async fn scenario(args: &DemoArgs, dir: &Path, nginx_bin: &Path, prom_bin: &Path) -> anyhow::Result<(Stack, Summary)> {
    println!("starting:");
    let stack = start_stack(args, dir, nginx_bin, prom_bin).await?;
    let client = reqwest::Client::new();
    println!("waiting for Prometheus' first scrapes of the three apps...");
    procs::wait_for("Prometheus to scrape the apps", Duration::from_secs(30), || {
        let (p, c) = (&stack.prom, &client);
        async move { Ok(p.value(c, r#"count(up{job="demo"} == 1)"#).await.filter(|n| *n >= 3.0)) }
    })
    .await?;
    let bound = args.interval * THRESHOLD + Duration::from_secs(10);
    let good = run_rollout(&stack, dir, "good", "v1", "v2", Expect::Succeeded, None).await?;
    let bad = run_rollout(&stack, dir, "bad", "v2", "v3", Expect::RolledBack, Some(bound)).await?;
    let mut summary = Summary {
        ok: false,
        api: stack.api.clone(),
        nginx: stack.nginx.url(),
        prometheus: stack.prom.url.clone(),
        dir: dir.display().to_string(),
        rps: args.rps,
        interval_seconds: args.interval.as_secs_f64(),
        threshold: THRESHOLD,
        bad_error_rate: args.bad_error_rate,
        rollouts: vec![good, bad],
    };
    summary.ok = summary.ok_phases();
    Ok((stack, summary))
}

/// The daemon's `[routers.nginx.demo]` profile.
const PROFILE: &str = "demo";

fn router(from: &str, to: &str) -> Value {
    json!({
        "kind": "nginx",
        "profile": PROFILE,
        "stableUpstream": procs::upstream(from),
        "canaryUpstream": procs::upstream(to),
    })
}

async fn run_rollout(
    stack: &Stack,
    dir: &Path,
    name: &str,
    from: &str,
    to: &str,
    expect: Expect,
    bound: Option<Duration>,
) -> anyhow::Result<RolloutSummary> {
    let body = json!({
        "service": "demo", "namespace": "demo", "version": to, "stableVersion": from, "policy": POLICY,
        "router": router(from, to),
    });
    let file = dir.join(format!("rollout-{to}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(&body)?)?;
    let what = if expect == Expect::Succeeded { "healthy, should succeed" } else { "bad, should roll back" };
    println!("\n── rollout {name}: {from} → {to} ({what}); body in {} ──", file.display());
    let before = stack.load.totals();
    let started = Instant::now();
    let created = stack.call(reqwest::Method::POST, "/api/v1/rollouts", Some(&body)).await?;
    let id = created["id"].as_str().context("the create answer has no id")?.to_string();
    println!("   id {id}");
    let last = follow(stack, &id, started).await?;
    let during = stack.load.totals().minus(&before);
    let events = stack.call(reqwest::Method::GET, &format!("/api/v1/rollouts/{id}/events"), None).await?;
    // Measure the live split once NGINX' reload has certainly completed.
    let settle = Instant::now() + Duration::from_secs(1);
    let want = 100.min(u64::from(stack.rps) * 2);
    let deadline = settle + Duration::from_secs(6);
    tokio::time::sleep_until(settle.into()).await;
    while stack.load.since(settle).requests() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = stack.load.since(settle);
    Ok(report::summarise(
        name,
        &last,
        events["items"].as_array().cloned().unwrap_or_default(),
        expect,
        bound,
        during,
        after,
    ))
}

/// Print each new event of the rollout as it happens, and every 2 s the split NGINX really serves,
/// until the rollout ends; returns the final rollout.
async fn follow(stack: &Stack, id: &str, started: Instant) -> anyhow::Result<Value> {
    let mut shown = 0;
    let mut created = None;
    let mut printed = Instant::now();
    let limit = Duration::from_secs(600);
    loop {
        let r = stack.call(reqwest::Method::GET, &format!("/api/v1/rollouts/{id}"), None).await?;
        let events = stack.call(reqwest::Method::GET, &format!("/api/v1/rollouts/{id}/events"), None).await?;
        for e in events["items"].as_array().into_iter().flatten() {
            let seq = e["seq"].as_u64().unwrap_or(0);
            if seq <= shown {
                continue;
            }
            shown = seq;
            let at = report::millis(&e["at"]).unwrap_or(0);
            let since = at.saturating_sub(*created.get_or_insert(at));
            println!("{}", report::event_line(Duration::from_millis(since), e));
        }
        let phase = r["phase"].as_str().unwrap_or_default();
        let done = matches!(phase, "Succeeded" | "RolledBack" | "Aborted" | "Failed");
        if done || printed.elapsed() >= Duration::from_secs(2) {
            let measured = stack.load.window(Duration::from_secs(2));
            println!("{}", report::traffic_line(started.elapsed(), &measured));
            printed = Instant::now();
        }
        if done {
            return Ok(r);
        }
        if started.elapsed() > limit {
            bail!("rollout {id} did not finish within {limit:?}: {}", r["message"]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
