//! PromQL for the built-in templates (SPEC §4 dialects × templates × canary/stable) and for custom
//! `query:` templates.
//!
//! Units are fixed so policy bounds read naturally: `success-rate` and `error-rate` in percent
//! (0–100), latencies in milliseconds, `request-count` as requests in the window. An error is a 5xx
//! response. Rates use `or vector(0)` on the numerator so "no errors yet" is 0 %, not "no data";
//! a window without requests stays empty (or NaN) and is judged as no data.

use std::time::Duration;

use crate::policy::{Dialect, Strategy};
use crate::rollout::{Rollout, RouterSpec};

/// Which version a query measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Canary,
    Stable,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Canary => "canary",
            Target::Stable => "stable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown template {0:?}")]
    UnknownTemplate(String),
    #[error("unknown variable {{{{{0}}}}} in query")]
    UnknownVariable(String),
    #[error("unclosed '{{{{' in query")]
    Unclosed,
}

/// How the nginx-ingress dialect tells canary from stable traffic.
#[derive(Debug, Clone, PartialEq)]
pub enum IngressSplit {
    /// Canary Ingress: the controller's `canary` label is set on requests that went to the canary.
    CanaryLabel,
    /// Blue/green: the backend `service` label names the version's Service.
    Services { canary: String, stable: String },
}

/// What the queries of one rollout are about.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub dialect: Dialect,
    pub namespace: String,
    pub service: String,
    pub version: String,
    pub stable_version: String,
    /// nginx-ingress: the main Ingress (the router's `ingress`, else the service name).
    pub ingress: String,
    pub split: IngressSplit,
}

impl Scope {
    /// The rollout's scope; the dialect is the policy's `metricsDialect` or follows the router.
    pub fn of(r: &Rollout) -> Scope {
        let dialect = r.policy.metrics_dialect.unwrap_or(match r.router {
            RouterSpec::Istio { .. } => Dialect::Istio,
            RouterSpec::NginxIngress { .. } => Dialect::NginxIngress,
            // Gateway API implementations differ (Envoy Gateway's proxy stats are per rule, not per
            // backend): the services' own metrics work with all of them. Istio as the implementation:
            // `metricsDialect: istio`. See docs/routers.md.
            RouterSpec::GatewayApi { .. } | RouterSpec::Nginx { .. } | RouterSpec::Exec { .. } => Dialect::Generic,
        });
        let (ingress, split) = match &r.router {
            RouterSpec::NginxIngress { ingress, canary_service, stable_service, .. } => {
                let split = match (r.policy.strategy, canary_service, stable_service) {
                    (Strategy::BlueGreen, Some(c), Some(s)) => {
                        IngressSplit::Services { canary: c.clone(), stable: s.clone() }
                    }
                    _ => IngressSplit::CanaryLabel,
                };
                (ingress.clone(), split)
            }
            _ => (r.service.clone(), IngressSplit::CanaryLabel),
        };
        Scope {
            dialect,
            namespace: r.namespace.clone(),
            service: r.service.clone(),
            version: r.version.clone(),
            stable_version: r.stable_version.clone(),
            ingress,
            split,
        }
    }

    fn version_of(&self, t: Target) -> &str {
        match t {
            Target::Canary => &self.version,
            Target::Stable => &self.stable_version,
        }
    }

