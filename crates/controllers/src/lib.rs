//! krust's scheduler and controller manager. Both are clients of the API server through
//! the `kube` crate, exactly as upstream's kube-scheduler and kube-controller-manager are,
//! so they run inside `krust server` or on their own (`krust scheduler`,
//! `krust controller-manager`), several at once with leader election.
//!
//! A process shares one set of informers (`informer.rs`) between its components; each
//! controller turns changes into keys on its work queue (`queue.rs`) and syncs one key at a
//! time, reading the informers' caches and writing through the API.

// The shared client machinery, under the paths the controllers have always used.
pub use controller_runtime::{
    cached_pod, events, informer, leader, local_volume, quantity, queue, selectors,
};

pub mod certificates;
pub mod clusterroleaggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod ephemeral;
pub mod gc;
pub mod history;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod persistentvolume;
pub mod pod_control;
pub mod podautoscaler;
pub mod replicaset;
pub mod resourcequota;
pub mod rootcacert;
pub mod scheduler;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;
pub mod tokencleaner;
pub mod topology_hints;

use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, ReplicationController, ResourceQuota,
    Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::api::storage::v1::{CSIStorageCapacity, StorageClass};
use kube::Api;
use kube::runtime::watcher;

use cached_pod::CachedPod;
use informer::Informer;
use scheduler::{Scheduler, SchedulerConfig};

/// What a controller's sync can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error (retried with back-off).
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    /// An object the controller read cannot be acted on.
    #[error("{0}")]
    Invalid(String),
}

type Starter = Box<dyn FnOnce() + Send>;

/// The informers of one process, created on first use and started together.
pub struct Informers {
    client: kube::Client,
    pods: Arc<Informer<CachedPod>>,
    nodes: Arc<Informer<Node>>,
    namespaces: Arc<Informer<Namespace>>,
    replica_sets: Arc<Informer<ReplicaSet>>,
    replication_controllers: Arc<Informer<ReplicationController>>,
    resource_quotas: Arc<Informer<ResourceQuota>>,
    deployments: Arc<Informer<Deployment>>,
    stateful_sets: Arc<Informer<StatefulSet>>,
    daemon_sets: Arc<Informer<DaemonSet>>,
    controller_revisions: Arc<Informer<ControllerRevision>>,
    jobs: Arc<Informer<Job>>,
    cron_jobs: Arc<Informer<CronJob>>,
    pod_disruption_budgets: Arc<Informer<PodDisruptionBudget>>,
    horizontal_pod_autoscalers: Arc<Informer<HorizontalPodAutoscaler>>,
    service_accounts: Arc<Informer<ServiceAccount>>,
    services: Arc<Informer<Service>>,
    node_leases: Arc<Informer<Lease>>,
    cluster_roles: Arc<Informer<ClusterRole>>,
    certificate_signing_requests: Arc<Informer<CertificateSigningRequest>>,
    persistent_volumes: Arc<Informer<PersistentVolume>>,
    persistent_volume_claims: Arc<Informer<PersistentVolumeClaim>>,
    storage_classes: Arc<Informer<StorageClass>>,
    storage_capacities: Arc<Informer<CSIStorageCapacity>>,
    wanted: Mutex<Vec<(&'static str, Option<Starter>)>>,
    /// Set to stop every informer's watch (see [`Informers::stop`]).
    stopped: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Informers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informers").finish_non_exhaustive()
    }
}

