//! End-to-end: the house's registry with the real kubectl — every built-in API of a 1.37
//! server, each resource's own strategy (naming, defaults, immutable fields, Table columns),
//! the ReplicationController controller, one storage under several versions, the reviews and
//! bad input for the newly served kinds.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::KrustServer;

/// `kubectl api-resources` as rows of NAME [SHORTNAMES] APIVERSION NAMESPACED KIND.
fn rows(output: &str) -> Vec<String> {
    let mut rows: Vec<String> = output
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    rows.sort();
    rows
}

#[test]
fn api_resources_are_upstream_137s() {
    let server = KrustServer::start_control_plane(&[]);
    let ours = rows(&server.ok(&["api-resources"]));
    let golden = include_str!("data/api-resources-1.37.txt");
    let mut upstream: Vec<String> = golden
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_owned)
        .collect();
    upstream.sort();
    let missing: Vec<&String> = upstream.iter().filter(|r| !ours.contains(r)).collect();
    let extra: Vec<&String> = ours.iter().filter(|r| !upstream.contains(r)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing: {missing:#?}\nextra: {extra:#?}");
    // Verbs and subresources: read-only component statuses, create-only reviews, scale and
    // status of ReplicationControllers, a CSR's approval.
    let wide = server.ok(&["api-resources", "-o", "wide"]);
    let header = wide.lines().next().unwrap();
    let (from, to) = (header.find("VERBS").unwrap(), header.find("CATEGORIES").unwrap());
    let verbs_of = |name: &str| {
        let line = wide.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default();
        line.get(from..to.min(line.len())).unwrap_or_default().trim().to_owned()
    };
    assert_eq!(verbs_of("componentstatuses"), "get,list");
    assert_eq!(verbs_of("subjectaccessreviews"), "create");
    assert_eq!(verbs_of("bindings"), "create");
    let core = server.ok(&["get", "--raw", "/api/v1"]);
    for sub in ["replicationcontrollers/scale", "replicationcontrollers/status", "pods/eviction"] {
        assert!(core.contains(&format!("\"name\":\"{sub}\"")), "{sub} in {core}");
    }
    let csr = server.ok(&["get", "--raw", "/apis/certificates.k8s.io/v1"]);
    assert!(csr.contains("\"name\":\"certificatesigningrequests/approval\""), "{csr}");
    // Upstream's bootstrap flow-control objects exist from the start.
    let schemas = server.ok(&["get", "flowschemas", "-o", "name"]);
    assert_eq!(schemas.lines().count(), 13, "{schemas}");
    let levels = server.ok(&["get", "prioritylevelconfigurations"]);
    let catch_all = levels.lines().find(|l| l.starts_with("catch-all ")).unwrap_or_default();
    assert!(catch_all.contains("Limited") && catch_all.contains(" 5 "), "{levels}");
    // Component statuses are computed, not stored, and cannot be written.
    let cs = server.ok(&["get", "componentstatuses"]);
    for name in ["controller-manager", "etcd-0", "scheduler"] {
        let line = cs.lines().find(|l| l.starts_with(name)).unwrap_or_default();
        assert!(line.contains("Healthy"), "{cs}");
    }
    let denied = server.kubectl(&["delete", "componentstatus", "etcd-0"]);
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("MethodNotAllowed"), "{denied:?}");
}

const RC: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: web}
spec:
  replicas: 3
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: c
        image: busybox:1.36
        resources: {limits: {cpu: 100m, memory: 64Mi}}
"#;

