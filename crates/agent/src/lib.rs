//! krust's node agent, the kubelet's counterpart: it registers its Node, keeps the node's
//! Lease fresh, and runs the pods bound to the node as real containers through CRI.
//!
//! It is a client of the API server like any other component (through `kube`); it never
//! touches storage. The container runtime is containerd, supervised by the agent
//! (`containerd`), or any CRI runtime given by endpoint.

pub mod certificate;
pub mod clock;
pub mod containerd;
pub mod cri;
pub mod image;
pub mod local_volume;

use std::path::{Path, PathBuf};

/// What can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The container runtime failed or could not be started.
    #[error("container runtime: {0}")]
    Runtime(String),
    /// A CRI call failed.
    #[error("CRI: {0}")]
    Cri(#[from] tonic::Status),
    /// An API request failed.
    #[error("API: {0}")]
    Api(#[from] kube::Error),
    /// The configuration is wrong.
    #[error("configuration: {0}")]
    Config(String),
}

/// Resolves once `shutdown` is true (or its sender is gone), holding no borrow of the value
/// afterwards, so callers may await other things in the same `select!` arm.
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

impl AgentError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> AgentError {
        AgentError::Io { path: path.to_owned(), source }
    }
}

pub mod cni;
pub mod node;
pub mod pods;
pub mod registries;
pub mod reset;
pub mod routes;
pub mod serviceproxy;
pub mod sim;
pub mod stream;
pub mod vxlan;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};

/// The kubelet version the agent reports (the API server's version).
pub const KUBELET_VERSION: &str = "v1.37.0+krust";

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The agent's own folder (`<data-dir>/agent`).
    pub data_dir: PathBuf,
    /// The Node's name.
    pub node_name: String,
    /// The node's address (InternalIP, hostIP of its pods).
    pub node_ip: IpAddr,
    /// Labels to add to the Node.
    pub node_labels: BTreeMap<String, String>,
    /// Taints the Node registers with.
    pub node_taints: Vec<Taint>,
    /// An external CRI endpoint; `None` runs a supervised containerd.
    pub container_runtime_endpoint: Option<String>,
    /// A k3s-style `registries.yaml`.
    pub private_registry: Option<PathBuf>,
    /// The cgroup under which pod cgroups go (distinct per agent on one host).
    pub cgroup_root: String,
    /// Port of the agent's HTTPS endpoint (reported in the Node's daemonEndpoints).
    pub serve_port: u16,
    /// Most pods on the node (capacity `pods`), upstream's `--max-pods`.
    pub max_pods: u32,
    /// Most processes per pod, upstream's `--pod-max-pids` (none = unlimited).
    pub pod_pids_limit: Option<i64>,
    /// The cluster's pod network (traffic from it to a Service is not masqueraded).
    pub cluster_cidr: String,
    /// Whether the agent runs the service proxy (off for clusters that bring their own).
    pub service_proxy: bool,
    /// How the service proxy programs the kernel.
    pub proxy_mode: ProxyMode,
    /// The cluster DNS server pods are pointed at (none: pods use the host's resolver).
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// The cluster domain.
    pub cluster_domain: String,
    /// How pod networks reach each other across nodes.
    pub flannel_backend: routes::Backend,
    /// Where the local-path provisioner's volumes live on this node (none: the node keeps
    /// none, as simulated nodes).
    pub local_storage_path: Option<PathBuf>,
}

/// Where the agent keeps the TLS material of its endpoint: the cluster CA (to verify the API
/// server) and its own serving certificate. Written at join (or by the server for its
/// in-process agent).
pub fn tls_files(config: &AgentConfig) -> stream::server::TlsFiles {
    let dir = config.data_dir.join("tls");
    stream::server::TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("serving.crt"),
        key: dir.join("serving.key"),
    }
}

/// How the service proxy programs the kernel (kube-proxy's `--proxy-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// nftables when the kernel has it, iptables otherwise.
    Auto,
    /// One nftables table.
    Nftables,
    /// iptables chains (the fallback).
    Iptables,
}

