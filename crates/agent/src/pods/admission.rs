//! The node's admission of pods bound to it, as upstream's kubelet does before it starts
//! one: a pod asking for a host port another admitted pod holds is failed (`NodePorts`)
//! rather than started, since its sandbox could never bind the port. The scheduler checks
//! the same, but a pod bound by name (or by a controller racing another) never met it.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;

/// (protocol, host IP, port) a pod's container asks the node for.
pub(crate) type HostPort = (String, String, i32);

/// The reason a pod refused for its host ports fails with.
pub(crate) const NODE_PORTS_REASON: &str = "NodePorts";
/// Its message, as upstream words it.
pub(crate) const NODE_PORTS_MESSAGE: &str = "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports";

/// The host ports a pod asks for.
pub(crate) fn host_ports_of(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            let ip =
                p.host_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| "0.0.0.0".into());
            Some((p.protocol.clone().unwrap_or_else(|| "TCP".into()), ip, port))
        })
        .collect()
}

/// Whether two host ports collide: same protocol and port, and the same address or either
/// one on every address.
fn collide(a: &HostPort, b: &HostPort) -> bool {
    a.0 == b.0 && a.2 == b.2 && (a.1 == b.1 || a.1 == "0.0.0.0" || b.1 == "0.0.0.0")
}

/// The host ports of admitted pods.
#[derive(Debug, Default)]
pub(crate) struct HostPorts(Mutex<HashMap<String, Vec<HostPort>>>);

impl HostPorts {
    /// Admits pod `uid` with `ports` unless another admitted pod holds one of them
    /// (`force`: a pod that already runs, adopted after a restart, is admitted regardless).
    pub(crate) fn admit(&self, uid: &str, ports: Vec<HostPort>, force: bool) -> bool {
        let mut held = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.contains_key(uid) {
            return true;
        }
        let taken = held
            .iter()
            .filter(|(other, _)| other.as_str() != uid)
            .any(|(_, theirs)| ports.iter().any(|p| theirs.iter().any(|t| collide(p, t))));
        if taken && !force {
            return false;
        }
        held.insert(uid.to_owned(), ports);
        true
    }

    /// Gives back what pod `uid` held (it finished, failed or is gone).
    pub(crate) fn release(&self, uid: &str) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(port: i32, ip: Option<&str>, protocol: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"spec": {"containers": [{"name": "c",
            "ports": [{"containerPort": 80, "hostPort": port, "hostIP": ip, "protocol": protocol}]}]}}))
        .expect("a pod")
    }

    #[test]
    fn a_taken_host_port_is_refused_until_released() {
        let ports = HostPorts::default();
        assert!(ports.admit("a", host_ports_of(&pod(8080, None, "TCP")), false));
        assert!(!ports.admit("b", host_ports_of(&pod(8080, Some("10.0.0.1"), "TCP")), false));
        assert!(ports.admit("c", host_ports_of(&pod(8080, None, "UDP")), false));
        assert!(
            ports.admit("a", host_ports_of(&pod(8080, None, "TCP")), false),
            "re-admission of the holder"
        );
        ports.release("a");
        assert!(ports.admit("b", host_ports_of(&pod(8080, Some("10.0.0.1"), "TCP")), false));
    }
}
