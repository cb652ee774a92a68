//! Service: DNS-1035 names, upstream's defaults, ports, the allocated addresses an update
//! keeps, and `kubectl get svc` columns. The ClusterIP itself is allocated by admission.

use serde_json::{Value, json};

use crate::registry::{set_default, spec_mut};
use crate::status::Cause;
use crate::strategy::{NameRule, Strategy};
use crate::table::{AGE, Column, NAME, age_of, col, label_map_string, n, or_none, s};

/// The Service strategy.
#[derive(Debug)]
pub struct Services;

impl Strategy for Services {
    fn name_rule(&self) -> NameRule {
        NameRule::Dns1035Label
    }

    fn default(&self, object: &mut Value) {
        let Some(spec) = spec_mut(object) else { return };
        set_default(spec, "type", json!("ClusterIP"));
        set_default(spec, "sessionAffinity", json!("None"));
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                set_default(p, "protocol", json!("TCP"));
                if p.get("targetPort").is_none()
                    && let Some(port) = p.get("port").cloned()
                {
                    p.insert("targetPort".into(), port);
                }
            }
        }
    }

    fn prepare_update(&self, new: &mut Value, old: &Value) {
        // An update that leaves the allocated addresses out keeps them, as upstream does, so
        // that `kubectl replace` of a manifest without a clusterIP works.
        let external = new.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
        let Some(spec) = spec_mut(new) else { return };
        if external {
            return;
        }
        for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            let unset = spec.get(field).is_none_or(|v| v.is_null() || v == "");
            if unset && let Some(v) = old.pointer(&format!("/spec/{field}")) {
                spec.insert(field.into(), v.clone());
            }
        }
    }

    fn validate(&self, object: &Value, causes: &mut Vec<Cause>) {
        if let Some(ports) = object.pointer("/spec/ports").and_then(Value::as_array) {
            for (i, port) in ports.iter().enumerate() {
                let p = port.get("port").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&p) {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        &format!("spec.ports[{i}].port"),
                        format!("Invalid value: {p}: must be between 1 and 65535, inclusive"),
                    ));
                }
            }
        }
    }

    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
        let ip = |o: &Value| {
            o.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("").to_owned()
        };
        let external =
            |o: &Value| o.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
        if !external(old) && !external(new) && !ip(old).is_empty() && ip(new) != ip(old) {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "spec.clusterIPs[0]",
                format!("Invalid value: []string{{\"{}\"}}: may not change once set", ip(new)),
            ));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            AGE,
            col("Selector", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        let svc_type = s(obj, "/spec/type");
        let mut external: Vec<String> = obj
            .pointer("/spec/externalIPs")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        for i in obj
            .pointer("/status/loadBalancer/ingress")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ip = s(i, "/ip");
            external.push(if ip.is_empty() { s(i, "/hostname").to_owned() } else { ip.to_owned() });
        }
        let external = if !external.is_empty() {
            external.join(",")
        } else if svc_type == "LoadBalancer" {
            "<pending>".into()
        } else if svc_type == "ExternalName" {
            s(obj, "/spec/externalName").to_owned()
        } else {
            "<none>".into()
        };
        let ports: Vec<String> = obj
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                match p.get("nodePort").and_then(Value::as_i64) {
                    Some(np) => format!("{}:{np}/{proto}", n(p, "/port")),
                    None => format!("{}/{proto}", n(p, "/port")),
                }
            })
            .collect();
        vec![
            json!(s(obj, "/metadata/name")),
            json!(svc_type),
            json!(or_none(s(obj, "/spec/clusterIP").to_owned())),
            json!(external),
            json!(or_none(ports.join(","))),
            json!(age_of(obj, "/metadata/creationTimestamp", now)),
            json!(or_none(label_map_string(obj.pointer("/spec/selector")))),
        ]
    }
}