macro_rules! informer_getter {
    ($name:ident, $ty:ty, $label:literal) => {
        informer_getter!(
            $name,
            $ty,
            $label,
            Api::all,
            "The shared informer of this type (started by [`Informers::start`])."
        );
    };
    ($name:ident, $ty:ty, $label:literal, $api:expr, $doc:literal) => {
        #[doc = $doc]
        pub fn $name(&self) -> Arc<Informer<$ty>> {
            let informer = self.$name.clone();
            let mut wanted = self.wanted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !wanted.iter().any(|(n, _)| *n == $label) {
                let api: Api<$ty> = $api(self.client.clone());
                let run = informer.clone();
                let mut stopped = self.stopped.subscribe();
                wanted.push((
                    $label,
                    Some(Box::new(move || {
                        tokio::spawn(async move {
                            tokio::select! {
                                () = run.run(api, watcher::Config::default()) => {}
                                _ = stopped.wait_for(|s| *s) => {}
                            }
                        });
                    })),
                ));
            }
            informer
        }
    };
}

impl Informers {
    /// Informers reading through `client`.
    pub fn new(client: kube::Client) -> Arc<Informers> {
        let pods = Informer::new();
        pods.set_transform(cached_pod::slim);
        Arc::new(Informers {
            client,
            pods,
            nodes: Informer::new(),
            namespaces: Informer::new(),
            replica_sets: Informer::new(),
            replication_controllers: Informer::new(),
            resource_quotas: Informer::new(),
            deployments: Informer::new(),
            stateful_sets: Informer::new(),
            daemon_sets: Informer::new(),
            controller_revisions: Informer::new(),
            jobs: Informer::new(),
            cron_jobs: Informer::new(),
            pod_disruption_budgets: Informer::new(),
            horizontal_pod_autoscalers: Informer::new(),
            service_accounts: Informer::new(),
            services: Informer::new(),
            node_leases: Informer::new(),
            cluster_roles: Informer::new(),
            certificate_signing_requests: Informer::new(),
            persistent_volumes: Informer::new(),
            persistent_volume_claims: Informer::new(),
            storage_classes: Informer::new(),
            storage_capacities: Informer::new(),
            wanted: Mutex::new(Vec::new()),
            stopped: tokio::sync::watch::channel(false).0,
        })
    }

    /// The client the informers read through.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    informer_getter!(pods, CachedPod, "pods");
    informer_getter!(nodes, Node, "nodes");
    informer_getter!(namespaces, Namespace, "namespaces");
    informer_getter!(replica_sets, ReplicaSet, "replicasets");
    informer_getter!(replication_controllers, ReplicationController, "replicationcontrollers");
    informer_getter!(resource_quotas, ResourceQuota, "resourcequotas");
    informer_getter!(deployments, Deployment, "deployments");
    informer_getter!(stateful_sets, StatefulSet, "statefulsets");
    informer_getter!(daemon_sets, DaemonSet, "daemonsets");
    informer_getter!(controller_revisions, ControllerRevision, "controllerrevisions");
    informer_getter!(jobs, Job, "jobs");
    informer_getter!(cron_jobs, CronJob, "cronjobs");
    informer_getter!(pod_disruption_budgets, PodDisruptionBudget, "poddisruptionbudgets");
    informer_getter!(
        horizontal_pod_autoscalers,
        HorizontalPodAutoscaler,
        "horizontalpodautoscalers"
    );
    informer_getter!(service_accounts, ServiceAccount, "serviceaccounts");
    informer_getter!(services, Service, "services");
    informer_getter!(cluster_roles, ClusterRole, "clusterroles");
    informer_getter!(
        certificate_signing_requests,
        CertificateSigningRequest,
        "certificatesigningrequests"
    );
    informer_getter!(persistent_volumes, PersistentVolume, "persistentvolumes");
    informer_getter!(persistent_volume_claims, PersistentVolumeClaim, "persistentvolumeclaims");
    informer_getter!(storage_classes, StorageClass, "storageclasses");
    informer_getter!(storage_capacities, CSIStorageCapacity, "csistoragecapacities");

    informer_getter!(
        node_leases,
        Lease,
        "node-leases",
        |client| Api::namespaced(client, "kube-node-lease"),
        "The Leases of `kube-node-lease` (node heartbeats)."
    );

