//! The RBAC bootstrap policy: the ClusterRoles, ClusterRoleBindings, Roles and RoleBindings
//! upstream's API server creates at start, as data.
//!
//! They are upstream's defaults, object for object and rule for rule, because manifests and
//! Helm charts are written against them: a chart that binds `view`, an operator that expects
//! `system:kube-scheduler` to read CSINodes, or a user who is given `edit` must get on krust
//! exactly what they get upstream. So names, labels, rule order and list order follow
//! upstream's published policy; nothing here is krust's own invention.
//!
//! The reconciler (elsewhere) writes these objects at every start, adding what is missing,
//! and leaves alone any object whose `rbac.authorization.kubernetes.io/autoupdate`
//! annotation an operator has set to `"false"`; that is why every object carries the
//! annotation set to `"true"`. `admin`, `edit` and `view` carry no rules of their own: the
//! cluster-role aggregation controller fills them from every ClusterRole labelled to
//! aggregate into them, which is how CRD authors extend them.

use serde_json::{Map, Value, json};

/// Upstream's bootstrap policy.
pub struct Policy {
    /// The ClusterRoles: the general ones, then one per built-in controller.
    pub cluster_roles: Vec<Value>,
    /// The ClusterRoleBindings: the general ones, then one per built-in controller.
    pub cluster_role_bindings: Vec<Value>,
    /// The namespaced Roles (in `kube-system` and `kube-public`).
    pub roles: Vec<Value>,
    /// The namespaced RoleBindings (in `kube-system` and `kube-public`).
    pub role_bindings: Vec<Value>,
}

/// Upstream's bootstrap policy, each object complete and in upstream's order.
pub fn policy() -> Policy {
    let controllers = controller_roles();
    let mut cluster_roles = by_name(cluster_roles());
    cluster_roles.extend(by_name(
        controllers.iter().map(|(name, rules)| controller_role(name, rules)).collect(),
    ));
    let mut cluster_role_bindings = by_name(cluster_role_bindings());
    cluster_role_bindings
        .extend(by_name(controllers.iter().map(|(name, _)| controller_binding(name)).collect()));
    Policy {
        cluster_roles,
        cluster_role_bindings,
        roles: by_name(namespaced_roles()),
        role_bindings: by_name(namespaced_role_bindings()),
    }
}

// Verb sets (the first four are upstream's own). Rules sort verbs, so order here is free.
const READ: &[&str] = &["get", "list", "watch"];
const READ_UPDATE: &[&str] = &["get", "list", "watch", "update", "patch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
const READ_WRITE: &[&str] =
    &["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];
const LIST_WATCH: &[&str] = &["list", "watch"];
const UPDATE_PATCH: &[&str] = &["update", "patch"];

// API groups.
const CORE: &str = "";
const ADMISSION: &str = "admissionregistration.k8s.io";
const APPS: &str = "apps";
const AUTHENTICATION: &str = "authentication.k8s.io";
const AUTHORIZATION: &str = "authorization.k8s.io";
const AUTOSCALING: &str = "autoscaling";
const BATCH: &str = "batch";
const CERTIFICATES: &str = "certificates.k8s.io";
const COORDINATION: &str = "coordination.k8s.io";
const DISCOVERY: &str = "discovery.k8s.io";
const EVENTS: &str = "events.k8s.io";
const EXTENSIONS: &str = "extensions";
const NETWORKING: &str = "networking.k8s.io";
const NODE: &str = "node.k8s.io";
const POLICY: &str = "policy";
const RBAC: &str = "rbac.authorization.k8s.io";
const RESOURCE: &str = "resource.k8s.io";
const STORAGE: &str = "storage.k8s.io";

const NAMESPACE_SYSTEM: &str = "kube-system";
const NAMESPACE_PUBLIC: &str = "kube-public";
const CONTROLLER_PREFIX: &str = "system:controller:";
const AGGREGATE_TO: &str = "rbac.authorization.k8s.io/aggregate-to-";

// ---- the DSL ---------------------------------------------------------------------------

/// Verbs, resources, names and URLs are sets; upstream publishes them sorted, and so do we,
/// which keeps the rules below free to list them in the order that reads best.
fn set(items: &[&str]) -> Vec<String> {
    let mut items: Vec<String> = items.iter().map(|item| (*item).to_owned()).collect();
    items.sort();
    items.dedup();
    items
}

/// A verb set widened by a few verbs: most controllers read what they act on.
fn plus<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    [base, more].concat()
}

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({ "verbs": set(verbs), "apiGroups": groups, "resources": set(resources) })
}

fn rule_names(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Value {
    let mut rule = rule(verbs, groups, resources);
    rule["resourceNames"] = json!(set(names));
    rule
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({ "verbs": set(verbs), "nonResourceURLs": set(urls) })
}

/// Nearly every component records what it does as Events, in both Event APIs.
fn events() -> Value {
    rule(&["create", "update", "patch"], &[CORE, EVENTS], &["events"])
}

fn metadata(name: &str, namespace: Option<&str>, aggregate_to: Option<&str>) -> Value {
    let mut labels = Map::new();
    labels.insert("kubernetes.io/bootstrapping".into(), "rbac-defaults".into());
    if let Some(target) = aggregate_to {
        labels.insert(format!("{AGGREGATE_TO}{target}"), "true".into());
    }
    let mut metadata = Map::new();
    metadata.insert("name".into(), name.into());
    metadata.insert(
        "annotations".into(),
        json!({ "rbac.authorization.kubernetes.io/autoupdate": "true" }),
    );
    metadata.insert("labels".into(), Value::Object(labels));
    if let Some(namespace) = namespace {
        metadata.insert("namespace".into(), namespace.into());
    }
    Value::Object(metadata)
}

fn object(kind: &str, metadata: Value) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("apiVersion".into(), "rbac.authorization.k8s.io/v1".into());
    object.insert("kind".into(), kind.into());
    object.insert("metadata".into(), metadata);
    object
}

fn with_rules(mut object: Map<String, Value>, rules: Vec<Value>) -> Value {
    object.insert("rules".into(), Value::Array(rules));
    Value::Object(object)
}

fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
    with_rules(object("ClusterRole", metadata(name, None, None)), rules)
}

