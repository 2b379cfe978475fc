//! The HTTP side of the client commands: calls to the daemon's REST API, errors that map to exit
//! codes, and `ns/service` resolved to a rollout id.

use std::time::Duration;

use super::output::{Doc, s};

/// Exit codes of the client commands (documented in docs/reference/cli.md).
pub mod code {
    /// Done; for `watch`: the rollout Succeeded.
    pub const OK: i32 = 0;
    /// The daemon refused the call, or (`watch`) the rollout RolledBack, was Aborted or Failed.
    pub const FAILED: i32 = 1;
    /// Bad arguments: unknown flag, unreadable file, an id or `ns/service` that names no rollout.
    pub const USAGE: i32 = 2;
    /// `watch --timeout` elapsed before the rollout finished.
    pub const TIMEOUT: i32 = 3;
    /// The daemon could not be reached.
    pub const UNREACHABLE: i32 = 4;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach vane at {url} ({reason}); is `vane serve` running? (set VANE_URL)")]
    Unreachable { url: String, reason: String },
    /// The daemon answered with an error status.
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    pub fn code(&self) -> i32 {
        match self {
            CliError::Unreachable { .. } => code::UNREACHABLE,
            CliError::Api { status: 404, .. } | CliError::Usage(_) => code::USAGE,
            CliError::Api { .. } => code::FAILED,
        }
    }

    /// Worth another try while following a rollout: the daemon is down, restarting or overloaded.
    pub fn is_transient(&self) -> bool {
        matches!(self, CliError::Unreachable { .. } | CliError::Api { status: 500.., .. })
    }
}

pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> Result<Api, CliError> {
        let http = crate::http::client_builder()
            .timeout(timeout)
            .build()
            .map_err(|e| CliError::Usage(format!("HTTP client: {e}")))?;
        Ok(Api { http, base: url.trim_end_matches('/').to_string(), token })
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, String)],
    ) -> Result<Doc, CliError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let unreachable = |e: reqwest::Error| CliError::Unreachable { url: self.base.clone(), reason: short(&e) };
        let res = req.send().await.map_err(unreachable)?;
        let status = res.status();
        let text = res.text().await.map_err(unreachable)?;
        let doc: Doc = serde_json::from_str(&text).unwrap_or(Doc::String(text));
        if !status.is_success() {
            let e = doc.get("error");
            let field = e.map(|e| s(e, "field")).filter(|f| !f.is_empty()).map(|f| format!(" (field: {f})"));
            let message = match e.map(|e| s(e, "message")).filter(|m| !m.is_empty()) {
                Some(m) => m,
                None => serde_json::to_string(&doc).unwrap_or_default(),
            };
            return Err(CliError::Api { status: status.as_u16(), message: message + &field.unwrap_or_default() });
        }
        Ok(doc)
    }

    pub async fn get(&self, path: &str) -> Result<Doc, CliError> {
        self.call(reqwest::Method::GET, path, None, &[]).await
    }

    /// A rollout id, or `namespace/service`: that service's active rollout, else its newest.
    pub async fn resolve(&self, id: &str) -> Result<String, CliError> {
        let Some((ns, svc)) = id.split_once('/') else {
            return Ok(id.to_string());
        };
        if ns.is_empty() || svc.is_empty() {
            return Err(CliError::Usage(format!("{id:?}: give a rollout id or namespace/service")));
        }
        let path = format!("/api/v1/rollouts?namespace={}&service={}&limit=50", urlencode(ns), urlencode(svc));
        let list = self.get(&path).await?;
        let items = list.get("items").and_then(Doc::as_sequence).cloned().unwrap_or_default();
        let terminal = |r: &Doc| matches!(s(r, "phase").as_str(), "Succeeded" | "RolledBack" | "Aborted" | "Failed");
        let pick = items.iter().find(|r| !terminal(r)).or(items.first());
        pick.map(|r| s(r, "id")).ok_or_else(|| CliError::Usage(format!("no rollout for {ns}/{svc}")))
    }
}

/// The innermost cause of a connection error ("Connection refused"), not reqwest's whole chain.
fn short(e: &reqwest::Error) -> String {
    if e.is_timeout() { "timed out".into() } else { crate::http::root_cause(e) }
}

pub fn urlencode(v: &str) -> String {
    serde_urlencoded::to_string([("", v)]).map(|s| s[1..].to_string()).unwrap_or_default()
}
