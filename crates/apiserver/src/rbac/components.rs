//! Roles of krust's own components beside upstream's policy: what the cluster DNS and the
//! node agent's service proxy and network policy need, and nothing more. Reconciled at
//! start with the bootstrap policy (same labels, same `autoupdate` rule).

use serde_json::{Value, json};

/// The ServiceAccount the cluster DNS acts as (upstream's DNS add-on's).
pub const DNS_USER: &str = "system:serviceaccount:kube-system:kube-dns";

const READ: [&str; 2] = ["list", "watch"];

fn meta(name: &str) -> Value {
    json!({"name": name,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
}

fn cluster_role(name: &str, rules: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": meta(name), "rules": rules})
}

fn binding(name: &str, role: &str, subject: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": meta(name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [subject]})
}

fn nodes() -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"})
}

/// What krust's controllers do by patch where upstream's replace the object: the `patch`
/// verb on exactly those, beside each controller's upstream role (which stays upstream's).
const CONTROLLER_PATCHES: [(&str, &str, &[&str]); 10] = [
    ("deployment-controller", "apps", &["deployments", "deployments/status"]),
    ("statefulset-controller", "apps", &["statefulsets/status", "controllerrevisions"]),
    ("daemon-set-controller", "apps", &["daemonsets/status"]),
    ("job-controller", "batch", &["jobs/status"]),
    ("cronjob-controller", "batch", &["cronjobs/status"]),
    ("disruption-controller", "policy", &["poddisruptionbudgets/status"]),
    ("replicaset-controller", "apps", &["replicasets/status"]),
    ("replication-controller", "", &["replicationcontrollers/status"]),
    ("namespace-controller", "", &["namespaces/status"]),
    ("resourcequota-controller", "", &["resourcequotas/status"]),
];

/// The ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let patches = CONTROLLER_PATCHES.iter().map(|(controller, group, resources)| {
        cluster_role(
            &format!("krust:controller:{controller}"),
            json!([{"apiGroups": [group], "resources": resources, "verbs": ["patch"]}]),
        )
    });
    let mut roles = vec![
        // The DNS serves Services from their EndpointSlices, and publishes its own
        // `kube-dns` Service and endpoints (server-side apply: the `patch` verb).
        cluster_role(
            "krust:dns",
            json!([
                {"apiGroups": [""], "resources": ["services"], "verbs": READ},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
                {"apiGroups": [""], "resources": ["services", "endpoints"],
                 "resourceNames": ["kube-dns"], "verbs": ["get", "patch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                 "resourceNames": ["kube-dns"], "verbs": ["get", "patch"]},
            ]),
        ),
        // The agent enforces NetworkPolicy: it follows policies and namespaces' labels.
        cluster_role(
            "krust:network-policy",
            json!([
                {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                 "verbs": READ},
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
            ]),
        ),
        // krust's certificate controller also approves a node's serving certificate for the
        // node's own names and addresses (as k3s hands agents theirs), checked against its
        // Node object; upstream leaves those to an external approver.
        cluster_role(
            "krust:controller:certificate-controller",
            json!([
                {"apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
                 "resourceNames": ["kubernetes.io/kubelet-serving"], "verbs": ["approve"]},
            ]),
        ),
    ];
    roles.extend(patches);
    roles
}

/// The ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    let patches = CONTROLLER_PATCHES.iter().map(|(controller, _, _)| {
        let name = format!("krust:controller:{controller}");
        binding(
            &name,
            &name,
            json!({"kind": "ServiceAccount", "name": controller, "namespace": "kube-system"}),
        )
    });
    let mut bindings = vec![
        binding(
            "krust:dns",
            "krust:dns",
            json!({"kind": "ServiceAccount", "name": "kube-dns", "namespace": "kube-system"}),
        ),
        // Each agent runs its node's service proxy with its node credentials (upstream runs
        // kube-proxy as its own user with this role).
        binding("krust:node-proxier", "system:node-proxier", nodes()),
        binding("krust:network-policy", "krust:network-policy", nodes()),
        // A node may have its own client certificate renewed: its request is auto-approved
        // (kubeadm binds the same role to the same group).
        binding(
            "krust:controller:certificate-controller",
            "krust:controller:certificate-controller",
            json!({"kind": "ServiceAccount", "name": "certificate-controller", "namespace": "kube-system"}),
        ),
        binding(
            "krust:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            nodes(),
        ),
    ];
    bindings.extend(patches);
    bindings
}
