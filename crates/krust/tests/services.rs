//! Services as a Kubernetes user meets them: addresses and node ports allocated from the
//! configured ranges, asked-for ones honoured or refused as upstream refuses them, and the
//! fields a change of type adds or drops.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{BUSYBOX, KrustServer};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};

fn service(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// The 422's message, and that nothing was stored under the name.
async fn refused(services: &Api<Service>, svc: Service) -> String {
    let name = svc.metadata.name.clone().unwrap();
    match services.create(&PostParams::default(), &svc).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{}", s.message);
            assert!(services.get_opt(&name).await.unwrap().is_none(), "nothing is stored");
            s.message
        }
        other => panic!("expected 422, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_and_node_ports_come_from_their_ranges() {
    let server = KrustServer::start_control_plane(&["--service-node-port-range", "30100-30199"]);
    let client = server.client().await;
    let services: Api<Service> = Api::namespaced(client, "default");
    let ports = serde_json::json!([{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]);

    // Every port of a NodePort Service gets a node port from the range.
    let web = services
        .create(
            &PostParams::default(),
            &service("web", serde_json::json!({"type": "NodePort", "ports": ports})),
        )
        .await
        .unwrap();
    let spec = web.spec.unwrap();
    let node_ports: Vec<i32> = spec.ports.unwrap().iter().map(|p| p.node_port.unwrap()).collect();
    assert!(node_ports.iter().all(|p| (30100..=30199).contains(p)), "{node_ports:?}");
    assert_ne!(node_ports[0], node_ports[1]);
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
    let web_ip = spec.cluster_ip.unwrap();
    assert!(web_ip.starts_with("10.43."), "{web_ip}");

    // An address or port asked for is given when free and in range, refused otherwise.
    let asked = services
        .create(
            &PostParams::default(),
            &service(
                "asked",
                serde_json::json!({"type": "NodePort", "clusterIP": "10.43.7.7",
                "ports": [{"port": 80, "nodePort": 30150}]}),
            ),
        )
        .await
        .unwrap();
    let spec = asked.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.7.7"));
    assert_eq!(spec.ports.unwrap()[0].node_port, Some(30150));
    let message = refused(
        &services,
        service("taken-ip", serde_json::json!({"clusterIP": web_ip, "ports": [{"port": 80}]})),
    )
    .await;
    assert_eq!(
        message,
        format!(
            "Service \"taken-ip\" is invalid: spec.clusterIPs[0]: Invalid value: \"{web_ip}\": provided IP is already allocated"
        )
    );
    let message = refused(
        &services,
        service("far-ip", serde_json::json!({"clusterIP": "192.168.1.1", "ports": [{"port": 80}]})),
    )
    .await;
    assert!(
        message.ends_with(
            "provided IP is not in the valid range. The range of valid IPs is 10.43.0.0/16"
        ),
        "{message}"
    );
    let message = refused(
        &services,
        service(
            "taken-port",
            serde_json::json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30150}]}),
        ),
    )
    .await;
    assert_eq!(
        message,
        "Service \"taken-port\" is invalid: spec.ports[0].nodePort: Invalid value: 30150: provided port is already allocated"
    );
    let message = refused(
        &services,
        service(
            "far-port",
            serde_json::json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30000}]}),
        ),
    )
    .await;
    assert!(
        message.ends_with(
            "provided port is not in the valid range. The range of valid ports is 30100-30199"
        ),
        "{message}"
    );
    let message = refused(
        &services,
        service(
            "twice",
            serde_json::json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
        ),
    )
    .await;
    assert!(message.contains("spec.ports[1]: Duplicate value"), "{message}");

    // The IP families of a cluster that serves IPv4 only: dual-stack or IPv6 asked for is
    // refused, preferred dual-stack gets IPv4 alone.
    let port = serde_json::json!([{"port": 80}]);
    for (spec, expected) in [
        (
            serde_json::json!({"ipFamilyPolicy": "RequireDualStack", "ports": port}),
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
        ),
        (
            serde_json::json!({"ipFamilies": ["IPv4", "IPv6"], "ports": port}),
            "this cluster is not configured for dual-stack services",
        ),
        (
            serde_json::json!({"ipFamilies": ["IPv6"], "ports": port}),
            "spec.ipFamilies[0]: Invalid value: \"IPv6\"",
        ),
        (
            serde_json::json!({"ipFamilyPolicy": "Bogus", "ports": port}),
            "spec.ipFamilyPolicy: Unsupported value: \"Bogus\": supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\"",
        ),
        (
            serde_json::json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv4"], "ports": port}),
            "spec.ipFamilies[1]: Duplicate value: \"IPv4\"",
        ),
    ] {
        let message = refused(&services, service("families", spec)).await;
        assert!(message.contains(expected), "{message}");
    }
    let preferred = services
        .create(
            &PostParams::default(),
            &service(
                "preferred",
                serde_json::json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"], "ports": port}),
            ),
        )
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(preferred.ip_families.unwrap(), ["IPv4"]);
    assert_eq!(preferred.cluster_ips.unwrap().len(), 1);

    // Hand-written endpoints may not point at special addresses (the node itself through
    // loopback, link-local): upstream's 422, nothing stored.
    use k8s_openapi::api::core::v1::Endpoints;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slices: Api<EndpointSlice> = Api::namespaced(server.client().await, "default");
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "manual", "labels": {"kubernetes.io/service-name": "manual"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"]}],
        "ports": [{"port": 80}]
    }))
    .unwrap();
    match slices.create(&PostParams::default(), &slice).await {
        Err(kube::Error::Api(s)) => assert_eq!(
            (s.code, s.message.as_str()),
            (
                422,
                "EndpointSlice.discovery.k8s.io \"manual\" is invalid: endpoints[0].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
            )
        ),
        other => panic!("expected 422, got {other:?}"),
    }
    assert!(slices.get_opt("manual").await.unwrap().is_none());
    let endpoints: Api<Endpoints> = Api::namespaced(server.client().await, "default");
    let manual: Endpoints = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "manual"},
        "subsets": [{"addresses": [{"ip": "169.254.1.1"}], "ports": [{"port": 80}]}]
    }))
    .unwrap();
    match endpoints.create(&PostParams::default(), &manual).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message
                    .ends_with("may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }
    assert!(endpoints.get_opt("manual").await.unwrap().is_none());

    // A change of type drops the node ports, and back again allocates new ones; the
    // address stays.
    let patch = |t: &str| Patch::Merge(serde_json::json!({"spec": {"type": t}}));
    let clusterip =
        services.patch("asked", &PatchParams::default(), &patch("ClusterIP")).await.unwrap();
    let spec = clusterip.spec.unwrap();
    assert_eq!(spec.ports.unwrap()[0].node_port, None);
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.7.7"));
    // The freed node port can be asked for again.
    services
        .create(
            &PostParams::default(),
            &service(
                "reuse",
                serde_json::json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30150}]}),
            ),
        )
        .await
        .unwrap();
    let back = services.patch("asked", &PatchParams::default(), &patch("NodePort")).await.unwrap();
    let port = back.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    assert!((30100..=30199).contains(&port) && port != 30150, "{port}");
    // ExternalName has no address; back to ClusterIP gets one.
    let external = services
        .patch(
            "asked",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"type": "ExternalName", "externalName": "example.com"}})),
        )
        .await
        .unwrap();
    let spec = external.spec.unwrap();
    assert_eq!((spec.cluster_ip, spec.ports.unwrap()[0].node_port), (None, None));
    let again = services
        .patch(
            "asked",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"type": "ClusterIP", "externalName": null}})),
        )
        .await
        .unwrap();
    assert!(again.spec.unwrap().cluster_ip.unwrap().starts_with("10.43."));

    // `kubectl expose --type=NodePort` shows the node port it got.
    server.ok(&["create", "deployment", "shop", "--image=busybox", "--port=8080"]);
    server.ok(&[
        "expose",
        "deployment",
        "shop",
        "--type=NodePort",
        "--port=80",
        "--target-port=8080",
    ]);
    let shown = server.ok(&["get", "svc", "shop", "--no-headers"]);
    let port_column = shown.split_whitespace().nth(4).unwrap();
    let node_port: u16 =
        port_column.trim_end_matches("/TCP").split(':').nth(1).unwrap().parse().unwrap();
    assert!((30100..=30199).contains(&node_port), "{shown}");
}

