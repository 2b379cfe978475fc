//! The CLI against a real daemon: start, watch (every exit code, a daemon restart mid-watch), output
//! formats, `ns/service` ids, closed pipes, completions, `config show` and `policy check`.

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
        dir.path().join("policies/gated.yaml"),
        "name: gated\nstrategy: canary\nsteps: [20, 100]\ninterval: 100ms\nthreshold: 2\ngates: [{at: 20, approval: manual, timeout: 10m}]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rollout.yaml"),
        "service: cart\nnamespace: shop\nversion: v2\nstableVersion: v1\npolicy: quick\nrouter:\n  kind: exec\n  profile: noop\n",
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
            r#"{"kind":"exec","profile":"noop"}"#,
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
    assert!(err.contains(&format!("{}:4:8: steps:", bad.display())), "{err}");
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
fn promote_gate_approves_once_and_a_retry_is_refused() {
    let (dir, d) = setup();
    std::fs::write(
        dir.path().join("policies/gated.yaml"),
        "name: gated\nstrategy: canary\nsteps: [20, 100]\ninterval: 150ms\nthreshold: 2\n\
         gates: [{at: 20, approval: manual, timeout: 10m}]\n",
    )
    .unwrap();
    let mut d = d;
    d.restart(); // load the new policy
    let spec =
        std::fs::read_to_string(dir.path().join("rollout.yaml")).unwrap().replace("policy: quick", "policy: gated");
    std::fs::write(dir.path().join("gated.yaml"), spec).unwrap();
    let out = vane(&d, &["rollout", "start", "-f", dir.path().join("gated.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !text(&vane(&d, &["rollout", "get", &id])).contains("AwaitingApproval") {
        assert!(std::time::Instant::now() < deadline, "never reached the gate");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = vane(&d, &["rollout", "promote", &id, "--gate", "50"]);
    assert!(!out.status.success() && text(&out).contains("not the current gate"), "{}", text(&out));
    let out = vane(&d, &["rollout", "promote", &id, "--gate", "20"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = vane(&d, &["rollout", "promote", &id, "--gate", "20"]);
    assert!(!out.status.success(), "a retry is refused: {}", text(&out));
    assert!(text(&out).contains("409"), "{}", text(&out));
    assert!(!vane(&d, &["rollout", "promote", &id, "--gate", "20", "--full"]).status.success());
    let out = vane(&d, &["rollout", "watch", &id, "--every", "50ms"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
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

/// Start a rollout of `ns/svc` with `policy`; its id.
fn start(d: &Daemon, ns: &str, svc: &str, policy: &str) -> String {
    let out = vane(
        d,
        &[
            "rollout",
            "start",
            "--service",
            svc,
            "--namespace",
            ns,
            "--version",
            "v2",
            "--stable-version",
            "v1",
            "--policy",
            policy,
            "--router",
            r#"{"kind":"exec","profile":"noop"}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Poll `vane rollout get` until the rollout is in `phase`.
fn wait_phase(d: &Daemon, id: &str, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = vane(d, &["rollout", "get", id, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["phase"] == phase {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never reached {phase}: {}", text(&out));
        std::thread::sleep(Duration::from_millis(50));
    }
}

use std::io::BufRead;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `vane` process whose stdout and stderr lines arrive on one channel as they are written.
fn spawn_lines(url: &str, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vane"))
        .args(args)
        .env("VANE_URL", url)
        .env_remove("VANE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
    let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
    for (tag, stream) in [("out", out), ("err", err)] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(format!("{tag}: {line}"));
            }
        });
    }
    (child, rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = vec![];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(what) => return l,
            Ok(l) => seen.push(l),
            Err(_) => break,
        }
    }
    panic!("no line with {what:?}; saw {seen:#?}");
}

fn wait_exit(child: &mut std::process::Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("vane did not exit");
}

#[test]
fn watch_exit_codes_usage_timeout_unreachable() {
    let (_dir, d) = setup();
    // 2: usage.
    let out = vane(&d, &["rollout", "watch"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = vane(&d, &["rollout", "watch", "shop/nothing-here", "--timeout", "5s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no rollout for shop/nothing-here"), "{}", text(&out));
    let out = vane(&d, &["rollout", "watch", "01JAAAAAAAAAAAAAAAAAAAAAAA"]);
    assert_eq!(out.status.code(), Some(2), "unknown id: {}", text(&out));
    // 3: the rollout waits at its gate longer than --timeout.
    let id = start(&d, "shop", "cart", "gated");
    wait_phase(&d, &id, "AwaitingApproval");
    let t = Instant::now();
    let out = vane(&d, &["rollout", "watch", "shop/cart", "--every", "50ms", "--timeout", "700ms"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(t.elapsed() < Duration::from_secs(5), "gave up on time: {:?}", t.elapsed());
    assert!(text(&out).contains("timed out after 700ms") && text(&out).contains("AwaitingApproval"), "{}", text(&out));
    // 4: nothing listens there.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    for extra in [["--reconnect-timeout", "500ms"], ["--timeout", "500ms"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_vane"))
            .args(["rollout", "watch", &id, "--every", "50ms"])
            .args(extra)
            .env("VANE_URL", &nowhere)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(4), "{extra:?}: {}", text(&out));
        assert!(text(&out).contains("cannot reach vane"), "{}", text(&out));
    }
    // Other commands: unreachable is 4 too, a refused action 1.
    let out =
        Command::new(env!("CARGO_BIN_EXE_vane")).args(["rollout", "list"]).env("VANE_URL", &nowhere).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let out = vane(&d, &["rollout", "resume", &id]);
    assert_eq!(out.status.code(), Some(1), "resume of a rollout that is not paused: {}", text(&out));
}

#[test]
fn watch_survives_a_daemon_restart() {
    let (_dir, mut d) = setup();
    let id = start(&d, "shop", "cart", "gated");
    let (mut watch, lines) = spawn_lines(&d.url, &["rollout", "watch", &id, "--every", "50ms"]);
    wait_line(&lines, "AwaitingApproval");
    d.kill();
    wait_line(&lines, "retrying");
    d.restart();
    wait_line(&lines, "reconnected");
    let out = vane(&d, &["rollout", "promote", "shop/cart", "--full"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(wait_exit(&mut watch), Some(0), "the restart did not fail the watch");
    wait_line(&lines, "Succeeded");
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let (_dir, d) = setup();
    let id = start(&d, "shop", "cart", "quick");
    for args in [
        vec!["rollout", "list"],
        vec!["rollout", "list", "-o", "json"],
        vec!["rollout", "events", id.as_str()],
        vec!["rollout", "get", id.as_str()],
        vec!["completions", "bash"],
        vec!["--help"],
    ] {
        // The reader is gone before vane writes: every write fails with EPIPE.
        let mut child = Command::new(env!("CARGO_BIN_EXE_vane"))
            .args(&args)
            .env("VANE_URL", &d.url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} is quiet: {err}");
    }
    // And through a shell pipeline, as users write it.
    let out = Command::new("bash")
        .args(["-c", &format!("set -o pipefail; {:?} rollout list | head -1", env!("CARGO_BIN_EXE_vane"))])
        .env("VANE_URL", &d.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ID "), "{}", text(&out));
}

#[test]
fn output_formats_and_service_ids() {
    let (_dir, d) = setup();
    let long = "agent-service-with-a-name-longer-than-28-characters";
    let first = start(&d, "ai-workflow-prod", long, "quick");
    wait_phase(&d, &first, "Succeeded");
    let id = start(&d, "ai-workflow-prod", long, "gated");
    let _short = start(&d, "shop", "cart", "gated");
    let svc = format!("ai-workflow-prod/{long}");

    // ns/service: the active rollout; once it has ended, the newest.
    let out = vane(&d, &["rollout", "get", &svc, "-o", "name"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{id}\n"), "{}", text(&out));
    let out = vane(&d, &["rollout", "abort", &svc]);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&d, &id, "Aborted");
    let out = vane(&d, &["rollout", "events", &svc, "-o", "name"]);
    assert!(String::from_utf8_lossy(&out.stdout).lines().all(|l| l.starts_with(&format!("{id}-"))), "{}", text(&out));

    // JSON in the API's field order; YAML; names.
    let out = vane(&d, &["rollout", "get", &id]);
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    let pos = |k: &str| json.find(&format!("\"{k}\"")).unwrap_or_else(|| panic!("{k} missing: {json}"));
    assert!(
        pos("id") < pos("service") && pos("service") < pos("namespace") && pos("namespace") < pos("version"),
        "{json}"
    );
    assert!(pos("phase") < pos("canaryWeight") && pos("canaryWeight") < pos("createdAt"), "not alphabetical: {json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["id"], id.as_str());
    let out = vane(&d, &["rollout", "get", &id, "-o", "yaml"]);
    let y = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(y.starts_with(&format!("id: {id}\n")) && y.contains("phase: Aborted"), "{y}");
    let out = vane(&d, &["rollout", "list", "-o", "name"]);
    let names = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(names.lines().count(), 3, "{names}");
    assert!(names.lines().all(|l| l.len() == 26), "{names}");
    let out = vane(&d, &["rollout", "events", &id, "-o", "json"]);
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(ev["items"].as_array().is_some_and(|i| !i.is_empty()), "{ev}");

    // Tables fit any name: every row's columns start where the header's do.
    for args in [vec!["rollout", "list"], vec!["rollout", "list", "-o", "wide"]] {
        let out = vane(&d, &args);
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        let header = t.lines().next().unwrap();
        let col = |l: &str, name: &str| l.find(name).unwrap();
        let phase_at = col(header, "PHASE");
        let msg_at = col(header, "MESSAGE");
        for row in t.lines().skip(1) {
            let phase = ["Aborted", "Succeeded", "AwaitingApproval", "Progressing"].iter().find_map(|p| row.find(p));
            assert_eq!(phase, Some(phase_at), "{args:?}:\n{t}");
            assert!(row.len() > msg_at && &row[msg_at - 2..msg_at] == "  ", "{args:?}:\n{t}");
        }
        assert!(t.contains(&svc), "{t}");
        if args.contains(&"wide") {
            assert!(header.contains("STRATEGY") && t.contains("gated"), "{t}");
        }
    }
}

#[test]
fn completions_and_config_show() {
    for (shell, marker) in [("bash", "_vane()"), ("zsh", "#compdef vane"), ("fish", "complete -c vane")] {
        let out = Command::new(env!("CARGO_BIN_EXE_vane")).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.contains(marker) && s.contains("rollout"), "{shell}: {s}");
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vane.toml");
    std::fs::write(&f, "[server]\nlisten = \"127.0.0.1:9\"\ntokens = [{ name = \"dev\", token = \"0123456789abcdef-secret\", role = \"viewer\" }]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vane"))
        .args(["config", "show", "--config", f.to_str().unwrap()])
        .env("VANE_PROMETHEUS_BASIC_AUTH_USER", "1234")
        .output()
        .unwrap();
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(!s.contains("0123456789abcdef-secret"), "{s}");
    assert!(s.contains(&format!("# {}:2", f.display())), "{s}");
    assert!(
        s.lines().any(
            |l| l.starts_with("basic_auth_user = \"1234\"") && l.ends_with("# env VANE_PROMETHEUS_BASIC_AUTH_USER")
        ),
        "{s}"
    );
    assert!(s.lines().any(|l| l.starts_with("path = \"./vane-data\"") && l.ends_with("# default")), "{s}");
    std::fs::write(&f, "[server]\nlisten = \"127.0.0.1:9\"\n\n[store]\npath = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vane"))
        .args(["config", "show", "--config", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).starts_with(&format!("vane: {}:5:8: ", f.display())), "{}", text(&out));
}

/// `vane policy check` on each tests/golden/policy/*.yaml prints exactly its `.out` (run with
/// UPDATE_GOLDEN=1 to rewrite them after a deliberate change, then review the diff).
#[test]
fn policy_check_golden_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = Path::new("tests/golden/policy");
    let mut cases: Vec<_> = std::fs::read_dir(root.join(dir))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "{cases:?}");
    for case in cases {
        let rel = dir.join(case.file_name().unwrap());
        let out = Command::new(env!("CARGO_BIN_EXE_vane"))
            .current_dir(root)
            .args(["policy", "check"])
            .arg(&rel)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(out.stdout.is_empty(), "{}", text(&out));
        let got = String::from_utf8_lossy(&out.stderr).to_string();
        let golden = case.with_extension("out");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        let want =
            std::fs::read_to_string(&golden).unwrap_or_else(|_| panic!("{} missing; got:\n{got}", golden.display()));
        assert_eq!(got, want, "{}", rel.display());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vane")).args(["policy", "check", "/nope/policy.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "/nope/policy.yaml: no such file\n");
}
