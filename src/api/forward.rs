//! HA: a command for a rollout another replica owns is forwarded to that replica, one hop, with the
//! caller's `Authorization` (so the owner authenticates the same caller) and `Idempotency-Key` (a Slack
//! click: with Slack's signature headers, verified again by the owner). The
//! owner's answer is returned as is. A request that was already forwarded once is never forwarded
//! again (ownership moved meanwhile): the caller gets a 503 and retries.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Marks a forwarded request.
pub const FORWARDED: &str = "x-vane-forwarded";
/// How long the owner may take to answer.
const TIMEOUT: Duration = Duration::from_secs(30);

fn client() -> Result<&'static reqwest::Client, ApiError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let c = crate::http::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(CLIENT.get_or_init(|| c))
}

/// Send `POST {owner}{path}` with the caller's credentials and body; return the owner's answer.
pub async fn forward(
    owner: &str,
    replica: &str,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let unavailable = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "owner_unreachable", m);
    if headers.contains_key(FORWARDED) {
        return Err(unavailable(format!("ownership moved while forwarding to replica {replica}; retry")));
    }
    if !(owner.starts_with("http://") || owner.starts_with("https://")) {
        return Err(unavailable(format!("replica {replica} advertises no usable URL")));
    }
    let mut req = client()?.post(format!("{owner}{path}")).header(FORWARDED, "1").body(body);
    const KEPT: [&str; 5] =
        ["authorization", "content-type", "idempotency-key", "x-slack-signature", "x-slack-request-timestamp"];
    for name in KEPT.map(header::HeaderName::from_static) {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v);
        }
    }
    let res = req.send().await.map_err(|e| {
        unavailable(format!("replica {replica} owns this rollout but does not answer: {}", crate::http::root_cause(&e)))
    })?;
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let ctype = res.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = res.bytes().await.map_err(|e| unavailable(format!("reading replica {replica}'s answer: {e}")))?;
    let mut out = (status, bytes).into_response();
    if let Some(c) = ctype.and_then(|c| c.parse().ok()) {
        out.headers_mut().insert(header::CONTENT_TYPE, c);
    }
    Ok(out)
}
