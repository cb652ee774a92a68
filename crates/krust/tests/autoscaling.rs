//! The built-in metrics API and the HorizontalPodAutoscaler, end to end: real pods burning
//! real CPU on the real agent, read by the real `kubectl top`, scaled up and back down by
//! the HPA.

mod common;

use std::time::{Duration, Instant};

use common::{BUSYBOX, KrustServer};

/// A Deployment whose pods burn CPU (up to their 300m limit) while the `burn` ConfigMap
/// says `yes`, and idle once it says anything else.
fn burner() -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: burn}}
data: {{burn: "yes"}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: burner}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: burner}}}}
  template:
    metadata: {{labels: {{app: burner}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: {BUSYBOX}
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "while [ \"$(cat /cfg/burn)\" = yes ]; do :; done; exec sleep 3600"]
        resources:
          requests: {{cpu: 100m, memory: 16Mi}}
          limits: {{cpu: 300m, memory: 64Mi}}
        volumeMounts: [{{name: cfg, mountPath: /cfg}}]
      volumes: [{{name: cfg, configMap: {{name: burn}}}}]
"#
    )
}

const HPA: &str = r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: burner}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burner}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 10}
"#;

/// Millicores of a `kubectl top` CPU cell (`123m`).
fn millicores(cell: &str) -> u64 {
    cell.trim_end_matches('m').parse().unwrap_or(0)
}

fn replicas(server: &KrustServer) -> String {
    server.ok(&["get", "deployment", "burner", "-o", "jsonpath={.spec.replicas}"]).trim().to_owned()
}

