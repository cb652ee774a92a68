//! The agent's Node: registration, status (addresses, capacity measured from the host,
//! nodeInfo, conditions) and the heartbeat Lease in `kube-node-lease`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{AgentConfig, AgentError};

/// The most pods one node runs, upstream's default `--max-pods`.
pub const MAX_PODS: u32 = 110;

/// How long a Lease is valid; upstream's kubelet renews every quarter of it (10 s).
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// What the agent reports about its runtime in the Node's status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeInfo {
    /// `containerd://1.6.20`.
    pub version: String,
    /// The runtime and its network answer and are ready.
    pub ready: bool,
    /// Why not, when not.
    pub message: String,
}

/// The Node as this agent first registers it: labels and taints from flags, no status yet.
pub fn initial_node(config: &AgentConfig) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), config.node_name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), go_arch().to_owned()),
        ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("beta.kubernetes.io/arch".to_owned(), go_arch().to_owned()),
    ]);
    labels.extend(config.node_labels.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            labels: Some(labels),
            annotations: Some({
                let mut a =
                    BTreeMap::from([("node.alpha.kubernetes.io/ttl".to_owned(), "0".to_owned())]);
                if let Some(path) = config.local_storage_path.as_ref() {
                    a.insert(
                        controller_runtime::local_volume::STORAGE_PATH_ANNOTATION.to_owned(),
                        path.display().to_string(),
                    );
                }
                a
            }),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: (!config.node_taints.is_empty()).then(|| config.node_taints.clone()),
            ..Default::default()
        }),
        status: None,
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Creates the Node if it does not exist, or brings the labels of an existing one up to date
/// (taints of an existing Node belong to the cluster's operators by then, as upstream).
/// Returns the Node as stored.
pub async fn register(client: &kube::Client, config: &AgentConfig) -> Result<Node, AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let wanted = initial_node(config);
    match nodes.create(&PostParams::default(), &wanted).await {
        Ok(node) => {
            tracing::info!(node = %config.node_name, "node registered");
            Ok(node)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let patch = json!({ "metadata": {
                "labels": wanted.metadata.labels,
                "annotations": wanted.metadata.annotations,
            } });
            let node = nodes
                .patch(&config.node_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            tracing::info!(node = %config.node_name, "node already registered; labels updated");
            Ok(node)
        }
        Err(e) => Err(e.into()),
    }
}

/// The host's memory in bytes, from `/proc/meminfo`.
pub fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

fn available_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

