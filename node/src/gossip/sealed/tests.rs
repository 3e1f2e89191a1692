use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{Socket, Transport, UdpSocket};
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, ChitchatMessage, FailureDetectorConfig,
};

use super::keyring::*;
use super::relay::*;
use super::wire::*;
use super::*;

const DEADLINE: Duration = Duration::from_secs(20);

fn key_a() -> String {
    STANDARD.encode([0xa1u8; KEY_BYTES])
}

fn key_b() -> String {
    STANDARD.encode([0xb2u8; KEY_BYTES])
}

fn ring(lines: &[String]) -> Keyring {
    Keyring::parse(&lines.join("\n")).unwrap()
}

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn bad_cluster() -> ChitchatEnvelope {
    ChitchatEnvelope {
        version: chitchat::ProtocolVersion::V1,
        message: ChitchatMessage::BadCluster,
    }
}

/// Polls `check` until it holds, failing after [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn keyring_parse_errors_name_the_line() {
    assert!(matches!(Keyring::parse(""), Err(KeyringError::NoKey)));
    assert!(matches!(
        Keyring::parse("# only a comment\n\n   \n"),
        Err(KeyringError::NoKey)
    ));
    let not_base64 = format!("# keys\n{}\nnot base64!\n", key_a());
    assert!(matches!(
        Keyring::parse(&not_base64),
        Err(KeyringError::NotBase64 { line: 3 })
    ));
    let short = format!("\n# rotated\n{}\n", STANDARD.encode([1u8; 16]));
    let err = Keyring::parse(&short).unwrap_err();
    assert!(matches!(
        err,
        KeyringError::WrongLength { line: 3, len: 16 }
    ));
    assert_eq!(err.to_string(), "line 3: the key is 16 bytes, expected 32");

    let ring = Keyring::parse(&format!("# new\n  {}  \n\n# old\n{}\n", key_b(), key_a())).unwrap();
    assert_eq!(ring.key_count(), 2);
    let debug = format!("{ring:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(
        !debug.contains(&key_a()) && !debug.contains("161"),
        "{debug}"
    );
}

#[test]
fn keyring_load_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gossip.key");
    let key = generate_key();
    assert_eq!(STANDARD.decode(&key).unwrap().len(), KEY_BYTES);
    assert_ne!(key, generate_key());
    std::fs::write(&path, format!("{key}\n")).unwrap();
    assert_eq!(Keyring::load(&path).unwrap().key_count(), 1);

    std::fs::write(&path, "# nothing\n").unwrap();
    let err = Keyring::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("gossip.key") && err.contains("no gossip key"),
        "{err}"
    );
    let missing = Keyring::load(dir.path().join("missing")).unwrap_err();
    assert!(matches!(missing, KeyringError::Read { .. }), "{missing}");
}

#[test]
fn seal_open_round_trip() {
    let ring = ring(&[key_a()]);
    let now = crate::unix_ms();
    let sealed = ring.seal(b"chitchat bytes", now).unwrap();
    assert_eq!(sealed.len(), NONCE_BYTES + TIMESTAMP_BYTES + 14 + TAG_BYTES);
    let opened = ring.open(&sealed, now + 1).unwrap();
    assert_eq!(opened.datagram, b"chitchat bytes");
    assert_eq!(opened.timestamp_ms, now);
    // Fresh nonce every time.
    assert_ne!(ring.seal(b"chitchat bytes", now).unwrap(), sealed);
}

#[test]
fn tampered_byte_fails() {
    let ring = ring(&[key_a()]);
    let now = crate::unix_ms();
    let sealed = ring.seal(b"some gossip state", now).unwrap();
    for position in 0..sealed.len() {
        let mut tampered = sealed.clone();
        tampered[position] ^= 0x01;
        assert_eq!(
            ring.open(&tampered, now).unwrap_err(),
            OpenError::AuthFailed,
            "flipped byte {position}"
        );
    }
    assert_eq!(
        ring.open(&sealed[..NONCE_BYTES + TAG_BYTES], now)
            .unwrap_err(),
        OpenError::Truncated
    );
    assert_eq!(
        ring.open(&sealed[..sealed.len() - 1], now).unwrap_err(),
        OpenError::AuthFailed
    );
}

