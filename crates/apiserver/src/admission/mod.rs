//! Admission: the chain every write goes through after authorization and before the registry
//! stores it — create, update, patch and delete, and connect (`pods/exec`, `attach`,
//! `portforward`) — in upstream's order: every mutating plugin, then every validating one.
//! Each plugin is its own unit with upstream's name; the quota, limit, security and webhook
//! plugins of later issues join the lists in [`Admission::new`].

pub mod allocations;
pub mod certificates;
pub mod default_storage_class;
pub mod default_toleration_seconds;
pub mod limit_ranger;
pub mod local_storage_paths;
pub mod namespace_lifecycle;
pub mod node_pod_cidr;
pub mod node_restriction;
pub mod persistent_volume_claim_resize;
pub mod pod_security;
pub mod priority;
pub mod rbac_escalation;
pub mod resource_quota;
pub mod service_account;
pub mod service_cluster_ip;
pub mod service_node_port;
pub mod storage_object_in_use_protection;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::cidr::Ipv4Cidr;
use crate::resources::{Registry, ResourceType};
use crate::status::{ApiError, ApiResult};

pub use default_toleration_seconds::{NOT_READY_TAINT, UNREACHABLE_TAINT};
pub use priority::SYSTEM_PRIORITY_CLASSES;
pub use service_node_port::PortRange;

/// What a request does, as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A create (POST, or a server-side apply that creates).
    Create,
    /// An update (PUT or any patch).
    Update,
    /// A delete.
    Delete,
    /// A connect (`pods/exec`, `pods/attach`, `pods/portforward`).
    Connect,
}

/// One request, as every plugin sees it.
pub struct Attributes<'a> {
    /// The operation.
    pub operation: Operation,
    /// The type written.
    pub rt: &'a ResourceType,
    /// The subresource, if any.
    pub subresource: Option<&'a str>,
    /// The namespace, for namespaced types.
    pub namespace: Option<&'a str>,
    /// The object's name.
    pub name: &'a str,
    /// The stored object, for updates, deletes and connects.
    pub old: Option<&'a Value>,
    /// Whether nothing will be persisted.
    pub dry_run: bool,
    /// Who asks (None: the server itself).
    pub user: Option<&'a crate::auth::UserInfo>,
}

impl Attributes<'_> {
    /// Whether this request writes the main resource of a built-in `group`/`kind`.
    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.rt.is_builtin() && self.rt.group == group && self.rt.kind == kind
    }
}

/// What plugins read and write through: the stored objects of the served types, decoded as
/// a GET would return them. The generic registry (`rest.rs`) implements it; admission needs
/// nothing else of it, so the registry depends on admission and not the other way round.
pub trait Objects: Send + Sync {
    /// The served types.
    fn registry(&self) -> &Registry;

    /// One object; 404 when there is none.
    fn get<'a>(
        &'a self,
        rt: &'a ResourceType,
        namespace: Option<&'a str>,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Value>>;

    /// Every object of a type, in `namespace` (all namespaces for `None`).
    fn list<'a>(
        &'a self,
        rt: &'a ResourceType,
        namespace: Option<&'a str>,
    ) -> BoxFuture<'a, ApiResult<Vec<Value>>>;

    /// Rewrites an object's status with `transform`, applied to the current object and again
    /// on every conflict, so the change is made on what is stored (a compare-and-swap);
    /// `manager` is the field manager the write is recorded under.
    fn update_status<'a>(
        &'a self,
        rt: &'a ResourceType,
        namespace: Option<&'a str>,
        name: &'a str,
        manager: &'a str,
        transform: &'a mut (dyn FnMut(&Value) -> ApiResult<Value> + Send),
    ) -> BoxFuture<'a, ApiResult<Value>>;

    /// Claims `item` of the allocation range `range` (`serviceips`, `servicenodeports`) for
    /// `owner` in the store, with a compare-and-swap, so API servers sharing a store never
    /// hand out the same one. True when `owner` now holds it (claimed, or held already),
    /// false when another owner does.
    fn claim<'a>(
        &'a self,
        range: &'a str,
        item: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, ApiResult<bool>>;

    /// Releases `item` of `range` when `owner` holds it.
    fn release<'a>(
        &'a self,
        range: &'a str,
        item: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, ApiResult<()>>;

    /// Every claim of `range`.
    fn claims<'a>(&'a self, range: &'a str) -> BoxFuture<'a, ApiResult<Vec<Claim>>>;

    /// A built-in type that must be served.
    fn served(&self, group: &str, version: &str, plural: &str) -> ApiResult<Arc<ResourceType>> {
        self.registry()
            .lookup(group, version, plural)
            .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))
    }
}

