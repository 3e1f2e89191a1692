//! The `zone-egress` CLI against real nodes, as an operator uses it (kumactl is the model):
//! `get TYPE [NAME]` with kumactl's spellings, `-o yaml | apply -f -` round trips, `apply
//! --dry-run`, `export` into another zone, the outcome wording, empty lists, typos.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cluster_tests::{Cluster, binary};

/// Runs the CLI against `admin` with `stdin`; returns (exit code, stdout, stderr).
fn ze(admin: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(binary().unwrap())
        .args(args)
        .env("ZONE_EGRESS_ADMIN", admin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Like [`ze`], and the command must succeed; returns stdout.
fn ok(admin: &str, args: &[&str], stdin: &str) -> String {
    let (code, out, err) = ze(admin, args, stdin);
    assert_eq!(code, 0, "zone-egress {args:?}: {err}{out}");
    out
}

const RESOURCES: &str = "type: Mesh\nname: default\n---\ntype: ExternalService\nmesh: default\n\
name: web\ntags: { kuma.io/service: web, kuma.io/protocol: http }\nnetworking: { address: \
127.0.0.1:8080 }\n---\ntype: MeshTrafficPermission\nmesh: default\nname: allow-all\nspec: { \
targetRef: { kind: Mesh }, from: [ { targetRef: { kind: Mesh }, default: { action: Allow } } ] \
}\n";

fn one_node(zone: &str) -> Cluster {
    let mut cluster = Cluster::new().unwrap();
    cluster.zone = zone.into();
    cluster.add_node().unwrap();
    cluster.wait_converged(Duration::from_secs(30)).unwrap();
    cluster
}

#[test]
fn an_operator_round_trips_resources_through_the_cli() {
    let a = one_node("zone-a");
    let admin = &a.admin(0);

    // Empty lists say what is empty, and where.
    assert_eq!(
        ok(admin, &["get", "meshes"], ""),
        "no meshes in zone \"zone-a\"\n"
    );

    // A dry run checks and writes nothing.
    let out = ok(admin, &["apply", "-f", "-", "--dry-run"], RESOURCES);
    assert_eq!(
        out,
        "created Mesh default (dry run)\ncreated ExternalService web in mesh default (dry run)\n\
         created MeshTrafficPermission allow-all in mesh default (dry run)\n"
    );
    assert_eq!(ok(admin, &["get", "meshes", "-o", "json"], "").trim(), "[]");
    // A dry run refuses what an apply refuses, with the same message.
    let orphan = "type: ExternalService\nmesh: nowhere\nname: x\ntags: { kuma.io/service: x }\n\
                  networking: { address: 127.0.0.1:1 }\n";
    let (dry, _, dry_err) = ze(admin, &["apply", "-f", "-", "--dry-run"], orphan);
    let (real, _, real_err) = ze(admin, &["apply", "-f", "-"], orphan);
    assert_ne!(dry, 0);
    assert_eq!((dry, &dry_err), (real, &real_err));

    // A dry run of a Mesh with a builtin CA mints nothing that counts: no metric, no log line.
    let builtin = "type: Mesh\nname: secure\nmtls: { enabledBackend: ca-1, backends: [ { name: \
                   ca-1, type: builtin } ] }\n";
    let out = ok(admin, &["apply", "-f", "-", "--dry-run"], builtin);
    assert!(out.starts_with("created Mesh secure (dry run)\n"), "{out}");
    let minted = |admin: &str| {
        cluster_tests::metrics_text(admin)
            .unwrap()
            .lines()
            .find(|l| l.starts_with("zone_egress_builtin_ca_minted_total"))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(
        minted(admin).as_deref(),
        Some("0"),
        "a dry run counted a minted CA"
    );
    assert!(!a.nodes[0].log().contains("minted the builtin CA"));

    let out = ok(admin, &["apply", "-f", "-"], RESOURCES);
    assert!(out.starts_with("created Mesh default\n"), "{out}");
    assert!(
        out.contains("created ExternalService web in mesh default\n"),
        "{out}"
    );

    // One resource by name, in kumactl's spelling and the singular; its YAML applies back.
    for spelling in ["externalservices", "external-service", "external-services"] {
        let yaml = ok(admin, &["get", spelling, "web", "-o", "yaml"], "");
        assert!(yaml.starts_with("type: ExternalService\n"), "{yaml}");
        let out = ok(admin, &["apply", "-f", "-"], &yaml);
        assert_eq!(out, "unchanged ExternalService web in mesh default\n");
    }
    // A whole list's YAML applies back too.
    let list = ok(admin, &["get", "meshtrafficpermissions", "-o", "yaml"], "");
    assert_eq!(
        ok(admin, &["apply", "-f", "-"], &list),
        "unchanged MeshTrafficPermission allow-all in mesh default\n"
    );
    let table = ok(admin, &["get", "external-services", "web"], "");
    assert_eq!(table.lines().count(), 2, "{table}");
    let (code, _, err) = ze(admin, &["get", "external-services", "nothing"], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("no ExternalService named \"nothing\" in mesh \"default\""),
        "{err}"
    );

    // Members with version and age; one member by name.
    let table = ok(admin, &["get", "members", "egress-0"], "");
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("VERSION") && header.contains("AGE"),
        "{table}"
    );
    assert!(
        table.lines().nth(1).unwrap().starts_with("egress-0 "),
        "{table}"
    );

    // A typo is a usage error (exit 2) with a suggestion.
    let (code, _, err) = ze(admin, &["get", "external-servics"], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("external-services"), "{err}");

    // `inspect outbounds` explains where a sidecar sends traffic for a service.
    let out = ok(admin, &["inspect", "outbounds", "--service", "web"], "");
    assert!(
        out.contains("\"mode\"") && out.contains("\"service\": \"web\""),
        "{out}"
    );

    // Export, and apply the export to another zone: both zones then export the same.
    let export = ok(admin, &["export"], "");
    assert_eq!(export.matches("\n---\n").count() + 1, 3, "{export}");
    let b = one_node("zone-b");
    let out = ok(&b.admin(0), &["apply", "-f", "-"], &export);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("created ")).count(),
        3,
        "{out}"
    );
    assert_eq!(ok(&b.admin(0), &["export"], ""), export);

    // Deleting says what it deleted, in the same words; kumactl's spelling and Kuma's type
    // name work, a typo is a usage error with a suggestion.
    let (code, _, err) = ze(admin, &["delete", "meshs", "default"], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("mesh"), "{err}");
    assert_eq!(
        ok(admin, &["delete", "externalservices", "web"], ""),
        "deleted ExternalService web in mesh default\n"
    );
    assert_eq!(
        ok(admin, &["delete", "MeshTrafficPermission", "allow-all"], ""),
        "deleted MeshTrafficPermission allow-all in mesh default\n"
    );
}
