//! Test harness: a real `krust server` process on a free port with its own data dir.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct KrustServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub kubeconfig: PathBuf,
    extra: Vec<String>,
    /// The node name when the server runs an agent.
    pub node: Option<String>,
}

/// The body of an HTTP GET of `/` at `address` (`ip:port`), with deadlines on connecting
/// and reading.
pub fn get_body(address: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let address: std::net::SocketAddr = address.parse().map_err(std::io::Error::other)?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned())
}

/// A port for a test server to listen on (see `storage::testing::free_port`).
pub fn free_port() -> u16 {
    storage::testing::free_port().expect("a free port")
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

/// Writes an OCI archive of the host's busybox-static named `name` to `out`.
pub fn busybox_archive(name: &str, out: &Path) {
    let result = Command::new(env!("CARGO_BIN_EXE_krust"))
        .args(["image", "busybox", "--name", name, "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
}

pub const BUSYBOX: &str = "krust.local/busybox:1";

impl KrustServer {
    /// The API server alone: no agent, scheduler or controllers act on what tests write.
    pub fn start(extra: &[&str]) -> KrustServer {
        let mut all =
            vec!["--disable-agent", "--disable-scheduler", "--disable-controller-manager"];
        all.extend_from_slice(extra);
        Self::launch(&all, None)
    }

    /// The control plane without an agent: API server, scheduler and controllers.
    pub fn start_control_plane(extra: &[&str]) -> KrustServer {
        let mut all = vec!["--disable-agent"];
        all.extend_from_slice(extra);
        Self::launch(&all, None)
    }

    /// A server with its node agent, busybox imported through the air-gap images folder,
    /// a node name and pod network of its own (so tests can run side by side), and the node
    /// Ready when this returns. Dropping it resets the agent (`krust reset`).
    pub fn start_with_agent(extra: &[&str]) -> KrustServer {
        let port = free_port();
        let node = format!("node-{port}");
        let cidr = format!("10.{}.0.0/16", 100 + port % 150);
        let mut all: Vec<String> = vec![
            format!("--node-name={node}"),
            format!("--cluster-cidr={cidr}"),
            format!("--service-cidr=10.{}.0.0/16", 100 + (port + 75) % 150),
            format!("--kubelet-port={}", free_port()),
        ];
        all.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let server = Self::launch_on(port, &refs, Some(node.clone()));
        server.wait_node_ready(&node);
        server
    }

    fn launch(extra: &[&str], node: Option<String>) -> KrustServer {
        Self::launch_on(free_port(), extra, node)
    }

    fn launch_on(port: u16, extra: &[&str], node: Option<String>) -> KrustServer {
        let dir = tempfile::tempdir().unwrap();
        if node.is_some() {
            let images = dir.path().join("data/agent/images");
            std::fs::create_dir_all(&images).unwrap();
            busybox_archive(BUSYBOX, &images.join("busybox.tar"));
        }
        let mut server = KrustServer {
            child: None,
            kubeconfig: dir.path().join("kubeconfig.yaml"),
            dir,
            port,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            node,
        };
        // Servers of tests running side by side share the host's address: each DNS
        // server listens on a port of its own.
        if !server.extra.iter().any(|a| a.starts_with("--dns-port") || a == "--disable-dns") {
            server.extra.push(format!("--dns-port={}", free_port()));
        }
        server.spawn();
        server
    }

    /// Polls until the Node reports Ready.
    pub fn wait_node_ready(&self, node: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.kubectl(&[
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            if String::from_utf8_lossy(&out.stdout).trim() == "True" {
                return;
            }
            assert!(Instant::now() < deadline, "node {node} not Ready in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `kubectl get` with a jsonpath until `check` accepts the output.
    pub fn wait_for(
        &self,
        args: &[&str],
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.kubectl(args);
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && check(&text) {
                return text;
            }
            let last = if out.status.success() {
                text
            } else {
                String::from_utf8_lossy(&out.stderr).into_owned()
            };
            assert!(
                Instant::now() < deadline,
                "timed out waiting on kubectl {args:?}; last: {last}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls one pod's jsonpath until `check` accepts it.
    pub fn wait_pod(
        &self,
        namespace: &str,
        pod: &str,
        jsonpath: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let output = format!("jsonpath={jsonpath}");
        self.wait_for(&["get", "pod", pod, "-n", namespace, "-o", &output], timeout, check)
    }

    /// Events (of the object named `name`, or all with ""), one `Reason: message` per line.
    pub fn events(&self, name: &str) -> String {
        let selector = format!("involvedObject.name={name}");
        let mut args = vec!["get", "events"];
        if !name.is_empty() {
            args.extend(["--field-selector", &selector]);
        }
        args.extend(["-o", "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}"]);
        self.ok(&args)
    }

    /// A jsonpath read of one pod.
    pub fn pod_field(&self, namespace: &str, pod: &str, jsonpath: &str) -> String {
        let out = self.kubectl(&[
            "get",
            "pod",
            pod,
            "-n",
            namespace,
            "-o",
            &format!("jsonpath={jsonpath}"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until the pod's phase is `phase`; panics early if it reaches another terminal
    /// phase.
    pub fn wait_phase(&self, namespace: &str, pod: &str, phase: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.pod_field(namespace, pod, "{.status.phase}");
            if now == phase {
                return;
            }
            if (now == "Succeeded" || now == "Failed") && now != phase {
                panic!(
                    "pod {namespace}/{pod} is {now}, wanted {phase}: {}",
                    self.pod_field(namespace, pod, "{.status}")
                );
            }
            assert!(
                Instant::now() < deadline,
                "pod {namespace}/{pod} not {phase} in {timeout:?}: {}",
                self.pod_field(namespace, pod, "{.status}")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `krust reset` on this server's data dir.
    pub fn reset(&self) {
        let out = Command::new(env!("CARGO_BIN_EXE_krust"))
            .arg("reset")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!("krust reset failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
        let child = Command::new(env!("CARGO_BIN_EXE_krust"))
            .arg("server")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(
                (!self.extra.iter().any(|a| a.starts_with("--bind-address")))
                    .then_some("--bind-address=127.0.0.1"),
            )
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
        // Where it listens: loopback, unless a specific address was given.
        let host = self
            .extra
            .iter()
            .find_map(|a| a.strip_prefix("--bind-address="))
            .filter(|a| *a != "0.0.0.0")
            .unwrap_or("127.0.0.1")
            .to_owned();
        while !(self.kubeconfig.exists()
            && std::net::TcpStream::connect((host.as_str(), self.port)).is_ok())
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

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the server to exit; its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL) without starting it again.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts a stopped server again on the same data dir and port.
    pub fn start_again(&mut self) {
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
        if self.node.is_some() {
            self.reset();
        }
    }
}

/// A `krust sim nodes` process against a server; killed (its nodes stop heartbeating)
/// when dropped or stopped.
pub struct SimNodes {
    child: Option<Child>,
}

impl SimNodes {
    /// Starts simulated nodes with these flags (`--count`, `--prefix`, …) and waits until
    /// `count` nodes with the prefix are Ready.
    pub fn start(server: &KrustServer, prefix: &str, count: usize, extra: &[&str]) -> SimNodes {
        let child = Command::new(env!("CARGO_BIN_EXE_krust"))
            .args(["sim", "nodes", "--kubeconfig"])
            .arg(&server.kubeconfig)
            .args(["--prefix", prefix, "--count", &count.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start krust sim nodes");
        let sim = SimNodes { child: Some(child) };
        server.wait_for(
            &["get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"],
            Duration::from_secs(60),
            |out| out.lines().filter(|l| l.starts_with(&format!("{prefix}-")) && l.ends_with("=True")).count() == count,
        );
        sim
    }

    /// Stops the process: its nodes stop renewing their Leases, as a dead kubelet would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A kubeconfig like the admin's whose user is `user` (YAML) instead of a client
/// certificate, written as `name`.
pub fn kubeconfig_as(server: &KrustServer, name: &str, user: &str) -> std::path::PathBuf {
    let admin = std::fs::read_to_string(&server.kubeconfig).unwrap();
    let head = admin.split("users:").next().unwrap();
    let context_user =
        head.lines().find_map(|l| l.trim().strip_prefix("user: ")).unwrap().to_owned();
    let path = server.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, format!("{head}users:\n- name: {context_user}\n  user: {user}\n"))
        .unwrap();
    path
}

/// One that authenticates with `token`.
pub fn token_kubeconfig(server: &KrustServer, token: &str) -> std::path::PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut hasher);
    kubeconfig_as(server, &format!("token-{:x}", hasher.finish()), &format!("{{token: {token}}}"))
}

/// The API server's URL, from the admin kubeconfig.
pub fn server_url(server: &KrustServer) -> String {
    std::fs::read_to_string(&server.kubeconfig)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_owned))
        .unwrap()
}

/// kubectl with the kubeconfig at `config`: (success, stdout, stderr).
pub fn kubectl_as(
    server: &KrustServer,
    config: &std::path::Path,
    args: &[&str],
) -> (bool, String, String) {
    let out = std::process::Command::new(tool("kubectl"))
        .args(args)
        .env("KUBECONFIG", config)
        .env("HOME", server.dir.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// A network namespace joined to the host by a veth pair: the host side is `.1`, the
/// namespace side `.2` of a /30. The namespace is held by a process of its own rather than
/// `ip netns add`, which would bind-mount /run/netns over itself and hide the namespaces
/// containerd already mounted there (so it could never remove them). Gone on drop.
pub struct NetNs {
    holder: std::process::Child,
    host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

impl NetNs {
    pub fn create(index: u16) -> NetNs {
        let holder = std::process::Command::new("unshare")
            .args(["--net", "--", "sleep", "100000"])
            .spawn()
            .unwrap();
        let (a, b) = (index / 64 % 256, (index % 64) * 4);
        let host_ip = format!("10.254.{a}.{}", b + 1);
        let ns_ip = format!("10.254.{a}.{}", b + 2);
        let host_if = format!("krt{index}h");
        let ns_if = format!("krt{index}n");
        let mut ns = NetNs {
            holder,
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        let pid = ns.holder.id().to_string();
        // unshare(1) enters the namespace before exec'ing sleep; wait until it has.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
            == std::fs::read_link("/proc/self/ns/net").ok()
        {
            assert!(Instant::now() < deadline, "unshare did not enter a new network namespace");
            std::thread::sleep(Duration::from_millis(10));
        }
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let inside = |args: &[&str]| {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .arg("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {args:?} in the namespace: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = std::process::Command::new("ip").args(["link", "delete", &host_if]).output();
        run(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        run(&["link", "set", &ns_if, "netns", &pid]);
        run(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        run(&["link", "set", &host_if, "up"]);
        inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", &host_ip]);
        ns.host_if = host_if;
        ns
    }

    /// `--net=` argument for nsenter.
    pub fn nsenter_arg(&self) -> String {
        format!("--net=/proc/{}/ns/net", self.holder.id())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = std::process::Command::new("ip").args(["link", "delete", &self.host_if]).output();
    }
}

/// A `krust agent` joined from inside a network namespace; killed and reset on drop.
pub struct JoinedAgent {
    pub child: std::process::Child,
    pub nsenter: String,
    pub data: std::path::PathBuf,
}

impl Drop for JoinedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::process::Command::new("nsenter")
            .arg(&self.nsenter)
            .args([env!("CARGO_BIN_EXE_krust"), "reset", "--data-dir"])
            .arg(&self.data)
            .output();
    }
}

/// Joins a `krust agent` named `node` to `server` from inside `ns` (the server must listen
/// on all addresses with `--tls-san=<ns.host_ip>`), with busybox imported and `extra`
/// flags. Wait for its node to be Ready before using it.
pub fn join_agent(server: &KrustServer, ns: &NetNs, node: &str, extra: &[&str]) -> JoinedAgent {
    let token = std::fs::read_to_string(server.dir.path().join("data/server/node-token")).unwrap();
    let data = server.dir.path().join(format!("agent-{node}"));
    std::fs::create_dir_all(data.join("agent/images")).unwrap();
    busybox_archive(BUSYBOX, &data.join("agent/images/busybox.tar"));
    // nsenter enters the network namespace only; `ip netns exec` would also remount /sys
    // without its cgroup mounts, which runc needs.
    let child = Command::new("nsenter")
        .arg(ns.nsenter_arg())
        .args([env!("CARGO_BIN_EXE_krust"), "agent"])
        .arg(format!("--server=https://{}:{}", ns.host_ip, server.port))
        .arg(format!("--token={}", token.trim()))
        .arg("--data-dir")
        .arg(&data)
        .arg(format!("--node-name={node}"))
        .arg(format!("--node-ip={}", ns.ns_ip))
        .args(extra)
        .env("KRUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    JoinedAgent { child, nsenter: ns.nsenter_arg(), data }
}

/// A base64 field of a kubeconfig (`client-certificate-data`…), decoded.
pub fn kubeconfig_pem(path: &std::path::Path, field: &str) -> Vec<u8> {
    use std::io::Write;
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| l.trim_start().starts_with(field)).unwrap();
    let b64 = line.split_once(':').unwrap().1.trim().to_owned();
    let mut child = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b64.as_bytes()).unwrap();
    child.wait_with_output().unwrap().stdout
}

/// The server's own node agent's `/stats/summary`, as JSON.
pub fn stats_summary(server: &KrustServer) -> serde_json::Value {
    serde_json::from_slice(&agent_get(server, "/stats/summary")).unwrap()
}

/// A GET of `path` on the server's own node agent, with the admin's certificate (which the
/// agent admits, as the API server's).
pub fn agent_get(server: &KrustServer, path: &str) -> Vec<u8> {
    let node = server.node.clone().expect("a node");
    let port = server.ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
    ]);
    let cert = server.dir.path().join("admin-stats.crt");
    let key = server.dir.path().join("admin-stats.key");
    std::fs::write(&cert, kubeconfig_pem(&server.kubeconfig, "client-certificate-data")).unwrap();
    std::fs::write(&key, kubeconfig_pem(&server.kubeconfig, "client-key-data")).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(server.dir.path().join("data/agent/tls/ca.crt"))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}