/// An item of an allocation range held in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The item (an address, a port).
    pub item: String,
    /// Who holds it (`namespace/name` of a Service).
    pub owner: String,
    /// When it was claimed, Unix seconds.
    pub since: i64,
}

/// What a mutating plugin may hold until the object is stored, so that what it chose (an
/// address, a network) stays unique.
pub type Hold = Option<OwnedMutexGuard<()>>;

/// A plugin that may change the object (`object` is `None` for deletes and connects).
pub trait Mutating: Send + Sync {
    /// Upstream's name of the plugin.
    fn name(&self) -> &'static str;

    /// Whether the plugin acts on this request at all; checked first so that a write no
    /// plugin cares about costs no future.
    fn applies(&self, attributes: &Attributes<'_>) -> bool;

    /// Admits (and may change) `object`.
    fn admit<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a mut Value>,
    ) -> BoxFuture<'a, ApiResult<Hold>>;
}

/// A plugin that only accepts or refuses.
pub trait Validating: Send + Sync {
    /// Upstream's name of the plugin.
    fn name(&self) -> &'static str;

    /// Whether the plugin acts on this request at all.
    fn applies(&self, attributes: &Attributes<'_>) -> bool;

    /// Accepts or refuses the request with `object` as it would be stored.
    fn validate<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>>;

    /// As `validate`, and what to tell when the request is admitted: warnings for the
    /// client (HTTP `Warning` headers, which kubectl prints) and annotations for the audit
    /// log. Plugins that tell anything implement this instead.
    fn validate_with_notices<'a>(
        &'a self,
        objects: &'a dyn Objects,
        attributes: &'a Attributes<'a>,
        object: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<Notices>> {
        Box::pin(async move {
            self.validate(objects, attributes, object).await?;
            Ok(Notices::default())
        })
    }
}

/// What admission tells about an admitted request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notices {
    /// For the client (HTTP `Warning` headers).
    pub warnings: Vec<String>,
    /// For the audit log (the event's `annotations`).
    pub audit: Vec<(String, String)>,
}

impl Notices {
    fn extend(&mut self, more: Notices) {
        self.warnings.extend(more.warnings);
        self.audit.extend(more.audit);
    }
}

/// The admission chain.
pub struct Admission {
    mutating: Vec<Box<dyn Mutating>>,
    validating: Vec<Box<dyn Validating>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("mutating", &self.mutating.iter().map(|p| p.name()).collect::<Vec<_>>())
            .field("validating", &self.validating.iter().map(|p| p.name()).collect::<Vec<_>>())
            .finish()
    }
}

/// The prefix of each node's pod CIDR, as k3s and kube-controller-manager default to.
const NODE_CIDR_PREFIX: u8 = 24;

