//! `krust bench workloads`: the workload controllers at scale on simulated nodes (a
//! `krust sim nodes` child) against a real `krust server` child with its in-process
//! scheduler and controllers: a DaemonSet created and rolled across every node beside a
//! Deployment of as many replicas (the same pods-per-second path, measured in the same
//! run), Jobs of one pod each run to completion (the simulated kubelet finishes pods
//! labelled `sim.krust.io/exit-code`), one Job of many pods, and CronJobs all due in the
//! same minute.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

use super::api::Server;

/// Flags of `krust bench workloads`.
#[derive(Debug, Args)]
pub(crate) struct WorkloadsBenchArgs {
    /// Simulated nodes (the DaemonSet's pods, and where Jobs run).
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Jobs of one pod each.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// CronJobs due in the same minute.
    #[arg(long, default_value_t = 1000)]
    cron_jobs: usize,
    /// Completions of the one large Job (0: no such phase).
    #[arg(long, default_value_t = 5000)]
    job_completions: i32,
    /// Its parallelism.
    #[arg(long, default_value_t = 500)]
    job_parallelism: i32,
    /// The DaemonSet's rolling update budget.
    #[arg(long, default_value = "10%")]
    max_unavailable: String,
}

pub(super) struct Sim(pub(super) Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn template(app: &str, extra_labels: serde_json::Value) -> serde_json::Value {
    let mut labels = serde_json::json!({"app": app});
    if let (Some(l), Some(extra)) = (labels.as_object_mut(), extra_labels.as_object()) {
        l.extend(extra.clone());
    }
    serde_json::json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "c", "image": "registry.local/agent:1.0",
                                 "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}]}
    })
}

/// Polls `done` every 200 ms until it holds or `timeout` passes; the time it took.
pub(super) async fn until<F, Fut>(
    timeout: Duration,
    what: &str,
    mut done: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    loop {
        if done().await? {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(start.elapsed() < timeout, "{what}: not done within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts `count` simulated nodes (`krust sim nodes` with `extra` flags) against `server`,
/// waits until every one is registered and makes the `bench` namespace. The nodes live as
/// long as the returned guard; the time their registration took comes with it.
pub(super) async fn simulated_cluster(
    server: &Server,
    client: &kube::Client,
    count: usize,
    extra: &[&str],
) -> anyhow::Result<(Sim, Duration)> {
    let sim = Sim(Command::new(std::env::current_exe()?)
        .args(["sim", "nodes", "--kubeconfig"])
        .arg(&server.kubeconfig)
        .args(["--count", &count.to_string(), "--parallel", "128"])
        .args(extra)
        // Its client's errors once the server is gone at the end are not news.
        .env("KRUST_LOG", "warn,kube_client=off")
        .stdout(Stdio::null())
        .spawn()?);
    let nodes: Api<Node> = Api::all(client.clone());
    let registered = until(Duration::from_secs(600), "node registration", || {
        let nodes = nodes.clone();
        async move { Ok(nodes.list_metadata(&ListParams::default()).await?.items.len() >= count) }
    })
    .await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "bench"}}))?,
        )
        .await?;
    Ok((sim, registered))
}

