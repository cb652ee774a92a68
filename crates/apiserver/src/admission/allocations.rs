//! Repair of the allocation claims in the store (upstream's ipallocator and portallocator
//! repair loops): a claim is released once the Service that holds it is gone or no longer
//! uses the item (and the claim is old enough not to belong to a create still in flight);
//! a Service whose address or ports carry no claim (written before claims were kept) gets
//! them. Run by the API server every few seconds.

use std::collections::HashMap;

use serde_json::Value;

use super::Objects;
use super::service_cluster_ip::SERVICE_IPS;
use super::service_node_port::NODE_PORTS;
use crate::status::ApiResult;

/// How old a claim with no Service using it must be before it is released: a create claims
/// before it writes the Service.
pub const MIN_AGE_SECONDS: i64 = 30;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Repaired {
    /// Claims released.
    pub released: usize,
    /// Claims made for Services that lacked them.
    pub claimed: usize,
    /// Items two Services use at once (an operator must look).
    pub conflicts: usize,
}

/// The items of each range a Service uses.
fn items_of(service: &Value) -> [(&'static str, Vec<String>); 2] {
    let spec = service.get("spec");
    let ip = spec.and_then(|s| s.get("clusterIP")).and_then(Value::as_str).unwrap_or("");
    let external = spec.and_then(|s| s.get("type")).and_then(Value::as_str) == Some("ExternalName");
    let ips = if ip.is_empty() || ip == "None" || external { vec![] } else { vec![ip.to_owned()] };
    let mut ports: Vec<String> = spec
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
        .filter(|n| *n != 0)
        .map(|n| n.to_string())
        .collect();
    if let Some(h) = spec.and_then(|s| s.get("healthCheckNodePort")).and_then(Value::as_i64) {
        ports.push(h.to_string());
    }
    [(SERVICE_IPS, ips), (NODE_PORTS, ports)]
}

/// One pass over every claim and Service; `now` in Unix seconds.
pub async fn repair(objects: &dyn Objects, now: i64) -> ApiResult<Repaired> {
    let rt = objects.served("", "v1", "services")?;
    let services = objects.list(&rt, None).await?;
    let mut used: HashMap<(&'static str, String), String> = HashMap::new();
    let mut done = Repaired::default();
    for service in &services {
        let meta = service.get("metadata");
        let owner = format!(
            "{}/{}",
            meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or(""),
            meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("")
        );
        for (range, items) in items_of(service) {
            for item in items {
                used.insert((range, item), owner.clone());
            }
        }
    }
    for range in [SERVICE_IPS, NODE_PORTS] {
        let claims = objects.claims(range).await?;
        for claim in &claims {
            let holder = used.get(&(range, claim.item.clone()));
            if holder != Some(&claim.owner) && now - claim.since >= MIN_AGE_SECONDS {
                objects.release(range, &claim.item, &claim.owner).await?;
                done.released += 1;
            }
        }
        for ((r, item), owner) in used.iter().filter(|((r, _), _)| *r == range) {
            let _ = r;
            if claims.iter().any(|c| &c.item == item && &c.owner == owner) {
                continue;
            }
            if objects.claim(range, item, owner).await? {
                done.claimed += 1;
            } else {
                done.conflicts += 1;
                tracing::warn!(range, item, owner, "two Services use the same allocated item");
            }
        }
    }
    Ok(done)
}

/// ServiceAllocationRelease (krust's name): an update that stops using an address or node
/// port (a change of type, a port removed) gives it back at once, once the update passed
/// validation, so it can be asked for again (upstream releases in the same transaction).
/// A deleted Service's items go back through [`repair`]: until its finalizers let it go, it
/// still holds them.
pub struct ServiceAllocationRelease;

impl super::Validating for ServiceAllocationRelease {
    fn name(&self) -> &'static str {
        "ServiceAllocationRelease"
    }

    fn applies(&self, attributes: &super::Attributes<'_>) -> bool {
        attributes.operation == super::Operation::Update
            && attributes.subresource.is_none()
            && attributes.is("", "Service")
            && !attributes.dry_run
    }

    fn validate<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a super::Attributes<'a>,
        object: Option<&'a Value>,
    ) -> futures::future::BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let (Some(old), Some(new)) = (attributes.old, object) else { return Ok(()) };
            let owner = super::service_cluster_ip::owner_of(attributes, new);
            for ((range, before), (_, after)) in items_of(old).into_iter().zip(items_of(new)) {
                for item in before.iter().filter(|i| !after.contains(i)) {
                    objects.release(range, item, &owner).await?;
                }
            }
            Ok(())
        })
    }
}
