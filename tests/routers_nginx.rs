//! The standalone `nginx` router against a real NGINX: the split measured with real requests at
//! every step, no failed request across the reloads, and a failing `nginx -t` that restores the
//! previous file while traffic keeps flowing.

#[path = "support/nginx.rs"]
mod nginx;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nginx::{Nginx, Tally, load};
use vane::config::{NginxProfile, RouterProfiles};
use vane::fixtures;
use vane::rollout::{RouterSpec, machine};
use vane::traffic::nginx::split_file;
use vane::traffic::{Router, RouterFactory, Routers};

/// Requests per measured step. With per-request hashing the canary count is binomial: at 50 % and
/// this many requests ±3 points is 3.8 standard deviations (a false alarm about once in 7,000 runs).
const PER_STEP: u32 = 4000;
const TOLERANCE: f64 = 3.0;

/// The router of a rollout naming the daemon's `[routers.nginx.edge]` profile for this NGINX.
fn nginx_router(n: &Nginx, variable: &str, test: Option<Vec<String>>, reload: Vec<String>) -> Arc<dyn Router> {
    let mut profiles = RouterProfiles::default();
    profiles.nginx.insert(
        "edge".into(),
        NginxProfile {
            config_file: n.split_file(),
            variable: variable.into(),
            test,
            reload,
            namespaces: vec!["*".into()],
        },
    );
    let mut req = fixtures::request("agent-service", "canary");
    req.router = RouterSpec::Nginx {
        profile: "edge".into(),
        stable_upstream: "stable_pool".into(),
        canary_upstream: "canary_pool".into(),
    };
    let policy = fixtures::policy("canary", &[5, 25, 50, 100], Duration::from_millis(200), 2);
    let (rollout, _) = machine::create("r".into(), &req, policy, "test", 0);
    Routers::default().with_profiles(profiles, Arc::default()).build(&rollout).expect("nginx router builds")
}

fn router(n: &Nginx, variable: &str) -> Arc<dyn Router> {
    nginx_router(n, variable, Some(n.command(&["-t", "-q"])), n.command(&["-s", "reload"]))
}

async fn start() -> Nginx {
    vane::install_crypto_provider();
    let stable = nginx::backend("stable").await;
    let canary = nginx::backend("canary").await;
    Nginx::start("vane_upstream", stable, canary, &split_file("vane_upstream", "stable_pool", "canary_pool", 0)).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(60)).build().expect("http client")
}

/// Set `w` through the router and wait until NGINX runs the new configuration.
async fn shift(n: &Nginx, r: &dyn Router, w: u8) {
    let old = n.workers();
    r.set_weight(w).await.unwrap_or_else(|e| panic!("set {w}%: {e}\n{}", n.logs()));
    n.wait_reloaded(&old).await;
}

fn assert_split(t: &Tally, w: u8) {
    let got = t.canary_percent();
    assert!((got - w as f64).abs() <= TOLERANCE, "at {w}% the measured canary share is {got:.2}% ({t:?})");
    assert_eq!(t.failed, 0, "failed requests at {w}%: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_steps_split_real_traffic_without_failing_a_request() {
    let n = start().await;
    let r = router(&n, "vane_upstream");
    r.validate().await.expect("config dir and nginx binary exist");
    // Background traffic through every reload, as production would see it.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (stop, url, client) = (stop.clone(), n.url(), client());
        tokio::spawn(async move {
            let mut t = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                nginx::hit(&client, &url, &mut t).await;
            }
            t
        })
    };
    let measure = client();
    let mut report = vec![];
    for w in [5u8, 25, 50, 100, 0] {
        shift(&n, r.as_ref(), w).await;
        assert_eq!(r.observe().await, Ok(Some(w)));
        let t = load(&measure, &n.url(), PER_STEP, 4).await;
        assert_split(&t, w);
        report.push(format!(
            "{w}%: {:.2}% canary (stable {}, canary {}, retried {})",
            t.canary_percent(),
            t.stable,
            t.canary,
            t.retried
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let bg = background.await.unwrap();
    eprintln!("nginx split per step ({PER_STEP} requests each): {}", report.join("; "));
    eprintln!("background traffic across 5 reloads: {bg:?}");
    assert_eq!(bg.failed, 0, "no request may fail across reloads: {bg:?}");
    assert!(bg.stable + bg.canary > 0, "the background client ran");
    // 100 % is `* canary_pool;`, 0 % is `* stable_pool;`.
    assert!(std::fs::read_to_string(n.split_file()).unwrap().contains("{\n    * stable_pool;\n}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_config_test_restores_the_previous_file_and_traffic_keeps_flowing() {
    let n = start().await;
    let good = router(&n, "vane_upstream");
    shift(&n, good.as_ref(), 25).await;
    let before = std::fs::read_to_string(n.split_file()).unwrap();
    // A misconfigured router: `$host` is a built-in variable, so `nginx -t` rejects the file.
    let bad = router(&n, "host");
    let workers = n.workers();
    let e = bad.set_weight(50).await.unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert!(
        e.to_string().contains("duplicate \"host\" variable") && e.to_string().contains("previous file restored"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(n.split_file()).unwrap(), before, "previous file restored byte for byte");
    assert_eq!(n.workers(), workers, "no reload happened");
    let t = load(&client(), &n.url(), PER_STEP, 4).await;
    assert_split(&t, 25);
    eprintln!("after the failed test: {:.2}% canary, {t:?}", t.canary_percent());
    // The restored file is valid: the next good change applies.
    shift(&n, good.as_ref(), 50).await;
    assert_split(&load(&client(), &n.url(), PER_STEP, 4).await, 50);
}

#[tokio::test]
async fn a_failing_reload_is_transient_and_restores_the_previous_file() {
    let n = start().await;
    let good = router(&n, "vane_upstream");
    shift(&n, good.as_ref(), 25).await;
    let r = nginx_router(&n, "vane_upstream", None, vec!["false".into()]);
    let e = r.set_weight(50).await.unwrap_err();
    assert!(!e.is_permanent() && e.to_string().contains("reload"), "{e}");
    // The file shows what NGINX runs (vane reads it back after a restart); the retry writes 50 again.
    assert_eq!(r.observe().await, Ok(Some(25)), "the previous file is back");
    assert_eq!(
        std::fs::read_to_string(n.split_file()).unwrap(),
        split_file("vane_upstream", "stable_pool", "canary_pool", 25)
    );
}
