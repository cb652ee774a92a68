//! End-to-end: pods run as real containers through the node agent, containerd and runc,
//! driven by the real kubectl. Each test has its own server, agent, containerd, bridge and
//! pod network, and resets them when it ends (`krust reset`).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{BUSYBOX, KrustServer, NetNs, join_agent, kubeconfig_pem};

fn apply(server: &KrustServer, manifest: &str) {
    server.ok_stdin(&["apply", "-f", "-"], manifest);
}

/// A pod manifest on the server's node with `spec` (YAML, indented two spaces) appended.
fn pod(server: &KrustServer, name: &str, spec: &str) -> String {
    let node = server.node.clone().unwrap();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n{spec}"
    )
}

#[test]
fn containers_share_localhost_and_an_empty_dir_and_deletion_is_graceful() {
    let server = KrustServer::start_with_agent(&[]);
    let manifest = pod(
        &server,
        "web",
        &format!(
            "  terminationGracePeriodSeconds: 20
  volumes:
  - name: shared
    emptyDir: {{}}
  containers:
  - name: server
    image: {BUSYBOX}
    command: [/bin/busybox, httpd, -f, -p, '8080', -h, /www]
    volumeMounts: [{{name: shared, mountPath: /www}}]
  - name: client
    image: {BUSYBOX}
    volumeMounts: [{{name: shared, mountPath: /data}}]
    command:
    - sh
    - -c
    - |
      trap 'sleep 2; exit 0' TERM
      echo from-the-volume > /data/index.html
      until wget -q -O /tmp/got http://localhost:8080/index.html; do sleep 0.2; done
      grep -q from-the-volume /tmp/got && touch /data/ok
      while true; do sleep 0.2; done
"
        ),
    );
    apply(&server, &manifest);
    server.wait_phase("default", "web", "Running", Duration::from_secs(60));
    server.wait_pod(
        "default",
        "web",
        "{.status.containerStatuses[*].ready}",
        Duration::from_secs(30),
        |s| s == "true true",
    );
    let uid = server.pod_field("default", "web", "{.metadata.uid}");
    let ok = server
        .dir
        .path()
        .join(format!("data/agent/pods/{uid}/volumes/kubernetes.io~empty-dir/shared/ok"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok.exists() {
        assert!(Instant::now() < deadline, "the client never read the page over localhost");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ip = server.pod_field("default", "web", "{.status.podIP}");
    assert!(ip.starts_with("10."), "podIP {ip}");
    assert!(!server.pod_field("default", "web", "{.status.hostIP}").is_empty());
    assert_eq!(server.pod_field("default", "web", "{.status.qosClass}"), "BestEffort");

    // The client takes 2 s to stop after SIGTERM; httpd as PID 1 ignores SIGTERM and is killed
    // at the end of the 20 s grace period... so give the pod a 4 s grace period on delete.
    let started = Instant::now();
    server.ok(&["delete", "pod", "web", "--grace-period=4"]);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(3), "deleted too fast for the grace period: {took:?}");
    assert!(took < Duration::from_secs(15), "deletion took {took:?}");
    assert!(!ok.exists(), "the pod's volumes are removed with it");
    let events = server.ok(&["get", "events", "-o", "jsonpath={.items[*].reason}"]);
    for reason in ["Pulled", "Created", "Started", "Killing"] {
        assert!(events.contains(reason), "no {reason} event in {events}");
    }
}

#[test]
fn init_containers_run_in_order_before_the_containers() {
    let server = KrustServer::start_with_agent(&[]);
    let manifest = pod(
        &server,
        "init",
        &format!(
            "  restartPolicy: Never
  volumes: [{{name: work, emptyDir: {{}}}}]
  initContainers:
  - {{name: first, image: {BUSYBOX}, command: [sh, -c, 'echo -n 1 >> /w/log'], volumeMounts: [{{name: work, mountPath: /w}}]}}
  - {{name: second, image: {BUSYBOX}, command: [sh, -c, 'echo -n 2 >> /w/log'], volumeMounts: [{{name: work, mountPath: /w}}]}}
  containers:
  - {{name: main, image: {BUSYBOX}, command: [sh, -c, 'test \"$(cat /w/log)\" = 12'], volumeMounts: [{{name: work, mountPath: /w}}]}}
"
        ),
    );
    apply(&server, &manifest);
    server.wait_phase("default", "init", "Succeeded", Duration::from_secs(60));
    assert_eq!(
        server.pod_field(
            "default",
            "init",
            "{.status.initContainerStatuses[*].state.terminated.reason}"
        ),
        "Completed Completed"
    );
    assert_eq!(
        server.pod_field(
            "default",
            "init",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "0"
    );
    // A failing init container with restartPolicy Never fails the pod and the main container
    // never runs.
    let failing = pod(
        &server,
        "init-fails",
        &format!(
            "  restartPolicy: Never
  initContainers: [{{name: broken, image: {BUSYBOX}, command: [sh, -c, 'exit 3']}}]
  containers: [{{name: main, image: {BUSYBOX}, command: [sh, -c, 'exit 0']}}]
"
        ),
    );
    apply(&server, &failing);
    server.wait_phase("default", "init-fails", "Failed", Duration::from_secs(60));
    assert_eq!(
        server.pod_field(
            "default",
            "init-fails",
            "{.status.initContainerStatuses[0].state.terminated.exitCode}"
        ),
        "3"
    );
    assert_eq!(
        server.pod_field(
            "default",
            "init-fails",
            "{.status.containerStatuses[0].state.terminated}"
        ),
        ""
    );
}

#[test]
fn env_comes_from_config_maps_secrets_and_the_downward_api() {
    let server = KrustServer::start_with_agent(&[]);
    server.ok(&["create", "secret", "generic", "creds", "--from-literal=password=hunter2"]);
    let manifest = pod(
        &server,
        "env",
        &format!(
            "  restartPolicy: Never
  containers:
  - name: check
    image: {BUSYBOX}
    resources: {{limits: {{memory: 64Mi, cpu: 500m}}}}
    envFrom: [{{configMapRef: {{name: settings}}, prefix: CFG_}}]
    env:
    - {{name: GREETING, value: hello-$(CFG_color)}}
    - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}}}
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
    - {{name: MEM_MI, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}}}
    command:
    - sh
    - -c
    - |
      set -e
      test \"$GREETING\" = hello-blue
      test \"$PASSWORD\" = hunter2
      test \"$POD_NAME\" = env
      test -n \"$POD_IP\"
      test \"$NODE\" = \"{node}\"
      test \"$MEM_MI\" = 64
      test -n \"$KUBERNETES_SERVICE_HOST\"
      test \"$KUBERNETES_SERVICE_PORT\" = 443
",
            node = server.node.clone().unwrap()
        ),
    );
    apply(&server, &manifest);
    // The ConfigMap does not exist yet: the container cannot be configured.
    server.wait_pod(
        "default",
        "env",
        "{.status.containerStatuses[0].state.waiting.reason}",
        Duration::from_secs(60),
        |s| s == "CreateContainerConfigError",
    );
    assert_eq!(server.pod_field("default", "env", "{.status.phase}"), "Pending");
    server.ok(&["create", "configmap", "settings", "--from-literal=color=blue"]);
    server.wait_phase("default", "env", "Succeeded", Duration::from_secs(60));
    assert_eq!(server.pod_field("default", "env", "{.status.qosClass}"), "Guaranteed");

    // Security context: user and group, a read-only root filesystem, no privilege escalation;
    // the termination message comes back in the status.
    let secure = pod(
        &server,
        "secure",
        &format!(
            "  restartPolicy: Never
  securityContext: {{runAsUser: 1000, runAsGroup: 3000}}
  containers:
  - name: c
    image: {BUSYBOX}
    securityContext: {{readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
    command:
    - sh
    - -c
    - |
      test \"$(id -u)\" = 1000 || exit 10
      test \"$(id -g)\" = 3000 || exit 11
      touch /not-writable 2>/dev/null && exit 12
      grep -q '^NoNewPrivs:.*1' /proc/self/status || exit 13
      grep -q '^CapEff:.*0000000000000000' /proc/self/status || exit 14
      echo all checks passed > /dev/termination-log
      exit 3
"
        ),
    );
    apply(&server, &secure);
    server.wait_phase("default", "secure", "Failed", Duration::from_secs(60));
    assert_eq!(
        server.pod_field(
            "default",
            "secure",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "3"
    );
    assert_eq!(
        server.pod_field(
            "default",
            "secure",
            "{.status.containerStatuses[0].state.terminated.message}"
        ),
        "all checks passed"
    );
    // runAsNonRoot with an image that runs as root is refused before it starts.
    let nonroot = pod(
        &server,
        "nonroot",
        &format!(
            "  securityContext: {{runAsNonRoot: true}}\n  containers: [{{name: c, image: {BUSYBOX}, command: [id]}}]\n"
        ),
    );
    apply(&server, &nonroot);
    server.wait_pod(
        "default",
        "nonroot",
        "{.status.containerStatuses[0].state.waiting.message}",
        Duration::from_secs(60),
        |s| s == "container has runAsNonRoot and image will run as root",
    );
}

#[test]
fn restart_policies_and_crash_loop_back_off() {
    let server = KrustServer::start_with_agent(&[]);
    let manifest = pod(
        &server,
        "crash",
        &format!(
            "  containers: [{{name: c, image: {BUSYBOX}, command: [sh, -c, 'echo crashed once; exit 2']}}]\n"
        ),
    );
    apply(&server, &manifest);
    // First restart is immediate, the second waits 10 s: the container is in CrashLoopBackOff
    // with its last exit recorded.
    server.wait_pod(
        "default",
        "crash",
        "{.status.containerStatuses[0].state.waiting.reason}",
        Duration::from_secs(60),
        |s| s == "CrashLoopBackOff",
    );
    let restarts_at_backoff: u32 = server
        .pod_field("default", "crash", "{.status.containerStatuses[0].restartCount}")
        .parse()
        .unwrap();
    assert!(restarts_at_backoff >= 1);
    assert_eq!(
        server.pod_field(
            "default",
            "crash",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "2"
    );
    assert_eq!(
        server.pod_field(
            "default",
            "crash",
            "{.status.containerStatuses[0].lastState.terminated.reason}"
        ),
        "Error"
    );
    let entered = Instant::now();
    server.wait_pod(
        "default",
        "crash",
        "{.status.containerStatuses[0].restartCount}",
        Duration::from_secs(40),
        |s| s.parse::<u32>().is_ok_and(|n| n > restarts_at_backoff),
    );
    let waited = entered.elapsed();
    assert!(waited >= Duration::from_secs(5), "restarted after only {waited:?} in back-off");
    assert_eq!(server.pod_field("default", "crash", "{.status.phase}"), "Running");
    let events = server.ok(&["get", "events", "-o", "jsonpath={.items[*].reason}"]);
    assert!(events.contains("BackOff"), "{events}");
    // The previous instance's log stays readable.
    assert_eq!(server.ok(&["logs", "crash", "--previous"]), "crashed once\n");

    // OnFailure: a success is final.
    let once = pod(
        &server,
        "once",
        &format!(
            "  restartPolicy: OnFailure\n  containers: [{{name: c, image: {BUSYBOX}, command: [sh, -c, 'exit 0']}}]\n"
        ),
    );
    apply(&server, &once);
    server.wait_phase("default", "once", "Succeeded", Duration::from_secs(60));
    assert_eq!(
        server.pod_field("default", "once", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
}

#[test]
fn memory_and_cpu_limits_reach_the_cgroups() {
    let server = KrustServer::start_with_agent(&["--kubelet-arg=pod-max-pids=64"]);
    let manifest = pod(
        &server,
        "oom",
        &format!(
            "  restartPolicy: Never
  containers:
  - name: hog
    image: {BUSYBOX}
    resources: {{limits: {{memory: 32Mi}}}}
    command: [dd, if=/dev/zero, of=/dev/null, bs=128M, count=1]
"
        ),
    );
    apply(&server, &manifest);
    server.wait_phase("default", "oom", "Failed", Duration::from_secs(60));
    assert_eq!(
        server.pod_field(
            "default",
            "oom",
            "{.status.containerStatuses[0].state.terminated.reason}"
        ),
        "OOMKilled"
    );
    assert_eq!(
        server.pod_field(
            "default",
            "oom",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "137"
    );

    let cpu = pod(
        &server,
        "cpu",
        &format!(
            "  containers:
  - name: c
    image: {BUSYBOX}
    resources: {{requests: {{cpu: 100m}}, limits: {{cpu: 250m}}}}
    command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']
"
        ),
    );
    apply(&server, &cpu);
    server.wait_phase("default", "cpu", "Running", Duration::from_secs(60));
    assert_eq!(server.pod_field("default", "cpu", "{.status.qosClass}"), "Burstable");
    let uid = server.pod_field("default", "cpu", "{.metadata.uid}");
    let id = server.pod_field("default", "cpu", "{.status.containerStatuses[0].containerID}");
    let id = id.trim_start_matches("containerd://");
    let node = server.node.clone().unwrap();
    let dir = format!("/sys/fs/cgroup/cpu/krust/{node}/kubepods/burstable/pod{uid}/{id}");
    let quota = std::fs::read_to_string(format!("{dir}/cpu.cfs_quota_us")).unwrap();
    let shares = std::fs::read_to_string(format!("{dir}/cpu.shares")).unwrap();
    assert_eq!(quota.trim(), "25000");
    assert_eq!(shares.trim(), "102");
    // A busy loop is throttled to the limit.
    let _ = kubectl_env(
        &server,
        &["exec", "cpu", "--", "timeout", "2", "sh", "-c", "while :; do :; done"],
        &[],
        None,
    );
    let stat = std::fs::read_to_string(format!("{dir}/cpu.stat")).unwrap();
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(throttled > 0, "never throttled: {stat}");
    // The pod's own cgroup carries the pod's sums and the node's PID limit.
    let pod_dir = format!("krust/{node}/kubepods/burstable/pod{uid}");
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}/{pod_dir}/{file}"))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "25000");
    assert_eq!(read("cpu", "cpu.shares"), "102");
    assert_eq!(read("pids", "pids.max"), "64");
    // The limit holds: a pod cannot start more than 64 processes.
    let (code, _, stderr) = kubectl_env(
        &server,
        &["exec", "cpu", "--", "sh", "-c", "for i in $(seq 80); do sleep 5 & done"],
        &[],
        None,
    );
    assert_ne!(code, 0, "80 processes started under a limit of 64");
    assert!(stderr.contains("fork"), "{stderr}");
    server.ok(&["delete", "pod", "cpu", "--wait=true"]);
    assert!(
        !std::path::Path::new(&format!("/sys/fs/cgroup/cpu/{pod_dir}")).exists(),
        "pod cgroup removed"
    );
}

#[test]
fn agent_restart_adopts_running_pods_and_same_names_in_two_namespaces_coexist() {
    let mut server = KrustServer::start_with_agent(&[]);
    server.ok(&["create", "namespace", "other"]);
    for ns in ["default", "other"] {
        let manifest = pod(
            &server,
            "twin",
            &format!(
                "  containers: [{{name: c, image: {BUSYBOX}, command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']}}]\n"
            ),
        );
        server.ok_stdin(&["apply", "-n", ns, "-f", "-"], &manifest);
    }
    for ns in ["default", "other"] {
        server.wait_phase(ns, "twin", "Running", Duration::from_secs(60));
    }
    let before: Vec<String> = ["default", "other"]
        .iter()
        .map(|ns| server.pod_field(ns, "twin", "{.status.containerStatuses[0].containerID}"))
        .collect();
    assert_ne!(before[0], before[1]);
    assert_ne!(
        server.pod_field("default", "twin", "{.status.podIP}"),
        server.pod_field("other", "twin", "{.status.podIP}")
    );

    // SIGKILL krust (API server, agent and all); the containers keep running and the new
    // agent adopts them: same container, no restart.
    let restarted_at = jiff::Timestamp::now();
    server.restart();
    server.wait_node_ready(&server.node.clone().unwrap());
    // The new agent is alive: it renews the node's Lease.
    let node = server.node.clone().unwrap();
    server.wait_for(
        &["get", "lease", &node, "-n", "kube-node-lease", "-o", "jsonpath={.spec.renewTime}"],
        Duration::from_secs(30),
        |t| t.parse::<jiff::Timestamp>().is_ok_and(|t| t > restarted_at),
    );
    for (i, ns) in ["default", "other"].iter().enumerate() {
        server.wait_phase(ns, "twin", "Running", Duration::from_secs(30));
        assert_eq!(
            server.pod_field(ns, "twin", "{.status.containerStatuses[0].containerID}"),
            before[i]
        );
        assert_eq!(
            server.pod_field(ns, "twin", "{.status.containerStatuses[0].restartCount}"),
            "0"
        );
    }
    // Deleting one twin leaves the other alone.
    server.ok(&["delete", "pod", "twin", "-n", "other", "--timeout=60s"]);
    assert_eq!(
        server.pod_field("default", "twin", "{.status.containerStatuses[0].containerID}"),
        before[0]
    );
    assert_eq!(server.pod_field("default", "twin", "{.status.phase}"), "Running");
}

#[test]
fn a_missing_image_is_err_image_pull_then_back_off() {
    let server = KrustServer::start_with_agent(&[]);
    let manifest =
        pod(&server, "missing", "  containers: [{name: c, image: '127.0.0.1:9/nothing/here:1'}]\n");
    apply(&server, &manifest);
    server.wait_pod(
        "default",
        "missing",
        "{.status.containerStatuses[0].state.waiting.reason}",
        Duration::from_secs(60),
        |s| s == "ErrImagePull" || s == "ImagePullBackOff",
    );
    server.wait_pod(
        "default",
        "missing",
        "{.status.containerStatuses[0].state.waiting.reason}",
        Duration::from_secs(60),
        |s| s == "ImagePullBackOff",
    );
    assert_eq!(server.pod_field("default", "missing", "{.status.phase}"), "Pending");
    // Never with an image that is not there.
    let never = pod(
        &server,
        "never",
        "  containers: [{name: c, image: 'krust.local/absent:1', imagePullPolicy: Never}]\n",
    );
    apply(&server, &never);
    server.wait_pod(
        "default",
        "never",
        "{.status.containerStatuses[0].state.waiting.reason}",
        Duration::from_secs(60),
        |s| s == "ErrImageNeverPull",
    );
}

#[test]
fn config_map_volume_updates_reach_the_running_pod() {
    let server = KrustServer::start_with_agent(&[]);
    server.ok(&["create", "configmap", "page", "--from-literal=color=red"]);
    server.ok(&["create", "secret", "generic", "token", "--from-literal=value=s3cret"]);
    let manifest = pod(
        &server,
        "watcher",
        &format!(
            "  restartPolicy: Never
  volumes:
  - {{name: cfg, configMap: {{name: page}}}}
  - {{name: sec, secret: {{secretName: token, defaultMode: 0400}}}}
  - {{name: info, downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}}}
  - {{name: mem, emptyDir: {{medium: Memory, sizeLimit: 16Mi}}}}
  containers:
  - name: c
    image: {BUSYBOX}
    volumeMounts:
    - {{name: cfg, mountPath: /cfg}}
    - {{name: sec, mountPath: /sec}}
    - {{name: info, mountPath: /info}}
    - {{name: cfg, mountPath: /sub, subPath: extra}}
    - {{name: mem, mountPath: /mem}}
    readinessProbe: {{exec: {{command: [test, -f, /tmp/ready]}}, periodSeconds: 1, failureThreshold: 1}}
    command:
    - sh
    - -c
    - |
      (while true; do touch /tmp/ready; sleep 1; rm -f /tmp/ready; sleep 1; done) &
      test \"$(cat /sec/value)\" = s3cret || exit 10
      test \"$(stat -L -c %a /sec/value)\" = 400 || exit 11
      test -d /sub || exit 12
      grep ' /mem tmpfs ' /proc/mounts | grep -q size=16384k || exit 15
      test \"$(cat /cfg/color)\" = red || exit 13
      until test \"$(cat /cfg/color)\" = green; do sleep 0.5; done
"
        ),
    );
    apply(&server, &manifest);
    server.wait_phase("default", "watcher", "Running", Duration::from_secs(60));
    // Readiness flips every second: each flip is a sync of the pod, which must not read the
    // ConfigMap and Secret again (counted below).
    let ready = "{.status.conditions[?(@.type==\"Ready\")].status}";
    server.wait_pod("default", "watcher", ready, Duration::from_secs(30), |s| s == "True");
    server.wait_pod("default", "watcher", ready, Duration::from_secs(30), |s| s == "False");
    server.wait_pod("default", "watcher", ready, Duration::from_secs(30), |s| s == "True");
    let changed = Instant::now();
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: page}\ndata: {color: green}\n",
    );
    server.wait_phase("default", "watcher", "Succeeded", Duration::from_secs(90));
    eprintln!("ConfigMap update reached the pod in {:?}", changed.elapsed());
    // The agent watches what its pods refer to instead of reading it on every sync: the
    // only GETs of the ConfigMap are kubectl apply's own and at most one first read.
    let metrics = server.ok(&["get", "--raw", "/metrics"]);
    let gets: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with(
                "apiserver_request_total{verb=\"GET\",resource=\"configmaps\",subresource=\"\"",
            )
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(gets <= 2, "{gets} GETs of configmaps:\n{metrics}");
}

#[test]
fn probes_gate_readiness_restart_unhealthy_containers_and_hooks_run() {
    let server = KrustServer::start_with_agent(&[]);
    // Readiness (exec) follows a file the container creates after 2 s and removes after 8 s;
    // the startup probe (tcpSocket) waits for httpd, which starts after 1 s.
    let manifest = pod(
        &server,
        "probed",
        &format!(
            "  containers:
  - name: app
    image: {BUSYBOX}
    command:
    - sh
    - -c
    - |
      trap 'exit 0' TERM
      mkdir -p /www && echo ok > /www/healthz
      sleep 1; /bin/busybox httpd -p 8080 -h /www
      sleep 1; touch /tmp/ready
      sleep 6; rm /tmp/ready
      while true; do sleep 1; done
    startupProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1, failureThreshold: 30}}
    readinessProbe: {{exec: {{command: [test, -f, /tmp/ready]}}, periodSeconds: 1}}
    livenessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, 'echo started > /tmp/poststart']}}}}
