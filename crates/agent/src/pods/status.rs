//! A pod's status computed from what the runtime reports and what the worker knows (why a
//! container is waiting, readiness): container states with upstream's reasons, phase, and
//! conditions. Pure, so the rules are unit-tested.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use super::runtime::{Observed, ObservedContainer, State};

/// Why a container is not running, when the worker knows better than the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// `ContainerCreating`, `PodInitializing`, `ErrImagePull`, `ImagePullBackOff`,
    /// `CrashLoopBackOff`, `CreateContainerConfigError`…
    pub reason: String,
    /// Details.
    pub message: String,
}

/// Inputs of the status computation.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// What the runtime holds.
    pub observed: &'a Observed,
    /// Containers waiting for a known reason, by name.
    pub waiting: &'a HashMap<String, Waiting>,
    /// Readiness of running containers, by name (absent = ready when running, for containers
    /// without a readiness probe).
    pub ready: &'a HashMap<String, bool>,
    /// Started (startup probe passed), by name; absent = started when running.
    pub started: &'a HashMap<String, bool>,
    /// The node's address.
    pub host_ip: &'a str,
    /// When the agent first saw the pod (RFC 3339).
    pub start_time: &'a str,
    /// Now (RFC 3339).
    pub now: &'a str,
    /// The QoS class.
    pub qos: &'a str,
    /// Set when the agent failed the pod itself (`activeDeadlineSeconds` passed): the pod's
    /// phase is `Failed` with this reason and message, whatever its containers did.
    pub failed: Option<&'a Waiting>,
}

fn rfc3339(ns: i64) -> Value {
    if ns <= 0 {
        return Value::Null;
    }
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        // Truncated to the second, as upstream's timestamps are serialised: rounding up
        // could date a transition after an object the API server created later.
        .map(|t| json!(jiff::Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()))
        .unwrap_or(Value::Null)
}

fn terminated(c: &ObservedContainer) -> Value {
    let reason = if !c.reason.is_empty() {
        c.reason.clone()
    } else if c.exit_code == 0 {
        "Completed".to_owned()
    } else {
        "Error".to_owned()
    };
    let mut t = json!({
        "exitCode": c.exit_code,
        "reason": reason,
        "startedAt": rfc3339(c.started_at),
        "finishedAt": rfc3339(c.finished_at),
        "containerID": format!("containerd://{}", c.id),
    });
    if !c.message.is_empty() {
        t["message"] = json!(c.message);
    }
    json!({ "terminated": t })
}

/// The status entry of one container.
/// `initializing`: some init container has not completed yet, so every container that has
/// not started waits with upstream's `PodInitializing`, not `ContainerCreating`.
fn container_status(
    inputs: &Inputs<'_>,
    spec: &Container,
    init: bool,
    initializing: bool,
) -> Value {
    let latest = inputs.observed.latest(&spec.name);
    let image = spec.image.clone().unwrap_or_default();
    let restart_count = latest.map_or(0, |c| c.attempt);
    let waiting = inputs.waiting.get(&spec.name);
    let (state, last_state) = match (latest, waiting) {
        (Some(c), _) if c.state == State::Running => (
            json!({ "running": { "startedAt": rfc3339(c.started_at) } }),
            inputs.observed.previous(&spec.name).map(terminated).unwrap_or(json!({})),
        ),
        (Some(c), Some(w)) if c.state == State::Exited => {
            (json!({ "waiting": { "reason": w.reason, "message": w.message } }), terminated(c))
        }
        (Some(c), None) if c.state == State::Exited => (
            terminated(c),
            inputs.observed.previous(&spec.name).map(terminated).unwrap_or(json!({})),
        ),
        (_, Some(w)) => (
            json!({ "waiting": { "reason": w.reason, "message": w.message } }),
            latest.filter(|c| c.state == State::Exited).map(terminated).unwrap_or(json!({})),
        ),
        _ => (
            json!({ "waiting": { "reason": if init || initializing { "PodInitializing" } else { "ContainerCreating" } } }),
            json!({}),
        ),
    };
    let running = latest.is_some_and(|c| c.state == State::Running);
    let started = running && inputs.started.get(&spec.name).copied().unwrap_or(true);
    let ready = if init {
        latest.is_some_and(|c| c.state == State::Exited && c.exit_code == 0)
    } else {
        started && inputs.ready.get(&spec.name).copied().unwrap_or(true)
    };
    let mut status = json!({
        "name": spec.name,
        "image": image,
        "imageID": latest.map(|c| c.image_id.clone()).unwrap_or_default(),
        "ready": ready,
        "restartCount": restart_count,
        "state": state,
        "lastState": last_state,
    });
    if let Some(c) = latest {
        status["containerID"] = json!(format!("containerd://{}", c.id));
    }
    if !init {
        status["started"] = json!(started);
    }
    status
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
}

