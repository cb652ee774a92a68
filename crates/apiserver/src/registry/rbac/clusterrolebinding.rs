//! ClusterRoleBinding: grants a role to subjects; the role it names cannot change.

use serde_json::Value;

use crate::status::Cause;
use crate::strategy::{NameRule, Strategy};
use crate::table::Column;

/// The ClusterRoleBinding strategy.
#[derive(Debug)]
pub struct ClusterRoleBindings;

impl Strategy for ClusterRoleBindings {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate_update(&self, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
        if new.get("roleRef") != old.get("roleRef") {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "roleRef",
                "Invalid value: cannot change roleRef",
            ));
        }
    }

    fn columns(&self) -> Vec<Column> {
        super::binding_columns()
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        super::binding_cells(obj, now)
    }
}