/// Real traffic through the node's service rules (nftables, loaded by the agent): a
/// ClusterIP spreads a pod's requests over every ready backend and no other, the node
/// itself reaches the ClusterIP and the node port, a pod reaches itself through its own
/// Service, a Service without endpoints refuses at once, and scaling down takes a backend
/// out.
#[test]
fn cluster_ips_and_node_ports_carry_traffic_to_ready_endpoints() {
    let server = KrustServer::start_with_agent(&[]);
    let node = server.node.clone().unwrap();
    server.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: web
        image: {BUSYBOX}
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www']
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: lb}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  ports: [{{port: 18080, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: other-lb}}
spec:
  type: LoadBalancer
  loadBalancerClass: example.com/other
  selector: {{app: web}}
  ports: [{{port: 18081, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sticky}}
spec:
  selector: {{app: web}}
  sessionAffinity: ClientIP
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: nothing}}
spec:
  selector: {{app: nobody}}
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'trap "exit 0" TERM; sleep 3600 & wait']
"#
        ),
    );
    let ready_endpoints = [
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.targetRef.name}{\"\\n\"}{end}",
    ];
    let backends: std::collections::BTreeSet<String> = server
        .wait_for(&ready_endpoints, Duration::from_secs(90), |o| o.lines().count() == 2)
        .lines()
        .map(str::to_owned)
        .collect();
    server.wait_pod("default", "client", "{.status.phase}", Duration::from_secs(60), |p| {
        p == "Running"
    });
    let ip = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let node_port = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"]);
    let nothing = server.ok(&["get", "svc", "nothing", "-o", "jsonpath={.spec.clusterIP}"]);

    // From a pod: 40 requests reach both backends and nothing else. The rules are loaded
    // a moment after the slices change, so the first request may wait for them.
    let script =
        format!("for i in $(seq 40); do timeout 3 wget -qO- http://{ip}/ || echo failed; done");
    let deadline = Instant::now() + Duration::from_secs(30);
    let answers = loop {
        let out = server.ok(&["exec", "client", "--", "sh", "-c", &script]);
        let answers: std::collections::BTreeMap<String, usize> =
            out.lines().fold(Default::default(), |mut m, l| {
                *m.entry(l.trim().to_owned()).or_default() += 1;
                m
            });
        if answers.keys().cloned().collect::<std::collections::BTreeSet<_>>() == backends
            || Instant::now() > deadline
        {
            break answers;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        answers.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
        backends,
        "every ready backend answers, nothing else: {answers:?}"
    );
    // ClientIP affinity: one client keeps its backend (two backends at random would agree
    // 20 times once in half a million runs).
    let sticky = server.ok(&["get", "svc", "sticky", "-o", "jsonpath={.spec.clusterIP}"]);
    let script =
        format!("for i in $(seq 20); do timeout 3 wget -qO- http://{sticky}/ || echo failed; done");
    // (Its rules may come a moment after the other Service's.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = server.ok(&["exec", "client", "--", "sh", "-c", &script]);
        if !out.contains("failed") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let seen: std::collections::BTreeSet<&str> = out.lines().map(str::trim).collect();
    assert!(seen.len() == 1 && backends.contains(*seen.first().unwrap()), "{out}");

    // From the node itself: the ClusterIP and the node port on the node's address.
    let node_ip = server.ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    // ServiceLB: the node's address is the load balancer's, on the Service's port.
    server.wait_for(
        &["get", "svc", "lb", "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}"],
        Duration::from_secs(30),
        |o| o == node_ip,
    );
    // Another class's load balancer is left to its controller.
    let other = server.ok(&["get", "svc", "other-lb", "-o", "jsonpath={.status.loadBalancer}"]);
    assert!(other.is_empty() || other == "{}", "{other}");
    for address in
        [format!("{ip}:80"), format!("{node_ip}:{node_port}"), format!("{node_ip}:18080")]
    {
        // The rules follow the Service's status a moment later.
        let deadline = Instant::now() + Duration::from_secs(10);
        let body = loop {
            match common::get_body(&address) {
                Ok(body) => break body,
                Err(e) if Instant::now() > deadline => panic!("{address}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        assert!(backends.contains(&body), "{address} answered {body:?}");
    }

    // The API server's services/proxy reaches an endpoint, by port number or name.
    for name in ["web", "web:80", "http:web:"] {
        let page = server.ok(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/default/services/{name}/proxy/"),
        ]);
        assert!(backends.contains(page.trim()), "{name}: {page}");
    }
    let none =
        server.kubectl(&["get", "--raw", "/api/v1/namespaces/default/services/nothing/proxy/"]);
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("ServiceUnavailable"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );

    // `kubectl port-forward svc/web` reaches a backend through the Service's target port.
    let local = common::free_port();
    let mut forward = std::process::Command::new(common::tool("kubectl"))
        .args(["port-forward", "svc/web", &format!("{local}:80")])
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        match common::get_body(&format!("127.0.0.1:{local}")) {
            Ok(body) if !body.is_empty() => break body,
            _ => assert!(Instant::now() < deadline, "port-forward svc/web never answered"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = forward.kill();
    let _ = forward.wait();
    assert!(backends.contains(&body), "{body}");

    // A backend reaches itself through its own Service (hairpin).
    let backend = backends.iter().next().unwrap();
    let out = server.ok(&[
        "exec",
        backend,
        "--",
        "sh",
        "-c",
        &format!("for i in $(seq 8); do timeout 3 wget -qO- http://{ip}/ || echo failed; done"),
    ]);
    assert!(!out.contains("failed") && out.lines().count() == 8, "{out}");

    // No endpoints: refused at once (wget's 1), not a timeout (143).
    let refused = server.kubectl(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        &format!("timeout 3 wget -qO- http://{nothing}/; echo exit=$?"),
    ]);
    let text = String::from_utf8_lossy(&refused.stdout);
    assert!(text.contains("exit=1"), "{text}");

    // Scaled to one: the other backend leaves the rules.
    server.ok(&["scale", "deployment", "web", "--replicas=1"]);
    let left =
        server.wait_for(&ready_endpoints, Duration::from_secs(60), |o| o.lines().count() == 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = server.ok(&[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            &format!(
                "for i in $(seq 12); do timeout 3 wget -qO- http://{ip}/ || echo failed; done"
            ),
        ]);
        if out.lines().all(|l| l.trim() == left) {
            break;
        }
        assert!(Instant::now() < deadline, "still reaching others after scale-down: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A stand-in for the host's resolver: answers every A question with 192.0.2.99, and
/// counts the questions it got.
fn stub_resolver() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // The question ends after its name (a zero byte) and type and class.
            let Some(end) = buf[12..n].iter().position(|b| *b == 0).map(|p| 12 + p + 5) else {
                continue;
            };
            let qtype = u16::from_be_bytes([buf[end - 4], buf[end - 3]]);
            let mut reply = buf[..end].to_vec();
            reply[2] = 0x81; // response, recursion desired
            reply[3] = 0x80; // recursion available, no error
            reply[6..12].copy_from_slice(&[0, u8::from(qtype == 1), 0, 0, 0, 0]);
            if qtype == 1 {
                reply
                    .extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 99]);
            }
            let _ = socket.send_to(&reply, peer);
        }
    });
    // The DNS server runs in the server process, on the host: loopback reaches the stub.
    (std::net::SocketAddr::from(([127, 0, 0, 1], port)), asked)
}

