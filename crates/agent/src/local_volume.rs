//! The node's half of the local-path provisioner (`controller_runtime::local_volume` holds
//! the contract): each provisioned PersistentVolume is a filesystem (XFS, or ext4) in a
//! sparse image file of the claim's size, loop-mounted at the volume's `local.path`, so writing past the
//! claim fails with ENOSPC inside the pod and the node's disk loses at most the claim's
//! size. Made when a pod first mounts the volume (the control plane only creates the
//! object), grown when the claim grows, wiped when the object is deleted (its finalizer is
//! removed only then).
//!
//! The filesystem is the volume's `local.fsType` (the class's `fsType` parameter), else XFS
//! where `mkfs.xfs` is installed, else ext4. XFS is the default because it grows online
//! with CAP_SYS_ADMIN alone, which mounting needs anyway; the kernel grows a mounted ext4
//! only for CAP_SYS_RESOURCE, which a containerised agent often lacks. A filesystem that
//! cannot grow online grows at its next mount, and the claim keeps
//! `FileSystemResizePending` until then, as upstream's offline expansion does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use controller_runtime::local_volume::{FINALIZER, NODE_LABEL, PROVISIONED_BY, PROVISIONER};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

/// What can go wrong with a local volume on the node.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A tool (mkfs, mount, resize2fs, xfs_growfs) failed.
    #[error("{0}")]
    Tool(String),
    /// A filesystem the agent does not make.
    #[error("fsType {0:?} is not supported for local volumes (xfs or ext4)")]
    FsType(String),
    /// The volume's path is not under the node's storage path.
    #[error("volume path {0} is outside the node's local storage path")]
    Outside(PathBuf),
    /// A new volume larger than the space left where volumes live.
    #[error("the volume asks {asked} bytes, more than the {free} bytes free on this node")]
    NoRoom {
        /// Bytes asked.
        asked: u64,
        /// Bytes free.
        free: u64,
    },
}

