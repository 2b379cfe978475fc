//! `POST /api/v1/slack/interactions`: the gate's Promote / Abort buttons (SPEC §5).
//!
//! Order of checks, each answering before anything changes:
//! 1. Slack's signature: `X-Slack-Request-Timestamp` within 5 minutes of now (either direction) and
//!    `X-Slack-Signature` = `v0=HMAC-SHA256(secret, "v0:<ts>:<raw body>")`, compared in constant time
//!    → otherwise **401**;
//! 2. the form body `payload=<JSON>` of type `block_actions` with a known `action_id` → otherwise **400**;
//! 3. the rollout exists → otherwise **404**;
//! 4. Promote: the rollout waits at a gate → otherwise **409**; the gate's `approvers` (if any) list the
//!    clicking user → otherwise **403**. Abort is open to anyone who can click: rolling back is always
//!    the safe direction (an operator token can do the same from the CLI);
//! 5. the controller applies the command (at most 2.5 s, Slack wants an answer within 3 s) → **200**,
//!    or **409** when the phase does not allow it.
//!
//! The acting user is recorded in the rollout's events as `slack:<user id> (<name>)`. Because Slack
//! ignores the HTTP body of a `block_actions` answer, the outcome is also posted to the payload's
//! `response_url`: on success the gate message is replaced (buttons gone, who decided), on a refusal
//! the user gets an ephemeral explanation.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::routes::body_bytes;
use crate::notify::slack::{ABORT_ACTION, PROMOTE_ACTION, esc};
use crate::rollout::controller::{Controller, ControllerError};
use crate::rollout::machine::Command;
use crate::rollout::{Phase, Rollout, is_rollout_id};
use crate::sign::{SlackAuthError, verify_slack};

/// Slack's own host for `response_url`s.
pub const SLACK_RESPONSE_PREFIX: &str = "https://hooks.slack.com/";

