//! Start the real `vane` binary on a free loopback port with its own store and policies.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A running daemon; killed (SIGKILL) on drop.
pub struct Daemon {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Daemon {
    /// `dir` holds `policies/`; the store goes to `dir/data`, logs to `dir/daemon.log`.
    pub fn start(dir: &Path, port: u16, env: &[(&str, &str)]) -> Daemon {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut d = Daemon {
            child: spawn(dir, port, &env),
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir: dir.into(),
            env,
        };
        d.wait_ready();
        d
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.dir, self.port, &self.env);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = format!("127.0.0.1:{}", self.port);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
                panic!("vane exited with {status}:\n{log}");
            }
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /health/ready HTTP/1.0\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("vane did not become ready on {addr}");
    }
}

/// A TOML basic string (JSON's escapes are TOML's).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// A TOML array of strings.
pub fn toml_argv<S: AsRef<str>>(argv: &[S]) -> String {
    let items: Vec<String> = argv.iter().map(|a| toml_str(a.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

/// The value of `VANE_ROUTERS_EXEC` for these `[routers.exec.NAME]` profiles (name, argv), each
/// serving every namespace. Without it the daemon has one profile, `noop` (`true`).
pub fn exec_profiles(profiles: &[(&str, &[&str])]) -> String {
    let items: Vec<String> =
        profiles.iter().map(|(name, argv)| format!("{name} = {{ command = {} }}", toml_argv(argv))).collect();
    format!("{{ {} }}", items.join(", "))
}

fn spawn(dir: &Path, port: u16, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("daemon.log")).expect("log file");
    // VANE_BIN: another build of the binary (benches/ha_scale.rs runs the release one).
    Command::new(std::env::var_os("VANE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_vane").into()))
        .arg("serve")
        .current_dir(dir)
        .env("VANE_SERVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("VANE_STORE_PATH", dir.join("data"))
        .env("VANE_POLICIES_DIR", dir.join("policies"))
        .env("RUST_LOG", "info")
        .env("VANE_ROUTERS_EXEC", exec_profiles(&[("noop", &["true"])]))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("vane binary runs")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
