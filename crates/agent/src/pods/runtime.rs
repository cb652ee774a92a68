//! What the runtime holds for one pod (its sandboxes and containers, found by the pod-UID
//! label), and the CRI calls the pod worker makes.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use super::config::{LABEL_CONTAINER_NAME, LABEL_POD_UID};
use crate::AgentError;
use crate::cri::{Runtime, gone_is_ok};

/// A container's state as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Exited,
    /// Unknown to the runtime.
    Unknown,
}

impl State {
    fn from_cri(v: i32) -> State {
        match cri::ContainerState::try_from(v) {
            Ok(cri::ContainerState::ContainerCreated) => State::Created,
            Ok(cri::ContainerState::ContainerRunning) => State::Running,
            Ok(cri::ContainerState::ContainerExited) => State::Exited,
            _ => State::Unknown,
        }
    }
}

/// One container of the pod, as the runtime reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedContainer {
    /// Runtime ID.
    pub id: String,
    /// Name in the pod spec.
    pub name: String,
    /// Restart attempt.
    pub attempt: u32,
    /// The sandbox it runs in.
    pub sandbox_id: String,
    /// State.
    pub state: State,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// Nanoseconds since the epoch (0 = not started).
    pub started_at: i64,
    /// Nanoseconds since the epoch (0 = not finished).
    pub finished_at: i64,
    /// Exit code, when exited.
    pub exit_code: i32,
    /// Why it exited (`OOMKilled`, `Completed`, `Error`).
    pub reason: String,
    /// Termination message.
    pub message: String,
    /// The image as asked for.
    pub image: String,
    /// The image the pod's spec named when the container was created (none for containers
    /// of agents that did not record it).
    pub spec_image: Option<String>,
    /// The image's ID (`sha256:…`).
    pub image_id: String,
    /// Its CRI log file.
    pub log_path: String,
}

/// One sandbox of the pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedSandbox {
    /// Runtime ID.
    pub id: String,
    /// Attempt number.
    pub attempt: u32,
    /// Ready (its network namespace and pause process are up).
    pub ready: bool,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// The pod's address in it.
    pub ip: String,
}

/// Everything the runtime holds for one pod, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Sandboxes, newest first.
    pub sandboxes: Vec<ObservedSandbox>,
    /// Containers, newest first.
    pub containers: Vec<ObservedContainer>,
}

impl Observed {
    /// The newest sandbox.
    pub fn sandbox(&self) -> Option<&ObservedSandbox> {
        self.sandboxes.first()
    }

    /// The newest container named `name`.
    pub fn latest(&self, name: &str) -> Option<&ObservedContainer> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The one before the newest container named `name` (for `lastState`).
    pub fn previous(&self, name: &str) -> Option<&ObservedContainer> {
        self.containers.iter().filter(|c| c.name == name).nth(1)
    }

    /// Whether any container is running.
    pub fn any_running(&self) -> bool {
        self.containers.iter().any(|c| c.state == State::Running)
    }
}

fn uid_filter(uid: &str) -> HashMap<String, String> {
    HashMap::from([(LABEL_POD_UID.to_owned(), uid.to_owned())])
}

