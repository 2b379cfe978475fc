//! The demo's child processes: NGINX, Prometheus and the demo app versions, each in its own working
//! directory, on 127.0.0.1 and free ports.
//!
//! Every child runs under a tiny `sh` watchdog whose stdin is a pipe from the demo: when the demo exits
//! — normally, on Ctrl-C, or even killed with SIGKILL — the pipe closes and the watchdog stops the child
//! (SIGTERM) and waits for it, so nothing is left listening. The watchdogs run in their own process
//! group, so a Ctrl-C in the terminal reaches only the demo, which then stops them in order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub const INSTALL: &str = "apt-get install -y --no-install-recommends prometheus nginx";

/// A child process, stopped (and reaped) on drop.
pub struct Child {
    name: String,
    log: PathBuf,
    child: std::process::Child,
}

impl Drop for Child {
    fn drop(&mut self) {
        // Closing the watchdog's stdin makes it stop the program and wait for it.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Child {
    /// Run `program args...` under the watchdog; its stdout and stderr go to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
        use std::os::unix::process::CommandExt;
        let script = r#""$@" </dev/null & c=$!
trap 'kill $c 2>/dev/null; wait $c; exit 0' TERM INT HUP
read _ ; kill $c 2>/dev/null; wait $c"#;
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("/bin/sh")
            .args(["-c", script, "sh"])
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Child { name: name.into(), log: log.into(), child })
    }

    /// Fail (with the end of its log) when the process already exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            _ => bail!("{} exited:\n{}", self.name, self.log_tail()),
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The first of `dirs`/`$PATH` holding an executable `name`.
pub fn find_binary(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    path.into_iter().chain(dirs.iter().map(PathBuf::from)).map(|d| d.join(name)).find(|p| p.is_file())
}