"
        ),
    );
    apply(&server, &manifest);
    server.wait_phase("default", "probed", "Running", Duration::from_secs(60));
    server.wait_pod(
        "default",
        "probed",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        Duration::from_secs(30),
        |s| s == "True",
    );
    assert_eq!(
        server.pod_field("default", "probed", "{.status.containerStatuses[0].started}"),
        "true"
    );
    server.wait_pod(
        "default",
        "probed",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        Duration::from_secs(30),
        |s| s == "False",
    );
    assert_eq!(
        server.pod_field("default", "probed", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
    let events = server.events("");
    assert!(events.contains("Unhealthy: Readiness probe failed"), "{events}");
    assert!(!events.contains("FailedPostStartHook"), "{events}");
    // The postStart hook ran inside the container.
    assert_eq!(server.ok(&["exec", "probed", "--", "cat", "/tmp/poststart"]).trim(), "started");

    // Liveness: a path that 404s fails three times in a row and the container is restarted.
    let liveness = pod(
        &server,
        "unhealthy",
        &format!(
            "  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {BUSYBOX}
    command: [/bin/busybox, httpd, -f, -p, '8080', -h, /]
    livenessProbe: {{httpGet: {{path: /missing, port: 8080}}, periodSeconds: 1, failureThreshold: 2}}
"
        ),
    );
    apply(&server, &liveness);
    server.wait_pod(
        "default",
        "unhealthy",
        "{.status.containerStatuses[0].restartCount}",
        Duration::from_secs(60),
        |s| s.parse::<u32>().is_ok_and(|n| n >= 1),
    );
    let events = server.events("");
    assert!(
        events.contains("Unhealthy: Liveness probe failed: HTTP probe failed with statuscode: 404"),
        "{events}"
    );
    assert!(events.contains("failed liveness probe, will be restarted"), "{events}");

    // preStop runs before the container is stopped: it leaves a mark in a hostPath volume
    // (which only a privileged namespace admits).
    server.ok(&["label", "namespace", "default", "pod-security.kubernetes.io/enforce=privileged"]);
    let marks = server.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let hooked = pod(
        &server,
        "hooked",
        &format!(
            "  volumes: [{{name: marks, hostPath: {{path: {marks}}}}}]
  containers:
  - name: app
    image: {BUSYBOX}
    volumeMounts: [{{name: marks, mountPath: /marks}}]
    command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']
    lifecycle:
      preStop: {{exec: {{command: [sh, -c, 'echo stopping > /marks/prestop']}}}}
",
            marks = marks.display()
        ),
    );
    apply(&server, &hooked);
    server.wait_phase("default", "hooked", "Running", Duration::from_secs(60));
    server.ok(&["delete", "pod", "hooked"]);
    assert_eq!(std::fs::read_to_string(marks.join("prestop")).unwrap().trim(), "stopping");
}

/// Runs kubectl with extra environment and stdin; returns (exit code, stdout, stderr).
fn kubectl_env(
    server: &KrustServer,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(common::tool("kubectl"));
    cmd.args(args)
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn logs_exec_attach_cp_and_port_forward_through_the_api_server() {
    let server = KrustServer::start_with_agent(&[]);
    let manifest = pod(
        &server,
        "talk",
        &format!(
            "  containers:
  - name: counter
    image: {BUSYBOX}
    command: [sh, -c, 'trap \"exit 0\" TERM; echo first; echo to-stderr >&2; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.5; done']
  - name: web
    image: {BUSYBOX}
    command: [sh, -c, 'mkdir -p /www && echo served-locally > /www/index.html && printf \"<a href=''/next''>n</a>\" > /www/page.html && exec /bin/busybox httpd -f -p 8080 -h /www']
    ports: [{{name: http, containerPort: 8080}}]
  - name: reader
    image: {BUSYBOX}
    stdin: true
    command: [sh, -c, 'while read line; do echo \"got $line\"; done']
"
        ),
    );
    apply(&server, &manifest);
    server.wait_pod(
        "default",
        "talk",
        "{.status.containerStatuses[*].ready}",
        Duration::from_secs(60),
        |s| s == "true true true",
    );

    // pods/proxy: the API server reaches the pod's port, by number or by name.
    for name in ["talk", "talk:8080", "talk:http", "http:talk:8080"] {
        let page = server.ok(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/default/pods/{name}/proxy/index.html"),
        ]);
        assert_eq!(page.trim(), "served-locally", "{name}");
    }
    // Absolute links of an HTML page are rewritten to stay behind the proxy.
    let page = server.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/http:talk:8080/proxy/page.html",
    ]);
    assert_eq!(
        page.trim(),
        "<a href='/api/v1/namespaces/default/pods/http:talk:8080/proxy/next'>n</a>"
    );
    let missing = server.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/talk:8080/proxy/nothing",
    ]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"), "{missing:?}");

    // The older WebSocket subprotocols (logs and exec), as the conformance suite speaks them.
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/websocket_streams.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&server.kubeconfig)
        .arg("talk")
        .output()
        .expect("python3");
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("websocket streams ok"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Logs: kubectl defaults to the first container; the API itself wants a container when
    // there are several. Then tail, timestamps, since.
    server.wait_for(&["logs", "talk"], Duration::from_secs(20), |s| s.contains("first"));
    let raw = server.kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/talk/log"]);
    assert!(!raw.status.success());
    assert!(
        String::from_utf8_lossy(&raw.stderr)
            .contains("a container name must be specified for pod talk"),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    server.wait_for(&["logs", "talk", "-c", "counter"], Duration::from_secs(20), |s| {
        s.contains("tick 3")
    });
    let logs = server.ok(&["logs", "talk", "-c", "counter"]);
    // stdout and stderr reach the log through separate pipes: their relative order may vary.
    for line in ["first", "to-stderr", "tick 0"] {
        assert!(logs.lines().any(|l| l == line), "{line} missing in {logs}");
    }
    let tail = server.ok(&["logs", "talk", "-c", "counter", "--tail=1", "--timestamps"]);
    let line = tail.trim();
    assert_eq!(tail.lines().count(), 1, "{tail}");
    let (stamp, text) = line.split_once(' ').unwrap();
    assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{line}");
    assert!(text.starts_with("tick "), "{line}");
    let recent = server.ok(&["logs", "talk", "-c", "counter", "--since=1s"]);
    assert!(!recent.contains("first"), "{recent}");
    // Follow: lines keep arriving until kubectl is stopped.
    let (_, followed, _) = kubectl_env(
        &server,
        &["logs", "-f", "talk", "-c", "counter", "--tail=1", "--request-timeout=3s"],
        &[],
        None,
    );
    let followed = String::from_utf8_lossy(&followed).into_owned();
    assert!(followed.lines().count() >= 3, "follow gave only {followed:?}");

    // exec: stdout, stderr, exit code, stdin with EOF, and the legacy SPDY upgrade.
    let (code, stdout, stderr) = kubectl_env(
        &server,
        &["exec", "talk", "-c", "counter", "--", "sh", "-c", "echo out; echo err >&2; exit 7"],
        &[],
        None,
    );
    assert_eq!(code, 7, "{stderr}");
    assert_eq!(String::from_utf8_lossy(&stdout), "out\n");
    assert!(stderr.contains("err"), "{stderr}");
    let (code, stdout, _) = kubectl_env(
        &server,
        &["exec", "-i", "talk", "-c", "counter", "--", "sh", "-c", "wc -c"],
        &[],
        Some(&[b'x'; 100_000]),
    );
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8_lossy(&stdout).trim(), "100000");
    let (code, stdout, stderr) = kubectl_env(
        &server,
        &["exec", "talk", "-c", "counter", "--", "sh", "-c", "echo legacy; exit 4"],
        &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")],
        None,
    );
    assert_eq!(
        (code, String::from_utf8_lossy(&stdout).into_owned()),
        (4, "legacy\n".to_owned()),
        "{stderr}"
    );

    // cp both ways (tar over exec).
    let local = server.dir.path().join("payload.txt");
    std::fs::write(&local, "copied content\n").unwrap();
    server.ok(&["cp", local.to_str().unwrap(), "talk:/tmp/payload.txt", "-c", "counter"]);
    let back = server.dir.path().join("back.txt");
    server.ok(&["cp", "talk:/tmp/payload.txt", back.to_str().unwrap(), "-c", "counter"]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied content\n");

    // attach to a container reading stdin: what we type comes back on its stdout. (stdin
    // stays open until the answer arrives: closing it ends the attach session.)
    {
        use std::io::{BufRead, Write};
        let mut child = std::process::Command::new(common::tool("kubectl"))
            .args(["attach", "-i", "talk", "-c", "reader"])
            .env("KUBECONFIG", &server.kubeconfig)
            .env("HOME", server.dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        'typing: while Instant::now() < deadline {
            stdin.write_all(b"hello\n").unwrap();
            stdin.flush().unwrap();
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
                if line.contains("got hello") {
                    seen.push(line);
                    break 'typing;
                }
                seen.push(line);
            }
        }
        drop(stdin);
        let _ = child.kill();
        let _ = child.wait();
        assert!(seen.iter().any(|l| l.contains("got hello")), "attach output {seen:?}");
    }

    // port-forward reaches a server bound to the pod's localhost, over WebSocket and SPDY.
    for websockets in ["true", "false"] {
        let port = common::free_port();
        let mut child = std::process::Command::new(common::tool("kubectl"))
            .args(["port-forward", "pod/talk", &format!("{port}:8080")])
            .env("KUBECONFIG", &server.kubeconfig)
            .env("HOME", server.dir.path())
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let body = loop {
            if let Ok(body) = http_get(port, "/index.html") {
                break body;
            }
            assert!(
                Instant::now() < deadline,
                "port-forward (websockets={websockets}) never answered"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(body.contains("served-locally"), "{body}");
        // A second connection over the same forward.
        assert!(http_get(port, "/index.html").unwrap().contains("served-locally"));
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A plain HTTP/1.0 GET to 127.0.0.1:`port`.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if out.is_empty() {
        return Err(std::io::Error::other("empty answer"));
    }
    Ok(out)
}

#[test]
fn the_agent_endpoint_admits_only_the_api_server_and_serves_stats() {
    let server = KrustServer::start_with_agent(&[]);
    let manifest = pod(
        &server,
        "busy",
        &format!(
            "  containers: [{{name: c, image: {BUSYBOX}, command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']}}]\n"
        ),
    );
    apply(&server, &manifest);
    server.wait_phase("default", "busy", "Running", Duration::from_secs(60));
    let node = server.node.clone().unwrap();
    let port = server.ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
    ]);
    let tls = server.dir.path().join("data/agent/tls");
    let url = format!("https://127.0.0.1:{port}/stats/summary");
    let curl = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(tls.join("ca.crt"))
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // No client certificate: the TLS handshake itself is refused.
    let (ok, _) = curl(&[]);
    assert!(!ok, "the agent answered a client without a certificate");
    // A node's own certificate is from the cluster CA but does not name the API server.
    let node_kubeconfig = server.dir.path().join("data/agent/kubelet.kubeconfig");
    let cert = server.dir.path().join("node.crt");
    let key = server.dir.path().join("node.key");
    std::fs::write(&cert, kubeconfig_pem(&node_kubeconfig, "client-certificate-data")).unwrap();
    std::fs::write(&key, kubeconfig_pem(&node_kubeconfig, "client-key-data")).unwrap();
    let (ok, body) = curl(&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    assert!(ok);
    assert_eq!(body, "Forbidden");
    // The admin (system:masters) gets the summary, with the pod's container in it.
    let admin_cert = server.dir.path().join("admin.crt");
    let admin_key = server.dir.path().join("admin.key");
    std::fs::write(&admin_cert, kubeconfig_pem(&server.kubeconfig, "client-certificate-data"))
        .unwrap();
    std::fs::write(&admin_key, kubeconfig_pem(&server.kubeconfig, "client-key-data")).unwrap();
    let (ok, body) =
        curl(&["--cert", admin_cert.to_str().unwrap(), "--key", admin_key.to_str().unwrap()]);
    assert!(ok, "{body}");
    let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pods = summary["pods"].as_array().unwrap();
    let busy =
        pods.iter().find(|p| p["podRef"]["name"] == "busy").expect("the pod is in the summary");
    assert_eq!(busy["containers"][0]["name"], "c");
    assert!(busy["containers"][0]["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
}

#[test]
fn agents_join_from_their_own_network_namespaces() {
    let port = common::free_port();
    let ns = NetNs::create(port % 4096);
    let server = KrustServer::start_with_agent(&[
        "--bind-address=0.0.0.0",
        &format!("--tls-san={}", ns.host_ip),
    ]);
    let node = format!("far-{port}");
    let _agent = join_agent(
        &server,
        &ns,
        &node,
        &["--node-label=zone=far", "--node-taint=dedicated=far:NoSchedule"],
    );
    server.wait_node_ready(&node);
    assert_eq!(
        server.ok(&["get", "node", &node, "-o", "jsonpath={.status.addresses[0].address}"]),
        ns.ns_ip
    );
    assert_eq!(server.ok(&["get", "node", &node, "-o", "jsonpath={.metadata.labels.zone}"]), "far");
    // Only the server's own node carries the control-plane role, as with k3s.
    let roles = server.ok(&[
        "get",
        "nodes",
        "-l",
        "node-role.kubernetes.io/control-plane=true",
        "-o",
        "name",
    ]);
    assert!(!roles.contains(&node), "{roles}");
    let own = server.node.as_deref().unwrap();
    assert!(roles.contains(own), "{roles}");
    assert_eq!(
        server.ok(&[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.spec.taints[0].key}={.spec.taints[0].effect}"
        ]),
        "dedicated=NoSchedule"
    );
    let cidrs = server.ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"]);
    let cidrs: Vec<&str> = cidrs.split_whitespace().collect();
    assert_eq!(cidrs.len(), 2);
    assert_ne!(cidrs[0], cidrs[1], "each node gets its own pod network");
    let lease = server.ok(&[
        "get",
        "lease",
        &node,
        "-n",
        "kube-node-lease",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(lease, node);

    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: far\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'trap \"exit 0\" TERM; echo from-far; while true; do sleep 1; done']\n"
    );
    apply(&server, &manifest);
    server.wait_phase("default", "far", "Running", Duration::from_secs(60));
    assert_eq!(server.pod_field("default", "far", "{.status.hostIP}"), ns.ns_ip);
    // Logs and exec go through the API server to the agent inside the namespace.
    server.wait_for(&["logs", "far"], Duration::from_secs(20), |s| s == "from-far");
    assert_eq!(server.ok(&["exec", "far", "--", "hostname"]).trim(), "far");
    // The pod reaches the API server on another host (here: the other side of the veth),
    // which has no route back to the pod network: its traffic leaves masqueraded.
    let (code, _, stderr) = kubectl_env(
        &server,
        &[
            "exec",
            "far",
            "--",
            "sh",
            "-c",
            &format!("nc -w 3 {} {} </dev/null", ns.host_ip, server.port),
        ],
        &[],
        None,
    );
    assert_eq!(code, 0, "no connection from the pod to {}:{}: {stderr}", ns.host_ip, server.port);

    // Pods on the two nodes reach each other by their own addresses (the nodes route each
    // other's pod networks), with no NAT: the server sees the far pod's address. The same
    // through a Service whose endpoint is on the other node.
    let near = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: near\n  labels: {{app: near}}\nspec:\n  nodeName: {own}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'mkdir -p /www && echo near > /www/index.html && exec /bin/busybox httpd -f -v -p 8080 -h /www']\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: near\nspec:\n  selector: {{app: near}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
    );
    apply(&server, &near);
    server.wait_phase("default", "near", "Running", Duration::from_secs(60));
    let near_ip = server.pod_field("default", "near", "{.status.podIP}");
    let far_ip = server.pod_field("default", "far", "{.status.podIP}");
    let service_ip = server.ok(&["get", "svc", "near", "-o", "jsonpath={.spec.clusterIP}"]);
    for target in [format!("{near_ip}:8080"), service_ip.clone()] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = server.kubectl(&[
                "exec",
                "far",
                "--",
                "sh",
                "-c",
                &format!("timeout 3 wget -qO- http://{target}/"),
            ]);
            if String::from_utf8_lossy(&out.stdout).trim() == "near" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "far pod cannot reach {target}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let log = server.ok(&["logs", "near"]);
    assert!(log.contains(&far_ip), "the near pod saw the far pod's own address: {log}");
    server.ok(&["delete", "pod", "far", "near", "--wait=true"]);
}

/// A real registry (Debian's docker-registry, distribution 2.8) on loopback with htpasswd
/// authentication. Stopped on drop.
struct Registry {
    child: std::process::Child,
    port: u16,
}

impl Registry {
    fn start(dir: &std::path::Path, user: &str, password: &str) -> Registry {
        let port = common::free_port();
        let out =
            std::process::Command::new("htpasswd").args(["-Bbn", user, password]).output().unwrap();
        assert!(out.status.success());
        std::fs::write(dir.join("htpasswd"), out.stdout).unwrap();
        let config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: krust\n    path: {htpasswd}\n",
            root = dir.join("registry").display(),
            htpasswd = dir.join("htpasswd").display(),
        );
        std::fs::write(dir.join("registry.yml"), config).unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("registry.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry { child, port }
    }

    /// Pushes an OCI archive as `repo:tag` with skopeo.
    fn push(&self, archive: &std::path::Path, reference: &str, creds: &str) {
        let out = std::process::Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--dest-creds", creds])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://127.0.0.1:{}/{reference}", self.port))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn images_are_pulled_from_a_private_registry_with_pull_secrets() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Registry::start(scratch.path(), "puller", "s3cret");
    let archive = scratch.path().join("image.tar");
    common::busybox_archive("krust.local/pushed:v1", &archive);
    registry.push(&archive, "team/busybox:v1", "puller:s3cret");
    let host = format!("127.0.0.1:{}", registry.port);
    // The registry speaks plain HTTP: say so in the registries file, as k3s users do.
    let registries = scratch.path().join("registries.yaml");
    std::fs::write(
        &registries,
        format!("mirrors:\n  \"{host}\":\n    endpoint:\n      - \"http://{host}\"\n"),
    )
    .unwrap();
    let server =
        KrustServer::start_with_agent(&[&format!("--private-registry={}", registries.display())]);
    let image = format!("{host}/team/busybox:v1");
    let run = "[sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']";

    // Without credentials the registry answers 401: ErrImagePull.
    apply(
        &server,
        &pod(
            &server,
            "anonymous",
            &format!("  containers: [{{name: c, image: '{image}', command: {run}}}]\n"),
        ),
    );
    server.wait_pod(
        "default",
        "anonymous",
        "{.status.containerStatuses[0].state.waiting.reason}",
        Duration::from_secs(60),
        |s| s == "ErrImagePull" || s == "ImagePullBackOff",
    );

    // With a docker-registry Secret it pulls and runs.
    server.ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={host}"),
        "--docker-username=puller",
        "--docker-password=s3cret",
    ]);
    apply(
        &server,
        &pod(
            &server,
            "pulled",
            &format!(
                "  imagePullSecrets: [{{name: regcred}}]\n  containers: [{{name: c, image: '{image}', command: {run}}}]\n"
            ),
        ),
    );
    server.wait_phase("default", "pulled", "Running", Duration::from_secs(60));
    let image_id = server.pod_field("default", "pulled", "{.status.containerStatuses[0].imageID}");
    assert!(image_id.starts_with("sha256:") || image_id.contains("@sha256:"), "{image_id}");
    let events = server.events("pulled");
    assert!(events.contains(&format!("Pulling: Pulling image \"{image}\"")), "{events}");
    assert!(events.contains("Successfully pulled image"), "{events}");

    // IfNotPresent (the default for a tagged image) does not pull again; Always does.
    apply(
        &server,
        &pod(
            &server,
            "cached",
            &format!("  containers: [{{name: c, image: '{image}', command: {run}}}]\n"),
        ),
    );
    server.wait_phase("default", "cached", "Running", Duration::from_secs(60));
    let events = server.events("cached");
    assert!(events.contains("already present on machine"), "{events}");
    assert!(!events.contains("Pulling"), "{events}");
    apply(
        &server,
        &pod(
            &server,
            "always",
            &format!(
                "  imagePullSecrets: [{{name: regcred}}]\n  containers: [{{name: c, image: '{image}', imagePullPolicy: Always, command: {run}}}]\n"
            ),
        ),
    );
    server.wait_phase("default", "always", "Running", Duration::from_secs(60));
    let events = server.events("always");
    assert!(events.contains("Pulling"), "{events}");
}

