//! `exec` router: any other load balancer, driven by a command (SPEC §4).

use std::time::Duration;

use tokio::process::Command;

use super::{Router, RouterError};
use crate::BoxFut;
use crate::rollout::Rollout;

const TIMEOUT: Duration = Duration::from_secs(30);

pub struct ExecRouter {
    argv: Vec<String>,
    env: Vec<(&'static str, String)>,
}

impl ExecRouter {
    pub fn new(argv: Vec<String>, r: &Rollout) -> Self {
        let env = vec![
            ("VANE_ROLLOUT_ID", r.id.clone()),
            ("VANE_SERVICE", r.service.clone()),
            ("VANE_NAMESPACE", r.namespace.clone()),
            ("VANE_VERSION", r.version.clone()),
            ("VANE_STABLE_VERSION", r.stable_version.clone()),
        ];
        ExecRouter { argv, env }
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
            let mut cmd = Command::new(&self.argv[0]);
            cmd.args(&self.argv[1..])
                .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
                .env("VANE_CANARY_WEIGHT", canary.to_string())
                .env("VANE_STABLE_WEIGHT", (100 - canary).to_string())
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let out = tokio::time::timeout(TIMEOUT, cmd.output())
                .await
                .map_err(|_| RouterError::Transient(format!("{} timed out after {TIMEOUT:?}", self.argv[0])))?
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                        RouterError::Permanent(format!("cannot run {}: {e}", self.argv[0]))
                    }
                    _ => RouterError::Transient(format!("cannot run {}: {e}", self.argv[0])),
                })?;
            if out.status.success() {
                Ok(())
            } else {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: String =
                    stderr.trim().chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
                Err(RouterError::Transient(format!("{} exited with {}: {tail}", self.argv[0], out.status)))
            }
        })
    }

    fn observe(&self) -> BoxFut<'_, Result<Option<u8>, RouterError>> {
        Box::pin(async { Ok(None) })
    }
}
