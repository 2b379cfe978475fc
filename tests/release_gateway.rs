//! Workload releases with the `gateway-api` router against a real API server with the real Gateway
//! API v1.6.1 CRDs, and the `[kubernetes] require_opt_in` gate on what a release writes: vane
//! creates the canary Service and its 0 % backendRef, sizes the canary ahead of each shift, promotes
//! agent-service in place and ends with the rule on the stable Service alone, or moves the traffic
//! back before it scales the canary to 0; and it writes nothing at all for owners who did not opt in.

#[path = "support/deploy_controller.rs"]
mod deploy_controller;
#[path = "support/k8s.rs"]
mod k8s;
#[path = "support/release.rs"]
mod release;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject};
use release::{IMAGE, World, controller_for, dedup, deployment, workload};
use serde_json::{Value, json};
use vane::fixtures;
use vane::rollout::{Phase, Rollout, RouterSpec};
use vane::traffic::k8s::{event, http_route};

const NAME: &str = "agent-service";
const CANARY: &str = "agent-service-canary";

/// The stable Service: selects agent-service's pods by `version`.
fn service(labels: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": NAME, "labels": labels },
            "spec": { "selector": { "app": NAME, "version": "v1.0.0" },
                      "ports": [{ "name": "http", "port": 8080, "targetPort": 8080 }] } })
}

/// Between releases: an `/admin` rule vane never touches, the `agents` rule on the stable Service only.
fn route() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": NAME, "labels": { "vane.dev/managed": "true" } },
        "spec": {
            "parentRefs": [{ "name": "edge", "namespace": "gateways" }],
            "hostnames": ["api.aiworkflow.com"],
            "rules": [
                { "name": "admin", "matches": [{ "path": { "type": "PathPrefix", "value": "/admin" } }],
                  "backendRefs": [{ "name": "admin-service", "port": 8080 }] },
                { "name": "agents", "matches": [{ "path": { "type": "PathPrefix", "value": "/api/agents" } }],
                  "filters": [{ "type": "RequestHeaderModifier",
                                "requestHeaderModifier": { "set": [{ "name": "x-route", "value": "agents" }] } }],
                  "backendRefs": [{ "name": NAME, "port": 8080 }] } ]
        }
    })
}

/// The objects, in a fresh namespace: `deployment` and `service` as given, the route, an HPA.
async fn world(test: &str, fail_at: Option<u8>, deployment: Value, service: Value) -> World {
    let client = k8s::gateway_api_client().await;
    let ns = k8s::namespace(test);
    let objects = vec![
        (ApiResource::erase::<Deployment>(&()), deployment),
        (ApiResource::erase::<Service>(&()), service),
        (http_route(), route()),
        (ApiResource::erase::<HorizontalPodAutoscaler>(&()), release::hpa()),
    ];
    release::create_all(&client, &ns, objects).await;
    let controller = deploy_controller::start(client.clone(), &ns);
    let dir = tempfile::tempdir().unwrap();
    let c = controller_for(client.clone(), dir.path(), fail_at);
    World { client, ns, c, _controller: controller, _store: dir }
}

/// The seed's release on the route: only the route, the stable Service, deployment, image, version.
fn request(ns: &str) -> vane::rollout::CreateRequest {
    let mut req = fixtures::request(NAME, "canary");
    req.namespace = ns.to_string();
    req.router = serde_json::from_value(json!({ "kind": "gateway-api", "httpRoute": NAME, "stableBackend": NAME }))
        .expect("canaryBackend may be left out");
    req.workload = Some(workload("v1.1.0"));
    req
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    /// The `agents` rule's backendRefs: (name, weight).
    refs: Vec<(String, i64)>,
    /// agent-service-canary: spec.replicas, available replicas.
    canary: Option<(i64, i64)>,
    /// The canary Service's selector, while it exists.
    service: Option<BTreeMap<String, String>>,
}

