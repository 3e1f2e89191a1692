use proto::resource::Kind;
use proto::resource::parse_documents;

use super::state::{encode, expired};
use super::*;

fn resource(yaml: &str) -> Resource {
    parse_documents(yaml).unwrap().remove(0)
}

const MESH: &str = "type: Mesh\nname: default\n";

fn es(port: u16) -> Resource {
    resource(&format!(
        "type: ExternalService\nmesh: default\nname: httpbin\ntags: {{ kuma.io/service: httpbin }}\nnetworking: {{ address: httpbin.org:{port} }}\n"
    ))
}

/// A record as a peer sends it.
struct RemoteRecord {
    node: String,
    key: String,
    value: String,
}

async fn open(
    dir: &std::path::Path,
    node: &str,
) -> (Handle, tokio::sync::mpsc::UnboundedSender<RemoteRecord>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RemoteRecord>();
    let handle = spawn(Settings {
        data_dir: dir.to_path_buf(),
        node: node.into(),
        tombstone_ttl: Duration::from_secs(3600),
        publisher: Publisher::detached(),
        max_clock_offset: Duration::from_secs(1),
    })
    .await
    .unwrap();
    // Records go through `merge` one by one, in order, as sync sessions deliver them.
    let merger = handle.clone();
    handle.adopt(tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            let record = proto::sync::Record {
                key: r.key,
                ts: Timestamp::new(0, 0, ""),
                body: r.value.into_bytes(),
            };
            merger.merge(&r.node, vec![record]).await;
        }
    }));
    (handle, tx)
}

fn remote(node: &str, key: &str, record: &Record) -> RemoteRecord {
    RemoteRecord {
        node: node.into(),
        key: key.into(),
        value: String::from_utf8(encode(record).to_vec()).unwrap(),
    }
}

async fn wait_for(handle: &Handle, check: impl Fn(&Resources) -> bool) {
    let mut rx = handle.snapshot();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| check(r)))
        .await
        .expect("deadline")
        .unwrap();
}

#[tokio::test]
async fn acknowledged_writes_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _tx) = open(dir.path(), "n1").await;
        let applied = store
            .apply(vec![Change::Put(resource(MESH)), Change::Put(es(443))])
            .await
            .unwrap();
        assert_eq!(applied[1].outcome, Outcome::Created);
        let before = store.shared.state.lock().await.entries.clone();
        let again = store.apply(vec![Change::Put(es(443))]).await.unwrap();
        assert_eq!(again[0].outcome, Outcome::Unchanged);
        // An acknowledged put is stamped anew even when its content is the same: a delete
        // that another node took before it (and that has not arrived yet) must not win.
        let after = store.shared.state.lock().await.entries.clone();
        let key = es(443).key();
        assert!(after[&key].ts > before[&key].ts);
        store.shutdown().await;
    }
    let (store, _tx) = open(dir.path(), "n1").await;
    let snap = store.snapshot().borrow().clone();
    assert_eq!(snap.count(Kind::Mesh), 1);
    assert_eq!(snap.count(Kind::ExternalService), 1);
    // The clock went on from where it was: a new write is newer than the stored ones.
    let state = store.shared.state.lock().await;
    let newest = state.entries.values().map(|r| r.ts.clone()).max().unwrap();
    assert!(state.clock.last() >= newest);
}

#[tokio::test]
async fn remote_records_merge_last_writer_wins_with_the_node_name_as_tie_break() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tx) = open(dir.path(), "n1").await;
    store
        .apply(vec![Change::Put(resource(MESH))])
        .await
        .unwrap();
    let key = es(1).key();
    // Ahead of this node's clock, but within store.max_clock_offset.
    let far_future = crate::unix_ms() + 500;
    tx.send(remote(
        "n2",
        &key,
        &Versioned::put(Timestamp::new(far_future, 0, "a"), es(1)),
    ))
    .unwrap();
    tx.send(remote(
        "n3",
        &key,
        &Versioned::put(Timestamp::new(far_future, 0, "b"), es(2)),
    ))
    .unwrap();
    // An older write arriving later loses.
    tx.send(remote(
        "n4",
        &key,
        &Versioned::put(Timestamp::new(far_future - 1, 9, "z"), es(3)),
    ))
    .unwrap();
    let rk = es(1).resource_key();
    wait_for(&store, |r| r.get(&rk) == Some(&es(2))).await;
    // A tombstone newer than all of it deletes it.
    tx.send(remote(
        "n5",
        &key,
        &Versioned::tombstone(Timestamp::new(far_future + 1, 0, "a")),
    ))
    .unwrap();
    wait_for(&store, |r| r.get(&rk).is_none()).await;
    // Our clock moved past what it observed: a local write now wins.
    store.apply(vec![Change::Put(es(4))]).await.unwrap();
    assert_eq!(store.snapshot().borrow().get(&rk), Some(&es(4)));
}