/// Cluster DNS from inside pods: Service names short and across namespaces, a headless
/// Service's per-pod names, SRV and PTR records, NXDOMAIN for unknown cluster names, and
/// other names through the upstream resolver (cached).
#[test]
fn pods_resolve_cluster_names_and_forward_the_rest() {
    let (upstream, asked) = stub_resolver();
    let server = KrustServer::start_with_agent(&[&format!("--dns-upstream={upstream}")]);
    let node = server.node.clone().unwrap();
    server.ok(&["create", "namespace", "other"]);
    server.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: other}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{name: sql, port: 5432}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: db-0, labels: {{app: db}}}}
spec:
  nodeName: {node}
  hostname: db-0
  subdomain: db
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'trap "exit 0" TERM; sleep 3600 & wait']
    ports: [{{name: sql, containerPort: 5432}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'trap "exit 0" TERM; sleep 3600 & wait']
"#
        ),
    );
    for pod in ["db-0", "client"] {
        server.wait_pod("default", pod, "{.status.phase}", Duration::from_secs(60), |p| {
            p == "Running"
        });
    }
    let web_ip =
        server.ok(&["get", "svc", "web", "-n", "other", "-o", "jsonpath={.spec.clusterIP}"]);
    let db_ip = server.ok(&["get", "pod", "db-0", "-o", "jsonpath={.status.podIP}"]);
    let dns_ip = server.ok(&[
        "get",
        "svc",
        "kube-dns",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let resolv = server.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains(&format!("nameserver {dns_ip}")), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("ndots:5"), "{resolv}");
    let lookup = |args: &[&str]| {
        let mut all = vec!["exec", "client", "--", "nslookup"];
        all.extend_from_slice(args);
        let out = server.kubectl(&all);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    // The headless Service's endpoint appears once the pod is ready; poll for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = lookup(&["db-0.db.default.svc.cluster.local"]);
        if out.contains(&format!("Address: {db_ip}")) {
            break;
        }
        assert!(Instant::now() < deadline, "per-pod name never resolved: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = lookup(&["web.other.svc.cluster.local"]);
    assert!(out.contains(&format!("Address: {web_ip}")), "{out}");
    // A short name through the search path (busybox applies it to dotless names).
    let out = lookup(&["db"]);
    assert!(out.contains(&format!("Address: {db_ip}")), "{out}");
    let out = lookup(&["-type=srv", "_http._tcp.web.other.svc.cluster.local"]);
    assert!(out.contains("web.other.svc.cluster.local") && out.contains(" 80 "), "{out}");
    let out = lookup(&[&web_ip]);
    assert!(out.contains("web.other.svc.cluster.local"), "PTR: {out}");
    let out = lookup(&["missing.default.svc.cluster.local"]);
    assert!(out.contains("NXDOMAIN"), "{out}");
    let before = asked.load(std::sync::atomic::Ordering::SeqCst);
    let out = lookup(&["example.org"]);
    assert!(out.contains("192.0.2.99"), "{out}");
    let after = asked.load(std::sync::atomic::Ordering::SeqCst);
    assert!(after > before, "asked upstream");
    // Cached: the same name again does not reach upstream for the A question.
    let out = lookup(&["example.org"]);
    assert!(out.contains("192.0.2.99"), "{out}");
    assert!(
        asked.load(std::sync::atomic::Ordering::SeqCst) - after < after - before,
        "the second lookup was served from the cache"
    );
}

/// NetworkPolicy enforced on real traffic: a default deny plus one allow rule lets exactly
/// the allowed client in (checked both ways), an egress rule stops a pod's traffic out, and
/// deleting the policies opens everything again.
#[test]
fn network_policies_admit_exactly_what_they_allow() {
    let server = KrustServer::start_with_agent(&[]);
    let node = server.node.clone().unwrap();
    let pod = |name: &str, labels: &str, command: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, '{command}']\n    ports: [{{name: web, containerPort: 8080}}]\n---\n"
        )
    };
    let web =
        "mkdir -p /www && echo ok > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www";
    let manifest = [
        pod("target", "app: target", web),
        pod("friend", "role: client", web),
        pod("stranger", "role: none", web),
    ]
    .concat();
    server.ok_stdin(&["apply", "-f", "-"], &manifest);
    for name in ["target", "friend", "stranger"] {
        server.wait_pod("default", name, "{.status.phase}", Duration::from_secs(60), |p| {
            p == "Running"
        });
    }
    let ip = |name: &str| server.pod_field("default", name, "{.status.podIP}");
    let (target, friend) = (ip("target"), ip("friend"));
    // Whether `from` reaches `to`'s web server (a dropped packet times out: 143).
    let reaches = |from: &str, to: &str| {
        let out = server.kubectl(&[
            "exec",
            from,
            "--",
            "sh",
            "-c",
            &format!("timeout 2 wget -qO- http://{to}:8080/ >/dev/null; echo $?"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "0"
    };
    let until = |what: &str, check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until("everyone reaches the target before any policy", &|| {
        reaches("friend", &target) && reaches("stranger", &target)
    });
    server.ok_stdin(
        &["apply", "-f", "-"],
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: let-friends-in}
spec:
  podSelector: {matchLabels: {app: target}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: web}]
"#,
    );
    until("the stranger is shut out", &|| !reaches("stranger", &target));
    assert!(reaches("friend", &target), "the friend still gets in");
    // Both ways: the target cannot reach the friend (deny-all covers it too), and the
    // friend is not let into the stranger.
    assert!(!reaches("target", &friend), "deny-all isolates the friend as well");
    assert!(!reaches("friend", &ip("stranger")));

    // A connection the policies admitted is not cut by an unrelated change: the friend's
    // request stays open (its headers unfinished) while a policy for the friend's own
    // ingress is added
    // and the table is loaded again, then completes.
    let slow =
        format!("(printf 'GET / HTTP/1.0\\r\\n'; sleep 4; printf '\\r\\n') | nc {target} 8080");
    std::thread::scope(|scope| {
        let request = scope.spawn(|| server.kubectl(&["exec", "friend", "--", "sh", "-c", &slow]));
        std::thread::sleep(Duration::from_millis(1500));
        server.ok_stdin(
            &["apply", "-f", "-"],
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: stranger-to-friend}\nspec:\n  podSelector: {matchLabels: {role: client}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: none}}}]\n",
        );
        let out = request.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("200 OK") && text.trim_end().ends_with("ok"), "{text}");
    });
    // (The change did apply: the stranger now gets into the friend.)
    until("the unrelated policy applies", &|| reaches("stranger", &friend));

    // Egress: the friend may only talk to UDP 53 now.
    server.ok_stdin(
        &["apply", "-f", "-"],
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: friend-quiet}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}]
"#,
    );
    until("the friend's traffic out is stopped", &|| !reaches("friend", &target));

    server.ok(&["delete", "networkpolicy", "--all"]);
    until("everything opens again", &|| reaches("stranger", &target) && reaches("friend", &target));

    // A bad address block is refused, nothing stored.
    let bad = server.kubectl_with(
        common::tool("kubectl"),
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n"),
    );
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("must be a valid CIDR value"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(server.ok(&["get", "networkpolicy", "-o", "name"]).trim().is_empty());
}