    /// Starts the watches of every informer asked for so far.
    /// Stops every informer's watch (on shutdown; their caches stay as they were).
    pub fn stop(&self) {
        self.stopped.send_replace(true);
    }

    /// Starts the informers registered so far.
    pub fn start(&self) {
        let mut wanted = self.wanted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, start) in wanted.iter_mut() {
            if let Some(start) = start.take() {
                tracing::debug!(informer = *name, "starting");
                start();
            }
        }
    }
}

/// The scheduler, run while this process holds the `kube-scheduler` Lease. It registers
/// with the informers when called; start them ([`Informers::start`]) before awaiting it.
pub fn scheduler(
    informers: &Informers,
    client: kube::Client,
    config: SchedulerConfig,
) -> impl std::future::Future<Output = ()> + use<> {
    let pods = informers.pods();
    let nodes = informers.nodes();
    let namespaces = informers.namespaces();
    let volumes = scheduler::VolumeSources {
        claims: informers.persistent_volume_claims(),
        volumes: informers.persistent_volumes(),
        classes: informers.storage_classes(),
        capacities: informers.storage_capacities(),
    };
    let scheduler =
        Scheduler::new(client.clone(), pods.clone(), &nodes, &namespaces, volumes.clone(), config);
    async move {
        volumes.wait_synced().await;
        pods.wait_synced().await;
        nodes.wait_synced().await;
        namespaces.wait_synced().await;
        leader::run_as_leader(client, leader::LeaderConfig::new("kube-scheduler"), || {
            scheduler.clone().run()
        })
        .await;
    }
}

/// Settings of the controller manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Workers per controller for ReplicaSets and Deployments (upstream: 5).
    pub workers: usize,
    /// Node monitoring, taint eviction and pod GC.
    pub node_lifecycle: nodelifecycle::NodeLifecycleConfig,
    /// How long events are kept after they were last seen (upstream: 1 h).
    pub event_ttl: std::time::Duration,
    /// The cluster CA (PEM) published as `kube-root-ca.crt` in every namespace (none: not
    /// published).
    pub root_ca: Option<String>,
    /// The cluster CA, whose key signs approved CertificateSigningRequests (none: requests
    /// are approved but not signed).
    pub signing_ca: Option<Arc<pki::Pki>>,
    /// Each controller's own credentials (upstream's `--use-service-account-credentials`);
    /// none: every controller acts through the informers' client.
    pub credentials: Option<Credentials>,
    /// The HorizontalPodAutoscaler controller's settings.
    pub hpa: podautoscaler::HpaConfig,
}

/// Gives each controller a client acting as its own ServiceAccount in `kube-system`, named
/// as upstream's controllers' are (`replicaset-controller`, …), so each holds only its
/// controller role.
#[derive(Clone)]
pub struct Credentials(pub std::sync::Arc<dyn Fn(&str) -> kube::Client + Send + Sync>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials")
    }
}

impl Default for ManagerConfig {
    fn default() -> ManagerConfig {
        ManagerConfig {
            workers: 5,
            node_lifecycle: nodelifecycle::NodeLifecycleConfig::default(),
            event_ttl: std::time::Duration::from_secs(3600),
            root_ca: None,
            signing_ca: None,
            credentials: None,
            hpa: podautoscaler::HpaConfig::default(),
        }
    }
}

