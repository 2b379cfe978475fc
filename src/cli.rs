//! The command line (SPEC §1). Client commands talk to the daemon's REST API (`VANE_URL`, `VANE_TOKEN`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "vane", version, about = "Progressive delivery: canary and blue/green rollouts with SLO analysis")]
pub struct Cli {
    /// Log format of the daemon.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Cmd {
    /// Run the daemon (works without a config file: ./vane-data, ./policies, 127.0.0.1:8080).
    Serve {
        #[arg(long, env = "VANE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Start, inspect and control rollouts.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Policy files.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// A demo HTTP service with a configurable error rate and latency, exporting request metrics.
    DemoApp(crate::demo_app::DemoAppArgs),
    /// A real local demo: NGINX, Prometheus, three app versions, load and the daemon; a good rollout
    /// succeeds, a bad one rolls back on its own (needs `nginx` and `prometheus` installed).
    Demo(crate::demo::DemoArgs),
}

#[derive(Args)]
pub struct Client {
    #[arg(long, env = "VANE_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    #[arg(long, env = "VANE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// `workload` of the create body (SPEC §4): vane runs the Deployments too.
#[derive(clap::Args, Default)]
pub struct WorkloadArgs {
    /// The stable Deployment; also the default `service`.
    #[arg(long)]
    pub deployment: Option<String>,
    /// The image to release; its tag is the default `version`.
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long)]
    pub container: Option<String>,
    /// proportional | full
    #[arg(long)]
    pub canary_scale: Option<String>,
    /// e.g. 5m
    #[arg(long)]
    pub ready_timeout: Option<String>,
    /// scale-to-zero | delete | keep
    #[arg(long)]
    pub retire: Option<String>,
    /// e.g. 5m
    #[arg(long)]
    pub retire_after: Option<String>,
}

impl WorkloadArgs {
    /// Merge the flags into `body` (flags win over the file).
    pub fn apply(self, body: &mut Value) {
        if let Some(d) = &self.deployment
            && body.get("service").is_none()
        {
            body["service"] = Value::String(d.clone());
        }
        if let Some(tag) = self.image.as_deref().and_then(image_tag)
            && body.get("version").is_none()
        {
            body["version"] = Value::String(tag.to_string());
        }
        for (k, v) in [
            ("deployment", self.deployment),
            ("image", self.image),
            ("container", self.container),
            ("canaryScale", self.canary_scale),
            ("readyTimeout", self.ready_timeout),
            ("retire", self.retire),
            ("retireAfter", self.retire_after),
        ] {
            if let Some(v) = v {
                if !body.get("workload").is_some_and(Value::is_object) {
                    body["workload"] = serde_json::json!({});
                }
                body["workload"][k] = Value::String(v);
            }
        }
    }
}

