//! HA membership on etcd: this replica's lease and registration, the cluster view, and claiming
//! orphaned rollouts (see [`super::etcd`] for the keys and the fencing rule).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::etcd::{EtcdStore, ReplicaRecord};
use crate::rollout::Rollout;
use crate::rollout::ports::StoreError;

/// What a claim round looks at.
#[derive(Debug, Default, Clone)]
pub struct ClusterView {
    /// Live replica ids, sorted.
    pub replicas: Vec<String>,
    /// Rollout id → owning replica id.
    pub owners: HashMap<String, String>,
    /// Active rollouts: (id, its `active/<namespace>/<service>` key).
    pub active: Vec<(String, String)>,
}

impl ClusterView {
    /// The active rollouts nobody owns (their owner's lease ran out), oldest first.
    pub fn orphans(&self) -> Vec<(String, String)> {
        let mut o: Vec<_> = self.active.iter().filter(|(id, _)| !self.owners.contains_key(id)).cloned().collect();
        o.sort();
        o
    }

    /// The orphans `me` should claim: each orphan goes to the live replica owning the fewest
    /// rollouts so far (ties: the smaller id), so the replicas, all computing the same view, split
    /// the orphans between them by count without talking to each other.
    pub fn my_share(&self, me: &str) -> Vec<(String, String)> {
        let mut counts: HashMap<&str, usize> = self.replicas.iter().map(|r| (r.as_str(), 0)).collect();
        for o in self.owners.values() {
            if let Some(c) = counts.get_mut(o.as_str()) {
                *c += 1;
            }
        }
        let mut mine = Vec::new();
        for orphan in self.orphans() {
            let Some((target, _)) = counts.iter().min_by_key(|(r, c)| (**c, **r)).map(|(r, c)| (*r, *c)) else {
                break;
            };
            if let Some(c) = counts.get_mut(target) {
                *c += 1;
            }
            if target == me {
                mine.push(orphan);
            }
        }
        mine
    }
}

