//! What every pod-owning controller does to its pods alike (upstream's
//! `ControllerRefManager` and `PodControl`): claim them — keep the owned pods its selector
//! still selects, release the others, adopt matching orphans — and delete victims with their
//! UID as a precondition, events recorded and expectations kept.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Resource, ResourceExt};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::events::{EventType, Recorder, object_ref};
use crate::informer::{BY_CONTROLLER, Informer, ORPHANS_BY_NAMESPACE};
use crate::queue::Queue;

/// How long a pod-owning controller (ReplicaSet, DaemonSet) gathers its pods' changes before
/// a sync: a sync reads every pod of the owner (and, for a DaemonSet, every node), so under
/// churn one sync per window replaces one per change.
pub(crate) const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// How many of a sync's pod deletions are in flight at once.
const DELETIONS_IN_FLIGHT: usize = 64;

/// How long a pod's change waits before its owner's sync while the owner's creations or
/// deletions are still outstanding: the sync the last of them triggers (at once) recomputes
/// everything anyway, so the syncs in between could only refresh the status, and each one
/// delayed that next sync by its own length (a DaemonSet's sync walks every node: at 5,000
/// nodes, two dozen of them were a tenth of the DaemonSet's creation).
const OUTSTANDING_WINDOW: Duration = Duration::from_millis(500);

/// Queues the owner `key` after a change of one of its pods that it counts. `observed`: the
/// change is a creation or deletion of the owner's being seen, which the expectations just
/// took in. The last outstanding one seen syncs at once (the next batch may go); other
/// changes wait the batch window, or the longer one while some are still outstanding.
pub(crate) fn enqueue_owner(
    queue: &Arc<Queue>,
    expectations: &Expectations,
    key: String,
    observed: bool,
) {
    match (expectations.satisfied(&key), observed) {
        (true, true) => queue.add(key),
        (true, false) => queue.add_batched(key, BATCH_WINDOW),
        (false, _) => queue.add_batched(key, OUTSTANDING_WINDOW),
    }
}

/// Whether a pod's change may change what a pod-owning controller counts or decides: its
/// labels, owners, deletion, phase, readiness and the container facts that rank pods for
/// deletion. Binding (`nodeName`, `PodScheduled`) is not among them.
pub(crate) fn counted_differently(old: &CachedPod, new: &CachedPod) -> bool {
    // Runs on every pod update, so it compares in place rather than building views.
    fn status(p: &CachedPod) -> Option<&crate::cached_pod::CachedPodStatus> {
        p.status.as_ref()
    }
    fn ready(p: &CachedPod) -> Option<(&str, Option<&Time>)> {
        status(p)
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| (c.status.as_str(), c.last_transition_time.as_ref()))
    }
    let containers_differ = match (
        status(old).and_then(|s| s.container_statuses.as_deref()),
        status(new).and_then(|s| s.container_statuses.as_deref()),
    ) {
        (Some(a), Some(b)) => {
            a.len() != b.len()
                || a.iter()
                    .zip(b)
                    .any(|(a, b)| (a.ready, a.restart_count) != (b.ready, b.restart_count))
        }
        (a, b) => a.is_some() != b.is_some(),
    };
    old.metadata.labels != new.metadata.labels
        || old.metadata.owner_references != new.metadata.owner_references
        || old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
        || status(old).and_then(|s| s.phase.as_deref())
            != status(new).and_then(|s| s.phase.as_deref())
        || ready(old) != ready(new)
        || containers_differ
}

/// Expectations not met within this long are given up (a lost watch event).
const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Expectation {
    adds: i64,
    deletes: HashSet<String>,
    since: Instant,
}

/// Pending creations and deletions per owner key.
#[derive(Debug, Default)]
pub(crate) struct Expectations {
    map: Mutex<HashMap<String, Expectation>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expectation>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(e) => {
                (e.adds <= 0 && e.deletes.is_empty()) || e.since.elapsed() > EXPECTATIONS_TTL
            }
        }
    }

    pub(crate) fn expect(&self, key: &str, adds: i64, deletes: HashSet<String>) {
        self.lock().insert(key.to_owned(), Expectation { adds, deletes, since: Instant::now() });
    }

    pub(crate) fn created(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.adds -= 1;
        }
    }

    pub(crate) fn deleted(&self, key: &str, pod: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.deletes.remove(pod);
        }
    }

    pub(crate) fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// A controller reference to `owner`.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A merge patch whose conflict or missing object means the cache was behind: the next
