//! `krust agent` (a node joining a server) and the agent flags `krust server` shares, named
//! as k3s names them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

/// Flags of the node agent (also accepted by `krust server`, whose agent runs in-process).
#[derive(Debug, Clone, Args)]
pub(crate) struct AgentArgs {
    /// Node name (default: the host name).
    #[arg(long, env = "KRUST_NODE_NAME")]
    pub(crate) node_name: Option<String>,
    /// The node's address (default: the host's first non-loopback address).
    #[arg(long)]
    pub(crate) node_ip: Option<IpAddr>,
    /// A label to register the node with, `key=value` (repeatable).
    #[arg(long = "node-label", value_name = "KEY=VALUE")]
    pub(crate) node_labels: Vec<String>,
    /// A taint to register the node with, `key=value:Effect` (repeatable).
    #[arg(long = "node-taint", value_name = "KEY=VALUE:EFFECT")]
    pub(crate) node_taints: Vec<String>,
    /// CRI socket of an external runtime (`unix:///run/containerd/containerd.sock`); empty runs
    /// a supervised containerd.
    #[arg(long, default_value = "")]
    pub(crate) container_runtime_endpoint: String,
    /// Registry configuration in k3s's `registries.yaml` format.
    #[arg(long)]
    pub(crate) private_registry: Option<PathBuf>,
    /// Port of the agent's HTTPS endpoint (logs, exec, port-forward, stats).
    #[arg(long, default_value_t = 10250)]
    pub(crate) kubelet_port: u16,
    /// Where the `local-path` StorageClass's volumes live on this node (default
    /// `<data-dir>/storage`).
    #[arg(long)]
    pub(crate) default_local_storage_path: Option<PathBuf>,
    /// A kubelet tunable, `key=value` (repeatable): `max-pods`, `pod-max-pids`.
    #[arg(long = "kubelet-arg", value_name = "KEY=VALUE")]
    pub(crate) kubelet_args: Vec<String>,
    /// Leave Services to another proxy: the agent installs no service rules.
    #[arg(long)]
    pub(crate) disable_service_proxy: bool,
    /// A service proxy tunable, `key=value` (repeatable): `proxy-mode` (`nftables`, or
    /// `iptables` for kernels without nftables; the default picks nftables when it works).
    #[arg(long = "kube-proxy-arg", value_name = "KEY=VALUE")]
    pub(crate) kube_proxy_args: Vec<String>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl AgentArgs {
    /// The agent's config for data under `data_dir` (the agent uses `<data_dir>/agent`).
    pub(crate) fn config(
        &self,
        data_dir: &Path,
        default_ip: Option<IpAddr>,
    ) -> anyhow::Result<agent::AgentConfig> {
        let node_name = self.node_name.clone().unwrap_or_else(host_name);
        let node_ip = self
            .node_ip
            .or(default_ip)
            .or_else(crate::host::default_address)
            .context("no node address: pass --node-ip")?;
        let mut config = agent::AgentConfig::new(data_dir.join("agent"), node_name, node_ip);
        (config.node_labels, config.node_taints) =
            labels_and_taints(&self.node_labels, &self.node_taints)?;
        if !self.container_runtime_endpoint.is_empty() {
            config.container_runtime_endpoint = Some(self.container_runtime_endpoint.clone());
        }
        config.private_registry = self.private_registry.clone();
        config.serve_port = self.kubelet_port;
        if let Some(path) = self.default_local_storage_path.clone() {
            config.local_storage_path = Some(path);
        }
        config.service_proxy = !self.disable_service_proxy;
        for arg in &self.kube_proxy_args {
            let (key, value) = arg
                .trim_start_matches("--")
                .split_once('=')
                .with_context(|| format!("--kube-proxy-arg {arg:?} is not key=value"))?;
            match key {
                "proxy-mode" => {
                    config.proxy_mode = value.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                }
                other => {
                    anyhow::bail!("--kube-proxy-arg {other:?} is not supported (proxy-mode is)")
                }
            }
        }
        for arg in &self.kubelet_args {
            let (key, value) = arg
                .trim_start_matches("--")
                .split_once('=')
                .with_context(|| format!("--kubelet-arg {arg:?} is not key=value"))?;
            match key {
                "max-pods" => config.max_pods = value.parse().context("--kubelet-arg max-pods")?,
                "pod-max-pids" => {
                    let n: i64 = value.parse().context("--kubelet-arg pod-max-pids")?;
                    config.pod_pids_limit = (n > 0).then_some(n);
                }
                other => anyhow::bail!(
                    "--kubelet-arg {other:?} is not supported (max-pods, pod-max-pids are)"
                ),
            }
        }
        Ok(config)
    }
}

/// A kube client from a kubeconfig's text.
pub(crate) async fn client_from_kubeconfig(text: &str) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(text)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

/// The node's client (from the kubeconfig the join wrote), whose certificate is renewed
/// before it expires by a task that stops with `shutdown`.
pub(crate) async fn rotating_client(
    kubeconfig: &str,
    renewal: agent::certificate::Renewal,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<kube::Client> {
    let (client, identity) = agent::certificate::client(kubeconfig).await?;
    tokio::spawn(agent::certificate::rotate(client.clone(), identity, renewal, shutdown));
    Ok(client)
}

/// Starts an agent in this process; it stops (leaving pods running) when `shutdown` fires.
pub(crate) fn spawn(
    config: agent::AgentConfig,
    client: kube::Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let name = config.node_name.clone();
        let mut shutdown = shutdown;
        // Like the kubelet, the agent does not give up: a failed start is retried.
        loop {
            match agent::run(config.clone(), client.clone(), shutdown.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(node = %name, error = %e, "node agent failed; retrying in 5 s")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                _ = agent::stopped(&mut shutdown) => return,
            }
        }
    })
}

