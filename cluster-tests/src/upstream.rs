//! Real upstream servers for the forwarding tests: nginx on loopback.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::eventually;

/// A free loopback port (bound once to port 0, then released for the server to take).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// An nginx serving `root` over plain HTTP and, when given a certificate, over HTTPS.
pub struct Nginx {
    child: Child,
    /// Plain HTTP port.
    pub http_port: u16,
    /// HTTPS port, when started with a certificate.
    pub https_port: Option<u16>,
    /// Document root.
    pub root: PathBuf,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in `dir` serving `dir/www`; `tls` is (cert.pem, key.pem) for HTTPS.
    pub fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> anyhow::Result<Nginx> {
        let root = dir.join("www");
        let http_port = free_port()?;
        let https_port = tls.map(|_| free_port()).transpose()?;
        let https = match (tls, https_port) {
            (Some((cert, key)), Some(port)) => format!(
                "server {{ listen 127.0.0.1:{port} ssl; server_name localhost; \
                 ssl_certificate {}; ssl_certificate_key {}; root {}; }}",
                cert.display(),
                key.display(),
                root.display()
            ),
            _ => String::new(),
        };
        let servers = format!(
            "server {{ listen 127.0.0.1:{http_port}; root {root}; }}\n{https}",
            root = root.display()
        );
        let ports: Vec<u16> = std::iter::once(http_port).chain(https_port).collect();
        let mut nginx = Nginx::start_servers(dir, &servers, &ports)?;
        nginx.http_port = http_port;
        nginx.https_port = https_port;
        Ok(nginx)
    }

    /// Starts nginx in `dir` with `servers` (nginx `server { … }` blocks, inside `http`) and
    /// waits until every port of `ports` accepts. The document root `dir/www` exists; the
    /// returned `http_port` is `ports[0]`.
    pub fn start_servers(dir: &Path, servers: &str, ports: &[u16]) -> anyhow::Result<Nginx> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("nginx is not installed (apt-get install nginx; .ci/run does)")?;
        let root = dir.join("www");
        fs::create_dir_all(&root)?;
        fs::create_dir_all(dir.join("logs"))?;
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; user root; \
             error_log {dir}/logs/error.log; pid {dir}/nginx.pid;\n\
             worker_rlimit_nofile 16000;\n\
             events {{ worker_connections 16384; }}\n\
             http {{ access_log off; sendfile on; keepalive_requests 1000000; keepalive_timeout 300s; \
             client_body_temp_path {dir}/tmp-body; proxy_temp_path {dir}/tmp-proxy; \
             fastcgi_temp_path {dir}/tmp-fcgi; uwsgi_temp_path {dir}/tmp-uwsgi; scgi_temp_path {dir}/tmp-scgi; \
             {servers}\n}}\n",
            dir = dir.display(),
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("logs/stderr.log"))?)
            .spawn()
            .context("cannot start nginx")?;
        let mut nginx = Nginx {
            child,
            http_port: ports.first().copied().unwrap_or_default(),
            https_port: None,
            root,
            dir: dir.to_path_buf(),
        };
        let up = eventually(Duration::from_secs(10), "nginx to listen", || {
            if let Some(status) = nginx.child.try_wait()? {
                bail!(
                    "nginx exited with {status}: {}",
                    fs::read_to_string(nginx.dir.join("logs/stderr.log")).unwrap_or_default()
                );
            }
            Ok(ports
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
                .then_some(()))
        });
        if let Err(e) = up {
            let _ = nginx.child.kill();
            return Err(e);
        }
        Ok(nginx)
    }
}

/// HAProxy in the foreground with a configuration of the caller's (a stand-in for a Kuma
/// sidecar: it sends any SNI with a client certificate).
pub struct Haproxy {
    child: Child,
    dir: PathBuf,
}

impl Haproxy {
    /// Starts `haproxy -f dir/haproxy.cfg` with `config` and waits until every port of `ports`
    /// accepts.
    pub fn start(dir: &Path, config: &str, ports: &[u16]) -> anyhow::Result<Haproxy> {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("haproxy is not installed (apt-get install haproxy; .ci/run does)")?;
        fs::create_dir_all(dir)?;
        let path = dir.join("haproxy.cfg");
        fs::write(&path, config)?;
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("haproxy.log"))?)
            .spawn()
            .context("cannot start haproxy")?;
        let mut haproxy = Haproxy {
            child,
            dir: dir.to_path_buf(),
        };
        let up = eventually(Duration::from_secs(10), "haproxy to listen", || {
            if let Some(status) = haproxy.child.try_wait()? {
                bail!(
                    "haproxy exited with {status}: {}",
                    fs::read_to_string(haproxy.dir.join("haproxy.log")).unwrap_or_default()
                );
            }
            Ok(ports
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
                .then_some(()))
        });
        if let Err(e) = up {
            let _ = haproxy.child.kill();
            return Err(e);
        }
        Ok(haproxy)
    }

    /// What HAProxy wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command and returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> anyhow::Result<(Option<i32>, Vec<u8>, String)> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    Ok((
        out.status.code(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).to_string(),
    ))
}

/// sha256 of a file, by `sha256sum`.
pub fn sha256(path: &Path) -> anyhow::Result<String> {
    let (code, out, err) = run(Command::new("sha256sum").arg(path))?;
    if code != Some(0) {
        bail!("sha256sum {}: {err}", path.display());
    }
    Ok(String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// One curl process's share of a download soak.
#[derive(Debug, Clone)]
pub struct Soak {
    /// `https://SNI/path` to fetch.
    pub url: String,
    /// `SNI:443:LISTEN` for `--connect-to`.
    pub connect_to: String,
    /// CA that verifies the server curl talks to.
    pub ca: PathBuf,
    /// Client certificate and key (the mesh identity).
    pub cert: PathBuf,
    /// Client key.
    pub key: PathBuf,
}

/// What a soak saw: every download's size and curl exit code (0 = complete).
#[derive(Debug, Default)]
pub struct SoakReport {
    /// (bytes received, curl exit code) per download.
    pub downloads: Vec<(u64, i32)>,
}

impl SoakReport {
    /// Downloads that stopped short of `size` bytes or failed.
    pub fn short(&self, size: u64) -> Vec<(u64, i32)> {
        self.downloads
            .iter()
            .copied()
            .filter(|(n, code)| *n != size || *code != 0)
            .collect()
    }
}

/// Runs `processes` curl processes at once, each downloading `per_process` times over
/// keep-alive connections (a real client reusing its connection is what leaves the tail of a
/// body waiting); every download has its own deadline (`--max-time`, per transfer).
pub fn soak(
    target: &Soak,
    processes: usize,
    per_process: usize,
    deadline: Duration,
) -> anyhow::Result<SoakReport> {
    let mut children = Vec::new();
    for _ in 0..processes {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", &deadline.as_secs().to_string()])
            .args(["--connect-to", &target.connect_to])
            .arg("--cacert")
            .arg(&target.ca)
            .arg("--cert")
            .arg(&target.cert)
            .arg("--key")
            .arg(&target.key)
            .args(["-w", "%{size_download} %{exitcode}\\n"]);
        for _ in 0..per_process {
            cmd.args(["-o", "/dev/null", &target.url]);
        }
        children.push(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start curl")?,
        );
    }
    let mut report = SoakReport::default();
    for child in children {
        let out = child.wait_with_output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut parts = line.split_whitespace();
            let size = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let code = parts.next().and_then(|s| s.parse().ok()).unwrap_or(-1);
            report.downloads.push((size, code));
        }
    }
    Ok(report)
}
