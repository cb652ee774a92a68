//! One conformance suite for every backend: each case runs against the embedded store and
//! against a real etcd (Debian's `etcd-server`) started on loopback ports.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use storage::embedded::{Config, EmbeddedStore};
use storage::etcd::EtcdStore;
use storage::testing::EtcdServer;
use storage::{
    Compare, Error, EventKind, Op, OpResult, RangeRequest, SharedStore, Txn, WatchMessage,
    WatchStream,
};

enum Guard {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Etcd(#[allow(dead_code)] EtcdServer),
}

fn embedded() -> (SharedStore, Guard) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(Config::with_dir(dir.path())).expect("open");
    (Arc::new(store), Guard::Dir(dir))
}

async fn etcd() -> (SharedStore, Guard) {
    let server = EtcdServer::start().expect("etcd must be installed (apt-get install etcd-server)");
    let store = EtcdStore::connect(&server.endpoint).await.expect("connect to etcd");
    (Arc::new(store), Guard::Etcd(server))
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = super::embedded();
                super::$case(store).await;
            })*
        }
        mod etcd_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = super::etcd().await;
                super::$case(store).await;
            })*
        }
    };
}

conformance!(
    revisions_and_versions,
    compare_and_swap,
    range_at_revision_and_limits,
    watch_order_prev_kv_and_resume,
    compaction_discards_history,
    concurrent_writers_serialize,
    large_ranges_and_watch_batches,
);

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: Bytes::copy_from_slice(value.as_bytes()) }
}

async fn write(store: &SharedStore, op: Op) -> i64 {
    let response = store.txn(Txn { success: vec![op], ..Txn::default() }).await.expect("txn");
    assert!(response.succeeded);
    response.revision
}

async fn next_events(watch: &mut WatchStream, want: usize) -> Vec<storage::Event> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events.len() < want {
        let item = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("watch delivered too few events before the deadline")
            .expect("watch ended early")
            .expect("watch error");
        if let WatchMessage::Events(batch) = item {
            events.extend(batch);
        }
    }
    events
}

async fn revisions_and_versions(store: SharedStore) {
    let start = store.current_revision().await.unwrap();
    let r1 = write(&store, put("/t/a", "1")).await;
    assert_eq!(r1, start + 1, "each write bumps the global revision by one");
    let r2 = write(&store, put("/t/a", "2")).await;
    assert_eq!(r2, r1 + 1);
    let (kv, at) = storage::get(store.as_ref(), "/t/a").await.unwrap();
    let kv = kv.expect("key exists");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (r1, r2, 2));
    assert_eq!(at, r2);
    assert_eq!(&kv.value[..], b"2");

    let r3 = write(&store, Op::Delete { key: "/t/a".into() }).await;
    assert_eq!(r3, r2 + 1);
    assert!(storage::get(store.as_ref(), "/t/a").await.unwrap().0.is_none());
    let r4 = write(&store, put("/t/a", "3")).await;
    let kv = storage::get(store.as_ref(), "/t/a").await.unwrap().0.unwrap();
    assert_eq!(
        (kv.create_revision, kv.version),
        (r4, 1),
        "re-created key starts a new incarnation"
    );

    // A transaction that writes nothing does not move the revision.
    let response = store
        .txn(Txn { success: vec![Op::Get { key: "/t/a".into() }], ..Txn::default() })
        .await
        .unwrap();
    assert_eq!(response.revision, r4);
    assert_eq!(store.current_revision().await.unwrap(), r4);
}

