//! PodMetrics: each pod's usage per container. A list in one namespace or by label joins
//! the pods themselves (for the selector and the labels, as metrics-server's do); a
//! cluster-wide list without one (`kubectl top pods -A`) is answered from the samples
//! alone, since reading every pod would cost more than the answer.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{mebibytes, millicores, usage_cells};
use crate::resource_metrics::PodMetric;
use crate::status::ApiError;
use crate::strategy::{ComputedRequest, Strategy};
use crate::table::{Column, NAME, col, s};

/// The PodMetrics strategy.
#[derive(Debug)]
pub struct PodMetricsStrategy;

/// Labels by (namespace, name).
pub(super) type PodLabels = HashMap<(String, String), BTreeMap<String, String>>;

/// A pod's labels, when the pods were read.
pub(super) fn labels_of<'a>(
    labels: &'a PodLabels,
    m: &PodMetric,
) -> Option<&'a BTreeMap<String, String>> {
    if labels.is_empty() {
        return None;
    }
    labels.get(&(m.namespace.clone(), m.name.clone()))
}

/// The pods' metrics the request selects (by name too), with their labels where the pods
/// were read.
async fn select(request: ComputedRequest<'_>) -> Result<(Vec<PodMetric>, PodLabels), ApiError> {
    let samples = request.metrics;
    let by_name = |name: &str| request.name.is_none_or(|n| n == name);
    if request.namespace.is_none() && request.labels.trim().is_empty() {
        let metrics = samples.pod_metrics(None, &|_, name| by_name(name));
        return Ok((metrics, HashMap::new()));
    }
    let pods =
        request.source.list_labels("", "v1", "pods", request.namespace, request.labels).await?;
    let labels: PodLabels = pods
        .into_iter()
        .filter(|(_, name, _)| by_name(name))
        .map(|(namespace, name, labels)| ((namespace, name), labels))
        .collect();
    let metrics = samples.pod_metrics(request.namespace, &|ns, name| {
        labels.contains_key(&(ns.to_owned(), name.to_owned()))
    });
    Ok((metrics, labels))
}

impl Strategy for PodMetricsStrategy {
    fn is_computed(&self) -> bool {
        true
    }

    fn computed_objects<'a>(
        &'a self,
        request: ComputedRequest<'a>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Value>, ApiError>> {
        Box::pin(async move {
            let (metrics, labels) = select(request).await?;
            let created = crate::resource_metrics::now_rfc3339();
            Ok(metrics.iter().map(|m| m.render(labels_of(&labels, m), &created)).collect())
        })
    }

    fn computed_protobuf<'a>(
        &'a self,
        request: ComputedRequest<'a>,
        list: bool,
    ) -> Option<futures::future::BoxFuture<'a, Result<Vec<u8>, ApiError>>> {
        Some(Box::pin(async move {
            let (metrics, labels) = select(request).await?;
            if !list && metrics.is_empty() {
                let name = request.name.unwrap_or("");
                return Err(ApiError::not_found("metrics.k8s.io", "pods", name));
            }
            let created = jiff::Timestamp::now().as_second();
            Ok(super::wire::encode_pods(&metrics, &labels, created, list))
        }))
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
