//! Resource quantities (`500m`, `1.5Gi`, `2e3`) in every kind: their syntax, as upstream's
//! `resource.ParseQuantity` reads it, and that they are not negative.
//!
//! Where quantities sit is read from each built-in type's schema (`k8s-openapi` describes
//! `Quantity` as its own type), so every field of every kind is covered — container requests
//! and limits, node capacity, quotas, claims, `sizeLimit` — without a list to keep up to date.

use serde_json::Value;

use crate::status::{ApiError, Cause};

/// Upstream's message for a quantity it cannot parse.
pub const FORMAT_MESSAGE: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// What a well-formed quantity says about its sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// Zero or more.
    NonNegative,
    /// Below zero.
    Negative,
}

/// Parses a quantity's text as upstream does: an optionally signed decimal number (digits
/// with at most one point, at least one digit) and a suffix that is empty, binary (`Ki`…
/// `Ei`), decimal (`n u m k M G T P E`) or an exponent (`e`/`E` and a signed integer).
pub fn parse(text: &str) -> Option<Sign> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
    let (number, suffix) = rest.split_at(number_len);
    if number.bytes().filter(|b| *b == b'.').count() > 1
        || !number.bytes().any(|b| b.is_ascii_digit())
    {
        return None;
    }
    let suffix_ok = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T"
        | "P" | "E" => true,
        _ => match suffix.strip_prefix(['e', 'E']) {
            Some(exponent) => {
                let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
            }
            None => false,
        },
    };
    if !suffix_ok {
        return None;
    }
    let zero = number.bytes().all(|b| b == b'0' || b == b'.');
    Some(if negative && !zero { Sign::Negative } else { Sign::NonNegative })
}

/// A well-formed quantity's value as a number (cores, bytes), for comparisons such as the QoS
/// class; `None` when it does not parse.
/// A sum of quantities as the API shows it: whole numbers plainly, fractions in
/// thousandths (CPU).
pub fn format_value(value: f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        format!("{}", value.round() as i64)
    } else {
        format!("{}m", (value * 1000.0).ceil() as i64)
    }
}

pub fn value(text: &str) -> Option<f64> {
    parse(text)?;
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if suffix.starts_with(['e', 'E']) && suffix.len() > 1 {
        return text.parse().ok();
    }
    let factor = match suffix {
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        _ => 1.0,
    };
    Some(number.parse::<f64>().ok()? * factor)
}

/// One step of a path to a quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Field(String),
    /// Every value of a map (a ResourceList).
    AnyKey,
    /// Every item of a list.
    AnyItem,
}

/// The steps from an object's root to one of its quantities.
pub(crate) type QuantityPath = Vec<Step>;

/// Paths to the quantities of a built-in kind, read from its schema (custom types have
/// none: their schemas describe no `Quantity`). The caller keeps them: reading a schema is
/// done once per type, not per write.
pub(crate) fn paths_in_schema(
    schema: Option<fn(&mut schemars::SchemaGenerator) -> schemars::Schema>,
) -> Vec<QuantityPath> {
    let mut found = Vec::new();
    if let Some(schema_fn) = schema {
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        let root = schema_fn(&mut generator).to_value();
        let definitions = generator.take_definitions(true);
        let mut path = Vec::new();
        let mut visiting = Vec::new();
        walk_schema(&root, &definitions, &mut path, &mut visiting, &mut found);
    }
    found
}

fn walk_schema(
    schema: &Value,
    definitions: &serde_json::Map<String, Value>,
    path: &mut Vec<Step>,
    visiting: &mut Vec<String>,
    found: &mut Vec<Vec<Step>>,
) {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        if name.ends_with("apimachinery.pkg.api.resource.Quantity") {
            found.push(path.clone());
            return;
        }
        // Recursive types (JSONSchemaProps) hold no quantities; stop at the first repeat.
        if visiting.iter().any(|v| v == name) {
            return;
        }
        if let Some(target) = definitions.get(name) {
            visiting.push(name.to_owned());
            walk_schema(target, definitions, path, visiting, found);
            visiting.pop();
        }
        return;
    }
    for combinator in ["allOf", "anyOf", "oneOf"] {
        for branch in schema.get(combinator).and_then(Value::as_array).into_iter().flatten() {
            walk_schema(branch, definitions, path, visiting, found);
        }
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            path.push(Step::Field(name.clone()));
            walk_schema(property, definitions, path, visiting, found);
            path.pop();
        }
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        path.push(Step::AnyKey);
        walk_schema(values, definitions, path, visiting, found);
        path.pop();
    }
    if let Some(items) = schema.get("items").filter(|v| v.is_object()) {
        path.push(Step::AnyItem);
        walk_schema(items, definitions, path, visiting, found);
        path.pop();
    }
}

