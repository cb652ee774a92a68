//! ControllerRevisions: the template history StatefulSets and DaemonSets keep, as upstream's
//! `controller_history` does. A revision's `data` is the patch that puts its template back
//! (`{"spec": {"template": {…, "$patch": "replace"}}}`), which is exactly what
//! `kubectl rollout undo` applies to the owner as a strategic merge patch; its name is the
//! owner's name and a hash of that data (and the owner's collision count).
//!
//! Pure functions here; the controllers do the writes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::{Value, json};

/// The label upstream puts on a revision with its hash.
pub const REVISION_HASH_LABEL: &str = "controller.kubernetes.io/hash";

/// The revision data of a template: the patch that restores it, in the shape upstream's
/// Go types give it (which emit a null `creationTimestamp` and empty container `resources`),
/// so that clients comparing a revision with the patch they compute from the owner (the
/// upstream e2e suite does, byte for byte) find it equal.
pub fn data_of(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(t) = template.as_object_mut() {
        let meta = t.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.entry("creationTimestamp").or_insert(Value::Null);
        }
        if let Some(spec) = t.get_mut("spec").and_then(Value::as_object_mut) {
            for list in ["initContainers", "containers", "ephemeralContainers"] {
                for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                    if let Some(c) = c.as_object_mut() {
                        c.entry("resources").or_insert_with(|| json!({}));
                    }
                }
            }
        }
        t.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The template a revision holds (none when its data is not a template patch).
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision.data.0.pointer("/spec/template")?.clone();
    template.as_object_mut()?.remove("$patch");
    serde_json::from_value(template).ok()
}

/// FNV-1a (32 bit) of the data and the collision count, in upstream's alphabet for names.
pub fn hash_of(data: &Value, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x01000193);
        }
    };
    feed(data.to_string().as_bytes());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string().bytes().map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char).collect()
}

/// Whether two revisions hold the same template.
pub fn same_data(revision: &ControllerRevision, data: &Value) -> bool {
    &revision.data.0 == data
}

/// The number a new revision gets: one past the highest.
pub fn next_number(revisions: &[&ControllerRevision]) -> i64 {
    revisions.iter().filter_map(|r| r.revision).max().unwrap_or(0) + 1
}

/// A new revision of `owner_name`'s template.
pub fn new_revision(
    owner_name: &str,
    namespace: &str,
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
    data: Value,
    number: i64,
    collision_count: Option<i32>,
) -> ControllerRevision {
    let hash = hash_of(&data, collision_count);
    let mut labels = labels;
    labels.insert(REVISION_HASH_LABEL.into(), hash.clone());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{owner_name}-{hash}")),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: RawExtension(data),
        revision: Some(number),
    }
}

/// The revisions to delete so that at most `limit` remain of those not `live` (the current
/// and update revisions, and any a pod still runs): the oldest go first.
pub fn to_prune<'a>(
    revisions: &[&'a ControllerRevision],
    live: &dyn Fn(&ControllerRevision) -> bool,
    limit: i32,
) -> Vec<&'a ControllerRevision> {
    let mut history: Vec<&ControllerRevision> =
        revisions.iter().copied().filter(|r| !live(r)).collect();
    let keep = usize::try_from(limit).unwrap_or(0);
    if history.len() <= keep {
        return Vec::new();
    }
    history.sort_by_key(|r| r.revision.unwrap_or(0));
    let excess = history.len() - keep;
    history.into_iter().take(excess).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image}]}
        }))
        .expect("a template")
    }

    #[test]
    fn data_round_trips_and_hashes_follow_template_and_collisions() {
        let data = data_of(&template("a"));
        assert_eq!(data.pointer("/spec/template/$patch"), Some(&json!("replace")));
        let owner = OwnerReference::default();
        let r = new_revision("web", "ns", owner, BTreeMap::new(), data.clone(), 1, None);
        let back = template_of(&r).expect("a template");
        assert_eq!(data_of(&back), data);
        assert_eq!(data.pointer("/spec/template/metadata/creationTimestamp"), Some(&Value::Null));
        assert_eq!(data.pointer("/spec/template/spec/containers/0/resources"), Some(&json!({})));
        assert!(r.metadata.name.as_deref().is_some_and(|n| n.starts_with("web-")));
        assert_eq!(hash_of(&data, None), hash_of(&data_of(&template("a")), None));
        assert_ne!(hash_of(&data, None), hash_of(&data_of(&template("b")), None));
        assert_ne!(hash_of(&data, None), hash_of(&data, Some(1)));
    }

    #[test]
    fn pruning_keeps_live_revisions_and_the_newest_of_the_rest() {
        let rev =
            |n: i64| ControllerRevision { revision: Some(n), ..ControllerRevision::default() };
        let all = [rev(1), rev(2), rev(3), rev(4), rev(5)];
        let refs: Vec<&ControllerRevision> = all.iter().collect();
        let pruned = to_prune(&refs, &|r| r.revision == Some(1) || r.revision == Some(5), 2);
        assert_eq!(pruned.iter().map(|r| r.revision).collect::<Vec<_>>(), vec![Some(2)]);
        assert!(to_prune(&refs, &|_| false, 10).is_empty());
        assert_eq!(next_number(&refs), 6);
    }
}
