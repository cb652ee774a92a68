//! Container images krust makes itself: a tar writer, an OCI image-layout archive writer, and
//! the pause image (a 105-byte program of our own, so no image is ever downloaded to start a
//! pod). Tests use the same writer to pack images from the host's `busybox-static`.

use std::collections::BTreeMap;

/// The pause image's reference, as containerd's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "krust.local/pause:1";

/// One entry of a layer.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory.
    Dir { path: String, mode: u32 },
    /// A regular file.
    File { path: String, mode: u32, contents: Vec<u8> },
    /// A symbolic link.
    Symlink { path: String, target: String },
}

/// A tar archive in the POSIX ustar format, written into memory.
#[derive(Debug, Default)]
pub struct TarWriter {
    out: Vec<u8>,
}

impl TarWriter {
    /// An empty archive.
    pub fn new() -> TarWriter {
        TarWriter::default()
    }

    /// Appends one entry. Paths longer than ustar's 100 bytes use a GNU long-name record.
    pub fn append(&mut self, entry: &Entry) {
        match entry {
            Entry::Dir { path, mode } => {
                let path = format!("{}/", path.trim_end_matches('/'));
                self.header(&path, *mode, 0, b'5', "");
            }
            Entry::File { path, mode, contents } => {
                self.header(path, *mode, contents.len() as u64, b'0', "");
                self.out.extend_from_slice(contents);
                self.pad();
            }
            Entry::Symlink { path, target } => self.header(path, 0o777, 0, b'2', target),
        }
    }

    /// Appends a regular file (0644).
    pub fn file(&mut self, path: &str, contents: &[u8]) {
        self.append(&Entry::File { path: path.into(), mode: 0o644, contents: contents.into() });
    }

    /// The finished archive (two zero blocks appended).
    pub fn finish(mut self) -> Vec<u8> {
        self.out.resize(self.out.len() + 1024, 0);
        self.out
    }

    fn pad(&mut self) {
        let rem = self.out.len() % 512;
        if rem != 0 {
            self.out.resize(self.out.len() + 512 - rem, 0);
        }
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8, link: &str) {
        if path.len() > 100 {
            self.header("././@LongLink", 0, path.len() as u64 + 1, b'L', "");
            self.out.extend_from_slice(path.as_bytes());
            self.out.push(0);
            self.pad();
        }
        let mut h = [0u8; 512];
        let name = path.as_bytes();
        h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 0);
        h[156] = kind;
        let link = link.as_bytes();
        h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        octal(&mut h[148..155], sum);
        h[155] = 0;
        self.out.extend_from_slice(&h);
    }
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

/// The hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// What an image runs, as the OCI image config's `config` object.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`.
    pub user: String,
}

/// Packs one layer (an uncompressed tar) and a config into an OCI image-layout archive that
/// `ctr images import`, `skopeo copy oci-archive:` and krust's own import accept. `reference`
/// is the full image name (`registry/repo:tag`).
pub fn oci_archive(reference: &str, layer: &[u8], config: &ImageConfig) -> Vec<u8> {
    let layer_digest = sha256_hex(layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config_json = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Entrypoint": non_empty(&config.entrypoint),
            "Cmd": non_empty(&config.cmd),
            "Env": non_empty(&config.env),
            "WorkingDir": config.working_dir,
            "User": config.user,
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created_by": "krust" }],
    });
    let config_bytes = serde_json::to_vec(&config_json).unwrap_or_default();
    let config_digest = sha256_hex(&config_bytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len(),
        }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    let manifest_digest = sha256_hex(&manifest_bytes);
    let tag =
        reference.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map_or("latest", |(_, t)| t);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_bytes.len(),
            "platform": { "architecture": arch, "os": "linux" },
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    let mut tar = TarWriter::new();
    tar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    tar.file("index.json", &serde_json::to_vec(&index).unwrap_or_default());
    tar.append(&Entry::Dir { path: "blobs".into(), mode: 0o755 });
    tar.append(&Entry::Dir { path: "blobs/sha256".into(), mode: 0o755 });
    tar.file(&format!("blobs/sha256/{layer_digest}"), layer);
    tar.file(&format!("blobs/sha256/{config_digest}"), &config_bytes);
    tar.file(&format!("blobs/sha256/{manifest_digest}"), &manifest_bytes);
    tar.finish()
}

fn non_empty(v: &[String]) -> serde_json::Value {
    if v.is_empty() { serde_json::Value::Null } else { serde_json::json!(v) }
}

