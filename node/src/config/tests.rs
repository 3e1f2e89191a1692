use std::io::Write;

use super::validate::*;
use super::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn err(text: &str) -> String {
    let f = file(text);
    load_file(f.path()).unwrap_err().to_string()
}

#[test]
fn embedded_default_is_a_working_single_node() {
    let c = load(&Overrides::default()).unwrap();
    assert_eq!(c.zone, "default");
    assert_eq!(c.role, Role::Egress);
    assert_eq!(c.listen, "0.0.0.0:10002".parse().unwrap());
    assert_eq!(c.admin.listen, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.gossip.listen, "0.0.0.0:7946".parse().unwrap());
    assert_eq!(c.gossip.interval, Duration::from_millis(500));
    assert_eq!(c.drain.announce_delay, Duration::from_secs(5));
    assert!(c.gossip.seeds.is_empty());
}

#[test]
fn the_design_example_parses() {
    let f = file(
        r#"
name: egress-1
zone: zone-a
role: egress
listen: 0.0.0.0:10002
advertise: 10.0.0.5
admin: { listen: 127.0.0.1:9901 }
gossip:
  listen: 0.0.0.0:7946
  seeds: ["egress-0.zone-a.svc:7946"]
  key_file: /etc/zone-egress/gossip.key
  interval: 500ms
link:
  listen: 0.0.0.0:10001
  ca: /etc/zone-egress/link/ca.pem
  cert: /etc/zone-egress/link/cert.pem
  key: /etc/zone-egress/link/key.pem
data_dir: /var/lib/zone-egress
limits: { max_connections: 100000, hello_timeout: 5s, idle_timeout: 1h }
drain: { announce_delay: 5s, grace: 30s }
log: { format: text, access: false }
"#,
    );
    let c = load_file(f.path()).unwrap();
    assert_eq!(c.name, "egress-1");
    assert_eq!(c.advertise, "10.0.0.5".parse::<IpAddr>().unwrap());
    assert_eq!(c.gossip.seeds, vec!["egress-0.zone-a.svc:7946"]);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(3600));
}

