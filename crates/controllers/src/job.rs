//! The Job controller: runs pods until `completions` of them succeed (or, without
//! `completions`, until one does and the rest finish), at most `parallelism` at a time; in
//! `Indexed` mode each index `0..completions` once, the index in the pod's annotation,
//! label, `JOB_COMPLETION_INDEX` and hostname. Failures count against `backoffLimit` (or
//! per index against `backoffLimitPerIndex`), replacements wait an exponential back-off,
//! `podFailurePolicy` rules may fail the Job, ignore a failure or fail an index,
//! `successPolicy` may end it early, `activeDeadlineSeconds` bounds it and `suspend` stops
//! its pods. The conditions follow upstream: `FailureTarget` or `SuccessCriteriaMet` once
//! decided, then `Failed` or `Complete` once no pod runs.
//!
//! Tracking as upstream's: every pod carries the `batch.kubernetes.io/job-tracking`
//! finalizer; a finished pod's UID is first written to `status.uncountedTerminatedPods`,
//! then its finalizer is removed, then it moves into the counters, each step a write the
//! next sync can resume from. So a restart of the controller at any moment loses or
//! double-counts no pod (status writes carry the Job's resourceVersion).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{
    Job, JobCondition, JobStatus, PodFailurePolicyRule, UncountedTerminatedPods,
};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};

use crate::Error;
use crate::cached_pod::CachedPod;
use crate::events::{EventType, Recorder, object_ref};
use crate::informer::{self, BY_CONTROLLER, Change, Informer, key_of};
use crate::pod_control;
use crate::pod_control::{Expectations, controller_ref};
use crate::queue::{Queue, Requeue, run_workers};
use crate::replicaset::is_ready;
use crate::selectors::label_selector_matches;

/// The finalizer that keeps a Job's finished pod until the Job has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// A pod's completion index (annotation and label).
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// How many times a pod's index failed before it (annotation).
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// The back-off before the first replacement of a failed pod, doubled per failure.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(360);
/// Queue keys of pods (not Jobs) whose tracking finalizer must go: `pod:<ns>/<name>`.
const ORPHAN_PREFIX: &str = "pod:";
/// At most this many pods are created in one sync.
const BURST: usize = 500;

/// How many of a sync's finalizer removals are in flight at once.
const FINALIZER_REMOVALS_IN_FLIGHT: usize = 64;

/// `1,3-5` ↔ {1, 3, 4, 5}: the form of `completedIndexes` and `failedIndexes`.
pub fn parse_indexes(text: &str, completions: Option<i32>) -> BTreeSet<i32> {
    // Only the Job's own indexes: a status that names `0-2147483647` (anyone allowed to
    // write it can) must not make the controller allocate two billion of them.
    let limit = completions.unwrap_or(0).clamp(0, MAX_INDEXED_COMPLETIONS);
    let mut set = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    set.extend(a.max(0)..=b.min(limit - 1));
                }
            }
            None => {
                if let Ok(a) = part.parse::<i32>()
                    && (0..limit).contains(&a)
                {
                    set.insert(a);
                }
            }
        }
    }
    set
}

/// The most completions (and so indexes) an Indexed Job may have, as upstream.
pub const MAX_INDEXED_COMPLETIONS: i32 = 100_000;

/// The compressed form of a set of indexes.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    out.join(",")
}

fn phase(pod: &CachedPod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn annotation<'a>(pod: &'a CachedPod, key: &str) -> Option<&'a str> {
    pod.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

/// A pod's completion index.
pub fn index_of(pod: &CachedPod) -> Option<i32> {
    annotation(pod, COMPLETION_INDEX)
        .or_else(|| pod.metadata.labels.as_ref()?.get(COMPLETION_INDEX).map(String::as_str))
        .and_then(|i| i.parse().ok())
}

fn has_finalizer(pod: &CachedPod) -> bool {
    pod.metadata.finalizers.iter().flatten().any(|f| f == TRACKING_FINALIZER)
}

/// A pod that will not run again: finished, or being deleted before it succeeded.
fn is_finished(pod: &CachedPod) -> bool {
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

/// What a pod failure policy rule does to a failed pod, with upstream's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureAction {
    /// Fail the whole Job.
    FailJob(String),
    /// Do not count the failure.
    Ignore,
    /// Fail the pod's index (with `backoffLimitPerIndex`).
    FailIndex,
    /// Count it as usual.
    Count,
}

/// The first rule of `rules` that matches a failed pod.
pub fn failure_action(rules: &[PodFailurePolicyRule], pod: &CachedPod) -> FailureAction {
    let statuses =
        pod.status.as_ref().and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let mut matched: Option<String> = None;
        if let Some(codes) = &rule.on_exit_codes {
            for c in statuses {
                if codes.container_name.as_deref().is_some_and(|n| n != c.name) {
                    continue;
                }
                let Some(code) =
                    c.state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code)
                else {
                    continue;
                };
                // Exit code 0 never counts as a failure of a container.
                let hit = code != 0
                    && match codes.operator.as_str() {
                        "In" => codes.values.contains(&code),
                        "NotIn" => !codes.values.contains(&code),
                        _ => false,
                    };
                if hit {
                    matched = Some(format!(
                        "Container {} for pod {}/{} failed with exit code {code} matching {} rule at index {i}",
                        c.name,
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        pod.metadata.name.as_deref().unwrap_or(""),
                        rule.action
                    ));
                    break;
                }
            }
        }
        if let Some(patterns) = &rule.on_pod_conditions {
            let conditions =
                pod.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
            for pattern in patterns {
                let want = pattern.status.as_deref().unwrap_or("True");
                if conditions.iter().any(|c| c.type_ == pattern.type_ && c.status == want) {
                    matched = Some(format!(
                        "Pod {}/{} has condition {} matching {} rule at index {i}",
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        pod.metadata.name.as_deref().unwrap_or(""),
                        pattern.type_,
                        rule.action
                    ));
                    break;
                }
            }
        }
        if let Some(message) = matched {
            return match rule.action.as_str() {
                "FailJob" => FailureAction::FailJob(message),
                "Ignore" => FailureAction::Ignore,
                "FailIndex" => FailureAction::FailIndex,
                _ => FailureAction::Count,
            };
        }
    }
    FailureAction::Count
}

