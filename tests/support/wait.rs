//! Waiting for a rollout of an in-process controller to reach a state (tokio time: virtual under a
//! paused clock, so a driver test can wait hours of rollout in milliseconds).
#![allow(dead_code)]

use std::time::Duration;

use vane::rollout::Rollout;
use vane::rollout::controller::Controller;

/// Poll rollout `id` every `every` until `f` holds; fail naming `what` (and the rollout's phase and
/// message) after `within`.
pub async fn until_rollout(
    c: &Controller,
    id: &str,
    what: &str,
    within: Duration,
    every: Duration,
    f: impl Fn(&Rollout) -> bool,
) -> Rollout {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let r = c.get(id).expect("rollout readable");
        if f(&r) {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {:?} {}", r.phase, r.message);
        tokio::time::sleep(every).await;
    }
}
