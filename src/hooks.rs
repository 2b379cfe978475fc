//! The policy's lifecycle hooks over HTTP, with Flagger's meaning (see docs/notifications.md): the
//! daemon's [`HookRunner`], and [`AlwaysOk`] for policies without hooks and for tests.
//!
//! Each hook is a `POST` of a JSON description of the rollout, signed like the outbound webhooks
//! (`X-Vane-Signature: sha256=<hex HMAC-SHA256(body)>`) when a hook secret is configured, and bounded
//! by the hook's own `timeout`. A 2xx answer in time is "yes"; anything else (non-2xx, timeout,
//! connection refused) is "no". What "no" means is decided by the caller (the machine for the
//! pre-traffic and promotion stages, the analyzer for `rollout`/`rollback`): this module only asks.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::BoxFut;
use crate::http::root_cause;
use crate::policy::{HookKind, HookSpec, Preflight};
use crate::redact::Redactor;
use crate::rollout::Rollout;
use crate::rollout::ports::{HookOutcome, HookRunner};
use crate::sign::vane_signature;
use crate::telemetry::Metrics;

/// The `type` field of the payload, as Flagger spells it.
pub fn kind_name(kind: HookKind) -> &'static str {
    match kind {
        HookKind::ConfirmRollout => "confirm-rollout",
        HookKind::PreRollout => "pre-rollout",
        HookKind::Rollout => "rollout",
        HookKind::ConfirmPromotion => "confirm-promotion",
        HookKind::PostRollout => "post-rollout",
        HookKind::Rollback => "rollback",
    }
}

/// The JSON a hook receives: Flagger's fields (`name`, `namespace`, `phase`, `type`, `metadata`) plus
/// the rollout's own.
pub fn payload(kind: HookKind, hook: &HookSpec, r: &Rollout) -> serde_json::Value {
    json!({
        "name": r.service,
        "namespace": r.namespace,
        "phase": r.phase.as_str(),
        "type": kind_name(kind),
        "metadata": hook.metadata,
        "id": r.id,
        "service": r.service,
        "version": r.version,
        "stableVersion": r.stable_version,
        "canaryWeight": r.canary_weight,
        "stepIndex": r.step_index,
        "failedChecks": r.failed_checks,
        "policy": r.policy.name,
    })
}

/// Characters a substituted value keeps as they are: RFC 3986's unreserved ones. Everything else
/// (`@`, `/`, `:`, `?`, `#`, `%`, ...) is percent-encoded, so a value can never change the URL's host,
/// port, path segments or query — whatever the request validation let through.
const UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Substitute `{{service}}`, `{{namespace}}`, `{{version}}`, `{{stable_version}}` in a preflight or
/// hook URL, each value percent-encoded.
pub fn render_url(template: &str, r: &Rollout) -> String {
    let enc = |v: &str| percent_encoding::utf8_percent_encode(v, UNRESERVED).to_string();
    template
        .replace("{{service}}", &enc(&r.service))
        .replace("{{namespace}}", &enc(&r.namespace))
        .replace("{{version}}", &enc(&r.version))
        .replace("{{stable_version}}", &enc(&r.stable_version))
}