async fn compare_and_swap(store: SharedStore) {
    let create = |value: &str| Txn {
        compares: vec![Compare::ModRevision { key: "/t/cas".into(), equals: 0 }],
        success: vec![put("/t/cas", value)],
        failure: vec![Op::Get { key: "/t/cas".into() }],
    };
    let first = store.txn(create("one")).await.unwrap();
    assert!(first.succeeded);
    let second = store.txn(create("two")).await.unwrap();
    assert!(!second.succeeded, "create must fail when the key exists");
    let OpResult::Get(Some(current)) = &second.results[0] else {
        panic!("failure branch returns the current value")
    };
    assert_eq!(&current.value[..], b"one");
    assert_eq!(current.mod_revision, first.revision);

    let stale = Txn {
        compares: vec![Compare::ModRevision { key: "/t/cas".into(), equals: first.revision - 1 }],
        success: vec![put("/t/cas", "stale")],
        failure: vec![],
    };
    assert!(!store.txn(stale).await.unwrap().succeeded);
    let update = Txn {
        compares: vec![Compare::ModRevision { key: "/t/cas".into(), equals: first.revision }],
        success: vec![put("/t/cas", "three")],
        failure: vec![],
    };
    let updated = store.txn(update).await.unwrap();
    assert!(updated.succeeded);
    let OpResult::Put { prev: Some(prev) } = &updated.results[0] else {
        panic!("put returns prev")
    };
    assert_eq!(&prev.value[..], b"one");

    let delete = Txn {
        compares: vec![Compare::ModRevision { key: "/t/cas".into(), equals: updated.revision }],
        success: vec![Op::Delete { key: "/t/cas".into() }],
        failure: vec![],
    };
    let deleted = store.txn(delete).await.unwrap();
    let OpResult::Delete { prev: Some(prev) } = &deleted.results[0] else {
        panic!("delete returns prev")
    };
    assert_eq!(&prev.value[..], b"three");
}

async fn range_at_revision_and_limits(store: SharedStore) {
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(write(&store, put(&format!("/t/r/{i}"), &format!("v{i}"))).await);
    }
    write(&store, put("/t/other", "x")).await;
    let all = store.range(RangeRequest::prefix("/t/r/")).await.unwrap();
    assert_eq!(all.kvs.len(), 5);
    assert!(!all.more);
    assert!(all.revision >= revisions[4], "a range reports the store revision it was read at");

    let mut past = RangeRequest::prefix("/t/r/");
    past.revision = Some(revisions[2]);
    let at = store.range(past).await.unwrap();
    assert_eq!(
        at.kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        ["/t/r/0", "/t/r/1", "/t/r/2"]
    );
    assert_eq!(at.revision, revisions[2]);

    let mut limited = RangeRequest::prefix("/t/r/");
    limited.limit = 2;
    let page = store.range(limited).await.unwrap();
    assert_eq!(page.kvs.len(), 2);
    assert!(page.more);

    let mut future = RangeRequest::prefix("/t/r/");
    future.revision = Some(all.revision + 100);
    assert!(matches!(store.range(future).await, Err(Error::FutureRevision { .. })));
}

async fn watch_order_prev_kv_and_resume(store: SharedStore) {
    let start = store.current_revision().await.unwrap() + 1;
    let mut watch = store.watch("/t/w/", start).await.unwrap();
    let r1 = write(&store, put("/t/w/a", "1")).await;
    write(&store, put("/t/unwatched", "x")).await;
    let r2 = write(&store, put("/t/w/a", "2")).await;
    let r3 = write(&store, Op::Delete { key: "/t/w/a".into() }).await;
    let multi = store
        .txn(Txn { success: vec![put("/t/w/b", "b"), put("/t/w/c", "c")], ..Txn::default() })
        .await
        .unwrap();
    let events = next_events(&mut watch, 5).await;
    let seen: Vec<(EventKind, &str, i64)> =
        events.iter().map(|e| (e.kind, e.kv.key.as_str(), e.kv.mod_revision)).collect();
    assert_eq!(
        seen,
        [
            (EventKind::Put, "/t/w/a", r1),
            (EventKind::Put, "/t/w/a", r2),
            (EventKind::Delete, "/t/w/a", r3),
            (EventKind::Put, "/t/w/b", multi.revision),
            (EventKind::Put, "/t/w/c", multi.revision),
        ]
    );
    assert!(events[0].prev_kv.is_none());
    assert_eq!(&events[1].prev_kv.as_ref().unwrap().value[..], b"1");
    assert_eq!(&events[2].prev_kv.as_ref().unwrap().value[..], b"2");

    // Resuming from a past revision replays exactly the tail.
    let mut resumed = store.watch("/t/w/", r2 + 1).await.unwrap();
    let tail = next_events(&mut resumed, 3).await;
    assert_eq!(
        tail.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        [r3, multi.revision, multi.revision]
    );
    // And nothing more arrives until the next write.
    let r4 = write(&store, put("/t/w/d", "d")).await;
    let next = next_events(&mut resumed, 1).await;
    assert_eq!(next[0].kv.mod_revision, r4);
}

