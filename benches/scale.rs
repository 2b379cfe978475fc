//! One driver process with 10,000 concurrent rollouts on in-memory fakes: wall time, CPU per
//! rollout-tick, peak RSS. Run with `cargo bench --bench scale` (VANE_SCALE_N to change the count).

use std::sync::Arc;
use std::time::{Duration, Instant};

use vane::fixtures::{self, FakeRouters, ScriptedAnalyzer};
use vane::rollout::controller::Controller;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: keep that run tiny.
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize =
        std::env::var("VANE_SCALE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(if bench { 10_000 } else { 50 });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let routers = Arc::new(FakeRouters::default());
    let analyzer = Arc::new(ScriptedAnalyzer::default());
    let interval = Duration::from_millis(500);
    let policy = fixtures::policy("scale", &[5, 25, 50, 100], interval, 5);
    let (created, done, ticks) = rt.block_on(async {
        let env = fixtures::env(dir.path(), routers.clone(), analyzer.clone());
        let c = Controller::new(env, vec![policy]);
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
        (created, t.elapsed(), analyzer.calls.load(std::sync::atomic::Ordering::SeqCst))
    });
    let cpu = cpu_seconds();
    println!("rollouts            {n}");
    println!("create (concurrent) {:.2?} ({:.0}/s)", created, n as f64 / created.as_secs_f64());
    println!("all succeeded in    {done:.2?} (3 analysis intervals of {interval:?} each)");
    println!("analysis ticks      {ticks}");
    println!("CPU total           {cpu:.2} s; per rollout-tick {:.1} µs", cpu * 1e6 / ticks.max(1) as f64);
    println!("peak RSS            {:.1} MiB", peak_rss_mib());
    commit_latency(&rt, if bench { 2000 } else { 20 });
}

/// One transition + event, committed and flushed, one after another: p50 / p99.
fn commit_latency(rt: &tokio::runtime::Runtime, n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = vane::store::Store::open(dir.path()).expect("store");
    let p = fixtures::policy("p", &[5, 100], Duration::from_secs(60), 5);
    let (mut r, out) = vane::rollout::machine::create("01BENCH".into(), &fixtures::request("s", "p"), p, "b", 0);
    let mut lat: Vec<Duration> = rt.block_on(async {
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
    lat.sort();
    let q = |f: f64| lat[((lat.len() as f64 * f) as usize).min(lat.len() - 1)];
    println!("commit+flush        p50 {:.2?}  p99 {:.2?}  ({n} sequential)", q(0.5), q(0.99));
}
