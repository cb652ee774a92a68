//! The pod worker's decisions about its containers as pure functions: from the pod's spec,
//! what the runtime reports and how long each container's restart back-off still holds, what
//! to do next, and how long a stopping pod's containers get. The worker (`worker.rs`)
//! executes the steps (runtime calls, events, status) and is itself tested on the recording
//! fake runtime (`cri/fake.rs`); these are unit-tested here without any runtime.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::runtime::{Observed, ObservedContainer, State};

/// One thing to do for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Start it (its first run, or a restart) as this attempt.
    Start {
        /// The container's name.
        name: String,
        /// An init container.
        init: bool,
        /// The attempt number to run.
        attempt: u32,
        /// A restart after this exit (nanoseconds since the epoch): the back-off is stepped.
        restart_of: Option<i64>,
    },
    /// Remove the container the runtime created but never started (the agent stopped in
    /// between), then start it anew as this attempt.
    Replace {
        /// The container's name.
        name: String,
        /// An init container.
        init: bool,
        /// The runtime's ID of the stale container.
        id: String,
        /// The attempt number to run.
        attempt: u32,
    },
    /// It exited and will restart, but its back-off holds this much longer.
    BackOff {
        /// The container's name.
        name: String,
        /// An init container.
        init: bool,
        /// What is left of the back-off.
        left: Duration,
    },
    /// It runs, or finished for good: nothing to do (and nothing waits on it).
    Settled {
        /// The container's name.
        name: String,
    },
}

/// The pod's restart policy (`Always` when unset).
pub(crate) fn restart_policy(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
}

/// When a restart of `exited` may happen (nanoseconds since the epoch of its exit, for the
/// back-off).
fn exit_time(exited: &ObservedContainer, now_ns: i64) -> i64 {
    if exited.finished_at > 0 { exited.finished_at } else { now_ns }
}

/// The next step of the init sequence: init containers run one at a time, in order; the
/// first that has not succeeded is started (or restarted after its back-off), unless one
/// runs, or one failed and the pod never restarts. `current` holds the containers of the
/// current sandbox, `observed` all of the pod's (attempt numbers continue across sandboxes).
/// `None` when nothing is to be done now.
pub(crate) fn init_step(
    pod: &Pod,
    current: &Observed,
    observed: &Observed,
    backoff: &dyn Fn(&str, i64) -> Option<Duration>,
    now_ns: i64,
) -> Option<Step> {
    let never = restart_policy(pod) == "Never";
    let spec = pod.spec.as_ref()?;
    for init in spec.init_containers.iter().flatten() {
        let name = init.name.clone();
        return Some(match current.latest(&init.name) {
            Some(c) if c.state == State::Exited && c.exit_code == 0 => continue,
            Some(c) if c.state == State::Running => return None,
            Some(c) if c.state == State::Exited && never => return None,
            Some(c) if c.state == State::Exited => {
                let at = exit_time(c, now_ns);
                match backoff(&init.name, at) {
                    Some(left) => Step::BackOff { name, init: true, left },
                    None => Step::Start {
                        name,
                        init: true,
                        attempt: c.attempt + 1,
                        restart_of: Some(at),
                    },
                }
            }
            Some(c) => Step::Replace { name, init: true, id: c.id.clone(), attempt: c.attempt + 1 },
            None => Step::Start {
                name,
                init: true,
                attempt: observed.latest(&init.name).map_or(0, |c| c.attempt + 1),
                restart_of: None,
            },
        });
    }
    None
}

/// The steps of the regular containers once the pod is initialized: those that never ran
/// start; those that exited restart as the restart policy says, after their back-off.
pub(crate) fn container_steps(
    pod: &Pod,
    observed: &Observed,
    backoff: &dyn Fn(&str, i64) -> Option<Duration>,
    now_ns: i64,
) -> Vec<Step> {
    let policy = restart_policy(pod);
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    let mut steps = Vec::new();
    for c in &spec.containers {
        let name = c.name.clone();
        let step = match observed.latest(&c.name) {
            None => Step::Start { name, init: false, attempt: 0, restart_of: None },
            Some(o) if o.state == State::Running => Step::Settled { name },
            Some(o) if o.state == State::Exited => {
                let restart = match policy {
                    "Never" => false,
                    "OnFailure" => o.exit_code != 0,
                    _ => true,
                };
                if !restart {
                    Step::Settled { name }
                } else {
                    let at = exit_time(o, now_ns);
                    match backoff(&c.name, at) {
                        Some(left) => Step::BackOff { name, init: false, left },
                        None => Step::Start {
                            name,
                            init: false,
                            attempt: o.attempt + 1,
                            restart_of: Some(at),
                        },
                    }
                }
            }
            Some(o) if o.state == State::Created => {
                Step::Replace { name, init: false, id: o.id.clone(), attempt: o.attempt + 1 }
            }
            // Unknown to the runtime for now: look again at the next sync.
            Some(_) => continue,
        };
        steps.push(step);
    }
    steps
}

