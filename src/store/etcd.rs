//! The etcd v3 backend of the [`Store`] port: several replicas share one state, each active rollout is
//! owned by one replica under that replica's lease, and every write for a rollout is fenced by it.
//!
//! Keys, under the configured prefix: `rollouts/<id>` (record), `events/<id>/<seq, 20 digits>`,
//! `active/<namespace>/<service>` → id, `targets/<router object>/<part>` → id (see
//! [`super::etcd_targets`]), `idem/<key>` → id + body, `owners/<id>` → replica id (bound to the owner's
//! lease), `replicas/<replica>` → its advertised URL (bound to its lease); the notification queue
//! `queue/<sink>\0<ulid>`, `cursors/<id>`, `meta/since`, and `senders/<sink>` → the one replica
//! delivering that sink (bound to its lease).
//!
//! Durability is sled's (DESIGN "Durability rules"): a transition, its events and (on the last one) the
//! release of its `active`, `targets` and `owners` keys are one etcd transaction, committed by a quorum
//! before `commit` returns and so before the effect it decided runs. Fencing: that transaction is conditioned
//! on `owners/<id>` holding this replica's id under this replica's current lease. A replica whose lease
//! expired (paused, partitioned) finds the key gone or re-created by another replica, its commit fails
//! with [`StoreError::Fenced`], and since effects run only after a commit, it acts no more. Every
//! record written carries its writer (`writer`: replica id and lease), so etcd's revision history
//! shows who committed what.
//!
//! The port's reads are synchronous; they run on a small runtime of the store's own, so they work from
//! any thread (`block_in_place` on a multi-threaded runtime).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};

use super::{from_json, number, to_json};
use crate::BoxFut;
use crate::config::EtcdConfig;
use crate::rollout::ports::{Created, ListFilter, Owner, QueueKey, Queued, Replica, Store, StoreError};
use crate::rollout::{Event, Millis, Rollout};

/// Every etcd request gives up after this (an unreachable cluster must not hang the API or a driver).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        StoreError::Backend(format!("etcd: {e}"))
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct IdemRecord {
    pub id: String,
    body: String,
}

/// A rollout record as etcd holds it: the record, and who wrote it under which lease (readers ignore
/// `writer`; it is there for audits of the revision history).
#[derive(Serialize)]
struct Stored<'a> {
    #[serde(flatten)]
    rollout: &'a Rollout,
    writer: Writer<'a>,
}

#[derive(Serialize)]
struct Writer<'a> {
    replica: &'a str,
    lease: i64,
}

/// What `replicas/<id>` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReplicaRecord {
    pub url: String,
}

/// This process as a replica: its id, URL and current lease.
pub(crate) struct Me {
    pub id: String,
    pub url: String,
    pub ttl: Duration,
    /// The lease every owner key of this replica is bound to (0: none right now).
    pub lease: AtomicI64,
}

pub(crate) struct Inner {
    pub client: Client,
    pub rt: tokio::runtime::Handle,
    pub prefix: String,
    pub me: Me,
    /// Queue keys: ULIDs, monotonic within this process so one rollout's entries keep their order.
    ulids: Mutex<ulid::Generator>,
}

/// The etcd store. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    pub(crate) inner: Arc<Inner>,
}

/// A runtime of the store's own (one worker), alive as long as the process.
fn runtime() -> Result<tokio::runtime::Handle, StoreError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("vane-etcd")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Backend(format!("starting the etcd client runtime: {e}")))?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("vane-etcd-rt".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .map_err(|e| StoreError::Backend(format!("starting the etcd client runtime: {e}")))?;
    Ok(handle)
}

