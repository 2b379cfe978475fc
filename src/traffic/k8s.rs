//! Kubernetes plumbing shared by the `istio`, `nginx-ingress` and `gateway-api` routers: the lazily created client,
//! the API resources they touch, error classification and the guarded-write retry loop.
//!
//! Every write is a JSON patch whose first op is `test /metadata/resourceVersion`: it applies only to
//! the exact object version that was read, so a concurrent edit is never overwritten. The API server
//! answers such a failed precondition with 422 (a failed `test` op) or 409 (a conflict on its own
//! internal retry); both mean "re-read and decide again", which [`retry_conflicts`] does with a short
//! backoff before giving up with a transient error for the machine's slower retry.

use std::future::Future;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::RouterError;
use crate::config;

/// The label by which an object's owners let vane patch it (`[kubernetes] require_opt_in`).
pub const MANAGED_LABEL: &str = "vane.dev/managed";
/// The label vane puts on the objects it creates (e.g. a canary Ingress).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "vane");

fn label<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str)
}

/// Labelled `vane.dev/managed: "true"` (by its owners, or by vane on what it creates).
pub fn managed(meta: &kube::api::ObjectMeta) -> bool {
    label(meta, MANAGED_LABEL) == Some("true")
}

/// Created by vane (it carries vane's `app.kubernetes.io/managed-by`).
pub fn created_by_vane(meta: &kube::api::ObjectMeta) -> bool {
    label(meta, MANAGED_BY.0) == Some(MANAGED_BY.1)
}

/// Attempts of one guarded write before the conflict is reported as transient.
pub const CONFLICT_ATTEMPTS: u32 = 6;
/// Upper bound of one router call (all reads, writes and conflict retries).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How vane reaches the cluster: created on first use of a Kubernetes router, so a daemon that only
/// drives NGINX or exec routers never needs a kubeconfig.
pub struct KubeAccess {
    settings: config::Kubernetes,
    client: OnceCell<kube::Client>,
}

impl KubeAccess {
    pub fn new(settings: config::Kubernetes) -> Self {
        KubeAccess { settings, client: OnceCell::new() }
    }

    /// Use this client instead of loading a configuration (tests, embedding).
    pub fn with_client(client: kube::Client) -> Self {
        KubeAccess::with_client_and(client, config::Kubernetes::default())
    }

    /// This client, under these `[kubernetes]` limits (namespaces, opt-in).
    pub fn with_client_and(client: kube::Client, settings: config::Kubernetes) -> Self {
        KubeAccess { settings, client: OnceCell::new_with(Some(client)) }
    }

    /// The client for objects in `namespace`, which `[kubernetes] namespaces` must allow (checked
    /// again here, not only at create, so a narrowed configuration also binds resumed rollouts).
    pub async fn client_in(&self, namespace: &str) -> Result<kube::Client, RouterError> {
        if !self.settings.namespaces.allows(namespace) {
            return Err(RouterError::Permanent(format!(
                "vane may not touch namespace {namespace} ([kubernetes] namespaces: {})",
                self.settings.namespaces.describe()
            )));
        }
        self.client().await
    }

    /// May vane patch the object with `meta` (described as `what`)? With `require_opt_in` only
    /// objects its owners labelled `vane.dev/managed: "true"`, or that vane created, are written.
    pub fn check_opt_in(&self, meta: &kube::api::ObjectMeta, what: &str) -> Result<(), RouterError> {
        if !self.settings.require_opt_in || managed(meta) || created_by_vane(meta) {
            return Ok(());
        }
        Err(RouterError::Permanent(format!(
            "{what} is not labelled {MANAGED_LABEL}: \"true\"; vane only changes objects their owners opted in \
             (add the label, or set [kubernetes] require_opt_in = false)"
        )))
    }

    /// The client; a configuration that cannot be loaded is a permanent error (nothing to retry
    /// until someone fixes the config), and is tried again on the next call rather than cached.
    pub async fn client(&self) -> Result<kube::Client, RouterError> {
        self.client
            .get_or_try_init(|| async {
                crate::install_crypto_provider();
                let mut cfg = self.load_config().await?;
                if cfg.read_timeout.is_none_or(|t| t > Duration::from_secs(30)) {
                    cfg.read_timeout = Some(Duration::from_secs(30));
                }
                kube::Client::try_from(cfg)
                    .map_err(|e| RouterError::Permanent(format!("no Kubernetes access: cannot build a client: {e}")))
            })
            .await
            .cloned()
    }

