//! Traffic routers: set "canary gets N %, stable 100 − N" on some load balancer.
//!
//! Every call is an idempotent "set the weights to W" (never "add 20 %"), so the driver may repeat it
//! after a crash or a timeout. Routers hold no rollout logic. The port ([`Router`], [`RouterFactory`],
//! [`RouterError`]) is the core's (`rollout::ports`); this module holds its implementations.

pub mod canary_match;
pub mod events;
pub mod exec;
pub mod gateway_api;
pub mod istio;
pub mod istio_shape;
pub mod k8s;
pub mod nginx;
pub mod nginx_ingress;
pub mod nginx_ingress_workload;

use std::sync::Arc;

use crate::config;
use crate::policy::Strategy;
pub use crate::rollout::ports::{Router, RouterError, RouterFactory};
use crate::rollout::{Rollout, RouterSpec};
use k8s::KubeAccess;

/// The factory the daemon uses: every router kind of SPEC §4. The Kubernetes client is created on
/// first use of a Kubernetes router (`istio`, `nginx-ingress`, `gateway-api`; from the `[kubernetes]` config), so a daemon
/// that only drives NGINX or exec routers needs no cluster access at all.
pub struct Routers {
    kube: Arc<KubeAccess>,
    /// Record Kubernetes Events on the objects Kubernetes routers change (on unless turned off).
    events: bool,
}

impl Default for Routers {
    fn default() -> Self {
        Routers::new(&config::Kubernetes::default())
    }
}

impl Routers {
    pub fn new(kubernetes: &config::Kubernetes) -> Self {
        Routers { kube: Arc::new(KubeAccess::new(kubernetes.clone())), events: true }
    }

    /// The cluster access these routers share (the workload adapter uses it too).
    pub fn kube(&self) -> Arc<KubeAccess> {
        self.kube.clone()
    }

    /// Routers talking to the cluster through this client (tests, embedding).
    pub fn with_kube_client(client: kube::Client) -> Self {
        Routers { kube: Arc::new(KubeAccess::with_client(client)), events: true }
    }

    /// Routers that record no Kubernetes Events (tests that pin a router's exact API requests).
    pub fn without_events(self) -> Self {
        Routers { events: false, ..self }
    }
}

