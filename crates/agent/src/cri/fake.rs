//! A recording fake of the runtime, for unit tests of the pod worker: it keeps sandboxes and
//! containers in memory with the states and timestamps CRI reports, records every call in
//! order, and lets a test script what a container does when started (exit at once with a
//! code, or run until stopped) and make a running one exit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use k8s_cri::v1 as cri;

use super::{Call, Runtime};
use crate::clock::Clock;
use crate::pods::config::LABEL_CONTAINER_NAME;

/// One call the worker made, by container name rather than runtime ID so tests read well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recorded {
    RunSandbox { attempt: u32 },
    StopSandbox,
    RemoveSandbox,
    Create { name: String, attempt: u32 },
    Start { name: String },
    Stop { name: String, timeout: i64 },
    Remove { name: String },
    ExecSync { name: String, cmd: Vec<String> },
    Pull { image: String },
}

#[derive(Debug)]
struct Container {
    container: cri::Container,
    status: cri::ContainerStatus,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    sandboxes: BTreeMap<String, cri::PodSandbox>,
    containers: BTreeMap<String, Container>,
    /// Per container name: exit codes for its next starts (exit at once); none left = runs.
    exits: HashMap<String, VecDeque<i32>>,
    calls: Vec<Recorded>,
}

/// The fake runtime. Every image is present.
#[derive(Debug)]
pub(crate) struct FakeRuntime {
    clock: Clock,
    state: Mutex<State>,
}

