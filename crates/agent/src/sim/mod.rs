//! Simulated nodes, as upstream's kwok: Nodes with capacity, conditions and Lease
//! heartbeats, whose "kubelet" marks the pods bound to them Running and Ready without
//! starting anything, and removes pods being deleted at once. One process carries
//! thousands of them, which is how scheduler and controller scale is measured on one
//! machine (`krust sim nodes`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controller_runtime::cached_pod::CachedPod;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeSystemInfo, Pod, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::AgentError;

mod stats;

/// The label every simulated node carries.
pub const SIMULATED_LABEL: &str = "node.krust.io/simulated";

/// What the simulated nodes look like.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many nodes.
    pub count: usize,
    /// Node names are `<prefix>-<index>`.
    pub prefix: String,
    /// CPU capacity of each node.
    pub cpu: String,
    /// Memory capacity of each node.
    pub memory: String,
    /// Pod capacity of each node.
    pub pods: u32,
    /// Nodes are spread over this many `topology.kubernetes.io/zone` values.
    pub zones: usize,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// Taints.
    pub taints: Vec<Taint>,
    /// How often each node renews its Lease (the kubelet: 10 s).
    pub lease_interval: Duration,
    /// Requests in flight at once.
    pub parallel: usize,
    /// Each node serves `/stats/summary` on its own port of 127.0.0.1 (see `stats.rs`).
    pub stats: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            count: 10,
            prefix: "sim".into(),
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: 110,
            zones: 3,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            lease_interval: Duration::from_secs(10),
            parallel: 64,
            stats: false,
        }
    }
}

/// Addresses of node `i`: its node IP and its /24 pod network (given in the spec, so the
/// API server does not allocate thousands of them from the cluster CIDR).
fn addresses(i: usize) -> (String, String) {
    let node_ip = format!("172.{}.{}.{}", 16 + (i / 65536) % 16, (i / 256) % 256, i % 256);
    let pod_net = format!("10.{}.{}", 100 + (i / 256) % 150, i % 256);
    (node_ip, pod_net)
}