#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    user: User,
    #[serde(default)]
    actions: Vec<Action>,
    #[serde(default)]
    response_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct User {
    id: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for Slack replies: {0}")]
pub struct SlackClientError(String);

/// The endpoint's state: the signing secret and a client for `response_url` replies.
pub struct SlackInteractions {
    secret: Vec<u8>,
    reply_prefix: String,
    client: reqwest::Client,
    command_timeout: Duration,
}

type Answer = (StatusCode, Value);

fn answer(status: StatusCode, text: impl Into<String>) -> Answer {
    (status, json!({ "response_type": "ephemeral", "replace_original": false, "text": text.into() }))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Slack user ids are short upper-case alphanumerics (`U024BE7LH`, `W012A3CDE`).
fn valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A display name safe for logs and events: no control characters, at most 64 characters.
fn clean_name(s: &str) -> String {
    s.chars().filter(|c| !c.is_control() && *c != '(' && *c != ')').take(64).collect::<String>().trim().to_string()
}

impl SlackInteractions {
    pub fn new(signing_secret: impl Into<Vec<u8>>) -> Result<SlackInteractions, SlackClientError> {
        let client = crate::http::client_builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SlackClientError(e.to_string()))?;
        Ok(SlackInteractions {
            secret: signing_secret.into(),
            reply_prefix: SLACK_RESPONSE_PREFIX.into(),
            client,
            command_timeout: Duration::from_millis(2500),
        })
    }

    /// Only `response_url`s starting with this are answered (default: Slack's host). Tests point it at
    /// a local receiver.
    pub fn with_reply_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.reply_prefix = prefix.into();
        self
    }

    /// Post to the payload's `response_url` in the background (Slack's answer must not wait for it).
    fn reply(&self, url: Option<&str>, body: Value) {
        let Some(url) = url.filter(|u| u.starts_with(&self.reply_prefix)) else {
            return;
        };
        let req = self.client.post(url).json(&body);
        tokio::spawn(async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    tracing::warn!(status = %r.status(), "Slack response_url refused the reply")
                }
                Err(e) => tracing::warn!(error = %e, "cannot reach Slack's response_url"),
            }
        });
    }

    async fn act(&self, controller: &Controller, headers: &HeaderMap, body: &[u8]) -> (Answer, Option<String>) {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        if let Err(e) = verify_slack(
            &self.secret,
            header("x-slack-request-timestamp"),
            header("x-slack-signature"),
            body,
            now_secs(),
        ) {
            tracing::warn!(error = %e, "refused a Slack interaction");
            let text = match e {
                SlackAuthError::BadSignature => "invalid Slack signature".to_string(),
                other => other.to_string(),
            };
            return (answer(StatusCode::UNAUTHORIZED, text), None);
        }
        let p = match parse(body) {
            Ok(p) => p,
            Err(why) => return (answer(StatusCode::BAD_REQUEST, why), None),
        };
        let url = p.response_url.clone();
        (self.decide(controller, p).await, url)
    }

    async fn decide(&self, controller: &Controller, p: Payload) -> Answer {
        if p.kind != "block_actions" {
            return answer(StatusCode::BAD_REQUEST, format!("unsupported interaction type {:?}", p.kind));
        }
        if !valid_user_id(&p.user.id) {
            return answer(StatusCode::BAD_REQUEST, "payload.user.id is not a Slack user id");
        }
        let Some(action) = p.actions.first() else {
            return answer(StatusCode::BAD_REQUEST, "payload has no actions");
        };
        let promote = match action.action_id.as_str() {
            PROMOTE_ACTION => true,
            ABORT_ACTION => false,
            other => return answer(StatusCode::BAD_REQUEST, format!("unknown action {other:?}")),
        };
        let id = action.value.as_deref().unwrap_or_default().trim();
        let name = p.user.username.as_deref().or(p.user.name.as_deref()).map(clean_name).unwrap_or_default();
        let actor =
            if name.is_empty() { format!("slack:{}", p.user.id) } else { format!("slack:{} ({name})", p.user.id) };
        if !is_rollout_id(id) {
            return answer(StatusCode::NOT_FOUND, format!("rollout {id:?} not found"));
        }
        let r = match controller.get(id) {
            Ok(r) => r,
            Err(e) => return error_answer(e),
        };
        let command = if promote {
            if let Err(a) = may_promote(&r, &p.user.id) {
                tracing::warn!(rollout = %r.id, %actor, "Slack promote refused: {}", a.1["text"]);
                return a;
            }
            Command::Promote { full: false }
        } else {
            Command::Abort { reason: Some("aborted from Slack".into()) }
        };
        match tokio::time::timeout(self.command_timeout, controller.command(id, command, &actor)).await {
            Ok(Ok(after)) => {
                let user = format!("<@{}>", esc(&p.user.id));
                let text = if promote {
                    format!(
                        "✅ Gate at {}% approved by {user}: *{}* `{}` continues.",
                        r.canary_weight,
                        esc(&r.service),
                        esc(&r.version)
                    )
                } else {
                    format!("🛑 Aborted by {user}: *{}* rolls back to `{}`.", esc(&r.service), esc(&r.stable_version))
                };
                tracing::info!(rollout = %after.id, %actor, phase = after.phase.as_str(), "Slack {} applied", if promote { "promote" } else { "abort" });
                (
                    StatusCode::OK,
                    json!({ "response_type": "in_channel", "replace_original": true, "text": text, "phase": after.phase.as_str() }),
                )
            }
            Ok(Err(e)) => error_answer(e),
            Err(_) => answer(
                StatusCode::ACCEPTED,
                "vane is busy: the request was queued but not confirmed within 2.5 s; check the rollout's events",
            ),
        }
    }
}

/// Promote from Slack only at a gate, and only by its approvers (if it lists any).
fn may_promote(r: &Rollout, user: &str) -> Result<(), Answer> {
    if r.effective_phase() != Phase::AwaitingApproval {
        return Err(answer(
            StatusCode::CONFLICT,
            format!("{} is {}, not waiting at a gate: nothing to approve", r.service, r.phase.as_str()),
        ));
    }
    if let Some(g) = r.policy.gate_at(r.canary_weight)
        && !g.approvers.is_empty()
        && !g.approvers.iter().any(|a| a == user)
    {
        let who: Vec<String> = g.approvers.iter().map(|u| format!("<@{}>", esc(u))).collect();
        return Err(answer(
            StatusCode::FORBIDDEN,
            format!("only {} may approve the gate at {}% of {}", who.join(", "), g.at, esc(&r.service)),
        ));
    }
    Ok(())
}

fn error_answer(e: ControllerError) -> Answer {
    match e {
        ControllerError::NotFound(_) => answer(StatusCode::NOT_FOUND, e.to_string()),
        ControllerError::Command(c) => answer(StatusCode::CONFLICT, c.to_string()),
        ControllerError::Invalid(f) => answer(StatusCode::UNPROCESSABLE_ENTITY, f.to_string()),
        // HA: ownership moved between the forwarding check and the command.
        ControllerError::Elsewhere { .. } => answer(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; try again")),
        ControllerError::Store(s) => {
            tracing::error!(error = %s, "store error while handling a Slack interaction");
            answer(StatusCode::SERVICE_UNAVAILABLE, "vane cannot reach its store right now; try again")
        }
    }
}

fn parse(body: &[u8]) -> Result<Payload, String> {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| format!("body is not application/x-www-form-urlencoded: {e}"))?;
    let raw = form.into_iter().find(|(k, _)| k == "payload").map(|(_, v)| v).ok_or("form has no payload field")?;
    serde_json::from_str(&raw).map_err(|e| format!("payload is not a Slack interaction: {e}"))
}

