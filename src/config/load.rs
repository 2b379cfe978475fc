//! Loading the configuration: the file, then `VANE_<SECTION>_<KEY>` variables, each typed by the
//! field it sets (`VANE_PROMETHEUS_BASIC_AUTH_USER=1234` is the string "1234"). Errors name the
//! file's line and column or the variable; every value remembers where it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use toml::{Table, Value};

use super::Config;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}:{line}:{column}: {message}")]
    File { path: String, line: usize, column: usize, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: String, line: usize },
    Env(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line } => write!(f, "{path}:{line}"),
            Source::Env(var) => write!(f, "env {var}"),
        }
    }
}

/// The source of every `section.key` that did not keep its default.
#[derive(Debug, Clone, Default)]
pub struct Sources(BTreeMap<(String, String), Source>);

impl Sources {
    pub fn get(&self, section: &str, key: &str) -> &Source {
        self.0.get(&(section.to_string(), key.to_string())).unwrap_or(&Source::Default)
    }

    fn set(&mut self, section: &str, key: &str, s: Source) {
        self.0.insert((section.to_string(), key.to_string()), s);
    }
}

/// Every section with every key at its default value, in the order of the types. It is the list of
/// keys that exist (for `VANE_*` variables and the reference docs) and the type each value has.
pub fn defaults() -> Table {
    match Value::try_from(Config::default()) {
        Ok(Value::Table(t)) => t,
        // Config serialises to a table by construction.
        _ => Table::new(),
    }
}

/// `VANE_SERVER_LISTEN` → ("server", "listen"), only for keys the config has.
pub fn env_key(var: &str) -> Option<(String, String)> {
    let rest = var.strip_prefix("VANE_")?.to_ascii_lowercase();
    defaults().iter().find_map(|(sec, keys)| {
        let key = rest.strip_prefix(sec.as_str())?.strip_prefix('_')?;
        keys.as_table()?.contains_key(key).then(|| (sec.clone(), key.to_string()))
    })
}

impl Config {
    /// Load from an optional file, then apply `VANE_*` overrides from `env`.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        Self::load_with_sources(path, env).map(|(c, _)| c)
    }

    /// [`Config::load`], also telling where each value came from.
    pub fn load_with_sources(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Sources), ConfigError> {
        let defaults = defaults();
        let mut sources = Sources::default();
        let mut table = Table::new();
        if let Some(p) = path {
            let shown = p.display().to_string();
            let src = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                path: shown.clone(),
                message: if e.kind() == std::io::ErrorKind::NotFound { "no such file".into() } else { e.to_string() },
            })?;
            // The file alone first: toml locates its errors (syntax, unknown keys, wrong types).
            let located = |e: toml::de::Error| {
                let (line, column) = line_col(&src, e.span().map(|s| s.start).unwrap_or(0));
                ConfigError::File { path: shown.clone(), line, column, message: e.message().trim().to_string() }
            };
            toml::from_str::<Config>(&src).map_err(located)?;
            let spanned = toml::de::DeTable::parse(&src).map_err(located)?;
            for (sec, v) in spanned.get_ref() {
                if let toml::de::DeValue::Table(t) = v.get_ref() {
                    for k in t.keys() {
                        let (line, _) = line_col(&src, k.span().start);
                        sources.set(sec.get_ref(), k.get_ref(), Source::File { path: shown.clone(), line });
                    }
                }
            }
            table = src.parse::<Table>().map_err(located)?;
        }
        let mut overrides: Vec<(String, String, String, String)> =
            env.into_iter().filter_map(|(var, value)| env_key(&var).map(|(sec, key)| (var, sec, key, value))).collect();
        overrides.sort();
        for (var, sec, key, value) in overrides {
            let template = defaults.get(&sec).and_then(|s| s.get(&key)).unwrap_or(&Value::Boolean(false));
            let v = typed(template, &value).map_err(|message| ConfigError::Env { var: var.clone(), message })?;
            if let Value::Table(t) = table.entry(sec.clone()).or_insert_with(|| Value::Table(Table::new())) {
                t.insert(key.clone(), v);
            }
            sources.set(&sec, &key, Source::Env(var));
        }
        let cfg = serde_path_to_error::deserialize::<_, Config>(Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let mut parts = path.split(['.', '[']);
            let (sec, key) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            located(&sources, sec, key, &path, e.into_inner().to_string())
        })?;
        cfg.check_scopes().map_err(|message| ConfigError::Read { path: "configuration".into(), message })?;
        cfg.routers.validate().map_err(|(kind, message)| located(&sources, "routers", kind, "routers", message))?;
        cfg.store.etcd.check().map_err(|message| located(&sources, "store", "etcd", "store.etcd", message))?;
        Ok((cfg, sources))
    }
}

