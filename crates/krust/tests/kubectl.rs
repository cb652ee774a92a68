//! End-to-end: the real kubectl (v1.37, and v1.34 for skew) against a real `krust server`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{KrustServer, tool};

const MANIFEST: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  namespace: demo
  labels: {app: web}
data:
  a: "1"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        ports: [{containerPort: 80}]
"#;

#[test]
fn kubectl_everyday_commands() {
    let server = KrustServer::start_control_plane(&[]);
    let version = server.ok(&["version", "-o", "json"]);
    assert!(version.contains("\"gitVersion\": \"v1.37.0+krust\""), "{version}");
    let resources = server.ok(&["api-resources"]);
    let deployments =
        resources.lines().find(|l| l.starts_with("deployments ")).expect("deployments listed");
    assert_eq!(
        deployments.split_whitespace().collect::<Vec<_>>(),
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );
    assert!(resources.lines().any(|l| l.starts_with("customresourcedefinitions ")), "{resources}");
    let namespaces = server.ok(&["get", "namespaces"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(namespaces.contains(ns), "{namespaces}");
    }
    assert!(
        namespaces.starts_with("NAME") && namespaces.contains("STATUS"),
        "server-side Table columns: {namespaces}"
    );

    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n",
    );
    // apply from a directory
    let dir = server.dir.path().join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.yaml"), MANIFEST).unwrap();
    let applied = server.ok(&["apply", "-f", dir.to_str().unwrap()]);
    assert!(
        applied.contains("configmap/cfg created")
            && applied.contains("deployment.apps/web created"),
        "{applied}"
    );

    let wide = server.ok(&["get", "deploy", "-n", "demo", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS") && wide.contains("busybox:1.36") && wide.contains("app=web"),
        "{wide}"
    );

    // update through apply (strategic merge patch computed by kubectl)
    std::fs::write(
        dir.join("app.yaml"),
        MANIFEST.replace("replicas: 2", "replicas: 3").replace("\"1\"", "\"2\""),
    )
    .unwrap();
    let reapplied = server.ok(&["apply", "-f", dir.to_str().unwrap()]);
    assert!(reapplied.contains("deployment.apps/web configured"), "{reapplied}");
    assert_eq!(
        server.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation}"
        ]),
        "3 2"
    );

    server.ok(&["scale", "deploy/web", "-n", "demo", "--replicas=5"]);
    server.ok(&["set", "image", "deploy/web", "-n", "demo", "web=busybox:1.37"]);
    assert_eq!(
        server.ok(&["get", "deploy", "web", "-n", "demo", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.metadata.generation}"]),
        "5 busybox:1.37 4"
    );

    server.ok(&["label", "cm", "cfg", "-n", "demo", "tier=x"]);
    server.ok(&["annotate", "cm", "cfg", "-n", "demo", "note=y"]);
    let labelled = server.ok(&["get", "cm", "-n", "demo", "-l", "tier=x", "-o", "name"]);
    assert_eq!(labelled.trim(), "configmap/cfg");
    assert_eq!(server.ok(&["get", "cm", "-n", "demo", "-l", "tier=nope", "-o", "name"]).trim(), "");
    server.ok(&[
        "patch",
        "cm",
        "cfg",
        "-n",
        "demo",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/data/a","value":"9"}]"#,
    ]);
    server.ok(&["patch", "cm", "cfg", "-n", "demo", "-p", r#"{"data":{"b":"3"}}"#]);
    server.ok(&["patch", "cm", "cfg", "-n", "demo", "--type=merge", "-p", r#"{"data":{"c":"4"}}"#]);
    assert_eq!(
        server.ok(&["get", "cm", "cfg", "-n", "demo", "-o", "jsonpath={.data}"]),
        r#"{"a":"9","b":"3","c":"4"}"#
    );

    // field selectors, all namespaces, yaml/json output
    let by_name =
        server.ok(&["get", "cm", "-A", "--field-selector", "metadata.name=cfg", "-o", "name"]);
    assert_eq!(by_name.trim(), "configmap/cfg");
    let yaml = server.ok(&["get", "cm", "cfg", "-n", "demo", "-o", "yaml"]);
    assert!(yaml.contains("resourceVersion:") && yaml.contains("uid:"), "{yaml}");

    // replace with a stale object is a conflict
    let json = server.ok(&["get", "cm", "cfg", "-n", "demo", "-o", "json"]);
    server.ok(&["label", "cm", "cfg", "-n", "demo", "bump=1"]);
    let stale = server.kubectl_with(tool("kubectl"), &["replace", "-f", "-"], Some(&json));
    assert!(!stale.status.success());
    let err = String::from_utf8_lossy(&stale.stderr);
    assert!(err.contains("Conflict") && err.contains("the object has been modified"), "{err}");

    // diff shows the live change; server-side apply succeeds
    let diff = server.kubectl(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(1), "diff exits 1 when there are differences");
    assert!(String::from_utf8_lossy(&diff.stdout).contains("-  replicas: 5"));
    // Server-side apply: fields other managers changed (patch, scale, set image) conflict...
    let conflict = server.kubectl(&["apply", "--server-side", "-f", dir.to_str().unwrap()]);
    assert!(!conflict.status.success());
    let err = String::from_utf8_lossy(&conflict.stderr);
    assert!(err.contains("conflict with \"kubectl-patch\"") && err.contains(".data.a"), "{err}");
    // ...until forced, which takes them over.
    let ssa =
        server.ok(&["apply", "--server-side", "--force-conflicts", "-f", dir.to_str().unwrap()]);
    assert!(ssa.contains("serverside-applied"), "{ssa}");
    let managers = server.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "demo",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert!(
        managers.split(' ').any(|m| m == "kubectl"),
        "kubectl owns the applied fields: {managers}"
    );
    assert_eq!(server.ok(&["get", "cm", "cfg", "-n", "demo", "-o", "jsonpath={.data.a}"]), "2");

    // chunked listing follows continue tokens
    for i in 0..7 {
        server.ok_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: page-{i}\n  namespace: demo\n"
            ),
        );
    }
    // (Eight of ours, and the namespace's kube-root-ca.crt.)
    let chunked = server.ok(&["get", "cm", "-n", "demo", "--chunk-size=2", "-o", "name"]);
    assert_eq!(chunked.lines().count(), 9, "{chunked}");
    assert!(chunked.contains("configmap/kube-root-ca.crt"), "{chunked}");

    // describe and explain work
    let describe = server.ok(&["describe", "deploy", "web", "-n", "demo"]);
    assert!(
        describe.contains("busybox:1.36") && describe.contains("Replicas:               3 desired"),
        "{describe}"
    );
    let explain = server.ok(&["explain", "deployment.spec.replicas"]);
    assert!(
        explain.contains("KIND:       Deployment") && explain.contains("replicas <integer>"),
        "{explain}"
    );
    assert!(
        explain.contains("Number of desired pods"),
        "field descriptions come from the schema: {explain}"
    );

    // errors come back as Status objects kubectl can print
    let missing = server.kubectl(&["get", "cm", "nope", "-n", "demo"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("Error from server (NotFound): configmaps \"nope\" not found")
    );
    let invalid = server.kubectl_with(
        tool("kubectl"),
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n"),
    );
    assert!(
        String::from_utf8_lossy(&invalid.stderr).contains("Invalid value: \"Bad_Name\""),
        "{}",
        String::from_utf8_lossy(&invalid.stderr)
    );
    let missing_ns = server.kubectl_with(
        tool("kubectl"),
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: nowhere\n"),
    );
    assert!(
        String::from_utf8_lossy(&missing_ns.stderr).contains("namespaces \"nowhere\" not found")
    );

    // delete, including the namespace and what is in it
    server.ok(&["delete", "-f", dir.to_str().unwrap()]);
    assert_eq!(server.ok(&["get", "deploy", "-n", "demo", "-o", "name"]).trim(), "");
    server.ok(&["delete", "namespace", "demo", "--timeout=60s"]);
    let after = server.ok(&["get", "namespaces", "-o", "name"]);
    assert!(!after.contains("namespace/demo"), "{after}");
}

#[test]
fn kubectl_134_skew_and_restart_keep_data() {
    let mut server = KrustServer::start(&[]);
    server.ok_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keep\n  namespace: default\ndata:\n  k: v\n");
    let old = server.kubectl_with(
        tool("kubectl-v34"),
        &["get", "cm", "keep", "-o", "jsonpath={.data.k}"],
        None,
    );
    assert!(old.status.success(), "{}", String::from_utf8_lossy(&old.stderr));
    assert_eq!(String::from_utf8_lossy(&old.stdout), "v");
    let ca_before =
        std::fs::read_to_string(server.dir.path().join("data/server/tls/ca.crt")).unwrap();
    server.restart();
    assert_eq!(
        server.ok(&["get", "cm", "keep", "-o", "jsonpath={.data.k}"]),
        "v",
        "data survives SIGKILL and restart"
    );
    let ca_after =
        std::fs::read_to_string(server.dir.path().join("data/server/tls/ca.crt")).unwrap();
    assert_eq!(ca_before, ca_after, "the PKI is reused");
}

#[test]
fn etcd_backend_serves_kubectl() {
    let etcd = storage::testing::EtcdServer::start().expect("etcd-server must be installed");
    let endpoint = format!("--datastore-endpoint={}", etcd.endpoint);
    let server = KrustServer::start(&[&endpoint]);
    server.ok_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: on-etcd\n  namespace: default\ndata:\n  k: v\n");
    assert_eq!(server.ok(&["get", "cm", "on-etcd", "-o", "jsonpath={.data.k}"]), "v");
    let listed = server.ok(&["get", "ns", "-o", "name"]);
    assert!(listed.contains("namespace/kube-system"));
}

#[test]
fn kubectl_create_subcommands_send_protobuf() {
    let server = KrustServer::start(&[]);
    // Each of these goes through client-go's typed clients, which send protobuf bodies.
    server.ok(&["create", "namespace", "pb"]);
    server.ok(&["create", "secret", "generic", "s1", "--from-literal=user=admin", "-n", "pb"]);
    let file = server.dir.path().join("app.properties");
    std::fs::write(&file, "color=blue\n").unwrap();
    server.ok(&[
        "create",
        "configmap",
        "c1",
        &format!("--from-file={}", file.display()),
        "-n",
        "pb",
    ]);
    server.ok(&["create", "deployment", "web", "--image=busybox:1.36", "--replicas=2", "-n", "pb"]);
    server.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080", "-n", "pb"]);

    assert_eq!(
        server.ok(&["get", "secret", "s1", "-n", "pb", "-o", "jsonpath={.data.user}"]),
        "YWRtaW4="
    );
    assert_eq!(
        server.ok(&["get", "cm", "c1", "-n", "pb", "-o", "jsonpath={.data.app\\.properties}"]),
        "color=blue\n"
    );
    let deploy = server.ok(&["get", "deploy", "web", "-n", "pb", "-o", "json"]);
    let deploy: serde_json::Value = serde_json::from_str(&deploy).unwrap();
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["spec"]["template"]["spec"]["containers"][0]["image"], "busybox:1.36");
    assert_eq!(
        deploy["spec"]["strategy"]["type"], "RollingUpdate",
        "defaults apply to protobuf creates too"
    );
    assert!(
        deploy["spec"].get("paused").is_none(),
        "Go's zero values do not leak into the object: {}",
        deploy["spec"]
    );
    let svc = server.ok(&[
        "get",
        "svc",
        "web",
        "-n",
        "pb",
        "-o",
        "jsonpath={.spec.clusterIP} {.spec.ports[0].targetPort}",
    ]);
    let (ip, target) = svc.split_once(' ').unwrap();
    assert!(ip.starts_with("10.43."), "a ClusterIP from the service CIDR: {svc}");
    assert_eq!(target, "8080");
    // auth can-i / whoami post protobuf reviews.
    assert_eq!(server.ok(&["auth", "can-i", "create", "pods", "-n", "pb"]).trim(), "yes");
    assert_eq!(server.ok(&["auth", "can-i", "get", "/healthz"]).trim(), "yes");
    let whoami = server.ok(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
    ]);
    assert!(whoami.starts_with("system:admin ") && whoami.contains("system:masters"), "{whoami}");
    // Deleting through the typed client sends protobuf DeleteOptions.
    server.ok(&["delete", "secret", "s1", "-n", "pb"]);
    assert!(server.kubectl(&["get", "secret", "s1", "-n", "pb"]).status.code() == Some(1));
}

#[test]
fn helm_install_upgrade_list_uninstall() {
    let server = KrustServer::start(&[]);
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chart");
    let helm = |args: &[&str]| {
        let out = server.kubectl_with(tool("helm"), args, None);
        assert!(
            out.status.success(),
            "helm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let chart = chart.to_str().unwrap();
    helm(&["install", "rel1", chart, "-n", "default"]);
    assert_eq!(
        server.ok(&["get", "cm", "rel1-config", "-o", "jsonpath={.data.greeting}"]),
        "hello"
    );
    assert_eq!(server.ok(&["get", "deploy", "rel1-web", "-o", "jsonpath={.spec.replicas}"]), "1");
    let svc_ip = server.ok(&["get", "svc", "rel1-web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(
        svc_ip.starts_with("10.43."),
        "server-side-applied Service got a ClusterIP: {svc_ip:?}"
    );
    let managed = server.ok(&[
        "get",
        "cm",
        "rel1-config",
        "-o",
        "jsonpath={.metadata.labels.app\\.kubernetes\\.io/managed-by}",
    ]);
    assert_eq!(managed, "Helm");

    helm(&[
        "upgrade",
        "rel1",
        chart,
        "-n",
        "default",
        "--set",
        "replicaCount=3",
        "--set",
        "greeting=hi",
    ]);
    assert_eq!(server.ok(&["get", "deploy", "rel1-web", "-o", "jsonpath={.spec.replicas}"]), "3");
    assert_eq!(server.ok(&["get", "cm", "rel1-config", "-o", "jsonpath={.data.greeting}"]), "hi");

    let list = helm(&["list", "-n", "default"]);
    let row = list.lines().find(|l| l.starts_with("rel1")).unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains("deployed") && row.split_whitespace().nth(2) == Some("2"), "{row}");
    let releases = server.ok(&["get", "secrets", "-l", "owner=helm,name=rel1", "-o", "name"]);
    assert_eq!(releases.lines().count(), 2, "one release Secret per revision: {releases}");

    helm(&["uninstall", "rel1", "-n", "default"]);
    assert_eq!(server.ok(&["get", "deploy,svc,cm", "-l", "app=rel1-web", "-o", "name"]).trim(), "");
    assert!(server.kubectl(&["get", "cm", "rel1-config"]).status.code() == Some(1));
    assert_eq!(server.ok(&["get", "secrets", "-l", "owner=helm", "-o", "name"]).trim(), "");
}

#[test]
fn python_client_lists_and_watches() {
    let server = KrustServer::start(&[]);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/python_client.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&server.kubeconfig)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("watched ADDED py-cm"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn custom_resource_definitions_serve_their_types() {
    let mut server = KrustServer::start(&[]);
    let crd = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/widget-crd.yaml");
    server.ok(&["apply", "-f", crd.to_str().unwrap()]);
    server.ok(&["wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=20s"]);
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n",
    );
    assert_eq!(server.ok(&["get", "wd", "-o", "name"]).trim(), "widget.example.com/w1");
    // Every served version reads the same object (no conversion needed between them).
    assert_eq!(
        server.ok(&[
            "get",
            "widgets.v1beta1.example.com",
            "w1",
            "-o",
            "jsonpath={.apiVersion} {.spec.size}"
        ]),
        "example.com/v1beta1 3"
    );
    // An update through apply is a merge patch for custom types, and bumps generation.
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 5\n",
    );
    assert_eq!(
        server.ok(&["get", "wd", "w1", "-o", "jsonpath={.spec.size} {.metadata.generation}"]),
        "5 2"
    );
    let api_resources = server.ok(&["api-resources", "--api-group=example.com"]);
    assert!(api_resources.contains("widgets") && api_resources.contains("wd"), "{api_resources}");
    // The definition survives a restart and its types are served again.
    server.restart();
    assert_eq!(server.ok(&["get", "wd", "w1", "-o", "jsonpath={.spec.size}"]), "5");
    // Deleting the definition stops serving the type and deletes its objects.
    server.ok(&["delete", "crd", "widgets.example.com"]);
    let gone = server.kubectl(&["get", "widgets.example.com"]);
    assert!(!gone.status.success());
    server.ok(&["apply", "-f", crd.to_str().unwrap()]);
    assert_eq!(
        server.ok(&["get", "wd", "-o", "name"]).trim(),
        "",
        "objects of a deleted definition do not come back"
    );
}

#[test]
fn helm_installs_a_chart_with_crds() {
    let server = KrustServer::start(&[]);
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/crd-chart");
    let out = server.kubectl_with(tool("helm"), &["install", "w", chart.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.ok(&["get", "widgets", "w-widget", "-o", "jsonpath={.spec.size}"]), "7");
    let out = server.kubectl_with(tool("helm"), &["uninstall", "w"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(server.kubectl(&["get", "widgets", "w-widget"]).status.code() == Some(1));
}

#[test]
fn kubectl_get_watch_prints_table_rows() {
    use std::io::{BufRead, BufReader};
    let server = KrustServer::start(&[]);
    server.ok_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: before\n  namespace: default\ndata:\n  a: b\n");
    let mut child = std::process::Command::new(tool("kubectl"))
        .args(["get", "cm", "-w", "-n", "default"])
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut created = false;
    while !seen.iter().any(|l: &String| l.starts_with("during ")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no watch row for the new ConfigMap; saw {seen:?}");
        if let Ok(line) = lines_rx.recv_timeout(left.min(std::time::Duration::from_millis(200))) {
            seen.push(line);
        }
        if !created && seen.iter().any(|l| l.starts_with("before ")) {
            server.ok_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: during\n  namespace: default\ndata:\n  a: b\n  c: d\n");
            created = true;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen[0].starts_with("NAME") && seen[0].contains("DATA"),
        "one header from the server's columns: {seen:?}"
    );
    let during = seen.iter().find(|l| l.starts_with("during ")).unwrap();
    assert_eq!(
        during.split_whitespace().nth(1),
        Some("2"),
        "the watch event carries the DATA cell: {during}"
    );
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("NAME")).count(),
        1,
        "later events carry no headers: {seen:?}"
    );
}

#[test]
fn two_servers_on_one_host_do_not_collide() {
    let a = KrustServer::start(&[]);
    let b = KrustServer::start(&[]);
    a.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: only-in-a\n  namespace: default\n",
    );
    assert_eq!(a.ok(&["get", "cm", "only-in-a", "-o", "name"]).trim(), "configmap/only-in-a");
    assert_eq!(b.kubectl(&["get", "cm", "only-in-a"]).status.code(), Some(1));
    // Each kubeconfig trusts only its own server's CA.
    let cross = a.kubectl(&["--server", &format!("https://127.0.0.1:{}", b.port), "get", "ns"]);
    assert!(!cross.status.success(), "a's credentials must not work against b");
}
