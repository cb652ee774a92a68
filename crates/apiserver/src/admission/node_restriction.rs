//! NodeRestriction, as upstream's: what a node agent (`system:node:<name>`) may write. It
//! may create, change and delete only its own Node (and set none of the labels reserved to
//! the cluster's operators), write the status of and delete (so evict, which deletes
//! through the registry) only pods bound to it,
//! create only mirror pods, and ask only for tokens bound to its own pods. The Node
//! authorizer decides what it may reach; this decides what it may do to it.

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Attributes, Objects, Operation, Validating};
use crate::node_authorizer::node_of;
use crate::status::{ApiError, ApiResult};

const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const RESTRICTED_PREFIX: &str = "node-restriction.kubernetes.io/";

/// Labels in the `kubernetes.io` and `k8s.io` namespaces a node may set on itself
/// (upstream's kubelet labels).
const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];

/// Whether a node may set label `key` on itself.
pub fn node_may_set_label(key: &str) -> bool {
    if key.starts_with(RESTRICTED_PREFIX) {
        return false;
    }
    let Some((namespace, _)) = key.split_once('/') else { return true };
    if KUBELET_LABELS.contains(&key) {
        return true;
    }
    let within = |domain: &str| namespace == domain || namespace.ends_with(&format!(".{domain}"));
    if within("kubelet.kubernetes.io") || within("node.kubernetes.io") {
        return true;
    }
    !(within("kubernetes.io") || within("k8s.io"))
}

/// The NodeRestriction plugin.
pub struct NodeRestriction;

fn text<'v>(object: Option<&'v Value>, pointer: &str) -> &'v str {
    object.and_then(|o| o.pointer(pointer)).and_then(Value::as_str).unwrap_or("")
}

fn labels(object: Option<&Value>) -> serde_json::Map<String, Value> {
    object
        .and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn check_node(node: &str, attributes: &Attributes<'_>, object: Option<&Value>) -> ApiResult<()> {
    if attributes.name != node
        && !(attributes.operation == Operation::Create && text(object, "/metadata/name") == node)
    {
        return Err(ApiError::forbidden(format!(
            "node \"{node}\" is not allowed to modify node \"{}\"",
            if attributes.name.is_empty() {
                text(object, "/metadata/name")
            } else {
                attributes.name
            }
        )));
    }
    if attributes.subresource.is_some() || attributes.operation == Operation::Delete {
        return Ok(());
    }
    // Taints of an existing node are its operators' (a node lifting its own NoSchedule
    // would draw pods the operators kept away).
    if attributes.operation == Operation::Update
        && object.and_then(|o| o.pointer("/spec/taints"))
            != attributes.old.and_then(|o| o.pointer("/spec/taints"))
    {
        return Err(ApiError::forbidden(format!(
            "node \"{node}\" is not allowed to modify taints"
        )));
    }
    // Labels the node adds or changes; ones it keeps as they were are not its doing.
    let old = labels(attributes.old);
    let new = labels(object);
    let changed = new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, _)| k);
    let removed = old.keys().filter(|k| !new.contains_key(*k));
    let mut refused: Vec<&str> =
        changed.chain(removed).map(String::as_str).filter(|k| !node_may_set_label(k)).collect();
    refused.sort_unstable();
    if refused.is_empty() {
        return Ok(());
    }
    let verb = if attributes.operation == Operation::Create { "set" } else { "modify" };
    Err(ApiError::forbidden(format!(
        "node \"{node}\" is not allowed to {verb} the following labels: {}",
        refused.join(", ")
    )))
}

fn check_pod(node: &str, attributes: &Attributes<'_>, object: Option<&Value>) -> ApiResult<()> {
    match (attributes.operation, attributes.subresource) {
        (Operation::Create, None) => {
            let annotations = object.and_then(|o| o.pointer("/metadata/annotations"));
            if annotations.and_then(|a| a.get(MIRROR_ANNOTATION)).is_none() {
                return Err(ApiError::forbidden(format!(
                    "pod does not have \"{MIRROR_ANNOTATION}\" annotation, node \"{node}\" can only create mirror pods"
                )));
            }
            if text(object, "/spec/nodeName") != node {
                return Err(ApiError::forbidden(format!(
                    "node \"{node}\" can only create pods with spec.nodeName set to itself"
                )));
            }
            Ok(())
        }
        (Operation::Update, Some("status")) | (Operation::Delete, None) => {
            if text(attributes.old, "/spec/nodeName") != node {
                let what = if attributes.operation == Operation::Delete {
                    "delete pods"
                } else {
                    "update pod status for pods"
                };
                return Err(ApiError::forbidden(format!(
                    "node \"{node}\" can only {what} with spec.nodeName set to itself"
                )));
            }
            Ok(())
        }
        (Operation::Update, None) => {
            Err(ApiError::forbidden(format!("node \"{node}\" is not allowed to update pods")))
        }
        _ => Ok(()),
    }
}

