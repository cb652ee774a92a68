//! `krust bench services`: how fast the service proxy programs the kernel, beside the
//! equivalent kube-proxy (iptables mode) rule set loaded with `iptables-restore` on the same
//! machine; and the cluster DNS's queries per second for a Service name beside the same
//! loop against the host's resolver. Rules are loaded in a network namespace of their own,
//! so the host's are never touched (needs root, nft, iptables-restore, unshare, nsenter).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::serviceproxy::nftables;
use agent::serviceproxy::plan::{Backend, Protocol, ServicePort};
use anyhow::Context;
use clap::Args;

/// The `p` quantile of sorted milliseconds.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// This process's resident memory, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Flags of `krust bench services`.
#[derive(Debug, Args)]
pub(crate) struct ServicesBenchArgs {
    /// Services of the full sync.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Services present while single changes are timed.
    #[arg(long, default_value_t = 1_000)]
    change_services: usize,
    /// Single changes timed.
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Services the DNS index holds while queries are timed.
    #[arg(long, default_value_t = 10_000)]
    dns_services: usize,
    /// Seconds of DNS queries per target.
    #[arg(long, default_value_t = 5)]
    dns_seconds: u64,
    /// Concurrent DNS clients.
    #[arg(long, default_value_t = 16)]
    dns_clients: usize,
    /// Seconds of HTTP requests per data path target (0 skips the data path).
    #[arg(long, default_value_t = 5)]
    datapath_seconds: u64,
    /// Concurrent HTTP clients of the data path.
    #[arg(long, default_value_t = 8)]
    datapath_clients: usize,
    /// The name asked of the host's resolver (one it can answer).
    #[arg(long, default_value = "deb.debian.org")]
    host_name: String,
}

/// A network namespace held by a sleeping process; gone when dropped.
struct Netns {
    holder: Child,
}

impl Netns {
    fn new() -> anyhow::Result<Netns> {
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "100000"])
            .spawn()
            .context("unshare")?;
        let pid = holder.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
            == std::fs::read_link("/proc/self/ns/net").ok()
        {
            anyhow::ensure!(Instant::now() < deadline, "unshare did not enter a namespace");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Netns { holder })
    }

    /// Runs `program args` inside with `input` on stdin; the time it took.
    fn run(&self, program: &str, args: &[&str], input: &str) -> anyhow::Result<Duration> {
        use std::io::Write;
        let started = Instant::now();
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.holder.id()))
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("nsenter {program}"))?;
        child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("")
        );
        Ok(started.elapsed())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn address(base: u32, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(base + u32::try_from(i).unwrap_or(0))
}

/// `services` Services of one TCP port with `endpoints` endpoints each, every tenth a
/// NodePort.
fn synthetic(services: usize, endpoints: usize) -> Vec<ServicePort> {
    let service_base = u32::from(Ipv4Addr::new(10, 43, 0, 2));
    let pod_base = u32::from(Ipv4Addr::new(10, 42, 0, 2));
    (0..services)
        .map(|s| {
            let backends: Vec<Backend> = (0..endpoints)
                .map(|e| Backend { ip: address(pod_base, s * endpoints + e), port: 8080 })
                .collect();
            // The endpoints in this node's pod range (10.42.0.0/24).
            let hairpin = backends
                .iter()
                .map(|b| b.ip)
                .filter(|ip| ip.octets()[1] == 42 && ip.octets()[2] == 0)
                .collect();
            ServicePort {
                name: format!("bench/svc-{s}:http"),
                protocol: Protocol::Tcp,
                cluster_ips: vec![address(service_base, s)],
                external_ips: Vec::new(),
                port: 80,
                node_port: (s % 10 == 0).then(|| 30000 + u16::try_from(s / 10 % 2768).unwrap_or(0)),
                cluster_backends: backends.clone(),
                external_backends: backends,
                external_local: false,
                affinity_seconds: None,
                hairpin,
            }
        })
        .collect()
}

