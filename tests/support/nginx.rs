//! A real NGINX (Debian's binary) for tests: started in the foreground in a temp dir (`-p DIR -c
//! DIR/nginx.conf -g 'daemon off;'`), proxying to two tiny backends that answer "stable" and
//! "canary" through vane's split file. Killed on drop, and by a watchdog if the test binary dies.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install -y --no-install-recommends nginx";

/// A backend answering every request with `body`.
pub async fn backend(body: &'static str) -> u16 {
    let app = axum::Router::new().fallback(move || async move { body });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a backend");
    let port = listener.local_addr().expect("backend address").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

pub fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    panic!("nginx is not installed; the NGINX router tests need it: {INSTALL}");
}

pub struct Nginx {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Closing the watchdog's stdin makes it stop nginx and wait for it.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// The split file vane owns (included by nginx.conf).
    pub fn split_file(&self) -> PathBuf {
        self.dir.path().join("split.conf")
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    /// `nginx -p DIR -c DIR/nginx.conf <extra...>` as an argv (for the router's test/reload).
    pub fn command(&self, extra: &[&str]) -> Vec<String> {
        let mut v = vec![
            nginx_binary().display().to_string(),
            "-p".into(),
            self.dir.path().display().to_string(),
            "-c".into(),
            self.conf().display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Start NGINX with upstreams `stable_pool` → `stable_port` and `canary_pool` → `canary_port`,
    /// `proxy_pass http://$<variable>;`, and `initial_split` as the split file.
    pub async fn start(variable: &str, stable_port: u16, canary_port: u16, initial_split: &str) -> Nginx {
        let bin = nginx_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        // Workers run as an unprivileged user when we are root: let them traverse the directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp dir");
        let upstreams = [
            ("stable_pool".to_string(), format!("127.0.0.1:{stable_port}")),
            ("canary_pool".to_string(), format!("127.0.0.1:{canary_port}")),
        ];
        let conf = vane::traffic::nginx::server_config(dir.path(), port, &upstreams, variable);
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("write nginx.conf");
        std::fs::write(dir.path().join("split.conf"), initial_split).expect("write split.conf");
        let script =
            r#""$@" </dev/null & c=$!; trap 'kill $c 2>/dev/null; exit 0' TERM; read _ ; kill $c 2>/dev/null; wait $c"#;
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log");
        let child = Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&bin)
            .args(["-p", &d, "-c", &format!("{d}/nginx.conf"), "-g", "daemon off;"])
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start nginx");
        let n = Nginx { dir, port, child };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if n.master_pid().is_some() && client.get(n.url()).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "nginx did not start:\n{}", n.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}\n{}", read("stderr.log"), read("error.log"))
    }

    pub fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("nginx.pid")).ok()?.trim().parse().ok()
    }

    /// The master's worker processes.
    pub fn workers(&self) -> Vec<u32> {
        let Some(master) = self.master_pid() else {
            return vec![];
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // Fields after the `(comm)`: state, ppid, ...
                let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
                after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(master)
            })
            .collect()
    }

    /// Wait until a reload has replaced every worker in `old` (the new configuration is live).
    pub async fn wait_reloaded(&self, old: &[u32]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.workers();
            if !now.is_empty() && now.iter().all(|p| !old.contains(p)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx reload did not complete (workers {old:?} → {now:?}):\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Counts of a load run.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Tally {
    pub stable: u32,
    pub canary: u32,
    /// Requests retried once after a transport error (a keep-alive connection closed by a reload).
    pub retried: u32,
    pub failed: u32,
}

impl Tally {
    pub fn canary_percent(&self) -> f64 {
        100.0 * self.canary as f64 / (self.stable + self.canary).max(1) as f64
    }
    pub fn add(&mut self, o: Tally) {
        self.stable += o.stable;
        self.canary += o.canary;
        self.retried += o.retried;
        self.failed += o.failed;
    }
}

/// One GET through a keep-alive client, retried once on a transport error, as a proxy would.
pub async fn hit(client: &reqwest::Client, url: &str, t: &mut Tally) {
    let mut retried = false;
    loop {
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => {
                match r.text().await.as_deref() {
                    Ok("stable") => t.stable += 1,
                    Ok("canary") => t.canary += 1,
                    _ => t.failed += 1,
                }
                return;
            }
            Ok(_) => {
                t.failed += 1;
                return;
            }
            Err(_) if !retried => {
                retried = true;
                t.retried += 1;
            }
            Err(_) => {
                t.failed += 1;
                return;
            }
        }
    }
}

/// `n` requests over `conns` concurrent keep-alive connections.
pub async fn load(client: &reqwest::Client, url: &str, n: u32, conns: u32) -> Tally {
    let mut tasks = vec![];
    for i in 0..conns {
        let (client, url) = (client.clone(), url.to_string());
        let share = n / conns + u32::from(i < n % conns);
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            for _ in 0..share {
                hit(&client, &url, &mut t).await;
            }
            t
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        total.add(t.await.expect("load task"));
    }
    total
}