#[test]
fn wrong_key_fails() {
    let now = crate::unix_ms();
    let sealed = ring(&[key_a()]).seal(b"state", now).unwrap();
    assert_eq!(
        ring(&[key_b()]).open(&sealed, now).unwrap_err(),
        OpenError::AuthFailed
    );
}

#[test]
fn rotation_first_key_seals_every_key_opens() {
    let now = crate::unix_ms();
    let sender = ring(&[key_b(), key_a()]);
    let receiver = ring(&[key_a(), key_b()]);
    let sealed = sender.seal(b"rotated", now).unwrap();
    assert_eq!(receiver.open(&sealed, now).unwrap().datagram, b"rotated");
    // The sender sealed with B (its first key), not A.
    assert_eq!(
        ring(&[key_a()]).open(&sealed, now).unwrap_err(),
        OpenError::AuthFailed
    );
    let back = receiver.seal(b"old key", now).unwrap();
    assert_eq!(sender.open(&back, now).unwrap().datagram, b"old key");
}

#[test]
fn stale_timestamp_is_rejected() {
    let ring = ring(&[key_a()]);
    let now = crate::unix_ms();
    for (stamped, fresh) in [
        (now - 59_000, true),
        (now + 59_000, true),
        (now - 61_000, false),
        (now + 61_000, false),
    ] {
        let sealed = ring.seal(b"x", stamped).unwrap();
        match ring.open(&sealed, now) {
            Ok(_) => assert!(fresh, "{stamped} accepted"),
            Err(e) => {
                assert!(!fresh, "{stamped}: {e}");
                assert_eq!(e.reason(), DropReason::Stale);
            }
        }
    }
}

#[test]
fn fragmentation_round_trip_150kb() {
    let ring = ring(&[key_a()]);
    let now = crate::unix_ms();
    let mut payload = vec![0u8; 150_000];
    OsRng.fill_bytes(&mut payload);
    let sealed = ring.seal(&payload, now).unwrap();
    let frames = fragment(42, &sealed).unwrap();
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|f| f.len() <= MAX_DATAGRAM_BYTES));

    let from: SocketAddr = "192.0.2.1:7000".parse().unwrap();
    let mut reassembler = Reassembler::default();
    let start = Instant::now();
    let mut outcome = Reassembly::Incomplete;
    for frame in frames.iter().rev() {
        assert_eq!(outcome, Reassembly::Incomplete);
        outcome = reassembler.push(from, &parse_frame(frame).unwrap(), start);
    }
    let Reassembly::Complete(message) = outcome else {
        panic!("not complete: {outcome:?}");
    };
    assert_eq!(message, sealed);
    assert_eq!(ring.open(&message, now).unwrap().datagram, payload);
    assert!(reassembler.partials.is_empty());

    // A chitchat-sized datagram fits two fragments.
    let full = ring.seal(&[7u8; MAX_DATAGRAM_BYTES], now).unwrap();
    assert_eq!(fragment(1, &full).unwrap().len(), 2);
    assert_eq!(
        fragment(1, &vec![0u8; MAX_MESSAGE_BYTES + 1]).unwrap_err(),
        DropReason::Oversized
    );
}

fn frame_bytes(id: u64, index: u8, count: u8, chunk: &[u8]) -> Vec<u8> {
    let mut d = FRAME_MAGIC.to_vec();
    d.push(FRAME_VERSION);
    d.extend_from_slice(&id.to_be_bytes());
    d.extend_from_slice(&[index, count]);
    d.extend_from_slice(chunk);
    d
}