#[test]
fn top_reads_the_metrics_api_and_the_hpa_scales_on_cpu_up_and_back_down() {
    let server = KrustServer::start_with_agent(&[
        "--metrics-resolution=2s",
        "--horizontal-pod-autoscaler-sync-period=2s",
    ]);
    // Bad input first: min above max is refused, and nothing is stored.
    let bad = HPA.replace("minReplicas: 1", "minReplicas: 5");
    let out = server.kubectl_with(common::tool("kubectl"), &["apply", "-f", "-"], Some(&bad));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "spec.maxReplicas: Invalid value: 3: must be greater than or equal to `minReplicas`"
        ),
        "{stderr}"
    );
    assert!(!server.kubectl(&["get", "hpa", "burner"]).status.success());

    server.ok_stdin(&["apply", "-f", "-"], &burner());
    let started = Instant::now();
    // The metrics API is discovered and serves the pod once it has two readings.
    let top = server.wait_for(&["top", "pods", "--no-headers"], Duration::from_secs(120), |out| {
        out.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3 && f[0].starts_with("burner-") && millicores(f[1]) >= 100
        })
    });
    eprintln!("kubectl top pods after {:?}:\n{top}", started.elapsed());
    // kubectl asks for protobuf first, and gets it.
    let verbose = server.kubectl(&["top", "pods", "--v=8"]);
    let log = String::from_utf8_lossy(&verbose.stderr);
    // A GET carries no Content-Type of its own: this is the response's.
    assert!(log.contains("Content-Type: application/vnd.kubernetes.protobuf"), "{log}");
    let containers = server.ok(&["top", "pods", "--containers", "--no-headers"]);
    assert!(containers.split_whitespace().any(|w| w == "burn"), "{containers}");
    let all = server.ok(&["top", "pods", "-A", "--sort-by=cpu", "--no-headers"]);
    assert!(
        all.lines()
            .next()
            .is_some_and(|l| l.split_whitespace().nth(1).is_some_and(|n| n.starts_with("burner-"))),
        "the burner is the busiest pod: {all}"
    );
    let selected = server.ok(&["top", "pods", "-l", "app=burner", "--no-headers"]);
    assert_eq!(selected.lines().count(), 1, "{selected}");
    assert!(
        server.ok(&["top", "pods", "-l", "app=nothing", "--no-headers"]).trim().is_empty()
            || !server.kubectl(&["top", "pods", "-l", "app=nothing"]).status.success()
    );
    let nodes = server.ok(&["top", "nodes", "--no-headers"]);
    let node = server.node.clone().expect("node");
    assert!(nodes.contains(&node) && nodes.contains('%'), "{nodes}");
    let raw = server.ok(&["get", "--raw", &format!("/apis/metrics.k8s.io/v1beta1/nodes/{node}")]);
    let raw: serde_json::Value = serde_json::from_str(&raw).expect("NodeMetrics");
    assert_eq!(raw["kind"], "NodeMetrics");
    assert!(raw["window"].as_str().is_some_and(|w| w.ends_with('s')), "{raw}");
    assert!(
        raw["timestamp"].as_str().is_some() && raw["usage"]["memory"].as_str().is_some(),
        "{raw}"
    );
    let pods = server.ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dburner",
    ]);
    let pods: serde_json::Value = serde_json::from_str(&pods).expect("PodMetricsList");
    assert_eq!(pods["kind"], "PodMetricsList");
    assert_eq!(pods["items"][0]["metadata"]["labels"]["app"], "burner", "{pods}");

    // The HPA: 300m of a 100m request is 300% against 50%: up to the maximum, 3.
    server.ok_stdin(&["apply", "-f", "-"], HPA);
    let hpa_created = Instant::now();
    server.wait_for(
        &["get", "deployment", "burner", "-o", "jsonpath={.spec.replicas}"],
        Duration::from_secs(120),
        |r| r == "3",
    );
    let scaled_up = hpa_created.elapsed();
    let status =
        server.wait_for(&["get", "hpa", "burner", "-o", "json"], Duration::from_secs(60), |out| {
            out.contains("TooManyReplicas") && out.contains("ValidMetricFound")
        });
    let status: serde_json::Value = serde_json::from_str(&status).expect("hpa");
    assert_eq!(status["status"]["desiredReplicas"], 3, "{status}");
    let utilization =
        status["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
            .as_i64()
            .expect("current utilization");
    assert!(utilization > 50, "{status}");
    let events = server.events("burner");
    assert!(
        events.contains("SuccessfulRescale: New size: 3; reason: cpu resource utilization (percentage of request) above target"),
        "{events}"
    );
    let listed = server.ok(&["get", "hpa", "burner", "--no-headers"]);
    assert!(listed.contains("/50%") && listed.contains("Deployment/burner"), "{listed}");

    // The load stops: after the 10 s window, back to the minimum.
    server.ok(&["patch", "configmap", "burn", "-p", r#"{"data":{"burn":"no"}}"#]);
    let load_stopped = Instant::now();
    server.wait_for(
        &["get", "deployment", "burner", "-o", "jsonpath={.spec.replicas}"],
        Duration::from_secs(180),
        |r| r == "1",
    );
    let scaled_down = load_stopped.elapsed();
    assert!(
        scaled_down >= Duration::from_secs(10),
        "the scale-down waited for the stabilization window: {scaled_down:?}"
    );
    eprintln!(
        "timeline: first pod metrics {:?} after create; 1→3 replicas {scaled_up:?} after the HPA; 3→1 {scaled_down:?} after the load stopped (window 10 s)",
        hpa_created - started
    );
    assert_eq!(replicas(&server), "1");
    let events = server.events("burner");
    assert!(events.contains("New size: 1; reason: All metrics below target"), "{events}");

    // autoscaling/v1 through `kubectl autoscale`, read back as v2.
    server.ok(&["delete", "hpa", "burner"]);
    server.ok(&["autoscale", "deployment", "burner", "--min=1", "--max=2", "--cpu=60%"]);
    let v2 = server.ok(&[
        "get",
        "hpa.v2.autoscaling",
        "burner",
        "-o",
        "jsonpath={.spec.metrics[0].resource.target.averageUtilization}",
    ]);
    assert_eq!(v2.trim(), "60");
    server.wait_for(
        &[
            "get",
            "hpa",
            "burner",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"ScalingActive\")].reason}",
        ],
        Duration::from_secs(60),
        |r| r == "ValidMetricFound",
    );
}

#[test]
fn custom_and_external_metrics_say_why_they_cannot_be_read() {
    let server = KrustServer::start_control_plane(&["--horizontal-pod-autoscaler-sync-period=1s"]);
    server.ok(&["create", "deployment", "web", &format!("--image={BUSYBOX}"), "--replicas=1"]);
    let hpa = r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  maxReplicas: 4
  metrics:
  - type: Pods
    pods: {metric: {name: requests_per_second}, target: {type: AverageValue, averageValue: "10"}}
"#;
    server.ok_stdin(&["apply", "-f", "-"], hpa);
    let message = server.wait_for(
        &[
            "get",
            "hpa",
            "web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"ScalingActive\")].message}",
        ],
        Duration::from_secs(60),
        |m| !m.is_empty(),
    );
    assert!(
        message.contains("no custom metrics API (custom.metrics.k8s.io) registered"),
        "{message}"
    );
    let reason = server.ok(&[
        "get",
        "hpa",
        "web",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"ScalingActive\")].reason}",
    ]);
    assert_eq!(reason.trim(), "FailedGetPodsMetric");
    // A target that does not exist cannot be scaled, and the condition says so.
    server.ok(&[
        "patch",
        "hpa",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"scaleTargetRef":{"name":"missing"}}}"#,
    ]);
    server.wait_for(
        &[
            "get",
            "hpa",
            "web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"AbleToScale\")].reason}",
        ],
        Duration::from_secs(60),
        |r| r == "FailedGetScale",
    );
    // A custom resource with a scale subresource is a target like any other: above the
    // maximum, the HPA scales it down to it through its scale subresource.
    let crd = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: workers.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: workers, singular: worker, kind: Worker}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.size, statusReplicasPath: .status.ready, labelSelectorPath: .status.selector}
