//! The sled store's writer: every durable write of a batch runs in **one** transaction, followed by
//! one flush (group commit), on one blocking task per batch.
//!
//! Why one transaction per batch: sled writes its log buffer to disk — a write and a waited
//! `sync_file_range` — at the start of every transaction (and of every atomic batch), so a
//! transaction per commit costs two synchronous disk writes however small it is. Measured on
//! `benches/scale.rs` that was ~2 disk writes and 11 KB written per commit and half of the CPU
//! of a rollout-tick. In one transaction the batch's writes share those, and each is atomic with
//! the whole batch (stronger than atomic alone). If the batch's transaction aborts (one job's
//! precondition failed: a create that conflicts), every job of the batch runs again in its own
//! transaction, so each caller gets its own answer and no job fails for another's sake.
//!
//! Why not on the caller's task: a sled transaction takes a process-wide lock that a running flush
//! holds until the disk confirmed the write. Run on a tokio worker, every commit that arrives during
//! a flush blocks that worker — with one core, every rollout, command and API request stops for the
//! flush. Here a commit only encodes its record, queues its write and awaits the answer.
//!
//! The batch task takes everything queued, runs the transaction (one per [`MAX_TRANSACTION`] jobs) —
//! rollbacks first (see
//! [`Writer::submit`]) — then flushes once (one fsync) and answers all of them, and goes on while
//! commits keep arriving. A commit therefore waits for at most the batch being flushed when it
//! arrives and its own. (A blocking task rather than a thread of our own: tokio's paused test clock
//! does not jump while one runs.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use tokio::sync::oneshot;

use crate::rollout::ports::StoreError;

/// Jobs per transaction. A transaction holds its writes in memory until it commits: 10,000 creates
/// arriving at once would otherwise be one transaction of ~40 MB. A batch of more runs several
/// transactions before its one flush; each costs sled's two log-buffer writes, shared by this many.
const MAX_TRANSACTION: usize = 256;

/// The trees a write may touch, as seen inside the batch's transaction.
pub(super) struct Txn<'a> {
    pub rollouts: &'a TransactionalTree,
    pub events: &'a TransactionalTree,
    pub active: &'a TransactionalTree,
    pub idem: &'a TransactionalTree,
    pub by_service: &'a TransactionalTree,
    pub targets: &'a TransactionalTree,
}

/// The trees behind [`Txn`], in its order.
pub(super) struct Trees {
    pub rollouts: sled::Tree,
    pub events: sled::Tree,
    pub active: sled::Tree,
    pub idem: sled::Tree,
    pub by_service: sled::Tree,
    pub targets: sled::Tree,
}

pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// A job's writes. It may run more than once (sled retries a transaction on a conflict; an aborted
/// batch runs each job again alone), so it only reads and writes through the transaction.
type Write = Box<dyn Fn(&Txn<'_>) -> TxResult<()> + Send>;

/// Answers a job: its writes' outcome and the flush's (a failed flush: why).
type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct Job {
    /// Latency matters (a rollback): written first in its batch.
    urgent: bool,
    write: Write,
    answer: Answer,
}

/// What the store did since it opened (benchmarks size the durable path with these).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Durable writes: `create`, `commit` (each waits for its flush).
    pub commits: u64,
    /// Flushes to disk (each ends in an fsync); a batch of concurrent commits shares one.
    pub flushes: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    flushes: AtomicU64,
}

pub(super) struct Writer {
    db: sled::Db,
    trees: Trees,
    queue: Mutex<Queue>,
    counters: Counters,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// A batch task runs (and will take what is queued).
    running: bool,
    /// When the last flush ended.
    flushed_at: Option<Instant>,
}

/// Commit delay: while commits stream in (the last flush ended less than [`STREAMING`] ago) a batch
/// of fewer than [`GATHER`] ordinary commits waits this long for company before it is written. Each
/// flush costs ~80 µs of CPU however little it carries; with 10,000 rollouts ticking, commits arrive
/// a few hundred microseconds apart and would each pay for one. A rollback never waits: a batch
/// holding one is written at once.
const COMMIT_DELAY: Duration = Duration::from_millis(1);
const STREAMING: Duration = Duration::from_millis(10);
const GATHER: usize = 32;

impl Writer {
    pub(super) fn new(db: sled::Db, trees: Trees) -> Writer {
        Writer { db, trees, queue: Mutex::default(), counters: Counters::default() }
    }

