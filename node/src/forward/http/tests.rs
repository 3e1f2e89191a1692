use super::*;

#[test]
fn hop_by_hop_headers_are_removed_and_te_trailers_kept() {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-secret-hop"),
    );
    h.insert("x-secret-hop", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
    h.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
    h.insert("x-kept", HeaderValue::from_static("yes"));
    remove_hop_by_hop(&mut h);
    let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    left.sort();
    assert_eq!(left, vec!["te", "x-kept"]);
    assert_eq!(h[header::TE], "trailers");
    let mut h = HeaderMap::new();
    h.insert(header::TE, HeaderValue::from_static("gzip"));
    remove_hop_by_hop(&mut h);
    assert!(h.is_empty());
}

#[test]
fn an_upgrade_needs_connection_upgrade_and_http_1_1() {
    let req = |version, connection: &str| {
        Request::builder()
            .version(version)
            .header(header::CONNECTION, connection)
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap()
    };
    assert_eq!(
        upgrade_of(&req(Version::HTTP_11, "keep-alive, Upgrade")),
        Some(HeaderValue::from_static("websocket"))
    );
    assert_eq!(upgrade_of(&req(Version::HTTP_11, "keep-alive")), None);
    assert_eq!(upgrade_of(&req(Version::HTTP_2, "upgrade")), None);
}

proptest::proptest! {
    /// Whatever `Connection`, `TE` and other headers a client sends, nothing hop-by-hop
    /// survives, nothing named in `Connection` survives, `TE` is at most `trailers`, and
    /// every other header is kept.
    #[test]
    fn no_hop_by_hop_header_survives(
        connection in "[ -~]{0,60}",
        te in "[ -~]{0,30}",
        names in proptest::collection::vec("[a-z][a-z0-9-]{0,12}", 0..6),
    ) {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&connection) {
            h.insert(header::CONNECTION, v);
        }
        if let Ok(v) = HeaderValue::from_str(&te) {
            h.insert(header::TE, v);
        }
        for n in &names {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static("v"));
        }
        let named: Vec<String> = connection
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        remove_hop_by_hop(&mut h);
        for hop in ["connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade"] {
            proptest::prop_assert!(!h.contains_key(hop));
        }
        if let Some(v) = h.get(header::TE) {
            proptest::prop_assert_eq!(v, "trailers");
        }
        for n in names.iter().filter(|n| n.as_str() != "te") {
            let hop = ["connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade", "te"];
            let expected = !hop.contains(&n.as_str()) && !named.contains(n);
            proptest::prop_assert_eq!(h.contains_key(n.as_str()), expected, "{}", n);
        }
    }
}

#[tokio::test]
async fn pools_of_removed_services_and_meshes_are_dropped() {
    use proto::resource::{Resource, parse_documents};
    let docs = parse_documents(
        "type: Mesh\nname: default\n---\ntype: ExternalService\nmesh: default\nname: httpbin\n\
         tags: { kuma.io/service: httpbin, kuma.io/protocol: http }\n\
         networking: { address: httpbin.org:80 }\n",
    )
    .unwrap();
    let Resource::ExternalService(es) = docs[1].clone() else {
        panic!("{docs:?}")
    };
    let with: crate::store::Resources = docs.iter().cloned().collect();
    let pools = Pools::default();
    pools.get("default", &es, std::slice::from_ref(&es));
    assert_eq!(pools.retain_existing(&with), 0, "the service exists: kept");
    assert_eq!(pools.len(), 1);
    // The ExternalService deleted (the mesh stays): dropped.
    let without_service: crate::store::Resources = docs[..1].iter().cloned().collect();
    assert_eq!(pools.retain_existing(&without_service), 1);
    assert!(pools.is_empty());
    // The mesh deleted: dropped too.
    pools.get("default", &es, std::slice::from_ref(&es));
    assert_eq!(
        pools.retain_existing(&crate::store::Resources::default()),
        1
    );
}
