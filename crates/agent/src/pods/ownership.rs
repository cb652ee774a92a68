//! A pod's `fsGroup` on the volumes that take it (emptyDir and `local` persistent volumes,
//! as upstream's kubelet: not hostPath): everything in the volume gets the group, group
//! read and write (and execute where the owner has it), and directories the setgid bit so
//! new files inherit the group. `fsGroupChangePolicy: OnRootMismatch` skips a volume whose
//! root already has the group and those bits.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::volumes::MountError;

const SETGID: u32 = 0o2000;

fn io_err(path: &Path, e: std::io::Error) -> MountError {
    MountError(format!("applying fsGroup to {}: {e}", path.display()))
}

/// The mode a file or directory gets under an fsGroup.
pub fn mode_for(mode: u32, dir: bool) -> u32 {
    let mut m = mode | 0o060;
    if mode & 0o100 != 0 || dir {
        m |= 0o010;
    }
    if dir {
        m |= SETGID;
    }
    m & 0o7777
}

fn root_matches(path: &Path, gid: u32) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|m| m.gid() == gid && mode_for(m.mode() & 0o7777, true) == m.mode() & 0o7777)
}

fn apply(path: &Path, gid: u32) -> Result<(), MountError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_err(path, e))?;
    if meta.file_type().is_symlink() {
        // The link itself; what it points to may be outside the volume.
        return std::os::unix::fs::lchown(path, None, Some(gid)).map_err(|e| io_err(path, e));
    }
    std::os::unix::fs::lchown(path, None, Some(gid)).map_err(|e| io_err(path, e))?;
    let dir = meta.is_dir();
    let mode = mode_for(meta.mode() & 0o7777, dir);
    if mode != meta.mode() & 0o7777 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_err(path, e))?;
    }
    if dir {
        for entry in std::fs::read_dir(path).map_err(|e| io_err(path, e))? {
            let entry = entry.map_err(|e| io_err(path, e))?;
            apply(&entry.path(), gid)?;
        }
    }
    Ok(())
}

/// Gives the volume at `path` to group `gid` under `policy` (`Always` when none).
pub fn set_fs_group(path: &Path, gid: u32, policy: Option<&str>) -> Result<(), MountError> {
    if policy == Some("OnRootMismatch") && root_matches(path, gid) {
        return Ok(());
    }
    apply(path, gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_become_group_writable_and_directories_setgid() {
        assert_eq!(mode_for(0o644, false), 0o664);
        assert_eq!(mode_for(0o755, false), 0o775);
        assert_eq!(mode_for(0o700, true), 0o2770);
        assert_eq!(mode_for(0o777, true), 0o2777);
    }

    #[test]
    fn a_tree_gets_the_group_and_on_root_mismatch_skips_a_matching_root() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let root = dir.path().join("v");
        std::fs::create_dir_all(root.join("sub")).expect("dirs");
        std::fs::write(root.join("sub/f"), b"x").expect("a file");
        let gid = 4321;
        set_fs_group(&root, gid, None).expect("applied");
        let meta = std::fs::metadata(root.join("sub/f")).expect("meta");
        assert_eq!((meta.gid(), meta.mode() & 0o070), (gid, 0o060));
        assert_eq!(std::fs::metadata(root.join("sub")).expect("meta").mode() & SETGID, SETGID);
        // A file added later with another group is left alone when the root matches.
        std::fs::write(root.join("late"), b"y").expect("a file");
        std::os::unix::fs::lchown(root.join("late"), None, Some(0)).expect("chown");
        set_fs_group(&root, gid, Some("OnRootMismatch")).expect("skipped");
        assert_eq!(std::fs::metadata(root.join("late")).expect("meta").gid(), 0);
        set_fs_group(&root, gid, Some("Always")).expect("applied");
        assert_eq!(std::fs::metadata(root.join("late")).expect("meta").gid(), gid);
    }
}
