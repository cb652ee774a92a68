//! Pure: the scheduler's volume plugins (upstream's VolumeBinding and VolumeRestrictions):
//! what a pod's claims demand of a node.
//!
//! Before any node is looked at, `needs` reads each claim the pod uses: a missing or
//! deleting claim, an unbound claim of an `Immediate` class, or a `ReadWriteOncePod` claim
//! another live pod holds make the pod unschedulable everywhere (upstream's pre-filter
//! messages). Otherwise each claim becomes a [`Need`]: a bound claim's volume must accept
//! the node (its node affinity), an unbound `WaitForFirstConsumer` claim needs a free
//! volume that fits the node, or a provisioner that can make one there: room for the
//! local-path provisioner, any node the class's `allowedTopologies` admits for another
//! (upstream assumes a provisioner without capacity tracking can), none for
//! `kubernetes.io/no-provisioner`. The scheduler
//! then writes the chosen node on the unbound claims (`volume.kubernetes.io/selected-node`)
//! and binds the pod once the PersistentVolume controller has bound them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;

use super::framework::{NodeInfo, Unfit};
use crate::local_volume::{PROVISIONER, STORAGE_CLASS, STORAGE_PATH_ANNOTATION};

/// The provisioner of classes whose volumes are all made by hand (upstream's name).
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
use crate::persistentvolume::volume_fits_claim;
use crate::selectors::{topology_allows, volume_fits_node};

/// What one claim demands of a node.
#[derive(Debug, Clone)]
pub enum Need {
    /// A bound claim: its volume's node affinity.
    Bound(Arc<PersistentVolume>),
    /// An unbound claim waiting for its first consumer: one of `candidates` must fit the
    /// node, or its class's provisioner must be able to make a volume there.
    Unbound {
        /// The claim.
        claim: Arc<PersistentVolumeClaim>,
        /// Free volumes of its class.
        candidates: Vec<Arc<PersistentVolume>>,
        /// Who could make a volume instead.
        provision: Provision,
    },
}

/// Who can make a volume for a waiting claim, and where.
#[derive(Debug, Clone)]
pub enum Provision {
    /// Nobody (`kubernetes.io/no-provisioner`, or no class): a free volume must fit.
    Nothing,
    /// The local-path provisioner: the bytes asked, on a node that keeps volumes and has
    /// them free, within the class's allowed topologies.
    Local(i64, Arc<StorageClass>),
    /// Another provisioner: any node within the class's allowed topologies.
    Elsewhere(Arc<StorageClass>),
}

/// The zone and region labels a volume may carry (GA and beta), each with its twin.
const ZONE_LABELS: [(&str, &str); 4] = [
    ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone"),
    ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region"),
    ("failure-domain.beta.kubernetes.io/zone", "topology.kubernetes.io/zone"),
    ("failure-domain.beta.kubernetes.io/region", "topology.kubernetes.io/region"),
];

/// Upstream's VolumeZone: a volume labelled with zones or regions (several joined by `__`)
/// accepts only nodes in one of them, the beta and GA labels standing for each other. A
/// node with no zone or region label at all accepts any volume.
fn zones_allow(
    volume: &PersistentVolume,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    if !ZONE_LABELS.iter().any(|(key, _)| labels.contains_key(*key)) {
        return true;
    }
    let volume_labels = volume.metadata.labels.as_ref();
    ZONE_LABELS.iter().all(|(key, twin)| {
        let Some(wanted) = volume_labels.and_then(|l| l.get(*key)) else { return true };
        labels
            .get(*key)
            .or_else(|| labels.get(*twin))
            .is_some_and(|have| wanted.split("__").any(|z| z == have))
    })
}

/// What the pod's claims demand: nothing, a reason it fits nowhere, or per-node needs.
#[derive(Debug, Clone)]
pub enum Needs {
    /// No claims.
    None,
    /// Unschedulable everywhere, with upstream's reason.
    Nowhere(String),
    /// Checked per node.
    Nodes(Vec<Need>),
}

/// What the scheduler's caches hold, as `needs` reads it.
pub trait Lookup {
    /// A claim by `namespace/name`.
    fn claim(&self, key: &str) -> Option<Arc<PersistentVolumeClaim>>;
    /// A volume by name.
    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>>;
    /// A StorageClass by name.
    fn class(&self, name: &str) -> Option<Arc<StorageClass>>;
    /// Every volume.
    fn volumes(&self) -> Vec<Arc<PersistentVolume>>;
    /// Whether a live pod other than `pod_key` uses the claim `key`.
    fn used_by_other(&self, key: &str, pod_key: &str) -> bool;
}

