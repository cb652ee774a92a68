//! The service proxy (kube-proxy's part): every node programs its kernel so that a Service's
//! addresses and node ports reach the Service's endpoints. It watches Services and
//! EndpointSlices through the API like any client, computes what the rules should be
//! (`plan`), renders them as one nftables table (`nftables`) and loads it when it changed.
//! Bursts of changes are coalesced into one sync; an unchanged result is not loaded again.

pub mod iptables;
pub mod networkpolicy;
pub mod nftables;
pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use controller_runtime::cached_pod::CachedPod;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::Notify;

use crate::{AgentConfig, ProxyMode};

/// How long a sync waits for more changes to come with the first (a rollout changes many
/// slices at once).
const COALESCE: Duration = Duration::from_millis(5);

/// The node label naming its zone.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The agent's table: one per agent, so agents sharing a network namespace (tests) do not
/// replace each other's rules.
pub fn table_name(config: &AgentConfig) -> String {
    let id = crate::image::sha256_hex(config.data_dir.display().to_string().as_bytes());
    format!("krust_{}", &id[..8])
}

/// Keeps `store` filled from a watch of every `K`, waking `changed` on each event.
fn watch_into<K>(
    client: kube::Client,
    writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
) -> impl std::future::Future<Output = ()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let api: kube::Api<K> = kube::Api::all(client);
    reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(move |event| {
            if let Err(e) = event {
                tracing::warn!(error = %e, "service proxy watch failed; retrying");
            }
            changed.notify_one();
            futures::future::ready(())
        })
}

/// Keeps `zone` at this node's zone label, waking `changed` only when it changes (not on
/// every status update of the node).
async fn follow_zone(
    client: kube::Client,
    node_name: String,
    zone: Arc<std::sync::Mutex<Option<String>>>,
    changed: Arc<Notify>,
) {
    let api: kube::Api<Node> = kube::Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    watcher(api, config)
        .default_backoff()
        .for_each(move |event| {
            let seen = match event {
                Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                    Some(node.labels().get(ZONE_LABEL).cloned())
                }
                Ok(watcher::Event::Delete(_)) => Some(None),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "service proxy watch of its node failed; retrying");
                    None
                }
            };
            if let Some(seen) = seen {
                let mut current = zone.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if *current != seen {
                    *current = seen;
                    changed.notify_one();
                }
            }
            futures::future::ready(())
        })
        .await;
}

