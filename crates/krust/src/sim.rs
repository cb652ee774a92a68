//! `krust sim nodes`: simulated nodes for scale tests (see `agent::sim`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

/// `krust sim …`.
#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    #[command(subcommand)]
    command: SimCommand,
}

#[derive(Debug, Subcommand)]
enum SimCommand {
    /// Register simulated nodes (heartbeats, capacity; bound pods become Running and Ready
    /// without containers) and keep them alive until interrupted.
    Nodes(NodesArgs),
}

/// Flags of `krust sim nodes`.
#[derive(Debug, Args)]
pub(crate) struct NodesArgs {
    /// Kubeconfig of the cluster to join.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// How many nodes.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Node names are `<prefix>-<index>`.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// CPU capacity per node.
    #[arg(long, default_value = "32")]
    cpu: String,
    /// Memory capacity per node.
    #[arg(long, default_value = "256Gi")]
    memory: String,
    /// Pod capacity per node.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Spread nodes over this many `topology.kubernetes.io/zone` values.
    #[arg(long, default_value_t = 3)]
    zones: usize,
    /// Extra node label `key=value` (repeatable).
    #[arg(long = "node-label")]
    labels: Vec<String>,
    /// Node taint `key=value:Effect` (repeatable).
    #[arg(long = "node-taint")]
    taints: Vec<String>,
    /// Lease renewal interval per node.
    #[arg(long, default_value = "10s", value_parser = crate::flags::parse_duration)]
    lease_interval: Duration,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Serve a kubelet endpoint with `/stats/summary` per node on 127.0.0.1 (made-up usage
    /// of the nodes' pods), for the metrics API to scrape.
    #[arg(long)]
    stats: bool,
}

impl NodesArgs {
    pub(crate) fn config(&self) -> anyhow::Result<agent::sim::SimConfig> {
        let (labels, taints) = crate::agent::labels_and_taints(&self.labels, &self.taints)?;
        Ok(agent::sim::SimConfig {
            count: self.count,
            prefix: self.prefix.clone(),
            cpu: self.cpu.clone(),
            memory: self.memory.clone(),
            pods: self.max_pods,
            zones: self.zones,
            labels,
            taints,
            lease_interval: self.lease_interval,
            parallel: self.parallel,
            stats: self.stats,
        })
    }
}

pub(crate) async fn run(args: SimArgs) -> anyhow::Result<()> {
    match args.command {
        SimCommand::Nodes(args) => {
            let config = args.config()?;
            let text = std::fs::read_to_string(&args.kubeconfig)
                .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
            let client = crate::agent::client_from_kubeconfig(&text).await?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            let sim = tokio::spawn(agent::sim::run(client, config, rx));
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
                r = sim => { r??; return Ok(()); }
            }
            tx.send_replace(true);
            Ok(())
        }
    }
}