/// The tag of an image reference (`registry:5000/app:v1.1.0` → `v1.1.0`; none for a digest only).
pub fn image_tag(image: &str) -> Option<&str> {
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':').map(|(_, t)| t).filter(|t| !t.is_empty())
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Create a rollout from a JSON/YAML file (-f) or flags; prints its id.
    Start {
        #[command(flatten)]
        client: Client,
        /// The create body (SPEC §4) as JSON or YAML; `-` reads stdin.
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long = "version", id = "new_version")]
        new_version: Option<String>,
        #[arg(long)]
        stable_version: Option<String>,
        #[arg(long)]
        policy: Option<String>,
        /// The router object as JSON, e.g. '{"kind":"exec","command":["./set-weight.sh"]}'.
        #[arg(long)]
        router: Option<String>,
        /// Makes retries safe: the same key returns the same rollout.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        workload: WorkloadArgs,
    },
    /// List rollouts, newest first.
    List {
        #[command(flatten)]
        client: Client,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        phase: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show one rollout (JSON).
    Get {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Show a rollout's history.
    Events {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Follow a rollout; exits 0 when it Succeeded, 1 on any other end.
    Watch {
        id: String,
        #[command(flatten)]
        client: Client,
        /// Poll interval.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        every: Duration,
    },
    /// Pass the current gate/step (or --full: straight to 100 %).
    Promote {
        id: String,
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        client: Client,
    },
    Pause {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    Resume {
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Roll back now.
    Abort {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: Client,
    },
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Validate policy files (default: ./policies); errors as file:line.
    Check { paths: Vec<PathBuf> },
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(c: &Client) -> anyhow::Result<Api> {
        let http = crate::http::client_builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Api { http, base: c.url.trim_end_matches('/').to_string(), token: c.token.clone() })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach vane at {} (is `vane serve` running? set VANE_URL)", self.base))?;
        let status = res.status();
        let text = res.text().await?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let e = &json["error"];
            let field = e["field"].as_str().map(|f| format!(" (field: {f})")).unwrap_or_default();
            let msg = e["message"].as_str().map(str::to_string).unwrap_or_else(|| json.to_string());
            bail!("{status}: {msg}{field}");
        }
        Ok(json)
    }
}

pub async fn run(cmd: RolloutCmd) -> anyhow::Result<i32> {
    use reqwest::Method;
    match cmd {
        RolloutCmd::Start {
            client,
            file,
            service,
            namespace,
            new_version,
            stable_version,
            policy,
            router,
            idempotency_key,
            workload,
        } => {
            let mut body = match file {
                Some(f) => read_body(&f)?,
                None => serde_json::json!({}),
            };
            for (k, v) in [
                ("service", service),
                ("namespace", namespace),
                ("version", new_version),
                ("stableVersion", stable_version),
                ("policy", policy),
            ] {
                if let Some(v) = v {
                    body[k] = Value::String(v);
                }
            }
            if let Some(r) = router {
                body["router"] = serde_json::from_str(&r).context("--router is not JSON")?;
            }
            workload.apply(&mut body);
            let headers: Vec<(&str, String)> = idempotency_key.into_iter().map(|k| ("Idempotency-Key", k)).collect();
            let r = Api::new(&client)?.call(Method::POST, "/api/v1/rollouts", Some(body), &headers).await?;
            println!("{}", r["id"].as_str().unwrap_or_default());
        }
        RolloutCmd::List { client, service, namespace, phase, limit } => {
            let mut q = vec![];
            for (k, v) in [
                ("service", service),
                ("namespace", namespace),
                ("phase", phase),
                ("limit", limit.map(|l| l.to_string())),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", urlencode(&v)));
                }
            }
            let path = format!("/api/v1/rollouts{}{}", if q.is_empty() { "" } else { "?" }, q.join("&"));
            let r = Api::new(&client)?.call(Method::GET, &path, None, &[]).await?;
            println!(
                "{:<26}  {:<28}  {:<14}  {:<17}  {:>6}  MESSAGE",
                "ID", "NAMESPACE/SERVICE", "VERSION", "PHASE", "WEIGHT"
            );
            for i in r["items"].as_array().into_iter().flatten() {
                println!(
                    "{:<26}  {:<28}  {:<14}  {:<17}  {:>5}%  {}",
                    s(&i["id"]),
                    format!("{}/{}", s(&i["namespace"]), s(&i["service"])),
                    s(&i["version"]),
                    s(&i["phase"]),
                    i["canaryWeight"],
                    s(&i["message"])
                );
            }
        }
        RolloutCmd::Get { id, client } => {
            let r = Api::new(&client)?
                .call(Method::GET, &format!("/api/v1/rollouts/{}", urlencode(&id)), None, &[])
                .await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        RolloutCmd::Events { id, client } => {
            let r = Api::new(&client)?
                .call(Method::GET, &format!("/api/v1/rollouts/{}/events", urlencode(&id)), None, &[])
                .await?;
            for e in r["items"].as_array().into_iter().flatten() {
                println!(
                    "{:>4}  {}  {:<14} {:<12} {}",
                    e["seq"],
                    s(&e["at"]),
                    s(&e["type"]),
                    s(&e["actor"]),
                    s(&e["message"])
                );
            }
        }
        RolloutCmd::Watch { id, client, every } => return watch(&Api::new(&client)?, &id, every).await,
        RolloutCmd::Promote { id, full, client } => {
            let body = serde_json::json!({ "full": full });
            control(&client, &id, "promote", Some(body)).await?;
        }
        RolloutCmd::Pause { id, client } => control(&client, &id, "pause", None).await?,
        RolloutCmd::Resume { id, client } => control(&client, &id, "resume", None).await?,
        RolloutCmd::Abort { id, reason, client } => {
            control(&client, &id, "abort", Some(serde_json::json!({ "reason": reason }))).await?;
        }
    }
    Ok(0)
}

async fn control(client: &Client, id: &str, action: &str, body: Option<Value>) -> anyhow::Result<()> {
    let path = format!("/api/v1/rollouts/{}/{action}", urlencode(id));
    let r = Api::new(client)?.call(reqwest::Method::POST, &path, body, &[]).await?;
    println!("{}: {} at {}% — {}", s(&r["id"]), s(&r["phase"]), r["canaryWeight"], s(&r["message"]));
    Ok(())
}

async fn watch(api: &Api, id: &str, every: Duration) -> anyhow::Result<i32> {
    let path = format!("/api/v1/rollouts/{}", urlencode(id));
    let tty = std::io::stdout().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(100);
        b.set_style(
            indicatif::ProgressStyle::with_template("{prefix:.bold} [{bar:40.cyan/blue}] {pos:>3}% {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut last = String::new();
    loop {
        let r = api.call(reqwest::Method::GET, &path, None, &[]).await?;
        let phase = s(&r["phase"]);
        let weight = r["canaryWeight"].as_u64().unwrap_or(0);
        let line = format!("{phase} {weight}% {}", s(&r["message"]));
        if let Some(b) = &bar {
            b.set_prefix(format!("{}/{} {}", s(&r["namespace"]), s(&r["service"]), phase));
            b.set_position(weight);
            b.set_message(s(&r["message"]));
        } else if line != last {
            println!("{} {line}", humantime::format_rfc3339_seconds(std::time::SystemTime::now()));
        }
        last = line;
        if matches!(phase.as_str(), "Succeeded" | "RolledBack" | "Aborted" | "Failed") {
            if let Some(b) = &bar {
                b.finish_with_message(format!("{phase}: {}", s(&r["message"])));
            }
            return Ok(if phase == "Succeeded" { 0 } else { 1 });
        }
        tokio::time::sleep(every).await;
    }
}

fn read_body(f: &PathBuf) -> anyhow::Result<Value> {
    let src = if f.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
    };
    // YAML is a superset of JSON.
    yaml_serde::from_str(&src).with_context(|| format!("{} is not JSON or YAML", f.display()))
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn urlencode(v: &str) -> String {
    serde_urlencoded::to_string([("", v)]).map(|s| s[1..].to_string()).unwrap_or_default()
}

/// `vane policy check`: 0 when every file loads, 1 with file:line errors otherwise.
pub fn policy_check(paths: Vec<PathBuf>) -> i32 {
    let paths = if paths.is_empty() { vec![PathBuf::from("policies")] } else { paths };
    let mut files = vec![];
    for p in &paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(rd) => files.extend(
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))),
                ),
                Err(e) => {
                    eprintln!("{}: {e}", p.display());
                    return 1;
                }
            }
        } else {
            files.push(p.clone());
        }
    }
    files.sort();
    match crate::policy::load_files(&files) {
        Ok(ps) => {
            for p in ps {
                println!("ok  {} ({:?}, steps {:?})", p.name, p.strategy, p.weights());
            }
            0
        }
        Err(errs) => {
            for e in errs {
                eprintln!("{e}");
            }
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags_are_read_like_a_registry_does() {
        assert_eq!(image_tag("registry/agent-service:v1.1.0"), Some("v1.1.0"));
        assert_eq!(image_tag("registry:5000/agent-service:v1.1.0"), Some("v1.1.0"));
        assert_eq!(image_tag("registry:5000/agent-service"), None);
        assert_eq!(image_tag("agent-service@sha256:abc"), None);
        assert_eq!(image_tag("agent-service:v2@sha256:abc"), Some("v2"));
    }

    #[test]
    fn workload_flags_fill_the_body_without_overriding_explicit_fields() {
        let args = WorkloadArgs {
            deployment: Some("agent-service".into()),
            image: Some("registry/agent-service:v1.1.0".into()),
            retire_after: Some("5m".into()),
            ..Default::default()
        };
        let mut body = serde_json::json!({ "service": "explicit" });
        args.apply(&mut body);
        assert_eq!(
            body,
            serde_json::json!({ "service": "explicit", "version": "v1.1.0", "workload": {
                "deployment": "agent-service", "image": "registry/agent-service:v1.1.0", "retireAfter": "5m" } })
        );
    }
}
