//! The scheduler and the controller manager: inside `krust server` by default, or on their
//! own with `krust scheduler` / `krust controller-manager` and a kubeconfig.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use controllers::nodelifecycle::NodeLifecycleConfig;
use controllers::scheduler::SchedulerConfig;
use controllers::scheduler::framework::ResourceStrategy;
use controllers::{Informers, ManagerConfig};

/// How the scheduler scores resource use.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Scoring {
    /// Prefer the emptiest node: spread pods (upstream's default).
    LeastAllocated,
    /// Prefer the fullest node that fits: bin-pack pods.
    MostAllocated,
}

/// Flags of the scheduler, in `krust server` and `krust scheduler`.
#[derive(Debug, Args, Clone)]
pub(crate) struct SchedulerArgs {
    /// Resource scoring: spread (least-allocated) or bin-pack (most-allocated).
    #[arg(long, value_enum, default_value = "least-allocated")]
    scheduler_scoring: Scoring,
    /// Share of nodes (percent) to find feasible before scoring; 0 = upstream's adaptive rule.
    #[arg(long, default_value_t = 0)]
    percentage_of_nodes_to_score: u32,
}

impl SchedulerArgs {
    pub(crate) fn config(&self) -> SchedulerConfig {
        SchedulerConfig {
            strategy: match self.scheduler_scoring {
                Scoring::LeastAllocated => ResourceStrategy::LeastAllocated,
                Scoring::MostAllocated => ResourceStrategy::MostAllocated,
            },
            percentage_of_nodes_to_score: self.percentage_of_nodes_to_score,
            ..SchedulerConfig::default()
        }
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Flags of the controller manager, in `krust server` and `krust controller-manager`.
#[derive(Debug, Args, Clone)]
pub(crate) struct ManagerArgs {
    /// Workers per ReplicaSet and Deployment controller.
    #[arg(long, default_value_t = 5)]
    concurrent_syncs: usize,
    /// How long a node may miss heartbeats before it is NotReady (Unknown) and tainted.
    #[arg(long, default_value = "50s", value_parser = crate::flags::parse_duration)]
    node_monitor_grace_period: Duration,
    /// How often nodes and their taints are checked.
    #[arg(long, default_value = "5s", value_parser = crate::flags::parse_duration)]
    node_monitor_period: Duration,
    /// Terminated pods kept before the oldest are deleted.
    #[arg(long, default_value_t = 12_500)]
    terminated_pod_gc_threshold: usize,
    /// How long events are kept after they were last seen.
    #[arg(long, default_value = "1h", value_parser = crate::flags::parse_duration)]
    event_ttl: Duration,
    /// How often each HorizontalPodAutoscaler is reconciled.
    #[arg(long, default_value = "15s", value_parser = crate::flags::parse_duration)]
    horizontal_pod_autoscaler_sync_period: Duration,
    /// How long a scale-down waits for higher recommendations when the HPA's behavior
    /// names no window.
    #[arg(long, default_value = "5m", value_parser = crate::flags::parse_duration)]
    horizontal_pod_autoscaler_downscale_stabilization: Duration,
    /// The smallest change of the metrics' ratio to their target that the HPA acts on.
    #[arg(long, default_value_t = 0.1)]
    horizontal_pod_autoscaler_tolerance: f64,
    /// How long after a pod's start its CPU samples may be distorted by its start-up.
    #[arg(long, default_value = "5m", value_parser = crate::flags::parse_duration)]
    horizontal_pod_autoscaler_cpu_initialization_period: Duration,
    /// How long after a pod's start its readiness may still be the initial one.
    #[arg(long, default_value = "30s", value_parser = crate::flags::parse_duration)]
    horizontal_pod_autoscaler_initial_readiness_delay: Duration,
}

impl ManagerArgs {
    pub(crate) fn config(&self) -> ManagerConfig {
        ManagerConfig {
            workers: self.concurrent_syncs.max(1),
            node_lifecycle: NodeLifecycleConfig {
                node_monitor_grace_period: self.node_monitor_grace_period,
                node_monitor_period: self.node_monitor_period,
                terminated_pod_gc_threshold: self.terminated_pod_gc_threshold,
            },
            event_ttl: self.event_ttl,
            root_ca: None,
            signing_ca: None,
            credentials: None,
            hpa: controllers::podautoscaler::HpaConfig {
                sync_period: self.horizontal_pod_autoscaler_sync_period.max(Duration::from_secs(1)),
                downscale_stabilization: self.horizontal_pod_autoscaler_downscale_stabilization,
                tuning: controllers::podautoscaler::replica_calculator::Tuning {
                    tolerance: self.horizontal_pod_autoscaler_tolerance.clamp(0.0, 1.0),
                    cpu_initialization_period: secs(
                        self.horizontal_pod_autoscaler_cpu_initialization_period,
                    ),
                    initial_readiness_delay: secs(
                        self.horizontal_pod_autoscaler_initial_readiness_delay,
                    ),
                },
            },
        }
    }
}

/// `krust scheduler`.
#[derive(Debug, Args)]
pub(crate) struct StandaloneScheduler {
    /// Kubeconfig to reach the API server with.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

/// `krust controller-manager`.
#[derive(Debug, Args)]
pub(crate) struct StandaloneManager {
    /// Kubeconfig to reach the API server with.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    #[command(flatten)]
    manager: ManagerArgs,
}

pub(crate) async fn client_from(path: &PathBuf) -> anyhow::Result<kube::Client> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    crate::agent::client_from_kubeconfig(&text).await
}

async fn until_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

pub(crate) async fn run_scheduler(args: StandaloneScheduler) -> anyhow::Result<()> {
    let client = client_from(&args.kubeconfig).await?;
    let informers = Informers::new(client.clone());
    let scheduler = controllers::scheduler(&informers, client, args.scheduler.config());
    informers.start();
    tracing::info!("scheduler running (leader-elected through the kube-scheduler Lease)");
    tokio::select! {
        () = scheduler => Ok(()),
        r = until_signal() => r,
    }
}

pub(crate) async fn run_manager(args: StandaloneManager) -> anyhow::Result<()> {
    let informers = Informers::new(client_from(&args.kubeconfig).await?);
    let mut config = args.manager.config();
    // The CA it trusts the API server with is the one pods get as kube-root-ca.crt.
    let kubeconfig = std::fs::read_to_string(&args.kubeconfig)?;
    config.root_ca = kube::config::Kubeconfig::from_yaml(&kubeconfig)?
        .clusters
        .into_iter()
        .find_map(|c| c.cluster?.certificate_authority_data)
        .and_then(|data| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(data).ok()
        })
        .and_then(|pem| String::from_utf8(pem).ok());
    let manager = controllers::controller_manager(&informers, config);
    informers.start();
    tracing::info!(
        "controller manager running (leader-elected through the kube-controller-manager Lease)"
    );
    tokio::select! {
        () = manager => Ok(()),
        r = until_signal() => r,
    }
}

/// The in-process control plane's identities: who reads for the shared informers (upstream's
/// controller manager, which may list and watch everything), who schedules, and each
/// controller's own ServiceAccount.
pub(crate) struct Identities {
    pub(crate) informers: kube::Client,
    pub(crate) scheduler: kube::Client,
    pub(crate) controllers: controllers::Credentials,
}

/// Starts the in-process scheduler and controller manager (sharing one set of informers);
/// they stop, informers included, when `shutdown` turns true. The returned task ends then.
pub(crate) fn spawn_in_server(
    identities: Identities,
    scheduler: Option<SchedulerConfig>,
    manager: Option<ManagerConfig>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let informers = Informers::new(identities.informers);
    let mut tasks = Vec::new();
    if let Some(config) = scheduler {
        tasks.push(tokio::spawn(crate::until(
            shutdown.clone(),
            controllers::scheduler(&informers, identities.scheduler, config),
        )));
    }
    if let Some(mut config) = manager {
        config.credentials = Some(identities.controllers);
        tasks.push(tokio::spawn(crate::until(
            shutdown.clone(),
            controllers::controller_manager(&informers, config),
        )));
    }
    informers.start();
    tokio::spawn(async move {
        for task in tasks {
            let _ = task.await;
        }
        informers.stop();
        tracing::info!("scheduler and controller manager stopped");
    })
}
