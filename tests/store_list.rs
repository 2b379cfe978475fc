//! `Store::list` answers every filter from its indexes (`by_service`, `active`) exactly as a scan of
//! the whole history would, newest first and limited; a store written before the service index existed
//! gets it built on open.

use std::time::Duration;

use vane::fixtures;
use vane::rollout::{Phase, machine};
use vane::store::{ListFilter, SledStore as Store};

/// 60 rollouts of 4 services in 3 namespaces; earlier rollouts of a service are finished (one active
/// rollout per service and namespace), the last of each may still be active.
async fn fill(store: &Store) {
    let policy = fixtures::policy("p", &[50, 100], Duration::from_secs(1), 2);
    let terminal = [Phase::Succeeded, Phase::RolledBack, Phase::Aborted, Phase::Failed];
    for i in 0..60u32 {
        let service = ["cart", "checkout", "search", "cart-api"][(i % 4) as usize];
        let namespace = ["prod", "staging", "dev"][(i / 4 % 3) as usize];
        let req = vane::rollout::CreateRequest { namespace: namespace.into(), ..fixtures::request(service, "p") };
        // Sortable ids: creation order is id order, as with ULIDs.
        let (mut r, out) = machine::create(format!("r{i:04}"), &req, policy.clone(), "ci", 1000 + i as u64);
        store.create(&mut r, out.events, None).await.expect("create");
        r.phase =
            if i < 48 { terminal[(i % 4) as usize] } else { [Phase::Progressing, Phase::Paused][(i % 2) as usize] };
        store.commit(&mut r, vec![]).await.expect("commit");
    }
}

fn filters() -> Vec<ListFilter> {
    let mut out = Vec::new();
    let services = [None, Some("cart"), Some("cart-api"), Some("nope"), Some("cart/prod"), Some("Cart")];
    let namespaces = [None, Some("prod"), Some("dev"), Some("x/y")];
    let phases = [None, Some(Phase::Progressing), Some(Phase::Paused), Some(Phase::Succeeded), Some(Phase::Failed)];
    for s in services {
        for n in namespaces {
            for p in phases {
                for limit in [1, 3, 1000] {
                    out.push(ListFilter { service: s.map(Into::into), namespace: n.map(Into::into), phase: p, limit });
                }
            }
        }
    }
    out
}

/// What a scan of everything, filtered field by field, returns.
fn reference(all: &[vane::rollout::Rollout], f: &ListFilter) -> Vec<String> {
    all.iter()
        .filter(|r| f.service.as_ref().is_none_or(|s| *s == r.service))
        .filter(|r| f.namespace.as_ref().is_none_or(|n| *n == r.namespace))
        .filter(|r| f.phase.is_none_or(|p| p == r.phase))
        .take(f.limit)
        .map(|r| r.id.clone())
        .collect()
}

fn check(store: &Store) {
    let all = store.list(&ListFilter { limit: usize::MAX, ..Default::default() }).expect("list all");
    assert_eq!(all.len(), 60);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    for f in filters() {
        let got: Vec<String> = store.list(&f).expect("list").into_iter().map(|r| r.id).collect();
        assert_eq!(got, reference(&all, &f), "{f:?}");
    }
}

#[tokio::test]
async fn every_filter_matches_a_full_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    fill(&store).await;
    check(&store);
    let cart = ListFilter { service: Some("cart".into()), limit: 100, ..Default::default() };
    let namespaces: Vec<String> = store.list(&cart).expect("list").into_iter().map(|r| r.namespace).collect();
    assert!(namespaces.contains(&"prod".into()) && namespaces.contains(&"dev".into()), "across namespaces");
}

#[tokio::test]
async fn a_store_without_the_service_index_gets_it_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("store");
        fill(&store).await;
        // As written by a version without the index.
        store.db().open_tree("by_service").expect("tree").clear().expect("clear");
        store.db().flush().expect("flush");
    }
    let store = Store::open(dir.path()).expect("reopen");
    check(&store);
}
