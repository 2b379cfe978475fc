//! Daemon configuration: a TOML file, every key optional, each overridable by `VANE_<SECTION>_<KEY>`
//! environment variables. Loading (and where each value came from) is in [`load`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scope::Namespaces;

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
    pub routers: RouterProfiles,
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
    /// Namespaces (globs) this token sees and drives; rollouts elsewhere do not exist for it (404) and
    /// creating one there is refused (403). Default: every namespace.
    #[serde(default, skip_serializing_if = "Namespaces::is_all")]
    pub namespaces: Namespaces,
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
    /// When set, `/metrics` is served only here (with copies of the probes), not on `listen`: the API
    /// port then shows nothing to unauthenticated callers, and a NetworkPolicy can admit scrapes
    /// from the monitoring namespace alone.
    pub metrics_listen: String,
    // Limits (see [`ServerLimits`]); flat keys of `[server]` as SPEC §2 spells them.
    /// A connection that has not sent a complete request head within this is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A request not answered within this gets a 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Open connections beyond this are closed at once.
    pub max_connections: usize,
    /// Creating a rollout while this many are active is a 429.
    pub max_active_rollouts: usize,
    /// The smallest `overrides.interval` a request may set (422 below it).
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
}

impl Default for Server {
    fn default() -> Self {
        let l = ServerLimits::default();
        Server {
            listen: "127.0.0.1:8080".into(),
            tokens: vec![],
            metrics_retention: Duration::from_secs(3600),
            advertise: String::new(),
            metrics_listen: String::new(),
            header_read_timeout: l.header_read_timeout,
            request_timeout: l.request_timeout,
            max_connections: l.max_connections,
            max_active_rollouts: l.max_active_rollouts,
            min_interval: l.min_interval,
        }
    }
}

/// The server's limits (issue 10: every limit explicit), as the API and the listener use them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_active_rollouts: usize,
    pub min_interval: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_active_rollouts: 1000,
            min_interval: Duration::from_secs(5),
        }
    }
}

impl Server {
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections,
            max_active_rollouts: self.max_active_rollouts,
            min_interval: self.min_interval,
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
    /// Finished rollouts, their events and idempotency keys older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Sled,
            path: "./vane-data".into(),
            retention: Duration::from_secs(30 * 24 * 3600),
            etcd: EtcdConfig::default(),
        }
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
    /// PEM file of the CA that signed the etcd members' certificates (needed for `https://` endpoints).
    pub ca_file: String,
    /// Client certificate and key (PEM files), for an etcd that requires them (`--client-cert-auth`).
    pub cert_file: String,
    pub key_file: String,
    /// etcd user (after `etcdctl auth enable`); the password is read from `password_file` or the
    /// environment variable `password_env`, never written in the configuration.
    pub username: String,
    pub password_file: String,
    pub password_env: String,
}

