//! The two [`Clock`]s: the system's wall clock, and one driven by tokio's (possibly paused) time.

use super::Millis;
use super::ports::Clock;

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// Wall time = a fixed start + tokio's (possibly paused) elapsed time.
pub struct TokioClock {
    wall: Millis,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(wall: Millis) -> Self {
        TokioClock { wall, start: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Millis {
        self.wall + self.start.elapsed().as_millis() as u64
    }
}