"#;
    server.ok_stdin(&["apply", "-f", "-"], crd);
    server.wait_for(&["get", "workers"], Duration::from_secs(30), |_| true);
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1\nkind: Worker\nmetadata: {name: pool}\nspec: {size: 2}\n",
    );
    server.ok(&["scale", "worker", "pool", "--replicas=10"]);
    assert_eq!(server.ok(&["get", "worker", "pool", "-o", "jsonpath={.spec.size}"]).trim(), "10");
    let scale =
        server.ok(&["get", "--raw", "/apis/example.com/v1/namespaces/default/workers/pool/scale"]);
    assert!(scale.contains(r#""replicas":10"#), "{scale}");
    server.ok_stdin(
        &["apply", "-f", "-"],
        &hpa.replace("name: web}\nspec", "name: workers}\nspec").replace(
            "apiVersion: apps/v1, kind: Deployment, name: web",
            "apiVersion: example.com/v1, kind: Worker, name: pool",
        ),
    );
    server.wait_for(
        &["get", "worker", "pool", "-o", "jsonpath={.spec.size}"],
        Duration::from_secs(60),
        |s| s == "4",
    );
    let events = server.events("workers");
    assert!(
        events.contains("New size: 4; reason: Current number of replicas above Spec.MaxReplicas"),
        "{events}"
    );

    // Defaults: a v2 HPA without metrics targets 80% CPU; a partial behavior is completed.
    let bare = r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: bare}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  maxReplicas: 2
  behavior: {scaleDown: {stabilizationWindowSeconds: 30}}
"#;
    server.ok_stdin(&["apply", "-f", "-"], bare);
    let spec = server.ok(&["get", "hpa.v2.autoscaling", "bare", "-o", "json"]);
    let spec: serde_json::Value = serde_json::from_str(&spec).expect("hpa");
    assert_eq!(spec["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80);
    assert_eq!(spec["spec"]["behavior"]["scaleUp"]["policies"][0]["type"], "Pods");
    assert_eq!(spec["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 30);
    assert_eq!(spec["spec"]["behavior"]["scaleDown"]["selectPolicy"], "Max");
    // Bad behavior values get upstream's messages.
    let bad = bare.replace("stabilizationWindowSeconds: 30", "stabilizationWindowSeconds: 4000");
    let out = server.kubectl_with(common::tool("kubectl"), &["apply", "-f", "-"], Some(&bad));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.behavior.scaleDown.stabilizationWindowSeconds: Invalid value: 4000: must be less than or equal to 3600"),
        "{stderr}"
    );
}
