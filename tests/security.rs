//! Security of the real binary over HTTP (issue 7), tokens configured the way operators do it
//! (`VANE_SERVER_TOKENS` naming environment variables that hold the tokens):
//!
//! - every mutating route refuses a missing, wrong or malformed token (401 with `WWW-Authenticate`)
//!   and a viewer token (403); reads refuse anonymous callers; probes, metrics and OpenAPI are open;
//!   the Slack route refuses unsigned calls (401);
//! - oversized bodies are 413, malformed JSON / YAML-as-JSON / binary / deeply nested bodies are 400,
//!   and ids with path tricks (`..%2F`, `%00`, unicode, invalid UTF-8, 10 000 characters) are 404 —
//!   all with the JSON error shape; oversized headers are refused by the server (431);
//! - afterwards the daemon is alive and serving, and the rollout the refused calls aimed at is exactly
//!   as it was (same phase, weight and events; still the only rollout).
//!
//! Requests go over a raw TCP socket so that no client normalises the paths.
//!
//! Issue 10, part A — requests, processes and files: one test per attack, each asserting that the
//! attack fails AND that nothing happened (no process ran, no file written, nothing stored, no secret
//! in any API body, event, log line or webhook payload). See docs/operations.md.

mod support {
    pub mod daemon;
    pub mod raw_http;
    pub mod receiver;
}

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::daemon::{Daemon, free_port, toml_argv, toml_str};
use support::raw_http::{Response, bearer, raw, raw_host};
use support::receiver::Receiver;

const OPERATOR: &str = "sec-operator-token-0123456789abcdef";
const VIEWER: &str = "sec-viewer-token-0123456789abcdef";
const TOKENS: &str = r#"[{ name = "ci", token_env = "SEC_OP_TOKEN", role = "operator" },
                         { name = "grafana", token_env = "SEC_VIEW_TOKEN", role = "viewer" }]"#;

const SLACK_SIGNING: &str = "slack-signing-secret-for-the-test";

struct Fixture {
    daemon: Daemon,
    dir: tempfile::TempDir,
    /// The bearer token of requests (None: open mode).
    token: Option<&'static str>,
}

impl Fixture {
    fn start() -> Fixture {
        Fixture::with(true, &[], &[])
    }

    /// A daemon with tokens (or in open mode), the `slow` policy and these extra policies
    /// (name, YAML) and environment variables.
    fn with(tokens: bool, env: &[(&str, &str)], policies: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("policies")).expect("policies dir");
        // An hour per step: the rollout stays where it is unless someone moves it.
        std::fs::write(
            dir.path().join("policies/slow.yaml"),
            "name: slow\nstrategy: canary\nsteps: [10, 50, 100]\ninterval: 1h\nthreshold: 2\nprogressDeadline: 10h\n",
        )
        .expect("policy");
        for (name, yaml) in policies {
            std::fs::write(dir.path().join(format!("policies/{name}.yaml")), yaml).expect("policy");
        }
        let mut all: Vec<(&str, &str)> = if tokens {
            vec![
                ("VANE_SERVER_TOKENS", TOKENS),
                ("SEC_OP_TOKEN", OPERATOR),
                ("SEC_VIEW_TOKEN", VIEWER),
                ("VANE_SLACK_SIGNING_SECRET", SLACK_SIGNING),
            ]
        } else {
            vec![]
        };
        all.extend_from_slice(env);
        let daemon = Daemon::start(dir.path(), free_port(), &all);
        Fixture { daemon, dir, token: tokens.then_some(OPERATOR) }
    }

    /// A POST of this JSON body as an operator (or anybody, in open mode).
    fn create(&self, body: &Value) -> Response {
        let auth = self.token.and_then(bearer);
        self.req("POST", "/api/v1/rollouts", auth.as_deref(), body.to_string().as_bytes())
    }

    /// Every rollout id, newest first.
    fn ids(&self) -> Vec<String> {
        let auth = self.token.and_then(|_| bearer(VIEWER));
        let list = self.req("GET", "/api/v1/rollouts", auth.as_deref(), b"").json();
        list["items"].as_array().expect("a list").iter().map(|r| r["id"].as_str().unwrap_or("").to_string()).collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn req(&self, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> Response {
        let json = if body.is_empty() { "" } else { "Content-Type: application/json\r\n" };
        raw(self.daemon.port, method, path, auth, json, body)
    }

    fn get(&self, path: &str) -> Response {
        self.req("GET", path, bearer(VIEWER).as_deref(), b"")
    }

    /// What a refused request must not change: the rollout, its events, the list.
    fn state(&self, id: &str) -> (Value, Value, Value) {
        let r = self.get(&format!("/api/v1/rollouts/{id}")).json();
        let events = self.get(&format!("/api/v1/rollouts/{id}/events")).json();
        let list: Vec<Value> = self.get("/api/v1/rollouts").json()["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["id"].clone())
            .collect();
        let r = serde_json::json!([r["phase"], r["canaryWeight"], r["stepIndex"], r["updatedAt"]]);
        (r, events, Value::Array(list))
    }
}

fn create_body(service: &str) -> Vec<u8> {
    format!(
        r#"{{"service":"{service}","namespace":"shop","version":"v2","stableVersion":"v1","policy":"slow",
            "router":{{"kind":"exec","profile":"noop"}}}}"#
    )
    .into_bytes()
}

