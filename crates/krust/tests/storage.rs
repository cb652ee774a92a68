//! Persistent storage end to end, with real pods on a real node: the default `local-path`
//! StorageClass, claims provisioned on the node the pod went to, capacity enforced by the
//! volume's own filesystem, protection of claims in use, data kept across pods, and the
//! volume wiped once its claim is gone.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{BUSYBOX, KrustServer};

fn claim(name: &str, size: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {name}
spec:
  accessModes: ["ReadWriteOnce"]
  resources:
    requests:
      storage: {size}
{extra}"#
    )
}

/// A busybox pod `name` whose one container runs `script`; `pod_extra` and `container_extra`
/// are indented YAML lines added to the pod's and the container's spec, `volumes` the pod's
/// volumes.
fn pod_manifest(
    name: &str,
    pod_extra: &str,
    script: &str,
    container_extra: &str,
    volumes: &str,
) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
{pod_extra}  containers:
  - name: postgres
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "{script}"]
{container_extra}  volumes:
{volumes}"#
    )
}

/// The reference text's pod with a claim (busybox in place of postgres, which cannot be
/// pulled here), running `script`.
fn postgres_pod(name: &str, claim: &str, script: &str) -> String {
    pod_manifest(
        name,
        "",
        script,
        "    volumeMounts:\n    - name: data\n      mountPath: /var/lib/postgresql/data\n",
        &format!("  - name: data\n    persistentVolumeClaim:\n      claimName: {claim}\n"),
    )
}

fn storage_dir(server: &KrustServer) -> PathBuf {
    server.dir.path().join("data/storage")
}

/// Bytes the file really occupies on the host's disk (a sparse image only what was written).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| Path::new(p) == path)
}