/// A peer whose clock runs ahead beyond store.max_clock_offset does not win: its records
/// are refused and counted, and once it repeats the node says so (a warning for /ready).
#[tokio::test]
async fn records_stamped_beyond_the_clock_offset_are_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tx) = open(dir.path(), "n1").await;
    store
        .apply(vec![Change::Put(resource(MESH)), Change::Put(es(1))])
        .await
        .unwrap();
    let key = es(1).key();
    let rk = es(1).resource_key();
    let skew_rx = store.clock_skew();
    // 60 s ahead: a write and a delete from the fast node change nothing.
    tx.send(remote(
        "fast",
        &key,
        &Versioned::put(Timestamp::new(crate::unix_ms() + 60_000, 0, "fast"), es(2)),
    ))
    .unwrap();
    tx.send(remote(
        "fast",
        &key,
        &Versioned::tombstone(Timestamp::new(crate::unix_ms() + 60_000, 1, "fast")),
    ))
    .unwrap();
    // A record within the bound from another peer, after them: it lands.
    let marker = resource("type: Mesh\nname: marker\n");
    tx.send(remote(
        "n2",
        "mesh/marker",
        &Versioned::put(Timestamp::new(crate::unix_ms() + 200, 0, "n2"), marker),
    ))
    .unwrap();
    let marker_key = ResourceKey::parse("mesh/marker").unwrap();
    wait_for(&store, |r| r.get(&marker_key).is_some()).await;
    assert_eq!(store.snapshot().borrow().get(&rk), Some(&es(1)));
    let warnings = skew_rx.borrow().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("\"fast\"") && warnings[0].contains("2 of its"),
        "{warnings:?}"
    );
    // This node's clock was not dragged ahead: a local write still wins over the refused.
    let state = store.shared.state.lock().await;
    assert!(state.clock.last().wall_ms < crate::unix_ms() + 1_000);
}

#[tokio::test]
async fn spoofed_or_garbage_records_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tx) = open(dir.path(), "n1").await;
    store
        .apply(vec![Change::Put(resource(MESH))])
        .await
        .unwrap();
    let future = Timestamp::new(crate::unix_ms() + 500, 0, "evil");
    // A value filed under another resource's key.
    tx.send(remote(
        "evil",
        "mesh/other",
        &Versioned::put(future.clone(), resource(MESH)),
    ))
    .unwrap();
    tx.send(RemoteRecord {
        node: "evil".into(),
        key: "mesh/default".into(),
        value: "{not json".into(),
    })
    .unwrap();
    tx.send(RemoteRecord {
        node: "evil".into(),
        key: "mesh/default".into(),
        value: "x".repeat(MAX_RESOURCE_BYTES * 2),
    })
    .unwrap();
    // An invalid resource inside a well-formed record.
    tx.send(RemoteRecord {
        node: "evil".into(),
        key: "mesh/default".into(),
        value: format!(
            r#"{{"ts":{},"value":{{"type":"Mesh","name":"default","bogus":1}}}}"#,
            serde_json::to_string(&future).unwrap()
        ),
    })
    .unwrap();
    // A good record after them still lands: the loop kept going.
    let marker = resource("type: Mesh\nname: marker\n");
    tx.send(remote(
        "n2",
        "mesh/marker",
        &Versioned::put(future.clone(), marker),
    ))
    .unwrap();
    let marker_key = ResourceKey::parse("mesh/marker").unwrap();
    wait_for(&store, |r| r.get(&marker_key).is_some()).await;
    let snap = store.snapshot().borrow().clone();
    assert_eq!(snap.count(Kind::Mesh), 2);
    assert!(
        snap.get(&ResourceKey::parse("mesh/other").unwrap())
            .is_none()
    );
}

#[tokio::test]
async fn batches_are_all_or_nothing_and_references_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _tx) = open(dir.path(), "n1").await;
    let err = store.apply(vec![Change::Put(es(1))]).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("does not exist"));
    store
        .apply(vec![Change::Put(resource(MESH)), Change::Put(es(1))])
        .await
        .unwrap();
    let mesh_key = resource(MESH).resource_key();
    let err = store
        .apply(vec![Change::Delete(mesh_key.clone())])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // Deleting the mesh with its resources in one batch is fine.
    store
        .apply(vec![
            Change::Delete(es(1).resource_key()),
            Change::Delete(mesh_key),
        ])
        .await
        .unwrap();
    assert_eq!(store.snapshot().borrow().iter().count(), 0);
    let err = store
        .apply(vec![Change::Delete(es(1).resource_key())])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)));
}

#[test]
fn tombstones_expire_a_ttl_after_their_write() {
    let ttl = Duration::from_secs(10);
    let t = Timestamp::new(1_000, 0, "a");
    assert!(!expired(&t, true, 5_000, ttl));
    assert!(expired(&t, true, 11_001, ttl));
    assert!(!expired(&t, false, u64::MAX, ttl));
}

#[tokio::test]
async fn each_commit_says_which_kinds_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _tx) = open(dir.path(), "n1").await;
    let mut meshes = store.changes();
    let mut services = store.changes();
    assert!(
        meshes.next(&[Kind::Mesh]).await.is_some(),
        "the current state first"
    );
    assert!(services.next(&[Kind::ExternalService]).await.is_some());
    store
        .apply(vec![Change::Put(resource(MESH))])
        .await
        .unwrap();
    store.apply(vec![Change::Put(es(443))]).await.unwrap();
    // The ExternalService consumer looked after both commits: it missed one, so it wakes.
    let got = services.next(&[Kind::ExternalService]).await.unwrap();
    assert_eq!(got.count(Kind::ExternalService), 1);
    // One revision per commit, with the kinds it wrote.
    let revision = store.shared.revision_tx.borrow().clone();
    assert_eq!(revision.seq, 2);
    assert_eq!(revision.changed, [Kind::ExternalService].into());
    // A consumer of Mesh that is up to date is not woken by an ExternalService write.
    let _ = meshes.next(&[Kind::Mesh]).await;
    store.apply(vec![Change::Put(es(8443))]).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_millis(200), meshes.next(&[Kind::Mesh])).await;
    assert!(woken.is_err(), "woken by a write of another kind");
}
