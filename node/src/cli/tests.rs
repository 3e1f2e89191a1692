use serde_json::{Value, json};

use super::admin_client::*;
use super::render::*;
use super::*;

#[test]
fn tables_are_aligned_with_a_header() {
    let v = json!([{"type":"ZoneEgress","name":"egress-1","zone":"zone-a",
        "networking":{"address":"10.0.0.5","port":10002,"admin":{"port":9901}}}]);
    let t = render(Resource::ZoneEgresses, Output::Table, &v).unwrap();
    let lines: Vec<_> = t.lines().collect();
    assert_eq!(lines[0], "NAME      ZONE    ADDRESS   PORT   ADMIN PORT");
    assert_eq!(lines[1], "egress-1  zone-a  10.0.0.5  10002  9901");
}

#[test]
fn yaml_and_json_keep_the_api_shape() {
    let v = json!([{"name":"a"}]);
    let y = render(Resource::Members, Output::Yaml, &v).unwrap();
    assert!(y.contains("name: a"));
    let j = render(Resource::Members, Output::Json, &v).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&j).unwrap(), v);
}

#[test]
fn mesh_tables_show_mtls_and_the_egress_flag() {
    let v = json!([{"type":"Mesh","name":"default","mtls":{"enabledBackend":"ca-1"},
        "routing":{"zoneEgress":true}}, {"type":"Mesh","name":"plain"}]);
    let t = render(Resource::Meshes, Output::Table, &v).unwrap();
    assert!(t.contains("default  ca-1  true"), "{t}");
    assert!(t.contains("plain    off   false"), "{t}");
}

fn admin_args(admin: &str, token: Option<&str>, token_file: Option<&std::path::Path>) -> AdminArgs {
    AdminArgs {
        admin: admin.to_string(),
        timeout: None,
        token: token.map(str::to_string),
        token_file: token_file.map(std::path::Path::to_path_buf),
    }
}

#[test]
fn the_token_comes_from_the_flag_else_the_trimmed_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "  s3cret\n").unwrap();
    let from_file = admin_args("http://x", None, Some(&file));
    assert_eq!(bearer_token(&from_file).unwrap().as_deref(), Some("s3cret"));
    let both = admin_args("http://x", Some("flag"), Some(&file));
    assert_eq!(bearer_token(&both).unwrap().as_deref(), Some("flag"));
    assert_eq!(
        bearer_token(&admin_args("http://x", None, None)).unwrap(),
        None
    );
    std::fs::write(&file, "\n").unwrap();
    let e = bearer_token(&from_file).unwrap_err().to_string();
    assert!(e.contains("empty") && e.contains("token"), "{e}");
    let missing = admin_args("http://x", None, Some(&dir.path().join("nope")));
    let e = bearer_token(&missing).unwrap_err().to_string();
    assert!(e.contains("cannot read the token file"), "{e}");
}

/// A fake admin API on an ephemeral port: `POST /v1/drain` answers `drain_status` (and
/// records the `Authorization` header), `GET /ready` answers `ready(n)` for the n-th poll.
fn fake_node(
    drain_status: u16,
    ready: impl Fn(u32) -> Value + Clone + Send + Sync + 'static,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let auths = Arc::new(Mutex::new(Vec::new()));
    let polls = Arc::new(AtomicU32::new(0));
    let seen = auths.clone();
    let app = axum::Router::new()
        .route(
            "/v1/drain",
            post(move |headers: HeaderMap| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                seen.lock().unwrap().push(auth);
                let status = StatusCode::from_u16(drain_status).unwrap();
                let body = if status.is_success() {
                    json!({"draining": true, "alreadyDraining": false})
                } else {
                    json!({"error": "this write needs an Authorization: Bearer <admin token> header", "details": []})
                };
                (status, axum::Json(body))
            }),
        )
        .route(
            "/ready",
            get(move || async move {
                let n = polls.fetch_add(1, Ordering::SeqCst);
                (StatusCode::SERVICE_UNAVAILABLE, axum::Json(ready(n)))
            }),
        );
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (format!("http://{addr}"), auths)
}

fn drain_args(admin: &str, token: Option<&str>, wait: bool, timeout_ms: u64) -> DrainArgs {
    let mut admin = admin_args(admin, token, None);
    admin.timeout = Some(Duration::from_millis(timeout_ms));
    DrainArgs { admin, wait }
}