#[test]
fn a_node_runs_110_pods_with_the_same_names_in_two_namespaces() {
    let server = KrustServer::start_with_agent(&[]);
    let node = server.node.clone().unwrap();
    assert_eq!(
        server.ok(&["get", "node", &node, "-o", "jsonpath={.status.allocatable.pods}"]),
        "110"
    );
    server.ok(&["create", "namespace", "left"]);
    server.ok(&["create", "namespace", "right"]);
    let mut manifest = String::new();
    for i in 0..55 {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  labels: {{many: \"yes\"}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers: [{{name: c, image: {BUSYBOX}, command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 3600 & wait; done']}}]\n"
        ));
    }
    server.ok_stdin(&["apply", "-n", "left", "-f", "-"], &manifest);
    server.ok_stdin(&["apply", "-n", "right", "-f", "-"], &manifest);
    server.wait_for(
        &["get", "pods", "-A", "-l", "many=yes", "-o", "jsonpath={.items[*].status.phase}"],
        Duration::from_secs(240),
        |s| s.split_whitespace().filter(|p| *p == "Running").count() == 110,
    );
    // Every pod has its own sandbox and address.
    let ips = server.ok(&[
        "get",
        "pods",
        "-A",
        "-l",
        "many=yes",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    let mut ips: Vec<&str> = ips.split_whitespace().collect();
    ips.sort_unstable();
    ips.dedup();
    assert_eq!(ips.len(), 110);
    let uids = server.ok(&[
        "get",
        "pods",
        "-A",
        "-l",
        "many=yes",
        "-o",
        "jsonpath={.items[*].metadata.uid}",
    ]);
    assert_eq!(uids.split_whitespace().count(), 110);
    // Deleting one namespace's pods leaves the other's twins running.
    server.ok(&["delete", "pods", "--all", "-n", "left", "--wait=true"]);
    let right =
        server.ok(&["get", "pods", "-n", "right", "-o", "jsonpath={.items[*].status.phase}"]);
    assert_eq!(right.split_whitespace().filter(|p| *p == "Running").count(), 55);
}

#[test]
fn an_agent_can_use_an_external_cri_runtime() {
    // The server's own agent supervises a containerd; a second agent joins and, instead of
    // supervising one, is pointed at that containerd's CRI socket.
    let server = KrustServer::start_with_agent(&[]);
    let socket = std::fs::read_dir("/run/krust")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("containerd/containerd.sock"))
        .find(|s| {
            std::fs::read_to_string(server.dir.path().join("data/agent/containerd/config.toml"))
                .is_ok_and(|c| c.contains(&s.display().to_string()))
        })
        .expect("the server agent's containerd socket");
    let token = std::fs::read_to_string(server.dir.path().join("data/server/node-token")).unwrap();
    let data = server.dir.path().join("external");
    let port = common::free_port();
    let node = format!("ext-{port}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_krust"))
        .arg("agent")
        .arg(format!("--server=https://127.0.0.1:{}", server.port))
        .arg(format!("--token={}", token.trim()))
        .arg("--data-dir")
        .arg(&data)
        .arg(format!("--node-name={node}"))
        .arg(format!("--kubelet-port={port}"))
        .arg(format!("--container-runtime-endpoint=unix://{}", socket.display()))
        .env("KRUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Stop(std::process::Child, std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::process::Command::new(env!("CARGO_BIN_EXE_krust"))
                .args(["reset", "--data-dir"])
                .arg(&self.1)
                .output();
        }
    }
    let _agent = Stop(child, data.clone());
    server.wait_node_ready(&node);
    assert!(!data.join("agent/containerd/config.toml").exists(), "no containerd of its own");
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ext\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'trap \"exit 0\" TERM; echo external; while true; do sleep 1; done']\n"
    );
    apply(&server, &manifest);
    server.wait_phase("default", "ext", "Running", Duration::from_secs(60));
    server.wait_for(&["logs", "ext"], Duration::from_secs(20), |s| s == "external");
    server.ok(&["delete", "pod", "ext", "--wait=true"]);
}