#[test]
fn replication_controllers_keep_their_pods_scale_and_expose() {
    let server = KrustServer::start_control_plane(&[]);
    server.ok_stdin(&["apply", "-f", "-"], RC);
    // Defaults as upstream: the selector and the RC's labels come from the template.
    let selector = server.ok(&[
        "get",
        "rc",
        "web",
        "-o",
        "jsonpath={.spec.selector.app} {.metadata.labels.app}",
    ]);
    assert_eq!(selector, "web web");
    let count = |server: &KrustServer, want: usize| {
        server.wait_for(
            &["get", "pods", "-l", "app=web", "-o", "name"],
            Duration::from_secs(30),
            |out| out.lines().filter(|l| !l.is_empty()).count() == want,
        )
    };
    count(&server, 3);
    // The pods belong to the RC, are Guaranteed (limits alone default the requests) and
    // their status is reported on the RC.
    let owner = server.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(owner, "ReplicationController");
    let qos =
        server.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.qosClass}"]);
    assert_eq!(qos, "Guaranteed Guaranteed Guaranteed");
    server.wait_for(
        &["get", "rc", "web", "-o", "jsonpath={.status.replicas}"],
        Duration::from_secs(30),
        |s| s == "3",
    );
    server.ok(&["scale", "rc", "web", "--replicas=1"]);
    count(&server, 1);
    let scale =
        server.ok(&["get", "--raw", "/api/v1/namespaces/default/replicationcontrollers/web/scale"]);
    assert!(scale.contains("\"selector\":\"app=web\""), "{scale}");
    let describe = server.ok(&["describe", "rc", "web"]);
    assert!(describe.contains("Replicas:") && describe.contains("1 desired"), "{describe}");
    server.ok(&["expose", "rc", "web", "--port=80"]);
    let svc = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.selector.app}"]);
    assert_eq!(svc, "web");
    // kubectl get rc shows upstream's columns.
    let table = server.ok(&["get", "rc", "-o", "wide"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "DESIRED", "CURRENT", "READY", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    );
    // A selector that does not match the template: upstream's 422, nothing stored.
    let bad = RC
        .replace("name: web}", "name: bad}\n")
        .replace("replicas: 3", "replicas: 1\n  selector: {app: other}");
    let out = server.kubectl_with(common::tool("kubectl"), &["create", "-f", "-"], Some(&bad));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`selector` does not match template `labels`"), "{err}");
    assert!(!server.kubectl(&["get", "rc", "bad"]).status.success());
    // Deleting the RC deletes its pods (the garbage collector follows the owner).
    server.ok(&["delete", "rc", "web"]);
    count(&server, 0);
}

#[test]
fn strategies_validate_as_upstream() {
    let server = KrustServer::start_control_plane(&[]);
    // A subdomain name has no 63-character limit per part.
    let long = "a".repeat(72);
    server.ok(&["create", "configmap", &long, "--from-literal=a=b"]);
    let out = server.kubectl(&["create", "configmap", "Not_Valid"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 1123 subdomain"), "{out:?}");
    // Pod updates: images may change, the restart policy may not.
    server.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: busybox:1.36, resources: {requests: {cpu: 100m}}}]\n",
    );
    assert_eq!(server.ok(&["get", "pod", "p", "-o", "jsonpath={.status.qosClass}"]), "Burstable");
    server.ok(&[
        "patch",
        "pod",
        "p",
        "-p",
        r#"{"spec":{"containers":[{"name":"c","image":"busybox:1.37"}]}}"#,
    ]);
    let out = server.kubectl(&["patch", "pod", "p", "-p", r#"{"spec":{"restartPolicy":"Never"}}"#]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec: Forbidden: pod updates may not change fields other than"), "{err}");
    assert_eq!(server.ok(&["get", "pod", "p", "-o", "jsonpath={.spec.restartPolicy}"]), "Always");
    // A new kind's immutable field, unknown field and wrong apiVersion.
    server.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: runc}\nhandler: runc\n",
    );
    let out = server.kubectl(&[
        "patch",
        "runtimeclass",
        "runc",
        "--type=merge",
        "-p",
        r#"{"handler":"other"}"#,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("handler: Invalid value: \"other\": field is immutable"), "{err}");
    assert_eq!(server.ok(&["get", "runtimeclass", "runc", "-o", "jsonpath={.handler}"]), "runc");
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["create", "--validate=strict", "-f", "-"],
        Some("apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: x}\nhandler: runc\nbogus: 1\n"),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field \"bogus\""), "{out:?}");
    let body = r#"{"apiVersion":"node.k8s.io/v2","kind":"RuntimeClass","metadata":{"name":"y"},"handler":"runc"}"#;
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["create", "--raw", "/apis/node.k8s.io/v1/runtimeclasses", "-f", "-"],
        Some(body),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match the expected API version"),
        "{out:?}"
    );
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["create", "-f", "-"],
        Some("apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: Bad_Name}\nhandler: runc\n"),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is invalid"), "{out:?}");
    let names = server.ok(&["get", "runtimeclasses", "-o", "name"]);
    assert_eq!(names.trim(), "runtimeclass.node.k8s.io/runc");
}