#[test]
fn refused_requests_change_nothing_and_the_daemon_keeps_serving() {
    vane::install_crypto_provider();
    let f = Fixture::start();
    let created = f.req("POST", "/api/v1/rollouts", bearer(OPERATOR).as_deref(), &create_body("cart"));
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let id = created.json()["id"].as_str().expect("id").to_string();
    // Wait until it has settled at the first step: the router confirmed 10 %.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let settled = |events: Value| {
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "weight-set" && e["details"]["canary"] == 10)
    };
    while !settled(f.get(&format!("/api/v1/rollouts/{id}/events")).json()) {
        assert!(std::time::Instant::now() < deadline, "rollout never reached 10 %");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = f.state(&id);

    // Authentication and roles on every mutating route.
    let mutating: Vec<(String, Vec<u8>)> = vec![
        ("/api/v1/rollouts".into(), create_body("other")),
        (format!("/api/v1/rollouts/{id}/promote"), br#"{"full":true}"#.to_vec()),
        (format!("/api/v1/rollouts/{id}/pause"), vec![]),
        (format!("/api/v1/rollouts/{id}/resume"), vec![]),
        (format!("/api/v1/rollouts/{id}/abort"), br#"{"reason":"x"}"#.to_vec()),
    ];
    let wrong = [
        None,
        bearer("not-the-token-0123456789abcdef"),
        bearer(""),
        Some(format!("Basic {OPERATOR}")),
        Some(OPERATOR.to_string()),
        bearer(&format!("{OPERATOR}x")),
        bearer(&OPERATOR[..OPERATOR.len() - 1]),
    ];
    for (path, body) in &mutating {
        for auth in &wrong {
            let r = f.req("POST", path, auth.as_deref(), body);
            assert_eq!((r.status, r.code()), (401, "unauthorized".into()), "POST {path} with {auth:?}");
            assert!(r.headers.to_ascii_lowercase().contains("www-authenticate: bearer"), "{}", r.headers);
        }
        let r = f.req("POST", path, bearer(VIEWER).as_deref(), body);
        assert_eq!((r.status, r.code()), (403, "forbidden".into()), "POST {path} as viewer");
    }
    for path in ["/api/v1/rollouts".to_string(), format!("/api/v1/rollouts/{id}"), "/api/v1/policies".into()] {
        assert_eq!(f.req("GET", &path, None, b"").status, 401, "GET {path} anonymous");
        assert_eq!(f.get(&path).status, 200, "GET {path} as viewer");
    }
    for open in ["/health/live", "/health/ready", "/metrics", "/api/v1/openapi.json"] {
        assert_eq!(f.req("GET", open, None, b"").status, 200, "{open} needs no token");
    }
    // Slack: a bearer token is no substitute for Slack's signature.
    let payload = format!(
        "payload={{\"type\":\"block_actions\",\"actions\":[{{\"action_id\":\"vane_abort\",\"value\":\"{id}\"}}]}}"
    );
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    for auth in [None, bearer(OPERATOR)] {
        let r = raw(f.daemon.port, "POST", "/api/v1/slack/interactions", auth.as_deref(), form, payload.as_bytes());
        assert_eq!(r.status, 401, "unsigned Slack call with {auth:?}: {}", String::from_utf8_lossy(&r.body));
    }

    // Oversized bodies: 413, also when the size is only known while reading (chunked).
    let big = vec![b' '; vane::api::BODY_LIMIT + 1];
    for path in ["/api/v1/rollouts".to_string(), format!("/api/v1/rollouts/{id}/abort")] {
        let r = f.req("POST", &path, bearer(OPERATOR).as_deref(), &big);
        assert_eq!((r.status, r.code()), (413, "too_large".into()), "POST {path} with {} bytes", big.len());
    }
    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 100_000).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 100_000));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut s = TcpStream::connect(("127.0.0.1", f.daemon.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let head = format!(
        "POST /api/v1/rollouts HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {OPERATOR}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("head");
    let _ = s.write_all(&chunked);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "chunked 2 MB body: {answer}");

    // Malformed bodies: 400 with the error shape, never a 5xx.
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("truncated JSON", br#"{"service": "cart", "#.to_vec()),
        ("YAML sent as JSON", b"service: cart\nnamespace: shop\nversion: v2\n".to_vec()),
        ("empty body", vec![]),
        ("binary", vec![0xff, 0xfe, 0x00, 0x01, 0x80]),
        ("NUL bytes", b"{\"service\":\"ca\0rt\"\0}".to_vec()),
        ("trailing garbage", [create_body("cart"), b"}}}".to_vec()].concat()),
        ("invalid UTF-8 in a string", b"{\"service\":\"\xc3\x28\"}".to_vec()),
    ];
    for (what, body) in &malformed {
        let r = f.req("POST", "/api/v1/rollouts", bearer(OPERATOR).as_deref(), body);
        assert_eq!((r.status, r.code()), (400, "bad_request".into()), "{what}");
        if !body.is_empty() {
            // (An empty promote body is valid: the body is optional.)
            let r = f.req("POST", &format!("/api/v1/rollouts/{id}/promote"), bearer(OPERATOR).as_deref(), body);
            assert_eq!((r.status, r.code()), (400, "bad_request".into()), "promote with {what}");
        }
    }
    // Valid JSON of the wrong shape (deeply nested included: no stack overflow): 422.
    for body in [&b"[1, 2]"[..], b"null", b"\"cart\"", b"{\"service\": 5}", nested.as_bytes()] {
        let r = f.req("POST", "/api/v1/rollouts", bearer(OPERATOR).as_deref(), body);
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).to_string();
        assert_eq!((r.status, r.code()), (422, "validation".into()), "{shown}");
    }

    // Path tricks in ids: 404 with the error shape, on reads and on control routes.
    let long = "A".repeat(10_000);
    let tricks = [
        "..%2F..%2Fetc%2Fpasswd",
        "..%2f..%2f..%2fetc%2fshadow",
        "%2e%2e%2f%2e%2e%2fdata",
        "..",
        ".",
        "%00",
        &format!("{id}%00"),
        &format!("{id}%2Fevents"),
        &format!("{}%00", &id[..25]),
        "%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83%E2%98%83",
        "%FF%FE",
        "%ZZ",
        "%",
        &long,
        &id.to_lowercase(),
        &format!("{id}%20"),
    ];
    for t in tricks {
        for (method, suffix, auth) in [
            ("GET", "", VIEWER),
            ("GET", "/events", VIEWER),
            ("POST", "/abort", OPERATOR),
            ("POST", "/promote", OPERATOR),
        ] {
            let path = format!("/api/v1/rollouts/{t}{suffix}");
            let r = f.req(method, &path, bearer(auth).as_deref(), b"");
            let shown = &path[..path.len().min(80)];
            assert_eq!((r.status, r.code()), (404, "not_found".into()), "{method} {shown}");
        }
    }
    // Un-normalised dot segments never escape the API.
    for path in ["/api/v1/rollouts/../../../etc/passwd", "/api/v1/../../health/../metrics/../../etc/passwd"] {
        let r = f.req("GET", path, bearer(VIEWER).as_deref(), b"");
        assert_eq!((r.status, r.code()), (404, "not_found".into()), "{path}");
    }
    // Query tricks: 400 naming the parameter.
    for q in ["limit=abc", "limit=99999999999999999999999", "limit=-1", "phase=%00", "phase=..%2F", "limit=%FF"] {
        let r = f.get(&format!("/api/v1/rollouts?{q}"));
        assert_eq!((r.status, r.code()), (400, "bad_request".into()), "?{q}");
    }
    // Headers too large for the server: refused, not a crash.
    let huge = format!("X-Junk: {}\r\n", "j".repeat(1_000_000));
    let r = raw(f.daemon.port, "GET", "/health/live", None, &huge, b"");
    assert!(r.status == 431 || r.status == 400, "oversized headers: {}", r.status);

    // Alive, serving, and nothing changed.
    assert_eq!(f.req("GET", "/health/live", None, b"").status, 200);
    assert_eq!(f.req("GET", "/health/ready", None, b"").status, 200);
    assert_eq!(f.state(&id), before, "a refused request changed the rollout");
    assert_eq!(before.2.as_array().map(Vec::len), Some(1), "no other rollout was created");
    let log = std::fs::read_to_string(f.daemon.dir.join("daemon.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

// ---------------------------------------------------------------------------------------------------
// Issue 10, part A: requests, processes and files.

fn body(service: &str, namespace: &str, router: Value) -> Value {
    json!({ "service": service, "namespace": namespace, "version": "v2", "stableVersion": "v1",
            "policy": "slow", "router": router })
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field(r: &Response) -> (u16, String, String) {
    let v = r.json();
    (r.status, r.code(), v["error"]["field"].as_str().unwrap_or("").to_string())
}

/// An operator token once made the daemon run any command (`exec` `command`, `nginx` `reload` and
/// `test`). Now a request can only name a profile of the daemon's configuration, for the namespaces
/// the profile serves; the profile here would touch a marker file, which stays absent.
#[test]
fn a_request_cannot_name_a_command_and_a_profile_serves_only_its_namespaces() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let marker = tmp.path().join("pwned");
    let m = marker.to_str().expect("utf-8 path");
    let profiles = format!(
        r#"{{ noop = {{ command = ["true"] }}, shop-only = {{ command = {}, namespaces = ["shop"] }} }}"#,
        toml_argv(&["touch", m])
    );
    let f = Fixture::with(true, &[("VANE_ROUTERS_EXEC", &profiles)], &[]);
    let nginx = |extra: Value| {
        let mut r = json!({ "kind": "nginx", "profile": "edge", "stableUpstream": "a", "canaryUpstream": "b" });
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        r
    };
    let attacks = [
        (json!({ "kind": "exec", "command": ["touch", m] }), "router.command"),
        (json!({ "kind": "exec", "profile": "noop", "command": ["touch", m] }), "router.command"),
        (nginx(json!({ "reload": ["touch", m] })), "router.reload"),
        (nginx(json!({ "test": ["touch", m] })), "router.test"),
        (nginx(json!({ "configFile": m })), "router.configFile"),
        // No NGINX profile is configured: that router kind is refused altogether.
        (nginx(json!({})), "router.profile"),
        (json!({ "kind": "exec", "profile": "not-configured" }), "router.profile"),
        // A configured profile, but not for this namespace.
        (json!({ "kind": "exec", "profile": "shop-only" }), "router.profile"),
    ];
    for (router, want) in attacks {
        let r = f.create(&body("cart", "payments", router.clone()));
        assert_eq!(field(&r), (422, "validation".into(), want.into()), "{router}");
    }
    let r = f.create(&body("cart", "payments", nginx(json!({}))));
    assert!(String::from_utf8_lossy(&r.body).contains("no nginx router profile is configured"));
    assert!(f.ids().is_empty(), "a refused request created a rollout");
    assert!(!marker.exists(), "a refused request ran a command");

    // The marker is a real witness: the profile where it is allowed runs and touches it.
    let r = f.create(&body("cart", "shop", json!({ "kind": "exec", "profile": "shop-only" })));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    wait_until("the profile's command to run", Duration::from_secs(20), || marker.exists());
}

/// `configFile` once let a request overwrite any file the daemon can write — the sled store
/// included, after which the daemon never started again. Now the file is the profile's: a request
/// naming one is refused, and the store and the daemon survive (restart, same rollout, same split).
#[test]
fn a_config_file_naming_the_store_is_refused_and_the_daemon_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let split = tmp.path().join("split.conf");
    let profile = format!(
        r#"{{ edge = {{ config_file = {}, variable = "up", reload = ["true"] }} }}"#,
        toml_str(split.to_str().unwrap())
    );
    let mut f = Fixture::with(true, &[("VANE_ROUTERS_NGINX", &profile)], &[]);
    let router = json!({ "kind": "nginx", "profile": "edge", "stableUpstream": "stable", "canaryUpstream": "canary" });
    let r = f.create(&body("cart", "shop", router));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    wait_until("the split file at 10 %", Duration::from_secs(20), || {
        std::fs::read_to_string(&split).is_ok_and(|t| t.contains("10% canary"))
    });
    let split_before = std::fs::read_to_string(&split).unwrap();
    let head = |f: &Fixture| {
        let r = f.get(&format!("/api/v1/rollouts/{id}")).json();
        (r["phase"].clone(), r["canaryWeight"].clone(), r["stepIndex"].clone())
    };
    let before = head(&f);

    let store = f.dir.path().join("data");
    let targets = [store.join("db"), store.join("conf"), store.clone(), "/etc/passwd".into()];
    for target in &targets {
        let router = json!({ "kind": "nginx", "profile": "edge", "configFile": target, "variable": "x",
                              "stableUpstream": "a", "canaryUpstream": "b", "reload": ["true"] });
        let r = f.create(&body("other", "shop", router));
        assert_eq!(field(&r), (422, "validation".into(), "router.configFile".into()), "{}", target.display());
    }
    f.daemon.restart();
    assert_eq!(f.ids(), vec![id.clone()], "the store lost or gained a rollout");
    assert_eq!(head(&f), before);
    assert_eq!(std::fs::read_to_string(&split).unwrap(), split_before, "the profile's file is untouched");
}

fn open() -> Fixture {
    Fixture::with(false, &[], &[])
}

/// An open-mode rollout that must stay as it is (not aborted, still the only one).
fn open_rollout(f: &Fixture) -> String {
    let r = f.create(&body("cart", "shop", json!({ "kind": "exec", "profile": "noop" })));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_string()
}

fn assert_untouched(f: &Fixture, id: &str) {
    assert_eq!(f.ids(), vec![id.to_string()], "a refused request created a rollout");
    let r = f.req("GET", &format!("/api/v1/rollouts/{id}"), None, b"").json();
    assert_ne!(r["phase"], "Aborted", "a refused request aborted the rollout");
    assert_ne!(r["phase"], "RollingBack", "a refused request aborted the rollout");
}

/// Open mode (no tokens, the README's first command): a web page could create a rollout with a
/// `text/plain` or form POST, which browsers send cross-origin without a preflight. Now the body must
/// be `application/json` (415).
#[test]
fn open_mode_refuses_a_text_plain_post() {
    let f = open();
    let id = open_rollout(&f);
    let create = body("evil", "shop", json!({ "kind": "exec", "profile": "noop" })).to_string();
    for ct in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
    ] {
        let extra = if ct.is_empty() { String::new() } else { format!("Content-Type: {ct}\r\n") };
        let r = raw(f.daemon.port, "POST", "/api/v1/rollouts", None, &extra, create.as_bytes());
        assert_eq!((r.status, r.code()), (415, "unsupported_media_type".into()), "create as {ct:?}");
        let r = raw(f.daemon.port, "POST", &format!("/api/v1/rollouts/{id}/abort"), None, &extra, br#"{"reason":"x"}"#);
        assert_eq!((r.status, r.code()), (415, "unsupported_media_type".into()), "abort as {ct:?}");
    }
    assert_untouched(&f, &id);
}

/// Open mode: every cross-origin request a browser sends carries `Origin`; a request with one is
/// refused (403), reads included (a page must not read the rollouts either).
#[test]
fn open_mode_refuses_requests_from_web_pages() {
    let f = open();
    let id = open_rollout(&f);
    let json = "Content-Type: application/json\r\n";
    let create = body("evil", "shop", json!({ "kind": "exec", "profile": "noop" })).to_string();
    for origin in ["http://evil.example", "null", &format!("http://127.0.0.1:{}", f.daemon.port)] {
        let extra = format!("{json}Origin: {origin}\r\n");
        let r = raw(f.daemon.port, "POST", "/api/v1/rollouts", None, &extra, create.as_bytes());
        assert_eq!((r.status, r.code()), (403, "cross_origin".into()), "create from {origin}");
        let r = raw(f.daemon.port, "POST", &format!("/api/v1/rollouts/{id}/abort"), None, &extra, b"{}");
        assert_eq!((r.status, r.code()), (403, "cross_origin".into()), "abort from {origin}");
        let r = raw(f.daemon.port, "GET", "/api/v1/rollouts", None, &format!("Origin: {origin}\r\n"), b"");
        assert_eq!(r.status, 403, "read from {origin}");
        assert!(!String::from_utf8_lossy(&r.body).contains(&id), "the answer leaked the rollout");
    }
    assert_untouched(&f, &id);
}

/// Open mode: DNS rebinding points `evil.example` at 127.0.0.1, and the page reads the answers as
/// same-origin. The Host then is the attacker's name: refused (421); loopback names still work.
#[test]
fn open_mode_refuses_a_rebinding_host() {
    let f = open();
    let id = open_rollout(&f);
    let port = f.daemon.port;
    let json = "Content-Type: application/json\r\n";
    for host in
        [format!("evil.example:{port}"), "evil.example".into(), format!("127.0.0.1.nip.io:{port}"), "10.0.0.1".into()]
    {
        let h = Some(host.as_str());
        for path in ["/api/v1/rollouts".to_string(), format!("/api/v1/rollouts/{id}"), "/metrics".into()] {
            let r = raw_host(port, "GET", &path, h, None, "", b"");
            assert_eq!(r.status, 421, "GET {path} as {host}");
            assert!(!String::from_utf8_lossy(&r.body).contains(&id), "the answer leaked the rollout");
        }
        let r = raw_host(port, "POST", &format!("/api/v1/rollouts/{id}/abort"), h, None, json, b"{}");
        assert_eq!((r.status, r.code()), (421, "misdirected".into()), "abort as {host}");
    }
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let r = raw_host(port, "GET", "/api/v1/rollouts", Some(&host), None, "", b"");
        assert_eq!(r.status, 200, "{host} is loopback");
    }
    assert_untouched(&f, &id);
}

/// A failing command's stderr once landed in `rollout.message` and events: a viewer read the CI
/// token, the webhook secret and the Slack signing secret. Now the command gets a cleared
/// environment (it cannot read them), and whatever it prints anyway is redacted before it reaches
/// the API, the events, the log, the webhooks or Slack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_command_output_appears_in_no_api_body_event_log_or_webhook() {
    let rx = Receiver::start().await;
    let hook_secret = "webhook-secret-9f8e7d6c5b4a3210";
    let prom_token = "prometheus-token-4d5e6f7a8b9c";
    let slack_path = "/services/T0000/B0000/slack-url-secret-1a2b3c4d";
    let slack_url = rx.url(slack_path);
    let secrets = [OPERATOR, VIEWER, SLACK_SIGNING, hook_secret, prom_token, slack_url.as_str()];
    // The rollback (weight 0) fails, printing every secret it could get: from its environment (empty
    // now) and, as a command that found them elsewhere would, literally.
    let script = format!(
        "if [ \"$VANE_CANARY_WEIGHT\" = 0 ]; then echo \"env=[$SEC_OP_TOKEN$SEC_HOOK_SECRET$VANE_SLACK_SIGNING_SECRET] \
         literal: {}\" >&2; exit 1; fi",
        secrets.join(" ")
    );
    let profiles = format!("{{ leaky = {{ command = {} }} }}", toml_argv(&["sh", "-c", &script]));
    let webhooks = format!(r#"[{{ url = "{}", secret_env = "SEC_HOOK_SECRET" }}]"#, rx.url("/hook"));
    let f = Fixture::with(
        true,
        &[
            ("VANE_ROUTERS_EXEC", &profiles),
            ("VANE_NOTIFICATIONS_WEBHOOKS", &webhooks),
            ("SEC_HOOK_SECRET", hook_secret),
            ("VANE_SLACK_WEBHOOK_URL", &slack_url),
            ("VANE_PROMETHEUS_BEARER_TOKEN_ENV", "SEC_PROM_TOKEN"),
            ("SEC_PROM_TOKEN", prom_token),
        ],
        &[],
    );
    let r = f.create(&body("cart", "shop", json!({ "kind": "exec", "profile": "leaky" })));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let events = || f.get(&format!("/api/v1/rollouts/{id}/events")).json();
    let has = |v: &Value, kind: &str| v["items"].as_array().is_some_and(|a| a.iter().any(|e| e["type"] == kind));
    wait_until("the first step", Duration::from_secs(20), || has(&events(), "weight-set"));
    let r = f.req("POST", &format!("/api/v1/rollouts/{id}/abort"), bearer(OPERATOR).as_deref(), b"{}");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    wait_until("the failed rollback in the events", Duration::from_secs(20), || has(&events(), "router-error"));
    let delivered =
        |path: &str, what: &str| rx.requests(path).iter().any(|r| String::from_utf8_lossy(&r.body).contains(what));
    wait_until("the webhook and Slack deliveries", Duration::from_secs(30), || {
        delivered("/hook", "router-error") && delivered(slack_path, "NOT complete")
    });

    let rollout = f.get(&format!("/api/v1/rollouts/{id}"));
    let message = rollout.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("[REDACTED]"), "the command's output reached the message, redacted: {message}");
    assert!(message.contains("env=[]"), "the command saw none of the daemon's secrets: {message}");
    let mut places = vec![
        ("GET rollout".to_string(), String::from_utf8_lossy(&rollout.body).into_owned()),
        ("GET events".to_string(), events().to_string()),
        ("GET list".to_string(), f.get("/api/v1/rollouts").json().to_string()),
        ("daemon log".to_string(), f.log()),
    ];
    for r in rx.all() {
        places.push((format!("delivery to {}", r.path), String::from_utf8_lossy(&r.body).into_owned()));
    }
    assert!(f.log().contains("[REDACTED]"), "the log has the redacted message");
    for (place, text) in &places {
        for s in secrets {
            assert!(!text.contains(s), "{place} contains the secret {s:?}");
        }
    }
}