/// The finished pods a sync has not counted yet, sorted by how they count.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Newly {
    /// Succeeded pods' UIDs.
    pub succeeded: Vec<String>,
    /// Failed pods' UIDs (counted against the limits).
    pub failed: Vec<String>,
    /// Failed pods a policy ignores: their finalizer goes, they are never counted.
    pub ignored: Vec<String>,
    /// A `FailJob` rule matched: the message.
    pub fail_job: Option<String>,
    /// Indexes that failed for good (a `FailIndex` rule, or past `backoffLimitPerIndex`).
    pub failed_indexes: BTreeSet<i32>,
}

/// Upstream's accounting of the pods still holding the tracking finalizer.
pub fn newly_finished(job: &Job, pods: &[Arc<CachedPod>]) -> Newly {
    let spec = job.spec.clone().unwrap_or_default();
    let status = job.status.clone().unwrap_or_default();
    let uncounted = status.uncounted_terminated_pods.unwrap_or_default();
    let known: HashSet<&String> =
        uncounted.succeeded.iter().flatten().chain(uncounted.failed.iter().flatten()).collect();
    let rules = spec.pod_failure_policy.map(|p| p.rules).unwrap_or_default();
    let suspended = spec.suspend.unwrap_or(false);
    let mut newly = Newly::default();
    for pod in pods {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !has_finalizer(pod) || known.contains(&uid) {
            continue;
        }
        let deleting = pod.metadata.deletion_timestamp.is_some();
        match phase(pod) {
            Some("Succeeded") => newly.succeeded.push(uid),
            Some("Failed") => match failure_action(&rules, pod) {
                FailureAction::Ignore => newly.ignored.push(uid),
                FailureAction::FailJob(message) => {
                    newly.fail_job.get_or_insert(message);
                    newly.failed.push(uid);
                }
                FailureAction::FailIndex => {
                    newly.failed_indexes.extend(index_of(pod));
                    newly.failed.push(uid);
                }
                FailureAction::Count => {
                    if let (Some(limit), Some(index)) =
                        (spec.backoff_limit_per_index, index_of(pod))
                    {
                        let before: i32 = annotation(pod, INDEX_FAILURE_COUNT)
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(0);
                        if before + 1 > limit {
                            newly.failed_indexes.insert(index);
                        }
                    }
                    newly.failed.push(uid);
                }
            },
            // Deleted before it finished: a failure, unless the Job's suspension deleted it
            // (or the pod failure policy, which needs a terminal phase, decides later).
            _ if deleting && rules.is_empty() => {
                if suspended {
                    newly.ignored.push(uid);
                } else {
                    newly.failed.push(uid);
                }
            }
            _ => {}
        }
    }
    newly
}

/// What the plan reads of a Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    /// `parallelism`.
    pub parallelism: i32,
    /// `completions`.
    pub completions: Option<i32>,
    /// `completionMode: Indexed`.
    pub indexed: bool,
    /// `suspend`.
    pub suspended: bool,
    /// `podReplacementPolicy: Failed` (replacements wait for terminating pods).
    pub replace_when_failed: bool,
}

impl JobView {
    /// The plan's view of `job`.
    pub fn of(job: &Job) -> JobView {
        let spec = job.spec.clone().unwrap_or_default();
        JobView {
            parallelism: spec.parallelism.unwrap_or(1).max(0),
            completions: spec.completions,
            indexed: spec.completion_mode.as_deref() == Some("Indexed"),
            suspended: spec.suspend.unwrap_or(false),
            replace_when_failed: spec.pod_replacement_policy.as_deref() == Some("Failed"),
        }
    }
}

/// The pods to create and delete to run the Job.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Manage {
    /// Pods to create: their completion index (none for NonIndexed Jobs).
    pub create: Vec<Option<i32>>,
    /// Pods to delete: (name, UID).
    pub delete: Vec<(String, String)>,
}

fn name_uid(pod: &CachedPod) -> (String, String) {
    (pod.metadata.name.clone().unwrap_or_default(), pod.metadata.uid.clone().unwrap_or_default())
}

/// Upstream's `manageJob`: as many active pods as are still wanted (`parallelism`, capped
/// by what remains to complete), the lowest pending indexes first.
pub fn manage(
    view: &JobView,
    active: &[&CachedPod],
    terminating: usize,
    succeeded: i32,
    completed: &BTreeSet<i32>,
    failed_indexes: &BTreeSet<i32>,
) -> Manage {
    let mut out = Manage::default();
    if view.suspended {
        out.delete = active.iter().map(|p| name_uid(p)).collect();
        return out;
    }
    let occupied = active.len() + if view.replace_when_failed { terminating } else { 0 };
    if !view.indexed {
        let want = match view.completions {
            Some(c) => view.parallelism.min(c - succeeded).max(0),
            None if succeeded > 0 => 0,
            None => view.parallelism,
        } as usize;
        if occupied < want {
            out.create = vec![None; (want - occupied).min(BURST)];
        } else if active.len() > want {
            // Not ready first, then the newest.
            let mut ranked: Vec<&CachedPod> = active.to_vec();
            ranked.sort_by_key(|p| {
                (
                    is_ready(p),
                    std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
                )
            });
            out.delete = ranked.iter().take(active.len() - want).map(|p| name_uid(p)).collect();
        }
        return out;
    }
    let completions = view.completions.unwrap_or(0);
    let mut running: BTreeSet<i32> = BTreeSet::new();
    for pod in active {
        match index_of(pod) {
            Some(i)
                if (0..completions).contains(&i)
                    && !completed.contains(&i)
                    && !failed_indexes.contains(&i)
                    && running.insert(i) => {}
            // A duplicate, out of range, or already done.
            _ => out.delete.push(name_uid(pod)),
        }
    }
    let active_left = running.len() + if view.replace_when_failed { terminating } else { 0 };
    let room =
        usize::try_from(view.parallelism).unwrap_or(0).saturating_sub(active_left).min(BURST);
    out.create = (0..completions)
        .filter(|i| !completed.contains(i) && !failed_indexes.contains(i) && !running.contains(i))
        .take(room)
        .map(Some)
        .collect();
    out
}

