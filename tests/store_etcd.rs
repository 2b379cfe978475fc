//! The etcd backend against a real etcd (Debian's): it answers every query exactly as sled does for the
//! same history, keeps sled's create rules (one active rollout per service and per router object, even
//! when replicas race; Idempotency-Key replays and mismatches), applies retention once across
//! replicas, fences a replica whose lease ran out, and lets exactly one replica send a sink's queue.

mod support {
    pub mod etcd;
}

use std::time::{Duration, Instant};

use support::etcd::EtcdCluster;
use vane::config::EtcdConfig;
use vane::fixtures;
use vane::rollout::ports::{Created, ListFilter, Queued, Store, StoreError};
use vane::rollout::{Event, Phase, Rollout, RouterSpec, machine};
use vane::store::{EtcdStore, SledStore};

fn cfg(etcd: &EtcdCluster, prefix: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: etcd.endpoints(),
        prefix: prefix.into(),
        lease_ttl: Duration::from_secs(2),
        ..Default::default()
    }
}

/// A replica `id`; `hold`: keep its lease alive (else it runs out after the TTL, as if paused).
async fn replica(etcd: &EtcdCluster, prefix: &str, id: &str, hold: bool) -> EtcdStore {
    replica_with(&cfg(etcd, prefix), id, hold).await
}