    /// In a pod (KUBERNETES_SERVICE_HOST set and no kubeconfig configured): the service account.
    /// Otherwise `[kubernetes] kubeconfig` (default $KUBECONFIG, ~/.kube/config) and `context`.
    async fn load_config(&self) -> Result<kube::Config, RouterError> {
        let s = &self.settings;
        let no_access = |what: String| {
            RouterError::Permanent(format!(
                "no Kubernetes access: {what} (vane uses the in-cluster service account in a pod, else \
                 [kubernetes] kubeconfig/context, $KUBECONFIG or ~/.kube/config)"
            ))
        };
        let opts = kube::config::KubeConfigOptions {
            context: (!s.context.is_empty()).then(|| s.context.clone()),
            ..Default::default()
        };
        if !s.kubeconfig.is_empty() {
            let kc = kube::config::Kubeconfig::read_from(&s.kubeconfig)
                .map_err(|e| no_access(format!("kubeconfig {}: {e}", s.kubeconfig)))?;
            return kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| no_access(format!("kubeconfig {}: {e}", s.kubeconfig)));
        }
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() && s.context.is_empty() {
            return kube::Config::incluster().map_err(|e| no_access(format!("in-cluster configuration: {e}")));
        }
        kube::Config::from_kubeconfig(&opts).await.map_err(|e| no_access(format!("kubeconfig: {e}")))
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

pub fn virtual_service() -> ApiResource {
    resource("networking.istio.io", "v1beta1", "VirtualService", "virtualservices")
}

pub fn destination_rule() -> ApiResource {
    resource("networking.istio.io", "v1beta1", "DestinationRule", "destinationrules")
}

/// Core v1 Events (what `kubectl describe` shows), see `traffic::events`.
pub fn event() -> ApiResource {
    resource("", "v1", "Event", "events")
}

pub fn ingress() -> ApiResource {
    resource("networking.k8s.io", "v1", "Ingress", "ingresses")
}

pub fn http_route() -> ApiResource {
    resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")
}

pub fn grpc_route() -> ApiResource {
    resource("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes")
}

pub fn service() -> ApiResource {
    resource("", "v1", "Service", "services")
}

/// One named object of one kind in one namespace, with errors that name it.
#[derive(Clone)]
pub struct Obj {
    pub api: Api<DynamicObject>,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Obj {
    pub fn new(client: kube::Client, ar: &ApiResource, namespace: &str, name: &str) -> Obj {
        Obj {
            api: Api::namespaced_with(client, namespace, ar),
            kind: ar.kind.clone(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }

    /// The object; a missing one is a permanent error.
    pub async fn get(&self) -> Result<DynamicObject, RouterError> {
        self.api.get(&self.name).await.map_err(|e| classify(&self.describe(), e))
    }

    /// The object, or None when it does not exist.
    pub async fn get_opt(&self) -> Result<Option<DynamicObject>, RouterError> {
        self.api.get_opt(&self.name).await.map_err(|e| classify(&self.describe(), e))
    }

    /// Apply `ops` only if the object is still at `resource_version`.
    pub async fn patch_guarded(&self, resource_version: &str, ops: Vec<Value>) -> Result<(), Attempt> {
        let mut all = vec![json!({ "op": "test", "path": "/metadata/resourceVersion", "value": resource_version })];
        all.extend(ops);
        let patch: Patch<()> = Patch::Json(serde_json::from_value(Value::Array(all)).map_err(|e| {
            Attempt::Failed(RouterError::Permanent(format!("internal error building a JSON patch: {e}")))
        })?);
        match self.api.patch(&self.name, &PatchParams::default(), &patch).await {
            Ok(_) => Ok(()),
            Err(e) => Err(attempt(&self.describe(), e)),
        }
    }
}

/// The outcome of one guarded write that did not succeed.
#[derive(Debug)]
pub enum Attempt {
    /// The object changed under us: re-read and decide again.
    Conflict(String),
    Failed(RouterError),
}

impl From<RouterError> for Attempt {
    fn from(e: RouterError) -> Self {
        Attempt::Failed(e)
    }
}

fn attempt(what: &str, e: kube::Error) -> Attempt {
    match &e {
        // A 422 naming the fields it rejects is the object's schema or CEL rules refusing the change
        // (a failed `test` op names none): retrying the same change cannot help.
        kube::Error::Api(s) if s.code == 422 && s.details.as_ref().is_some_and(|d| !d.causes.is_empty()) => {
            Attempt::Failed(RouterError::Permanent(format!("{what}: the API server refused the change: {}", s.message)))
        }
        kube::Error::Api(s) if s.code == 409 || s.code == 422 => {
            Attempt::Conflict(format!("{what} changed while being written ({} {}): {}", s.code, s.reason, s.message))
        }
        _ => Attempt::Failed(classify(what, e)),
    }
}

/// Not found, forbidden and unauthorized need a person; everything else may pass on a retry.
pub fn classify(what: &str, e: kube::Error) -> RouterError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => {
            RouterError::Permanent(format!("{what} not found (deleted, or wrong name/namespace?)"))
        }
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => RouterError::Permanent(format!(
            "{what}: access denied ({} {}): {} — see docs/routers.md for the RBAC vane needs",
            s.code, s.reason, s.message
        )),
        kube::Error::Api(s) => {
            RouterError::Transient(format!("{what}: API server answered {} {}: {}", s.code, s.reason, s.message))
        }
        _ => RouterError::Transient(format!("{what}: cannot reach the Kubernetes API: {e}")),
    }
}

/// Run `f` (read, decide, guarded write) until it succeeds, fails for another reason, or has met
/// [`CONFLICT_ATTEMPTS`] conflicts; backoff 25 ms doubling, with jitter so two writers separate.
pub async fn retry_conflicts<F, Fut>(what: &str, mut f: F) -> Result<(), RouterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Attempt>>,
{
    let mut last = String::new();
    for n in 0..CONFLICT_ATTEMPTS {
        match f().await {
            Ok(()) => return Ok(()),
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::Conflict(msg)) => {
                tracing::debug!(attempt = n + 1, "{msg}; re-reading");
                last = msg;
                let base = 25u64 << n.min(5);
                let jitter = rand::random_range(0..=base / 2);
                tokio::time::sleep(Duration::from_millis(base + jitter)).await;
            }
        }
    }
    Err(RouterError::Transient(format!("{what}: still conflicting after {CONFLICT_ATTEMPTS} attempts ({last})")))
}

/// Bound a whole router call in time; a timeout is transient.
pub async fn bounded<T>(what: &str, fut: impl Future<Output = Result<T, RouterError>>) -> Result<T, RouterError> {
    tokio::time::timeout(CALL_TIMEOUT, fut).await.map_err(|_| {
        RouterError::Transient(format!("{what}: no answer from the Kubernetes API within {CALL_TIMEOUT:?}"))
    })?
}

/// RFC 6901 escaping of one JSON-pointer segment.
pub fn pointer_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The object's resourceVersion (every object read from the API server has one).
pub fn resource_version(o: &DynamicObject) -> Result<String, RouterError> {
    o.metadata
        .resource_version
        .clone()
        .ok_or_else(|| RouterError::Transient("object read without a resourceVersion".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_segments_are_escaped() {
        assert_eq!(
            pointer_segment("nginx.ingress.kubernetes.io/canary-weight"),
            "nginx.ingress.kubernetes.io~1canary-weight"
        );
        assert_eq!(pointer_segment("a~b"), "a~0b");
    }

    #[tokio::test(start_paused = true)]
    async fn conflicts_are_retried_then_reported_as_transient() {
        let mut calls = 0;
        let r = retry_conflicts("VirtualService x/y", || {
            calls += 1;
            async { Err(Attempt::Conflict("changed".into())) }
        })
        .await;
        assert_eq!(calls, CONFLICT_ATTEMPTS);
        assert!(matches!(r, Err(RouterError::Transient(m)) if m.contains("still conflicting")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_then_success_is_success() {
        let mut calls = 0;
        let r = retry_conflicts("x", || {
            calls += 1;
            let c = calls;
            async move { if c < 3 { Err(Attempt::Conflict("changed".into())) } else { Ok(()) } }
        })
        .await;
        assert_eq!((r, calls), (Ok(()), 3));
    }

    #[tokio::test]
    async fn a_permanent_failure_stops_at_once() {
        let mut calls = 0;
        let r = retry_conflicts("x", || {
            calls += 1;
            async { Err(Attempt::Failed(RouterError::Permanent("gone".into()))) }
        })
        .await;
        assert_eq!((r, calls), (Err(RouterError::Permanent("gone".into())), 1));
    }

    #[tokio::test]
    async fn missing_kubeconfig_is_a_clear_permanent_error() {
        let k =
            KubeAccess::new(config::Kubernetes { kubeconfig: "/nonexistent/kubeconfig".into(), ..Default::default() });
        let e = k.client().await.err().map(|e| (e.is_permanent(), e.to_string()));
        let (permanent, msg) = e.unwrap_or_default();
        assert!(permanent && msg.contains("no Kubernetes access") && msg.contains("/nonexistent/kubeconfig"), "{msg}");
    }
}