impl EtcdConfig {
    /// The TLS and credential settings fit together (the files themselves are read at connect).
    pub fn check(&self) -> Result<(), String> {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err("store.etcd: cert_file and key_file go together".into());
        }
        if self.endpoints.iter().any(|e| e.starts_with("https://")) && self.ca_file.is_empty() {
            return Err("store.etcd.ca_file: https endpoints need the CA that signed etcd's certificates".into());
        }
        let password = !self.password_file.is_empty() || !self.password_env.is_empty();
        if self.username.is_empty() == password {
            return Err("store.etcd: username needs password_file or password_env (and they need a username)".into());
        }
        if !self.password_file.is_empty() && !self.password_env.is_empty() {
            return Err("store.etcd: give password_file or password_env, not both".into());
        }
        Ok(())
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/vane/".into(),
            lease_ttl: Duration::from_secs(5),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            username: String::new(),
            password_file: String::new(),
            password_env: String::new(),
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kubernetes {
    pub kubeconfig: String,
    pub context: String,
    /// The namespaces (globs) vane may touch at all; a rollout elsewhere is refused at create (422).
    pub namespaces: Namespaces,
    /// Patch only objects labelled `vane.dev/managed: "true"` (or created by vane); any other object
    /// fails the rollout before traffic moves.
    pub require_opt_in: bool,
}

impl Default for Kubernetes {
    fn default() -> Self {
        Kubernetes {
            kubeconfig: String::new(),
            context: String::new(),
            namespaces: Namespaces::default(),
            require_opt_in: true,
        }
    }
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

/// `[routers.exec.NAME]` and `[routers.nginx.NAME]`: the commands and files a rollout may use, by
/// name. A request names a profile and never a command or a path (SPEC §2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterProfiles {
    pub exec: BTreeMap<String, ExecProfile>,
    pub nginx: BTreeMap<String, NginxProfile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProfile {
    /// argv; run without a shell.
    pub command: Vec<String>,
    /// Names of daemon environment variables the command inherits (besides PATH and VANE_*).
    #[serde(default)]
    pub env: Vec<String>,
    /// Namespaces (globs) whose rollouts may use this profile.
    #[serde(default = "any_namespace")]
    pub namespaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NginxProfile {
    pub config_file: PathBuf,
    pub variable: String,
    #[serde(default)]
    pub test: Option<Vec<String>>,
    pub reload: Vec<String>,
    #[serde(default = "any_namespace")]
    pub namespaces: Vec<String>,
}

fn any_namespace() -> Vec<String> {
    vec!["*".into()]
}

impl RouterProfiles {
    /// Every profile well-formed: commands non-empty, the NGINX variable a plain name, a file named.
    /// The error names the kind (`exec`, `nginx`: which `routers.*` key to blame) and says what.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.check().map_err(|m| (if m.starts_with("routers.exec") { "exec" } else { "nginx" }, m))
    }

    fn check(&self) -> Result<(), String> {
        for (name, p) in &self.exec {
            if p.command.first().is_none_or(|c| c.trim().is_empty()) {
                return Err(format!("routers.exec.{name}.command: give the command as an argv list"));
            }
        }
        for (name, p) in &self.nginx {
            if p.variable.is_empty() || !p.variable.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("routers.nginx.{name}.variable: must be an NGINX variable name ([A-Za-z0-9_]+)"));
            }
            if p.config_file.file_name().is_none() {
                return Err(format!("routers.nginx.{name}.config_file: must name a file"));
            }
            if p.reload.first().is_none_or(|c| c.trim().is_empty()) {
                return Err(format!("routers.nginx.{name}.reload: give the reload command as an argv list"));
            }
            if p.test.as_ref().is_some_and(|t| t.first().is_none_or(|c| c.trim().is_empty())) {
                return Err(format!("routers.nginx.{name}.test: leave test out or give an argv list"));
            }
        }
        Ok(())
    }
}

mod load;

pub use load::{ConfigError, Source, Sources, defaults};

