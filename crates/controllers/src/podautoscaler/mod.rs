//! The HorizontalPodAutoscaler controller (upstream's `podautoscaler`): every sync period
//! each HPA reads its target's scale subresource (any kind that has one, found through
//! discovery), the pods its selector names and their metrics from `metrics.k8s.io` (the
//! server's own metrics API), asks each metric how many replicas it wants
//! (`replica_calculator.rs`), takes the largest, holds it to the behavior's stabilisation
//! windows and rate policies and to min/max (`normalize.rs`), writes the target's scale,
//! and reports `currentReplicas`, `desiredReplicas`, `currentMetrics`, `lastScaleTime` and
//! the `AbleToScale`, `ScalingActive` and `ScalingLimited` conditions, with events.
//!
//! Pods, object and external metrics need a custom or external metrics API, which krust
//! does not serve: their metrics fail with a condition that says so.

pub mod normalize;
pub mod replica_calculator;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricValueStatus,
    ResourceMetricStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::events::{EventType, Recorder, object_ref};
use crate::informer::{Change, Informer, key_of};
use crate::queue::{Queue, Requeue, run_workers};
use crate::selectors::{label_selector_matches, parse_label_selector};
use normalize::History;
use replica_calculator::{PodFacts, Proposal, Sample, Target, Tuning};

/// The controller's settings (upstream's `--horizontal-pod-autoscaler-*` flags).
#[derive(Debug, Clone, Copy)]
pub struct HpaConfig {
    /// How often each HPA is reconciled (15 s).
    pub sync_period: Duration,
    /// The scale-down stabilisation window when the HPA names none (5 min).
    pub downscale_stabilization: Duration,
    /// Tolerance, CPU initialisation period, initial readiness delay.
    pub tuning: Tuning,
}

impl Default for HpaConfig {
    fn default() -> HpaConfig {
        HpaConfig {
            sync_period: Duration::from_secs(15),
            downscale_stabilization: Duration::from_secs(300),
            tuning: Tuning::default(),
        }
    }
}

/// The HorizontalPodAutoscaler controller.
pub struct HorizontalController {
    client: kube::Client,
    hpas: Arc<Informer<HorizontalPodAutoscaler>>,
    pods: Arc<Informer<CachedPod>>,
    queue: Arc<Queue>,
    recorder: Recorder,
    config: HpaConfig,
    /// Per HPA: recent recommendations and scale events (upstream keeps them in memory too).
    histories: Mutex<HashMap<String, History>>,
    /// Scale targets' resources by `apiVersion/kind`.
    resources: Mutex<HashMap<String, ApiResource>>,
}

impl std::fmt::Debug for HorizontalController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HorizontalController").finish_non_exhaustive()
    }
}