    /// Run `write` (transactional reads and writes; it must not block) in the next batch and return
    /// its result once it is on disk. `urgent`: written before the rest of its batch.
    pub(super) async fn submit<T: Send + 'static>(
        self: &Arc<Self>,
        urgent: bool,
        write: impl Fn(&Txn<'_>) -> TxResult<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        // The last run's value: the one that committed.
        let slot = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let job = Job {
            urgent,
            write: Box::new(move |tx| {
                let v = write(tx)?;
                if let Ok(mut s) = out.lock() {
                    *s = Some(v);
                }
                Ok(())
            }),
            answer: Box::new(move |res: Result<(), StoreError>| {
                let value = slot.lock().ok().and_then(|mut s| s.take());
                let res = res
                    .and_then(|()| value.ok_or_else(|| StoreError::Backend("the store writer lost a result".into())));
                let _ = reply.send(res);
            }),
        };
        let start = {
            let mut q = self.queue.lock().map_err(|_| StoreError::Backend("the store writer failed".into()))?;
            q.jobs.push(job);
            !std::mem::replace(&mut q.running, true)
        };
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        if start {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.run());
        }
        answer.await.map_err(|_| StoreError::Backend("the store writer stopped".into()))?
    }

    pub(super) fn trees(&self) -> &Trees {
        &self.trees
    }

    pub(super) fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats { commits: c.commits.load(Ordering::Relaxed), flushes: c.flushes.load(Ordering::Relaxed) }
    }

    /// Run `f` in one transaction over every tree.
    fn transaction(&self, f: impl Fn(&Txn<'_>) -> TxResult<()>) -> Result<(), TransactionError<StoreError>> {
        let t = &self.trees;
        (&t.rollouts, &t.events, &t.active, &t.idem, &t.by_service, &t.targets).transaction(
            |(rollouts, events, active, idem, by_service, targets)| {
                f(&Txn { rollouts, events, active, idem, by_service, targets })
            },
        )
    }

    /// Each job's outcome: all of the batch in one transaction; if that aborted, each job alone.
    fn write(&self, batch: &[Job]) -> Vec<Result<(), StoreError>> {
        let all = self.transaction(|tx| batch.iter().try_for_each(|j| (j.write)(tx)));
        match all {
            Ok(()) => batch.iter().map(|_| Ok(())).collect(),
            Err(TransactionError::Storage(e)) => {
                batch.iter().map(|_| Err(StoreError::Backend(e.to_string()))).collect()
            }
            Err(TransactionError::Abort(_)) => batch
                .iter()
                .map(|j| {
                    self.transaction(|tx| (j.write)(tx)).map_err(|e| match e {
                        TransactionError::Abort(e) => e,
                        TransactionError::Storage(e) => StoreError::from(e),
                    })
                })
                .collect(),
        }
    }

    /// Batches until the queue is empty. The last answers go out after this handle is dropped: a
    /// caller that then drops the store closes the database, and may open the same path again.
    fn run(self: Arc<Self>) {
        loop {
            let wait = self.queue.lock().is_ok_and(|q| {
                q.flushed_at.is_some_and(|t| t.elapsed() < STREAMING)
                    && q.jobs.len() < GATHER
                    && !q.jobs.iter().any(|j| j.urgent)
            });
            if wait {
                std::thread::sleep(COMMIT_DELAY);
            }
            let Ok(mut batch) = self.queue.lock().map(|mut q| std::mem::take(&mut q.jobs)) else { return };
            // Urgent first, otherwise in arrival order (the sort is stable).
            batch.sort_by_key(|j| !j.urgent);
            let written: Vec<_> = batch.chunks(MAX_TRANSACTION).flat_map(|c| self.write(c)).collect();
            let flushed = self.db.flush().map(|_| ()).map_err(|e| e.to_string());
            self.counters.flushes.fetch_add(1, Ordering::Relaxed);
            let answers: Vec<(Answer, Result<(), StoreError>)> = batch
                .into_iter()
                .zip(written)
                .map(|(j, res)| (j.answer, res.and_then(|()| flushed.clone().map_err(StoreError::Backend))))
                .collect();
            let last = self.queue.lock().map_or(true, |mut q| {
                q.flushed_at = Some(Instant::now());
                let empty = q.jobs.is_empty();
                if empty {
                    q.running = false;
                }
                empty
            });
            if last {
                drop(self);
                answers.into_iter().for_each(|(answer, res)| answer(res));
                return;
            }
            answers.into_iter().for_each(|(answer, res)| answer(res));
        }
    }
}
