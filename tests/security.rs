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

mod support {
    pub mod daemon;
}

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use support::daemon::{Daemon, free_port};

const OPERATOR: &str = "sec-operator-token-0123456789abcdef";
const VIEWER: &str = "sec-viewer-token-0123456789abcdef";
const TOKENS: &str = r#"[{ name = "ci", token_env = "SEC_OP_TOKEN", role = "operator" },
                         { name = "grafana", token_env = "SEC_VIEW_TOKEN", role = "viewer" }]"#;

struct Response {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// The error code of a SPEC §4 error body, or a description of what came instead.
    fn code(&self) -> String {
        let v = self.json();
        match v["error"]["code"].as_str() {
            Some(c) if v["error"]["message"].is_string() => c.to_string(),
            _ => format!("<not an error body: {}>", String::from_utf8_lossy(&self.body)),
        }
    }
}

/// One request over its own connection, byte for byte as given.
fn raw(port: u16, method: &str, path: &str, auth: Option<&str>, extra: &str, body: &[u8]) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(a) = auth {
        head += &format!("Authorization: {a}\r\n");
    }
    head += extra;
    head += &format!("Content-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).expect("write head");
    // The server may answer (413) and close before reading all of a large body.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP response: {:?}", String::from_utf8_lossy(&buf)));
    let headers = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = headers.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let mut body = buf[split + 4..].to_vec();
    if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = unchunk(&body);
    }
    Response { status, headers, body }
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let len = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if len == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + len]);
        b = &b[eol + 4 + len..];
    }
    out
}

fn bearer(t: &str) -> Option<String> {
    Some(format!("Bearer {t}"))
}

struct Fixture {
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn start() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("policies")).expect("policies dir");
        // An hour per step: the rollout stays where it is unless someone moves it.
        std::fs::write(
            dir.path().join("policies/slow.yaml"),
            "name: slow\nstrategy: canary\nsteps: [10, 50, 100]\ninterval: 1h\nthreshold: 2\nprogressDeadline: 10h\n",
        )
        .expect("policy");
        let daemon = Daemon::start(
            dir.path(),
            free_port(),
            &[
                ("VANE_SERVER_TOKENS", TOKENS),
                ("SEC_OP_TOKEN", OPERATOR),
                ("SEC_VIEW_TOKEN", VIEWER),
                ("VANE_SLACK_SIGNING_SECRET", "slack-signing-secret-for-the-test"),
            ],
        );
        Fixture { daemon, _dir: dir }
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
