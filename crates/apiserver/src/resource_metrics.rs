//! The resource metrics pipeline's store (upstream's metrics-server, built in): the agents'
//! `/stats/summary` scraped every `--metrics-resolution` (`scraper.rs`) into [`Samples`],
//! which keeps for each node, pod and container only the last two readings of its cumulative
//! CPU time and its latest memory working set, and renders `metrics.k8s.io/v1beta1`
//! NodeMetrics and PodMetrics from them: CPU is the rate between the two readings, over the
//! `window` between them, so a pod shows up at its second scrape.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use serde_json::{Value, json};

/// The part of a kubelet summary the metrics API reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The node's totals.
    #[serde(default)]
    pub node: NodeStats,
    /// The pods.
    #[serde(default)]
    pub pods: Vec<PodStats>,
}

/// A node's figures in a summary.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// CPU.
    #[serde(default)]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(default)]
    pub memory: Option<MemoryStats>,
}

/// A pod's figures in a summary.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// Which pod.
    pub pod_ref: PodRef,
    /// Its containers.
    #[serde(default)]
    pub containers: Vec<ContainerStats>,
}

/// A pod's identity in a summary.
#[derive(Debug, Default, Deserialize)]
pub struct PodRef {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
    /// UID.
    #[serde(default)]
    pub uid: String,
}

/// A container's figures in a summary.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// Container name.
    #[serde(default)]
    pub name: String,
    /// CPU.
    #[serde(default)]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(default)]
    pub memory: Option<MemoryStats>,
}

/// CPU figures: when, and the cumulative CPU time.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When read (RFC 3339).
    #[serde(default)]
    pub time: Option<String>,
    /// CPU time used since the start, in core-nanoseconds.
    #[serde(default)]
    pub usage_core_nano_seconds: Option<u64>,
}

/// Memory figures.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// When read.
    #[serde(default)]
    pub time: Option<String>,
    /// The working set, in bytes.
    #[serde(default)]
    pub working_set_bytes: Option<u64>,
}

/// One reading of a cumulative CPU counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    /// Nanoseconds since the epoch.
    at: i64,
    /// Core-nanoseconds.
    cpu: u64,
}

/// The last two readings of one meter (a node or a container) and its latest working set.
#[derive(Debug, Clone, Copy)]
struct Meter {
    previous: Option<Reading>,
    last: Reading,
    working_set: u64,
}

impl Meter {
    fn next(old: Option<&Meter>, last: Reading, working_set: u64) -> Meter {
        let previous = match old {
            // The same reading again (the runtime had not refreshed): the rate stands.
            Some(m) if m.last == last => m.previous,
            Some(m) if m.last.at < last.at && m.last.cpu <= last.cpu => Some(m.last),
            // A counter that went back (the container or node restarted) or an older reading
            // starts over: a rate across it would be wrong.
            _ => None,
        };
        Meter { previous, last, working_set }
    }

    /// CPU in nanocores over the window, and the window in nanoseconds.
    fn rate(&self) -> Option<(u64, i64)> {
        let previous = self.previous?;
        let window = self.last.at - previous.at;
        if window <= 0 {
            return None;
        }
        let used = u128::from(self.last.cpu - previous.cpu);
        let nanocores = used * 1_000_000_000 / window as u128;
        Some((u64::try_from(nanocores).unwrap_or(u64::MAX), window))
    }
}

#[derive(Debug, Clone)]
struct PodSample {
    containers: Vec<(Box<str>, Meter)>,
}

/// What is known of one node.
#[derive(Debug, Default)]
struct NodeSample {
    node: Option<Meter>,
    /// By namespace, then pod name.
    pods: HashMap<Arc<str>, HashMap<Box<str>, PodSample>>,
}

/// The metrics of the cluster's nodes and pods, as the last two scrapes left them.
#[derive(Debug, Default)]
pub struct Samples {
    nodes: RwLock<HashMap<Box<str>, NodeSample>>,
    /// How long the last scrape of every node took, in milliseconds.
    last_scrape_ms: std::sync::atomic::AtomicU64,
}

fn parse_time(text: Option<&str>) -> Option<i64> {
    let t: jiff::Timestamp = text?.parse().ok()?;
    i64::try_from(t.as_nanosecond()).ok()
}

/// A reading from a summary's CPU entry; none without a time or a counter.
fn reading(cpu: Option<&CpuStats>) -> Option<Reading> {
    let cpu = cpu?;
    Some(Reading { at: parse_time(cpu.time.as_deref())?, cpu: cpu.usage_core_nano_seconds? })
}

