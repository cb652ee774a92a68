//! ServiceNodePortAllocation (krust's name; upstream allocates in the Service registry):
//! every port of a `NodePort` or `LoadBalancer` Service gets a node port from
//! `--service-node-port-range` (one it asks for when that is in the range and free, the one
//! it had on an update), and a `LoadBalancer` Service with `externalTrafficPolicy: Local` a
//! `healthCheckNodePort`. A type without node ports loses them in the strategy. Ports are
//! claimed in the store (`servicenodeports`) like service addresses.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::service_cluster_ip::{owner_of, used_by_others};
use super::{Attributes, Hold, Mutating, Objects, Operation};
use crate::status::{ApiError, ApiResult, Cause};

/// An inclusive range of ports, as `--service-node-port-range` gives it (`30000-32767`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port.
    pub last: u16,
}

impl PortRange {
    /// Upstream's default range.
    pub const DEFAULT: PortRange = PortRange { first: 30000, last: 32767 };

    /// Parses `first-last` (or one port).
    pub fn parse(s: &str) -> Option<PortRange> {
        let (first, last) = s.split_once('-').unwrap_or((s, s));
        let range =
            PortRange { first: first.trim().parse().ok()?, last: last.trim().parse().ok()? };
        (range.first >= 1 && range.first <= range.last).then_some(range)
    }

