//! The rules every write goes through, whatever its type: decoding through the `k8s-openapi`
//! type (with strict/warn/ignore handling of unknown fields), metadata validation, and the
//! [`Strategy`] trait through which each resource (in `registry/<group>/<resource>.rs`) adds
//! its own naming rule, defaults, validation, Table columns and selectable fields.

use serde_json::Value;

use crate::status::{ApiError, Cause};

/// An object's namespace, name and labels.
pub type Labelled = (String, String, std::collections::BTreeMap<String, String>);

/// What a computed type may read of the stored objects (the registry implements it; the
/// trait keeps strategies from depending on the registry's code).
pub trait ComputedSource: Send + Sync {
    /// Whether the store answers.
    fn store_health(&self) -> futures::future::BoxFuture<'_, Result<(), String>>;

    /// The namespace, name and labels of the objects of a served type in `namespace`
    /// (every one for `None`) that the label selector (text form) selects; the rest of each
    /// object is not decoded.
    fn list_labels<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
        plural: &'a str,
        namespace: Option<&'a str>,
        labels: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Labelled>, ApiError>>;
}

/// What a read of a computed type has to go on.
#[derive(Clone, Copy)]
pub struct ComputedRequest<'a> {
    /// The stored objects.
    pub source: &'a dyn ComputedSource,
    /// The namespace asked for, if any.
    pub namespace: Option<&'a str>,
    /// The name asked for, if any.
    pub name: Option<&'a str>,
    /// The label selector of a list, in text form (already checked to parse).
    pub labels: &'a str,
    /// The resource metrics the server scrapes.
    pub metrics: &'a crate::resource_metrics::Samples,
}

/// How unknown or duplicate fields in a request are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Fail with 400.
    Strict,
    /// Succeed with `Warning` headers.
    Warn,
    /// Drop silently.
    Ignore,
}

impl FieldValidation {
    /// Parses the query parameter; empty means upstream's default for the API (Warn).
    pub fn parse(value: Option<&str>) -> Result<FieldValidation, ApiError> {
        match value.unwrap_or("") {
            "Strict" => Ok(FieldValidation::Strict),
            "Warn" | "" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, or Strict, got {other:?}"
            ))),
        }
    }
}

/// A subresource a type serves beyond `status` and `scale`, for routing and discovery.
#[derive(Debug, Clone, Copy)]
pub struct Subresource {
    /// Its name in the URL.
    pub name: &'static str,
    /// The kind it takes or answers, as (group, version, kind); `None` for the type's own.
    pub kind: Option<(&'static str, &'static str, &'static str)>,
    /// The verbs discovery lists for it.
    pub verbs: &'static [&'static str],
}

/// What the request chain knows of the user asking, for the review types that answer about
/// them or on their behalf.
pub struct ReviewContext<'a> {
    /// The user asking.
    pub user: &'a crate::auth::UserInfo,
    /// The authorizer the server runs.
    pub authorizer: &'a dyn crate::auth::Authorizer,
    /// The namespace of the URL (for namespaced reviews).
    pub namespace: Option<&'a str>,
}