impl std::str::FromStr for ProxyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<ProxyMode, String> {
        match s {
            "" => Ok(ProxyMode::Auto),
            "nftables" => Ok(ProxyMode::Nftables),
            "iptables" => Ok(ProxyMode::Iptables),
            other => Err(format!("proxy-mode {other:?} is not supported (nftables, iptables are)")),
        }
    }
}

impl AgentConfig {
    /// A config with defaults for the agent whose data lives in `data_dir`.
    pub fn new(data_dir: PathBuf, node_name: String, node_ip: IpAddr) -> AgentConfig {
        AgentConfig {
            cgroup_root: format!("/krust/{node_name}"),
            // `<data-dir>/storage` beside `<data-dir>/agent`, as k3s keeps it.
            local_storage_path: Some(
                data_dir.parent().map_or_else(|| data_dir.join("storage"), |d| d.join("storage")),
            ),
            data_dir,
            node_name,
            node_ip,
            node_labels: BTreeMap::new(),
            node_taints: Vec::new(),
            container_runtime_endpoint: None,
            private_registry: None,
            serve_port: 10250,
            max_pods: node::MAX_PODS,
            pod_pids_limit: None,
            cluster_cidr: "10.42.0.0/16".to_owned(),
            service_proxy: true,
            proxy_mode: ProxyMode::Auto,
            cluster_dns: None,
            cluster_domain: "cluster.local".to_owned(),
            flannel_backend: routes::Backend::HostGw,
        }
    }

    /// `/run/krust/<id>`: a short, per-agent folder for sockets and runtime state.
    pub fn run_dir(&self) -> PathBuf {
        let id = image::sha256_hex(self.data_dir.display().to_string().as_bytes());
        PathBuf::from("/run/krust").join(&id[..12])
    }

    /// The supervised containerd's paths.
    pub fn containerd_paths(&self) -> containerd::ContainerdPaths {
        containerd::ContainerdPaths::new(&self.data_dir, &self.run_dir())
    }

    /// Where air-gap image archives are imported from at start.
    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }

    /// The CRI socket the agent talks to.
    pub fn cri_socket(&self) -> PathBuf {
        match &self.container_runtime_endpoint {
            Some(endpoint) => cri::socket_path(endpoint),
            None => self.containerd_paths().socket,
        }
    }
}

/// Parses `key=value:Effect` (or `key:Effect`) as `--node-taint` takes it.
pub fn parse_taint(s: &str) -> Result<Taint, AgentError> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| AgentError::Config(format!("taint {s:?} has no :Effect")))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(AgentError::Config(format!("taint {s:?}: unknown effect {effect:?}")));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
        None => (kv.to_owned(), None),
    };
    if key.is_empty() {
        return Err(AgentError::Config(format!("taint {s:?} has an empty key")));
    }
    Ok(Taint { key, value, effect: effect.to_owned(), time_added: None })
}

