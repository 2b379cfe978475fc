//! Secret redaction: every secret value the daemon's configuration names, removed from text that
//! leaves the process through a rollout message, an event, Slack, a webhook or a log line.
//!
//! A command's output (exec router, NGINX test/reload) and a hook's answer are written by programs
//! vane does not control; they may print the environment or echo a credential. Redacting where that
//! text enters vane — before it is stored — keeps it out of every later reader at once.

use std::borrow::Cow;

use crate::config::Config;

/// What a redacted secret is replaced with.
pub const MASK: &str = "[REDACTED]";

/// Shorter values are not treated as secrets: masking every "on" or "1" would garble messages, and
/// a credential that short protects nothing.
const MIN_SECRET_LEN: usize = 4;

/// Profile `env` variables that hold no secrets (their values are left alone).
const PLAIN_VARIABLES: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "SHELL", "TMPDIR", "PWD"];

#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret containing another is masked whole.
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        let mut secrets: Vec<String> =
            secrets.into_iter().map(|s| s.trim().to_string()).filter(|s| s.len() >= MIN_SECRET_LEN).collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Redactor { secrets }
    }

    /// Every secret the configuration names, read through `env`: API tokens, webhook and hook
    /// secrets, the Slack signing secret and webhook URL, Prometheus credentials and extra headers,
    /// and the variables exec profiles pass to their commands (except plain ones like PATH).
    pub fn from_config(cfg: &Config, env: impl Fn(&str) -> Option<String>) -> Redactor {
        let mut vars: Vec<&str> = Vec::new();
        let mut values: Vec<String> = Vec::new();
        for t in &cfg.server.tokens {
            vars.extend(t.token_env.as_deref());
            values.extend(t.token.clone());
        }
        vars.extend(cfg.notifications.webhooks.iter().map(|w| w.secret_env.as_str()));
        vars.push(&cfg.notifications.hook_secret_env);
        vars.push(&cfg.slack.signing_secret_env);
        vars.push(&cfg.slack.webhook_url_env);
        vars.push(&cfg.prometheus.bearer_token_env);
        vars.push(&cfg.prometheus.basic_auth_password_env);
        values.extend(cfg.prometheus.headers.values().cloned());
        for p in cfg.routers.exec.values() {
            vars.extend(p.env.iter().map(String::as_str).filter(|v| !PLAIN_VARIABLES.contains(v)));
        }
        values.extend(vars.into_iter().filter(|v| !v.is_empty()).filter_map(&env));
        Redactor::new(values)
    }

    /// `text` with every secret replaced by [`MASK`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), MASK));
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// The last `max` characters of `text` after redaction (a secret is masked before it could be cut
/// in half), without control characters other than newlines and tabs.
pub fn tail(redactor: &Redactor, text: &str, max: usize) -> String {
    let clean = redactor.redact(text.trim());
    let chars: Vec<char> = clean.chars().filter(|c| !c.is_control() || *c == '\n' || *c == '\t').collect();
    chars[chars.len().saturating_sub(max)..].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ExecProfile, TokenConfig, WebhookConfig};

    #[test]
    fn masks_every_configured_secret_longest_first() {
        let mut cfg = Config::default();
        cfg.server.tokens = vec![TokenConfig {
            name: "ci".into(),
            token_env: Some("CI_TOKEN".into()),
            token: Some("literal-token".into()),
            role: crate::config::Role::Operator,
            namespaces: Default::default(),
        }];
        cfg.notifications.webhooks = vec![WebhookConfig { url: "http://x".into(), secret_env: "HOOK".into() }];
        cfg.prometheus.headers.insert("X-Scope".into(), "tenant-secret".into());
        cfg.routers.exec.insert(
            "lb".into(),
            ExecProfile { command: vec!["x".into()], env: vec!["PATH".into(), "LB_KEY".into()], namespaces: vec![] },
        );
        let env = |v: &str| {
            let value = match v {
                "CI_TOKEN" => "ci-secret-123",
                "HOOK" => "ci-secret-1234567",
                "VANE_SLACK_SIGNING_SECRET" => "slack-sign",
                "VANE_SLACK_WEBHOOK_URL" => "https://hooks.slack.test/T/B/xyz",
                "LB_KEY" => "lb-api-key",
                "PATH" => "/usr/bin:/bin",
                "VANE_HOOK_SECRET" => "on",
                _ => return None,
            };
            Some(value.to_string())
        };
        let r = Redactor::from_config(&cfg, env);
        let text = "a ci-secret-1234567 b ci-secret-123 c literal-token d slack-sign e \
                    https://hooks.slack.test/T/B/xyz f tenant-secret g lb-api-key h /usr/bin:/bin on";
        assert_eq!(
            r.redact(text),
            "a [REDACTED] b [REDACTED] c [REDACTED] d [REDACTED] e [REDACTED] f [REDACTED] g [REDACTED] h \
             /usr/bin:/bin on"
        );
        assert!(matches!(r.redact("nothing to hide"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_tail_never_shows_half_a_secret() {
        let r = Redactor::new(["abcdefgh".to_string()]);
        let text = format!("xx abcdefgh{}", "y".repeat(5));
        assert_eq!(tail(&r, &text, 9), "TED]yyyyy");
        assert!(!tail(&r, &text, 12).contains("efgh"));
    }
}