/// A metric's outcome: its proposal and status, or why it has none (condition reason and
/// message).
type Computed = Result<(Proposal, MetricStatus), (&'static str, String)>;

/// Upstream's description of a metric, used in conditions and events.
fn metric_name(spec: &MetricSpec) -> String {
    match spec.type_.as_str() {
        "Resource" => spec.resource.as_ref().map_or_else(String::new, |r| {
            if r.target.type_ == "Utilization" {
                format!("{} resource utilization (percentage of request)", r.name)
            } else {
                format!("{} resource", r.name)
            }
        }),
        "ContainerResource" => spec.container_resource.as_ref().map_or_else(String::new, |r| {
            if r.target.type_ == "Utilization" {
                format!("{} container resource utilization (percentage of request)", r.name)
            } else {
                format!("{} container resource", r.name)
            }
        }),
        "Pods" => spec
            .pods
            .as_ref()
            .map_or_else(String::new, |p| format!("pods metric {}", p.metric.name)),
        "Object" => spec.object.as_ref().map_or_else(String::new, |o| {
            format!("{} metric {}", o.described_object.kind, o.metric.name)
        }),
        "External" => spec
            .external
            .as_ref()
            .map_or_else(String::new, |e| format!("external metric {}", e.metric.name)),
        other => format!("{other} metric"),
    }
}

/// An integer number of milli-units as a quantity, in the form the API prints.
fn milli_quantity(milli: i64) -> Quantity {
    if milli % 1000 != 0 {
        return Quantity(format!("{milli}m"));
    }
    let mut value = milli / 1000;
    for suffix in ["", "k", "M", "G", "T", "P"] {
        if value % 1000 != 0 || value == 0 || suffix == "P" {
            return Quantity(format!("{value}{suffix}"));
        }
        value /= 1000;
    }
    Quantity(value.to_string())
}

/// `amount` of a quantity in milli-units.
fn milli(q: &Quantity) -> Option<i64> {
    crate::quantity::parse_quantity(q).map(|v| (v * 1000.0).round() as i64)
}

/// Seconds of a Go duration string (`15.002s`, `1m0s`, `500ms`).
fn duration_seconds(text: &str) -> i64 {
    if let Some(ms) = text.strip_suffix("ms") {
        return (ms.parse::<f64>().unwrap_or(0.0) / 1000.0).round() as i64;
    }
    let (minutes, rest) = match text.split_once('m') {
        Some((m, rest)) => (m.parse::<i64>().unwrap_or(0), rest),
        None => (0, text),
    };
    let seconds = rest.trim_end_matches('s').parse::<f64>().unwrap_or(0.0);
    minutes * 60 + seconds.round() as i64
}

/// Sets a condition, keeping its transition time when its status did not change.
fn set_condition(
    conditions: &mut Vec<HorizontalPodAutoscalerCondition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(now.clone());
            }
            c.status = status;
            c.reason = Some(reason.to_owned());
            c.message = Some(message);
        }
        None => conditions.push(HorizontalPodAutoscalerCondition {
            type_: type_.to_owned(),
            status,
            reason: Some(reason.to_owned()),
            message: Some(message),
            last_transition_time: Some(now.clone()),
            observed_generation: None,
        }),
    }
}

