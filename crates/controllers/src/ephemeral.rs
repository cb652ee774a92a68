//! The ephemeral volume controller (upstream's, as `ephemeral-volume-controller`): a pod's
//! `ephemeral` volume gets its claim `<pod>-<volume>` from the volume's
//! `volumeClaimTemplate`, owned by the pod, so the claim (and with the `local-path` class,
//! its volume and data) goes with the pod through the garbage collector.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::events::{EventType, Recorder, object_ref};
use crate::informer::{Change, Informer, key_of};
use crate::queue::{Queue, Requeue, run_workers};

/// The claims a pod's ephemeral volumes need: (claim name, claim) from its full spec.
pub fn claims_for(pod: &Pod) -> Vec<PersistentVolumeClaim> {
    let name = pod.name_any();
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: name.clone(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            let template = v.ephemeral.as_ref()?.volume_claim_template.as_ref()?;
            let meta = template.metadata.clone().unwrap_or_default();
            Some(PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{}", v.name)),
                    namespace: pod.metadata.namespace.clone(),
                    labels: meta.labels,
                    annotations: meta.annotations,
                    owner_references: Some(vec![owner.clone()]),
                    ..ObjectMeta::default()
                },
                spec: Some(template.spec.clone()),
                status: None,
            })
        })
        .collect()
}

/// The ephemeral volume controller.
pub struct EphemeralVolumeController {
    client: kube::Client,
    pods: Arc<Informer<CachedPod>>,
    claims: Arc<Informer<PersistentVolumeClaim>>,
    queue: Arc<Queue>,
    recorder: Recorder,
}

impl std::fmt::Debug for EphemeralVolumeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EphemeralVolumeController").finish_non_exhaustive()
    }
}

fn has_ephemeral(pod: &CachedPod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.ephemeral))
}

impl EphemeralVolumeController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(
        client: kube::Client,
        pods: Arc<Informer<CachedPod>>,
        claims: Arc<Informer<PersistentVolumeClaim>>,
    ) -> Arc<EphemeralVolumeController> {
        let controller = Arc::new(EphemeralVolumeController {
            recorder: Recorder::new(client.clone(), "ephemeral_volume"),
            client,
            pods: pods.clone(),
            claims: claims.clone(),
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        pods.on_change(move |change| {
            if let (Some(c), Change::Added(p) | Change::Updated(_, p)) = (this.upgrade(), change)
                && has_ephemeral(p)
                && p.metadata.deletion_timestamp.is_none()
            {
                c.queue.add(key_of(p.as_ref()));
            }
        });
        // A claim deleted under a live pod is made again.
        let this = Arc::downgrade(&controller);
        claims.on_change(move |change| {
            if let (Some(c), Change::Deleted(claim)) = (this.upgrade(), change)
                && let Some(owner) = crate::informer::controller_of(claim.as_ref())
                && owner.kind == "Pod"
            {
                c.queue.add(format!("{}/{}", claim.namespace().unwrap_or_default(), owner.name));
            }
        });
        controller
    }

    /// Runs the controller until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.pods.wait_synced().await;
        self.claims.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "ephemeral-volume", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let Some(cached) = self.pods.get(key) else { return Ok(Requeue::No) };
        if !has_ephemeral(&cached) || cached.metadata.deletion_timestamp.is_some() {
            return Ok(Requeue::No);
        }
        let namespace = cached.metadata.namespace.clone().unwrap_or_default();
        let missing = cached
            .claim_names()
            .into_iter()
            .any(|c| self.claims.get(&format!("{namespace}/{c}")).is_none());
        if !missing {
            return Ok(Requeue::No);
        }
        // The template is not cached: the pod is read whole.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let pod = match pods.get(&cached.metadata.name.clone().unwrap_or_default()).await {
            Ok(p) if p.metadata.uid == cached.metadata.uid => p,
            Ok(_) => return Ok(Requeue::No),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Requeue::No),
            Err(e) => return Err(e.into()),
        };
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &namespace);
        for claim in claims_for(&pod) {
            if self.claims.get(&format!("{namespace}/{}", claim.name_any())).is_some() {
                continue;
            }
            match api.create(&PostParams::default(), &claim).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    self.recorder.record(
                        object_ref(&pod),
                        EventType::Warning,
                        "FailedBinding",
                        format!("create PVC {}: {e}", claim.name_any()),
                    );
                    return Err(e.into());
                }
            }
        }
        Ok(Requeue::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ephemeral_volume_gets_a_claim_owned_by_the_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "d", "uid": "u1"},
            "spec": {"containers": [], "volumes": [
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
                    "metadata": {"labels": {"a": "b"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}},
                {"name": "cfg", "configMap": {"name": "c"}}]}}))
        .expect("a pod");
        let claims = claims_for(&pod);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].name_any(), "web-scratch");
        let owner = &claims[0].owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Pod", "u1", Some(true))
        );
        assert_eq!(claims[0].labels().get("a").map(String::as_str), Some("b"));
    }
}
