//! Verdict → NGINX confirmed at 0 % canary, over VANE_ROLLBACKS rollbacks (default 100 with
//! `--bench`, 3 without) in the NGINX e2e setting (issue 17's goal: p99 ≤ 50 ms).
//!
//! A real NGINX (tests/support/nginx.rs) in front of two backends, the daemon's `nginx` router built
//! by `Routers::with_profiles` from a `[routers.nginx.edge]` profile (`nginx -t -q`, then
//! `nginx -s reload`), the real controller and driver on a real sled store in a temp dir, and ~50
//! requests/s of background traffic through NGINX for the whole run (failed requests reported,
//! expected 0). One rollout of the same service after another, steps [50, 100] at a 200 ms
//! interval, threshold 1; this file's analyzer fails the first analysis with a clear regression
//! and records the `Instant` it returns the failing report (the verdict) and NGINX's workers at
//! that moment (the 50 % configuration's). The rollout rolls back; "confirmed" is the first poll
//! (every 1 ms, on a thread of its own) at which the split file says 0 % AND every one of those
//! workers is gone (the reload completed). Printed: p50 / p99 / max of verdict → confirmed, of its
//! phases (verdict → split file at 0 %, → router write returned (decision committed, file written,
//! `nginx -t`, `nginx -s reload`), → the master logged "start worker process", → old workers gone),
//! and of create → 50 % confirmed. NGINX's master sleeps 100 ms between starting the new workers
//! and telling the old ones to quit (`ngx_msleep(100)` in src/os/unix/ngx_process_cycle.c), so
//! "old workers gone" is at least ~100 ms after the reload signal whatever vane does.
//!
//! Without `--bench` (`cargo test --bench rollback_nginx`) the run is tiny and checks, without
//! timing, that every rollback ended RolledBack and that NGINX then sends every request to stable.
//!
//! Run: `cargo bench --bench rollback_nginx --no-run`, then
//! `taskset -c 0 target/release/deps/rollback_nginx-<hash> --bench` (NGINX, started by the
//! benchmark, inherits the CPU pinning). Needs nginx installed (`apt-get install nginx`).

#[path = "../tests/support/nginx.rs"]
mod nginx;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nginx::{Nginx, Tally};
use vane::BoxFut;
use vane::config::{NginxProfile, RouterProfiles};
use vane::fixtures::{self, NoWorkloads};
use vane::notify::{AlwaysOk, Silent};
use vane::policy::FieldError;
use vane::rollout::clock::SystemClock;
use vane::rollout::controller::Controller;
use vane::rollout::driver::Env;
use vane::rollout::ports::{
    AnalysisContext, AnalysisReport, Analyzer, MetricVerdict, Router, RouterError, RouterFactory, Verdict,
};
use vane::rollout::{CreateRequest, Phase, Rollout, RouterSpec};
use vane::store::Store;
use vane::telemetry::Metrics;
use vane::traffic::Routers;
use vane::traffic::nginx::{parse_weight, split_file};

const POLL: Duration = Duration::from_millis(1);
const INTERVAL: Duration = Duration::from_millis(200);
const SERVICE: &str = "checkout";

/// What the analyzer saw when it returned the failing report.
#[derive(Clone)]
struct VerdictAt {
    at: Instant,
    /// NGINX's workers then: the 50 % configuration's.
    workers: Vec<u32>,
}

/// Fails the first analysis of every rollout (success rate 80 % against a 99 % floor).
struct FailFirst {
    nginx: Arc<Nginx>,
    verdicts: Mutex<HashMap<String, VerdictAt>>,
}

impl FailFirst {
    fn verdict(&self, id: &str) -> Option<VerdictAt> {
        self.verdicts.lock().ok()?.get(id).cloned()
    }
}

impl Analyzer for FailFirst {
    fn analyse(&self, ctx: AnalysisContext) -> BoxFut<'_, AnalysisReport> {
        Box::pin(async move {
            let first = self.verdicts.lock().map(|v| !v.contains_key(&ctx.rollout.id)).unwrap_or(false);
            let (verdict, value, result) = if first {
                (Verdict::Fail, 80.0, MetricVerdict::Fail)
            } else {
                (Verdict::Pass, 99.9, MetricVerdict::Pass)
            };
            let metric = vane::fixtures::success_rate(Some(value), result);
            let summary = format!("request-success-rate {value} % < 99 % at {} % canary", ctx.rollout.canary_weight);
            let report = AnalysisReport { at: ctx.now, verdict, metrics: vec![metric], summary };
            if first {
                let workers = self.nginx.workers();
                let v = VerdictAt { at: Instant::now(), workers };
                if let Ok(mut m) = self.verdicts.lock() {
                    m.insert(ctx.rollout.id.clone(), v);
                }
            }
            report
        })
    }
}

/// The daemon's routers, each wrapped to record when `set_weight` returned.
struct TimedRouters {
    routers: Routers,
    last: Arc<Mutex<Option<(u8, Instant)>>>,
}

struct Timed {
    inner: Arc<dyn Router>,
    last: Arc<Mutex<Option<(u8, Instant)>>>,
}