    fn contains(&self, port: i64) -> bool {
        (i64::from(self.first)..=i64::from(self.last)).contains(&port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The allocation range of node ports in the store.
pub const NODE_PORTS: &str = "servicenodeports";

/// Whether a Service of this shape has node ports.
pub fn wants_node_ports(service: &Value) -> bool {
    match service.pointer("/spec/type").and_then(Value::as_str) {
        Some("NodePort") => true,
        Some("LoadBalancer") => {
            service.pointer("/spec/allocateLoadBalancerNodePorts").and_then(Value::as_bool)
                != Some(false)
        }
        _ => false,
    }
}

/// Whether a Service of this shape has a health check node port.
pub fn wants_health_check_port(service: &Value) -> bool {
    service.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
        && service.pointer("/spec/externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
}

/// Every node port a Service holds.
fn node_ports(service: &Value) -> Vec<i64> {
    let mut ports: Vec<i64> = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
        .filter(|p| *p != 0)
        .collect();
    if let Some(h) = service.pointer("/spec/healthCheckNodePort").and_then(Value::as_i64) {
        ports.push(h);
    }
    ports
}

/// The plugin, with the range it allocates from.
pub struct ServiceNodePort {
    range: PortRange,
    lock: Arc<Mutex<()>>,
}

impl ServiceNodePort {
    pub(super) fn new(range: PortRange, lock: Arc<Mutex<()>>) -> Self {
        ServiceNodePort { range, lock }
    }

    /// A free port of the range, claimed in the store for `owner`.
    async fn allocate(
        &self,
        objects: &dyn Objects,
        used: &mut HashSet<i64>,
        owner: &str,
    ) -> ApiResult<i64> {
        use rand::Rng;
        let size = i64::from(self.range.last) - i64::from(self.range.first) + 1;
        let offset = rand::rng().random_range(0..size);
        for i in 0..size {
            let port = i64::from(self.range.first) + (offset + i) % size;
            // Another server may have claimed it since the list: try the next one.
            if used.insert(port) && objects.claim(NODE_PORTS, &port.to_string(), owner).await? {
                return Ok(port);
            }
        }
        Err(ApiError::internal("failed to allocate a nodePort: range is full"))
    }

    /// Why `port` cannot be given, as upstream words it.
    fn refuse(&self, port: i64, used: &HashSet<i64>) -> Option<String> {
        if !self.range.contains(port) {
            return Some(format!(
                "Invalid value: {port}: provided port is not in the valid range. The range of valid ports is {}",
                self.range
            ));
        }
        used.contains(&port)
            .then(|| format!("Invalid value: {port}: provided port is already allocated"))
    }
}

impl Mutating for ServiceNodePort {
    fn name(&self) -> &'static str {
        "ServiceNodePortAllocation"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        matches!(attributes.operation, Operation::Create | Operation::Update)
            && attributes.subresource.is_none()
            && attributes.is("", "Service")
    }

    fn admit<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a mut Value>,
    ) -> BoxFuture<'a, ApiResult<Hold>> {
        Box::pin(async move {
            let Some(object) = object else { return Ok(None) };
            let (ports_wanted, health_wanted) =
                (wants_node_ports(object), wants_health_check_port(object));
            if !ports_wanted && !health_wanted {
                return Ok(None);
            }
            let guard = self.lock.clone().lock_owned().await;
            let owner = owner_of(attributes, object);
            let mut used = used_by_others(objects, attributes.namespace, attributes.name, |s| {
                node_ports(s).into_iter().map(|p| p.to_string()).collect()
            })
            .await?
            .into_iter()
            .chain(
                objects
                    .claims(NODE_PORTS)
                    .await?
                    .into_iter()
                    .filter(|c| c.owner != owner)
                    .map(|c| c.item),
            )
            .filter_map(|p| p.parse::<i64>().ok())
            .collect::<HashSet<i64>>();
            let old_ports: Vec<Value> = attributes
                .old
                .and_then(|o| o.pointer("/spec/ports"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut causes = Vec::new();
            let mut asked = HashSet::new();
            let ports = object.pointer_mut("/spec/ports").and_then(Value::as_array_mut);
            if ports_wanted && let Some(ports) = ports {
                // Ports asked for first, so an allocated one never takes a port asked for
                // further down the list.
                for (i, port) in ports.iter().enumerate() {
                    let Some(n) = port.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0)
                    else {
                        continue;
                    };
                    let kept = old_ports
                        .iter()
                        .any(|o| o.get("nodePort").and_then(Value::as_i64) == Some(n));
                    let protocol = port.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    if !asked.insert((n, protocol.to_owned())) {
                        causes.push(Cause::new(
                            "FieldValueDuplicate",
                            &format!("spec.ports[{i}].nodePort"),
                            format!("Duplicate value: {n}"),
                        ));
                    } else if !kept && let Some(message) = self.refuse(n, &used) {
                        causes.push(Cause::new(
                            "FieldValueInvalid",
                            &format!("spec.ports[{i}].nodePort"),
                            message,
                        ));
                    } else if !objects.claim(NODE_PORTS, &n.to_string(), &owner).await? {
                        causes.push(Cause::new(
                            "FieldValueInvalid",
                            &format!("spec.ports[{i}].nodePort"),
                            format!("Invalid value: {n}: provided port is already allocated"),
                        ));
                    }
                }
                used.extend(asked.iter().map(|(n, _)| *n));
                for port in ports.iter_mut() {
                    if port.get("nodePort").and_then(Value::as_i64).is_some_and(|n| n != 0) {
                        continue;
                    }
                    // An update keeps the node port the same port had.
                    let same = |o: &&Value| {
                        o.get("port") == port.get("port")
                            && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                                == port.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                    };
                    let previous = old_ports
                        .iter()
                        .find(same)
                        .and_then(|o| o.get("nodePort").and_then(Value::as_i64))
                        .filter(|n| *n != 0 && !used.contains(n));
                    let previous = match previous {
                        Some(n) if objects.claim(NODE_PORTS, &n.to_string(), &owner).await? => {
                            Some(n)
                        }
                        _ => None,
                    };
                    let n = match previous {
                        Some(n) => {
                            used.insert(n);
                            n
                        }
                        None => self.allocate(objects, &mut used, &owner).await?,
                    };
                    if let Some(p) = port.as_object_mut() {
                        p.insert("nodePort".into(), json!(n));
                    }
                }
            }
            if health_wanted {
                let asked = object
                    .pointer("/spec/healthCheckNodePort")
                    .and_then(Value::as_i64)
                    .filter(|n| *n != 0);
                let previous = attributes
                    .old
                    .and_then(|o| o.pointer("/spec/healthCheckNodePort"))
                    .and_then(Value::as_i64);
                match asked {
                    Some(n) if Some(n) == previous => {
                        objects.claim(NODE_PORTS, &n.to_string(), &owner).await?;
                    }
                    Some(n) => {
                        if let Some(message) = self.refuse(n, &used) {
                            causes.push(Cause::new(
                                "FieldValueInvalid",
                                "spec.healthCheckNodePort",
                                message,
                            ));
                        } else if !objects.claim(NODE_PORTS, &n.to_string(), &owner).await? {
                            causes.push(Cause::new(
                                "FieldValueInvalid",
                                "spec.healthCheckNodePort",
                                format!("Invalid value: {n}: provided port is already allocated"),
                            ));
                        }
                    }
                    None => {
                        let kept = match previous.filter(|n| !used.contains(n)) {
                            Some(n)
                                if objects.claim(NODE_PORTS, &n.to_string(), &owner).await? =>
                            {
                                Some(n)
                            }
                            _ => None,
                        };
                        let n = match kept {
                            Some(n) => n,
                            None => self.allocate(objects, &mut used, &owner).await?,
                        };
                        if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                            spec.insert("healthCheckNodePort".into(), json!(n));
                        }
                    }
                }
            }
            if !causes.is_empty() {
                let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                return Err(ApiError::invalid("Service", "", name, causes));
            }
            Ok(Some(guard))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_the_flag_gives_them() {
        assert_eq!(PortRange::parse("30000-32767"), Some(PortRange::DEFAULT));
        assert_eq!(PortRange::parse("8080"), Some(PortRange { first: 8080, last: 8080 }));
        assert_eq!(PortRange::parse("2-1"), None);
        assert_eq!(PortRange::parse("a-b"), None);
    }

    #[test]
    fn shapes_with_node_ports() {
        assert!(wants_node_ports(&json!({"spec": {"type": "NodePort"}})));
        assert!(wants_node_ports(&json!({"spec": {"type": "LoadBalancer"}})));
        assert!(!wants_node_ports(
            &json!({"spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false}})
        ));
        assert!(!wants_node_ports(&json!({"spec": {"type": "ClusterIP"}})));
        assert!(wants_health_check_port(
            &json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"}})
        ));
    }
}
