//! The admin API's HTTP edge under arbitrary requests, for the `admin_requests` fuzz target
//! (`node/fuzz`). Not an API.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tokio::sync::watch;
use tower_service::Service;

use super::{AdminState, NodeInfo, router};
use crate::config::Secret;
use crate::gossip::ZoneSnapshot;
use crate::readiness::Readiness;
use crate::store;

/// The fuzzed node's admin and read tokens: random per process (`fuzz-admin-<32 hex>`,
/// `fuzz-read-<32 hex>`), not in the binary.
fn tokens() -> &'static (String, String) {
    static TOKENS: OnceLock<(String, String)> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let random = |label: &str| {
            let bytes: [u8; 16] = rand::random();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("{label}-{hex}")
        };
        (random("fuzz-admin"), random("fuzz-read"))
    })
}
/// Data directories of fuzzing processes: this and the process id.
const DIR_PREFIX: &str = "ze-fuzz-admin-";
/// One request must be answered within this (a hang is a finding).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
const CONTENT_TYPES: [Option<&str>; 7] = [
    None,
    Some("application/yaml"),
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("application/x-yaml"),
    Some("text/plain"),
    Some("multipart/form-data; boundary=x"),
];
/// Paths of the router (the fuzzer appends its own tail to them); the last entry is "none":
/// the path is the fuzzer's alone.
const PATHS: [&str; 22] = [
    "/v1/apply",
    "/v1/apply?dryRun=",
    "/v1/meshes/",
    "/v1/meshes/default/external-services/",
    "/v1/meshes/default/meshexternalservices/",
    "/v1/meshes/default/dataplanes/",
    "/v1/meshes/default/meshtrafficpermissions/",
    "/v1/meshes/default/traffic-permissions/",
    "/v1/zone-ingresses/",
    "/v1/secrets/",
    "/v1/global-secrets/",
    "/v1/meshes/default/pki/issue",
    "/v1/meshes/default/outbounds/",
    "/v1/inspect/route?sni=",
    "/v1/members/",
    "/v1/drain",
    "/v1/undrain",
    "/v1/status",
    "/v1/links",
    "/ready",
    "/metrics",
    "",
];

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: Router,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        // tmpfs when there is one: the store syncs its file on every write. The directories of
        // earlier processes that are gone are removed (a fuzzer exits without unwinding).
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        if let Ok(entries) = std::fs::read_dir(&base) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
                    continue;
                };
                if !std::path::Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let data_dir = base.join(format!("{DIR_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).expect("the fuzz data directory");
        let state = runtime.block_on(async {
            let store = store::spawn(store::Settings {
                data_dir,
                node: "fuzz".into(),
                tombstone_ttl: Duration::from_secs(3600),
                publisher: crate::gossip::Publisher::detached(),
                max_clock_offset: Duration::from_secs(1),
            })
            .await
            .expect("the fuzz store");
            let snapshot = ZoneSnapshot {
                not_listed: None,
                view: proto::ZoneView::resolve(&[]),
                joined: true,
                name_conflict: None,
            };
            let (zone_tx, zone_rx) = watch::channel(Arc::new(snapshot));
            std::mem::forget(zone_tx);
            let (readiness_tx, readiness_rx) = watch::channel(Readiness::default());
            std::mem::forget(readiness_tx);
            let (drain_tx, _) = watch::channel(false);
            AdminState {
                links: None,
                remote_rx: watch::channel(Arc::new(crate::link::RemoteServices::default())).1,
                identities: None,
                resources_rx: store.snapshot(),
                store,
                node: NodeInfo {
                    name: "fuzz".into(),
                    zone: "z".into(),
                    generation: 1,
                },
                zone_rx,
                readiness_rx,
                drain_tx: Arc::new(drain_tx),
                gossip: crate::gossip::Publisher::detached(),
                token: Some(Secret::new(tokens().0.clone())),
                read_token: Some(Secret::new(tokens().1.clone())),
                // A fixed exposition: the handlers, not the recorder, are under test.
                metrics: Arc::new(|| "# TYPE fuzz_up gauge\nfuzz_up 1\n".to_string()),
                started: Instant::now(),
            }
        });
        Fixture {
            runtime,
            router: router(state),
        }
    })
}

