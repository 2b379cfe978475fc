//! `vane config show`: the effective configuration as TOML, secrets masked, each value followed by
//! where it came from (`default`, `FILE:LINE`, `env VAR`).

use toml::Value;

use crate::config::{Config, Sources};

const MASK: &str = "***";

pub fn render(cfg: &Config, sources: &Sources) -> String {
    let Ok(Value::Table(sections)) = Value::try_from(cfg) else {
        return String::new();
    };
    let mut out = String::from("# The effective configuration; after each value, where it came from.\n");
    for (sec, keys) in &sections {
        let Some(keys) = keys.as_table() else { continue };
        let lines: Vec<(String, String)> = keys
            .iter()
            .map(|(k, v)| (format!("{k} = {}", masked(sec, k, v.clone())), sources.get(sec, k).to_string()))
            .collect();
        let width = lines.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0);
        out.push_str(&format!("\n[{sec}]\n"));
        for (line, source) in lines {
            out.push_str(&format!("{line:<width$}  # {source}\n"));
        }
    }
    out
}

/// Literal tokens, header values (they carry credentials) and webhook URL paths (Slack-style URLs are
/// secrets) are never printed.
fn masked(section: &str, key: &str, mut v: Value) -> Value {
    match (section, key, &mut v) {
        ("server", "tokens", Value::Array(items)) => {
            for t in items.iter_mut().filter_map(Value::as_table_mut) {
                if let Some(tok) = t.get_mut("token") {
                    *tok = Value::String(MASK.into());
                }
            }
        }
        ("prometheus", "headers", Value::Table(h)) => {
            for (_, value) in h.iter_mut() {
                *value = Value::String(MASK.into());
            }
        }
        ("notifications", "webhooks", Value::Array(items)) => {
            for w in items.iter_mut().filter_map(Value::as_table_mut) {
                if let Some(Value::String(url)) = w.get_mut("url") {
                    *url = mask_url(url);
                }
            }
        }
        _ => {}
    }
    v
}

/// `https://hooks.example.com/services/T0/B0/secret` → `https://hooks.example.com/***`.
fn mask_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    if scheme.is_empty() { MASK.into() } else { format!("{scheme}://{host}/{MASK}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_sources_shown() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vane.toml");
        std::fs::write(
            &f,
            "[server]\ntokens = [{ name = \"dev\", token = \"s3cr3t-s3cr3t-s3cr3t\", role = \"operator\" }]\n\
             [prometheus]\nheaders = { Authorization = \"Basic abc\" }\n\
             [notifications]\nwebhooks = [{ url = \"https://user:pw@hooks.example.com/T0/B0/xyz\" }]\n",
        )
        .unwrap();
        let env = vec![("VANE_SERVER_LISTEN".to_string(), "127.0.0.1:9999".to_string())];
        let (cfg, sources) = Config::load_with_sources(Some(&f), env).unwrap();
        let out = render(&cfg, &sources);
        for secret in ["s3cr3t", "Basic abc", "xyz", "pw@"] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        let line = |k: &str| out.lines().find(|l| l.starts_with(k)).unwrap_or_default().to_string();
        assert!(line("listen =").ends_with("# env VANE_SERVER_LISTEN"), "{out}");
        assert!(line("tokens =").ends_with(&format!("# {}:2", f.display())), "{out}");
        assert!(line("tokens =").contains("token = \"***\""), "{out}");
        assert!(line("path =").ends_with("# default"), "{out}");
        assert!(out.contains("https://hooks.example.com/***"), "{out}");
    }
}
