//! The status page (`GET /`) in a real headless Chromium, driven by Selenium
//! (`scripts/status_page.py`): a 3-node fleet with a read token and traffic through an external
//! service; the page shows every member ready and a non-zero connection figure, and, without a
//! reload, a killed member turns `dead` within the detection bound. Screenshots are saved in
//! `target/test-artifacts/status-page/`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster_tests::upstream::{Nginx, run};
use cluster_tests::{ALLOW_ALL, Cluster, TEST_CONFIG, hashed_sni, pki, request};

const CONVERGE: Duration = Duration::from_secs(30);
const TOKEN: &str = "status-admin-token-0123456789";
const READ: &str = "status-read-token-0123456789";
/// Failure detection (README: a killed node is dead everywhere within 10 s) plus two page
/// refreshes (2 s each).
const DEAD_ON_PAGE: Duration = Duration::from_secs(14);

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/status-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_status_page_shows_the_fleet_and_a_dead_member_in_chromium() {
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..3 {
        let mut options = cluster.next_options();
        options.config = format!("{TEST_CONFIG}admin: {{ token: {TOKEN}, read_token: {READ} }}\n");
        cluster.add_node_with(options).unwrap();
    }
    let root = cluster.root().to_path_buf();
    let p = |s: &str| root.join(s).to_str().unwrap().to_string();
    pki::init_ca(&root, "ca", "default").unwrap();
    pki::issue(&root, "ca", "spiffe://default/web", &[], "client").unwrap();
    let nginx = Nginx::start(&root.join("nginx"), None).unwrap();
    std::fs::write(nginx.root.join("index.html"), "hello").unwrap();
    let yaml = format!(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      \
         type: provided\n      conf: {{ cert: {{ file: {ca} }}, key: {{ file: {key} }} }}\nrouting: \
         {{ zoneEgress: true }}\n---\n{ALLOW_ALL}---\ntype: ExternalService\nmesh: default\nname: \
         httpbin\ntags: {{ kuma.io/service: httpbin, kuma.io/protocol: tcp }}\nnetworking: {{ \
         address: 127.0.0.1:{port} }}\n",
        ca = p("ca/ca.pem"),
        key = p("ca/ca.key"),
        port = nginx.http_port
    );
    // wait_converged reads without a token; this fleet needs the read token.
    cluster_tests::eventually(CONVERGE, "every node to see three ready members", || {
        for i in 0..3 {
            let url = format!("{}/v1/members", cluster.admin(i));
            let (_, members) = request("GET", &url, None, Some(READ))?;
            let ready = members.as_array().into_iter().flatten();
            if ready
                .filter(|m| m["state"] == "alive" && m["ready"] == true)
                .count()
                != 3
            {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .unwrap();
    let url = format!("{}/v1/apply", cluster.admin(0));
    let (status, body) = request(
        "POST",
        &url,
        Some(("application/yaml", yaml.as_bytes())),
        Some(TOKEN),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // Traffic through node 0: a few good connections and one without a client certificate.
    let sni = hashed_sni("httpbin", nginx.http_port, "mes").unwrap();
    let listen = cluster.nodes[0].info.listen.clone().unwrap();
    let curl = |with_cert: bool| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail", "--max-time", "10", "-o", "/dev/null"])
            .arg(format!("https://{sni}/index.html"))
            .args(["--connect-to", &format!("{sni}:443:{listen}")])
            .args(["--cacert", &p("ca/ca.pem")]);
        if with_cert {
            cmd.args([
                "--cert",
                &p("client/cert.pem"),
                "--key",
                &p("client/key.pem"),
            ]);
        }
        run(&mut cmd).unwrap().0
    };
    cluster_tests::eventually(CONVERGE, "a connection through node 0", || {
        Ok((curl(true) == Some(0)).then_some(()))
    })
    .unwrap();
    for _ in 0..4 {
        assert_eq!(curl(true), Some(0));
    }
    assert_ne!(curl(false), Some(0));

    let names: Vec<String> = (0..3)
        .map(|i| cluster.nodes[i].options.name.clone())
        .collect();
    let victim = names[2].clone();
    let out = artifacts();
    let mut browser = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/status_page.py"))
        .arg(format!("{}/", cluster.admin(0)))
        .arg(&out)
        .arg(names.join(","))
        .arg(&victim)
        .arg("default/httpbin")
        .arg(READ)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with selenium (pip install selenium) and Debian's chromium-driver");
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut next = || lines.next().map(|l| l.unwrap()).unwrap_or_default();

    let seen = next();
    assert!(
        seen.starts_with("SEEN "),
        "the page never showed the fleet: {seen}\n{}",
        rest(&mut next)
    );
    let connections: u64 = seen["SEEN ".len()..].parse().unwrap();
    assert!(connections >= 5, "{seen}");
    eprintln!("the page shows 3 members ready and {connections} connections to httpbin");

    cluster.kill(2).unwrap();
    let killed = Instant::now();
    writeln!(browser.stdin.as_mut().unwrap(), "KILLED").unwrap();
    let dead = next();
    assert!(
        dead.starts_with("DEAD "),
        "the page never showed {victim} dead: {dead}\n{}",
        rest(&mut next)
    );
    let shown = killed.elapsed();
    eprintln!("{victim} shown dead on the page {shown:?} after the kill ({dead})");
    assert!(shown < DEAD_ON_PAGE, "took {shown:?}");
    assert!(browser.wait().unwrap().success());
    for png in ["status-healthy.png", "status-dead.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png} is not a PNG");
    }
    eprintln!("screenshots in {}", out.display());
}

fn rest(next: &mut impl FnMut() -> String) -> String {
    let mut out = String::new();
    for _ in 0..200 {
        let line = next();
        if line.is_empty() {
            break;
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
