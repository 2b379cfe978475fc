//! A real Kubernetes API server for tests: Debian's etcd plus the CRD-only apiserver built from
//! `tests/k8s-server` (see its README), with the CRDs of `tests/k8s-server/crds.yaml` applied and
//! Established (and, for tests that ask with [`gateway_api_client`], the real Gateway API CRDs of
//! `tests/k8s-server/gateway-api.yaml`).
//!
//! One server per test binary, started on first use and shared by its tests (each test works in its
//! own namespace name; custom objects need no Namespace object on this server). Every process is
//! started behind a watchdog shell that kills it when the test binary exits, however it exits, so no
//! etcd or apiserver outlives the run even though the shared server lives in a static.
//!
//! The server binary, first found of: `$VANE_TEST_APISERVER`; `../shared/k8s-test/crdserver.xz` beside
//! the repository (a ready-made build, when present, unless `VANE_TEST_NO_SHORTCUT` is set: to test
//! what a fresh clone gets); the cache of `scripts/build-test-apiserver.sh`.
//! None of them is a test failure naming the script (the first build takes minutes, so a test never
//! starts it by itself; `scripts/test.sh` does).
#![allow(dead_code)]

#[path = "wait.rs"]
mod wait;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::client::Body;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

const INSTALL: &str = "apt-get install -y --no-install-recommends etcd-server xz-utils";

/// A running etcd + apiserver. Dropping it kills both (the shared one is killed by its watchdogs).
pub struct K8sServer {
    pub url: String,
    pub dir: tempfile::TempDir,
    procs: Vec<Child>,
}

impl Drop for K8sServer {
    fn drop(&mut self) {
        // Closing a watchdog's stdin makes it stop its process and wait for it.
        for p in self.procs.iter_mut().rev() {
            drop(p.stdin.take());
            let _ = p.wait();
        }
    }
}

impl K8sServer {
    /// A client for this server (insecure TLS: the server's certificate is self-signed).
    pub fn client(&self) -> kube::Client {
        client_for(&self.url)
    }
}

pub fn client_for(url: &str) -> kube::Client {
    vane::install_crypto_provider();
    let mut cfg = kube::Config::new(url.parse().expect("server url"));
    cfg.accept_invalid_certs = true;
    cfg.read_timeout = Some(Duration::from_secs(30));
    kube::Client::try_from(cfg).expect("kube client for the test apiserver")
}

/// A client that passes requests to the real server, but before each of the first `bumps` PATCHes
/// lets another writer change the object (a label), so the router's guarded write meets a
/// resourceVersion it did not read.
pub fn interfering_client(
    real: kube::Client,
    ns: String,
    ar: kube::api::ApiResource,
    name: &str,
    bumps: u32,
) -> (kube::Client, Arc<AtomicU32>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let patches = Arc::new(AtomicU32::new(0));
    let seen = patches.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        let other: Api<DynamicObject> = Api::namespaced_with(real.clone(), &ns, &ar);
        while let Some((req, send)) = handle.next_request().await {
            if req.method() == http::Method::PATCH {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                if n < bumps {
                    let bump = json!({ "metadata": { "labels": { "edited-by": format!("someone-else-{n}") } } });
                    other.patch(&name, &PatchParams::default(), &Patch::Merge(&bump)).await.expect("concurrent write");
                }
            }
            match real.send(req).await {
                Ok(resp) => send.send_response(resp),
                Err(e) => send.send_error(e),
            }
        }
    });
    (kube::Client::new(svc, "default"), patches)
}

/// A controller (store in `store`, time-only analysis, hooks always pass, no notifications) whose
/// rollouts drive this cluster.
pub fn controller(
    client: kube::Client,
    store: &Path,
    policies: Vec<vane::policy::Policy>,
) -> (vane::rollout::controller::Controller, Arc<vane::telemetry::Metrics>) {
    controller_with(client, store, policies, Arc::new(vane::analysis::TimeOnly))
}

/// [`controller`] with this analyzer.
pub fn controller_with(
    client: kube::Client,
    store: &Path,
    policies: Vec<vane::policy::Policy>,
    analyzer: Arc<dyn vane::analysis::Analyzer>,
) -> (vane::rollout::controller::Controller, Arc<vane::telemetry::Metrics>) {
    let metrics = Arc::new(vane::telemetry::Metrics::new(Duration::from_secs(3600)));
    let routers = vane::traffic::Routers::with_kube_client(client);
    let env = vane::rollout::driver::Env {
        store: vane::store::Store::open(store).expect("store"),
        workloads: Arc::new(vane::workload::K8sWorkloads::new(routers.kube())),
        routers: Arc::new(routers),
        analyzer,
        hooks: Arc::new(vane::notify::AlwaysOk),
        notifier: Arc::new(vane::notify::Silent),
        metrics: metrics.clone(),
        clock: Arc::new(vane::rollout::driver::SystemClock),
    };
    (vane::rollout::controller::Controller::new(Arc::new(env), policies), metrics)
}

