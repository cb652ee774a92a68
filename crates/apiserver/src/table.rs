//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for, with
//! kubectl's usual columns per type and `Name`/`Age` for the rest.

use serde_json::{Value, json};

/// What a Table row carries in `object` (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// A `PartialObjectMetadata` (the default).
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// Parses the query parameter.
    pub fn parse(value: Option<&str>) -> Result<IncludeObject, crate::status::ApiError> {
        match value.unwrap_or("Metadata") {
            "None" => Ok(IncludeObject::None),
            "Metadata" | "" => Ok(IncludeObject::Metadata),
            "Object" => Ok(IncludeObject::Object),
            other => Err(crate::status::ApiError::bad_request(format!(
                "includeObject must be one of None, Metadata or Object, got {other:?}"
            ))),
        }
    }
}

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column { name, kind, format: "", priority, description: "" }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
};
const AGE: Column = Column {
    name: "Age",
    kind: "string",
    format: "",
    priority: 0,
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
};

fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Pod" => vec![
            NAME,
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            AGE,
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        "Deployment" => vec![
            NAME,
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "ReplicaSet" => vec![
            NAME,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "StatefulSet" => vec![
            NAME,
            col("Ready", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
        ],
        "DaemonSet" => vec![
            NAME,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Node Selector", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "Job" => vec![
            NAME,
            col("Status", "string", 0),
            col("Completions", "string", 0),
            col("Duration", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "Service" => vec![
            NAME,
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            AGE,
            col("Selector", "string", 1),
        ],
        "Endpoints" => vec![NAME, col("Endpoints", "string", 0), AGE],
        "Node" => vec![
            NAME,
            col("Status", "string", 0),
            col("Roles", "string", 0),
            AGE,
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        "Namespace" => vec![NAME, col("Status", "string", 0), AGE],
        "Secret" => vec![NAME, col("Type", "string", 0), col("Data", "string", 0), AGE],
        "ConfigMap" => vec![NAME, col("Data", "string", 0), AGE],
        "Ingress" => vec![
            NAME,
            col("Class", "string", 0),
            col("Hosts", "string", 0),
            col("Address", "string", 0),
            col("Ports", "string", 0),
            AGE,
        ],
        "PersistentVolumeClaim" => vec![
            NAME,
            col("Status", "string", 0),
            col("Volume", "string", 0),
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("StorageClass", "string", 0),
            col("VolumeAttributesClass", "string", 0),
            AGE,
            col("VolumeMode", "string", 1),
        ],
        "Event" => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
        ],
        _ => vec![NAME, AGE],
    }
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(text: String) -> String {
    if text.is_empty() { "<none>".to_owned() } else { text }
}

/// Renders a duration the way kubectl's AGE column does.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let rest = seconds % 60;
        return if rest == 0 { format!("{minutes}m") } else { format!("{minutes}m{rest}s") };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let rest = minutes % 60;
        return if rest == 0 { format!("{hours}h") } else { format!("{hours}h{rest}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let rest = hours % 24;
        return if rest == 0 { format!("{days}d") } else { format!("{days}d{rest}h") };
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if days < 365 * 8 {
        let rest = days % 365;
        return if rest == 0 { format!("{years}y") } else { format!("{years}y{rest}d") };
    }
    format!("{years}y")
}

fn age_of(v: &Value, pointer: &str, now: i64) -> String {
    let Some(ts) = v.pointer(pointer).and_then(Value::as_str) else { return "<unknown>".into() };
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(now - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

fn containers_images(template_spec: &Value) -> (String, String) {
    let list =
        template_spec.get("containers").and_then(Value::as_array).cloned().unwrap_or_default();
    let names: Vec<&str> = list.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = list.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// `k=v,k=v` for a map of labels ("" when absent).
pub(crate) fn label_map_string(map: Option<&Value>) -> String {
    map.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A `LabelSelector` in the query syntax (`a=b,c in (d),!e`), as upstream formats it; "" when
/// absent or empty.
pub(crate) fn label_selector_string(selector: Option<&Value>) -> String {
    let Some(selector) = selector else { return String::new() };
    let mut parts = Vec::new();
    let labels = label_map_string(selector.get("matchLabels"));
    if !labels.is_empty() {
        parts.push(labels);
    }
    if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let key = s(e, "/key");
            parts.push(match s(e, "/operator") {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "DoesNotExist" => format!("!{key}"),
                _ => key.to_owned(),
            });
        }
    }
    parts.join(",")
}

fn selector_string(selector: Option<&Value>) -> String {
    or_none(label_selector_string(selector))
}

fn pod_status(pod: &Value) -> (String, i64, usize, usize) {
    let mut reason = s(pod, "/status/phase").to_owned();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_owned();
    }
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = pod.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
    let mut ready = 0;
    let mut restarts = 0;
    for cs in &statuses {
        restarts += n(cs, "/restartCount");
        if cs.get("ready").and_then(Value::as_bool) == Some(true) {
            ready += 1;
        }
        let waiting = s(cs, "/state/waiting/reason");
        let terminated = s(cs, "/state/terminated/reason");
        if !waiting.is_empty() {
            reason = waiting.to_owned();
        } else if !terminated.is_empty() {
            reason = terminated.to_owned();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        reason = "Terminating".into();
    }
    (reason, restarts, ready, total)
}

fn cells(kind: &str, obj: &Value, now: i64) -> Vec<Value> {
    let name = s(obj, "/metadata/name").to_owned();
    let age = age_of(obj, "/metadata/creationTimestamp", now);
    match kind {
        "Pod" => {
            let (status, restarts, ready, total) = pod_status(obj);
            let gates =
                obj.pointer("/spec/readinessGates").and_then(Value::as_array).map_or(0, Vec::len);
            vec![
                json!(name),
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                json!(age),
                json!(or_none(s(obj, "/status/podIP").to_owned())),
                json!(or_none(s(obj, "/spec/nodeName").to_owned())),
                json!(or_none(s(obj, "/status/nominatedNodeName").to_owned())),
                json!(if gates == 0 { "<none>".to_owned() } else { format!("0/{gates}") }),
            ]
        }
        "Deployment" => {
            let (c, i) =
                containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                json!(name),
                json!(format!("{}/{}", n(obj, "/status/readyReplicas"), n(obj, "/spec/replicas"))),
                json!(n(obj, "/status/updatedReplicas")),
                json!(n(obj, "/status/availableReplicas")),
                json!(age),
                json!(c),
                json!(i),
                json!(selector_string(obj.pointer("/spec/selector"))),
            ]
        }
        "ReplicaSet" => {
            let (c, i) =
                containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                json!(name),
                json!(n(obj, "/spec/replicas")),
                json!(n(obj, "/status/replicas")),
                json!(n(obj, "/status/readyReplicas")),
                json!(age),
                json!(c),
                json!(i),
                json!(selector_string(obj.pointer("/spec/selector"))),
            ]
        }
        "StatefulSet" => {
            let (c, i) =
                containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                json!(name),
                json!(format!("{}/{}", n(obj, "/status/readyReplicas"), n(obj, "/spec/replicas"))),
                json!(age),
                json!(c),
                json!(i),
            ]
        }
        "DaemonSet" => {
            let (c, i) =
                containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            let node_selector = label_map_string(obj.pointer("/spec/template/spec/nodeSelector"));
            vec![
                json!(name),
                json!(n(obj, "/status/desiredNumberScheduled")),
                json!(n(obj, "/status/currentNumberScheduled")),
                json!(n(obj, "/status/numberReady")),
                json!(n(obj, "/status/updatedNumberScheduled")),
                json!(n(obj, "/status/numberAvailable")),
                json!(or_none(node_selector)),
                json!(age),
                json!(c),
                json!(i),
                json!(selector_string(obj.pointer("/spec/selector"))),
            ]
        }
        "Job" => {
            let (c, i) =
                containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            let completions = obj.pointer("/spec/completions").and_then(Value::as_i64);
            let succeeded = n(obj, "/status/succeeded");
            let comp = match completions {
                Some(c) => format!("{succeeded}/{c}"),
                None => format!("{succeeded}/1"),
            };
            let conditions = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let has = |t: &str| {
                conditions.iter().any(|c| s(c, "/type") == t && s(c, "/status") == "True")
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if obj.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating"
            } else {
                "Running"
            };
            let duration = match (
                obj.pointer("/status/startTime").and_then(Value::as_str),
                obj.pointer("/status/completionTime").and_then(Value::as_str),
            ) {
                (Some(start), end) => {
                    let start =
                        start.parse::<jiff::Timestamp>().map(|t| t.as_second()).unwrap_or(now);
                    let end = end
                        .and_then(|e| e.parse::<jiff::Timestamp>().ok())
                        .map_or(now, |t| t.as_second());
                    human_duration(end - start)
                }
                _ => String::new(),
            };
            vec![
                json!(name),
                json!(status),
                json!(comp),
                json!(duration),
                json!(age),
                json!(c),
                json!(i),
                json!(selector_string(obj.pointer("/spec/selector"))),
            ]
        }
        "Service" => {
            let svc_type = s(obj, "/spec/type");
            let cluster_ip = or_none(s(obj, "/spec/clusterIP").to_owned());
            let mut external: Vec<String> = obj
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default();
            if let Some(ingress) =
                obj.pointer("/status/loadBalancer/ingress").and_then(Value::as_array)
            {
                for i in ingress {
                    let ip = s(i, "/ip");
                    external.push(if ip.is_empty() {
                        s(i, "/hostname").to_owned()
                    } else {
                        ip.to_owned()
                    });
                }
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
                .map(|ports| {
                    ports
                        .iter()
                        .map(|p| {
                            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                            match p.get("nodePort").and_then(Value::as_i64) {
                                Some(np) => format!("{}:{np}/{proto}", n(p, "/port")),
                                None => format!("{}/{proto}", n(p, "/port")),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let selector = label_map_string(obj.pointer("/spec/selector"));
            vec![
                json!(name),
                json!(svc_type),
                json!(cluster_ip),
                json!(external),
                json!(or_none(ports.join(","))),
                json!(age),
                json!(or_none(selector)),
            ]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for subset in obj.get("subsets").and_then(Value::as_array).cloned().unwrap_or_default()
            {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(|p| n(p, "/port")).collect())
                    .unwrap_or_default();
                for addr in
                    subset.get("addresses").and_then(Value::as_array).cloned().unwrap_or_default()
                {
                    if ports.is_empty() {
                        eps.push(s(&addr, "/ip").to_owned());
                    }
                    for p in &ports {
                        eps.push(format!("{}:{p}", s(&addr, "/ip")));
                    }
                }
            }
            let text = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![json!(name), json!(or_none(text)), json!(age)]
        }
        "Node" => {
            let conditions = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ready = conditions.iter().find(|c| s(c, "/type") == "Ready");
            let mut status = match ready.map(|c| s(c, "/status")) {
                Some("True") => "Ready".to_owned(),
                Some(_) => "NotReady".to_owned(),
                None => "Unknown".to_owned(),
            };
            if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = obj
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|l| {
                    l.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let address = |t: &str| {
                obj.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|x| s(x, "/type") == t))
                    .map(|x| s(x, "/address").to_owned())
                    .unwrap_or_else(|| "<none>".into())
            };
            vec![
                json!(name),
                json!(status),
                json!(or_none(roles.join(","))),
                json!(age),
                json!(s(obj, "/status/nodeInfo/kubeletVersion")),
                json!(address("InternalIP")),
                json!(address("ExternalIP")),
                json!(or_none(s(obj, "/status/nodeInfo/osImage").to_owned())),
                json!(or_none(s(obj, "/status/nodeInfo/kernelVersion").to_owned())),
                json!(or_none(s(obj, "/status/nodeInfo/containerRuntimeVersion").to_owned())),
            ]
        }
        "Namespace" => vec![json!(name), json!(s(obj, "/status/phase")), json!(age)],
        "Secret" => {
            let count = obj.get("data").and_then(Value::as_object).map_or(0, |m| m.len());
            vec![json!(name), json!(s(obj, "/type")), json!(count.to_string()), json!(age)]
        }
        "ConfigMap" => {
            let count = obj.get("data").and_then(Value::as_object).map_or(0, |m| m.len())
                + obj.get("binaryData").and_then(Value::as_object).map_or(0, |m| m.len());
            vec![json!(name), json!(count.to_string()), json!(age)]
        }
        "Ingress" => {
            let rules =
                obj.pointer("/spec/rules").and_then(Value::as_array).cloned().unwrap_or_default();
            let hosts: Vec<&str> =
                rules.iter().map(|r| s(r, "/host")).filter(|h| !h.is_empty()).collect();
            let hosts = if hosts.is_empty() { "*".to_owned() } else { hosts.join(",") };
            let address: Vec<&str> = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|i| s(i, "/ip")).collect())
                .unwrap_or_default();
            let ports = if obj
                .pointer("/spec/tls")
                .and_then(Value::as_array)
                .is_some_and(|t| !t.is_empty())
            {
                "80, 443"
            } else {
                "80"
            };
            vec![
                json!(name),
                json!(or_none(s(obj, "/spec/ingressClassName").to_owned())),
                json!(hosts),
                json!(address.join(",")),
                json!(ports),
                json!(age),
            ]
        }
        "PersistentVolumeClaim" => {
            let modes: Vec<String> = obj
                .pointer("/status/accessModes")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|m| match m {
                            "ReadWriteOnce" => "RWO".to_owned(),
                            "ReadOnlyMany" => "ROX".to_owned(),
                            "ReadWriteMany" => "RWX".to_owned(),
                            "ReadWriteOncePod" => "RWOP".to_owned(),
                            other => other.to_owned(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                json!(name),
                json!(s(obj, "/status/phase")),
                json!(s(obj, "/spec/volumeName")),
                json!(s(obj, "/status/capacity/storage")),
                json!(modes.join(",")),
                json!(or_none(s(obj, "/spec/storageClassName").to_owned())),
                json!("<unset>"),
                json!(age),
                json!(s(obj, "/spec/volumeMode")),
            ]
        }
        "Event" => {
            let last = if obj.pointer("/lastTimestamp").and_then(Value::as_str).is_some() {
                age_of(obj, "/lastTimestamp", now)
            } else if obj.pointer("/eventTime").and_then(Value::as_str).is_some() {
                age_of(obj, "/eventTime", now)
            } else {
                age_of(obj, "/metadata/creationTimestamp", now)
            };
            let object = format!(
                "{}/{}",
                s(obj, "/involvedObject/kind").to_lowercase(),
                s(obj, "/involvedObject/name")
            );
            vec![
                json!(last),
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(object),
                json!(s(obj, "/message")),
            ]
        }
        _ => vec![json!(name), json!(age)],
    }
}

fn row_object(obj: &Value, include: IncludeObject) -> Option<Value> {
    match include {
        IncludeObject::None => None,
        IncludeObject::Object => Some(obj.clone()),
        IncludeObject::Metadata => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })),
    }
}

/// Builds a Table for `objects` of `kind`. `with_columns` is false for watch events after the
/// first, which upstream sends without column definitions.
pub fn table(
    kind: &str,
    objects: &[Value],
    include: IncludeObject,
    list_meta: Value,
    with_columns: bool,
) -> Value {
    let now = jiff::Timestamp::now().as_second();
    let column_defs: Vec<Value> = if with_columns {
        columns(kind)
            .iter()
            .map(|c| json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority}))
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(kind, obj, now)});
            if let Some(object) = row_object(obj, include) {
                row["object"] = object;
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": column_defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400, "3d"),
            (3 * 86400 + 3600, "3d1h"),
            (400 * 86400, "400d"),
            (3 * 365 * 86400, "3y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn pod_rows_have_kubectl_columns() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [{"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}}]}});
        let t =
            table("Pod", &[pod], IncludeObject::Metadata, json!({"resourceVersion": "5"}), true);
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/1");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "2");
        assert_eq!(cells[5], "10.42.0.5");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
