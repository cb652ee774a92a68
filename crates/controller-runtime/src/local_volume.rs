//! The contract between the control plane's local-path provisioner (in the PersistentVolume
//! controller) and the node agents that hold the data: names both sides use.
//!
//! The controller creates a `local` PersistentVolume at `<node's storage path>/<pv name>`,
//! pinned to the node; the agent of that node makes the capacity-limited filesystem there
//! when a pod first mounts it, and wipes it once the volume object is deleted (its
//! finalizer keeps the object until then).

/// The provisioner of the built-in `local-path` StorageClass.
pub const PROVISIONER: &str = "krust.io/local-path";
/// The built-in StorageClass.
pub const STORAGE_CLASS: &str = "local-path";
/// Node annotation: where the node's agent keeps provisioned volumes
/// (`--default-local-storage-path`).
pub const STORAGE_PATH_ANNOTATION: &str = "krust.io/local-storage-path";
/// Finalizer of a provisioned volume: removed by the node's agent once the data is gone.
pub const FINALIZER: &str = "krust.io/local-volume";
/// Volume annotation naming the provisioner, as upstream's provisioners set it.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Claim annotation: the node the scheduler picked for a `WaitForFirstConsumer` claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Volume label naming the node that holds it (so an agent watches only its own).
pub const NODE_LABEL: &str = "krust.io/local-volume-node";
/// The CSIStorageCapacity (in `kube-system`) in which a node's agent publishes the bytes
/// free where it keeps local volumes (what the scheduler checks a new claim's size
/// against): `local-path-<node>`, its topology the node's hostname label.
pub fn capacity_name(node: &str) -> String {
    format!("local-path-{node}")
}