#[test]
fn a_claim_is_provisioned_where_its_pod_runs_holds_its_size_and_goes_with_the_claim() {
    let server = KrustServer::start_with_agent(&[]);
    let node = server.node.clone().expect("a node");
    let classes = server.ok(&["get", "storageclass"]);
    assert!(
        classes.contains("local-path (default)") && classes.contains("WaitForFirstConsumer"),
        "{classes}"
    );

    // The claim names no class: it gets the default one, and waits for its first pod.
    server.ok_stdin(&["apply", "-f", "-"], &claim("postgres-data", "64Mi", ""));
    assert_eq!(
        server.ok(&["get", "pvc", "postgres-data", "-o", "jsonpath={.spec.storageClassName}"]),
        "local-path"
    );
    server.wait_for(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=postgres-data",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        Duration::from_secs(30),
        |out| out.contains("WaitForFirstConsumer"),
    );
    assert_eq!(
        server.ok(&["get", "pvc", "postgres-data", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );

    // A pod writes 100 MiB into its 64 MiB claim: the volume fills, the write fails with
    // ENOSPC, and the host gives up no more than the claim's size.
    server.ok_stdin(
        &["apply", "-f", "-"],
        &postgres_pod(
            "postgres",
            "postgres-data",
            "echo hello > /var/lib/postgresql/data/kept; dd if=/dev/zero of=/var/lib/postgresql/data/fill bs=1M count=100; echo dd-done; sleep 3600",
        ),
    );
    server.wait_phase("default", "postgres", "Running", Duration::from_secs(90));
    server.wait_for(&["logs", "postgres"], Duration::from_secs(60), |out| out.contains("dd-done"));
    let logs = server.ok(&["logs", "postgres"]);
    assert!(logs.contains("No space left on device"), "{logs}");
    let volume = server.ok(&["get", "pvc", "postgres-data", "-o", "jsonpath={.spec.volumeName}"]);
    assert!(volume.starts_with("pvc-"), "{volume}");
    assert_eq!(
        server.ok(&["get", "pvc", "postgres-data", "-o", "jsonpath={.status.phase}"]),
        "Bound"
    );
    assert_eq!(
        server.ok(&[
            "get",
            "pvc",
            "postgres-data",
            "-o",
            "jsonpath={.metadata.annotations.volume\\.kubernetes\\.io/selected-node}"
        ]),
        node
    );
    assert_eq!(
        server.ok(&["get", "pv", &volume, "-o", "jsonpath={.status.phase} {.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]} {.spec.persistentVolumeReclaimPolicy}"]),
        format!("Bound {node} Delete")
    );
    let path = storage_dir(&server).join(&volume);
    let image = storage_dir(&server).join(".images").join(format!("{volume}.img"));
    assert!(mounted(&path), "{} is not mounted", path.display());
    let used = allocated(&image);
    assert!(used <= 64 << 20, "the image took {used} bytes of the host for a 64 MiB claim");
    assert!(used >= 32 << 20, "the image took only {used} bytes: the writes went elsewhere");

    // The claim is protected while its pod lives.
    server.ok(&["delete", "pvc", "postgres-data", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(2));
    let still = server.ok(&[
        "get",
        "pvc",
        "postgres-data",
        "-o",
        "jsonpath={.metadata.deletionTimestamp} {.metadata.finalizers}",
    ]);
    assert!(still.contains("kubernetes.io/pvc-protection"), "{still}");

    // The pod goes: the claim, its volume and the data on the node follow.
    server.ok(&["delete", "pod", "postgres", "--wait=true", "--timeout=60s"]);
    server.wait_for(&["get", "pvc", "-o", "name"], Duration::from_secs(60), str::is_empty);
    server.wait_for(&["get", "pv", "-o", "name"], Duration::from_secs(60), str::is_empty);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (mounted(&path) || image.exists() || path.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!mounted(&path) && !image.exists() && !path.exists(), "the volume's data stayed");

    // Bad input: no quantity; a selector on a dynamic class is refused by the provisioner.
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["apply", "-f", "-"],
        Some(&claim("bad", "lots", "")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("quantities must match the regular expression"), "{err}");
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["apply", "-f", "-"],
        Some(&claim("none", "1Gi", "").replace("  accessModes: [\"ReadWriteOnce\"]\n", "")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.accessModes: Required value: at least 1 access mode is required"),
        "{err}"
    );
    assert!(server.ok(&["get", "pvc", "-o", "name"]).is_empty());
}

#[test]
fn data_outlives_its_pod_and_a_claim_grows_but_never_shrinks() {
    let server = KrustServer::start_with_agent(&[]);
    server.ok_stdin(&["apply", "-f", "-"], &claim("data", "64Mi", ""));
    server.ok_stdin(
        &["apply", "-f", "-"],
        &postgres_pod(
            "first",
            "data",
            "echo written-by-first > /var/lib/postgresql/data/note; sleep 3600",
        ),
    );
    server.wait_phase("default", "first", "Running", Duration::from_secs(90));
    server.wait_for(
        &["exec", "first", "--", "cat", "/var/lib/postgresql/data/note"],
        Duration::from_secs(30),
        |out| out == "written-by-first",
    );
    server.ok(&["delete", "pod", "first", "--wait=true", "--timeout=60s"]);
    server.ok_stdin(
        &["apply", "-f", "-"],
        &postgres_pod("second", "data", "cat /var/lib/postgresql/data/note; sleep 3600"),
    );
    server.wait_phase("default", "second", "Running", Duration::from_secs(90));
    server.wait_for(&["logs", "second"], Duration::from_secs(30), |out| {
        out.contains("written-by-first")
    });

    // Shrinking is refused; growing is admitted and reaches the volume.
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &[
            "patch",
            "pvc",
            "data",
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"32Mi"}}}}"#,
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
        ),
        "{err}"
    );
    // The default filesystem (XFS) grows online: the running pod writes 100 MiB more
    // into the same mount, with no restart, and the claim reports its new size.
    server.ok(&[
        "patch",
        "pvc",
        "data",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"128Mi"}}}}"#,
    ]);
    let volume = server.ok(&["get", "pvc", "data", "-o", "jsonpath={.spec.volumeName}"]);
    server.wait_for(
        &["get", "pvc", "data", "-o", "jsonpath={.status.capacity.storage} {.status.conditions}"],
        Duration::from_secs(60),
        |out| out.trim() == "128Mi",
    );
    assert_eq!(
        server.ok(&["get", "pv", &volume, "-o", "jsonpath={.spec.capacity.storage}"]),
        "128Mi"
    );
    let wrote = server.ok(&[
        "exec",
        "second",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/var/lib/postgresql/data/fill bs=1M count=100 2>&1 && echo wrote-100",
    ]);
    assert!(wrote.contains("wrote-100"), "{wrote}");
    assert!(
        server.ok(&["logs", "second"]).contains("written-by-first"),
        "the same pod, not a new one"
    );

    // ext4 (a class's `fsType`) grows online where the agent may resize a mounted ext4
    // (CAP_SYS_RESOURCE), else at its next mount: a new pod sees 128 MiB, the claim then
    // reports it.
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: ext4\nprovisioner: krust.io/local-path\nvolumeBindingMode: WaitForFirstConsumer\nallowVolumeExpansion: true\nparameters: {fsType: ext4}\n",
    );
    server.ok_stdin(&["apply", "-f", "-"], &claim("data4", "64Mi", "  storageClassName: ext4\n"));
    server.ok_stdin(
        &["apply", "-f", "-"],
        &postgres_pod("e4", "data4", "echo on-ext4 > /var/lib/postgresql/data/note; sleep 3600"),
    );
    server.wait_phase("default", "e4", "Running", Duration::from_secs(90));
    let volume4 = server.ok(&["get", "pvc", "data4", "-o", "jsonpath={.spec.volumeName}"]);
    assert_eq!(server.ok(&["get", "pv", &volume4, "-o", "jsonpath={.spec.local.fsType}"]), "ext4");
    let fs = server.ok(&[
        "exec",
        "e4",
        "--",
        "sh",
        "-c",
        "grep ' /var/lib/postgresql/data ' /proc/mounts",
    ]);
    assert!(fs.contains(" ext4 "), "{fs}");
    server.ok(&[
        "patch",
        "pvc",
        "data4",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"128Mi"}}}}"#,
    ]);
    let image = storage_dir(&server).join(".images").join(format!("{volume4}.img"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0) < 128 << 20 {
        assert!(Instant::now() < deadline, "the image did not grow");
        std::thread::sleep(Duration::from_millis(200));
    }
    server.ok(&["delete", "pod", "e4", "--wait=true", "--timeout=60s"]);
    server.ok_stdin(
        &["apply", "-f", "-"],
        &postgres_pod("third", "data4", "cat /var/lib/postgresql/data/note; dd if=/dev/zero of=/var/lib/postgresql/data/fill bs=1M count=100 && echo wrote-100; sleep 3600"),
    );
    server.wait_phase("default", "third", "Running", Duration::from_secs(90));
    server.wait_for(&["logs", "third"], Duration::from_secs(60), |out| out.contains("wrote-100"));
    assert!(server.ok(&["logs", "third"]).contains("on-ext4"));
    server.wait_for(
        &["get", "pvc", "data4", "-o", "jsonpath={.status.capacity.storage} {.status.conditions}"],
        Duration::from_secs(30),
        |out| out.trim() == "128Mi",
    );

    // `Immediate` binding: the claim is provisioned (on a node that keeps volumes) and
    // bound before any pod asks for it; a pod then runs on it there.
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: now\nprovisioner: krust.io/local-path\nvolumeBindingMode: Immediate\n",
    );
    server.ok_stdin(&["apply", "-f", "-"], &claim("early", "16Mi", "  storageClassName: now\n"));
    server.wait_for(
        &["get", "pvc", "early", "-o", "jsonpath={.status.phase}"],
        Duration::from_secs(30),
        |out| out == "Bound",
    );
    server.ok_stdin(
        &["apply", "-f", "-"],
        &postgres_pod("late", "early", "echo on-early > /var/lib/postgresql/data/x; cat /var/lib/postgresql/data/x; sleep 3600"),
    );
    server.wait_for(&["logs", "late"], Duration::from_secs(90), |out| out == "on-early");

    // An `Immediate` claim larger than the node's disk is bound without a pod, but the node
    // makes no volume of it: the pod that mounts it is told why.
    server.ok_stdin(&["apply", "-f", "-"], &claim("vast", "100Ti", "  storageClassName: now\n"));
    server.wait_for(
        &["get", "pvc", "vast", "-o", "jsonpath={.status.phase}"],
        Duration::from_secs(30),
        |out| out == "Bound",
    );
    server.ok_stdin(&["apply", "-f", "-"], &postgres_pod("vast", "vast", "sleep 3600"));
    server.wait_for(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=vast,reason=FailedMount",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        Duration::from_secs(60),
        |out| out.contains("more than the") && out.contains("bytes free on this node"),
    );
    let volume = server.ok(&["get", "pvc", "vast", "-o", "jsonpath={.spec.volumeName}"]);
    assert!(!storage_dir(&server).join(".images").join(format!("{volume}.img")).exists());
}