impl Config {
    /// Every namespace glob (tokens, `[kubernetes] namespaces`) is well-formed.
    fn check_scopes(&self) -> Result<(), String> {
        self.kubernetes.namespaces.validate().map_err(|e| format!("kubernetes.namespaces: {e}"))?;
        for t in &self.server.tokens {
            t.namespaces.validate().map_err(|e| format!("server.tokens {:?}: {e}", t.name))?;
        }
        Ok(())
    }
}

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
    fn etcd_tls_and_credentials_must_fit_together_and_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vane.toml");
        let with = |etcd: &str| {
            std::fs::write(&f, format!("[store]\nbackend = \"etcd\"\netcd = {{ {etcd} }}\n")).unwrap();
            Config::load(Some(&f), vec![]).map(|c| c.store.etcd).map_err(|e| e.to_string())
        };
        let ok = with(
            r#"endpoints = ["https://etcd:2379"], ca_file = "/tls/ca.crt", cert_file = "/tls/c.crt", key_file = "/tls/c.key", username = "vane", password_env = "ETCD_PW""#,
        )
        .unwrap();
        assert_eq!((ok.username.as_str(), ok.password_env.as_str()), ("vane", "ETCD_PW"));
        for (etcd, says) in [
            (r#"endpoints = ["https://etcd:2379"]"#, "ca_file"),
            (r#"cert_file = "/tls/c.crt""#, "cert_file and key_file"),
            (r#"username = "vane""#, "password_file or password_env"),
            (r#"password_file = "/pw""#, "password_file or password_env"),
            (r#"username = "v", password_file = "/pw", password_env = "X""#, "not both"),
        ] {
            let e = with(etcd).unwrap_err();
            assert!(e.contains(says) && e.contains(&format!("{}:3", f.display())), "{etcd}: {e}");
        }
    }

    #[test]
    fn kubernetes_reach_defaults_to_opt_in_everywhere_and_globs_are_checked() {
        let c = Config::load(None, vec![]).unwrap();
        assert!(c.kubernetes.require_opt_in);
        assert!(c.kubernetes.namespaces.is_all());
        let c = Config::load(
            None,
            env(&[
                ("VANE_KUBERNETES_NAMESPACES", r#"["ai-workflow-*"]"#),
                ("VANE_SERVER_TOKENS", r#"[{ name = "a", token = "x", role = "viewer", namespaces = ["team-a-*"] }]"#),
            ]),
        )
        .unwrap();
        assert!(c.kubernetes.namespaces.allows("ai-workflow-prod") && !c.kubernetes.namespaces.allows("payments"));
        assert!(c.server.tokens[0].namespaces.allows("team-a-x"));
        let e = Config::load(None, env(&[("VANE_KUBERNETES_NAMESPACES", r#"["Prod/x"]"#)])).unwrap_err().to_string();
        assert!(e.contains("kubernetes.namespaces") && e.contains("Prod/x"), "{e}");
    }

    #[test]
    fn the_shipped_deploy_config_loads_and_reaches_no_namespace_by_itself() {
        let f = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/vane.toml");
        let c = Config::load(Some(&f), vec![]).unwrap();
        assert!(c.kubernetes.require_opt_in);
        assert!(!c.kubernetes.namespaces.allows("default"), "overlays grant namespaces");
        assert_eq!(c.server.metrics_listen, "0.0.0.0:9102");
    }

    #[test]
    fn router_profiles_and_limits_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vane.toml");
        std::fs::write(
            &f,
            "[server]\nmax_active_rollouts = 7\n[store]\nretention = \"1h\"\n\
             [routers.nginx.edge]\nconfig_file = \"/etc/nginx/vane/a.conf\"\nvariable = \"up\"\nreload = [\"nginx\", \"-s\", \"reload\"]\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&f),
            env(&[
                ("VANE_ROUTERS_EXEC", r#"{ lb = { command = ["/bin/lb", "--pool"], env = ["LB_KEY"] } }"#),
                ("VANE_SERVER_HEADER_READ_TIMEOUT", "2s"),
            ]),
        )
        .unwrap();
        assert_eq!(c.routers.exec["lb"].command, ["/bin/lb", "--pool"]);
        assert_eq!(c.routers.exec["lb"].namespaces, ["*"], "every namespace by default");
        assert_eq!(c.routers.nginx["edge"].variable, "up");
        let l = c.server.limits();
        assert_eq!((l.max_active_rollouts, l.header_read_timeout), (7, Duration::from_secs(2)));
        assert_eq!((l.min_interval, l.max_connections), (Duration::from_secs(5), 1024));
        assert_eq!(c.store.retention, Duration::from_secs(3600));
        assert_eq!(Config::default().store.retention, Duration::from_secs(30 * 24 * 3600));
    }

    #[test]
    fn a_bad_profile_is_an_error_naming_it() {
        let e = Config::load(None, env(&[("VANE_ROUTERS_EXEC", r#"{ lb = { command = [] } }"#)])).unwrap_err();
        assert!(e.to_string().contains("routers.exec.lb.command"), "{e}");
        let bad = r#"{ edge = { config_file = "/x/a.conf", variable = "a;b", reload = ["true"] } }"#;
        let e = Config::load(None, env(&[("VANE_ROUTERS_NGINX", bad)])).unwrap_err();
        assert!(e.to_string().contains("routers.nginx.edge.variable"), "{e}");
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