#[test]
fn containerd_is_restarted_and_archives_of_both_formats_import() {
    let server = KrustServer::start_with_agent(&[]);
    let run = "[sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']";
    apply(
        &server,
        &pod(
            &server,
            "survivor",
            &format!("  containers: [{{name: c, image: {BUSYBOX}, command: {run}}}]\n"),
        ),
    );
    server.wait_phase("default", "survivor", "Running", Duration::from_secs(60));
    let before =
        server.pod_field("default", "survivor", "{.status.containerStatuses[0].containerID}");

    // Kill the supervised containerd: the agent starts a new one, the pod keeps running.
    let config =
        std::fs::read_to_string(server.dir.path().join("data/agent/containerd/config.toml"))
            .unwrap();
    let state = config
        .lines()
        .find_map(|l| l.strip_prefix("state = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let pid_file = std::path::Path::new(&state).join("krust-containerd.pid");
    let old_pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let _ = std::process::Command::new("kill").args(["-9", &old_pid.to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(old_pid);
        if pid != old_pid && std::path::Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        assert!(Instant::now() < deadline, "containerd was not restarted");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Archives in both formats, imported on demand: OCI (as krust writes them) and
    // docker-archive (as `docker save` writes them; converted here with skopeo).
    let scratch = tempfile::tempdir().unwrap();
    let oci = scratch.path().join("oci.tar");
    common::busybox_archive("krust.local/from-oci:1", &oci);
    let docker = scratch.path().join("docker.tar");
    let out = std::process::Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}", oci.display()))
        .arg(format!("docker-archive:{}:krust.local/from-docker:1", docker.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_krust"))
        .args(["image", "import", "--data-dir"])
        .arg(server.dir.path().join("data"))
        .arg(&oci)
        .arg(&docker)
        .output()
        .unwrap();
    assert!(out.status.success(), "krust image import: {}", String::from_utf8_lossy(&out.stderr));
    for (name, image) in
        [("from-oci", "krust.local/from-oci:1"), ("from-docker", "krust.local/from-docker:1")]
    {
        apply(
            &server,
            &pod(
                &server,
                name,
                &format!(
                    "  containers: [{{name: c, image: '{image}', imagePullPolicy: Never, command: {run}}}]\n"
                ),
            ),
        );
    }
    for name in ["from-oci", "from-docker"] {
        server.wait_phase("default", name, "Running", Duration::from_secs(60));
    }
    assert_eq!(
        server.pod_field("default", "survivor", "{.status.containerStatuses[0].containerID}"),
        before
    );
    assert_eq!(
        server.pod_field("default", "survivor", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
}

#[test]
fn exec_with_a_terminal() {
    let server = KrustServer::start_with_agent(&[]);
    let run = "[sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']";
    apply(
        &server,
        &pod(
            &server,
            "tty",
            &format!("  containers: [{{name: c, image: {BUSYBOX}, command: {run}}}]\n"),
        ),
    );
    server.wait_phase("default", "tty", "Running", Duration::from_secs(60));
    // script(1) gives kubectl a pseudo-terminal, as a user's shell would.
    let kubectl = common::tool("kubectl");
    let command = format!("{} exec -it tty -- sh -c 'tty; stty size; exit 5'", kubectl.display());
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .env("COLUMNS", "100")
        .env("LINES", "40")
        .stdin(std::process::Stdio::piped())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("/dev/pts/"), "no terminal in the container: {text:?}");
    assert_eq!(out.status.code(), Some(5), "{text}");
}

/// A gRPC health server (HTTP/2, as grpc-go serves it) on all addresses of the host, whose
/// answer the test flips: SERVING (1) or NOT_SERVING (2).
fn grpc_health_server(serving: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let serving = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let status = if serving.load(Ordering::SeqCst) { 1u8 } else { 2u8 };
                            async move {
                                use http_body_util::BodyExt;
                                let _ = request.into_body().collect().await;
                                let message = bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
                                let mut trailers = hyper::HeaderMap::new();
                                trailers.insert(
                                    "grpc-status",
                                    hyper::header::HeaderValue::from_static("0"),
                                );
                                let frames = futures::stream::iter(vec![
                                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                        message,
                                    )),
                                    Ok(hyper::body::Frame::trailers(trailers)),
                                ]);
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .header("content-type", "application/grpc")
                                        .body(http_body_util::StreamBody::new(frames))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, service)
                    .await;
                });
            }
        });
    });
    port
}

