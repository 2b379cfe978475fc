//! The etcd backend against a real etcd (Debian's): it answers every query exactly as sled does for the
//! same history, keeps sled's create rules (one active rollout per service, Idempotency-Key replays and
//! mismatches), fences a replica whose lease ran out, and lets exactly one replica send a sink's queue.

mod support {
    pub mod etcd;
}

use std::time::{Duration, Instant};

use support::etcd::EtcdCluster;
use vane::config::EtcdConfig;
use vane::fixtures;
use vane::rollout::ports::{Created, ListFilter, Queued, Store, StoreError};
use vane::rollout::{Event, Phase, Rollout, machine};
use vane::store::{EtcdStore, SledStore};

fn cfg(etcd: &EtcdCluster, prefix: &str) -> EtcdConfig {
    EtcdConfig { endpoints: etcd.endpoints(), prefix: prefix.into(), lease_ttl: Duration::from_secs(2) }
}

/// A replica `id`; `hold`: keep its lease alive (else it runs out after the TTL, as if paused).
async fn replica(etcd: &EtcdCluster, prefix: &str, id: &str, hold: bool) -> EtcdStore {
    let s = EtcdStore::connect(&cfg(etcd, prefix), id.into(), format!("http://{id}.invalid")).await.expect("connect");
    if hold {
        let holder = s.clone();
        tokio::spawn(async move { holder.hold_lease().await });
    }
    s
}

fn rollout(i: u32, service: &str, namespace: &str) -> (Rollout, Vec<Event>) {
    let policy = fixtures::policy("p", &[50, 100], Duration::from_secs(1), 2);
    let req = vane::rollout::CreateRequest { namespace: namespace.into(), ..fixtures::request(service, "p") };
    let (r, out) = machine::create(format!("r{i:04}"), &req, policy, "ci", 1000 + i as u64);
    (r, out.events)
}

/// 40 rollouts of 4 services in 2 namespaces, the earlier ones of each service finished.
/// Returns every commit's latency.
async fn fill(store: &dyn Store) -> Vec<Duration> {
    let mut took = Vec::new();
    let terminal = [Phase::Succeeded, Phase::RolledBack, Phase::Aborted, Phase::Failed];
    for i in 0..40u32 {
        let (mut r, events) = rollout(
            i,
            ["cart", "checkout", "search", "cart-api"][(i % 4) as usize],
            ["prod", "dev"][(i / 4 % 2) as usize],
        );
        store.create(&mut r, events, None).await.expect("create");
        r.phase =
            if i < 32 { terminal[(i % 4) as usize] } else { [Phase::Progressing, Phase::Paused][(i % 2) as usize] };
        let e = ev(&r);
        let t = Instant::now();
        store.commit(&mut r, vec![e]).await.expect("commit");
        took.push(t.elapsed());
    }
    took
}

/// "p50 …, p99 …" of some latencies.
fn percentiles(mut d: Vec<Duration>) -> String {
    d.sort();
    let at = |p: usize| d[(d.len() * p / 100).min(d.len() - 1)];
    format!("p50 {:?}, p99 {:?}", at(50), at(99))
}

/// An event about `r`'s current state (the store numbers it).
fn ev(r: &Rollout) -> Event {
    Event {
        seq: 0,
        at: r.created_at,
        kind: "paused".into(),
        actor: "test".into(),
        message: format!("now {}", r.phase.as_str()),
        phase: r.phase,
        canary_weight: r.canary_weight,
        details: serde_json::Value::Null,
    }
}