/// Whether a claim is bound both ways (as upstream's binder finishes it).
pub fn is_bound(claim: &PersistentVolumeClaim) -> bool {
    claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).is_some_and(|v| !v.is_empty())
}

fn bytes(claim: &PersistentVolumeClaim) -> i64 {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(crate::quantity::bytes)
        .unwrap_or(0)
}

/// The needs of a pod in `namespace` (key `pod_key`) using `claims`.
pub fn needs(
    namespace: &str,
    pod_key: &str,
    claims: &[(String, bool)],
    lookup: &dyn Lookup,
) -> Needs {
    if claims.is_empty() {
        return Needs::None;
    }
    let mut out = Vec::new();
    for (name, ephemeral) in claims {
        let key = format!("{namespace}/{name}");
        let Some(claim) = lookup.claim(&key) else {
            return Needs::Nowhere(if *ephemeral {
                format!(
                    "waiting for ephemeral volume controller to create the persistentvolumeclaim {name:?}"
                )
            } else {
                format!("persistentvolumeclaim {name:?} not found")
            });
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return Needs::Nowhere(format!("persistentvolumeclaim {name:?} is being deleted"));
        }
        let once_pod = claim
            .spec
            .as_ref()
            .and_then(|s| s.access_modes.as_ref())
            .is_some_and(|m| m.iter().any(|m| m == "ReadWriteOncePod"));
        if once_pod && lookup.used_by_other(&key, pod_key) {
            return Needs::Nowhere(
                "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode"
                    .into(),
            );
        }
        if is_bound(&claim) {
            let volume_name =
                claim.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
            match lookup.volume(&volume_name) {
                Some(v) => out.push(Need::Bound(v)),
                None => {
                    return Needs::Nowhere(format!("persistentvolume {volume_name:?} not found"));
                }
            }
            continue;
        }
        let class_name =
            claim.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default();
        let class = (!class_name.is_empty()).then(|| lookup.class(&class_name)).flatten();
        let waits = class.as_ref().and_then(|c| c.volume_binding_mode.as_deref())
            == Some("WaitForFirstConsumer");
        if !waits {
            return Needs::Nowhere("pod has unbound immediate PersistentVolumeClaims".into());
        }
        let candidates: Vec<Arc<PersistentVolume>> = lookup
            .volumes()
            .into_iter()
            .filter(|v| {
                v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_none()
                    && v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available")
                    && volume_fits_claim(v, &claim, None)
            })
            .collect();
        let provision = match class {
            Some(c) if c.provisioner == PROVISIONER => Provision::Local(bytes(&claim), c),
            Some(c) if c.provisioner != NO_PROVISIONER => Provision::Elsewhere(c),
            _ => Provision::Nothing,
        };
        out.push(Need::Unbound { claim, candidates, provision });
    }
    Needs::Nodes(out)
}

/// Whether `node` meets every need; the first unmet one's reason otherwise.
pub fn check_node(
    needs: &[Need],
    node: &NodeInfo,
    storage: Option<&LocalStorage>,
) -> Option<Unfit> {
    // Room the provisioner needs on this node for all of the pod's new volumes at once.
    let mut provisioning = 0i64;
    for need in needs {
        match need {
            Need::Bound(volume) => {
                if !volume_fits_node(volume, &node.name, &node.labels) {
                    return Some(Unfit::VolumeNodeAffinityConflict);
                }
                if !zones_allow(volume, &node.labels) {
                    return Some(Unfit::VolumeZoneConflict);
                }
            }
            Need::Unbound { candidates, provision, .. } => {
                if candidates.iter().any(|v| volume_fits_node(v, &node.name, &node.labels)) {
                    continue;
                }
                match provision {
                    Provision::Local(b, class)
                        if storage.is_some_and(|a| a.storage_path)
                            && topology_allows(class, &node.labels) =>
                    {
                        provisioning += b;
                    }
                    Provision::Elsewhere(class) if topology_allows(class, &node.labels) => {}
                    _ => return Some(Unfit::VolumeBindingNoMatch),
                }
            }
        }
    }
    if provisioning > 0
        && let Some(free) = storage.and_then(|a| a.free)
        && free < provisioning
    {
        return Some(Unfit::VolumeBindingNoMatch);
    }
    None
}

/// What the scheduler knows of a node's local storage: whether its agent keeps local
/// volumes (its annotation), and the bytes free there (its CSIStorageCapacity).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalStorage {
    /// Whether the node's agent keeps local volumes.
    pub storage_path: bool,
    /// Bytes free there, when reported.
    pub free: Option<i64>,
}

