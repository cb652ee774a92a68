//! Pod-level cgroups, as upstream's kubelet lays them out with the cgroupfs driver: each pod
//! gets `<root>/kubepods/[burstable|besteffort/]pod<uid>` with the sum of its containers'
//! CPU requests as shares, the sum of their limits as CFS quota and memory limit (when every
//! container sets one), and the node's pod PID limit; the runtime puts the containers below.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use super::config::{self, QosClass};

/// What the pod cgroup is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLimits {
    /// cpu.shares (v1) for the sum of CPU requests.
    pub cpu_shares: i64,
    /// CFS quota in µs per 100 ms period, when every container has a CPU limit.
    pub cpu_quota: Option<i64>,
    /// Memory limit in bytes, when every container has a memory limit.
    pub memory_limit: Option<i64>,
    /// Most processes in the pod (`--kubelet-arg pod-max-pids=N`).
    pub pids_max: Option<i64>,
}

/// The limits of `pod`'s cgroup. Init containers run one at a time, so each resource is the
/// larger of the containers' sum and the largest init container, as upstream computes it.
pub fn pod_limits(pod: &Pod, pids_max: Option<i64>) -> PodLimits {
    let spec = pod.spec.clone().unwrap_or_default();
    let get = |c: &k8s_openapi::api::core::v1::Container, limits: bool, name: &str| {
        let res = c.resources.as_ref();
        let map = if limits {
            res.and_then(|r| r.limits.as_ref())
        } else {
            res.and_then(|r| r.requests.as_ref())
        };
        let q = map.and_then(|m| m.get(name));
        match name {
            "cpu" => q.and_then(config::millicores),
            _ => q.and_then(config::bytes),
        }
    };
    // A request defaults to the limit when only the limit is set.
    let value = |c: &k8s_openapi::api::core::v1::Container, limits: bool, name: &str| {
        if limits { get(c, true, name) } else { get(c, false, name).or_else(|| get(c, true, name)) }
    };
    let sum = |limits: bool, name: &str| -> Option<i64> {
        let mut total = 0i64;
        for c in &spec.containers {
            let v = value(c, limits, name);
            match v {
                Some(v) => total += v,
                None if limits => return None,
                None => {}
            }
        }
        let init_max = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| value(c, limits, name))
            .try_fold(0i64, |acc, v| v.map(|v| acc.max(v)));
        match (limits, init_max) {
            (true, None) if spec.init_containers.as_ref().is_some_and(|i| !i.is_empty()) => None,
            (_, Some(m)) => Some(total.max(m)),
            (_, None) => Some(total),
        }
    };
    let cpu_request = sum(false, "cpu").filter(|v| *v > 0);
    PodLimits {
        cpu_shares: config::cpu_shares(cpu_request),
        cpu_quota: sum(true, "cpu").filter(|v| *v > 0).map(|m| config::cpu_quota(Some(m))),
        memory_limit: sum(true, "memory").filter(|v| *v > 0),
        pids_max,
    }
}

fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

fn write(path: PathBuf, value: &str) -> std::io::Result<()> {
    std::fs::write(&path, value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Creates the pod's cgroup (`parent`, as given to CRI) and writes its limits.
pub fn set_up(parent: &str, qos: QosClass, limits: &PodLimits) -> std::io::Result<()> {
    let rel = parent.trim_start_matches('/');
    if cgroup_v2() {
        let dir = Path::new("/sys/fs/cgroup").join(rel);
        std::fs::create_dir_all(&dir)?;
        // v2 weight from v1 shares, as runc converts them.
        let weight = 1 + ((limits.cpu_shares - 2) * 9999) / 262_142;
        let _ = write(dir.join("cpu.weight"), &weight.clamp(1, 10_000).to_string());
        let quota = limits.cpu_quota.map_or("max".to_owned(), |q| q.to_string());
        let _ = write(dir.join("cpu.max"), &format!("{quota} {}", config::CPU_PERIOD_US));
        let _ = write(
            dir.join("memory.max"),
            &limits.memory_limit.map_or("max".to_owned(), |m| m.to_string()),
        );
        let _ = write(
            dir.join("pids.max"),
            &limits.pids_max.map_or("max".to_owned(), |p| p.to_string()),
        );
        return Ok(());
    }
    let base = Path::new("/sys/fs/cgroup");
    for controller in ["cpu", "memory", "pids"] {
        std::fs::create_dir_all(base.join(controller).join(rel))?;
    }
    // Best-effort pods share what is left: their QoS cgroup gets the minimum weight.
    if qos == QosClass::BestEffort
        && let Some(qos_dir) = Path::new(rel).parent()
    {
        let _ = write(base.join("cpu").join(qos_dir).join("cpu.shares"), "2");
    }
    let cpu = base.join("cpu").join(rel);
    write(cpu.join("cpu.shares"), &limits.cpu_shares.to_string())?;
    write(cpu.join("cpu.cfs_period_us"), &config::CPU_PERIOD_US.to_string())?;
    write(cpu.join("cpu.cfs_quota_us"), &limits.cpu_quota.unwrap_or(-1).to_string())?;
    if let Some(m) = limits.memory_limit {
        write(base.join("memory").join(rel).join("memory.limit_in_bytes"), &m.to_string())?;
    }
    let pids = limits.pids_max.map_or("max".to_owned(), |p| p.to_string());
    write(base.join("pids").join(rel).join("pids.max"), &pids)?;
    Ok(())
}

/// Removes the pod's cgroup from every hierarchy (once its containers are gone).
pub fn tear_down(parent: &str) {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    let mut dirs: Vec<PathBuf> = hierarchies.flatten().map(|h| h.path().join(rel)).collect();
    dirs.push(Path::new("/sys/fs/cgroup").join(rel));
    for dir in dirs {
        // Leftover container cgroups (runc removes them; a killed shim may not) go first.
        if let Ok(children) = std::fs::read_dir(&dir) {
            for c in children.flatten() {
                if c.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_limits_sum_containers_and_respect_init_containers() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {
            "initContainers": [{"name": "i", "resources": {"limits": {"cpu": "1", "memory": "16Mi"}}}],
            "containers": [
                {"name": "a", "resources": {"limits": {"cpu": "200m", "memory": "32Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "300m", "memory": "32Mi"}}}
            ]}}))
        .unwrap();
        let l = pod_limits(&pod, Some(64));
        // The init container's 1 CPU limit exceeds the containers' 500m sum.
        assert_eq!(l.cpu_quota, Some(100_000));
        assert_eq!(l.memory_limit, Some(64 << 20));
        assert_eq!(l.cpu_shares, 1024);
        assert_eq!(l.pids_max, Some(64));
        let open: Pod = serde_json::from_value(serde_json::json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"memory": "32Mi"}}}, {"name": "b"}]}}))
        .unwrap();
        let l = pod_limits(&open, None);
        assert_eq!((l.cpu_quota, l.memory_limit, l.cpu_shares), (None, None, 2));
    }
}