impl SlackInteractions {
    /// HA: the owning replica (URL, id) of the rollout a verified click names, when it is another
    /// replica: the click is forwarded there as it came (Slack's signature verifies there too).
    fn owner_elsewhere(&self, controller: &Controller, headers: &HeaderMap, body: &[u8]) -> Option<(String, String)> {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let ts = header("x-slack-request-timestamp");
        verify_slack(&self.secret, ts, header("x-slack-signature"), body, now_secs()).ok()?;
        let p = parse(body).ok()?;
        let id = p.actions.first()?.value.as_deref()?.trim().to_string();
        if !is_rollout_id(&id) {
            return None;
        }
        let owner = controller.env().store.owner(&id).ok()??;
        (!owner.local).then_some((owner.url, owner.replica))
    }

    /// Verify and handle one request; returns the HTTP status and a JSON body.
    pub async fn handle(&self, controller: &Controller, headers: &HeaderMap, body: &[u8]) -> Answer {
        let ((status, body), url) = self.act(controller, headers, body).await;
        // Slack shows nothing of a block_actions HTTP answer: say it through the response_url.
        if status.is_success() {
            let text = body["text"].as_str().unwrap_or_default().to_string();
            let blocks = json!([{ "type": "section", "text": { "type": "mrkdwn", "text": text } }]);
            self.reply(url.as_deref(), json!({ "replace_original": true, "text": text, "blocks": blocks }));
        } else if status != StatusCode::UNAUTHORIZED {
            self.reply(url.as_deref(), body.clone());
        }
        (status, body)
    }
}

/// What the Slack endpoint answers: Slack shows `text` to the user who clicked (`ephemeral`) or, once
/// an action is applied, to the channel (`in_channel`, with the rollout's new `phase`).
#[derive(Debug, Serialize, ToSchema)]
pub struct SlackAnswer {
    /// `in_channel` or `ephemeral`.
    pub response_type: String,
    pub replace_original: bool,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// Before the Slack handler runs (Slack not configured, unreadable body) errors use the API's error body.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SlackOrError {
    Slack(SlackAnswer),
    Error(ErrorBody),
}

/// Slack interactivity (buttons Promote / Abort), verified with the signing secret (not a bearer token).
#[utoipa::path(post, path = "/api/v1/slack/interactions", tag = "slack",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "Slack's `payload=<JSON>` of type block_actions"),
    responses(
        (status = 200, description = "applied", body = SlackAnswer),
        (status = 202, description = "queued, not confirmed in time", body = SlackAnswer),
        (status = 400, description = "not a Slack block_actions payload", body = SlackOrError),
        (status = 401, description = "missing, stale or wrong Slack signature", body = SlackAnswer),
        (status = 403, description = "the user may not approve this gate", body = SlackAnswer),
        (status = 404, description = "unknown rollout, or Slack is not configured", body = SlackOrError),
        (status = 409, description = "not valid in the rollout's phase", body = SlackAnswer),
        (status = 413, body = ErrorBody),
        (status = 422, body = SlackAnswer),
        (status = 503, description = "the store is unavailable", body = SlackAnswer)))]
pub async fn interactions(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let Some(h) = s.slack.clone() else {
        return Err(ApiError::not_found("Slack is not configured (set the signing secret)"));
    };
    if let Some((url, replica)) = h.owner_elsewhere(&s.controller, &headers, &body) {
        return super::forward::forward(&url, &replica, "/api/v1/slack/interactions", &headers, body).await;
    }
    let (status, json) = h.handle(&s.controller, &headers, &body).await;
    Ok((status, Json(json)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert_eq!(clean_name("  alice\n(admin) "), "aliceadmin");
        assert!(valid_user_id("U024BE7LH"));
        assert!(!valid_user_id("U0 24"));
        assert!(!valid_user_id(""));
        assert!(parse(b"payload=%7B%22type%22%3A1%7D").unwrap_err().contains("not a Slack interaction"));
        assert!(parse(b"x=1").unwrap_err().contains("no payload"));
    }
}
