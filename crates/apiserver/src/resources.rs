//! The served resource types: group, version, kind, plural, scope, short names, categories and
//! subresources of every built-in type, plus the types custom resource definitions add.
//!
//! Names and scopes come from `k8s-openapi`'s `Resource` impls so they match upstream exactly;
//! short names and categories are what upstream's discovery lists.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::{ClusterResourceScope, ListableResource, NamespaceResourceScope, Resource};
use serde_json::Value;

/// How a stored object of a built-in type is decoded into its `k8s-openapi` type and back, which
/// checks field types and drops (or, with strict validation, reports) unknown fields.
pub(crate) type Codec = fn(&Value) -> Result<Value, serde_json::Error>;

/// Adds a built-in type's OpenAPI schema (and those it refers to) to a generator.
pub(crate) type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// One served resource type.
#[derive(Debug, Clone)]
pub struct ResourceType {
    /// API group ("" for core).
    pub group: String,
    /// Version within the group.
    pub version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Kind of the list, e.g. `DeploymentList`.
    pub list_kind: String,
    /// Plural resource name used in URLs.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: Vec<String>,
    /// Categories (`all` makes `kubectl get all` include it).
    pub categories: Vec<String>,
    /// Whether the type has a `status` subresource (main-resource writes then ignore `.status`).
    pub has_status: bool,
    /// Whether the type has a `scale` subresource.
    pub has_scale: bool,
    /// Where a custom resource keeps what its `scale` subresource shows (JSON pointers);
    /// `None` for the built-in kinds (`spec.replicas`, `status.replicas`, `spec.selector`).
    pub scale_paths: Option<ScalePaths>,
    /// Whether a spec change bumps `metadata.generation` (types with a spec or CRDs).
    pub tracks_generation: bool,
    /// A review type (`SelfSubjectAccessReview`, ...): only `create`, answered at once and
    /// never stored.
    pub create_only: bool,
    pub(crate) codec: Option<Codec>,
    pub(crate) schema: Option<SchemaFn>,
    /// The type's own rules.
    pub(crate) strategy: &'static dyn crate::strategy::Strategy,
    /// For a version served over another version's storage (`autoscaling/v1` over `v2`):
    /// how a stored object reads in this version, and how one of this version is stored.
    pub(crate) conversion: Option<Conversion>,
    /// Where this type's resource quantities sit, read from its schema on first use (every
    /// write checks them, so this is computed once per type, not per write).
    pub(crate) quantities: std::sync::OnceLock<Vec<crate::quantity::QuantityPath>>,
}

/// A CRD's scale subresource: where the replicas asked for, the replicas there are and the
/// label selector (a string, as the scale shows it) sit in its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// `specReplicasPath` as a JSON pointer.
    pub spec_replicas: String,
    /// `statusReplicasPath` as a JSON pointer.
    pub status_replicas: String,
    /// `labelSelectorPath` as a JSON pointer, if given.
    pub label_selector: Option<String>,
}

/// How one served version maps onto the stored version of its kind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conversion {
    /// The group whose storage holds the objects (events.k8s.io's events are core's).
    pub(crate) storage_group: &'static str,
    /// The apiVersion objects are stored in.
    pub(crate) storage_version: &'static str,
    /// Stored version → this version.
    pub(crate) from_storage: fn(Value) -> Value,
    /// This version → stored version.
    pub(crate) to_storage: fn(Value) -> Value,
}

impl ResourceType {
    /// Whether a delete that names no propagation policy orphans the dependents: batch/v1
    /// Jobs and v1 ReplicationControllers keep the behaviour they had before the server
    /// collected garbage, as upstream keeps it (`kubectl` always names a policy; a client
    /// that deletes a Job bare leaves its pods).
    pub(crate) fn orphans_by_default(&self) -> bool {
        matches!(
            (self.group.as_str(), self.version.as_str(), self.plural.as_str()),
            ("batch", "v1", "jobs") | ("", "v1", "replicationcontrollers")
        )
    }

    /// Checks every resource quantity of `object` (see [`crate::quantity::validate`]).
    pub(crate) fn validate_quantities(
        &self,
        object: &Value,
        causes: &mut Vec<crate::status::Cause>,
    ) -> Result<(), crate::status::ApiError> {
        let paths = self.quantities.get_or_init(|| crate::quantity::paths_in_schema(self.schema));
        crate::quantity::validate(paths, &self.kind, &self.version, object, causes)
    }

