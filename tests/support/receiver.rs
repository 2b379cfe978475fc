//! A local HTTP receiver for outbound requests (webhooks, Slack, hooks): axum on 127.0.0.1, records
//! every request and answers with scripted statuses and delays per path.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body of {} is not JSON ({e}): {:?}", self.path, self.body))
    }
}

#[derive(Default)]
struct Inner {
    requests: Vec<Request>,
    /// Statuses to answer first, one per request, per path.
    scripts: HashMap<String, VecDeque<u16>>,
    /// Status after the script runs out (200 unless set).
    defaults: HashMap<String, u16>,
    delays: HashMap<String, Duration>,
    /// 307 with this Location.
    redirects: HashMap<String, String>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(s): State<Arc<Mutex<Inner>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = uri.path().to_string();
    let (status, delay) = {
        let mut g = s.lock().unwrap();
        g.requests.push(Request { path: path.clone(), headers, body });
        if let Some(to) = g.redirects.get(&path) {
            return (StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, to.clone())], "moved")
                .into_response();
        }
        let scripted = g.scripts.get_mut(&path).and_then(|q| q.pop_front());
        let status = scripted.or_else(|| g.defaults.get(&path).copied()).unwrap_or(200);
        (status, g.delays.get(&path).copied())
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    (StatusCode::from_u16(status).unwrap(), if status < 300 { "ok" } else { "nope" }).into_response()
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Listen on a given address (e.g. the port a "down" receiver had).
    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new().fallback(record).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, inner, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer `status` from now on.
    pub fn respond(&self, path: &str, status: u16) {
        self.inner.lock().unwrap().defaults.insert(path.into(), status);
    }

    /// Answer these statuses to the next requests, then the default.
    pub fn script(&self, path: &str, statuses: &[u16]) {
        self.inner.lock().unwrap().scripts.insert(path.into(), statuses.iter().copied().collect());
    }

    /// Answer 307 Temporary Redirect to `location` (which would repeat a POST with its body).
    pub fn redirect(&self, path: &str, location: &str) {
        self.inner.lock().unwrap().redirects.insert(path.into(), location.into());
    }

    /// Wait this long before answering.
    pub fn delay(&self, path: &str, d: Duration) {
        self.inner.lock().unwrap().delays.insert(path.into(), d);
    }

    /// Every request, on any path.
    pub fn all(&self) -> Vec<Request> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn requests(&self, path: &str) -> Vec<Request> {
        self.inner.lock().unwrap().requests.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Poll until `path` received at least `n` requests (panics with what arrived after `timeout`).
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Request> {
        let start = Instant::now();
        loop {
            let got = self.requests(path);
            if got.len() >= n {
                return got;
            }
            if start.elapsed() > timeout {
                let bodies: Vec<_> = got.iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
                panic!("{path}: expected {n} requests within {timeout:?}, got {}: {bodies:#?}", got.len());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A receiver that is down: the port is held (so no other test can take it) by a socket that never
/// accepts, so requests to it get no answer. Drop it, then `Receiver::start_on(addr)` to bring the
/// receiver up on the same address.
pub struct Down(pub std::net::TcpListener);

pub fn down() -> (SocketAddr, Down) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (l.local_addr().unwrap(), Down(l))
}