pub(crate) async fn run(args: WorkloadsBenchArgs) -> anyhow::Result<()> {
    let server = Server::start_with("workloads", &[])?;
    let client = server.client().await?;
    let (_sim, registered) = simulated_cluster(&server, &client, args.nodes, &[]).await?;
    println!("{} simulated nodes registered in {:.1} s", args.nodes, registered.as_secs_f64());
    let n = args.nodes as i32;

    // A Deployment of one replica per node: the reference rate on the same path. It runs
    // before and after the DaemonSet, and the DaemonSet is compared with their mean: the
    // store and the event history grow during the run, so whichever comes later pays more.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "bench");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let budget = args.max_unavailable.as_str();
    let (before, _) = deployment_phase(&deployments, &pods, n, "reference", budget, false).await?;
    // The DaemonSet: created on every node, then rolled.
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), "bench");
    let ds: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("agent", serde_json::json!({})),
                 "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": args.max_unavailable}}}
    }))?;
    daemon_sets.create(&PostParams::default(), &ds).await?;
    let ready = |updated: bool| {
        let daemon_sets = daemon_sets.clone();
        move || {
            let daemon_sets = daemon_sets.clone();
            async move {
                let ds = daemon_sets.get("agent").await?;
                let s = ds.status.unwrap_or_default();
                let fresh = ds.metadata.generation == s.observed_generation;
                Ok(fresh
                    && s.desired_number_scheduled == n
                    && s.number_available.unwrap_or(0) == n
                    && (!updated || s.updated_number_scheduled.unwrap_or(0) == n))
            }
        }
    };
    let took = until(Duration::from_secs(1800), "the DaemonSet", ready(false)).await?;
    let created_rate = f64::from(n) / took.as_secs_f64();
    println!(
        "DaemonSet on {n} nodes available in {:.2} s: {created_rate:.0} pods/s",
        took.as_secs_f64(),
    );
    let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"bench/rolled": "1"}}}}});
    daemon_sets.patch("agent", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let took = until(Duration::from_secs(3600), "the DaemonSet's roll", ready(true)).await?;
    let rolled_rate = f64::from(n) / took.as_secs_f64();
    println!(
        "DaemonSet rolled across {n} nodes (maxUnavailable {budget}, maxSurge 0) in {:.2} s: {rolled_rate:.0} pods replaced/s",
        took.as_secs_f64(),
    );
    daemon_sets.delete("agent", &Default::default()).await?;
    drain(&pods, "the DaemonSet").await?;
    let (after, deployment_rolled) =
        deployment_phase(&deployments, &pods, n, "again", budget, true).await?;
    let deployment_rate = f64::midpoint(before, after);
    println!(
        "DaemonSet creation: {:.2}× the Deployment's rate (their mean {deployment_rate:.0} pods/s, before and after it)",
        created_rate / deployment_rate
    );
    if let Some(rolled) = deployment_rolled {
        println!(
            "DaemonSet roll: {:.2}× the Deployment's roll with the same budget ({rolled:.0} pods replaced/s)",
            rolled_rate / rolled
        );
    }

    // Jobs of one pod each, run to completion. Completions are counted from a watch: a list
    // of every Job five times a second would be most of what the server does.
    let jobs: Api<Job> = Api::namespaced(client.clone(), "bench");
    let total = args.jobs;
    let completions = tokio::spawn(count_complete(jobs.clone(), total));
    let start = Instant::now();
    let job_template = template("job", serde_json::json!({(agent::sim::EXIT_CODE_LABEL): "0"}));
    let mut creating = futures::stream::iter(0..args.jobs)
        .map(|i| {
            let jobs = jobs.clone();
            let mut t = job_template.clone();
            t["spec"]["restartPolicy"] = serde_json::json!("Never");
            async move {
                let job: Job = serde_json::from_value(serde_json::json!({"metadata": {"name": format!("job-{i}")}, "spec": {"template": t}}))?;
                jobs.create(&PostParams::default(), &job).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32);
    while let Some(r) = creating.next().await {
        r?;
    }
    let created = start.elapsed();
    tokio::time::timeout(Duration::from_secs(3600), completions)
        .await
        .map_err(|_| anyhow::anyhow!("the Jobs: not all Complete within an hour"))???;
    let took = start.elapsed();
    println!(
        "{total} Jobs of one pod created in {:.2} s and all Complete after {:.2} s: {:.0} jobs/s",
        created.as_secs_f64(),
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    // Named: a Job deleted bare orphans its pods, as upstream's does.
    jobs.delete_collection(&DeleteParams::background(), &ListParams::default()).await?;
    drain(&pods, "the Jobs").await?;

    // One Job of many pods, `parallelism` at a time: each sync sees a batch finish, counts
    // it, releases its finalizers and makes the next batch.
    if args.job_completions > 0 {
        let (completions, parallelism) = (args.job_completions, args.job_parallelism);
        let mut t = job_template.clone();
        t["spec"]["restartPolicy"] = serde_json::json!("Never");
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "large"},
            "spec": {"completions": completions, "parallelism": parallelism, "template": t}
        }))?;
        jobs.create(&PostParams::default(), &job).await?;
        let took = until(Duration::from_secs(1800), "the large Job", || {
            let jobs = jobs.clone();
            async move { Ok(complete(&jobs.get("large").await?)) }
        })
        .await?;
        println!(
            "a Job of {completions} completions, parallelism {parallelism}: Complete after {:.2} s: {:.0} pods/s",
            took.as_secs_f64(),
            f64::from(completions) / took.as_secs_f64()
        );
        jobs.delete("large", &DeleteParams::background()).await?;
        drain(&pods, "the large Job").await?;
    }

    // CronJobs due in the same minute: created just after a minute starts, they first run at
    // the next; measured from that minute until every one has its Job.
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), "bench");
    let now = jiff::Timestamp::now();
    let into_minute = now.as_second().rem_euclid(60);
    if into_minute > 40 {
        tokio::time::sleep(Duration::from_secs(u64::try_from(62 - into_minute).unwrap_or(0))).await;
    }
    let mut creating = futures::stream::iter(0..args.cron_jobs)
        .map(|i| {
            let cron_jobs = cron_jobs.clone();
            let mut t = job_template.clone();
            t["spec"]["restartPolicy"] = serde_json::json!("Never");
            async move {
                let cj: CronJob = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("cron-{i}")},
                    "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": t}}}
                }))?;
                cron_jobs.create(&PostParams::default(), &cj).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32);
    while let Some(r) = creating.next().await {
        r?;
    }
    let minute = (jiff::Timestamp::now().as_second() / 60 + 1) * 60;
    let due = jiff::Timestamp::from_second(minute)?;
    let wait = due - jiff::Timestamp::now();
    tokio::time::sleep(Duration::try_from(wait).unwrap_or(Duration::ZERO)).await;
    let expected = args.cron_jobs;
    let took = until(Duration::from_secs(120), "the CronJobs' Jobs", || {
        let jobs = jobs.clone();
        async move {
            let list = jobs.list_metadata(&ListParams::default()).await?;
            let started = list
                .items
                .iter()
                .filter(|j| {
                    j.metadata.name.as_deref().is_some_and(|n| {
                        n.starts_with("cron-") && n.ends_with(&format!("-{}", minute / 60))
                    })
                })
                .count();
            Ok(started >= expected)
        }
    })
    .await?;
    println!(
        "{expected} CronJobs due at the same minute: all their Jobs created {:.2} s after it",
        took.as_secs_f64()
    );
    println!("server RSS: {:.1} MiB", server.rss_mib());
    Ok(())
}