impl Inner {
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }
    pub fn lease(&self) -> i64 {
        self.me.lease.load(Ordering::SeqCst)
    }
    fn event_key(&self, id: &str, seq: u64) -> String {
        self.key(&format!("events/{id}/{seq:020}"))
    }
    pub(crate) fn active_key(&self, r: &Rollout) -> String {
        self.key(&format!("active/{}/{}", r.namespace, r.service))
    }
    /// `owners/<id>` holds this replica's id under `lease`.
    fn i_own(&self, id: &str, lease: i64) -> [Compare; 2] {
        let k = self.key(&format!("owners/{id}"));
        [Compare::value(k.clone(), CompareOp::Equal, self.me.id.clone()), Compare::lease(k, CompareOp::Equal, lease)]
    }
    /// `r`'s record, signed with this replica's id and `lease`.
    fn record(&self, r: &Rollout, lease: i64) -> Vec<u8> {
        to_json(&Stored { rollout: r, writer: Writer { replica: &self.me.id, lease } })
    }

    async fn get_one(&self, key: &str) -> Result<Option<etcd_client::KeyValue>, StoreError> {
        let mut resp = self.client.kv_client().get(key, None).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    async fn get_rollout(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        match self.get_one(&self.key(&format!("rollouts/{id}"))).await? {
            Some(kv) => Ok(Some(from_json(kv.key(), kv.value())?)),
            None => Ok(None),
        }
    }

    /// Every key-value under `rest` (ascending keys).
    pub async fn range(&self, rest: &str, opts: GetOptions) -> Result<Vec<etcd_client::KeyValue>, StoreError> {
        let mut resp = self.client.kv_client().get(self.key(rest), Some(opts.with_prefix())).await?;
        Ok(resp.take_kvs())
    }

    async fn create(
        &self,
        staged: Rollout,
        events: Vec<Event>,
        idem: Option<(String, String)>,
    ) -> Result<Option<Rollout>, StoreError> {
        let akey = self.active_key(&staged);
        let targets = staged.router.targets(&staged.namespace);
        let ikey = idem.as_ref().map(|(k, _)| self.key(&format!("idem/{k}")));
        for _ in 0..5 {
            if let (Some((_, body)), Some(ikey)) = (&idem, &ikey)
                && let Some(kv) = self.get_one(ikey).await?
            {
                let prev: IdemRecord = from_json(kv.key(), kv.value())?;
                if prev.body != *body {
                    return Err(StoreError::IdempotencyMismatch);
                }
                let existing = self.get_rollout(&prev.id).await?;
                return existing
                    .map(Some)
                    .ok_or_else(|| StoreError::Corrupt { key: ikey.clone(), error: "missing rollout".into() });
            }
            let lease = self.lease();
            if lease == 0 {
                return Err(StoreError::Backend("this replica has no etcd lease right now; retry".into()));
            }
            let id = &staged.id;
            let mut when = vec![Compare::create_revision(akey.clone(), CompareOp::Equal, 0)];
            let mut ops = vec![
                TxnOp::put(self.key(&format!("rollouts/{id}")), self.record(&staged, lease), None),
                TxnOp::put(akey.clone(), id.clone(), None),
                TxnOp::put(
                    self.key(&format!("owners/{id}")),
                    self.me.id.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
            ];
            ops.extend(events.iter().map(|e| TxnOp::put(self.event_key(id, e.seq), to_json(e), None)));
            for (target, part) in &targets {
                when.extend(self.target_free(target, part));
                ops.push(TxnOp::put(self.target_key(target, part), id.clone(), None));
            }
            if let (Some((_, body)), Some(ikey)) = (&idem, &ikey) {
                when.push(Compare::create_revision(ikey.clone(), CompareOp::Equal, 0));
                ops.push(TxnOp::put(ikey.clone(), to_json(&IdemRecord { id: id.clone(), body: body.clone() }), None));
            }
            let resp = self.client.kv_client().txn(Txn::new().when(when).and_then(ops)).await?;
            if resp.succeeded() {
                return Ok(None);
            }
            // Lost a race: a replay of the same key (the next round returns it), an active rollout of
            // the service, or one driving the same router object.
            if let Some(kv) = self.get_one(&akey).await? {
                return Err(StoreError::Conflict {
                    namespace: staged.namespace.clone(),
                    service: staged.service.clone(),
                    id: String::from_utf8_lossy(kv.value()).into_owned(),
                });
            }
            for (target, part) in &targets {
                if let Some((part, id)) = self.target_clash(target, part).await? {
                    return Err(StoreError::TargetConflict { target: target.clone(), part, id });
                }
            }
        }
        Err(StoreError::Backend("etcd: create kept conflicting; retry".into()))
    }

    async fn commit(&self, staged: Rollout, events: Vec<Event>) -> Result<(), StoreError> {
        let id = &staged.id;
        let lease = self.lease();
        let mut ops = vec![TxnOp::put(self.key(&format!("rollouts/{id}")), self.record(&staged, lease), None)];
        ops.extend(events.iter().map(|e| TxnOp::put(self.event_key(id, e.seq), to_json(e), None)));
        if staged.is_terminal() {
            let akey = self.active_key(&staged);
            let release = Txn::new()
                .when([Compare::value(akey.clone(), CompareOp::Equal, id.clone())])
                .and_then([TxnOp::delete(akey, None)]);
            ops.push(TxnOp::txn(release));
            ops.extend(self.release_targets(&staged));
            ops.push(TxnOp::delete(self.key(&format!("owners/{id}")), None));
        }
        let resp = self.client.kv_client().txn(Txn::new().when(self.i_own(id, lease)).and_then(ops)).await?;
        if resp.succeeded() { Ok(()) } else { Err(StoreError::Fenced(id.clone())) }
    }

    async fn list(&self, f: ListFilter) -> Result<Vec<Rollout>, StoreError> {
        let filtered = f.service.is_some() || f.namespace.is_some() || f.phase.is_some() || f.scope.is_some();
        let mut opts = GetOptions::new().with_sort(SortTarget::Key, SortOrder::Descend);
        if !filtered {
            opts = opts.with_limit(f.limit as i64);
        }
        let mut out = Vec::new();
        for kv in self.range("rollouts/", opts).await? {
            let r: Rollout = from_json(kv.key(), kv.value())?;
            if f.matches(&r.service, &r.namespace, r.phase) {
                out.push(r);
                if out.len() >= f.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Active rollout ids (from `active/`).
    pub async fn active_ids(&self) -> Result<Vec<String>, StoreError> {
        let kvs = self.range("active/", GetOptions::new()).await?;
        Ok(kvs.iter().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()).collect())
    }

    async fn active(&self) -> Result<Vec<Rollout>, StoreError> {
        let mut out = Vec::new();
        for id in self.active_ids().await? {
            match self.get_rollout(&id).await? {
                Some(r) => out.push(r),
                None => return Err(StoreError::Corrupt { key: format!("active → {id}"), error: "dangling".into() }),
            }
        }
        Ok(out)
    }

    async fn events(&self, id: String, after: u64) -> Result<Vec<Event>, StoreError> {
        let start = self.event_key(&id, after.saturating_add(1));
        // `0` follows `/`: the end of this rollout's range.
        let end = self.key(&format!("events/{id}0"));
        let mut resp = self.client.kv_client().get(start, Some(GetOptions::new().with_range(end))).await?;
        resp.take_kvs().iter().map(|kv| from_json(kv.key(), kv.value())).collect()
    }

    /// Rollout id → owning replica id.
    pub async fn owners(&self) -> Result<HashMap<String, String>, StoreError> {
        let p = self.key("owners/");
        let kvs = self.range("owners/", GetOptions::new()).await?;
        Ok(kvs
            .iter()
            .map(|kv| {
                let k = String::from_utf8_lossy(kv.key());
                (k.strip_prefix(&p).unwrap_or(&k).to_string(), String::from_utf8_lossy(kv.value()).into_owned())
            })
            .collect())
    }

    /// Live replicas: id → (record, lease).
    pub async fn replicas(&self) -> Result<Vec<(String, ReplicaRecord, i64)>, StoreError> {
        let p = self.key("replicas/");
        let mut out = Vec::new();
        for kv in self.range("replicas/", GetOptions::new()).await? {
            let k = String::from_utf8_lossy(kv.key());
            let rec: ReplicaRecord = from_json(kv.key(), kv.value())?;
            out.push((k.strip_prefix(&p).unwrap_or(&k).to_string(), rec, kv.lease()));
        }
        Ok(out)
    }

    async fn owner(&self, id: &str) -> Result<Option<Owner>, StoreError> {
        let Some(kv) = self.get_one(&self.key(&format!("owners/{id}"))).await? else { return Ok(None) };
        let replica = String::from_utf8_lossy(kv.value()).into_owned();
        let local = replica == self.me.id && kv.lease() == self.lease();
        let url = match self.get_one(&self.key(&format!("replicas/{replica}"))).await? {
            Some(r) => from_json::<ReplicaRecord>(r.key(), r.value())?.url,
            None => String::new(),
        };
        Ok(Some(Owner { replica, url, local }))
    }

    async fn replica_views(&self) -> Result<Vec<Replica>, StoreError> {
        let owners = self.owners().await?;
        let now = crate::rollout::ports::Clock::now(&crate::rollout::clock::SystemClock);
        let mut out = Vec::new();
        for (id, rec, lease) in self.replicas().await? {
            let ttl = self.client.lease_client().time_to_live(lease, None).await?.ttl().max(0) as u64;
            let rollouts = owners.values().filter(|o| **o == id).count();
            out.push(Replica { id, url: rec.url, lease_expiry: now + ttl * 1000, rollouts });
        }
        Ok(out)
    }

    // ---- the notification queue ----

    async fn queue_push(&self, rollout: String, entries: Vec<Queued>, last: u64, done: bool) -> Result<(), StoreError> {
        let ckey = self.key(&format!("cursors/{rollout}"));
        for _ in 0..10 {
            let (cursor, rev) = match self.get_one(&ckey).await? {
                Some(kv) => (String::from_utf8_lossy(kv.value()).parse::<u64>().unwrap_or(0), kv.mod_revision()),
                None => (0, 0),
            };
            let mut ops = Vec::new();
            for e in entries.iter().filter(|e| e.seq > cursor) {
                let id = self.ulids.lock().map_err(|_| StoreError::Backend("poisoned".into()))?.generate();
                let id = id.map_err(|e| StoreError::Backend(e.to_string()))?;
                ops.push(TxnOp::put(self.key(&format!("queue/{}\0{id}", e.sink)), e.entry.clone(), None));
            }
            if done {
                ops.push(TxnOp::delete(ckey.clone(), None));
            } else if last > cursor {
                ops.push(TxnOp::put(ckey.clone(), last.to_string(), None));
            }
            let when = [Compare::mod_revision(ckey.clone(), CompareOp::Equal, rev)];
            if self.client.kv_client().txn(Txn::new().when(when).and_then(ops)).await?.succeeded() {
                return Ok(());
            }
        }
        Err(StoreError::Backend("etcd: the queue cursor kept changing; retry".into()))
    }

    /// The oldest entry of a sink's queue, if this replica is (or now becomes) the sink's one sender.
    async fn queue_head(&self, sink: String) -> Result<Option<(QueueKey, Vec<u8>)>, StoreError> {
        let lock = self.key(&format!("senders/{sink}"));
        let lease = self.lease();
        let claim = Txn::new()
            .when([Compare::create_revision(lock.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(lock.clone(), self.me.id.clone(), Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(lock, None)]);
        let resp = self.client.kv_client().txn(claim).await?;
        if !resp.succeeded() {
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                _ => None,
            });
            if !holder.is_some_and(|kv| kv.value() == self.me.id.as_bytes() && kv.lease() == lease) {
                return Ok(None);
            }
        }
        let opts = GetOptions::new().with_limit(1);
        let mut resp =
            self.client.kv_client().get(self.key(&format!("queue/{sink}\0")), Some(opts.with_prefix())).await?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| {
            let (k, v) = kv.into_key_value();
            (QueueKey(k), v)
        }))
    }
}

impl EtcdStore {
    /// Connect, take a lease of `cfg.lease_ttl`, register as replica `id` reachable at `url`, and keep
    /// the lease alive (see [`super::membership`]).
    pub async fn connect(cfg: &EtcdConfig, id: String, url: String) -> Result<EtcdStore, StoreError> {
        let rt = runtime()?;
        let endpoints = cfg.endpoints.clone();
        let opts = super::etcd_tls::options(cfg, REQUEST_TIMEOUT)?;
        let client = rt
            .spawn(async move { Client::connect(endpoints, Some(opts)).await })
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??;
        let me = Me { id, url, ttl: cfg.lease_ttl, lease: AtomicI64::new(0) };
        let inner = Inner { client, rt, prefix: cfg.prefix.clone(), me, ulids: Mutex::new(ulid::Generator::new()) };
        let store = EtcdStore { inner: Arc::new(inner) };
        store
            .run({
                let s = store.clone();
                async move { s.join().await }
            })
            .await?;
        Ok(store)
    }

    pub fn replica_id(&self) -> &str {
        &self.inner.me.id
    }

    /// Run `f` on the store's runtime.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.inner.rt.spawn(f).await.map_err(|e| StoreError::Backend(format!("etcd task: {e}")))?
    }

    /// Run `f` on the store's runtime and wait for it here (the port's synchronous reads).
    fn block<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        let wait = move || rx.recv().map_err(|_| StoreError::Backend("etcd task dropped".into()))?;
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    fn with<T: Send + 'static, F: Future<Output = Result<T, StoreError>> + Send + 'static>(
        &self,
        f: impl FnOnce(Arc<Inner>) -> F,
    ) -> Result<T, StoreError> {
        self.block(f(self.inner.clone()))
    }
}

