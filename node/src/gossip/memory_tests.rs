//! The in-memory tier: whole gossip planes (chitchat and this node's zone view) over chitchat's
//! `ChannelTransport`, on a paused tokio clock. No sockets and no wall time: partitions
//! (`remove_link`) and datagram loss (`TransportExt::drop_message`) are exact, and the clock
//! advances only when every task waits, so a hundred gossip rounds take milliseconds. The
//! process tier (`cluster-tests`) and the container tier test the same behaviour over real UDP.

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::{ChannelTransport, Transport, TransportExt};
use proto::MemberState;
use proto::member::{Lifecycle, keys};

use super::{Handle, Settings, spawn};

const INTERVAL: Duration = Duration::from_millis(500);

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, u8::try_from(i + 1).unwrap()], 7946))
}

async fn node(i: usize, transport: Box<dyn Transport>) -> Handle {
    let name = format!("egress-{i}");
    spawn(Settings {
        name: name.clone(),
        zone: "zone-a".into(),
        generation: 1,
        transport,
        listen_addr: addr(i),
        advertise: addr(i),
        seeds: if i == 0 {
            Vec::new()
        } else {
            vec![addr(0).to_string()]
        },
        interval: INTERVAL,
        initial_keys: vec![
            (keys::ZONE.into(), "zone-a".into()),
            (keys::ROLE.into(), "egress".into()),
            (keys::LIFECYCLE.into(), Lifecycle::Serving.as_str().into()),
            (keys::READY.into(), "true".into()),
        ],
        dead_node_grace: super::DEAD_NODE_GRACE,
        left_grace: super::LEFT_GRACE,
    })
    .await
    .unwrap()
}

/// Members `observer` sees in `state`.
fn seen(observer: &Handle, state: MemberState) -> usize {
    observer.view().borrow().view.count(state)
}

/// Advances the paused clock one gossip round at a time until `done`, at most `rounds`;
/// returns the rounds it took.
async fn rounds_until(rounds: u32, mut done: impl FnMut() -> bool) -> Option<u32> {
    for round in 0..=rounds {
        if done() {
            return Some(round);
        }
        tokio::time::sleep(INTERVAL).await;
    }
    None
}

#[tokio::test(start_paused = true)]
async fn thirty_nodes_converge_and_a_partitioned_node_is_dead_then_back() {
    let transport = ChannelTransport::default();
    let mut nodes = Vec::new();
    for i in 0..30 {
        nodes.push(node(i, Box::new(transport.clone())).await);
    }
    let converged = rounds_until(40, || {
        nodes.iter().all(|n| seen(n, MemberState::Alive) == 30)
    });
    let took = converged
        .await
        .expect("30 nodes see each other alive within 40 rounds");
    assert!(took <= 20, "converged in {took} rounds");
    eprintln!(
        "30 nodes converged in {took} rounds ({:?})",
        INTERVAL * took
    );

    // Cut node 29 from everyone: the others mark it dead (phi 8 ≈ 8 silent rounds), it keeps
    // itself alive; nobody else is marked dead.
    for i in 0..29 {
        transport.remove_link(addr(29), addr(i)).await;
    }
    let dead = rounds_until(40, || {
        nodes[..29]
            .iter()
            .all(|n| seen(n, MemberState::Dead) == 1 && seen(n, MemberState::Alive) == 29)
    });
    let took = dead.await.expect("the cut node is dead for the other 29");
    assert!(took <= 30, "detected in {took} rounds");
    eprintln!(
        "a cut node was dead for the other 29 after {took} rounds ({:?})",
        INTERVAL * took
    );

    // Heal: back alive everywhere.
    for i in 0..29 {
        transport.add_link(addr(29), addr(i)).await;
    }
    let healed = rounds_until(40, || {
        nodes.iter().all(|n| seen(n, MemberState::Alive) == 30)
    });
    assert!(healed.await.is_some(), "healed within 40 rounds");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn five_percent_datagram_loss_converges_without_false_dead_marks() {
    let transport = ChannelTransport::default();
    let mut nodes = Vec::new();
    for i in 0..10 {
        nodes.push(node(i, transport.clone().drop_message(0.05)).await);
    }
    let converged = rounds_until(60, || {
        nodes.iter().all(|n| seen(n, MemberState::Alive) == 10)
    });
    assert!(converged.await.is_some(), "10 nodes converge at 5 % loss");
    // Ten minutes of gossip rounds at 5 % loss: nobody is ever marked dead.
    let mut false_dead = 0;
    for _ in 0..1200 {
        tokio::time::sleep(INTERVAL).await;
        false_dead += nodes
            .iter()
            .map(|n| seen(n, MemberState::Dead))
            .sum::<usize>();
    }
    assert_eq!(false_dead, 0, "false dead marks over 1,200 rounds");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_hundred_nodes_converge_and_detect_a_cut_node() {
    let transport = ChannelTransport::default();
    let mut nodes = Vec::new();
    for i in 0..100 {
        nodes.push(node(i, Box::new(transport.clone())).await);
    }
    let took = rounds_until(80, || {
        nodes.iter().all(|n| seen(n, MemberState::Alive) == 100)
    })
    .await
    .expect("100 nodes see each other alive within 80 rounds");
    eprintln!(
        "100 nodes converged in {took} rounds ({:?})",
        INTERVAL * took
    );
    assert!(took <= 30, "converged in {took} rounds");

    for i in 0..99 {
        transport.remove_link(addr(99), addr(i)).await;
    }
    let took = rounds_until(60, || {
        nodes[..99]
            .iter()
            .all(|n| seen(n, MemberState::Dead) == 1 && seen(n, MemberState::Alive) == 99)
    })
    .await
    .expect("the cut node is dead for the other 99");
    eprintln!(
        "a cut node was dead for the other 99 after {took} rounds ({:?})",
        INTERVAL * took
    );
    assert!(took <= 30, "detected in {took} rounds");
    for n in nodes {
        n.shutdown().await;
    }
}
