//! `deploy/grafana/zone-egress.json` proven on a real Prometheus (Debian's `prometheus`): two
//! zones (3 egress nodes in zone-a, an ingress node in zone-b) with traffic of every kind the
//! dashboard shows (TCP and HTTP external services, an unreachable one, a client without a
//! certificate, a service of zone-b over the link, a resource written every round), scraped
//! through each node's
//! `admin.metrics_listen`; then **every** panel's PromQL runs through Prometheus' HTTP API and
//! must return a series with a number (not NaN).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use cluster_tests::upstream::{Nginx, free_port, run};
use cluster_tests::{Cluster, eventually, hashed_sni, pki};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(40);
/// Every node's metrics listener, on an ephemeral port.
const METRICS: &str = "admin: { metrics_listen: 127.0.0.1:0 }\n";

fn p(dir: &Path, rel: &str) -> String {
    dir.join(rel).to_str().unwrap().to_string()
}

fn apply(admin: &str, yaml: &str) {
    cluster_tests::zone_link::apply(admin, yaml).unwrap();
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every second.
    fn start(dir: &Path, targets: &[String]) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - \
                 job_name: zone-egress\n    static_configs: [ {{ targets: [{list}] }} ]\n"
            ),
        )
        .unwrap();
        let port = free_port().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian's `prometheus` package)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Runs an instant query; returns the result vector.
    fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut resp = agent
            .get(format!("{}/api/v1/query", self.url))
            .query("query", expr)
            .call()
            .context("Prometheus query")?;
        let body: Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
        if body["status"] != "success" {
            bail!("{expr}: {body}");
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// Every query of every panel (and of the template variables) in the dashboard, with Grafana's
/// variables replaced as Grafana would for "All nodes" and a 1 s scrape interval.
fn dashboard_queries() -> Vec<(String, String)> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/zone-egress.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "20s")
                .replace("$instance", ".*")
                .replace("$zone", ".*");
            assert!(!expr.contains('$'), "a variable left in {expr}");
            out.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