impl Admission {
    /// The chain of a cluster whose Services take addresses from `service_cidr` and node
    /// ports from `node_ports`, and whose nodes take /24 pod networks from `cluster_cidr`;
    /// with `rbac`, nobody writes roles or bindings granting more than they hold, and node
    /// agents write only their own node and pods (NodeRestriction).
    pub fn new(
        service_cidr: Ipv4Cidr,
        node_ports: PortRange,
        cluster_cidr: Option<Ipv4Cidr>,
        rbac: Option<Arc<crate::rbac::Rbac>>,
        pod_security: Option<pod_security::PodSecurityConfig>,
        local_storage_allowed_paths: Vec<String>,
    ) -> Admission {
        // One lock for everything allocated from a range of the cluster: two creates must not
        // pick the same address. (Within one API server; several servers sharing etcd need
        // an allocator object in the store, which comes with the services issue.)
        let allocation = Arc::new(Mutex::new(()));
        let mut validating: Vec<Box<dyn Validating>> = vec![
            Box::new(namespace_lifecycle::NamespaceLifecycle),
            Box::new(allocations::ServiceAllocationRelease),
        ];
        validating.push(Box::new(certificates::CertificateSubjectRestriction));
        if let Some(rbac) = rbac {
            validating.push(Box::new(node_restriction::NodeRestriction));
            validating.push(Box::new(certificates::CertificateSignerRights(rbac.clone())));
            validating.push(Box::new(rbac_escalation::RbacEscalation(rbac)));
        }
        if let Some(config) = pod_security {
            validating.push(Box::new(pod_security::PodSecurity { config }));
        }
        validating.push(Box::new(limit_ranger::LimitRanger));
        validating.push(Box::new(resource_quota::ResourceQuota));
        validating.push(Box::new(persistent_volume_claim_resize::PersistentVolumeClaimResize));
        validating.push(Box::new(local_storage_paths::LocalStoragePaths {
            allowed: local_storage_allowed_paths,
        }));
        Admission {
            mutating: vec![
                Box::new(service_cluster_ip::ServiceClusterIp::new(
                    service_cidr,
                    allocation.clone(),
                )),
                // A lock of its own: the address's hold is kept until the Service is stored.
                Box::new(service_node_port::ServiceNodePort::new(
                    node_ports,
                    Arc::new(Mutex::new(())),
                )),
                Box::new(node_pod_cidr::NodePodCidr::new(cluster_cidr, allocation)),
                Box::new(service_account::ServiceAccount),
                Box::new(certificates::CertificateRequester),
                Box::new(default_toleration_seconds::DefaultTolerationSeconds),
                Box::new(priority::Priority),
                Box::new(limit_ranger::LimitRanger),
                Box::new(default_storage_class::DefaultStorageClass),
                Box::new(storage_object_in_use_protection::StorageObjectInUseProtection),
            ],
            validating,
        }
    }

    /// A chain of the given plugins (tests, and servers that assemble their own).
    pub fn with_plugins(
        mutating: Vec<Box<dyn Mutating>>,
        validating: Vec<Box<dyn Validating>>,
    ) -> Admission {
        Admission { mutating, validating }
    }

