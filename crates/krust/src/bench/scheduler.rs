//! `krust bench scheduler`: scheduler and controller figures at scale, on simulated nodes
//! (`krust sim nodes`, a child process) against a real `krust server` (another child) with
//! its in-process scheduler and controllers. Pods are created through Deployments, so the
//! ReplicaSet controller, the scheduler and the simulated kubelets all work as in a real
//! cluster. No upstream scheduler can run here (no container images, no Go toolchain), so
//! the throughput stands beside upstream's published figures, cited in the output.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use controllers::cached_pod::CachedPod;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;

use super::api::Server;
use super::percentile;

/// Flags of `krust bench scheduler`.
#[derive(Debug, Args)]
pub(crate) struct SchedBenchArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods created through Deployments for the throughput figure.
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// Replicas per Deployment in the throughput phase.
    #[arg(long, default_value_t = 1000)]
    replicas_per_deployment: usize,
    /// Replicas of the one Deployment whose convergence is timed.
    #[arg(long, default_value_t = 10_000)]
    converge_replicas: usize,
    /// Pods held at the end for the memory and LIST figures (0 skips that phase).
    #[arg(long, default_value_t = 150_000)]
    hold_pods: usize,
    /// The server's `--compaction-interval`; the held figure is read again after one
    /// compaction has dropped the history of the creation.
    #[arg(long, default_value = "5m")]
    compaction_interval: String,
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn deployment(name: &str, replicas: usize) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "bench": "scheduler"}},
                "spec": {"containers": [{
                    "name": "web", "image": "registry.local/web:1.0",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}
                }]}
            }
        }
    }))?)
}

/// Counts pods (in `namespace`) that have a node, until `target`; returns when the first
/// and the last were seen bound, measured from `start`.
async fn wait_bound(
    client: kube::Client,
    namespace: &str,
    target: usize,
    start: Instant,
    timeout: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    // The cached view decodes only metadata and the few spec fields, so the measuring
    // watch takes little of the CPU it measures.
    let api: Api<CachedPod> = Api::namespaced(client, namespace);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut bound: HashSet<String> = HashSet::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut first = None;
    let deadline = start + timeout;
    let mut next_report = start + Duration::from_secs(5);
    loop {
        // Progress on stderr: whether creation or binding is the slower stage.
        if Instant::now() >= next_report {
            eprintln!(
                "  {:>5.1} s: {} pods seen, {} bound",
                start.elapsed().as_secs_f64(),
                seen.len(),
                bound.len()
            );
            next_report += Duration::from_secs(5);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "only {} of {target} pods bound in {timeout:?}",
            bound.len()
        );
        let Ok(Some(event)) = tokio::time::timeout(left, stream.next()).await else { continue };
        let pod = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
            _ => continue,
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !seen.contains(&uid) {
            seen.insert(uid.clone());
        }
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty())
            && bound.insert(uid)
        {
            first.get_or_insert_with(|| start.elapsed());
            if bound.len() >= target {
                return Ok((first.unwrap_or_default(), start.elapsed()));
            }
        }
    }
}

async fn create_deployments(
    client: &kube::Client,
    namespace: &str,
    prefix: &str,
    total: usize,
    per: usize,
) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let mut left = total;
    let mut i = 0;
    while left > 0 {
        let n = left.min(per.max(1));
        api.create(&PostParams::default(), &deployment(&format!("{prefix}-{i}"), n)?).await?;
        left -= n;
        i += 1;
    }
    Ok(())
}

/// The server's request counters (`apiserver_request_total`), by "verb resource code".
async fn request_counts(
    client: &kube::Client,
) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let text = client.request_text(http::Request::get("/metrics").body(Vec::new())?).await?;
    let mut counts = std::collections::HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else { continue };
        let Some((labels, n)) = rest.split_once("} ") else { continue };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\"")?.strip_suffix('"'))
                .unwrap_or("")
                .to_owned()
        };
        let key = format!(
            "{} {}/{} {}",
            label("verb"),
            label("resource"),
            label("subresource"),
            label("code")
        );
        counts.insert(key, n.trim().parse().unwrap_or(0));
    }
    Ok(counts)
}

