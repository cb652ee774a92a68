//! Watch churn through the HTTP API: many kube-rs reflectors (half of them using WatchList) and
//! raw watchers follow thousands of creates, updates and deletes while the store compacts every
//! second. Every cache must end equal to a fresh LIST; raw watchers must see strictly
//! increasing resourceVersions (no duplicates) and lose nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::KrustServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};

const NAMESPACE: &str = "default";
const WRITERS: usize = 4;
const OPS_PER_WRITER: usize = 600;
const NAMES: usize = 150;

fn cm(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {"churn": "yes"}}, "data": {"v": value}})).unwrap()
}

type Snapshot = BTreeMap<String, String>;

async fn fresh_list(api: &Api<ConfigMap>) -> Snapshot {
    let list = api.list(&ListParams::default().labels("churn=yes")).await.unwrap();
    list.items
        .into_iter()
        .map(|c| (c.metadata.name.unwrap(), c.metadata.resource_version.unwrap()))
        .collect()
}

/// A raw watcher: applies events to a map, checking that resourceVersions only grow, and
/// relists when told its position was compacted away. Returns once it has seen the sentinel.
async fn raw_watcher(api: Api<ConfigMap>) -> (Snapshot, usize, usize) {
    let mut relists = 0;
    let mut events = 0;
    let mut state: Snapshot = Snapshot::new();
    let params = ListParams::default().labels("churn=yes");
    let list = api.list(&params).await.unwrap();
    let mut rv = list.metadata.resource_version.unwrap();
    for c in list.items {
        state.insert(c.metadata.name.unwrap(), c.metadata.resource_version.unwrap());
    }
    let mut last: i64 = rv.parse().unwrap();
    loop {
        let mut stream = api
            .watch(&WatchParams::default().labels("churn=yes").timeout(30), &rv)
            .await
            .unwrap()
            .boxed();
        while let Some(event) = stream.try_next().await.unwrap() {
            match event {
                WatchEvent::Added(c) | WatchEvent::Modified(c) => {
                    let this: i64 = c.metadata.resource_version.as_ref().unwrap().parse().unwrap();
                    assert!(
                        this > last,
                        "resourceVersion went from {last} to {this}: duplicate or reordered event"
                    );
                    last = this;
                    rv = this.to_string();
                    events += 1;
                    let name = c.metadata.name.unwrap();
                    let sentinel = name == "churn-sentinel";
                    state.insert(name, this.to_string());
                    // The sentinel is the last write of the test: the map is final.
                    if sentinel {
                        return (state, events, relists);
                    }
                }
                WatchEvent::Deleted(c) => {
                    let this: i64 = c.metadata.resource_version.as_ref().unwrap().parse().unwrap();
                    assert!(this > last, "resourceVersion went from {last} to {this} on delete");
                    last = this;
                    rv = this.to_string();
                    events += 1;
                    state.remove(&c.metadata.name.unwrap());
                }
                WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                WatchEvent::Error(e) => {
                    assert_eq!(e.code, 410, "only 410 Expired may end a watch: {e:?}");
                    relists += 1;
                    let list = api.list(&params).await.unwrap();
                    rv = list.metadata.resource_version.unwrap();
                    last = rv.parse().unwrap();
                    state = list
                        .items
                        .into_iter()
                        .map(|c| (c.metadata.name.unwrap(), c.metadata.resource_version.unwrap()))
                        .collect();
                    break;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflectors_converge_under_churn_and_compaction() {
    let server = KrustServer::start(&["--compaction-interval=1s"]);
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);

    let mut readers = Vec::new();
    for i in 0..8 {
        let (reader, writer) = reflector::store();
        let mut config = watcher::Config::default().labels("churn=yes");
        if i % 2 == 1 {
            config = config.streaming_lists();
        }
        let stream =
            reflector(writer, watcher(api.clone(), config)).default_backoff().applied_objects();
        tokio::spawn(stream.for_each(|_| futures::future::ready(())));
        readers.push(reader);
    }
    let raw: Vec<_> = (0..2).map(|_| tokio::spawn(raw_watcher(api.clone()))).collect();

    let mut writers = Vec::new();
    // The churn lasts at least a few compaction intervals, however fast the machine writes,
    // so the watchers see compactions while it runs.
    let churn_until = Instant::now() + Duration::from_millis(3500);
    for w in 0..WRITERS {
        let api = api.clone();
        writers.push(tokio::spawn(async move {
            let mut seed = 0x9e3779b97f4a7c15u64 ^ (w as u64 + 1);
            for op in (0..).take_while(|op| *op < OPS_PER_WRITER || Instant::now() < churn_until) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let name = format!("churn-{}", seed % NAMES as u64);
                let value = format!("{w}-{op}");
                match seed % 3 {
                    0 => match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => panic!("delete: {e}"),
                    },
                    _ => match api.create(&PostParams::default(), &cm(&name, &value)).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 409 => {
                            let mut current = match api.get(&name).await {
                                Ok(c) => c,
                                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                                Err(e) => panic!("get: {e}"),
                            };
                            current.data = Some([("v".to_owned(), value)].into());
                            match api.replace(&name, &PostParams::default(), &current).await {
                                Ok(_) => {}
                                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                                Err(e) => panic!("replace: {e}"),
                            }
                        }
                        Err(e) => panic!("create: {e}"),
                    },
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    // A last write everyone must see; after it, caches must equal a fresh LIST.
    let sentinel = api.create(&PostParams::default(), &cm("churn-sentinel", "end")).await.unwrap();
    assert!(sentinel.metadata.resource_version.is_some());
    let expected = fresh_list(&api).await;
    assert!(expected.len() > 10, "the churn should leave objects behind ({})", expected.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, reader) in readers.iter().enumerate() {
        loop {
            let cache: Snapshot = reader
                .state()
                .iter()
                .map(|c| {
                    (c.metadata.name.clone().unwrap(), c.metadata.resource_version.clone().unwrap())
                })
                .collect();
            if cache == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reflector {i} did not converge: {} cached vs {} listed",
                cache.len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let metrics =
        client.request_text(http::Request::get("/metrics").body(vec![]).unwrap()).await.unwrap();
    let compactions: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("krust_storage_compactions_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(compactions >= 2, "the store compacted during the churn ({compactions})");
    for handle in raw {
        let (state, events, relists) = tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("raw watcher saw the sentinel")
            .unwrap();
        eprintln!(
            "raw watcher: {events} events, {relists} relists after 410; {compactions} compactions"
        );
        assert_eq!(
            state, expected,
            "raw watcher state after {events} events and {relists} relists"
        );
        assert!(events > 1000, "the raw watcher saw the churn ({events} events)");
    }
}