#[test]
fn grpc_and_tcp_probes_pass_and_fail() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = KrustServer::start_with_agent(&[]);
    let serving = std::sync::Arc::new(AtomicBool::new(true));
    let port = grpc_health_server(serving.clone());
    // A host-network pod (which only a privileged namespace admits) has the node's address,
    // so its gRPC readiness probe reaches the health server this test runs on the host. A second container's tcpSocket readiness
    // probe aims at a port nothing listens on.
    server.ok(&["label", "namespace", "default", "pod-security.kubernetes.io/enforce=privileged"]);
    let manifest = pod(
        &server,
        "grpc",
        &format!(
            "  hostNetwork: true
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']
    readinessProbe: {{grpc: {{port: {port}}}, periodSeconds: 1, failureThreshold: 1}}
  - name: closed
    image: {BUSYBOX}
    command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']
    readinessProbe: {{tcpSocket: {{port: 1}}, periodSeconds: 1}}
"
        ),
    );
    apply(&server, &manifest);
    server.wait_phase("default", "grpc", "Running", Duration::from_secs(60));
    let ready = |name: &str| format!("{{.status.containerStatuses[?(@.name==\"{name}\")].ready}}");
    server.wait_pod("default", "grpc", &ready("app"), Duration::from_secs(30), |s| s == "true");
    assert_eq!(
        server.pod_field("default", "grpc", "{.status.podIP}"),
        server.pod_field("default", "grpc", "{.status.hostIP}")
    );
    serving.store(false, Ordering::SeqCst);
    server.wait_pod("default", "grpc", &ready("app"), Duration::from_secs(30), |s| s == "false");
    assert_eq!(server.pod_field("default", "grpc", &ready("closed")), "false");
    let events = server.events("grpc");
    assert!(
        events.contains("Readiness probe failed: service unhealthy (responded with NOT_SERVING)"),
        "{events}"
    );
    assert!(events.contains("Readiness probe failed: dial tcp"), "{events}");
    serving.store(true, Ordering::SeqCst);
    server.wait_pod("default", "grpc", &ready("app"), Duration::from_secs(30), |s| s == "true");
}

