//! Pod volumes on the host: emptyDir (disk or tmpfs), hostPath, and the projected kinds
//! (configMap, secret, downwardAPI, projected) written atomically the way upstream's kubelet
//! does: files live in a timestamped folder, `..data` links to it, and each visible name links
//! through `..data`, so a container sees either the old set or the new set, never a mix.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, Volume};

use super::env::{Downward, Sources, field_value, format_map, resource_value};

/// Why a volume cannot be set up (`FailedMount`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MountError(pub String);

/// The folder of all of one pod's volumes.
pub fn pod_volumes_dir(pods_dir: &Path, uid: &str) -> PathBuf {
    pods_dir.join(uid).join("volumes")
}

fn plugin_dir(volume: &Volume) -> &'static str {
    if volume.empty_dir.is_some() {
        "kubernetes.io~empty-dir"
    } else if volume.config_map.is_some() {
        "kubernetes.io~configmap"
    } else if volume.secret.is_some() {
        "kubernetes.io~secret"
    } else if volume.downward_api.is_some() {
        "kubernetes.io~downward-api"
    } else if volume.projected.is_some() {
        "kubernetes.io~projected"
    } else {
        "kubernetes.io~other"
    }
}

/// Where a volume lives on the host.
pub fn volume_path(pods_dir: &Path, uid: &str, volume: &Volume) -> PathBuf {
    if let Some(hp) = volume.host_path.as_ref() {
        return PathBuf::from(&hp.path);
    }
    pod_volumes_dir(pods_dir, uid).join(plugin_dir(volume)).join(&volume.name)
}

fn io_err(path: &Path, e: std::io::Error) -> MountError {
    MountError(format!("{}: {e}", path.display()))
}

/// Sets up (or refreshes) every volume of `pod`. Projected contents are rewritten only when
/// they changed.
pub fn set_up(
    pods_dir: &Path,
    pod: &Pod,
    sources: &Sources,
    downward: &Downward,
) -> Result<(), MountError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let Some(spec) = pod.spec.as_ref() else { return Ok(()) };
    for volume in spec.volumes.iter().flatten() {
        let path = volume_path(pods_dir, &uid, volume);
        if let Some(hp) = volume.host_path.as_ref() {
            host_path(&path, hp.type_.as_deref().unwrap_or(""))?;
        } else if let Some(ed) = volume.empty_dir.as_ref() {
            if !path.exists() {
                std::fs::create_dir_all(&path).map_err(|e| io_err(&path, e))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| io_err(&path, e))?;
            }
            if ed.medium.as_deref() == Some("Memory") && !is_mount_point(&path) {
                let size = ed
                    .size_limit
                    .as_ref()
                    .and_then(super::config::bytes)
                    .map_or(String::new(), |b| format!(",size={b}"));
                mount_tmpfs(&path, &format!("mode=0777{size}"))?;
            }
        } else if let Some(files) = projected_files(pod, volume, sources, downward)? {
            if !path.exists() {
                std::fs::create_dir_all(&path).map_err(|e| io_err(&path, e))?;
            }
            // Secrets never touch the disk.
            if (volume.secret.is_some() || volume.projected.is_some()) && !is_mount_point(&path) {
                mount_tmpfs(&path, "mode=0755")?;
            }
            write_atomic(&path, &files)?;
        }
    }
    Ok(())
}

fn host_path(path: &Path, kind: &str) -> Result<(), MountError> {
    let meta = std::fs::metadata(path);
    use std::os::unix::fs::FileTypeExt;
    let fail = |what: &str| {
        Err(MountError(format!("hostPath type check failed: {} is not a {what}", path.display())))
    };
    match kind {
        "DirectoryOrCreate" if meta.is_err() => {
            std::fs::create_dir_all(path).map_err(|e| io_err(path, e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| io_err(path, e))
        }
        "FileOrCreate" if meta.is_err() => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
            }
            std::fs::File::create(path).map(|_| ()).map_err(|e| io_err(path, e))
        }
        "Directory" | "DirectoryOrCreate" if !meta.as_ref().is_ok_and(|m| m.is_dir()) => {
            fail("directory")
        }
        "File" | "FileOrCreate" if !meta.as_ref().is_ok_and(|m| m.is_file()) => fail("file"),
        "Socket" if !meta.as_ref().is_ok_and(|m| m.file_type().is_socket()) => fail("socket"),
        "CharDevice" if !meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()) => {
            fail("character device")
        }
        "BlockDevice" if !meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()) => {
            fail("block device")
        }
        _ => Ok(()),
    }
}

