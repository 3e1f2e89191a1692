//! Kuma's resources as Kuma users write them, through real nodes: a directory of Kuma-docs-shaped
//! YAML (a builtin-CA Mesh, Secrets and `secret:` references, ExternalServices with TLS
//! origination and client certificates from Secrets, MeshExternalServices, TrafficPermission
//! and MeshTrafficPermission) applied through one node; workload certificates issued by the fleet
//! (`zone-egress pki issue --mesh`); traffic from curl with those certificates through every
//! egress to nginx, allowed and denied as the permissions say; the builtin CA minted once, by the
//! node that takes the write; referenced Secrets protected; `get -o yaml | apply -f -` round trip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_tests::upstream::{Nginx, free_port, run};
use cluster_tests::{
    Cluster, Partition, TEST_CONFIG, eventually, get_json, hashed_sni, metrics_text, pki, request,
    zone_egress,
};

const CONVERGE: Duration = Duration::from_secs(30);

fn path(dir: &Path, rel: &str) -> String {
    dir.join(rel).display().to_string()
}

fn b64(dir: &Path, rel: &str) -> String {
    cluster_tests::base64(&std::fs::read(dir.join(rel)).unwrap()).unwrap()
}

/// curl through egress `listen` to `sni` with the workload certificate in `dir/identity`,
/// trusting `dir/identity/ca.pem` (the mesh CA, as `pki issue --mesh` wrote it): (HTTP status,
/// body) or curl's error.
fn curl(listen: &str, sni: &str, dir: &Path, identity: &str) -> Result<(u16, String), String> {
    let out = dir.join(format!("{identity}-{}.out", sni.len()));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-o"])
        .arg(&out)
        .args(["-w", "%{http_code}"])
        .arg(format!("https://{sni}/"))
        .args(["--connect-to", &format!("{sni}:443:{listen}")])
        .args(["--cacert", &path(dir, &format!("{identity}/ca.pem"))])
        .args(["--cert", &path(dir, &format!("{identity}/cert.pem"))])
        .args(["--key", &path(dir, &format!("{identity}/key.pem"))]);
    let (code, stdout, stderr) = run(&mut cmd).unwrap();
    if code != Some(0) {
        return Err(format!("curl exit {code:?}: {stderr}"));
    }
    let status = String::from_utf8_lossy(&stdout).trim().parse().unwrap_or(0);
    Ok((status, std::fs::read_to_string(&out).unwrap_or_default()))
}

/// The CA certificate of mesh `mesh` as node `admin` holds it (its builtin CA Secret).
fn builtin_ca(admin: &str, mesh: &str) -> Option<String> {
    let url = format!("{admin}/v1/meshes/{mesh}/secrets/{mesh}.ca-builtin-cert-ca-1?secrets=true");
    match request("GET", &url, None, None) {
        Ok((200, v)) => v["data"].as_str().map(str::to_string),
        _ => None,
    }
}