#[test]
fn malformed_frames_are_refused() {
    let good = frame_bytes(1, 0, 2, b"abc");
    assert!(parse_frame(&good).is_ok());
    assert_eq!(parse_frame(b"junk").unwrap_err(), DropReason::Malformed);
    assert_eq!(
        parse_frame(&good[..FRAME_HEADER_BYTES]).unwrap_err(),
        DropReason::Malformed
    );
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 1;
    assert_eq!(parse_frame(&bad_magic).unwrap_err(), DropReason::Malformed);
    let mut bad_version = good.clone();
    bad_version[2] = 2;
    assert_eq!(
        parse_frame(&bad_version).unwrap_err(),
        DropReason::Malformed
    );
    for (index, count) in [(0, 0), (2, 2), (9, 3)] {
        assert_eq!(
            parse_frame(&frame_bytes(1, index, count, b"x")).unwrap_err(),
            DropReason::Malformed
        );
    }
    assert_eq!(
        parse_frame(&frame_bytes(1, 0, MAX_FRAGMENTS as u8 + 1, b"x")).unwrap_err(),
        DropReason::Oversized
    );
    let big = vec![0u8; MAX_CHUNK_BYTES + 1];
    assert_eq!(
        parse_frame(&frame_bytes(1, 0, 2, &big)).unwrap_err(),
        DropReason::Oversized
    );
}

#[test]
fn reassembly_limits() {
    let from: SocketAddr = "192.0.2.1:7000".parse().unwrap();
    let t0 = Instant::now();
    let mut r = Reassembler::default();
    let push =
        |r: &mut Reassembler, bytes: &[u8], now| r.push(from, &parse_frame(bytes).unwrap(), now);

    // At most MAX_PARTIAL_MESSAGES partial messages: the oldest is evicted.
    for id in 0..=MAX_PARTIAL_MESSAGES as u64 {
        let now = t0 + Duration::from_millis(id);
        assert_eq!(
            push(&mut r, &frame_bytes(id, 0, 2, b"a"), now),
            Reassembly::Incomplete
        );
    }
    assert_eq!(r.partials.len(), MAX_PARTIAL_MESSAGES);
    assert!(!r.partials.contains_key(&(from, 0)));
    assert_eq!(r.take_discarded(), 1);

    // Partial messages expire after REASSEMBLY_TIMEOUT.
    let later = t0 + REASSEMBLY_TIMEOUT + Duration::from_secs(1);
    assert_eq!(
        push(&mut r, &frame_bytes(1, 1, 2, b"b"), later),
        Reassembly::Incomplete
    );
    assert_eq!(r.partials.len(), 1);
    assert_eq!(r.take_discarded(), MAX_PARTIAL_MESSAGES as u64);

    // Duplicate fragment and inconsistent count.
    let t1 = later;
    assert_eq!(
        push(&mut r, &frame_bytes(1, 1, 2, b"b"), t1),
        Reassembly::Drop(DropReason::Malformed)
    );
    assert_eq!(
        push(&mut r, &frame_bytes(1, 0, 3, b"a"), t1),
        Reassembly::Drop(DropReason::Malformed)
    );
    assert!(!r.partials.contains_key(&(from, 1)));

    // The same id from another source is another message.
    let other: SocketAddr = "192.0.2.2:7000".parse().unwrap();
    assert_eq!(
        push(&mut r, &frame_bytes(5, 0, 2, b"x"), t1),
        Reassembly::Incomplete
    );
    assert_eq!(
        r.push(
            other,
            &parse_frame(&frame_bytes(5, 1, 2, b"y")).unwrap(),
            t1
        ),
        Reassembly::Incomplete
    );

    // Total size is bounded by MAX_MESSAGE_BYTES.
    let chunk = vec![0u8; MAX_CHUNK_BYTES];
    let count = MAX_FRAGMENTS as u8;
    for index in 0..count - 1 {
        assert_eq!(
            push(&mut r, &frame_bytes(9, index, count, &chunk), t1),
            Reassembly::Incomplete
        );
    }
    assert_eq!(
        push(&mut r, &frame_bytes(9, count - 1, count, &chunk), t1),
        Reassembly::Drop(DropReason::Oversized)
    );
    assert!(!r.partials.contains_key(&(from, 9)));
}

