//! Terminated-path benchmark: one egress node (the `zone-egress` binary of `$ZONE_EGRESS_BIN`),
//! HAProxy (`--haproxy`, `nbthread 2`, mTLS termination in TCP mode) or nginx (`--nginx`,
//! `worker_processes 2`: mTLS termination in its `stream` module, and with `--http` an mTLS
//! `http` server that `proxy_pass`es to keep-alive upstreams) in front of the same nginx origin,
//! driven by the same mTLS load client (rustls, full handshake per new connection, hashed SNI so that the
//! rustls-based egress of earlier versions can be measured too).
//!
//! ```text
//! scripts/bench-tls.sh      # builds, runs every target and prints one table
//! ZONE_EGRESS_BIN=target/release/zone-egress cargo run --release -p cluster-tests --bin bench-tls -- --label openssl
//! ```
//!
//! Figures (each printed as one `key=value` line per target):
//! - `new_conns_per_s`, `new_conn_p99_ms`: 32 workers for `--seconds`, each connecting,
//!   handshaking (client certificate), sending one `GET /1k` with `Connection: close` and reading
//!   the answer to its end;
//! - `keepalive_rps`, `keepalive_p99_ms`: 32 connections sending `GET /1k` back to back;
//! - `bulk_mb_per_s`, `bulk_cpu_s_per_gb`: one connection downloading 64 MiB (best of 3), and
//!   the proxy's CPU seconds per GB moved; `bulk8_…`: the same with 8 connections at once;
//! - `idle_kib_per_conn`: RSS growth of the proxy process (and children) per connection for `--idle` idle
//!   handshaken connections (each also has its upstream connection open);
//! - `http_pool_rps`, `http_pool_upstreams` (egress only, `--http`): 64 client connections to an
//!   `kuma.io/protocol: http` service (pooled upstream) and the upstream connections nginx saw.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cluster_tests::upstream::{Nginx, free_port, run};
use cluster_tests::{
    Cluster, cpu_seconds, eventually, get_json, hashed_sni, pki, request, rss_kib,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
struct Args {
    /// Name of the target in the output.
    #[arg(long)]
    label: String,
    /// Measure HAProxy instead of the egress.
    #[arg(long)]
    haproxy: bool,
    /// Measure nginx instead of the egress.
    #[arg(long, conflicts_with = "haproxy")]
    nginx: bool,
    /// Also measure the HTTP path with its upstream pool (egress, nginx).
    #[arg(long)]
    http: bool,
    /// Seconds per rate measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Run only the flood figures: this many slow ClientHellos (0: no flood run).
    #[arg(long, default_value_t = 0)]
    flood_slow: usize,
    /// Handshake-flood workers of the flood run.
    #[arg(long, default_value_t = 16)]
    flood_attackers: usize,
    /// Idle connections held for the memory figure (the proxy holds two sockets for each: 9,000
    /// fits this machine's hard limit of 20,000 open files per process).
    #[arg(long, default_value_t = 9000)]
    idle: usize,
}

struct Target {
    addr: String,
    /// The proxy process; the memory figure adds its children's (nginx's workers).
    pid: u32,
    sni: String,
    http_sni: Option<String>,
    /// Where the HTTP path listens (the egress: `addr`).
    http_addr: String,
    _nginx: Nginx,
    nginx_port: u16,
    _cluster: Option<Cluster>,
    anchor: Option<Child>,
}

impl Drop for Target {
    fn drop(&mut self) {
        // A `Child` is not stopped when dropped: stop the anchor with the run. SIGTERM first,
        // so nginx's master takes its workers down with it.
        if let Some(child) = self.anchor.as_mut() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn setup(args: &Args, dir: &Path) -> anyhow::Result<(Target, Arc<rustls::ClientConfig>)> {
    let p = |s: &str| dir.join(s).to_str().unwrap().to_string();
    pki::init_ca(dir, "mesh-ca", "mesh-default")?;
    pki::issue(dir, "mesh-ca", "spiffe://default/load", &[], "client")?;
    let nginx = Nginx::start(&dir.join("nginx"), None)?;
    fs::write(nginx.root.join("1k"), vec![b'x'; 1024])?;
    fs::write(nginx.root.join("64m"), vec![b'y'; 64 << 20])?;
    let sni = hashed_sni("bench", nginx.http_port, "mes")?;
    let http_port = nginx.http_port;

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(p("mesh-ca/ca.pem"))? {
        roots.add(c?)?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(p("client/cert.pem"))?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(p("client/key.pem"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    // A new connection is a full handshake, as a sidecar's first connection is.
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);

    if args.haproxy {
        let identity = "spiffe://default/zone-egress";
        pki::issue(dir, "mesh-ca", identity, &[&sni], "haproxy-id")?;
        let crt = pki::combined_pem(dir, "haproxy-id")?;
        let port = free_port()?;
        let cfg = format!(
            "global\n  maxconn 9500\n  nbthread 2\n  tune.ssl.default-dh-param 2048\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n\
             frontend fe\n  bind 127.0.0.1:{port} ssl crt {crt} ca-file {ca} verify required\n  default_backend be\n\
             backend be\n  server nginx 127.0.0.1:{http_port}\n",
            crt = crt.display(),
            ca = p("mesh-ca/ca.pem"),
        );
        fs::write(p("haproxy.cfg"), cfg)?;
        let child = Command::new("haproxy")
            .args(["-db", "-f", &p("haproxy.cfg")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(p("haproxy.log"))?)
            .spawn()
            .context("haproxy")?;
        let pid = child.id();
        eventually(Duration::from_secs(10), "haproxy", || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ()))
        })?;
        return Ok((
            Target {
                addr: format!("127.0.0.1:{port}"),
                pid,
                sni,
                http_sni: None,
                http_addr: format!("127.0.0.1:{port}"),
                _nginx: nginx,
                nginx_port: http_port,
                _cluster: None,
                anchor: Some(child),
            },
            config,
        ));
    }
    if args.nginx {
        return nginx_target(args, dir, nginx, sni, config);
    }
    let mut cluster = Cluster::new()?;
    let mut options = cluster.next_options();
    options.config = "limits: { max_connections: 20000 }\n".to_string();
    options.env.push(("RUST_LOG".into(), "warn".into()));
    cluster.add_node_with(options)?;
    let admin = cluster.admin(0);
    let yaml = format!(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: provided\n      conf: {{ cert: {{ file: {} }}, key: {{ file: {} }} }}\nrouting: {{ zoneEgress: true }}\n---\n{allow}---\n\
         type: ExternalService\nmesh: default\nname: bench\ntags: {{ kuma.io/service: bench, kuma.io/protocol: tcp }}\nnetworking: {{ address: '127.0.0.1:{http_port}' }}\n{http}",
        p("mesh-ca/ca.pem"),
        p("mesh-ca/ca.key"),
        allow = cluster_tests::ALLOW_ALL,
        http = if args.http {
            format!(
                "---\ntype: ExternalService\nmesh: default\nname: bench-http\ntags: {{ kuma.io/service: bench-http, kuma.io/protocol: http }}\nnetworking: {{ address: 'localhost:{http_port}' }}\n"
            )
        } else {
            String::new()
        }
    );
    let (status, body) = request(
        "POST",
        &format!("{admin}/v1/apply"),
        Some(("application/yaml", yaml.as_bytes())),
        None,
    )?;
    if status != 200 {
        bail!("apply: {status} {body}");
    }
    eventually(Duration::from_secs(20), "routable", || {
        let (_, v) = get_json(&admin, &format!("/v1/inspect/route?sni={sni}"))?;
        Ok((v["action"] == "terminate-external").then_some(()))
    })?;
    let http_sni = if args.http {
        Some(hashed_sni("bench-http", http_port, "mes")?)
    } else {
        None
    };
    let addr = cluster.nodes[0].info.listen.clone().context("listen")?;
    let pid = cluster.nodes[0].info.pid;
    Ok((
        Target {
            addr: addr.clone(),
            pid,
            sni,
            http_sni,
            http_addr: addr.clone(),
            _nginx: nginx,
            nginx_port: http_port,
            _cluster: Some(cluster),
            anchor: None,
        },
        config,
    ))
}

/// nginx as the anchor: `stream` (TCP) mTLS termination to the origin, and an mTLS `http` server
/// proxying to the origin over keep-alive upstream connections (nginx's documented setup:
/// `keepalive`, `proxy_http_version 1.1`, an empty `Connection` header).
fn nginx_target(
    args: &Args,
    dir: &Path,
    origin: Nginx,
    sni: String,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<(Target, Arc<rustls::ClientConfig>)> {
    let p = |s: &str| dir.join(s).to_str().unwrap().to_string();
    pki::issue(
        dir,
        "mesh-ca",
        "spiffe://default/zone-egress",
        &[&sni],
        "nginx-id",
    )?;
    let (tcp_port, http_port) = (free_port()?, free_port()?);
    let origin_port = origin.http_port;
    let d = dir.join("anchor");
    fs::create_dir_all(d.join("logs"))?;
    let tls = format!(
        "ssl_certificate {crt}; ssl_certificate_key {key}; ssl_client_certificate {ca}; ssl_verify_client on;",
        crt = p("nginx-id/cert.pem"),
        key = p("nginx-id/key.pem"),
        ca = p("mesh-ca/ca.pem"),
    );
    let cfg = format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         daemon off; master_process on; worker_processes 2; user root; worker_rlimit_nofile 19000;\n\
         error_log {d}/logs/error.log; pid {d}/nginx.pid;\n\
         events {{ worker_connections 19000; }}\n\
         stream {{ server {{ listen 127.0.0.1:{tcp_port} ssl; {tls} proxy_pass 127.0.0.1:{origin_port}; }} }}\n\
         http {{ access_log off; \
         client_body_temp_path {d}/tmp-body; proxy_temp_path {d}/tmp-proxy; \
         fastcgi_temp_path {d}/tmp-fcgi; uwsgi_temp_path {d}/tmp-uwsgi; scgi_temp_path {d}/tmp-scgi; \
         upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }} \
         server {{ listen 127.0.0.1:{http_port} ssl; {tls} keepalive_requests 1000000; \
         location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
        d = d.display(),
    );
    fs::write(d.join("nginx.conf"), cfg)?;
    let child = Command::new("/usr/sbin/nginx")
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .arg("-p")
        .arg(&d)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(d.join("logs/stderr.log"))?)
        .spawn()
        .context("nginx (the stream module is Debian's libnginx-mod-stream)")?;
    let pid = child.id();
    eventually(Duration::from_secs(10), "nginx anchor", || {
        Ok(std::net::TcpStream::connect(("127.0.0.1", tcp_port))
            .ok()
            .map(|_| ()))
    })?;
    Ok((
        Target {
            addr: format!("127.0.0.1:{tcp_port}"),
            pid,
            http_sni: args.http.then(|| sni.clone()),
            sni,
            http_addr: format!("127.0.0.1:{http_port}"),
            _nginx: origin,
            nginx_port: origin_port,
            _cluster: None,
            anchor: Some(child),
        },
        config,
    ))
}

/// VmRSS of `pid` and its children (nginx's workers), in KiB.
fn rss_tree_kib(pid: u32) -> Option<u64> {
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut total = rss_kib(pid)?;
    for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        total += rss_kib(child).unwrap_or(0);
    }
    Some(total)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(addr: &str, sni: &str, config: &Arc<rustls::ClientConfig>) -> anyhow::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(sni.to_string())?;
    Ok(TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?)
}

/// Reads one HTTP/1.1 answer with a Content-Length body; returns the body length.
async fn read_answer(tls: &mut Tls, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
    buf.clear();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("no content-length")?;
            let have = buf.len() - end - 4;
            let mut left = len.saturating_sub(have);
            while left > 0 {
                let n = tls.read(&mut chunk).await?;
                if n == 0 {
                    bail!("closed mid-body");
                }
                left = left.saturating_sub(n);
            }
            return Ok(len);
        }
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before the head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Lets the workers run for `secs`, stops them, and returns (operations/s, p99 in ms, errors).
async fn finish(
    tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, usize)>>,
    stop: &AtomicBool,
    secs: u64,
) -> (f64, f64, usize) {
    // The measurement window itself, not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    (all.len() as f64 / secs as f64, p99(all), errors)
}

fn p99(mut v: Vec<Duration>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)].as_secs_f64() * 1000.0
}