async fn compaction_discards_history(store: SharedStore) {
    let r1 = write(&store, put("/t/c/a", "1")).await;
    let r2 = write(&store, put("/t/c/a", "2")).await;
    let r3 = write(&store, put("/t/c/b", "1")).await;
    store.compact(r2).await.unwrap();

    let mut old = RangeRequest::prefix("/t/c/");
    old.revision = Some(r1);
    assert!(
        matches!(store.range(old).await, Err(Error::Compacted { .. })),
        "reads below the compaction fail"
    );
    let mut at = RangeRequest::prefix("/t/c/");
    at.revision = Some(r2);
    let kept = store.range(at).await.unwrap();
    assert_eq!(kept.kvs.len(), 1, "the state at the compaction revision stays readable");
    assert_eq!(&kept.kvs[0].value[..], b"2");

    // A watch from below the compacted revision is told, never silently resumed later.
    let too_old = match store.watch("/t/c/", r1).await {
        Err(e) => Some(e),
        Ok(mut stream) => {
            match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                Ok(Some(Err(e))) => Some(e),
                _ => None,
            }
        }
    };
    assert!(matches!(too_old, Some(Error::Compacted { .. })), "got {too_old:?}");
    // From the compaction point on, watching works.
    let mut ok = store.watch("/t/c/", r2 + 1).await.unwrap();
    let events = next_events(&mut ok, 1).await;
    assert_eq!(events[0].kv.mod_revision, r3);
}

async fn concurrent_writers_serialize(store: SharedStore) {
    const WRITERS: usize = 8;
    const INCREMENTS: usize = 25;
    write(&store, put("/t/n/counter", "0")).await;
    let start = store.current_revision().await.unwrap() + 1;
    let mut watch = store.watch("/t/n/", start).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < INCREMENTS {
                let (kv, _) = storage::get(store.as_ref(), "/t/n/counter").await.unwrap();
                let kv = kv.unwrap();
                let n: usize = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                let txn = Txn {
                    compares: vec![Compare::ModRevision {
                        key: kv.key.clone(),
                        equals: kv.mod_revision,
                    }],
                    success: vec![put(&kv.key, &(n + 1).to_string())],
                    failure: vec![],
                };
                if store.txn(txn).await.unwrap().succeeded {
                    done += 1;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (kv, _) = storage::get(store.as_ref(), "/t/n/counter").await.unwrap();
    assert_eq!(
        std::str::from_utf8(&kv.unwrap().value).unwrap(),
        (WRITERS * INCREMENTS).to_string()
    );
    let events = next_events(&mut watch, WRITERS * INCREMENTS).await;
    let values: Vec<usize> =
        events.iter().map(|e| std::str::from_utf8(&e.kv.value).unwrap().parse().unwrap()).collect();
    assert_eq!(
        values,
        (1..=WRITERS * INCREMENTS).collect::<Vec<_>>(),
        "every increment seen once, in order"
    );
    assert!(events.windows(2).all(|w| w[0].kv.mod_revision < w[1].kv.mod_revision));
}

async fn large_ranges_and_watch_batches(store: SharedStore) {
    // 8 MiB in one range and one watch catch-up: above gRPC's default 4 MiB message limit.
    let start = store.current_revision().await.unwrap() + 1;
    let value = "x".repeat(128 * 1024);
    for chunk in 0..8 {
        let ops = (0..8).map(|i| put(&format!("/t/big/{chunk}-{i}"), &value)).collect();
        store.txn(Txn { success: ops, ..Txn::default() }).await.unwrap();
    }
    let all = store.range(RangeRequest::prefix("/t/big/")).await.unwrap();
    assert_eq!(all.kvs.len(), 64);
    let mut watch = store.watch("/t/big/", start).await.unwrap();
    assert_eq!(next_events(&mut watch, 64).await.len(), 64);
}