fn node_object(config: &SimConfig, i: usize) -> Node {
    let name = format!("{}-{i}", config.prefix);
    let (_, pod_net) = addresses(i);
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        ("topology.kubernetes.io/zone".to_owned(), format!("zone-{}", i % config.zones.max(1))),
        (SIMULATED_LABEL.to_owned(), "true".to_owned()),
    ]);
    labels.extend(config.labels.clone());
    Node {
        metadata: ObjectMeta { name: Some(name), labels: Some(labels), ..ObjectMeta::default() },
        spec: Some(NodeSpec {
            pod_cidr: Some(format!("{pod_net}.0/24")),
            pod_cidrs: Some(vec![format!("{pod_net}.0/24")]),
            taints: (!config.taints.is_empty()).then(|| config.taints.clone()),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// A node's status; `endpoint` is the port of its stats endpoint on 127.0.0.1, if it serves
/// one (else it reports port 0: no endpoint).
fn node_status(
    config: &SimConfig,
    i: usize,
    previous: Option<&Node>,
    endpoint: Option<u16>,
) -> serde_json::Value {
    let name = format!("{}-{i}", config.prefix);
    let node_ip = match endpoint {
        Some(_) => "127.0.0.1".to_owned(),
        None => addresses(i).0,
    };
    let resources = BTreeMap::from([
        ("cpu".to_owned(), Quantity(config.cpu.clone())),
        ("memory".to_owned(), Quantity(config.memory.clone())),
        ("pods".to_owned(), Quantity(config.pods.to_string())),
        ("ephemeral-storage".to_owned(), Quantity("100Gi".into())),
    ]);
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": crate::node::conditions(previous, false, false, Ok(())),
        "addresses": [NodeAddress { type_: "InternalIP".into(), address: node_ip },
                      NodeAddress { type_: "Hostname".into(), address: name }],
        "nodeInfo": NodeSystemInfo {
            architecture: "amd64".into(),
            container_runtime_version: "sim://1".into(),
            kubelet_version: format!("{}-sim", crate::KUBELET_VERSION),
            operating_system: "linux".into(),
            os_image: "krust simulated node".into(),
            ..NodeSystemInfo::default()
        },
        "daemonEndpoints": {"kubeletEndpoint": {"Port": endpoint.unwrap_or(0)}},
    })
}

/// The simulated nodes' shared state: which nodes are ours and what their pods got.
#[derive(Debug, Default)]
struct Pods {
    /// Pod UIDs already marked running.
    started: HashSet<String>,
    /// Pod UIDs whose deletion was already issued.
    deleting: HashSet<String>,
    /// Next pod address per node index.
    next_ip: HashMap<usize, u32>,
}

/// Registers the nodes and runs their heartbeats and pods until `shutdown`; the nodes
/// stay registered afterwards (delete them with `kubectl delete node -l
/// node.krust.io/simulated=true`).
pub async fn run(
    client: kube::Client,
    config: SimConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let (listeners, serving) = if config.stats {
        let listeners = stats::bind(config.count).await?;
        let serving = stats::certificate(&client, &format!("{}-0", config.prefix)).await?;
        (listeners, Some(serving))
    } else {
        (Vec::new(), None)
    };
    let ports: Arc<Vec<u16>> =
        Arc::new(listeners.iter().filter_map(|l| l.local_addr().ok().map(|a| a.port())).collect());
    let config = Arc::new(config);
    let registered = futures::stream::iter(0..config.count)
        .map(|i| {
            let nodes = nodes.clone();
            let client = client.clone();
            let config = config.clone();
            let ports = ports.clone();
            async move {
                let node = node_object(&config, i);
                let name = node.name_any();
                let created = match nodes.create(&PostParams::default(), &node).await {
                    Ok(n) => n,
                    Err(kube::Error::Api(s)) if s.code == 409 => nodes.get(&name).await?,
                    Err(e) => return Err(AgentError::from(e)),
                };
                let status = node_status(&config, i, Some(&created), ports.get(i).copied());
                let node = crate::node::patch_status(&client, &name, &status).await?;
                crate::node::renew_lease(&client, &node).await?;
                Ok::<Node, AgentError>(node)
            }
        })
        .buffer_unordered(config.parallel.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for result in registered {
        let node = result?;
        let name = node.name_any();
        if let Some(i) = name.rsplit('-').next().and_then(|i| i.parse().ok()) {
            by_name.insert(name, i);
        }
    }
    tracing::info!(count = by_name.len(), "simulated nodes registered");
    let by_name = Arc::new(by_name);
    let slots = Arc::new(Semaphore::new(config.parallel.max(1)));
    let running: Option<stats::Running> = serving.as_ref().map(|_| stats::Running::default());
    let endpoints = match (&serving, &running) {
        (Some((cert, key)), Some(running)) => {
            stats::serve(listeners, &config.prefix, cert, key, running.clone())?
        }
        _ => Vec::new(),
    };
    let heartbeats = tokio::spawn(heartbeat(
        client.clone(),
        config.clone(),
        by_name.clone(),
        slots.clone(),
        ports,
    ));
    let kubelet = tokio::spawn(run_pods(client, by_name, slots, running));
    let _ = shutdown.wait_for(|stop| *stop).await;
    heartbeats.abort();
    kubelet.abort();
    for endpoint in endpoints {
        endpoint.abort();
    }
    Ok(())
}

/// Renews every node's Lease once per interval, spread evenly over it, and its status
/// every five minutes (the kubelet's status report frequency).
async fn heartbeat(
    client: kube::Client,
    config: Arc<SimConfig>,
    nodes: Arc<HashMap<String, usize>>,
    slots: Arc<Semaphore>,
    ports: Arc<Vec<u16>>,
) {
    let names: Vec<(String, usize)> = nodes.iter().map(|(n, i)| (n.clone(), *i)).collect();
    if names.is_empty() {
        return;
    }
    let tick = config.lease_interval / u32::try_from(names.len()).unwrap_or(u32::MAX).max(1);
    let mut interval = tokio::time::interval(tick.max(Duration::from_micros(100)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let status_every = (Duration::from_secs(300).as_micros()
        / config.lease_interval.as_micros().max(1))
    .max(1) as u64;
    let mut round: u64 = 0;
    loop {
        for (name, i) in &names {
            interval.tick().await;
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let client = client.clone();
            let config = config.clone();
            let name = name.clone();
            let i = *i;
            let refresh_status = round % status_every == status_every - 1;
            let port = ports.get(i).copied();
            tokio::spawn(async move {
                let _permit = permit;
                let node = Node {
                    metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
                    ..Node::default()
                };
                if let Err(e) = crate::node::renew_lease(&client, &node).await {
                    tracing::debug!(node = %name, error = %e, "renewing a simulated lease failed");
                }
                if refresh_status {
                    let nodes: Api<Node> = Api::all(client.clone());
                    let previous = nodes.get_opt(&name).await.ok().flatten();
                    let status = node_status(&config, i, previous.as_ref(), port);
                    if let Err(e) = crate::node::patch_status(&client, &name, &status).await {
                        tracing::debug!(node = %name, error = %e, "refreshing a simulated node failed");
                    }
                }
            });
        }
        round += 1;
    }
}

/// The simulated kubelet: pods bound to our nodes become Running and Ready; pods being
/// deleted are removed.
async fn run_pods(
    client: kube::Client,
    nodes: Arc<HashMap<String, usize>>,
    slots: Arc<Semaphore>,
    running: Option<stats::Running>,
) {
    // The cached view decodes only what a simulated kubelet reads, which keeps this
    // process cheap beside the server it loads.
    let api: Api<CachedPod> = Api::all(client.clone());
    let state = Arc::new(Mutex::new(Pods::default()));
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = stream.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
            Ok(watcher::Event::Delete(p)) => {
                let uid = p.uid().unwrap_or_default();
                let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                s.started.remove(&uid);
                s.deleting.remove(&uid);
                forget(running.as_ref(), &nodes, &p, &uid);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "simulated kubelet watch failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        let Some(&index) = nodes.get(&node) else { continue };
        let uid = pod.uid().unwrap_or_default();
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let ip = {
            let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if deleting {
                if !s.deleting.insert(uid.clone()) {
                    continue;
                }
                None
            } else {
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                if phase != "Pending" || !s.started.insert(uid.clone()) {
                    continue;
                }
                let n = s.next_ip.entry(index).or_insert(2);
                let host = *n;
                *n = if *n >= 254 { 2 } else { *n + 1 };
                Some(format!("{}.{host}", addresses(index).1))
            }
        };
        if deleting {
            forget(running.as_ref(), &nodes, &pod, &uid);
        } else if let Some(running) = &running
            && !pod.labels().contains_key(EXIT_CODE_LABEL)
        {
            let pod = stats::RunningPod {
                namespace: pod.namespace().unwrap_or_default(),
                name: pod.name_any(),
                uid: uid.clone(),
                containers: pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .map(|c| c.name.clone())
                    .collect(),
                started: std::time::Instant::now(),
            };
            let mut running = running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            running.entry(index).or_default().insert(uid.clone(), pod);
        }
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let client = client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let api: Api<Pod> = Api::namespaced(client, &pod.namespace().unwrap_or_default());
            let result = match ip {
                None => api
                    .delete(
                        &pod.name_any(),
                        &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() },
                    )
                    .await
                    .map(|_| ()),
                Some(ip) => {
                    let mut status = running_status(&pod, &addresses(index).0, &ip);
                    if let Some(code) =
                        pod.labels().get(EXIT_CODE_LABEL).and_then(|c| c.parse::<i32>().ok())
                    {
                        finish(&mut status, code);
                    }
                    api.patch_status(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&status),
                    )
                    .await
                    .map(|_| ())
                }
            };
            match result {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::debug!(pod = %pod.name_any(), error = %e, "simulated kubelet update failed")
                }
            }
        });
    }
}

