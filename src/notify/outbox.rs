//! The durable outbound queue shared by webhooks and Slack: at-least-once delivery that survives
//! restarts.
//!
//! [`Outbox::notify`] renders an event for every sink and appends the bodies to the store's delivery
//! queue (one FIFO per sink), together with a per-rollout cursor ("enqueued up to seq N"), atomically
//! (the queue API of the [`Store`](crate::rollout::ports::Store) port). One tokio task per sink sends its entries oldest
//! first, so a receiver sees a rollout's events in order; an entry is removed only after a 2xx.
//! Failures are retried with exponential backoff (bounded), `Retry-After` is honoured.
//!
//! Why the cursor: the driver commits an event (flushed) before it calls `notify`, and the store flushes
//! the queue insert a moment later. A crash in between would lose the notification; on the next start
//! [`Outbox::open`] compares each cursor with the rollout's last event seq and enqueues what is
//! missing from the event log, so every committed event is delivered at least once.
//!
//! Receivers dedupe on `X-Vane-Event-Id` (`<rollout id>-<seq>`), which is stable across retries and
//! restarts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::webhook::{self, event_id};
use super::{Notifier, slack};
use crate::http::root_cause;
use crate::rollout::clock::SystemClock;
use crate::rollout::ports::{Clock, QueueKey, Queued, SharedStore, StoreError};
use crate::rollout::{Event, Millis, Rollout};
use crate::sign::vane_signature;
use crate::telemetry::Metrics;

/// How a sink's bodies are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// SPEC §5 JSON, signed with `X-Vane-Signature`, with `X-Vane-Event-Id`.
    Webhook,
    /// Block Kit messages for a Slack incoming webhook (only the events people care about).
    Slack,
}

/// One destination.
#[derive(Clone)]
pub struct Sink {
    /// Identity of this sink's queue. Entries whose sink is no longer configured are dropped at start.
    pub key: String,
    pub format: Format,
    pub url: String,
    pub secret: Option<Vec<u8>>,
}

impl Sink {
    pub fn webhook(url: impl Into<String>, secret: Option<Vec<u8>>) -> Sink {
        let url = url.into();
        Sink { key: format!("webhook {url}"), format: Format::Webhook, url, secret }
    }

    pub fn slack(url: impl Into<String>) -> Sink {
        Sink { key: "slack".into(), format: Format::Slack, url: url.into(), secret: None }
    }

    /// The `kind` label of `vane_webhook_deliveries_total`.
    pub fn kind(&self) -> &'static str {
        match self.format {
            Format::Webhook => "webhook",
            Format::Slack => "slack",
        }
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("key", &self.key).field("signed", &self.secret.is_some()).finish()
    }
}

/// Retry policy and timeouts.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Wait after the first failure; doubles per failure ...
    pub first_retry: Duration,
    /// ... up to this.
    pub max_retry: Duration,
    /// An entry still failing this long after it was enqueued is dropped (and logged as an error).
    pub give_up_after: Duration,
    /// Per request.
    pub timeout: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(300),
            give_up_after: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Delivery {
    /// Delay before retry number `failures` (1-based): first_retry × 2^(failures−1), at most max_retry.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(20);
        self.first_retry.saturating_mul(factor).min(self.max_retry)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// A queued delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    event_id: String,
    body: String,
    enqueued_at: Millis,
}

struct Slot {
    sink: Sink,
    wake: Notify,
}

struct Inner {
    store: SharedStore,
    clock: Arc<dyn Clock>,
    slots: Vec<Slot>,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    cfg: Delivery,
    started: AtomicBool,
}

/// The durable, fan-out [`Notifier`]. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

enum Outcome {
    Delivered,
    /// The receiver refused this body for good (4xx other than 408/409/425/429, or a redirect).
    Rejected(String),
    Retry(String, Option<Duration>),
}

impl Outbox {
    /// Open the queue in the store's database, drop entries of sinks no longer configured, and enqueue
    /// committed events that never reached the queue (a crash between commit and enqueue).
    /// Deliveries start with [`Outbox::start`].
    pub fn open(
        store: &SharedStore,
        sinks: Vec<Sink>,
        metrics: Arc<Metrics>,
        cfg: Delivery,
    ) -> Result<Outbox, OutboxError> {
        Outbox::open_with_clock(store, sinks, metrics, cfg, Arc::new(SystemClock))
    }

