//! `vane serve`: wire config, store, policies, adapters, controller and API together.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};

use crate::analysis::{Analyzer, PromAnalyzer};
use crate::api::{self, AppState, Auth};
use crate::config::Config;
use crate::rollout::controller::Controller;
use crate::rollout::driver::{Env, SystemClock};
use crate::rollout::ports::SharedStore;
use crate::telemetry::Metrics;
use crate::traffic::Routers;

/// Refuse to expose an unauthenticated API beyond this machine.
pub fn check_listen(addr: &SocketAddr, auth: &Auth) -> anyhow::Result<()> {
    if auth.is_open() && !addr.ip().is_loopback() {
        bail!(
            "refusing to listen on {addr} without any API token: anyone who can reach it could move production \
             traffic. Configure [server].tokens (see README) or listen on 127.0.0.1"
        );
    }
    Ok(())
}

/// `vane serve`: the configuration from the file and `VANE_*` variables; runs until Ctrl-C or SIGTERM.
pub async fn serve(config_path: Option<&Path>) -> anyhow::Result<()> {
    crate::install_crypto_provider();
    let cfg = Config::load(config_path, std::env::vars())?;
    run(cfg, shutdown_signal()).await
}

/// Run the daemon with `cfg` until `shutdown` completes (`vane serve` passes Ctrl-C/SIGTERM, `vane demo`
/// its own signal). Secrets named by the configuration are read from the process environment.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    crate::install_crypto_provider();
    let addr: SocketAddr =
        cfg.server.listen.parse().with_context(|| format!("server.listen {:?}", cfg.server.listen))?;
    let auth = Auth::from_config(&cfg.server.tokens, |v| std::env::var(v).ok())?;
    check_listen(&addr, &auth)?;
    if auth.is_open() {
        tracing::warn!("no API tokens configured: every local caller is an operator (loopback only)");
    }

    let policies = crate::policy::load_dir(&cfg.policies.dir).map_err(|errs| {
        let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("policies in {} do not load:\n{}", cfg.policies.dir.display(), lines.join("\n"))
    })?;
    let store =
        SharedStore::open(&cfg.store.path).with_context(|| format!("opening store {}", cfg.store.path.display()))?;
    let metrics = Arc::new(Metrics::new(cfg.server.metrics_retention));
    let notify = crate::notify::wire(&cfg, &store, &metrics, |v| std::env::var(v).ok())?;
    let analyzer: Arc<dyn Analyzer> =
        Arc::new(PromAnalyzer::from_config(&cfg.prometheus, notify.hooks.clone(), metrics.clone())?);
    let routers = Routers::new(&cfg.kubernetes);
    let env = Arc::new(Env {
        store,
        workloads: Arc::new(crate::workload::K8sWorkloads::new(routers.kube())),
        routers: Arc::new(routers),
        analyzer,
        hooks: notify.hooks,
        notifier: notify.notifier,
        metrics: metrics.clone(),
        clock: Arc::new(SystemClock),
    });
    let controller = Controller::new(env, policies);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let resumed = controller.resume_all()?;
    tracing::info!(%addr, policies = controller.policies().len(), resumed, version = crate::VERSION, "vane serving");
    let ready = Arc::new(AtomicBool::new(true));
    let slack = match notify.slack {
        Some(secret) => Some(Arc::new(api::slack::SlackInteractions::new(secret)?)),
        None => None,
    };
    let state = AppState { controller, auth, metrics, ready: ready.clone(), slack };
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            ready.store(false, Ordering::Relaxed);
        })
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down; state is durable, rollouts resume on the next start");
}
