//! Test harness: a real `krust server` process on a free port with its own data dir.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct KrustServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub kubeconfig: PathBuf,
    extra: Vec<String>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real kubectl installed by scripts/install-test-tools.sh.
pub fn tool(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin");
    let path = root.join(name);
    assert!(
        path.exists(),
        "{} missing: run scripts/install-test-tools.sh (the README's test command does)",
        path.display()
    );
    path
}

impl KrustServer {
    pub fn start(extra: &[&str]) -> KrustServer {
        let dir = tempfile::tempdir().unwrap();
        let mut server = KrustServer {
            child: None,
            kubeconfig: dir.path().join("kubeconfig.yaml"),
            dir,
            port: free_port(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
        let child = Command::new(env!("CARGO_BIN_EXE_krust"))
            .arg("server")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--https-listen-port={}", self.port))
            .arg("--write-kubeconfig")
            .arg(&self.kubeconfig)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start krust server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.kubeconfig.exists()
            && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok())
        {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("krust server exited: {status}");
            }
            assert!(Instant::now() < deadline, "krust server did not become ready in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same data dir and port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(tool("kubectl"), args, None)
    }

    pub fn kubectl_with(&self, binary: PathBuf, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(binary)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"))
            .env("HOME", self.dir.path())
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl with stdin and asserts success.
    pub fn ok_stdin(&self, args: &[&str], input: &str) -> String {
        let out = self.kubectl_with(tool("kubectl"), args, Some(input));
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
        kube::Client::try_from(config).unwrap()
    }
}

impl Drop for KrustServer {
    fn drop(&mut self) {
        self.kill();
    }
}
