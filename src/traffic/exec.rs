//! `exec` router: any other load balancer, driven by the command of a `[routers.exec.NAME]` profile
//! (SPEC §4).
//!
//! The command runs without a shell and with a cleared environment: PATH, the `VANE_*` variables of
//! the rollout and the profile's `env` names only — never the daemon's tokens or secrets. Its output
//! is redacted before it can reach a message, an event or a log line.

use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;

use super::{Router, RouterError};
use crate::BoxFut;
use crate::config::ExecProfile;
use crate::redact::{Redactor, tail};
use crate::rollout::Rollout;

const TIMEOUT: Duration = Duration::from_secs(30);

/// PATH for commands when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub struct ExecRouter {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    redactor: Arc<Redactor>,
}

/// The environment of a child process: PATH, then the daemon's values of `inherit` (those set).
pub fn child_env(inherit: &[String]) -> Vec<(String, String)> {
    let mut env = vec![("PATH".to_string(), std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()))];
    for name in inherit.iter().filter(|n| n.as_str() != "PATH") {
        if let Ok(v) = std::env::var(name) {
            env.push((name.clone(), v));
        }
    }
    env
}

impl ExecRouter {
    pub fn new(profile: &ExecProfile, r: &Rollout, redactor: Arc<Redactor>) -> Self {
        let mut env = child_env(&profile.env);
        env.extend([
            ("VANE_ROLLOUT_ID".to_string(), r.id.clone()),
            ("VANE_SERVICE".to_string(), r.service.clone()),
            ("VANE_NAMESPACE".to_string(), r.namespace.clone()),
            ("VANE_VERSION".to_string(), r.version.clone()),
            ("VANE_STABLE_VERSION".to_string(), r.stable_version.clone()),
        ]);
        ExecRouter { argv: profile.command.clone(), env, redactor }
    }
}

impl Router for ExecRouter {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn validate(&self) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(async { Ok(()) })
    }

    fn set_weight(&self, canary: u8) -> BoxFut<'_, Result<(), RouterError>> {
        Box::pin(async move {
            let Some((prog, args)) = self.argv.split_first() else {
                return Err(RouterError::Permanent("the exec profile has an empty command".into()));
            };
            let mut cmd = Command::new(prog);
            cmd.args(args)
                .env_clear()
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("VANE_CANARY_WEIGHT", canary.to_string())
                .env("VANE_STABLE_WEIGHT", (100 - canary).to_string())
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let out = tokio::time::timeout(TIMEOUT, cmd.output())
                .await
                .map_err(|_| RouterError::Transient(format!("{prog} timed out after {TIMEOUT:?}")))?
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                        RouterError::Permanent(format!("cannot run {prog}: {e}"))
                    }
                    _ => RouterError::Transient(format!("cannot run {prog}: {e}")),
                })?;
            if out.status.success() {
                Ok(())
            } else {
                let stderr = tail(&self.redactor, &String::from_utf8_lossy(&out.stderr), 300);
                Err(RouterError::Transient(format!("{prog} exited with {}: {stderr}", out.status)))
            }
        })
    }

    fn observe(&self) -> BoxFut<'_, Result<Option<u8>, RouterError>> {
        Box::pin(async { Ok(None) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[tokio::test]
    async fn the_command_sees_only_its_environment_and_its_output_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let profile = ExecProfile {
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("env > '{}'; echo \"failed with lb-secret-value\" >&2; exit 3", out.display()),
            ],
            env: vec!["HOME".into(), "VANE_TEST_UNSET_VARIABLE".into()],
            namespaces: vec![],
        };
        let req = fixtures::request("agent-service", "p");
        let policy = fixtures::policy("p", &[5, 100], Duration::from_secs(1), 1);
        let r = crate::rollout::machine::create("r".into(), &req, policy, "t", 0).0;
        let router = ExecRouter::new(&profile, &r, Arc::new(Redactor::new(["lb-secret-value".to_string()])));
        let e = router.set_weight(25).await.unwrap_err().to_string();
        assert!(e.contains("failed with [REDACTED]") && !e.contains("lb-secret-value"), "{e}");
        let env = std::fs::read_to_string(&out).unwrap();
        let mut names: Vec<&str> = env.lines().filter_map(|l| l.split_once('=').map(|(n, _)| n)).collect();
        names.retain(|n| !["PWD", "SHLVL", "_", "OLDPWD"].contains(n)); // the shell's own
        names.sort_unstable();
        let mut expected = vec![
            "PATH",
            "VANE_CANARY_WEIGHT",
            "VANE_NAMESPACE",
            "VANE_ROLLOUT_ID",
            "VANE_SERVICE",
            "VANE_STABLE_VERSION",
            "VANE_STABLE_WEIGHT",
            "VANE_VERSION",
        ];
        if std::env::var_os("HOME").is_some() {
            expected.insert(0, "HOME");
        }
        assert_eq!(names, expected, "the daemon's other variables must not reach the command");
        assert!(env.contains("VANE_CANARY_WEIGHT=25\n") && env.contains("VANE_STABLE_WEIGHT=75\n"), "{env}");
    }
}
