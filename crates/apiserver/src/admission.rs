//! Admission: what every create of a type goes through after authorization and before the
//! registry stores it, whichever verb created it (POST or a server-side apply).

use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

use crate::cidr::Ipv4Cidr;
use crate::rest::{ListOptions, Rest};
use crate::status::{ApiError, ApiResult};

/// Admission state: the service network and the lock that keeps two creates from taking the
/// same ClusterIP. (Within one API server; several servers sharing etcd need an allocator
/// object in the store, which comes with the HA issue.)
#[derive(Debug)]
pub struct Admission {
    service_cidr: Ipv4Cidr,
    cluster_cidr: Option<Ipv4Cidr>,
    ip_lock: Mutex<()>,
}

/// The prefix of each node's pod CIDR, as k3s and kube-controller-manager default to.
const NODE_CIDR_PREFIX: u8 = 24;

impl Admission {
    /// Admission for a cluster whose Services take addresses from `service_cidr` and whose
    /// nodes take /24 pod networks from `cluster_cidr`.
    pub fn new(service_cidr: Ipv4Cidr, cluster_cidr: Option<Ipv4Cidr>) -> Admission {
        Admission { service_cidr, cluster_cidr, ip_lock: Mutex::new(()) }
    }

    /// Mutates `object` before it is created. The returned guard must be held until the
    /// object is stored, so that what admission chose stays unique.
    pub(crate) async fn admit_create(
        &self,
        rest: &Rest,
        kind: &str,
        object: &mut Value,
    ) -> ApiResult<Option<MutexGuard<'_, ()>>> {
        if kind == "CustomResourceDefinition" {
            // Names are accepted and the types served as soon as the definition is stored.
            if let Some(obj) = object.as_object_mut() {
                let status = crate::crd::established_status(&Value::Object(obj.clone()));
                obj.insert("status".into(), status);
            }
            return Ok(None);
        }
        if kind == "Node" {
            return self.admit_node(rest, object).await;
        }
        if kind == "Pod" && object.get("apiVersion").and_then(Value::as_str) == Some("v1") {
            crate::pods::admit(rest, object).await?;
            return Ok(None);
        }
        if kind != "Service" {
            return Ok(None);
        }
        let svc_type =
            object.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_owned();
        let has_ip = object
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        if svc_type == "ExternalName" || has_ip {
            return Ok(None);
        }
        let guard = self.ip_lock.lock().await;
        let ip = self.allocate_cluster_ip(rest).await?;
        let obj = object
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
        let spec = obj.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
            spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
            spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
            spec.entry("internalTrafficPolicy").or_insert(json!("Cluster"));
        }
        Ok(Some(guard))
    }

    /// Gives a new Node a pod network from the cluster CIDR (upstream's node-ipam controller
    /// does this right after registration; doing it at admission means the agent has its
    /// network as soon as it has its Node).
    async fn admit_node(
        &self,
        rest: &Rest,
        object: &mut Value,
    ) -> ApiResult<Option<MutexGuard<'_, ()>>> {
        let Some(cluster) = self.cluster_cidr else { return Ok(None) };
        let has_cidr =
            object.pointer("/spec/podCIDR").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
        if has_cidr || cluster.prefix > NODE_CIDR_PREFIX {
            return Ok(None);
        }
        let guard = self.ip_lock.lock().await;
        let rt = rest
            .registry
            .lookup("", "v1", "nodes")
            .ok_or_else(|| ApiError::internal("nodes are not served"))?;
        let page = rest.list(&rt, None, &ListOptions::default()).await?;
        let used: std::collections::HashSet<String> = page
            .objects()?
            .iter()
            .filter_map(|n| n.pointer("/spec/podCIDR").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let count = 1u32 << (NODE_CIDR_PREFIX - cluster.prefix);
        let step = 1u32 << (32 - NODE_CIDR_PREFIX);
        let free = (0..count)
            .filter_map(|i| cluster.nth(i * step))
            .map(|net| format!("{net}/{NODE_CIDR_PREFIX}"))
            .find(|cidr| !used.contains(cidr));
        let Some(cidr) = free else {
            // Upstream registers the node anyway and reports CIDRNotAvailable; so do we.
            tracing::warn!("no pod CIDR left in the cluster CIDR for a new node");
            return Ok(Some(guard));
        };
        let obj = object
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
        let spec = obj.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("podCIDR".into(), json!(cidr));
            spec.insert("podCIDRs".into(), json!([cidr]));
        }
        Ok(Some(guard))
    }

    async fn allocate_cluster_ip(&self, rest: &Rest) -> ApiResult<String> {
        let rt = rest
            .registry
            .lookup("", "v1", "services")
            .ok_or_else(|| ApiError::internal("services are not served"))?;
        let page = rest.list(&rt, None, &ListOptions::default()).await?;
        let used: std::collections::HashSet<String> = page
            .objects()?
            .iter()
            .filter_map(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str).map(str::to_owned))
            .collect();
        use rand::Rng;
        // Skip the network address, the first address (the `kubernetes` Service) and the
        // broadcast address; start at a random offset so that a freed address is not reused
        // at once.
        let usable = self.service_cidr.size().saturating_sub(3);
        let first = if usable == 0 { 0 } else { rand::rng().random_range(0..usable) };
        for i in 0..usable {
            if let Some(ip) = self.service_cidr.nth(2 + (first + i) % usable) {
                let ip = ip.to_string();
                if !used.contains(&ip) {
                    return Ok(ip);
                }
            }
        }
        Err(ApiError::internal("failed to allocate a serviceIP: range is full"))
    }
}