/// Runs the controllers while this process holds the `kube-controller-manager` Lease.
pub fn controller_manager(
    informers: &Informers,
    config: ManagerConfig,
) -> impl std::future::Future<Output = ()> + use<> {
    let client = informers.client();
    // The client of the controller whose ServiceAccount is `name`.
    let as_sa = |name: &str| match &config.credentials {
        Some(credentials) => (credentials.0)(name),
        None => client.clone(),
    };
    let pods = informers.pods();
    informer::index_by_controller(&pods);
    pods.add_index(informer::BY_NODE, |p| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .into_iter()
            .collect()
    });
    let node_lifecycle = nodelifecycle::NodeLifecycleController::new(
        as_sa("node-controller"),
        informers.nodes(),
        informers.node_leases(),
        pods.clone(),
        config.node_lifecycle.clone(),
    );
    let replica_sets = informers.replica_sets();
    informer::index_by_controller(&replica_sets);
    let replica_set = replicaset::ReplicaSetController::new(
        as_sa("replicaset-controller"),
        pods.clone(),
        replica_sets.clone(),
    );
    let replication_controllers = informers.replication_controllers();
    informer::index_by_controller(&replication_controllers);
    let replication_controller = replicaset::ReplicationControllerController::new(
        as_sa("replication-controller"),
        pods.clone(),
        replication_controllers.clone(),
    );
    let resource_quota = resourcequota::ResourceQuotaController::new(
        as_sa("resourcequota-controller"),
        informers.resource_quotas(),
        &pods,
    );
    let deployment = deployment::DeploymentController::new(
        as_sa("deployment-controller"),
        informers.deployments(),
        replica_sets.clone(),
        pods.clone(),
    );
    let controller_revisions = informers.controller_revisions();
    informer::index_by_controller(&controller_revisions);
    let stateful_set = statefulset::StatefulSetController::new(
        as_sa("statefulset-controller"),
        pods.clone(),
        informers.stateful_sets(),
        controller_revisions.clone(),
    );
    let daemon_set = daemonset::DaemonSetController::new(
        as_sa("daemon-set-controller"),
        pods.clone(),
        informers.nodes(),
        informers.daemon_sets(),
        controller_revisions.clone(),
    );
    let jobs = informers.jobs();
    informer::index_by_controller(&jobs);
    let job = job::JobController::new(as_sa("job-controller"), pods.clone(), jobs.clone());
    let ttl_after_finished =
        job::TtlAfterFinishedController::new(as_sa("ttl-after-finished-controller"), jobs.clone());
    let cron_job = cronjob::CronJobController::new(
        as_sa("cronjob-controller"),
        informers.cron_jobs(),
        jobs.clone(),
    );
    let disruption = disruption::DisruptionController::new(
        as_sa("disruption-controller"),
        disruption::Sources {
            budgets: informers.pod_disruption_budgets(),
            pods: pods.clone(),
            replica_sets: replica_sets.clone(),
            deployments: informers.deployments(),
            stateful_sets: informers.stateful_sets(),
            replication_controllers: replication_controllers.clone(),
        },
    );
    let horizontal = podautoscaler::HorizontalController::new(
        as_sa("horizontal-pod-autoscaler"),
        informers.horizontal_pod_autoscalers(),
        pods.clone(),
        config.hpa,
    );
    let service_account = serviceaccount::ServiceAccountController::new(
        as_sa("service-account-controller"),
        informers.namespaces(),
        informers.service_accounts(),
    );
    let endpoints = endpoints::EndpointsController::new(
        as_sa("endpoint-controller"),
        informers.services(),
        pods.clone(),
    );
    let endpoint_slices = endpointslice::EndpointSliceController::new(
        as_sa("endpointslice-controller"),
        informers.services(),
        pods.clone(),
        informers.nodes(),
    );
    let service_lb = servicelb::ServiceLbController::new(
        as_sa("service-controller"),
        informers.services(),
        informers.nodes(),
    );
    let root_ca = config.root_ca.clone().map(|ca| {
        rootcacert::RootCaCertPublisher::new(
            as_sa("root-ca-cert-publisher"),
            client.clone(),
            informers.namespaces(),
            ca,
        )
    });
    let persistent_volume = persistentvolume::PersistentVolumeController::new(
        as_sa("persistent-volume-binder"),
        persistentvolume::Sources {
            volumes: informers.persistent_volumes(),
            claims: informers.persistent_volume_claims(),
            classes: informers.storage_classes(),
            nodes: informers.nodes(),
            pods: pods.clone(),
        },
    );
    let ephemeral_volume = ephemeral::EphemeralVolumeController::new(
        as_sa("ephemeral-volume-controller"),
        pods.clone(),
        informers.persistent_volume_claims(),
    );
    let garbage_collector = gc::GarbageCollector::new(as_sa("generic-garbage-collector"));
    garbage_collector.share(pods.clone());
    garbage_collector.share(replica_sets.clone());
    garbage_collector.share(replication_controllers);
    garbage_collector.share(informers.deployments());
    garbage_collector.share(informers.stateful_sets());
    garbage_collector.share(informers.daemon_sets());
    garbage_collector.share(jobs.clone());
    garbage_collector.share(informers.cron_jobs());
    garbage_collector.share(controller_revisions.clone());
    // Upstream's events expire with their etcd lease; here a controller deletes them, with
    // the collector's rights (it may delete anything).
    let client_for_events = as_sa("generic-garbage-collector");
    let client_for_tokens = as_sa("token-cleaner");
    let aggregation = clusterroleaggregation::ClusterRoleAggregationController::new(
        as_sa("clusterrole-aggregation-controller"),
        informers.cluster_roles(),
    );
    let namespace =
        namespace::NamespaceController::new(as_sa("namespace-controller"), informers.namespaces());
    let certificates = certificates::CertificateController::new(
        as_sa("certificate-controller"),
        informers.certificate_signing_requests(),
        informers.nodes(),
        config.signing_ca.clone(),
    );
    async move {
        leader::run_as_leader(client, leader::LeaderConfig::new("kube-controller-manager"), || {
            let garbage_collector = garbage_collector.clone();
            let namespace = namespace.clone();
            let node_lifecycle = node_lifecycle.clone();
            let events = events::expire(client_for_events.clone(), config.event_ttl);
            let token_cleaner = tokencleaner::run(client_for_tokens.clone());
            let replica_set = replica_set.clone();
            let replication_controller = replication_controller.clone();
            let resource_quota = resource_quota.clone();
            let deployment = deployment.clone();
            let stateful_set = stateful_set.clone();
            let daemon_set = daemon_set.clone();
            let job = job.clone();
            let cron_job = cron_job.clone();
            let disruption = disruption.clone();
            let horizontal = horizontal.clone();
            let ttl_after_finished = ttl_after_finished.clone();
            let service_account = service_account.clone();
            let endpoints = endpoints.clone();
            let endpoint_slices = endpoint_slices.clone();
            let service_lb = service_lb.clone();
            let root_ca = root_ca.clone();
            let aggregation = aggregation.clone();
            let certificates = certificates.clone();
            let persistent_volume = persistent_volume.clone();
            let ephemeral_volume = ephemeral_volume.clone();
            async move {
                let root_ca = async move {
                    if let Some(publisher) = root_ca {
                        publisher.run().await;
                    }
                };
                tokio::join!(
                    replica_set.run(config.workers),
                    replication_controller.run(config.workers),
                    resource_quota.run(),
                    deployment.run(config.workers),
                    stateful_set.run(config.workers),
                    daemon_set.run(config.workers),
                    // A Job sync waits on several writes in a row (its tracking protocol):
                    // more of them in flight keep many small Jobs moving.
                    job.run(config.workers * 4),
                    cron_job.run(config.workers),
                    disruption.run(config.workers),
                    horizontal.run(config.workers),
                    ttl_after_finished.run(),
                    service_account.run(),
                    endpoints.run(config.workers),
                    endpoint_slices.run(config.workers),
                    service_lb.run(config.workers),
                    garbage_collector.run(config.workers * 4),
                    namespace.run(config.workers),
                    node_lifecycle.run(),
                    root_ca,
                    events,
                    aggregation.run(),
                    certificates.run(),
                    persistent_volume.run(config.workers),
                    ephemeral_volume.run(config.workers),
                    token_cleaner,
                );
            }
        })
        .await;
    }
}
