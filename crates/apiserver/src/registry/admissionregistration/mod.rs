//! The `admissionregistration.k8s.io` group: webhook configurations and admission policies,
//! stored and served; enforcing them comes with the extensibility issue.

pub mod mutatingadmissionpolicy;
pub mod mutatingadmissionpolicybinding;
pub mod mutatingwebhookconfiguration;
pub mod validatingadmissionpolicy;
pub mod validatingadmissionpolicybinding;
pub mod validatingwebhookconfiguration;

use serde_json::{Value, json};

use crate::table::{AGE, Column, NAME, age_of, col, s};

/// The columns of both webhook configurations.
pub(crate) fn webhook_columns() -> Vec<Column> {
    vec![NAME, col("Webhooks", "integer", 0), AGE]
}

/// One webhook configuration's cells.
pub(crate) fn webhook_cells(obj: &Value, now: i64) -> Vec<Value> {
    let count = obj.get("webhooks").and_then(Value::as_array).map_or(0, Vec::len);
    vec![
        json!(s(obj, "/metadata/name")),
        json!(count),
        json!(age_of(obj, "/metadata/creationTimestamp", now)),
    ]
}