    /// The plugins' names in the order they run: mutating, then validating.
    pub fn plugin_names(&self) -> Vec<&'static str> {
        self.mutating
            .iter()
            .map(|p| p.name())
            .chain(self.validating.iter().map(|p| p.name()))
            .collect()
    }

    /// Runs the mutating plugins. The holds returned must be kept until the object is stored.
    pub async fn mutate(
        &self,
        objects: &dyn Objects,
        attributes: &Attributes<'_>,
        mut object: Option<&mut Value>,
    ) -> ApiResult<Vec<OwnedMutexGuard<()>>> {
        let mut holds = Vec::new();
        for plugin in self.mutating.iter().filter(|p| p.applies(attributes)) {
            let hold = plugin.admit(objects, attributes, object.as_deref_mut()).await?;
            holds.extend(hold);
        }
        Ok(holds)
    }

    /// Runs the validating plugins on the object as it would be stored; what they tell when
    /// every plugin admits it.
    pub async fn validate(
        &self,
        objects: &dyn Objects,
        attributes: &Attributes<'_>,
        object: Option<&Value>,
    ) -> ApiResult<Notices> {
        let mut notices = Notices::default();
        for plugin in self.validating.iter().filter(|p| p.applies(attributes)) {
            notices.extend(plugin.validate_with_notices(objects, attributes, object).await?);
        }
        Ok(notices)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use serde_json::json;

    use super::*;
    use crate::rest::{DeleteOptions, Rest, WriteOptions};
    use crate::strategy::FieldValidation;

    /// Records every request it sees and refuses ConfigMaps labelled `deny`.
    struct Recorder(Arc<StdMutex<Vec<String>>>);

    impl Mutating for Recorder {
        fn name(&self) -> &'static str {
            "Recorder"
        }

        fn applies(&self, attributes: &Attributes<'_>) -> bool {
            attributes.rt.kind == "ConfigMap"
        }

        fn admit<'a>(
            &'a self,
            _objects: &'a dyn Objects,
            attributes: &'a Attributes<'a>,
            object: Option<&'a mut Value>,
        ) -> BoxFuture<'a, ApiResult<Hold>> {
            Box::pin(async move {
                let seen = format!(
                    "mutate {:?} {} old={}",
                    attributes.operation,
                    attributes.name,
                    attributes.old.is_some()
                );
                self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(seen);
                if let Some(object) = object {
                    object["metadata"]["annotations"] = json!({"admitted": "yes"});
                }
                Ok(None)
            })
        }
    }

    impl Validating for Recorder {
        fn name(&self) -> &'static str {
            "Recorder"
        }

        fn applies(&self, attributes: &Attributes<'_>) -> bool {
            attributes.rt.kind == "ConfigMap"
        }

        fn validate<'a>(
            &'a self,
            _objects: &'a dyn Objects,
            attributes: &'a Attributes<'a>,
            object: Option<&'a Value>,
        ) -> BoxFuture<'a, ApiResult<()>> {
            Box::pin(async move {
                let seen = format!("validate {:?} {}", attributes.operation, attributes.name);
                self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(seen);
                if object.and_then(|o| o.pointer("/metadata/labels/deny")).is_some() {
                    return Err(crate::status::ApiError::forbidden("denied by Recorder"));
                }
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn every_write_goes_through_the_chain_mutating_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = storage::embedded::EmbeddedStore::open(storage::embedded::Config::with_dir(
            dir.path().join("db"),
        ))
        .expect("store");
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let rest = Rest {
            store: Arc::new(store),
            registry: Arc::new(Registry::new()),
            admission: Admission::with_plugins(
                vec![Box::new(Recorder(seen.clone()))],
                vec![Box::new(Recorder(seen.clone()))],
            ),
        };
        let namespaces = rest.namespaces().expect("namespaces");
        let options = WriteOptions {
            dry_run: false,
            field_validation: FieldValidation::Strict,
            field_manager: "test".into(),
            force: false,
            user: None,
        };
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}});
        rest.create(&namespaces, None, ns, &options).await.expect("namespace");
        let cms = rest.registry.lookup("", "v1", "configmaps").expect("configmaps");
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
        let (created, _) = rest.create(&cms, Some("default"), cm, &options).await.expect("create");
        assert_eq!(created.object["metadata"]["annotations"]["admitted"], "yes");
        let patch = json!({"data": {"a": "2"}});
        rest.patch(
            &cms,
            Some("default"),
            "c",
            crate::patch::PatchType::Merge,
            patch,
            None,
            &options,
        )
        .await
        .expect("patch");
        let denied = json!({"metadata": {"labels": {"deny": "1"}}});
        let err = rest
            .patch(
                &cms,
                Some("default"),
                "c",
                crate::patch::PatchType::Merge,
                denied,
                None,
                &options,
            )
            .await
            .expect_err("validating admission refuses");
        assert_eq!(err.code, 403);
        rest.delete(&cms, Some("default"), "c", &DeleteOptions::default()).await.expect("delete");
        let seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        assert_eq!(
            seen,
            [
                "mutate Create c old=false",
                "validate Create c",
                "mutate Update c old=true",
                "validate Update c",
                "mutate Update c old=true",
                "validate Update c",
                "mutate Delete c old=true",
                "validate Delete c",
            ]
        );
        // The refused patch stored nothing; the delete removed the object.
        assert!(rest.get(&cms, Some("default"), "c").await.is_err());
    }
}