impl LocalStorage {
    /// Whether the node's annotations say its agent keeps local volumes.
    pub fn keeps_volumes(node: &k8s_openapi::api::core::v1::Node) -> bool {
        node.annotations().contains_key(STORAGE_PATH_ANNOTATION)
    }
}

/// The node and free bytes a `local-path` CSIStorageCapacity reports (its topology names
/// the node by hostname).
pub fn capacity_of(
    capacity: &k8s_openapi::api::storage::v1::CSIStorageCapacity,
) -> Option<(String, i64)> {
    if capacity.storage_class_name != STORAGE_CLASS {
        return None;
    }
    let node = capacity
        .node_topology
        .as_ref()?
        .match_labels
        .as_ref()?
        .get("kubernetes.io/hostname")?
        .clone();
    let bytes = capacity.capacity.as_ref().and_then(crate::quantity::bytes)?;
    Some((node, bytes))
}

/// The claims of `needs` the chosen node must be written on.
pub fn to_select(needs: &[Need]) -> Vec<Arc<PersistentVolumeClaim>> {
    needs
        .iter()
        .filter_map(|n| match n {
            Need::Unbound { claim, .. } => Some(claim.clone()),
            Need::Bound(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Fake {
        claims: HashMap<String, Arc<PersistentVolumeClaim>>,
        volumes: HashMap<String, Arc<PersistentVolume>>,
        classes: HashMap<String, Arc<StorageClass>>,
        used: Vec<String>,
    }

    impl Lookup for Fake {
        fn claim(&self, key: &str) -> Option<Arc<PersistentVolumeClaim>> {
            self.claims.get(key).cloned()
        }
        fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
            self.volumes.get(name).cloned()
        }
        fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
            self.classes.get(name).cloned()
        }
        fn volumes(&self) -> Vec<Arc<PersistentVolume>> {
            self.volumes.values().cloned().collect()
        }
        fn used_by_other(&self, key: &str, _pod_key: &str) -> bool {
            self.used.iter().any(|u| u == key)
        }
    }

    fn node(name: &str) -> NodeInfo {
        let n: k8s_openapi::api::core::v1::Node = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
        )
        .expect("a node");
        NodeInfo::new(&n)
    }

    fn fake() -> Fake {
        let mut f = Fake::default();
        f.classes.insert(
            "local-path".into(),
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": "local-path"},
                    "provisioner": PROVISIONER, "volumeBindingMode": "WaitForFirstConsumer"}))
                .expect("a class"),
            ),
        );
        f.classes.insert(
            "far".into(),
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": "far"},
                    "provisioner": "example.com/nfs", "volumeBindingMode": "WaitForFirstConsumer",
                    "allowedTopologies": [{"matchLabelExpressions": [
                        {"key": "kubernetes.io/hostname", "values": ["a", "c"]}]}]}))
                .expect("a class"),
            ),
        );
        f.classes.insert(
            "manual".into(),
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": "manual"},
                    "provisioner": NO_PROVISIONER, "volumeBindingMode": "WaitForFirstConsumer"}))
                .expect("a class"),
            ),
        );
        f.classes.insert(
            "now".into(),
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": "now"},
                    "provisioner": "x", "volumeBindingMode": "Immediate"}))
                .expect("a class"),
            ),
        );
        let claim = |name: &str, class: &str, modes: serde_json::Value, volume: &str| {
            Arc::new(
                serde_json::from_value::<PersistentVolumeClaim>(json!({
                    "metadata": {"name": name, "namespace": "d"},
                    "spec": {"accessModes": modes, "storageClassName": class, "volumeName": volume,
                             "resources": {"requests": {"storage": "1Gi"}}}}))
                .expect("a claim"),
            )
        };
        f.claims.insert("d/wait".into(), claim("wait", "local-path", json!(["ReadWriteOnce"]), ""));
        f.claims.insert("d/now".into(), claim("now", "now", json!(["ReadWriteOnce"]), ""));
        f.claims.insert("d/far".into(), claim("far", "far", json!(["ReadWriteOnce"]), ""));
        f.claims.insert("d/manual".into(), claim("manual", "manual", json!(["ReadWriteOnce"]), ""));
        f.claims.insert(
            "d/bound".into(),
            claim("bound", "local-path", json!(["ReadWriteOnce"]), "pv-a"),
        );
        f.claims.insert(
            "d/once".into(),
            claim("once", "local-path", json!(["ReadWriteOncePod"]), "pv-a"),
        );
        f.volumes.insert(
            "pv-a".into(),
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": "pv-a"},
                    "spec": {"capacity": {"storage": "1Gi"}, "local": {"path": "/x"},
                        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}]}}}}))
                .expect("a volume"),
            ),
        );
        f
    }

    #[test]
    fn pod_wide_reasons_come_first() {
        let mut f = fake();
        let n = |names: &[&str], f: &Fake| match needs(
            "d",
            "d/p",
            &names.iter().map(|s| (s.to_string(), false)).collect::<Vec<_>>(),
            f,
        ) {
            Needs::Nowhere(why) => why,
            other => format!("{other:?}"),
        };
        assert_eq!(n(&["missing"], &f), "persistentvolumeclaim \"missing\" not found");
        assert_eq!(n(&["now"], &f), "pod has unbound immediate PersistentVolumeClaims");
        f.used.push("d/once".into());
        assert!(n(&["once"], &f).contains("ReadWriteOncePod access mode"));
    }

    #[test]
    fn bound_volumes_pin_the_node_and_waiting_claims_need_room() {
        let f = fake();
        let Needs::Nodes(bound) = needs("d", "d/p", &[("bound".into(), false)], &f) else {
            panic!("needs per node")
        };
        assert_eq!(check_node(&bound, &node("a"), None), None);
        assert_eq!(check_node(&bound, &node("b"), None), Some(Unfit::VolumeNodeAffinityConflict));
        let Needs::Nodes(wait) = needs("d", "d/p", &[("wait".into(), false)], &f) else {
            panic!("needs per node")
        };
        let keeps = LocalStorage { storage_path: true, free: Some(10 << 30) };
        let full = LocalStorage { storage_path: true, free: Some(1 << 20) };
        assert_eq!(check_node(&wait, &node("a"), Some(&keeps)), None);
        assert_eq!(check_node(&wait, &node("a"), Some(&full)), Some(Unfit::VolumeBindingNoMatch));
        assert_eq!(check_node(&wait, &node("a"), None), Some(Unfit::VolumeBindingNoMatch));
        assert_eq!(to_select(&wait).len(), 1);
    }

    #[test]
    fn a_zoned_volume_accepts_only_nodes_of_its_zones() {
        let pv: PersistentVolume = serde_json::from_value(json!({"metadata": {"name": "z",
            "labels": {"topology.kubernetes.io/zone": "a__b"}}}))
        .expect("a volume");
        let labels = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(zones_allow(&pv, &labels(&[("topology.kubernetes.io/zone", "b")])));
        assert!(!zones_allow(&pv, &labels(&[("topology.kubernetes.io/zone", "c")])));
        assert!(
            zones_allow(&pv, &labels(&[("failure-domain.beta.kubernetes.io/zone", "a")])),
            "beta stands for GA"
        );
        assert!(
            !zones_allow(&pv, &labels(&[("topology.kubernetes.io/region", "r")])),
            "zoned node lacking the zone"
        );
        assert!(
            zones_allow(&pv, &labels(&[("kubernetes.io/hostname", "n")])),
            "a node with no zones"
        );
        let mut f = fake();
        f.volumes.insert("pv-a".into(), Arc::new(pv));
        let Needs::Nodes(bound) = needs("d", "d/p", &[("bound".into(), false)], &f) else {
            panic!("needs per node")
        };
        let mut far = node("far");
        far.labels = labels(&[("topology.kubernetes.io/zone", "c")]);
        assert_eq!(check_node(&bound, &far, None), Some(Unfit::VolumeZoneConflict));
        assert_eq!(Unfit::VolumeZoneConflict.message(), "node(s) had no available volume zone");
    }

    #[test]
    fn other_provisioners_may_make_volumes_where_their_class_allows() {
        let f = fake();
        let Needs::Nodes(far) = needs("d", "d/p", &[("far".into(), false)], &f) else {
            panic!("needs per node")
        };
        // No local storage is asked of the node: the provisioner is somebody else.
        assert_eq!(check_node(&far, &node("c"), None), None);
        assert_eq!(check_node(&far, &node("b"), None), Some(Unfit::VolumeBindingNoMatch));
        let Needs::Nodes(manual) = needs("d", "d/p", &[("manual".into(), false)], &f) else {
            panic!("needs per node")
        };
        let keeps = LocalStorage { storage_path: true, free: Some(10 << 30) };
        assert_eq!(
            check_node(&manual, &node("a"), Some(&keeps)),
            Some(Unfit::VolumeBindingNoMatch),
            "no provisioner: only a free volume would do"
        );
    }
}
