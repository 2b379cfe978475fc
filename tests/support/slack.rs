//! Slack's side of the interactions endpoint, for tests: a request signature computed here (not with
//! vane's own code, so a test checks vane against Slack's scheme), and a button click's form body.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

/// Unix seconds now (what Slack puts in `X-Slack-Request-Timestamp`).
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `X-Slack-Signature` for `body` sent at `ts`: `v0=` HMAC-SHA256 of `v0:{ts}:{body}`.
pub fn sign(secret: &str, ts: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// Slack's form body for a click on a gate button: `value` is the button's value, `action_ts` makes
/// each click's body (and signature) distinct, as in Slack; `response_url` is left out when `None`.
pub fn click(action: &str, value: &str, user: (&str, &str), response_url: Option<&str>, action_ts: &str) -> String {
    let (id, name) = user;
    let mut payload = json!({
        "type": "block_actions",
        "user": { "id": id, "username": name, "name": name, "team_id": "T1" },
        "api_app_id": "A1",
        "container": { "type": "message", "message_ts": "1.2" },
        "actions": [ { "action_id": action, "block_id": "vane_gate", "value": value, "type": "button",
                       "action_ts": action_ts } ],
    });
    if let Some(url) = response_url {
        payload["response_url"] = url.into();
    }
    serde_urlencoded::to_string([("payload", payload.to_string())]).expect("a form body")
}
