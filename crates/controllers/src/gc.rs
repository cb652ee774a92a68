//! The garbage collector: watches every served type (found through discovery, so custom
//! resources too), keeps a graph of owners and dependents by UID, and acts as upstream's
//! does:
//! - a dependent whose owners are all gone is deleted (Background propagation);
//!   references to owners that are gone while others remain are removed;
//! - an owner deleted with Foreground propagation (`foregroundDeletion` finalizer) has its
//!   dependents deleted (Foreground again, down the tree) and loses the finalizer once no
//!   dependent with `blockOwnerDeletion` remains;
//! - an owner deleted with Orphan propagation (`orphan` finalizer) has its references
//!   removed from its dependents, then loses the finalizer.
//!
//! An owner that is missing from the graph is confirmed gone with a live GET (and UID
//! check), and the dependent itself is read again and written only at that version, so a
//! watch that has not caught up never causes a wrong deletion.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::Error;
use crate::queue::{Queue, Requeue, run_workers};

/// The finalizer of Foreground deletion.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of Orphan deletion.
pub const ORPHAN: &str = "orphan";

#[derive(Debug, Clone)]
struct Kind {
    resource: ApiResource,
    namespaced: bool,
}

#[derive(Debug, Clone)]
struct Item {
    kind: Arc<Kind>,
    namespace: Option<String>,
    name: String,
    resource_version: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Item {
    fn from_meta(kind: &Arc<Kind>, meta: &ObjectMeta) -> Item {
        Item {
            kind: kind.clone(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            owners: meta.owner_references.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
        }
    }

    fn has_finalizer(&self, f: &str) -> bool {
        self.deleting && self.finalizers.iter().any(|x| x == f)
    }
}

#[derive(Debug, Default)]
struct Graph {
    items: HashMap<String, Item>,
    dependents: HashMap<String, HashSet<String>>,
}

type Attach = Box<
    dyn Fn(Arc<GarbageCollector>, Arc<Kind>) -> tokio::sync::oneshot::Receiver<()> + Send + Sync,
>;

/// The garbage collector.
pub struct GarbageCollector {
    client: kube::Client,
    graph: Mutex<Graph>,
    queue: Arc<Queue>,
    /// (apiVersion, kind) → type, from discovery.
    kinds: Mutex<HashMap<(String, String), Arc<Kind>>>,
    /// Types the process already has informers for (`apiVersion/plural`), which the
    /// collector follows instead of watching them a second time.
    shared: Mutex<HashMap<String, Attach>>,
}

impl std::fmt::Debug for GarbageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarbageCollector").finish_non_exhaustive()
    }
}

/// Types the collector does not watch: events never own anything and are many.
fn ignored(resource: &ApiResource) -> bool {
    resource.kind == "Event"
}