/// The most of a hook's answer vane reads (it only shows an excerpt).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The start of a response body, reading at most [`MAX_ANSWER_BYTES`] of it.
async fn read_capped(mut res: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < MAX_ANSWER_BYTES {
        match res.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c[..c.len().min(MAX_ANSWER_BYTES - buf.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// For tests and for policies without hooks: every hook answers 2xx.
pub struct AlwaysOk;

impl HookRunner for AlwaysOk {
    fn call(&self, kind: HookKind, hooks: Vec<HookSpec>, _: &Rollout) -> BoxFut<'_, HookOutcome> {
        // A rollback hook answering 2xx asks for a rollback; without hooks nobody asks.
        let ok = kind != HookKind::Rollback || !hooks.is_empty();
        Box::pin(async move { HookOutcome { ok, message: format!("{kind:?} hooks passed") } })
    }
    fn preflight(&self, _: Preflight, _: &Rollout) -> BoxFut<'_, HookOutcome> {
        Box::pin(async { HookOutcome { ok: true, message: "preflight passed".into() } })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for hooks: {0}")]
pub struct HookClientError(String);

/// Calls hooks with reqwest; the daemon's [`HookRunner`].
pub struct HttpHooks {
    client: reqwest::Client,
    secret: Option<Vec<u8>>,
    metrics: Arc<Metrics>,
    redactor: Arc<Redactor>,
}

/// One hook's answer.
enum Answer {
    Yes,
    No(String),
}

impl HttpHooks {
    /// `secret`: signs every hook request (`X-Vane-Signature`); `None` sends them unsigned.
    /// Redirects are not followed: a 3xx is an answer (not 2xx), and the signed body never goes to
    /// a host the policy did not name.
    pub fn new(secret: Option<String>, metrics: Arc<Metrics>) -> Result<HttpHooks, HookClientError> {
        let client = crate::http::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| HookClientError(e.to_string()))?;
        Ok(HttpHooks { client, secret: secret.map(String::into_bytes), metrics, redactor: Arc::default() })
    }

    /// Mask these secrets in hook answers before they become a message or an event.
    pub fn with_redactor(mut self, redactor: Arc<Redactor>) -> Self {
        self.redactor = redactor;
        self
    }

    async fn ask(&self, kind: HookKind, hook: &HookSpec, r: &Rollout) -> Answer {
        let body = serde_json::to_vec(&payload(kind, hook, r)).unwrap_or_default();
        let url = render_url(&hook.url, r);
        let mut req = self
            .client
            .post(&url)
            .timeout(hook.timeout)
            .header("content-type", "application/json")
            .header("x-vane-hook", kind_name(kind))
            .header("x-vane-rollout-id", &r.id);
        if let Some(s) = &self.secret {
            req = req.header("x-vane-signature", vane_signature(s, &body));
        }
        let answer = match req.body(body).send().await {
            Ok(res) if res.status().is_success() => Answer::Yes,
            Ok(res) => {
                let status = res.status();
                let text = read_capped(res).await;
                Answer::No(format!("HTTP {}{}", status.as_u16(), excerpt(&self.redactor.redact(&text))))
            }
            Err(e) if e.is_timeout() => {
                Answer::No(format!("no answer within {}", humantime::format_duration(hook.timeout)))
            }
            Err(e) => Answer::No(format!("unreachable: {}", root_cause(&e))),
        };
        self.metrics.webhook_delivery("hook", matches!(answer, Answer::Yes));
        answer
    }
}

fn label(kind: HookKind, hook: &HookSpec) -> String {
    match &hook.name {
        Some(n) => format!("{} hook {n:?}", kind_name(kind)),
        None => format!("{} hook {}", kind_name(kind), hook.url),
    }
}

/// `: <first 200 characters of the body>`, or nothing for an empty body.
fn excerpt(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        return String::new();
    }
    let cut: String = t.chars().filter(|c| !c.is_control()).take(200).collect();
    format!(": {cut}")
}

impl HookRunner for HttpHooks {
    /// Every kind but `rollback`: all hooks must say yes, in order; the first "no" decides.
    /// `rollback`: `ok` means "roll back now" — true as soon as any hook answers 2xx (Flagger's
    /// semantics), false when none does or there are none.
    fn call(&self, kind: HookKind, hooks: Vec<HookSpec>, rollout: &Rollout) -> BoxFut<'_, HookOutcome> {
        let r = rollout.clone();
        Box::pin(async move {
            if kind == HookKind::Rollback {
                let mut noes = Vec::new();
                for h in &hooks {
                    match self.ask(kind, h, &r).await {
                        Answer::Yes => {
                            return HookOutcome { ok: true, message: format!("{} asked to roll back", label(kind, h)) };
                        }
                        Answer::No(why) => noes.push(format!("{}: {why}", label(kind, h))),
                    }
                }
                let message = if noes.is_empty() { "no rollback hooks".to_string() } else { noes.join("; ") };
                return HookOutcome { ok: false, message };
            }
            for h in &hooks {
                if let Answer::No(why) = self.ask(kind, h, &r).await {
                    let message = format!("{}: {why}", label(kind, h));
                    if kind == HookKind::PostRollout {
                        tracing::warn!(rollout = %r.id, "{message} (informational, the rollout is finished)");
                    }
                    return HookOutcome { ok: false, message };
                }
            }
            HookOutcome { ok: true, message: format!("{} hooks passed ({})", kind_name(kind), hooks.len()) }
        })
    }

    /// `checks` consecutive 2xx from the templated URL, `every` apart; a non-2xx restarts the count.
    /// Gives up after `checks × 3` attempts.
    fn preflight(&self, spec: Preflight, rollout: &Rollout) -> BoxFut<'_, HookOutcome> {
        let url = render_url(&spec.url, rollout);
        let id = rollout.id.clone();
        Box::pin(async move {
            let attempts = spec.checks.saturating_mul(3).max(1);
            let timeout = spec.every.clamp(Duration::from_secs(1), Duration::from_secs(10));
            let mut streak = 0u32;
            let mut last_failure = String::from("none");
            for attempt in 1..=attempts {
                let res = self.client.get(&url).timeout(timeout).send().await;
                let ok = matches!(&res, Ok(r) if r.status().is_success());
                if ok {
                    streak += 1;
                    if streak >= spec.checks {
                        return HookOutcome {
                            ok: true,
                            message: format!("preflight: {streak} consecutive 2xx from {url} ({attempt} attempts)"),
                        };
                    }
                } else {
                    streak = 0;
                    last_failure = match res {
                        Ok(r) => format!("HTTP {}", r.status().as_u16()),
                        Err(e) if e.is_timeout() => {
                            format!("no answer within {}", humantime::format_duration(timeout))
                        }
                        Err(e) => format!("unreachable: {}", root_cause(&e)),
                    };
                    tracing::debug!(rollout = %id, %url, attempt, "preflight check failed: {last_failure}");
                }
                if attempt < attempts {
                    tokio::time::sleep(spec.every).await;
                }
            }
            HookOutcome {
                ok: false,
                message: format!(
                    "preflight: no {} consecutive 2xx from {url} in {attempts} attempts (last failure: {last_failure})",
                    spec.checks
                ),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn substituted_values_cannot_change_the_host() {
        let mut req = fixtures::request("agent-service", "p");
        req.version = "v2@127.0.0.1:18099/x?".into();
        let policy = fixtures::policy("p", &[5, 100], Duration::from_secs(1), 1);
        let r = crate::rollout::machine::create("r".into(), &req, policy, "t", 0).0;
        let url = render_url("http://{{service}}.{{namespace}}.svc:8080/health/{{version}}?v={{version}}", &r);
        assert_eq!(
            url,
            "http://agent-service.prod.svc:8080/health/v2%40127.0.0.1%3A18099%2Fx%3F?v=v2%40127.0.0.1%3A18099%2Fx%3F"
        );
        let parsed = reqwest::Url::parse(&url).unwrap();
        assert_eq!((parsed.host_str(), parsed.port()), (Some("agent-service.prod.svc"), Some(8080)));
        let hostile = render_url("http://{{version}}.example/", &r);
        assert!(reqwest::Url::parse(&hostile).map_or(true, |u| u.host_str() != Some("127.0.0.1")), "{hostile}");
    }
}