/// The back-off before the next replacement after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    BACKOFF_BASE.saturating_mul(1u32 << (failures - 1).min(10)).min(BACKOFF_MAX)
}

/// Sets a condition, keeping its transition time when its status does not change.
fn set_condition(
    conditions: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &Time,
) {
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(now.clone());
            }
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message.into());
            c.last_probe_time = Some(now.clone());
        }
        None => conditions.push(JobCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_probe_time: Some(now.clone()),
            last_transition_time: Some(now.clone()),
        }),
    }
}

fn condition_true(status: &JobStatus, type_: &str) -> bool {
    status.conditions.iter().flatten().any(|c| c.type_ == type_ && c.status == "True")
}

/// Whether a Job has finished (Complete or Failed).
pub fn is_finished_job(job: &Job) -> bool {
    job.status
        .as_ref()
        .is_some_and(|s| condition_true(s, "Complete") || condition_true(s, "Failed"))
}

/// When a finished Job finished.
pub fn finished_at(job: &Job) -> Option<jiff::Timestamp> {
    let status = job.status.as_ref()?;
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
        .or_else(|| status.completion_time.as_ref().map(|t| t.0))
}

/// Whether a success policy rule is met by the completed indexes (the index of the first
/// rule met).
pub fn success_policy_met(job: &Job, completed: &BTreeSet<i32>) -> Option<usize> {
    let spec = job.spec.as_ref()?;
    let rules = &spec.success_policy.as_ref()?.rules;
    rules.iter().position(|rule| {
        let set = rule.succeeded_indexes.as_deref().map(|t| parse_indexes(t, spec.completions));
        let hits = match &set {
            Some(set) => set.intersection(completed).count(),
            None => completed.len(),
        };
        match (rule.succeeded_count, &set) {
            (Some(count), _) => hits >= usize::try_from(count).unwrap_or(usize::MAX),
            (None, Some(set)) => hits == set.len(),
            (None, None) => false,
        }
    })
}

/// A pod of the Job (of index `index` in Indexed mode, the index having failed
/// `failures` times before).
pub fn pod_for(job: &Job, index: Option<i32>, failures: i32) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let template = spec.template;
    let meta = template.metadata.unwrap_or_default();
    let name = job.name_any();
    let mut labels = meta.labels.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut pod_spec = template.spec.unwrap_or_default();
    let mut finalizers = meta.finalizers.unwrap_or_default();
    finalizers.push(TRACKING_FINALIZER.into());
    let generate_name = match index {
        Some(i) => {
            annotations.insert(COMPLETION_INDEX.into(), i.to_string());
            labels.insert(COMPLETION_INDEX.into(), i.to_string());
            if failures > 0 {
                annotations.insert(INDEX_FAILURE_COUNT.into(), failures.to_string());
            }
            if pod_spec.hostname.is_none() {
                pod_spec.hostname = Some(format!("{name}-{i}"));
            }
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                    }),
                    ..EnvVarSource::default()
                }),
            };
            for c in
                pod_spec.containers.iter_mut().chain(pod_spec.init_containers.iter_mut().flatten())
            {
                let envs = c.env.get_or_insert_with(Vec::new);
                if !envs.iter().any(|e| e.name == env.name) {
                    envs.push(env.clone());
                }
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![controller_ref(job)]),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// The Job controller.
pub struct JobController {
    client: kube::Client,
    pods: Arc<Informer<CachedPod>>,
    jobs: Arc<Informer<Job>>,
    queue: Arc<Queue>,
    expectations: Expectations,
    /// Consecutive failures and when the last was counted, per Job key (the back-off).
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// The resourceVersion of the last status this controller wrote, per Job key: a sync
    /// never decides from a cached Job older than its own last write (its counts would be
    /// behind, and it would run an index or a completion again).
    written: Mutex<HashMap<String, u64>>,
    /// Pods (by UID) whose tracking finalizer this controller removed, until the cache shows
    /// it gone: until then the cached pod still looks finished and uncounted, and counting it
    /// again would count one failure or success twice (upstream's finalizer expectations).
    released: Mutex<HashSet<String>>,
    recorder: Recorder,
}

impl std::fmt::Debug for JobController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobController").finish_non_exhaustive()
    }
}

fn job_key_of(pod: &CachedPod) -> Option<String> {
    let owner = informer::controller_of(pod)?;
    (owner.kind == "Job" && owner.api_version == "batch/v1")
        .then(|| format!("{}/{}", pod.namespace().unwrap_or_default(), owner.name))
}