/// Starts the runtime (or connects to the given one) and imports the pause image and every
/// archive in the images folder. Returns the CRI client and the runtime's version.
pub async fn start_runtime(
    config: &AgentConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(cri::SharedRuntime, String, Option<tokio::task::JoinHandle<()>>), AgentError> {
    let mut supervisor = None;
    if config.container_runtime_endpoint.is_none() {
        let paths = config.containerd_paths();
        // Before anything talks to the socket: a containerd left by a killed agent must not
        // answer for the one we start.
        containerd::stop_stale(&paths).await;
        containerd::prepare(&paths, image::PAUSE_IMAGE)?;
        if let Some(file) = &config.private_registry {
            registries::apply(file, &paths)?;
        }
        let paths2 = paths.clone();
        supervisor = Some(tokio::spawn(async move {
            if let Err(e) = containerd::supervise(paths2, shutdown).await {
                tracing::error!(error = %e, "containerd supervision ended");
            }
        }));
    }
    let ready = async {
        let cri: cri::SharedRuntime = std::sync::Arc::new(cri::Cri::new(config.cri_socket())?);
        let (name, version) = cri::wait_ready(cri.as_ref(), Duration::from_secs(60)).await?;
        tracing::info!(runtime = %name, %version, "container runtime is ready");
        if config.container_runtime_endpoint.is_none() {
            import_images(config).await?;
        }
        Ok::<_, AgentError>((cri, format!("{name}://{}", version.trim_start_matches('v'))))
    };
    match ready.await {
        Ok((cri, version)) => Ok((cri, version, supervisor)),
        Err(e) => {
            // A failed start leaves no containerd behind for the next attempt to trip on.
            if let Some(s) = supervisor {
                s.abort();
            }
            Err(e)
        }
    }
}

/// Imports the pause image and every archive in the images folder into the supervised
/// containerd.
pub async fn import_images(config: &AgentConfig) -> Result<(), AgentError> {
    let socket = config.containerd_paths().socket;
    if let Some(pause) = image::pause_image() {
        let path = config.data_dir.join("containerd").join("krust-pause.tar");
        std::fs::write(&path, pause).map_err(|e| AgentError::io(&path, e))?;
        containerd::import_image(&socket, &path).await?;
    }
    let dir = config.images_dir();
    std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
    let mut archives: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| AgentError::io(&dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.ends_with(".tar")
                || name.ends_with(".tar.gz")
                || name.ends_with(".tgz")
                || name.ends_with(".oci")
        })
        .collect();
    archives.sort();
    for archive in archives {
        match containerd::import_image(&socket, &archive).await {
            Ok(()) => tracing::info!(archive = %archive.display(), "image archive imported"),
            Err(e) => tracing::warn!(error = %e, "image archive not imported"),
        }
    }
    Ok(())
}