fn ids(rs: &[Rollout]) -> Vec<String> {
    rs.iter().map(|r| r.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_answers_every_query_as_sled_does() {
    let etcd = EtcdCluster::start(1);
    let e = replica(&etcd, "/same/", "a", true).await;
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let (etcd_took, sled_took) = (fill(&e).await, fill(&s).await);
    // Side by side, one run (a 1-member etcd on loopback; both fsync before a commit returns).
    eprintln!("commit latency: etcd {}; sled {}", percentiles(etcd_took), percentiles(sled_took));
    for service in [None, Some("cart"), Some("nope")] {
        for namespace in [None, Some("prod")] {
            for phase in [None, Some(Phase::Progressing), Some(Phase::Succeeded)] {
                for limit in [1, 3, 1000] {
                    let f = ListFilter {
                        service: service.map(Into::into),
                        namespace: namespace.map(Into::into),
                        phase,
                        limit,
                    };
                    assert_eq!(ids(&Store::list(&e, &f).unwrap()), ids(&s.list(&f).unwrap()), "{f:?}");
                }
            }
        }
    }
    let mut active = ids(&Store::active(&e).unwrap());
    let mut want = ids(&s.active().unwrap());
    active.sort();
    want.sort();
    assert_eq!(active, want);
    for id in ["r0000", "r0039"] {
        assert_eq!(Store::get(&e, id).unwrap(), s.get(id).unwrap());
        assert_eq!(Store::events(&e, id, 0).unwrap(), s.events(id, 0).unwrap());
        assert_eq!(Store::events(&e, id, 1).unwrap(), s.events(id, 1).unwrap());
    }
    let seqs: Vec<u64> = Store::events(&e, "r0039", 0).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    // One active rollout per service and namespace.
    let (mut dup, events) = rollout(100, "cart-api", "dev");
    match Store::create(&e, &mut dup, events, None).await {
        Err(StoreError::Conflict { id, .. }) => assert_eq!(id, "r0039"),
        other => panic!("expected a conflict, got {:?}", other.map(|_| ())),
    }
    // Idempotency-Key: the same body replays the first rollout, another body is refused.
    let (mut first, events) = rollout(101, "new", "prod");
    assert!(matches!(Store::create(&e, &mut first, events.clone(), Some(("k1", "body"))).await, Ok(Created::New(_))));
    let (mut again, _) = rollout(102, "new", "prod");
    match Store::create(&e, &mut again, events.clone(), Some(("k1", "body"))).await {
        Ok(Created::Existing(r)) => assert_eq!(r.id, "r0101"),
        other => panic!("expected the first rollout, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        Store::create(&e, &mut again, events, Some(("k1", "other body"))).await,
        Err(StoreError::IdempotencyMismatch)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_lease_ran_out_cannot_commit() {
    let etcd = EtcdCluster::start(1);
    let a = replica(&etcd, "/fence/", "a", false).await;
    // b keeps its lease; nobody keeps a's alive (as if a were paused).
    let b = replica(&etcd, "/fence/", "b", true).await;
    let (mut r, events) = rollout(1, "cart", "prod");
    Store::create(&a, &mut r, events, None).await.unwrap();
    let mut a_copy = r.clone();
    Store::commit(&a, &mut a_copy, vec![ev(&r)]).await.expect("the owner commits");
    assert_eq!(Store::owner(&b, &r.id).unwrap().map(|o| (o.replica, o.local)), Some(("a".into(), false)));
    // After a's TTL the rollout is an orphan, and b claims it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let claimed = loop {
        let view = b.view().await.unwrap();
        if let Some((id, akey)) = view.orphans().first()
            && let Some(r) = b.claim(id, akey).await.unwrap()
        {
            break r;
        }
        assert!(Instant::now() < deadline, "a's rollout never became an orphan: {view:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(claimed.last_seq, 2);
    // a wakes up and tries to commit its next decision: refused, nothing written.
    let mut stale = a_copy.clone();
    match Store::commit(&a, &mut stale, vec![ev(&r)]).await {
        Err(StoreError::Fenced(id)) => assert_eq!(id, r.id),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(stale, a_copy, "a failed commit leaves the caller's record as it was");
    let mut mine = claimed.clone();
    Store::commit(&b, &mut mine, vec![ev(&r)]).await.expect("the new owner commits");
    let seqs: Vec<u64> = Store::events(&b, &r.id, 0).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3], "gap-free: the fenced commit wrote nothing");
    assert!(Store::owner(&b, &r.id).unwrap().is_some_and(|o| o.local && o.replica == "b"));
    // Finishing releases the rollout: no owner, not active.
    mine.phase = Phase::Succeeded;
    Store::commit(&b, &mut mine, vec![]).await.unwrap();
    assert_eq!(Store::owner(&b, &r.id).unwrap(), None);
    assert!(Store::active(&b).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_sends_a_sinks_queue() {
    let etcd = EtcdCluster::start(1);
    let a = replica(&etcd, "/queue/", "a", true).await;
    let b = replica(&etcd, "/queue/", "b", true).await;
    let q = |seq: u64| Queued { sink: "webhook x".into(), seq, entry: format!("e{seq}").into_bytes() };
    Store::queue_push(&b, "r1", &[q(1), q(2)], 2, false).unwrap();
    // Entries at or below the cursor are not queued twice (a replay after a crash).
    Store::queue_push(&a, "r1", &[q(2), q(3)], 3, false).unwrap();
    assert_eq!(Store::queue_len(&a), 3);
    assert_eq!(Store::queue_cursor(&b, "r1").unwrap(), Some(3));
    let (k1, v1) = Store::queue_head(&a, "webhook x").unwrap().expect("a becomes the sender");
    assert_eq!(v1, b"e1");
    assert_eq!(Store::queue_head(&b, "webhook x").unwrap(), None, "b does not send what a sends");
    Store::queue_remove(&a, &k1).unwrap();
    let order: Vec<Vec<u8>> = std::iter::from_fn(|| {
        let (k, v) = Store::queue_head(&a, "webhook x").unwrap()?;
        Store::queue_remove(&a, &k).unwrap();
        Some(v)
    })
    .collect();
    assert_eq!(order, [b"e2".to_vec(), b"e3".to_vec()], "oldest first");
    assert_eq!(Store::queue_since(&a, 5).unwrap(), 5);
    assert_eq!(Store::queue_since(&b, 9).unwrap(), 5, "set once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_sled_to_etcd_and_back_keeps_every_rollout_and_event() {
    use vane::store::migrate::{Location, MigrateError, migrate};
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let (from, back) = (dir.path().join("from"), dir.path().join("back"));
    {
        let s = SledStore::open(&from).unwrap();
        fill(&s).await;
        // A long history: more events than one etcd transaction may hold.
        let (mut r, events) = rollout(50, "long", "prod");
        s.create(&mut r, events, None).await.unwrap();
        for _ in 0..250 {
            let e = ev(&r);
            s.commit(&mut r, vec![e]).await.unwrap();
        }
    }
    let url = etcd.endpoints().join(",");
    let to: Location = format!("etcd:{url}").parse().unwrap();
    let n = migrate(&Location::Sled(from.clone()), &to, "/m/").await.expect("sled → etcd");
    assert_eq!(n, 41);
    // Into a store that is not empty: refused.
    match migrate(&Location::Sled(from.clone()), &to, "/m/").await {
        Err(MigrateError::NotEmpty(_, 41)) => {}
        other => panic!("expected NotEmpty, got {other:?}"),
    }
    assert_eq!(migrate(&to, &Location::Sled(back.clone()), "/m/").await.expect("etcd → sled"), 41);
    let (a, b) = (SledStore::open(&from).unwrap(), SledStore::open(&back).unwrap());
    let all = ListFilter { limit: 1000, ..Default::default() };
    assert_eq!(a.list(&all).unwrap(), b.list(&all).unwrap());
    assert_eq!(ids(&a.active().unwrap()), ids(&b.active().unwrap()));
    for r in a.list(&all).unwrap() {
        assert_eq!(a.events(&r.id, 0).unwrap(), b.events(&r.id, 0).unwrap(), "{}", r.id);
    }
    assert_eq!(b.events("r0050", 0).unwrap().len(), 251);
    drop((a, b)); // sled's lock: a store in use cannot be migrated
    // In etcd the active rollouts were left without an owner, for the replicas to claim.
    let e = replica(&etcd, "/m/", "x", true).await;
    let view = e.view().await.unwrap();
    assert_eq!(view.orphans().len(), Store::active(&e).unwrap().len());
    assert!(!view.orphans().is_empty());
    // With a replica alive on the prefix, a migration is refused.
    match migrate(&Location::Sled(from), &to, "/m/").await {
        Err(MigrateError::Live(_, who)) => assert_eq!(who, "x"),
        other => panic!("expected Live, got {other:?}"),
    }
}