impl JobController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(
        client: kube::Client,
        pods: Arc<Informer<CachedPod>>,
        jobs: Arc<Informer<Job>>,
    ) -> Arc<JobController> {
        let controller = Arc::new(JobController {
            recorder: Recorder::new(client.clone(), "job-controller"),
            client,
            pods: pods.clone(),
            jobs: jobs.clone(),
            queue: Queue::new(),
            expectations: Expectations::default(),
            failures: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            released: Mutex::new(HashSet::new()),
        });
        let this = Arc::downgrade(&controller);
        jobs.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (Change::Added(j) | Change::Updated(_, j) | Change::Deleted(j)) = change;
            let key = key_of(j.as_ref());
            if let Change::Deleted(job) = change {
                c.expectations.forget(&key);
                c.lock_failures().remove(&key);
                c.lock_written().remove(&key);
                // Its pods' tracking finalizers go with it, or they would never be deleted.
                for pod in c.pods.by_index(BY_CONTROLLER, job.metadata.uid.as_deref().unwrap_or(""))
                {
                    if has_finalizer(&pod) {
                        c.queue.add(format!("{ORPHAN_PREFIX}{}", key_of(pod.as_ref())));
                    }
                }
            }
            c.queue.add(key);
        });
        let this = Arc::downgrade(&controller);
        pods.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            match change {
                Change::Added(p) | Change::Updated(_, p) if !has_finalizer(p) => {
                    c.lock_released().remove(p.metadata.uid.as_deref().unwrap_or(""));
                }
                Change::Deleted(p) => {
                    c.lock_released().remove(p.metadata.uid.as_deref().unwrap_or(""));
                }
                _ => {}
            }
            match change {
                Change::Added(pod) => {
                    if has_finalizer(pod) && c.job_gone(pod) {
                        c.queue.add(format!("{ORPHAN_PREFIX}{}", key_of(pod.as_ref())));
                    }
                    if let Some(key) = job_key_of(pod) {
                        c.expectations.created(&key);
                        c.queue.add_batched(key, Duration::from_millis(20));
                    } else if informer::controller_of(pod.as_ref()).is_none() {
                        c.enqueue_matching(pod);
                    }
                }
                Change::Updated(old, pod) => {
                    if has_finalizer(pod) && c.job_gone(pod) {
                        c.queue.add(format!("{ORPHAN_PREFIX}{}", key_of(pod.as_ref())));
                    }
                    if let Some(key) = job_key_of(old)
                        && job_key_of(pod).as_ref() != Some(&key)
                    {
                        c.queue.add(key);
                    }
                    if let Some(key) = job_key_of(pod) {
                        if pod.metadata.deletion_timestamp.is_some()
                            && old.metadata.deletion_timestamp.is_none()
                        {
                            c.expectations.deleted(&key, &key_of(pod.as_ref()));
                        }
                        c.queue.add_batched(key, Duration::from_millis(20));
                    } else if informer::controller_of(pod.as_ref()).is_none() {
                        c.enqueue_matching(pod);
                    }
                }
                Change::Deleted(pod) => {
                    if let Some(key) = job_key_of(pod) {
                        c.expectations.deleted(&key, &key_of(pod.as_ref()));
                        c.queue.add(key);
                    }
                }
            }
        });
        controller
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the Job a pod names as its controller is gone (by name and UID).
    fn job_gone(&self, pod: &CachedPod) -> bool {
        let Some(owner) = informer::controller_of(pod).filter(|o| o.kind == "Job") else {
            return false;
        };
        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), owner.name);
        self.jobs.get(&key).is_none_or(|j| j.metadata.uid.as_deref() != Some(owner.uid.as_str()))
    }

    /// A pod whose Job is gone loses its tracking finalizer, so that it can be deleted.
    async fn release_orphan(&self, key: &str) -> Result<Requeue, Error> {
        let Some(pod) = self.pods.get(key) else { return Ok(Requeue::No) };
        if !has_finalizer(&pod) || !self.job_gone(&pod) {
            return Ok(Requeue::No);
        }
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        self.remove_finalizer(&api, &pod).await?;
        Ok(Requeue::No)
    }

    fn lock_released(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.released.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_written(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn enqueue_matching(&self, pod: &CachedPod) {
        let ns = pod.namespace().unwrap_or_default();
        for job in self.jobs.list() {
            let Some(selector) = job.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                continue;
            };
            if job.namespace().as_deref() == Some(ns.as_str())
                && !crate::selectors::is_empty_selector(selector)
                && label_selector_matches(selector, pod.labels())
            {
                self.queue.add(key_of(job.as_ref()));
            }
        }
    }

    /// Syncs Jobs until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.pods.wait_synced().await;
        self.jobs.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "job", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        if let Some(pod) = key.strip_prefix(ORPHAN_PREFIX) {
            return self.release_orphan(pod).await;
        }
        let Some(job) = self.jobs.get(key) else { return Ok(Requeue::No) };
        let cached_rv =
            job.metadata.resource_version.as_deref().and_then(|rv| rv.parse::<u64>().ok());
        if let (Some(cached), Some(written)) = (cached_rv, self.lock_written().get(key).copied())
            && cached < written
        {
            // The watch has not delivered our own last write yet; decide from it then.
            return Ok(Requeue::After(Duration::from_millis(200)));
        }
        let namespace = job.namespace().unwrap_or_default();
        let job_completions = job.spec.as_ref().and_then(|s| s.completions);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        // Read before the pods: a pod whose creation is seen after this list was taken
        // must not count as seen (the list would lack it, and its index be run twice).
        let satisfied = self.expectations.satisfied(key);
        let selector = job.spec.as_ref().and_then(|s| s.selector.clone());
        // Without a selector (never stored: the strategy generates one) only owned pods count.
        let adopt = selector.as_ref().is_some_and(|s| !crate::selectors::is_empty_selector(s))
            && !is_finished_job(&job);
        let selects =
            |p: &CachedPod| selector.as_ref().is_none_or(|s| label_selector_matches(s, p.labels()));
        let pods =
            pod_control::claim_pods(&self.client, &self.pods, job.as_ref(), selects, adopt).await?;
        let mut job = (*job).clone();

        // 1. Finished pods not yet counted: recorded as uncounted first. A pod whose finalizer
        // this controller already removed was counted, even if the cache does not show it yet.
        let pods: Vec<Arc<CachedPod>> = {
            let released = self.lock_released();
            pods.into_iter()
                .filter(|p| {
                    !(has_finalizer(p)
                        && released.contains(p.metadata.uid.as_deref().unwrap_or("")))
                })
                .collect()
        };
        let newly = newly_finished(&job, &pods);
        let now = Time(jiff::Timestamp::now());
        let mut status = job.status.clone().unwrap_or_default();
        if !newly.succeeded.is_empty() || !newly.failed.is_empty() || newly.fail_job.is_some() {
            let uncounted = status
                .uncounted_terminated_pods
                .get_or_insert_with(UncountedTerminatedPods::default);
            uncounted
                .succeeded
                .get_or_insert_with(Vec::new)
                .extend(newly.succeeded.iter().cloned());
            uncounted.failed.get_or_insert_with(Vec::new).extend(newly.failed.iter().cloned());
            if !newly.failed_indexes.is_empty() {
                let mut failed =
                    parse_indexes(status.failed_indexes.as_deref().unwrap_or(""), job_completions);
                failed.extend(newly.failed_indexes.iter().copied());
                status.failed_indexes = Some(format_indexes(&failed));
            }
            if let Some(message) = &newly.fail_job {
                let conditions = status.conditions.get_or_insert_with(Vec::new);
                set_condition(
                    conditions,
                    "FailureTarget",
                    "True",
                    "PodFailurePolicy",
                    message,
                    &now,
                );
            }
            job = self.write_status(key, &jobs, &job, &status).await?;
            status = job.status.clone().unwrap_or_default();
        }

        // 2. Their finalizers go (and those of pods a policy ignores, or of a finished Job).
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let to_release: HashSet<&str> = uncounted
            .succeeded
            .iter()
            .flatten()
            .chain(uncounted.failed.iter().flatten())
            .chain(newly.ignored.iter())
            .map(String::as_str)
            .collect();
        let finished_job = is_finished_job(&job) || job.metadata.deletion_timestamp.is_some();
        // Side by side, as upstream removes them: a sync that sees a hundred pods finish
        // would otherwise make a hundred round trips one after another.
        let releasing: Vec<_> = pods
            .iter()
            .filter(|pod| {
                let uid = pod.metadata.uid.as_deref().unwrap_or("");
                has_finalizer(pod)
                    && (to_release.contains(uid)
                        || (finished_job
                            && (is_finished(pod) || pod.metadata.deletion_timestamp.is_some())))
            })
            .map(|pod| self.remove_finalizer(&pods_api, pod))
            .collect();
        let released: Vec<Result<(), Error>> = futures::stream::iter(releasing)
            .buffer_unordered(FINALIZER_REMOVALS_IN_FLIGHT)
            .collect()
            .await;
        if let Some(e) = released.into_iter().find_map(Result::err) {
            return Err(e);
        }

        // 3. Uncounted pods move into the counters.
        let mut completed =
            parse_indexes(status.completed_indexes.as_deref().unwrap_or(""), job_completions);
        // A succeeded pod's index is complete whether or not it was counted yet.
        completed.extend(
            pods.iter().filter(|p| phase(p) == Some("Succeeded")).filter_map(|p| index_of(p)),
        );
        let counted_succeeded = uncounted.succeeded.as_ref().map_or(0, Vec::len) as i32;
        let counted_failed = uncounted.failed.as_ref().map_or(0, Vec::len) as i32;
        if counted_succeeded > 0 || counted_failed > 0 {
            let by_uid: HashMap<String, &CachedPod> = pods
                .iter()
                .map(|p| (p.metadata.uid.clone().unwrap_or_default(), p.as_ref()))
                .collect();
            for uid in uncounted.succeeded.iter().flatten() {
                if let Some(i) = by_uid.get(uid).and_then(|p| index_of(p)) {
                    completed.insert(i);
                }
            }
            status.succeeded = Some(status.succeeded.unwrap_or(0) + counted_succeeded);
            status.failed = Some(status.failed.unwrap_or(0) + counted_failed);
            let mut failures = self.lock_failures();
            let entry = failures.entry(key.to_owned()).or_insert((0, Instant::now()));
            if counted_failed > 0 {
                entry.0 += u32::try_from(counted_failed).unwrap_or(1);
                entry.1 = Instant::now();
            } else {
                entry.0 = 0;
            }
        }
        status.uncounted_terminated_pods =
            Some(UncountedTerminatedPods { succeeded: Some(Vec::new()), failed: Some(Vec::new()) });
        let view = JobView::of(&job);
        if view.indexed {
            status.completed_indexes = Some(format_indexes(&completed));
        }

        // 4. The decisions.
        let spec = job.spec.clone().unwrap_or_default();
        let active: Vec<&CachedPod> = pods
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| !is_finished(p) && p.metadata.deletion_timestamp.is_none())
            .collect();
        let terminating = pods
            .iter()
            .filter(|p| !is_finished(p) && p.metadata.deletion_timestamp.is_some())
            .count();
        let failed_indexes =
            parse_indexes(status.failed_indexes.as_deref().unwrap_or(""), job_completions);
        let succeeded = status.succeeded.unwrap_or(0);
        let failed = status.failed.unwrap_or(0);
        let mut conditions = status.conditions.clone().unwrap_or_default();
        let mut to_delete: Vec<(String, String)> = Vec::new();
        let mut to_create: Vec<Option<i32>> = Vec::new();
        // The event of the Job's end, recorded once its condition is written.
        let mut finished: Option<(EventType, String, String)> = None;
        let mut requeue = None;
        let was_suspended = conditions.iter().any(|c| c.type_ == "Suspended" && c.status == "True");
        if !is_finished_job(&job) {
            if view.suspended {
                set_condition(
                    &mut conditions,
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                    &now,
                );
            } else if was_suspended {
                set_condition(
                    &mut conditions,
                    "Suspended",
                    "False",
                    "JobResumed",
                    "Job resumed",
                    &now,
                );
                status.start_time = Some(now.clone());
            }
            if status.start_time.is_none() && !view.suspended {
                status.start_time = Some(now.clone());
            }
            let decided_failure =
                conditions.iter().any(|c| c.type_ == "FailureTarget" && c.status == "True");
            let decided_success =
                conditions.iter().any(|c| c.type_ == "SuccessCriteriaMet" && c.status == "True");
            if !decided_failure && !decided_success {
                let deadline = spec.active_deadline_seconds.and_then(|d| {
                    let start = status.start_time.as_ref()?.0;
                    Some(start + jiff::SignedDuration::from_secs(d))
                });
                let failure = if let Some(limit) = spec
                    .max_failed_indexes
                    .filter(|m| failed_indexes.len() > usize::try_from(*m).unwrap_or(0))
                {
                    let _ = limit;
                    Some((
                        "MaxFailedIndexesExceeded",
                        "Job has exceeded the specified maximal number of failed indexes",
                    ))
                } else if spec.backoff_limit_per_index.is_none()
                    && failed > spec.backoff_limit.unwrap_or(6)
                {
                    Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
                } else if !view.suspended && deadline.is_some_and(|d| d <= now.0) {
                    Some(("DeadlineExceeded", "Job was active longer than specified deadline"))
                } else {
                    None
                };
                let completions = view.completions;
                let all_done = view.indexed
                    && completions
                        .is_some_and(|c| (completed.len() + failed_indexes.len()) as i32 >= c);
                if let Some((reason, message)) = failure {
                    set_condition(&mut conditions, "FailureTarget", "True", reason, message, &now);
                } else if all_done && !failed_indexes.is_empty() {
                    set_condition(
                        &mut conditions,
                        "FailureTarget",
                        "True",
                        "FailedIndexes",
                        "Job has failed indexes",
                        &now,
                    );
                } else if let Some(rule) =
                    view.indexed.then(|| success_policy_met(&job, &completed)).flatten()
                {
                    set_condition(
                        &mut conditions,
                        "SuccessCriteriaMet",
                        "True",
                        "SuccessPolicy",
                        &format!("Matched rules at index {rule}"),
                        &now,
                    );
                } else if match completions {
                    Some(c) if view.indexed => completed.len() as i32 >= c,
                    Some(c) => succeeded >= c,
                    None => succeeded > 0 && active.is_empty(),
                } {
                    set_condition(
                        &mut conditions,
                        "SuccessCriteriaMet",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                        &now,
                    );
                } else if let Some(d) = deadline.filter(|_| !view.suspended) {
                    requeue = Duration::try_from(d - now.0).ok();
                }
            }
            let failure = conditions
                .iter()
                .find(|c| c.type_ == "FailureTarget" && c.status == "True")
                .cloned();
            let success =
                conditions.iter().any(|c| c.type_ == "SuccessCriteriaMet" && c.status == "True");
            if failure.is_some() || success {
                // Decided: the remaining pods are stopped, and once none runs the final
                // condition is set.
                to_delete = active.iter().map(|p| name_uid(p)).collect();
                if active.is_empty() && terminating == 0 {
                    match failure {
                        Some(f) => {
                            let reason = f.reason.clone().unwrap_or_default();
                            let message = f.message.clone().unwrap_or_default();
                            set_condition(
                                &mut conditions,
                                "Failed",
                                "True",
                                &reason,
                                &message,
                                &now,
                            );
                            finished = Some((EventType::Warning, reason, message));
                        }
                        None => {
                            finished = Some((
                                EventType::Normal,
                                "Completed".to_owned(),
                                "Job completed".to_owned(),
                            ));
                            set_condition(
                                &mut conditions,
                                "Complete",
                                "True",
                                "CompletionsReached",
                                "Reached expected number of succeeded pods",
                                &now,
                            );
                            status.completion_time = Some(now.clone());
                        }
                    }
                }
            } else if satisfied {
                let plan =
                    manage(&view, &active, terminating, succeeded, &completed, &failed_indexes);
                to_delete = plan.delete;
                to_create = plan.create;
                if !to_create.is_empty() {
                    let (count, last) =
                        self.lock_failures().get(key).copied().unwrap_or((0, Instant::now()));
                    let wait = backoff(count).saturating_sub(last.elapsed());
                    if !wait.is_zero() {
                        to_create.clear();
                        requeue = Some(requeue.map_or(wait, |r: Duration| r.min(wait)));
                    }
                }
            }
        } else if condition_true(&status, "Failed") {
            to_delete = active.iter().map(|p| name_uid(p)).collect();
        }
        status.conditions = (!conditions.is_empty()).then_some(conditions);
        // 5. Pods first, so that the one status write counts those just made as active (as
        // upstream does): a new Job costs one status write, not one before and one after.
        let (made, pods_failed) = self.execute(&job, key, &to_create, &to_delete, &pods).await;
        status.active = Some((active.len() + made) as i32);
        status.ready = Some(active.iter().filter(|p| is_ready(p)).count() as i32);
        status.terminating = Some(terminating as i32);
        if status.succeeded.is_none() {
            status.succeeded = Some(0);
        }
        if status.failed.is_none() {
            status.failed = Some(0);
        }
        if job.status.as_ref() != Some(&status) {
            match self.write_status(key, &jobs, &job, &status).await {
                // As upstream, the Job's end is an event too (`kubectl describe job`).
                Ok(_) => {
                    if let Some((kind, reason, message)) = finished {
                        self.recorder.record(object_ref(&job), kind, &reason, message);
                    }
                }
                Err(Error::Api(kube::Error::Api(s))) if s.code == 404 => return Ok(Requeue::No),
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = pods_failed {
            return Err(e);
        }
        Ok(requeue.map_or(Requeue::No, |r| Requeue::After(r.max(Duration::from_millis(100)))))
    }

    /// A status write that fails with a conflict when the Job changed since it was read.
    async fn write_status(
        &self,
        key: &str,
        api: &Api<Job>,
        job: &Job,
        status: &JobStatus,
    ) -> Result<Job, Error> {
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": job.metadata.resource_version},
            "status": status,
        });
        let written = api
            .patch_status(&job.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        if let Some(rv) =
            written.metadata.resource_version.as_deref().and_then(|rv| rv.parse::<u64>().ok())
        {
            self.lock_written().insert(key.to_owned(), rv);
        }
        Ok(written)
    }

    async fn remove_finalizer(&self, api: &Api<Pod>, pod: &CachedPod) -> Result<(), Error> {
        let Some(finalizers) = pod.metadata.finalizers.as_ref() else { return Ok(()) };
        let Some(at) = finalizers.iter().position(|f| f == TRACKING_FINALIZER) else {
            return Ok(());
        };
        // A JSON patch that tests the finalizer is where we saw it: a concurrent change
        // makes it fail (retried by the next sync) rather than remove the wrong entry.
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "test", "path": format!("/metadata/finalizers/{at}"), "value": TRACKING_FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{at}")},
        ]))
        .map_err(|e| Error::Invalid(e.to_string()))?;
        match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch)).await {
            Ok(_) => {
                self.lock_released().insert(pod.metadata.uid.clone().unwrap_or_default());
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates and deletes pods; how many were made, and the first failure.
    async fn execute(
        &self,
        job: &Job,
        key: &str,
        create: &[Option<i32>],
        delete: &[(String, String)],
        pods: &[Arc<CachedPod>],
    ) -> (usize, Option<Error>) {
        if create.is_empty() && delete.is_empty() {
            return (0, None);
        }
        let namespace = job.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        self.expectations.expect(
            key,
            create.len() as i64,
            delete.iter().map(|(n, _)| format!("{namespace}/{n}")).collect(),
        );
        // The failures of each index so far: the highest count a failed pod of it carried.
        let mut index_failures: HashMap<i32, i32> = HashMap::new();
        for pod in pods.iter().filter(|p| phase(p) == Some("Failed")) {
            if let Some(i) = index_of(pod) {
                let before: i32 =
                    annotation(pod, INDEX_FAILURE_COUNT).and_then(|c| c.parse().ok()).unwrap_or(0);
                let e = index_failures.entry(i).or_insert(0);
                *e = (*e).max(before + 1);
            }
        }
        let mut first_error = None;
        let mut created = 0;
        let mut made = 0;
        let mut batch = 1;
        // Slow start, as the ReplicaSet controller: a systematic failure costs one request.
        while created < create.len() {
            let chunk = &create[created..(created + batch).min(create.len())];
            let results = futures::future::join_all(chunk.iter().map(|index| {
                let pod = pod_for(
                    job,
                    *index,
                    index.and_then(|i| index_failures.get(&i).copied()).unwrap_or(0),
                );
                let api = api.clone();
                async move { api.create(&PostParams::default(), &pod).await }
            }))
            .await;
            created += chunk.len();
            for result in results {
                match result {
                    Ok(pod) => {
                        made += 1;
                        self.recorder.record(
                            object_ref(job),
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created pod: {}", pod.name_any()),
                        );
                    }
                    Err(e) => {
                        self.expectations.created(key);
                        self.recorder.record(
                            object_ref(job),
                            EventType::Warning,
                            "FailedCreate",
                            format!("Error creating: {e}"),
                        );
                        first_error.get_or_insert(e);
                    }
                }
            }
            if first_error.is_some() {
                for _ in created..create.len() {
                    self.expectations.created(key);
                }
                break;
            }
            batch *= 2;
        }
        if let Some(e) =
            pod_control::delete_pods(&api, &self.recorder, job, &self.expectations, key, delete)
                .await
        {
            first_error.get_or_insert(e);
        }
        (made, first_error.map(Error::from))
    }
}

/// The TTL-after-finished controller: deletes a finished Job (and, in the foreground, its
/// pods) `ttlSecondsAfterFinished` after it finished.
pub struct TtlAfterFinishedController {
    client: kube::Client,
    jobs: Arc<Informer<Job>>,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for TtlAfterFinishedController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlAfterFinishedController").finish_non_exhaustive()
    }
}