/// Drops a pod from its node's stats.
fn forget(
    running: Option<&stats::Running>,
    nodes: &HashMap<String, usize>,
    pod: &CachedPod,
    uid: &str,
) {
    let Some(running) = running else { return };
    let Some(index) =
        pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).and_then(|n| nodes.get(n))
    else {
        return;
    };
    let mut running = running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(pods) = running.get_mut(index) {
        pods.remove(uid);
    }
}

/// A pod with this label runs to completion at once on a simulated node: its containers
/// exit with the label's value (0: the pod Succeeded, else it Failed). Jobs at scale are
/// measured this way (`krust bench workloads`).
pub const EXIT_CODE_LABEL: &str = "sim.krust.io/exit-code";

/// Turns a running status into a finished one, every container exited with `code`.
fn finish(status: &mut serde_json::Value, code: i32) {
    let Some(s) = status.get_mut("status").and_then(|s| s.as_object_mut()) else { return };
    s.insert("phase".into(), json!(if code == 0 { "Succeeded" } else { "Failed" }));
    let now = s.get("startTime").cloned().unwrap_or(serde_json::Value::Null);
    for c in s.get_mut("containerStatuses").and_then(|c| c.as_array_mut()).into_iter().flatten() {
        c["ready"] = json!(false);
        c["started"] = json!(false);
        c["state"] = json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }, "startedAt": now, "finishedAt": now}});
    }
    for cond in s.get_mut("conditions").and_then(|c| c.as_array_mut()).into_iter().flatten() {
        if cond["type"] == "Ready" || cond["type"] == "ContainersReady" {
            cond["status"] = json!("False");
            cond["reason"] = json!("PodCompleted");
        }
    }
}

/// The status of a pod whose containers all run and are ready.
fn running_status(pod: &CachedPod, host_ip: &str, pod_ip: &str) -> serde_json::Value {
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let uid = pod.uid().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let condition = |kind: &str| json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let containers: Vec<serde_json::Value> = spec
        .containers
        .iter()
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "containerID": format!("sim://{uid}-{}", c.name),
                   "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    let init: Vec<serde_json::Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "containerID": format!("sim://{uid}-{}", c.name),
                   "ready": true, "restartCount": 0,
                   "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}})
        })
        .collect();
    json!({"status": {
        "phase": "Running",
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"),
                       condition("ContainersReady"), condition("PodScheduled")],
        "containerStatuses": containers,
        "initContainerStatuses": init,
    }})
}
