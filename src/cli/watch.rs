//! `vane rollout watch`: follow a rollout to its end. Made for CI: the exit code says how it ended,
//! a daemon restart or a short outage is waited out, and `--timeout` bounds the wait.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use super::client::{Api, CliError, code, urlencode};
use super::output::{Doc, emit, s};

pub struct WatchOpts {
    /// Poll interval.
    pub every: Duration,
    /// Give up after this long (exit 3, or 4 when the daemon is unreachable at that moment).
    pub timeout: Option<Duration>,
    /// Give up (exit 4) once the daemon has been unreachable this long.
    pub reconnect: Duration,
}

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Follow `id` (a rollout id or `namespace/service`) until it ends; returns the exit code.
pub async fn watch(api: &Api, id: &str, o: &WatchOpts) -> Result<i32, CliError> {
    let started = Instant::now();
    let deadline = o.timeout.map(|t| started + t);
    let mut view = View::new();
    let mut resolved: Option<String> = None;
    // Since when, and why, the daemon has been unreachable.
    let mut down: Option<(Instant, CliError)> = None;
    let mut backoff = o.every;
    let mut phase = String::new();
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let attempt = async {
            let rid = match &resolved {
                Some(r) => r.clone(),
                None => api.resolve(id).await?,
            };
            let r = api.get(&format!("/api/v1/rollouts/{}", urlencode(&rid))).await?;
            Ok::<_, CliError>((rid, r))
        };
        let result = match remaining {
            Some(left) => tokio::time::timeout(left, attempt).await.ok(),
            None => Some(attempt.await),
        };
        match result {
            Some(Ok((rid, r))) => {
                resolved = Some(rid);
                if down.take().is_some() {
                    eprintln!("vane: reconnected");
                }
                backoff = o.every;
                phase = s(&r, "phase");
                if let Some(code) = view.show(&r) {
                    return Ok(code);
                }
            }
            Some(Err(e)) if e.is_transient() => {
                let since = match &down {
                    Some((since, _)) => *since,
                    None => {
                        eprintln!("vane: {e}; retrying");
                        Instant::now()
                    }
                };
                if since.elapsed() >= o.reconnect {
                    return Err(e);
                }
                down = Some((since, e));
                backoff = (backoff * 2).clamp(o.every, MAX_BACKOFF.max(o.every));
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
        if let Some(d) = deadline {
            let now = Instant::now();
            if now >= d {
                view.finish();
                if let Some((_, e)) = down {
                    return Err(e);
                }
                let waited = humantime::format_duration(o.timeout.unwrap_or_default());
                let phase = if phase.is_empty() { "not seen".to_string() } else { phase };
                eprintln!("vane: timed out after {waited}: {id} is {phase}");
                return Ok(code::TIMEOUT);
            }
            tokio::time::sleep(backoff.min(d - now)).await;
        } else {
            tokio::time::sleep(backoff).await;
        }
    }
}

/// A progress bar on a terminal; otherwise one line per change. Printing stops quietly if stdout
/// is closed; the watch itself goes on, so that the exit code still tells how the rollout ended.
struct View {
    bar: Option<indicatif::ProgressBar>,
    last: String,
    closed: bool,
}

impl View {
    fn new() -> View {
        let bar = std::io::stdout().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(100);
            b.set_style(
                indicatif::ProgressStyle::with_template("{prefix:.bold} [{bar:40.cyan/blue}] {pos:>3}% {wide_msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        View { bar, last: String::new(), closed: false }
    }

    /// Show the rollout; `Some(exit code)` once it has ended.
    fn show(&mut self, r: &Doc) -> Option<i32> {
        let phase = s(r, "phase");
        let weight = r.get("canaryWeight").and_then(Doc::as_u64).unwrap_or(0);
        let msg = s(r, "message");
        let line = format!("{phase} {weight}% {msg}");
        if let Some(b) = &self.bar {
            b.set_prefix(format!("{}/{} {phase}", s(r, "namespace"), s(r, "service")));
            b.set_position(weight);
            b.set_message(msg.clone());
        } else if line != self.last && !self.closed {
            let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            self.closed = emit(&format!("{at} {line}\n")).is_err();
        }
        self.last = line;
        let code = match phase.as_str() {
            "Succeeded" => code::OK,
            "RolledBack" | "Aborted" | "Failed" => code::FAILED,
            _ => return None,
        };
        if let Some(b) = &self.bar {
            b.finish_with_message(format!("{phase}: {msg}"));
        }
        Some(code)
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.abandon();
        }
    }
}
