//! `krust bench pods`: pod start-up latency (API create → Running and Ready seen by a watch)
//! beside the floor measured in the same run, the same image started directly through the
//! agent's containerd with `ctr run --rm`; plus the agent's idle memory and its CPU use with
//! 100 running pods. The server runs without an agent and a separate `krust agent` joins it,
//! so the agent's figures are its own (containerd excluded).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;

use super::percentile;

/// Flags of `krust bench pods`.
#[derive(Debug, Args)]
pub(crate) struct PodBenchArgs {
    /// Pods started one after another.
    #[arg(long, default_value_t = 50)]
    sequential: usize,
    /// Pods started all at once.
    #[arg(long, default_value_t = 50)]
    concurrent: usize,
    /// `ctr run --rm` runs for the floor.
    #[arg(long, default_value_t = 30)]
    floor_runs: usize,
    /// Pods running while the agent's steady-state CPU is measured.
    #[arg(long, default_value_t = 100)]
    steady_pods: usize,
    /// Length of the CPU measurement, in seconds.
    #[arg(long, default_value_t = 30)]
    steady_seconds: u64,
}

pub(super) struct Cluster {
    server: Child,
    agent: Option<Child>,
    pub(super) dir: PathBuf,
    pub(super) kubeconfig: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.as_mut() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
        if let Ok(exe) = std::env::current_exe() {
            let _ = Command::new(exe)
                .args(["reset", "--data-dir"])
                .arg(self.dir.join("agent"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) const NODE: &str = "bench-node";
pub(super) const IMAGE: &str = "krust.local/busybox:1";

impl Cluster {
    pub(super) fn start() -> anyhow::Result<Cluster> {
        let exe = std::env::current_exe()?;
        let dir = std::env::temp_dir().join(format!("krust-bench-pods-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("agent/agent/images"))?;
        let port = free_port()?;
        let kubeconfig = dir.join("kubeconfig.yaml");
        let server = Command::new(&exe)
            .args(["server", "--disable-agent"])
            // Networks of its own, so a cluster already on this host is left alone.
            .args(["--cluster-cidr=10.200.0.0/16", "--service-cidr=10.201.0.0/16", "--disable-dns"])
            .arg(format!("--https-listen-port={port}"))
            .arg("--data-dir")
            .arg(dir.join("server"))
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .env("KRUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        let mut cluster = Cluster { server, agent: None, dir: dir.clone(), kubeconfig };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(cluster.kubeconfig.exists()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        {
            anyhow::ensure!(Instant::now() < deadline, "krust server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = Command::new(&exe)
            .args(["image", "busybox", "--out"])
            .arg(dir.join("agent/agent/images/busybox.tar"))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "packing busybox: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = std::fs::read_to_string(dir.join("server/server/node-token"))?;
        let agent = Command::new(&exe)
            .arg("agent")
            .arg(format!("--server=https://127.0.0.1:{port}"))
            .arg(format!("--token={}", token.trim()))
            .arg("--data-dir")
            .arg(dir.join("agent"))
            .arg(format!("--node-name={NODE}"))
            .arg(format!("--kubelet-port={}", free_port()?))
            .env("KRUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        cluster.agent = Some(agent);
        Ok(cluster)
    }

    fn agent_pid(&self) -> u32 {
        self.agent.as_ref().map_or(0, Child::id)
    }

    fn socket(&self) -> PathBuf {
        agent::AgentConfig::new(
            self.dir.join("agent").join("agent"),
            String::new(),
            [0, 0, 0, 0].into(),
        )
        .containerd_paths()
        .socket
    }
}

/// Starts `true` in the image through the agent's containerd directly and waits for it to
/// exit and be removed; returns how long that took in ms.
async fn ctr_run(socket: &std::path::Path, id: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = tokio::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "k8s.io", "run", "--rm", "--snapshotter", "overlayfs", IMAGE, id, "true"])
        .output()
        .await
        .context("running ctr")?;
    anyhow::ensure!(out.status.success(), "ctr run: {}", String::from_utf8_lossy(&out.stderr));
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    utime + stime
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "bench": "pods" } },
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "c",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 3600 & wait; done"],
            }],
        },
    }))
    .unwrap_or_default()
}

pub(super) fn is_ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Records when each pod was first seen Running and Ready.
pub(super) async fn ready_watch(pods: Api<Pod>, seen: Arc<Mutex<HashMap<String, Instant>>>) {
    let config = watcher::Config::default().labels("bench=pods");
    let mut stream = watcher(pods, config).boxed();
    while let Some(event) = stream.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
            _ => continue,
        };
        if is_ready(&pod)
            && let Some(name) = pod.metadata.name.clone()
            && let Ok(mut s) = seen.lock()
        {
            s.entry(name).or_insert_with(Instant::now);
        }
    }
}