    /// [`Outbox::open`] reading time (enqueue ages, the catch-up start) from `clock`.
    pub fn open_with_clock(
        store: &SharedStore,
        sinks: Vec<Sink>,
        metrics: Arc<Metrics>,
        cfg: Delivery,
        clock: Arc<dyn Clock>,
    ) -> Result<Outbox, OutboxError> {
        let client = crate::http::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OutboxError::Client(e.to_string()))?;
        let slots = sinks.into_iter().map(|sink| Slot { sink, wake: Notify::new() }).collect();
        let inner = Inner { store: store.clone(), clock, slots, metrics, client, cfg, started: AtomicBool::new(false) };
        let outbox = Outbox { inner: Arc::new(inner) };
        let weak = Arc::downgrade(&outbox.inner);
        outbox
            .inner
            .metrics
            .set_outbox_probe(Box::new(move || weak.upgrade().map(|i| i.depth_and_age()).unwrap_or((0, 0.0))));
        outbox.drop_orphans()?;
        let n = outbox.catch_up()?;
        if n > 0 {
            tracing::info!(events = n, "notifications: enqueued events committed before the last shutdown");
        }
        Ok(outbox)
    }

    /// Spawn one delivery task per sink (on the current tokio runtime). Calling it again does nothing.
    pub fn start(&self) {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return;
        }
        for i in 0..self.inner.slots.len() {
            let inner = self.inner.clone();
            tokio::spawn(async move { inner.run(i).await });
        }
    }

    /// Entries waiting for delivery, all sinks together.
    pub fn pending(&self) -> usize {
        self.inner.store.queue_len()
    }

    fn drop_orphans(&self) -> Result<(), OutboxError> {
        let sinks: Vec<&str> = self.inner.slots.iter().map(|s| s.sink.key.as_str()).collect();
        let dropped = self.inner.store.queue_retain(&sinks)?;
        if dropped > 0 {
            tracing::warn!(dropped, "notifications: dropped queued deliveries of webhooks no longer configured");
        }
        Ok(())
    }

    /// Enqueue events that are in the event log but not in the queue. Returns how many.
    fn catch_up(&self) -> Result<usize, OutboxError> {
        let store = &self.inner.store;
        // Rollouts created after notifications were first enabled must have a cursor once notified;
        // an active one without a cursor lost its first notifications.
        let since = store.queue_since(self.inner.clock.now())?;
        let mut n = 0;
        for (id, seq) in store.queue_cursors()? {
            match store.get(&id)? {
                None => {
                    store.queue_drop_cursor(&id)?;
                }
                Some(r) if r.last_seq > seq => {
                    let events = store.events(&id, seq)?;
                    n += events.len();
                    self.enqueue(&r, &events)?;
                }
                Some(r) if r.is_terminal() => {
                    store.queue_drop_cursor(&id)?;
                }
                Some(_) => {}
            }
        }
        for r in store.active()? {
            if r.created_at >= since && store.queue_cursor(&r.id)?.is_none() {
                let events = store.events(&r.id, 0)?;
                n += events.len();
                self.enqueue(&r, &events)?;
            }
        }
        Ok(n)
    }

    fn render(&self, sink: &Sink, r: &Rollout, e: &Event) -> Option<String> {
        let v = match sink.format {
            Format::Webhook => Some(webhook::body(r, e)),
            Format::Slack => slack::message(r, e, || self.inner.store.events(&r.id, 0).unwrap_or_default()),
        }?;
        serde_json::to_string(&v).ok()
    }

    /// Queue `events` (ascending seqs of rollout `r`) for every sink, skipping those already queued.
    fn enqueue(&self, r: &Rollout, events: &[Event]) -> Result<(), OutboxError> {
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(());
        };
        let now = self.inner.clock.now();
        let mut staged: Vec<Queued> = Vec::new();
        let mut woken = vec![false; self.inner.slots.len()];
        for e in events {
            for (i, slot) in self.inner.slots.iter().enumerate() {
                if let Some(body) = self.render(&slot.sink, r, e) {
                    let entry = Entry { event_id: event_id(r, e), body, enqueued_at: now };
                    let entry = serde_json::to_vec(&entry).unwrap_or_default();
                    staged.push(Queued { sink: slot.sink.key.clone(), seq: e.seq, entry });
                    woken[i] = true;
                }
            }
        }
        // Finished and fully queued: the cursor is no longer needed.
        let done = r.is_terminal() && last >= r.last_seq;
        self.inner.store.queue_push(&r.id, &staged, last, done)?;
        for (slot, _) in self.inner.slots.iter().zip(&woken).filter(|(_, w)| **w) {
            slot.wake.notify_one();
        }
        Ok(())
    }
}

impl Notifier for Outbox {
    fn notify(&self, rollout: &Rollout, event: &Event) {
        if let Err(e) = self.enqueue(rollout, std::slice::from_ref(event)) {
            // The event is in the log; the next start's catch-up queues it again.
            tracing::error!(rollout = %rollout.id, seq = event.seq, error = %e, "cannot queue a notification");
        }
    }
}