/// One LIST, timed from the request to the response's last byte; returns how many items
/// it held (counted after the clock stops).
async fn timed_list(client: &kube::Client, path: &str) -> anyhow::Result<(Duration, usize)> {
    #[derive(serde::Deserialize)]
    struct Items {
        items: Vec<serde::de::IgnoredAny>,
    }
    let t = Instant::now();
    let text = client.request_text(http::Request::get(path).body(Vec::new())?).await?;
    let elapsed = t.elapsed();
    let items: Items = serde_json::from_str(&text)?;
    Ok((elapsed, items.items.len()))
}

async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

pub(crate) async fn run(args: SchedBenchArgs) -> anyhow::Result<()> {
    let server =
        Server::start_with("scheduler", &["--compaction-interval", &args.compaction_interval])?;
    let client = server.client().await?;
    println!("idle server RSS: {:.1} MiB", server.rss_mib());
    let sim = Sim(Command::new(std::env::current_exe()?)
        .args(["sim", "nodes", "--kubeconfig"])
        .arg(&server.kubeconfig)
        .args(["--count", &args.nodes.to_string(), "--parallel", "128"])
        .env("KRUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?);
    let nodes: Api<Node> = Api::all(client.clone());
    let registering = Instant::now();
    loop {
        let list = nodes.list_metadata(&ListParams::default()).await?;
        if list.items.len() >= args.nodes {
            break;
        }
        anyhow::ensure!(registering.elapsed() < Duration::from_secs(600), "nodes did not register");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{} simulated nodes registered in {:.1} s; server RSS {:.1} MiB",
        args.nodes,
        registering.elapsed().as_secs_f64(),
        server.rss_mib()
    );

    // Throughput: pods bound per second, from the first Deployment created to the last bind.
    create_namespace(&client, "throughput").await?;
    let start = Instant::now();
    let waiter = tokio::spawn(wait_bound(
        client.clone(),
        "throughput",
        args.pods,
        start,
        Duration::from_secs(1800),
    ));
    let before = request_counts(&client).await?;
    let cpu_before = (server.cpu_seconds(), super::api::cpu_seconds(sim.0.id()));
    create_deployments(&client, "throughput", "d", args.pods, args.replicas_per_deployment).await?;
    let (first, last) = waiter.await??;
    let cpu =
        (server.cpu_seconds() - cpu_before.0, super::api::cpu_seconds(sim.0.id()) - cpu_before.1);
    let after = request_counts(&client).await?;
    let mut writes: Vec<(String, u64)> = after
        .into_iter()
        .filter_map(|(k, n)| {
            let d = n.saturating_sub(before.get(&k).copied().unwrap_or(0));
            (d >= 100).then_some((k, d))
        })
        .collect();
    writes.sort_by_key(|w| std::cmp::Reverse(w.1));
    eprintln!("  requests during the throughput phase (verb resource code: count):");
    for (k, n) in writes {
        eprintln!("    {k}: {n}");
    }
    println!(
        "scheduling throughput: {} pods through {} Deployments on {} nodes: first bound after {:.2} s, last after {:.2} s: {:.0} pods/s",
        args.pods,
        args.pods.div_ceil(args.replicas_per_deployment.max(1)),
        args.nodes,
        first.as_secs_f64(),
        last.as_secs_f64(),
        args.pods as f64 / last.as_secs_f64()
    );
    println!(
        "  upstream, for comparison: kube-scheduler reached an average of 100 pods/s in 5,000-node clusters (kubernetes/kubernetes#74041, 2019, rate-limited at 100 pods/s); scheduler_perf SchedulingBasic with 500 nodes measured 792-909 pods/s for the scheduler alone (alculquicondor's runs for kubernetes/kubernetes#85861, 2020)"
    );
    println!(
        "  CPU until the last bind: server {:.1} s ({:.2} ms per pod), simulated nodes {:.1} s",
        cpu.0,
        cpu.0 * 1000.0 / args.pods as f64,
        cpu.1
    );
    println!("server RSS: {:.1} MiB", server.rss_mib());

    // Convergence: one Deployment of many replicas until all are available.
    create_namespace(&client, "converge").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "converge");
    let start = Instant::now();
    deployments.create(&PostParams::default(), &deployment("big", args.converge_replicas)?).await?;
    loop {
        let d = deployments.get("big").await?;
        let available = d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
        if usize::try_from(available).unwrap_or(0) >= args.converge_replicas {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(1800),
            "the Deployment did not converge"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "controller convergence: a {}-replica Deployment fully available in {:.2} s",
        args.converge_replicas,
        start.elapsed().as_secs_f64()
    );

    if args.hold_pods == 0 {
        drop(sim);
        return Ok(());
    }
    let held = args.pods + args.converge_replicas;
    if args.hold_pods > held {
        create_namespace(&client, "hold").await?;
        let start = Instant::now();
        let waiter = tokio::spawn(wait_bound(
            client.clone(),
            "hold",
            args.hold_pods - held,
            start,
            Duration::from_secs(3600),
        ));
        create_deployments(
            &client,
            "hold",
            "h",
            args.hold_pods - held,
            args.replicas_per_deployment,
        )
        .await?;
        let (_, last) = waiter.await??;
        println!(
            "{} more pods bound in {:.1} s ({:.0} pods/s with {} pods already placed)",
            args.hold_pods - held,
            last.as_secs_f64(),
            (args.hold_pods - held) as f64 / last.as_secs_f64(),
            held
        );
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let count = pods.list_metadata(&ListParams::default()).await?.items.len() as i64;
    println!("server RSS with {} nodes and {count} pods: {:.1} MiB", args.nodes, server.rss_mib());
    // LIST latency, against upstream's SLO (p99 ≤ 30 s cluster-wide, ≤ 5 s per namespace),
    // whose SLI is the API server's processing: timed to the response's last byte, without
    // the client's decoding (reported once beside it).
    let mut cluster = Vec::new();
    for _ in 0..5 {
        let (elapsed, items) = timed_list(&client, "/api/v1/pods").await?;
        cluster.push(elapsed);
        anyhow::ensure!(items as i64 >= count - 10, "LIST returned {items} pods");
    }
    cluster.sort();
    let t = Instant::now();
    let typed = pods.list(&ListParams::default()).await?.items.len();
    let typed_elapsed = t.elapsed();
    let mut paged = Vec::new();
    for _ in 0..20 {
        let (elapsed, items) =
            timed_list(&client, "/api/v1/namespaces/throughput/pods?limit=500").await?;
        anyhow::ensure!(items == 500, "a page of 500 returned {items} pods");
        paged.push(elapsed);
    }
    paged.sort();
    let mut namespace = Vec::new();
    for _ in 0..5 {
        let (elapsed, items) = timed_list(&client, "/api/v1/namespaces/throughput/pods").await?;
        anyhow::ensure!(items >= args.pods - 10, "LIST of one namespace returned {items} pods");
        namespace.push(elapsed);
    }
    namespace.sort();
    println!(
        "LIST all {count} pods: p50 {:.0} ms, max {:.0} ms (SLO: p99 ≤ 30 s); decoded into {typed} typed kube-rs Pods by the client: {:.0} ms",
        percentile(&cluster, 0.5),
        percentile(&cluster, 1.0),
        typed_elapsed.as_secs_f64() * 1000.0
    );
    println!(
        "LIST one namespace ({} pods): p50 {:.0} ms, max {:.0} ms (SLO: p99 ≤ 5 s); first page of 500: p50 {:.1} ms, p99 {:.1} ms",
        args.pods,
        percentile(&namespace, 0.5),
        percentile(&namespace, 1.0),
        percentile(&paged, 0.5),
        percentile(&paged, 0.99)
    );
    println!("server RSS after the LISTs: {:.1} MiB", server.rss_mib());
    // The store keeps every version since the last compaction; the cluster's steady state is
    // after one (upstream's API server compacts etcd every 5 minutes by default too).
    let interval =
        crate::flags::parse_duration(&args.compaction_interval).map_err(anyhow::Error::msg)?;
    tokio::time::sleep(interval + Duration::from_secs(30)).await;
    println!(
        "server RSS holding {count} pods after a compaction ({} interval): {:.1} MiB",
        args.compaction_interval,
        server.rss_mib()
    );
    drop(sim);
    Ok(())
}