impl Store for EtcdStore {
    /// Retention: see [`super::etcd_retention`].
    fn sweep(&self, cutoff: Millis) -> BoxFut<'_, Result<usize, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(self.run(async move { inner.sweep(cutoff).await }))
    }
    fn create<'a>(
        &'a self,
        r: &'a mut Rollout,
        events: Vec<Event>,
        idem: Option<(&'a str, &'a str)>,
    ) -> BoxFut<'a, Result<Created, StoreError>> {
        Box::pin(async move {
            let mut staged = r.clone();
            let mut events = events;
            number(&mut staged, &mut events);
            let idem = idem.map(|(k, b)| (k.to_string(), b.to_string()));
            let (inner, s, ev) = (self.inner.clone(), staged.clone(), events.clone());
            match self.run(async move { inner.create(s, ev, idem).await }).await? {
                Some(existing) => Ok(Created::Existing(Box::new(existing))),
                None => {
                    *r = staged;
                    Ok(Created::New(events))
                }
            }
        })
    }
    fn commit<'a>(&'a self, r: &'a mut Rollout, events: Vec<Event>) -> BoxFut<'a, Result<Vec<Event>, StoreError>> {
        Box::pin(async move {
            let mut staged = r.clone();
            let mut events = events;
            number(&mut staged, &mut events);
            let (inner, s, ev) = (self.inner.clone(), staged.clone(), events.clone());
            self.run(async move { inner.commit(s, ev).await }).await?;
            *r = staged;
            Ok(events)
        })
    }
    fn get(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        let id = id.to_string();
        self.with(|i| async move { i.get_rollout(&id).await })
    }
    fn list(&self, f: &ListFilter) -> Result<Vec<Rollout>, StoreError> {
        let f = f.clone();
        self.with(|i| async move { i.list(f).await })
    }
    fn active(&self) -> Result<Vec<Rollout>, StoreError> {
        self.with(|i| async move { i.active().await })
    }
    fn events(&self, id: &str, after: u64) -> Result<Vec<Event>, StoreError> {
        let id = id.to_string();
        self.with(|i| async move { i.events(id, after).await })
    }
    fn ping(&self) -> bool {
        self.with(|i| async move { i.get_one(&i.key("meta/since")).await.map(|_| ()) }).is_ok()
            && self.inner.lease() != 0
    }

    fn queue_push(&self, rollout: &str, entries: &[Queued], last: u64, done: bool) -> Result<(), StoreError> {
        let (rollout, entries) = (rollout.to_string(), entries.to_vec());
        self.with(|i| async move { i.queue_push(rollout, entries, last, done).await })
    }
    fn queue_head(&self, sink: &str) -> Result<Option<(QueueKey, Vec<u8>)>, StoreError> {
        let sink = sink.to_string();
        self.with(|i| async move { i.queue_head(sink).await })
    }
    fn queue_remove(&self, key: &QueueKey) -> Result<(), StoreError> {
        let key = key.0.clone();
        self.with(|i| async move { Ok(i.client.kv_client().delete(key, None).await.map(|_| ())?) })
    }
    fn queue_retain(&self, sinks: &[&str]) -> Result<usize, StoreError> {
        let prefixes: Vec<String> = sinks.iter().map(|s| self.inner.key(&format!("queue/{s}\0"))).collect();
        self.with(|i| async move {
            let mut dropped = 0;
            for kv in i.range("queue/", GetOptions::new().with_keys_only()).await? {
                if !prefixes.iter().any(|p| kv.key().starts_with(p.as_bytes())) {
                    i.client.kv_client().delete(kv.key(), None).await?;
                    dropped += 1;
                }
            }
            Ok(dropped)
        })
    }
    fn queue_len(&self) -> usize {
        self.with(|i| async move {
            let opts = GetOptions::new().with_count_only().with_prefix();
            Ok(i.client.kv_client().get(i.key("queue/"), Some(opts)).await?.count() as usize)
        })
        .unwrap_or(0)
    }
    fn queue_cursors(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with(|i| async move {
            let p = i.key("cursors/");
            let kvs = i.range("cursors/", GetOptions::new()).await?;
            Ok(kvs
                .iter()
                .map(|kv| {
                    let k = String::from_utf8_lossy(kv.key());
                    let seq = String::from_utf8_lossy(kv.value()).parse().unwrap_or(0);
                    (k.strip_prefix(&p).unwrap_or(&k).to_string(), seq)
                })
                .collect())
        })
    }
    fn queue_cursor(&self, rollout: &str) -> Result<Option<u64>, StoreError> {
        let key = self.inner.key(&format!("cursors/{rollout}"));
        self.with(|i| async move {
            Ok(i.get_one(&key).await?.map(|kv| String::from_utf8_lossy(kv.value()).parse().unwrap_or(0)))
        })
    }
    fn queue_drop_cursor(&self, rollout: &str) -> Result<(), StoreError> {
        let key = self.inner.key(&format!("cursors/{rollout}"));
        self.with(|i| async move { Ok(i.client.kv_client().delete(key, None).await.map(|_| ())?) })
    }
    fn queue_since(&self, now: Millis) -> Result<Millis, StoreError> {
        self.with(|i| async move {
            let key = i.key("meta/since");
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), now.to_string(), None)])
                .or_else([TxnOp::get(key, None)]);
            let resp = i.client.kv_client().txn(txn).await?;
            if resp.succeeded() {
                return Ok(now);
            }
            let since = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                _ => None,
            });
            Ok(since.and_then(|kv| String::from_utf8_lossy(kv.value()).parse().ok()).unwrap_or(now))
        })
    }
    fn queue_poll(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }

    fn owner(&self, id: &str) -> Result<Option<Owner>, StoreError> {
        let id = id.to_string();
        self.with(|i| async move { i.owner(&id).await })
    }
    fn owners(&self) -> Result<HashMap<String, String>, StoreError> {
        self.with(|i| async move { i.owners().await })
    }
    fn replicas(&self) -> Result<Vec<Replica>, StoreError> {
        self.with(|i| async move { i.replica_views().await })
    }
}