/// An error about `sec.key` (`path` in full), at the line or the variable that set it.
fn located(sources: &Sources, sec: &str, key: &str, path: &str, message: String) -> ConfigError {
    match sources.get(sec, key) {
        Source::Env(var) => ConfigError::Env { var: var.clone(), message },
        Source::File { path, line } => ConfigError::File { path: path.clone(), line: *line, column: 1, message },
        Source::Default => ConfigError::Read { path: "configuration".into(), message: format!("{path}: {message}") },
    }
}

/// An environment value as the type of the field it sets: strings stay strings, numbers and booleans
/// are parsed, lists and tables are TOML (`[{ name = "ci", token_env = "CI_TOKEN", role = "operator" }]`).
fn typed(template: &Value, raw: &str) -> Result<Value, String> {
    let toml_value = || {
        format!("v = {raw}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .ok_or_else(|| "not a TOML value".to_string())
    };
    match template {
        Value::String(_) => Ok(Value::String(raw.to_string())),
        Value::Integer(_) => {
            raw.trim().parse().map(Value::Integer).map_err(|_| format!("expected an integer, got {raw:?}"))
        }
        Value::Float(_) => raw.trim().parse().map(Value::Float).map_err(|_| format!("expected a number, got {raw:?}")),
        Value::Boolean(_) => {
            raw.trim().parse().map(Value::Boolean).map_err(|_| format!("expected true or false, got {raw:?}"))
        }
        Value::Array(_) => match toml_value() {
            Ok(v @ Value::Array(_)) => Ok(v),
            _ => Err(format!("expected a TOML list such as [{{ name = \"ci\", ... }}], got {raw:?}")),
        },
        Value::Table(_) => match toml_value() {
            Ok(v @ Value::Table(_)) => Ok(v),
            _ => Err(format!("expected a TOML inline table such as {{ X-Scope-OrgID = \"tenant\" }}, got {raw:?}")),
        },
        Value::Datetime(_) => toml_value(),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vane.toml");
        std::fs::write(&f, text).unwrap();
        (dir, f)
    }

    #[test]
    fn env_values_are_typed_by_the_field() {
        let c = Config::load(None, env(&[("VANE_PROMETHEUS_BASIC_AUTH_USER", "1234")])).unwrap();
        assert_eq!(c.prometheus.basic_auth_user, "1234");
        let c = Config::load(None, env(&[("VANE_PROMETHEUS_MAX_CONCURRENT_QUERIES", "4")])).unwrap();
        assert_eq!(c.prometheus.max_concurrent_queries, 4);
        let e = Config::load(None, env(&[("VANE_PROMETHEUS_MAX_CONCURRENT_QUERIES", "many")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable VANE_PROMETHEUS_MAX_CONCURRENT_QUERIES: expected an integer, got \"many\""
        );
    }

    #[test]
    fn a_bad_env_value_names_the_variable() {
        let (_d, f) = file("[prometheus]\ntimeout = \"2s\"\n");
        let e = Config::load(Some(&f), env(&[("VANE_PROMETHEUS_TIMEOUT", "soon")])).unwrap_err();
        assert!(e.to_string().starts_with("environment variable VANE_PROMETHEUS_TIMEOUT: "), "{e}");
    }

    #[test]
    fn file_errors_name_line_and_column() {
        let (_d, f) = file("[server]\nlisten = \"127.0.0.1:9\"\n\n[prometheus]\ntimeout = 5\n");
        let e = Config::load(Some(&f), vec![]).unwrap_err();
        let shown = format!("{}:5:11: ", f.display());
        assert!(e.to_string().starts_with(&shown), "{e}");
        let (_d, f) = file("[server]\nlisten_on = \"x\"\n");
        let e = Config::load(Some(&f), vec![]).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:2:1: unknown field `listen_on`", f.display())), "{e}");
        let e = Config::load(Some(Path::new("/nonexistent/vane.toml")), vec![]).unwrap_err();
        assert_eq!(e.to_string(), "/nonexistent/vane.toml: no such file");
    }

    #[test]
    fn sources_say_default_file_line_or_variable() {
        let (_d, f) = file("# comment\n[server]\nlisten = \"127.0.0.1:9\"\nmetrics_retention = \"5m\"\n");
        let (c, s) = Config::load_with_sources(Some(&f), env(&[("VANE_SERVER_METRICS_RETENTION", "10m")])).unwrap();
        assert_eq!(c.server.metrics_retention, std::time::Duration::from_secs(600));
        assert_eq!(s.get("server", "listen"), &Source::File { path: f.display().to_string(), line: 3 });
        assert_eq!(s.get("server", "metrics_retention"), &Source::Env("VANE_SERVER_METRICS_RETENTION".into()));
        assert_eq!(s.get("store", "path"), &Source::Default);
    }
}