/// Two API servers on one etcd hand out Service addresses and node ports from the same
/// ranges: the claims live in the store, so no address or port is given twice even when
/// both allocate at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_sharing_a_store_never_hand_out_the_same_address() {
    let etcd = storage::testing::EtcdServer::start().expect("etcd-server must be installed");
    let endpoint = format!("--datastore-endpoint={}", etcd.endpoint);
    // A tiny range, so that a double allocation would be likely.
    // Servers of one cluster share its token (it seals what they share through the store).
    let flags = [
        endpoint.as_str(),
        "--token=ha-cluster-token",
        "--service-cidr=10.96.0.0/26",
        "--service-node-port-range=30000-30063",
    ];
    let first = KrustServer::start_control_plane(&flags);
    let second = KrustServer::start_control_plane(&flags);
    let (a, b) = (first.client().await, second.client().await);
    let create = |client: kube::Client, name: String| async move {
        let services: Api<Service> = Api::namespaced(client, "default");
        services
            .create(
                &PostParams::default(),
                &service(&name, serde_json::json!({"type": "NodePort", "ports": [{"port": 80}]})),
            )
            .await
    };
    let mut tasks = Vec::new();
    for i in 0..20 {
        tasks.push(tokio::spawn(create(a.clone(), format!("from-a-{i}"))));
        tasks.push(tokio::spawn(create(b.clone(), format!("from-b-{i}"))));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let all = Api::<Service>::namespaced(a, "default").list(&Default::default()).await.unwrap();
    let ips: Vec<String> =
        all.items.iter().filter_map(|s| s.spec.as_ref()?.cluster_ip.clone()).collect();
    let ports: Vec<i32> = all
        .items
        .iter()
        .flat_map(|s| s.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default())
        .filter_map(|p| p.node_port)
        .collect();
    let distinct = |v: &[String]| v.iter().collect::<std::collections::BTreeSet<_>>().len();
    assert_eq!(ips.len(), 41, "40 Services and `kubernetes`");
    assert_eq!(distinct(&ips), ips.len(), "an address given twice: {ips:?}");
    let port_set: std::collections::BTreeSet<_> = ports.iter().collect();
    assert_eq!(port_set.len(), 40, "a node port given twice: {ports:?}");
}