/// Runs the proxy until `shutdown` fires, then leaves the rules in place (pods keep being
/// reachable while the agent restarts, as with kube-proxy).
pub async fn run(
    client: kube::Client,
    config: Arc<AgentConfig>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let table = table_name(&config);
    let mode = match config.proxy_mode {
        ProxyMode::Auto if !nftables::available().await => {
            tracing::warn!(
                "nftables is not available; the service proxy falls back on iptables (NetworkPolicy is not enforced)"
            );
            ProxyMode::Iptables
        }
        ProxyMode::Auto => ProxyMode::Nftables,
        other => other,
    };
    let chains = iptables::Chains::for_table(&table);
    let changed = Arc::new(Notify::new());
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    // NetworkPolicy needs every pod's address and labels, and the namespaces' labels.
    let (policies, policies_writer) = reflector::store::<NetworkPolicy>();
    let (pods, pods_writer) = reflector::store::<CachedPod>();
    let (namespaces, namespaces_writer) = reflector::store::<Namespace>();
    // This node's zone, for topology hints.
    let zone = Arc::new(std::sync::Mutex::new(None));
    let watches = futures::future::join4(
        watch_into(client.clone(), services_writer, changed.clone()),
        watch_into(client.clone(), slices_writer, changed.clone()),
        watch_into(client.clone(), policies_writer, changed.clone()),
        follow_zone(client.clone(), config.node_name.clone(), zone.clone(), changed.clone()),
    );
    // Every pod and namespace is watched only once some NetworkPolicy exists: without one
    // (most clusters) a node keeps no copy of the cluster's pods.
    let mut pod_watches: Option<tokio::task::JoinHandle<()>> = None;
    let mut writers = Some((pods_writer, namespaces_writer));
    let sync = async {
        let _ = services.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
        let _ = policies.wait_until_ready().await;
        // What the kernel holds: none until the first full load.
        let mut programmed: Option<(Vec<plan::ServicePort>, Vec<networkpolicy::PodFilter>)> = None;
        // The iptables chains of the last sync (to delete those that go).
        let mut iptables_chains = std::collections::BTreeSet::new();
        let mut warned_policies = false;
        loop {
            tokio::time::sleep(COALESCE).await;
            let zone = zone.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let ports = plan::service_ports(
                &services.state(),
                &slices.state(),
                &config.node_name,
                zone.as_deref(),
            );
            let policy_list = policies.state();
            if mode == ProxyMode::Iptables {
                if !policy_list.is_empty() && !warned_policies {
                    warned_policies = true;
                    tracing::warn!(
                        "NetworkPolicy objects exist but the iptables service proxy does not enforce them"
                    );
                }
                if programmed.as_ref().is_some_and(|(p, _)| *p == ports) {
                    changed.notified().await;
                    continue;
                }
                let (input, declared) =
                    iptables::render(&chains, &config.cluster_cidr, &ports, &iptables_chains);
                match iptables::apply(&chains, &input).await {
                    Ok(()) => {
                        iptables_chains = declared;
                        let before = programmed.take().map(|(p, _)| p).unwrap_or_default();
                        let (entries, addresses) = nftables::stale_udp(&before, &ports);
                        nftables::flush_udp(&entries, &addresses).await;
                        programmed = Some((ports, Vec::new()));
                        changed.notified().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "loading the service rules (iptables) failed; retrying");
                        programmed = None;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            }
            if !policy_list.is_empty()
                && let Some((pods_writer, namespaces_writer)) = writers.take()
            {
                let both = futures::future::join(
                    watch_into(client.clone(), pods_writer, changed.clone()),
                    watch_into(client.clone(), namespaces_writer, changed.clone()),
                );
                pod_watches = Some(tokio::spawn(async move {
                    both.await;
                }));
                let _ = pods.wait_until_ready().await;
                let _ = namespaces.wait_until_ready().await;
            }
            let filters = if policy_list.is_empty() {
                Vec::new()
            } else {
                networkpolicy::pod_filters(
                    &policy_list,
                    &pods.state(),
                    &namespaces.state(),
                    &config.node_name,
                )
            };
            if programmed.as_ref().is_some_and(|(p, f)| *p == ports && *f == filters) {
                changed.notified().await;
                continue;
            }
            let started = std::time::Instant::now();
            // Only what changed, when only Services and endpoints did; otherwise (first
            // sync, policies, affinity sets, or an incremental load the kernel refused) the
            // whole table in one transaction.
            let step = programmed
                .as_ref()
                .filter(|(_, f)| *f == filters)
                .and_then(|(p, _)| nftables::incremental(&table, &config.cluster_cidr, p, &ports));
            let mut result = match &step {
                Some(script) => nftables::apply(script).await,
                None => Err(String::new()),
            };
            let full = result.is_err();
            if full {
                if let (Some(_), Err(e)) = (&step, &result) {
                    tracing::warn!(table, error = %e, "an incremental service sync failed; loading the whole table");
                }
                let script = nftables::render(&table, &config.cluster_cidr, &ports, &filters);
                result = nftables::apply(&script).await;
            }
            match result {
                Ok(()) => {
                    tracing::debug!(
                        table,
                        full,
                        service_ports = ports.len(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "service rules loaded"
                    );
                    let before = programmed.take().map(|(p, _)| p).unwrap_or_default();
                    let (entries, addresses) = nftables::stale_udp(&before, &ports);
                    nftables::flush_udp(&entries, &addresses).await;
                    programmed = Some((ports, filters));
                }
                Err(e) => {
                    tracing::warn!(table, error = %e, "loading the service rules failed; retrying");
                    programmed = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            changed.notified().await;
        }
    };
    tokio::select! {
        _ = watches => {}
        () = sync => {}
        () = crate::stopped(&mut shutdown) => {}
    }
    if let Some(task) = pod_watches {
        task.abort();
    }
}