/// Create `obj` (a test fixture) in `ns`.
pub async fn create(client: &kube::Client, ns: &str, ar: &ApiResource, obj: serde_json::Value) -> DynamicObject {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let obj = serde_json::from_value(obj).expect("a Kubernetes object");
    api.create(&PostParams::default(), &obj).await.expect("test object created")
}

/// The gateway-api router of the `agent-service` route (an HTTPRoute, or a GRPCRoute with `grpc`)
/// between the `agent-service-blue` (stable) and `agent-service-green` backends.
pub fn gateway_api_router(grpc: bool) -> vane::rollout::RouterSpec {
    let route = Some("agent-service".to_string());
    vane::rollout::RouterSpec::GatewayApi {
        http_route: if grpc { None } else { route.clone() },
        grpc_route: if grpc { route } else { None },
        rule: None,
        stable_backend: "agent-service-blue".into(),
        canary_backend: "agent-service-green".into(),
    }
}

/// Poll the rollout until `f` holds (20 s at most).
pub async fn until(
    c: &vane::rollout::controller::Controller,
    id: &str,
    what: &str,
    f: impl Fn(&vane::rollout::Rollout) -> bool,
) -> vane::rollout::Rollout {
    wait::until_rollout(c, id, what, Duration::from_secs(20), Duration::from_millis(20), f).await
}

/// Record each distinct value `read` returns, every 10 ms, until `done` is set (and once more after:
/// the last write happened before the rollout finished).
pub fn sample<T, F, Fut>(done: Arc<std::sync::atomic::AtomicBool>, mut read: F) -> tokio::task::JoinHandle<Vec<T>>
where
    T: PartialEq + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    tokio::spawn(async move {
        let mut seen: Vec<T> = vec![];
        loop {
            let last = done.load(Ordering::Relaxed);
            let now = read().await;
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            if last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    })
}

static SHARED: OnceCell<K8sServer> = OnceCell::const_new();

/// A client of the server shared by this test binary (started on first call).
pub async fn shared_client() -> kube::Client {
    let s = SHARED.get_or_init(|| async { K8sServer::start().await.unwrap_or_else(|e| panic!("{e}")) }).await;
    s.client()
}

static GATEWAY_API: OnceCell<()> = OnceCell::const_new();

/// A client of the shared server with the Gateway API v1.6.1 CRDs (`gateway-api.yaml`: real schemas,
/// defaults and CEL rules) applied and served too.
pub async fn gateway_api_client() -> kube::Client {
    let client = shared_client().await;
    GATEWAY_API
        .get_or_init(|| async {
            apply_crd_file(&client, "gateway-api.yaml").await.unwrap_or_else(|e| panic!("{e}"));
        })
        .await;
    client
}

/// The URL of the shared server (for a test that builds its own client or kubeconfig).
pub async fn shared_url() -> String {
    shared_client().await;
    SHARED.get().map(|s| s.url.clone()).unwrap_or_default()
}

/// A fresh namespace name for one test.
pub fn namespace(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let clean: String =
        test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    format!("{}-{}-{n}", clean.trim_matches('-'), std::process::id())
}

/// The repository's copy of what the test server serves and is built from.
fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s-server")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn find_etcd() -> Result<PathBuf, String> {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    Err(format!("etcd is not installed; the Kubernetes integration tests need it: {INSTALL}"))
}

const BUILD: &str = "scripts/build-test-apiserver.sh";

/// The apiserver binary: `$VANE_TEST_APISERVER`, else the ready-made shortcut, else the build cache.
fn crdserver() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("VANE_TEST_APISERVER") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("VANE_TEST_APISERVER={} is not a file", bin.display()))
        };
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shortcut = root.join("../shared/k8s-test/crdserver.xz");
    if shortcut.is_file() && std::env::var_os("VANE_TEST_NO_SHORTCUT").is_none() {
        return unpack(&shortcut);
    }
    let out = Command::new("bash")
        .arg(root.join(BUILD))
        .arg("--path")
        .output()
        .map_err(|e| format!("cannot run {BUILD} --path: {e}"))?;
    let cached = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && cached.is_file() {
        return Ok(cached);
    }
    Err(format!(
        "the test Kubernetes API server is not built yet (looked for {}). Build it once with `{BUILD}` \
         (8 minutes of CPU time and a 277 MB download of Debian's Go source packages; cached \
         afterwards; scripts/test.sh does this by itself), or point VANE_TEST_APISERVER at a built binary.",
        cached.display()
    ))
}