/// An address on an interface of its own, removed on drop.
struct ExtraAddress {
    link: String,
}

impl ExtraAddress {
    fn add(link: &str, address: &str) -> ExtraAddress {
        let _ = std::process::Command::new("ip").args(["link", "delete", link]).output();
        for args in [
            // A veth pair: this kernel has no dummy links.
            vec!["link", "add", link, "type", "veth", "peer", "name", &format!("{link}p")],
            vec!["addr", "add", address, "dev", link],
            vec!["link", "set", link, "up"],
        ] {
            let out = std::process::Command::new("ip").args(&args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        ExtraAddress { link: link.to_owned() }
    }
}

impl Drop for ExtraAddress {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "delete", &self.link]).output();
    }
}

/// The `kubernetes` Service lists every API server sharing the store (each keeps an
/// endpoint lease), and one that shuts down leaves it at once.
#[test]
fn the_kubernetes_service_lists_every_api_server() {
    let etcd = storage::testing::EtcdServer::start().expect("etcd-server must be installed");
    let endpoint = format!("--datastore-endpoint={}", etcd.endpoint);
    let port = common::free_port();
    let second_ip = format!("198.18.{}.{}", port / 250 % 250, port % 250 + 1);
    let _address =
        ExtraAddress::add(&format!("krtapi{}", port % 10000), &format!("{second_ip}/32"));
    let first = KrustServer::start_control_plane(&[&endpoint, "--token=ha-cluster-token"]);
    let mut second = KrustServer::start_control_plane(&[
        &endpoint,
        "--token=ha-cluster-token",
        &format!("--bind-address={second_ip}"),
        &format!("--tls-san={second_ip}"),
    ]);
    let addresses =
        ["get", "endpointslice", "kubernetes", "-o", "jsonpath={.endpoints[*].addresses[0]}"];
    let both = first.wait_for(&addresses, Duration::from_secs(30), |o| o.split(' ').count() == 2);
    assert!(both.contains(&second_ip), "{both}");
    let listed = first.ok(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[0].addresses[*].ip}",
    ]);
    assert!(listed.contains(&second_ip), "{listed}");
    // A graceful stop removes its address without waiting for the lease to expire.
    second.terminate(Duration::from_secs(20));
    let left = first.wait_for(&addresses, Duration::from_secs(10), |o| o.split(' ').count() == 1);
    assert!(!left.contains(&second_ip), "{left}");
}

