//! Upstream's bootstrap API priority and fairness configuration: the mandatory `exempt` and
//! `catch-all` objects and the suggested ones, created at start when missing, marked
//! `apf.kubernetes.io/autoupdate-spec: "true"` as upstream marks the objects it maintains.

use serde_json::{Value, json};

const AUTOUPDATE: &str = "apf.kubernetes.io/autoupdate-spec";

fn meta(name: &str) -> Value {
    json!({"name": name, "annotations": {AUTOUPDATE: "true"}})
}

fn queued(name: &str, shares: i64, lendable: i64, queues: i64, hand: i64) -> Value {
    json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
        "metadata": meta(name),
        "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": shares, "lendablePercent": lendable,
            "limitResponse": {"type": "Queue", "queuing": {"queues": queues, "handSize": hand, "queueLengthLimit": 50}}}}})
}

/// The bootstrap PriorityLevelConfigurations.
pub fn priority_levels() -> Vec<Value> {
    vec![
        json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
            "metadata": meta("exempt"),
            "spec": {"type": "Exempt", "exempt": {"nominalConcurrencyShares": 0, "lendablePercent": 0}}}),
        json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
            "metadata": meta("catch-all"),
            "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 5, "lendablePercent": 0,
                "limitResponse": {"type": "Reject"}}}}),
        queued("system", 30, 33, 64, 6),
        queued("node-high", 40, 25, 64, 6),
        queued("leader-election", 10, 0, 16, 4),
        queued("workload-high", 40, 50, 128, 6),
        queued("workload-low", 100, 90, 128, 6),
        queued("global-default", 20, 50, 128, 6),
    ]
}

fn group(name: &str) -> Value {
    json!({"kind": "Group", "group": {"name": name}})
}

fn user(name: &str) -> Value {
    json!({"kind": "User", "user": {"name": name}})
}

fn service_account(namespace: &str, name: &str) -> Value {
    json!({"kind": "ServiceAccount", "serviceAccount": {"namespace": namespace, "name": name}})
}

/// Everything, for `subjects`.
fn all(subjects: Vec<Value>) -> Value {
    json!({"subjects": subjects,
        "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"], "clusterScope": true}],
        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]})
}

fn schema(
    name: &str,
    level: &str,
    precedence: i64,
    distinguisher: Option<&str>,
    rules: Vec<Value>,
) -> Value {
    let mut spec = json!({"priorityLevelConfiguration": {"name": level}, "matchingPrecedence": precedence, "rules": rules});
    if let Some(d) = distinguisher {
        spec["distinguisherMethod"] = json!({"type": d});
    }
    json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": meta(name), "spec": spec})
}

/// The bootstrap FlowSchemas.
pub fn flow_schemas() -> Vec<Value> {
    let everyone = || vec![group("system:unauthenticated"), group("system:authenticated")];
    let election = |ns: &str, cluster_scope: bool| {
        json!([{"verbs": ["get", "create", "update"], "apiGroups": [""], "resources": ["endpoints", "configmaps"], "namespaces": [ns], "clusterScope": cluster_scope},
               {"verbs": ["get", "create", "update"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "namespaces": ["*"], "clusterScope": cluster_scope}])
    };
    vec![
        schema("exempt", "exempt", 1, None, vec![all(vec![group("system:masters")])]),
        schema(
            "probes",
            "exempt",
            2,
            None,
            vec![json!({"subjects": everyone(),
            "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/readyz", "/livez"]}]})],
        ),
        schema(
            "system-leader-election",
            "leader-election",
            100,
            Some("ByUser"),
            vec![json!({
            "subjects": [user("system:kube-controller-manager"), user("system:kube-scheduler"), service_account("kube-system", "*")],
            "resourceRules": election("kube-system", false)})],
        ),
        schema(
            "endpoint-controller",
            "workload-high",
            150,
            Some("ByUser"),
            vec![json!({
            "subjects": [user("system:kube-controller-manager"), service_account("kube-system", "endpoint-controller"),
                         service_account("kube-system", "endpointslicemirroring-controller")],
            "resourceRules": [{"verbs": ["get", "create", "update"], "apiGroups": [""], "resources": ["endpoints"], "namespaces": ["*"]}]})],
        ),
        schema(
            "workload-leader-election",
            "leader-election",
            200,
            Some("ByUser"),
            vec![json!({
            "subjects": [service_account("kube-system", "*")], "resourceRules": election("*", false)})],
        ),
        schema(
            "system-node-high",
            "node-high",
            400,
            Some("ByUser"),
            vec![json!({
            "subjects": [group("system:nodes")],
            "resourceRules": [{"verbs": ["*"], "apiGroups": [""], "resources": ["nodes", "nodes/status"], "namespaces": ["*"], "clusterScope": true},
                              {"verbs": ["*"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "namespaces": ["*"]}]})],
        ),
        schema(
            "system-nodes",
            "system",
            500,
            Some("ByUser"),
            vec![all(vec![group("system:nodes")])],
        ),
        schema(
            "kube-controller-manager",
            "workload-high",
            800,
            Some("ByNamespace"),
            vec![all(vec![user("system:kube-controller-manager")])],
        ),
        schema(
            "kube-scheduler",
            "workload-high",
            800,
            Some("ByNamespace"),
            vec![all(vec![user("system:kube-scheduler")])],
        ),
        schema(
            "kube-system-service-accounts",
            "workload-high",
            900,
            Some("ByNamespace"),
            vec![all(vec![service_account("kube-system", "*")])],
        ),
        schema(
            "service-accounts",
            "workload-low",
            9000,
            Some("ByUser"),
            vec![all(vec![group("system:serviceaccounts")])],
        ),
        schema("global-default", "global-default", 9900, Some("ByUser"), vec![all(everyone())]),
        schema("catch-all", "catch-all", 10000, Some("ByUser"), vec![all(everyone())]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flow_schema_names_a_bootstrap_priority_level_and_decodes() {
        let levels: Vec<Value> = priority_levels();
        let names: Vec<&str> =
            levels.iter().filter_map(|l| l.pointer("/metadata/name")?.as_str()).collect();
        for level in &levels {
            let typed: k8s_openapi::api::flowcontrol::v1::PriorityLevelConfiguration =
                serde_json::from_value(level.clone()).unwrap_or_else(|e| panic!("{e}: {level}"));
            assert!(!typed.spec.type_.is_empty());
        }
        for fs in flow_schemas() {
            let level = fs
                .pointer("/spec/priorityLevelConfiguration/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            assert!(names.contains(&level), "{level}");
            let typed: k8s_openapi::api::flowcontrol::v1::FlowSchema =
                serde_json::from_value(fs.clone()).unwrap_or_else(|e| panic!("{e}: {fs}"));
            assert!(typed.spec.matching_precedence.is_some());
        }
        assert_eq!(flow_schemas().len(), 13);
    }
}