/// One file of a projected volume: relative path, contents, mode.
type Files = BTreeMap<String, (Vec<u8>, u32)>;

fn add_items(
    files: &mut Files,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    what: &str,
) -> Result<(), MountError> {
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                let contents = data.get(&item.key).ok_or_else(|| {
                    MountError(if what == "secret" {
                        format!("references non-existent secret key: {}", item.key)
                    } else {
                        format!("configmap references non-existent config key: {}", item.key)
                    })
                })?;
                let mode = item.mode.map_or(default_mode, |m| m as u32);
                files.insert(item.path.clone(), (contents.clone(), mode));
            }
        }
        _ => {
            for (k, v) in data {
                files.insert(k.clone(), (v.clone(), default_mode));
            }
        }
    }
    Ok(())
}

/// The files a projected-kind volume should contain, or `None` for other kinds.
fn projected_files(
    pod: &Pod,
    volume: &Volume,
    sources: &Sources,
    downward: &Downward,
) -> Result<Option<Files>, MountError> {
    let mut files = Files::new();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    if let Some(cm) = volume.config_map.as_ref() {
        let mode = cm.default_mode.map_or(0o644, |m| m as u32);
        match sources.config_map(&cm.name) {
            Some(data) => add_items(&mut files, data, cm.items.as_ref(), mode, "configmap")?,
            None if cm.optional == Some(true) => {}
            None => return Err(MountError(format!("configmap \"{}\" not found", cm.name))),
        }
        return Ok(Some(files));
    }
    if let Some(secret) = volume.secret.as_ref() {
        let mode = secret.default_mode.map_or(0o644, |m| m as u32);
        let name = secret.secret_name.clone().unwrap_or_default();
        match sources.secret(&name) {
            Some(data) => add_items(&mut files, data, secret.items.as_ref(), mode, "secret")?,
            None if secret.optional == Some(true) => {}
            None => {
                return Err(MountError(format!(
                    "secret \"{name}\" not found in namespace {namespace}"
                )));
            }
        }
        return Ok(Some(files));
    }
    if let Some(d) = volume.downward_api.as_ref() {
        let mode = d.default_mode.map_or(0o644, |m| m as u32);
        downward_items(pod, d.items.iter().flatten(), mode, downward, &mut files)?;
        return Ok(Some(files));
    }
    if let Some(p) = volume.projected.as_ref() {
        let mode = p.default_mode.map_or(0o644, |m| m as u32);
        for source in p.sources.iter().flatten() {
            if let Some(cm) = source.config_map.as_ref() {
                match sources.config_map(&cm.name) {
                    Some(data) => {
                        add_items(&mut files, data, cm.items.as_ref(), mode, "configmap")?
                    }
                    None if cm.optional == Some(true) => {}
                    None => return Err(MountError(format!("configmap \"{}\" not found", cm.name))),
                }
            }
            if let Some(s) = source.secret.as_ref() {
                match sources.secret(&s.name) {
                    Some(data) => add_items(&mut files, data, s.items.as_ref(), mode, "secret")?,
                    None if s.optional == Some(true) => {}
                    None => return Err(MountError(format!("secret \"{}\" not found", s.name))),
                }
            }
            if let Some(d) = source.downward_api.as_ref() {
                downward_items(pod, d.items.iter().flatten(), mode, downward, &mut files)?;
            }
            if let Some(sa) = source.service_account_token.as_ref() {
                let audience = sa.audience.clone().unwrap_or_default();
                let token = sources
                    .token(&audience, sa.expiration_seconds.unwrap_or(3600))
                    .ok_or_else(|| MountError("no service account token was issued".into()))?;
                files.insert(sa.path.clone(), (token.as_bytes().to_vec(), mode));
            }
            if let Some(ca) = source.cluster_trust_bundle.as_ref() {
                files.insert(ca.path.clone(), (Vec::new(), mode));
            }
        }
        return Ok(Some(files));
    }
    Ok(None)
}

