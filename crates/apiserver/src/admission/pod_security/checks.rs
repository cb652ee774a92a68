//! The Pod Security Standards as upstream's PodSecurity admission checks them: pure
//! functions of a pod's metadata and spec (JSON as stored), each returning why a pod fails
//! one control, worded as upstream words it, so `kubectl` users see the messages they know.
//!
//! Checks run in upstream's order (by check name); at `restricted` the restricted versions of
//! the capabilities, seccomp and volume checks replace the baseline ones.

use std::collections::BTreeSet;

use serde_json::Value;

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// One failed control: upstream's reason and detail, shown as `reason (detail)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{} ({})", self.reason, self.detail)
        }
    }
}

/// Capabilities a baseline container may add (the container runtime's defaults).
const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls a baseline pod may set (namespaced and isolated from the host).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// Volume sources a restricted pod may use.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
    "image",
];

const SELINUX_TYPES: &[&str] =
    &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

/// Why a pod (its `metadata` and `spec`) does not meet `level`; empty when it does.
pub fn check(level: Level, metadata: &Value, spec: &Value) -> Vec<Violation> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let pod = Pod { metadata, spec };
    let restricted = level == Level::Restricted;
    let checks: [(bool, Check); 17] = [
        (restricted, allow_privilege_escalation),
        (true, app_armor_profile),
        (!restricted, capabilities_baseline),
        (restricted, capabilities_restricted),
        (true, host_namespaces),
        (!restricted, host_path_volumes),
        (true, host_ports),
        (true, privileged),
        (true, proc_mount),
        (restricted, restricted_volumes),
        (restricted, run_as_non_root),
        (restricted, run_as_user),
        (true, se_linux_options),
        (!restricted, seccomp_profile_baseline),
        (restricted, seccomp_profile_restricted),
        (true, sysctls),
        (true, windows_host_process),
    ];
    checks.iter().filter(|(on, _)| *on).filter_map(|(_, check)| check(&pod)).collect()
}

/// The violations as upstream lists them after the level: `a (x), b (y)`.
pub fn describe(violations: &[Violation]) -> String {
    violations.iter().map(Violation::to_string).collect::<Vec<_>>().join(", ")
}

/// One control: why a pod fails it, if it does.
type Check = fn(&Pod<'_>) -> Option<Violation>;

struct Pod<'a> {
    metadata: &'a Value,
    spec: &'a Value,
}

impl<'a> Pod<'a> {
    /// Every container: regular, init and ephemeral, as upstream visits them.
    fn containers(&self) -> impl Iterator<Item = (&'a str, &'a Value)> {
        let spec = self.spec;
        ["initContainers", "containers", "ephemeralContainers"].into_iter().flat_map(move |list| {
            spec.get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| (c.get("name").and_then(Value::as_str).unwrap_or(""), c))
        })
    }

    fn pod_context(&self, field: &str) -> Option<&'a Value> {
        self.spec.get("securityContext")?.get(field).filter(|v| !v.is_null())
    }

    /// Who sets something forbidden, as upstream lists them: `pod` when `pod_bad`, then the
    /// containers `bad` picks (`pod and containers "a", "b"` once joined with " and ").
    fn setters(&self, pod_bad: bool, bad: impl Fn(&Value) -> bool) -> Vec<String> {
        let mut setters = Vec::new();
        if pod_bad {
            setters.push("pod".to_owned());
        }
        let containers: Vec<&str> =
            self.containers().filter(|(_, c)| bad(c)).map(|(name, _)| name).collect();
        if !containers.is_empty() {
            setters.push(containers_phrase(&containers));
        }
        setters
    }
}

fn context<'a>(container: &'a Value, field: &str) -> Option<&'a Value> {
    container.get("securityContext")?.get(field).filter(|v| !v.is_null())
}

fn pluralize<'a>(one: &'a str, many: &'a str, n: usize) -> &'a str {
    if n == 1 { one } else { many }
}

fn join_quote<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    items.into_iter().map(|s| format!("{:?}", s.as_ref())).collect::<Vec<_>>().join(", ")
}

fn containers_phrase(names: &[&str]) -> String {
    format!("{} {}", pluralize("container", "containers", names.len()), join_quote(names))
}