impl Samples {
    /// Takes in a node's summary: each meter's new reading becomes its last, its last its
    /// previous; pods and containers missing from the summary are forgotten.
    pub fn record(&self, node: &str, summary: Summary) {
        let mut nodes = self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = nodes.remove(node).unwrap_or_default();
        let mut sample = NodeSample::default();
        if let Some(r) = reading(summary.node.cpu.as_ref()) {
            let ws = summary.node.memory.and_then(|m| m.working_set_bytes).unwrap_or(0);
            sample.node = Some(Meter::next(old.node.as_ref(), r, ws));
        }
        for pod in summary.pods {
            let old_pod = old
                .pods
                .get(pod.pod_ref.namespace.as_str())
                .and_then(|p| p.get(pod.pod_ref.name.as_str()));
            let mut containers = Vec::with_capacity(pod.containers.len());
            for c in pod.containers {
                let Some(r) = reading(c.cpu.as_ref()) else { continue };
                let ws = c.memory.and_then(|m| m.working_set_bytes).unwrap_or(0);
                let before = old_pod
                    .and_then(|p| p.containers.iter().find(|(n, _)| **n == *c.name))
                    .map(|(_, m)| m);
                containers.push((c.name.into_boxed_str(), Meter::next(before, r, ws)));
            }
            if containers.is_empty() {
                continue;
            }
            // Namespace names are shared between the pods of a node.
            let namespace = match sample.pods.get_key_value(pod.pod_ref.namespace.as_str()) {
                Some((k, _)) => k.clone(),
                None => Arc::from(pod.pod_ref.namespace.as_str()),
            };
            sample
                .pods
                .entry(namespace)
                .or_default()
                .insert(pod.pod_ref.name.into_boxed_str(), PodSample { containers });
        }
        nodes.insert(node.into(), sample);
    }

