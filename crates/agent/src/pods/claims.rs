//! The pod's claim-backed volumes (`persistentVolumeClaim`, and `ephemeral`, whose claim is
//! `<pod>-<volume>`): each resolved through its claim to its PersistentVolume and that to a
//! path on this node (`local`, `hostPath`), which is bind-mounted into the containers. A
//! volume of the local-path provisioner is made (or grown) on first use.

use std::collections::BTreeMap;
use std::path::PathBuf;

use controller_runtime::local_volume::{PROVISIONED_BY, PROVISIONER};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::{Api, ResourceExt};

use super::volumes::MountError;

/// A claim-backed volume as mounted: its path on the node and whether it is read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMount {
    /// The claim's name.
    pub claim: String,
    /// The volume's path on the node.
    pub path: PathBuf,
    /// Mounted read-only everywhere (`persistentVolumeClaim.readOnly`).
    pub read_only: bool,
    /// Whether the pod's `fsGroup` applies (a `local` volume; not a `hostPath` one).
    pub takes_fs_group: bool,
    /// The block device of a `volumeMode: Block` volume.
    pub device: Option<PathBuf>,
}

/// Claim-backed volumes by pod volume name.
pub type Claims = BTreeMap<String, ClaimMount>;

/// The claims the pod's volumes name: (volume, claim, read-only).
pub fn claimed(pod: &Pod) -> Vec<(String, String, bool)> {
    let name = pod.name_any();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| match (&v.persistent_volume_claim, &v.ephemeral) {
            (Some(c), _) => Some((v.name.clone(), c.claim_name.clone(), c.read_only == Some(true))),
            (None, Some(_)) => Some((v.name.clone(), format!("{name}-{}", v.name), false)),
            (None, None) => None,
        })
        .collect()
}

fn api_error(what: &str, e: kube::Error) -> MountError {
    MountError(match e {
        kube::Error::Api(s) if s.code == 404 => format!("{what} not found"),
        other => format!("reading {what}: {other}"),
    })
}

fn capacity_bytes(spec: &k8s_openapi::api::core::v1::PersistentVolumeSpec) -> u64 {
    spec.capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .and_then(controller_runtime::quantity::bytes)
        .and_then(|b| u64::try_from(b).ok())
        .unwrap_or(0)
}

/// Resolves the pod's claim-backed volumes; `storage` is where the node keeps the
/// local-path provisioner's volumes.
pub async fn resolve(
    client: &kube::Client,
    pod: &Pod,
    storage: Option<&std::path::Path>,
) -> Result<Claims, MountError> {
    let wanted = claimed(pod);
    let mut out = Claims::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let namespace = pod.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    for (volume, claim_name, read_only) in wanted {
        let what = format!("persistentvolumeclaim {claim_name:?}");
        let claim = claims.get(&claim_name).await.map_err(|e| api_error(&what, e))?;
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(MountError(format!("{what} is being deleted")));
        }
        let Some(pv_name) =
            claim.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|n| !n.is_empty())
        else {
            return Err(MountError(format!("{what} is not bound")));
        };
        let pv_what = format!("persistentvolume {pv_name:?}");
        let pv = volumes.get(&pv_name).await.map_err(|e| api_error(&pv_what, e))?;
        let spec = pv.spec.clone().unwrap_or_default();
        let path = if let Some(local) = spec.local.as_ref() {
            PathBuf::from(&local.path)
        } else if let Some(host) = spec.host_path.as_ref() {
            PathBuf::from(&host.path)
        } else {
            return Err(MountError(format!(
                "{pv_what}: only local and hostPath volumes can be mounted on this node"
            )));
        };
        let ours = pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
        let block = spec.volume_mode.as_deref() == Some("Block");
        let mut device = None;
        if ours && block {
            let Some(storage) = storage.map(std::path::Path::to_path_buf) else {
                return Err(MountError(format!("{pv_what}: this node keeps no local volumes")));
            };
            let bytes = capacity_bytes(&spec);
            let p = path.clone();
            let dev = tokio::task::spawn_blocking(move || {
                crate::local_volume::ensure_block(&storage, &p, bytes)
            })
            .await
            .map_err(|e| MountError(e.to_string()))?
            .map_err(|e| MountError(format!("{pv_what}: {e}")))?;
            device = Some(dev);
        } else if block {
            // A static Block volume names its device.
            device = Some(path.clone());
        } else if ours {
            let Some(storage) = storage.map(std::path::Path::to_path_buf) else {
                return Err(MountError(format!("{pv_what}: this node keeps no local volumes")));
            };
            let bytes = capacity_bytes(&spec);
            let p = path.clone();
            let fs_type = spec.local.as_ref().and_then(|l| l.fs_type.clone());
            tokio::task::spawn_blocking(move || {
                crate::local_volume::ensure(&storage, &p, bytes, fs_type.as_deref())
            })
            .await
            .map_err(|e| MountError(e.to_string()))?
            .map_err(|e| MountError(format!("{pv_what}: {e}")))?;
            // A volume that grew while unmounted has its new size now: the claim learns it.
            if let Err(e) = crate::local_volume::report_capacity(client, &pv).await {
                tracing::debug!(volume = %pv_name, error = %e, "reporting a claim's capacity");
            }
        } else if !path.exists() {
            return Err(MountError(format!("{pv_what}: path {} does not exist", path.display())));
        }
        let takes_fs_group = spec.local.is_some() && !block;
        out.insert(
            volume,
            ClaimMount { claim: claim_name, path, read_only, takes_fs_group, device },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_and_ephemeral_volumes_are_named() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0"},
            "spec": {"containers": [], "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-0", "readOnly": true}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "cfg", "configMap": {"name": "c"}}]}}))
        .expect("a pod");
        assert_eq!(
            claimed(&pod),
            vec![
                ("data".into(), "data-web-0".into(), true),
                ("scratch".into(), "web-0-scratch".into(), false)
            ]
        );
    }
}
