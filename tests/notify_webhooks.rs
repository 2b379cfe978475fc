//! Outbound webhooks (SPEC §5) against a local receiver: signatures, body, retries, dedupe ids, and
//! the durable queue across a daemon restart.

#[path = "support/notify_env.rs"]
mod notify_env;
#[path = "support/receiver.rs"]
mod receiver;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use notify_env::*;
use receiver::{Receiver, Request, down};
use sha2::Sha256;
use vane::analysis::TimeOnly;
use vane::notify::outbox::{Delivery, Outbox, Sink};
use vane::notify::{AlwaysOk, Notifier};
use vane::rollout::controller::Controller;
use vane::rollout::{Event, Phase, Rollout};
use vane::store::Store;
use vane::telemetry::Metrics;

const SECRET: &str = "webhook-secret-for-tests";
const WAIT: Duration = Duration::from_secs(10);

fn fast() -> Delivery {
    Delivery {
        first_retry: Duration::from_millis(50),
        max_retry: Duration::from_millis(200),
        give_up_after: Duration::from_secs(60),
        timeout: Duration::from_secs(2),
    }
}

const CANARY: &str =
    "name: quick\nstrategy: canary\nsteps: [20, 50, 100]\ninterval: 100ms\nthreshold: 2\nprogressDeadline: 10s\n";
const GATED: &str = "name: gated\nstrategy: canary\nsteps: [20, 50, 100]\ninterval: 100ms\nthreshold: 2\nprogressDeadline: 10s\ngates:\n  - at: 20\n    approval: manual\n    timeout: 1h\n";

fn outbox(store: &Store, metrics: &Arc<Metrics>, url: String) -> Outbox {
    Outbox::open(store, vec![Sink::webhook(url, Some(SECRET.as_bytes().to_vec()))], metrics.clone(), fast()).unwrap()
}

/// The same configured receiver across a restart, wherever it listens now (the queue is keyed by the
/// sink, normally its URL).
fn restart_outbox(store: &Store, metrics: &Arc<Metrics>, url: String) -> Outbox {
    let sink = Sink { key: "webhook receiver".into(), ..Sink::webhook(url, Some(SECRET.as_bytes().to_vec())) };
    Outbox::open(store, vec![sink], metrics.clone(), fast()).unwrap()
}

fn controller(w: &World, notifier: Arc<dyn Notifier>) -> Controller {
    w.controller(vec![policy(CANARY), policy(GATED)], Arc::new(TimeOnly), Arc::new(AlwaysOk), notifier)
}

/// Independent check of `X-Vane-Signature` (what a receiver would write).
fn signature_ok(req: &Request, secret: &str) -> bool {
    let Some(hexsig) = req.header("x-vane-signature").and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hexsig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&req.body);
    mac.verify_slice(&sig).is_ok()
}

fn ids(reqs: &[Request]) -> Vec<String> {
    reqs.iter().map(|r| r.header("x-vane-event-id").unwrap_or("<none>").to_string()).collect()
}

fn expected_ids(r: &Rollout, events: &[Event]) -> Vec<String> {
    events.iter().map(|e| format!("{}-{}", r.id, e.seq)).collect()
}

/// What a receiver keeps after deduplicating on the event id, in arrival order.
fn dedupe(reqs: &[Request]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    ids(reqs).into_iter().filter(|id| seen.insert(id.clone())).collect()
}