/// Checks every quantity of `object`: one that does not parse is a 400 (upstream fails to
/// decode the object), a negative one a cause for the 422 (upstream's validation).
pub(crate) fn validate(
    paths: &[QuantityPath],
    kind: &str,
    version: &str,
    object: &Value,
    causes: &mut Vec<Cause>,
) -> Result<(), ApiError> {
    for path in paths {
        let mut field = String::new();
        check(object, path, &mut field, causes).map_err(|()| {
            ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: {FORMAT_MESSAGE}"
            ))
        })?;
    }
    Ok(())
}

fn check(
    value: &Value,
    path: &[Step],
    field: &mut String,
    causes: &mut Vec<Cause>,
) -> Result<(), ()> {
    let Some((step, rest)) = path.split_first() else {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => n.to_string(),
            Value::Null => return Ok(()),
            _ => return Err(()),
        };
        if parse(&text).ok_or(())? == Sign::Negative {
            causes.push(Cause::new(
                "FieldValueInvalid",
                field,
                format!("Invalid value: \"{text}\": must be greater than or equal to 0"),
            ));
        }
        return Ok(());
    };
    let mark = field.len();
    match (step, value) {
        (Step::Field(name), Value::Object(map)) => {
            if let Some(child) = map.get(name) {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(name);
                check(child, rest, field, causes)?;
            }
        }
        (Step::AnyKey, Value::Object(map)) => {
            for (key, child) in map {
                field.push('[');
                field.push_str(key);
                field.push(']');
                check(child, rest, field, causes)?;
                field.truncate(mark);
            }
        }
        (Step::AnyItem, Value::Array(items)) => {
            for (i, child) in items.iter().enumerate() {
                field.push_str(&format!("[{i}]"));
                check(child, rest, field, causes)?;
                field.truncate(mark);
            }
        }
        _ => {}
    }
    field.truncate(mark);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_parse_as_upstream_reads_them() {
        for good in ["1", "500m", "1.5", ".5", "5.", "1Gi", "2e3", "2E-3", "+1k", "0", "-0", "1e+9"]
        {
            assert_eq!(parse(good), Some(Sign::NonNegative), "{good}");
        }
        assert_eq!(parse("-5"), Some(Sign::Negative));
        assert_eq!(parse("-1.5Gi"), Some(Sign::Negative));
        for bad in ["abc", "NaN", "1.5.5", "", "-", ".", "1Gb", "1 Gi", "e3", "1e", "1KiB", "0x10"]
        {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_quantity_of_a_pod_is_found_and_checked() {
        let registry = crate::resources::Registry::new();
        let pods = registry.lookup("", "v1", "pods").unwrap();
        let pod = |cpu: &str| {
            json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": cpu}}}],
                "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1Gi"}}], "overhead": {"cpu": "1m"}}})
        };
        let mut causes = Vec::new();
        pods.validate_quantities(&pod("250m"), &mut causes).unwrap();
        assert!(causes.is_empty());
        let e = pods.validate_quantities(&pod("abc"), &mut causes).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains(FORMAT_MESSAGE), "{}", e.message);
        pods.validate_quantities(&pod("-5"), &mut causes).unwrap();
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.containers[0].resources.requests[cpu]");
        let paths = paths_in_schema(pods.schema);
        assert!(paths.len() >= 8, "{paths:?}");
        // Other kinds' quantities are found the same way.
        let quotas = registry.lookup("", "v1", "resourcequotas").unwrap();
        let e =
            quotas.validate_quantities(&json!({"spec": {"hard": {"pods": "1.5.5"}}}), &mut causes);
        assert_eq!(e.unwrap_err().code, 400);
        let nodes = registry.lookup("", "v1", "nodes").unwrap();
        let e = nodes
            .validate_quantities(&json!({"status": {"capacity": {"cpu": "NaN"}}}), &mut causes);
        assert_eq!(e.unwrap_err().code, 400);
    }
}