/// Where a pod stands against its `activeDeadlineSeconds`, counted from its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// It has none (or no start time yet).
    None,
    /// This much is left.
    Left(Duration),
    /// It has passed: the pod is failed with reason `DeadlineExceeded`.
    Exceeded,
}

/// The pod's standing against `spec.activeDeadlineSeconds`; `start_time` is RFC 3339.
pub(crate) fn active_deadline(pod: &Pod, start_time: Option<&str>, now_ns: i64) -> Deadline {
    let Some(seconds) = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds) else {
        return Deadline::None;
    };
    let Some(start) = start_time.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return Deadline::None;
    };
    let end = start.as_nanosecond() as i64 + seconds.max(0).saturating_mul(1_000_000_000);
    if now_ns >= end {
        Deadline::Exceeded
    } else {
        Deadline::Left(Duration::from_nanos((end - now_ns) as u64))
    }
}

/// The grace period (seconds) a pod's containers get when it stops: the deletion's own
/// (`kubectl delete --grace-period`), else the spec's, else 30. A pod already gone from the
/// API was force-deleted: at most 2 s, as upstream's kubelet gives it.
pub(crate) fn termination_grace(pod: Option<&Pod>, last_known: Option<i64>) -> i64 {
    match pod {
        None => last_known.unwrap_or(2).min(2),
        Some(pod) => pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0),
    }
}

