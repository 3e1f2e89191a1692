//! Tests of the link plane over real QUIC on 127.0.0.1, with certificates made by
//! [`crate::pki`]: both ends, the control stream, forwarded streams, failures, reconnection and
//! the weighted pick. Waiting is always a poll against a deadline.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use proto::link::{AvailableService, IngressAddr, SERVICE_TAG};
use quinn::{Endpoint, EndpointConfig, TokioRuntime};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::frame::{read_frame, write_frame};
use super::*;
use crate::pki;

const DEADLINE: Duration = Duration::from_secs(30);
const MESH: &str = "default";
const MINUTE: Duration = Duration::from_secs(60);

/// A link CA in a temporary directory, issuing leaves.
struct LinkPki {
    dir: TempDir,
}

impl LinkPki {
    fn new(name: &str) -> LinkPki {
        let dir = tempfile::tempdir().unwrap();
        pki::init_ca(&dir.path().join("ca"), name).unwrap();
        LinkPki { dir }
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca").join(pki::CA_CERT_FILE)).unwrap()
    }

    /// A certificate for `node` with the DNS SANs `dns`, as (cert PEM, key PEM).
    fn leaf(&self, node: &str, dns: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let out = self.dir.path().join(node);
        let dns: Vec<String> = dns.iter().map(|d| d.to_string()).collect();
        pki::issue(
            &self.dir.path().join("ca"),
            &format!("spiffe://zone-link/{node}"),
            &dns,
            &[],
            &out,
            Duration::from_secs(3600),
        )
        .unwrap();
        (
            std::fs::read(out.join(pki::CERT_FILE)).unwrap(),
            std::fs::read(out.join(pki::KEY_FILE)).unwrap(),
        )
    }

    fn ingress_tls(&self, node: &str) -> LinkTls {
        let (cert, key) = self.leaf(node, &[LINK_SERVER_NAME]);
        LinkTls::new(self.ca_pem(), cert, key)
    }

    fn egress_tls(&self, node: &str) -> LinkTls {
        let (cert, key) = self.leaf(node, &[]);
        LinkTls::new(self.ca_pem(), cert, key)
    }
}

