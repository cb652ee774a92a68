//! PodMetrics: each pod's usage per container. A list in one namespace or by label joins
//! the pods themselves (for the selector and the labels, as metrics-server's do); a
//! cluster-wide list without one (`kubectl top pods -A`) is answered from the samples
//! alone, since reading every pod would cost more than the answer.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{mebibytes, millicores, usage_cells};
use crate::status::ApiError;
use crate::strategy::{ComputedRequest, Strategy};
use crate::table::{Column, NAME, col, s};

/// The PodMetrics strategy.
#[derive(Debug)]
pub struct PodMetricsStrategy;

impl Strategy for PodMetricsStrategy {
    fn is_computed(&self) -> bool {
        true
    }

    fn computed_objects<'a>(
        &'a self,
        request: ComputedRequest<'a>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Value>, ApiError>> {
        Box::pin(async move {
            let samples = request.metrics;
            if request.namespace.is_none() && request.labels.trim().is_empty() {
                return Ok(samples
                    .pod_metrics(None, &|_, _| true)
                    .iter()
                    .map(|m| m.render(None))
                    .collect());
            }
            let pods = request
                .source
                .list_labels("", "v1", "pods", request.namespace, request.labels)
                .await?;
            let labels: HashMap<(&str, &str), &BTreeMap<String, String>> = pods
                .iter()
                .filter(|(_, name, _)| request.name.is_none_or(|n| name == n))
                .map(|(namespace, name, labels)| ((namespace.as_str(), name.as_str()), labels))
                .collect();
            Ok(samples
                .pod_metrics(request.namespace, &|ns, name| labels.contains_key(&(ns, name)))
                .iter()
                .map(|m| m.render(labels.get(&(m.namespace.as_str(), m.name.as_str())).copied()))
                .collect())
        })
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("CPU", "string", 0), col("Memory", "string", 0), col("Window", "string", 0)]
    }

    fn cells(&self, obj: &Value, _now: i64) -> Vec<Value> {
        let containers = obj["containers"].as_array().map(Vec::as_slice).unwrap_or_default();
        let cpu = containers.iter().map(|c| millicores(s(c, "/usage/cpu"))).sum();
        let memory = containers.iter().map(|c| mebibytes(s(c, "/usage/memory"))).sum();
        usage_cells(cpu, memory, obj)
    }
}