/// Refuses a new volume that the storage path's filesystem could not hold: a sparse image
/// would be made, and only fail once written to, filling the node's disk on the way (the
/// scheduler checks free space for waiting claims; an `Immediate` claim is placed without
/// it).
fn check_room(storage: &Path, bytes: u64) -> Result<(), VolumeError> {
    match free_bytes(storage) {
        Some(free) if bytes > free => Err(VolumeError::NoRoom { asked: bytes, free }),
        _ => Ok(()),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io { path: path.to_owned(), source }
}

fn run(program: &str, args: &[&str]) -> Result<String, VolumeError> {
    run_with(program, args, &[])
}

fn run_with(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, VolumeError> {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| VolumeError::Tool(format!("{program}: {e}")))?;
    if !out.status.success() {
        return Err(VolumeError::Tool(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The image file of the volume mounted at `path` (beside the volumes, hidden).
pub fn image_of(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.parent().unwrap_or(Path::new("/")).join(".images").join(format!("{name}.img"))
}

fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), path.parent().map(std::fs::metadata)) {
        (Ok(m), Some(Ok(p))) => m.dev() != p.dev(),
        _ => false,
    }
}

/// The loop device backing `image`, if attached.
fn loop_device(image: &Path) -> Option<String> {
    let out = run("losetup", &["-j", &image.to_string_lossy()]).ok()?;
    out.lines().next().and_then(|l| l.split(':').next()).map(str::to_owned)
}

/// The filesystems a local volume can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    /// XFS: grows online with CAP_SYS_ADMIN.
    Xfs,
    /// ext4: grows online only with CAP_SYS_RESOURCE.
    Ext4,
}

impl Filesystem {
    /// The filesystem a new volume gets: the volume's `fsType` when it names one, else XFS
    /// where its tools are installed, else ext4.
    pub fn choose(fs_type: Option<&str>) -> Result<Self, VolumeError> {
        match fs_type.filter(|t| !t.is_empty()) {
            Some("xfs") => Ok(Self::Xfs),
            Some("ext4") => Ok(Self::Ext4),
            Some(other) => Err(VolumeError::FsType(other.to_owned())),
            None if tool_installed("mkfs.xfs") => Ok(Self::Xfs),
            None => Ok(Self::Ext4),
        }
    }

    /// Formats `image`.
    fn make(self, image: &str, bytes: u64) -> Result<(), VolumeError> {
        match self {
            // xfsprogs refuses filesystems under 300 MB since 5.19 (small ones are slow, not
            // wrong); the variables its own test suite sets lift that, so a 64 Mi claim gets
            // 64 Mi, not 300.
            Self::Xfs => {
                let small: &[(&str, &str)] = if bytes < 300_000_000 {
                    &[("TEST_DIR", "1"), ("TEST_DEV", "1"), ("QA_CHECK_FS", "1")]
                } else {
                    &[]
                };
                run_with("mkfs.xfs", &["-q", "-f", image], small).map(drop)
            }
            // Lazy initialisation: a new volume costs milliseconds, not a write of its tables.
            Self::Ext4 => run(
                "mkfs.ext4",
                &["-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", image],
            )
            .map(drop),
        }
    }

    /// The filesystem in `image` and its size in bytes, from its superblock.
    fn of_image(image: &Path) -> Option<(Self, u64)> {
        use std::io::Read;
        let mut head = [0u8; 2048];
        std::fs::File::open(image).ok()?.read_exact(&mut head).ok()?;
        if let Some(bytes) = xfs_bytes(&head) {
            return Some((Self::Xfs, bytes));
        }
        ext4_bytes(&head).map(|bytes| (Self::Ext4, bytes))
    }
}

fn tool_installed(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// Makes sure the volume at `path` exists, is at least `bytes` large and is mounted
/// (idempotent: the pod's every sync calls it). `storage` is the node's storage path;
/// `fs_type` the volume's `local.fsType`, which a new volume is formatted with.
pub fn ensure(
    storage: &Path,
    path: &Path,
    bytes: u64,
    fs_type: Option<&str>,
) -> Result<(), VolumeError> {
    if path.parent() != Some(storage) {
        return Err(VolumeError::Outside(path.to_owned()));
    }
    let image = image_of(path);
    if is_mount_point(path) {
        // A growth that cannot happen now leaves the mounted volume as it is: the pods
        // using it run on, and the claim keeps its resize pending.
        if let Err(e) = grow_mounted(path, &image, bytes) {
            tracing::warn!(path = %path.display(), error = %e, "growing a local volume failed");
        }
        return Ok(());
    }
    if let Some(dir) = image.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    std::fs::create_dir_all(path).map_err(io(path))?;
    let image_text = image.to_string_lossy().into_owned();
    // An XFS filesystem grows only mounted: one whose image grew meanwhile is grown after.
    let mut grow_xfs = false;
    match std::fs::metadata(&image) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let filesystem = Filesystem::choose(fs_type)?;
            check_room(storage, bytes)?;
            // Sparse: the disk is used as the volume fills, never beyond its size.
            let file = std::fs::File::create(&image).map_err(io(&image))?;
            file.set_len(bytes).map_err(io(&image))?;
            drop(file);
            if let Err(e) = filesystem.make(&image_text, bytes) {
                // No half-made volume: the next try starts again.
                let _ = std::fs::remove_file(&image);
                return Err(e);
            }
        }
        Err(e) => return Err(io(&image)(e)),
        Ok(meta) => {
            if meta.len() < bytes {
                check_room(storage, bytes - meta.len())?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&image)
                    .and_then(|f| f.set_len(bytes))
                    .map_err(io(&image))?;
            }
            // Grown while unmounted, or while mounted without an online resize: the
            // filesystem catches up with its image.
            match Filesystem::of_image(&image) {
                Some((Filesystem::Ext4, fs)) if fs < bytes.max(meta.len()) => {
                    run("e2fsck", &["-f", "-p", &image_text])?;
                    run("resize2fs", &[&image_text])?;
                    tracing::info!(path = %path.display(), bytes, "local volume grown offline");
                }
                Some((Filesystem::Xfs, fs)) => grow_xfs = fs < bytes.max(meta.len()),
                _ => {}
            }
        }
    }
    let path_text = path.to_string_lossy().into_owned();
    run("mount", &["-o", "loop", &image_text, &path_text])?;
    if grow_xfs {
        run("xfs_growfs", &[&path_text])?;
        tracing::info!(path = %path.display(), bytes, "local volume grown at its mount");
    }
    // Any pod user may write, as upstream's local-path volumes allow.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).map_err(io(path))?;
    tracing::info!(path = %path.display(), bytes, "local volume mounted");
    Ok(())
}