fn disk_bytes(path: &std::path::Path) -> (u64, u64) {
    match rustix::fs::statvfs(path) {
        Ok(s) => (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize),
        Err(_) => (0, 0),
    }
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "Linux".to_owned())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// The Node's status as measured now. Conditions keep their transition times from `previous`
/// when their status did not change.
pub fn node_status(
    config: &AgentConfig,
    runtime: &RuntimeInfo,
    previous: Option<&Node>,
) -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = memory_bytes();
    let (disk_total, disk_free) = disk_bytes(&config.data_dir);
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_owned(), Quantity(cpus.to_string()));
    capacity.insert("memory".to_owned(), Quantity(format!("{}Ki", memory / 1024)));
    capacity.insert("pods".to_owned(), Quantity(config.max_pods.to_string()));
    capacity.insert("ephemeral-storage".to_owned(), Quantity(format!("{}Ki", disk_total / 1024)));
    capacity.insert("hugepages-2Mi".to_owned(), Quantity("0".to_owned()));
    // Allocatable keeps back upstream's default eviction threshold for memory (100Mi); the
    // system and kube reservations are empty by default, as upstream.
    let mut allocatable = capacity.clone();
    allocatable.insert(
        "memory".to_owned(),
        Quantity(format!("{}Ki", memory.saturating_sub(100 << 20) / 1024)),
    );
    allocatable.insert(
        "ephemeral-storage".to_owned(),
        Quantity(format!("{}", disk_total - disk_total / 10)),
    );
    let mut allocatable = serde_json::to_value(&allocatable).unwrap_or_else(|_| json!({}));
    debug_assert!(capacity.keys().all(|k| MEASURED.contains(&k.as_str())));
    for (name, quantity) in extended_allocatable(previous) {
        allocatable[name.as_str()] = serde_json::to_value(quantity).unwrap_or_default();
    }
    let uname = rustix::system::uname();
    let memory_pressure = available_memory_bytes().is_some_and(|a| a < (100 << 20));
    let disk_pressure = disk_total > 0 && disk_free < disk_total / 10;
    let ready = if runtime.ready { Ok(()) } else { Err(runtime.message.as_str()) };
    let conditions = conditions(previous, memory_pressure, disk_pressure, ready);
    let info = NodeSystemInfo {
        architecture: go_arch().to_owned(),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        container_runtime_version: runtime.version.clone(),
        kernel_version: uname.release().to_string_lossy().into_owned(),
        kube_proxy_version: String::new(),
        kubelet_version: crate::KUBELET_VERSION.to_owned(),
        machine_id: read_trimmed("/etc/machine-id"),
        operating_system: "linux".to_owned(),
        os_image: os_image(),
        system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
        ..Default::default()
    };
    let addresses = vec![
        NodeAddress { type_: "InternalIP".to_owned(), address: config.node_ip.to_string() },
        NodeAddress { type_: "Hostname".to_owned(), address: config.node_name.clone() },
    ];
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions,
        "addresses": addresses,
        "nodeInfo": info,
        "daemonEndpoints": { "kubeletEndpoint": { "Port": config.serve_port } },
    })
}

