//! `krust bench volumes`: what the local-path provisioner costs a pod's start, and whether it
//! leaks. (1) Pods with a new 1 Gi `WaitForFirstConsumer` claim beside pods with an
//! `emptyDir`, alternated in one run, create → Ready through the scheduler (which waits for
//! the claim to be bound before binding the pod); (2) many claims provisioned and mounted on
//! one node by pods holding ten each, then deleted, and the node checked for directories,
//! images, mounts and loop devices left behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use super::pods::{Cluster, IMAGE, delete_all, ready_watch, summary, wait_node_ready, wait_ready};

/// Flags of `krust bench volumes`.
#[derive(Debug, Args)]
pub(crate) struct VolumeBenchArgs {
    /// Pods of each kind (claim, emptyDir) started one after another, alternated.
    #[arg(long, default_value_t = 30)]
    pods: usize,
    /// Claims provisioned, mounted and deleted on the node.
    #[arg(long, default_value_t = 1000)]
    claims: usize,
    /// Claims per pod in the churn.
    #[arg(long, default_value_t = 10)]
    claims_per_pod: usize,
}

fn claim(name: &str, size: &str) -> PersistentVolumeClaim {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"bench": "volumes"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                 "resources": {"requests": {"storage": size}}},
    }))
    .unwrap_or_default()
}

fn pod(name: &str, volumes: serde_json::Value) -> Pod {
    let mounts: Vec<serde_json::Value> = volumes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(|n| n.as_str()))
        .map(|n| serde_json::json!({"name": n, "mountPath": format!("/v/{n}")}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "c", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 3600 & wait; done"],
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        },
    }))
    .unwrap_or_default()
}

async fn delete_claims(client: &kube::Client) -> anyhow::Result<()> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    claims
        .delete_collection(&DeleteParams::default(), &ListParams::default().labels("bench=volumes"))
        .await?;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left = claims.list(&ListParams::default()).await?.items.len()
            + volumes.list(&ListParams::default()).await?.items.len();
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{left} claims and volumes were not removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the node still holds of local volumes: (volume dirs, images, mounts, loop devices).
fn leftovers(storage: &std::path::Path) -> (usize, usize, usize, usize) {
    let count = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("pvc-"))
                    .count()
            })
            .unwrap_or(0)
    };
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| std::path::Path::new(p).starts_with(storage))
        .count();
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains(&*storage.to_string_lossy()))
                .count()
        })
        .unwrap_or(0);
    (count(storage), count(&storage.join(".images")), mounts, loops)
}

pub(crate) async fn run(args: VolumeBenchArgs) -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let client =
        crate::agent::client_from_kubeconfig(&std::fs::read_to_string(&cluster.kubeconfig)?)
            .await?;
    wait_node_ready(&client).await?;
    let storage = cluster.dir.join("agent").join("storage");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let watch = tokio::spawn(ready_watch(pods.clone(), seen.clone()));
    // Warm-up: the first sandbox and the first volume on the node, not counted.
    claims.create(&PostParams::default(), &claim("warmup", "1Gi")).await?;
    let warm =
        serde_json::json!([{"name": "data", "persistentVolumeClaim": {"claimName": "warmup"}}]);
    pods.create(&PostParams::default(), &pod("warmup", warm)).await?;
    wait_ready(&seen, &["warmup".to_owned()], Duration::from_secs(120)).await?;

    // (1) Start-up: claim pods and emptyDir pods alternated.
    let (mut with_claim, mut with_empty_dir) = (Vec::new(), Vec::new());
    for i in 0..args.pods {
        for kind in ["claim", "empty"] {
            let name = format!("{kind}-{i}");
            let started = Instant::now();
            let volumes = if kind == "claim" {
                claims.create(&PostParams::default(), &claim(&name, "1Gi")).await?;
                serde_json::json!([{"name": "data", "persistentVolumeClaim": {"claimName": name}}])
            } else {
                serde_json::json!([{"name": "data", "emptyDir": {}}])
            };
            pods.create(&PostParams::default(), &pod(&name, volumes)).await?;
            wait_ready(&seen, std::slice::from_ref(&name), Duration::from_secs(120)).await?;
            let at =
                seen.lock().ok().and_then(|s| s.get(&name).copied()).unwrap_or_else(Instant::now);
            let ms = at.duration_since(started).as_secs_f64() * 1000.0;
            if kind == "claim" { with_claim.push(ms) } else { with_empty_dir.push(ms) }
        }
    }
    delete_all(&pods).await?;
    delete_claims(&client).await?;

    // (2) Churn: claims provisioned and mounted by pods holding several each, then deleted.
    let churn_started = Instant::now();
    let per_pod = args.claims_per_pod.max(1);
    let pod_count = args.claims.div_ceil(per_pod);
    // Waves the node's pod limit allows.
    let wave = 50usize;
    let mut made = 0usize;
    for first in (0..pod_count).step_by(wave) {
        let mut names = Vec::new();
        for p in first..(first + wave).min(pod_count) {
            let mut volumes = Vec::new();
            for v in 0..per_pod {
                if made >= args.claims {
                    break;
                }
                let name = format!("churn-{p}-{v}");
                claims.create(&PostParams::default(), &claim(&name, "64Mi")).await?;
                volumes.push(serde_json::json!({"name": format!("v{v}"), "persistentVolumeClaim": {"claimName": name}}));
                made += 1;
            }
            let name = format!("churn-{p}");
            pods.create(&PostParams::default(), &pod(&name, serde_json::Value::Array(volumes)))
                .await?;
            names.push(name);
        }
        wait_ready(&seen, &names, Duration::from_secs(600)).await?;
        delete_all(&pods).await?;
        delete_claims(&client).await?;
    }
    let churn = churn_started.elapsed();
    // The node's keeper wipes volumes as their objects go: give it a moment to finish.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut left = leftovers(&storage);
    while left != (0, 0, 0, 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = leftovers(&storage);
    }
    watch.abort();

    println!("{:<40} {:>8} {:>10} {:>10} {:>10}", "create → Ready (ms)", "n", "p50", "p99", "max");
    let (claim50, claim99) = summary("pod with a new 1 Gi local-path claim", with_claim);
    let (empty50, empty99) = summary("pod with an emptyDir", with_empty_dir);
    println!();
    println!(
        "claim / emptyDir: p50 {:.2}×, p99 {:.2}× (target ≤ 1.5×)",
        claim50 / empty50,
        claim99 / empty99
    );
    println!(
        "{made} claims provisioned, mounted ({per_pod} per pod) and deleted in {:.1} s ({:.0} claims/s)",
        churn.as_secs_f64(),
        made as f64 / churn.as_secs_f64()
    );
    println!(
        "left on the node: {} volume directories, {} images, {} mounts, {} loop devices (target: none)",
        left.0, left.1, left.2, left.3
    );
    anyhow::ensure!(left == (0, 0, 0, 0), "local volumes leaked: {left:?}");
    Ok(())
}
