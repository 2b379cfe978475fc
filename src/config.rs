//! Daemon configuration: a TOML file, every key optional, each overridable by `VANE_<SECTION>_<KEY>`
//! environment variables. Loading (and where each value came from) is in [`load`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Analysis windows shorter than this are widened: a range needs at least two scrapes to have a rate.
pub const DEFAULT_MIN_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub store: StoreConfig,
    pub policies: Policies,
    pub prometheus: Prometheus,
    pub kubernetes: Kubernetes,
    pub slack: Slack,
    pub notifications: Notifications,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    /// Environment variable holding the token (preferred: keeps secrets out of the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// The token itself (for local experiments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    pub listen: String,
    pub tokens: Vec<TokenConfig>,
    /// How long series of finished rollouts stay in /metrics.
    #[serde(with = "humantime_serde")]
    pub metrics_retention: Duration,
    /// HA: the URL other replicas use to reach this one (commands for its rollouts are forwarded
    /// there). Empty: `http://` + `listen`.
    pub advertise: String,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "127.0.0.1:8080".into(),
            tokens: vec![],
            metrics_retention: Duration::from_secs(3600),
            advertise: String::new(),
        }
    }
}

impl Server {
    /// The URL other replicas reach this one at.
    pub fn advertised_url(&self) -> String {
        match self.advertise.trim() {
            "" => format!("http://{}", self.listen),
            url => url.trim_end_matches('/').to_string(),
        }
    }
}

/// Which `Store` backend holds the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded, one replica.
    #[default]
    Sled,
    /// etcd v3: several replicas, rollouts spread over them, fenced by leases.
    Etcd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: Backend,
    /// The sled directory.
    pub path: PathBuf,
    pub etcd: EtcdConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { backend: Backend::Sled, path: "./vane-data".into(), etcd: EtcdConfig::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Every key vane writes starts with this (several vane installations can share one etcd).
    pub prefix: String,
    /// A replica that has not renewed its lease for this long loses its rollouts to the others.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/vane/".into(),
            lease_ttl: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policies {
    pub dir: PathBuf,
}

impl Default for Policies {
    fn default() -> Self {
        Policies { dir: "./policies".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prometheus {
    pub url: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// At most this many queries in flight, across all rollouts.
    pub max_concurrent_queries: usize,
    /// Environment variable holding a bearer token for Prometheus.
    pub bearer_token_env: String,
    pub basic_auth_user: String,
    pub basic_auth_password_env: String,
    pub headers: BTreeMap<String, String>,
    /// Analysis windows shorter than this are widened (a rate needs at least two scrapes in range).
    #[serde(with = "humantime_serde")]
    pub min_window: Duration,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus {
            url: "http://127.0.0.1:9090".into(),
            timeout: Duration::from_secs(5),
            max_concurrent_queries: 16,
            bearer_token_env: String::new(),
            basic_auth_user: String::new(),
            basic_auth_password_env: String::new(),
            headers: BTreeMap::new(),
            min_window: DEFAULT_MIN_WINDOW,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kubernetes {
    pub kubeconfig: String,
    pub context: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Slack {
    pub signing_secret_env: String,
    pub webhook_url_env: String,
}

impl Default for Slack {
    fn default() -> Self {
        Slack {
            signing_secret_env: "VANE_SLACK_SIGNING_SECRET".into(),
            webhook_url_env: "VANE_SLACK_WEBHOOK_URL".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub secret_env: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Notifications {
    pub webhooks: Vec<WebhookConfig>,
    /// Environment variable whose value signs the policies' lifecycle hook requests
    /// (`X-Vane-Signature`); unset → hooks are sent unsigned.
    pub hook_secret_env: String,
}

impl Default for Notifications {
    fn default() -> Self {
        Notifications { webhooks: vec![], hook_secret_env: "VANE_HOOK_SECRET".into() }
    }
}

mod load;

pub use load::{ConfigError, Source, Sources, defaults};

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults_without_file() {
        let c = Config::load(None, vec![]).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.store.path, PathBuf::from("./vane-data"));
        assert_eq!(c.policies.dir, PathBuf::from("./policies"));
        assert_eq!(c.prometheus.timeout, Duration::from_secs(5));
    }

    #[test]
    fn env_overrides_file_and_ignores_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vane.toml");
        std::fs::write(&f, "[server]\nlisten = \"127.0.0.1:9\"\n[prometheus]\ntimeout = \"2s\"\n").unwrap();
        let c = Config::load(
            Some(&f),
            env(&[
                ("VANE_SERVER_LISTEN", "0.0.0.0:8081"),
                ("VANE_PROMETHEUS_TIMEOUT", "7s"),
                ("VANE_SLACK_SIGNING_SECRET", "not-a-config-key"),
                ("VANE_CI_TOKEN", "secret"),
                ("VANE_SERVER_TOKENS", r#"[{ name = "ci", token_env = "VANE_CI_TOKEN", role = "operator" }]"#),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:8081");
        assert_eq!(c.prometheus.timeout, Duration::from_secs(7));
        assert_eq!(c.server.tokens[0].role, Role::Operator);
    }

    #[test]
    fn etcd_store_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vane.toml");
        std::fs::write(
            &f,
            "[store]\nbackend = \"etcd\"\netcd = { endpoints = [\"http://10.0.0.1:2379\"], prefix = \"/x/\" }\n",
        )
        .unwrap();
        let c = Config::load(Some(&f), vec![]).unwrap();
        assert_eq!(c.store.backend, Backend::Etcd);
        assert_eq!(c.store.etcd.prefix, "/x/");
        assert_eq!(c.store.etcd.lease_ttl, Duration::from_secs(5), "default lease");
        let c = Config::load(
            None,
            env(&[
                ("VANE_STORE_BACKEND", "etcd"),
                ("VANE_STORE_ETCD", r#"{ endpoints = ["http://127.0.0.1:1"], lease_ttl = "2s" }"#),
                ("VANE_SERVER_ADVERTISE", "http://vane-1:8080/"),
            ]),
        )
        .unwrap();
        assert_eq!(c.store.etcd.lease_ttl, Duration::from_secs(2));
        assert_eq!(c.store.etcd.prefix, "/vane/");
        assert_eq!(c.server.advertised_url(), "http://vane-1:8080");
        assert_eq!(Config::load(None, vec![]).unwrap().store.backend, Backend::Sled, "sled stays the default");
        std::fs::write(&f, "[store]\nbackend = \"zookeeper\"\n").unwrap();
        let e = Config::load(Some(&f), vec![]).unwrap_err().to_string();
        assert!(e.contains("zookeeper"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vane.toml");
        std::fs::write(&f, "[server]\nlisten_on = \"x\"\n").unwrap();
        let e = Config::load(Some(&f), vec![]).unwrap_err().to_string();
        assert!(e.contains("listen_on"), "{e}");
    }
}