impl TtlAfterFinishedController {
    /// Hooks the controller to the Job informer (before it starts).
    pub fn new(client: kube::Client, jobs: Arc<Informer<Job>>) -> Arc<TtlAfterFinishedController> {
        let controller = Arc::new(TtlAfterFinishedController {
            client,
            jobs: jobs.clone(),
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        jobs.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            if let Change::Added(j) | Change::Updated(_, j) = change
                && j.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished).is_some()
                && is_finished_job(j)
            {
                c.queue.add(key_of(j.as_ref()));
            }
        });
        controller
    }

    /// Deletes expired Jobs until dropped.
    pub async fn run(self: Arc<Self>) {
        self.jobs.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), 1, "ttlafterfinished", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let Some(job) = self.jobs.get(key) else { return Ok(Requeue::No) };
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return Ok(Requeue::No);
        };
        let Some(finished) =
            finished_at(&job).filter(|_| job.metadata.deletion_timestamp.is_none())
        else {
            return Ok(Requeue::No);
        };
        let expires = finished + jiff::SignedDuration::from_secs(i64::from(ttl));
        let now = jiff::Timestamp::now();
        if expires > now {
            return Ok(Requeue::After(
                Duration::try_from(expires - now).unwrap_or(Duration::from_secs(1)),
            ));
        }
        let api: Api<Job> =
            Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());
        let params = DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
            preconditions: Some(Preconditions { uid: job.uid(), resource_version: None }),
            ..DeleteParams::default()
        };
        match api.delete(&job.name_any(), &params).await {
            Ok(_) => Ok(Requeue::No),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Requeue::No),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Arc<CachedPod> {
        Arc::new(serde_json::from_value(value).expect("a pod"))
    }

    fn job(spec: serde_json::Value, status: serde_json::Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j", "namespace": "ns", "uid": "ju"}, "spec": spec, "status": status})).expect("a job")
    }

    #[test]
    fn index_sets_compress_and_parse() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7", Some(8)), set);
        assert!(parse_indexes("", Some(8)).is_empty());
        // Out of the Job's range: clipped, never allocated.
        assert_eq!(parse_indexes("5-2147483647,-3,9", Some(8)).len(), 3);
        assert!(parse_indexes("0-2147483647", None).is_empty());
    }

    #[test]
    fn finished_pods_are_counted_once_and_policies_decide_how() {
        let spec = json!({"template": {}, "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
        ]}});
        let j = job(spec, json!({"uncountedTerminatedPods": {"succeeded": ["s0"]}}));
        let finalizer = json!([TRACKING_FINALIZER]);
        let pods = [
            pod(
                json!({"metadata": {"uid": "s0", "finalizers": finalizer}, "status": {"phase": "Succeeded"}}),
            ),
            pod(
                json!({"metadata": {"uid": "s1", "finalizers": finalizer}, "status": {"phase": "Succeeded"}}),
            ),
            pod(json!({"metadata": {"uid": "s2"}, "status": {"phase": "Succeeded"}})),
            pod(
                json!({"metadata": {"name": "f1", "namespace": "ns", "uid": "f1", "finalizers": finalizer}, "status": {"phase": "Failed",
                "containerStatuses": [{"name": "c", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 42}}}]}}),
            ),
            pod(
                json!({"metadata": {"uid": "f2", "finalizers": finalizer}, "status": {"phase": "Failed",
                "conditions": [{"type": "DisruptionTarget", "status": "True"}]}}),
            ),
            pod(
                json!({"metadata": {"uid": "r", "finalizers": finalizer}, "status": {"phase": "Running"}}),
            ),
        ];
        let newly = newly_finished(&j, &pods);
        assert_eq!(newly.succeeded, vec!["s1".to_owned()]);
        assert_eq!(newly.failed, vec!["f1".to_owned()]);
        assert_eq!(newly.ignored, vec!["f2".to_owned()]);
        assert_eq!(
            newly.fail_job.as_deref(),
            Some(
                "Container c for pod ns/f1 failed with exit code 42 matching FailJob rule at index 0"
            )
        );
    }

    #[test]
    fn per_index_back_off_limits_fail_an_index() {
        let j = job(
            json!({"template": {}, "completionMode": "Indexed", "completions": 3, "backoffLimitPerIndex": 1}),
            json!({}),
        );
        let finalizer = json!([TRACKING_FINALIZER]);
        let pods = [
            pod(
                json!({"metadata": {"uid": "a", "finalizers": finalizer, "annotations": {COMPLETION_INDEX: "1"}}, "status": {"phase": "Failed"}}),
            ),
            pod(
                json!({"metadata": {"uid": "b", "finalizers": finalizer, "annotations": {COMPLETION_INDEX: "2", INDEX_FAILURE_COUNT: "1"}}, "status": {"phase": "Failed"}}),
            ),
        ];
        let newly = newly_finished(&j, &pods);
        assert_eq!(newly.failed_indexes.into_iter().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn manage_runs_parallelism_pods_and_the_lowest_pending_indexes() {
        let view = JobView {
            parallelism: 3,
            completions: Some(5),
            indexed: false,
            suspended: false,
            replace_when_failed: false,
        };
        let none = BTreeSet::new();
        assert_eq!(manage(&view, &[], 0, 0, &none, &none).create.len(), 3);
        assert_eq!(manage(&view, &[], 0, 4, &none, &none).create.len(), 1);
        let running =
            pod(json!({"metadata": {"name": "p", "uid": "p"}, "status": {"phase": "Running"}}));
        let m = manage(&view, &[&running], 0, 5, &none, &none);
        assert_eq!(m.delete, vec![("p".to_owned(), "p".to_owned())]);
        // A work queue (no completions): none once one succeeded.
        let queue = JobView { completions: None, ..view.clone() };
        assert!(manage(&queue, &[], 0, 1, &none, &none).create.is_empty());

        let indexed = JobView { indexed: true, ..view.clone() };
        let completed: BTreeSet<i32> = [0].into_iter().collect();
        let one = pod(
            json!({"metadata": {"name": "i1", "uid": "i1", "annotations": {COMPLETION_INDEX: "1"}}, "status": {"phase": "Running"}}),
        );
        let dup = pod(
            json!({"metadata": {"name": "i1b", "uid": "i1b", "annotations": {COMPLETION_INDEX: "1"}}, "status": {"phase": "Running"}}),
        );
        let m = manage(&indexed, &[&one, &dup], 0, 1, &completed, &none);
        assert_eq!(m.create, vec![Some(2), Some(3)]);
        assert_eq!(m.delete, vec![("i1b".to_owned(), "i1b".to_owned())]);
        // Suspended: every active pod goes, none is made.
        let suspended = JobView { suspended: true, ..view };
        let m = manage(&suspended, &[&running], 0, 0, &none, &none);
        assert!(m.create.is_empty() && m.delete.len() == 1);
    }

    #[test]
    fn indexed_pods_carry_their_index_everywhere() {
        let j = job(
            json!({"completionMode": "Indexed", "completions": 3, "template": {"spec": {"containers": [{"name": "c"}]}}}),
            json!({}),
        );
        let p = pod_for(&j, Some(2), 1);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("j-2-"));
        let annotations = p.metadata.annotations.expect("annotations");
        assert_eq!(annotations.get(COMPLETION_INDEX).map(String::as_str), Some("2"));
        assert_eq!(annotations.get(INDEX_FAILURE_COUNT).map(String::as_str), Some("1"));
        let spec = p.spec.expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("j-2"));
        assert_eq!(
            spec.containers[0].env.as_ref().map(|e| e[0].name.as_str()),
            Some("JOB_COMPLETION_INDEX")
        );
        assert!(
            p.metadata.finalizers.expect("finalizers").contains(&TRACKING_FINALIZER.to_owned())
        );
    }

    #[test]
    fn back_off_doubles_to_a_cap_and_success_policies_match() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(20), Duration::from_secs(360));
        let j = job(
            json!({"template": {}, "completionMode": "Indexed", "completions": 6,
                   "successPolicy": {"rules": [{"succeededIndexes": "0-2", "succeededCount": 2}]}}),
            json!({}),
        );
        assert_eq!(success_policy_met(&j, &[0, 5].into_iter().collect()), None);
        assert_eq!(success_policy_met(&j, &[0, 2].into_iter().collect()), Some(0));
    }
}
