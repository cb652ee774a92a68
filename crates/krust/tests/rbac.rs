//! Authorization as a Kubernetes user meets it: RBAC with upstream's bootstrap policy, the
//! mission's pod-reader example with a client certificate, a matrix of `kubectl auth can-i`
//! answers recorded from upstream, escalation prevention, and the Node authorizer with
//! NodeRestriction confining a node agent's credentials to its own node.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{KrustServer, kubectl_as};

const FIXTURE: &str = include_str!("data/rbac-fixture.yaml");
const CAN_I: &str = include_str!("data/can-i.tsv");

/// A kubeconfig for `user` in `groups` with a client certificate from the cluster CA (what
/// an administrator hands a person), made with openssl.
fn certificate_kubeconfig(server: &KrustServer, user: &str, groups: &[&str]) -> PathBuf {
    let tls = server.dir.path().join("data/server/tls");
    let dir = server.dir.path().join(format!("cert-{user}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut subject = format!("/CN={user}");
    for g in groups {
        subject.push_str(&format!("/O={g}"));
    }
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "key.pem"]);
    run(&["req", "-new", "-key", "key.pem", "-subj", &subject, "-out", "req.csr"]);
    // A v3 certificate for client authentication (webpki refuses v1 certificates).
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let ca_cert = tls.join("ca.crt");
    let ca_key = tls.join("ca.key");
    run(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        ca_cert.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    use base64::Engine;
    let b64 = |p: &str| {
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(p)).unwrap())
    };
    common::kubeconfig_as(
        server,
        &format!("cert-{user}"),
        &format!(
            "\n    client-certificate-data: {}\n    client-key-data: {}",
            b64("cert.pem"),
            b64("key.pem")
        ),
    )
}

/// Waits until the aggregated `edit` and `view` roles hold their rules (the aggregation
/// controller fills them after start).
fn wait_aggregated(server: &KrustServer) {
    for role in ["admin", "edit", "view"] {
        server.wait_for(
            &["get", "clusterrole", role, "-o", "jsonpath={.rules[*].resources}"],
            Duration::from_secs(30),
            |rules| rules.contains("pods") && rules.contains("deployments"),
        );
    }
}

