//! Role: a set of permission rules.

use serde_json::{Value, json};

use crate::strategy::{NameRule, Strategy};
use crate::table::{Column, col, s};

/// The Role strategy.
#[derive(Debug)]
pub struct Roles;

impl Strategy for Roles {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn columns(&self) -> Vec<Column> {
        vec![crate::table::NAME, col("Created At", "date", 0)]
    }

    fn cells(&self, obj: &Value, _now: i64) -> Vec<Value> {
        vec![json!(s(obj, "/metadata/name")), json!(s(obj, "/metadata/creationTimestamp"))]
    }
}