#[test]
fn one_storage_serves_several_versions() {
    let server = KrustServer::start_control_plane(&[]);
    // An HPA written as autoscaling/v1 reads back in v2, and the other way round.
    server.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  maxReplicas: 5\n  targetCPUUtilizationPercentage: 60\n",
    );
    let v2 = server.ok(&[
        "get",
        "horizontalpodautoscalers.v2.autoscaling",
        "web",
        "-o",
        "jsonpath={.spec.metrics[0].resource.target.averageUtilization} {.spec.minReplicas}",
    ]);
    assert_eq!(v2, "60 1");
    server.ok(&["patch", "horizontalpodautoscalers.v2.autoscaling", "web", "--type=merge", "-p", r#"{"spec":{"metrics":[{"type":"Resource","resource":{"name":"cpu","target":{"type":"Utilization","averageUtilization":70}}}]}}"#]);
    let v1 = server.ok(&[
        "get",
        "horizontalpodautoscalers.v1.autoscaling",
        "web",
        "-o",
        "jsonpath={.apiVersion} {.spec.targetCPUUtilizationPercentage}",
    ]);
    assert_eq!(v1, "autoscaling/v1 70");
    let table = server.ok(&["get", "hpa"]);
    assert!(table.contains("Deployment/web") && table.contains("cpu: <unknown>/70%"), "{table}");
    // kubectl autoscale works (it writes autoscaling/v2).
    server.ok(&["create", "deployment", "api", "--image=busybox:1.36"]);
    server.ok(&["autoscale", "deployment", "api", "--max=3", "--cpu=50%"]);
    let v1 = server.ok(&[
        "get",
        "horizontalpodautoscalers.v1.autoscaling",
        "api",
        "-o",
        "jsonpath={.spec.targetCPUUtilizationPercentage}",
    ]);
    assert_eq!(v1, "50");
    // An event written through events.k8s.io/v1 is a core/v1 event too.
    server.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: e1}\neventTime: \"2026-01-01T00:00:00.000000Z\"\nreportingController: test\nreportingInstance: test-1\naction: Testing\nreason: Tested\nnote: hello\ntype: Normal\nregarding: {kind: Pod, name: p, namespace: default}\n",
    );
    let core = server.ok(&[
        "get",
        "events.v1.",
        "e1",
        "-o",
        "jsonpath={.message} {.involvedObject.name} {.reportingComponent}",
    ]);
    assert_eq!(core, "hello p test");
    // Its source, for a field selector, is the reporting controller when it names no other.
    let by_source =
        server.ok(&["get", "events.v1.", "--field-selector", "source=test", "-o", "name"]);
    assert_eq!(by_source.trim(), "event/e1");
    let by_controller = server.ok(&[
        "get",
        "events.v1.events.k8s.io",
        "--field-selector",
        "reportingController=test",
        "-o",
        "name",
    ]);
    assert_eq!(by_controller.trim(), "event.events.k8s.io/e1");
}