/// Creates a Deployment of `n` replicas named `name` (rolling updates within
/// `max_unavailable`, no surge: the DaemonSet's budget), waits until all are available and,
/// when `roll`, rolls it to a new template and waits for that; then deletes it and waits for
/// its pods to go. The rates (pods/s) at which it became available and was rolled.
async fn deployment_phase(
    deployments: &Api<Deployment>,
    pods: &Api<Pod>,
    n: i32,
    name: &str,
    max_unavailable: &str,
    roll: bool,
) -> anyhow::Result<(f64, Option<f64>)> {
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"replicas": n, "selector": {"matchLabels": {"app": name}}, "template": template(name, serde_json::json!({})),
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max_unavailable, "maxSurge": 0}}}
    }))?;
    deployments.create(&PostParams::default(), &d).await?;
    let done = |updated: bool| {
        move || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get(name).await?;
                let fresh =
                    d.metadata.generation == d.status.as_ref().and_then(|s| s.observed_generation);
                let s = d.status.unwrap_or_default();
                Ok(fresh
                    && s.available_replicas.unwrap_or(0) >= n
                    && (!updated
                        || (s.updated_replicas.unwrap_or(0) == n && s.replicas.unwrap_or(0) == n)))
            }
        }
    };
    let took = until(Duration::from_secs(1800), "the Deployment", done(false)).await?;
    let rate = f64::from(n) / took.as_secs_f64();
    println!(
        "Deployment \"{name}\" of {n} replicas available in {:.2} s: {rate:.0} pods/s",
        took.as_secs_f64()
    );
    let mut rolled = None;
    if roll {
        let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"bench/rolled": "1"}}}}});
        deployments.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let took = until(Duration::from_secs(3600), "the Deployment's roll", done(true)).await?;
        let rate = f64::from(n) / took.as_secs_f64();
        println!(
            "Deployment \"{name}\" rolled (maxUnavailable {max_unavailable}, maxSurge 0) in {:.2} s: {rate:.0} pods replaced/s",
            took.as_secs_f64()
        );
        rolled = Some(rate);
    }
    deployments.delete(name, &Default::default()).await?;
    // The next phase starts on a quiet cluster: these pods, deleted in the background by
    // the garbage collector, would otherwise be torn down during its run.
    drain(pods, &format!("the Deployment \"{name}\"")).await?;
    Ok((rate, rolled))
}

/// Waits until the namespace's pods are gone (those of `what`, just deleted), so that the
/// next measurement does not pay for their teardown.
async fn drain(pods: &Api<Pod>, what: &str) -> anyhow::Result<()> {
    let took =
        until(Duration::from_secs(600), &format!("the pods of {what} to go"), || {
            let pods = pods.clone();
            async move {
                Ok(pods.list_metadata(&ListParams::default().limit(1)).await?.items.is_empty())
            }
        })
        .await?;
    println!("(the pods of {what} gone {:.1} s after its deletion)", took.as_secs_f64());
    Ok(())
}

/// Watches the Jobs until `total` of them are Complete.
async fn count_complete(jobs: Api<Job>, total: usize) -> anyhow::Result<()> {
    use kube::runtime::watcher;
    let mut done = std::collections::HashSet::new();
    let mut stream = std::pin::pin!(watcher::watcher(jobs, watcher::Config::default()));
    while done.len() < total {
        match stream.next().await {
            Some(Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job))) => {
                if complete(&job) {
                    done.insert(job.metadata.name.unwrap_or_default());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::debug!(error = %e, "watching the Jobs"),
            None => anyhow::bail!("the Jobs' watch ended"),
        }
    }
    Ok(())
}

/// Whether a Job has its Complete condition.
fn complete(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| {
        s.conditions.iter().flatten().any(|c| c.type_ == "Complete" && c.status == "True")
    })
}
