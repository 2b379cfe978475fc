//! Guards in front of every route that do not depend on who calls: the protections of open mode
//! against browsers, and the per-request deadline.
//!
//! Open mode (loopback, no tokens) trusts every local caller — but a web page the operator visits is
//! a local caller too. Browsers can POST `text/plain` or a form anywhere without a CORS preflight,
//! and DNS rebinding lets a page read answers from `evil.example` resolved to 127.0.0.1. So in open
//! mode: a request carrying an `Origin` header (every cross-origin browser POST does) is 403, a
//! `Host` that is not a loopback name or address (a rebinding page's is its own name) is 421, and a
//! POST body must be `application/json` (415). CLI, curl and CI send none of those things.

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// The route whose body is Slack's form encoding (and whose caller is Slack, verified by signature).
const FORM_ROUTE: &str = "/api/v1/slack/interactions";

pub async fn open_mode(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if s.auth.is_open()
        && let Err(e) = check_open(req.method(), req.uri().path(), req.headers())
    {
        return e.into_response();
    }
    next.run(req).await
}

/// A 503 for any request not answered within `limit`.
pub async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("no answer within {} (server.request_timeout)", humantime::format_duration(limit)),
        )
        .into_response(),
    }
}

fn check_open(method: &Method, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(header::ORIGIN) {
        return Err(ApiError::forbidden(
            "open mode (no API tokens) refuses requests from web pages (an Origin header); configure tokens",
        )
        .with_code("cross_origin"));
    }
    if let Some(host) = headers.get(header::HOST)
        && !host.to_str().is_ok_and(is_loopback_host)
    {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected",
            "open mode (no API tokens) answers only to a loopback Host (localhost, 127.0.0.1, [::1])",
        ));
    }
    if method == Method::POST && path != FORM_ROUTE && has_body(headers) && !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be sent as Content-Type: application/json",
        ));
    }
    Ok(())
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) != Some(0))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/json"))
}

/// `localhost`, `*.localhost` (browsers resolve those themselves, RFC 6761), or a loopback address,
/// each with an optional port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest)) if rest.is_empty() || rest.starts_with(':') => addr,
            _ => return false,
        },
        None => {
            host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "app.localhost:1",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]:80",
            "0.0.0.0",
            "",
            "[::1]x",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn open_mode_refuses_browsers() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            m
        };
        let post = |hs: &[(&str, &str)]| check_open(&Method::POST, "/api/v1/rollouts", &h(hs)).map_err(|e| e.status);
        let json =
            [("host", "127.0.0.1:8080"), ("content-type", "application/json; charset=utf-8"), ("content-length", "2")];
        assert_eq!(post(&json), Ok(()));
        assert_eq!(post(&[("host", "localhost"), ("content-length", "0")]), Ok(()));
        assert_eq!(post(&[("host", "localhost")]), Ok(()));
        assert_eq!(
            post(&[("content-type", "text/plain"), ("content-length", "5")]),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(post(&[("transfer-encoding", "chunked")]), Err(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert_eq!(post(&[("origin", "null"), json[1], json[2]]), Err(StatusCode::FORBIDDEN));
        assert_eq!(
            post(&[("host", "rebind.evil.example:8080"), json[1], json[2]]),
            Err(StatusCode::MISDIRECTED_REQUEST)
        );
        let slack = [("content-type", "application/x-www-form-urlencoded"), ("content-length", "9")];
        assert_eq!(check_open(&Method::POST, FORM_ROUTE, &h(&slack)).map_err(|e| e.status), Ok(()));
    }
}
