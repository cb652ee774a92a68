//! `krust bench`: figures measured beside the real peer in the same run.
//!
//! `krust bench store` compares durable writes, ranges and watch delivery of the embedded store
//! with the same operations against a real etcd started on loopback ports.

mod api;
mod metrics;
mod pods;
mod scheduler;
mod services;
mod volumes;
mod workloads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use futures::StreamExt;
use storage::{Op, RangeRequest, SharedStore, Txn, WatchMessage};

/// Flags of `krust bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// API server: starts `krust server` and drives it with concurrent kube-rs clients.
    Api(api::ApiBenchArgs),
    /// Pod start-up through the node agent beside `ctr run` on the same containerd, and the
    /// agent's memory and CPU (needs root, containerd, runc and the CNI plugins).
    Pods(pods::PodBenchArgs),
    /// Scheduler and controllers at scale on simulated nodes: throughput through
    /// Deployments, convergence of a large Deployment, memory and LIST latency when full.
    Scheduler(scheduler::SchedBenchArgs),
    /// Services: the service proxy's rule programming beside kube-proxy's iptables-restore,
    /// and cluster DNS queries beside the host's resolver (needs root).
    Services(services::ServicesBenchArgs),
    /// Workload controllers at scale on simulated nodes: a DaemonSet created and rolled
    /// beside a Deployment of as many replicas, Jobs run to completion, CronJobs due at once.
    Workloads(workloads::WorkloadsBenchArgs),
    /// The metrics API at scale: simulated nodes serving `/stats/summary`, the samples'
    /// memory, and `kubectl top pods -A` / `kubectl top nodes` against it.
    Metrics(metrics::MetricsBenchArgs),
    /// Local volumes: pods with a new local-path claim beside pods with an emptyDir, and
    /// claims provisioned, mounted and deleted on one node with leaks checked (needs root).
    Volumes(volumes::VolumeBenchArgs),
    /// Storage: embedded backend vs. raw etcd (Debian's etcd-server, started on loopback).
    Store {
        /// Durable writes per backend.
        #[arg(long, default_value_t = 5000)]
        writes: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 1024)]
        value_bytes: usize,
    },
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Api(args) => api::run(args).await,
        BenchCommand::Pods(args) => pods::run(args).await,
        BenchCommand::Scheduler(args) => scheduler::run(args).await,
        BenchCommand::Services(args) => services::run(args).await,
        BenchCommand::Workloads(args) => workloads::run(args).await,
        BenchCommand::Metrics(args) => metrics::run(args).await,
        BenchCommand::Volumes(args) => volumes::run(args).await,
        BenchCommand::Store { writes, concurrency, value_bytes } => {
            let dir = tempfile_dir()?;
            let embedded: SharedStore = Arc::new(storage::embedded::EmbeddedStore::open(
                storage::embedded::Config::with_dir(&dir),
            )?);
            let etcd_server = storage::testing::EtcdServer::start()?;
            let etcd: SharedStore =
                Arc::new(storage::etcd::EtcdStore::connect(&etcd_server.endpoint).await?);
            println!(
                "{:<10} {:>14} {:>12} {:>12} {:>16} {:>14}",
                "backend", "writes/s", "p50 ms", "p99 ms", "range 10k ms", "watch ev/s"
            );
            let mut results = Vec::new();
            for (name, store) in [("embedded", embedded), ("etcd", etcd)] {
                let r = measure(store, writes, concurrency, value_bytes).await?;
                println!(
                    "{name:<10} {:>14.0} {:>12.2} {:>12.2} {:>16.1} {:>14.0}",
                    r.0, r.1, r.2, r.3, r.4
                );
                results.push(r);
            }
            println!("embedded/etcd write throughput ratio: {:.2}", results[0].0 / results[1].0);
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("krust-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

/// (writes/s, p50 ms, p99 ms, range of 10k keys ms, watch events/s)
async fn measure(
    store: SharedStore,
    writes: usize,
    concurrency: usize,
    value_bytes: usize,
) -> anyhow::Result<(f64, f64, f64, f64, f64)> {
    let value = bytes::Bytes::from(vec![b'v'; value_bytes]);
    let start_rev = store.current_revision().await? + 1;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per = writes.div_ceil(concurrency);
    for w in 0..concurrency {
        let store = store.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                let txn = Txn {
                    success: vec![Op::Put {
                        key: format!("/bench/w/{w}/{i}"),
                        value: value.clone(),
                    }],
                    ..Txn::default()
                };
                store.txn(txn).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, storage::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let throughput = latencies.len() as f64 / elapsed.as_secs_f64();

    // Range: fill 10k keys with batched transactions, then read them all.
    let small = value.clone();
    for chunk in 0..100 {
        let ops = (0..100)
            .map(|i| Op::Put { key: format!("/bench/r/{chunk:03}/{i:03}"), value: small.clone() })
            .collect();
        store.txn(Txn { success: ops, ..Txn::default() }).await?;
    }
    let t = Instant::now();
    let range = store.range(RangeRequest::prefix("/bench/r/")).await?;
    let range_ms = t.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(range.kvs.len() == 10_000, "range returned {}", range.kvs.len());

    // Watch: replay every write of the first phase from its start revision.
    let t = Instant::now();
    let mut watch = store.watch("/bench/w/", start_rev).await?;
    let mut seen = 0;
    while seen < latencies.len() {
        match tokio::time::timeout(Duration::from_secs(30), watch.next()).await? {
            Some(Ok(WatchMessage::Events(e))) => seen += e.len(),
            Some(Ok(WatchMessage::Progress(_))) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("watch ended"),
        }
    }
    let watch_rate = seen as f64 / t.elapsed().as_secs_f64();
    Ok((
        throughput,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        range_ms,
        watch_rate,
    ))
}