/// `system:aggregate-to-<target>`: the rules `<target>` gains through aggregation.
fn aggregate_into(target: &str, rules: Vec<Value>) -> Value {
    let name = format!("system:aggregate-to-{target}");
    with_rules(object("ClusterRole", metadata(&name, None, Some(target))), rules)
}

/// `admin`, `edit` or `view`: no rules of its own, only what is labelled to aggregate into
/// it; `feeds` is the broader role it in turn aggregates into.
fn aggregated(name: &str, feeds: Option<&str>) -> Value {
    let mut role = object("ClusterRole", metadata(name, None, feeds));
    let selector = json!({ "matchLabels": { format!("{AGGREGATE_TO}{name}"): "true" } });
    role.insert("aggregationRule".into(), json!({ "clusterRoleSelectors": [selector] }));
    // The aggregation controller owns the rules; upstream publishes them as null.
    role.insert("rules".into(), Value::Null);
    Value::Object(role)
}

fn role(namespace: &str, name: &str, rules: Vec<Value>) -> Value {
    with_rules(object("Role", metadata(name, Some(namespace), None)), rules)
}

fn binding(
    mut object: Map<String, Value>,
    role_kind: &str,
    role: &str,
    subjects: Vec<Value>,
) -> Value {
    object.insert("roleRef".into(), json!({ "apiGroup": RBAC, "kind": role_kind, "name": role }));
    // Upstream leaves out an empty subject list rather than publishing `[]`.
    if !subjects.is_empty() {
        object.insert("subjects".into(), Value::Array(subjects));
    }
    Value::Object(object)
}

/// Upstream names each ClusterRoleBinding after the ClusterRole it grants.
fn cluster_binding(role: &str, subjects: Vec<Value>) -> Value {
    binding(object("ClusterRoleBinding", metadata(role, None, None)), "ClusterRole", role, subjects)
}

fn role_binding(namespace: &str, name: &str, role: &str, subjects: Vec<Value>) -> Value {
    binding(object("RoleBinding", metadata(name, Some(namespace), None)), "Role", role, subjects)
}

fn user(name: &str) -> Value {
    json!({ "apiGroup": RBAC, "kind": "User", "name": name })
}

fn group(name: &str) -> Value {
    json!({ "apiGroup": RBAC, "kind": "Group", "name": name })
}

fn service_account(name: &str) -> Value {
    json!({ "kind": "ServiceAccount", "name": name, "namespace": NAMESPACE_SYSTEM })
}

fn controller_role(name: &str, rules: &[Value]) -> Value {
    cluster_role(&format!("{CONTROLLER_PREFIX}{name}"), rules.to_vec())
}

/// Each controller runs as its own service account in kube-system, named after it.
fn controller_binding(name: &str) -> Value {
    let role = format!("{CONTROLLER_PREFIX}{name}");
    cluster_binding(&role, vec![service_account(name)])
}

/// Upstream publishes each list ordered by namespace and name; sorting here lets the policy
/// below be grouped by purpose instead.
fn by_name(mut items: Vec<Value>) -> Vec<Value> {
    items.sort_by_cached_key(|item| {
        let metadata = &item["metadata"];
        let field = |key: &str| metadata[key].as_str().unwrap_or_default().to_owned();
        (field("namespace"), field("name"))
    });
    items
}

// ---- the policy ------------------------------------------------------------------------

