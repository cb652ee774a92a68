//! Events about pods (`Pulling`, `Started`, `BackOff`…), as `kubectl describe` shows them.
//! A repeat of the same event for the same object bumps `count` and `lastTimestamp` instead of
//! creating another, as upstream's recorder does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use crate::pods::config::PodKey;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Normal.
    Normal,
    /// Warning.
    Warning,
}

/// (pod UID, field path, reason, message) of an event already posted.
type EventKey = (String, String, String, String);

/// Posts events for the agent's node; never blocks the caller on the API.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    node: String,
    seen: Arc<Mutex<HashMap<EventKey, (String, i32)>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("node", &self.node).finish()
    }
}

impl Recorder {
    /// A recorder reporting as the kubelet of `node`.
    pub fn new(client: kube::Client, node: String) -> Recorder {
        Recorder { client, node, seen: Arc::default() }
    }

    /// Records an event about `pod` (and the container at `field_path`, e.g.
    /// `spec.containers{web}`, or "" for the pod itself).
    pub fn pod(
        &self,
        pod: &PodKey,
        field_path: &str,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let this = self.clone();
        let pod = pod.clone();
        let field_path = field_path.to_owned();
        let reason = reason.to_owned();
        let message = message.to_owned();
        tokio::spawn(async move {
            if let Err(e) = this.post(&pod, &field_path, kind, &reason, &message).await {
                tracing::debug!(error = %e, reason, "recording an event failed");
            }
        });
    }

    /// Forgets what was recorded about a pod that is gone.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.retain(|k, _| k.0 != uid);
        }
    }

    async fn post(
        &self,
        pod: &PodKey,
        field_path: &str,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &pod.namespace);
        let key = (pod.uid.clone(), field_path.to_owned(), reason.to_owned(), message.to_owned());
        let now = jiff::Timestamp::now();
        let previous = self.seen.lock().ok().and_then(|s| s.get(&key).cloned());
        if let Some((name, count)) = previous {
            let patch = serde_json::json!({ "count": count + 1, "lastTimestamp": now.to_string() });
            if events.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.is_ok() {
                if let Ok(mut seen) = self.seen.lock() {
                    seen.insert(key, (name, count + 1));
                }
                return Ok(());
            }
        }
        let name = format!("{}.{:x}", pod.name, now.as_nanosecond() as u64);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(pod.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: Some(pod.uid.clone()),
                field_path: (!field_path.is_empty()).then(|| field_path.to_owned()),
                ..Default::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(match kind {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        };
        events.create(&PostParams::default(), &event).await?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(key, (name, 1));
        }
        Ok(())
    }
}