/// Reads what the runtime holds for the pod with `uid`.
pub async fn observe(rt: &dyn Runtime, uid: &str) -> Result<Observed, AgentError> {
    let sandboxes = rt.list_sandboxes(uid_filter(uid)).await?;
    let mut observed = Observed::default();
    for s in sandboxes {
        let ready = s.state == cri::PodSandboxState::SandboxReady as i32;
        let ip = if ready {
            rt.sandbox_status(s.id.clone(), false)
                .await
                .ok()
                .and_then(|r| r.status)
                .and_then(|st| st.network)
                .map(|n| n.ip)
                .unwrap_or_default()
        } else {
            String::new()
        };
        observed.sandboxes.push(ObservedSandbox {
            id: s.id,
            attempt: s.metadata.map_or(0, |m| m.attempt),
            ready,
            created_at: s.created_at,
            ip,
        });
    }
    observed.sandboxes.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.attempt)));
    let containers = rt.list_containers(uid_filter(uid)).await?;
    for c in containers {
        let status = match rt.container_status(c.id.clone()).await {
            Ok(status) => status,
            // Removed between the list and the status call.
            Err(s) if s.code() == tonic::Code::NotFound => continue,
            Err(s) => return Err(s.into()),
        };
        let Some(status) = status else { continue };
        let name = c
            .labels
            .get(LABEL_CONTAINER_NAME)
            .cloned()
            .or_else(|| c.metadata.as_ref().map(|m| m.name.clone()))
            .unwrap_or_default();
        observed.containers.push(ObservedContainer {
            id: c.id,
            name,
            attempt: c.metadata.map_or(0, |m| m.attempt),
            sandbox_id: c.pod_sandbox_id,
            state: State::from_cri(status.state),
            created_at: status.created_at,
            started_at: status.started_at,
            finished_at: status.finished_at,
            exit_code: status.exit_code,
            reason: status.reason,
            message: status.message,
            image: status
                .image
                .map(|i| i.user_specified_image.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.image.map(|i| i.image).unwrap_or_default()),
            image_id: status.image_ref,
            spec_image: c.annotations.get(super::config::ANNOTATION_SPEC_IMAGE).cloned(),
            log_path: status.log_path,
        });
    }
    observed.containers.sort_by_key(|c| std::cmp::Reverse((c.attempt, c.created_at)));
    Ok(observed)
}

/// Stops a container, giving it `grace_seconds` after SIGTERM before SIGKILL.
pub async fn stop_container(
    rt: &dyn Runtime,
    id: &str,
    grace_seconds: i64,
) -> Result<(), AgentError> {
    Ok(gone_is_ok(rt.stop_container(id.to_owned(), grace_seconds).await)?)
}

/// Removes a container.
pub async fn remove_container(rt: &dyn Runtime, id: &str) -> Result<(), AgentError> {
    Ok(gone_is_ok(rt.remove_container(id.to_owned()).await)?)
}

/// Stops a sandbox (its network is torn down) and, with `remove`, removes it and its
/// containers.
pub async fn stop_sandbox(rt: &dyn Runtime, id: &str, remove: bool) -> Result<(), AgentError> {
    match rt.stop_sandbox(id.to_owned()).await {
        Ok(()) => {}
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
        Err(s) => return Err(s.into()),
    }
    if remove {
        gone_is_ok(rt.remove_sandbox(id.to_owned()).await)?;
    }
    Ok(())
}

/// The label selector of everything this node's agent created.
fn managed_by(node: &str) -> HashMap<String, String> {
    HashMap::from([(super::config::LABEL_MANAGED_BY.to_owned(), node.to_owned())])
}

/// Every pod UID the runtime holds sandboxes for, on this node (for housekeeping).
pub async fn sandbox_uids(rt: &dyn Runtime, node: &str) -> Result<Vec<String>, AgentError> {
    let items = rt.list_sandboxes(managed_by(node)).await?;
    let mut uids: Vec<String> =
        items.into_iter().filter_map(|s| s.labels.get(LABEL_POD_UID).cloned()).collect();
    uids.sort();
    uids.dedup();
    Ok(uids)
}

/// A fingerprint of every container's state on the node, keyed by container ID, with the
/// pod UID each belongs to: the relist that tells pod workers something changed.
pub async fn container_states(
    rt: &dyn Runtime,
    node: &str,
) -> Result<HashMap<String, (String, i32)>, AgentError> {
    let containers = rt.list_containers(managed_by(node)).await?;
    Ok(containers
        .into_iter()
        .map(|c| {
            let uid = c.labels.get(LABEL_POD_UID).cloned().unwrap_or_default();
            (c.id, (uid, c.state))
        })
        .collect())
}