#[test]
fn the_missions_pod_reader_example_holds_for_alice_and_the_monitoring_account() {
    let server = KrustServer::start_with_agent(&[]);
    server.ok_stdin(&["apply", "-f", "-"], FIXTURE);
    server.ok(&[
        "run",
        "greeter",
        "-n",
        "development",
        "--image",
        common::BUSYBOX,
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "echo hello from development; sleep 3600",
    ]);
    server.ok(&[
        "run",
        "other",
        "-n",
        "default",
        "--image",
        common::BUSYBOX,
        "--",
        "sleep",
        "3600",
    ]);
    server.wait_phase("development", "greeter", "Running", Duration::from_secs(60));
    let alice = certificate_kubeconfig(&server, "alice", &["developers"]);

    let (ok, out, err) = kubectl_as(&server, &alice, &["get", "pods", "-n", "development"]);
    assert!(ok && out.contains("greeter"), "{out} {err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = kubectl_as(&server, &alice, &["logs", "greeter", "-n", "development"]);
        if ok && out.contains("hello from development") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "alice reads no logs: {out} {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, _, err) = kubectl_as(&server, &alice, &["get", "pods", "-n", "default"]);
    assert!(!ok, "alice listed pods in default");
    assert!(
        err.contains(
            "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        ),
        "{err}"
    );
    let (ok, _, err) =
        kubectl_as(&server, &alice, &["delete", "pod", "greeter", "-n", "development"]);
    assert!(!ok, "alice deleted a pod");
    assert!(
        err.contains(
            "pods \"greeter\" is forbidden: User \"alice\" cannot delete resource \"pods\""
        ),
        "{err}"
    );
    let (ok, _, err) = kubectl_as(&server, &alice, &["get", "secrets", "-n", "development"]);
    assert!(!ok && err.contains("forbidden"), "{err}");
    let (ok, _, err) =
        kubectl_as(&server, &alice, &["exec", "greeter", "-n", "development", "--", "true"]);
    assert!(!ok && err.contains("cannot create resource \"pods/exec\""), "{err}");
    let (ok, out, _) =
        kubectl_as(&server, &alice, &["auth", "whoami", "-o", "jsonpath={.status.userInfo}"]);
    assert!(ok && out.contains("\"username\":\"alice\"") && out.contains("developers"), "{out}");
    let (_, out, _) =
        kubectl_as(&server, &alice, &["auth", "can-i", "watch", "pods", "-n", "development"]);
    assert_eq!(out, "yes");
    let (_, list, _) =
        kubectl_as(&server, &alice, &["auth", "can-i", "--list", "-n", "development"]);
    let pods_line = list.lines().find(|l| l.starts_with("pods ")).unwrap_or_default().to_owned();
    assert!(pods_line.contains("[get list watch]"), "{list}");
    assert!(list.lines().any(|l| l.starts_with("pods/log ")), "{list}");

    // The monitoring ServiceAccount's token: pods in development, nothing in its own namespace.
    let token = server.ok(&["create", "token", "monitoring", "-n", "monitoring"]);
    let sa = common::token_kubeconfig(&server, &token);
    let (ok, out, err) = kubectl_as(&server, &sa, &["get", "pods", "-n", "development"]);
    assert!(ok && out.contains("greeter"), "{out} {err}");
    let (ok, _, err) = kubectl_as(&server, &sa, &["get", "pods", "-n", "monitoring"]);
    assert!(!ok && err.contains("system:serviceaccount:monitoring:monitoring"), "{err}");
    // Taking the binding away takes the access away.
    server.ok(&["delete", "rolebinding", "dev-pod-reader", "-n", "development"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, _, _) = kubectl_as(&server, &alice, &["get", "pods", "-n", "development"]);
        if !ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "alice kept access without a binding");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn can_i_answers_as_upstream_does() {
    let server = KrustServer::start_control_plane(&[]);
    server.ok_stdin(&["apply", "-f", "-"], FIXTURE);
    wait_aggregated(&server);
    let mut wrong = Vec::new();
    let mut asked = 0;
    for line in CAN_I.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (expected, args) = line.split_once('\t').unwrap();
        let mut all = vec!["auth", "can-i"];
        all.extend(args.split(' '));
        let out = server.kubectl(&all);
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        asked += 1;
        if answer != expected {
            wrong.push(format!(
                "can-i {args}: {answer} (upstream: {expected}) {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(asked >= 40, "only {asked} cases");
    assert!(wrong.is_empty(), "{} of {asked} differ:\n{}", wrong.len(), wrong.join("\n"));
}

#[test]
fn nobody_grants_what_they_do_not_hold() {
    let server = KrustServer::start_control_plane(&[]);
    server.ok(&["create", "namespace", "team"]);
    // mia manages roles and bindings in team, and may read pods there.
    server.ok(&[
        "create",
        "role",
        "role-manager",
        "-n",
        "team",
        "--verb=create,update,get,list",
        "--resource=roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io",
    ]);
    server.ok(&[
        "create",
        "role",
        "pod-reader",
        "-n",
        "team",
        "--verb=get,list",
        "--resource=pods",
    ]);
    for role in ["role-manager", "pod-reader"] {
        server.ok(&["create", "rolebinding", role, "-n", "team", "--role", role, "--user=mia"]);
    }
    let as_mia = |args: &[&str]| {
        let mut all = vec!["--as=mia", "-n", "team"];
        all.extend_from_slice(args);
        let out = server.kubectl(&all);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let wait_allowed = |verb: &str, resource: &str| {
        server.wait_for(
            &["auth", "can-i", verb, resource, "-n", "team", "--as=mia"],
            Duration::from_secs(10),
            |a| a == "yes",
        );
    };
    wait_allowed("create", "roles.rbac.authorization.k8s.io");
    wait_allowed("list", "pods");
    // What she holds she may grant; more she may not.
    let (ok, err) = as_mia(&["create", "role", "readers", "--verb=get", "--resource=pods"]);
    assert!(ok, "{err}");
    let (ok, err) = as_mia(&["create", "role", "deleters", "--verb=delete", "--resource=pods"]);
    assert!(!ok, "mia granted delete");
    assert!(
        err.contains("roles.rbac.authorization.k8s.io \"deleters\" is forbidden")
            && err.contains("attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    // Nor bind a role holding more than she does, unless given `bind` on it.
    let (ok, err) = as_mia(&["create", "rolebinding", "r", "--role=pod-reader", "--user=joe"]);
    assert!(ok, "{err}");
    let (ok, err) = as_mia(&["create", "rolebinding", "a", "--clusterrole=admin", "--user=joe"]);
    assert!(!ok && err.contains("forbidden"), "mia bound admin: {err}");
    server.ok(&[
        "create",
        "role",
        "admin-binder",
        "-n",
        "team",
        "--verb=bind",
        "--resource=clusterroles.rbac.authorization.k8s.io",
        "--resource-name=admin",
    ]);
    server.ok(&[
        "create",
        "rolebinding",
        "admin-binder",
        "-n",
        "team",
        "--role=admin-binder",
        "--user=mia",
    ]);
    server.wait_for(
        &["auth", "can-i", "bind", "clusterroles/admin", "-n", "team", "--as=mia"],
        Duration::from_secs(10),
        |a| a == "yes",
    );
    let (ok, err) = as_mia(&["create", "rolebinding", "a", "--clusterrole=admin", "--user=joe"]);
    assert!(ok, "{err}");
}

#[test]
fn the_bootstrap_policy_is_upstreams_and_comes_back() {
    let mut server = KrustServer::start_control_plane(&[]);
    wait_aggregated(&server);
    let roles = server.ok(&["get", "clusterroles", "-o", "name"]);
    for role in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
        "system:node-proxier",
        "system:kube-scheduler",
        "system:controller:replicaset-controller",
        "system:controller:clusterrole-aggregation-controller",
    ] {
        assert!(
            roles.lines().any(|l| l == format!("clusterrole.rbac.authorization.k8s.io/{role}")),
            "{role} missing"
        );
    }
    // Aggregation: a new role labelled for `view` extends it.
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: widget-viewer\n  labels:\n    rbac.authorization.k8s.io/aggregate-to-view: \"true\"\nrules:\n- apiGroups: [\"example.com\"]\n  resources: [\"widgets\"]\n  verbs: [\"get\", \"list\", \"watch\"]\n",
    );
    server.wait_for(
        &["get", "clusterrole", "view", "-o", "jsonpath={.rules[*].resources}"],
        Duration::from_secs(10),
        |r| r.contains("widgets"),
    );
    // A deleted bootstrap role comes back at the next start; one its owner protects keeps
    // the owner's edit.
    server.ok(&["delete", "clusterrole", "system:basic-user"]);
    server.ok(&[
        "annotate",
        "clusterrole",
        "system:discovery",
        "rbac.authorization.kubernetes.io/autoupdate=false",
        "--overwrite",
    ]);
    server.ok(&["label", "clusterrole", "system:discovery", "edited=yes"]);
    server.ok_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: system:discovery\nrules:\n- nonResourceURLs: [\"/api\", \"/api/*\", \"/apis\", \"/apis/*\", \"/version\"]\n  verbs: [\"get\"]\n",
    );
    server.restart();
    server.wait_for(
        &["get", "clusterrole", "system:basic-user", "-o", "name"],
        Duration::from_secs(30),
        |o| !o.is_empty(),
    );
    let discovery =
        server.ok(&["get", "clusterrole", "system:discovery", "-o", "jsonpath={.rules}"]);
    assert!(!discovery.contains("/healthz"), "protected role was reconciled: {discovery}");
    // Without credentials: health and version, as long as RBAC's public-info-viewer binding
    // says so; everything else 401.
    let url = common::server_url(&server);
    let anonymous = |path: &str| {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &format!("{url}{path}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(anonymous("/version"), "200");
    assert_eq!(anonymous("/readyz"), "200");
    assert_eq!(anonymous("/apis"), "401");
    assert_eq!(anonymous("/api/v1/namespaces/default/pods"), "401");
    server.ok(&["delete", "clusterrolebinding", "system:public-info-viewer"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while anonymous("/version") != "401" {
        assert!(std::time::Instant::now() < deadline, "anonymous still reads /version unbound");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Everyone authenticated still discovers the API; nobody without credentials does.
    let out = server.kubectl(&[
        "get",
        "--raw",
        "/apis",
        "--as=nobody",
        "--as-group=system:authenticated",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_node_reaches_only_its_own_pods_objects_and_writes_only_itself() {
    let server = KrustServer::start_with_agent(&[]);
    let node = server.node.clone().unwrap();
    let node_config = server.dir.path().join("data/agent/kubelet.kubeconfig");
    assert!(node_config.exists());
    server.ok(&["create", "secret", "generic", "used", "--from-literal=k=v"]);
    server.ok(&["create", "secret", "generic", "unused", "--from-literal=k=v"]);
    server.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: user\nspec:\n  containers:\n  - name: c\n    image: {}\n    command: [sleep, \"3600\"]\n    volumeMounts:\n    - {{name: s, mountPath: /s}}\n  volumes:\n  - name: s\n    secret:\n      secretName: used\n",
            common::BUSYBOX
        ),
    );
    server.wait_phase("default", "user", "Running", Duration::from_secs(60));
    let (ok, out, err) =
        kubectl_as(&server, &node_config, &["get", "secret", "used", "-o", "name"]);
    assert!(ok && out == "secret/used", "{out} {err}");
    let (ok, _, err) = kubectl_as(&server, &node_config, &["get", "secret", "unused"]);
    assert!(!ok, "the node read a secret no pod of its uses");
    assert!(err.contains("no relationship found between node"), "{err}");
    let (ok, _, err) = kubectl_as(&server, &node_config, &["get", "secrets"]);
    assert!(!ok && err.contains("forbidden"), "{err}");
    // Another node's object is not its to change.
    server.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: elsewhere\n",
    );
    let (ok, _, err) = kubectl_as(&server, &node_config, &["label", "node", "elsewhere", "x=y"]);
    assert!(!ok, "the node labelled another node");
    assert!(err.contains("is not allowed to modify node \"elsewhere\""), "{err}");
    // Its own node it labels, except with the labels reserved to the cluster's operators.
    let (ok, _, err) =
        kubectl_as(&server, &node_config, &["label", "node", &node, "example.com/disk=ssd"]);
    assert!(ok, "{err}");
    let (ok, _, err) = kubectl_as(
        &server,
        &node_config,
        &["label", "node", &node, "node-restriction.kubernetes.io/trusted=yes"],
    );
    assert!(!ok && err.contains("is not allowed to modify the following labels"), "{err}");
    let (ok, _, err) =
        kubectl_as(&server, &node_config, &["taint", "node", &node, "lifted=yes:NoSchedule"]);
    assert!(!ok && err.contains("is not allowed to modify taints"), "{err}");
    let (ok, _, err) =
        kubectl_as(&server, &node_config, &["delete", "pod", "user", "--wait=false"]);
    assert!(ok, "a node may delete its own pod: {err}");
    // The server marked its own node as the control plane, with its own credentials.
    server.wait_for(
        &["get", "node", &node, "-o", "jsonpath={.metadata.labels}"],
        Duration::from_secs(10),
        |labels| labels.contains("node-role.kubernetes.io/control-plane"),
    );
}