fn cluster_roles() -> Vec<Value> {
    let mut roles = vec![
        cluster_role("cluster-admin", vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        // The user-facing roles: admin ⊇ edit ⊇ view, each built by aggregation.
        aggregated("admin", None),
        aggregated("edit", Some("admin")),
        aggregated("view", Some("edit")),
        aggregate_into(
            "admin",
            vec![
                rule(&["create"], &[AUTHORIZATION], &["localsubjectaccessreviews"]),
                rule(READ_WRITE, &[RBAC], &["roles", "rolebindings"]),
            ],
        ),
        aggregate_into("edit", edit_rules()),
        aggregate_into("view", view_rules()),
        // What k3s's metrics-server adds: whoever may view may read the metrics API.
        with_rules(
            object("ClusterRole", metadata("system:aggregated-metrics-reader", None, Some("view"))),
            vec![rule(READ, &["metrics.k8s.io"], &["pods", "nodes"])],
        ),
        // Discovery, health and version endpoints; the bindings decide who may use them.
        cluster_role(
            "system:discovery",
            vec![urls(
                &["get"],
                &[
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/version",
                    "/version/",
                    "/openapi",
                    "/openapi/*",
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                ],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![urls(&["get"], &["/livez", "/readyz", "/healthz", "/version", "/version/"])],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            vec![urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        cluster_role(
            "system:monitoring",
            vec![
                urls(
                    &["get"],
                    &[
                        "/metrics",
                        "/metrics/slis",
                        "/livez",
                        "/readyz",
                        "/healthz",
                        "/livez/*",
                        "/readyz/*",
                        "/healthz/*",
                        "/statusz",
                    ],
                ),
                rule(&["get"], &[CORE], &["nodes/metrics"]),
            ],
        ),
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["create"],
                    &[AUTHORIZATION],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(&["create"], &[AUTHENTICATION], &["selfsubjectreviews"]),
            ],
        ),
        // For API servers and webhooks that delegate authentication and authorization.
        cluster_role(
            "system:auth-delegator",
            vec![
                rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
                rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
            ],
        ),
        cluster_role(
            "system:kube-aggregator",
            vec![rule(READ, &[CORE], &["services", "endpoints"])],
        ),
        // Nodes and what talks to them.
        cluster_role("system:node", node_rules()),
        cluster_role(
            "system:node-bootstrapper",
            vec![rule(&plus(READ, &["create"]), &[CERTIFICATES], &["certificatesigningrequests"])],
        ),
        cluster_role(
            "system:node-problem-detector",
            vec![
                rule(&["get"], &[CORE], &["nodes"]),
                rule(&["patch"], &[CORE], &["nodes/status"]),
                events(),
            ],
        ),
        cluster_role(
            "system:node-proxier",
            vec![
                rule(LIST_WATCH, &[CORE], &["services", "endpoints"]),
                rule(READ, &[CORE], &["nodes"]),
                events(),
                rule(LIST_WATCH, &[NETWORKING], &["servicecidrs"]),
                rule(LIST_WATCH, &[DISCOVERY], &["endpointslices"]),
            ],
        ),
        cluster_role(
            "system:kubelet-api-admin",
            vec![
                rule(READ, &[CORE], &["nodes"]),
                rule(&["proxy"], &[CORE], &["nodes"]),
                rule(
                    &["*"],
                    &[CORE],
                    &["nodes/proxy", "nodes/metrics", "nodes/stats", "nodes/log"],
                ),
                rule(&["*"], &[CORE], &["nodes/configz", "nodes/healthz", "nodes/pods"]),
            ],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            vec![rule(&["create"], &[CERTIFICATES], &["certificatesigningrequests/nodeclient"])],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![rule(
                &["create"],
                &[CERTIFICATES],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
        // The control plane's own components.
        cluster_role("system:kube-controller-manager", controller_manager_rules()),
        cluster_role("system:kube-scheduler", scheduler_rules()),
        cluster_role(
            "system:volume-scheduler",
            vec![
                rule(READ_UPDATE, &[CORE], &["persistentvolumes"]),
                rule(READ, &[STORAGE], &["storageclasses"]),
                rule(READ_UPDATE, &[CORE], &["persistentvolumeclaims"]),
            ],
        ),
        cluster_role(
            "system:persistent-volume-provisioner",
            vec![
                rule(&plus(READ, &["create", "delete"]), &[CORE], &["persistentvolumes"]),
                // update, to set the claim's provisioning annotations
                rule(&plus(READ, &["update"]), &[CORE], &["persistentvolumeclaims"]),
                rule(READ, &[STORAGE], &["storageclasses"]),
                // watch, to tell whether a claim's provisioning failed
                rule(&["watch"], &[CORE], &["events"]),
                events(),
            ],
        ),
        // Long-standing add-ons whose manifests still bind these.
        cluster_role(
            "system:kube-dns",
            vec![rule(LIST_WATCH, &[CORE], &["endpoints", "services"])],
        ),
        cluster_role(
            "system:heapster",
            vec![
                rule(READ, &[CORE], &["events", "pods", "nodes", "namespaces"]),
                rule(READ, &[EXTENSIONS], &["deployments"]),
            ],
        ),
    ];
    // One approver role per built-in signer, for whoever approves its requests.
    roles.extend(
        [
            "kube-apiserver-client",
            "kube-apiserver-client-kubelet",
            "kubelet-serving",
            "legacy-unknown",
        ]
        .map(|signer| {
            cluster_role(
                &format!("system:certificates.k8s.io:{signer}-approver"),
                vec![rule_names(
                    &["approve"],
                    &[CERTIFICATES],
                    &["signers"],
                    &[&format!("kubernetes.io/{signer}")],
                )],
            )
        }),
    );
    roles
}

/// What `edit` (and so `admin`) may do in a namespace on top of `view`. Reading Secrets, or
/// opening exec, attach, port-forward and proxy sessions (which a GET can do), is as good as
/// acting as the pods' service accounts, so those reads are here rather than in `view`.
fn edit_rules() -> Vec<Value> {
    let pod_access = ["pods/attach", "pods/proxy", "pods/exec", "pods/portforward"];
    vec![
        rule(READ, &[CORE], &[&pod_access[..], &["secrets", "services/proxy"]].concat()),
        rule(&["impersonate"], &[CORE], &["serviceaccounts"]),
        rule(WRITE, &[CORE], &[&["pods"], &pod_access[..]].concat()),
        rule(&["create"], &[CORE], &["pods/eviction"]),
        rule(
            WRITE,
            &[CORE],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
            ],
        ),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
        rule(WRITE, &[CORE, EVENTS], &["events"]),
        rule(
            WRITE,
            &[APPS],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &[AUTOSCALING], &["horizontalpodautoscalers"]),
        rule(WRITE, &[BATCH], &["jobs", "cronjobs"]),
        rule(
            WRITE,
            &[EXTENSIONS],
            &[
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "ingresses",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(WRITE, &[POLICY], &["poddisruptionbudgets"]),
        rule(WRITE, &[NETWORKING], &["ingresses", "networkpolicies"]),
        rule(READ_WRITE, &[COORDINATION], &["leases"]),
        rule(WRITE, &[RESOURCE], &["resourceclaims", "resourceclaimtemplates"]),
    ]
}

/// What `view` may read in a namespace: everything but Secrets and what would let the
/// reader escalate.
fn view_rules() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[CORE],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        rule(
            READ,
            &[CORE],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        // Reading namespaces here, bound in a namespace, reads only that one: it lets a
        // user tell which namespaces they may use.
        rule(READ, &[CORE], &["namespaces"]),
        rule(READ, &[CORE, EVENTS], &["events"]),
        rule(READ, &[DISCOVERY], &["endpointslices"]),
        rule(
            READ,
            &[APPS],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ],
        ),
        rule(
            READ,
            &[AUTOSCALING],
            &["horizontalpodautoscalers", "horizontalpodautoscalers/status"],
        ),
        rule(READ, &[BATCH], &["jobs", "cronjobs", "cronjobs/status", "jobs/status"]),
        rule(
            READ,
            &[EXTENSIONS],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(READ, &[POLICY], &["poddisruptionbudgets", "poddisruptionbudgets/status"]),
        rule(READ, &[NETWORKING], &["ingresses", "ingresses/status", "networkpolicies"]),
        rule(
            READ,
            &[RESOURCE],
            &["resourceclaims", "resourceclaims/status", "resourceclaimtemplates"],
        ),
    ]
}

/// The node agents' role. Bound to no one: the Node authorizer, which narrows each rule to
/// the node's own objects, is what grants these to nodes.
fn node_rules() -> Vec<Value> {
    vec![
        // to check callers to its own API
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews", "localsubjectaccessreviews"]),
        // service environment variables for pods
        rule(READ, &[CORE], &["services"]),
        // registering itself and reporting its status
        rule(&plus(READ, &["create"]), &[CORE], &["nodes"]),
        rule(UPDATE_PATCH, &[CORE], &["nodes/status"]),
        rule(UPDATE_PATCH, &[CORE], &["nodes"]),
        events(),
        // its pods, their mirror pods, statuses and evictions
        rule(READ, &[CORE], &["pods"]),
        rule(&["create", "delete"], &[CORE], &["pods"]),
        rule(UPDATE_PATCH, &[CORE], &["pods/status"]),
        rule(&["create"], &[CORE], &["pods/eviction"]),
        // what its pods mount
        rule(READ, &[CORE], &["secrets", "configmaps"]),
        rule(&["get"], &[CORE], &["persistentvolumeclaims", "persistentvolumes"]),
        rule(&["get"], &[CORE], &["endpoints"]),
        // its own client and serving certificates
        rule(&plus(READ, &["create"]), &[CERTIFICATES], &["certificatesigningrequests"]),
        // its heartbeat Lease
        rule(&["get", "create", "update", "patch", "delete"], &[COORDINATION], &["leases"]),
        rule(&["get"], &[STORAGE], &["volumeattachments"]),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
        // resizing volumes on the node
        rule(&["get", "update", "patch"], &[CORE], &["persistentvolumeclaims/status"]),
        rule(READ, &[STORAGE], &["csidrivers"]),
        rule(&["get", "create", "update", "patch", "delete"], &[STORAGE], &["csinodes"]),
        rule(READ, &[NODE], &["runtimeclasses"]),
        // dynamic resource allocation: the claims its pods use; clearing its node's slices
        rule(&["get"], &[RESOURCE], &["resourceclaims"]),
        rule(&["deletecollection"], &[RESOURCE], &["resourceslices"]),
        // the service accounts its pods run as
        rule(&["get"], &[CORE], &["serviceaccounts"]),
    ]
}

fn controller_manager_rules() -> Vec<Value> {
    vec![
        events(),
        // leader election
        rule(&["create"], &[COORDINATION], &["leases"]),
        rule_names(&["get", "update"], &[COORDINATION], &["leases"], &["kube-controller-manager"]),
        // each controller's own service account and credentials
        rule(&["create"], &[CORE], &["secrets", "serviceaccounts"]),
        rule(&["delete"], &[CORE], &["secrets"]),
        rule(&["get"], &[CORE], &["namespaces", "configmaps", "secrets", "serviceaccounts"]),
        rule(&["update"], &[CORE], &["secrets", "serviceaccounts"]),
        // delegated authentication and authorization of its own endpoints
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
        // the shared informers
        rule(LIST_WATCH, &["*"], &["*"]),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
    ]
}

fn scheduler_rules() -> Vec<Value> {
    vec![
        events(),
        // leader election
        rule(&["create"], &[COORDINATION], &["leases"]),
        rule_names(&plus(READ, &["update"]), &[COORDINATION], &["leases"], &["kube-scheduler"]),
        rule(READ_WRITE, &[COORDINATION], &["leasecandidates"]),
        // what it places, where, and binding it there
        rule(READ, &[CORE], &["nodes"]),
        rule(&plus(READ, &["delete"]), &[CORE], &["pods"]),
        rule(&["create"], &[CORE], &["pods/binding", "bindings"]),
        rule(UPDATE_PATCH, &[CORE], &["pods/status"]),
        // spreading across what owns the pods
        rule(READ, &[CORE], &["replicationcontrollers", "services"]),
        rule(READ, &[APPS, EXTENSIONS], &["replicasets"]),
        rule(READ, &[APPS], &["statefulsets"]),
        // preemption respects disruption budgets
        rule(READ, &[POLICY], &["poddisruptionbudgets"]),
        rule(READ, &[CORE], &["persistentvolumeclaims", "persistentvolumes"]),
        // delegated authentication and authorization of its own endpoints
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
        // volume limits, topology and capacity; namespaces, for affinity namespace selectors
        rule(READ, &[STORAGE], &["csinodes"]),
        rule(READ, &[STORAGE], &["volumeattachments"]),
        rule(READ, &[CORE], &["namespaces"]),
        rule(READ, &[STORAGE], &["csidrivers"]),
        rule(READ, &[STORAGE], &["csistoragecapacities"]),
        // dynamic resource allocation: it allocates devices to claims, and creates claims
        // for extended resources that devices back
        rule(READ, &[RESOURCE], &["deviceclasses"]),
        rule(READ_UPDATE, &[RESOURCE], &["resourceclaims"]),
        rule(READ_UPDATE, &[RESOURCE], &["resourceclaims/status"]),
        rule(&["update"], &[CORE], &["pods/finalizers"]),
        rule(READ, &[RESOURCE], &["resourceslices"]),
        rule(&["create", "delete"], &[RESOURCE], &["resourceclaims"]),
    ]
}

/// The built-in controllers, each with the rules its own service account gets (as
/// `system:controller:<name>`, bound to `kube-system/<name>`).
fn controller_roles() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        (
            "attachdetach-controller",
            vec![
                rule(LIST_WATCH, &[CORE], &["persistentvolumes", "persistentvolumeclaims"]),
                rule(READ, &[CORE], &["nodes"]),
                rule(UPDATE_PATCH, &[CORE], &["nodes/status"]),
                rule(LIST_WATCH, &[CORE], &["pods"]),
                events(),
                rule(&plus(READ, &["create", "delete"]), &[STORAGE], &["volumeattachments"]),
                rule(READ, &[STORAGE], &["csidrivers"]),
                rule(READ, &[STORAGE], &["csinodes"]),
            ],
        ),
        (
            "certificate-controller",
            vec![
                rule(&plus(READ, &["delete"]), &[CERTIFICATES], &["certificatesigningrequests"]),
                rule(
                    &["update"],
                    &[CERTIFICATES],
                    &["certificatesigningrequests/status", "certificatesigningrequests/approval"],
                ),
                // it auto-approves only kubelet client certificates
                rule_names(
                    &["approve"],
                    &[CERTIFICATES],
                    &["signers"],
                    &["kubernetes.io/kube-apiserver-client-kubelet"],
                ),
                rule_names(
                    &["sign"],
                    &[CERTIFICATES],
                    &["signers"],
                    &[
                        "kubernetes.io/kube-apiserver-client",
                        "kubernetes.io/kube-apiserver-client-kubelet",
                        "kubernetes.io/kubelet-serving",
                        "kubernetes.io/legacy-unknown",
                    ],
                ),
                rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
                events(),
            ],
        ),
        (
            "clusterrole-aggregation-controller",
            // escalate: it writes into roles rules it does not hold itself
            vec![rule(&plus(READ, &["update", "patch", "escalate"]), &[RBAC], &["clusterroles"])],
        ),
        (
            "cronjob-controller",
            vec![
                rule(&plus(READ, &["update"]), &[BATCH], &["cronjobs"]),
                rule(&plus(READ, &["create", "update", "patch", "delete"]), &[BATCH], &["jobs"]),
                rule(&["update"], &[BATCH], &["cronjobs/status"]),
                rule(&["update"], &[BATCH], &["cronjobs/finalizers"]),
                rule(&["list", "watch", "delete"], &[CORE], &["pods"]),
                events(),
            ],
        ),
        (
            "daemon-set-controller",
            vec![
                rule(READ, &[APPS, EXTENSIONS], &["daemonsets"]),
                rule(&["update"], &[APPS, EXTENSIONS], &["daemonsets/status"]),
                rule(&["update"], &[APPS, EXTENSIONS], &["daemonsets/finalizers"]),
                rule(LIST_WATCH, &[CORE], &["nodes"]),
                rule(&["list", "watch", "create", "delete", "patch"], &[CORE], &["pods"]),
                rule(&["create"], &[CORE], &["pods/binding"]),
                rule(
                    &plus(READ, &["create", "update", "patch", "delete"]),
                    &[APPS],
                    &["controllerrevisions"],
                ),
                events(),
            ],
        ),
        (
            "deployment-controller",
            vec![
                rule(&plus(READ, &["update"]), &[APPS, EXTENSIONS], &["deployments"]),
                rule(&["update"], &[APPS, EXTENSIONS], &["deployments/status"]),
                rule(&["update"], &[APPS, EXTENSIONS], &["deployments/finalizers"]),
                rule(
                    &plus(READ, &["create", "update", "patch", "delete"]),
                    &[APPS, EXTENSIONS],
                    &["replicasets"],
                ),
                rule(&plus(READ, &["update"]), &[CORE], &["pods"]),
                events(),
            ],
        ),
        (
            "device-taint-eviction-controller",
            vec![
                rule(&plus(READ, &["delete"]), &[CORE], &["pods"]),
                rule(UPDATE_PATCH, &[CORE], &["pods/status"]),
                rule(READ, &[RESOURCE], &["resourceclaims"]),
                rule(READ, &[RESOURCE], &["resourceslices"]),
                rule(READ, &[RESOURCE], &["deviceclasses"]),
                events(),
            ],
        ),
        (
            "disruption-controller",
            vec![
                rule(READ, &[APPS, EXTENSIONS], &["deployments"]),
                rule(READ, &[APPS, EXTENSIONS], &["replicasets"]),
                rule(READ, &[CORE], &["replicationcontrollers"]),
                rule(READ, &[POLICY], &["poddisruptionbudgets"]),
                rule(READ, &[APPS], &["statefulsets"]),
                rule(&["update"], &[POLICY], &["poddisruptionbudgets/status"]),
                rule(UPDATE_PATCH, &[CORE], &["pods/status"]),
                // the expected pod count of any scalable owner, custom ones too
                rule(&["get"], &["*"], &["*/scale"]),
                events(),
            ],
        ),
        (
            "endpoint-controller",
            vec![
                rule(READ, &[CORE], &["services", "pods"]),
                rule(&plus(READ, &["create", "update", "delete"]), &[CORE], &["endpoints"]),
                // it may write addresses ordinary users may not (endpoints/restricted)
                rule(&["create"], &[CORE], &["endpoints/restricted"]),
                events(),
            ],
        ),
        (
            "endpointslice-controller",
            vec![
                rule(READ, &[CORE], &["services", "pods", "nodes"]),
                // finalizers, to set owner references that block their deletion
                rule(&["update"], &[CORE], &["services/finalizers"]),
                rule(
                    &plus(READ, &["create", "update", "delete"]),
                    &[DISCOVERY],
                    &["endpointslices"],
                ),
                events(),
            ],
        ),
        (
            "endpointslicemirroring-controller",
            vec![
                rule(READ, &[CORE], &["services", "endpoints"]),
                rule(&["update"], &[CORE], &["services/finalizers"]),
                rule(&["update"], &[CORE], &["endpoints/finalizers"]),
                rule(
                    &plus(READ, &["create", "update", "delete"]),
                    &[DISCOVERY],
                    &["endpointslices"],
                ),
                events(),
            ],
        ),
        (
            "ephemeral-volume-controller",
            vec![
                rule(READ, &[CORE], &["pods"]),
                rule(&["update"], &[CORE], &["pods/finalizers"]),
                rule(&plus(READ, &["create"]), &[CORE], &["persistentvolumeclaims"]),
                events(),
            ],
        ),
        (
            "expand-controller",
            vec![
                rule(READ_UPDATE, &[CORE], &["persistentvolumes"]),
                rule(UPDATE_PATCH, &[CORE], &["persistentvolumeclaims/status"]),
                rule(READ, &[CORE], &["persistentvolumeclaims"]),
                events(),
            ],
        ),
        (
            "generic-garbage-collector",
            // it deletes dependents of any kind, and edits owner references on any kind
            vec![rule(&plus(READ, &["update", "patch", "delete"]), &["*"], &["*"]), events()],
        ),
        (
            "horizontal-pod-autoscaler",
            vec![
                rule(READ, &[AUTOSCALING], &["horizontalpodautoscalers"]),
                rule(&["update"], &[AUTOSCALING], &["horizontalpodautoscalers/status"]),
                rule(&["get", "update"], &["*"], &["*/scale"]),
                rule(LIST_WATCH, &[CORE], &["pods"]),
                // the metrics it scales on, from whichever metrics API serves them
                rule(LIST_WATCH, &["metrics.k8s.io"], &["pods"]),
                rule(READ, &["custom.metrics.k8s.io"], &["*"]),
                rule(READ, &["external.metrics.k8s.io"], &["*"]),
                events(),
            ],
        ),
        (
            "job-controller",
            vec![
                rule(READ_UPDATE, &[BATCH], &["jobs"]),
                rule(&["update"], &[BATCH], &["jobs/status"]),
                rule(&["update"], &[BATCH], &["jobs/finalizers"]),
                rule(&["list", "watch", "create", "delete", "patch"], &[CORE], &["pods"]),
                events(),
            ],
        ),
        (
            "legacy-service-account-token-cleaner",
            vec![
                // the date since when the API server tracks legacy token use
                rule_names(
                    &["get"],
                    &[CORE],
                    &["configmaps"],
                    &["kube-apiserver-legacy-service-account-token-tracking"],
                ),
                rule(&["delete", "patch"], &[CORE], &["secrets"]),
            ],
        ),
        (
            "namespace-controller",
            vec![
                rule(&plus(READ, &["delete"]), &[CORE], &["namespaces"]),
                rule(&["update"], &[CORE], &["namespaces/finalize", "namespaces/status"]),
                // emptying a namespace means deleting everything in it, of any kind
                rule(&plus(READ, &["delete", "deletecollection"]), &["*"], &["*"]),
            ],
        ),
        (
            "node-controller",
            vec![
                rule(&plus(READ, &["update", "patch", "delete"]), &[CORE], &["nodes"]),
                rule(UPDATE_PATCH, &[CORE], &["nodes/status"]),
                // marking pods on unreachable nodes not ready, and evicting them
                rule(UPDATE_PATCH, &[CORE], &["pods/status"]),
                rule(&plus(READ, &["delete"]), &[CORE], &["pods"]),
                events(),
            ],
        ),
        (
            "persistent-volume-binder",
            vec![
                rule(&plus(READ, &["create", "update", "delete"]), &[CORE], &["persistentvolumes"]),
                rule(&["update"], &[CORE], &["persistentvolumes/status"]),
                rule(&plus(READ, &["update"]), &[CORE], &["persistentvolumeclaims"]),
                rule(&["update"], &[CORE], &["persistentvolumeclaims/status"]),
                // the pods of in-tree volume plugins that recycle volumes
                rule(&plus(READ, &["create", "delete"]), &[CORE], &["pods"]),
                rule(READ, &[STORAGE], &["storageclasses"]),
                rule(LIST_WATCH, &[CORE], &["nodes"]),
                events(),
                rule(&["watch"], &[CORE], &["events"]),
            ],
        ),
        (
            "pod-garbage-collector",
            vec![
                rule(&["list", "watch", "delete"], &[CORE], &["pods"]),
                rule(READ, &[CORE], &["nodes"]),
                // patch, to mark a pod failed before deleting it
                rule(&["patch"], &[CORE], &["pods/status"]),
            ],
        ),
        (
            "pv-protection-controller",
            vec![rule(&plus(READ, &["update"]), &[CORE], &["persistentvolumes"]), events()],
        ),
        (
            "pvc-protection-controller",
            vec![
                rule(&plus(READ, &["update"]), &[CORE], &["persistentvolumeclaims"]),
                rule(&["update"], &[CORE], &["persistentvolumeclaims/status"]),
                rule(READ, &[CORE], &["pods"]),
                events(),
            ],
        ),
        (
            "replicaset-controller",
            vec![
                rule(&plus(READ, &["update"]), &[APPS, EXTENSIONS], &["replicasets"]),
                rule(&["update"], &[APPS, EXTENSIONS], &["replicasets/status"]),
                rule(&["update"], &[APPS, EXTENSIONS], &["replicasets/finalizers"]),
                rule(&["list", "watch", "patch", "create", "delete"], &[CORE], &["pods"]),
                events(),
            ],
        ),
        (
            "replication-controller",
            vec![
                rule(&plus(READ, &["update"]), &[CORE], &["replicationcontrollers"]),
                rule(&["update"], &[CORE], &["replicationcontrollers/status"]),
                rule(&["update"], &[CORE], &["replicationcontrollers/finalizers"]),
                rule(&["list", "watch", "patch", "create", "delete"], &[CORE], &["pods"]),
                events(),
            ],
        ),
        (
            "resource-claim-controller",
            vec![
                rule(READ, &[CORE], &["pods"]),
                rule(&["update"], &[CORE], &["pods/finalizers"]),
                rule(&plus(READ, &["create", "delete"]), &[RESOURCE], &["resourceclaims"]),
                rule(UPDATE_PATCH, &[RESOURCE], &["resourceclaims", "resourceclaims/status"]),
                rule(UPDATE_PATCH, &[CORE], &["pods/status"]),
                events(),
                // changing a claim's allocation or reservations takes this subresource too
                rule(UPDATE_PATCH, &[RESOURCE], &["resourceclaims/binding"]),
            ],
        ),
        (
            "resourcequota-controller",
            vec![
                // usage is counted over every kind a quota may name
                rule(LIST_WATCH, &["*"], &["*"]),
                rule(&["update"], &[CORE], &["resourcequotas/status"]),
                events(),
            ],
        ),
        (
            "root-ca-cert-publisher",
            vec![rule(&["create", "update"], &[CORE], &["configmaps"]), events()],
        ),
        (
            "route-controller",
            vec![
                rule(LIST_WATCH, &[CORE], &["nodes"]),
                rule(&["patch"], &[CORE], &["nodes/status"]),
                events(),
            ],
        ),
        (
            "selinux-warning-controller",
            vec![
                events(),
                rule(READ, &[CORE], &["persistentvolumes"]),
                rule(READ, &[CORE], &["persistentvolumeclaims"]),
                rule(READ, &[CORE], &["pods"]),
                rule(READ, &[STORAGE], &["csidrivers"]),
            ],
        ),
        (
            "service-account-controller",
            vec![rule(&["create"], &[CORE], &["serviceaccounts"]), events()],
        ),
        (
            "service-cidrs-controller",
            vec![
                rule(READ_UPDATE, &[NETWORKING], &["servicecidrs"]),
                rule(UPDATE_PATCH, &[NETWORKING], &["servicecidrs/finalizers"]),
                rule(UPDATE_PATCH, &[NETWORKING], &["servicecidrs/status"]),
                rule(READ, &[NETWORKING], &["ipaddresses"]),
                events(),
            ],
        ),
        (
            "service-controller",
            vec![
                rule(READ, &[CORE], &["services"]),
                rule(UPDATE_PATCH, &[CORE], &["services/status"]),
                rule(LIST_WATCH, &[CORE], &["nodes"]),
                events(),
            ],
        ),
        (
            "statefulset-controller",
            vec![
                rule(LIST_WATCH, &[CORE], &["pods"]),
                rule(READ, &[APPS], &["statefulsets"]),
                rule(&["update"], &[APPS], &["statefulsets/status"]),
                rule(&["update"], &[APPS], &["statefulsets/finalizers"]),
                rule(&["get", "create", "delete", "update", "patch"], &[CORE], &["pods"]),
                rule(
                    &plus(READ, &["create", "update", "patch", "delete"]),
                    &[APPS],
                    &["controllerrevisions"],
                ),
                rule(&plus(READ, &["create"]), &[CORE], &["persistentvolumeclaims"]),
                // delete and update, for the claims' retention policy
                rule(&["update", "delete"], &[CORE], &["persistentvolumeclaims"]),
                rule(&["update"], &[CORE], &["pods/finalizers"]),
                events(),
            ],
        ),
        (
            "ttl-after-finished-controller",
            vec![rule(&plus(READ, &["delete"]), &[BATCH], &["jobs"]), events()],
        ),
        (
            "ttl-controller",
            // it annotates nodes with the TTL kubelets cache objects for
            vec![rule(&["update", "patch", "list", "watch"], &[CORE], &["nodes"]), events()],
        ),
        (
            "validatingadmissionpolicy-status-controller",
            vec![
                rule(READ, &[ADMISSION], &["validatingadmissionpolicies"]),
                rule(
                    &["get", "patch", "update"],
                    &[ADMISSION],
                    &["validatingadmissionpolicies/status"],
                ),
                events(),
            ],
        ),
        (
            "volumeattributesclass-protection-controller",
            vec![
                rule(READ, &[CORE], &["persistentvolumeclaims"]),
                rule(READ, &[CORE], &["persistentvolumes"]),
                rule(&plus(READ, &["update"]), &[STORAGE], &["volumeattributesclasses"]),
                events(),
            ],
        ),
    ]
}

fn cluster_role_bindings() -> Vec<Value> {
    let everyone = || vec![group("system:authenticated"), group("system:unauthenticated")];
    vec![
        cluster_binding("cluster-admin", vec![group("system:masters")]),
        cluster_binding("system:monitoring", vec![group("system:monitoring")]),
        // Discovery is for signed-in users only; health and version are public.
        cluster_binding("system:discovery", vec![group("system:authenticated")]),
        cluster_binding("system:basic-user", vec![group("system:authenticated")]),
        cluster_binding("system:public-info-viewer", everyone()),
        // Every workload may fetch the issuer's keys to verify service account tokens.
        cluster_binding(
            "system:service-account-issuer-discovery",
            vec![group("system:serviceaccounts")],
        ),
        cluster_binding("system:node-proxier", vec![user("system:kube-proxy")]),
        cluster_binding(
            "system:kube-controller-manager",
            vec![user("system:kube-controller-manager")],
        ),
        cluster_binding("system:kube-dns", vec![service_account("kube-dns")]),
        cluster_binding("system:kube-scheduler", vec![user("system:kube-scheduler")]),
        cluster_binding("system:volume-scheduler", vec![user("system:kube-scheduler")]),
        // Nodes get system:node through the Node authorizer, not through this binding.
        cluster_binding("system:node", vec![]),
    ]
}

fn namespaced_roles() -> Vec<Value> {
    // Both use Leases, and LeaseCandidates for coordinated leader election.
    let leader_locking = |name| {
        let verbs = &plus(READ, &["create", "update"]);
        role(
            NAMESPACE_SYSTEM,
            name,
            vec![
                rule(verbs, &[COORDINATION], &["leases"]),
                rule(verbs, &[COORDINATION], &["leasecandidates"]),
            ],
        )
    };
    vec![
        // Aggregated API servers read the front proxy's CA and headers from this ConfigMap.
        role(
            NAMESPACE_SYSTEM,
            "extension-apiserver-authentication-reader",
            vec![rule_names(
                READ,
                &[CORE],
                &["configmaps"],
                &["extension-apiserver-authentication"],
            )],
        ),
        leader_locking("system::leader-locking-kube-controller-manager"),
        leader_locking("system::leader-locking-kube-scheduler"),
        // The bootstrap-token signer reads the tokens here and signs cluster-info in
        // kube-public, which joining nodes read anonymously.
        role(
            NAMESPACE_SYSTEM,
            &format!("{CONTROLLER_PREFIX}bootstrap-signer"),
            vec![rule(READ, &[CORE], &["secrets"])],
        ),
        role(
            NAMESPACE_PUBLIC,
            &format!("{CONTROLLER_PREFIX}bootstrap-signer"),
            vec![
                rule(READ, &[CORE], &["configmaps"]),
                rule_names(&["update"], &[CORE], &["configmaps"], &["cluster-info"]),
                events(),
            ],
        ),
        role(
            NAMESPACE_SYSTEM,
            &format!("{CONTROLLER_PREFIX}cloud-provider"),
            vec![rule(&plus(READ, &["create"]), &[CORE], &["configmaps"])],
        ),
        role(
            NAMESPACE_SYSTEM,
            &format!("{CONTROLLER_PREFIX}token-cleaner"),
            vec![rule(&plus(READ, &["delete"]), &[CORE], &["secrets"]), events()],
        ),
    ]
}

fn namespaced_role_bindings() -> Vec<Value> {
    let controller = |namespace, name: &str| {
        let role = format!("{CONTROLLER_PREFIX}{name}");
        role_binding(namespace, &role, &role, vec![service_account(name)])
    };
    vec![
        role_binding(
            NAMESPACE_SYSTEM,
            "system::extension-apiserver-authentication-reader",
            "extension-apiserver-authentication-reader",
            vec![user("system:kube-controller-manager"), user("system:kube-scheduler")],
        ),
        role_binding(
            NAMESPACE_SYSTEM,
            "system::leader-locking-kube-controller-manager",
            "system::leader-locking-kube-controller-manager",
            vec![
                user("system:kube-controller-manager"),
                service_account("kube-controller-manager"),
                service_account("leader-election-controller"),
            ],
        ),
        role_binding(
            NAMESPACE_SYSTEM,
            "system::leader-locking-kube-scheduler",
            "system::leader-locking-kube-scheduler",
            vec![user("system:kube-scheduler"), service_account("kube-scheduler")],
        ),
        controller(NAMESPACE_SYSTEM, "bootstrap-signer"),
        controller(NAMESPACE_PUBLIC, "bootstrap-signer"),
        controller(NAMESPACE_SYSTEM, "cloud-provider"),
        controller(NAMESPACE_SYSTEM, "token-cleaner"),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn name(item: &Value) -> &str {
        item["metadata"]["name"].as_str().unwrap()
    }

    fn find<'a>(items: &'a [Value], wanted: &str) -> &'a Value {
        items.iter().find(|item| name(item) == wanted).unwrap()
    }

    fn all(policy: &Policy) -> impl Iterator<Item = &Value> {
        policy
            .cluster_roles
            .iter()
            .chain(&policy.cluster_role_bindings)
            .chain(&policy.roles)
            .chain(&policy.role_bindings)
    }

    #[test]
    fn names_are_unique_per_kind_and_namespace() {
        let policy = policy();
        let mut seen = HashSet::new();
        for item in all(&policy) {
            let key = (item["kind"].clone(), item["metadata"]["namespace"].clone(), name(item));
            assert!(seen.insert(key), "{} is defined twice", name(item));
        }
    }

    #[test]
    fn every_object_is_a_reconcilable_bootstrap_object() {
        let policy = policy();
        for item in all(&policy) {
            assert_eq!(item["apiVersion"], "rbac.authorization.k8s.io/v1");
            let metadata = &item["metadata"];
            // The reconciler skips objects set to "false"; ours must start out managed.
            assert_eq!(
                metadata["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
                "true"
            );
            assert_eq!(metadata["labels"]["kubernetes.io/bootstrapping"], "rbac-defaults");
            assert!(metadata.get("creationTimestamp").is_none());
        }
        for role in &policy.roles {
            assert!(role["metadata"]["namespace"].is_string(), "{} has no namespace", name(role));
        }
    }

    #[test]
    fn every_binding_names_a_role_of_the_policy() {
        let policy = policy();
        let cluster_roles: HashSet<&str> = policy.cluster_roles.iter().map(name).collect();
        let roles: HashSet<(&str, &str)> = policy
            .roles
            .iter()
            .map(|role| (role["metadata"]["namespace"].as_str().unwrap(), name(role)))
            .collect();
        for binding in &policy.cluster_role_bindings {
            assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
            let role = binding["roleRef"]["name"].as_str().unwrap();
            assert!(cluster_roles.contains(role), "{} grants unknown {role}", name(binding));
        }
        for binding in &policy.role_bindings {
            let namespace = binding["metadata"]["namespace"].as_str().unwrap();
            let role = binding["roleRef"]["name"].as_str().unwrap();
            match binding["roleRef"]["kind"].as_str().unwrap() {
                "Role" => assert!(roles.contains(&(namespace, role)), "{role} not in {namespace}"),
                _ => {
                    assert!(cluster_roles.contains(role), "{} grants unknown {role}", name(binding))
                }
            }
        }
    }

    #[test]
    fn each_controller_runs_as_its_own_service_account() {
        let policy = policy();
        let bindings: HashMap<&str, &Value> =
            policy.cluster_role_bindings.iter().map(|binding| (name(binding), binding)).collect();
        let controllers: Vec<&str> = policy
            .cluster_roles
            .iter()
            .map(name)
            .filter(|name| name.starts_with(CONTROLLER_PREFIX))
            .collect();
        assert!(controllers.len() > 30);
        for role in controllers {
            let binding = bindings.get(role).unwrap();
            assert_eq!(binding["roleRef"]["name"], role);
            let account = role.trim_start_matches(CONTROLLER_PREFIX);
            assert_eq!(
                binding["subjects"],
                json!([{ "kind": "ServiceAccount", "name": account, "namespace": "kube-system" }])
            );
        }
    }

    #[test]
    fn admin_edit_and_view_are_aggregated_each_into_the_next() {
        let policy = policy();
        let label = |target: &str| format!("rbac.authorization.k8s.io/aggregate-to-{target}");
        for (role, feeds) in [("admin", None), ("edit", Some("admin")), ("view", Some("edit"))] {
            let role_object = find(&policy.cluster_roles, role);
            assert_eq!(
                role_object["aggregationRule"],
                json!({ "clusterRoleSelectors": [{ "matchLabels": { label(role): "true" } }] })
            );
            // The aggregation controller owns the rules; the policy must not fight it.
            assert!(role_object["rules"].is_null());
            let labels = role_object["metadata"]["labels"].as_object().unwrap();
            match feeds {
                Some(target) => assert_eq!(labels[&label(target)], "true"),
                None => assert_eq!(labels.len(), 1),
            }
            // Something must feed each of them, or it would stay empty.
            let source = find(&policy.cluster_roles, &format!("system:aggregate-to-{role}"));
            assert_eq!(source["metadata"]["labels"][label(role)], "true");
            assert!(!source["rules"].as_array().unwrap().is_empty());
        }
    }

    #[test]
    fn cluster_admin_may_do_everything() {
        let policy = policy();
        assert_eq!(
            find(&policy.cluster_roles, "cluster-admin")["rules"],
            json!([
                { "apiGroups": ["*"], "resources": ["*"], "verbs": ["*"] },
                { "nonResourceURLs": ["*"], "verbs": ["*"] },
            ])
        );
        assert_eq!(
            find(&policy.cluster_role_bindings, "cluster-admin")["subjects"],
            json!([{ "apiGroup": RBAC, "kind": "Group", "name": "system:masters" }])
        );
    }

    #[test]
    fn rules_are_well_formed_and_sorted() {
        let policy = policy();
        let strings = |value: &Value| -> Vec<String> {
            value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
        };
        let rules = policy
            .cluster_roles
            .iter()
            .chain(&policy.roles)
            .filter_map(|role| role["rules"].as_array())
            .flatten();
        for rule in rules {
            let verbs = strings(&rule["verbs"]);
            assert!(!verbs.is_empty());
            assert!(verbs.is_sorted(), "{rule}");
            // A rule is about resources or about URLs, never both.
            assert_ne!(rule.get("resources").is_some(), rule.get("nonResourceURLs").is_some());
            for field in ["resources", "resourceNames", "nonResourceURLs"] {
                if let Some(values) = rule.get(field) {
                    let values = strings(values);
                    assert!(!values.is_empty() && values.is_sorted(), "{rule}");
                }
            }
        }
    }

    #[test]
    fn nodes_are_granted_their_role_only_by_the_node_authorizer() {
        let policy = policy();
        let node = find(&policy.cluster_role_bindings, "system:node");
        assert_eq!(node["roleRef"]["name"], "system:node");
        assert!(node.get("subjects").is_none());
    }
}