async fn new_conns(t: &Target, config: &Arc<rustls::ClientConfig>, secs: u64) -> (f64, f64, usize) {
    new_conns_with(t, config, secs, 32).await
}

/// [`new_conns`] with `workers` concurrent clients.
async fn new_conns_with(
    t: &Target,
    config: &Arc<rustls::ClientConfig>,
    secs: u64,
    workers: usize,
) -> (f64, f64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (addr, sni, config, stop) =
            (t.addr.clone(), t.sni.clone(), config.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let r = async {
                    let mut tls = connect(&addr, &sni, &config).await?;
                    tls.write_all(b"GET /1k HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                        .await?;
                    let mut sink = Vec::new();
                    tls.read_to_end(&mut sink).await.ok();
                    if sink.len() < 1024 {
                        bail!("short answer");
                    }
                    anyhow::Ok(())
                }
                .await;
                match r {
                    Ok(()) => lat.push(start.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    finish(tasks, &stop, secs).await
}

/// A client that offers no certificate: the proxy does its half of a full handshake (key
/// exchange, signature) before it refuses the client.
#[derive(Debug)]
struct NoCertificate;

impl rustls::client::ResolvesClientCert for NoCertificate {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// The flood figures (issue 17 §4): a legit client (4 workers of new connections, as
/// [`new_conns_with`]) measured alone, then again while `slow` connections trickle a ClientHello
/// one byte every 2 s (each reconnecting when the proxy closes it: constant pressure) and
/// `attackers` workers start handshakes without a client certificate in a loop from 127.0.0.2
/// (the legit client and the slow connections come from 127.0.0.1). Prints the
/// legit p99 both times, its errors, the slow connections the proxy closed, the refused
/// handshakes per second and the proxy's RSS growth under the flood.
async fn flood(
    t: &Target,
    config: &Arc<rustls::ClientConfig>,
    secs: u64,
    slow: usize,
    attackers: usize,
) -> anyhow::Result<()> {
    use std::sync::atomic::AtomicUsize;
    let label = "flood";
    let (base_rps, base_p99, base_errors) = new_conns_with(t, config, secs, 4).await;
    let rss_before = rss_tree_kib(t.pid).context("rss")?;
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::new();
    for _ in 0..slow {
        let (addr, stop, open, closed) =
            (t.addr.clone(), stop.clone(), open.clone(), closed.clone());
        holders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut tcp) = TcpStream::connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                open.fetch_add(1, Ordering::Relaxed);
                // A handshake record announcing 512 bytes, then one byte at a time.
                let mut ok = tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.is_ok();
                while ok && !stop.load(Ordering::Relaxed) {
                    // The attack's own pace, not a synchronisation.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    ok = tcp.write_all(&[0x01]).await.is_ok();
                }
                open.fetch_sub(1, Ordering::Relaxed);
                if !ok {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut no_cert = (**config).clone();
    no_cert.client_auth_cert_resolver = Arc::new(NoCertificate);
    let no_cert = Arc::new(no_cert);
    let refused = Arc::new(AtomicUsize::new(0));
    let mut floods = Vec::new();
    for _ in 0..attackers {
        let (addr, sni, config, stop, refused) = (
            t.addr.clone(),
            t.sni.clone(),
            no_cert.clone(),
            stop.clone(),
            refused.clone(),
        );
        floods.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let attempt = async {
                    // From another source address than the legit client's (127.0.0.1).
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind("127.0.0.2:0".parse()?)?;
                    let tcp = socket.connect(addr.parse()?).await?;
                    let name = ServerName::try_from(sni.clone())?;
                    let mut tls = TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await?;
                    // TLS 1.3: the refusal arrives after the client's Finished, on the read.
                    let mut b = [0u8; 1];
                    tls.read_exact(&mut b).await?;
                    anyhow::Ok(())
                };
                if tokio::time::timeout(Duration::from_secs(10), attempt)
                    .await
                    .map(|r| r.is_err())
                    .unwrap_or(true)
                {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Every slow connection open before the legit client measures again.
    let _ = eventually(Duration::from_secs(60), "slow connections open", || {
        Ok((open.load(Ordering::Relaxed) >= slow * 9 / 10).then_some(()))
    });
    let refused_before = refused.load(Ordering::Relaxed);
    let cpu_before = cpu_tree_seconds(t.pid)?;
    let started = Instant::now();
    let (rps, p99, errors) = new_conns_with(t, config, secs, 4).await;
    let refused_rate =
        (refused.load(Ordering::Relaxed) - refused_before) as f64 / started.elapsed().as_secs_f64();
    let node_cpu = (cpu_tree_seconds(t.pid)? - cpu_before) / started.elapsed().as_secs_f64();
    let rss_during = rss_tree_kib(t.pid).context("rss")?;
    let (held, closed_now) = (open.load(Ordering::Relaxed), closed.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for h in holders.into_iter().chain(floods) {
        h.abort();
    }
    println!(
        "{label} baseline_rps={base_rps:.0} baseline_p99_ms={base_p99:.2} baseline_errors={base_errors} \
         flood_rps={rps:.0} flood_p99_ms={p99:.2} flood_errors={errors} p99_ratio={:.2} \
         slow_open={held} slow_closed_by_proxy={closed_now} refused_handshakes_per_s={refused_rate:.0} \
         proxy_cpu_cores={node_cpu:.2} rss_growth_mib={:.1}",
        p99 / base_p99,
        rss_during.saturating_sub(rss_before) as f64 / 1024.0
    );
    Ok(())
}

async fn keepalive(
    addr: &str,
    sni: &str,
    config: &Arc<rustls::ClientConfig>,
    conns: usize,
    secs: u64,
) -> (f64, f64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, sni, config, stop) = (
            addr.to_string(),
            sni.to_string(),
            config.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let Ok(mut tls) = connect(&addr, &sni, &config).await else {
                return (lat, 1);
            };
            let mut buf = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                if tls
                    .write_all(b"GET /1k HTTP/1.1\r\nHost: bench\r\n\r\n")
                    .await
                    .is_err()
                {
                    return (lat, 1);
                }
                match read_answer(&mut tls, &mut buf).await {
                    Ok(_) => lat.push(start.elapsed()),
                    Err(_) => return (lat, 1),
                }
            }
            (lat, 0)
        }));
    }
    finish(tasks, &stop, secs).await
}

/// One download of `/64m` over a new connection; returns the bytes read.
async fn download(t: &Target, config: &Arc<rustls::ClientConfig>) -> anyhow::Result<usize> {
    let mut tls = connect(&t.addr, &t.sni, config).await?;
    tls.write_all(b"GET /64m HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut n = 0usize;
    let mut chunk = vec![0u8; 65536];
    loop {
        let r = tls.read(&mut chunk).await.unwrap_or(0);
        if r == 0 {
            break;
        }
        n += r;
    }
    if n < 64 << 20 {
        bail!("bulk: {n} bytes");
    }
    Ok(n)
}

/// `flows` concurrent 64 MiB downloads, 3 times: the best aggregate MB/s, and the proxy's CPU
/// seconds (its process and children, utime + stime) per GB moved over all three.
async fn bulk(
    t: &Target,
    config: &Arc<rustls::ClientConfig>,
    flows: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut best: f64 = 0.0;
    let cpu_before = cpu_tree_seconds(t.pid)?;
    let mut moved = 0usize;
    for _ in 0..3 {
        let start = Instant::now();
        let runs = futures_join_all((0..flows).map(|_| download(t, config))).await;
        let mut n = 0;
        for r in runs {
            n += r?;
        }
        moved += n;
        best = best.max(n as f64 / 1e6 / start.elapsed().as_secs_f64());
    }
    let cpu = cpu_tree_seconds(t.pid)? - cpu_before;
    Ok((best, cpu / (moved as f64 / 1e9)))
}

/// Runs every future to its end, concurrently (on this task).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// utime + stime of `pid` and its children (nginx's workers), in seconds.
fn cpu_tree_seconds(pid: u32) -> anyhow::Result<f64> {
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut total = cpu_seconds(pid).context("cpu of the proxy")?;
    for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        total += cpu_seconds(child).unwrap_or(0.0);
    }
    Ok(total)
}

async fn idle(t: &Target, config: &Arc<rustls::ClientConfig>, n: usize) -> anyhow::Result<f64> {
    let before = rss_tree_kib(t.pid).context("rss")?;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let tls = tokio::time::timeout(Duration::from_secs(10), connect(&t.addr, &t.sni, config))
            .await
            .with_context(|| format!("idle connection {i} was not accepted within 10 s"))??;
        held.push(tls);
    }
    // Every upstream connection open (the proxies dial after the handshake).
    let port = t.nginx_port;
    eventually(Duration::from_secs(30), "upstream connections", || {
        Ok((upstream_conns(port)? >= n).then_some(()))
    })?;
    // The proxy's memory once it stops growing (two equal readings in a row).
    let mut last = 0;
    let after = eventually(Duration::from_secs(30), "RSS to settle", || {
        let now = rss_tree_kib(t.pid).context("rss")?;
        let settled = (now == last).then_some(now);
        last = now;
        Ok(settled)
    })?;
    drop(held);
    // The next measurement starts with no upstream connection left over.
    eventually(
        Duration::from_secs(30),
        "upstream connections closed",
        || Ok((upstream_conns(port)? == 0).then_some(())),
    )?;
    Ok((after.saturating_sub(before)) as f64 / n as f64)
}

/// Established TCP connections to nginx's port (from `ss`).
fn upstream_conns(port: u16) -> anyhow::Result<usize> {
    let (_, out, _) = run(Command::new("ss").args([
        "-Htn",
        "state",
        "established",
        &format!("( dport = :{port} )"),
    ]))?;
    Ok(String::from_utf8_lossy(&out).lines().count())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new().prefix("ze-bench-tls-").tempdir()?;
    let (target, config) = setup(&args, dir.path())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let label = &args.label;
        if args.flood_slow > 0 {
            return flood(&target, &config, args.seconds, args.flood_slow, args.flood_attackers).await;
        }
        let (cps, cp99, cerr) = new_conns(&target, &config, args.seconds).await;
        println!("{label} new_conns_per_s={cps:.0} new_conn_p99_ms={cp99:.2} errors={cerr}");
        let (rps, kp99, kerr) = keepalive(&target.addr, &target.sni, &config, 32, args.seconds).await;
        println!("{label} keepalive_rps={rps:.0} keepalive_p99_ms={kp99:.2} errors={kerr}");
        let (mb, cpu) = bulk(&target, &config, 1).await?;
        println!("{label} bulk_mb_per_s={mb:.0} bulk_cpu_s_per_gb={cpu:.2}");
        let (mb, cpu) = bulk(&target, &config, 8).await?;
        println!("{label} bulk8_mb_per_s={mb:.0} bulk8_cpu_s_per_gb={cpu:.2}");
        let kib = idle(&target, &config, args.idle).await?;
        println!("{label} idle_kib_per_conn={kib:.1}");
        if let Some(http_sni) = &target.http_sni {
            let before = upstream_conns(target.nginx_port)?;
            let (rps, p, e) = keepalive(&target.http_addr, http_sni, &config, 64, args.seconds).await;
            let ups = upstream_conns(target.nginx_port)?.saturating_sub(before);
            println!("{label} http_pool_rps={rps:.0} http_pool_p99_ms={p:.2} errors={e} http_pool_upstreams={ups}");
            let (rps, p, e) = keepalive(&target.addr, &target.sni, &config, 64, args.seconds).await;
            println!("{label} splice_64_rps={rps:.0} splice_64_p99_ms={p:.2} errors={e}");
        }
        anyhow::Ok(())
    })?;
    Ok(())
}
