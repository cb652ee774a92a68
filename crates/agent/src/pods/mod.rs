//! The pods of this node: a watch of the pods bound to it (`spec.nodeName`), one worker per
//! pod UID, a once-a-second relist of container states that wakes the workers whose
//! containers changed (upstream's PLEG), and housekeeping of sandboxes whose pods are gone.

mod admission;
pub mod cgroups;
pub mod claims;
pub mod config;
pub mod env;
pub mod events;
pub mod images;
mod objects;
pub mod ownership;
mod plan;
pub(crate) use objects::ObjectCache;
pub mod probe;
pub mod runtime;
pub mod status;
#[cfg(test)]
mod testing;
pub mod volumes;
mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::{Notify, mpsc, watch};

use crate::AgentConfig;
use crate::cri::SharedRuntime;
use crate::pods::events::Recorder;
use config::PodKey;
use worker::{Next, Worker};

/// Pods this agent runs, by (namespace, name) → UID, kept by the pod manager and read by the
/// streaming endpoint to find a pod's containers.
pub type Directory = Arc<std::sync::RwLock<HashMap<(String, String), String>>>;

/// What every pod worker shares.
pub(crate) struct Context {
    pub(crate) client: kube::Client,
    pub(crate) cri: SharedRuntime,
    pub(crate) config: Arc<AgentConfig>,
    pub(crate) recorder: Recorder,
    pub(crate) pods_dir: PathBuf,
    pub(crate) logs_dir: PathBuf,
    pub(crate) dns: config::DnsSettings,
    pub(crate) node_memory: u64,
    pub(crate) node_cpu: f64,
    pub(crate) directory: Directory,
    /// The ConfigMaps and Secrets this node's pods refer to, watched.
    pub(crate) objects: Arc<objects::ObjectCache>,
    /// Wall time (back-offs, start times).
    pub(crate) clock: crate::clock::Clock,
    /// Whether pods get their own cgroups (off in unit tests, whose fake runtime runs
    /// nothing to put in them).
    pub(crate) pod_cgroups: bool,
    /// The host ports of the pods admitted on this node, by pod UID (the kubelet's
    /// `NodePorts` admission: a pod whose host port is taken is failed, not started).
    pub(crate) host_ports: admission::HostPorts,
    /// Which pods use which local volumes (unmounted when the last one goes).
    pub(crate) volume_users: Arc<crate::local_volume::Users>,
}

struct Handle {
    pod: watch::Sender<Option<Arc<Pod>>>,
    wake: Arc<Notify>,
}