impl EtcdStore {
    /// The lease time-to-live: a replica silent for this long loses its rollouts.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.me.ttl
    }

    /// Take a fresh lease and register this replica (`replicas/<id>` → its URL) under it.
    pub async fn join(&self) -> Result<(), StoreError> {
        let i = self.inner.clone();
        self.run(async move {
            let ttl = i.me.ttl.as_secs().max(1) as i64;
            let lease = i.client.lease_client().grant(ttl, None).await?.id();
            let rec = serde_json::to_vec(&ReplicaRecord { url: i.me.url.clone() }).unwrap_or_default();
            let key = i.key(&format!("replicas/{}", i.me.id));
            i.client.kv_client().put(key, rec, Some(PutOptions::new().with_lease(lease))).await?;
            i.me.lease.store(lease, Ordering::SeqCst);
            Ok(())
        })
        .await
    }

    /// Keep the lease alive; returns once it is lost: etcd says it expired, or no renewal succeeded
    /// for a whole TTL (after which other replicas may own this one's rollouts). The lease is then
    /// forgotten, so nothing is committed under it any more (etcd refuses such commits anyway).
    pub async fn hold_lease(&self) {
        let i = self.inner.clone();
        let _ = self
            .run(async move {
                let ttl = i.me.ttl;
                let lease = i.lease();
                let every = (ttl / 3).max(Duration::from_millis(100));
                let mut last_ok = Instant::now();
                let mut keeper = None;
                loop {
                    tokio::time::sleep(every).await;
                    if last_ok.elapsed() >= ttl {
                        tracing::error!(
                            lease,
                            "etcd lease not renewed for a whole TTL: giving up this replica's rollouts"
                        );
                        break;
                    }
                    if keeper.is_none() {
                        keeper = i.client.lease_client().keep_alive(lease).await.ok();
                    }
                    let Some((k, stream)) = keeper.as_mut() else { continue };
                    let renewed = tokio::time::timeout(every, async {
                        k.keep_alive().await?;
                        stream.message().await
                    })
                    .await;
                    match renewed {
                        Ok(Ok(Some(resp))) if resp.ttl() > 0 => last_ok = Instant::now(),
                        Ok(Ok(Some(_))) => {
                            tracing::error!(lease, "etcd lease expired: giving up this replica's rollouts");
                            break;
                        }
                        _ => keeper = None,
                    }
                }
                i.me.lease.store(0, Ordering::SeqCst);
                Ok(())
            })
            .await;
    }

    /// Leave the cluster now: revoke the lease, so this replica's owner keys and registration go at
    /// once (its rollouts become orphans for the others without waiting for the TTL).
    pub async fn leave(&self) -> Result<(), StoreError> {
        let i = self.inner.clone();
        self.run(async move {
            let lease = i.me.lease.swap(0, Ordering::SeqCst);
            if lease != 0 {
                i.client.lease_client().revoke(lease).await?;
            }
            Ok(())
        })
        .await
    }

    /// Live replicas, owners and active rollouts, as of one moment.
    pub async fn view(&self) -> Result<ClusterView, StoreError> {
        let i = self.inner.clone();
        self.run(async move {
            let mut replicas: Vec<String> = i.replicas().await?.into_iter().map(|(id, _, _)| id).collect();
            replicas.sort();
            let owners = i.owners().await?;
            let kvs = i.range("active/", GetOptions::new()).await?;
            let active = kvs
                .iter()
                .map(|kv| {
                    (String::from_utf8_lossy(kv.value()).into_owned(), String::from_utf8_lossy(kv.key()).into_owned())
                })
                .collect();
            Ok(ClusterView { replicas, owners, active })
        })
        .await
    }

    /// Take an orphaned rollout: `owners/<id>` is created under this replica's lease only if nobody
    /// owns it and it is still active. Returns the rollout to resume, None if another replica won.
    pub async fn claim(&self, id: &str, active_key: &str) -> Result<Option<Rollout>, StoreError> {
        let i = self.inner.clone();
        let (id, akey) = (id.to_string(), active_key.to_string());
        self.run(async move {
            let lease = i.lease();
            if lease == 0 {
                return Ok(None);
            }
            let okey = i.key(&format!("owners/{id}"));
            let txn = Txn::new()
                .when([
                    Compare::create_revision(okey.clone(), CompareOp::Equal, 0),
                    Compare::value(akey, CompareOp::Equal, id.clone()),
                ])
                .and_then([
                    TxnOp::put(okey, i.me.id.clone(), Some(PutOptions::new().with_lease(lease))),
                    TxnOp::get(i.key(&format!("rollouts/{id}")), None),
                ]);
            let resp = i.client.kv_client().txn(txn).await?;
            if !resp.succeeded() {
                return Ok(None);
            }
            let kv = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                _ => None,
            });
            let kv =
                kv.ok_or_else(|| StoreError::Corrupt { key: format!("rollouts/{id}"), error: "missing".into() })?;
            serde_json::from_slice(kv.value())
                .map(Some)
                .map_err(|e| StoreError::Corrupt { key: format!("rollouts/{id}"), error: e.to_string() })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(replicas: &[&str], owners: &[(&str, &str)], active: &[&str]) -> ClusterView {
        ClusterView {
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
            owners: owners.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            active: active.iter().map(|a| (a.to_string(), format!("active/ns/{a}"))).collect(),
        }
    }

    #[test]
    fn orphans_are_split_by_count_and_every_one_has_exactly_one_claimant() {
        // b owns 2, c owns 0; a's four rollouts are orphaned (a is gone).
        let v = view(&["b", "c"], &[("1", "b"), ("2", "b")], &["1", "2", "3", "4", "5", "6"]);
        let b: Vec<String> = v.my_share("b").into_iter().map(|(id, _)| id).collect();
        let c: Vec<String> = v.my_share("c").into_iter().map(|(id, _)| id).collect();
        assert_eq!(c, ["3", "4", "6"]);
        assert_eq!(b, ["5"]);
        assert!(v.my_share("a").is_empty(), "a dead replica claims nothing");
    }
}