/// What is left of `grace` for SIGTERM after the preStop hooks took `hooks_took` seconds:
/// the rest, but at least 2 s (or the whole grace, if shorter), as upstream.
pub(crate) fn grace_after_hooks(grace: i64, hooks_took: i64) -> i64 {
    if hooks_took > 0 { (grace - hooks_took).max(grace.min(2)) } else { grace }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::pods::runtime::{ObservedContainer, ObservedSandbox};

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"restartPolicy": policy,
                     "initContainers": [{"name": "i1", "image": "img"}, {"name": "i2", "image": "img"}],
                     "containers": [{"name": "a", "image": "img"}, {"name": "b", "image": "img"}]}
        }))
        .unwrap()
    }

    fn c(name: &str, state: State, exit_code: i32, attempt: u32) -> ObservedContainer {
        ObservedContainer {
            id: format!("{name}-{attempt}"),
            name: name.into(),
            attempt,
            sandbox_id: "s".into(),
            state,
            created_at: 1,
            started_at: 2,
            finished_at: if state == State::Exited { 3 } else { 0 },
            exit_code,
            reason: String::new(),
            message: String::new(),
            image: "img".into(),
            image_id: "sha256:1".into(),
            spec_image: None,
            log_path: String::new(),
        }
    }

    fn observed(containers: Vec<ObservedContainer>) -> Observed {
        Observed {
            sandboxes: vec![ObservedSandbox {
                id: "s".into(),
                attempt: 0,
                ready: true,
                created_at: 1,
                ip: "10.42.0.9".into(),
            }],
            containers,
        }
    }

    const NO_BACKOFF: &dyn Fn(&str, i64) -> Option<Duration> = &|_, _| None;

    #[test]
    fn init_containers_run_one_at_a_time_in_order() {
        let p = pod("Always");
        let none = observed(vec![]);
        assert_eq!(
            init_step(&p, &none, &none, NO_BACKOFF, 10),
            Some(Step::Start { name: "i1".into(), init: true, attempt: 0, restart_of: None })
        );
        // i1 runs: nothing else starts.
        let running = observed(vec![c("i1", State::Running, 0, 0)]);
        assert_eq!(init_step(&p, &running, &running, NO_BACKOFF, 10), None);
        // i1 done: i2 next.
        let done = observed(vec![c("i1", State::Exited, 0, 0)]);
        assert_eq!(
            init_step(&p, &done, &done, NO_BACKOFF, 10),
            Some(Step::Start { name: "i2".into(), init: true, attempt: 0, restart_of: None })
        );
        // Both done: the init sequence has no more steps.
        let all = observed(vec![c("i1", State::Exited, 0, 0), c("i2", State::Exited, 0, 0)]);
        assert_eq!(init_step(&p, &all, &all, NO_BACKOFF, 10), None);
        // A new sandbox: attempts continue from the pod's earlier containers.
        assert_eq!(
            init_step(&p, &none, &all, NO_BACKOFF, 10),
            Some(Step::Start { name: "i1".into(), init: true, attempt: 1, restart_of: None })
        );
    }

    #[test]
    fn a_failed_init_container_backs_off_or_fails_the_pod() {
        let failed = observed(vec![c("i1", State::Exited, 1, 2)]);
        // Never: the pod fails; nothing is started again.
        assert_eq!(init_step(&pod("Never"), &failed, &failed, NO_BACKOFF, 10), None);
        // Always: restarted after its back-off, as the next attempt.
        let holding = |_: &str, _: i64| Some(Duration::from_secs(7));
        assert_eq!(
            init_step(&pod("Always"), &failed, &failed, &holding, 10),
            Some(Step::BackOff { name: "i1".into(), init: true, left: Duration::from_secs(7) })
        );
        assert_eq!(
            init_step(&pod("OnFailure"), &failed, &failed, NO_BACKOFF, 10),
            Some(Step::Start { name: "i1".into(), init: true, attempt: 3, restart_of: Some(3) })
        );
        // Created but never started (the agent stopped in between): replaced.
        let stale = observed(vec![c("i1", State::Created, 0, 0)]);
        assert_eq!(
            init_step(&pod("Always"), &stale, &stale, NO_BACKOFF, 10),
            Some(Step::Replace { name: "i1".into(), init: true, id: "i1-0".into(), attempt: 1 })
        );
    }

    #[test]
    fn containers_restart_as_the_policy_says_after_their_back_off() {
        let exited = observed(vec![c("a", State::Exited, 0, 0), c("b", State::Exited, 2, 4)]);
        let names = |steps: Vec<Step>| -> Vec<String> {
            steps
                .into_iter()
                .map(|s| match s {
                    Step::Start { name, attempt, .. } => format!("start {name} {attempt}"),
                    Step::BackOff { name, left, .. } => {
                        format!("backoff {name} {}", left.as_secs())
                    }
                    Step::Settled { name } => format!("settled {name}"),
                    Step::Replace { name, .. } => format!("replace {name}"),
                })
                .collect()
        };
        assert_eq!(
            names(container_steps(&pod("Never"), &exited, NO_BACKOFF, 10)),
            ["settled a", "settled b"]
        );
        assert_eq!(
            names(container_steps(&pod("OnFailure"), &exited, NO_BACKOFF, 10)),
            ["settled a", "start b 5"]
        );
        assert_eq!(
            names(container_steps(&pod("Always"), &exited, NO_BACKOFF, 10)),
            ["start a 1", "start b 5"]
        );
        // The back-off of one container holds it alone.
        let b_holds = |name: &str, _: i64| (name == "b").then(|| Duration::from_secs(20));
        assert_eq!(
            names(container_steps(&pod("Always"), &exited, &b_holds, 10)),
            ["start a 1", "backoff b 20"]
        );
        // Never run yet: started as attempt 0; running: settled.
        let fresh = observed(vec![c("a", State::Running, 0, 0)]);
        assert_eq!(
            names(container_steps(&pod("Always"), &fresh, NO_BACKOFF, 10)),
            ["settled a", "start b 0"]
        );
    }

    #[test]
    fn the_active_deadline_counts_from_the_start_time() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": []},
        }))
        .expect("pod");
        let start = "2026-01-01T00:00:00Z";
        let t0: i64 = 1_767_225_600_000_000_000;
        assert_eq!(active_deadline(&pod, Some(start), t0), Deadline::None);
        pod.spec.as_mut().expect("spec").active_deadline_seconds = Some(5);
        assert_eq!(active_deadline(&pod, None, t0), Deadline::None);
        assert_eq!(
            active_deadline(&pod, Some(start), t0 + 2_000_000_000),
            Deadline::Left(Duration::from_secs(3))
        );
        assert_eq!(active_deadline(&pod, Some(start), t0 + 5_000_000_000), Deadline::Exceeded);
    }

    #[test]
    fn termination_grace_follows_the_deletion_then_the_spec() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"terminationGracePeriodSeconds": 45, "containers": []},
        }))
        .expect("pod");
        assert_eq!(termination_grace(Some(&pod), None), 45);
        pod.metadata.deletion_grace_period_seconds = Some(5);
        assert_eq!(termination_grace(Some(&pod), None), 5);
        assert_eq!(termination_grace(None, Some(45)), 2);
        assert_eq!(termination_grace(None, Some(0)), 0);
        assert_eq!(grace_after_hooks(30, 0), 30);
        assert_eq!(grace_after_hooks(30, 10), 20);
        assert_eq!(grace_after_hooks(30, 40), 2);
        assert_eq!(grace_after_hooks(1, 5), 1);
    }
}