/// The kube-proxy (iptables mode) rules for the same Services, as `iptables-restore` reads
/// them: a KUBE-SERVICES jump per Service, a KUBE-SVC chain spreading with the statistic
/// match, a KUBE-SEP chain per endpoint that marks hairpin traffic and DNATs.
fn kube_proxy_rules(ports: &[ServicePort]) -> String {
    use std::fmt::Write as _;
    let mut chains = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\n-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n",
    );
    for (s, port) in ports.iter().enumerate() {
        let svc = format!("KUBE-SVC-{s:012}");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        for ip in &port.cluster_ips {
            let _ = writeln!(
                rules,
                "-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"{}\" -m tcp --dport {} -j {svc}",
                port.name, port.port
            );
        }
        if let Some(node_port) = port.node_port {
            let _ = writeln!(rules, "-A KUBE-NODEPORTS -p tcp -m tcp --dport {node_port} -j {svc}");
        }
        let n = port.cluster_backends.len();
        for (e, backend) in port.cluster_backends.iter().enumerate() {
            let sep = format!("KUBE-SEP-{s:08}{e:04}");
            let _ = writeln!(chains, ":{sep} - [0:0]");
            if e + 1 < n {
                let probability = 1.0 / (n - e) as f64;
                let _ = writeln!(
                    rules,
                    "-A {svc} -m statistic --mode random --probability {probability:.11} -j {sep}"
                );
            } else {
                let _ = writeln!(rules, "-A {svc} -j {sep}");
            }
            let _ = writeln!(rules, "-A {sep} -s {}/32 -j KUBE-MARK-MASQ", backend.ip);
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {}:{}",
                backend.ip, backend.port
            );
        }
    }
    rules.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n");
    chains + &rules
}

async fn programming(args: &ServicesBenchArgs) -> anyhow::Result<()> {
    let ns = Netns::new()?;
    let table = "krust_bench";
    let cidr = "10.42.0.0/16";
    // Full sync.
    let ports = synthetic(args.services, args.endpoints);
    let started = Instant::now();
    let script = nftables::render(table, cidr, &ports, &[]);
    let rendered = started.elapsed();
    let loaded = ns.run("nft", &["-f", "-"], &script)?;
    let iptables = kube_proxy_rules(&ports);
    // A namespace of its own: a large iptables rule set slows every later `nft` (it reads
    // the whole ruleset first), which would burden the change timings below.
    let restored = Netns::new()?.run("iptables-restore", &[], &iptables)?;
    println!(
        "full sync, {} Services × {} endpoints: krust {:.0} ms (render {:.0} ms + nft load {:.0} ms, {} KiB); kube-proxy iptables-restore {:.0} ms ({} KiB, {} lines)  ratio {:.1}×",
        args.services,
        args.endpoints,
        (rendered + loaded).as_secs_f64() * 1e3,
        rendered.as_secs_f64() * 1e3,
        loaded.as_secs_f64() * 1e3,
        script.len() / 1024,
        restored.as_secs_f64() * 1e3,
        iptables.len() / 1024,
        iptables.lines().count(),
        restored.as_secs_f64() / (rendered + loaded).as_secs_f64().max(1e-9),
    );
    // One change at a time among a smaller set.
    let mut ports = synthetic(args.change_services, args.endpoints);
    ns.run("nft", &["-f", "-"], &nftables::render(table, cidr, &ports, &[]))?;
    let mut full_times = Vec::new();
    let mut diff_times = Vec::new();
    let mut times = Vec::with_capacity(args.changes);
    for i in 0..args.changes {
        let which = i * 7919 % ports.len().max(1);
        let before = ports.clone();
        if let Some(port) = ports.get_mut(which) {
            let replaced = Backend {
                ip: Ipv4Addr::new(10, 99, (i / 250) as u8, (i % 250) as u8 + 1),
                port: 8080,
            };
            if let Some(first) = port.cluster_backends.first_mut() {
                *first = replaced.clone();
            }
            port.external_backends = port.cluster_backends.clone();
        }
        // The change as the proxy makes it: only what differs, one transaction.
        let started = Instant::now();
        let script = nftables::incremental(table, cidr, &before, &ports)
            .context("an endpoint change is incremental")?;
        diff_times.push(started.elapsed().as_secs_f64() * 1e3);
        ns.run("nft", &["-f", "-"], &script)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        // Beside it, the same state loaded whole (what an incremental proxy saves).
        if i < 5 {
            let started = Instant::now();
            ns.run("nft", &["-f", "-"], &nftables::render(table, cidr, &ports, &[]))?;
            full_times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    full_times.sort_by(f64::total_cmp);
    diff_times.sort_by(f64::total_cmp);
    times.sort_by(f64::total_cmp);
    println!(
        "one endpoint change among {} Services × {} endpoints, incremental diff + load: p50 {:.1} ms, p99 {:.1} ms (diff alone p50 {:.1} ms; whole table instead: p50 {:.0} ms; the API write and watch delivery come on top)",
        args.change_services,
        args.endpoints,
        percentile(&times, 0.50),
        percentile(&times, 0.99),
        percentile(&diff_times, 0.50),
        percentile(&full_times, 0.50),
    );
    Ok(())
}

/// A DNS A question for `name`, id `id`.
fn question(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(0));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Queries per second and latencies (ms) of `clients` loops asking `server` for `name`.
async fn query_loop(
    server: SocketAddr,
    name: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<(f64, Vec<f64>, usize)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let name = name.to_owned();
        tasks.push(tokio::spawn(async move {
            let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
            socket.connect(server).await?;
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            let mut buf = [0u8; 1500];
            let mut id = u16::try_from(c * 1000 % 60000).unwrap_or(0);
            while Instant::now() < deadline {
                id = id.wrapping_add(1);
                let started = Instant::now();
                socket.send(&question(&name, id)).await?;
                match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
                    Ok(Ok(n)) if n >= 12 && buf[..2] == id.to_be_bytes() && buf[3] & 0x0f == 0 => {
                        latencies.push(started.elapsed().as_secs_f64() * 1e3);
                    }
                    _ => failures += 1,
                }
            }
            Ok::<_, std::io::Error>((latencies, failures))
        }));
    }
    let mut all = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (latencies, failed) = task.await??;
        all.extend(latencies);
        failures += failed;
    }
    all.sort_by(f64::total_cmp);
    Ok((all.len() as f64 / seconds as f64, all, failures))
}

