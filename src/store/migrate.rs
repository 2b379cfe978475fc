//! `vane store migrate --from sled:PATH --to etcd:URL` (and back): copy every rollout and its events
//! from one backend to the other, so nobody is stuck on one.
//!
//! Run it with the daemon stopped (every replica, for etcd): the destination must hold no rollout, and
//! an etcd source or destination with a live replica is refused. Rollouts keep their ids, records and
//! event seqs (checked after the copy); active rollouts stay active, and a daemon started on the
//! destination resumes them as after a restart. Not copied: Idempotency-Keys (a retried create after
//! the migration is a new request) and the notification queue (undelivered notifications of the
//! source are dropped; notifications of new events go out as usual).

use std::path::PathBuf;
use std::time::Duration;

use crate::config::EtcdConfig;
use crate::rollout::ports::{Created, ListFilter, SharedStore, Store, StoreError};
use crate::rollout::{Phase, Rollout};
use crate::store::{EtcdStore, SledStore};

/// Events written per transaction (etcd allows 128 operations in one).
const CHUNK: usize = 100;

/// Where a store is: `sled:PATH` or `etcd:URL[,URL...]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    Sled(PathBuf),
    Etcd(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0:?}: expected sled:PATH or etcd:URL[,URL...]")]
    Location(String),
    #[error("{0}: {1}")]
    Store(String, StoreError),
    #[error("{0} already holds {1} rollout(s); migrate into an empty store")]
    NotEmpty(String, usize),
    #[error("{0} has live replicas ({1}); stop every vane replica first")]
    Live(String, String),
    #[error("rollout {id}: {why}")]
    Copy { id: String, why: String },
}

impl std::str::FromStr for Location {
    type Err = MigrateError;
    fn from_str(s: &str) -> Result<Location, MigrateError> {
        match s.split_once(':') {
            Some(("sled", p)) if !p.is_empty() => Ok(Location::Sled(p.into())),
            Some(("etcd", urls)) => {
                let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_string()).collect();
                if urls.iter().all(|u| u.starts_with("http://") || u.starts_with("https://")) {
                    Ok(Location::Etcd(urls))
                } else {
                    Err(MigrateError::Location(s.into()))
                }
            }
            _ => Err(MigrateError::Location(s.into())),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sled(p) => write!(f, "sled:{}", p.display()),
            Location::Etcd(u) => write!(f, "etcd:{}", u.join(",")),
        }
    }
}

/// An open store, and the etcd handle when it is one (to check for live replicas and let go).
struct Opened {
    name: String,
    store: SharedStore,
    etcd: Option<EtcdStore>,
}

async fn open(loc: &Location, etcd: &EtcdConfig) -> Result<Opened, MigrateError> {
    let name = loc.to_string();
    let err = |e| MigrateError::Store(name.clone(), e);
    match loc {
        Location::Sled(p) => Ok(Opened { store: SharedStore::new(SledStore::open(p).map_err(err)?), etcd: None, name }),
        Location::Etcd(urls) => {
            let cfg = EtcdConfig { endpoints: urls.clone(), lease_ttl: Duration::from_secs(10), ..etcd.clone() };
            let id = format!("migrate-{:08x}", rand::random::<u32>());
            let e = EtcdStore::connect(&cfg, id, String::new()).await.map_err(err)?;
            let live: Vec<String> =
                e.replicas().map_err(err)?.into_iter().map(|r| r.id).filter(|r| r != e.replica_id()).collect();
            if !live.is_empty() {
                let _ = e.leave().await;
                return Err(MigrateError::Live(name, live.join(", ")));
            }
            let holder = e.clone();
            tokio::spawn(async move { holder.hold_lease().await });
            Ok(Opened { store: SharedStore::new(e.clone()), etcd: Some(e), name })
        }
    }
}

/// Copy everything from `from` to `to`; returns how many rollouts. `etcd`: the key prefix, TLS and
/// credentials for an etcd location (its endpoints are the location's).
pub async fn migrate(from: &Location, to: &Location, etcd: &EtcdConfig) -> Result<usize, MigrateError> {
    let src = open(from, etcd).await?;
    let dst = match open(to, etcd).await {
        Ok(d) => d,
        Err(e) => {
            leave(&src).await;
            return Err(e);
        }
    };
    let res = copy_all(&src, &dst).await;
    // An etcd destination's active rollouts are owned by this process: let them go at once, for the
    // replicas to claim.
    leave(&src).await;
    leave(&dst).await;
    res
}

async fn leave(o: &Opened) {
    if let Some(e) = &o.etcd
        && let Err(err) = e.leave().await
    {
        tracing::warn!(store = %o.name, error = %err, "cannot revoke the migration's etcd lease; it expires on its own");
    }
}

async fn copy_all(src: &Opened, dst: &Opened) -> Result<usize, MigrateError> {
    let all = ListFilter { limit: usize::MAX, ..Default::default() };
    let any = ListFilter { limit: 1, ..Default::default() };
    let existing = dst.store.list(&any).map_err(|e| MigrateError::Store(dst.name.clone(), e))?;
    if !existing.is_empty() {
        let n = dst.store.list(&all).map(|l| l.len()).unwrap_or(1);
        return Err(MigrateError::NotEmpty(dst.name.clone(), n));
    }
    let mut rollouts = src.store.list(&all).map_err(|e| MigrateError::Store(src.name.clone(), e))?;
    rollouts.reverse(); // oldest first: a service's finished rollouts before its active one
    for r in &rollouts {
        copy(src, dst, r).await?;
    }
    Ok(rollouts.len())
}

async fn copy(src: &Opened, dst: &Opened, r: &Rollout) -> Result<(), MigrateError> {
    let fail = |why: String| MigrateError::Copy { id: r.id.clone(), why };
    let events = src.store.events(&r.id, 0).map_err(|e| MigrateError::Store(src.name.clone(), e))?;
    if events.iter().enumerate().any(|(i, e)| e.seq != i as u64 + 1) || events.len() as u64 != r.last_seq {
        return Err(fail(format!("its events are not 1..{} in the source", r.last_seq)));
    }
    // Written with a placeholder phase until the last chunk, so that a finished rollout is released
    // (no longer active, no owner) only by its final write.
    let mut staged = Rollout { last_seq: 0, phase: Phase::Pending, ..r.clone() };
    let mut chunks = events.chunks(CHUNK);
    let first = chunks.next().map(<[_]>::to_vec).unwrap_or_default();
    match dst.store.create(&mut staged, first, None).await {
        Ok(Created::New(_)) => {}
        Ok(Created::Existing(_)) => return Err(fail("already in the destination".into())),
        Err(e) => return Err(MigrateError::Store(dst.name.clone(), e)),
    }
    let rest: Vec<_> = chunks.collect();
    for (i, chunk) in rest.iter().enumerate() {
        if i + 1 == rest.len() {
            staged.phase = r.phase;
        }
        dst.store.commit(&mut staged, chunk.to_vec()).await.map_err(|e| MigrateError::Store(dst.name.clone(), e))?;
    }
    if rest.is_empty() {
        staged.phase = r.phase;
        dst.store.commit(&mut staged, vec![]).await.map_err(|e| MigrateError::Store(dst.name.clone(), e))?;
    }
    let copied = dst.store.get(&r.id).map_err(|e| MigrateError::Store(dst.name.clone(), e))?;
    let copied_events = dst.store.events(&r.id, 0).map_err(|e| MigrateError::Store(dst.name.clone(), e))?;
    if copied.as_ref() != Some(r) || copied_events != events {
        return Err(fail("the copy differs from the source".into()));
    }
    Ok(())
}
