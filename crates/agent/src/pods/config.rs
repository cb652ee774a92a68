//! Pure translation of a Pod into CRI requests: the sandbox config and each container's
//! config (command, env, mounts, resources, security context). Nothing here does IO, so all
//! of it is unit-tested.

use std::collections::{BTreeMap, HashMap};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Labels the agent puts on every sandbox and container, as upstream's kubelet does; CRI
/// lists are filtered by the pod UID label.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// The pod's namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// The pod's UID: what everything on the node is keyed by.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// The container's name in the pod spec.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Marks containers and sandboxes this agent created (so a shared runtime's other tenants are
/// left alone by housekeeping).
pub const LABEL_MANAGED_BY: &str = "io.krust.node";
/// The container annotation holding the image its pod's spec named when it was created.
pub const ANNOTATION_SPEC_IMAGE: &str = "io.krust.container.image";

/// Paths upstream masks and makes read-only in unprivileged containers.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] =
    &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A pod's quality-of-service class, from its containers' requests and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    /// Every container has equal CPU and memory requests and limits.
    Guaranteed,
    /// Something is requested or limited, but not Guaranteed.
    Burstable,
    /// Nothing is requested or limited.
    BestEffort,
}

impl QosClass {
    /// The name in `status.qosClass`.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

fn resource<'a>(map: Option<&'a BTreeMap<String, Quantity>>, name: &str) -> Option<&'a Quantity> {
    map.and_then(|m| m.get(name))
}

/// The QoS class upstream computes: over all containers (init included), only cpu and memory
/// count; limits without requests default the requests.
pub fn qos_class(pod: &Pod) -> QosClass {
    let Some(spec) = pod.spec.as_ref() else { return QosClass::BestEffort };
    let all = spec.init_containers.iter().flatten().chain(spec.containers.iter());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let res = c.resources.as_ref();
        let requests = res.and_then(|r| r.requests.as_ref());
        let limits = res.and_then(|r| r.limits.as_ref());
        for name in ["cpu", "memory"] {
            let req = resource(requests, name).and_then(parse_quantity);
            let lim = resource(limits, name).and_then(parse_quantity);
            if req.is_some_and(|v| v > 0.0) || lim.is_some_and(|v| v > 0.0) {
                any = true;
            }
            match (req, lim) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if (r - l).abs() > f64::EPSILON => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        QosClass::BestEffort
    } else if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

pub use controller_runtime::quantity::{bytes, millicores, parse_quantity};

/// CFS period upstream uses (100 ms).
pub const CPU_PERIOD_US: i64 = 100_000;

/// cpu.shares for a CPU request, as upstream (2 when nothing is requested).
pub fn cpu_shares(request_millis: Option<i64>) -> i64 {
    match request_millis {
        None | Some(0) => 2,
        Some(m) => (m * 1024 / 1000).max(2),
    }
}

/// cfs_quota_us for a CPU limit (0 = none), at least 1 ms as the kernel demands.
pub fn cpu_quota(limit_millis: Option<i64>) -> i64 {
    match limit_millis {
        None | Some(0) => 0,
        Some(m) => (m * CPU_PERIOD_US / 1000).max(1000),
    }
}

/// The container's cgroup resources: shares from the CPU request (the limit when no request),
/// quota from the CPU limit, the memory limit, and the OOM score upstream gives its QoS class.
pub fn container_resources(
    container: &Container,
    qos: QosClass,
    node_memory: u64,
) -> cri::LinuxContainerResources {
    let res: Option<&ResourceRequirements> = container.resources.as_ref();
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    let cpu_limit = resource(limits, "cpu").and_then(millicores);
    let cpu_request = resource(requests, "cpu").and_then(millicores).or(cpu_limit);
    let memory_limit = resource(limits, "memory").and_then(bytes).unwrap_or(0);
    let memory_request = resource(requests, "memory").and_then(bytes).unwrap_or(memory_limit);
    let oom_score_adj = match qos {
        QosClass::Guaranteed => -997,
        QosClass::BestEffort => 1000,
        QosClass::Burstable => {
            let node = node_memory.max(1) as f64;
            let adj = 1000 - (1000.0 * memory_request as f64 / node) as i64;
            adj.clamp(2, 999)
        }
    };
    cri::LinuxContainerResources {
        cpu_period: CPU_PERIOD_US,
        cpu_quota: cpu_quota(cpu_limit),
        cpu_shares: cpu_shares(cpu_request),
        memory_limit_in_bytes: memory_limit,
        oom_score_adj,
        ..Default::default()
    }
}

/// The pod's cgroup parent under `root`: `<root>/kubepods/pod<uid>` for Guaranteed pods,
/// `<root>/kubepods/<qos>/pod<uid>` otherwise, as upstream lays them out.
pub fn pod_cgroup_parent(root: &str, qos: QosClass, uid: &str) -> String {
    let root = root.trim_end_matches('/');
    match qos {
        QosClass::Guaranteed => format!("{root}/kubepods/pod{uid}"),
        QosClass::Burstable => format!("{root}/kubepods/burstable/pod{uid}"),
        QosClass::BestEffort => format!("{root}/kubepods/besteffort/pod{uid}"),
    }
}

/// Identifies a pod on this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodKey {
    /// UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl PodKey {
    /// The key of `pod`.
    pub fn of(pod: &Pod) -> PodKey {
        PodKey {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
        }
    }

    /// `name_namespace(uid)`, as upstream's messages name a pod.
    pub fn display(&self) -> String {
        format!("{}_{}({})", self.name, self.namespace, self.uid)
    }

    /// The labels that tie runtime objects to this pod.
    pub fn labels(&self, node: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_POD_NAME.to_owned(), self.name.clone()),
            (LABEL_POD_NAMESPACE.to_owned(), self.namespace.clone()),
            (LABEL_POD_UID.to_owned(), self.uid.clone()),
            (LABEL_MANAGED_BY.to_owned(), node.to_owned()),
        ])
    }
}