fn downward_items<'a>(
    pod: &Pod,
    items: impl Iterator<Item = &'a k8s_openapi::api::core::v1::DownwardAPIVolumeFile>,
    default_mode: u32,
    downward: &Downward,
    files: &mut Files,
) -> Result<(), MountError> {
    for item in items {
        let mode = item.mode.map_or(default_mode, |m| m as u32);
        let value = if let Some(f) = item.field_ref.as_ref() {
            match f.field_path.as_str() {
                "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
                path => field_value(pod, path, downward).map_err(MountError)?,
            }
        } else if let Some(r) = item.resource_field_ref.as_ref() {
            let name = r.container_name.clone().unwrap_or_default();
            let container: Option<&Container> =
                pod.spec.iter().flat_map(|s| s.containers.iter()).find(|c| c.name == name);
            let container =
                container.ok_or_else(|| MountError(format!("container {name} not found")))?;
            resource_value(container, &r.resource, r.divisor.as_ref(), downward)
                .map_err(MountError)?
        } else {
            String::new()
        };
        files.insert(item.path.clone(), (value.into_bytes(), mode));
    }
    Ok(())
}

/// Replaces the contents of `dir` with `files` in one step, unless they are already there.
fn write_atomic(dir: &Path, files: &Files) -> Result<(), MountError> {
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link) {
        let current_dir = dir.join(&current);
        if same_contents(&current_dir, files) {
            return Ok(());
        }
    }
    let stamp = jiff::Timestamp::now().strftime("..%Y_%m_%d_%H_%M_%S.%f").to_string();
    let new_dir = dir.join(&stamp);
    std::fs::create_dir_all(&new_dir).map_err(|e| io_err(&new_dir, e))?;
    std::fs::set_permissions(&new_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io_err(&new_dir, e))?;
    for (rel, (contents, mode)) in files {
        let rel = sanitize(rel)?;
        let path = new_dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        }
        std::fs::write(&path, contents).map_err(|e| io_err(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode & 0o777))
            .map_err(|e| io_err(&path, e))?;
    }
    let old = std::fs::read_link(&data_link).ok();
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link).map_err(|e| io_err(&tmp_link, e))?;
    std::fs::rename(&tmp_link, &data_link).map_err(|e| io_err(&data_link, e))?;
    // Top-level names link through ..data; names that disappeared go away.
    let tops: std::collections::BTreeSet<String> =
        files.keys().filter_map(|k| k.split('/').next().map(str::to_owned)).collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link)
                .map_err(|e| io_err(&link, e))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !tops.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn sanitize(rel: &str) -> Result<PathBuf, MountError> {
    let path = Path::new(rel);
    if path.is_absolute()
        || path.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
        || rel.starts_with("..")
    {
        return Err(MountError(format!("invalid path in volume: {rel}")));
    }
    Ok(path.to_owned())
}

fn same_contents(dir: &Path, files: &Files) -> bool {
    files.iter().all(|(rel, (contents, mode))| {
        let path = dir.join(rel);
        std::fs::read(&path).is_ok_and(|c| c == *contents)
            && std::fs::metadata(&path)
                .is_ok_and(|m| m.permissions().mode() & 0o777 == *mode & 0o777)
    }) && count_files(dir) == files.len()
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| if e.file_type().is_ok_and(|t| t.is_dir()) { count_files(&e.path()) } else { 1 })
        .sum()
}

fn mount_tmpfs(path: &Path, options: &str) -> Result<(), MountError> {
    let data = std::ffi::CString::new(options)
        .map_err(|_| MountError(format!("invalid tmpfs options {options:?}")))?;
    rustix::mount::mount(
        "tmpfs",
        path,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(|e| MountError(format!("mounting tmpfs on {}: {e}", path.display())))
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn is_mount_point(path: &Path) -> bool {
    mounts_under(path).iter().any(|p| p == path)
}

/// Unmounts and removes everything of one pod's volumes (host paths are left alone).
pub fn tear_down(pods_dir: &Path, uid: &str) -> Result<(), MountError> {
    let dir = pods_dir.join(uid);
    for m in mounts_under(&dir) {
        rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| MountError(format!("unmounting {}: {e}", m.display())))?;
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&dir, e)),
    }
}

