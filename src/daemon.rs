//! `vane serve`: wire config, store, policies, adapters, controller and API together.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};

use crate::analysis::{Analyzer, PromAnalyzer};
use crate::api::{self, AppState, Auth};
use crate::config::{Backend, Config};
use crate::rollout::controller::Controller;
use crate::rollout::driver::{Env, SystemClock};
use crate::rollout::ports::SharedStore;
use crate::store::EtcdStore;
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
    let (store, etcd) = open_store(&cfg).await?;
    let metrics = Arc::new(Metrics::new(cfg.server.metrics_retention));
    let notify = crate::notify::wire(&cfg, &store, &metrics, |v| std::env::var(v).ok())?;
    let analyzer: Arc<dyn Analyzer> =
        Arc::new(PromAnalyzer::from_config(&cfg.prometheus, notify.hooks.clone(), metrics.clone())?);
    let env = Arc::new(Env {
        store,
        routers: Arc::new(Routers::new(&cfg.kubernetes)),
        analyzer,
        hooks: notify.hooks,
        notifier: notify.notifier,
        metrics: metrics.clone(),
        clock: Arc::new(SystemClock),
    });
    let controller = Controller::new(env, policies);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let (resumed, leaving) = match etcd {
        // HA: nothing is resumed wholesale; the membership loop claims orphaned rollouts by count.
        Some(etcd) => {
            tracing::info!(replica = etcd.replica_id(), url = %cfg.server.advertised_url(), "HA replica joined");
            let membership = tokio::spawn(crate::ha::run(etcd.clone(), controller.clone()));
            (0, Some((etcd, membership.abort_handle(), controller.clone())))
        }
        None => (controller.resume_all()?, None),
    };
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
            if let Some((etcd, membership, controller)) = leaving {
                crate::ha::leave(&etcd, membership, &controller).await;
            }
        })
        .await?;
    Ok(())
}

/// The configured store; with etcd also the handle the HA membership loop needs.
async fn open_store(cfg: &Config) -> anyhow::Result<(SharedStore, Option<EtcdStore>)> {
    match cfg.store.backend {
        Backend::Sled => {
            let store = SharedStore::open(&cfg.store.path)
                .with_context(|| format!("opening store {}", cfg.store.path.display()))?;
            Ok((store, None))
        }
        Backend::Etcd => {
            let e = &cfg.store.etcd;
            let etcd = EtcdStore::connect(e, replica_id(), cfg.server.advertised_url())
                .await
                .with_context(|| format!("connecting to etcd at {}", e.endpoints.join(",")))?;
            Ok((SharedStore::new(etcd.clone()), Some(etcd)))
        }
    }
}

/// A replica id unique to this process: the host name (the pod's, in Kubernetes) and a random
/// suffix, so a restarted replica never mistakes its predecessor's rollouts for its own.
fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "vane".into());
    format!("{host}-{:08x}", rand::random::<u32>())
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
