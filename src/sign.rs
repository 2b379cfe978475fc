//! HMAC-SHA256 signatures: vane's own (`X-Vane-Signature`) and Slack's (`X-Slack-Signature`).
//!
//! Verification decodes the hex and compares MACs with `hmac`'s constant-time `verify_slice`, so a
//! forger learns nothing from how long a rejection takes.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Slack's replay window: requests whose timestamp is further than this from now are refused.
pub const SLACK_MAX_SKEW_SECS: i64 = 5 * 60;

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

/// `sha256=<hex HMAC-SHA256(body)>`, the value of `X-Vane-Signature` on webhooks and hooks.
pub fn vane_signature(secret: &[u8], body: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// Check a `X-Vane-Signature` header value (what a receiver does; used by tests and docs).
pub fn verify_vane_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(sig) = header.strip_prefix("sha256=").and_then(|h| hex::decode(h).ok()) else {
        return false;
    };
    let mut m = mac(secret);
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

/// `v0=<hex HMAC-SHA256("v0:" + timestamp + ":" + body)>`, Slack's request signature.
pub fn slack_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(b"v0:");
    m.update(timestamp.as_bytes());
    m.update(b":");
    m.update(body);
    format!("v0={}", hex::encode(m.finalize().into_bytes()))
}

/// Why a Slack request was refused (all of them answer 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackAuthError {
    #[error("missing X-Slack-Request-Timestamp")]
    MissingTimestamp,
    #[error("X-Slack-Request-Timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error("request timestamp is {0} s away from now (more than 5 minutes): refused as a possible replay")]
    Stale(i64),
    #[error("missing X-Slack-Signature")]
    MissingSignature,
    #[error("X-Slack-Signature does not match the request (wrong signing secret or altered body)")]
    BadSignature,
}

/// Verify a Slack request exactly as Slack documents it: timestamp within 5 minutes of `now_secs`
/// (either direction), then the `v0` signature over the raw body, compared in constant time.
pub fn verify_slack(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), SlackAuthError> {
    let ts = timestamp.ok_or(SlackAuthError::MissingTimestamp)?;
    let t: i64 = ts.trim().parse().map_err(|_| SlackAuthError::BadTimestamp)?;
    let skew = now_secs.saturating_sub(t);
    if skew.saturating_abs() > SLACK_MAX_SKEW_SECS {
        return Err(SlackAuthError::Stale(skew));
    }
    let sig = signature.ok_or(SlackAuthError::MissingSignature)?;
    let raw = sig.strip_prefix("v0=").and_then(|h| hex::decode(h).ok()).ok_or(SlackAuthError::BadSignature)?;
    let mut m = mac(secret);
    m.update(b"v0:");
    m.update(ts.as_bytes());
    m.update(b":");
    m.update(body);
    m.verify_slice(&raw).map_err(|_| SlackAuthError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked example of https://api.slack.com/authentication/verifying-requests-from-slack
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slack_documented_example() {
        assert_eq!(slack_signature(SECRET, TS, BODY.as_bytes()), SIG);
        assert_eq!(verify_slack(SECRET, Some(TS), Some(SIG), BODY.as_bytes(), 1531420618 + 60), Ok(()));
    }

    #[test]
    fn slack_rejections() {
        let now = 1531420618;
        let b = BODY.as_bytes();
        assert_eq!(verify_slack(b"other", Some(TS), Some(SIG), b, now), Err(SlackAuthError::BadSignature));
        let mut tampered = BODY.to_string();
        tampered.push('x');
        assert_eq!(
            verify_slack(SECRET, Some(TS), Some(SIG), tampered.as_bytes(), now),
            Err(SlackAuthError::BadSignature)
        );
        assert_eq!(verify_slack(SECRET, Some(TS), Some(SIG), b, now + 301), Err(SlackAuthError::Stale(301)));
        assert_eq!(verify_slack(SECRET, Some(TS), Some(SIG), b, now - 301), Err(SlackAuthError::Stale(-301)));
        assert_eq!(verify_slack(SECRET, None, Some(SIG), b, now), Err(SlackAuthError::MissingTimestamp));
        assert_eq!(verify_slack(SECRET, Some("soon"), Some(SIG), b, now), Err(SlackAuthError::BadTimestamp));
        assert_eq!(verify_slack(SECRET, Some(TS), None, b, now), Err(SlackAuthError::MissingSignature));
        assert_eq!(verify_slack(SECRET, Some(TS), Some("v1=00"), b, now), Err(SlackAuthError::BadSignature));
        assert_eq!(verify_slack(SECRET, Some(TS), Some("v0=zz"), b, now), Err(SlackAuthError::BadSignature));
        assert_eq!(verify_slack(SECRET, Some(TS), Some(&SIG[..20]), b, now), Err(SlackAuthError::BadSignature));
    }

    #[test]
    fn vane_signature_round_trip() {
        // RFC 4231 test case 2: HMAC-SHA256(key "Jefe", "what do ya want for nothing?").
        let s = vane_signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(s, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(verify_vane_signature(b"Jefe", b"what do ya want for nothing?", &s));
        assert!(!verify_vane_signature(b"jefe", b"what do ya want for nothing?", &s));
        assert!(!verify_vane_signature(b"Jefe", b"what do ya want for nothing!", &s));
        assert!(!verify_vane_signature(b"Jefe", b"x", "5bdc"));
    }
}