fn stateful_set(retention: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: postgres-headless
spec:
  clusterIP: None
  selector: {{app: postgres}}
  ports: [{{port: 5432}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: postgres
spec:
  serviceName: postgres-headless
  replicas: 3
  persistentVolumeClaimRetentionPolicy: {retention}
  selector:
    matchLabels: {{app: postgres}}
  template:
    metadata:
      labels: {{app: postgres}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: postgres
        image: {BUSYBOX}
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "[ -f /var/lib/postgresql/data/who ] || hostname > /var/lib/postgresql/data/who; sleep 3600"]
        volumeMounts:
        - name: data
          mountPath: /var/lib/postgresql/data
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: ["ReadWriteOnce"]
      storageClassName: local-path
      resources:
        requests:
          storage: 64Mi
"#
    )
}

fn wait_reads_own_data(server: &KrustServer, ordinals: std::ops::Range<usize>) {
    for i in ordinals {
        let pod = format!("postgres-{i}");
        server.wait_phase("default", &pod, "Running", Duration::from_secs(120));
        server.wait_for(
            &["exec", &pod, "--", "cat", "/var/lib/postgresql/data/who"],
            Duration::from_secs(30),
            |out| out == pod,
        );
    }
}

#[test]
fn a_stateful_set_keeps_each_members_data_across_deletion_restart_and_scaling() {
    let mut server = KrustServer::start_with_agent(&[]);
    server.ok_stdin(
        &["apply", "-f", "-"],
        &stateful_set("{whenDeleted: Retain, whenScaled: Retain}"),
    );
    wait_reads_own_data(&server, 0..3);
    let claims = server.ok(&[
        "get",
        "pvc",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}",
    ]);
    assert_eq!(claims.trim(), "data-postgres-0=Bound data-postgres-1=Bound data-postgres-2=Bound");

    // A member deleted comes back with the same name on the same claim.
    let uid = server.ok(&["get", "pod", "postgres-1", "-o", "jsonpath={.metadata.uid}"]);
    server.ok(&["delete", "pod", "postgres-1", "--wait=true", "--timeout=60s"]);
    server.wait_for(
        &["get", "pod", "postgres-1", "-o", "jsonpath={.metadata.uid}"],
        Duration::from_secs(60),
        |out| !out.is_empty() && out != uid,
    );
    wait_reads_own_data(&server, 1..2);

    // The whole server and its agent restart: the members run on, and one deleted after
    // the restart finds its data again.
    server.restart();
    server.wait_node_ready(&server.node.clone().expect("a node"));
    server.ok(&["delete", "pod", "postgres-0", "--wait=true", "--timeout=60s"]);
    wait_reads_own_data(&server, 0..3);

    // whenScaled: Retain — scaling down keeps the claims, scaling up finds the data.
    server.ok(&["scale", "statefulset", "postgres", "--replicas=1"]);
    server.wait_for(&["get", "pods", "-o", "name"], Duration::from_secs(60), |out| {
        out.trim() == "pod/postgres-0"
    });
    assert_eq!(server.ok(&["get", "pvc", "-o", "name"]).lines().count(), 3);
    server.ok(&["scale", "statefulset", "postgres", "--replicas=3"]);
    wait_reads_own_data(&server, 0..3);

    // whenScaled: Delete — the claims of the members scaled away go, and their volumes.
    server.ok(&[
        "patch",
        "statefulset",
        "postgres",
        "-p",
        r#"{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenScaled":"Delete"}}}"#,
    ]);
    server.ok(&["scale", "statefulset", "postgres", "--replicas=1"]);
    server.wait_for(&["get", "pvc", "-o", "name"], Duration::from_secs(90), |out| {
        out.trim() == "persistentvolumeclaim/data-postgres-0"
    });
    server.wait_for(&["get", "pv", "-o", "name"], Duration::from_secs(60), |out| {
        out.lines().count() == 1
    });
}