/// Makes sure the Block volume at `path` exists, is at least `bytes` large and has a loop
/// device, which is returned: the image itself, unformatted, is what the pod sees.
pub fn ensure_block(storage: &Path, path: &Path, bytes: u64) -> Result<PathBuf, VolumeError> {
    if path.parent() != Some(storage) {
        return Err(VolumeError::Outside(path.to_owned()));
    }
    let image = image_of(path);
    if let Some(dir) = image.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    if !image.exists() {
        check_room(storage, bytes)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&image)
        .map_err(io(&image))?;
    let size = file.metadata().map_err(io(&image))?.len();
    let grew = size < bytes;
    if grew {
        check_room(storage, bytes - size)?;
        file.set_len(bytes).map_err(io(&image))?;
    }
    drop(file);
    if let Some(device) = loop_device(&image) {
        if grew {
            run("losetup", &["-c", &device])?;
        }
        return Ok(PathBuf::from(device));
    }
    let device = run("losetup", &["--find", "--show", &image.to_string_lossy()])?;
    tracing::info!(path = %path.display(), bytes, device = device.trim(), "local block volume attached");
    Ok(PathBuf::from(device.trim()))
}

/// Grows a mounted volume to `bytes`: the image, the loop device, the filesystem. False
/// when only the image grew (no online resize here; the next mount finishes it).
fn grow_mounted(path: &Path, image: &Path, bytes: u64) -> Result<bool, VolumeError> {
    let size = std::fs::metadata(image).map_err(io(image))?.len();
    let device = loop_device(image);
    if size >= bytes {
        // A resize that could not run online waits for the next mount; nothing to redo.
        return Ok(true);
    }
    if let Some(storage) = path.parent() {
        check_room(storage, bytes - size)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .and_then(|f| f.set_len(bytes))
        .map_err(io(image))?;
    let Some(device) = device else { return Ok(false) };
    run("losetup", &["-c", &device])?;
    let grown = match Filesystem::of_image(image) {
        Some((Filesystem::Xfs, _)) => run("xfs_growfs", &[&path.to_string_lossy()]),
        _ => run("resize2fs", &[&device]),
    };
    match grown {
        Ok(_) => {
            tracing::info!(path = %path.display(), bytes, "local volume grown online");
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "growing the mounted filesystem failed (for ext4 the kernel asks CAP_SYS_RESOURCE); it grows at its next mount");
            Ok(false)
        }
    }
}

/// The size of an XFS filesystem from the image's first bytes (its superblock, big-endian):
/// the data block count times the block size.
fn xfs_bytes(head: &[u8; 2048]) -> Option<u64> {
    if &head[0..4] != b"XFSB" {
        return None;
    }
    let block_size = u32::from_be_bytes(head[4..8].try_into().ok()?);
    let blocks = u64::from_be_bytes(head[8..16].try_into().ok()?);
    blocks.checked_mul(u64::from(block_size))
}

/// The size of an ext4 filesystem from the image's first bytes (its superblock is 1 KiB
/// in): the block count (low and, with 64-bit blocks, high word) times the block size.
fn ext4_bytes(head: &[u8; 2048]) -> Option<u64> {
    let sb = &head[1024..];
    let word = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return None;
    }
    let incompat_64bit = word(0x60) & 0x80 != 0;
    let blocks =
        u64::from(word(0x4)) | if incompat_64bit { u64::from(word(0x150)) << 32 } else { 0 };
    let block_size = 1024u64 << word(0x18).min(16);
    Some(blocks * block_size)
}

