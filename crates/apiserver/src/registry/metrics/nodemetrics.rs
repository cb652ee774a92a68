//! NodeMetrics: each node's usage, with the node's labels (a label selector selects nodes).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{mebibytes, millicores, usage_cells};
use crate::status::ApiError;
use crate::strategy::{ComputedRequest, Strategy};
use crate::table::{Column, NAME, col, s};

/// The NodeMetrics strategy.
#[derive(Debug)]
pub struct NodeMetricsStrategy;

impl Strategy for NodeMetricsStrategy {
    fn is_computed(&self) -> bool {
        true
    }

    fn computed_objects<'a>(
        &'a self,
        request: ComputedRequest<'a>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Value>, ApiError>> {
        Box::pin(async move {
            let nodes = request.source.list_labels("", "v1", "nodes", None, request.labels).await?;
            let labels: HashMap<&str, &BTreeMap<String, String>> =
                nodes.iter().map(|(_, name, labels)| (name.as_str(), labels)).collect();
            let mut metrics = request.metrics.node_metrics(request.name);
            metrics.retain_mut(|m| {
                let Some(node_labels) = labels.get(s(m, "/metadata/name")) else {
                    return false;
                };
                if !node_labels.is_empty() {
                    m["metadata"]["labels"] = serde_json::json!(node_labels);
                }
                true
            });
            Ok(metrics)
        })
    }

    fn computed_protobuf<'a>(
        &'a self,
        request: ComputedRequest<'a>,
        list: bool,
    ) -> Option<futures::future::BoxFuture<'a, Result<Vec<u8>, ApiError>>> {
        Some(Box::pin(async move {
            let objects = self.computed_objects(request).await?;
            if !list && objects.is_empty() {
                let name = request.name.unwrap_or("");
                return Err(ApiError::not_found("metrics.k8s.io", "nodes", name));
            }
            Ok(super::wire::encode_nodes(&objects, list))
        }))
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("CPU", "string", 0), col("Memory", "string", 0), col("Window", "string", 0)]
    }

    fn cells(&self, obj: &Value, _now: i64) -> Vec<Value> {
        usage_cells(millicores(s(obj, "/usage/cpu")), mebibytes(s(obj, "/usage/memory")), obj)
    }
}