async fn replica_with(cfg: &EtcdConfig, id: &str, hold: bool) -> EtcdStore {
    let s = EtcdStore::connect(cfg, id.into(), format!("http://{id}.invalid")).await.expect("connect");
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

/// Point `r` at `route` (None: all) of the Istio VirtualService `vs`.
fn on(r: &mut Rollout, vs: &str, route: Option<&str>) {
    r.router = RouterSpec::Istio {
        virtual_service: vs.into(),
        route: route.map(Into::into),
        stable_subset: "stable".into(),
        canary_subset: "canary".into(),
    };
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
                        ..Default::default()
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
    let m = EtcdConfig { prefix: "/m/".into(), ..Default::default() };
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
        // An active rollout holding a router object: the claim moves with it.
        let (mut r, events) = rollout(51, "routed", "prod");
        on(&mut r, "vs-routed", None);
        s.create(&mut r, events, None).await.unwrap();
    }
    let url = etcd.endpoints().join(",");
    let to: Location = format!("etcd:{url}").parse().unwrap();
    let n = migrate(&Location::Sled(from.clone()), &to, &m).await.expect("sled → etcd");
    assert_eq!(n, 42);
    // Into a store that is not empty: refused.
    match migrate(&Location::Sled(from.clone()), &to, &m).await {
        Err(MigrateError::NotEmpty(_, 42)) => {}
        other => panic!("expected NotEmpty, got {other:?}"),
    }
    let other_on_it = || {
        let (mut r, events) = rollout(60, "other", "prod");
        on(&mut r, "vs-routed", None);
        (r, events)
    };
    let e = replica(&etcd, "/m/", "probe", true).await;
    let (mut r, events) = other_on_it();
    let claimed = Store::create(&e, &mut r, events, None).await;
    assert!(matches!(claimed, Err(StoreError::TargetConflict { id, .. }) if id == "r0051"), "claim kept in etcd");
    e.leave().await.unwrap();
    assert_eq!(migrate(&to, &Location::Sled(back.clone()), &m).await.expect("etcd → sled"), 42);
    let (a, b) = (SledStore::open(&from).unwrap(), SledStore::open(&back).unwrap());
    let all = ListFilter { limit: 1000, ..Default::default() };
    assert_eq!(a.list(&all).unwrap(), b.list(&all).unwrap());
    assert_eq!(ids(&a.active().unwrap()), ids(&b.active().unwrap()));
    for r in a.list(&all).unwrap() {
        assert_eq!(a.events(&r.id, 0).unwrap(), b.events(&r.id, 0).unwrap(), "{}", r.id);
    }
    assert_eq!(b.events("r0050", 0).unwrap().len(), 251);
    let (mut r, events) = other_on_it();
    let claimed = b.create(&mut r, events, None).await;
    assert!(matches!(claimed, Err(StoreError::TargetConflict { id, .. }) if id == "r0051"), "claim kept in sled");
    drop((a, b)); // sled's lock: a store in use cannot be migrated
    // In etcd the active rollouts were left without an owner, for the replicas to claim.
    let e = replica(&etcd, "/m/", "x", true).await;
    let view = e.view().await.unwrap();
    assert_eq!(view.orphans().len(), Store::active(&e).unwrap().len());
    assert!(!view.orphans().is_empty());
    // With a replica alive on the prefix, a migration is refused.
    match migrate(&Location::Sled(from), &to, &m).await {
        Err(MigrateError::Live(_, who)) => assert_eq!(who, "x"),
        other => panic!("expected Live, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_active_rollout_per_router_object_even_when_replicas_race() {
    let etcd = EtcdCluster::start(1);
    let a = replica(&etcd, "/targets/", "a", true).await;
    let b = replica(&etcd, "/targets/", "b", true).await;
    // Two services on one VirtualService, created at the same moment on two replicas: one wins.
    for round in 0..20u32 {
        let vs = format!("vs{round}");
        let (mut ra, ea) = rollout(2 * round, &format!("a{round}"), "prod");
        let (mut rb, eb) = rollout(2 * round + 1, &format!("b{round}"), "prod");
        on(&mut ra, &vs, None);
        on(&mut rb, &vs, Some("main"));
        let (x, y) = tokio::join!(Store::create(&a, &mut ra, ea, None), Store::create(&b, &mut rb, eb, None));
        let (winner, loser) = match (&x, &y) {
            (Ok(Created::New(_)), Err(StoreError::TargetConflict { id, target, .. })) => {
                assert_eq!(target, &format!("prod/VirtualService/{vs}"));
                (ra.id.clone(), id.clone())
            }
            (Err(StoreError::TargetConflict { id, .. }), Ok(Created::New(_))) => (rb.id.clone(), id.clone()),
            _ => panic!(
                "round {round}: expected one create and one target conflict, got {:?} / {:?}",
                x.as_ref().err(),
                y.as_ref().err()
            ),
        };
        assert_eq!(loser, winner, "the conflict names the winner");
        let active = ids(&Store::active(&a).unwrap());
        assert_eq!(active.iter().filter(|id| **id == ra.id || **id == rb.id).count(), 1, "round {round}");
    }
    // Distinct routes of one object coexist; the whole object collides with either.
    let (mut r1, e1) = rollout(100, "route-one", "prod");
    let (mut r2, e2) = rollout(101, "route-two", "prod");
    let (mut all, e3) = rollout(102, "route-all", "prod");
    on(&mut r1, "shared", Some("one"));
    on(&mut r2, "shared", Some("two"));
    on(&mut all, "shared", None);
    assert!(matches!(Store::create(&a, &mut r1, e1, None).await, Ok(Created::New(_))));
    assert!(matches!(Store::create(&b, &mut r2, e2, None).await, Ok(Created::New(_))));
    match Store::create(&a, &mut all.clone(), e3.clone(), None).await {
        Err(StoreError::TargetConflict { part, .. }) => assert!(part == "one" || part == "two", "{part}"),
        other => panic!("expected a target conflict, got {:?}", other.err()),
    }
    // Finishing frees the object, in the same transaction as the terminal transition.
    for (store, r) in [(&a, &mut r1), (&b, &mut r2)] {
        r.phase = Phase::Succeeded;
        Store::commit(store, r, vec![]).await.unwrap();
    }
    assert!(matches!(Store::create(&b, &mut all, e3, None).await, Ok(Created::New(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_finished_rollouts_once_across_replicas_and_never_a_live_one() {
    let etcd = EtcdCluster::start(1);
    // A long lease: this test is about retention, and the creates below load a shared machine.
    let long = EtcdConfig { lease_ttl: Duration::from_secs(30), ..cfg(&etcd, "/retention/") };
    let a = replica_with(&long, "a", true).await;
    let b = replica_with(&long, "b", true).await;
    // More expired rollouts than one scan page (500), each with an Idempotency-Key, 32 created at a time.
    const OLD: u32 = 520;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..OLD {
        if tasks.len() >= 32
            && let Some(t) = tasks.join_next().await
        {
            t.unwrap();
        }
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let (mut r, events) = rollout(i, &format!("old-{i}"), "prod");
            on(&mut r, &format!("vs-old-{i}"), None);
            let key = format!("key-old-{i}");
            Store::create(&s, &mut r, events, Some((&key, "body"))).await.unwrap();
            r.phase = if i % 3 == 0 { Phase::RolledBack } else { Phase::Succeeded };
            r.updated_at = 1_000;
            let e = ev(&r);
            Store::commit(&s, &mut r, vec![e]).await.unwrap();
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    // Kept: finished after the cutoff, and a live rollout however old.
    let mut kept = Vec::new();
    for (i, service, finished, updated_at) in [(900, "recent", true, 9_000), (901, "live", false, 1_000)] {
        let (mut r, events) = rollout(i, service, "prod");
        on(&mut r, &format!("vs-{service}"), None);
        let key = format!("key-{service}");
        Store::create(&a, &mut r, events, Some((&key, "body"))).await.unwrap();
        if finished {
            r.phase = Phase::Aborted;
        }
        r.updated_at = updated_at;
        let e = ev(&r);
        Store::commit(&a, &mut r, vec![e]).await.unwrap();
        kept.push(r);
    }
    // Both replicas sweep at once: every expired rollout goes exactly once.
    let (x, y) = tokio::join!(Store::sweep(&a, 5_000), Store::sweep(&b, 5_000));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x + y, OLD as usize, "a deleted {x}, b deleted {y}");
    let all = ListFilter { limit: 10_000, ..Default::default() };
    assert_eq!(ids(&Store::list(&a, &all).unwrap()), ["r0901", "r0900"]);
    for i in [0, 1, 519] {
        let id = format!("r{i:04}");
        assert_eq!(Store::get(&b, &id).unwrap(), None);
        assert!(Store::events(&b, &id, 0).unwrap().is_empty(), "{id}: events deleted");
        // Its Idempotency-Key is gone: the same key is a new request now.
        let (mut again, events) = rollout(1000 + i, &format!("old-{i}"), "prod");
        on(&mut again, &format!("vs-old-{i}"), None);
        let key = format!("key-old-{i}");
        assert!(matches!(Store::create(&a, &mut again, events, Some((&key, "other"))).await, Ok(Created::New(_))));
    }
    for r in &kept {
        assert_eq!(Store::get(&a, &r.id).unwrap().as_ref(), Some(r));
        assert_eq!(Store::events(&a, &r.id, 0).unwrap().len(), 2, "{}", r.id);
    }
    // The live rollout still holds its service and its router object; its key still replays it.
    let (mut dup, events) = rollout(950, "other", "prod");
    on(&mut dup, "vs-live", None);
    assert!(matches!(Store::create(&b, &mut dup, events.clone(), None).await, Err(StoreError::TargetConflict { .. })));
    match Store::create(&b, &mut dup, events, Some(("key-live", "body"))).await {
        Ok(Created::Existing(r)) => assert_eq!(r.id, "r0901"),
        other => panic!("expected the live rollout, got {:?}", other.map(|_| ())),
    }
    assert_eq!(Store::sweep(&a, 5_000).await.unwrap(), 0, "nothing left to delete");
}