impl RouterFactory for Routers {
    fn build(&self, r: &Rollout) -> Result<Arc<dyn Router>, RouterError> {
        let ns = &r.namespace;
        let router: Arc<dyn Router> = match &r.router {
            RouterSpec::Exec { command } => Arc::new(exec::ExecRouter::new(command.clone(), r)),
            RouterSpec::Istio { virtual_service, route, stable_subset, canary_subset } => {
                let router = istio::IstioRouter::new(
                    self.kube.clone(),
                    ns,
                    virtual_service,
                    route.as_deref(),
                    stable_subset,
                    canary_subset,
                    &r.policy.canary_match,
                );
                // Only a workload release shapes the routing objects.
                match r.workload {
                    Some(_) => Arc::new(router.with_version(&r.version)),
                    None => Arc::new(router),
                }
            }
            RouterSpec::NginxIngress { ingress, canary_ingress, canary_service, stable_service } => {
                let mode = match (r.policy.strategy, canary_ingress) {
                    (Strategy::Canary, Some(k)) => nginx_ingress::Mode::Canary { canary_ingress: k.clone() },
                    (Strategy::Canary, None) => {
                        return Err(RouterError::Permanent("nginx-ingress canary needs router.canaryIngress".into()));
                    }
                    (Strategy::BlueGreen, _) => nginx_ingress::Mode::BlueGreen,
                };
                let router = nginx_ingress::NginxIngressRouter::new(
                    self.kube.clone(),
                    ns,
                    ingress,
                    mode,
                    stable_service.as_deref(),
                    canary_service.as_deref(),
                    &r.policy.canary_match,
                );
                // Only a workload release reads and writes Services (and needs the RBAC for it).
                match r.workload {
                    Some(_) => Arc::new(router.with_versions(&r.stable_version, &r.version)),
                    None => Arc::new(router),
                }
            }
            RouterSpec::GatewayApi { http_route, grpc_route, rule, stable_backend, canary_backend } => {
                let (kind, route) = match (http_route, grpc_route) {
                    (Some(h), _) => (gateway_api::RouteKind::Http, h),
                    (None, Some(g)) => (gateway_api::RouteKind::Grpc, g),
                    (None, None) => {
                        return Err(RouterError::Permanent(
                            "gateway-api needs router.httpRoute or router.grpcRoute".into(),
                        ));
                    }
                };
                Arc::new(gateway_api::GatewayApiRouter::new(
                    self.kube.clone(),
                    ns,
                    (kind, route),
                    rule.as_deref(),
                    (stable_backend, canary_backend),
                    &r.policy.canary_match,
                ))
            }
            RouterSpec::Nginx { config_file, variable, stable_upstream, canary_upstream, test, reload } => {
                Arc::new(nginx::NginxRouter::new(
                    config_file,
                    variable,
                    stable_upstream,
                    canary_upstream,
                    test.clone(),
                    reload.clone(),
                ))
            }
        };
        // Kubernetes routers also leave Events on the object they change.
        Ok(match events::target(r).filter(|_| self.events) {
            Some(t) => Arc::new(events::Evented::new(router, self.kube.clone(), t, r)),
            None => router,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn rollout(router: RouterSpec, strategy: Strategy) -> Rollout {
        let mut req = fixtures::request("agent-service", "p");
        req.router = router;
        let mut policy = fixtures::policy("p", &[5, 100], std::time::Duration::from_secs(1), 1);
        policy.strategy = strategy;
        crate::rollout::machine::create("r".into(), &req, policy, "t", 0).0
    }

    #[test]
    fn every_kind_builds_without_touching_the_cluster() {
        let routers = Routers::new(&config::Kubernetes { kubeconfig: "/nonexistent".into(), context: String::new() });
        let istio = RouterSpec::Istio {
            virtual_service: "vs".into(),
            route: None,
            stable_subset: "a".into(),
            canary_subset: "b".into(),
        };
        let ingress = |k: Option<&str>| RouterSpec::NginxIngress {
            ingress: "main".into(),
            canary_ingress: k.map(Into::into),
            canary_service: Some("green".into()),
            stable_service: Some("blue".into()),
        };
        let nginx = RouterSpec::Nginx {
            config_file: "/tmp/x.conf".into(),
            variable: "v".into(),
            stable_upstream: "s".into(),
            canary_upstream: "c".into(),
            test: None,
            reload: vec!["true".into()],
        };
        let exec = RouterSpec::Exec { command: vec!["true".into()] };
        let gateway = |http: Option<&str>, grpc: Option<&str>| RouterSpec::GatewayApi {
            http_route: http.map(Into::into),
            grpc_route: grpc.map(Into::into),
            rule: None,
            stable_backend: "blue".into(),
            canary_backend: "green".into(),
        };
        for (spec, strategy, kind) in [
            (istio, Strategy::Canary, "istio"),
            (ingress(Some("canary")), Strategy::Canary, "nginx-ingress"),
            (ingress(None), Strategy::BlueGreen, "nginx-ingress"),
            (nginx, Strategy::Canary, "nginx"),
            (exec, Strategy::Canary, "exec"),
            (gateway(Some("web"), None), Strategy::Canary, "gateway-api"),
            (gateway(None, Some("rpc")), Strategy::BlueGreen, "gateway-api"),
        ] {
            let r = routers.build(&rollout(spec, strategy)).map(|r| r.kind());
            assert_eq!(r, Ok(kind));
        }
        let e = routers.build(&rollout(ingress(None), Strategy::Canary)).err();
        assert!(e.is_some_and(|e| e.is_permanent() && e.to_string().contains("canaryIngress")));
        let e = routers.build(&rollout(gateway(None, None), Strategy::Canary)).err();
        assert!(e.is_some_and(|e| e.is_permanent() && e.to_string().contains("httpRoute")));
    }
}
