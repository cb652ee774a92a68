//! `krust bench metrics`: the built-in metrics API at scale. A real `krust server` child
//! scrapes simulated nodes (a `krust sim nodes --stats` child: each node a TLS endpoint on
//! 127.0.0.1 with a made-up `/stats/summary` of its pods), then the real `kubectl top`
//! reads it. Reported: the samples' memory (the server's own accounting, and its RSS), a
//! whole scrape's duration, and the time of `kubectl top pods -A` and `kubectl top nodes`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, PostParams};

use super::api::{Server, waited_children_cpu_seconds};
use super::workloads::{simulated_cluster, template, until};

/// Flags of `krust bench metrics`.
#[derive(Debug, Args)]
pub(crate) struct MetricsBenchArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods per node.
    #[arg(long, default_value_t = 30)]
    pods_per_node: usize,
    /// The server's `--metrics-resolution`.
    #[arg(long, default_value = "15s")]
    resolution: String,
    /// The kubectl to time (default: `.tools/bin/kubectl`, else the one on PATH).
    #[arg(long)]
    kubectl: Option<std::path::PathBuf>,
}

/// A gauge of the server's `/metrics`.
async fn gauge(client: &kube::Client, name: &str) -> anyhow::Result<f64> {
    let text = client.request_text(http::Request::get("/metrics").body(Vec::new())?).await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0))
}