/// Flags of `krust reset`.
#[derive(Debug, Args)]
pub(crate) struct ResetArgs {
    /// The data dir of the server or agent to reset.
    #[arg(long, default_value = "/var/lib/krust", env = "KRUST_DATA_DIR")]
    data_dir: PathBuf,
}

/// Stops every pod, containerd, mount, bridge and cgroup the agent of `--data-dir` started.
pub(crate) async fn reset(args: ResetArgs) -> anyhow::Result<()> {
    let config = agent::AgentConfig::new(
        args.data_dir.join("agent"),
        String::new(),
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    );
    let report = agent::reset::reset(&config).await?;
    for e in &report.errors {
        eprintln!("warning: {e}");
    }
    println!(
        "reset {}: {} pod sandboxes removed, {} processes stopped, {} mounts released",
        args.data_dir.display(),
        report.sandboxes,
        report.processes,
        report.mounts
    );
    Ok(())
}

/// Flags of `krust image`.
#[derive(Debug, Args)]
pub(crate) struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ImageCommand {
    /// Writes an OCI image archive built from the host's busybox-static (`/bin/busybox` and a
    /// link for each applet): an image to run pods from without any registry.
    Busybox {
        /// Image reference to name it.
        #[arg(long, default_value = "krust.local/busybox:1")]
        name: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// The static busybox to pack.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
    /// Imports image archives (docker-archive or OCI archive) into the agent's containerd.
    Import {
        /// The data dir of the server or agent whose containerd gets the images.
        #[arg(long, default_value = "/var/lib/krust", env = "KRUST_DATA_DIR")]
        data_dir: PathBuf,
        /// Archives to import.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// `krust image …`.
pub(crate) async fn image(args: ImageArgs) -> anyhow::Result<()> {
    match args.command {
        ImageCommand::Busybox { name, out, busybox } => {
            let archive = agent::image::busybox_image(&name, &busybox)
                .with_context(|| format!("packing {}", busybox.display()))?;
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&out, archive).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {name} to {}", out.display());
            Ok(())
        }
        ImageCommand::Import { data_dir, files } => {
            let config = agent::AgentConfig::new(
                data_dir.join("agent"),
                String::new(),
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            );
            let socket = config.containerd_paths().socket;
            anyhow::ensure!(
                socket.exists(),
                "no containerd socket at {}: is the agent of {} running?",
                socket.display(),
                data_dir.display()
            );
            for file in files {
                agent::containerd::import_image(&socket, &file).await?;
                println!("imported {}", file.display());
            }
            Ok(())
        }
    }
}

/// Flags of `krust agent`.
#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// The server to join, `https://HOST:PORT`.
    #[arg(long, env = "KRUST_URL")]
    server: String,
    /// The cluster's join token (`<server data dir>/server/node-token`).
    #[arg(long, env = "KRUST_TOKEN")]
    token: String,
    /// Folder holding this agent's state.
    #[arg(long, default_value = "/var/lib/krust", env = "KRUST_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    agent: AgentArgs,
}

/// `krust agent`: joins the server and runs the node until SIGINT or SIGTERM (pods keep
/// running after it stops).
pub(crate) async fn run_joined(args: JoinArgs) -> anyhow::Result<()> {
    let mut config = args.agent.config(&args.data_dir, None)?;
    let addresses = vec![config.node_ip.to_string()];
    let credentials =
        crate::join::join(&args.server, &args.token, &config.node_name, &addresses).await?;
    // The server says what its networks are, so an agent needs no flags for them.
    if let Some(cidr) = &credentials.cluster_cidr {
        config.cluster_cidr = cidr.clone();
    }
    config.cluster_dns = credentials.cluster_dns;
    if let Some(domain) = &credentials.cluster_domain {
        config.cluster_domain = domain.clone();
    }
    if let Some(backend) =
        credentials.flannel_backend.as_deref().and_then(agent::routes::Backend::parse)
    {
        config.flannel_backend = backend;
    }
    let files = agent::tls_files(&config);
    pki::write_private(&files.ca, credentials.ca.as_bytes())?;
    pki::write_private(&files.cert, credentials.serving_cert.as_bytes())?;
    pki::write_private(&files.key, credentials.serving_key.as_bytes())?;
    let kubeconfig = pki::kubeconfig(
        &credentials.ca,
        &args.server,
        "node",
        &credentials.client_cert,
        &credentials.client_key,
    );
    let path = config.data_dir.join("kubelet.kubeconfig");
    pki::write_private(&path, kubeconfig.as_bytes())?;
    tracing::info!(server = %args.server, node = %config.node_name, "joined the cluster");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let renewal = agent::certificate::Renewal {
        node_name: config.node_name.clone(),
        kubeconfig: path,
        server_url: args.server.clone(),
        ca_pem: credentials.ca.clone(),
    };
    let client = rotating_client(&kubeconfig, renewal, stop_rx.clone()).await?;
    let task = spawn(config, client, stop_rx);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    stop_tx.send_replace(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(15), task).await;
    Ok(())
}

/// `--node-label key=value` and `--node-taint key=value:Effect` flags, parsed.
pub(crate) fn labels_and_taints(
    labels: &[String],
    taints: &[String],
) -> anyhow::Result<(
    std::collections::BTreeMap<String, String>,
    Vec<k8s_openapi::api::core::v1::Taint>,
)> {
    let mut parsed = std::collections::BTreeMap::new();
    for label in labels {
        let (k, v) = label
            .split_once('=')
            .with_context(|| format!("--node-label {label:?} is not key=value"))?;
        parsed.insert(k.to_owned(), v.to_owned());
    }
    let taints = taints.iter().map(|t| agent::parse_taint(t)).collect::<Result<Vec<_>, _>>()?;
    Ok((parsed, taints))
}