#[tokio::test]
async fn every_event_is_posted_signed_with_the_spec_body() {
    let rx = Receiver::start().await;
    let w = World::new();
    let ob = outbox(&w.store, &w.metrics, rx.url("/hook"));
    ob.start();
    let c = controller(&w, Arc::new(ob.clone()));
    let r = start(&c, w.request("cart", "quick")).await;
    wait_phase(&c, &r.id, Phase::Succeeded, WAIT).await;
    let events = events(&c, &r.id);
    let got = rx.wait_for("/hook", events.len(), WAIT).await;

    assert_eq!(ids(&got), expected_ids(&r, &events), "one delivery per event, in order");
    for (req, e) in got.iter().zip(&events) {
        assert!(signature_ok(req, SECRET), "signature of {} does not verify", e.kind);
        assert!(!signature_ok(req, "another-secret"), "a wrong secret must not verify");
        assert!(vane::notify::sign::verify_vane_signature(
            SECRET.as_bytes(),
            &req.body,
            req.header("x-vane-signature").unwrap()
        ));
        assert_eq!(req.header("content-type"), Some("application/json"));
        let b = req.json();
        for k in ["id", "service", "namespace", "version", "phase", "canaryWeight", "event", "message", "at"] {
            assert!(b.get(k).is_some(), "body lacks {k}: {b}");
        }
        assert_eq!(b["id"], r.id);
        assert_eq!(b["service"], "cart");
        assert_eq!(b["namespace"], "shop");
        assert_eq!(b["version"], "v2");
        assert_eq!(b["event"], e.kind.as_str());
        assert_eq!(b["message"], e.message.as_str());
        assert_eq!(b["phase"], e.phase.as_str());
        assert_eq!(b["canaryWeight"], e.canary_weight);
        assert_eq!(b["seq"], e.seq);
        assert!(humantime::parse_rfc3339(b["at"].as_str().unwrap()).is_ok(), "at is RFC 3339: {}", b["at"]);
    }
    let last = got.last().unwrap().json();
    assert_eq!(
        (last["event"].as_str(), last["phase"].as_str(), last["canaryWeight"].as_u64()),
        (Some("succeeded"), Some("Succeeded"), Some(100))
    );
    let weights: Vec<u64> = got
        .iter()
        .map(|r| r.json())
        .filter(|b| b["event"] == "weight-set")
        .map(|b| b["canaryWeight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [20, 50, 100]);
    wait_pending(&ob, 0).await;
}

async fn wait_pending(ob: &Outbox, n: usize) {
    let start = std::time::Instant::now();
    while ob.pending() != n {
        assert!(start.elapsed() < WAIT, "queue still holds {} entries, expected {n}", ob.pending());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_receiver_answering_500_twice_gets_the_event_on_the_third_try() {
    let rx = Receiver::start().await;
    rx.script("/hook", &[500, 500]);
    let w = World::new();
    let ob = outbox(&w.store, &w.metrics, rx.url("/hook"));
    ob.start();
    let c = controller(&w, Arc::new(ob.clone()));
    let r = start(&c, w.request("cart", "quick")).await;
    wait_phase(&c, &r.id, Phase::Succeeded, WAIT).await;
    let events = events(&c, &r.id);
    let got = rx.wait_for("/hook", events.len() + 2, WAIT).await;

    // The first event arrives three times (500, 500, 200), with the same id and the same signed body.
    let first = format!("{}-1", r.id);
    assert_eq!(ids(&got[..3]), [first.clone(), first.clone(), first]);
    assert!(got[..3].iter().all(|q| q.body == got[0].body && signature_ok(q, SECRET)));
    // Later events were held back until it got through: order is kept, nothing is lost or repeated.
    assert_eq!(ids(&got[2..]), expected_ids(&r, &events));
    assert_eq!(dedupe(&got), expected_ids(&r, &events), "deduplicating on X-Vane-Event-Id yields each event once");
    wait_pending(&ob, 0).await;
    let m = w.metrics.encode();
    assert!(m.contains(r#"vane_webhook_deliveries_total{kind="webhook",result="error"} 2"#), "{m}");
    let ok = format!(r#"vane_webhook_deliveries_total{{kind="webhook",result="ok"}} {}"#, events.len());
    assert!(m.contains(&ok), "{m}");
}

#[tokio::test]
async fn a_rejecting_receiver_is_not_retried_and_does_not_block_the_queue() {
    let rx = Receiver::start().await;
    rx.script("/hook", &[400]);
    let w = World::new();
    let ob = outbox(&w.store, &w.metrics, rx.url("/hook"));
    ob.start();
    let c = controller(&w, Arc::new(ob.clone()));
    let r = start(&c, w.request("cart", "quick")).await;
    wait_phase(&c, &r.id, Phase::Succeeded, WAIT).await;
    let events = events(&c, &r.id);
    let got = rx.wait_for("/hook", events.len(), WAIT).await;
    wait_pending(&ob, 0).await;
    assert_eq!(ids(&got), expected_ids(&r, &events), "the 400 is final: event 1 is not sent again");
}

/// Forwards only the first `allow` events, then "crashes" (drops the rest), like a daemon killed
/// between committing an event and queueing its notification.
struct Lossy {
    inner: Outbox,
    allow: AtomicUsize,
}

impl Notifier for Lossy {
    fn notify(&self, r: &Rollout, e: &Event) {
        if self.allow.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            self.inner.notify(r, e);
        }
    }
}

/// Open the store the previous "daemon" used, once sled's background threads released its lock.
async fn reopen(path: &std::path::Path) -> Store {
    let start = std::time::Instant::now();
    loop {
        match Store::open(path) {
            Ok(s) => return s,
            Err(e) if start.elapsed() > WAIT => panic!("the first daemon's store does not reopen: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Daemon 1 runs rollouts while the receiver is down and is then shut down (runtime dropped, store
/// closed); daemon 2 opens the same store with the receiver up.
#[test]
fn pending_deliveries_survive_a_daemon_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let metrics = Arc::new(Metrics::new(Duration::from_secs(3600)));
    let (addr, receiver_down) = down();
    let rt1 = runtime();
    let (expected, pending) = rt1.block_on(async {
        let store = Store::open(&path).unwrap();
        let ob = restart_outbox(&store, &metrics, format!("http://{addr}/hook"));
        ob.start();
        let w = World { dir: tempfile::tempdir().unwrap(), store: store.clone(), metrics: metrics.clone() };
        let c = controller(&w, Arc::new(ob.clone()));
        let r = start(&c, w.request("cart", "quick")).await;
        wait_phase(&c, &r.id, Phase::Succeeded, WAIT).await;
        let events = events(&c, &r.id);
        // The driver queues an event right after committing it: give the last ones a moment.
        wait_pending(&ob, events.len()).await;
        (expected_ids(&r, &events), ob.pending())
    });
    assert_eq!(pending, expected.len(), "everything is still queued while the receiver is down");
    drop(rt1);
    drop(receiver_down);

    let rt2 = runtime();
    rt2.block_on(async {
        let rx = Receiver::start().await;
        let store = reopen(&path).await;
        let ob = restart_outbox(&store, &metrics, rx.url("/hook"));
        assert_eq!(ob.pending(), expected.len());
        ob.start();
        let got = rx.wait_for("/hook", expected.len(), WAIT).await;
        wait_pending(&ob, 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await; // room for a wrong extra delivery to show
        let got_all = rx.requests("/hook");
        assert_eq!(ids(&got), expected, "exactly the pending events, in order");
        assert_eq!(got_all.len(), expected.len(), "and nothing else");
        assert!(got_all.iter().all(|q| signature_ok(q, SECRET)));
    });
}

#[test]
fn events_committed_but_never_queued_are_sent_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let metrics = Arc::new(Metrics::new(Duration::from_secs(3600)));
    let (addr, receiver_down) = down();
    let rt1 = runtime();
    let ids_ab = rt1.block_on(async {
        let store = Store::open(&path).unwrap();
        let ob = restart_outbox(&store, &metrics, format!("http://{addr}/hook")); // never started: a crash
        let w = World { dir: tempfile::tempdir().unwrap(), store: store.clone(), metrics: metrics.clone() };
        // a: the first 2 events reach the queue, the rest are lost; b: none at all.
        let a_ctl = controller(&w, Arc::new(Lossy { inner: ob.clone(), allow: AtomicUsize::new(2) }));
        let b_ctl = controller(&w, Arc::new(Lossy { inner: ob.clone(), allow: AtomicUsize::new(0) }));
        let a = start(&a_ctl, w.request("cart", "gated")).await;
        let b = start(&b_ctl, w.request("shelf", "gated")).await;
        wait_phase(&a_ctl, &a.id, Phase::AwaitingApproval, WAIT).await;
        wait_phase(&b_ctl, &b.id, Phase::AwaitingApproval, WAIT).await;
        assert_eq!(ob.pending(), 2);
        [a.id, b.id]
    });
    drop(rt1);
    drop(receiver_down);

    let rt2 = runtime();
    rt2.block_on(async {
        let rx = Receiver::start().await;
        let store = reopen(&path).await;
        // Every event the first daemon committed (analysis went on at the gate until it stopped).
        let mut want: Vec<String> = Vec::new();
        for id in &ids_ab {
            let r = store.get(id).unwrap().unwrap();
            want.extend(expected_ids(&r, &store.events(id, 0).unwrap()));
        }
        assert!(want.len() >= 12, "{want:?}");
        let ob = restart_outbox(&store, &metrics, rx.url("/hook"));
        assert_eq!(ob.pending(), want.len(), "catch-up queued every committed event");
        ob.start();
        let got = rx.wait_for("/hook", want.len(), WAIT).await;
        wait_pending(&ob, 0).await;
        let mut got_ids = ids(&rx.requests("/hook"));
        got_ids.sort();
        want.sort();
        assert_eq!(got_ids, want, "each event exactly once");
        assert!(got.iter().all(|q| signature_ok(q, SECRET)));
    });
}

#[tokio::test]
async fn the_daemon_wiring_fans_out_to_every_configured_sink() {
    use vane::config::{Config, Notifications, WebhookConfig};
    let rx = Receiver::start().await;
    let w = World::new();
    let cfg = Config {
        notifications: Notifications {
            webhooks: vec![WebhookConfig { url: rx.url("/hook"), secret_env: "T_WEBHOOK_SECRET".into() }],
            hook_secret_env: "T_HOOK_SECRET".into(),
        },
        ..Config::default()
    };
    // A webhook whose secret variable is unset is a configuration error, not an unsigned webhook.
    let e = vane::notify::wire(&cfg, &w.store, &w.metrics, |_| None).err().expect("missing secret is an error");
    assert!(e.to_string().contains("T_WEBHOOK_SECRET"), "{e}");

    let slack_url = rx.url("/slack");
    let env = move |v: &str| match v {
        "T_WEBHOOK_SECRET" => Some(SECRET.to_string()),
        "VANE_SLACK_WEBHOOK_URL" => Some(slack_url.clone()),
        "VANE_SLACK_SIGNING_SECRET" => Some("signing".to_string()),
        _ => None,
    };
    let wiring = vane::notify::wire(&cfg, &w.store, &w.metrics, env).unwrap();
    assert!(wiring.slack.is_some(), "the signing secret enables the interactions endpoint");
    let c = w.controller(vec![policy(CANARY)], Arc::new(TimeOnly), wiring.hooks, wiring.notifier);
    let r = start(&c, w.request("cart", "quick")).await;
    wait_phase(&c, &r.id, Phase::Succeeded, WAIT).await;
    let n = events(&c, &r.id).len();
    let hooks = rx.wait_for("/hook", n, WAIT).await;
    assert!(hooks.iter().all(|q| signature_ok(q, SECRET)));
    let slack = rx.wait_for("/slack", 5, WAIT).await; // started, 3 steps, succeeded
    assert_eq!(slack.last().unwrap().json()["text"], "cart v2 succeeded");
}