impl Sample {
    fn canary_weight(&self) -> Option<i64> {
        self.refs.iter().find(|(n, _)| n == CANARY).map(|(_, w)| *w)
    }
}

impl World {
    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    async fn route(&self) -> DynamicObject {
        Api::<DynamicObject>::namespaced_with(self.client.clone(), &self.ns, &http_route()).get(NAME).await.unwrap()
    }

    async fn sample(&self) -> Sample {
        let route = self.route().await;
        let refs = route.data["spec"]["rules"][1]["backendRefs"].as_array().cloned().unwrap_or_default();
        let refs = refs
            .iter()
            .map(|b| (b["name"].as_str().unwrap_or("").to_string(), b["weight"].as_i64().unwrap_or(-1)))
            .collect();
        let canary = self.deployments().get_opt(CANARY).await.unwrap().map(|d| {
            let avail = d.status.and_then(|s| s.available_replicas).unwrap_or(0) as i64;
            (d.spec.replicas.unwrap_or(-1) as i64, avail)
        });
        let service = self.services().get_opt(CANARY).await.unwrap().map(|s| selector(&s));
        Sample { refs, canary, service }
    }

    /// Run the release to its end while recording the cluster.
    async fn release(self: &Arc<Self>, req: vane::rollout::CreateRequest) -> (Rollout, String, Vec<Sample>) {
        let stop = Arc::new(AtomicBool::new(false));
        let w = self.clone();
        let rec = k8s::sample(stop.clone(), move || {
            let w = w.clone();
            async move { w.sample().await }
        });
        let id = self.c.create(req, "ci", None).await.expect("created").0.id;
        let r = k8s::until(&self.c, &id, "the end", Rollout::is_terminal).await;
        stop.store(true, Ordering::SeqCst);
        (r, id, rec.await.unwrap())
    }
}

fn selector(s: &Service) -> BTreeMap<String, String> {
    s.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default()
}

