//! A real etcd cluster for tests: Debian's `etcd` binary, N members on 127.0.0.1 with random free
//! ports and a temp dir each; a member can be killed and started again; all are killed on drop.
//! Optionally the client port speaks TLS and requires client certificates ([`ServerTls`]).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install -y --no-install-recommends etcd-server";

pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    /// Plain HTTP `/health` (and metrics), whatever the client port speaks.
    metrics_url: String,
    child: Option<Child>,
}

/// TLS on the client port: etcd's certificate and key, and the CA whose client certificates it accepts
/// (`--client-cert-auth`).
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    initial: String,
    tls: Option<ServerTls>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn find_etcd() -> PathBuf {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("etcd is not installed; the HA tests need a real etcd: {INSTALL}");
}

impl EtcdCluster {
    /// Start `n` members forming one cluster; returns once every member answers `/health`.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, None)
    }

    /// One member whose client port takes only TLS with a client certificate signed by `tls.ca`.
    pub fn start_tls(tls: ServerTls) -> EtcdCluster {
        EtcdCluster::start_with(1, Some(tls))
    }

    fn start_with(n: usize, tls: Option<ServerTls>) -> EtcdCluster {
        let bin = find_etcd();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let dir = tempfile::tempdir().expect("temp dir");
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                metrics_url: format!("http://127.0.0.1:{}", free_port()),
                child: None,
            })
            .collect();
        let initial = members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        let mut c = EtcdCluster { members: vec![], dir, bin, initial, tls };
        for m in members.iter_mut() {
            m.child = Some(c.spawn(m));
        }
        c.members = members;
        for i in 0..n {
            c.wait_healthy(i);
        }
        c
    }

    fn spawn(&self, m: &Member) -> Child {
        let data = self.dir.path().join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .expect("etcd log");
        let mut cmd = Command::new(&self.bin);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file").arg(&t.cert).arg("--key-file").arg(&t.key);
            cmd.arg("--trusted-ca-file").arg(&t.ca).arg("--client-cert-auth");
        }
        cmd.args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &m.client_url, "--advertise-client-urls", &m.client_url])
            .args(["--listen-metrics-urls", &m.metrics_url])
            .args(["--listen-peer-urls", &m.peer_url, "--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "vane-test", "--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting etcd: {e}; {INSTALL}"))
    }

    /// Every member's client URL (what vane's `[store] etcd.endpoints` lists).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// A TOML array of the endpoints.
    pub fn endpoints_toml(&self) -> String {
        let quoted: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// The pids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(|m| m.child.as_ref().map(Child::id)).collect()
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a killed member again (same data dir: it rejoins the cluster).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let child = self.spawn(&self.members[i]);
        self.members[i].child = Some(child);
    }

    /// Wait until member `i` answers `GET /health` with `"health":"true"` (plain HTTP/1.0 over a
    /// socket: usable from async tests too).
    fn wait_healthy(&self, i: usize) {
        let addr = self.members[i].metrics_url.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.contains("\"health\":\"true\"") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.members[i].name)));
        panic!("etcd member {i} did not become healthy:\n{}", log.unwrap_or_default());
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