fn violation(reason: &str, detail: String) -> Option<Violation> {
    Some(Violation { reason: reason.to_owned(), detail })
}

fn allow_privilege_escalation(pod: &Pod<'_>) -> Option<Violation> {
    let bad: Vec<&str> = pod
        .containers()
        .filter(|(_, c)| {
            context(c, "allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false)
        })
        .map(|(name, _)| name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&bad)
        ),
    )
}

fn app_armor_profile(pod: &Pod<'_>) -> Option<Violation> {
    let allowed_type = |t: &str| matches!(t, "RuntimeDefault" | "Localhost");
    let mut bad = BTreeSet::new();
    if let Some(annotations) = pod.metadata.get("annotations").and_then(Value::as_object) {
        for (key, value) in annotations {
            if !key.starts_with("container.apparmor.security.beta.kubernetes.io/") {
                continue;
            }
            let value = value.as_str().unwrap_or("");
            if !value.is_empty() && value != "runtime/default" && !value.starts_with("localhost/") {
                bad.insert(format!("{key}={value:?}"));
            }
        }
    }
    let typed = |v: Option<&Value>| {
        v.and_then(|p| p.get("type")).and_then(Value::as_str).map(str::to_owned)
    };
    if let Some(t) = typed(pod.pod_context("appArmorProfile")).filter(|t| !allowed_type(t)) {
        bad.insert(format!("pod {t:?}"));
    }
    for (name, c) in pod.containers() {
        if let Some(t) = typed(context(c, "appArmorProfile")).filter(|t| !allowed_type(t)) {
            bad.insert(format!("container {name:?} {t:?}"));
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        pluralize("forbidden AppArmor profile", "forbidden AppArmor profiles", bad.len()),
        bad.into_iter().collect::<Vec<_>>().join(", "),
    )
}

fn added_capabilities(container: &Value) -> impl Iterator<Item = &str> {
    context(container, "capabilities")
        .and_then(|c| c.get("add"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn capabilities_baseline(pod: &Pod<'_>) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut added = BTreeSet::new();
    for (name, c) in pod.containers() {
        let mut valid = true;
        for cap in added_capabilities(c) {
            if !DEFAULT_CAPABILITIES.contains(&cap) {
                valid = false;
                added.insert(cap);
            }
        }
        if !valid {
            bad.push(name);
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad),
            join_quote(added)
        ),
    )
}

fn capabilities_restricted(pod: &Pod<'_>) -> Option<Violation> {
    let mut missing_drop_all = Vec::new();
    let mut adding = Vec::new();
    let mut forbidden = BTreeSet::new();
    for (name, c) in pod.containers() {
        let Some(capabilities) = context(c, "capabilities") else {
            missing_drop_all.push(name);
            continue;
        };
        let drops_all = capabilities
            .get("drop")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|c| c.as_str() == Some("ALL")));
        if !drops_all {
            missing_drop_all.push(name);
        }
        let mut adds_forbidden = false;
        for cap in added_capabilities(c) {
            if cap != "NET_BIND_SERVICE" {
                adds_forbidden = true;
                forbidden.insert(cap);
            }
        }
        if adds_forbidden {
            adding.push(name);
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop_all)
        ));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(forbidden)
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

fn host_namespaces(pod: &Pod<'_>) -> Option<Violation> {
    let set: Vec<&str> = [
        ("hostNetwork", "hostNetwork=true"),
        ("hostPID", "hostPID=true"),
        ("hostIPC", "hostIPC=true"),
    ]
    .into_iter()
    .filter(|(field, _)| pod.spec.get(field).and_then(Value::as_bool) == Some(true))
    .map(|(_, text)| text)
    .collect();
    if set.is_empty() {
        return None;
    }
    violation("host namespaces", set.join(", "))
}

fn volumes<'a>(
    pod: &Pod<'a>,
) -> impl Iterator<Item = (&'a str, &'a serde_json::Map<String, Value>)> {
    pod.spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .map(|v| (v.get("name").and_then(Value::as_str).unwrap_or(""), v))
}

fn host_path_volumes(pod: &Pod<'_>) -> Option<Violation> {
    let bad: Vec<&str> = volumes(pod)
        .filter(|(_, v)| v.get("hostPath").is_some_and(|h| !h.is_null()))
        .map(|(name, _)| name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!("{} {}", pluralize("volume", "volumes", bad.len()), join_quote(&bad)),
    )
}

