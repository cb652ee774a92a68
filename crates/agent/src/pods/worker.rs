//! One pod's worker: it brings the runtime in line with the pod (sandbox, init containers in
//! order, containers, restarts with back-off), reports the status, and on deletion stops
//! everything within the grace period and removes the pod from the API.
//!
//! A worker is keyed by pod UID and keeps only soft state (back-off timers, why a container
//! waits); everything else is read back from the runtime on each sync, which is what lets a
//! restarted agent adopt running pods as they are.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};

use super::config::{self, ContainerInputs, PodKey, QosClass};
use super::env::{self, Downward, Sources};
use super::runtime::{self, Observed, ObservedContainer, ObservedSandbox, State};
use super::status::{self, Waiting};
use super::{Context, admission, images, plan, probe, volumes};
use crate::AgentError;
use crate::pods::events::EventType;

/// How long a settled pod waits before its next sync when nothing happens (volume contents
/// are refreshed at this pace).
const RESYNC: Duration = Duration::from_secs(20);

/// How soon a container waiting for a missing ConfigMap, Secret or key is tried again.
const CONFIG_RETRY: Duration = Duration::from_secs(3);

/// Crash-loop back-off: 10 s doubling to 5 minutes; forgotten after 10 minutes.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What a sync wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The pod is gone; the worker ends.
    Done,
    /// Sync again after this long (or sooner, when something changes).
    After(Duration),
}

/// A back-off entry, as upstream's `flowcontrol.Backoff`: the current delay and the time (ns
/// since the epoch) of the event it was last stepped at.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    delay: Duration,
    last_update_ns: i64,
}

impl Backoff {
    /// Whether an event at `event_ns` is still inside the back-off window at `now`;
    /// `Some(remaining)`.
    fn remaining(entry: Option<&Backoff>, event_ns: i64, now: i64) -> Option<Duration> {
        let entry = entry?;
        if event_ns - entry.last_update_ns > 2 * BACKOFF_MAX.as_nanos() as i64 {
            return None;
        }
        let elapsed = Duration::from_nanos((now - event_ns).max(0) as u64);
        entry.delay.checked_sub(elapsed).filter(|d| !d.is_zero())
    }

    fn step(entry: Option<Backoff>, event_ns: i64) -> Backoff {
        match entry {
            Some(e) if event_ns - e.last_update_ns <= 2 * BACKOFF_MAX.as_nanos() as i64 => {
                Backoff { delay: (e.delay * 2).min(BACKOFF_MAX), last_update_ns: event_ns }
            }
            _ => Backoff { delay: BACKOFF_INITIAL, last_update_ns: event_ns },
        }
    }
}

/// What starting a container in the current sandbox needs.
#[derive(Clone, Copy)]
struct Launch<'a> {
    sandbox: &'a ObservedSandbox,
    sandbox_config: &'a cri::PodSandboxConfig,
    sources: &'a Sources,
    downward: &'a Downward,
    etc_hosts: Option<&'a std::path::Path>,
    claims: &'a super::claims::Claims,
}

/// One pod's worker state.
pub(crate) struct Worker {
    ctx: Arc<Context>,
    key: PodKey,
    restart_backoff: HashMap<String, Backoff>,
    pull_backoff: HashMap<String, Backoff>,
    waiting: HashMap<String, Waiting>,
    start_time: Option<String>,
    last_status: Option<Value>,
    last_grace: Option<i64>,
    mount_error: Option<String>,
    /// Whether the pod's `fsGroup` was applied to its volumes (once per pod, as upstream
    /// applies it when it sets the volumes up).
    fs_group_applied: bool,
    /// Set once the agent failed the pod (its active deadline passed, or admission refused
    /// it).
    failed: Option<Waiting>,
    /// The node admitted the pod (its host ports are held for it).
    admitted: bool,
    probers: HashMap<String, probe::Probers>,
    wake: Arc<tokio::sync::Notify>,
}

fn field_path(container: &Container, init: bool) -> String {
    if init {
        format!("spec.initContainers{{{}}}", container.name)
    } else {
        format!("spec.containers{{{}}}", container.name)
    }
}

impl Worker {
    pub(crate) fn new(ctx: Arc<Context>, key: PodKey, wake: Arc<tokio::sync::Notify>) -> Worker {
        Worker {
            ctx,
            key,
            restart_backoff: HashMap::new(),
            pull_backoff: HashMap::new(),
            waiting: HashMap::new(),
            start_time: None,
            last_status: None,
            last_grace: None,
            mount_error: None,
            fs_group_applied: false,
            failed: None,
            admitted: false,
            probers: HashMap::new(),
            wake,
        }
    }

