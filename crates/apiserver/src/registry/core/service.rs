//! Service: DNS-1035 names, upstream's defaults, ports, the allocated addresses an update
//! keeps, the fields a change of `type` drops, and `kubectl get svc` columns. The ClusterIP
//! and node ports themselves are allocated by admission.

use serde_json::{Value, json};

use crate::registry::{set_default, spec_mut};
use crate::status::Cause;
use crate::strategy::{NameRule, Strategy, Subresource};
use crate::table::{AGE, Column, NAME, age_of, col, label_map_string, n, or_none, s};

/// The Service strategy.
#[derive(Debug)]
pub struct Services;

impl Strategy for Services {
    fn name_rule(&self) -> NameRule {
        NameRule::Dns1035Label
    }

    fn subresources(&self) -> &'static [Subresource] {
        &[Subresource {
            name: "proxy",
            kind: Some(("", "v1", "ServiceProxyOptions")),
            verbs: &["create", "delete", "get", "patch", "update"],
        }]
    }

    fn default(&self, object: &mut Value) {
        let Some(spec) = spec_mut(object) else { return };
        set_default(spec, "type", json!("ClusterIP"));
        set_default(spec, "sessionAffinity", json!("None"));
        let service_type = spec.get("type").and_then(Value::as_str).unwrap_or("").to_owned();
        if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
            let config = spec.entry("sessionAffinityConfig").or_insert_with(|| json!({}));
            if let Some(config) = config.as_object_mut() {
                let client = config.entry("clientIP").or_insert_with(|| json!({}));
                if let Some(client) = client.as_object_mut() {
                    set_default(client, "timeoutSeconds", json!(10800));
                }
            }
        }
        if matches!(service_type.as_str(), "NodePort" | "LoadBalancer") {
            set_default(spec, "externalTrafficPolicy", json!("Cluster"));
        }
        if service_type == "LoadBalancer" {
            set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
        }
        if service_type != "ExternalName" {
            default_ip_families(spec);
        }
        // A headless Service has no address to allocate; its families are defaulted here.
        if spec.get("clusterIP").and_then(Value::as_str) == Some("None") {
            set_default(spec, "clusterIPs", json!(["None"]));
            set_default(spec, "ipFamilies", json!(["IPv4"]));
            set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        }
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
        drop_type_dependent_fields(new, old);
        // An update that leaves the allocated addresses out keeps them, as upstream does, so
        // that `kubectl replace` of a manifest without a clusterIP works.
        let external = new.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
        let old_external =
            old.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
        let Some(spec) = spec_mut(new) else { return };
        if external || old_external {
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
        validate_service(object, causes);
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

const TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

/// What a change of `type` makes meaningless goes, when the update left it as it was (so a
/// `kubectl edit` that only changes the type works, as upstream's registry does): node ports
/// for a type without them, the addresses for `ExternalName`.
fn drop_type_dependent_fields(new: &mut Value, old: &Value) {
    let service_type = new.pointer("/spec/type").and_then(Value::as_str).unwrap_or("").to_owned();
    let node_ports = matches!(service_type.as_str(), "NodePort" | "LoadBalancer")
        && new.pointer("/spec/allocateLoadBalancerNodePorts").and_then(Value::as_bool)
            != Some(false);
    let health_check = service_type == "LoadBalancer"
        && new.pointer("/spec/externalTrafficPolicy").and_then(Value::as_str) == Some("Local");
    let old_ports: Vec<Value> =
        old.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
    let old_spec = old.get("spec").cloned().unwrap_or_default();
    let Some(spec) = spec_mut(new) else { return };
    if !node_ports && let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            let n = port.get("nodePort").cloned();
            if n.is_some()
                && old_ports
                    .iter()
                    .any(|o| o.get("nodePort").is_some() && o.get("nodePort") == n.as_ref())
            {
                port.remove("nodePort");
            }
        }
    }
    if !health_check && spec.get("healthCheckNodePort") == old_spec.get("healthCheckNodePort") {
        spec.remove("healthCheckNodePort");
    }
    if service_type == "ExternalName" {
        for field in
            ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"]
        {
            if spec.get(field) == old_spec.get(field) {
                spec.remove(field);
            }
        }
    }
    if !matches!(service_type.as_str(), "NodePort" | "LoadBalancer")
        && spec.get("externalTrafficPolicy") == old_spec.get("externalTrafficPolicy")
    {
        spec.remove("externalTrafficPolicy");
    }
}

