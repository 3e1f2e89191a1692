//! What a stock Kuma sidecar sends, sent by a client that is not ours: HAProxy (Debian's) in
//! front of the egress, configured like Kuma's outbound to the egress (`server … ssl sni
//! str(<SNI>) crt <mesh identity> ca-file <mesh CA> verify required`), with plain HTTP from
//! curl or a raw socket behind it. Behind the egress: nginx with virtual hosts, where only the
//! external service's own host name answers 200 (so a missing `Host` rewrite shows as 404).
//!
//! Kuma v2.14's egress (`pkg/xds/generator/egress/testdata/01.externalservice-only.golden.yaml`)
//! terminates the tag form `name{mesh=m}`, and for `kuma.io/protocol: http` runs an HTTP
//! connection manager with `autoHostRewrite: true`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::bail;
use cluster_tests::upstream::{Haproxy, Nginx, free_port, run, sha256};
use cluster_tests::{
    Cluster, TEST_CONFIG, eventually, get_json, hashed_sni, metrics_text, pki, request,
};

const CONVERGE: Duration = Duration::from_secs(30);

/// One egress fleet, its mesh CA, a sidecar identity, nginx with virtual hosts behind it, and
/// HAProxy "sidecars" in front, one frontend per (SNI, ALPN).
struct Setup {
    cluster: Cluster,
    _nginx: Nginx,
    _haproxy: Haproxy,
    _echo: Option<Child>,
    _grpc: Option<Child>,
    /// The plain port of each HAProxy frontend, by name.
    frontends: Vec<(String, u16)>,
    nginx_root: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for child in [self._echo.take(), self._grpc.take()].into_iter().flatten() {
            let mut c = child;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Setup {
    fn port(&self, frontend: &str) -> u16 {
        self.frontends
            .iter()
            .find(|(n, _)| n == frontend)
            .map(|(_, p)| *p)
            .unwrap()
    }
}

fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn setup() -> Setup {
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..2 {
        let mut options = cluster.next_options();
        // A short ClientHello limit: a keep-alive connection must outlive it.
        options.config = format!("{TEST_CONFIG}limits: {{ hello_timeout: 1s }}\n");
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    let dir = cluster.root().to_path_buf();
    let p = |s: &str| dir.join(s).to_str().unwrap().to_string();
    pki::init_ca(&dir, "mesh-ca", "mesh-default").unwrap();
    pki::init_ca(&dir, "upstream-ca", "upstream").unwrap();
    pki::issue(
        &dir,
        "mesh-ca",
        "spiffe://default/demo-client",
        &[],
        "sidecar",
    )
    .unwrap();
    pki::issue(
        &dir,
        "upstream-ca",
        "spiffe://upstream/nginx",
        &["localhost"],
        "nginx",
    )
    .unwrap();
    // HAProxy reads the certificate and key from one file.
    pki::combined_pem(&dir, "sidecar").unwrap();

    // nginx: on each port a default server answering 404 and the virtual host `localhost`.
    let (http, h2) = (free_port().unwrap(), free_port().unwrap());
    let root = dir.join("nginx/www");
    let echo = "return 200 \"host=$host proto=$server_protocol xff=[$http_x_forwarded_for] \
                conn=[$http_connection] hop=[$http_x_hop] kept=[$http_x_kept]\\n\"";
    let tls = format!(
        "ssl_certificate {}; ssl_certificate_key {};",
        p("nginx/cert.pem"),
        p("nginx/key.pem")
    );
    let servers = format!(
        "server {{ listen 127.0.0.1:{http} default_server; location / {{ return 404 \"wrong virtual host $host\\n\"; }} }}\n\
         server {{ listen 127.0.0.1:{http}; server_name localhost; root {root}; client_max_body_size 0; \
           location = /echo {{ {echo}; }} \
           location /up/ {{ dav_methods PUT; create_full_put_path on; }} }}\n\
         server {{ listen 127.0.0.1:{h2} ssl http2 default_server; {tls} location / {{ return 404 \"wrong virtual host $host\\n\"; }} }}\n\
         server {{ listen 127.0.0.1:{h2} ssl http2; server_name localhost; {tls} location = /echo {{ {echo}; }} }}\n",
        root = root.display(),
    );
    let nginx = Nginx::start_servers(&dir.join("nginx"), &servers, &[http, h2]).unwrap();

    // An upstream that accepts an HTTP/1.1 upgrade and then echoes.
    let port_file = dir.join("echo.port");
    let echo_child = Command::new("python3")
        .arg(script("upgrade_echo.py"))
        .arg(&port_file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let echo_port: u16 = eventually(Duration::from_secs(10), "the upgrade upstream", || {
        Ok(std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok()))
    })
    .unwrap();
    // A real gRPC server (grpcio), plaintext HTTP/2.
    let grpc_file = dir.join("grpc.port");
    let grpc_child = Command::new("python3")
        .arg(script("grpc_echo.py"))
        .arg("serve")
        .arg(&grpc_file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let grpc_port: u16 = eventually(
        Duration::from_secs(20),
        "the gRPC upstream (python3 -m pip install grpcio; .ci/run does)",
        || {
            Ok(std::fs::read_to_string(&grpc_file)
                .ok()
                .and_then(|s| s.trim().parse().ok()))
        },
    )
    .unwrap();
    let closed = free_port().unwrap();

    let upstream_ca = p("upstream-ca/ca.pem");
    let yaml = format!(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: provided\n      conf: {{ cert: {{ file: {ca} }}, key: {{ file: {key} }} }}\nrouting: {{ zoneEgress: true }}\n---\n{allow}---\n\
         type: ExternalService\nmesh: default\nname: echo\ntags: {{ kuma.io/service: echo, kuma.io/protocol: http }}\nnetworking: {{ address: 'localhost:{http}' }}\n---\n\
         type: ExternalService\nmesh: default\nname: echo2\ntags: {{ kuma.io/service: echo2, kuma.io/protocol: http2 }}\nnetworking: {{ address: 'localhost:{h2}', tls: {{ enabled: true, caCert: {{ file: {upstream_ca} }} }} }}\n---\n\
         type: ExternalService\nmesh: default\nname: ws\ntags: {{ kuma.io/service: ws, kuma.io/protocol: http }}\nnetworking: {{ address: '127.0.0.1:{echo_port}' }}\n---\n\
         type: ExternalService\nmesh: default\nname: echo-grpc\ntags: {{ kuma.io/service: echo-grpc, kuma.io/protocol: grpc }}\nnetworking: {{ address: '127.0.0.1:{grpc_port}' }}\n---\n\
         type: ExternalService\nmesh: default\nname: down\ntags: {{ kuma.io/service: down, kuma.io/protocol: http }}\nnetworking: {{ address: '127.0.0.1:{closed}' }}\n",
        allow = cluster_tests::ALLOW_ALL,
        ca = p("mesh-ca/ca.pem"),
        key = p("mesh-ca/ca.key"),
    );
    let (status, body) = request(
        "POST",
        &format!("{}/v1/apply", cluster.admin(0)),
        Some(("application/yaml", yaml.as_bytes())),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let hashed = hashed_sni("echo", http, "mes").unwrap();
    for sni in ["echo%7Bmesh%3Ddefault%7D", hashed.as_str()] {
        eventually(CONVERGE, "the services routable on every node", || {
            for i in cluster.running() {
                let (_, v) = get_json(&cluster.admin(i), &format!("/v1/inspect/route?sni={sni}"))?;
                if v["action"] != "terminate-external" {
                    bail!("node {i}: {v}");
                }
            }
            Ok(Some(()))
        })
        .unwrap();
    }

    // The sidecars: each frontend takes plain bytes and sends them in mTLS with its SNI.
    let egress = cluster.nodes[1].info.listen.clone().unwrap();
    // HAProxy checks the server certificate's host name against the SNI it sends, and the tag
    // form is no host name (Envoy, Kuma's sidecar, checks the egress's SAN with a matcher
    // instead): the tag-form frontends verify nothing, the hashed one the chain and the name.
    // `the_tag_form_is_terminated_with_the_mesh_identity` checks the tag form's chain.
    let unverified = "verify none";
    let verified = "verify required verifyhost localhost";
    let frontends: Vec<(&str, String, &str, &str)> = vec![
        // ALPN `kuma`: what a Kuma sidecar offers the egress (`KumaALPNProtocols`,
        // `pkg/xds/envoy/tls/tls.go`); the egress negotiates none, as Kuma's egress.
        ("tag", "echo{mesh=default}".into(), "alpn kuma", unverified),
        ("hashed", hashed.clone(), "", verified),
        ("h2", "echo2{mesh=default}".into(), "alpn h2", unverified),
        ("ws", "ws{mesh=default}".into(), "", unverified),
        ("down", "down{mesh=default}".into(), "", unverified),
        (
            "grpc",
            "echo-grpc{mesh=default}".into(),
            "alpn h2",
            unverified,
        ),
        (
            "h1only",
            "echo{mesh=default}".into(),
            "alpn http/1.1",
            unverified,
        ),
    ];
    let mut config = String::from(
        "global\n  maxconn 2000\n  log stderr format raw local0 info\ndefaults\n  log global\n  option tcplog\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n",
    );
    let mut ports = Vec::new();
    for (name, sni, alpn, verify) in &frontends {
        let port = free_port().unwrap();
        config.push_str(&format!(
            "frontend {name}\n  bind 127.0.0.1:{port}\n  default_backend {name}\n\
             backend {name}\n  server egress {egress} ssl sni str({sni}) {alpn} crt {crt} ca-file {ca} {verify}\n",
            crt = p("sidecar.pem"),
            ca = p("mesh-ca/ca.pem"),
        ));
        ports.push((name.to_string(), port));
    }
    let port_list: Vec<u16> = ports.iter().map(|(_, p)| *p).collect();
    let haproxy = Haproxy::start(&dir.join("haproxy"), &config, &port_list).unwrap();
    Setup {
        cluster,
        _nginx: nginx,
        _haproxy: haproxy,
        _echo: Some(echo_child),
        _grpc: Some(grpc_child),
        frontends: ports,
        nginx_root: root,
    }
}

/// curl against a sidecar frontend; (exit code, body, stderr).
fn curl(port: u16, args: &[&str]) -> (Option<i32>, String, String) {
    let (code, out, err) = run(Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}/echo")))
    .unwrap();
    (code, String::from_utf8_lossy(&out).to_string(), err)
}

/// Sends `bytes` on a raw connection to a sidecar frontend and returns what comes back until
/// the egress closes or 10 s pass.
fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

/// How many answers (status lines) came back.
fn status_lines(got: &str) -> usize {
    got.split("\r\n")
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .count()
}

#[test]
fn a_kuma_sidecar_reaches_an_http_external_service_by_either_sni_with_the_host_rewritten() {
    let s = setup();
    for frontend in ["tag", "hashed"] {
        let (code, body, err) = curl(
            s.port(frontend),
            &[
                "-H",
                "Host: echo.mesh",
                "-H",
                "Connection: keep-alive, x-hop",
                "-H",
                "x-hop: 1",
                "-H",
                "x-kept: 1",
                "--fail",
            ],
        );
        assert_eq!(
            code,
            Some(0),
            "{frontend}: {err} {body}\nhaproxy: {}\nnode: {}",
            s._haproxy.log(),
            s.cluster.nodes[1].log()
        );
        // The virtual host matched: the Host was rewritten to the service's host; nothing
        // invented (x-forwarded-for), hop-by-hop headers gone, others kept.
        assert_eq!(
            body.trim(),
            "host=localhost proto=HTTP/1.1 xff=[] conn=[] hop=[] kept=[1]",
            "{frontend}"
        );
    }
    // Keep-alive: many requests on one client connection.
    let (code, out, err) = run(Command::new("curl")
        .args(["-sS", "--fail", "-H", "Host: echo.mesh"])
        .args(
            (0..20)
                .map(|_| format!("http://127.0.0.1:{}/echo", s.port("tag")))
                .collect::<Vec<_>>(),
        ))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out)
            .matches("host=localhost")
            .count(),
        20
    );
}

/// The tag form gets the egress's certificate of the mesh (chain to the mesh CA, the service's
/// host among its names) and the client's certificate is required.
#[test]
fn the_tag_form_is_terminated_with_the_mesh_identity() {
    let s = setup();
    let d = s.cluster.root();
    let listen = s.cluster.nodes[1].info.listen.clone().unwrap();
    let s_client = |with_identity: bool| {
        let mut cmd = Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &listen,
            "-servername",
            "echo{mesh=default}",
        ])
        .args([
            "-verify_hostname",
            "localhost",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(d.join("mesh-ca/ca.pem"));
        if with_identity {
            cmd.arg("-cert")
                .arg(d.join("sidecar/cert.pem"))
                .arg("-key")
                .arg(d.join("sidecar/key.pem"));
        }
        let (_, out, err) = run(cmd.stdin(Stdio::null())).unwrap();
        format!("{}{err}", String::from_utf8_lossy(&out))
    };
    let out = s_client(true);
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("Verified peername: localhost"), "{out}");
    // Without a client certificate the egress refuses the handshake (TLS 1.3: after the
    // client's Finished) and counts it.
    let handshake_refusals = || {
        metrics_text(&s.cluster.admin(1))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("zone_egress_connections_rejected_total{reason=\"handshake\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = handshake_refusals();
    s_client(false);
    eventually(Duration::from_secs(10), "the refusal counted", || {
        Ok((handshake_refusals() > before).then_some(()))
    })
    .unwrap();
}

/// A keep-alive connection waits for its next request as long as `limits.idle_timeout`, not the
/// ClientHello's limit (1 s here): hyper's head timer also runs between requests.
#[test]
fn a_keep_alive_connection_outlives_the_hello_timeout() {
    let s = setup();
    let url = format!("http://127.0.0.1:{}/echo", s.port("tag"));
    // 20 per minute: the second request 3 s after the first, on the same connection.
    let (code, out, err) = run(Command::new("curl")
        .args(["-sS", "--fail", "--rate", "20/m", "-H", "Host: echo.mesh"])
        .args([
            "-w",
            "connects=%{num_connects}\n",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .args([&url, &url]))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        "connects=1\nconnects=0",
        "the second request reused the connection"
    );
}

/// ALPN binds the connection to the negotiated version (RFC 7301): after `http/1.1` was agreed,
/// an HTTP/2 preface is not HTTP/2.
#[test]
fn the_negotiated_alpn_binds_the_http_version() {
    let s = setup();
    let port = s.port("h1only");
    let (code, body, err) = curl(port, &["-H", "Host: echo.mesh", "--fail"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(body.contains("proto=HTTP/1.1"), "{body}");
    let (code, body, _) = curl(
        port,
        &["--http2-prior-knowledge", "-H", "Host: echo.mesh", "--fail"],
    );
    assert_ne!(code, Some(0), "HTTP/2 spoken over an http/1.1 ALPN: {body}");
}

#[test]
fn http2_reaches_an_h2_external_service_and_tls_is_originated() {
    let s = setup();
    let (code, body, err) = curl(
        s.port("h2"),
        &[
            "--http2-prior-knowledge",
            "-H",
            "Host: echo2.mesh",
            "--fail",
            "-w",
            "version=%{http_version}\n",
        ],
    );
    assert_eq!(code, Some(0), "{err} {body}");
    assert!(
        body.contains("host=localhost proto=HTTP/2.0"),
        "upstream spoke h2 with the rewritten authority: {body}"
    );
    assert!(
        body.contains("version=2"),
        "the sidecar side spoke h2: {body}"
    );
}

/// A real gRPC client and server (grpcio): HTTP/2 both ways, a 1 MiB message echoed, trailing
/// metadata and a failure status (carried in trailers) reaching the client.
#[test]
fn grpc_calls_and_their_status_pass_through() {
    let s = setup();
    let (code, out, err) = run(Command::new("python3")
        .arg(script("grpc_echo.py"))
        .arg("call")
        .arg(s.port("grpc").to_string()))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(String::from_utf8_lossy(&out).trim(), "ok");
    // Proxied as HTTP (two requests answered 200, gRPC's status travels in trailers), not spliced.
    let m = metrics_text(&s.cluster.admin(1)).unwrap();
    let line = m
        .lines()
        .find(|l| l.starts_with("zone_egress_http_requests_total{") && l.contains("echo-grpc"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("code=\"200\"") && line.ends_with(" 2"),
        "{line}\n{m}"
    );
}

#[test]
fn a_64_mib_body_goes_both_ways_intact() {
    let s = setup();
    let src = s.cluster.root().join("up.bin");
    let (code, _, err) = run(Command::new("head")
        .args(["-c", "67108864", "/dev/urandom"])
        .stdout(std::fs::File::create(&src).unwrap()))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let port = s.port("tag");
    let (code, out, err) = run(Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "120",
            "-H",
            "Host: echo.mesh",
            "-T",
        ])
        .arg(&src)
        .arg(format!("http://127.0.0.1:{port}/up/big.bin")))
    .unwrap();
    assert_eq!(code, Some(0), "{err} {}", String::from_utf8_lossy(&out));
    assert_eq!(
        sha256(&s.nginx_root.join("up/big.bin")).unwrap(),
        sha256(&src).unwrap(),
        "upload"
    );
    let back = s.cluster.root().join("down.bin");
    let (code, _, err) = run(Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "120",
            "-H",
            "Host: echo.mesh",
            "-o",
        ])
        .arg(&back)
        .arg(format!("http://127.0.0.1:{port}/up/big.bin")))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(sha256(&back).unwrap(), sha256(&src).unwrap(), "download");
}

#[test]
fn an_upgrade_becomes_a_byte_stream() {
    let s = setup();
    let mut c = TcpStream::connect(("127.0.0.1", s.port("ws"))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.mesh\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            c.read(&mut byte).unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // An IP-address service keeps the Host the client sent.
    assert!(
        head.to_ascii_lowercase().contains("x-seen-host: ws.mesh"),
        "{head}"
    );
    for msg in [&b"ping\n"[..], &[7u8; 100_000][..]] {
        c.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }
}

#[test]
fn bad_requests_are_refused_and_the_node_stays_ready() {
    let s = setup();
    let port = s.port("tag");
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("malformed request line", b"GARBAGE\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (
            "header block over the limit",
            [
                &b"GET /echo HTTP/1.1\r\nHost: echo.mesh\r\nX-Big: "[..],
                &vec![b'a'; 70_000],
                b"\r\n\r\n",
            ]
            .concat(),
            "HTTP/1.1 431",
        ),
        (
            "two different Content-Length",
            b"POST /echo HTTP/1.1\r\nHost: echo.mesh\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".to_vec(),
            "HTTP/1.1 400",
        ),
    ];
    for (case, bytes, want) in cases {
        let got = raw(port, &bytes);
        assert!(got.starts_with(want), "{case}: {got:?}");
        // Refused means nothing reached the upstream: no second answer on that connection.
        assert_eq!(status_lines(&got), 1, "{case}: {got:?}");
    }
    // A smuggling attempt: Content-Length and Transfer-Encoding, and a second request hidden in
    // the body by the Content-Length reading. hyper applies RFC 9112 §6.3 (3): the chunked
    // framing wins, Content-Length is dropped before forwarding, and the connection closes
    // after the answer, so the hidden request is never seen as one.
    let got = raw(
        port,
        b"POST /echo HTTP/1.1\r\nHost: echo.mesh\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: echo.mesh\r\n\r\n",
    );
    assert_eq!(status_lines(&got), 1, "{got:?}");
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got:?}"
    );
    // CONNECT is not tunnelled; a transfer coding hyper does not undo is refused; a broken
    // chunked body is the client's fault (400), not the upstream's (502).
    for (case, bytes, want) in [
        (
            "CONNECT",
            &b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: close\r\n\r\n"[..],
            "HTTP/1.1 403",
        ),
        (
            "gzip, chunked",
            b"POST /echo HTTP/1.1\r\nHost: echo.mesh\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 501",
        ),
        (
            "broken chunk size",
            b"POST /echo HTTP/1.1\r\nHost: echo.mesh\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
    ] {
        let got = raw(port, bytes);
        assert!(got.starts_with(want), "{case}: {got:?}");
        assert!(got.contains("zone-egress: "), "{case}: the egress answered: {got:?}");
    }
    let m = metrics_text(&s.cluster.admin(1)).unwrap();
    assert!(
        !m.lines()
            .any(|l| l.starts_with("zone_egress_http_requests_total")
                && l.contains("service=\"echo\"")
                && l.contains("code=\"502\"")),
        "a client's fault counted as an upstream failure:\n{m}"
    );
    // An upstream that refuses connections: 503 from the egress, saying why.
    let (code, body, err) = curl(
        s.port("down"),
        &["-H", "Host: down.mesh", "-w", "%{http_code}"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(body.starts_with("zone-egress: connect:"), "{body}");
    assert!(body.ends_with("503"), "{body}");
    // The node is still ready and still serves.
    let (status, v) = get_json(&s.cluster.admin(1), "/ready").unwrap();
    assert_eq!(status, 200, "{v}");
    let (code, body, err) = curl(port, &["-H", "Host: echo.mesh", "--fail"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(body.starts_with("host=localhost"), "{body}");
}