/// A UDP echo server answering `name`, run by the host's Python inside the network
/// namespace of the process `pid` (busybox has no UDP server); killed when dropped.
struct UdpServer(std::process::Child);

impl UdpServer {
    fn start(pid: &str, name: &str) -> UdpServer {
        let script = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',9000))\nwhile True:\n  d,a=s.recvfrom(512)\n  s.sendto(sys.argv[1].encode(),a)\n";
        let child = std::process::Command::new("nsenter")
            .args(["-t", pid, "-n", "python3", "-c", script, name])
            .spawn()
            .unwrap();
        UdpServer(child)
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// UDP has no connection to end: a client that keeps sending from one port keeps its
/// conntrack entry alive, and with it the endpoint it was first sent to. When that endpoint
/// leaves the Service, the proxy flushes the entry at once and the client's next datagram
/// reaches the endpoint that is left.
#[test]
fn udp_clients_move_to_a_new_endpoint_at_once() {
    let server = KrustServer::start_with_agent(&[]);
    let node = server.node.clone().unwrap();
    let port = common::free_port();
    // Each pod's sleep has an argument of its own, so the test finds its process.
    let pod = |name: &str, marker: u32| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: udp}}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sleep, '{marker}']\n---\n"
        )
    };
    let (marker_a, marker_b) = (100_000 + u32::from(port), 200_000 + u32::from(port));
    server.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "{}apiVersion: v1\nkind: Service\nmetadata: {{name: udp}}\nspec:\n  selector: {{app: udp}}\n  ports: [{{port: 9000, protocol: UDP}}]\n",
            pod("udp-a", marker_a)
        ),
    );
    server.wait_phase("default", "udp-a", "Running", Duration::from_secs(60));
    let pid_of = |marker: u32| {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("^sleep {marker}$")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned()
    };
    let _a = UdpServer::start(&pid_of(marker_a), "a");
    let ip = server.ok(&["get", "svc", "udp", "-o", "jsonpath={.spec.clusterIP}"]);
    let client = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    // One datagram from the client's one port; the answer, if any.
    let ask = || {
        let _ = client.send_to(b"?", format!("{ip}:9000"));
        let mut buf = [0u8; 64];
        client.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while ask().as_deref() != Some("a") {
        assert!(Instant::now() < deadline, "the first endpoint never answered");
    }
    // A second endpoint joins; the client's entry still leads to the first.
    server.ok_stdin(&["apply", "-f", "-"], &pod("udp-b", marker_b));
    server.wait_phase("default", "udp-b", "Running", Duration::from_secs(60));
    let _b = UdpServer::start(&pid_of(marker_b), "b");
    server.wait_for(
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=udp",
            "-o",
            "jsonpath={.items[*].endpoints[*].targetRef.name}",
        ],
        Duration::from_secs(20),
        |o| o.contains("udp-b"),
    );
    for _ in 0..10 {
        assert_eq!(ask().as_deref(), Some("a"), "the entry keeps the client on its endpoint");
    }
    // The first leaves: the client, still sending every few hundred milliseconds (which
    // would keep a stale entry alive for ever), reaches the second.
    server.ok(&["delete", "pod", "udp-a", "--wait=false"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if ask().as_deref() == Some("b") {
            break;
        }
        assert!(Instant::now() < deadline, "the client is stuck on the endpoint that left");
    }
    server.ok(&["delete", "pod", "--all", "--wait=true"]);
}

