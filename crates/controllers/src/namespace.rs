//! The namespace controller: a namespace being deleted (phase Terminating) has every
//! namespaced object of every served type deleted; its status conditions say what remains
//! meanwhile (`NamespaceContentRemaining`, `NamespaceFinalizersRemaining`,
//! `NamespaceDeletionDiscoveryFailure`, `NamespaceDeletionContentFailure`); once it is
//! empty the `kubernetes` finalizer is removed through `namespaces/{name}/finalize` and
//! the API server deletes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    PropagationPolicy,
};
use kube::discovery::{Discovery, Scope, verbs};
use kube::{Api, ResourceExt};

use crate::Error;
use crate::informer::{Change, Informer};
use crate::queue::{Queue, Requeue, run_workers};

/// The namespace controller; keys are namespace names.
pub struct NamespaceController {
    client: kube::Client,
    namespaces: Arc<Informer<Namespace>>,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for NamespaceController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceController").finish_non_exhaustive()
    }
}

impl NamespaceController {
    /// Hooks the controller to the namespace informer (before it starts).
    pub fn new(
        client: kube::Client,
        namespaces: Arc<Informer<Namespace>>,
    ) -> Arc<NamespaceController> {
        let controller = Arc::new(NamespaceController {
            client,
            namespaces: namespaces.clone(),
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        namespaces.on_change(move |change| {
            if let (Some(c), Change::Added(ns) | Change::Updated(_, ns)) = (this.upgrade(), change)
                && ns.metadata.deletion_timestamp.is_some()
            {
                c.queue.add(ns.name_any());
            }
        });
        controller
    }

    /// Empties terminating namespaces until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.namespaces.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "namespace", move |name| {
            let this = this.clone();
            async move { this.sync(&name).await }
        })
        .await;
    }

    async fn sync(&self, name: &str) -> Result<Requeue, Error> {
        let Some(ns) = self.namespaces.get(name) else { return Ok(Requeue::No) };
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(Requeue::No);
        }
        let finalizers = ns.spec.as_ref().and_then(|s| s.finalizers.clone()).unwrap_or_default();
        if !finalizers.iter().any(|f| f == "kubernetes") {
            return Ok(Requeue::No);
        }
        let mut discovery_error = None;
        let mut types: Vec<ApiResource> = Vec::new();
        match Discovery::new(self.client.clone()).run().await {
            Ok(d) => {
                for group in d.groups() {
                    for (resource, caps) in group.recommended_resources() {
                        if caps.scope == Scope::Namespaced
                            && caps.supports_operation(verbs::LIST)
                            && caps.supports_operation(verbs::DELETE)
                        {
                            types.push(resource);
                        }
                    }
                }
            }
            Err(e) => discovery_error = Some(e.to_string()),
        }
        // kind → remaining count; finalizer → count.
        let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
        let mut with_finalizers: BTreeMap<String, usize> = BTreeMap::new();
        let mut content_errors = Vec::new();
        for resource in &types {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), name, resource);
            let list = match api.list(&ListParams::default()).await {
                Ok(l) => l,
                Err(e) => {
                    content_errors.push(format!("{}: {e}", resource.plural));
                    continue;
                }
            };
            if list.items.is_empty() {
                continue;
            }
            let group = if resource.group.is_empty() {
                String::new()
            } else {
                format!(".{}", resource.group)
            };
            *remaining.entry(format!("{}{group}", resource.plural)).or_insert(0) +=
                list.items.len();
            for item in &list.items {
                for f in item.finalizers() {
                    *with_finalizers.entry(f.clone()).or_insert(0) += 1;
                }
            }
            let params = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..DeleteParams::default()
            };
            let undeleted = list.items.iter().filter(|i| i.metadata.deletion_timestamp.is_none());
            for item in undeleted {
                match api.delete(&item.name_any(), &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => content_errors.push(format!("{}: {e}", resource.plural)),
                }
            }
        }
        let now = Time(jiff::Timestamp::now());
        let condition =
            |kind: &str, on: bool, reason_on: &str, reason_off: &str, message: String| {
                NamespaceCondition {
                    type_: kind.into(),
                    status: if on { "True" } else { "False" }.into(),
                    reason: Some(if on { reason_on } else { reason_off }.into()),
                    message: on.then_some(message),
                    last_transition_time: Some(now.clone()),
                }
            };
        let conditions = vec![
            condition(
                "NamespaceDeletionDiscoveryFailure",
                discovery_error.is_some(),
                "DiscoveryFailed",
                "ResourcesDiscovered",
                format!(
                    "Discovery failed for some groups: {}",
                    discovery_error.clone().unwrap_or_default()
                ),
            ),
            condition(
                "NamespaceDeletionGroupVersionParsingFailure",
                false,
                "",
                "ParsedGroupVersions",
                String::new(),
            ),
            condition(
                "NamespaceDeletionContentFailure",
                !content_errors.is_empty(),
                "ContentDeletionFailed",
                "ContentDeleted",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    content_errors.len(),
                    content_errors.join(", ")
                ),
            ),
            condition(
                "NamespaceContentRemaining",
                !remaining.is_empty(),
                "SomeResourcesRemain",
                "ContentRemoved",
                format!(
                    "Some resources are remaining: {}",
                    remaining
                        .iter()
                        .map(|(k, n)| format!("{k} has {n} resource instances"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            condition(
                "NamespaceFinalizersRemaining",
                !with_finalizers.is_empty(),
                "SomeFinalizersRemain",
                "ContentHasNoFinalizers",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    with_finalizers
                        .iter()
                        .map(|(k, n)| format!("{k} in {n} resource instances"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        ];
        let api: Api<Namespace> = Api::all(self.client.clone());
        let current = ns.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let same = current.len() == conditions.len()
            && current
                .iter()
                .zip(&conditions)
                .all(|(a, b)| a.type_ == b.type_ && a.status == b.status && a.message == b.message);
        if !same {
            let patch = serde_json::json!({"status": {"conditions": conditions}});
            match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Requeue::No),
                Err(e) => return Err(e.into()),
            }
        }
        if discovery_error.is_some() || !content_errors.is_empty() || !remaining.is_empty() {
            // Pods take their grace period; look again soon.
            return Ok(Requeue::After(Duration::from_secs(2)));
        }
        let Some(latest) = api.get_opt(name).await? else { return Ok(Requeue::No) };
        let mut finalized = latest.clone();
        if let Some(spec) = finalized.spec.as_mut() {
            spec.finalizers = Some(finalizers.into_iter().filter(|f| f != "kubernetes").collect());
        }
        match api.replace_subresource("finalize", name, &PostParams::default(), &finalized).await {
            Ok(_) => Ok(Requeue::No),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Requeue::No),
            Err(e) => Err(e.into()),
        }
    }
}