impl RouterFactory for TimedRouters {
    fn build(&self, r: &Rollout) -> Result<Arc<dyn Router>, RouterError> {
        Ok(Arc::new(Timed { inner: self.routers.build(r)?, last: self.last.clone() }))
    }
    fn admit(&self, req: &CreateRequest) -> Result<(), FieldError> {
        self.routers.admit(req)
    }
}

impl Router for Timed {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn validate(&self) -> BoxFut<'_, Result<(), RouterError>> {
        self.inner.validate()
    }
    fn set_weight(&self, canary: u8) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(async move {
            let res = self.inner.set_weight(canary).await;
            if res.is_ok()
                && let Ok(mut l) = self.last.lock()
            {
                *l = Some((canary, Instant::now()));
            }
            res
        })
    }
    fn observe(&self) -> BoxFut<'_, Result<Option<u8>, RouterError>> {
        self.inner.observe()
    }
}

/// Whether NGINX worker `pid` of `master` has exited (gone, a zombie, or no longer its child).
fn gone(pid: u32, master: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    let mut after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default().split_whitespace();
    let state = after.next();
    let ppid = after.next().and_then(|p| p.parse::<u32>().ok());
    state == Some("Z") || ppid != Some(master)
}

fn split_weight(n: &Nginx) -> Option<u8> {
    parse_weight(&std::fs::read_to_string(n.split_file()).ok()?, "stable_pool", "canary_pool")
}

/// When [`confirm`] saw each stage.
struct Confirmed {
    /// First poll seeing the split file at the weight.
    file: Instant,
    /// First poll seeing the master log "start worker process" (the new configuration takes new
    /// connections; the old workers keep theirs until told to quit).
    started: Option<Instant>,
    /// The file at the weight and every old worker gone.
    done: Instant,
}

/// Bytes in NGINX's error log (the master logs "start worker process N" at notice level).
fn log_len(n: &Nginx) -> u64 {
    std::fs::metadata(n.dir.path().join("error.log")).map(|m| m.len()).unwrap_or(0)
}

fn started_since(n: &Nginx, offset: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(n.dir.path().join("error.log")) else { return false };
    let mut text = String::new();
    f.seek(SeekFrom::Start(offset)).is_ok()
        && f.read_to_string(&mut text).is_ok()
        && text.contains("start worker process")
}

/// Poll every [`POLL`] until the split file says `weight` and every worker in `old` is gone; with
/// `log_from`, also note when the master logged starting a worker after that offset.
fn confirm(n: &Nginx, weight: u8, old: &[u32], log_from: Option<u64>, deadline: Instant) -> Confirmed {
    let master = n.master_pid().expect("nginx master pid");
    let (mut file, mut started) = (None, None);
    loop {
        let now = Instant::now();
        if let Some(offset) = log_from
            && started.is_none()
            && started_since(n, offset)
        {
            started = Some(now);
        }
        if split_weight(n) == Some(weight) {
            let file = *file.get_or_insert(now);
            if old.iter().all(|p| gone(*p, master)) {
                return Confirmed { file, started, done: now };
            }
        }
        assert!(
            now < deadline,
            "NGINX never confirmed {weight} % (workers {old:?} → {:?}):\n{}",
            n.workers(),
            n.logs()
        );
        std::thread::sleep(POLL);
    }
}

fn env_usize(name: &str, bench: usize, test: usize, is_bench: bool) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(if is_bench { bench } else { test })
}

