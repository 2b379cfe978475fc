//! `nginx` router: standalone NGINX on VMs or bare metal (SPEC §4).
//!
//! vane owns one small file holding a `split_clients` block that maps each request to the stable or
//! the canary upstream; the user's server block includes it and does `proxy_pass http://$variable;`.
//! The file, the variable and the commands come from a `[routers.nginx.NAME]` profile of the daemon's
//! configuration, never from a request. A change is: write the file atomically (a temp file with an
//! unpredictable name created exclusively in the same directory, fsync, rename over the target —
//! which replaces a symlink there instead of writing through it), run the
//! `test` command if given — restoring the previous file if it fails, so a broken config never waits
//! for the next reload — then run `reload` (NGINX reloads gracefully: in-flight requests finish). A
//! failed reload restores the previous file too, so the file always shows what NGINX was last told, and
//! a hidden `.<file>.vane-applied` next to it records the weight of the last reload NGINX accepted:
//! the weight reads back only when both agree (a crash between writing and reloading leaves it unknown,
//! and the decided weight is applied again).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;

use super::{Router, RouterError};
use crate::BoxFut;
use crate::redact::{Redactor, tail};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct NginxRouter {
    config_file: PathBuf,
    variable: String,
    stable_upstream: String,
    canary_upstream: String,
    test: Option<Vec<String>>,
    reload: Vec<String>,
    redactor: Arc<Redactor>,
}

/// The file for `canary` percent (hashing `$request_id`, i.e. per request, not sticky).
pub fn split_file(variable: &str, stable: &str, canary: &str, weight: u8) -> String {
    let weight = weight.min(100);
    let body = match weight {
        0 => format!("    * {stable};\n"),
        100 => format!("    * {canary};\n"),
        w => format!("    {w}% {canary};\n    * {stable};\n"),
    };
    format!(
        "# Written by vane: {weight}% of requests to {canary}, {}% to {stable}. Do not edit: vane rewrites it.\n\
         split_clients \"${{request_id}}\" ${variable} {{\n{body}}}\n",
        100 - weight
    )
}

