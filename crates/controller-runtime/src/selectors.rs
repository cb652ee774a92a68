//! Matching of the selectors pods and controllers carry: label selectors, node selector
//! terms (node affinity), and tolerations against taints. Pure functions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels as the API carries them.
pub type Labels = BTreeMap<String, String>;

/// Whether `selector` matches `labels` (an empty selector matches everything).
pub fn label_selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    if let Some(wanted) = &selector.match_labels
        && !wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    })
}

/// A label selector in its text form (`a=b,c!=d,e in (f,g),h notin (i),j,!k`, as a scale
/// subresource's `status.selector` carries it) as a `LabelSelector`; `None` when malformed.
pub fn parse_label_selector(text: &str) -> Option<LabelSelector> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, ch) in text.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    let requirement = |key: &str, operator: &str, values: Option<Vec<String>>| {
        let key = key.trim();
        (!key.is_empty() && !key.contains(char::is_whitespace)).then(|| LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values,
        })
    };
    let set = |rest: &str| -> Option<Vec<String>> {
        let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
        Some(inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
    };
    let mut expressions = Vec::new();
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let r = if let Some((k, v)) = part.split_once("!=") {
            requirement(k, "NotIn", Some(vec![v.trim().to_owned()]))?
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            requirement(k, "In", Some(vec![v.trim().to_owned()]))?
        } else if let Some((k, rest)) = part.split_once(" notin ") {
            requirement(k, "NotIn", Some(set(rest)?))?
        } else if let Some((k, rest)) = part.split_once(" in ") {
            requirement(k, "In", Some(set(rest)?))?
        } else if let Some(k) = part.strip_prefix('!') {
            requirement(k, "DoesNotExist", None)?
        } else {
            requirement(part, "Exists", None)?
        };
        expressions.push(r);
    }
    Some(LabelSelector { match_labels: None, match_expressions: Some(expressions) })
}

/// Whether a label selector selects nothing at all (`{}` selects everything; a missing
/// selector, nothing).
pub fn is_empty_selector(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && selector.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|w| w == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|w| w == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// Whether one node selector term matches a node (all its expressions and fields; a term
/// with neither matches nothing, as upstream).
pub fn node_selector_term_matches(
    term: &NodeSelectorTerm,
    node_name: &str,
    labels: &Labels,
) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions.iter().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node_name)))
}

/// Whether a node selector (its terms ORed) matches a node.
pub fn node_selector_matches(
    selector: &k8s_openapi::api::core::v1::NodeSelector,
    node_name: &str,
    labels: &Labels,
) -> bool {
    selector.node_selector_terms.iter().any(|t| node_selector_term_matches(t, node_name, labels))
}

/// Whether a PersistentVolume may be used on a node: its `nodeAffinity` (none: anywhere).
pub fn volume_fits_node(
    volume: &k8s_openapi::api::core::v1::PersistentVolume,
    node_name: &str,
    labels: &Labels,
) -> bool {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .is_none_or(|r| node_selector_matches(r, node_name, labels))
}

/// Whether a StorageClass's `allowedTopologies` admit a node: any term, each of whose label
/// requirements the node's labels meet (no terms: every node).
pub fn topology_allows(
    class: &k8s_openapi::api::storage::v1::StorageClass,
    labels: &Labels,
) -> bool {
    let Some(terms) = class.allowed_topologies.as_ref().filter(|t| !t.is_empty()) else {
        return true;
    };
    terms.iter().any(|term| {
        term.match_label_expressions
            .iter()
            .flatten()
            .all(|e| labels.get(&e.key).is_some_and(|v| e.values.iter().any(|w| w == v)))
    })
}

/// Whether `toleration` tolerates `taint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => {
            key == taint.key
                && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// The first taint with one of `effects` that no toleration tolerates.
pub fn untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    effects: &[&str],
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_selectors_parse_as_the_api_writes_them() {
        let labels: Labels =
            [("app", "web"), ("tier", "front")].map(|(k, v)| (k.into(), v.into())).into();
        let yes = [
            "app=web",
            "app==web,tier",
            "tier in (front, back),!gone",
            "app!=db",
            "",
            "env notin (prod)",
        ];
        for text in yes {
            let s = parse_label_selector(text).expect(text);
            assert!(label_selector_matches(&s, &labels), "{text}");
        }
        for text in ["app=db", "gone", "!app", "tier notin (front)"] {
            let s = parse_label_selector(text).expect(text);
            assert!(!label_selector_matches(&s, &labels), "{text}");
        }
        assert!(parse_label_selector("a in (b").is_none());
        assert!(parse_label_selector("a b").is_none());
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn label_selectors_match_labels_and_expressions() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(label_selector_matches(&selector, &labels(&[("app", "web")])));
        assert!(!label_selector_matches(&selector, &labels(&[("app", "web"), ("tier", "db")])));
        assert!(!label_selector_matches(&selector, &labels(&[("app", "api")])));
        assert!(label_selector_matches(&LabelSelector::default(), &labels(&[])));
    }

    #[test]
    fn node_selector_terms_cover_every_operator() {
        let req = |key: &str, op: &str, values: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).into()).collect()),
        };
        let node = labels(&[("zone", "a"), ("cores", "8")]);
        let term = |reqs: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
            match_expressions: Some(reqs),
            match_fields: None,
        };
        assert!(node_selector_term_matches(
            &term(vec![req("zone", "In", &["a", "b"])]),
            "n",
            &node
        ));
        assert!(!node_selector_term_matches(&term(vec![req("zone", "NotIn", &["a"])]), "n", &node));
        assert!(node_selector_term_matches(&term(vec![req("zone", "Exists", &[])]), "n", &node));
        assert!(node_selector_term_matches(
            &term(vec![req("gpu", "DoesNotExist", &[])]),
            "n",
            &node
        ));
        assert!(node_selector_term_matches(&term(vec![req("cores", "Gt", &["4"])]), "n", &node));
        assert!(!node_selector_term_matches(&term(vec![req("cores", "Lt", &["4"])]), "n", &node));
        assert!(!node_selector_term_matches(&term(vec![req("zone", "Gt", &["4"])]), "n", &node));
        let by_name = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", "In", &["n"])]),
        };
        assert!(node_selector_term_matches(&by_name, "n", &node));
        assert!(!node_selector_term_matches(&by_name, "m", &node));
        assert!(!node_selector_term_matches(&NodeSelectorTerm::default(), "n", &node));
    }

    #[test]
    fn tolerations_follow_operator_and_effect() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let tol = |key: &str, op: &str, value: &str, effect: &str| Toleration {
            key: Some(key.into()),
            operator: Some(op.into()),
            value: Some(value.into()),
            effect: Some(effect.into()),
            toleration_seconds: None,
        };
        assert!(tolerates(&tol("dedicated", "Equal", "gpu", "NoSchedule"), &taint));
        assert!(tolerates(&tol("dedicated", "Equal", "gpu", ""), &taint));
        assert!(!tolerates(&tol("dedicated", "Equal", "cpu", "NoSchedule"), &taint));
        assert!(!tolerates(&tol("dedicated", "Equal", "gpu", "NoExecute"), &taint));
        assert!(tolerates(&tol("dedicated", "Exists", "", ""), &taint));
        assert!(tolerates(&tol("", "Exists", "", ""), &taint));
        assert_eq!(untolerated(std::slice::from_ref(&taint), &[], &["NoSchedule"]), Some(&taint));
        assert_eq!(untolerated(std::slice::from_ref(&taint), &[], &["NoExecute"]), None);
    }
}