/// Runs kubectl `args` three times: the median run's wall time and kubectl's own CPU time
/// in it (seconds, user and system), and the last output's line count.
fn time_kubectl(
    kubectl: &std::path::Path,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<(Duration, f64, usize)> {
    let mut times = Vec::new();
    let mut lines = 0;
    for _ in 0..3 {
        let cpu_before = waited_children_cpu_seconds();
        let started = Instant::now();
        let out = Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stderr(Stdio::piped())
            .output()?;
        times.push((started.elapsed(), waited_children_cpu_seconds() - cpu_before));
        anyhow::ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines = out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    }
    times.sort_by_key(|(wall, _)| *wall);
    let (wall, cpu) = times[1];
    Ok((wall, cpu, lines))
}

/// `kubectl top pods -A` once more with its output discarded and its own request log on
/// (`-v=6`): the wall time, the milliseconds kubectl saw the metrics GET take, and the CPU
/// time kubectl itself used (seconds). What is left beside the GET is kubectl's own
/// decoding, sorting and printing, which no server can shorten.
fn kubectl_share(
    kubectl: &std::path::Path,
    kubeconfig: &std::path::Path,
) -> anyhow::Result<(Duration, Option<u64>, f64)> {
    let cpu_before = waited_children_cpu_seconds();
    let started = Instant::now();
    let out = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["top", "pods", "-A", "--no-headers", "-v=6"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let took = started.elapsed();
    let cpu = waited_children_cpu_seconds() - cpu_before;
    anyhow::ensure!(out.status.success(), "kubectl top pods -A -v=6 failed");
    let log = String::from_utf8_lossy(&out.stderr);
    let server_ms = log
        .lines()
        .filter(|l| l.contains("/apis/metrics.k8s.io/v1beta1/pods"))
        .find_map(|l| l.split("milliseconds=").nth(1)?.trim().parse().ok());
    Ok((took, server_ms, cpu))
}

pub(crate) async fn run(args: MetricsBenchArgs) -> anyhow::Result<()> {
    let kubectl = args.kubectl.clone().unwrap_or_else(|| {
        let pinned = std::path::PathBuf::from(".tools/bin/kubectl");
        if pinned.exists() { pinned } else { "kubectl".into() }
    });
    let resolution = format!("--metrics-resolution={}", args.resolution);
    let server = Server::start_with("metrics", &[&resolution])?;
    let client = server.client().await?;
    let (_sim, registered) = simulated_cluster(&server, &client, args.nodes, &["--stats"]).await?;
    println!(
        "{} simulated nodes with stats endpoints registered in {:.1} s",
        args.nodes,
        registered.as_secs_f64()
    );
    let total = args.nodes * args.pods_per_node;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "bench");
    let per_deployment = args.nodes.max(1);
    let count = total.div_ceil(per_deployment);
    for d in 0..count {
        let replicas = per_deployment.min(total - d * per_deployment);
        let name = format!("app-{d}");
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": template(&name, serde_json::json!({}))}
        }))?;
        deployments.create(&PostParams::default(), &deployment).await?;
    }
    let took = until(Duration::from_secs(3600), "the pods", || {
        let deployments = deployments.clone();
        async move {
            let list = deployments.list(&ListParams::default()).await?;
            let available: i32 = list
                .items
                .iter()
                .map(|d| d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0))
                .sum();
            Ok(usize::try_from(available).unwrap_or(0) >= total)
        }
    })
    .await?;
    println!("{total} pods running in {:.1} s", took.as_secs_f64());
    let rss_before = server.rss_mib();
    // Every pod is served once it has two readings.
    let served = until(Duration::from_secs(600), "every pod's metrics", || {
        let client = client.clone();
        async move {
            let list: serde_json::Value = client
                .request(http::Request::get("/apis/metrics.k8s.io/v1beta1/pods").body(Vec::new())?)
                .await?;
            Ok(list["items"].as_array().map_or(0, Vec::len) >= total)
        }
    })
    .await?;
    println!("every pod in the metrics API {:.1} s later", served.as_secs_f64());
    // The server's part: the whole answer read as text (not decoded), best of three.
    let mut raw = Duration::MAX;
    let mut size = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let text = client
            .request_text(http::Request::get("/apis/metrics.k8s.io/v1beta1/pods").body(Vec::new())?)
            .await?;
        raw = raw.min(started.elapsed());
        size = text.len();
    }
    let items = total;
    // The same list as kubectl asks for it, in protobuf: the server's part of `kubectl top`.
    let mut proto = Duration::MAX;
    let mut proto_size = 0;
    for _ in 0..3 {
        let request = http::Request::get("/apis/metrics.k8s.io/v1beta1/pods")
            .header("Accept", "application/vnd.kubernetes.protobuf, application/json")
            .body(kube::client::Body::empty())?;
        let started = Instant::now();
        let response = client.send(request).await?;
        let body = http_body_util::BodyExt::collect(response.into_body()).await?.to_bytes();
        proto = proto.min(started.elapsed());
        proto_size = body.len();
    }
    let bytes = gauge(&client, "krust_resource_metrics_bytes").await?;
    let pods = gauge(&client, "krust_resource_metrics_pods").await?;
    let scrape = gauge(&client, "krust_resource_metrics_scrape_seconds").await?;
    let (top_pods, top_pods_cpu, rows) =
        time_kubectl(&kubectl, &server.kubeconfig, &["top", "pods", "-A", "--no-headers"])?;
    let (discarded, server_ms, discarded_cpu) = kubectl_share(&kubectl, &server.kubeconfig)?;
    let (top_nodes, _, node_rows) =
        time_kubectl(&kubectl, &server.kubeconfig, &["top", "nodes", "--no-headers"])?;
    let (top_ns, _, ns_rows) = time_kubectl(
        &kubectl,
        &server.kubeconfig,
        &["top", "pods", "-n", "bench", "-l", "app=app-0", "--no-headers"],
    )?;
    println!(
        "samples: {pods:.0} pods on {} nodes, {:.1} MiB (server accounting, target ≤ 100 MB); server RSS {rss_before:.0} MiB before the pods' metrics, {:.0} MiB after",
        args.nodes,
        bytes / 1_048_576.0,
        server.rss_mib()
    );
    println!("a scrape of every node: {scrape:.2} s (resolution {})", args.resolution);
    println!(
        "GET /apis/metrics.k8s.io/v1beta1/pods: {items} items, {:.1} MiB of JSON, read in {:.3} s (best of 3)",
        size as f64 / 1_048_576.0,
        raw.as_secs_f64()
    );
    println!(
        "the same in protobuf: {:.1} MiB, read in {:.3} s (best of 3)",
        proto_size as f64 / 1_048_576.0,
        proto.as_secs_f64()
    );
    println!(
        "kubectl top pods -A: {rows} rows in {:.3} s (median of 3; target ≤ 1 s); kubectl's own CPU time in that run: {top_pods_cpu:.2} s",
        top_pods.as_secs_f64()
    );
    match server_ms {
        Some(ms) => println!(
            "kubectl top pods -A, output discarded: {:.3} s, of which its GET of the metrics took {ms} ms (kubectl -v=6): the rest is kubectl's own decoding and printing; kubectl's own CPU time: {discarded_cpu:.2} s",
            discarded.as_secs_f64()
        ),
        None => println!(
            "kubectl top pods -A, output discarded: {:.3} s (no request timing in its -v=6 log); kubectl's own CPU time: {discarded_cpu:.2} s",
            discarded.as_secs_f64()
        ),
    }
    println!("kubectl top nodes: {node_rows} rows in {:.3} s", top_nodes.as_secs_f64());
    println!(
        "kubectl top pods -n bench -l app=app-0: {ns_rows} rows in {:.3} s",
        top_ns.as_secs_f64()
    );
    // The server first, so it does not scrape nodes that are already gone.
    drop(client);
    drop(server);
    Ok(())
}
