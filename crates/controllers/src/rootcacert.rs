//! The root CA certificate publisher: every active namespace has the ConfigMap
//! `kube-root-ca.crt` holding the cluster CA (`ca.crt`), which pods' projected
//! ServiceAccount volumes mount to verify the API server. Recreated when deleted and put back
//! when edited, as upstream's `root-ca-cert-publisher`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{PostParams, ResourceExt};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::Error;
use crate::informer::{Change, Informer};
use crate::queue::{Queue, Requeue, run_workers};

/// The ConfigMap's name.
pub const NAME: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// The publisher; keys are namespace names.
pub struct RootCaCertPublisher {
    client: kube::Client,
    /// Watches the published ConfigMaps in every namespace (upstream reads them through the
    /// controller manager's shared informers; the publisher's own role only writes them).
    reader: kube::Client,
    namespaces: Arc<Informer<Namespace>>,
    ca: String,
    queue: Arc<Queue>,
    /// The ConfigMaps of that name, as their watch last saw them (filled by `run`).
    published: std::sync::Mutex<Option<Store<ConfigMap>>>,
}

impl std::fmt::Debug for RootCaCertPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCaCertPublisher").finish_non_exhaustive()
    }
}

impl RootCaCertPublisher {
    /// Hooks the publisher to the namespaces (before they start); `ca` is the PEM bundle;
    /// it writes through `client` and watches through `reader`.
    pub fn new(
        client: kube::Client,
        reader: kube::Client,
        namespaces: Arc<Informer<Namespace>>,
        ca: String,
    ) -> Arc<RootCaCertPublisher> {
        let publisher = Arc::new(RootCaCertPublisher {
            client,
            reader,
            namespaces: namespaces.clone(),
            ca,
            queue: Queue::new(),
            published: std::sync::Mutex::new(None),
        });
        let this = Arc::downgrade(&publisher);
        namespaces.on_change(move |change| {
            if let (Some(p), Change::Added(ns) | Change::Updated(_, ns)) = (this.upgrade(), change)
            {
                p.queue.add(ns.name_any());
            }
        });
        publisher
    }

    /// Publishes until dropped; the ConfigMaps of that name are watched so that a deleted or
    /// edited one is put back.
    pub async fn run(self: Arc<Self>) {
        self.namespaces.wait_synced().await;
        let api: Api<ConfigMap> = Api::all(self.reader.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
        let queue = self.queue.clone();
        let (store, writer) = reflector::store();
        *self.published.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(store.clone());
        let follow = reflector::reflector(writer, watcher(api, config)).default_backoff().for_each(
            move |event| {
                match event {
                    Ok(watcher::Event::Apply(cm) | watcher::Event::Delete(cm)) => {
                        queue.add(cm.namespace().unwrap_or_default());
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "watching kube-root-ca.crt"),
                }
                futures::future::ready(())
            },
        );
        let ready = store.clone();
        let this = self.clone();
        let workers = async move {
            let _ = ready.wait_until_ready().await;
            run_workers(self.queue.clone(), 1, "root-ca-cert-publisher", move |ns| {
                let this = this.clone();
                async move { this.sync(&ns).await }
            })
            .await;
        };
        tokio::join!(follow, workers);
    }

    async fn sync(&self, namespace: &str) -> Result<Requeue, Error> {
        let Some(ns) = self.namespaces.get(namespace) else { return Ok(Requeue::No) };
        if ns.metadata.deletion_timestamp.is_some()
            || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
        {
            return Ok(Requeue::No);
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let data = BTreeMap::from([("ca.crt".to_owned(), self.ca.clone())]);
        let store =
            self.published.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let current = store
            .and_then(|s| s.get(&ObjectRef::new(NAME).within(namespace)))
            .map(|cm| (*cm).clone());
        match current {
            Some(current) if current.data.as_ref() == Some(&data) => Ok(Requeue::No),
            Some(mut current) => {
                current.data = Some(data);
                match api.replace(NAME, &PostParams::default(), &current).await {
                    Ok(_) => Ok(Requeue::No),
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        Ok(Requeue::After(std::time::Duration::from_millis(100)))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(NAME.into()),
                        annotations: Some(BTreeMap::from([(
                            "kubernetes.io/description".to_owned(),
                            DESCRIPTION.to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    data: Some(data),
                    ..ConfigMap::default()
                };
                match api.create(&PostParams::default(), &cm).await {
                    Ok(_) => Ok(Requeue::No),
                    Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404 | 409) => {
                        Ok(Requeue::No)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}
