//! MutatingAdmissionPolicyBinding: where a mutating policy applies (stored and served).

use serde_json::Value;

use crate::strategy::Strategy;
use crate::table::Column;

/// The MutatingAdmissionPolicyBinding strategy: columns as the validating binding's.
#[derive(Debug)]
pub struct MutatingAdmissionPolicyBindings;

impl Strategy for MutatingAdmissionPolicyBindings {
    fn columns(&self) -> Vec<Column> {
        super::validatingadmissionpolicybinding::ValidatingAdmissionPolicyBindings.columns()
    }

    fn cells(&self, obj: &Value, now: i64) -> Vec<Value> {
        super::validatingadmissionpolicybinding::ValidatingAdmissionPolicyBindings.cells(obj, now)
    }
}
