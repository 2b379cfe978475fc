//! The sled backend of the [`Store`] port (DESIGN "Durability rules").
//!
//! Trees: `rollouts` (id → record), `events` (id/seq → event), `active` (namespace/service → id of the
//! non-terminal rollout), `idempotency` (key → id + body hash), `by_service` (service/namespace/id → ∅,
//! so a list filtered by service reads that service's rollouts only), `targets` (router object → the
//! active rollouts driving parts of it, see [`crate::rollout::RouterSpec::targets`]). A transition and its events are written
//! in one transaction and flushed before the effect it decided runs, so after a crash the store never
//! shows an effect whose decision is missing, and event seqs are gap-free. The notification queue:
//! `deliveries` (sink, NUL, generated id → entry), `delivery-cursors` (rollout id → last queued seq),
//! `delivery-meta` (`since`).

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

pub use super::writer::StoreStats;
use super::writer::{Trees, TxResult, Txn, Writer};
use super::{from_json, number, to_json};
use crate::BoxFut;
use crate::rollout::ports::{Created, ListFilter, QueueKey, Queued, Store, StoreError};
use crate::rollout::{Event, Millis, Phase, Rollout};

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

#[derive(Serialize, Deserialize)]
struct IdemRecord {
    id: String,
    body: String,
}

/// The fields a list filters on, decoded without the rest of the record.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    service: Cow<'a, str>,
    #[serde(borrow)]
    namespace: Cow<'a, str>,
    phase: Phase,
}

impl<'a> From<&'a Rollout> for Head<'a> {
    fn from(r: &'a Rollout) -> Self {
        Head { service: Cow::Borrowed(&r.service), namespace: Cow::Borrowed(&r.namespace), phase: r.phase }
    }
}

fn matches(f: &ListFilter, h: &Head<'_>) -> bool {
    f.matches(&h.service, &h.namespace, h.phase)
}

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    /// Runs every durable write and the flushes (group commit); holds the rollout trees.
    writer: Arc<Writer>,
    queue: sled::Tree,
    cursors: sled::Tree,
    queue_meta: sled::Tree,
}

/// The active rollouts driving parts of one router object: part (`*` = all of it) → rollout id.
type Claims = std::collections::BTreeMap<String, String>;

/// The claim in `claims` that `part` collides with, if any.
fn clash<'a>(claims: &'a Claims, part: &str) -> Option<(&'a String, &'a String)> {
    claims.iter().find(|(p, _)| part == "*" || p.as_str() == "*" || p.as_str() == part)
}

fn active_key(r: &Rollout) -> String {
    format!("{}/{}", r.namespace, r.service)
}

/// `service/namespace/id`: both are DNS labels, so `/` cannot occur in them.
fn service_key(service: &str, namespace: &str, id: &str) -> String {
    format!("{service}/{namespace}/{id}")
}

fn event_key(id: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 9);
    k.extend_from_slice(id.as_bytes());
    k.push(b'/');
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