/// Decompress a ready-made `crdserver.xz` once per content hash into the cargo target tmp dir.
fn unpack(xz: &Path) -> Result<PathBuf, String> {
    let bytes = std::fs::read(xz).map_err(|e| format!("cannot read {} ({e})", xz.display()))?;
    let hash = hex::encode(&Sha256::digest(&bytes)[..8]);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("k8s-test");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let bin = dir.join(format!("crdserver-{hash}"));
    if bin.exists() {
        return Ok(bin);
    }
    let tmp = dir.join(format!("crdserver-{hash}.{}.tmp", std::process::id()));
    let out = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let status = Command::new("xz")
        .arg("-dc")
        .arg(xz)
        .stdout(out)
        .status()
        .map_err(|e| format!("cannot run xz ({e}): {INSTALL}"))?;
    if !status.success() {
        return Err(format!("xz -dc {} failed: {status}", xz.display()));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &bin).map_err(|e| e.to_string())?;
    Ok(bin)
}

/// Start `argv` behind a watchdog: a shell that kills it when our end of its stdin closes, i.e.
/// when this process exits (also on a panic abort or SIGKILL).
fn spawn_watched(argv: &[String], log: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let script =
        r#""$@" </dev/null & c=$!; trap 'kill $c 2>/dev/null; exit 0' TERM; read _ ; kill $c 2>/dev/null; wait $c"#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))
}

impl K8sServer {
    /// Start etcd and the apiserver on free ports, apply the CRDs, wait until they are Established.
    pub async fn start() -> Result<K8sServer, String> {
        let etcd = find_etcd()?;
        let crdserver = crdserver()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (ep, pp, ap) = (free_port(), free_port(), free_port());
        let d = dir.path();
        let s = |p: &Path| p.display().to_string();
        let etcd_argv = vec![
            s(&etcd),
            "--data-dir".into(),
            s(&d.join("etcd")),
            "--listen-client-urls".into(),
            format!("http://127.0.0.1:{ep}"),
            "--advertise-client-urls".into(),
            format!("http://127.0.0.1:{ep}"),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{pp}"),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{pp}"),
            "--initial-cluster".into(),
            format!("default=http://127.0.0.1:{pp}"),
            "--unsafe-no-fsync".into(),
        ];
        let mut server = K8sServer { url: format!("https://127.0.0.1:{ap}"), dir, procs: vec![] };
        let d = server.dir.path().to_path_buf();
        server.procs.push(spawn_watched(&etcd_argv, &d.join("etcd.log"))?);
        let api_argv = vec![
            s(&crdserver),
            format!("--etcd-servers=http://127.0.0.1:{ep}"),
            format!("--secure-port={ap}"),
            "--bind-address=127.0.0.1".into(),
            format!("--cert-dir={}", s(&d.join("certs"))),
        ];
        server.procs.push(spawn_watched(&api_argv, &d.join("apiserver.log"))?);
        let client = server.client();
        let logs = |d: &Path| {
            let tail = |f: &str| {
                std::fs::read_to_string(d.join(f))
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            format!(
                "--- etcd.log (last lines, reversed)\n{}\n--- apiserver.log\n{}",
                tail("etcd.log"),
                tail("apiserver.log")
            )
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
            if crds.list(&ListParams::default().limit(1)).await.is_ok() {
                break;
            }
            for p in &mut server.procs {
                if let Ok(Some(st)) = p.try_wait() {
                    return Err(format!("test apiserver or etcd exited ({st}):\n{}", logs(&d)));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("test apiserver not ready after 30s:\n{}", logs(&d)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        apply_crd_file(&client, "crds.yaml").await?;
        let _ = std::io::stderr().flush();
        Ok(server)
    }
}

/// Create every CRD of `file` (in `tests/k8s-server`) and wait until each is served.
async fn apply_crd_file(client: &kube::Client, file: &str) -> Result<(), String> {
    let path = server_dir().join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = vec![];
    let mut resources = vec![];
    for doc in yaml_serde::Deserializer::from_str(&text) {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(doc).map_err(|e| format!("{}: {e}", path.display()))?;
        if value.is_null() {
            continue;
        }
        let crd: CustomResourceDefinition =
            serde_json::from_value(value).map_err(|e| format!("{}: {e}", path.display()))?;
        names.push(crd.metadata.name.clone().unwrap_or_default());
        for v in crd.spec.versions.iter().filter(|v| v.served) {
            let gvk = GroupVersionKind::gvk(&crd.spec.group, &v.name, &crd.spec.names.kind);
            let cluster = crd.spec.scope == "Cluster";
            resources.push((ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural), cluster));
        }
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(format!("creating CRD: {e}")),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for name in names {
        loop {
            let crd = api.get(&name).await.map_err(|e| format!("reading CRD {name}: {e}"))?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("CRD {name} not Established after 20s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Established is set a moment before the new endpoints answer: wait until each one lists.
    for (ar, cluster) in resources {
        let api: Api<DynamicObject> = if cluster {
            Api::all_with(client.clone(), &ar)
        } else {
            Api::namespaced_with(client.clone(), "default", &ar)
        };
        while let Err(e) = api.list(&ListParams::default().limit(1)).await {
            if Instant::now() > deadline {
                return Err(format!("{}/{} not served after 20s: {e}", ar.api_version, ar.plural));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}
