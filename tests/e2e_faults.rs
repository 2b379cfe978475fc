//! Faults during real rollouts: the `vane` binary with the standalone `nginx` router in front of real
//! NGINX, `vane demo-app` versions, real Prometheus, real user requests. Five scenarios run at once
//! (each with its own daemon, NGINX and apps; Prometheus is shared where nothing kills it):
//!
//! 1. Prometheus killed mid-rollout: no promotion while it is down, promotion after it is back.
//! 2. The daemon SIGKILLed three times during a rollout (at random, and inside both windows of a
//!    router call): it resumes; no step lost or repeated, events gap-free, no user request failed.
//! 3. `nginx -t` failing: traffic untouched, the error in the rollout's message, events and metrics.
//! 4. The router unreachable during a rollback (and the daemon SIGKILLed meanwhile): RollingBack, and
//!    saying so, until it is back, then RolledBack with all traffic on v1.
//! 5. The webhook receiver down for a whole rollout and a daemon crash: every event delivered, signed.

mod support {
    pub mod daemon;
    pub mod e2e;
    pub mod nginx;
    pub mod prom;
    pub mod receiver;
}

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use support::e2e::{self, Site, at, now_ms, of_type, s};
use support::prom::{Prometheus, wait_for};
use vane::demo::load::LoadGen;