impl SledStore {
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        // A bounded page cache: sled's default (1 GiB) would let RSS grow with the history.
        let db = sled::Config::new().path(path).mode(sled::Mode::HighThroughput).cache_capacity(64 << 20).open()?;
        let trees = Trees {
            rollouts: db.open_tree("rollouts")?,
            events: db.open_tree("events")?,
            active: db.open_tree("active")?,
            idem: db.open_tree("idempotency")?,
            by_service: db.open_tree("by_service")?,
            targets: db.open_tree("targets")?,
        };
        let store = SledStore {
            queue: db.open_tree("deliveries")?,
            cursors: db.open_tree("delivery-cursors")?,
            queue_meta: db.open_tree("delivery-meta")?,
            writer: Arc::new(Writer::new(db.clone(), trees)),
            db,
        };
        store.index_services()?;
        Ok(store)
    }

    /// Build the service index of a store written before it existed (one atomic batch: a crash
    /// leaves it empty, and the next start builds it again).
    fn index_services(&self) -> Result<(), StoreError> {
        if !self.trees().by_service.is_empty() || self.trees().rollouts.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for kv in self.trees().rollouts.iter() {
            let (k, v) = kv?;
            let h: Head = from_json(&k, &v)?;
            batch.insert(service_key(&h.service, &h.namespace, &String::from_utf8_lossy(&k)).as_bytes(), &[]);
        }
        self.trees().by_service.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Insert a new rollout (one active per namespace/service) with its first events, or return the
    /// rollout an earlier request with the same Idempotency-Key created.
    pub async fn create(
        &self,
        r: &mut Rollout,
        events: Vec<Event>,
        idem: Option<(&str, &str)>,
    ) -> Result<Created, StoreError> {
        let mut staged = r.clone();
        let mut events = events;
        number(&mut staged, &mut events);
        let record = to_json(&staged);
        let encoded: Vec<(Vec<u8>, Vec<u8>)> =
            events.iter().map(|e| (event_key(&staged.id, e.seq), to_json(e))).collect();
        let akey = active_key(&staged);
        let skey = service_key(&staged.service, &staged.namespace, &staged.id);
        let targets = staged.router.targets(&staged.namespace);
        let idem = idem.map(|(k, b)| (k.to_string(), b.to_string()));
        let (id, namespace, service) = (staged.id.clone(), staged.namespace.clone(), staged.service.clone());
        let write = move |tx: &Txn<'_>| -> TxResult<Option<Rollout>> {
            if let Some((key, body)) = &idem
                && let Some(prev) = tx.idem.get(key.as_bytes())?
            {
                let prev: IdemRecord = serde_json::from_slice(&prev).map_err(|e| abort_corrupt(key, e))?;
                if prev.body != *body {
                    return Err(ConflictableTransactionError::Abort(StoreError::IdempotencyMismatch));
                }
                let existing =
                    tx.rollouts.get(prev.id.as_bytes())?.ok_or_else(|| abort_corrupt(key, "missing rollout"))?;
                let existing: Rollout = serde_json::from_slice(&existing).map_err(|e| abort_corrupt(key, e))?;
                return Ok(Some(existing));
            }
            if let Some(id) = tx.active.get(akey.as_bytes())? {
                return Err(ConflictableTransactionError::Abort(StoreError::Conflict {
                    namespace: namespace.clone(),
                    service: service.clone(),
                    id: String::from_utf8_lossy(&id).into_owned(),
                }));
            }
            for (target, part) in &targets {
                let mut claims: Claims = match tx.targets.get(target.as_bytes())? {
                    Some(v) => serde_json::from_slice(&v).map_err(|e| abort_corrupt(target, e))?,
                    None => Claims::new(),
                };
                if let Some((p, id)) = clash(&claims, part) {
                    let (target, part, id) = (target.clone(), p.clone(), id.clone());
                    return Err(ConflictableTransactionError::Abort(StoreError::TargetConflict { target, part, id }));
                }
                claims.insert(part.clone(), id.clone());
                tx.targets.insert(target.as_bytes(), to_json(&claims))?;
            }
            tx.rollouts.insert(id.as_bytes(), record.as_slice())?;
            tx.active.insert(akey.as_bytes(), id.as_bytes())?;
            tx.by_service.insert(skey.as_bytes(), &[])?;
            for (k, v) in &encoded {
                tx.events.insert(k.as_slice(), v.as_slice())?;
            }
            if let Some((key, body)) = &idem {
                tx.idem.insert(key.as_bytes(), to_json(&IdemRecord { id: id.clone(), body: body.clone() }))?;
            }
            Ok(None)
        };
        match self.writer.submit(false, write).await? {
            Some(existing) => Ok(Created::Existing(Box::new(existing))),
            None => {
                *r = staged;
                Ok(Created::New(events))
            }
        }
    }

    /// Write a transition and its events atomically and durably. Returns the events with their seqs.
    pub async fn commit(&self, r: &mut Rollout, events: Vec<Event>) -> Result<Vec<Event>, StoreError> {
        // Numbered in place (no copy of the record); on an error `r` is left as it was.
        let last_seq = r.last_seq;
        let mut events = events;
        number(r, &mut events);
        let write = Self::transition(r, &events);
        // Rollbacks (an abort, a failed analysis) go first in their batch.
        if let Err(e) = self.writer.submit(r.phase == Phase::RollingBack, write).await {
            r.last_seq = last_seq;
            return Err(e);
        }
        Ok(events)
    }

    /// The writes of [`SledStore::commit`], encoded here (they run on the writer's thread): the
    /// record and its events; a finished rollout also frees its service and its router objects.
    fn transition(r: &Rollout, events: &[Event]) -> impl Fn(&Txn<'_>) -> TxResult<()> + Send + 'static {
        let id = r.id.clone();
        let record = to_json(r);
        let events: Vec<(Vec<u8>, Vec<u8>)> = events.iter().map(|e| (event_key(&r.id, e.seq), to_json(e))).collect();
        let finished = r.is_terminal().then(|| (active_key(r), r.router.targets(&r.namespace)));
        move |tx| {
            tx.rollouts.insert(id.as_bytes(), record.as_slice())?;
            for (k, v) in &events {
                tx.events.insert(k.as_slice(), v.as_slice())?;
            }
            if let Some((akey, claims)) = &finished {
                if tx.active.get(akey.as_bytes())?.as_deref() == Some(id.as_bytes()) {
                    tx.active.remove(akey.as_bytes())?;
                }
                for (target, part) in claims {
                    release(tx.targets, target, part, &id)?;
                }
            }
            Ok(())
        }
    }

    pub fn get(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        self.trees().rollouts.get(id.as_bytes())?.map(|v| from_json(id.as_bytes(), &v)).transpose()
    }

    /// Newest first (ids are ULIDs, so key order is creation order).
    ///
    /// Filters avoid reading the whole history: by service through the `by_service` index, by a
    /// non-terminal phase through `active`; other filters scan, decoding only the filtered fields of
    /// records that do not match (a full record, policy included, costs several times more).
    pub fn list(&self, f: &ListFilter) -> Result<Vec<Rollout>, StoreError> {
        if let Some(service) = &f.service {
            let labels = std::iter::once(service).chain(&f.namespace);
            if !labels.into_iter().all(|l| crate::policy::is_dns_label(l)) {
                return Ok(vec![]); // no rollout has such a name, and it must not be read as a key prefix
            }
            let prefix = match &f.namespace {
                Some(ns) => format!("{service}/{ns}/"),
                None => format!("{service}/"),
            };
            let mut ids = Vec::new();
            for k in self.trees().by_service.scan_prefix(prefix.as_bytes()).keys() {
                let k = k?;
                let id = k.rsplit(|b| *b == b'/').next().unwrap_or_default();
                ids.push(sled::IVec::from(id));
            }
            // Newest first across namespaces.
            ids.sort_unstable_by(|a, b| b.cmp(a));
            return self.collect(self.records(ids), f);
        }
        if f.phase.is_some_and(|p| !p.is_terminal()) {
            let mut ids = Vec::new();
            for id in self.trees().active.iter().values() {
                ids.push(id?);
            }
            ids.sort_unstable_by(|a, b| b.cmp(a));
            return self.collect(self.records(ids), f);
        }
        self.collect(self.trees().rollouts.iter().rev().map(|kv| kv.map_err(StoreError::from)), f)
    }

    /// The records of `ids`, in that order (ids whose record is gone are skipped).
    fn records(&self, ids: Vec<sled::IVec>) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec), StoreError>> {
        ids.into_iter().filter_map(|id| match self.trees().rollouts.get(&id) {
            Ok(v) => v.map(|v| Ok((id, v))),
            Err(e) => Some(Err(e.into())),
        })
    }

    /// The records (newest first) that pass `f`, at most `f.limit`.
    fn collect(
        &self,
        records: impl Iterator<Item = Result<(sled::IVec, sled::IVec), StoreError>>,
        f: &ListFilter,
    ) -> Result<Vec<Rollout>, StoreError> {
        let filtered = f.service.is_some() || f.namespace.is_some() || f.phase.is_some() || f.scope.is_some();
        let mut out = Vec::new();
        for kv in records {
            let (id, v) = kv?;
            if filtered && !matches(f, &from_json::<Head>(&id, &v)?) {
                continue;
            }
            out.push(from_json(&id, &v)?);
            if out.len() >= f.limit {
                break;
            }
        }
        Ok(out)
    }

    /// Every non-terminal rollout (what a restarted daemon resumes).
    pub fn active(&self) -> Result<Vec<Rollout>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().active.iter() {
            let (k, id) = kv?;
            match self.trees().rollouts.get(&id)? {
                Some(v) => out.push(from_json::<Rollout>(&k, &v)?),
                None => {
                    return Err(StoreError::Corrupt {
                        key: String::from_utf8_lossy(&k).into_owned(),
                        error: "dangling".into(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// A rollout's events with seq > `after`, oldest first.
    pub fn events(&self, id: &str, after: u64) -> Result<Vec<Event>, StoreError> {
        let start = event_key(id, after.saturating_add(1));
        let end = event_key(id, u64::MAX);
        self.trees()
            .events
            .range(start..=end)
            .map(|kv| kv.map_err(StoreError::from).and_then(|(k, v)| from_json(&k, &v)))
            .collect()
    }

    /// The rollout trees (the writer writes them; reads go straight to them).
    fn trees(&self) -> &Trees {
        self.writer.trees()
    }

    /// Counters since the store opened.
    pub fn stats(&self) -> StoreStats {
        self.writer.stats()
    }

    /// The sled database itself (tests of this backend).
    #[doc(hidden)]
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Wait until everything written so far is on disk (one flush, shared with concurrent commits).
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.writer.submit(false, |_| Ok(())).await
    }

    /// Retention (`[store] retention`): delete every finished rollout last updated before `cutoff`,
    /// with its events, its service index entry and the idempotency keys that point to it. Each
    /// rollout goes atomically, so a crash leaves it whole or gone. Returns how many went.
    pub async fn sweep(&self, cutoff: Millis) -> Result<usize, StoreError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Age {
            service: String,
            namespace: String,
            phase: Phase,
            updated_at: Millis,
        }
        let mut expired = Vec::new();
        for kv in self.trees().rollouts.iter() {
            let (id, v) = kv?;
            let a: Age = from_json(&id, &v)?;
            if a.phase.is_terminal() && a.updated_at < cutoff {
                let skey = service_key(&a.service, &a.namespace, &String::from_utf8_lossy(&id));
                expired.push((id, skey));
            }
        }
        if expired.is_empty() {
            return Ok(0);
        }
        let gone: std::collections::HashSet<&[u8]> = expired.iter().map(|(id, _)| id.as_ref()).collect();
        let mut idem_keys: std::collections::HashMap<Vec<u8>, Vec<sled::IVec>> = Default::default();
        for kv in self.trees().idem.iter() {
            let (k, v) = kv?;
            let rec: IdemRecord = from_json(&k, &v)?;
            if gone.contains(rec.id.as_bytes()) {
                idem_keys.entry(rec.id.into_bytes()).or_default().push(k);
            }
        }
        // One writer job per rollout: they ride the writer's batches (a transaction and a flush
        // shared by many) and each is still atomic.
        let mut jobs = tokio::task::JoinSet::new();
        for (id, skey) in &expired {
            let id_str = String::from_utf8_lossy(id);
            let events: Vec<sled::IVec> = self
                .trees()
                .events
                .range(event_key(&id_str, 0)..=event_key(&id_str, u64::MAX))
                .keys()
                .collect::<Result<_, _>>()?;
            let idem = idem_keys.remove(id.as_ref()).unwrap_or_default();
            let (id, skey, writer) = (id.clone(), skey.clone(), self.writer.clone());
            jobs.spawn(async move {
                writer
                    .submit(false, move |tx| {
                        tx.rollouts.remove(&id)?;
                        for k in &events {
                            tx.events.remove(k)?;
                        }
                        for k in &idem {
                            tx.idem.remove(k)?;
                        }
                        tx.by_service.remove(skey.as_bytes())?;
                        Ok(())
                    })
                    .await
            });
        }
        while let Some(done) = jobs.join_next().await {
            done.map_err(|e| StoreError::Backend(e.to_string()))??;
        }
        Ok(expired.len())
    }

    /// A cheap read that proves the store answers (readiness).
    pub fn ping(&self) -> bool {
        self.trees().rollouts.first().is_ok()
    }
}

/// Drop `id`'s claim on `target` (a finished rollout frees the object for the next one).
fn release(
    tt: &sled::transaction::TransactionalTree,
    target: &str,
    part: &str,
    id: &str,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let Some(v) = tt.get(target.as_bytes())? else { return Ok(()) };
    let mut claims: Claims = serde_json::from_slice(&v).map_err(|e| abort_corrupt(target, e))?;
    if claims.get(part).is_some_and(|c| c == id) {
        claims.remove(part);
    }
    if claims.is_empty() {
        tt.remove(target.as_bytes())?;
    } else {
        tt.insert(target.as_bytes(), to_json(&claims))?;
    }
    Ok(())
}

fn abort_corrupt(key: &str, e: impl std::fmt::Display) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(StoreError::Corrupt { key: key.to_string(), error: e.to_string() })
}

fn be_u64(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// A sink's queue: its key, then NUL (sink keys are URLs, which hold no NUL).
fn queue_prefix(sink: &str) -> Vec<u8> {
    let mut p = sink.as_bytes().to_vec();
    p.push(0);
    p
}

impl Store for SledStore {
    fn create<'a>(
        &'a self,
        r: &'a mut Rollout,
        events: Vec<Event>,
        idem: Option<(&'a str, &'a str)>,
    ) -> BoxFut<'a, Result<Created, StoreError>> {
        Box::pin(SledStore::create(self, r, events, idem))
    }
    fn commit<'a>(&'a self, r: &'a mut Rollout, events: Vec<Event>) -> BoxFut<'a, Result<Vec<Event>, StoreError>> {
        Box::pin(SledStore::commit(self, r, events))
    }
    fn get(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        SledStore::get(self, id)
    }
    fn list(&self, f: &ListFilter) -> Result<Vec<Rollout>, StoreError> {
        SledStore::list(self, f)
    }
    fn active(&self) -> Result<Vec<Rollout>, StoreError> {
        SledStore::active(self)
    }
    fn events(&self, id: &str, after: u64) -> Result<Vec<Event>, StoreError> {
        SledStore::events(self, id, after)
    }
    fn ping(&self) -> bool {
        SledStore::ping(self)
    }

    fn queue_push(&self, rollout: &str, entries: &[Queued], last: u64, done: bool) -> Result<(), StoreError> {
        let id = rollout.as_bytes();
        let res = (&self.queue, &self.cursors).transaction(|(q, c)| {
            let cursor = c.get(id)?.map(|v| be_u64(&v)).unwrap_or(0);
            for e in entries.iter().filter(|e| e.seq > cursor) {
                let mut key = queue_prefix(&e.sink);
                key.extend_from_slice(&q.generate_id()?.to_be_bytes());
                q.insert(key, e.entry.as_slice())?;
            }
            if done {
                c.remove(id)?;
            } else if last > cursor {
                c.insert(id, &last.to_be_bytes())?;
            }
            Ok::<_, ConflictableTransactionError<sled::Error>>(())
        });
        match res {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(e)) | Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    fn queue_head(&self, sink: &str) -> Result<Option<(QueueKey, Vec<u8>)>, StoreError> {
        match self.queue.scan_prefix(queue_prefix(sink)).next() {
            None => Ok(None),
            Some(kv) => {
                let (k, v) = kv?;
                Ok(Some((QueueKey(k.to_vec()), v.to_vec())))
            }
        }
    }

    fn queue_remove(&self, key: &QueueKey) -> Result<(), StoreError> {
        self.queue.remove(&key.0)?;
        Ok(())
    }

    fn queue_retain(&self, sinks: &[&str]) -> Result<usize, StoreError> {
        let prefixes: Vec<Vec<u8>> = sinks.iter().map(|s| queue_prefix(s)).collect();
        let mut dropped = 0;
        for kv in self.queue.iter() {
            let (k, _) = kv?;
            if !prefixes.iter().any(|p| k.starts_with(p)) {
                self.queue.remove(&k)?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    fn queue_len(&self) -> usize {
        self.queue.len()
    }

    fn queue_cursors(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.cursors.iter() {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k).into_owned(), be_u64(&v)));
        }
        Ok(out)
    }

    fn queue_cursor(&self, rollout: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.cursors.get(rollout.as_bytes())?.map(|v| be_u64(&v)))
    }

    fn sweep(&self, cutoff: Millis) -> BoxFut<'_, Result<usize, StoreError>> {
        Box::pin(SledStore::sweep(self, cutoff))
    }
    fn queue_drop_cursor(&self, rollout: &str) -> Result<(), StoreError> {
        self.cursors.remove(rollout.as_bytes())?;
        Ok(())
    }

    fn queue_since(&self, now: Millis) -> Result<Millis, StoreError> {
        match self.queue_meta.get(b"since")? {
            Some(v) => Ok(be_u64(&v)),
            None => {
                self.queue_meta.insert(b"since", &now.to_be_bytes())?;
                Ok(now)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use crate::rollout::machine;

    #[tokio::test]
    async fn the_sweep_deletes_only_finished_rollouts_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let policy = fixtures::policy("p", &[5, 100], std::time::Duration::from_secs(1), 1);
        let mut ids = Vec::new();
        for (service, finished, updated_at) in [("old", true, 1_000), ("new", true, 9_000), ("running", false, 1_000)] {
            let req = fixtures::request(service, "p");
            let (mut r, out) = machine::create(format!("01ID{service:0>22}"), &req, policy.clone(), "ci", 0);
            let key = format!("key-{service}");
            store.create(&mut r, out.events, Some((&key, "body"))).await.unwrap();
            if finished {
                r.phase = Phase::Aborted;
            }
            r.updated_at = updated_at;
            store.commit(&mut r, vec![]).await.unwrap();
            ids.push(r.id.clone());
        }
        assert_eq!(store.sweep(5_000).await.unwrap(), 1);
        assert_eq!(store.get(&ids[0]).unwrap(), None);
        assert!(store.events(&ids[0], 0).unwrap().is_empty());
        let by_old = ListFilter { service: Some("old".into()), limit: 10, ..Default::default() };
        assert!(store.list(&by_old).unwrap().is_empty());
        assert!(store.trees().idem.get("key-old").unwrap().is_none());
        for id in &ids[1..] {
            assert!(store.get(id).unwrap().is_some() && !store.events(id, 0).unwrap().is_empty());
        }
        assert!(store.trees().idem.get("key-new").unwrap().is_some());
        assert_eq!(store.sweep(5_000).await.unwrap(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conflicting_create_fails_alone_in_its_batch() {
        // Creates arriving together share one transaction; the one that conflicts (a second rollout
        // of the same service) must fail alone, and every other create of the batch must land.
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let policy = fixtures::policy("p", &[5, 100], std::time::Duration::from_secs(1), 1);
        let mut creates = tokio::task::JoinSet::new();
        for i in 0..200 {
            // svc-0 twice (i = 0 and i = 100), every other service once.
            let service = if i == 100 { "svc-0".to_string() } else { format!("svc-{i}") };
            let req = fixtures::request(&service, "p");
            let (mut r, out) = machine::create(format!("01ID{i:0>22}"), &req, policy.clone(), "ci", 0);
            let store = store.clone();
            creates.spawn(async move { store.create(&mut r, out.events, None).await.map(|_| r.id) });
        }
        let (mut ok, mut conflicts) = (0, 0);
        while let Some(res) = creates.join_next().await {
            match res.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::Conflict { service, .. }) => {
                    assert_eq!(service, "svc-0");
                    conflicts += 1;
                }
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        assert_eq!((ok, conflicts), (199, 1));
        let created = store.list(&ListFilter { limit: 1000, ..Default::default() }).unwrap();
        assert_eq!(created.len(), 199);
        // Each created rollout has its events; the refused one left nothing behind.
        for r in created {
            assert_eq!(store.events(&r.id, 0).unwrap().len() as u64, r.last_seq, "{}", r.id);
        }
        assert!(store.stats().flushes < 200, "creates arriving together share flushes: {:?}", store.stats());
    }

    #[tokio::test]
    async fn concurrent_commits_share_one_flush_and_a_dropped_commit_does_not_wedge_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let policy = fixtures::policy("p", &[5, 100], std::time::Duration::from_secs(1), 1);
        let mut rollouts = Vec::new();
        for i in 0..100 {
            let req = fixtures::request(&format!("svc-{i}"), "p");
            let (mut r, out) = machine::create(format!("01ID{i:0>22}"), &req, policy.clone(), "ci", 0);
            store.create(&mut r, out.events, None).await.unwrap();
            rollouts.push(r);
        }
        let before = store.stats();
        let mut commits = tokio::task::JoinSet::new();
        for mut r in rollouts {
            let store = store.clone();
            commits.spawn(async move {
                r.updated_at += 1;
                store.commit(&mut r, vec![]).await.map(|_| r)
            });
        }
        let mut done = Vec::new();
        while let Some(r) = commits.join_next().await {
            done.push(r.unwrap().unwrap());
        }
        let after = store.stats();
        assert_eq!(after.commits - before.commits, 100);
        // Each flush covers every commit written while the one before it ran.
        assert!(after.flushes - before.flushes <= 25, "{before:?} → {after:?}");

        // A commit dropped while its flush runs (a driver stopped mid-commit) must not leave the
        // flush "running" forever.
        {
            let mut fut = std::pin::pin!(store.durable());
            std::future::poll_fn(|cx| {
                let _ = fut.as_mut().poll(cx);
                std::task::Poll::Ready(())
            })
            .await;
        }
        let r = &mut done[0];
        r.updated_at += 1;
        tokio::time::timeout(std::time::Duration::from_secs(10), store.commit(r, vec![]))
            .await
            .expect("a commit after a dropped one completes")
            .unwrap();
    }
}
