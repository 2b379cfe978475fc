//! The sled store's writer: every commit's transaction runs, with the flush that makes it durable,
//! in one blocking task per batch (group commit).
//!
//! Why not on the caller's task: a sled transaction takes a process-wide lock that a running flush
//! holds until the disk confirmed the write. Run on a tokio worker, every commit that arrives during
//! a flush blocks that worker — with one core, every rollout, command and API request stops for the
//! flush. Here a commit only encodes its record, queues the transaction and awaits the answer.
//!
//! The batch task takes everything queued, runs the transactions — rollbacks first (see
//! [`Writer::submit`]) — then flushes once (one fsync) and answers all of them, and goes on while
//! commits keep arriving. A commit therefore waits for at most the batch being flushed when it
//! arrives and its own; a flush covers every transaction before it. (A blocking task rather than a
//! thread of our own: tokio's paused test clock does not jump while one runs.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::rollout::ports::StoreError;

/// Answers a job once its batch was flushed (or the flush failed: why).
type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

struct Job {
    /// Latency matters (a rollback): runs before the other transactions of its batch.
    urgent: bool,
    write: Box<dyn FnOnce() -> Done + Send>,
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
    queue: Mutex<Queue>,
    counters: Counters,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// A batch task runs (and will take what is queued).
    running: bool,
}

impl Writer {
    pub(super) fn new(db: sled::Db) -> Writer {
        Writer { db, queue: Mutex::default(), counters: Counters::default() }
    }

    /// Run `write` (a transaction; it must not block) in the next batch and return its result once
    /// it is on disk. `urgent`: written before the rest of its batch.
    pub(super) async fn submit<T: Send + 'static>(
        self: &Arc<Self>,
        urgent: bool,
        write: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            urgent,
            write: Box::new(move || {
                let res = write();
                Box::new(move |flushed: Result<(), String>| {
                    let _ = reply.send(res.and_then(|v| flushed.map(|()| v).map_err(StoreError::Backend)));
                })
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

    pub(super) fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats { commits: c.commits.load(Ordering::Relaxed), flushes: c.flushes.load(Ordering::Relaxed) }
    }

    /// Batches until the queue is empty. The last answers go out after this handle is dropped: a
    /// caller that then drops the store closes the database, and may open the same path again.
    fn run(self: Arc<Self>) {
        loop {
            let Ok(mut batch) = self.queue.lock().map(|mut q| std::mem::take(&mut q.jobs)) else { return };
            // Urgent first, otherwise in arrival order (the sort is stable).
            batch.sort_by_key(|j| !j.urgent);
            let done: Vec<Done> = batch.into_iter().map(|j| (j.write)()).collect();
            let flushed = self.db.flush().map(|_| ()).map_err(|e| e.to_string());
            self.counters.flushes.fetch_add(1, Ordering::Relaxed);
            let last = self.queue.lock().map_or(true, |mut q| {
                let empty = q.jobs.is_empty();
                if empty {
                    q.running = false;
                }
                empty
            });
            if last {
                drop(self);
                for d in done {
                    d(flushed.clone());
                }
                return;
            }
            for d in done {
                d(flushed.clone());
            }
        }
    }
}
