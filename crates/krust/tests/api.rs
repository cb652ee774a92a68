//! Integration tests with the `kube` crate: optimistic concurrency, Status errors, watch
//! semantics (resume, 410 Expired after compaction, WatchList), and the bad-input contract.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::KrustServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

fn cm(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": value}}))
        .unwrap()
}

fn status_code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API Status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_conflicts_and_list_resource_version() {
    let server = KrustServer::start(&[]);
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = api.create(&PostParams::default(), &cm("a", "1")).await.unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let (code, reason) =
        status_code(api.create(&PostParams::default(), &cm("a", "1")).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    let mut update = created.clone();
    update.data = Some([("k".to_owned(), "2".to_owned())].into());
    let updated = api.replace("a", &PostParams::default(), &update).await.unwrap();
    assert_ne!(updated.metadata.resource_version.unwrap(), rv1);
    // The same stale object again: 409 Conflict, and nothing changes.
    let (code, reason) =
        status_code(api.replace("a", &PostParams::default(), &update).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(api.get("a").await.unwrap().data.unwrap()["k"], "2");

    // A list's resourceVersion is the store revision it was read at, not an item's.
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    other.create(&PostParams::default(), &cm("elsewhere", "x")).await.unwrap();
    let list = api.list(&ListParams::default()).await.unwrap();
    let list_rv: i64 = list.metadata.resource_version.unwrap().parse().unwrap();
    let max_item: i64 = list
        .items
        .iter()
        .map(|i| i.metadata.resource_version.as_ref().unwrap().parse::<i64>().unwrap())
        .max()
        .unwrap();
    assert!(
        list_rv > max_item,
        "list RV {list_rv} must be the store revision, above item RVs ({max_item})"
    );

    let (code, _) = status_code(api.get("missing").await.unwrap_err());
    assert_eq!(code, 404);
    let invalid: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "UPPER"}})).unwrap();
    let err = api.create(&PostParams::default(), &invalid).await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            let causes = s.details.map(|d| d.causes).unwrap_or_default();
            assert!(causes.iter().any(|c| c.field == "metadata.name"), "{causes:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_any_revision() {
    let server = KrustServer::start(&[]);
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let start = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(
            api.create(&PostParams::default(), &cm(&format!("w{i}"), "v"))
                .await
                .unwrap()
                .metadata
                .resource_version
                .unwrap(),
        );
    }
    // From the list RV: all five, in order.
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(20),
        api.watch(&WatchParams::default(), &start).await.unwrap().take(5).try_collect::<Vec<_>>(),
    )
    .await
    .unwrap()
    .unwrap();
    let names: Vec<String> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(o) => o.metadata.name.clone().unwrap(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(names, ["w0", "w1", "w2", "w3", "w4"]);
    // From the middle: exactly the tail.
    let tail: Vec<_> = tokio::time::timeout(
        Duration::from_secs(20),
        api.watch(&WatchParams::default(), &revisions[2])
            .await
            .unwrap()
            .take(2)
            .try_collect::<Vec<_>>(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(tail.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_status_and_changes_nothing() {
    let server = KrustServer::start(&[]);
    let client = server.client().await;
    let request = |method: &str, path: &str, body: Vec<u8>, content_type: &str| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("Content-Type", content_type)
            .body(body)
            .unwrap()
    };
    let before = client
        .request_text(
            http::Request::get("/api/v1/namespaces/default/configmaps").body(vec![]).unwrap(),
        )
        .await
        .unwrap();
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    let cases: Vec<(http::Request<Vec<u8>>, u16)> = vec![
        (
            request(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                b"{not json".to_vec(),
                "application/json",
            ),
            400,
        ),
        (request("GET", "/api/v1/namespaces/default/widgets", vec![], "application/json"), 404),
        (request("GET", "/apis/nope.example/v1/things", vec![], "application/json"), 404),
        (
            request(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                br#"{"metadata":{"name":"x"},"data":{"a":1}}"#.to_vec(),
                "application/json",
            ),
            400,
        ),
        (
            request(
                "POST",
                "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
                br#"{"metadata":{"name":"x"},"bogus":1}"#.to_vec(),
                "application/json",
            ),
            400,
        ),
        (
            request(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                vec![b' '; 4 * 1024 * 1024],
                "application/json",
            ),
            413,
        ),
        (
            request(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                format!(
                    r#"{{"metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
                    "x".repeat(2 * 1024 * 1024)
                )
                .into_bytes(),
                "application/json",
            ),
            // Over ConfigMap's own 1 MiB limit: validation answers before the store would.
            422,
        ),
        (
            // An object over the store's 1.5 MiB limit, of a kind without a data limit.
            request(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/default/leases",
                format!(
                    r#"{{"metadata":{{"name":"big"}},"spec":{{"holderIdentity":"{}"}}}}"#,
                    "x".repeat(1600 * 1024)
                )
                .into_bytes(),
                "application/json",
            ),
            413,
        ),
        (
            request(
                "POST",
                "/api/v1/namespaces/default/pods",
                br#"{"metadata":{"name":"p"},"spec":{"containers":[]}}"#.to_vec(),
                "application/json",
            ),
            422,
        ),
        (
            // A binding's annotations go into the pod, which a binding does not validate
            // again: they are checked first.
            request(
                "POST",
                "/api/v1/namespaces/default/pods/p/binding",
                br#"{"metadata":{"name":"p","annotations":{"not a key!":"v"}},"target":{"name":"n"}}"#
                    .to_vec(),
                "application/json",
            ),
            422,
        ),
        (
            request(
                "PATCH",
                "/api/v1/namespaces/default/configmaps/none",
                b"{}".to_vec(),
                "text/plain",
            ),
            415,
        ),
        (
            request(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                b"metadata: [unclosed".to_vec(),
                "application/yaml",
            ),
            400,
        ),
    ];
    for (req, want) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let err = client.request_text(req).await.unwrap_err();
        assert_eq!(status_code(err).0, want, "{what}");
    }
    let after = client
        .request_text(
            http::Request::get("/api/v1/namespaces/default/configmaps").body(vec![]).unwrap(),
        )
        .await
        .unwrap();
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(before["items"], after["items"], "no bad request wrote anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_get_401() {
    let server = KrustServer::start(&[]);
    // A client with the CA but without the admin certificate.
    let mut kubeconfig = kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap();
    for user in &mut kubeconfig.auth_infos {
        if let Some(info) = user.auth_info.as_mut() {
            info.client_certificate_data = None;
            info.client_key_data = None;
        }
    }
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (code, reason) = status_code(api.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (401, "Unauthorized"));
    // Health and version stay public, as upstream.
    assert!(client.apiserver_version().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_list_sends_initial_events_then_bookmark() {
    let server = KrustServer::start(&[]);
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("before", "v")).await.unwrap();
    let text = tokio::time::timeout(
        Duration::from_secs(10),
        client.request_text(
            http::Request::get("/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1")
                .body(vec![])
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let events: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "before");
    let bookmark =
        events.iter().find(|e| e["type"] == "BOOKMARK").expect("initial-events-end bookmark");
    assert_eq!(bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    // Without the required companions the request is refused, so clients fall back to list+watch.
    let err = client
        .request_text(
            http::Request::get(
                "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true",
            )
            .body(vec![])
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(err).0, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_revision_gets_410_expired() {
    let server = KrustServer::start(&["--compaction-interval=1s"]);
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let old = api
        .create(&PostParams::default(), &cm("c", "0"))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        assert!(std::time::Instant::now() < deadline, "compaction never passed revision {old}");
        // Keep writing so the compactor has newer revisions to compact to.
        i += 1;
        let mut next = api.get("c").await.unwrap();
        next.data = Some([("k".to_owned(), i.to_string())].into());
        api.replace("c", &PostParams::default(), &next).await.unwrap();
        let text = client
            .request_text(
                http::Request::get(format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old}&timeoutSeconds=1"))
                    .body(vec![])
                    .unwrap(),
            )
            .await
            .unwrap();
        let first: serde_json::Value =
            serde_json::from_str(text.lines().next().unwrap_or("{}")).unwrap();
        if first["type"] == "ERROR" {
            assert_eq!(first["object"]["code"], 410);
            assert_eq!(first["object"]["reason"], "Expired");
            break;
        }
        // Until then the watch replays history from `old` in order, starting just after it.
        assert_eq!(first["type"], "MODIFIED", "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_endpoints() {
    let server = KrustServer::start(&[]);
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default()).await.unwrap();
    api.create(&PostParams::default(), &cm("m", "1")).await.unwrap();
    for path in ["/healthz", "/livez", "/readyz"] {
        let body =
            client.request_text(http::Request::get(path).body(vec![]).unwrap()).await.unwrap();
        assert_eq!(body, "ok", "{path}");
    }
    let metrics =
        client.request_text(http::Request::get("/metrics").body(vec![]).unwrap()).await.unwrap();
    assert!(
        metrics
            .contains(r#"apiserver_request_total{verb="LIST",resource="configmaps",subresource="",code="200"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"apiserver_request_total{verb="CREATE",resource="configmaps",subresource="",code="201"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"apiserver_request_duration_seconds_bucket{verb="CREATE",resource="configmaps",le="+Inf"} 1"#), "{metrics}");
    assert!(metrics.contains("krust_storage_revision "), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_bodies_are_accepted() {
    let server = KrustServer::start(&[]);
    let client = server.client().await;
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n";
    let request = http::Request::post("/api/v1/namespaces/default/configmaps")
        .header("Content-Type", "application/yaml")
        .body(yaml.as_bytes().to_vec())
        .unwrap();
    client.request_text(request).await.unwrap();
    let apply =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: applied\n";
    let request = http::Request::patch(
        "/api/v1/namespaces/default/configmaps/from-yaml?fieldManager=yaml-test&force=true",
    )
    .header("Content-Type", "application/apply-patch+yaml")
    .body(apply.as_bytes().to_vec())
    .unwrap();
    client.request_text(request).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    assert_eq!(api.get("from-yaml").await.unwrap().data.unwrap()["k"], "applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_is_revalidated_with_etags() {
    let server = KrustServer::start(&[]);
    let client = server.client().await;
    let accept =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let first = client
        .send(
            http::Request::get("/apis")
                .header("Accept", accept)
                .body(kube::client::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers()["content-type"],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let again = client
        .send(
            http::Request::get("/apis")
                .header("Accept", accept)
                .header("If-None-Match", &etag)
                .body(kube::client::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
}

fn value_of<T: serde::Serialize>(object: &T) -> serde_json::Value {
    serde_json::to_value(object).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_a_node_are_deleted_gracefully() {
    use k8s_openapi::api::core::v1::Pod;
    let server = KrustServer::start(&[]);
    let client = server.client().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod = |name: &str, node: Option<&str>| -> Pod {
        let mut spec = serde_json::json!({"containers": [{"name": "c", "image": "busybox"}]});
        if let Some(node) = node {
            spec["nodeName"] = serde_json::json!(node);
        }
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
            .unwrap()
    };
    // Nothing runs an unscheduled pod: it goes at once.
    pods.create(&PostParams::default(), &pod("floating", None)).await.unwrap();
    pods.delete("floating", &kube::api::DeleteParams::default()).await.unwrap();
    assert_eq!(status_code(pods.get("floating").await.unwrap_err()).0, 404);
    // A pod on a node waits its grace period for the node agent.
    pods.create(&PostParams::default(), &pod("bound", Some("node-1"))).await.unwrap();
    pods.delete("bound", &kube::api::DeleteParams::default()).await.unwrap();
    let terminating = value_of(&pods.get("bound").await.unwrap());
    assert_eq!(terminating["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(terminating["metadata"]["deletionTimestamp"].is_string());
    // A forced delete removes it.
    pods.delete("bound", &kube::api::DeleteParams::default().grace_period(0)).await.unwrap();
    assert_eq!(status_code(pods.get("bound").await.unwrap_err()).0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_dry_run_and_generate_name() {
    use k8s_openapi::api::apps::v1::Deployment;
    let server = KrustServer::start(&[]);
    let client = server.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
                 "spec": {"containers": [{"name": "web", "image": "busybox"}]}}},
        "status": {"replicas": 99}
    }))
    .unwrap();
    let created = value_of(&deployments.create(&PostParams::default(), &deployment).await.unwrap());
    assert!(
        created["status"].get("replicas").is_none(),
        "status is not set by create: {}",
        created["status"]
    );
    // Through /status only the status changes, and generation stays.
    let mut with_status = created.clone();
    with_status["status"] = serde_json::json!({"replicas": 2, "observedGeneration": 1});
    with_status["spec"]["replicas"] = serde_json::json!(7);
    let after = value_of(
        &deployments
            .replace_status(
                "web",
                &PostParams::default(),
                &serde_json::from_value::<Deployment>(with_status).unwrap(),
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        (
            after["status"]["replicas"].clone(),
            after["spec"]["replicas"].clone(),
            after["metadata"]["generation"].clone()
        ),
        (serde_json::json!(2), serde_json::json!(1), serde_json::json!(1))
    );
    // A Deployment's status patch changes neither its metadata nor its spec (upstream's
    // workload types reset both); other types' may set labels and annotations (the Ingress
    // and CSR conformance specs rely on it, checked below with a ConfigMap-like type).
    let patched = value_of(
        &deployments
            .patch_status(
                "web",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({
                    "metadata": {"annotations": {"patchedstatus": "true"}, "finalizers": ["x/y"]},
                    "spec": {"replicas": 9},
                    "status": {"replicas": 3}
                })),
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        (
            patched["metadata"]["annotations"]["patchedstatus"].clone(),
            patched["metadata"].get("finalizers").cloned(),
            patched["spec"]["replicas"].clone(),
            patched["status"]["replicas"].clone()
        ),
        (serde_json::Value::Null, None, serde_json::json!(1), serde_json::json!(3))
    );
    {
        use k8s_openapi::api::networking::v1::Ingress;
        let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "default");
        let ingress: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ing"},
            "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}
        }))
        .unwrap();
        ingresses.create(&PostParams::default(), &ingress).await.unwrap();
        let patched = value_of(
            &ingresses
                .patch_status(
                    "ing",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(serde_json::json!({
                        "metadata": {"annotations": {"patchedstatus": "true"}},
                        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
                    })),
                )
                .await
                .unwrap(),
        );
        assert_eq!(patched["metadata"]["annotations"]["patchedstatus"], "true");
        assert_eq!(patched["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.1");
    }
    let after = value_of(&deployments.get("web").await.unwrap());
    // Through the main resource the status is ignored, the spec changes and generation moves.
    let mut main = after.clone();
    main["status"]["replicas"] = serde_json::json!(50);
    main["spec"]["replicas"] = serde_json::json!(3);
    let main: Deployment = serde_json::from_value(main).unwrap();
    let after = value_of(&deployments.replace("web", &PostParams::default(), &main).await.unwrap());
    assert_eq!(
        (
            after["status"]["replicas"].clone(),
            after["spec"]["replicas"].clone(),
            after["metadata"]["generation"].clone()
        ),
        (serde_json::json!(3), serde_json::json!(3), serde_json::json!(2))
    );

    // dryRun=All validates and answers but stores nothing.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    configmaps.create(&dry, &cm("dry", "1")).await.unwrap();
    assert_eq!(status_code(configmaps.get("dry").await.unwrap_err()).0, 404);
    // generateName gets a random suffix.
    let generated: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"generateName": "gen-"}})).unwrap();
    let name =
        configmaps.create(&PostParams::default(), &generated).await.unwrap().metadata.name.unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_bootstrap_and_termination() {
    use k8s_openapi::api::core::v1::{Endpoints, Namespace, Service};
    let server = KrustServer::start_control_plane(&[]);
    let client = server.client().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let kubernetes = services.get("kubernetes").await.unwrap();
    assert_eq!(
        kubernetes.spec.unwrap().cluster_ip.as_deref(),
        Some("10.43.0.1"),
        "the first service IP"
    );
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let subsets = endpoints.get("kubernetes").await.unwrap().subsets.unwrap();
    assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, i32::from(server.port));

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let held: Namespace = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .unwrap();
    namespaces.create(&PostParams::default(), &held).await.unwrap();
    let in_held: Api<ConfigMap> = Api::namespaced(client.clone(), "held");
    in_held.create(&PostParams::default(), &cm("inside", "1")).await.unwrap();
    namespaces.delete("held", &kube::api::DeleteParams::default()).await.unwrap();
    let phase = namespaces.get("held").await.unwrap().status.unwrap().phase.unwrap();
    assert_eq!(phase, "Terminating");
    let (code, reason) =
        status_code(in_held.create(&PostParams::default(), &cm("late", "1")).await.unwrap_err());
    assert_eq!(
        (code, reason.as_str()),
        (403, "Forbidden"),
        "no new content in a terminating namespace"
    );
    // Its content is deleted; once the last finalizer goes, so does the namespace.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !in_held.list(&ListParams::default()).await.unwrap().items.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "content of a terminating namespace was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unhold = serde_json::json!({"metadata": {"finalizers": null}});
    namespaces
        .patch("held", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&unhold))
        .await
        .unwrap();
    while namespaces.get("held").await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "namespace was not removed after its finalizers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _) =
        status_code(in_held.create(&PostParams::default(), &cm("after", "1")).await.unwrap_err());
    assert_eq!(code, 404, "creating in a missing namespace");
}

#[test]
fn logs_are_plain_text_when_not_written_to_a_terminal() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_krust"))
        .args(["server", "--disable-agent", "--bind-address=127.0.0.1"])
        .arg(format!("--https-listen-port={}", common::free_port()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let ready = line.contains("krust API server is ready");
        seen.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("krust API server is ready")), "{seen:?}");
    assert!(seen.iter().all(|l| !l.contains('\u{1b}')), "colour codes in {seen:?}");
}
