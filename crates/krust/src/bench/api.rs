//! `krust bench api`: a real `krust server` (this binary, as a child process on loopback) driven
//! by concurrent kube-rs clients. No upstream API server can be installed on these machines, so
//! the figures stand against the issue's targets rather than a peer measured in the same run.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

use super::percentile;

/// Flags of `krust bench api`.
#[derive(Debug, Args)]
pub(crate) struct ApiBenchArgs {
    /// Target rate of the open-loop create phase, per second.
    #[arg(long, default_value_t = 500)]
    create_rate: u32,
    /// Length of the create phase, in seconds.
    #[arg(long, default_value_t = 10)]
    create_seconds: u32,
    /// Pods to create before timing LIST.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// ConfigMaps (1 KiB each) to store before reading the server's memory.
    #[arg(long, default_value_t = 100_000)]
    configmaps: usize,
    /// Concurrent clients for the bulk phases.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Roles and RoleBindings present (each) while the security phase times creates by a
    /// user RBAC allows, beside a server with `authorization-mode=AlwaysAllow`; 0 skips it.
    #[arg(long, default_value_t = 1000)]
    security_roles: usize,
}

/// A `krust server` child process on loopback with its own data dir, removed on drop.
pub(crate) struct Server {
    child: Child,
    dir: PathBuf,
    pub(crate) kubeconfig: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Server {
    fn start() -> anyhow::Result<Server> {
        Server::start_with("api", &["--disable-scheduler", "--disable-controller-manager"])
    }

    /// Starts a server without an agent, with `extra` flags.
    pub(crate) fn start_with(name: &str, extra: &[&str]) -> anyhow::Result<Server> {
        let dir = std::env::temp_dir().join(format!("krust-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let kubeconfig = dir.join("kubeconfig.yaml");
        let child = Command::new(std::env::current_exe()?)
            .args(["server", "--bind-address=127.0.0.1", "--disable-agent"])
            .args(extra)
            .arg(format!("--https-listen-port={port}"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            // `KRUST_BENCH_SERVER_LOG` traces the server under measurement (its stderr),
            // e.g. `warn,controller_runtime::queue=debug` for every sync's duration.
            .env(
                "KRUST_LOG",
                std::env::var("KRUST_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()?;
        let server = Server { child, dir, kubeconfig };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(server.kubeconfig.exists()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        {
            anyhow::ensure!(Instant::now() < deadline, "krust server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    pub(crate) fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// CPU time (user and system) the server has used, in seconds.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    pub(crate) async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }
}

fn pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}, "annotations": {"bench": "krust"}},
        "spec": {
            "nodeName": "node-1",
            "containers": [{
                "name": "web", "image": "registry.local/web:1.0",
                "ports": [{"containerPort": 8080}],
                "env": [{"name": "MODE", "value": "bench"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
            }]
        }
    }))?)
}

fn report(label: &str, latencies: &mut [Duration], elapsed: Duration) {
    latencies.sort();
    println!(
        "{label:<28} n={:<7} rate={:>8.0}/s  p50={:>7.2} ms  p99={:>7.2} ms",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(latencies, 0.50),
        percentile(latencies, 0.99)
    );
}

/// Runs `total` calls of `op` with `concurrency` workers, returning per-call latencies.
async fn closed_loop<F, Fut>(
    total: usize,
    concurrency: usize,
    op: F,
) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let op = op.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                op(i).await?;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, started.elapsed()))
}

pub(crate) async fn run(args: ApiBenchArgs) -> anyhow::Result<()> {
    if args.security_roles > 0 {
        security(args.security_roles, args.concurrency).await?;
    }
    let server = Server::start()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("idle server RSS: {:.1} MiB", server.rss_mib());
    let client = server.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // Open loop: one create every 1/rate seconds, whatever the server's latency.
    let total = (args.create_rate * args.create_seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.create_rate));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        ticker.tick().await;
        let pods = pods.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            pods.create(&PostParams::default(), &pod(&format!("open-{i}"))?).await?;
            Ok::<_, anyhow::Error>(t.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.push(t.await??);
    }
    report(
        &format!("create pod @{}/s (open loop)", args.create_rate),
        &mut latencies,
        started.elapsed(),
    );

    let c = args.concurrency;
    let api = pods.clone();
    let (mut lat, took) = closed_loop(2000, c, move |i| {
        let api = api.clone();
        async move {
            api.get(&format!("open-{}", i % total.max(1))).await?;
            Ok(())
        }
    })
    .await?;
    report("get pod", &mut lat, took);

    let api = configmaps.clone();
    closed_loop(c, c, move |i| {
        let api = api.clone();
        async move {
            let cm: ConfigMap = serde_json::from_value(
                serde_json::json!({"metadata": {"name": format!("upd-{i}")}, "data": {"n": "0"}}),
            )?;
            api.create(&PostParams::default(), &cm).await?;
            Ok(())
        }
    })
    .await?;
    let api = configmaps.clone();
    let (mut lat, took) = closed_loop(2000, c, move |i| {
        let api = api.clone();
        async move {
            // Each worker updates its own object; the merge patch carries no precondition.
            let patch = serde_json::json!({"data": {"n": i.to_string()}});
            api.patch(
                &format!("upd-{}", i % c),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    report("update (merge patch)", &mut lat, took);

    // Bring the pod count up to `pods`, then time full LISTs.
    let existing = total;
    let api = pods.clone();
    let extra = args.pods.saturating_sub(existing);
    let (mut lat, took) = closed_loop(extra, c, move |i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &pod(&format!("bulk-{i}"))?).await?;
            Ok(())
        }
    })
    .await?;
    report("create pod (closed loop)", &mut lat, took);
    let mut list_times = Vec::new();
    let mut count = 0;
    for _ in 0..5 {
        let t = Instant::now();
        count = pods.list(&ListParams::default()).await?.items.len();
        list_times.push(t.elapsed());
    }
    list_times.sort();
    println!(
        "LIST {count} pods (JSON, decoded by the client): median {:.1} ms, best {:.1} ms",
        percentile(&list_times, 0.5),
        percentile(&list_times, 0.0)
    );
    let raw = client.clone();
    let mut raw_times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let text = raw.request_text(http_get("/api/v1/namespaces/default/pods")?).await?;
        raw_times.push(t.elapsed());
        anyhow::ensure!(text.len() > 1000, "empty list");
    }
    raw_times.sort();
    println!(
        "LIST {count} pods (server time to full body): median {:.1} ms",
        percentile(&raw_times, 0.5)
    );

    // Watch delivery: replay every pod create from the beginning.
    let t = Instant::now();
    let mut stream = pods.watch(&WatchParams::default().timeout(60), "1").await?.boxed();
    let mut seen = 0;
    while seen < count {
        match tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .context("watch stalled")?
        {
            Some(Ok(WatchEvent::Added(_) | WatchEvent::Modified(_))) => seen += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    println!(
        "watch replay: {seen} events in {:.0} ms ({:.0} events/s)",
        t.elapsed().as_secs_f64() * 1000.0,
        seen as f64 / t.elapsed().as_secs_f64()
    );
    println!("RSS with {count} pods: {:.1} MiB", server.rss_mib());

    if args.configmaps > 0 {
        let api = configmaps.clone();
        let value = "x".repeat(1024);
        let (mut lat, took) = closed_loop(args.configmaps, c, move |i| {
            let api = api.clone();
            let value = value.clone();
            async move {
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": format!("cm-{i}")}, "data": {"payload": value}}))?;
                api.create(&PostParams::default(), &cm).await?;
                Ok(())
            }
        })
        .await?;
        report("create configmap 1 KiB", &mut lat, took);
        println!(
            "RSS with {} configmaps + {count} pods: {:.1} MiB",
            args.configmaps,
            server.rss_mib()
        );
    }
    Ok(())
}

/// A client of `server` authenticating as `user` with a certificate from its CA (a user
/// RBAC decides for, unlike the admin, whom `system:masters` lets through).
async fn client_as(server: &Server, user: &str) -> anyhow::Result<kube::Client> {
    let tls = server.dir.join("data/server/tls");
    // The SANs the server was given, so loading the PKI re-issues nothing.
    let sans: Vec<String> =
        std::fs::read_to_string(tls.join("serving.sans"))?.lines().map(str::to_owned).collect();
    let pki = pki::Pki::load_or_create(&tls, &sans)?;
    let (cert, key) = pki.issue_client(user, &[])?;
    let admin = std::fs::read_to_string(&server.kubeconfig)?;
    let url = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .context("no server URL in the kubeconfig")?;
    let text = pki::kubeconfig(&pki.ca_cert_pem, url, user, &cert, &key);
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// `roles` Roles and RoleBindings in namespace `sec` (each granting some user reads), plus
/// the one that lets `writer` create ConfigMaps there.
async fn populate_roles(server: &Server, roles: usize, c: usize) -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let client = server.client().await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "sec"}}))?,
        )
        .await?;
    let role_api: Api<Role> = Api::namespaced(client.clone(), "sec");
    let binding_api: Api<RoleBinding> = Api::namespaced(client.clone(), "sec");
    let role = |name: &str, verbs: &[&str]| -> anyhow::Result<Role> {
        Ok(serde_json::from_value(serde_json::json!({"metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": verbs}]}))?)
    };
    let binding = |name: &str, role: &str, user: &str| -> anyhow::Result<RoleBinding> {
        Ok(serde_json::from_value(serde_json::json!({"metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}))?)
    };
    let (roles_api, bindings_api) = (role_api.clone(), binding_api.clone());
    closed_loop(roles, c, move |i| {
        let (roles_api, bindings_api) = (roles_api.clone(), bindings_api.clone());
        let made = role(&format!("reader-{i}"), &["get", "list"]).and_then(|r| {
            Ok((r, binding(&format!("reader-{i}"), &format!("reader-{i}"), &format!("user-{i}"))?))
        });
        async move {
            let (r, b) = made?;
            roles_api.create(&PostParams::default(), &r).await?;
            bindings_api.create(&PostParams::default(), &b).await?;
            Ok(())
        }
    })
    .await?;
    role_api.create(&PostParams::default(), &role("writer", &["create"])?).await?;
    binding_api.create(&PostParams::default(), &binding("writer", "writer", "writer")?).await?;
    Ok(())
}

/// The security phase: creates by a user RBAC allows, with `roles` Roles and RoleBindings
/// present, on a server with RBAC and on one with AlwaysAllow, in the same run.
async fn security(roles: usize, c: usize) -> anyhow::Result<()> {
    let quiet = ["--disable-scheduler", "--disable-controller-manager", "--disable-dns"];
    let rbac = Server::start_with("api-rbac", &quiet)?;
    let allow = Server::start_with(
        "api-allow",
        &[&quiet[..], &["--kube-apiserver-arg", "authorization-mode=AlwaysAllow"]].concat(),
    )?;
    for server in [&rbac, &allow] {
        populate_roles(server, roles, c).await?;
    }
    let writers = [client_as(&rbac, "writer").await?, client_as(&allow, "writer").await?];
    // Until the binding is in the authorizer's index.
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe: Api<ConfigMap> = Api::namespaced(writers[0].clone(), "sec");
    let cm = |name: String| -> anyhow::Result<ConfigMap> {
        Ok(serde_json::from_value(
            serde_json::json!({"metadata": {"name": name}, "data": {"k": "v"}}),
        )?)
    };
    while probe.create(&PostParams::default(), &cm("probe".into())?).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the writer's binding never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Throughput with `c` clients, and latency with one (where a difference is the work a
    // request costs, not time queued behind others); rounds alternate between the servers
    // so that neither has the machine to itself.
    let mut results: [(Vec<Duration>, Duration); 2] = Default::default();
    let mut serial: [Vec<Duration>; 2] = Default::default();
    for round in 0..2 {
        for (i, writer) in writers.iter().enumerate() {
            let api: Api<ConfigMap> = Api::namespaced(writer.clone(), "sec");
            let one = api.clone();
            let (lat, _) = closed_loop(1000, 1, move |n| {
                let api = one.clone();
                let object = cm(format!("s{round}-{n}"));
                async move {
                    api.create(&PostParams::default(), &object?).await?;
                    Ok(())
                }
            })
            .await?;
            serial[i].extend(lat);
            let (lat, took) = closed_loop(3000, c, move |n| {
                let api = api.clone();
                let object = cm(format!("w{round}-{n}"));
                async move {
                    api.create(&PostParams::default(), &object?).await?;
                    Ok(())
                }
            })
            .await?;
            results[i].0.extend(lat);
            results[i].1 += took;
        }
    }
    let [(mut on, on_took), (mut off, off_took)] = results;
    on.sort();
    off.sort();
    let [mut one_on, mut one_off] = serial;
    one_on.sort();
    one_off.sort();
    let rate = |lat: &[Duration], took: Duration| lat.len() as f64 / took.as_secs_f64();
    let (rate_on, rate_off) = (rate(&on, on_took), rate(&off, off_took));
    println!(
        "create configmap as an RBAC-bound user, {roles} Roles + {roles} RoleBindings present:"
    );
    println!(
        "  RBAC + admission       {rate_on:>8.0}/s  p50={:>6.2} ms  p99={:>6.2} ms",
        percentile(&on, 0.5),
        percentile(&on, 0.99)
    );
    println!(
        "  AlwaysAllow            {rate_off:>8.0}/s  p50={:>6.2} ms  p99={:>6.2} ms",
        percentile(&off, 0.5),
        percentile(&off, 0.99)
    );
    println!("  throughput ratio {:.2}x (RBAC / AlwaysAllow, {c} clients)", rate_on / rate_off);
    println!(
        "  one client: RBAC p50={:.2} ms p99={:.2} ms; AlwaysAllow p50={:.2} ms p99={:.2} ms; added p99 {:+.2} ms",
        percentile(&one_on, 0.5),
        percentile(&one_on, 0.99),
        percentile(&one_off, 0.5),
        percentile(&one_off, 0.99),
        percentile(&one_on, 0.99) - percentile(&one_off, 0.99)
    );
    // The decision alone: RBAC's authorizer over the same objects.
    let index = apiserver::rbac::Rbac::new();
    let prefix = apiserver::rbac::STORE_PREFIX;
    for i in 0..roles {
        index.apply(&format!("{prefix}roles/sec/reader-{i}"), Some(&serde_json::json!({"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]})));
        index.apply(&format!("{prefix}rolebindings/sec/reader-{i}"), Some(&serde_json::json!({"roleRef": {"kind": "Role", "name": format!("reader-{i}")}, "subjects": [{"kind": "User", "name": format!("user-{i}")}]})));
    }
    index.apply(&format!("{prefix}roles/sec/writer"), Some(&serde_json::json!({"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]})));
    index.apply(&format!("{prefix}rolebindings/sec/writer"), Some(&serde_json::json!({"roleRef": {"kind": "Role", "name": "writer"}, "subjects": [{"kind": "User", "name": "writer"}]})));
    let writer = apiserver::auth::UserInfo {
        name: "writer".into(),
        groups: vec!["system:authenticated".into()],
    };
    let attributes = apiserver::auth::Attributes {
        verb: "create",
        group: "",
        resource: "configmaps",
        subresource: "",
        namespace: "sec",
        name: "",
        path: "",
    };
    use apiserver::auth::Authorizer;
    let mut decisions = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let t = Instant::now();
        let decision = index.authorize(&writer, &attributes);
        decisions.push(t.elapsed());
        anyhow::ensure!(decision == apiserver::auth::Decision::Allow, "RBAC refused the writer");
    }
    decisions.sort();
    println!(
        "  RBAC decision alone: p50={:.1} µs  p99={:.1} µs",
        percentile(&decisions, 0.5) * 1000.0,
        percentile(&decisions, 0.99) * 1000.0
    );
    Ok(())
}

fn http_get(path: &str) -> anyhow::Result<http::Request<Vec<u8>>> {
    Ok(http::Request::get(path).body(Vec::new())?)
}

/// CPU time (user and system) process `pid` has used, in seconds (0 if unreadable).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    // utime and stime.
    stat_seconds(&format!("/proc/{pid}/stat"), [11, 12])
}

/// CPU time (user and system) of this process's children that have ended and been waited
/// for: read before and after a `Command::output()`, the difference is that command's own.
/// (The server and simulator children are waited for only at the end.)
pub(crate) fn waited_children_cpu_seconds() -> f64 {
    // cutime and cstime.
    stat_seconds("/proc/self/stat", [13, 14])
}

/// The sum of two tick fields of a `/proc/…/stat`, in seconds.
fn stat_seconds(path: &str, fields_after_name: [usize; 2]) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The command name may hold spaces; the fields after it are space-separated, counted
    // from the closing parenthesis (utime is the 12th, as index 11).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 =
        fields_after_name.iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // /proc counts in USER_HZ, which Linux fixes at 100 for this interface.
    ticks as f64 / 100.0
}
