//! The CronJob controller: creates a Job from `jobTemplate` at each time the schedule names
//! (in `timeZone`, else the controller's zone, UTC), as upstream's second CronJob
//! controller does: one Job per scheduled time, named `<cronjob>-<minutes since the
//! epoch>` so that a restart never creates a time's Job twice; of the times missed while
//! it was not running only the latest is started, and only within
//! `startingDeadlineSeconds` (more than 100 missed times are reported as
//! `TooManyMissedTimes`); `concurrencyPolicy` Allow, Forbid or Replace; `suspend`; finished
//! Jobs beyond the history limits are deleted; `status.active`, `lastScheduleTime` and
//! `lastSuccessfulTime` kept.
//!
//! [`due`] is the pure decision; the sync reads the CronJob's Jobs, decides and writes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, ResourceExt};

use crate::Error;
use crate::events::{EventType, Recorder, object_ref};
use crate::informer::{BY_CONTROLLER, Change, Informer, key_of};
use crate::job::{finished_at, is_finished_job};
use crate::pod_control::controller_ref;
use crate::queue::{Queue, Requeue, run_workers};

/// The annotation with the time a CronJob's Job was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed start times than this are reported, as upstream.
const TOO_MANY_MISSED: usize = 100;

/// The time zone a CronJob's schedule runs in (none: an unknown zone).
pub fn zone_of(cron_job: &CronJob) -> Option<jiff::tz::TimeZone> {
    match cron_job.spec.time_zone.as_deref() {
        None | Some("") => Some(jiff::tz::TimeZone::UTC),
        Some(name) => jiff::tz::TimeZone::get(name).ok(),
    }
}

/// What is due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The latest scheduled time not yet started, if it is still within the deadline.
    pub run: Option<jiff::Timestamp>,
    /// How many scheduled times were missed since the last run (past 100: reported).
    pub missed: usize,
    /// The next scheduled time after now.
    pub next: Option<jiff::Timestamp>,
}

/// The scheduled times between the last run (or the CronJob's creation) and `now`: the
/// latest of them is due, unless it is older than `startingDeadlineSeconds`.
pub fn due(
    schedule: &cron::Schedule,
    tz: &jiff::tz::TimeZone,
    last: jiff::Timestamp,
    deadline: Option<i64>,
    now: jiff::Timestamp,
) -> Due {
    let mut earliest = last;
    if let Some(d) = deadline {
        let floor = now - jiff::SignedDuration::from_secs(d);
        if floor > earliest {
            earliest = floor;
        }
    }
    let mut run = None;
    let mut missed = 0;
    let mut at = earliest;
    while let Some(t) = schedule.next_after(at, tz) {
        if t > now {
            break;
        }
        run = Some(t);
        missed += 1;
        at = t;
        // Counting on would only tell how many; the latest is what runs.
        if missed > TOO_MANY_MISSED {
            run = latest_before(schedule, tz, t, now);
            break;
        }
    }
    Due { run, missed, next: schedule.next_after(now, tz) }
}

/// The latest scheduled time in `(after, now]`, found by bisection over time (many times
/// were missed: walking them one by one could take long).
fn latest_before(
    schedule: &cron::Schedule,
    tz: &jiff::tz::TimeZone,
    after: jiff::Timestamp,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    let (mut lo, mut hi) = (after, now);
    // Invariant: a run exists in (lo, now]; narrow until the last before `hi` is found.
    let mut best = Some(after);
    while hi.as_second() - lo.as_second() > 60 {
        let mid = jiff::Timestamp::from_second((lo.as_second() + hi.as_second()) / 2).ok()?;
        match schedule.next_after(mid, tz) {
            Some(t) if t <= now => {
                best = Some(t);
                lo = t;
            }
            _ => hi = mid,
        }
    }
    while let Some(t) = best.and_then(|b| schedule.next_after(b, tz)).filter(|t| *t <= now) {
        best = Some(t);
    }
    best
}