impl Inner {
    /// Deliver one sink's queue forever, oldest first.
    async fn run(&self, i: usize) {
        let slot = &self.slots[i];
        let mut failures = 0u32;
        loop {
            let (key, value) = match self.store.queue_head(&slot.sink.key) {
                Ok(None) => {
                    match self.store.queue_poll() {
                        // HA: other replicas queue entries too, and only this process's wake us.
                        Some(every) => {
                            let _ = tokio::time::timeout(every, slot.wake.notified()).await;
                        }
                        None => slot.wake.notified().await,
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(sink = %slot.sink.key, error = %e, "cannot read the delivery queue; retrying");
                    tokio::time::sleep(self.cfg.max_retry.min(Duration::from_secs(5))).await;
                    continue;
                }
                Ok(Some(kv)) => kv,
            };
            let entry: Entry = match serde_json::from_slice(&value) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(sink = %slot.sink.key, error = %e, "dropping an unreadable queued delivery");
                    let _ = self.store.queue_remove(&key);
                    continue;
                }
            };
            let outcome = self.deliver(&slot.sink, &entry).await;
            let ok = matches!(outcome, Outcome::Delivered);
            self.metrics.webhook_delivery(slot.sink.kind(), ok);
            match outcome {
                Outcome::Delivered => {
                    failures = 0;
                    self.remove(&key);
                }
                Outcome::Rejected(why) => {
                    failures = 0;
                    tracing::error!(sink = %slot.sink.key, event = %entry.event_id, "receiver rejected the delivery, not retrying: {why}");
                    self.remove(&key);
                }
                Outcome::Retry(why, after) => {
                    failures += 1;
                    let age = Duration::from_millis(self.clock.now().saturating_sub(entry.enqueued_at));
                    if age >= self.cfg.give_up_after {
                        tracing::error!(sink = %slot.sink.key, event = %entry.event_id, failures, "giving up on a delivery after {}: {why}",
                            humantime::format_duration(self.cfg.give_up_after));
                        failures = 0;
                        self.remove(&key);
                        continue;
                    }
                    let wait = after.unwrap_or_default().max(self.cfg.backoff(failures)).min(self.cfg.max_retry);
                    tracing::warn!(sink = %slot.sink.key, event = %entry.event_id, failures, retry_in = ?wait, "delivery failed: {why}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Entries waiting, and the age in seconds of the oldest (each sink's queue head is its oldest).
    fn depth_and_age(&self) -> (i64, f64) {
        let now = self.clock.now();
        let oldest = self
            .slots
            .iter()
            .filter_map(|s| self.store.queue_head(&s.sink.key).ok().flatten())
            .filter_map(|(_, v)| serde_json::from_slice::<Entry>(&v).ok())
            .map(|e| now.saturating_sub(e.enqueued_at))
            .max()
            .unwrap_or(0);
        (self.store.queue_len() as i64, oldest as f64 / 1000.0)
    }

    fn remove(&self, key: &QueueKey) {
        if let Err(e) = self.store.queue_remove(key) {
            // Worst case the entry is sent again: receivers dedupe on the event id.
            tracing::error!(error = %e, "cannot remove a delivered entry from the queue");
        }
    }

    async fn deliver(&self, sink: &Sink, e: &Entry) -> Outcome {
        let mut req = self.client.post(&sink.url).timeout(self.cfg.timeout).header("content-type", "application/json");
        if sink.format == Format::Webhook {
            req = req.header("x-vane-event-id", &e.event_id);
            if let Some(s) = &sink.secret {
                req = req.header("x-vane-signature", vane_signature(s, e.body.as_bytes()));
            }
        }
        let res = match req.body(e.body.clone()).send().await {
            Ok(r) => r,
            Err(err) if err.is_timeout() => {
                return Outcome::Retry(
                    format!("no answer within {}", humantime::format_duration(self.cfg.timeout)),
                    None,
                );
            }
            Err(err) => return Outcome::Retry(format!("unreachable: {}", root_cause(&err)), None),
        };
        let status = res.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = res.text().await.unwrap_or_default();
        let why = format!("HTTP {}: {}", status.as_u16(), text.trim().chars().take(200).collect::<String>());
        if status.is_server_error() || matches!(status.as_u16(), 408 | 409 | 425 | 429) {
            Outcome::Retry(why, retry_after)
        } else {
            Outcome::Rejected(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let d = Delivery {
            first_retry: Duration::from_millis(100),
            max_retry: Duration::from_secs(1),
            ..Delivery::default()
        };
        let got: Vec<u128> = (1..=6).map(|n| d.backoff(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(d.backoff(u32::MAX), Duration::from_secs(1));
    }
}
