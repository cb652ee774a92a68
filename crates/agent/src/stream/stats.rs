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
    let host = host_usage();
    let (mut node_cpu, mut node_memory) = (0u64, 0u64);
    let pods: Vec<Value> = pods
        .into_iter()
        .map(|(uid, (namespace, name, containers, cpu, memory, core_ns))| {
            node_cpu += cpu;
            node_memory += memory;
            let volumes: Vec<Value> = ctx
                .volume_users
                .uses_of(&uid)
                .iter()
                .filter_map(|u| crate::local_volume::volume_stats(u, &namespace, &now))
                .collect();
            let mut pod = json!({
                "podRef": { "name": name, "namespace": namespace, "uid": uid },
                "startTime": now,
                "containers": containers,
                "cpu": { "time": now, "usageNanoCores": cpu, "usageCoreNanoSeconds": core_ns },
                "memory": { "time": now, "workingSetBytes": memory },
            });
            if !volumes.is_empty() {
                pod["volume"] = Value::Array(volumes);
            }
            pod
        })
        .collect();
    // The node's own figures are the host's, as the kubelet reports its root cgroup's (the
    // metrics API's node usage includes what runs outside pods); the pods' sums stand in
    // where `/proc` cannot be read.
    let (core_ns, working_set) = host.unwrap_or((0, node_memory));
    Ok(json!({
        "node": {
            "nodeName": ctx.node_name,
            "cpu": { "time": now, "usageNanoCores": node_cpu, "usageCoreNanoSeconds": core_ns },
            "memory": { "time": now, "workingSetBytes": working_set },
        },
        "pods": pods,
    }))
}

/// The host's CPU time (core-nanoseconds, every mode but idle and iowait, from `/proc/stat`)
/// and memory working set (`/proc/meminfo`: in use minus inactive file pages, cAdvisor's
/// definition for the root cgroup).
fn host_usage() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    Some((cpu_core_nanoseconds(&stat)?, working_set_bytes(&meminfo)?))
}

/// Busy time from the aggregate `cpu` line of `/proc/stat`, in clock ticks of 1/100 s
/// (`USER_HZ`, fixed at 100 for user space on Linux) turned into nanoseconds.
fn cpu_core_nanoseconds(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 =
        ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| *t).sum();
    Some(busy.saturating_mul(10_000_000))
}

fn working_set_bytes(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kb| kb * 1024)
        })
    };
    let used = field("MemTotal")?.saturating_sub(field("MemFree")?);
    Some(used.saturating_sub(field("Inactive(file)").unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cpu_counts_busy_ticks_only() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        // 100 + 5 + 50 + 3 + 2 + 1 = 161 ticks of 10 ms.
        assert_eq!(cpu_core_nanoseconds(stat), Some(1_610_000_000));
        assert_eq!(cpu_core_nanoseconds("intr 1 2\n"), None);
    }

    #[test]
    fn host_working_set_leaves_out_inactive_file_pages() {
        let meminfo = "MemTotal:       1000 kB\nMemFree:         200 kB\nInactive(file):  300 kB\n";
        assert_eq!(working_set_bytes(meminfo), Some(500 * 1024));
        assert_eq!(working_set_bytes("MemFree: 1 kB\n"), None);
    }
}