#[test]
fn reviews_answer_through_the_authorizer() {
    let server = KrustServer::start_control_plane(&[]);
    let sar = || {
        server.ok_stdin(
            &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
            "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec: {user: bob, resourceAttributes: {verb: get, resource: pods, namespace: default}}\n",
        )
    };
    // bob may do nothing until a binding says so.
    assert_eq!(sar(), "false");
    server.ok(&["create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sar() != "true" {
        assert!(std::time::Instant::now() < deadline, "the binding never took effect");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let lsar = server.ok_stdin(
        &["create", "-n", "default", "-f", "-", "-o", "jsonpath={.metadata.namespace} {.status.allowed}"],
        "apiVersion: authorization.k8s.io/v1\nkind: LocalSubjectAccessReview\nmetadata: {namespace: default}\nspec: {user: bob, resourceAttributes: {verb: get, resource: pods}}\n",
    );
    assert_eq!(lsar, "default true");
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["create", "-f", "-"],
        Some("apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec: {resourceAttributes: {verb: get, resource: pods}}\n"),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("at least one of user or group must be specified"),
        "{out:?}"
    );
    let token = server.ok_stdin(
        &["create", "-f", "-", "-o", "jsonpath={.status.authenticated}"],
        "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {token: not-a-token}\n",
    );
    assert_eq!(token, "false");
    // A review has no Table form: a client that accepts nothing else gets upstream's 406.
    let body = r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","spec":{"nonResourceAttributes":{"path":"/","verb":"get"}}}"#;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        let client = server.client().await;
        let request = http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
            .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
            .header("Content-Type", "application/json")
            .body(body.as_bytes().to_vec())
            .unwrap();
        match client.request::<serde_json::Value>(request).await {
            Err(kube::Error::Api(status)) => status.code,
            other => panic!("expected 406, got {other:?}"),
        }
    });
    assert_eq!(status, 406);
}

#[test]
fn quotas_are_calculated_and_enforced() {
    let server = KrustServer::start_control_plane(&[]);
    server.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: q}\nspec:\n  hard: {pods: \"2\", configmaps: \"5\", count/replicasets.apps: \"3\", requests.cpu: \"1\"}\n",
    );
    // The controller fills in the status promptly.
    server.wait_for(
        &["get", "quota", "q", "-o", "jsonpath={.status.used.pods} {.status.hard.pods}"],
        Duration::from_secs(20),
        |s| s == "0 2",
    );
    // An RC wanting three pods gets two, and says why on its status.
    let rc = RC.replace(
        "resources: {limits: {cpu: 100m, memory: 64Mi}}",
        "resources: {requests: {cpu: 100m}}",
    );
    server.ok_stdin(&["apply", "-f", "-"], &rc);
    let condition = server.wait_for(
        &[
            "get",
            "rc",
            "web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"ReplicaFailure\")].message}",
        ],
        Duration::from_secs(30),
        |s| !s.is_empty(),
    );
    assert!(condition.contains("exceeded quota: q"), "{condition}");
    assert_eq!(server.ok(&["get", "pods", "-o", "name"]).lines().count(), 2);
    // A third pod directly: upstream's message; and one without a CPU request.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: extra}\nspec:\n  containers: [{name: c, image: busybox:1.36, resources: {requests: {cpu: 10m}}}]\n";
    let out = server.kubectl_with(common::tool("kubectl"), &["create", "-f", "-"], Some(pod));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"),
        "{err}"
    );
    // Scaled to what fits, the failure condition goes away.
    server.ok(&["scale", "rc", "web", "--replicas=2"]);
    server.wait_for(
        &["get", "rc", "web", "-o", "jsonpath={.status.conditions}"],
        Duration::from_secs(30),
        str::is_empty,
    );
    server.ok(&["scale", "rc", "web", "--replicas=0"]);
    server.wait_for(
        &["get", "quota", "q", "-o", "jsonpath={.status.used.pods}"],
        Duration::from_secs(30),
        |s| s == "0",
    );
    let bare = pod.replace(", resources: {requests: {cpu: 10m}}", "");
    let out = server.kubectl_with(common::tool("kubectl"), &["create", "-f", "-"], Some(&bare));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must specify requests.cpu"), "{out:?}");
    server.ok_stdin(&["create", "-f", "-"], pod);
    server.wait_for(
        &["get", "quota", "q", "-o", "jsonpath={.status.used.pods} {.status.used.requests\\.cpu}"],
        Duration::from_secs(30),
        |s| s == "1 10m",
    );
}
