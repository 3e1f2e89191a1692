//! `zone-egress drain` against a real node process: the Kubernetes `preStop` sequence.
//!
//! Each test starts the `zone-egress` binary on ephemeral loopback ports (`127.0.0.1:0`), learns
//! its admin address from `<data_dir>/node.json` (as the cluster-tests harness does), and waits
//! by polling with a deadline, never by sleeping. The sequence checked: `drain --wait` exits 0
//! once `/ready` says drained, the node then stays up (503, drained) until SIGTERM, and exits 0
//! at once after it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_zone-egress");

/// A node process with its directory; killed on drop if still running.
struct NodeProcess {
    child: Child,
    dir: tempfile::TempDir,
    admin_url: String,
}

impl NodeProcess {
    /// Starts `zone-egress run` alone in zone `z` with `config` as its config file.
    fn start(config: &str) -> NodeProcess {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("node.yaml");
        std::fs::write(&config_path, config).unwrap();
        let data_dir = dir.path().join("data");
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(["--name", "n1", "--zone", "z"])
            .args(["--admin", "127.0.0.1:0", "--gossip", "127.0.0.1:0"])
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start zone-egress");
        let info_path = data_dir.join("node.json");
        let admin = eventually(Duration::from_secs(20), "node.json", || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("node exited with {status}: {}", read_log(dir.path()));
            }
            let text = std::fs::read_to_string(&info_path).ok()?;
            let info: Value = serde_json::from_str(&text).ok()?;
            (info["pid"].as_u64() == Some(u64::from(child.id())))
                .then(|| info["admin"].as_str().map(str::to_string))
                .flatten()
        });
        NodeProcess {
            child,
            dir,
            admin_url: format!("http://{admin}"),
        }
    }

    fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// `GET /ready`: status and JSON body.
    fn ready(&self) -> Result<(u16, Value), String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut resp = agent
            .get(format!("{}/ready", self.admin_url))
            .call()
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        Ok((status, value))
    }

    fn wait_ready(&self) {
        eventually(Duration::from_secs(20), "/ready to answer 200", || {
            matches!(self.ready(), Ok((200, _))).then_some(())
        });
    }

    /// Sends SIGTERM (with the `kill` command: the crate has no signal dependency).
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let child = &mut self.child;
        eventually(deadline, "the node to exit", || child.try_wait().unwrap())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
}

/// Polls `check` until it returns `Some` or the deadline passes (then panics naming `what`).
fn eventually<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50)); // poll interval, not synchronisation
    }
}

/// Runs the CLI with `args` and no `ZONE_EGRESS_*` from the test's own environment.
fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("ZONE_EGRESS_ADMIN")
        .env_remove("ZONE_EGRESS_TOKEN")
        .env_remove("ZONE_EGRESS_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run zone-egress")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn drain_wait_then_sigterm_leaves_and_exits_zero() {
    let mut node = NodeProcess::start("drain: { announce_delay: 1s, grace: 2s }\n");
    node.wait_ready();

    let out = cli(&[
        "drain",
        "--wait",
        "--timeout",
        "20s",
        "--admin",
        &node.admin_url,
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "drain --wait failed: {}\n{stdout}\n{}\n{}",
        out.status,
        text(&out.stderr),
        node.log()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("draining: n1 "), "{stdout}");
    assert!(lines[1].starts_with("drained: n1 "), "{stdout}");

    // Drained: not ready, and still up until a signal.
    let (status, ready) = node.ready().unwrap();
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false, "{ready}");
    assert_eq!(ready["draining"], true, "{ready}");
    assert_eq!(ready["drained"], true, "{ready}");
    assert!(node.child.try_wait().unwrap().is_none(), "{}", node.log());

    // A second drain is harmless.
    let again = cli(&["drain", "--wait", "--admin", &node.admin_url]);
    assert!(again.status.success(), "{}", text(&again.stderr));

    // The kubelet's SIGTERM: the node leaves and exits 0, without draining again.
    node.terminate();
    let status = node.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status}: {}", node.log());
    let log = node.log();
    assert!(log.contains("left the zone"), "{log}");
    assert_eq!(
        log.matches("draining: announcing to the zone").count(),
        1,
        "{log}"
    );
}

#[test]
fn drain_without_the_token_fails_and_names_it() {
    let mut node = NodeProcess::start("admin: { token: s3cret }\n");
    node.wait_ready();

    let out = cli(&[
        "drain",
        "--wait",
        "--timeout",
        "10s",
        "--admin",
        &node.admin_url,
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("--token"), "{stderr}");
    // Refused: the node is still ready.
    assert_eq!(node.ready().unwrap().0, 200);

    // A wrong token is refused the same way.
    let out = cli(&["drain", "--token", "nope", "--admin", &node.admin_url]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("token"), "{}", text(&out.stderr));
    assert_eq!(node.ready().unwrap().0, 200);

    // The token from a file (a mounted Secret), through the environment as in the manifests.
    let token_file: PathBuf = node.dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let out = Command::new(BIN)
        .args(["drain", "--wait", "--timeout", "20s"])
        .env("ZONE_EGRESS_ADMIN", &node.admin_url)
        .env("ZONE_EGRESS_TOKEN_FILE", &token_file)
        .env_remove("ZONE_EGRESS_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        node.log()
    );
    let (status, ready) = node.ready().unwrap();
    assert_eq!((status, &ready["drained"]), (503, &Value::Bool(true)));

    node.terminate();
    let status = node.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status}: {}", node.log());
}

/// Maintenance over: `undrain` after a drain by request makes the node accept and be ready
/// again (the listener bound again on its address); refused while not draining, and after a
/// SIGTERM started the drain the node leaves anyway.
#[test]
fn undrain_after_a_drain_serves_again() {
    let mut node = NodeProcess::start("drain: { announce_delay: 1s, grace: 1s }\n");
    node.wait_ready();
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(node.dir.path().join("data/node.json")).unwrap(),
    )
    .unwrap();
    let listen = info["listen"].as_str().unwrap().to_string();

    // Not draining: refused, exit 1, and the node stays as it was.
    let out = cli(&["undrain", "--admin", &node.admin_url]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("not draining"),
        "{}",
        text(&out.stderr)
    );

    let out = cli(&[
        "drain",
        "--wait",
        "--timeout",
        "20s",
        "--admin",
        &node.admin_url,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::net::TcpStream::connect(&listen).is_err(),
        "a drained node still accepts on {listen}"
    );

    let out = cli(&[
        "undrain",
        "--wait",
        "--timeout",
        "20s",
        "--admin",
        &node.admin_url,
    ]);
    assert!(
        out.status.success(),
        "undrain --wait: {}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        node.log()
    );
    assert!(
        text(&out.stdout).starts_with("undrained: n1 "),
        "{}",
        text(&out.stdout)
    );
    let (status, ready) = node.ready().unwrap();
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        (ready["draining"].as_bool(), ready["drained"].as_bool()),
        (Some(false), Some(false))
    );
    assert!(
        std::net::TcpStream::connect(&listen).is_ok(),
        "not accepting on {listen}"
    );

    // A second maintenance works the same; then SIGTERM still leaves and exits 0.
    let out = cli(&[
        "drain",
        "--wait",
        "--timeout",
        "20s",
        "--admin",
        &node.admin_url,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    node.terminate();
    let status = node.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status}: {}", node.log());
    assert!(
        node.log().contains("undrained: accepting again"),
        "{}",
        node.log()
    );
}
