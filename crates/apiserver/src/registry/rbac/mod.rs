//! The `rbac.authorization.k8s.io` group. Names are path segments (they hold `:`), so only
//! `/` and `%` are refused.

pub mod clusterrole;
pub mod clusterrolebinding;
pub mod role;
pub mod rolebinding;

use serde_json::{Value, json};

use crate::table::{Column, age_of, col, s};

/// The columns of role bindings: the role and (wide) the subjects by kind.
pub(crate) fn binding_columns() -> Vec<Column> {
    vec![
        crate::table::NAME,
        col("Role", "string", 0),
        crate::table::AGE,
        col("Users", "string", 1),
        col("Groups", "string", 1),
        col("ServiceAccounts", "string", 1),
    ]
}

/// One binding's cells.
pub(crate) fn binding_cells(obj: &Value, now: i64) -> Vec<Value> {
    let subjects = obj.get("subjects").and_then(Value::as_array);
    let of = |kind: &str| {
        subjects
            .into_iter()
            .flatten()
            .filter(|x| s(x, "/kind") == kind)
            .map(|x| {
                if kind == "ServiceAccount" {
                    format!("{}/{}", s(x, "/namespace"), s(x, "/name"))
                } else {
                    s(x, "/name").to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        json!(s(obj, "/metadata/name")),
        json!(format!("{}/{}", s(obj, "/roleRef/kind"), s(obj, "/roleRef/name"))),
        json!(age_of(obj, "/metadata/creationTimestamp", now)),
        json!(of("User")),
        json!(of("Group")),
        json!(of("ServiceAccount")),
    ]
}
