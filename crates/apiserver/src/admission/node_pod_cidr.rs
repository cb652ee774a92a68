//! NodePodCIDR (krust's name for what upstream's node-ipam controller does right after a node
//! registers): a new Node gets a /24 pod network from the cluster CIDR, so its agent has its
//! network as soon as it has its Node.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{Attributes, Hold, Mutating, NODE_CIDR_PREFIX, Objects, Operation};
use crate::cidr::Ipv4Cidr;
use crate::status::{ApiError, ApiResult};

/// The plugin, with the cluster network it allocates from.
pub struct NodePodCidr {
    cluster_cidr: Option<Ipv4Cidr>,
    lock: Arc<Mutex<()>>,
}

impl NodePodCidr {
    pub(super) fn new(cluster_cidr: Option<Ipv4Cidr>, lock: Arc<Mutex<()>>) -> Self {
        NodePodCidr { cluster_cidr, lock }
    }
}

impl Mutating for NodePodCidr {
    fn name(&self) -> &'static str {
        "NodePodCIDR"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        attributes.operation == Operation::Create && attributes.is("", "Node")
    }

    fn admit<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a mut Value>,
    ) -> BoxFuture<'a, ApiResult<Hold>> {
        Box::pin(async move {
            let (Some(object), Some(cluster)) = (object, self.cluster_cidr) else {
                return Ok(None);
            };
            if attributes.operation != Operation::Create || !attributes.is("", "Node") {
                return Ok(None);
            }
            let has_cidr = object
                .pointer("/spec/podCIDR")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if has_cidr || cluster.prefix > NODE_CIDR_PREFIX {
                return Ok(None);
            }
            let guard = self.lock.clone().lock_owned().await;
            let nodes = objects.list(attributes.rt, None).await?;
            let used: std::collections::HashSet<String> = nodes
                .iter()
                .filter_map(|n| {
                    n.pointer("/spec/podCIDR").and_then(Value::as_str).map(str::to_owned)
                })
                .collect();
            let count = 1u32 << (NODE_CIDR_PREFIX - cluster.prefix);
            let step = 1u32 << (32 - NODE_CIDR_PREFIX);
            let free = (0..count)
                .filter_map(|i| cluster.nth(i * step))
                .map(|net| format!("{net}/{NODE_CIDR_PREFIX}"))
                .find(|cidr| !used.contains(cidr));
            let Some(cidr) = free else {
                // Upstream registers the node anyway and reports CIDRNotAvailable; so do we.
                tracing::warn!("no pod CIDR left in the cluster CIDR for a new node");
                return Ok(Some(guard));
            };
            let obj = object
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
            let spec = obj.entry("spec").or_insert_with(|| json!({}));
            if let Some(spec) = spec.as_object_mut() {
                spec.insert("podCIDR".into(), json!(cidr));
                spec.insert("podCIDRs".into(), json!([cidr]));
            }
            Ok(Some(guard))
        })
    }
}
