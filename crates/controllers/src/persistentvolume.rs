//! The PersistentVolume controller: upstream's `persistentvolume-binder` with the pv- and
//! pvc-protection controllers, the volume expander's control-plane half, and krust's
//! local-path provisioner (no helper pod: the volume object is made here, the data on the
//! node by its agent, see `controller_runtime::local_volume`).
//!
//! Claims and volumes share one queue (`claim/<ns>/<name>`, `volume/<name>`). A claim sync
//! binds an unbound claim to the smallest fitting Available volume, or provisions one
//! (`WaitForFirstConsumer` claims only once the scheduler named their node), finishes a
//! binding half made, grows a bound local volume when the claim asks for more, and lets a
//! deleted claim go once no pod uses it. A volume sync keeps its phase (Available, Bound,
//! Released, Failed) and reclaims a released one (`Delete`: the object is deleted and the
//! node's agent wipes the data before its finalizer goes; `Retain`: it stays Released).
//! Writes follow upstream's order — the volume's `claimRef`, its phase, the claim's
//! `volumeName`, the claim's phase — so a half-made binding is finished by the next sync.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimCondition, PersistentVolumeSpec,
    VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::events::{EventType, Recorder, object_ref};
use crate::informer::{BY_CLAIM, Change, Informer, index_pods_by_claim};
use crate::local_volume::{
    FINALIZER, NODE_LABEL, PROVISIONED_BY, PROVISIONER, SELECTED_NODE, STORAGE_PATH_ANNOTATION,
};
use crate::queue::{Queue, Requeue, run_workers};
use crate::selectors::{label_selector_matches, topology_allows, volume_fits_node};

const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
const BY_CLAIM_REF: &str = "claim-ref";

/// Bytes of a quantity (0 when unreadable).
fn bytes(q: Option<&Quantity>) -> i64 {
    q.and_then(crate::quantity::bytes).unwrap_or(0)
}

fn requested(claim: &PersistentVolumeClaim) -> i64 {
    bytes(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage")),
    )
}

fn capacity(volume: &PersistentVolume) -> i64 {
    bytes(volume.spec.as_ref().and_then(|s| s.capacity.as_ref()).and_then(|c| c.get("storage")))
}

fn class_of_claim(claim: &PersistentVolumeClaim) -> &str {
    claim.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or("")
}

fn class_of_volume(volume: &PersistentVolume) -> &str {
    volume.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or("")
}

fn phase_of_volume(volume: &PersistentVolume) -> &str {
    volume.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn phase_of_claim(claim: &PersistentVolumeClaim) -> &str {
    claim.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn volume_mode(mode: Option<&String>) -> &str {
    mode.map_or("Filesystem", String::as_str)
}

fn has_finalizer<K: ResourceExt>(object: &K, finalizer: &str) -> bool {
    object.finalizers().iter().any(|f| f == finalizer)
}

/// Whether `volume`'s claimRef names `claim` (by UID when it has one).
pub fn refers_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else { return false };
    r.name.as_deref() == claim.metadata.name.as_deref()
        && r.namespace.as_deref() == claim.metadata.namespace.as_deref()
        && r.uid.as_deref().is_none_or(|u| u.is_empty() || Some(u) == claim.metadata.uid.as_deref())
}

/// Whether `volume` could serve `claim` (upstream's `FindMatchingVolume` checks): the same
/// class and volume mode, every access mode asked for, enough capacity, the claim's
/// selector, and, for a claim waiting for its first consumer, the node picked for it.
pub fn volume_fits_claim(
    volume: &PersistentVolume,
    claim: &PersistentVolumeClaim,
    node: Option<&Node>,
) -> bool {
    let (Some(vs), Some(cs)) = (volume.spec.as_ref(), claim.spec.as_ref()) else { return false };
    if class_of_volume(volume) != class_of_claim(claim)
        || volume_mode(vs.volume_mode.as_ref()) != volume_mode(cs.volume_mode.as_ref())
        || volume.metadata.deletion_timestamp.is_some()
        || capacity(volume) < requested(claim)
    {
        return false;
    }
    let offered = vs.access_modes.as_deref().unwrap_or_default();
    if !cs.access_modes.iter().flatten().all(|m| offered.contains(m)) {
        return false;
    }
    if let Some(selector) = cs.selector.as_ref()
        && !label_selector_matches(selector, &volume.labels().clone())
    {
        return false;
    }
    match node {
        Some(n) => volume_fits_node(volume, &n.name_any(), &n.labels().clone()),
        None => true,
    }
}

/// The smallest volume among `volumes` free for `claim` (or already promised to it).
pub fn find_match<'a>(
    volumes: &'a [Arc<PersistentVolume>],
    claim: &PersistentVolumeClaim,
    node: Option<&Node>,
) -> Option<&'a Arc<PersistentVolume>> {
    volumes
        .iter()
        .filter(|v| {
            let claim_ref = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
            let free = claim_ref.is_none() && phase_of_volume(v) == "Available";
            (free || (claim_ref.is_some() && refers_to(v, claim)))
                && volume_fits_claim(v, claim, node)
        })
        .min_by_key(|v| (capacity(v), v.name_any()))
}