/// Upstream's validation of a Service, where it is observable.
/// Upstream's defaulting of the families on a single-stack cluster: two families or two
/// addresses without a policy ask for dual-stack (which validation then refuses here);
/// `PreferDualStack` keeps the first family.
fn default_ip_families(spec: &mut serde_json::Map<String, Value>) {
    let count = |field: &str| {
        spec.get(field).and_then(Value::as_array).map_or(0, |a| {
            a.iter().filter(|v| v.as_str().is_some_and(|s| !s.is_empty() && s != "None")).count()
        })
    };
    if spec.get("ipFamilyPolicy").is_none_or(Value::is_null)
        && (count("ipFamilies") == 2 || count("clusterIPs") == 2)
    {
        spec.insert("ipFamilyPolicy".into(), json!("RequireDualStack"));
    }
    if spec.get("ipFamilyPolicy").and_then(Value::as_str) == Some("PreferDualStack")
        && let Some(families) = spec.get_mut("ipFamilies").and_then(Value::as_array_mut)
    {
        families.truncate(1);
    }
}

/// The IP family fields, for a cluster that serves IPv4 only.
fn validate_ip_families(spec: &Value, causes: &mut Vec<Cause>) {
    const POLICIES: [&str; 3] = ["PreferDualStack", "RequireDualStack", "SingleStack"];
    let policy = spec.get("ipFamilyPolicy").and_then(Value::as_str);
    match policy {
        Some(p) if !POLICIES.contains(&p) => causes.push(Cause::new(
            "FieldValueNotSupported",
            "spec.ipFamilyPolicy",
            format!(
                "Unsupported value: \"{p}\": supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""
            ),
        )),
        Some("RequireDualStack") => causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.ipFamilyPolicy",
            "Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
        )),
        _ => {}
    }
    let families: Vec<&Value> = spec
        .get("ipFamilies")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if families.len() > 2 {
        causes.push(Cause::new(
            "FieldValueTooMany",
            "spec.ipFamilies",
            format!("Too many: {}: must have at most 2 items", families.len()),
        ));
    }
    if families.len() > 1 && policy == Some("SingleStack") {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.ipFamilyPolicy",
            "Invalid value: \"SingleStack\": must be 'RequireDualStack' or 'PreferDualStack' when multiple 'ipFamilies' are specified",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, family) in families.iter().enumerate() {
        let family = family.as_str().unwrap_or("");
        let field = format!("spec.ipFamilies[{i}]");
        if family != "IPv4" && family != "IPv6" {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                &field,
                format!("Unsupported value: \"{family}\": supported values: \"IPv4\", \"IPv6\""),
            ));
        } else if !seen.insert(family) {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                &field,
                format!("Duplicate value: \"{family}\""),
            ));
        } else if family == "IPv6" {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &field,
                "Invalid value: \"IPv6\": ipfamily IPv6 is not configured on cluster",
            ));
        }
    }
}