/// What a node knows to give its pods a resolver: the host's `resolv.conf`, and the cluster
/// DNS server and domain when the cluster has one (kubelet's `--cluster-dns`,
/// `--cluster-domain`).
#[derive(Debug, Clone, Default)]
pub struct DnsSettings {
    /// The host's `/etc/resolv.conf` text.
    pub host_resolv_conf: String,
    /// The cluster DNS server's address.
    pub cluster_dns: Option<String>,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
}

/// The most search domains a resolver reads (glibc's limit, which upstream enforces).
const MAX_SEARCHES: usize = 32;

/// A pod's resolver by its `dnsPolicy`, as upstream's kubelet builds it: `ClusterFirst`
/// (the default) points at the cluster DNS with the namespace's search path and `ndots:5`,
/// plus the host's search domains; a host-network pod gets that only with
/// `ClusterFirstWithHostNet` (otherwise the host's own file); `Default` copies the host's
/// resolver; `None` starts empty. The pod's `dnsConfig` is then merged in (servers and
/// searches appended, options replacing those of the same name). Without a cluster DNS,
/// `ClusterFirst` falls back to `Default`.
pub fn dns_config(pod: &Pod, settings: &DnsSettings) -> Option<cri::DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network == Some(true);
    if host_network && policy != "ClusterFirstWithHostNet" && policy != "None" {
        return None;
    }
    let mut host = cri::DnsConfig::default();
    for line in settings.host_resolv_conf.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => host.servers.extend(words.next().map(str::to_owned)),
            Some("search") => host.searches.extend(words.map(str::to_owned)),
            Some("options") => host.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    let cluster = matches!(policy, "ClusterFirst" | "ClusterFirstWithHostNet");
    let mut dns = match (policy, &settings.cluster_dns) {
        ("None", _) => cri::DnsConfig::default(),
        (_, Some(server)) if cluster => {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let domain = &settings.cluster_domain;
            let mut searches =
                vec![format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.clone()];
            searches.extend(
                host.searches.iter().filter(|s| !searches.contains(s)).cloned().collect::<Vec<_>>(),
            );
            cri::DnsConfig {
                servers: vec![server.clone()],
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        _ => host,
    };
    if let Some(own) = spec.dns_config.as_ref() {
        for server in own.nameservers.iter().flatten() {
            if !dns.servers.contains(server) {
                dns.servers.push(server.clone());
            }
        }
        for search in own.searches.iter().flatten() {
            if !dns.searches.contains(search) {
                dns.searches.push(search.clone());
            }
        }
        for o in own.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            dns.options.retain(|existing| existing.split(':').next() != Some(name.as_str()));
            dns.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    dns.searches.truncate(MAX_SEARCHES);
    Some(dns)
}

/// The sandbox request for `pod`.
pub fn sandbox_config(
    pod: &Pod,
    node: &str,
    attempt: u32,
    log_directory: &str,
    cgroup_parent: &str,
    dns: &DnsSettings,
) -> cri::PodSandboxConfig {
    let key = PodKey::of(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let mut labels = key.labels(node);
    for (k, v) in pod.metadata.labels.iter().flatten() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let annotations: HashMap<String, String> =
        pod.metadata.annotations.clone().unwrap_or_default().into_iter().collect();
    let host_network = spec.host_network == Some(true);
    let hostname = if host_network {
        String::new()
    } else {
        let mut h = spec.hostname.clone().unwrap_or_else(|| key.name.clone());
        h.truncate(63);
        h.trim_end_matches(['-', '.']).to_owned()
    };
    let mut port_mappings = Vec::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            if let Some(host_port) = p.host_port.filter(|h| *h > 0) {
                port_mappings.push(cri::PortMapping {
                    protocol: protocol(p.protocol.as_deref()) as i32,
                    container_port: p.container_port,
                    host_port,
                    host_ip: p.host_ip.clone().unwrap_or_default(),
                });
            }
        }
    }
    let security = spec.security_context.clone().unwrap_or_default();
    let privileged = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true));
    let sysctls: HashMap<String, String> =
        security.sysctls.iter().flatten().map(|s| (s.name.clone(), s.value.clone())).collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: key.name.clone(),
            uid: key.uid.clone(),
            namespace: key.namespace.clone(),
            attempt,
        }),
        hostname,
        log_directory: log_directory.to_owned(),
        dns_config: dns_config(pod, dns),
        port_mappings,
        labels,
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.to_owned(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(&spec)),
                run_as_user: security.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: security.run_as_group.map(|value| cri::Int64Value { value }),
                supplemental_groups: supplemental_groups(&security),
                privileged,
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        windows: None,
    }
}

