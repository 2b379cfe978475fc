//! Traffic routers: set "canary gets N %, stable 100 − N" on some load balancer.
//!
//! Every call is an idempotent "set the weights to W" (never "add 20 %"), so the driver may repeat it
//! after a crash or a timeout. Routers hold no rollout logic. The port ([`Router`], [`RouterFactory`],
//! [`RouterError`]) is the core's (`rollout::ports`); this module holds its implementations.

pub mod canary_match;
pub mod events;
pub mod exec;
pub mod gateway_api;
pub mod gateway_api_workload;
pub mod istio;
pub mod istio_shape;
pub mod k8s;
pub mod nginx;
pub mod nginx_ingress;
pub mod nginx_ingress_workload;

use std::sync::Arc;

use crate::config;
use crate::policy::FieldError;
use crate::policy::Strategy;
use crate::redact::Redactor;
pub use crate::rollout::ports::{Router, RouterError, RouterFactory};
use crate::rollout::{CreateRequest, Rollout, RouterSpec};
use k8s::KubeAccess;

/// The factory the daemon uses: every router kind of SPEC §4. The Kubernetes client is created on
/// first use of a Kubernetes router (`istio`, `nginx-ingress`, `gateway-api`; from the `[kubernetes]`
/// config), so a daemon that only drives NGINX or exec routers needs no cluster access at all. `exec`
/// and `nginx` routers come from the profiles of `[routers]`: without one of its kind, that kind is
/// refused.
pub struct Routers {
    kube: Arc<KubeAccess>,
    profiles: config::RouterProfiles,
    redactor: Arc<Redactor>,
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
        Routers::with_kube(Arc::new(KubeAccess::new(kubernetes.clone())))
    }

    /// The cluster access these routers share (the workload adapter uses it too).
    pub fn kube(&self) -> Arc<KubeAccess> {
        self.kube.clone()
    }

    /// Routers talking to the cluster through this client (tests, embedding).
    pub fn with_kube_client(client: kube::Client) -> Self {
        Routers::with_kube(Arc::new(KubeAccess::with_client(client)))
    }

    fn with_kube(kube: Arc<KubeAccess>) -> Self {
        Routers { kube, profiles: Default::default(), redactor: Arc::default(), events: true }
    }

    /// The `[routers]` profiles, and the redactor their commands' output goes through.
    pub fn with_profiles(mut self, profiles: config::RouterProfiles, redactor: Arc<Redactor>) -> Self {
        self.profiles = profiles;
        self.redactor = redactor;
        self
    }

    /// Routers that record no Kubernetes Events (tests that pin a router's exact API requests).
    pub fn without_events(self) -> Self {
        Routers { events: false, ..self }
    }

    /// Routers talking to the cluster through this client under these `[kubernetes]` limits.
    pub fn with_kube_client_and(client: kube::Client, kubernetes: &config::Kubernetes) -> Self {
        Routers::with_kube(Arc::new(KubeAccess::with_client_and(client, kubernetes.clone())))
    }

    fn exec_profile(&self, name: &str) -> Result<&config::ExecProfile, String> {
        self.profiles.exec.get(name).ok_or_else(|| unknown_profile("exec", name, self.profiles.exec.keys()))
    }

    fn nginx_profile(&self, name: &str) -> Result<&config::NginxProfile, String> {
        self.profiles.nginx.get(name).ok_or_else(|| unknown_profile("nginx", name, self.profiles.nginx.keys()))
    }
}

fn unknown_profile<'a>(kind: &str, name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let known: Vec<&str> = known.map(String::as_str).collect();
    if name.is_empty() {
        format!("this rollout names no {kind} profile (it was created before router profiles); finish it by hand")
    } else if known.is_empty() {
        format!("no {kind} router profile is configured ([routers.{kind}.NAME] in the daemon's configuration)")
    } else {
        format!("unknown {kind} router profile {name:?}; configured: {}", known.join(", "))
    }
}

