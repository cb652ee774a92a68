//! `metrics.k8s.io/v1beta1`: the nodes' and pods' resource usage, served from the server's
//! own scrapes ([`crate::resource_metrics`]) rather than by a separate metrics-server; never
//! stored, read-only. The types are declared here since `k8s-openapi` does not carry them.

pub mod nodemetrics;
pub mod podmetrics;
pub mod wire;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::table::s;

/// A node's usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeMetrics {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// When the newest reading was taken.
    #[serde(default)]
    pub timestamp: Option<Time>,
    /// The span the usage was measured over.
    #[serde(default)]
    pub window: String,
    /// CPU and memory.
    #[serde(default)]
    pub usage: BTreeMap<String, Quantity>,
}

/// A container's usage within a pod's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerMetrics {
    /// The container's name.
    pub name: String,
    /// CPU and memory.
    #[serde(default)]
    pub usage: BTreeMap<String, Quantity>,
}

/// A pod's usage, per container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodMetrics {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// When the newest reading was taken.
    #[serde(default)]
    pub timestamp: Option<Time>,
    /// The span the usage was measured over.
    #[serde(default)]
    pub window: String,
    /// Per container.
    #[serde(default)]
    pub containers: Vec<ContainerMetrics>,
}

impl k8s_openapi::Resource for NodeMetrics {
    const API_VERSION: &'static str = "metrics.k8s.io/v1beta1";
    const GROUP: &'static str = "metrics.k8s.io";
    const KIND: &'static str = "NodeMetrics";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "nodes";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::ListableResource for NodeMetrics {
    const LIST_KIND: &'static str = "NodeMetricsList";
}

impl k8s_openapi::Resource for PodMetrics {
    const API_VERSION: &'static str = "metrics.k8s.io/v1beta1";
    const GROUP: &'static str = "metrics.k8s.io";
    const KIND: &'static str = "PodMetrics";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for PodMetrics {
    const LIST_KIND: &'static str = "PodMetricsList";
}

/// Nanocores (`123n`) as millicores, the way `kubectl top` shows CPU.
fn millicores(cpu: &str) -> u64 {
    cpu.strip_suffix('n').and_then(|n| n.parse::<u64>().ok()).map_or(0, |n| n / 1_000_000)
}

/// `NNNKi` or bytes as mebibytes.
fn mebibytes(memory: &str) -> u64 {
    let bytes = match memory.strip_suffix("Ki") {
        Some(ki) => ki.parse::<u64>().unwrap_or(0) * 1024,
        None => memory.parse::<u64>().unwrap_or(0),
    };
    bytes / (1024 * 1024)
}

/// The Table cells of a usage: CPU in millicores, memory in MiB, then the window.
fn usage_cells(cpu_milli: u64, memory_mib: u64, obj: &Value) -> Vec<Value> {
    vec![
        serde_json::json!(s(obj, "/metadata/name")),
        serde_json::json!(format!("{cpu_milli}m")),
        serde_json::json!(format!("{memory_mib}Mi")),
        serde_json::json!(s(obj, "/window")),
    ]
}

/// The schema the OpenAPI documents give a metrics type: an object with the fields above
/// (read-only types; no client validates against it).
fn metrics_schema(properties: serde_json::Value) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "properties": properties,
    })
}

impl schemars::JsonSchema for NodeMetrics {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        metrics_schema(serde_json::json!({
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "timestamp": {"type": "string", "format": "date-time"},
            "window": {"type": "string"},
            "usage": {"type": "object", "additionalProperties": {"type": "string"}},
        }))
    }
}

impl schemars::JsonSchema for PodMetrics {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        metrics_schema(serde_json::json!({
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "timestamp": {"type": "string", "format": "date-time"},
            "window": {"type": "string"},
            "containers": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"},
                "usage": {"type": "object", "additionalProperties": {"type": "string"}},
            }}},
        }))
    }
}