/// `--kube-proxy-arg=proxy-mode=iptables`, the fallback for kernels without nftables:
/// the same Services carry the same traffic through iptables chains, and `krust reset`
/// removes them.
#[test]
fn the_iptables_fallback_carries_traffic() {
    let mut server = KrustServer::start_with_agent(&["--kube-proxy-arg=proxy-mode=iptables"]);
    let node = server.node.clone().unwrap();
    let web = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www']\n---\n"
        )
    };
    server.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "{}{}apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  type: NodePort\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: 8080}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: nothing}}\nspec:\n  selector: {{app: nobody}}\n  ports: [{{port: 80}}]\n",
            web("web-1"),
            web("web-2")
        ),
    );
    for pod in ["web-1", "web-2"] {
        server.wait_phase("default", pod, "Running", Duration::from_secs(60));
    }
    let ip = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let nothing = server.ok(&["get", "svc", "nothing", "-o", "jsonpath={.spec.clusterIP}"]);
    let node_port = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"]);
    let node_ip = server.ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    // From a pod: both backends answer through the ClusterIP, and one reaches itself.
    let script =
        format!("for i in $(seq 30); do timeout 3 wget -qO- http://{ip}/ || echo failed; done");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = server.ok(&["exec", "web-1", "--", "sh", "-c", &script]);
        let seen: std::collections::BTreeSet<&str> = out.lines().map(str::trim).collect();
        if seen == ["web-1", "web-2"].into() {
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // From the host: the node port; the empty Service refuses at once.
    let body = common::get_body(&format!("{node_ip}:{node_port}")).unwrap();
    assert!(body == "web-1" || body == "web-2", "{body}");
    let refused = std::net::TcpStream::connect_timeout(
        &format!("{nothing}:80").parse().unwrap(),
        Duration::from_secs(2),
    );
    assert_eq!(refused.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::ConnectionRefused));
    // The rules are iptables rules, and no nftables table of the proxy's own holds them.
    let saved = |table: &str| {
        let out = std::process::Command::new("iptables-save").args(["-t", table]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(saved("nat").contains(&format!("-d {ip}/32 -p tcp -m tcp --dport 80 -j KR")));
    let tables = std::process::Command::new("nft").args(["list", "ruleset"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains(&format!("{ip} . tcp . 80")));
    server.ok(&["delete", "pod", "--all", "--wait=true"]);
    server.stop();
    server.reset();
    assert!(!saved("nat").contains(&ip), "reset leaves no chain behind");
    assert!(!saved("filter").contains(&nothing));
}
