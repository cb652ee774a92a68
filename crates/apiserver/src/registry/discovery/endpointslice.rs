//! EndpointSlice: addresses valid for their type and never special ones (loopback,
//! link-local, unspecified, link-local multicast: a proxy would send Service traffic to the
//! node itself), and `kubectl get endpointslices` columns.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, n, or_none, s};

/// The EndpointSlices strategy.
#[derive(Debug)]
pub struct EndpointSlices;

impl Strategy for EndpointSlices {
    fn validate(&self, object: &Value, causes: &mut Vec<crate::status::Cause>) {
        let ipv4 = object.get("addressType").and_then(Value::as_str) == Some("IPv4");
        for (i, endpoint) in
            object.get("endpoints").and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            for (j, address) in endpoint
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let text = address.as_str().unwrap_or("");
                let field = format!("endpoints[{i}].addresses[{j}]");
                if ipv4 && text.parse::<std::net::Ipv4Addr>().is_err() {
                    causes.push(crate::status::Cause::new(
                        "FieldValueInvalid",
                        &field,
                        format!("Invalid value: \"{text}\": must be a valid IPv4 address"),
                    ));
                } else if let Some(cause) =
                    crate::registry::core::endpoints::special_ip(text, &field)
                {
                    causes.push(cause);
                }
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("AddressType", "string", 0),
            col("Ports", "string", 0),
            col("Endpoints", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let ports: Vec<String> = obj
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| n(p, "/port").to_string())
            .collect();
        let addresses: Vec<&str> = obj
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.pointer("/addresses/0").and_then(Value::as_str))
            .collect();
        let endpoints = if addresses.len() > 3 {
            format!("{} + {} more...", addresses[..3].join(","), addresses.len() - 3)
        } else {
            addresses.join(",")
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/addressType")),
            json!(or_none(ports.join(",")).replace("<none>", "<unset>")),
            json!(or_none(endpoints).replace("<none>", "<unset>")),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
