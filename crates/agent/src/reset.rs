//! `krust reset`: stops everything one agent started on this host: its pods (through CRI, so
//! the CNI plugins release addresses and rules), its containerd and shims, its mounts, its
//! bridge and its cgroups. Its data folder stays unless the caller removes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{AgentConfig, AgentError, containerd, cri};

/// What was cleaned, for the command's output.
#[derive(Debug, Default)]
pub struct ResetReport {
    /// Sandboxes stopped and removed.
    pub sandboxes: usize,
    /// Processes killed (containerd, leftover shims).
    pub processes: usize,
    /// Mounts unmounted.
    pub mounts: usize,
    /// What could not be cleaned through the runtime (cleaned by hand afterwards).
    pub errors: Vec<String>,
}

/// File in the agent's folder recording its cgroup root, for reset.
pub fn cgroup_root_file(config: &AgentConfig) -> PathBuf {
    config.data_dir.join("cgroup-root")
}

/// Resets the agent whose folder is `config.data_dir`.
pub async fn reset(config: &AgentConfig) -> Result<ResetReport, AgentError> {
    let mut report = ResetReport::default();
    let mut netns_files: Vec<PathBuf> = Vec::new();
    let paths = config.containerd_paths();
    if paths.dir.join("config.toml").exists() {
        // containerd must run for CRI to tear pods down properly; start one if needed.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let temporary = if containerd::running_pid(&paths).is_none() {
            let p = paths.clone();
            Some(tokio::spawn(async move { containerd::supervise(p, stop_rx).await }))
        } else {
            None
        };
        let client = cri::Cri::new(paths.socket.clone())?;
        if cri::wait_ready(&client, Duration::from_secs(20)).await.is_ok() {
            match remove_all_sandboxes(&client, &mut report).await {
                Ok(netns) => netns_files = netns,
                Err(e) => report.errors.push(e.to_string()),
            }
        } else {
            report.errors.push("containerd did not answer; pods are killed without CRI".into());
        }
        stop_tx.send_replace(true);
        if let Some(t) = temporary {
            let _ = t.await;
        }
        if let Some(pid) = containerd::running_pid(&paths) {
            kill(pid);
            report.processes += 1;
        }
        report.processes += kill_shims(&paths.socket);
    }
    // Whatever still runs in the agent's cgroups (a container whose shim is gone) is killed.
    let cgroup_root = std::fs::read_to_string(cgroup_root_file(config)).unwrap_or_default();
    report.processes += kill_cgroup_processes(cgroup_root.trim());
    for netns in &netns_files {
        let _ = rustix::mount::unmount(netns, rustix::mount::UnmountFlags::DETACH);
        let _ = std::fs::remove_file(netns);
    }
    let mut mounts = crate::pods::volumes::mounts_under(&config.data_dir);
    mounts.extend(crate::pods::volumes::mounts_under(&config.run_dir()));
    // Local volumes are unmounted (their loop devices go with them), their data kept.
    if let Some(storage) = config.local_storage_path.as_ref() {
        mounts.extend(crate::pods::volumes::mounts_under(storage));
    }
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in mounts {
        if rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH).is_ok() {
            report.mounts += 1;
        }
    }
    // Block volumes' loop devices (filesystem volumes' went with their mounts).
    if let Some(storage) = config.local_storage_path.as_ref() {
        crate::local_volume::detach_all(storage);
    }
    crate::cni::remove_masquerade(config).await;
    let table = crate::serviceproxy::table_name(config);
    crate::serviceproxy::nftables::delete(&table).await;
    crate::serviceproxy::iptables::delete(&crate::serviceproxy::iptables::Chains::for_table(
        &table,
    ))
    .await;
    crate::routes::remove_all(config).await;
    let bridge = crate::cni::bridge_name(config);
    let _ = tokio::process::Command::new("ip").args(["link", "delete", &bridge]).output().await;
    if let Ok(root) = std::fs::read_to_string(cgroup_root_file(config)) {
        remove_cgroups(root.trim());
    }
    let _ = std::fs::remove_dir_all(config.run_dir());
    // The shared parents go too once no other agent uses them.
    if let Some(parent) = config.run_dir().parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(report)
}

/// Stops and removes every sandbox, collecting failures in the report; returns the network
/// namespace files of the sandboxes (to remove by hand if the runtime could not).
async fn remove_all_sandboxes(
    client: &dyn cri::Runtime,
    report: &mut ResetReport,
) -> Result<Vec<PathBuf>, AgentError> {
    let containers = client.list_containers(Default::default()).await?;
    for c in containers {
        let _ = crate::pods::runtime::stop_container(client, &c.id, 0).await;
        let _ = crate::pods::runtime::remove_container(client, &c.id).await;
    }
    let sandboxes = client.list_sandboxes(Default::default()).await?;
    let mut netns = Vec::new();
    for s in &sandboxes {
        let status = client.sandbox_status(s.id.clone(), true).await;
        if let Ok(status) = status
            && let Some(info) = status.info.get("info")
            && let Ok(info) = serde_json::from_str::<serde_json::Value>(info)
            && let Some(namespaces) =
                info.pointer("/runtimeSpec/linux/namespaces").and_then(|n| n.as_array())
        {
            netns.extend(
                namespaces
                    .iter()
                    .filter(|n| n["type"] == "network")
                    .filter_map(|n| n["path"].as_str())
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from),
            );
        }
        match crate::pods::runtime::stop_sandbox(client, &s.id, true).await {
            Ok(()) => report.sandboxes += 1,
            Err(e) => report.errors.push(format!("sandbox {}: {e}", s.id)),
        }
    }
    Ok(netns)
}

/// Kills every process in the cgroups under `root` (all hierarchies); returns how many.
fn kill_cgroup_processes(root: &str) -> usize {
    let root = root.trim_start_matches('/');
    if root.is_empty() {
        return 0;
    }
    let mut pids = std::collections::BTreeSet::new();
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let mut dirs = Vec::new();
            collect_dirs(&h.path().join(root), &mut dirs);
            for d in dirs {
                if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                    pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            }
        }
    }
    for pid in &pids {
        kill(*pid);
    }
    pids.len()
}

fn kill(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// Kills shims that were started by the containerd listening on `socket`.
fn kill_shims(socket: &Path) -> usize {
    let socket = socket.display().to_string();
    let mut killed = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_shim = args.first().is_some_and(|a| a.contains("containerd-shim"));
        if is_shim && args.contains(&socket) {
            kill(pid);
            killed += 1;
        }
    }
    killed
}

/// Removes the agent's cgroups in every hierarchy, deepest first (only empty cgroups can go).
fn remove_cgroups(root: &str) {
    let root = root.trim_start_matches('/');
    if root.is_empty() {
        return;
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    for h in hierarchies.flatten() {
        let base = h.path().join(root);
        let mut dirs = Vec::new();
        collect_dirs(&base, &mut dirs);
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
        // `/krust` itself, when this was the last agent on the host.
        let mut parent = base.parent().map(std::path::Path::to_path_buf);
        while let Some(p) = parent.filter(|p| *p != h.path()) {
            if std::fs::remove_dir(&p).is_err() {
                break;
            }
            parent = p.parent().map(std::path::Path::to_path_buf);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_owned());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}