fn validate_service(object: &Value, causes: &mut Vec<Cause>) {
    let spec = object.get("spec").cloned().unwrap_or_default();
    let str_of = |field: &str| spec.get(field).and_then(Value::as_str).unwrap_or("");
    let service_type = str_of("type");
    let headless = str_of("clusterIP") == "None";
    let ports: Vec<Value> =
        spec.get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
    if !TYPES.contains(&service_type) {
        let supported: Vec<String> = TYPES.iter().map(|t| format!("\"{t}\"")).collect();
        causes.push(Cause::new(
            "FieldValueNotSupported",
            "spec.type",
            format!(
                "Unsupported value: \"{service_type}\": supported values: {}",
                supported.join(", ")
            ),
        ));
    }
    if service_type != "ExternalName" {
        validate_ip_families(&spec, causes);
    }
    if ports.is_empty() && !headless && service_type != "ExternalName" {
        causes.push(Cause::new("FieldValueRequired", "spec.ports", "Required value"));
    }
    match service_type {
        "NodePort" | "LoadBalancer" if headless => causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.clusterIPs[0]",
            format!(
                "Invalid value: \"None\": may not be set to 'None' for {service_type} services"
            ),
        )),
        "ExternalName" => {
            if spec.get("clusterIPs").and_then(Value::as_array).is_some_and(|a| !a.is_empty())
                || !str_of("clusterIP").is_empty()
            {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    "spec.clusterIPs",
                    "Forbidden: may not be set for ExternalName services",
                ));
            }
            if str_of("externalName").is_empty() {
                causes.push(Cause::new(
                    "FieldValueRequired",
                    "spec.externalName",
                    "Required value",
                ));
            }
        }
        _ => {}
    }
    let mut names = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    let mut node_ports = std::collections::HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let name = port.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::new(
                "FieldValueRequired",
                &format!("spec.ports[{i}].name"),
                "Required value",
            ));
        } else if !name.is_empty() && !names.insert(name.to_owned()) {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                &format!("spec.ports[{i}].name"),
                format!("Duplicate value: \"{name}\""),
            ));
        }
        let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&number) {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("spec.ports[{i}].port"),
                format!("Invalid value: {number}: must be between 1 and 65535, inclusive"),
            ));
        }
        let protocol = port.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                &format!("spec.ports[{i}].protocol"),
                format!("Unsupported value: \"{protocol}\": supported values: \"SCTP\", \"TCP\", \"UDP\""),
            ));
        }
        if let Some(node_port) = port.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0) {
            if service_type == "ClusterIP" {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    &format!("spec.ports[{i}].nodePort"),
                    "Forbidden: may not be used when `type` is 'ClusterIP'",
                ));
            } else if !node_ports.insert((node_port, protocol.to_owned())) {
                causes.push(Cause::new(
                    "FieldValueDuplicate",
                    &format!("spec.ports[{i}].nodePort"),
                    format!("Duplicate value: {node_port}"),
                ));
            }
        }
        // Upstream reports the duplicate (protocol, port) pair as its Go value.
        if !keys.insert((protocol.to_owned(), number)) {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                &format!("spec.ports[{i}]"),
                format!(
                    "Duplicate value: core.ServicePort{{Name:\"\", Protocol:\"{protocol}\", AppProtocol:(*string)(nil), Port:{number}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}"
                ),
            ));
        }
    }
    if spec.get("allocateLoadBalancerNodePorts").is_some() && service_type != "LoadBalancer" {
        causes.push(Cause::new(
            "FieldValueForbidden",
            "spec.allocateLoadBalancerNodePorts",
            "Forbidden: may only be used when `type` is 'LoadBalancer'",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes_of(spec: Value) -> Vec<String> {
        let mut object = json!({"metadata": {"name": "s"}, "spec": spec});
        Services.default(&mut object);
        let mut causes = Vec::new();
        Services.validate(&object, &mut causes);
        causes.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn services_validate_as_upstream() {
        assert!(causes_of(json!({"ports": [{"port": 80}]})).is_empty());
        assert_eq!(
            causes_of(json!({"ports": [{"port": 80}, {"port": 80}]})),
            [
                "spec.ports[0].name: Required value",
                "spec.ports[1].name: Required value",
                "spec.ports[1]: Duplicate value: core.ServicePort{Name:\"\", Protocol:\"TCP\", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}, NodePort:0}",
            ]
        );
        assert_eq!(
            causes_of(json!({"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30001}]})),
            ["spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"]
        );
        assert_eq!(
            causes_of(json!({"type": "ExternalName"})),
            ["spec.externalName: Required value"]
        );
        assert_eq!(causes_of(json!({"type": "Foo", "ports": [{"port": 1}]})).len(), 1);
        assert!(causes_of(json!({"clusterIP": "None"})).is_empty());
        assert_eq!(
            causes_of(json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 1}]})),
            [
                "spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services"
            ]
        );
    }

    #[test]
    fn a_type_change_drops_what_the_new_type_has_no_use_for() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.7", "clusterIPs": ["10.43.0.7"],
            "externalTrafficPolicy": "Cluster", "ports": [{"port": 80, "nodePort": 30080}]}});
        let mut to_cluster_ip = old.clone();
        to_cluster_ip["spec"]["type"] = json!("ClusterIP");
        Services.prepare_update(&mut to_cluster_ip, &old);
        assert_eq!(to_cluster_ip["spec"]["ports"][0].get("nodePort"), None);
        assert_eq!(to_cluster_ip["spec"].get("externalTrafficPolicy"), None);
        assert_eq!(to_cluster_ip["spec"]["clusterIP"], "10.43.0.7");
        let mut to_external = old.clone();
        to_external["spec"]["type"] = json!("ExternalName");
        to_external["spec"]["externalName"] = json!("example.com");
        Services.prepare_update(&mut to_external, &old);
        assert_eq!(to_external["spec"].get("clusterIP"), None);
        assert_eq!(to_external["spec"].get("clusterIPs"), None);
        let mut causes = Vec::new();
        Services.validate(&to_external, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
    }
}