/// A minimal, self-contained NGINX configuration around vane's split file: everything under `dir`
/// (pid, logs, temp paths, `split.conf`), one keep-alive upstream per `(name, host:port)`, and a server
/// on `127.0.0.1:port` doing `proxy_pass http://$<variable>;`. The demo and the tests run NGINX with
/// it; docs/routers.md shows the same shape for a real server block.
pub fn server_config(dir: &Path, port: u16, upstreams: &[(String, String)], variable: &str) -> String {
    let d = dir.display();
    let upstreams: String = upstreams
        .iter()
        .map(|(name, addr)| format!("    upstream {name} {{ server {addr}; keepalive 16; }}\n"))
        .collect();
    format!(
        r#"worker_processes 1;
# A connection opened but never used (HTTP clients pre-connect) would keep an old worker alive for
# client_header_timeout after a reload; bound it so "the reload completed" is observable quickly.
worker_shutdown_timeout 2s;
error_log {d}/error.log notice;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
{upstreams}    include {d}/split.conf;
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 100000;
        location / {{
            proxy_pass http://${variable};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

/// Read the canary weight back from a file vane wrote.
pub fn parse_weight(text: &str, stable: &str, canary: &str) -> Option<u8> {
    let start = text.find("split_clients")? + "split_clients".len();
    // Skip the hashed string: `"${request_id}"` has braces of its own.
    let mut rest = text[start..].trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        rest = &quoted[quoted.find('"')? + 1..];
    }
    let open = rest.find('{')? + 1;
    let body = &rest[open..open + rest[open..].find('}')?];
    let mut weight: Option<u8> = None;
    for entry in body.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.split_whitespace();
        let (Some(share), Some(target), None) = (parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        match (share, target) {
            ("*", t) if t == canary => return Some(100 - weight.unwrap_or(0)),
            ("*", t) if t == stable => return Some(weight.unwrap_or(0)),
            (p, t) if t == canary => {
                let share = p.strip_suffix('%')?.parse::<f64>().ok().filter(|v| (0.0..=100.0).contains(v))?;
                weight = weight.unwrap_or(0).checked_add(share.round() as u8).filter(|w| *w <= 100).map(Some)?;
            }
            _ => return None,
        }
    }
    None
}

fn find_program(name: &str) -> bool {
    if name.contains('/') {
        return Path::new(name).is_file();
    }
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

async fn run(what: &str, argv: &[String], redactor: &Redactor) -> Result<(), RouterError> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(RouterError::Permanent(format!("{what}: empty command")));
    };
    let mut cmd = Command::new(prog);
    cmd.args(args).env_clear().envs(super::exec::child_env(&[])).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .map_err(|_| RouterError::Transient(format!("{what} ({prog}) timed out after {COMMAND_TIMEOUT:?}")))?
        .map_err(|e| RouterError::Transient(format!("cannot run {what} ({prog}): {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = if stderr.trim().is_empty() { stdout.trim() } else { stderr.trim() };
    let shown = tail(redactor, text, 400);
    Err(RouterError::Transient(format!("{what} ({prog}) exited with {}: {shown}", out.status)))
}

/// Replace `path` with `bytes` atomically: readers see the old or the new file, never half of one.
/// The temp file has a random name and is created with O_EXCL (nobody can plant it or a symlink in
/// its place); the rename replaces `path` itself, also when `path` is a symlink.
async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (path, bytes) = (path.to_path_buf(), bytes.to_vec());
    tokio::task::spawn_blocking(move || {
        let mut tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".vane.tmp").tempfile_in(&dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

impl NginxRouter {
    pub fn new(
        config_file: impl AsRef<Path>,
        variable: &str,
        stable_upstream: &str,
        canary_upstream: &str,
        test: Option<Vec<String>>,
        reload: Vec<String>,
    ) -> Self {
        NginxRouter {
            config_file: config_file.as_ref().to_path_buf(),
            variable: variable.into(),
            stable_upstream: stable_upstream.into(),
            canary_upstream: canary_upstream.into(),
            test,
            reload,
            redactor: Arc::default(),
        }
    }

    /// Mask these secrets in the output of `test` and `reload`.
    pub fn with_redactor(mut self, redactor: Arc<Redactor>) -> Self {
        self.redactor = redactor;
        self
    }

    fn file_error(&self, doing: &str, e: std::io::Error) -> RouterError {
        let msg = format!("cannot {doing} {}: {e}", self.config_file.display());
        match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound => RouterError::Permanent(msg),
            _ => RouterError::Transient(msg),
        }
    }

    async fn read_previous(&self) -> Result<Option<Vec<u8>>, RouterError> {
        match tokio::fs::read(&self.config_file).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.file_error("read", e)),
        }
    }

    /// Where vane records the weight of the last reload NGINX accepted: a hidden file next to
    /// `config_file`. The config file alone cannot say it — it is written before the reload.
    fn applied_file(&self) -> PathBuf {
        let dir = self.config_file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = self.config_file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        dir.join(format!(".{name}.vane-applied"))
    }

    async fn restore(&self, previous: Option<Vec<u8>>) -> Result<(), std::io::Error> {
        match previous {
            Some(b) => write_atomically(&self.config_file, &b).await,
            None => tokio::fs::remove_file(&self.config_file).await,
        }
    }
}

impl Router for NginxRouter {
    fn kind(&self) -> &'static str {
        "nginx"
    }

    fn validate(&self) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(async move {
            let dir = self.config_file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !dir.is_dir() {
                return Err(RouterError::Permanent(format!(
                    "the directory of config_file {} does not exist",
                    self.config_file.display()
                )));
            }
            for (what, argv) in [("reload", Some(&self.reload)), ("test", self.test.as_ref())] {
                if let Some(prog) = argv.and_then(|a| a.first())
                    && !find_program(prog)
                {
                    return Err(RouterError::Permanent(format!("{what} command {prog:?} not found")));
                }
            }
            Ok(())
        })
    }

    fn set_weight(&self, canary: u8) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(async move {
            let text = split_file(&self.variable, &self.stable_upstream, &self.canary_upstream, canary);
            let previous = self.read_previous().await?;
            write_atomically(&self.config_file, text.as_bytes()).await.map_err(|e| self.file_error("write", e))?;
            if let Some(test) = &self.test
                && let Err(e) = run("config test", test, &self.redactor).await
            {
                let restored = match self.restore(previous).await {
                    Ok(()) => "previous file restored".to_string(),
                    Err(r) => format!("restoring the previous file failed too: {r}"),
                };
                return Err(RouterError::Transient(format!("{e}; {restored}, NGINX not reloaded")));
            }
            // A failed reload puts the previous file back as well: the file is what `observe` reads back
            // after a restart, so it must never claim a split NGINX is not running (a rollback that
            // never reached NGINX would look complete). The machine retries the whole change.
            if let Err(e) = run("reload", &self.reload, &self.redactor).await {
                let restored = match self.restore(previous).await {
                    Ok(()) => "previous file restored".to_string(),
                    Err(r) => format!("restoring the previous file failed too: {r}"),
                };
                return Err(RouterError::Transient(format!("{e}; {restored}")));
            }
            // Without the record the weight reads back as unknown and is re-applied after a restart.
            if let Err(e) = write_atomically(&self.applied_file(), canary.min(100).to_string().as_bytes()).await {
                tracing::warn!(file = %self.applied_file().display(), error = %e, "cannot record the applied weight");
            }
            Ok(())
        })
    }

    /// The file's weight when NGINX accepted a reload of it; unknown (`None`: the machine re-applies the
    /// decided weight) when the file was written but never reloaded — e.g. the daemon died in between.
    fn observe(&self) -> BoxFut<'_, Result<Option<u8>, RouterError>> {
        Box::pin(async move {
            let file = self
                .read_previous()
                .await?
                .and_then(|b| parse_weight(&String::from_utf8_lossy(&b), &self.stable_upstream, &self.canary_upstream));
            let applied = tokio::fs::read_to_string(self.applied_file()).await.ok().and_then(|s| s.trim().parse().ok());
            Ok(file.filter(|w| applied == Some(*w)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_file_has_the_spec_shape() {
        assert_eq!(
            split_file("vane_upstream", "stable", "canary", 25),
            "# Written by vane: 25% of requests to canary, 75% to stable. Do not edit: vane rewrites it.\n\
             split_clients \"${request_id}\" $vane_upstream {\n    25% canary;\n    * stable;\n}\n"
        );
        assert!(split_file("v", "s", "c", 0).contains("{\n    * s;\n}"));
        assert!(split_file("v", "s", "c", 100).contains("{\n    * c;\n}"));
    }

    #[test]
    fn the_weight_reads_back_for_every_value() {
        for w in 0..=100 {
            assert_eq!(parse_weight(&split_file("v", "stable_up", "canary_up", w), "stable_up", "canary_up"), Some(w));
        }
        assert_eq!(parse_weight("", "s", "c"), None);
        assert_eq!(parse_weight("split_clients \"$x\" $v { 10% other; * s; }", "s", "c"), None);
    }

    #[tokio::test]
    async fn a_failing_test_restores_the_previous_file_and_skips_the_reload() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("split.conf");
        let marker = dir.path().join("reloaded");
        let reload = vec!["touch".into(), marker.display().to_string()];
        let ok = NginxRouter::new(file.to_str().unwrap(), "v", "s", "c", Some(vec!["true".into()]), reload.clone());
        ok.set_weight(5).await.unwrap();
        assert!(marker.exists());
        std::fs::remove_file(&marker).unwrap();
        let failing = NginxRouter::new(file.to_str().unwrap(), "v", "s", "c", Some(vec!["false".into()]), reload);
        let e = failing.set_weight(25).await.unwrap_err();
        assert!(!e.is_permanent() && e.to_string().contains("previous file restored"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), split_file("v", "s", "c", 5));
        assert!(!marker.exists(), "reload must not run after a failed test");
        assert_eq!(failing.observe().await.unwrap(), Some(5));
    }

    #[tokio::test]
    async fn a_file_written_but_never_reloaded_reads_back_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("split.conf");
        let r = NginxRouter::new(file.to_str().unwrap(), "v", "s", "c", None, vec!["true".into()]);
        assert_eq!(r.observe().await.unwrap(), None, "no file");
        r.set_weight(10).await.unwrap();
        assert_eq!(r.observe().await.unwrap(), Some(10));
        // The daemon died after writing 50 % and before the reload.
        std::fs::write(&file, split_file("v", "s", "c", 50)).unwrap();
        assert_eq!(r.observe().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_failing_reload_restores_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("split.conf");
        let ok = NginxRouter::new(file.to_str().unwrap(), "v", "s", "c", None, vec!["true".into()]);
        ok.set_weight(50).await.unwrap();
        let down = NginxRouter::new(file.to_str().unwrap(), "v", "s", "c", None, vec!["false".into()]);
        let e = down.set_weight(0).await.unwrap_err();
        assert!(!e.is_permanent() && e.to_string().contains("previous file restored"), "{e}");
        assert_eq!(down.observe().await.unwrap(), Some(50), "the file still shows what NGINX runs");
    }

    #[tokio::test]
    async fn a_symlink_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let file = dir.path().join("split.conf");
        std::os::unix::fs::symlink(&victim, &file).unwrap();
        let r = NginxRouter::new(&file, "v", "s", "c", None, vec!["true".into()]);
        r.set_weight(10).await.unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&file).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), split_file("v", "s", "c", 10));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn validate_refuses_a_missing_directory_or_command() {
        let r = NginxRouter::new("/nonexistent/dir/split.conf", "v", "s", "c", None, vec!["true".into()]);
        assert!(r.validate().await.unwrap_err().is_permanent());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("split.conf");
        let r = NginxRouter::new(f.to_str().unwrap(), "v", "s", "c", None, vec!["no-such-nginx-binary".into()]);
        let e = r.validate().await.unwrap_err();
        assert!(e.is_permanent() && e.to_string().contains("no-such-nginx-binary"), "{e}");
    }
}
