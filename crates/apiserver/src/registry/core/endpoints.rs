//! Endpoints: no special addresses (as for EndpointSlices), and `kubectl get endpoints`
//! shows the first addresses and ports.

use serde_json::{Value, json};

use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, n, or_none, s};

/// The Endpoints strategy.
#[derive(Debug)]
pub struct EndpointsStrategy;

/// Upstream's refusal of an address a proxy must never send Service traffic to.
pub(crate) fn special_ip(text: &str, field: &str) -> Option<crate::status::Cause> {
    let ip: std::net::IpAddr = text.parse().ok()?;
    let why = match ip {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => "may not be unspecified (0.0.0.0)",
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => "may not be unspecified (::)",
        ip if ip.is_loopback() => "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        std::net::IpAddr::V4(v4) if v4.is_link_local() => {
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
        }
        std::net::IpAddr::V4(v4) if v4.octets()[..3] == [224, 0, 0] => {
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"
        }
        _ => return None,
    };
    Some(crate::status::Cause::new(
        "FieldValueInvalid",
        field,
        format!("Invalid value: \"{text}\": {why}"),
    ))
}

impl Strategy for EndpointsStrategy {
    fn validate(&self, object: &Value, causes: &mut Vec<crate::status::Cause>) {
        for (i, subset) in
            object.get("subsets").and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            for key in ["addresses", "notReadyAddresses"] {
                for (j, address) in
                    subset.get(key).and_then(Value::as_array).into_iter().flatten().enumerate()
                {
                    let text = address.get("ip").and_then(Value::as_str).unwrap_or("");
                    let field = format!("subsets[{i}].{key}[{j}].ip");
                    if text.parse::<std::net::IpAddr>().is_err() {
                        causes.push(crate::status::Cause::new(
                            "FieldValueInvalid",
                            &field,
                            format!("Invalid value: \"{text}\": must be a valid IP address"),
                        ));
                    } else if let Some(cause) = special_ip(text, &field) {
                        causes.push(cause);
                    }
                }
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Endpoints", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let mut eps = Vec::new();
        for subset in obj.get("subsets").and_then(Value::as_array).into_iter().flatten() {
            let ports: Vec<i64> = subset
                .get("ports")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|p| n(p, "/port")).collect())
                .unwrap_or_default();
            for addr in subset.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                if ports.is_empty() {
                    eps.push(s(addr, "/ip").to_owned());
                }
                for p in &ports {
                    eps.push(format!("{}:{p}", s(addr, "/ip")));
                }
            }
        }
        let text = if eps.len() > 3 {
            format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
        } else {
            eps.join(",")
        };
        vec![
            json!(s(obj, "/metadata/name")),
            json!(or_none(text)),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}