    /// Notes how long a scrape of every node took.
    pub fn scraped(&self, took: std::time::Duration) {
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.last_scrape_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the last scrape of every node took.
    pub fn last_scrape(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.last_scrape_ms.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Forgets a node (deleted, or its scrape failed: metrics-server serves only what the last
    /// scrape read).
    pub fn forget(&self, node: &str) {
        let mut nodes = self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes.remove(node);
    }

    /// Keeps only the nodes `keep` says exist.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut nodes = self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes.retain(|name, _| keep(name));
    }

    /// What the samples hold and the heap they take (entries, strings and table slack;
    /// not the allocator's own overhead), for `/metrics` and the benchmark.
    pub fn footprint(&self) -> Footprint {
        use std::mem::size_of;
        let nodes = self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A hash table's slot: key, value and one control byte.
        let slot = |k: usize, v: usize| k + v + 1;
        let mut f = Footprint {
            nodes: nodes.len(),
            bytes: nodes.capacity() * slot(size_of::<Box<str>>(), size_of::<NodeSample>()),
            ..Footprint::default()
        };
        for (name, sample) in nodes.iter() {
            f.bytes += name.len()
                + sample.pods.capacity()
                    * slot(size_of::<Arc<str>>(), size_of::<HashMap<Box<str>, PodSample>>());
            for (namespace, pods) in &sample.pods {
                // Shared by the node's pods; counted once per node.
                f.bytes += namespace.len() + 2 * size_of::<usize>();
                f.bytes += pods.capacity() * slot(size_of::<Box<str>>(), size_of::<PodSample>());
                for (pod, s) in pods {
                    f.pods += 1;
                    f.containers += s.containers.len();
                    f.bytes += pod.len()
                        + s.containers.capacity() * size_of::<(Box<str>, Meter)>()
                        + s.containers.iter().map(|(c, _)| c.len()).sum::<usize>();
                }
            }
        }
        f
    }

    /// NodeMetrics of every node with two readings (or only `name`).
    pub fn node_metrics(&self, name: Option<&str>) -> Vec<Value> {
        let nodes = self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<Value> = nodes
            .iter()
            .filter(|(n, _)| name.is_none_or(|want| &***n == want))
            .filter_map(|(n, sample)| {
                let meter = sample.node?;
                let (cpu, window) = meter.rate()?;
                Some(json!({
                    "kind": "NodeMetrics",
                    "apiVersion": "metrics.k8s.io/v1beta1",
                    "metadata": {"name": &**n, "creationTimestamp": now_rfc3339()},
                    "timestamp": rfc3339(meter.last.at),
                    "window": duration(window),
                    "usage": usage(cpu, meter.working_set),
                }))
            })
            .collect();
        out.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
        out
    }

    /// PodMetrics of the pods in `namespace` (every one when `None`) that `wanted` accepts
    /// (by namespace and name), each with every container's rate.
    pub fn pod_metrics(
        &self,
        namespace: Option<&str>,
        wanted: &dyn Fn(&str, &str) -> bool,
    ) -> Vec<PodMetric> {
        let nodes = self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        for sample in nodes.values() {
            for (ns, pods) in &sample.pods {
                if namespace.is_some_and(|want| **ns != *want) {
                    continue;
                }
                for (name, pod) in pods {
                    if !wanted(ns, name) {
                        continue;
                    }
                    if let Some(metric) = pod_metric(ns, name, pod) {
                        out.push(metric);
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }
}

/// The size of the samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Nodes scraped.
    pub nodes: usize,
    /// Pods known.
    pub pods: usize,
    /// Containers known.
    pub containers: usize,
    /// Heap bytes.
    pub bytes: usize,
}

/// One pod's metrics, before rendering (the labels come from the pod).
#[derive(Debug, Clone, PartialEq)]
pub struct PodMetric {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The newest reading, in nanoseconds since the epoch.
    pub at: i64,
    /// The window, in nanoseconds.
    pub window: i64,
    /// Per container: name, nanocores, working-set bytes.
    pub containers: Vec<(String, u64, u64)>,
}

impl PodMetric {
    /// The PodMetrics object, with `labels` when known.
    pub fn render(
        &self,
        labels: Option<&std::collections::BTreeMap<String, String>>,
        created: &str,
    ) -> Value {
        let containers: Vec<Value> = self
            .containers
            .iter()
            .map(|(name, cpu, memory)| json!({"name": name, "usage": usage(*cpu, *memory)}))
            .collect();
        let mut metadata = json!({
            "name": self.name,
            "namespace": self.namespace,
            "creationTimestamp": created,
        });
        if let Some(labels) = labels.filter(|l| !l.is_empty()) {
            metadata["labels"] = json!(labels);
        }
        json!({
            "kind": "PodMetrics",
            "apiVersion": "metrics.k8s.io/v1beta1",
            "metadata": metadata,
            "timestamp": rfc3339(self.at),
            "window": duration(self.window),
            "containers": containers,
        })
    }
}

/// A pod's metrics once every container has a rate (as metrics-server, a pod is left out
/// rather than shown with some containers missing).
fn pod_metric(namespace: &str, name: &str, pod: &PodSample) -> Option<PodMetric> {
    let mut containers = Vec::with_capacity(pod.containers.len());
    let (mut at, mut window) = (0, 0);
    for (container, meter) in &pod.containers {
        let (cpu, w) = meter.rate()?;
        if meter.last.at > at {
            at = meter.last.at;
            window = w;
        }
        containers.push((container.to_string(), cpu, meter.working_set));
    }
    Some(PodMetric {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        at,
        window,
        containers,
    })
}

fn usage(nanocores: u64, bytes: u64) -> Value {
    json!({"cpu": format!("{nanocores}n"), "memory": memory(bytes)})
}

/// Bytes as metrics-server writes them: in Ki when whole, else plain.
pub(crate) fn memory(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) { format!("{}Ki", bytes / 1024) } else { bytes.to_string() }
}

fn rfc3339(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_default()
}

/// Now, to the second, as object timestamps are written.
pub(crate) fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Second).unwrap_or(now).to_string()
}

/// A window as Go prints a `time.Duration` (`15.002s`, `1m0.5s`).
fn duration(ns: i64) -> String {
    let ms = ns / 1_000_000;
    let (minutes, ms) = (ms / 60_000, ms % 60_000);
    let seconds = ms as f64 / 1000.0;
    if minutes > 0 { format!("{minutes}m{seconds}s") } else { format!("{seconds}s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod: namespace, name, and its containers' (name, CPU counter, working set).
    type TestPod<'a> = (&'a str, &'a str, &'a [(&'a str, u64, u64)]);

    fn summary(at: &str, node_cpu: u64, pods: &[TestPod<'_>]) -> Summary {
        let pods: Vec<Value> = pods
            .iter()
            .map(|(ns, name, containers)| {
                let containers: Vec<Value> = containers
                    .iter()
                    .map(|(c, cpu, ws)| json!({"name": c,
                        "cpu": {"time": at, "usageCoreNanoSeconds": cpu},
                        "memory": {"time": at, "workingSetBytes": ws}}))
                    .collect();
                json!({"podRef": {"name": name, "namespace": ns, "uid": "u"}, "containers": containers})
            })
            .collect();
        serde_json::from_value(json!({
            "node": {"nodeName": "n1", "cpu": {"time": at, "usageCoreNanoSeconds": node_cpu},
                     "memory": {"time": at, "workingSetBytes": 4096}},
            "pods": pods,
        }))
        .expect("summary")
    }

    #[test]
    fn cpu_is_the_rate_between_the_last_two_readings() {
        let samples = Samples::default();
        samples.record(
            "n1",
            summary("2026-01-01T00:00:00Z", 1_000_000_000, &[("a", "p", &[("c", 0, 2048)])]),
        );
        // One reading is not a rate yet.
        assert!(samples.node_metrics(None).is_empty());
        assert!(samples.pod_metrics(None, &|_, _| true).is_empty());
        // 15 s later: the node used 30 core-seconds (2 cores), the container 1.5 (100m).
        samples.record(
            "n1",
            summary(
                "2026-01-01T00:00:15Z",
                31_000_000_000,
                &[("a", "p", &[("c", 1_500_000_000, 3072)])],
            ),
        );
        let nodes = samples.node_metrics(None);
        assert_eq!(nodes[0]["usage"], json!({"cpu": "2000000000n", "memory": "4Ki"}));
        assert_eq!(nodes[0]["window"], "15s");
        assert_eq!(nodes[0]["timestamp"], "2026-01-01T00:00:15Z");
        let pods = samples.pod_metrics(Some("a"), &|_, _| true);
        assert_eq!(pods[0].containers, vec![("c".to_owned(), 100_000_000, 3072)]);
        assert!(samples.pod_metrics(Some("b"), &|_, _| true).is_empty());
        let labels = std::collections::BTreeMap::from([("app".to_owned(), "x".to_owned())]);
        let rendered = pods[0].render(Some(&labels), "2026-01-01T00:00:20Z");
        assert_eq!(
            rendered["containers"][0]["usage"],
            json!({"cpu": "100000000n", "memory": "3Ki"})
        );
        assert_eq!(rendered["metadata"]["labels"], json!({"app": "x"}));
    }

    #[test]
    fn a_restarted_counter_or_a_vanished_pod_starts_over() {
        let samples = Samples::default();
        samples.record("n1", summary("2026-01-01T00:00:00Z", 10, &[("a", "p", &[("c", 500, 1)])]));
        samples.record("n1", summary("2026-01-01T00:00:15Z", 20, &[("a", "p", &[("c", 100, 1)])]));
        // The container's counter went back: no rate until the next reading.
        assert!(samples.pod_metrics(None, &|_, _| true).is_empty());
        samples.record("n1", summary("2026-01-01T00:00:30Z", 30, &[("a", "q", &[("c", 1, 1)])]));
        assert!(samples.pod_metrics(None, &|_, _| true).is_empty(), "p is gone, q is new");
        samples.record("n1", summary("2026-01-01T00:00:45Z", 40, &[("a", "q", &[("c", 2, 1)])]));
        assert_eq!(samples.pod_metrics(None, &|_, _| true).len(), 1);
        let f = samples.footprint();
        assert_eq!((f.nodes, f.pods, f.containers), (1, 1, 1));
        assert!(f.bytes > 0 && f.bytes < 4096, "{f:?}");
        samples.retain(|_| false);
        assert!(samples.node_metrics(None).is_empty());
    }

    #[test]
    fn a_pod_shows_only_once_every_container_has_a_rate() {
        let samples = Samples::default();
        samples.record("n1", summary("2026-01-01T00:00:00Z", 0, &[("a", "p", &[("c", 0, 1)])]));
        samples.record(
            "n1",
            summary("2026-01-01T00:00:10Z", 0, &[("a", "p", &[("c", 10, 1), ("sidecar", 5, 1)])]),
        );
        assert!(samples.pod_metrics(None, &|_, _| true).is_empty());
    }

    #[test]
    fn windows_print_as_go_durations() {
        assert_eq!(duration(15_002_000_000), "15.002s");
        assert_eq!(duration(60_500_000_000), "1m0.5s");
        assert_eq!(memory(1536), "1536");
        assert_eq!(memory(2048), "2Ki");
    }
}