#[test]
fn an_ephemeral_volume_is_a_claim_made_for_its_pod_and_gone_with_it() {
    let server = KrustServer::start_with_agent(&[]);
    server.ok_stdin(
        &["apply", "-f", "-"],
        &pod_manifest(
            "scratch",
            "  securityContext: {runAsUser: 1000, fsGroup: 2000}\n",
            "df -k /scratch | tail -1; echo groups $(id -G); stat -c 'root %g %a' /scratch; touch /scratch/mine && stat -c 'file %u %g' /scratch/mine; sleep 3600",
            "    volumeMounts: [{name: work, mountPath: /scratch}]\n",
            "  - name: work\n    ephemeral:\n      volumeClaimTemplate:\n        metadata:\n          labels: {kind: scratch}\n        spec:\n          accessModes: [\"ReadWriteOnce\"]\n          resources: {requests: {storage: 32Mi}}\n",
        ),
    );
    server.wait_phase("default", "scratch", "Running", Duration::from_secs(90));
    assert_eq!(
        server.ok(&["get", "pvc", "scratch-work", "-o", "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name} {.metadata.labels.kind} {.status.phase}"]),
        "Pod/scratch scratch Bound"
    );
    // The pod sees a filesystem of the claim's size, not the node's disk.
    server.wait_for(&["logs", "scratch"], Duration::from_secs(30), |out| out.contains("file "));
    let df = server.ok(&["logs", "scratch"]);
    // fsGroup: the container has the group, the volume belongs to it (setgid), and a file
    // the non-root user makes there is its own, in that group.
    assert!(
        df.lines().any(|l| l.starts_with("groups ") && l.split_whitespace().any(|g| g == "2000")),
        "{df}"
    );
    assert!(df.contains("root 2000 2777"), "{df}");
    assert!(df.contains("file 1000 2000"), "{df}");
    let total_kib: u64 = df.split_whitespace().nth(1).and_then(|t| t.parse().ok()).unwrap_or(0);
    assert!((16 << 10..=32 << 10).contains(&total_kib), "{df}");
    // The agent's summary reports the pod's volume with its claim, as the kubelet does.
    let summary = common::stats_summary(&server);
    let pod = summary["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["podRef"]["name"] == "scratch"))
        .cloned()
        .unwrap_or_default();
    let volume = &pod["volume"][0];
    assert_eq!(
        (volume["name"].as_str(), volume["pvcRef"]["name"].as_str()),
        (Some("work"), Some("scratch-work")),
        "{pod}"
    );
    let capacity = volume["capacityBytes"].as_u64().unwrap_or(0);
    assert!((16 << 20..=32 << 20).contains(&capacity), "{volume}");
    assert!(volume["inodes"].as_u64().unwrap_or(0) > 0, "{volume}");
    // And its `/metrics` the kubelet's volume metrics.
    let metrics = String::from_utf8(common::agent_get(&server, "/metrics")).unwrap_or_default();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("kubelet_volume_stats_capacity_bytes{namespace=\"default\",persistentvolumeclaim=\"scratch-work\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(line.rsplit(' ').next(), Some(capacity.to_string().as_str()), "{line}");
    server.ok(&["delete", "pod", "scratch", "--wait=true", "--timeout=60s"]);
    server.wait_for(&["get", "pvc", "-o", "name"], Duration::from_secs(60), str::is_empty);
    server.wait_for(&["get", "pv", "-o", "name"], Duration::from_secs(60), str::is_empty);
}

#[test]
fn claims_follow_their_pods_node_and_access_modes_hold_across_two_nodes() {
    let port = common::free_port();
    let ns = common::NetNs::create(port % 4096);
    let server = KrustServer::start_with_agent(&[
        "--bind-address=0.0.0.0",
        &format!("--tls-san={}", ns.host_ip),
    ]);
    let far = format!("far-{port}");
    let agent = common::join_agent(&server, &ns, &far, &["--node-label=zone=far"]);
    server.wait_node_ready(&far);

    // Provisioned on the node the scheduler picked for the first pod (pinned there by its
    // selector); a second pod on the same claim goes where the volume is.
    server.ok_stdin(&["apply", "-f", "-"], &claim("far-data", "64Mi", ""));
    let writer = postgres_pod(
        "writer",
        "far-data",
        "echo from-far > /var/lib/postgresql/data/note; sleep 3600",
    )
    .replace(
        "spec:\n  terminationGracePeriodSeconds",
        "spec:\n  nodeSelector: {zone: far}\n  terminationGracePeriodSeconds",
    );
    server.ok_stdin(&["apply", "-f", "-"], &writer);
    server.wait_phase("default", "writer", "Running", Duration::from_secs(90));
    assert_eq!(server.pod_field("default", "writer", "{.spec.nodeName}"), far);
    let volume = server.ok(&["get", "pvc", "far-data", "-o", "jsonpath={.spec.volumeName}"]);
    assert!(
        agent.data.join("storage/.images").join(format!("{volume}.img")).exists(),
        "the volume was not made on the far node"
    );
    server.ok_stdin(
        &["apply", "-f", "-"],
        &postgres_pod("reader", "far-data", "cat /var/lib/postgresql/data/note; sleep 3600"),
    );
    server.wait_phase("default", "reader", "Running", Duration::from_secs(90));
    assert_eq!(server.pod_field("default", "reader", "{.spec.nodeName}"), far);
    server.wait_for(&["logs", "reader"], Duration::from_secs(30), |out| out == "from-far");

    // ReadWriteOncePod: a second pod stays Pending with upstream's message.
    server.ok_stdin(
        &["apply", "-f", "-"],
        &claim("solo", "16Mi", "").replace("[\"ReadWriteOnce\"]", "[\"ReadWriteOncePod\"]"),
    );
    server.ok_stdin(&["apply", "-f", "-"], &postgres_pod("solo-1", "solo", "sleep 3600"));
    server.wait_phase("default", "solo-1", "Running", Duration::from_secs(90));
    server.ok_stdin(&["apply", "-f", "-"], &postgres_pod("solo-2", "solo", "sleep 3600"));
    server.wait_for(
        &["get", "pod", "solo-2", "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}"],
        Duration::from_secs(30),
        |out| out.contains("node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode"),
    );

    // A claim larger than any node's free space is placed nowhere: each agent publishes
    // its free space as a CSIStorageCapacity of the local-path class.
    let own = server.node.clone().expect("a node");
    server.wait_for(
        &[
            "get",
            "csistoragecapacities",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.storageClassName} {end}",
        ],
        Duration::from_secs(30),
        |out| {
            out.contains(&format!("local-path-{far}=local-path"))
                && out.contains(&format!("local-path-{own}=local-path"))
        },
    );
    server.ok_stdin(&["apply", "-f", "-"], &claim("huge", "100Pi", ""));
    server.ok_stdin(&["apply", "-f", "-"], &postgres_pod("huge", "huge", "sleep 3600"));
    server.wait_for(
        &["get", "pod", "huge", "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}"],
        Duration::from_secs(30),
        |out| out.contains("0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind."),
    );
    assert!(server.ok(&["get", "pv", "-o", "name"]).lines().count() == 2);
    drop(agent);
}

#[test]
fn bad_volumes_classes_and_claims_are_refused_with_upstreams_words() {
    let server = KrustServer::start_control_plane(&["--local-storage-allowed-paths=/mnt,/srv"]);
    let pv = |name: &str, source: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {name}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n{source}"
        )
    };
    let refused = |manifest: &str| {
        let out =
            server.kubectl_with(common::tool("kubectl"), &["apply", "-f", "-"], Some(manifest));
        assert!(!out.status.success(), "{manifest} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&pv("etc", "  hostPath: {path: /etc}\n"));
    assert!(
        err.contains("spec.hostPath.path: Forbidden: must be under one of the allowed local storage paths: /mnt, /srv"),
        "{err}"
    );
    let err = refused(&pv("climb", "  hostPath: {path: /mnt/../etc}\n"));
    assert!(err.contains("allowed local storage paths"), "{err}");
    let err = refused(&pv("nothing", ""));
    assert!(err.contains("spec: Required value: must specify a volume type"), "{err}");
    let err = refused(&pv("local", "  local: {path: /mnt/disk}\n"));
    assert!(
        err.contains("spec.nodeAffinity: Required value: Local volume requires node affinity"),
        "{err}"
    );
    server.ok_stdin(&["apply", "-f", "-"], &pv("disk", "  hostPath: {path: /mnt/disk}\n"));
    server.wait_for(
        &["get", "pv", "disk", "-o", "jsonpath={.status.phase}"],
        Duration::from_secs(30),
        |out| out == "Available",
    );
    let err = refused(&pv("disk", "  hostPath: {path: /srv/other}\n"));
    assert!(err.contains("spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is immutable after creation"), "{err}");

    // A static claim binds to the volume that fits; the volume turns Bound.
    server.ok_stdin(&["apply", "-f", "-"], &claim("static", "512Mi", "  storageClassName: \"\"\n"));
    server.wait_for(
        &["get", "pvc", "static", "-o", "jsonpath={.status.phase} {.spec.volumeName}"],
        Duration::from_secs(30),
        |out| out == "Bound disk",
    );
    assert_eq!(
        server.ok(&["get", "pv", "disk", "-o", "jsonpath={.status.phase} {.spec.claimRef.name}"]),
        "Bound static"
    );
    // Growing needs a class that allows it.
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &[
            "patch",
            "pvc",
            "static",
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"1Gi"}}}}"#,
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"), "{err}");
    // The claim goes, the Retain volume stays Released.
    server.ok(&["delete", "pvc", "static"]);
    server.wait_for(
        &["get", "pv", "disk", "-o", "jsonpath={.status.phase}"],
        Duration::from_secs(30),
        |out| out == "Released",
    );

    // A class with parameters the local-path provisioner does not take, and a selector on a
    // dynamic class: events say why, nothing is provisioned.
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: odd\nprovisioner: krust.io/local-path\nvolumeBindingMode: Immediate\nparameters: {speed: fast}\n",
    );
    server.ok_stdin(&["apply", "-f", "-"], &claim("odd", "1Gi", "  storageClassName: odd\n"));
    server.wait_for(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=odd",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        Duration::from_secs(30),
        |out| out.contains("invalid StorageClass parameter \"speed\""),
    );
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: now\nprovisioner: krust.io/local-path\nvolumeBindingMode: Immediate\n",
    );
    server.ok_stdin(
        &["apply", "-f", "-"],
        &claim(
            "picky",
            "1Gi",
            "  storageClassName: now\n  selector: {matchLabels: {tier: gold}}\n",
        ),
    );
    server.wait_for(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=picky",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        Duration::from_secs(30),
        |out| out.contains("claim Selector is not supported"),
    );
    // An `Immediate` class whose allowed topologies name no node: nothing is provisioned.
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: nowhere\nprovisioner: krust.io/local-path\nvolumeBindingMode: Immediate\nallowedTopologies: [{matchLabelExpressions: [{key: kubernetes.io/hostname, values: [no-such-node]}]}]\n",
    );
    server
        .ok_stdin(&["apply", "-f", "-"], &claim("fenced", "1Gi", "  storageClassName: nowhere\n"));
    server.wait_for(&["get", "events"], Duration::from_secs(30), |_| {
        server.events("fenced").contains("no ready node keeps local volumes where the class allows")
    });
    assert_eq!(server.ok(&["get", "pv", "-o", "name"]).trim(), "persistentvolume/disk");
}

