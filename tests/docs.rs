//! The docs in the repository are complete and self-contained: every link resolves inside the
//! repository, and the references name every config key, policy field, CLI flag, API route and metric
//! the code has. The CLI reference's command section is generated (UPDATE_DOCS=1 rewrites it).

use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn markdown_files() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn links_stay_inside_the_repository() {
    let repo = root().canonicalize().unwrap();
    let mut bad = vec![];
    for f in markdown_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.strip_prefix(root()).unwrap().display().to_string();
        for word in ["../shared", "SPEC", "DESIGN rule", "DESIGN.md"] {
            if text.contains(word) {
                bad.push(format!("{name}: mentions {word:?}, which a clone of the repository does not have"));
            }
        }
        for (i, line) in text.lines().enumerate() {
            if line.contains("](http") || line.contains("<http") {
                bad.push(format!("{name}:{}: links outside the repository: {line}", i + 1));
            }
            for target in line.split("](").skip(1).filter_map(|r| r.split(')').next()) {
                let path = target.split('#').next().unwrap_or("");
                if path.is_empty() || path.contains("://") {
                    continue;
                }
                let resolved = f.parent().unwrap().join(path);
                match resolved.canonicalize() {
                    Ok(p) if p.starts_with(&repo) => {}
                    Ok(_) => bad.push(format!("{name}:{}: {target} points outside the repository", i + 1)),
                    Err(_) => bad.push(format!("{name}:{}: {target} does not exist", i + 1)),
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn config_reference_names_every_key() {
    let doc = read("docs/reference/config.md");
    let mut missing = vec![];
    for (section, keys) in vane::config::defaults() {
        for key in keys.as_table().unwrap().keys() {
            if !doc.contains(&format!("`{section}.{key}`")) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "docs/reference/config.md lacks {missing:?}");
}

#[test]
fn policy_reference_names_every_field() {
    let doc = read("docs/reference/policy.md");
    let schema = vane::api::openapi::policy_schema();
    let mut fields = std::collections::BTreeSet::new();
    let mut todo = vec![&schema];
    while let Some(v) = todo.pop() {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(serde_json::Value::Object(props)) = o.get("properties") {
                    fields.extend(props.keys().cloned());
                }
                todo.extend(o.values());
            }
            serde_json::Value::Array(a) => todo.extend(a),
            _ => {}
        }
    }
    assert!(fields.len() > 30, "{fields:?}");
    let missing: Vec<_> = fields.iter().filter(|f| !doc.contains(&format!("`{f}`"))).collect();
    assert!(missing.is_empty(), "docs/reference/policy.md lacks {missing:?}");
}

#[test]
fn api_reference_names_every_route() {
    let doc = read("docs/reference/api.md");
    let api = serde_json::to_value(<vane::api::openapi::ApiDoc as utoipa::OpenApi>::openapi()).unwrap();
    let paths: Vec<&String> = api["paths"].as_object().unwrap().keys().collect();
    let missing: Vec<_> = paths.iter().filter(|p| !doc.contains(&format!(" {p}"))).collect();
    assert!(missing.is_empty(), "docs/reference/api.md lacks {missing:?}");
}

#[test]
fn metrics_reference_names_every_metric() {
    let doc = read("docs/reference/metrics.md");
    use vane::analysis::{AnalysisReport, MetricResult, MetricVerdict, Verdict};
    use vane::policy::{Bound, MetricSpec};
    // Families appear once they have a series: give every one of them one.
    let metrics = vane::telemetry::Metrics::new(std::time::Duration::from_secs(60));
    let mut policy = vane::fixtures::policy("p", &[50, 100], std::time::Duration::from_secs(1), 1);
    let kinds = [("success-rate", None), ("latency-p95", None), ("request-count", None), ("custom", Some("up"))];
    for (name, query) in kinds {
        policy.metrics.push(MetricSpec {
            name: name.into(),
            template: query.is_none().then(|| name.to_string()),
            query: query.map(str::to_string),
            min: Some(Bound::Number(1.0)),
            max: Some(Bound::Number(2.0)),
        });
    }
    let (rollout, _) =
        vane::rollout::machine::create("01J".into(), &vane::fixtures::request("svc", "p"), policy, "t", 0);
    metrics.observe(&rollout, false, 0);
    let report = AnalysisReport {
        at: 0,
        verdict: Verdict::Pass,
        metrics: kinds
            .iter()
            .map(|(name, _)| MetricResult {
                name: name.to_string(),
                value: Some(1.5),
                min: Some(1.0),
                max: Some(2.0),
                result: MetricVerdict::Pass,
                message: None,
                stats: serde_json::Value::Null,
            })
            .collect(),
        summary: String::new(),
    };
    metrics.observe_analysis(&rollout, &report);
    metrics.http_request("GET", "/metrics", 200, std::time::Duration::from_millis(1));
    let text = metrics.encode();
    let mut missing = vec![];
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut it = line.split(' ');
        let (name, kind) = (it.next().unwrap(), it.next().unwrap_or(""));
        let shown = if kind == "counter" { format!("`{name}_total`") } else { format!("`{name}`") };
        if !doc.contains(&shown) {
            missing.push(shown);
        }
    }
    assert!(text.lines().filter(|l| l.starts_with("# TYPE")).count() > 20, "{text}");
    assert!(missing.is_empty(), "docs/reference/metrics.md lacks {missing:?}");
}

/// Every command with its flags, from the clap definitions.
fn cli_reference() -> String {
    fn walk(cmd: &clap::Command, path: &str, out: &mut String) {
        let path = if path.is_empty() { cmd.get_name().to_string() } else { format!("{path} {}", cmd.get_name()) };
        let subs: Vec<_> = cmd.get_subcommands().filter(|c| c.get_name() != "help").collect();
        let args: Vec<_> = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "version")
            .collect();
        if subs.is_empty() || path == "vane" {
            out.push_str(&format!("\n### `{path}`\n\n"));
            if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
                out.push_str(&format!("{about}\n"));
            }
            if !args.is_empty() {
                out.push_str("\n| argument | default | env | meaning |\n|---|---|---|---|\n");
            }
            for a in args {
                let name = match (a.get_long(), a.get_short()) {
                    (Some(l), Some(s)) => format!("`-{s}`, `--{l}`"),
                    (Some(l), None) => format!("`--{l}`"),
                    (None, Some(s)) => format!("`-{s}`"),
                    (None, None) => format!("`<{}>`", a.get_id().as_str().to_uppercase()),
                };
                let default: Vec<_> = a.get_default_values().iter().map(|v| v.to_string_lossy().to_string()).collect();
                let default = if default.is_empty() { String::new() } else { format!("`{}`", default.join(",")) };
                let env = a.get_env().map(|e| format!("`{}`", e.to_string_lossy())).unwrap_or_default();
                let mut help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let values: Vec<_> = a
                    .get_possible_values()
                    .iter()
                    .filter(|v| !v.is_hide_set())
                    .map(|v| format!("`{}`", v.get_name()))
                    .collect();
                if !values.is_empty() && a.get_action().takes_values() {
                    help = format!("{help} ({})", values.join(", ")).trim().to_string();
                }
                out.push_str(&format!("| {name} | {default} | {env} | {} |\n", help.replace('|', "\\|")));
            }
        }
        for s in subs {
            walk(s, &path, out);
        }
    }
    let mut out = String::new();
    walk(&vane::cli::Cli::command(), "", &mut out);
    out
}

#[test]
fn cli_reference_is_generated_from_the_commands() {
    let path = root().join("docs/reference/cli.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = ("<!-- BEGIN GENERATED -->\n", "<!-- END GENERATED -->");
    let start = doc.find(begin).expect("BEGIN marker") + begin.len();
    let stop = doc.find(end).expect("END marker");
    let want = cli_reference();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{}{want}{}", &doc[..start], &doc[stop..])).unwrap();
        return;
    }
    assert_eq!(doc[start..stop], want, "docs/reference/cli.md is stale: run UPDATE_DOCS=1 cargo test --test docs");
    for flag in ["--timeout", "--reconnect-timeout", "--output", "--idempotency-key"] {
        assert!(want.contains(flag), "{flag}");
    }
}
