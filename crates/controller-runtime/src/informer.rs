//! Shared informers, as upstream's client-go has them: one list+watch per type and process,
//! an in-memory cache every component of the process reads, indexes over it, and handlers
//! that turn changes into work-queue keys. Scheduler and controllers running in one process
//! share one cache of pods instead of holding one copy each.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// A change the cache saw.
#[derive(Debug)]
pub enum Change<'a, K> {
    /// A new object.
    Added(&'a Arc<K>),
    /// An object changed: (old, new).
    Updated(&'a Arc<K>, &'a Arc<K>),
    /// An object is gone (its last known state).
    Deleted(&'a Arc<K>),
}

type Handler<K> = Box<dyn Fn(&Change<'_, K>) + Send + Sync>;
type Transform<K> = Box<dyn Fn(&mut K) + Send + Sync>;
type IndexFn<K> = Box<dyn Fn(&K) -> Vec<String> + Send + Sync>;

struct Cache<K> {
    objects: HashMap<String, Arc<K>>,
    /// index name → index value → object keys.
    indices: HashMap<&'static str, HashMap<String, HashSet<String>>>,
}

/// One type's cache, kept current by a watch.
pub struct Informer<K> {
    cache: RwLock<Cache<K>>,
    indexers: RwLock<Vec<(&'static str, IndexFn<K>)>>,
    handlers: RwLock<Vec<Handler<K>>>,
    transform: RwLock<Option<Transform<K>>>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl<K> Debug for Informer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer").field("type", &std::any::type_name::<K>()).finish()
    }
}

/// `namespace/name`, or `name` for cluster-scoped objects: the key of the cache and queues.
pub fn key_of<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    let name = meta.name.as_deref().unwrap_or("");
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

/// Splits a key into (namespace, name).
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

fn lock_poisoned<T>(e: std::sync::PoisonError<T>) -> T {
    e.into_inner()
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    /// An empty informer; [`Informer::run`] fills it.
    pub fn new() -> Arc<Informer<K>> {
        Arc::new(Informer {
            cache: RwLock::new(Cache { objects: HashMap::new(), indices: HashMap::new() }),
            indexers: RwLock::new(Vec::new()),
            handlers: RwLock::new(Vec::new()),
            transform: RwLock::new(None),
            synced: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Calls `handler` for every change, on the informer's task (it must only enqueue work).
    pub fn on_change(&self, handler: impl Fn(&Change<'_, K>) + Send + Sync + 'static) {
        self.handlers.write().unwrap_or_else(lock_poisoned).push(Box::new(handler));
    }

    /// Trims every object before it is cached (what no reader of the process uses).
    pub fn set_transform(&self, transform: impl Fn(&mut K) + Send + Sync + 'static) {
        *self.transform.write().unwrap_or_else(lock_poisoned) = Some(Box::new(transform));
    }

    /// Maintains an index: `values` gives the index values an object is found under.
    /// Register before [`Informer::run`].
    pub fn add_index(
        &self,
        name: &'static str,
        values: impl Fn(&K) -> Vec<String> + Send + Sync + 'static,
    ) {
        // Components sharing the informer may each ask for the same index: the first one
        // stands (an index of one name is the same function wherever it is asked for).
        let mut indexers = self.indexers.write().unwrap_or_else(lock_poisoned);
        if !indexers.iter().any(|(n, _)| *n == name) {
            indexers.push((name, Box::new(values)));
        }
    }

    /// The object under `key`.
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.cache.read().unwrap_or_else(lock_poisoned).objects.get(key).cloned()
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.cache.read().unwrap_or_else(lock_poisoned).objects.values().cloned().collect()
    }

    /// The objects found under `value` in index `name`.
    pub fn by_index(&self, name: &str, value: &str) -> Vec<Arc<K>> {
        let cache = self.cache.read().unwrap_or_else(lock_poisoned);
        let Some(keys) = cache.indices.get(name).and_then(|i| i.get(value)) else {
            return Vec::new();
        };
        keys.iter().filter_map(|k| cache.objects.get(k).cloned()).collect()
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        self.cache.read().unwrap_or_else(lock_poisoned).objects.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the first full list is in the cache.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|synced| *synced).await;
    }

    fn index_values(&self, object: &K) -> Vec<(&'static str, Vec<String>)> {
        let indexers = self.indexers.read().unwrap_or_else(lock_poisoned);
        indexers.iter().map(|(name, f)| (*name, f(object))).collect()
    }

    fn unindex(cache: &mut Cache<K>, key: &str, values: &[(&'static str, Vec<String>)]) {
        for (name, vs) in values {
            if let Some(index) = cache.indices.get_mut(name) {
                for v in vs {
                    if let Some(keys) = index.get_mut(v) {
                        keys.remove(key);
                        if keys.is_empty() {
                            index.remove(v);
                        }
                    }
                }
            }
        }
    }

    fn index(cache: &mut Cache<K>, key: &str, values: Vec<(&'static str, Vec<String>)>) {
        for (name, vs) in values {
            let index = cache.indices.entry(name).or_default();
            for v in vs {
                index.entry(v).or_default().insert(key.to_owned());
            }
        }
    }

    /// Puts an object into the cache and returns what it replaced.
    fn apply(&self, mut object: K) -> (Arc<K>, Option<Arc<K>>) {
        // managedFields are never read by controllers and are a large share of each object.
        object.meta_mut().managed_fields = None;
        if let Some(transform) = self.transform.read().unwrap_or_else(lock_poisoned).as_ref() {
            transform(&mut object);
        }
        let key = key_of(&object);
        let new_values = self.index_values(&object);
        let object = Arc::new(object);
        let mut cache = self.cache.write().unwrap_or_else(lock_poisoned);
        let old = cache.objects.insert(key.clone(), object.clone());
        if let Some(old) = &old {
            let old_values = self.index_values(old);
            Self::unindex(&mut cache, &key, &old_values);
        }
        Self::index(&mut cache, &key, new_values);
        (object, old)
    }

    fn remove(&self, key: &str) -> Option<Arc<K>> {
        let mut cache = self.cache.write().unwrap_or_else(lock_poisoned);
        let old = cache.objects.remove(key)?;
        let values = self.index_values(&old);
        Self::unindex(&mut cache, key, &values);
        Some(old)
    }

    fn notify(&self, change: &Change<'_, K>) {
        for handler in self.handlers.read().unwrap_or_else(lock_poisoned).iter() {
            handler(change);
        }
    }

    fn applied(&self, object: K) {
        let (new, old) = self.apply(object);
        match old {
            Some(old) if old.resource_version() == new.resource_version() => {}
            Some(old) => self.notify(&Change::Updated(&old, &new)),
            None => self.notify(&Change::Added(&new)),
        }
    }

    /// Lists and watches `api` forever, keeping the cache current (relisting after errors
    /// and expired watches, with back-off).
    pub async fn run(self: Arc<Self>, api: Api<K>, config: watcher::Config) {
        let mut delay = Duration::from_millis(200);
        let mut stream = watcher(api, config).boxed();
        // Keys seen during a relist; what the cache holds beyond them was deleted meanwhile.
        let mut relisted: Option<HashSet<String>> = None;
        loop {
            match stream.next().await {
                None => return,
                Some(Ok(event)) => {
                    delay = Duration::from_millis(200);
                    match event {
                        watcher::Event::Init => relisted = Some(HashSet::new()),
                        watcher::Event::InitApply(object) => {
                            if let Some(seen) = &mut relisted {
                                seen.insert(key_of(&object));
                            }
                            self.applied(object);
                        }
                        watcher::Event::InitDone => {
                            if let Some(seen) = relisted.take() {
                                let gone: Vec<String> = self
                                    .cache
                                    .read()
                                    .unwrap_or_else(lock_poisoned)
                                    .objects
                                    .keys()
                                    .filter(|k| !seen.contains(*k))
                                    .cloned()
                                    .collect();
                                for key in gone {
                                    if let Some(old) = self.remove(&key) {
                                        self.notify(&Change::Deleted(&old));
                                    }
                                }
                            }
                            self.synced.send_replace(true);
                        }
                        watcher::Event::Apply(object) => self.applied(object),
                        watcher::Event::Delete(object) => {
                            let key = key_of(&object);
                            let old = self.remove(&key).unwrap_or_else(|| Arc::new(object));
                            self.notify(&Change::Deleted(&old));
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, kind = %K::kind(&Default::default()), "watch failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// The controller owner reference of an object, if any.
pub fn controller_of<K: Resource>(
    object: &K,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    object.meta().owner_references.as_ref()?.iter().find(|r| r.controller == Some(true))
}

/// Index name: the UID of an object's controller.
pub const BY_CONTROLLER: &str = "controller";
/// Index name: the namespace of objects that have no controller (candidates for adoption).
pub const ORPHANS_BY_NAMESPACE: &str = "orphans";
/// Index name: `spec.nodeName` of pods.
pub const BY_NODE: &str = "node";
/// Index of pods by the claims their volumes use (`namespace/claim`).
pub const BY_CLAIM: &str = "claim";

/// Indexes pods by the claims their volumes use ([`BY_CLAIM`]).
pub fn index_pods_by_claim(pods: &Informer<crate::cached_pod::CachedPod>) {
    pods.add_index(BY_CLAIM, |p| {
        let namespace = p.metadata.namespace.as_deref().unwrap_or("");
        p.claim_names().into_iter().map(|c| format!("{namespace}/{c}")).collect()
    });
}

/// Adds the controller and orphan indexes every owning controller reads.
pub fn index_by_controller<K>(informer: &Informer<K>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    informer.add_index(BY_CONTROLLER, |o| {
        controller_of(o).map(|r| r.uid.clone()).into_iter().collect()
    });
    informer.add_index(ORPHANS_BY_NAMESPACE, |o| match controller_of(o) {
        Some(_) => Vec::new(),
        None => o.meta().namespace.clone().into_iter().collect(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(name: &str, rv: &str, owner: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                owner_references: owner.map(|uid| {
                    vec![OwnerReference {
                        uid: uid.into(),
                        controller: Some(true),
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn indexes_follow_updates_and_deletes() {
        let informer = Informer::<Pod>::new();
        index_by_controller(&informer);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        informer.on_change(move |c| {
            let what = match c {
                Change::Added(p) => format!("add {}", p.name_any()),
                Change::Updated(_, p) => format!("update {}", p.name_any()),
                Change::Deleted(p) => format!("delete {}", p.name_any()),
            };
            log.lock().unwrap().push(what);
        });
        informer.applied(pod("a", "1", None));
        assert_eq!(informer.by_index(ORPHANS_BY_NAMESPACE, "ns").len(), 1);
        informer.applied(pod("a", "2", Some("rs1")));
        informer.applied(pod("a", "2", Some("rs1")));
        assert!(informer.by_index(ORPHANS_BY_NAMESPACE, "ns").is_empty());
        assert_eq!(informer.by_index(BY_CONTROLLER, "rs1").len(), 1);
        informer.remove("ns/a");
        assert!(informer.by_index(BY_CONTROLLER, "rs1").is_empty());
        assert_eq!(*seen.lock().unwrap(), vec!["add a", "update a"]);
    }
}