/// The one parameter a local-path class takes: `fsType`, the filesystem its volumes get
/// (`xfs` or `ext4`; the node picks when unset). Anything else is the reason provisioning
/// fails.
pub fn local_path_parameters(class: &StorageClass) -> Result<Option<String>, String> {
    let mut fs_type = None;
    for (key, value) in class.parameters.iter().flatten() {
        match key.as_str() {
            "fsType" | "csi.storage.k8s.io/fstype" if value == "xfs" || value == "ext4" => {
                fs_type = Some(value.clone());
            }
            "fsType" | "csi.storage.k8s.io/fstype" => {
                return Err(format!(
                    "invalid StorageClass parameter {key:?}: {value:?} is not a filesystem the {PROVISIONER} provisioner makes (xfs, ext4)"
                ));
            }
            _ => {
                return Err(format!(
                    "invalid StorageClass parameter {key:?}: the {PROVISIONER} provisioner takes only fsType"
                ));
            }
        }
    }
    Ok(fs_type)
}

/// The volume the local-path provisioner makes for `claim` on `node`, whose agent keeps its
/// volumes under `storage_path`.
pub fn provisioned_volume(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
    storage_path: &str,
) -> PersistentVolume {
    let name = format!("pvc-{}", claim.metadata.uid.as_deref().unwrap_or(""));
    let spec = claim.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
        .unwrap_or_else(|| Quantity("0".into()));
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(BTreeMap::from([(PROVISIONED_BY.into(), PROVISIONER.into())])),
            labels: Some(BTreeMap::from([(NODE_LABEL.into(), node.into())])),
            finalizers: Some(vec![FINALIZER.into()]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".into(), size)])),
            access_modes: spec.access_modes.clone(),
            claim_ref: Some(claim_reference(claim)),
            persistent_volume_reclaim_policy: Some(
                class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: Some(class.name_any()),
            volume_mode: spec.volume_mode.clone(),
            mount_options: class.mount_options.clone(),
            local: Some(k8s_openapi::api::core::v1::LocalVolumeSource {
                path: format!("{}/{name}", storage_path.trim_end_matches('/')),
                fs_type: local_path_parameters(class).ok().flatten(),
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "In".into(),
                            values: Some(vec![node.into()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

fn claim_reference(claim: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: claim.metadata.name.clone(),
        namespace: claim.metadata.namespace.clone(),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// What a volume whose claim is gone becomes, by its reclaim policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reclaim {
    /// Kept, Released.
    Retain,
    /// The object deleted (its data follows).
    Delete,
    /// No plugin can: Failed, with this message.
    Fail(String),
}

/// Upstream's reclaim decision for a released volume.
pub fn reclaim(volume: &PersistentVolume) -> Reclaim {
    let policy = volume.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref());
    let ours = volume.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
    match policy.unwrap_or("Retain") {
        "Delete" if ours => Reclaim::Delete,
        "Delete" => Reclaim::Fail(format!(
            "error getting deleter volume plugin for volume \"{}\": no deletable volume plugin matched",
            volume.name_any()
        )),
        "Recycle" => Reclaim::Fail("No recycler plugin found for the volume!".into()),
        _ => Reclaim::Retain,
    }
}

/// The PersistentVolume controller.
pub struct PersistentVolumeController {
    client: kube::Client,
    volumes: Arc<Informer<PersistentVolume>>,
    claims: Arc<Informer<PersistentVolumeClaim>>,
    classes: Arc<Informer<StorageClass>>,
    nodes: Arc<Informer<Node>>,
    pods: Arc<Informer<CachedPod>>,
    queue: Arc<Queue>,
    recorder: Recorder,
}

impl std::fmt::Debug for PersistentVolumeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistentVolumeController").finish_non_exhaustive()
    }
}

/// The informers the controller reads.
#[derive(Debug)]
pub struct Sources {
    /// PersistentVolumes.
    pub volumes: Arc<Informer<PersistentVolume>>,
    /// PersistentVolumeClaims.
    pub claims: Arc<Informer<PersistentVolumeClaim>>,
    /// StorageClasses.
    pub classes: Arc<Informer<StorageClass>>,
    /// Nodes (selected nodes' labels and storage paths).
    pub nodes: Arc<Informer<Node>>,
    /// Pods (which claims are in use).
    pub pods: Arc<Informer<CachedPod>>,
}

fn claim_key(namespace: &str, name: &str) -> String {
    format!("claim/{namespace}/{name}")
}

impl PersistentVolumeController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(client: kube::Client, sources: Sources) -> Arc<PersistentVolumeController> {
        index_pods_by_claim(&sources.pods);
        sources.volumes.add_index(BY_CLAIM_REF, |v| {
            v.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .map(|r| {
                    format!(
                        "{}/{}",
                        r.namespace.as_deref().unwrap_or(""),
                        r.name.as_deref().unwrap_or("")
                    )
                })
                .into_iter()
                .collect()
        });
        let controller = Arc::new(PersistentVolumeController {
            recorder: Recorder::new(client.clone(), "persistentvolume-controller"),
            client,
            volumes: sources.volumes.clone(),
            claims: sources.claims.clone(),
            classes: sources.classes.clone(),
            nodes: sources.nodes.clone(),
            pods: sources.pods.clone(),
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        sources.claims.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (Change::Added(claim) | Change::Updated(_, claim) | Change::Deleted(claim)) =
                change;
            c.queue.add(claim_key(&claim.namespace().unwrap_or_default(), &claim.name_any()));
            if let Some(volume) = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref())
                && !volume.is_empty()
            {
                c.queue.add(format!("volume/{volume}"));
            }
            // A claim gone (or made again) may release or free volumes promised to it.
            if matches!(change, Change::Deleted(_) | Change::Added(_)) {
                let key = format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any());
                for v in c.volumes.by_index(BY_CLAIM_REF, &key) {
                    c.queue.add(format!("volume/{}", v.name_any()));
                }
            }
        });
        let this = Arc::downgrade(&controller);
        sources.volumes.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (Change::Added(v) | Change::Updated(_, v) | Change::Deleted(v)) = change;
            c.queue.add(format!("volume/{}", v.name_any()));
            if let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                c.queue.add(claim_key(
                    r.namespace.as_deref().unwrap_or(""),
                    r.name.as_deref().unwrap_or(""),
                ));
            }
            // A volume freed may be what a pending claim waits for.
            if matches!(change, Change::Added(_)) || phase_of_volume(v) == "Available" {
                for claim in c.claims.list() {
                    if phase_of_claim(&claim) == "Pending" {
                        c.queue.add(claim_key(
                            &claim.namespace().unwrap_or_default(),
                            &claim.name_any(),
                        ));
                    }
                }
            }
        });
        let this = Arc::downgrade(&controller);
        sources.pods.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (Change::Added(p) | Change::Updated(_, p) | Change::Deleted(p)) = change;
            let finished = matches!(change, Change::Deleted(_))
                || p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
            if finished {
                let namespace = p.metadata.namespace.clone().unwrap_or_default();
                for claim in p.claim_names() {
                    c.queue.add(claim_key(&namespace, &claim));
                }
            }
        });
        controller
    }

    /// Runs the controller until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.volumes.wait_synced().await;
        self.claims.wait_synced().await;
        self.classes.wait_synced().await;
        self.nodes.wait_synced().await;
        self.pods.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "persistentvolume", move |key| {
            let this = this.clone();
            async move {
                if let Some(name) = key.strip_prefix("volume/") {
                    this.sync_volume(name).await
                } else if let Some(rest) = key.strip_prefix("claim/") {
                    this.sync_claim(rest).await
                } else {
                    Ok(Requeue::No)
                }
            }
        })
        .await;
    }

    /// An event about a claim.
    fn claim_event(
        &self,
        claim: &PersistentVolumeClaim,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.recorder.record(object_ref(claim), kind, reason, message);
    }

    fn in_use(&self, key: &str) -> bool {
        self.pods.by_index(BY_CLAIM, key).iter().any(|p| {
            !p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|ph| ph == "Succeeded" || ph == "Failed")
        })
    }

    async fn sync_claim(&self, key: &str) -> Result<Requeue, Error> {
        let Some(claim) = self.claims.get(key) else { return Ok(Requeue::No) };
        let namespace = claim.namespace().unwrap_or_default();
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &namespace);
        if claim.metadata.deletion_timestamp.is_some() {
            if has_finalizer(claim.as_ref(), PVC_PROTECTION) && !self.in_use(key) {
                let mut updated = (*claim).clone();
                updated.finalizers_mut().retain(|f| f != PVC_PROTECTION);
                ignore_gone(
                    claims.replace(&claim.name_any(), &PostParams::default(), &updated).await,
                )?;
            }
            return Ok(Requeue::No);
        }
        let volume_name =
            claim.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
        if !volume_name.is_empty() {
            return self.sync_bound_claim(&claims, &claim, &volume_name).await;
        }
        // Unbound: a volume that fits, or a new one.
        let class_name = class_of_claim(&claim).to_owned();
        let class = (!class_name.is_empty()).then(|| self.classes.get(&class_name)).flatten();
        let waits = class.as_ref().and_then(|c| c.volume_binding_mode.as_deref())
            == Some("WaitForFirstConsumer");
        let selected = claim.annotations().get(SELECTED_NODE).cloned();
        let node = selected.as_deref().and_then(|n| self.nodes.get(n));
        if waits && selected.is_none() {
            self.claim_event(
                claim.as_ref(),
                EventType::Normal,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            );
            return Ok(Requeue::No);
        }
        let volumes = self.volumes.list();
        if let Some(volume) = find_match(&volumes, &claim, node.as_deref()) {
            return self.bind(&claim, volume).await;
        }
        if class_name.is_empty() {
            self.claim_event(
                claim.as_ref(),
                EventType::Normal,
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set",
            );
            return Ok(Requeue::No);
        }
        let Some(class) = class else {
            self.claim_event(
                claim.as_ref(),
                EventType::Warning,
                "ProvisioningFailed",
                format!("storageclass.storage.k8s.io {class_name:?} not found"),
            );
            return Ok(Requeue::After(std::time::Duration::from_secs(15)));
        };
        if class.provisioner != PROVISIONER {
            self.claim_event(
                claim.as_ref(),
                EventType::Normal,
                "ExternalProvisioning",
                format!("Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.", class.provisioner),
            );
            return Ok(Requeue::No);
        }
        self.provision(&claims, &claim, &class, selected.as_deref()).await
    }

    async fn provision(
        &self,
        claims: &Api<PersistentVolumeClaim>,
        claim: &Arc<PersistentVolumeClaim>,
        class: &StorageClass,
        selected: Option<&str>,
    ) -> Result<Requeue, Error> {
        let fail = |message: String| {
            self.claim_event(claim.as_ref(), EventType::Warning, "ProvisioningFailed", message);
            Ok(Requeue::After(std::time::Duration::from_secs(15)))
        };
        if claim.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some() {
            return fail("claim Selector is not supported".into());
        }
        if let Err(message) = local_path_parameters(class) {
            return fail(message);
        }
        // `Immediate`: the node with a storage path whose agent is Ready, within the class's
        // allowed topologies, first by name.
        let node = match selected {
            Some(name) => self.nodes.get(name),
            None => {
                let mut nodes: Vec<Arc<Node>> = self
                    .nodes
                    .list()
                    .into_iter()
                    .filter(|n| {
                        n.annotations().contains_key(STORAGE_PATH_ANNOTATION)
                            && ready(n)
                            && topology_allows(class, n.labels())
                    })
                    .collect();
                nodes.sort_by_key(|n| n.name_any());
                nodes.into_iter().next()
            }
        };
        let path = node.as_ref().and_then(|n| n.annotations().get(STORAGE_PATH_ANNOTATION));
        let (Some(node), Some(path)) = (node.as_ref(), path.cloned()) else {
            let message = match (selected, &node) {
                (Some(name), None) => format!("node {name:?} not found"),
                (None, _) => "no ready node keeps local volumes where the class allows".into(),
                (Some(name), Some(_)) => format!(
                    "node {name:?} has no local storage path (its agent publishes {STORAGE_PATH_ANNOTATION})"
                ),
            };
            if selected.is_some() {
                // The volume cannot be made where the scheduler chose: giving the choice
                // back lets it pick another node, as upstream's provisioners do.
                let mut updated = (**claim).clone();
                updated.annotations_mut().remove(SELECTED_NODE);
                ignore_gone(
                    claims.replace(&claim.name_any(), &PostParams::default(), &updated).await,
                )?;
            }
            return fail(message);
        };
        // Say who provisions, as upstream does on the claim, before the volume exists.
        if claim.annotations().get(STORAGE_PROVISIONER).map(String::as_str) != Some(PROVISIONER) {
            let mut updated = (**claim).clone();
            updated.annotations_mut().insert(STORAGE_PROVISIONER.into(), PROVISIONER.into());
            updated.annotations_mut().insert(BETA_STORAGE_PROVISIONER.into(), PROVISIONER.into());
            ignore_gone(claims.replace(&claim.name_any(), &PostParams::default(), &updated).await)?;
            // The update wakes this claim again, with the volume still to make.
            return Ok(Requeue::No);
        }
        let volume = provisioned_volume(claim, class, &node.name_any(), &path);
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        match volumes.create(&PostParams::default(), &volume).await {
            Ok(created) => self.claim_event(
                claim.as_ref(),
                EventType::Normal,
                "ProvisioningSucceeded",
                format!("Successfully provisioned volume {}", created.name_any()),
            ),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Requeue::No)
    }

    /// Binds `claim` to `volume`: the volume's claimRef first, then (on the syncs its
    /// change wakes) the phases and the claim's `volumeName`.
    async fn bind(
        &self,
        claim: &PersistentVolumeClaim,
        volume: &PersistentVolume,
    ) -> Result<Requeue, Error> {
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        let has_ref = volume
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| r.uid.as_deref().is_some_and(|u| !u.is_empty()));
        if !has_ref {
            let mut updated = volume.clone();
            if let Some(spec) = updated.spec.as_mut() {
                spec.claim_ref = Some(claim_reference(claim));
            }
            updated.annotations_mut().insert(BOUND_BY_CONTROLLER.into(), "yes".into());
            ignore_gone(
                volumes.replace(&volume.name_any(), &PostParams::default(), &updated).await,
            )?;
            return Ok(Requeue::No);
        }
        // The volume is promised: the claim takes it.
        let namespace = claim.namespace().unwrap_or_default();
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &namespace);
        let mut updated = claim.clone();
        if let Some(spec) = updated.spec.as_mut() {
            spec.volume_name = Some(volume.name_any());
        }
        updated.annotations_mut().insert(BIND_COMPLETED.into(), "yes".into());
        updated.annotations_mut().insert(BOUND_BY_CONTROLLER.into(), "yes".into());
        ignore_gone(claims.replace(&claim.name_any(), &PostParams::default(), &updated).await)?;
        Ok(Requeue::No)
    }

    async fn sync_bound_claim(
        &self,
        claims: &Api<PersistentVolumeClaim>,
        claim: &Arc<PersistentVolumeClaim>,
        volume_name: &str,
    ) -> Result<Requeue, Error> {
        let Some(volume) = self.volumes.get(volume_name) else {
            if phase_of_claim(claim) == "Bound" {
                self.claim_event(
                    claim.as_ref(),
                    EventType::Warning,
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                );
                let mut updated = (**claim).clone();
                updated.status.get_or_insert_with(Default::default).phase = Some("Lost".into());
                ignore_gone(
                    claims
                        .replace_status(&claim.name_any(), &PostParams::default(), &updated)
                        .await,
                )?;
            }
            return Ok(Requeue::No);
        };
        let claim_ref = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        if claim_ref.is_none() {
            // Pre-bound by the user to this volume: the volume takes the claim.
            if volume_fits_claim(&volume, claim, None) {
                return self.bind(claim, &volume).await;
            }
            self.claim_event(
                claim.as_ref(),
                EventType::Warning,
                "FailedBinding",
                format!("volume {volume_name:?} does not fit the claim"),
            );
            return Ok(Requeue::No);
        }
        if !refers_to(&volume, claim) {
            self.claim_event(
                claim.as_ref(),
                EventType::Warning,
                "FailedBinding",
                format!("volume {volume_name:?} already bound to a different claim."),
            );
            return Ok(Requeue::No);
        }
        if claim_ref.and_then(|r| r.uid.as_deref()).is_none_or(str::is_empty) {
            return self.bind(claim, &volume).await;
        }
        // Bound both ways: the claim's annotations, then its status.
        if claim.annotations().get(BIND_COMPLETED).map(String::as_str) != Some("yes") {
            let mut updated = (**claim).clone();
            updated.annotations_mut().insert(BIND_COMPLETED.into(), "yes".into());
            ignore_gone(claims.replace(&claim.name_any(), &PostParams::default(), &updated).await)?;
            return Ok(Requeue::No);
        }
        // Growing: the local volume's capacity follows the claim; its agent grows the
        // filesystem and reports the claim's new capacity.
        let ours =
            volume.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
        let want = requested(claim);
        if ours && want > capacity(&volume) {
            let mut updated = (*volume).clone();
            if let (Some(spec), Some(q)) = (
                updated.spec.as_mut(),
                claim
                    .spec
                    .as_ref()
                    .and_then(|s| s.resources.as_ref())
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get("storage")),
            ) {
                spec.capacity.get_or_insert_with(BTreeMap::new).insert("storage".into(), q.clone());
            }
            let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
            ignore_gone(
                volumes.replace(&volume.name_any(), &PostParams::default(), &updated).await,
            )?;
            self.claim_event(
                claim.as_ref(),
                EventType::Normal,
                "ExternalExpanding",
                format!("waiting for the agent of the node to grow volume {volume_name:?}"),
            );
            return Ok(Requeue::No);
        }
        let mut status = claim.status.clone().unwrap_or_default();
        status.phase = Some("Bound".into());
        if status.capacity.is_none() || !ours {
            status.capacity = volume.spec.as_ref().and_then(|s| s.capacity.clone());
        }
        status.access_modes = volume.spec.as_ref().and_then(|s| s.access_modes.clone());
        let resizing =
            ours && bytes(status.capacity.as_ref().and_then(|c| c.get("storage"))) < want;
        let mut conditions: Vec<PersistentVolumeClaimCondition> = status
            .conditions
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ != "FileSystemResizePending" || resizing)
            .collect();
        if resizing && !conditions.iter().any(|c| c.type_ == "FileSystemResizePending") {
            conditions.push(PersistentVolumeClaimCondition {
                type_: "FileSystemResizePending".into(),
                status: "True".into(),
                message: Some("Waiting for user to (re-)start a pod to finish file system resize of volume on node.".into()),
                last_transition_time: Some(Time(jiff::Timestamp::now())),
                ..PersistentVolumeClaimCondition::default()
            });
        }
        status.conditions = (!conditions.is_empty()).then_some(conditions);
        if resizing {
            status.allocated_resources = claim
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.clone());
        }
        if claim.status.as_ref() != Some(&status) {
            let mut updated = (**claim).clone();
            updated.status = Some(status);
            ignore_gone(
                claims.replace_status(&claim.name_any(), &PostParams::default(), &updated).await,
            )?;
        }
        Ok(Requeue::No)
    }

    async fn sync_volume(&self, name: &str) -> Result<Requeue, Error> {
        let Some(volume) = self.volumes.get(name) else { return Ok(Requeue::No) };
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        let claim_ref = volume.spec.as_ref().and_then(|s| s.claim_ref.clone());
        let claim = claim_ref.as_ref().and_then(|r| {
            self.claims.get(&format!(
                "{}/{}",
                r.namespace.as_deref().unwrap_or(""),
                r.name.as_deref().unwrap_or("")
            ))
        });
        let promised_uid = claim_ref.as_ref().and_then(|r| r.uid.clone()).filter(|u| !u.is_empty());
        let claim_gone =
            promised_uid.is_some() && claim.as_ref().is_none_or(|c| c.metadata.uid != promised_uid);
        if volume.metadata.deletion_timestamp.is_some() {
            let bound = claim.as_ref().is_some_and(|c| !claim_gone && refers_to(&volume, c));
            if has_finalizer(volume.as_ref(), PV_PROTECTION) && !bound {
                let mut updated = (*volume).clone();
                updated.finalizers_mut().retain(|f| f != PV_PROTECTION);
                ignore_gone(volumes.replace(name, &PostParams::default(), &updated).await)?;
            }
            return Ok(Requeue::No);
        }
        let (phase, message) = match (&claim_ref, &claim) {
            (None, _) => ("Available", None),
            // Promised to a claim not made yet.
            (Some(_), None) if promised_uid.is_none() => ("Available", None),
            // Bound, or promised to this claim by UID (its sync finishes the binding).
            (Some(_), Some(_)) if !claim_gone && promised_uid.is_some() => ("Bound", None),
            (Some(_), Some(_)) if !claim_gone => ("Available", None),
            _ => match reclaim(&volume) {
                Reclaim::Retain => ("Released", None),
                Reclaim::Delete => {
                    if phase_of_volume(&volume) == "Released" {
                        ignore_gone(volumes.delete(name, &DeleteParams::default()).await)?;
                        return Ok(Requeue::No);
                    }
                    ("Released", None)
                }
                Reclaim::Fail(message) => ("Failed", Some(message)),
            },
        };
        let current = volume.status.clone().unwrap_or_default();
        if current.phase.as_deref() != Some(phase)
            || (message.is_some() && current.message != message)
        {
            let mut updated = (*volume).clone();
            let status = updated.status.get_or_insert_with(Default::default);
            status.phase = Some(phase.into());
            status.message = message;
            status.last_phase_transition_time = Some(Time(jiff::Timestamp::now()));
            ignore_gone(volumes.replace_status(name, &PostParams::default(), &updated).await)?;
        }
        Ok(Requeue::No)
    }
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// A write whose object is gone (or went meanwhile) is no error: its deletion wakes the sync.
fn ignore_gone<T>(result: Result<T, kube::Error>) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn volume(value: serde_json::Value) -> Arc<PersistentVolume> {
        Arc::new(serde_json::from_value(value).expect("a volume"))
    }

    fn claim(value: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(value).expect("a claim")
    }

    #[test]
    fn the_smallest_fitting_available_volume_is_chosen() {
        let pv = |name: &str, size: &str, modes: serde_json::Value, class: &str| {
            volume(json!({"metadata": {"name": name, "labels": {"tier": "fast"}},
                "spec": {"capacity": {"storage": size}, "accessModes": modes, "storageClassName": class,
                         "hostPath": {"path": "/x"}},
                "status": {"phase": "Available"}}))
        };
        let volumes = vec![
            pv("big", "10Gi", json!(["ReadWriteOnce"]), ""),
            pv("small", "1Gi", json!(["ReadWriteOnce"]), ""),
            pv("tiny", "100Mi", json!(["ReadWriteOnce"]), ""),
            pv("rox", "1Gi", json!(["ReadOnlyMany"]), ""),
            pv("classy", "1Gi", json!(["ReadWriteOnce"]), "gold"),
        ];
        let c = claim(json!({"metadata": {"name": "c", "namespace": "d", "uid": "u"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "500Mi"}}, "storageClassName": ""}}));
        assert_eq!(find_match(&volumes, &c, None).map(|v| v.name_any()), Some("small".into()));
        let picky = claim(json!({"metadata": {"name": "c", "namespace": "d", "uid": "u"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "500Mi"}}, "storageClassName": "",
                     "selector": {"matchLabels": {"tier": "slow"}}}}));
        assert!(find_match(&volumes, &picky, None).is_none());
        let gold = claim(json!({"metadata": {"name": "c", "namespace": "d", "uid": "u"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "gold"}}));
        assert_eq!(find_match(&volumes, &gold, None).map(|v| v.name_any()), Some("classy".into()));
    }

    #[test]
    fn node_affinity_limits_a_waiting_claim_to_its_node() {
        let pv = volume(json!({"metadata": {"name": "local"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                     "local": {"path": "/mnt"},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}]}}},
            "status": {"phase": "Available"}}));
        let c = claim(json!({"metadata": {"name": "c", "namespace": "d"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "local"}}));
        let node = |name: &str| -> Node {
            serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
            )
            .expect("a node")
        };
        assert!(volume_fits_claim(&pv, &c, Some(&node("a"))));
        assert!(!volume_fits_claim(&pv, &c, Some(&node("b"))));
    }

    #[test]
    fn a_local_path_class_takes_only_a_known_filesystem() {
        let class = |parameters: serde_json::Value| -> StorageClass {
            serde_json::from_value(json!({"metadata": {"name": "c"}, "provisioner": PROVISIONER,
                "parameters": parameters}))
            .expect("a class")
        };
        assert_eq!(local_path_parameters(&class(json!({}))), Ok(None));
        assert_eq!(
            local_path_parameters(&class(json!({"fsType": "ext4"}))),
            Ok(Some("ext4".into()))
        );
        let bad = local_path_parameters(&class(json!({"fsType": "btrfs"}))).unwrap_err();
        assert!(bad.contains("\"btrfs\" is not a filesystem"), "{bad}");
        let odd = local_path_parameters(&class(json!({"speed": "fast"}))).unwrap_err();
        assert!(odd.contains("takes only fsType"), "{odd}");
    }

    #[test]
    fn provisioned_volumes_are_pinned_promised_and_reclaimed_by_policy() {
        let c = claim(json!({"metadata": {"name": "data", "namespace": "db", "uid": "1234"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}, "storageClassName": "local-path"}}));
        let class: StorageClass =
            serde_json::from_value(json!({"metadata": {"name": "local-path"},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete"}))
            .expect("a class");
        let pv = provisioned_volume(&c, &class, "n1", "/var/lib/krust/storage/");
        assert_eq!(pv.name_any(), "pvc-1234");
        let spec = pv.spec.as_ref().expect("a spec");
        assert_eq!(
            spec.local.as_ref().map(|l| l.path.as_str()),
            Some("/var/lib/krust/storage/pvc-1234")
        );
        assert!(refers_to(&pv, &c));
        assert_eq!(pv.finalizers(), [FINALIZER.to_owned()]);
        assert_eq!(reclaim(&pv), Reclaim::Delete);
        let mut foreign = pv.clone();
        foreign.annotations_mut().clear();
        assert!(
            matches!(reclaim(&foreign), Reclaim::Fail(m) if m.contains("no deletable volume plugin matched"))
        );
        if let Some(s) = foreign.spec.as_mut() {
            s.persistent_volume_reclaim_policy = Some("Retain".into());
        }
        assert_eq!(reclaim(&foreign), Reclaim::Retain);
    }
}