    /// Whether stored objects are served as they are stored (the fast path of reads): built-in
    /// types without a conversion. Custom resources are re-stamped with the version asked for.
    pub(crate) fn reads_raw(&self) -> bool {
        self.is_builtin() && self.conversion.is_none()
    }

    /// A stored object as this version serves it.
    pub(crate) fn served(&self, object: Value) -> Value {
        let mut object = match self.conversion {
            Some(c) => (c.from_storage)(object),
            None => object,
        };
        if let Some(map) = object.as_object_mut() {
            map.insert("apiVersion".into(), Value::String(self.api_version()));
        }
        object
    }

    /// An object of this version as it is stored.
    pub(crate) fn stored(&self, object: &Value) -> Option<Value> {
        self.conversion.map(|c| {
            let mut stored = (c.to_storage)(object.clone());
            if let Some(map) = stored.as_object_mut() {
                map.insert("apiVersion".into(), Value::String(c.storage_version.to_owned()));
            }
            stored
        })
    }

    /// Whether this is a built-in type (decoded through `k8s-openapi`), not a custom resource.
    pub fn is_builtin(&self) -> bool {
        self.codec.is_some()
    }

    /// `group/version`, or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key prefix under which every object of this type lives.
    pub(crate) fn key_prefix(&self) -> String {
        let group = self.conversion.map_or(self.group.as_str(), |c| c.storage_group);
        let group = if group.is_empty() { "core" } else { group };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The storage key of one object.
    pub(crate) fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    /// The key prefix of one namespace's objects (or all objects).
    pub(crate) fn collection_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }
}

pub(crate) trait Scope {
    const NAMESPACED: bool;
}
impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

fn schema_of<T: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    generator.subschema_for::<T>()
}

/// Decoded from a borrowed value: the caller keeps the input to find what decoding dropped,
/// and a copy of the whole tree for that cost more than the strings copied here.
fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(
    value: &Value,
) -> Result<Value, serde_json::Error> {
    let typed = <T as serde::Deserialize>::deserialize(value)?;
    serde_json::to_value(typed)
}

/// What a built-in type's line in the registry adds to what `k8s-openapi` knows of it.
pub(crate) struct Extra {
    pub(crate) singular: &'static str,
    pub(crate) short_names: &'static [&'static str],
    pub(crate) categories: &'static [&'static str],
    pub(crate) status: bool,
    pub(crate) scale: bool,
    pub(crate) generation: bool,
}

/// A built-in type served with `strategy`.
pub(crate) fn builtin<T>(
    extra: Extra,
    strategy: &'static dyn crate::strategy::Strategy,
) -> ResourceType
where
    T: Resource
        + ListableResource
        + serde::de::DeserializeOwned
        + serde::Serialize
        + schemars::JsonSchema,
    T::Scope: Scope,
{
    ResourceType {
        group: T::GROUP.to_owned(),
        version: T::VERSION.to_owned(),
        kind: T::KIND.to_owned(),
        list_kind: T::LIST_KIND.to_owned(),
        plural: T::URL_PATH_SEGMENT.to_owned(),
        singular: extra.singular.to_owned(),
        namespaced: <T::Scope as Scope>::NAMESPACED,
        short_names: extra.short_names.iter().map(|s| (*s).to_owned()).collect(),
        categories: extra.categories.iter().map(|s| (*s).to_owned()).collect(),
        has_status: extra.status,
        has_scale: extra.scale,
        scale_paths: None,
        tracks_generation: extra.generation,
        create_only: false,
        codec: Some(roundtrip::<T>),
        schema: Some(schema_of::<T>),
        strategy,
        conversion: None,
        quantities: std::sync::OnceLock::new(),
    }
}

/// A create-only review type.
pub(crate) fn review<T>(
    singular: &str,
    strategy: &'static dyn crate::strategy::Strategy,
) -> ResourceType
where
    T: Resource + serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema,
    T::Scope: Scope,
{
    ResourceType {
        group: T::GROUP.to_owned(),
        version: T::VERSION.to_owned(),
        kind: T::KIND.to_owned(),
        list_kind: String::new(),
        plural: T::URL_PATH_SEGMENT.to_owned(),
        singular: singular.to_owned(),
        namespaced: <T::Scope as Scope>::NAMESPACED,
        short_names: Vec::new(),
        categories: Vec::new(),
        has_status: false,
        has_scale: false,
        scale_paths: None,
        tracks_generation: false,
        create_only: true,
        codec: Some(roundtrip::<T>),
        schema: Some(schema_of::<T>),
        strategy,
        conversion: None,
        quantities: std::sync::OnceLock::new(),
    }
}

