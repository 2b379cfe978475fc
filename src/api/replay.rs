//! Replay protection for signed Slack requests: a (timestamp, signature) pair is accepted once.
//!
//! Slack's timestamp window (5 minutes either way) bounds how long a captured request stays valid;
//! within it, this remembers every accepted signature. Entries older than the window are dropped on
//! each insert, and the set holds at most `capacity` of them: beyond that new requests are refused
//! (fail closed) rather than forgotten, so memory stays bounded even under a flood of valid clicks.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::sign::SLACK_MAX_SKEW_SECS;

/// Default bound: far above what people clicking buttons produce in 10 minutes.
pub const DEFAULT_CAPACITY: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("this signed request was already received (a replay): refused")]
    Replayed,
    #[error("too many Slack requests within the replay window; try again in a few minutes")]
    Full,
}

pub struct SeenSignatures {
    capacity: usize,
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// signature → request timestamp
    by_sig: HashMap<String, i64>,
    /// (timestamp, signature) in arrival order, for expiry.
    order: VecDeque<(i64, String)>,
}

impl Default for SeenSignatures {
    fn default() -> Self {
        SeenSignatures::new(DEFAULT_CAPACITY)
    }
}

impl SeenSignatures {
    pub fn new(capacity: usize) -> Self {
        SeenSignatures { capacity, inner: Mutex::new(Seen::default()) }
    }

    /// Record a verified request's (timestamp, signature); `Err` if it was seen before (or no room).
    pub fn check_and_insert(&self, timestamp: i64, signature: &str, now: i64) -> Result<(), ReplayError> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // A timestamp this old is refused by the window check, so its signature need not be kept.
        // Arrival order is not timestamp order (skew), hence the scan over the front only while old.
        let horizon = now - SLACK_MAX_SKEW_SECS;
        while s.order.front().is_some_and(|(t, _)| *t < horizon) {
            if let Some((_, sig)) = s.order.pop_front() {
                s.by_sig.remove(&sig);
            }
        }
        if s.by_sig.contains_key(signature) {
            return Err(ReplayError::Replayed);
        }
        if s.by_sig.len() >= self.capacity {
            return Err(ReplayError::Full);
        }
        s.by_sig.insert(signature.to_string(), timestamp);
        s.order.push_back((timestamp, signature.to_string()));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|s| s.by_sig.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_accepted_once_within_the_window() {
        let s = SeenSignatures::new(10);
        assert_eq!(s.check_and_insert(1000, "v0=aa", 1000), Ok(()));
        assert_eq!(s.check_and_insert(1000, "v0=aa", 1010), Err(ReplayError::Replayed));
        assert_eq!(s.check_and_insert(1001, "v0=bb", 1010), Ok(()));
        // Past the window the entry is dropped (the timestamp check refuses such a request anyway).
        assert_eq!(s.check_and_insert(1400, "v0=cc", 1400), Ok(()));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn memory_is_bounded_and_full_fails_closed() {
        let s = SeenSignatures::new(3);
        for i in 0..3 {
            assert_eq!(s.check_and_insert(1000, &format!("v0={i}"), 1000), Ok(()));
        }
        assert_eq!(s.check_and_insert(1000, "v0=new", 1000), Err(ReplayError::Full));
        assert_eq!(s.check_and_insert(1000, "v0=0", 1000), Err(ReplayError::Replayed));
        assert_eq!(s.len(), 3);
        // Once the old ones expire there is room again.
        assert_eq!(s.check_and_insert(1400, "v0=new", 1400), Ok(()));
        assert_eq!(s.len(), 1);
    }
}
