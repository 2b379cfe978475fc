//! Blue/green: the flip (one step to 100 %), then a post-flip window of analysis before success.

use std::time::Duration;

use super::*;

/// The router confirmed the flip: the post-flip window starts.
pub(super) fn flipped(r: &mut Rollout, now: Millis) {
    r.flipped_at = Some(now);
    r.last_progress_at = now;
    r.next_analysis_at = Some(now + interval(r));
    r.message = format!(
        "flipped to {}; watching for {}",
        r.version,
        humantime::format_duration(Duration::from_millis(r.post_flip_ms()))
    );
}

/// The post-flip window ended without a rollback.
pub(super) fn window_passed(r: &mut Rollout, now: Millis, out: &mut Output) {
    let msg = format!("succeeded: {} healthy through the post-flip window", r.version);
    finish(r, Phase::Succeeded, now, out, EventKind::Succeeded, msg);
}