impl HorizontalController {
    /// Hooks the controller to its informers (before they start).
    pub fn new(
        client: kube::Client,
        hpas: Arc<Informer<HorizontalPodAutoscaler>>,
        pods: Arc<Informer<CachedPod>>,
        config: HpaConfig,
    ) -> Arc<HorizontalController> {
        let controller = Arc::new(HorizontalController {
            recorder: Recorder::new(client.clone(), "horizontal-pod-autoscaler"),
            client,
            hpas: hpas.clone(),
            pods,
            queue: Queue::new(),
            config,
            histories: Mutex::new(HashMap::new()),
            resources: Mutex::new(HashMap::new()),
        });
        let this = Arc::downgrade(&controller);
        hpas.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            match change {
                Change::Added(h) | Change::Deleted(h) => c.queue.add(key_of(h.as_ref())),
                // The controller's own status writes would otherwise wake it every time:
                // only a spec change is news before the next period.
                Change::Updated(old, new) => {
                    if old.metadata.generation != new.metadata.generation {
                        c.queue.add(key_of(new.as_ref()));
                    }
                }
            }
        });
        controller
    }

    /// Reconciles HPAs until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.hpas.wait_synced().await;
        self.pods.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "horizontal-pod-autoscaler", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    /// The API resource of a scale target, found through discovery once.
    async fn resource(&self, api_version: &str, kind: &str) -> Result<ApiResource, String> {
        let key = format!("{api_version}/{kind}");
        if let Some(ar) = self.lock_resources().get(&key) {
            return Ok(ar.clone());
        }
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        // A kind without a scale subresource answers the GET of its scale with 404, which
        // becomes the FailedGetScale condition.
        let (ar, _) = kube::discovery::pinned_kind(&self.client, &gvk).await.map_err(|e| {
            format!("unable to find the resource of {api_version}, Kind={kind}: {e}")
        })?;
        self.lock_resources().insert(key, ar.clone());
        Ok(ar)
    }

    fn lock_resources(&self) -> std::sync::MutexGuard<'_, HashMap<String, ApiResource>> {
        self.resources.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The target's pods' metrics from the metrics API, by pod name: per container, the
    /// usage of each resource in milli-units, with the sample's time and window.
    async fn pod_metrics(
        &self,
        namespace: &str,
        selector: &str,
    ) -> Result<BTreeMap<String, (i64, i64, BTreeMap<String, BTreeMap<String, i64>>)>, String> {
        let mut url = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods");
        if !selector.is_empty() {
            let encoded: String = selector
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        char::from(b).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            url.push_str(&format!("?labelSelector={encoded}"));
        }
        let request = http::Request::get(&url)
            .body(Vec::new())
            .map_err(|e| format!("unable to fetch metrics from resource metrics API: {e}"))?;
        let list: Value = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("unable to fetch metrics from resource metrics API: {e}"))?;
        let mut out = BTreeMap::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let name = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            let timestamp = item["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map_or(0, |t| t.as_second());
            let window = duration_seconds(item["window"].as_str().unwrap_or("0s"));
            let mut containers = BTreeMap::new();
            for c in item["containers"].as_array().into_iter().flatten() {
                let usage: BTreeMap<String, i64> = c["usage"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| {
                        Some((k.clone(), milli(&Quantity(v.as_str()?.to_owned()))?))
                    })
                    .collect();
                containers.insert(c["name"].as_str().unwrap_or_default().to_owned(), usage);
            }
            out.insert(name.to_owned(), (timestamp, window, containers));
        }
        Ok(out)
    }

    /// What the calculator knows of the target's pods, for `resource`.
    fn pod_facts(
        &self,
        namespace: &str,
        selector: &str,
        resource: &str,
    ) -> BTreeMap<String, PodFacts> {
        let Some(selector) = parse_label_selector(selector) else { return BTreeMap::new() };
        let mut out = BTreeMap::new();
        for pod in self.pods.list() {
            if pod.metadata.namespace.as_deref() != Some(namespace)
                || !label_selector_matches(&selector, pod.labels())
            {
                continue;
            }
            let status = pod.status.clone().unwrap_or_default();
            let phase = status.phase.as_deref().unwrap_or("Pending");
            let ready = status.conditions.iter().flatten().find(|c| c.type_ == "Ready").map(|c| {
                (c.status == "True", c.last_transition_time.as_ref().map_or(0, |t| t.0.as_second()))
            });
            let requests = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .map(|c| {
                    let request = c
                        .resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get(resource))
                        .and_then(milli);
                    (c.name.clone(), request)
                })
                .collect();
            out.insert(
                pod.name_any(),
                PodFacts {
                    ignored: pod.metadata.deletion_timestamp.is_some() || phase == "Failed",
                    pending: phase == "Pending",
                    start_time: status.start_time.map(|t| t.0.as_second()),
                    ready,
                    requests,
                },
            );
        }
        out
    }

    /// One resource metric (of the whole pod, or of one container).
    async fn resource_metric(
        &self,
        spec: &MetricSpec,
        namespace: &str,
        selector: &str,
        current: i32,
    ) -> Computed {
        let (name, target, container, reason) = match (&spec.resource, &spec.container_resource) {
            (Some(r), _) if spec.type_ == "Resource" => {
                (r.name.clone(), r.target.clone(), None, "FailedGetResourceMetric")
            }
            (_, Some(c)) if spec.type_ == "ContainerResource" => (
                c.name.clone(),
                c.target.clone(),
                Some(c.container.clone()),
                "FailedGetContainerResourceMetric",
            ),
            _ => return Err(("InvalidMetricSourceType", "the metric source is not set".into())),
        };
        let wanted =
            match (target.type_.as_str(), target.average_utilization, &target.average_value) {
                ("Utilization", Some(u), _) => Target::Utilization(u),
                ("AverageValue", _, Some(v)) => Target::AverageValue(milli(v).unwrap_or(0)),
                _ => {
                    return Err((
                        "InvalidMetricSourceType",
                        format!("invalid target of the {name} resource metric"),
                    ));
                }
            };
        let fail = |e: String| {
            let what = match wanted {
                Target::Utilization(_) => format!("failed to get {name} utilization"),
                Target::AverageValue(_) => format!("failed to get {name} usage"),
            };
            (reason, format!("{what}: {e}"))
        };
        let metrics = self
            .pod_metrics(namespace, selector)
            .await
            .map_err(|e| fail(format!("unable to get metrics for resource {name}: {e}")))?;
        let mut samples = BTreeMap::new();
        for (pod, (timestamp, window, containers)) in &metrics {
            let mut value = 0;
            let mut found = false;
            for (c, usage) in containers {
                if container.as_deref().is_some_and(|want| want != c) {
                    continue;
                }
                if let Some(v) = usage.get(&name) {
                    value += v;
                    found = true;
                }
            }
            if found {
                samples
                    .insert(pod.clone(), Sample { value, timestamp: *timestamp, window: *window });
            }
        }
        if samples.is_empty() {
            return Err(fail(format!(
                "unable to get metrics for resource {name}: no metrics returned from resource metrics API"
            )));
        }
        let pods = self.pod_facts(namespace, selector, &name);
        let now = jiff::Timestamp::now().as_second();
        let proposal = replica_calculator::resource_replicas(
            current,
            wanted,
            &name,
            container.as_deref(),
            &pods,
            &samples,
            now,
            self.config.tuning,
        )
        .map_err(fail)?;
        let value = MetricValueStatus {
            average_utilization: proposal.utilization,
            average_value: Some(milli_quantity(proposal.average)),
            value: None,
        };
        let status = match container {
            None => MetricStatus {
                type_: "Resource".into(),
                resource: Some(ResourceMetricStatus { name, current: value }),
                ..Default::default()
            },
            Some(container) => MetricStatus {
                type_: "ContainerResource".into(),
                container_resource: Some(ContainerResourceMetricStatus {
                    name,
                    container,
                    current: value,
                }),
                ..Default::default()
            },
        };
        Ok((proposal, status))
    }

    async fn compute(
        &self,
        spec: &MetricSpec,
        namespace: &str,
        selector: &str,
        current: i32,
    ) -> Computed {
        match spec.type_.as_str() {
            "Resource" | "ContainerResource" => {
                self.resource_metric(spec, namespace, selector, current).await
            }
            // No custom or external metrics API is served: say so.
            "Pods" | "Object" => Err((
                if spec.type_ == "Pods" { "FailedGetPodsMetric" } else { "FailedGetObjectMetric" },
                format!(
                    "unable to get metric {}: no custom metrics API (custom.metrics.k8s.io) registered",
                    metric_name(spec)
                ),
            )),
            "External" => Err((
                "FailedGetExternalMetric",
                format!(
                    "unable to get {}: no external metrics API (external.metrics.k8s.io) registered",
                    metric_name(spec)
                ),
            )),
            other => {
                Err(("InvalidMetricSourceType", format!("unknown metric source type {other:?}")))
            }
        }
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let Some(hpa) = self.hpas.get(key) else {
            self.histories.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
            return Ok(Requeue::No);
        };
        let namespace = hpa.namespace().unwrap_or_default();
        let spec = hpa.spec.clone();
        let reference = &spec.scale_target_ref;
        let now = Time(jiff::Timestamp::now());
        let old_status = hpa.status.clone().unwrap_or_default();
        let mut conditions = old_status.conditions.clone().unwrap_or_default();
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let event = |kind, reason: &str, message: String| {
            self.recorder.record(object_ref(hpa.as_ref()), kind, reason, message);
        };
        let api_version = reference.api_version.clone().unwrap_or_default();
        let scale = match self.resource(&api_version, &reference.kind).await {
            Ok(ar) => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), &namespace, &ar);
                api.get_scale(&reference.name).await.map(|s| (api, s)).map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        let (api, mut scale) = match scale {
            Ok(found) => found,
            Err(e) => {
                event(EventType::Warning, "FailedGetScale", e.clone());
                set_condition(
                    &mut conditions,
                    "AbleToScale",
                    false,
                    "FailedGetScale",
                    format!("the HPA controller was unable to get the target's current scale: {e}"),
                    &now,
                );
                let status = HorizontalPodAutoscalerStatus {
                    conditions: Some(conditions),
                    ..old_status.clone()
                };
                self.write_status(&hpa, status).await?;
                return Ok(Requeue::After(self.config.sync_period));
            }
        };
        set_condition(
            &mut conditions,
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".into(),
            &now,
        );
        let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let selector = scale.status.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        let mut metric_statuses = old_status.current_metrics.clone();
        let mut desired = 0;
        let mut reason = String::new();
        let seconds = now.0.as_second();
        if current == 0 && min != 0 {
            set_condition(
                &mut conditions,
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
                &now,
            );
        } else if current > max {
            desired = max;
            reason = "Current number of replicas above Spec.MaxReplicas".into();
        } else if current < min {
            desired = min;
            reason = "Current number of replicas below Spec.MinReplicas".into();
        } else {
            let mut metrics = spec.metrics.clone().unwrap_or_default();
            if metrics.is_empty() {
                // Upstream's default: 80% of the pods' CPU requests.
                metrics.push(
                    serde_json::from_value(json!({"type": "Resource", "resource":
                    {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}))
                    .map_err(|e| Error::Invalid(e.to_string()))?,
                );
            }
            let mut statuses = Vec::new();
            let mut proposed = 0;
            let mut chosen = String::new();
            let mut first_error: Option<(&'static str, String)> = None;
            let mut invalid = 0;
            for metric in &metrics {
                match self.compute(metric, &namespace, &selector, current).await {
                    Ok((proposal, status)) => {
                        if proposal.replicas > proposed {
                            proposed = proposal.replicas;
                            chosen = metric_name(metric);
                        }
                        statuses.push(status);
                    }
                    Err((why, message)) => {
                        invalid += 1;
                        event(EventType::Warning, why, message.clone());
                        statuses.push(MetricStatus { type_: String::new(), ..Default::default() });
                        first_error.get_or_insert((why, message));
                    }
                }
            }
            // As upstream, a failed metric keeps its place with an empty status, so statuses
            // line up with the spec's metrics.
            metric_statuses = Some(statuses);
            if let Some((why, message)) = &first_error {
                set_condition(
                    &mut conditions,
                    "ScalingActive",
                    false,
                    why,
                    format!("the HPA was unable to compute the replica count: {message}"),
                    &now,
                );
            }
            if invalid == metrics.len() || (invalid > 0 && proposed < current) {
                // Never act on part of the metrics when the rest might say otherwise.
                let message = first_error.map(|(_, m)| m).unwrap_or_default();
                event(
                    EventType::Warning,
                    "FailedComputeMetricsReplicas",
                    format!(
                        "invalid metrics ({invalid} invalid out of {}), first error is: {message}",
                        metrics.len()
                    ),
                );
                let status = HorizontalPodAutoscalerStatus {
                    current_replicas: Some(current),
                    desired_replicas: old_status.desired_replicas,
                    current_metrics: metric_statuses.filter(|m| !m.is_empty()),
                    conditions: Some(conditions),
                    observed_generation: hpa.metadata.generation,
                    last_scale_time: old_status.last_scale_time.clone(),
                };
                self.write_status(&hpa, status).await?;
                return Ok(Requeue::After(self.config.sync_period));
            }
            if first_error.is_none() {
                set_condition(
                    &mut conditions,
                    "ScalingActive",
                    true,
                    "ValidMetricFound",
                    format!(
                        "the HPA was able to successfully calculate a replica count from {chosen}"
                    ),
                    &now,
                );
            }
            desired = proposed;
            if desired > current {
                reason = format!("{chosen} above target");
            } else if desired < current {
                reason = "All metrics below target".into();
            }
            let window =
                i64::try_from(self.config.downscale_stabilization.as_secs()).unwrap_or(300);
            let normalized = {
                let mut histories =
                    self.histories.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let history = histories.entry(key.to_owned()).or_default();
                normalize::normalize(
                    history,
                    spec.behavior.as_ref(),
                    current,
                    desired,
                    min,
                    max,
                    window,
                    seconds,
                )
            };
            desired = normalized.replicas;
            set_condition(
                &mut conditions,
                "AbleToScale",
                true,
                normalized.able.0,
                normalized.able.1.into(),
                &now,
            );
            let (limited, why, message) = normalized.limited;
            set_condition(&mut conditions, "ScalingLimited", limited, why, message.into(), &now);
        }
        let rescale = desired != current && !(current == 0 && min != 0);
        let mut last_scale_time = old_status.last_scale_time.clone();
        if rescale {
            // An update, as upstream's (its role may update `*/scale`, not patch it); the
            // scale read carries the resourceVersion, so a concurrent change is a conflict.
            scale.spec.get_or_insert_with(Default::default).replicas = Some(desired);
            let written = api.replace_scale(&reference.name, &PostParams::default(), &scale).await;
            if let Err(e) = written {
                event(
                    EventType::Warning,
                    "FailedRescale",
                    format!("New size: {desired}; reason: {reason}; error: {e}"),
                );
                set_condition(
                    &mut conditions,
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    format!("the HPA controller was unable to update the target scale: {e}"),
                    &now,
                );
                let status = HorizontalPodAutoscalerStatus {
                    conditions: Some(conditions),
                    ..old_status.clone()
                };
                self.write_status(&hpa, status).await?;
                return Err(e.into());
            }
            set_condition(
                &mut conditions,
                "AbleToScale",
                true,
                "SucceededRescale",
                format!("the HPA controller was able to update the target scale to {desired}"),
                &now,
            );
            event(
                EventType::Normal,
                "SuccessfulRescale",
                format!("New size: {desired}; reason: {reason}"),
            );
            tracing::info!(hpa = key, from = current, to = desired, %reason, "rescaled");
            let mut histories =
                self.histories.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let history = histories.entry(key.to_owned()).or_default();
            normalize::record_scale(history, spec.behavior.as_ref(), current, desired, seconds);
            last_scale_time = Some(now.clone());
        }
        let status = HorizontalPodAutoscalerStatus {
            current_replicas: Some(current),
            desired_replicas: if current == 0 && min != 0 { 0 } else { desired },
            current_metrics: metric_statuses.filter(|m| !m.is_empty()),
            conditions: Some(conditions),
            observed_generation: hpa.metadata.generation,
            last_scale_time,
        };
        self.write_status(&hpa, status).await?;
        Ok(Requeue::After(self.config.sync_period))
    }

    /// Writes `status` unless it is what the HPA already says.
    async fn write_status(
        &self,
        hpa: &HorizontalPodAutoscaler,
        status: HorizontalPodAutoscalerStatus,
    ) -> Result<(), Error> {
        if hpa.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut next = hpa.clone();
        next.status = Some(status);
        next.metadata.managed_fields = None;
        let api: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.client.clone(), &hpa.namespace().unwrap_or_default());
        api.replace_status(&hpa.name_any(), &PostParams::default(), &next).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_durations_read_and_print_as_the_api_does() {
        assert_eq!(milli_quantity(250).0, "250m");
        assert_eq!(milli_quantity(2000).0, "2");
        assert_eq!(milli_quantity(200_000_000_000).0, "200M");
        assert_eq!(milli_quantity(0).0, "0");
        assert_eq!(milli(&Quantity("150m".into())), Some(150));
        assert_eq!(milli(&Quantity("1500000n".into())), Some(2));
        assert_eq!(milli(&Quantity("2Ki".into())), Some(2_048_000));
        assert_eq!(duration_seconds("15.002s"), 15);
        assert_eq!(duration_seconds("1m0.5s"), 61);
        assert_eq!(duration_seconds("0s"), 0);
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let t0 = Time(jiff::Timestamp::from_second(0).expect("t0"));
        let t1 = Time(jiff::Timestamp::from_second(100).expect("t1"));
        let mut conditions = Vec::new();
        set_condition(&mut conditions, "AbleToScale", true, "A", "a".into(), &t0);
        set_condition(&mut conditions, "AbleToScale", true, "B", "b".into(), &t1);
        assert_eq!(conditions[0].last_transition_time, Some(t0));
        assert_eq!(conditions[0].reason.as_deref(), Some("B"));
        set_condition(&mut conditions, "AbleToScale", false, "C", "c".into(), &t1);
        assert_eq!(conditions[0].last_transition_time, Some(t1));
    }
}
