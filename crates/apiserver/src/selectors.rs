//! Label selectors (equality- and set-based) and field selectors, parsed from query strings and
//! matched against JSON objects.

use serde_json::Value;

use crate::status::ApiError;
use crate::strategy::{valid_label_value, valid_qualified_name};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

fn split_top_level(input: &str) -> Vec<&str> {
    // Commas inside `in (a,b)` belong to the set, not to the list of requirements.
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

impl LabelSelector {
    /// Parses `k=v,k!=v,k in (a,b),k notin (a),k,!k`.
    pub fn parse(input: &str) -> Result<LabelSelector, ApiError> {
        let bad = |why: &str| ApiError::bad_request(format!("unable to parse requirement: {why}"));
        let mut requirements = Vec::new();
        for part in split_top_level(input) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("==") {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once('=') {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, rest)) = split_set_op(part, " notin ") {
                Requirement::NotIn(key, parse_set(rest).ok_or_else(|| bad(part))?)
            } else if let Some((key, rest)) = split_set_op(part, " in ") {
                Requirement::In(key, parse_set(rest).ok_or_else(|| bad(part))?)
            } else {
                Requirement::Exists(part.to_owned())
            };
            let (key, values): (&str, Vec<&str>) = match &requirement {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, vec![v.as_str()]),
                Requirement::In(k, vs) | Requirement::NotIn(k, vs) => {
                    (k, vs.iter().map(String::as_str).collect())
                }
                Requirement::Exists(k) | Requirement::DoesNotExist(k) => (k, vec![]),
            };
            if !valid_qualified_name(key) {
                return Err(bad(&format!("invalid label key \"{key}\"")));
            }
            if let Some(v) = values.iter().find(|v| !valid_label_value(v)) {
                return Err(bad(&format!("invalid label value: \"{v}\"")));
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector { requirements })
    }

    /// A `metav1.LabelSelector` object (`matchLabels` and `matchExpressions`).
    pub fn from_object(selector: &Value) -> Result<LabelSelector, ApiError> {
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                requirements
                    .push(Requirement::Equals(k.clone(), v.as_str().unwrap_or("").to_owned()));
            }
        }
        for e in selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("").to_owned();
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default();
            requirements.push(match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "\"{other}\" is not a valid label selector operator"
                    )));
                }
            });
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Matches the object's `metadata.labels`.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.get("metadata").and_then(|m| m.get("labels"));
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    /// Matches a label map (read without decoding the whole object).
    pub fn matches_labels(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
}

fn split_set_op(part: &str, op: &str) -> Option<(String, String)> {
    let idx = part.find(op)?;
    Some((part[..idx].trim().to_owned(), part[idx + op.len()..].trim().to_owned()))
}

fn parse_set(rest: String) -> Option<Vec<String>> {
    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
}

/// A parsed field selector: a conjunction of `field=value` / `field!=value` terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses the selector and checks each field is `metadata.name`, `metadata.namespace` or
    /// one of the type's `selectable` fields.
    pub fn parse(input: &str, selectable: &[&str]) -> Result<FieldSelector, ApiError> {
        let mut terms = Vec::new();
        for part in input.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid field selector: '{part}'")));
            };
            let field = field.trim();
            if !COMMON_FIELDS.contains(&field) && !selectable.contains(&field) {
                return Err(ApiError::bad_request(format!("field label not supported: {field}")));
            }
            terms.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector { terms })
    }

    /// Whether the selector has no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Matches the object.
    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(field, equal, value)| {
            let actual = field_value(object, field);
            (actual == *value) == *equal
        })
    }
}

const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// The string form of a selectable field, as upstream renders it (missing = "").
fn field_value(object: &Value, field: &str) -> String {
    if field == "source" {
        // An event's source: the component that reported it, in either version's shape, and
        // the reporting controller when none is named (upstream's rule).
        let text = |p: &str| object.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty());
        return text("/source/component")
            .or_else(|| text("/deprecatedSource/component"))
            .or_else(|| text("/reportingComponent"))
            .or_else(|| text("/reportingController"))
            .unwrap_or("")
            .to_owned();
    }
    let mut current = object;
    for segment in field.split('.') {
        match current.get(segment) {
            Some(v) => current = v,
            None => {
                return match field {
                    "spec.hostNetwork" | "spec.unschedulable" => "false".to_owned(),
                    _ => String::new(),
                };
            }
        }
    }
    match current {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default", "labels": labels}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_selectors_match_as_upstream() {
        let p = pod(json!({"app": "web", "tier": "fe"}));
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web,db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier=be", false),
            ("missing notin (x)", true),
            ("", true),
        ];
        for (selector, want) in cases {
            assert_eq!(LabelSelector::parse(selector).unwrap().matches(&p), want, "{selector}");
        }
        assert!(LabelSelector::parse("a b=c").is_err());
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn field_selectors_check_support_and_match() {
        let p = pod(json!({}));
        use crate::strategy::Strategy;
        let pods = crate::registry::core::pod::Pods.selectable_fields();
        let s = FieldSelector::parse(
            "spec.nodeName=n1,status.phase!=Succeeded,status.phase!=Failed",
            pods,
        )
        .unwrap();
        assert!(s.matches(&p));
        assert!(!FieldSelector::parse("metadata.name=q", pods).unwrap().matches(&p));
        let err = FieldSelector::parse("spec.foo=1", pods).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("field label not supported: spec.foo"));
        let config_maps = crate::registry::core::configmap::ConfigMaps.selectable_fields();
        assert!(FieldSelector::parse("spec.nodeName=x", config_maps).is_err());
    }
}