/// The four conditions a node reports, keeping each transition time while its status
/// stays the same.
pub fn conditions(
    previous: Option<&Node>,
    memory_pressure: bool,
    disk_pressure: bool,
    ready: Result<(), &str>,
) -> Vec<NodeCondition> {
    let now = Time(jiff::Timestamp::now());
    let prev_conditions: Vec<NodeCondition> = previous
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |kind: &str, status: bool, reason: &str, message: &str| {
        let status = if status { "True" } else { "False" };
        let transition = prev_conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        NodeCondition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(transition),
        }
    };
    vec![
        if memory_pressure {
            condition(
                "MemoryPressure",
                true,
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            condition(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if disk_pressure {
            condition("DiskPressure", true, "KubeletHasDiskPressure", "kubelet has disk pressure")
        } else {
            condition(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        condition(
            "PIDPressure",
            false,
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        match ready {
            Ok(()) => condition("Ready", true, "KubeletReady", "kubelet is posting ready status"),
            Err(message) => condition("Ready", false, "KubeletNotReady", message),
        },
    ]
}

/// Writes the Node's status (a merge patch of the whole status).
pub async fn patch_status(
    client: &kube::Client,
    name: &str,
    status: &serde_json::Value,
) -> Result<Node, AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({ "status": status });
    Ok(nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?)
}

/// Renews the node's Lease (one merge patch), creating it when it does not exist yet.
pub async fn renew_lease(client: &kube::Client, node: &Node) -> Result<(), AgentError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = MicroTime(jiff::Timestamp::now());
    let patch = json!({"spec": {"renewTime": now, "holderIdentity": name,
        "leaseDurationSeconds": LEASE_DURATION_SECONDS}});
    match leases.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    // The Lease belongs to the Node, so it goes when the Node is deleted.
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some("kube-node-lease".to_owned()),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "v1".to_owned(),
                    kind: "Node".to_owned(),
                    name: name.clone(),
                    uid: node.metadata.uid.clone().unwrap_or_default(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.clone()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(now),
            ..Default::default()
        }),
    };
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The resources `node_status` measures; any other capacity entry was advertised by
/// someone else.
const MEASURED: [&str; 5] = ["cpu", "memory", "pods", "ephemeral-storage", "hugepages-2Mi"];

/// The allocatable entries of extended resources someone else advertised in the node's
/// capacity (an operator's patch, as upstream documents for node-level resources): each
/// allocatable as it is, as the kubelet makes every capacity entry allocatable; one taken
/// out of the capacity goes (None: a merge patch removes a key only when told to, with
/// null).
fn extended_allocatable(previous: Option<&Node>) -> Vec<(String, Option<Quantity>)> {
    let status = previous.and_then(|n| n.status.as_ref());
    let advertised = status.and_then(|s| s.capacity.as_ref());
    let own = |name: &str| MEASURED.contains(&name);
    let mut out: Vec<(String, Option<Quantity>)> = advertised
        .into_iter()
        .flatten()
        .filter(|(name, _)| !own(name))
        .map(|(name, quantity)| (name.clone(), Some(quantity.clone())))
        .collect();
    let allocatable = status.and_then(|s| s.allocatable.as_ref());
    for name in allocatable.into_iter().flatten().map(|(name, _)| name) {
        if !own(name) && !advertised.is_some_and(|a| a.contains_key(name)) {
            out.push((name.clone(), None));
        }
    }
    out
}

/// Whether the node's allocatable is behind its advertised extended resources (a status
/// write is due).
fn unallocated_capacity(node: &Node) -> bool {
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    extended_allocatable(Some(node))
        .iter()
        .any(|(name, quantity)| allocatable.and_then(|a| a.get(name)) != quantity.as_ref())
}

/// Keeps the Lease fresh every 10 s and the status fresh every minute or whenever `runtime`
/// changes, until `shutdown`.
pub async fn heartbeat(
    client: kube::Client,
    config: std::sync::Arc<AgentConfig>,
    mut node: Node,
    mut runtime: tokio::sync::watch::Receiver<RuntimeInfo>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut lease_tick = tokio::time::interval(Duration::from_secs(10));
    let mut status_tick = tokio::time::interval(Duration::from_secs(60));
    status_tick.tick().await;
    loop {
        let mut write_status = false;
        tokio::select! {
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&client, &node).await {
                    tracing::warn!(error = %e, "renewing the node lease failed");
                }
                // An extended resource advertised since the last write is made allocatable
                // within a lease period, as the kubelet's 10 s status loop does.
                let nodes: Api<Node> = Api::all(client.clone());
                if let Ok(fresh) = nodes.get(&config.node_name).await
                    && unallocated_capacity(&fresh)
                {
                    node = fresh;
                    write_status = true;
                }
            }
            _ = status_tick.tick() => write_status = true,
            changed = runtime.changed() => {
                if changed.is_err() { return; }
                write_status = true;
            }
            _ = crate::stopped(&mut shutdown) => return,
        }
        if write_status {
            let info = runtime.borrow().clone();
            let status = node_status(&config, &info, Some(&node));
            match patch_status(&client, &config.node_name, &status).await {
                Ok(n) => node = n,
                Err(e) => tracing::warn!(error = %e, "updating node status failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_extended_resources_become_allocatable_and_go_with_their_capacity() {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {
            "capacity": {"cpu": "2", "example.com/fakecpu": "1k"},
            "allocatable": {"cpu": "2", "example.com/gone": "5"}}}))
        .expect("a node");
        assert_eq!(
            extended_allocatable(Some(&node)),
            vec![
                ("example.com/fakecpu".to_owned(), Some(Quantity("1k".into()))),
                ("example.com/gone".to_owned(), None),
            ]
        );
        assert!(unallocated_capacity(&node), "a status write is due");
        assert!(extended_allocatable(None).is_empty());
        let caught_up: Node = serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {
            "capacity": {"cpu": "2", "example.com/fakecpu": "1k"},
            "allocatable": {"cpu": "1", "example.com/fakecpu": "1k"}}}))
        .expect("a node");
        assert!(!unallocated_capacity(&caught_up), "nothing due");
    }
}