/// sync sees the truth.
async fn patch_ignoring_races(
    api: &Api<Pod>,
    name: &str,
    patch: &serde_json::Value,
) -> Result<Option<Pod>, Error> {
    match api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(pod) => Ok(Some(pod)),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The pods `owner` controls: its owned pods that `selects` keeps, after releasing the
/// others (unless the owner is being deleted) and, when `adopt`, adopting the orphans of
/// its namespace that `selects` picks.
pub(crate) async fn claim_pods<K>(
    client: &kube::Client,
    pods: &Informer<CachedPod>,
    owner: &K,
    selects: impl Fn(&CachedPod) -> bool,
    adopt: bool,
) -> Result<Vec<Arc<CachedPod>>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let namespace = owner.meta().namespace.clone().unwrap_or_default();
    let deleting = owner.meta().deletion_timestamp.is_some();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut claimed = Vec::new();
    for pod in pods.by_index(BY_CONTROLLER, &uid) {
        if selects(&pod) {
            claimed.push(pod);
        } else if !deleting {
            // Release: drop our controller reference.
            let remaining: Vec<OwnerReference> =
                pod.owner_references().iter().filter(|r| r.uid != uid).cloned().collect();
            let patch = serde_json::json!({"metadata": {"ownerReferences": remaining, "resourceVersion": pod.resource_version()}});
            patch_ignoring_races(&api, &pod.name_any(), &patch).await?;
        }
    }
    if deleting || !adopt {
        return Ok(claimed);
    }
    let mut may_adopt = None;
    for pod in pods.by_index(ORPHANS_BY_NAMESPACE, &namespace) {
        if pod.metadata.deletion_timestamp.is_some() || !selects(&pod) {
            continue;
        }
        if !*may_adopt.get_or_insert(can_adopt(client, owner).await?) {
            break;
        }
        let mut refs = pod.owner_references().to_vec();
        refs.push(controller_ref(owner));
        let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod.resource_version()}});
        if let Some(adopted) = patch_ignoring_races(&api, &pod.name_any(), &patch).await? {
            claimed.push(Arc::new(CachedPod::from(&adopted)));
        }
    }
    Ok(claimed)
}

/// Whether `owner` may adopt orphans: it still exists, as the same object, and is not being
/// deleted, as the API says now, not as a cache says. A sync works on the owner as it was when
/// the sync began; had it since been deleted with Orphan propagation, its dependents are
/// orphans just released by the garbage collector, and adopting them back would let them be
/// collected with it once it is gone. Upstream's `RecheckDeletionTimestamp` does the same.
pub(crate) async fn can_adopt<K>(client: &kube::Client, owner: &K) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let namespace = owner.meta().namespace.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    Ok(match api.get_opt(&owner.name_any()).await? {
        Some(fresh) => {
            fresh.meta().uid == owner.meta().uid && fresh.meta().deletion_timestamp.is_none()
        }
        None => false,
    })
}

/// Deletes `victims` (name, UID) of `owner`, each only if it is still the pod seen (its UID
/// as a precondition); a pod already gone or replaced counts as deleted for the
/// expectations of `key`. Returns the first error, after trying them all.
pub(crate) async fn delete_pods<K: Resource<DynamicType = ()>>(
    api: &Api<Pod>,
    recorder: &Recorder,
    owner: &K,
    expectations: &Expectations,
    key: &str,
    victims: &[(String, String)],
) -> Option<kube::Error> {
    let namespace = owner.meta().namespace.clone().unwrap_or_default();
    // Side by side, as upstream's controllers delete: one after another, a DaemonSet's
    // rolling update of 250 nodes a sync spent half a second here. Bounded, so that a
    // controller run out of process does not open a connection per victim.
    let results: Vec<_> = futures::stream::iter(victims.iter().cloned().map(|(name, uid)| {
        let api = api.clone();
        async move {
            let params = DeleteParams {
                preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
                ..DeleteParams::default()
            };
            let result = api.delete(&name, &params).await;
            (name, result)
        }
    }))
    .buffer_unordered(DELETIONS_IN_FLIGHT)
    .collect()
    .await;
    let mut first_error = None;
    for (name, result) in results {
        match result {
            Ok(_) => recorder.record(
                object_ref(owner),
                EventType::Normal,
                "SuccessfulDelete",
                format!("Deleted pod: {name}"),
            ),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                expectations.deleted(key, &format!("{namespace}/{name}"));
            }
            Err(e) => {
                expectations.deleted(key, &format!("{namespace}/{name}"));
                first_error.get_or_insert(e);
            }
        }
    }
    first_error
}
