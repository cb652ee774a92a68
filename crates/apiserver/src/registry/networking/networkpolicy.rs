//! NetworkPolicy: upstream's validation of address blocks, ports and policy types (each
//! node's service proxy enforces the policies), and `kubectl get` columns.

use serde_json::{Value, json};

use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{AGE, Column, NAME, age_of, col, or_none, s};

/// The NetworkPolicies strategy.
#[derive(Debug)]
pub struct NetworkPolicies;

/// Whether `text` is a CIDR (`a.b.c.d/n` or an IPv6 one).
fn valid_cidr(text: &str) -> bool {
    text.split_once('/').is_some_and(|(ip, prefix)| match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix.parse::<u8>().is_ok_and(|p| p <= 32),
        Ok(std::net::IpAddr::V6(_)) => prefix.parse::<u8>().is_ok_and(|p| p <= 128),
        Err(_) => false,
    })
}

fn invalid(field: String, value: &str, why: &str) -> Cause {
    Cause::new("FieldValueInvalid", &field, format!("Invalid value: \"{value}\": {why}"))
}

fn validate_peers(peers: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    const CIDR: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
    for (i, peer) in peers.and_then(Value::as_array).into_iter().flatten().enumerate() {
        let Some(block) = peer.get("ipBlock") else { continue };
        let base = format!("{path}[{i}].ipBlock");
        let cidr = block.get("cidr").and_then(Value::as_str).unwrap_or("");
        if cidr.is_empty() {
            causes.push(Cause::new(
                "FieldValueRequired",
                &format!("{base}.cidr"),
                "Required value",
            ));
        } else if !valid_cidr(cidr) {
            causes.push(invalid(format!("{base}.cidr"), cidr, CIDR));
        }
        for (j, except) in
            block.get("except").and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            let text = except.as_str().unwrap_or("");
            if !valid_cidr(text) {
                causes.push(invalid(format!("{base}.except[{j}]"), text, CIDR));
            }
        }
        if peer.get("podSelector").is_some() || peer.get("namespaceSelector").is_some() {
            causes.push(Cause::new(
                "FieldValueForbidden",
                &format!("{path}[{i}]"),
                "Forbidden: may not specify more than 1 peer type",
            ));
        }
    }
}

fn validate_ports(ports: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    for (i, port) in ports.and_then(Value::as_array).into_iter().flatten().enumerate() {
        let protocol = port.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                &format!("{path}[{i}].protocol"),
                format!("Unsupported value: \"{protocol}\": supported values: \"SCTP\", \"TCP\", \"UDP\""),
            ));
        }
        if let Some(n) = port.get("port").and_then(Value::as_i64)
            && !(1..=65535).contains(&n)
        {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{path}[{i}].port"),
                format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
            ));
        }
        if let Some(end) = port.get("endPort").and_then(Value::as_i64) {
            let start = port.get("port").and_then(Value::as_i64);
            match start {
                Some(start) if end >= start => {}
                Some(_) => causes.push(Cause::new(
                    "FieldValueInvalid",
                    &format!("{path}[{i}].endPort"),
                    format!("Invalid value: {end}: must be greater than or equal to `port`"),
                )),
                None => causes.push(Cause::new(
                    "FieldValueRequired",
                    &format!("{path}[{i}].port"),
                    "Required value: must be specified when `endPort` is specified",
                )),
            }
        }
    }
}

impl Strategy for NetworkPolicies {
    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        for (key, peers) in [("ingress", "from"), ("egress", "to")] {
            for (i, rule) in object
                .pointer(&format!("/spec/{key}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                validate_peers(rule.get(peers), &format!("spec.{key}[{i}].{peers}"), causes);
                validate_ports(rule.get("ports"), &format!("spec.{key}[{i}].ports"), causes);
            }
        }
        for (i, t) in object
            .pointer("/spec/policyTypes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let t = t.as_str().unwrap_or("");
            if !matches!(t, "Ingress" | "Egress") {
                causes.push(Cause::new(
                    "FieldValueNotSupported",
                    &format!("spec.policyTypes[{i}]"),
                    format!(
                        "Unsupported value: \"{t}\": supported values: \"Egress\", \"Ingress\""
                    ),
                ));
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, col("Pod-Selector", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(or_none(crate::table::label_selector_string(obj.pointer("/spec/podSelector")))),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_blocks_and_ports_are_refused() {
        let policy = json!({"spec": {"podSelector": {}, "ingress": [{
            "from": [{"ipBlock": {"cidr": "10.0.0.0/33", "except": ["nonsense"]}}],
            "ports": [{"port": 90, "endPort": 80}]}]}});
        let mut causes = Vec::new();
        NetworkPolicies.validate(&policy, &mut causes);
        let got: Vec<String> =
            causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        assert_eq!(
            got,
            [
                "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"nonsense\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                "spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`",
            ]
        );
        let mut causes = Vec::new();
        NetworkPolicies.validate(&json!({"spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}]}}), &mut causes);
        assert!(causes.is_empty());
    }
}