    /// One sync. `pod` is the latest object from the API, `None` once it is gone from it.
    pub(crate) async fn sync(&mut self, pod: Option<&Pod>) -> Result<Next, AgentError> {
        match pod {
            None => {
                let grace = plan::termination_grace(None, self.last_grace);
                self.terminate(None, grace).await?;
                self.ctx.host_ports.release(&self.key.uid);
                Ok(Next::Done)
            }
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                let grace = plan::termination_grace(Some(pod), self.last_grace);
                self.terminate(Some(pod), grace).await?;
                self.ctx.host_ports.release(&self.key.uid);
                Ok(Next::Done)
            }
            Some(pod) => {
                self.last_grace =
                    pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds);
                self.sync_live(pod).await
            }
        }
    }

    async fn sync_live(&mut self, pod: &Pod) -> Result<Next, AgentError> {
        let ctx = self.ctx.clone();
        let uid = self.key.uid.clone();
        let mut observed = runtime::observe(ctx.cri.as_ref(), &uid).await?;
        if self.start_time.is_none() {
            self.start_time = Some(
                pod.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .map_or_else(|| jiff::Timestamp::now().to_string(), |t| t.0.to_string()),
            );
        }
        let api_phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if status::is_terminal(&api_phase) {
            // Finished pods keep their containers (for logs) but not their sandbox.
            self.stop_sandboxes(&observed).await?;
            ctx.host_ports.release(&uid);
            return Ok(Next::After(RESYNC * 3));
        }
        if !self.admitted && self.failed.is_none() {
            // A pod already started (adopted after a restart) keeps what it holds.
            let started = observed.sandbox().is_some() || api_phase == "Running";
            if ctx.host_ports.admit(&uid, admission::host_ports_of(pod), started) {
                self.admitted = true;
            } else {
                ctx.recorder.pod(
                    &self.key,
                    "",
                    EventType::Warning,
                    admission::NODE_PORTS_REASON,
                    admission::NODE_PORTS_MESSAGE,
                );
                self.failed = Some(Waiting {
                    reason: admission::NODE_PORTS_REASON.into(),
                    message: admission::NODE_PORTS_MESSAGE.into(),
                });
            }
        }
        let deadline = plan::active_deadline(pod, self.start_time.as_deref(), ctx.clock.now_ns());
        if deadline == plan::Deadline::Exceeded || self.failed.is_some() {
            self.fail_pod(pod, &observed).await?;
            return Ok(Next::After(RESYNC * 3));
        }

        let sources = Sources::fetch(&ctx.client, &ctx.objects, pod).await?;
        let mut downward = Downward {
            host_ip: ctx.config.node_ip.to_string(),
            pod_ip: observed
                .sandbox()
                .filter(|s| s.ready)
                .map(|s| s.ip.clone())
                .unwrap_or_default(),
            node_cpu: ctx.node_cpu,
            node_memory: ctx.node_memory as f64,
        };
        let set_up = match super::claims::resolve(
            &ctx.client,
            pod,
            ctx.config.local_storage_path.as_deref(),
        )
        .await
        {
            Ok(claims) => volumes::set_up(&ctx.pods_dir, pod, &sources, &downward).map(|()| claims),
            Err(e) => Err(e),
        };
        let claims = match set_up {
            Ok(claims) => {
                ctx.volume_users.using(
                    &uid,
                    claims
                        .iter()
                        .map(|(volume, c)| crate::local_volume::Use {
                            volume: volume.clone(),
                            namespace: self.key.namespace.clone(),
                            claim: c.claim.clone(),
                            path: c.path.clone(),
                        })
                        .collect(),
                );
                claims
            }
            Err(e) => {
                if self.mount_error.as_deref() != Some(&e.0) {
                    ctx.recorder.pod(
                        &self.key,
                        "",
                        EventType::Warning,
                        "FailedMount",
                        &format!("MountVolume.SetUp failed: {e}"),
                    );
                    self.mount_error = Some(e.0.clone());
                }
                self.report(pod, &observed).await?;
                return Ok(Next::After(Duration::from_secs(2)));
            }
        };
        self.mount_error = None;
        if !self.fs_group_applied {
            if let Err(e) = self.apply_fs_group(pod, &claims) {
                ctx.recorder.pod(
                    &self.key,
                    "",
                    EventType::Warning,
                    "FailedMount",
                    &format!("MountVolume.SetUp failed: {e}"),
                );
                self.report(pod, &observed).await?;
                return Ok(Next::After(Duration::from_secs(2)));
            }
            self.fs_group_applied = true;
        }

        let sandbox = match observed.sandbox().filter(|s| s.ready).cloned() {
            Some(s) => s,
            None => {
                let phase = status::phase(pod, &observed);
                if status::is_terminal(phase)
                    || (observed.sandbox().is_some() && self.finished(pod, &observed))
                {
                    self.report(pod, &observed).await?;
                    return Ok(Next::After(RESYNC));
                }
                match self.create_sandbox(pod, &observed).await {
                    Ok(s) => {
                        observed = runtime::observe(ctx.cri.as_ref(), &uid).await?;
                        s
                    }
                    Err(e) => {
                        ctx.recorder.pod(
                            &self.key,
                            "",
                            EventType::Warning,
                            "FailedCreatePodSandBox",
                            &format!("Failed to create pod sandbox: {e}"),
                        );
                        self.report(pod, &observed).await?;
                        return Ok(Next::After(Duration::from_secs(2)));
                    }
                }
            }
        };
        downward.pod_ip = self.pod_ip(pod, &sandbox.ip);
        let etc_hosts = if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            None
        } else {
            Some(
                volumes::write_etc_hosts(&ctx.pods_dir, pod, &sandbox.ip)
                    .map_err(|e| AgentError::Runtime(e.0))?,
            )
        };
        let sandbox_config = self.sandbox_config(pod, sandbox.attempt);

        if self.handle_probes(pod, &observed, &sandbox).await? {
            observed = runtime::observe(ctx.cri.as_ref(), &uid).await?;
        }
        let launch = Launch {
            sandbox: &sandbox,
            sandbox_config: &sandbox_config,
            sources: &sources,
            downward: &downward,
            etc_hosts: etc_hosts.as_deref(),
            claims: &claims,
        };
        // Containers of an earlier sandbox do not count for this one's init sequence.
        let current = Observed {
            sandboxes: observed.sandboxes.clone(),
            containers: observed
                .containers
                .iter()
                .filter(|c| c.sandbox_id == sandbox.id)
                .cloned()
                .collect(),
        };
        let (started_any, wait) = if status::initialized(pod, &current) {
            self.sync_containers(pod, &observed, &launch).await?
        } else {
            self.sync_init_containers(pod, &current, &observed, &launch).await?
        };
        let mut next = wait.into_iter().chain(self.pending_wait()).fold(RESYNC, Duration::min);
        if let plan::Deadline::Left(left) = deadline {
            next = next.min(left + Duration::from_millis(10));
        }
        // A missing ConfigMap, Secret or key may appear at any time: look again soon.
        if self.waiting.values().any(|w| w.reason.starts_with("CreateContainer")) {
            next = next.min(CONFIG_RETRY);
        }
        if started_any {
            observed = runtime::observe(ctx.cri.as_ref(), &uid).await?;
            self.handle_probes(pod, &observed, &sandbox).await?;
        }
        self.remove_dead(&observed).await?;
        let phase = status::phase(pod, &observed);
        if status::is_terminal(phase) {
            self.stop_sandboxes(&observed).await?;
        }
        self.report(pod, &observed).await?;
        Ok(Next::After(next))
    }

    /// Runs the init containers in order (the step `plan::init_step` gives). Returns whether
    /// it started one, and how long a back-off still holds.
    async fn sync_init_containers(
        &mut self,
        pod: &Pod,
        current: &Observed,
        observed: &Observed,
        launch: &Launch<'_>,
    ) -> Result<(bool, Option<Duration>), AgentError> {
        let backoffs = self.restart_backoff.clone();
        let now = self.ctx.clock.now_ns();
        let backoff = |name: &str, at: i64| Backoff::remaining(backoffs.get(name), at, now);
        let Some(step) = plan::init_step(pod, current, observed, &backoff, now) else {
            return Ok((false, None));
        };
        self.execute(pod, step, launch).await
    }

    /// Starts the containers that never ran and restarts the exited ones the restart policy
    /// brings back after their back-off (the steps `plan::container_steps` gives). Returns
    /// whether it started any, and how long a back-off still holds.
    async fn sync_containers(
        &mut self,
        pod: &Pod,
        observed: &Observed,
        launch: &Launch<'_>,
    ) -> Result<(bool, Option<Duration>), AgentError> {
        let backoffs = self.restart_backoff.clone();
        let now = self.ctx.clock.now_ns();
        let backoff = |name: &str, at: i64| Backoff::remaining(backoffs.get(name), at, now);
        let (mut started_any, mut wait) = (false, None::<Duration>);
        for step in plan::container_steps(pod, observed, &backoff, now) {
            let (started, w) = self.execute(pod, step, launch).await?;
            started_any |= started;
            if let Some(w) = w {
                wait = Some(wait.map_or(w, |old| old.min(w)));
            }
        }
        Ok((started_any, wait))
    }

    /// Carries out one step of the plan: runtime calls, back-off bookkeeping, events and the
    /// waiting reasons status reports.
    async fn execute(
        &mut self,
        pod: &Pod,
        step: plan::Step,
        launch: &Launch<'_>,
    ) -> Result<(bool, Option<Duration>), AgentError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let find = |name: &str, init: bool| -> Option<Container> {
            let list: Vec<&Container> = if init {
                spec.init_containers.iter().flatten().collect()
            } else {
                spec.containers.iter().collect()
            };
            list.into_iter().find(|c| c.name == name).cloned()
        };
        match step {
            plan::Step::Settled { name } => {
                self.waiting.remove(&name);
                Ok((false, None))
            }
            plan::Step::BackOff { name, init, left } => {
                if let Some(c) = find(&name, init) {
                    self.report_backoff(&c, init);
                }
                Ok((false, Some(left + Duration::from_millis(10))))
            }
            plan::Step::Replace { name, init, id, attempt } => {
                runtime::remove_container(self.ctx.cri.as_ref(), &id).await?;
                let Some(c) = find(&name, init) else { return Ok((false, None)) };
                Ok((self.start(pod, &c, init, attempt, launch).await?, None))
            }
            plan::Step::Start { name, init, attempt, restart_of } => {
                if let Some(at) = restart_of {
                    let entry = self.restart_backoff.get(&name).copied();
                    self.restart_backoff.insert(name.clone(), Backoff::step(entry, at));
                }
                let Some(c) = find(&name, init) else { return Ok((false, None)) };
                Ok((self.start(pod, &c, init, attempt, launch).await?, None))
            }
        }
    }

    /// Fails the pod whose active deadline passed, as upstream's kubelet does: its containers
    /// are stopped (within the pod's grace period) and its phase becomes `Failed` with reason
    /// `DeadlineExceeded`.
    async fn fail_pod(&mut self, pod: &Pod, observed: &Observed) -> Result<(), AgentError> {
        const MESSAGE: &str = "Pod was active on the node longer than the specified deadline";
        if self.failed.is_none() {
            self.ctx.recorder.pod(&self.key, "", EventType::Normal, "DeadlineExceeded", MESSAGE);
            self.failed =
                Some(Waiting { reason: "DeadlineExceeded".into(), message: MESSAGE.into() });
        }
        self.probers.clear();
        let grace = self.grace(pod);
        for c in observed.containers.iter().filter(|c| c.state == State::Running) {
            runtime::stop_container(self.ctx.cri.as_ref(), &c.id, grace).await?;
        }
        let observed = runtime::observe(self.ctx.cri.as_ref(), &self.key.uid).await?;
        self.stop_sandboxes(&observed).await?;
        self.report(pod, &observed).await
    }

    /// The soonest time a waiting container should be retried.
    fn pending_wait(&self) -> Option<Duration> {
        let now = self.ctx.clock.now_ns();
        let images = self.pull_backoff.values();
        let restarts = self.restart_backoff.values();
        images
            .chain(restarts)
            .filter_map(|b| {
                let due = b.last_update_ns + b.delay.as_nanos() as i64;
                let left = due - now;
                (left > 0).then(|| Duration::from_nanos(left as u64))
            })
            .min()
            .map(|d| d + Duration::from_millis(10))
    }

    /// Whether every container is done and will not be restarted.
    fn finished(&self, pod: &Pod, observed: &Observed) -> bool {
        status::is_terminal(status::phase(pod, observed))
    }

    /// Marks a container whose restart waits for its back-off `CrashLoopBackOff`, with an event
    /// the first time.
    fn report_backoff(&mut self, c: &Container, init: bool) {
        let delay = self.restart_backoff.get(&c.name).map_or(BACKOFF_INITIAL, |e| e.delay);
        let message = format!(
            "back-off {} restarting failed container={} pod={}",
            format_duration(delay),
            c.name,
            self.key.display()
        );
        let first_report = self.waiting.get(&c.name).is_none_or(|w| w.reason != "CrashLoopBackOff");
        if first_report {
            self.ctx.recorder.pod(
                &self.key,
                &field_path(c, init),
                EventType::Warning,
                "BackOff",
                &format!(
                    "Back-off restarting failed container {} in pod {}",
                    c.name,
                    self.key.display()
                ),
            );
        }
        self.waiting.insert(c.name.clone(), Waiting { reason: "CrashLoopBackOff".into(), message });
    }

    fn sandbox_config(&self, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
        let ctx = &self.ctx;
        let qos = config::qos_class(pod);
        config::sandbox_config(
            pod,
            &ctx.config.node_name,
            attempt,
            &self.log_dir().display().to_string(),
            &config::pod_cgroup_parent(&ctx.config.cgroup_root, qos, &self.key.uid),
            &ctx.dns,
        )
    }

    fn log_dir(&self) -> std::path::PathBuf {
        self.ctx.logs_dir.join(format!("{}_{}_{}", self.key.namespace, self.key.name, self.key.uid))
    }

    async fn create_sandbox(
        &mut self,
        pod: &Pod,
        observed: &Observed,
    ) -> Result<ObservedSandbox, AgentError> {
        let ctx = self.ctx.clone();
        for c in observed.containers.iter().filter(|c| c.state == State::Running) {
            runtime::stop_container(ctx.cri.as_ref(), &c.id, 0).await?;
        }
        if let Some(old) = observed.sandbox() {
            runtime::stop_sandbox(ctx.cri.as_ref(), &old.id, false).await?;
            ctx.recorder.pod(
                &self.key,
                "",
                EventType::Normal,
                "SandboxChanged",
                "Pod sandbox changed, it will be killed and re-created.",
            );
        }
        let attempt = observed.sandbox().map_or(0, |s| s.attempt + 1);
        let qos = config::qos_class(pod);
        let parent = config::pod_cgroup_parent(&ctx.config.cgroup_root, qos, &self.key.uid);
        let limits = super::cgroups::pod_limits(pod, ctx.config.pod_pids_limit);
        if ctx.pod_cgroups
            && let Err(e) = super::cgroups::set_up(&parent, qos, &limits)
        {
            tracing::warn!(pod = %self.key.display(), error = %e, "setting up the pod cgroup failed");
        }
        let log_dir = self.log_dir();
        std::fs::create_dir_all(&log_dir).map_err(|e| AgentError::io(&log_dir, e))?;
        let config = self.sandbox_config(pod, attempt);
        let id = ctx.cri.run_sandbox(config).await?;
        let ip = ctx
            .cri
            .sandbox_status(id.clone(), false)
            .await?
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        Ok(ObservedSandbox { id, attempt, ready: true, created_at: ctx.clock.now_ns(), ip })
    }

    /// Pulls (per policy), configures, creates and starts one container. Returns whether it
    /// started; when it did not, the reason is in `self.waiting`.
    async fn start(
        &mut self,
        pod: &Pod,
        c: &Container,
        init: bool,
        attempt: u32,
        launch: &Launch<'_>,
    ) -> Result<bool, AgentError> {
        let Launch { sandbox, sandbox_config, sources, downward, etc_hosts, claims } = *launch;
        let ctx = self.ctx.clone();
        let path = field_path(c, init);
        let Some(image) = self.ensure_image(pod, c, &path).await? else { return Ok(false) };
        if let Some(message) = self.verify_non_root(pod, c, &image).await? {
            self.fail(c, &path, "CreateContainerConfigError", &message);
            return Ok(false);
        }
        let services = env::visible_services(&ctx.client, pod).await?;
        let env = match env::resolve(pod, c, sources, downward, services) {
            Ok(env) => env,
            Err(e) => {
                self.fail(c, &path, "CreateContainerConfigError", &e.0);
                return Ok(false);
            }
        };
        let mut mounts =
            match volumes::container_mounts(&ctx.pods_dir, pod, c, &env, etc_hosts, claims) {
                Ok(m) => m,
                Err(e) => {
                    self.fail(c, &path, "CreateContainerConfigError", &e.0);
                    return Ok(false);
                }
            };
        // The termination message file, read back when the container ends.
        let message_file = self.termination_file(&c.name, attempt);
        if let Some(dir) = message_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
        }
        std::fs::write(&message_file, b"").map_err(|e| AgentError::io(&message_file, e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&message_file, std::fs::Permissions::from_mode(0o666));
        }
        mounts.push(cri::Mount {
            container_path: c
                .termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
            host_path: message_file.display().to_string(),
            ..Default::default()
        });
        let devices = match volumes::container_devices(c, claims) {
            Ok(d) => d,
            Err(e) => {
                self.fail(c, &path, "CreateContainerConfigError", &e.0);
                return Ok(false);
            }
        };
        let inputs =
            ContainerInputs { env, mounts, devices, image, attempt, node_memory: ctx.node_memory };
        let config = config::container_config(pod, c, &ctx.config.node_name, &inputs);
        let created =
            ctx.cri.create_container(sandbox.id.clone(), config, sandbox_config.clone()).await;
        let id = match created {
            Ok(id) => id,
            Err(e) => {
                self.fail(c, &path, "CreateContainerError", e.message());
                return Ok(false);
            }
        };
        ctx.recorder.pod(
            &self.key,
            &path,
            EventType::Normal,
            "Created",
            &format!("Created container: {}", c.name),
        );
        if let Err(e) = ctx.cri.start_container(id.clone()).await {
            self.fail(c, &path, "RunContainerError", e.message());
            return Ok(false);
        }
        ctx.recorder.pod(
            &self.key,
            &path,
            EventType::Normal,
            "Started",
            &format!("Started container {}", c.name),
        );
        self.waiting.remove(&c.name);
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let target =
                probe::Target { container_id: id.clone(), pod_ip: self.pod_ip(pod, &sandbox.ip) };
            if let Err(why) =
                probe::run_hook(ctx.cri.as_ref(), hook, c, &target, Duration::from_secs(30)).await
            {
                ctx.recorder.pod(
                    &self.key,
                    &path,
                    EventType::Warning,
                    "FailedPostStartHook",
                    &format!("PostStartHook failed: {why}"),
                );
                runtime::stop_container(ctx.cri.as_ref(), &id, self.grace(pod)).await?;
            }
        }
        Ok(true)
    }

    /// Where container `name`'s attempt `attempt` writes its termination message.
    fn termination_file(&self, name: &str, attempt: u32) -> std::path::PathBuf {
        self.ctx
            .pods_dir
            .join(&self.key.uid)
            .join("containers")
            .join(name)
            .join(attempt.to_string())
    }

    /// With `runAsNonRoot`, a container that would run as root (or as a user named rather
    /// than numbered, which cannot be checked) is refused, as upstream does.
    async fn verify_non_root(
        &self,
        pod: &Pod,
        c: &Container,
        image: &str,
    ) -> Result<Option<String>, AgentError> {
        let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.run_as_non_root.or(pod_sc.run_as_non_root) != Some(true) {
            return Ok(None);
        }
        let uid = match sc.run_as_user.or(pod_sc.run_as_user) {
            Some(uid) => Some(uid),
            None => images::status(self.ctx.cri.as_ref(), image)
                .await?
                .as_ref()
                .and_then(images::image_user),
        };
        Ok(match uid {
            Some(0) => Some("container has runAsNonRoot and image will run as root".to_owned()),
            Some(_) => None,
            None => Some(
                "container has runAsNonRoot and image has non-numeric user, cannot verify user is non-root".to_owned(),
            ),
        })
    }

    /// Fills in the termination messages of exited containers from their files (or, with
    /// `FallbackToLogsOnError`, the end of their log when they failed without one).
    fn read_termination_messages(&self, pod: &Pod, observed: &mut Observed) {
        let spec = pod.spec.clone().unwrap_or_default();
        let all: Vec<&Container> =
            spec.containers.iter().chain(spec.init_containers.iter().flatten()).collect();
        for o in observed
            .containers
            .iter_mut()
            .filter(|o| o.state == State::Exited && o.message.is_empty())
        {
            let mut message =
                std::fs::read(self.termination_file(&o.name, o.attempt)).unwrap_or_default();
            message.truncate(4096);
            let fallback = all.iter().find(|c| c.name == o.name).is_some_and(|c| {
                c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
            });
            if message.is_empty() && fallback && o.exit_code != 0 {
                let log = std::fs::read_to_string(&o.log_path).unwrap_or_default();
                let lines: Vec<&str> = log
                    .lines()
                    .filter_map(|l| crate::cri::log::parse_line(l).map(|p| p.text))
                    .collect();
                let tail = lines[lines.len().saturating_sub(80)..].join("\n");
                message = tail.into_bytes();
                message.truncate(2048);
            }
            o.message = String::from_utf8_lossy(&message).trim_end().to_owned();
        }
    }

    /// The address probes and hooks connect to: the sandbox's, or the node's for pods on the
    /// host network.
    /// The pod's `fsGroup` on its emptyDir and `local` claim volumes.
    fn apply_fs_group(
        &self,
        pod: &Pod,
        claims: &super::claims::Claims,
    ) -> Result<(), volumes::MountError> {
        let Some(spec) = pod.spec.as_ref() else { return Ok(()) };
        let sc = spec.security_context.as_ref();
        let Some(gid) = sc.and_then(|s| s.fs_group).and_then(|g| u32::try_from(g).ok()) else {
            return Ok(());
        };
        let policy = sc.and_then(|s| s.fs_group_change_policy.as_deref());
        for volume in spec.volumes.iter().flatten() {
            let path = if volume.empty_dir.is_some() {
                volumes::volume_path(&self.ctx.pods_dir, &self.key.uid, volume)
            } else if let Some(c) = claims.get(&volume.name).filter(|c| c.takes_fs_group) {
                c.path.clone()
            } else {
                continue;
            };
            super::ownership::set_fs_group(&path, gid, policy)?;
        }
        Ok(())
    }

    fn pod_ip(&self, pod: &Pod, sandbox_ip: &str) -> String {
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            self.ctx.config.node_ip.to_string()
        } else {
            sandbox_ip.to_owned()
        }
    }

    fn grace(&self, pod: &Pod) -> i64 {
        pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0)
    }

    /// Keeps one set of probe tasks per running container and restarts containers whose
    /// liveness or startup probe failed. Returns whether it stopped any.
    async fn handle_probes(
        &mut self,
        pod: &Pod,
        observed: &Observed,
        sandbox: &ObservedSandbox,
    ) -> Result<bool, AgentError> {
        let ctx = self.ctx.clone();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut killed = false;
        let mut keep = std::collections::HashSet::new();
        for c in &spec.containers {
            let Some(o) = observed.latest(&c.name).filter(|o| o.state == State::Running) else {
                continue;
            };
            // A container whose image the pod's spec changed is restarted with the new one,
            // as upstream's kubelet does (`kubectl set image` on a pod).
            if o.spec_image.as_deref().is_some_and(|i| Some(i) != c.image.as_deref()) {
                let message = format!("Container {} definition changed, will be restarted", c.name);
                ctx.recorder.pod(
                    &self.key,
                    &field_path(c, false),
                    EventType::Normal,
                    "Killing",
                    &message,
                );
                let grace = self.grace(pod);
                self.pre_stop(c, &o.id, &self.pod_ip(pod, &sandbox.ip), grace).await;
                runtime::stop_container(ctx.cri.as_ref(), &o.id, grace).await?;
                self.probers.remove(&c.name);
                killed = true;
                continue;
            }
            if c.liveness_probe.is_none()
                && c.readiness_probe.is_none()
                && c.startup_probe.is_none()
            {
                continue;
            }
            keep.insert(c.name.clone());
            let current = self.probers.get(&c.name).is_some_and(|p| p.container_id == o.id);
            if !current {
                let recorder = ctx.recorder.clone();
                let key = self.key.clone();
                let path = field_path(c, false);
                let report: probe::Report = Arc::new(move |kind: probe::Kind, why: &str| {
                    recorder.pod(
                        &key,
                        &path,
                        EventType::Warning,
                        "Unhealthy",
                        &format!("{} probe failed: {why}", kind.name()),
                    );
                });
                let target = probe::Target {
                    container_id: o.id.clone(),
                    pod_ip: self.pod_ip(pod, &sandbox.ip),
                };
                let probers = probe::start(ctx.cri.clone(), c, target, self.wake.clone(), report);
                self.probers.insert(c.name.clone(), probers);
                continue;
            }
            let kill = self
                .probers
                .get(&c.name)
                .and_then(|p| p.state.lock().ok().and_then(|s| s.kill.clone()));
            if let Some(message) = kill {
                let path = field_path(c, false);
                ctx.recorder.pod(&self.key, &path, EventType::Normal, "Killing", &message);
                let grace = c
                    .liveness_probe
                    .as_ref()
                    .and_then(|p| p.termination_grace_period_seconds)
                    .unwrap_or_else(|| self.grace(pod));
                self.pre_stop(c, &o.id, &self.pod_ip(pod, &sandbox.ip), grace).await;
                runtime::stop_container(ctx.cri.as_ref(), &o.id, grace).await?;
                self.probers.remove(&c.name);
                keep.remove(&c.name);
                killed = true;
            }
        }
        self.probers.retain(|name, _| keep.contains(name));
        Ok(killed)
    }

    /// Runs a container's preStop hook, bounded by its grace period.
    async fn pre_stop(&self, c: &Container, container_id: &str, pod_ip: &str, grace: i64) {
        let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else { return };
        let target =
            probe::Target { container_id: container_id.to_owned(), pod_ip: pod_ip.to_owned() };
        let timeout = Duration::from_secs(grace.max(1) as u64);
        let run = probe::run_hook(self.ctx.cri.as_ref(), hook, c, &target, timeout);
        if let Ok(Err(why)) = tokio::time::timeout(timeout, run).await {
            self.ctx.recorder.pod(
                &self.key,
                &field_path(c, false),
                EventType::Warning,
                "FailedPreStopHook",
                &format!("PreStopHook failed: {why}"),
            );
        }
    }

    fn fail(&mut self, c: &Container, path: &str, reason: &str, message: &str) {
        let known =
            self.waiting.get(&c.name).is_some_and(|w| w.reason == reason && w.message == message);
        if !known {
            self.ctx.recorder.pod(
                &self.key,
                path,
                EventType::Warning,
                "Failed",
                &format!("Error: {message}"),
            );
        }
        self.waiting
            .insert(c.name.clone(), Waiting { reason: reason.into(), message: message.into() });
    }

    /// The image reference to run, pulling it as the policy says; `None` when it is not
    /// available (the reason is recorded).
    async fn ensure_image(
        &mut self,
        pod: &Pod,
        c: &Container,
        path: &str,
    ) -> Result<Option<String>, AgentError> {
        let ctx = self.ctx.clone();
        let image = c.image.clone().unwrap_or_default();
        let policy = images::pull_policy(c);
        let present = images::status(ctx.cri.as_ref(), &image).await?.map(|i| i.id);
        match (policy.as_str(), present) {
            ("Never", Some(id)) | ("IfNotPresent", Some(id)) => {
                if !self.waiting.contains_key(&c.name) {
                    ctx.recorder.pod(
                        &self.key,
                        path,
                        EventType::Normal,
                        "Pulled",
                        &format!("Container image \"{image}\" already present on machine"),
                    );
                }
                return Ok(Some(id));
            }
            ("Never", None) => {
                let message =
                    format!("Container image \"{image}\" is not present with pull policy of Never");
                self.fail(c, path, "ErrImageNeverPull", &message);
                return Ok(None);
            }
            _ => {}
        }
        let entry = self.pull_backoff.get(&image).copied();
        if let Some(e) = entry
            && Backoff::remaining(Some(&e), e.last_update_ns, ctx.clock.now_ns()).is_some()
        {
            let message = format!("Back-off pulling image \"{image}\"");
            if self.waiting.get(&c.name).is_none_or(|w| w.reason != "ImagePullBackOff") {
                ctx.recorder.pod(&self.key, path, EventType::Normal, "BackOff", &message);
            }
            self.waiting
                .insert(c.name.clone(), Waiting { reason: "ImagePullBackOff".into(), message });
            return Ok(None);
        }
        ctx.recorder.pod(
            &self.key,
            path,
            EventType::Normal,
            "Pulling",
            &format!("Pulling image \"{image}\""),
        );
        let started = std::time::Instant::now();
        let auths = images::credentials(&ctx.client, pod, &image).await;
        match images::pull(ctx.cri.as_ref(), &image, auths).await {
            Ok(reference) => {
                self.pull_backoff.remove(&image);
                ctx.recorder.pod(
                    &self.key,
                    path,
                    EventType::Normal,
                    "Pulled",
                    &format!(
                        "Successfully pulled image \"{image}\" in {:.3}s",
                        started.elapsed().as_secs_f64()
                    ),
                );
                Ok(Some(reference))
            }
            Err(e) => {
                self.pull_backoff.insert(image.clone(), Backoff::step(entry, ctx.clock.now_ns()));
                let message = format!("Failed to pull image \"{image}\": {}", e.message());
                ctx.recorder.pod(&self.key, path, EventType::Warning, "Failed", &message);
                ctx.recorder.pod(
                    &self.key,
                    path,
                    EventType::Warning,
                    "Failed",
                    "Error: ErrImagePull",
                );
                self.waiting
                    .insert(c.name.clone(), Waiting { reason: "ErrImagePull".into(), message });
                Ok(None)
            }
        }
    }

    /// Removes exited containers beyond the newest two of each name (the newest and the one
    /// `--previous` shows), and containers of sandboxes that are gone.
    async fn remove_dead(&self, observed: &Observed) -> Result<(), AgentError> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for c in &observed.containers {
            let n = seen.entry(c.name.as_str()).or_default();
            *n += 1;
            if *n > 2 && c.state == State::Exited {
                runtime::remove_container(self.ctx.cri.as_ref(), &c.id).await?;
            }
        }
        Ok(())
    }

    async fn stop_sandboxes(&self, observed: &Observed) -> Result<(), AgentError> {
        for c in observed.containers.iter().filter(|c| c.state == State::Running) {
            runtime::stop_container(self.ctx.cri.as_ref(), &c.id, 0).await?;
        }
        for s in observed.sandboxes.iter().filter(|s| s.ready) {
            runtime::stop_sandbox(self.ctx.cri.as_ref(), &s.id, false).await?;
        }
        Ok(())
    }

    /// Writes the pod's status when it changed.
    async fn report(&mut self, pod: &Pod, observed: &Observed) -> Result<(), AgentError> {
        let mut observed = observed.clone();
        self.read_termination_messages(pod, &mut observed);
        let observed = &observed;
        // Truncated to the second, as upstream serialises times (see `status::rfc3339`).
        let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
            .unwrap_or_else(|_| jiff::Timestamp::now())
            .to_string();
        let start_time = self.start_time.clone().unwrap_or_else(|| now.clone());
        let qos: QosClass = config::qos_class(pod);
        let mut ready = HashMap::new();
        let mut started = HashMap::new();
        for (name, p) in &self.probers {
            if let Ok(state) = p.state.lock() {
                ready.insert(name.clone(), state.ready);
                started.insert(name.clone(), state.started);
            }
        }
        let status = status::pod_status(&status::Inputs {
            pod,
            observed,
            waiting: &self.waiting,
            ready: &ready,
            started: &started,
            host_ip: &self.ctx.config.node_ip.to_string(),
            start_time: &start_time,
            now: &now,
            qos: qos.as_str(),
            failed: self.failed.as_ref(),
        });
        if self.last_status.as_ref() == Some(&status) {
            return Ok(());
        }
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        let patch = json!({ "metadata": { "uid": self.key.uid }, "status": status });
        match pods
            .patch_status(&self.key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.last_status = Some(status);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stops the pod's containers (SIGTERM, then SIGKILL after `grace` seconds), removes its
    /// sandboxes and volumes, and deletes the pod from the API.
    async fn terminate(&mut self, pod: Option<&Pod>, grace: i64) -> Result<(), AgentError> {
        let ctx = self.ctx.clone();
        let observed = runtime::observe(ctx.cri.as_ref(), &self.key.uid).await?;
        let running: Vec<&ObservedContainer> =
            observed.containers.iter().filter(|c| c.state == State::Running).collect();
        self.probers.clear();
        let hooks_started = std::time::Instant::now();
        if let Some(p) = pod {
            let ip = self.pod_ip(p, &observed.sandbox().map(|s| s.ip.clone()).unwrap_or_default());
            let hooks = running.iter().filter_map(|o| {
                let spec = p.spec.as_ref()?.containers.iter().find(|c| c.name == o.name)?;
                Some(self.pre_stop(spec, &o.id, &ip, grace))
            });
            futures::future::join_all(hooks).await;
        }
        // What the hooks used comes off the grace period, leaving at least 2 s, as upstream.
        let used = hooks_started.elapsed().as_secs() as i64;
        let grace = plan::grace_after_hooks(grace, used);
        let mut stops = Vec::new();
        for c in &running {
            if pod.is_some() {
                let init = pod
                    .and_then(|p| p.spec.as_ref())
                    .is_some_and(|s| s.init_containers.iter().flatten().any(|i| i.name == c.name));
                let path = if init {
                    format!("spec.initContainers{{{}}}", c.name)
                } else {
                    format!("spec.containers{{{}}}", c.name)
                };
                ctx.recorder.pod(
                    &self.key,
                    &path,
                    EventType::Normal,
                    "Killing",
                    &format!("Stopping container {}", c.name),
                );
            }
            stops.push(runtime::stop_container(ctx.cri.as_ref(), &c.id, grace));
        }
        for result in futures::future::join_all(stops).await {
            result?;
        }
        if let Some(pod) = pod {
            let observed = runtime::observe(ctx.cri.as_ref(), &self.key.uid).await?;
            self.report(pod, &observed).await?;
        }
        for s in &observed.sandboxes {
            runtime::stop_sandbox(ctx.cri.as_ref(), &s.id, true).await?;
        }
        volumes::tear_down(&ctx.pods_dir, &self.key.uid).map_err(|e| AgentError::Runtime(e.0))?;
        if let Some(storage) = ctx.config.local_storage_path.as_deref() {
            for path in ctx.volume_users.release(&self.key.uid) {
                if let Err(e) = crate::local_volume::unmount(storage, &path) {
                    tracing::warn!(path = %path.display(), error = %e, "unmounting a local volume failed");
                }
            }
        }
        for qos in [QosClass::Guaranteed, QosClass::Burstable, QosClass::BestEffort] {
            if !ctx.pod_cgroups {
                break;
            }
            super::cgroups::tear_down(&config::pod_cgroup_parent(
                &ctx.config.cgroup_root,
                qos,
                &self.key.uid,
            ));
        }
        let _ = std::fs::remove_dir_all(self.log_dir());
        if pod.is_some() {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &self.key.namespace);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.key.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match pods.delete(&self.key.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(pod = %self.key.display(), "pod removed from the node");
        Ok(())
    }
}

/// `10s`, `1m20s`, `5m0s`, as Go prints durations in upstream's messages.
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 { format!("{}m{}s", secs / 60, secs % 60) } else { format!("{secs}s") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::fake::Recorded;
    use crate::pods::testing::Harness;

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "uid": "uid-1"},
            "spec": spec,
        }))
        .expect("a valid pod")
    }

    fn container(name: &str) -> Value {
        json!({"name": name, "image": "busybox:1", "imagePullPolicy": "IfNotPresent"})
    }

    fn worker(h: &Harness, pod: &Pod) -> Worker {
        Worker::new(h.ctx.clone(), PodKey::of(pod), Arc::new(tokio::sync::Notify::new()))
    }

    fn starts(h: &Harness) -> Vec<String> {
        h.runtime
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Recorded::Start { name } => Some(name),
                _ => None,
            })
            .collect()
    }

    /// The `status` of the last status patch the worker sent.
    fn last_status(h: &Harness) -> Value {
        h.requests("PATCH", "/pods/p/status")
            .last()
            .map(|c| c.body["status"].clone())
            .unwrap_or_default()
    }

    async fn sync(w: &mut Worker, pod: &Pod) -> Duration {
        match w.sync(Some(pod)).await.expect("sync") {
            Next::After(d) => d,
            Next::Done => panic!("the worker ended for a live pod"),
        }
    }

    #[tokio::test]
    async fn init_containers_run_one_at_a_time_in_order_before_the_containers() {
        let h = Harness::new();
        h.runtime.exit_on_start("first", &[0]);
        h.runtime.exit_on_start("second", &[0]);
        let pod = pod(json!({
            "initContainers": [container("first"), container("second")],
            "containers": [container("main")],
        }));
        let mut w = worker(&h, &pod);
        sync(&mut w, &pod).await;
        // One sync starts one init container, never the next before the last has finished.
        assert_eq!(starts(&h), ["first"]);
        assert_eq!(
            last_status(&h)["initContainerStatuses"][1]["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        sync(&mut w, &pod).await;
        assert_eq!(starts(&h), ["first", "second"]);
        sync(&mut w, &pod).await;
        assert_eq!(starts(&h), ["first", "second", "main"]);
        assert_eq!(h.runtime.running(), ["main"]);
        // Settled: nothing more is started, and the pod runs.
        sync(&mut w, &pod).await;
        assert_eq!(starts(&h).len(), 3);
        assert_eq!(last_status(&h)["phase"], "Running");
    }

    #[tokio::test]
    async fn a_changed_image_restarts_the_container_with_the_new_one() {
        let h = Harness::new();
        let pod_a = pod(json!({"containers": [container("main")]}));
        let mut w = worker(&h, &pod_a);
        sync(&mut w, &pod_a).await;
        assert_eq!(starts(&h), ["main"]);
        // The same spec again: nothing happens.
        sync(&mut w, &pod_a).await;
        assert_eq!(starts(&h), ["main"]);
        let pod_b = pod(json!({"terminationGracePeriodSeconds": 3,
            "containers": [{"name": "main", "image": "busybox:2", "imagePullPolicy": "IfNotPresent"}]}));
        sync(&mut w, &pod_b).await;
        let stops: Vec<(String, i64)> = h
            .runtime
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Recorded::Stop { name, timeout } => Some((name, timeout)),
                _ => None,
            })
            .collect();
        assert_eq!(stops, [("main".to_owned(), 3)], "stopped within the pod's grace period");
        sync(&mut w, &pod_b).await;
        assert_eq!(starts(&h), ["main", "main"], "started again, with the new image");
        sync(&mut w, &pod_b).await;
        assert_eq!(starts(&h).len(), 2, "and left alone after");
    }

    #[tokio::test]
    async fn a_failed_init_container_fails_the_pod_under_restart_policy_never() {
        let h = Harness::new();
        h.runtime.exit_on_start("setup", &[3]);
        let pod = pod(json!({
            "restartPolicy": "Never",
            "initContainers": [container("setup")],
            "containers": [container("main")],
        }));
        let mut w = worker(&h, &pod);
        for _ in 0..3 {
            sync(&mut w, &pod).await;
        }
        assert_eq!(starts(&h), ["setup"], "neither retried nor followed by the containers");
        let status = last_status(&h);
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 3);
        let initialized = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Initialized").cloned())
            .unwrap_or_default();
        assert_eq!(initialized["status"], "False");
        assert_eq!(initialized["reason"], "ContainersNotInitialized");
        assert_eq!(initialized["message"], "containers with incomplete status: [setup]");
    }

    #[tokio::test]
    async fn crashing_containers_restart_with_a_doubling_back_off() {
        let h = Harness::new();
        h.runtime.exit_on_start("app", &[1, 1, 1, 1, 1]);
        let pod = pod(json!({"containers": [container("app")]}));
        let mut w = worker(&h, &pod);
        sync(&mut w, &pod).await;
        assert_eq!(starts(&h).len(), 1);
        // The first crash restarts at once (and arms the 10 s back-off), as upstream does.
        sync(&mut w, &pod).await;
        assert_eq!(starts(&h).len(), 2);
        // The second waits: the worker asks to be woken when the back-off ends.
        let wait = sync(&mut w, &pod).await;
        assert_eq!(starts(&h).len(), 2);
        assert!(wait > Duration::from_secs(9) && wait <= Duration::from_secs(11), "{wait:?}");
        let waiting = &last_status(&h)["containerStatuses"][0]["state"]["waiting"];
        assert_eq!(waiting["reason"], "CrashLoopBackOff");
        assert!(waiting["message"].as_str().unwrap_or_default().starts_with("back-off 10s"));
        assert_eq!(last_status(&h)["containerStatuses"][0]["restartCount"], 1);
        h.clock.advance(Duration::from_secs(10));
        sync(&mut w, &pod).await;
        assert_eq!(starts(&h).len(), 3);
        // Now 20 s: half of it is not enough.
        h.clock.advance(Duration::from_secs(10));
        let wait = sync(&mut w, &pod).await;
        assert_eq!(starts(&h).len(), 3);
        assert!(wait > Duration::from_secs(9) && wait <= Duration::from_secs(11), "{wait:?}");
        assert!(
            last_status(&h)["containerStatuses"][0]["state"]["waiting"]["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("back-off 20s")
        );
        h.clock.advance(Duration::from_secs(10));
        sync(&mut w, &pod).await;
        assert_eq!(starts(&h).len(), 4);
        // Every restart is a new attempt of the container.
        let attempts: Vec<u32> = h
            .runtime
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Recorded::Create { attempt, .. } => Some(attempt),
                _ => None,
            })
            .collect();
        assert_eq!(attempts, [0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn on_failure_restarts_only_what_failed_and_a_clean_exit_completes_the_pod() {
        let h = Harness::new();
        let pod = pod(json!({
            "restartPolicy": "OnFailure",
            "containers": [container("worker"), container("helper")],
        }));
        let mut w = worker(&h, &pod);
        sync(&mut w, &pod).await;
        h.runtime.exit("worker", 2);
        h.runtime.exit("helper", 0);
        sync(&mut w, &pod).await;
        assert_eq!(starts(&h), ["worker", "helper", "worker"]);
        assert_eq!(last_status(&h)["phase"], "Running");
        h.runtime.exit("worker", 0);
        sync(&mut w, &pod).await;
        assert_eq!(starts(&h).len(), 3);
        assert_eq!(last_status(&h)["phase"], "Succeeded");
        // A finished pod gives its sandbox back.
        assert!(h.runtime.calls().contains(&Recorded::StopSandbox));
    }

    #[tokio::test]
    async fn a_pod_past_its_active_deadline_is_stopped_and_failed() {
        let h = Harness::new();
        let mut pod = pod(json!({"containers": [container("app")]}));
        let mut w = worker(&h, &pod);
        sync(&mut w, &pod).await;
        // Set on a running pod, as `kubectl patch` does: the wake-up comes at the deadline.
        pod.spec.as_mut().expect("spec").active_deadline_seconds = Some(5);
        let wait = sync(&mut w, &pod).await;
        assert!(wait > Duration::from_secs(4) && wait <= Duration::from_secs(6), "{wait:?}");
        assert_eq!(h.runtime.running(), ["app"]);
        h.clock.advance(Duration::from_secs(5));
        sync(&mut w, &pod).await;
        assert!(h.runtime.running().is_empty());
        assert!(h.runtime.calls().contains(&Recorded::Stop { name: "app".into(), timeout: 30 }));
        let status = last_status(&h);
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["reason"], "DeadlineExceeded");
        assert_eq!(
            status["message"],
            "Pod was active on the node longer than the specified deadline"
        );
        // Nothing is restarted afterwards, though the policy is Always.
        sync(&mut w, &pod).await;
        assert_eq!(starts(&h), ["app"]);
    }

    #[tokio::test]
    async fn a_deleted_pod_runs_its_pre_stop_hook_then_stops_within_its_grace_period() {
        let h = Harness::new();
        let mut spec = json!({
            "terminationGracePeriodSeconds": 45,
            "containers": [container("web"), container("sidecar")],
        });
        spec["containers"][0]["lifecycle"] =
            json!({"preStop": {"exec": {"command": ["/bin/drain", "--now"]}}});
        let live = pod(spec);
        let mut w = worker(&h, &live);
        sync(&mut w, &live).await;
        assert_eq!(h.runtime.running().len(), 2);
        let mut deleted = live.clone();
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        deleted.metadata.deletion_grace_period_seconds = Some(30);
        assert_eq!(w.sync(Some(&deleted)).await.expect("sync"), Next::Done);
        let calls = h.runtime.calls();
        let at = |wanted: &Recorded| {
            calls
                .iter()
                .position(|c| c == wanted)
                .unwrap_or_else(|| panic!("no {wanted:?} in {calls:?}"))
        };
        let hook = at(&Recorded::ExecSync {
            name: "web".into(),
            cmd: vec!["/bin/drain".into(), "--now".into()],
        });
        // The deletion's grace period wins over the spec's; the hook runs before the stop.
        let stop_web = at(&Recorded::Stop { name: "web".into(), timeout: 30 });
        let stop_sidecar = at(&Recorded::Stop { name: "sidecar".into(), timeout: 30 });
        let remove_sandbox = at(&Recorded::RemoveSandbox);
        assert!(hook < stop_web && stop_web < remove_sandbox && stop_sidecar < remove_sandbox);
        assert!(h.runtime.running().is_empty());
        // Only then is the pod removed from the API: at once, and only this incarnation.
        let deletes = h.requests("DELETE", "/namespaces/default/pods/p");
        assert_eq!(deletes.len(), 1);
        assert_eq!(deletes[0].body["gracePeriodSeconds"], 0);
        assert_eq!(deletes[0].body["preconditions"]["uid"], "uid-1");
    }

    #[tokio::test]
    async fn a_pod_gone_from_the_api_is_stopped_quickly_without_hooks() {
        let h = Harness::new();
        let mut spec =
            json!({"terminationGracePeriodSeconds": 600, "containers": [container("web")]});
        spec["containers"][0]["lifecycle"] =
            json!({"preStop": {"exec": {"command": ["/bin/drain"]}}});
        let live = pod(spec);
        let mut w = worker(&h, &live);
        sync(&mut w, &live).await;
        assert_eq!(w.sync(None).await.expect("sync"), Next::Done);
        let calls = h.runtime.calls();
        assert!(!calls.iter().any(|c| matches!(c, Recorded::ExecSync { .. })), "{calls:?}");
        assert!(calls.contains(&Recorded::Stop { name: "web".into(), timeout: 2 }), "{calls:?}");
        assert!(calls.contains(&Recorded::RemoveSandbox));
        assert!(h.requests("DELETE", "/pods/p").is_empty(), "nothing to delete in the API");
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_quiet_period() {
        let now_ns = || jiff::Timestamp::now().as_nanosecond() as i64;
        let t0 = now_ns();
        let first = Backoff::step(None, t0);
        assert_eq!(first.delay, BACKOFF_INITIAL);
        let mut b = first;
        for _ in 0..10 {
            b = Backoff::step(Some(b), t0);
        }
        assert_eq!(b.delay, BACKOFF_MAX);
        // A crash right now is inside the window; one long after the last step is not.
        assert!(Backoff::remaining(Some(&first), now_ns(), now_ns()).is_some());
        let later = t0 + 2 * BACKOFF_MAX.as_nanos() as i64 + 1;
        assert!(Backoff::remaining(Some(&first), later, later).is_none());
        assert_eq!(Backoff::step(Some(b), later).delay, BACKOFF_INITIAL);
        assert_eq!(format_duration(Duration::from_secs(20)), "20s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m0s");
    }
}
