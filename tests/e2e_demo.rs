//! `vane demo --exit` end to end, as a user runs it: real NGINX, Prometheus, three demo app versions,
//! 50 requests/s through NGINX and the daemon. The good rollout (v1 → v2) succeeds with all measured
//! traffic on v2; the bad one (v2 → v3, 10 % errors) is rolled back by vane on its own within
//! threshold × interval + 10 s, with all traffic back on v2; the failed user requests are reported.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const INSTALL: &str = "apt-get install -y --no-install-recommends prometheus nginx";

fn have(paths: &[&str]) -> bool {
    paths.iter().any(|p| std::path::Path::new(p).is_file())
}

#[test]
fn demo_succeeds_with_the_good_version_and_rolls_back_the_bad_one() {
    assert!(have(&["/usr/sbin/nginx", "/usr/bin/nginx"]), "the demo needs NGINX: {INSTALL}");
    assert!(have(&["/usr/bin/prometheus", "/usr/local/bin/prometheus"]), "the demo needs Prometheus: {INSTALL}");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let summary_file = dir.path().join("summary.json");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vane"))
        .args(["demo", "--exit", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&work)
        .arg("--summary-json")
        .arg(&summary_file)
        .env("PATH", format!("{}:/usr/sbin", std::env::var("PATH").unwrap_or_default()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vane demo starts");
    // Read the output on threads so a full pipe never blocks the demo.
    let read = |r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let mut r = r;
            let _ = std::io::Read::read_to_string(&mut r, &mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vane demo did not finish in 180 s:\n{}", out.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    eprintln!("{stdout}\nvane demo took {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(status.code(), Some(0), "vane demo --exit failed:\n{stdout}\n{stderr}");

    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary_file).expect("summary written"))
        .expect("summary is JSON");
    assert_eq!(summary["ok"], true);
    let good = &summary["rollouts"][0];
    let bad = &summary["rollouts"][1];

    // Good: Succeeded through every step, no user request failed, then NGINX sends everything to v2.
    assert_eq!((&good["from"], &good["to"], &good["phase"]), (&"v1".into(), &"v2".into(), &"Succeeded".into()));
    assert_eq!(good["weights"], serde_json::json!([10, 50, 100]), "{good}");
    assert_eq!(good["failedRequests"], 0, "{good}");
    assert!(good["requests"].as_u64().unwrap() > 100, "load ran through the rollout: {good}");
    assert_eq!(good["trafficAfter"], serde_json::json!({ "v2": 100.0 }), "{good}");
    assert!(good["trafficAfterRequests"].as_u64().unwrap() >= 50, "{good}");

    // Bad: RolledBack on its own (2 failed checks of the success rate), fast enough, traffic back on v2.
    assert_eq!((&bad["from"], &bad["to"], &bad["phase"]), (&"v2".into(), &"v3".into(), &"RolledBack".into()));
    assert_eq!(bad["failedChecks"], 2, "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("success-rate"), "{bad}");
    let (took, bound) = (bad["trafficSeconds"].as_f64().unwrap(), bad["boundSeconds"].as_f64().unwrap());
    assert_eq!(bound, 2.0 * 5.0 + 10.0);
    assert!(took <= bound, "rolled back {took}s after v3 got traffic, bound {bound}s");
    assert_eq!(bad["weights"].as_array().unwrap().last(), Some(&Value::from(0)), "{bad}");
    assert_eq!(bad["trafficAfter"], serde_json::json!({ "v2": 100.0 }), "{bad}");
    // The failed user requests are reported, and they are v3's: v2 failed none.
    let failed = bad["failedRequests"].as_u64().unwrap();
    assert!(failed > 0, "v3 answers 10 % errors while it has traffic: {bad}");
    assert_eq!(bad["during"]["byVersion"]["v2"]["failed"], 0, "{bad}");
    assert_eq!(
        bad["during"]["byVersion"]["v3"]["failed"].as_u64().unwrap() + bad["during"]["unanswered"].as_u64().unwrap(),
        failed
    );
    assert!(stdout.contains("user requests during the rollout:"), "{stdout}");

    // With --exit nothing is left running: NGINX, Prometheus and the API no longer answer.
    for key in ["nginx", "prometheus", "api"] {
        let url = summary[key].as_str().unwrap().trim_end_matches('/').trim_start_matches("http://").to_string();
        assert!(std::net::TcpStream::connect(&url).is_err(), "{key} still listens on {url} after the demo exited");
    }
}

#[test]
fn demo_without_nginx_or_prometheus_says_how_to_install_them() {
    let out = Command::new(env!("CARGO_BIN_EXE_vane"))
        .args(["demo", "--exit", "--nginx", "/nonexistent/nginx", "--prometheus", "/nonexistent/prometheus"])
        .output()
        .expect("vane runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("neither `nginx` nor `prometheus` was found"), "{stderr}");
    assert!(stderr.contains(INSTALL), "{stderr}");
}
