//! Bearer tokens with roles and namespace scopes. Tokens are compared in constant time (over their
//! SHA-256, so the length of a configured token does not leak either).
//!
//! A token's scope (`namespaces` globs) bounds what it sees and drives: a rollout outside it is
//! answered exactly like an unknown id (404), so a token cannot even learn that it exists; creating
//! one there is 403.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::config::{Role, TokenConfig};
use crate::scope::Namespaces;

#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub namespaces: Namespaces,
}

impl Caller {
    /// May this caller see (and, with the operator role, drive) rollouts in `namespace`?
    pub fn sees(&self, namespace: &str) -> bool {
        self.namespaces.allows(namespace)
    }

    /// The rollout `id` in `namespace` as this caller may know it: outside its scope it is not found.
    pub fn check_visible(&self, id: &str, namespace: &str) -> Result<(), ApiError> {
        if self.sees(namespace) { Ok(()) } else { Err(ApiError::not_found(format!("rollout {id} not found"))) }
    }

    /// Creating in `namespace` needs it in scope.
    pub fn check_create(&self, namespace: &str) -> Result<(), ApiError> {
        if self.sees(namespace) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "token {:?} may not create rollouts in namespace {namespace:?} (its namespaces: {})",
            self.name,
            self.namespaces.describe()
        ))
        .field("namespace"))
    }

    /// The Idempotency-Key as stored: per token, so two tokens never share (or read) a replay.
    pub fn idempotency_key(&self, key: &str) -> String {
        format!("{}:{}:{key}", self.name.len(), self.name)
    }
}

#[derive(Clone)]
pub struct Auth {
    tokens: Vec<(String, [u8; 32], Role, Namespaces)>,
}

#[derive(Debug, thiserror::Error)]
#[error("token {name:?}: {message}")]
pub struct AuthConfigError {
    pub name: String,
    pub message: String,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Auth {
    /// Resolve configured tokens (reading `token_env` from `env`). An unset variable is an error: a
    /// daemon that silently drops a token would lock out CI or, worse, run open.
    pub fn from_config(cfg: &[TokenConfig], env: impl Fn(&str) -> Option<String>) -> Result<Auth, AuthConfigError> {
        let mut tokens = Vec::new();
        for t in cfg {
            let err = |m: String| AuthConfigError { name: t.name.clone(), message: m };
            let value = match (&t.token, &t.token_env) {
                (Some(v), None) => v.clone(),
                (None, Some(var)) => env(var).ok_or_else(|| err(format!("environment variable {var} is not set")))?,
                _ => return Err(err("give exactly one of token_env or token".into())),
            };
            if value.len() < 16 {
                return Err(err("token is shorter than 16 characters".into()));
            }
            t.namespaces.validate().map_err(|e| err(e.to_string()))?;
            tokens.push((t.name.clone(), digest(&value), t.role, t.namespaces.clone()));
        }
        Ok(Auth { tokens })
    }

    /// No tokens: every caller is an operator. Only allowed on loopback (checked at start).
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn check(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller { name: "local".into(), role: Role::Operator, namespaces: Namespaces::all() });
        }
        let header = header.ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <token>'"))?;
        let d = digest(token.trim());
        let mut found = None;
        for (name, t, role, namespaces) in &self.tokens {
            if bool::from(t.ct_eq(&d)) {
                found = Some(Caller { name: name.clone(), role: *role, namespaces: namespaces.clone() });
            }
        }
        found.ok_or_else(|| ApiError::unauthorized("invalid token"))
    }
}

/// A caller with at least the viewer role.
pub struct Viewer(pub Caller);
/// A caller with the operator role.
pub struct Operator(pub Caller);

fn caller(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    state.auth.check(header)
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        caller(parts, state).map(Viewer)
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let c = caller(parts, state)?;
        if c.role != Role::Operator {
            return Err(ApiError::forbidden(format!("token {:?} has role viewer; this needs operator", c.name)));
        }
        Ok(Operator(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_roles() {
        let cfg = vec![
            TokenConfig {
                name: "ci".into(),
                token_env: Some("T1".into()),
                token: None,
                role: Role::Operator,
                namespaces: Namespaces(vec!["ai-workflow-*".into()]),
            },
            TokenConfig {
                name: "graf".into(),
                token_env: None,
                token: Some("viewer-token-0123456789".into()),
                role: Role::Viewer,
                namespaces: Namespaces::all(),
            },
        ];
        let a = Auth::from_config(&cfg, |v| (v == "T1").then(|| "operator-token-0123456789".to_string())).unwrap();
        assert_eq!(a.check(Some("Bearer operator-token-0123456789")).unwrap().role, Role::Operator);
        assert_eq!(a.check(Some("Bearer viewer-token-0123456789")).unwrap().name, "graf");
        assert_eq!(a.check(Some("Bearer nope")).unwrap_err().status, 401);
        let ci = a.check(Some("Bearer operator-token-0123456789")).unwrap();
        assert!(ci.sees("ai-workflow-prod") && !ci.sees("payments"));
        assert_eq!(ci.check_visible("X", "payments").unwrap_err().status, 404);
        assert_eq!(ci.check_create("payments").unwrap_err().status, 403);
        let graf = a.check(Some("Bearer viewer-token-0123456789")).unwrap();
        assert_ne!(ci.idempotency_key("k"), graf.idempotency_key("k"));
        // A name ending like another's key prefix cannot collide.
        let x = Caller { name: "a:b".into(), ..graf.clone() };
        let y = Caller { name: "a".into(), ..graf };
        assert_ne!(x.idempotency_key("c"), y.idempotency_key("b:c"));
        assert_eq!(a.check(None).unwrap_err().status, 401);
        assert!(Auth::from_config(&cfg, |_| None).err().is_some_and(|e| e.to_string().contains("T1")));
    }
}