const RPS: u32 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_during_real_rollouts() {
    vane::install_crypto_provider();
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let d = root.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    // Scenarios 2 and 4 analyse through one Prometheus: it scrapes both sites from the start.
    let (crash_dir, rollback_dir) = (dir("crash"), dir("rollback"));
    let (crash_site, rollback_site) =
        tokio::join!(Site::start(&crash_dir, "crash", 0.0), Site::start(&rollback_dir, "rollback", 0.5));
    let shared = Prometheus::start(
        &dir("prometheus"),
        &[crash_site.v1.addr, crash_site.v2.addr, rollback_site.v1.addr, rollback_site.v2.addr],
    );
    shared.ready().await;

    let scenarios = vec![
        ("prometheus killed", tokio::spawn(prometheus_killed(dir("promkill")))),
        ("daemon SIGKILLed", tokio::spawn(daemon_killed(dir("crash-daemon"), crash_site, shared.url.clone()))),
        ("nginx test failing", tokio::spawn(nginx_test_failing(dir("nginx-test")))),
        (
            "router down during rollback",
            tokio::spawn(router_down_during_rollback(dir("rollback-daemon"), rollback_site, shared.url.clone())),
        ),
        ("webhook receiver down", tokio::spawn(webhook_receiver_down(dir("webhooks")))),
    ];
    let mut failures = vec![];
    for (name, task) in scenarios {
        match task.await {
            Ok(report) => eprintln!("[{name}] ok: {report}"),
            Err(e) => {
                let why = e.try_into_panic().ok().and_then(|p| {
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                });
                failures.push(format!("[{name}] {}", why.unwrap_or_else(|| "cancelled".into())));
            }
        }
    }
    eprintln!("fault scenarios took {:.1}s", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Wait until Prometheus has scraped `service`'s two versions a few times.
async fn scraped(prom_url: &str, service: &str) {
    let q = format!(r#"min(count_over_time(http_requests_total{{service="{service}",code="200"}}[10s]))"#);
    let client = reqwest::Client::new();
    wait_for(&format!("prometheus to scrape {service}"), Duration::from_secs(30), || {
        let req = client.post(format!("{prom_url}/api/v1/query")).form(&[("query", q.as_str())]).send();
        async move {
            let v: Value = req.await.ok()?.json().await.ok()?;
            let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            (n >= 3.0).then_some(())
        }
    })
    .await
}

fn prom_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("VANE_PROMETHEUS_URL", url.to_string()),
        ("VANE_PROMETHEUS_TIMEOUT", "1s".into()),
        // A 1 s interval is analysed over the last 3 s (three scrapes).
        ("VANE_PROMETHEUS_MIN_WINDOW", "3s".into()),
    ]
}

/// Scenario 1: Prometheus is SIGKILLed while the canary is at 50 %: every analysis while it is down is "no
/// data", the weight stays at 50 % (in vane and in NGINX); restarted on the same port and data, the
/// rollout promotes and succeeds.
async fn prometheus_killed(dir: std::path::PathBuf) -> String {
    let site = Site::start(&dir, "promkill", 0.0).await;
    let prom_dir = dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let mut prom = Prometheus::start(&prom_dir, &[site.v1.addr, site.v2.addr]);
    prom.ready().await;
    let _load = LoadGen::start(site.nginx.url(), RPS);
    let env = [prom_env(&prom.url), vec![site.plain_profile()]].concat();
    let d = e2e::daemon(&dir, &[("slo", &e2e::slo_policy("slo", "[10, 50, 100]", "2s", 2, 3))], &env).await;
    let api = e2e::api(&d);
    scraped(&prom.url, "promkill").await;
    let id = api.create(&site.body("slo", site.router(), json!({}))).await;
    let (_, events) = api
        .wait(&id, "traffic at 50 %", Duration::from_secs(40), |_, ev| {
            of_type(ev, "weight-set").iter().any(|e| e["details"]["canary"] == 50)
        })
        .await;
    // The next analysis is due 2 s after the weight was confirmed: kill Prometheus now.
    prom.stop();
    let killed = now_ms();
    assert!(
        of_type(&events, "step").iter().all(|e| e["canaryWeight"] != 100),
        "promoted before the kill:\n{}",
        e2e::history(&events)
    );
    let no_data_after = |ev: &[Value], n: usize| {
        ev.iter().filter(|e| e["type"] == "analysis" && at(e) > killed && s(&e["message"]).contains("no data")).count()
            >= n
    };
    let (r, events) = api.wait(&id, "3 no-data analyses", Duration::from_secs(20), |_, ev| no_data_after(ev, 3)).await;
    assert_eq!((s(&r["phase"]).as_str(), r["canaryWeight"].as_u64()), ("Progressing", Some(50)), "{r}");
    assert!(
        events.iter().filter(|e| at(e) > killed).all(|e| e["type"] != "step"),
        "no step while Prometheus is down:\n{}",
        e2e::history(&events)
    );
    assert!(s(&r["message"]).contains("unreachable"), "the message says why: {}", r["message"]);
    assert_eq!(site.file_weight(), Some(50), "NGINX' split file stays at 50 %");
    let during = site.measure(600).await;
    e2e::assert_split("while Prometheus is down", &during, 50.0, 8.0);
    let down_for = now_ms() - killed;

    prom.restart();
    prom.ready().await;
    let back = now_ms();
    let (r, events) = api.wait_phase(&id, "Succeeded", Duration::from_secs(40)).await;
    let promoted = of_type(&events, "step").into_iter().find(|e| e["canaryWeight"] == 100).expect("a step to 100 %");
    assert!(at(promoted) > back, "promoted after Prometheus came back:\n{}", e2e::history(&events));
    assert_eq!(r["failedChecks"], 0, "no data is never a failed check");
    let after = site.settled("v2", 200).await;
    e2e::assert_split("after success", &after, 100.0, 0.0);
    format!(
        "held at 50 % for {:.1}s with Prometheus down ({} no-data analyses), promoted {:.1}s after the restart; \
         measured {:.1}% on v2 while down",
        down_for as f64 / 1000.0,
        events.iter().filter(|e| e["type"] == "analysis" && s(&e["message"]).contains("no data")).count(),
        (at(promoted) - back) as f64 / 1000.0,
        during.share("v2")
    )
}

/// Scenario 2: the daemon is SIGKILLed three times while NGINX moves through 10 → 50 → 100 %: at a
/// random moment, after vane wrote the 50 % split file but before NGINX reloaded it, and after NGINX
/// reloaded 100 % but before vane recorded it (the reload command pauses 0.4 s before and after).
async fn daemon_killed(dir: std::path::PathBuf, site: Site, prom_url: String) -> String {
    let log = dir.join("reloads.log");
    let reload = site.reload_script(&dir, &dir.join("never"), &log, "0.4");
    let profile = site.profile(Some(site.nginx.command(&["-t", "-q"])), reload);
    let router = site.router();
    let load = LoadGen::start(site.nginx.url(), RPS);
    let env = [prom_env(&prom_url), vec![profile]].concat();
    let mut d = e2e::daemon(&dir, &[("slo", &e2e::slo_policy("slo", "[10, 50, 100]", "3s", 2, 3))], &env).await;
    let api = e2e::api(&d);
    scraped(&prom_url, "crash").await;
    let seed: u64 = std::env::var("VANE_E2E_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let before = load.totals();
    let id = api.create(&site.body("slo", router, json!({}))).await;
    let mut kills = vec![];
    let mut kill = |d: &mut support::daemon::Daemon, when: &str| {
        kills.push(format!("{when} (NGINX log {:?})", std::fs::read_to_string(&log).unwrap_or_default()));
        e2e::crash_and_restart(d);
    };
    // The first analysis is due 3 s after 10 % is live: any moment before that is mid-rollout.
    tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
    kill(&mut d, "random");
    let logged = |what: &'static str, w: u8| {
        let log = log.clone();
        async move { e2e::logged_weights(&log, what).contains(&w).then_some(()) }
    };
    wait_for("vane to write 50 %", Duration::from_secs(30), || logged("begin", 50)).await;
    kill(&mut d, "50 % written, not reloaded");
    wait_for("NGINX to reload 100 %", Duration::from_secs(30), || logged("done", 100)).await;
    kill(&mut d, "100 % reloaded, not recorded");
    let (r, events) = api.wait_phase(&id, "Succeeded", Duration::from_secs(60)).await;
    let during = load.totals().minus(&before);
    let seed_note =
        format!("(seed {seed}: rerun with VANE_E2E_SEED={seed}; kills {kills:?})\n{}", e2e::history(&events));
    assert_eq!(r["canaryWeight"], 100, "{seed_note}");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "events gap-free {seed_note}");
    let steps: Vec<u64> = of_type(&events, "step").iter().filter_map(|e| e["canaryWeight"].as_u64()).collect();
    assert_eq!(steps, vec![10, 50, 100], "each step decided exactly once {seed_note}");
    assert_eq!(of_type(&events, "recovered").len(), 3, "one recovery per kill {seed_note}");
    let reloaded = e2e::logged_weights(&log, "done");
    assert!(reloaded.windows(2).all(|w| w[0] <= w[1]), "NGINX weights never go back: {reloaded:?} {seed_note}");
    let mut distinct = reloaded.clone();
    distinct.dedup();
    assert_eq!(distinct, vec![10, 50, 100], "every step reached NGINX, in order: {reloaded:?} {seed_note}");
    // 50 % was analysed only once NGINX really ran it.
    let analysed_50 = of_type(&events, "analysis").into_iter().find(|e| e["canaryWeight"] == 50).map(at);
    let confirmed_50 =
        of_type(&events, "weight-set").into_iter().filter(|e| e["details"]["canary"] == 50).map(at).max();
    assert!(
        confirmed_50.is_some() && analysed_50 > confirmed_50,
        "50 % analysed only after NGINX loaded it {seed_note}"
    );
    assert_eq!(during.failed(), 0, "no user request failed across the crashes: {during:?}");
    let after = site.settled("v2", 200).await;
    e2e::assert_split("after success", &after, 100.0, 0.0);
    format!(
        "3 kills (random, 50 % written/not reloaded, 100 % reloaded/not recorded); NGINX reloads {reloaded:?}; \
         {} events gap-free; {} user requests, 0 failed (seed {seed})",
        seqs.len(),
        during.requests()
    )
}