impl GarbageCollector {
    /// A collector using `client`.
    pub fn new(client: kube::Client) -> Arc<GarbageCollector> {
        Arc::new(GarbageCollector {
            client,
            graph: Mutex::new(Graph::default()),
            queue: Queue::new(),
            kinds: Mutex::new(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
        })
    }

    /// Follows this type through the process's informer rather than a watch of its own.
    pub fn share<K>(&self, informer: Arc<crate::informer::Informer<K>>)
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let id = format!("{}/{}", K::api_version(&()), K::plural(&()));
        let attach: Attach = Box::new(move |gc, kind| {
            let weak = Arc::downgrade(&gc);
            informer.on_change(move |change| {
                let Some(gc) = weak.upgrade() else { return };
                match change {
                    crate::informer::Change::Added(o) | crate::informer::Change::Updated(_, o) => {
                        gc.observe(&kind, o.meta())
                    }
                    crate::informer::Change::Deleted(o) => gc.forget(o.meta()),
                }
            });
            let (tx, rx) = tokio::sync::oneshot::channel();
            let informer = informer.clone();
            tokio::spawn(async move {
                informer.wait_synced().await;
                let _ = tx.send(());
            });
            rx
        });
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, attach);
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Watches every type and collects garbage until dropped. New types (CRDs) are picked
    /// up by rediscovery every 30 seconds.
    pub async fn run(self: Arc<Self>, workers: usize) {
        let mut watched: HashSet<String> = HashSet::new();
        let mut started_workers = false;
        loop {
            match Discovery::new(self.client.clone()).run().await {
                Ok(discovery) => {
                    let mut pending = Vec::new();
                    for group in discovery.groups() {
                        for (resource, caps) in group.recommended_resources() {
                            if ignored(&resource)
                                || !caps.supports_operation(verbs::WATCH)
                                || !caps.supports_operation(verbs::DELETE)
                            {
                                continue;
                            }
                            let kind = Arc::new(Kind {
                                namespaced: caps.scope == Scope::Namespaced,
                                resource: resource.clone(),
                            });
                            self.kinds
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(
                                    (resource.api_version.clone(), resource.kind.clone()),
                                    kind.clone(),
                                );
                            let id = format!("{}/{}", resource.api_version, resource.plural);
                            if watched.insert(id.clone()) {
                                let shared = self
                                    .shared
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .remove(&id);
                                match shared {
                                    Some(attach) => pending.push(attach(self.clone(), kind)),
                                    None => {
                                        let (tx, rx) = tokio::sync::oneshot::channel();
                                        tokio::spawn(self.clone().watch(kind, tx));
                                        pending.push(rx);
                                    }
                                }
                            }
                        }
                    }
                    if !started_workers {
                        // Act only once every type has been listed, so that the graph knows the
                        // owners before it judges dependents.
                        for rx in pending {
                            let _ = rx.await;
                        }
                        started_workers = true;
                        let this = self.clone();
                        tokio::spawn(run_workers(
                            self.queue.clone(),
                            workers,
                            "garbagecollector",
                            move |uid| {
                                let this = this.clone();
                                async move { this.sync(&uid).await }
                            },
                        ));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "discovery for the garbage collector failed"),
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }

    async fn watch(self: Arc<Self>, kind: Arc<Kind>, synced: tokio::sync::oneshot::Sender<()>) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &kind.resource);
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        let mut synced = Some(synced);
        let mut delay = Duration::from_millis(200);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    delay = Duration::from_millis(200);
                    self.observe(&kind, &o.metadata);
                }
                Ok(watcher::Event::Delete(o)) => self.forget(&o.metadata),
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = synced.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(watcher::Event::Init) => {}
                Err(e) => {
                    // A type that went away (a deleted CRD) ends its watch.
                    if let watcher::Error::InitialListFailed(kube::Error::Api(s)) = &e
                        && s.code == 404
                    {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                        return;
                    }
                    tracing::warn!(kind = %kind.resource.kind, error = %e, "garbage collector watch failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn observe(&self, kind: &Arc<Kind>, meta: &ObjectMeta) {
        let Some(uid) = meta.uid.clone() else { return };
        let item = Item::from_meta(kind, meta);
        let mut enqueue = Vec::new();
        {
            let mut graph = self.graph();
            let old = graph.items.insert(uid.clone(), item.clone());
            if let Some(old) = &old {
                for o in &old.owners {
                    if let Some(set) = graph.dependents.get_mut(&o.uid) {
                        set.remove(&uid);
                    }
                }
            }
            for o in &item.owners {
                graph.dependents.entry(o.uid.clone()).or_default().insert(uid.clone());
            }
            let owner_needs_look = item.owners.iter().any(|o| match graph.items.get(&o.uid) {
                None => true,
                Some(owner) => owner.has_finalizer(FOREGROUND) || owner.has_finalizer(ORPHAN),
            });
            if owner_needs_look || item.has_finalizer(FOREGROUND) || item.has_finalizer(ORPHAN) {
                enqueue.push(uid.clone());
            }
            // An owner waiting for its dependents looks again when one of them changes (its
            // reference may have stopped blocking).
            for o in &item.owners {
                if graph.items.get(&o.uid).is_some_and(|owner| owner.has_finalizer(FOREGROUND)) {
                    enqueue.push(o.uid.clone());
                }
            }
            // An owner that just started a Foreground deletion: its dependents go first.
            let newly_foreground = item.has_finalizer(FOREGROUND)
                && !old.as_ref().is_some_and(|o| o.has_finalizer(FOREGROUND));
            if newly_foreground && let Some(deps) = graph.dependents.get(&uid) {
                enqueue.extend(deps.iter().cloned());
            }
        }
        for uid in enqueue {
            self.queue.add(uid);
        }
    }

    fn forget(&self, meta: &ObjectMeta) {
        let Some(uid) = meta.uid.clone() else { return };
        let mut enqueue = Vec::new();
        {
            let mut graph = self.graph();
            let Some(old) = graph.items.remove(&uid) else { return };
            for o in &old.owners {
                if let Some(set) = graph.dependents.get_mut(&o.uid) {
                    set.remove(&uid);
                }
                // An owner waiting for its dependents may be done now.
                if graph.items.get(&o.uid).is_some_and(|owner| owner.has_finalizer(FOREGROUND)) {
                    enqueue.push(o.uid.clone());
                }
            }
            // Its dependents lost an owner.
            if let Some(deps) = graph.dependents.get(&uid) {
                enqueue.extend(deps.iter().cloned());
            }
        }
        for uid in enqueue {
            self.queue.add(uid);
        }
    }

    fn api_for(&self, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) if kind.namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &kind.resource)
            }
            _ => Api::all_with(self.client.clone(), &kind.resource),
        }
    }

    /// Whether the owner a reference names exists (with that UID), asking the API when the
    /// graph does not know it.
    async fn owner_exists(
        &self,
        owner: &OwnerReference,
        namespace: Option<&str>,
    ) -> Result<bool, Error> {
        if self.graph().items.contains_key(&owner.uid) {
            return Ok(true);
        }
        let kind = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(owner.api_version.clone(), owner.kind.clone()))
            .cloned();
        // A reference to a type nobody serves names nothing that exists.
        let Some(kind) = kind else { return Ok(false) };
        match self.api_for(&kind, namespace).get_opt(&owner.name).await? {
            Some(found) => Ok(found.uid().as_deref() == Some(owner.uid.as_str())),
            None => Ok(false),
        }
    }

    async fn sync(&self, uid: &str) -> Result<Requeue, Error> {
        let Some(item) = self.graph().items.get(uid).cloned() else { return Ok(Requeue::No) };
        let api = self.api_for(&item.kind, item.namespace.as_deref());
        if item.has_finalizer(ORPHAN) {
            self.orphan_dependents(uid).await?;
            self.remove_finalizer(&api, &item, ORPHAN).await?;
            return Ok(Requeue::No);
        }
        if item.has_finalizer(FOREGROUND) {
            let blocking = {
                let graph = self.graph();
                graph.dependents.get(uid).into_iter().flatten().any(|d| {
                    graph.items.get(d).is_some_and(|dep| {
                        dep.owners
                            .iter()
                            .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
                    })
                })
            };
            if !blocking {
                self.remove_finalizer(&api, &item, FOREGROUND).await?;
            }
            return Ok(Requeue::No);
        }
        if item.owners.is_empty() || item.deleting {
            return Ok(Requeue::No);
        }
        let (dangling, waiting) = self.departing_owners(&item).await?;
        if dangling.is_empty() && waiting.is_empty() {
            return Ok(Requeue::No);
        }
        // The graph can lag behind the object: an owner's deletion arrives on the owner's
        // watch, possibly before the update that removed the reference to it arrives on this
        // one (an Orphan deletion makes exactly that sequence). So, as upstream, what is done
        // is decided on the object as it is now, and written only if it is still that.
        let Some(mut item) = self.latest(&api, &item, uid).await? else { return Ok(Requeue::No) };
        if item.owners.is_empty() || item.deleting {
            return Ok(Requeue::No);
        }
        let (dangling, waiting) = self.departing_owners(&item).await?;
        let solid = item.owners.len() - dangling.len() - waiting.len();
        if solid == 0 {
            // A dependent of this object that itself waits for its dependents may close a
            // circle of owners (A owns B owns C owns A) that would wait forever: as upstream,
            // this object's references then stop blocking its owners before it goes.
            if !waiting.is_empty() {
                let in_circle = {
                    let graph = self.graph();
                    graph.dependents.get(uid).into_iter().flatten().any(|d| {
                        graph.items.get(d).is_some_and(|dep| dep.has_finalizer(FOREGROUND))
                    })
                };
                if in_circle && item.owners.iter().any(|o| o.block_owner_deletion == Some(true)) {
                    let unblocked: Vec<OwnerReference> = item
                        .owners
                        .iter()
                        .map(|o| OwnerReference { block_owner_deletion: Some(false), ..o.clone() })
                        .collect();
                    let patch = serde_json::json!({"metadata": {"ownerReferences": unblocked, "resourceVersion": item.resource_version}});
                    match api
                        .patch(&item.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        // The deletion below is preconditioned on this write's version.
                        Ok(patched) => {
                            item.resource_version =
                                patched.metadata.resource_version.unwrap_or_default();
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Requeue::No),
                        // Changed meanwhile: look again at what it is now.
                        Err(kube::Error::Api(s)) if s.code == 409 => {
                            return Ok(Requeue::After(std::time::Duration::from_millis(200)));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            // Going down with its owners: in the foreground when one of them waits for it.
            let policy = if waiting.is_empty() {
                PropagationPolicy::Background
            } else {
                PropagationPolicy::Foreground
            };
            let params = DeleteParams {
                propagation_policy: Some(policy),
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_owned()),
                    resource_version: Some(item.resource_version.clone()),
                }),
                ..DeleteParams::default()
            };
            match api.delete(&item.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                // Changed since it was read: look again at what it is now.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Ok(Requeue::After(std::time::Duration::from_millis(200)));
                }
                Err(e) => return Err(e.into()),
            }
            return Ok(Requeue::No);
        }
        if !dangling.is_empty() || !waiting.is_empty() {
            // Other owners keep it: only the references to departing owners go.
            let remaining: Vec<&OwnerReference> = item
                .owners
                .iter()
                .filter(|o| !dangling.contains(&o.uid) && !waiting.contains(&o.uid))
                .collect();
            let patch = serde_json::json!({"metadata": {"ownerReferences": remaining, "resourceVersion": item.resource_version}});
            match api.patch(&item.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Ok(Requeue::After(std::time::Duration::from_millis(200)));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Requeue::No)
    }

    /// The owners of `item` that are gone ("dangling") and those deleting in the foreground
    /// ("waiting"); the others are solid.
    async fn departing_owners(&self, item: &Item) -> Result<(Vec<String>, Vec<String>), Error> {
        let mut dangling = Vec::new();
        let mut waiting = Vec::new();
        for owner in &item.owners {
            if self.graph().items.get(&owner.uid).is_some_and(|o| o.has_finalizer(FOREGROUND)) {
                waiting.push(owner.uid.clone());
            } else if !self.owner_exists(owner, item.namespace.as_deref()).await? {
                dangling.push(owner.uid.clone());
            }
        }
        Ok((dangling, waiting))
    }

    /// `item` as the API has it now; `None` when it is gone or was replaced (another UID).
    async fn latest(
        &self,
        api: &Api<DynamicObject>,
        item: &Item,
        uid: &str,
    ) -> Result<Option<Item>, Error> {
        let Some(found) = api.get_opt(&item.name).await? else { return Ok(None) };
        if found.metadata.uid.as_deref() != Some(uid) {
            return Ok(None);
        }
        Ok(Some(Item::from_meta(&item.kind, &found.metadata)))
    }

    async fn orphan_dependents(&self, owner_uid: &str) -> Result<(), Error> {
        let dependents: Vec<Item> = {
            let graph = self.graph();
            graph
                .dependents
                .get(owner_uid)
                .into_iter()
                .flatten()
                .filter_map(|d| graph.items.get(d).cloned())
                .collect()
        };
        for dep in dependents {
            let remaining: Vec<&OwnerReference> =
                dep.owners.iter().filter(|o| o.uid != owner_uid).collect();
            let patch = serde_json::json!({"metadata": {"ownerReferences": remaining, "resourceVersion": dep.resource_version}});
            let api = self.api_for(&dep.kind, dep.namespace.as_deref());
            match api.patch(&dep.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn remove_finalizer(
        &self,
        api: &Api<DynamicObject>,
        item: &Item,
        finalizer: &str,
    ) -> Result<(), Error> {
        let remaining: Vec<&String> = item.finalizers.iter().filter(|f| *f != finalizer).collect();
        let patch = serde_json::json!({"metadata": {"finalizers": remaining, "resourceVersion": item.resource_version}});
        match api.patch(&item.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