/// krust's local volumes: a node may only let go of a volume it holds, by removing the
/// `krust.io/local-volume` finalizer once it wiped the data; nothing else of any volume.
fn check_volume(node: &str, attributes: &Attributes<'_>, object: Option<&Value>) -> ApiResult<()> {
    const FINALIZER: &str = "krust.io/local-volume";
    const NODE_LABEL: &str = "/metadata/labels/krust.io~1local-volume-node";
    let refuse = || {
        Err(ApiError::forbidden(format!(
            "node \"{node}\" may only remove the {FINALIZER} finalizer of a volume it holds"
        )))
    };
    let (Some(old), Some(new), Operation::Update, None) =
        (attributes.old, object, attributes.operation, attributes.subresource)
    else {
        return refuse();
    };
    if text(Some(old), NODE_LABEL) != node {
        return refuse();
    }
    let without = |o: &Value| {
        let mut o = o.clone();
        if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for volatile in ["finalizers", "resourceVersion", "managedFields", "generation"] {
                meta.remove(volatile);
            }
        }
        o
    };
    let finalizers = |o: &Value| -> Vec<String> {
        o.pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let mut expected = finalizers(old);
    expected.retain(|f| f != FINALIZER);
    if without(old) != without(new) || finalizers(new) != expected {
        return refuse();
    }
    Ok(())
}

/// krust's local volumes: a node's CSIStorageCapacity is named after it and speaks of its
/// own node only (the scheduler trusts it for that node's free space).
fn check_capacity(
    node: &str,
    attributes: &Attributes<'_>,
    object: Option<&Value>,
) -> ApiResult<()> {
    if attributes.operation == Operation::Delete {
        return Err(ApiError::forbidden(format!(
            "node \"{node}\" may not delete CSIStorageCapacity objects"
        )));
    }
    let own_name = text(object, "/metadata/name") == format!("local-path-{node}");
    let labels =
        object.and_then(|o| o.pointer("/nodeTopology/matchLabels")).and_then(Value::as_object);
    let own_topology =
        labels.is_some_and(|l| {
            l.len() == 1 && l.get("kubernetes.io/hostname").and_then(Value::as_str) == Some(node)
        }) && object.and_then(|o| o.pointer("/nodeTopology/matchExpressions")).is_none();
    if own_name && own_topology {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "node \"{node}\" may only publish CSIStorageCapacity local-path-{node} for its own hostname"
        )))
    }
}

async fn check_token(
    node: &str,
    objects: &dyn Objects,
    attributes: &Attributes<'_>,
    object: Option<&Value>,
) -> ApiResult<()> {
    let bound = object.and_then(|o| o.pointer("/spec/boundObjectRef"));
    if text(bound, "/kind") != "Pod" {
        return Err(ApiError::forbidden(format!(
            "node \"{node}\" can only request tokens bound to pods"
        )));
    }
    let pods = objects.served("", "v1", "pods")?;
    let name = text(bound, "/name");
    let pod = objects.get(&pods, attributes.namespace, name).await.map_err(|_| {
        ApiError::forbidden(format!(
            "node \"{node}\" requested a token bound to pod {name:?}, which does not exist"
        ))
    })?;
    if text(Some(&pod), "/spec/nodeName") != node {
        return Err(ApiError::forbidden(
            "node requested token bound to a pod scheduled on a different node",
        ));
    }
    let uid = text(bound, "/uid");
    if !uid.is_empty() && uid != text(Some(&pod), "/metadata/uid") {
        return Err(ApiError::forbidden(format!(
            "the UID in the bound object reference ({uid}) does not match the UID in record"
        )));
    }
    Ok(())
}

impl Validating for NodeRestriction {
    fn name(&self) -> &'static str {
        "NodeRestriction"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        attributes.user.and_then(node_of).is_some()
            && attributes.rt.is_builtin()
            && ((attributes.rt.group.is_empty()
                && matches!(
                    attributes.rt.kind.as_str(),
                    "Node" | "Pod" | "ServiceAccount" | "PersistentVolume"
                ))
                || attributes.is("storage.k8s.io", "CSIStorageCapacity"))
    }

    fn validate<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let Some(node) = attributes.user.and_then(node_of) else { return Ok(()) };
            match attributes.rt.kind.as_str() {
                "Node" => check_node(node, attributes, object),
                "Pod" => check_pod(node, attributes, object),
                "PersistentVolume" => check_volume(node, attributes, object),
                "CSIStorageCapacity" => check_capacity(node, attributes, object),
                "ServiceAccount" if attributes.subresource == Some("token") => {
                    check_token(node, objects, attributes, object).await
                }
                _ => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_set_their_own_labels_but_not_the_operators() {
        for allowed in [
            "kubernetes.io/hostname",
            "topology.kubernetes.io/zone",
            "node.kubernetes.io/exclude-from-external-load-balancers",
            "kubelet.kubernetes.io/x",
            "example.com/disk",
            "disk",
        ] {
            assert!(node_may_set_label(allowed), "{allowed}");
        }
        for refused in [
            "node-restriction.kubernetes.io/trusted",
            "node-role.kubernetes.io/control-plane",
            "kubernetes.io/other",
            "sub.k8s.io/x",
        ] {
            assert!(!node_may_set_label(refused), "{refused}");
        }
    }
}