#[test]
fn drain_wait_prints_draining_then_drained() {
    let (url, auths) = fake_node(
        202,
        |n| json!({"ready": false, "name": "e1", "draining": true, "drained": n >= 2}),
    );
    let mut out = Vec::new();
    let last = drain(&drain_args(&url, Some("t"), true, 10_000), &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("draining: e1 "), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(last.starts_with("drained: e1 "), "{last}");
    assert_eq!(*auths.lock().unwrap(), vec![Some("Bearer t".to_string())]);
}

#[test]
fn drain_without_wait_only_asks() {
    let (url, _) = fake_node(202, |_| panic!("no /ready poll without --wait"));
    let mut out = Vec::new();
    let last = drain(&drain_args(&url, None, false, 10_000), &mut out).unwrap();
    assert!(out.is_empty());
    assert!(last.starts_with("draining: "), "{last}");
    assert!(last.contains("until SIGTERM"), "{last}");
}

#[test]
fn drain_wait_times_out_when_the_node_never_drains() {
    let (url, _) = fake_node(
        202,
        |_| json!({"ready": false, "name": "e1", "draining": true, "drained": false}),
    );
    let mut out = Vec::new();
    let started = Instant::now();
    let e = drain(&drain_args(&url, None, true, 700), &mut out).unwrap_err();
    assert!(format!("{e:#}").contains("timed out after 700ms"), "{e:#}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(String::from_utf8(out).unwrap().starts_with("draining: e1"));
}

#[test]
fn drain_refuses_to_wait_on_a_node_without_drain_state() {
    let (url, _) = fake_node(202, |_| json!({"ready": false, "name": "old"}));
    let e = drain(&drain_args(&url, None, true, 10_000), &mut Vec::new()).unwrap_err();
    assert!(format!("{e:#}").contains("older zone-egress"), "{e:#}");
}

#[test]
fn drain_without_the_token_says_how_to_pass_it() {
    let (url, _) = fake_node(401, |_| panic!("no /ready poll after a refusal"));
    let e = drain(&drain_args(&url, None, true, 10_000), &mut Vec::new()).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("401") && e.contains("--token-file"), "{e}");
}

#[test]
fn delete_paths_accept_kuma_and_plural_names() {
    assert_eq!(
        resource_path("ExternalService", "httpbin", "default").unwrap(),
        "/v1/meshes/default/external-services/httpbin"
    );
    assert_eq!(resource_path("meshes", "m", "x").unwrap(), "/v1/meshes/m");
    assert!(resource_path("gateway", "g", "x").is_err());
}

#[test]
fn members_are_decoded_typed_and_a_wrong_answer_says_so() {
    let v = json!([{"name":"egress-1","zone":"zone-a","role":"egress","gossipAddress":"10.0.0.5:7946",
        "state":"alive","ready":true,"generation":7,"adminAddress":"10.0.0.5:9901",
        "nameConflict":false}]);
    let t = render(Resource::Members, Output::Table, &v).unwrap();
    let lines: Vec<_> = t.lines().collect();
    assert!(
        lines[0].starts_with("NAME      ZONE    ROLE    STATE  READY"),
        "{t}"
    );
    assert!(
        lines[1].starts_with("egress-1  zone-a  egress  alive  true"),
        "{t}"
    );
    let e = render(Resource::Members, Output::Table, &json!({"error": "nope"})).unwrap_err();
    assert!(format!("{e:#}").contains("not a member list"), "{e:#}");
}

#[test]
fn the_admin_address_is_a_url_or_host_and_port() {
    assert_eq!(
        base_url("http://127.0.0.1:9901/").unwrap(),
        "http://127.0.0.1:9901"
    );
    assert_eq!(base_url("127.0.0.1:9901").unwrap(), "http://127.0.0.1:9901");
    assert_eq!(base_url("[::1]:9901").unwrap(), "http://[::1]:9901");
    assert_eq!(base_url("egress-1:9901").unwrap(), "http://egress-1:9901");
    let e = base_url("https://127.0.0.1:9901").unwrap_err().to_string();
    assert!(e.contains("plain HTTP"), "{e}");
    assert!(base_url("").is_err());
}

#[test]
fn a_silent_admin_port_fails_the_command_within_its_timeout() {
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let mut admin = admin_args(&address, None, None);
    admin.timeout = Some(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let e = health(&HealthArgs { admin, live: false }).unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}: {e:#}",
        started.elapsed()
    );
    drop(silent);
}

#[test]
fn names_are_sent_as_data_and_never_change_the_resource_a_request_names() {
    // `delete external-service x --mesh 'victim?'` must not become `DELETE /v1/meshes/victim`.
    let path = super::resource_path("external-service", "whatever", "victim?").unwrap();
    assert_eq!(path, "/v1/meshes/victim%3F/external-services/whatever");
    assert_eq!(
        super::resource_path("mesh", "default?", "").unwrap(),
        "/v1/meshes/default%3F"
    );
    assert_eq!(super::encode("../x#y z"), "..%2Fx%23y%20z");
    assert_eq!(super::encode("httpbin.org-1_~"), "httpbin.org-1_~");
}

#[test]
fn bad_admin_addresses_and_timeouts_are_refused_before_any_request() {
    assert_eq!(
        base_url("HTTP://127.0.0.1:9901").unwrap(),
        "http://127.0.0.1:9901"
    );
    for (bad, says) in [
        ("41315", "give host:port"),
        ("127.0.0.1", "give host:port"),
        ("127.0.0.1:99999", "not a port"),
        ("127.0.0.1:0", "not a port"),
        ("127.0.0.1:abc", "not a port"),
        ("::::", "IPv6 address in brackets"),
        ("http://127.0.0.1:9901/foo", "without a path"),
        ("http://127.0.0.1:9901?x=1", "without a path"),
    ] {
        let e = base_url(bad).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    assert!(parse_timeout("0s").is_err());
    assert!(parse_timeout("1ns").is_err());
    assert_eq!(parse_timeout("1ms").unwrap(), Duration::from_millis(1));
}

#[test]
fn usage_errors_exit_2_before_any_request() {
    use clap::Parser;
    for argv in [
        &["zone-egress", "get", "meshes", "--admin", "ftp://x:1"][..],
        &["zone-egress", "get", "meshes", "--admin", "not a url"],
        &["zone-egress", "get", "external-servics"],
        &["zone-egress", "delete", "meshs", "default"],
        &["zone-egress", "get", "meshes", "--timeout", "0s"],
    ] {
        let e = Cli::try_parse_from(argv).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{argv:?}: {e}");
    }
    let e = Cli::try_parse_from(["zone-egress", "get", "external-servics"]).unwrap_err();
    assert!(e.to_string().contains("external-services"), "{e}");
    // kumactl's spellings and Kuma's type names are accepted.
    for argv in [
        &["zone-egress", "get", "zoneegresses"][..],
        &["zone-egress", "get", "externalservices", "web"],
        &["zone-egress", "delete", "ExternalService", "web"],
        &["zone-egress", "delete", "meshtrafficpermissions", "allow"],
    ] {
        assert!(Cli::try_parse_from(argv).is_ok(), "{argv:?}");
    }
}