/// 300 idle or half-sent connections once made `/health/live` time out. Now a connection that has
/// not sent its request head within `header_read_timeout` is closed, and the probe keeps answering
/// while they are open.
#[test]
fn idle_half_open_connections_are_cut_and_the_probes_keep_answering() {
    let f = Fixture::with(true, &[("VANE_SERVER_HEADER_READ_TIMEOUT", "2s")], &[]);
    let port = f.daemon.port;
    let opened = Instant::now();
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        if i % 2 == 0 {
            s.write_all(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").expect("half a head");
        }
        idle.push(s);
    }
    for _ in 0..10 {
        let t = Instant::now();
        let r = raw(port, "GET", "/health/live", None, "", b"");
        assert_eq!(r.status, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "/health/live took {:?} with 300 idle sockets", t.elapsed());
    }
    for (i, s) in idle.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut buf = [0u8; 1024];
        // EOF, a reset or an error response: the server let go. A read timeout: it did not.
        if let Err(e) = s.read(&mut buf)
            && matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        {
            panic!("connection {i} still open {:?} after it was opened", opened.elapsed());
        }
    }
    assert!(opened.elapsed() < Duration::from_secs(8), "cut only after {:?}", opened.elapsed());
    assert_eq!(raw(port, "GET", "/health/live", None, "", b"").status, 200);
}