pub(super) async fn wait_ready(
    seen: &Arc<Mutex<HashMap<String, Instant>>>,
    names: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let done = seen.lock().map(|s| names.iter().all(|n| s.contains_key(n))).unwrap_or(false);
        if done {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "pods did not all become Ready in {timeout:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) async fn delete_all(pods: &Api<Pod>) -> anyhow::Result<()> {
    pods.delete_collection(&DeleteParams::default(), &ListParams::default().labels("bench=pods"))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = pods.list(&ListParams::default().labels("bench=pods")).await?.items.len();
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{left} pods were not removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) fn summary(name: &str, ms: Vec<f64>) -> (f64, f64) {
    let mut sorted: Vec<Duration> =
        ms.iter().map(|m| Duration::from_secs_f64(m / 1000.0)).collect();
    sorted.sort();
    let (p50, p99) = (percentile(&sorted, 0.50), percentile(&sorted, 0.99));
    let max = sorted.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    println!("{name:<36} {:>8} {:>10.1} {:>10.1} {:>10.1}", ms.len(), p50, p99, max);
    (p50, p99)
}

/// Waits until the bench's node reports Ready.
pub(super) async fn wait_node_ready(client: &kube::Client) -> anyhow::Result<()> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = nodes.get_opt(NODE).await?.and_then(|n| n.status).is_some_and(|s| {
            s.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the agent's node did not become Ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn run(args: PodBenchArgs) -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let client =
        crate::agent::client_from_kubeconfig(&std::fs::read_to_string(&cluster.kubeconfig)?)
            .await?;
    wait_node_ready(&client).await?;
    // Let start-up work settle before reading idle memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = rss_mib(cluster.agent_pid());

    // The floor: the same image through containerd directly.
    let socket = cluster.socket();
    let mut floor = Vec::new();
    for i in 0..=args.floor_runs {
        let ms = ctr_run(&socket, &format!("floor-{i}")).await?;
        // The first run warms caches; it is not counted.
        if i > 0 {
            floor.push(ms);
        }
    }

    // The concurrent floor: as many `ctr run --rm` at once as pods are started at once.
    let runs = futures::future::join_all((0..args.concurrent).map(|i| {
        let socket = socket.clone();
        async move { ctr_run(&socket, &format!("floor-c{i}")).await }
    }))
    .await;
    let floor_concurrent = runs.into_iter().collect::<anyhow::Result<Vec<f64>>>()?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let watch = tokio::spawn(ready_watch(pods.clone(), seen.clone()));
    // Warm-up pod (first sandbox on the node), not counted.
    pods.create(&PostParams::default(), &pod("warmup")).await?;
    wait_ready(&seen, &["warmup".to_owned()], Duration::from_secs(60)).await?;

    let mut sequential = Vec::new();
    for i in 0..args.sequential {
        let name = format!("seq-{i}");
        let started = Instant::now();
        pods.create(&PostParams::default(), &pod(&name)).await?;
        wait_ready(&seen, std::slice::from_ref(&name), Duration::from_secs(60)).await?;
        let at = seen.lock().ok().and_then(|s| s.get(&name).copied()).unwrap_or_else(Instant::now);
        sequential.push(at.duration_since(started).as_secs_f64() * 1000.0);
    }
    delete_all(&pods).await?;

    let started = Instant::now();
    let names: Vec<String> = (0..args.concurrent).map(|i| format!("con-{i}")).collect();
    let creates = futures::future::join_all(names.iter().map(|n| {
        let pods = pods.clone();
        let p = pod(n);
        async move {
            let t = Instant::now();
            pods.create(&PostParams::default(), &p).await.map(|_| t)
        }
    }))
    .await;
    let mut created = Vec::new();
    for c in creates {
        created.push(c?);
    }
    wait_ready(&seen, &names, Duration::from_secs(120)).await?;
    let concurrent: Vec<f64> = names
        .iter()
        .zip(created)
        .map(|(n, t)| {
            let at = seen.lock().ok().and_then(|s| s.get(n).copied()).unwrap_or_else(Instant::now);
            at.duration_since(t).as_secs_f64() * 1000.0
        })
        .collect();
    let all_ready = started.elapsed();
    delete_all(&pods).await?;

    // Steady state with many pods.
    let names: Vec<String> = (0..args.steady_pods).map(|i| format!("steady-{i}")).collect();
    for chunk in names.chunks(10) {
        futures::future::try_join_all(chunk.iter().map(|n| {
            let pods = pods.clone();
            let p = pod(n);
            async move { pods.create(&PostParams::default(), &p).await }
        }))
        .await?;
    }
    wait_ready(&seen, &names, Duration::from_secs(300)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = cluster.agent_pid();
    let ticks_before = cpu_ticks(pid);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.steady_seconds)).await;
    let ticks = cpu_ticks(pid).saturating_sub(ticks_before);
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let cpu_percent = ticks as f64 / ticks_per_second / window.elapsed().as_secs_f64() * 100.0;
    let busy_rss = rss_mib(pid);
    delete_all(&pods).await?;
    watch.abort();

    println!("{:<36} {:>8} {:>10} {:>10} {:>10}", "start-up (ms)", "n", "p50", "p99", "max");
    let (floor50, _) = summary("floor: ctr run --rm, one at a time", floor);
    let (floor_c50, _) =
        summary(&format!("floor: ctr run --rm, {} at once", args.concurrent), floor_concurrent);
    let (seq50, seq99) = summary("pods, one at a time (create→Ready)", sequential);
    let (con50, con99) =
        summary(&format!("pods, {} at once (create→Ready)", args.concurrent), concurrent);
    println!();
    println!(
        "p50 / floor: sequential {:.2}×, concurrent {:.2}× (target ≤ 1.5×)",
        seq50 / floor50,
        con50 / floor_c50
    );
    println!(
        "p99: sequential {seq99:.0} ms, concurrent {con99:.0} ms (target ≤ 1000 ms; upstream SLO 5 s)"
    );
    println!(
        "all {} concurrent pods Ready after {:.0} ms",
        args.concurrent,
        all_ready.as_secs_f64() * 1000.0
    );
    println!(
        "agent RSS idle {idle_rss:.1} MiB (target ≤ 30 MB); with {} pods {busy_rss:.1} MiB",
        args.steady_pods
    );
    println!(
        "agent CPU with {} running pods: {cpu_percent:.2}% of a core over {} s (target ≤ 5%)",
        args.steady_pods, args.steady_seconds
    );
    Ok(())
}
