//! One driver process with many concurrent rollouts on in-memory fakes and a real (temporary) sled
//! store. Run with `taskset -c 0 cargo bench --bench scale` (see docs/operations.md "Sizing").
//!
//! 1. Ticking: VANE_SCALE_N rollouts (default 10,000) go through 4 steps at a 500 ms interval: create
//!    rate, CPU per rollout-tick (user/system), durable commits per tick, fsyncs per second, peak RSS
//!    per rollout.
//! 2. Abort: VANE_SCALE_BG rollouts (default 10,000) tick at a VANE_SCALE_BG_INTERVAL-second interval
//!    (default 10), created over one interval, and their RSS is measured; then VANE_SCALE_ABORTS
//!    others (default 1,000) are aborted, one every 10 ms: abort command → the router's 0 % write,
//!    p50 / p99.
//! 3. One transition + event committed and flushed, sequentially: p50 / p99.

/// The daemon's allocator (src/main.rs), so the figures are the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use vane::fixtures::{self, FakeRouters, ScriptedAnalyzer};
use vane::rollout::controller::Controller;
use vane::rollout::machine::Command;
use vane::store::{SledStore, Store};

const TICK: f64 = 100.0; // USER_HZ

/// (user, system) CPU seconds of this process so far.
fn cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) / TICK, ticks(12) / TICK)
}

/// Bytes this process caused to be written to storage so far (`/proc/self/io`).
fn written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Live bytes (keys + values) per sled tree.
fn tree_bytes(db: &sled::Db) -> Vec<(String, usize, usize)> {
    db.tree_names()
        .into_iter()
        .filter_map(|name| {
            let t = db.open_tree(&name).ok()?;
            let (n, b) = t.iter().flatten().fold((0, 0), |(n, b), (k, v)| (n + 1, b + k.len() + v.len()));
            (n > 0).then(|| (String::from_utf8_lossy(&name).into_owned(), n, b))
        })
        .collect()
}

/// A `/proc/self/status` figure in MiB (`VmHWM`: peak RSS, `VmRSS`: now).
fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The shipped `canary-default` (metrics, adaptive judge: what every record carries) with the bench's
/// steps and interval; the scripted analyzer answers for its metrics.
fn shipped_policy(name: &str, steps: &[u8], interval: Duration) -> vane::policy::Policy {
    let file = std::path::Path::new("policies/canary-default.yaml");
    let src = include_str!("../policies/canary-default.yaml");
    let mut p = vane::policy::parse(file, src).expect("the shipped policy parses");
    p.name = name.into();
    p.steps = steps.to_vec();
    p.interval = interval;
    p.progress_deadline = interval * 20;
    p
}

fn env_usize(name: &str, bench: usize, test: usize, is_bench: bool) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(if is_bench { bench } else { test })
}

