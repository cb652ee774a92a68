//! The ConfigMaps and Secrets the pods of this node refer to, each kept by a watch of that one
//! object (upstream kubelet's "Watch" change-detection strategy): a pod sync reads them here
//! instead of a GET per reference per sync, and a change wakes the pods that use the object
//! at once, so a mounted ConfigMap's new data reaches the pod without waiting for a resync.
//! A watch lives while some pod of this node refers to its object.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::Notify;

/// Which object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ObjectKey {
    /// A Secret (else a ConfigMap).
    pub(crate) secret: bool,
    /// Its namespace.
    pub(crate) namespace: String,
    /// Its name.
    pub(crate) name: String,
}

/// An object's data as its watch last saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seen {
    /// The watch has not listed yet.
    Unknown,
    /// It does not exist.
    Missing,
    /// Its data (values as bytes).
    Present(BTreeMap<String, Vec<u8>>),
}

struct Entry {
    /// The pods (UIDs) that refer to it, and how to wake each.
    users: HashMap<String, Arc<Notify>>,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

/// The cache; shared by every pod worker of the node.
pub(crate) struct ObjectCache {
    client: kube::Client,
    entries: Mutex<HashMap<ObjectKey, Entry>>,
    /// ServiceAccount tokens of the pods here, by (pod UID, audience, lifetime asked).
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
}

/// Which token: (pod UID, audience, lifetime asked).
type TokenKey = (String, String, i64);

/// A token and when to ask for a new one.
struct CachedToken {
    token: String,
    refresh_at: std::time::Instant,
}

impl std::fmt::Debug for ObjectCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCache").finish_non_exhaustive()
    }
}

fn config_map_data(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> =
        cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
    data
}