#[test]
fn inbound_drops_replays() {
    let ring = ring(&[key_a()]);
    let now_ms = crate::unix_ms();
    let frames = fragment(3, &ring.seal(b"syn", now_ms).unwrap()).unwrap();
    let from: SocketAddr = "192.0.2.1:7000".parse().unwrap();
    let mut inbound = Inbound::default();
    let now = Instant::now();
    assert_eq!(
        inbound.accept(&ring, from, &frames[0], now, now_ms),
        Ok(Some(b"syn".to_vec()))
    );
    assert_eq!(
        inbound.accept(&ring, from, &frames[0], now, now_ms),
        Err(DropReason::Replayed)
    );
    assert_eq!(
        inbound.accept(&ring, from, b"garbage", now, now_ms),
        Err(DropReason::Malformed)
    );
}

#[test]
fn auth_warnings_are_rate_limited() {
    let mut w = AuthWarnings::default();
    let ip: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();
    let now = Instant::now();
    assert!(w.should_warn(ip, now));
    assert!(!w.should_warn(ip, now + Duration::from_secs(1)));
    assert!(w.should_warn(Ipv4Addr::new(192, 0, 2, 2).into(), now));
    assert!(w.should_warn(ip, now + AUTH_WARN_INTERVAL));
}

#[tokio::test]
async fn sockets_exchange_envelopes_and_refuse_local_injection() {
    let keys = ring(&[key_a()]);
    let a = SealedUdp::bind(loopback(), keys.clone()).await.unwrap();
    let b = SealedUdp::bind(loopback(), keys).await.unwrap();
    let mut sa = a.open(a.local_addr()).await.unwrap();
    let mut sb = b.open(b.local_addr()).await.unwrap();
    assert!(a.open(a.local_addr()).await.is_err());
    assert_eq!(sa.local_addr().unwrap(), a.local_addr());

    sa.send(b.local_addr(), bad_cluster()).await.unwrap();
    let got = tokio::time::timeout(DEADLINE, sb.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.from_addr, a.local_addr());
    assert_eq!(got.envelope, bad_cluster());
    sb.send(got.from_addr, bad_cluster()).await.unwrap();
    let back = tokio::time::timeout(DEADLINE, sa.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.from_addr, b.local_addr());

    // A local process sending plaintext chitchat to the inner socket is ignored.
    let inner_b = *b.inner_addr.get().unwrap();
    let mut intruder = UdpSocket::open(loopback()).await.unwrap();
    intruder.send(inner_b, bad_cluster()).await.unwrap();
    sa.send(b.local_addr(), bad_cluster()).await.unwrap();
    let got = tokio::time::timeout(DEADLINE, sb.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.from_addr, a.local_addr());
    eventually("local injection counted", || async {
        b.dropped(DropReason::LocalInjection) == 1
    })
    .await;

    // The first datagram a reaches a plain socket is sealed with the key.
    let peer = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    sa.send(peer.local_addr().unwrap(), bad_cluster())
        .await
        .unwrap();
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    let (len, from) = tokio::time::timeout(DEADLINE, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, a.local_addr());
    let frame = parse_frame(&buf[..len]).unwrap();
    assert_eq!(frame.count, 1);
    assert!(ring(&[key_a()]).open(frame.chunk, crate::unix_ms()).is_ok());
    drop((sa, sb));
}

#[tokio::test]
async fn relay_table_is_bounded() {
    let mut a = SealedUdp::bind(loopback(), ring(&[key_a()])).await.unwrap();
    a.max_relays = 1;
    let mut sa = a.open(a.local_addr()).await.unwrap();
    let p1 = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    let p2 = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    sa.send(p1.local_addr().unwrap(), bad_cluster())
        .await
        .unwrap();
    sa.send(p1.local_addr().unwrap(), bad_cluster())
        .await
        .unwrap();
    assert_eq!(a.dropped(DropReason::RelayLimit), 0);
    let outcome = sa
        .send(p2.local_addr().unwrap(), bad_cluster())
        .await
        .unwrap();
    assert_eq!(outcome.num_bytes_sent, 0);
    assert_eq!(a.dropped(DropReason::RelayLimit), 1);
}

