//! 10,000 rollouts on three replicas sharing a 3-member etcd (loopback) against the same on one sled
//! replica: CPU per rollout-tick and peak RSS per replica, from /proc, with the release binary.
//!
//! A rollout-tick is one committed transition (a step: commit, then the exec router `true`), counted
//! by each replica's `vane_store_commit_seconds` histogram. Every rollout has 20 steps 10 s apart, so
//! all of them are mid-flight during the measuring window; CPU is user + system time of the vane
//! processes (and, reported apart, of the etcd members) over the window.
//!
//! `cargo bench --bench ha_scale` (Debian's `etcd` needed), or any build of this harness with
//! `--bench` and `VANE_BIN=target/release/vane` (what is measured is that binary). `VANE_HA_SCALE_N`
//! (default 10000) and `VANE_HA_SCALE_WINDOW` (seconds, default 60) change the count and the window;
//! `cargo test --benches` runs it tiny.

#[path = "../tests/support/daemon.rs"]
mod daemon;
#[path = "../tests/support/etcd.rs"]
mod etcd;

use std::path::Path;
use std::time::{Duration, Instant};

use daemon::{Daemon, free_port};
use etcd::EtcdCluster;

const STEPS: &str = "[5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95, 100]";

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux).
const HZ: f64 = 100.0;

/// User + system CPU seconds of `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / HZ
}

/// A `/proc/<pid>/status` field in MiB (VmHWM: peak RSS; VmRSS: now).
fn mem_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Commits so far, from the replica's `/metrics`.
fn commits(http: &reqwest::blocking::Client, url: &str) -> f64 {
    let text = http.get(format!("{url}/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("vane_store_commit_seconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn policy(dir: &Path) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let yaml =
        format!("name: scale\nstrategy: canary\nsteps: {STEPS}\ninterval: 10s\nthreshold: 3\nprogressDeadline: 1h\n");
    std::fs::write(dir.join("policies/scale.yaml"), yaml).unwrap();
}

/// Create `n` rollouts, round-robin over the replicas, from 8 client threads.
fn create(replicas: &[Daemon], n: usize) -> Duration {
    let urls: Vec<String> = replicas.iter().map(|d| d.url.clone()).collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        for worker in 0..8 {
            let urls = &urls;
            s.spawn(move || {
                let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
                for i in (worker..n).step_by(8) {
                    let body = serde_json::json!({
                        "service": format!("svc-{i:05}"), "namespace": "bench", "version": "v2",
                        "stableVersion": "v1", "policy": "scale", "router": { "kind": "exec", "profile": "noop" }
                    });
                    let res = http.post(format!("{}/api/v1/rollouts", urls[i % urls.len()])).json(&body).send();
                    let res = res.expect("create");
                    assert_eq!(res.status(), 201, "create {i}: {}", res.text().unwrap_or_default());
                }
            });
        }
    });
    t.elapsed()
}

/// Measure the replicas (and `others`, e.g. etcd) over `window`; print one line per process.
fn measure(name: &str, replicas: &[Daemon], others: &[u32], n: usize, created: Duration, window: Duration) {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let pids: Vec<u32> = replicas.iter().map(|d| d.child.id()).collect();
    let load_before = loadavg();
    let cpu0: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let other0: f64 = others.iter().map(|p| cpu_seconds(*p)).sum();
    let commits0: Vec<f64> = replicas.iter().map(|d| commits(&http, &d.url)).collect();
    std::thread::sleep(window);
    let cpu1: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let other1: f64 = others.iter().map(|p| cpu_seconds(*p)).sum();
    let commits1: Vec<f64> = replicas.iter().map(|d| commits(&http, &d.url)).collect();
    println!("== {name}: {n} rollouts on {} replica(s), created in {created:.1?}", replicas.len());
    println!("   load average before / after the {window:?} window: {load_before} / {}", loadavg());
    let (mut cpu, mut ticks) = (0.0, 0.0);
    for (i, pid) in pids.iter().enumerate() {
        let (c, t) = (cpu1[i] - cpu0[i], commits1[i] - commits0[i]);
        cpu += c;
        ticks += t;
        println!(
            "   replica {i}: {t:.0} ticks, CPU {c:.2} s ({:.0} µs/tick), peak RSS {:.1} MiB, RSS now {:.1} MiB",
            c * 1e6 / t.max(1.0),
            mem_mib(*pid, "VmHWM:"),
            mem_mib(*pid, "VmRSS:")
        );
    }
    println!(
        "   all replicas: {ticks:.0} ticks ({:.0}/s), CPU {cpu:.2} s = {:.0} µs per rollout-tick",
        ticks / window.as_secs_f64(),
        cpu * 1e6 / ticks.max(1.0)
    );
    if !others.is_empty() {
        let c = other1 - other0;
        println!("   etcd members: CPU {c:.2} s = {:.0} µs per rollout-tick", c * 1e6 / ticks.max(1.0));
    }
}

fn env() -> Vec<(String, String)> {
    vec![
        ("VANE_SERVER_MAX_ACTIVE_ROLLOUTS".into(), "100000".into()),
        ("VANE_SERVER_MAX_CONNECTIONS".into(), "4096".into()),
        ("RUST_LOG".into(), "warn".into()),
    ]
}

fn main() {
    vane::install_crypto_provider();
    let bench = std::env::args().any(|a| a == "--bench");
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let n = var("VANE_HA_SCALE_N").unwrap_or(if bench { 10_000 } else { 30 }) as usize;
    let window = Duration::from_secs(var("VANE_HA_SCALE_WINDOW").unwrap_or(if bench { 60 } else { 3 }));
    let root = tempfile::tempdir().unwrap();

    // One sled replica.
    {
        let dir = root.path().join("sled");
        policy(&dir);
        let env = env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let replicas = vec![Daemon::start(&dir, free_port(), &env)];
        let created = create(&replicas, n);
        measure("sled", &replicas, &[], n, created, window);
    }

    // Three replicas on a 3-member etcd.
    let cluster = EtcdCluster::start(3);
    let replicas: Vec<Daemon> = (0..3)
        .map(|i| {
            let dir = root.path().join(format!("etcd-{i}"));
            policy(&dir);
            let port = free_port();
            let mut env = env();
            env.push(("VANE_STORE_BACKEND".into(), "etcd".into()));
            let etcd =
                format!("{{ endpoints = {}, prefix = \"/bench/\", lease_ttl = \"5s\" }}", cluster.endpoints_toml());
            env.push(("VANE_STORE_ETCD".into(), etcd));
            env.push(("VANE_SERVER_ADVERTISE".into(), format!("http://127.0.0.1:{port}")));
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Daemon::start(&dir, port, &env)
        })
        .collect();
    let created = create(&replicas, n);
    measure("etcd", &replicas, &cluster.pids(), n, created, window);
}