fn host_ports(pod: &Pod<'_>) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut ports = BTreeSet::new();
    for (name, c) in pod.containers() {
        let mut valid = true;
        for port in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
            if let Some(host) = port.get("hostPort").and_then(Value::as_i64).filter(|p| *p != 0) {
                valid = false;
                ports.insert(host.to_string());
            }
        }
        if !valid {
            bad.push(name);
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

fn privileged(pod: &Pod<'_>) -> Option<Violation> {
    let bad: Vec<&str> = pod
        .containers()
        .filter(|(_, c)| context(c, "privileged").and_then(Value::as_bool) == Some(true))
        .map(|(name, _)| name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!("{} must not set securityContext.privileged=true", containers_phrase(&bad)),
    )
}

fn proc_mount(pod: &Pod<'_>) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for (name, c) in pod.containers() {
        if let Some(t) = context(c, "procMount").and_then(Value::as_str).filter(|t| *t != "Default")
        {
            bad.push(name);
            types.insert(t);
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad),
            join_quote(types)
        ),
    )
}

fn restricted_volumes(pod: &Pod<'_>) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for (name, volume) in volumes(pod) {
        let source = volume
            .iter()
            .find(|(k, v)| k.as_str() != "name" && !v.is_null())
            .map(|(k, _)| k.as_str());
        match source {
            Some(kind) if RESTRICTED_VOLUMES.contains(&kind) => {}
            // A volume with no source is an emptyDir.
            None => {}
            Some(kind) => {
                bad.push(name);
                types.insert(kind);
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", bad.len()),
            join_quote(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("restricted volume type", "restricted volume types", types.len()),
            join_quote(types)
        ),
    )
}

fn run_as_non_root(pod: &Pod<'_>) -> Option<Violation> {
    let mut setters = Vec::new();
    let pod_value = pod.pod_context("runAsNonRoot").and_then(Value::as_bool);
    if pod_value == Some(false) {
        setters.push("pod".to_owned());
    }
    let mut explicitly_bad = Vec::new();
    let mut implicitly_bad = Vec::new();
    for (name, c) in pod.containers() {
        match context(c, "runAsNonRoot").and_then(Value::as_bool) {
            Some(false) => explicitly_bad.push(name),
            Some(true) => {}
            None if pod_value != Some(true) => implicitly_bad.push(name),
            None => {}
        }
    }
    if !explicitly_bad.is_empty() {
        setters.push(containers_phrase(&explicitly_bad));
    }
    if !setters.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!("{} must not set securityContext.runAsNonRoot=false", setters.join(" and ")),
        );
    }
    if implicitly_bad.is_empty() {
        return None;
    }
    violation(
        "runAsNonRoot != true",
        format!(
            "pod or {} must set securityContext.runAsNonRoot=true",
            containers_phrase(&implicitly_bad)
        ),
    )
}

fn run_as_user(pod: &Pod<'_>) -> Option<Violation> {
    let root = |v: Option<&Value>| v.and_then(Value::as_i64) == Some(0);
    let setters =
        pod.setters(root(pod.pod_context("runAsUser")), |c| root(context(c, "runAsUser")));
    if setters.is_empty() {
        return None;
    }
    violation("runAsUser=0", format!("{} must not set runAsUser=0", setters.join(" and ")))
}

fn se_linux_options(pod: &Pod<'_>) -> Option<Violation> {
    let mut types = BTreeSet::new();
    let (mut user, mut role) = (false, false);
    let mut valid = |options: &Value| {
        let mut ok = true;
        let t = options.get("type").and_then(Value::as_str).unwrap_or("");
        if !SELINUX_TYPES.contains(&t) {
            types.insert(t.to_owned());
            ok = false;
        }
        if options.get("user").and_then(Value::as_str).is_some_and(|u| !u.is_empty()) {
            user = true;
            ok = false;
        }
        if options.get("role").and_then(Value::as_str).is_some_and(|r| !r.is_empty()) {
            role = true;
            ok = false;
        }
        ok
    };
    let mut setters = Vec::new();
    if pod.pod_context("seLinuxOptions").is_some_and(|o| !valid(o)) {
        setters.push("pod".to_owned());
    }
    let bad: Vec<&str> = pod
        .containers()
        .filter(|(_, c)| context(c, "seLinuxOptions").is_some_and(|o| !valid(o)))
        .map(|(name, _)| name)
        .collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !types.is_empty() {
        data.push(format!("{} {}", pluralize("type", "types", types.len()), join_quote(&types)));
    }
    if user {
        data.push("user may not be set".to_owned());
    }
    if role {
        data.push("role may not be set".to_owned());
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            data.join("; ")
        ),
    )
}