fn udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Polls `check` every 10 ms until it holds, failing after [`DEADLINE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the merged view satisfies `check`.
async fn wait_view(
    services_rx: &mut watch::Receiver<Arc<RemoteServices>>,
    what: &str,
    check: impl Fn(&RemoteServices) -> bool,
) {
    within(what, services_rx.wait_for(|view| check(view)))
        .await
        .unwrap();
}

/// Runs `future` within [`DEADLINE`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn service(name: &str, version: &str, instances: u32) -> AvailableService {
    AvailableService {
        mesh: MESH.into(),
        tags: BTreeMap::from([
            (SERVICE_TAG.to_string(), name.to_string()),
            ("version".to_string(), version.to_string()),
        ]),
        instances,
    }
}

fn header(service: &str) -> StreamHeader {
    StreamHeader {
        mesh: MESH.into(),
        service: service.into(),
        tags: BTreeMap::new(),
        sni: format!("{service}{{mesh={MESH}}}"),
        client: "127.0.0.1:1".into(),
    }
}

/// Deterministic pseudo-random bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A TCP echo server: every connection gets its bytes back, and a FIN after the client's.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    address
}

/// A TCP server that reads a whole request (until the client's FIN), then answers
/// `<request length>\n` followed by 1 MiB, then closes.
async fn upload_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                tcp.read_to_end(&mut request).await.unwrap();
                tcp.write_all(format!("{}\n", request.len()).as_bytes())
                    .await
                    .unwrap();
                tcp.write_all(&pattern(9, 1 << 20)).await.unwrap();
                tcp.shutdown().await.unwrap();
            });
        }
    });
    address
}

/// A resolver from service name to addresses.
fn resolver(table: &[(&str, Vec<SocketAddr>)]) -> Resolver {
    let table: HashMap<String, Vec<SocketAddr>> = table
        .iter()
        .map(|(name, addresses)| (name.to_string(), addresses.clone()))
        .collect();
    Arc::new(move |header: &StreamHeader| table.get(&header.service).cloned().unwrap_or_default())
}

/// A running ingress and the sender of its zone's services.
struct Ingress {
    handle: IngressHandle,
    services_tx: watch::Sender<Arc<ServiceSet>>,
}

fn start_ingress(
    pki: &LinkPki,
    node: &str,
    socket: UdpSocket,
    services: ServiceSet,
    resolver: Resolver,
) -> Ingress {
    let (services_tx, services_rx) = watch::channel(Arc::new(services));
    let handle = spawn_ingress(
        socket,
        &pki.ingress_tls(node),
        "zone-b".into(),
        node.into(),
        services_rx,
        resolver,
    )
    .unwrap();
    Ingress {
        handle,
        services_tx,
    }
}

fn start_egress(tls: &LinkTls, targets: &[(&str, SocketAddr)]) -> LinkManager {
    let manager = spawn_egress(udp(), tls, "zone-a".into(), "egress-1".into()).unwrap();
    manager.set_targets(
        targets
            .iter()
            .map(|(name, address)| LinkTarget {
                name: name.to_string(),
                zone: "zone-b".into(),
                address: *address,
            })
            .collect(),
    );
    manager
}

fn status(manager: &LinkManager, name: &str) -> Option<LinkStatus> {
    manager.links().into_iter().find(|link| link.name == name)
}

fn is_up(manager: &LinkManager, name: &str) -> bool {
    status(manager, name).is_some_and(|link| link.state == LinkState::Up)
}

/// Forwards one TCP connection over `link` as the egress's forwarding plane would: returns the
/// client's socket and the egress-side splice.
async fn forward(
    manager: &LinkManager,
    link: &str,
    header: &StreamHeader,
    idle_timeout: Duration,
) -> (TcpStream, JoinHandle<Spliced>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    let stream = manager.open(header, &[], link).await.unwrap();
    let splice = tokio::spawn(stream.splice(accepted, idle_timeout));
    (client, splice)
}

/// One control-stream handshake done by hand, for tests that speak raw QUIC to an ingress.
async fn raw_link(tls: &LinkTls, ingress: SocketAddr) -> (Endpoint, quinn::Connection) {
    let socket = udp();
    socket.set_nonblocking(true).unwrap();
    let endpoint = Endpoint::new(
        EndpointConfig::default(),
        None,
        socket,
        Arc::new(TokioRuntime),
    )
    .unwrap();
    let conn = endpoint
        .connect_with(tls.client_config().unwrap(), ingress, LINK_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

/// Sends the hello on a raw connection and reads the answer and the first service set.
async fn raw_hello(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream, HelloAck) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = Hello {
        zone: "zone-a".into(),
        node: "raw".into(),
        version: "test".into(),
    };
    write_frame(&mut send, &hello).await.unwrap();
    let ack: HelloAck = read_frame(&mut recv, Some(DEADLINE)).await.unwrap();
    let _: ServiceSet = read_frame(&mut recv, Some(DEADLINE)).await.unwrap();
    (send, recv, ack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_stream_says_hello_and_pushes_every_change() {
    let pki = LinkPki::new("link-ca");
    let services = ServiceSet {
        services: vec![service("backend", "v1", 2)],
        ingresses: vec![],
    };
    let ingress = start_ingress(&pki, "ingress-1", udp(), services, resolver(&[]));
    let manager = start_egress(
        &pki.egress_tls("egress-1"),
        &[("zone-b-ingress", ingress.handle.local_addr())],
    );
    let mut services_rx = manager.services();
    eventually("link up", || is_up(&manager, "zone-b-ingress")).await;
    let link = status(&manager, "zone-b-ingress").unwrap();
    assert_eq!(link.remote_node.as_deref(), Some("ingress-1"));
    assert_eq!(link.zone, "zone-b");
    assert_eq!(link.origin, LinkOrigin::Static);

    let none = BTreeMap::new();
    wait_view(&mut services_rx, "backend advertised", |view| {
        view.candidates(MESH, "backend", &BTreeMap::new())
            == vec![("zone-b-ingress".to_string(), 2)]
    })
    .await;
    assert_eq!(status(&manager, "zone-b-ingress").unwrap().services, 1);
    let entry = manager.services().borrow().iter().next().cloned().unwrap();
    assert_eq!(entry.links[0].zone, "zone-b");
    assert_eq!(
        manager.pick(MESH, "backend", &none).as_deref(),
        Some("zone-b-ingress")
    );
    assert_eq!(manager.pick(MESH, "web", &none), None);
    // A retry never picks a link it already tried.
    assert_eq!(
        manager.pick_except(MESH, "backend", &none, &["zone-b-ingress".to_string()]),
        None
    );

    // An update: web appears, backend changes its instances.
    ingress.services_tx.send_replace(Arc::new(ServiceSet {
        services: vec![service("backend", "v1", 5), service("web", "v2", 3)],
        ingresses: vec![],
    }));
    wait_view(&mut services_rx, "update propagated", |view| {
        let v2 = BTreeMap::from([("version".to_string(), "v2".to_string())]);
        view.candidates(MESH, "web", &v2) == vec![("zone-b-ingress".to_string(), 3)]
            && view.candidates(MESH, "backend", &BTreeMap::new())
                == vec![("zone-b-ingress".to_string(), 5)]
    })
    .await;
    // A removal.
    ingress
        .services_tx
        .send_replace(Arc::new(ServiceSet::default()));
    wait_view(&mut services_rx, "removal propagated", |view| {
        view.is_empty()
    })
    .await;
    assert_eq!(manager.pick(MESH, "backend", &none), None);

    manager.shutdown().await;
    assert!(manager.links().is_empty());
    ingress.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_stream_moves_20_mb_each_way_intact() {
    const SIZE: usize = 20 * 1024 * 1024;
    let pki = LinkPki::new("link-ca");
    let echo = echo_server().await;
    let ingress = start_ingress(
        &pki,
        "ingress-1",
        udp(),
        ServiceSet::default(),
        resolver(&[("backend", vec![echo])]),
    );
    let manager = start_egress(
        &pki.egress_tls("egress-1"),
        &[("b", ingress.handle.local_addr())],
    );
    eventually("link up", || is_up(&manager, "b")).await;

    let (client, splice) = forward(&manager, "b", &header("backend"), MINUTE).await;
    assert_eq!(status(&manager, "b").unwrap().open_streams, 1);
    let (mut read, mut write) = client.into_split();
    let upload = pattern(1, SIZE);
    let expected = upload.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&upload).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut echoed = Vec::with_capacity(SIZE);
    within("20 MB echoed", read.read_to_end(&mut echoed))
        .await
        .unwrap();
    writer.await.unwrap();
    assert_eq!(echoed.len(), SIZE);
    assert!(echoed == expected, "echoed bytes differ");

    let spliced = within("splice done", splice).await.unwrap();
    assert_eq!(spliced.end, SpliceEnd::Finished);
    assert_eq!(spliced.tcp_to_quic, SIZE as u64);
    assert_eq!(spliced.quic_to_tcp, SIZE as u64);
    let link = status(&manager, "b").unwrap();
    assert_eq!(link.bytes_sent, SIZE as u64);
    assert_eq!(link.bytes_received, SIZE as u64);
    assert_eq!(link.open_streams, 0);
    manager.shutdown().await;
    ingress.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_over_one_link_all_complete() {
    let pki = LinkPki::new("link-ca");
    let echo = echo_server().await;
    let ingress = start_ingress(
        &pki,
        "ingress-1",
        udp(),
        ServiceSet::default(),
        resolver(&[("backend", vec![echo])]),
    );
    let manager = Arc::new(start_egress(
        &pki.egress_tls("egress-1"),
        &[("b", ingress.handle.local_addr())],
    ));
    eventually("link up", || is_up(&manager, "b")).await;

    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let manager = manager.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(i + 100, 32 * 1024 + i as usize);
            let mut stream = manager.open(&header("backend"), &[], "b").await.unwrap();
            // Opened streams stay open while the bytes move both ways.
            let writer = async {
                stream.send.write_all(&data).await.unwrap();
                stream.send.finish().unwrap();
            };
            let reader = stream.recv.read_to_end(1 << 20);
            let ((), echoed) = tokio::join!(writer, reader);
            assert!(echoed.unwrap() == data, "stream {i} corrupted");
        }));
    }
    within("200 streams", async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await;
    assert_eq!(status(&manager, "b").unwrap().open_streams, 0);
    manager.shutdown().await;
    ingress.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_response_flowing() {
    let pki = LinkPki::new("link-ca");
    let upload = upload_server().await;
    let ingress = start_ingress(
        &pki,
        "ingress-1",
        udp(),
        ServiceSet::default(),
        resolver(&[("upload", vec![upload])]),
    );
    let manager = start_egress(
        &pki.egress_tls("egress-1"),
        &[("b", ingress.handle.local_addr())],
    );
    eventually("link up", || is_up(&manager, "b")).await;

    let (mut client, splice) = forward(&manager, "b", &header("upload"), MINUTE).await;
    let request = pattern(3, 3 * 1024 * 1024);
    client.write_all(&request).await.unwrap();
    client.shutdown().await.unwrap(); // half-close: the server only answers after our FIN
    let mut response = Vec::new();
    within("response", client.read_to_end(&mut response))
        .await
        .unwrap();
    let newline = response.iter().position(|b| *b == b'\n').unwrap();
    assert_eq!(&response[..newline], request.len().to_string().as_bytes());
    assert!(response[newline + 1..] == pattern(9, 1 << 20)[..]);
    let spliced = within("splice", splice).await.unwrap();
    assert_eq!(spliced.end, SpliceEnd::Finished);
    manager.shutdown().await;
    ingress.handle.shutdown().await;
}

/// A TCP server that reads a little, then resets the connection (`reset`), or that holds the
/// connection without a byte either way (`silent`).
async fn misbehaving_server(reset: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if reset {
                    let mut buf = [0u8; 5];
                    let _ = tcp.read_exact(&mut buf).await;
                    tcp.set_zero_linger().unwrap();
                    drop(tcp);
                } else {
                    let mut sink = Vec::new();
                    let _ = tcp.read_to_end(&mut sink).await;
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_propagate_and_idle_streams_are_cut() {
    let pki = LinkPki::new("link-ca");
    let resetting = misbehaving_server(true).await;
    let silent = misbehaving_server(false).await;
    let ingress = start_ingress(
        &pki,
        "ingress-1",
        udp(),
        ServiceSet::default(),
        resolver(&[("reset", vec![resetting]), ("silent", vec![silent])]),
    );
    let manager = start_egress(
        &pki.egress_tls("egress-1"),
        &[("b", ingress.handle.local_addr())],
    );
    eventually("link up", || is_up(&manager, "b")).await;

    // Endpoint RST → ingress resets the QUIC stream → egress aborts the client with an RST.
    let (mut client, splice) = forward(&manager, "b", &header("reset"), MINUTE).await;
    client.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    let error = within("client reset", client.read_to_end(&mut rest))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    let spliced = within("splice", splice).await.unwrap();
    assert_eq!(
        spliced.end,
        SpliceEnd::QuicReset(codes::TCP_RESET.into_inner())
    );

    // Nothing moves: the egress's idle timeout cuts both sides.
    let idle = Duration::from_millis(300);
    let (mut client, splice) = forward(&manager, "b", &header("silent"), idle).await;
    let spliced = within("idle splice", splice).await.unwrap();
    assert_eq!(spliced.end, SpliceEnd::IdleTimeout);
    let mut rest = Vec::new();
    let ended = within("client cut", client.read_to_end(&mut rest)).await;
    assert!(
        ended.is_err() || rest.is_empty(),
        "the client must see the end: {ended:?}"
    );
    eventually("no open stream", || {
        status(&manager, "b").unwrap().open_streams == 0
    })
    .await;
    manager.shutdown().await;
    ingress.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_of_another_ca_is_refused_at_the_handshake() {
    let pki = LinkPki::new("link-ca");
    let other = LinkPki::new("other-ca");
    let ingress = start_ingress(
        &pki,
        "ingress-1",
        udp(),
        ServiceSet::default(),
        resolver(&[]),
    );
    let address = ingress.handle.local_addr();
    // Trusts the right CA for the server, but presents a certificate of another CA.
    let (cert, key) = other.leaf("intruder", &[]);
    let foreign = LinkTls::new(pki.ca_pem(), cert, key);

    // Raw: whatever the client believes of its handshake, the connection dies before a hello
    // is answered.
    let socket = udp();
    socket.set_nonblocking(true).unwrap();
    let endpoint = Endpoint::new(
        EndpointConfig::default(),
        None,
        socket,
        Arc::new(TokioRuntime),
    )
    .unwrap();
    let outcome = within("foreign handshake", async {
        let conn = endpoint
            .connect_with(foreign.client_config().unwrap(), address, LINK_SERVER_NAME)
            .unwrap()
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let hello = Hello {
            zone: "zone-x".into(),
            node: "intruder".into(),
            version: "test".into(),
        };
        write_frame(&mut send, &hello)
            .await
            .map_err(|e| e.to_string())?;
        read_frame::<HelloAck>(&mut recv, Some(DEADLINE))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let error = outcome.expect_err("a foreign client certificate must be refused");
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("alert"),
        "{error}"
    );

    // Through the manager: never up, with the reason in its status.
    let manager = start_egress(&foreign, &[("b", address)]);
    eventually("a failed attempt", || {
        status(&manager, "b").is_some_and(|link| link.last_error.is_some())
    })
    .await;
    let link = status(&manager, "b").unwrap();
    assert_ne!(link.state, LinkState::Up);
    assert!(link.remote_node.is_none());
    manager.shutdown().await;

    // The other way round: an ingress certificate without the `ze-link` name is refused by
    // the egress.
    let (cert, key) = pki.leaf("ingress-unnamed", &["ingress.example"]);
    let unnamed = spawn_ingress(
        udp(),
        &LinkTls::new(pki.ca_pem(), cert, key),
        "zone-b".into(),
        "ingress-unnamed".into(),
        watch::channel(Arc::new(ServiceSet::default())).1,
        resolver(&[]),
    )
    .unwrap();
    let manager = start_egress(&pki.egress_tls("egress-1"), &[("u", unnamed.local_addr())]);
    eventually("a failed attempt", || {
        status(&manager, "u").is_some_and(|link| link.last_error.is_some())
    })
    .await;
    let error = status(&manager, "u").unwrap().last_error.unwrap();
    assert!(error.contains("certificate"), "{error}");
    manager.shutdown().await;
    unnamed.shutdown().await;
    ingress.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_headers_reset_only_their_stream() {
    let pki = LinkPki::new("link-ca");
    let echo = echo_server().await;
    let ingress = start_ingress(
        &pki,
        "ingress-1",
        udp(),
        ServiceSet::default(),
        resolver(&[("backend", vec![echo])]),
    );
    let tls = pki.egress_tls("egress-1");
    let (_endpoint, conn) = raw_link(&tls, ingress.handle.local_addr()).await;
    let (_ctl_send, _ctl_recv, ack) = raw_hello(&conn).await;
    assert_eq!(ack.node, "ingress-1");

    // A good stream, opened first and kept busy across the bad ones.
    let (mut good_send, mut good_recv) = conn.open_bi().await.unwrap();
    write_frame(&mut good_send, &header("backend"))
        .await
        .unwrap();
    let reply: StreamReply = read_frame(&mut good_recv, Some(DEADLINE)).await.unwrap();
    assert_eq!(reply, StreamReply::Accepted);
    good_send.write_all(b"before ").await.unwrap();

    // Garbage: an acceptable length, then bytes that are no header.
    let (mut garbage_send, mut garbage_recv) = conn.open_bi().await.unwrap();
    let mut garbage = 64u32.to_be_bytes().to_vec();
    garbage.extend([0xFF; 64]);
    garbage_send.write_all(&garbage).await.unwrap();
    let error = within(
        "garbage refused",
        read_frame::<StreamReply>(&mut garbage_recv, None),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, LinkError::Reset(code) if code == codes::BAD_HEADER.into_inner()),
        "{error:?}"
    );

    // Oversized: a length far above the header limit (nothing more is sent).
    let (mut big_send, mut big_recv) = conn.open_bi().await.unwrap();
    big_send
        .write_all(&(64 * 1024 * 1024u32).to_be_bytes())
        .await
        .unwrap();
    let error = within(
        "oversized refused",
        read_frame::<StreamReply>(&mut big_recv, None),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, LinkError::Reset(code) if code == codes::BAD_HEADER.into_inner()),
        "{error:?}"
    );

    // The good stream and the connection are unaffected.
    good_send.write_all(b"after").await.unwrap();
    good_send.finish().unwrap();
    let echoed = within("good stream", good_recv.read_to_end(1024))
        .await
        .unwrap();
    assert_eq!(echoed, b"before after");
    assert!(conn.close_reason().is_none());
    conn.close(codes::NO_ERROR, b"done");
    ingress.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_endpoint_is_refused_with_a_reason() {
    let pki = LinkPki::new("link-ca");
    let echo = echo_server().await;
    // A port nobody listens on: bound, then released.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let ingress = start_ingress(
        &pki,
        "ingress-1",
        udp(),
        ServiceSet::default(),
        resolver(&[("backend", vec![dead, echo]), ("gone", vec![dead])]),
    );
    let manager = start_egress(
        &pki.egress_tls("egress-1"),
        &[("b", ingress.handle.local_addr())],
    );
    eventually("link up", || is_up(&manager, "b")).await;

    match manager.open(&header("nowhere"), &[], "b").await {
        Err(LinkError::Refused(reason)) => {
            assert!(
                reason.contains("no endpoint of service nowhere"),
                "{reason}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match manager.open(&header("gone"), &[], "b").await {
        Err(LinkError::Refused(reason)) => assert!(reason.contains("reachable"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A refused dial tries the next endpoint: whichever the round robin starts with, it works.
    for _ in 0..2 {
        let mut stream = manager.open(&header("backend"), &[], "b").await.unwrap();
        stream.send.write_all(b"ping").await.unwrap();
        stream.send.finish().unwrap();
        assert_eq!(stream.recv.read_to_end(16).await.unwrap(), b"ping");
    }
    assert!(matches!(
        manager.open(&header("backend"), &[], "nope").await,
        Err(LinkError::UnknownLink(_))
    ));
    assert_eq!(status(&manager, "b").unwrap().open_streams, 0);
    manager.shutdown().await;
    ingress.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_reconnects_after_the_ingress_restarts_on_the_same_port() {
    let pki = LinkPki::new("link-ca");
    let echo = echo_server().await;
    let services = ServiceSet {
        services: vec![service("backend", "v1", 1)],
        ingresses: vec![],
    };
    let table = [("backend", vec![echo])];
    let ingress = start_ingress(&pki, "ingress-1", udp(), services.clone(), resolver(&table));
    let address = ingress.handle.local_addr();
    let manager = start_egress(&pki.egress_tls("egress-1"), &[("b", address)]);
    let none = BTreeMap::new();
    eventually("link up", || is_up(&manager, "b")).await;
    eventually("services", || {
        manager.pick(MESH, "backend", &none).is_some()
    })
    .await;

    ingress.handle.shutdown().await;
    eventually("link down", || !is_up(&manager, "b")).await;
    assert_eq!(manager.pick(MESH, "backend", &none), None);
    assert!(manager.services().borrow().is_empty());

    // The same UDP port, once the old endpoint released it.
    let deadline = Instant::now() + DEADLINE;
    let socket = loop {
        match UdpSocket::bind(address) {
            Ok(socket) => break socket,
            Err(e) => {
                assert!(Instant::now() < deadline, "port not released: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let restarted = start_ingress(&pki, "ingress-1", socket, services, resolver(&table));
    eventually("link up again", || is_up(&manager, "b")).await;
    eventually("services again", || {
        manager.pick(MESH, "backend", &none).is_some()
    })
    .await;
    let link = status(&manager, "b").unwrap();
    assert!(link.reconnects >= 1, "{link:?}");
    assert!(link.rtt_ms.is_some());
    let mut stream = manager.open(&header("backend"), &[], "b").await.unwrap();
    stream.send.write_all(b"again").await.unwrap();
    stream.send.finish().unwrap();
    assert_eq!(stream.recv.read_to_end(16).await.unwrap(), b"again");
    manager.shutdown().await;
    restarted.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertised_ingresses_are_linked_and_picks_follow_instances() {
    let pki = LinkPki::new("link-ca");
    let socket_a = udp();
    let socket_b = udp();
    let (addr_a, addr_b) = (
        socket_a.local_addr().unwrap(),
        socket_b.local_addr().unwrap(),
    );
    let ingresses = vec![
        IngressAddr {
            name: "ingress-a".into(),
            address: addr_a.ip().to_string(),
            port: addr_a.port(),
        },
        IngressAddr {
            name: "ingress-b".into(),
            address: addr_b.ip().to_string(),
            port: addr_b.port(),
        },
    ];
    let set = |instances: u32| ServiceSet {
        services: vec![service("backend", "v1", instances)],
        ingresses: ingresses.clone(),
    };
    let ingress_a = start_ingress(&pki, "ingress-a", socket_a, set(1), resolver(&[]));
    let ingress_b = start_ingress(&pki, "ingress-b", socket_b, set(3), resolver(&[]));
    let manager = start_egress(&pki.egress_tls("egress-1"), &[("a", addr_a)]);
    manager.seed_picks(42);

    let discovered = "zone-b/ingress-b";
    eventually("discovered link up", || is_up(&manager, discovered)).await;
    assert_eq!(manager.links().len(), 2, "{:?}", manager.links());
    assert_eq!(
        status(&manager, discovered).unwrap().origin,
        LinkOrigin::Discovered
    );
    let none = BTreeMap::new();
    eventually("both advertise", || {
        manager
            .services()
            .borrow()
            .candidates(MESH, "backend", &none)
            == vec![("a".to_string(), 1), (discovered.to_string(), 3)]
    })
    .await;

    // Weighted by instances: 1 : 3.
    let rounds = 4000;
    let to_b = (0..rounds)
        .filter(|_| manager.pick(MESH, "backend", &none).as_deref() == Some(discovered))
        .count();
    let share = to_b as f64 / rounds as f64;
    assert!((share - 0.75).abs() < 0.03, "share of b: {share}");

    // A link that goes down is skipped.
    ingress_b.handle.shutdown().await;
    eventually("b down", || !is_up(&manager, discovered)).await;
    for _ in 0..100 {
        assert_eq!(manager.pick(MESH, "backend", &none).as_deref(), Some("a"));
    }
    // Still advertised by a: the discovered link stays and keeps trying.
    assert!(status(&manager, discovered).is_some());

    // No longer advertised: removed.
    ingress_a.services_tx.send_replace(Arc::new(ServiceSet {
        services: vec![service("backend", "v1", 1)],
        ingresses: vec![],
    }));
    eventually("discovered link removed", || {
        status(&manager, discovered).is_none()
    })
    .await;
    manager.set_targets(Vec::new());
    assert!(manager.links().is_empty());
    manager.shutdown().await;
    ingress_a.handle.shutdown().await;
}

#[test]
fn link_tls_debug_hides_the_key() {
    let tls = LinkTls::new(b"ca".to_vec(), b"cert".to_vec(), b"SECRET".to_vec());
    let debug = format!("{tls:?}");
    assert!(
        debug.contains("<redacted>") && !debug.contains("SECRET"),
        "{debug}"
    );
    assert!(matches!(tls.server_config(), Err(LinkError::Config(_))));
}

#[test]
fn link_status_serializes_for_the_admin_api() {
    let status = LinkStatus {
        name: "b".into(),
        zone: "zone-b".into(),
        address: "192.0.2.10:10001".parse().unwrap(),
        origin: LinkOrigin::Static,
        state: LinkState::Up,
        remote_node: Some("ingress-1".into()),
        rtt_ms: Some(1.5),
        open_streams: 2,
        bytes_sent: 3,
        bytes_received: 4,
        reconnects: 5,
        streams_refused: 7,
        services: 6,
        last_error: None,
    };
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["streamsRefused"], 7);
    assert_eq!(json["state"], "up");
    assert_eq!(json["address"], "192.0.2.10:10001");
    assert_eq!(json["rttMs"], 1.5);
    assert_eq!(json["openStreams"], 2);
    assert_eq!(json["origin"], "static");
}

/// A UDP relay between an egress and an ingress that can stop passing the ingress's datagrams
/// (replies, acknowledgements) while still passing the egress's.
struct OneWayRelay {
    addr: SocketAddr,
    hold_replies: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl OneWayRelay {
    async fn start(ingress: SocketAddr) -> OneWayRelay {
        use std::sync::atomic::{AtomicBool, Ordering};
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let hold_replies = Arc::new(AtomicBool::new(false));
        let hold = hold_replies.clone();
        let task = tokio::spawn(async move {
            let mut egress = None;
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if from == ingress {
                    if let Some(to) = egress
                        && !hold.load(Ordering::Relaxed)
                    {
                        let _ = socket.send_to(&buf[..n], to).await;
                    }
                } else {
                    egress = Some(from);
                    let _ = socket.send_to(&buf[..n], ingress).await;
                }
            }
        });
        OneWayRelay {
            addr,
            hold_replies,
            task,
        }
    }

    fn hold_replies(&self, hold: bool) {
        self.hold_replies
            .store(hold, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for OneWayRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A new connection's first bytes (its ClientHello) travel with the stream's header, so the
/// destination has them one link round trip after the open starts, before the ingress's reply
/// is back at the egress (issue 17: the link's new-connection time to first byte). Shown
/// without timing: the ingress's datagrams are held back, so the egress cannot have heard the
/// reply when the destination reads the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_bytes_reach_the_destination_before_the_reply_is_back() {
    let pki = LinkPki::new("link-ca");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let destination = listener.local_addr().unwrap();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut first = [0u8; 12];
        socket.read_exact(&mut first).await.unwrap();
        let _ = got_tx.send(first.to_vec());
        socket.write_all(b"server-hello").await.unwrap();
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest).await;
    });
    let ingress = start_ingress(
        &pki,
        "ingress-1",
        udp(),
        ServiceSet::default(),
        resolver(&[("backend", vec![destination])]),
    );
    let relay = OneWayRelay::start(ingress.handle.local_addr()).await;
    let manager = Arc::new(start_egress(
        &pki.egress_tls("egress-1"),
        &[("b", relay.addr)],
    ));
    eventually("link up", || is_up(&manager, "b")).await;

    relay.hold_replies(true);
    let opener = manager.clone();
    let open =
        tokio::spawn(async move { opener.open(&header("backend"), b"client-hello", "b").await });
    let first = tokio::time::timeout(Duration::from_secs(10), got_rx)
        .await
        .expect("the destination got no byte while the ingress's reply was held back")
        .unwrap();
    assert_eq!(first, b"client-hello");
    assert!(
        !open.is_finished(),
        "the reply was held back, yet the open finished"
    );
    relay.hold_replies(false);
    let mut stream = within("the open, once replies pass", open)
        .await
        .unwrap()
        .unwrap();
    let mut answer = [0u8; 12];
    within(
        "the destination's answer",
        stream.recv.read_exact(&mut answer),
    )
    .await
    .unwrap();
    assert_eq!(&answer, b"server-hello");
    stream.send.finish().unwrap();
    within("the destination sees the end", server)
        .await
        .unwrap();
    manager.shutdown().await;
    ingress.handle.shutdown().await;
}

/// An ingress that has just started advertises the zone's ingresses from a gossip view that may
/// not hold the others yet. A discovered link that is up, with connections spliced through it,
/// must not be dropped for that: it is kept while it is up, and removed once it is down and
/// no longer advertised. (The chaos soak found a connection reset through ingress-b2 the moment
/// a killed ingress-b1 came back and advertised only itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_link_that_is_up_survives_an_advertisement_that_omits_it() {
    let pki = LinkPki::new("link-ca");
    let echo = echo_server().await;
    let socket_a = udp();
    let socket_b = udp();
    let (addr_a, addr_b) = (
        socket_a.local_addr().unwrap(),
        socket_b.local_addr().unwrap(),
    );
    let ingress = |name: &str, addr: SocketAddr| IngressAddr {
        name: name.into(),
        address: addr.ip().to_string(),
        port: addr.port(),
    };
    let both = vec![ingress("ingress-a", addr_a), ingress("ingress-b", addr_b)];
    let set = |ingresses: Vec<IngressAddr>| ServiceSet {
        services: vec![service("backend", "v1", 1)],
        ingresses,
    };
    let table = [("backend", vec![echo])];
    let ingress_a = start_ingress(
        &pki,
        "ingress-a",
        socket_a,
        set(both.clone()),
        resolver(&table),
    );
    let ingress_b = start_ingress(&pki, "ingress-b", socket_b, set(both), resolver(&table));
    let manager = start_egress(&pki.egress_tls("egress-1"), &[("a", addr_a)]);
    let discovered = "zone-b/ingress-b";
    eventually("discovered link up", || is_up(&manager, discovered)).await;

    // A connection spliced through the discovered link.
    let mut stream = manager
        .open(&header("backend"), &[], discovered)
        .await
        .unwrap();
    stream.send.write_all(b"before").await.unwrap();
    let mut got = [0u8; 6];
    within("echo before", stream.recv.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(&got, b"before");

    // ingress-a, as if just restarted, advertises only itself (with 2 instances, so the set
    // can be seen arriving); a later set (3 instances) is read only once the egress has dealt
    // with that one, discovery included.
    let only_a = |instances: u32| ServiceSet {
        services: vec![service("backend", "v1", instances)],
        ingresses: vec![ingress("ingress-a", addr_a)],
    };
    let instances_of_a = |manager: &LinkManager| {
        manager
            .services()
            .borrow()
            .candidates(MESH, "backend", &BTreeMap::new())
            .into_iter()
            .find(|(link, _)| link == "a")
            .map(|(_, n)| n)
    };
    ingress_a.services_tx.send_replace(Arc::new(only_a(2)));
    eventually("the partial set arrived", || {
        instances_of_a(&manager) == Some(2)
    })
    .await;
    ingress_a.services_tx.send_replace(Arc::new(only_a(3)));
    eventually("the partial set dealt with", || {
        instances_of_a(&manager) == Some(3)
    })
    .await;
    assert!(is_up(&manager, discovered), "{:?}", manager.links());
    stream.send.write_all(b"after!").await.unwrap();
    within("echo after", stream.recv.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(&got, b"after!");
    stream.send.finish().unwrap();

    // Once it is down and no longer advertised, it is removed.
    ingress_b.handle.shutdown().await;
    eventually("discovered link removed", || {
        status(&manager, discovered).is_none()
    })
    .await;
    manager.shutdown().await;
    ingress_a.handle.shutdown().await;
}