fn secret_data(s: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> =
        s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    data.extend(s.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
    data
}

/// The ConfigMaps and Secrets (names) `pod` refers to, in env, envFrom and volumes.
pub(crate) fn references(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    let Some(spec) = pod.spec.as_ref() else { return (cms, secrets) };
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        for from in c.env_from.iter().flatten() {
            cms.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
        }
        for e in c.env.iter().flatten() {
            if let Some(vf) = e.value_from.as_ref() {
                cms.extend(vf.config_map_key_ref.as_ref().map(|r| r.name.clone()));
                secrets.extend(vf.secret_key_ref.as_ref().map(|r| r.name.clone()));
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        cms.extend(v.config_map.as_ref().map(|c| c.name.clone()));
        secrets.extend(v.secret.as_ref().and_then(|s| s.secret_name.clone()));
        for source in v.projected.as_ref().and_then(|p| p.sources.as_ref()).into_iter().flatten() {
            cms.extend(source.config_map.as_ref().map(|c| c.name.clone()));
            secrets.extend(source.secret.as_ref().map(|s| s.name.clone()));
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

impl ObjectCache {
    /// An empty cache reading through `client`.
    pub(crate) fn new(client: kube::Client) -> Arc<ObjectCache> {
        Arc::new(ObjectCache {
            client,
            entries: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Entry>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts keeping what `pod` (UID `uid`) refers to; `wake` is notified when one changes.
    pub(crate) fn track(self: &Arc<Self>, uid: &str, pod: &Pod, wake: &Arc<Notify>) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let (config_maps, secrets) = references(pod);
        let keys = config_maps
            .into_iter()
            .map(|name| ObjectKey { secret: false, namespace: namespace.clone(), name })
            .chain(secrets.into_iter().map(|name| ObjectKey {
                secret: true,
                namespace: namespace.clone(),
                name,
            }));
        let mut entries = self.lock();
        for key in keys {
            let entry = entries.entry(key.clone()).or_insert_with(|| {
                let seen = Arc::new(Mutex::new(Seen::Unknown));
                let task = tokio::spawn(follow(
                    self.client.clone(),
                    key,
                    seen.clone(),
                    Arc::downgrade(self),
                ));
                Entry { users: HashMap::new(), seen, task }
            });
            entry.users.insert(uid.to_owned(), wake.clone());
        }
    }

    /// Stops keeping what only the pod `uid` referred to.
    pub(crate) fn untrack(&self, uid: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(pod, _, _), _| pod != uid);
        self.lock().retain(|_, entry| {
            entry.users.remove(uid);
            if entry.users.is_empty() {
                entry.task.abort();
                return false;
            }
            true
        });
    }

    /// What the watch of `key` last saw (`Unknown` when it is not kept).
    /// A token of `pod`'s ServiceAccount bound to the pod, for `audience` (empty: the API
    /// server's) and `expiration` seconds: the one held until 80 % of its life has passed
    /// (as the kubelet refreshes), then a new one from the API server's TokenRequest.
    pub(crate) async fn token(
        &self,
        pod: &Pod,
        audience: &str,
        expiration: i64,
    ) -> Result<String, kube::Error> {
        use k8s_openapi::api::authentication::v1::{
            BoundObjectReference, TokenRequest, TokenRequestSpec,
        };
        use k8s_openapi::api::core::v1::ServiceAccount;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = (uid.clone(), audience.to_owned(), expiration);
        let now = std::time::Instant::now();
        if let Some(cached) = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .filter(|c| c.refresh_at > now)
        {
            return Ok(cached.token.clone());
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: (!audience.is_empty()).then(|| vec![audience.to_owned()]),
                expiration_seconds: Some(expiration),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: Some(uid),
                }),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(self.client.clone(), &namespace);
        let answer: TokenRequest = api
            .create_subresource("token", &account, &kube::api::PostParams::default(), &request)
            .await?;
        let token = answer.status.and_then(|s| s.token).unwrap_or_default();
        let refresh_in =
            std::time::Duration::from_secs(u64::try_from(expiration * 4 / 5).unwrap_or(0));
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, CachedToken { token: token.clone(), refresh_at: now + refresh_in });
        Ok(token)
    }

    pub(crate) fn get(&self, key: &ObjectKey) -> Seen {
        let entries = self.lock();
        let Some(entry) = entries.get(key) else { return Seen::Unknown };
        entry.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Wakes the pods using `key` (after its watch saw a change).
    fn wake(&self, key: &ObjectKey) {
        if let Some(entry) = self.lock().get(key) {
            for wake in entry.users.values() {
                wake.notify_one();
            }
        }
    }
}

/// Follows one object until aborted, recording what it holds.
async fn follow(
    client: kube::Client,
    key: ObjectKey,
    seen: Arc<Mutex<Seen>>,
    cache: std::sync::Weak<ObjectCache>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    let set = |value: Seen| {
        let mut current = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *current != value;
        *current = value;
        changed
    };
    // One loop per kind, as the two watches yield different types.
    macro_rules! follow_kind {
        ($ty:ty, $data:expr) => {{
            let api: Api<$ty> = Api::namespaced(client, &key.namespace);
            let mut events = watcher(api, config).boxed();
            let mut listed_any = false;
            while let Some(event) = events.next().await {
                let changed = match event {
                    Ok(watcher::Event::Init) => {
                        listed_any = false;
                        false
                    }
                    Ok(watcher::Event::InitApply(object) | watcher::Event::Apply(object)) => {
                        listed_any = true;
                        set(Seen::Present($data(object)))
                    }
                    Ok(watcher::Event::InitDone) if !listed_any => set(Seen::Missing),
                    Ok(watcher::Event::InitDone) => false,
                    Ok(watcher::Event::Delete(_)) => set(Seen::Missing),
                    Err(e) => {
                        tracing::debug!(object = %key.name, error = %e, "object watch failed; retrying");
                        false
                    }
                };
                if changed && let Some(cache) = cache.upgrade() {
                    cache.wake(&key);
                }
            }
        }};
    }
    if key.secret {
        follow_kind!(Secret, secret_data)
    } else {
        follow_kind!(ConfigMap, config_map_data)
    }
}