/// The size of the filesystem at `path` (bytes), when mounted.
pub fn filesystem_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_blocks * st.f_frsize)
}

/// Unmounts and deletes the volume at `path` (idempotent).
pub fn delete(storage: &Path, path: &Path) -> Result<(), VolumeError> {
    if path.parent() != Some(storage) {
        return Err(VolumeError::Outside(path.to_owned()));
    }
    let image = image_of(path);
    if is_mount_point(path) {
        rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| VolumeError::Tool(format!("unmounting {}: {e}", path.display())))?;
    }
    // A loop device mounted with `-o loop` goes with the unmount (autoclear); one left by
    // a crash between attach and mount is detached here.
    if let Some(device) = loop_device(&image) {
        let _ = run("losetup", &["-d", &device]);
    }
    for (p, dir) in [(&image, false), (&path.to_owned(), true)] {
        let result = if dir { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(p)(e)),
        }
    }
    tracing::info!(path = %path.display(), "local volume deleted");
    Ok(())
}

/// Which pods on this node use which claim-backed volumes: a local volume is mounted while
/// some pod uses it and unmounted when the last one goes, as upstream's kubelet unmounts a
/// device no pod uses (a resize that could not run online runs at the mount after); the
/// stats endpoint reports each pod's volumes from here. Rebuilt after a restart as the
/// pods sync.
#[derive(Debug, Default)]
pub struct Users(std::sync::Mutex<std::collections::HashMap<String, Vec<Use>>>);

/// One pod volume backed by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// The pod's volume name.
    pub volume: String,
    /// The claim's namespace (the pod's).
    pub namespace: String,
    /// The claim's name.
    pub claim: String,
    /// The volume's path on the node.
    pub path: PathBuf,
}

impl Users {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<Use>>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the claim-backed volumes pod `uid` uses.
    pub fn using(&self, uid: &str, uses: Vec<Use>) {
        self.lock().insert(uid.to_owned(), uses);
    }

    /// The claim-backed volumes of pod `uid`.
    pub fn uses_of(&self, uid: &str) -> Vec<Use> {
        self.lock().get(uid).cloned().unwrap_or_default()
    }

    /// Every claim-backed volume in use on the node, once per claim.
    pub fn all(&self) -> Vec<Use> {
        let mut all: Vec<Use> = self.lock().values().flatten().cloned().collect();
        all.sort_by(|a, b| (&a.namespace, &a.claim).cmp(&(&b.namespace, &b.claim)));
        all.dedup_by(|a, b| a.namespace == b.namespace && a.claim == b.claim);
        all
    }

    /// Forgets pod `uid`; the volume paths no other pod uses.
    pub fn release(&self, uid: &str) -> Vec<PathBuf> {
        let mut users = self.lock();
        let Some(gone) = users.remove(uid) else { return Vec::new() };
        gone.into_iter()
            .map(|u| u.path)
            .filter(|p| !users.values().flatten().any(|u| &u.path == p))
            .collect()
    }
}

/// A volume's figures as the stats summary reports them (upstream's `VolumeStats`).
pub fn volume_stats(use_: &Use, namespace: &str, now: &str) -> Option<serde_json::Value> {
    let st = rustix::fs::statvfs(&use_.path).ok()?;
    let capacity = st.f_blocks * st.f_frsize;
    let available = st.f_bavail * st.f_frsize;
    let used = (st.f_blocks - st.f_bfree) * st.f_frsize;
    Some(serde_json::json!({
        "time": now,
        "name": use_.volume,
        "pvcRef": {"name": use_.claim, "namespace": namespace},
        "capacityBytes": capacity,
        "availableBytes": available,
        "usedBytes": used,
        "inodes": st.f_files,
        "inodesFree": st.f_ffree,
        "inodesUsed": st.f_files.saturating_sub(st.f_ffree),
    }))
}