impl RouterFactory for Routers {
    fn build(&self, r: &Rollout) -> Result<Arc<dyn Router>, RouterError> {
        let ns = &r.namespace;
        let router: Arc<dyn Router> = match &r.router {
            RouterSpec::Exec { profile } => {
                let p = self.exec_profile(profile).map_err(RouterError::Permanent)?;
                Arc::new(exec::ExecRouter::new(p, r, self.redactor.clone()))
            }
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
                let router = gateway_api::GatewayApiRouter::new(
                    self.kube.clone(),
                    ns,
                    (kind, route),
                    rule.as_deref(),
                    (stable_backend, canary_backend),
                    &r.policy.canary_match,
                );
                // Only a workload release creates the canary Service and backendRef.
                match r.workload {
                    Some(_) => Arc::new(router.with_versions(&r.stable_version, &r.version)),
                    None => Arc::new(router),
                }
            }
            RouterSpec::Nginx { profile, stable_upstream, canary_upstream } => {
                let p = self.nginx_profile(profile).map_err(RouterError::Permanent)?;
                Arc::new(
                    nginx::NginxRouter::new(
                        &p.config_file,
                        &p.variable,
                        stable_upstream,
                        canary_upstream,
                        p.test.clone(),
                        p.reload.clone(),
                    )
                    .with_redactor(self.redactor.clone()),
                )
            }
        };
        // Kubernetes routers also leave Events on the object they change.
        Ok(match events::target(r).filter(|_| self.events) {
            Some(t) => Arc::new(events::Evented::new(router, self.kube.clone(), t, r)),
            None => router,
        })
    }

    /// A profile must exist and serve the request's namespace (422 `router.profile` otherwise).
    fn admit(&self, req: &CreateRequest) -> Result<(), FieldError> {
        let namespaces = match &req.router {
            RouterSpec::Exec { profile } => &self.exec_profile(profile).map_err(profile_error)?.namespaces,
            RouterSpec::Nginx { profile, .. } => &self.nginx_profile(profile).map_err(profile_error)?.namespaces,
            _ => return Ok(()),
        };
        if crate::scope::Namespaces(namespaces.clone()).allows(&req.namespace) {
            Ok(())
        } else {
            Err(FieldError::new(
                "router.profile",
                format!(
                    "profile is not available to namespace {:?} (its namespaces: {})",
                    req.namespace,
                    namespaces.join(", ")
                ),
            ))
        }
    }
}

fn profile_error(message: String) -> FieldError {
    FieldError::new("router.profile", message)
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

    fn profiles() -> config::RouterProfiles {
        let mut p = config::RouterProfiles::default();
        p.exec.insert(
            "lb".into(),
            config::ExecProfile { command: vec!["true".into()], env: vec![], namespaces: vec!["shop-*".into()] },
        );
        p.nginx.insert(
            "edge".into(),
            config::NginxProfile {
                config_file: "/tmp/x.conf".into(),
                variable: "v".into(),
                test: None,
                reload: vec!["true".into()],
                namespaces: vec!["*".into()],
            },
        );
        p
    }

    #[test]
    fn every_kind_builds_without_touching_the_cluster() {
        let routers = Routers::new(&config::Kubernetes { kubeconfig: "/nonexistent".into(), ..Default::default() })
            .with_profiles(profiles(), Arc::default());
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
        let nginx =
            RouterSpec::Nginx { profile: "edge".into(), stable_upstream: "s".into(), canary_upstream: "c".into() };
        let exec = RouterSpec::Exec { profile: "lb".into() };
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

    #[test]
    fn only_configured_profiles_for_their_namespaces_are_admitted() {
        let routers = Routers::default().with_profiles(profiles(), Arc::default());
        let req = |ns: &str, router: RouterSpec| {
            let mut r = fixtures::request("agent-service", "p");
            r.namespace = ns.into();
            r.router = router;
            r
        };
        let exec = |p: &str| RouterSpec::Exec { profile: p.into() };
        assert_eq!(routers.admit(&req("shop-prod", exec("lb"))), Ok(()));
        let e = routers.admit(&req("payments", exec("lb"))).unwrap_err();
        assert_eq!(e.field, "router.profile");
        assert!(e.message.contains("payments"), "{e}");
        let e = routers.admit(&req("shop-prod", exec("other"))).unwrap_err();
        assert!(e.field == "router.profile" && e.message.contains("configured: lb"), "{e}");
        let none = Routers::default();
        let e = none.admit(&req("shop-prod", exec("lb"))).unwrap_err();
        assert!(e.message.contains("no exec router profile is configured"), "{e}");
        let e = none.build(&rollout(exec("lb"), Strategy::Canary)).err();
        assert!(e.is_some_and(|e| e.is_permanent()));
    }
}