/// `max_connections`: a connection beyond it is closed at once (no queue of sockets holding memory and
/// file descriptors); once idle ones are cut, new connections are served again.
#[test]
fn connections_beyond_max_connections_are_closed_at_once() {
    let f =
        Fixture::with(true, &[("VANE_SERVER_MAX_CONNECTIONS", "20"), ("VANE_SERVER_HEADER_READ_TIMEOUT", "2s")], &[]);
    let port = f.daemon.port;
    let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect")).collect();
    let t = Instant::now();
    let mut extra = TcpStream::connect(("127.0.0.1", port)).expect("the kernel still accepts");
    extra.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = extra.write_all(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut buf = Vec::new();
    let _ = extra.read_to_end(&mut buf); // EOF or a reset: either way the server let go
    assert!(buf.is_empty(), "the 21st connection was served: {}", String::from_utf8_lossy(&buf));
    assert!(t.elapsed() < Duration::from_secs(1), "closed only after {:?}", t.elapsed());
    wait_until("room again once the idle connections are cut", Duration::from_secs(10), || {
        std::panic::catch_unwind(|| raw(port, "GET", "/health/live", None, "", b"").status == 200).unwrap_or(false)
    });
    drop(idle);
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// One 900 KB create with `interval: 10ms` once grew the store by ~200 MB in 10 s. Now every string
/// of a create is capped and an override's interval has a floor: 422 naming the field, nothing stored.
#[test]
fn a_huge_create_or_a_tiny_interval_is_refused_and_the_store_does_not_grow() {
    let f = Fixture::start();
    let store = f.dir.path().join("data");
    let before = dir_size(&store);
    let huge = "x".repeat(900_000);
    let with = |patch: Value| {
        let mut b = body("cart", "shop", json!({ "kind": "exec", "profile": "noop" }));
        for (k, v) in patch.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases = [
        (with(json!({ "version": huge })), "version"),
        (with(json!({ "service": huge })), "service"),
        (with(json!({ "router": { "kind": "exec", "profile": huge } })), "router.profile"),
        (with(json!({ "overrides": { "interval": huge } })), "overrides.interval"),
        (with(json!({ "overrides": { "interval": "10ms" } })), "overrides.interval"),
        (with(json!({ "overrides": { "interval": "4s" } })), "overrides.interval"),
    ];
    for _ in 0..3 {
        for (b, want) in &cases {
            let r = f.create(b);
            assert_eq!(field(&r), (422, "validation".into(), want.to_string()), "{}", &b.to_string()[..120]);
        }
    }
    assert!(f.ids().is_empty(), "a refused create was stored");
    let after = dir_size(&store);
    assert!(after <= before + 64 * 1024, "the store grew from {before} to {after} bytes");
    // The floor is the configured one: 5 s is accepted.
    assert_eq!(f.create(&with(json!({ "overrides": { "interval": "5s" } }))).status, 201);
}

/// `version: "v2@127.0.0.1:18099/x?"` once turned a templated URL into a request to another host.
/// Now versions follow `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$` (422), and substituted values are
/// percent-encoded, so the hook still goes to the policy's host with the version in its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_cannot_send_a_hook_to_another_host() {
    let hook = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    let policy = format!(
        "name: hooked\nstrategy: canary\nsteps: [10, 100]\ninterval: 1h\nthreshold: 2\nprogressDeadline: 10h\n\
         webhooks:\n  preRollout:\n    - url: \"{}/pre/{{{{version}}}}?stable={{{{stable_version}}}}\"\n      timeout: 5s\n",
        hook.url("")
    );
    let f = Fixture::with(true, &[], &[("hooked", &policy)]);
    let hooked = |version: &str, stable: &str| {
        json!({ "service": "cart", "namespace": "shop", "version": version, "stableVersion": stable,
                "policy": "hooked", "router": { "kind": "exec", "profile": "noop" } })
    };
    let evil = format!("v2@{}/x?", elsewhere.addr);
    for (b, want) in [
        (hooked(&evil, "v1"), "version"),
        (hooked("v2", &evil), "stableVersion"),
        (hooked("v2/../../admin", "v1"), "version"),
        (hooked("v2#frag", "v1"), "version"),
        (hooked("-v2", "v1"), "version"),
    ] {
        let r = f.create(&b);
        assert_eq!(field(&r), (422, "validation".into(), want.into()), "{b}");
    }
    assert!(f.ids().is_empty());
    let r = f.create(&hooked("v2.1_rc-1", "v1.0"));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let got = hook.wait_for("/pre/v2.1_rc-1", 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].header("host"), Some(hook.addr.to_string().as_str()));
    assert!(elsewhere.all().is_empty(), "a request reached another host: {:?}", elsewhere.all());
}

/// Hooks once followed redirects and re-POSTed the signed body wherever the receiver pointed. Now a
/// 3xx is the hook's answer (not 2xx): the rollout does not proceed, and the redirect target gets
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_redirects_is_not_followed() {
    let hook = Receiver::start().await;
    let target = Receiver::start().await;
    hook.redirect("/pre", &target.url("/stolen"));
    let policy = format!(
        "name: hooked\nstrategy: canary\nsteps: [10, 100]\ninterval: 1h\nthreshold: 2\nprogressDeadline: 10h\n\
         webhooks:\n  preRollout:\n    - url: \"{}\"\n      timeout: 5s\n",
        hook.url("/pre")
    );
    let f = Fixture::with(true, &[("VANE_HOOK_SECRET", "hook-signing-secret-0123456789")], &[("hooked", &policy)]);
    let b = json!({ "service": "cart", "namespace": "shop", "version": "v2", "stableVersion": "v1",
                    "policy": "hooked", "router": { "kind": "exec", "profile": "noop" } });
    let r = f.create(&b);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    hook.wait_for("/pre", 1, Duration::from_secs(20)).await;
    assert!(hook.requests("/pre")[0].header("x-vane-signature").is_some(), "the hook body is signed");
    wait_until("the 307 in the rollout's history", Duration::from_secs(20), || {
        f.get(&format!("/api/v1/rollouts/{id}/events")).json().to_string().contains("HTTP 307")
    });
    assert!(target.all().is_empty(), "the redirect was followed: {:?}", target.all());
    let events = f.get(&format!("/api/v1/rollouts/{id}/events")).json();
    let moved =
        events["items"].as_array().unwrap().iter().any(|e| e["type"] == "weight-set" && e["details"]["canary"] != 0);
    assert!(!moved, "traffic moved although the pre-rollout hook did not say yes: {events}");
}

/// `max_active_rollouts`: beyond it a create is 429 and nothing is stored; once one finishes there is
/// room again.
#[test]
fn creates_beyond_max_active_rollouts_are_429() {
    let f = Fixture::with(true, &[("VANE_SERVER_MAX_ACTIVE_ROLLOUTS", "2")], &[]);
    let noop = || json!({ "kind": "exec", "profile": "noop" });
    let a = f.create(&body("cart-a", "shop", noop()));
    let b = f.create(&body("cart-b", "shop", noop()));
    assert_eq!((a.status, b.status), (201, 201));
    let r = f.create(&body("cart-c", "shop", noop()));
    assert_eq!((r.status, r.code()), (429, "too_many_rollouts".into()));
    assert_eq!(f.ids().len(), 2, "the refused create was stored");
    let a = a.json()["id"].as_str().unwrap().to_string();
    let r = f.req("POST", &format!("/api/v1/rollouts/{a}/abort"), bearer(OPERATOR).as_deref(), b"{}");
    assert_eq!(r.status, 200);
    let mut last = 0;
    wait_until("room for another rollout", Duration::from_secs(20), || {
        last = f.create(&body("cart-c", "shop", noop())).status;
        last == 201
    });
}

/// `[store] retention`: a finished rollout, its events and its idempotency key are deleted once
/// older than the retention (nothing is kept forever).
#[test]
fn finished_rollouts_are_deleted_after_the_retention() {
    let f = Fixture::with(true, &[("VANE_STORE_RETENTION", "2s")], &[]);
    let keyed = |service: &str| {
        let b = body(service, "shop", json!({ "kind": "exec", "profile": "noop" })).to_string();
        let extra = "Content-Type: application/json\r\nIdempotency-Key: deploy-1\r\n";
        raw(f.daemon.port, "POST", "/api/v1/rollouts", bearer(OPERATOR).as_deref(), extra, b.as_bytes())
    };
    let done = keyed("cart");
    assert_eq!(done.status, 201);
    let done = done.json()["id"].as_str().unwrap().to_string();
    let running = f.create(&body("other", "shop", json!({ "kind": "exec", "profile": "noop" })));
    let running = running.json()["id"].as_str().unwrap().to_string();
    let r = f.req("POST", &format!("/api/v1/rollouts/{done}/abort"), bearer(OPERATOR).as_deref(), b"{}");
    assert_eq!(r.status, 200);
    wait_until("the finished rollout to be deleted", Duration::from_secs(15), || {
        f.get(&format!("/api/v1/rollouts/{done}")).status == 404
    });
    assert_eq!(f.get(&format!("/api/v1/rollouts/{done}/events")).status, 404);
    assert_eq!(f.ids(), vec![running.clone()], "only the running rollout is left");
    // The key is free again: a different body under it creates a new rollout instead of a 422.
    let again = keyed("cart-2");
    assert_eq!(again.status, 201, "{}", String::from_utf8_lossy(&again.body));
}