async fn dns(args: &ServicesBenchArgs) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    let services: Vec<Arc<Service>> = (0..args.dns_services)
        .map(|i| {
            let ip = address(u32::from(Ipv4Addr::new(10, 43, 0, 2)), i);
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                "spec": {"clusterIP": ip.to_string(), "ports": [{"name": "http", "port": 80}]}
            }))
            .map(Arc::new)
        })
        .collect::<Result<_, _>>()?;
    let before = rss_kib();
    let index = dns::records::Index::build("cluster.local", &services, &[]);
    let after = rss_kib();
    let shared =
        Arc::new(dns::server::Shared::new(index, dns::forward::Forwarder::new(Vec::new())));
    let (udp, _tcp) = dns::server::bind("127.0.0.1:0".parse()?).await?;
    let server = udp.local_addr()?;
    let serving = tokio::spawn(dns::server::serve_udp(udp, shared));
    let name = format!("svc-{}.bench.svc.cluster.local", args.dns_services / 2);
    let (qps, latencies, failures) =
        query_loop(server, &name, args.dns_clients, args.dns_seconds).await?;
    serving.abort();
    println!(
        "cluster DNS, {} Services indexed ({:.1} MiB for the index): {qps:.0} queries/s, p50 {:.2} ms, p99 {:.2} ms, {failures} unanswered",
        args.dns_services,
        after.saturating_sub(before) as f64 / 1024.0,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    );
    let host = dns::forward::upstreams(
        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        server,
    );
    if let Some(resolver) = host.first() {
        let (host_qps, latencies, failures) =
            query_loop(*resolver, &args.host_name, args.dns_clients, args.dns_seconds).await?;
        println!(
            "host resolver {resolver} (same loop, name `{}`): {host_qps:.0} queries/s, p50 {:.2} ms, p99 {:.2} ms, {failures} unanswered  ratio {:.1}×",
            args.host_name,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            qps / host_qps.max(1e-9),
        );
    }
    Ok(())
}