#[tokio::test]
async fn dropping_the_socket_releases_the_port() {
    let a = SealedUdp::bind(loopback(), ring(&[key_a()])).await.unwrap();
    let addr = a.local_addr();
    let mut sa = a.open(addr).await.unwrap();
    let peer = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    sa.send(peer.local_addr().unwrap(), bad_cluster())
        .await
        .unwrap();
    drop((sa, a));
    eventually("the external port is free again", || async {
        tokio::net::UdpSocket::bind(addr).await.is_ok()
    })
    .await;
}

struct TestNode {
    id: ChitchatId,
    transport: SealedUdp,
    handle: ChitchatHandle,
}

async fn start_node(name: &str, keyring: Keyring, seeds: &[SocketAddr]) -> TestNode {
    let transport = SealedUdp::bind(loopback(), keyring).await.unwrap();
    let addr = transport.local_addr();
    let id = ChitchatId::new(name.to_string(), 1, addr);
    let interval = Duration::from_millis(50);
    let config = ChitchatConfig {
        chitchat_id: id.clone(),
        cluster_id: "zone-egress/test".to_string(),
        gossip_interval: interval,
        listen_addr: addr,
        seed_nodes: seeds.iter().map(|s| s.to_string()).collect(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: 8.0,
            sampling_window_size: 1000,
            max_interval: Duration::from_secs(10),
            initial_interval: interval,
            dead_node_grace_period: Duration::from_secs(3600),
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V1,
    };
    let initial = vec![("name".to_string(), format!("value-of-{name}"))];
    let handle = chitchat::spawn_chitchat(config, initial, &transport)
        .await
        .unwrap();
    TestNode {
        id,
        transport,
        handle,
    }
}

/// Whether `node` holds `other` live with `key = value`.
async fn sees(node: &TestNode, other: &TestNode, key: &str, value: &str) -> bool {
    node.handle
        .with_chitchat(|c| {
            c.live_nodes().any(|id| *id == other.id)
                && c.node_state(&other.id).and_then(|s| s.get(key)) == Some(value)
        })
        .await
}

/// Node names `node` holds any state of.
async fn known_names(node: &TestNode) -> Vec<String> {
    node.handle
        .with_chitchat(|c| {
            let mut names: Vec<String> = c
                .node_states()
                .keys()
                .chain(c.live_nodes())
                .map(|id| id.node_id.to_string())
                .collect();
            names.sort();
            names.dedup();
            names
        })
        .await
}

async fn all_see_each_other(nodes: &[&TestNode]) -> bool {
    for node in nodes {
        for other in nodes {
            if node.id != other.id
                && !sees(
                    node,
                    other,
                    "name",
                    &format!("value-of-{}", other.id.node_id),
                )
                .await
            {
                return false;
            }
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chitchat_nodes_converge_over_sealed_udp() {
    let keys = ring(&[key_a()]);
    let a = start_node("a", keys.clone(), &[]).await;
    let b = start_node("b", keys.clone(), &[a.transport.local_addr()]).await;
    let c = start_node("c", keys, &[a.transport.local_addr()]).await;
    let abc = [&a, &b, &c];
    eventually("three sealed nodes converge", || all_see_each_other(&abc)).await;
    for node in [&a, &b, &c] {
        assert_eq!(node.transport.dropped(DropReason::AuthFailed), 0);
        assert_eq!(node.transport.dropped(DropReason::LocalInjection), 0);
    }
    for node in [a, b, c] {
        node.handle.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_another_key_never_joins() {
    let good = ring(&[key_a()]);
    let a = start_node("a", good.clone(), &[]).await;
    let b = start_node("b", good, &[a.transport.local_addr()]).await;
    let intruder = start_node("intruder", ring(&[key_b()]), &[a.transport.local_addr()]).await;
    let check_no_intruder = || async {
        for node in [&a, &b] {
            let names = known_names(node).await;
            assert!(!names.contains(&"intruder".to_string()), "{names:?}");
        }
        assert_eq!(known_names(&intruder).await, ["intruder"]);
    };
    let ab = [&a, &b];
    eventually("a and b converge, intruder refused", || async {
        check_no_intruder().await;
        all_see_each_other(&ab).await && a.transport.dropped(DropReason::AuthFailed) >= 3
    })
    .await;
    // The good nodes keep refusing while they gossip on.
    let refused = a.transport.dropped(DropReason::AuthFailed);
    b.handle
        .with_chitchat(|c| c.self_node_state().set("round", "2"))
        .await;
    eventually("more state converges", || async {
        check_no_intruder().await;
        sees(&a, &b, "round", "2").await && a.transport.dropped(DropReason::AuthFailed) > refused
    })
    .await;
    for node in [a, b, intruder] {
        node.handle.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_datagrams_change_nothing() {
    let keys = ring(&[key_a()]);
    let a = start_node("a", keys.clone(), &[]).await;
    let b = start_node("b", keys.clone(), &[a.transport.local_addr()]).await;
    let ab = [&a, &b];
    eventually("a and b converge", || all_see_each_other(&ab)).await;

    // Capture a genuine sealed Syn: a third node gossips to a plain socket as its seed.
    let sniffer = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    let d = start_node("d", keys, &[sniffer.local_addr().unwrap()]).await;
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    let (len, _) = tokio::time::timeout(DEADLINE, sniffer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let captured = buf[..len].to_vec();
    d.handle.shutdown().await.unwrap();
    assert_eq!(parse_frame(&captured).unwrap().count, 1);

    let target = a.transport.local_addr();
    let mut flipped_body = captured.clone();
    flipped_body[FRAME_HEADER_BYTES + NONCE_BYTES + 3] ^= 0x40;
    let mut flipped_tag = captured.clone();
    *flipped_tag.last_mut().unwrap() ^= 0x01;
    let mut forged = frame_bytes(7, 0, 1, &[0u8; 100]);
    forged.extend_from_slice(b"not sealed");
    for datagram in [&b"garbage"[..], &flipped_body, &flipped_tag, &forged] {
        sniffer.send_to(datagram, target).await.unwrap();
    }
    eventually("tampered datagrams dropped", || async {
        a.transport.dropped(DropReason::Malformed) >= 1
            && a.transport.dropped(DropReason::AuthFailed) >= 3
    })
    .await;

    // Nothing changed and a still gossips.
    b.handle
        .with_chitchat(|c| c.self_node_state().set("after", "1"))
        .await;
    eventually("a still converges", || sees(&a, &b, "after", "1")).await;
    assert_eq!(known_names(&a).await, ["a", "b"]);

    // The genuine datagram is accepted once (a answers it), its replay is dropped.
    sniffer.send_to(&captured, target).await.unwrap();
    tokio::time::timeout(DEADLINE, async {
        // Skip what d sent before it stopped.
        while sniffer.recv_from(&mut buf).await.unwrap().1 != target {}
    })
    .await
    .unwrap();
    sniffer.send_to(&captured, target).await.unwrap();
    eventually("replay dropped", || async {
        a.transport.dropped(DropReason::Replayed) == 1
    })
    .await;
    assert_eq!(a.transport.dropped(DropReason::Stale), 0);
    for node in [a, b] {
        node.handle.shutdown().await.unwrap();
    }
}

/// The fuzz target's entry runs on stable too: a small and a fragmented payload round-trip and
/// replay, and garbage from several senders is refused without a panic.
#[test]
fn the_fuzz_entry_holds_its_contract_on_fixed_inputs() {
    let mut small = vec![1u8];
    small.extend_from_slice(b"gossip syn");
    super::fuzz_inbound(&small);
    let mut big = vec![3u8];
    big.extend(std::iter::repeat_n(7u8, 70_000));
    super::fuzz_inbound(&big);
    let mut garbage = vec![0u8];
    for sender in 0..6u8 {
        garbage.extend_from_slice(&[sender, 0, 20]);
        garbage.extend_from_slice(b"zg\x01\0\0\0\0\0\0\0\x01\0\x02garb");
    }
    super::fuzz_inbound(&garbage);
    super::fuzz_inbound(&[]);
}
