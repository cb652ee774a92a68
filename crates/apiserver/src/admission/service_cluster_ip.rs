//! ServiceClusterIPAllocation (krust's name; upstream allocates in the Service registry): a
//! new Service without a `clusterIP` gets a free address of the service network.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{Attributes, Hold, Mutating, Objects, Operation};
use crate::cidr::Ipv4Cidr;
use crate::status::{ApiError, ApiResult};

/// The plugin, with the service network it allocates from.
pub struct ServiceClusterIp {
    service_cidr: Ipv4Cidr,
    lock: Arc<Mutex<()>>,
}

impl ServiceClusterIp {
    pub(super) fn new(service_cidr: Ipv4Cidr, lock: Arc<Mutex<()>>) -> Self {
        ServiceClusterIp { service_cidr, lock }
    }

    async fn allocate(&self, objects: &dyn Objects) -> ApiResult<String> {
        let rt = objects.served("", "v1", "services")?;
        let services = objects.list(&rt, None).await?;
        let used: std::collections::HashSet<String> = services
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

impl Mutating for ServiceClusterIp {
    fn name(&self) -> &'static str {
        "ServiceClusterIPAllocation"
    }

    fn applies(&self, attributes: &Attributes<'_>) -> bool {
        attributes.operation == Operation::Create && attributes.is("", "Service")
    }

    fn admit<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a mut Value>,
    ) -> BoxFuture<'a, ApiResult<Hold>> {
        Box::pin(async move {
            let Some(object) = object else { return Ok(None) };
            if attributes.operation != Operation::Create || !attributes.is("", "Service") {
                return Ok(None);
            }
            let svc_type =
                object.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
            let has_ip = object
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if svc_type == "ExternalName" || has_ip {
                return Ok(None);
            }
            let guard = self.lock.clone().lock_owned().await;
            let ip = self.allocate(objects).await?;
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
        })
    }
}