    /// Label matchers selecting the target's requests (without braces).
    pub fn selector(&self, t: Target) -> String {
        let ns = esc(&self.namespace);
        match self.dialect {
            Dialect::Generic => {
                format!(r#"namespace="{ns}",service="{}",version="{}""#, esc(&self.service), esc(self.version_of(t)))
            }
            Dialect::Istio => format!(
                r#"reporter="destination",destination_workload_namespace="{ns}",destination_service_name="{}",destination_version="{}""#,
                esc(&self.service),
                esc(self.version_of(t))
            ),
            Dialect::NginxIngress => {
                let side = match (&self.split, t) {
                    (IngressSplit::CanaryLabel, Target::Canary) => r#"canary!="""#.to_string(),
                    (IngressSplit::CanaryLabel, Target::Stable) => r#"canary="""#.to_string(),
                    (IngressSplit::Services { canary, .. }, Target::Canary) => format!(r#"service="{}""#, esc(canary)),
                    (IngressSplit::Services { stable, .. }, Target::Stable) => format!(r#"service="{}""#, esc(stable)),
                };
                format!(r#"namespace="{ns}",ingress="{}",{side}"#, esc(&self.ingress))
            }
        }
    }
}

/// Metric names of a dialect, and the factor that turns its latency unit into milliseconds.
struct Names {
    requests: &'static str,
    code: &'static str,
    duration: &'static str,
    to_ms: Option<&'static str>,
}

fn names(d: Dialect) -> Names {
    match d {
        Dialect::Generic => Names {
            requests: "http_requests_total",
            code: "code",
            duration: "http_request_duration_seconds",
            to_ms: Some("1000"),
        },
        Dialect::Istio => Names {
            requests: "istio_requests_total",
            code: "response_code",
            duration: "istio_request_duration_milliseconds",
            to_ms: None,
        },
        Dialect::NginxIngress => Names {
            requests: "nginx_ingress_controller_requests",
            code: "status",
            duration: "nginx_ingress_controller_request_duration_seconds",
            to_ms: Some("1000"),
        },
    }
}

/// The PromQL of a built-in template for one target over a window such as `60s`.
pub fn builtin(template: &str, scope: &Scope, t: Target, window: &str) -> Result<String, TemplateError> {
    let n = names(scope.dialect);
    let sel = scope.selector(t);
    let (req, code, dur) = (n.requests, n.code, n.duration);
    let ms = |q: String| match n.to_ms {
        Some(f) => format!("{f} * {q}"),
        None => q,
    };
    let q = match template {
        "request-count" => format!("sum(increase({req}{{{sel}}}[{window}]))"),
        "error-rate" => format!(
            r#"100 * (sum(rate({req}{{{sel},{code}=~"5.."}}[{window}])) or vector(0)) / sum(rate({req}{{{sel}}}[{window}]))"#
        ),
        "success-rate" => format!(
            r#"100 * (sum(rate({req}{{{sel},{code}!~"5.."}}[{window}])) or vector(0)) / sum(rate({req}{{{sel}}}[{window}]))"#
        ),
        "latency-p95" | "latency-p99" => {
            let q = if template == "latency-p95" { "0.95" } else { "0.99" };
            ms(format!("histogram_quantile({q}, sum by (le) (rate({dur}_bucket{{{sel}}}[{window}])))"))
        }
        "latency-mean" => {
            ms(format!("sum(rate({dur}_sum{{{sel}}}[{window}])) / sum(rate({dur}_count{{{sel}}}[{window}]))"))
        }
        other => return Err(TemplateError::UnknownTemplate(other.to_string())),
    };
    Ok(q)
}

/// Errors (5xx) of a target over a window, as a count (0 when there were none).
pub fn error_count(scope: &Scope, t: Target, window: &str) -> String {
    let n = names(scope.dialect);
    format!(r#"sum(increase({}{{{},{}=~"5.."}}[{window}])) or vector(0)"#, n.requests, scope.selector(t), n.code)
}

/// Requests of a target per latency bucket over a window (`sum by (le)`), and how many
/// milliseconds one unit of the histogram's `le` is.
pub fn latency_buckets(scope: &Scope, t: Target, window: &str) -> (String, f64) {
    let n = names(scope.dialect);
    let q = format!("sum by (le) (increase({}_bucket{{{}}}[{window}]))", n.duration, scope.selector(t));
    (q, if n.to_ms.is_some() { 1000.0 } else { 1.0 })
}

/// Does this built-in template measure the error stream (and so can be judged sequentially)?
pub fn is_error_template(template: &str) -> bool {
    matches!(template, "success-rate" | "error-rate")
}

/// Substitute the SPEC variables in a custom `query:` template. `{{target}}` is the measured
/// version (the canary version for canary queries, the stable version for stable ones).
pub fn custom(query: &str, scope: &Scope, t: Target, window: &str) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(query.len() + 32);
    let mut parts = crate::policy::placeholders(query);
    for p in parts.by_ref() {
        let (before, var) = p.map_err(|_| TemplateError::Unclosed)?;
        out.push_str(before);
        let value = match var {
            "namespace" => esc(&scope.namespace),
            "service" => esc(&scope.service),
            "version" => esc(&scope.version),
            "stable_version" => esc(&scope.stable_version),
            "interval" => window.to_string(),
            "target" => esc(scope.version_of(t)),
            other => return Err(TemplateError::UnknownVariable(other.to_string())),
        };
        out.push_str(&value);
    }
    out.push_str(parts.rest());
    Ok(out)
}

/// A duration as a PromQL range (`60s`, `1500ms`), at least 1 ms.
pub fn promql_duration(d: Duration) -> String {
    let ms = d.as_millis().max(1);
    if ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else { format!("{ms}ms") }
}

/// Escape a value for a double-quoted PromQL label matcher.
fn esc(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', r#"\""#).replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(dialect: Dialect) -> Scope {
        Scope {
            dialect,
            namespace: "shop".into(),
            service: "cart".into(),
            version: "v2".into(),
            stable_version: "v1".into(),
            ingress: "cart".into(),
            split: IngressSplit::CanaryLabel,
        }
    }

    #[test]
    fn generic_templates_are_exact() {
        let s = scope(Dialect::Generic);
        let sel = r#"namespace="shop",service="cart",version="v2""#;
        let q = |t| builtin(t, &s, Target::Canary, "60s").unwrap();
        assert_eq!(
            q("success-rate"),
            format!(
                r#"100 * (sum(rate(http_requests_total{{{sel},code!~"5.."}}[60s])) or vector(0)) / sum(rate(http_requests_total{{{sel}}}[60s]))"#
            )
        );
        assert_eq!(
            q("error-rate"),
            format!(
                r#"100 * (sum(rate(http_requests_total{{{sel},code=~"5.."}}[60s])) or vector(0)) / sum(rate(http_requests_total{{{sel}}}[60s]))"#
            )
        );
        assert_eq!(
            q("latency-p95"),
            format!(
                r#"1000 * histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{{sel}}}[60s])))"#
            )
        );
        assert_eq!(
            q("latency-p99"),
            format!(
                r#"1000 * histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{{{sel}}}[60s])))"#
            )
        );
        assert_eq!(
            q("latency-mean"),
            format!(
                r#"1000 * sum(rate(http_request_duration_seconds_sum{{{sel}}}[60s])) / sum(rate(http_request_duration_seconds_count{{{sel}}}[60s]))"#
            )
        );
        assert_eq!(q("request-count"), format!(r#"sum(increase(http_requests_total{{{sel}}}[60s]))"#));
        assert_eq!(
            latency_buckets(&s, Target::Canary, "90s"),
            (format!("sum by (le) (increase(http_request_duration_seconds_bucket{{{sel}}}[90s]))"), 1000.0)
        );
        let stable = builtin("request-count", &s, Target::Stable, "5s").unwrap();
        assert_eq!(stable, r#"sum(increase(http_requests_total{namespace="shop",service="cart",version="v1"}[5s]))"#);
    }

    #[test]
    fn istio_uses_destination_labels_and_milliseconds() {
        let s = scope(Dialect::Istio);
        let sel = r#"reporter="destination",destination_workload_namespace="shop",destination_service_name="cart",destination_version="v1""#;
        assert_eq!(
            builtin("error-rate", &s, Target::Stable, "1m").unwrap(),
            format!(
                r#"100 * (sum(rate(istio_requests_total{{{sel},response_code=~"5.."}}[1m])) or vector(0)) / sum(rate(istio_requests_total{{{sel}}}[1m]))"#
            )
        );
        assert_eq!(latency_buckets(&s, Target::Stable, "1m").1, 1.0, "istio buckets are in milliseconds");
        // Istio's histogram is already in milliseconds: no scaling.
        assert_eq!(
            builtin("latency-p99", &s, Target::Stable, "1m").unwrap(),
            format!(
                r#"histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{sel}}}[1m])))"#
            )
        );
    }

    #[test]
    fn nginx_ingress_splits_by_canary_label_or_service() {
        let mut s = scope(Dialect::NginxIngress);
        s.ingress = "cart-web".into();
        assert_eq!(
            builtin("request-count", &s, Target::Canary, "30s").unwrap(),
            r#"sum(increase(nginx_ingress_controller_requests{namespace="shop",ingress="cart-web",canary!=""}[30s]))"#
        );
        assert_eq!(
            error_count(&s, Target::Stable, "30s"),
            r#"sum(increase(nginx_ingress_controller_requests{namespace="shop",ingress="cart-web",canary="",status=~"5.."}[30s])) or vector(0)"#
        );
        s.split = IngressSplit::Services { canary: "cart-green".into(), stable: "cart-blue".into() };
        assert_eq!(
            builtin("latency-mean", &s, Target::Canary, "30s").unwrap(),
            r#"1000 * sum(rate(nginx_ingress_controller_request_duration_seconds_sum{namespace="shop",ingress="cart-web",service="cart-green"}[30s])) / sum(rate(nginx_ingress_controller_request_duration_seconds_count{namespace="shop",ingress="cart-web",service="cart-green"}[30s]))"#
        );
    }

    #[test]
    fn custom_queries_substitute_every_variable() {
        let s = scope(Dialect::Generic);
        let q = "sum(rate(x{ns=\"{{namespace}}\",svc=\"{{ service }}\",v=\"{{target}}\",c=\"{{version}}\",s=\"{{stable_version}}\"}[{{interval}}]))";
        assert_eq!(
            custom(q, &s, Target::Stable, "90s").unwrap(),
            r#"sum(rate(x{ns="shop",svc="cart",v="v1",c="v2",s="v1"}[90s]))"#
        );
        assert_eq!(
            custom("x{a=\"{{nope}}\"}", &s, Target::Canary, "1s"),
            Err(TemplateError::UnknownVariable("nope".into()))
        );
        assert_eq!(custom("x{{", &s, Target::Canary, "1s"), Err(TemplateError::Unclosed));
        assert!(matches!(builtin("latency-p50", &s, Target::Canary, "1s"), Err(TemplateError::UnknownTemplate(_))));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = scope(Dialect::Generic);
        s.version = "v\"2\\".into();
        assert!(s.selector(Target::Canary).contains(r#"version="v\"2\\""#));
    }

    #[test]
    fn durations_render_as_promql_ranges() {
        assert_eq!(promql_duration(Duration::from_secs(60)), "60s");
        assert_eq!(promql_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(promql_duration(Duration::ZERO), "1ms");
    }

    #[test]
    fn every_builtin_renders_for_every_dialect_and_target() {
        for d in [Dialect::Generic, Dialect::Istio, Dialect::NginxIngress] {
            for t in crate::policy::BUILTIN_TEMPLATES {
                for target in [Target::Canary, Target::Stable] {
                    let q = builtin(t, &scope(d), target, "60s").unwrap();
                    assert!(q.contains("[60s]"), "{q}");
                }
            }
        }
    }
}
