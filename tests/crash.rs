//! Crash safety with the real binary: SIGKILL the daemon at random moments during 20 rollouts.

mod support {
    pub mod daemon;
}

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::daemon::{Daemon, exec_profiles, free_port};

const ROLLOUTS: usize = 20;

#[test]
fn twenty_rollouts_survive_ten_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("policies")).unwrap();
    std::fs::create_dir_all(root.join("calls")).unwrap();
    std::fs::write(
        root.join("policies/crash.yaml"),
        "name: crash\nstrategy: canary\nsteps: [5, 25, 50, 100]\ninterval: 200ms\nthreshold: 3\nprogressDeadline: 2m\n",
    )
    .unwrap();
    let script = root.join("route.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$VANE_CANARY_WEIGHT\" >> {}/calls/$VANE_SERVICE\n", root.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let seed: u64 = std::env::var("VANE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (rerun with VANE_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    vane::install_crypto_provider();
    let profiles = exec_profiles(&[("route", &[script.to_str().unwrap()])]);
    let mut d = Daemon::start(root, free_port(), &[("VANE_ROUTERS_EXEC", &profiles)]);
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut ids = HashMap::new();
    for i in 0..ROLLOUTS {
        let service = format!("svc-{i}");
        let body = json!({
            "service": service, "namespace": "crash", "version": "v2", "stableVersion": "v1", "policy": "crash",
            "router": { "kind": "exec", "profile": "route" }
        });
        let res = http.post(format!("{}/api/v1/rollouts", d.url)).json(&body).send().unwrap();
        assert_eq!(res.status(), 201, "{}", res.text().unwrap_or_default());
        ids.insert(service, res.json::<Value>().unwrap()["id"].as_str().unwrap().to_string());
    }
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        d.restart();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let all = loop {
        let list: Value = http.get(format!("{}/api/v1/rollouts?limit=100", d.url)).send().unwrap().json().unwrap();
        let items = list["items"].as_array().unwrap().clone();
        if items
            .iter()
            .all(|r| ["Succeeded", "RolledBack", "Aborted", "Failed"].contains(&r["phase"].as_str().unwrap()))
        {
            break items;
        }
        assert!(Instant::now() < deadline, "rollouts did not finish: {list}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(all.len(), ROLLOUTS);
    for r in &all {
        let service = r["service"].as_str().unwrap();
        assert_eq!(r["phase"], "Succeeded", "{service}: {r}");
        let events: Value =
            http.get(format!("{}/api/v1/rollouts/{}/events", d.url, ids[service])).send().unwrap().json().unwrap();
        let seqs: Vec<u64> = events["items"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{service}: gap-free, monotonic events");
        let calls = std::fs::read_to_string(root.join("calls").join(service)).unwrap();
        let weights: Vec<u8> = calls.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(weights.last(), Some(&100), "{service}: router ends at 100: {weights:?}");
        assert!(weights.windows(2).all(|w| w[0] <= w[1]), "{service}: weights never go back: {weights:?}");
        assert!(weights.iter().all(|w| [5, 25, 50, 100].contains(w)), "{service}: {weights:?}");
    }
}