fn minted(admin: &str) -> u64 {
    metrics_text(admin)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("zone_egress_builtin_ca_minted_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The fleet, nginx behind it, the resource directory applied, and workload certificates.
struct Setup {
    cluster: Cluster,
    _nginx: Nginx,
    dir: PathBuf,
    plain: u16,
    mtls: u16,
}

fn setup() -> Setup {
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..3 {
        let mut options = cluster.next_options();
        options.config = TEST_CONFIG.to_string();
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    let dir = cluster.root().to_path_buf();
    // The external side: nginx on a plain port and on a TLS port that requires a client
    // certificate of the partner CA.
    pki::init_ca(&dir, "upstream-ca", "upstream").unwrap();
    pki::init_ca(&dir, "partner-ca", "partner").unwrap();
    pki::issue(
        &dir,
        "upstream-ca",
        "spiffe://upstream/nginx",
        &["localhost"],
        "nginx",
    )
    .unwrap();
    pki::issue(
        &dir,
        "partner-ca",
        "spiffe://partner/egress",
        &[],
        "partner-client",
    )
    .unwrap();
    let (plain, mtls) = (free_port().unwrap(), free_port().unwrap());
    let servers = format!(
        "server {{ listen 127.0.0.1:{plain}; server_name localhost; location / {{ return 200 \"plain host=$host\\n\"; }} }}\n\
         server {{ listen 127.0.0.1:{mtls} ssl; server_name localhost; ssl_certificate {}; ssl_certificate_key {}; \
           ssl_client_certificate {}; ssl_verify_client on; \
           location / {{ return 200 \"mtls client=$ssl_client_s_dn\\n\"; }} }}\n",
        path(&dir, "nginx/cert.pem"),
        path(&dir, "nginx/key.pem"),
        path(&dir, "partner-ca/ca.pem"),
    );
    let nginx = Nginx::start_servers(&dir.join("nginx-srv"), &servers, &[plain, mtls]).unwrap();
    let closed = free_port().unwrap();

    // The resource directory, as a Kuma user writes it.
    let resources = dir.join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    let files = [
        (
            "mesh.yaml",
            "type: Mesh\nname: default\nlabels: { team: platform }\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n      dpCert: { rotation: { expiration: 2h } }\n      conf: { caCert: { RSAbits: 2048, expiration: 1y } }\nrouting: { zoneEgress: true }\nnetworking: { outbound: { passthrough: false } }\n".to_string(),
        ),
        (
            "secrets.yaml",
            format!(
                "type: Secret\nmesh: default\nname: upstream-ca\ndata: {}\n---\ntype: Secret\nmesh: default\nname: partner-cert\ndata: {}\n---\ntype: Secret\nmesh: default\nname: partner-key\ndata: {}\n---\ntype: GlobalSecret\nname: note\ndata: aGVsbG8=\n",
                b64(&dir, "upstream-ca/ca.pem"),
                b64(&dir, "partner-client/cert.pem"),
                b64(&dir, "partner-client/key.pem"),
            ),
        ),
        (
            "external-services.yaml",
            format!(
                "type: ExternalService\nmesh: default\nname: api\ntags: {{ kuma.io/service: api, kuma.io/protocol: http }}\nnetworking: {{ address: 'localhost:{plain}' }}\n---\n\
                 type: ExternalService\nmesh: default\nname: partner\ntags: {{ kuma.io/service: partner, kuma.io/protocol: tcp }}\nnetworking:\n  address: 'localhost:{mtls}'\n  tls: {{ enabled: true, serverName: localhost, caCert: {{ secret: upstream-ca }}, clientCert: {{ secret: partner-cert }}, clientKey: {{ secret: partner-key }} }}\n---\n\
                 type: ExternalService\nmesh: default\nname: legacy\ntags: {{ kuma.io/service: legacy }}\nnetworking: {{ address: '127.0.0.1:{plain}' }}\n"
            ),
        ),
        (
            "mesh-external-services.yaml",
            format!(
                "type: MeshExternalService\nname: mes-web\nmesh: default\nlabels: {{ kuma.io/origin: zone }}\nspec:\n  match: {{ type: HostnameGenerator, port: 80, protocol: http }}\n  endpoints: [ {{ address: 127.0.0.1, port: {closed} }}, {{ address: localhost, port: {plain} }} ]\n---\n\
                 type: MeshExternalService\nname: mes-tls\nmesh: default\nspec:\n  match: {{ type: HostnameGenerator, port: 443, protocol: tcp }}\n  endpoints: [ {{ address: 127.0.0.1, port: {mtls} }} ]\n  tls:\n    enabled: true\n    version: {{ min: TLS12 }}\n    verification: {{ mode: Secured, serverName: localhost, caCert: {{ secret: upstream-ca }}, clientCert: {{ secret: partner-cert }}, clientKey: {{ secret: partner-key }} }}\n"
            ),
        ),
        (
            "permissions.yaml",
            "type: MeshTrafficPermission\nname: api-web-only\nmesh: default\nspec:\n  targetRef: { kind: MeshService, name: api }\n  from:\n    - targetRef: { kind: Mesh }\n      default: { action: Deny }\n    - targetRef: { kind: MeshService, name: web }\n      default: { action: Allow }\n---\n\
             type: MeshTrafficPermission\nname: partner-all\nmesh: default\nspec:\n  targetRef: { kind: MeshService, name: partner }\n  from: [ { targetRef: { kind: Mesh }, default: { action: Allow } } ]\n---\n\
             type: TrafficPermission\nname: legacy-billing\nmesh: default\nsources: [ { match: { kuma.io/service: billing } } ]\ndestinations: [ { match: { kuma.io/service: legacy } } ]\n"
                .to_string(),
        ),
    ];
    let mut all = String::new();
    for (name, text) in &files {
        std::fs::write(resources.join(name), text).unwrap();
        all.push_str(text);
        all.push_str("---\n");
    }
    let batch = resources.join("all.yaml");
    std::fs::write(&batch, &all).unwrap();
    let admin = cluster.admin(0);
    let out = zone_egress(&[
        "apply",
        "-f",
        &batch.display().to_string(),
        "--admin",
        &admin,
    ])
    .unwrap();
    assert!(
        out.contains("created Secret default.ca-builtin-cert-ca-1 in mesh default"),
        "{out}"
    );
    assert!(out.contains("warning: `networking` is stored"), "{out}");
    Setup {
        cluster,
        _nginx: nginx,
        dir,
        plain,
        mtls,
    }
}

#[test]
fn kuma_documents_work_end_to_end_through_every_egress() {
    let s = setup();
    let (cluster, dir) = (&s.cluster, &s.dir);
    // Visible on every node.
    for i in 0..3 {
        let admin = cluster.admin(i);
        eventually(CONVERGE, "every resource on every node", || {
            let count = |path: &str| {
                get_json(&admin, path)
                    .ok()
                    .and_then(|(_, v)| v.as_array().map(Vec::len))
                    .unwrap_or(0)
            };
            Ok((count("/v1/meshes/default/secrets") == 5
                && count("/v1/meshes/default/meshexternalservices") == 2
                && count("/v1/meshes/default/meshtrafficpermissions") == 2
                && count("/v1/meshes/default/traffic-permissions") == 1
                && count("/v1/global-secrets") == 1
                && count("/v1/meshes/default/external-services") == 3)
                .then_some(()))
        })
        .unwrap();
    }
    // Every node can issue its identity from the minted CA: no warning on /ready.
    for i in 0..3 {
        let (_, ready) = get_json(&cluster.admin(i), "/ready").unwrap();
        assert!(
            !ready.to_string().contains("cannot issue its identity"),
            "{ready}"
        );
    }
    // One CA, minted by the node that took the write.
    let ca = builtin_ca(&cluster.admin(0), "default").unwrap();
    for i in 1..3 {
        assert_eq!(
            builtin_ca(&cluster.admin(i), "default").as_deref(),
            Some(&*ca)
        );
    }
    assert_eq!(
        (0..3)
            .map(|i| minted(&cluster.admin(i)))
            .collect::<Vec<_>>(),
        [1, 0, 0]
    );
    // Workload identities from the fleet, through two different nodes.
    for (identity, node) in [("web", 1), ("billing", 2)] {
        zone_egress(&[
            "pki",
            "issue",
            "--mesh",
            "default",
            "--spiffe",
            &format!("spiffe://default/{identity}"),
            "--admin",
            &cluster.admin(node),
            "--out",
            &path(dir, identity),
        ])
        .unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("web/ca.pem")).unwrap(),
        std::fs::read_to_string(dir.join("billing/ca.pem")).unwrap()
    );
    // What the fleet does not issue: the egress's own identity, an id the egress cannot read
    // (two path segments) or of another mesh, a certificate that outlives the CA (1y here).
    let issue = |body: &str| {
        request(
            "POST",
            &format!("{}/v1/meshes/default/pki/issue", cluster.admin(0)),
            Some(("application/json", body.as_bytes())),
            None,
        )
        .unwrap()
    };
    for (body, expected) in [
        (
            r#"{"spiffe":"spiffe://default/zone-egress"}"#,
            "the egress's own identity",
        ),
        (
            r#"{"spiffe":"spiffe://default/web/extra"}"#,
            "one path segment",
        ),
        (
            r#"{"spiffe":"spiffe://other/web"}"#,
            "not a SPIFFE id of mesh",
        ),
        (
            r#"{"spiffe":"spiffe://default/web","validity":"2y"}"#,
            "cannot outlive it",
        ),
    ] {
        let (status, answer) = issue(body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(expected),
            "{answer}"
        );
    }
    // The issued certificate lives as dpCert.rotation.expiration says (2h).
    let end = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-enddate",
            "-in",
            &path(dir, "web/cert.pem"),
        ])
        .output()
        .unwrap();
    let end = String::from_utf8_lossy(&end.stdout).to_string();
    let end = end.trim().trim_start_matches("notAfter=");
    let ok = Command::new("date")
        .args(["-d", end, "+%s"])
        .output()
        .unwrap();
    let not_after: i64 = String::from_utf8_lossy(&ok.stdout).trim().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((not_after - now - 7200).abs() < 120, "notAfter {end}");

    let api = hashed_sni("api", s.plain, "mes").unwrap();
    let partner = hashed_sni("partner", s.mtls, "mes").unwrap();
    let legacy = hashed_sni("legacy", s.plain, "mes").unwrap();
    let mes_web = hashed_sni("mes-web", 80, "mes").unwrap();
    let mes_tls = hashed_sni("mes-tls", 443, "mes").unwrap();
    for i in 0..3 {
        let listen = cluster.nodes[i].info.listen.clone().unwrap();
        let ok = |sni: &str, who: &str| {
            eventually(
                Duration::from_secs(20),
                &format!("{who} -> {sni} via {i}"),
                || {
                    Ok(curl(&listen, sni, dir, who)
                        .ok()
                        .filter(|(code, _)| *code == 200))
                },
            )
            .unwrap()
            .1
        };
        // MeshTrafficPermission: `api` only for `web` (HTTP: the others get 403).
        assert!(ok(&api, "web").contains("plain host=localhost"));
        let (code, body) = curl(&listen, &api, dir, "billing").unwrap();
        assert_eq!(code, 403, "{body}");
        assert!(
            body.starts_with("zone-egress: permission: spiffe://default/billing"),
            "{body}"
        );
        assert!(body.contains("api-web-only"), "{body}");
        // TLS origination with the client certificate and CA from Secrets.
        assert!(ok(&partner, "billing").contains("mtls client="), "partner");
        // TrafficPermission for `legacy` (TCP): `billing` passes, `web` is closed.
        assert!(ok(&legacy, "billing").contains("plain"));
        let refused = curl(&listen, &legacy, dir, "web");
        assert!(
            refused.as_ref().map_or(true, |(code, _)| *code != 200),
            "{refused:?}"
        );
        // MeshExternalServices need no permission: failover past a dead endpoint, and TLS
        // origination per verification.mode with Secrets.
        assert!(ok(&mes_web, "billing").contains("plain host=localhost"));
        assert!(ok(&mes_tls, "web").contains("mtls client="));
    }
    // Counted and explained.
    let metrics: String = (0..3)
        .map(|i| metrics_text(&cluster.admin(i)).unwrap())
        .collect();
    assert!(
        metrics.contains("zone_egress_connections_rejected_total{reason=\"permission\"}"),
        "TCP refusals counted"
    );
    assert!(
        metrics.contains("zone_egress_permission_denied_total{"),
        "HTTP refusals counted"
    );
    let why = zone_egress(&[
        "inspect",
        "route",
        "--sni",
        "legacy{mesh=default}",
        "--client",
        "spiffe://default/web",
        "--admin",
        &cluster.admin(1),
    ])
    .unwrap();
    assert!(why.contains("\"reason\": \"permission\""), "{why}");
    assert!(
        why.contains("TrafficPermission \\\"legacy-billing\\\""),
        "{why}"
    );
    let why = zone_egress(&[
        "inspect",
        "route",
        "--sni",
        &mes_web,
        "--client",
        "spiffe://default/web",
        "--admin",
        &cluster.admin(1),
    ])
    .unwrap();
    assert!(why.contains("\"reason\": \"external\""), "{why}");
    assert!(
        why.contains(&format!("\"kumaSni\": \"{mes_web}\"")),
        "{why}"
    );

    // The embedded control plane tells sidecars where to go: the egress, with the SNI a Kuma
    // sidecar sends (hashed `mes` for a MeshExternalService, the tag form for an
    // ExternalService); the builtin CA serves the egress identity.
    let (status, out) =
        get_json(&cluster.admin(1), "/v1/meshes/default/outbounds/mes-web").unwrap();
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["mode"], "zone-egress", "{out}");
    assert_eq!(out["sni"], mes_web.as_str(), "{out}");
    assert_eq!(out["egresses"].as_array().map(Vec::len), Some(3), "{out}");
    let (status, out) = get_json(&cluster.admin(2), "/v1/meshes/default/outbounds/api").unwrap();
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["sni"], "api{mesh=default}", "{out}");
    assert_eq!(out["hashedSni"], api.as_str(), "{out}");

    // Secrets: never shown without asking, deletable only when unused.
    let (_, secret) =
        get_json(&cluster.admin(2), "/v1/meshes/default/secrets/partner-key").unwrap();
    assert_eq!(secret["data"], "<redacted>");
    let url = format!("{}/v1/meshes/default/secrets/partner-key", cluster.admin(2));
    let (status, body) = request("DELETE", &url, None, None).unwrap();
    assert_eq!(status, 409, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("ExternalService partner")
            && message.contains("MeshExternalService mes-tls"),
        "{message}"
    );
    let url = format!(
        "{}/v1/meshes/default/secrets/default.ca-builtin-key-ca-1",
        cluster.admin(0)
    );
    let (status, body) = request("DELETE", &url, None, None).unwrap();
    assert_eq!(status, 409, "{body}");
    // A reference to a missing Secret names both.
    let (status, body) = request(
        "POST",
        &format!("{}/v1/apply", cluster.admin(1)),
        Some((
            "application/yaml",
            b"type: ExternalService\nmesh: default\nname: bad\ntags: { kuma.io/service: bad }\nnetworking: { address: 'x.org:443', tls: { enabled: true, caCert: { secret: nope } } }\n",
        )),
        None,
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("refers to Secret \\\"nope\\\""),
        "{body}"
    );

    // Rotation as with a provided CA: a second builtin backend is minted in the write that adds
    // it and becomes the enabled one; clients of the old CA are still accepted while it is
    // listed, and the egress's own certificate now comes from the new CA.
    let rotated = "type: Mesh\nname: default\nlabels: { team: platform }\nmtls:\n  enabledBackend: ca-2\n  backends:\n    - name: ca-1\n      type: builtin\n      dpCert: { rotation: { expiration: 2h } }\n      conf: { caCert: { RSAbits: 2048, expiration: 1y } }\n    - name: ca-2\n      type: builtin\nrouting: { zoneEgress: true }\nnetworking: { outbound: { passthrough: false } }\n";
    let file = dir.join("rotated.yaml");
    std::fs::write(&file, rotated).unwrap();
    let out = zone_egress(&[
        "apply",
        "-f",
        &file.display().to_string(),
        "--admin",
        &cluster.admin(1),
    ])
    .unwrap();
    assert!(
        out.contains("created Secret default.ca-builtin-cert-ca-2 in mesh default"),
        "{out}"
    );
    // Through another node, once the rotated Mesh has reached it.
    let old_ca = std::fs::read_to_string(dir.join("web/ca.pem")).unwrap();
    let new_ca = eventually(CONVERGE, "a certificate of ca-2 through node 2", || {
        let out = path(dir, "web2");
        let admin = cluster.admin(2);
        let args = [
            "pki",
            "issue",
            "--mesh",
            "default",
            "--spiffe",
            "spiffe://default/web",
            "--admin",
            &admin,
            "--out",
            &out,
        ];
        zone_egress(&args)?;
        let ca = std::fs::read_to_string(dir.join("web2/ca.pem"))?;
        Ok((ca != old_ca).then_some(ca))
    })
    .unwrap();
    // `billing` keeps its certificate of ca-1 and trusts both CAs during the rotation.
    let both = format!(
        "{}{new_ca}",
        std::fs::read_to_string(dir.join("billing/ca.pem")).unwrap()
    );
    std::fs::write(dir.join("billing/ca.pem"), both).unwrap();
    std::fs::write(dir.join("web2/ca.pem"), &new_ca).unwrap();
    for i in 0..3 {
        let listen = cluster.nodes[i].info.listen.clone().unwrap();
        for who in ["billing", "web2"] {
            let (code, body) = eventually(
                Duration::from_secs(20),
                &format!("{who} after the rotation via {i}"),
                || {
                    Ok(curl(&listen, &mes_web, dir, who)
                        .ok()
                        .filter(|(c, _)| *c == 200))
                },
            )
            .unwrap();
            assert_eq!(code, 200, "{body}");
        }
    }

    // An empty kind round-trips too: `get` prints `[]`, which applies as a batch of nothing.
    // (The mesh exists and has no Dataplane; a mesh that does not exist is an error.)
    let admin = cluster.admin(0);
    let args = [
        "get",
        "dataplanes",
        "--mesh",
        "default",
        "-o",
        "yaml",
        "--admin",
        &admin,
    ];
    let empty = zone_egress(&args).unwrap();
    let file = dir.join("empty.yaml");
    std::fs::write(&file, &empty).unwrap();
    let out = zone_egress(&[
        "apply",
        "-f",
        &file.display().to_string(),
        "--admin",
        &admin,
    ]);
    assert_eq!(out.unwrap(), "", "{empty:?}");

    // get -o yaml | apply -f -: every kind re-applies unchanged.
    for kind in [
        "meshes",
        "secrets",
        "global-secrets",
        "external-services",
        "meshexternalservices",
        "traffic-permissions",
        "meshtrafficpermissions",
    ] {
        let admin = cluster.admin(2);
        let yaml = zone_egress(&[
            "get",
            kind,
            "-o",
            "yaml",
            "--show-secrets",
            "--admin",
            &admin,
        ])
        .unwrap();
        let file = dir.join(format!("round-trip-{kind}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let out = zone_egress(&[
            "apply",
            "-f",
            &file.display().to_string(),
            "--admin",
            &admin,
        ])
        .unwrap();
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with("  warning"))
            .collect();
        assert!(!lines.is_empty(), "{kind}: {out}");
        for line in lines {
            assert!(line.starts_with("unchanged "), "{kind}: {line}\n{yaml}");
        }
    }
}