/// Whether the init containers have all completed.
pub fn initialized(pod: &Pod, observed: &Observed) -> bool {
    pod.spec.iter().flat_map(|s| s.init_containers.iter().flatten()).all(|c| {
        observed.latest(&c.name).is_some_and(|o| o.state == State::Exited && o.exit_code == 0)
        // Once a regular container has run, init containers are done for this sandbox even
        // if their records are gone.
    }) || pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .any(|c| observed.latest(&c.name).is_some())
}

/// The phase upstream derives from container states.
pub fn phase(pod: &Pod, observed: &Observed) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else { return "Pending" };
    let policy = restart_policy(pod);
    // An init container that failed for good fails the pod.
    if policy == "Never" {
        for c in spec.init_containers.iter().flatten() {
            if observed
                .latest(&c.name)
                .is_some_and(|o| o.state == State::Exited && o.exit_code != 0)
            {
                return "Failed";
            }
        }
    }
    if !initialized(pod, observed) {
        return "Pending";
    }
    let (mut waiting_n, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &spec.containers {
        match observed.latest(&c.name) {
            Some(o) if o.state == State::Running => running += 1,
            Some(o) if o.state == State::Exited => {
                stopped += 1;
                if o.exit_code == 0 {
                    succeeded += 1;
                }
            }
            _ => {
                waiting_n += 1;
            }
        }
    }
    if waiting_n > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

/// Whether the pod is done for good: its phase is terminal and nothing will restart.
pub fn is_terminal(phase: &str) -> bool {
    phase == "Succeeded" || phase == "Failed"
}

fn condition(kind: &str, ok: bool, reason: Option<&str>, previous: &[Value], now: &str) -> Value {
    let status = if ok { "True" } else { "False" };
    let transition = previous
        .iter()
        .find(|c| c["type"] == kind && c["status"] == status)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    let mut c = json!({
        "type": kind,
        "status": status,
        "lastProbeTime": null,
        "lastTransitionTime": transition,
    });
    if let Some(r) = reason.filter(|_| !ok) {
        c["reason"] = json!(r);
    }
    c
}

/// The pod's full status.
pub fn pod_status(inputs: &Inputs<'_>) -> Value {
    let pod = inputs.pod;
    let spec = pod.spec.clone().unwrap_or_default();
    let previous: Vec<Value> = pod
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(&s.conditions).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    let phase = if inputs.failed.is_some() { "Failed" } else { phase(pod, inputs.observed) };
    // The init containers not yet done, in spec order (upstream's condition message names
    // them). A sidecar (an init container that restarts always) counts once it runs.
    let incomplete: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| {
            let latest = inputs.observed.latest(&c.name);
            let done = latest.is_some_and(|o| o.state == State::Exited && o.exit_code == 0);
            let sidecar_up = c.restart_policy.as_deref() == Some("Always")
                && latest.is_some_and(|o| o.state == State::Running);
            !done && !sidecar_up
        })
        .map(|c| c.name.as_str())
        .collect();
    let initializing = !incomplete.is_empty();
    let init_statuses: Vec<Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(inputs, c, true, initializing))
        .collect();
    let statuses: Vec<Value> =
        spec.containers.iter().map(|c| container_status(inputs, c, false, initializing)).collect();
    let sandbox = inputs.observed.sandbox().filter(|s| s.ready);
    let pod_ip = if spec.host_network == Some(true) {
        inputs.host_ip.to_owned()
    } else {
        sandbox.map(|s| s.ip.clone()).unwrap_or_default()
    };
    let initialized = initialized(pod, inputs.observed);
    let containers_ready = statuses.iter().all(|s| s["ready"] == true) && !statuses.is_empty();
    let gates_ready = spec.readiness_gates.iter().flatten().all(|g| {
        previous.iter().any(|c| c["type"] == g.condition_type.as_str() && c["status"] == "True")
    });
    let terminal = is_terminal(phase);
    let ready = containers_ready && gates_ready && !terminal;
    let not_ready_reason = if terminal { "PodCompleted" } else { "ContainersNotReady" };
    let mut conditions = vec![
        condition("PodReadyToStartContainers", sandbox.is_some(), None, &previous, inputs.now),
        condition(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized"),
            &previous,
            inputs.now,
        ),
        condition("Ready", ready, Some(not_ready_reason), &previous, inputs.now),
        condition(
            "ContainersReady",
            containers_ready && !terminal,
            Some(not_ready_reason),
            &previous,
            inputs.now,
        ),
        condition("PodScheduled", true, None, &previous, inputs.now),
    ];
    // Upstream's messages name the containers each condition waits for, in spec order.
    let unready: Vec<&str> =
        statuses.iter().filter(|s| s["ready"] != true).filter_map(|s| s["name"].as_str()).collect();
    for c in &mut conditions {
        let list = match c["type"].as_str() {
            Some("Initialized") if c["status"] == "False" => {
                format!("containers with incomplete status: [{}]", incomplete.join(" "))
            }
            Some("Ready" | "ContainersReady") if c["status"] == "False" && !terminal => {
                format!("containers with unready status: [{}]", unready.join(" "))
            }
            _ => continue,
        };
        c["message"] = json!(list);
    }
    // Readiness-gate conditions and others set by other components are kept.
    for c in &previous {
        let kind = c["type"].as_str().unwrap_or_default();
        if !conditions.iter().any(|own| own["type"] == kind) {
            conditions.push(c.clone());
        }
    }
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": inputs.host_ip,
        "hostIPs": [{ "ip": inputs.host_ip }],
        "startTime": inputs.start_time,
        "qosClass": inputs.qos,
        "containerStatuses": statuses,
    });
    if !pod_ip.is_empty() {
        status["podIP"] = json!(pod_ip);
        status["podIPs"] = json!([{ "ip": pod_ip }]);
    } else {
        status["podIP"] = Value::Null;
        status["podIPs"] = Value::Null;
    }
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    if let Some(failed) = inputs.failed {
        status["reason"] = json!(failed.reason);
        status["message"] = json!(failed.message);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::runtime::ObservedSandbox;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "a", "image": "img"}, {"name": "b", "image": "img"}]}
        }))
        .unwrap()
    }

    fn container(name: &str, state: State, exit_code: i32, attempt: u32) -> ObservedContainer {
        ObservedContainer {
            id: format!("{name}{attempt}"),
            name: name.into(),
            attempt,
            sandbox_id: "s".into(),
            state,
            created_at: i64::from(attempt) + 1,
            started_at: 1_700_000_000_000_000_000,
            finished_at: if state == State::Exited { 1_700_000_001_000_000_000 } else { 0 },
            exit_code,
            reason: String::new(),
            message: String::new(),
            image: "img".into(),
            image_id: "sha256:x".into(),
            spec_image: None,
            log_path: String::new(),
        }
    }

    fn observed(containers: Vec<ObservedContainer>) -> Observed {
        let mut o = Observed {
            sandboxes: vec![ObservedSandbox {
                id: "s".into(),
                attempt: 0,
                ready: true,
                created_at: 1,
                ip: "10.42.0.9".into(),
            }],
            containers,
        };
        o.containers.sort_by_key(|c| std::cmp::Reverse((c.attempt, c.created_at)));
        o
    }

    #[test]
    fn phases_follow_restart_policy() {
        let both_ok = observed(vec![
            container("a", State::Exited, 0, 0),
            container("b", State::Exited, 0, 0),
        ]);
        assert_eq!(phase(&pod("Never"), &both_ok), "Succeeded");
        assert_eq!(phase(&pod("OnFailure"), &both_ok), "Succeeded");
        assert_eq!(phase(&pod("Always"), &both_ok), "Running");
        let one_failed = observed(vec![
            container("a", State::Exited, 1, 0),
            container("b", State::Exited, 0, 0),
        ]);
        assert_eq!(phase(&pod("Never"), &one_failed), "Failed");
        assert_eq!(phase(&pod("OnFailure"), &one_failed), "Running");
        let half = observed(vec![container("a", State::Running, 0, 0)]);
        assert_eq!(phase(&pod("Always"), &half), "Pending");
        let running = observed(vec![
            container("a", State::Running, 0, 0),
            container("b", State::Exited, 0, 0),
        ]);
        assert_eq!(phase(&pod("Never"), &running), "Running");
    }

    #[test]
    fn containers_wait_with_pod_initializing_until_init_containers_complete() {
        let mut p = pod("Never");
        p.spec.as_mut().unwrap().init_containers =
            Some(vec![Container { name: "init1".into(), ..Container::default() }]);
        let none = HashMap::new();
        let flags = HashMap::new();
        let status_with = |o: &Observed| {
            pod_status(&Inputs {
                pod: &p,
                observed: o,
                waiting: &none,
                ready: &flags,
                started: &flags,
                host_ip: "192.0.2.2",
                start_time: "2026-01-01T00:00:00Z",
                now: "2026-01-01T00:00:05Z",
                qos: "BestEffort",
                failed: None,
            })
        };
        let reason = |s: &Value| s["containerStatuses"][0]["state"]["waiting"]["reason"].clone();
        let failed = observed(vec![container("init1", State::Exited, 1, 0)]);
        assert_eq!(reason(&status_with(&failed)), "PodInitializing");
        let done = observed(vec![container("init1", State::Exited, 0, 0)]);
        assert_eq!(reason(&status_with(&done)), "ContainerCreating");
    }

    #[test]
    fn status_reports_states_restarts_and_conditions() {
        let p = pod("Always");
        let o = observed(vec![
            container("a", State::Running, 0, 0),
            container("b", State::Exited, 1, 2),
            container("b", State::Exited, 1, 1),
        ]);
        let waiting = HashMap::from([(
            "b".to_owned(),
            Waiting { reason: "CrashLoopBackOff".into(), message: "back-off 20s".into() },
        )]);
        let none = HashMap::new();
        let status = pod_status(&Inputs {
            pod: &p,
            observed: &o,
            waiting: &waiting,
            ready: &none,
            started: &none,
            host_ip: "192.0.2.2",
            start_time: "2026-01-01T00:00:00Z",
            now: "2026-01-01T00:00:05Z",
            qos: "BestEffort",
            failed: None,
        });
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["podIP"], "10.42.0.9");
        let a = &status["containerStatuses"][0];
        assert_eq!(a["ready"], true);
        assert!(a["state"]["running"]["startedAt"].is_string());
        let b = &status["containerStatuses"][1];
        assert_eq!(b["restartCount"], 2);
        assert_eq!(b["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(b["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(b["lastState"]["terminated"]["reason"], "Error");
        let ready =
            status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "ContainersNotReady");
    }
}