/// NGINX and Prometheus (the given paths, else found on PATH and the usual places), or an error
/// saying how to install them.
pub fn require_tools(nginx: Option<&Path>, prometheus: Option<&Path>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let given = |p: Option<&Path>| p.map(|p| Some(p.to_path_buf()).filter(|p| p.is_file()));
    let nginx = given(nginx)
        .unwrap_or_else(|| find_binary("nginx", &["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"]));
    let prometheus = given(prometheus).unwrap_or_else(|| find_binary("prometheus", &["/usr/bin", "/usr/local/bin"]));
    match (nginx, prometheus) {
        (Some(n), Some(p)) => Ok((n, p)),
        (n, p) => {
            let missing: Vec<&str> = [("nginx", n.is_none()), ("prometheus", p.is_none())]
                .into_iter()
                .filter_map(|(name, gone)| gone.then_some(name))
                .collect();
            let what = match missing.as_slice() {
                [one] => format!("`{one}` was not found"),
                _ => "neither `nginx` nor `prometheus` was found".to_string(),
            };
            bail!(
                "vane demo runs a real NGINX and a real Prometheus, but {what} (looked on PATH, in /usr/sbin \
                 and /usr/bin, or at --nginx/--prometheus).\n\
                 On Debian/Ubuntu: sudo {INSTALL}\n\
                 Elsewhere: install both with your package manager so that they are on PATH."
            )
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Poll `f` every 50 ms until it returns `Some`, or fail after `timeout` saying what was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `vane demo-app` version.
pub struct App {
    pub version: String,
    pub error_rate: f64,
    pub addr: SocketAddr,
    _child: Child,
}

impl App {
    pub async fn start(exe: &Path, dir: &Path, version: &str, error_rate: f64) -> anyhow::Result<App> {
        let port_file = dir.join(format!("app-{version}.addr"));
        let _ = std::fs::remove_file(&port_file);
        let args: Vec<String> = [
            "demo-app",
            "--namespace",
            "demo",
            "--service",
            "demo",
            "--version",
            version,
            "--error-rate",
            &error_rate.to_string(),
            "--latency",
            "20ms:60ms",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([port_file.display().to_string()])
        .collect();
        let mut child =
            Child::spawn(&format!("demo app {version}"), exe, &args, &dir.join(format!("app-{version}.log")))?;
        let addr = wait_for(&format!("demo app {version} to listen"), Duration::from_secs(10), || {
            let alive = child.check_alive();
            let addr = std::fs::read_to_string(&port_file).ok().and_then(|s| s.trim().parse().ok());
            async move { alive.map(|()| addr) }
        })
        .await?;
        Ok(App { version: version.into(), error_rate, addr, _child: child })
    }

    /// The NGINX upstream serving this version.
    pub fn upstream(&self) -> String {
        upstream(&self.version)
    }
}

pub fn upstream(version: &str) -> String {
    format!("app_{}", version.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
}

/// NGINX in the foreground, with one upstream per app version and vane's split file included.
pub struct Nginx {
    pub dir: PathBuf,
    pub port: u16,
    pub bin: PathBuf,
    child: Child,
}

impl Nginx {
    pub async fn start(bin: &Path, dir: &Path, apps: &[&App], variable: &str, initial: &str) -> anyhow::Result<Nginx> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        // Workers run as an unprivileged user when the demo runs as root: let them traverse the dir.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        let port = free_port()?;
        let upstreams: Vec<(String, String)> = apps.iter().map(|a| (a.upstream(), a.addr.to_string())).collect();
        let conf = crate::traffic::nginx::server_config(dir, port, &upstreams, variable);
        std::fs::write(dir.join("nginx.conf"), conf)?;
        std::fs::write(dir.join("split.conf"), initial)?;
        let mut args = base_args(dir);
        args.extend(["-g".into(), "daemon off;".into()]);
        let child = Child::spawn("nginx", bin, &args, &dir.join("stderr.log"))?;
        let mut n = Nginx { dir: dir.into(), port, bin: bin.into(), child };
        let client = reqwest::Client::new();
        let url = n.url();
        wait_for("nginx to answer", Duration::from_secs(10), || {
            let alive = n.child.check_alive();
            let req = client.get(&url).send();
            async move {
                alive?;
                Ok(req.await.ok().map(|_| ()))
            }
        })
        .await
        .with_context(|| std::fs::read_to_string(dir.join("error.log")).unwrap_or_default())?;
        Ok(n)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn split_file(&self) -> PathBuf {
        self.dir.join("split.conf")
    }

    /// `nginx -p DIR -c DIR/nginx.conf -e DIR/error.log <extra>` as an argv (the router's test/reload).
    pub fn command(&self, extra: &[&str]) -> Vec<String> {
        let mut v = vec![self.bin.display().to_string()];
        v.extend(base_args(&self.dir));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }
}

fn base_args(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec!["-p".into(), format!("{d}"), "-c".into(), format!("{d}/nginx.conf"), "-e".into(), format!("{d}/error.log")]
}

/// Prometheus scraping the apps and the daemon every second.
pub struct Prometheus {
    pub url: String,
    child: Child,
}

impl Prometheus {
    pub async fn start(bin: &Path, dir: &Path, apps: &[&App], daemon: SocketAddr) -> anyhow::Result<Prometheus> {
        std::fs::create_dir_all(dir.join("data"))?;
        let port = free_port()?;
        let targets: Vec<String> = apps.iter().map(|a| format!("'{}'", a.addr)).collect();
        let config = format!(
            "# vane demo: the apps (the analysis reads them) and vane itself (for the dashboards).\n\
             global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: demo\n    static_configs:\n      - targets: [{}]\n\
             \x20 - job_name: vane\n    static_configs:\n      - targets: ['{daemon}']\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let args = vec![
            format!("--config.file={}/prometheus.yml", dir.display()),
            format!("--storage.tsdb.path={}/data", dir.display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".into(),
        ];
        let child = Child::spawn("prometheus", bin, &args, &dir.join("prometheus.log"))?;
        let mut p = Prometheus { url: format!("http://127.0.0.1:{port}"), child };
        let client = reqwest::Client::new();
        let ready = format!("{}/-/ready", p.url);
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            let alive = p.child.check_alive();
            let req = client.get(&ready).send();
            async move {
                alive?;
                Ok(req.await.ok().filter(|r| r.status().is_success()).map(|_| ()))
            }
        })
        .await?;
        Ok(p)
    }

    /// The first value of an instant query, if any.
    pub async fn value(&self, client: &reqwest::Client, q: &str) -> Option<f64> {
        let res = client.post(format!("{}/api/v1/query", self.url)).form(&[("query", q)]).send().await.ok()?;
        let v: serde_json::Value = res.json().await.ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}