/// Runs the pods of this node until `shutdown`. Shutting down leaves every container
/// running: a restarted agent adopts them.
pub(crate) async fn run(ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("spec.nodeName={}", ctx.config.node_name);
    let mut pods = watcher(api, watcher::Config::default().fields(&selector)).boxed();
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut relist = tokio::time::interval(Duration::from_secs(1));
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut states: HashMap<String, (String, i32)> = HashMap::new();
    let mut listing: HashSet<String> = HashSet::new();
    let mut synced = false;
    loop {
        tokio::select! {
            event = pods.next() => {
                let Some(event) = event else { break };
                match event {
                    Ok(watcher::Event::Apply(pod)) => dispatch(&ctx, &mut workers, &done_tx, pod),
                    Ok(watcher::Event::InitApply(pod)) => {
                        listing.insert(pod.metadata.uid.clone().unwrap_or_default());
                        dispatch(&ctx, &mut workers, &done_tx, pod);
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        let uid = pod.metadata.uid.clone().unwrap_or_default();
                        if let Some(h) = workers.get(&uid) {
                            h.pod.send_replace(None);
                        }
                    }
                    Ok(watcher::Event::Init) => listing.clear(),
                    Ok(watcher::Event::InitDone) => {
                        for (uid, h) in &workers {
                            if !listing.contains(uid) {
                                h.pod.send_replace(None);
                            }
                        }
                        if !synced {
                            synced = true;
                            housekeeping(&ctx, &mut workers, &done_tx, &listing).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pod watch failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            _ = relist.tick() => {
                match runtime::container_states(ctx.cri.as_ref(), &ctx.config.node_name).await {
                    Ok(now) => {
                        let mut changed: HashSet<&str> = HashSet::new();
                        for (id, (uid, state)) in &now {
                            if states.get(id).is_none_or(|(_, old)| old != state) {
                                changed.insert(uid);
                            }
                        }
                        for (id, (uid, _)) in &states {
                            if !now.contains_key(id) {
                                changed.insert(uid);
                            }
                        }
                        for uid in changed {
                            if let Some(h) = workers.get(uid) {
                                h.wake.notify_one();
                            }
                        }
                        states = now;
                    }
                    Err(e) => tracing::debug!(error = %e, "relisting containers failed"),
                }
            }
            Some(uid) = done_rx.recv() => {
                // A late event for the same pod starts a fresh worker, which finds nothing
                // left to do.
                workers.remove(&uid);
                ctx.objects.untrack(&uid);
                if let Ok(mut d) = ctx.directory.write() {
                    d.retain(|_, u| *u != uid);
                }
            }
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
}

fn dispatch(
    ctx: &Arc<Context>,
    workers: &mut HashMap<String, Handle>,
    done: &mpsc::UnboundedSender<String>,
    pod: Pod,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if uid.is_empty() {
        return;
    }
    let key = PodKey::of(&pod);
    if let Ok(mut d) = ctx.directory.write() {
        d.insert((key.namespace.clone(), key.name.clone()), uid.clone());
    }
    if let Some(h) = workers.get(&uid) {
        h.pod.send_replace(Some(Arc::new(pod)));
        return;
    }
    let pod = Arc::new(pod);
    spawn_worker(ctx, workers, done, key, Some(pod.clone()));
    if let Some(h) = workers.get(&uid) {
        // What a pod refers to cannot change (its spec's references are immutable).
        ctx.objects.track(&uid, &pod, &h.wake);
    }
}

fn spawn_worker(
    ctx: &Arc<Context>,
    workers: &mut HashMap<String, Handle>,
    done: &mpsc::UnboundedSender<String>,
    key: PodKey,
    pod: Option<Arc<Pod>>,
) {
    let (tx, rx) = watch::channel(pod);
    let wake = Arc::new(Notify::new());
    workers.insert(key.uid.clone(), Handle { pod: tx, wake: wake.clone() });
    let worker = Worker::new(ctx.clone(), key.clone(), wake.clone());
    // Everything a worker logs names its pod.
    let span = tracing::info_span!("pod", pod = %key.display());
    tokio::spawn(tracing::Instrument::instrument(
        run_worker(worker, rx, wake, done.clone(), key),
        span,
    ));
}

async fn run_worker(
    mut worker: Worker,
    mut pod: watch::Receiver<Option<Arc<Pod>>>,
    wake: Arc<Notify>,
    done: mpsc::UnboundedSender<String>,
    key: PodKey,
) {
    loop {
        let current = pod.borrow_and_update().clone();
        let wait = match worker.sync(current.as_deref()).await {
            Ok(Next::Done) => break,
            Ok(Next::After(d)) => d,
            Err(e) => {
                tracing::warn!(pod = %key.display(), error = %e, "pod sync failed; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            changed = pod.changed() => if changed.is_err() { return },
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let _ = done.send(key.uid);
}

/// Sandboxes whose pods are not in the API (deleted while the agent was down) are stopped
/// and removed.
async fn housekeeping(
    ctx: &Arc<Context>,
    workers: &mut HashMap<String, Handle>,
    done: &mpsc::UnboundedSender<String>,
    listed: &HashSet<String>,
) {
    let uids = match runtime::sandbox_uids(ctx.cri.as_ref(), &ctx.config.node_name).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "listing sandboxes for housekeeping failed");
            return;
        }
    };
    for uid in uids {
        if !listed.contains(&uid) && !workers.contains_key(&uid) {
            tracing::info!(uid, "removing the sandbox of a pod that no longer exists");
            let key = PodKey { uid, namespace: String::new(), name: String::new() };
            spawn_worker(ctx, workers, done, key, None);
        }
    }
}