/// The machine code of the pause program for x86_64 Linux. It blocks SIGINT, SIGTERM and
/// SIGCHLD, then waits for them with `rt_sigtimedwait`: SIGCHLD reaps zombies (`wait4` with
/// WNOHANG until none is left), SIGINT or SIGTERM ends it with status 0. Assembled from:
///
/// ```text
///   rt_sigprocmask(SIG_BLOCK, &set, NULL, 8)
/// loop:
///   sig = rt_sigtimedwait(&set, NULL, NULL, 8)
///   if sig == SIGCHLD { while wait4(-1, NULL, WNOHANG, NULL) > 0 {} ; goto loop }
///   if sig <= 0 goto loop
///   exit_group(0)
/// set: (1<<(SIGINT-1)) | (1<<(SIGTERM-1)) | (1<<(SIGCHLD-1))
/// ```
const PAUSE_X86_64: [u8; 105] = [
    0xb8, 0x0e, 0x00, 0x00, 0x00, 0x31, 0xff, 0x48, 0x8d, 0x35, 0x53, 0x00, 0x00, 0x00, 0x31, 0xd2,
    0x41, 0xba, 0x08, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0x80, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x3d,
    0x3d, 0x00, 0x00, 0x00, 0x31, 0xf6, 0x31, 0xd2, 0x41, 0xba, 0x08, 0x00, 0x00, 0x00, 0x0f, 0x05,
    0x83, 0xf8, 0x11, 0x75, 0x1f, 0xb8, 0x3d, 0x00, 0x00, 0x00, 0x48, 0xc7, 0xc7, 0xff, 0xff, 0xff,
    0xff, 0x31, 0xf6, 0xba, 0x01, 0x00, 0x00, 0x00, 0x45, 0x31, 0xd2, 0x0f, 0x05, 0x48, 0x85, 0xc0,
    0x7f, 0xe3, 0xeb, 0xc4, 0x85, 0xc0, 0x7e, 0xc0, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f,
    0x05, 0x02, 0x40, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// A static ELF64 executable for x86_64 whose one loadable segment is `code`, entered at its
/// first byte.
pub fn elf_x86_64(code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let total = HEADERS + code.len() as u64;
    let mut elf = Vec::with_capacity(total as usize);
    // ELF header.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers offset
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&56u16.to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes());
    elf.extend_from_slice(&[0; 6]);
    // One PT_LOAD, read + execute, mapping the whole file.
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&5u32.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&total.to_le_bytes());
    elf.extend_from_slice(&total.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(code);
    elf
}

/// The pause program for this machine, or `None` on an architecture it is not written for.
pub fn pause_program() -> Option<Vec<u8>> {
    (std::env::consts::ARCH == "x86_64").then(|| elf_x86_64(&PAUSE_X86_64))
}

/// The pause image as an OCI archive.
pub fn pause_image() -> Option<Vec<u8>> {
    let program = pause_program()?;
    let mut layer = TarWriter::new();
    layer.append(&Entry::File { path: "pause".into(), mode: 0o755, contents: program });
    let config = ImageConfig {
        entrypoint: vec!["/pause".into()],
        user: "65535:65535".into(),
        ..Default::default()
    };
    Some(oci_archive(PAUSE_IMAGE, &layer.finish(), &config))
}

/// A busybox image built from the host's `busybox-static` (`/bin/busybox`): the binary, a
/// link for every applet it lists under `/bin`, and the usual empty directories. For tests
/// and air-gapped demos.
pub fn busybox_image(reference: &str, busybox: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let binary = std::fs::read(busybox)?;
    let listing = std::process::Command::new(busybox).arg("--list").output()?;
    let mut layer = TarWriter::new();
    let mut dirs: BTreeMap<&str, u32> = BTreeMap::new();
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("var", 0o755),
        ("proc", 0o755),
        ("sys", 0o755),
        ("dev", 0o755),
    ] {
        dirs.insert(d, mode);
    }
    for (path, mode) in &dirs {
        layer.append(&Entry::Dir { path: (*path).into(), mode: *mode });
    }
    layer.append(&Entry::File { path: "bin/busybox".into(), mode: 0o755, contents: binary });
    for applet in String::from_utf8_lossy(&listing.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        layer.append(&Entry::Symlink { path: format!("bin/{applet}"), target: "busybox".into() });
    }
    layer.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    );
    layer.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n");
    let config = ImageConfig {
        cmd: vec!["/bin/sh".into()],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..Default::default()
    };
    Ok(oci_archive(reference, &layer.finish(), &config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_have_valid_checksums_and_padding() {
        let mut tar = TarWriter::new();
        tar.file("a.txt", b"hello");
        tar.append(&Entry::Symlink { path: "b".into(), target: "a.txt".into() });
        tar.append(&Entry::File { path: "x".repeat(150), mode: 0o600, contents: vec![1; 600] });
        let out = tar.finish();
        assert_eq!(out.len() % 512, 0);
        let header = &out[..512];
        let stored = std::str::from_utf8(&header[148..154]).unwrap();
        let mut copy = header.to_vec();
        copy[148..156].fill(b' ');
        let sum: u64 = copy.iter().map(|b| u64::from(*b)).sum();
        assert_eq!(u64::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&out[512..517], b"hello");
        assert_eq!(out[1024 + 156], b'2');
    }

    #[test]
    fn pause_program_runs_and_exits_on_sigterm() {
        let Some(program) = pause_program() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pause");
        std::fs::write(&path, program).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = std::process::Command::new(&path).spawn().unwrap();
        let pid = rustix::process::Pid::from_child(&child);
        // It must still be running after a moment: a broken program crashes at once.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(child.try_wait().unwrap().is_none(), "pause exited early");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0));
    }
}
