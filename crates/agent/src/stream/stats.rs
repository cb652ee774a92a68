//! Resource usage from CRI stats, in the shape of upstream's kubelet `/stats/summary`
//! (node, then pods with their containers), for the metrics API to read.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use serde_json::{Value, json};

use super::context::StreamContext;
use crate::AgentError;
use crate::pods::config::{
    LABEL_CONTAINER_NAME, LABEL_MANAGED_BY, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID,
};

fn u64_of(v: &Option<cri::UInt64Value>) -> u64 {
    v.as_ref().map_or(0, |v| v.value)
}

fn rfc3339(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}

/// Per pod: namespace, name, container entries, nano-cores, working set, core-nanoseconds.
type PodSums = (String, String, Vec<Value>, u64, u64, u64);

/// The summary: per container CPU (`usageNanoCores`, `usageCoreNanoSeconds`) and memory
/// (`workingSetBytes`, `usageBytes`, `rssBytes`), summed per pod, and the node's totals.
pub async fn summary(ctx: &StreamContext) -> Result<Value, AgentError> {
    let labels = HashMap::from([(LABEL_MANAGED_BY.to_owned(), ctx.node_name.clone())]);
    let stats = ctx.cri.list_container_stats(labels).await?;
    let mut pods: HashMap<String, PodSums> = HashMap::new();
    for s in stats {
        let Some(attributes) = s.attributes else { continue };
        let labels = attributes.labels;
        let uid = labels.get(LABEL_POD_UID).cloned().unwrap_or_default();
        let cpu = s.cpu.unwrap_or_default();
        let memory = s.memory.unwrap_or_default();
        let nano_cores = u64_of(&cpu.usage_nano_cores);
        let working_set = u64_of(&memory.working_set_bytes);
        let core_ns = u64_of(&cpu.usage_core_nano_seconds);
        let container = json!({
            "name": labels.get(LABEL_CONTAINER_NAME).cloned().unwrap_or_default(),
            "cpu": {
                "time": rfc3339(cpu.timestamp),
                "usageNanoCores": nano_cores,
                "usageCoreNanoSeconds": core_ns,
            },
            "memory": {
                "time": rfc3339(memory.timestamp),
                "workingSetBytes": working_set,
                "usageBytes": u64_of(&memory.usage_bytes),
                "rssBytes": u64_of(&memory.rss_bytes),
                "pageFaults": u64_of(&memory.page_faults),
                "majorPageFaults": u64_of(&memory.major_page_faults),
            },
        });
        let entry = pods.entry(uid).or_insert_with(|| {
            (
                labels.get(LABEL_POD_NAMESPACE).cloned().unwrap_or_default(),
                labels.get(LABEL_POD_NAME).cloned().unwrap_or_default(),
                Vec::new(),
                0,
                0,
                0,
            )
        });
        entry.2.push(container);
        entry.3 += nano_cores;
        entry.4 += working_set;
        entry.5 += core_ns;
    }
    let now = jiff::Timestamp::now().to_string();
    let (mut node_cpu, mut node_memory) = (0u64, 0u64);
    let pods: Vec<Value> = pods
        .into_iter()
        .map(|(uid, (namespace, name, containers, cpu, memory, core_ns))| {
            node_cpu += cpu;
            node_memory += memory;
            json!({
                "podRef": { "name": name, "namespace": namespace, "uid": uid },
                "startTime": now,
                "containers": containers,
                "cpu": { "time": now, "usageNanoCores": cpu, "usageCoreNanoSeconds": core_ns },
                "memory": { "time": now, "workingSetBytes": memory },
            })
        })
        .collect();
    Ok(json!({
        "node": {
            "nodeName": ctx.node_name,
            "cpu": { "time": now, "usageNanoCores": node_cpu },
            "memory": { "time": now, "workingSetBytes": node_memory },
        },
        "pods": pods,
    }))
}