/// The CRI mounts of `container`: its volumeMounts (with subPath), plus the pod's managed
/// `/etc/hosts`.
pub fn container_mounts(
    pods_dir: &Path,
    pod: &Pod,
    container: &Container,
    env: &[(String, String)],
    etc_hosts: Option<&Path>,
    claims: &super::claims::Claims,
) -> Result<Vec<cri::Mount>, MountError> {
    let vars: std::collections::HashMap<&str, &str> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let volumes: BTreeMap<&str, &Volume> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .map(|v| (v.name.as_str(), v))
        .collect();
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .get(vm.name.as_str())
            .ok_or_else(|| MountError(format!("volume {} not found in the pod", vm.name)))?;
        let claim = claims.get(vm.name.as_str());
        let mut host = match claim {
            Some(c) => c.path.clone(),
            None if volume.persistent_volume_claim.is_some() || volume.ephemeral.is_some() => {
                return Err(MountError(format!("volume {} is not mounted yet", vm.name)));
            }
            None => volume_path(pods_dir, &uid, volume),
        };
        // `subPathExpr` is `subPath` with the container's `$(VAR)`s expanded (upstream
        // refuses a mount with both).
        let expanded = vm
            .sub_path_expr
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|expr| super::config::expand_vars(expr, &vars));
        if let Some(sub) = expanded.as_deref().or(vm.sub_path.as_deref()).filter(|s| !s.is_empty())
        {
            let rel = sanitize(sub)?;
            host = host.join(rel);
            if !host.exists() {
                std::fs::create_dir_all(&host).map_err(|e| io_err(&host, e))?;
            }
        }
        let propagation = match vm.mount_propagation.as_deref() {
            Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional,
            _ => cri::MountPropagation::PropagationPrivate,
        };
        mounts.push(cri::Mount {
            container_path: vm.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: vm.read_only == Some(true) || claim.is_some_and(|c| c.read_only),
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    if let Some(hosts) = etc_hosts
        && !mounts.iter().any(|m| m.container_path == "/etc/hosts")
    {
        mounts.push(cri::Mount {
            container_path: "/etc/hosts".into(),
            host_path: hosts.display().to_string(),
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// The CRI devices of `container`: its `volumeDevices`, each a Block claim's device.
pub fn container_devices(
    container: &Container,
    claims: &super::claims::Claims,
) -> Result<Vec<cri::Device>, MountError> {
    container
        .volume_devices
        .iter()
        .flatten()
        .map(|vd| {
            let device = claims
                .get(vd.name.as_str())
                .and_then(|c| c.device.as_ref())
                .ok_or_else(|| MountError(format!("volume {} is not a block volume", vd.name)))?;
            Ok(cri::Device {
                container_path: vd.device_path.clone(),
                host_path: device.display().to_string(),
                permissions: "rwm".into(),
            })
        })
        .collect()
}

/// Writes the pod's `/etc/hosts` (localhost entries, then the pod's address and hostname, then
/// `hostAliases`), as upstream's kubelet manages it.
pub fn write_etc_hosts(pods_dir: &Path, pod: &Pod, pod_ip: &str) -> Result<PathBuf, MountError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let path = pods_dir.join(&uid).join("etc-hosts");
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname =
        spec.hostname.clone().unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    let mut text = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if !pod_ip.is_empty() {
        let fqdn = spec
            .subdomain
            .as_ref()
            .map(|sub| {
                format!(
                    "{hostname}.{sub}.{}.svc.cluster.local\t",
                    pod.metadata.namespace.clone().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        text.push_str(&format!("{pod_ip}\t{fqdn}{hostname}\n"));
    }
    for alias in spec.host_aliases.iter().flatten() {
        text.push_str(&format!(
            "\n# Entries added by HostAliases.\n{}\t{}\n",
            alias.ip,
            alias.hostnames.clone().unwrap_or_default().join("\t")
        ));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    std::fs::write(&path, text).map_err(|e| io_err(&path, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(items: &[(&str, &str)]) -> Files {
        items.iter().map(|(k, v)| ((*k).to_owned(), (v.as_bytes().to_vec(), 0o644))).collect()
    }

    #[test]
    fn sub_path_expressions_expand_the_containers_variables() {
        let dir = tempfile::tempdir().unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"volumes": [{"name": "work", "emptyDir": {}}], "containers": [{"name": "c",
                "volumeMounts": [{"name": "work", "mountPath": "/logs", "subPathExpr": "$(POD_NAME)/x"},
                                 {"name": "work", "mountPath": "/all"}]}]}}))
        .unwrap();
        let container = pod.spec.as_ref().unwrap().containers[0].clone();
        let env = vec![("POD_NAME".to_owned(), "p-1".to_owned())];
        let mounts =
            container_mounts(dir.path(), &pod, &container, &env, None, &Default::default())
                .unwrap();
        assert!(mounts[0].host_path.ends_with("/p-1/x"), "{}", mounts[0].host_path);
        assert!(Path::new(&mounts[0].host_path).is_dir());
        assert!(Path::new(&mounts[1].host_path).join("p-1").is_dir());
        // An expansion may not leave the volume.
        let env = vec![("POD_NAME".to_owned(), "..".to_owned())];
        assert!(
            container_mounts(dir.path(), &pod, &container, &env, None, &Default::default())
                .is_err()
        );
    }

    #[test]
    fn atomic_writer_swaps_contents_and_drops_removed_keys() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), &files(&[("a", "1"), ("b", "2")])).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "1");
        let first = std::fs::read_link(dir.path().join("..data")).unwrap();
        // Unchanged contents: nothing is rewritten.
        write_atomic(dir.path(), &files(&[("a", "1"), ("b", "2")])).unwrap();
        assert_eq!(std::fs::read_link(dir.path().join("..data")).unwrap(), first);
        write_atomic(dir.path(), &files(&[("a", "3")])).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(dir.path().join("b")).is_err());
        assert!(!dir.path().join(&first).exists(), "old data folder is removed");
        assert!(write_atomic(dir.path(), &files(&[("../escape", "x")])).is_err());
    }

    #[test]
    fn config_map_items_and_modes() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c"}], "volumes": [
                {"name": "cfg", "configMap": {"name": "cm", "defaultMode": 0o600,
                    "items": [{"key": "k", "path": "sub/file"}]}},
                {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}
            ]}
        }))
        .unwrap();
        let sources = Sources::from_literals(&[("cm", &[("k", "v"), ("other", "o")])], &[]);
        let dir = tempfile::tempdir().unwrap();
        set_up(dir.path(), &pod, &sources, &Downward::default()).unwrap();
        let base = dir.path().join("u1/volumes/kubernetes.io~configmap/cfg");
        assert_eq!(std::fs::read_to_string(base.join("sub/file")).unwrap(), "v");
        assert!(!base.join("other").exists());
        let mode = std::fs::metadata(base.join("sub/file")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let info = dir.path().join("u1/volumes/kubernetes.io~downward-api/info/name");
        assert_eq!(std::fs::read_to_string(info).unwrap(), "p");
        let missing = Sources::default();
        let err = set_up(dir.path(), &pod, &missing, &Downward::default()).unwrap_err();
        assert_eq!(err.0, "configmap \"cm\" not found");
        tear_down(dir.path(), "u1").unwrap();
        assert!(!dir.path().join("u1").exists());
    }

    #[test]
    fn binary_secret_values_reach_files_unchanged() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u2"},
            "spec": {"containers": [{"name": "c"}], "volumes": [
                {"name": "keys", "secret": {"secretName": "bin"}}]}
        }))
        .unwrap();
        let bytes: &[u8] = &[0x00, 0xff, 0xfe, 0x80, b'k'];
        let sources = Sources::with_secret_bytes("bin", &[("keystore", bytes)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u2/volumes/kubernetes.io~secret/keys");
        std::fs::create_dir_all(&path).unwrap();
        // A tmpfs would be mounted here; write into the folder directly for the unit test.
        let volume = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0].clone();
        let files =
            projected_files(&pod, &volume, &sources, &Downward::default()).unwrap().unwrap();
        write_atomic(&path, &files).unwrap();
        assert_eq!(std::fs::read(path.join("keystore")).unwrap(), bytes);
    }
}