fn matches(labels: &HashMap<String, String>, want: &HashMap<String, String>) -> bool {
    want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn not_found(what: &str, id: &str) -> tonic::Status {
    tonic::Status::not_found(format!("{what} {id} not found"))
}

impl FakeRuntime {
    pub(crate) fn new(clock: Clock) -> FakeRuntime {
        FakeRuntime { clock, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calls made so far, in order.
    pub(crate) fn calls(&self) -> Vec<Recorded> {
        self.state().calls.clone()
    }

    /// The next starts of container `name` exit at once with these codes, in order.
    pub(crate) fn exit_on_start(&self, name: &str, codes: &[i32]) {
        self.state().exits.entry(name.to_owned()).or_default().extend(codes);
    }

    /// Makes the running container `name` exit with `code` now.
    pub(crate) fn exit(&self, name: &str, code: i32) {
        let now = self.clock.now_ns();
        let mut state = self.state();
        for c in state.containers.values_mut() {
            if c.status.metadata.as_ref().is_some_and(|m| m.name == name)
                && c.status.state == cri::ContainerState::ContainerRunning as i32
            {
                Self::finish(c, code, now);
            }
        }
    }

    /// Names of the containers running now.
    pub(crate) fn running(&self) -> Vec<String> {
        let state = self.state();
        state
            .containers
            .values()
            .filter(|c| c.status.state == cri::ContainerState::ContainerRunning as i32)
            .filter_map(|c| c.status.metadata.as_ref().map(|m| m.name.clone()))
            .collect()
    }

    fn finish(c: &mut Container, code: i32, now: i64) {
        c.status.state = cri::ContainerState::ContainerExited as i32;
        c.container.state = c.status.state;
        c.status.finished_at = now;
        c.status.exit_code = code;
        c.status.reason = if code == 0 { "Completed" } else { "Error" }.into();
    }

    fn name_of(state: &State, id: &str) -> String {
        state
            .containers
            .get(id)
            .and_then(|c| c.container.labels.get(LABEL_CONTAINER_NAME).cloned())
            .unwrap_or_else(|| id.to_owned())
    }

    fn done<T: Send + 'static>(value: Result<T, tonic::Status>) -> Call<'static, T> {
        Box::pin(std::future::ready(value))
    }
}

impl Runtime for FakeRuntime {
    fn version(&self) -> Call<'_, (String, String)> {
        Self::done(Ok(("fake".into(), "v1".into())))
    }

    fn status(&self) -> Call<'_, Vec<cri::RuntimeCondition>> {
        let ready = |t: &str| cri::RuntimeCondition {
            r#type: t.into(),
            status: true,
            ..Default::default()
        };
        Self::done(Ok(vec![ready("RuntimeReady"), ready("NetworkReady")]))
    }

    fn list_sandboxes(&self, labels: HashMap<String, String>) -> Call<'_, Vec<cri::PodSandbox>> {
        let state = self.state();
        let items =
            state.sandboxes.values().filter(|s| matches(&s.labels, &labels)).cloned().collect();
        Self::done(Ok(items))
    }

    fn sandbox_status(
        &self,
        id: String,
        _verbose: bool,
    ) -> Call<'_, cri::PodSandboxStatusResponse> {
        let state = self.state();
        let result = match state.sandboxes.get(&id) {
            Some(s) => Ok(cri::PodSandboxStatusResponse {
                status: Some(cri::PodSandboxStatus {
                    id: s.id.clone(),
                    state: s.state,
                    network: Some(cri::PodSandboxNetworkStatus {
                        ip: "10.42.0.9".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            None => Err(not_found("sandbox", &id)),
        };
        Self::done(result)
    }

    fn run_sandbox(&self, config: cri::PodSandboxConfig) -> Call<'_, String> {
        let now = self.clock.now_ns();
        let mut state = self.state();
        state.next_id += 1;
        let id = format!("sandbox-{}", state.next_id);
        let attempt = config.metadata.as_ref().map_or(0, |m| m.attempt);
        state.calls.push(Recorded::RunSandbox { attempt });
        state.sandboxes.insert(
            id.clone(),
            cri::PodSandbox {
                id: id.clone(),
                metadata: config.metadata,
                state: cri::PodSandboxState::SandboxReady as i32,
                created_at: now,
                labels: config.labels,
                ..Default::default()
            },
        );
        Self::done(Ok(id))
    }

    fn stop_sandbox(&self, id: String) -> Call<'_, ()> {
        let now = self.clock.now_ns();
        let mut state = self.state();
        state.calls.push(Recorded::StopSandbox);
        let result = match state.sandboxes.get_mut(&id) {
            Some(s) => {
                s.state = cri::PodSandboxState::SandboxNotready as i32;
                // Stopping a sandbox kills what runs in it.
                for c in state.containers.values_mut() {
                    if c.container.pod_sandbox_id == id
                        && c.status.state == cri::ContainerState::ContainerRunning as i32
                    {
                        Self::finish(c, 137, now);
                    }
                }
                Ok(())
            }
            None => Err(not_found("sandbox", &id)),
        };
        Self::done(result)
    }

    fn remove_sandbox(&self, id: String) -> Call<'_, ()> {
        let mut state = self.state();
        state.calls.push(Recorded::RemoveSandbox);
        let result = match state.sandboxes.remove(&id) {
            Some(_) => {
                state.containers.retain(|_, c| c.container.pod_sandbox_id != id);
                Ok(())
            }
            None => Err(not_found("sandbox", &id)),
        };
        Self::done(result)
    }

    fn list_containers(&self, labels: HashMap<String, String>) -> Call<'_, Vec<cri::Container>> {
        let state = self.state();
        let items = state
            .containers
            .values()
            .filter(|c| matches(&c.container.labels, &labels))
            .map(|c| c.container.clone())
            .collect();
        Self::done(Ok(items))
    }

    fn container_status(&self, id: String) -> Call<'_, Option<cri::ContainerStatus>> {
        let state = self.state();
        let result = match state.containers.get(&id) {
            Some(c) => Ok(Some(c.status.clone())),
            None => Err(not_found("container", &id)),
        };
        Self::done(result)
    }

    fn create_container(
        &self,
        sandbox_id: String,
        config: cri::ContainerConfig,
        _sandbox_config: cri::PodSandboxConfig,
    ) -> Call<'_, String> {
        let now = self.clock.now_ns();
        let mut state = self.state();
        if !state.sandboxes.contains_key(&sandbox_id) {
            return Self::done(Err(not_found("sandbox", &sandbox_id)));
        }
        state.next_id += 1;
        let id = format!("container-{}", state.next_id);
        let name = config.labels.get(LABEL_CONTAINER_NAME).cloned().unwrap_or_default();
        let attempt = config.metadata.as_ref().map_or(0, |m| m.attempt);
        state.calls.push(Recorded::Create { name, attempt });
        let created = cri::ContainerState::ContainerCreated as i32;
        state.containers.insert(
            id.clone(),
            Container {
                container: cri::Container {
                    id: id.clone(),
                    pod_sandbox_id: sandbox_id,
                    metadata: config.metadata.clone(),
                    image: config.image.clone(),
                    state: created,
                    created_at: now,
                    labels: config.labels.clone(),
                    annotations: config.annotations.clone(),
                    ..Default::default()
                },
                status: cri::ContainerStatus {
                    id: id.clone(),
                    metadata: config.metadata,
                    state: created,
                    created_at: now,
                    image: config.image,
                    image_ref: "sha256:fake".into(),
                    ..Default::default()
                },
            },
        );
        Self::done(Ok(id))
    }

    fn start_container(&self, id: String) -> Call<'_, ()> {
        let now = self.clock.now_ns();
        let mut state = self.state();
        let name = Self::name_of(&state, &id);
        state.calls.push(Recorded::Start { name: name.clone() });
        let exit = state.exits.get_mut(&name).and_then(VecDeque::pop_front);
        let result = match state.containers.get_mut(&id) {
            Some(c) => {
                c.status.state = cri::ContainerState::ContainerRunning as i32;
                c.container.state = c.status.state;
                c.status.started_at = now;
                if let Some(code) = exit {
                    Self::finish(c, code, now);
                }
                Ok(())
            }
            None => Err(not_found("container", &id)),
        };
        Self::done(result)
    }

    fn stop_container(&self, id: String, timeout: i64) -> Call<'_, ()> {
        let now = self.clock.now_ns();
        let mut state = self.state();
        let name = Self::name_of(&state, &id);
        state.calls.push(Recorded::Stop { name, timeout });
        let result = match state.containers.get_mut(&id) {
            Some(c) => {
                if c.status.state == cri::ContainerState::ContainerRunning as i32 {
                    // It handles SIGTERM: 128 + 15.
                    Self::finish(c, 143, now);
                }
                Ok(())
            }
            None => Err(not_found("container", &id)),
        };
        Self::done(result)
    }

    fn remove_container(&self, id: String) -> Call<'_, ()> {
        let mut state = self.state();
        let name = Self::name_of(&state, &id);
        state.calls.push(Recorded::Remove { name });
        let result = match state.containers.remove(&id) {
            Some(_) => Ok(()),
            None => Err(not_found("container", &id)),
        };
        Self::done(result)
    }

    fn list_container_stats(
        &self,
        _labels: HashMap<String, String>,
    ) -> Call<'_, Vec<cri::ContainerStats>> {
        Self::done(Ok(Vec::new()))
    }

    fn exec_sync(
        &self,
        id: String,
        cmd: Vec<String>,
        _timeout: i64,
    ) -> Call<'_, cri::ExecSyncResponse> {
        let mut state = self.state();
        let name = Self::name_of(&state, &id);
        state.calls.push(Recorded::ExecSync { name, cmd });
        Self::done(Ok(cri::ExecSyncResponse::default()))
    }

    fn exec(&self, _request: cri::ExecRequest) -> Call<'_, String> {
        Self::done(Err(tonic::Status::unimplemented("the fake runtime does not stream")))
    }

    fn attach(&self, _request: cri::AttachRequest) -> Call<'_, String> {
        Self::done(Err(tonic::Status::unimplemented("the fake runtime does not stream")))
    }

    fn port_forward(&self, _sandbox_id: String) -> Call<'_, String> {
        Self::done(Err(tonic::Status::unimplemented("the fake runtime does not stream")))
    }

    fn image_status(&self, image: String) -> Call<'_, Option<cri::Image>> {
        Self::done(Ok(Some(cri::Image {
            id: format!("sha256:{image}"),
            repo_tags: vec![image],
            ..Default::default()
        })))
    }

    fn pull_image(&self, image: String, _auth: Option<cri::AuthConfig>) -> Call<'_, String> {
        self.state().calls.push(Recorded::Pull { image: image.clone() });
        Self::done(Ok(format!("sha256:{image}")))
    }
}
