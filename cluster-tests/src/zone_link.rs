//! Certificates and configs of two-zone tests, made with the `zone-egress pki` CLI in `dir`.

use std::path::Path;
use std::time::Duration;

use super::{Cluster, TEST_CONFIG, request, zone_egress};

fn p(dir: &Path, rel: &str) -> String {
    dir.join(rel).to_string_lossy().into_owned()
}

/// Issues node `node`'s link certificate from `dir/link-ca` (which must exist) and returns
/// its config: [`TEST_CONFIG`] plus `link` (and `link.listen` on 127.0.0.1:0 for an
/// ingress, `listen`).
pub fn link_config(dir: &Path, node: &str, listen: bool) -> anyhow::Result<String> {
    zone_egress(&[
        "pki",
        "issue",
        "--ca",
        &p(dir, "link-ca"),
        "--spiffe",
        &format!("spiffe://zone-link/{node}"),
        "--dns",
        "ze-link",
        "--out",
        &p(dir, &format!("link-{node}")),
    ])?;
    Ok(format!(
        "{TEST_CONFIG}link: {{ ca: {}, cert: {}, key: {}{} }}\n",
        p(dir, "link-ca/ca.pem"),
        p(dir, &format!("link-{node}/cert.pem")),
        p(dir, &format!("link-{node}/key.pem")),
        if listen { ", listen: 127.0.0.1:0" } else { "" }
    ))
}

/// Mesh `default` with the provided CA of `dir/mesh-ca` and `routing.zoneEgress` on, and
/// [`crate::ALLOW_ALL`] (a mesh has no permission by default, as in Kuma 2.x).
pub fn mesh_yaml(dir: &Path) -> String {
    format!(
        "type: Mesh\nname: default\nmtls: {{ enabledBackend: ca-1, backends: [ {{ name: ca-1, type: provided, conf: {{ cert: {{ file: {} }}, key: {{ file: {} }} }} }} ] }}\nrouting: {{ zoneEgress: true }}\n---\n{}",
        p(dir, "mesh-ca/ca.pem"),
        p(dir, "mesh-ca/ca.key"),
        crate::ALLOW_ALL
    )
}

/// POSTs `yaml` to a node's `/v1/apply` (no token) and fails unless it answers 200.
pub fn apply(admin: &str, yaml: &str) -> anyhow::Result<()> {
    let (status, body) = request(
        "POST",
        &format!("{admin}/v1/apply"),
        Some(("application/yaml", yaml.as_bytes())),
        None,
    )?;
    anyhow::ensure!(status == 200, "apply answered {status}: {body}");
    Ok(())
}

/// Two zones joined by one link: zone-b with one ingress node (`ingress-0`) holding
/// `zone_b_resources`, zone-a with one egress node (`egress-0`) that knows the ingress by a
/// static `ZoneIngress` and has mesh `default` with the CA of `dir/mesh-ca`. `dir` must
/// hold `link-ca` and `mesh-ca` (`zone-egress pki init-ca`). Returns (zone-a, zone-b).
pub fn one_link(dir: &Path, zone_b_resources: &str) -> anyhow::Result<(Cluster, Cluster)> {
    let mut b = Cluster::new()?;
    b.zone = "zone-b".into();
    let mut options = b.next_options();
    options.name = "ingress-0".into();
    options.config = link_config(dir, &options.name, true)?;
    options.args = vec!["--role".into(), "ingress".into()];
    b.add_node_with(options)?;
    apply(&b.admin(0), zone_b_resources)?;
    let mut a = Cluster::new()?;
    let mut options = a.next_options();
    options.name = "egress-0".into();
    options.config = link_config(dir, "egress-0", false)?;
    a.add_node_with(options)?;
    a.wait_converged(Duration::from_secs(40))?;
    let link = b.nodes[0].info.link.clone().unwrap_or_default();
    apply(
        &a.admin(0),
        &format!(
            "{}---\n{}",
            mesh_yaml(dir),
            zone_ingress_yaml("zone-b-ingress", &link)
        ),
    )?;
    Ok((a, b))
}

/// A static `ZoneIngress` of zone-b named `name` for an ingress whose link listens on
/// `link` (`ip:port`).
pub fn zone_ingress_yaml(name: &str, link: &str) -> String {
    let port = link.rsplit(':').next().unwrap_or_default();
    format!(
        "type: ZoneIngress\nname: {name}\nzone: zone-b\nnetworking: {{ advertisedAddress: 127.0.0.1, advertisedPort: {port} }}\n"
    )
}