/// One resource's rules, as upstream's registry strategies: everything the generic registry
/// (`rest.rs`), the Table printer and the field selectors need to know about a type, so that
/// none of them names a kind. Every method has the behaviour of a plain type as its default.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    /// The rule object names follow.
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// Whether a create keeps the `status` it is given, for types with a status subresource
    /// (a node agent registers its Node with its status, as upstream allows).
    fn keeps_status_on_create(&self) -> bool {
        false
    }

    /// Upstream's defaults, applied to every create and update (upstream defaults on decode).
    fn default(&self, _object: &mut Value) {}

    /// What only a create sets (a CRD's accepted names).
    fn prepare_create(&self, _object: &mut Value) {}

    /// What an update of the main resource carries over from the stored object before it is
    /// validated (a Service's allocated addresses left out of a replace).
    fn prepare_update(&self, _new: &mut Value, _old: &Value) {}

    /// What a write through a subresource may change, for types whose rules differ from the
    /// registry's (which lets `status` change only status, and handles `scale` and
    /// `binding`): the strategy makes `new` the object to store from the stored `old` and
    /// returns true, or returns false to leave it to the registry.
    fn prepare_subresource_update(
        &self,
        _subresource: &str,
        _new: &mut Value,
        _old: &Value,
    ) -> bool {
        false
    }

    /// Whether a write through `status` keeps all the metadata (upstream's
    /// `ResetObjectMetaForStatus`, used by the workload controllers' types: a Deployment's
    /// status patch may not change its labels); otherwise labels and annotations may change.
    fn status_keeps_metadata(&self) -> bool {
        false
    }

    /// Validation of the object as it would be stored.
    fn validate(&self, _object: &Value, _causes: &mut Vec<Cause>) {}

    /// Validation of an update of the main resource against the stored object: immutable
    /// fields, with upstream's messages.
    fn validate_update(&self, _new: &Value, _old: &Value, _causes: &mut Vec<Cause>) {}

    /// The Table columns `kubectl get` shows.
    fn columns(&self) -> Vec<crate::table::Column> {
        vec![crate::table::NAME, crate::table::AGE]
    }

    /// One object's Table cells, matching [`Strategy::columns`]; `now` in Unix seconds.
    fn cells(&self, object: &Value, now: i64) -> Vec<Value> {
        crate::table::name_and_age(object, now)
    }

    /// The fields a field selector may name beyond `metadata.name` and `metadata.namespace`.
    fn selectable_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// The subresources served beyond `status` and `scale`.
    fn subresources(&self) -> &'static [Subresource] {
        &[]
    }

    /// The grace period a delete gives the object, when its deletion is graceful (pods,
    /// which their node agent stops first); `None` deletes at once when nothing holds it.
    fn grace_period(&self, _object: &Value, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// Whether a delete only marks the object terminating until its `spec.finalizers` are
    /// gone as well (namespaces).
    fn finalized_by_spec(&self) -> bool {
        false
    }

    /// Whether writes of this type change which types are served (CRDs).
    fn defines_types(&self) -> bool {
        false
    }

    /// Whether the type is served from the server's own state rather than the store
    /// (component statuses): read-only, never stored.
    fn is_computed(&self) -> bool {
        false
    }

    /// The objects of a computed type that `request` asks for (its namespace and label
    /// selector applied; the name is applied by the caller).
    fn computed_objects<'a>(
        &'a self,
        _request: ComputedRequest<'a>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Value>, ApiError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// The protobuf body of the computed objects `request` asks for (one, or a `list`), for
    /// clients that prefer it; `None`: the type is served as JSON only.
    fn computed_protobuf<'a>(
        &'a self,
        _request: ComputedRequest<'a>,
        _list: bool,
    ) -> Option<futures::future::BoxFuture<'a, Result<Vec<u8>, ApiError>>> {
        None
    }

    /// For a create-only type that acts on another resource (a Binding): the plural and
    /// subresource its create is served as, for the object its body names.
    fn redirects_to(&self) -> Option<(&'static str, &'static str)> {
        None
    }

    /// The answer of a review type (never stored): the `status` of `review` for the user.
    fn review(&self, _review: &Value, _context: &ReviewContext<'_>) -> Result<Value, ApiError> {
        Err(ApiError::method_not_allowed("this resource is not a review"))
    }
}

/// A DNS-1123 label: at most 63 lower-case alphanumerics or '-', starting and ending
/// alphanumeric.
pub(crate) fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_part(s)
}

/// One dot-separated part of a DNS-1123 subdomain: a label without the length limit (upstream's
/// subdomain rule limits only the whole name, to 253).
fn is_dns_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A DNS-1123 subdomain: dot-separated parts, at most 253 characters in all.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_part)
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Which rule a type's object names follow (upstream's `ValidateObjectMeta` name functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain, the rule of most types.
    Subdomain,
    /// DNS-1123 label (namespaces).
    Label,
    /// DNS-1035 label (services).
    Dns1035Label,
    /// Anything that is a safe path segment (RBAC names, which hold `:`).
    PathSegment,
}