/// The resource types currently served, looked up by group/version/plural. Custom resource
/// definitions add and remove entries at run time.
#[derive(Debug)]
pub struct Registry {
    types: RwLock<Types>,
}

/// The served types, and indexes of them by plural and by kind: a request looks its type up
/// several times (handler, admission plugins), and a scan of every type was a measurable
/// share of a small write.
#[derive(Debug, Default)]
struct Types {
    all: Arc<Vec<Arc<ResourceType>>>,
    by_plural: HashMap<String, Vec<Arc<ResourceType>>>,
    by_kind: HashMap<String, Vec<Arc<ResourceType>>>,
}

impl Types {
    fn new(all: Vec<Arc<ResourceType>>) -> Types {
        let mut by_plural: HashMap<String, Vec<Arc<ResourceType>>> = HashMap::new();
        let mut by_kind: HashMap<String, Vec<Arc<ResourceType>>> = HashMap::new();
        for t in &all {
            by_plural.entry(t.plural.clone()).or_default().push(t.clone());
            by_kind.entry(t.kind.clone()).or_default().push(t.clone());
        }
        Types { all: Arc::new(all), by_plural, by_kind }
    }
}

impl Registry {
    /// A registry of the given types.
    pub fn with_types(types: Vec<ResourceType>) -> Registry {
        Registry { types: RwLock::new(Types::new(types.into_iter().map(Arc::new).collect())) }
    }

    fn types(&self) -> std::sync::RwLockReadGuard<'_, Types> {
        self.types.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every served type, in discovery order.
    pub fn all(&self) -> Arc<Vec<Arc<ResourceType>>> {
        self.types().all.clone()
    }

    /// Finds a type by group, version and plural.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types()
            .by_plural
            .get(plural)?
            .iter()
            .find(|t| t.group == group && t.version == version)
            .cloned()
    }

    /// Finds a type by group, version and kind.
    pub fn lookup_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types()
            .by_kind
            .get(kind)?
            .iter()
            .find(|t| t.group == group && t.version == version)
            .cloned()
    }

    /// Groups in discovery order, each with its versions (preferred first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut order: Vec<String> = Vec::new();
        let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.all().iter() {
            if !order.contains(&t.group) {
                order.push(t.group.clone());
            }
            let entry = versions.entry(t.group.clone()).or_default();
            if !entry.contains(&t.version) {
                entry.push(t.version.clone());
            }
        }
        order
            .into_iter()
            .map(|g| {
                let v = versions.remove(&g).unwrap_or_default();
                (g, v)
            })
            .collect()
    }
}

impl Registry {
    /// Replaces the custom resource types (those without a codec) with `custom`. A custom type
    /// that would shadow a built-in one is left out.
    pub(crate) fn set_custom(&self, custom: Vec<ResourceType>) {
        let mut guard = self.types.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next: Vec<Arc<ResourceType>> =
            guard.all.iter().filter(|t| t.is_builtin()).cloned().collect();
        for t in custom {
            let shadows =
                next.iter().any(|b| b.is_builtin() && b.group == t.group && b.plural == t.plural);
            if !shadows {
                next.push(Arc::new(t));
            }
        }
        *guard = Types::new(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_scopes_and_names_match_upstream() {
        let registry = Registry::new();
        let pods = registry.lookup("", "v1", "pods").unwrap();
        assert!(pods.namespaced);
        assert_eq!(pods.list_kind, "PodList");
        let nodes = registry.lookup("", "v1", "nodes").unwrap();
        assert!(!nodes.namespaced);
        let deploy = registry.lookup("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.short_names, ["deploy"]);
        assert!(deploy.has_scale);
        assert_eq!(
            registry.lookup_kind("rbac.authorization.k8s.io", "v1", "ClusterRole").unwrap().plural,
            "clusterroles"
        );
        assert_eq!(pods.key(Some("default"), "web"), "/registry/core/pods/default/web");
    }
}
