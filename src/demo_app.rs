//! `vane demo-app`: a small HTTP service for demos and end-to-end tests.
//!
//! It labels itself with a namespace, service and version, answers every path with a configurable
//! error rate and latency distribution, and exports the generic metrics dialect (SPEC §4):
//! `http_requests_total{namespace,service,version,code}` and
//! `http_request_duration_seconds_bucket{namespace,service,version,le}`. `/metrics` and
//! `/health/*` are not counted and never fail.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::Rng;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoAppArgs {
    /// The `service` label of the exported request metrics.
    #[arg(long, default_value = "demo")]
    pub service: String,
    /// The `namespace` label.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The `version` label.
    #[arg(long = "version", id = "app_version", default_value = "v1")]
    pub version: String,
    /// Address to listen on; port 0 picks a free port (printed, and written to --port-file).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Fraction of requests answered with HTTP 500 (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub error_rate: f64,
    /// Response latency: a median (`50ms`), or a median and a p95 (`50ms:200ms`, log-normal).
    #[arg(long, default_value = "5ms", value_parser = Latency::parse)]
    pub latency: Latency,
    /// Write the bound address (`127.0.0.1:PORT`) to this file once listening.
    #[arg(long)]
    pub port_file: Option<PathBuf>,
}

/// A latency distribution: log-normal with the given median and p95 (constant when equal).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub median: Duration,
    pub p95: Duration,
}

impl Latency {
    pub fn parse(s: &str) -> Result<Latency, String> {
        let d = |v: &str| humantime::parse_duration(v.trim()).map_err(|e| format!("{v:?}: {e}"));
        let (median, p95) = match s.split_once(':') {
            Some((m, p)) => (d(m)?, d(p)?),
            None => (d(s)?, d(s)?),
        };
        if p95 < median {
            return Err(format!("p95 {p95:?} is below the median {median:?}"));
        }
        Ok(Latency { median, p95 })
    }

    fn sample(&self, rng: &mut impl Rng) -> Duration {
        let (m, p) = (self.median.as_secs_f64(), self.p95.as_secs_f64());
        if m <= 0.0 || p <= m {
            return self.median;
        }
        let sigma = (p / m).ln() / 1.644_853_6;
        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        Duration::from_secs_f64((m * (sigma * z).exp()).min(60.0))
    }
}

pub(crate) fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    namespace: String,
    service: String,
    version: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    namespace: String,
    service: String,
    version: String,
}

struct App {
    args: DemoAppArgs,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<VersionLabels, Histogram>,
}

impl App {
    fn new(args: DemoAppArgs) -> App {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<VersionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        registry.register("http_requests", "HTTP requests by response code", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency", duration.clone());
        let app = App { args, registry, requests, duration };
        // Series exist from the first scrape, so `increase()` sees the very first requests.
        for code in ["200", "500"] {
            let _ = app.requests.get_or_create(&app.request_labels(code));
        }
        let _ = app.duration.get_or_create(&app.version_labels());
        app
    }

    fn version_labels(&self) -> VersionLabels {
        VersionLabels {
            namespace: self.args.namespace.clone(),
            service: self.args.service.clone(),
            version: self.args.version.clone(),
        }
    }

    fn request_labels(&self, code: &str) -> RequestLabels {
        RequestLabels {
            namespace: self.args.namespace.clone(),
            service: self.args.service.clone(),
            version: self.args.version.clone(),
            code: code.into(),
        }
    }
}

pub fn router(args: DemoAppArgs) -> Router {
    let app = Arc::new(App::new(args));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/ready", get(|| async { "ok\n" }))
        .route("/health/live", get(|| async { "ok\n" }))
        .fallback(serve_request)
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &app.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

async fn serve_request(State(app): State<Arc<App>>) -> Response {
    let started = Instant::now();
    let (delay, fail) = {
        let mut rng = rand::rng();
        (app.args.latency.sample(&mut rng), rng.random::<f64>() < app.args.error_rate)
    };
    tokio::time::sleep(delay).await;
    let status = if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
    app.requests.get_or_create(&app.request_labels(status.as_str())).inc();
    app.duration.get_or_create(&app.version_labels()).observe(started.elapsed().as_secs_f64());
    let a = &app.args;
    let body = format!("{} {} ({})\n", a.service, a.version, a.namespace);
    (status, [("x-version", a.version.clone())], body).into_response()
}

/// Listen, announce the address (stdout and `--port-file`), serve until Ctrl-C or SIGTERM.
pub async fn run(args: DemoAppArgs) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    if let Some(f) = &args.port_file {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, format!("{addr}\n")).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, f).with_context(|| format!("writing {}", f.display()))?;
    }
    println!("demo-app {} {} ({}) listening on http://{addr}", args.service, args.version, args.namespace);
    axum::serve(listener, router(args)).with_graceful_shutdown(shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    #[cfg(unix)]
    {
        let term = async {
            if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                s.recv().await;
            }
        };
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term => {} }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_specs_parse() {
        assert_eq!(
            Latency::parse("50ms").unwrap(),
            Latency { median: Duration::from_millis(50), p95: Duration::from_millis(50) }
        );
        assert_eq!(Latency::parse("20ms:80ms").unwrap().p95, Duration::from_millis(80));
        assert!(Latency::parse("80ms:20ms").unwrap_err().contains("below the median"));
        assert!(Latency::parse("soon").is_err());
        assert!(parse_fraction("1.5").is_err());
        assert_eq!(parse_fraction("0.1"), Ok(0.1));
    }

    #[test]
    fn lognormal_latency_has_the_asked_median_and_p95() {
        let l = Latency::parse("20ms:80ms").unwrap();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        let mut v: Vec<f64> = (0..20000).map(|_| l.sample(&mut rng).as_secs_f64()).collect();
        v.sort_by(f64::total_cmp);
        let (median, p95) = (v[10000], v[19000]);
        assert!((median - 0.020).abs() < 0.002, "median {median}");
        assert!((p95 - 0.080).abs() < 0.010, "p95 {p95}");
    }
}
