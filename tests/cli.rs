//! The CLI against a real daemon: start, watch (exit codes), control, and `policy check`.

mod support {
    pub mod daemon;
}

use std::process::Command;

use support::daemon::{Daemon, free_port};

fn vane(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vane"))
        .args(args)
        .env("VANE_URL", &d.url)
        .env_remove("VANE_TOKEN")
        .output()
        .expect("vane runs")
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn setup() -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/quick.yaml"),
        "name: quick\nstrategy: canary\nsteps: [20, 100]\ninterval: 150ms\nthreshold: 2\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rollout.yaml"),
        "service: cart\nnamespace: shop\nversion: v2\nstableVersion: v1\npolicy: quick\nrouter:\n  kind: exec\n  command: [\"true\"]\n",
    )
    .unwrap();
    let d = Daemon::start(dir.path(), free_port(), &[]);
    (dir, d)
}

#[test]
fn start_watch_succeeds_with_exit_0() {
    let (dir, d) = setup();
    let out = vane(&d, &["rollout", "start", "-f", dir.path().join("rollout.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 26, "prints the id: {id:?}");
    let out = vane(&d, &["rollout", "watch", &id, "--every", "50ms"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(lines.lines().count() >= 2, "one line per change when not a TTY: {lines}");
    assert!(lines.lines().last().unwrap().contains("Succeeded"), "{lines}");
    let out = vane(&d, &["rollout", "events", &id]);
    assert!(text(&out).contains("succeeded"), "{}", text(&out));
    let out = vane(&d, &["rollout", "list", "--service", "cart"]);
    assert!(text(&out).contains(&id), "{}", text(&out));
}

#[test]
fn aborted_rollout_watch_exits_non_zero_and_errors_are_readable() {
    let (_dir, d) = setup();
    let out = vane(
        &d,
        &[
            "rollout",
            "start",
            "--service",
            "cart",
            "--namespace",
            "shop",
            "--version",
            "v2",
            "--stable-version",
            "v1",
            "--policy",
            "quick",
            "--router",
            r#"{"kind":"exec","command":["true"]}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = vane(&d, &["rollout", "abort", &id, "--reason", "smoke tests red"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = vane(&d, &["rollout", "watch", &id, "--every", "50ms"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("Aborted"), "{}", text(&out));
    let out = vane(&d, &["rollout", "resume", &id]);
    assert!(!out.status.success());
    assert!(text(&out).contains("409"), "{}", text(&out));
    let out = vane(&d, &["rollout", "start", "--service", "cart"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("field: namespace") || text(&out).contains("422"), "{}", text(&out));
}

#[test]
fn policy_check_reports_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&good, "name: good\nstrategy: canary\nsteps: [10, 100]\n").unwrap();
    std::fs::write(&bad, "name: bad\nstrategy: canary\ninterval: 1m\nsteps: [10, 60]\n").unwrap();
    let run = |args: &[&std::path::Path]| {
        Command::new(env!("CARGO_BIN_EXE_vane")).arg("policy").arg("check").args(args).output().unwrap()
    };
    let out = run(&[&good]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&[&good, &bad]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out);
    assert!(err.contains(&format!("{}:4: steps:", bad.display())), "{err}");
    let out = run(&[Path::new(env!("CARGO_MANIFEST_DIR")).join("policies").as_path()]);
    assert!(out.status.success(), "shipped policies are valid: {}", text(&out));
}

use std::path::Path;

#[test]
fn refuses_a_non_loopback_address_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vane"))
        .arg("serve")
        .current_dir(dir.path())
        .env("VANE_SERVER_LISTEN", format!("0.0.0.0:{}", free_port()))
        .env("VANE_POLICIES_DIR", Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .env("VANE_STORE_PATH", dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("without any API token"), "{}", text(&out));
    assert!(!dir.path().join("data").exists(), "refused before touching the store");
}

#[test]
fn start_with_deployment_and_image_sends_the_workload() {
    let (dir, d) = setup();
    std::fs::write(
        dir.path().join("release.yaml"),
        "namespace: shop\nstableVersion: v1.0.0\npolicy: quick\nrouter:\n  kind: istio\n  virtualService: agent-service\n  \
         stableSubset: v1-0-0\n  canarySubset: v1-1-0\n",
    )
    .unwrap();
    let file = dir.path().join("release.yaml");
    let args = ["rollout", "start", "-f", file.to_str().unwrap(), "--deployment", "agent-service"];
    let out =
        vane(&d, &[&args[..], &["--image", "registry:5000/agent-service:v1.1.0", "--retire-after", "1m"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = vane(&d, &["rollout", "get", &id]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!((v["service"].as_str(), v["version"].as_str()), (Some("agent-service"), Some("v1.1.0")), "{v}");
    assert_eq!(v["workload"]["image"], "registry:5000/agent-service:v1.1.0", "{v}");
    assert_eq!(
        (v["workload"]["retireAfter"].as_str(), v["workload"]["canaryScale"].as_str()),
        (Some("1m"), Some("proportional"))
    );
    let out = vane(&d, &[&args[..], &["--image", "registry/agent-service:v1.2.0", "--canary-scale", "half"]].concat());
    assert!(!out.status.success() && text(&out).contains("workload.canaryScale"), "{}", text(&out));
}
