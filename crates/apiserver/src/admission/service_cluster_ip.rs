//! ServiceClusterIPAllocation (krust's name; upstream allocates in the Service registry): a
//! Service without a `clusterIP` gets a free address of the service network, one that asks
//! for an address gets it when it is in the network and free, and a Service changed from
//! `ExternalName` to another type gets one then.
//!
//! Every address is claimed in the store (`serviceips`) with a compare-and-swap before the
//! Service is written, so API servers sharing a store never hand out the same one; claims
//! whose Service is gone or no longer uses them are released by `repair`.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{Attributes, Hold, Mutating, Objects, Operation};
use crate::cidr::Ipv4Cidr;
use crate::status::{ApiError, ApiResult, Cause};

/// The plugin, with the service network it allocates from.
pub struct ServiceClusterIp {
    service_cidr: Ipv4Cidr,
    lock: Arc<Mutex<()>>,
}

/// The allocation range of service addresses in the store.
pub const SERVICE_IPS: &str = "serviceips";

/// `namespace/name`, who holds a claim.
pub(super) fn owner_of(attributes: &Attributes<'_>, object: &Value) -> String {
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(attributes.name);
    format!("{}/{name}", attributes.namespace.unwrap_or(""))
}

/// A Service's `clusterIP`, "" when unset.
fn cluster_ip(service: &Value) -> &str {
    service.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("")
}

fn is_external_name(service: &Value) -> bool {
    service.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName")
}

/// The addresses other Services hold.
pub(super) async fn used_by_others(
    objects: &dyn Objects,
    namespace: Option<&str>,
    name: &str,
    of: impl Fn(&Value) -> Vec<String>,
) -> ApiResult<HashSet<String>> {
    let rt = objects.served("", "v1", "services")?;
    let services = objects.list(&rt, None).await?;
    let itself = |s: &Value| {
        s.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
            && s.pointer("/metadata/namespace").and_then(Value::as_str) == namespace
    };
    Ok(services.iter().filter(|s| !itself(s)).flat_map(of).collect())
}

impl ServiceClusterIp {
    pub(super) fn new(service_cidr: Ipv4Cidr, lock: Arc<Mutex<()>>) -> Self {
        ServiceClusterIp { service_cidr, lock }
    }

    async fn allocate(
        &self,
        objects: &dyn Objects,
        used: &HashSet<String>,
        owner: &str,
    ) -> ApiResult<String> {
        use rand::Rng;
        // Skip the network address, the first address (the `kubernetes` Service) and the
        // broadcast address; start at a random offset so that a freed address is not reused
        // at once.
        let usable = self.service_cidr.size().saturating_sub(3);
        let first = if usable == 0 { 0 } else { rand::rng().random_range(0..usable) };
        for i in 0..usable {
            if let Some(ip) = self.service_cidr.nth(2 + (first + i) % usable) {
                let ip = ip.to_string();
                // Another server may have claimed it since the list: try the next one.
                if !used.contains(&ip) && objects.claim(SERVICE_IPS, &ip, owner).await? {
                    return Ok(ip);
                }
            }
        }
        Err(ApiError::internal("failed to allocate a serviceIP: range is full"))
    }

    /// Why `ip` cannot be given to this Service, as upstream words it.
    fn refuse(&self, ip: &str, used: &HashSet<String>) -> Option<String> {
        let in_range = ip
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .is_some_and(|a| self.service_cidr.contains(a) && a != self.service_cidr.network);
        if !in_range {
            return Some(format!(
                "Invalid value: \"{ip}\": provided IP is not in the valid range. The range of valid IPs is {}",
                self.service_cidr
            ));
        }
        used.contains(ip)
            .then(|| format!("Invalid value: \"{ip}\": provided IP is already allocated"))
    }
}

impl Mutating for ServiceClusterIp {
    fn name(&self) -> &'static str {
        "ServiceClusterIPAllocation"
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
            if is_external_name(object) {
                return Ok(None);
            }
            // Families this cluster does not serve are refused by the Service's validation,
            // which comes next: claim nothing for them.
            let spec = object.get("spec");
            let families_ok = spec
                .and_then(|s| s.get("ipFamilies"))
                .and_then(Value::as_array)
                .is_none_or(|f| f.len() <= 1 && f.iter().all(|f| f.as_str() == Some("IPv4")));
            let policy = spec.and_then(|s| s.get("ipFamilyPolicy")).and_then(Value::as_str);
            if !families_ok || !matches!(policy, None | Some("SingleStack" | "PreferDualStack")) {
                return Ok(None);
            }
            let requested = cluster_ip(object).to_owned();
            if requested == "None" {
                return Ok(None);
            }
            // An update that keeps the address it has needs nothing (the strategy refuses a
            // change of an address once set).
            let owner = owner_of(attributes, object);
            let kept = attributes.old.filter(|old| !is_external_name(old)).map(cluster_ip);
            if kept.is_some_and(|k| !k.is_empty() && k == requested) {
                // Claimed already (or before claims were kept in the store: claimed now).
                objects.claim(SERVICE_IPS, &requested, &owner).await?;
                return Ok(None);
            }
            let guard = self.lock.clone().lock_owned().await;
            let mut used = used_by_others(objects, attributes.namespace, attributes.name, |s| {
                let ip = cluster_ip(s);
                if ip.is_empty() || ip == "None" { Vec::new() } else { vec![ip.to_owned()] }
            })
            .await?;
            used.extend(
                objects
                    .claims(SERVICE_IPS)
                    .await?
                    .into_iter()
                    .filter(|c| c.owner != owner)
                    .map(|c| c.item),
            );
            let refusal = if requested.is_empty() {
                None
            } else if let Some(message) = self.refuse(&requested, &used) {
                Some(message)
            } else if objects.claim(SERVICE_IPS, &requested, &owner).await? {
                None
            } else {
                Some(format!("Invalid value: \"{requested}\": provided IP is already allocated"))
            };
            let ip = if requested.is_empty() {
                self.allocate(objects, &used, &owner).await?
            } else if let Some(message) = refusal {
                let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    name,
                    vec![Cause::new("FieldValueInvalid", "spec.clusterIPs[0]", message)],
                ));
            } else {
                requested
            };
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