impl NameRule {
    fn check(self, name: &str) -> Result<(), String> {
        let (ok, rule) = match self {
            NameRule::Label => (
                is_dns_label(name),
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            ),
            NameRule::Dns1035Label => (
                is_dns1035_label(name),
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
            ),
            NameRule::PathSegment => (
                !name.is_empty()
                    && !name.contains('/')
                    && !name.contains('%')
                    && name != "."
                    && name != "..",
                "may not contain '/' or '%'",
            ),
            NameRule::Subdomain => (
                is_dns_subdomain(name),
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            ),
        };
        if ok { Ok(()) } else { Err(rule.to_owned()) }
    }
}

/// Validates a name by its type's rule.
pub fn validate_name(rule: NameRule, name: &str) -> Option<Cause> {
    rule.check(name).err().map(|rule| {
        Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: \"{name}\": {rule}"),
        )
    })
}

const ANNOTATIONS_LIMIT: usize = 256 * 1024;

/// Most bytes a ConfigMap's or Secret's data may hold (upstream's `MaxSecretSize`).
pub const CONFIG_DATA_LIMIT: usize = 1024 * 1024;

/// Validates labels, annotations and the name of `object`.
pub fn validate_metadata(rule: NameRule, object: &Value, causes: &mut Vec<Cause>) {
    let meta = object.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::new(
            "FieldValueRequired",
            "metadata.name",
            "Required value: name or generateName is required",
        ));
    } else if let Some(cause) = validate_name(rule, name) {
        causes.push(cause);
    }
    if let Some(labels) = meta.and_then(|m| m.get("labels")).and_then(Value::as_object) {
        for (k, v) in labels {
            if !valid_qualified_name(k) {
                causes.push(Cause::new("FieldValueInvalid", "metadata.labels", format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (max 63 characters)")));
            }
            let v = v.as_str().unwrap_or("");
            if !valid_label_value(v) {
                causes.push(Cause::new("FieldValueInvalid", "metadata.labels", format!("Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (max 63 characters)")));
            }
        }
    }
    if let Some(annotations) = meta.and_then(|m| m.get("annotations")).and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in annotations {
            total += k.len() + v.as_str().map_or(0, str::len);
            if !valid_qualified_name(k) {
                causes.push(Cause::new("FieldValueInvalid", "metadata.annotations", format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.'")));
            }
        }
        if total > ANNOTATIONS_LIMIT {
            causes.push(Cause::new(
                "FieldValueTooLong",
                "metadata.annotations",
                format!("Too long: may not be more than {ANNOTATIONS_LIMIT} bytes"),
            ));
        }
    }
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' or '.' starting and ending
/// alphanumeric.
pub(crate) fn valid_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A label or annotation key: an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 alphanumerics, '-', '_' or '.' starting and ending alphanumeric.
pub(crate) fn valid_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(is_dns_subdomain)
}

/// Whether two objects differ outside `metadata` and `status` (what bumps `generation`).
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else { return old != new };
    // Compared in place: everything but metadata and status.
    let counted = |k: &String| k != "metadata" && k != "status";
    old.keys().filter(|k| counted(k)).count() != new.keys().filter(|k| counted(k)).count()
        || old.iter().filter(|(k, _)| counted(k)).any(|(k, v)| new.get(k) != Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_rules() {
        let (cm, svc, ns) = (NameRule::Subdomain, NameRule::Dns1035Label, NameRule::Label);
        assert!(validate_name(cm, "a.b-c").is_none());
        assert!(validate_name(cm, "Upper").is_some());
        assert!(validate_name(cm, &"a".repeat(254)).is_some());
        assert!(validate_name(svc, "1abc").is_some());
        assert!(validate_name(ns, "a.b").is_some());
        // A subdomain's parts have no length limit of their own (upstream accepts a
        // 72-character ConfigMap name); a label's does.
        let long = "a".repeat(72);
        assert!(validate_name(cm, &long).is_none());
        assert!(validate_name(cm, &format!("{long}.b")).is_none());
        assert!(validate_name(ns, &long).is_some());
        assert!(validate_name(cm, "a..b").is_some());
        assert!(validate_name(cm, "a.-b").is_some());
    }
}
