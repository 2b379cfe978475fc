//! The Prometheus client of the analysis: instant queries at the evaluation time, a per-query
//! timeout, optional bearer/basic auth and extra headers, and a process-wide bound on queries in
//! flight so thousands of rollouts analysing at once queue here instead of overloading Prometheus.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_http_query::Client;
use prometheus_http_query::response::Data;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Semaphore;

use crate::config;
use crate::rollout::Millis;
use crate::telemetry::Metrics;

/// Building the client from the `[prometheus]` config failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("prometheus.url {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("prometheus.{key}: environment variable {var} is not set")]
    MissingEnv { key: &'static str, var: String },
    #[error("prometheus.headers: {name:?}: {message}")]
    Header { name: String, message: String },
    #[error("prometheus: building the HTTP client: {0}")]
    Http(String),
}

/// Why a query has no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// Prometheus could not be reached, timed out or answered something that is not its API.
    #[error("prometheus unreachable: {0}")]
    Unreachable(String),
    /// Prometheus rejected the query (bad PromQL: `bad_data`) or failed to run it.
    #[error("prometheus rejected the query: {0}")]
    Rejected(String),
}

/// One query's answer as a single number.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Value(f64),
    /// An empty result: the series does not exist (yet) in the window.
    Empty,
    /// Several series where one is expected (e.g. a custom query without `sum`).
    Ambiguous(Vec<String>),
}

#[derive(Clone)]
pub struct PromClient {
    client: Client,
    permits: Arc<Semaphore>,
    timeout: Duration,
    metrics: Option<Arc<Metrics>>,
}

impl PromClient {
    /// A client for `[prometheus]`; `env` looks up the secrets named by `*_env` keys.
    pub fn from_config(
        cfg: &config::Prometheus,
        env: impl Fn(&str) -> Option<String>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<PromClient, ConfigError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let herr = |m: String| ConfigError::Header { name: name.clone(), message: m };
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| herr(e.to_string()))?;
            let v = HeaderValue::from_str(value).map_err(|e| herr(e.to_string()))?;
            headers.insert(n, v);
        }
        if let Some(auth) = authorization(cfg, &env)? {
            let mut v = HeaderValue::from_str(&auth)
                .map_err(|e| ConfigError::Header { name: "Authorization".into(), message: e.to_string() })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let http = crate::http::client_builder()
            .default_headers(headers)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| ConfigError::Http(e.to_string()))?;
        let client = Client::from(http, &cfg.url)
            .map_err(|e| ConfigError::Url { url: cfg.url.clone(), message: e.to_string() })?;
        Ok(PromClient {
            client,
            permits: Arc::new(Semaphore::new(cfg.max_concurrent_queries.max(1))),
            timeout: cfg.timeout,
            metrics,
        })
    }

    /// Evaluate `query` at `at` (ms since the epoch) and reduce the answer to one number.
    pub async fn scalar(&self, query: &str, at: Millis) -> Result<Scalar, QueryError> {
        Ok(match self.query(query, at).await? {
            Data::Scalar(s) => Scalar::Value(s.value()),
            Data::Vector(v) if v.is_empty() => Scalar::Empty,
            Data::Vector(v) if v.len() == 1 => Scalar::Value(v[0].sample().value()),
            Data::Vector(v) => Scalar::Ambiguous(v.iter().map(|s| labels(s.metric())).collect()),
            Data::Matrix(m) => Scalar::Ambiguous(m.iter().map(|s| labels(s.metric())).collect()),
        })
    }

    /// Evaluate `query` at `at` and return each series' value of `label` with its sample (e.g. the
    /// `le` buckets of a histogram). A series without the label is left out.
    pub async fn by_label(&self, query: &str, label: &str, at: Millis) -> Result<Vec<(String, f64)>, QueryError> {
        Ok(match self.query(query, at).await? {
            Data::Vector(v) => {
                v.iter().filter_map(|s| Some((s.metric().get(label)?.clone(), s.sample().value()))).collect()
            }
            Data::Scalar(_) | Data::Matrix(_) => vec![],
        })
    }

    async fn query(&self, query: &str, at: Millis) -> Result<Data, QueryError> {
        // The semaphore is never closed; if it were, querying without a permit is the safe fallback.
        let _permit = self.permits.acquire().await.ok();
        let started = Instant::now();
        let timeout_ms = self.timeout.as_millis().clamp(1, i64::MAX as u128) as i64;
        let request = self
            .client
            .query(query)
            .query("time", format!("{}.{:03}", at / 1000, at % 1000))
            .timeout(timeout_ms)
            .post();
        // Belt and braces: reqwest's own timeout covers the request, this one the whole exchange.
        let result = match tokio::time::timeout(self.timeout + Duration::from_millis(250), request).await {
            Ok(r) => r.map_err(classify),
            Err(_) => {
                Err(QueryError::Unreachable(format!("no answer within {}", humantime::format_duration(self.timeout))))
            }
        };
        if let Some(m) = &self.metrics {
            m.prometheus_query_seconds.observe(started.elapsed().as_secs_f64());
            if result.is_err() {
                m.prometheus_query_errors.inc();
            }
        }
        Ok(result?.into_inner().0)
    }
}

fn authorization(
    cfg: &config::Prometheus,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    if !cfg.bearer_token_env.is_empty() {
        let token = env(&cfg.bearer_token_env)
            .ok_or_else(|| ConfigError::MissingEnv { key: "bearer_token_env", var: cfg.bearer_token_env.clone() })?;
        return Ok(Some(format!("Bearer {}", token.trim())));
    }
    if !cfg.basic_auth_user.is_empty() {
        let password = if cfg.basic_auth_password_env.is_empty() {
            String::new()
        } else {
            env(&cfg.basic_auth_password_env).ok_or_else(|| ConfigError::MissingEnv {
                key: "basic_auth_password_env",
                var: cfg.basic_auth_password_env.clone(),
            })?
        };
        return Ok(Some(format!("Basic {}", base64(format!("{}:{password}", cfg.basic_auth_user).as_bytes()))));
    }
    Ok(None)
}

fn classify(e: prometheus_http_query::Error) -> QueryError {
    match e {
        prometheus_http_query::Error::Prometheus(p) if !(p.is_timeout() || p.is_unavailable() || p.is_canceled()) => {
            QueryError::Rejected(format!("{}: {}", p.error_type(), p.message()))
        }
        other => {
            // Include the transport's cause (connection refused, timeout, HTTP status) for the operator.
            QueryError::Unreachable(crate::http::full_chain(&other))
        }
    }
}

fn labels(m: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = m.iter().collect();
    let inner: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// Standard base64 (RFC 4648) for the basic-auth header.
fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn missing_secret_env_is_a_config_error() {
        let cfg = config::Prometheus { bearer_token_env: "PROM_TOKEN".into(), ..Default::default() };
        let e = PromClient::from_config(&cfg, |_| None, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("PROM_TOKEN"), "{e}");
        let cfg = config::Prometheus { url: "not a url".into(), ..Default::default() };
        assert!(matches!(PromClient::from_config(&cfg, |_| None, None), Err(ConfigError::Url { .. })));
        let mut cfg = config::Prometheus::default();
        cfg.headers.insert("bad header".into(), "x".into());
        assert!(matches!(PromClient::from_config(&cfg, |_| None, None), Err(ConfigError::Header { .. })));
    }
}