/// The kubelet's volume metrics (`kubelet_volume_stats_*`, by namespace and claim) of the
/// claim-backed volumes in use, in Prometheus' text format.
pub fn volume_metrics(users: &Users) -> String {
    const METRICS: [(&str, &str); 6] = [
        ("capacity_bytes", "Capacity in bytes of the volume"),
        ("available_bytes", "Number of available bytes in the volume"),
        ("used_bytes", "Number of used bytes in the volume"),
        ("inodes", "Maximum number of inodes in the volume"),
        ("inodes_free", "Number of free inodes in the volume"),
        ("inodes_used", "Number of used inodes in the volume"),
    ];
    let figures: Vec<(Use, [u64; 6])> = users
        .all()
        .into_iter()
        .filter_map(|u| {
            let st = rustix::fs::statvfs(&u.path).ok()?;
            let f = st.f_frsize;
            let values = [
                st.f_blocks * f,
                st.f_bavail * f,
                (st.f_blocks - st.f_bfree) * f,
                st.f_files,
                st.f_ffree,
                st.f_files.saturating_sub(st.f_ffree),
            ];
            Some((u, values))
        })
        .collect();
    let mut out = String::new();
    for (i, (name, help)) in METRICS.iter().enumerate() {
        out.push_str(&format!("# HELP kubelet_volume_stats_{name} [ALPHA] {help}\n"));
        out.push_str(&format!("# TYPE kubelet_volume_stats_{name} gauge\n"));
        for (u, values) in &figures {
            out.push_str(&format!(
                "kubelet_volume_stats_{name}{{namespace=\"{}\",persistentvolumeclaim=\"{}\"}} {}\n",
                u.namespace, u.claim, values[i]
            ));
        }
    }
    out
}

/// Unmounts the volume at `path` (its data stays; the loop device goes with the mount).
pub fn unmount(storage: &Path, path: &Path) -> Result<(), VolumeError> {
    if path.parent() != Some(storage) {
        return Ok(());
    }
    if is_mount_point(path) {
        rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| VolumeError::Tool(format!("unmounting {}: {e}", path.display())))?;
        tracing::info!(path = %path.display(), "local volume unmounted: no pod uses it");
    } else if let Some(device) = loop_device(&image_of(path)) {
        // A Block volume: its loop device goes with its last pod.
        run("losetup", &["-d", &device])?;
        tracing::info!(path = %path.display(), "local block volume detached: no pod uses it");
    }
    Ok(())
}

/// Detaches every loop device backing an image under `storage` (`krust reset`).
pub fn detach_all(storage: &Path) {
    let Ok(entries) = std::fs::read_dir(storage.join(".images")) else { return };
    for entry in entries.flatten() {
        if let Some(device) = loop_device(&entry.path()) {
            let _ = run("losetup", &["-d", &device]);
        }
    }
}

/// Bytes free on the filesystem holding `storage`.
pub fn free_bytes(storage: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(storage).ok()?;
    Some(st.f_bavail * st.f_frsize)
}

fn ours(volume: &PersistentVolume) -> bool {
    volume.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER)
}

fn path_of(volume: &PersistentVolume) -> Option<PathBuf> {
    volume.spec.as_ref().and_then(|s| s.local.as_ref()).map(|l| PathBuf::from(&l.path))
}

fn capacity_of(volume: &PersistentVolume) -> u64 {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(controller_runtime::quantity::bytes)
        .and_then(|b| u64::try_from(b).ok())
        .unwrap_or(0)
}

/// Keeps the node's local volumes: wipes deleted ones (then lets their object go), grows
/// mounted ones whose claim grew (then reports the claim's new capacity), and publishes
/// the free space. Runs until `shutdown`.
pub async fn run_keeper(
    client: kube::Client,
    node: String,
    storage: PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let config = watcher::Config::default().labels(&format!("{NODE_LABEL}={node}"));
    let stream = watcher::watcher(volumes.clone(), config);
    let mut stream = std::pin::pin!(stream);
    let mut publish = tokio::time::interval(Duration::from_secs(30));
    let mut last_free: Option<u64> = None;
    loop {
        tokio::select! {
            () = crate::stopped(&mut shutdown) => return,
            _ = publish.tick() => {
                last_free = publish_free(&client, &node, &storage, last_free).await;
            }
            event = stream.next() => {
                let Some(event) = event else { return };
                let volume = match event {
                    Ok(watcher::Event::Apply(v) | watcher::Event::InitApply(v)) => v,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "watching local volumes");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Err(e) = keep(&client, &storage, &volume).await {
                    tracing::warn!(volume = %volume.name_any(), error = %e, "keeping a local volume failed; retried at its next change");
                }
            }
        }
    }
}