/// Services across three nodes (the server's own and two agents in network namespaces):
/// a pod on the first node reaches a ClusterIP whose backends run on the other two, every
/// ready backend answers and the unready one never does; a readiness failure takes a
/// backend out; node ports answer on every node's address from the host, and
/// `externalTrafficPolicy: Local` keeps the client's address and the node's own endpoints;
/// cluster DNS resolves from a pod on another node.
#[test]
fn services_spread_over_three_nodes() {
    let port = common::free_port();
    let (ns_b, ns_c) = (NetNs::create(port % 4096), NetNs::create((port + 1) % 4096));
    let server = KrustServer::start_with_agent(&[
        "--bind-address=0.0.0.0",
        &format!("--tls-san={}", ns_b.host_ip),
        &format!("--tls-san={}", ns_c.host_ip),
        // A node that stops heartbeating is noticed in seconds, not the default 50.
        "--node-monitor-grace-period=15s",
        "--node-monitor-period=1s",
    ]);
    let (b, c) = (format!("b-{port}"), format!("c-{port}"));
    let _agent_b = join_agent(&server, &ns_b, &b, &[]);
    let mut agent_c = Some(join_agent(&server, &ns_c, &c, &[]));
    server.wait_node_ready(&b);
    server.wait_node_ready(&c);
    let a = server.node.clone().unwrap();
    // Zones for topology hints: b in east, c in west, a in none.
    server.ok(&["label", "node", &b, "topology.kubernetes.io/zone=east"]);
    server.ok(&["label", "node", &c, "topology.kubernetes.io/zone=west"]);
    let web = |name: &str, node: &str, ready: bool| {
        let marker = if ready { "touch /tmp/ready && " } else { "" };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && {marker}exec /bin/busybox httpd -f -v -p 8080 -h /www']\n    readinessProbe:\n      exec: {{command: [cat, /tmp/ready]}}\n      periodSeconds: 1\n  tolerations:\n  - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}}\n  - {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 1}}\n---\n"
        )
    };
    let manifest = [
        web("web-b", &b, true),
        web("web-c", &c, true),
        web("web-never", &c, false),
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  nodeName: {a}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'trap \"exit 0\" TERM; sleep 3600 & wait']\n---\n"),
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: asker}}\nspec:\n  nodeName: {b}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'trap \"exit 0\" TERM; sleep 3600 & wait']\n---\n"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n---\n".to_owned(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web-near, annotations: {service.kubernetes.io/topology-mode: Auto}}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n---\n".to_owned(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web-local}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n".to_owned(),
    ]
    .concat();
    apply(&server, &manifest);
    for pod in ["web-b", "web-c", "client", "asker"] {
        server.wait_phase("default", pod, "Running", Duration::from_secs(90));
    }
    let ready = [
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.targetRef.name}{\"\\n\"}{end}",
    ];
    server.wait_for(&ready, Duration::from_secs(60), |o| o.lines().count() == 2);
    let ip = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    // 300 requests from the first node: both ready backends on the other nodes answer,
    // the unready one never.
    let count = |from: &str, n: usize| -> std::collections::BTreeMap<String, usize> {
        let script = format!(
            "for i in $(seq {n}); do timeout 3 wget -qO- http://{ip}/ || echo failed; done"
        );
        let out = server.ok(&["exec", from, "--", "sh", "-c", &script]);
        out.lines().fold(Default::default(), |mut m, l| {
            *m.entry(l.trim().to_owned()).or_default() += 1;
            m
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let answers = loop {
        let answers = count("client", 300);
        if answers.keys().map(String::as_str).collect::<Vec<_>>() == ["web-b", "web-c"]
            || Instant::now() > deadline
        {
            break answers;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        answers.keys().map(String::as_str).collect::<Vec<_>>(),
        ["web-b", "web-c"],
        "{answers:?}"
    );
    assert_eq!(answers.values().sum::<usize>(), 300);
    // Topology hints: the zones have as much CPU each and one ready endpoint each, so each
    // endpoint is hinted for its own zone; a pod in east reaches only east's endpoint.
    let near = server.ok(&["get", "svc", "web-near", "-o", "jsonpath={.spec.clusterIP}"]);
    server.wait_for(
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web-near",
            "-o",
            "jsonpath={range .items[*].endpoints[*]}{.targetRef.name}={.hints.forZones[0].name} {end}",
        ],
        Duration::from_secs(20),
        |o| o.contains("web-b=east") && o.contains("web-c=west"),
    );
    let script =
        format!("for i in $(seq 20); do timeout 3 wget -qO- http://{near}/ || echo failed; done");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = server.ok(&["exec", "asker", "--", "sh", "-c", &script]);
        if out.lines().all(|l| l.trim() == "web-b") {
            break;
        }
        assert!(Instant::now() < deadline, "east's pod left its zone: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Readiness failure on c: it leaves within a probe period and a second or so.
    server.ok(&["exec", "web-c", "--", "rm", "/tmp/ready"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answers = count("client", 20);
        if answers.keys().map(String::as_str).collect::<Vec<_>>() == ["web-b"] {
            break;
        }
        assert!(Instant::now() < deadline, "web-c still answers: {answers:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Node ports on every node's address, from the host.
    let node_port = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"]);
    let node_ip = |n: &str| {
        server.ok(&[
            "get",
            "node",
            n,
            "-o",
            "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
        ])
    };
    for n in [&a, &b, &c] {
        let address = format!("{}:{node_port}", node_ip(n));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match common::get_body(&address) {
                Ok(body) if body == "web-b" => break,
                other => assert!(Instant::now() < deadline, "{address}: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // externalTrafficPolicy: Local on node b: its own endpoint, seeing the host's address.
    let local_port =
        server.ok(&["get", "svc", "web-local", "-o", "jsonpath={.spec.ports[0].nodePort}"]);
    let address = format!("{}:{local_port}", node_ip(&b));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match common::get_body(&address) {
            Ok(body) if body == "web-b" => break,
            other => assert!(Instant::now() < deadline, "{address}: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = server.ok(&["logs", "web-b"]);
    assert!(log.contains(&ns_b.host_ip), "the client's own address reached the pod: {log}");
    // Cluster DNS from a pod on another node.
    let out = server.ok(&["exec", "asker", "--", "nslookup", "web.default.svc.cluster.local"]);
    assert!(out.contains(&format!("Address: {ip}")), "{out}");
    // Node c taken down (its agent stopped, its pods gone with it): once the node is seen
    // unreachable and its pods evicted, no traffic goes there.
    server.ok(&["exec", "web-c", "--", "touch", "/tmp/ready"]);
    server.wait_for(&ready, Duration::from_secs(20), |o| o.lines().count() == 2);
    drop(agent_c.take());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answers = count("client", 20);
        if answers.keys().map(String::as_str).collect::<Vec<_>>() == ["web-b"] {
            break;
        }
        assert!(Instant::now() < deadline, "traffic still goes to the dead node: {answers:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    server.ok(&["delete", "pod", "--all", "--wait=true"]);
}

/// `--flannel-backend=vxlan`: pod networks of nodes reach each other through a VXLAN
/// overlay (each node's route to another's pod network goes through its VXLAN device),
/// pods on two agents talk by their own addresses.
#[test]
fn pods_on_two_nodes_talk_over_the_vxlan_overlay() {
    let port = common::free_port();
    let (ns_b, ns_c) = (NetNs::create(port % 4096), NetNs::create((port + 1) % 4096));
    let server = KrustServer::start_with_agent(&[
        "--bind-address=0.0.0.0",
        "--flannel-backend=vxlan",
        &format!("--tls-san={}", ns_b.host_ip),
        &format!("--tls-san={}", ns_c.host_ip),
    ]);
    let (b, c) = (format!("vb-{port}"), format!("vc-{port}"));
    let _agent_b = join_agent(&server, &ns_b, &b, &[]);
    let _agent_c = join_agent(&server, &ns_c, &c, &[]);
    server.wait_node_ready(&b);
    server.wait_node_ready(&c);
    let pod = |name: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec /bin/busybox httpd -f -v -p 8080 -h /www']\n---\n"
        )
    };
    apply(&server, &[pod("on-b", &b), pod("on-c", &c)].concat());
    for name in ["on-b", "on-c"] {
        server.wait_phase("default", name, "Running", Duration::from_secs(90));
    }
    let (ip_b, ip_c) = (
        server.pod_field("default", "on-b", "{.status.podIP}"),
        server.pod_field("default", "on-c", "{.status.podIP}"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = server.kubectl(&[
            "exec",
            "on-b",
            "--",
            "sh",
            "-c",
            &format!("timeout 3 wget -qO- http://{ip_c}:8080/"),
        ]);
        if String::from_utf8_lossy(&out.stdout).trim() == "on-c" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "on-b cannot reach on-c: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = server.ok(&["logs", "on-c"]);
    assert!(log.contains(&ip_b), "no NAT between the nodes: {log}");
    // Node b routes c's pod network through its VXLAN device.
    let c_cidr = server.ok(&["get", "node", &c, "-o", "jsonpath={.spec.podCIDR}"]);
    let route = std::process::Command::new("nsenter")
        .arg(ns_b.nsenter_arg())
        .args(["ip", "route", "show", &c_cidr])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains("dev krv") && route.contains("onlink"), "{route}");
    server.ok(&["delete", "pod", "--all", "--wait=true"]);
}

/// The official Python client inside a pod, with the pod's own ServiceAccount token
/// (`load_incluster_config`), does what its Role grants and nothing more. The pod runs the
/// host's Python (its prefix and system libraries mounted read-only at the same paths), since
/// no image with Python can be pulled here.
#[test]
fn a_pods_python_client_does_what_its_role_grants_and_nothing_more() {
    let server = KrustServer::start_with_agent(&["--bind-address=0.0.0.0"]);
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys, kubernetes; print(sys.executable); print(sys.prefix)"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Python client must be installed (the README's test command does)"
    );
    let found = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = found.lines();
    let (python, prefix) = (lines.next().unwrap().to_owned(), lines.next().unwrap().to_owned());
    server.ok(&["create", "namespace", "team"]);
    // hostPath volumes need a privileged namespace.
    server.ok(&["label", "namespace", "team", "pod-security.kubernetes.io/enforce=privileged"]);
    server.ok(&["create", "serviceaccount", "reader", "-n", "team"]);
    server.ok(&[
        "create",
        "role",
        "pod-reader",
        "-n",
        "team",
        "--verb=get,list,watch",
        "--resource=pods",
    ]);
    server.ok(&[
        "create",
        "rolebinding",
        "reader",
        "-n",
        "team",
        "--role=pod-reader",
        "--serviceaccount=team:reader",
    ]);
    let script = r#"
from kubernetes import client, config
from kubernetes.client.rest import ApiException
config.load_incluster_config()
v1 = client.CoreV1Api()
print("own pods:", len(v1.list_namespaced_pod("team").items))
for what, call in [("secrets", lambda: v1.list_namespaced_secret("team")),
                   ("other pods", lambda: v1.list_namespaced_pod("default")),
                   ("create", lambda: v1.create_namespaced_config_map("team", {"metadata": {"name": "x"}}))]:
    try:
        call()
        print(what, "allowed")
    except ApiException as e:
        print(what, "denied", e.status)
"#;
    let mut mounts = vec![(prefix.clone(), "python".to_owned())];
    for dir in ["/usr", "/lib", "/lib64"] {
        if std::path::Path::new(dir).exists() {
            mounts.push((dir.to_owned(), dir.trim_start_matches('/').to_owned()));
        }
    }
    let volumes: Vec<String> = mounts
        .iter()
        .map(|(path, name)| format!("{{name: {name}, hostPath: {{path: {path}}}}}"))
        .collect();
    let volume_mounts: Vec<String> = mounts
        .iter()
        .map(|(path, name)| format!("{{name: {name}, mountPath: {path}, readOnly: true}}"))
        .collect();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: team}}\nspec:\n  nodeName: {node}\n  serviceAccountName: reader\n  restartPolicy: Never\n  volumes: [{volumes}]\n  containers:\n  - name: python\n    image: {BUSYBOX}\n    command: [{python}, -c, {script}]\n    volumeMounts: [{volume_mounts}]\n",
        node = server.node.clone().unwrap(),
        volumes = volumes.join(", "),
        volume_mounts = volume_mounts.join(", "),
        script = serde_json::to_string(script).unwrap(),
    );
    apply(&server, &manifest);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let phase = server.pod_field("team", "client", "{.status.phase}");
        if phase == "Succeeded" || phase == "Failed" {
            break;
        }
        assert!(Instant::now() < deadline, "the client pod did not finish: {phase}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let logs = server.ok(&["logs", "client", "-n", "team"]);
    assert!(logs.contains("own pods: 1"), "{logs}");
    assert!(logs.contains("secrets denied 403"), "{logs}");
    assert!(logs.contains("other pods denied 403"), "{logs}");
    assert!(logs.contains("create denied 403"), "{logs}");
}

/// The client certificate inside a kubeconfig file, PEM.
fn kubeconfig_certificate(path: &std::path::Path) -> String {
    use base64::Engine;
    let text = std::fs::read_to_string(path).unwrap();
    let line =
        text.lines().find(|l| l.trim_start().starts_with("client-certificate-data:")).unwrap();
    let data = line.split_once(':').unwrap().1.trim();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data).unwrap()).unwrap()
}

/// When a PEM certificate ends, Unix seconds (openssl reads it).
fn not_after(pem: &str) -> i64 {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
    let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    let date = out.trim().trim_start_matches("notAfter=").replace(' ', "T");
    date.parse::<jiff::Timestamp>().unwrap().as_second()
}

#[test]
fn the_agent_renews_its_client_and_serving_certificates_before_they_expire() {
    // Node certificates of 30 s: the agent renews at 24 s through the Certificates API.
    let server = KrustServer::start_with_agent(&["--node-certificate-validity=30s"]);
    let node = server.node.clone().unwrap();
    let kubeconfig = server.dir.path().join("data/agent/kubelet.kubeconfig");
    let first = kubeconfig_certificate(&kubeconfig);
    let talker = pod(
        &server,
        "talker",
        &format!(
            "  containers:\n  - name: app\n    image: {BUSYBOX}\n    command: [sh, -c, 'echo still here; trap \"exit 0\" TERM; while true; do sleep 1; done']\n"
        ),
    );
    apply(&server, &talker);
    let first_end = not_after(&first);
    let deadline = Instant::now() + Duration::from_secs(90);
    let renewed = loop {
        let now = kubeconfig_certificate(&kubeconfig);
        if now != first {
            break now;
        }
        assert!(Instant::now() < deadline, "the client certificate was not renewed");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(not_after(&renewed) > first_end + 3600, "the new certificate is not longer-lived");
    // Through a request of its own, approved by the controller manager and signed.
    let requests = server.ok(&[
        "get",
        "csr",
        "-o",
        "jsonpath={range .items[*]}{.spec.username} {.status.conditions[0].reason}{\"\\n\"}{end}",
    ]);
    assert!(requests.contains(&format!("system:node:{node} AutoApproved")), "{requests}");
    // Past the first certificate's end (which the server no longer accepts, even on an open
    // connection), the node keeps its heartbeat: its client presents the new certificate.
    while jiff::Timestamp::now().as_second() <= first_end + 1 {
        std::thread::sleep(Duration::from_millis(250));
    }
    let renewed_at = |s: &KrustServer| {
        s.ok(&["get", "lease", &node, "-n", "kube-node-lease", "-o", "jsonpath={.spec.renewTime}"])
    };
    let before = renewed_at(&server);
    let deadline = Instant::now() + Duration::from_secs(30);
    while renewed_at(&server) == before {
        assert!(
            Instant::now() < deadline,
            "the node stopped renewing its lease after its first certificate ended"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Its endpoint's serving certificate was renewed the same way (a kubelet-serving request
    // for its own names, approved against its Node object) and is served now.
    let serving = server.dir.path().join("data/agent/tls/serving.crt");
    let served = std::fs::read_to_string(&serving).unwrap();
    assert!(not_after(&served) > first_end + 3600, "the serving certificate was not renewed");
    assert!(
        requests.contains(&format!("system:node:{node} AutoApproved"))
            && server
                .ok(&["get", "csr", "-o", "jsonpath={.items[*].spec.signerName}"])
                .contains("kubernetes.io/kubelet-serving"),
        "{requests}"
    );
    // Logs come through the API server's TLS connection to the endpoint, which checks the
    // endpoint's (renewed) certificate: the first one has ended by now.
    let logs = server.ok(&["logs", "talker"]);
    assert!(logs.contains("still here"), "{logs}");
    // And the renewed kubeconfig is a working identity for the node.
    let out = std::process::Command::new(common::tool("kubectl"))
        .args(["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("system:node:{node}"));
}

#[test]
fn extended_resources_an_operator_advertises_become_allocatable_and_are_scheduled() {
    let server = KrustServer::start_with_agent(&[]);
    let node = server.node.clone().unwrap();
    server.wait_node_ready(&node);
    // As upstream documents for node-level extended resources: a JSON patch of the node's
    // status capacity. The agent makes it allocatable (the scheduler's figure) by itself.
    let patch_status = |patch: &str| {
        server.ok(&["patch", "node", &node, "--subresource=status", "--type=json", "-p", patch]);
    };
    patch_status(r#"[{"op":"add","path":"/status/capacity/example.com~1dongle","value":"2"}]"#);
    let allocatable = r"jsonpath={.status.allocatable.example\.com/dongle}";
    server.wait_for(&["get", "node", &node, "-o", allocatable], Duration::from_secs(40), |out| {
        out == "2"
    });
    let wants = |name: &str, count: u32| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n    resources:\n      limits: {{example.com/dongle: {count}}}\n"
        )
    };
    apply(&server, &wants("one", 1));
    server.wait_phase("default", "one", "Running", Duration::from_secs(60));
    apply(&server, &wants("two-more", 2));
    server.wait_for(&["get", "events"], Duration::from_secs(30), |_| {
        server.events("two-more").contains("Insufficient example.com/dongle")
    });
    // Taken out of the capacity, it goes from the allocatable too.
    patch_status(r#"[{"op":"remove","path":"/status/capacity/example.com~1dongle"}]"#);
    server.wait_for(
        &["get", "node", &node, "-o", allocatable],
        Duration::from_secs(40),
        str::is_empty,
    );
}