/// Sends one request built from `data` to a node's admin router (in process, no socket) and
/// checks the answer; returns its status (`None`: `data` makes no request). Not an API.
///
/// `data`: byte 0 picks the method, byte 1 the `Authorization` (none, the admin token, the read
/// token, a wrong token, or the next line as it is), byte 2 the `Content-Type`, byte 3 a path of
/// the router; the first line after them is appended to that path, the rest is the body.
///
/// Checks, beyond "never panics": every answer comes within 10 s, no answer is a `500` (the
/// router answers 500 only when a handler panicked), and no answer contains the admin or the
/// read token (random per process; a request whose path or body holds part of one is not
/// sent, since answers echo input and the store keeps it). The store is shared by all inputs
/// of a process, as a node's is by its requests.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) -> Option<u16> {
    let [method, auth, content_type, path, rest @ ..] = data else {
        return None;
    };
    let (line, rest) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return None;
    };
    let (token, read_token) = tokens();
    let (authorization, body) = match auth % 5 {
        0 => (None, rest),
        1 => (Some(format!("Bearer {token}")), rest),
        2 => (Some(format!("Bearer {read_token}")), rest),
        3 => (Some("Bearer wrong".to_string()), rest),
        _ => {
            // The next line is the header's value.
            let (value, body) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            (Some(String::from_utf8_lossy(value).into_owned()), body)
        }
    };
    // Answers echo the request (a bad SNI, a name) and the store keeps what it is sent, and the
    // fuzzer learns the tokens from the comparisons made here and by the router: a request
    // that holds 8 characters in a row of a token's random part is not sent, so a token in an
    // answer can only be a leak.
    let sent = [line.as_bytes(), body].concat();
    for t in [token, read_token] {
        let random = t.rsplit('-').next().unwrap_or(t).as_bytes();
        if random.windows(8).any(|w| sent.windows(8).any(|s| s == w)) {
            return None;
        }
    }
    let uri = format!("{}{line}", PATHS[*path as usize % PATHS.len()]);
    let mut request = Request::builder()
        .method(METHODS[*method as usize % METHODS.len()])
        .uri(uri);
    if let Some(a) = &authorization {
        request = request.header(header::AUTHORIZATION, a.as_str());
    }
    if let Some(c) = CONTENT_TYPES[*content_type as usize % CONTENT_TYPES.len()] {
        request = request.header(header::CONTENT_TYPE, c);
    }
    // Requests hyper would not carry (an invalid URI or header) never reach the router.
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return None;
    };
    let f = fixture();
    let (status, answer) = f.runtime.block_on(async {
        let answered = tokio::time::timeout(ANSWER_WITHIN, async {
            let mut router = f.router.clone();
            std::future::poll_fn(|cx| {
                <Router as Service<Request<Body>>>::poll_ready(&mut router, cx)
            })
            .await
            .expect("the router is always ready");
            let response = router
                .call(request)
                .await
                .expect("the router is infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("an answer body");
            (status, body)
        })
        .await;
        answered.expect("the admin API answers every request within 10 s")
    });
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a 500: {}",
        String::from_utf8_lossy(&answer)
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains(token.as_str()) && !text.contains(read_token.as_str()),
        "an answer shows a token: {text}"
    );
    Some(status.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_harness_reaches_the_handlers() {
        // POST /v1/apply with the admin token and YAML: applied.
        let apply = b"\x01\x01\x01\x00\ntype: Mesh\nname: fuzz\n";
        assert_eq!(fuzz_request(apply), Some(200));
        // The same without a token: refused before the handler.
        assert_eq!(
            fuzz_request(b"\x01\x00\x01\x00\ntype: Mesh\nname: x\n"),
            Some(401)
        );
        // GET /v1/meshes/fuzz with the read token: the mesh applied above.
        assert_eq!(fuzz_request(b"\x00\x02\x00\x02fuzz\n"), Some(200));
        // A body that is not JSON, sent as JSON.
        assert_eq!(fuzz_request(b"\x01\x01\x02\x00\n{"), Some(400));
        // An unknown path; a URI hyper would not carry; too short to be a request.
        assert_eq!(fuzz_request(b"\x00\x02\x00\x15/v1/nothing\n"), Some(404));
        assert_eq!(fuzz_request(b"\x00\x00\x00\x15/v1/a b\n"), None);
        assert_eq!(fuzz_request(b"\x00\x00"), None);
        // The fuzzer's first two finds were false leaks: a token (learnt from comparisons) sent
        // as an SNI that `inspect route` echoes, and one stored in a mesh name that
        // `/v1/status` lists later. Requests holding part of a token are not sent.
        let echo = format!("\x00\x02\x00\x0dx.{}.mesh\n", tokens().0);
        assert_eq!(fuzz_request(echo.as_bytes()), None);
        let stored = format!(
            "\x01\x01\x01\x00\ntype: Mesh\nname: m{}\n",
            &tokens().1[10..]
        );
        assert_eq!(fuzz_request(stored.as_bytes()), None);
    }
}