#[tokio::test]
async fn a_gateway_api_release_adds_the_canary_service_at_0_then_ends_on_the_stable_service_alone() {
    let w =
        Arc::new(world("gw-release-good", None, deployment(), service(json!({ "vane.dev/managed": "true" }))).await);
    let admin_before = w.route().await.data["spec"]["rules"][0].clone();
    let (r, id, samples) = w.release(request(&w.ns)).await;
    assert_eq!(r.phase, Phase::Succeeded, "{}", r.message);
    let RouterSpec::GatewayApi { canary_backend, .. } = &r.router else { panic!("{:?}", r.router) };
    assert_eq!(canary_backend, CANARY, "derived: <deployment>-canary");

    // The canary backendRef: absent, added at 0, shifted, then gone with promotion.
    // (The 0 % backendRef lives only until the first shift, often too briefly for the sampler.)
    let weights = dedup(samples.iter().map(Sample::canary_weight));
    let shifted: Vec<_> = weights.iter().copied().filter(|w| *w != Some(0)).collect();
    assert_eq!(shifted, vec![None, Some(5), Some(25), Some(50), Some(100), None], "{samples:#?}");
    assert!(weights.iter().position(|w| *w == Some(0)).is_none_or(|i| i == 1), "{weights:?}");
    for (weight, size) in [(5, 1), (25, 2), (50, 3), (100, 5)] {
        let first = samples.iter().find(|s| s.canary_weight() == Some(weight)).unwrap();
        let avail = first.canary.map_or(0, |c| c.1);
        assert!(avail >= size, "{weight}% routed with {avail} available canary replicas (want {size}): {samples:#?}");
    }
    assert_eq!(dedup(samples.iter().filter_map(|s| s.canary.map(|c| c.0))), vec![1, 2, 3, 5, 0]);
    // The canary Service existed before its backendRef and went only after it.
    let added = samples.iter().position(|s| s.canary_weight().is_some()).unwrap();
    assert!(samples[added].service.is_some(), "backendRef added before its Service: {samples:#?}");
    let created = samples.iter().find_map(|s| s.service.clone()).expect("the canary Service was created");
    assert_eq!(
        created,
        BTreeMap::from([
            ("app".to_string(), NAME.to_string()),
            ("version".to_string(), "v1.1.0".to_string()),
            ("vane.dev/role".to_string(), "canary".to_string())
        ]),
        "selects the canary's pods only"
    );
    let removed = samples.iter().rposition(|s| s.canary_weight().is_some()).unwrap() + 1;
    assert!(samples[removed..].iter().all(|s| s.canary_weight().is_none()));
    assert_eq!(samples.last().unwrap().service, None, "the canary Service is removed on retirement");

    // End state: the rule on the stable Service alone at 100, which selects the new version.
    let live = w.route().await;
    let rule = &live.data["spec"]["rules"][1];
    let refs: Vec<(&str, i64)> = rule["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap(), b["weight"].as_i64().unwrap()))
        .collect();
    assert_eq!(refs, vec![(NAME, 100)]);
    assert_eq!(rule["backendRefs"][0]["port"], 8080);
    assert_eq!(rule["filters"], route()["spec"]["rules"][1]["filters"], "the rule's filters untouched");
    assert_eq!(live.data["spec"]["rules"][0], admin_before, "the other rule untouched");
    assert_eq!(selector(&w.services().get(NAME).await.unwrap())["version"], "v1.1.0", "stable Service promoted");
    let stable = w.deployments().get(NAME).await.unwrap();
    let image = stable.spec.template.spec.as_ref().unwrap().containers[0].image.clone();
    assert_eq!(image.as_deref(), Some(&*format!("{IMAGE}:v1.1.0")));
    assert_eq!(w.deployments().get(CANARY).await.unwrap().spec.replicas, Some(0));
    assert_eq!(w.deployments().list(&Default::default()).await.unwrap().items.len(), 2, "no duplicate Deployment");
    assert_eq!(w.services().list(&Default::default()).await.unwrap().items.len(), 1, "only the stable Service left");
    let kinds: Vec<String> = w.c.events(&id).unwrap().into_iter().map(|e| e.message).collect();
    assert!(kinds.iter().any(|m| m.contains("the canary's own objects removed")), "{kinds:#?}");
}

#[tokio::test]
async fn a_bad_gateway_api_release_moves_traffic_back_before_scaling_the_canary_to_zero() {
    let w =
        Arc::new(world("gw-release-bad", Some(25), deployment(), service(json!({ "vane.dev/managed": "true" }))).await);
    let generation = w.deployments().get(NAME).await.unwrap().metadata.generation;
    let (r, _, samples) = w.release(request(&w.ns)).await;
    assert_eq!(r.phase, Phase::RolledBack, "{}", r.message);
    assert!(samples.iter().any(|s| s.canary_weight() == Some(25)), "reached 25%");
    let scaled_down = samples.iter().position(|s| s.canary.is_some_and(|c| c.0 == 0)).expect("scaled to 0");
    let back = samples.iter().rposition(|s| s.canary_weight().unwrap_or(0) > 0).unwrap() + 1;
    assert!(
        back <= scaled_down,
        "traffic back (sample {back}) before the scale-down (sample {scaled_down}): {samples:#?}"
    );
    assert_eq!(w.deployments().get(NAME).await.unwrap().metadata.generation, generation, "agent-service untouched");
    let end = w.sample().await;
    assert_eq!(end.refs, vec![(NAME.to_string(), 100), (CANARY.to_string(), 0)], "all traffic on the stable Service");
    assert_eq!(selector(&w.services().get(NAME).await.unwrap())["version"], "v1.0.0", "stable Service untouched");
}

/// What a refused release must leave exactly as it was.
async fn snapshot(w: &World) -> Value {
    let names = |items: Vec<DynamicObject>| -> Vec<(String, String)> {
        items
            .into_iter()
            .map(|o| (o.metadata.name.unwrap_or_default(), o.metadata.resource_version.unwrap_or_default()))
            .collect()
    };
    let mut all = json!({});
    for ar in [
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        http_route(),
        event(),
    ] {
        let api: Api<DynamicObject> = Api::namespaced_with(w.client.clone(), &w.ns, &ar);
        all[&ar.kind] = json!(names(api.list(&Default::default()).await.unwrap().items));
    }
    all
}

/// `[kubernetes] require_opt_in` (the default): a stable Deployment, or a stable Service, whose owners
/// did not label it `vane.dev/managed: "true"` fails the release naming the label — before any
/// write for the Deployment (nothing created, nothing changed, not even an Event), before any routing
/// write for the Service.
#[tokio::test]
async fn a_release_of_a_deployment_whose_owners_did_not_opt_in_writes_nothing() {
    let mut unlabelled = deployment();
    unlabelled["metadata"]["labels"].as_object_mut().unwrap().remove("vane.dev/managed");
    let w = world("gw-release-no-opt-in", None, unlabelled, service(json!({ "vane.dev/managed": "true" }))).await;
    // The deployment controller's status write comes first, so it cannot pass for vane's.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while w.deployments().get(NAME).await.unwrap().status.and_then(|s| s.available_replicas) != Some(5) {
        assert!(tokio::time::Instant::now() < deadline, "agent-service never rolled out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = snapshot(&w).await;
    let id = w.c.create(request(&w.ns), "ci", None).await.unwrap().0.id;
    let r = k8s::until(&w.c, &id, "Failed", Rollout::is_terminal).await;
    assert_eq!(r.phase, Phase::Failed, "{}", r.message);
    assert!(r.message.contains("Deployment") && r.message.contains("vane.dev/managed"), "{}", r.message);
    assert_eq!(snapshot(&w).await, before, "nothing written anywhere");

    // The stable Service not opted in: refused before the route or any Service is written.
    let w = world("gw-release-svc-no-opt-in", None, deployment(), service(json!({ "app": NAME }))).await;
    let route_before = w.route().await.metadata.resource_version;
    let id = w.c.create(request(&w.ns), "ci", None).await.unwrap().0.id;
    let r = k8s::until(&w.c, &id, "Failed", Rollout::is_terminal).await;
    assert_eq!(r.phase, Phase::Failed, "{}", r.message);
    assert!(
        r.message.contains(&format!("Service {}/{NAME}", w.ns)) && r.message.contains("vane.dev/managed"),
        "{}",
        r.message
    );
    assert_eq!(w.route().await.metadata.resource_version, route_before, "the route untouched");
    assert_eq!(w.services().list(&Default::default()).await.unwrap().items.len(), 1, "no canary Service");
    assert_eq!(selector(&w.services().get(NAME).await.unwrap())["version"], "v1.0.0");
    assert_eq!(w.deployments().get(CANARY).await.unwrap().spec.replicas, Some(0), "the canary left at 0");
}

/// A canary name the request gives is kept, but must be a name vane can create (422 naming it).
#[tokio::test]
async fn a_given_canary_backend_must_be_a_valid_service_name() {
    let w = world("gw-release-bad-name", None, deployment(), service(json!({ "vane.dev/managed": "true" }))).await;
    let mut req = request(&w.ns);
    req.router = serde_json::from_value(json!({ "kind": "gateway-api", "httpRoute": NAME, "stableBackend": NAME,
                                                "canaryBackend": "Agent_Canary" }))
    .unwrap();
    let e = w.c.create(req, "ci", None).await.unwrap_err().to_string();
    assert!(e.contains("router.canaryBackend"), "{e}");
    let mut req = request(&w.ns);
    req.router = RouterSpec::Istio {
        virtual_service: NAME.into(),
        route: None,
        stable_subset: "v1-0-0".into(),
        canary_subset: "v1.1.0".into(),
    };
    let e = w.c.create(req, "ci", None).await.unwrap_err().to_string();
    assert!(e.contains("router.canarySubset") && e.contains("DNS label"), "{e}");
}