/// Runs the agent until `shutdown` fires: starts the runtime, registers the Node, writes the
/// pod network config, then keeps the Node's heartbeat and runs its pods. Stopping the agent
/// leaves pods running.
pub async fn run(
    config: AgentConfig,
    client: kube::Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let config = Arc::new(config);
    for dir in [config.data_dir.clone(), config.run_dir()] {
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
    }
    let root_file = reset::cgroup_root_file(&config);
    std::fs::write(&root_file, &config.cgroup_root).map_err(|e| AgentError::io(&root_file, e))?;
    let (cri, runtime_version, supervisor) = start_runtime(&config, shutdown.clone()).await?;

    let registered = async {
        let node = node::register(&client, &config).await?;
        let node = wait_for_pod_cidr(&client, &config, node).await?;
        let pod_cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.clone()).unwrap_or_default();
        if config.container_runtime_endpoint.is_none() {
            cni::write_config(&config, &pod_cidr)?;
            cni::masquerade(&config, &pod_cidr).await?;
        }
        Ok::<_, AgentError>((node, pod_cidr))
    };
    let (node, pod_cidr) = match registered.await {
        Ok(r) => r,
        Err(e) => {
            if let Some(s) = supervisor {
                s.abort();
            }
            return Err(e);
        }
    };
    let (runtime_tx, runtime_rx) = tokio::sync::watch::channel(node::RuntimeInfo {
        version: runtime_version.clone(),
        ready: false,
        message: "container runtime network not ready".into(),
    });
    let first = runtime_status(cri.as_ref(), &runtime_version).await;
    runtime_tx.send_replace(first.clone());
    // From here on failures are retried by the heartbeat rather than ending the agent.
    let status = node::node_status(&config, &first, Some(&node));
    let node = match node::patch_status(&client, &config.node_name, &status).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "writing the node status failed; the heartbeat retries");
            node
        }
    };
    if let Err(e) = node::renew_lease(&client, &node).await {
        tracing::warn!(error = %e, "renewing the node lease failed; the heartbeat retries");
    }
    tokio::spawn(node::heartbeat(
        client.clone(),
        config.clone(),
        node,
        runtime_rx,
        shutdown.clone(),
    ));
    {
        let cri = cri.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stopped(&mut shutdown) => return,
                }
                let info = runtime_status(cri.as_ref(), &runtime_version).await;
                runtime_tx.send_if_modified(|old| {
                    let changed = *old != info;
                    *old = info;
                    changed
                });
            }
        });
    }

    if let Some(storage) = config.local_storage_path.clone() {
        tokio::spawn(local_volume::run_keeper(
            client.clone(),
            config.node_name.clone(),
            storage,
            shutdown.clone(),
        ));
    }
    if config.service_proxy {
        tokio::spawn(serviceproxy::run(client.clone(), config.clone(), shutdown.clone()));
    }
    if config.container_runtime_endpoint.is_none() {
        // Our own pod network (the CNI config above) is routed to the other nodes.
        tokio::spawn(routes::run(client.clone(), config.clone(), shutdown.clone()));
    }
    let directory = stream::server::Directory::default();
    let volume_users = Arc::new(local_volume::Users::default());
    let stream_ctx = stream::server::StreamContext {
        volume_users: volume_users.clone(),
        cri: cri.clone(),
        directory: directory.clone(),
        node_name: config.node_name.clone(),
    };
    let addr =
        std::net::SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), config.serve_port);
    let serving_renewal = tokio::spawn(certificate::rotate_serving(
        client.clone(),
        tls_files(&config),
        config.node_name.clone(),
        vec![config.node_ip.to_string()],
        shutdown.clone(),
    ));
    let endpoint = {
        let files = tls_files(&config);
        tokio::spawn(async move {
            if let Err(e) = stream::server::serve(addr, files, stream_ctx).await {
                tracing::error!(error = %e, "the agent endpoint stopped");
            }
        })
    };
    let ctx = Arc::new(pods::Context {
        objects: pods::ObjectCache::new(client.clone()),
        directory,
        client: client.clone(),
        cri,
        recorder: pods::events::Recorder::new(client.clone(), config.node_name.clone()),
        pods_dir: config.data_dir.join("pods"),
        logs_dir: config.data_dir.join("logs").join("pods"),
        dns: pods::config::DnsSettings {
            host_resolv_conf: std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            cluster_dns: config.cluster_dns.map(|ip| ip.to_string()),
            cluster_domain: config.cluster_domain.clone(),
        },
        node_memory: node::memory_bytes(),
        node_cpu: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
        config: config.clone(),
        clock: clock::Clock::default(),
        pod_cgroups: true,
        host_ports: Default::default(),
        volume_users,
    });
    tracing::info!(node = %config.node_name, pod_cidr, "node agent is running");
    pods::run(ctx, shutdown).await;
    endpoint.abort();
    serving_renewal.abort();
    if let Some(s) = supervisor {
        let _ = s.await;
    }
    Ok(())
}

async fn wait_for_pod_cidr(
    client: &kube::Client,
    config: &AgentConfig,
    mut node: Node,
) -> Result<Node, AgentError> {
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if node.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some_and(|c| !c.is_empty()) {
            return Ok(node);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(AgentError::Config(format!(
                "node {} got no podCIDR from the server",
                config.node_name
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        node = nodes.get(&config.node_name).await?;
    }
}

async fn runtime_status(cri: &dyn cri::Runtime, version: &str) -> node::RuntimeInfo {
    let result = cri.status().await;
    let mut info =
        node::RuntimeInfo { version: version.to_owned(), ready: false, message: String::new() };
    match result {
        Ok(conditions) => {
            let failing: Vec<String> = conditions
                .iter()
                .filter(|c| !c.status)
                .map(|c| format!("{}=false reason:{} message:{}", c.r#type, c.reason, c.message))
                .collect();
            info.ready = failing.is_empty() && !conditions.is_empty();
            info.message = if info.ready {
                String::new()
            } else {
                format!(
                    "container runtime status check may not have completed yet: {}",
                    failing.join(", ")
                )
            };
        }
        Err(e) => info.message = format!("container runtime is down: {}", e.message()),
    }
    info
}
