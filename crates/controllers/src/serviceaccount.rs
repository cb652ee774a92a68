//! The ServiceAccount controller: every active namespace has a `default` ServiceAccount,
//! recreated if deleted.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use crate::Error;
use crate::informer::{Change, Informer};
use crate::queue::{Queue, Requeue, run_workers};

const DEFAULT: &str = "default";

/// The ServiceAccount controller; keys are namespace names.
pub struct ServiceAccountController {
    client: kube::Client,
    namespaces: Arc<Informer<Namespace>>,
    service_accounts: Arc<Informer<ServiceAccount>>,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for ServiceAccountController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountController").finish_non_exhaustive()
    }
}

impl ServiceAccountController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(
        client: kube::Client,
        namespaces: Arc<Informer<Namespace>>,
        service_accounts: Arc<Informer<ServiceAccount>>,
    ) -> Arc<ServiceAccountController> {
        let controller = Arc::new(ServiceAccountController {
            client,
            namespaces: namespaces.clone(),
            service_accounts: service_accounts.clone(),
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        namespaces.on_change(move |change| {
            if let (Some(c), Change::Added(ns) | Change::Updated(_, ns)) = (this.upgrade(), change)
            {
                c.queue.add(ns.name_any());
            }
        });
        let this = Arc::downgrade(&controller);
        service_accounts.on_change(move |change| {
            if let (Some(c), Change::Deleted(sa)) = (this.upgrade(), change)
                && sa.name_any() == DEFAULT
            {
                c.queue.add(sa.namespace().unwrap_or_default());
            }
        });
        controller
    }

    /// Syncs namespaces until dropped.
    pub async fn run(self: Arc<Self>) {
        self.namespaces.wait_synced().await;
        self.service_accounts.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), 1, "serviceaccount", move |ns| {
            let this = this.clone();
            async move { this.sync(&ns).await }
        })
        .await;
    }

    async fn sync(&self, namespace: &str) -> Result<Requeue, Error> {
        let Some(ns) = self.namespaces.get(namespace) else { return Ok(Requeue::No) };
        let active = ns.metadata.deletion_timestamp.is_none()
            && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating");
        if !active || self.service_accounts.get(&format!("{namespace}/{DEFAULT}")).is_some() {
            return Ok(Requeue::No);
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta { name: Some(DEFAULT.into()), ..ObjectMeta::default() },
            ..ServiceAccount::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => Ok(Requeue::No),
            // Exists (a stale cache) or the namespace is going away meanwhile.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => {
                Ok(Requeue::No)
            }
            Err(e) => Err(e.into()),
        }
    }
}