/// A controller over fakes and a sled store in `dir`; the store handle reads the counters.
fn setup(
    dir: &std::path::Path,
    policies: Vec<vane::policy::Policy>,
) -> (Controller, SledStore, Arc<FakeRouters>, Arc<ScriptedAnalyzer>) {
    let store = SledStore::open(dir).expect("store");
    let routers = Arc::new(FakeRouters::default());
    let analyzer = Arc::new(ScriptedAnalyzer::default());
    let env = fixtures::env_on(Store::new(store.clone()), routers.clone(), analyzer.clone());
    (Controller::new(env, policies), store, routers, analyzer)
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: keep that run tiny.
    let bench = std::env::args().any(|a| a == "--bench");
    let n = env_usize("VANE_SCALE_N", 10_000, 50, bench);
    let bg = env_usize("VANE_SCALE_BG", 10_000, 50, bench);
    let bg_interval = Duration::from_secs(env_usize("VANE_SCALE_BG_INTERVAL", 10, 10, bench) as u64);
    let aborts = env_usize("VANE_SCALE_ABORTS", 1_000, 10, bench);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!("load average        {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    ticking(&rt, n);
    if aborts > 0 {
        abort_latency(&rt, bg, bg_interval, aborts);
    }
    commit_latency(&rt, if bench { 2000 } else { 20 });
}

fn ticking(rt: &tokio::runtime::Runtime, n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let interval = Duration::from_millis(500);
    let policy = shipped_policy("scale", &[5, 25, 50, 100], interval);
    let rss0 = status_mib("VmRSS:");
    let (user0, sys0) = cpu();
    let written0 = written();
    let (c, store, _routers, analyzer) = setup(dir.path(), vec![policy]);
    let (created, done) = rt.block_on(async {
        let t = Instant::now();
        let mut creates = tokio::task::JoinSet::new();
        for i in 0..n {
            let c = c.clone();
            creates
                .spawn(async move { c.create(fixtures::request(&format!("svc-{i}"), "scale"), "bench", None).await });
        }
        while let Some(res) = creates.join_next().await {
            res.expect("task").expect("create");
        }
        let created = t.elapsed();
        while c.running() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (created, t.elapsed())
    });
    let (user, sys) = cpu();
    let (user, sys) = (user - user0, sys - sys0);
    let written = written() - written0;
    let ticks = analyzer.calls.load(std::sync::atomic::Ordering::SeqCst).max(1) as f64;
    let s = store.stats();
    let peak = status_mib("VmHWM:");
    println!("rollouts            {n}");
    println!("create (concurrent) {:.2?} ({:.0}/s)", created, n as f64 / created.as_secs_f64());
    let all = vane::store::ListFilter { limit: n, ..Default::default() };
    let finished = store.list(&all).expect("list");
    let succeeded = finished.iter().filter(|r| r.phase == vane::rollout::Phase::Succeeded).count();
    println!(
        "all finished in     {done:.2?} (3 analysis intervals of {interval:?} each): {succeeded} succeeded, {} not (the progress deadline: more than one core can tick)",
        finished.len() - succeeded
    );
    println!("analysis ticks      {ticks}");
    println!(
        "CPU total           {:.2} s (user {user:.2} s, system {sys:.2} s); per rollout-tick {:.1} µs (user {:.1}, system {:.1})",
        user + sys,
        (user + sys) * 1e6 / ticks,
        user * 1e6 / ticks,
        sys * 1e6 / ticks
    );
    println!(
        "durable commits     {} ({:.2} per rollout-tick); fsyncs {} ({:.0}/s, {:.1} commits each)",
        s.commits,
        s.commits as f64 / ticks,
        s.flushes,
        s.flushes as f64 / done.as_secs_f64(),
        s.commits as f64 / s.flushes.max(1) as f64
    );
    println!(
        "written to disk     {:.1} MiB ({:.0} bytes per commit)",
        written as f64 / 1048576.0,
        written as f64 / s.commits.max(1) as f64
    );
    for (tree, records, bytes) in tree_bytes(store.db()) {
        println!("  live in {tree:<13} {records} records, {:.0} bytes per rollout", bytes as f64 / n as f64);
    }
    println!(
        "peak RSS            {peak:.1} MiB; {:.1} KiB per rollout above the {rss0:.1} MiB before",
        (peak - rss0) * 1024.0 / n as f64
    );
}

/// Aborts (one every 10 ms) while `bg` other rollouts tick at `interval`: abort command → the
/// router's 0 % write.
fn abort_latency(rt: &tokio::runtime::Runtime, bg: usize, interval: Duration, aborts: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let steps: Vec<u8> = (1..=20).map(|i| i * 5).collect();
    let policy = shipped_policy("steady", &steps, interval);
    let rss0 = status_mib("VmRSS:");
    let (c, store, routers, analyzer) = setup(dir.path(), vec![policy]);
    let lat = rt.block_on(async {
        // Spread the creates over one interval so the ticks spread too.
        let total = bg + aborts;
        let pace = interval.as_secs_f64() / total as f64;
        let t = Instant::now();
        let mut creates = tokio::task::JoinSet::new();
        for i in 0..total {
            let due = t + Duration::from_secs_f64(pace * i as f64);
            tokio::time::sleep_until(due.into()).await;
            let c = c.clone();
            creates.spawn(async move {
                let (r, _) = c.create(fixtures::request(&format!("svc-{i}"), "steady"), "bench", None).await?;
                Ok::<_, vane::rollout::controller::ControllerError>((i, r.id))
            });
        }
        let mut ids = vec![String::new(); total];
        while let Some(res) = creates.join_next().await {
            let (i, id) = res.expect("task").expect("create");
            ids[i] = id;
        }
        // The victims: the last `aborts` services, once their first weight is live.
        let victims: Vec<(String, Arc<fixtures::FakeRouter>)> =
            (bg..total).map(|i| (ids[i].clone(), routers.get(&format!("svc-{i}")))).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while victims.iter().any(|(_, r)| r.last().is_none()) {
            assert!(Instant::now() < deadline, "victims never reached their first step");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rss = status_mib("VmRSS:");
        println!(
            "RSS, all ticking    {rss:.1} MiB; {:.1} KiB per rollout above the {rss0:.1} MiB before",
            (rss - rss0) * 1024.0 / total as f64
        );
        let (user0, sys0) = cpu();
        let (ticks0, stats0) = (analyzer.calls.load(std::sync::atomic::Ordering::SeqCst), store.stats());
        let t = Instant::now();
        let mut issued = tokio::task::JoinSet::new();
        for (k, (id, router)) in victims.into_iter().enumerate() {
            tokio::time::sleep_until((t + Duration::from_millis(10 * k as u64)).into()).await;
            let c = c.clone();
            issued.spawn(async move {
                let start = Instant::now();
                c.command(&id, Command::Abort { reason: None }, "bench").await.expect("abort");
                loop {
                    if let Some((0, at)) = router.last_set.lock().ok().and_then(|l| *l) {
                        return at.saturating_duration_since(start);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        }
        let mut lat = Vec::with_capacity(aborts);
        while let Some(res) = issued.join_next().await {
            lat.push(res.expect("task"));
        }
        let secs = t.elapsed().as_secs_f64();
        let (user, sys) = cpu();
        let ticks = analyzer.calls.load(std::sync::atomic::Ordering::SeqCst) - ticks0;
        let s = store.stats();
        println!(
            "abort phase         {secs:.1} s: {bg} rollouts ticking ({ticks} ticks, {:.0}/s), CPU {:.0} % (user {:.0} %, system {:.0} %), {:.0} fsyncs/s",
            ticks as f64 / secs,
            (user - user0 + sys - sys0) * 100.0 / secs,
            (user - user0) * 100.0 / secs,
            (sys - sys0) * 100.0 / secs,
            (s.flushes - stats0.flushes) as f64 / secs
        );
        lat
    });
    let (p50, p99) = quantiles(lat);
    println!("abort → router      p50 {p50:.2?}  p99 {p99:.2?}  ({aborts} aborts, one every 10 ms)");
}

fn quantiles(mut lat: Vec<Duration>) -> (Duration, Duration) {
    lat.sort();
    let q = |f: f64| lat[((lat.len() as f64 * f) as usize).min(lat.len() - 1)];
    (q(0.5), q(0.99))
}

/// One transition + event, committed and flushed, one after another: p50 / p99.
fn commit_latency(rt: &tokio::runtime::Runtime, n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = vane::store::Store::open(dir.path()).expect("store");
    let p = fixtures::policy("p", &[5, 100], Duration::from_secs(60), 5);
    let (mut r, out) = vane::rollout::machine::create("01BENCH".into(), &fixtures::request("s", "p"), p, "b", 0);
    let lat: Vec<Duration> = rt.block_on(async {
        store.create(&mut r, out.events.clone(), None).await.expect("create");
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            r.updated_at += 1;
            let t = Instant::now();
            store.commit(&mut r, out.events.clone()).await.expect("commit");
            lat.push(t.elapsed());
        }
        lat
    });
    let (p50, p99) = quantiles(lat);
    println!("commit+flush        p50 {p50:.2?}  p99 {p99:.2?}  ({n} sequential)");
}
