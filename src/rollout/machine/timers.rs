//! Deadlines, read from the rollout's timer table ([`Rollout::timers`], which also tells the driver
//! when to wake): progress deadline, gate timeout, the blue/green post-flip window.

use super::*;
use crate::rollout::Timer;

/// Act on the deadlines that passed, in the table's order; the first that ends the phase wins.
pub(super) fn check_timers(r: &mut Rollout, now: Millis, out: &mut Output) {
    for (timer, at) in r.timers() {
        if at.is_none_or(|t| now < t) {
            continue;
        }
        match timer {
            Timer::ProgressDeadline => {
                let deadline = humantime::format_duration(r.policy.progress_deadline);
                let msg = format!("no progress for {deadline} (progressDeadline): {}", r.message);
                return start_rollback(r, now, out, RollbackKind::Controller, CONTROLLER, msg);
            }
            Timer::GateTimeout if r.phase == Phase::AwaitingApproval => {
                let msg = format!("approval gate at {}% timed out", r.canary_weight);
                return start_rollback(r, now, out, RollbackKind::Controller, CONTROLLER, msg);
            }
            Timer::PostFlip => return blue_green::window_passed(r, now, out),
            // Due work, not deadlines: `schedule` starts it.
            Timer::Analysis | Timer::RouterRetry | Timer::GateTimeout | Timer::Workload => {}
        }
    }
}