#[test]
fn every_dashboard_panel_returns_a_series_from_a_real_prometheus() {
    let queries = dashboard_queries();
    let dir: PathBuf = tempfile::Builder::new()
        .prefix("ze-dashboard-")
        .tempdir()
        .unwrap()
        .keep();
    pki::init_ca(&dir, "link-ca", "zone-link").unwrap();
    pki::init_ca(&dir, "mesh-ca", "mesh-default").unwrap();
    let web_sni = hashed_sni("web", 8443, "ms").unwrap();
    pki::issue(
        &dir,
        "mesh-ca",
        "spiffe://default/web",
        &[&web_sni],
        "backend",
    )
    .unwrap();
    pki::issue(&dir, "mesh-ca", "spiffe://default/client", &[], "client").unwrap();

    // Destinations: nginx over TLS for zone-b's `web`, plain nginx for the external services.
    let nginx = Nginx::start(
        &dir.join("nginx"),
        Some((&dir.join("backend/cert.pem"), &dir.join("backend/key.pem"))),
    )
    .unwrap();
    std::fs::write(nginx.root.join("index.html"), "hello\n").unwrap();
    let closed = free_port().unwrap();

    // zone-b: one ingress node with `web`.
    let mut b = Cluster::new().unwrap();
    b.zone = "zone-b".into();
    let mut options = b.next_options();
    options.name = "ingress-0".into();
    options.config =
        cluster_tests::zone_link::link_config(&dir, "ingress-0", true).unwrap() + METRICS;
    options.args = vec!["--role".into(), "ingress".into()];
    b.add_node_with(options).unwrap();
    apply(
        &b.admin(0),
        &format!(
            "type: Mesh\nname: default\n---\ntype: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  \
             address: 127.0.0.1\n  inbound: [ {{ port: {}, tags: {{ kuma.io/service: web }} }} ]\n",
            nginx.https_port.unwrap()
        ),
    );

    // zone-a: three egress nodes, the mesh, zone-b's ingress and three external services.
    let mut a = Cluster::new().unwrap();
    for i in 0..3 {
        let mut options = a.next_options();
        options.config = cluster_tests::zone_link::link_config(&dir, &format!("egress-{i}"), false)
            .unwrap()
            + METRICS;
        a.add_node_with(options).unwrap();
    }
    a.wait_converged(CONVERGE).unwrap();
    let link = b.nodes[0].info.link.clone().unwrap();
    let es = |name: &str, protocol: &str, port: u16| {
        format!(
            "---\ntype: ExternalService\nmesh: default\nname: {name}\ntags: {{ kuma.io/service: {name}, \
             kuma.io/protocol: {protocol} }}\nnetworking: {{ address: 127.0.0.1:{port} }}\n"
        )
    };
    apply(
        &a.admin(0),
        &format!(
            "{}---\n{}{}{}{}",
            cluster_tests::zone_link::mesh_yaml(&dir),
            cluster_tests::zone_link::zone_ingress_yaml("zone-b-ingress", &link),
            es("tcp-web", "tcp", nginx.http_port),
            es("http-web", "http", nginx.http_port),
            es("nowhere", "tcp", closed),
        ),
    );

    // Traffic through every egress node until the queries are done.
    let snis = [
        (hashed_sni("tcp-web", nginx.http_port, "mes").unwrap(), true),
        (
            hashed_sni("http-web", nginx.http_port, "mes").unwrap(),
            true,
        ),
        (hashed_sni("nowhere", closed, "mes").unwrap(), true),
        (web_sni.clone(), true),
        (
            hashed_sni("tcp-web", nginx.http_port, "mes").unwrap(),
            false,
        ),
    ];
    let listens: Vec<String> = (0..3)
        .map(|i| a.nodes[i].info.listen.clone().unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let admin = a.admin(0);
    let traffic = {
        let (stop, dir) = (stop.clone(), dir.clone());
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A resource write per round, so the store panels (write latency, replication
                // lag to the other nodes) have something to show.
                let secret = format!(
                    "type: Secret\nmesh: default\nname: rotating\ndata: {}\n",
                    cluster_tests::base64(sent.to_string().as_bytes()).unwrap()
                );
                apply(&admin, &secret);
                for listen in &listens {
                    for (sni, with_cert) in &snis {
                        let mut cmd = Command::new("curl");
                        cmd.args(["-sS", "--max-time", "5", "-o", "/dev/null"])
                            .arg(format!("https://{sni}/index.html"))
                            .args(["--connect-to", &format!("{sni}:443:{listen}")])
                            .args(["--cacert", &p(&dir, "mesh-ca/ca.pem")]);
                        if *with_cert {
                            cmd.args(["--cert", &p(&dir, "client/cert.pem")]);
                            cmd.args(["--key", &p(&dir, "client/key.pem")]);
                        }
                        let _ = run(&mut cmd);
                        sent += 1;
                    }
                }
            }
            sent
        })
    };

    let targets: Vec<String> = a
        .nodes
        .iter()
        .chain(&b.nodes)
        .map(|n| n.info.metrics.clone().expect("metrics listener"))
        .collect();
    let prometheus = Prometheus::start(&dir, &targets);
    eventually(
        Duration::from_secs(30),
        "Prometheus scraping all 4 nodes",
        || {
            let up = prometheus.query("up == 1").unwrap_or_default();
            Ok((up.len() == targets.len()).then_some(()))
        },
    )
    .unwrap();
    let build = prometheus.query("zone_egress_build_info").unwrap();
    assert_eq!(build.len(), 4, "the Node variable's source: {build:?}");
    // The Zone variable's source: each node's series say its zone.
    let zones = prometheus
        .query("count by (zone) (zone_egress_build_info)")
        .unwrap();
    let mut counts: Vec<(String, String)> = zones
        .iter()
        .map(|s| {
            let zone = s["metric"]["zone"].as_str().unwrap_or("?").to_string();
            (zone, s["value"][1].as_str().unwrap_or("?").to_string())
        })
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        [("zone-a".into(), "3".into()), ("zone-b".into(), "1".into())]
    );

    // Every query must answer a series with a number; give rates and quantiles time to fill.
    let mut missing: Vec<(String, String)> = Vec::new();
    let result = eventually(Duration::from_secs(90), "every panel with data", || {
        missing.clear();
        for (title, expr) in &queries {
            let series = prometheus.query(expr)?;
            let numbers = series.iter().filter(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            });
            if numbers.count() == 0 {
                missing.push((title.clone(), expr.clone()));
            }
        }
        Ok(missing.is_empty().then_some(()))
    });
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.join().unwrap();
    assert!(
        result.is_ok(),
        "{} of {} queries returned no series with a number:\n{}",
        missing.len(),
        queries.len(),
        missing
            .iter()
            .map(|(t, e)| format!("  {t}: {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "all {} queries of the dashboard's panels return data from Prometheus ({sent} connections sent)",
        queries.len()
    );
}
