//! Events about pods (`Pulling`, `Started`, `BackOff`…), as `kubectl describe` shows them,
//! posted as the kubelet of this node through the controllers' recorder: a repeat bumps
//! `count` and `lastTimestamp`, similar ones are combined, and the caller never waits on the
//! API, as upstream's recorder does for every component.

use k8s_openapi::api::core::v1::ObjectReference;

pub use controller_runtime::events::EventType;

use crate::pods::config::PodKey;

/// Posts events for the agent's node.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: controller_runtime::events::Recorder,
}

impl Recorder {
    /// A recorder reporting as the kubelet of `node`.
    pub fn new(client: kube::Client, node: String) -> Recorder {
        Recorder { inner: controller_runtime::events::Recorder::for_node(client, "kubelet", &node) }
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
        let object = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            field_path: (!field_path.is_empty()).then(|| field_path.to_owned()),
            ..ObjectReference::default()
        };
        self.inner.record(object, kind, reason, message);
    }
}