/// Requests/s and latencies (ms) of `clients` loops, each request a new connection (what
/// the service rules act on), against `target`.
async fn http_loop(target: SocketAddr, clients: usize, seconds: u64) -> (f64, Vec<f64>, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            let mut buf = Vec::with_capacity(512);
            while Instant::now() < deadline {
                let started = Instant::now();
                let ok = async {
                    let mut stream = tokio::net::TcpStream::connect(target).await?;
                    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
                    buf.clear();
                    stream.read_to_end(&mut buf).await?;
                    Ok::<_, std::io::Error>(buf.starts_with(b"HTTP/1.") && buf.len() > 12)
                };
                match tokio::time::timeout(Duration::from_secs(2), ok).await {
                    Ok(Ok(true)) => latencies.push(started.elapsed().as_secs_f64() * 1e3),
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let mut all = Vec::new();
    let mut failures = 0;
    for task in tasks {
        if let Ok((latencies, failed)) = task.await {
            all.extend(latencies);
            failures += failed;
        }
    }
    all.sort_by(f64::total_cmp);
    (all.len() as f64 / seconds as f64, all, failures)
}

/// The same HTTP server reached from the node directly at its pod address, through its
/// ClusterIP and through its node port.
async fn datapath(args: &ServicesBenchArgs) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{Pod, Service};
    use kube::api::{Api, PostParams};
    let cluster = super::pods::Cluster::start()?;
    let client =
        crate::agent::client_from_kubeconfig(&std::fs::read_to_string(&cluster.kubeconfig)?)
            .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    // One server pod per path, alike: a server's TIME_WAIT sockets from one path would
    // meet the next path's connections (the NAT keeps the client's port) and refuse some
    // by PAWS, which measures the order of the runs, not the path.
    let paths = ["pod", "cluster", "node"];
    for path in paths {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("web-{path}"), "labels": {"bench": path}},
            "spec": {"nodeName": super::pods::NODE, "containers": [{"name": "web", "image": super::pods::IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"]}]}
        }))?;
        // The node registers once the agent has started; retry the create until then.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match pods.create(&PostParams::default(), &pod).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "waiting for the cluster");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut created = Vec::new();
    for (path, kind) in [("cluster", "ClusterIP"), ("node", "NodePort")] {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("web-{path}")},
            "spec": {"type": kind, "selector": {"bench": path}, "ports": [{"port": 80, "targetPort": 8080}]}
        }))?;
        created.push(
            services.create(&PostParams::default(), &service).await?.spec.unwrap_or_default(),
        );
    }
    let cluster_ip: Ipv4Addr = created[0].cluster_ip.clone().unwrap_or_default().parse()?;
    let node_port =
        created[1].ports.clone().unwrap_or_default().first().and_then(|p| p.node_port).unwrap_or(0);
    let node_ip = crate::host::default_address().context("no node address")?;
    let node_target = SocketAddr::new(node_ip, u16::try_from(node_port).unwrap_or(0));
    let deadline = Instant::now() + Duration::from_secs(90);
    let pod_ip: Ipv4Addr = loop {
        let p = pods.get("web-pod").await?;
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        if let Ok(ip) = ip.parse()
            && get_ok(SocketAddr::new(std::net::IpAddr::V4(ip), 8080)).await
            && get_ok(SocketAddr::new(std::net::IpAddr::V4(cluster_ip), 80)).await
            && get_ok(node_target).await
        {
            break ip;
        }
        anyhow::ensure!(Instant::now() < deadline, "the pods and their Services did not come up");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let targets = [
        ("pod address", SocketAddr::new(std::net::IpAddr::V4(pod_ip), 8080)),
        ("ClusterIP", SocketAddr::new(std::net::IpAddr::V4(cluster_ip), 80)),
        ("NodePort", node_target),
    ];
    let mut direct = 0.0;
    for (name, target) in targets {
        let (rps, latencies, failures) =
            http_loop(target, args.datapath_clients, args.datapath_seconds).await;
        if name == "pod address" {
            direct = rps;
        }
        println!(
            "data path, {name} {target}: {rps:.0} requests/s (a new connection each), p50 {:.2} ms, p99 {:.2} ms, {failures} failed  ratio to the pod address {:.2}×",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            rps / direct.max(1e-9),
        );
    }
    drop(cluster);
    Ok(())
}

async fn get_ok(target: SocketAddr) -> bool {
    let (rps, _, _) = http_loop(target, 1, 1).await;
    rps > 0.0
}

pub(crate) async fn run(args: ServicesBenchArgs) -> anyhow::Result<()> {
    programming(&args).await?;
    dns(&args).await?;
    if args.datapath_seconds > 0 {
        datapath(&args).await?;
    }
    Ok(())
}