fn seccomp_type(v: Option<&Value>) -> Option<&str> {
    v?.get("type")?.as_str()
}

fn seccomp_profile_baseline(pod: &Pod<'_>) -> Option<Violation> {
    let unconfined = |v: Option<&Value>| seccomp_type(v) == Some("Unconfined");
    let setters = pod.setters(unconfined(pod.pod_context("seccompProfile")), |c| {
        unconfined(context(c, "seccompProfile"))
    });
    if setters.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
            setters.join(" and ")
        ),
    )
}

fn seccomp_profile_restricted(pod: &Pod<'_>) -> Option<Violation> {
    let valid = |t: &str| matches!(t, "RuntimeDefault" | "Localhost");
    let mut setters = Vec::new();
    let mut bad_types = BTreeSet::new();
    let mut pod_set = false;
    if let Some(profile) = pod.pod_context("seccompProfile") {
        let t = seccomp_type(Some(profile)).unwrap_or("");
        if valid(t) {
            pod_set = true;
        } else {
            setters.push("pod".to_owned());
            bad_types.insert(t.to_owned());
        }
    }
    let mut explicitly_bad = Vec::new();
    let mut implicitly_bad = Vec::new();
    for (name, c) in pod.containers() {
        match context(c, "seccompProfile") {
            Some(profile) => {
                let t = seccomp_type(Some(profile)).unwrap_or("");
                if !valid(t) {
                    explicitly_bad.push(name);
                    bad_types.insert(t.to_owned());
                }
            }
            None if !pod_set => implicitly_bad.push(name),
            None => {}
        }
    }
    if !explicitly_bad.is_empty() {
        setters.push(containers_phrase(&explicitly_bad));
    }
    if !setters.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters.join(" and "),
                join_quote(&bad_types)
            ),
        );
    }
    if implicitly_bad.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_phrase(&implicitly_bad)
        ),
    )
}

