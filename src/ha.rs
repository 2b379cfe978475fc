//! High availability on etcd: this replica's part in sharing the rollouts.
//!
//! Every replica works. A rollout is run by the replica that created it until that replica's lease
//! runs out; then it is an orphan, and the live replicas claim the orphans between them by count
//! ([`ClusterView::my_share`]) and resume each one exactly like a restart does (observe the router,
//! re-apply the committed weight). Correctness does not rest on this loop: every commit is fenced by
//! the owner key in etcd (see `store::etcd`), so a replica that missed losing its lease can neither
//! commit nor, therefore, act.

use std::collections::HashMap;
use std::time::Duration;

use crate::rollout::controller::Controller;
use crate::store::EtcdStore;
use crate::store::membership::ClusterView;

/// An orphan that the replica it was assigned to has not claimed after this many rounds is claimed
/// by whoever sees it (a replica may be alive enough to renew its lease but not to claim).
const CLAIM_ANYWAY_AFTER: u32 = 3;

/// How often a replica looks for orphans: a quarter of the lease, between 100 ms and 1 s. Failover
/// takes about the lease TTL plus one round.
pub fn round_interval(lease_ttl: Duration) -> Duration {
    (lease_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Run this replica's membership until the process ends: hold the lease, claim orphans, drop the
/// rollouts it no longer owns, and rejoin with a fresh lease when the lease was lost.
pub async fn run(store: EtcdStore, controller: Controller) {
    let every = round_interval(store.lease_ttl());
    loop {
        let holder = store.clone();
        let mut lost = tokio::spawn(async move { holder.hold_lease().await });
        let mut seen: HashMap<String, u32> = HashMap::new();
        loop {
            tokio::select! {
                _ = &mut lost => break,
                _ = tokio::time::sleep(every) => {}
            }
            match store.view().await {
                Ok(view) => round(&store, &controller, &view, &mut seen).await,
                Err(e) => tracing::warn!(error = %e, "HA: cannot read the cluster view"),
            }
        }
        let dropped = controller.local_ids();
        for id in &dropped {
            controller.release(id);
        }
        tracing::warn!(dropped = dropped.len(), "HA: lease lost; stopped every rollout here and rejoining");
        while let Err(e) = store.join().await {
            tracing::warn!(error = %e, "HA: cannot rejoin yet");
            tokio::time::sleep(every).await;
        }
        tracing::info!(replica = store.replica_id(), "HA: rejoined with a fresh lease");
    }
}

/// A graceful shutdown: stop claiming, stop this replica's drivers, and revoke its lease, so the other
/// replicas take its rollouts over at their next round instead of after the lease TTL.
pub async fn leave(store: &EtcdStore, membership: tokio::task::AbortHandle, controller: &Controller) {
    membership.abort();
    let ids = controller.local_ids();
    for id in &ids {
        controller.release(id);
    }
    match store.leave().await {
        Ok(()) => tracing::info!(rollouts = ids.len(), "HA: left the cluster; the other replicas take over now"),
        Err(e) => tracing::warn!(error = %e, "HA: cannot revoke the lease; the others take over when it expires"),
    }
}

async fn round(store: &EtcdStore, controller: &Controller, view: &ClusterView, seen: &mut HashMap<String, u32>) {
    let me = store.replica_id();
    // Another replica owns it now (this one was paused past its lease): stop at once. Its next
    // commit would be refused anyway.
    for id in controller.local_ids() {
        if view.owners.get(&id).is_some_and(|o| o != me) && controller.release(&id) {
            tracing::warn!(rollout = %id, "HA: another replica owns this rollout now; stopped it here");
        }
    }
    if !view.replicas.iter().any(|r| r == me) {
        return; // not registered (the lease is being lost): claim nothing
    }
    let orphans = view.orphans();
    seen.retain(|id, _| orphans.iter().any(|(o, _)| o == id));
    let mine = view.my_share(me);
    for (id, akey) in &orphans {
        let rounds = seen.entry(id.clone()).or_default();
        *rounds += 1;
        if !(mine.iter().any(|(m, _)| m == id) || *rounds > CLAIM_ANYWAY_AFTER) {
            continue;
        }
        match store.claim(id, akey).await {
            Ok(Some(r)) => {
                tracing::info!(rollout = %id, service = %r.service, "HA: took over an orphaned rollout");
                controller.adopt(r);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(rollout = %id, error = %e, "HA: cannot claim"),
        }
    }
}