#[test]
fn flags_win_over_the_file_and_the_file_over_the_default() {
    let f = file("name: from-file\nzone: zone-a\ngossip: { seeds: [a:1] }\n");
    let c = load(&Overrides {
        config: Some(f.path().to_path_buf()),
        name: Some("from-flag".into()),
        seeds: vec!["b:2".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.name, "from-flag");
    assert_eq!(c.zone, "zone-a");
    assert_eq!(c.gossip.seeds, vec!["b:2"]);
    // The default still fills what neither set.
    assert_eq!(c.gossip.interval, Duration::from_millis(500));
}

#[test]
fn errors_name_the_file_and_the_field() {
    let e = err("gossip:\n  intervall: 5s\n");
    assert!(e.contains("field `gossip.intervall`"), "{e}");
    assert!(e.contains("unknown field `intervall`"), "{e}");
    assert!(e.contains("file \""), "{e}");

    let e = err("gossip: { interval: 5x }\n");
    assert!(e.contains("gossip.interval"), "{e}");

    let e = err("listen: nowhere\n");
    assert!(
        e.contains("field `listen`") && e.contains("ADDR:PORT"),
        "{e}"
    );

    let e = err("role: router\n");
    assert!(e.contains("unknown role"), "{e}");

    let e = err("limits: { max_connections: -1 }\n");
    assert!(e.contains("limits.max_connections"), "{e}");

    let e = err("gossip: { seeds: [\"no-port\"] }\n");
    assert!(e.contains("gossip.seeds[0]"), "{e}");

    let e = err("name: [1, 2\n");
    assert!(e.contains("invalid config file"), "{e}");
}

#[test]
fn a_flag_error_names_the_flag() {
    let e = load(&Overrides {
        listen: Some("bad".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("flag --listen"), "{e}");
}

#[test]
fn tokens_graces_and_the_clock_offset_are_checked() {
    let e = err("admin: { read_token: r }\n");
    assert!(
        e.contains("admin.read_token") && e.contains("needs an admin token"),
        "{e}"
    );
    let c = load_file(file("admin: { token: a, read_token: r }\n").path()).unwrap();
    assert_eq!(c.admin.read_token.as_ref().unwrap().expose(), "r");
    let e = err("admin: { token: a, read_token: 'r 2' }\n");
    assert!(
        e.contains("admin.read_token") && e.contains("one line"),
        "{e}"
    );
    let two_lines = file("line-1\nline-2\n");
    let e = err(&format!(
        "admin: {{ token_file: {} }}\n",
        two_lines.path().display()
    ));
    assert!(
        e.contains("admin.token_file") && e.contains("more than one line"),
        "{e}"
    );
    for bad in ["0s", "50ms", "2h"] {
        let e = err(&format!("store: {{ max_clock_offset: {bad} }}\n"));
        assert!(e.contains("store.max_clock_offset"), "{bad}: {e}");
    }
    let e = err("gossip: { left_grace: 1s }\n");
    assert!(
        e.contains("gossip.left_grace") && e.contains("four gossip rounds"),
        "{e}"
    );
    let c = load_file(file("gossip: { dead_node_grace: 10m, left_grace: 30s }\nstore: { max_clock_offset: 250ms }\n").path()).unwrap();
    assert_eq!(c.gossip.dead_node_grace, Duration::from_secs(600));
    assert_eq!(c.gossip.left_grace, Duration::from_secs(30));
    assert_eq!(c.store.max_clock_offset, Duration::from_millis(250));
}

#[test]
fn a_mistyped_token_is_not_echoed_and_a_read_token_must_differ() {
    let e = err("admin: { token: 12345 }\n");
    assert!(e.contains("admin.token") && !e.contains("12345"), "{e}");
    assert!(
        e.contains("file"),
        "names the file, not a merged config: {e}"
    );
    let e = err("admin: { token: same-value, read_token: same-value }\n");
    assert!(
        e.contains("admin.read_token") && e.contains("is the admin token"),
        "{e}"
    );
    assert!(!e.contains("same-value"), "{e}");
}

#[test]
fn admin_beyond_loopback_needs_a_token() {
    let e = err("admin: { listen: 0.0.0.0:9901 }\n");
    assert!(e.contains("beyond loopback"), "{e}");
    let f = file("admin: { listen: 0.0.0.0:9901, token: s3cret }\n");
    let c = load_file(f.path()).unwrap();
    assert_eq!(c.admin.token.as_ref().unwrap().expose(), "s3cret");
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn the_metrics_listener_may_leave_loopback_without_a_token() {
    // Only /metrics, /live and /ready there: no token needed beyond loopback.
    let c = load_file(file("admin: { metrics_listen: 0.0.0.0:9902 }\n").path()).unwrap();
    assert_eq!(
        c.admin.metrics_listen,
        Some("0.0.0.0:9902".parse().unwrap())
    );
    assert!(c.admin.token.is_none());
    assert_eq!(
        load_file(file("{}\n").path()).unwrap().admin.metrics_listen,
        None
    );
    let e = err("admin: { metrics_listen: ':9902' }\n");
    assert!(
        e.contains("admin.metrics_listen") && e.contains("not an ADDR:PORT"),
        "{e}"
    );
    let e = err("admin: { listen: 127.0.0.1:9901, metrics_listen: 127.0.0.1:9901 }\n");
    assert!(
        e.contains("admin.metrics_listen") && e.contains("another port"),
        "{e}"
    );
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "tok\n").unwrap();
    let path = dir.path().join("node.yaml");
    std::fs::write(
        &path,
        "admin: { listen: 0.0.0.0:9901, token_file: admin.token }\ndata_dir: data\n",
    )
    .unwrap();
    let c = load_file(&path).unwrap();
    assert_eq!(c.admin.token.unwrap().expose(), "tok");
    assert_eq!(c.data_dir, dir.path().join("data"));
    std::fs::write(dir.path().join("admin.token"), " \n").unwrap();
    let e = load_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("admin.token_file") && e.contains("is empty"),
        "{e}"
    );
}

#[test]
fn an_empty_file_is_the_default() {
    let f = file("");
    assert!(load_file(f.path()).is_ok());
}

#[test]
fn a_missing_file_is_a_read_error() {
    let e = load_file(Path::new("/nonexistent/ze.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read config file /nonexistent/ze.yaml"),
        "{e}"
    );
}

#[test]
fn advertise_takes_an_ip_or_this_hosts_address_in_a_network() {
    let host: Vec<IpAddr> = ["127.0.0.1", "172.18.0.7", "10.1.2.3", "fd00::5"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(advertised_address("192.0.2.1", &host), Ok(ip("192.0.2.1")));
    assert_eq!(advertised_address("10.0.0.0/8", &host), Ok(ip("10.1.2.3")));
    assert_eq!(
        advertised_address("172.18.0.0/16", &host),
        Ok(ip("172.18.0.7"))
    );
    assert_eq!(advertised_address("fd00::/8", &host), Ok(ip("fd00::5")));
    let e = advertised_address("192.168.0.0/16", &host).unwrap_err();
    assert!(
        e.contains("no address of this host is inside 192.168.0.0/16"),
        "{e}"
    );
    assert!(e.contains("10.1.2.3"), "{e}");
    let e = advertised_address("eth0", &host).unwrap_err();
    assert!(e.contains("neither an IP address nor a network"), "{e}");
}

#[test]
fn link_advertise_defaults_to_advertise_and_names_its_field() {
    let f = file("advertise: 192.0.2.1\n");
    let c = load_file(f.path()).unwrap();
    assert_eq!(c.link.advertise, c.advertise);
    let f = file("advertise: 192.0.2.1\nlink: { advertise: 198.51.100.9 }\n");
    let c = load_file(f.path()).unwrap();
    assert_eq!(c.link.advertise, "198.51.100.9".parse::<IpAddr>().unwrap());
    let f = file("link: { advertise: 203.0.113.0/24 }\n");
    let e = load_file(f.path()).unwrap_err().to_string();
    assert!(e.contains("link.advertise"), "{e}");
}