/// Nearest-rank quantile.
fn q(sorted: &[Duration], f: f64) -> Duration {
    sorted[((sorted.len() as f64 * f).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    if v.is_empty() {
        return;
    }
    println!("{name:<36} p50 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}", q(&v, 0.5), q(&v, 0.99), v[v.len() - 1]);
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: keep that run tiny.
    let bench = std::env::args().any(|a| a == "--bench");
    let rollbacks = env_usize("VANE_ROLLBACKS", 100, 3, bench);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!("load average        {}", loadavg());
    rt.block_on(run(rollbacks));
    println!("load average        {}", loadavg());
}

async fn run(rollbacks: usize) {
    vane::install_crypto_provider();
    let stable = nginx::backend("stable").await;
    let canary = nginx::backend("canary").await;
    let initial = split_file("vane_upstream", "stable_pool", "canary_pool", 0);
    let n = Arc::new(Nginx::start("vane_upstream", stable, canary, &initial).await);

    let mut profiles = RouterProfiles::default();
    profiles.nginx.insert(
        "edge".into(),
        NginxProfile {
            config_file: n.split_file(),
            variable: "vane_upstream".into(),
            test: Some(n.command(&["-t", "-q"])),
            reload: n.command(&["-s", "reload"]),
            namespaces: vec!["*".into()],
        },
    );
    let last = Arc::new(Mutex::new(None));
    let routers =
        TimedRouters { routers: Routers::default().with_profiles(profiles, Arc::default()), last: last.clone() };
    let analyzer = Arc::new(FailFirst { nginx: n.clone(), verdicts: Mutex::default() });
    let dir = tempfile::tempdir().expect("tempdir");
    let env = Arc::new(Env {
        store: Store::open(dir.path()).expect("sled store"),
        routers: Arc::new(routers),
        workloads: Arc::new(NoWorkloads),
        analyzer: analyzer.clone(),
        hooks: Arc::new(AlwaysOk),
        notifier: Arc::new(Silent),
        metrics: Arc::new(Metrics::new(Duration::from_secs(3600))),
        clock: Arc::new(SystemClock),
    });
    let c = Controller::new(env, vec![fixtures::policy("rollback", &[50, 100], INTERVAL, 1)]);
    let client = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(60)).build().expect("client");

    // ~50 requests/s through NGINX for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (stop, url, client) = (stop.clone(), n.url(), client.clone());
        tokio::spawn(async move {
            let mut t = Tally::default();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                nginx::hit(&client, &url, &mut t).await;
            }
            t
        })
    };

    let (mut total, mut to_file, mut to_write, mut to_50) = (vec![], vec![], vec![], vec![]);
    let (mut write_to_done, mut to_started, mut started_to_done) = (vec![], vec![], vec![]);
    let mut checked = Tally::default();
    let started = Instant::now();
    for i in 0..rollbacks {
        let mut req = fixtures::request(SERVICE, "rollback");
        req.router = RouterSpec::Nginx {
            profile: "edge".into(),
            stable_upstream: "stable_pool".into(),
            canary_upstream: "canary_pool".into(),
        };
        // create → 50 % confirmed: the split file at 50 % and the 0 % configuration's workers gone.
        let before = n.workers();
        let created = Instant::now();
        let (r, _) = c.create(req, "bench", None).await.unwrap_or_else(|e| panic!("create #{i}: {e}"));
        let id = r.id.clone();
        let (n2, a2) = (n.clone(), analyzer.clone());
        let (at50, verdict, zero) = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let at50 = confirm(&n2, 50, &before, None, deadline).done;
            let verdict = loop {
                if let Some(v) = a2.verdict(&id) {
                    break v;
                }
                assert!(Instant::now() < deadline, "no verdict for rollout {id}");
                std::thread::sleep(POLL);
            };
            let zero = confirm(&n2, 0, &verdict.workers, Some(log_len(&n2)), deadline);
            (at50, verdict, zero)
        })
        .await
        .expect("poller");
        // The rollout finishes once the router confirmed 0 %.
        let deadline = Instant::now() + Duration::from_secs(30);
        let end = loop {
            let end = c.get(&r.id).expect("rollout");
            if end.phase.is_terminal() && c.running() == 0 {
                break end;
            }
            assert!(Instant::now() < deadline, "rollout #{i} stuck in {:?}: {}", end.phase, end.message);
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(end.phase, Phase::RolledBack, "rollout #{i}: {}", end.message);
        assert_eq!(end.canary_weight, 0, "rollout #{i}");
        let (w, wrote) = last.lock().ok().and_then(|l| *l).expect("a router write");
        assert_eq!(w, 0, "the last router write of rollout #{i}");
        // NGINX serves 0 %: every request reaches stable.
        let t = nginx::load(&client, &n.url(), 20, 2).await;
        assert_eq!((t.canary, t.failed), (0, 0), "after rollback #{i}: {t:?}");
        checked.add(t);

        to_50.push(at50.saturating_duration_since(created));
        total.push(zero.done.saturating_duration_since(verdict.at));
        to_file.push(zero.file.saturating_duration_since(verdict.at));
        to_write.push(wrote.saturating_duration_since(verdict.at));
        write_to_done.push(zero.done.saturating_duration_since(wrote));
        if let Some(s) = zero.started {
            to_started.push(s.saturating_duration_since(verdict.at));
            started_to_done.push(zero.done.saturating_duration_since(s));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let bg = background.await.expect("background traffic");

    println!(
        "rollbacks           {rollbacks} of one service in {secs:.1} s (steps [50, 100], {INTERVAL:?} interval, threshold 1)"
    );
    println!("polling             every {POLL:?} on its own thread (figures are late by up to ~1 ms + one poll)");
    summary("verdict → NGINX confirmed 0 %", total);
    summary("  verdict → split file at 0 %", to_file);
    summary("  verdict → router write returned", to_write);
    summary("  verdict → new worker started", to_started);
    summary("  new worker → old workers gone", started_to_done);
    summary("  router write returned → confirmed", write_to_done);
    println!("  (NGINX's master sleeps 100 ms after starting the new workers before it tells the old ones to quit)");
    summary("create → NGINX confirmed 50 %", to_50);
    println!(
        "background traffic  {} requests ({:.0}/s): stable {}, canary {}, retried {}, failed {}",
        bg.stable + bg.canary + bg.failed,
        (bg.stable + bg.canary + bg.failed) as f64 / secs,
        bg.stable,
        bg.canary,
        bg.retried,
        bg.failed
    );
    println!("after each rollback {} requests, all to stable (failed {})", checked.stable, checked.failed);
    assert_eq!(bg.failed, 0, "no request may fail across the reloads: {bg:?}");
}