#[test]
fn a_block_claim_is_a_device_of_its_size_in_the_pod() {
    let server = KrustServer::start_with_agent(&[]);
    server.ok_stdin(&["apply", "-f", "-"], &claim("raw", "32Mi", "  volumeMode: Block\n"));
    server.ok_stdin(
        &["apply", "-f", "-"],
        &pod_manifest(
            "raw",
            "",
            "[ -b /dev/xvda ] && echo is-block; dd if=/dev/zero of=/dev/xvda bs=1M count=40; echo dd-done; sleep 3600",
            "    volumeDevices: [{name: raw, devicePath: /dev/xvda}]\n",
            "  - name: raw\n    persistentVolumeClaim: {claimName: raw}\n",
        ),
    );
    server.wait_phase("default", "raw", "Running", Duration::from_secs(90));
    server.wait_for(&["logs", "raw"], Duration::from_secs(60), |out| out.contains("dd-done"));
    let logs = server.ok(&["logs", "raw"]);
    assert!(logs.contains("is-block") && logs.contains("No space left on device"), "{logs}");
    assert!(logs.contains("32+0 records out"), "the device was not the claim's size: {logs}");
    let volume = server.ok(&["get", "pvc", "raw", "-o", "jsonpath={.spec.volumeName}"]);
    assert_eq!(server.ok(&["get", "pv", &volume, "-o", "jsonpath={.spec.volumeMode}"]), "Block");
    let image = storage_dir(&server).join(".images").join(format!("{volume}.img"));
    let attached = || {
        let out = std::process::Command::new("losetup").arg("-j").arg(&image).output().unwrap();
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    assert!(attached(), "no loop device for {}", image.display());
    // The last pod gone, the device is detached; the claim gone, the image too.
    server.ok(&["delete", "pod", "raw", "--wait=true", "--timeout=60s"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while attached() {
        assert!(Instant::now() < deadline, "the loop device stayed attached");
        std::thread::sleep(Duration::from_millis(200));
    }
    server.ok(&["delete", "pvc", "raw"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while image.exists() {
        assert!(Instant::now() < deadline, "the image stayed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn another_provisioners_claim_is_scheduled_and_a_choice_given_back_is_made_again() {
    let server = KrustServer::start_with_agent(&[]);
    server
        .wait_for(&["get", "nodes", "-o", "name"], Duration::from_secs(60), |out| !out.is_empty());
    let node = server.ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);

    // A class of some other provisioner (none runs here): the scheduler still picks a node
    // for its waiting claim, as upstream assumes a provisioner without capacity tracking
    // can make the volume anywhere its class allows.
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: elsewhere\nprovisioner: example.com/nfs\nvolumeBindingMode: WaitForFirstConsumer\n",
    );
    server.ok_stdin(
        &["apply", "-f", "-"],
        &claim("far-away", "1Gi", "  storageClassName: elsewhere\n"),
    );
    server.ok_stdin(&["apply", "-f", "-"], &postgres_pod("waits", "far-away", "sleep 3600"));
    let selected = "jsonpath={.metadata.annotations.volume\\.kubernetes\\.io/selected-node}";
    server.wait_for(&["get", "pvc", "far-away", "-o", selected], Duration::from_secs(30), |out| {
        out == node
    });
    server.wait_for(&["get", "events"], Duration::from_secs(30), |_| {
        server
            .events("far-away")
            .contains("ExternalProvisioning: Waiting for a volume to be created")
    });
    assert_eq!(
        server.pod_field("default", "waits", "{.spec.nodeName}"),
        "",
        "bound only after its claim"
    );

    // The provisioner gives the choice back (as one does when it cannot make the volume
    // there): the scheduler drops the placement and chooses again.
    server.ok(&["annotate", "pvc", "far-away", "volume.kubernetes.io/selected-node-"]);
    server.wait_for(&["get", "events"], Duration::from_secs(30), |_| {
        server.events("waits").contains("selectedNode annotation reset for PVC \"far-away\"")
    });
    server.wait_for(&["get", "pvc", "far-away", "-o", selected], Duration::from_secs(60), |out| {
        out == node
    });

    // The local-path provisioner gives back a node it cannot use.
    server.ok_stdin(
        &["apply", "-f", "-"],
        &claim("ghostly", "1Gi", "  storageClassName: local-path\n").replace(
            "metadata:\n",
            "metadata:\n  annotations: {volume.kubernetes.io/selected-node: ghost}\n",
        ),
    );
    server.wait_for(&["get", "events"], Duration::from_secs(30), |_| {
        server.events("ghostly").contains("ProvisioningFailed: node \"ghost\" not found")
    });
    server.wait_for(
        &["get", "pvc", "ghostly", "-o", selected],
        Duration::from_secs(30),
        str::is_empty,
    );
    assert_eq!(server.ok(&["get", "pv", "-o", "name"]), "", "nothing provisioned");
}

#[test]
fn a_pod_goes_only_to_a_node_in_its_bound_volumes_zone() {
    let server = KrustServer::start_with_agent(&[]);
    let node = server.node.clone().expect("a node");
    server.wait_node_ready(&node);
    server.ok(&["label", "node", &node, "topology.kubernetes.io/zone=b"]);
    let host = server.dir.path().join("zoned");
    std::fs::create_dir_all(&host).expect("a folder");
    server.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: zoned\n  labels: {{topology.kubernetes.io/zone: a}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: ''\n  hostPath: {{path: {}}}\n",
            host.display()
        ),
    );
    server.ok_stdin(
        &["apply", "-f", "-"],
        &claim("zoned", "1Gi", "  storageClassName: ''\n  volumeName: zoned\n"),
    );
    server.wait_for(
        &["get", "pvc", "zoned", "-o", "jsonpath={.status.phase}"],
        Duration::from_secs(30),
        |out| out == "Bound",
    );
    server.ok_stdin(&["apply", "-f", "-"], &postgres_pod("zoned", "zoned", "sleep 3600"));
    server.wait_for(&["get", "events"], Duration::from_secs(30), |_| {
        server.events("zoned").contains("node(s) had no available volume zone")
    });
    // Moved into the volume's zone, the node takes the pod.
    server.ok(&["label", "node", &node, "topology.kubernetes.io/zone=a", "--overwrite"]);
    server.wait_phase("default", "zoned", "Running", Duration::from_secs(90));
}
