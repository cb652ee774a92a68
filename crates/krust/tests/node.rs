//! End-to-end: pods run as real containers through the node agent, containerd and runc,
//! driven by the real kubectl. Each test has its own server, agent, containerd, bridge and
//! pod network, and resets them when it ends (`krust reset`).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{BUSYBOX, KrustServer};

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
    server.wait_for(
        &["get", "pod", "web", "-o", "jsonpath={.status.containerStatuses[*].ready}"],
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
",
            node = server.node.clone().unwrap()
        ),
    );
    apply(&server, &manifest);
    // The ConfigMap does not exist yet: the container cannot be configured.
    server.wait_for(
        &[
            "get",
            "pod",
            "env",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
        ],
        Duration::from_secs(60),
        |s| s == "CreateContainerConfigError",
    );
    assert_eq!(server.pod_field("default", "env", "{.status.phase}"), "Pending");
    server.ok(&["create", "configmap", "settings", "--from-literal=color=blue"]);
    server.wait_phase("default", "env", "Succeeded", Duration::from_secs(60));
    assert_eq!(server.pod_field("default", "env", "{.status.qosClass}"), "Guaranteed");
}

#[test]
fn restart_policies_and_crash_loop_back_off() {
    let server = KrustServer::start_with_agent(&[]);
    let manifest = pod(
        &server,
        "crash",
        &format!("  containers: [{{name: c, image: {BUSYBOX}, command: [sh, -c, 'exit 2']}}]\n"),
    );
    apply(&server, &manifest);
    // First restart is immediate, the second waits 10 s: the container is in CrashLoopBackOff
    // with its last exit recorded.
    server.wait_for(
        &[
            "get",
            "pod",
            "crash",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
        ],
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
    server.wait_for(
        &["get", "pod", "crash", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"],
        Duration::from_secs(40),
        |s| s.parse::<u32>().is_ok_and(|n| n > restarts_at_backoff),
    );
    let waited = entered.elapsed();
    assert!(waited >= Duration::from_secs(5), "restarted after only {waited:?} in back-off");
    assert_eq!(server.pod_field("default", "crash", "{.status.phase}"), "Running");
    let events = server.ok(&["get", "events", "-o", "jsonpath={.items[*].reason}"]);
    assert!(events.contains("BackOff"), "{events}");

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
    let server = KrustServer::start_with_agent(&[]);
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
    server.restart();
    server.wait_node_ready(&server.node.clone().unwrap());
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
    server.ok(&["delete", "pod", "twin", "-n", "other"]);
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
    server.wait_for(
        &[
            "get",
            "pod",
            "missing",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
        ],
        Duration::from_secs(60),
        |s| s == "ErrImagePull" || s == "ImagePullBackOff",
    );
    server.wait_for(
        &[
            "get",
            "pod",
            "missing",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
        ],
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
    server.wait_for(
        &[
            "get",
            "pod",
            "never",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
        ],
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
  containers:
  - name: c
    image: {BUSYBOX}
    volumeMounts:
    - {{name: cfg, mountPath: /cfg}}
    - {{name: sec, mountPath: /sec}}
    - {{name: info, mountPath: /info}}
    - {{name: cfg, mountPath: /sub, subPath: extra}}
    command:
    - sh
    - -c
    - |
      test \"$(cat /sec/value)\" = s3cret || exit 10
      test \"$(stat -L -c %a /sec/value)\" = 400 || exit 11
      test -d /sub || exit 12
      test \"$(cat /cfg/color)\" = red || exit 13
      until test \"$(cat /cfg/color)\" = green; do sleep 0.5; done
"
        ),
    );
    apply(&server, &manifest);
    server.wait_phase("default", "watcher", "Running", Duration::from_secs(60));
    let changed = Instant::now();
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: page}\ndata: {color: green}\n",
    );
    server.wait_phase("default", "watcher", "Succeeded", Duration::from_secs(90));
    eprintln!("ConfigMap update reached the pod in {:?}", changed.elapsed());
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
    server.wait_for(
        &[
            "get",
            "pod",
            "probed",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        Duration::from_secs(30),
        |s| s == "True",
    );
    assert_eq!(
        server.pod_field("default", "probed", "{.status.containerStatuses[0].started}"),
        "true"
    );
    server.wait_for(
        &[
            "get",
            "pod",
            "probed",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        Duration::from_secs(30),
        |s| s == "False",
    );
    assert_eq!(
        server.pod_field("default", "probed", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
    let events = server.ok(&[
        "get",
        "events",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(events.contains("Unhealthy: Readiness probe failed"), "{events}");
    assert!(!events.contains("FailedPostStartHook"), "{events}");

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
    server.wait_for(
        &["get", "pod", "unhealthy", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"],
        Duration::from_secs(60),
        |s| s.parse::<u32>().is_ok_and(|n| n >= 1),
    );
    let events = server.ok(&[
        "get",
        "events",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("Unhealthy: Liveness probe failed: HTTP probe failed with statuscode: 404"),
        "{events}"
    );
    assert!(events.contains("failed liveness probe, will be restarted"), "{events}");

    // preStop runs before the container is stopped: it leaves a mark in a hostPath volume.
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