/// The builtin CA is minted in the write that creates the Mesh, by the node that takes it: a
/// node that receives the Mesh by replication never mints, also after a partition, and two
/// creations of one Mesh on both sides of a partition end with one CA everywhere (the batch
/// with the Mesh and its CA wins or loses as a whole).
#[test]
fn the_builtin_ca_is_minted_by_the_write_never_by_a_replica() {
    let mut cluster = Cluster::new().unwrap();
    // Three nodes started at the same time; node 2 on a loopback IP of its own, so that a
    // Partition can cut it alone.
    for i in 0..3 {
        let mut options = cluster.next_options();
        options.config = TEST_CONFIG.to_string();
        if i == 2 {
            options.gossip_host = "127.0.0.2".into();
        }
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    let mesh = |name: &str| {
        format!(
            "type: Mesh\nname: {name}\nmtls: {{ enabledBackend: ca-1, backends: [ {{ name: ca-1, type: builtin }} ] }}\n"
        )
    };
    let apply = |i: usize, yaml: &str| {
        let (status, body) = request(
            "POST",
            &format!("{}/v1/apply", cluster.admin(i)),
            Some(("application/yaml", yaml.as_bytes())),
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
    };
    {
        let _cut = Partition::cut(&cluster.nodes[2].info.gossip);
        // During the partition: `m1` written through node 0; `m2` through both sides.
        apply(0, &mesh("m1"));
        apply(0, &mesh("m2"));
        apply(2, &mesh("m2"));
        eventually(CONVERGE, "m1 on node 1", || {
            Ok(builtin_ca(&cluster.admin(1), "m1").map(|_| ()))
        })
        .unwrap();
        assert_eq!(
            builtin_ca(&cluster.admin(2), "m1"),
            None,
            "the partition holds"
        );
    }
    // Healed: every node holds one CA per mesh, the same everywhere.
    for mesh in ["m1", "m2"] {
        eventually(CONVERGE, &format!("one CA of {mesh} everywhere"), || {
            let cas: Vec<Option<String>> = (0..3)
                .map(|i| builtin_ca(&cluster.admin(i), mesh))
                .collect();
            Ok((cas[0].is_some() && cas.iter().all(|c| *c == cas[0])).then_some(()))
        })
        .unwrap();
    }
    // Only the writers minted: node 1 never did, node 2 only for its own write of m2.
    assert_eq!(
        (0..3)
            .map(|i| minted(&cluster.admin(i)))
            .collect::<Vec<_>>(),
        [2, 0, 1]
    );
    // The surviving CA of m2 is whole: its certificate and key come from the same write, so
    // identities issued through any node chain to the CA every node holds.
    let dir = cluster.root().to_path_buf();
    for i in 0..3 {
        let out = path(&dir, &format!("m2-client-{i}"));
        zone_egress(&[
            "pki",
            "issue",
            "--mesh",
            "m2",
            "--spiffe",
            "spiffe://m2/web",
            "--admin",
            &cluster.admin(i),
            "--out",
            &out,
        ])
        .unwrap();
        let verify = Command::new("openssl")
            .args([
                "verify",
                "-CAfile",
                &format!("{out}/ca.pem"),
                &format!("{out}/cert.pem"),
            ])
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    let first = std::fs::read_to_string(dir.join("m2-client-0/ca.pem")).unwrap();
    for i in 1..3 {
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("m2-client-{i}/ca.pem"))).unwrap(),
            first
        );
    }
    // Half a builtin CA (one of its two Secrets given by hand) is refused, naming both.
    let (status, body) = request(
        "POST",
        &format!("{}/v1/apply", cluster.admin(0)),
        Some((
            "application/yaml",
            format!(
                "{}---\ntype: Secret\nmesh: m3\nname: m3.ca-builtin-cert-ca-1\ndata: YQ==\n",
                mesh("m3")
            )
            .as_bytes(),
        )),
        None,
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("m3.ca-builtin-key-ca-1"),
        "{body}"
    );
    // Deleting the Mesh deletes its CA with it.
    let (status, body) = request(
        "DELETE",
        &format!("{}/v1/meshes/m1", cluster.admin(1)),
        None,
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    eventually(CONVERGE, "m1's CA gone everywhere", || {
        Ok((0..3)
            .all(|i| builtin_ca(&cluster.admin(i), "m1").is_none())
            .then_some(()))
    })
    .unwrap();
}