fn sysctls(pod: &Pod<'_>) -> Option<Violation> {
    let bad: Vec<&str> = pod
        .pod_context("sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .filter(|name| !SAFE_SYSCTLS.contains(name))
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation("forbidden sysctls", bad.join(", "))
}

fn windows_host_process(pod: &Pod<'_>) -> Option<Violation> {
    let host_process = |v: Option<&Value>| {
        v.and_then(|w| w.get("hostProcess")).and_then(Value::as_bool) == Some(true)
    };
    let setters = pod.setters(host_process(pod.pod_context("windowsOptions")), |c| {
        host_process(context(c, "windowsOptions"))
    });
    if setters.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters.join(" and ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(level: Level, spec: Value) -> String {
        describe(&check(level, &json!({}), &spec))
    }

    /// A container that meets `restricted`.
    fn hardened(name: &str) -> Value {
        json!({"name": name, "image": "busybox", "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"}
        }})
    }

    #[test]
    fn a_plain_pod_is_baseline_but_not_restricted() {
        let spec = json!({"containers": [{"name": "nginx", "image": "nginx"}]});
        assert_eq!(run(Level::Baseline, spec.clone()), "");
        assert_eq!(
            run(Level::Restricted, spec),
            "allowPrivilegeEscalation != false (container \"nginx\" must set securityContext.allowPrivilegeEscalation=false), \
             unrestricted capabilities (container \"nginx\" must set securityContext.capabilities.drop=[\"ALL\"]), \
             runAsNonRoot != true (pod or container \"nginx\" must set securityContext.runAsNonRoot=true), \
             seccompProfile (pod or container \"nginx\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        assert_eq!(run(Level::Restricted, json!({"containers": [hardened("a")]})), "");
        assert_eq!(run(Level::Privileged, json!({"hostNetwork": true})), "");
    }

    #[test]
    fn baseline_refuses_the_host_and_privilege() {
        let spec = json!({
            "hostNetwork": true,
            "hostPID": true,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}, {"name": "tmp", "emptyDir": {}}],
            "securityContext": {"sysctls": [{"name": "net.ipv4.ip_forward", "value": "1"}, {"name": "kernel.shm_rmid_forced", "value": "1"}]},
            "containers": [
                {"name": "a", "ports": [{"containerPort": 80, "hostPort": 80}], "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}},
                {"name": "b", "ports": [{"containerPort": 443, "hostPort": 443}], "securityContext": {"privileged": true, "procMount": "Unmasked", "seccompProfile": {"type": "Unconfined"}}}
            ]
        });
        assert_eq!(
            run(Level::Baseline, spec),
            "non-default capabilities (container \"a\" must not include \"NET_ADMIN\" in securityContext.capabilities.add), \
             host namespaces (hostNetwork=true, hostPID=true), \
             hostPath volumes (volume \"root\"), \
             hostPort (containers \"a\", \"b\" use hostPorts 443, 80), \
             privileged (containers \"a\", \"b\" must not set securityContext.privileged=true), \
             procMount (container \"b\" must not set securityContext.procMount to \"Unmasked\"), \
             seccompProfile (container \"b\" must not set securityContext.seccompProfile.type to \"Unconfined\"), \
             forbidden sysctls (net.ipv4.ip_forward)"
        );
    }

    #[test]
    fn restricted_replaces_the_baseline_volume_capability_and_seccomp_checks() {
        let mut c = hardened("app");
        c["securityContext"]["capabilities"]["add"] = json!(["NET_BIND_SERVICE", "SYS_TIME"]);
        c["securityContext"]["runAsUser"] = json!(0);
        let spec = json!({
            "securityContext": {"runAsNonRoot": false, "seccompProfile": {"type": "Unconfined"}},
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}, {"name": "share", "nfs": {"server": "x", "path": "/"}}, {"name": "cfg", "configMap": {"name": "c"}}],
            "containers": [c]
        });
        assert_eq!(
            run(Level::Restricted, spec),
            "unrestricted capabilities (container \"app\" must not include \"SYS_TIME\" in securityContext.capabilities.add), \
             restricted volume types (volumes \"root\", \"share\" use restricted volume types \"hostPath\", \"nfs\"), \
             runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false), \
             runAsUser=0 (container \"app\" must not set runAsUser=0), \
             seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")"
        );
    }

    #[test]
    fn pod_level_settings_cover_every_container() {
        let container = |name: &str| json!({"name": name, "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}});
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}},
            "initContainers": [container("init")],
            "containers": [container("a"), container("b")]
        });
        assert_eq!(run(Level::Restricted, spec.clone()), "");
        let mut one_off = spec;
        one_off["containers"][1]["securityContext"]["runAsNonRoot"] = json!(false);
        assert_eq!(
            run(Level::Restricted, one_off),
            "runAsNonRoot != true (container \"b\" must not set securityContext.runAsNonRoot=false)"
        );
    }

    #[test]
    fn selinux_apparmor_and_host_process() {
        let spec = json!({
            "securityContext": {"seLinuxOptions": {"type": "spc_t"}, "windowsOptions": {"hostProcess": true}},
            "containers": [{"name": "a", "securityContext": {"seLinuxOptions": {"user": "system_u", "type": "container_t"}, "appArmorProfile": {"type": "Unconfined"}}}]
        });
        assert_eq!(
            run(Level::Baseline, spec),
            "forbidden AppArmor profile (container \"a\" \"Unconfined\"), \
             seLinuxOptions (pod and container \"a\" set forbidden securityContext.seLinuxOptions: type \"spc_t\"; user may not be set), \
             hostProcess (pod must not set securityContext.windowsOptions.hostProcess=true)"
        );
        let annotated = check(
            Level::Baseline,
            &json!({"annotations": {"container.apparmor.security.beta.kubernetes.io/a": "unconfined"}}),
            &json!({"containers": [{"name": "a"}]}),
        );
        assert_eq!(annotated[0].reason, "forbidden AppArmor profile");
    }
}