fn protocol(p: Option<&str>) -> cri::Protocol {
    match p {
        Some("UDP") => cri::Protocol::Udp,
        Some("SCTP") => cri::Protocol::Sctp,
        _ => cri::Protocol::Tcp,
    }
}

fn namespace_options(spec: &k8s_openapi::api::core::v1::PodSpec) -> cri::NamespaceOption {
    let mode = |node: bool, fallback: cri::NamespaceMode| {
        if node { cri::NamespaceMode::Node as i32 } else { fallback as i32 }
    };
    cri::NamespaceOption {
        network: mode(spec.host_network == Some(true), cri::NamespaceMode::Pod),
        pid: mode(
            spec.host_pid == Some(true),
            if spec.share_process_namespace == Some(true) {
                cri::NamespaceMode::Pod
            } else {
                cri::NamespaceMode::Container
            },
        ),
        ipc: mode(spec.host_ipc == Some(true), cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

/// Everything a container config needs besides the pod: resolved env, mounts prepared on the
/// host, the image reference to run, and the attempt number.
#[derive(Debug, Clone, Default)]
pub struct ContainerInputs {
    /// Resolved environment, in order.
    pub env: Vec<(String, String)>,
    /// Host mounts.
    pub mounts: Vec<cri::Mount>,
    /// Block devices (`volumeDevices` of Block claims).
    pub devices: Vec<cri::Device>,
    /// Image reference (as pulled).
    pub image: String,
    /// Restart attempt (0 for the first run).
    pub attempt: u32,
    /// The node's memory, for the OOM score of Burstable pods.
    pub node_memory: u64,
}

/// The container request for `container` of `pod`.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    node: &str,
    inputs: &ContainerInputs,
) -> cri::ContainerConfig {
    let key = PodKey::of(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let qos = qos_class(pod);
    let mut labels = key.labels(node);
    labels.insert(LABEL_CONTAINER_NAME.to_owned(), container.name.clone());
    let termination_path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".to_owned());
    let annotations = HashMap::from([
        ("io.kubernetes.container.restartCount".to_owned(), inputs.attempt.to_string()),
        ("io.kubernetes.container.terminationMessagePath".to_owned(), termination_path),
        (
            "io.kubernetes.pod.terminationGracePeriod".to_owned(),
            spec.termination_grace_period_seconds.unwrap_or(30).to_string(),
        ),
        // The image as the spec named it, so a later change of it is seen.
        (ANNOTATION_SPEC_IMAGE.to_owned(), container.image.clone().unwrap_or_default()),
    ]);
    let env_vars: HashMap<&str, &str> =
        inputs.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand = |s: &String| expand_vars(s, &env_vars);
    let sc = container.security_context.clone().unwrap_or_default();
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged == Some(true);
    let capabilities = sc.capabilities.clone().map(|c| cri::Capability {
        add_capabilities: c.add.unwrap_or_default(),
        drop_capabilities: c.drop.unwrap_or_default(),
        ..Default::default()
    });
    let run_as_user = sc.run_as_user.or(pod_sc.run_as_user);
    let run_as_group = sc.run_as_group.or(pod_sc.run_as_group);
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: container.name.clone(),
            attempt: inputs.attempt,
        }),
        image: Some(cri::ImageSpec {
            image: inputs.image.clone(),
            user_specified_image: container.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: container.command.iter().flatten().map(expand).collect(),
        args: container.args.iter().flatten().map(expand).collect(),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: inputs
            .env
            .iter()
            .map(|(key, value)| cri::KeyValue { key: key.clone(), value: value.clone() })
            .collect(),
        mounts: inputs.mounts.clone(),
        devices: inputs.devices.clone(),
        labels,
        annotations,
        log_path: format!("{}/{}.log", container.name, inputs.attempt),
        stdin: container.stdin == Some(true),
        stdin_once: container.stdin_once == Some(true),
        tty: container.tty == Some(true),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(container_resources(container, qos, inputs.node_memory)),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities,
                privileged,
                namespace_options: Some(namespace_options(&spec)),
                run_as_user: run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: run_as_group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: sc.read_only_root_filesystem == Some(true),
                supplemental_groups: supplemental_groups(&pod_sc),
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                masked_paths: if privileged {
                    Vec::new()
                } else {
                    MASKED_PATHS.iter().map(|s| (*s).to_owned()).collect()
                },
                readonly_paths: if privileged {
                    Vec::new()
                } else {
                    READONLY_PATHS.iter().map(|s| (*s).to_owned()).collect()
                },
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// Expands `$(VAR)` references as upstream does: `$$` escapes a `$`, unknown references stay
/// as written.
pub fn expand_vars(input: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The pod's supplemental groups, with its `fsGroup` among them (as upstream's kubelet adds
/// it, so the containers may use the volumes given to that group).
fn supplemental_groups(sc: &k8s_openapi::api::core::v1::PodSecurityContext) -> Vec<i64> {
    let mut groups = sc.supplemental_groups.clone().unwrap_or_default();
    if let Some(g) = sc.fs_group
        && !groups.contains(&g)
    {
        groups.push(g);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn qos_classes_follow_upstream_rules() {
        let best = pod(serde_json::json!({"spec": {"containers": [{"name": "a"}]}}));
        assert_eq!(qos_class(&best), QosClass::BestEffort);
        let guaranteed = pod(serde_json::json!({"spec": {"containers": [{"name": "a",
            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}]}}));
        assert_eq!(qos_class(&guaranteed), QosClass::Guaranteed);
        let burstable = pod(serde_json::json!({"spec": {"containers": [{"name": "a",
            "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m", "memory": "64Mi"}}}]}}));
        assert_eq!(qos_class(&burstable), QosClass::Burstable);
        let mixed = pod(serde_json::json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
            {"name": "b"}]}}));
        assert_eq!(qos_class(&mixed), QosClass::Burstable);
    }

    #[test]
    fn quantities_and_cgroup_values() {
        assert_eq!(millicores(&Quantity("250m".into())), Some(250));
        assert_eq!(millicores(&Quantity("1.5".into())), Some(1500));
        assert_eq!(bytes(&Quantity("32Mi".into())), Some(32 << 20));
        assert_eq!(bytes(&Quantity("1e3".into())), Some(1000));
        assert_eq!(bytes(&Quantity("1G".into())), Some(1_000_000_000));
        assert_eq!(cpu_shares(Some(250)), 256);
        assert_eq!(cpu_shares(None), 2);
        assert_eq!(cpu_quota(Some(500)), 50_000);
        assert_eq!(cpu_quota(Some(1)), 1000);
        assert_eq!(cpu_quota(None), 0);
    }

    #[test]
    fn container_config_carries_command_env_and_limits() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                "command": ["sh", "-c"], "args": ["echo $(GREETING) $$(HOME) $(MISSING)"],
                "resources": {"limits": {"cpu": "200m", "memory": "32Mi"}},
                "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false, "capabilities": {"add": ["NET_ADMIN"]}}}]}
        }));
        let container = p.spec.as_ref().unwrap().containers[0].clone();
        let inputs = ContainerInputs {
            env: vec![("GREETING".into(), "hi".into())],
            image: "sha256:abc".into(),
            attempt: 2,
            node_memory: 1 << 30,
            ..Default::default()
        };
        let cfg = container_config(&p, &container, "n1", &inputs);
        assert_eq!(cfg.command, ["sh", "-c"]);
        assert_eq!(cfg.args, ["echo hi $(HOME) $(MISSING)"]);
        assert_eq!(cfg.log_path, "c/2.log");
        assert_eq!(cfg.labels[LABEL_POD_UID], "u1");
        let linux = cfg.linux.unwrap();
        let res = linux.resources.unwrap();
        assert_eq!(res.cpu_quota, 20_000);
        assert_eq!(res.memory_limit_in_bytes, 32 << 20);
        assert_eq!(res.oom_score_adj, -997);
        let sc = linux.security_context.unwrap();
        assert_eq!(sc.run_as_user.unwrap().value, 1000);
        assert!(sc.readonly_rootfs && sc.no_new_privs);
        assert_eq!(sc.capabilities.unwrap().add_capabilities, ["NET_ADMIN"]);
    }

    #[test]
    fn sandbox_config_maps_host_ports_and_dns() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "ports": [
                {"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]}]}
        }));
        let cfg = sandbox_config(
            &p,
            "n1",
            0,
            "/logs",
            "/krust/kubepods/besteffort/podu1",
            &DnsSettings {
                host_resolv_conf: "nameserver 10.0.0.2\nsearch example.com\n".into(),
                ..DnsSettings::default()
            },
        );
        assert_eq!(cfg.port_mappings.len(), 1);
        assert_eq!(cfg.port_mappings[0].host_port, 8080);
        assert_eq!(cfg.labels["app"], "x");
        assert_eq!(cfg.hostname, "web");
        let dns = cfg.dns_config.unwrap();
        assert_eq!(dns.servers, ["10.0.0.2"]);
        assert_eq!(dns.searches, ["example.com"]);
    }
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
        )
        .expect("pod")
    }

    #[test]
    fn dns_policies_follow_upstream() {
        let settings = DnsSettings {
            host_resolv_conf: "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n".into(),
            cluster_dns: Some("10.43.0.10".into()),
            cluster_domain: "cluster.local".into(),
        };
        let first =
            dns_config(&pod(serde_json::json!({"containers": []})), &settings).expect("dns");
        assert_eq!(first.servers, ["10.43.0.10"]);
        assert_eq!(
            first.searches,
            ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"]
        );
        assert_eq!(first.options, ["ndots:5"]);
        let default = dns_config(
            &pod(serde_json::json!({"dnsPolicy": "Default", "containers": []})),
            &settings,
        )
        .expect("dns");
        assert_eq!(
            (default.servers, default.options),
            (vec!["192.0.2.53".to_owned()], vec!["edns0".to_owned()])
        );
        assert!(
            dns_config(&pod(serde_json::json!({"hostNetwork": true, "containers": []})), &settings)
                .is_none()
        );
        let with_host_net = dns_config(
            &pod(serde_json::json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet", "containers": []})),
            &settings,
        )
        .expect("dns");
        assert_eq!(with_host_net.servers, ["10.43.0.10"]);
        let none = dns_config(
            &pod(serde_json::json!({"dnsPolicy": "None", "containers": [],
                "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}]}})),
            &settings,
        )
        .expect("dns");
        assert_eq!(
            (none.servers, none.searches, none.options),
            (vec!["1.1.1.1".to_owned()], vec!["a.example".to_owned()], vec!["ndots:2".to_owned()])
        );
        // Without a cluster DNS, ClusterFirst is the host's resolver.
        let bare = DnsSettings { cluster_dns: None, ..settings };
        assert_eq!(
            dns_config(&pod(serde_json::json!({"containers": []})), &bare).expect("dns").servers,
            ["192.0.2.53"]
        );
    }
}