/// The Job of a scheduled time.
pub fn job_for(cron_job: &CronJob, scheduled: jiff::Timestamp) -> Job {
    let template = &cron_job.spec.job_template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), scheduled.to_string());
    Job {
        metadata: ObjectMeta {
            name: Some(format!("{}-{}", cron_job.name_any(), scheduled.as_second() / 60)),
            namespace: cron_job.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cron_job)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

fn succeeded(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| {
        s.conditions.iter().flatten().any(|c| c.type_ == "Complete" && c.status == "True")
    })
}

/// The CronJob controller.
pub struct CronJobController {
    client: kube::Client,
    cron_jobs: Arc<Informer<CronJob>>,
    jobs: Arc<Informer<Job>>,
    queue: Arc<Queue>,
    recorder: Recorder,
}

impl std::fmt::Debug for CronJobController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronJobController").finish_non_exhaustive()
    }
}

impl CronJobController {
    /// Hooks the controller to the informers (before they start).
    pub fn new(
        client: kube::Client,
        cron_jobs: Arc<Informer<CronJob>>,
        jobs: Arc<Informer<Job>>,
    ) -> Arc<CronJobController> {
        let controller = Arc::new(CronJobController {
            recorder: Recorder::new(client.clone(), "cronjob-controller"),
            client,
            cron_jobs: cron_jobs.clone(),
            jobs: jobs.clone(),
            queue: Queue::new(),
        });
        let this = Arc::downgrade(&controller);
        cron_jobs.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (Change::Added(j) | Change::Updated(_, j) | Change::Deleted(j)) = change;
            c.queue.add(key_of(j.as_ref()));
        });
        let this = Arc::downgrade(&controller);
        jobs.on_change(move |change| {
            let Some(c) = this.upgrade() else { return };
            let (Change::Added(j) | Change::Updated(_, j) | Change::Deleted(j)) = change;
            if let Some(owner) = crate::informer::controller_of(j.as_ref())
                && owner.kind == "CronJob"
            {
                c.queue.add(format!("{}/{}", j.namespace().unwrap_or_default(), owner.name));
            }
        });
        controller
    }

    /// Runs CronJobs until dropped.
    pub async fn run(self: Arc<Self>, workers: usize) {
        self.cron_jobs.wait_synced().await;
        self.jobs.wait_synced().await;
        let this = self.clone();
        run_workers(self.queue.clone(), workers, "cronjob", move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Requeue, Error> {
        let Some(cron_job) = self.cron_jobs.get(key) else { return Ok(Requeue::No) };
        let namespace = cron_job.namespace().unwrap_or_default();
        let name = cron_job.name_any();
        let jobs_api: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        let uid = cron_job.uid().unwrap_or_default();
        let owned = self.jobs.by_index(BY_CONTROLLER, &uid);
        let mut status = cron_job.status.clone().unwrap_or_default();
        let now = jiff::Timestamp::now();

        // Active: the owned Jobs not finished (and what is listed but gone, dropped).
        let mut active: Vec<ObjectReference> = Vec::new();
        for job in &owned {
            if is_finished_job(job) {
                let was_active = status.active.iter().flatten().any(|r| r.uid == job.metadata.uid);
                if was_active {
                    self.recorder.record(
                        object_ref(cron_job.as_ref()),
                        EventType::Normal,
                        "SawCompletedJob",
                        format!(
                            "Saw completed job: {}, condition: {}",
                            job.name_any(),
                            if succeeded(job) { "Complete" } else { "Failed" }
                        ),
                    );
                }
                if succeeded(job)
                    && let Some(at) = finished_at(job)
                    && status.last_successful_time.as_ref().is_none_or(|t| t.0 < at)
                {
                    status.last_successful_time = Some(Time(at));
                }
            } else if job.metadata.deletion_timestamp.is_none() {
                active.push(reference(job));
            }
        }
        active.sort_by(|a, b| a.name.cmp(&b.name));
        status.active = (!active.is_empty()).then_some(active);

        // History: the oldest finished Jobs beyond the limits go.
        let mut finished: Vec<&Arc<Job>> = owned
            .iter()
            .filter(|j| is_finished_job(j) && j.metadata.deletion_timestamp.is_none())
            .collect();
        finished.sort_by_key(|j| {
            finished_at(j).or(j.metadata.creation_timestamp.as_ref().map(|t| t.0))
        });
        for (want_success, limit) in [
            (true, cron_job.spec.successful_jobs_history_limit.unwrap_or(3)),
            (false, cron_job.spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let of_kind: Vec<&&Arc<Job>> =
                finished.iter().filter(|j| succeeded(j) == want_success).collect();
            let excess = of_kind.len().saturating_sub(usize::try_from(limit).unwrap_or(0));
            for job in of_kind.into_iter().take(excess) {
                self.delete_job(&jobs_api, cron_job.as_ref(), job).await?;
            }
        }

        let mut requeue = None;
        let suspended = cron_job.spec.suspend.unwrap_or(false);
        if !suspended && cron_job.metadata.deletion_timestamp.is_none() {
            let schedule = cron::Schedule::parse(&cron_job.spec.schedule);
            let tz = zone_of(&cron_job);
            match (schedule, tz) {
                (Ok(schedule), Some(tz)) => {
                    let last = status
                        .last_schedule_time
                        .as_ref()
                        .or(cron_job.metadata.creation_timestamp.as_ref())
                        .map_or(now, |t| t.0);
                    let due =
                        due(&schedule, &tz, last, cron_job.spec.starting_deadline_seconds, now);
                    if due.missed > TOO_MANY_MISSED {
                        self.recorder.record(object_ref(cron_job.as_ref()), EventType::Warning, "TooManyMissedTimes", format!("too many missed start times: {}. Set or decrease .spec.startingDeadlineSeconds or check clock skew", due.missed));
                    }
                    if let Some(scheduled) = due.run {
                        self.start(&jobs_api, cron_job.as_ref(), &mut status, scheduled).await?;
                    }
                    requeue = due
                        .next
                        .and_then(|n| Duration::try_from(n - now).ok())
                        .map(|d| d + Duration::from_millis(100));
                }
                (Err(e), _) => {
                    self.recorder.record(
                        object_ref(cron_job.as_ref()),
                        EventType::Warning,
                        "UnparseableSchedule",
                        format!("unparseable schedule: {:?} : {e}", cron_job.spec.schedule),
                    );
                }
                (_, None) => {
                    self.recorder.record(
                        object_ref(cron_job.as_ref()),
                        EventType::Warning,
                        "UnknownTimeZone",
                        format!(
                            "invalid timeZone: {:?}",
                            cron_job.spec.time_zone.as_deref().unwrap_or("")
                        ),
                    );
                }
            }
        }
        if cron_job.status.as_ref() != Some(&status) {
            let api: Api<CronJob> = Api::namespaced(self.client.clone(), &namespace);
            let mut patch = serde_json::json!({"status": status});
            if status.active.is_none() {
                patch["status"]["active"] = serde_json::Value::Null;
            }
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Requeue::No),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(requeue.map_or(Requeue::No, Requeue::After))
    }

    /// Starts the Job of `scheduled` under the concurrency policy.
    async fn start(
        &self,
        api: &Api<Job>,
        cron_job: &CronJob,
        status: &mut CronJobStatus,
        scheduled: jiff::Timestamp,
    ) -> Result<(), Error> {
        let active: Vec<ObjectReference> = status.active.clone().unwrap_or_default();
        match cron_job.spec.concurrency_policy.as_deref() {
            Some("Forbid") if !active.is_empty() => {
                self.recorder.record(object_ref(cron_job), EventType::Normal, "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid");
                return Ok(());
            }
            Some("Replace") => {
                for reference in &active {
                    let Some(name) = reference.name.as_deref() else { continue };
                    let params = DeleteParams {
                        propagation_policy: Some(PropagationPolicy::Background),
                        ..DeleteParams::default()
                    };
                    match api.delete(name, &params).await {
                        Ok(_) => self.recorder.record(
                            object_ref(cron_job),
                            EventType::Normal,
                            "SuccessfulDelete",
                            format!("Deleted job {name}"),
                        ),
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                status.active = None;
            }
            _ => {}
        }
        let job = job_for(cron_job, scheduled);
        let created = match api.create(&PostParams::default(), &job).await {
            Ok(created) => {
                self.recorder.record(
                    object_ref(cron_job),
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("Created job {}", created.name_any()),
                );
                created
            }
            // Created before (a restart, a lagging cache): the time is done.
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get(&job.name_any()).await? {
                existing
                    if crate::informer::controller_of(&existing)
                        .is_some_and(|r| Some(&r.uid) == cron_job.metadata.uid.as_ref()) =>
                {
                    existing
                }
                _ => {
                    status.last_schedule_time = Some(Time(scheduled));
                    return Ok(());
                }
            },
            Err(e) => {
                self.recorder.record(
                    object_ref(cron_job),
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating job: {e}"),
                );
                return Err(e.into());
            }
        };
        if !is_finished_job(&created) {
            let active = status.active.get_or_insert_with(Vec::new);
            if !active.iter().any(|r| r.uid == created.metadata.uid) {
                active.push(reference(&created));
            }
        }
        status.last_schedule_time = Some(Time(scheduled));
        Ok(())
    }

    async fn delete_job(&self, api: &Api<Job>, cron_job: &CronJob, job: &Job) -> Result<(), Error> {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match api.delete(&job.name_any(), &params).await {
            Ok(_) => {
                self.recorder.record(
                    object_ref(cron_job),
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted job {}", job.name_any()),
                );
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> jiff::Timestamp {
        text.parse().expect("a timestamp")
    }

    #[test]
    fn the_latest_missed_time_runs_within_the_deadline() {
        let every_minute = cron::Schedule::parse("* * * * *").expect("a schedule");
        let utc = jiff::tz::TimeZone::UTC;
        let d =
            due(&every_minute, &utc, ts("2026-01-01T00:00:00Z"), None, ts("2026-01-01T00:05:30Z"));
        assert_eq!(
            (d.run, d.missed, d.next),
            (Some(ts("2026-01-01T00:05:00Z")), 5, Some(ts("2026-01-01T00:06:00Z")))
        );
        // A deadline of 20 s: the 00:05 run is 30 s late, so nothing is due.
        let d = due(
            &every_minute,
            &utc,
            ts("2026-01-01T00:00:00Z"),
            Some(20),
            ts("2026-01-01T00:05:30Z"),
        );
        assert_eq!(d.run, None);
        // Nothing since the last run.
        let d =
            due(&every_minute, &utc, ts("2026-01-01T00:05:00Z"), None, ts("2026-01-01T00:05:30Z"));
        assert_eq!(d.run, None);
        // Days of missed runs: reported, and the latest still found.
        let d =
            due(&every_minute, &utc, ts("2026-01-01T00:00:00Z"), None, ts("2026-01-03T12:34:56Z"));
        assert!(d.missed > TOO_MANY_MISSED);
        assert_eq!(d.run, Some(ts("2026-01-03T12:34:00Z")));
    }

    #[test]
    fn jobs_are_named_by_their_scheduled_minute() {
        let cron_job: CronJob = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "backup", "namespace": "ns", "uid": "u"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"metadata": {"labels": {"app": "b"}}, "spec": {"template": {}}}}
        }))
        .expect("a cron job");
        let job = job_for(&cron_job, ts("2026-01-01T00:05:00Z"));
        assert_eq!(
            job.metadata.name.as_deref(),
            Some(format!("backup-{}", ts("2026-01-01T00:05:00Z").as_second() / 60).as_str())
        );
        assert_eq!(
            job.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SCHEDULED_TIMESTAMP))
                .map(String::as_str),
            Some("2026-01-01T00:05:00Z")
        );
    }
}