async fn keep(
    client: &kube::Client,
    storage: &Path,
    volume: &PersistentVolume,
) -> Result<(), String> {
    if !ours(volume) {
        return Ok(());
    }
    let Some(path) = path_of(volume) else { return Ok(()) };
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    if volume.metadata.deletion_timestamp.is_some() {
        if !volume.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        let (storage, p) = (storage.to_owned(), path.clone());
        tokio::task::spawn_blocking(move || delete(&storage, &p))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        // The PersistentVolume controller may be removing its own finalizer at the same
        // time: a conflict is retried on the volume as it is now.
        let mut current = volume.clone();
        for _ in 0..5 {
            if !current.finalizers().iter().any(|f| f == FINALIZER) {
                return Ok(());
            }
            current.finalizers_mut().retain(|f| f != FINALIZER);
            match volumes.replace(&volume.name_any(), &PostParams::default(), &current).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Read back as the watch reads it (by the node's label): a node may not
                    // GET a volume no pod of its uses, and a deleted claim's volume is one.
                    let node = volume.labels().get(NODE_LABEL).cloned().unwrap_or_default();
                    let params = ListParams::default().labels(&format!("{NODE_LABEL}={node}"));
                    let listed = volumes.list(&params).await.map_err(|e| e.to_string())?;
                    match listed.items.into_iter().find(|v| v.name_any() == volume.name_any()) {
                        Some(v) => current = v,
                        None => return Ok(()),
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        return Err("the volume kept changing while its finalizer was removed".into());
    }
    // Growing: only a volume some pod has mounted here (an unmounted one grows when next
    // mounted).
    if !is_mount_point(&path) {
        return Ok(());
    }
    let want = capacity_of(volume);
    let image = image_of(&path);
    let (p, i) = (path.clone(), image.clone());
    let online = tokio::task::spawn_blocking(move || grow_mounted(&p, &i, want))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if online && filesystem_bytes(&path).is_some() {
        report_capacity(client, volume).await?;
    }
    Ok(())
}

/// Tells the claim its volume's new capacity and that no resize is pending any more.
pub async fn report_capacity(
    client: &kube::Client,
    volume: &PersistentVolume,
) -> Result<(), String> {
    let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else { return Ok(()) };
    let (Some(namespace), Some(name)) = (r.namespace.as_deref(), r.name.as_deref()) else {
        return Ok(());
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claim = match claims.get(name).await {
        Ok(c) => c,
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let capacity = volume.spec.as_ref().and_then(|s| s.capacity.clone());
    let status = claim.status.clone().unwrap_or_default();
    let pending = status.conditions.iter().flatten().any(|c| c.type_ == "FileSystemResizePending");
    if status.capacity == capacity && !pending {
        return Ok(());
    }
    let conditions: Vec<_> = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "FileSystemResizePending" && c.type_ != "Resizing")
        .collect();
    let patch = serde_json::json!({"status": {"capacity": capacity, "conditions": conditions}});
    match claims.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Publishes the free bytes of the storage path, when they moved by 1% or more, as the
/// CSIStorageCapacity `kube-system/local-path-<node>` of the `local-path` class (what the
/// scheduler checks a new claim's size against).
async fn publish_free(
    client: &kube::Client,
    node: &str,
    storage: &Path,
    last: Option<u64>,
) -> Option<u64> {
    use k8s_openapi::api::storage::v1::CSIStorageCapacity;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    let _ = std::fs::create_dir_all(storage);
    let free = free_bytes(storage)?;
    if last.is_some_and(|l| l.abs_diff(free) < l / 100) {
        return last;
    }
    let api: Api<CSIStorageCapacity> = Api::namespaced(client.clone(), "kube-system");
    let name = controller_runtime::local_volume::capacity_name(node);
    let mut capacity = CSIStorageCapacity {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some("kube-system".into()),
            ..ObjectMeta::default()
        },
        storage_class_name: controller_runtime::local_volume::STORAGE_CLASS.into(),
        node_topology: Some(LabelSelector {
            match_labels: Some(std::collections::BTreeMap::from([(
                "kubernetes.io/hostname".to_owned(),
                node.to_owned(),
            )])),
            match_expressions: None,
        }),
        capacity: Some(Quantity(free.to_string())),
        maximum_volume_size: Some(Quantity(free.to_string())),
    };
    let result = match api.get_opt(&name).await {
        Ok(Some(existing)) => {
            capacity.metadata.resource_version = existing.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &capacity).await
        }
        Ok(None) => api.create(&PostParams::default(), &capacity).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Some(free),
        Err(e) => {
            tracing::debug!(error = %e, "publishing the free local storage failed");
            last
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_is_released_when_its_last_pod_goes() {
        let users = Users::default();
        let u = |v: &str, p: &str| Use {
            volume: v.into(),
            namespace: "d".into(),
            claim: format!("c-{v}"),
            path: p.into(),
        };
        users.using("a", vec![u("data", "/s/pvc-1"), u("logs", "/s/pvc-2")]);
        users.using("b", vec![u("data", "/s/pvc-1")]);
        assert_eq!(users.all().len(), 2, "one entry per claim");
        assert_eq!(users.release("a"), vec![PathBuf::from("/s/pvc-2")]);
        assert_eq!(users.uses_of("b").len(), 1);
        assert_eq!(users.release("b"), vec![PathBuf::from("/s/pvc-1")]);
        assert!(users.release("b").is_empty());
    }

    #[test]
    fn the_filesystem_size_is_read_from_the_superblock() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let image = dir.path().join("v.img");
        let mut bytes = vec![0u8; 4096];
        let sb = 1024;
        // 32768 blocks of 4 KiB (log 2 above 1 KiB), ext4's magic.
        bytes[sb + 0x4..sb + 0x8].copy_from_slice(&32768u32.to_le_bytes());
        bytes[sb + 0x18..sb + 0x1c].copy_from_slice(&2u32.to_le_bytes());
        bytes[sb + 0x38..sb + 0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        std::fs::write(&image, &bytes).expect("written");
        assert_eq!(Filesystem::of_image(&image), Some((Filesystem::Ext4, 128 << 20)));
        bytes[sb + 0x38] = 0;
        std::fs::write(&image, &bytes).expect("written");
        assert_eq!(Filesystem::of_image(&image), None, "not a filesystem");
        // XFS: 16384 blocks of 4 KiB, big-endian.
        bytes[0..4].copy_from_slice(b"XFSB");
        bytes[4..8].copy_from_slice(&4096u32.to_be_bytes());
        bytes[8..16].copy_from_slice(&16384u64.to_be_bytes());
        std::fs::write(&image, &bytes).expect("written");
        assert_eq!(Filesystem::of_image(&image), Some((Filesystem::Xfs, 64 << 20)));
        assert!(matches!(Filesystem::choose(Some("btrfs")), Err(VolumeError::FsType(_))));
        assert_eq!(Filesystem::choose(Some("ext4")).ok(), Some(Filesystem::Ext4));
    }

    #[test]
    fn images_live_beside_the_volumes_and_paths_stay_inside() {
        assert_eq!(
            image_of(Path::new("/var/lib/krust/storage/pvc-1")),
            PathBuf::from("/var/lib/krust/storage/.images/pvc-1.img")
        );
        let storage = Path::new("/var/lib/krust/storage");
        assert!(matches!(
            ensure(storage, Path::new("/etc/passwd"), 1, None),
            Err(VolumeError::Outside(_))
        ));
        assert!(matches!(
            delete(storage, Path::new("/var/lib/krust/storage/a/b")),
            Err(VolumeError::Outside(_))
        ));
    }
}