/// Scenario 3: someone broke nginx.conf while the canary waits at a 10 % gate: promoting makes vane write 50 %,
/// `nginx -t` fails, vane restores the file and does not reload. Traffic stays at 10 %, no request
/// fails, the error is in the message, the events and `vane_router_requests_total`. Fixed, it goes on.
async fn nginx_test_failing(dir: std::path::PathBuf) -> String {
    let site = Site::start(&dir, "nginxtest", 0.0).await;
    let policy = "name: gated\nstrategy: canary\nsteps: [10, 50, 100]\ninterval: 500ms\nthreshold: 2\n\
                  progressDeadline: 60s\ngates:\n  - at: 10\n    approval: manual\n    timeout: 1h\n";
    let d = e2e::daemon(&dir, &[("gated", policy)], &[site.plain_profile()]).await;
    let api = e2e::api(&d);
    let id = api.create(&site.body("gated", site.router(), json!({}))).await;
    api.wait(&id, "the gate at 10 %", Duration::from_secs(20), |r, _| {
        r["phase"] == "AwaitingApproval" && r["canaryWeight"] == 10
    })
    .await;
    let baseline = site.measure(1000).await;
    e2e::assert_split("at the gate", &baseline, 10.0, 4.0);

    let conf = site.nginx.conf();
    let good_conf = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{good_conf}\nthis_is_not_a_directive on;\n")).unwrap();
    let errors_before = api.metric(r#"vane_router_requests_total{router="nginx",result="error"}"#).await;
    api.action(&id, "promote", json!({})).await;
    let (r, events) =
        api.wait(&id, "a router error", Duration::from_secs(20), |_, ev| !of_type(ev, "router-error").is_empty()).await;
    let message = s(&r["message"]);
    assert!(
        message.contains("config test") && message.contains("NGINX not reloaded"),
        "the message says what failed: {message}"
    );
    assert!(message.contains("this_is_not_a_directive"), "and quotes nginx: {message}");
    let event = of_type(&events, "router-error")[0];
    assert!(s(&event["message"]).contains("config test"), "{event}");
    let errors = api.metric(r#"vane_router_requests_total{router="nginx",result="error"}"#).await;
    assert!(errors > errors_before, "vane_router_requests_total{{result=\"error\"}}: {errors_before} → {errors}");
    assert_eq!(site.file_weight(), Some(10), "the previous split file is restored");
    let during = site.measure(1000).await;
    e2e::assert_split("with nginx -t failing", &during, 10.0, 4.0);
    assert_eq!(r["phase"], "Progressing", "{r}");

    std::fs::write(&conf, good_conf).unwrap();
    let (_, events) = api.wait_phase(&id, "Succeeded", Duration::from_secs(30)).await;
    assert!(
        of_type(&events, "weight-set").iter().any(|e| s(&e["message"]).contains("router recovered")),
        "{}",
        e2e::history(&events)
    );
    let after = site.settled("v2", 200).await;
    e2e::assert_split("after success", &after, 100.0, 0.0);
    format!(
        "traffic held at {:.1}% v2 (was {:.1}%) with nginx -t failing, 0 failed requests; router errors {errors_before} → {errors}",
        during.share("v2"),
        baseline.share("v2")
    )
}

/// Scenario 4: v2 answers 50 % errors at 50 % (no check passes by chance: each needs ≥ 20 canary
/// requests); the reload command fails ("unreachable") from the moment 50 % is live. The analysis rolls
/// back; the rollout stays RollingBack, saying the rollback is not complete, and NGINX really still
/// sends traffic to v2 — also after a daemon crash; once the router is back: RolledBack, all traffic
/// on v1.
async fn router_down_during_rollback(dir: std::path::PathBuf, site: Site, prom_url: String) -> String {
    let flag = dir.join("router-down");
    let log = dir.join("reloads.log");
    let profile = site.profile(None, site.reload_script(&dir, &flag, &log, "0"));
    let router = site.router();
    let _load = LoadGen::start(site.nginx.url(), RPS);
    let env = [prom_env(&prom_url), vec![profile]].concat();
    let mut d = e2e::daemon(&dir, &[("slo", &e2e::slo_policy("slo", "[50, 100]", "2s", 2, 20))], &env).await;
    let api = e2e::api(&d);
    scraped(&prom_url, "rollback").await;
    let id = api.create(&site.body("slo", router, json!({}))).await;
    api.wait(&id, "traffic at 50 %", Duration::from_secs(20), |_, ev| {
        of_type(ev, "weight-set").iter().any(|e| e["details"]["canary"] == 50)
    })
    .await;
    std::fs::write(&flag, "").unwrap();
    let (_, events) = api.wait_phase(&id, "RollingBack", Duration::from_secs(30)).await;
    let rollback_started = now_ms();
    let why = of_type(&events, "rolling-back").first().map(|e| s(&e["message"])).unwrap_or_default();
    assert!(why.contains("failed checks") && why.contains("success-rate"), "rolled back for the SLO breach: {why}");
    let (r, events) = api
        .wait(&id, "two failed rollback attempts", Duration::from_secs(20), |_, ev| {
            of_type(ev, "router-error").iter().any(|e| e["details"]["attempt"] == 2)
        })
        .await;
    assert_eq!(r["phase"], "RollingBack", "not RolledBack while the router is down:\n{}", e2e::history(&events));
    assert!(s(&r["message"]).contains("rollback NOT complete"), "the message says so: {}", r["message"]);
    assert!(s(&r["message"]).contains("unreachable"), "and why: {}", r["message"]);
    let stuck = site.measure(400).await;
    assert!(stuck.share("v2") > 25.0, "NGINX still sends traffic to v2 until the rollback lands: {stuck:?}");
    assert_eq!(site.file_weight(), Some(50), "the split file never claims a rollback NGINX did not load");

    // The daemon dies while the rollback cannot land: after the restart it reads 50 % back, keeps
    // rolling back (and failing), and does not declare the rollback done.
    e2e::crash_and_restart(&mut d);
    let retried = r#"vane_router_requests_total{router="nginx",result="error"}"#;
    let restarted = Instant::now();
    while api.metric(retried).await < 1.0 {
        assert!(restarted.elapsed() < Duration::from_secs(10), "no rollback attempt after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (r, events) = (api.rollout(&id).await, api.events(&id).await);
    assert_eq!(r["phase"], "RollingBack", "still rolling back after the restart:\n{}", e2e::history(&events));
    let recovered = of_type(&events, "recovered");
    assert_eq!(recovered.len(), 1, "{}", e2e::history(&events));
    assert_eq!(recovered[0]["details"]["observed"], 50, "the live weight read back: {}", recovered[0]);

    std::fs::remove_file(&flag).unwrap();
    let fixed = now_ms();
    let (r, events) = api.wait_phase(&id, "RolledBack", Duration::from_secs(30)).await;
    let done = of_type(&events, "rolled-back")[0];
    assert!(at(done) >= fixed, "RolledBack only after the router came back:\n{}", e2e::history(&events));
    assert!(s(&r["message"]).contains("all traffic back on v1"), "{}", r["message"]);
    let after = site.settled("v1", 300).await;
    e2e::assert_split("after the rollback", &after, 0.0, 0.0);
    format!(
        "RollingBack for {:.1}s while the router was down ({:.1}% still on v2 then); RolledBack {:.1}s after it came back",
        (fixed - rollback_started) as f64 / 1000.0,
        stuck.share("v2"),
        (at(done) - fixed) as f64 / 1000.0
    )
}

/// Scenario 5: the webhook receiver is down for a whole rollout and the daemon is SIGKILLed; once the receiver
/// is up every event arrives, with ids matching the events history and valid signatures.
async fn webhook_receiver_down(dir: std::path::PathBuf) -> String {
    let site = Site::start(&dir, "hooks", 0.0).await;
    // Nothing listens on this port (connection refused) until the receiver starts on it.
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let secret = "e2e-webhook-secret";
    let policy = "name: fast\nstrategy: canary\nsteps: [10, 50, 100]\ninterval: 300ms\nthreshold: 2\n";
    let webhooks = format!(r#"[{{ url = "http://{addr}/hook", secret_env = "E2E_WEBHOOK_SECRET" }}]"#);
    let env =
        [("VANE_NOTIFICATIONS_WEBHOOKS", webhooks), ("E2E_WEBHOOK_SECRET", secret.to_string()), site.plain_profile()];
    let mut d = e2e::daemon(&dir, &[("fast", policy)], &env).await;
    let api = e2e::api(&d);
    let id = api.create(&site.body("fast", site.router(), json!({}))).await;
    let (_, events) = api.wait_phase(&id, "Succeeded", Duration::from_secs(30)).await;
    let failed = api.metric(r#"vane_webhook_deliveries_total{kind="webhook",result="error"}"#).await;
    assert!(failed >= 1.0, "deliveries were attempted while the receiver was down");

    e2e::crash_and_restart(&mut d);
    let rx = support::receiver::Receiver::start_on(addr).await;
    let want: Vec<String> = events.iter().map(|e| format!("{id}-{}", e["seq"])).collect();
    let start = Instant::now();
    let got = loop {
        let got = rx.requests("/hook");
        let ids: std::collections::BTreeSet<String> =
            got.iter().filter_map(|r| r.header("x-vane-event-id").map(str::to_string)).collect();
        if want.iter().all(|w| ids.contains(w)) {
            break got;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "delivered {ids:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut first_seen = vec![];
    for req in &got {
        let eid = req.header("x-vane-event-id").unwrap_or_default().to_string();
        let sig = req.header("x-vane-signature").unwrap_or_default();
        assert!(vane::notify::sign::verify_vane_signature(secret.as_bytes(), &req.body, sig), "signature of {eid}");
        let body = req.json();
        let seq = body["seq"].as_u64().expect("seq");
        let event = &events[seq as usize - 1];
        assert_eq!((body["event"].clone(), body["id"].clone()), (event["type"].clone(), json!(id)), "{body}");
        assert_eq!(eid, format!("{id}-{seq}"));
        if !first_seen.contains(&seq) {
            first_seen.push(seq);
        }
    }
    assert!(first_seen.windows(2).all(|w| w[0] < w[1]), "in order: {first_seen:?}");
    assert_eq!(first_seen.len(), want.len(), "no unknown event ids");
    format!(
        "{} events, {} deliveries ({} duplicates) after the receiver came up, all signed; {failed} failed attempts before",
        want.len(),
        got.len(),
        got.len() - want.len()
    )
}
