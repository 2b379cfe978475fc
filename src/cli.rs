//! The command line. Client commands talk to the daemon's REST API (`VANE_URL`, `VANE_TOKEN`); their
//! exit codes are listed in [`client::code`].

mod client;
mod config_show;
mod output;
mod policy_check;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

pub use client::{CliError, code};
pub use output::Output;
pub use policy_check::policy_check;

use client::{Api, urlencode};
use output::{Doc, emit};

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
        /// The TOML configuration file (docs/reference/config.md); every key optional.
        #[arg(long, env = "VANE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Start, inspect and control rollouts.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Policy files.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// The daemon's configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Print a shell completion script: `vane completions bash > /etc/bash_completion.d/vane`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The daemon's store.
    #[command(subcommand)]
    Store(StoreCmd),
    /// A demo HTTP service with a configurable error rate and latency, exporting request metrics.
    DemoApp(crate::demo_app::DemoAppArgs),
    /// A real local demo: NGINX, Prometheus, three app versions, load and the daemon; a good rollout
    /// succeeds, a bad one rolls back on its own (needs `nginx` and `prometheus` installed).
    Demo(crate::demo::DemoArgs),
}

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Copy every rollout and its events from one store to another (sled ⇄ etcd), with every vane
    /// replica stopped; the destination must be empty.
    Migrate {
        /// `sled:PATH` or `etcd:URL[,URL...]`
        #[arg(long)]
        from: crate::store::migrate::Location,
        /// `sled:PATH` or `etcd:URL[,URL...]`
        #[arg(long)]
        to: crate::store::migrate::Location,
        /// The etcd key prefix (`[store] etcd.prefix`).
        #[arg(long, default_value = "/vane/")]
        prefix: String,
        /// A configuration file whose `[store] etcd` TLS files and credentials reach the etcd location.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `vane store migrate`: prints what it copied; exit 0, or 1 with the reason.
pub async fn store(cmd: StoreCmd) -> i32 {
    match cmd {
        StoreCmd::Migrate { from, to, prefix, config } => {
            let etcd = match config.map(|p| crate::config::Config::load(Some(&p), std::env::vars())).transpose() {
                Ok(c) => crate::config::EtcdConfig { prefix, ..c.map(|c| c.store.etcd).unwrap_or_default() },
                Err(e) => {
                    eprintln!("vane store migrate: {e}");
                    return code::USAGE;
                }
            };
            store_migrate(&from, &to, &etcd).await
        }
    }
}

async fn store_migrate(
    from: &crate::store::migrate::Location,
    to: &crate::store::migrate::Location,
    etcd: &crate::config::EtcdConfig,
) -> i32 {
    match crate::store::migrate::migrate(from, to, etcd).await {
        Ok(n) => {
            println!("copied {n} rollout(s) with their events from {from} to {to}");
            0
        }
        Err(e) => {
            eprintln!("vane store migrate: {e}");
            1
        }
    }
}

#[derive(Args)]
pub struct Client {
    /// The daemon's address.
    #[arg(long, env = "VANE_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// Bearer token (role operator for changes, viewer for reads).
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
    /// The container whose image changes (default: the one named like the Deployment, or the only one)
    #[arg(long)]
    pub container: Option<String>,
    /// How the canary is sized: proportional (to the weight) or full
    #[arg(long)]
    pub canary_scale: Option<String>,
    /// How long the canary may take to roll out at each size, e.g. 5m
    #[arg(long)]
    pub ready_timeout: Option<String>,
    /// What happens to the canary after promotion: scale-to-zero, delete or keep
    #[arg(long)]
    pub retire: Option<String>,
    /// How long the canary keeps running after promotion, e.g. 5m
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
        /// The create body as JSON or YAML (see docs/reference/api.md); `-` reads stdin.
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        /// The service rolled out (overrides the file's).
        #[arg(long)]
        service: Option<String>,
        /// Its namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// The new version.
        #[arg(long = "version", id = "new_version")]
        new_version: Option<String>,
        /// The version serving now.
        #[arg(long)]
        stable_version: Option<String>,
        /// The name of a loaded policy.
        #[arg(long)]
        policy: Option<String>,
        /// The router object as JSON, e.g. '{"kind":"exec","profile":"lb-weights"}' (a profile of the
        /// daemon's `[routers]` configuration).
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
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Only rollouts in this phase (e.g. Progressing).
        #[arg(long)]
        phase: Option<String>,
        /// At most this many (1-1000; default 100).
        #[arg(long)]
        limit: Option<u32>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show one rollout (JSON in the API's field order by default).
    Get {
        /// A rollout id, or namespace/service (its active rollout, else its newest).
        id: String,
        #[command(flatten)]
        client: Client,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Show a rollout's history.
    Events {
        /// A rollout id, or namespace/service (its active rollout, else its newest).
        id: String,
        #[command(flatten)]
        client: Client,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Follow a rollout. Exit 0 Succeeded, 1 RolledBack/Aborted/Failed, 2 usage, 3 --timeout
    /// elapsed, 4 daemon unreachable.
    Watch {
        /// A rollout id, or namespace/service (its active rollout, else its newest).
        id: String,
        #[command(flatten)]
        client: Client,
        /// Poll interval.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        every: Duration,
        /// Give up after this long (exit 3); default: wait for the end.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// How long an unreachable daemon (restart, outage) is retried before exit 4.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        reconnect_timeout: Duration,
    },
    /// Pass the current gate/step (or --full: straight to 100 %).
    Promote {
        /// A rollout id, or namespace/service.
        id: String,
        /// Straight to 100 %, past every remaining step and gate.
        #[arg(long, conflicts_with = "gate")]
        full: bool,
        /// Approve exactly the gate at this weight: refused unless the rollout waits there, so running
        /// it twice (a retry) approves once and never skips the next step's analysis.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        gate: Option<u8>,
        #[command(flatten)]
        client: Client,
    },
    /// Hold the rollout where it is.
    Pause {
        /// A rollout id, or namespace/service.
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Continue a paused rollout.
    Resume {
        /// A rollout id, or namespace/service.
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Roll back now.
    Abort {
        /// A rollout id, or namespace/service.
        id: String,
        /// Recorded in the events and notifications.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: Client,
    },
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Validate policy files (default: ./policies); every problem as file:line:column.
    Check {
        /// Files or directories (their *.yaml and *.yml).
        paths: Vec<PathBuf>,
    },
    /// Print the JSON Schema of a policy file (the daemon serves the same at /api/v1/policy.schema.json).
    Schema,
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// The effective configuration (file, then VANE_* variables), secrets masked, each value's source.
    Show {
        /// The TOML configuration file, as for `vane serve`.
        #[arg(long, env = "VANE_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// `vane completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> i32 {
    use clap::CommandFactory;
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vane", &mut buf);
    let _ = emit(&String::from_utf8_lossy(&buf));
    code::OK
}

/// `vane policy schema`.
pub fn policy_schema() -> i32 {
    let schema = crate::api::openapi::policy_schema();
    let _ = emit(&format!("{}\n", serde_json::to_string_pretty(&schema).unwrap_or_default()));
    code::OK
}

/// `vane config show`.
pub fn config_show(path: Option<&std::path::Path>) -> i32 {
    match crate::config::Config::load_with_sources(path, std::env::vars()) {
        Ok((cfg, sources)) => {
            let _ = emit(&config_show::render(&cfg, &sources));
            code::OK
        }
        Err(e) => {
            eprintln!("vane: {e}");
            code::USAGE
        }
    }
}

/// Run a `vane rollout` command; the exit code, or an error whose [`CliError::code`] is the exit code.
pub async fn run(cmd: RolloutCmd) -> Result<i32, CliError> {
    use reqwest::Method;
    let api = |c: &Client| Api::new(&c.url, c.token.clone(), Duration::from_secs(30));
    // Output that cannot be delivered (the reader of a pipe has gone) is not a failure.
    let print = |text: &str| {
        let _ = emit(text);
    };
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
                body["router"] =
                    serde_json::from_str(&r).map_err(|e| CliError::Usage(format!("--router is not JSON: {e}")))?;
            }
            workload.apply(&mut body);
            let headers: Vec<(&str, String)> = idempotency_key.into_iter().map(|k| ("Idempotency-Key", k)).collect();
            let r = api(&client)?.call(Method::POST, "/api/v1/rollouts", Some(&body), &headers).await?;
            print(&format!("{}\n", output::s(&r, "id")));
        }
        RolloutCmd::List { client, service, namespace, phase, limit, output } => {
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
            let r = api(&client)?.get(&path).await?;
            print(&match output {
                Output::Json | Output::Yaml => output::document(&r, output),
                _ => output::rollouts(items(&r), output),
            });
        }
        RolloutCmd::Get { id, client, output } => {
            let api = api(&client)?;
            let id = api.resolve(&id).await?;
            let r = api.get(&format!("/api/v1/rollouts/{}", urlencode(&id))).await?;
            print(&match output {
                Output::Json | Output::Yaml => output::document(&r, output),
                _ => output::rollouts(std::slice::from_ref(&r), output),
            });
        }
        RolloutCmd::Events { id, client, output } => {
            let api = api(&client)?;
            let id = api.resolve(&id).await?;
            let r = api.get(&format!("/api/v1/rollouts/{}/events", urlencode(&id))).await?;
            print(&match output {
                Output::Json | Output::Yaml => output::document(&r, output),
                _ => output::events(&id, items(&r), output),
            });
        }
        RolloutCmd::Watch { id, client, every, timeout, reconnect_timeout } => {
            let opts = watch::WatchOpts { every, timeout, reconnect: reconnect_timeout };
            // One poll never waits longer than the interval it polls at (at least a few seconds).
            let api = Api::new(
                &client.url,
                client.token.clone(),
                every.clamp(Duration::from_secs(5), Duration::from_secs(30)),
            )?;
            return watch::watch(&api, &id, &opts).await;
        }
        RolloutCmd::Promote { id, full, gate, client } => {
            let body = match gate {
                Some(at) => serde_json::json!({ "gate": at }),
                None => serde_json::json!({ "full": full }),
            };
            control(&api(&client)?, &id, "promote", Some(body)).await?;
        }
        RolloutCmd::Pause { id, client } => control(&api(&client)?, &id, "pause", None).await?,
        RolloutCmd::Resume { id, client } => control(&api(&client)?, &id, "resume", None).await?,
        RolloutCmd::Abort { id, reason, client } => {
            control(&api(&client)?, &id, "abort", Some(serde_json::json!({ "reason": reason }))).await?;
        }
    }
    Ok(code::OK)
}

fn items(list: &Doc) -> &[Doc] {
    list.get("items").and_then(Doc::as_sequence).map(Vec::as_slice).unwrap_or_default()
}

async fn control(api: &Api, id: &str, action: &str, body: Option<Value>) -> Result<(), CliError> {
    let id = api.resolve(id).await?;
    let path = format!("/api/v1/rollouts/{}/{action}", urlencode(&id));
    let r = api.call(reqwest::Method::POST, &path, body.as_ref(), &[]).await?;
    let s = |k| output::s(&r, k);
    let _ = emit(&format!("{}: {} at {}% — {}\n", s("id"), s("phase"), s("canaryWeight"), s("message")));
    Ok(())
}

fn read_body(f: &PathBuf) -> Result<Value, CliError> {
    let src = if f.as_os_str() == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(f) }
        .map_err(|e| CliError::Usage(format!("{}: {e}", f.display())))?;
    // YAML is a superset of JSON.
    yaml_serde::from_str(&src).map_err(|e| CliError::Usage(format!("{} is not JSON or YAML: {e}", f.display())))
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
